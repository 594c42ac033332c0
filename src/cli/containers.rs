//! Container commands: run, create, start, stop, kill, restart, pause, unpause, rm, ps,
//! logs, exec, attach, wait, inspect, top, port, rename, update, diff, export, cp,
//! commit, stats; and the attached session (`-i`, `-t`) they share.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use super::connection::{self, Client};
use super::create::{parse_bytes, restart_policy};
use super::format::{self, Format};
use super::session::{demux, inspect_container};
use super::{create, each_object, files, session, stats};
use super::{enc, filters_json, out, CliError, Result};

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create and run a new container from an image
    #[command(
        after_help = "Examples:\n  wharf run -it --rm busybox sh\n  wharf run -d --name web -p 8080:80 -e MODE=prod nginx\n  echo hi | wharf run -i --rm busybox cat\n  wharf run --rm busybox sh -c 'exit 3'; echo $?   # 3"
    )]
    Run(RunArgs),
    /// Create a new container without starting it
    #[command(
        after_help = "Examples:\n  wharf create --name job busybox echo done\n  wharf start -a job"
    )]
    Create(CreateArgs),
    /// Start one or more stopped containers
    #[command(after_help = "Examples:\n  wharf start web\n  wharf start -ai shell")]
    Start(StartArgs),
    /// Stop one or more running containers
    #[command(after_help = "Example:\n  wharf stop -t 2 web")]
    Stop(StopArgs),
    /// Kill one or more running containers
    #[command(after_help = "Example:\n  wharf kill -s HUP web")]
    Kill(KillArgs),
    /// Restart one or more containers
    #[command(after_help = "Example:\n  wharf restart -t 5 web")]
    Restart(StopArgs),
    /// Pause all processes within one or more containers
    #[command(after_help = "Example:\n  wharf pause web")]
    Pause(Names),
    /// Unpause all processes within one or more containers
    #[command(after_help = "Example:\n  wharf unpause web")]
    Unpause(Names),
    /// Remove one or more containers
    #[command(after_help = "Example:\n  wharf rm -f -v web")]
    Rm(RmArgs),
    /// List containers
    #[command(
        after_help = "Examples:\n  wharf ps -a\n  wharf ps -q --filter status=exited\n  wharf ps --format 'table {{.Names}}\\t{{.Status}}'\n  wharf ps --format json"
    )]
    Ps(PsArgs),
    /// Fetch the logs of a container
    #[command(
        after_help = "Examples:\n  wharf logs -f --tail 10 web\n  wharf logs --since 5m -t web"
    )]
    Logs(LogsArgs),
    /// Execute a command in a running container
    #[command(
        after_help = "Examples:\n  wharf exec -it web sh\n  wharf exec -e X=1 -u nobody -w /tmp web env"
    )]
    Exec(ExecArgs),
    /// Attach local standard input, output, and error streams to a running container
    #[command(after_help = "Example:\n  wharf attach shell      # ctrl-p ctrl-q detaches again")]
    Attach(AttachArgs),
    /// Block until one or more containers stop, then print their exit codes
    #[command(after_help = "Example:\n  wharf wait job   # prints its exit code")]
    Wait(Names),
    /// Return low-level information on containers, images, networks or volumes
    #[command(
        after_help = "Examples:\n  wharf inspect web\n  wharf inspect --format '{{.State.Status}}' web\n  wharf inspect -f '{{json .Config.Labels}}' web"
    )]
    Inspect(InspectArgs),
    /// Display the running processes of a container
    #[command(after_help = "Example:\n  wharf top web aux")]
    Top(TopArgs),
    /// List port mappings or a specific mapping for the container
    #[command(after_help = "Examples:\n  wharf port web\n  wharf port web 80/tcp")]
    Port(PortArgs),
    /// Rename a container
    #[command(after_help = "Example:\n  wharf rename web web-old")]
    Rename { container: String, new_name: String },
    /// Update configuration of one or more containers
    #[command(after_help = "Example:\n  wharf update -m 256m --cpus 0.5 web")]
    Update(UpdateArgs),
    /// Inspect changes to files or directories on a container's filesystem
    #[command(after_help = "Example:\n  wharf diff web")]
    Diff { container: String },
    /// Export a container's filesystem as a tar archive
    #[command(after_help = "Example:\n  wharf export -o web.tar web")]
    Export {
        container: String,
        /// Write to a file, instead of STDOUT
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Copy files/folders between a container and the local filesystem
    #[command(
        after_help = "Examples:\n  wharf cp web:/etc/hostname ./hostname\n  wharf cp ./conf.txt web:/tmp/"
    )]
    Cp { src: String, dst: String },
    /// Create a new image from a container's changes
    #[command(
        after_help = "Example:\n  wharf commit -c 'CMD [\"sh\"]' -m snapshot web myimage:v1"
    )]
    Commit(CommitArgs),
    /// Display a live stream of container resource usage statistics
    #[command(after_help = "Examples:\n  wharf stats\n  wharf stats --no-stream web")]
    Stats(StatsArgs),
}

#[derive(Debug, Clone, ClapArgs)]
pub struct CreateOpts {
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Keep STDIN open even if not attached
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Set environment variables
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// Publish a container's port(s) to the host
    #[arg(short, long = "publish", value_name = "[IP:]HOST:CONTAINER[/PROTO]")]
    pub publish: Vec<String>,
    /// Publish all exposed ports to random ports
    #[arg(short = 'P', long)]
    pub publish_all: bool,
    /// Expose a port or a range of ports (`7000`, `7000-7001/udp`)
    #[arg(long, value_name = "PORT[-PORT][/PROTO]")]
    pub expose: Vec<String>,
    /// Bind mount a volume
    #[arg(short, long = "volume", value_name = "[SRC:]DST[:OPTS]")]
    pub volume: Vec<String>,
    /// Attach a filesystem mount to the container
    #[arg(long, value_name = "type=..,source=..,target=..")]
    pub mount: Vec<String>,
    /// Connect a container to a network
    #[arg(long, alias = "net")]
    pub network: Option<String>,
    /// Restart policy to apply when a container exits (no, always, unless-stopped, on-failure[:N])
    #[arg(long)]
    pub restart: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Memory limit (e.g. 512m, 1g)
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Number of CPUs
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Give extended privileges to this container
    #[arg(long)]
    pub privileged: bool,
    /// Add Linux capabilities
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Mount the container's root filesystem as read only
    #[arg(long)]
    pub read_only: bool,
    /// Mount a tmpfs directory (/path[:options])
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// Set meta data on a container
    #[arg(short, long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Run an init inside the container that forwards signals and reaps processes
    #[arg(long)]
    pub init: bool,
    /// Pull image before running ("always", "missing", "never")
    #[arg(long, default_value = "missing")]
    pub pull: String,
    /// Container host name
    #[arg(long)]
    pub hostname: Option<String>,
    /// The image, then the command and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND] [ARG...]"
    )]
    pub image_and_command: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct CreateArgs {
    #[command(flatten)]
    pub opts: CreateOpts,
}

#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// Run container in background and print container ID
    #[arg(short, long)]
    pub detach: bool,
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Override the key sequence for detaching a container
    #[arg(long)]
    pub detach_keys: Option<String>,
    #[command(flatten)]
    pub opts: CreateOpts,
}

#[derive(Debug, ClapArgs)]
pub struct StartArgs {
    /// Attach STDOUT/STDERR and forward signals
    #[arg(short, long)]
    pub attach: bool,
    /// Attach container's STDIN
    #[arg(short, long)]
    pub interactive: bool,
    /// Override the key sequence for detaching a container
    #[arg(long)]
    pub detach_keys: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(short = 't', long = "time", alias = "timeout")]
    pub time: Option<i64>,
    /// Signal to send to the container
    #[arg(short, long)]
    pub signal: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct Names {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short, long)]
    pub force: bool,
    /// Remove anonymous volumes associated with the container
    #[arg(short, long)]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Show n last created containers (includes all states)
    #[arg(short = 'n', long)]
    pub last: Option<i64>,
    /// Show the latest created container (includes all states)
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Display total file sizes
    #[arg(short, long)]
    pub size: bool,
    /// Filter output based on conditions provided
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Format output using a Go template, "table ...", or "json"
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, ClapArgs)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m)
    #[arg(long)]
    pub since: Option<String>,
    /// Show logs before a timestamp or relative time
    #[arg(long)]
    pub until: Option<String>,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// Number of lines to show from the end of the logs ("all")
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    pub container: String,
}

#[derive(Debug, ClapArgs)]
pub struct ExecArgs {
    /// Detached mode: run command in the background
    #[arg(short, long)]
    pub detach: bool,
    /// Keep STDIN open even if not attached
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Set environment variables
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Username or UID
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Override the key sequence for detaching
    #[arg(long)]
    pub detach_keys: Option<String>,
    /// Give extended privileges to the command
    #[arg(long)]
    pub privileged: bool,
    /// The container, then the command and its arguments
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "CONTAINER COMMAND [ARG...]")]
    pub container_and_command: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct AttachArgs {
    /// Do not attach STDIN
    #[arg(long)]
    pub no_stdin: bool,
    /// Override the key sequence for detaching a container
    #[arg(long)]
    pub detach_keys: Option<String>,
    pub container: String,
}

#[derive(Debug, ClapArgs)]
pub struct InspectArgs {
    /// Format output using a Go template
    #[arg(short, long)]
    pub format: Option<String>,
    /// Only this type of object (container, image, network, volume)
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Display total file sizes if the type is container
    #[arg(short, long)]
    pub size: bool,
    #[arg(required = true)]
    pub objects: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct TopArgs {
    pub container: String,
    /// ps options
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct PortArgs {
    pub container: String,
    /// PRIVATE_PORT[/PROTO]
    pub port: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct UpdateArgs {
    /// Memory limit
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Number of CPUs
    #[arg(long)]
    pub cpus: Option<f64>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long)]
    pub cpu_shares: Option<i64>,
    /// Tune container pids limit
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Restart policy to apply when a container exits
    #[arg(long)]
    pub restart: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct CommitArgs {
    /// Author
    #[arg(short, long)]
    pub author: Option<String>,
    /// Apply Dockerfile instruction to the created image
    #[arg(short, long)]
    pub change: Vec<String>,
    /// Commit message
    #[arg(short, long)]
    pub message: Option<String>,
    /// Pause container during commit
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pause: bool,
    pub container: String,
    pub repository: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct StatsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Disable streaming stats and only pull the first result
    #[arg(long)]
    pub no_stream: bool,
    /// Format output using a Go template
    #[arg(long)]
    pub format: Option<String>,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    pub containers: Vec<String>,
}

/// `wharf container ...`: the container commands, plus docker's `ls` and `prune`.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ContainerGroup {
    #[command(flatten)]
    Common(ContainerCommand),
    /// List containers
    #[command(alias = "list", after_help = "Example:\n  wharf container ls -a")]
    Ls(PsArgs),
    /// Remove all stopped containers
    #[command(
        after_help = "Examples:\n  wharf container prune -f\n  wharf container prune -f --filter until=1h"
    )]
    Prune {
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
        #[arg(long)]
        filter: Vec<String>,
    },
}

pub async fn run_group(client: &Client, command: ContainerGroup) -> Result<()> {
    match command {
        // `container inspect` inspects containers only, as docker's (`inspect` alone
        // takes any object).
        ContainerGroup::Common(ContainerCommand::Inspect(args)) => {
            let size = if args.size { "?size=1" } else { "" };
            super::networks::inspect_each(
                &args.objects,
                args.format.as_deref(),
                async |name: &str| {
                    // The daemon's refusal as it is ("No such container: x"), as docker's.
                    client
                        .get(&format!("/containers/{}/json{size}", enc(name)))
                        .await
                },
            )
            .await
        }
        ContainerGroup::Common(command) => run(client, command).await,
        ContainerGroup::Ls(args) => ps(client, args).await,
        ContainerGroup::Prune { force, filter } => {
            let warning = "WARNING! This will remove all stopped containers.";
            let Some(answer) =
                super::system::prune_request(client, "containers", warning, force, &filter).await?
            else {
                return Ok(());
            };
            super::system::print_list("Deleted Containers:", &answer, "ContainersDeleted");
            super::system::print_reclaimed(&answer, |size| format::human_size_precision(size, 4));
            Ok(())
        }
    }
}

pub async fn run(client: &Client, command: ContainerCommand) -> Result<()> {
    match command {
        ContainerCommand::Run(args) => create::run_container(client, args).await,
        ContainerCommand::Create(args) => {
            // As docker's create: stdout and stderr (and stdin with -i) marked for attaching.
            let id = create::create(client, &args.opts, false, true)
                .await
                .map_err(CliError::as_run_error)?;
            out(&format!("{id}\n"));
            Ok(())
        }
        ContainerCommand::Start(args) => session::start(client, args).await,
        ContainerCommand::Stop(args) => {
            each(
                &args.containers,
                |c| {
                    let mut q = Vec::new();
                    if let Some(t) = args.time {
                        q.push(format!("t={t}"));
                    }
                    if let Some(s) = &args.signal {
                        q.push(format!("signal={}", enc(s)));
                    }
                    format!("/containers/{}/stop?{}", enc(c), q.join("&"))
                },
                client,
            )
            .await
        }
        ContainerCommand::Restart(args) => {
            each(
                &args.containers,
                |c| {
                    let t = args.time.map(|t| format!("t={t}")).unwrap_or_default();
                    format!("/containers/{}/restart?{t}", enc(c))
                },
                client,
            )
            .await
        }
        ContainerCommand::Kill(args) => {
            each(
                &args.containers,
                |c| format!("/containers/{}/kill?signal={}", enc(c), enc(&args.signal)),
                client,
            )
            .await
        }
        ContainerCommand::Pause(n) => {
            each(
                &n.containers,
                |c| format!("/containers/{}/pause", enc(c)),
                client,
            )
            .await
        }
        ContainerCommand::Unpause(n) => {
            each(
                &n.containers,
                |c| format!("/containers/{}/unpause", enc(c)),
                client,
            )
            .await
        }
        ContainerCommand::Rm(args) => rm(client, args).await,
        ContainerCommand::Ps(args) => ps(client, args).await,
        ContainerCommand::Logs(args) => logs(client, args).await,
        ContainerCommand::Exec(args) => session::exec(client, args).await,
        ContainerCommand::Attach(args) => session::attach(client, args).await,
        ContainerCommand::Wait(n) => wait(client, n).await,
        ContainerCommand::Inspect(args) => inspect(client, args).await,
        ContainerCommand::Top(args) => top(client, args).await,
        ContainerCommand::Port(args) => port(client, args).await,
        ContainerCommand::Rename {
            container,
            new_name,
        } => {
            client
                .post(
                    &format!(
                        "/containers/{}/rename?name={}",
                        enc(&container),
                        enc(&new_name)
                    ),
                    None,
                )
                .await?;
            Ok(())
        }
        ContainerCommand::Update(args) => update(client, args).await,
        ContainerCommand::Diff { container } => diff(client, &container).await,
        ContainerCommand::Export { container, output } => {
            let path = format!("/containers/{}/export", enc(&container));
            files::download(
                client,
                &path,
                output.as_deref(),
                &format!("exporting container {container}"),
            )
            .await
        }
        ContainerCommand::Cp { src, dst } => files::cp(client, &src, &dst).await,
        ContainerCommand::Commit(args) => files::commit(client, args).await,
        ContainerCommand::Stats(args) => stats::stats(client, args).await,
    }
}

/// POSTs `path(c)` for each container, printing the name as given on success and each
/// failure on stderr; exits 1 if any failed (as docker).
pub(super) async fn each(
    names: &[String],
    path: impl Fn(&str) -> String,
    client: &Client,
) -> Result<()> {
    each_object(
        names,
        |name| {
            let path = path(name);
            async move { client.post(&path, None).await }
        },
        |name, _| out(&format!("{name}\n")),
    )
    .await
}

async fn rm(client: &Client, args: RmArgs) -> Result<()> {
    each_object(
        &args.containers,
        |name| {
            let path = format!(
                "/containers/{}?force={}&v={}",
                enc(name),
                u8::from(args.force),
                u8::from(args.volumes)
            );
            async move { client.delete(&path).await }
        },
        |name, _| out(&format!("{name}\n")),
    )
    .await
}

/// docker's ps PORTS column (the docker CLI's `DisplayablePorts`): ports sorted by
/// private port, IP, public port and type; consecutive ports of one type (and one
/// IP, when published to the same port number) merged into a range
/// (`0.0.0.0:8000-8002->8000-8002/tcp`, `7000-7001/tcp`); a port published to
/// another number listed alone, after the groups.
fn display_ports(ports: &[Value]) -> String {
    struct Port {
        ip: String,
        private: u64,
        public: u64,
        kind: String,
    }
    let mut ports: Vec<Port> = ports
        .iter()
        .map(|p| Port {
            ip: p
                .get("IP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            private: p.get("PrivatePort").and_then(Value::as_u64).unwrap_or(0),
            public: p.get("PublicPort").and_then(Value::as_u64).unwrap_or(0),
            kind: p
                .get("Type")
                .and_then(Value::as_str)
                .unwrap_or("tcp")
                .to_string(),
        })
        .collect();
    ports.sort_by(|a, b| {
        (a.private, &a.ip, a.public, &a.kind).cmp(&(b.private, &b.ip, b.public, &b.kind))
    });
    let host_port = |ip: &str, port: &str| {
        if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
    };
    let form_group = |key: &(String, String), first: u64, last: u64| {
        let (ip, kind) = key;
        let mut group = first.to_string();
        if first != last {
            group = format!("{group}-{last}");
        }
        if !ip.is_empty() {
            group = format!("{}->{group}", host_port(ip, &group));
        }
        format!("{group}/{kind}")
    };
    let mut groups: Vec<((String, String), u64, u64)> = Vec::new();
    let mut result = Vec::new();
    let mut mappings = Vec::new();
    for port in &ports {
        if !port.ip.is_empty() && port.public != port.private {
            mappings.push(format!(
                "{}->{}/{}",
                host_port(&port.ip, &port.public.to_string()),
                port.private,
                port.kind
            ));
            continue;
        }
        let key = (port.ip.clone(), port.kind.clone());
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            None => groups.push((key, port.private, port.private)),
            Some((_, _, last)) if port.private == *last + 1 => *last = port.private,
            Some(group) => {
                result.push(form_group(&group.0, group.1, group.2));
                group.1 = port.private;
                group.2 = port.private;
            }
        }
    }
    for (key, first, last) in &groups {
        result.push(form_group(key, *first, *last));
    }
    result.extend(mappings);
    result.join(", ")
}

/// One `ps` row: the fields docker's container format context offers, as strings.
fn ps_row(c: &Value, trunc: bool) -> Value {
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let id = s("Id");
    let created = c.get("Created").and_then(Value::as_i64).unwrap_or(0);
    let command = s("Command");
    let command = if trunc {
        format::ellipsis(&command, 20)
    } else {
        command
    };
    let names: Vec<String> = c
        .get("Names")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|n| n.trim_start_matches('/').to_string())
        .filter(|n| !n.contains('/'))
        .collect();
    let labels_text = format::labels_text(c.get("Labels"));
    let mut image = s("Image");
    if trunc && image.starts_with("sha256:") {
        image = format::short_id(&image);
    }
    // As docker's: the writable layer, and the virtual size when the daemon sent it.
    let rw = format::human_size(c.get("SizeRw").and_then(Value::as_i64).unwrap_or(0) as f64);
    let size = match c
        .get("SizeRootFs")
        .and_then(Value::as_i64)
        .filter(|r| *r > 0)
    {
        Some(root) => format!("{rw} (virtual {})", format::human_size(root as f64)),
        None => rw,
    };
    let mounts: Vec<String> = c
        .get("Mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| {
            let name = m
                .get("Name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            let text = name
                .or_else(|| m.get("Source").and_then(Value::as_str))
                .unwrap_or("");
            if trunc {
                format::ellipsis(text, 15)
            } else {
                text.to_string()
            }
        })
        .collect();
    let networks: Vec<String> = c
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let created_at = format::go_time(created);
    json!({
        "ID": if trunc { format::short_id(&id) } else { id },
        "Image": image,
        "Command": format!("{:?}", command),
        "CreatedAt": created_at,
        "RunningFor": format::ago(created),
        "Ports": display_ports(c.get("Ports").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])),
        "Status": s("Status"),
        "State": s("State"),
        "Size": size,
        "Names": names.join(","),
        "Labels": labels_text,
        format::LABEL_MAP: c.get("Labels").cloned().unwrap_or(Value::Null),
        "Mounts": mounts.join(","),
        "Networks": networks.join(","),
        "Platform": Value::Null,
        "LocalVolumes": c.get("Mounts").and_then(Value::as_array).map(|m| m.iter().filter(|m| m.get("Driver").and_then(Value::as_str) == Some("local")).count()).unwrap_or(0).to_string(),
    })
}

const PS_HEADERS: &[(&str, &str)] = &[
    ("ID", "CONTAINER ID"),
    ("Image", "IMAGE"),
    ("Command", "COMMAND"),
    ("CreatedAt", "CREATED AT"),
    ("RunningFor", "CREATED"),
    ("Ports", "PORTS"),
    ("Status", "STATUS"),
    ("State", "STATE"),
    ("Size", "SIZE"),
    ("Names", "NAMES"),
    ("Labels", "LABELS"),
    ("Mounts", "MOUNTS"),
    ("Networks", "NETWORKS"),
    ("LocalVolumes", "LOCAL VOLUMES"),
];

async fn ps(client: &Client, args: PsArgs) -> Result<()> {
    let mut query = vec![format!(
        "all={}",
        u8::from(args.all || args.last.is_some() || args.latest)
    )];
    if let Some(n) = args.last {
        query.push(format!("limit={n}"));
    } else if args.latest {
        query.push("limit=1".into());
    }
    let mut want_size = args.size;
    let template = match (&args.format, args.quiet) {
        (_, true) => "{{.ID}}".to_string(),
        (Some(f), false) if !f.is_empty() => {
            want_size |= f.contains(".Size");
            f.clone()
        }
        _ if args.size => "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}\t{{.Size}}".into(),
        _ => "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}".into(),
    };
    if want_size {
        query.push("size=1".into());
    }
    if let Some(filters) = filters_json(&args.filter)? {
        query.push(format!("filters={}", enc(&filters)));
    }
    let format = Format::parse(&template)?;
    let list = client
        .get(&format!("/containers/json?{}", query.join("&")))
        .await?;
    let rows: Vec<Value> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| ps_row(c, !args.no_trunc))
        .collect();
    out(&format.render_rows(&rows, &format::headers(PS_HEADERS))?);
    Ok(())
}

async fn logs(client: &Client, args: LogsArgs) -> Result<()> {
    let info = inspect_container(client, &args.container).await?;
    let tty_mode = info
        .pointer("/Config/Tty")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut query = vec![
        "stdout=1".to_string(),
        "stderr=1".to_string(),
        format!("follow={}", u8::from(args.follow)),
        format!("timestamps={}", u8::from(args.timestamps)),
        format!("tail={}", enc(&args.tail)),
    ];
    if let Some(since) = &args.since {
        query.push(format!("since={}", enc(&log_time(since)?)));
    }
    if let Some(until) = &args.until {
        query.push(format!("until={}", enc(&log_time(until)?)));
    }
    let path = format!(
        "/containers/{}/logs?{}",
        enc(&args.container),
        query.join("&")
    );
    let response = client
        .call(
            hyper::Method::GET,
            &path,
            connection::empty(),
            "application/json",
        )
        .await?;
    let mut reader = connection::body_reader(response);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    if tty_mode {
        let _ = tokio::io::copy(&mut reader, &mut stdout).await;
    } else {
        demux(&mut reader, &mut stdout, &mut stderr).await;
    }
    let _ = stdout.flush().await;
    Ok(())
}

/// docker's --since/--until: a relative duration (42m, 1h30m, 10s) as a UNIX time, an
/// RFC 3339 time, or a UNIX time as given.
pub fn log_time(text: &str) -> Result<String> {
    if text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Ok(text.to_string());
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp().to_string());
    }
    if let Ok(t) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(t
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp())
            .unwrap_or(0)
            .to_string());
    }
    let mut total = 0f64;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().map_err(|_| CliError::usage(format!("invalid time {text:?}: use 2013-01-02T13:23:37Z, a UNIX time or a duration such as 42m")))?;
        number.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => {
                return Err(CliError::usage(format!(
                    "invalid time {text:?}: unknown unit {c:?}"
                )))
            }
        };
        total += n * unit;
    }
    if !number.is_empty() {
        return Err(CliError::usage(format!(
            "invalid time {text:?}: a duration needs a unit (s, m, h)"
        )));
    }
    // Seconds with nanoseconds, as docker sends it: "now" is now, not its second.
    let now = chrono::Utc::now();
    let nanos = now.timestamp() as i128 * 1_000_000_000 + now.timestamp_subsec_nanos() as i128
        - (total * 1e9) as i128;
    Ok(format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    ))
}

async fn wait(client: &Client, names: Names) -> Result<()> {
    each_object(
        &names.containers,
        |name| {
            let path = format!("/containers/{}/wait", enc(name));
            async move { client.post(&path, None).await }
        },
        |_, v| {
            out(&format!(
                "{}\n",
                v.get("StatusCode").and_then(Value::as_i64).unwrap_or(-1)
            ))
        },
    )
    .await
}

/// Finds `name` as a container, image, network or volume (or only `kind`).
pub async fn inspect_any(
    client: &Client,
    name: &str,
    kind: Option<&str>,
    size: bool,
) -> Result<Value> {
    let kinds: &[&str] = match kind {
        Some("container") => &["container"],
        Some("image") => &["image"],
        Some("network") => &["network"],
        Some("volume") => &["volume"],
        Some(other) => {
            return Err(CliError::usage(format!(
                "{other:?} is not a valid value for --type"
            )))
        }
        None => &["container", "image", "network", "volume"],
    };
    for kind in kinds {
        let path = match *kind {
            "container" => format!(
                "/containers/{}/json{}",
                enc(name),
                if size { "?size=1" } else { "" }
            ),
            "image" => format!("/images/{}/json", enc(name)),
            "network" => format!("/networks/{}", enc(name)),
            _ => format!("/volumes/{}", enc(name)),
        };
        match client.get(&path).await {
            Ok(v) => return Ok(v),
            Err(err) if err.is_not_found() || err.status == 400 => continue,
            Err(err) => return Err(err),
        }
    }
    Err(CliError::internal(format!("Error: No such object: {name}")))
}

async fn inspect(client: &Client, args: InspectArgs) -> Result<()> {
    let kind = args.kind.as_deref();
    super::networks::inspect_each(&args.objects, args.format.as_deref(), async |name: &str| {
        inspect_any(client, name, kind, args.size).await
    })
    .await
}

async fn top(client: &Client, args: TopArgs) -> Result<()> {
    let mut path = format!("/containers/{}/top", enc(&args.container));
    if !args.ps_args.is_empty() {
        path.push_str(&format!("?ps_args={}", enc(&args.ps_args.join(" "))));
    }
    let top = client.get(&path).await?;
    let mut text = String::new();
    let titles: Vec<&str> = top
        .get("Titles")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    text.push_str(&titles.join("\t"));
    text.push('\n');
    for process in top
        .get("Processes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let cells: Vec<&str> = process
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        text.push_str(&cells.join("\t"));
        text.push('\n');
    }
    // docker's top table has columns of at least 20.
    out(&format::align_min(&text, 20));
    Ok(())
}

async fn port(client: &Client, args: PortArgs) -> Result<()> {
    let info = inspect_container(client, &args.container).await?;
    let ports = info
        .pointer("/NetworkSettings/Ports")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let wanted = args.port.as_ref().map(|p| {
        if p.contains('/') {
            p.clone()
        } else {
            format!("{p}/tcp")
        }
    });
    let mut keys: Vec<&String> = ports.keys().collect();
    keys.sort_by_key(|k| {
        (
            k.split('/')
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0),
            k.to_string(),
        )
    });
    let mut text = String::new();
    for key in keys {
        if wanted.as_ref().is_some_and(|w| w != key) {
            continue;
        }
        for binding in ports[key].as_array().into_iter().flatten() {
            let ip = binding.get("HostIp").and_then(Value::as_str).unwrap_or("");
            let ip = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.to_string()
            };
            let host_port = binding
                .get("HostPort")
                .and_then(Value::as_str)
                .unwrap_or("");
            if wanted.is_some() {
                text.push_str(&format!("{ip}:{host_port}\n"));
            } else {
                text.push_str(&format!("{key} -> {ip}:{host_port}\n"));
            }
        }
    }
    if let Some(w) = wanted {
        if text.is_empty() {
            return Err(CliError::internal(format!(
                "Error: No public port '{w}' published for {}",
                args.container
            )));
        }
    }
    out(&text);
    Ok(())
}

async fn update(client: &Client, args: UpdateArgs) -> Result<()> {
    let mut body = Map::new();
    if let Some(m) = &args.memory {
        body.insert("Memory".into(), parse_bytes(m)?.into());
    }
    if let Some(c) = args.cpus {
        body.insert("NanoCpus".into(), ((c * 1e9) as i64).into());
    }
    if let Some(s) = args.cpu_shares {
        body.insert("CpuShares".into(), s.into());
    }
    if let Some(p) = args.pids_limit {
        body.insert("PidsLimit".into(), p.into());
    }
    if let Some(r) = &args.restart {
        body.insert("RestartPolicy".into(), restart_policy(r)?);
    }
    if body.is_empty() {
        return Err(CliError::usage(
            "you must provide one or more flags when using this command",
        ));
    }
    let body = Value::Object(body);
    each_object(
        &args.containers,
        |name| {
            let path = format!("/containers/{}/update", enc(name));
            let body = &body;
            async move { client.post(&path, Some(body)).await }
        },
        |name, v| {
            for w in v
                .get("Warnings")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                eprintln!("WARNING: {w}");
            }
            out(&format!("{name}\n"));
        },
    )
    .await
}

async fn diff(client: &Client, container: &str) -> Result<()> {
    let changes = client
        .get(&format!("/containers/{}/changes", enc(container)))
        .await?;
    let mut text = String::new();
    for change in changes.as_array().into_iter().flatten() {
        let kind = match change.get("Kind").and_then(Value::as_i64) {
            Some(0) => "C",
            Some(1) => "A",
            Some(2) => "D",
            _ => "?",
        };
        text.push_str(&format!(
            "{kind} {}\n",
            change.get("Path").and_then(Value::as_str).unwrap_or("")
        ));
    }
    out(&text);
    Ok(())
}

/// `repo[:tag]` (a registry port is not a tag).
pub fn split_reference(reference: &str) -> (String, Option<String>) {
    if let Some((name, _digest)) = reference.split_once('@') {
        return (name.to_string(), None);
    }
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), Some(tag.to_string())),
        _ => (reference.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_grouped_as_the_docker_cli_groups_them() {
        let port = |ip: &str, private: u64, public: Option<u64>, kind: &str| {
            let mut p = serde_json::json!({"PrivatePort": private, "Type": kind});
            if !ip.is_empty() {
                p["IP"] = serde_json::json!(ip);
                p["PublicPort"] = serde_json::json!(public.unwrap_or(0));
            }
            p
        };
        let ports = [
            port("0.0.0.0", 8001, Some(8001), "tcp"),
            port("0.0.0.0", 8000, Some(8000), "tcp"),
            port("0.0.0.0", 8002, Some(8002), "tcp"),
            port("", 7001, None, "tcp"),
            port("", 7000, None, "tcp"),
            port("", 9000, None, "tcp"),
            port("127.0.0.1", 80, Some(18080), "tcp"),
            port("::", 53, Some(53), "udp"),
        ];
        assert_eq!(
            display_ports(&ports),
            // A group closed by a gap comes first, then the open groups in the order
            // they began, then the ports published to another number (Go's order).
            "7000-7001/tcp, [::]:53->53/udp, 9000/tcp, 0.0.0.0:8000-8002->8000-8002/tcp, \
             127.0.0.1:18080->80/tcp"
        );
        assert_eq!(display_ports(&[]), "");
    }

    #[test]
    fn references() {
        assert_eq!(
            split_reference("localhost:5000/x:v1"),
            ("localhost:5000/x".into(), Some("v1".into()))
        );
        assert_eq!(
            split_reference("localhost:5000/x"),
            ("localhost:5000/x".into(), None)
        );
    }
}
