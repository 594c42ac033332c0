//! Health checks (Docker's `HEALTHCHECK` / `--health-cmd`): the daemon runs the
//! container's check command in it every interval, as dockerd does, and keeps the
//! status (`starting`, `healthy`, `unhealthy`), the failing streak and the last five
//! probes; a change of status is a `health_status: <status>` event.
//!
//! A check loop runs per run of a container (it ends when that run ends: a container
//! started again gets a new loop and starts over at `starting`). The probe is an exec
//! of the command with the container's process settings, bounded by the timeout (its
//! processes are killed at the timeout, as ExecSync's). Health lives in memory, as
//! dockerd's does until it writes its state: after a wharfd restart a running
//! container's status starts over.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::model::Healthcheck;
use super::records::{now_nanos, ContainerState};
use super::service::{Runtime, RuntimeError};

/// Docker's defaults (0 in a request means these).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;
/// Probes kept (dockerd keeps 5).
const KEPT_PROBES: usize = 5;
/// Output kept per probe (dockerd's 4 KiB).
const MAX_OUTPUT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Nanoseconds since the epoch.
    pub start: i64,
    pub end: i64,
    pub exit_code: i32,
    pub output: String,
}

/// A container's health now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: u32,
    pub log: VecDeque<Probe>,
    /// The run it belongs to (the container's `started_at`).
    run: i64,
}

/// The health of every container that has a check, by ID.
#[derive(Debug, Default)]
pub struct HealthTable(std::sync::Mutex<HashMap<String, Health>>);

impl HealthTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Health>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Runtime {
    /// The health of container `id`, if it has a check and has run.
    pub fn health(&self, id: &str) -> Option<Health> {
        self.health.lock().get(id).cloned()
    }

    /// Runs the check loop of container `id` (its monitor just made) until the run it
    /// finds ends. Does nothing without a check.
    pub(super) fn watch_health(self: &Arc<Self>, id: String) {
        let Some(check) = self.container(&id).and_then(|c| c.spec.healthcheck) else {
            return;
        };
        let runtime = self.clone();
        tokio::spawn(async move { runtime.health_loop(id, check).await });
    }

    async fn health_loop(self: Arc<Self>, id: String, check: Healthcheck) {
        let mut run = None;
        // The run's first sight of Running starts its clock.
        while let Some(container) = self.container(&id) {
            let in_start_period = run.is_some_and(|started: i64| {
                (now_nanos() - started) < check.start_period.as_nanos() as i64
            });
            let wait = if in_start_period && !check.start_interval.is_zero() {
                check.start_interval
            } else {
                check.interval
            };
            match (container.state, run) {
                (ContainerState::Created, None) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                (ContainerState::Running, None) => {
                    run = Some(container.started_at);
                    self.health.lock().insert(
                        id.clone(),
                        Health {
                            status: HealthStatus::Starting,
                            failing_streak: 0,
                            log: VecDeque::new(),
                            run: container.started_at,
                        },
                    );
                    continue;
                }
                (ContainerState::Running, Some(started)) if started == container.started_at => {}
                // Another run (it has its own loop), or the end of this one.
                _ => break,
            }
            tokio::time::sleep(wait).await;
            let Some(container) = self.container(&id) else {
                break;
            };
            if container.state != ContainerState::Running || Some(container.started_at) != run {
                break;
            }
            if container.paused {
                continue;
            }
            let probe = self.probe(&container.namespace, &id, &check).await;
            let started = container.started_at;
            let in_start_period = (now_nanos() - started) < check.start_period.as_nanos() as i64;
            let changed = {
                let mut table = self.health.lock();
                let Some(health) = table.get_mut(&id).filter(|h| h.run == started) else {
                    break;
                };
                let before = health.status;
                if probe.exit_code == 0 {
                    health.failing_streak = 0;
                    health.status = HealthStatus::Healthy;
                } else if !(in_start_period && health.status == HealthStatus::Starting) {
                    health.failing_streak += 1;
                    if health.failing_streak >= check.retries.max(1) {
                        health.status = HealthStatus::Unhealthy;
                    }
                }
                health.log.push_back(probe);
                while health.log.len() > KEPT_PROBES {
                    health.log.pop_front();
                }
                (health.status != before).then_some(health.status)
            };
            if let Some(status) = changed {
                tracing::info!(container = %id, status = status.as_str(), "health status changed");
                self.container_event(
                    &container,
                    &format!("health_status: {}", status.as_str()),
                    &[],
                );
            }
        }
    }

    /// Runs the check command once.
    async fn probe(&self, namespace: &str, id: &str, check: &Healthcheck) -> Probe {
        let start = now_nanos();
        let timeout_secs = check.timeout.as_secs().max(1) as i64;
        let result = self
            .exec_sync(namespace, id, check.command.clone(), timeout_secs)
            .await;
        let (exit_code, output) = match result {
            Ok(output) => {
                let mut text = output.stdout;
                text.extend_from_slice(&output.stderr);
                text.truncate(MAX_OUTPUT);
                (
                    output.exit_code,
                    String::from_utf8_lossy(&text).into_owned(),
                )
            }
            Err(RuntimeError::DeadlineExceeded(_)) => (
                -1,
                format!("Health check exceeded timeout ({:?})", check.timeout),
            ),
            Err(err) => (-1, err.to_string()),
        };
        Probe {
            start,
            end: now_nanos(),
            exit_code,
            output,
        }
    }

    /// Forgets the health of a removed container.
    pub(super) fn forget_health(&self, id: &str) {
        self.health.lock().remove(id);
    }
}
