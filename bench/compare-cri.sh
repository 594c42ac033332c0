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
# Usage (root): bench/compare-cri.sh [--rounds N] [--out DIR] [--anchor A] [-- wharf-bench args...]
#   --anchor A   containerd-2 (default: containerd v2.4 + runc v1.5 built from their Go
#                modules by bench/build-containerd2.sh, cached) or containerd-1.6
#                (Debian's containerd 1.6 + runc 1.1)
#   --rounds N   rounds per runtime (default 3, minimum 3)
#   --out DIR    keep the JSON of every run, summary.txt and the daemons' logs (logs/)
#                in DIR (default: a temp dir that is printed and kept)
#   extra args after -- go to every wharf-bench run (e.g. --concurrency 1,10,50).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
out=""
anchor=containerd-2
bench_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --anchor) anchor="$2"; shift 2 ;;
    --) shift; bench_args=("$@"); break ;;
    *) echo "unknown argument $1 (usage: $0 [--rounds N] [--out DIR] [--anchor containerd-2|containerd-1.6] [-- wharf-bench args])" >&2; exit 2 ;;
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
# shellcheck source=bench/lib/compare-setup.sh
source bench/lib/compare-setup.sh
registry_bin=$(bench/cri-registry-bin.sh)
# After the registry helper: a release build's wharfd is the one laid out by
# link/wharfd.symbol-order (link/README.md).
cargo build --release --locked --bins --example wharf-bench
# A /22: room for 500 live pods (`-- --live 0,100,250,500`).
compare_init compare wcmp 10.198 22
wharf_bench="$target_dir/release/examples/wharf-bench"
bench_runs=()  # pids of wharf-bench runs: their pods carry the label wharf-bench.run=<pid>

compare_cleanup_extra() {
  # Pods a failed bench run left (a finished run removed its own).
  for run in "${bench_runs[@]}"; do
    for sock in "$wharf_sock" "$containerd_sock"; do
      [[ -S $sock ]] && "$wharf_bench" --endpoint "unix://$sock" --cleanup "$run" >/dev/null 2>&1
    done
  done
}

compare_start_registry "$registry_bin"
compare_write_cni
compare_start_containerd
compare_start_wharfd
compare_wait_sockets

# --- rounds: A B A B ... --------------------------------------------------------------
wharf_json=()       # in round order: the summary's round-1 figures are the fresh daemons'
containerd_json=()
for (( r=1; r<=rounds; r++ )); do
  for runtime in wharf containerd; do
    if [[ $runtime == wharf ]]; then sock="$wharf_sock"; else sock="$containerd_sock"; fi
    echo "== round $r/$rounds: $runtime" >&2
    if [[ $runtime == wharf ]]; then wharf_json+=("$out/$runtime-$r.json"); else containerd_json+=("$out/$runtime-$r.json"); fi
    # wharf's Prometheus scrape is timed too (containerd's has no pod families).
    scrape=()
    [[ $runtime == wharf ]] && scrape=(--metrics-url "http://127.0.0.1:$wharf_metrics_port/metrics")
    "$wharf_bench" --endpoint "unix://$sock" --image "$image" \
      --log-root "$work/logs" --cgroup-parent "/$cgroup_parent" --json "${scrape[@]}" \
      "${bench_args[@]}" > "$out/$runtime-$r.json" &
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
    ([$W[].memory[] | select(.point == "live") | .live_pods] | unique | .[] | select(. > 0)) as $l
      | ((mem($W; $l; .daemon_rss_mib) as $a | mem($C; $l; .daemon_rss_mib) as $b
          | ["daemon RSS, \($l) pods", ($a | fmt), ($b | fmt), ratio($a; $b)] | @tsv),
         (mem($W; $l; .per_pod_pss_mib) as $a | mem($C; $l; .per_pod_pss_mib) as $b
          | ["per-pod PSS (monitor / shim+pause), \($l) pods", ($a | fmt), ($b | fmt), ratio($a; $b)] | @tsv),
         (mem($W; $l; .per_pod_rss_mib) as $a | mem($C; $l; .per_pod_rss_mib) as $b
          | ["per-pod RSS (monitor / shim+pause), \($l) pods", ($a | fmt), ($b | fmt), ratio($a; $b)] | @tsv))
' | column -t -s $'\t' | tee "$out/summary.txt"
{
  echo
  echo "wharf $(git describe --always --dirty 2>/dev/null || echo unknown); $containerd_version"
  echo "kernel $(uname -r), $(nproc) cores"
} | tee -a "$out/summary.txt"
