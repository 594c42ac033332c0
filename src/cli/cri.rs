//! `wharf pods` and `wharf ctr`: read-only views of what the CRI (kubelet) runs on this
//! node, over wharfd's CRI socket (as `crictl pods` / `crictl ps`).

use std::path::Path;

use clap::Args as ClapArgs;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::format::{self, short_id};
use super::{out, CliError, Result};

#[derive(Debug, ClapArgs)]
pub struct PodsArgs {
    /// Only display pod IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Show only pods with this name
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub struct CtrArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Only the containers of this pod ID
    #[arg(short, long)]
    pub pod: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum CdiCommand {
    /// List the CDI devices in wharfd's spec dirs and the spec each comes from; spec
    /// files wharfd skipped are named on stderr with the reason
    #[command(visible_alias = "ls", after_help = "Examples:\n  wharf cdi list")]
    List,
}

async fn runtime(socket: &Path) -> Result<RuntimeServiceClient<Channel>> {
    let channel = crate::cri::connect(socket).await.map_err(|err| {
        let hint = if socket.exists() {
            "is wharfd running, and may this user open it (root only, mode 0660)?"
        } else {
            "the socket does not exist: start wharfd, or give --cri-socket / WHARF_CRI_SOCKET"
        };
        CliError::connect(format!(
            "Cannot connect to wharfd's CRI socket {}: {err}; {hint}",
            socket.display()
        ))
    })?;
    Ok(RuntimeServiceClient::new(channel))
}

/// `wharf cdi list`: what wharfd itself finds (its `[cdi] spec_dirs`, read afresh),
/// from the CRI's `Status(verbose)`.
pub async fn cdi_list(socket: &Path) -> Result<()> {
    let mut client = runtime(socket).await?;
    let status = client
        .status(cri::StatusRequest { verbose: true })
        .await
        .map_err(|s| CliError::internal(format!("Status: {}", s.message())))?
        .into_inner();
    let cdi: serde_json::Value = status
        .info
        .get("cdi")
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or_else(|| CliError::internal("wharfd's status has no CDI information".to_string()))?;
    let mut text = String::from("DEVICE\tSPEC\n");
    for device in cdi["devices"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "{}\t{}\n",
            device["name"].as_str().unwrap_or_default(),
            device["spec"].as_str().unwrap_or_default()
        ));
    }
    out(&format::align(&text));
    for skipped in cdi["specErrors"].as_array().into_iter().flatten() {
        eprintln!(
            "skipped spec {}: {}",
            skipped["path"].as_str().unwrap_or_default(),
            skipped["error"].as_str().unwrap_or_default()
        );
    }
    if cdi["devices"].as_array().is_none_or(Vec::is_empty) {
        let dirs: Vec<&str> = cdi["specDirs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .collect();
        eprintln!("no CDI devices in {}", dirs.join(", "));
    }
    Ok(())
}

fn ago_nanos(nanos: i64) -> String {
    format::ago(nanos / 1_000_000_000)
}

pub async fn pods(socket: &Path, args: PodsArgs) -> Result<()> {
    let mut client = runtime(socket).await?;
    let mut pods = client
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .map_err(|s| CliError::internal(format!("ListPodSandbox: {}", s.message())))?
        .into_inner()
        .items;
    pods.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    let mut text = String::from("POD ID\tCREATED\tSTATE\tNAME\tNAMESPACE\tATTEMPT\n");
    let mut ids = String::new();
    for pod in pods {
        let meta = pod.metadata.unwrap_or_default();
        if args.name.as_ref().is_some_and(|n| *n != meta.name) {
            continue;
        }
        let state = if pod.state == cri::PodSandboxState::SandboxReady as i32 {
            "Ready"
        } else {
            "NotReady"
        };
        ids.push_str(&format!("{}\n", pod.id));
        text.push_str(&format!(
            "{}\t{}\t{state}\t{}\t{}\t{}\n",
            short_id(&pod.id),
            ago_nanos(pod.created_at),
            meta.name,
            meta.namespace,
            meta.attempt
        ));
    }
    out(&if args.quiet {
        ids
    } else {
        format::align(&text)
    });
    Ok(())
}

pub async fn ctr(socket: &Path, args: CtrArgs) -> Result<()> {
    let mut client = runtime(socket).await?;
    let filter = cri::ContainerFilter {
        pod_sandbox_id: args.pod.clone().unwrap_or_default(),
        state: if args.all {
            None
        } else {
            Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            })
        },
        ..Default::default()
    };
    let mut containers = client
        .list_containers(cri::ListContainersRequest {
            filter: Some(filter),
        })
        .await
        .map_err(|s| CliError::internal(format!("ListContainers: {}", s.message())))?
        .into_inner()
        .containers;
    containers.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    let mut text = String::from("CONTAINER\tIMAGE\tCREATED\tSTATE\tNAME\tATTEMPT\tPOD ID\n");
    let mut ids = String::new();
    for c in containers {
        let meta = c.metadata.unwrap_or_default();
        let state = match cri::ContainerState::try_from(c.state) {
            Ok(cri::ContainerState::ContainerCreated) => "Created",
            Ok(cri::ContainerState::ContainerRunning) => "Running",
            Ok(cri::ContainerState::ContainerExited) => "Exited",
            _ => "Unknown",
        };
        let image = c.image.map(|i| i.image).unwrap_or_default();
        ids.push_str(&format!("{}\n", c.id));
        text.push_str(&format!(
            "{}\t{}\t{}\t{state}\t{}\t{}\t{}\n",
            short_id(&c.id),
            if image.starts_with("sha256:") {
                short_id(&image)
            } else {
                image
            },
            ago_nanos(c.created_at),
            meta.name,
            meta.attempt,
            short_id(&c.pod_sandbox_id)
        ));
    }
    out(&if args.quiet {
        ids
    } else {
        format::align(&text)
    });
    Ok(())
}
