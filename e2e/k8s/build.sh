#!/usr/bin/env bash
# Builds the real Kubernetes binaries of the e2e (kubelet, kube-apiserver, kubectl) from
# k8s.io/kubernetes and etcd from go.etcd.io/etcd/server/v3, through the Go module proxy:
# e2e/k8s/go.mod pins k8s.io/kubernetes and, by `replace`, every staging module
# (k8s.io/api, client-go, ...) to the same release; e2e/etcd/go.mod pins etcd.
# The binaries are cached outside the clone, keyed by version:
#   ${WHARF_E2E_CACHE:-/var/cache/wharf-e2e}/kubernetes-<version>/{kubelet,kube-apiserver,kubectl}
#   ${WHARF_E2E_CACHE:-/var/cache/wharf-e2e}/etcd-<version>/etcd
# and a second run returns at once. Prints the directory of each set.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${WHARF_E2E_CACHE:-/var/cache/wharf-e2e}
if ! command -v go >/dev/null; then
  echo "e2e/k8s/build.sh: the go command is missing: install Go 1.26 or newer" >&2
  exit 1
fi

k8s_version=$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
k8s_dir="$cache/kubernetes-$k8s_version"
if [[ ! -x "$k8s_dir/kubelet" || ! -x "$k8s_dir/kube-apiserver" || ! -x "$k8s_dir/kubectl" ]]; then
  start=$(date +%s)
  mkdir -p "$k8s_dir.partial"
  major=${k8s_version#v}; major=${major%%.*}
  minor=${k8s_version#v*.}; minor=${minor%%.*}
  ldflags=""
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in kubelet kube-apiserver kubectl; do
    (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$k8s_dir.partial/$cmd" \
      "k8s.io/kubernetes/cmd/$cmd")
  done
  rm -rf "$k8s_dir"
  mv "$k8s_dir.partial" "$k8s_dir"
  echo "e2e/k8s/build.sh: Kubernetes $k8s_version built in $(( $(date +%s) - start )) s" >&2
fi

etcd_version=$(cd "$here/../etcd" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
etcd_dir="$cache/etcd-$etcd_version"
if [[ ! -x "$etcd_dir/etcd" ]]; then
  start=$(date +%s)
  mkdir -p "$etcd_dir.partial"
  (cd "$here/../etcd" && go build -trimpath -o "$etcd_dir.partial/etcd" .)
  rm -rf "$etcd_dir"
  mv "$etcd_dir.partial" "$etcd_dir"
  echo "e2e/k8s/build.sh: etcd $etcd_version built in $(( $(date +%s) - start )) s" >&2
fi
echo "$k8s_dir"
echo "$etcd_dir"
