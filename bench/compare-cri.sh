#!/usr/bin/env bash
# CRI benchmark side by side with containerd (issue 6, item 2).
#
# On a fresh machine: installs containerd, runc, the CNI plugins and jq from Debian
# (scripts/setup bench), builds wharf in the release profile, starts
#   - a local registry on 127.0.0.1 with the busybox test image and a pause image
#     (benches/cri_registry.rs),
#   - a containerd with its own root, state dir and socket, and
#   - a wharfd with its own root, state dir and socket,
# both on the SAME CNI config (bridge + host-local + portmap from /usr/lib/cni, a bridge
# and subnet of this run), both pulling from the same local registry over plain HTTP
# (the image references name 127.0.0.1:PORT directly, so a failing mirror can never
# send a request off the machine). It then runs wharf-bench against both in
# alternation (wharf, containerd, wharf, containerd, ... --rounds N, at least 3),
# keeps every run's JSON, and prints each figure for both (median over rounds) and the
# ratio wharf / containerd. Everything it started or made is stopped and removed at the
# end, also on failure or Ctrl-C.
#
# Usage (root): bench/compare-cri.sh [--rounds N] [--out DIR] [-- wharf-bench args...]
#   --rounds N   rounds per runtime (default 3, minimum 3)
#   --out DIR    keep the JSON of every run and summary.txt in DIR (default: a temp dir
#                that is printed and kept)
#   extra args after -- go to every wharf-bench run (e.g. --concurrency 1,10,50).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
out=""
bench_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; bench_args=("$@"); break ;;
    *) echo "unknown argument $1 (usage: $0 [--rounds N] [--out DIR] [-- wharf-bench args])" >&2; exit 2 ;;
  esac
done
if ! [[ "$rounds" =~ ^[0-9]+$ ]] || (( rounds < 3 )); then
  echo "--rounds must be a number >= 3 (got $rounds)" >&2
  exit 2
fi
if [[ $(id -u) != 0 ]]; then
  echo "run as root: containerd and wharfd need namespaces, cgroups and mounts" >&2
  exit 2
fi

scripts/setup bench
registry_bin=$(bench/cri-registry-bin.sh)
# After the registry helper: a release build's wharfd is the one laid out by
# link/wharfd.symbol-order (link/README.md).
cargo build --release --locked --bins --example wharf-bench

work=$(mktemp -d /tmp/wharf-compare-XXXXXX)
out=${out:-$work/results}
mkdir -p "$out"
tag=$(( $$ % 100000 ))
octet=$(( $$ % 250 ))
bridge="wcmp$tag"
ip_forward_before=$(cat /proc/sys/net/ipv4/ip_forward)
pids=()
bench_runs=()  # pids of wharf-bench runs: their pods carry the label wharf-bench.run=<pid>

cleanup() {
  set +e
  echo "== cleaning up" >&2
  # Pods a failed bench run left (a finished run removed its own).
  for run in "${bench_runs[@]}"; do
    for sock in "$work/wharf/state/wharf.sock" "$work/containerd/containerd.sock"; do
      [[ -S $sock ]] && target/release/examples/wharf-bench --endpoint "unix://$sock" --cleanup "$run" >/dev/null 2>&1
    done
  done
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
  for table in nat filter; do
    iptables-save -t "$table" | grep -- "-A " | grep -E "10\.198\.$octet\.|\"$bridge\"|$bridge" |
      sed 's/^-A /-D /' | while read -r rule; do eval "iptables -w -t $table $rule" 2>/dev/null; done
  done
  echo "$ip_forward_before" > /proc/sys/net/ipv4/ip_forward
  # wharfd's pod cgroups of this run (their parent outlives the pods), never /wharf.
  for dir in /sys/fs/cgroup/*/"wharf-bench-$tag" /sys/fs/cgroup/"wharf-bench-$tag"; do
    [[ -d $dir ]] && find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  rm -rf "$work/wharf" "$work/containerd" "$work/ipam" "$work/logs"
  echo "== results kept in $out" >&2
}
trap cleanup EXIT

# --- registry with the images ---------------------------------------------------------
"$registry_bin" --ref-file "$work/image.ref" --pause-ref-file "$work/pause.ref" \
  > "$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do [[ -s $work/pause.ref && -s $work/image.ref ]] && break; sleep 0.5; done
[[ -s $work/pause.ref ]] || { echo "the registry did not start: $(cat "$work/registry.log")" >&2; exit 1; }
image=$(cat "$work/image.ref")
pause=$(cat "$work/pause.ref")
registry_host=${image%%/*}

# --- the shared CNI config ------------------------------------------------------------
mkdir -p "$work/net.d" "$work/ipam" "$work/logs"
cat > "$work/net.d/10-bench.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bench-$tag",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.198.$octet.0/24"}]],
              "dataDir": "$work/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

# --- containerd -----------------------------------------------------------------------
mkdir -p "$work/containerd/certs.d/$registry_host"
cat > "$work/containerd/certs.d/$registry_host/hosts.toml" <<EOF
server = "http://$registry_host"
[host."http://$registry_host"]
  capabilities = ["pull", "resolve"]
EOF
cat > "$work/containerd/config.toml" <<EOF
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
[grpc]
  address = "$work/containerd/containerd.sock"
[ttrpc]
  address = "$work/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  # No CAP_SYS_RESOURCE on the test machines: never lower oom_score_adj.
  restrict_oom_score_adj = true
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
containerd --config "$work/containerd/config.toml" > "$work/containerd.log" 2>&1 &
pids+=($!)

# --- wharfd ---------------------------------------------------------------------------
mkdir -p "$work/wharf"
cat > "$work/wharf/wharf.toml" <<EOF
[runtime]
default_cgroup_parent = "/wharf-bench-$tag"
[network]
mode = "cni"
[cni]
conf_dir = "$work/net.d"
plugin_dirs = ["/usr/lib/cni"]
EOF
target/release/wharfd --config "$work/wharf/wharf.toml" --root "$work/wharf/root" \
  --state "$work/wharf/state" --cri-socket "$work/wharf/state/wharf.sock" > "$work/wharfd.log" 2>&1 &
pids+=($!)

for sock in "$work/containerd/containerd.sock" "$work/wharf/state/wharf.sock"; do
  for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.2; done
  [[ -S $sock ]] || { echo "no socket $sock; logs in $work" >&2; exit 1; }
done
containerd_version=$(containerd --version)
echo "== registry $registry_host, image $image, containerd: $containerd_version" >&2

# --- rounds: A B A B ... --------------------------------------------------------------
wharf_json=()       # in round order: the summary's round-1 figures are the fresh daemons'
containerd_json=()
for (( r=1; r<=rounds; r++ )); do
  for runtime in wharf containerd; do
    if [[ $runtime == wharf ]]; then sock="$work/wharf/state/wharf.sock"; else sock="$work/containerd/containerd.sock"; fi
    echo "== round $r/$rounds: $runtime" >&2
    if [[ $runtime == wharf ]]; then wharf_json+=("$out/$runtime-$r.json"); else containerd_json+=("$out/$runtime-$r.json"); fi
    target/release/examples/wharf-bench --endpoint "unix://$sock" --image "$image" \
      --log-root "$work/logs" --json "${bench_args[@]}" > "$out/$runtime-$r.json" &
    bench_runs+=($!)
    wait "$!"
  done
done

# --- summary: median over rounds of each figure, both runtimes, ratio ------------------
jq -n -r --slurpfile w <(jq -s . "${wharf_json[@]}") --slurpfile c <(jq -s . "${containerd_json[@]}") '
  def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
  def key: "\(.op)|\(.concurrency // "-")|\(.live // "-")";
  def series($runs): [$runs[].latency[]] | group_by(key)
    | map({key: (.[0] | key), value: {p50: (map(.p50_ms) | map(select(. != null)) | median),
                                       p99: (map(.p99_ms) | map(select(. != null)) | median)}})
    | from_entries;
  def mem($runs; $live; f): [$runs[].memory[] | select(.live_pods == $live) | f] | map(select(. != null)) | median;
  def start_rss($runs): [$runs[].memory[] | select(.point == "start") | .daemon_rss_mib] | map(select(. != null)) | median;
  def ratio($a; $b): if $a == null or $b == null or $b == 0 then "-" else (($a / $b * 100 | round) / 100 | tostring) end;
  def fmt: if . == null then "-" else ((. * 100 | round) / 100 | tostring) end;
  ($w[0]) as $W | ($c[0]) as $C | series($W) as $ws | series($C) as $cs
  | "latency, ms (median of \($W | length) rounds)   [op | concurrency | live]",
    (["figure", "wharf p50", "ctrd p50", "ratio", "wharf p99", "ctrd p99", "ratio"] | @tsv),
    ($ws | keys[] as $k | [$k, ($ws[$k].p50 | fmt), ($cs[$k].p50 | fmt), ratio($ws[$k].p50; $cs[$k].p50),
                            ($ws[$k].p99 | fmt), ($cs[$k].p99 | fmt), ratio($ws[$k].p99; $cs[$k].p99)] | @tsv),
    "",
    "memory, MiB (median)",
    (["figure", "wharf", "containerd", "ratio"] | @tsv),
    (start_rss($W[0:1]) as $a | start_rss($C[0:1]) as $b
      | ["daemon RSS, fresh (round 1 start)", ($a | fmt), ($b | fmt), ratio($a; $b)] | @tsv),
    (start_rss($W[1:]) as $a | start_rss($C[1:]) as $b
      | ["daemon RSS, idle between rounds (start of rounds 2..)", ($a | fmt), ($b | fmt), ratio($a; $b)] | @tsv),
    (mem($W; 0; select(.point == "live") | .daemon_rss_mib) as $a | mem($C; 0; select(.point == "live") | .daemon_rss_mib) as $b
      | ["daemon RSS, 0 pods 0.5 s after the waves", ($a | fmt), ($b | fmt), ratio($a; $b)] | @tsv),
    (mem($W; 50; .daemon_rss_mib) as $a | mem($C; 50; .daemon_rss_mib) as $b
      | ["daemon RSS, 50 pods", ($a | fmt), ($b | fmt), ratio($a; $b)] | @tsv),
    (mem($W; 50; .per_pod_pss_mib) as $a | mem($C; 50; .per_pod_pss_mib) as $b
      | ["per-pod PSS (monitor / shim+pause)", ($a | fmt), ($b | fmt), ratio($a; $b)] | @tsv),
    (mem($W; 50; .per_pod_rss_mib) as $a | mem($C; 50; .per_pod_rss_mib) as $b
      | ["per-pod RSS (monitor / shim+pause)", ($a | fmt), ($b | fmt), ratio($a; $b)] | @tsv)
' | column -t -s $'\t' | tee "$out/summary.txt"
{
  echo
  echo "wharf $(git describe --always --dirty 2>/dev/null || echo unknown); $containerd_version; $(runc --version | head -1)"
  echo "kernel $(uname -r), $(nproc) cores"
} | tee -a "$out/summary.txt"
