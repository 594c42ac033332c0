#!/usr/bin/env bash
# Regenerates link/wharfd.symbol-order: which of wharfd's functions run at start-up,
# under the CRI benchmark and under a Docker API workload, counted with one uprobe per
# function (link/function-profile.py).
#
#   link/profile-wharfd.sh        as root; the list is written after ~25 minutes on 2
#                                 cores, then the kernel takes ~40 more to disable the
#                                 ~50k probes
#
# A release wharfd is copied to a work dir (the probes attach to that file only) and run
# twice against a local registry, each time under wharf-bench: on the built-in bridge
# (then the docker CLI's workload, docker_workload), then in CNI mode with the bridge +
# host-local + portmap plugins (bench/compare-cri.sh's setup). Start-up is the state 3 s
# after the first daemon's socket appears.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then
  echo "run as root: uprobes, and wharfd needs namespaces, cgroups and mounts" >&2
  exit 2
fi

scripts/setup test
registry_bin=$(bench/cri-registry-bin.sh)
# After the registry helper: bench-profile symbols' hashes differ from a release
# build's, and the list must name the latter.
cargo build --release --locked --bin wharfd --bin wharf-monitor --bin wharf-monitor-watch \
  --example wharf-bench

work=$(mktemp -d /tmp/wharf-profile-XXXXXX)
if [[ ! -e /sys/kernel/tracing/uprobe_events ]]; then
  mount -t tracefs nodev /sys/kernel/tracing
fi
# The probes of a run before this one may still be going (see cleanup).
while pgrep -f "function-profile.py clear" > /dev/null; do
  echo "== waiting for the removal of an earlier run's probes" >&2
  sleep 30
done
export FUNCTION_PROFILE_NAMES=$work/names FUNCTION_PROFILE_GROUP=wharf_profile_$$
octet=$(( $$ % 250 ))
bridges=("wpb$(( $$ % 100000 ))" "wpc$(( $$ % 100000 ))" "wpn$(( $$ % 100000 ))")
pids=()
daemon=""  # the running wharfd, ended by profile_run or by cleanup
cleanup() {
  set +e
  [[ -n $daemon ]] && pids+=("$daemon")
  for (( i=${#pids[@]}-1; i>=0; i-- )); do kill -TERM "${pids[$i]}" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
  done
  for pid in $(pgrep -f "wharf-monitor(-watch)? .*$work/" || true); do kill -KILL "$pid"; done
  grep " $work/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  for bridge in "${bridges[@]}"; do
    ip link del "$bridge" 2>/dev/null
    for table in nat filter; do
      iptables-save -t "$table" | grep -- "-A " | grep -E "10\.19[456]\.$octet\.|$bridge" |
        sed 's/^-A /-D /' | while read -r rule; do eval "iptables -w -t $table $rule"; done
    done
  done
  # The kernel waits for an RCU tasks-trace grace period for each probe it disables
  # (~40 minutes for ~50k), then for a normal one for each it removes: 20 a second,
  # unless grace periods are expedited (/sys/kernel/rcu_expedited) while it does:
  # about 500 a second.
  echo "== removing the probes" >&2
  local expedited
  expedited=$(cat /sys/kernel/rcu_expedited 2>/dev/null || echo "")
  [[ -n $expedited ]] && echo 1 > /sys/kernel/rcu_expedited
  python3 link/function-profile.py clear
  [[ -n $expedited ]] && echo "$expedited" > /sys/kernel/rcu_expedited
  rm -rf "$work"
}
trap cleanup EXIT

"$registry_bin" --ref-file "$work/image.ref" > "$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do [[ -s $work/image.ref ]] && break; sleep 0.5; done
[[ -s $work/image.ref ]] || { echo "the registry did not start: $(cat "$work/registry.log")" >&2; exit 1; }

mkdir -p "$work/bin" "$work/net.d" "$work/ipam" "$work/none.d"
cp target/release/wharfd target/release/wharf-monitor target/release/wharf-monitor-watch "$work/bin/"
cat > "$work/bridge.toml" <<EOF
[network]
mode = "bridge"
[network.bridge]
name = "${bridges[0]}"
subnet = "10.194.$octet.0/24"
ip_forward = false
[cni]
conf_dir = "$work/none.d"
EOF
cat > "$work/net.d/10-profile.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "profile-$$", "plugins": [
  {"type": "bridge", "bridge": "${bridges[1]}", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.195.$octet.0/24"}]], "dataDir": "$work/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
cat > "$work/cni.toml" <<EOF
[network]
mode = "cni"
[cni]
conf_dir = "$work/net.d"
plugin_dirs = ["/usr/lib/cni"]
EOF

python3 link/function-profile.py register "$work/bin/wharfd"

# What bench/compare-docker.sh does through the Docker API (issue 18's figures), in
# small: runs, a wave of detached containers, lists, execs, logs, stats, removal,
# pulls; and a classic build (cached too), a user network and a volume.
docker_workload() {
  local sock=$1 image wave=()
  image=$(cat "$work/image.ref")
  export DOCKER_HOST="unix://$sock" DOCKER_BUILDKIT=0 DOCKER_CONFIG="$work/docker-config"
  docker version
  docker pull "$image"
  for _ in $(seq 5); do docker run --rm "$image" true; done
  for i in $(seq 10); do docker run -d --name "profile-$i" "$image" sleep 600 & wave+=($!); done
  wait "${wave[@]}"
  for _ in $(seq 20); do curl -sf --unix-socket "$sock" http://localhost/v1.41/containers/json >/dev/null; done
  docker ps
  for _ in $(seq 5); do docker exec profile-1 true; done
  docker inspect profile-1 >/dev/null
  docker logs profile-1
  docker stats --no-stream
  docker top profile-1
  docker rm -f $(docker ps -aq)
  docker rmi "$image"
  docker pull "$image"
  docker network create --subnet "10.196.$octet.0/24" \
    -o "com.docker.network.bridge.name=${bridges[2]}" "profile-net-$$"
  docker volume create "profile-vol-$$"
  docker run --rm --network "profile-net-$$" -v "profile-vol-$$:/data" -p 127.0.0.1::80 "$image" \
    sh -c 'echo data > /data/file'
  docker network rm "profile-net-$$"
  docker volume rm "profile-vol-$$"
  mkdir -p "$work/build"
  printf 'FROM %s\nENV A=1\nCOPY file /file\nRUN cat /file\nCMD ["true"]\n' "$image" > "$work/build/Dockerfile"
  echo content > "$work/build/file"
  docker build -t "profile-build-$$" "$work/build"
  docker build -t "profile-build-$$" "$work/build"
  docker save "profile-build-$$" | docker load
  docker rmi "profile-build-$$"
  unset DOCKER_HOST DOCKER_BUILDKIT DOCKER_CONFIG
}

# profile_run NAME SNAPSHOT_AT_START WHARF_BENCH_ARGS...
profile_run() {
  local name=$1 snapshot=$2
  shift 2
  "$work/bin/wharfd" --config "$work/$name.toml" --root "$work/$name/root" \
    --state "$work/$name/state" --cri-socket "$work/$name/state/wharf.sock" \
    > "$work/wharfd-$name.log" 2>&1 &
  daemon=$!
  for _ in $(seq 300); do [[ -S $work/$name/state/wharf.sock ]] && break; sleep 0.2; done
  [[ -S $work/$name/state/wharf.sock ]] || { echo "wharfd did not start: $(cat "$work/wharfd-$name.log")" >&2; exit 1; }
  if [[ $snapshot == yes ]]; then
    sleep 3
    python3 link/function-profile.py snapshot "$work/start.profile"
  fi
  target/release/examples/wharf-bench --endpoint "unix://$work/$name/state/wharf.sock" \
    --image "$(cat "$work/image.ref")" --log-root "$work/logs-$name" "$@" > "$work/bench-$name.txt"
  if [[ $name == bridge ]]; then
    docker_workload "$work/$name/state/docker.sock" > "$work/docker-$name.txt" 2>&1 \
      || echo "== the docker workload failed: $(tail -3 "$work/docker-$name.txt")" >&2
  fi
  kill -TERM "$daemon"
  wait "$daemon" || true
  daemon=""  # reaped: its pid may be reused, so cleanup must not signal it
  echo "== $name: $(grep -c . "$work/bench-$name.txt") lines of results" >&2
}
profile_run bridge yes --concurrency 1,10 --min-pods 10 --live 0,50 --pull-rounds 2
profile_run cni no
python3 link/function-profile.py snapshot "$work/end.profile"
python3 link/function-profile.py order "$work/start.profile" "$work/end.profile" \
  link/wharfd.symbol-order
