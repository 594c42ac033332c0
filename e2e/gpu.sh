#!/usr/bin/env bash
# e2e/gpu.sh: GPU access through wharfd, end to end, on a host with an NVIDIA driver.
# On a host without one it prints "no NVIDIA GPU: skipped" and exits 0.
#
# It carries everything, for a host that may reach nothing (no registry, runc, ip,
# iptables or nvidia-ctk needed):
#   - the CDI spec: `nvidia-ctk cdi generate` where it exists; otherwise written here for
#     the GPUs found (/dev/nvidia[0-9]*, nvidiactl, nvidia-uvm*, nvidia-caps/*, the
#     driver's libraries found with ldconfig -p, and nvidia-smi, bind-mounted read-only,
#     with LD_LIBRARY_PATH set so the loader finds them);
#   - a wharfd on a temporary root (network mode none, the spec's dir as its CDI dir);
#   - tests/go/gpu-e2e, which builds a minimal image from host files (glibc and the
#     test programs), loads it with POST /images/load and runs: a CRI pod + container
#     with CDI_devices nvidia.com/gpu=all running `nvidia-smi -L`; the same through the
#     Docker API with --gpus all; a CUDA vector addition where nvcc exists (cudart linked
#     statically); a container without the device, which must see no GPU; and on a
#     cgroup v2 host, memory/pids/CPU limits and an OOM kill.
#
# Needs: WHARF_BIN_DIR (default target/release) with wharfd, wharf-monitor and
# wharf-monitor-watch, and GPU_E2E_DRIVER (default target/go-tools/gpu-e2e, built by
# tests/go/build.sh). Run as root. Prints what every container printed and a PASS/FAIL
# line per check; exits 1 when one failed.
#
# For the suite on hosts without a GPU (tests/cdi_devices.rs), GPU_E2E_DEV_DIR points at
# fake device nodes in place of /dev and GPU_E2E_NVIDIA_SMI at a stand-in nvidia-smi.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob

dev=${GPU_E2E_DEV_DIR:-/dev}
gpus=("$dev"/nvidia[0-9]*)
if ((${#gpus[@]} == 0)); then
  echo "no NVIDIA GPU: skipped"
  exit 0
fi
bin=${WHARF_BIN_DIR:-target/release}
driver=${GPU_E2E_DRIVER:-target/go-tools/gpu-e2e}
smi=${GPU_E2E_NVIDIA_SMI:-$(command -v nvidia-smi || true)}
for program in "$bin/wharfd" "$bin/wharf-monitor" "$bin/wharf-monitor-watch" "$driver"; do
  if [[ ! -x $program ]]; then
    echo "e2e/gpu.sh: $program is missing: build with 'cargo build --release --bins' and tests/go/build.sh" >&2
    exit 1
  fi
done
if [[ -z $smi ]]; then
  echo "e2e/gpu.sh: GPUs found but no nvidia-smi on PATH: install the NVIDIA driver's utilities" >&2
  exit 1
fi

echo "=== wharf GPU end to end: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -n), kernel $(uname -r)"
echo "--- host nvidia-smi -L"
"$smi" -L

tmp=$(mktemp -d /tmp/wharf-gpu-e2e.XXXXXX)
wharfd_pid=
cleanup() {
  if [[ -n $wharfd_pid ]]; then
    kill -TERM "$wharfd_pid" 2>/dev/null || true
    wait "$wharfd_pid" 2>/dev/null || true
  fi
  # Whatever wharfd left mounted under the temp dir, deepest first.
  awk -v dir="$tmp" 'index($5, dir) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r mountpoint; do umount -l "$mountpoint" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/root" "$tmp/state" "$tmp/cdi" "$tmp/logs"

json_string() { printf '"%s"' "${1//\"/\\\"}"; }

# A node entry of the spec: container path as on the host, below /dev.
node_json() { printf '{"path":%s,"hostPath":%s}' "$(json_string "/dev/${1#"$dev"/}")" "$(json_string "$1")"; }

# A driver library by soname: ldconfig's cache, then the usual driver dirs.
find_library() {
  local soname=$1 path
  path=$(ldconfig -p 2>/dev/null | awk -v s="$soname" '$1 == s {print $NF; exit}')
  if [[ -z $path ]]; then
    for dir in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu \
      /usr/lib/aarch64-linux-gnu /usr/lib64 /lib64 /usr/lib; do
      if [[ -e $dir/$soname ]]; then
        path=$dir/$soname
        break
      fi
    done
  fi
  [[ -n $path ]] && readlink -f "$path"
}

write_spec() {
  local common=() mounts=() devices=() all=() node index uuid soname lib
  for node in "$dev/nvidiactl" "$dev/nvidia-uvm" "$dev/nvidia-uvm-tools" "$dev/nvidia-modeset" \
    "$dev"/nvidia-caps/*; do
    [[ -c $node ]] && common+=("$(node_json "$node")")
  done
  for soname in libcuda.so.1 libnvidia-ml.so.1 libnvidia-ptxjitcompiler.so.1 \
    libnvidia-nvvm.so.4 libcudadebugger.so.1 libnvidia-gpucomp.so; do
    if lib=$(find_library "$soname"); then
      mounts+=("$(printf '{"hostPath":%s,"containerPath":%s,"options":["ro","nosuid","nodev","bind"]}' \
        "$(json_string "$lib")" "$(json_string "/usr/local/nvidia/lib64/$soname")")")
      echo "--- CDI spec: $soname from $lib" >&2
    fi
  done
  mounts+=("$(printf '{"hostPath":%s,"containerPath":"/usr/bin/nvidia-smi","options":["ro","nosuid","nodev","bind"]}' \
    "$(json_string "$(readlink -f "$smi")")")")
  for node in "${gpus[@]}"; do
    index=${node##*/nvidia}
    devices+=("$(printf '{"name":"%s","containerEdits":{"deviceNodes":[%s]}}' "$index" "$(node_json "$node")")")
    uuid=$("$smi" -L | sed -n "s/^GPU $index: .*(UUID: \(GPU-[^)]*\)).*/\1/p")
    if [[ -n $uuid ]]; then
      devices+=("$(printf '{"name":"%s","containerEdits":{"deviceNodes":[%s]}}' "$uuid" "$(node_json "$node")")")
    fi
    all+=("$(node_json "$node")")
  done
  devices+=("$(printf '{"name":"all","containerEdits":{"deviceNodes":[%s]}}' "$(IFS=,; echo "${all[*]}")")")
  printf '{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu","containerEdits":{"env":["LD_LIBRARY_PATH=/usr/local/nvidia/lib64"],"deviceNodes":[%s],"mounts":[%s]},"devices":[%s]}\n' \
    "$(IFS=,; echo "${common[*]}")" "$(IFS=,; echo "${mounts[*]}")" "$(IFS=,; echo "${devices[*]}")"
}

if [[ -z ${GPU_E2E_DEV_DIR:-} ]] && command -v nvidia-ctk >/dev/null; then
  echo "--- CDI spec: nvidia-ctk cdi generate"
  nvidia-ctk cdi generate --output="$tmp/cdi/nvidia.yaml" >/dev/null
else
  echo "--- CDI spec: written by e2e/gpu.sh (no nvidia-ctk)"
  write_spec >"$tmp/cdi/nvidia.json"
fi

# The CUDA program, where nvcc can build one.
cuda=
if command -v nvcc >/dev/null; then
  cat >"$tmp/vector_add.cu" <<'EOF'
#include <cstdio>
#include <cstdlib>
__global__ void add(const float *a, const float *b, float *c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}
int main() {
  const int n = 1 << 20;
  size_t bytes = n * sizeof(float);
  float *a = (float *)malloc(bytes), *b = (float *)malloc(bytes), *c = (float *)malloc(bytes);
  for (int i = 0; i < n; i++) { a[i] = i; b[i] = 2.0f * i; }
  float *da, *db, *dc;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) { printf("FAIL: no CUDA device\n"); return 1; }
  cudaMalloc(&da, bytes); cudaMalloc(&db, bytes); cudaMalloc(&dc, bytes);
  cudaMemcpy(da, a, bytes, cudaMemcpyHostToDevice);
  cudaMemcpy(db, b, bytes, cudaMemcpyHostToDevice);
  add<<<(n + 255) / 256, 256>>>(da, db, dc, n);
  cudaError_t err = cudaMemcpy(c, dc, bytes, cudaMemcpyDeviceToHost);
  if (err != cudaSuccess) { printf("FAIL: %s\n", cudaGetErrorString(err)); return 1; }
  for (int i = 0; i < n; i++)
    if (c[i] != 3.0f * i) { printf("FAIL: c[%d] = %f, not %f\n", i, c[i], 3.0f * i); return 1; }
  printf("PASS: %d sums on %s\n", n, prop.name);
  return 0;
}
EOF
  if nvcc -O2 -cudart static -o "$tmp/vector-add" "$tmp/vector_add.cu" >"$tmp/nvcc.log" 2>&1; then
    cuda=$tmp/vector-add
    echo "--- nvcc $(nvcc --version | tail -1): vector-add built"
  else
    echo "--- nvcc failed (the CUDA check is left out):"
    cat "$tmp/nvcc.log"
  fi
fi

# The image's files: the test programs and what they load (not the driver's libraries:
# those come from the CDI spec), and the host's loader cache.
files=()
add_with_libraries() {
  files+=("$1")
  while read -r lib; do
    case $lib in
      */libcuda.so* | */libnvidia*) ;;
      /*) files+=("$lib") ;;
    esac
  done < <(ldd "$1" 2>/dev/null | awk '/=>/ {print $3} /^[[:space:]]*\// {print $1}')
}
for program in sh ls cat tail; do
  add_with_libraries "$(readlink -f "$(command -v "$program")")"
  # The program by its usual name too (sh may be dash or bash).
  [[ -e /bin/$program ]] && files+=("/bin/$program")
done
[[ -n $cuda ]] && add_with_libraries "$cuda"
add_with_libraries "$(readlink -f "$smi")"
[[ -e /etc/ld.so.cache ]] && files+=(/etc/ld.so.cache)
# nvidia-smi is mounted by the spec, not part of the image.
image_files=()
for file in "${files[@]}"; do
  [[ $file == "$(readlink -f "$smi")" || $file == "$cuda" ]] && continue
  image_files+=("$file")
done

cat >"$tmp/wharf.toml" <<EOF
[docker]
socket = "$tmp/state/docker.sock"
[network]
mode = "none"
[metrics]
address = ""
[cdi]
spec_dirs = ["$tmp/cdi"]
EOF
"$bin/wharfd" --config "$tmp/wharf.toml" --root "$tmp/root" --state "$tmp/state" \
  --cri-socket "$tmp/state/wharf.sock" >"$tmp/wharfd.log" 2>&1 &
wharfd_pid=$!
for _ in $(seq 1 300); do
  [[ -S $tmp/state/wharf.sock && -S $tmp/state/docker.sock ]] && break
  if ! kill -0 "$wharfd_pid" 2>/dev/null; then
    echo "e2e/gpu.sh: wharfd exited:" >&2
    cat "$tmp/wharfd.log" >&2
    exit 1
  fi
  sleep 0.1
done

status=0
"$driver" -cri "$tmp/state/wharf.sock" -docker "$tmp/state/docker.sock" -logs "$tmp/logs" \
  -files "$(IFS=,; echo "${image_files[*]}")" ${cuda:+-cuda "$cuda"} || status=$?
if ((status != 0)); then
  echo "--- wharfd log (last 40 lines)"
  tail -n 40 "$tmp/wharfd.log"
fi
exit "$status"
