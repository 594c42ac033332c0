//! Test-only fault injection for the crash tests (tests/crash_points.rs): with
//! `WHARF_TEST_CRASH_AT=<point>` in its environment, wharfd kills itself with SIGKILL
//! when it reaches that point, so a test can cut a multi-step operation at each step
//! and check what a restart finds. Without the variable (always, outside those tests)
//! a point is one read of a flag cached at the first one.
//!
//! Points: `pod.after_network`, `pod.after_pid_holder`, `pod.before_ready` (in
//! RunPodSandbox), `start.before_runtime`, `start.after_runtime` (in StartContainer),
//! and `start.after_init_exec`, inside the vendored libcontainer's start, between the
//! init's exec and the state file's update; `create.after_volumes` (a container's
//! volumes made and referenced, its create not done), `volume.create.before_record`
//! and `volume.remove.after_record`, `docker.create.after_pod` (a Docker container's
//! pod made, the container not yet) (tests/docker_volumes.rs).

use std::sync::OnceLock;

/// The environment variable that names the point to crash at.
pub const ENV: &str = "WHARF_TEST_CRASH_AT";

/// SIGKILLs this process if `point` is the one `WHARF_TEST_CRASH_AT` names.
pub fn reached(point: &str) {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    let target = TARGET.get_or_init(|| std::env::var(ENV).ok());
    if target.as_deref() == Some(point) {
        tracing::warn!(point, "{ENV}: killing wharfd here");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
