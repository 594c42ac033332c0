#!/usr/bin/env bash
# Docker Engine API benchmark side by side with Debian's dockerd 20.10 (issue 18).
#
# On a fresh machine: installs docker.io (dockerd 20.10 with its containerd 1.6 and
# runc), containerd, jq and the test packages from Debian (scripts/setup bench), builds
# wharf in the release profile and crictl (tests/go/build.sh: needs Go), and starts
#   - a local registry on 127.0.0.1 with the busybox test image
#     (benches/cri_registry.rs), plus a 5-layer image this script builds and pushes,
#   - a dockerd with its own --data-root, --exec-root, --pidfile, UNIX socket and
#     config file (no /etc/docker/daemon.json), its own managed containerd (dockerd
#     starts one under its exec root when --containerd is not given; when a system
#     containerd listens on /run/containerd/containerd.sock, dockerd would use that
#     one, so dockerd then runs in a mount namespace of its own with a tmpfs on
#     /run/containerd), a bridge and subnet of this run (--bridge, made by this script
#     with the gateway address, as dockerd wants for a bridge not named docker0), its own
#     cgroup parent, and --insecure-registry for the local registry,
#   - a wharfd with its own root, state dir, CRI and Docker sockets, cgroup parent, and
#     its built-in bridge network on another bridge and subnet of this run.
# Both keep their iptables rules on (their defaults: dockerd's DOCKER chains, NAT and
# isolation; wharf's WHARF-* chains, masquerade and isolation), and the cleanup removes
# what each added. Both are driven by the SAME docker CLI (--cli, default the `docker`
# on PATH; it negotiates API 1.41 with both) and the same curl, in alternating rounds
# (wharf, dockerd, wharf, dockerd, ...). Each round measures, on the side's socket:
#   1. `docker run --rm IMAGE true`, --runs times one after another (wall time);
#   2. --wave concurrent `docker run -d IMAGE sleep 600`: wall time until every CLI has
#      returned (each returns once its container runs; the count is checked), and each
#      run's own time;
#   3. with --live containers running: `GET /containers/json` (what `docker ps` sends)
#      --lists times over one keep-alive connection (curl's time_total per request),
#      and `docker exec C true` --execs times;
#   4. memory (RSS and PSS from /proc/PID/smaps_rollup): the daemon (wharfd; dockerd +
#      its containerd) idle at the round's start, with --wave and with --live
#      containers, and the per-container processes (wharf-monitor*; the
#      containerd-shim-runc-v2 of each container) per container;
#   5. `docker rm -f` of all of them (one CLI call);
#   6. the 5-layer image, removed before each pull, `sync` before each: `docker pull`
#      (the progress stream), the same pull through the API alone (curl POST
#      /images/create, the whole progress stream read) and, on wharf, the CRI pull of
#      the same image (`crictl pull`), --pulls times each, interleaved;
#   plus the CLIs' floors for reference: `docker version` (/_ping + /version) and, on
#   wharf, `crictl version` (one Version RPC).
#   7. with --builds N (issue 20): `docker build` with the classic builder
#      (DOCKER_BUILDKIT=0) of the same 10-step context (6 MiB in 66 files): from
#      scratch (--no-cache), a fully cached rebuild, and a rebuild after one source file
#      changed, N times each; then the daemon's peak RSS (VmHWM, reset through
#      /proc/PID/clear_refs; dockerd's and its containerd's) while a build reads a
#      500 MB context (random data) and copies one small file from it.
# Raw samples (ms, one per line) and each round's JSON are kept under --out, with
# summary.txt (median over rounds of each round's p50 / p99 / figure, the ratio
# wharf / dockerd and the goal of issue 18) and the daemons' logs. Everything the
# script started or made is stopped and removed at the end, also on failure or Ctrl-C.
# Traffic stays on loopback and this run's bridges.
#
# Usage (root): bench/compare-docker.sh [--rounds N] [--quick] [--out DIR] [--cli PATH]
#                 [--runs N] [--wave N] [--live N] [--lists N] [--execs N] [--pulls N]
#   --rounds N   rounds per daemon (default 3)
#   --quick      a try-out: 1 round, --runs 5 --wave 10 --live 20 --lists 50 --execs 5
#                --pulls 1 (options after it override these)
#   --out DIR    results (default: a temp dir that is printed and kept)
#   --cli PATH   the docker CLI both daemons are driven with (default: docker on PATH)
#   --runs N     sequential `docker run --rm` per round (default 30)
#   --wave N     concurrent `docker run -d` (default 50)
#   --live N     containers running for the list, exec and memory figures (default 100;
#                at least --wave)
#   --lists N    GET /containers/json calls (default 200)
#   --execs N    `docker exec` calls (default 30)
#   --pulls N    pulls of the 5-layer image per way and round (default 2)
#   --builds N   builds of each kind per round (default 0: no build figures)
#   --only-builds  the build figures alone (--builds 3 unless given)
#   --composes N `up -d` / `down` of a 5-service Compose project per client and round
#                (default 0: no Compose figures; issue 29), with Compose v2 (Go,
#                tests/go/build.sh builds it) and Debian's docker-compose 1.29
#   --only-compose the Compose figures alone (--composes 5 unless given)
#   --networks N user-network figures per round (default 0: none; issue 19): N x
#                `network create` + `run --network` + `rm -f` + `network rm`; 200 x N
#                DNS lookups of a container name from inside another (the embedded
#                DNS, bench/lib/dns-latency.py in the container's netns); TCP
#                throughput of 3 x N downloads of 256 MiB from busybox httpd through
#                the published port on 127.0.0.1 and straight to the container's IP
#   --only-networks the network figures alone (--networks 5 unless given)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
out=""
cli=""
runs=30
wave=50
live=100
lists=200
execs=30
pulls=2
builds=0
only_builds=false
composes=0
only_compose=false
networks=0
only_networks=false
usage="usage: $0 [--rounds N] [--quick] [--out DIR] [--cli PATH] [--runs N] [--wave N] [--live N] [--lists N] [--execs N] [--pulls N] [--builds N] [--only-builds] [--composes N] [--only-compose] [--networks N] [--only-networks]"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --quick) rounds=1; runs=5; wave=10; live=20; lists=50; execs=5; pulls=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --cli) cli="$2"; shift 2 ;;
    --builds) builds="$2"; shift 2 ;;
    --only-builds) only_builds=true; (( builds > 0 )) || builds=3; shift ;;
    --composes) composes="$2"; shift 2 ;;
    --only-compose) only_compose=true; (( composes > 0 )) || composes=5; shift ;;
    --networks) networks="$2"; shift 2 ;;
    --only-networks) only_networks=true; (( networks > 0 )) || networks=5; shift ;;
    --runs) runs="$2"; shift 2 ;;
    --wave) wave="$2"; shift 2 ;;
    --live) live="$2"; shift 2 ;;
    --lists) lists="$2"; shift 2 ;;
    --execs) execs="$2"; shift 2 ;;
    --pulls) pulls="$2"; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "unknown argument $1 ($usage)" >&2; exit 2 ;;
  esac
done
for pair in "rounds=$rounds" "runs=$runs" "wave=$wave" "live=$live" "lists=$lists" "execs=$execs" "pulls=$pulls"; do
  if ! [[ "${pair#*=}" =~ ^[0-9]+$ ]] || (( ${pair#*=} < 1 )); then
    echo "--${pair%%=*} must be a number >= 1 (got ${pair#*=})" >&2
    exit 2
  fi
done
if (( live < wave )); then
  echo "--live ($live) must be at least --wave ($wave)" >&2
  exit 2
fi
if [[ $(id -u) != 0 ]]; then
  echo "run as root: dockerd and wharfd need namespaces, cgroups and mounts" >&2
  exit 2
fi
if ! command -v go >/dev/null; then
  echo "the go command is missing: install Go 1.26 or newer (https://go.dev/dl/) for tests/go/build.sh (crictl)" >&2
  exit 2
fi

scripts/setup bench
cli=${cli:-$(command -v docker)}
[[ -x $cli ]] || { echo "no docker CLI (--cli PATH)" >&2; exit 2; }
# shellcheck source=bench/lib/compare-setup.sh
source bench/lib/compare-setup.sh
registry_bin=$(bench/cri-registry-bin.sh)
# After the registry helper: a release build's wharfd is the one laid out by
# link/wharfd.symbol-order (link/README.md).
cargo build --release --locked --bins
tests/go/build.sh
crictl_bin="$PWD/target/go-tools/crictl"
[[ -x $crictl_bin ]] || crictl_bin="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/go-tools/crictl"

compare_init docker wdk 10.196
# The cleanup (the EXIT trap) also on SIGINT and SIGTERM.
trap 'exit 130' INT
trap 'exit 143' TERM
# dockerd's own network: another bridge, subnet 10.195.<octet>.0/24.
dbridge="ddk$tag"
dsubnet_prefix=10.195.$octet
dcgroup_parent="dockerd-bench-$tag"
dockerd_dir="$work/dockerd"
dockerd_sock="$dockerd_dir/docker.sock"
wharf_docker_sock="$work/wharf/docker.sock"
label="wharf-bench.docker=$tag"
for net in "$subnet" "$dsubnet_prefix.0/24"; do
  if ip -4 route show | grep -q "^${net%.0/24}\."; then
    echo "$net is already routed on this machine: pick another run (pid) or free it" >&2
    exit 1
  fi
done
iptables-save > "$work/iptables-before.txt"
bridge_nf_before=()
for f in /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables; do
  [[ -e $f ]] && bridge_nf_before+=("$f=$(cat "$f")")
done
key_json_existed=false
[[ -e /etc/docker/key.json ]] && key_json_existed=true
run_docker_existed=false
[[ -e /run/docker ]] && run_docker_existed=true
dockerd_pid=""
dockerd_containerd_pid=""
export DOCKER_CONFIG="$work/docker-config"   # the CLI's own config, not ~/.docker
export DOCKER_CLI_HINTS=false
mkdir -p "$DOCKER_CONFIG" "$out/raw"

compare_cleanup_extra() {
  # Containers of this run on both daemons, then dockerd and its containerd, then what
  # dockerd added to the host: iptables rules and chains, its bridge, its cgroups, the
  # bridge sysctls, /etc/docker/key.json (dockerd 20.10 writes its trust key there)
  # and /run/docker.
  local sock ids pid side net
  for side in wharf dockerd; do
    if [[ $side == wharf ]]; then sock="$wharf_docker_sock"; else sock="$dockerd_sock"; fi
    [[ -S $sock && -e $work/compose-$side/compose.yaml ]] || continue
    DOCKER_HOST="unix://$sock" timeout 120 "$compose_v2_bin" -p "wbc$tag" -f "$work/compose-$side/compose.yaml" down -v -t 1 \
      > /dev/null 2>&1 < /dev/null
  done
  for sock in "$wharf_docker_sock" "$dockerd_sock"; do
    [[ -S $sock ]] || continue
    ids=$(DOCKER_HOST="unix://$sock" timeout 60 "$cli" ps -aq --filter "label=$label" 2>/dev/null)
    # shellcheck disable=SC2086
    [[ -n $ids ]] && DOCKER_HOST="unix://$sock" timeout 120 "$cli" rm -f $ids >/dev/null 2>&1
    # The user networks of the network figures (issue 19).
    for net in "wbn$tag" "wbd$tag"; do
      DOCKER_HOST="unix://$sock" timeout 60 "$cli" network rm "$net" >/dev/null 2>&1
    done
  done
  if [[ -n $dockerd_pid ]]; then
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$dockerd_pid" 2>/dev/null
  fi
  if [[ -n $dockerd_containerd_pid ]]; then
    for _ in $(seq 50); do kill -0 "$dockerd_containerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$dockerd_containerd_pid" 2>/dev/null
  fi
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*$work/" || true); do
    kill -KILL "$pid" 2>/dev/null
  done
  # Processes left in this run's container cgroups (a container whose removal failed).
  local dir
  for dir in /sys/fs/cgroup/pids/"$dcgroup_parent" /sys/fs/cgroup/pids/"$cgroup_parent"; do
    [[ -d $dir ]] || continue
    find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
      kill -KILL "$pid" 2>/dev/null
    done
  done
  sleep 0.5
  for dir in /sys/fs/cgroup/*/"$dcgroup_parent" /sys/fs/cgroup/"$dcgroup_parent"; do
    [[ -d $dir ]] && find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  # dockerd's iptables rules: those added during the run that name its chains, bridge
  # or subnet; then its chains, where they did not exist before the run.
  local table rule chain
  for table in nat filter; do
    iptables-save -t "$table" | grep -E -- '^-A ' | grep -E "DOCKER|$dbridge|${dsubnet_prefix//./\\.}\.|10\.(199|202|204)\.$octet\." |
      grep -vxF -f <(grep -E -- '^-A ' "$work/iptables-before.txt") | sed 's/^-A /-D /' |
      while read -r rule; do eval "iptables -w -t $table $rule" 2>/dev/null; done
    for chain in $(iptables-save -t "$table" | sed -n 's/^:\(DOCKER[A-Z0-9-]*\) .*/\1/p'); do
      if ! grep -q "^:$chain " "$work/iptables-before.txt"; then
        iptables -w -t "$table" -F "$chain" 2>/dev/null
        iptables -w -t "$table" -X "$chain" 2>/dev/null
      fi
    done
  done
  ip link del "$dbridge" 2>/dev/null
  local pair
  for pair in "${bridge_nf_before[@]}"; do echo "${pair#*=}" > "${pair%%=*}"; done
  [[ $key_json_existed == false ]] && rm -f /etc/docker/key.json
  # dockerd makes /run/docker/plugins (plugin discovery) whatever its exec root.
  [[ $run_docker_existed == false ]] && rmdir /run/docker/plugins /run/docker 2>/dev/null
  cp "$dockerd_dir"/*.log "$work/" 2>/dev/null
  return 0
}

# --- the daemons -----------------------------------------------------------------------
start_dockerd() {
  mkdir -p "$dockerd_dir"
  echo '{}' > "$dockerd_dir/daemon.json"
  ip link add name "$dbridge" type bridge
  ip addr add "$dsubnet_prefix.1/24" dev "$dbridge"
  ip link set "$dbridge" up
  local args=(dockerd --config-file "$dockerd_dir/daemon.json"
    --data-root "$dockerd_dir/data" --exec-root "$dockerd_dir/exec"
    --pidfile "$dockerd_dir/dockerd.pid" -H "unix://$dockerd_sock"
    --bridge "$dbridge" --cgroup-parent "/$dcgroup_parent"
    --insecure-registry "$registry_host")
  if [[ -e /run/containerd/containerd.sock ]]; then
    echo "== a system containerd listens on /run/containerd: dockerd gets its own mount namespace with a tmpfs there" >&2
    unshare --mount --propagation private sh -c 'mount -t tmpfs tmpfs /run/containerd && exec "$@"' sh \
      "${args[@]}" > "$work/dockerd.log" 2>&1 &
  else
    "${args[@]}" > "$work/dockerd.log" 2>&1 &
  fi
  dockerd_pid=$!
}

start_wharfd() {
  mkdir -p "$work/wharf"
  cat > "$work/wharf/wharf.toml" <<EOF
[runtime]
default_cgroup_parent = "/$cgroup_parent"
[network]
mode = "bridge"
[network.bridge]
name = "$bridge"
subnet = "$subnet"
[docker]
socket = "$wharf_docker_sock"
EOF
  "$target_dir/release/wharfd" --config "$work/wharf/wharf.toml" --root "$work/wharf/root" \
    --state "$wharf_state" --cri-socket "$wharf_sock" > "$work/wharfd.log" 2>&1 &
  wharfd_pid=$!
  pids+=("$wharfd_pid")
}

wait_socket() {
  for _ in $(seq 150); do [[ -S $1 ]] && DOCKER_HOST="unix://$1" "$cli" version >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "no Docker API on $1; logs in $work" >&2
  exit 1
}

# --- the 5-layer image: built here, pushed with the registry's HTTP API ------------------
push_blob() {  # repo file digest
  local repo=$1 file=$2 digest=$3 location
  location=$(curl -sS -f -X POST -D - -o /dev/null "http://$registry_host/v2/$repo/blobs/uploads/" |
    tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  [[ $location == /* ]] && location="http://$registry_host$location"
  if [[ $location == *\?* ]]; then location="$location&digest=$digest"; else location="$location?digest=$digest"; fi
  curl -sS -f -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$location" -o /dev/null
}

build_layered_image() {
  # Layer i (1..5) holds i * 2 MiB of base64 text (random, so gzip gets ~0.76) in 32 KiB
  # files under /data/layer<i>: ~30 MiB and ~970 files in all.
  local dir="$work/layered" repo=bench/layered i diff_ids=() layers=() digest size
  mkdir -p "$dir"
  for i in 1 2 3 4 5; do
    mkdir -p "$dir/l$i/data/layer$i"
    head -c $(( i * 2 * 1024 * 1024 * 3 / 4 )) /dev/urandom | base64 -w 76 |
      split -b 32768 -a 3 - "$dir/l$i/data/layer$i/f"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$dir/l$i" -cf "$dir/l$i.tar" data
    diff_ids+=("sha256:$(sha256sum "$dir/l$i.tar" | cut -d' ' -f1)")
    gzip -n -6 "$dir/l$i.tar"
    digest="sha256:$(sha256sum "$dir/l$i.tar.gz" | cut -d' ' -f1)"
    size=$(stat -c %s "$dir/l$i.tar.gz")
    push_blob "$repo" "$dir/l$i.tar.gz" "$digest"
    layers+=("{\"mediaType\":\"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"size\":$size,\"digest\":\"$digest\"}")
  done
  jq -cn --args '{architecture: "amd64", os: "linux", config: {Cmd: ["/bin/sh"], Env: ["PATH=/bin"]},
      rootfs: {type: "layers", diff_ids: $ARGS.positional},
      history: [$ARGS.positional[] | {created_by: "layer"}]}' "${diff_ids[@]}" > "$dir/config.json"
  digest="sha256:$(sha256sum "$dir/config.json" | cut -d' ' -f1)"
  push_blob "$repo" "$dir/config.json" "$digest"
  local layers_json
  layers_json=$(IFS=,; echo "[${layers[*]}]")
  jq -cn --argjson layers "$layers_json" --arg digest "$digest" --argjson size "$(stat -c %s "$dir/config.json")" \
    '{schemaVersion: 2, mediaType: "application/vnd.docker.distribution.manifest.v2+json",
      config: {mediaType: "application/vnd.docker.container.image.v1+json", size: $size, digest: $digest},
      layers: $layers}' > "$dir/manifest.json"
  curl -sS -f -X PUT -H 'Content-Type: application/vnd.docker.distribution.manifest.v2+json' \
    --data-binary "@$dir/manifest.json" "http://$registry_host/v2/$repo/manifests/latest" -o /dev/null
  layered="$registry_host/$repo:latest"
  layered_info="5 gzip layers, $(du -cb "$dir"/l*.tar.gz | tail -1 | cut -f1) bytes compressed, $(du -sb --apparent-size "$dir"/l?/ | awk '{s+=$1} END {print s}') bytes in $(find "$dir"/l?/ -type f | wc -l) files"
  rm -rf "$dir"
}

# --- measuring helpers -------------------------------------------------------------------
now_us() { echo "${EPOCHREALTIME/./}"; }
dk() { DOCKER_HOST="unix://$sock" "$cli" "$@"; }
timed() {  # FILE CMD...: runs CMD (output discarded), appends its wall time in ms to FILE
  local file=$1 start end
  shift
  start=$(now_us)
  "$@" > /dev/null
  end=$(now_us)
  echo "$(( end - start ))" | awk '{printf "%.3f\n", $1 / 1000}' >> "$file"
}
mem_of() {  # PID: "rss_kib pss_kib" (0 0 when gone)
  awk '/^Rss:/ {r = $2} /^Pss:/ {p = $2} END {print r + 0, p + 0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo "0 0"
}
per_container_pids() {
  if [[ $side == wharf ]]; then
    pgrep -f "wharf-monitor(-watch)? .*$work/" || true
  else
    pgrep -f "containerd-shim-runc-v2 .*$work/" || true
  fi
}
record_memory() {  # POINT CONTAINERS
  local point=$1 count=$2 d_rss d_pss c_rss=0 c_pss=0 p_rss=0 p_pss=0 n=0 pid r p
  read -r d_rss d_pss < <(mem_of "$daemon_pid")
  if [[ $side == dockerd ]]; then read -r c_rss c_pss < <(mem_of "$dockerd_containerd_pid"); fi
  for pid in $(per_container_pids); do
    read -r r p < <(mem_of "$pid")
    p_rss=$(( p_rss + r )); p_pss=$(( p_pss + p )); n=$(( n + 1 ))
  done
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$point" "$count" "$d_rss" "$d_pss" "$c_rss" "$c_pss" \
    "$p_rss" "$p_pss" "$n" >> "$raw/memory.tsv"
}
start_containers() {  # N CONCURRENCY TIMES_FILE: N x `docker run -d`, CONCURRENCY at a time
  local n=$1 conc=$2 file=$3 i started=0 failed=0
  local -a jobs=()
  for (( i=0; i<n; i++ )); do
    timed "$file" dk run -d --label "$label" "$image" sleep 600 2>> "$raw/errors.log" &
    jobs+=($!)
    started=$(( started + 1 ))
    if (( ${#jobs[@]} >= conc )); then
      wait "${jobs[0]}" || failed=$(( failed + 1 ))
      jobs=("${jobs[@]:1}")
    fi
  done
  for pid in "${jobs[@]}"; do wait "$pid" || failed=$(( failed + 1 )); done
  (( failed == 0 )) || { echo "$failed of $n docker run -d failed: $(tail -3 "$raw/errors.log")" >&2; return 1; }
}
running_count() { dk ps -q --filter "label=$label" --filter status=running | wc -l; }
remove_layered() {
  dk rmi -f "$layered" > /dev/null 2>&1 || true
  if [[ $side == wharf ]]; then crictl rmi "$layered" > /dev/null 2>&1 || true; fi
}
crictl() { "$crictl_bin" --config "$work/crictl.yaml" "$@"; }
api_pull() {  # the Docker API alone: POST /images/create, the whole progress stream read
  local repo_name=${layered%:*}
  curl -sS -f --unix-socket "$sock" -X POST -o "$raw/api-pull-stream.json" \
    "http://localhost/v1.41/images/create?fromImage=$repo_name&tag=${layered##*:}"
  ! grep -q '"error' "$raw/api-pull-stream.json"
}
pull_once() {  # WAY FILE
  local way=$1 file=$2
  remove_layered
  sync
  case $way in
    docker) timed "$file" dk pull "$layered" ;;
    api) timed "$file" api_pull ;;
    cri) timed "$file" crictl pull "$layered" ;;
  esac
}

run_round() {  # side: wharf | dockerd; sets the round's raw dir
  : > "$raw/memory.tsv"
  if [[ $only_builds == false && $only_compose == false && $only_networks == false ]]; then
    run_api_round
  fi
  if (( builds > 0 )); then build_round; fi
  if (( composes > 0 )); then compose_round; fi
  if (( networks > 0 )); then network_round; fi
}

# --- user networks (issue 19) ------------------------------------------------------------
# Subnets of this run: 10.201.<octet>.0/24 (wharf) and 10.202.<octet>.0/24 (dockerd) for
# the lifecycle, .203/.204 for the DNS and throughput network.
net_subnet() {  # 1 (lifecycle) | 2 (dns): this side's subnet
  local base=$(( $1 == 1 ? 201 : 203 ))
  [[ $side == dockerd ]] && base=$(( base + 1 ))
  echo "10.$base.$octet.0/24"
}
net_lifecycle() {
  dk network create --subnet "$(net_subnet 1)" "wbn$tag" > /dev/null &&
    dk run -d --label "$label" --network "wbn$tag" --name "wbn$tag-c" "$image" sleep 1000 > /dev/null &&
    dk rm -f "wbn$tag-c" > /dev/null &&
    dk network rm "wbn$tag" > /dev/null
}
tput_mbps() {  # URL: MB/s of one download (curl), 1e6 bytes a MB
  curl -sf -o /dev/null -w '%{speed_download}' "$1" | awk '{printf "%.1f\n", $1 / 1000000}'
}
network_round() {
  local i pid ip port=$(( 30000 + octet * 10 ))
  if [[ $side == dockerd ]]; then port=$(( port + 1 )); fi
  for (( i=0; i<networks; i++ )); do timed "$raw/net_lifecycle.ms" net_lifecycle; done
  dk network create --subnet "$(net_subnet 2)" "wbd$tag" > /dev/null
  dk run -d --label "$label" --network "wbd$tag" --name "wbd$tag-a" "$image" sleep 1000 > /dev/null
  dk run -d --label "$label" --network "wbd$tag" --name "wbd$tag-web" -p "127.0.0.1:$port:80" \
    --tmpfs /www:size=300m "$image" sh -c \
    'dd if=/dev/zero of=/www/big bs=1M count=256 2>/dev/null && exec httpd -f -p 80 -h /www' > /dev/null
  pid=$(dk inspect -f '{{.State.Pid}}' "wbd$tag-a")
  nsenter --net="/proc/$pid/ns/net" python3 bench/lib/dns-latency.py "wbd$tag-web" $(( networks * 200 )) \
    >> "$raw/dns.ms"
  ip=$(dk inspect -f "{{(index .NetworkSettings.Networks \"wbd$tag\").IPAddress}}" "wbd$tag-web")
  for _ in $(seq 100); do curl -sf -o /dev/null "http://$ip/big" -r 0-0 && break; sleep 0.1; done
  for (( i=0; i<networks * 3; i++ )); do
    tput_mbps "http://127.0.0.1:$port/big" >> "$raw/tput_published.mbps"
    tput_mbps "http://$ip/big" >> "$raw/tput_direct.mbps"
  done
  dk rm -f "wbd$tag-a" "wbd$tag-web" > /dev/null
  dk network rm "wbd$tag" > /dev/null
}

# --- Compose (issue 29) ------------------------------------------------------------------
compose_v2_bin="$PWD/target/go-tools/docker-compose"
compose_project="wbc$tag"
# The project's network on each side: a subnet of this run (10.197/10.199.<octet>.0/24).
make_compose_projects() {
  local side subnet i
  for side in wharf dockerd; do
    if [[ $side == wharf ]]; then subnet="10.197.$octet.0/24"; else subnet="10.199.$octet.0/24"; fi
    mkdir -p "$work/compose-$side"
    {
      echo "services:"
      for i in 1 2 3 4 5; do
        printf '  s%s:\n    image: %s\n    command: ["sleep", "1000"]\n    stop_grace_period: 1s\n' "$i" "$image"
        printf '    environment:\n      SERVICE: s%s\n    labels:\n      wharf.bench: "%s"\n' "$i" "$tag"
      done
      printf '    volumes:\n      - data:/data\n'
      printf 'networks:\n  default:\n    ipam:\n      config:\n        - subnet: %s\n' "$subnet"
      printf 'volumes:\n  data: {}\n'
    } > "$work/compose-$side/compose.yaml"
  done
}
compose_v2() { DOCKER_HOST="unix://$sock" "$compose_v2_bin" -p "$compose_project" -f "$work/compose-$side/compose.yaml" "$@"; }
compose_v1() { DOCKER_HOST="unix://$sock" docker-compose -p "$compose_project" -f "$work/compose-$side/compose.yaml" "$@"; }
compose_round() {
  local i
  for (( i=0; i<composes; i++ )); do
    timed "$raw/compose_up.ms" compose_v2 up -d --quiet-pull
    timed "$raw/compose_down.ms" compose_v2 down -v -t 1
    timed "$raw/compose1_up.ms" compose_v1 up -d
    timed "$raw/compose1_down.ms" compose_v1 down -v -t 1
  done
}

# --- builds (issue 20) -------------------------------------------------------------------
make_build_context() {  # the 10-step context, and the 500 MB one
  local dir="$work/build-ctx" i
  mkdir -p "$dir/src" "$dir/assets"
  for i in $(seq -w 1 40); do head -c 24576 /dev/urandom | base64 -w 76 > "$dir/src/part$i.txt"; done
  for i in $(seq -w 1 24); do head -c 262144 /dev/urandom > "$dir/assets/blob$i.bin"; done
  echo "main" > "$dir/main.txt"
  printf '%s\n' "FROM $image" "ENV APP=bench" "WORKDIR /app" "COPY assets/ /app/assets/" \
    "COPY src/ /app/src/" "RUN cat /app/src/* | wc -c > /app/size" "COPY main.txt /app/main.txt" \
    "RUN ls -R /app > /app/list" "LABEL bench=wharf" 'CMD ["cat", "/app/size"]' > "$dir/Dockerfile"
  mkdir -p "$work/big-ctx"
  head -c 500000000 /dev/urandom > "$work/big-ctx/big.bin"
  echo small > "$work/big-ctx/small"
  printf 'FROM %s\nCOPY small /small\n' "$image" > "$work/big-ctx/Dockerfile"
}
dbuild() { DOCKER_BUILDKIT=0 dk build "$@"; }

peak_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
build_round() {
  local i btag="wharf-bench-build:$tag" before d_peak c_peak=0
  for (( i=0; i<builds; i++ )); do
    timed "$raw/build_fresh.ms" dbuild --no-cache -q -t "$btag" "$work/build-ctx"
    timed "$raw/build_cached.ms" dbuild -q -t "$btag" "$work/build-ctx"
    echo "change $side $r $i" >> "$work/build-ctx/src/part01.txt"
    timed "$raw/build_changed.ms" dbuild -q -t "$btag" "$work/build-ctx"
  done
  dk rmi -f "$btag" > /dev/null 2>&1 || true
  dk image prune -f > /dev/null 2>&1 || true
  # The 500 MB context: peak RSS of the daemon (and dockerd's containerd) while it runs.
  read -r before _ < <(mem_of "$daemon_pid")
  echo 5 > "/proc/$daemon_pid/clear_refs"
  if [[ $side == dockerd ]]; then echo 5 > "/proc/$dockerd_containerd_pid/clear_refs"; fi
  timed "$raw/build_big_context.ms" dbuild -q -t "$btag-big" "$work/big-ctx"
  d_peak=$(peak_kib "$daemon_pid")
  if [[ $side == dockerd ]]; then c_peak=$(peak_kib "$dockerd_containerd_pid"); fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' big_context_peak 0 "$d_peak" 0 "$c_peak" 0 0 0 0 >> "$raw/memory.tsv"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' big_context_before 0 "$before" 0 0 0 0 0 0 >> "$raw/memory.tsv"
  dk rmi -f "$btag-big" > /dev/null 2>&1 || true
  dk image prune -f > /dev/null 2>&1 || true
}

run_api_round() {
  local wall_start wall_end i c
  sleep 2
  record_memory idle 0
  for (( i=0; i<10; i++ )); do timed "$raw/cli_floor.ms" dk version; done
  if [[ $side == wharf ]]; then
    for (( i=0; i<10; i++ )); do timed "$raw/crictl_floor.ms" crictl version; done
  fi
  for (( i=0; i<runs; i++ )); do timed "$raw/run_rm.ms" dk run --rm "$image" true; done
  # The wave: all at once, wall time until every CLI has returned.
  wall_start=$(now_us)
  start_containers "$wave" "$wave" "$raw/wave_each.ms"
  wall_end=$(now_us)
  awk -v d=$(( wall_end - wall_start )) 'BEGIN {printf "%.3f\n", d / 1000}' > "$raw/wave_wall.ms"
  c=$(running_count)
  (( c == wave )) || { echo "$side: $c of $wave containers running after the wave" >&2; return 1; }
  sleep 2
  record_memory wave "$wave"
  if (( live > wave )); then start_containers $(( live - wave )) 10 "$raw/grow_each.ms"; fi
  c=$(running_count)
  (( c == live )) || { echo "$side: $c of $live containers running" >&2; return 1; }
  sleep 2
  record_memory live "$live"
  # GET /containers/json over one keep-alive connection: 10 to warm up, then --lists.
  local config="$raw/list.curlrc"
  : > "$config"
  for (( i=0; i<lists+10; i++ )); do
    printf 'url = "http://localhost/v1.41/containers/json"\noutput = "/dev/null"\n' >> "$config"
  done
  curl -sS -f --unix-socket "$sock" -K "$config" -w '%{time_total}\n' |
    tail -n +11 | awk '{printf "%.3f\n", $1 * 1000}' > "$raw/list.ms"
  local target
  target=$(dk ps -q --filter "label=$label" | head -1)
  for (( i=0; i<execs; i++ )); do timed "$raw/exec.ms" dk exec "$target" true; done
  # shellcheck disable=SC2046
  timed "$raw/rm_all.ms" dk rm -f $(dk ps -aq --filter "label=$label")
  c=$(dk ps -aq --filter "label=$label" | wc -l)
  (( c == 0 )) || { echo "$side: $c containers left after rm -f" >&2; return 1; }
  sleep 1
  record_memory after 0
  for (( i=0; i<pulls; i++ )); do
    pull_once docker "$raw/pull_docker.ms"
    pull_once api "$raw/pull_api.ms"
    if [[ $side == wharf ]]; then pull_once cri "$raw/pull_cri.ms"; fi
  done
  remove_layered
}

# --- per-round JSON and the summary ------------------------------------------------------
round_json() {  # raw dir -> JSON: each series' n/p50/p99/max/mean and the memory points
  local dir=$1 f name series="{}"
  for f in "$dir"/*.ms "$dir"/*.mbps; do
    [[ -e $f ]] || continue
    name=$(basename "$f"); name=${name%.*}
    series=$(jq -c --arg name "$name" --slurpfile s <(jq -s 'sort' "$f" 2>/dev/null || echo '[]') '
      ($s[0]) as $v | ($v | length) as $n
      | def pct($q): if $n == 0 then null else $v[([(($q * $n) | ceil) - 1, 0] | max)] end;
      . + {($name): {n: $n, p50: pct(0.5), p99: pct(0.99), max: ($v | max),
                     mean: (if $n == 0 then null else ($v | add / $n) end)}}' <<< "$series")
  done
  jq -n --argjson series "$series" --rawfile mem "$dir/memory.tsv" '{series: $series,
    memory: [$mem | split("\n")[] | select(length > 0) | split("\t")
      | {point: .[0], containers: (.[1] | tonumber), daemon_rss_kib: (.[2] | tonumber),
         daemon_pss_kib: (.[3] | tonumber), containerd_rss_kib: (.[4] | tonumber),
         containerd_pss_kib: (.[5] | tonumber), per_container_rss_kib_sum: (.[6] | tonumber),
         per_container_pss_kib_sum: (.[7] | tonumber), per_container_procs: (.[8] | tonumber)}]}'
}

summary() {
  jq -n -r --slurpfile w <(jq -s . "${wharf_json[@]}") --slurpfile d <(jq -s . "${dockerd_json[@]}") \
      --arg wave "$wave" --arg live "$live" '
    def median: map(select(. != null)) | sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
    def fmt: if . == null then "-" else ((. * 100 | round) / 100 | tostring) end;
    def ratio($a; $b): if $a == null or $b == null or $b == 0 then null else $a / $b end;
    def verdict($r; $goal): if $goal == null or $r == null then "" elif $r <= $goal then "met (<= \($goal))" else "MISSED (<= \($goal))" end;
    def med($runs; f): [$runs[] | [f] | first // null] | median;
    def mem($point; f): .memory[] | select(.point == $point) | f;
    def mib: if . == null then null else . / 1024 end;
    def daemon_total: .daemon_rss_kib + .containerd_rss_kib;
    def daemon_total_pss: .daemon_pss_kib + .containerd_pss_kib;
    def per($f): if .per_container_procs == 0 or .containers == 0 then null else (.[$f] / .containers) end;
    ($w[0]) as $W | ($d[0]) as $D
    | def row($title; f; $goal): med($W; f) as $a | med($D; f) as $b | ratio($a; $b) as $r
        | [$title, ($a | fmt), ($b | fmt), ($r | fmt), verdict($r; $goal)] | @tsv;
      "median over \($W | length) round(s) of each round figure; times in ms, memory in MiB",
      (["figure", "wharf", "dockerd", "wharf/dockerd", "goal (issue 18)"] | @tsv),
      row("docker run --rm true, p50"; .series.run_rm.p50; 0.33),
      row("docker run --rm true, p99"; .series.run_rm.p99; null),
      row("\($wave) x docker run -d at once: all running (wall)"; .series.wave_wall.p50; 0.33),
      row("  one docker run -d in the wave, p50"; .series.wave_each.p50; null),
      row("  one docker run -d in the wave, p99"; .series.wave_each.p99; null),
      row("GET /containers/json, \($live) containers, p50"; .series.list.p50; null),
      row("GET /containers/json, \($live) containers, p99"; .series.list.p99; 0.2),
      row("docker exec C true, p50"; .series.exec.p50; 0.33),
      row("docker exec C true, p99"; .series.exec.p99; null),
      row("docker rm -f of \($live) (one CLI call)"; .series.rm_all.p50; null),
      row("docker version (CLI floor), p50"; .series.cli_floor.p50; null),
      row("daemon RSS, idle (wharfd / dockerd+containerd)"; mem("idle"; daemon_total) | mib; 0.15),
      row("daemon RSS, fresh (round 1 idle)"; if .round == 1 then mem("idle"; daemon_total) | mib else null end; null),
      row("daemon RSS, \($wave) containers"; mem("wave"; daemon_total) | mib; 0.15),
      row("daemon RSS, \($live) containers"; mem("live"; daemon_total) | mib; null),
      row("daemon PSS, idle"; mem("idle"; daemon_total_pss) | mib; null),
      row("daemon PSS, \($wave) containers"; mem("wave"; daemon_total_pss) | mib; null),
      row("  of which containerd RSS, \($wave) containers"; mem("wave"; .containerd_rss_kib) | mib; null),
      row("per container RSS (monitor / shim), \($wave)"; mem("wave"; per("per_container_rss_kib_sum")) | mib; 0.1),
      row("per container PSS (monitor / shim), \($wave)"; mem("wave"; per("per_container_pss_kib_sum")) | mib; null),
      row("per container RSS (monitor / shim), \($live)"; mem("live"; per("per_container_rss_kib_sum")) | mib; null),
      row("per container PSS (monitor / shim), \($live)"; mem("live"; per("per_container_pss_kib_sum")) | mib; null),
      row("5-layer pull: docker pull, p50"; .series.pull_docker.p50; null),
      row("5-layer pull: API alone (curl /images/create), p50"; .series.pull_api.p50; null),
      "",
      "builds (issue 20): docker build, classic builder, the same 10-step context",
      (["figure", "wharf", "dockerd", "wharf/dockerd", "goal (issue 20)"] | @tsv),
      row("build from scratch (--no-cache), p50"; .series.build_fresh.p50; null),
      row("fully cached rebuild, p50"; .series.build_cached.p50; 0.25),
      row("rebuild after one source file changed, p50"; .series.build_changed.p50; null),
      row("500 MB context: build time"; .series.build_big_context.p50; null),
      row("500 MB context: daemon peak RSS (MiB)"; mem("big_context_peak"; daemon_total) | mib; null),
      row("500 MB context: daemon RSS before (MiB)"; mem("big_context_before"; .daemon_rss_kib) | mib; null),
      "",
      "user networks (issue 19)",
      (["figure", "wharf", "dockerd", "wharf/dockerd", "goal (issue 19)"] | @tsv),
      row("network create + run --network + rm -f + network rm, p50"; .series.net_lifecycle.p50; 0.33),
      row("DNS lookup of a container name (embedded DNS), p50"; .series.dns.p50; 0.5),
      row("DNS lookup of a container name (embedded DNS), p99"; .series.dns.p99; 0.5),
      row("TCP download via the published port on 127.0.0.1, MB/s, p50"; .series.tput_published.p50; null),
      row("TCP download straight to the container IP, MB/s, p50"; .series.tput_direct.p50; null),
      (med($W; .series.tput_published.p50) as $a | med($W; .series.tput_direct.p50) as $b | ratio($a; $b) as $r
        | ["wharf: published / direct throughput", ($a | fmt), ($b | fmt), ($r | fmt),
           (if $r == null then "" elif $r >= 0.95 then "met (>= 0.95)" else "MISSED (>= 0.95)" end)] | @tsv),
      (med($D; .series.tput_published.p50) as $a | med($D; .series.tput_direct.p50) as $b | ratio($a; $b) as $r
        | ["dockerd: published / direct throughput", ($a | fmt), ($b | fmt), ($r | fmt), "(the anchor)"] | @tsv),
      "",
      "Compose (issue 29): a 5-service project (one network, one volume)",
      (["figure", "wharf", "dockerd", "wharf/dockerd", "goal (issue 29)"] | @tsv),
      row("compose v2: up -d, p50"; .series.compose_up.p50; 0.5),
      row("compose v2: down -v, p50"; .series.compose_down.p50; null),
      row("docker-compose 1.29: up -d, p50"; .series.compose1_up.p50; 0.5),
      row("docker-compose 1.29: down -v, p50"; .series.compose1_down.p50; null),
      "",
      "Docker API pull vs CRI pull, wharf only (goal: Docker API <= 1.05 x CRI)",
      (["figure", "Docker API", "CRI (crictl pull)", "API/CRI", "goal"] | @tsv),
      (med($W; .series.pull_docker.p50) as $a | med($W; .series.pull_cri.p50) as $b | ratio($a; $b) as $r
        | ["docker pull vs crictl pull, p50", ($a | fmt), ($b | fmt), ($r | fmt), verdict($r; 1.05)] | @tsv),
      (med($W; .series.pull_api.p50) as $a | med($W; .series.pull_cri.p50) as $b | ratio($a; $b) as $r
        | ["curl /images/create vs crictl pull, p50", ($a | fmt), ($b | fmt), ($r | fmt), verdict($r; 1.05)] | @tsv),
      (med($W; .series.cli_floor.p50) as $a | med($W; .series.crictl_floor.p50) as $b | ratio($a; $b) as $r
        | ["CLI floor: docker version vs crictl version, p50", ($a | fmt), ($b | fmt), ($r | fmt), ""] | @tsv)
  ' | column -t -s $'\t'
}

# --- setup -------------------------------------------------------------------------------
compare_start_registry "$registry_bin"
build_layered_image
start_dockerd
start_wharfd
wait_socket "$wharf_docker_sock"
wait_socket "$dockerd_sock"
for _ in $(seq 50); do [[ -s $dockerd_dir/exec/containerd/containerd.pid ]] && break; sleep 0.2; done
dockerd_containerd_pid=$(cat "$dockerd_dir/exec/containerd/containerd.pid" 2>/dev/null || true)
if [[ -z $dockerd_containerd_pid ]]; then
  # The mount namespace case: its pid file is there too (exec root), else find it by path.
  dockerd_containerd_pid=$(pgrep -f "^containerd --config $dockerd_dir/exec/" | head -1)
fi
[[ -n $dockerd_containerd_pid ]] || { echo "cannot find dockerd's containerd" >&2; exit 1; }
printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n' "$wharf_sock" "$wharf_sock" > "$work/crictl.yaml"
for sock in "$wharf_docker_sock" "$dockerd_sock"; do
  dk pull -q "$image" > /dev/null
done
if (( builds > 0 )); then make_build_context; fi
if (( composes > 0 )); then
  command -v docker-compose > /dev/null || { echo "docker-compose is missing: scripts/setup test installs it" >&2; exit 2; }
  make_compose_projects
fi
versions="wharf $(git describe --always --dirty 2>/dev/null || echo unknown); $(dockerd --version); $(containerd --version); $(runc --version | head -1); CLI: $("$cli" --version) ($cli), API $(DOCKER_HOST="unix://$dockerd_sock" "$cli" version -f '{{.Client.APIVersion}}')"
echo "== registry $registry_host, images $image and $layered ($layered_info)" >&2
echo "== $versions" >&2
{
  echo "$versions"
  echo "kernel $(uname -r), $(nproc) cores; images $image and $layered ($layered_info)"
  echo "rounds $rounds, runs $runs, wave $wave, live $live, lists $lists, execs $execs, pulls $pulls"
} > "$out/setup.txt"

# --- rounds: wharf, dockerd, wharf, dockerd, ... ------------------------------------------
wharf_json=()
dockerd_json=()
for (( r=1; r<=rounds; r++ )); do
  for side in wharf dockerd; do
    if [[ $side == wharf ]]; then
      sock="$wharf_docker_sock"; daemon_pid="$wharfd_pid"
    else
      sock="$dockerd_sock"; daemon_pid="$dockerd_pid"
    fi
    raw="$out/raw/$side-$r"
    mkdir -p "$raw"
    echo "== round $r/$rounds: $side (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    echo "round $r $side: load before $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/load.txt"
    run_round
    round_json "$raw" | jq --arg side "$side" --argjson round "$r" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
      '{side: $side, round: $round, load_after: $load} + .' > "$out/$side-$r.json"
    if [[ $side == wharf ]]; then wharf_json+=("$out/$side-$r.json"); else dockerd_json+=("$out/$side-$r.json"); fi
  done
done

summary | tee "$out/summary.txt"
{ echo; cat "$out/setup.txt"; } | tee -a "$out/summary.txt"
