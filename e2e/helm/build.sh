#!/usr/bin/env bash
# Builds helm v4 from the module pinned in e2e/helm/go.mod (a module of its own, its
# `tool`: helm's Kubernetes modules would move tests/go's versions) into
# target/go-tools/helm, where tests/deploy.rs finds it to lint and render helm/wharf.
# The first build takes minutes (the Go module proxy, then compiling); Go's build
# cache makes a rebuild take seconds.
set -euo pipefail
cd "$(dirname "$0")"
out=../../target/go-tools
mkdir -p "$out"
if ! command -v go >/dev/null; then
  echo "e2e/helm/build.sh: the go command is missing: install Go 1.26 or newer" >&2
  exit 1
fi
helm_version=$(go list -m -f '{{.Version}}' helm.sh/helm/v4)
go build -o "$out/helm" \
  -ldflags "-X helm.sh/helm/v4/internal/version.version=$helm_version" \
  helm.sh/helm/v4/cmd/helm
