//! Test-only fault injection for the crash tests (tests/crash_points.rs,
//! tests/crash_random.rs): wharfd kills itself with SIGKILL when it reaches the point
//! `WHARF_TEST_CRASH_AT` names, so a test can cut a multi-step operation at a step and
//! check what a restart finds. Without the variables (always, outside those tests) a
//! point is one read of a flag cached at the first one.
//!
//! `WHARF_TEST_CRASH_AT` is either a point's name, or `any#N`: the N-th point of any
//! name reached once the daemon serves (`serving`), which lets a test cut a sequence of
//! operations at a step chosen at random. `WHARF_TEST_CRASH_TRACE=<file>` appends the
//! name of each point reached once serving to that file, a line each: how a test counts
//! the steps of what it does before it picks one.
//!
//! Named points: `pod.after_network`, `pod.after_pid_holder`, `pod.before_ready` (in
//! RunPodSandbox), `start.before_runtime`, `start.after_runtime` (in StartContainer),
//! and `start.after_init_exec`, inside the vendored libcontainer's start, between the
//! init's exec and the state file's update; `create.after_volumes` (a container's
//! volumes made and referenced, its create not done), `volume.create.before_record`
//! and `volume.remove.after_record`, `docker.create.after_pod` (a Docker container's
//! pod made, the container not yet) (tests/docker_volumes.rs). Points on every path:
//! `store.before_commit` and `store.after_commit` (each store transaction),
//! `content.after_commit` (a blob stored), `snapshot.after_commit` (a layer unpacked),
//! `monitor.after_create` (a container's monitor and init made), `rootfs.after_mount`,
//! `cni.after_plugin` (each CNI plugin run), `snapshot.remove.after_rename`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The environment variable that names the point to crash at.
pub const ENV: &str = "WHARF_TEST_CRASH_AT";
/// The environment variable naming the file the points reached are appended to.
pub const TRACE_ENV: &str = "WHARF_TEST_CRASH_TRACE";

/// What the environment asked for, read once.
struct Plan {
    /// A point's name to crash at.
    named: Option<String>,
    /// `any#N`: crash at the N-th point once serving.
    nth: Option<u64>,
    trace: Option<Mutex<std::fs::File>>,
}

static SERVING: AtomicBool = AtomicBool::new(false);
static REACHED: AtomicU64 = AtomicU64::new(0);

fn plan() -> &'static Option<Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let target = std::env::var(ENV).ok();
        let trace_path = std::env::var_os(TRACE_ENV);
        if target.is_none() && trace_path.is_none() {
            return None;
        }
        let nth = target
            .as_deref()
            .and_then(|t| t.strip_prefix("any#"))
            .and_then(|n| n.parse().ok());
        let trace = trace_path.and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
                .map(Mutex::new)
        });
        Some(Plan {
            named: target.filter(|_| nth.is_none()),
            nth,
            trace,
        })
    })
}

/// Marks the daemon as serving: from here points are counted and traced.
pub fn serving() {
    SERVING.store(true, Ordering::SeqCst);
}

/// SIGKILLs this process if `point` is the one `WHARF_TEST_CRASH_AT` names, or the
/// N-th point reached since the daemon serves when it says `any#N`.
pub fn reached(point: &str) {
    let Some(plan) = plan() else {
        return;
    };
    if plan.named.as_deref() == Some(point) {
        die(point);
    }
    if !SERVING.load(Ordering::SeqCst) {
        return;
    }
    let count = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(trace) = &plan.trace {
        let mut file = trace.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(file, "{point}");
    }
    if plan.nth == Some(count) {
        die(point);
    }
}

fn die(point: &str) -> ! {
    tracing::warn!(point, "{ENV}: killing wharfd here");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; this is not reached.
    std::process::abort()
}
