//! Real Kubernetes on a test's wharfd: the binaries built by `e2e/k8s/build.sh` from
//! their Go modules (cached outside the clone), and a standalone kubelet on the test
//! daemon's CRI socket with its own root dir, ports, pod log dir and cgroup root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// One kubelet at a time on a host: kubelet's device-plugin socket is always
/// /var/lib/kubelet/device-plugins/kubelet.sock, whatever its root dir.
pub static ONE_KUBELET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct K8sBinaries {
    pub kubelet: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
}

/// The Kubernetes and etcd binaries (built on first use, then cached by version), or
/// those of the directory `WHARF_E2E_KUBERNETES_BIN` names (e.g. a release's binaries).
pub fn k8s_binaries() -> K8sBinaries {
    if let Some(dir) = std::env::var_os("WHARF_E2E_KUBERNETES_BIN") {
        let dir = Path::new(&dir);
        return K8sBinaries {
            kubelet: dir.join("kubelet"),
            kube_apiserver: dir.join("kube-apiserver"),
            kubectl: dir.join("kubectl"),
            etcd: dir.join("etcd"),
        };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/k8s/build.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|err| panic!("run {}: {err}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): it builds kubelet, kube-apiserver, kubectl and etcd from their Go \
         modules (needs Go 1.26 and the Go module proxy)",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dirs: Vec<&str> = stdout.lines().collect();
    assert_eq!(dirs.len(), 2, "e2e/k8s/build.sh printed {stdout:?}");
    let (k8s, etcd) = (Path::new(dirs[0]), Path::new(dirs[1]));
    K8sBinaries {
        kubelet: k8s.join("kubelet"),
        kube_apiserver: k8s.join("kube-apiserver"),
        kubectl: k8s.join("kubectl"),
        etcd: etcd.join("etcd"),
    }
}

/// SIGTERM to a process the test started, then SIGKILL if it has not exited in 20 s.
fn terminate(mut child: Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on loopback (bound, then released for the process that needs it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("pick a free loopback port")
}

/// Host paths kubelet writes whatever its configuration says; removed afterwards
/// when the test made them (a host that runs a kubelet of its own keeps them).
const KUBELET_FIXED_DIRS: [&str; 2] = ["/var/lib/kubelet", "/var/log/containers"];

pub struct Kubelet {
    pub dir: TempDir,
    pub manifests: PathBuf,
    pub pod_logs: PathBuf,
    pub read_only_port: u16,
    pub healthz_port: u16,
    pub node_name: String,
    pub log: PathBuf,
    binary: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    made_fixed_dirs: Vec<&'static str>,
}

pub struct KubeletOptions<'a> {
    pub cri_socket: &'a Path,
    /// kubelet's cgroupRoot (made here in every hierarchy; the daemon fixture's
    /// cgroup parent, so the fixture's cleanup removes what kubelet made below it).
    pub cgroup_root: &'a str,
    /// A kubeconfig for a control plane; None: standalone (static pods only).
    pub kubeconfig: Option<&'a Path>,
    /// The address kubelet serves on; with a control plane also its node IP, which
    /// kubelet refuses on loopback (see [`NodeAddress`]).
    pub address: &'a str,
    /// Extra KubeletConfiguration lines (YAML, top level).
    pub extra_config: &'a str,
}

/// The node name of this test process's kubelet.
pub fn node_name() -> String {
    format!("wharf-e2e-{}", std::process::id())
}

/// A bridge of the test's own, without ports, with one /32 address: a node IP that is
/// not loopback (kubelet refuses one) and that no traffic leaves the machine through
/// (these kernels have no dummy interfaces). Deleted on drop.
pub struct NodeAddress {
    pub name: String,
    pub address: String,
}

impl NodeAddress {
    pub fn new(index: u32) -> NodeAddress {
        let pid = std::process::id();
        let dummy = NodeAddress {
            name: format!("whk{}n{index}", pid % 100_000),
            address: format!("10.253.{}.{}", pid % 250, 1 + index % 250),
        };
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .unwrap_or_else(|err| panic!("run ip (install iproute2): {err}"));
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["link", "add", &dummy.name, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/32", dummy.address),
            "dev",
            &dummy.name,
        ]);
        ip(&["link", "set", &dummy.name, "up"]);
        dummy
    }
}

impl Drop for NodeAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

impl Kubelet {
    pub async fn start(binary: &Path, options: KubeletOptions<'_>) -> Kubelet {
        let dir = tempfile::Builder::new()
            .prefix("wharf-kubelet-")
            .tempdir()
            .expect("create kubelet's temporary dir");
        let manifests = dir.path().join("manifests");
        let pod_logs = dir.path().join("pods");
        std::fs::create_dir_all(&manifests).expect("create the static pod dir");
        std::fs::create_dir_all(&pod_logs).expect("create the pod log dir");
        for hierarchy in cgroup_hierarchies() {
            let path = hierarchy.join(options.cgroup_root.trim_start_matches('/'));
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|err| panic!("create cgroup {}: {err}", path.display()));
        }
        let made_fixed_dirs = KUBELET_FIXED_DIRS
            .into_iter()
            .filter(|d| !Path::new(d).exists())
            .collect();
        let (port, read_only_port, healthz_port) = (free_port(), free_port(), free_port());
        let node_name = node_name();
        let config = dir.path().join("kubelet.yaml");
        // deploy/kubelet-config.yaml, the snippet users merge, on this test's socket,
        // then this test's settings.
        let snippet_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubelet-config.yaml");
        let snippet = std::fs::read_to_string(&snippet_path)
            .unwrap_or_else(|err| panic!("read {}: {err}", snippet_path.display()))
            .replace(
                "unix:///run/wharf/wharf.sock",
                &format!("unix://{}", options.cri_socket.display()),
            );
        std::fs::write(
            &config,
            format!(
                r#"{snippet}
cgroupRoot: {cgroup_root}
# These machines are cgroup v1 (cgroup2 only at /sys/fs/cgroup/unified); kubelet 1.35
# and newer refuse v1 unless told otherwise.
failCgroupV1: false
failSwapOn: false
staticPodPath: {manifests}
fileCheckFrequency: 1s
podLogsDir: {pod_logs}
address: {address}
port: {port}
readOnlyPort: {read_only_port}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
# The test machines' disks are often fuller than kubelet's defaults allow: no
# eviction and no image garbage collection during a test.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
{extra}
"#,
                cgroup_root = options.cgroup_root,
                address = options.address,
                manifests = manifests.display(),
                pod_logs = pod_logs.display(),
                extra = options.extra_config,
            ),
        )
        .expect("write kubelet's config");
        let mut kubelet = Kubelet {
            log: dir.path().join("kubelet.log"),
            dir,
            manifests,
            pod_logs,
            read_only_port,
            healthz_port,
            node_name,
            binary: binary.to_path_buf(),
            config,
            child: None,
            made_fixed_dirs,
        };
        kubelet.spawn(options.kubeconfig, options.address);
        kubelet.wait_healthy().await;
        kubelet
    }

    fn spawn(&mut self, kubeconfig: Option<&Path>, address: &str) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open kubelet's log");
        let mut command = Command::new(&self.binary);
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--root-dir")
            .arg(self.dir.path().join("root"))
            .arg("--cert-dir")
            .arg(self.dir.path().join("pki"))
            .arg("--hostname-override")
            .arg(&self.node_name)
            .arg("--v=2");
        if let Some(kubeconfig) = kubeconfig {
            command.arg("--kubeconfig").arg(kubeconfig);
            command.arg("--node-ip").arg(address);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone kubelet's log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", self.binary.display()));
        self.child = Some(child);
    }

    async fn wait_healthy(&mut self) {
        let url = format!("http://127.0.0.1:{}/healthz", self.healthz_port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "kubelet exited with {status} at start; its log:\n{}",
                        self.log_text()
                    );
                }
            }
            if let Ok(response) = reqwest::get(&url).await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "kubelet's {url} did not answer 200 within 60 s; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Writes a static pod manifest (kubelet picks it up within its file check period).
    pub fn add_manifest(&self, name: &str, yaml: &str) {
        std::fs::write(self.manifests.join(format!("{name}.yaml")), yaml)
            .unwrap_or_else(|err| panic!("write the manifest of {name}: {err}"));
    }

    pub fn remove_manifest(&self, name: &str) {
        std::fs::remove_file(self.manifests.join(format!("{name}.yaml")))
            .unwrap_or_else(|err| panic!("remove the manifest of {name}: {err}"));
    }

    /// GET of the read-only port's `path` (`/pods`, `/stats/summary`), as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}{path}", self.read_only_port);
        let response = reqwest::get(&url)
            .await
            .unwrap_or_else(|err| panic!("GET {url}: {err}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "GET {url}: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {url}: {err}: {body}"))
    }

    /// The static pods kubelet knows, by pod name (without the node suffix), with the
    /// status its status manager holds.
    pub async fn pods(&self) -> Vec<(String, serde_json::Value)> {
        let list = self.get_json("/pods").await;
        let suffix = format!("-{}", self.node_name);
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|pod| {
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                (name.trim_end_matches(&suffix).to_string(), pod)
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("kubelet is not running").id()
    }

    /// SIGTERM, then SIGKILL after 20 s.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
        super::cleanup::unmount_under(self.dir.path());
        // kubelet links each container's log into /var/log/containers.
        if let Ok(entries) = std::fs::read_dir("/var/log/containers") {
            for entry in entries.flatten() {
                if std::fs::read_link(entry.path()).is_ok_and(|t| t.starts_with(&self.pod_logs)) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        for dir in &self.made_fixed_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- kubelet log ({}) ----\n{}---- end of kubelet log ----",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .collect()
        })
        .unwrap_or_default();
    if Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        roots.push("/sys/fs/cgroup".into());
    }
    roots
}

/// kubelet's log lines that report a CRI call wharf failed (kubelet's CRI client logs
/// each as "<Call> from runtime service failed" or "... from image service failed").
/// One kind is kubelet's own doing and is left out: NotFound for a container kubelet
/// had already removed (its container deletor asks again after the pod's cleanup
/// removed it; containerd answers NotFound there too).
pub fn cri_errors(kubelet_log: &str) -> Vec<String> {
    let mut removed: Vec<&str> = Vec::new();
    let mut errors = Vec::new();
    for line in kubelet_log.lines() {
        if line.contains("\"RemoveContainer\" containerID=\"") {
            if let Some(id) = line
                .split("containerID=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
            {
                removed.push(id);
            }
            continue;
        }
        let failed = line.contains("from runtime service failed")
            || line.contains("from image service failed")
            || line.contains("rpc error:");
        if !failed {
            continue;
        }
        let already_removed =
            line.contains("code = NotFound") && removed.iter().any(|id| line.contains(id));
        if !already_removed {
            errors.push(line.to_string());
        }
    }
    errors
}

/// Runs `openssl` with `args` in `dir`, panicking with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("run openssl (install the Debian package openssl): {err}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key and a certificate `name.{key,crt}` signed by the CA in `dir`.
fn issue_cert(dir: &Path, name: &str, subject: &str, extensions: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), extensions).expect("write a certificate's extensions");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &ext,
        ],
    );
}

/// A kubeconfig for `server` with the client certificate `name.{crt,key}` of `dir`.
fn kubeconfig(dir: &Path, name: &str, server: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {name}
  user:
    client-certificate: {crt}
    client-key: {key}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: {name}
current-context: e2e
"#,
            ca = dir.join("ca.crt").display(),
            crt = dir.join(format!("{name}.crt")).display(),
            key = dir.join(format!("{name}.key")).display(),
        ),
    )
    .expect("write a kubeconfig");
    path
}

/// A one-node control plane on loopback: etcd and kube-apiserver with certificates
/// made here by openssl, a kubeconfig for kubectl (system:masters) and one for the
/// kubelet of node `node_name` (system:nodes).
pub struct ControlPlane {
    pub dir: TempDir,
    pub admin_kubeconfig: PathBuf,
    pub kubelet_kubeconfig: PathBuf,
    pub server: String,
    kubectl: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

impl ControlPlane {
    pub async fn start(binaries: &K8sBinaries, node_name: &str) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("wharf-k8s-")
            .tempdir()
            .expect("create the control plane's temporary dir");
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).expect("create the pki dir");
        openssl(
            &pki,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=wharf-e2e-ca",
            ],
        );
        let client = "extendedKeyUsage=clientAuth\n";
        issue_cert(
            &pki,
            "apiserver",
            "/CN=kube-apiserver",
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,\
             DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.254.0.1\n",
        );
        issue_cert(&pki, "admin", "/O=system:masters/CN=e2e-admin", client);
        issue_cert(
            &pki,
            "kubelet",
            &format!("/O=system:nodes/CN=system:node:{node_name}"),
            client,
        );
        issue_cert(
            &pki,
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            client,
        );
        openssl(
            &pki,
            &[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
                "sa.key",
            ],
        );
        openssl(&pki, &["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);

        let (etcd_client, etcd_peer, secure_port) = (free_port(), free_port(), free_port());
        let etcd_log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let etcd = Command::new(&binaries.etcd)
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args([
                &format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                &format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--listen-metrics-urls=",
            ])
            .stdin(Stdio::null())
            .stdout(etcd_log.try_clone().expect("clone etcd log"))
            .stderr(etcd_log)
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", binaries.etcd.display()));
        let apiserver_log =
            std::fs::File::create(dir.path().join("kube-apiserver.log")).expect("apiserver log");
        let p = |f: &str| pki.join(f).display().to_string();
        let apiserver = Command::new(&binaries.kube_apiserver)
            .args([
                format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // No endpoints of the `kubernetes` Service (they may not be loopback):
                // nothing in these pods calls the API.
                "--endpoint-reconciler-type=none".into(),
                // The node's InternalIP (the test's address), never its hostname.
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--secure-port={secure_port}"),
                format!(
                    "--cert-dir={}",
                    dir.path().join("apiserver-certs").display()
                ),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!(
                    "--kubelet-client-certificate={}",
                    p("apiserver-kubelet-client.crt")
                ),
                format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                "--service-cluster-ip-range=10.254.0.0/24".into(),
                "--authorization-mode=Node,RBAC".into(),
                // As kubeadm's clusters: node agents (wharf's chart) run privileged.
                "--allow-privileged=true".into(),
                // No kube-controller-manager here: nothing would make the namespace's
                // default ServiceAccount (pods opt out of a token instead).
                "--disable-admission-plugins=ServiceAccount".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
            ])
            .stdin(Stdio::null())
            .stdout(apiserver_log.try_clone().expect("clone apiserver log"))
            .stderr(apiserver_log)
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", binaries.kube_apiserver.display()));
        let server = format!("https://127.0.0.1:{secure_port}");
        let plane = ControlPlane {
            admin_kubeconfig: kubeconfig(&pki, "admin", &server),
            kubelet_kubeconfig: kubeconfig(&pki, "kubelet", &server),
            server,
            kubectl: binaries.kubectl.clone(),
            dir,
            etcd: Some(etcd),
            apiserver: Some(apiserver),
        };
        plane.wait_ready().await;
        plane
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready within 120 s: {}\napiserver log:\n{}\netcd log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log("kube-apiserver.log"),
                self.log("etcd.log")
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read(self.dir.path().join(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `kubectl` as the cluster admin.
    pub fn kubectl_command(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command.arg("--kubeconfig").arg(&self.admin_kubeconfig);
        command
    }

    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        self.kubectl_command()
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("run kubectl: {err}"))
    }

    /// `kubectl args`, asserting success; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            terminate(child);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- kube-apiserver log ----\n{}---- end of kube-apiserver log ----",
                self.log("kube-apiserver.log")
            );
        }
    }
}
