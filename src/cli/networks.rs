//! `wharf network`: create, ls, inspect, rm, prune, connect, disconnect.

use clap::Subcommand;
use serde_json::{json, Map, Value};

use super::connection::Client;
use super::format::{self, Format};
use super::{each_object, enc, filters_json, out, CliError, Result};

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network
    #[command(after_help = "Example:\n  wharf network create --subnet 10.20.0.0/24 backend")]
    Create {
        /// Driver to manage the network
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        /// Subnet in CIDR format
        #[arg(long)]
        subnet: Vec<String>,
        /// Gateway for the subnet
        #[arg(long)]
        gateway: Vec<String>,
        /// Restrict external access to the network
        #[arg(long)]
        internal: bool,
        /// Set metadata on a network
        #[arg(long)]
        label: Vec<String>,
        /// Driver specific options
        #[arg(short, long = "opt")]
        opt: Vec<String>,
        name: String,
    },
    /// List networks
    #[command(alias = "list")]
    #[command(after_help = "Example:\n  wharf network ls --format '{{.Name}} {{.Driver}}'")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long)]
        filter: Vec<String>,
        #[arg(long)]
        format: Option<String>,
        #[arg(long)]
        no_trunc: bool,
    },
    /// Display detailed information on one or more networks
    #[command(after_help = "Example:\n  wharf network inspect -f '{{json .IPAM.Config}}' backend")]
    Inspect {
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks
    #[command(alias = "remove")]
    #[command(after_help = "Example:\n  wharf network rm backend")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove all unused networks
    #[command(after_help = "Example:\n  wharf network prune -f")]
    Prune {
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Connect a container to a network
    #[command(after_help = "Example:\n  wharf network connect --alias db backend web")]
    Connect {
        #[arg(long)]
        alias: Vec<String>,
        #[arg(long)]
        ip: Option<String>,
        network: String,
        container: String,
    },
    /// Disconnect a container from a network
    #[command(after_help = "Example:\n  wharf network disconnect backend web")]
    Disconnect {
        #[arg(short, long)]
        force: bool,
        network: String,
        container: String,
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

pub async fn run(client: &Client, command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create {
            driver,
            subnet,
            gateway,
            internal,
            label,
            opt,
            name,
        } => {
            let config: Vec<Value> = subnet
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut c = json!({"Subnet": s});
                    if let Some(g) = gateway.get(i) {
                        c["Gateway"] = g.clone().into();
                    }
                    c
                })
                .collect();
            let body = json!({
                "Name": name,
                "Driver": driver,
                "Internal": internal,
                "CheckDuplicate": true,
                "Labels": key_values(&label),
                "Options": key_values(&opt),
                "IPAM": {"Driver": "default", "Config": config},
            });
            let created = client.post("/networks/create", Some(&body)).await?;
            out(&format!(
                "{}\n",
                created.get("Id").and_then(Value::as_str).unwrap_or("")
            ));
            Ok(())
        }
        NetworkCommand::Ls {
            quiet,
            filter,
            format: fmt,
            no_trunc,
        } => {
            let mut path = "/networks".to_string();
            if let Some(f) = filters_json(&filter)? {
                path.push_str(&format!("?filters={}", enc(&f)));
            }
            let list = client.get(&path).await?;
            let template = match (&fmt, quiet) {
                (_, true) => "{{.ID}}".to_string(),
                (Some(f), false) => f.clone(),
                _ => "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}".into(),
            };
            let format = Format::parse(&template)?;
            let mut items: Vec<&Value> = list.as_array().into_iter().flatten().collect();
            items.sort_by_key(|n| {
                n.get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            });
            let rows: Vec<Value> = items
                .into_iter()
                .map(|n| {
                    let s = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    let id = s("Id");
                    json!({
                        "ID": if no_trunc { id } else { format::short_id(&id) },
                        "Name": s("Name"),
                        "Driver": s("Driver"),
                        "Scope": s("Scope"),
                        "IPv6": n.get("EnableIPv6").and_then(Value::as_bool).unwrap_or(false).to_string(),
                        "Internal": n.get("Internal").and_then(Value::as_bool).unwrap_or(false).to_string(),
                        "CreatedAt": s("Created"),
                        "Labels": format::labels_text(n.get("Labels")),
                        format::LABEL_MAP: n.get("Labels").cloned().unwrap_or(Value::Null),
                    })
                })
                .collect();
            let headers = format::headers(&[
                ("ID", "NETWORK ID"),
                ("Name", "NAME"),
                ("Driver", "DRIVER"),
                ("Scope", "SCOPE"),
                ("IPv6", "IPV6"),
                ("Internal", "INTERNAL"),
                ("CreatedAt", "CREATED AT"),
                ("Labels", "LABELS"),
            ]);
            out(&format.render_rows(&rows, &headers)?);
            Ok(())
        }
        NetworkCommand::Inspect {
            format: fmt,
            networks,
        } => {
            inspect_list(client, &networks, fmt.as_deref(), |n| {
                format!("/networks/{}", enc(n))
            })
            .await
        }
        NetworkCommand::Rm { networks } => {
            each_object(
                &networks,
                |n| {
                    let path = format!("/networks/{}", enc(n));
                    async move { client.delete(&path).await }
                },
                |n, _| out(&format!("{n}\n")),
            )
            .await
        }
        NetworkCommand::Prune { force, filter } => {
            let warning =
                "WARNING! This will remove all custom networks not used by at least one container.";
            let Some(answer) =
                super::system::prune_request(client, "networks", warning, force, &filter).await?
            else {
                return Ok(());
            };
            let deleted: Vec<&str> = answer
                .get("NetworksDeleted")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !deleted.is_empty() {
                // No blank line after the list (docker's network prune).
                out(&format!("Deleted Networks:\n{}\n", deleted.join("\n")));
            }
            Ok(())
        }
        NetworkCommand::Connect {
            alias,
            ip,
            network,
            container,
        } => {
            let mut endpoint = json!({"Aliases": alias});
            if let Some(ip) = ip {
                endpoint["IPAMConfig"] = json!({"IPv4Address": ip});
            }
            client
                .post(
                    &format!("/networks/{}/connect", enc(&network)),
                    Some(&json!({"Container": container, "EndpointConfig": endpoint})),
                )
                .await?;
            Ok(())
        }
        NetworkCommand::Disconnect {
            force,
            network,
            container,
        } => {
            client
                .post(
                    &format!("/networks/{}/disconnect", enc(&network)),
                    Some(&json!({"Container": container, "Force": force})),
                )
                .await?;
            Ok(())
        }
    }
}

/// docker's `X inspect` of objects at `path(name)`: see [`inspect_each`].
pub async fn inspect_list(
    client: &Client,
    names: &[String],
    format: Option<&str>,
    path: impl Fn(&str) -> String,
) -> Result<()> {
    inspect_each(names, format, async |name: &str| {
        client.get(&path(name)).await
    })
    .await
}

/// docker's `inspect`: a JSON array of all found, or the format per object; errors
/// for the missing ones, and exit 1 if any.
pub async fn inspect_each(
    names: &[String],
    format: Option<&str>,
    fetch: impl AsyncFn(&str) -> Result<Value>,
) -> Result<()> {
    let format = format.map(|f| Format::parse_raw(f, false)).transpose()?;
    let mut found = Vec::new();
    let mut failed = false;
    for name in names {
        match fetch(name).await {
            Ok(v) => {
                if let Some(f) = &format {
                    out(&format!("{}\n", f.render(&v)?));
                }
                found.push(v);
            }
            Err(err) => {
                eprintln!("{err}");
                failed = true;
            }
        }
    }
    if format.is_none() {
        out(&format!("{}\n", format::pretty_json(&Value::Array(found))));
    }
    if failed {
        return Err(CliError::exit(1));
    }
    Ok(())
}
