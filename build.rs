//! Link settings for wharf's binaries, the monitor protocol's types, and the git commit
//! the binaries report (`wharfd --version`, Docker's `/version`).

use std::path::Path;
use std::process::Command;

fn main() {
    // Pack the binaries' relative relocations (DT_RELR, glibc >= 2.36, GNU ld >= 2.38
    // or lld >= 15; older linkers ignore the option). A PIE's plain relocation table is
    // 24 bytes per pointer, 1 MB for wharfd, which the dynamic loader reads at start and
    // which then stays resident: a fresh wharfd measured 15.5 MB RSS without, 13.5 with.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rerun-if-changed=build.rs");
    order_wharfd_functions();
    compile_protos();
    embed_git_commit();
}

/// What the binaries are built from, as `cargo:rustc-env=WHARF_GIT_COMMIT`: the short
/// commit of HEAD, with `-dirty` when the sources that make the binaries (the paths in
/// [`SOURCES`], untracked files there included) differ from it; `unknown` without git
/// or a repository (a source tarball). `WHARF_GIT_COMMIT` set in the build's own
/// environment wins (a packager building outside the repository).
///
/// The script runs again when HEAD moves (a checkout, or a commit on the current
/// branch) or a source changes, so the commit and `-dirty` are never stale; edits
/// elsewhere (tests, docs) neither mark the binaries dirty nor rebuild them.
fn embed_git_commit() {
    println!("cargo:rerun-if-env-changed=WHARF_GIT_COMMIT");
    let commit = match std::env::var("WHARF_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_string(),
        _ => git_commit().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=WHARF_GIT_COMMIT={commit}");
}

/// The paths whose content makes the binaries (relative to the manifest's directory).
const SOURCES: &[&str] = &[
    "src",
    "proto",
    "link",
    "vendor",
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
];

fn git_commit() -> Option<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let git = |args: &[&str]| -> Option<String> {
        // --no-optional-locks: `status` must not write the index of a tree other
        // git commands may be using at the same time.
        let output = Command::new("git")
            .arg("--no-optional-locks")
            .args(args)
            .current_dir(&manifest_dir)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    // Not the repository's root: a crate unpacked inside some other repository.
    let toplevel = git(&["rev-parse", "--show-toplevel"])?;
    if Path::new(&toplevel).canonicalize().ok()? != Path::new(&manifest_dir).canonicalize().ok()? {
        return None;
    }
    // Run again when HEAD moves: HEAD itself (a checkout), the branch it names (a
    // commit), and packed-refs (where a branch may live instead). Only paths that
    // exist: cargo reruns the script at every build for a missing one.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch])?);
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"])?);
    for path in watched {
        let path = Path::new(&manifest_dir).join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(SOURCES);
    let dirty = !git(&status)?.is_empty();
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// The project's own protocols (proto/), as prost types in OUT_DIR: the monitor control
/// channel (src/monitor/control/). protoc is already needed by k8s-cri's build.
fn compile_protos() {
    let proto = "proto/monitor_control.proto";
    println!("cargo:rerun-if-changed={proto}");
    if let Err(err) = prost_build::compile_protos(&[proto], &["proto/"]) {
        panic!("compiling {proto}: {err} (protoc comes with the Debian package protobuf-compiler)");
    }
}

/// Lays out wharfd's text with the functions it runs, start-up first, packed together
/// (link/README.md). The kernel maps a binary's pages 64 KB at a time around each page
/// a fault touches, so code spread over the whole 15 MB text made most of it resident.
/// Release builds with rustc's bundled lld only: GNU ld has no such option, and the
/// list names release symbols, so in other builds it would match nothing. link/cc (the
/// linker driver .cargo/config.toml names) matches the list's names to this build's
/// symbols, whose crate hashes differ from the profiled build's.
fn order_wharfd_functions() {
    let order = Path::new("link/wharfd.symbol-order");
    println!("cargo:rerun-if-changed={}", order.display());
    let release = std::env::var("PROFILE").is_ok_and(|profile| profile == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !release || target != "x86_64-unknown-linux-gnu" || !rustc_links_with_lld() {
        return;
    }
    let order = std::fs::canonicalize(order).expect("link/wharfd.symbol-order");
    println!(
        "cargo:rustc-link-arg-bin=wharfd=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Symbols of code changed since the list was made are missing: not an error.
    println!("cargo:rustc-link-arg-bin=wharfd=-Wl,--no-warn-symbol-ordering");
}

/// rustc links x86_64-unknown-linux-gnu with its own lld since 1.90, unless a
/// linker is chosen in the flags.
fn rustc_links_with_lld() -> bool {
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("fuse-ld") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(output) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&output.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|minor| minor.parse::<u32>().ok());
    minor.is_some_and(|minor| minor >= 90)
}
