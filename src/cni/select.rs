//! Which network a pod joins: the CNI network, the built-in bridge, or (mode `auto`)
//! the CNI network when its conf dir holds one and the bridge otherwise; the calls
//! then go to the CNI executor ([`super::plugins`]) or the bridge.

use std::sync::Arc;

use super::{bridge, Attachment, Cni, CniError, CniResult, NetworkConfigList};
use crate::config::NetworkMode;

/// The network a pod is attached to.
#[derive(Debug, Clone)]
pub enum Selected {
    Cni(Arc<NetworkConfigList>),
    Bridge,
}

/// Pod networking as configured: the CNI network, the built-in bridge, or (mode
/// `auto`) the CNI network when its conf dir holds one and the bridge otherwise.
pub struct Networks {
    mode: NetworkMode,
    cni: Cni,
    bridge: bridge::BridgeNetwork,
    /// User-defined networks.
    registry: Arc<crate::network::NetworkRegistry>,
}

impl Networks {
    pub fn new(
        mode: NetworkMode,
        cni: Cni,
        bridge: bridge::BridgeNetwork,
        registry: Arc<crate::network::NetworkRegistry>,
    ) -> Networks {
        Networks {
            mode,
            cni,
            bridge,
            registry,
        }
    }

    pub fn registry(&self) -> &Arc<crate::network::NetworkRegistry> {
        &self.registry
    }

    /// The built-in bridge (its name; its subnet once set up).
    pub fn bridge(&self) -> &bridge::BridgeNetwork {
        &self.bridge
    }

    pub fn cni(&self) -> &Cni {
        &self.cni
    }

    /// The network new pods are attached to now; `None` in mode `none`. In mode `cni`
    /// without a usable config this is an error (as containerd refuses pods then).
    pub fn select(&self) -> Result<Option<Selected>, CniError> {
        match self.mode {
            NetworkMode::None => Ok(None),
            NetworkMode::Bridge => Ok(Some(Selected::Bridge)),
            NetworkMode::Cni => match self.cni.network()? {
                Some(network) => Ok(Some(Selected::Cni(network))),
                None => Err(CniError::NoNetwork {
                    dir: self.cni.config().conf_dir.clone(),
                }),
            },
            NetworkMode::Auto => Ok(Some(match self.cni.network()? {
                Some(network) => Selected::Cni(network),
                None => Selected::Bridge,
            })),
        }
    }

    pub fn name(&self, selected: &Selected) -> String {
        match selected {
            Selected::Cni(network) => network.name.clone(),
            Selected::Bridge => self.bridge.name().to_string(),
        }
    }

    /// NetworkReady: the selected network is usable (for the bridge, it is set up).
    pub async fn ready(&self) -> Result<(), CniError> {
        match self.mode {
            NetworkMode::None => Ok(()),
            NetworkMode::Cni => self.cni.ready().await,
            NetworkMode::Bridge => Ok(self.bridge.ready().await?),
            NetworkMode::Auto => match self.cni.network()? {
                Some(_) => self.cni.ready().await,
                None => Ok(self.bridge.ready().await?),
            },
        }
    }

    pub async fn add(
        &self,
        selected: &Selected,
        attachment: &Attachment,
    ) -> Result<CniResult, CniError> {
        match selected {
            Selected::Cni(_) => self.cni.add(attachment).await,
            Selected::Bridge => Ok(self.bridge.add(attachment).await?),
        }
    }

    /// Detaches from whichever network the attachment was made on: both are asked, and
    /// each does nothing when it holds nothing for the attachment (so a detach works
    /// after the mode or the CNI config changed).
    pub async fn del(&self, attachment: &Attachment) -> Result<(), CniError> {
        self.cni.del(attachment).await?;
        self.bridge.del(attachment).await?;
        self.registry
            .detach_pod(&attachment.container_id)
            .await
            .map_err(|err| CniError::Io {
                context: format!(
                    "detaching pod {} from its user-defined networks",
                    attachment.container_id
                ),
                source: std::io::Error::other(err.to_string()),
            })
    }

    /// Start-up reconcile: built-in bridge leases of pods that no longer exist are
    /// released (a CNI attachment is only known through its cache entry, which DEL of
    /// the pod removes).
    pub async fn release_unowned(&self, owned: &std::collections::HashSet<String>) {
        self.bridge.release_unowned(owned).await;
        self.registry.recover(owned).await
    }

    /// The built-in bridge network's name: the only network ports are published on.
    pub fn bridge_name(&self) -> &str {
        self.bridge.name()
    }

    /// Publishes host ports for an interface attached to the built-in bridge (Docker's
    /// `-p`, while a container runs): see [`bridge::BridgeNetwork::publish`].
    pub async fn publish(
        &self,
        attachment: &Attachment,
        requests: &[bridge::PublishRequest],
    ) -> Result<Vec<super::PortMapping>, CniError> {
        Ok(self.bridge.publish(attachment, requests).await?)
    }

    /// Withdraws what [`publish`](Self::publish) made; nothing published is fine.
    pub async fn unpublish(&self, attachment: &Attachment) -> Result<(), CniError> {
        Ok(self.bridge.unpublish(attachment).await?)
    }

    pub async fn check(
        &self,
        selected: &Selected,
        attachment: &Attachment,
    ) -> Result<(), CniError> {
        match selected {
            Selected::Cni(_) => self.cni.check(attachment).await,
            Selected::Bridge => Ok(self.bridge.check(attachment).await?),
        }
    }
}
