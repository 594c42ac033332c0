//! Image commands: images, pull (per-layer progress), push, tag, rmi, history, save,
//! load, import, login and logout (credentials in `~/.config/wharf/auth.json`, 0600).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use base64::Engine;
use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use super::connection::body_reader;
use super::connection::{self, Client};
use super::containers::split_reference;
use super::files::download;
use super::format::{self, Format};
use super::{each_object, enc, filters_json, out, tty, CliError, Result};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images
    #[command(
        after_help = "Examples:\n  wharf images\n  wharf images -q\n  wharf images --digests --format '{{.Repository}}@{{.Digest}}'"
    )]
    Images(ImagesArgs),
    /// Download an image from a registry
    #[command(
        after_help = "Examples:\n  wharf pull busybox\n  wharf pull -q localhost:5000/app:v1"
    )]
    Pull {
        /// Suppress verbose output
        #[arg(short, long)]
        quiet: bool,
        image: String,
    },
    /// Upload an image to a registry
    #[command(after_help = "Example:\n  wharf push localhost:5000/app:v1")]
    Push {
        /// Suppress verbose output
        #[arg(short, long)]
        quiet: bool,
        image: String,
    },
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    #[command(after_help = "Example:\n  wharf tag busybox localhost:5000/busybox:v1")]
    Tag { source: String, target: String },
    /// Remove one or more images
    #[command(after_help = "Example:\n  wharf rmi -f busybox")]
    Rmi(RmiArgs),
    /// Show the history of an image
    #[command(after_help = "Example:\n  wharf history --no-trunc busybox")]
    History {
        /// Don't truncate output
        #[arg(long)]
        no_trunc: bool,
        /// Only show image IDs
        #[arg(short, long)]
        quiet: bool,
        /// Print sizes and dates in human readable format
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        human: bool,
        /// Format output using a Go template
        #[arg(long)]
        format: Option<String>,
        image: String,
    },
    /// Save one or more images to a tar archive (streamed to STDOUT by default)
    #[command(after_help = "Example:\n  wharf save -o busybox.tar busybox")]
    Save {
        /// Write to a file, instead of STDOUT
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load an image from a tar archive or STDIN
    #[command(after_help = "Example:\n  wharf load -i busybox.tar")]
    Load {
        /// Read from tar archive file, instead of STDIN
        #[arg(short, long)]
        input: Option<PathBuf>,
        /// Suppress the load output
        #[arg(short, long)]
        quiet: bool,
    },
    /// Import the contents from a tarball to create a filesystem image
    #[command(after_help = "Example:\n  wharf import -c 'CMD [\"sh\"]' rootfs.tar myimage:v1")]
    Import {
        /// Apply Dockerfile instruction to the created image
        #[arg(short, long)]
        change: Vec<String>,
        /// Set commit message for imported image
        #[arg(short, long)]
        message: Option<String>,
        /// A tarball file, or - for STDIN
        file: String,
        repository: Option<String>,
    },
    /// Log in to a registry
    #[command(
        after_help = "Examples:\n  wharf login -u me localhost:5000\n  echo \"$TOKEN\" | wharf login -u me --password-stdin registry.example.com"
    )]
    Login {
        #[arg(short, long)]
        username: Option<String>,
        #[arg(short, long)]
        password: Option<String>,
        /// Take the password from stdin
        #[arg(long)]
        password_stdin: bool,
        server: Option<String>,
    },
    /// Log out from a registry
    #[command(after_help = "Example:\n  wharf logout localhost:5000")]
    Logout { server: Option<String> },
}

#[derive(Debug, ClapArgs)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short, long)]
    pub force: bool,
    /// Do not delete untagged parents
    #[arg(long)]
    pub no_prune: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// `wharf image ...`: the image commands, plus docker's `ls`, `rm`, `inspect`, `prune`.
#[derive(Debug, Subcommand)]
pub enum ImageGroup {
    #[command(flatten)]
    Common(ImageCommand),
    /// List images
    #[command(alias = "list", after_help = "Example:\n  wharf image ls -q")]
    Ls(ImagesArgs),
    /// Remove one or more images
    #[command(alias = "remove", after_help = "Example:\n  wharf image rm busybox")]
    Rm(RmiArgs),
    /// Display detailed information on one or more images
    #[command(
        after_help = "Example:\n  wharf image inspect -f '{{.Os}}/{{.Architecture}}' busybox"
    )]
    Inspect {
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove unused images
    #[command(
        after_help = "Examples:\n  wharf image prune -f\n  wharf image prune -a -f --filter until=24h"
    )]
    Prune {
        /// Remove all unused images, not just dangling ones
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
        #[arg(long)]
        filter: Vec<String>,
    },
}

pub async fn run_group(client: &Client, command: ImageGroup) -> Result<()> {
    match command {
        ImageGroup::Common(command) => run(client, command).await,
        ImageGroup::Ls(args) => images(client, args).await,
        ImageGroup::Rm(args) => rmi(client, args).await,
        ImageGroup::Inspect { format, images } => {
            super::networks::inspect_list(client, &images, format.as_deref(), |i| {
                format!("/images/{i}/json")
            })
            .await
        }
        ImageGroup::Prune { all, force, filter } => {
            let warning = if all {
                "WARNING! This will remove all images without at least one container associated to them."
            } else {
                "WARNING! This will remove all dangling images."
            };
            let mut filter = filter;
            if all {
                filter.push("dangling=false".into());
            }
            let Some(answer) =
                super::system::prune_request(client, "images", warning, force, &filter).await?
            else {
                return Ok(());
            };
            let mut lines = Vec::new();
            for item in answer
                .get("ImagesDeleted")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(u) = item.get("Untagged").and_then(Value::as_str) {
                    lines.push(format!("untagged: {u}"));
                }
                if let Some(d) = item.get("Deleted").and_then(Value::as_str) {
                    lines.push(format!("deleted: {d}"));
                }
            }
            if !lines.is_empty() {
                out(&format!("Deleted Images:\n{}\n\n", lines.join("\n")));
            }
            super::system::print_reclaimed(&answer, |size| format::human_size_precision(size, 4));
            Ok(())
        }
    }
}

async fn rmi(client: &Client, args: RmiArgs) -> Result<()> {
    each_object(
        &args.images,
        |image| {
            let path = format!(
                "/images/{image}?force={}&noprune={}",
                u8::from(args.force),
                u8::from(args.no_prune)
            );
            async move { client.delete(&path).await }
        },
        |_, list| {
            for item in list.as_array().into_iter().flatten() {
                if let Some(u) = item.get("Untagged").and_then(Value::as_str) {
                    out(&format!("Untagged: {u}\n"));
                }
                if let Some(d) = item.get("Deleted").and_then(Value::as_str) {
                    out(&format!("Deleted: {d}\n"));
                }
            }
        },
    )
    .await
}

#[derive(Debug, ClapArgs)]
pub struct ImagesArgs {
    /// Show all images (default hides intermediate images)
    #[arg(short, long)]
    pub all: bool,
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Filter output based on conditions provided
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Format output using a Go template, "table ...", or "json"
    #[arg(long)]
    pub format: Option<String>,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Only images of this repository
    pub repository: Option<String>,
}

pub async fn run(client: &Client, command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Images(args) => images(client, args).await,
        ImageCommand::Pull { quiet, image } => pull_image(client, &image, quiet, false).await,
        ImageCommand::Push { quiet, image } => push(client, &image, quiet).await,
        ImageCommand::Tag { source, target } => {
            let (repo, tag) = split_reference(&target);
            let tag = tag.unwrap_or_else(|| "latest".into());
            client
                .post(
                    &format!(
                        "/images/{}/tag?repo={}&tag={}",
                        source,
                        enc(&repo),
                        enc(&tag)
                    ),
                    None,
                )
                .await?;
            Ok(())
        }
        ImageCommand::Rmi(args) => rmi(client, args).await,
        ImageCommand::History {
            no_trunc,
            quiet,
            human,
            format,
            image,
        } => history(client, &image, no_trunc, quiet, human, format).await,
        ImageCommand::Save { output, images } => {
            let names: Vec<String> = images.iter().map(|i| format!("names={}", enc(i))).collect();
            download(
                client,
                &format!("/images/get?{}", names.join("&")),
                output.as_deref(),
                "saving images",
            )
            .await
        }
        ImageCommand::Load { input, quiet } => load(client, input, quiet).await,
        ImageCommand::Import {
            change,
            message,
            file,
            repository,
        } => import(client, &file, repository, change, message).await,
        ImageCommand::Login {
            username,
            password,
            password_stdin,
            server,
        } => login(client, username, password, password_stdin, server).await,
        ImageCommand::Logout { server } => logout(server),
    }
}

const IMAGE_HEADERS: &[(&str, &str)] = &[
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("Digest", "DIGEST"),
    ("ID", "IMAGE ID"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("Size", "SIZE"),
    ("Containers", "CONTAINERS"),
    ("SharedSize", "SHARED SIZE"),
    ("UniqueSize", "UNIQUE SIZE"),
    ("VirtualSize", "VIRTUAL SIZE"),
];

async fn images(client: &Client, args: ImagesArgs) -> Result<()> {
    let mut filters = args.filter.clone();
    if let Some(repo) = &args.repository {
        filters.push(format!("reference={repo}"));
    }
    let mut query = vec![
        format!("all={}", u8::from(args.all)),
        "digests=1".to_string(),
    ];
    if let Some(f) = filters_json(&filters)? {
        query.push(format!("filters={}", enc(&f)));
    }
    let list = client
        .get(&format!("/images/json?{}", query.join("&")))
        .await?;
    let template = match (&args.format, args.quiet) {
        (_, true) => "{{.ID}}".to_string(),
        (Some(f), false) if !f.is_empty() => f.clone(),
        _ if args.digests => {
            "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
                .into()
        }
        _ => "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}".into(),
    };
    let format = Format::parse(&template)?;
    let mut rows = Vec::new();
    for image in list.as_array().into_iter().flatten() {
        let strings = |k: &str| -> Vec<String> {
            image
                .get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|s| *s != "<none>:<none>" && *s != "<none>@<none>")
                .map(str::to_string)
                .collect()
        };
        let id = image.get("Id").and_then(Value::as_str).unwrap_or("");
        let created = image.get("Created").and_then(Value::as_i64).unwrap_or(0);
        let size = image.get("Size").and_then(Value::as_i64).unwrap_or(0);
        let digests: HashMap<String, String> = strings("RepoDigests")
            .into_iter()
            .filter_map(|d| {
                d.split_once('@')
                    .map(|(r, d)| (r.to_string(), d.to_string()))
            })
            .collect();
        let mut entries: Vec<(String, String, String)> = strings("RepoTags")
            .into_iter()
            .map(|t| {
                let (repo, tag) = split_reference(&t);
                let digest = digests
                    .get(&repo)
                    .cloned()
                    .unwrap_or_else(|| "<none>".into());
                (repo, tag.unwrap_or_else(|| "<none>".into()), digest)
            })
            .collect();
        if entries.is_empty() {
            match digests.iter().next() {
                Some((repo, digest)) => {
                    entries.push((repo.clone(), "<none>".into(), digest.clone()))
                }
                None => entries.push(("<none>".into(), "<none>".into(), "<none>".into())),
            }
        }
        for (repo, tag, digest) in entries {
            rows.push(json!({
                "Repository": repo,
                "Tag": tag,
                "Digest": digest,
                "ID": if args.no_trunc { id.to_string() } else { format::short_id(id) },
                "CreatedSince": format::ago(created),
                "CreatedAt": chrono::DateTime::from_timestamp(created, 0).map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S %z %Z").to_string()).unwrap_or_default(),
                "Size": format::human_size(size as f64),
                "VirtualSize": format::human_size(size as f64),
                "SharedSize": "N/A",
                "UniqueSize": "N/A",
                "Containers": "N/A",
            }));
        }
    }
    out(&format.render_rows(&rows, &format::headers(IMAGE_HEADERS))?);
    Ok(())
}

/// The registry host of a reference ("docker.io" for Docker Hub names).
fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

/// The credentials file (`~/.config/wharf/auth.json`, or `$WHARF_CONFIG/auth.json`).
fn auth_file() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("WHARF_CONFIG") {
        return Ok(PathBuf::from(dir).join("auth.json"));
    }
    let home = std::env::var("HOME").map_err(|_| {
        CliError::internal("HOME is not set: cannot find ~/.config/wharf/auth.json")
    })?;
    Ok(PathBuf::from(home).join(".config/wharf/auth.json"))
}

fn read_auths() -> Result<Value> {
    let path = auth_file()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
            CliError::internal(format!("reading {}: not JSON: {err}", path.display()))
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(json!({"auths": {}})),
        Err(err) => Err(CliError::internal(format!(
            "reading {}: {err}",
            path.display()
        ))),
    }
}

/// Writes the credentials file atomically, mode 0600 from its creation.
fn write_auths(value: &Value) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = auth_file()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|err| CliError::internal(format!("creating {}: {err}", dir.display())))?;
    }
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(format::pretty_json(value).as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    written.map_err(|err| CliError::internal(format!("writing {}: {err}", path.display())))
}

/// The X-Registry-Auth header for `reference`'s registry, when logged in.
fn registry_auth(reference: &str) -> Result<Vec<(&'static str, String)>> {
    let registry = registry_of(reference);
    let auths = read_auths()?;
    let stored = auths
        .get("auths")
        .and_then(|a| a.get(&registry))
        .and_then(|e| e.get("auth"))
        .and_then(Value::as_str)
        .map(str::to_string);
    // Then Docker's own config.json, so a `docker login` of this user also works.
    let Some(auth) = stored.or_else(|| docker_config_auth(&registry)) else {
        return Ok(Vec::new());
    };
    let auth = auth.as_str();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            CliError::internal(format!(
                "the credentials for {registry} in {} are not valid base64",
                auth_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ))
        })?;
    let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
    let header = json!({"username": user, "password": password, "serveraddress": registry});
    Ok(vec![(
        "X-Registry-Auth",
        base64::engine::general_purpose::URL_SAFE.encode(header.to_string()),
    )])
}

/// The `auth` of `registry` in Docker's config.json ($DOCKER_CONFIG or ~/.docker),
/// where Docker Hub is keyed by its v1 index URL.
fn docker_config_auth(registry: &str) -> Option<String> {
    let dir = std::env::var("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".docker")))
        .ok()?;
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let auths = config.get("auths")?.as_object()?;
    let keys: Vec<String> = if registry == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            "index.docker.io".into(),
        ]
    } else {
        vec![
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    };
    keys.iter()
        .find_map(|k| {
            auths
                .get(k)
                .and_then(|e| e.get("auth"))
                .and_then(Value::as_str)
        })
        .map(str::to_string)
}

/// Pulls `reference`, showing docker's per-layer progress (on stderr when `to_stderr`,
/// as `run` does) or only the reference when `quiet`.
pub async fn pull_image(
    client: &Client,
    reference: &str,
    quiet: bool,
    to_stderr: bool,
) -> Result<()> {
    let (repo, tag) = split_reference(reference);
    let mut path = format!("/images/create?fromImage={}", enc(&repo));
    let digest = reference.split_once('@').map(|(_, d)| d.to_string());
    match (&digest, &tag) {
        (Some(d), _) => path.push_str(&format!("&tag={}", enc(d))),
        (None, Some(t)) => path.push_str(&format!("&tag={}", enc(t))),
        (None, None) => path.push_str("&tag=latest"),
    }
    let headers = registry_auth(reference)?;
    let response = client
        .call_with(
            hyper::Method::POST,
            &path,
            connection::empty(),
            "application/json",
            &headers,
        )
        .await?;
    progress(response, quiet, to_stderr).await?;
    // The reference pulled, as docker prints it last (also with -q; not for `run`).
    if !to_stderr {
        let full = if digest.is_some() || tag.is_some() {
            reference.to_string()
        } else {
            format!("{reference}:latest")
        };
        out(&format!("{full}\n"));
    }
    Ok(())
}

async fn push(client: &Client, reference: &str, quiet: bool) -> Result<()> {
    let (repo, tag) = split_reference(reference);
    let mut path = format!("/images/{repo}/push");
    if let Some(tag) = tag {
        path.push_str(&format!("?tag={}", enc(&tag)));
    }
    let headers = registry_auth(reference)?;
    let response = client
        .call_with(
            hyper::Method::POST,
            &path,
            connection::empty(),
            "application/json",
            &headers,
        )
        .await?;
    progress(response, quiet, false).await?;
    if quiet {
        out(&format!("{reference}\n"));
    }
    Ok(())
}

/// Shows a JSON message stream as docker's jsonmessage does: on a terminal, one line
/// per layer updated in place; otherwise each status once, without progress bars.
/// An `error` message ends it with that error.
async fn progress(
    response: hyper::Response<hyper::body::Incoming>,
    quiet: bool,
    to_stderr: bool,
) -> Result<()> {
    let mut lines = tokio::io::BufReader::new(body_reader(response)).lines();
    let term = !quiet
        && if to_stderr {
            nix::unistd::isatty(2).unwrap_or(false)
        } else {
            tty::stdout_is_tty()
        };
    let mut ids: Vec<String> = Vec::new();
    let emit = |text: &str| {
        if quiet {
            return;
        }
        if to_stderr {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(text.as_bytes());
            let _ = e.flush();
        } else {
            out(text);
        }
    };
    while let Some(msg) = connection::next_message(&mut lines, "progress stream").await? {
        if let Some(stream) = msg.get("stream").and_then(Value::as_str) {
            emit(stream);
            continue;
        }
        let status = msg.get("status").and_then(Value::as_str).unwrap_or("");
        let bar = msg.get("progress").and_then(Value::as_str).unwrap_or("");
        let has_progress = msg
            .get("progressDetail")
            .and_then(Value::as_object)
            .is_some_and(|d| !d.is_empty());
        match msg.get("id").and_then(Value::as_str) {
            Some(id) if term => {
                // A line must never wrap, or moving up by layers misses: as docker, the
                // bar only on terminals of 110 columns or more, and cut to the width.
                let width = tty::size().map(|(_, cols)| cols as usize).unwrap_or(80);
                let (graph, numbers) = match bar.find(']') {
                    Some(end) => (&bar[..=end], bar[end + 1..].trim()),
                    None => ("", bar.trim()),
                };
                let shown = if width >= 110 {
                    format!("{graph} {numbers}")
                } else {
                    numbers.to_string()
                };
                let text: String = format!("{id}: {status} {}", shown.trim())
                    .trim_end()
                    .chars()
                    .take(width.saturating_sub(1))
                    .collect();
                match ids.iter().position(|i| i == id) {
                    Some(pos) => {
                        let up = ids.len() - pos;
                        emit(&format!("\x1b[{up}A\r\x1b[2K{text}\x1b[{up}B\r"));
                    }
                    None => {
                        ids.push(id.to_string());
                        emit(&format!("{text}\n"));
                    }
                }
            }
            Some(id) => {
                if !has_progress {
                    emit(&format!("{id}: {status}\n"));
                }
            }
            None => emit(&format!("{status}\n")),
        }
    }
    Ok(())
}

async fn history(
    client: &Client,
    image: &str,
    no_trunc: bool,
    quiet: bool,
    human: bool,
    format: Option<String>,
) -> Result<()> {
    let list = client.get(&format!("/images/{image}/history")).await?;
    let template = match (&format, quiet) {
        (_, true) => "{{.ID}}".to_string(),
        (Some(f), false) => f.clone(),
        _ => "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}".into(),
    };
    let format = Format::parse(&template)?;
    let rows: Vec<Value> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let id = h.get("Id").and_then(Value::as_str).unwrap_or("<missing>");
            let created = h.get("Created").and_then(Value::as_i64).unwrap_or(0);
            let by = h.get("CreatedBy").and_then(Value::as_str).unwrap_or("").replace('\t', " ");
            let size = h.get("Size").and_then(Value::as_i64).unwrap_or(0);
            json!({
                "ID": if id.starts_with("sha256:") && !no_trunc { format::short_id(id) } else { id.to_string() },
                "CreatedSince": if human { format::ago(created) } else { created.to_string() },
                "CreatedAt": created.to_string(),
                "CreatedBy": if no_trunc { by } else { format::ellipsis(&by, 45) },
                "Size": if human { format::human_size(size as f64) } else { size.to_string() },
                "Comment": h.get("Comment").and_then(Value::as_str).unwrap_or(""),
            })
        })
        .collect();
    let headers = format::headers(&[
        ("ID", "IMAGE"),
        ("CreatedSince", "CREATED"),
        ("CreatedAt", "CREATED AT"),
        ("CreatedBy", "CREATED BY"),
        ("Size", "SIZE"),
        ("Comment", "COMMENT"),
    ]);
    out(&format.render_rows(&rows, &headers)?);
    Ok(())
}

async fn open_input(input: Option<&std::path::Path>, what: &str) -> Result<connection::Body> {
    match input {
        Some(path) => {
            let file = tokio::fs::File::open(path).await.map_err(|err| {
                CliError::internal(format!("{what}: opening {}: {err}", path.display()))
            })?;
            Ok(connection::reader_body(file))
        }
        None => {
            if tty::stdin_is_tty() {
                return Err(CliError::usage(format!("{what}: requested load from stdin, but stdin is empty (a terminal): use -i or a pipe")));
            }
            Ok(connection::reader_body(tokio::io::stdin()))
        }
    }
}

async fn load(client: &Client, input: Option<PathBuf>, quiet: bool) -> Result<()> {
    let body = open_input(input.as_deref(), "load").await?;
    let response = client
        .call(
            hyper::Method::POST,
            &format!(
                "/images/load?quiet={}",
                u8::from(quiet || !tty::stdout_is_tty())
            ),
            body,
            "application/x-tar",
        )
        .await?;
    progress(response, false, false).await
}

async fn import(
    client: &Client,
    file: &str,
    repository: Option<String>,
    changes: Vec<String>,
    message: Option<String>,
) -> Result<()> {
    let mut query = vec!["fromSrc=-".to_string()];
    if let Some(r) = &repository {
        let (repo, tag) = split_reference(r);
        query.push(format!("repo={}", enc(&repo)));
        if let Some(t) = tag {
            query.push(format!("tag={}", enc(&t)));
        }
    }
    for c in &changes {
        query.push(format!("changes={}", enc(c)));
    }
    if let Some(m) = &message {
        query.push(format!("message={}", enc(m)));
    }
    let input = if file == "-" {
        None
    } else {
        Some(std::path::Path::new(file))
    };
    let body = open_input(input, "import").await?;
    let response = client
        .call(
            hyper::Method::POST,
            &format!("/images/create?{}", query.join("&")),
            body,
            "application/x-tar",
        )
        .await?;
    progress(response, false, false).await
}

async fn login(
    client: &Client,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
    server: Option<String>,
) -> Result<()> {
    let server = server.unwrap_or_else(|| "docker.io".to_string());
    let username = match username {
        Some(u) => u,
        None => prompt("Username: ")?,
    };
    let password = match (password, password_stdin) {
        (Some(_), true) => {
            return Err(CliError::usage(
                "--password and --password-stdin are mutually exclusive",
            ))
        }
        (Some(p), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut text = String::new();
            std::io::stdin().read_line(&mut text).map_err(|err| {
                CliError::internal(format!("reading the password from stdin: {err}"))
            })?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => prompt_hidden("Password: ")?,
    };
    if username.is_empty() || password.is_empty() {
        return Err(CliError::usage(
            "Error: Cannot perform an interactive login without a username and a password",
        ));
    }
    let answer = client
        .post(
            "/auth",
            Some(&json!({"username": username, "password": password, "serveraddress": server})),
        )
        .await?;
    let mut auths = read_auths()?;
    if !auths.get("auths").is_some_and(Value::is_object) {
        auths["auths"] = json!({});
    }
    auths["auths"][&server] = json!({"auth": base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))});
    write_auths(&auths)?;
    let status = answer
        .get("Status")
        .and_then(Value::as_str)
        .unwrap_or("Login Succeeded");
    out(&format!("{status}\n"));
    Ok(())
}

fn logout(server: Option<String>) -> Result<()> {
    let server = server.unwrap_or_else(|| "docker.io".to_string());
    let mut auths = read_auths()?;
    let removed = auths
        .get_mut("auths")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove(&server))
        .is_some();
    if removed {
        write_auths(&auths)?;
        out(&format!("Removing login credentials for {server}\n"));
    } else {
        out(&format!("Not logged in to {server}\n"));
    }
    Ok(())
}

fn prompt(text: &str) -> Result<String> {
    eprint!("{text}");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|err| CliError::internal(format!("reading stdin: {err}")))?;
    Ok(line.trim().to_string())
}

/// Reads a line with echo off (the password), putting the terminal back after.
fn prompt_hidden(text: &str) -> Result<String> {
    use nix::sys::termios;
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).ok();
    if let Some(saved) = &saved {
        let mut quiet = saved.clone();
        quiet.local_flags.remove(termios::LocalFlags::ECHO);
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &quiet);
    }
    let line = prompt(text);
    if let Some(saved) = &saved {
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, saved);
        eprintln!();
    }
    line
}
