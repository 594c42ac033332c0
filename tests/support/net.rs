//! Helpers for pod networking tests: reading pod addresses and NetworkReady, reaching
//! servers in pods from the host and from other pods, and cleaning up a test's bridge
//! network. Network rule: only loopback and the bridges / namespaces a test creates.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use super::pods::PodEnv;

pub async fn network_ready(env: &mut PodEnv) -> cri::RuntimeCondition {
    let status = env
        .rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner()
        .status
        .expect("status");
    status
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady condition")
}

/// The pod's addresses as PodSandboxStatus reports them: `network.ip` first, then
/// `additional_ips`.
pub async fn pod_ips(env: &mut PodEnv, pod_id: &str) -> Vec<String> {
    let network = env
        .rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_string(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .and_then(|s| s.network)
        .unwrap_or_default();
    let mut ips = Vec::new();
    if !network.ip.is_empty() {
        ips.push(network.ip);
    }
    ips.extend(network.additional_ips.into_iter().map(|ip| ip.ip));
    ips
}

pub async fn pod_ip(env: &mut PodEnv, pod_id: &str) -> String {
    pod_ips(env, pod_id)
        .await
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// GETs `path` from `addr` (ip:port) over plain TCP from the host (no HTTP client
/// crate needed for busybox httpd), retrying while the server starts; returns the body.
pub fn host_fetch(addr: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_host_fetch(addr, path) {
            Ok(body) => return body,
            Err(err) => assert!(
                Instant::now() < deadline,
                "GET {path} from {addr} did not succeed from the host: {err}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One GET attempt; the body of a 200 answer, else what went wrong.
pub fn try_host_fetch(addr: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let socket: std::net::SocketAddr = addr.parse().expect("ip:port");
    let attempt = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    match attempt {
        Ok(response) if response.starts_with("HTTP/1.") && response.contains(" 200 ") => {
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
            Ok(body.trim().to_string())
        }
        Ok(response) => Err(format!("unexpected answer {response:?}")),
        Err(err) => Err(err.to_string()),
    }
}

/// A container serving `body` as /index.html on port 8080 (busybox httpd).
pub fn web_server(env: &PodEnv, body: &str) -> cri::ContainerConfig {
    env.container_config(
        "web",
        &[
            "sh",
            "-c",
            &format!(
                "mkdir /www && echo {body} > /www/index.html && exec httpd -f -p 8080 -h /www"
            ),
        ],
    )
}

/// A shell command GETting /index.html from `ip:port` inside a pod. busybox's static
/// wget crashes on non-loopback addresses on this machine, so nc does the GET.
pub fn pod_get_command(ip: &str, port: u16) -> String {
    format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}")
}

/// Starts a pod with a long-sleeping busybox container to run network clients in;
/// returns (pod id, pod IP, container id).
pub async fn client_pod(env: &mut PodEnv) -> (String, String, String) {
    let pod = env.pod_config("client");
    let pod_id = env.run_pod(&pod).await;
    let ip = pod_ip(env, &pod_id).await;
    let command = env.container_config("c", &["sleep", "1000"]);
    let container = env.run(&pod_id, &pod, &command).await;
    (pod_id, ip, container)
}

/// Host links other than veths and test bridges (other tests make and remove theirs in
/// parallel); a test's own veths are checked on its bridge.
pub fn links() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new("/sys/class/net"))
        .expect("/sys/class/net")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with("veth") && !n.starts_with("wt") && !n.starts_with("wh"))
        .collect();
    names.sort();
    names
}

/// veth ports attached to `bridge`.
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `iptables-save` of one table.
pub fn iptables_save(table: &str) -> String {
    let output = Command::new("iptables-save")
        .args(["-t", table])
        .output()
        .expect("iptables-save (Debian package iptables)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Deletes every rule of `table` whose line contains one of `needles` (chains stay).
pub fn delete_rules_containing(table: &str, needles: &[String]) {
    let mut deletes = Vec::new();
    for line in iptables_save(table).lines() {
        if line.starts_with("-A ") && needles.iter().any(|n| line.contains(n.as_str())) {
            deletes.push(format!("-D {}", &line[3..]));
        }
    }
    if deletes.is_empty() {
        return;
    }
    let script = format!("*{table}\n{}\nCOMMIT\n", deletes.join("\n"));
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(script.as_bytes());
    }
    let _ = child.wait();
}

/// Removes the NAT rules CNI plugins made for network `name` and pods a failed test
/// did not remove (portmap's and the bridge plugin's ipMasq per-pod chains are named
/// in a rule that carries the network's name): each such rule, and the chain it jumps
/// to.
pub fn remove_cni_rules(name: &str) {
    let needle = format!("\\\"{name}\\\"");
    for rule in iptables_save("nat").lines().filter(|l| l.contains(&needle)) {
        let Some(chain) = rule.split_whitespace().skip_while(|w| *w != "-j").nth(1) else {
            continue;
        };
        let delete = format!(
            "iptables -t nat -D {} ; iptables -t nat -F {chain}; iptables -t nat -X {chain}",
            &rule[3..]
        );
        let _ = Command::new("sh")
            .args(["-c", &delete])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Removes a built-in bridge network a test made, even when the test failed half-way:
/// the bridge link and every rule naming it or leading into its subnet.
pub struct BridgeCleanup {
    pub bridge: String,
    /// e.g. `10.160.7.` (DNAT targets in the subnet), or empty.
    pub subnet_prefix: String,
}

impl Drop for BridgeCleanup {
    fn drop(&mut self) {
        let mut needles = vec![format!("\"wharf network {}\"", self.bridge)];
        if !self.subnet_prefix.is_empty() {
            needles.push(format!("--to-destination {}", self.subnet_prefix));
        }
        delete_rules_containing("nat", &needles);
        delete_rules_containing("filter", &needles);
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Lease records of the built-in bridge networks in a daemon's store: `<network>/<ip>`.
pub fn stored_leases(root: &Path) -> Vec<String> {
    stored_ids(root, "lease")
}

/// The daemon's store under `root`, read-only (beside the running daemon).
pub fn open_store(root: &Path) -> rusqlite::Connection {
    let db = root.join("metadata.db");
    rusqlite::Connection::open_with_flags(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|err| panic!("open {}: {err}", db.display()))
}

/// The IDs of the stored objects of `kind` (`lease`, `pod`...), sorted.
pub fn stored_ids(root: &Path, kind: &str) -> Vec<String> {
    let conn = open_store(root);
    let mut stmt = conn
        .prepare("SELECT id FROM objects WHERE kind = ?1 ORDER BY id")
        .expect("query the store");
    let rows = stmt
        .query_map([kind], |row| row.get::<_, String>(0))
        .expect("list the objects");
    rows.map(|r| r.expect("an object row")).collect()
}

/// A test's bridge network: its name, subnet, the daemon config selecting it, and the
/// cleanup (declared first in the test so it runs after the daemon is gone).
pub struct TestBridge {
    _forwarding: super::IpForwardGuard,
    pub cleanup: BridgeCleanup,
    /// e.g. `10.161.7`
    pub prefix: String,
}

impl TestBridge {
    pub fn new(index: u32) -> TestBridge {
        let pid = std::process::id();
        let prefix = format!("10.{}.{}", 160 + index, pid % 250);
        TestBridge {
            _forwarding: super::IpForwardGuard::new(),
            cleanup: BridgeCleanup {
                bridge: format!("wh{}n{index}", pid % 100_000),
                subnet_prefix: format!("{prefix}."),
            },
            prefix,
        }
    }

    pub fn name(&self) -> &str {
        &self.cleanup.bridge
    }

    pub fn config(&self) -> String {
        format!(
            "[network]\nmode = \"bridge\"\n[network.bridge]\nname = {:?}\nsubnet = \"{}.0/24\"\n",
            self.name(),
            self.prefix
        )
    }

    pub fn nat_rules_of(&self, pod: &str) -> Vec<String> {
        iptables_save("nat")
            .lines()
            .filter(|l| l.contains(pod))
            .map(str::to_string)
            .collect()
    }
}

/// A CNI network of the reference plugins (bridge + host-local + portmap) in a conf
/// dir of its own: its bridge, subnet and the daemon config that selects it. The
/// bridge, its rules and the plugins' masquerade chains go when it is dropped (after
/// the daemon: declare it first).
pub struct CniBridgeNet {
    // Dropped in this order: the rules, the bridge, then the forwarding setting.
    _rules_cleanup: CniRulesCleanup,
    _bridge_cleanup: BridgeCleanup,
    _forwarding: super::IpForwardGuard,
    dir: tempfile::TempDir,
    /// The network's name in its conflist.
    pub name: String,
    pub bridge: String,
    /// e.g. `10.244.7`
    pub prefix: String,
}

/// Removes the plugins' masquerade rules of network `.0` that a failed run left.
struct CniRulesCleanup(String);

impl Drop for CniRulesCleanup {
    fn drop(&mut self) {
        remove_cni_rules(&self.0);
    }
}

impl CniBridgeNet {
    /// `index` picks the subnet (`10.<160 + index>.<pid>.0/24`) and bridge name as
    /// [`TestBridge::new`] does; `tag` names the network.
    pub fn new(index: u32, tag: &str) -> CniBridgeNet {
        super::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
        let forwarding = super::IpForwardGuard::new();
        let pid = std::process::id();
        let bridge = format!("wt{}n{index}", pid % 100_000);
        let prefix = format!("10.{}.{}", 160 + index, pid % 250);
        let name = format!("wharf-{tag}-{pid}");
        let bridge_cleanup = BridgeCleanup {
            bridge: bridge.clone(),
            subnet_prefix: format!("{prefix}."),
        };
        let rules_cleanup = CniRulesCleanup(name.clone());
        let dir = tempfile::Builder::new()
            .prefix("wharf-cni-")
            .tempdir()
            .expect("the CNI dirs");
        let conf = dir.path().join("net.d");
        std::fs::create_dir_all(&conf).expect("create the CNI conf dir");
        std::fs::write(
            conf.join("10-test.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": name,
                "plugins": [{
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("{prefix}.0/24")}]],
                        "dataDir": dir.path().join("ipam"),
                    }
                }, {"type": "portmap", "capabilities": {"portMappings": true}}]
            })
            .to_string(),
        )
        .expect("write the conflist");
        CniBridgeNet {
            _rules_cleanup: rules_cleanup,
            _bridge_cleanup: bridge_cleanup,
            _forwarding: forwarding,
            dir,
            name,
            bridge,
            prefix,
        }
    }

    /// The daemon config selecting this network (CNI mode, its conf dir).
    pub fn config(&self) -> String {
        format!(
            "[network]\nmode = \"cni\"\n[cni]\nconf_dir = {:?}\n",
            self.dir.path().join("net.d").display().to_string()
        )
    }

    /// Counts host-local's leases: a file per address (beside last_reserved_ip and
    /// a lock) in the network's data dir.
    pub fn leases(&self) -> impl Fn() -> usize + 'static {
        let dir = self.dir.path().join("ipam").join(&self.name);
        let prefix = format!("{}.", self.prefix);
        move || {
            super::entries(&dir)
                .iter()
                .filter(|f| f.starts_with(&prefix))
                .count()
        }
    }
}
