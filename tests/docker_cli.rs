//! The Docker Engine API with the real `docker` CLI (issue 18): system calls, pulls,
//! detached containers with their logs, inspect, stop, wait, remove, image tags and
//! removal, dockerd's error messages, and the separation of the Docker and CRI object
//! namespaces.

mod support;

use k8s_cri::v1 as cri;
use support::docker::DockerEnv;
use support::pods::unique;

#[tokio::test]
async fn version_info_and_api_versions() {
    let docker = DockerEnv::start().await;
    assert_eq!(
        docker.ok(&["version", "--format", "{{.Server.APIVersion}}"]),
        "1.41"
    );
    let info = docker.ok(&[
        "info",
        "--format",
        "{{.Containers}} {{.CgroupDriver}} {{.OSType}} {{.Driver}}",
    ]);
    assert_eq!(info, "0 cgroupfs linux overlay2");

    let (status, head, body) = docker.http("GET", "/_ping", None);
    assert_eq!((status, body.as_str()), (200, "OK"));
    let head = head.to_ascii_lowercase();
    assert!(head.contains("api-version: 1.41"), "{head}");
    assert!(head.contains("ostype: linux"), "{head}");
    let (status, _, body) = docker.http("GET", "/v1.24/version", None);
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = docker.http("GET", "/v1.99/version", None);
    assert_eq!(status, 400);
    assert!(
        body.contains("client version 1.99 is too new. Maximum supported API version is 1.41"),
        "{body}"
    );
    let (status, _, body) = docker.http("GET", "/v1.12/version", None);
    assert_eq!(status, 400);
    assert!(body.contains("is too old"), "{body}");
    let (status, _, body) = docker.http("GET", "/v1.41/nothing/here", None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"message\""), "{body}");
}

#[tokio::test]
async fn pull_run_detached_logs_inspect_stop_remove() {
    let mut docker = DockerEnv::start().await;
    let image = docker.image.clone();
    let pulled = docker.ok(&["pull", &image]);
    assert!(pulled.contains("Downloaded newer image"), "{pulled}");
    let again = docker.ok(&["pull", &image]);
    assert!(again.contains("Image is up to date"), "{again}");
    let listed = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(listed.lines().any(|l| l == image), "{listed}");

    let name = unique("web");
    let id = docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-e",
        "GREETING=hello",
        "--label",
        "app=web",
        &image,
        "sh",
        "-c",
        // stderr first, and a pause: the monitor reads the two pipes apart, so lines
        // written at once may reach the log in either order.
        "echo oops >&2; sleep 0.3; echo $GREETING; hostname; exec sleep 600",
    ]);
    assert_eq!(id.len(), 64, "{id}");
    let ps = docker.ok(&["ps", "--format", "{{.ID}} {{.Names}} {{.Status}}"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&id[..12]) && l.contains(&name) && l.contains("Up")),
        "{ps}"
    );
    let by_label = docker.ok(&["ps", "-q", "--filter", "label=app=web"]);
    assert_eq!(by_label, &id[..12]);
    let by_name = docker.ok(&["ps", "-q", "--filter", &format!("name=^/{name}$")]);
    assert_eq!(by_name, &id[..12]);

    // The log has both streams, demultiplexed by the CLI; the hostname is the short ID.
    let mut logs = docker.run(&["logs", &name]);
    for _ in 0..50 {
        if logs.stdout.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        logs = docker.run(&["logs", &name]);
    }
    assert_eq!(logs.stdout, format!("hello\n{}\n", &id[..12]));
    assert_eq!(logs.stderr, "oops\n");
    let tail = docker.ok(&["logs", "--tail", "1", &name]);
    assert_eq!(tail, &id[..12]);

    let state = docker.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.Running}} {{.Name}} {{.Config.Image}} {{index .Config.Labels \"app\"}}",
        &id[..12],
    ]);
    assert_eq!(state, format!("running true /{name} {image} web"));
    let pid = docker.ok(&["inspect", "-f", "{{.State.Pid}}", &name]);
    assert!(pid.parse::<i32>().unwrap() > 0, "{pid}");

    // The CRI sees none of it, and docker sees no CRI container.
    let cri_containers = docker
        .env
        .list_containers(cri::ContainerFilter::default())
        .await;
    assert!(cri_containers.is_empty(), "{cri_containers:?}");
    let pod = docker.env.pod_config("cri-pod");
    let pod_id = docker.env.run_pod(&pod).await;
    let config = docker.env.container_config("sleeper", &["sleep", "600"]);
    let cri_id = docker.env.run(&pod_id, &pod, &config).await;
    let all = docker.ok(&["ps", "-a", "-q", "--no-trunc"]);
    assert_eq!(all, id, "docker ps lists only Docker's containers");

    let removal = docker.fails(&["rm", &name]);
    assert!(
        removal.contains("You cannot remove a running container"),
        "{removal}"
    );
    docker.ok(&["stop", "-t", "1", &name]);
    let state = docker.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        &name,
    ]);
    assert_eq!(state, "exited 137");
    docker.ok(&["rm", &name]);
    let gone = docker.fails(&["inspect", &name]);
    assert!(
        gone.contains("No such object") || gone.contains("No such container"),
        "{gone}"
    );
    assert!(docker.ok(&["ps", "-a", "-q"]).is_empty());
    assert!(
        !docker
            .env
            .daemon
            .paths
            .root
            .join("docker/containers")
            .join(&id)
            .exists(),
        "the container's files are removed with it"
    );

    // The CRI container is untouched by all of this.
    assert_eq!(
        docker.env.status(&cri_id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    docker.env.remove_pod(&pod_id).await;
}

#[tokio::test]
async fn create_start_wait_and_exit_codes() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("job");
    let id = docker.ok(&[
        "create",
        "--name",
        &name,
        &image,
        "sh",
        "-c",
        "sleep 1; exit 3",
    ]);
    let state = docker.ok(&["inspect", "-f", "{{.State.Status}}", &id]);
    assert_eq!(state, "created");
    let listed = docker.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert_eq!(listed, format!("{name} Created"));
    docker.ok(&["start", &name]);
    assert_eq!(docker.ok(&["wait", &name]), "3");
    let state = docker.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}} {{.State.Running}}",
        &name,
    ]);
    assert_eq!(state, "exited 3 false");
    let status = docker.ok(&[
        "ps",
        "-a",
        "--filter",
        "exited=3",
        "--format",
        "{{.Status}}",
    ]);
    assert!(status.starts_with("Exited (3)"), "{status}");
    // The name with dockerd's leading slash: the CLI's path is /containers//NAME/json.
    let named = docker.ok(&["inspect", "-f", "{{.Name}}", &format!("/{name}")]);
    assert_eq!(named, format!("/{name}"));
    docker.ok(&["rm", &id[..8]]);

    // A command the runtime cannot execute: dockerd's words, from which the CLI makes
    // 127 (missing) and 126 (not executable); --rm leaves nothing.
    let run = docker.run(&["run", "--rm", &image, "no-such-command"]);
    assert_eq!(run.status, 127, "{run:?}");
    assert!(
        run.stderr
            .contains("exec: \"no-such-command\": executable file not found in $PATH"),
        "{run:?}"
    );
    let run = docker.run(&["run", "--rm", &image, "/no/such"]);
    assert_eq!(run.status, 127, "{run:?}");
    assert!(run.stderr.contains("no such file or directory"), "{run:?}");
    let run = docker.run(&["run", "--rm", &image, "/etc"]);
    assert_eq!(run.status, 126, "{run:?}");
    assert!(run.stderr.contains("permission denied"), "{run:?}");
    assert_eq!(docker.ok(&["ps", "-aq"]), "");
}

#[tokio::test]
async fn dockerd_errors_and_refusals() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();

    let err = docker.fails(&["rm", "no-such-container"]);
    assert!(
        err.contains("No such container: no-such-container"),
        "{err}"
    );
    let err = docker.fails(&["stop", "no-such-container"]);
    assert!(err.contains("No such container"), "{err}");

    let name = unique("dup");
    docker.ok(&["create", "--name", &name, &image, "true"]);
    let err = docker.fails(&["create", "--name", &name, &image, "true"]);
    assert!(
        err.contains(&format!(
            "Conflict. The container name \"/{name}\" is already in use"
        )),
        "{err}"
    );
    let err = docker.fails(&["create", "--name", "-bad", &image, "true"]);
    assert!(err.contains("Invalid container name"), "{err}");
    let err = docker.fails(&["create", "--log-driver", "syslog", &image, "true"]);
    assert!(err.contains("no log driver named 'syslog'"), "{err}");
    // (Named volumes work now: tests/docker_volumes.rs; a bad mode is refused.)
    let err = docker.fails(&["create", "-v", "named:/data:bogus", &image, "true"]);
    assert!(err.contains("invalid mode: bogus"), "{err}");
    let err = docker.fails(&["create", "--security-opt", "bogus", &image, "true"]);
    assert!(err.contains("--security-opt"), "{err}");
    // An image that is not in the registry: the CLI pulls on the 404 and reports why.
    let missing = format!("{}/test/absent:1", docker.env.registry.host());
    let err = docker.fails(&["create", &missing, "true"]);
    assert!(
        err.contains("Unable to find image") || err.contains("No such image"),
        "{err}"
    );
    // Nothing of the refused creates is left.
    let all = docker.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(all, name);

    // Malformed JSON: a 400 that says so, and nothing made.
    let (status, _, body) = docker.http("POST", "/v1.41/containers/create", Some("{nope"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid JSON"), "{body}");
    let (status, _, body) =
        docker.http("POST", "/v1.41/containers/create", Some(r#"{"Image": 5}"#));
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = docker.http("POST", "/v1.41/containers/no-such/start", None);
    assert_eq!(status, 404);
    // Names with slashes reach the lookup (dockerd routes /containers/{name:.*}/...).
    let err = docker.fails(&["stop", "no/such"]);
    assert!(err.contains("No such container: no/such"), "{err}");
    docker.ok(&["rm", &format!("/{name}")]);
}

#[tokio::test]
async fn image_tag_and_remove() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    docker.ok(&["tag", &image, "wharf-test/retagged:v1"]);
    let tags = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        tags.lines().any(|t| t == "wharf-test/retagged:v1"),
        "{tags}"
    );
    let inspect = docker.ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Os}} {{len .RootFS.Layers}}",
        "wharf-test/retagged:v1",
    ]);
    assert!(inspect.starts_with("linux "), "{inspect}");

    let name = unique("user");
    docker.ok(&["create", "--name", &name, "wharf-test/retagged:v1", "true"]);
    // Untagging one of two tags is allowed while a container uses the image.
    let untagged = docker.ok(&["rmi", "wharf-test/retagged:v1"]);
    assert!(
        untagged.contains("Untagged: wharf-test/retagged:v1"),
        "{untagged}"
    );
    let err = docker.fails(&["rmi", &image]);
    assert!(
        err.contains("image is being used by stopped container"),
        "{err}"
    );
    docker.ok(&["rm", &name]);
    let removed = docker.ok(&["rmi", &image]);
    assert!(removed.contains("Deleted: sha256:"), "{removed}");
    assert!(docker.ok(&["images", "-q"]).is_empty());
    let err = docker.fails(&["rmi", "nothing-here:1"]);
    assert!(err.contains("No such image"), "{err}");
}

/// Polls `docker ps -a` until no container is named `name` (10 s at most).
async fn wait_gone(docker: &DockerEnv, name: &str) {
    for _ in 0..100 {
        let all = docker.ok(&["ps", "-a", "--format", "{{.Names}}"]);
        if !all.lines().any(|l| l == name) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("container {name} was not removed");
}

#[tokio::test]
async fn start_again_restart_events_and_auto_remove() {
    let mut docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let since = chrono::Utc::now().timestamp().to_string();

    let name = unique("again");
    let id = docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        &image,
        "sh",
        "-c",
        "echo run; echo data >> /kept; exec sleep 600",
    ]);
    let first_start = docker.ok(&["inspect", "-f", "{{.State.StartedAt}}", &name]);
    docker.ok(&["restart", "-t", "0", &name]);
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Status}}", &name]),
        "running"
    );
    assert_ne!(
        docker.ok(&["inspect", "-f", "{{.State.StartedAt}}", &name]),
        first_start
    );
    docker.ok(&["stop", "-t", "0", &name]);
    docker.ok(&["start", &name]);
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Status}}", &name]),
        "running"
    );
    // One log and one writable layer across the three runs.
    for _ in 0..50 {
        if docker.ok(&["logs", &name]).lines().count() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(docker.ok(&["logs", &name]), "run\nrun\nrun");
    let pid = docker.ok(&["inspect", "-f", "{{.State.Pid}}", &name]);
    let kept_path = format!("/proc/{pid}/root/kept");
    let mut kept = String::new();
    for _ in 0..50 {
        kept = std::fs::read_to_string(&kept_path).unwrap_or_default();
        if kept.lines().count() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(kept, "data\ndata\ndata\n");
    docker.ok(&["rm", "-f", &name]);

    // The events of all that, replayed with since/until, filtered by container.
    let until = (chrono::Utc::now().timestamp() + 1).to_string();
    let actions = docker.ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &format!("container={name}"),
        "--format",
        "{{.Action}}",
    ]);
    let actions: Vec<&str> = actions.lines().collect();
    assert_eq!(actions.first(), Some(&"create"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"destroy"), "{actions:?}");
    assert_eq!(
        actions.iter().filter(|a| **a == "start").count(),
        3,
        "{actions:?}"
    );
    assert!(
        actions.contains(&"die") && actions.contains(&"stop"),
        "{actions:?}"
    );
    let ids = docker.ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "event=destroy",
        "--format",
        "{{.Actor.ID}}",
    ]);
    assert_eq!(ids, id);

    // --rm: the daemon removes the container when it exits, files included.
    let temp = unique("temp");
    let temp_id = docker.ok(&["run", "-d", "--rm", "--name", &temp, &image, "true"]);
    wait_gone(&docker, &temp).await;
    let dir = docker
        .env
        .daemon
        .paths
        .root
        .join("docker/containers")
        .join(&temp_id);
    for _ in 0..50 {
        if !dir.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!dir.exists(), "{} is left", dir.display());

    // ... also when it exits while wharfd is down (kill -9): removed at the restart.
    let late = unique("late");
    docker.ok(&["run", "-d", "--rm", "--name", &late, &image, "sleep", "1"]);
    docker.env.daemon.kill9();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    docker.env.daemon.restart().await;
    wait_gone(&docker, &late).await;
}

#[tokio::test]
async fn rename_and_top() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let first = unique("first");
    let second = unique("second");
    let other = unique("other");
    let id = docker.ok(&[
        "run",
        "-d",
        "--name",
        &first,
        &image,
        "sh",
        "-c",
        "sleep 601 & exec sleep 600",
    ]);
    docker.ok(&["create", "--name", &other, &image, "true"]);
    docker.ok(&["rename", &first, &second]);
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.Name}}", &id]),
        format!("/{second}")
    );
    let err = docker.fails(&["inspect", &first]);
    assert!(err.contains("No such"), "{err}");
    // The old name is free again; a taken one is refused with dockerd's words.
    let err = docker.fails(&["rename", &second, &other]);
    assert!(err.contains("is already in use"), "{err}");
    docker.ok(&["rename", &other, &first]);

    let top = docker.ok(&["top", &second]);
    let mut lines = top.lines();
    let header = lines.next().unwrap();
    assert!(header.contains("PID") && header.contains("CMD"), "{top}");
    let commands: Vec<&str> = lines.collect();
    assert_eq!(commands.len(), 2, "{top}");
    assert!(commands.iter().any(|l| l.ends_with("sleep 600")), "{top}");
    assert!(commands.iter().any(|l| l.ends_with("sleep 601")), "{top}");
    let custom = docker.ok(&["top", &second, "-o", "pid,comm"]);
    assert!(custom.starts_with("PID"), "{custom}");
    docker.ok(&["rm", "-f", &second, &first]);
    let err = docker.fails(&["top", "no-such-container"]);
    assert!(err.contains("No such container"), "{err}");
}

/// A tar whose one entry is named `name` (written raw: the tar crate's builder refuses
/// `..`, which is the point of the test).
fn tar_with_entry(name: &str, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

#[tokio::test]
async fn docker_cp_both_ways_and_never_outside_the_container() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("cp");
    let id = docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        &image,
        "sh",
        "-c",
        "echo inside > /made; mkdir /dir; echo a > /dir/a; ln -s / /hostroot; exec sleep 600",
    ]);
    let pid = docker.ok(&["inspect", "-f", "{{.State.Pid}}", &name]);
    let in_container = |p: &str| format!("/proc/{pid}/root{p}");
    for _ in 0..50 {
        if std::path::Path::new(&in_container("/hostroot")).exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().display().to_string();

    // Out of the container: a file, a directory.
    docker.ok(&["cp", &format!("{name}:/made"), &out_dir]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("made")).unwrap(),
        "inside\n"
    );
    docker.ok(&["cp", &format!("{name}:/dir"), &out_dir]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("dir/a")).unwrap(),
        "a\n"
    );
    let err = docker.fails(&["cp", &format!("{name}:/nothing"), &out_dir]);
    assert!(err.contains("Could not find the file /nothing"), "{err}");

    // Into it.
    let local = out.path().join("local.txt");
    std::fs::write(&local, "from host\n").unwrap();
    docker.ok(&["cp", &local.display().to_string(), &format!("{name}:/dir/")]);
    assert_eq!(
        std::fs::read_to_string(in_container("/dir/local.txt")).unwrap(),
        "from host\n"
    );

    // A symlink to / inside the container is the container's root, never the host's.
    let marker = format!("wharf-cp-escape-{}", unique("m"));
    let host_marker = std::path::Path::new("/tmp").join(&marker);
    std::fs::write(&host_marker, "host secret").unwrap();
    let err = docker.fails(&["cp", &format!("{name}:/hostroot/tmp/{marker}"), &out_dir]);
    assert!(err.contains("Could not find the file"), "{err}");
    assert!(!out.path().join(&marker).exists());
    let probe = out.path().join(format!("{marker}-in"));
    std::fs::write(&probe, "probe").unwrap();
    docker.ok(&[
        "cp",
        &probe.display().to_string(),
        &format!("{name}:/hostroot/tmp/"),
    ]);
    assert!(std::path::Path::new(&in_container(&format!("/tmp/{marker}-in"))).exists());
    assert!(!std::path::Path::new(&format!("/tmp/{marker}-in")).exists());

    // A tar entry climbing out with `..` is refused (400) and writes nothing.
    let escape = format!("../../../../../../tmp/{marker}-put");
    let (status, _, body) = support::docker::raw_http_bytes(
        &docker.socket(),
        "PUT",
        &format!("/v1.41/containers/{id}/archive?path=/dir"),
        "application/x-tar",
        &tar_with_entry(&escape, b"pwned"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(!std::path::Path::new(&format!("/tmp/{marker}-put")).exists());
    // Extracting into a file is dockerd's 400; into nothing, its 404.
    let (status, _, body) = support::docker::raw_http_bytes(
        &docker.socket(),
        "PUT",
        &format!("/v1.41/containers/{id}/archive?path=/made"),
        "application/x-tar",
        &tar_with_entry("x", b"x"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a directory"), "{body}");
    let (status, _, _) = support::docker::raw_http_bytes(
        &docker.socket(),
        "PUT",
        &format!("/v1.41/containers/{id}/archive?path=/absent"),
        "application/x-tar",
        &tar_with_entry("x", b"x"),
    );
    assert_eq!(status, 404);
    let _ = std::fs::remove_file(&host_marker);
    docker.ok(&["rm", "-f", &name]);
}

/// Polls `docker inspect -f format name` until `done` holds (15 s at most).
async fn wait_inspect(
    docker: &DockerEnv,
    name: &str,
    format: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut last = String::new();
    for _ in 0..150 {
        last = docker.ok(&["inspect", "-f", format, name]);
        if done(&last) {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{name}: {format} is still {last:?}");
}

#[tokio::test]
async fn restart_policies_also_across_a_kill_9() {
    let mut docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();

    // on-failure:2 — two restarts, then it stays exited.
    let failing = unique("failing");
    docker.ok(&[
        "run",
        "-d",
        "--restart",
        "on-failure:2",
        "--name",
        &failing,
        &image,
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    wait_inspect(
        &docker,
        &failing,
        "{{.RestartCount}} {{.State.Status}}",
        |s| s == "2 exited",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        docker.ok(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.ExitCode}}",
            &failing
        ]),
        "2 1"
    );
    assert_eq!(docker.ok(&["logs", &failing]), "run\nrun\nrun");

    // always — restarted after each exit, but not after `docker stop`.
    let looping = unique("always");
    docker.ok(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        &looping,
        &image,
        "sh",
        "-c",
        "sleep 0.3",
    ]);
    wait_inspect(&docker, &looping, "{{.RestartCount}}", |s| {
        s.parse::<u32>().unwrap() >= 2
    })
    .await;
    wait_inspect(&docker, &looping, "{{.State.Status}}", |s| s == "running").await;
    docker.ok(&["stop", "-t", "0", &looping]);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Status}}", &looping]),
        "exited"
    );
    docker.ok(&["start", &looping]);
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.RestartCount}}", &looping]),
        "0"
    );
    docker.ok(&["rm", "-f", &looping, &failing]);

    // An exit while wharfd is down gets its restart when wharfd is back.
    let survivor = unique("survivor");
    docker.ok(&[
        "run",
        "-d",
        "--restart",
        "on-failure",
        "--name",
        &survivor,
        &image,
        "sh",
        "-c",
        "test -f /done && exec sleep 600; touch /done; sleep 1; exit 1",
    ]);
    docker.env.daemon.kill9();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    docker.env.daemon.restart().await;
    wait_inspect(
        &docker,
        &survivor,
        "{{.RestartCount}} {{.State.Status}}",
        |s| s == "1 running",
    )
    .await;
    docker.ok(&["rm", "-f", &survivor]);
}

#[tokio::test]
async fn stats_of_a_busy_container() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("busy");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-m",
        "64m",
        "--pids-limit",
        "20",
        &image,
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    let line = docker.ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.CPUPerc}}|{{.MemUsage}}|{{.PIDs}}",
        &name,
    ]);
    let fields: Vec<&str> = line.split('|').collect();
    let cpu: f64 = fields[0].trim_end_matches('%').parse().unwrap();
    assert!(cpu > 20.0, "a busy loop uses a CPU: {line}");
    assert!(fields[1].ends_with("/ 64MiB"), "{line}");
    assert_eq!(fields[2], "1", "{line}");
    let (status, _, body) = docker.http(
        "GET",
        &format!("/v1.41/containers/{name}/stats?stream=false&one-shot=true"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(json["pids_stats"]["limit"], 20);
    assert!(
        json["cpu_stats"]["cpu_usage"]["total_usage"]
            .as_u64()
            .unwrap()
            > 0
    );
    docker.ok(&["rm", "-f", &name]);
}

#[tokio::test]
async fn update_resources_and_restart_policy() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("upd");
    docker.ok(&[
        "run", "-d", "--name", &name, "-m", "64m", &image, "sleep", "600",
    ]);
    docker.ok(&[
        "update",
        "--memory",
        "48m",
        "--memory-swap",
        "96m",
        "--pids-limit",
        "30",
        "--restart",
        "on-failure:3",
        &name,
    ]);
    let host = docker.ok(&[
        "inspect", "-f",
        "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}",
        &name,
    ]);
    assert_eq!(host, format!("{} 30 on-failure 3", 48 << 20));
    // The cgroup has the new limit.
    let pid = docker.ok(&["inspect", "-f", "{{.State.Pid}}", &name]);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroup
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()));
    let limit = match memory {
        Some(path) => {
            std::fs::read_to_string(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
        }
        None => std::fs::read_to_string(format!(
            "/sys/fs/cgroup{}/memory.max",
            cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap()
        )),
    }
    .unwrap();
    assert_eq!(limit.trim(), (48u64 << 20).to_string());
    let err = docker.fails(&["update", "--restart", "sometimes", &name]);
    assert!(
        err.contains("invalid restart policy") || err.contains("sometimes"),
        "{err}"
    );
    docker.ok(&["rm", "-f", &name]);
}

#[tokio::test]
async fn run_attached_with_stdin_and_a_tty() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();

    // Output of both streams, the exit code, and --rm by the daemon.
    let name = unique("attached");
    let run = docker.run(&[
        "run",
        "--rm",
        "--name",
        &name,
        &image,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(
        (run.status, run.stdout.as_str(), run.stderr.as_str()),
        (5, "out\n", "err\n")
    );
    wait_gone(&docker, &name).await;

    // -i: the CLI's stdin reaches the container, and its end is the container's EOF.
    let socket = docker.socket();
    let output = std::process::Command::new(support::docker::docker_cli())
        .args([
            "run",
            "-i",
            "--rm",
            &image,
            "sh",
            "-c",
            "while read l; do echo got:$l; done; echo eof",
        ])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", docker.config_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"one\ntwo\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "got:one\ngot:two\neof\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // -it under a pseudo-terminal (script(1)): the container gets a TTY.
    let command = format!(
        "{} run -it --rm {image} sh -c 'test -t 0 && echo tty:yes; tty; exit 3'",
        support::docker::docker_cli()
    );
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", docker.config_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("tty:yes"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert_eq!(output.status.code(), Some(3), "{text}");

    // docker attach to a running container sees what it writes next.
    let late = unique("late");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &late,
        &image,
        "sh",
        "-c",
        "sleep 1; echo later; sleep 1",
    ]);
    let attached = docker.ok(&["attach", "--no-stdin", &late]);
    assert_eq!(attached, "later");
    // docker start -a of an exited container: attached before the start, it shows the
    // new run (not the old log) and exits with its code.
    docker.ok(&["wait", &late]);
    let run = docker.run(&["start", "-a", &late]);
    assert_eq!(run.stdout, "later\n", "{run:?}");
    assert_eq!(run.status, 0, "{run:?}");
    let again = unique("again");
    let first = docker.run(&[
        "run",
        "--name",
        &again,
        &image,
        "sh",
        "-c",
        "echo run-$RANDOM; exit 5",
    ]);
    assert_eq!(first.status, 5, "{first:?}");
    let run = docker.run(&["start", "-a", &again]);
    assert_eq!(run.status, 5, "{run:?}");
    assert_eq!(run.stdout.matches("run-").count(), 1, "{run:?}");
    docker.ok(&["rm", "-f", &late, &again]);
}

/// `docker exec`: output of both streams and the exit code, -e/-u/-w, -i with stdin to
/// its EOF, -it under a pseudo-terminal, -d (detached, its exit in inspect), a missing
/// executable (126, the runtime's words), and exec into a stopped container (refused).
#[tokio::test]
async fn docker_exec() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("exec");
    docker.ok(&["run", "-d", "--name", &name, &image, "sleep", "600"]);

    let run = docker.run(&["exec", &name, "sh", "-c", "echo out; echo err >&2; exit 4"]);
    assert_eq!(
        (run.status, run.stdout.as_str(), run.stderr.as_str()),
        (4, "out\n", "err\n")
    );
    let out = docker.ok(&[
        "exec",
        "-e",
        "GREETING=hi",
        "-u",
        "65534:65534",
        "-w",
        "/tmp",
        &name,
        "sh",
        "-c",
        "echo $GREETING $(id -u):$(id -g) $(pwd)",
    ]);
    assert_eq!(out, "hi 65534:65534 /tmp");

    // -i: the CLI's stdin to its end.
    let socket = docker.socket();
    let output = std::process::Command::new(support::docker::docker_cli())
        .args(["exec", "-i", &name, "sh", "-c", "cat; echo end"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", docker.config_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"piped in\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "piped in\nend\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // -it under a pseudo-terminal: a TTY, and the exit code.
    let command = format!(
        "{} exec -it {name} sh -c 'test -t 0 && echo tty:yes; echo term:$TERM; exit 6'",
        support::docker::docker_cli()
    );
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .env("DOCKER_CONFIG", docker.config_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("tty:yes"), "{text}");
    assert!(text.contains("term:xterm"), "{text}");
    assert_eq!(output.status.code(), Some(6), "{text}");

    // -d: runs on without a client; its file appears, and it is still running.
    docker.ok(&[
        "exec",
        "-d",
        &name,
        "sh",
        "-c",
        "sleep 1; echo done > /tmp/detached",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let run = docker.run(&["exec", &name, "cat", "/tmp/detached"]);
        if run.status == 0 {
            assert_eq!(run.stdout, "done\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the detached exec never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let run = docker.run(&["exec", &name, "/no/such/binary"]);
    assert_eq!(run.status, 126, "{run:?}");
    // dockerd writes the runtime's message into the stream (stdout).
    assert!(run.stdout.contains("/no/such/binary"), "{run:?}");
    assert!(run.stdout.contains("OCI runtime exec failed"), "{run:?}");

    docker.ok(&["stop", "-t", "1", &name]);
    let stderr = docker.fails(&["exec", &name, "true"]);
    assert!(stderr.contains("is not running"), "{stderr}");
    docker.ok(&["rm", &name]);
}

/// `docker pause` / `unpause`: the processes freeze (a counter stops), ps and inspect
/// say paused, exec is refused while paused, events are sent; stop and kill work on a
/// paused container.
#[tokio::test]
async fn pause_and_unpause() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("pause");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        &image,
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done",
    ]);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    docker.ok(&["pause", &name]);
    let stderr = docker.fails(&["pause", &name]);
    assert!(stderr.contains("is already paused"), "{stderr}");
    assert_eq!(
        docker.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Paused}}",
            &name
        ]),
        "paused true"
    );
    let listed = docker.ok(&[
        "ps",
        "--filter",
        &format!("name={name}"),
        "--format",
        "{{.Status}}",
    ]);
    assert!(listed.ends_with("(Paused)"), "{listed}");
    let stderr = docker.fails(&["exec", &name, "true"]);
    assert!(stderr.contains("is paused"), "{stderr}");
    // Frozen: the counter does not move (read through the rootfs from the host).
    let id = docker.ok(&["inspect", "-f", "{{.Id}}", &name]);
    let count_file = docker
        .env
        .daemon
        .paths
        .state
        .join("containers")
        .join(&id)
        .join("rootfs/tmp/count");
    let before = std::fs::read_to_string(&count_file).unwrap_or_default();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(
        std::fs::read_to_string(&count_file).unwrap_or_default(),
        before
    );
    docker.ok(&["unpause", &name]);
    let stderr = docker.fails(&["unpause", &name]);
    assert!(stderr.contains("is not paused"), "{stderr}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&count_file).unwrap_or_default() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the counter never moved again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Stop and kill reach paused containers.
    docker.ok(&["pause", &name]);
    docker.ok(&["stop", "-t", "1", &name]);
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Status}}", &name]),
        "exited"
    );
    docker.ok(&["start", &name]);
    docker.ok(&["pause", &name]);
    docker.ok(&["kill", &name]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while docker.ok(&["inspect", "-f", "{{.State.Status}}", &name]) != "exited" {
        assert!(
            std::time::Instant::now() < deadline,
            "kill of a paused container"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    docker.ok(&["rm", &name]);
}

/// Health checks run by the daemon: starting, then healthy; a failing check makes it
/// unhealthy after its retries; ps shows it and filters on it; inspect has the log;
/// events say health_status; bad settings are refused with dockerd's words.
#[tokio::test]
async fn health_checks() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("health");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--health-cmd",
        "test -f /tmp/ok && echo fine",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        &image,
        "sh",
        "-c",
        "touch /tmp/ok; sleep 600",
    ]);
    let status =
        |docker: &DockerEnv| docker.ok(&["inspect", "-f", "{{.State.Health.Status}}", &name]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while status(&docker) != "healthy" {
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy: {}",
            status(&docker)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = docker.ok(&[
        "inspect",
        "-f",
        "{{range .State.Health.Log}}{{.ExitCode}}:{{.Output}}{{end}}",
        &name,
    ]);
    assert!(log.contains("0:fine"), "{log}");
    let listed = docker.ok(&[
        "ps",
        "--filter",
        "health=healthy",
        "--format",
        "{{.Names}} {{.Status}}",
    ]);
    assert!(
        listed.contains(&name) && listed.contains("(healthy)"),
        "{listed}"
    );
    // Break it: two failures make it unhealthy.
    docker.ok(&["exec", &name, "rm", "/tmp/ok"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while status(&docker) != "unhealthy" {
        assert!(
            std::time::Instant::now() < deadline,
            "never unhealthy: {}",
            status(&docker)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        docker
            .ok(&["inspect", "-f", "{{.State.Health.FailingStreak}}", &name])
            .parse::<u32>()
            .unwrap()
            >= 2
    );
    // `until` is in whole seconds: let this second pass.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let events = docker.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        "0s",
        "--filter",
        &format!("container={name}"),
        "--format",
        "{{.Action}}",
    ]);
    assert!(events.contains("health_status: healthy"), "{events}");
    assert!(events.contains("health_status: unhealthy"), "{events}");
    docker.ok(&["rm", "-f", &name]);

    let stderr = docker.fails(&[
        "run",
        "-d",
        "--health-cmd",
        "true",
        "--health-interval",
        "1us",
        &image,
        "true",
    ]);
    assert!(
        stderr.contains("Interval in Healthcheck cannot be less than 1ms"),
        "{stderr}"
    );
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate in `dir`
/// (openssl), as a dockerd `--tlsverify` setup has them.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (install the openssl package)");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={who}"),
            "-keyout",
            &format!("{who}-key.pem"),
            "-out",
            &format!("{who}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{who}.ext"),
            "-out",
            &format!("{who}.pem"),
        ]);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `[docker] hosts`: a plain TCP listener on loopback, and one with mutual TLS that
/// the CLI reaches with `--tlsverify` and its client certificate, and that refuses a
/// client without one; `[docker] group` gives the socket to a group; a non-loopback
/// host without mutual TLS is refused at start.
#[tokio::test]
async fn tcp_hosts_mutual_tls_and_group() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let (plain, secure) = (free_port(), free_port());
    let config =
        format!("[docker]\nhosts = [\"tcp://127.0.0.1:{plain}\", \"tcp://127.0.0.1:{secure}\"]\n");
    // Two listeners with one TLS setting would both be TLS: serve the plain one from
    // a daemon of its own.
    let docker = DockerEnv::start_with_config(&config).await;
    let version = |host: &str, extra: &[&str]| {
        std::process::Command::new(support::docker::docker_cli())
            .args(["-H", host])
            .args(extra)
            .args(["version", "--format", "{{.Server.APIVersion}}"])
            .env("DOCKER_CONFIG", docker.config_dir())
            .env_remove("DOCKER_HOST")
            .output()
            .expect("docker version")
    };
    let out = version(&format!("tcp://127.0.0.1:{plain}"), &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1.41",
        "{out:?}"
    );
    drop(docker);

    let dir = certs.path();
    let config = format!(
        "[docker]\nhosts = [\"tcp://127.0.0.1:{secure}\"]\ngroup = \"0\"\n\
         tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\n",
        dir.join("server.pem").display(),
        dir.join("server-key.pem").display(),
        dir.join("ca.pem").display()
    );
    let docker = DockerEnv::start_with_config(&config).await;
    let version = |host: &str, extra: &[&str]| {
        std::process::Command::new(support::docker::docker_cli())
            .args(["-H", host])
            .args(extra)
            .args(["version", "--format", "{{.Server.APIVersion}}"])
            .env("DOCKER_CONFIG", docker.config_dir())
            .env_remove("DOCKER_HOST")
            .output()
            .expect("docker version")
    };
    let host = format!("tcp://127.0.0.1:{secure}");
    let ca = dir.join("ca.pem").display().to_string();
    let cert = dir.join("client.pem").display().to_string();
    let key = dir.join("client-key.pem").display().to_string();
    let out = version(
        &host,
        &[
            "--tlsverify",
            "--tlscacert",
            &ca,
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1.41",
        "{out:?}"
    );
    // Without a client certificate: refused.
    let out = version(&host, &["--tlsverify", "--tlscacert", &ca]);
    assert!(!out.status.success(), "{out:?}");
    // The socket: root:<group> 0660.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(docker.socket()).expect("docker.sock");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
        (0, 0, 0o660)
    );
    drop(docker);

    // A host on every address without mutual TLS: wharfd refuses to start.
    let err = wharf::config::Config::from_toml(&format!(
        "[docker]\nhosts = [\"tcp://0.0.0.0:{plain}\"]\n"
    ))
    .expect("parses")
    .validate()
    .expect_err("refused");
    assert!(err.to_string().contains("docker.hosts"), "{err}");
    assert!(err.to_string().contains("mutual TLS"), "{err}");
}

/// A docker CLI command line under a pseudo-terminal (script(1)), its input piped in:
/// what a user types reaches the CLI's terminal.
fn spawn_in_pty(docker: &DockerEnv, command: &str) -> std::process::Child {
    std::process::Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .env(
            "DOCKER_HOST",
            format!("unix://{}", docker.socket().display()),
        )
        .env("DOCKER_CONFIG", docker.config_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script")
}

/// Types `keys` one by one, as a user does (each key its own read).
fn type_keys(child: &mut std::process::Child, keys: &[u8]) {
    use std::io::Write;
    let stdin = child.stdin.as_mut().expect("piped stdin");
    for key in keys {
        stdin.write_all(&[*key]).expect("type");
        stdin.flush().expect("flush");
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
}

/// Waits (10 s at most) for a CLI under `spawn_in_pty` to end; its exit status and
/// output.
fn ended(mut child: std::process::Child) -> (Option<i32>, String) {
    for _ in 0..100 {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            use std::io::Read;
            if let Some(mut stdout) = child.stdout.take() {
                let _ = stdout.read_to_string(&mut out);
            }
            return (status.code(), out);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("output");
    panic!(
        "the docker CLI did not end: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// An attach without `Upgrade: tcp` (curl's) is answered as dockerd answers it: 200
/// with the raw stream (stdcopy frames without a TTY) as the body, to the end of the
/// container's output.
#[tokio::test]
async fn attach_without_an_upgrade() {
    let docker = DockerEnv::start_pulled().await;
    let name = unique("plain-attach");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        &docker.image,
        "sh",
        "-c",
        "for i in 1 2 3; do echo line$i; echo err$i >&2; sleep 0.2; done",
    ]);
    let (status, head, body) = docker.http(
        "POST",
        &format!("/v1.41/containers/{name}/attach?logs=1&stream=1&stdout=1&stderr=0"),
        None,
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/vnd.docker.raw-stream"),
        "{head}"
    );
    let framed: String = ["line1\n", "line2\n", "line3\n"]
        .iter()
        .map(|line| format!("\u{1}\0\0\0\0\0\0\u{6}{line}"))
        .collect();
    assert_eq!(body, framed, "stdout only, framed, all of it");
    docker.ok(&["rm", &name]);
}

/// `docker run -it` and `docker attach` leave with the detach keys (ctrl-p ctrl-q, or
/// `--detach-keys`) and the container runs on with its terminal's input still open
/// (StdinOnce closes no TTY's stdin, as dockerd); a key that starts the sequence but is
/// not followed by the rest reaches the container; malformed keys are dockerd's 400.
#[tokio::test]
async fn attach_and_detach_keys() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("detach");
    let script = "read a; echo \"a=$a\" >> /tmp/log; read b; echo \"b=$b\" >> /tmp/log; \
                  exec sleep 600";
    let mut cli = spawn_in_pty(
        &docker,
        &format!(
            "{} run -it --name {name} {image} sh -c '{script}'",
            support::docker::docker_cli()
        ),
    );
    // The CLI creates, attaches, starts.
    for _ in 0..100 {
        let run = docker.run(&["inspect", "-f", "{{.State.Running}}", &name]);
        if run.stdout.trim() == "true" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // ctrl-p then y: not the sequence, so both keys go on.
    type_keys(&mut cli, b"x\x10y\n");
    type_keys(&mut cli, b"\x10\x11");
    let (status, out) = ended(cli);
    assert_eq!(status, Some(0), "{out}");
    let log = wait_file(&docker, &name, "/tmp/log", |s| s.contains("a=")).await;
    assert_eq!(log, "a=x\x10y\n");
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Running}}", &name]),
        "true"
    );

    // Attach again (its own keys), type the second line, leave again.
    let mut cli = spawn_in_pty(
        &docker,
        &format!(
            "{} attach --detach-keys ctrl-x,z {name}",
            support::docker::docker_cli()
        ),
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    type_keys(&mut cli, b"second\n");
    type_keys(&mut cli, b"\x18z");
    // docker attach says so, and exits 1 (as against dockerd).
    let (status, out) = ended(cli);
    assert_eq!(status, Some(1), "{out}");
    assert!(out.contains("read escape sequence"), "{out}");
    let log = wait_file(&docker, &name, "/tmp/log", |s| s.contains("b=")).await;
    assert_eq!(log, "a=x\x10y\nb=second\n");
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Running}}", &name]),
        "true"
    );

    // Malformed keys: dockerd's 400, before anything is attached.
    let (status, _, body) = docker.http(
        "POST",
        &format!("/containers/{name}/attach?stream=1&stdout=1&detachKeys=ctrl-"),
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Invalid detach keys (ctrl-) provided"),
        "{body}"
    );
    let err = docker.fails(&["attach", "--no-stdin", "--detach-keys", "bad", &name]);
    // The CLI reads no body from a refused upgrade (as against dockerd).
    assert!(
        err.contains("unable to upgrade to tcp, received 400"),
        "{err}"
    );
    let (status, _, body) = docker.http(
        "POST",
        "/containers/nothing-here/attach?stream=1&stdout=1",
        None,
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("No such container: nothing-here"), "{body}");
    docker.ok(&["pause", &name]);
    let (status, _, body) = docker.http(
        "POST",
        &format!("/containers/{name}/attach?stream=1&stdout=1"),
        None,
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("is paused, unpause the container before attach"),
        "{body}"
    );
    docker.ok(&["unpause", &name]);
    docker.ok(&["rm", "-f", &name]);
}

/// Polls `cat path` in container `name` until `done` says so; returns the text.
async fn wait_file(
    docker: &DockerEnv,
    name: &str,
    path: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let run = docker.run(&["exec", name, "cat", path]);
        last = run.stdout;
        if run.status == 0 && done(&last) {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{name}:{path} is still {last:?}");
}

/// `docker ps -s` and `docker inspect --size`: the writable layer's bytes (SizeRw) and
/// with the image's layers under it (SizeRootFs); without `size` neither is there.
#[tokio::test]
async fn container_sizes() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("sized");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        &image,
        "sh",
        "-c",
        "head -c 300000 /dev/zero > /big; touch /done; exec sleep 600",
    ]);
    wait_file(&docker, &name, "/done", |_| true).await;
    let sizes = docker.ok(&[
        "inspect",
        "--size",
        "-f",
        "{{.SizeRw}} {{.SizeRootFs}}",
        &name,
    ]);
    let (rw, root) = sizes.split_once(' ').expect("two sizes");
    let (rw, root): (u64, u64) = (
        rw.parse().expect("SizeRw"),
        root.parse().expect("SizeRootFs"),
    );
    // The file, and little else (the daemon's own mount points are left out).
    assert!((300_000..310_000).contains(&rw), "{sizes}");
    // The busybox image's unpacked layer is more than a megabyte.
    assert!(root > rw + 1_000_000, "{sizes}");
    let (status, _, body) = docker.http("GET", &format!("/containers/{name}/json"), None);
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("SizeRw") && !body.contains("SizeRootFs"),
        "{body}"
    );

    let ps = docker.ok(&["ps", "-s", "--format", "{{.Names}} {{.Size}}"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&format!("{name} 300kB (virtual "))),
        "{ps}"
    );
    let (status, _, body) = docker.http("GET", "/containers/json?size=1", None);
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(listed[0]["SizeRw"], rw, "{body}");
    assert_eq!(listed[0]["SizeRootFs"], root, "{body}");
    let (_, _, body) = docker.http("GET", "/containers/json", None);
    assert!(!body.contains("SizeRw"), "{body}");
    // A bad size flag is no size.
    let (status, _, body) = docker.http("GET", "/containers/nothing-here/json?size=1", None);
    assert_eq!(status, 404, "{body}");
    docker.ok(&["rm", "-f", &name]);
}

/// `docker ps` filters as dockerd's: before/since (by name or ID), volume (a bind's
/// source or destination), network (name or ID), limit, and dockerd's refusals.
#[tokio::test]
async fn list_filters() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let host_dir = tempfile::tempdir().expect("tempdir");
    let host_path = host_dir.path().display().to_string();
    let [first, second, third] = [unique("first"), unique("second"), unique("third")];
    docker.ok(&["create", "--name", &first, &image, "true"]);
    let second_id = docker.ok(&[
        "create",
        "--name",
        &second,
        "-v",
        &format!("{host_path}:/data"),
        &image,
        "true",
    ]);
    docker.ok(&[
        "create",
        "--name",
        &third,
        "--network",
        "host",
        &image,
        "true",
    ]);
    let names = |filters: &[&str]| {
        let mut args = vec!["ps", "-a", "--format", "{{.Names}}"];
        for filter in filters {
            args.extend(["--filter", filter]);
        }
        docker.ok(&args).lines().collect::<Vec<_>>().join(" ")
    };
    assert_eq!(
        names(&[&format!("before={third}")]),
        format!("{second} {first}")
    );
    assert_eq!(names(&[&format!("before={}", &second_id[..12])]), first);
    // id, as name, is an unanchored regex (dockerd's filters.Match).
    assert_eq!(names(&[&format!("id={}", &second_id[10..24])]), second);
    assert_eq!(names(&[&format!("id=^{}", &second_id[..8])]), second);
    assert!(names(&[&format!("id=^{}", &second_id[10..24])]).is_empty());
    assert_eq!(
        names(&[&format!("since={first}")]),
        format!("{third} {second}")
    );
    assert_eq!(
        names(&[&format!("since={first}"), &format!("before={third}")]),
        second
    );
    assert_eq!(names(&["volume=/data"]), second);
    assert_eq!(names(&[&format!("volume={host_path}")]), second);
    assert!(names(&["volume=/elsewhere"]).is_empty());
    assert_eq!(names(&["network=host"]), third);
    assert_eq!(names(&["network=bridge"]), format!("{second} {first}"));
    let host_id = docker.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.host.NetworkID}}",
        &third,
    ]);
    assert_eq!(host_id.len(), 64, "{host_id}");
    assert_eq!(names(&[&format!("network={}", &host_id[..12])]), third);
    assert!(names(&["network=none"]).is_empty());
    assert_eq!(
        names(&["is-task=false", "isolation=default"]),
        format!("{third} {second} {first}")
    );
    assert!(names(&["is-task=true"]).is_empty());
    // Without -a, before/since show running containers only (none here).
    assert!(docker
        .ok(&["ps", "-q", "--filter", &format!("before={third}")])
        .is_empty());
    // -n: the newest N, stopped ones included.
    assert_eq!(
        docker
            .ok(&["ps", "-n", "2", "--format", "{{.Names}}"])
            .lines()
            .collect::<Vec<_>>(),
        [&third, &second]
    );

    let err = docker.fails(&["ps", "--filter", "bogus=1"]);
    assert!(err.contains("invalid filter 'bogus'"), "{err}");
    let err = docker.fails(&["ps", "--filter", "status=sleeping"]);
    assert!(err.contains("invalid filter 'status=sleeping'"), "{err}");
    let err = docker.fails(&["ps", "--filter", "health=fine"]);
    assert!(
        err.contains("Unrecognised filter value for health: fine"),
        "{err}"
    );
    let err = docker.fails(&["ps", "--filter", "before=nothing-here"]);
    assert!(err.contains("No such container: nothing-here"), "{err}");
    let err = docker.fails(&["ps", "--filter", "publish=1:2"]);
    assert!(
        err.contains("filter for 'publish' should not contain ':': 1:2"),
        "{err}"
    );
    let (status, _, body) = docker.http(
        "GET",
        "/containers/json?filters=%7B%22bogus%22%3A%5B%221%22%5D%7D",
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid filter 'bogus'"), "{body}");
    let (status, _, body) = docker.http(
        "GET",
        "/containers/json?filters=%7B%22before%22%3A%5B%22nothing-here%22%5D%7D",
        None,
    );
    assert_eq!(status, 404, "{body}");
    for name in [&first, &second, &third] {
        docker.ok(&["rm", name]);
    }
}

/// The numbers of `line <n> ...` lines, in the order given.
fn line_numbers(logs: &str) -> Vec<u32> {
    logs.lines()
        .filter_map(|l| l.strip_prefix("line "))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn log_opts_rotate_the_log_and_logs_reads_across_files() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    // 3,000 lines of 100 bytes (300 KB) into 16 KiB files, 3 kept: the newest 32-48
    // KiB of lines are kept, and `docker logs` reads them in order across the files.
    let id = docker.ok(&[
        "run",
        "-d",
        "--log-opt",
        "max-size=16k",
        "--log-opt",
        "max-file=3",
        &image,
        "sh",
        "-c",
        "i=0; while [ $i -lt 3000 ]; do \
         printf 'line %d %089d\\n' $i 0; i=$((i+1)); done; exec sleep 1000",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let logs = loop {
        let logs = docker.ok(&["logs", &id]);
        if logs.contains("line 2999 ") {
            break logs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the last line never came: {} lines",
            logs.lines().count()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let numbers = line_numbers(&logs);
    let first = numbers[0];
    assert!(first > 0, "the oldest lines were rotated away");
    assert_eq!(
        numbers,
        (first..3000).collect::<Vec<u32>>(),
        "the kept lines, in order, without a gap"
    );
    assert!(
        numbers.len() > 16 * 1024 * 2 / 150 && numbers.len() <= 16 * 1024 * 3 / 100,
        "{} lines kept in 3 files of 16 KiB",
        numbers.len()
    );
    let log_path = docker.ok(&["inspect", "-f", "{{.LogPath}}", &id]);
    let log = std::path::Path::new(&log_path);
    let dir = log.parent().expect("the log's directory");
    let name = log
        .file_name()
        .expect("the log's name")
        .to_string_lossy()
        .into_owned();
    let mut files: Vec<String> = support::entries(dir)
        .into_iter()
        .filter(|f| f.starts_with(&name))
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![name.clone(), format!("{name}.1"), format!("{name}.2")],
        "the log and two rotated files"
    );
    for file in &files {
        let size = std::fs::metadata(dir.join(file)).expect("a log file").len();
        assert!(size < 16 * 1024 + 200, "{file}: {size} bytes");
    }
    assert_eq!(
        line_numbers(&docker.ok(&["logs", "--tail", "5", &id])),
        vec![2995, 2996, 2997, 2998, 2999]
    );
    docker.ok(&["rm", "-f", &id]);

    // Following a log while it rotates: every line once, in order.
    let id = docker.ok(&[
        "run",
        "-d",
        "--log-opt",
        "max-size=4k",
        "--log-opt",
        "max-file=2",
        &image,
        "sh",
        "-c",
        "i=0; while [ $i -lt 400 ]; do \
         printf 'line %d %089d\\n' $i 0; i=$((i+1)); usleep 5000; done",
    ]);
    // The container exits after its last line: then `logs -f` ends.
    let followed = docker.shell(&format!("timeout 60 \"$DOCKER\" logs -f {id}"));
    assert_eq!(followed.status, 0, "docker logs -f: {}", followed.stderr);
    let numbers = line_numbers(&followed.stdout);
    let first = numbers.first().copied().unwrap_or(0);
    assert_eq!(
        numbers,
        (first..400).collect::<Vec<u32>>(),
        "`docker logs -f` across 10 rotations: every line once, in order"
    );
    docker.ok(&["rm", "-f", &id]);

    for (opts, words) in [
        (vec!["--log-opt", "max-size=ten"], "max-size"),
        (
            vec!["--log-opt", "max-file=2"],
            "max-file can only be set when max-size is set",
        ),
        (vec!["--log-opt", "bogus=1"], "unknown log opt 'bogus'"),
    ] {
        let mut args = vec!["create"];
        args.extend(opts.iter().copied());
        args.extend([image.as_str(), "true"]);
        let err = docker.fails(&args);
        assert!(err.contains(words), "{opts:?}: {err}");
    }
}
