#!/usr/bin/env bash
# Builds the local registry helper (benches/cri_registry.rs) and prints its path. The
# scripts run it directly: through cargo, SIGTERM would not reach it. The bench build
# leaves bench-profile binaries in target/release, so build the release ones after it.
set -euo pipefail
cd "$(dirname "$0")/.."
path=$(cargo bench --locked --no-run --bench cri_registry --message-format=json |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "cri_registry" and .executable != null) | .executable' |
  tail -1)
[[ -x $path ]] || { echo "cannot find the cri_registry bench executable" >&2; exit 1; }
echo "$path"
