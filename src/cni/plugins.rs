//! The CNI executor: runs the plugins of the selected config list for ADD, DEL, CHECK
//! and STATUS, with the result cache (see the module doc of [`super`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use super::cache::{self, CacheEntry};
use super::config::{self, NetworkConfigList, PluginConfig, Version};
use super::exec::{self, Command, Invocation, Target};
use super::{join_dirs, Attachment, CniConfig, CniError, CniResult, RuntimeConfig};

/// The conf dir listing a loaded network came from, so an unchanged dir is not re-read.
struct Loaded {
    stamps: Vec<config::FileStamp>,
    network: Option<Arc<NetworkConfigList>>,
}

/// The CNI executor. Cheap to share (`Arc<Cni>`); holds no per-pod state in memory.
pub struct Cni {
    config: CniConfig,
    loaded: Mutex<Option<Loaded>>,
}

impl Cni {
    pub fn new(config: CniConfig) -> Cni {
        Cni {
            config,
            loaded: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    /// Loads the network: the lexically first valid `.conflist` / `.conf` / `.json`
    /// file in conf_dir. Broken files are skipped with a warning naming the file and
    /// why. `None` when no usable config exists. Only the dir listing is read when
    /// nothing changed (file names, inodes, mtimes and sizes).
    pub fn network(&self) -> Result<Option<Arc<NetworkConfigList>>, CniError> {
        let dir = &self.config.conf_dir;
        let stamps = config::list_candidates(dir)
            .map_err(|source| CniError::Io {
                context: format!("cannot list CNI config dir {}", dir.display()),
                source,
            })?
            .unwrap_or_default();
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(loaded) = loaded.as_ref() {
            if loaded.stamps == stamps {
                return Ok(loaded.network.clone());
            }
        }
        let network = config::load_first(dir, &stamps).map(Arc::new);
        let previous = loaded.as_ref().and_then(|l| l.network.clone());
        if network != previous {
            match &network {
                Some(net) => tracing::info!(
                    network = %net.name,
                    file = %net.source.display(),
                    cni_version = %net.cni_version,
                    "CNI network config loaded"
                ),
                None => tracing::info!(dir = %dir.display(), "no CNI network config"),
            }
        }
        *loaded = Some(Loaded {
            stamps,
            network: network.clone(),
        });
        Ok(network)
    }

    /// `Ok(())` when a network config exists and all its plugins are found; for
    /// cniVersion 1.1.0 and later, also when every plugin answers STATUS. The error is
    /// the message for NetworkReady.
    pub async fn ready(&self) -> Result<(), CniError> {
        let network = self.network()?.ok_or_else(|| CniError::NoNetwork {
            dir: self.config.conf_dir.clone(),
        })?;
        let paths = self.plugin_paths(&network)?;
        if network.version >= Version::V1_1_0 {
            for (plugin, path) in network.plugins.iter().zip(&paths) {
                let stdin = network.plugin_stdin(plugin, None, &RuntimeConfig::default());
                self.run(&network, plugin, path, Command::Status, None, stdin)
                    .await?;
            }
        }
        Ok(())
    }

    /// ADD: runs the chain in order, each plugin getting the previous one's result, and
    /// returns the last result. On failure the whole chain is deleted again (best
    /// effort) before the error is returned.
    pub async fn add(&self, attachment: &Attachment) -> Result<CniResult, CniError> {
        let args = validate(attachment)?;
        let network = self.network()?.ok_or_else(|| CniError::NoNetwork {
            dir: self.config.conf_dir.clone(),
        })?;
        // Every plugin must exist before anything is changed.
        let paths = self.plugin_paths(&network)?;
        let mut entry = CacheEntry {
            kind: cache::KIND.into(),
            network_name: network.name.clone(),
            container_id: attachment.container_id.clone(),
            if_name: attachment.ifname.clone(),
            netns: attachment.netns.clone(),
            cni_args: attachment.args.clone(),
            capability_args: attachment.capability_args.clone(),
            config: network.raw.clone(),
            result: None,
        };
        let cache_path = self.write_cache(&entry)?;
        let target = Target {
            container_id: &attachment.container_id,
            netns: &path_str(&attachment.netns),
            ifname: &attachment.ifname,
            args: &args,
        };
        let mut prev: Option<Value> = None;
        let added = self
            .add_chain(
                &network,
                &paths,
                &target,
                &attachment.capability_args,
                &mut prev,
            )
            .await;
        let added = match added {
            Ok(result) => {
                entry.result = Some(result.raw().clone());
                self.write_cache(&entry).map(|_| result)
            }
            Err(err) => Err(err),
        };
        match added {
            Ok(result) => {
                tracing::info!(
                    network = %network.name,
                    container_id = %attachment.container_id,
                    ifname = %attachment.ifname,
                    ips = ?result.pod_ips(),
                    "CNI ADD done"
                );
                Ok(result)
            }
            Err(err) => {
                tracing::warn!(
                    network = %network.name,
                    container_id = %attachment.container_id,
                    error = %err,
                    "CNI ADD failed; deleting what the chain made"
                );
                let undone = self
                    .del_chain(
                        &network,
                        &target,
                        &attachment.capability_args,
                        prev.as_ref(),
                    )
                    .await;
                match undone {
                    Ok(()) => {
                        if let Err(remove) = cache::remove(&cache_path) {
                            tracing::warn!(path = %cache_path.display(), error = %remove, "cannot remove CNI cache entry");
                        }
                    }
                    // The pending entry stays, so a later del() tries again.
                    Err(del_err) => tracing::warn!(
                        network = %network.name,
                        container_id = %attachment.container_id,
                        error = %del_err,
                        "CNI DEL after a failed ADD failed too"
                    ),
                }
                Err(err)
            }
        }
    }

    /// DEL: runs the chain of the cached ADD in reverse with its result as
    /// `prevResult`, then removes the cache entry. Succeeds when nothing is cached
    /// (never added, or already deleted). A netns path that is no longer a network
    /// namespace is passed as an empty CNI_NETNS, as the spec allows, so plugins still
    /// release addresses.
    pub async fn del(&self, attachment: &Attachment) -> Result<(), CniError> {
        validate(attachment)?;
        let candidates = self.cache_candidates(attachment)?;
        for path in candidates {
            match cache::read(&path) {
                Ok(None) => {}
                Ok(Some(entry)) => {
                    if entry.container_id == attachment.container_id
                        && entry.if_name == attachment.ifname
                    {
                        self.del_cached(attachment, &path, entry).await?;
                    }
                }
                Err(reason) => self.del_corrupt(attachment, &path, &reason).await?,
            }
        }
        Ok(())
    }

    /// CHECK (cniVersion 0.4.0 and later): runs the cached chain in order with the
    /// cached result as `prevResult`. `disableCheck` in the config makes it succeed
    /// without running anything.
    pub async fn check(&self, attachment: &Attachment) -> Result<(), CniError> {
        validate(attachment)?;
        let not_attached = || CniError::NotAttached {
            container_id: attachment.container_id.clone(),
            ifname: attachment.ifname.clone(),
        };
        let (path, entry) = self.find_cached(attachment)?.ok_or_else(not_attached)?;
        let result = entry.result.clone().ok_or_else(not_attached)?;
        let network = cached_network(&path, &entry)?;
        if network.version < Version::V0_4_0 {
            return Err(CniError::Unsupported {
                network: network.name.clone(),
                version: network.cni_version.clone(),
                command: Command::Check.as_str(),
            });
        }
        if network.disable_check {
            return Ok(());
        }
        let paths = self.plugin_paths(&network)?;
        let args = cached_args(&path, &entry)?;
        let netns = if attachment.netns.as_os_str().is_empty() {
            &entry.netns
        } else {
            &attachment.netns
        };
        let target = Target {
            container_id: &entry.container_id,
            netns: &path_str(netns),
            ifname: &entry.if_name,
            args: &args,
        };
        for (plugin, plugin_path) in network.plugins.iter().zip(&paths) {
            let stdin = network.plugin_stdin(plugin, Some(&result), &entry.capability_args);
            self.run(
                &network,
                plugin,
                plugin_path,
                Command::Check,
                Some(&target),
                stdin,
            )
            .await?;
        }
        Ok(())
    }

    async fn add_chain(
        &self,
        network: &NetworkConfigList,
        paths: &[PathBuf],
        target: &Target<'_>,
        runtime: &RuntimeConfig,
        prev: &mut Option<Value>,
    ) -> Result<CniResult, CniError> {
        let mut last = None;
        for (plugin, path) in network.plugins.iter().zip(paths) {
            let stdin = network.plugin_stdin(plugin, prev.as_ref(), runtime);
            let out = self
                .run(network, plugin, path, Command::Add, Some(target), stdin)
                .await?;
            let bad = |reason: String| CniError::BadOutput {
                network: network.name.clone(),
                plugin: plugin.plugin_type.clone(),
                command: Command::Add.as_str(),
                reason,
            };
            if out.iter().all(u8::is_ascii_whitespace) {
                return Err(bad("no result on stdout".into()));
            }
            let value: Value = serde_json::from_slice(&out)
                .map_err(|err| bad(format!("result is not JSON: {err}")))?;
            let parsed = CniResult::parse(value.clone(), &network.cni_version).map_err(bad)?;
            *prev = Some(value);
            last = Some(parsed);
        }
        // A list has at least one plugin (validated), so this is always set.
        last.ok_or_else(|| CniError::BadConfig {
            file: network.source.clone(),
            reason: "no plugins".into(),
        })
    }

    /// Runs DEL for the whole chain in reverse; stops at the first failure, as libcni.
    async fn del_chain(
        &self,
        network: &NetworkConfigList,
        target: &Target<'_>,
        runtime: &RuntimeConfig,
        prev_result: Option<&Value>,
    ) -> Result<(), CniError> {
        // Before 0.4.0, DEL took no prevResult.
        let prev_result = prev_result.filter(|_| network.version >= Version::V0_4_0);
        let paths = self.plugin_paths(network)?;
        for (plugin, path) in network.plugins.iter().zip(&paths).rev() {
            let stdin = network.plugin_stdin(plugin, prev_result, runtime);
            self.run(network, plugin, path, Command::Del, Some(target), stdin)
                .await?;
        }
        Ok(())
    }

    async fn del_cached(
        &self,
        attachment: &Attachment,
        path: &Path,
        entry: CacheEntry,
    ) -> Result<(), CniError> {
        let network = cached_network(path, &entry)?;
        let args = cached_args(path, &entry)?;
        let netns = if attachment.netns.as_os_str().is_empty() {
            &entry.netns
        } else {
            &attachment.netns
        };
        let netns = live_netns(netns);
        if netns.is_empty() {
            tracing::debug!(
                network = %network.name,
                container_id = %entry.container_id,
                "network namespace is gone; CNI DEL with an empty CNI_NETNS"
            );
        }
        let target = Target {
            container_id: &entry.container_id,
            netns: &netns,
            ifname: &entry.if_name,
            args: &args,
        };
        self.del_chain(
            &network,
            &target,
            &entry.capability_args,
            entry.result.as_ref(),
        )
        .await?;
        cache::remove(path).map_err(|source| CniError::Io {
            context: format!("cannot remove CNI cache entry {}", path.display()),
            source,
        })?;
        tracing::info!(
            network = %network.name,
            container_id = %entry.container_id,
            ifname = %entry.if_name,
            "CNI DEL done"
        );
        Ok(())
    }

    /// An unreadable cache entry (never written by this code: writes are atomic) must
    /// not make a pod undeletable: DEL with the current network, if any, then drop it.
    async fn del_corrupt(
        &self,
        attachment: &Attachment,
        path: &Path,
        reason: &str,
    ) -> Result<(), CniError> {
        tracing::warn!(path = %path.display(), %reason, "unreadable CNI cache entry; deleting with the current network config");
        if let Some(network) = self.network()? {
            let args = exec::format_args(&attachment.args).map_err(CniError::InvalidAttachment)?;
            let target = Target {
                container_id: &attachment.container_id,
                netns: &live_netns(&attachment.netns),
                ifname: &attachment.ifname,
                args: &args,
            };
            self.del_chain(&network, &target, &attachment.capability_args, None)
                .await?;
        }
        cache::remove(path).map_err(|source| CniError::Io {
            context: format!("cannot remove CNI cache entry {}", path.display()),
            source,
        })
    }

    /// Cache files that may hold `attachment`'s entry.
    fn cache_candidates(&self, attachment: &Attachment) -> Result<Vec<PathBuf>, CniError> {
        cache::candidates(
            &self.config.cache_dir,
            &attachment.container_id,
            &attachment.ifname,
        )
        .map_err(|source| CniError::Io {
            context: format!(
                "cannot list CNI result cache {}",
                self.config.cache_dir.display()
            ),
            source,
        })
    }

    /// The cache entry of `attachment`, preferring one with a result.
    fn find_cached(
        &self,
        attachment: &Attachment,
    ) -> Result<Option<(PathBuf, CacheEntry)>, CniError> {
        let candidates = self.cache_candidates(attachment)?;
        let mut found: Option<(PathBuf, CacheEntry)> = None;
        for path in candidates {
            let entry = cache::read(&path).map_err(|reason| CniError::Cache {
                path: path.clone(),
                reason,
            })?;
            let Some(entry) = entry else { continue };
            if entry.container_id != attachment.container_id || entry.if_name != attachment.ifname {
                continue;
            }
            let better = match &found {
                None => true,
                Some((_, current)) => current.result.is_none() && entry.result.is_some(),
            };
            if better {
                found = Some((path, entry));
            }
        }
        Ok(found)
    }

    fn plugin_paths(&self, network: &NetworkConfigList) -> Result<Vec<PathBuf>, CniError> {
        network
            .plugins
            .iter()
            .map(|plugin| {
                exec::find_plugin(&plugin.plugin_type, &self.config.plugin_dirs).ok_or_else(|| {
                    CniError::PluginNotFound {
                        network: network.name.clone(),
                        plugin: plugin.plugin_type.clone(),
                        dirs: self.config.plugin_dirs.clone(),
                    }
                })
            })
            .collect()
    }

    fn write_cache(&self, entry: &CacheEntry) -> Result<PathBuf, CniError> {
        cache::write(&self.config.cache_dir, entry).map_err(|source| CniError::Io {
            context: format!(
                "cannot write CNI result cache entry in {}",
                self.config.cache_dir.display()
            ),
            source,
        })
    }

    async fn run(
        &self,
        network: &NetworkConfigList,
        plugin: &PluginConfig,
        path: &Path,
        command: Command,
        target: Option<&Target<'_>>,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, CniError> {
        tracing::debug!(
            network = %network.name,
            plugin = %plugin.plugin_type,
            command = command.as_str(),
            container_id = target.map(|t| t.container_id).unwrap_or_default(),
            "running CNI plugin"
        );
        let cni_path = join_dirs(&self.config.plugin_dirs);
        let invocation = Invocation {
            network: &network.name,
            plugin: &plugin.plugin_type,
            path,
            command,
            target: target.map(|t| Target {
                container_id: t.container_id,
                netns: t.netns,
                ifname: t.ifname,
                args: t.args,
            }),
            cni_path: &cni_path,
            stdin,
        };
        exec::run(invocation, self.config.timeout).await
    }
}

/// Checks what ends up in file names and the environment; returns CNI_ARGS.
fn validate(attachment: &Attachment) -> Result<String, CniError> {
    let id = &attachment.container_id;
    // The spec's rule for CNI_CONTAINERID; it is also part of the cache file name.
    let id_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !id_ok {
        return Err(CniError::InvalidAttachment(format!(
            "container id {id:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )));
    }
    let ifname = &attachment.ifname;
    // Linux interface name rules (dev_valid_name).
    let if_ok = !ifname.is_empty()
        && ifname.len() < 16
        && ifname != "."
        && ifname != ".."
        && !ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if !if_ok {
        return Err(CniError::InvalidAttachment(format!(
            "interface name {ifname:?} is not a valid Linux interface name"
        )));
    }
    if attachment.netns.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(CniError::InvalidAttachment(
            "netns path contains NUL".into(),
        ));
    }
    exec::format_args(&attachment.args).map_err(CniError::InvalidAttachment)
}

fn cached_network(path: &Path, entry: &CacheEntry) -> Result<NetworkConfigList, CniError> {
    NetworkConfigList::from_list(entry.config.clone(), path).map_err(|reason| CniError::Cache {
        path: path.to_path_buf(),
        reason: format!("cached network config: {reason}"),
    })
}

fn cached_args(path: &Path, entry: &CacheEntry) -> Result<String, CniError> {
    exec::format_args(&entry.cni_args).map_err(|reason| CniError::Cache {
        path: path.to_path_buf(),
        reason,
    })
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `path` if it is a network namespace file that still exists, else "": statfs(2) must
/// say nsfs (a pin whose namespace is gone is an empty file on the parent filesystem).
fn live_netns(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        return String::new();
    }
    match nix::sys::statfs::statfs(path) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => path_str(path),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    fn attachment(id: &str, ifname: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            netns: "/proc/self/ns/net".into(),
            ifname: ifname.into(),
            args: vec![("IgnoreUnknown".into(), "1".into())],
            capability_args: RuntimeConfig::default(),
        }
    }

    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let cni = Cni::new(CniConfig::default());
        let a = attachment("abc", "eth0");
        send(&cni.add(&a));
        send(&cni.del(&a));
        send(&cni.check(&a));
        send(&cni.ready());
    }

    #[test]
    fn attachment_validation() {
        assert_eq!(
            validate(&attachment("abc123", "eth0")).unwrap(),
            "IgnoreUnknown=1"
        );
        for id in ["", "../x", "a/b", "-a", "a b"] {
            assert!(validate(&attachment(id, "eth0")).is_err(), "{id:?}");
        }
        for ifname in ["", ".", "..", "a/b", "eth:0", "0123456789abcdef", "a b"] {
            assert!(validate(&attachment("abc", ifname)).is_err(), "{ifname:?}");
        }
    }

    #[test]
    fn live_netns_only_for_nsfs() {
        assert_eq!(
            live_netns(Path::new("/proc/self/ns/net")),
            "/proc/self/ns/net"
        );
        assert_eq!(live_netns(Path::new("/nonexistent/netns")), "");
        assert_eq!(live_netns(Path::new("/proc/self/status")), "");
        assert_eq!(live_netns(Path::new("")), "");
    }

    #[test]
    fn error_messages_name_network_and_plugin() {
        let err = CniError::PluginNotFound {
            network: "podnet".into(),
            plugin: "bridge".into(),
            dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
        };
        assert_eq!(
            err.to_string(),
            "network podnet: plugin bridge not found in /opt/cni/bin:/usr/lib/cni"
        );
        let err = CniError::Plugin {
            network: "podnet".into(),
            plugin: "fail".into(),
            command: "ADD",
            code: 7,
            msg: "boom".into(),
            details: "more".into(),
        };
        assert_eq!(
            err.to_string(),
            "network podnet: plugin fail ADD failed: CNI error 7: boom (more)"
        );
        assert_eq!(err.code(), Some(7));
        assert_eq!(
            CniError::NoNetwork {
                dir: "/etc/cni/net.d".into()
            }
            .to_string(),
            "no network config found in /etc/cni/net.d"
        );
    }

    #[test]
    fn network_is_cached_until_the_dir_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni::new(CniConfig {
            conf_dir: dir.path().join("net.d"),
            plugin_dirs: vec![dir.path().join("bin")],
            cache_dir: dir.path().join("cache"),
            timeout: Duration::from_secs(5),
        });
        assert!(cni.network().unwrap().is_none(), "missing dir");
        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        assert!(cni.network().unwrap().is_none(), "empty dir");
        let file = dir.path().join("net.d/10-a.conflist");
        std::fs::write(
            &file,
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        let first = cni.network().unwrap().unwrap();
        let second = cni.network().unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &second), "unchanged dir is not re-read");
        // Replaced atomically with another content: reloaded.
        let temp = dir.path().join("net.d/.tmp");
        std::fs::write(
            &temp,
            r#"{"cniVersion":"1.0.0","name":"renamed","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::rename(&temp, &file).unwrap();
        assert_eq!(cni.network().unwrap().unwrap().name, "renamed");
        std::fs::remove_file(&file).unwrap();
        assert!(cni.network().unwrap().is_none());
    }

    #[tokio::test]
    async fn ready_names_missing_config_and_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let cni = Cni::new(CniConfig {
            conf_dir: conf.clone(),
            plugin_dirs: vec![bin.clone()],
            cache_dir: dir.path().join("cache"),
            timeout: Duration::from_secs(5),
        });
        let err = cni.ready().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no network config found in {}", conf.display())
        );
        std::fs::write(
            conf.join("10-n.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"fake"}]}"#,
        )
        .unwrap();
        let err = cni.ready().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("network n: plugin fake not found in {}", bin.display())
        );
        std::fs::write(bin.join("fake"), "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(bin.join("fake"), std::fs::Permissions::from_mode(0o755)).unwrap();
        cni.ready().await.unwrap();
    }

    #[tokio::test]
    async fn del_without_cache_is_a_no_op_and_check_needs_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni::new(CniConfig {
            conf_dir: dir.path().join("net.d"),
            plugin_dirs: vec![],
            cache_dir: dir.path().join("cache"),
            timeout: Duration::from_secs(5),
        });
        let a = attachment("abc", "eth0");
        cni.del(&a).await.unwrap();
        let err = cni.check(&a).await.unwrap_err();
        assert!(matches!(err, CniError::NotAttached { .. }), "{err}");
        let err = cni.add(&a).await.unwrap_err();
        assert!(matches!(err, CniError::NoNetwork { .. }), "{err}");
    }
}
