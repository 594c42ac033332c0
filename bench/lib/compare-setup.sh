# shellcheck shell=bash
# The setup that bench/compare-cri.sh and bench/compare-streaming.sh share, sourced by
# them from the repository root (set -euo pipefail, as root): a local registry with the
# busybox test image and a pause image, one CNI config on a bridge and subnet of the
# run, a containerd and a wharfd with their own roots, state dirs and sockets, and the
# cleanup that removes all of it, also on failure or Ctrl-C (the logs of the daemons and
# the registry are kept in $out/logs).
#
#   compare_init NAME BRIDGE_PREFIX SUBNET_PREFIX [BITS]
#                                     work dir /tmp/wharf-NAME-XXXXXX, bridge
#                                     BRIDGE_PREFIX<tag>, subnet SUBNET_PREFIX.<n>.0/24
#                                     (/BITS when given, BITS <= 24),
#                                     wharfd's cgroup parent /wharf-NAME-<tag>, the trap
#                                     on EXIT; a function compare_cleanup_extra, if the
#                                     script defines one, runs first in the cleanup
#   compare_start_registry BIN        BIN: bench/cri-registry-bin.sh's helper; sets
#                                     image, pause, registry_host
#   compare_write_cni
#   compare_start_containerd          sets containerd_pid
#   compare_start_wharfd              sets wharfd_pid
#   compare_wait_sockets              sets containerd_version
#
# Variables for the scripts: work, out (results, default $work/results), tag, bridge,
# wharf_sock, wharf_state, containerd_sock, target_dir (cargo's target directory:
# CARGO_TARGET_DIR is honoured), pids (what this run started; the cleanup ends them by
# pid, newest first).

compare_init() {
  local name=$1
  compare_subnet_prefix=$3
  target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
  work=$(mktemp -d "/tmp/wharf-$name-XXXXXX")
  out=${out:-$work/results}
  mkdir -p "$out"
  tag=$(( $$ % 100000 ))
  octet=$(( $$ % 250 ))
  bridge="$2$tag"
  cgroup_parent="wharf-$name-$tag"
  # A prefix length under 24 (the 4th argument; the CRI bench's 500 live pods need a
  # /22) takes the block of third octets around $octet.
  compare_subnet_bits=${4:-24}
  local block=$(( 1 << (24 - compare_subnet_bits) ))
  local base=$(( octet / block * block ))
  subnet="$compare_subnet_prefix.$base.0/$compare_subnet_bits"
  subnet_octets=$(seq -s'|' "$base" $(( base + block - 1 )))
  ip_forward_before=$(cat /proc/sys/net/ipv4/ip_forward)
  wharf_state="$work/wharf/state"
  wharf_sock="$wharf_state/wharf.sock"
  containerd_sock="$work/containerd/containerd.sock"
  pids=()
  trap compare_cleanup EXIT
}

compare_cleanup() {
  set +e
  echo "== cleaning up" >&2
  if declare -F compare_cleanup_extra >/dev/null; then
    compare_cleanup_extra
  fi
  # Daemons and the registry, by the pids this script started, newest first.
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    kill -TERM "${pids[$i]}" 2>/dev/null
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
  done
  # Shims and monitors outlive their daemon by design; end those of this run's dirs.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*$work/|wharf-monitor(-watch)? .*$work/" || true); do
    kill -KILL "$pid" 2>/dev/null
  done
  # Mounts under the work dir (containerd's rootfs and shm mounts, wharf's pins).
  grep " $work/" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  ip link del "$bridge" 2>/dev/null
  local prefix=${compare_subnet_prefix//./\\.}
  for table in nat filter; do
    iptables-save -t "$table" | grep -- "-A " | grep -E "$prefix\.($subnet_octets)\.|\"$bridge\"|$bridge" |
      sed 's/^-A /-D /' | while read -r rule; do eval "iptables -w -t $table $rule" 2>/dev/null; done
  done
  echo "$ip_forward_before" > /proc/sys/net/ipv4/ip_forward
  # wharfd's pod cgroups of this run (their parent outlives the pods), never /wharf.
  for dir in /sys/fs/cgroup/*/"$cgroup_parent" /sys/fs/cgroup/"$cgroup_parent"; do
    [[ -d $dir ]] && find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  # The daemons' and the registry's logs go with the results; the rest goes.
  mkdir -p "$out/logs"
  cp "$work"/*.log "$out/logs/" 2>/dev/null
  if [[ $out == "$work"/* ]]; then
    find "$work" -mindepth 1 -maxdepth 1 ! -path "${out%%/}" -exec rm -rf {} +
  else
    rm -rf "$work"
  fi
  echo "== results kept in $out" >&2
}

compare_start_registry() {
  "$1" --ref-file "$work/image.ref" --pause-ref-file "$work/pause.ref" \
    > "$work/registry.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do [[ -s $work/pause.ref && -s $work/image.ref ]] && break; sleep 0.5; done
  [[ -s $work/pause.ref ]] || { echo "the registry did not start: $(cat "$work/registry.log")" >&2; exit 1; }
  image=$(cat "$work/image.ref")
  pause=$(cat "$work/pause.ref")
  registry_host=${image%%/*}
}

compare_write_cni() {
  mkdir -p "$work/net.d" "$work/ipam" "$work/logs"
  cat > "$work/net.d/10-bench.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bench-$tag",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$subnet"}]],
              "dataDir": "$work/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# The containerd the bench compares with: `anchor` (set before compare_init) is
# containerd-2 (default: containerd v2.4 and runc v1.5 built from their Go modules by
# bench/build-containerd2.sh, config version 3) or containerd-1.6 (Debian's containerd
# 1.6 and runc 1.1, config version 2).
compare_anchor_binaries() {
  case "${anchor:=containerd-2}" in
    containerd-2)
      containerd_dir=$(bench/build-containerd2.sh)
      containerd_bin="$containerd_dir/containerd"
      runc_bin="$containerd_dir/runc"
      ;;
    containerd-1.6)
      containerd_dir=""
      containerd_bin=$(command -v containerd)
      runc_bin=$(command -v runc)
      ;;
    *) echo "unknown anchor $anchor (containerd-2 or containerd-1.6)" >&2; exit 2 ;;
  esac
}

# The head of containerd's config (version $1): its root, state and sockets.
compare_containerd_config_head() {
  cat <<EOF
version = $1
root = "$work/containerd/root"
state = "$work/containerd/state"
[grpc]
  address = "$work/containerd/containerd.sock"
[ttrpc]
  address = "$work/containerd/containerd.sock.ttrpc"
EOF
}

compare_start_containerd() {
  compare_anchor_binaries
  # Plain HTTP to the local registry, for both versions.
  mkdir -p "$work/containerd/certs.d/$registry_host"
  cat > "$work/containerd/certs.d/$registry_host/hosts.toml" <<EOF
server = "http://$registry_host"
[host."http://$registry_host"]
  capabilities = ["pull", "resolve"]
EOF
  if [[ $anchor == containerd-2 ]]; then
    compare_start_containerd2
    return
  fi
  { compare_containerd_config_head 2; cat <<EOF
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  # No CAP_SYS_RESOURCE on the test machines: never lower oom_score_adj.
  restrict_oom_score_adj = true
  # The streaming server (Exec, Attach, PortForward URLs): loopback, a free port.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$work/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$work/containerd/certs.d"
EOF
} > "$work/containerd/config.toml"
  "$containerd_bin" --config "$work/containerd/config.toml" > "$work/containerd.log" 2>&1 &
  containerd_pid=$!
  pids+=("$containerd_pid")
}

# containerd 2.x: the same settings in config version 3, where the CRI plugin is split
# into images, runtime and the gRPC service (docs/cri/config.md of containerd v2).
# Its shim and runc come from the same directory (PATH, and runc by BinaryName).
compare_start_containerd2() {
  { compare_containerd_config_head 3; cat <<EOF
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$pause"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$work/containerd/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  # No CAP_SYS_RESOURCE on the test machines: never lower oom_score_adj.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$runc_bin"
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$work/net.d"
[plugins.'io.containerd.grpc.v1.cri']
  # The streaming server (Exec, Attach, PortForward URLs): loopback, a free port.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
} > "$work/containerd/config.toml"
  PATH="$containerd_dir:$PATH" "$containerd_bin" --config "$work/containerd/config.toml" \
    > "$work/containerd.log" 2>&1 &
  containerd_pid=$!
  pids+=("$containerd_pid")
}

compare_start_wharfd() {
  mkdir -p "$work/wharf"
  # The Prometheus listener on a free loopback port (scraped by compare-cri.sh).
  wharf_metrics_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat > "$work/wharf/wharf.toml" <<EOF
[metrics]
address = "127.0.0.1:$wharf_metrics_port"
[runtime]
default_cgroup_parent = "/$cgroup_parent"
[network]
mode = "cni"
[cni]
conf_dir = "$work/net.d"
plugin_dirs = ["/usr/lib/cni"]
EOF
  "$target_dir/release/wharfd" --config "$work/wharf/wharf.toml" --root "$work/wharf/root" \
    --state "$wharf_state" --cri-socket "$wharf_sock" > "$work/wharfd.log" 2>&1 &
  wharfd_pid=$!
  pids+=("$wharfd_pid")
}

compare_wait_sockets() {
  for sock in "$containerd_sock" "$wharf_sock"; do
    for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.2; done
    [[ -S $sock ]] || { echo "no socket $sock; logs in $work" >&2; exit 1; }
  done
  containerd_version="$("$containerd_bin" --version); $("$runc_bin" --version | head -1)"
  echo "== registry $registry_host, image $image, containerd: $containerd_version" >&2
}
