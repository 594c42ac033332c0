//! Published ports (Docker's `-p`): host ports that a container's pod gets on the
//! built-in bridge, or on the first user-defined network it joined, while the container
//! runs; a host port is given to one network only. They are chosen at each start (a host port
//! of 0 is a new pick from the ephemeral range each time, as dockerd's allocator makes
//! it), recorded in the container's record, and withdrawn when it exits or is stopped;
//! removing the pod removes them with its attachment. The DNAT rules are the bridge's
//! host-port rules: no proxy process, and they outlive a wharfd restart as the container
//! does.

use super::model::{PortMapping, Protocol};
use super::pod::attachment;
use super::records::{ContainerRecord, ContainerState, NetworkPhase, PodRecord};
use super::service::{Result, Runtime, RuntimeError};
use crate::cni::bridge::{BridgeError, PublishRequest};
use crate::cni::CniError;

impl Runtime {
    /// Publishes `container`'s ports on its pod's attachment and records the host ports
    /// chosen. A pod without a network attachment (host network, mode `none`) publishes
    /// nothing, as dockerd discards published ports on the host network.
    pub(super) async fn publish_ports(&self, container: &ContainerRecord) -> Result<()> {
        if container.spec.published_ports.is_empty() {
            return Ok(());
        }
        let pod = self.pod(&container.pod_id).ok_or_else(|| {
            RuntimeError::FailedPrecondition(format!(
                "container {}: its pod {} is gone",
                container.id, container.pod_id
            ))
        })?;
        let Some(network) = pod
            .network
            .as_ref()
            .filter(|n| n.phase == NetworkPhase::Attached)
        else {
            return Ok(());
        };
        let requests: Vec<PublishRequest> = container
            .spec
            .published_ports
            .iter()
            .map(|p| PublishRequest {
                mapping: crate::cni::PortMapping {
                    host_port: p.host_port_first,
                    container_port: p.container_port,
                    protocol: p.protocol.as_str().to_string(),
                    host_ip: p.host_ip.clone(),
                },
                host_port_last: p.host_port_last,
            })
            .collect();
        // One publish at a time: each counts the host ports every network holds.
        let _publishing = self.publish_lock.lock().await;
        let networks = self.networks();
        let chosen = if pod.spec.networks.is_empty() {
            if network.name != self.cni.bridge_name() {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "container {}: cannot publish ports: its pod is on the CNI network {}, and \
                     ports are published on wharf's networks only (the built-in bridge and \
                     user-defined ones)",
                    container.id, network.name
                )));
            }
            let elsewhere = networks.held_host_ports(None).await;
            self.cni
                .bridge()
                .publish_beside(&attachment(&pod)?, &requests, elsewhere)
                .await
                .map_err(|err| publish_error(container, &pod, CniError::from(err)))?
        } else {
            // As dockerd: on the first network the container joined (its eth0).
            let Some((first, endpoint)) = networks.endpoints_of_pod(&pod.id).into_iter().next()
            else {
                return Ok(());
            };
            let mut elsewhere = networks.held_host_ports(Some(&first.id)).await;
            elsewhere.extend(self.cni.bridge().held_host_ports().await);
            let on = crate::cni::Attachment {
                container_id: pod.id.clone(),
                netns: endpoint.netns.clone(),
                ifname: endpoint.ifname.clone(),
                ..Default::default()
            };
            networks
                .publish_ports(&first.id, &on, &requests, elsewhere)
                .await
                .map_err(|err| publish_error(container, &pod, CniError::from(err)))?
        };
        let published: Vec<PortMapping> = chosen
            .iter()
            .map(|m| PortMapping {
                protocol: match m.protocol.as_str() {
                    "udp" => Protocol::Udp,
                    "sctp" => Protocol::Sctp,
                    _ => Protocol::Tcp,
                },
                container_port: i32::from(m.container_port),
                host_port: i32::from(m.host_port),
                host_ip: m.host_ip.clone(),
            })
            .collect();
        self.update_container(&container.id, |c| {
            c.published_ports = published;
            true
        })?;
        Ok(())
    }

    /// Withdraws the ports of container `id` (when it has any to publish); it must not
    /// run. Nothing published is fine.
    pub(super) async fn withdraw_ports(&self, id: &str) -> Result<()> {
        let Some(container) = self.container(id) else {
            return Ok(());
        };
        // The spec too: a crash between publishing and recording left no record.
        if container.spec.published_ports.is_empty() && container.published_ports.is_empty() {
            return Ok(());
        }
        let attached = self.pod(&container.pod_id).filter(|p| {
            p.network
                .as_ref()
                .is_some_and(|n| n.phase == NetworkPhase::Attached)
        });
        if let Some(pod) = attached {
            if pod.spec.networks.is_empty() {
                self.cni
                    .unpublish(&attachment(&pod)?)
                    .await
                    .map_err(RuntimeError::Network)?;
            } else {
                self.networks()
                    .unpublish_pod(&pod.id)
                    .await
                    .map_err(|err| RuntimeError::Network(CniError::from(err)))?;
            }
        }
        self.update_container(id, |c| {
            let changed = !c.published_ports.is_empty();
            c.published_ports.clear();
            changed
        })?;
        Ok(())
    }

    /// After an exit the watcher saw: the ports go, unless the container was started
    /// again meanwhile (the lifecycle lock orders this against starts and stops).
    pub(super) async fn withdraw_ports_after_exit(&self, id: &str) {
        let _guard = self.lock(id).await;
        let exited = self
            .container(id)
            .is_some_and(|c| matches!(c.state, ContainerState::Exited | ContainerState::Unknown));
        if exited {
            if let Err(err) = self.withdraw_ports(id).await {
                tracing::error!(container = %id, "withdrawing published ports after its exit: {err}");
            }
        }
    }
}

/// A clash in dockerd's words (clients and scripts look for them); the rest as it is.
fn publish_error(container: &ContainerRecord, pod: &PodRecord, err: CniError) -> RuntimeError {
    if let CniError::Bridge(bridge) = &err {
        if let BridgeError::HostPortTaken {
            host_ip, host_port, ..
        } = bridge.as_ref()
        {
            tracing::warn!(container = %container.id, error = %err, "publishing a port failed");
            let ip = if host_ip.is_empty() {
                "0.0.0.0"
            } else {
                host_ip
            };
            return RuntimeError::PortAllocated(format!(
                "driver failed programming external connectivity on endpoint {} ({}): \
                 Bind for {ip}:{host_port} failed: port is already allocated",
                container.spec.name, pod.id
            ));
        }
    }
    RuntimeError::Network(err)
}
