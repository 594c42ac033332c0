//! Pull (`POST /images/create?fromImage=`) and push (`POST /images/{name}/push`) with
//! dockerd's JSON progress stream: the core pulls or pushes and reports each blob's
//! steps (`crate::image::progress`); this file words them as dockerd does, one JSON
//! message a line, flushed as they come. An error before the first step is an HTTP
//! error (dockerd's headers also wait for its first message); after it, the error is
//! the stream's last message (`{"errorDetail":{"message"},"error"}`), which clients
//! print and turn into a failure.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::images::{familiar, registry_auth};
use super::{DockerServer, NAMESPACE};
use crate::image::progress::{Outcome, Progress, ProgressSink};
use crate::image::registry::ImageReference;
use crate::image::{Image, ImageError};

/// One JSON message of a progress stream.
pub(super) fn message(value: Value) -> Bytes {
    Bytes::from(format!("{value}\r\n"))
}

/// Docker's short form of a digest: the first 12 hex digits.
fn short(digest: &str) -> String {
    digest
        .strip_prefix("sha256:")
        .unwrap_or(digest)
        .chars()
        .take(12)
        .collect()
}

/// dockerd's progress bar (`JSONProgress.String` at the daemon's width):
/// `[=====>      ]  1.23MB/4.56MB`.
pub(super) fn progress_bar(current: u64, total: u64) -> String {
    let filled = if total == 0 {
        50
    } else {
        ((current as f64 / total as f64 * 100.0) as usize / 2).min(50)
    };
    let bar = format!("[{}>{}] ", "=".repeat(filled), " ".repeat(50 - filled));
    let numbers = if current > total {
        format!("{:>8}", human_size(current))
    } else {
        format!("{:>8}/{}", human_size(current), human_size(total))
    };
    bar + &numbers
}

/// Docker's `units.HumanSize`: decimal units, four significant digits.
pub(super) fn human_size(size: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = size as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value >= 1.0 {
        value.log10().floor() as i32 + 1
    } else {
        1
    };
    let decimals = (4 - digits).max(0) as usize;
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", units[unit])
}

fn step(status: &str, id: &str) -> Value {
    json!({"status": status, "progressDetail": {}, "id": id})
}

fn transfer_step(status: &str, id: &str, current: u64, total: u64) -> Value {
    json!({
        "status": status,
        "progressDetail": {"current": current, "total": total},
        "progress": progress_bar(current, total),
        "id": id,
    })
}

fn error_message(text: &str) -> Value {
    json!({"errorDetail": {"message": text}, "error": text})
}

/// When the answer's headers go out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Headers {
    /// With the first step: an error before it is the HTTP error (dockerd's pull).
    AtFirstStep,
    /// At once, with the first messages: every error is in the stream (dockerd's push,
    /// whose first message names the repository; the CLI would take an HTTP 401 as a
    /// reason to prompt for a login).
    AtOnce,
}

/// Runs `work` (which reports to the sink it is given) and answers with its progress:
/// `first` (messages before any step), each step as `word` puts it, then `finish`'s
/// messages for the result, or the error.
async fn stream_progress<T, Work, Fut>(
    work: Work,
    headers: Headers,
    first: Vec<Value>,
    mut word: impl FnMut(Progress) -> Vec<Value> + Send + 'static,
    finish: impl FnOnce(T) -> Vec<Value> + Send + 'static,
    early_error: impl FnOnce(ImageError) -> ApiError,
) -> Result<Response, ApiError>
where
    T: Send + 'static,
    Work: FnOnce(ProgressSink) -> Fut,
    Fut: Future<Output = Result<T, ImageError>> + Send + 'static,
{
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(work(ProgressSink::new(progress_tx)));
    let first_step = match headers {
        Headers::AtOnce => None,
        Headers::AtFirstStep => match progress_rx.recv().await {
            Some(step) => Some(step),
            None => {
                // Ended without a step: nothing was sent yet, so an error is the answer's.
                let result = task.await.map_err(|err| {
                    ApiError::internal(format!("the transfer task failed: {err}"))
                })?;
                let value = result.map_err(early_error)?;
                return stream_response(first.into_iter().chain(finish(value)).map(message));
            }
        },
    };
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        // A client that went away does not stop the transfer (as a pull through the
        // CRI, it completes and is recorded); its messages are dropped.
        let send = |value: Value| {
            let body_tx = body_tx.clone();
            async move {
                let _ = body_tx.send(Ok(message(value))).await;
            }
        };
        for value in first
            .into_iter()
            .chain(first_step.map(&mut word).unwrap_or_default())
        {
            send(value).await;
        }
        while let Some(progress) = progress_rx.recv().await {
            for value in word(progress) {
                send(value).await;
            }
        }
        let messages = match task.await {
            Ok(Ok(value)) => finish(value),
            Ok(Err(err)) => vec![error_message(&err.to_string())],
            Err(err) => vec![error_message(&format!("the transfer task failed: {err}"))],
        };
        for value in messages {
            send(value).await;
        }
    });
    channel_response(body_rx)
}

/// A 200 JSON stream of what `messages` receives, each flushed as it comes.
pub(super) fn channel_response(
    messages: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> Result<Response, ApiError> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(messages),
        ))
        .map_err(|err| ApiError::internal(err.to_string()))
}

fn stream_response(messages: impl Iterator<Item = Bytes>) -> Result<Response, ApiError> {
    let messages: Vec<Result<Bytes, std::io::Error>> = messages.map(Ok).collect();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_util::stream::iter(messages)))
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// Words a pull's steps as dockerd: `Already exists` or `Pulling fs layer` for each
/// layer, then `Downloading` (with bytes), `Verifying Checksum`, `Download complete`,
/// `Extracting`, `Pull complete`.
struct PullWords {
    sizes: HashMap<String, u64>,
    present: HashSet<String>,
}

impl PullWords {
    fn word(&mut self, progress: Progress) -> Vec<Value> {
        match progress {
            Progress::Layers(layers) => layers
                .into_iter()
                .map(|layer| {
                    self.sizes.insert(layer.digest.clone(), layer.size);
                    if layer.present {
                        self.present.insert(layer.digest.clone());
                        step("Already exists", &short(&layer.digest))
                    } else {
                        step("Pulling fs layer", &short(&layer.digest))
                    }
                })
                .collect(),
            Progress::Transferring {
                digest,
                current,
                total,
            } => vec![transfer_step(
                "Downloading",
                &short(&digest),
                current,
                total,
            )],
            Progress::Verifying { digest } => vec![step("Verifying Checksum", &short(&digest))],
            Progress::Downloaded { digest } => vec![step("Download complete", &short(&digest))],
            Progress::Extracting { digest } => {
                let size = self.sizes.get(&digest).copied().unwrap_or(0);
                vec![transfer_step("Extracting", &short(&digest), size, size)]
            }
            Progress::Done { digest, outcome } => match outcome {
                // Announced with the layers already.
                Outcome::Exists if self.present.contains(&digest) => Vec::new(),
                Outcome::Exists => vec![step("Already exists", &short(&digest))],
                _ => vec![step("Pull complete", &short(&digest))],
            },
        }
    }
}

/// Pulls `reference` (normalized: with a tag or digest) for `/images/create`.
pub(super) async fn pull(
    server: &Arc<DockerServer>,
    from: &str,
    reference: String,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let credentials = registry_auth(headers)?;
    let parsed =
        ImageReference::parse(&reference).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let tag_or_digest = parsed
        .digest()
        .or(parsed.tag())
        .unwrap_or("latest")
        .to_string();
    let shown = familiar(&reference);
    let before = server.images.get(NAMESPACE, &reference).map(|i| i.id);
    let images = server.images.clone();
    let from = from.to_string();
    let mut words = PullWords {
        sizes: HashMap::new(),
        present: HashSet::new(),
    };
    let logged = reference.clone();
    stream_progress(
        move |sink| async move {
            images
                .pull_with_progress(NAMESPACE, &reference, &credentials, &sink)
                .await
        },
        Headers::AtFirstStep,
        vec![json!({
            "status": format!("Pulling from {}", parsed.repository()),
            "id": tag_or_digest,
        })],
        move |progress| words.word(progress),
        move |image: Image| {
            tracing::info!(reference = %logged, image = %image.id, "pulled image (docker)");
            let up_to_date = before.as_deref() == Some(image.id.as_str());
            vec![
                json!({"status": format!("Digest: {}", image.manifest_digest)}),
                json!({"status": if up_to_date {
                    format!("Status: Image is up to date for {shown}")
                } else {
                    format!("Status: Downloaded newer image for {shown}")
                }}),
            ]
        },
        move |err| match &err {
            ImageError::NotFound(_) => ApiError::not_found(format!(
                "pull access denied for {}, repository does not exist or may require \
                 'docker login': {err}",
                familiar(&from)
            )),
            _ => ApiError::from(err),
        },
    )
    .await
}

/// Words a push's steps as dockerd: `Preparing` for each layer (top first), then
/// `Pushing` (with bytes) and `Pushed`, or `Layer already exists`, or `Mounted from
/// <repository>`. Layers are named by their diff ID, as dockerd's push names them;
/// the config blob is not shown.
struct PushWords {
    /// Blob digest -> the short diff ID shown.
    layers: HashMap<String, String>,
}

impl PushWords {
    fn word(&mut self, progress: Progress) -> Vec<Value> {
        let id = |digest: &str| self.layers.get(digest).cloned();
        match progress {
            Progress::Transferring {
                digest,
                current,
                total,
            } => id(&digest)
                .map(|id| transfer_step("Pushing", &id, current, total))
                .into_iter()
                .collect(),
            Progress::Done { digest, outcome } => id(&digest)
                .map(|id| match outcome {
                    Outcome::Exists => step("Layer already exists", &id),
                    Outcome::Mounted { from } => step(&format!("Mounted from {from}"), &id),
                    _ => step("Pushed", &id),
                })
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// `POST /images/{name}/push?tag=`: pushes `name:tag`, or every tag of the repository
/// `name` when no tag is given (`docker push --all-tags`).
pub(super) async fn push(
    server: &Arc<DockerServer>,
    name: &str,
    tag: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let credentials = registry_auth(headers)?;
    if name.contains('@') || super::images::last_component_has_tag(name) {
        return Err(ApiError::bad_request(format!(
            "invalid reference format: {name}: the tag goes in the tag parameter"
        )));
    }
    let repository = ImageReference::parse(name)
        .map_err(|err| ApiError::bad_request(format!("invalid reference format: {err}")))?;
    let repository_name = format!("{}/{}", repository.registry(), repository.repository());
    let targets: Vec<(String, Image)> = match tag {
        Some(tag) => {
            let target = format!("{repository_name}:{tag}");
            let image = server.images.get(NAMESPACE, &target).ok_or_else(|| {
                ApiError::not_found(format!(
                    "An image does not exist locally with the tag: {}",
                    familiar(&repository_name)
                ))
            })?;
            vec![(target, image)]
        }
        None => {
            let prefix = format!("{repository_name}:");
            let mut targets: Vec<(String, Image)> = server
                .images
                .list(NAMESPACE)
                .into_iter()
                .flat_map(|image| {
                    image
                        .repo_tags
                        .iter()
                        .filter(|t| t.starts_with(&prefix))
                        .map(|t| (t.clone(), image.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            targets.sort_by(|a, b| a.0.cmp(&b.0));
            if targets.is_empty() {
                return Err(ApiError::not_found(format!(
                    "An image does not exist locally with the tag: {}",
                    familiar(&repository_name)
                )));
            }
            targets
        }
    };
    let mut first = vec![json!({
        "status": format!("The push refers to repository [{}]", familiar(&repository_name)),
    })];
    let mut layers = HashMap::new();
    for (_, image) in &targets {
        for layer in image.layers.iter().rev() {
            let id = short(&layer.diff_id);
            if layers.insert(layer.digest.clone(), id.clone()).is_none() {
                first.push(step("Preparing", &id));
            }
        }
    }
    let mut words = PushWords { layers };
    let images = server.images.clone();
    stream_progress(
        move |sink| async move {
            let mut pushed = Vec::new();
            for (target, image) in &targets {
                let digest = images
                    .push_with_progress(NAMESPACE, &image.id, target, &credentials, &sink)
                    .await?;
                let size = images
                    .content()
                    .size(&image.manifest_digest)
                    .unwrap_or_default();
                pushed.push((target.clone(), digest, size));
            }
            Ok(pushed)
        },
        Headers::AtOnce,
        first,
        move |progress| words.word(progress),
        |pushed: Vec<(String, String, u64)>| {
            pushed
                .into_iter()
                .flat_map(|(target, digest, size)| {
                    let tag = target.rsplit(':').next().unwrap_or("latest").to_string();
                    [
                        json!({"status": format!("{tag}: digest: {digest} size: {size}")}),
                        json!({
                            "progressDetail": {},
                            "aux": {"Tag": tag, "Digest": digest, "Size": size},
                        }),
                    ]
                })
                .collect()
        },
        ApiError::from,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bars_as_dockerd_draws_them() {
        assert_eq!(
            progress_bar(0, 1000),
            format!("[>{}]       0B/1kB", " ".repeat(50))
        );
        let half = progress_bar(500_000, 1_000_000);
        assert!(half.starts_with(&format!("[{}>{}] ", "=".repeat(25), " ".repeat(25))));
        assert!(half.ends_with("  500kB/1MB"), "{half}");
        assert!(progress_bar(2, 1).ends_with("      2B"));
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(12_340), "12.34kB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }

    #[test]
    fn pull_steps_are_worded_once() {
        let mut words = PullWords {
            sizes: HashMap::new(),
            present: HashSet::new(),
        };
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let layers = words.word(Progress::Layers(vec![
            crate::image::progress::LayerState {
                digest: a.clone(),
                size: 10,
                present: true,
            },
            crate::image::progress::LayerState {
                digest: b.clone(),
                size: 20,
                present: false,
            },
        ]));
        assert_eq!(layers[0]["status"], "Already exists");
        assert_eq!(layers[1]["status"], "Pulling fs layer");
        assert_eq!(layers[1]["id"], "bbbbbbbbbbbb");
        assert!(words
            .word(Progress::Done {
                digest: a,
                outcome: Outcome::Exists
            })
            .is_empty());
        let extracting = words.word(Progress::Extracting { digest: b.clone() });
        assert_eq!(extracting[0]["progressDetail"]["total"], 20);
        let done = words.word(Progress::Done {
            digest: b,
            outcome: Outcome::Pulled,
        });
        assert_eq!(done[0]["status"], "Pull complete");
    }
}
