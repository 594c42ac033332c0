//! The Docker API with docker-py (issue 18), a client we did not write: pulls, run
//! without detach (docker-py's create, start, wait, logs), detached containers with
//! limits, filters, stop, wait, remove, errors, image tags, and image save and load
//! (tests/docker-py/), and volumes.

mod support;

use std::path::Path;
use std::process::Command;

use support::docker::DockerEnv;
use support::pods::unique;

/// Runs `tests/docker-py/<script>` against a fresh wharfd; it prints `done` last.
async fn run_script(script: &str, done: &str) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/docker-py-venv/bin/python");
    assert!(
        python.is_file(),
        "docker-py is missing: run tests/docker-py/setup.sh (scripts/test does), which \
         makes target/docker-py-venv with python3 -m venv and pip"
    );
    let docker = DockerEnv::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/docker-py")
        .join(script);
    let output = Command::new(&python)
        .arg(&script)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", docker.socket().display()),
        )
        .env("WHARF_TEST_IMAGE", &docker.image)
        .env("WHARF_TEST_NAME", unique("dpy"))
        // A /24 of this process for the network script: 172.19.(pid).0/24.
        .env(
            "WHARF_TEST_SUBNET",
            format!("172.19.{}.0/24", std::process::id() % 250 + 1),
        )
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()
        .expect("run docker-py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(done),
        "docker-py failed:\n{stdout}\n{stderr}\n--- wharfd log:\n{}",
        docker.env.daemon.log()
    );
}

#[tokio::test]
async fn docker_py_runs_containers_and_images() {
    run_script("test_api.py", "docker-py: all checks passed").await;
}

/// Attach with logs (replay then live, each line once; stream=0), several clients,
/// detach keys for attach and exec (tests/docker-py/test_attach.py).
#[tokio::test]
async fn docker_py_attach_logs_and_detach_keys() {
    run_script("test_attach.py", "docker-py attach: all checks passed").await;
}

/// Volumes: create (labels, driver options), get, list with filters, remove (409 in
/// use), prune, a container's volumes, binds and tmpfs mounts, bad input
/// (tests/docker-py/test_volumes.py).
#[tokio::test]
async fn docker_py_volumes() {
    run_script("test_volumes.py", "docker-py volumes: all checks passed").await;
}

/// User-defined networks through docker-py (tests/docker-py/test_networks.py).
#[tokio::test]
async fn docker_py_networks() {
    run_script("test_networks.py", "docker-py networks: all checks passed").await;
}

/// Builds through docker-py's `images.build` (a directory, a Dockerfile file object, a
/// gzip custom context with a Dockerfile path, build args, the cache, a failing RUN):
/// tests/docker-py/test_build.py.
#[tokio::test]
async fn docker_py_builds() {
    run_script("test_build.py", "docker-py build: all checks passed").await;
}
