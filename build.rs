//! Link settings for wharf's binaries.

fn main() {
    // Pack the binaries' relative relocations (DT_RELR, glibc >= 2.36, GNU ld >= 2.38
    // or lld >= 15; older linkers ignore the option). A PIE's plain relocation table is
    // 24 bytes per pointer, 1 MB for wharfd, which the dynamic loader reads at start and
    // which then stays resident: a fresh wharfd measured 15.5 MB RSS without, 13.5 with.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rerun-if-changed=build.rs");
}
