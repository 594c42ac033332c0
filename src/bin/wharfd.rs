//! wharfd: the wharf node daemon. Parses flags, loads the configuration, starts logging
//! and runs `wharf::daemon`; all the work is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wharf::config::{self, Config, LogFormat, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "wharfd",
    version = wharf::VERSION,
    about = "The wharf container runtime daemon"
)]
// The last of a repeated flag wins, so wrappers can append overrides.
#[command(args_override_self = true)]
struct Args {
    /// TOML configuration file [default: /etc/wharf/wharf.toml, if it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Root directory for persistent data (overrides `root`)
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Directory for runtime state on tmpfs (overrides `state`)
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// UNIX socket for the CRI services (overrides `cri.socket`)
    #[arg(long, value_name = "PATH")]
    cri_socket: Option<PathBuf>,
    /// Log level or filter, e.g. `debug` or `info,wharf::store=trace` (overrides `log.level`)
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format (overrides `log.format`)
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    wharf::daemon::memory::limit_arenas();
    let args = Args::parse();
    // Before any thread exists: it takes the variable out of the environment.
    let notifier = wharf::daemon::notify::Notifier::take_from_env();
    let overrides = Overrides {
        root: args.root,
        state: args.state,
        cri_socket: args.cri_socket,
        log_level: args.log_level,
        log_format: args.log_format,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("wharfd: {err}");
            return ExitCode::FAILURE;
        }
    };
    if args.print_config {
        return match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("wharfd: cannot print configuration: {err}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&config);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wharfd")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wharfd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(wharf::daemon::run(config, notifier));
    // Idle client connections are still open: drop them rather than wait.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "wharfd failed");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    // The filter was validated with the rest of the configuration.
    let filter = config::parse_log_filter(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let span_events = if config.log.spans {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(span_events)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
