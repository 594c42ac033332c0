//! `wharf-monitor`: the per-container monitor, the built-in OCI runtime CLI and the pod
//! PID-namespace holder. All the work is in `wharf::monitor`.

use clap::Parser;

fn main() {
    let cli = wharf::monitor::cli::Cli::parse();
    std::process::exit(wharf::monitor::main(cli));
}
