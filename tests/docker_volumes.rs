//! Docker volumes with the real `docker` CLI (issue 19): named volumes of the `local`
//! driver (create with labels and driver options, ls with filters, inspect, rm, prune,
//! `system df -v`), container mounts (`-v` binds, named and anonymous volumes,
//! `--mount` bind/volume/tmpfs, `--volumes-from`, the image's VOLUMEs with copy-up,
//! `rm -v`), data that survives container removal and a wharfd `kill -9`, dockerd's
//! refusals for bad input (which change nothing), and no leaked mount or volume after
//! 50 create/remove cycles. Each test runs its own wharfd on a temporary root: its
//! volumes, mounts and containers go with it, also when a check fails.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::docker::DockerEnv;
use support::pods::unique;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

/// `docker volume inspect NAME` as JSON (the one object).
fn volume_inspect(docker: &DockerEnv, name: &str) -> Value {
    let all = json(&docker.ok(&["volume", "inspect", name]));
    all[0].clone()
}

/// The names `docker volume ls -q` prints with `args`, sorted.
fn volume_names(docker: &DockerEnv, args: &[&str]) -> BTreeSet<String> {
    let mut command = vec!["volume", "ls", "-q"];
    command.extend_from_slice(args);
    docker
        .ok(&command)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

fn volumes_dir(docker: &DockerEnv) -> PathBuf {
    docker.env.daemon.paths.root.join("volumes")
}

/// The mount points of this process's mount table under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// What a check of "nothing changed" compares: volumes, containers, volume dirs and
/// mounts under the daemon's root.
fn snapshot(docker: &DockerEnv) -> (BTreeSet<String>, String, Vec<String>, Vec<String>) {
    let mut mounts = mounts_under(&docker.env.daemon.paths.root);
    mounts.sort();
    (
        volume_names(docker, &[]),
        docker.ok(&["ps", "-aq", "--no-trunc"]),
        support::entries(&volumes_dir(docker)),
        mounts,
    )
}

/// A raw API call that must fail with `status`, its message containing `wanted`.
fn refused(
    docker: &DockerEnv,
    method: &str,
    path: &str,
    body: Option<&str>,
    status: u16,
    wanted: &str,
) {
    let (got, _, text) = docker.http(method, path, body);
    assert_eq!(got, status, "{method} {path} {body:?}: {text}");
    let message = json(&text)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(wanted),
        "{method} {path} {body:?}: {message:?} does not say {wanted:?}"
    );
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// `dir` bind-mounted on itself and made rshared; unmounted on drop (also when a
/// check fails).
struct SharedMount(PathBuf);

impl SharedMount {
    fn new(dir: &Path) -> SharedMount {
        use nix::mount::{mount, MsFlags};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .unwrap_or_else(|err| panic!("bind {} on itself: {err}", dir.display()));
        let guard = SharedMount(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap_or_else(|err| panic!("make {} rshared: {err}", dir.display()));
        guard
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn volume_create_ls_inspect_rm_prune() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let start = chrono::Utc::now().timestamp() - 1;
    let data = unique("data");
    let tmp = unique("tmp");
    let other = unique("other");
    assert_eq!(
        docker.ok(&["volume", "create", "--label", "app=web", "--label", "tier", &data]),
        data
    );
    // Idempotent for the same name and driver (dockerd's).
    assert_eq!(docker.ok(&["volume", "create", &data]), data);
    docker.ok(&[
        "volume",
        "create",
        "-d",
        "local",
        "-o",
        "type=tmpfs",
        "-o",
        "device=tmpfs",
        "-o",
        "o=size=4m,uid=1000",
        &tmp,
    ]);
    docker.ok(&["volume", "create", &other]);

    let v = volume_inspect(&docker, &data);
    assert_eq!(v["Name"], data.as_str());
    assert_eq!(v["Driver"], "local");
    assert_eq!(v["Scope"], "local");
    assert_eq!(v["Labels"]["app"], "web");
    assert_eq!(v["Labels"]["tier"], "");
    let mountpoint = volumes_dir(&docker).join(&data).join("_data");
    assert_eq!(v["Mountpoint"], mountpoint.display().to_string().as_str());
    assert!(mountpoint.is_dir());
    let created = v["CreatedAt"].as_str().unwrap_or_default();
    let created = chrono::DateTime::parse_from_rfc3339(created)
        .unwrap_or_else(|err| panic!("CreatedAt {created:?}: {err}"));
    assert!(created.timestamp() >= start, "{created}");
    let t = volume_inspect(&docker, &tmp);
    assert_eq!(t["Options"]["type"], "tmpfs");
    assert_eq!(t["Options"]["o"], "size=4m,uid=1000");
    // An option-backed volume is mounted only while a container uses it.
    assert!(mounts_under(&volumes_dir(&docker)).is_empty());

    // ls and its filters.
    let all = volume_names(&docker, &[]);
    for name in [&data, &tmp, &other] {
        assert!(all.contains(name.as_str()), "{all:?}");
    }
    assert_eq!(
        volume_names(&docker, &["--filter", "label=app=web"]),
        BTreeSet::from([data.clone()])
    );
    assert_eq!(
        volume_names(&docker, &["--filter", "label=tier"]),
        BTreeSet::from([data.clone()])
    );
    assert_eq!(
        volume_names(&docker, &["--filter", &format!("name={tmp}")]),
        BTreeSet::from([tmp.clone()])
    );
    assert_eq!(
        volume_names(&docker, &["--filter", "driver=local"]).len(),
        3
    );
    assert!(volume_names(&docker, &["--filter", "driver=other"]).is_empty());
    let ls = docker.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(ls.lines().any(|l| l == format!("local {data}")), "{ls}");

    // In use by a container (even a stopped one): dangling no more, 409 on rm.
    let user = unique("user");
    docker.ok(&[
        "run",
        "--name",
        &user,
        "-v",
        &format!("{data}:/data"),
        "-v",
        &format!("{tmp}:/t"),
        &image,
        "sh",
        "-c",
        "echo hi > /data/f && grep -q ' /t tmpfs ' /proc/mounts && echo x > /t/g",
    ]);
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("f")).unwrap(),
        "hi\n"
    );
    // The tmpfs went with the container's exit.
    assert!(mounts_under(&volumes_dir(&docker)).is_empty());
    let dangling = volume_names(&docker, &["--filter", "dangling=true"]);
    assert_eq!(dangling, BTreeSet::from([other.clone()]));
    assert_eq!(
        volume_names(&docker, &["--filter", "dangling=false"]),
        BTreeSet::from([data.clone(), tmp.clone()])
    );
    let err = docker.fails(&["volume", "rm", &data]);
    assert!(
        err.contains(&format!("remove {data}: volume is in use - [")),
        "{err}"
    );
    let err = docker.fails(&["volume", "rm", "-f", &data]);
    assert!(err.contains("volume is in use"), "{err}");
    assert!(mountpoint.join("f").is_file());
    let by_volume = docker.ok(&["ps", "-aq", "--filter", &format!("volume={data}")]);
    assert_eq!(by_volume.lines().count(), 1, "{by_volume}");

    // system df -v: sizes and reference counts of local volumes without options.
    let (status, _, body) = docker.http("GET", "/system/df", None);
    assert_eq!(status, 200, "{body}");
    let df = json(&body);
    let entry = df["Volumes"]
        .as_array()
        .and_then(|all| all.iter().find(|v| v["Name"] == data.as_str()))
        .unwrap_or_else(|| panic!("{data} not in system df: {df}"))
        .clone();
    assert_eq!(entry["UsageData"]["RefCount"], 1, "{entry}");
    assert_eq!(entry["UsageData"]["Size"], 3, "{entry}");
    let verbose = docker.ok(&["system", "df", "-v"]);
    assert!(
        verbose
            .lines()
            .any(|l| l.starts_with(&data) && l.contains("3B")),
        "{verbose}"
    );

    // Prune: only what no container uses; labels filter.
    docker.ok(&["volume", "create", "--label", "keep=yes", &unique("kept")]);
    let pruned = docker.ok(&["volume", "prune", "-f", "--filter", "label!=keep=yes"]);
    assert!(pruned.contains(&other), "{pruned}");
    assert!(!pruned.contains(&data), "{pruned}");
    let left = volume_names(&docker, &[]);
    assert!(!left.contains(&other), "{left:?}");
    assert!(left.contains(&data), "{left:?}");
    assert!(left.iter().any(|n| n.starts_with("kept-")), "{left:?}");
    // The option-backed one is not pruned (dockerd's: not local disk).
    assert!(left.contains(&tmp), "{left:?}");

    // rm: once the container is gone (the named volume stays with it).
    docker.ok(&["rm", &user]);
    assert!(volume_names(&docker, &[]).contains(&data));
    assert_eq!(
        docker.ok(&["volume", "rm", &data, &tmp]),
        format!("{data}\n{tmp}")
    );
    assert!(!volumes_dir(&docker).join(&data).exists());
    let err = docker.fails(&["volume", "rm", &data]);
    assert!(
        err.contains(&format!("get {data}: no such volume")),
        "{err}"
    );
    docker.ok(&["volume", "rm", "-f", &data]);
    let err = docker.fails(&["volume", "inspect", &data]);
    assert!(err.contains("no such volume"), "{err}");

    // Events: create, mount, unmount, destroy, prune.
    let events = docker.ok(&[
        "events",
        "--since",
        &start.to_string(),
        "--until",
        &(chrono::Utc::now().timestamp() + 1).to_string(),
        "--filter",
        "type=volume",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ]);
    for wanted in [
        format!("create {data}"),
        format!("mount {data}"),
        format!("unmount {data}"),
        format!("destroy {data}"),
        format!("destroy {other}"),
    ] {
        assert!(
            events.lines().any(|l| l == wanted),
            "{wanted} missing:\n{events}"
        );
    }
    assert!(events.lines().any(|l| l.starts_with("prune")), "{events}");
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let used = unique("used");
    let holder = unique("holder");
    docker.ok(&[
        "create",
        "--name",
        &holder,
        "-v",
        &format!("{used}:/u"),
        &image,
        "true",
    ]);
    let before = snapshot(&docker);

    // Volume creates.
    let create = "/volumes/create";
    refused(
        &docker,
        "POST",
        create,
        Some(r#"{"Name":"a"}"#),
        400,
        "create a: volume name is too short, names should be at least two alphanumeric characters",
    );
    refused(&docker, "POST", create, Some(r#"{"Name":"bad name"}"#), 400, "\"bad name\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed");
    refused(
        &docker,
        "POST",
        create,
        Some(r#"{"Name":"../escape"}"#),
        400,
        "includes invalid characters",
    );
    refused(
        &docker,
        "POST",
        create,
        Some(r#"{"Name":"-dash"}"#),
        400,
        "includes invalid characters",
    );
    refused(
        &docker,
        "POST",
        create,
        Some(r#"{"Name":"vol1","Driver":"nfs-plugin"}"#),
        404,
        "create vol1: error looking up volume plugin nfs-plugin: plugin \"nfs-plugin\" not found",
    );
    refused(
        &docker,
        "POST",
        create,
        Some(r#"{"Name":"vol2","DriverOpts":{"bogus":"1"}}"#),
        400,
        "create vol2: invalid option: \"bogus\"",
    );
    refused(
        &docker,
        "POST",
        create,
        Some(r#"{"Name":"vol3","DriverOpts":{"type":"tmpfs"}}"#),
        400,
        "missing required option: \"device\"",
    );
    refused(
        &docker,
        "POST",
        create,
        Some(r#"{"Name":"vol4","DriverOpts":{"size":"10m"}}"#),
        400,
        "quota size requested but no quota support",
    );
    refused(
        &docker,
        "POST",
        create,
        Some(r#"{"Name": 5}"#),
        400,
        "invalid volume create request",
    );
    let err = docker.fails(&["volume", "create", "-d", "nfs-plugin", "vol5"]);
    assert!(err.contains("plugin \"nfs-plugin\" not found"), "{err}");

    // Removal of a volume in use, and of one that is not there.
    refused(
        &docker,
        "DELETE",
        &format!("/volumes/{used}"),
        None,
        409,
        &format!("remove {used}: volume is in use - ["),
    );
    refused(
        &docker,
        "DELETE",
        &format!("/volumes/{used}?force=1"),
        None,
        409,
        "volume is in use",
    );
    refused(
        &docker,
        "DELETE",
        "/volumes/nothere",
        None,
        404,
        "get nothere: no such volume",
    );
    refused(
        &docker,
        "GET",
        "/volumes?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D",
        None,
        400,
        "invalid filter 'bogus'",
    );
    refused(
        &docker,
        "GET",
        "/volumes?filters=%7B%22dangling%22%3A%5B%22maybe%22%5D%7D",
        None,
        400,
        "invalid filter 'dangling=maybe'",
    );
    refused(
        &docker,
        "POST",
        "/volumes/prune?filters=%7B%22name%22%3A%5B%22x%22%5D%7D",
        None,
        400,
        "invalid filter 'name'",
    );

    // Bad mount specs in container creates: the CLI's own checks aside, through the
    // daemon's (dockerd's messages).
    let missing = format!("/tmp/{}", unique("wharf-no-such-dir"));
    for (args, wanted) in [
        (vec!["-v", "/a:/b:bogus"], "invalid mode: bogus".to_string()),
        (vec!["-v", "/a:/b:ro,rw"], "invalid mode: ro,rw".to_string()),
        (vec!["-v", "bad@name:/x"], "includes invalid characters for a local volume name".to_string()),
        (vec!["-v", "vol6:/x:rshared"], "field BindOptions must not be specified".to_string()),
        (vec!["-v", "/a:/"], "destination can't be '/'".to_string()),
        (vec!["-v", "/a:/d", "-v", "/b:/d"], "Duplicate mount point: /d".to_string()),
        (vec!["--volume-driver", "nfs-plugin", "-v", "vol7:/x"], "plugin \"nfs-plugin\" not found".to_string()),
        (
            vec!["--mount", &format!("type=bind,source={missing},target=/x")],
            format!("invalid mount config for type \"bind\": bind source path does not exist: {missing}"),
        ),
        (vec!["--mount", "type=volume,target=/x,readonly"], "must not set ReadOnly mode when using anonymous volumes".to_string()),
        (vec!["--mount", "type=volume,source=vol8,target=/x,volume-opt=type=tmpfs"], "missing required option: \"device\"".to_string()),
        (vec!["--volumes-from", "no-such-container"], "No such container: no-such-container".to_string()),
        (vec!["--volumes-from", &format!("{holder}:rshared")], "invalid mode: rshared".to_string()),
    ] {
        let mut command = vec!["create"];
        command.extend(args.iter().copied());
        command.extend([image.as_str(), "true"]);
        let err = docker.fails(&command);
        assert!(err.contains(&wanted), "docker {command:?}: {err:?} does not say {wanted:?}");
    }
    // The same through the API: 400s, not 500s.
    let body = format!(
        r#"{{"Image":"{image}","HostConfig":{{"Mounts":[{{"Type":"bind","Source":"{missing}","Target":"/x"}}]}}}}"#
    );
    refused(
        &docker,
        "POST",
        "/containers/create",
        Some(&body),
        400,
        "bind source path does not exist",
    );
    let body = format!(
        r#"{{"Image":"{image}","HostConfig":{{"Mounts":[{{"Type":"nfs","Target":"/x"}}]}}}}"#
    );
    refused(
        &docker,
        "POST",
        "/containers/create",
        Some(&body),
        400,
        "mount type unknown",
    );
    // (`-v a:/x` the CLI takes for a Windows drive: through the API.)
    let body = format!(r#"{{"Image":"{image}","HostConfig":{{"Binds":["a:/x"]}}}}"#);
    refused(
        &docker,
        "POST",
        "/containers/create",
        Some(&body),
        400,
        "create a: volume name is too short",
    );
    let body = format!(
        r#"{{"Image":"{image}","HostConfig":{{"Binds":["vol9:/x"],"VolumeDriver":"flocker"}}}}"#
    );
    refused(
        &docker,
        "POST",
        "/containers/create",
        Some(&body),
        404,
        "plugin \"flocker\" not found",
    );

    assert!(!Path::new(&missing).exists(), "--mount made {missing}");
    assert_eq!(
        snapshot(&docker),
        before,
        "a refused call changed something"
    );
    docker.ok(&["rm", &holder]);
    docker.ok(&["volume", "rm", &used]);
}

#[tokio::test]
async fn data_survives_container_removal_and_kill9() {
    let mut docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("keep");
    let volume = format!("{name}:/data");
    // Written, the container removed: the named volume keeps it.
    docker.ok(&[
        "run",
        "--rm",
        "-v",
        &volume,
        &image,
        "sh",
        "-c",
        "echo one > /data/one && sync",
    ]);
    assert_eq!(
        docker.ok(&["run", "--rm", "-v", &volume, &image, "cat", "/data/one"]),
        "one"
    );
    let writer = unique("writer");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &writer,
        "-v",
        &volume,
        &image,
        "sh",
        "-c",
        "echo two > /data/two && sync && touch /data/synced && exec sleep 600",
    ]);
    let synced = volumes_dir(&docker).join(&name).join("_data/synced");
    wait_for("the write and sync", || synced.exists()).await;

    // kill -9 of wharfd: the data, the volume record and its reference survive.
    docker.env.daemon.kill9();
    docker.env.daemon.restart().await;
    assert_eq!(docker.ok(&["exec", &writer, "cat", "/data/two"]), "two");
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            "-v",
            &volume,
            &image,
            "cat",
            "/data/one",
            "/data/two"
        ]),
        "one\ntwo"
    );
    let err = docker.fails(&["volume", "rm", &name]);
    assert!(err.contains("volume is in use"), "{err}");
    docker.ok(&["volume", "prune", "-f"]);
    assert!(volume_names(&docker, &[]).contains(&name));
    let mounts = docker.ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}} {{.RW}}{{end}}",
        &writer,
    ]);
    assert_eq!(mounts, format!("volume {name} /data true"));

    // Removed with -v: a named volume stays.
    docker.ok(&["rm", "-f", "-v", &writer]);
    assert!(volume_names(&docker, &[]).contains(&name));
    docker.ok(&["volume", "rm", &name]);
    assert!(!volumes_dir(&docker).join(&name).exists());
}

#[tokio::test]
async fn copy_up_anonymous_volumes_and_rm_v() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    // An image with content at a VOLUME (docker commit --change).
    let seed = unique("seed");
    docker.ok(&["run", "--name", &seed, &image, "sh", "-c",
        "mkdir -p /data/sub && echo seeded > /data/sub/f && chmod 0750 /data && chown 12:34 /data/sub/f"]);
    let volimage = format!("wharf-test/{}:v1", unique("volimg"));
    docker.ok(&["commit", "--change", "VOLUME [\"/data\"]", &seed, &volimage]);
    docker.ok(&["rm", &seed]);
    let before = volume_names(&docker, &[]);

    // The image's VOLUME: an anonymous volume with the image's content copied up.
    let anon = unique("anon");
    assert_eq!(
        docker.ok(&[
            "run",
            "--name",
            &anon,
            &volimage,
            "sh",
            "-c",
            "cat /data/sub/f; stat -c '%a %u:%g' /data /data/sub/f"
        ]),
        "seeded\n750 0:0\n644 12:34"
    );
    let mounts = json(&docker.ok(&["inspect", "-f", "{{json .Mounts}}", &anon]));
    assert_eq!(mounts.as_array().map(Vec::len), Some(1), "{mounts}");
    let m = &mounts[0];
    assert_eq!(m["Type"], "volume");
    assert_eq!(m["Destination"], "/data");
    assert_eq!(m["Driver"], "local");
    assert_eq!(m["RW"], true);
    let anon_volume = m["Name"].as_str().unwrap_or_default().to_string();
    assert_eq!(anon_volume.len(), 64, "{m}");
    assert_eq!(
        m["Source"],
        volumes_dir(&docker)
            .join(&anon_volume)
            .join("_data")
            .display()
            .to_string()
            .as_str()
    );
    assert!(volume_names(&docker, &[]).contains(&anon_volume));

    // `-v name:/data` over the image's content: a new named volume gets the copy; an
    // existing one with data keeps its own; nocopy copies nothing.
    let named = unique("named");
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{named}:/data"),
            &volimage,
            "cat",
            "/data/sub/f"
        ]),
        "seeded"
    );
    let mine = unique("mine");
    docker.ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{mine}:/data"),
        &image,
        "sh",
        "-c",
        "echo mine > /data/own",
    ]);
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{mine}:/data"),
            &volimage,
            "ls",
            "/data"
        ]),
        "own"
    );
    let nocopy = unique("nocopy");
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{nocopy}:/data:nocopy"),
            &volimage,
            "ls",
            "-A",
            "/data"
        ]),
        ""
    );
    let nocopy2 = unique("nocopy");
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            "--mount",
            &format!("type=volume,src={nocopy2},dst=/data,volume-nocopy"),
            &volimage,
            "ls",
            "-A",
            "/data"
        ]),
        ""
    );

    // `-v /ctr` (anonymous) and `--rm`: the anonymous volumes go with the container.
    let anon_before = volume_names(&docker, &[]);
    docker.ok(&[
        "run",
        "--rm",
        "-v",
        "/scratch",
        &volimage,
        "sh",
        "-c",
        "test -d /scratch && test -f /data/sub/f",
    ]);
    assert_eq!(volume_names(&docker, &[]), anon_before);

    // rm without -v keeps the anonymous volume (dangling); rm -v removes it and keeps
    // named ones.
    let kept = unique("kept");
    docker.ok(&[
        "create",
        "--name",
        &kept,
        "-v",
        &format!("{named}:/n"),
        &volimage,
        "true",
    ]);
    let kept_anon = json(&docker.ok(&["inspect", "-f", "{{json .Mounts}}", &kept]))
        .as_array()
        .and_then(|all| all.iter().find(|m| m["Destination"] == "/data").cloned())
        .and_then(|m| m["Name"].as_str().map(str::to_string))
        .expect("the anonymous volume of the image's VOLUME");
    docker.ok(&["rm", &kept]);
    assert!(volume_names(&docker, &["--filter", "dangling=true"]).contains(&kept_anon));
    docker.ok(&["rm", "-v", &anon]);
    let after = volume_names(&docker, &[]);
    assert!(!after.contains(&anon_volume), "{after:?}");
    assert!(after.contains(&named), "{after:?}");
    docker.ok(&["volume", "prune", "-f"]);
    assert_eq!(volume_names(&docker, &[]), before);
}

#[tokio::test]
async fn binds_tmpfs_and_volumes_from() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let host = tempfile::Builder::new()
        .prefix("wharf-vol-bind-")
        .tempdir()
        .expect("tempdir");
    // A shared mount of its own, as rshared/rslave binds need (dockerd's rule too).
    let _shared = SharedMount::new(host.path());
    std::fs::write(host.path().join("hello"), "from host\n").unwrap();
    let hostdir = host.path().display().to_string();

    // -v bind, read-only with a label mode and a propagation: inspect as dockerd.
    let bound = unique("bound");
    docker.ok(&[
        "create",
        "--name",
        &bound,
        "-v",
        &format!("{hostdir}:/h:ro,z,rslave"),
        &image,
        "true",
    ]);
    let m = json(&docker.ok(&["inspect", "-f", "{{json .Mounts}}", &bound]))[0].clone();
    assert_eq!(m["Type"], "bind");
    assert_eq!(m["Source"], hostdir.as_str());
    assert_eq!(m["Destination"], "/h");
    assert_eq!(m["Mode"], "ro,z,rslave");
    assert_eq!(m["RW"], false);
    assert_eq!(m["Propagation"], "rslave");
    docker.ok(&["rm", &bound]);
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{hostdir}:/h:ro"),
            &image,
            "sh",
            "-c",
            "cat /h/hello; touch /h/x 2>/dev/null || echo read-only"
        ]),
        "from host\nread-only"
    );
    // --mount bind, with a propagation.
    let m = docker.ok(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,src={hostdir},dst=/h,bind-propagation=rshared"),
        &image,
        "cat",
        "/h/hello",
    ]);
    assert_eq!(m, "from host");

    // A missing bind source: -v makes it, --mount refuses (dockerd).
    let missing = host.path().join("made/by/v");
    docker.ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/m", missing.display()),
        &image,
        "touch",
        "/m/x",
    ]);
    assert!(missing.join("x").is_file());
    let absent = host.path().join("absent");
    let err = docker.fails(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,src={},dst=/m", absent.display()),
        &image,
        "true",
    ]);
    assert!(
        err.contains(&format!(
            "invalid mount config for type \"bind\": bind source path does not exist: {}",
            absent.display()
        )),
        "{err}"
    );
    assert!(!absent.exists());

    // A volume that binds a host directory (the local driver's type=none, o=bind):
    // mounted while used, and removing it never touches the directory's content.
    let device = host.path().join("device");
    std::fs::create_dir(&device).unwrap();
    std::fs::write(device.join("old"), "old\n").unwrap();
    let bindvol = unique("bindvol");
    docker.ok(&[
        "volume",
        "create",
        "-o",
        "type=none",
        "-o",
        "o=bind",
        "-o",
        &format!("device={}", device.display()),
        &bindvol,
    ]);
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{bindvol}:/d"),
            &image,
            "sh",
            "-c",
            "echo new > /d/new; cat /d/old"
        ]),
        "old"
    );
    assert_eq!(
        std::fs::read_to_string(device.join("new")).unwrap(),
        "new\n"
    );
    assert!(mounts_under(&volumes_dir(&docker)).is_empty());
    docker.ok(&["volume", "rm", &bindvol]);
    assert!(device.join("old").is_file() && device.join("new").is_file());

    // tmpfs: size and mode, noexec; not a volume, not listed as one.
    let before = volume_names(&docker, &[]);
    let t = unique("tmpfs");
    let out = docker.ok(&[
        "run",
        "--name",
        &t,
        "--mount",
        "type=tmpfs,dst=/t,tmpfs-size=1048576,tmpfs-mode=0700",
        &image,
        "sh",
        "-c",
        "grep ' /t ' /proc/mounts; stat -c %a /t",
    ]);
    assert!(
        out.contains("tmpfs /t tmpfs rw,nosuid,nodev,noexec"),
        "{out}"
    );
    assert!(out.contains("size=1024k"), "{out}");
    assert!(out.ends_with("700"), "{out}");
    let m = json(&docker.ok(&["inspect", "-f", "{{json .Mounts}}", &t]))[0].clone();
    assert_eq!(
        (
            m["Type"].as_str(),
            m["Destination"].as_str(),
            m["Source"].as_str()
        ),
        (Some("tmpfs"), Some("/t"), Some(""))
    );
    docker.ok(&["rm", &t]);
    assert_eq!(volume_names(&docker, &[]), before);
    // --tmpfs: Docker's defaults, overridden by what is given; in HostConfig.Tmpfs,
    // not in Mounts (dockerd's).
    let flag = unique("tmpfs-flag");
    let out = docker.ok(&[
        "run",
        "--name",
        &flag,
        "--tmpfs",
        "/run2:size=2m,exec",
        &image,
        "grep",
        " /run2 ",
        "/proc/mounts",
    ]);
    assert!(
        out.starts_with("tmpfs /run2 tmpfs rw,nosuid,nodev,"),
        "{out}"
    );
    assert!(
        !out.contains("noexec") && out.contains("size=2048k"),
        "{out}"
    );
    assert_eq!(
        docker.ok(&[
            "inspect",
            "-f",
            "{{json .Mounts}} {{json .HostConfig.Tmpfs}}",
            &flag
        ]),
        r#"[] {"/run2":"size=2m,exec"}"#
    );
    docker.ok(&["rm", &flag]);
    let err = docker.fails(&["create", "--tmpfs", "relative", &image, "true"]);
    assert!(err.contains("mount path must be absolute"), "{err}");

    // --volumes-from: the same volume and binds; :ro makes them read-only.
    let source = unique("source");
    let shared = unique("shared");
    docker.ok(&[
        "create",
        "--name",
        &source,
        "-v",
        &format!("{shared}:/shared"),
        "-v",
        &format!("{hostdir}:/h"),
        "-v",
        "/anon",
        &image,
        "true",
    ]);
    docker.ok(&[
        "run",
        "--rm",
        "--volumes-from",
        &source,
        &image,
        "sh",
        "-c",
        "echo lent > /shared/f && cat /h/hello && test -d /anon",
    ]);
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            "--volumes-from",
            &format!("{source}:ro"),
            &image,
            "sh",
            "-c",
            "cat /shared/f; touch /shared/g 2>/dev/null || echo read-only"
        ]),
        "lent\nread-only"
    );
    let borrower = unique("borrower");
    docker.ok(&[
        "create",
        "--name",
        &borrower,
        "--volumes-from",
        &source,
        &image,
        "true",
    ]);
    let names: BTreeSet<String> =
        json(&docker.ok(&["inspect", "-f", "{{json .Mounts}}", &borrower]))
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|m| {
                        format!(
                            "{} {}",
                            m["Type"].as_str().unwrap_or(""),
                            m["Destination"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
    assert_eq!(
        names,
        BTreeSet::from([
            "volume /shared".to_string(),
            "bind /h".to_string(),
            "volume /anon".to_string()
        ])
    );
    // The source removed with -v: its anonymous volume is kept while lent.
    docker.ok(&["rm", "-v", &source]);
    assert_eq!(
        docker
            .ok(&["volume", "ls", "-q", "--filter", "dangling=false"])
            .lines()
            .count(),
        2
    );
    docker.ok(&["rm", "-v", &borrower]);
    docker.ok(&["volume", "rm", &shared]);
    assert_eq!(volume_names(&docker, &[]), before);
}

#[tokio::test]
async fn no_leaked_mounts_or_volumes_after_50_cycles() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let tmpvol = unique("cycle-tmpfs");
    docker.ok(&[
        "volume",
        "create",
        "-o",
        "type=tmpfs",
        "-o",
        "device=tmpfs",
        "-o",
        "o=size=1m",
        &tmpvol,
    ]);
    let named = unique("cycle");
    docker.ok(&["volume", "create", &named]);
    let volumes_before = volume_names(&docker, &[]);
    let root = docker.env.daemon.paths.root.clone();
    let mounts_before = mounts_under(&root);
    for i in 0..50 {
        let name = format!("{}-{i}", unique("cyc"));
        let tmp = format!("{tmpvol}:/t");
        let vol = format!("{named}:/n");
        if i % 5 == 0 {
            // Some run (mounting the tmpfs volume), the rest are only created.
            docker.ok(&[
                "run",
                "--name",
                &name,
                "-v",
                &tmp,
                "-v",
                &vol,
                "-v",
                "/anon",
                "--mount",
                "type=tmpfs,dst=/scratch",
                &image,
                "sh",
                "-c",
                "echo $0 > /t/x && cat /t/x > /n/last",
                &name,
            ]);
        } else {
            docker.ok(&[
                "create", "--name", &name, "-v", &tmp, "-v", &vol, "-v", "/anon", &image, "true",
            ]);
        }
        docker.ok(&["rm", "-v", &name]);
    }
    // A create that fails half-way gives back what it made.
    let failing = unique("failing");
    let made = unique("madeby");
    let made_too = unique("madeby");
    let err = docker.fails(&[
        "create",
        "--name",
        &failing,
        "-v",
        &format!("{made}:/made"),
        "-v",
        "/anon2",
        "--mount",
        &format!(
            "type=volume,src={made_too},dst=/bad,volume-opt=type=wharfnofs,volume-opt=device=none"
        ),
        &image,
        "true",
    ]);
    assert!(err.contains("failed to mount local volume"), "{err}");
    assert_eq!(volume_names(&docker, &[]), volumes_before);
    assert_eq!(mounts_under(&root), mounts_before);
    assert!(mounts_under(&volumes_dir(&docker)).is_empty());
    assert_eq!(docker.ok(&["ps", "-aq"]), "");
    let mut dirs: BTreeSet<String> = support::entries(&volumes_dir(&docker))
        .into_iter()
        .collect();
    dirs.retain(|d| !volumes_before.contains(d));
    assert!(dirs.is_empty(), "volume directories left: {dirs:?}");
    assert!(docker
        .ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{named}:/n"),
            &image,
            "cat",
            "/n/last"
        ])
        .starts_with("cyc-"),);
    docker.ok(&["volume", "rm", &named, &tmpvol]);
}

/// Restarts the daemon so that it kills itself at `point` (src/crash_point.rs), runs
/// `docker args` (which fails: the daemon dies), and starts it again unarmed.
async fn crash_during(docker: &mut DockerEnv, point: &str, args: &[&str]) {
    assert!(docker.env.daemon.stop().success(), "wharfd stopped cleanly");
    docker.env.daemon.env = vec![("WHARF_TEST_CRASH_AT".to_string(), point.to_string())];
    docker.env.daemon.restart().await;
    let run = docker.run(args);
    assert_ne!(
        run.status, 0,
        "docker {args:?} succeeded though wharfd died at {point}"
    );
    let status = docker.env.daemon.wait_exited();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(nix::libc::SIGKILL),
        "wharfd did not die at {point}: {status}"
    );
    docker.env.daemon.env.clear();
    docker.env.daemon.restart().await;
}

#[tokio::test]
async fn kill_9_in_the_middle_gives_back_what_was_made() {
    let mut docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let kept = unique("kept");
    docker.ok(&["volume", "create", &kept]);
    let before = snapshot(&docker);

    // A container create cut after its volumes were made: the restart removes the new
    // named and anonymous ones, keeps the one that was there.
    let fresh = unique("fresh");
    crash_during(
        &mut docker,
        "create.after_volumes",
        &[
            "create",
            "-v",
            &format!("{fresh}:/f"),
            "-v",
            &format!("{kept}:/k"),
            "-v",
            "/anon",
            &image,
            "true",
        ],
    )
    .await;
    assert_eq!(snapshot(&docker), before);

    // A create cut after its pod was made, before its container: the restart removes
    // the pod (its record, lease and netns) and the container's directory.
    let root = docker.env.daemon.paths.root.clone();
    let pods_before = support::net::stored_ids(&root, "pod");
    let leases_before = support::net::stored_ids(&root, "lease");
    let docker_dirs = || -> BTreeSet<String> {
        std::fs::read_dir(root.join("docker/containers"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let dirs_before = docker_dirs();
    crash_during(
        &mut docker,
        "docker.create.after_pod",
        &["create", "--name", &unique("cut"), &image, "true"],
    )
    .await;
    wait_for("the cut create's pod to go", || {
        support::net::stored_ids(&root, "pod") == pods_before
    })
    .await;
    assert_eq!(support::net::stored_ids(&root, "lease"), leases_before);
    assert_eq!(docker_dirs(), dirs_before);
    assert_eq!(snapshot(&docker), before);

    // A volume create cut before its record: the directory is swept at the restart.
    let half = unique("half");
    crash_during(
        &mut docker,
        "volume.create.before_record",
        &["volume", "create", &half],
    )
    .await;
    assert_eq!(snapshot(&docker), before);

    // A removal cut after its record went: the data is swept too.
    crash_during(
        &mut docker,
        "volume.remove.after_record",
        &["volume", "rm", &kept],
    )
    .await;
    assert!(!volume_names(&docker, &[]).contains(&kept));
    assert!(!volumes_dir(&docker).join(&kept).exists());
}

/// `docker cp` reaches a container's volumes and bind mounts where the container sees
/// them, running or stopped (dockerd mounts them for the copy): a file copied in lands
/// in the volume, not in the read-write layer underneath; a read-only mount refuses it;
/// a copy out reads the volume.
#[tokio::test]
async fn docker_cp_into_and_out_of_volume_mount_points() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let volume = unique("cpvol");
    let host = tempfile::Builder::new()
        .prefix("wharf-vol-cp-")
        .tempdir()
        .expect("tempdir");
    std::fs::write(host.path().join("ro-file"), "read-only bind\n").unwrap();
    let rw_dir = tempfile::Builder::new()
        .prefix("wharf-vol-cp-rw-")
        .tempdir()
        .expect("tempdir");
    let source = tempfile::Builder::new()
        .prefix("wharf-vol-cp-src-")
        .tempdir()
        .expect("tempdir");
    std::fs::write(source.path().join("into-volume"), "in the volume\n").unwrap();
    std::fs::write(source.path().join("into-bind"), "in the bind\n").unwrap();

    let name = unique("cp");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-v",
        &format!("{volume}:/data"),
        "-v",
        &format!("{}:/ro:ro", host.path().display()),
        "-v",
        &format!("{}:/rw", rw_dir.path().display()),
        &image,
        "sleep",
        "600",
    ]);
    let id = docker.ok(&["inspect", "-f", "{{.Id}}", &name]);
    let data = volumes_dir(&docker).join(&volume).join("_data");
    let upper = docker
        .env
        .daemon
        .paths
        .root
        .join("containers")
        .join(&id)
        .join("upper");

    // Running: into the named volume and the read-write bind.
    let file = |n: &str| source.path().join(n).display().to_string();
    docker.ok(&["cp", &file("into-volume"), &format!("{name}:/data/")]);
    docker.ok(&["cp", &file("into-bind"), &format!("{name}:/rw/copied")]);
    assert_eq!(
        std::fs::read_to_string(data.join("into-volume")).expect("the file is in the volume"),
        "in the volume\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw_dir.path().join("copied")).expect("the file is in the bind"),
        "in the bind\n"
    );
    assert!(
        !upper.join("data/into-volume").exists() && !upper.join("rw/copied").exists(),
        "nothing may land in the read-write layer under a mount"
    );
    assert_eq!(
        docker.ok(&["exec", &name, "cat", "/data/into-volume", "/rw/copied"]),
        "in the volume\nin the bind"
    );
    // Out of a read-only bind, and into it refused.
    let out = tempfile::Builder::new()
        .prefix("wharf-vol-cp-out-")
        .tempdir()
        .expect("tempdir");
    docker.ok(&[
        "cp",
        &format!("{name}:/ro/ro-file"),
        &out.path().display().to_string(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("ro-file")).unwrap(),
        "read-only bind\n"
    );
    let err = docker.fails(&["cp", &file("into-bind"), &format!("{name}:/ro/")]);
    assert!(err.to_lowercase().contains("read-only"), "{err}");
    assert!(!host.path().join("into-bind").exists());

    // Stopped: the volume still takes the copy, and a copy out reads it.
    docker.ok(&["stop", "-t", "0", &name]);
    std::fs::write(source.path().join("while-stopped"), "stopped\n").unwrap();
    docker.ok(&["cp", &file("while-stopped"), &format!("{name}:/data/")]);
    assert_eq!(
        std::fs::read_to_string(data.join("while-stopped")).expect("the file is in the volume"),
        "stopped\n"
    );
    assert!(!upper.join("data/while-stopped").exists());
    std::fs::write(data.join("from-host"), "host wrote it\n").unwrap();
    docker.ok(&[
        "cp",
        &format!("{name}:/data/from-host"),
        &out.path().display().to_string(),
    ]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("from-host")).unwrap(),
        "host wrote it\n"
    );
    // The copy's mounts were its own: none shows in the daemon's namespace.
    let leaked: Vec<String> = mounts_under(&docker.env.daemon.paths.root)
        .into_iter()
        .filter(|m| ["/data", "/ro", "/rw"].iter().any(|d| m.ends_with(d)))
        .collect();
    assert_eq!(leaked, Vec::<String>::new());
    docker.ok(&["rm", "-f", &name]);
    docker.ok(&["volume", "rm", &volume]);
}
