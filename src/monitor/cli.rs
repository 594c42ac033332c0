//! Command line of `wharf-monitor` (clap derive). The binary only parses and calls
//! [`crate::monitor::main`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default cap of one CRI log line, as kubelet/containerd use.
pub const DEFAULT_MAX_LOG_LINE: u64 = 16 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "wharf-monitor",
    about = "Per-container monitor and built-in OCI runtime of wharf"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container and monitor it until it exits (stdout: sync pipe).
    Run(RunArgs),
    /// Built-in OCI runtime: a runc-compatible subset backed by libcontainer.
    Oci(OciArgs),
    /// Hold a new PID namespace for a pod (prints nothing; writes the holder's pid).
    Pause(PauseArgs),
    /// Copy files out of or into a container's rootfs, chrooted into it (docker cp).
    Archive(super::archive::ArchiveArgs),
}

/// Which OCI runtime creates the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeKind {
    /// libcontainer, in a forked child of the monitor.
    Builtin,
    /// An external runc-compatible binary (absolute path).
    External(PathBuf),
}

fn parse_runtime(value: &str) -> Result<RuntimeKind, String> {
    if value == "builtin" {
        return Ok(RuntimeKind::Builtin);
    }
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(RuntimeKind::External(path))
    } else {
        Err(format!(
            "runtime must be \"builtin\" or an absolute path, got {value:?}"
        ))
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Container ID (also the runtime's state directory name).
    #[arg(long)]
    pub id: String,
    /// OCI bundle directory (config.json; the monitor's files go here too).
    #[arg(long)]
    pub bundle: PathBuf,
    /// `builtin` or the absolute path of a runc-compatible runtime.
    #[arg(long, value_parser = parse_runtime)]
    pub runtime: RuntimeKind,
    /// The runtime's state root (`--root`).
    #[arg(long)]
    pub runtime_root: PathBuf,
    /// CRI log file of the container.
    #[arg(long)]
    pub log_path: PathBuf,
    /// Longer lines are split into partial (P) lines of this many bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_LOG_LINE, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_log_line: u64,
    /// Rotate the log once it holds this many bytes (Docker's `max-size`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_max_size: Option<u64>,
    /// Files kept by that rotation, the current one included (Docker's `max-file`).
    #[arg(long, requires = "log_max_size", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub log_max_files: u32,
    /// Give the container a stdin that stays open (a pipe the monitor holds) for
    /// clients of the control channel (CRI `stdin`).
    #[arg(long)]
    pub stdin: bool,
    /// Close that stdin when the first client attached with stdin ends (CRI
    /// `stdin_once`).
    #[arg(long, requires = "stdin")]
    pub stdin_once: bool,
    /// The spec asks for a terminal (`process.terminal`, CRI `tty`): the monitor
    /// receives and holds the PTY master through the runtime's console socket.
    #[arg(long)]
    pub tty: bool,
}

#[derive(Debug, Args)]
pub struct OciArgs {
    /// Root directory of the runtime's container state.
    #[arg(long, global = true, default_value = "/run/wharf/runtime")]
    pub root: PathBuf,
    /// Also append errors to this file as JSON lines (runc's `--log`).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Accepted for runc compatibility; errors in `--log` are always JSON.
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: OciCommand,
}

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Start a created container.
    Start { id: String },
    /// Send a signal to the container's init (or all its processes with --all).
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        /// Name (TERM, SIGTERM) or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete the container's runtime state (and cgroup); --force kills it first.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Print the OCI state JSON.
    State { id: String },
    /// Freeze every process of the container (cgroup freezer).
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Run a process (OCI Process JSON) inside a running container.
    Exec {
        #[arg(short, long)]
        process: PathBuf,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(short, long)]
        detach: bool,
        /// With `process.terminal`: the UNIX socket to send the PTY master to.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        id: String,
    },
    /// Apply OCI LinuxResources JSON to the container's cgroup.
    Update {
        #[arg(short, long)]
        resources: PathBuf,
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Where the holder's host pid is written (atomically).
    #[arg(long)]
    pub pid_file: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_run_contract() {
        let cli = Cli::try_parse_from([
            "wharf-monitor",
            "run",
            "--id",
            "c1",
            "--bundle",
            "/b",
            "--runtime",
            "/usr/sbin/runc",
            "--runtime-root",
            "/r",
            "--log-path",
            "/l/0.log",
        ])
        .expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            args.runtime,
            RuntimeKind::External(PathBuf::from("/usr/sbin/runc"))
        );
        assert_eq!(args.max_log_line, DEFAULT_MAX_LOG_LINE);
        assert!(!args.stdin && !args.stdin_once && !args.tty);
        assert!(Cli::try_parse_from(["wharf-monitor", "run", "--runtime", "runc"]).is_err());
    }

    #[test]
    fn parses_runc_style_oci_commands() {
        let cli = Cli::try_parse_from([
            "wharf-monitor",
            "oci",
            "--root",
            "/r",
            "--log",
            "/b/runtime.log",
            "--log-format",
            "json",
            "kill",
            "--all",
            "c1",
            "KILL",
        ])
        .expect("parse");
        let Command::Oci(args) = cli.command else {
            panic!("not oci")
        };
        assert_eq!(args.root, PathBuf::from("/r"));
        assert!(matches!(
            args.command,
            OciCommand::Kill { all: true, ref id, ref signal } if id == "c1" && signal == "KILL"
        ));
    }
}
