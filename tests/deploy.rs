//! Installing wharf on a node (issue 27): the systemd unit (`systemd-analyze verify`),
//! deploy/install.sh and uninstall.sh in a temporary root, the .deb of scripts/deb
//! (its contents, and dpkg installing, removing and purging it in a temporary root),
//! the commit in `--version` and Docker's `/version`, deploy/wharf.toml (every setting,
//! at its default, accepted by wharfd, which serves with it and tells systemd it is
//! ready), the kubelet and crictl snippets, and the Helm chart (the real `helm lint`
//! and `helm template`, with default and other values, and its installer script).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use support::daemon::{require_root, wharf_binary, wharfd_binary, Daemon};
use support::docker::raw_http;
use support::require_installed;
use wharf::config::Config;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory of the binaries under test (cargo builds all four for the tests).
fn binaries() -> PathBuf {
    Path::new(wharfd_binary())
        .parent()
        .expect("wharfd's directory")
        .to_path_buf()
}

const PROGRAMS: [&str; 4] = ["wharfd", "wharf", "wharf-monitor", "wharf-monitor-watch"];

/// Runs `command`; panics naming it when it cannot start.
fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command`, asserting success; returns stdout and stderr together.
fn ok(command: &mut Command) -> String {
    let output = run(command);
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{all}",
        output.status
    );
    all
}

/// Runs `command`, asserting failure; returns stdout and stderr together.
fn fails(command: &mut Command) -> String {
    let output = run(command);
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(
        !output.status.success(),
        "{command:?} was expected to fail:\n{all}"
    );
    all
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

/// Every entry under `root`, by path relative to it: `dir MODE`, `file MODE SHA256` or
/// `link TARGET`.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|err| panic!("read dir {}: {err}", dir.display()))
            .map(|entry| entry.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let name = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                out.insert(name, format!("link {}", target.display()));
            } else if meta.is_dir() {
                out.insert(name, format!("dir {mode:o}"));
                walk(root, &path, out);
            } else {
                out.insert(name, format!("file {mode:o} {}", sha256(&path)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The file entries of a [`tree`].
fn files(tree: &BTreeMap<String, String>) -> BTreeSet<String> {
    tree.iter()
        .filter(|(_, kind)| kind.starts_with("file "))
        .map(|(path, _)| path.clone())
        .collect()
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary dir")
}

// ---------------------------------------------------------------------------------
// The systemd unit

#[test]
fn unit_passes_systemd_analyze_verify() {
    let analyze = require_installed("/usr/bin/systemd-analyze", "systemd");
    let unit = read(&repo().join("deploy/systemd/wharfd.service"));
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/wharfd",
        "Delegate=yes",
        "KillMode=process",
        "Restart=on-failure",
        "LimitNOFILE=1048576",
        "After=network-online.target local-fs.target",
        "Wants=network-online.target",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "the unit lacks {line:?}:\n{unit}"
        );
    }
    // A root with the installed unit and binaries, and systemd's own units (what the
    // unit's dependencies name): verify checks that ExecStart exists there.
    let root = temp_dir("wharf-verify-");
    ok(Command::new(repo().join("deploy/install.sh"))
        .args(["--binaries".as_ref(), binaries().as_os_str()])
        .arg("--root")
        .arg(root.path()));
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|dir| dir.join("multi-user.target").exists())
        .expect("systemd's units (multi-user.target): install the Debian package systemd");
    std::fs::create_dir_all(root.path().join("usr/lib/systemd")).expect("mkdir");
    ok(Command::new("cp")
        .arg("-a")
        .arg(system_units)
        .arg(root.path().join("usr/lib/systemd/system")));
    let verify = |root: &Path| {
        run(Command::new(analyze)
            .args(["verify", "--man=no", "--root"])
            .arg(root)
            .arg("wharfd.service")
            .env("SYSTEMD_LOG_COLOR", "0"))
    };
    let output = verify(root.path());
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        output.status
    );
    // The check sees mistakes: a misspelt key and a bad value (which verify only
    // warns about, with a zero exit status).
    let installed = root.path().join("etc/systemd/system/wharfd.service");
    std::fs::write(
        &installed,
        unit.replace("KillMode=process", "KilMode=process")
            .replace("Type=notify", "Type=notifyy"),
    )
    .expect("write the broken unit");
    let output = verify(root.path());
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(
        said.contains("KilMode") && said.contains("notifyy"),
        "a broken unit passed systemd-analyze verify:\n{said}"
    );
}

// ---------------------------------------------------------------------------------
// install.sh and uninstall.sh

fn install(root: &Path, extra: &[&str]) -> String {
    ok(Command::new(repo().join("deploy/install.sh"))
        .arg("--binaries")
        .arg(binaries())
        .arg("--root")
        .arg(root)
        .args(extra))
}

fn uninstall(root: &Path, extra: &[&str]) -> String {
    ok(Command::new(repo().join("deploy/uninstall.sh"))
        .arg("--root")
        .arg(root)
        .args(extra))
}

const INSTALLED: [&str; 9] = [
    "etc/crictl.yaml",
    "etc/systemd/system/wharfd.service",
    "etc/wharf/wharf.toml",
    "usr/bin/wharf",
    "usr/bin/wharf-monitor",
    "usr/bin/wharf-monitor-watch",
    "usr/bin/wharfd",
    "usr/lib/wharf/install-manifest",
    "usr/lib/wharf/uninstall.sh",
];

#[test]
fn install_twice_is_idempotent_and_uninstall_keeps_only_data() {
    let root = temp_dir("wharf-install-");
    let root = root.path();
    let first = install(root, &[]);
    assert!(first.contains("installed /usr/bin/wharfd"), "{first}");
    let installed = tree(root);
    let expected: BTreeSet<String> = INSTALLED.iter().map(|p| p.to_string()).collect();
    assert_eq!(files(&installed), expected, "{installed:#?}");
    for (path, source) in [
        ("etc/wharf/wharf.toml", repo().join("deploy/wharf.toml")),
        ("etc/crictl.yaml", repo().join("deploy/crictl.yaml")),
        (
            "etc/systemd/system/wharfd.service",
            repo().join("deploy/systemd/wharfd.service"),
        ),
        (
            "usr/lib/wharf/uninstall.sh",
            repo().join("deploy/uninstall.sh"),
        ),
    ] {
        assert_eq!(sha256(&root.join(path)), sha256(&source), "{path}");
    }
    for program in PROGRAMS {
        let path = format!("usr/bin/{program}");
        assert_eq!(
            installed[&path],
            format!("file 755 {}", sha256(&binaries().join(program))),
            "{path}"
        );
    }
    assert_eq!(
        installed["etc/wharf/wharf.toml"].split(' ').nth(1),
        Some("644")
    );
    let version = ok(Command::new(root.join("usr/bin/wharfd")).arg("--version"));
    assert!(version.starts_with("wharfd "), "{version}");

    // Again: the same tree, manifest included, and it says so.
    let second = install(root, &[]);
    assert!(second.contains("nothing changed"), "{second}");
    assert_eq!(tree(root), installed, "a second install changed the tree");

    // Data (and an edited config) stay; everything else the installer made goes.
    std::fs::create_dir_all(root.join("var/lib/wharf")).expect("mkdir data");
    std::fs::write(root.join("var/lib/wharf/metadata.db"), "data").expect("write data");
    let config = root.join("etc/wharf/wharf.toml");
    std::fs::write(
        &config,
        format!("{}\n[log]\nlevel = \"debug\"\n", read(&config)),
    )
    .expect("edit the config");
    let edited = sha256(&config);
    let said = uninstall(root, &[]);
    assert!(
        said.contains("kept /etc/wharf/wharf.toml: edited since it was installed"),
        "{said}"
    );
    let left = tree(root);
    assert_eq!(
        left.keys().cloned().collect::<Vec<_>>(),
        [
            "etc",
            "etc/wharf",
            "etc/wharf/wharf.toml",
            "var",
            "var/lib",
            "var/lib/wharf",
            "var/lib/wharf/metadata.db"
        ],
        "{said}"
    );
    assert_eq!(sha256(&config), edited);

    // Installed again over the kept config (it stays as it is), then purged: the
    // config, the data and the state go too (the root's etc, which the first install
    // made, stays: no installer owns it now).
    let again = install(root, &[]);
    assert!(
        again.contains("kept /etc/wharf/wharf.toml (already there"),
        "{again}"
    );
    assert_eq!(sha256(&config), edited);
    std::fs::create_dir_all(root.join("run/wharf")).expect("mkdir state");
    std::fs::write(root.join("run/wharf/wharfd.pid"), "1").expect("write state");
    let said = uninstall(root, &["--purge"]);
    let left = tree(root);
    assert_eq!(
        left.keys().cloned().collect::<Vec<_>>(),
        ["etc", "run", "var", "var/lib"],
        "{said}"
    );
}

#[test]
fn purge_is_refused_while_something_is_mounted_in_the_data() {
    require_root();
    let root = temp_dir("wharf-purge-");
    let root = root.path();
    install(root, &[]);
    let mounted = root.join("var/lib/wharf/snapshots/1/fs");
    std::fs::create_dir_all(&mounted).expect("mkdir");
    std::fs::write(mounted.join("kept"), "a container's file").expect("write");
    ok(Command::new("mount").args([
        "-t",
        "tmpfs",
        "wharf-test",
        mounted.to_str().expect("utf-8 path"),
    ]));
    let said = fails(
        Command::new(repo().join("deploy/uninstall.sh"))
            .arg("--root")
            .arg(root)
            .arg("--purge"),
    );
    let _ = Command::new("umount").arg(&mounted).status();
    assert!(
        said.contains("--purge refused") && said.contains(&mounted.display().to_string()),
        "{said}"
    );
    // Nothing was removed.
    assert!(root.join("usr/bin/wharfd").exists());
    assert!(mounted.join("kept").exists());
    uninstall(root, &["--purge"]);
    assert!(!root.join("var/lib/wharf").exists());
}

#[test]
fn install_keeps_config_files_it_finds() {
    let root = temp_dir("wharf-install-kept-");
    let root = root.path();
    std::fs::create_dir_all(root.join("etc/wharf")).expect("mkdir");
    let crictl = root.join("etc/crictl.yaml");
    let config = root.join("etc/wharf/wharf.toml");
    std::fs::write(
        &crictl,
        "runtime-endpoint: unix:///run/containerd/containerd.sock\n",
    )
    .expect("write");
    std::fs::write(&config, "[log]\nlevel = \"warn\"\n").expect("write");
    let before = (sha256(&crictl), sha256(&config));
    let said = install(root, &[]);
    assert!(
        said.contains("kept /etc/crictl.yaml (already there, not installed by this installer)")
            && said.contains("kept /etc/wharf/wharf.toml (already there"),
        "{said}"
    );
    assert_eq!((sha256(&crictl), sha256(&config)), before);
    let said = uninstall(root, &[]);
    assert_eq!((sha256(&crictl), sha256(&config)), before, "{said}");
    assert_eq!(
        files(&tree(root)),
        BTreeSet::from(["etc/crictl.yaml".into(), "etc/wharf/wharf.toml".into()]),
        "{said}"
    );
}

#[test]
fn install_without_binaries_says_how_to_build_them() {
    let root = temp_dir("wharf-install-none-");
    let empty = temp_dir("wharf-no-binaries-");
    let said = fails(
        Command::new(repo().join("deploy/install.sh"))
            .arg("--binaries")
            .arg(empty.path())
            .arg("--root")
            .arg(root.path()),
    );
    assert!(
        said.contains("wharfd is missing") && said.contains("cargo build --release"),
        "{said}"
    );
    assert!(tree(root.path()).is_empty(), "nothing is installed");
    let said = fails(
        Command::new(repo().join("deploy/uninstall.sh"))
            .args(["--root", "/nonexistent-wharf-root"]),
    );
    assert!(said.contains("is not a directory"), "{said}");
    let said = fails(
        Command::new(repo().join("deploy/uninstall.sh"))
            .arg("--root")
            .arg(root.path()),
    );
    assert!(said.contains("install-manifest is missing"), "{said}");
}

// ---------------------------------------------------------------------------------
// The .deb

fn dpkg_root(root: &Path) -> Command {
    let mut command = Command::new("dpkg");
    command
        .arg(format!("--root={}", root.display()))
        .arg(format!("--log={}", root.join("dpkg.log").display()))
        // The maintainer scripts run here, with DPKG_ROOT set: they prefix their paths
        // with it and leave systemd alone.
        .arg("--force-script-chrootless")
        // The temporary root's dpkg database has none of the Depends.
        .arg("--force-depends");
    command
}

fn new_dpkg_root(prefix: &str) -> tempfile::TempDir {
    let root = temp_dir(prefix);
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.path().join(dir)).expect("mkdir");
    }
    std::fs::write(root.path().join("var/lib/dpkg/status"), "").expect("dpkg status");
    root
}

/// The files under `root` other than dpkg's own database and log.
fn package_files(root: &Path) -> BTreeSet<String> {
    files(&tree(root))
        .into_iter()
        .filter(|p| !p.starts_with("var/lib/dpkg/") && p != "dpkg.log")
        .collect()
}

#[test]
fn deb_has_the_files_conffile_and_depends_and_installs_into_a_root() {
    require_root();
    require_installed("/usr/bin/dpkg-deb", "dpkg");
    require_installed("/usr/bin/dpkg-shlibdeps", "dpkg-dev");
    require_installed("/usr/bin/objcopy", "binutils");
    let out = temp_dir("wharf-deb-");
    let started = Instant::now();
    let said = ok(Command::new(repo().join("scripts/deb"))
        .arg("--binaries")
        .arg(binaries())
        .arg("--out")
        .arg(out.path())
        .args(["--compression", "none"]));
    eprintln!("scripts/deb took {:.1?}", started.elapsed());
    let deb = PathBuf::from(said.lines().last().expect("the .deb's path").trim());
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        deb,
        out.path().join(format!(
            "wharf_{}_{}.deb",
            env!("CARGO_PKG_VERSION"),
            arch.trim()
        ))
    );

    let field = |name: &str| {
        ok(Command::new("dpkg-deb")
            .args(["--field"])
            .arg(&deb)
            .arg(name))
    };
    assert_eq!(field("Package").trim(), "wharf");
    assert_eq!(field("Version").trim(), env!("CARGO_PKG_VERSION"));
    let depends = field("Depends");
    for dependency in [
        "libc6 (>= 2.36)",
        "libgcc-s1",
        "libseccomp2",
        "iptables",
        "procps",
        "ca-certificates",
    ] {
        assert!(depends.contains(dependency), "Depends: {depends}");
    }
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for member in ["conffiles", "control", "postinst", "prerm", "postrm"] {
        assert!(info.contains(&format!(" {member} ")), "{info}");
    }
    let conffiles = ok(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/wharf/wharf.toml");
    let contents = ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let listed: BTreeSet<String> = contents
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").to_string())
        .collect();
    let expected: BTreeSet<String> = [
        "etc/wharf/wharf.toml",
        "usr/bin/wharf",
        "usr/bin/wharf-monitor",
        "usr/bin/wharf-monitor-watch",
        "usr/bin/wharfd",
        "usr/lib/systemd/system/wharfd.service",
        "usr/share/doc/wharf/README.md",
        "usr/share/doc/wharf/copyright",
        "usr/share/wharf/crictl.yaml",
        "usr/share/wharf/kubelet-config.yaml",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(listed, expected, "{contents}");
    for line in contents
        .lines()
        .filter(|l| l.starts_with('-') && l.contains("usr/bin/"))
    {
        assert!(line.starts_with("-rwxr-xr-x root/root"), "{line}");
    }

    // dpkg installs it into a root; postinst writes crictl.yaml there.
    let root = new_dpkg_root("wharf-dpkg-");
    let root = root.path();
    ok(dpkg_root(root).arg("--install").arg(&deb));
    let mut expected_installed = expected.clone();
    expected_installed.insert("etc/crictl.yaml".into());
    assert_eq!(package_files(root), expected_installed);
    assert_eq!(
        sha256(&root.join("etc/crictl.yaml")),
        sha256(&repo().join("deploy/crictl.yaml"))
    );
    assert_eq!(
        sha256(&root.join("etc/wharf/wharf.toml")),
        sha256(&repo().join("deploy/wharf.toml"))
    );
    let status = ok(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Status}|${Conffiles}", "wharf"]));
    assert!(
        status.starts_with("install ok installed|") && status.contains("/etc/wharf/wharf.toml"),
        "{status}"
    );
    let version = ok(Command::new(root.join("usr/bin/wharfd")).arg("--version"));
    assert!(version.contains("(commit "), "{version}");

    // Removed: the conffile and crictl.yaml stay; purged: they go, and nothing is left.
    ok(dpkg_root(root).args(["--remove", "wharf"]));
    assert_eq!(
        package_files(root),
        BTreeSet::from(["etc/crictl.yaml".into(), "etc/wharf/wharf.toml".into()])
    );
    ok(dpkg_root(root).args(["--purge", "wharf"]));
    assert_eq!(package_files(root), BTreeSet::new());
    assert!(!root.join("etc/wharf").exists());

    // A crictl.yaml already there is the admin's: neither replaced nor purged.
    let root = new_dpkg_root("wharf-dpkg-kept-");
    let root = root.path();
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    let crictl = root.join("etc/crictl.yaml");
    std::fs::write(
        &crictl,
        "runtime-endpoint: unix:///run/containerd/containerd.sock\n",
    )
    .expect("write");
    let before = sha256(&crictl);
    ok(dpkg_root(root).arg("--install").arg(&deb));
    assert_eq!(sha256(&crictl), before);
    ok(dpkg_root(root).args(["--purge", "wharf"]));
    assert_eq!(sha256(&crictl), before);
}

// ---------------------------------------------------------------------------------
// The commit in the version

/// HEAD's full commit hash.
fn head_commit() -> String {
    require_installed("/usr/bin/git", "git");
    let said = ok(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo()));
    let head = said.trim().to_string();
    assert!(
        head.len() == 40 && head.chars().all(|c| c.is_ascii_hexdigit()),
        "git rev-parse HEAD: {said} (the version tests need a git checkout)"
    );
    head
}

/// Asserts that `commit` (as the binaries report it) is HEAD's, perhaps `-dirty`.
fn assert_is_head(commit: &str, head: &str, context: &str) {
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        hash.len() >= 7 && head.starts_with(hash),
        "{context}: commit {commit:?} is not HEAD ({head}); a commit made since the \
         binaries were built? run the test again"
    );
}

#[test]
fn version_names_the_commit() {
    let head = head_commit();
    assert_is_head(wharf::GIT_COMMIT, &head, "wharf::GIT_COMMIT");
    for (binary, name) in [(wharfd_binary(), "wharfd"), (wharf_binary(), "wharf")] {
        let said = ok(Command::new(binary).arg("--version"));
        let expected = format!(
            "{name} {} (commit {})\n",
            env!("CARGO_PKG_VERSION"),
            wharf::GIT_COMMIT
        );
        assert_eq!(said, expected);
    }
}

#[tokio::test]
async fn docker_version_reports_the_commit() {
    let head = head_commit();
    let daemon = Daemon::start().await;
    let socket = daemon.paths.state.join("docker.sock");
    let (status, _, body) = raw_http(&socket, "GET", "/version", None);
    assert_eq!(status, 200, "{body}");
    let version: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let commit = version["GitCommit"].as_str().unwrap_or_default();
    assert_is_head(commit, &head, "/version GitCommit");
    assert_eq!(
        version["Components"][0]["Details"]["GitCommit"].as_str(),
        Some(commit)
    );
    let said = ok(Command::new(wharf_binary())
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .arg("version"));
    assert!(
        said.contains(&format!(" Git commit:        {commit}\n"))
            && said.contains(&format!("  Git commit:       {commit}\n")),
        "{said}"
    );
}

// ---------------------------------------------------------------------------------
// deploy/wharf.toml

/// Settings with no default (unset unless configured): `--print-config` leaves them
/// out, so the file's examples are checked against this list. A setting added to
/// src/config.rs with a default shows up in `--print-config` by itself.
const UNSET_BY_DEFAULT: [&str; 11] = [
    "cri.streaming.tls_cert_file",
    "cri.streaming.tls_key_file",
    "docker.socket",
    "docker.group",
    "docker.tls_cert_file",
    "docker.tls_key_file",
    "docker.tls_ca_file",
    "registry.platform",
    "runtime.restrict_oom_score_adj",
    "runtime.monitor_path",
    "metrics.address",
];

/// Tables whose keys are the user's (registry hosts, handler names), not settings.
const MAP_TABLES: [&str; 2] = ["registry.mirrors", "runtime.handlers"];

/// The dotted keys of `table`, maps counted as one setting.
fn setting_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) if !MAP_TABLES.contains(&path.as_str()) => {
                setting_keys(inner, &path, out)
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// deploy/wharf.toml with its `#key = default` settings (and `#[table]` lines)
/// uncommented.
fn uncomment_defaults(text: &str) -> String {
    let setting = regex::Regex::new(r"^#([^\s#].*)$").expect("regex");
    text.lines()
        .map(|line| setting.replace(line, "$1").into_owned() + "\n")
        .collect()
}

/// Also the `# key = example` lines.
fn uncomment_examples(text: &str) -> String {
    let example =
        regex::Regex::new(r#"^# ?((\[[a-z.]+\])|([a-z_]+|"[^"]+") = .*)$"#).expect("regex");
    uncomment_defaults(text)
        .lines()
        .map(|line| example.replace(line, "$1").into_owned() + "\n")
        .collect()
}

/// `wharfd --config FILE --print-config`, asserting it is accepted.
fn print_config(dir: &Path, name: &str, config: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, config).expect("write config");
    let output = run(Command::new(wharfd_binary())
        .arg("--config")
        .arg(&path)
        .arg("--print-config"));
    assert!(
        output.status.success(),
        "wharfd refuses {name}: {}\n{config}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[test]
fn deploy_config_lists_every_setting_at_its_default() {
    let dir = temp_dir("wharf-config-");
    let deploy = read(&repo().join("deploy/wharf.toml"));
    // As installed: wharfd takes it, and it changes nothing.
    let defaults = print_config(dir.path(), "empty.toml", "");
    assert_eq!(print_config(dir.path(), "wharf.toml", &deploy), defaults);

    // Its settings uncommented are the defaults (two of them set to the value unset
    // means), and wharfd takes them.
    let uncommented = uncomment_defaults(&deploy);
    print_config(dir.path(), "defaults.toml", &uncommented);
    let mut config = Config::from_toml(&uncommented).expect("parses");
    config.validate().expect("valid");
    assert_eq!(config.docker_socket(), Config::default().docker_socket());
    assert_eq!(
        config.metrics.address.as_deref(),
        Some(wharf::config::DEFAULT_METRICS_ADDRESS)
    );
    config.docker.socket = None;
    config.metrics.address = None;
    assert_eq!(config, Config::default(), "{uncommented}");

    // With the examples too: wharfd takes them, and that is every setting there is.
    let everything = uncomment_examples(&deploy);
    let printed: toml::Table =
        toml::from_str(&print_config(dir.path(), "everything.toml", &everything))
            .expect("printed TOML");
    let mut listed = BTreeSet::new();
    setting_keys(&printed, "", &mut listed);
    let defaults: toml::Table = toml::from_str(&defaults).expect("printed TOML");
    let mut expected = BTreeSet::new();
    setting_keys(&defaults, "", &mut expected);
    expected.extend(UNSET_BY_DEFAULT.iter().map(|k| k.to_string()));
    assert_eq!(
        listed,
        expected,
        "deploy/wharf.toml lacks {:?} and has unknown {:?}",
        expected.difference(&listed).collect::<Vec<_>>(),
        listed.difference(&expected).collect::<Vec<_>>()
    );
}

/// A wharfd child killed (and reaped) when dropped, e.g. by a failed assertion.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn wharfd_serves_with_the_deploy_config_and_tells_systemd() {
    require_root();
    let dir = temp_dir("wharf-notify-");
    let dir = dir.path();
    // systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET.
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let log_path = dir.join("wharfd.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let state = dir.join("state");
    let child = Command::new(wharfd_binary())
        .arg("--config")
        .arg(repo().join("deploy/wharf.toml"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(&state)
        .arg("--cri-socket")
        .arg(state.join("wharf.sock"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn wharfd");
    let mut wharfd = Running(child);
    let receive = || {
        let mut buf = [0u8; 256];
        match notify.recv(&mut buf) {
            Ok(len) => text(&buf[..len]),
            Err(err) => panic!(
                "no notification from wharfd ({err}); its log:\n{}",
                read(&log_path)
            ),
        }
    };
    let ready = receive();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // Ready means serving: both sockets answer.
    assert!(state.join("wharf.sock").exists());
    let (status, _, body) = raw_http(&state.join("docker.sock"), "GET", "/_ping", None);
    assert_eq!((status, body.as_str()), (200, "OK"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(wharfd.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let stopping = receive();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = wharfd.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "wharfd did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", read(&log_path));
}

// ---------------------------------------------------------------------------------
// kubelet and crictl

fn yaml_file(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(&repo().join(path)))
        .unwrap_or_else(|err| panic!("{path} is not YAML: {err}"))
}

#[test]
fn kubelet_and_crictl_snippets_name_wharfs_socket_and_driver() {
    let defaults = Config::default();
    let endpoint = format!("unix://{}", defaults.cri.socket.display());
    let kubelet = yaml_file("deploy/kubelet-config.yaml");
    assert_eq!(kubelet["kind"].as_str(), Some("KubeletConfiguration"));
    assert_eq!(
        kubelet["apiVersion"].as_str(),
        Some("kubelet.config.k8s.io/v1beta1")
    );
    assert_eq!(
        kubelet["containerRuntimeEndpoint"].as_str(),
        Some(endpoint.as_str())
    );
    assert_eq!(
        kubelet["imageServiceEndpoint"].as_str(),
        Some(endpoint.as_str())
    );
    // The driver wharf's RuntimeConfig reports.
    let driver = serde_json::to_value(defaults.cgroup_driver).expect("driver");
    assert_eq!(kubelet["cgroupDriver"].as_str(), driver.as_str());
    assert_eq!(driver.as_str(), Some("cgroupfs"));
    let crictl = yaml_file("deploy/crictl.yaml");
    assert_eq!(crictl["runtime-endpoint"].as_str(), Some(endpoint.as_str()));
    assert_eq!(crictl["image-endpoint"].as_str(), Some(endpoint.as_str()));
    assert!(crictl["timeout"].as_u64().is_some(), "{crictl:?}");
}

// ---------------------------------------------------------------------------------
// The Helm chart

fn helm() -> Command {
    let path = repo().join("target/go-tools/helm");
    assert!(
        path.exists(),
        "{} is missing: build helm with e2e/helm/build.sh (needs Go 1.26 and the Go \
         module proxy; scripts/test runs it)",
        path.display()
    );
    let mut command = Command::new(path);
    // Never the user's helm cache, config or repositories.
    let home = std::env::temp_dir().join("wharf-test-helm-home");
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    command
}

fn chart() -> PathBuf {
    repo().join("helm/wharf")
}

/// Values other than the defaults, in every part of the chart.
const VALUES: &str = r#"
image:
  repository: registry.example/wharf-installer
  tag: "0.1.0-test"
  pullPolicy: Always
hostBinDir: /opt/wharf/bin
config: |
  [log]
  level = "debug"
  [registry]
  max_concurrent_downloads = 5
registryMirrors:
  docker.io: ["https://mirror.gcr.io", "http://10.0.0.1:5000"]
  quay.io: ["https://quay-mirror.example"]
metrics:
  address: "0.0.0.0:9338"
  annotations: true
  serviceMonitor:
    enabled: true
    interval: 15s
    labels:
      release: prometheus
nodeSelector:
  wharf.example/runtime: "true"
tolerations:
  - key: node-role.kubernetes.io/control-plane
    operator: Exists
    effect: NoSchedule
resources:
  requests:
    cpu: 50m
    memory: 64Mi
  limits:
    cpu: 500m
    memory: 256Mi
"#;

/// `helm template` of the chart with `values` (a values file's text) and `args`.
fn render(values: Option<&str>, args: &[&str]) -> Output {
    let dir = temp_dir("wharf-helm-");
    let mut command = helm();
    command.args(["template", "wharf"]).arg(chart());
    command.args(["--namespace", "kube-system"]);
    if let Some(values) = values {
        let file = dir.path().join("values.yaml");
        std::fs::write(&file, values).expect("write values");
        command.arg("--values").arg(file);
    }
    run(command.args(args))
}

/// The rendered objects, by kind.
fn objects(values: Option<&str>, args: &[&str]) -> BTreeMap<String, serde_yaml::Value> {
    let output = render(values, args);
    assert!(
        output.status.success(),
        "helm template failed: {}",
        text(&output.stderr)
    );
    let manifest = text(&output.stdout);
    let mut objects = BTreeMap::new();
    for document in serde_yaml::Deserializer::from_str(&manifest) {
        let object = serde_yaml::Value::deserialize(document)
            .unwrap_or_else(|err| panic!("helm template printed bad YAML ({err}):\n{manifest}"));
        if object.is_null() {
            continue;
        }
        let kind = object["kind"].as_str().expect("kind").to_string();
        assert!(
            objects.insert(kind.clone(), object).is_none(),
            "two {kind}s:\n{manifest}"
        );
    }
    objects
}

fn str_of<'a>(value: &'a serde_yaml::Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

/// The pod template's container environment, by name.
fn container_env(daemonset: &serde_yaml::Value) -> BTreeMap<String, String> {
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|var| {
            (
                str_of(&var["name"], "env name").to_string(),
                str_of(&var["value"], "env value").to_string(),
            )
        })
        .collect()
}

/// The host path behind the container's mount at `mount_path`.
fn host_path_at(daemonset: &serde_yaml::Value, mount_path: &str) -> String {
    let pod = &daemonset["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(mount_path))
        .unwrap_or_else(|| panic!("no mount at {mount_path}"));
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume for {mount:?}"));
    str_of(&volume["hostPath"]["path"], "hostPath").to_string()
}

/// Checks the rendered wharf.toml with wharfd and returns it parsed.
fn rendered_config(objects: &BTreeMap<String, serde_yaml::Value>) -> Config {
    let toml = str_of(&objects["ConfigMap"]["data"]["wharf.toml"], "wharf.toml");
    let dir = temp_dir("wharf-helm-config-");
    print_config(dir.path(), "wharf.toml", toml);
    Config::from_toml(toml).expect("the rendered wharf.toml parses")
}

/// What a DaemonSet needs whatever the values: the host, privileges, mounts wired to
/// the installer's environment, and the script from the ConfigMap.
fn check_daemonset(objects: &BTreeMap<String, serde_yaml::Value>, bin_dir: &str) {
    let daemonset = &objects["DaemonSet"];
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    let env = container_env(daemonset);
    assert_eq!(
        env["HOST_SYSTEMCTL"],
        "nsenter --target 1 --mount -- systemctl"
    );
    assert_eq!(env["HOST_BIN_DIR"], bin_dir);
    assert_eq!(host_path_at(daemonset, &env["HOST_BIN_MOUNT"]), bin_dir);
    assert_eq!(
        host_path_at(daemonset, &env["HOST_UNIT_DIR"]),
        "/etc/systemd/system"
    );
    assert_eq!(
        host_path_at(daemonset, &env["HOST_CONFIG_DIR"]),
        "/etc/wharf"
    );
    assert_eq!(
        host_path_at(daemonset, &env["HOST_RUN_SYSTEMD"]),
        "/run/systemd"
    );
    // The script and the config come from the ConfigMap's volume.
    let command: Vec<&str> = container["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .map(|c| str_of(c, "command"))
        .collect();
    assert_eq!(command, ["/bin/sh", "/opt/wharf-chart/install-on-host.sh"]);
    assert_eq!(env["CONFIG"], "/opt/wharf-chart/wharf.toml");
    let configmap = &objects["ConfigMap"];
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == configmap["metadata"]["name"])
        .expect("the ConfigMap's volume");
    assert!(container["volumeMounts"]
        .as_sequence()
        .expect("mounts")
        .iter()
        .any(|m| m["name"] == volume["name"] && m["mountPath"] == "/opt/wharf-chart"));
    assert_eq!(
        str_of(&configmap["data"]["install-on-host.sh"], "script"),
        read(&chart().join("files/install-on-host.sh"))
    );
    assert!(
        daemonset["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .is_some_and(|sum| sum.len() == 64)
    );
    assert_eq!(
        container["readinessProbe"]["exec"]["command"][2].as_str(),
        Some("/tmp/wharf-installed")
    );
}

#[test]
fn helm_chart_lints_with_default_and_other_values() {
    let chart_yaml = yaml_file("helm/wharf/Chart.yaml");
    assert_eq!(
        chart_yaml["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "helm/wharf/Chart.yaml's appVersion is wharf's version"
    );
    let said = ok(helm().args(["lint", "--strict"]).arg(chart()));
    assert!(
        said.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{said}"
    );
    let dir = temp_dir("wharf-helm-lint-");
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, VALUES).expect("write values");
    let said = ok(helm()
        .args(["lint", "--strict", "--namespace", "kube-system"])
        .arg(chart())
        .arg("--values")
        .arg(&values));
    assert!(
        said.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{said}"
    );
}

#[test]
fn helm_chart_renders_its_defaults() {
    let objects = objects(None, &[]);
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        ["ConfigMap", "DaemonSet"],
        "no Service or ServiceMonitor by default"
    );
    check_daemonset(&objects, "/usr/bin");
    let daemonset = &objects["DaemonSet"];
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"].as_str(),
        Some(format!("wharf-installer:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(pod["tolerations"][0]["operator"].as_str(), Some("Exists"));
    assert_eq!(
        pod["nodeSelector"]["kubernetes.io/os"].as_str(),
        Some("linux")
    );
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    assert!(
        annotations["prometheus.io/scrape"].is_null(),
        "{annotations:?}"
    );
    assert_eq!(
        daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].as_u64(),
        Some(1)
    );
    // The default configuration is wharf's defaults.
    assert_eq!(rendered_config(&objects), Config::default());
}

#[test]
fn helm_chart_renders_other_values() {
    let objects = objects(Some(VALUES), &[]);
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        ["ConfigMap", "DaemonSet", "Service", "ServiceMonitor"]
    );
    check_daemonset(&objects, "/opt/wharf/bin");
    let daemonset = &objects["DaemonSet"];
    let template = &daemonset["spec"]["template"];
    let pod = &template["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some("registry.example/wharf-installer:0.1.0-test")
    );
    assert_eq!(container["imagePullPolicy"].as_str(), Some("Always"));
    assert_eq!(
        container["resources"]["limits"]["memory"].as_str(),
        Some("256Mi")
    );
    assert_eq!(
        container["resources"]["requests"]["cpu"].as_str(),
        Some("50m")
    );
    assert_eq!(
        pod["nodeSelector"]["wharf.example/runtime"].as_str(),
        Some("true")
    );
    assert_eq!(
        pod["tolerations"][0]["key"].as_str(),
        Some("node-role.kubernetes.io/control-plane")
    );
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9338"));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    // The configuration: the text, the mirrors and the metrics address, as wharfd
    // reads them.
    let config = rendered_config(&objects);
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.registry.max_concurrent_downloads, 5);
    assert_eq!(
        config.registry.mirrors,
        BTreeMap::from([
            (
                "docker.io".to_string(),
                vec![
                    "https://mirror.gcr.io".to_string(),
                    "http://10.0.0.1:5000".to_string()
                ]
            ),
            (
                "quay.io".to_string(),
                vec!["https://quay-mirror.example".to_string()]
            ),
        ])
    );
    assert_eq!(config.metrics.address.as_deref(), Some("0.0.0.0:9338"));

    // The ServiceMonitor finds the Service, which selects the DaemonSet's pods.
    let service = &objects["Service"];
    let monitor = &objects["ServiceMonitor"];
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(
        monitor["metadata"]["labels"]["release"].as_str(),
        Some("prometheus")
    );
    let selected = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels");
    for (key, value) in selected {
        assert_eq!(&service["metadata"]["labels"][key], value, "{key:?}");
    }
    for (key, value) in service["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(&template["metadata"]["labels"][key], value, "{key:?}");
    }
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(9338));
    assert_eq!(
        service["spec"]["ports"][0]["name"].as_str(),
        Some("metrics")
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("metrics"));
    assert_eq!(endpoint["interval"].as_str(), Some("15s"));
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0].as_str(),
        Some("kube-system")
    );

    // Another configuration rolls the pods.
    let sum = |objects: &BTreeMap<String, serde_yaml::Value>| {
        objects["DaemonSet"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .clone()
    };
    let other = self::objects(Some(VALUES), &["--set", "registryMirrors=null"]);
    assert_ne!(sum(&objects), sum(&other));
}

#[test]
fn helm_chart_refuses_values_wharfd_could_not_use() {
    for (args, expected) in [
        (
            vec!["--set", "metrics.annotations=true"],
            "not loopback (metrics.address is \"127.0.0.1:1338\")",
        ),
        (
            vec![
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--set",
                "metrics.address=",
            ],
            "need metrics.address",
        ),
        (
            vec!["--set", "metrics.address=0.0.0.0:x"],
            "metrics.address \"0.0.0.0:x\" is not IP:PORT",
        ),
        (
            vec![
                "--set-json",
                r#"registryMirrors={"docker.io":"https://mirror.gcr.io"}"#,
            ],
            "registryMirrors.docker.io must be a list",
        ),
        (
            vec![
                "--set",
                "metrics.address=0.0.0.0:1338",
                "--set-string",
                "config=[metrics]\naddress = \"\"",
            ],
            "config has a [metrics] table",
        ),
    ] {
        let output = render(None, &args);
        let stderr = text(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "helm template {args:?}: expected {expected:?}:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------
// The chart's installer script, on directories standing for the node's

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = temp_dir("wharf-node-");
        for sub in [
            "bin",
            "systemd-units",
            "etc-wharf",
            "run-systemd/system",
            "chart",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        // The node's systemctl: records each call; is-active once started.
        let systemctl = dir.path().join("systemctl");
        std::fs::write(
            &systemctl,
            "#!/bin/sh\necho \"$*\" >>\"$NODE/calls\"\ncase \"$1\" in\n  \
             is-active) [ -f \"$NODE/active\" ] ;;\n  \
             start|restart) touch \"$NODE/active\" ;;\nesac\n",
        )
        .expect("write systemctl");
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Node { dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// Runs the installer once with `config` as the chart's wharf.toml; returns its
    /// output and the systemctl calls it made.
    fn install(&self, config: &str) -> (Output, Vec<String>) {
        let config_path = self.path("chart/wharf.toml");
        std::fs::write(&config_path, config).expect("write config");
        let _ = std::fs::remove_file(self.path("calls"));
        let output = run(Command::new("sh")
            .arg(chart().join("files/install-on-host.sh"))
            .env("NODE", self.dir.path())
            .env("SOURCE_BIN_DIR", binaries())
            .env("SOURCE_UNIT", repo().join("deploy/systemd/wharfd.service"))
            .env("CONFIG", &config_path)
            .env("HOST_BIN_DIR", "/opt/wharf/bin")
            .env("HOST_BIN_MOUNT", self.path("bin"))
            .env("HOST_UNIT_DIR", self.path("systemd-units"))
            .env("HOST_CONFIG_DIR", self.path("etc-wharf"))
            .env("HOST_RUN_SYSTEMD", self.path("run-systemd"))
            .env("HOST_SYSTEMCTL", self.path("systemctl"))
            .env("READY_FILE", self.path("ready"))
            .env("ONESHOT", "1"));
        let calls = std::fs::read_to_string(self.path("calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        (output, calls)
    }
}

fn succeeded(output: &Output) -> String {
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "the installer failed:\n{all}");
    all
}

#[test]
fn chart_installer_installs_then_restarts_only_on_a_change() {
    let node = Node::new();
    let deploy = read(&repo().join("deploy/wharf.toml"));
    let (output, calls) = node.install(&deploy);
    let said = succeeded(&output);
    assert_eq!(
        calls,
        [
            "daemon-reload",
            "enable wharfd.service",
            "is-active --quiet wharfd.service",
            "start wharfd.service"
        ],
        "{said}"
    );
    assert!(
        said.contains(&format!("wharfd {}", env!("CARGO_PKG_VERSION"))),
        "{said}"
    );
    for program in PROGRAMS {
        let installed = node.path("bin").join(program);
        assert_eq!(sha256(&installed), sha256(&binaries().join(program)));
        let mode = std::fs::metadata(&installed)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{program}");
    }
    let unit = read(&node.path("systemd-units/wharfd.service"));
    assert_eq!(
        unit,
        read(&repo().join("deploy/systemd/wharfd.service")).replace(
            "ExecStart=/usr/bin/wharfd",
            "ExecStart=/opt/wharf/bin/wharfd"
        )
    );
    assert_eq!(read(&node.path("etc-wharf/wharf.toml")), deploy);
    assert!(node.path("ready").exists());

    // Nothing changed: no restart.
    let (output, calls) = node.install(&deploy);
    let said = succeeded(&output);
    assert_eq!(
        calls,
        [
            "daemon-reload",
            "enable wharfd.service",
            "is-active --quiet wharfd.service"
        ],
        "{said}"
    );
    assert!(said.contains("nothing changed"), "{said}");

    // A new configuration: installed, and wharfd restarted.
    let debug = format!("{deploy}\n[log]\nlevel = \"debug\"\n");
    let (output, calls) = node.install(&debug);
    let said = succeeded(&output);
    assert_eq!(
        calls.last().map(String::as_str),
        Some("restart wharfd.service"),
        "{said}"
    );
    assert_eq!(read(&node.path("etc-wharf/wharf.toml")), debug);

    // A configuration wharfd refuses changes nothing on the node.
    let (output, calls) = node.install("[log]\nlevel = \"loud\"\n");
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(
        !output.status.success()
            && said.contains("log.level")
            && said.contains("wharfd refuses the chart's wharf.toml"),
        "{said}"
    );
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(read(&node.path("etc-wharf/wharf.toml")), debug);

    // A node without systemd is named.
    std::fs::remove_dir(node.path("run-systemd/system")).expect("rmdir");
    let (output, calls) = node.install(&deploy);
    let said = text(&output.stderr);
    assert!(
        !output.status.success() && said.contains("systemd does not run on this node"),
        "{said}"
    );
    assert!(calls.is_empty(), "{calls:?}");
}
