//! `wharf`: the Docker-style command-line client of wharfd's Docker API (issue 21),
//! plus read-only views of what the CRI runs on this node (`wharf pods`, `wharf ctr`).
//! `src/bin/wharf.rs` only calls [`main`]; each command group has a file here.
//!
//! Exit codes follow docker's: 0 on success, 1 for a failed command, 125 when `run`,
//! `create` or `start` fail in the daemon or the CLI, 126/127 when `run` cannot execute
//! or find the container's command, and `run`/`start -a`/`wait`/`exec` report the
//! container's (or exec'd process's) own code.

pub mod build;
pub mod connection;
pub mod containers;
pub mod create;
pub mod cri;
pub mod files;
pub mod format;
pub mod images;
pub mod networks;
pub mod session;
pub mod stats;
pub mod system;
pub mod tty;
pub mod volumes;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use connection::{Client, Host};

/// A failed command: the message for stderr (empty for none) and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub code: i32,
    pub message: String,
    /// The HTTP status of a daemon error (0 for others).
    pub status: u16,
}

impl CliError {
    /// A daemon's refusal, printed as docker prints it.
    pub fn daemon(status: u16, message: impl std::fmt::Display) -> CliError {
        CliError {
            code: 1,
            message: format!("Error response from daemon: {message}"),
            status,
        }
    }
    /// The daemon could not be reached (or the connection broke).
    pub fn connect(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
            status: 0,
        }
    }
    /// Bad flags or arguments (docker's 125 for usage errors).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: 125,
            message: message.into(),
            status: 0,
        }
    }
    /// Anything else that failed on this side.
    pub fn internal(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
            status: 0,
        }
    }
    /// An exit with `code` and nothing printed (a container's own exit code).
    pub fn exit(code: i32) -> CliError {
        CliError {
            code,
            message: String::new(),
            status: 0,
        }
    }
    /// The same failure with docker's `run` exit code (125) unless it already carries
    /// a container's code.
    pub fn as_run_error(mut self) -> CliError {
        if !self.message.is_empty() && self.code == 1 {
            self.code = 125;
        }
        self
    }
    pub fn is_not_found(&self) -> bool {
        self.status == 404
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, CliError>;

const AFTER_HELP: &str = "\
Examples:
  wharf run -it --rm busybox sh        an interactive shell (ctrl-p ctrl-q detaches)
  wharf run -d --name web -p 8080:80 nginx
  wharf ps -a --format '{{.Names}}\\t{{.Status}}'
  wharf logs -f web
  wharf exec -it web sh
  wharf inspect --format '{{.State.Status}}' web
  wharf completion bash > /etc/bash_completion.d/wharf

The daemon is found with -H, else WHARF_HOST, else DOCKER_HOST, else
unix:///run/wharf/docker.sock.";

#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version = crate::VERSION,
    about = "The Docker-style command-line client of wharfd",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Daemon socket to connect to (unix:///path or tcp://host:port)
    #[arg(short = 'H', long, global = true, value_name = "HOST")]
    pub host: Option<String>,
    /// wharfd's CRI socket (for `pods` and `ctr`)
    #[arg(
        long,
        global = true,
        env = "WHARF_CRI_SOCKET",
        default_value = "/run/wharf/wharf.sock"
    )]
    pub cri_socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Containers(containers::ContainerCommand),
    #[command(flatten)]
    Images(images::ImageCommand),
    /// Build an image from a Dockerfile
    #[command(
        after_help = "Examples:\n  wharf build -t app:v1 .\n  wharf build --build-arg VERSION=2 -f build/Dockerfile .\n  tar -c . | wharf build -"
    )]
    Build(build::BuildArgs),
    /// Manage containers
    #[command(
        subcommand,
        name = "container",
        after_help = "Examples:\n  wharf container ls -a\n  wharf container prune -f"
    )]
    ContainerGroup(containers::ContainerGroup),
    /// Manage images
    #[command(
        subcommand,
        name = "image",
        after_help = "Examples:\n  wharf image ls\n  wharf image prune -a -f"
    )]
    ImageGroup(images::ImageGroup),
    /// Manage networks
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  wharf network create backend\n  wharf network ls")]
    Network(networks::NetworkCommand),
    /// Manage volumes
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  wharf volume create data\n  wharf volume ls")]
    Volume(volumes::VolumeCommand),
    #[command(flatten)]
    System(system::SystemCommand),
    /// List the pods the CRI (kubelet) runs on this node, read-only (as `crictl pods`)
    #[command(after_help = "Examples:\n  wharf pods\n  wharf pods -q --name coredns")]
    Pods(cri::PodsArgs),
    /// List the CRI's containers on this node, read-only (as `crictl ps`)
    #[command(after_help = "Examples:\n  wharf ctr -a\n  wharf ctr --pod 1a2b3c")]
    Ctr(cri::CtrArgs),
    /// CDI devices (GPUs and others) wharfd can give containers
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  wharf cdi list")]
    Cdi(cri::CdiCommand),
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  wharf completion bash > /etc/bash_completion.d/wharf\n  wharf completion zsh > \"${fpath[1]}/_wharf\"\n  wharf completion fish > ~/.config/fish/completions/wharf.fish"
    )]
    Completion {
        /// The shell: bash, zsh or fish
        shell: clap_complete::Shell,
    },
}

/// Parses the command line, runs the command, and exits with its code (after putting
/// the terminal back, since `exit` skips destructors).
pub fn main() -> ! {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let code = if err.use_stderr() { 125 } else { 0 };
            let _ = err.print();
            std::process::exit(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wharf: starting the async runtime: {err}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(dispatch(args));
    tty::restore();
    let code = match result {
        Ok(()) => 0,
        Err(err) => {
            if !err.message.is_empty() {
                eprintln!("{}", err.message);
            }
            err.code
        }
    };
    // Not dropping the runtime: a blocking read of stdin would hold its shutdown.
    std::mem::forget(runtime);
    std::process::exit(code);
}

async fn dispatch(args: Args) -> Result<()> {
    let client = || Host::resolve(args.host.as_deref()).map(Client::new);
    match args.command {
        Command::Containers(cmd) => containers::run(&client()?, cmd).await,
        Command::Images(cmd) => images::run(&client()?, cmd).await,
        Command::Build(cmd) => build::run(&client()?, cmd).await,
        Command::ContainerGroup(cmd) => containers::run_group(&client()?, cmd).await,
        Command::ImageGroup(cmd) => images::run_group(&client()?, cmd).await,
        Command::Network(cmd) => networks::run(&client()?, cmd).await,
        Command::Volume(cmd) => volumes::run(&client()?, cmd).await,
        Command::System(cmd) => system::run(&client()?, &args.cri_socket, cmd).await,
        Command::Pods(a) => cri::pods(&args.cri_socket, a).await,
        Command::Ctr(a) => cri::ctr(&args.cri_socket, a).await,
        Command::Cdi(cri::CdiCommand::List) => cri::cdi_list(&args.cri_socket).await,
        Command::Completion { shell } => {
            let mut command = Args::command();
            clap_complete::generate(shell, &mut command, "wharf", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Docker's way with several objects: `call` for each name in turn, `done` shows what
/// succeeded, each failure goes to stderr, and the command exits 1 if any failed.
pub async fn each_object<'a, Fut>(
    names: &'a [String],
    mut call: impl FnMut(&'a str) -> Fut,
    mut done: impl FnMut(&str, serde_json::Value),
) -> Result<()>
where
    Fut: std::future::Future<Output = Result<serde_json::Value>>,
{
    let mut failed = false;
    for name in names {
        match call(name).await {
            Ok(value) => done(name, value),
            Err(err) => {
                eprintln!("{err}");
                failed = true;
            }
        }
    }
    if failed {
        return Err(CliError::exit(1));
    }
    Ok(())
}

/// Percent-encodes a query value.
pub fn enc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Docker's `--filter k=v` flags as the API's `filters` JSON (`{"k": {"v": true}}`).
pub fn filters_json(filters: &[String]) -> Result<Option<String>> {
    if filters.is_empty() {
        return Ok(None);
    }
    let mut map = serde_json::Map::new();
    for filter in filters {
        let (key, value) = filter.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "bad format of filter (expected name=value): {filter}"
            ))
        })?;
        let entry = map
            .entry(key.trim().to_lowercase())
            .or_insert_with(|| serde_json::json!({}));
        if let Some(obj) = entry.as_object_mut() {
            obj.insert(value.to_string(), serde_json::Value::Bool(true));
        }
    }
    Ok(Some(serde_json::Value::Object(map).to_string()))
}

/// Prints `text` to stdout, ignoring a closed pipe (`wharf ps | head`).
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn run_takes_everything_after_the_image_as_the_command() {
        let args = Args::try_parse_from([
            "wharf", "run", "-it", "--rm", "-e", "A=1", "busybox", "ls", "-l", "--rm",
        ])
        .unwrap();
        match args.command {
            Command::Containers(containers::ContainerCommand::Run(run)) => {
                assert!(run.rm && run.opts.tty && run.opts.interactive);
                assert_eq!(run.opts.image_and_command, ["busybox", "ls", "-l", "--rm"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hosts_and_filters() {
        assert_eq!(
            Host::parse("unix:///x.sock").unwrap(),
            Host::Unix("/x.sock".into())
        );
        assert_eq!(
            Host::parse("tcp://127.0.0.1").unwrap(),
            Host::Tcp("127.0.0.1:2375".into())
        );
        assert!(Host::parse("ftp://x").is_err());
        assert_eq!(
            filters_json(&["label=a=b".into()]).unwrap().unwrap(),
            r#"{"label":{"a=b":true}}"#
        );
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
