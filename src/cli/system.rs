//! version, info, events, and `wharf system` (df, prune, events, info).

use std::path::Path;

use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use super::connection::body_reader;
use super::connection::{self, Client, API_VERSION};
use super::containers::log_time;
use super::format::{self, Format};
use super::{enc, filters_json, out, CliError, Result};

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Show the wharf client and wharfd server versions
    #[command(
        after_help = "Examples:\n  wharf version\n  wharf version --format '{{.Server.APIVersion}}'"
    )]
    Version {
        #[arg(short, long)]
        format: Option<String>,
    },
    /// Display system-wide information (Docker API view, then the CRI's conditions)
    #[command(after_help = "Examples:\n  wharf info\n  wharf info --format '{{.CgroupDriver}}'")]
    Info(InfoArgs),
    /// Get real time events from the server
    #[command(
        after_help = "Examples:\n  wharf events --filter type=container\n  wharf events --since 10m --until 0s"
    )]
    Events(EventsArgs),
    /// Manage wharfd
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  wharf system df -v\n  wharf system prune -f")]
    System(SystemSub),
}

#[derive(Debug, ClapArgs)]
pub struct InfoArgs {
    #[arg(short, long)]
    pub format: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct EventsArgs {
    #[arg(short, long)]
    pub filter: Vec<String>,
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SystemSub {
    /// Show disk usage
    #[command(after_help = "Example:\n  wharf system df -v")]
    Df {
        #[arg(short, long)]
        verbose: bool,
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove stopped containers, dangling images and unused networks (and volumes)
    #[command(after_help = "Example:\n  wharf system prune -a -f --volumes")]
    Prune {
        /// Remove all unused images not just dangling ones
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
        /// Prune anonymous volumes
        #[arg(long)]
        volumes: bool,
    },
    /// Get real time events from the server
    #[command(after_help = "Example:\n  wharf system events --since 1h --filter type=image")]
    Events(EventsArgs),
    /// Display system-wide information
    #[command(after_help = "Example:\n  wharf system info")]
    Info(InfoArgs),
}

pub async fn run(client: &Client, cri_socket: &Path, command: SystemCommand) -> Result<()> {
    match command {
        SystemCommand::Version { format } => version(client, format).await,
        SystemCommand::Info(args) | SystemCommand::System(SystemSub::Info(args)) => {
            info(client, cri_socket, args).await
        }
        SystemCommand::Events(args) | SystemCommand::System(SystemSub::Events(args)) => {
            events(client, args).await
        }
        SystemCommand::System(SystemSub::Df { verbose, format }) => {
            df(client, verbose, format).await
        }
        SystemCommand::System(SystemSub::Prune {
            all,
            force,
            volumes,
        }) => prune(client, all, force, volumes).await,
    }
}

/// Asks "Are you sure you want to continue? [y/N]" after `warning`.
pub fn confirm(warning: &str) -> Result<bool> {
    eprint!("{warning}\nAre you sure you want to continue? [y/N] ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|err| CliError::internal(format!("reading the answer: {err}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

async fn version(client: &Client, format: Option<String>) -> Result<()> {
    let client_info = json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "GitCommit": crate::GIT_COMMIT,
        "APIVersion": API_VERSION,
        "Os": std::env::consts::OS,
        "Arch": go_arch(),
        "Host": client.host.to_string(),
    });
    let server = client.get("/version").await;
    if let Some(f) = format {
        let format = Format::parse_raw(&f, false)?;
        // docker's template names the field APIVersion (its Go struct), the JSON ApiVersion.
        let server_value = server.as_ref().ok().map(|s| {
            let mut s = s.clone();
            if let Some(v) = s.get("ApiVersion").cloned() {
                s["APIVersion"] = v;
            }
            s
        });
        let value = json!({"Client": client_info, "Server": server_value});
        out(&format!("{}\n", format.render(&value)?));
        return server.map(|_| ());
    }
    let mut text = format!(
        "Client: wharf\n Version:           {}\n API version:       {API_VERSION}\n Git commit:        {}\n OS/Arch:           {}/{}\n Host:              {}\n",
        env!("CARGO_PKG_VERSION"),
        crate::GIT_COMMIT,
        std::env::consts::OS,
        go_arch(),
        client.host
    );
    let server = match server {
        Ok(server) => server,
        Err(err) => {
            out(&text);
            return Err(err);
        }
    };
    let s = |k: &str| {
        server
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let name = server
        .pointer("/Platform/Name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("wharfd");
    text.push_str(&format!(
        "\nServer: {name}\n Engine:\n  Version:          {}\n  API version:      {} (minimum version {})\n  Go version:       {}\n  Git commit:       {}\n  OS/Arch:          {}/{}\n  Kernel Version:   {}\n",
        s("Version"),
        s("ApiVersion"),
        s("MinAPIVersion"),
        s("GoVersion"),
        s("GitCommit"),
        s("Os"),
        s("Arch"),
        s("KernelVersion"),
    ));
    for component in server
        .get("Components")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = component.get("Name").and_then(Value::as_str).unwrap_or("");
        if name == "Engine" {
            continue;
        }
        text.push_str(&format!(
            " {name}:\n  Version:          {}\n",
            component
                .get("Version")
                .and_then(Value::as_str)
                .unwrap_or("")
        ));
    }
    out(&text);
    Ok(())
}

async fn info(client: &Client, cri_socket: &Path, args: InfoArgs) -> Result<()> {
    let info = client.get("/info").await?;
    if let Some(f) = args.format {
        let format = Format::parse_raw(&f, false)?;
        out(&format!("{}\n", format.render(&info)?));
        return Ok(());
    }
    let s = |p: &str| {
        info.pointer(p)
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    let mut text = String::from("Server:\n");
    for (label, pointer) in [
        ("Containers", "/Containers"),
        (" Running", "/ContainersRunning"),
        (" Paused", "/ContainersPaused"),
        (" Stopped", "/ContainersStopped"),
        ("Images", "/Images"),
        ("Server Version", "/ServerVersion"),
        ("Storage Driver", "/Driver"),
        ("Cgroup Driver", "/CgroupDriver"),
        ("Cgroup Version", "/CgroupVersion"),
        ("Kernel Version", "/KernelVersion"),
        ("Operating System", "/OperatingSystem"),
        ("OSType", "/OSType"),
        ("Architecture", "/Architecture"),
        ("CPUs", "/NCPU"),
        ("Total Memory", "/MemTotal"),
        ("Name", "/Name"),
        ("ID", "/ID"),
        ("Docker Root Dir", "/DockerRootDir"),
    ] {
        let mut value = s(pointer);
        if pointer == "/MemTotal" {
            value = value
                .parse::<f64>()
                .map(format::bytes_size)
                .unwrap_or(value);
        }
        text.push_str(&format!(" {label}: {value}\n"));
    }
    for warning in info
        .get("Warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        text.push_str(&format!("WARNING: {warning}\n"));
    }
    // The CRI side of the same daemon: its readiness conditions, when reachable.
    match wharf_cri_status(cri_socket).await {
        Ok(conditions) => {
            text.push_str("\nCRI:\n");
            text.push_str(&conditions);
        }
        Err(err) => text.push_str(&format!(
            "\nCRI: not reachable at {} ({err})\n",
            cri_socket.display()
        )),
    }
    out(&text);
    Ok(())
}

async fn wharf_cri_status(socket: &Path) -> std::result::Result<String, String> {
    let channel = crate::cri::connect(socket)
        .await
        .map_err(|err| err.to_string())?;
    let status = crate::cri::cli_calls::status(channel)
        .await
        .map_err(|status| status.message().to_string())?;
    let mut text = String::new();
    for condition in status.conditions {
        text.push_str(&format!(" {}: {}", condition.kind, condition.ready));
        if !condition.ready {
            text.push_str(&format!(" ({}: {})", condition.reason, condition.message));
        }
        text.push('\n');
    }
    Ok(text)
}

async fn events(client: &Client, args: EventsArgs) -> Result<()> {
    let mut query = Vec::new();
    if let Some(f) = filters_json(&args.filter)? {
        query.push(format!("filters={}", enc(&f)));
    }
    if let Some(s) = &args.since {
        query.push(format!("since={}", enc(&log_time(s)?)));
    }
    if let Some(u) = &args.until {
        query.push(format!("until={}", enc(&log_time(u)?)));
    }
    let format = args.format.as_deref().map(Format::parse).transpose()?;
    let response = client
        .call(
            hyper::Method::GET,
            &format!("/events?{}", query.join("&")),
            connection::empty(),
            "application/json",
        )
        .await?;
    let mut lines = tokio::io::BufReader::new(body_reader(response)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(f) = &format {
            out(&format!("{}\n", f.render(&event)?));
            continue;
        }
        let nanos = event.get("timeNano").and_then(Value::as_i64).unwrap_or(0);
        // Go's RFC3339NanoFixed in local time, as docker prints it ("Z" for UTC).
        let time = chrono::DateTime::from_timestamp(
            nanos.div_euclid(1_000_000_000),
            nanos.rem_euclid(1_000_000_000) as u32,
        )
        .map(|t| {
            let local = t.with_timezone(&chrono::Local);
            if local.offset().local_minus_utc() == 0 {
                local.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
            } else {
                local.format("%Y-%m-%dT%H:%M:%S%.9f%:z").to_string()
            }
        })
        .unwrap_or_default();
        let kind = event.get("Type").and_then(Value::as_str).unwrap_or("");
        let action = event.get("Action").and_then(Value::as_str).unwrap_or("");
        let id = event
            .pointer("/Actor/ID")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut attrs: Vec<String> = event
            .pointer("/Actor/Attributes")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        attrs.sort();
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" ({})", attrs.join(", "))
        };
        out(&format!("{time} {kind} {action} {id}{attrs}\n"));
    }
    Ok(())
}

async fn df(client: &Client, verbose: bool, format: Option<String>) -> Result<()> {
    let df = client.get("/system/df").await?;
    let arr = |k: &str| {
        df.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let images = arr("Images");
    let containers = arr("Containers");
    let volumes = arr("Volumes");
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let image_size: f64 = images
        .iter()
        .map(|i| num(i, "Size") - num(i, "SharedSize").max(0.0))
        .fold(0.0, |a, b| a + b)
        + images
            .iter()
            .map(|i| num(i, "SharedSize").max(0.0))
            .fold(0.0, f64::max);
    let active_images = images.iter().filter(|i| num(i, "Containers") > 0.0).count();
    let unused_image_size: f64 = images
        .iter()
        .filter(|i| num(i, "Containers") <= 0.0)
        .map(|i| num(i, "Size"))
        .fold(0.0, |a, b| a + b);
    let rw: f64 = containers
        .iter()
        .map(|c| num(c, "SizeRw"))
        .fold(0.0, |a, b| a + b);
    let active_containers = containers
        .iter()
        .filter(|c| c.get("State").and_then(Value::as_str) == Some("running"))
        .count();
    let stopped_rw: f64 = containers
        .iter()
        .filter(|c| c.get("State").and_then(Value::as_str) != Some("running"))
        .map(|c| num(c, "SizeRw"))
        .fold(0.0, |a, b| a + b);
    let vol_size = |v: &Value| {
        v.pointer("/UsageData/Size")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
            .max(0.0)
    };
    let vol_total: f64 = volumes.iter().map(vol_size).fold(0.0, |a, b| a + b);
    let active_volumes = volumes
        .iter()
        .filter(|v| {
            v.pointer("/UsageData/RefCount")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > 0
        })
        .count();
    let unused_volumes: f64 = volumes
        .iter()
        .filter(|v| {
            v.pointer("/UsageData/RefCount")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                <= 0
        })
        .map(vol_size)
        .fold(0.0, |a, b| a + b);
    let reclaim = |part: f64, total: f64| {
        if total > 0.0 {
            format!("{} ({:.0}%)", hs(part), part / total * 100.0)
        } else {
            hs(part)
        }
    };
    let rows = vec![
        json!({"Type": "Images", "TotalCount": images.len().to_string(), "Active": active_images.to_string(), "Size": hs(image_size), "Reclaimable": reclaim(unused_image_size, image_size)}),
        json!({"Type": "Containers", "TotalCount": containers.len().to_string(), "Active": active_containers.to_string(), "Size": hs(rw), "Reclaimable": reclaim(stopped_rw, rw)}),
        json!({"Type": "Local Volumes", "TotalCount": volumes.len().to_string(), "Active": active_volumes.to_string(), "Size": hs(vol_total), "Reclaimable": reclaim(unused_volumes, vol_total)}),
        json!({"Type": "Build Cache", "TotalCount": "0", "Active": "0", "Size": "0B", "Reclaimable": "0B"}),
    ];
    let template = format.unwrap_or_else(|| {
        "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}".into()
    });
    let f = Format::parse(&template)?;
    let headers = format::headers(&[
        ("Type", "TYPE"),
        ("TotalCount", "TOTAL"),
        ("Active", "ACTIVE"),
        ("Size", "SIZE"),
        ("Reclaimable", "RECLAIMABLE"),
    ]);
    let mut text = f.render_rows(&rows, &headers)?;
    if verbose {
        text.push_str("\nImages space usage:\n\n");
        let mut t = String::from(
            "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE\tSHARED SIZE\tUNIQUE SIZE\tCONTAINERS\n",
        );
        for i in &images {
            let tags: Vec<&str> = i
                .get("RepoTags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let (repo, tag) = tags
                .first()
                .and_then(|t| t.rsplit_once(':'))
                .unwrap_or(("<none>", "<none>"));
            let shared = num(i, "SharedSize").max(0.0);
            t.push_str(&format!(
                "{repo}\t{tag}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                format::short_id(i.get("Id").and_then(Value::as_str).unwrap_or("")),
                format::ago(num(i, "Created") as i64),
                hs(num(i, "Size")),
                hs(shared),
                hs(num(i, "Size") - shared),
                num(i, "Containers") as i64
            ));
        }
        text.push_str(&format::align(&t));
        text.push_str("\nContainers space usage:\n\n");
        let mut t = String::from(
            "CONTAINER ID\tIMAGE\tCOMMAND\tLOCAL VOLUMES\tSIZE\tCREATED\tSTATUS\tNAMES\n",
        );
        for c in &containers {
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let names: Vec<String> = c
                .get("Names")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|n| n.trim_start_matches('/').to_string())
                .collect();
            t.push_str(&format!(
                "{}\t{}\t{:?}\t{}\t{}\t{}\t{}\t{}\n",
                format::short_id(&s("Id")),
                s("Image"),
                format::ellipsis(&s("Command"), 20),
                c.get("Mounts")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0),
                hs(num(c, "SizeRw")),
                format::ago(num(c, "Created") as i64),
                s("Status"),
                names.join(",")
            ));
        }
        text.push_str(&format::align(&t));
        text.push_str("\nLocal Volumes space usage:\n\n");
        let mut t = String::from("VOLUME NAME\tLINKS\tSIZE\n");
        for v in &volumes {
            t.push_str(&format!(
                "{}\t{}\t{}\n",
                v.get("Name").and_then(Value::as_str).unwrap_or(""),
                v.pointer("/UsageData/RefCount")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                hs(vol_size(v))
            ));
        }
        text.push_str(&format::align(&t));
    }
    out(&text);
    Ok(())
}

async fn prune(client: &Client, all: bool, force: bool, volumes: bool) -> Result<()> {
    if !force {
        let mut warning = String::from("WARNING! This will remove:\n  - all stopped containers\n  - all networks not used by at least one container\n");
        if volumes {
            warning.push_str("  - all anonymous volumes not used by at least one container\n");
        }
        warning.push_str(if all {
            "  - all images without at least one container associated to them\n"
        } else {
            "  - all dangling images\n"
        });
        if !confirm(&warning)? {
            return Ok(());
        }
    }
    let mut reclaimed = 0.0;
    let containers = client.post("/containers/prune", None).await?;
    print_list("Deleted Containers:", &containers, "ContainersDeleted");
    reclaimed += containers
        .get("SpaceReclaimed")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let networks = client.post("/networks/prune", None).await?;
    print_list("Deleted Networks:", &networks, "NetworksDeleted");
    if volumes {
        let v = client.post("/volumes/prune", None).await?;
        print_list("Deleted Volumes:", &v, "VolumesDeleted");
        reclaimed += v
            .get("SpaceReclaimed")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
    }
    let filters = if all {
        format!("?filters={}", enc(r#"{"dangling":{"false":true}}"#))
    } else {
        String::new()
    };
    let images = client
        .post(&format!("/images/prune{filters}"), None)
        .await?;
    let deleted: Vec<String> = images
        .get("ImagesDeleted")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|i| {
            let mut v = Vec::new();
            if let Some(u) = i.get("Untagged").and_then(Value::as_str) {
                v.push(format!("untagged: {u}"));
            }
            if let Some(d) = i.get("Deleted").and_then(Value::as_str) {
                v.push(format!("deleted: {d}"));
            }
            v
        })
        .collect();
    if !deleted.is_empty() {
        out(&format!("Deleted Images:\n{}\n\n", deleted.join("\n")));
    }
    reclaimed += images
        .get("SpaceReclaimed")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    out(&format!("Total reclaimed space: {}\n", hs(reclaimed)));
    Ok(())
}

pub(super) fn print_list(title: &str, answer: &Value, key: &str) {
    let items: Vec<&str> = answer
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !items.is_empty() {
        out(&format!("{title}\n{}\n\n", items.join("\n")));
    }
}

/// `<kind> prune`: asks first unless `force` (None: the user declined), then
/// `POST /<kind>/prune` with the filters; the daemon's answer.
pub(super) async fn prune_request(
    client: &Client,
    kind: &str,
    warning: &str,
    force: bool,
    filter: &[String],
) -> Result<Option<Value>> {
    if !force && !confirm(warning)? {
        return Ok(None);
    }
    let mut path = format!("/{kind}/prune");
    if let Some(f) = filters_json(filter)? {
        path.push_str(&format!("?filters={}", enc(&f)));
    }
    client.post(&path, None).await.map(Some)
}

/// A prune's "Total reclaimed space" line, sized as docker's CLI sizes it for the kind.
pub(super) fn print_reclaimed(answer: &Value, size: fn(f64) -> String) {
    let reclaimed = answer
        .get("SpaceReclaimed")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    out(&format!("Total reclaimed space: {}\n", size(reclaimed)));
}

/// go-units' HumanSize (4 significant digits), as docker's df and prune print sizes.
fn hs(size: f64) -> String {
    format::human_size_precision(size, 4)
}

/// This machine's architecture as Go (and docker) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}
