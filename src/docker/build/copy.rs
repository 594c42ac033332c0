//! COPY, ADD and WORKDIR: the current image's root filesystem mounted by the daemon
//! (an overlay with a fresh upper dir), the files copied in with paths resolved in
//! scope, the upper dir committed. Sources come from the context's index (extracted
//! once, by the first copy the cache lacks) or from a stage's or an image's root
//! filesystem mounted read-only.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::steps::{Builder, Stage};
use super::BuildError;
use crate::docker::NAMESPACE;
use crate::image::build::context::{self, CopyAs};
use crate::image::build::index::ContextIndex;
use crate::image::changes::clean_path;
use crate::image::rwlayer::LayerSource;

impl<'a> Builder<'a> {
    /// A new directory for a step's mount.
    pub(super) fn step_dir(&mut self) -> PathBuf {
        self.scratch += 1;
        self.dir.path.join(format!("step-{}", self.scratch))
    }

    /// Mounts the current image's root filesystem writable (a fresh upper dir), lets
    /// `work` change it, unmounts, and commits the upper dir.
    pub(super) async fn layer_step<F>(
        &mut self,
        state: &mut Stage,
        container_config: Map<String, Value>,
        work: F,
    ) -> Result<(), BuildError>
    where
        F: FnOnce(&Path) -> Result<(), BuildError> + Send + 'static,
    {
        let chain = match &state.image {
            Some(id) => self
                .server
                .images
                .get(NAMESPACE, id)
                .map(|image| image.chain_ids())
                .ok_or_else(|| {
                    BuildError::new(format!("the image {id} was removed during the build"))
                })?,
            None => Vec::new(),
        };
        let step_dir = self.step_dir();
        let snapshots = self.server.images.clone();
        let lowers: Vec<PathBuf> = chain
            .iter()
            .rev()
            .map(|c| self.server.images.snapshots().layer_dir(c))
            .collect();
        let done = {
            let step_dir = step_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
                let rootfs = step_dir.join("rootfs");
                crate::image::snapshot::mount_rootfs(
                    snapshots.snapshots(),
                    &chain,
                    &step_dir,
                    &rootfs,
                    false,
                )
                .map_err(|err| {
                    BuildError::new(format!("mounting the image for a build step: {err}"))
                })?;
                let result = work(&rootfs);
                let unmounted = crate::image::snapshot::unmount_rootfs(&rootfs);
                result?;
                unmounted.map_err(|err| BuildError::new(err.to_string()))
            })
            .await
            .map_err(|err| BuildError::new(format!("a build step's task failed: {err}")))?
        };
        done?;
        let layer = LayerSource {
            upper: step_dir.join("upper"),
            lowers,
        };
        let committed = self
            .commit(state, layer, &[], container_config, String::new())
            .await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(step_dir)).await;
        committed
    }

    /// WORKDIR: the config's working directory, made in the image when missing.
    pub(super) async fn workdir_step(
        &mut self,
        state: &mut Stage,
        path: &str,
    ) -> Result<(), BuildError> {
        let current = state
            .config
            .get("WorkingDir")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string();
        let joined = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{current}/{path}")
        };
        let dir = clean_path(&joined);
        state.config.insert("WorkingDir".into(), json!(dir));
        let probe = self.with_image(state, state.nop_string_config(&format!("WORKDIR {dir}")));
        if self.cached(state, &probe).await {
            return Ok(());
        }
        self.layer_step(state, probe, move |rootfs| {
            let target = context::resolve_in_scope(rootfs, &dir, true)?;
            context::make_dirs(&target, 0, 0)?;
            Ok(())
        })
        .await
    }

    /// COPY and ADD.
    pub(super) async fn copy_step(
        &mut self,
        state: &mut Stage,
        copy: CopyStep,
    ) -> Result<(), BuildError> {
        let CopyStep {
            name,
            sources,
            dest,
            from,
            chown,
            chmod,
            extract,
        } = copy;
        let mode = chmod
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| BuildError::new(format!("invalid chmod parameter: {m}")))
            })
            .transpose()?;
        if sources.is_empty() {
            return Err(BuildError::new(format!(
                "{name} requires at least two arguments"
            )));
        }
        for source in &sources {
            if source.starts_with("http://") || source.starts_with("https://") {
                return Err(BuildError::new(format!(
                    "{name} {source}: remote sources are not supported by this daemon, \
                     which does not fetch from the network; download the file into the \
                     build context and {name} it from there"
                )));
            }
            if source.starts_with("git@") {
                return Err(BuildError::new(format!(
                    "{name} {source}: git sources are not supported by this daemon"
                )));
            }
        }
        // Where the files come from: the context, an earlier stage, or an image.
        let (source_root, source_mount) = match &from {
            None => (self.dir.path.join("context"), None),
            Some(reference) => {
                let image = self.copy_source_image(reference).await?;
                let mount = self.mount_readonly(&image).await?;
                (mount.join("rootfs"), Some(mount))
            }
        };
        let resolved = {
            let root = source_root.clone();
            let sources = sources.clone();
            let index = self.context.clone();
            let in_context = from.is_none();
            tokio::task::spawn_blocking(move || {
                if in_context {
                    resolve_context_sources(&index, &root, &sources, name)
                } else {
                    resolve_sources(&root, &sources, name)
                }
            })
            .await
            .map_err(|err| BuildError::new(format!("a build step's task failed: {err}")))?
        };
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(err) => {
                self.unmount(source_mount).await;
                return Err(err);
            }
        };
        if resolved.len() > 1 && !dest.ends_with('/') {
            self.unmount(source_mount).await;
            return Err(BuildError::new(format!(
                "When using {name} with more than one source file, the destination must be \
                 a directory and end with a /"
            )));
        }
        let hash = if resolved.len() == 1 {
            resolved[0].hash.clone()
        } else {
            use sha2::Digest as _;
            let joined: Vec<&str> = resolved.iter().map(|s| s.hash.as_str()).collect();
            format!(
                "multi:{}",
                hex::encode(sha2::Sha256::digest(joined.join(",").as_bytes()))
            )
        };
        let mut flags = String::new();
        if let Some(chown) = &chown {
            flags.push_str(&format!("--chown={chown} "));
        }
        if let Some(chmod) = &chmod {
            flags.push_str(&format!("--chmod={chmod} "));
        }
        let workdir = state
            .config
            .get("WorkingDir")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string();
        let dest = if dest.starts_with('/') {
            dest
        } else {
            let ends_in_slash = dest.ends_with('/') || dest == ".";
            let mut joined = clean_path(&format!("{workdir}/{dest}"));
            if ends_in_slash && !joined.ends_with('/') {
                joined.push('/');
            }
            joined
        };
        let probe = self.with_image(
            state,
            state.nop_string_config(&format!("{name} {flags}{hash} in {dest} ")),
        );
        if self.cached(state, &probe).await {
            self.unmount(source_mount).await;
            return Ok(());
        }
        let index = from.is_none().then(|| self.context.clone());
        let result = self
            .layer_step(state, probe, move |rootfs| {
                if let Some(index) = index {
                    index.materialize(&source_root)?;
                }
                let (uid, gid) = match &chown {
                    Some(spec) => context::chown_ids(rootfs, spec)?,
                    None => (0, 0),
                };
                let copy_as = CopyAs { uid, gid, mode };
                for source in &resolved {
                    copy_one(rootfs, source, &dest, copy_as, extract)?;
                }
                Ok(())
            })
            .await;
        self.unmount(source_mount).await;
        result
    }

    /// The image a `COPY --from` names: a stage (by name or index) or an image.
    pub(super) async fn copy_source_image(&self, reference: &str) -> Result<String, BuildError> {
        let lower = reference.to_ascii_lowercase();
        if let Some(&index) = self.stage_names.get(&lower) {
            return self.stage_images[index]
                .clone()
                .ok_or_else(|| BuildError::new(format!("the stage {reference} has no image")));
        }
        if let Ok(index) = reference.parse::<usize>() {
            return match self.stage_images.get(index) {
                Some(Some(image)) => Ok(image.clone()),
                _ => Err(BuildError::new(format!(
                    "invalid from flag value {reference}: the stage is not built before this one"
                ))),
            };
        }
        self.image_for(reference).await
    }

    /// Mounts an image read-only for a `COPY --from`; returns the mount's directory.
    pub(super) async fn mount_readonly(&mut self, image: &str) -> Result<PathBuf, BuildError> {
        let chain = self
            .server
            .images
            .get(NAMESPACE, image)
            .map(|image| image.chain_ids())
            .ok_or_else(|| {
                BuildError::new(format!("the image {image} was removed during the build"))
            })?;
        let step_dir = self.step_dir();
        let images = self.server.images.clone();
        let dir = step_dir.clone();
        tokio::task::spawn_blocking(move || {
            crate::image::snapshot::mount_rootfs(
                images.snapshots(),
                &chain,
                &dir,
                &dir.join("rootfs"),
                true,
            )
        })
        .await
        .map_err(|err| BuildError::new(format!("a build step's task failed: {err}")))?
        .map_err(|err| {
            BuildError::new(format!("mounting the image {image} to copy from: {err}"))
        })?;
        Ok(step_dir)
    }

    pub(super) async fn unmount(&self, mount: Option<PathBuf>) {
        if let Some(dir) = mount {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(err) = crate::image::snapshot::unmount_rootfs(&dir.join("rootfs")) {
                    tracing::warn!("unmounting {}: {err}", dir.display());
                }
                let _ = std::fs::remove_dir_all(&dir);
            })
            .await;
        }
    }
}

/// One COPY or ADD, expanded.
pub(super) struct CopyStep {
    pub(super) name: &'static str,
    pub(super) sources: Vec<String>,
    pub(super) dest: String,
    pub(super) from: Option<String>,
    pub(super) chown: Option<String>,
    pub(super) chmod: Option<String>,
    /// ADD: a local tar archive is extracted.
    pub(super) extract: bool,
}

/// A source of a COPY, found.
struct Source {
    /// Where it is on this machine.
    path: PathBuf,
    /// Its name (the last component of what matched), for a file copied into a dir.
    name: String,
    hash: String,
}

/// The sources with their wildcards expanded by `glob` (Go's `filepath.Match`); a
/// wildcard that matches nothing is dockerd's error.
fn expand_wildcards(
    sources: &[String],
    name: &str,
    glob: impl Fn(&str) -> Result<Vec<String>, context::ContextError>,
) -> Result<Vec<String>, BuildError> {
    let mut all = Vec::new();
    for source in sources {
        if !context::has_wildcard(source) {
            all.push(source.clone());
            continue;
        }
        let matched = glob(source)?;
        if matched.is_empty() {
            return Err(BuildError::new(format!(
                "{name} failed: no source files were specified"
            )));
        }
        all.extend(matched);
    }
    Ok(all)
}

/// The sources' paths in a source image's root filesystem `root` (wildcards
/// expanded, each resolved within it) and checksums.
fn resolve_sources(root: &Path, sources: &[String], name: &str) -> Result<Vec<Source>, BuildError> {
    let mut found = Vec::new();
    for rel in expand_wildcards(sources, name, |pattern| context::glob(root, pattern))? {
        let path = context::resolve_in_scope(root, &rel, true)?;
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(BuildError::new(format!(
                "{name} failed: stat {rel}: file does not exist in the source image"
            )));
        }
        let hash = context::checksum(&path)?;
        found.push(Source {
            path,
            name: base_name(&rel),
            hash,
        });
    }
    Ok(found)
}

/// The sources in the build context, from its index (nothing is read from disk): their
/// paths once the context is extracted to `context_dir`, and checksums.
fn resolve_context_sources(
    index: &ContextIndex,
    context_dir: &Path,
    sources: &[String],
    name: &str,
) -> Result<Vec<Source>, BuildError> {
    let mut found = Vec::new();
    for rel in expand_wildcards(sources, name, |pattern| index.glob(pattern))? {
        let path = index.resolve(&rel, true)?;
        if !path.is_empty() && index.get(&path).is_none() {
            return Err(BuildError::new(format!(
                "{name} failed: file not found in build context or excluded by \
                 .dockerignore: stat {rel}: file does not exist"
            )));
        }
        found.push(Source {
            path: context_dir.join(&path),
            name: base_name(&rel),
            hash: index.checksum(&path)?,
        });
    }
    Ok(found)
}

fn base_name(rel: &str) -> String {
    Path::new(rel)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copies one source to `dest` inside `rootfs`, as the classic builder does: a
/// directory's contents into the destination directory; a file to `dest`, or into it
/// when it ends with `/` or is a directory; with `extract`, a tar archive unpacked
/// into the destination directory.
fn copy_one(
    rootfs: &Path,
    source: &Source,
    dest: &str,
    copy_as: CopyAs,
    extract: bool,
) -> Result<(), BuildError> {
    let meta = std::fs::symlink_metadata(&source.path)
        .map_err(|err| BuildError::new(format!("reading {}: {err}", source.path.display())))?;
    let target = context::resolve_in_scope(rootfs, dest, true)?;
    if meta.is_dir() {
        context::make_dirs(&target, copy_as.uid, copy_as.gid)?;
        let mut names: Vec<_> = std::fs::read_dir(&source.path)
            .map_err(|err| BuildError::new(format!("reading {}: {err}", source.path.display())))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for entry in names {
            context::copy_path(&source.path.join(&entry), &target.join(&entry), copy_as)?;
        }
        return Ok(());
    }
    if extract && meta.is_file() && context::is_archive(&source.path) {
        context::make_dirs(&target, copy_as.uid, copy_as.gid)?;
        let file = std::fs::File::open(&source.path)
            .map_err(|err| BuildError::new(format!("reading {}: {err}", source.path.display())))?;
        context::extract(file, &target, true)?;
        return Ok(());
    }
    let into_dir = dest.ends_with('/') || target.is_dir();
    let file_target = if into_dir {
        context::make_dirs(&target, copy_as.uid, copy_as.gid)?;
        target.join(&source.name)
    } else {
        if let Some(parent) = target.parent() {
            context::make_dirs(parent, copy_as.uid, copy_as.gid)?;
        }
        target
    };
    context::copy_path(&source.path, &file_target, copy_as)?;
    Ok(())
}
