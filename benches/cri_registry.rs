//! Not a benchmark: the local registry the CRI benchmark (`wharf-bench`, issue 6) pulls
//! from. Starts Debian's `docker-registry` on a free 127.0.0.1 port with its own temp
//! storage (the test fixture `tests/support/registry.rs`), pushes the test busybox image
//! (`tests/support/images.rs`: one layer built from busybox-static, every applet linked)
//! as `bench/busybox:latest`, prints the image reference and serves until SIGINT or
//! SIGTERM, then stops the registry and deletes its storage.
//!
//! ```text
//! cargo bench --bench cri_registry -- [--ref-file PATH] [--pause-ref-file PATH]
//! ```
//!
//! `--ref-file PATH` also writes the reference (one line) to PATH, for scripts.
//! `--pause-ref-file PATH` writes the reference of `bench/pause:latest` (the busybox
//! layer with entrypoint `sleep 2147483647`), the sandbox image containerd needs.
//! Only 127.0.0.1 is used. See docs/benchmarks.md, "CRI benchmark".

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::ExitCode;

use support::images::{busybox_image, ImageBuilder};
use support::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

const REPO: &str = "bench/busybox";
const TAG: &str = "latest";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut ref_file: Option<PathBuf> = None;
    let mut pause_ref_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ref-file" => match args.next() {
                Some(path) => ref_file = Some(PathBuf::from(path)),
                None => {
                    eprintln!("cri_registry: --ref-file needs a path");
                    return ExitCode::FAILURE;
                }
            },
            "--pause-ref-file" => match args.next() {
                Some(path) => pause_ref_file = Some(PathBuf::from(path)),
                None => {
                    eprintln!("cri_registry: --pause-ref-file needs a path");
                    return ExitCode::FAILURE;
                }
            },
            // `cargo bench` passes --bench to every bench target.
            "--bench" => {}
            other => {
                eprintln!("cri_registry: unknown argument {other:?} (usage: [--ref-file PATH])");
                return ExitCode::FAILURE;
            }
        }
    }
    let (Ok(mut sigint), Ok(mut sigterm)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("cri_registry: cannot install the SIGINT/SIGTERM handlers");
        return ExitCode::FAILURE;
    };
    let registry = Registry::start().await;
    registry.push(REPO, TAG, &busybox_image()).await;
    let reference = format!("{}/{REPO}:{TAG}", registry.host());
    // containerd's sandbox ("pause") container: PID 1 of the pod that only waits.
    let pause = ImageBuilder::busybox()
        .with_config(|config| {
            config.set_entrypoint(Some(vec!["/bin/sleep".into(), "2147483647".into()]));
            config.set_cmd(None);
        })
        .build();
    registry.push("bench/pause", TAG, &pause).await;
    let pause_reference = format!("{}/bench/pause:{TAG}", registry.host());
    if let Some(path) = &pause_ref_file {
        if let Err(err) = std::fs::write(path, format!("{pause_reference}\n")) {
            eprintln!("cri_registry: write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &ref_file {
        if let Err(err) = std::fs::write(path, format!("{reference}\n")) {
            eprintln!("cri_registry: write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("{reference}");
    eprintln!(
        "cri_registry: serving {reference} (registry pid {}); SIGINT or SIGTERM stops it",
        registry.pid()
    );
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    drop(registry);
    for path in [&ref_file, &pause_ref_file].into_iter().flatten() {
        let _ = std::fs::remove_file(path);
    }
    eprintln!("cri_registry: registry stopped");
    ExitCode::SUCCESS
}
