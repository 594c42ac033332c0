//! Integration tests of the CNI executor (`wharf::cni`) with Debian's real plugins in
//! /usr/lib/cni: real network namespaces (`ip netns`), a bridge and a subnet of each
//! test's own, host-local leases in the test's temp dir, and tiny shell-script plugins
//! for failures, timeouts and STATUS.
//!
//! Network rule: traffic only goes to loopback and to the namespaces and bridges a test
//! creates. Names are unique per test and process (bridge `wcni<pid%1000><n>`, subnet
//! `10.<200+n>.<pid%250>.0/24`), so tests run in parallel; each test's `Fixture` removes
//! what it made (DEL, netns, bridge, processes, temp dirs) even when the test fails.
//!
//! Prerequisites (the tests fail, naming the Debian package, when one is missing): root,
//! `containernetworking-plugins`, `iproute2`, `iptables` (portmap runs it),
//! `busybox-static` (ping and httpd).
//!
//! The bridge plugin with `isGateway` turns on `net.ipv4.ip_forward` host-wide (as it does
//! for any runtime); the tests need no forwarding (the host is one end of all their
//! traffic) and put back the value they found when the last fixture is dropped.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wharf::cni::{Attachment, Cni, CniConfig, CniError, CniResult, PortMapping, RuntimeConfig};

const PLUGIN_DIR: &str = "/usr/lib/cni";
const IP: &str = "/sbin/ip";
const BUSYBOX: &str = "/bin/busybox";

fn prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the CNI plugin tests need root (network namespaces, bridges, iptables)"
    );
    support::require_installed("/usr/lib/cni/bridge", "containernetworking-plugins");
    support::require_installed("/usr/lib/cni/host-local", "containernetworking-plugins");
    support::require_installed("/usr/lib/cni/portmap", "containernetworking-plugins");
    support::require_installed(IP, "iproute2");
    support::require_installed("/usr/sbin/iptables", "iptables");
    support::require_installed(BUSYBOX, "busybox-static");
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One test's network world: conf/cache/lease/plugin dirs, bridge, subnet, namespaces.
/// Dropping it deletes every attachment it handed out and everything else it made.
struct Fixture {
    /// Held until the fixture's bridge is gone (the last one restores ip_forward).
    _forwarding: support::IpForwardGuard,
    n: u32,
    network: String,
    bridge: String,
    /// The first three octets of the test's /24.
    prefix: String,
    config: CniConfig,
    namespaces: Vec<String>,
    attachments: Vec<Attachment>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(n: u32) -> Fixture {
        prerequisites();
        let pid = std::process::id();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = CniConfig {
            conf_dir: dir.path().join("net.d"),
            plugin_dirs: vec![dir.path().join("bin"), PathBuf::from(PLUGIN_DIR)],
            cache_dir: dir.path().join("cache"),
            timeout: Duration::from_secs(20),
        };
        std::fs::create_dir_all(&config.conf_dir).expect("conf dir");
        std::fs::create_dir_all(dir.path().join("bin")).expect("plugin dir");
        Fixture {
            _forwarding: support::IpForwardGuard::new(),
            n,
            network: format!("wcni-test-{n}"),
            bridge: format!("wcni{}{n}", pid % 1000),
            prefix: format!("10.{}.{}", 200 + n, pid % 250),
            config,
            namespaces: Vec::new(),
            attachments: Vec::new(),
            children: Vec::new(),
            dir,
        }
    }

    fn cni(&self) -> Cni {
        Cni::new(self.config.clone())
    }

    fn lease_dir(&self) -> PathBuf {
        self.dir.path().join("ipam").join(&self.network)
    }

    /// The addresses host-local has leased (its files named after an IP).
    fn leases(&self) -> Vec<String> {
        let mut leases: Vec<String> = std::fs::read_dir(self.lease_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|name| name.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        leases.sort();
        leases
    }

    /// bridge (gateway, no masquerade) + host-local in the test's subnet, followed by
    /// `extra` plugins.
    fn conflist(&self, extra: Vec<Value>) -> Value {
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{}.0/24", self.prefix)}]],
                "dataDir": self.dir.path().join("ipam"),
            }
        })];
        plugins.extend(extra);
        json!({"cniVersion": "1.0.0", "name": self.network, "plugins": plugins})
    }

    fn write_config(&self, file: &str, config: &Value) -> PathBuf {
        let path = self.config.conf_dir.join(file);
        std::fs::write(&path, serde_json::to_vec_pretty(config).expect("json"))
            .expect("write config");
        path
    }

    /// A shell-script plugin in the test's plugin dir (searched before /usr/lib/cni).
    fn write_plugin(&self, name: &str, script: &str) -> PathBuf {
        let path = self.dir.path().join("bin").join(name);
        std::fs::write(&path, script).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod plugin");
        path
    }

    /// A new network namespace (`ip netns add`) and an attachment for it; the fixture
    /// deletes both when dropped.
    fn attachment(&mut self, k: u32) -> Attachment {
        let name = format!("wcni-{}-{}-{k}", std::process::id(), self.n);
        run_ok(IP, &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        let attachment = Attachment {
            container_id: format!("wcni{}t{}c{k}", std::process::id(), self.n),
            netns: PathBuf::from("/run/netns").join(&name),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), format!("pod-{k}")),
            ],
            capability_args: RuntimeConfig::default(),
        };
        self.attachments.push(attachment.clone());
        attachment
    }

    fn netns_name(attachment: &Attachment) -> String {
        attachment
            .netns
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string()
    }

    fn cache_files(&self) -> Vec<String> {
        std::fs::read_dir(&self.config.cache_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // DEL needs a runtime; the test's own may be gone or busy, so use a fresh one on
        // a thread of its own.
        let config = self.config.clone();
        let attachments = std::mem::take(&mut self.attachments);
        let deleted = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let cni = Cni::new(config);
            for attachment in &attachments {
                if let Err(err) = runtime.block_on(cni.del(attachment)) {
                    eprintln!("cleanup: CNI DEL of {}: {err}", attachment.container_id);
                }
            }
        })
        .join();
        if deleted.is_err() {
            eprintln!("cleanup: the CNI DEL thread panicked");
        }
        for name in &self.namespaces {
            let _ = run(IP, &["netns", "del", name]);
        }
        let _ = run(IP, &["link", "del", &self.bridge]);
    }
}

fn ipv4_in(result: &CniResult, prefix: &str) -> Ipv4Addr {
    let ips = result.pod_ips();
    assert_eq!(ips.len(), 1, "one pod IP expected: {result:?}");
    match ips[0] {
        IpAddr::V4(ip) if ip.to_string().starts_with(&format!("{prefix}.")) => ip,
        other => panic!("pod IP {other} is not in {prefix}.0/24"),
    }
}

/// The host end of the pod's veth: the result's interface that is neither in the
/// sandbox nor the bridge.
fn host_veth(result: &CniResult, bridge: &str) -> String {
    result
        .interfaces
        .iter()
        .find(|i| i.sandbox.as_deref().unwrap_or_default().is_empty() && i.name != bridge)
        .map(|i| i.name.clone())
        .unwrap_or_else(|| panic!("no host veth in {result:?}"))
}

fn link_exists(name: &str) -> bool {
    run(IP, &["link", "show", "dev", name]).status.success()
}

fn ping(ip: &str) -> bool {
    run(BUSYBOX, &["ping", "-c", "1", "-W", "2", ip])
        .status
        .success()
}

#[tokio::test]
async fn ready_needs_a_config_and_its_plugins() {
    let fx = Fixture::new(1);
    let cni = fx.cni();
    let err = cni.ready().await.expect_err("no config yet");
    assert_eq!(
        err.to_string(),
        format!(
            "no network config found in {}",
            fx.config.conf_dir.display()
        )
    );

    // A config naming a plugin that exists nowhere: the message names it and the dirs.
    let mut broken = fx.conflist(vec![json!({"type": "wcni-no-such-plugin"})]);
    broken["name"] = json!("broken");
    let file = fx.write_config("10-net.conflist", &broken);
    let err = cni.ready().await.expect_err("plugin missing");
    assert_eq!(
        err.to_string(),
        format!(
            "network broken: plugin wcni-no-such-plugin not found in {}:{PLUGIN_DIR}",
            fx.dir.path().join("bin").display()
        )
    );

    // An unparsable file sorting first is skipped; the good one is used.
    std::fs::write(fx.config.conf_dir.join("05-garbage.conflist"), "{").expect("write");
    let good = fx.conflist(vec![
        json!({"type": "portmap", "capabilities": {"portMappings": true}}),
    ]);
    let temp = fx.config.conf_dir.join(".tmp");
    std::fs::write(&temp, serde_json::to_vec(&good).expect("json")).expect("write");
    std::fs::rename(&temp, &file).expect("rename");
    cni.ready().await.expect("ready with a valid config");
    let network = cni.network().expect("load").expect("a network");
    assert_eq!(network.name, fx.network);
    assert_eq!(network.plugins.len(), 2);
}

#[tokio::test]
async fn add_check_and_del_after_a_restart_and_a_config_change() {
    let mut fx = Fixture::new(2);
    let config_file = fx.write_config("10-net.conflist", &fx.conflist(vec![]));
    let a = fx.attachment(1);
    let b = fx.attachment(2);

    let cni = fx.cni();
    let first = cni.add(&a).await.expect("ADD a");
    let second = cni.add(&b).await.expect("ADD b");
    let ip_a = ipv4_in(&first, &fx.prefix);
    let ip_b = ipv4_in(&second, &fx.prefix);
    assert_ne!(ip_a, ip_b, "two attachments get two addresses");
    assert_eq!(first.cni_version, "1.0.0");
    assert_eq!(
        first.ips[0].gateway.as_deref(),
        Some(format!("{}.1", fx.prefix).as_str())
    );

    // The address is configured inside the namespace, and the host reaches it over
    // the test's bridge.
    let inside = run_ok(
        IP,
        &[
            "-n",
            &Fixture::netns_name(&a),
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ],
    );
    assert!(inside.contains(&format!("{ip_a}/24")), "{inside}");
    assert!(
        ping(&ip_a.to_string()),
        "host cannot ping the pod at {ip_a}"
    );
    assert!(
        ping(&ip_b.to_string()),
        "host cannot ping the pod at {ip_b}"
    );
    let veth_a = host_veth(&first, &fx.bridge);
    assert!(link_exists(&veth_a));
    assert_eq!(fx.leases(), {
        let mut l = vec![ip_a.to_string(), ip_b.to_string()];
        l.sort();
        l
    });
    let cache_a = format!("{}-{}-eth0.json", fx.network, a.container_id);
    assert!(
        fx.cache_files().contains(&cache_a),
        "{:?}",
        fx.cache_files()
    );

    cni.check(&a).await.expect("CHECK a");

    // A restart, and the config file gone: DEL still runs the chain of the ADD.
    drop(cni);
    std::fs::remove_file(&config_file).expect("remove config");
    let cni = fx.cni();
    assert!(cni.network().expect("load").is_none());
    cni.del(&a).await.expect("DEL a");
    assert_eq!(fx.leases(), vec![ip_b.to_string()], "a's lease released");
    assert!(!link_exists(&veth_a), "a's veth removed");
    let inside = run_ok(IP, &["-n", &Fixture::netns_name(&a), "-o", "link"]);
    assert!(!inside.contains("eth0"), "{inside}");
    assert!(!fx.cache_files().contains(&cache_a));
    cni.del(&a).await.expect("DEL a again");
    let err = cni.check(&a).await.expect_err("CHECK after DEL");
    assert!(matches!(err, CniError::NotAttached { .. }), "{err}");

    // A changed config (another network name): b is still deleted with its own.
    let mut renamed = fx.conflist(vec![]);
    renamed["name"] = json!("wcni-renamed");
    fx.write_config("10-net.conflist", &renamed);
    cni.del(&b).await.expect("DEL b");
    assert!(fx.leases().is_empty(), "{:?}", fx.leases());
    assert!(fx.cache_files().is_empty(), "{:?}", fx.cache_files());
}

#[tokio::test]
async fn check_fails_and_del_releases_after_the_netns_is_gone() {
    let mut fx = Fixture::new(3);
    fx.write_config("10-net.conflist", &fx.conflist(vec![]));
    let a = fx.attachment(1);
    let cni = fx.cni();
    let result = cni.add(&a).await.expect("ADD");
    let ip = ipv4_in(&result, &fx.prefix);
    assert_eq!(fx.leases(), vec![ip.to_string()]);

    // CHECK notices the interface is gone.
    run_ok(IP, &["-n", &Fixture::netns_name(&a), "link", "del", "eth0"]);
    let err = cni.check(&a).await.expect_err("CHECK without eth0");
    assert!(
        err.to_string()
            .contains("network wcni-test-3: plugin bridge CHECK failed"),
        "{err}"
    );

    run_ok(IP, &["netns", "del", &Fixture::netns_name(&a)]);
    cni.del(&a).await.expect("DEL without the netns");
    assert!(fx.leases().is_empty(), "lease kept: {:?}", fx.leases());
    assert!(fx.cache_files().is_empty(), "{:?}", fx.cache_files());
    cni.del(&a).await.expect("DEL twice");
}

#[tokio::test]
async fn a_plugin_error_is_reported_and_the_chain_is_undone() {
    let mut fx = Fixture::new(4);
    let log = fx.dir.path().join("fail.log");
    fx.write_plugin(
        "wcni-fail",
        &format!(
            r#"#!/bin/sh
stdin=$(cat)
echo "$CNI_COMMAND|$CNI_CONTAINERID|$CNI_IFNAME|$CNI_NETNS|$CNI_ARGS|$CNI_PATH" >> {log}
echo "$stdin" >> {log}
if [ "$CNI_COMMAND" = ADD ]; then
  echo '{{"cniVersion":"1.0.0","code":7,"msg":"boom","details":"on purpose"}}'
  exit 1
fi
exit 0
"#,
            log = log.display()
        ),
    );
    fx.write_config(
        "10-net.conflist",
        &fx.conflist(vec![
            json!({"type": "wcni-fail", "capabilities": {"mac": true}}),
        ]),
    );
    let mut a = fx.attachment(1);
    a.capability_args.mac = Some("02:42:ac:11:00:02".into());
    let cni = fx.cni();
    let err = cni.add(&a).await.expect_err("ADD must fail");
    match &err {
        CniError::Plugin {
            network,
            plugin,
            command,
            code,
            msg,
            details,
            ..
        } => {
            assert_eq!(network, &fx.network);
            assert_eq!(plugin, "wcni-fail");
            assert_eq!(*command, "ADD");
            assert_eq!(*code, 7);
            assert_eq!(msg, "boom");
            assert_eq!(details, "on purpose");
        }
        other => panic!("expected a CNI plugin error, got {other}"),
    }
    assert_eq!(err.code(), Some(7));
    assert_eq!(
        err.to_string(),
        "network wcni-test-4: plugin wcni-fail ADD failed: CNI error 7: boom (on purpose)"
    );

    // Undone: bridge's DEL ran (no lease, no eth0 in the namespace), no cache entry.
    assert!(fx.leases().is_empty(), "lease kept: {:?}", fx.leases());
    let inside = run_ok(IP, &["-n", &Fixture::netns_name(&a), "-o", "link"]);
    assert!(!inside.contains("eth0"), "{inside}");
    assert!(fx.cache_files().is_empty(), "{:?}", fx.cache_files());

    // What the plugin saw: environment, then its config with name, cniVersion,
    // prevResult (bridge's result) and only the declared capability.
    let log = std::fs::read_to_string(&log).expect("plugin log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    let env = format!(
        "{}|eth0|{}|IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-1|{}:{PLUGIN_DIR}",
        a.container_id,
        a.netns.display(),
        fx.dir.path().join("bin").display()
    );
    assert_eq!(lines[0], format!("ADD|{env}"));
    assert_eq!(lines[2], format!("DEL|{env}"));
    let add_stdin: Value = serde_json::from_str(lines[1]).expect("ADD stdin JSON");
    assert_eq!(add_stdin["name"], json!(fx.network));
    assert_eq!(add_stdin["cniVersion"], "1.0.0");
    assert_eq!(
        add_stdin["runtimeConfig"],
        json!({"mac": "02:42:ac:11:00:02"})
    );
    assert!(add_stdin["prevResult"]["ips"][0]["address"]
        .as_str()
        .is_some_and(|a| a.starts_with(&fx.prefix)));
    let del_stdin: Value = serde_json::from_str(lines[3]).expect("DEL stdin JSON");
    assert_eq!(del_stdin["prevResult"], add_stdin["prevResult"]);
}

#[tokio::test]
async fn a_plugin_that_hangs_is_killed_and_reported_as_a_timeout() {
    let fx = Fixture::new(5);
    let pids = fx.dir.path().join("pids");
    fx.write_plugin(
        "wcni-hang",
        &format!(
            r#"#!/bin/sh
cat > /dev/null
if [ "$CNI_COMMAND" = ADD ]; then
  sleep 60 &
  echo "$$ $!" > {pids}
  wait
fi
exit 0
"#,
            pids = pids.display()
        ),
    );
    fx.write_config(
        "10-net.conflist",
        &json!({"cniVersion": "1.0.0", "name": fx.network, "plugins": [{"type": "wcni-hang"}]}),
    );
    let cni = Cni::new(CniConfig {
        timeout: Duration::from_secs(1),
        ..fx.config.clone()
    });
    let attachment = Attachment {
        container_id: format!("wcni{}hang", std::process::id()),
        netns: PathBuf::new(),
        ifname: "eth0".into(),
        ..Default::default()
    };
    let started = Instant::now();
    let err = cni.add(&attachment).await.expect_err("ADD must time out");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, CniError::Timeout { plugin, command: "ADD", .. } if plugin == "wcni-hang"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "network wcni-test-5: plugin wcni-hang ADD timed out after 1s and was killed"
    );
    // The plugin and the process it started are gone.
    let pids = std::fs::read_to_string(&pids).expect("pid file");
    for pid in pids.split_whitespace() {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&proc_dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(&proc_dir), "process {pid} of the plugin still runs");
    }
    assert!(fx.cache_files().is_empty(), "{:?}", fx.cache_files());
}

/// Running and not a zombie.
fn alive(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .map(|stat| {
            // The state follows the parenthesized command name.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn status_is_run_for_cni_1_1_configs() {
    let fx = Fixture::new(7);
    let flag = fx.dir.path().join("not-ready");
    let log = fx.dir.path().join("status.log");
    fx.write_plugin(
        "wcni-status",
        &format!(
            r#"#!/bin/sh
stdin=$(cat)
echo "$CNI_COMMAND|$CNI_CONTAINERID|$stdin" >> {log}
if [ "$CNI_COMMAND" = STATUS ] && [ -e {flag} ]; then
  echo '{{"cniVersion":"1.1.0","code":50,"msg":"waiting for the overlay"}}'
  exit 1
fi
exit 0
"#,
            log = log.display(),
            flag = flag.display()
        ),
    );
    fx.write_config(
        "10-net.conflist",
        &json!({"cniVersion": "1.1.0", "name": fx.network, "plugins": [{"type": "wcni-status"}]}),
    );
    std::fs::write(&flag, "").expect("flag");
    let cni = fx.cni();
    let err = cni.ready().await.expect_err("STATUS says not ready");
    assert_eq!(err.code(), Some(50));
    assert!(err.to_string().contains("waiting for the overlay"), "{err}");
    std::fs::remove_file(&flag).expect("flag");
    cni.ready().await.expect("STATUS says ready");
    let log = std::fs::read_to_string(&log).expect("log");
    let first = log.lines().next().expect("a STATUS call");
    let (head, stdin) = first.split_at(first.find('{').expect("stdin JSON"));
    assert_eq!(head, "STATUS||", "no container variables for STATUS");
    let stdin: Value = serde_json::from_str(stdin).expect("JSON");
    assert_eq!(stdin["name"], json!(fx.network));
    assert_eq!(stdin["cniVersion"], "1.1.0");
}

/// GET / from `addr`; the body, or why not.
fn http_get(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|err| format!("connect {addr}: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|err| err.to_string())?;
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .map_err(|err| format!("write {addr}: {err}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|err| format!("read {addr}: {err}"))?;
    Ok(response)
}

fn http_get_retrying(addr: SocketAddr) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get(addr) {
            Ok(body) => return Ok(body),
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[tokio::test]
async fn port_mappings_reach_the_pod() {
    let mut fx = Fixture::new(6);
    fx.write_config(
        "10-net.conflist",
        &fx.conflist(vec![
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ]),
    );
    let host_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut a = fx.attachment(1);
    a.capability_args.port_mappings = vec![PortMapping {
        host_port,
        container_port: 8080,
        protocol: "tcp".into(),
        host_ip: String::new(),
    }];
    let cni = fx.cni();
    let result = cni.add(&a).await.expect("ADD");
    let pod_ip = ipv4_in(&result, &fx.prefix);

    let www = fx.dir.path().join("www");
    std::fs::create_dir(&www).expect("www");
    let marker = format!("hello from pod {}", a.container_id);
    std::fs::write(www.join("index.html"), &marker).expect("index");
    let server = Command::new(IP)
        .args([
            "netns",
            "exec",
            &Fixture::netns_name(&a),
            BUSYBOX,
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
        ])
        .arg(&www)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start httpd in the pod");
    fx.children.push(server);

    // Directly, then through the mapping: from loopback (portmap's DNAT in OUTPUT plus
    // route_localnet on the bridge) and from the bridge's own address.
    let direct = http_get_retrying(SocketAddr::new(pod_ip.into(), 8080)).expect("pod reachable");
    assert!(direct.contains(&marker), "{direct}");
    let loopback = http_get_retrying(SocketAddr::from(([127, 0, 0, 1], host_port)))
        .expect("hostPort on 127.0.0.1 reaches the pod");
    assert!(loopback.contains(&marker), "{loopback}");
    let gateway: Ipv4Addr = format!("{}.1", fx.prefix).parse().expect("gateway");
    let via_bridge = http_get_retrying(SocketAddr::new(gateway.into(), host_port))
        .expect("hostPort on the bridge address reaches the pod");
    assert!(via_bridge.contains(&marker), "{via_bridge}");

    let rules = run_ok("/usr/sbin/iptables", &["-t", "nat", "-S"]);
    assert!(
        rules.contains(&a.container_id),
        "no portmap rules for the pod:\n{rules}"
    );
    cni.del(&a).await.expect("DEL");
    let rules = run_ok("/usr/sbin/iptables", &["-t", "nat", "-S"]);
    assert!(
        !rules.contains(&a.container_id),
        "portmap rules left after DEL:\n{rules}"
    );
    assert!(fx.leases().is_empty(), "{:?}", fx.leases());
}
