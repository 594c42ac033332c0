//! wharf: the command-line client. Today it talks to wharfd's CRI socket; Docker-style
//! commands arrive with the Docker API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "wharf", version, about = "Command-line client for wharfd")]
struct Args {
    /// wharfd's CRI socket
    #[arg(
        long,
        global = true,
        env = "WHARF_CRI_SOCKET",
        default_value = "/run/wharf/wharf.sock"
    )]
    cri_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show client and daemon versions
    Version,
    /// Show the daemon's readiness conditions and effective configuration
    Info,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wharf: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let channel = wharf::cri::connect(&args.cri_socket).await.map_err(|err| {
        format!(
            "cannot connect to wharfd at {}: {err}",
            args.cri_socket.display()
        )
    })?;
    match args.command {
        Command::Version => {
            let version = wharf::cri::cli_calls::version(channel)
                .await
                .map_err(|status| status.message().to_string())?;
            println!("Client: wharf {}", env!("CARGO_PKG_VERSION"));
            println!(
                "Server: {} {} (CRI {})",
                version.runtime_name, version.runtime_version, version.runtime_api_version
            );
        }
        Command::Info => {
            let response = wharf::cri::cli_calls::status(channel)
                .await
                .map_err(|status| status.message().to_string())?;
            for condition in response.conditions {
                let state = if condition.ready { "true" } else { "false" };
                print!("{}: {state}", condition.kind);
                if !condition.ready {
                    print!(" ({}: {})", condition.reason, condition.message);
                }
                println!();
            }
            let mut keys: Vec<_> = response.info.keys().cloned().collect();
            keys.sort();
            for key in keys {
                let value = &response.info[&key];
                let pretty = serde_json::from_str::<serde_json::Value>(value)
                    .and_then(|json| serde_json::to_string_pretty(&json))
                    .unwrap_or_else(|_| value.clone());
                println!("{key}: {pretty}");
            }
        }
    }
    Ok(())
}
