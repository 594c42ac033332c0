//! wharf: the Docker-style command-line client of wharfd (the work is in `wharf::cli`).

fn main() {
    wharf::cli::main()
}
