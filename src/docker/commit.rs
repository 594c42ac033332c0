//! `POST /commit?container=&repo=&tag=&comment=&author=&pause=&changes=`: a container's
//! read-write layer as a new image (`docker commit`), as dockerd 20.10 makes it
//! (`daemon/commit.go`): the container is paused meanwhile unless `pause=false`; the new
//! image's config is the request body's config, or else the container's own
//! configuration, with the `changes` (Dockerfile instructions: CMD, ENTRYPOINT, ENV,
//! EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR) applied, then completed
//! from the container's configuration (moby's `merge`); the layer, history and tag are
//! the image service's (`crate::image::rwlayer::commit`). 201 `{"Id": "sha256:..."}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::containers::{extension, find};
use super::error::ApiError;
use super::images::familiar;
use super::{DockerServer, NAMESPACE};
use crate::image::changes::clean_path;
use crate::image::registry::ImageReference;
use crate::image::rwlayer::commit::CommitOptions;
use crate::image::rwlayer::RUNTIME_MOUNTPOINTS;
use crate::runtime::ContainerState;

/// The instructions a commit's `changes` may hold (moby's `validCommitCommands`).
const VALID_CHANGES: &[&str] = &[
    "cmd",
    "entrypoint",
    "env",
    "expose",
    "label",
    "onbuild",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// The value of `key` in a query (the last one given).
fn param<'a>(params: &'a [(String, String)], key: &str) -> &'a str {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// dockerd's `httputils.BoolValue`, with `pause`'s default (true since API 1.13).
fn pause_wanted(value: &str) -> bool {
    let value = value.trim().to_ascii_lowercase();
    !matches!(value.as_str(), "0" | "no" | "false" | "none")
}

/// `repo` and `tag` as the reference to tag the image with (`None` without a repo, as
/// dockerd ignores a tag alone); invalid ones are 400, before anything is made.
fn reference(repo: &str, tag: &str) -> Result<Option<String>, ApiError> {
    if repo.is_empty() {
        return Ok(None);
    }
    let bounded = |s: &str| crate::image::bounded(s, crate::image::MAX_ECHO);
    let parsed = ImageReference::parse(repo)
        .map_err(|err| ApiError::bad_request(format!("invalid reference format: {err}")))?;
    if parsed.digest().is_some() {
        return Err(ApiError::bad_request(format!(
            "refusing to create a tag with a digest reference: {}",
            bounded(repo)
        )));
    }
    // `tag` replaces a tag given in `repo` itself (moby's `TrimNamed` + `WithTag`).
    let full = if tag.is_empty() {
        repo.to_string()
    } else {
        format!("{}:{tag}", parsed.name())
    };
    let parsed = ImageReference::parse(&full)
        .map_err(|err| ApiError::bad_request(format!("invalid reference format: {err}")))?;
    Ok(parsed.repo_tag())
}

fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

fn is_null(value: Option<&Value>) -> bool {
    matches!(value, None | Some(Value::Null))
}

/// The `KEY` of a `KEY=value` environment entry.
fn env_key(entry: &Value) -> &str {
    entry
        .as_str()
        .map(|e| e.split('=').next().unwrap_or(e))
        .unwrap_or("")
}

/// moby's `merge(userConf, imageConf)`: what `user` leaves unset comes from `image`
/// (the container's create request over its image's config; a commit's new config over
/// the container's).
pub(super) fn merge(user: &mut Map<String, Value>, image: &Map<String, Value>) {
    let take = |user: &mut Map<String, Value>, key: &str| {
        if let Some(value) = image.get(key) {
            user.insert(key.to_string(), value.clone());
        }
    };
    if is_empty(user.get("User")) {
        take(user, "User");
    }
    if is_empty(user.get("ExposedPorts")) {
        take(user, "ExposedPorts");
    } else if let (Some(Value::Object(mine)), Some(Value::Object(theirs))) =
        (user.get_mut("ExposedPorts"), image.get("ExposedPorts"))
    {
        for (port, value) in theirs {
            mine.entry(port.clone()).or_insert_with(|| value.clone());
        }
    }
    if is_empty(user.get("Env")) {
        take(user, "Env");
    } else if let (Some(Value::Array(mine)), Some(Value::Array(theirs))) =
        (user.get_mut("Env"), image.get("Env"))
    {
        for entry in theirs {
            let key = env_key(entry);
            if !mine.iter().any(|e| env_key(e) == key) {
                mine.push(entry.clone());
            }
        }
    }
    let labels = user
        .entry("Labels")
        .and_modify(|l| {
            if !l.is_object() {
                *l = json!({});
            }
        })
        .or_insert_with(|| json!({}));
    if let (Some(mine), Some(Value::Object(theirs))) = (labels.as_object_mut(), image.get("Labels"))
    {
        for (key, value) in theirs {
            mine.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    if is_empty(user.get("Entrypoint")) {
        if is_empty(user.get("Cmd")) {
            take(user, "Cmd");
            take(user, "ArgsEscaped");
        }
        if is_null(user.get("Entrypoint")) {
            take(user, "Entrypoint");
        }
    }
    if is_null(user.get("Healthcheck")) {
        take(user, "Healthcheck");
    }
    if is_empty(user.get("WorkingDir")) {
        take(user, "WorkingDir");
    }
    if is_empty(user.get("Volumes")) {
        take(user, "Volumes");
    } else if let (Some(Value::Object(mine)), Some(Value::Object(theirs))) =
        (user.get_mut("Volumes"), image.get("Volumes"))
    {
        for (path, value) in theirs {
            mine.insert(path.clone(), value.clone());
        }
    }
    if is_empty(user.get("StopSignal")) {
        take(user, "StopSignal");
    }
}

// ---------------------------------------------------------------------------
// Dockerfile instructions (the `changes`)

/// A Dockerfile line split into words at unquoted whitespace, quotes and escapes kept
/// (what moby's parser hands to the word processor).
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                word.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                word.push(c);
            }
            (Some('\''), c) => word.push(c),
            (_, '\\') => {
                word.push('\\');
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            (_, c) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The value of `name` in `env` (`KEY=value` entries).
fn lookup_env<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

/// A variable reference after `$`: `NAME`, `{NAME}`, `{NAME:-word}`, `{NAME:+word}`.
fn expand_variable(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, env: &[String]) -> String {
    if chars.peek() == Some(&'{') {
        chars.next();
        let mut inner = String::new();
        for c in chars.by_ref() {
            if c == '}' {
                break;
            }
            inner.push(c);
        }
        let (name, modifier) = match inner.find(':') {
            Some(i) => (&inner[..i], Some(&inner[i + 1..])),
            None => (inner.as_str(), None),
        };
        let value = lookup_env(env, name);
        return match modifier {
            Some(m) if m.starts_with('-') => value
                .filter(|v| !v.is_empty())
                .map_or_else(|| process_word(&m[1..], env), str::to_string),
            Some(m) if m.starts_with('+') => value
                .filter(|v| !v.is_empty())
                .map_or_else(String::new, |_| process_word(&m[1..], env)),
            _ => value.unwrap_or_default().to_string(),
        };
    }
    let mut name = String::new();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_alphanumeric() || c == '_' {
            name.push(c);
            chars.next();
        } else {
            break;
        }
    }
    if name.is_empty() {
        return "$".to_string();
    }
    lookup_env(env, &name).unwrap_or_default().to_string()
}

/// One word with its quotes removed, escapes resolved and `$VAR`s expanded from `env`
/// (moby's `ProcessWord`; single quotes keep everything literal).
fn process_word(word: &str, env: &[String]) -> String {
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), c) => out.push(c),
            (None, '\'') => quote = Some('\''),
            (None, '"') => quote = Some('"'),
            (Some('"'), '"') => quote = None,
            (Some('"'), '\\') => match chars.peek() {
                Some(&next @ ('"' | '\\' | '$')) => {
                    out.push(next);
                    chars.next();
                }
                _ => out.push('\\'),
            },
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            (_, '$') => out.push_str(&expand_variable(&mut chars, env)),
            (_, c) => out.push(c),
        }
    }
    out
}

/// `key=value` pairs (ENV, LABEL), or the old `KEY value` form (one pair, the value the
/// rest of the line).
fn name_values(
    instruction: &str,
    rest: &str,
    env: &[String],
) -> Result<Vec<(String, String)>, ApiError> {
    let words = split_words(rest);
    let Some(first) = words.first() else {
        return Err(ApiError::bad_request(format!(
            "{} requires at least one argument",
            instruction.to_ascii_uppercase()
        )));
    };
    if !first.contains('=') {
        let value = rest.trim_start()[first.len()..].trim();
        if value.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} must have two arguments",
                instruction.to_ascii_uppercase()
            )));
        }
        return Ok(vec![(process_word(first, env), process_word(value, env))]);
    }
    words
        .iter()
        .map(|word| {
            let (key, value) = word.split_once('=').ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Syntax error - can't find = in \"{}\". Must be of the form: name=value",
                    crate::image::bounded(word, crate::image::MAX_ECHO)
                ))
            })?;
            Ok((process_word(key, env), process_word(value, env)))
        })
        .collect()
}

/// The JSON (exec) form `["a", "b"]`, if the arguments are one.
fn json_form(rest: &str) -> Option<Vec<String>> {
    let trimmed = rest.trim();
    if !trimmed.starts_with('[') {
        return None;
    }
    serde_json::from_str(trimmed).ok()
}

fn string_list(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| json!(s)).collect())
}

fn env_of(config: &Map<String, Value>) -> Vec<String> {
    config
        .get("Env")
        .and_then(Value::as_array)
        .map(|env| {
            env.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A command in shell form: the config's `Shell` (default `/bin/sh -c`) and the line.
fn shell_form(config: &Map<String, Value>, line: &str) -> Vec<String> {
    let mut command: Vec<String> = config
        .get("Shell")
        .and_then(Value::as_array)
        .map(|shell| {
            shell
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .filter(|shell: &Vec<String>| !shell.is_empty())
        .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()]);
    command.push(line.to_string());
    command
}

/// Applies the commit's `changes` to `config` in order (moby's `BuildFromConfig`): each
/// one Dockerfile instruction (several when a value holds newlines).
fn apply_changes(config: &mut Map<String, Value>, changes: &[&str]) -> Result<(), ApiError> {
    let lines: Vec<&str> = changes
        .iter()
        .flat_map(|c| c.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Every instruction is checked before any is applied.
    for line in &lines {
        let instruction = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if !VALID_CHANGES.contains(&instruction.as_str()) {
            return Err(ApiError::bad_request(format!(
                "{} is not a valid change command",
                crate::image::bounded(&instruction, crate::image::MAX_ECHO)
            )));
        }
    }
    let mut cmd_set = false;
    for line in lines {
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let instruction = word.to_ascii_lowercase();
        let rest = rest.trim();
        let env = env_of(config);
        match instruction.as_str() {
            "cmd" => {
                let command = json_form(rest).unwrap_or_else(|| shell_form(config, rest));
                config.insert("Cmd".into(), string_list(&command));
                cmd_set = true;
            }
            "entrypoint" => {
                let entrypoint = match json_form(rest) {
                    Some(exec) if exec.is_empty() => Value::Null,
                    Some(exec) => string_list(&exec),
                    None if rest.is_empty() => Value::Null,
                    None => string_list(&shell_form(config, rest)),
                };
                config.insert("Entrypoint".into(), entrypoint);
                if !cmd_set {
                    config.insert("Cmd".into(), Value::Null);
                }
            }
            "env" => {
                let mut entries = env;
                for (key, value) in name_values(&instruction, rest, &entries.clone())? {
                    if key.is_empty() {
                        return Err(ApiError::bad_request("ENV names can not be blank"));
                    }
                    let entry = format!("{key}={value}");
                    match entries
                        .iter_mut()
                        .find(|e| e.split('=').next() == Some(&key))
                    {
                        Some(existing) => *existing = entry,
                        None => entries.push(entry),
                    }
                }
                config.insert("Env".into(), string_list(&entries));
            }
            "label" => {
                let pairs = name_values(&instruction, rest, &env)?;
                let labels = config
                    .entry("Labels")
                    .and_modify(|l| {
                        if !l.is_object() {
                            *l = json!({});
                        }
                    })
                    .or_insert_with(|| json!({}));
                for (key, value) in pairs {
                    if key.is_empty() {
                        return Err(ApiError::bad_request("LABEL names can not be blank"));
                    }
                    labels[key] = json!(value);
                }
            }
            "expose" => {
                let words = split_words(rest);
                if words.is_empty() {
                    return Err(ApiError::bad_request(
                        "EXPOSE requires at least one argument",
                    ));
                }
                let ports = config
                    .entry("ExposedPorts")
                    .and_modify(|p| {
                        if !p.is_object() {
                            *p = json!({});
                        }
                    })
                    .or_insert_with(|| json!({}));
                for word in words {
                    for port in crate::image::changes::port_specs(&process_word(&word, &env))
                        .map_err(ApiError::bad_request)?
                    {
                        ports[port] = json!({});
                    }
                }
            }
            "volume" => {
                let paths = json_form(rest).unwrap_or_else(|| {
                    split_words(rest)
                        .iter()
                        .map(|w| process_word(w, &env))
                        .collect()
                });
                if paths.is_empty() {
                    return Err(ApiError::bad_request(
                        "VOLUME requires at least one argument",
                    ));
                }
                let volumes = config
                    .entry("Volumes")
                    .and_modify(|v| {
                        if !v.is_object() {
                            *v = json!({});
                        }
                    })
                    .or_insert_with(|| json!({}));
                for path in paths {
                    let path = path.trim().to_string();
                    if path.is_empty() {
                        return Err(ApiError::bad_request(
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    volumes[path] = json!({});
                }
            }
            "user" | "workdir" | "stopsignal" => {
                let value = process_word(rest, &env);
                if value.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "{} requires exactly one argument",
                        instruction.to_ascii_uppercase()
                    )));
                }
                let (key, value) = match instruction.as_str() {
                    "user" => ("User", value),
                    "stopsignal" => ("StopSignal", value),
                    _ => {
                        let current = config
                            .get("WorkingDir")
                            .and_then(Value::as_str)
                            .filter(|w| !w.is_empty())
                            .unwrap_or("/");
                        let joined = if value.starts_with('/') {
                            value
                        } else {
                            format!("{current}/{value}")
                        };
                        ("WorkingDir", clean_path(&joined))
                    }
                };
                config.insert(key.into(), json!(value));
            }
            "onbuild" => {
                if rest.is_empty() {
                    return Err(ApiError::bad_request(
                        "ONBUILD requires at least one argument",
                    ));
                }
                let trigger = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                if matches!(trigger.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(ApiError::bad_request(format!(
                        "{trigger} isn't allowed as an ONBUILD trigger"
                    )));
                }
                let expression = format!("{trigger}{}", &rest.trim_start()[trigger.len()..]);
                match config.get_mut("OnBuild").and_then(Value::as_array_mut) {
                    Some(list) => list.push(json!(expression)),
                    None => {
                        config.insert("OnBuild".into(), json!([expression]));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The container's configuration as dockerd keeps it (`container.Config`): the create
/// request's `Config` completed from its image's config, the hostname its short ID.
fn container_config(
    server: &DockerServer,
    container: &crate::runtime::ContainerRecord,
) -> Map<String, Value> {
    let mut config = match extension(container).create {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    config.remove("HostConfig");
    config.remove("NetworkingConfig");
    if is_empty(config.get("Hostname")) {
        let short = container.id.get(..12).unwrap_or(&container.id);
        config.insert("Hostname".into(), json!(short));
    }
    let image_config = server
        .images
        .get(NAMESPACE, &container.image_id)
        .and_then(|image| server.images.config_json(&image).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|config| match config.get("config") {
            Some(Value::Object(map)) => Some(map.clone()),
            _ => None,
        })
        .unwrap_or_default();
    merge(&mut config, &image_config);
    config
}

/// The body's config, if it holds one (the CLI sends `null`, docker-py `{}`).
fn body_config(body: &[u8]) -> Result<Option<Map<String, Value>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("invalid JSON in the request body: {err}")))?;
    match value {
        Value::Null => Ok(None),
        Value::Object(map) if map.values().all(Value::is_null) => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        _ => Err(ApiError::bad_request(
            "invalid JSON in the request body: a container config object is required",
        )),
    }
}

/// POST `/commit`: 201 `{"Id"}`.
pub(super) async fn commit(
    State(server): State<Arc<DockerServer>>,
    Query(params): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let c = find(&server, param(&params, "container"))?;
    if c.state == ContainerState::Unknown {
        return Err(ApiError::conflict(format!(
            "You cannot commit container {} which is Dead",
            c.id
        )));
    }
    let reference = reference(param(&params, "repo"), param(&params, "tag"))?;
    let changes: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "changes")
        .map(|(_, v)| v.as_str())
        .collect();
    let own = container_config(&server, &c);
    let mut config = body_config(&body)?.unwrap_or_else(|| own.clone());
    apply_changes(&mut config, &changes)?;
    merge(&mut config, &own);
    let created_by = own
        .get("Cmd")
        .and_then(Value::as_array)
        .map(|cmd| {
            cmd.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let options = CommitOptions {
        container_id: c.id.clone(),
        author: param(&params, "author").to_string(),
        comment: param(&params, "comment").to_string(),
        config: Value::Object(config),
        container_config: Value::Object(own),
        created_by,
        reference: reference.clone(),
    };
    let layer = server.runtime.container_layer(NAMESPACE, &c.id)?;
    let pause =
        pause_wanted(param(&params, "pause")) && c.state == ContainerState::Running && !c.paused;
    if pause {
        server.runtime.pause_container(NAMESPACE, &c.id).await?;
    }
    let committed = server
        .images
        .commit(
            NAMESPACE,
            Some(&c.image_id),
            layer,
            RUNTIME_MOUNTPOINTS,
            options,
        )
        .await;
    if pause {
        if let Err(err) = server.runtime.unpause_container(NAMESPACE, &c.id).await {
            tracing::warn!(container = %c.id, "unpausing after a commit: {err}");
        }
    }
    let image = committed.map_err(|err| match err {
        crate::image::ImageError::InvalidImage { message, .. } => {
            ApiError::conflict(format!("cannot commit container {}: {message}", c.id))
        }
        other => ApiError::from(other),
    })?;
    super::filesystem::container_event(
        &server,
        &c,
        "commit",
        &[
            ("comment", param(&params, "comment").to_string()),
            ("imageID", image.id.clone()),
            (
                "imageRef",
                reference.as_deref().map(familiar).unwrap_or_default(),
            ),
        ],
    );
    tracing::info!(container = %c.id, image = %image.id, "docker commit");
    Ok((StatusCode::CREATED, Json(json!({ "Id": image.id }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn changes_as_dockerfile_instructions() {
        let mut c = config(json!({
            "Env": ["PATH=/bin", "A=1"],
            "Cmd": ["sh"],
            "WorkingDir": "/srv",
        }));
        apply_changes(
            &mut c,
            &[
                r#"CMD ["cat", "/hello"]"#,
                "ENV PATH=$PATH:/opt/bin B=\"two words\" C='$lit'",
                "env D plain old form",
                "LABEL a=b \"c d\"=e",
                "EXPOSE 80 53/udp 8000-8001",
                "WORKDIR app",
                "USER 1000:1000",
                "VOLUME /data",
                "STOPSIGNAL SIGINT",
            ],
        )
        .unwrap();
        assert_eq!(c["Cmd"], json!(["cat", "/hello"]));
        assert_eq!(
            c["Env"],
            json!([
                "PATH=/bin:/opt/bin",
                "A=1",
                "B=two words",
                "C=$lit",
                "D=plain old form"
            ])
        );
        assert_eq!(c["Labels"], json!({"a": "b", "c d": "e"}));
        assert_eq!(
            c["ExposedPorts"],
            json!({"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}})
        );
        assert_eq!(c["WorkingDir"], "/srv/app");
        assert_eq!(c["User"], "1000:1000");
        assert_eq!(c["Volumes"], json!({"/data": {}}));
        assert_eq!(c["StopSignal"], "SIGINT");

        // Shell form, and ENTRYPOINT resets a CMD not set by these changes.
        let mut c = config(json!({"Cmd": ["sh"]}));
        apply_changes(&mut c, &["ENTRYPOINT echo hi"]).unwrap();
        assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(c["Cmd"], Value::Null);
        let mut c = config(json!({}));
        apply_changes(&mut c, &["CMD [\"x\"]", "ENTRYPOINT [\"e\"]"]).unwrap();
        assert_eq!(c["Cmd"], json!(["x"]));

        let err = apply_changes(&mut c, &["RUN rm -rf /"]).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.message, "run is not a valid change command");
        assert!(apply_changes(&mut c, &["EXPOSE 80/xyz"]).is_err());
    }

    #[test]
    fn merge_as_moby() {
        let mut user = config(json!({"Cmd": ["x"], "Env": ["A=2"], "Labels": {"l": "1"}}));
        let image = config(json!({
            "Cmd": ["sh"], "Entrypoint": ["/init"], "Env": ["A=1", "PATH=/bin"],
            "Labels": {"l": "0", "m": "1"}, "WorkingDir": "/w", "User": "u",
        }));
        merge(&mut user, &image);
        assert_eq!(user["Cmd"], json!(["x"]));
        assert_eq!(user["Entrypoint"], json!(["/init"]));
        assert_eq!(user["Env"], json!(["A=2", "PATH=/bin"]));
        assert_eq!(user["Labels"], json!({"l": "1", "m": "1"}));
        assert_eq!(
            (&user["WorkingDir"], &user["User"]),
            (&json!("/w"), &json!("u"))
        );
        let mut empty = Map::new();
        merge(&mut empty, &image);
        assert_eq!(empty["Cmd"], json!(["sh"]));
    }

    #[test]
    fn references_and_pause() {
        assert_eq!(
            reference("me/app", "v1").unwrap().as_deref(),
            Some("docker.io/me/app:v1")
        );
        assert_eq!(
            reference("app", "").unwrap().as_deref(),
            Some("docker.io/library/app:latest")
        );
        assert_eq!(reference("", "v1").unwrap(), None);
        for bad in ["Bad", "a b", "app@sha256:00"] {
            assert_eq!(
                reference(bad, "").unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert_eq!(
            reference("app", "-x").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert!(pause_wanted("") && pause_wanted("1") && pause_wanted("true"));
        assert!(!pause_wanted("0") && !pause_wanted("false") && !pause_wanted("no"));
        assert_eq!(clean_path("/srv/../a/./b/"), "/a/b");
        assert_eq!(process_word(r#""a\"b" 'c$X' ${Y:-d}"#, &[]), "a\"b c$X d");
    }
}
