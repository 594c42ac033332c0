//! Image pull benchmark (issue 3, "Benchmark"): pull + unpack of a generated image of 8
//! gzip layers (~200 MB uncompressed) from the local registry into an empty root,
//! against two floors measured in the same run on the same bytes (downloading the blobs
//! alone; `gzip -dc` of the layers alone) and against containerd's `ctr images pull`.
//!
//! Run it with `scripts/bench` (installs containerd, builds in the release profile, runs
//! as root). Arguments after `--`: `--rounds N` (default 5), `--layers N` (default 8),
//! `--layer-mb N` (uncompressed MB per layer, default 25), `--downloads N` (parallel
//! layer downloads for wharf, ctr and the floors, default 3 = wharf's default),
//! `--image-only` (build the image, print its sizes, stop).
//!
//! Every wharf round starts a new wharfd on an empty temporary root and times the CRI
//! `PullImage` RPC; every containerd round starts a new containerd with its own root,
//! state and socket and times `ctr images pull`. Rounds alternate wharf, containerd,
//! then the floors and diagnostics; `sync(2)` runs before every timed step, and what the
//! steps wrote is deleted only at the end (see [`Leftovers`]). Only 127.0.0.1 is
//! contacted. Results and their reading: docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use k8s_cri::v1::{ImageSpec, PullImageRequest};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest as _, Sha256};
use support::daemon::Daemon;
use support::images::{ImageBuilder, LayerBlob, LayerBuilder, OciImage, MEDIA_TYPE_MANIFEST};
use support::registry::Registry;
use tempfile::TempDir;

const REPO: &str = "bench/img";
const TAG: &str = "latest";
/// containerd namespace of the ctr pulls.
const CTR_NAMESPACE: &str = "bench";
/// 1 MB = 10^6 bytes everywhere in the output.
const MB: f64 = 1_000_000.0;
/// Share of each layer's bytes that is incompressible binary, the rest being text.
const BINARY_SHARE: f64 = 0.04;
const CONTAINERD_READY_TIMEOUT: Duration = Duration::from_secs(30);
const CONTAINERD_STOP_TIMEOUT: Duration = Duration::from_secs(15);
const FLOOR_GOAL: f64 = 1.3;
const CONTAINERD_GOAL: f64 = 1.0;

type BenchResult<T> = Result<T, String>;

// ---------------------------------------------------------------------------
// options

struct Options {
    rounds: usize,
    layers: usize,
    layer_mb: usize,
    downloads: usize,
    /// Build the image, print its sizes and stop.
    image_only: bool,
}

const USAGE: &str =
    "usage: scripts/bench [--rounds N] [--layers N] [--layer-mb N] [--downloads N] [--image-only]";

fn parse_args() -> Options {
    let mut options = Options {
        rounds: 5,
        layers: 8,
        layer_mb: 25,
        downloads: 3,
        image_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => continue,
            "--image-only" => {
                options.image_only = true;
                continue;
            }
            "--rounds" => &mut options.rounds,
            "--layers" => &mut options.layers,
            "--layer-mb" => &mut options.layer_mb,
            "--downloads" => &mut options.downloads,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => {
                eprintln!("image_pull: unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        };
        *slot = match args.next().and_then(|v| v.parse::<usize>().ok()) {
            Some(n) if n > 0 => n,
            _ => {
                eprintln!("image_pull: {arg} needs a positive integer\n{USAGE}");
                std::process::exit(2);
            }
        };
    }
    options
}

/// `name` in PATH, if there.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn preflight() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("image_pull: run as root (wharfd and containerd need it): use scripts/bench");
        std::process::exit(1);
    }
    for (tool, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("gzip", "gzip"),
        ("docker-registry", "docker-registry"),
    ] {
        if which(tool).is_none() {
            eprintln!(
                "image_pull: `{tool}` is not installed: install the Debian package {package} \
                 (scripts/bench does it through `scripts/setup bench`)"
            );
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------
// the generated image

/// xorshift64: deterministic content without a dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Vocabulary of the generated text, whitespace-separated.
const WORDS: &str =
    "the of and to in is that for it as with was on be at by this had not are but from \
     or have an they which one you were all we her she there would their will when who \
     him been has more if no out so said what up its about than into them can only other \
     time new some could these two may first then do any like my now over such our man \
     me even most made after also did many off before must well back through years much \
     where your way down should because long each just state people those too how little \
     good world very make still own see men work here between both life being under \
     never day same another know while last might us great old year come since against \
     go came right used take three container runtime image layer registry snapshot \
     overlay kernel namespace cgroup process signal socket config manifest digest blob \
     content mount network volume daemon request response error status pull push index \
     platform linux amd64 arm64 version module function return value struct impl trait \
     async await const static match string buffer stream reader writer thread channel \
     future option result vector table record header footer library package license \
     apache debian ubuntu alpine busybox python java node ruby golang rust shell script \
     binary archive";

/// Phrases of 3 to 8 words: text made of them repeats the way real text and code do,
/// which gives gzip's fast level roughly 3x on it (2.5x to 4x is typical of images).
fn phrase_pool(rng: &mut XorShift, words: &[&str], count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let n = 3 + rng.below(6) as usize;
            (0..n)
                .map(|_| words[rng.below(words.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Pseudo-random prose: pooled phrases, single words, numbers, punctuation, indented
/// lines.
fn text(rng: &mut XorShift, words: &[&str], phrases: &[String], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 96);
    let mut line = 0usize;
    while out.len() < len {
        let start = out.len();
        if rng.below(8) == 0 {
            out.extend_from_slice(words[rng.below(words.len() as u64) as usize].as_bytes());
        } else {
            out.extend_from_slice(phrases[rng.below(phrases.len() as u64) as usize].as_bytes());
        }
        match rng.below(16) {
            0 => out.extend_from_slice(b", "),
            1 => out.extend_from_slice(b". "),
            2 => {
                let n = rng.below(100_000);
                let _ = write!(Fmt(&mut out), " {n} ");
            }
            _ => out.push(b' '),
        }
        line += out.len() - start;
        if line > 60 + rng.below(20) as usize {
            out.push(b'\n');
            let indent = 4 * rng.below(4) as usize;
            out.resize(out.len() + indent, b' ');
            line = 0;
        }
    }
    out.truncate(len);
    out
}

/// `fmt::Write` into a byte vector.
struct Fmt<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Fmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn binary(rng: &mut XorShift, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One layer: 16 directories of files whose sizes are log-uniform between 64 B and
/// 512 KiB, mostly text, [`BINARY_SHARE`] of the bytes incompressible. Entries are in
/// directory order, each directory followed by its files, as image builders write them.
fn build_layer(index: usize, target_bytes: usize) -> (LayerBlob, usize) {
    const DIRS: usize = 16;
    let mut rng = XorShift::new(0xBE4C_u64 + index as u64);
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let phrases = phrase_pool(&mut rng, &words, 128);
    let (min, max) = (64f64.ln(), (512.0 * 1024.0f64).ln());
    let mut by_dir: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); DIRS];
    let mut bytes = 0usize;
    let mut files = 0usize;
    let mut binary_bytes = 0usize;
    while bytes < target_bytes {
        let size = ((min + rng.unit() * (max - min)).exp() as usize).min(target_bytes - bytes);
        let size = size.max(1);
        let dir = rng.below(DIRS as u64) as usize;
        let is_binary = (binary_bytes as f64) < BINARY_SHARE * bytes as f64;
        let (content, ext) = if is_binary {
            binary_bytes += size;
            (binary(&mut rng, size), "bin")
        } else {
            (text(&mut rng, &words, &phrases, size), "txt")
        };
        by_dir[dir].push((format!("f{files:05}.{ext}"), content));
        bytes += size;
        files += 1;
    }
    let top = format!("srv/data{index}");
    let mut layer = LayerBuilder::new();
    if index == 0 {
        layer = layer.dir("srv");
    }
    layer = layer.dir(&top);
    for (d, entries) in by_dir.into_iter().enumerate() {
        layer = layer.dir(&format!("{top}/d{d:02}"));
        for (name, content) in entries {
            layer = layer.file(&format!("{top}/d{d:02}/{name}"), content);
        }
    }
    (layer.build(), files)
}

struct BenchImage {
    image: OciImage,
    compressed: u64,
    uncompressed: u64,
    files: usize,
}

fn build_image(layers: usize, layer_bytes: usize) -> BenchImage {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(layers);
    let mut built: Vec<Option<(LayerBlob, usize)>> = (0..layers).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..layers)
                        .step_by(threads)
                        .map(|i| (i, build_layer(i, layer_bytes)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for (i, layer) in handle.join().expect("layer builder thread") {
                built[i] = Some(layer);
            }
        }
    });
    let mut builder = ImageBuilder::new();
    let (mut compressed, mut uncompressed, mut files) = (0, 0, 0);
    for (blob, n) in built.into_iter().map(|l| l.expect("every layer built")) {
        compressed += blob.blob.len() as u64;
        uncompressed += blob.uncompressed_size;
        files += n;
        builder = builder.layer_blob(blob);
    }
    BenchImage {
        image: builder.build(),
        compressed,
        uncompressed,
        files,
    }
}

// ---------------------------------------------------------------------------
// helpers

/// Flush dirty pages before each timed run, so that one run's writeback is not paid by
/// the next one.
fn sync_all() {
    nix::unistd::sync();
}

/// Regular files and their bytes under `dir` (symlinks not followed).
fn count_files(dir: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn log_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image_pull");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// What the timed runs wrote (wharfd roots, containerd roots, unpack dirs), deleted
/// only when the benchmark ends. On this kind of machine (ext4 without a journal) the
/// kernel's inode allocator skips inodes freed in the last ~30 s, checking each one, so
/// deleting thousands of files right before a run makes that run's file creations much
/// slower, whichever unpacker it measures.
#[derive(Default)]
struct Leftovers {
    daemons: Vec<Daemon>,
    containerds: Vec<Containerd>,
    dirs: Vec<TempDir>,
}

// ---------------------------------------------------------------------------
// wharf

struct WharfRun {
    time: Duration,
    files: usize,
    bytes: u64,
}

async fn wharf_pull(
    reference: &str,
    downloads: usize,
    round: usize,
    keep: &mut Leftovers,
) -> BenchResult<WharfRun> {
    let config = format!("[registry]\nmax_concurrent_downloads = {downloads}\n");
    let mut daemon = Daemon::start_with_config(&config).await;
    let mut client = daemon.image_client().await;
    sync_all();
    let start = Instant::now();
    let result = client
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.to_string(),
                ..ImageSpec::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await;
    let time = start.elapsed();
    let log_copy = log_dir().join(format!("wharfd-round{round}.log"));
    let _ = std::fs::copy(&daemon.paths.log, &log_copy);
    if let Err(status) = result {
        return Err(format!(
            "wharf PullImage {reference} failed: {status}; wharfd log: {}",
            log_copy.display()
        ));
    }
    let (files, bytes) = count_files(&daemon.paths.root.join("snapshots/layers"));
    daemon.stop();
    // Its root is deleted at the end of the benchmark (see [`Leftovers`]).
    keep.daemons.push(daemon);
    Ok(WharfRun { time, files, bytes })
}

// ---------------------------------------------------------------------------
// containerd

/// A containerd on its own root, state and socket in a temp dir; stopped, unmounted and
/// deleted on drop.
struct Containerd {
    child: Option<tokio::process::Child>,
    dir: TempDir,
    socket: PathBuf,
}

impl Containerd {
    async fn start() -> BenchResult<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("wharf-bench-containerd-")
            .tempdir()
            .map_err(|e| format!("create containerd temp dir: {e}"))?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("containerd.sock");
        let config_path = dir.path().join("config.toml");
        // containerd 1.6 reads config version 2. The CRI plugin is disabled: it would
        // want CNI and is not what `ctr images pull` uses.
        let config = format!(
            "version = 2\n\
             root = {root:?}\n\
             state = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             \n\
             [grpc]\n  address = {socket:?}\n\
             \n\
             [ttrpc]\n  address = {ttrpc:?}\n\
             \n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt:?}\n",
            root = root.display().to_string(),
            state = state.display().to_string(),
            socket = socket.display().to_string(),
            ttrpc = format!("{}.ttrpc", socket.display()),
            opt = dir.path().join("opt").display().to_string(),
        );
        std::fs::write(&config_path, config)
            .map_err(|e| format!("write containerd config: {e}"))?;
        let log = std::fs::File::create(dir.path().join("containerd.log"))
            .map_err(|e| format!("create containerd log: {e}"))?;
        let child = tokio::process::Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .arg("--address")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn containerd: {e}"))?;
        let mut containerd = Containerd {
            child: Some(child),
            dir,
            socket,
        };
        containerd.wait_ready().await?;
        Ok(containerd)
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(CTR_NAMESPACE)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn wait_ready(&mut self) -> BenchResult<()> {
        let deadline = Instant::now() + CONTAINERD_READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "containerd exited with {status} during startup; its log:\n{}",
                        self.log()
                    ));
                }
            }
            if self.socket.exists() {
                let ok = self
                    .ctr()
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not answer on {} within {CONTAINERD_READY_TIMEOUT:?}; \
                     its log:\n{}",
                    self.socket.display(),
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL after a grace period; then unmounts anything left under
    /// the temp dir. Idempotent.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            let deadline = Instant::now() + CONTAINERD_STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.start_kill();
                        // Reaped by tokio's orphan reaper if this wait fails.
                        let deadline = Instant::now() + Duration::from_secs(5);
                        while !matches!(child.try_wait(), Ok(Some(_)) | Err(_))
                            && Instant::now() < deadline
                        {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        unmount_under(self.dir.path());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        // `dir` (a TempDir) is deleted after this, with nothing mounted in it.
    }
}

/// Decodes the octal escapes (`\040`) of a /proc/self/mountinfo path.
fn unescape_mount_path(raw: &str) -> PathBuf {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let digit = |b: u8| u32::from(b - b'0');
            let v = digit(bytes[i + 1]) * 64 + digit(bytes[i + 2]) * 8 + digit(bytes[i + 3]);
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&out))
}

/// Lazily unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        if let Err(err) = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("image_pull: unmount {}: {err}", point.display());
        }
    }
}

struct CtrRun {
    time: Duration,
    snapshots: usize,
    files: usize,
    bytes: u64,
}

async fn containerd_pull(
    reference: &str,
    downloads: usize,
    round: usize,
    keep: &mut Leftovers,
) -> BenchResult<CtrRun> {
    let mut containerd = Containerd::start().await?;
    let out_path = log_dir().join(format!("ctr-pull-round{round}.log"));
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let mut cmd = containerd.ctr();
    cmd.args([
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
    ])
    .arg("--max-concurrent-downloads")
    .arg(downloads.to_string())
    .arg(reference)
    .stdout(out.try_clone().map_err(|e| e.to_string())?)
    .stderr(out);
    sync_all();
    let start = Instant::now();
    let status = cmd.status().await.map_err(|e| format!("run ctr: {e}"))?;
    let time = start.elapsed();
    if !status.success() {
        return Err(format!(
            "ctr images pull {reference} failed ({status}): {}\ncontainerd log:\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            containerd.log()
        ));
    }
    // Did it unpack? The overlayfs snapshotter must hold one committed snapshot a layer.
    let listing = containerd
        .ctr()
        .args(["snapshots", "--snapshotter", "overlayfs", "ls"])
        .output()
        .await
        .map_err(|e| format!("ctr snapshots ls: {e}"))?;
    let snapshots = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .skip(1)
        .filter(|l| l.contains("Committed"))
        .count();
    let (files, bytes) = count_files(
        &containerd
            .root()
            .join("io.containerd.snapshotter.v1.overlayfs/snapshots"),
    );
    let _ = std::fs::write(
        log_dir().join(format!("containerd-round{round}.log")),
        containerd.log(),
    );
    containerd.stop();
    keep.containerds.push(containerd);
    Ok(CtrRun {
        time,
        snapshots,
        files,
        bytes,
    })
}

// ---------------------------------------------------------------------------
// floors

/// GET the manifest and config, then every layer blob with `concurrency` requests in
/// flight, counting and discarding the bytes (a fresh client: new connections, as a
/// new wharfd has).
async fn download_floor(
    registry_url: &str,
    image: &OciImage,
    concurrency: usize,
) -> BenchResult<(Duration, u64)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let get = |path: String, accept: Option<&'static str>| {
        let client = client.clone();
        let url = format!("{registry_url}{path}");
        async move {
            let mut req = client.get(&url);
            if let Some(accept) = accept {
                req = req.header(reqwest::header::ACCEPT, accept);
            }
            let mut resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("GET {url}: HTTP {}", resp.status()));
            }
            let mut n = 0u64;
            while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
                n += chunk.len() as u64;
            }
            Ok::<u64, String>(n)
        }
    };
    let start = Instant::now();
    let mut total = get(
        format!("/v2/{REPO}/manifests/{TAG}"),
        Some(MEDIA_TYPE_MANIFEST),
    )
    .await?;
    total += get(format!("/v2/{REPO}/blobs/{}", image.config_digest), None).await?;
    let layers: Vec<_> = image
        .layers
        .iter()
        .map(|l| get(format!("/v2/{REPO}/blobs/{}", l.digest), None))
        .collect();
    let sizes: Vec<u64> = futures_util::stream::iter(layers)
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    total += sizes.iter().sum::<u64>();
    Ok((start.elapsed(), total))
}

/// `gzip -dc <layer> > /dev/null` for every layer, `concurrency` processes at a time.
async fn gzip_floor(image: &OciImage, concurrency: usize) -> BenchResult<Duration> {
    let runs: Vec<_> = image
        .layers
        .iter()
        .map(|l| {
            let path = image.blob_path(&l.digest);
            async move {
                let status = tokio::process::Command::new("gzip")
                    .arg("-dc")
                    .arg(&path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .map_err(|e| format!("run gzip: {e}"))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("gzip -dc {} failed: {status}", path.display()))
                }
            }
        })
        .collect();
    let start = Instant::now();
    futures_util::stream::iter(runs)
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(start.elapsed())
}

/// Runs `job(layer index, layer blob path)` on blocking threads for every layer,
/// `concurrency` at a time; returns the wall time.
async fn per_layer<F>(image: &OciImage, concurrency: usize, job: F) -> BenchResult<Duration>
where
    F: Fn(usize, PathBuf) -> BenchResult<()> + Clone + Send + 'static,
{
    let jobs: Vec<_> = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let src = image.blob_path(&l.digest);
            let job = job.clone();
            // Lazy: the blocking task starts only when buffer_unordered polls it.
            async move {
                tokio::task::spawn_blocking(move || job(i, src))
                    .await
                    .map_err(|e| e.to_string())?
            }
        })
        .collect();
    sync_all();
    let start = Instant::now();
    futures_util::stream::iter(jobs)
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(start.elapsed())
}

/// Reads `reader` to EOF through a 256 KiB buffer, handing each piece to `sink`.
fn consume(mut reader: impl Read, mut sink: impl FnMut(&[u8])) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        sink(&buf[..n]);
        total += n as u64;
    }
}

fn gunzip_file(path: &Path) -> BenchResult<flate2::read::MultiGzDecoder<BufReader<File>>> {
    let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    Ok(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
        256 * 1024,
        file,
    )))
}

/// `syncfs(2)` of the filesystem holding `path`.
fn syncfs(path: &Path) -> BenchResult<()> {
    let fs = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: syncfs on a valid open descriptor.
    if unsafe { nix::libc::syncfs(fs.as_raw_fd()) } != 0 {
        return Err(format!("syncfs: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Diagnostics, not floors: where wharf's unpack time goes, on the local layer files
/// (no network, no content store), each with the pull's concurrency.
struct Diagnostics {
    /// flate2's gzip decoder (wharf's build: the miniz_oxide backend) to nowhere.
    gunzip: Duration,
    /// The same, plus sha256 of the tar stream (the diff_id).
    gunzip_sha256: Duration,
    /// wharf's `apply_layer`: gunzip, sha256, tar parsing, files written.
    apply_layer: Duration,
    /// One `syncfs` after all of `apply_layer`.
    syncfs_once: Duration,
    /// `apply_layer` then `syncfs` in each layer's slot, as wharf's snapshot commit does.
    apply_syncfs_each: Duration,
    /// `apply_layer` per slot, each layer's `syncfs` started after its slot is released.
    apply_syncfs_overlapped: Duration,
    /// GNU `tar -xzf` of each layer into an empty directory (a C reference unpacker).
    gnu_tar: Duration,
}

async fn diagnostics(
    image: &OciImage,
    concurrency: usize,
    keep: &mut Leftovers,
) -> BenchResult<Diagnostics> {
    let gunzip = per_layer(image, concurrency, |_, src| {
        consume(gunzip_file(&src)?, |_| ())
            .map(drop)
            .map_err(|e| format!("gunzip {}: {e}", src.display()))
    })
    .await?;
    let gunzip_sha256 = per_layer(image, concurrency, |_, src| {
        let mut hasher = Sha256::new();
        consume(gunzip_file(&src)?, |b| hasher.update(b))
            .map_err(|e| format!("gunzip {}: {e}", src.display()))?;
        std::hint::black_box(hasher.finalize());
        Ok(())
    })
    .await?;

    let dir = tempfile::Builder::new()
        .prefix("wharf-bench-unpack-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let base = dir.path().to_path_buf();
    let apply_layer = per_layer(image, concurrency, move |i, src| {
        let dest = base.join(format!("apply{i}"));
        std::fs::create_dir(&dest).map_err(|e| e.to_string())?;
        let file = File::open(&src).map_err(|e| e.to_string())?;
        wharf::image::unpack::apply_layer(file, wharf::image::unpack::Compression::Gzip, &dest)
            .map_err(|e| format!("apply_layer {}: {e}", src.display()))?;
        Ok(())
    })
    .await?;
    let sync_start = Instant::now();
    syncfs(dir.path())?;
    let syncfs_once = sync_start.elapsed();

    let base = dir.path().to_path_buf();
    let apply_syncfs_each = per_layer(image, concurrency, move |i, src| {
        let dest = base.join(format!("apply-sync{i}"));
        std::fs::create_dir(&dest).map_err(|e| e.to_string())?;
        let file = File::open(&src).map_err(|e| e.to_string())?;
        wharf::image::unpack::apply_layer(file, wharf::image::unpack::Compression::Gzip, &dest)
            .map_err(|e| format!("apply_layer {}: {e}", src.display()))?;
        syncfs(&dest)
    })
    .await?;

    // The same, but each layer's syncfs runs after its slot is released, so the next
    // layers unpack while the previous ones are flushed; timed until every syncfs is done.
    let base = dir.path().to_path_buf();
    let syncs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let syncs_in_jobs = syncs.clone();
    sync_all(); // so that per_layer's own sync has nothing left to flush
    let start = Instant::now();
    per_layer(image, concurrency, move |i, src| {
        let dest = base.join(format!("apply-bg{i}"));
        std::fs::create_dir(&dest).map_err(|e| e.to_string())?;
        let file = File::open(&src).map_err(|e| e.to_string())?;
        wharf::image::unpack::apply_layer(file, wharf::image::unpack::Compression::Gzip, &dest)
            .map_err(|e| format!("apply_layer {}: {e}", src.display()))?;
        let sync = std::thread::spawn(move || syncfs(&dest));
        syncs_in_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sync);
        Ok(())
    })
    .await?;
    let pending: Vec<_> = std::mem::take(&mut *syncs.lock().unwrap_or_else(|p| p.into_inner()));
    for sync in pending {
        sync.join()
            .map_err(|_| "syncfs thread panicked".to_string())??;
    }
    let apply_syncfs_overlapped = start.elapsed();

    let base = dir.path().to_path_buf();
    let gnu_tar = per_layer(image, concurrency, move |i, src| {
        let dest = base.join(format!("tar{i}"));
        std::fs::create_dir(&dest).map_err(|e| e.to_string())?;
        let status = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&src)
            .arg("-C")
            .arg(&dest)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("run tar: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("tar -xzf {} failed: {status}", src.display()))
        }
    })
    .await?;
    keep.dirs.push(dir);
    Ok(Diagnostics {
        gunzip,
        gunzip_sha256,
        apply_layer,
        syncfs_once,
        apply_syncfs_each,
        apply_syncfs_overlapped,
        gnu_tar,
    })
}

// ---------------------------------------------------------------------------
// main

struct Round {
    wharf: Duration,
    containerd: Duration,
    download: Duration,
    gzip: Duration,
    diag: Diagnostics,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

fn command_line(program: &str, args: &[&str], dir: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".to_string())
}

fn machine() -> String {
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "machine: {cpus} CPUs, {mem_gb} RAM, kernel {kernel}\n\
         containerd: {}\n\
         wharf commit: {}",
        command_line("containerd", &["--version"], None),
        command_line(
            "git",
            &["rev-parse", "--short", "HEAD"],
            Some(env!("CARGO_MANIFEST_DIR"))
        ),
    )
}

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MB / secs(d)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

async fn run(options: &Options) -> BenchResult<()> {
    println!("image_pull benchmark\n{}", machine());
    println!("load average before: {}", loadavg());

    let start = Instant::now();
    let bench = build_image(options.layers, options.layer_mb * 1_000_000);
    let (compressed, uncompressed) = (bench.compressed, bench.uncompressed);
    println!(
        "image: {} gzip layers, {:.1} MB compressed, {:.1} MB uncompressed (ratio {:.2}x), \
         {} files (built in {:.1} s)",
        bench.image.layers.len(),
        compressed as f64 / MB,
        uncompressed as f64 / MB,
        uncompressed as f64 / compressed as f64,
        bench.files,
        secs(start.elapsed()),
    );
    if options.image_only {
        return Ok(());
    }

    let registry = Registry::start().await;
    registry.push(REPO, TAG, &bench.image).await;
    let reference = format!("{}/{REPO}:{TAG}", registry.host());
    println!(
        "registry: docker-registry at {} ({reference}); parallel layer downloads: {}; \
         logs in {}",
        registry.url(),
        options.downloads,
        log_dir().display()
    );
    // Untimed warm-up: the registry's blob files into the page cache, for every run alike.
    download_floor(&registry.url(), &bench.image, options.downloads).await?;

    println!(
        "diagnostics: gunzip = flate2 gunzip to nowhere; +sha256 = and hash the tar; apply = \
         wharf apply_layer; +sync = one syncfs after it; apply/s = apply_layer + syncfs per \
         layer in its slot, as wharf commits; apply/o = the same with each syncfs started after \
         the slot is released; tar xzf = GNU tar"
    );
    println!();
    println!(
        "{:>5}  {:>10}  {:>10}  {:>10}  {:>10}  | {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}  (diagnostics, s)",
        "round",
        "wharf",
        "containerd",
        "download",
        "gzip -dc",
        "gunzip",
        "+sha256",
        "apply",
        "+sync",
        "apply/s",
        "apply/o",
        "tar xzf"
    );
    let mut rounds = Vec::new();
    let mut keep = Leftovers::default();
    for round in 1..=options.rounds {
        let wharf = wharf_pull(&reference, options.downloads, round, &mut keep).await?;
        if wharf.files != bench.files {
            return Err(format!(
                "wharf round {round}: the snapshots hold {} files ({} bytes), the image {}",
                wharf.files, wharf.bytes, bench.files
            ));
        }
        let ctr = containerd_pull(&reference, options.downloads, round, &mut keep).await?;
        if ctr.snapshots != bench.image.layers.len() || ctr.files != bench.files {
            return Err(format!(
                "containerd round {round}: {} committed snapshots and {} files ({} bytes); \
                 the image has {} layers and {} files",
                ctr.snapshots,
                ctr.files,
                ctr.bytes,
                bench.image.layers.len(),
                bench.files
            ));
        }
        sync_all();
        let (download, downloaded) =
            download_floor(&registry.url(), &bench.image, options.downloads).await?;
        let expected =
            compressed + bench.image.config.len() as u64 + bench.image.manifest.len() as u64;
        if downloaded != expected {
            return Err(format!(
                "download floor got {downloaded} bytes, expected {expected}"
            ));
        }
        sync_all();
        let gzip = gzip_floor(&bench.image, options.downloads).await?;
        let diag = diagnostics(&bench.image, options.downloads, &mut keep).await?;
        let r = Round {
            wharf: wharf.time,
            containerd: ctr.time,
            download,
            gzip,
            diag,
        };
        println!(
            "{:>5}  {:>8.3} s  {:>8.3} s  {:>8.3} s  {:>8.3} s  | {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3}",
            round,
            secs(r.wharf),
            secs(r.containerd),
            secs(r.download),
            secs(r.gzip),
            secs(r.diag.gunzip),
            secs(r.diag.gunzip_sha256),
            secs(r.diag.apply_layer),
            secs(r.diag.syncfs_once),
            secs(r.diag.apply_syncfs_each),
            secs(r.diag.apply_syncfs_overlapped),
            secs(r.diag.gnu_tar),
        );
        rounds.push(r);
    }

    let med = |f: fn(&Round) -> Duration| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let wharf = med(|r| r.wharf);
    let containerd = med(|r| r.containerd);
    let download = med(|r| r.download);
    let gzip = med(|r| r.gzip);
    println!();
    println!(
        "medians of {} rounds (MB = 10^6 bytes; compressed = layer blobs, uncompressed = layer tars)",
        rounds.len()
    );
    println!(
        "{:<44} {:>9}  {:>16}  {:>18}",
        "", "time", "compressed MB/s", "uncompressed MB/s"
    );
    let row = |name: &str, d: Duration| {
        println!(
            "{:<44} {:>7.3} s  {:>16.1}  {:>18.1}",
            name,
            secs(d),
            rate(compressed, d),
            rate(uncompressed, d)
        );
    };
    row("wharf pull + unpack (CRI PullImage)", wharf);
    row("containerd pull + unpack (ctr images pull)", containerd);
    row("floor: download blobs (HTTP GET, discard)", download);
    row("floor: gzip -dc layers > /dev/null", gzip);
    println!("diagnostics (local layer files, same concurrency; not goals):");
    row(
        "  flate2 gunzip (miniz_oxide) to nowhere",
        med(|r| r.diag.gunzip),
    );
    row(
        "  flate2 gunzip + sha256 of the tar",
        med(|r| r.diag.gunzip_sha256),
    );
    row(
        "  wharf apply_layer (no network, no sync)",
        med(|r| r.diag.apply_layer),
    );
    row(
        "  one syncfs after all apply_layer",
        med(|r| r.diag.syncfs_once),
    );
    row(
        "  apply_layer + syncfs per layer (as wharf)",
        med(|r| r.diag.apply_syncfs_each),
    );
    row(
        "  ... syncfs after the slot (overlapped)",
        med(|r| r.diag.apply_syncfs_overlapped),
    );
    row(
        "  GNU tar -xzf (reference unpacker)",
        med(|r| r.diag.gnu_tar),
    );

    let (slower_name, slower) = if download >= gzip {
        ("download", download)
    } else {
        ("gzip -dc", gzip)
    };
    let floor_ratio = secs(wharf) / secs(slower);
    let ctr_ratio = secs(wharf) / secs(containerd);
    println!();
    println!("slower floor: {slower_name} ({:.3} s)", secs(slower));
    println!(
        "wharf / slower floor = {floor_ratio:.2}   goal <= {FLOOR_GOAL}   {}",
        verdict(floor_ratio <= FLOOR_GOAL)
    );
    println!(
        "wharf / containerd   = {ctr_ratio:.2}   goal < {CONTAINERD_GOAL}     {}",
        verdict(ctr_ratio < CONTAINERD_GOAL)
    );
    println!("load average after: {}", loadavg());
    drop(keep);
    Ok(())
}

#[tokio::main]
async fn main() {
    let options = parse_args();
    preflight();
    if let Err(err) = run(&options).await {
        eprintln!("image_pull: {err}");
        std::process::exit(1);
    }
}
