//! `wharf-monitor-watch`: what a `wharf-monitor run` becomes (execve) once its
//! container exists; it copies the container's output to the CRI log and records how
//! the container ended. Only wharf-monitor starts it. All the work is in
//! `wharf::monitor::watch`.

fn main() {
    std::process::exit(wharf::monitor::watch::main(std::env::args_os().skip(1)));
}
