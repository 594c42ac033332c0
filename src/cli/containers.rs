//! Container commands: run, create, start, stop, kill, restart, pause, unpause, rm, ps,
//! logs, exec, attach, wait, inspect, top, port, rename, update, diff, export, cp,
//! commit, stats; and the attached session (`-i`, `-t`) they share.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::{self, Client};
use super::format::{self, Format};
use super::{enc, filters_json, out, tty, CliError, Result};

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
    Restart(StopArgs),
    /// Pause all processes within one or more containers
    Pause(Names),
    /// Unpause all processes within one or more containers
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
    Wait(Names),
    /// Return low-level information on containers, images, networks or volumes
    #[command(
        after_help = "Examples:\n  wharf inspect web\n  wharf inspect --format '{{.State.Status}}' web\n  wharf inspect -f '{{json .Config.Labels}}' web"
    )]
    Inspect(InspectArgs),
    /// Display the running processes of a container
    Top(TopArgs),
    /// List port mappings or a specific mapping for the container
    #[command(after_help = "Examples:\n  wharf port web\n  wharf port web 80/tcp")]
    Port(PortArgs),
    /// Rename a container
    Rename { container: String, new_name: String },
    /// Update configuration of one or more containers
    #[command(after_help = "Example:\n  wharf update -m 256m --cpus 0.5 web")]
    Update(UpdateArgs),
    /// Inspect changes to files or directories on a container's filesystem
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

pub async fn run(client: &Client, command: ContainerCommand) -> Result<()> {
    match command {
        ContainerCommand::Run(args) => run_container(client, args).await,
        ContainerCommand::Create(args) => {
            let id = create(client, &args.opts, false, false)
                .await
                .map_err(CliError::as_run_error)?;
            out(&format!("{id}\n"));
            Ok(())
        }
        ContainerCommand::Start(args) => start(client, args).await,
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
        ContainerCommand::Exec(args) => exec(client, args).await,
        ContainerCommand::Attach(args) => attach(client, args).await,
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
            download(
                client,
                &path,
                output.as_deref(),
                &format!("exporting container {container}"),
            )
            .await
        }
        ContainerCommand::Cp { src, dst } => cp(client, &src, &dst).await,
        ContainerCommand::Commit(args) => commit(client, args).await,
        ContainerCommand::Stats(args) => stats(client, args).await,
    }
}

/// POSTs `path(c)` for each container, printing the name as given on success and each
/// failure on stderr; exits 1 if any failed (as docker).
async fn each(names: &[String], path: impl Fn(&str) -> String, client: &Client) -> Result<()> {
    let mut failed = false;
    for name in names {
        match client.post(&path(name), None).await {
            Ok(_) => out(&format!("{name}\n")),
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

// ---- create and run -------------------------------------------------------------

/// docker's RAMInBytes: a number with an optional b, k, m, g, t, p suffix (binary).
pub fn parse_bytes(text: &str) -> Result<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix('b')
        .filter(|s| !s.is_empty() && s.ends_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(&lower);
    let lower = lower.strip_suffix("ib").unwrap_or(lower);
    let (number, unit) = match lower.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => lower.split_at(i),
        None => (lower, ""),
    };
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(CliError::usage(format!("invalid size: {text:?}"))),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| CliError::usage(format!("invalid size: {text:?}")))?;
    if n < 0.0 {
        return Err(CliError::usage(format!("invalid size: {text:?}")));
    }
    Ok((n * mult) as i64)
}

/// `-e K=V`, or `-e K` taking K from this environment (dropped when unset, as docker).
fn env_entry(entry: &str) -> Option<String> {
    if entry.contains('=') {
        return Some(entry.to_string());
    }
    std::env::var(entry).ok().map(|v| format!("{entry}={v}"))
}

fn env_list(opts: &CreateOpts) -> Result<Vec<String>> {
    let mut env = Vec::new();
    for file in &opts.env_file {
        let text = std::fs::read_to_string(file).map_err(|err| {
            CliError::usage(format!("reading the env file {}: {err}", file.display()))
        })?;
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('=') {
                return Err(CliError::usage(format!(
                    "invalid environment variable {line:?} in {}",
                    file.display()
                )));
            }
            env.extend(env_entry(line));
        }
    }
    env.extend(opts.env.iter().filter_map(|e| env_entry(e)));
    Ok(env)
}

/// `-p` specs as ExposedPorts and PortBindings.
fn ports(specs: &[String]) -> Result<(Map<String, Value>, Map<String, Value>)> {
    let mut exposed = Map::new();
    let mut bindings: Map<String, Value> = Map::new();
    for spec in specs {
        let bad = || CliError::usage(format!("invalid port specification: {spec:?}"));
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((r, p)) => (r, p.to_string()),
            None => (spec.as_str(), "tcp".to_string()),
        };
        let (host_part, container) = match rest.rsplit_once(':') {
            Some((h, c)) => (Some(h), c),
            None => (None, rest),
        };
        let (ip, host_port) = match host_part {
            None => (String::new(), String::new()),
            Some(h) => match h.rsplit_once(':') {
                Some((ip, p)) => (
                    ip.trim_start_matches('[').trim_end_matches(']').to_string(),
                    p.to_string(),
                ),
                None => (String::new(), h.to_string()),
            },
        };
        let range = |text: &str| -> Result<(u16, u16)> {
            match text.split_once('-') {
                Some((a, b)) => Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)),
                None => {
                    let p = text.parse().map_err(|_| bad())?;
                    Ok((p, p))
                }
            }
        };
        let (c_lo, c_hi) = range(container)?;
        if c_lo > c_hi {
            return Err(bad());
        }
        let host_range = if host_port.is_empty() {
            None
        } else {
            Some(range(&host_port)?)
        };
        for (i, port) in (c_lo..=c_hi).enumerate() {
            let key = format!("{port}/{proto}");
            exposed.insert(key.clone(), json!({}));
            let host = match host_range {
                None => String::new(),
                // Equal ranges map one to one; one container port takes the range.
                Some((h_lo, h_hi)) if h_hi - h_lo == c_hi - c_lo => (h_lo as usize + i).to_string(),
                Some(_) => host_port.clone(),
            };
            if host_part.is_some() {
                let list = bindings.entry(key).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(json!({"HostIp": ip, "HostPort": host}));
                }
            }
        }
    }
    Ok((exposed, bindings))
}

/// `--mount type=..,source=..,target=..` as the API's Mount.
pub fn parse_mount(spec: &str) -> Result<Value> {
    let mut mount = Map::new();
    let mut bind = Map::new();
    let mut volume = Map::new();
    let mut tmpfs = Map::new();
    let mut driver_opts = Map::new();
    let mut kind = "volume".to_string();
    for field in spec.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let flag = |v: &Option<String>| -> Result<bool> {
            match v.as_deref() {
                None | Some("1") | Some("true") => Ok(true),
                Some("0") | Some("false") => Ok(false),
                Some(other) => Err(CliError::usage(format!(
                    "invalid value {other:?} for {key} in --mount {spec:?}"
                ))),
            }
        };
        let need = || {
            value.clone().ok_or_else(|| {
                CliError::usage(format!(
                    "invalid field {field:?} in --mount {spec:?}: must be a key=value pair"
                ))
            })
        };
        match key.as_str() {
            "type" => kind = need()?,
            "source" | "src" => {
                mount.insert("Source".into(), need()?.into());
            }
            "target" | "destination" | "dst" => {
                mount.insert("Target".into(), need()?.into());
            }
            "readonly" | "ro" => {
                mount.insert("ReadOnly".into(), flag(&value)?.into());
            }
            "consistency" => {}
            "bind-propagation" => {
                bind.insert("Propagation".into(), need()?.into());
            }
            "volume-nocopy" => {
                volume.insert("NoCopy".into(), flag(&value)?.into());
            }
            "volume-driver" => {
                volume.insert("DriverConfig".into(), json!({"Name": need()?}));
            }
            "volume-opt" => {
                let v = need()?;
                let (k, val) = v.split_once('=').ok_or_else(|| {
                    CliError::usage(format!("invalid volume-opt {v:?} in --mount {spec:?}"))
                })?;
                driver_opts.insert(k.into(), val.into());
            }
            "tmpfs-size" => {
                tmpfs.insert("SizeBytes".into(), parse_bytes(&need()?)?.into());
            }
            "tmpfs-mode" => {
                let mode = u32::from_str_radix(&need()?, 8).map_err(|_| {
                    CliError::usage(format!("invalid tmpfs-mode in --mount {spec:?}"))
                })?;
                tmpfs.insert("Mode".into(), mode.into());
            }
            _ => {
                return Err(CliError::usage(format!(
                    "unexpected key {key:?} in --mount {spec:?}"
                )))
            }
        }
    }
    if !driver_opts.is_empty() {
        let config = volume
            .entry("DriverConfig")
            .or_insert_with(|| json!({"Name": "local"}));
        if let Some(c) = config.as_object_mut() {
            c.insert("Options".into(), Value::Object(driver_opts));
        }
    }
    mount.insert("Type".into(), kind.clone().into());
    if !bind.is_empty() {
        mount.insert("BindOptions".into(), Value::Object(bind));
    }
    if !volume.is_empty() {
        mount.insert("VolumeOptions".into(), Value::Object(volume));
    }
    if !tmpfs.is_empty() {
        mount.insert("TmpfsOptions".into(), Value::Object(tmpfs));
    }
    if !mount.contains_key("Target") {
        return Err(CliError::usage(format!(
            "invalid --mount {spec:?}: target is required"
        )));
    }
    Ok(Value::Object(mount))
}

fn restart_policy(text: &str) -> Result<Value> {
    let (name, count) = match text.split_once(':') {
        Some((n, c)) => (
            n,
            c.parse::<i64>().map_err(|_| {
                CliError::usage(format!(
                    "invalid restart policy {text:?}: the count must be a number"
                ))
            })?,
        ),
        None => (text, 0),
    };
    match name {
        "no" | "always" | "unless-stopped" | "on-failure" => Ok(json!({"Name": name, "MaximumRetryCount": count})),
        _ => Err(CliError::usage(format!("invalid restart policy {text:?}: use no, always, unless-stopped or on-failure[:max-retries]"))),
    }
}

/// The create request's body for `opts` (`auto_remove` and `attach` from `run`).
pub fn create_body(opts: &CreateOpts, auto_remove: bool, attach: bool) -> Result<Value> {
    let (image, command) = opts
        .image_and_command
        .split_first()
        .ok_or_else(|| CliError::usage("\"run\" requires at least 1 argument: the image"))?;
    let (exposed, bindings) = ports(&opts.publish)?;
    let mut binds = Vec::new();
    let mut anonymous = Map::new();
    for spec in &opts.volume {
        if spec.contains(':') {
            binds.push(Value::String(spec.clone()));
        } else {
            anonymous.insert(spec.clone(), json!({}));
        }
    }
    let mounts = opts
        .mount
        .iter()
        .map(|m| parse_mount(m))
        .collect::<Result<Vec<_>>>()?;
    let mut tmpfs = Map::new();
    for spec in &opts.tmpfs {
        let (path, options) = spec.split_once(':').unwrap_or((spec, ""));
        tmpfs.insert(path.into(), options.into());
    }
    let mut labels = Map::new();
    for label in &opts.label {
        let (k, v) = label.split_once('=').unwrap_or((label, ""));
        labels.insert(k.into(), v.into());
    }
    let mut host = Map::new();
    host.insert("Binds".into(), json!(binds));
    if !mounts.is_empty() {
        host.insert("Mounts".into(), json!(mounts));
    }
    host.insert("PortBindings".into(), Value::Object(bindings));
    host.insert("PublishAllPorts".into(), opts.publish_all.into());
    host.insert("AutoRemove".into(), auto_remove.into());
    host.insert("Privileged".into(), opts.privileged.into());
    host.insert("ReadonlyRootfs".into(), opts.read_only.into());
    if !opts.cap_add.is_empty() {
        host.insert("CapAdd".into(), json!(opts.cap_add));
    }
    if !opts.cap_drop.is_empty() {
        host.insert("CapDrop".into(), json!(opts.cap_drop));
    }
    if !tmpfs.is_empty() {
        host.insert("Tmpfs".into(), Value::Object(tmpfs));
    }
    if let Some(network) = &opts.network {
        host.insert("NetworkMode".into(), network.clone().into());
    }
    if let Some(restart) = &opts.restart {
        host.insert("RestartPolicy".into(), restart_policy(restart)?);
    }
    if let Some(memory) = &opts.memory {
        host.insert("Memory".into(), parse_bytes(memory)?.into());
    }
    if let Some(cpus) = opts.cpus {
        host.insert("NanoCpus".into(), ((cpus * 1e9) as i64).into());
    }
    if opts.init {
        host.insert("Init".into(), true.into());
    }
    if opts.tty {
        if let Some((rows, cols)) = tty::size() {
            host.insert("ConsoleSize".into(), json!([rows, cols]));
        }
    }
    let interactive_attach = opts.interactive && attach;
    let mut body = json!({
        "Image": image,
        "Env": env_list(opts)?,
        "Labels": labels,
        "Tty": opts.tty,
        "OpenStdin": opts.interactive,
        "StdinOnce": interactive_attach,
        "AttachStdin": interactive_attach,
        "AttachStdout": attach,
        "AttachStderr": attach,
        "ExposedPorts": exposed,
        "Volumes": anonymous,
        "HostConfig": host,
    });
    if !command.is_empty() {
        body["Cmd"] = json!(command);
    }
    if let Some(entrypoint) = &opts.entrypoint {
        // `--entrypoint ""` resets the image's entrypoint.
        body["Entrypoint"] = if entrypoint.is_empty() {
            json!([""])
        } else {
            json!([entrypoint])
        };
    }
    if let Some(user) = &opts.user {
        body["User"] = user.clone().into();
    }
    if let Some(dir) = &opts.workdir {
        body["WorkingDir"] = dir.clone().into();
    }
    if let Some(hostname) = &opts.hostname {
        body["Hostname"] = hostname.clone().into();
    }
    Ok(body)
}

/// Creates the container, pulling its image first per `--pull`; answers its ID.
async fn create(
    client: &Client,
    opts: &CreateOpts,
    auto_remove: bool,
    attach: bool,
) -> Result<String> {
    let body = create_body(opts, auto_remove, attach)?;
    let image = opts.image_and_command[0].clone();
    let path = match &opts.name {
        Some(name) => format!("/containers/create?name={}", enc(name)),
        None => "/containers/create".to_string(),
    };
    match opts.pull.as_str() {
        "always" => super::images::pull_image(client, &image, false, true).await?,
        "missing" | "never" => {}
        other => {
            return Err(CliError::usage(format!(
            "invalid pull option: {other:?}: must be one of \"always\", \"missing\" or \"never\""
        )))
        }
    }
    let created = match client.post(&path, Some(&body)).await {
        Err(err)
            if err.is_not_found()
                && opts.pull == "missing"
                && err.message.contains("No such image") =>
        {
            eprintln!("Unable to find image '{image}' locally");
            super::images::pull_image(client, &image, false, true).await?;
            client.post(&path, Some(&body)).await?
        }
        other => other?,
    };
    for warning in created
        .get("Warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(w) = warning.as_str() {
            eprintln!("WARNING: {w}");
        }
    }
    created
        .get("Id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            CliError::internal(format!(
                "create {image}: the daemon answered no container ID: {created}"
            ))
        })
}

/// docker's exit codes for a start that failed: 127 when the command is missing, 126
/// when it cannot be executed, else 125.
fn start_error(err: CliError) -> CliError {
    if err.message.is_empty() {
        return err;
    }
    let lower = err.message.to_lowercase();
    let code = if lower.contains("executable file not found")
        || lower.contains("no such file or directory")
        || lower.contains("not found in $path")
    {
        127
    } else if lower.contains("permission denied")
        || lower.contains("is a directory")
        || lower.contains("exec format error")
    {
        126
    } else {
        125
    };
    CliError { code, ..err }
}

async fn run_container(client: &Client, args: RunArgs) -> Result<()> {
    let opts = &args.opts;
    let attach = !args.detach;
    if opts.tty && opts.interactive && attach && !tty::stdin_is_tty() {
        return Err(CliError::internal("the input device is not a TTY"));
    }
    if args.rm && opts.restart.as_deref().is_some_and(|r| r != "no") {
        return Err(CliError::usage("Conflicting options: --restart and --rm"));
    }
    let detach_keys = detach_keys(args.detach_keys.as_deref())?;
    // As docker's run, a create that fails for a missing command is 127 (126 when it
    // cannot be executed): wharfd checks the command at create.
    let id = create(client, opts, args.rm, attach)
        .await
        .map_err(start_error)?;
    if args.detach {
        client
            .post(&format!("/containers/{id}/start"), None)
            .await
            .map_err(start_error)?;
        out(&format!("{id}\n"));
        return Ok(());
    }
    let session = Session {
        id: id.clone(),
        tty: opts.tty,
        stdin: opts.interactive,
        detach_keys,
        start: true,
        wait_condition: if args.rm { "removed" } else { "next-exit" },
    };
    match session.run(client).await.map_err(CliError::as_run_error)? {
        Some(code) => {
            if code == 0 {
                Ok(())
            } else {
                Err(CliError::exit(code as i32))
            }
        }
        None => Ok(()),
    }
}

fn detach_keys(flag: Option<&str>) -> Result<(String, Vec<u8>)> {
    let text = flag.unwrap_or("ctrl-p,ctrl-q");
    let bytes = tty::parse_detach_keys(text).map_err(CliError::usage)?;
    Ok((text.to_string(), bytes))
}

/// An attached session with a container: attach, (start), pump stdio, and the exit.
struct Session {
    id: String,
    tty: bool,
    stdin: bool,
    detach_keys: (String, Vec<u8>),
    start: bool,
    /// The wait condition registered before the start ("next-exit", "removed"), or
    /// "" to only attach.
    wait_condition: &'static str,
}

impl Session {
    /// Returns the container's exit code, or None when the user detached.
    async fn run(&self, client: &Client) -> Result<Option<i64>> {
        let id = &self.id;
        let attach_path = format!(
            "/containers/{id}/attach?stream=1&stdin={}&stdout=1&stderr=1&detachKeys={}",
            u8::from(self.stdin),
            enc(&self.detach_keys.0)
        );
        let stream = client.hijack(&attach_path, None).await?;
        // Registered before the start, so a container that exits at once is seen.
        let waiter = if self.wait_condition.is_empty() {
            None
        } else {
            let response = client
                .call(
                    hyper::Method::POST,
                    &format!("/containers/{id}/wait?condition={}", self.wait_condition),
                    connection::empty(),
                    "application/json",
                )
                .await?;
            let wait_id = id.clone();
            Some(tokio::spawn(async move {
                let bytes = connection::read_body(response, "wait").await.map_err(|err| {
                    CliError::connect(format!(
                        "waiting for container {wait_id}: the connection to wharfd broke ({err}); the container may still run"
                    ))
                })?;
                let value: Value = serde_json::from_slice(&bytes).map_err(|err| {
                    CliError::internal(format!("waiting for the container: a bad answer ({err})"))
                })?;
                if let Some(msg) = value
                    .pointer("/Error/Message")
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                {
                    return Err(CliError::daemon(500, msg));
                }
                Ok(value
                    .get("StatusCode")
                    .and_then(Value::as_i64)
                    .unwrap_or(-1))
            }))
        };
        if self.start {
            if let Err(err) = client.post(&format!("/containers/{id}/start"), None).await {
                return Err(start_error(err));
            }
        }
        let raw = if self.tty && self.stdin && tty::stdin_is_tty() {
            Some(tty::RawMode::enter().map_err(CliError::internal)?)
        } else {
            None
        };
        let resize_path = format!("/containers/{id}/resize");
        let detached = pump(
            client,
            stream,
            self.tty,
            self.stdin,
            &self.detach_keys.1,
            &resize_path,
            id,
        )
        .await?;
        drop(raw);
        if detached {
            return Ok(None);
        }
        match waiter {
            Some(waiter) => match waiter.await {
                Ok(result) => result.map(Some),
                Err(err) => Err(CliError::internal(format!(
                    "waiting for container {id}: {err}"
                ))),
            },
            None => Ok(Some(0)),
        }
    }
}

/// Moves bytes between the local stdio and a hijacked stream until the output ends.
/// With a TTY: output raw, window size forwarded to `resize_path` now and on SIGWINCH,
/// input watched for the detach keys. Without: output demultiplexed, SIGINT/SIGTERM
/// forwarded to the container (docker's --sig-proxy). Returns whether the user detached.
async fn pump(
    client: &Client,
    stream: connection::Hijacked,
    tty_mode: bool,
    stdin: bool,
    keys: &[u8],
    resize_path: &str,
    container: &str,
) -> Result<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut reader, mut writer) = tokio::io::split(stream);
    let detached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if stdin {
        let detached = detached.clone();
        let mut matcher = tty::DetachMatcher::new(keys.to_vec());
        let watch = tty_mode;
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if watch && matcher.feed(&buf[..n]) {
                            detached.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        if writer.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // End of input: half-close, so the container's stdin ends (StdinOnce).
            let _ = writer.shutdown().await;
            // Keep the write half alive until the output ends (a dropped half is fine).
            std::future::pending::<()>().await;
        });
    }
    let output = async move {
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        if tty_mode {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdout.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let _ = stdout.flush().await;
                    }
                }
            }
        } else {
            demux(&mut reader, &mut stdout, &mut stderr).await;
        }
    };
    tokio::pin!(output);
    let resize = |client: Client, path: String| async move {
        if let Some((rows, cols)) = tty::size() {
            let _ = client
                .post(&format!("{path}?h={rows}&w={cols}"), None)
                .await;
        }
    };
    let mut winch = signal(SignalKind::window_change())
        .map_err(|err| CliError::internal(format!("watching SIGWINCH: {err}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|err| CliError::internal(format!("watching SIGTERM: {err}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|err| CliError::internal(format!("watching SIGHUP: {err}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|err| CliError::internal(format!("watching SIGINT: {err}")))?;
    if tty_mode {
        resize(client.clone(), resize_path.to_string()).await;
    }
    loop {
        tokio::select! {
            _ = &mut output => break,
            _ = winch.recv() => {
                if tty_mode {
                    resize(client.clone(), resize_path.to_string()).await;
                }
            }
            _ = int.recv() => {
                if !tty_mode {
                    let _ = client.post(&format!("/containers/{container}/kill?signal=INT"), None).await;
                }
            }
            _ = term.recv() => {
                if tty_mode {
                    tty::restore();
                    return Err(CliError::exit(128 + 15));
                }
                let _ = client.post(&format!("/containers/{container}/kill?signal=TERM"), None).await;
            }
            _ = hup.recv() => {
                tty::restore();
                return Err(CliError::exit(128 + 1));
            }
        }
    }
    Ok(detached.load(std::sync::atomic::Ordering::SeqCst))
}

/// Docker's multiplexed stream: 8-byte headers (stream, 0, 0, 0, size) before each frame.
async fn demux<R, O, E>(reader: &mut R, stdout: &mut O, stderr: &mut E)
where
    R: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncWrite + Unpin,
{
    let mut header = [0u8; 8];
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if reader.read_exact(&mut header).await.is_err() {
            return;
        }
        let mut left = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        while left > 0 {
            let want = left.min(buf.len());
            match reader.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let written = if header[0] == 2 {
                        stderr.write_all(&buf[..n]).await.and(stderr.flush().await)
                    } else {
                        stdout.write_all(&buf[..n]).await.and(stdout.flush().await)
                    };
                    if written.is_err() {
                        return;
                    }
                    left -= n;
                }
            }
        }
    }
}

async fn inspect_container(client: &Client, name: &str) -> Result<Value> {
    client.get(&format!("/containers/{}/json", enc(name))).await
}

async fn start(client: &Client, args: StartArgs) -> Result<()> {
    if args.attach || args.interactive {
        if args.containers.len() > 1 {
            return Err(CliError::usage(
                "you cannot start and attach multiple containers at once",
            ));
        }
        let name = &args.containers[0];
        let info = inspect_container(client, name).await?;
        let id = info
            .get("Id")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_string();
        let tty_mode = info
            .pointer("/Config/Tty")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let session = Session {
            id,
            tty: tty_mode,
            stdin: args.interactive,
            detach_keys: detach_keys(args.detach_keys.as_deref())?,
            start: true,
            wait_condition: "next-exit",
        };
        return match session.run(client).await? {
            Some(0) | None => Ok(()),
            Some(code) => Err(CliError::exit(code as i32)),
        };
    }
    each(
        &args.containers,
        |c| format!("/containers/{}/start", enc(c)),
        client,
    )
    .await
}

async fn attach(client: &Client, args: AttachArgs) -> Result<()> {
    let info = inspect_container(client, &args.container).await?;
    let id = info
        .get("Id")
        .and_then(Value::as_str)
        .unwrap_or(&args.container)
        .to_string();
    if info.pointer("/State/Running").and_then(Value::as_bool) != Some(true) {
        return Err(CliError::internal(
            "You cannot attach to a stopped container, start it first",
        ));
    }
    if info.pointer("/State/Paused").and_then(Value::as_bool) == Some(true) {
        return Err(CliError::internal(
            "You cannot attach to a paused container, unpause it first",
        ));
    }
    let tty_mode = info
        .pointer("/Config/Tty")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let open_stdin = info
        .pointer("/Config/OpenStdin")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let session = Session {
        id,
        tty: tty_mode,
        stdin: open_stdin && !args.no_stdin,
        detach_keys: detach_keys(args.detach_keys.as_deref())?,
        start: false,
        wait_condition: "next-exit",
    };
    match session.run(client).await? {
        Some(0) | None => Ok(()),
        Some(code) => Err(CliError::exit(code as i32)),
    }
}

async fn exec(client: &Client, args: ExecArgs) -> Result<()> {
    let (container, command) = args
        .container_and_command
        .split_first()
        .ok_or_else(|| CliError::usage("\"exec\" requires at least 2 arguments"))?;
    if args.tty && args.interactive && !args.detach && !tty::stdin_is_tty() {
        return Err(CliError::internal("the input device is not a TTY"));
    }
    let keys = detach_keys(args.detach_keys.as_deref())?;
    let mut config = json!({
        "AttachStdin": args.interactive && !args.detach,
        "AttachStdout": !args.detach,
        "AttachStderr": !args.detach,
        "Tty": args.tty,
        "Cmd": command,
        "Env": args.env.iter().filter_map(|e| env_entry(e)).collect::<Vec<_>>(),
        "Privileged": args.privileged,
        "DetachKeys": keys.0,
    });
    if let Some(user) = &args.user {
        config["User"] = user.clone().into();
    }
    if let Some(dir) = &args.workdir {
        config["WorkingDir"] = dir.clone().into();
    }
    if args.tty {
        if let Some((rows, cols)) = tty::size() {
            config["ConsoleSize"] = json!([rows, cols]);
        }
    }
    let created = client
        .post(
            &format!("/containers/{}/exec", enc(container)),
            Some(&config),
        )
        .await?;
    let exec_id = created
        .get("Id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CliError::internal(format!(
                "exec in {container}: the daemon answered no exec ID"
            ))
        })?
        .to_string();
    if args.detach {
        client
            .post(
                &format!("/exec/{exec_id}/start"),
                Some(&json!({"Detach": true, "Tty": args.tty})),
            )
            .await?;
        return Ok(());
    }
    let stream = client
        .hijack(
            &format!("/exec/{exec_id}/start"),
            Some(&json!({"Detach": false, "Tty": args.tty})),
        )
        .await
        .map_err(start_error)?;
    let raw = if args.tty && args.interactive && tty::stdin_is_tty() {
        Some(tty::RawMode::enter().map_err(CliError::internal)?)
    } else {
        None
    };
    let detached = pump(
        client,
        stream,
        args.tty,
        args.interactive,
        &keys.1,
        &format!("/exec/{exec_id}/resize"),
        container,
    )
    .await?;
    drop(raw);
    if detached {
        return Ok(());
    }
    let inspect = client.get(&format!("/exec/{exec_id}/json")).await?;
    match inspect.get("ExitCode").and_then(Value::as_i64) {
        Some(0) | None => Ok(()),
        Some(code) => Err(CliError::exit(code as i32)),
    }
}

async fn rm(client: &Client, args: RmArgs) -> Result<()> {
    let mut failed = false;
    for name in &args.containers {
        let path = format!(
            "/containers/{}?force={}&v={}",
            enc(name),
            u8::from(args.force),
            u8::from(args.volumes)
        );
        match client.delete(&path).await {
            Ok(_) => out(&format!("{name}\n")),
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

/// docker's ps PORTS column.
fn display_ports(ports: &[Value]) -> String {
    let mut items: Vec<(String, u64, u64)> = ports
        .iter()
        .map(|p| {
            let private = p.get("PrivatePort").and_then(Value::as_u64).unwrap_or(0);
            let kind = p.get("Type").and_then(Value::as_str).unwrap_or("tcp");
            let text = match (
                p.get("IP").and_then(Value::as_str),
                p.get("PublicPort").and_then(Value::as_u64),
            ) {
                (Some(ip), Some(public)) if !ip.is_empty() => {
                    let ip = if ip.contains(':') {
                        format!("[{ip}]")
                    } else {
                        ip.to_string()
                    };
                    format!("{ip}:{public}->{private}/{kind}")
                }
                _ => format!("{private}/{kind}"),
            };
            let public = p.get("PublicPort").and_then(Value::as_u64).unwrap_or(0);
            (text, public, private)
        })
        .collect();
    items.sort_by(|a, b| (a.1, a.2, &a.0).cmp(&(b.1, b.2, &b.0)));
    items.dedup_by(|a, b| a.0 == b.0);
    items
        .into_iter()
        .map(|i| i.0)
        .collect::<Vec<_>>()
        .join(", ")
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
    let labels: BTreeMap<String, String> = c
        .get("Labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let labels_text = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
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
    let mut reader = body_reader(response);
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

/// A response body as an AsyncRead.
pub fn body_reader(
    response: hyper::Response<hyper::body::Incoming>,
) -> impl tokio::io::AsyncRead + Unpin {
    use futures_util::StreamExt;
    let stream = http_body_util::BodyStream::new(response.into_body()).map(|frame| {
        frame
            .map(|f| f.into_data().unwrap_or_default())
            .map_err(std::io::Error::other)
    });
    tokio_util::io::StreamReader::new(stream)
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
    let mut failed = false;
    for name in &names.containers {
        match client
            .post(&format!("/containers/{}/wait", enc(name)), None)
            .await
        {
            Ok(v) => out(&format!(
                "{}\n",
                v.get("StatusCode").and_then(Value::as_i64).unwrap_or(-1)
            )),
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
    let format = args
        .format
        .as_deref()
        .map(|f| Format::parse_raw(f, false))
        .transpose()?;
    let mut found = Vec::new();
    let mut failed = false;
    for name in &args.objects {
        match inspect_any(client, name, args.kind.as_deref(), args.size).await {
            Ok(v) => {
                if let Some(format) = &format {
                    out(&format!("{}\n", format.render(&v)?));
                }
                found.push(v);
            }
            Err(err) => {
                eprintln!("{err}");
                failed = true;
            }
        }
    }
    if format.is_none() {
        out(&format!("{}\n", format::pretty_json(&Value::Array(found))));
    }
    if failed {
        return Err(CliError::exit(1));
    }
    Ok(())
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
    let mut failed = false;
    for name in &args.containers {
        match client
            .post(&format!("/containers/{}/update", enc(name)), Some(&body))
            .await
        {
            Ok(v) => {
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
            }
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

/// Streams a GET's body to `output` (a file, written whole then renamed into place) or
/// stdout, refusing a terminal as docker does.
pub async fn download(
    client: &Client,
    path: &str,
    output: Option<&std::path::Path>,
    what: &str,
) -> Result<()> {
    if output.is_none() && tty::stdout_is_tty() {
        return Err(CliError::usage(format!(
            "{what}: refusing to write an archive to a terminal; use -o or redirect the output"
        )));
    }
    let response = client
        .call(
            hyper::Method::GET,
            path,
            connection::empty(),
            "application/json",
        )
        .await?;
    let mut reader = body_reader(response);
    match output {
        Some(file) => {
            let tmp = file.with_extension("wharf-partial");
            let mut f = tokio::fs::File::create(&tmp).await.map_err(|err| {
                CliError::internal(format!("{what}: creating {}: {err}", tmp.display()))
            })?;
            let copied = tokio::io::copy(&mut reader, &mut f)
                .await
                .and(f.flush().await);
            if let Err(err) = copied {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(CliError::internal(format!(
                    "{what}: writing {}: {err}",
                    file.display()
                )));
            }
            tokio::fs::rename(&tmp, file).await.map_err(|err| {
                CliError::internal(format!("{what}: renaming into {}: {err}", file.display()))
            })?;
        }
        None => {
            let mut stdout = tokio::io::stdout();
            tokio::io::copy(&mut reader, &mut stdout)
                .await
                .map_err(|err| CliError::internal(format!("{what}: writing stdout: {err}")))?;
            let _ = stdout.flush().await;
        }
    }
    Ok(())
}

/// `container:path` (a container reference) or a local path.
fn split_cp(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    arg.split_once(':')
}

async fn cp(client: &Client, src: &str, dst: &str) -> Result<()> {
    match (split_cp(src), split_cp(dst)) {
        (Some((container, path)), None) => {
            // Container -> local: the archive is unpacked by the host's tar, which
            // handles every entry kind.
            let query = format!("/containers/{}/archive?path={}", enc(container), enc(path));
            let response = client.call(hyper::Method::GET, &query, connection::empty(), "application/json").await?;
            let bytes = connection::read_body(response, &format!("copying {src}")).await?;
            let base = std::path::Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let target = std::path::Path::new(dst);
            let mut archive = tar::Archive::new(std::io::Cursor::new(bytes.to_vec()));
            let (dir, rename_to) = if target.is_dir() {
                (target.to_path_buf(), None)
            } else {
                (target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_path_buf(), target.file_name().map(|n| n.to_string_lossy().into_owned()))
            };
            let staging = tempdir_in(&dir)?;
            archive
                .unpack(&staging)
                .map_err(|err| CliError::internal(format!("copying {src}: unpacking into {}: {err}", dir.display())))?;
            let name = rename_to.unwrap_or(base.clone());
            std::fs::rename(staging.join(&base), dir.join(&name))
                .map_err(|err| CliError::internal(format!("copying {src} to {dst}: {err}")))?;
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        (None, Some((container, path))) => {
            let source = std::path::Path::new(src);
            let name = source
                .file_name()
                .ok_or_else(|| CliError::usage(format!("copying {src}: the source needs a file name")))?;
            let mut builder = tar::Builder::new(Vec::new());
            let appended = if source.is_dir() {
                builder.append_dir_all(name, source)
            } else {
                builder.append_path_with_name(source, name)
            };
            appended.map_err(|err| CliError::internal(format!("copying {src}: reading it: {err}")))?;
            let data = builder
                .into_inner()
                .map_err(|err| CliError::internal(format!("copying {src}: {err}")))?;
            // A destination that is an existing directory receives the entry as it is;
            // otherwise the entry is renamed to the destination's last component.
            let (dir, rename) = match client.call(hyper::Method::HEAD, &format!("/containers/{}/archive?path={}", enc(container), enc(path)), connection::empty(), "application/json").await {
                Ok(resp) if stat_is_dir(&resp) => (path.to_string(), None),
                _ => {
                    let p = std::path::Path::new(path);
                    let parent = p.parent().map(|p| p.display().to_string()).filter(|p| !p.is_empty()).unwrap_or("/".into());
                    (parent, p.file_name().map(|n| n.to_string_lossy().into_owned()))
                }
            };
            let data = match rename {
                Some(new_name) if new_name != name.to_string_lossy() => retar(&data, &name.to_string_lossy(), &new_name)?,
                _ => data,
            };
            let body = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(http_body_util::Full::new(bytes::Bytes::from(data)), |never| match never {}));
            client
                .call(hyper::Method::PUT, &format!("/containers/{}/archive?path={}", enc(container), enc(&dir)), body, "application/x-tar")
                .await?;
            Ok(())
        }
        _ => Err(CliError::usage("copying between containers or between local paths is not supported: one of SRC and DST must be CONTAINER:PATH")),
    }
}

fn stat_is_dir(response: &hyper::Response<hyper::body::Incoming>) -> bool {
    use base64::Engine;
    response
        .headers()
        .get("X-Docker-Container-Path-Stat")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("mode").and_then(Value::as_u64))
        .is_some_and(|mode| mode & (1 << 31) != 0)
}

/// Renames the top entry `from` of a tar archive to `to`.
fn retar(data: &[u8], from: &str, to: &str) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(data);
    let mut builder = tar::Builder::new(Vec::new());
    let entries = archive
        .entries()
        .map_err(|err| CliError::internal(format!("rewriting the copy archive: {err}")))?;
    for entry in entries {
        let mut entry = entry
            .map_err(|err| CliError::internal(format!("rewriting the copy archive: {err}")))?;
        let path = entry
            .path()
            .map_err(|err| CliError::internal(format!("rewriting the copy archive: {err}")))?
            .to_string_lossy()
            .into_owned();
        let new_path = match path.strip_prefix(from) {
            Some(rest) => format!("{to}{rest}"),
            None => path,
        };
        let mut header = entry.header().clone();
        builder
            .append_data(&mut header, new_path, &mut entry)
            .map_err(|err| CliError::internal(format!("rewriting the copy archive: {err}")))?;
    }
    builder
        .into_inner()
        .map_err(|err| CliError::internal(format!("rewriting the copy archive: {err}")))
}

fn tempdir_in(dir: &std::path::Path) -> Result<PathBuf> {
    let path = dir.join(format!(".wharf-cp-{}", std::process::id()));
    std::fs::create_dir_all(&path)
        .map_err(|err| CliError::internal(format!("creating {}: {err}", path.display())))?;
    Ok(path)
}

async fn commit(client: &Client, args: CommitArgs) -> Result<()> {
    let mut query = vec![
        format!("container={}", enc(&args.container)),
        format!("pause={}", u8::from(args.pause)),
    ];
    if let Some(repo) = &args.repository {
        let (repo, tag) = split_reference(repo);
        query.push(format!("repo={}", enc(&repo)));
        if let Some(tag) = tag {
            query.push(format!("tag={}", enc(&tag)));
        }
    }
    if let Some(a) = &args.author {
        query.push(format!("author={}", enc(a)));
    }
    if let Some(m) = &args.message {
        query.push(format!("comment={}", enc(m)));
    }
    for c in &args.change {
        query.push(format!("changes={}", enc(c)));
    }
    let answer = client
        .post(&format!("/commit?{}", query.join("&")), Some(&json!({})))
        .await?;
    out(&format!(
        "{}\n",
        answer.get("Id").and_then(Value::as_str).unwrap_or("")
    ));
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

fn cpu_percent(stats: &Value) -> f64 {
    let num = |p: &str| stats.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    let cpu_delta =
        num("/cpu_stats/cpu_usage/total_usage") - num("/precpu_stats/cpu_usage/total_usage");
    let system_delta = num("/cpu_stats/system_cpu_usage") - num("/precpu_stats/system_cpu_usage");
    let cpus = stats
        .pointer("/cpu_stats/online_cpus")
        .and_then(Value::as_f64)
        .filter(|n| *n > 0.0)
        .or_else(|| {
            stats
                .pointer("/cpu_stats/cpu_usage/percpu_usage")
                .and_then(Value::as_array)
                .map(|a| a.len() as f64)
        })
        .unwrap_or(1.0);
    if cpu_delta > 0.0 && system_delta > 0.0 {
        cpu_delta / system_delta * cpus * 100.0
    } else {
        0.0
    }
}

fn stats_row(id: &str, name: &str, s: &Value, trunc: bool) -> Value {
    let num = |p: &str| s.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    let cache = s
        .pointer("/memory_stats/stats/inactive_file")
        .or_else(|| s.pointer("/memory_stats/stats/total_inactive_file"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let usage = (num("/memory_stats/usage") - cache).max(0.0);
    let limit = num("/memory_stats/limit");
    let (mut rx, mut tx) = (0.0, 0.0);
    for net in s
        .get("networks")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.values())
    {
        rx += net.get("rx_bytes").and_then(Value::as_f64).unwrap_or(0.0);
        tx += net.get("tx_bytes").and_then(Value::as_f64).unwrap_or(0.0);
    }
    let (mut read, mut write) = (0.0, 0.0);
    for io in s
        .pointer("/blkio_stats/io_service_bytes_recursive")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let v = io.get("value").and_then(Value::as_f64).unwrap_or(0.0);
        match io
            .get("op")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("read") => read += v,
            Some("write") => write += v,
            _ => {}
        }
    }
    json!({
        "ID": if trunc { format::short_id(id) } else { id.to_string() },
        "Container": if trunc { format::short_id(id) } else { id.to_string() },
        "Name": name.trim_start_matches('/'),
        "CPUPerc": format!("{:.2}%", cpu_percent(s)),
        "MemUsage": format!("{} / {}", format::bytes_size(usage), format::bytes_size(limit)),
        "MemPerc": format!("{:.2}%", if limit > 0.0 { usage / limit * 100.0 } else { 0.0 }),
        "NetIO": format!("{} / {}", format::human_size(rx), format::human_size(tx)),
        "BlockIO": format!("{} / {}", format::human_size(read), format::human_size(write)),
        "PIDs": format!("{}", num("/pids_stats/current") as i64),
    })
}

const STATS_HEADERS: &[(&str, &str)] = &[
    ("ID", "CONTAINER ID"),
    ("Container", "CONTAINER"),
    ("Name", "NAME"),
    ("CPUPerc", "CPU %"),
    ("MemUsage", "MEM USAGE / LIMIT"),
    ("MemPerc", "MEM %"),
    ("NetIO", "NET I/O"),
    ("BlockIO", "BLOCK I/O"),
    ("PIDs", "PIDS"),
];

async fn stats(client: &Client, args: StatsArgs) -> Result<()> {
    let template = args.format.clone().unwrap_or_else(|| {
        "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}".into()
    });
    let format = Format::parse(&template)?;
    let live = !args.no_stream && tty::stdout_is_tty();
    loop {
        let names: Vec<String> = if args.containers.is_empty() {
            let list = client
                .get(&format!("/containers/json?all={}", u8::from(args.all)))
                .await?;
            list.as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("Id").and_then(Value::as_str).map(str::to_string))
                .collect()
        } else {
            args.containers.clone()
        };
        let mut rows = Vec::new();
        for name in &names {
            let s = client
                .get(&format!("/containers/{}/stats?stream=0", enc(name)))
                .await?;
            let id = s.get("id").and_then(Value::as_str).unwrap_or(name);
            let cname = s.get("name").and_then(Value::as_str).unwrap_or(name);
            rows.push(stats_row(id, cname, &s, !args.no_trunc));
        }
        let text = format.render_rows(&rows, &format::headers(STATS_HEADERS))?;
        if live {
            // Clear the screen and redraw, as docker's live table.
            out(&format!("\x1b[2J\x1b[H{text}"));
        } else {
            out(&text);
        }
        if args.no_stream {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ports_and_mounts() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert_eq!(parse_bytes("1GB").unwrap(), 1 << 30);
        assert!(parse_bytes("x").is_err());
        let (exposed, bindings) = ports(&[
            "127.0.0.1:8080:80".into(),
            "53/udp".into(),
            "9000-9001:90-91".into(),
        ])
        .unwrap();
        assert!(exposed.contains_key("53/udp"));
        assert_eq!(
            bindings["80/tcp"],
            json!([{"HostIp": "127.0.0.1", "HostPort": "8080"}])
        );
        assert_eq!(
            bindings["91/tcp"],
            json!([{"HostIp": "", "HostPort": "9001"}])
        );
        let m = parse_mount("type=bind,source=/a,target=/b,readonly").unwrap();
        assert_eq!(
            m,
            json!({"Type": "bind", "Source": "/a", "Target": "/b", "ReadOnly": true})
        );
        assert!(parse_mount("type=tmpfs").is_err());
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
