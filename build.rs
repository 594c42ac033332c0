//! Link settings for wharf's binaries.

fn main() {
    // Pack the binaries' relative relocations (DT_RELR, glibc >= 2.36, GNU ld >= 2.38
    // or lld >= 15; older linkers ignore the option). A PIE's relocation table is
    // otherwise ~24 bytes per pointer (1 MB for wharfd, 0.6 MB for wharf-monitor) that
    // the dynamic loader reads at every start: resident memory of the daemon and of
    // every per-container monitor, and start-up time of each monitor.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rerun-if-changed=build.rs");
}
