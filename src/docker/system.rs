//! `/_ping`, `/version`, `/info`: what the daemon is and has, in dockerd's shapes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{DockerServer, API_VERSION, MIN_API_VERSION, NAMESPACE};
use crate::image::registry::Credentials;
use crate::runtime::{CgroupLayout, ContainerState, HostInfo};

/// GET and HEAD `/_ping`: "OK", with the headers the CLI negotiates from.
pub(super) async fn ping() -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    headers.insert("builder-version", HeaderValue::from_static("1"));
    headers.insert("docker-experimental", HeaderValue::from_static("false"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    (headers, "OK")
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn os_release_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".to_string())
}

/// GET `/version`.
pub(super) async fn version() -> Json<Value> {
    let version = env!("CARGO_PKG_VERSION");
    let details = json!({
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": crate::GIT_COMMIT,
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch(),
        "KernelVersion": HostInfo::probe().kernel,
        "BuildTime": "",
    });
    // dockerd repeats the engine's details at the top level.
    let mut answer = details.clone();
    answer["Platform"] = json!({ "Name": "wharf" });
    answer["Version"] = json!(version);
    let mut engine_details = details;
    engine_details["Experimental"] = json!("false");
    answer["Components"] = json!([{
        "Name": "Engine",
        "Version": version,
        "Details": engine_details,
    }]);
    Json(answer)
}

/// MemTotal of /proc/meminfo, in bytes.
fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// GET `/info`: real figures of this daemon and host.
pub(super) async fn info(State(server): State<Arc<DockerServer>>) -> Json<Value> {
    let (mut running, mut stopped, mut total) = (0, 0, 0);
    server.runtime.for_each_container(NAMESPACE, |c| {
        if c.state == ContainerState::Creating {
            return;
        }
        total += 1;
        if c.state == ContainerState::Running {
            running += 1;
        } else {
            stopped += 1;
        }
    });
    let images = server.images.list(NAMESPACE).len();
    let host = HostInfo::probe();
    let cgroup_version = match host.cgroup {
        CgroupLayout::Unified => "2",
        _ => "1",
    };
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let forwarding =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1");
    Json(json!({
        "ID": hostname,
        "Containers": total,
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": stopped,
        "Images": images,
        "Driver": "overlay2",
        "DriverStatus": [["Backing Filesystem", "overlayfs"]],
        "Plugins": {
            "Volume": [],
            "Network": ["bridge", "host"],
            "Authorization": null,
            "Log": ["json-file", "local"],
        },
        "MemoryLimit": true,
        "SwapLimit": true,
        "KernelMemory": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": true,
        "CPUSet": true,
        "PidsLimit": true,
        "IPv4Forwarding": forwarding,
        "BridgeNfIptables": false,
        "BridgeNfIp6tables": false,
        "Debug": false,
        "NFd": std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
        "OomKillDisable": false,
        "NGoroutines": 0,
        "SystemTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgroup_version,
        "NEventsListener": 0,
        "KernelVersion": host.kernel,
        "OperatingSystem": os_release_name(),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],
            "IndexConfigs": {},
            "Mirrors": [],
        },
        "NCPU": cpus,
        "MemTotal": mem_total(),
        "DockerRootDir": server.config.root,
        "Name": hostname,
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        // The built-in runtime (youki's libcontainer in wharf-monitor).
        "Runtimes": { "builtin": { "path": "wharf-monitor" } },
        "DefaultRuntime": "builtin",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": false,
            "Error": "",
            "RemoteManagers": null,
        },
        "LiveRestoreEnabled": true,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": ["name=seccomp,profile=default"],
        // dockerd 25+: where `--device vendor.com/class=name` and `--gpus` look.
        "CDISpecDirs": server.runtime.cdi().dirs(),
        "Warnings": [],
    }))
}

#[derive(Debug, serde::Deserialize, Default)]
#[serde(default)]
pub(super) struct AuthConfig {
    username: String,
    password: String,
    serveraddress: String,
    identitytoken: String,
    registrytoken: String,
}

/// `docker login`'s server address as a registry host: Docker Hub's
/// `https://index.docker.io/v1/` is `docker.io`; a scheme and path are dropped.
fn login_registry(address: &str) -> Result<String, ApiError> {
    let address = address.trim();
    let without_scheme = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    let host = without_scheme.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Ok("docker.io".into());
    }
    if matches!(
        host,
        "index.docker.io" | "registry-1.docker.io" | "docker.io"
    ) {
        return Ok("docker.io".into());
    }
    if host.contains(char::is_whitespace) || host.contains(['@', '?', '#']) {
        return Err(ApiError::bad_request(format!(
            "invalid registry address {:?}",
            crate::image::bounded(address, crate::image::MAX_ECHO)
        )));
    }
    Ok(host.to_string())
}

/// POST `/auth` (`docker login`): checks the credentials against the registry, as
/// dockerd does; the CLI stores them, wharfd does not. A refusal is a 401 naming the
/// registry (never the credentials).
pub(super) async fn auth(
    State(server): State<Arc<DockerServer>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let config: AuthConfig = serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad_request(format!("invalid JSON in the login request: {err}"))
    })?;
    let registry = login_registry(&config.serveraddress)?;
    let credentials = if !config.registrytoken.is_empty() {
        Credentials::RegistryToken(config.registrytoken)
    } else if !config.identitytoken.is_empty() {
        Credentials::IdentityToken(config.identitytoken)
    } else if !config.username.is_empty() {
        Credentials::Basic {
            username: config.username,
            password: config.password,
        }
    } else {
        return Err(ApiError::bad_request(
            "a login needs a username and password (or an identity token)",
        ));
    };
    server.images.login(&registry, &credentials).await?;
    tracing::info!(%registry, "registry login checked");
    Ok(Json(
        json!({"Status": "Login Succeeded", "IdentityToken": ""}),
    ))
}
