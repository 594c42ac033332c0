//! The Go clients of the suite (crictl, and `cri-client`: grpc-go dialing the CRI socket
//! by its path), built by `tests/go/build.sh` into `target/go-tools/` (scripts/test runs
//! it first).

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of the Go tool `name`; panics saying how to build it when it is missing.
pub fn go_tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/go-tools")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build the Go test clients with tests/go/build.sh (needs Go 1.26 \
         and the Go module proxy; scripts/test runs it)",
        path.display()
    );
    path
}

/// Runs `crictl` against the CRI socket `socket` with `args`, without a config file.
pub fn crictl(socket: &std::path::Path, args: &[&str]) -> Output {
    let endpoint = format!("unix://{}", socket.display());
    Command::new(go_tool("crictl"))
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--config", "/dev/null", "--timeout", "60s"])
        .args(args)
        .output()
        .expect("run crictl")
}

/// Like [`crictl`], asserting success; returns stdout.
pub fn crictl_ok(socket: &std::path::Path, args: &[&str]) -> String {
    let out = crictl(socket, args);
    assert!(
        out.status.success(),
        "crictl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
