//! Named volumes with Docker's `local` driver: a directory `<root>/volumes/<name>/_data`
//! per volume, or (with driver options `type`/`device`/`o`, as dockerd's local driver)
//! a mount made on that directory while a container uses it.
//!
//! Records live in the store (kind `volume`, the Docker namespace, keyed by name), so
//! volumes survive restarts and `kill -9`. Creation makes the directory first and then
//! commits the record: a crash in between leaves a directory no record owns, removed at
//! the next start ([`VolumeService::open`]). Removal deletes the record first, then the
//! directory (again swept at start if a crash cuts it). Nothing is ever removed below a
//! mount point that is still mounted, so a bind volume's device is never emptied.
//!
//! Which containers use a volume (its references) is kept in memory, as dockerd keeps
//! it, and rebuilt from the container records when the runtime recovers. A referenced
//! volume is never removed or pruned. Which containers are *running* with it (created
//! or running OCI containers) decides when an option-backed volume is mounted and
//! unmounted ([`VolumeService::activate`], [`VolumeService::deactivate`]).

mod copy;
mod mount;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::store::{Kind, Store, StoreError, DOCKER_NAMESPACE};

pub use copy::{copy_up, resolve_in_root};

/// The only driver wharf has (dockerd's built-in one).
pub const LOCAL_DRIVER: &str = "local";

/// One volume, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub driver: String,
    /// None: created without labels (dockerd answers `null`).
    #[serde(default)]
    pub labels: Option<HashMap<String, String>>,
    /// The driver options (`type`, `device`, `o`) as given (None: none were sent,
    /// dockerd answers `null`); without `type`/`device`: a plain directory.
    #[serde(default)]
    pub options: Option<HashMap<String, String>>,
    /// Nanoseconds since the Unix epoch.
    pub created_at: i64,
}

impl Volume {
    /// Whether it is a mount made from its options rather than a plain directory.
    pub fn is_mounted_kind(&self) -> bool {
        self.options
            .as_ref()
            .is_some_and(|o| o.contains_key("device") || o.contains_key("type"))
    }

    /// Whether it has driver options at all (dockerd's df and prune skip those: what
    /// they hold is not local disk).
    pub fn has_options(&self) -> bool {
        self.options.as_ref().is_some_and(|o| !o.is_empty())
    }
}

/// What a create asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateVolume {
    /// None or empty: a random 64-hex-digit name (an anonymous volume).
    pub name: Option<String>,
    /// Empty: `local`.
    pub driver: String,
    pub labels: Option<HashMap<String, String>>,
    pub options: Option<HashMap<String, String>>,
}

/// Why a volume call failed, worded as dockerd words it (clients print these).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("create {name}: volume name is too short, names should be at least two alphanumeric characters")]
    TooShort { name: String },
    #[error(
        "create {name}: \"{name}\" includes invalid characters for a local volume name, only \
         \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, \
         use absolute path"
    )]
    InvalidName { name: String },
    #[error(
        "create {name}: error looking up volume plugin {driver}: plugin \"{driver}\" not found"
    )]
    UnknownDriver { name: String, driver: String },
    #[error("create {name}: {reason}")]
    InvalidOption { name: String, reason: String },
    #[error("get {name}: no such volume")]
    NotFound { name: String },
    #[error("remove {name}: volume is in use - [{}]", users.join(", "))]
    InUse { name: String, users: Vec<String> },
    #[error("error while mounting volume '{path}': failed to mount local volume: {cause}")]
    Mount { path: String, cause: String },
    #[error("volume {name}: {step}: {source}")]
    Io {
        name: String,
        step: String,
        source: std::io::Error,
    },
    #[error("volume metadata: {0}")]
    Store(#[from] StoreError),
}

impl crate::error::HasKind for VolumeError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            VolumeError::InvalidName { .. }
            | VolumeError::TooShort { .. }
            | VolumeError::InvalidOption { .. } => ErrorKind::InvalidArgument,
            VolumeError::UnknownDriver { .. } | VolumeError::NotFound { .. } => ErrorKind::NotFound,
            VolumeError::InUse { .. } => ErrorKind::FailedPrecondition,
            VolumeError::Mount { .. } | VolumeError::Io { .. } => ErrorKind::Internal,
            VolumeError::Store(err) => err.kind(),
        }
    }
}

fn io_err(name: &str, step: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let name = name.to_string();
    let step = step.into();
    move |source| VolumeError::Io { name, step, source }
}

pub type Result<T> = std::result::Result<T, VolumeError>;

/// dockerd's rule for local volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (so never a
/// path: no '/', and no name of only dots).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() >= 2
        && name.len() <= 255
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The local driver's options, checked as dockerd's `validateOpts` (wharf has no
/// quota support, so a `size` is refused as dockerd refuses it without one).
fn check_options(name: &str, options: &HashMap<String, String>) -> Result<()> {
    let invalid = |reason: String| VolumeError::InvalidOption {
        name: name.to_string(),
        reason,
    };
    let mut keys: Vec<&String> = options.keys().collect();
    keys.sort();
    for key in keys {
        if !matches!(key.as_str(), "type" | "o" | "device" | "size") {
            return Err(invalid(format!(
                "invalid option: {:?}",
                crate::image::bounded(key, crate::image::MAX_ECHO)
            )));
        }
    }
    if let Some(size) = options.get("size") {
        let bytes = parse_size(size).ok_or_else(|| {
            invalid(format!(
                "invalid size: '{}'",
                crate::image::bounded(size, crate::image::MAX_ECHO)
            ))
        })?;
        if bytes > 0 {
            return Err(invalid("quota size requested but no quota support".into()));
        }
    }
    for (option, required) in [
        ("device", "type"),
        ("type", "device"),
        ("o", "device"),
        ("o", "type"),
    ] {
        if options.contains_key(option) && !options.contains_key(required) {
            return Err(invalid(format!("missing required option: {required:?}")));
        }
    }
    Ok(())
}

/// go-units' `RAMInBytes`: `64m`, `1.5g`, `512` (binary multiples).
fn parse_size(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let trimmed = lower.strip_suffix('b').unwrap_or(&lower);
    let (number, multiplier) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        Some('t') => (&trimmed[..trimmed.len() - 1], 1 << 40),
        Some('p') => (&trimmed[..trimmed.len() - 1], 1 << 50),
        _ => (trimmed, 1),
    };
    let value: f64 = number.parse().ok()?;
    (value >= 0.0 && value.is_finite()).then_some((value * multiplier as f64) as u64)
}

#[derive(Debug, Default)]
struct State {
    /// Volume name -> the containers that reference it.
    refs: HashMap<String, BTreeSet<String>>,
    /// Volume name -> the containers with a live OCI container using it (mounted
    /// volumes stay mounted while this is not empty).
    active: HashMap<String, BTreeSet<String>>,
}

/// What a `mount` event says about a container's mount of a volume.
#[derive(Debug, Clone, Default)]
pub struct MountEvent {
    pub destination: String,
    pub propagation: String,
    pub readonly: bool,
    /// No event (a restarted wharfd finding its running containers again).
    pub quiet: bool,
}

/// How much a volume holds and how many containers use it (`docker system df`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub ref_count: i64,
}

/// The volumes of the Docker namespace.
pub struct VolumeService {
    dir: PathBuf,
    store: Arc<Store>,
    /// Every call that reads and changes references or records holds it: a volume is
    /// never removed between a check and a change.
    state: Mutex<State>,
    events: Option<Arc<crate::events::EventBus>>,
}

impl std::fmt::Debug for VolumeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeService")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl VolumeService {
    /// The volumes under `<root>/volumes`: directories no record owns (a create or a
    /// removal cut by a crash) are removed, unmounted first.
    pub fn open(root: &Path, store: Arc<Store>) -> Result<VolumeService> {
        let dir = root.join("volumes");
        std::fs::create_dir_all(&dir)
            .map_err(io_err("(all)", format!("creating {}", dir.display())))?;
        let service = VolumeService {
            dir,
            store,
            state: Mutex::new(State::default()),
            events: None,
        };
        service.sweep()?;
        Ok(service)
    }

    pub fn with_events(mut self, events: Arc<crate::events::EventBus>) -> VolumeService {
        self.events = Some(events);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, action: &str, name: &str, extra: &[(&str, String)]) {
        if let Some(events) = &self.events {
            let mut event = crate::events::Event::new(
                DOCKER_NAMESPACE,
                crate::events::EventKind::Volume,
                action,
                name,
            )
            .with("driver", LOCAL_DRIVER.to_string());
            for (key, value) in extra {
                event = event.with(key, value.clone());
            }
            events.publish(event);
        }
    }

    /// `<root>/volumes/<name>`.
    fn volume_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where a volume's data is (dockerd's `Mountpoint`).
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("_data")
    }

    fn sweep(&self) -> Result<()> {
        let records = self.list()?;
        let owned: std::collections::HashSet<&str> =
            records.iter().map(|v| v.name.as_str()).collect();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(io_err("(all)", format!("reading {}", self.dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if owned.contains(name.as_str()) {
                continue;
            }
            tracing::warn!(volume = %name, "removing a volume directory no record owns (an interrupted create or removal)");
            if let Err(err) = self.remove_dir(&name) {
                tracing::error!(volume = %name, "{err}");
            }
        }
        Ok(())
    }

    /// Unmounts what is mounted on the volume's `_data` and removes its directory;
    /// refuses (leaving everything) when something stays mounted below it.
    fn remove_dir(&self, name: &str) -> Result<()> {
        self.unmount_for_removal(name)?;
        let dir = self.volume_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_err(name, format!("removing {}", dir.display()))(err)),
        }
    }

    /// Unmounts what is mounted on the volume's `_data`; an error when something stays
    /// mounted below its directory (its data is never removed then).
    fn unmount_for_removal(&self, name: &str) -> Result<()> {
        let dir = self.volume_dir(name);
        let data = dir.join("_data");
        mount::unmount_all(&data)
            .map_err(io_err(name, format!("unmounting {}", data.display())))?;
        if mount::anything_mounted_under(&dir)
            .map_err(io_err(name, "reading /proc/self/mountinfo"))?
        {
            return Err(VolumeError::Io {
                name: name.to_string(),
                step: format!("removing {}", dir.display()),
                source: std::io::Error::other("something is still mounted below it"),
            });
        }
        Ok(())
    }

    /// Every volume, oldest first.
    pub fn list(&self) -> Result<Vec<Volume>> {
        Ok(self
            .store
            .list::<Volume>(Some(DOCKER_NAMESPACE), Kind::Volume)?
            .into_iter()
            .map(|r| r.value)
            .collect())
    }

    pub fn get(&self, name: &str) -> Result<Volume> {
        self.store
            .get::<Volume>(DOCKER_NAMESPACE, Kind::Volume, name)?
            .map(|r| r.value)
            .ok_or_else(|| VolumeError::NotFound {
                name: crate::image::bounded(name, crate::image::MAX_ECHO),
            })
    }

    /// Creates a volume, or returns the one of that name (dockerd's create is
    /// idempotent for the same driver).
    pub fn create(&self, request: CreateVolume) -> Result<Volume> {
        let _state = self.lock();
        self.create_locked(request).map(|(v, _)| v)
    }

    /// As [`VolumeService::create`], and `container` references it, in one step: no
    /// removal can come between. Also says whether the volume is new.
    pub fn create_with_ref(
        &self,
        request: CreateVolume,
        container: &str,
    ) -> Result<(Volume, bool)> {
        let mut state = self.lock();
        let made = self.create_locked(request)?;
        state
            .refs
            .entry(made.0.name.clone())
            .or_default()
            .insert(container.to_string());
        Ok(made)
    }

    /// What a create of `request` would refuse (name, driver; options only when the
    /// volume does not exist yet, as dockerd ignores them for an existing one), with
    /// the name and driver it would use.
    pub fn check(&self, request: &CreateVolume) -> Result<(String, String)> {
        let name = request.name.clone().unwrap_or_default();
        let driver = if request.driver.is_empty() {
            LOCAL_DRIVER.to_string()
        } else {
            request.driver.clone()
        };
        if driver != LOCAL_DRIVER {
            return Err(VolumeError::UnknownDriver {
                name: crate::image::bounded(&name, crate::image::MAX_ECHO),
                driver: crate::image::bounded(&driver, crate::image::MAX_ECHO),
            });
        }
        if name.is_empty() {
            // An anonymous volume: its name is made.
            check_options(&name, request.options.as_ref().unwrap_or(&HashMap::new()))?;
            return Ok((name, driver));
        }
        if name.len() == 1 {
            return Err(VolumeError::TooShort { name });
        }
        if !valid_name(&name) {
            return Err(VolumeError::InvalidName {
                name: crate::image::bounded(&name, crate::image::MAX_ECHO),
            });
        }
        if !self.exists(&name)? {
            check_options(&name, request.options.as_ref().unwrap_or(&HashMap::new()))?;
        }
        Ok((name, driver))
    }

    /// Whether a volume of that name exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .store
            .get::<Volume>(DOCKER_NAMESPACE, Kind::Volume, name)?
            .is_some())
    }

    fn create_locked(&self, mut request: CreateVolume) -> Result<(Volume, bool)> {
        if request.name.as_deref().unwrap_or_default().is_empty() {
            request.name = Some(random_name().map_err(io_err("(new)", "reading /dev/urandom"))?);
        }
        let (name, driver) = self.check(&request)?;
        if let Some(existing) = self
            .store
            .get::<Volume>(DOCKER_NAMESPACE, Kind::Volume, &name)?
        {
            return Ok((existing.value, false));
        }
        let volume = Volume {
            name: name.clone(),
            driver,
            labels: request.labels,
            options: request.options,
            created_at: crate::runtime::records::now_nanos(),
        };
        // A directory without a record is a leftover: never reuse its data.
        let dir = self.volume_dir(&name);
        if std::fs::symlink_metadata(&dir).is_ok() {
            self.remove_dir(&name)?;
        }
        let data = dir.join("_data");
        std::fs::create_dir_all(&data)
            .map_err(io_err(&name, format!("creating {}", data.display())))?;
        crate::crash_point::reached("volume.create.before_record");
        let inserted = self
            .store
            .update(|tx| tx.insert(DOCKER_NAMESPACE, Kind::Volume, &name, Some(&name), &volume));
        if let Err(err) = inserted {
            let _ = self.remove_dir(&name);
            return Err(err.into());
        }
        tracing::info!(volume = %name, "volume created");
        self.event("create", &name, &[]);
        Ok((volume, true))
    }

    /// The containers that reference `name`, sorted.
    pub fn users(&self, name: &str) -> Vec<String> {
        self.lock()
            .refs
            .get(name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `container` references `name` (the volume must exist).
    pub fn add_ref(&self, name: &str, container: &str) -> Result<()> {
        let mut state = self.lock();
        self.get(name)?;
        state
            .refs
            .entry(name.to_string())
            .or_default()
            .insert(container.to_string());
        Ok(())
    }

    /// `container` no longer references `name` (nor runs with it).
    pub fn release(&self, name: &str, container: &str) {
        let mut state = self.lock();
        if let Some(users) = state.refs.get_mut(name) {
            users.remove(container);
            if users.is_empty() {
                state.refs.remove(name);
            }
        }
        drop(state);
        self.deactivate(name, container);
    }

    /// Removes an unreferenced volume. `force` (dockerd's): a volume that does not
    /// exist is no error; a referenced one is still refused.
    pub fn remove(&self, name: &str, force: bool) -> Result<()> {
        let state = self.lock();
        let users: Vec<String> = state
            .refs
            .get(name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        match self.get(name) {
            Ok(_) => {}
            Err(VolumeError::NotFound { .. }) if force => return Ok(()),
            Err(err) => return Err(err),
        }
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                users,
            });
        }
        // Unmounted first: a volume whose mount stays is not removed at all.
        self.unmount_for_removal(name)?;
        self.store
            .update(|tx| tx.delete(DOCKER_NAMESPACE, Kind::Volume, name))?;
        crate::crash_point::reached("volume.remove.after_record");
        // Out of the way while the lock is held (a create of the same name may come
        // next), deleted after; what a crash leaves is swept at the next start (a
        // name starting with '.' is never a volume's).
        let dir = self.volume_dir(name);
        let trash = random_name()
            .map(|r| self.dir.join(format!(".removing-{}", &r[..16])))
            .ok()
            .filter(|trash| std::fs::rename(&dir, trash).is_ok());
        if trash.is_none() {
            if let Err(err) = self.remove_dir(name) {
                tracing::error!(volume = %name, "{err}");
            }
        }
        drop(state);
        if let Some(trash) = trash {
            if let Err(err) = std::fs::remove_dir_all(&trash) {
                // The next start sweeps it.
                tracing::error!(volume = %name, "removing {}: {err}", trash.display());
            }
        }
        tracing::info!(volume = %name, "volume removed");
        self.event("destroy", name, &[]);
        Ok(())
    }

    /// Removes every unreferenced volume `keep` does not keep; the names removed and
    /// the bytes they held.
    pub fn prune(&self, keep: impl Fn(&Volume) -> bool) -> Result<(Vec<String>, u64)> {
        let mut removed = Vec::new();
        let mut reclaimed = 0u64;
        for volume in self.list()? {
            // dockerd's prune skips volumes with driver options: what they hold is
            // not this host's disk.
            if keep(&volume) || volume.has_options() || !self.users(&volume.name).is_empty() {
                continue;
            }
            let size = dir_size(&self.mountpoint(&volume.name));
            match self.remove(&volume.name, false) {
                Ok(()) => {
                    reclaimed += size;
                    removed.push(volume.name);
                }
                // Taken meanwhile: kept.
                Err(VolumeError::InUse { .. }) | Err(VolumeError::NotFound { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        Ok((removed, reclaimed))
    }

    /// Size and reference count (`docker system df`); size -1 for a volume with
    /// driver options, as dockerd does not measure what a driver mounts.
    pub fn usage(&self, volume: &Volume) -> Usage {
        let ref_count = self.users(&volume.name).len() as i64;
        let size = if volume.has_options() {
            -1
        } else {
            i64::try_from(dir_size(&self.mountpoint(&volume.name))).unwrap_or(i64::MAX)
        };
        Usage { size, ref_count }
    }

    /// `container` is about to run with `name` (mounted at `destination`): a
    /// mounted-kind volume is mounted on its `_data` if this is its first user (and it
    /// is not mounted yet). Idempotent; the `mount` event (dockerd's, one per
    /// container start) is sent when the container was not running with it yet.
    pub fn activate(&self, name: &str, container: &str, mount: &MountEvent) -> Result<()> {
        let mut state = self.lock();
        let volume = self.get(name)?;
        let data = self.mountpoint(name);
        if !data.exists() {
            std::fs::create_dir_all(&data)
                .map_err(io_err(name, format!("creating {}", data.display())))?;
        }
        if volume.is_mounted_kind()
            && !mount::is_mount_point(&data)
                .map_err(io_err(name, "reading /proc/self/mountinfo"))?
        {
            let options = volume.options.clone().unwrap_or_default();
            mount::mount_volume(&options, &data).map_err(|cause| VolumeError::Mount {
                path: data.display().to_string(),
                cause,
            })?;
            tracing::info!(volume = %name, "volume mounted");
        }
        let fresh = state
            .active
            .entry(name.to_string())
            .or_default()
            .insert(container.to_string());
        if fresh && !mount.quiet {
            self.event(
                "mount",
                name,
                &[
                    ("container", container.to_string()),
                    ("destination", mount.destination.clone()),
                    ("propagation", mount.propagation.clone()),
                    ("read/write", (!mount.readonly).to_string()),
                ],
            );
        }
        Ok(())
    }

    /// `container` no longer runs with `name`: the last one out unmounts a
    /// mounted-kind volume. Errors are logged (the next start retries).
    pub fn deactivate(&self, name: &str, container: &str) {
        self.deactivate_with(name, container, false)
    }

    /// [`deactivate`](Self::deactivate), with no `unmount` event when `quiet` (a
    /// holder that is not a container run, such as a `docker cp`).
    pub fn deactivate_with(&self, name: &str, container: &str, quiet: bool) {
        let mut state = self.lock();
        let Some(users) = state.active.get_mut(name) else {
            return;
        };
        if !users.remove(container) {
            return;
        }
        let last = users.is_empty();
        if last {
            state.active.remove(name);
            self.unmount_if_mounted_kind(name);
        }
        if !quiet {
            self.event("unmount", name, &[("container", container.to_string())]);
        }
    }

    fn unmount_if_mounted_kind(&self, name: &str) {
        let Ok(volume) = self.get(name) else {
            return;
        };
        if !volume.is_mounted_kind() {
            return;
        }
        let data = self.mountpoint(name);
        match mount::unmount_all(&data) {
            Ok(()) => tracing::info!(volume = %name, "volume unmounted"),
            Err(err) => tracing::error!(volume = %name, "unmounting {}: {err}", data.display()),
        }
    }

    /// After recovery: mounted-kind volumes that no live container uses are
    /// unmounted (their users stopped while wharfd was down).
    pub fn unmount_unused(&self) {
        let Ok(volumes) = self.list() else {
            return;
        };
        let state = self.lock();
        for volume in volumes.iter().filter(|v| v.is_mounted_kind()) {
            if state
                .active
                .get(&volume.name)
                .is_some_and(|u| !u.is_empty())
            {
                continue;
            }
            if mount::is_mount_point(&self.mountpoint(&volume.name)).unwrap_or(false) {
                self.unmount_if_mounted_kind(&volume.name);
            }
        }
    }
}

/// 64 random hex digits (dockerd's anonymous volume names).
pub fn random_name() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Bytes of the regular files below `dir` (not following symlinks, not crossing into
/// other filesystems).
pub fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let device = top.dev();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                if meta.dev() == device {
                    stack.push(entry.path());
                }
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> (tempfile::TempDir, VolumeService) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let volumes = VolumeService::open(dir.path(), store).unwrap();
        (dir, volumes)
    }

    fn named(name: &str) -> CreateVolume {
        CreateVolume {
            name: Some(name.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn names_follow_dockerd() {
        assert!(valid_name("data"));
        assert!(valid_name("a.b-c_d"));
        assert!(!valid_name("a"));
        assert!(!valid_name(".."));
        assert!(!valid_name("../x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("-a"));
        assert!(!valid_name(""));
    }

    #[test]
    fn create_get_remove_and_refs() {
        let (_dir, volumes) = service();
        let v = volumes.create(named("data")).unwrap();
        assert_eq!(v.driver, "local");
        assert!(volumes.mountpoint("data").is_dir());
        // Idempotent.
        assert_eq!(volumes.create(named("data")).unwrap(), v);
        volumes.add_ref("data", "c1").unwrap();
        let err = volumes.remove("data", true).unwrap_err();
        assert_eq!(err.to_string(), "remove data: volume is in use - [c1]");
        volumes.release("data", "c1");
        volumes.remove("data", false).unwrap();
        assert!(!volumes.volume_dir("data").exists());
        let err = volumes.remove("data", false).unwrap_err();
        assert_eq!(err.to_string(), "get data: no such volume");
        volumes.remove("data", true).unwrap();
    }

    #[test]
    fn bad_input_is_refused_and_makes_nothing() {
        let (_dir, volumes) = service();
        let err = volumes.create(named("a/b")).unwrap_err();
        assert!(
            err.to_string().contains("includes invalid characters"),
            "{err}"
        );
        let err = volumes
            .create(CreateVolume {
                name: Some("x1".into()),
                driver: "nfs-plugin".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "create x1: error looking up volume plugin nfs-plugin: plugin \"nfs-plugin\" not found"
        );
        let err = volumes
            .create(CreateVolume {
                name: Some("x2".into()),
                options: Some(HashMap::from([("bogus".into(), "1m".into())])),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "create x2: invalid option: \"bogus\"");
        let err = volumes
            .create(CreateVolume {
                name: Some("x3".into()),
                options: Some(HashMap::from([("type".into(), "tmpfs".into())])),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "create x3: missing required option: \"device\""
        );
        assert!(volumes.list().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&volumes.dir).unwrap().count(), 0);
    }

    #[test]
    fn directories_without_records_are_swept_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        {
            let volumes = VolumeService::open(dir.path(), store.clone()).unwrap();
            volumes.create(named("kept")).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("volumes/halfmade/_data")).unwrap();
        std::fs::write(dir.path().join("volumes/kept/_data/f"), "x").unwrap();
        let volumes = VolumeService::open(dir.path(), store).unwrap();
        assert!(!dir.path().join("volumes/halfmade").exists());
        assert!(dir.path().join("volumes/kept/_data/f").exists());
        assert_eq!(volumes.list().unwrap().len(), 1);
    }

    #[test]
    fn sizes_as_go_units_reads_them() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1.5GB"), Some(3 << 29));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("-1k"), None);
    }

    #[test]
    fn removal_leaves_no_directory_behind_and_a_same_name_create_is_fresh() {
        let (_dir, volumes) = service();
        volumes.create(named("again")).unwrap();
        std::fs::write(volumes.mountpoint("again").join("f"), "old").unwrap();
        volumes.remove("again", false).unwrap();
        assert_eq!(std::fs::read_dir(&volumes.dir).unwrap().count(), 0);
        volumes.create(named("again")).unwrap();
        assert!(!volumes.mountpoint("again").join("f").exists());
    }

    #[test]
    fn anonymous_names_are_64_hex() {
        let (_dir, volumes) = service();
        let v = volumes.create(CreateVolume::default()).unwrap();
        assert_eq!(v.name.len(), 64);
        assert!(v.name.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn prune_keeps_referenced_volumes() {
        let (_dir, volumes) = service();
        volumes.create(named("used")).unwrap();
        volumes.create(named("unused")).unwrap();
        volumes.add_ref("used", "c").unwrap();
        let (removed, _) = volumes.prune(|_| false).unwrap();
        assert_eq!(removed, vec!["unused".to_string()]);
        assert_eq!(volumes.list().unwrap().len(), 1);
    }
}
