//! A container's filesystem through the Docker API with the real `docker` CLI (issue
//! 18): `docker diff` (added, changed and deleted paths, opaque directories, none of
//! the runtime's mount points), `docker export`, `docker commit` (the new image runs
//! with the changes and the `--change`d config; pause, comment, author, history, an
//! empty layer), `docker system df`, `docker container prune` and `docker image prune`
//! (with `-a` and filters), and dockerd's errors.

mod support;

use std::time::Duration;

use support::docker::DockerEnv;
use support::pods::unique;

/// `docker diff NAME` once it lists `wanted` (the container writes as it starts).
async fn diff_when(docker: &DockerEnv, name: &str, wanted: &str) -> Vec<String> {
    for _ in 0..100 {
        let diff = docker.ok(&["diff", name]);
        if diff.lines().any(|l| l == wanted) {
            return diff.lines().map(str::to_string).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "docker diff {name} never listed {wanted:?}: {}",
        docker.ok(&["diff", name])
    );
}

fn tar_listing(path: &std::path::Path) -> Vec<String> {
    let output = std::process::Command::new("tar")
        .arg("-tf")
        .arg(path)
        .output()
        .expect("run tar");
    assert!(output.status.success(), "tar -t: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect()
}

#[tokio::test]
async fn diff_export_commit_and_run_the_new_image() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("fs");
    docker.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        &image,
        "sh",
        "-c",
        "echo hi > /hello; echo extra >> /etc/passwd; rm /etc/group; mkdir -p /tmp/dir; \
         touch /tmp/dir/f; ln -s / /escape; exec sleep 600",
    ]);

    // docker diff: dockerd's kinds and order; the runtime's mount points
    // (/etc/hosts, /etc/hostname, /etc/resolv.conf) are not changes.
    let diff = diff_when(&docker, &name, "A /escape").await;
    assert_eq!(
        diff,
        [
            "A /escape",
            "C /etc",
            "D /etc/group",
            "C /etc/passwd",
            "A /hello",
            "C /tmp",
            "A /tmp/dir",
            "A /tmp/dir/f",
        ],
        "{diff:#?}"
    );
    let (status, _, body) = docker.http("GET", &format!("/containers/{name}/changes"), None);
    assert_eq!(status, 200, "{body}");
    let changes: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        changes
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"Path": "/etc/group", "Kind": 2})),
        "{body}"
    );

    // docker export: the whole root filesystem, with the changes, names relative.
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("export.tar");
    docker.ok(&["export", "-o", exported.to_str().unwrap(), &name]);
    let listing = tar_listing(&exported);
    for wanted in ["hello", "tmp/dir/f", "bin/busybox", "etc/passwd"] {
        assert!(
            listing.iter().any(|l| l == wanted),
            "{wanted} in {listing:?}"
        );
    }
    assert!(!listing.iter().any(|l| l == "etc/group"), "{listing:?}");
    // A symlink to / is archived as a link, never followed out of the container.
    assert!(
        !listing.iter().any(|l| l.starts_with("escape/")),
        "{listing:?}"
    );
    let mut archive = tar::Archive::new(std::fs::File::open(&exported).unwrap());
    let escape = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some("escape"))
        .expect("the escape link");
    assert_eq!(escape.header().entry_type(), tar::EntryType::Symlink);
    assert_eq!(escape.link_name().unwrap().unwrap().to_str(), Some("/"));
    let hello = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(&exported)
        .arg("hello")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hello.stdout), "hi\n");

    // docker commit: paused meanwhile (by default), the changes and --change in the
    // new image, which runs.
    let start = chrono::Utc::now().timestamp() - 1;
    let committed = docker.ok(&[
        "commit",
        "-m",
        "a commit message",
        "-a",
        "Wharf Tester <t@example.com>",
        "--change",
        r#"CMD ["cat", "/hello"]"#,
        "--change",
        "ENV GREETING=hello LIST=$PATH",
        "--change",
        "LABEL stage=committed",
        "--change",
        "WORKDIR /tmp",
        &name,
        "wharf-test/committed:v1",
    ]);
    assert!(committed.starts_with("sha256:"), "{committed}");
    assert_eq!(
        docker.ok(&["inspect", "-f", "{{.State.Status}}", &name]),
        "running"
    );
    let events = docker.ok(&[
        "events",
        "--since",
        &start.to_string(),
        "--until",
        &(chrono::Utc::now().timestamp() + 1).to_string(),
        "--filter",
        &format!("container={name}"),
        "--format",
        "{{.Action}}",
    ]);
    let actions: Vec<&str> = events
        .lines()
        .filter(|a| matches!(*a, "pause" | "unpause" | "commit"))
        .collect();
    assert_eq!(actions, ["pause", "unpause", "commit"], "{events}");

    let out = docker.ok(&["run", "--rm", "wharf-test/committed:v1"]);
    assert_eq!(out, "hi");
    let out = docker.ok(&[
        "run",
        "--rm",
        "wharf-test/committed:v1",
        "sh",
        "-c",
        "echo $GREETING $(pwd); test -e /etc/group || echo no-group; tail -n 1 /etc/passwd; \
         ls /tmp/dir",
    ]);
    assert_eq!(out, "hello /tmp\nno-group\nextra\nf");
    let inspect = docker.ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Comment}}|{{.Author}}|{{json .Config.Cmd}}|{{index .Config.Labels \"stage\"}}",
        "wharf-test/committed:v1",
    ]);
    assert_eq!(
        inspect,
        "a commit message|Wharf Tester <t@example.com>|[\"cat\",\"/hello\"]|committed"
    );
    let env = docker.ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        "wharf-test/committed:v1",
    ]);
    assert!(env.contains("\"GREETING=hello\""), "{env}");
    assert!(env.contains("\"LIST=/usr/local/sbin:"), "{env}");
    let layers = |reference: &str| {
        docker
            .ok(&[
                "image",
                "inspect",
                "-f",
                "{{len .RootFS.Layers}}",
                reference,
            ])
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(layers("wharf-test/committed:v1"), layers(&image) + 1);
    let history = docker.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.Comment}}|{{.CreatedBy}}",
        "wharf-test/committed:v1",
    ]);
    assert_eq!(
        history.lines().next(),
        Some("a commit message|sh -c echo hi > /hello; echo extra >> /etc/passwd; rm /etc/group; mkdir -p /tmp/dir; touch /tmp/dir/f; ln -s / /escape; exec sleep 600"),
        "{history}"
    );

    // --pause=false: no pause; a commit without a name is a dangling image; one with
    // nothing changed adds no layer.
    let quiet = unique("quiet");
    docker.ok(&["create", "--name", &quiet, &image, "true"]);
    let start = chrono::Utc::now().timestamp() - 1;
    let dangling = docker.ok(&["commit", "--pause=false", &quiet]);
    assert_eq!(docker.ok(&["diff", &quiet]), "");
    assert_eq!(layers(&dangling), layers(&image));
    let listed = docker.ok(&[
        "images",
        "--filter",
        "dangling=true",
        "--format",
        "{{.ID}} {{.Repository}}:{{.Tag}}",
    ]);
    assert_eq!(
        listed,
        format!("{} <none>:<none>", &dangling["sha256:".len()..][..12])
    );
    let events = docker.ok(&[
        "events",
        "--since",
        &start.to_string(),
        "--until",
        &(chrono::Utc::now().timestamp() + 1).to_string(),
        "--filter",
        &format!("container={quiet}"),
        "--format",
        "{{.Action}}",
    ]);
    let actions: Vec<&str> = events
        .lines()
        .filter(|a| matches!(*a, "pause" | "unpause" | "commit"))
        .collect();
    assert_eq!(actions, ["commit"], "{events}");

    // dockerd's errors.
    for command in ["diff", "export", "commit"] {
        let err = docker.fails(&[command, "no-such-container"]);
        assert!(
            err.contains("No such container: no-such-container"),
            "{command}: {err}"
        );
    }
    let (status, _, body) = docker.http(
        "POST",
        &format!("/commit?container={name}&repo=Invalid_Repo&tag=v1"),
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid reference format"), "{body}");
    let (status, _, body) = docker.http(
        "POST",
        &format!("/commit?container={name}&repo=ok&tag=-bad"),
        None,
    );
    assert_eq!(status, 400, "{body}");
    let err = docker.fails(&["commit", "--change", "RUN rm -rf /", &name, "ok:v1"]);
    assert!(err.contains("run is not a valid change command"), "{err}");
    let (status, _, body) = docker.http("GET", "/containers/no-such-container/changes", None);
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("No such container: no-such-container"),
        "{body}"
    );
    // Refused commits made nothing.
    let images = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(!images.contains("ok:"), "{images}");

    docker.ok(&["rm", "-f", &name, &quiet]);
}

/// A directory removed and made again (an opaque directory in the upper dir): its old
/// entries are reported deleted, and a commit keeps them hidden.
#[tokio::test]
async fn opaque_directories_in_diff_and_commit() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let name = unique("opaque");
    docker.ok(&[
        "run",
        "--name",
        &name,
        &image,
        "sh",
        "-c",
        "rm -rf /home && mkdir /home && echo new > /home/file",
    ]);
    let diff = docker.ok(&["diff", &name]);
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(
        lines,
        ["C /home", "A /home/file", "D /home/wharf"],
        "{diff}"
    );
    docker.ok(&["commit", &name, "wharf-test/opaque:v1"]);
    let out = docker.ok(&["run", "--rm", "wharf-test/opaque:v1", "ls", "-A", "/home"]);
    assert_eq!(out, "file");
    // An image with a child (the commit) only loses its tag to `rmi -f`, as dockerd's:
    // it stays, untagged, under its child.
    let image_id = docker.ok(&["image", "inspect", "--format", "{{.Id}}", &image]);
    let removed = docker.ok(&["rmi", "-f", &image]);
    assert!(
        removed.contains("Untagged:") && !removed.contains("Deleted:"),
        "{removed}"
    );
    assert_eq!(
        docker.ok(&[
            "image",
            "inspect",
            "--format",
            "{{.Parent}}",
            "wharf-test/opaque:v1"
        ]),
        image_id
    );
    // A container whose image was removed (rmi -f, once it has no child) cannot be
    // committed: its config is gone. Its diff still reads (its layers are held).
    docker.ok(&["rmi", "wharf-test/opaque:v1"]);
    docker.ok(&["rmi", "-f", &image_id]);
    let err = docker.fails(&["commit", &name, "wharf-test/orphan:v1"]);
    assert!(err.contains("the container's image was removed"), "{err}");
    assert_eq!(docker.ok(&["diff", &name]).lines().count(), 3);
    docker.ok(&["rm", &name]);
}

#[tokio::test]
async fn system_df_and_prunes() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let running = unique("running");
    let stopped = unique("stopped");
    let kept = unique("kept");
    docker.ok(&["run", "-d", "--name", &running, &image, "sleep", "600"]);
    docker.ok(&[
        "run",
        "--name",
        &stopped,
        &image,
        "sh",
        "-c",
        "head -c 100000 /dev/zero > /blob",
    ]);
    docker.ok(&[
        "create", "--name", &kept, "--label", "keep=yes", &image, "true",
    ]);

    // docker system df: one image used by three containers, one of them active.
    let df = docker.ok(&[
        "system",
        "df",
        "--format",
        "{{.Type}}|{{.TotalCount}}|{{.Active}}",
    ]);
    assert_eq!(
        df.lines().collect::<Vec<_>>(),
        [
            "Images|1|1",
            "Containers|3|1",
            "Local Volumes|0|0",
            "Build Cache|0|0"
        ],
        "{df}"
    );
    let (status, _, body) = docker.http("GET", "/system/df", None);
    assert_eq!(status, 200, "{body}");
    let usage: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(usage["Images"][0]["Containers"], 3, "{body}");
    assert!(usage["LayersSize"].as_u64().unwrap() > 0, "{body}");
    let size_of = |name: &str| {
        usage["Containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["Names"][0] == format!("/{name}"))
            .map(|c| c["SizeRw"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(size_of(&stopped), 100_000, "{body}");
    assert_eq!(size_of(&kept), 0, "{body}");
    assert_eq!(usage["Volumes"], serde_json::json!([]));
    assert_eq!(usage["BuildCache"], serde_json::json!([]));
    let verbose = docker.ok(&["system", "df", "-v"]);
    assert!(verbose.contains(&stopped), "{verbose}");

    // docker container prune: the stopped ones the filter selects, never a running one.
    let stopped_id = docker.ok(&["inspect", "-f", "{{.Id}}", &stopped]);
    let pruned = docker.ok(&["container", "prune", "-f", "--filter", "label!=keep"]);
    assert!(pruned.contains(&stopped_id), "{pruned}");
    assert!(pruned.contains("Total reclaimed space: 100kB"), "{pruned}");
    let left = docker.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    let mut left: Vec<&str> = left.lines().collect();
    left.sort();
    let mut wanted = vec![kept.as_str(), running.as_str()];
    wanted.sort();
    assert_eq!(left, wanted);
    let (status, _, body) = docker.http(
        "POST",
        "/containers/prune?filters=%7B%22until%22%3A%5B%2210m%22%5D%7D",
        None,
    );
    assert_eq!(status, 200, "{body}");
    // All were created less than 10 minutes ago: nothing.
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"ContainersDeleted": null, "SpaceReclaimed": 0})
    );
    let (status, _, body) = docker.http(
        "POST",
        "/containers/prune?filters=%7B%22name%22%3A%5B%22x%22%5D%7D",
        None,
    );
    assert_eq!(
        (status, body.contains("invalid filter 'name'")),
        (400, true),
        "{body}"
    );
    let pruned = docker.ok(&["container", "prune", "-f"]);
    assert!(pruned.contains("Deleted Containers:"), "{pruned}");
    assert_eq!(docker.ok(&["ps", "-a", "--format", "{{.Names}}"]), running);

    // docker image prune: dangling images only, unless -a; never an image in use.
    docker.ok(&["commit", &running, "wharf-test/pruned:v1"]);
    let dangling = docker.ok(&["commit", &running]);
    let pruned = docker.ok(&["image", "prune", "-f"]);
    assert!(pruned.contains(&format!("deleted: {dangling}")), "{pruned}");
    assert!(!pruned.contains("pruned"), "{pruned}");
    let pruned = docker.ok(&["image", "prune", "-f"]);
    assert_eq!(pruned, "Total reclaimed space: 0B");
    let pruned = docker.ok(&["image", "prune", "-a", "-f", "--filter", "label=nothing"]);
    assert_eq!(pruned, "Total reclaimed space: 0B");
    let pruned = docker.ok(&["image", "prune", "-a", "-f"]);
    assert!(
        pruned.contains("untagged: wharf-test/pruned:v1"),
        "{pruned}"
    );
    // The base image is the running container's: kept.
    let images = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(images, image);
    docker.ok(&["rm", "-f", &running]);
    let pruned = docker.ok(&["image", "prune", "-a", "-f"]);
    assert!(pruned.contains(&format!("untagged: {image}")), "{pruned}");
    assert!(docker.ok(&["images", "-q"]).is_empty());
}
