//! `wharf volume`: create, ls, inspect, rm, prune.

use clap::Subcommand;
use serde_json::{json, Map, Value};

use super::connection::Client;
use super::format::{self, Format};
use super::{each_object, enc, filters_json, out, Result};

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume
    #[command(
        after_help = "Examples:\n  wharf volume create data\n  wharf volume create -o type=tmpfs -o device=tmpfs -o o=size=64m scratch"
    )]
    Create {
        /// Volume driver name
        #[arg(short, long, default_value = "local")]
        driver: String,
        /// Set driver specific options
        #[arg(short, long = "opt")]
        opt: Vec<String>,
        /// Set metadata for a volume
        #[arg(long)]
        label: Vec<String>,
        name: Option<String>,
    },
    /// List volumes
    #[command(alias = "list")]
    #[command(after_help = "Example:\n  wharf volume ls --filter dangling=true -q")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long)]
        filter: Vec<String>,
        #[arg(long)]
        format: Option<String>,
    },
    /// Display detailed information on one or more volumes
    #[command(after_help = "Example:\n  wharf volume inspect -f '{{.Mountpoint}}' data")]
    Inspect {
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove one or more volumes
    #[command(alias = "remove")]
    #[command(after_help = "Example:\n  wharf volume rm data")]
    Rm {
        /// Force the removal of one or more volumes
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove unused local volumes
    #[command(after_help = "Example:\n  wharf volume prune -f")]
    Prune {
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
        #[arg(long)]
        filter: Vec<String>,
    },
}

fn key_values(items: &[String]) -> Map<String, Value> {
    items
        .iter()
        .map(|i| {
            let (k, v) = i.split_once('=').unwrap_or((i, ""));
            (k.to_string(), Value::String(v.to_string()))
        })
        .collect()
}

pub async fn run(client: &Client, command: VolumeCommand) -> Result<()> {
    match command {
        VolumeCommand::Create {
            driver,
            opt,
            label,
            name,
        } => {
            let body = json!({
                "Name": name.unwrap_or_default(),
                "Driver": driver,
                "DriverOpts": key_values(&opt),
                "Labels": key_values(&label),
            });
            let created = client.post("/volumes/create", Some(&body)).await?;
            out(&format!(
                "{}\n",
                created.get("Name").and_then(Value::as_str).unwrap_or("")
            ));
            Ok(())
        }
        VolumeCommand::Ls {
            quiet,
            filter,
            format: fmt,
        } => {
            let mut path = "/volumes".to_string();
            if let Some(f) = filters_json(&filter)? {
                path.push_str(&format!("?filters={}", enc(&f)));
            }
            let list = client.get(&path).await?;
            let template = match (&fmt, quiet) {
                (_, true) => "{{.Name}}".to_string(),
                (Some(f), false) => f.clone(),
                _ => "table {{.Driver}}\t{{.Name}}".into(),
            };
            let format = Format::parse(&template)?;
            let mut items: Vec<&Value> = list
                .get("Volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .collect();
            items.sort_by_key(|v| {
                v.get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            });
            let rows: Vec<Value> = items
                .into_iter()
                .map(|v| {
                    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    json!({
                        "Name": s("Name"),
                        "Driver": s("Driver"),
                        "Scope": s("Scope"),
                        "Mountpoint": s("Mountpoint"),
                        "Labels": format::labels_text(v.get("Labels")),
                        format::LABEL_MAP: v.get("Labels").cloned().unwrap_or(Value::Null),
                    })
                })
                .collect();
            let headers = format::headers(&[
                ("Name", "VOLUME NAME"),
                ("Driver", "DRIVER"),
                ("Scope", "SCOPE"),
                ("Mountpoint", "MOUNTPOINT"),
                ("Labels", "LABELS"),
            ]);
            out(&format.render_rows(&rows, &headers)?);
            Ok(())
        }
        VolumeCommand::Inspect {
            format: fmt,
            volumes,
        } => {
            super::networks::inspect_list(client, &volumes, fmt.as_deref(), |v| {
                format!("/volumes/{}", enc(v))
            })
            .await
        }
        VolumeCommand::Rm { force, volumes } => {
            each_object(
                &volumes,
                |v| {
                    let path = format!("/volumes/{}?force={}", enc(v), u8::from(force));
                    async move { client.delete(&path).await }
                },
                |v, _| out(&format!("{v}\n")),
            )
            .await
        }
        VolumeCommand::Prune { force, filter } => {
            let warning =
                "WARNING! This will remove anonymous local volumes not used by at least one container.";
            let Some(answer) =
                super::system::prune_request(client, "volumes", warning, force, &filter).await?
            else {
                return Ok(());
            };
            super::system::print_list("Deleted Volumes:", &answer, "VolumesDeleted");
            super::system::print_reclaimed(&answer, format::human_size);
            Ok(())
        }
    }
}
