use std::fs;
use std::path::Path;

use nix::unistd::Pid;

use crate::common::{self, CGROUP_PROCS, ControllerOpt, WrapIoResult, WrappedIoError};

/// wharf patch: moves `pid` into the cgroup at `cgroup_path`.
///
/// Writing a pid to `cgroup.procs` takes the kernel's global
/// `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace period
/// (10-15 ms on a quiet machine) while holding `cgroup_mutex`, so every container
/// start pays it and concurrent starts queue behind each other. A single-threaded
/// process moving itself writes `0` to `tasks` instead: the kernel moves the calling
/// thread without that lock (`cgroup_procs_write_start` skips it for pid 0 of a
/// thread write), and with one thread, moving the thread moves the process.
pub(crate) fn attach(pid: Pid, cgroup_path: &Path) -> Result<(), WrappedIoError> {
    if pid == Pid::this() && single_threaded() {
        return common::write_cgroup_file_str(cgroup_path.join(CGROUP_TASKS), "0");
    }
    common::write_cgroup_file(cgroup_path.join(CGROUP_PROCS), pid)
}

const CGROUP_TASKS: &str = "tasks";

/// Whether the calling process has exactly one thread (`Threads:` of /proc/self/status,
/// read in one call: the file is about 1.5 KiB).
fn single_threaded() -> bool {
    use std::io::Read;
    let mut buf = [0u8; 8192];
    let Ok(n) = fs::File::open("/proc/self/status").and_then(|mut f| f.read(&mut buf)) else {
        return false;
    };
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .any(|line| line.strip_prefix("Threads:").map(str::trim) == Some("1"))
}

pub(super) trait Controller {
    type Error: From<WrappedIoError>;
    type Resource;

    /// Adds a new task specified by its pid to the cgroup
    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;
        attach(pid, cgroup_path)?;
        Ok(())
    }

    /// Applies resource restrictions to the cgroup
    fn apply(controller_opt: &ControllerOpt, cgroup_root: &Path) -> Result<(), Self::Error>;

    /// Checks if the controller needs to handle this request
    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource>;
}
