#!/usr/bin/env bash
# CRI streaming benchmark side by side with containerd (issue 17).
#
# On a fresh machine: installs containerd, runc, the CNI plugins and jq from Debian
# (scripts/setup bench), builds wharf in the release profile and the Go clients
# (tests/go/build.sh: needs Go), and starts the same setup as bench/compare-cri.sh
# (bench/lib/compare-setup.sh): a local registry on 127.0.0.1 with the busybox test
# image and a pause image, a containerd and a wharfd with their own roots, state dirs
# and sockets, both on one CNI config (bridge + host-local + portmap, a bridge and
# subnet of this run) and both with their streaming server on 127.0.0.1 (a free port).
# It then runs tests/go/stream-bench against both in alternation (wharf, containerd,
# wharf, containerd, ... --rounds N, at least 3); each run starts one pod with one
# busybox container and measures, through the SAME client code (grpc-go +
# k8s.io/cri-api for the RPCs, client-go's SPDY executor and port-forwarder, as
# kubectl and crictl):
#   1. the exec round trip: Exec RPC + SPDY upgrade of the URL + `true` in the running
#      container + its exit code, 200 times one after another (p50, p99, and the
#      phases), and ExecSync of `true` for reference;
#   2. port-forward throughput of one stream (client-go's port-forward, a new URL per
#      transfer), 1 GiB from the pod (download) and 1 GiB into it (upload), and the
#      floor: the same over a direct TCP connection to the pod IP; with two servers in
#      the pod: busybox nc in the container (`nc -l -p 5001 < /dev/zero`,
#      `nc -l -p 5002 > /dev/null`: 1 KiB reads and writes), and stream-bench's own on
#      sockets in the pod's network namespace (1 MiB reads and writes);
#   3. per exec session memory: 20 concurrent idle exec sessions (`sleep 600`, stdin
#      open): growth of the RSS/PSS of the container's monitor (wharf-monitor-watch) or
#      shim (containerd-shim-runc-v2) and of the daemon, per session.
# It keeps every run's JSON and prints each figure for both (median over rounds) and
# the ratio wharf / containerd. Everything it started or made is stopped and removed at
# the end, also on failure or Ctrl-C. Traffic stays on loopback and this run's bridge.
#
# Usage (root): bench/compare-streaming.sh [--rounds N] [--out DIR] [-- stream-bench args...]
#   --rounds N   rounds per runtime (default 3, minimum 3)
#   --out DIR    keep every run's JSON and log (stream-bench's stderr), summary.txt and
#                the daemons' logs (logs/) in DIR (default: a temp dir that is printed
#                and kept)
#   extra args after -- go to every `stream-bench run` (e.g. --exec-n 500,
#   --pf-bytes 268435456, --sessions 50, --skip execsync; see tests/go/stream-bench).
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
    *) echo "unknown argument $1 (usage: $0 [--rounds N] [--out DIR] [-- stream-bench args])" >&2; exit 2 ;;
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
if ! command -v go >/dev/null; then
  echo "the go command is missing: install Go 1.26 or newer (https://go.dev/dl/) for tests/go/build.sh" >&2
  exit 2
fi

scripts/setup bench
# shellcheck source=bench/lib/compare-setup.sh
source bench/lib/compare-setup.sh
registry_bin=$(bench/cri-registry-bin.sh)
# After the registry helper: a release build's wharfd is the one laid out by
# link/wharfd.symbol-order (link/README.md).
cargo build --release --locked --bins --example wharf-bench
tests/go/build.sh
stream_bench="$PWD/target/go-tools/stream-bench"
compare_init streaming wstr 10.197
run_ids=()  # stream-bench runs: their pods carry the label stream-bench.run=<id>

compare_cleanup_extra() {
  # Pods a failed run left (a finished run removed its own).
  for run in "${run_ids[@]}"; do
    for sock in "$wharf_sock" "$containerd_sock"; do
      [[ -S $sock ]] && "$stream_bench" cleanup --socket "$sock" --run-id "$run" >/dev/null 2>&1
    done
  done
}

compare_start_registry "$registry_bin"
compare_write_cni
compare_start_containerd
compare_start_wharfd
compare_wait_sockets

# --- rounds: A B A B ... --------------------------------------------------------------
wharf_json=()
containerd_json=()
for (( r=1; r<=rounds; r++ )); do
  for runtime in wharf containerd; do
    if [[ $runtime == wharf ]]; then
      sock="$wharf_sock"; daemon_pid="$wharfd_pid"; wharf_json+=("$out/$runtime-$r.json")
    else
      sock="$containerd_sock"; daemon_pid="$containerd_pid"; containerd_json+=("$out/$runtime-$r.json")
    fi
    echo "== round $r/$rounds: $runtime" >&2
    run_ids+=("$tag-$runtime-$r")
    "$stream_bench" run --socket "$sock" --image "$image" --logs "$work/logs" \
      --run-id "$tag-$runtime-$r" --daemon-pid "$daemon_pid" "${bench_args[@]}" \
      > "$out/$runtime-$r.json" 2> >(tee "$out/$runtime-$r.log" >&2)
  done
done

# --- summary: median over rounds of each figure, both runtimes, ratio ------------------
jq -n -r --slurpfile w <(jq -s . "${wharf_json[@]}") --slurpfile c <(jq -s . "${containerd_json[@]}") '
  def median: map(select(. != null)) | sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
  def fmt: if . == null then "-" else ((. * 100 | round) / 100 | tostring) end;
  def ratio($a; $b): if $a == null or $b == null or $b == 0 then "-" else (($a / $b * 100 | round) / 100 | tostring) end;
  def med($runs; f): [$runs[] | [f] | first // null] | median;
  def mbps($srv; $dir; $path): .port_forward[]?
    | select(.server == $srv and .direction == $dir and .path == $path) | .mb_per_s;
  def cpu_per_gib($srv; $dir): .port_forward[]?
    | select(.server == $srv and .direction == $dir and .path == "port-forward")
    | if .daemon_cpu_s == null then null else .daemon_cpu_s / (.bytes / 1073741824) end;
  def of_floor($srv; $dir): ([mbps($srv; $dir; "port-forward")] | first) as $f
    | ([mbps($srv; $dir; "direct")] | first) as $d | if $f == null or $d == null then null else $f / $d end;
  ($w[0]) as $W | ($c[0]) as $C
  | def row($title; f): med($W; f) as $a | med($C; f) as $b | [$title, ($a | fmt), ($b | fmt), ratio($a; $b)];
    def transfers($srv; $what): (row("\($srv) \($what), port-forward (MB/s)"; mbps($srv; $what; "port-forward")) | @tsv),
      (row("\($srv) \($what), direct TCP floor (MB/s)"; mbps($srv; $what; "direct")) | @tsv),
      (row("\($srv) \($what), port-forward / floor"; of_floor($srv; $what)) | @tsv);
    "median of \($W | length) rounds",
    (["figure", "wharf", "containerd", "wharf/containerd"] | @tsv),
    (row("exec round trip p50 (ms)"; .exec.round_trip.p50_ms) | @tsv),
    (row("exec round trip p99 (ms)"; .exec.round_trip.p99_ms) | @tsv),
    (row("  Exec RPC p50 (ms)"; .exec.phases.rpc.p50_ms) | @tsv),
    (row("  upgrade to 101 p50 (ms)"; .exec.phases.upgrade.p50_ms) | @tsv),
    (row("  streams + exec + exit p50 (ms)"; .exec.phases.stream.p50_ms) | @tsv),
    (row("ExecSync true p50 (ms, reference)"; .exec_sync.p50_ms) | @tsv),
    (row("ExecSync true p99 (ms, reference)"; .exec_sync.p99_ms) | @tsv),
    transfers("netns"; "download"), transfers("netns"; "upload"),
    (row("netns download, daemon CPU s per GiB forwarded"; cpu_per_gib("netns"; "download")) | @tsv),
    (row("netns upload, daemon CPU s per GiB forwarded"; cpu_per_gib("netns"; "upload")) | @tsv),
    transfers("nc"; "download"), transfers("nc"; "upload"),
    (row("per session: monitor/shim RSS (KiB)"; .sessions.per_session.monitor_rss_kib) | @tsv),
    (row("per session: monitor/shim PSS (KiB)"; .sessions.per_session.monitor_pss_kib) | @tsv),
    (row("per session: daemon RSS (KiB)"; .sessions.per_session.daemon_rss_kib) | @tsv),
    (row("per session: daemon PSS (KiB)"; .sessions.per_session.daemon_pss_kib) | @tsv),
    (row("monitor/shim RSS, no session (KiB)"; .sessions.before.monitor_rss_kib) | @tsv),
    (row("daemon RSS, no session (KiB)"; .sessions.before.daemon_rss_kib) | @tsv),
    (row("session start, Exec RPC to first output p50 (ms)"; .sessions.ready.p50_ms) | @tsv),
    (row("sessions: all ready after (s)"; .sessions.setup_s) | @tsv)
' | column -t -s $'\t' | tee "$out/summary.txt"
{
  echo
  echo "wharf $(git describe --always --dirty 2>/dev/null || echo unknown); $containerd_version"
  echo "client: $(cd tests/go && go list -m -f '{{.Path}} {{.Version}}' k8s.io/client-go google.golang.org/grpc | paste -sd ' ' -); $(go version)"
  echo "kernel $(uname -r), $(nproc) cores"
} | tee -a "$out/summary.txt"
