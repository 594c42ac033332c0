//! The per-container monitor (`wharf-monitor`): see docs/architecture.md.
