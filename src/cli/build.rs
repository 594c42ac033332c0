//! `wharf build`: a Dockerfile build through the Docker API's `POST /build`, as
//! `docker build` with the classic builder: the context directory is sent as a tar
//! stream made while it is read (`.dockerignore` applied here, as the docker CLI
//! does, so ignored files never travel), or a tar from stdin with `-`; `-f -` reads
//! the Dockerfile from stdin. The daemon's messages are printed as they come; a failed
//! RUN's exit code is the command's.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::connection::{self, body_reader, Client};
use super::{enc, out, tty, CliError, Result};
use crate::image::build::ignore::IgnoreMatcher;

#[derive(Debug, ClapArgs)]
pub struct BuildArgs {
    /// Name and optionally a tag in the 'name:tag' format (may be repeated)
    #[arg(short, long = "tag")]
    tag: Vec<String>,
    /// Name of the Dockerfile (default: 'PATH/Dockerfile'; '-' reads it from STDIN)
    #[arg(short, long = "file")]
    file: Option<String>,
    /// Set build-time variables (KEY=VALUE, or KEY to take it from the environment)
    #[arg(long = "build-arg")]
    build_arg: Vec<String>,
    /// Set metadata for an image (KEY=VALUE)
    #[arg(long = "label")]
    label: Vec<String>,
    /// Do not use cache when building the image
    #[arg(long)]
    no_cache: bool,
    /// Always attempt to pull a newer version of the image
    #[arg(long)]
    pull: bool,
    /// Suppress the build output and print image ID on success
    #[arg(short, long)]
    quiet: bool,
    /// Set the target build stage to build
    #[arg(long)]
    target: Option<String>,
    /// Set the networking mode for the RUN instructions during build
    #[arg(long, default_value = "default")]
    network: String,
    /// Add a custom host-to-IP mapping (host:ip)
    #[arg(long = "add-host")]
    add_host: Vec<String>,
    /// Remove intermediate containers after a successful build
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    rm: bool,
    /// Always remove intermediate containers
    #[arg(long)]
    force_rm: bool,
    /// Write the image ID to the file
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// The build context: a directory, or '-' for a tar archive on STDIN
    path: String,
}

/// What the context is, once the flags are read.
enum Source {
    Dir {
        dir: PathBuf,
        /// A Dockerfile from stdin, added to the tar under this name.
        stdin_dockerfile: Option<(String, Vec<u8>)>,
    },
    StdinTar,
}

pub async fn run(client: &Client, args: BuildArgs) -> Result<()> {
    let mut query = Vec::new();
    for tag in &args.tag {
        query.push(format!("t={}", enc(tag)));
    }
    let source = if args.path == "-" {
        if args.file.as_deref() == Some("-") {
            return Err(CliError::usage(
                "invalid argument: can't use stdin for both build context and dockerfile",
            ));
        }
        Source::StdinTar
    } else {
        let dir = PathBuf::from(&args.path);
        if !dir.is_dir() {
            return Err(CliError::usage(format!(
                "unable to prepare context: path {:?} not found or not a directory",
                args.path
            )));
        }
        let stdin_dockerfile = if args.file.as_deref() == Some("-") {
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut text).map_err(|err| {
                CliError::usage(format!("reading the Dockerfile from stdin: {err}"))
            })?;
            let name = format!(".dockerfile.{}", std::process::id());
            Some((name, text))
        } else {
            None
        };
        Source::Dir {
            dir,
            stdin_dockerfile,
        }
    };
    let dockerfile = match (&source, args.file.as_deref()) {
        (
            Source::Dir {
                stdin_dockerfile: Some((name, _)),
                ..
            },
            _,
        ) => Some(name.clone()),
        (Source::Dir { dir, .. }, Some(file)) => Some(dockerfile_in_context(dir, file)?),
        (_, file) => file.map(str::to_string),
    };
    if let Some(dockerfile) = &dockerfile {
        query.push(format!("dockerfile={}", enc(dockerfile)));
    }
    let mut build_args = BTreeMap::new();
    for arg in &args.build_arg {
        match arg.split_once('=') {
            Some((k, v)) => {
                build_args.insert(k.to_string(), Value::from(v));
            }
            None => {
                let value = std::env::var(arg).map(Value::from).unwrap_or(Value::Null);
                build_args.insert(arg.clone(), value);
            }
        }
    }
    if !build_args.is_empty() {
        query.push(format!(
            "buildargs={}",
            enc(&serde_json::to_string(&build_args).unwrap_or_default())
        ));
    }
    let mut labels = BTreeMap::new();
    for label in &args.label {
        let (k, v) = label.split_once('=').unwrap_or((label, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    if !labels.is_empty() {
        query.push(format!(
            "labels={}",
            enc(&serde_json::to_string(&labels).unwrap_or_default())
        ));
    }
    for (flag, on) in [
        ("nocache", args.no_cache),
        ("pull", args.pull),
        ("q", args.quiet),
        ("forcerm", args.force_rm),
    ] {
        if on {
            query.push(format!("{flag}=1"));
        }
    }
    query.push(format!("rm={}", u8::from(args.rm)));
    if let Some(target) = &args.target {
        query.push(format!("target={}", enc(target)));
    }
    query.push(format!("networkmode={}", enc(&args.network)));
    if !args.add_host.is_empty() {
        query.push(format!("extrahosts={}", enc(&args.add_host.join(","))));
    }
    let body = match source {
        Source::StdinTar => {
            if tty::stdin_is_tty() {
                return Err(CliError::usage(
                    "build: the context '-' is a tar archive on STDIN, but STDIN is a terminal",
                ));
            }
            connection::reader_body(tokio::io::stdin())
        }
        Source::Dir {
            dir,
            stdin_dockerfile,
        } => context_body(
            dir,
            stdin_dockerfile,
            dockerfile
                .clone()
                .unwrap_or_else(|| "Dockerfile".to_string()),
        )?,
    };
    let response = client
        .call(
            hyper::Method::POST,
            &format!("/build?{}", query.join("&")),
            body,
            "application/x-tar",
        )
        .await?;
    let image_id = print_messages(response).await?;
    if let (Some(path), Some(id)) = (&args.iidfile, &image_id) {
        std::fs::write(path, id)
            .map_err(|err| CliError::internal(format!("writing {}: {err}", path.display())))?;
    }
    Ok(())
}

/// `-f` as a path inside the context (the API's `dockerfile`): relative to the
/// current directory as the docker CLI reads it, and it must be inside the context.
fn dockerfile_in_context(dir: &Path, file: &str) -> Result<String> {
    let context = dir
        .canonicalize()
        .map_err(|err| CliError::usage(format!("unable to prepare context: {err}")))?;
    let path = Path::new(file)
        .canonicalize()
        .map_err(|err| CliError::usage(format!("the Dockerfile {file}: {err}")))?;
    path.strip_prefix(&context)
        .map(|rel| rel.to_string_lossy().into_owned())
        .map_err(|_| {
            CliError::usage(format!(
                "the Dockerfile ({file}) must be within the build context ({})",
                dir.display()
            ))
        })
}

/// The context directory as a tar stream, written by a blocking task while it is sent
/// (a large context is never held in memory); `.dockerignore` applied.
fn context_body(
    dir: PathBuf,
    stdin_dockerfile: Option<(String, Vec<u8>)>,
    dockerfile: String,
) -> Result<connection::Body> {
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => Some(
            IgnoreMatcher::parse(&text)
                .map_err(|err| CliError::usage(format!("error reading .dockerignore: {err}")))?,
        ),
        Err(_) => None,
    };
    let (reader, writer) = tokio::io::duplex(256 * 1024);
    let writer = tokio_util::io::SyncIoBridge::new(writer);
    tokio::task::spawn_blocking(move || {
        let mut tar = tar::Builder::new(writer);
        tar.follow_symlinks(false);
        // The Dockerfile and .dockerignore always travel (the docker CLI's
        // `TrimBuildFilesFromExcludes`); the daemon reads them, then drops them if
        // .dockerignore excludes them.
        let keep = [
            dockerfile.trim_start_matches("./").to_string(),
            ".dockerignore".to_string(),
        ];
        let result = add_dir(&mut tar, &dir, "", ignore.as_ref(), &keep).and_then(|()| {
            if let Some((name, text)) = &stdin_dockerfile {
                let mut header = tar::Header::new_gnu();
                header.set_size(text.len() as u64);
                header.set_mode(0o600);
                header.set_cksum();
                tar.append_data(&mut header, name, &text[..])?;
            }
            tar.finish()
        });
        if let Err(err) = result {
            let _ = writeln!(std::io::stderr(), "sending the build context: {err}");
        }
    });
    Ok(connection::reader_body(reader))
}

fn add_dir<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &str,
    ignore: Option<&IgnoreMatcher>,
    keep: &[String],
) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let rel = format!("{prefix}{}", name.to_string_lossy());
        let path = dir.join(&name);
        let meta = std::fs::symlink_metadata(&path)?;
        let excluded = ignore.is_some_and(|i| i.excluded(&rel)) && !keep.contains(&rel);
        if meta.is_dir() {
            if !excluded {
                tar.append_path_with_name(&path, &rel)?;
            }
            if !excluded || ignore.is_some_and(|i| i.may_reinclude_under(&rel)) {
                add_dir(tar, &path, &format!("{rel}/"), ignore, keep)?;
            }
        } else if !excluded {
            tar.append_path_with_name(&path, &rel)?;
        }
    }
    Ok(())
}

/// Prints the build's messages; the last stage's image ID, from the `aux` messages.
async fn print_messages(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<Option<String>> {
    let mut lines = tokio::io::BufReader::new(body_reader(response)).lines();
    let mut image_id = None;
    while let Some(msg) = connection::next_message(&mut lines, "build output").await? {
        if let Some(id) = msg.pointer("/aux/ID").and_then(Value::as_str) {
            image_id = Some(id.to_string());
        }
        if let Some(stream) = msg.get("stream").and_then(Value::as_str) {
            out(stream);
        }
    }
    Ok(image_id)
}
