//! `docker save`: images written as a docker-archive, the layout `docker save` of
//! dockerd 20.10 writes (see the module above), streamed: nothing is staged on disk.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, Write};

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::{decompressed, has_explicit_tag, ArchiveError};
use crate::image::content::ContentError;
use crate::image::registry::ImageReference;
use crate::image::snapshot::Snapshotter;
use crate::image::unpack::Compression;
use crate::image::{familiar, Image, ImageError, ImageService};

/// Images to save, their blobs open (so that a removal meanwhile cannot take them
/// away); [`SaveArchive::write_to`] writes the archive.
#[derive(Debug)]
pub struct SaveArchive {
    images: Vec<SaveImage>,
}

#[derive(Debug)]
struct SaveImage {
    /// The config's hex digest.
    hex: String,
    config: Vec<u8>,
    config_json: Value,
    /// Familiar `repo:tag`s, as `docker save` lists the names it was asked for.
    tags: Vec<String>,
    layers: Vec<SaveLayer>,
}

#[derive(Debug)]
struct SaveLayer {
    file: File,
    compression: Compression,
    diff_id: String,
}

/// dockerd's `container.Config{}` as Go marshals it: the v1 config of lower layers.
const EMPTY_CONTAINER_CONFIG: &str = r#"{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null}"#;

/// The v1 image fields of a config, in the order dockerd's `V1Image` has them.
const V1_FIELDS: &[&str] = &[
    "comment",
    "created",
    "container",
    "container_config",
    "docker_version",
    "author",
    "config",
    "architecture",
    "variant",
    "os",
];

impl ImageService {
    /// The images `names` select, as `docker save` reads names: an ID (or unique
    /// prefix) saves the image without a name, `repo:tag` and `repo@digest` the image
    /// they name (with that tag), and a bare `repo` every tagged image of the repository.
    pub fn save(&self, namespace: &str, names: &[String]) -> Result<SaveArchive, ImageError> {
        let mut selected: Vec<(Image, Vec<String>)> = Vec::new();
        for name in names {
            for (image, tag) in self.save_selection(namespace, name)? {
                let at = match selected.iter().position(|(i, _)| i.id == image.id) {
                    Some(at) => at,
                    None => {
                        selected.push((image, Vec::new()));
                        selected.len() - 1
                    }
                };
                if let Some(tag) = tag.map(|t| familiar(&t)) {
                    if !selected[at].1.contains(&tag) {
                        selected[at].1.push(tag);
                    }
                }
            }
        }
        let mut images = Vec::new();
        for (image, tags) in selected {
            if image.layers.is_empty() {
                return Err(ArchiveError::invalid(format!(
                    "image {} has no layers: a docker-archive of it is not written \
                     (dockerd refuses it too: \"empty export\")",
                    image.id
                ))
                .into());
            }
            let config = self.content.read(&image.id)?;
            let config_json: Value = serde_json::from_slice(&config).unwrap_or(Value::Null);
            let mut layers = Vec::new();
            for layer in &image.layers {
                let path = self.content.path(&layer.digest)?;
                let file = File::open(&path).map_err(|err| match err.kind() {
                    io::ErrorKind::NotFound => ContentError::NotFound(layer.digest.clone()),
                    _ => ContentError::Io { path, source: err },
                })?;
                let compression = crate::image::unpack::Compression::from_media_type(
                    &layer.media_type,
                )
                .map_err(|source| ImageError::Unpack {
                    digest: layer.digest.clone(),
                    source,
                })?;
                layers.push(SaveLayer {
                    file,
                    compression,
                    diff_id: layer.diff_id.clone(),
                });
            }
            images.push(SaveImage {
                hex: image.id.trim_start_matches("sha256:").to_string(),
                config,
                config_json,
                tags,
                layers,
            });
        }
        Ok(SaveArchive { images })
    }

    /// What one name of `docker save` selects: images, each with the tag it was named
    /// by (None for an ID or a digest reference).
    fn save_selection(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<(Image, Option<String>)>, ImageError> {
        let by_id = |name: &str| {
            self.get(namespace, name)
                .map(|image| vec![(image, None)])
                .ok_or_else(|| ArchiveError::NoSuchImage(super::echo(name)).into())
        };
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if name.starts_with("sha256:")
            || (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return by_id(name);
        }
        let reference = match ImageReference::parse(name) {
            Ok(reference) => reference,
            Err(err) => {
                return self
                    .get(namespace, name)
                    .map(|image| vec![(image, None)])
                    .ok_or_else(|| err.into())
            }
        };
        if reference.digest().is_some() {
            return self
                .get(namespace, &reference.to_string())
                .map(|image| vec![(image, None)])
                .ok_or_else(|| ArchiveError::NoSuchReference(super::echo(name)).into());
        }
        if has_explicit_tag(name) {
            let tag = reference.repo_tag().unwrap_or_default();
            return self
                .get(namespace, &tag)
                .filter(|image| image.repo_tags.contains(&tag))
                .map(|image| vec![(image, Some(tag))])
                .ok_or_else(|| ArchiveError::NoSuchReference(super::echo(name)).into());
        }
        // A repository: every tag of it.
        let prefix = format!("{}:", reference.name());
        let mut tagged: Vec<(Image, Option<String>)> = Vec::new();
        for image in self.list(namespace) {
            for tag in &image.repo_tags {
                if tag
                    .strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
                {
                    tagged.push((image.clone(), Some(tag.clone())));
                }
            }
        }
        if tagged.is_empty() {
            return by_id(name);
        }
        tagged.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(tagged)
    }
}

/// One entry of the archive.
enum Entry {
    Dir,
    Bytes(Vec<u8>),
    /// `layer.tar`: the layer at this index, decompressed.
    Layer(usize),
    Symlink(String),
}

/// `manifest.json`'s items, fields in dockerd's order.
#[derive(Serialize)]
struct ManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

impl SaveArchive {
    /// Writes the archive to `out` (blocking: run it on a blocking thread). An error
    /// midway leaves `out` with a truncated archive: the caller must not present it as
    /// complete (the Docker API aborts the response).
    pub fn write_to(self, out: impl Write) -> Result<(), ImageError> {
        let mut entries: BTreeMap<String, (Entry, u64)> = BTreeMap::new();
        let mut layers: Vec<SaveLayer> = Vec::new();
        let mut manifest: Vec<ManifestItem> = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        // The first layer.tar written for each diff ID: later ones link to it.
        let mut diff_id_paths: HashMap<String, String> = HashMap::new();
        let mut images = self.images;
        for image in &mut images {
            let created = created_secs(&image.config_json);
            let diff_ids: Vec<String> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
            let v1 = v1_layers(&image.config_json, &diff_ids);
            let mut paths = Vec::new();
            for ((id, json), layer) in v1.into_iter().zip(image.layers.drain(..)) {
                let layer_path = format!("{id}/layer.tar");
                paths.push(layer_path.clone());
                if entries.contains_key(&format!("{id}/")) {
                    continue;
                }
                entries.insert(format!("{id}/"), (Entry::Dir, created));
                entries.insert(
                    format!("{id}/VERSION"),
                    (Entry::Bytes(b"1.0".to_vec()), created),
                );
                entries.insert(format!("{id}/json"), (Entry::Bytes(json), created));
                let data = match diff_id_paths.get(&layer.diff_id) {
                    Some(first) => Entry::Symlink(format!("../{first}")),
                    None => {
                        diff_id_paths.insert(layer.diff_id.clone(), layer_path.clone());
                        layers.push(layer);
                        Entry::Layer(layers.len() - 1)
                    }
                };
                entries.insert(layer_path, (data, created));
            }
            entries.insert(
                format!("{}.json", image.hex),
                (Entry::Bytes(std::mem::take(&mut image.config)), created),
            );
            if let Some(top) = paths.last().and_then(|p| p.split('/').next()) {
                for tag in &image.tags {
                    if let Some((repo, tag)) = tag.rsplit_once(':') {
                        repositories
                            .entry(repo.to_string())
                            .or_default()
                            .insert(tag.to_string(), top.to_string());
                    }
                }
            }
            manifest.push(ManifestItem {
                config: format!("{}.json", image.hex),
                repo_tags: (!image.tags.is_empty()).then(|| image.tags.clone()),
                layers: paths,
            });
        }
        let mut manifest_json = serde_json::to_vec(&manifest).map_err(json_err)?;
        manifest_json.push(b'\n');
        entries.insert("manifest.json".into(), (Entry::Bytes(manifest_json), 0));
        if !repositories.is_empty() {
            let mut json = serde_json::to_vec(&repositories).map_err(json_err)?;
            json.push(b'\n');
            entries.insert("repositories".into(), (Entry::Bytes(json), 0));
        }

        let mut builder = tar::Builder::new(out);
        for (path, (entry, mtime)) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(mtime);
            match entry {
                Entry::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    builder.append_data(&mut header, &path, io::empty())
                }
                Entry::Bytes(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, &path, &data[..])
                }
                Entry::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, &path, &target)
                }
                Entry::Layer(index) => {
                    let layer = &mut layers[index];
                    let size = uncompressed_size(layer)?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_size(size);
                    let data = decompressed(&mut layer.file, layer.compression)
                        .map_err(|err| read_err(&layer.diff_id, err))?;
                    builder.append_data(&mut header, &path, Exact::new(data, size))
                }
            }
            .map_err(|err| ImageError::Task(format!("writing the archive: {err}")))?;
        }
        builder
            .into_inner()
            .and_then(|mut out| out.flush())
            .map_err(|err| ImageError::Task(format!("writing the archive: {err}")))?;
        Ok(())
    }
}

fn json_err(err: serde_json::Error) -> ImageError {
    ImageError::Task(format!("encoding manifest.json: {err}"))
}

fn read_err(diff_id: &str, err: io::Error) -> ImageError {
    ImageError::Task(format!("reading layer {diff_id}: {err}"))
}

/// The layer's tar size: its blob's size if uncompressed, else found by decompressing
/// it once (the file is then rewound).
fn uncompressed_size(layer: &mut SaveLayer) -> Result<u64, ImageError> {
    if layer.compression == Compression::None {
        return layer
            .file
            .metadata()
            .map(|m| m.len())
            .map_err(|err| read_err(&layer.diff_id, err));
    }
    let size = {
        let mut data = decompressed(&mut layer.file, layer.compression)
            .map_err(|err| read_err(&layer.diff_id, err))?;
        io::copy(&mut data, &mut io::sink()).map_err(|err| read_err(&layer.diff_id, err))?
    };
    layer
        .file
        .rewind()
        .map_err(|err| read_err(&layer.diff_id, err))?;
    Ok(size)
}

/// Exactly `size` bytes of `inner`, or an error: a tar entry's data must match the size
/// its header announced.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Exact<R> {
    fn new(inner: R, size: u64) -> Exact<R> {
        Exact { inner, left: size }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the layer is shorter than it was",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The image's creation time in seconds (the mtime of its files), 0 if unknown.
fn created_secs(config: &Value) -> u64 {
    config
        .get("created")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| u64::try_from(t.timestamp()).unwrap_or(0))
}

/// Each layer's v1 ID (hex) and `json` file, base layer first, as dockerd derives them:
/// the ID is the sha256 of the v1 config (the image's own for the top layer, an empty
/// one below) with the layer's chain ID as `layer_id` and the parent's ID. (The JSON is
/// serialized as wharf does, so the IDs are wharf's own; `docker load` only reads
/// `manifest.json`.)
fn v1_layers(config: &Value, diff_ids: &[String]) -> Vec<(String, Vec<u8>)> {
    let chain_ids = Snapshotter::chain_ids(diff_ids);
    let os = config
        .get("os")
        .and_then(Value::as_str)
        .filter(|os| !os.is_empty())
        .unwrap_or("linux")
        .to_string();
    let mut parent: Option<String> = None;
    let mut out = Vec::new();
    for (i, chain_id) in chain_ids.iter().enumerate() {
        let fields: Vec<(&str, Value)> = if i + 1 == chain_ids.len() {
            V1_FIELDS
                .iter()
                .filter_map(|key| {
                    let value = config.get(*key).cloned().unwrap_or(Value::Null);
                    let keep = match *key {
                        "created" => true,
                        "container_config" => true,
                        _ => !(value.is_null() || value == json!("")),
                    };
                    let value = match (*key, value) {
                        ("created", Value::Null) => json!("0001-01-01T00:00:00Z"),
                        ("container_config", Value::Null) => empty_container_config(),
                        (_, value) => value,
                    };
                    keep.then_some((*key, value))
                })
                .collect()
        } else {
            vec![
                ("created", json!("1970-01-01T00:00:00Z")),
                ("container_config", empty_container_config()),
            ]
        };
        let mut for_id: BTreeMap<&str, Value> = fields.iter().cloned().collect();
        for_id.insert("layer_id", json!(chain_id));
        if let Some(parent) = &parent {
            for_id.insert("parent", json!(parent));
        }
        let id = hex::encode(Sha256::digest(
            serde_json::to_vec(&for_id).unwrap_or_default(),
        ));
        let mut json_fields: Vec<(&str, Value)> = vec![("id", json!(id))];
        if let Some(parent) = &parent {
            json_fields.push(("parent", json!(parent.trim_start_matches("sha256:"))));
        }
        json_fields.extend(fields.into_iter().filter(|(key, _)| *key != "os"));
        json_fields.push(("os", json!(os)));
        out.push((id.clone(), ordered_json(&json_fields)));
        parent = Some(format!("sha256:{id}"));
    }
    out
}

fn empty_container_config() -> Value {
    serde_json::from_str(EMPTY_CONTAINER_CONFIG).unwrap_or(Value::Null)
}

/// A JSON object with its keys in the given order (serde_json's maps sort them).
fn ordered_json(fields: &[(&str, Value)]) -> Vec<u8> {
    let mut out = b"{".to_vec();
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend(serde_json::to_vec(key).unwrap_or_default());
        out.push(b':');
        if *key == "container_config" && *value == empty_container_config() {
            out.extend(EMPTY_CONTAINER_CONFIG.as_bytes());
        } else {
            out.extend(serde_json::to_vec(value).unwrap_or_default());
        }
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_layer_ids_chain_and_the_top_carries_the_config() {
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        let diff_ids = vec![
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        ];
        let layers = v1_layers(&config, &diff_ids);
        assert_eq!(layers.len(), 2);
        let (base_id, base_json) = &layers[0];
        let (top_id, top_json) = &layers[1];
        assert_eq!(base_id.len(), 64);
        assert_ne!(base_id, top_id);
        let base = String::from_utf8(base_json.clone()).unwrap();
        assert!(
            base.starts_with(&format!(
                "{{\"id\":\"{base_id}\",\"created\":\"1970-01-01T00:00:00Z\",\"container_config\":{{\"Hostname\":\"\""
            )),
            "{base}"
        );
        assert!(base.ends_with(",\"os\":\"linux\"}"), "{base}");
        let top: Value = serde_json::from_slice(top_json).unwrap();
        assert_eq!(top["parent"], json!(base_id));
        assert_eq!(top["config"]["Cmd"], json!(["sh"]));
        assert_eq!(top["architecture"], json!("amd64"));
        assert!(top.get("rootfs").is_none());
        // Deterministic.
        assert_eq!(v1_layers(&config, &diff_ids), layers);
        assert_eq!(created_secs(&config), 1704164645);
    }

    #[test]
    fn exact_reader_refuses_short_data() {
        let mut short = Exact::new(&b"abc"[..], 5);
        let mut out = Vec::new();
        assert!(short.read_to_end(&mut out).is_err());
        let mut exact = Exact::new(&b"abcdef"[..], 3);
        out.clear();
        exact.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
    }
}
