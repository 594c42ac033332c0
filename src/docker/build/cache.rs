//! The build cache: a step is reused when a child of the current image was made by
//! the same step (its `container_config`), or, with `cache_from`, when a given
//! image's history goes on from the current image's with it; and the commits of the
//! steps that were not.

use serde_json::{json, Map, Value};

use super::steps::{strings, Builder, Stage};
use super::BuildError;
use crate::docker::NAMESPACE;
use crate::image::rwlayer::commit::CommitOptions;
use crate::image::rwlayer::LayerSource;

impl<'a> Builder<'a> {
    /// The image made by the step `container_config`, if the cache has it: a child of
    /// the current image made by the same step.
    pub(super) fn probe(
        &self,
        state: &Stage,
        container_config: &Map<String, Value>,
    ) -> Option<String> {
        if self.options.no_cache {
            return None;
        }
        let candidates = match &state.image {
            Some(parent) => self.server.images.children(NAMESPACE, parent),
            None => self
                .server
                .images
                .list(NAMESPACE)
                .into_iter()
                .filter(|image| image.parent.is_none() && image.layers.len() <= 1)
                .collect(),
        };
        let wanted = Value::Object(container_config.clone());
        let mut best: Option<(String, String)> = None;
        for image in candidates {
            let Ok(bytes) = self.server.images.config_json(&image) else {
                continue;
            };
            let Ok(config) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if config.get("container_config") != Some(&wanted) {
                continue;
            }
            let created = config["created"].as_str().unwrap_or("").to_string();
            if best.as_ref().is_none_or(|(_, c)| created > *c) {
                best = Some((image.id.clone(), created));
            }
        }
        best.map(|(id, _)| id)
    }

    /// Takes a cache hit for `container_config`, if there is one: the local cache,
    /// then the `cache_from` images.
    pub(super) async fn cached(
        &mut self,
        state: &mut Stage,
        container_config: &Map<String, Value>,
    ) -> bool {
        let hit = match self.probe(state, container_config) {
            Some(id) => Some(id),
            None => match self.probe_cache_from(state, container_config).await {
                Ok(hit) => hit,
                Err(err) => {
                    tracing::warn!(
                        "the cache_from images could not give a step: {}",
                        err.message
                    );
                    None
                }
            },
        };
        match hit {
            Some(id) => {
                self.output.stream(" ---> Using cache\n").await;
                state.image = Some(id);
                true
            }
            None => false,
        }
    }

    /// An image's history entries and diff IDs.
    pub(super) fn history_of(
        &self,
        id: &str,
    ) -> Result<(crate::image::Image, Vec<Value>, Vec<String>), BuildError> {
        let image = self.server.images.get(NAMESPACE, id).ok_or_else(|| {
            BuildError::new(format!("the image {id} was removed during the build"))
        })?;
        let bytes = self.server.images.config_json(&image)?;
        let config: Value = serde_json::from_slice(&bytes)
            .map_err(|err| BuildError::new(format!("the config of {id} is not JSON: {err}")))?;
        let history = config["history"].as_array().cloned().unwrap_or_default();
        let diff_ids = strings(config["rootfs"].get("diff_ids"));
        Ok((image, history, diff_ids))
    }

    /// dockerd's `ImageCache.GetCache` for `cache_from`: an image whose history goes on
    /// from the current image's (the same entries, the same layers) with this step
    /// (its `created_by`) gives it: the image itself when the step is its last, else a
    /// new image of the current one and that step's layer.
    pub(super) async fn probe_cache_from(
        &mut self,
        state: &Stage,
        container_config: &Map<String, Value>,
    ) -> Result<Option<String>, BuildError> {
        if self.options.no_cache || self.cache_from.is_empty() {
            return Ok(None);
        }
        let created_by = strings(container_config.get("Cmd")).join(" ");
        let (parent_history, parent_diffs) = match &state.image {
            Some(id) => {
                let (_, history, diffs) = self.history_of(id)?;
                (history, diffs)
            }
            None => (Vec::new(), Vec::new()),
        };
        let same_entry = |a: &Value, b: &Value| {
            a["created_by"] == b["created_by"]
                && a["empty_layer"].as_bool().unwrap_or(false)
                    == b["empty_layer"].as_bool().unwrap_or(false)
        };
        for source in self.cache_from.clone() {
            let (image, history, diffs) = self.history_of(&source)?;
            let n = parent_history.len();
            if history.len() <= n
                || !history
                    .iter()
                    .zip(&parent_history)
                    .all(|(a, b)| same_entry(a, b))
                || !diffs.starts_with(&parent_diffs)
            {
                continue;
            }
            let entry = &history[n];
            if entry["created_by"].as_str() != Some(created_by.as_str()) {
                continue;
            }
            self.cache_from = vec![source.clone()];
            if history.len() == n + 1 {
                return Ok(Some(source));
            }
            let layer = if entry["empty_layer"].as_bool().unwrap_or(false) {
                None
            } else {
                match image.layers.get(parent_diffs.len()) {
                    Some(layer) => Some(layer.clone()),
                    None => continue,
                }
            };
            let created = entry["created"].as_str().unwrap_or_default().to_string();
            let config = self.with_image(state, state.config.clone());
            let options = CommitOptions {
                container_id: String::new(),
                author: state.maintainer.clone(),
                comment: String::new(),
                config: Value::Object(config),
                container_config: Value::Object(container_config.clone()),
                created_by,
                reference: None,
            };
            let derived = self
                .server
                .images
                .derive(NAMESPACE, state.image.as_deref(), layer, created, options)
                .await?;
            return Ok(Some(derived.id));
        }
        Ok(None)
    }

    /// The config and container config of a step's image: `Image` is the parent.
    pub(super) fn with_image(
        &self,
        state: &Stage,
        mut config: Map<String, Value>,
    ) -> Map<String, Value> {
        config.insert(
            "Image".into(),
            json!(state.image.clone().unwrap_or_default()),
        );
        config
    }

    /// Commits a step that changed the config alone (after a cache probe).
    pub(super) async fn commit_config(
        &mut self,
        state: &mut Stage,
        container_config: Map<String, Value>,
    ) -> Result<(), BuildError> {
        let container_config = self.with_image(state, container_config);
        if self.cached(state, &container_config).await {
            return Ok(());
        }
        let empty = self.dir.path.join("empty");
        std::fs::create_dir_all(&empty)
            .map_err(|err| BuildError::new(format!("creating {}: {err}", empty.display())))?;
        let layer = LayerSource {
            upper: empty,
            lowers: Vec::new(),
        };
        self.commit(state, layer, &[], container_config, String::new())
            .await
    }

    /// Commits `layer` on the current image with the state's config.
    pub(super) async fn commit(
        &mut self,
        state: &mut Stage,
        layer: LayerSource,
        skip: &'static [&'static str],
        container_config: Map<String, Value>,
        container_id: String,
    ) -> Result<(), BuildError> {
        let created_by = strings(container_config.get("Cmd")).join(" ");
        let config = self.with_image(state, state.config.clone());
        let options = CommitOptions {
            container_id,
            author: state.maintainer.clone(),
            comment: String::new(),
            config: Value::Object(config),
            container_config: Value::Object(container_config),
            created_by,
            reference: None,
        };
        let image = self
            .server
            .images
            .commit(NAMESPACE, state.image.as_deref(), layer, skip, options)
            .await?;
        state.image = Some(image.id);
        Ok(())
    }
}
