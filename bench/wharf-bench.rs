//! wharf-bench: a CRI benchmark (issue 6, item 1). Drives any CRI endpoint
//! (`--endpoint unix:///path`: wharfd, containerd, CRI-O) through the gRPC API with the
//! `k8s-cri` client, as kubelet would, and measures:
//!
//! 1. `PullImage` of `--image` (removed first), `--pull-rounds` times;
//! 2. pod lifecycle at each `--concurrency` level: that many pods started at once, each
//!    `RunPodSandbox` + `CreateContainer` + `StartContainer` (`sleep 3600`), then stopped
//!    and removed at the same concurrency; one latency series per RPC, plus the wall time
//!    until all pods of a wave run (or are gone). Waves repeat until `--min-pods` pods
//!    were measured at that level;
//! 3. kubelet's polling calls (`ListPodSandbox`, `ListContainers`, `ContainerStatus`,
//!    `PodSandboxStatus`, after `Version` as the transport floor), `--poll-calls` each,
//!    with each `--live` number of running pods, then kubelet's stats calls
//!    (`ListContainerStats`, `ListPodSandboxStats`, issue 22) and, with `--metrics-url`,
//!    a Prometheus scrape, `--stats-calls` each;
//! 4. memory at start and at each `--live` level: the daemon's RSS and PSS (its pid from
//!    `--daemon-pid`, else SO_PEERCRED of the socket), and the summed RSS / PSS of the
//!    runtime's per-pod processes (see [`procs`]).
//!
//! Output: a table on stdout, or JSON with `--json` (fields: docs/benchmarks.md).
//! Progress goes to stderr. Everything the bench creates carries the label
//! `wharf-bench.run=<pid>` and is stopped and removed at the end, on failure and on
//! SIGINT / SIGTERM; cleanup failures are reported and make the exit status non-zero.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::stream::{self, StreamExt};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainerStatsRequest,
    ListContainersRequest, ListPodSandboxRequest, ListPodSandboxStatsRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata,
    PodSandboxStatusRequest, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tonic::transport::Channel;

use stats::Summary;

/// Label on every pod the bench creates; its value is the bench's pid.
const RUN_LABEL: &str = "wharf-bench.run";
const NAMESPACE: &str = "wharf-bench";
const CONTAINER_NAME: &str = "sleep";
/// Concurrency of the cleanup sweep.
const CLEANUP_CONCURRENCY: usize = 10;
/// Cleanup passes (list, remove) before leftovers are reported.
const CLEANUP_PASSES: usize = 3;

#[derive(Debug, Parser)]
#[command(
    name = "wharf-bench",
    version,
    about = "CRI benchmark: pull, pod/container lifecycle at several concurrencies, kubelet's \
             polling calls with live pods, and memory, against any CRI endpoint",
    after_help = "Output fields and how to run it: docs/benchmarks.md, section \"CRI benchmark\"."
)]
struct Args {
    /// CRI endpoint: unix:///path/to/socket (or a plain socket path)
    #[arg(long, default_value = "unix:///run/wharf/wharf.sock")]
    endpoint: String,
    /// Image to pull and run; must have /bin/sleep (busybox), e.g. 127.0.0.1:5000/bench/busybox:latest
    #[arg(long, required_unless_present = "cleanup")]
    image: Option<String>,
    /// Timed pulls (each after RemoveImage); 0 skips the pull phase (the image must be present)
    #[arg(long, default_value_t = 3)]
    pull_rounds: usize,
    /// Pods started at once, per level (comma-separated)
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    concurrency: Vec<usize>,
    /// At least this many pods are measured per concurrency level (waves repeat)
    #[arg(long, default_value_t = 20)]
    min_pods: usize,
    /// Live pod counts for the polling and memory phase (comma-separated; 0 = idle)
    #[arg(long, value_delimiter = ',', default_value = "0,50,100")]
    live: Vec<usize>,
    /// Calls of each polling RPC per live level
    #[arg(long, default_value_t = 200)]
    poll_calls: usize,
    /// Calls of ListContainerStats and ListPodSandboxStats per live level (kubelet's
    /// 10 s stats poll; each call reads every running container's cgroups)
    #[arg(long, default_value_t = 50)]
    stats_calls: usize,
    /// Also time GET of this Prometheus URL per live level (wharfd's
    /// http://127.0.0.1:1338/metrics), --stats-calls times
    #[arg(long)]
    metrics_url: Option<String>,
    /// Each pod's cgroup parent is `<this>/pod<uid>`, as kubelet's cgroupfs layout
    /// (containerd 1.6 cannot answer ListPodSandboxStats for a pod without one); empty:
    /// the runtime's default, as crictl leaves it
    #[arg(long, default_value = "")]
    cgroup_parent: String,
    /// Concurrency used to create (untimed) the live pods and for cleanup
    #[arg(long, default_value_t = 10)]
    setup_concurrency: usize,
    /// The daemon's pid (default: the peer of the endpoint's socket, SO_PEERCRED)
    #[arg(long)]
    daemon_pid: Option<i32>,
    /// '|'-separated substrings of the runtime's per-pod process names (comm or argv[0])
    #[arg(long, default_value = "wharf-monitor|containerd-shim")]
    shim_pattern: String,
    /// Seconds before an RPC counts as failed
    #[arg(long, default_value_t = 120)]
    rpc_timeout: u64,
    /// Directory for the pods' log directories (default: the temp dir); removed afterwards
    #[arg(long)]
    log_root: Option<PathBuf>,
    /// Print the results as JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Do not benchmark: remove every pod and container left by run RUN (the pid in the
    /// pod names wharf-bench-RUN-N, label wharf-bench.run=RUN), e.g. after a crash
    #[arg(long, value_name = "RUN")]
    cleanup: Option<String>,
}

// ---------------------------------------------------------------------------
// report

/// One latency series. `concurrency` is set for lifecycle ops, `live` for polling ops.
#[derive(Debug, Serialize)]
struct SeriesReport {
    op: String,
    concurrency: Option<usize>,
    live: Option<usize>,
    n: usize,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    mean_ms: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct ProcGroup {
    count: usize,
    rss_mib: f64,
    pss_mib: f64,
}

#[derive(Debug, Serialize)]
struct MemoryReport {
    /// "start" (before the pull) or "live" (during the polling phase).
    point: String,
    live_pods: usize,
    daemon_rss_mib: Option<f64>,
    daemon_pss_mib: Option<f64>,
    /// The runtime's per-pod processes (shims/monitors and their non-container children).
    runtime_procs: ProcGroup,
    per_pod_rss_mib: Option<f64>,
    per_pod_pss_mib: Option<f64>,
    /// `runtime_procs` by process name (comm).
    by_comm: BTreeMap<String, ProcGroup>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    endpoint: String,
    runtime_name: String,
    runtime_version: String,
    runtime_api_version: String,
    image: String,
    daemon_pid: Option<i32>,
    shim_pattern: String,
    latency: Vec<SeriesReport>,
    memory: Vec<MemoryReport>,
    /// False when a phase failed or the run was interrupted; `error` says why.
    complete: bool,
    error: Option<String>,
    cleanup_errors: Vec<String>,
}

impl Report {
    fn add(&mut self, op: &str, concurrency: Option<usize>, live: Option<usize>, s: &[Duration]) {
        let summary = Summary::of(s);
        // Milliseconds, rounded to the microsecond.
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
        self.latency.push(SeriesReport {
            op: op.to_string(),
            concurrency,
            live,
            n: s.len(),
            p50_ms: ms(summary.as_ref().map(|s| s.p50)),
            p90_ms: ms(summary.as_ref().map(|s| s.p90)),
            p99_ms: ms(summary.as_ref().map(|s| s.p99)),
            max_ms: ms(summary.as_ref().map(|s| s.max)),
            mean_ms: ms(summary.as_ref().map(|s| s.mean)),
        });
    }

    fn print_table(&self) {
        println!(
            "endpoint {} — runtime {} {} (CRI {}), daemon pid {}",
            self.endpoint,
            self.runtime_name,
            self.runtime_version,
            self.runtime_api_version,
            self.daemon_pid
                .map_or_else(|| "unknown".to_string(), |p| p.to_string())
        );
        println!("image {}", self.image);
        println!();
        println!(
            "{:<34} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "conc", "live", "n", "p50", "p90", "p99", "max"
        );
        let opt = |v: Option<usize>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        for s in &self.latency {
            println!(
                "{:<34} {:>5} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9}",
                s.op,
                opt(s.concurrency),
                opt(s.live),
                s.n,
                ms(s.p50_ms),
                ms(s.p90_ms),
                ms(s.p99_ms),
                ms(s.max_ms)
            );
        }
        println!();
        println!(
            "{:<12} {:>5} {:>11} {:>11} {:>6} {:>10} {:>10} {:>12} {:>12}",
            "memory (MiB)",
            "live",
            "daemon rss",
            "daemon pss",
            "procs",
            "procs rss",
            "procs pss",
            "per-pod rss",
            "per-pod pss"
        );
        let mib = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        for m in &self.memory {
            println!(
                "{:<12} {:>5} {:>11} {:>11} {:>6} {:>10.1} {:>10.1} {:>12} {:>12}",
                m.point,
                m.live_pods,
                mib(m.daemon_rss_mib),
                mib(m.daemon_pss_mib),
                m.runtime_procs.count,
                m.runtime_procs.rss_mib,
                m.runtime_procs.pss_mib,
                mib(m.per_pod_rss_mib),
                mib(m.per_pod_pss_mib)
            );
            for (comm, g) in &m.by_comm {
                println!(
                    "{:<12} {:>5} {:>11} {:>11} {:>6} {:>10.1} {:>10.1}   ({comm})",
                    "", "", "", "", g.count, g.rss_mib, g.pss_mib
                );
            }
        }
        println!(
            "(per-pod runtime processes: name matches {:?} and the command line names a bench \
             pod or container, plus their children outside the containers' cgroups)",
            self.shim_pattern
        );
        if !self.complete {
            println!();
            println!(
                "INCOMPLETE RUN: {}",
                self.error.as_deref().unwrap_or("unknown error")
            );
        }
        for err in &self.cleanup_errors {
            println!("CLEANUP FAILED: {err}");
        }
    }
}

// ---------------------------------------------------------------------------
// the bench

/// What the bench created and has not removed yet (container id -> pod id; pod ids).
#[derive(Debug, Default)]
struct Tracker {
    pods: BTreeSet<String>,
    containers: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct LivePod {
    name: String,
    pod_id: String,
    container_id: String,
}

/// Latencies of one pod's start (RunPodSandbox, CreateContainer, StartContainer) and the
/// instant its container ran.
struct StartTimes {
    run: Duration,
    create: Duration,
    start: Duration,
    done: Instant,
}

/// Latencies of one pod's teardown.
struct StopTimes {
    stop_container: Duration,
    remove_container: Duration,
    stop_pod: Duration,
    remove_pod: Duration,
    done: Instant,
}

#[derive(Clone)]
struct Bench {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    image: String,
    run_id: String,
    log_root: PathBuf,
    cgroup_parent: String,
    timeout: Duration,
    next_pod: Arc<AtomicUsize>,
    tracker: Arc<Mutex<Tracker>>,
    /// Set on interruption or failure: spawned pod tasks make no new RPC.
    stopping: Arc<AtomicBool>,
    /// Spawned pod tasks still running (cleanup waits for them).
    active: Arc<AtomicUsize>,
}

/// Counts a spawned pod task as active for its lifetime.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(active: &Arc<AtomicUsize>) -> ActiveGuard {
        active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(active.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Times one RPC; errors name `what` (the RPC and its object).
async fn rpc<T, F>(
    what: impl FnOnce() -> String,
    timeout: Duration,
    call: F,
) -> Result<(T, Duration), String>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok((response.into_inner(), started.elapsed())),
        Ok(Err(status)) => Err(format!(
            "{}: {:?}: {}",
            what(),
            status.code(),
            status.message()
        )),
        Err(_) => Err(format!("{}: no answer within {timeout:?}", what())),
    }
}

fn random_uid() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    if bytes == [0u8; 16] {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Bench {
    fn check_stopping(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::SeqCst) {
            Err("stopping: no new RPC".to_string())
        } else {
            Ok(())
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pod_config(&self, name: &str) -> Result<PodSandboxConfig, String> {
        let log_directory = self.log_root.join(name);
        std::fs::create_dir_all(&log_directory)
            .map_err(|err| format!("create log directory {}: {err}", log_directory.display()))?;
        let uid = random_uid();
        let cgroup_parent = if self.cgroup_parent.is_empty() {
            String::new()
        } else {
            format!("{}/pod{uid}", self.cgroup_parent)
        };
        Ok(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid,
                namespace: NAMESPACE.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: log_directory.display().to_string(),
            labels: HashMap::from([(RUN_LABEL.to_string(), self.run_id.clone())]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespace_options()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn container_config(&self) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: CONTAINER_NAME.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["/bin/sleep".to_string(), "3600".to_string()],
            labels: HashMap::from([(RUN_LABEL.to_string(), self.run_id.clone())]),
            log_path: format!("{CONTAINER_NAME}_0.log"),
            linux: Some(LinuxContainerConfig {
                resources: None,
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespace_options()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox + CreateContainer + StartContainer of one new pod.
    async fn start_pod(&self) -> Result<(LivePod, StartTimes), String> {
        self.check_stopping()?;
        let n = self.next_pod.fetch_add(1, Ordering::Relaxed);
        let name = format!("wharf-bench-{}-{n}", self.run_id);
        let config = self.pod_config(&name)?;
        let mut runtime = self.runtime.clone();
        let (response, run) = rpc(
            || format!("RunPodSandbox of pod {name}"),
            self.timeout,
            runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }),
        )
        .await?;
        let pod_id = response.pod_sandbox_id;
        self.lock().pods.insert(pod_id.clone());
        self.check_stopping()?;
        let (response, create) = rpc(
            || format!("CreateContainer in pod {name} ({pod_id})"),
            self.timeout,
            runtime.create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(self.container_config()),
                sandbox_config: Some(config),
            }),
        )
        .await?;
        let container_id = response.container_id;
        self.lock()
            .containers
            .insert(container_id.clone(), pod_id.clone());
        self.check_stopping()?;
        let (_, start) = rpc(
            || format!("StartContainer {container_id} in pod {name}"),
            self.timeout,
            runtime.start_container(StartContainerRequest {
                container_id: container_id.clone(),
            }),
        )
        .await?;
        let done = Instant::now();
        Ok((
            LivePod {
                name,
                pod_id,
                container_id,
            },
            StartTimes {
                run,
                create,
                start,
                done,
            },
        ))
    }

    /// StopContainer (timeout 0), RemoveContainer, StopPodSandbox, RemovePodSandbox.
    async fn stop_pod(&self, pod: &LivePod) -> Result<StopTimes, String> {
        let mut runtime = self.runtime.clone();
        let (name, cid, pid) = (&pod.name, &pod.container_id, &pod.pod_id);
        let (_, stop_container) = rpc(
            || format!("StopContainer {cid} in pod {name}"),
            self.timeout,
            runtime.stop_container(StopContainerRequest {
                container_id: cid.clone(),
                timeout: 0,
            }),
        )
        .await?;
        let (_, remove_container) = rpc(
            || format!("RemoveContainer {cid} in pod {name}"),
            self.timeout,
            runtime.remove_container(RemoveContainerRequest {
                container_id: cid.clone(),
            }),
        )
        .await?;
        self.lock().containers.remove(cid);
        let (_, stop_pod) = rpc(
            || format!("StopPodSandbox of pod {name} ({pid})"),
            self.timeout,
            runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pid.clone(),
            }),
        )
        .await?;
        let (_, remove_pod) = rpc(
            || format!("RemovePodSandbox of pod {name} ({pid})"),
            self.timeout,
            runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pid.clone(),
            }),
        )
        .await?;
        self.lock().pods.remove(pid);
        let _ = std::fs::remove_dir_all(self.log_root.join(name));
        Ok(StopTimes {
            stop_container,
            remove_container,
            stop_pod,
            remove_pod,
            done: Instant::now(),
        })
    }

    /// `count` pods started at once; returns them with their times and the wall time
    /// from the common start until the last container ran.
    async fn start_wave(
        &self,
        count: usize,
    ) -> Result<(Vec<(LivePod, StartTimes)>, Duration), String> {
        let barrier = Arc::new(tokio::sync::Barrier::new(count + 1));
        let tasks: Vec<_> = (0..count)
            .map(|_| {
                let bench = self.clone();
                let barrier = barrier.clone();
                let guard = ActiveGuard::new(&bench.active);
                tokio::spawn(async move {
                    let _guard = guard;
                    barrier.wait().await;
                    bench.start_pod().await
                })
            })
            .collect();
        barrier.wait().await;
        let t0 = Instant::now();
        let mut started = Vec::with_capacity(count);
        let mut errors = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok(pod)) => started.push(pod),
                Ok(Err(err)) => errors.push(err),
                Err(err) => errors.push(format!("pod start task failed: {err}")),
            }
        }
        if let Some(first) = errors.first() {
            return Err(format!(
                "{} of {count} concurrent pod starts failed; first: {first}",
                errors.len()
            ));
        }
        let wall = started
            .iter()
            .map(|(_, t)| t.done.saturating_duration_since(t0))
            .max()
            .unwrap_or_default();
        Ok((started, wall))
    }

    /// Teardown of `pods`, all at once; returns the times and the wall time.
    async fn stop_wave(&self, pods: Vec<LivePod>) -> Result<(Vec<StopTimes>, Duration), String> {
        let count = pods.len();
        let barrier = Arc::new(tokio::sync::Barrier::new(count + 1));
        let tasks: Vec<_> = pods
            .into_iter()
            .map(|pod| {
                let bench = self.clone();
                let barrier = barrier.clone();
                let guard = ActiveGuard::new(&bench.active);
                tokio::spawn(async move {
                    let _guard = guard;
                    barrier.wait().await;
                    bench.stop_pod(&pod).await
                })
            })
            .collect();
        barrier.wait().await;
        let t0 = Instant::now();
        let mut times = Vec::with_capacity(count);
        let mut errors = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok(t)) => times.push(t),
                Ok(Err(err)) => errors.push(err),
                Err(err) => errors.push(format!("pod teardown task failed: {err}")),
            }
        }
        if let Some(first) = errors.first() {
            return Err(format!(
                "{} of {count} concurrent pod teardowns failed; first: {first}",
                errors.len()
            ));
        }
        let wall = times
            .iter()
            .map(|t| t.done.saturating_duration_since(t0))
            .max()
            .unwrap_or_default();
        Ok((times, wall))
    }

    async fn pull_phase(&self, rounds: usize, report: &mut Report) -> Result<(), String> {
        let mut images = self.images.clone();
        let spec = ImageSpec {
            image: self.image.clone(),
            ..Default::default()
        };
        let mut samples = Vec::new();
        for round in 1..=rounds {
            eprintln!("wharf-bench: pull {round}/{rounds}");
            let removed = rpc(
                || format!("RemoveImage {}", self.image),
                self.timeout,
                images.remove_image(RemoveImageRequest {
                    image: Some(spec.clone()),
                }),
            )
            .await;
            if let Err(err) = removed {
                // Removing an absent image is not an error in CRI, but be lenient.
                if !err.contains("NotFound") {
                    return Err(err);
                }
            }
            // Dirty pages of earlier work must not be flushed inside a timed pull
            // (runtimes that sync their snapshots would pay for them).
            nix::unistd::sync();
            let (_, took) = rpc(
                || format!("PullImage {}", self.image),
                self.timeout,
                images.pull_image(PullImageRequest {
                    image: Some(spec.clone()),
                    auth: None,
                    sandbox_config: None,
                }),
            )
            .await?;
            samples.push(took);
        }
        report.add("PullImage", None, None, &samples);
        Ok(())
    }

    async fn lifecycle_phase(&self, args: &Args, report: &mut Report) -> Result<(), String> {
        for &level in &args.concurrency {
            let waves = args.min_pods.div_ceil(level).max(1);
            eprintln!("wharf-bench: lifecycle at concurrency {level} ({waves} waves)");
            let (mut run, mut create, mut start, mut both, mut all) =
                (vec![], vec![], vec![], vec![], vec![]);
            let (mut running, mut gone) = (vec![], vec![]);
            let (mut stop_c, mut rm_c, mut stop_p, mut rm_p) = (vec![], vec![], vec![], vec![]);
            for _ in 0..waves {
                let (started, wall) = self.start_wave(level).await?;
                running.push(wall);
                let mut pods = Vec::with_capacity(started.len());
                for (pod, t) in started {
                    run.push(t.run);
                    create.push(t.create);
                    start.push(t.start);
                    both.push(t.create + t.start);
                    all.push(t.run + t.create + t.start);
                    pods.push(pod);
                }
                let (stopped, wall) = self.stop_wave(pods).await?;
                gone.push(wall);
                for t in stopped {
                    stop_c.push(t.stop_container);
                    rm_c.push(t.remove_container);
                    stop_p.push(t.stop_pod);
                    rm_p.push(t.remove_pod);
                }
            }
            let c = Some(level);
            report.add("RunPodSandbox", c, None, &run);
            report.add("CreateContainer", c, None, &create);
            report.add("StartContainer", c, None, &start);
            report.add("CreateContainer+StartContainer", c, None, &both);
            report.add("pod start (Run+Create+Start)", c, None, &all);
            report.add("wave: all running (wall)", c, None, &running);
            report.add("StopContainer (timeout 0)", c, None, &stop_c);
            report.add("RemoveContainer", c, None, &rm_c);
            report.add("StopPodSandbox", c, None, &stop_p);
            report.add("RemovePodSandbox", c, None, &rm_p);
            report.add("wave: all removed (wall)", c, None, &gone);
        }
        Ok(())
    }

    /// Starts pods (untimed, `concurrency` at a time) until `live` has `target` pods.
    async fn grow(
        &self,
        live: &mut Vec<LivePod>,
        target: usize,
        concurrency: usize,
    ) -> Result<(), String> {
        while live.len() < target {
            let batch = concurrency.min(target - live.len());
            let (started, _) = self.start_wave(batch).await?;
            live.extend(started.into_iter().map(|(pod, _)| pod));
        }
        Ok(())
    }

    async fn poll_phase(
        &self,
        args: &Args,
        daemon_pid: Option<i32>,
        report: &mut Report,
    ) -> Result<(), String> {
        let mut levels = args.live.clone();
        levels.sort_unstable();
        levels.dedup();
        let mut live = Vec::new();
        let result = async {
            for &level in &levels {
                eprintln!("wharf-bench: polling with {level} live pods");
                while live.len() > level {
                    if let Some(pod) = live.pop() {
                        self.stop_pod(&pod).await?;
                    }
                }
                if level > live.len() {
                    // The wall time to bring the pods up (setup_concurrency at a time).
                    let from = live.len();
                    let started = Instant::now();
                    self.grow(&mut live, level, args.setup_concurrency).await?;
                    report.add(
                        &format!("start pods {from} -> {level} (wall)"),
                        None,
                        Some(level),
                        &[started.elapsed()],
                    );
                }
                // Let start-up work settle before memory is read.
                tokio::time::sleep(Duration::from_millis(500)).await;
                report
                    .memory
                    .push(self.memory("live", level, daemon_pid, &args.shim_pattern));
                self.poll(&live, args.poll_calls, level, report).await?;
                self.poll_stats(args, level, report).await?;
            }
            Ok::<(), String>(())
        }
        .await;
        // Orderly teardown of the live pods (its wall time reported); leftovers go to
        // the cleanup sweep.
        let (count, started) = (live.len(), Instant::now());
        let teardown = stream::iter(live)
            .map(|pod| async move { self.stop_pod(&pod).await })
            .buffer_unordered(args.setup_concurrency)
            .collect::<Vec<_>>()
            .await;
        if result.is_ok() && count > 0 {
            report.add(
                &format!("stop and remove {count} pods (wall)"),
                None,
                Some(count),
                &[started.elapsed()],
            );
        }
        result?;
        teardown
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    async fn poll(
        &self,
        live: &[LivePod],
        calls: usize,
        level: usize,
        report: &mut Report,
    ) -> Result<(), String> {
        let mut runtime = self.runtime.clone();
        let l = Some(level);
        let mut samples = Vec::with_capacity(calls);
        // The floor: an RPC whose answer does not depend on the pods (the gRPC round
        // trip over the socket plus the server's dispatch), to read the others against.
        for _ in 0..calls {
            let (_, took) = rpc(
                || "Version".to_string(),
                self.timeout,
                runtime.version(VersionRequest::default()),
            )
            .await?;
            samples.push(took);
        }
        report.add("Version (transport floor)", None, l, &samples);
        samples.clear();
        for _ in 0..calls {
            let (_, took) = rpc(
                || "ListPodSandbox".to_string(),
                self.timeout,
                runtime.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
            )
            .await?;
            samples.push(took);
        }
        report.add("ListPodSandbox", None, l, &samples);
        samples.clear();
        for _ in 0..calls {
            let (_, took) = rpc(
                || "ListContainers".to_string(),
                self.timeout,
                runtime.list_containers(ListContainersRequest { filter: None }),
            )
            .await?;
            samples.push(took);
        }
        report.add("ListContainers", None, l, &samples);
        samples.clear();
        // Status calls need a pod: none with 0 live pods (kubelet would not make them).
        if !live.is_empty() {
            for i in 0..calls {
                let pod = &live[i % live.len()];
                let (_, took) = rpc(
                    || format!("ContainerStatus {} in pod {}", pod.container_id, pod.name),
                    self.timeout,
                    runtime.container_status(ContainerStatusRequest {
                        container_id: pod.container_id.clone(),
                        verbose: false,
                    }),
                )
                .await?;
                samples.push(took);
            }
        }
        report.add("ContainerStatus", None, l, &samples);
        samples.clear();
        if !live.is_empty() {
            for i in 0..calls {
                let pod = &live[i % live.len()];
                let (_, took) = rpc(
                    || format!("PodSandboxStatus of pod {} ({})", pod.name, pod.pod_id),
                    self.timeout,
                    runtime.pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: pod.pod_id.clone(),
                        verbose: false,
                    }),
                )
                .await?;
                samples.push(took);
            }
        }
        report.add("PodSandboxStatus", None, l, &samples);
        Ok(())
    }

    /// kubelet's stats calls (and a Prometheus scrape, when asked) at one live level.
    async fn poll_stats(
        &self,
        args: &Args,
        level: usize,
        report: &mut Report,
    ) -> Result<(), String> {
        let mut runtime = self.runtime.clone();
        let l = Some(level);
        let mut samples = Vec::with_capacity(args.stats_calls);
        for _ in 0..args.stats_calls {
            let (_, took) = rpc(
                || "ListContainerStats".to_string(),
                self.timeout,
                runtime.list_container_stats(ListContainerStatsRequest { filter: None }),
            )
            .await?;
            samples.push(took);
        }
        report.add("ListContainerStats", None, l, &samples);
        samples.clear();
        for _ in 0..args.stats_calls {
            let (_, took) = rpc(
                || "ListPodSandboxStats".to_string(),
                self.timeout,
                runtime.list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None }),
            )
            .await?;
            samples.push(took);
        }
        report.add("ListPodSandboxStats", None, l, &samples);
        if let Some(url) = &args.metrics_url {
            samples.clear();
            let client = reqwest::Client::new();
            for _ in 0..args.stats_calls {
                let started = Instant::now();
                let body = client
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|err| format!("GET {url}: {err}"))?
                    .bytes()
                    .await
                    .map_err(|err| format!("GET {url}: {err}"))?;
                samples.push(started.elapsed());
                if body.is_empty() {
                    return Err(format!("GET {url}: an empty exposition"));
                }
            }
            report.add("GET /metrics (Prometheus scrape)", None, l, &samples);
        }
        Ok(())
    }

    fn memory(
        &self,
        point: &str,
        live: usize,
        daemon_pid: Option<i32>,
        pattern: &str,
    ) -> MemoryReport {
        let daemon = daemon_pid.and_then(procs::memory_of);
        let (pods, containers): (Vec<String>, Vec<String>) = {
            let t = self.lock();
            (
                t.pods.iter().cloned().collect(),
                t.containers.keys().cloned().collect(),
            )
        };
        let found = procs::runtime_processes(pattern, &pods, &containers);
        let mut total = ProcGroup::default();
        let mut by_comm: BTreeMap<String, ProcGroup> = BTreeMap::new();
        for p in &found {
            let (rss, pss) = (
                kib_to_mib(p.mem.rss_kib),
                kib_to_mib(p.mem.pss_kib.unwrap_or(p.mem.rss_kib)),
            );
            for g in [&mut total, by_comm.entry(p.comm.clone()).or_default()] {
                g.count += 1;
                g.rss_mib += rss;
                g.pss_mib += pss;
            }
        }
        for g in std::iter::once(&mut total).chain(by_comm.values_mut()) {
            g.rss_mib = round2(g.rss_mib);
            g.pss_mib = round2(g.pss_mib);
        }
        let per_pod = |v: f64| (live > 0).then(|| round2(v / live as f64));
        MemoryReport {
            point: point.to_string(),
            live_pods: live,
            daemon_rss_mib: daemon.map(|m| round2(kib_to_mib(m.rss_kib))),
            daemon_pss_mib: daemon
                .and_then(|m| m.pss_kib)
                .map(|k| round2(kib_to_mib(k))),
            per_pod_rss_mib: per_pod(total.rss_mib),
            per_pod_pss_mib: per_pod(total.pss_mib),
            runtime_procs: total,
            by_comm,
        }
    }

    /// Best-effort removal of everything this run created. Stops new RPCs, waits for
    /// the pod tasks still running, then removes the tracked containers and pods and
    /// whatever carries this run's label (pods whose RunPodSandbox answer was lost), in
    /// passes until a listing finds nothing. Returns what failed.
    async fn cleanup(&self) -> Vec<String> {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + self.timeout;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut errors = Vec::new();
        let still = self.active.load(Ordering::SeqCst);
        if still > 0 {
            errors.push(format!(
                "{still} pod tasks still running after {:?}",
                self.timeout
            ));
        }
        for pass in 1..=CLEANUP_PASSES {
            let (containers, pods, list_errors) = self.leftovers().await;
            if containers.is_empty() && pods.is_empty() {
                if pass > 1 || !list_errors.is_empty() {
                    errors.extend(list_errors);
                }
                return errors;
            }
            eprintln!(
                "wharf-bench: cleanup pass {pass}: removing {} containers and {} pods",
                containers.len(),
                pods.len()
            );
            let pass_errors = self.remove_all(containers, pods).await;
            if pass == CLEANUP_PASSES {
                errors.extend(list_errors);
                errors.extend(pass_errors);
                let (containers, pods, _) = self.leftovers().await;
                if !containers.is_empty() || !pods.is_empty() {
                    errors.push(format!(
                        "left behind: containers {containers:?}, pods {pods:?}"
                    ));
                }
                return errors;
            }
            // Give the runtime a moment to finish requests cut off by the interruption.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        errors
    }

    /// Tracked plus labelled containers and pods of this run.
    async fn leftovers(&self) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
        let (mut containers, mut pods): (BTreeSet<String>, BTreeSet<String>) = {
            let t = self.lock();
            (t.containers.keys().cloned().collect(), t.pods.clone())
        };
        let mut errors = Vec::new();
        let selector = HashMap::from([(RUN_LABEL.to_string(), self.run_id.clone())]);
        let mut runtime = self.runtime.clone();
        match rpc(
            || {
                format!(
                    "cleanup: ListPodSandbox with label {RUN_LABEL}={}",
                    self.run_id
                )
            },
            self.timeout,
            runtime.list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: selector.clone(),
                    ..Default::default()
                }),
            }),
        )
        .await
        {
            Ok((list, _)) => pods.extend(list.items.into_iter().map(|p| p.id)),
            Err(err) => errors.push(err),
        }
        match rpc(
            || {
                format!(
                    "cleanup: ListContainers with label {RUN_LABEL}={}",
                    self.run_id
                )
            },
            self.timeout,
            runtime.list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    label_selector: selector,
                    ..Default::default()
                }),
            }),
        )
        .await
        {
            Ok((list, _)) => containers.extend(list.containers.into_iter().map(|c| c.id)),
            Err(err) => errors.push(err),
        }
        (containers, pods, errors)
    }

    async fn remove_all(
        &self,
        containers: BTreeSet<String>,
        pods: BTreeSet<String>,
    ) -> Vec<String> {
        let results = stream::iter(containers)
            .map(|cid| {
                let mut runtime = self.runtime.clone();
                async move {
                    let _ = rpc(
                        || format!("cleanup: StopContainer {cid}"),
                        self.timeout,
                        runtime.stop_container(StopContainerRequest {
                            container_id: cid.clone(),
                            timeout: 0,
                        }),
                    )
                    .await;
                    let removed = rpc(
                        || format!("cleanup: RemoveContainer {cid}"),
                        self.timeout,
                        runtime.remove_container(RemoveContainerRequest {
                            container_id: cid.clone(),
                        }),
                    )
                    .await;
                    if removed.is_ok() {
                        self.lock().containers.remove(&cid);
                    }
                    removed.map(|_| ())
                }
            })
            .buffer_unordered(CLEANUP_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        let results = stream::iter(pods)
            .map(|pid| {
                let mut runtime = self.runtime.clone();
                async move {
                    rpc(
                        || format!("cleanup: StopPodSandbox {pid}"),
                        self.timeout,
                        runtime.stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: pid.clone(),
                        }),
                    )
                    .await?;
                    rpc(
                        || format!("cleanup: RemovePodSandbox {pid}"),
                        self.timeout,
                        runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                            pod_sandbox_id: pid.clone(),
                        }),
                    )
                    .await?;
                    let mut t = self.lock();
                    t.pods.remove(&pid);
                    t.containers.retain(|_, p| *p != pid);
                    Ok::<(), String>(())
                }
            })
            .buffer_unordered(CLEANUP_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        errors.extend(results.into_iter().filter_map(Result::err));
        errors
    }
}

fn namespace_options() -> NamespaceOption {
    // kubelet's defaults: pod network and IPC namespaces, one PID namespace per container.
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Rounded to 0.01 (MiB in the report).
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        return Ok(PathBuf::from(path));
    }
    if endpoint.contains("://") {
        return Err(format!(
            "--endpoint {endpoint:?}: only unix:// endpoints are supported"
        ));
    }
    Ok(PathBuf::from(endpoint))
}

/// The pid of the process serving `socket` (SO_PEERCRED of a new connection).
fn peer_pid(socket: &Path) -> Result<i32, String> {
    let stream = UnixStream::connect(socket)
        .map_err(|err| format!("connect to {}: {err}", socket.display()))?;
    let creds = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|err| format!("SO_PEERCRED on {}: {err}", socket.display()))?;
    Ok(creds.pid())
}

fn validate(args: &Args) -> Result<(), String> {
    if args.concurrency.contains(&0) {
        return Err("--concurrency: levels must be at least 1".into());
    }
    if args.setup_concurrency == 0 {
        return Err("--setup-concurrency must be at least 1".into());
    }
    if args.cleanup.is_none() && args.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        return Err("--image must not be empty".into());
    }
    if args.shim_pattern.split('|').all(str::is_empty) {
        return Err("--shim-pattern must name at least one process".into());
    }
    Ok(())
}

async fn run(
    bench: &Bench,
    args: &Args,
    daemon_pid: Option<i32>,
    report: &mut Report,
) -> Result<(), String> {
    report
        .memory
        .push(bench.memory("start", 0, daemon_pid, &args.shim_pattern));
    if args.pull_rounds > 0 {
        bench.pull_phase(args.pull_rounds, report).await?;
    }
    bench.lifecycle_phase(args, report).await?;
    bench.poll_phase(args, daemon_pid, report).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = validate(&args) {
        eprintln!("wharf-bench: {err}");
        return ExitCode::from(2);
    }
    let socket = match socket_path(&args.endpoint) {
        Ok(path) => path,
        Err(err) => {
            eprintln!("wharf-bench: {err}");
            return ExitCode::from(2);
        }
    };
    let daemon_pid = match args.daemon_pid {
        Some(pid) => Some(pid),
        None => match peer_pid(&socket) {
            Ok(pid) => Some(pid),
            Err(err) => {
                eprintln!("wharf-bench: daemon pid unknown, no daemon memory figures: {err}");
                None
            }
        },
    };
    let channel = match wharf::cri::connect(&socket).await {
        Ok(channel) => channel,
        Err(err) => {
            eprintln!("wharf-bench: cannot connect to {}: {err}", args.endpoint);
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_secs(args.rpc_timeout);
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let version = match rpc(
        || format!("Version on {}", args.endpoint),
        timeout,
        runtime.version(VersionRequest::default()),
    )
    .await
    {
        Ok((version, _)) => version,
        Err(err) => {
            eprintln!("wharf-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    let run_id = args
        .cleanup
        .clone()
        .unwrap_or_else(|| std::process::id().to_string());
    let log_root = args
        .log_root
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("wharf-bench-{run_id}"));
    if let Err(err) = std::fs::create_dir_all(&log_root) {
        eprintln!("wharf-bench: create {}: {err}", log_root.display());
        return ExitCode::FAILURE;
    }
    let bench = Bench {
        runtime,
        images: ImageServiceClient::new(channel),
        image: args.image.clone().unwrap_or_default(),
        run_id,
        log_root: log_root.clone(),
        cgroup_parent: args.cgroup_parent.trim_end_matches('/').to_string(),
        timeout,
        next_pod: Arc::new(AtomicUsize::new(0)),
        tracker: Arc::new(Mutex::new(Tracker::default())),
        stopping: Arc::new(AtomicBool::new(false)),
        active: Arc::new(AtomicUsize::new(0)),
    };
    let mut report = Report {
        endpoint: args.endpoint.clone(),
        runtime_name: version.runtime_name,
        runtime_version: version.runtime_version,
        runtime_api_version: version.runtime_api_version,
        image: args.image.clone().unwrap_or_default(),
        daemon_pid,
        shim_pattern: args.shim_pattern.clone(),
        ..Default::default()
    };
    eprintln!(
        "wharf-bench: {} {} on {}, daemon pid {:?}, run {}",
        report.runtime_name, report.runtime_version, args.endpoint, daemon_pid, bench.run_id
    );

    if args.cleanup.is_some() {
        let errors = bench.cleanup().await;
        let _ = std::fs::remove_dir_all(&log_root);
        for err in &errors {
            eprintln!("wharf-bench: CLEANUP FAILED: {err}");
        }
        if errors.is_empty() {
            eprintln!("wharf-bench: nothing of run {} is left", bench.run_id);
            return ExitCode::SUCCESS;
        }
        return ExitCode::FAILURE;
    }
    let outcome = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut sigint), Ok(mut sigterm)) => tokio::select! {
            result = run(&bench, &args, daemon_pid, &mut report) => result,
            _ = sigint.recv() => Err("interrupted by SIGINT".to_string()),
            _ = sigterm.recv() => Err("interrupted by SIGTERM".to_string()),
        },
        _ => Err("cannot install the SIGINT/SIGTERM handlers".to_string()),
    };
    if let Err(err) = &outcome {
        eprintln!("wharf-bench: FAILED: {err}");
    }
    report.complete = outcome.is_ok();
    report.error = outcome.err();

    report.cleanup_errors = bench.cleanup().await;
    if let Err(err) = std::fs::remove_dir_all(&log_root) {
        report
            .cleanup_errors
            .push(format!("remove {}: {err}", log_root.display()));
    }
    for err in &report.cleanup_errors {
        eprintln!("wharf-bench: CLEANUP FAILED: {err}");
    }
    if report.cleanup_errors.is_empty() {
        eprintln!("wharf-bench: cleanup done, nothing of this run is left");
    }

    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => eprintln!("wharf-bench: cannot encode the report: {err}"),
        }
    } else {
        report.print_table();
    }
    if report.complete && report.cleanup_errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------
// /proc

/// Memory of processes from /proc, and the runtime's per-pod processes.
mod procs {
    use std::collections::{BTreeSet, HashMap};

    use super::stats::matches_pattern;

    #[derive(Debug, Clone, Copy)]
    pub struct Mem {
        pub rss_kib: u64,
        /// None when /proc/PID/smaps_rollup is unreadable.
        pub pss_kib: Option<u64>,
    }

    #[derive(Debug)]
    pub struct Proc {
        pub comm: String,
        pub mem: Mem,
    }

    struct Entry {
        ppid: i32,
        comm: String,
        argv0: String,
        cmdline: String,
    }

    /// RSS and PSS of `pid` (smaps_rollup; RSS from status as a fallback).
    pub fn memory_of(pid: i32) -> Option<Mem> {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            if let Some(rss_kib) = super::stats::kib_field(&text, "Rss:") {
                return Some(Mem {
                    rss_kib,
                    pss_kib: super::stats::kib_field(&text, "Pss:"),
                });
            }
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(Mem {
            rss_kib: super::stats::kib_field(&status, "VmRSS:")?,
            pss_kib: None,
        })
    }

    fn entry(pid: i32) -> Option<Entry> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid = super::stats::ppid_from_stat(&stat)?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let argv0 = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        Some(Entry {
            ppid,
            comm: comm.trim_end().to_string(),
            argv0,
            cmdline: args.join(" "),
        })
    }

    /// The runtime's per-pod processes of this run: processes whose comm or argv[0]
    /// matches `pattern` and whose command line names one of `pods` or `containers`
    /// (this run's ids: containerd's shim has `-id SANDBOX`, wharf-monitor `--id
    /// CONTAINER`), plus their descendants outside this run's containers, e.g.
    /// containerd's `pause` (in the sandbox's cgroup). A descendant is a container's
    /// (the workload, not overhead) when its cgroup path names one of `containers`.
    pub fn runtime_processes(pattern: &str, pods: &[String], containers: &[String]) -> Vec<Proc> {
        if pods.is_empty() && containers.is_empty() {
            return Vec::new();
        }
        let mut entries: HashMap<i32, Entry> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for item in dir.flatten() {
                let Some(pid) = item
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<i32>().ok())
                else {
                    continue;
                };
                if let Some(e) = entry(pid) {
                    entries.insert(pid, e);
                }
            }
        }
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (&pid, e) in &entries {
            children.entry(e.ppid).or_default().push(pid);
        }
        let roots: Vec<i32> = entries
            .iter()
            .filter(|(_, e)| {
                (matches_pattern(&e.comm, pattern) || matches_pattern(&e.argv0, pattern))
                    && pods
                        .iter()
                        .chain(containers)
                        .any(|id| e.cmdline.contains(id.as_str()))
            })
            .map(|(&pid, _)| pid)
            .collect();
        let mut chosen: BTreeSet<i32> = roots.iter().copied().collect();
        let mut queue = roots;
        while let Some(pid) = queue.pop() {
            for &child in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
                if chosen.contains(&child) {
                    continue;
                }
                let cgroup =
                    std::fs::read_to_string(format!("/proc/{child}/cgroup")).unwrap_or_default();
                if containers.iter().any(|id| cgroup.contains(id.as_str())) {
                    continue;
                }
                chosen.insert(child);
                queue.push(child);
            }
        }
        chosen
            .into_iter()
            .filter_map(|pid| {
                let e = entries.get(&pid)?;
                Some(Proc {
                    comm: e.comm.clone(),
                    mem: memory_of(pid)?,
                })
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// pure helpers

/// Percentiles and /proc field parsing (pure; unit-tested).
mod stats {
    use std::time::Duration;

    /// Count, nearest-rank percentiles, max and mean of a series.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Summary {
        pub n: usize,
        pub p50: Duration,
        pub p90: Duration,
        pub p99: Duration,
        pub max: Duration,
        pub mean: Duration,
    }

    impl Summary {
        /// None for an empty series.
        pub fn of(samples: &[Duration]) -> Option<Summary> {
            let mut sorted = samples.to_vec();
            sorted.sort_unstable();
            let total: Duration = sorted.iter().sum();
            Some(Summary {
                n: sorted.len(),
                p50: percentile(&sorted, 50.0)?,
                p90: percentile(&sorted, 90.0)?,
                p99: percentile(&sorted, 99.0)?,
                max: *sorted.last()?,
                mean: total / u32::try_from(sorted.len()).ok()?,
            })
        }
    }

    /// Nearest-rank percentile of an ascending series: the smallest sample with at
    /// least `p`% of the samples at or below it. None when empty.
    pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
        if sorted.is_empty() {
            return None;
        }
        let n = sorted.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, n) - 1])
    }

    /// The number of a `Field:   123 kB` line.
    pub fn kib_field(text: &str, field: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// The parent pid from /proc/PID/stat (the comm in parentheses may hold anything).
    pub fn ppid_from_stat(stat: &str) -> Option<i32> {
        let after = &stat[stat.rfind(')')? + 1..];
        after.split_whitespace().nth(1)?.parse().ok()
    }

    /// Whether `name` contains one of the non-empty `|`-separated substrings.
    pub fn matches_pattern(name: &str, pattern: &str) -> bool {
        !name.is_empty()
            && pattern
                .split('|')
                .any(|p| !p.is_empty() && name.contains(p))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn ms(v: &[u64]) -> Vec<Duration> {
            v.iter().map(|&m| Duration::from_millis(m)).collect()
        }

        #[test]
        fn percentiles_of_1_to_100() {
            let samples = ms(&(1..=100).rev().collect::<Vec<_>>());
            let s = Summary::of(&samples).expect("non-empty");
            assert_eq!(s.n, 100);
            assert_eq!(s.p50, Duration::from_millis(50));
            assert_eq!(s.p90, Duration::from_millis(90));
            assert_eq!(s.p99, Duration::from_millis(99));
            assert_eq!(s.max, Duration::from_millis(100));
            assert_eq!(s.mean, Duration::from_micros(50_500));
        }

        #[test]
        fn percentiles_of_small_series() {
            let one = Summary::of(&ms(&[7])).expect("non-empty");
            assert_eq!(
                (one.p50, one.p99, one.max),
                (ms(&[7])[0], ms(&[7])[0], ms(&[7])[0])
            );
            // 10 samples: p50 is the 5th, p90 the 9th, p99 the 10th.
            let ten = Summary::of(&ms(&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1])).expect("non-empty");
            assert_eq!(ten.p50, Duration::from_millis(5));
            assert_eq!(ten.p90, Duration::from_millis(9));
            assert_eq!(ten.p99, Duration::from_millis(10));
            // 3 samples: p50 is the 2nd.
            let three = Summary::of(&ms(&[300, 100, 200])).expect("non-empty");
            assert_eq!(three.p50, Duration::from_millis(200));
            assert_eq!(three.p90, Duration::from_millis(300));
        }

        #[test]
        fn percentile_edges() {
            assert_eq!(Summary::of(&[]), None);
            assert_eq!(percentile(&[], 50.0), None);
            let sorted = ms(&[1, 2, 3]);
            assert_eq!(percentile(&sorted, 0.0), Some(Duration::from_millis(1)));
            assert_eq!(percentile(&sorted, 100.0), Some(Duration::from_millis(3)));
        }

        #[test]
        fn parses_proc_fields() {
            let rollup =
                "55d0-7ff rw-p 00000000 00:00 0 [rollup]\nRss:  12345 kB\nPss:   6789 kB\n";
            assert_eq!(kib_field(rollup, "Rss:"), Some(12345));
            assert_eq!(kib_field(rollup, "Pss:"), Some(6789));
            assert_eq!(kib_field(rollup, "VmRSS:"), None);
            assert_eq!(kib_field("VmRSS:\t  2048 kB\n", "VmRSS:"), Some(2048));
            assert_eq!(ppid_from_stat("42 (a) b) S 7 42 42 0"), Some(7));
            assert_eq!(ppid_from_stat("42 (sleep) S 1 42"), Some(1));
            assert_eq!(ppid_from_stat("garbage"), None);
        }

        #[test]
        fn matches_process_names() {
            let p = "wharf-monitor|containerd-shim";
            assert!(matches_pattern("wharf-monitor", p));
            assert!(matches_pattern("containerd-shim-runc-v2", p));
            assert!(matches_pattern("containerd-shim", p));
            assert!(!matches_pattern("containerd", p));
            assert!(!matches_pattern("", p));
            assert!(!matches_pattern("sleep", "||"));
        }
    }
}
