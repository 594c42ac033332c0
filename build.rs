//! Link settings for wharf's binaries.

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
/// list names release symbols, so in other builds it would match nothing.
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
