//! A container's volumes: the volume mounts of a create are made or found (taking a
//! reference for the container, so no removal or prune takes them while it exists),
//! option-backed volumes are mounted while the container's OCI container lives, new
//! empty volumes get a copy of the image's content at their mount point, and anonymous
//! volumes go with the container when asked (Docker's `rm -v`, auto-remove).

use std::path::Path;
use std::sync::Arc;

use super::model::{Mount, VolumeSource};
use super::records::ContainerRecord;
use super::service::{blocking, Result, Runtime, RuntimeError};
use crate::volume::{CreateVolume, MountEvent, VolumeError, VolumeService};

/// The names of the volumes a container mounts.
pub(super) fn volume_names(mounts: &[Mount]) -> impl Iterator<Item = &str> {
    mounts
        .iter()
        .filter_map(|m| m.volume.as_ref())
        .map(|v| v.name.as_str())
        .filter(|n| !n.is_empty())
}

/// Before the container's record is stored: each volume mount is checked as the
/// volume's create would check it, anonymous ones get their new name, every one
/// points at its data, and named ones that do not exist yet are marked `made` (so a
/// create cut by a crash removes them again: the record names them).
pub(super) fn name_volumes(volumes: &VolumeService, mounts: &mut [Mount]) -> Result<()> {
    for mount in mounts.iter_mut() {
        let Some(source) = mount.volume.as_mut() else {
            continue;
        };
        let (name, driver) = volumes.check(&request_of(source))?;
        if name.is_empty() {
            source.name = crate::volume::random_name()
                .map_err(RuntimeError::io("naming an anonymous volume"))?;
            source.anonymous = true;
        } else {
            source.made = !volumes.exists(&name)?;
        }
        source.driver = driver;
        mount.host_path = volumes.mountpoint(&source.name).display().to_string();
    }
    Ok(())
}

fn request_of(source: &VolumeSource) -> CreateVolume {
    CreateVolume {
        name: (!source.name.is_empty()).then(|| source.name.clone()),
        driver: source.driver.clone(),
        labels: source.labels.clone(),
        options: source.options.clone(),
    }
}

/// Makes or finds each volume `mounts` name (after [`name_volumes`]), with a
/// reference for `container`; `made` says again whether this call made it. On an
/// error, what this call took is given back (the caller removes what it made).
pub(super) fn take_volumes(
    volumes: &VolumeService,
    container: &str,
    mounts: &mut [Mount],
) -> Result<()> {
    let mut taken: Vec<String> = Vec::new();
    for (i, mount) in mounts.iter_mut().enumerate() {
        let Some(source) = mount.volume.as_mut() else {
            continue;
        };
        match volumes.create_with_ref(request_of(source), container) {
            Ok((volume, new)) => {
                source.made = new && !source.anonymous;
                taken.push(volume.name);
            }
            Err(err) => {
                for name in taken {
                    volumes.release(&name, container);
                }
                tracing::warn!(container, mount = i, "volume for a mount: {err}");
                return Err(err.into());
            }
        }
    }
    Ok(())
}

/// Mounts the option-backed volumes of `mounts` for `container` (before its OCI
/// container is made); `quiet`: no `mount` events (found again after a restart).
pub(super) fn activate_volumes(
    volumes: &VolumeService,
    container: &str,
    mounts: &[Mount],
    quiet: bool,
) -> Result<()> {
    let used: Vec<&Mount> = mounts.iter().filter(|m| m.volume.is_some()).collect();
    for (i, mount) in used.iter().enumerate() {
        let Some(source) = &mount.volume else {
            continue;
        };
        let event = MountEvent {
            destination: mount.container_path.clone(),
            propagation: String::new(),
            readonly: mount.readonly,
            quiet,
        };
        if let Err(err) = volumes.activate(&source.name, container, &event) {
            for done in &used[..i] {
                if let Some(v) = &done.volume {
                    volumes.deactivate(&v.name, container);
                }
            }
            return Err(err.into());
        }
    }
    Ok(())
}

/// Copies the image's content at each new volume's mount point (in the mounted
/// `rootfs`) into the volume when it is empty, unless the mount says nocopy.
pub(super) fn copy_up_volumes(rootfs: &Path, mounts: &[Mount]) -> Result<()> {
    for (i, mount) in mounts.iter().enumerate() {
        let Some(source) = &mount.volume else {
            continue;
        };
        if source.no_copy {
            continue;
        }
        let context = || {
            format!(
                "copying the image's content at {} into volume {} (mounts[{i}])",
                mount.container_path, source.name
            )
        };
        let Some(from) = crate::volume::resolve_in_root(rootfs, &mount.container_path)
            .map_err(RuntimeError::io(context()))?
        else {
            continue;
        };
        crate::volume::copy_up(&from, Path::new(&mount.host_path))
            .map_err(RuntimeError::io(context()))?;
    }
    Ok(())
}

impl Runtime {
    /// The volume service containers take their volumes from.
    pub fn volumes(&self) -> &Arc<VolumeService> {
        &self.volumes
    }

    /// `container` no longer uses its volumes: unmounted (when last) and released.
    pub(super) fn release_volumes(&self, container: &ContainerRecord) {
        for name in volume_names(&container.spec.mounts) {
            self.volumes.release(name, &container.id);
        }
    }

    /// `container`'s OCI container is gone (it exited): its option-backed volumes are
    /// unmounted when it was their last user.
    pub(super) fn deactivate_volumes(&self, container: &ContainerRecord) {
        for name in volume_names(&container.spec.mounts) {
            self.volumes.deactivate(name, &container.id);
        }
    }

    /// Removes the anonymous volumes of a removed container (Docker's `rm -v`); one
    /// still used by another container (`--volumes-from`) is kept.
    pub async fn remove_anonymous_volumes(&self, container: &ContainerRecord) {
        self.remove_volumes_where(container, |v| v.anonymous).await
    }

    /// A create that failed (or was cut by a crash) gives back the volumes it made:
    /// anonymous ones and named ones that did not exist before it.
    pub(super) async fn remove_made_volumes(&self, container: &ContainerRecord) {
        self.remove_volumes_where(container, |v| v.anonymous || v.made)
            .await
    }

    async fn remove_volumes_where(
        &self,
        container: &ContainerRecord,
        wanted: impl Fn(&VolumeSource) -> bool,
    ) {
        let names: Vec<String> = container
            .spec
            .mounts
            .iter()
            .filter_map(|m| m.volume.as_ref())
            .filter(|v| wanted(v) && !v.name.is_empty())
            .map(|v| v.name.clone())
            .collect();
        if names.is_empty() {
            return;
        }
        let volumes = self.volumes.clone();
        let id = container.id.clone();
        let _ = blocking(move || {
            for name in names {
                match volumes.remove(&name, false) {
                    Ok(()) | Err(VolumeError::InUse { .. }) | Err(VolumeError::NotFound { .. }) => {
                    }
                    Err(err) => {
                        tracing::warn!(container = %id, volume = %name, "removing a volume of the container: {err}")
                    }
                }
            }
            Ok(())
        })
        .await;
    }
}
