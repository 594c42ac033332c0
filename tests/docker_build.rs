//! Dockerfile builds (issue 20) with the real `docker build` (the classic builder:
//! `DOCKER_BUILDKIT=0`) against a real wharfd: a multi-stage build whose first stage
//! generates files with busybox tools and whose last stage copies them, build args,
//! `.dockerignore`, `--chown`/`--chmod`, the cache (hits on a rebuild, a miss from the
//! changed file on), a build pushed to the local registry and pulled back through the
//! CRI with the same image ID, ONBUILD triggers, a failing RUN (its exit code is the
//! CLI's), and bad input: a malformed Dockerfile names its line, a context cannot make
//! COPY read outside it, and a large context is streamed (the daemon's peak memory does
//! not grow with it).

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::docker::{docker_cli, DockerEnv, Run};
use support::pods::unique;

/// `docker build` with the classic builder, in `dir`.
fn build(docker: &DockerEnv, dir: &Path, args: &[&str]) -> Run {
    let output = Command::new(docker_cli())
        .arg("build")
        .args(args)
        .arg(dir)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", docker.socket().display()),
        )
        .env("DOCKER_CONFIG", docker.config_dir())
        .env("DOCKER_BUILDKIT", "0")
        .env_remove("DOCKER_CONTEXT")
        .output()
        .expect("run docker build");
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn build_ok(docker: &DockerEnv, dir: &Path, args: &[&str]) -> String {
    let run = build(docker, dir, args);
    assert_eq!(
        run.status,
        0,
        "docker build {args:?} failed:\n{}\n{}\n--- wharfd log:\n{}",
        run.stdout,
        run.stderr,
        docker.env.daemon.log()
    );
    run.stdout
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// The ID `Successfully built <id>` names.
fn built_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Successfully built "))
        .unwrap_or_else(|| panic!("no 'Successfully built' in:\n{out}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn multi_stage_build_cache_ignore_and_push() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let ctx = tempfile::tempdir().unwrap();
    let dir = ctx.path();
    write(
        dir,
        "Dockerfile",
        &format!(
            "# a comment\n\
             ARG BASE={image}\n\
             FROM ${{BASE}} AS gen\n\
             ARG GREETING=hello\n\
             WORKDIR /work\n\
             COPY src/ ./src/\n\
             RUN mkdir -p /out && for f in src/*.txt; do \\\n\
             \x20   tr a-z A-Z < $f > /out/$(basename $f); done && \\\n\
             \x20   echo \"${{GREETING:-none}}\" > /out/greeting && echo to-stderr >&2\n\
             \n\
             FROM {image}\n\
             LABEL org.test.kind=\"built by wharf\"\n\
             COPY --from=gen /out/ /app/\n\
             COPY --chown=1000:1000 --chmod=640 notes.md /app/notes.md\n\
             COPY . /ctx/\n\
             ENV APP_MODE=prod\n\
             EXPOSE 8080\n\
             CMD [\"cat\", \"/app/greeting\"]\n"
        ),
    );
    write(dir, ".dockerignore", "*.log\nsecret/\n!keep.log\n");
    write(dir, "src/a.txt", "alpha\n");
    write(dir, "src/b.txt", "beta\n");
    write(dir, "notes.md", "notes\n");
    write(dir, "debug.log", "ignored\n");
    write(dir, "keep.log", "kept\n");
    write(dir, "secret/key", "do not send\n");
    let tag = format!("built-{}:v1", unique("app"));

    let out = build_ok(&docker, dir, &["-t", &tag, "--build-arg", "GREETING=hi"]);
    assert!(out.contains("Step 1/14 : ARG BASE="), "{out}");
    assert!(out.contains("Step 2/14 : FROM ${BASE} AS gen"), "{out}");
    assert!(out.contains(" ---> Running in "), "{out}");
    assert!(out.contains("Removing intermediate container "), "{out}");
    assert!(out.contains(&format!("Successfully tagged {tag}")), "{out}");
    let id = built_id(&out);

    // The image runs: files made by the first stage, the config of the last.
    assert_eq!(docker.ok(&["run", "--rm", &tag]), "hi");
    assert_eq!(
        docker.ok(&["run", "--rm", &tag, "cat", "/app/a.txt", "/app/b.txt"]),
        "ALPHA\nBETA"
    );
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            &tag,
            "stat",
            "-c",
            "%u:%g %a",
            "/app/notes.md"
        ]),
        "1000:1000 640"
    );
    // .dockerignore: excluded files never reach the image, exceptions do.
    let listed = docker.ok(&["run", "--rm", &tag, "ls", "-A", "/ctx"]);
    let listed: Vec<&str> = listed.lines().collect();
    assert!(
        listed.contains(&"keep.log") && listed.contains(&"notes.md"),
        "{listed:?}"
    );
    assert!(
        !listed.contains(&"debug.log") && !listed.contains(&"secret"),
        "{listed:?}"
    );
    let config = docker.ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Env}} {{json .Config.ExposedPorts}} {{index .Config.Labels \"org.test.kind\"}}",
        &tag,
    ]);
    assert!(config.contains("APP_MODE=prod"), "{config}");
    assert!(config.contains("\"8080/tcp\""), "{config}");
    assert!(config.ends_with("built by wharf"), "{config}");
    // The history names the steps, as dockerd's does.
    let history = docker.ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", &tag]);
    assert!(history.contains("#(nop)  ENV APP_MODE=prod"), "{history}");
    assert!(
        history.contains("#(nop) COPY --chown=1000:1000 --chmod=640 file:"),
        "{history}"
    );

    // Intermediate images only with -a; the first stage's result is dangling (as
    // dockerd leaves it), the steps under it are not listed.
    let step_ids: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix(" ---> "))
        .filter(|rest| rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    let gen_result = out
        .split("Step 7/14")
        .next()
        .and_then(|before| before.lines().rev().find_map(|l| l.strip_prefix(" ---> ")))
        .unwrap();
    let plain = docker.ok(&["images", "-q"]);
    let all = docker.ok(&["images", "-a", "-q"]);
    for step in &step_ids {
        assert!(all.contains(step), "{step} not in images -a:\n{all}");
        let shown = plain.contains(step);
        let expected = *step == id
            || *step == gen_result
            || docker.image.contains("busybox")
                && out.contains(&format!("FROM {image}\n ---> {step}"));
        assert_eq!(
            shown, expected,
            "{step} in docker images: {shown}\n{plain}\n{out}"
        );
    }

    // A rebuild: every step from the cache, the same image.
    let again = build_ok(&docker, dir, &["-t", &tag, "--build-arg", "GREETING=hi"]);
    assert_eq!(built_id(&again), id, "{again}");
    assert_eq!(again.matches(" ---> Using cache").count(), 11, "{again}");
    assert!(!again.contains("Running in"), "{again}");
    // A changed source file: the steps before it hit, the rest run again.
    write(dir, "src/b.txt", "gamma\n");
    let changed = build_ok(&docker, dir, &["-t", &tag, "--build-arg", "GREETING=hi"]);
    assert_ne!(built_id(&changed), id);
    let after_copy = changed.split("COPY src/ ./src/").nth(1).unwrap_or_default();
    assert!(
        !after_copy
            .split("Step 6/14")
            .next()
            .unwrap_or_default()
            .contains("Using cache"),
        "{changed}"
    );
    // ARG, WORKDIR and the last stage's LABEL (on the same base) hit.
    assert_eq!(changed.matches(" ---> Using cache").count(), 3, "{changed}");
    assert_eq!(
        docker.ok(&["run", "--rm", &tag, "cat", "/app/b.txt"]),
        "GAMMA"
    );
    // --no-cache runs everything.
    let fresh = build_ok(
        &docker,
        dir,
        &["--no-cache", "-q", "--build-arg", "GREETING=hi"],
    );
    assert!(fresh.trim().starts_with("sha256:"), "{fresh}");

    // Pushed to the registry, pulled back through the CRI: the same image.
    let host = docker.env.registry.host();
    let target = format!("{host}/built/{}:v1", unique("app"));
    docker.ok(&["tag", &tag, &target]);
    let pushed = docker.ok(&["push", &target]);
    assert!(pushed.contains(": Pushed"), "{pushed}");
    let docker_id = docker.ok(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    let mut images = docker.env.daemon.image_client().await;
    let pulled = images
        .pull_image(k8s_cri::v1::PullImageRequest {
            image: Some(k8s_cri::v1::ImageSpec {
                image: target.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("CRI pull of the built image")
        .into_inner();
    assert_eq!(
        pulled.image_ref, docker_id,
        "the CRI's image ID is Docker's"
    );
    // And it runs under the CRI.
    let mut env = docker.env;
    let pod = env.pod_config(&unique("built"));
    let pod_id = env.run_pod(&pod).await;
    let mut config = env.container_config("app", &["cat", "/app/greeting"]);
    config.image = Some(k8s_cri::v1::ImageSpec {
        image: target,
        ..Default::default()
    });
    let ctr = env.run(&pod_id, &pod, &config).await;
    let status = env.wait_exited(&ctr).await;
    assert_eq!(status.exit_code, 0);
    let log = fs::read_to_string(env.log_path(&pod, "app")).unwrap();
    assert!(log.contains(" stdout F hi"), "{log}");
    env.remove_pod(&pod_id).await;
}

#[tokio::test]
async fn onbuild_failing_run_and_bad_input() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();

    // ONBUILD: stored in the base, run by the child's FROM.
    let base_dir = tempfile::tempdir().unwrap();
    write(
        base_dir.path(),
        "Dockerfile",
        &format!("FROM {image}\nONBUILD RUN echo triggered > /trig\nONBUILD COPY x /x\n"),
    );
    let base = format!("onbase-{}", unique("b"));
    build_ok(&docker, base_dir.path(), &["-t", &base]);
    let onbuild = docker.ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.OnBuild}}",
        &base,
    ]);
    assert_eq!(onbuild, r#"["RUN echo triggered > /trig","COPY x /x"]"#);
    let child_dir = tempfile::tempdir().unwrap();
    write(
        child_dir.path(),
        "Dockerfile",
        &format!("FROM {base}\nCMD [\"cat\", \"/trig\", \"/x\"]\n"),
    );
    write(child_dir.path(), "x", "copied\n");
    let child = format!("onchild-{}", unique("c"));
    let out = build_ok(&docker, child_dir.path(), &["-t", &child]);
    assert!(out.contains("# Executing 2 build triggers"), "{out}");
    assert_eq!(docker.ok(&["run", "--rm", &child]), "triggered\ncopied");

    // A failing RUN: dockerd's message, the command's exit code is the CLI's.
    let fail_dir = tempfile::tempdir().unwrap();
    write(
        fail_dir.path(),
        "Dockerfile",
        &format!("FROM {image}\nRUN echo before; exit 3\nRUN echo never\n"),
    );
    let run = build(&docker, fail_dir.path(), &[]);
    assert_eq!(run.status, 3, "{run:?}");
    assert!(
        run.stderr
            .contains("The command '/bin/sh -c echo before; exit 3' returned a non-zero code: 3"),
        "{run:?}"
    );
    assert!(run.stdout.contains("before"), "{run:?}");
    assert!(!run.stdout.contains("never"), "{run:?}");

    // A malformed Dockerfile names its line; nothing runs.
    let bad_dir = tempfile::tempdir().unwrap();
    write(
        bad_dir.path(),
        "Dockerfile",
        &format!("FROM {image}\nRUN true\nFROBNICATE now\n"),
    );
    let run = build(&docker, bad_dir.path(), &[]);
    assert_ne!(run.status, 0);
    assert!(run.stderr.contains("line 3"), "{run:?}");
    assert!(
        run.stderr.to_ascii_lowercase().contains("frobnicate"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("Step 1/"), "{run:?}");

    // An unknown target, a missing source: clear errors.
    let run = build(&docker, fail_dir.path(), &["--target", "nope"]);
    assert!(
        run.stderr
            .contains("failed to reach build target nope in Dockerfile"),
        "{run:?}"
    );
    let missing_dir = tempfile::tempdir().unwrap();
    write(
        missing_dir.path(),
        "Dockerfile",
        &format!("FROM {image}\nCOPY nothere /x\n"),
    );
    let run = build(&docker, missing_dir.path(), &[]);
    assert!(
        run.stderr.contains("file not found in build context"),
        "{run:?}"
    );

    // A symlink in the context cannot make COPY read outside it: an absolute link and
    // a `..` link resolve inside the context (where nothing is).
    let link_dir = tempfile::tempdir().unwrap();
    write(
        link_dir.path(),
        "Dockerfile",
        &format!("FROM {image}\nCOPY abs /abs\nCOPY up /up\n"),
    );
    std::os::unix::fs::symlink("/etc/hostname", link_dir.path().join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/hostname", link_dir.path().join("up"))
        .unwrap();
    let run = build(&docker, link_dir.path(), &[]);
    assert_ne!(run.status, 0, "{run:?}");
    assert!(
        run.stderr.contains("file not found in build context"),
        "{run:?}"
    );
    // One that stays inside works.
    write(link_dir.path(), "etc/hostname", "inside\n");
    let linked = format!("linked-{}", unique("l"));
    build_ok(&docker, link_dir.path(), &["-t", &linked]);
    assert_eq!(
        docker.ok(&["run", "--rm", &linked, "cat", "/abs", "/up"]),
        "inside\ninside"
    );

    // The stream as dockerd writes it: stderr in red escape codes, the stage's ID as
    // `aux`, a failed RUN's code in `errorDetail`.
    let body = context_tar(&format!(
        "FROM {image}\nRUN echo out; echo err >&2\nRUN exit 5\n"
    ));
    let (status, _, answer) = support::docker::raw_http_bytes(
        &docker.socket(),
        "POST",
        "/v1.41/build?rm=1",
        "application/x-tar",
        &body,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#"{"stream":"out\n"}"#), "{answer}");
    assert!(
        answer.contains(r#"{"stream":"\u001b[91merr\n\u001b[0m"}"#),
        "{answer}"
    );
    assert!(
        answer.contains(r#""errorDetail":{"code":5,"message":"The command '/bin/sh -c exit 5' returned a non-zero code: 5"}"#),
        "{answer}"
    );
    let body = context_tar(&format!("FROM {image}\nENV A=1\n"));
    let (status, _, answer) = support::docker::raw_http_bytes(
        &docker.socket(),
        "POST",
        "/v1.41/build",
        "application/x-tar",
        &body,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#"{"aux":{"ID":"sha256:"#), "{answer}");

    // The build cache: intermediate images in `docker system df`, removed by
    // `docker builder prune`; tagged images stay.
    let df = docker.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    let cache_count = |df: &str| -> usize {
        df.lines()
            .find_map(|l| l.strip_prefix("Build Cache "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(cache_count(&df) > 0, "{df}");
    let pruned = docker.ok(&["builder", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert_eq!(docker.ok(&["run", "--rm", &child]), "triggered\ncopied");

    // A context entry with `..`: refused before anything runs, nothing written.
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    let dockerfile = format!("FROM {image}\n");
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_path("Dockerfile").unwrap();
    header.set_cksum();
    tar.append(&header, dockerfile.as_bytes()).unwrap();
    let mut evil = tar::Header::new_gnu();
    evil.set_size(4);
    evil.set_mode(0o644);
    let name = format!("../../../../../../tmp/{}", unique("escaped"));
    evil.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    evil.set_cksum();
    tar.append(&evil, &b"evil"[..]).unwrap();
    let body = tar.into_inner().unwrap();
    let (status, _, answer) = support::docker::raw_http_bytes(
        &docker.socket(),
        "POST",
        "/v1.41/build",
        "application/x-tar",
        &body,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("outside the context"), "{answer}");
    assert!(!Path::new(&name.replace("../", "/").replace("//", "/")).exists());
}

/// A large context is streamed to disk: the daemon's peak RSS grows by far less than
/// the context's size.
#[tokio::test]
async fn large_context_is_streamed_not_buffered() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {image}\nCOPY small /small\n"),
    );
    write(ctx.path(), "small", "small\n");
    // 400 MB that compresses to nothing would not stress the daemon: random data.
    let big = ctx.path().join("big.bin");
    let status = Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={}", big.display()),
            "bs=1M",
            "count=400",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let pid = docker.env.daemon.pid();
    let before = peak_rss_kib(pid);
    let out = build_ok(&docker, ctx.path(), &[]);
    assert!(out.contains("Successfully built"), "{out}");
    let after = peak_rss_kib(pid);
    assert!(
        after.saturating_sub(before) < 100 * 1024,
        "wharfd's peak RSS grew from {before} KiB to {after} KiB for a 400 MB context"
    );
}

/// Starts `docker build` of `dir` in the background and waits until its RUN step's
/// container runs (the build is mid-way): the CLI's process and the container's ID.
async fn build_until_run_starts(docker: &DockerEnv, dir: &Path) -> (std::process::Child, String) {
    let mut cli = Command::new(docker_cli())
        .arg("build")
        .arg(dir)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", docker.socket().display()),
        )
        .env("DOCKER_CONFIG", docker.config_dir())
        .env("DOCKER_BUILDKIT", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start docker build");
    for _ in 0..200 {
        let running = docker.ok(&["ps", "-q"]);
        if !running.is_empty() {
            return (cli, running);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = cli.kill();
    let _ = cli.wait();
    panic!("the build's RUN never started");
}

/// A context holding only `Dockerfile`.
fn context_tar(dockerfile: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_path("Dockerfile").unwrap();
    header.set_cksum();
    tar.append(&header, dockerfile.as_bytes()).unwrap();
    tar.into_inner().unwrap()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// A kill -9 of wharfd in the middle of a build: the next start removes what the
/// build left (its context, mounts and the RUN's container), and the steps it had
/// committed are the cache of the next build.
#[tokio::test]
async fn kill9_mid_build_leaves_nothing_a_restart_does_not_clean() {
    let mut docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "f", "file\n");
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {image}\nCOPY f /f\nRUN sleep 120\n"),
    );
    let (mut cli, running) = build_until_run_starts(&docker, ctx.path()).await;
    let builds = docker.env.daemon.paths.root.join("docker/builds");
    assert!(fs::read_dir(&builds).unwrap().next().is_some());
    docker.env.daemon.kill9();
    let _ = cli.wait();
    docker.env.daemon.restart().await;
    // Cleaned before serving: no build directory, no mount under it.
    let left: Vec<_> = fs::read_dir(&builds)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left after the restart: {left:?}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(builds.to_str().unwrap()),
        "a build mount survived the restart"
    );
    // The RUN's container, which the build would have removed, goes too (dockerd
    // leaves it): the build was cut, and leaves no trace but its committed steps.
    let container = running.lines().next().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !docker
        .ok(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("id={container}"),
        ])
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the cut build's container {container} is still there"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The COPY committed before the crash is the next build's cache.
    copy_step_is_the_cache_of_the_next_build(&docker, ctx.path(), &image);
}

/// The COPY committed before a build was cut (crash, cancel) is the next build's cache.
fn copy_step_is_the_cache_of_the_next_build(docker: &DockerEnv, ctx: &Path, image: &str) {
    write(
        ctx,
        "Dockerfile",
        &format!("FROM {image}\nCOPY f /f\nRUN cat /f\n"),
    );
    let out = build_ok(docker, ctx, &[]);
    assert_eq!(out.matches(" ---> Using cache").count(), 1, "{out}");
}

/// `--cache-from` an image pulled from a registry (no local build cache): its history
/// gives every step, the build makes the same image without running anything.
#[tokio::test]
async fn cache_from_a_pulled_image() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "f", "cached file\n");
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {image}\nENV A=1\nCOPY f /f\nRUN cat /f > /g\nCMD [\"cat\", \"/g\"]\n"),
    );
    let target = format!("{}/cache/{}:v1", docker.env.registry.host(), unique("app"));
    let out = build_ok(&docker, ctx.path(), &["-t", &target]);
    let id = docker.ok(&["image", "inspect", "--format", "{{.Id}}", &target]);
    assert!(
        out.contains(&format!("Successfully built {}", &id[7..19])),
        "{out}"
    );
    docker.ok(&["push", &target]);
    // Gone here, with every step under it: no local cache is left.
    let removed = docker.ok(&["rmi", &target]);
    assert!(removed.matches("Deleted: ").count() >= 4, "{removed}");
    docker.ok(&["pull", &target]);
    assert_eq!(
        docker.ok(&["image", "inspect", "--format", "{{.Id}}", &target]),
        id
    );

    let again = build_ok(&docker, ctx.path(), &["--cache-from", &target]);
    assert_eq!(again.matches(" ---> Using cache").count(), 4, "{again}");
    assert!(!again.contains("Running in"), "{again}");
    assert_eq!(built_id(&again), &id[7..19]);
}

/// The other instructions and options: SHELL, USER, VOLUME, STOPSIGNAL, HEALTHCHECK,
/// ENTRYPOINT, ADD of a local tar.gz (extracted) and of a URL (refused: no network),
/// `--label`, several `-t`, `--target` of a middle stage, `--network none` for RUN, a
/// proxy build arg (in RUN's environment, not in the image), and a FROM --platform
/// this machine does not run.
#[tokio::test]
async fn instructions_and_options() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let ctx = tempfile::tempdir().unwrap();
    // A tar.gz for ADD to extract.
    let payload = tempfile::tempdir().unwrap();
    write(payload.path(), "pkg/README", "inside the archive\n");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(ctx.path().join("pkg.tar.gz"))
        .arg("-C")
        .arg(payload.path())
        .arg("pkg")
        .status()
        .unwrap();
    assert!(status.success());
    write(
        ctx.path(),
        "Dockerfile",
        &format!(
            "FROM {image} AS first\n\
             RUN echo first > /first\n\
             FROM first AS middle\n\
             SHELL [\"/bin/sh\", \"-e\", \"-c\"]\n\
             ADD pkg.tar.gz /opt/\n\
             RUN ls /sys/class/net > /nets; echo \"proxy=$HTTP_PROXY\" > /proxy\n\
             USER 1000:1000\n\
             VOLUME /data\n\
             STOPSIGNAL SIGUSR1\n\
             HEALTHCHECK --interval=5s --retries=2 CMD [\"true\"]\n\
             ENTRYPOINT [\"cat\"]\n\
             CMD [\"/opt/pkg/README\"]\n\
             FROM {image}\n\
             RUN echo last > /last\n"
        ),
    );
    let a = format!("multi-a-{}", unique("t"));
    let b = format!("multi-b-{}", unique("t"));
    let out = build_ok(
        &docker,
        ctx.path(),
        &[
            "--target",
            "middle",
            "-t",
            &a,
            "-t",
            &b,
            "--label",
            "team=wharf",
            "--network",
            "none",
            "--build-arg",
            "HTTP_PROXY=http://proxy.invalid:3128",
        ],
    );
    // The last stage is not needed by the target: not built.
    assert!(!out.contains("echo last"), "{out}");
    assert!(
        out.contains(&format!("Successfully tagged {a}:latest")),
        "{out}"
    );
    assert!(
        out.contains(&format!("Successfully tagged {b}:latest")),
        "{out}"
    );
    assert_eq!(docker.ok(&["run", "--rm", &b]), "inside the archive");
    assert_eq!(
        docker.ok(&[
            "run",
            "--rm",
            "--entrypoint",
            "cat",
            "--user",
            "0",
            &a,
            "/first",
            "/nets",
            "/proxy"
        ]),
        "first\nlo\nproxy=http://proxy.invalid:3128"
    );
    let inspected = docker.ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}|{{json .Config.Volumes}}|{{.Config.StopSignal}}|{{json .Config.Healthcheck}}|{{json .Config.Shell}}|{{index .Config.Labels \"team\"}}",
        &a,
    ]);
    assert_eq!(
        inspected,
        r#"1000:1000|{"/data":{}}|SIGUSR1|{"Test":["CMD","true"],"Interval":5000000000,"Retries":2}|["/bin/sh","-e","-c"]|wharf"#
    );
    // The proxy value is not in the image's history.
    let history = docker.ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", &a]);
    assert!(!history.contains("proxy.invalid"), "{history}");

    // ADD of a URL: a clear refusal; a platform this machine does not run: refused.
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {image}\nADD http://example.invalid/x /x\n"),
    );
    let run = build(&docker, ctx.path(), &[]);
    assert_ne!(run.status, 0);
    assert!(
        run.stderr.contains("remote sources are not supported"),
        "{run:?}"
    );
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM --platform=linux/s390x {image}\nRUN true\n"),
    );
    let run = build(&docker, ctx.path(), &[]);
    assert_ne!(run.status, 0);
    assert!(
        run.stderr.contains("linux/s390x is not this machine's"),
        "{run:?}"
    );
}

/// ctrl-c of `docker build` (the client goes away) cancels the build, as dockerd's:
/// the RUN under way is stopped and its container removed, the build's files go, and
/// the steps committed before stay as the cache.
#[tokio::test]
async fn a_client_that_goes_away_cancels_the_build() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "f", "file\n");
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {image}\nCOPY f /f\nRUN sleep 120\n"),
    );
    let (mut cli, _running) = build_until_run_starts(&docker, ctx.path()).await;
    cli.kill().unwrap();
    let _ = cli.wait();
    let builds = docker.env.daemon.paths.root.join("docker/builds");
    let mut left = String::from("?");
    for _ in 0..100 {
        left = docker.ok(&["ps", "-aq"]);
        let files = fs::read_dir(&builds).map(|d| d.count()).unwrap_or(0);
        if left.is_empty() && files == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        left.is_empty(),
        "the cancelled build's container is still there: {left}"
    );
    assert_eq!(fs::read_dir(&builds).map(|d| d.count()).unwrap_or(0), 0);
    copy_step_is_the_cache_of_the_next_build(&docker, ctx.path(), &image);
}

/// `docker image prune` takes an untagged build with its steps (dockerd prunes the
/// heads, each with the chain of untagged parents it leaves unused); a tagged build's
/// steps stay under it.
#[tokio::test]
async fn image_prune_takes_an_untagged_build_with_its_steps() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let before = docker.ok(&["images", "-a", "-q"]);
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {image}\nENV A=1\nRUN echo one > /one\nENV B=2\n"),
    );
    build_ok(&docker, ctx.path(), &[]);
    let tagged = format!("kept-{}", unique("p"));
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {image}\nENV C=3\nRUN echo two > /two\n"),
    );
    build_ok(&docker, ctx.path(), &["-t", &tagged]);
    let all = docker.ok(&["images", "-a", "-q"]).lines().count();
    assert_eq!(all, before.lines().count() + 3 + 2);
    let pruned = docker.ok(&["image", "prune", "-f"]);
    assert_eq!(pruned.matches("deleted: sha256:").count(), 3, "{pruned}");
    let after = docker.ok(&["images", "-a", "-q"]).lines().count();
    assert_eq!(after, before.lines().count() + 2);
    assert_eq!(docker.ok(&["run", "--rm", &tagged, "cat", "/two"]), "two");
}
