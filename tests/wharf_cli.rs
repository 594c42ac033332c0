//! The `wharf` CLI (issue 21) against a real wharfd: exit codes, `run -it` through a
//! real pty (tmux: typing into `sh`, ctrl-p ctrl-q detach and `attach` back, resize seen
//! by `stty size`, the terminal restored), stdin piping, the container lifecycle, and
//! its outputs compared with the docker CLI's on the same daemon for the same objects.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::wharf_binary;
use support::docker::{DockerEnv, Run};
use support::images::{ImageBuilder, LayerBuilder};
use support::incompressible;
use support::pods::unique;
use support::tmux::Tmux;

/// Runs `wharf -H <the test daemon> args...` (no stdin).
fn wharf(docker: &DockerEnv, args: &[&str]) -> Run {
    wharf_with_input(docker, args, None)
}

fn wharf_command(docker: &DockerEnv) -> Command {
    let mut command = Command::new(wharf_binary());
    command
        .arg("-H")
        .arg(format!("unix://{}", docker.socket().display()))
        .env("WHARF_CONFIG", docker.config_dir())
        .env_remove("WHARF_HOST")
        .env_remove("DOCKER_HOST");
    command
}

fn wharf_with_input(docker: &DockerEnv, args: &[&str], input: Option<&[u8]>) -> Run {
    let mut command = wharf_command(docker);
    command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start wharf");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("wharf's stdin");
        stdin.write_all(input).expect("write wharf's stdin");
    }
    let output = child.wait_with_output().expect("run wharf");
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs wharf and asserts it succeeded; its stdout, trimmed.
fn ok(docker: &DockerEnv, args: &[&str]) -> String {
    let run = wharf(docker, args);
    assert_eq!(
        run.status,
        0,
        "wharf {args:?} failed ({}): {}{}\n--- wharfd log:\n{}",
        run.status,
        run.stdout,
        run.stderr,
        docker.env.daemon.log()
    );
    run.stdout.trim().to_string()
}

/// A wharfd with the busybox test image pulled through `wharf pull`.
async fn env_pulled() -> DockerEnv {
    let docker = DockerEnv::start().await;
    let image = docker.image.clone();
    let pulled = ok(&docker, &["pull", &image]);
    assert!(
        pulled.contains("Downloaded newer image") || pulled.contains("Image is up to date"),
        "{pulled}"
    );
    docker
}

#[tokio::test]
async fn exit_codes_as_docker() {
    let docker = env_pulled().await;
    let image = docker.image.clone();
    // run exits with the container's code.
    let run = wharf(
        &docker,
        &[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(
        (run.status, run.stdout.as_str(), run.stderr.as_str()),
        (3, "out\n", "err\n"),
        "{run:?}"
    );
    // A daemon error is 125 (an image that does not exist, a bad flag).
    let run = wharf(
        &docker,
        &["run", "--rm", "--pull", "never", "no-such-image:v0", "true"],
    );
    assert_eq!(run.status, 125, "{run:?}");
    assert!(run.stderr.contains("Error response from daemon"), "{run:?}");
    let run = wharf(&docker, &["run", "--no-such-flag", &image]);
    assert_eq!(run.status, 125, "{run:?}");
    // A command that does not exist is 127, as docker against dockerd (the docker CLI
    // finds its 127 in dockerd's wording, "executable file not found", so against
    // wharfd's "not found in $PATH" it says 125).
    let name = unique("missing-cmd");
    let run = wharf(
        &docker,
        &["run", "--name", &name, &image, "/no/such/command"],
    );
    assert_eq!(run.status, 127, "{run:?}");
    assert!(run.stderr.contains("/no/such/command"), "{run:?}");
    // wharfd refuses it at create: nothing is left behind.
    assert_eq!(wharf(&docker, &["inspect", &name]).status, 1);
    // No daemon: a message that says what to do, not an errno.
    let mut command = Command::new(wharf_binary());
    let missing = command
        .args(["ps"])
        .env("WHARF_HOST", "unix:///nonexistent/wharf-test.sock")
        .output()
        .expect("run wharf");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not exist") && stderr.contains("Start it with"),
        "{stderr}"
    );
    // `run` against no daemon: 125.
    let missing = Command::new(wharf_binary())
        .args(["-H", "unix:///nonexistent/wharf-test.sock", "run", &image])
        .output()
        .expect("run wharf");
    assert_eq!(missing.status.code(), Some(125));
    // DOCKER_HOST is honoured when WHARF_HOST is unset.
    let via_docker_host = Command::new(wharf_binary())
        .args(["ps", "-q"])
        .env_remove("WHARF_HOST")
        .env(
            "DOCKER_HOST",
            format!("unix://{}", docker.socket().display()),
        )
        .output()
        .expect("run wharf");
    assert_eq!(
        via_docker_host.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&via_docker_host.stderr)
    );
    // A socket this user may not open: the missing permission is named.
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("d.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock_path).expect("bind");
    std::fs::set_permissions(
        &sock_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let denied = Command::new(wharf_binary())
        .args(["-H", &format!("unix://{}", sock_path.display()), "ps"])
        .uid(65534)
        .output()
        .expect("run wharf as nobody");
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(denied.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Permission denied") && stderr.contains("write permission"),
        "{stderr}"
    );
}

use std::os::unix::process::CommandExt;

#[tokio::test]
async fn stdin_piping_logs_exec_and_lifecycle() {
    let docker = env_pulled().await;
    let image = docker.image.clone();
    // stdin piped without -t reaches the container and its EOF ends it.
    let run = wharf_with_input(
        &docker,
        &["run", "-i", "--rm", &image, "sh", "-c", "cat; echo done"],
        Some(b"piped line\n"),
    );
    assert_eq!(
        (run.status, run.stdout.as_str()),
        (0, "piped line\ndone\n"),
        "{run:?}"
    );

    let name = unique("life");
    let id = ok(
        &docker,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "-e",
            "GREETING=hi",
            "-l",
            "app=life",
            "-p",
            "127.0.0.1::80",
            &image,
            "sh",
            "-c",
            "echo $GREETING; exec sleep 600",
        ],
    );
    assert_eq!(id.len(), 64, "{id}");
    let mut logs = String::new();
    for _ in 0..50 {
        logs = ok(&docker, &["logs", &name]);
        if !logs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logs, "hi");
    assert_eq!(
        ok(&docker, &["logs", "-t", "--tail", "1", &name])
            .split_once(' ')
            .map(|(_, l)| l),
        Some("hi")
    );
    // exec: output, environment, user, workdir, and its exit code.
    assert_eq!(
        ok(
            &docker,
            &[
                "exec",
                "-e",
                "X=1",
                "-w",
                "/tmp",
                &name,
                "sh",
                "-c",
                "echo $X $(pwd) $(id -u)"
            ]
        ),
        "1 /tmp 0"
    );
    assert_eq!(
        ok(&docker, &["exec", "-u", "65534", &name, "id", "-u"]),
        "65534"
    );
    let failed = wharf(&docker, &["exec", &name, "sh", "-c", "exit 4"]);
    assert_eq!(failed.status, 4, "{failed:?}");
    let piped = wharf_with_input(&docker, &["exec", "-i", &name, "cat"], Some(b"to exec\n"));
    assert_eq!(piped.stdout, "to exec\n");
    ok(&docker, &["exec", "-d", &name, "touch", "/tmp/detached"]);
    // port, top, diff, pause, unpause, rename, restart, stop, wait, rm.
    let port = ok(&docker, &["port", &name]);
    assert_eq!(
        port,
        docker.ok(&["port", &name]),
        "wharf port differs from docker port"
    );
    assert!(ok(&docker, &["top", &name]).contains("sleep 600"));
    assert_eq!(
        ok(&docker, &["update", "-m", "64m", "--cpus", "0.5", &name]),
        name
    );
    assert_eq!(
        ok(&docker, &["inspect", "-f", "{{.HostConfig.Memory}}", &name]),
        "67108864"
    );
    ok(&docker, &["pause", &name]);
    assert_eq!(
        ok(&docker, &["inspect", "-f", "{{.State.Status}}", &name]),
        "paused"
    );
    ok(&docker, &["unpause", &name]);
    let renamed = unique("renamed");
    ok(&docker, &["rename", &name, &renamed]);
    assert_eq!(
        ok(&docker, &["inspect", "-f", "{{.Name}}", &id]),
        format!("/{renamed}")
    );
    assert!(
        ok(&docker, &["diff", &renamed])
            .lines()
            .any(|l| l == "A /tmp/detached" || l == "C /tmp"),
        "diff"
    );
    ok(&docker, &["restart", "-t", "1", &renamed]);
    assert_eq!(ok(&docker, &["stop", "-t", "1", &renamed]), renamed);
    assert_eq!(ok(&docker, &["wait", &renamed]), "137");
    assert_eq!(
        ok(&docker, &["inspect", "-f", "{{.State.ExitCode}}", &renamed]),
        "137"
    );
    // cp both ways, export, commit.
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("in.txt");
    std::fs::write(&local, "copied in\n").expect("write");
    ok(&docker, &["start", &renamed]);
    ok(
        &docker,
        &[
            "cp",
            &local.display().to_string(),
            &format!("{renamed}:/tmp/"),
        ],
    );
    assert_eq!(
        ok(&docker, &["exec", &renamed, "cat", "/tmp/in.txt"]),
        "copied in"
    );
    let back = dir.path().join("out.txt");
    ok(
        &docker,
        &[
            "cp",
            &format!("{renamed}:/tmp/in.txt"),
            &back.display().to_string(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&back).expect("read the copy"),
        "copied in\n"
    );
    let tar = dir.path().join("fs.tar");
    ok(
        &docker,
        &["export", "-o", &tar.display().to_string(), &renamed],
    );
    assert!(std::fs::metadata(&tar).expect("export").len() > 100_000);
    let committed = format!("wharf-committed-{}:v1", std::process::id());
    let image_id = ok(
        &docker,
        &[
            "commit",
            "-c",
            "CMD [\"cat\", \"/tmp/in.txt\"]",
            &renamed,
            &committed,
        ],
    );
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    assert_eq!(ok(&docker, &["run", "--rm", &committed]), "copied in");
    // rm refuses a running container without -f, as docker.
    let refused = wharf(&docker, &["rm", &renamed]);
    assert_eq!(refused.status, 1, "{refused:?}");
    assert_eq!(ok(&docker, &["rm", "-f", "-v", &renamed]), renamed);
    let gone = wharf(&docker, &["inspect", &renamed]);
    assert_eq!(gone.status, 1);
    assert!(gone.stderr.contains("No such object"), "{gone:?}");
    ok(&docker, &["rmi", &committed]);
    // The prunes, without a prompt.
    let stopped = unique("stopped");
    ok(&docker, &["create", "--name", &stopped, &image]);
    let pruned = ok(&docker, &["system", "prune", "-f", "--volumes"]);
    assert!(
        pruned.contains("Deleted Containers:\n") && pruned.contains("Total reclaimed space:"),
        "{pruned}"
    );
    assert_eq!(
        wharf(&docker, &["inspect", "--type", "container", &stopped]).status,
        1
    );
    let stopped = unique("stopped");
    ok(&docker, &["create", "--name", &stopped, &image]);
    let pruned = ok(&docker, &["container", "prune", "-f"]);
    assert!(
        pruned.contains(&stopped) || pruned.contains("Deleted Containers:"),
        "{pruned}"
    );
    assert_eq!(
        wharf(&docker, &["inspect", "--type", "container", &stopped]).status,
        1
    );
    assert!(ok(&docker, &["image", "prune", "-f"]).contains("Total reclaimed space"));
    let network = unique("prunable");
    ok(&docker, &["network", "create", &network]);
    assert!(ok(&docker, &["network", "prune", "-f"]).contains(&network));
    ok(&docker, &["volume", "create"]);
    assert!(ok(&docker, &["volume", "prune", "-f"]).contains("Total reclaimed space"));
}

#[tokio::test]
async fn outputs_match_the_docker_cli() {
    let docker = env_pulled().await;
    let image = docker.image.clone();
    let name = unique("cmp");
    ok(
        &docker,
        &[
            "run", "-d", "--name", &name, "-l", "k=v", &image, "sleep", "600",
        ],
    );
    let stopped = unique("cmp-exited");
    ok(
        &docker,
        &[
            "create",
            "--name",
            &stopped,
            &image,
            "echo",
            "a very long command line that docker truncates",
        ],
    );
    // The same fields, through the same templates, for the same objects.
    for format in [
        "{{.ID}} {{.Image}} {{.Command}} {{.Names}} {{.Labels}} {{.State}}",
        "table {{.ID}}\\t{{.Image}}\\t{{.Command}}\\t{{.Names}}",
        "{{json .Names}}",
        "{{.Names}}: {{.Label \"k\"}}|{{.Label \"missing\"}}",
    ] {
        assert_eq!(
            ok(&docker, &["ps", "-a", "--format", format]),
            docker.ok(&["ps", "-a", "--format", format]),
            "ps --format {format}"
        );
    }
    // Lists and maps print as Go prints them, and a map's range goes in key order.
    let labelled = unique("cmp-labels");
    ok(
        &docker,
        &[
            "create", "--name", &labelled, "-l", "zz=26", "-l", "aa=1", "-l", "mm=13", &image,
            "sleep", "600",
        ],
    );
    for format in [
        "{{.Config.Cmd}}",
        "{{.Config.Labels}}",
        "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}",
        "{{len .Config.Labels}} {{index .Config.Labels \"mm\"}}",
    ] {
        assert_eq!(
            ok(&docker, &["inspect", "--format", format, &labelled]),
            docker.ok(&["inspect", "--format", format, &labelled]),
            "inspect --format {format}"
        );
    }
    ok(&docker, &["rm", &labelled]);
    // `.Labels` and `.Label` of volume and network rows.
    for kind in ["volume", "network"] {
        let name = unique(&format!("cmp-{kind}"));
        ok(&docker, &[kind, "create", "--label", "tier=db", &name]);
        let filter = format!("name={name}");
        let format = "{{.Name}} {{.Labels}} {{.Label \"tier\"}}|{{.Label \"none\"}}";
        let ls = [kind, "ls", "--filter", &filter, "--format", format];
        assert_eq!(ok(&docker, &ls), docker.ok(&ls), "{kind} ls");
        ok(&docker, &[kind, "rm", &name]);
    }
    // `container inspect` inspects containers only: a network's name is not one.
    let ours = wharf(&docker, &["container", "inspect", "bridge"]);
    let theirs = docker.run(&["container", "inspect", "bridge"]);
    assert_eq!(
        (ours.status, ours.stderr.trim()),
        (theirs.status, theirs.stderr.trim())
    );
    assert_ne!(ours.status, 0);
    // PORTS: ranges grouped as the docker CLI groups them.
    let base = 30_000 + (std::process::id() % 500) * 10;
    let ported = unique("cmp-ports");
    ok(
        &docker,
        &[
            "run",
            "-d",
            "--name",
            &ported,
            "-p",
            &format!("127.0.0.1:{base}-{}:8500-8502", base + 2),
            "-p",
            &format!("127.0.0.1:{}:86/udp", base + 5),
            "--expose",
            "7000-7001",
            &image,
            "sleep",
            "600",
        ],
    );
    let format = "{{.Names}} {{.Ports}}";
    let ours = ok(
        &docker,
        &[
            "ps",
            "--filter",
            &format!("name={ported}"),
            "--format",
            format,
        ],
    );
    assert_eq!(
        ours,
        docker.ok(&[
            "ps",
            "--filter",
            &format!("name={ported}"),
            "--format",
            format
        ])
    );
    assert!(ours.contains("7000-7001/tcp"), "{ours}");
    ok(&docker, &["rm", "-f", &ported]);
    for args in [
        &["ps", "-q"][..],
        &["ps", "-aq"],
        &["ps", "-a", "-q", "--no-trunc"],
        &["ps", "-q", "--filter", "label=k=v"],
        &["ps", "-a", "-n", "1", "-q"],
    ] {
        assert_eq!(ok(&docker, args), docker.ok(args), "{args:?}");
    }
    // The default table: the same header, columns at the same places.
    let ours = ok(&docker, &["ps", "-a"]);
    let theirs = docker.ok(&["ps", "-a"]);
    // (Column widths follow the values, and CREATED/STATUS change with time.)
    let header = |t: &str| -> Vec<String> {
        t.lines()
            .next()
            .unwrap_or("")
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        header(&ours),
        header(&theirs),
        "ps header\n{ours}\n{theirs}"
    );
    assert_eq!(ours.lines().count(), theirs.lines().count());
    let names_at = ours
        .lines()
        .next()
        .and_then(|h| h.find("NAMES"))
        .expect("NAMES column");
    for line in ours.lines().skip(1) {
        // Columns are aligned in characters ("…" is one).
        let rest: String = line.chars().skip(names_at).collect();
        assert!(rest == name || rest == stopped, "NAMES not aligned: {ours}");
    }
    for format in [
        "{{.State.Status}}",
        "{{.Name}} {{.Config.Image}} {{index .Config.Labels \"k\"}}",
        "{{json .Config.Labels}}",
        "{{range .Config.Cmd}}<{{.}}>{{end}}",
        "{{.HostConfig.NetworkMode}} {{len .Config.Cmd}}",
    ] {
        for object in [&name, &stopped] {
            assert_eq!(
                ok(&docker, &["inspect", "--format", format, object]),
                docker.ok(&["inspect", "--format", format, object]),
                "inspect --format {format} {object}"
            );
        }
    }
    // The whole inspect document is the daemon's, unchanged.
    let ours: serde_json::Value =
        serde_json::from_str(&ok(&docker, &["inspect", &name])).expect("wharf inspect is JSON");
    let theirs: serde_json::Value =
        serde_json::from_str(&docker.ok(&["inspect", &name])).expect("docker inspect is JSON");
    assert_eq!(ours, theirs);
    let ours: serde_json::Value =
        serde_json::from_str(&ok(&docker, &["inspect", &image])).expect("image inspect");
    assert_eq!(ours[0]["RepoTags"][0], image.as_str());
    // Images.
    for args in [
        &["images", "-q"][..],
        &[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}",
        ],
        &["images", "--digests", "--format", "{{.Digest}}"],
        &["images", "-q", "--no-trunc"],
        // docker's management commands.
        &["image", "ls", "-q"],
        &["container", "ls", "-a", "-q"],
        &["image", "inspect", "-f", "{{.Id}} {{.Os}}", &image],
    ] {
        assert_eq!(ok(&docker, args), docker.ok(args), "{args:?}");
    }
    assert_eq!(
        header(&ok(&docker, &["images"])),
        header(&docker.ok(&["images"]))
    );
    assert_eq!(
        ok(&docker, &["history", "-q", &image]),
        docker.ok(&["history", "-q", &image])
    );
    assert_eq!(
        ok(&docker, &["version", "--format", "{{.Server.APIVersion}}"]),
        "1.41"
    );
    assert_eq!(
        ok(
            &docker,
            &["info", "--format", "{{.Containers}} {{.CgroupDriver}}"]
        ),
        docker.ok(&["info", "--format", "{{.Containers}} {{.CgroupDriver}}"])
    );
    // Volumes and networks.
    let volume = unique("vol");
    ok(&docker, &["volume", "create", "--label", "a=b", &volume]);
    assert_eq!(
        ok(&docker, &["volume", "ls", "-q"]),
        docker.ok(&["volume", "ls", "-q"])
    );
    assert_eq!(
        ok(
            &docker,
            &[
                "volume",
                "inspect",
                "-f",
                "{{.Name}} {{.Driver}} {{.Labels}}",
                &volume
            ]
        )
        .split(' ')
        .next(),
        Some(volume.as_str())
    );
    assert_eq!(ok(&docker, &["volume", "rm", &volume]), volume);
    let network = unique("net");
    ok(&docker, &["network", "create", &network]);
    assert_eq!(
        ok(
            &docker,
            &["network", "ls", "--format", "{{.Name}} {{.Driver}}"]
        ),
        docker.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"])
    );
    assert_eq!(
        ok(
            &docker,
            &["network", "inspect", "-f", "{{.Name}}", &network]
        ),
        network
    );
    ok(&docker, &["network", "rm", &network]);
    // Tags, save and load, rmi.
    let tagged = format!("wharf-tagged-{}:v2", std::process::id());
    ok(&docker, &["tag", &image, &tagged]);
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("img.tar");
    ok(
        &docker,
        &["save", "-o", &archive.display().to_string(), &tagged],
    );
    ok(&docker, &["rmi", &tagged]);
    let loaded = ok(&docker, &["load", "-i", &archive.display().to_string()]);
    assert!(
        loaded.contains(&format!("Loaded image: {tagged}")),
        "{loaded}"
    );
    let removed = ok(&docker, &["rmi", &tagged]);
    assert!(
        removed.contains(&format!("Untagged: {tagged}")),
        "{removed}"
    );
    // Stats without streaming: one row per running container.
    let stats = ok(
        &docker,
        &["stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}"],
    );
    assert_eq!(stats, format!("{name} 1"));
    ok(&docker, &["rm", "-f", &name, &stopped]);
}

#[test]
fn completion_scripts_and_help() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef wharf"),
        ("fish", "complete -c wharf"),
    ] {
        let output = Command::new(wharf_binary())
            .args(["completion", shell])
            .output()
            .expect("run wharf completion");
        let script = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{shell}");
        assert!(
            script.contains(marker) && script.contains("detach-keys"),
            "{shell}: {script:.300}"
        );
    }
    let help = Command::new(wharf_binary())
        .args(["run", "--help"])
        .output()
        .expect("run wharf run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Examples:") && help.contains("--detach-keys"),
        "{help}"
    );
    // Every command's help has examples, in command groups too.
    fn commands(path: &[String]) -> Vec<String> {
        let output = Command::new(wharf_binary())
            .args(path)
            .arg("--help")
            .output()
            .expect("run wharf --help");
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            help.contains("Example"),
            "wharf {path:?} --help has no example:\n{help}"
        );
        let Some(list) = help.split("Commands:\n").nth(1) else {
            return Vec::new();
        };
        list.lines()
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_string)
            .collect()
    }
    let mut checked = 0;
    for top in commands(&[]) {
        for sub in commands(std::slice::from_ref(&top)) {
            commands(&[top.clone(), sub]);
            checked += 1;
        }
        checked += 1;
    }
    assert!(checked > 50, "{checked} commands");
}

#[tokio::test]
async fn run_it_through_a_pty_detach_attach_resize() {
    let docker = env_pulled().await;
    let image = docker.image.clone();
    let tmux = Tmux::new();
    let name = unique("pty");
    let cli = format!("{} -H unix://{}", wharf_binary(), docker.socket().display());
    // After wharf: its exit code, and whether the terminal is back in canonical mode.
    let after = "echo WHARF-EXIT=$?; stty -a | grep -o -- '-*icanon' | sed 's/^/MODE=/'; sleep 600";
    tmux.start(
        "run",
        &format!("{cli} run -it --name {name} {image} sh; {after}"),
    );
    tmux.wait_for("run", "/ #").await;
    tmux.keys("run", &["echo typed-$((6*7))", "Enter"]);
    tmux.wait_for("run", "typed-42").await;
    // The size at start, then a resize forwarded by SIGWINCH.
    tmux.keys("run", &["stty size", "Enter"]);
    tmux.wait_for("run", "24 80").await;
    tmux.cmd(&["resize-window", "-t", "main:run", "-x", "100", "-y", "30"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tmux.keys("run", &["clear; stty size", "Enter"]);
    tmux.wait_for("run", "30 100").await;
    // ctrl-p ctrl-q: wharf exits 0, the container keeps running, the terminal is back.
    tmux.keys("run", &["C-p", "C-q"]);
    let screen = tmux.wait_for("run", "MODE=").await;
    assert!(
        screen.contains("WHARF-EXIT=0") && screen.contains("MODE=icanon"),
        "{screen}"
    );
    assert_eq!(
        ok(&docker, &["inspect", "-f", "{{.State.Running}}", &name]),
        "true"
    );
    // attach: the same shell, then its exit code.
    tmux.start("attach", &format!("{cli} attach {name}; {after}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    tmux.keys("attach", &["echo back-$((1+1))", "Enter"]);
    tmux.wait_for("attach", "back-2").await;
    tmux.keys("attach", &["exit 7", "Enter"]);
    let screen = tmux.wait_for("attach", "MODE=").await;
    assert!(
        screen.contains("WHARF-EXIT=7") && screen.contains("MODE=icanon"),
        "{screen}"
    );
    assert_eq!(
        ok(&docker, &["inspect", "-f", "{{.State.ExitCode}}", &name]),
        "7"
    );
    // exec -it, and a wharf killed by SIGTERM in raw mode still restores the terminal.
    ok(&docker, &["start", &name]);
    tmux.start("exec", &format!("{cli} exec -it {name} sh; {after}"));
    tmux.wait_for("exec", "/ #").await;
    // The exec'd TTY has the window's size from the start.
    let size = tmux.cmd(&[
        "display-message",
        "-p",
        "-t",
        "main:exec",
        "#{window_height} #{window_width}",
    ]);
    tmux.keys("exec", &["stty size", "Enter"]);
    tmux.wait_for("exec", size.trim()).await;
    let pane_pid = tmux.cmd(&["display-message", "-p", "-t", "main:exec", "#{pane_pid}"]);
    let shell = pane_pid.trim();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .expect("the pane's children");
    let wharf_pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("wharf's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(wharf_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM wharf");
    let screen = tmux.wait_for("exec", "MODE=").await;
    assert!(
        screen.contains("MODE=icanon") && !screen.contains("MODE=-icanon"),
        "{screen}"
    );
    // --rm with -it: the container is gone after its shell exits.
    let gone = unique("pty-rm");
    tmux.start(
        "rm",
        &format!("{cli} run -it --rm --name {gone} {image} sh; {after}"),
    );
    tmux.wait_for("rm", "/ #").await;
    tmux.keys("rm", &["exit 5", "Enter"]);
    let screen = tmux.wait_for("rm", "MODE=").await;
    assert!(screen.contains("WHARF-EXIT=5"), "{screen}");
    assert_eq!(wharf(&docker, &["inspect", &gone]).status, 1);
    ok(&docker, &["rm", "-f", &name]);
}

#[tokio::test]
async fn registry_system_and_cri_views() {
    let mut docker = env_pulled().await;
    let image = docker.image.clone();
    let host = docker.env.registry.host();
    // login stores the credentials 0600, logout takes them back.
    let login = wharf_with_input(
        &docker,
        &["login", "-u", "tester", "--password-stdin", &host],
        Some(b"secret\n"),
    );
    assert_eq!(login.status, 0, "{login:?}");
    assert!(login.stdout.contains("Login Succeeded"), "{login:?}");
    let auth_file = docker.config_dir().join("auth.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&auth_file)
            .expect("auth.json")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&auth_file).expect("read auth.json"))
            .expect("auth.json is JSON");
    assert_eq!(stored["auths"][&host]["auth"], "dGVzdGVyOnNlY3JldA==");
    // push (with those credentials sent), then pull -q of what was pushed.
    let target = format!("{host}/pushed/{}:v1", unique("wharf"));
    ok(&docker, &["tag", &image, &target]);
    let pushed = ok(&docker, &["push", &target]);
    assert!(pushed.contains("The push refers to repository"), "{pushed}");
    ok(&docker, &["rmi", &target]);
    assert_eq!(ok(&docker, &["pull", "-q", &target]), target);
    // run pulls a missing image first (--pull missing), telling so on stderr.
    ok(&docker, &["rmi", &target]);
    let auto = wharf(&docker, &["run", "--rm", &target, "echo", "auto"]);
    assert_eq!(
        (auto.status, auto.stdout.as_str()),
        (0, "auto\n"),
        "{auto:?}"
    );
    assert!(
        auto.stderr
            .contains(&format!("Unable to find image '{target}' locally")),
        "{auto:?}"
    );
    assert_eq!(
        ok(&docker, &["images", "-q", &target]),
        docker.ok(&["images", "-q", &target])
    );
    ok(&docker, &["rmi", &target]);
    assert_eq!(
        ok(&docker, &["logout", &host]),
        format!("Removing login credentials for {host}")
    );
    // import of a root filesystem tarball.
    let dir = tempfile::tempdir().expect("tempdir");
    let name = unique("imp");
    ok(&docker, &["create", "--name", &name, &image]);
    let rootfs = dir.path().join("rootfs.tar");
    ok(
        &docker,
        &["export", "-o", &rootfs.display().to_string(), &name],
    );
    let imported = format!("wharf-imported-{}:v1", std::process::id());
    let id = ok(
        &docker,
        &[
            "import",
            "-c",
            "CMD [\"echo\", \"from import\"]",
            &rootfs.display().to_string(),
            &imported,
        ],
    );
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(ok(&docker, &["run", "--rm", &imported]), "from import");
    ok(&docker, &["rmi", &imported]);
    ok(&docker, &["rm", &name]);
    // events in a window of the past; df's table as docker's.
    let events = ok(
        &docker,
        &[
            "events",
            "--since",
            "5m",
            "--until",
            "0s",
            "--filter",
            "type=container",
            "--format",
            "{{.Action}}",
        ],
    );
    assert!(
        events.lines().any(|l| l == "create") && events.lines().any(|l| l == "destroy"),
        "{events}"
    );
    // The same window of events, printed as docker prints them.
    let until = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 1
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let window = ["events", "--since", "0", "--until", until.as_str()];
    assert_eq!(ok(&docker, &window), docker.ok(&window));
    let df = ok(
        &docker,
        &["system", "df", "--format", "{{.Type}} {{.TotalCount}}"],
    );
    let docker_df = docker.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert_eq!(df, docker_df);
    // The CRI views: pods and containers kubelet would run, never Docker's.
    let pod = docker.env.pod_config("cri-view");
    let pod_id = docker.env.run_pod(&pod).await;
    let config = docker.env.container_config("sleeper", &["sleep", "600"]);
    let ctr_id = docker.env.run(&pod_id, &pod, &config).await;
    let cri = docker.env.daemon.paths.cri_socket.display().to_string();
    let pods = ok(&docker, &["--cri-socket", &cri, "pods"]);
    assert!(
        pods.starts_with("POD ID") && pods.contains(&pod_id[..12]) && pods.contains("Ready"),
        "{pods}"
    );
    assert_eq!(ok(&docker, &["--cri-socket", &cri, "pods", "-q"]), pod_id);
    let ctrs = ok(&docker, &["--cri-socket", &cri, "ctr"]);
    assert!(
        ctrs.contains(&ctr_id[..12]) && ctrs.contains("sleeper") && ctrs.contains("Running"),
        "{ctrs}"
    );
    assert_eq!(
        ok(&docker, &["ps", "-aq"]),
        "",
        "wharf ps lists no CRI container"
    );
    let info = ok(&docker, &["--cri-socket", &cri, "info"]);
    assert!(info.contains("RuntimeReady: true"), "{info}");
    docker.env.stop_container(&ctr_id, 1).await;
    docker.env.remove_container(&ctr_id).await;
    docker.env.stop_pod(&pod_id).await;
    docker.env.remove_pod(&pod_id).await;
}

#[tokio::test]
async fn run_it_when_the_daemon_goes_away() {
    let mut docker = env_pulled().await;
    let image = docker.image.clone();
    let tmux = Tmux::new();
    let cli = format!("{} -H unix://{}", wharf_binary(), docker.socket().display());
    let after = "echo WHARF-EXIT=$?; stty -a | grep -o -- '-*icanon' | sed 's/^/MODE=/'; sleep 600";
    // Custom detach keys are watched instead of ctrl-p ctrl-q.
    tmux.start(
        "run",
        &format!(
            "{cli} run -it --detach-keys ctrl-x,x --name {} {image} sh; {after}",
            unique("gone")
        ),
    );
    tmux.wait_for("run", "/ #").await;
    tmux.keys("run", &["C-p", "C-q", "echo still-$((2+3))", "Enter"]);
    tmux.wait_for("run", "still-5").await;
    // The connection drops with the daemon: wharf ends with an error, the terminal back.
    docker.env.daemon.kill9();
    let screen = tmux.wait_for("run", "MODE=").await;
    assert!(
        screen.contains("MODE=icanon") && !screen.contains("WHARF-EXIT=0"),
        "{screen}"
    );
}

#[tokio::test]
async fn pull_progress_on_a_terminal() {
    let docker = DockerEnv::start().await;
    let registry = &docker.env.registry;
    // The busybox base (here already: shared with the CRI's pull), a 4 MB layer and a
    // small one.
    let built = ImageBuilder::busybox()
        .layer(LayerBuilder::new().file("big.bin", incompressible(4 << 20, 11)))
        .layer(LayerBuilder::new().file("small.txt", "small"))
        .build();
    registry.push("test/progress", "v1", &built).await;
    let image = format!("{}/test/progress:v1", registry.host());
    let tmux = Tmux::new();
    let cli = format!("{} -H unix://{}", wharf_binary(), docker.socket().display());
    tmux.start(
        "pull",
        &format!("{cli} pull {image}; echo WHARF-EXIT=$?; sleep 600"),
    );
    let screen = tmux.wait_for("pull", "WHARF-EXIT=").await;
    let lines: Vec<&str> = screen
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    // One line per layer, rewritten in place to its final state, then the digest, the
    // status and the reference: nothing repeated, no progress bar left.
    assert_eq!(lines.len(), 8, "{screen}");
    assert_eq!(lines[0], "v1: Pulling from test/progress");
    let short = |d: &str| d.trim_start_matches("sha256:")[..12].to_string();
    assert_eq!(
        lines[1],
        format!("{}: Already exists", short(&built.layers[0].digest)),
        "{screen}"
    );
    for (line, layer) in lines[2..4].iter().zip(&built.layers[1..]) {
        assert_eq!(
            *line,
            format!("{}: Pull complete", short(&layer.digest)),
            "{screen}"
        );
    }
    assert!(lines[4].starts_with("Digest: sha256:"), "{screen}");
    assert_eq!(
        lines[5],
        format!("Status: Downloaded newer image for {image}")
    );
    assert_eq!(lines[6], image);
    assert_eq!(lines[7], "WHARF-EXIT=0");
}

#[tokio::test]
async fn create_flags_match_the_docker_cli() {
    let docker = env_pulled().await;
    let image = docker.image.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "# a comment\nFROM_FILE=1\n\nOTHER=two words\n")
        .expect("write the env file");
    let env_file = env_file.display().to_string();
    let volume = unique("data");
    let flags = [
        "-i",
        "-t",
        "-e",
        "A=1",
        "--env-file",
        &env_file,
        "-p",
        "127.0.0.1:18080:80",
        "-p",
        "9000-9001:90-91/udp",
        "-P",
        "-v",
        &format!("{volume}:/data:ro"),
        "-v",
        "/anon",
        "--mount",
        "type=tmpfs,target=/scratch,tmpfs-size=1m",
        "--restart",
        "on-failure:2",
        "-u",
        "65534",
        "-w",
        "/tmp",
        "--entrypoint",
        "sh",
        "-m",
        "64m",
        "--cpus",
        "0.5",
        "--cap-add",
        "SYS_ADMIN",
        "--cap-drop",
        "NET_RAW",
        "--read-only",
        "--tmpfs",
        "/run:size=1m",
        "-l",
        "a=b",
        "--init",
        "--hostname",
        "box",
    ];
    let ours = unique("ours");
    let theirs = unique("theirs");
    let mut args = vec!["create", "--name", ours.as_str()];
    args.extend_from_slice(&flags);
    args.extend_from_slice(&[&image, "-c", "echo hi"]);
    ok(&docker, &args);
    args[2] = theirs.as_str();
    docker.ok(&args);
    for field in [
        ".Config.Env",
        ".Config.Cmd",
        ".Config.Entrypoint",
        ".Config.User",
        ".Config.WorkingDir",
        ".Config.Labels",
        ".Config.ExposedPorts",
        ".Config.Tty",
        ".Config.OpenStdin",
        ".Config.StdinOnce",
        ".Config.AttachStdin",
        ".Config.Volumes",
        ".Config.Hostname",
        ".HostConfig.Binds",
        ".HostConfig.Mounts",
        ".HostConfig.Tmpfs",
        ".HostConfig.ReadonlyRootfs",
        ".HostConfig.CapAdd",
        ".HostConfig.CapDrop",
        ".HostConfig.Init",
        ".HostConfig.RestartPolicy",
        ".HostConfig.Memory",
        ".HostConfig.NanoCpus",
        ".HostConfig.PortBindings",
        ".HostConfig.PublishAllPorts",
        ".HostConfig.Privileged",
        ".HostConfig.NetworkMode",
        ".HostConfig.AutoRemove",
    ] {
        // Compared as JSON: `json` orders object keys by name, Go by its structs.
        let format = format!("{{{{json {field}}}}}");
        let parse =
            |text: String| -> serde_json::Value { serde_json::from_str(&text).expect("json") };
        assert_eq!(
            parse(ok(&docker, &["inspect", "-f", &format, &ours])),
            parse(docker.ok(&["inspect", "-f", &format, &theirs])),
            "{field}"
        );
    }
    ok(&docker, &["rm", "-v", &ours, &theirs]);
    ok(&docker, &["volume", "rm", &volume]);
}

#[tokio::test]
async fn signals_are_forwarded_without_a_tty() {
    let docker = env_pulled().await;
    let image = docker.image.clone();
    let name = unique("sig");
    let mut child = wharf_command(&docker)
        .args(["run", "--rm", "--name", &name, &image, "sh", "-c"])
        .arg("trap 'echo got INT; exit 9' INT; echo ready; while true; do sleep 0.1; done")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wharf run");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        let n = std::io::Read::read(&mut stdout, &mut buf).expect("read wharf's output");
        assert!(n > 0, "wharf ended before the container was ready");
        seen.extend_from_slice(&buf[..n]);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT wharf");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read the rest");
    let status = child.wait().expect("wait for wharf");
    assert_eq!(status.code(), Some(9), "{rest}");
    assert!(rest.contains("got INT"), "{rest}");
}

/// `wharf build`: the context sent with `.dockerignore` applied on this side (an
/// ignored file never travels, the Dockerfile does even when ignored), build args,
/// `-f -` from stdin, `--iidfile`, `-q`, and a failed RUN's exit code, as `docker
/// build` with the classic builder.
#[tokio::test]
async fn build_like_docker_build() {
    let docker = env_pulled().await;
    let image = docker.image.clone();
    let ctx = tempfile::tempdir().unwrap();
    let dir = ctx.path();
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {image}\nARG WHO\nCOPY . /ctx/\nRUN echo \"hi $WHO\" > /greeting\nCMD [\"cat\", \"/greeting\"]\n"),
    )
    .unwrap();
    std::fs::write(dir.join(".dockerignore"), "Dockerfile\n*.tmp\n").unwrap();
    std::fs::write(dir.join("kept.txt"), "kept\n").unwrap();
    std::fs::write(dir.join("scratch.tmp"), "ignored\n").unwrap();
    let tag = format!("wharf-built-{}", unique("b"));
    let iid_dir = tempfile::tempdir().unwrap();
    let iid = iid_dir.path().join("iid");
    let out = ok(
        &docker,
        &[
            "build",
            "-t",
            &tag,
            "--build-arg",
            "WHO=wharf",
            "--iidfile",
            iid.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
    );
    assert!(out.contains("Step 1/5 : FROM"), "{out}");
    assert!(
        out.contains(&format!("Successfully tagged {tag}:latest")),
        "{out}"
    );
    let id = std::fs::read_to_string(&iid).unwrap();
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(ok(&docker, &["run", "--rm", &tag]), "hi wharf");
    let listed = ok(&docker, &["run", "--rm", &tag, "ls", "-A", "/ctx"]);
    assert_eq!(listed, ".dockerignore\nkept.txt", "{listed}");

    // -q prints the ID alone; the cache makes it the same image.
    let quiet = ok(
        &docker,
        &[
            "build",
            "-q",
            "--build-arg",
            "WHO=wharf",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(quiet.trim(), id.trim());

    // A Dockerfile on stdin; a failing RUN's code is the command's.
    let run = wharf_with_input(
        &docker,
        &["build", "-f", "-", dir.to_str().unwrap()],
        Some(format!("FROM {image}\nRUN exit 4\n").as_bytes()),
    );
    assert_eq!(run.status, 4, "{run:?}");
    assert!(
        run.stderr.contains("returned a non-zero code: 4"),
        "{run:?}"
    );
}

/// The PIDS cell of `container`'s row on a live stats screen.
fn pids_on_screen(screen: &str, container: &str) -> Option<String> {
    screen
        .lines()
        .find(|l| l.contains(container))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_string)
}

/// `stats` live on a terminal, next to the docker CLI's on the same daemon: the same
/// header, the container's row redrawn as it changes (its PIDS follow processes
/// started in it), and ctrl-c ends it.
#[tokio::test]
async fn stats_live_on_a_terminal() {
    let docker = env_pulled().await;
    let image = docker.image.clone();
    let name = unique("live");
    ok(
        &docker,
        &["run", "-d", "--name", &name, &image, "sleep", "600"],
    );
    let tmux = Tmux::new();
    let after = "echo EXIT=$?; sleep 600";
    // The window's shell outlives the ctrl-c (a trap, which its children do not
    // inherit), to show the exit code.
    let before = "trap true INT;";
    let cli = format!("{} -H unix://{}", wharf_binary(), docker.socket().display());
    tmux.start("wharf", &format!("{before} {cli} stats {name}; {after}"));
    let docker_cli = format!(
        "DOCKER_HOST=unix://{} DOCKER_CONFIG={} {}",
        docker.socket().display(),
        docker.config_dir().display(),
        support::docker::docker_cli()
    );
    tmux.start(
        "docker",
        &format!("{before} {docker_cli} stats {name}; {after}"),
    );
    // Wide enough for a row on one line; the next redraw fills the new width.
    for window in ["main:wharf", "main:docker"] {
        tmux.cmd(&["resize-window", "-t", window, "-x", "200", "-y", "30"]);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ours = tmux.wait_for("wharf", &name).await;
    let theirs = tmux.wait_for("docker", &name).await;
    let header = |screen: &str| {
        screen
            .lines()
            .find(|l| l.contains("CONTAINER ID"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    assert_eq!(header(&ours), header(&theirs), "{ours}\n{theirs}");
    assert_eq!(pids_on_screen(&ours, &name).as_deref(), Some("1"), "{ours}");

    // Two more processes: the live table shows them, without a restart of the command.
    docker.ok(&[
        "exec",
        "-d",
        &name,
        "sh",
        "-c",
        "sleep 300 & sleep 300 & wait",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = (None, None);
    while Instant::now() < deadline {
        seen = (
            pids_on_screen(&tmux.screen("wharf"), &name),
            pids_on_screen(&tmux.screen("docker"), &name),
        );
        if seen == (Some("4".into()), Some("4".into())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        seen,
        (Some("4".into()), Some("4".into())),
        "{}\n{}",
        tmux.screen("wharf"),
        tmux.screen("docker")
    );

    // ctrl-c ends it as a SIGINT ends a program (130). (The docker CLI 28 only
    // cancels its streams at the first one, and leaves the table up.)
    tmux.keys("wharf", &["C-c"]);
    let ours = tmux.wait_for("wharf", "EXIT=").await;
    assert!(ours.lines().any(|l| l.ends_with("EXIT=130")), "{ours}");
    ok(&docker, &["rm", "-f", &name]);
}

/// Sends SIGINT (a ctrl-c) to `child` and waits for it: the status, and how long it took.
fn interrupt(child: &mut std::process::Child) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    (status, started.elapsed())
}

/// ctrl-c interrupts the long operations without leaving a half-finished object: a
/// pull stalled on its layer ends at once and no image shows until the whole image is
/// stored (the daemon finishes the transfer, as a CRI pull); a build ends at once and
/// its RUN container and files go (the daemon cancels it, as dockerd).
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_interrupts_pull_and_build_cleanly() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let docker = env_pulled().await;
    let image = ImageBuilder::new()
        .layer(LayerBuilder::new().file("data/payload", incompressible(1 << 20, 7)))
        .build();
    let layer = image.layers[0].digest.clone();
    let routes = support::hostile::Routes::for_image("slow/img", "latest", &image);
    let (stalled, release) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (s, r) = (stalled.clone(), release.clone());
    let registry = support::hostile::HostileServer::start("127.0.0.1:0", move |req| {
        if req.path.contains(&layer) && req.method == "GET" {
            s.store(true, Ordering::SeqCst);
            // The handler is called on a runtime worker: the wait hands the worker's
            // other tasks (this test's among them) to the others.
            tokio::task::block_in_place(|| {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !r.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        routes.serve(req)
    })
    .await;
    let reference = format!("{}/slow/img:latest", registry.host());
    let mut pull = wharf_command(&docker)
        .args(["pull", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wharf pull");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stalled.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the pull never asked for its layer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, took) = interrupt(&mut pull);
    assert!(!status.success(), "{status}");
    assert!(
        took < Duration::from_secs(5),
        "the pull took {took:?} to stop"
    );
    let listed = |docker: &DockerEnv| ok(docker, &["images", "--format", "{{.Repository}}"]);
    assert!(!listed(&docker).contains("slow/img"), "{}", listed(&docker));
    release.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listed(&docker).contains("slow/img") {
        assert!(Instant::now() < deadline, "the pull was not finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let layers = ok(
        &docker,
        &[
            "image",
            "inspect",
            "-f",
            "{{len .RootFS.Layers}}",
            &reference,
        ],
    );
    assert_eq!(layers, "1");

    // A build in its RUN.
    let ctx = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {}\nRUN sleep 120\n", docker.image),
    )
    .unwrap();
    let mut build = wharf_command(&docker)
        .args([
            "build",
            "-t",
            "cut-build",
            &ctx.path().display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wharf build");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok(&docker, &["ps", "-q"]).is_empty() {
        assert!(Instant::now() < deadline, "the build's RUN never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, took) = interrupt(&mut build);
    assert!(!status.success(), "{status}");
    assert!(
        took < Duration::from_secs(5),
        "the build took {took:?} to stop"
    );
    let builds = docker.env.daemon.paths.root.join("docker/builds");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = ok(&docker, &["ps", "-aq"]);
        let files = std::fs::read_dir(&builds).map(|d| d.count()).unwrap_or(0);
        if left.is_empty() && files == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled build left containers {left:?} and {files} build dirs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!listed(&docker).contains("cut-build"));
}
