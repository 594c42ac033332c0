//! `/containers/...`: create, list, inspect, start, stop, kill, wait, remove. A Docker
//! container is a pod with one container in the `docker` namespace: create makes both,
//! remove removes both. The container's ID is the core container's; its name is the
//! pod's and the container's (unique in the namespace).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::convert::{self, CreateRequest, Extension};
use super::error::{decode_json, parse_json, ApiError};
use super::mounts;
use super::{DockerServer, NAMESPACE};
use crate::runtime::model::RestartPolicy;
use crate::runtime::{ContainerRecord, ContainerState};

/// dockerd's default stop timeout (seconds).
const DEFAULT_STOP_TIMEOUT: i64 = 10;

/// Where the Docker front end keeps a container's files (its log, a seccomp profile
/// sent with the create): `<root>/docker/containers/<id>`.
pub(super) fn container_dir(server: &DockerServer, id: &str) -> PathBuf {
    server
        .config
        .root
        .join("docker")
        .join("containers")
        .join(id)
}

pub(super) fn extension(container: &ContainerRecord) -> Extension {
    serde_json::from_slice(&container.extension).unwrap_or_default()
}

/// A container by full ID, name (with or without the leading '/') or unique ID prefix,
/// as dockerd looks them up.
pub(super) fn find(server: &DockerServer, query: &str) -> Result<ContainerRecord, ApiError> {
    let name = query.strip_prefix('/').unwrap_or(query);
    let mut by_name = None;
    server.runtime.for_each_container(NAMESPACE, |c| {
        if c.state != ContainerState::Creating && c.spec.name == name {
            by_name = Some(c.clone());
        }
    });
    if let Some(found) = server
        .runtime
        .container(query)
        .filter(|c| c.namespace == NAMESPACE && c.state != ContainerState::Creating)
    {
        return Ok(found);
    }
    if let Some(found) = by_name {
        return Ok(found);
    }
    server
        .runtime
        .find_container(NAMESPACE, query)
        .filter(|c| c.state != ContainerState::Creating)
        .ok_or_else(|| ApiError::no_such_container(query))
}

/// A time in nanoseconds as dockerd writes it (RFC 3339, nanoseconds; the zero time
/// for never).
pub(super) fn rfc3339(nanos: i64) -> String {
    if nanos <= 0 {
        return "0001-01-01T00:00:00Z".to_string();
    }
    chrono::DateTime::from_timestamp_nanos(nanos)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Docker's `units.HumanDuration`.
fn human_duration(seconds: i64) -> String {
    let hours = seconds / 3600;
    match seconds {
        s if s < 1 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s / 60 == 1 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        _ if hours == 1 => "About an hour".to_string(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

fn seconds_since(nanos: i64) -> i64 {
    (crate::runtime::records::now_nanos() - nanos).max(0) / 1_000_000_000
}

/// Docker's state word.
pub(super) fn state_name(c: &ContainerRecord) -> &'static str {
    match c.state {
        ContainerState::Creating | ContainerState::Created => "created",
        ContainerState::Running if c.paused => "paused",
        ContainerState::Running => "running",
        ContainerState::Exited => "exited",
        ContainerState::Unknown => "dead",
    }
}

/// The health word of `docker ps` (`health: starting` while starting).
pub(super) fn health_word(status: crate::runtime::health::HealthStatus) -> &'static str {
    use crate::runtime::health::HealthStatus;
    match status {
        HealthStatus::Starting => "health: starting",
        HealthStatus::Healthy => "healthy",
        HealthStatus::Unhealthy => "unhealthy",
    }
}

/// `State.Health` of inspect: null without a check.
fn health_json(server: &DockerServer, c: &ContainerRecord) -> Value {
    if c.spec.healthcheck.is_none() {
        return Value::Null;
    }
    let Some(health) = server.runtime.health(&c.id) else {
        return json!({"Status": "starting", "FailingStreak": 0, "Log": []});
    };
    let log: Vec<Value> = health
        .log
        .iter()
        .map(|probe| {
            json!({
                "Start": rfc3339(probe.start),
                "End": rfc3339(probe.end),
                "ExitCode": probe.exit_code,
                "Output": probe.output,
            })
        })
        .collect();
    json!({
        "Status": health.status.as_str(),
        "FailingStreak": health.failing_streak,
        "Log": log,
    })
}

/// `docker ps`'s STATUS column.
pub(super) fn status_text(c: &ContainerRecord) -> String {
    match c.state {
        ContainerState::Running if c.paused => format!(
            "Up {} (Paused)",
            human_duration(seconds_since(c.started_at))
        ),
        ContainerState::Running => format!("Up {}", human_duration(seconds_since(c.started_at))),
        ContainerState::Exited => format!(
            "Exited ({}) {} ago",
            c.exit_code,
            human_duration(seconds_since(c.finished_at))
        ),
        ContainerState::Unknown => "Dead".to_string(),
        ContainerState::Created | ContainerState::Creating => "Created".to_string(),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct CreateQuery {
    name: Option<String>,
}

/// A random `adjective_surname` name, as dockerd's namesgenerator (a shorter list).
pub(super) fn random_name(taken: impl Fn(&str) -> bool) -> String {
    const LEFT: &[&str] = &[
        "admiring", "bold", "brave", "calm", "clever", "eager", "elastic", "festive", "gallant",
        "happy", "jolly", "keen", "lucid", "nifty", "quirky", "serene", "sharp", "tender",
        "vibrant", "zealous",
    ];
    const RIGHT: &[&str] = &[
        "babbage", "bohr", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "kepler",
        "lamport", "lovelace", "noether", "pascal", "ritchie", "shannon", "thompson", "turing",
        "wozniak",
    ];
    let mut seed = [0u8; 8];
    if getrandom_fill(&mut seed).is_err() {
        seed = crate::runtime::records::now_nanos().to_le_bytes();
    }
    let n = u64::from_le_bytes(seed);
    let base = format!(
        "{}_{}",
        LEFT[(n % LEFT.len() as u64) as usize],
        RIGHT[((n >> 16) % RIGHT.len() as u64) as usize]
    );
    if !taken(&base) {
        return base;
    }
    // dockerd appends a digit on a collision.
    (1..)
        .map(|i| format!("{base}{i}"))
        .find(|name| !taken(name))
        .unwrap_or(base)
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

pub(super) fn name_taken(server: &DockerServer, name: &str) -> Option<String> {
    let mut owner = None;
    server.runtime.for_each_container(NAMESPACE, |c| {
        if c.spec.name == name {
            owner = Some(c.id.clone());
        }
    });
    owner
}

/// A name a client asks for (with or without the leading '/'): valid by Docker's rule
/// and not in use, with dockerd's messages.
fn checked_new_name(server: &DockerServer, requested: &str) -> Result<String, ApiError> {
    let name = requested.strip_prefix('/').unwrap_or(requested).to_string();
    if !convert::valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "Invalid container name ({}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
            crate::image::bounded(&name, crate::image::MAX_ECHO)
        )));
    }
    if let Some(owner) = name_taken(server, &name) {
        return Err(ApiError::conflict(format!(
            "Conflict. The container name \"/{name}\" is already in use by container \"{owner}\". \
             You have to remove (or rename) that container to be able to reuse that name."
        )));
    }
    Ok(name)
}

/// POST `/containers/create?name=`: 201 `{"Id", "Warnings"}`.
pub(super) async fn create(
    State(server): State<Arc<DockerServer>>,
    Query(query): Query<CreateQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let raw: Value = parse_json(&body)?;
    // libcontainer looks for the command at create, where runc does at start.
    let id = create_container(&server, query.name, raw)
        .await
        .map_err(with_dockerd_exec_words)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "Id": id, "Warnings": [] })),
    )
        .into_response())
}

/// Creates a container from a create request's JSON body (`raw`), named `name` or a
/// generated name: the create endpoint's work, which a build's RUN steps share.
pub(super) async fn create_container(
    server: &DockerServer,
    name: Option<String>,
    mut raw: Value,
) -> Result<String, ApiError> {
    let mut request: CreateRequest = decode_json(raw.clone(), "container config")?;
    let generated = name.as_deref().is_none_or(str::is_empty);
    let mut name = match name.filter(|n| !n.is_empty()) {
        Some(name) => checked_new_name(server, &name)?,
        None => random_name(|n| name_taken(server, n).is_some()),
    };
    // Checked before anything is made: the CLI pulls on a 404 and creates again.
    let image = server
        .images
        .get(NAMESPACE, &request.image)
        .ok_or_else(|| ApiError::no_such_image(&request.image))?;
    let image_config = server.images.config_json(&image).ok();
    // The image's HEALTHCHECK, under what the request sets (dockerd's merge, which
    // inspect's Config shows).
    let image_health = image_config
        .as_deref()
        .and_then(|json| serde_json::from_slice::<Value>(json).ok())
        .and_then(|mut config| {
            serde_json::from_value::<convert::HealthConfig>(config["config"]["Healthcheck"].take())
                .ok()
        });
    request.healthcheck = convert::merge_healthcheck(request.healthcheck.take(), image_health);
    // What the request leaves unset comes from the image (dockerd's merge, which
    // inspect's Config shows: Env, Cmd, Entrypoint, Labels, ExposedPorts, ...).
    let image_settings = image_config
        .as_deref()
        .and_then(|json| serde_json::from_slice::<Value>(json).ok())
        .and_then(|mut config| match config["config"].take() {
            Value::Object(settings) => Some(settings),
            _ => None,
        });
    if let (Some(image_settings), Some(object)) = (image_settings, raw.as_object_mut()) {
        super::commit::merge(object, &image_settings);
        request.exposed_ports = object.get("ExposedPorts").cloned();
    }
    if let (Some(merged), Some(object)) = (&request.healthcheck, raw.as_object_mut()) {
        if let Ok(value) = serde_json::to_value(merged) {
            object.insert("Healthcheck".into(), value);
        }
    }
    let id = crate::runtime::new_id().map_err(ApiError::from)?;
    let dir = container_dir(server, &id);
    let seccomp_file = dir.join("seccomp.json");
    let (mut pod_spec, mut container_spec, profile) =
        convert::specs(&request, &id, &name, &dir, &seccomp_file)?;
    // The image by ID: a tag moved meanwhile does not change what runs.
    container_spec.image = image.id.clone();
    container_spec.cdi_devices = cdi_devices(server, &request, &container_spec).await?;
    // Links and extra hosts, checked before anything is made; a legacy link (default
    // bridge) sets its variables now, under the container's own.
    {
        let host = request.host_config.clone().unwrap_or_default();
        let mode = host.network_mode.as_str();
        let on_default_bridge = matches!(mode, "" | "default" | "bridge");
        let linked = super::links::check(
            server,
            host.links.as_deref().unwrap_or_default(),
            host.extra_hosts.as_deref().unwrap_or_default(),
            on_default_bridge,
        )?;
        let mut link_env: Vec<(String, String)> = Vec::new();
        for (link, child) in &linked {
            let Some(child) = child else { continue };
            let ip = server.runtime.pod_ip(&child.pod_id).unwrap_or_default();
            for entry in super::links::link_env(&name, link, child, &ip) {
                if let Some((key, value)) = entry.split_once('=') {
                    let set = container_spec.env.iter().any(|(k, _)| k == key)
                        || link_env.iter().any(|(k, _)| k == key);
                    if !set {
                        link_env.push((key.to_string(), value.to_string()));
                    }
                }
            }
        }
        if !link_env.is_empty() {
            link_env.append(&mut container_spec.env);
            container_spec.env = link_env;
        }
    }
    // User-defined networks by ID: dockerd's 404 before anything is made.
    for wanted in &mut pod_spec.networks {
        let network = server
            .runtime
            .networks()
            .get(NAMESPACE, &wanted.network)
            .map_err(|err| ApiError::from_error(&err))?;
        wanted.network = network.record.id;
    }
    let defaults = image_config
        .as_deref()
        .and_then(|json| crate::runtime::spec::ImageDefaults::from_config_json(json).ok())
        .unwrap_or_default();
    // Mounts lent by other containers, and anonymous volumes for `-v /ctr` and the
    // image's VOLUMEs (dockerd's order: explicit mounts win).
    let host = request.host_config.clone().unwrap_or_default();
    let mut lent = Vec::new();
    for entry in host.volumes_from.as_deref().unwrap_or_default() {
        let (source, readonly) = mounts::parse_volumes_from(entry)?;
        let from = find(server, source)?;
        lent.extend(mounts::lent_mounts(&from.spec.mounts, readonly));
    }
    let mut anonymous = mounts::config_volumes(request.volumes.as_ref())?;
    anonymous.extend(defaults.volumes.iter().cloned());
    container_spec.mounts = mounts::merge(
        lent,
        std::mem::take(&mut container_spec.mounts),
        &anonymous,
        &host.volume_driver,
    );
    // What it will run, for list and inspect (the spec builder's own rule).
    let args = crate::runtime::spec::process_args(&container_spec, &defaults).unwrap_or_default();
    let log_path = if container_spec.log_path.is_empty() {
        String::new()
    } else {
        dir.join(&container_spec.log_path).display().to_string()
    };
    let mut extension = Extension {
        create: raw,
        name: name.clone(),
        log_path,
        args,
    };
    let prepare = {
        let dir = dir.clone();
        move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            if let Some(profile) = profile {
                std::fs::write(dir.join("seccomp.json"), profile)?;
            }
            Ok(())
        }
    };
    tokio::task::spawn_blocking(prepare)
        .await
        .map_err(|err| ApiError::internal(format!("preparing {}: {err}", dir.display())))?
        .map_err(|err| ApiError::internal(format!("preparing {}: {err}", dir.display())))?;
    // A generated name is only checked against the containers that exist: a create
    // running at the same time may have drawn it too, and the pod's name (reserved
    // atomically by run_pod) is taken. dockerd reserves its draws and draws again; so
    // does this, a few times, then fails as before.
    let mut draws = 1;
    let pod_id = loop {
        match server
            .runtime
            .run_pod(NAMESPACE, pod_spec.clone(), Vec::new(), "", None)
            .await
        {
            Err(crate::runtime::RuntimeError::AlreadyExists(_)) if generated && draws < 10 => {
                draws += 1;
                name = random_name(|n| name_taken(server, n).is_some());
                pod_spec.name = name.clone();
                for wanted in &mut pod_spec.networks {
                    if let Some(first) = wanted.dns_names.first_mut() {
                        *first = name.clone();
                    }
                }
                container_spec.name = name.clone();
                extension.name = name.clone();
            }
            result => break result,
        }
    };
    let made = async {
        let pod_id = pod_id?;
        crate::crash_point::reached("docker.create.after_pod");
        let created = match serde_json::to_vec(&extension) {
            Ok(extension_bytes) => {
                server
                    .runtime
                    .create_container(NAMESPACE, &pod_id, container_spec, extension_bytes)
                    .await
            }
            Err(err) => Err(crate::runtime::RuntimeError::Internal(format!(
                "encoding the container's record: {err}"
            ))),
        };
        match created {
            Ok(id) => Ok(id),
            Err(err) => {
                if let Err(cleanup) = server.runtime.remove_pod(NAMESPACE, &pod_id).await {
                    tracing::warn!(pod = %pod_id, "removing the pod of a failed create: {cleanup}");
                }
                Err(err)
            }
        }
    }
    .await;
    match made {
        Ok(id) => {
            tracing::info!(container = %id, name = %name, "docker container created");
            Ok(id)
        }
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(err.into())
        }
    }
}

/// At start-up, before the socket serves: a create or a removal cut by a crash
/// (kill -9) can leave a pod without its container (each Docker container has a pod of
/// its own, made first and removed last) and a container directory without a
/// container. Both are gone after this, as if the create had failed or the removal had
/// finished. What exists is read now, so no create started later is touched; the pods
/// are removed on a task of their own.
pub(super) fn reconcile_cut_creates(server: &Arc<DockerServer>) {
    let mut with_container = std::collections::HashSet::new();
    let mut containers = std::collections::HashSet::new();
    server.runtime.for_each_container(NAMESPACE, |c| {
        with_container.insert(c.pod_id.clone());
        containers.insert(c.id.clone());
    });
    let mut orphans = Vec::new();
    server.runtime.for_each_pod(NAMESPACE, |p| {
        if !with_container.contains(&p.id) {
            orphans.push(p.id.clone());
        }
    });
    let dirs = server.config.root.join("docker").join("containers");
    if let Ok(entries) = std::fs::read_dir(&dirs) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !containers.contains(&name) {
                tracing::warn!(container = %name, "removing the directory of a container that was never made or is gone");
                if let Err(err) = std::fs::remove_dir_all(entry.path()) {
                    tracing::error!(container = %name, "removing {}: {err}", entry.path().display());
                }
            }
        }
    }
    if orphans.is_empty() {
        return;
    }
    let server = server.clone();
    tokio::spawn(async move {
        for pod in orphans {
            tracing::warn!(pod = %pod, "removing the pod of a Docker container whose create or removal was cut");
            if let Err(err) = server.runtime.remove_pod(NAMESPACE, &pod).await {
                tracing::error!(pod = %pod, "removing a pod without its container: {err}");
            }
        }
    });
}

pub(super) fn truthy(value: Option<&str>) -> bool {
    matches!(value, Some("1" | "true" | "True" | "yes"))
}

/// `filters={"name":["x"],"label":["a=b"]}` (also the old `{"name":{"x":true}}` shape).
pub(super) fn parse_filters(text: Option<&str>) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(HashMap::new());
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|err| ApiError::bad_request(format!("invalid filter: {err}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request("invalid filter: not a JSON object"));
    };
    let mut filters = HashMap::new();
    for (key, values) in map {
        let list = match values {
            Value::Array(items) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Value::Object(items) => items.into_iter().map(|(k, _)| k).collect(),
            _ => return Err(ApiError::bad_request(format!("invalid filter '{key}'"))),
        };
        filters.insert(key, list);
    }
    Ok(filters)
}

/// A container's labels match `key` or `key=value`.
pub(super) fn label_matches(labels: &HashMap<String, String>, wanted: &str) -> bool {
    match wanted.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|v| v == value),
        None => labels.contains_key(wanted),
    }
}

/// The command dockerd shows: the process's args, joined.
pub(super) fn command_of(ext: &Extension) -> String {
    ext.args.join(" ")
}

pub(super) fn network_mode(ext: &Extension) -> String {
    ext.create
        .pointer("/HostConfig/NetworkMode")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or("default")
        .to_string()
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct InspectQuery {
    size: Option<String>,
}

/// GET `/containers/{id}/json`: dockerd's shape; the create body's Config and
/// The CDI devices of a create: those named, plus `--gpus N`'s first N GPUs in the
/// specs. Unknown or conflicting devices are a 400 before anything is made.
async fn cdi_devices(
    server: &DockerServer,
    request: &convert::CreateRequest,
    container: &crate::runtime::model::ContainerSpec,
) -> Result<Vec<String>, ApiError> {
    let host = request.host_config.clone().unwrap_or_default();
    let (_, gpu_count) =
        convert::device_requests(host.device_requests.as_deref().unwrap_or_default())?;
    let mut names = container.cdi_devices.clone();
    if gpu_count.is_none() && names.is_empty() {
        return Ok(names);
    }
    let cdi = server.runtime.cdi().clone();
    tokio::task::spawn_blocking(move || {
        let scan = cdi.scan();
        if let Some(count) = gpu_count {
            for name in scan.first_devices(convert::GPU_KIND, count)? {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        scan.resolve(&names)?;
        Ok::<_, crate::device::CdiError>(names)
    })
    .await
    .map_err(|err| ApiError::internal(format!("resolving CDI devices: {err}")))?
    .map_err(|err| ApiError::from_error(&err))
}

/// HostConfig fields read back as they were sent.
pub(super) async fn inspect(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<InspectQuery>,
) -> Result<Json<Value>, ApiError> {
    let c = find(&server, &query)?;
    let ext = extension(&c);
    let pod = server.runtime.pod(&c.pod_id);
    let args = ext.args.clone();
    let pid = match (c.state, c.monitor) {
        (ContainerState::Running, Some(m)) => m.pid,
        _ => 0,
    };
    let mut config = ext.create.clone();
    if let Some(object) = config.as_object_mut() {
        object.remove("HostConfig");
        object.remove("NetworkingConfig");
        object
            .entry("Hostname")
            .or_insert_with(|| Value::String(c.id[..12].to_string()));
        if object.get("Hostname").and_then(Value::as_str) == Some("") {
            object.insert("Hostname".into(), Value::String(c.id[..12].to_string()));
        }
        object.entry("Labels").or_insert_with(|| json!({}));
    }
    let mut host_config = ext
        .create
        .get("HostConfig")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(object) = host_config.as_object_mut() {
        object
            .entry("NetworkMode")
            .or_insert_with(|| Value::String("default".into()));
        object
            .entry("LogConfig")
            .or_insert_with(|| json!({"Type": "json-file", "Config": {}}));
        object.insert("Links".into(), super::links::inspect_links(&c, &ext.create));
        // What `update` may have changed since the create reads back as it is now.
        let (policy, retries) = match c.spec.restart {
            RestartPolicy::No => ("no", 0),
            RestartPolicy::Always => ("always", 0),
            RestartPolicy::UnlessStopped => ("unless-stopped", 0),
            RestartPolicy::OnFailure { max_retries } => ("on-failure", max_retries),
        };
        object.insert(
            "RestartPolicy".into(),
            json!({"Name": policy, "MaximumRetryCount": retries}),
        );
        if let Some(r) = &c.spec.resources {
            object.insert("Memory".into(), json!(r.memory_limit_in_bytes));
            object.insert("CpuShares".into(), json!(r.cpu_shares));
            object.insert("CpuQuota".into(), json!(r.cpu_quota));
            object.insert("CpuPeriod".into(), json!(r.cpu_period));
            object.insert("CpusetCpus".into(), json!(r.cpuset_cpus));
            object.insert("CpusetMems".into(), json!(r.cpuset_mems));
            object.insert(
                "PidsLimit".into(),
                if r.pids_limit > 0 {
                    json!(r.pids_limit)
                } else {
                    Value::Null
                },
            );
        }
    }
    let ip = pod
        .as_ref()
        .and_then(|p| p.network.as_ref())
        .and_then(|n| n.ips.first().cloned())
        .unwrap_or_default();
    let mac = super::list::mac_of(&server, &c);
    let pod_file = |name: &str| {
        pod.as_ref()
            .map(|p| p.dir.join(name).display().to_string())
            .unwrap_or_default()
    };
    let networks = super::list::with_user_networks(
        super::list::networks_json(&ext, &ip, &mac),
        &server,
        &c.pod_id,
    );
    let mut inspected = json!({
        "Id": c.id,
        "Created": rfc3339(c.created_at),
        "Path": args.first().cloned().unwrap_or_default(),
        "Args": args.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": state_name(&c),
            "Running": c.state == ContainerState::Running,
            "Paused": c.paused,
            "Restarting": false,
            "OOMKilled": c.reason == "OOMKilled",
            "Dead": c.state == ContainerState::Unknown,
            "Pid": pid,
            "ExitCode": c.exit_code,
            "Error": if c.state == ContainerState::Unknown { c.message.clone() } else { String::new() },
            "StartedAt": rfc3339(c.started_at),
            "FinishedAt": rfc3339(c.finished_at),
            "Health": health_json(&server, &c),
        },
        "Image": c.image_id,
        "ResolvConfPath": pod_file("resolv.conf"),
        "HostnamePath": pod_file("hostname"),
        "HostsPath": pod_file("hosts"),
        "LogPath": ext.log_path,
        "Name": format!("/{}", c.spec.name),
        "RestartCount": c.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": host_config,
        "GraphDriver": { "Name": "overlay2", "Data": null },
        "Mounts": c.spec.mounts.iter().filter_map(mounts::mount_point_json).collect::<Vec<_>>(),
        "Config": config,
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": c.pod_id,
            "HairpinMode": false,
            "Ports": super::ports::network_settings_ports(&c, &ext.create),
            "SandboxKey": pod.as_ref().and_then(|p| p.namespaces.network.clone()),
            "Gateway": "",
            "IPAddress": ip,
            "IPPrefixLen": 0,
            "MacAddress": mac,
            "Networks": networks,
        },
    });
    if truthy(params.size.as_deref()) {
        let (rw, root) = super::list::sizes(&server, &c).await;
        inspected["SizeRw"] = json!(rw);
        inspected["SizeRootFs"] = json!(root);
    }
    Ok(Json(inspected))
}

/// POST `/containers/{id}/start`: 204; 304 when it already runs.
pub(super) async fn start(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
) -> Result<StatusCode, ApiError> {
    let c = find(&server, &query)?;
    if c.state == ContainerState::Running {
        return Ok(StatusCode::NOT_MODIFIED);
    }
    let started = async {
        super::links::prepare_start(&server, &c).await?;
        match c.state {
            ContainerState::Running => {}
            ContainerState::Created | ContainerState::Creating => {
                server.runtime.start_container(NAMESPACE, &c.id).await?
            }
            // A stopped container starts again from its bundle and writable layer.
            ContainerState::Exited | ContainerState::Unknown => {
                server
                    .runtime
                    .restart_container(NAMESPACE, &c.id, false)
                    .await?
            }
        }
        Ok::<(), ApiError>(())
    }
    .await;
    if let Err(err) = started {
        // dockerd removes an auto-remove container whose start failed (with its
        // anonymous volumes); `docker run --rm` waits for that removal.
        if c.spec.auto_remove {
            if let Err(cleanup) = remove_container(&server, &c, true).await {
                tracing::warn!(container = %c.id, "removing an auto-remove container whose start failed: {cleanup}");
            }
        }
        return Err(with_dockerd_exec_words(err));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// dockerd's words for a command the runtime could not execute, which the docker CLI
/// reads for `docker run`'s exit code when a create or start fails: 127 for
/// "executable file not found" or "no such file or directory", 126 for "permission
/// denied", else 125. libcontainer says "executable 'X' not found in $PATH" and
/// "executable 'X' at path ... does not have correct permissions"; other errors are
/// left as they are.
fn with_dockerd_exec_words(mut err: ApiError) -> ApiError {
    const MARK: &str = "executable '";
    let Some(start) = err.message.find(MARK) else {
        return err;
    };
    let rest = &err.message[start + MARK.len()..];
    let Some((command, after)) = rest.split_once('\'') else {
        return err;
    };
    let cause = if after.starts_with(" not found") {
        if command.contains('/') {
            format!("stat {command}: no such file or directory")
        } else {
            "executable file not found in $PATH".to_string()
        }
    } else if after.contains("does not have correct permissions") {
        "permission denied".to_string()
    } else {
        return err;
    };
    err.message = format!(
        "failed to create task for container: OCI runtime create failed: unable to start \
         container process: exec: \"{command}\": {cause}: unknown"
    );
    err
}

/// POST `/containers/{id}/restart?t=`: stop (as `stop`), then start again; 204.
pub(super) async fn restart(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<StopQuery>,
) -> Result<StatusCode, ApiError> {
    let c = find(&server, &query)?;
    if c.state == ContainerState::Running {
        let timeout = stop_timeout(&c, params.t);
        server
            .runtime
            .stop_container(NAMESPACE, &c.id, timeout)
            .await?;
    }
    super::links::prepare_start(&server, &c).await?;
    match server.runtime.container(&c.id).map(|c| c.state) {
        Some(ContainerState::Created) => server.runtime.start_container(NAMESPACE, &c.id).await?,
        Some(_) => {
            server
                .runtime
                .restart_container(NAMESPACE, &c.id, false)
                .await?
        }
        None => return Err(ApiError::no_such_container(&query)),
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The seconds a stop waits before SIGKILL: the request's `t`, else the container's
/// StopTimeout, else dockerd's 10. 0 kills at once (`-t 0`); -1 waits for ever.
fn stop_timeout(c: &ContainerRecord, t: Option<i64>) -> i64 {
    let timeout = t
        .or_else(|| {
            extension(c)
                .create
                .get("StopTimeout")
                .and_then(Value::as_i64)
        })
        .unwrap_or(DEFAULT_STOP_TIMEOUT);
    if timeout < 0 {
        i64::from(u32::MAX)
    } else {
        timeout
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct StopQuery {
    t: Option<i64>,
    signal: Option<String>,
}

/// POST `/containers/{id}/stop?t=`: 204; 304 when it is not running.
pub(super) async fn stop(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<StopQuery>,
) -> Result<StatusCode, ApiError> {
    let c = find(&server, &query)?;
    if c.state != ContainerState::Running {
        return Ok(StatusCode::NOT_MODIFIED);
    }
    if params.signal.is_some() {
        return Err(ApiError::bad_request(
            "the stop signal parameter needs API 1.42; wharf serves 1.41",
        ));
    }
    let timeout = params
        .t
        .or_else(|| {
            extension(&c)
                .create
                .get("StopTimeout")
                .and_then(Value::as_i64)
        })
        .unwrap_or(DEFAULT_STOP_TIMEOUT);
    // -1: wait for ever (dockerd); the core's stop waits as long as it is told.
    let timeout = if timeout < 0 {
        i64::from(u32::MAX)
    } else {
        timeout
    };
    // 0 means SIGKILL at once in the core, as in dockerd's `-t 0`.
    server
        .runtime
        .stop_container(NAMESPACE, &c.id, timeout)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct KillQuery {
    signal: Option<String>,
}

/// POST `/containers/{id}/kill?signal=`: 204; 409 when it is not running.
pub(super) async fn kill(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<KillQuery>,
) -> Result<StatusCode, ApiError> {
    let c = find(&server, &query)?;
    let signal = params.signal.unwrap_or_else(|| "KILL".to_string());
    let number = parse_signal(&signal).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid signal: {}",
            crate::image::bounded(&signal, crate::image::MAX_ECHO)
        ))
    })?;
    if c.state != ContainerState::Running {
        return Err(ApiError::conflict(format!(
            "Cannot kill container: {}: Container {} is not running",
            query, c.id
        )));
    }
    server.runtime.signal_container(NAMESPACE, &c.id, number)?;
    if c.paused && number == nix::libc::SIGKILL {
        // A frozen process dies only once thawed (dockerd unpauses after SIGKILL too).
        server.runtime.unpause_container(NAMESPACE, &c.id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// POST `/containers/{id}/pause`: 204.
pub(super) async fn pause(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
) -> Result<StatusCode, ApiError> {
    let c = find(&server, &query)?;
    server.runtime.pause_container(NAMESPACE, &c.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST `/containers/{id}/unpause`: 204.
pub(super) async fn unpause(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
) -> Result<StatusCode, ApiError> {
    let c = find(&server, &query)?;
    server.runtime.unpause_container(NAMESPACE, &c.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A signal by name (`KILL`, `SIGKILL`) or number.
fn parse_signal(text: &str) -> Option<i32> {
    if let Ok(number) = text.parse::<i32>() {
        return (1..=64).contains(&number).then_some(number);
    }
    let upper = text.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct WaitQuery {
    condition: Option<String>,
}

/// POST `/containers/{id}/wait?condition=`: the headers at once, the body
/// (`{"StatusCode", "Error"}`) when the condition is met: `not-running` (default),
/// `next-exit` (an exit after this call), `removed`.
pub(super) async fn wait(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let condition = params.condition.unwrap_or_else(|| "not-running".into());
    if !matches!(
        condition.as_str(),
        "not-running" | "next-exit" | "removed" | ""
    ) {
        return Err(ApiError::bad_request(format!(
            "invalid condition: \"{}\"",
            crate::image::bounded(&condition, crate::image::MAX_ECHO)
        )));
    }
    let c = find(&server, &query)?;
    let id = c.id.clone();
    let finished_before = c.finished_at;
    let mut events = server.runtime.container_events();
    let runtime = server.runtime.clone();
    let body = async move {
        let mut last_exit = c.exit_code;
        loop {
            let now = runtime.container(&id);
            if let Some(c) = &now {
                last_exit = c.exit_code;
            }
            let done = match (condition.as_str(), &now) {
                ("removed", None) => true,
                ("removed", Some(_)) => false,
                (_, None) => true,
                ("next-exit", Some(c)) => {
                    matches!(c.state, ContainerState::Exited | ContainerState::Unknown)
                        && c.finished_at != finished_before
                }
                (_, Some(c)) => c.state != ContainerState::Running,
            };
            if done {
                let body = json!({ "StatusCode": last_exit, "Error": null });
                return Ok::<_, std::convert::Infallible>(Bytes::from(format!("{body}\n")));
            }
            if events.changed().await.is_err() {
                let body = json!({ "StatusCode": last_exit, "Error": { "Message": "wharfd is stopping" } });
                return Ok(Bytes::from(format!("{body}\n")));
            }
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_util::stream::once(body)))
        .map_err(|err| ApiError::internal(err.to_string()))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct RemoveQuery {
    force: Option<String>,
    v: Option<String>,
}

/// DELETE `/containers/{id}?force=&v=`: 204; 409 for a running container without
/// force; `v` removes its anonymous volumes too.
pub(super) async fn remove(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    let c = find(&server, &query)?;
    if c.state == ContainerState::Running && !truthy(params.force.as_deref()) {
        return Err(ApiError::conflict(format!(
            "You cannot remove a running container {}. Stop the container before attempting \
             removal or force remove",
            c.id
        )));
    }
    remove_container(&server, &c, truthy(params.v.as_deref())).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a container (stopping it first), with its anonymous volumes when
/// `volumes` (`rm -v`; named ones are kept).
pub(super) async fn remove_container(
    server: &DockerServer,
    c: &ContainerRecord,
    volumes: bool,
) -> Result<(), ApiError> {
    server.runtime.remove_pod(NAMESPACE, &c.pod_id).await?;
    if volumes {
        server.runtime.remove_anonymous_volumes(c).await;
    }
    // (Its files go with the destroy event: events.rs.)
    let dir = container_dir(server, &c.id);
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    tracing::info!(container = %c.id, "docker container removed");
    Ok(())
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct RenameQuery {
    name: Option<String>,
}

/// POST `/containers/{id}/rename?name=`: 204; 409 when the name is taken.
pub(super) async fn rename(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<RenameQuery>,
) -> Result<StatusCode, ApiError> {
    let c = find(&server, &query)?;
    let requested = params.name.unwrap_or_default();
    if requested.strip_prefix('/').unwrap_or(&requested) == c.spec.name {
        return Err(ApiError::conflict(format!(
            "Renaming a container with the same name as its current name: {}",
            c.spec.name
        )));
    }
    let name = checked_new_name(&server, &requested)?;
    server
        .runtime
        .rename_container(NAMESPACE, &c.id, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct TopQuery {
    ps_args: Option<String>,
}

/// GET `/containers/{id}/top?ps_args=`: as dockerd, the host's `ps` (default `-ef`),
/// keeping the rows of the container's processes.
pub(super) async fn top(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    Query(params): Query<TopQuery>,
) -> Result<Json<Value>, ApiError> {
    let c = find(&server, &query)?;
    if c.state != ContainerState::Running {
        return Err(ApiError::conflict(format!(
            "Container {} is not running",
            c.id
        )));
    }
    let pids = server.runtime.container_pids(NAMESPACE, &c.id)?;
    let args = params
        .ps_args
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "-ef".to_string());
    let output = tokio::process::Command::new("ps")
        .args(args.split_whitespace())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|err| {
            ApiError::internal(format!(
                "running ps for the container's processes (install procps): {err}"
            ))
        })?;
    if !output.status.success() {
        return Err(ApiError::internal(format!(
            "ps {}: {}",
            crate::image::bounded(&args, crate::image::MAX_ECHO),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let titles: Vec<&str> = header.split_whitespace().collect();
    let pid_column = titles.iter().position(|t| *t == "PID").ok_or_else(|| {
        ApiError::internal(format!(
            "Couldn't find PID field in ps output of {}",
            crate::image::bounded(&args, crate::image::MAX_ECHO)
        ))
    })?;
    let mut processes = Vec::new();
    for line in lines {
        // The last column (the command) may contain spaces.
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < titles.len() {
            continue;
        }
        let Ok(pid) = fields[pid_column].parse::<i32>() else {
            continue;
        };
        if !pids.contains(&pid) {
            continue;
        }
        let mut row: Vec<String> = fields[..titles.len() - 1]
            .iter()
            .map(|f| f.to_string())
            .collect();
        row.push(fields[titles.len() - 1..].join(" "));
        processes.push(row);
    }
    Ok(Json(json!({ "Titles": titles, "Processes": processes })))
}

/// POST `/containers/{id}/update`: resources (fields left at 0 keep their value) and
/// the restart policy; `{"Warnings": []}`.
pub(super) async fn update(
    State(server): State<Arc<DockerServer>>,
    Path(query): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let c = find(&server, &query)?;
    let update: convert::HostConfig = parse_json(&body)?;
    let mut resources = c.spec.resources.clone().unwrap_or_default();
    let changed = convert::merge_resources(&mut resources, &update)?;
    if changed {
        if !matches!(c.state, ContainerState::Running | ContainerState::Created) {
            return Err(ApiError::conflict(format!(
                "Cannot update container {}: the container is not running",
                c.id
            )));
        }
        server
            .runtime
            .update_resources(NAMESPACE, &c.id, Some(resources))
            .await?;
    }
    if update.restart_policy.is_some() {
        let policy = convert::restart_policy(update.restart_policy.as_ref())?;
        server
            .runtime
            .set_restart_policy(NAMESPACE, &c.id, policy)
            .await?;
    }
    Ok(Json(json!({ "Warnings": [] })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_exec_failures_get_dockerd_words() {
        let words = |message: &str| {
            with_dockerd_exec_words(ApiError::bad_request(format!(
                "container create failed: failed to create container c1: {message}"
            )))
            .message
        };
        assert!(
            words("error in executing process : executable 'nosuch' not found in $PATH")
                .ends_with("exec: \"nosuch\": executable file not found in $PATH: unknown")
        );
        assert!(words("executable '/no/such' not found in $PATH")
            .ends_with("exec: \"/no/such\": stat /no/such: no such file or directory: unknown"));
        assert!(
            words("executable '/etc' at path '\"/etc\"' does not have correct permissions")
                .ends_with("exec: \"/etc\": permission denied: unknown")
        );
        let other = words("cgroup: no space left on device");
        assert!(
            other.ends_with("cgroup: no space left on device"),
            "{other}"
        );
    }

    #[test]
    fn durations_read_as_dockers() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(61), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3700), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 24 * 3600), "3 days");
    }

    #[test]
    fn filters_and_signals() {
        let f = parse_filters(Some(r#"{"name":["web"],"label":{"a=b":true}}"#)).unwrap();
        assert_eq!(f["name"], vec!["web"]);
        assert_eq!(f["label"], vec!["a=b"]);
        assert!(parse_filters(Some("[1]")).is_err());
        let labels = HashMap::from([("a".to_string(), "b".to_string())]);
        assert!(label_matches(&labels, "a"));
        assert!(label_matches(&labels, "a=b"));
        assert!(!label_matches(&labels, "a=c"));
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
    }
}
