#!/usr/bin/env bash
# Builds the containerd 2.x anchor of the CRI bench (issue 28) from its Go modules,
# through the Go module proxy, each with its own go.mod (`go install pkg@version`):
#   containerd and containerd-shim-runc-v2 from github.com/containerd/containerd/v2,
#   runc from github.com/opencontainers/runc (cgo, libseccomp: `-tags seccomp`).
# The binaries are cached outside the clone, keyed by version:
#   ${WHARF_BENCH_CACHE:-/var/cache/wharf-bench}/containerd-<version>/{containerd,containerd-shim-runc-v2,runc}
# and a second run returns at once. Prints the directory.
set -euo pipefail
containerd_version=${CONTAINERD2_VERSION:-v2.4.2}
runc_version=${RUNC_VERSION:-v1.5.3}
cache=${WHARF_BENCH_CACHE:-/var/cache/wharf-bench}
dir="$cache/containerd-$containerd_version-runc-$runc_version"
if ! command -v go >/dev/null; then
  echo "bench/build-containerd2.sh: the go command is missing: install Go 1.26 or newer" >&2
  exit 1
fi
if [[ ! -e /usr/include/seccomp.h ]]; then
  echo "bench/build-containerd2.sh: libseccomp's headers are missing: apt-get install libseccomp-dev (scripts/setup bench does)" >&2
  exit 1
fi
if [[ -x "$dir/containerd" && -x "$dir/containerd-shim-runc-v2" && -x "$dir/runc" ]]; then
  echo "$dir"
  exit 0
fi
start=$(date +%s)
rm -rf "$dir.partial"
mkdir -p "$dir.partial"
module=github.com/containerd/containerd/v2
GOBIN="$dir.partial" CGO_ENABLED=0 go install -trimpath \
  -ldflags "-X $module/version.Version=$containerd_version -X $module/version.Revision=module-proxy" \
  "$module/cmd/containerd@$containerd_version" "$module/cmd/containerd-shim-runc-v2@$containerd_version"
GOBIN="$dir.partial" CGO_ENABLED=1 go install -trimpath -tags seccomp \
  -ldflags "-X main.version=${runc_version#v} -X main.gitCommit=module-proxy" \
  "github.com/opencontainers/runc@$runc_version"
rm -rf "$dir"
mv "$dir.partial" "$dir"
echo "bench/build-containerd2.sh: containerd $containerd_version and runc $runc_version built in $(( $(date +%s) - start )) s" >&2
echo "$dir"
