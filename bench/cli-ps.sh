#!/usr/bin/env bash
# `wharf ps` against `docker ps` on the same wharfd (issue 21's benchmark): time from
# start to the first byte of output and to the end, with N containers, both CLIs in
# alternating runs; plus each CLI's binary size and peak RSS (/usr/bin/time).
#
# Starts its own wharfd (root, state dir, sockets, cgroup parent of this run), imports
# a one-file busybox root filesystem (/bin/busybox, Debian busybox-static) as the
# image, creates N containers (created, not started: `ps -a` lists them all), measures,
# and removes everything it made, also on failure or Ctrl-C.
#
# Usage (root): bench/cli-ps.sh [--containers N] [--runs N] [--bin DIR] [--cli PATH]
#   --containers N  containers listed (default 100)
#   --runs N        runs of each CLI (default 30)
#   --bin DIR       where wharf and wharfd are (default target/release)
#   --cli PATH      the docker CLI (default: docker on PATH)
set -euo pipefail

containers=100 runs=30 bin=target/release cli=$(command -v docker || true)
while [ $# -gt 0 ]; do
    case "$1" in
        --containers) containers=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --cli) cli=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$bin/wharf" ] && [ -x "$bin/wharfd" ] || { echo "no wharf/wharfd in $bin: cargo build --release first, or --bin" >&2; exit 1; }
[ -n "$cli" ] && [ -x "$cli" ] || { echo "no docker CLI: install docker.io or give --cli" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "/bin/busybox is missing: apt-get install busybox-static" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time is missing: apt-get install time" >&2; exit 1; }

dir=$(mktemp -d /tmp/wharf-cli-ps.XXXXXX)
parent="/wharf-cli-ps-$$"
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        WHARF_HOST=unix://$dir/state/docker.sock "$bin/wharf" ps -aq --no-trunc 2>/dev/null |
            xargs -r "$bin/wharf" -H "unix://$dir/state/docker.sock" rm -f >/dev/null 2>&1 || true
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    fi
    for sub in /sys/fs/cgroup/*/"${parent#/}" /sys/fs/cgroup/"${parent#/}"; do
        [ -d "$sub" ] && find "$sub" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    grep " $dir" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

mkdir -p "$dir/net.d" "$dir/rootfs/bin"
cat > "$dir/wharf.toml" <<TOML
[runtime]
default_cgroup_parent = "$parent"
[cni]
conf_dir = "$dir/net.d"
TOML
"$bin/wharfd" --config "$dir/wharf.toml" --root "$dir/root" --state "$dir/state" \
    --cri-socket "$dir/state/wharf.sock" --log-level warn > "$dir/wharfd.log" 2>&1 &
pid=$!
host="unix://$dir/state/docker.sock"
for _ in $(seq 100); do [ -S "$dir/state/docker.sock" ] && break; sleep 0.1; done
[ -S "$dir/state/docker.sock" ] || { cat "$dir/wharfd.log" >&2; exit 1; }

cp /bin/busybox "$dir/rootfs/bin/busybox"
ln -s busybox "$dir/rootfs/bin/sh"
tar -C "$dir/rootfs" -cf "$dir/rootfs.tar" .
"$bin/wharf" -H "$host" import -c 'CMD ["/bin/sh"]' "$dir/rootfs.tar" bench/busybox:cli >/dev/null
for i in $(seq "$containers"); do
    "$bin/wharf" -H "$host" create --name "ps-$i" bench/busybox:cli sh -c "sleep $i" >/dev/null
done

# Each run: wall time to the first byte and to the end (ms), from Python's clock.
measure() {
    python3 - "$runs" "$@" <<'PY'
import subprocess, sys, time
runs, cmds = int(sys.argv[1]), sys.argv[2:]
first, total = {c: [] for c in cmds}, {c: [] for c in cmds}
for _ in range(runs):
    for c in cmds:
        start = time.perf_counter()
        p = subprocess.Popen(c, shell=True, stdout=subprocess.PIPE)
        p.stdout.read(1)
        first[c].append((time.perf_counter() - start) * 1000)
        p.stdout.read()
        p.wait()
        total[c].append((time.perf_counter() - start) * 1000)
for c in cmds:
    f, t = sorted(first[c]), sorted(total[c])
    name = "wharf" if "wharf -H" in c else ("curl" if c.startswith("curl") else "docker")
    print(f"{name:7} first byte p50 {f[len(f)//2]:7.1f} ms  p90 {f[len(f)*9//10]:7.1f} ms   end p50 {t[len(t)//2]:7.1f} ms")
PY
}
echo "$containers containers, $runs runs each, alternating (wharf from $bin, docker $("$cli" --version))"
# curl: the daemon's own share (GET /containers/json?all=1, what both CLIs send).
measure "$bin/wharf -H $host ps -a" "DOCKER_HOST=$host $cli ps -a" \
    "curl -s --unix-socket $dir/state/docker.sock http://d/v1.41/containers/json?all=1"
for c in "$bin/wharf -H $host ps -a" "env DOCKER_HOST=$host $cli ps -a"; do
    rss=$(/usr/bin/time -f %M $c 2>&1 >/dev/null | tail -1)
    case "$c" in *wharf\ -H*) name=wharf ;; *) name=docker ;; esac
    echo "peak RSS $name ps -a: ${rss} KiB"
done
strip -o "$dir/wharf.stripped" "$bin/wharf"
echo "binary size: wharf $(stat -c %s "$bin/wharf") B ($(stat -c %s "$dir/wharf.stripped") B stripped), docker $(stat -c %s "$cli") B"
