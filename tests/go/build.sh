#!/usr/bin/env bash
# Builds the Go clients the test suite drives wharfd with, from the modules pinned in
# tests/go/go.mod (the Go module proxy; Go's build cache makes a rebuild take seconds):
#   crictl        sigs.k8s.io/cri-tools/cmd/crictl (the `tool` of go.mod)
#   cri-client    tests/go/cri-client: grpc-go + k8s.io/cri-api, dialing by socket path
#   stream-client tests/go/stream-client: client-go's remotecommand and portforward
#                 (SPDY/3.1, WebSocket) on the CRI streaming URLs, as kubectl uses them
#   gpu-e2e       tests/go/gpu-e2e: the CRI + Docker API driver of e2e/gpu.sh (static,
#                 to be carried to a GPU host)
#   syscall-probe tests/go/syscall-probe: one raw syscall per name, printing its errno
#                 (static: tests/privilege.rs runs it inside containers)
#   stream-bench  tests/go/stream-bench: exec round trips, port-forward throughput and
#                 per-session memory of a CRI streaming server (bench/compare-streaming.sh)
#   docker-compose Compose v2, github.com/docker/compose/v5 (the `tool` of
#                 tests/compose/go.mod, a module of its own: its dependencies would
#                 move the Kubernetes modules' versions here), standalone
# into target/go-tools/, where tests/support/go_tools.rs finds them.
set -euo pipefail
cd "$(dirname "$0")"
out=../../target/go-tools
mkdir -p "$out"
if ! command -v go >/dev/null; then
  echo "tests/go/build.sh: the go command is missing: install Go 1.26 or newer" >&2
  exit 1
fi
crictl_version=$(go list -m -f '{{.Version}}' sigs.k8s.io/cri-tools)
go build -o "$out/crictl" \
  -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" \
  sigs.k8s.io/cri-tools/cmd/crictl
go build -o "$out/cri-client" ./cri-client
go build -o "$out/stream-client" ./stream-client
go test -c -o "$out/critest" -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" sigs.k8s.io/cri-tools/cmd/critest
go build -o "$out/stream-bench" ./stream-bench
CGO_ENABLED=0 go build -o "$out/gpu-e2e" ./gpu-e2e
CGO_ENABLED=0 go build -o "$out/syscall-probe" ./syscall-probe
compose_version=$(cd ../compose && go list -m -f '{{.Version}}' github.com/docker/compose/v5)
(cd ../compose && go build -o "../../target/go-tools/docker-compose" \
  -ldflags "-X github.com/docker/compose/v5/internal.Version=$compose_version" \
  github.com/docker/compose/v5/cmd)
