//! Files in and out of containers: `cp` (both ways), `export` (and `save`'s download),
//! `commit`.

use std::path::PathBuf;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::connection::{self, Client};
use super::containers::{split_reference, CommitArgs};
use super::{enc, out, tty, CliError, Result};

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
    let mut reader = connection::body_reader(response);
    match output {
        Some(file) => {
            let tmp = file.with_extension("wharf-partial");
            let mut f = tokio::fs::File::create(&tmp).await.map_err(|err| {
                CliError::internal(format!("{what}: creating {}: {err}", tmp.display()))
            })?;
            // ctrl-c leaves no half-written archive behind: the partial file goes.
            let copied = tokio::select! {
                copied = tokio::io::copy(&mut reader, &mut f) => copied.map(|_| ()),
                _ = tokio::signal::ctrl_c() => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(CliError::exit(130));
                }
            };
            let copied = match copied {
                Ok(()) => f.flush().await,
                Err(err) => Err(err),
            };
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
pub(super) fn split_cp(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    arg.split_once(':')
}

pub(super) async fn cp(client: &Client, src: &str, dst: &str) -> Result<()> {
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

pub(super) fn stat_is_dir(response: &hyper::Response<hyper::body::Incoming>) -> bool {
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
pub(super) fn retar(data: &[u8], from: &str, to: &str) -> Result<Vec<u8>> {
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

pub(super) fn tempdir_in(dir: &std::path::Path) -> Result<PathBuf> {
    let path = dir.join(format!(".wharf-cp-{}", std::process::id()));
    std::fs::create_dir_all(&path)
        .map_err(|err| CliError::internal(format!("creating {}: {err}", path.display())))?;
    Ok(path)
}

pub(super) async fn commit(client: &Client, args: CommitArgs) -> Result<()> {
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
