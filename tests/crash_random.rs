//! wharfd killed (SIGKILL) at randomly chosen steps of whole sequences of operations
//! (issue 24), with the seed printed for replay: the CRI's PullImage, RunPodSandbox,
//! CreateContainer, StartContainer, StopContainer, RemoveContainer, StopPodSandbox,
//! RemovePodSandbox and RemoveImage; the Docker API's pull, network create, create,
//! start, network connect and disconnect, stop, rm, network rm, build and rmi.
//!
//! A census run of the sequence counts the crash points it passes
//! (`WHARF_TEST_CRASH_TRACE`, `src/crash_point.rs`: every store transaction, blob,
//! layer, rootfs mount, monitor, CNI plugin run and the named steps). Each trial then
//! starts wharfd with `WHARF_TEST_CRASH_AT=any#N`, N drawn at random, and runs the
//! sequence until wharfd dies; after the restart:
//! - the containers that ran beside it still run and take commands;
//! - every operation that completed is visible, and the cut one either completed or
//!   left no trace (what is seen is what the sequence leaves after it or before it);
//! - a retry of the cut call succeeds, and so does the rest of the sequence;
//! - once it is done, nothing is left: mounts, processes, cgroups, veths, rules,
//!   leases, store rows, files under root and state are as before the trial.
//!
//! `./scripts/test` runs 8 trials a sequence; the long form is
//! `WHARF_CRASH_TRIALS=100 cargo test --test crash_random -- --nocapture`, and
//! `WHARF_CRASH_SEED=<seed>` replays a run.

mod support;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use support::audit::{differences, sample, Audit};
use support::daemon::Daemon;
use support::docker::DockerEnv;
use support::images::{ImageBuilder, LayerBuilder};
use support::net::{CniBridgeNet, TestBridge};
use support::pods::{unique, PodEnv};

const CRASH_ENV: &str = "WHARF_TEST_CRASH_AT";
const TRACE_ENV: &str = "WHARF_TEST_CRASH_TRACE";

/// splitmix64: the trials' draws, the same for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in 1..=n.
    fn one_to(&mut self, n: usize) -> usize {
        1 + (self.next() % n.max(1) as u64) as usize
    }
}

/// `WHARF_CRASH_SEED` (decimal or 0x-hex), else one from the clock.
fn seed() -> u64 {
    match std::env::var("WHARF_CRASH_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("WHARF_CRASH_SEED={text:?} is not a number"))
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

fn trials() -> usize {
    std::env::var("WHARF_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// One sequence of operations, and how its world looks between them.
trait Sequence {
    /// What the test can see of the sequence's objects.
    type View: PartialEq + Debug;

    fn daemon(&mut self) -> &mut Daemon;
    fn step_names(&self) -> &'static [&'static str];
    /// Fresh names for the sequence's objects (a new trial).
    fn reset(&mut self);
    /// Runs step `step`; Err with what the client said.
    async fn run(&mut self, step: usize) -> Result<(), String>;
    /// What is there now (learning the IDs of what the cut steps made).
    async fn observe(&mut self) -> Self::View;
    /// What `completed` steps leave.
    fn expected(&self, completed: usize) -> Self::View;
    /// New clients after a restart.
    async fn reconnect(&mut self);
    /// Asserts the containers that run beside the sequence still run and answer.
    async fn bystanders_run(&mut self);
    fn audit(&self) -> Audit;
}

/// The file the daemon lists the crash points it passes in.
struct Trace(PathBuf);

impl Trace {
    fn clear(&self) {
        std::fs::write(&self.0, "").expect("clear the crash trace");
    }

    fn points(&self) -> Vec<String> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Stops the daemon (if it runs) and starts it with `env`.
async fn restart_with(daemon: &mut Daemon, env: Vec<(String, String)>) {
    if daemon.running() {
        // An armed daemon may reach its point while it stops: either way it is down.
        let _ = daemon.stop();
    }
    daemon.env = env;
    daemon.restart().await;
}

/// The census, then `trials()` trials, each cut at a random point.
async fn cut_at_random<S: Sequence>(sequence: &mut S, label: &str) {
    let seed = seed();
    eprintln!("{label}: seed {seed:#x} (replay: WHARF_CRASH_SEED={seed:#x})");
    let mut rng = Rng(seed);
    let trace = Trace(sequence.daemon().dir().join("crash-trace"));
    let trace_env = (TRACE_ENV.to_string(), trace.0.display().to_string());
    let steps = sequence.step_names().len();
    for k in 0..steps {
        assert_ne!(
            sequence.expected(k),
            sequence.expected(k + 1),
            "{label}: step {k} must change what is seen"
        );
    }

    // The census: the whole sequence, uncut.
    restart_with(sequence.daemon(), vec![trace_env.clone()]).await;
    sequence.reconnect().await;
    sequence.bystanders_run().await;
    let baseline = sequence.audit();
    trace.clear();
    sequence.reset();
    let started = Instant::now();
    // The census's points of each step: [first, end) in the trace.
    let mut spans = Vec::new();
    for step in 0..steps {
        let first = trace.points().len();
        if let Err(err) = sequence.run(step).await {
            panic!(
                "{label}: {} failed uncut: {err}\n--- wharfd log:\n{}",
                sequence.step_names()[step],
                sequence.daemon().log()
            );
        }
        assert_eq!(
            sequence.observe().await,
            sequence.expected(step + 1),
            "{label}: after {}",
            sequence.step_names()[step]
        );
        spans.push(first..trace.points().len());
    }
    let census = trace.points();
    // Draws pick an operation (one that passes a point), then one of its points: each
    // operation is cut as often, however many points it passes.
    let cuttable: Vec<usize> = (0..steps).filter(|&s| !spans[s].is_empty()).collect();
    let mut by_name = BTreeMap::<&str, usize>::new();
    for point in &census {
        *by_name.entry(point.as_str()).or_default() += 1;
    }
    eprintln!(
        "{label}: {steps} operations in {:.1} s pass {} crash points: {by_name:?}",
        started.elapsed().as_secs_f64(),
        census.len()
    );
    // What the first run makes once and keeps (the build directory's parent) is the
    // trials' baseline.
    let warm = sequence.audit();
    let kept = differences(&baseline, &warm);
    if !kept.is_empty() {
        eprintln!("{label}: the first run made, to keep:\n{kept}");
    }
    let baseline = warm;

    let mut cut_steps = BTreeMap::<&str, usize>::new();
    for trial in 1..=trials() {
        let span = &spans[cuttable[rng.one_to(cuttable.len()) - 1]];
        let n = span.start + rng.one_to(span.len());
        sequence.reset();
        trace.clear();
        restart_with(
            sequence.daemon(),
            vec![
                trace_env.clone(),
                (CRASH_ENV.to_string(), format!("any#{n}")),
            ],
        )
        .await;
        sequence.reconnect().await;
        let mut cut = None;
        for step in 0..steps {
            let Err(err) = sequence.run(step).await else {
                continue;
            };
            match sequence.daemon().exited_within(Duration::from_secs(5)) {
                Some(status) => {
                    assert_eq!(
                        status.signal(),
                        Some(nix::libc::SIGKILL),
                        "{label} trial {trial}: wharfd exited with {status}"
                    );
                    cut = Some(step);
                    break;
                }
                None => panic!(
                    "{label} trial {trial}: {} failed, wharfd alive: {err}\n--- wharfd log:\n{}",
                    sequence.step_names()[step],
                    sequence.daemon().log()
                ),
            }
        }
        let point = trace.points().last().cloned().unwrap_or_default();
        // Unarmed from here; a daemon that outlived its draw (one background point
        // fewer than the census saw) is stopped and started the same way.
        let _ = sequence.daemon().exited_within(Duration::ZERO);
        restart_with(sequence.daemon(), Vec::new()).await;
        sequence.reconnect().await;
        sequence.bystanders_run().await;
        match cut {
            None => eprintln!("{label} trial {trial}: point #{n}: wharfd outlived the sequence"),
            Some(step) => {
                let name = sequence.step_names()[step];
                *cut_steps.entry(name).or_default() += 1;
                let seen = sequence.observe().await;
                let completed = if seen == sequence.expected(step + 1) {
                    true
                } else if seen == sequence.expected(step) {
                    false
                } else {
                    panic!(
                        "{label} trial {trial}: cut at point #{n} ({point}) in {name}: \
                         what is seen is neither before nor after it: {seen:?}\n\
                         before: {:?}\nafter: {:?}\n--- wharfd log:\n{}",
                        sequence.expected(step),
                        sequence.expected(step + 1),
                        sequence.daemon().log()
                    )
                };
                eprintln!(
                    "{label} trial {trial}: point #{n} ({point}) cut {name}: {}",
                    if completed {
                        "it completed"
                    } else {
                        "no trace; retried"
                    }
                );
                let rest = if completed { step + 1 } else { step };
                for later in rest..steps {
                    if let Err(err) = sequence.run(later).await {
                        panic!(
                            "{label} trial {trial}: cut at #{n} ({point}) in {name}; then {} failed: \
                             {err}\n--- wharfd log:\n{}",
                            sequence.step_names()[later],
                            sequence.daemon().log()
                        );
                    }
                }
            }
        }
        assert_eq!(
            sequence.observe().await,
            sequence.expected(steps),
            "{label} trial {trial}"
        );
        let left = differences(&baseline, &sequence.audit());
        assert!(
            left.is_empty(),
            "{label} trial {trial}: cut at #{n} ({point}): left behind:\n{left}\n--- wharfd log:\n{}",
            sequence.daemon().log()
        );
    }
    eprintln!("{label}: operations cut: {cut_steps:?}");
}

// ---- The CRI sequence ----

#[derive(Debug, PartialEq)]
struct CriView {
    image: bool,
    pod: Option<i32>,
    container: Option<i32>,
}

/// The pods' network: a bridge (wharf's own, or the CNI bridge plugin's), its
/// subnet and how its leases are counted; the guard removes it when dropped.
struct PodNetwork {
    bridge: String,
    /// e.g. `10.204.7.`
    prefix: String,
    leases: Box<dyn Fn() -> usize>,
    _guard: Box<dyn std::any::Any>,
}

struct CriSequence {
    // Before the network: the daemon stops before its network goes.
    env: PodEnv,
    network: PodNetwork,
    image: String,
    bystander: String,
    pod: cri::PodSandboxConfig,
    pod_id: Option<String>,
    container_id: Option<String>,
}

const CRI_STEPS: &[&str] = &[
    "PullImage",
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
    "RemoveImage",
];

const READY: i32 = cri::PodSandboxState::SandboxReady as i32;
const NOT_READY: i32 = cri::PodSandboxState::SandboxNotready as i32;
const CREATED: i32 = cri::ContainerState::ContainerCreated as i32;
const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

impl CriSequence {
    fn image_spec(&self) -> Option<cri::ImageSpec> {
        Some(cri::ImageSpec {
            image: self.image.clone(),
            ..Default::default()
        })
    }

    fn container_config(&self) -> cri::ContainerConfig {
        let mut config = self.env.container_config("cut", &["sleep", "100000"]);
        config.image = self.image_spec();
        config
    }

    fn pod_id(&self) -> Result<String, String> {
        self.pod_id.clone().ok_or_else(|| "no pod".to_string())
    }

    fn container_id(&self) -> Result<String, String> {
        self.container_id
            .clone()
            .ok_or_else(|| "no container".to_string())
    }
}

fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

impl Sequence for CriSequence {
    type View = CriView;

    fn daemon(&mut self) -> &mut Daemon {
        &mut self.env.daemon
    }

    fn step_names(&self) -> &'static [&'static str] {
        CRI_STEPS
    }

    fn reset(&mut self) {
        self.pod = self.env.pod_config("cut");
        self.pod_id = None;
        self.container_id = None;
    }

    async fn run(&mut self, step: usize) -> Result<(), String> {
        let mut images = self.env.daemon.image_client().await;
        let mut rt = self.env.rt.clone();
        match CRI_STEPS[step] {
            "PullImage" => {
                images
                    .pull_image(cri::PullImageRequest {
                        image: self.image_spec(),
                        ..Default::default()
                    })
                    .await
                    .map_err(status_text)?;
            }
            "RunPodSandbox" => {
                let id = rt
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(self.pod.clone()),
                        runtime_handler: String::new(),
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .pod_sandbox_id;
                self.pod_id = Some(id);
            }
            "CreateContainer" => {
                let config = self.container_config();
                let id = rt
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: self.pod_id.clone().ok_or("no pod")?,
                        config: Some(config),
                        sandbox_config: Some(self.pod.clone()),
                    })
                    .await
                    .map_err(status_text)?
                    .into_inner()
                    .container_id;
                self.container_id = Some(id);
            }
            "StartContainer" => {
                rt.start_container(cri::StartContainerRequest {
                    container_id: self.container_id()?,
                })
                .await
                .map_err(status_text)?;
            }
            "StopContainer" => {
                rt.stop_container(cri::StopContainerRequest {
                    container_id: self.container_id()?,
                    timeout: 1,
                })
                .await
                .map_err(status_text)?;
            }
            "RemoveContainer" => {
                rt.remove_container(cri::RemoveContainerRequest {
                    container_id: self.container_id()?,
                })
                .await
                .map_err(status_text)?;
            }
            "StopPodSandbox" => {
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: self.pod_id()?,
                })
                .await
                .map_err(status_text)?;
            }
            "RemovePodSandbox" => {
                rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: self.pod_id()?,
                })
                .await
                .map_err(status_text)?;
            }
            "RemoveImage" => {
                images
                    .remove_image(cri::RemoveImageRequest {
                        image: self.image_spec(),
                    })
                    .await
                    .map_err(status_text)?;
            }
            other => unreachable!("step {other}"),
        }
        Ok(())
    }

    async fn observe(&mut self) -> CriView {
        let mut images = self.env.daemon.image_client().await;
        let image = images
            .image_status(cri::ImageStatusRequest {
                image: self.image_spec(),
                verbose: false,
            })
            .await
            .expect("ImageStatus")
            .into_inner()
            .image
            .is_some();
        let name = self.pod.metadata.as_ref().map(|m| m.name.clone());
        let pods = self.env.list_pods(cri::PodSandboxFilter::default()).await;
        let pod = pods
            .iter()
            .find(|p| p.metadata.as_ref().map(|m| m.name.clone()) == name);
        self.pod_id = pod.map(|p| p.id.clone());
        let container = match &self.pod_id {
            Some(pod_id) => self
                .env
                .list_containers(cri::ContainerFilter {
                    pod_sandbox_id: pod_id.clone(),
                    ..Default::default()
                })
                .await
                .into_iter()
                .find(|c| c.metadata.as_ref().is_some_and(|m| m.name == "cut")),
            None => None,
        };
        self.container_id = container.as_ref().map(|c| c.id.clone());
        CriView {
            image,
            pod: pod.map(|p| p.state),
            container: container.map(|c| c.state),
        }
    }

    fn expected(&self, completed: usize) -> CriView {
        CriView {
            image: (1..9).contains(&completed),
            pod: match completed {
                2..=6 => Some(READY),
                7 => Some(NOT_READY),
                _ => None,
            },
            container: match completed {
                3 => Some(CREATED),
                4 => Some(RUNNING),
                5 => Some(EXITED),
                _ => None,
            },
        }
    }

    async fn reconnect(&mut self) {
        self.env.rt = self.env.daemon.runtime_client().await;
    }

    async fn bystanders_run(&mut self) {
        let id = self.bystander.clone();
        assert_eq!(self.env.status(&id).await.state, RUNNING, "the bystander");
        assert_eq!(self.env.exec_ok(&id, &["echo", "alive"]).await, "alive");
    }

    fn audit(&self) -> Audit {
        let net = &self.network;
        sample(&self.env, &net.bridge, &net.prefix, &*net.leases).audit
    }
}

/// The CRI sequence on `config`'s daemon, its pods on `network`.
async fn cri_sequence(label: &str, config: &str, network: PodNetwork) {
    let mut env = PodEnv::start_with_config(config).await;
    let image = format!("{}/test/crash-cri:1", env.registry.host());
    env.registry
        .push(
            "test/crash-cri",
            "1",
            &ImageBuilder::busybox()
                .layer(LayerBuilder::new().file("etc/crash-cri", "one layer more\n"))
                .build(),
        )
        .await;
    let pod = env.pod_config("bystander");
    let pod_id = env.run_pod(&pod).await;
    let config = env.container_config("bystander", &["sleep", "100000"]);
    let bystander = env.run(&pod_id, &pod, &config).await;
    let pod = env.pod_config("cut");
    let mut sequence = CriSequence {
        env,
        network,
        image,
        bystander,
        pod,
        pod_id: None,
        container_id: None,
    };
    cut_at_random(&mut sequence, label).await;
    let env = &mut sequence.env;
    env.remove_container(&sequence.bystander).await;
    env.stop_pod(&pod_id).await;
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_operations_cut_at_random_points_lose_and_leak_nothing() {
    let bridge = TestBridge::new(44);
    let config = bridge.config();
    let network = PodNetwork {
        bridge: bridge.name().to_string(),
        prefix: format!("{}.", bridge.prefix),
        // The built-in bridge's leases are store rows, counted with the others.
        leases: Box::new(|| 0),
        _guard: Box::new(bridge),
    };
    cri_sequence("CRI", &config, network).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_operations_through_cni_cut_at_random_points_lose_and_leak_nothing() {
    let net = CniBridgeNet::new(46, "crash");
    let config = net.config();
    let network = PodNetwork {
        bridge: net.bridge.clone(),
        prefix: format!("{}.", net.prefix),
        leases: Box::new(net.leases()),
        _guard: Box::new(net),
    };
    cri_sequence("CRI through CNI", &config, network).await;
}

// ---- The Docker sequence ----

#[derive(Debug, PartialEq)]
struct DockerView {
    image: bool,
    network: bool,
    container: Option<String>,
    connected: bool,
    built: bool,
}

struct DockerSequence {
    docker: DockerEnv,
    bridge: TestBridge,
    image: String,
    context: tempfile::TempDir,
    bystander: String,
    /// The network's bridge and subnet prefix (`172.31.<n>.`).
    network_bridge: String,
    subnet_prefix: String,
    network: String,
    container: String,
    built: String,
}

const DOCKER_STEPS: &[&str] = &[
    "pull",
    "network create",
    "create",
    "start",
    "network connect",
    "network disconnect",
    "stop",
    "rm",
    "network rm",
    "build",
    "rmi (built)",
    "rmi (pulled)",
];

impl DockerSequence {
    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let run = self.docker.run(args);
        if run.status == 0 {
            Ok(run.stdout.trim().to_string())
        } else {
            Err(format!("docker {args:?}: {}{}", run.stdout, run.stderr))
        }
    }
}

impl Sequence for DockerSequence {
    type View = DockerView;

    fn daemon(&mut self) -> &mut Daemon {
        &mut self.docker.env.daemon
    }

    fn step_names(&self) -> &'static [&'static str] {
        DOCKER_STEPS
    }

    fn reset(&mut self) {
        self.network = unique("cutnet");
        self.container = unique("cut");
        self.built = format!("{}:1", unique("cutbuilt"));
    }

    async fn run(&mut self, step: usize) -> Result<(), String> {
        let image = self.image.clone();
        let (network, container, built) = (
            self.network.clone(),
            self.container.clone(),
            self.built.clone(),
        );
        match DOCKER_STEPS[step] {
            "pull" => self.docker(&["pull", "-q", &image]).map(drop),
            "network create" => self
                .docker(&[
                    "network",
                    "create",
                    "--subnet",
                    &format!("{}0/24", self.subnet_prefix),
                    "-o",
                    &format!("com.docker.network.bridge.name={}", self.network_bridge),
                    &network,
                ])
                .map(drop),
            "create" => self
                .docker(&["create", "--name", &container, &image, "sleep", "100000"])
                .map(drop),
            "start" => self.docker(&["start", &container]).map(drop),
            "network connect" => self
                .docker(&["network", "connect", &network, &container])
                .map(drop),
            "network disconnect" => self
                .docker(&["network", "disconnect", &network, &container])
                .map(drop),
            "stop" => self.docker(&["stop", "-t", "1", &container]).map(drop),
            "rm" => self.docker(&["rm", &container]).map(drop),
            "network rm" => self.docker(&["network", "rm", &network]).map(drop),
            "build" => {
                let run = self.docker.shell(&format!(
                    "DOCKER_BUILDKIT=0 \"$DOCKER\" build -q -t {built} {}",
                    self.context.path().display()
                ));
                if run.status == 0 {
                    Ok(())
                } else {
                    Err(format!("docker build: {}{}", run.stdout, run.stderr))
                }
            }
            "rmi (built)" => self.docker(&["rmi", &built]).map(drop),
            "rmi (pulled)" => self.docker(&["rmi", &image]).map(drop),
            other => unreachable!("step {other}"),
        }
    }

    async fn observe(&mut self) -> DockerView {
        let exists = |args: &[&str]| self.docker(args).is_ok();
        let container = self
            .docker(&["inspect", "-f", "{{.State.Status}}", &self.container])
            .ok();
        let connected = container.is_some()
            && self
                .docker(&[
                    "inspect",
                    "-f",
                    "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
                    &self.container,
                ])
                .is_ok_and(|names| names.split_whitespace().any(|n| n == self.network));
        DockerView {
            image: exists(&["image", "inspect", &self.image]),
            network: exists(&["network", "inspect", &self.network]),
            container,
            connected,
            built: exists(&["image", "inspect", &self.built]),
        }
    }

    fn expected(&self, completed: usize) -> DockerView {
        DockerView {
            image: (1..12).contains(&completed),
            network: (2..9).contains(&completed),
            container: match completed {
                3 => Some("created".to_string()),
                4..=6 => Some("running".to_string()),
                7 => Some("exited".to_string()),
                _ => None,
            },
            connected: completed == 5,
            built: (10..11).contains(&completed),
        }
    }

    async fn reconnect(&mut self) {
        self.docker.env.rt = self.docker.env.daemon.runtime_client().await;
    }

    async fn bystanders_run(&mut self) {
        assert_eq!(
            self.docker(&["inspect", "-f", "{{.State.Status}}", &self.bystander]),
            Ok("running".to_string()),
            "the bystander"
        );
        assert_eq!(
            self.docker(&["exec", &self.bystander, "echo", "alive"]),
            Ok("alive".to_string())
        );
    }

    fn audit(&self) -> Audit {
        let env = &self.docker.env;
        let root = env.daemon.paths.root.clone();
        let leases = move || support::net::stored_leases(&root).len();
        let prefix = format!("{}.", self.bridge.prefix);
        let mut audit = sample(env, self.bridge.name(), &prefix, &leases).audit;
        // The user network's bridge and rules.
        if support::net::links().contains(&self.network_bridge) {
            audit.bridge_ports += 1000;
        }
        for table in ["nat", "filter"] {
            audit.rules.extend(
                support::net::iptables_save(table)
                    .lines()
                    .filter(|l| l.contains(&self.network_bridge) || l.contains(&self.subnet_prefix))
                    .map(str::to_string),
            );
        }
        audit
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_operations_cut_at_random_points_lose_and_leak_nothing() {
    let bridge = TestBridge::new(45);
    let pid = std::process::id();
    let subnet_prefix = format!("172.31.{}.", pid % 250 + 1);
    let network_bridge = format!("wt{}cr", pid % 100_000);
    let _network_cleanup = support::net::BridgeCleanup {
        bridge: network_bridge.clone(),
        subnet_prefix: subnet_prefix.clone(),
    };
    let docker = DockerEnv::start_with_config(&bridge.config()).await;
    let base = docker.image.clone();
    docker.ok(&["pull", "-q", &base]);
    let image = format!("{}/test/crash-docker:1", docker.env.registry.host());
    docker
        .env
        .registry
        .push(
            "test/crash-docker",
            "1",
            &ImageBuilder::busybox()
                .layer(LayerBuilder::new().file("etc/crash-docker", "one layer more\n"))
                .build(),
        )
        .await;
    let context = tempfile::Builder::new()
        .prefix("wharf-crash-build-")
        .tempdir()
        .expect("a build context");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {image}\nRUN echo built > /built\nCOPY file /file\n"),
    )
    .expect("write the Dockerfile");
    std::fs::write(context.path().join("file"), "copied\n").expect("write the copied file");
    let bystander = docker.ok(&["run", "-d", &base, "sleep", "100000"]);
    let mut sequence = DockerSequence {
        docker,
        bridge,
        image,
        context,
        bystander,
        network_bridge,
        subnet_prefix,
        network: String::new(),
        container: String::new(),
        built: String::new(),
    };
    cut_at_random(&mut sequence, "Docker").await;
    sequence
        .docker
        .ok(&["rm", "-f", &sequence.bystander.clone()]);
}
