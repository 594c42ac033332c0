//! The Docker Engine API front end: the REST API dockerd serves (version 1.41, as
//! dockerd 20.10; 1.24 at least), over a UNIX socket, for the `docker` CLI, docker-py,
//! bollard and the `wharf` CLI. Handlers turn Docker JSON into the core's types
//! (`runtime::model`) and core records back into Docker JSON; the behaviour is the
//! core's. A Docker container is a single-container pod in the `docker` object
//! namespace, so CRI List calls never see it and `docker ps` never sees CRI pods.
//!
//! The code for an endpoint is found by its resource, one file each:
//! - `system.rs`: `/_ping`, `/version`, `/info`;
//! - `events.rs`: `/events`, and the front end's housekeeping on engine events;
//! - `containers.rs`: create, list, inspect, start (again), stop, restart, kill, wait,
//!   remove;
//! - `attach.rs`: `/containers/{id}/attach` (hijacked, through the monitor's control
//!   channel) and `/containers/{id}/resize`;
//! - `exec.rs`: `/containers/{id}/exec` and `/exec/{id}/{start,resize,json}` (the
//!   monitor's exec sessions, as CRI Exec);
//! - `archive.rs`: `/containers/{id}/archive` (`docker cp`, through a chrooted helper);
//! - `filesystem.rs`: `/containers/{id}/changes` (`docker diff`) and
//!   `/containers/{id}/export` (`docker export`), from the container's read-write layer
//!   and rootfs mount (`image::rwlayer`);
//! - `commit.rs`: `/commit` (`docker commit`: the read-write layer as a new image, the
//!   `changes` as Dockerfile instructions);
//! - `prune.rs`: `/system/df`, `/containers/prune`, `/images/prune`;
//! - `volumes.rs`: `/volumes` (create, list, inspect, remove, prune; the core's
//!   `crate::volume`), and `mounts.rs`: a create's Binds, Mounts, VolumesFrom and
//!   anonymous volumes, and the `Mounts` of inspect and list;
//! - `logs.rs`: `/containers/{id}/logs` (the container's log file, framed as Docker's
//!   stdcopy stream);
//! - `stats.rs`: `/containers/{id}/stats` (the core's cgroup samples, dockerd's JSON);
//! - `images.rs`: pull and import (`/images/create`), list, inspect, history, tag,
//!   remove, save (`/images/get`, `/images/{name}/get`: a docker-archive) and load
//!   (`/images/load`: a docker-archive or an OCI image layout), the archive formats
//!   being the core's (`crate::image::archive`);
//! - `convert.rs`: a create request to a pod spec and a container spec;
//! - `error.rs`: core error kinds to HTTP statuses and dockerd's `{"message"}` body.
//!
//! API versions: `/v1.24/...` to `/v1.41/...` and unprefixed paths are served alike
//! (`version.rs` rewrites the path before routing); a newer or older version gets
//! dockerd's 400 message. Every response has dockerd's `Api-Version` and `Ostype`
//! headers.

mod archive;
mod attach;
mod build;
mod commit;
mod containers;
mod convert;
mod error;
mod events;
mod exec;
mod filesystem;
mod images;
mod links;
mod list;
mod logs;
mod mounts;
mod networks;
mod ports;
mod prune;
mod stats;
mod system;
mod transfer;
mod version;
mod volumes;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::engine::Engine;

pub use error::ApiError;
pub use version::{API_VERSION, MIN_API_VERSION};

/// The object namespace of everything made through the Docker API.
pub const NAMESPACE: &str = crate::store::DOCKER_NAMESPACE;

/// What the Docker API handlers share: the engine.
#[derive(Debug)]
pub struct DockerServer {
    engine: Arc<Engine>,
    /// `docker exec` instances (in memory, as dockerd keeps them).
    execs: std::sync::Mutex<exec::Execs>,
    /// What the list shows of each container's stored create body (see
    /// `list::listed_extension`), by container ID: those fields never change after the
    /// create, so each body is read once, not at every `docker ps`.
    listed: std::sync::Mutex<std::collections::HashMap<String, Arc<convert::Extension>>>,
}

impl DockerServer {
    /// The front end on `engine`, with its housekeeping task (files of destroyed
    /// containers); call within a tokio runtime.
    pub fn new(engine: Arc<Engine>) -> Arc<DockerServer> {
        let server = Arc::new(DockerServer {
            engine,
            execs: Default::default(),
            listed: Default::default(),
        });
        events::start_housekeeping(server.clone());
        // What builds cut short by a crash left (mounts, contexts), before the socket
        // serves: a new build never meets them.
        let build_containers = build::clean_leftovers(&build::builds_dir(&server));
        containers::reconcile_cut_creates(&server);
        if !build_containers.is_empty() {
            let server = server.clone();
            tokio::spawn(async move {
                build::remove_build_containers(&server, build_containers).await;
            });
        }
        server
    }
}

impl std::ops::Deref for DockerServer {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

/// The API's routes (without the version prefix, which `service` strips).
fn routes(server: Arc<DockerServer>) -> Router {
    Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/auth", post(system::auth))
        .route("/images/search", get(images::search))
        .route("/events", get(events::events))
        .route("/system/df", get(prune::df))
        .route("/containers/prune", post(prune::prune_containers))
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route(
            "/volumes/{name}",
            get(volumes::inspect).delete(volumes::remove),
        )
        .route("/images/prune", post(prune::prune_images))
        .route("/containers/{id}/changes", get(filesystem::changes))
        .route("/containers/{id}/export", get(filesystem::export))
        .route("/commit", post(commit::commit))
        .route("/build", post(build::build))
        .route("/build/prune", post(build::prune))
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(list::list))
        .route("/containers/{id}/json", get(containers::inspect))
        .route("/containers/{id}/start", post(containers::start))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/restart", post(containers::restart))
        .route("/containers/{id}/rename", post(containers::rename))
        .route("/containers/{id}/update", post(containers::update))
        .route("/containers/{id}/top", get(containers::top))
        .route("/containers/{id}/attach", post(attach::attach))
        .route("/containers/{id}/resize", post(attach::resize))
        .route("/containers/{id}/exec", post(exec::create))
        .route("/exec/{id}/start", post(exec::start))
        .route("/exec/{id}/resize", post(exec::resize))
        .route("/exec/{id}/json", get(exec::inspect))
        .route("/containers/{id}/stats", get(stats::stats))
        .route(
            "/containers/{id}/archive",
            get(archive::get).head(archive::head).put(archive::put),
        )
        .route("/containers/{id}/kill", post(containers::kill))
        .route("/containers/{id}/pause", post(containers::pause))
        .route("/containers/{id}/unpause", post(containers::unpause))
        .route("/containers/{id}/wait", post(containers::wait))
        .route("/containers/{id}/logs", get(logs::logs))
        .route(
            "/containers/{id}",
            axum::routing::delete(containers::remove),
        )
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route("/networks/prune", post(networks::prune))
        .route(
            "/networks/{id}",
            get(networks::inspect).delete(networks::remove),
        )
        .route("/networks/{id}/connect", post(networks::connect))
        .route("/networks/{id}/disconnect", post(networks::disconnect))
        .route("/images/create", post(images::create))
        .route("/images/json", get(images::list))
        .route("/images/get", get(images::save))
        .route("/images/load", post(images::load))
        // Image names contain slashes: the rest of the path is parsed by the handler.
        .route(
            "/images/{*rest}",
            get(images::get_by_name)
                .post(images::post_by_name)
                .delete(images::remove),
        )
        .route(
            version::BAD_VERSION_ROUTE,
            axum::routing::any(version::refuse),
        )
        .fallback(error::no_such_endpoint)
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            count_call,
        ))
        .layer(axum::middleware::map_response(version::add_headers))
        .with_state(server)
}

/// The actions of `/containers/{name}/ACTION`, which dockerd routes as
/// `/containers/{name:.*}/ACTION`: a name there may hold slashes.
const CONTAINER_ACTIONS: &[&str] = &[
    "json", "start", "stop", "restart", "rename", "update", "top", "attach", "resize", "exec",
    "stats", "kill", "pause", "unpause", "wait", "logs", "changes", "export", "archive",
];

/// Escapes the slashes of a container name in the path, so that `{id}` (one segment)
/// matches it and `Path` hands the handler the name as sent: `docker inspect /web`
/// sends `/containers//web/json`, and dockerd looks up "/web" (its `{name:.*}` takes
/// any slashes). Other paths are left as they are.
fn escape_container_name(mut request: axum::extract::Request) -> axum::extract::Request {
    let path = request.uri().path();
    let Some(rest) = path.strip_prefix("/containers/") else {
        return request;
    };
    let (name, action) = if request.method() == axum::http::Method::DELETE {
        (rest, "")
    } else {
        match rest.rsplit_once('/') {
            Some((name, action)) if CONTAINER_ACTIONS.contains(&action) => (name, action),
            _ => return request,
        }
    };
    if !name.contains('/') {
        return request;
    }
    let mut new_path = format!("/containers/{}", name.replace('/', "%2F"));
    if !action.is_empty() {
        new_path.push('/');
        new_path.push_str(action);
    }
    if let Some(query) = request.uri().query() {
        new_path.push('?');
        new_path.push_str(query);
    }
    if let Ok(uri) = new_path.parse::<axum::http::Uri>() {
        *request.uri_mut() = uri;
    }
    request
}

/// Counts each call in the engine's metrics by HTTP method and route template (never
/// by the IDs and names in the path), with its status.
async fn count_call(
    axum::extract::State(server): axum::extract::State<Arc<DockerServer>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_string();
    // Extension methods are the client's to invent: one label for all of them.
    let verb = match request.method().as_str() {
        verb @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => verb,
        _ => "OTHER",
    };
    let method = format!("{verb} {route}");
    let response = next.run(request).await;
    server
        .engine
        .metrics
        .api
        .observe("docker", &method, response.status().as_str(), started);
    response
}

/// Serves the API on `listener` until `shutdown` completes; every request passes
/// through `layer` (the daemon's in-flight accounting, which its shutdown waits on).
pub async fn serve<Listener, L>(
    listener: Listener,
    server: Arc<DockerServer>,
    layer: L,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    Listener: axum::serve::Listener,
    Listener::Addr: std::fmt::Debug,
    L: tower::Layer<Router>,
    L::Service: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Future: Send,
{
    use axum::ServiceExt;
    let service = tower::ServiceBuilder::new()
        .map_request(version::strip_prefix)
        .map_request(escape_container_name)
        .layer(layer)
        .service(routes(server));
    axum::serve(listener, service.into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slashes_of_container_names_are_escaped() {
        let escaped = |method: &str, uri: &str| {
            let request = axum::extract::Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap();
            escape_container_name(request).uri().to_string()
        };
        assert_eq!(
            escaped("GET", "/containers//web/json?size=1"),
            "/containers/%2Fweb/json?size=1"
        );
        assert_eq!(
            escaped("POST", "/containers/a/b/stop"),
            "/containers/a%2Fb/stop"
        );
        assert_eq!(
            escaped("DELETE", "/containers//web?force=1"),
            "/containers/%2Fweb?force=1"
        );
        // Names without slashes and the fixed routes are left alone.
        assert_eq!(
            escaped("GET", "/containers/web/json"),
            "/containers/web/json"
        );
        assert_eq!(escaped("DELETE", "/containers/web"), "/containers/web");
        assert_eq!(escaped("GET", "/containers/json"), "/containers/json");
        assert_eq!(escaped("POST", "/containers/create"), "/containers/create");
        // Not an action: the router's 404.
        assert_eq!(
            escaped("GET", "/containers/a/b/bogus"),
            "/containers/a/b/bogus"
        );
        assert_eq!(escaped("GET", "/images/a/b/json"), "/images/a/b/json");
    }
}
