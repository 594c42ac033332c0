//! Docker Compose on wharfd, with both real clients: Compose v2 (Go,
//! `github.com/docker/compose/v5`) and Debian's docker-compose 1.29 (Python, over
//! docker-py). One project of three services: one built from a Dockerfile in the
//! project, two from the local registry; a user network (service names and an alias);
//! a named volume and a bind mount; a published port; `depends_on` on a healthcheck
//! that wharfd runs; env, env_file, command, entrypoint, restart policy and
//! `deploy.resources.limits` in the cgroup. Each flow checks what the client printed
//! and what wharfd holds afterwards (by the `com.docker.compose.project` label).

mod support;

use std::time::Duration;

use support::compose::{Client, Project};
use support::docker::DockerEnv;
use support::net::{host_fetch, TestBridge};
use support::pods::unique;

fn test_port(offset: u16) -> u16 {
    20000 + (std::process::id() % 1000) as u16 * 10 + offset
}

/// A wharfd on a bridge of the test's own (its pods are reachable from the host).
async fn env(index: u32) -> (TestBridge, DockerEnv) {
    let net = TestBridge::new(index);
    let docker = DockerEnv::start_with_config(&net.config()).await;
    (net, docker)
}

/// The project: `web` built here (busybox httpd, healthchecked, limited), `app`
/// waiting for it to be healthy and fetching it by name and by alias, `worker` with an
/// entrypoint. `greeting` is app's GREETING (changing it recreates app only).
fn compose_yaml(image: &str, port: u16, subnet: &str, greeting: &str) -> String {
    format!(
        r#"services:
  web:
    build: ./web
    image: {{WEB_IMAGE}}
    ports:
      - "127.0.0.1:{port}:80"
    networks:
      appnet:
        aliases: [frontend]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/"]
      interval: 1s
      timeout: 2s
      retries: 20
    stop_grace_period: 1s
    deploy:
      resources:
        limits:
          memory: 64M
          cpus: "0.5"
  app:
    image: {image}
    command:
      - sh
      - -c
      - >-
        echo app starting $$GREETING $$FROM_ENV_FILE;
        while true; do
        echo via-web $$(wget -q -O - http://web/);
        echo via-alias $$(wget -q -O - http://frontend/);
        cat /data/note.txt; echo kept > /state/kept; sleep 1;
        done
    depends_on:
      web:
        condition: service_healthy
    environment:
      GREETING: {greeting}
    env_file: app.env
    restart: unless-stopped
    stop_grace_period: 1s
    networks: [appnet]
    volumes:
      - appdata:/state
      - ./data:/data:ro
  worker:
    image: {image}
    entrypoint: ["sh", "-c"]
    command: ["echo worker up; exec sleep 1000"]
    stop_grace_period: 1s
    networks: [appnet]
networks:
  appnet:
    ipam:
      config:
        - subnet: {subnet}
volumes:
  appdata: {{}}
"#
    )
}

/// The project's files; its compose.yaml with GREETING `greeting`.
fn project<'a>(
    docker: &'a DockerEnv,
    client: Client,
    port: u16,
    subnet: &str,
) -> (Project<'a>, String) {
    let name = unique("cmp").replace('-', "");
    let web_image = format!("{name}-web:dev");
    let yaml = compose_yaml(&docker.image, port, subnet, "hi").replace("{WEB_IMAGE}", &web_image);
    let project = Project::new(docker, client, &name, &yaml);
    project.write(
        "web/Dockerfile",
        &format!(
            "FROM {}\nCOPY index.html /www/index.html\nEXPOSE 80\n\
             CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
            docker.image
        ),
    );
    project.write("web/index.html", "hello from web\n");
    project.write("app.env", "FROM_ENV_FILE=from-env-file\n");
    project.write("data/note.txt", "bind-mounted\n");
    (project, web_image)
}

/// The container IDs of `service`, by label.
fn ids_of(project: &Project, service: &str) -> Vec<String> {
    let project_filter = format!("label=com.docker.compose.project={}", project.name);
    let service_filter = format!("label=com.docker.compose.service={service}");
    let listed = project.docker.ok(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &project_filter,
        "--filter",
        &service_filter,
    ]);
    let mut ids: Vec<String> = listed.lines().map(str::to_string).collect();
    ids.sort();
    ids
}

fn running_of(project: &Project, service: &str) -> usize {
    ids_of(project, service)
        .iter()
        .filter(|id| {
            project
                .docker
                .ok(&["inspect", "-f", "{{.State.Running}}", id])
                == "true"
        })
        .count()
}

/// Waits until `logs <service>` shows all of `needles`.
fn wait_for_logs(project: &Project, service: &str, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let run = project.run(&["logs", "--no-color", service]);
        let text = format!("{}{}", run.stdout, run.stderr);
        if needles.iter().all(|n| text.contains(n)) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs of {service} never showed {needles:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The flow both clients run: config, pull, build, up -d, ps, the app working across
/// the network, exec (-T and on a pty), run --rm, top, stop/start/restart, scale, a
/// change recreating only its service, events, logs -f, `up` attached stopped by
/// Ctrl-C, and `down -v` leaving nothing.
fn project_flow(project: &Project, web_image: &str, port: u16) {
    let client = project.client;
    let (web, app) = (project.container("web", 1), project.container("app", 1));

    let config = project.ok(&["config"]).stdout;
    for expected in ["frontend", "appdata", "service_healthy", "64M"] {
        let expected = if client == Client::V2 && expected == "64M" {
            "67108864"
        } else {
            expected
        };
        assert!(
            config.contains(expected),
            "config lacks {expected}:\n{config}"
        );
    }

    project.ok(&["pull", "app", "worker"]);
    project
        .docker
        .ok(&["image", "inspect", &project.docker.image]);

    let built = project.ok(&["build", "web"]);
    let printed = format!("{}{}", built.stdout, built.stderr);
    assert!(printed.contains("Successfully tagged"), "{printed}");
    project.docker.ok(&["image", "inspect", web_image]);

    let up = project.ok(&["up", "-d"]);
    let printed = format!("{}{}", up.stdout, up.stderr);
    assert!(printed.contains(&app), "{printed}");
    // depends_on service_healthy: app started after web was healthy.
    let health = project
        .docker
        .ok(&["inspect", "-f", "{{.State.Health.Status}}", &web]);
    assert_eq!(health, "healthy");
    let web_started = project
        .docker
        .ok(&["inspect", "-f", "{{.State.StartedAt}}", &web]);
    let app_started = project
        .docker
        .ok(&["inspect", "-f", "{{.State.StartedAt}}", &app]);
    assert!(app_started > web_started, "{app_started} <= {web_started}");

    let ps = project.ok(&["ps"]).stdout;
    for expected in [web.as_str(), app.as_str(), "(healthy)"] {
        assert!(ps.contains(expected), "ps lacks {expected}:\n{ps}");
    }
    let published = format!("127.0.0.1:{port}->80/tcp");
    assert!(ps.contains(&published), "ps lacks {published}:\n{ps}");

    assert_eq!(
        host_fetch(&format!("127.0.0.1:{port}"), "/").trim(),
        "hello from web"
    );
    wait_for_logs(
        project,
        "app",
        &[
            "app starting hi from-env-file",
            "via-web hello from web",
            "via-alias hello from web",
            "bind-mounted",
        ],
    );
    let worker_logs = wait_for_logs(project, "worker", &["worker up"]);
    assert!(!worker_logs.contains("Error"), "{worker_logs}");

    // deploy.resources.limits in the cgroup (v1 here; v2's files on a v2 host).
    let limits = project
        .ok(&[
            "exec",
            "-T",
            "web",
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
             2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max",
        ])
        .stdout;
    assert!(limits.contains("67108864"), "{limits}");
    assert!(limits.contains("50000"), "{limits}");
    let state = project
        .ok(&["exec", "-T", "app", "cat", "/state/kept"])
        .stdout;
    assert_eq!(state.trim(), "kept");

    // exec with a TTY, as typed in a terminal.
    let mut shell = project.in_pty(&["exec", "app", "sh"]);
    shell.wait_for("# ", Duration::from_secs(30));
    shell.send("tty; echo $((6*7))-answer\r");
    shell.wait_for("42-answer", Duration::from_secs(30));
    shell.send("exit 3\r");
    let (status, typed) = shell.wait(Duration::from_secs(30));
    assert!(typed.contains("/dev/pts/"), "{typed}");
    assert_eq!(status.code(), Some(3), "{typed}");

    // restart: unless-stopped, as wharfd applies it: app's process killed from the
    // host comes back.
    let inspect = |format: &str| project.docker.ok(&["inspect", "-f", format, &app]);
    assert_eq!(
        inspect("{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    let pid: i32 = inspect("{{.State.Pid}}").parse().expect("app's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill app's process");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while inspect("{{.RestartCount}} {{.State.Running}}") != "1 true" {
        assert!(
            std::time::Instant::now() < deadline,
            "app was not restarted: {}",
            inspect("{{json .State}}")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let containers_before = project.container_ids();
    let one_off = project.ok(&["run", "--rm", "-T", "worker", "echo one-off $((1+2))"]);
    assert!(one_off.stdout.contains("one-off 3"), "{one_off:?}");
    assert_eq!(
        project.container_ids(),
        containers_before,
        "run --rm left a container"
    );

    let top = project.ok(&["top", "web"]).stdout;
    assert!(top.contains("httpd -f -p 80"), "{top}");

    project.ok(&["stop", "app"]);
    assert_eq!(running_of(project, "app"), 0);
    project.ok(&["start", "app"]);
    assert_eq!(running_of(project, "app"), 1);
    let worker_before = ids_of(project, "worker");
    project.ok(&["restart", "worker"]);
    assert_eq!(ids_of(project, "worker"), worker_before);
    assert_eq!(running_of(project, "worker"), 1);

    project.ok(&["up", "-d", "--scale", "worker=3"]);
    assert_eq!(running_of(project, "worker"), 3);

    // A change to app only: app is recreated, web and the workers are kept.
    let (web_ids, worker_ids, app_ids) = (
        ids_of(project, "web"),
        ids_of(project, "worker"),
        ids_of(project, "app"),
    );
    let yaml = std::fs::read_to_string(project.dir().join("compose.yaml")).unwrap();
    project.write(
        "compose.yaml",
        &yaml.replace("GREETING: hi", "GREETING: changed"),
    );
    project.ok(&["up", "-d", "--scale", "worker=3"]);
    assert_eq!(ids_of(project, "web"), web_ids, "web was recreated");
    assert_eq!(
        ids_of(project, "worker"),
        worker_ids,
        "workers were recreated"
    );
    assert_ne!(ids_of(project, "app"), app_ids, "app was not recreated");
    wait_for_logs(project, "app", &["app starting changed from-env-file"]);
    // Both clients recreate web in place when asked (v1 by renaming the old one first).
    project.ok(&["up", "-d", "--force-recreate", "--no-deps", "web"]);
    assert_ne!(ids_of(project, "web"), web_ids, "web was not recreated");
    assert_eq!(running_of(project, "web"), 1);
    wait_for_logs(project, "app", &["via-alias hello from web"]);

    // events: the project's containers, as they change.
    let events = project.spawn(&["events", "--json"]);
    std::thread::sleep(Duration::from_millis(1500));
    project.ok(&["restart", "app"]);
    let seen = events.wait_for("\"start\"", Duration::from_secs(30));
    assert!(seen.contains("\"die\""), "{seen}");
    assert!(seen.contains(&app), "{seen}");
    drop(events);

    let mut follow = project.spawn(&["logs", "-f", "--no-color", "app"]);
    follow.wait_for("via-web", Duration::from_secs(30));
    project.ok(&["stop", "app"]);
    // logs -f ends when the followed containers stop.
    assert!(follow.wait(Duration::from_secs(30)).success());

    // `up` attached: each service's coloured stream; Ctrl-C stops the project.
    let mut attached = project.in_pty(&["up", "--scale", "worker=3"]);
    let prefix = match client {
        Client::V2 => "app-1  |".to_string(),
        Client::V1 => format!("{app} "),
    };
    let seen = attached.wait_for("via-alias", Duration::from_secs(60));
    assert!(seen.contains(&prefix), "{seen}");
    assert!(seen.contains("\u{1b}[3"), "no colour in:\n{seen}");
    attached.send("\u{3}");
    let (status, printed) = attached.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}: {printed}");
    for service in ["web", "app", "worker"] {
        assert_eq!(
            running_of(project, service),
            0,
            "{service} runs:\n{printed}"
        );
    }

    let down = project.ok(&["down", "-v"]);
    let printed = format!("{}{}", down.stdout, down.stderr);
    assert!(printed.contains("appdata"), "{printed}");
    assert_eq!(project.leftovers(), Vec::<String>::new());
    // down keeps what is not the project's: the bind mount's source and the images.
    assert!(project.dir().join("data/note.txt").exists());
    project.docker.ok(&["image", "inspect", web_image]);
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_v2_runs_a_project_from_build_to_down() {
    let (_net, docker) = env(41).await;
    let port = test_port(1);
    let subnet = format!("172.24.{}.0/24", std::process::id() % 250 + 1);
    let (project, web_image) = project(&docker, Client::V2, port, &subnet);
    project_flow(&project, &web_image, port);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_compose_1_29_runs_a_project_from_build_to_down() {
    let (_net, docker) = env(42).await;
    let port = test_port(2);
    let subnet = format!("172.25.{}.0/24", std::process::id() % 250 + 1);
    let (project, web_image) = project(&docker, Client::V1, port, &subnet);
    project_flow(&project, &web_image, port);
}

/// What a Compose user sees when `up` cannot work is dockerd's message, from both
/// clients: a host port already taken, an image that does not exist, a dependency
/// whose healthcheck fails.
#[tokio::test(flavor = "multi_thread")]
async fn compose_errors_are_dockerds() {
    let (_net, docker) = env(43).await;
    let image = docker.image.clone();
    docker.ok(&["pull", "-q", &image]);
    let port = test_port(3);
    let holder = unique("holder");
    let binding = format!("127.0.0.1:{port}:80");
    docker.ok(&[
        "run", "-d", "--name", &holder, "-p", &binding, &image, "sleep", "1000",
    ]);
    let missing = image.replace("test/busybox", "test/no-such-image");
    for client in [Client::V2, Client::V1] {
        let name = unique("cmperr").replace('-', "");
        let clash = Project::new(
            &docker,
            client,
            &name,
            &format!(
                "services:\n  clash:\n    image: {image}\n    command: [\"sleep\", \"1000\"]\n    \
                 ports: [\"127.0.0.1:{port}:80\"]\n"
            ),
        );
        let printed = clash.fails(&["up", "-d"]);
        assert!(
            printed.contains(&format!(
                "Bind for 127.0.0.1:{port} failed: port is already allocated"
            )),
            "{client:?}: {printed}"
        );
        clash.ok(&["down"]);
        assert_eq!(clash.leftovers(), Vec::<String>::new());

        let name = unique("cmperr").replace('-', "");
        let absent = Project::new(
            &docker,
            client,
            &name,
            &format!("services:\n  absent:\n    image: {missing}\n"),
        );
        let printed = absent.fails(&["up", "-d"]);
        assert!(
            printed.contains("test/no-such-image") && printed.contains("not found"),
            "{client:?}: {printed}"
        );
        assert!(!printed.contains("500"), "{client:?}: {printed}");
        absent.ok(&["down"]);

        let name = unique("cmperr").replace('-', "");
        let sick = Project::new(
            &docker,
            client,
            &name,
            &format!(
                "services:\n  sick:\n    image: {image}\n    command: [\"sleep\", \"1000\"]\n    \
                 stop_grace_period: 1s\n    healthcheck:\n      test: [\"CMD\", \"false\"]\n      \
                 interval: 1s\n      retries: 2\n  after:\n    image: {image}\n    \
                 command: [\"sleep\", \"1000\"]\n    depends_on:\n      sick:\n        \
                 condition: service_healthy\n"
            ),
        );
        let printed = sick.fails(&["up", "-d"]);
        assert!(printed.contains("unhealthy"), "{client:?}: {printed}");
        // v2 creates the dependent and never starts it; v1 does not create it.
        let after = format!("name={}", sick.container("after", 1));
        let state = docker.ok(&["ps", "-a", "--filter", &after, "--format", "{{.State}}"]);
        assert!(
            matches!(state.as_str(), "" | "created"),
            "{client:?}: {state}"
        );
        sick.ok(&["down", "-t", "1"]);
        assert_eq!(sick.leftovers(), Vec::<String>::new());
    }
    docker.ok(&["rm", "-f", &holder]);
}
