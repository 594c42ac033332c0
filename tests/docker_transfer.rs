//! Pulls and pushes through the Docker API with dockerd's JSON progress stream (issue
//! 18): per layer `Pulling fs layer`, `Downloading` (bytes), `Verifying Checksum`,
//! `Download complete`, `Extracting`, `Pull complete` or `Already exists`; `docker push`
//! with the real CLI (`Preparing`, `Pushing`, `Pushed`, `Layer already exists`, `Mounted
//! from`, the digest line), credentials from the CLI's config file for a registry that
//! requires them, and the pushed image pulled back identical.

mod support;

use base64::Engine as _;
use serde_json::Value;
use support::docker::DockerEnv;
use support::images::{ImageBuilder, LayerBuilder};
use support::incompressible;
use support::pods::unique;
use support::registry::Registry;

/// The JSON messages of a progress stream, one a line.
fn messages(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {body}")))
        .collect()
}

fn short(digest: &str) -> String {
    digest.trim_start_matches("sha256:")[..12].to_string()
}

fn statuses_of<'a>(messages: &'a [Value], id: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["id"] == id).collect()
}

#[tokio::test]
async fn pull_streams_each_layers_progress() {
    let docker = DockerEnv::start().await;
    let registry = &docker.env.registry;
    // Five layers: the busybox base (already here: the environment pulled it through
    // the CRI, and content is shared), a 3 MB one and three small ones.
    let image = ImageBuilder::busybox()
        .layer(LayerBuilder::new().file("big.bin", incompressible(3 << 20, 7)))
        .layer(LayerBuilder::new().file("one.txt", "1"))
        .layer(LayerBuilder::new().file("two.txt", "2"))
        .layer(LayerBuilder::new().file("three.txt", "3"))
        .build();
    assert_eq!(image.layers.len(), 5);
    registry.push("test/layers", "5", &image).await;
    let path = format!(
        "/v1.41/images/create?fromImage={}/test/layers&tag=5",
        registry.host()
    );
    let (status, head, body) = docker.http("POST", &path, None);
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let pulled = messages(&body);
    assert_eq!(pulled[0]["status"], "Pulling from test/layers", "{body}");
    assert_eq!(pulled[0]["id"], "5");
    let base = &image.layers[0];
    let base_steps = statuses_of(&pulled, &short(&base.digest));
    assert_eq!(base_steps.len(), 1, "{body}");
    assert_eq!(base_steps[0]["status"], "Already exists");
    let order = [
        "Pulling fs layer",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
        "Pull complete",
    ];
    for layer in &image.layers[1..] {
        let steps = statuses_of(&pulled, &short(&layer.digest));
        let names: Vec<&str> = steps.iter().filter_map(|m| m["status"].as_str()).collect();
        let mut ranks: Vec<usize> = names
            .iter()
            .map(|name| {
                order
                    .iter()
                    .position(|o| o == name)
                    .unwrap_or_else(|| panic!("unexpected step {name} in {body}"))
            })
            .collect();
        assert_eq!(names.first(), Some(&"Pulling fs layer"), "{names:?}");
        assert_eq!(names.last(), Some(&"Pull complete"), "{names:?}");
        for step in order {
            assert!(
                names.contains(&step),
                "{step} missing for a layer: {names:?}"
            );
        }
        let sorted = {
            let mut r = ranks.clone();
            r.sort();
            r
        };
        assert_eq!(ranks, sorted, "steps out of order: {names:?}");
        ranks.dedup();
        // Downloading counts up to the blob's size.
        let counts: Vec<(u64, u64)> = steps
            .iter()
            .filter(|m| m["status"] == "Downloading")
            .map(|m| {
                (
                    m["progressDetail"]["current"].as_u64().unwrap_or(0),
                    m["progressDetail"]["total"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert!(counts.windows(2).all(|w| w[0].0 < w[1].0), "{counts:?}");
        assert_eq!(counts.last(), Some(&(layer.size, layer.size)), "{counts:?}");
        if layer.size > 1 << 20 {
            assert!(
                counts.len() >= 3,
                "a 3 MB layer reports as it goes: {counts:?}"
            );
            let progress = steps
                .iter()
                .find(|m| m["status"] == "Downloading")
                .and_then(|m| m["progress"].as_str())
                .unwrap_or_default();
            assert!(
                progress.starts_with('[') && progress.contains("MB"),
                "{progress}"
            );
        }
    }
    let n = pulled.len();
    assert_eq!(
        pulled[n - 2]["status"],
        format!("Digest: {}", image.manifest_digest)
    );
    assert_eq!(
        pulled[n - 1]["status"],
        format!(
            "Status: Downloaded newer image for {}/test/layers:5",
            registry.host()
        )
    );
    // The image runs: its layers are all there.
    let reference = format!("{}/test/layers:5", registry.host());
    let out = docker.ok(&[
        "run",
        "--rm",
        &reference,
        "cat",
        "one.txt",
        "two.txt",
        "three.txt",
    ]);
    assert_eq!(out, "123");

    // Again: every layer already exists.
    let (status, _, body) = docker.http("POST", &path, None);
    assert_eq!(status, 200, "{body}");
    let again = messages(&body);
    for layer in &image.layers {
        let steps = statuses_of(&again, &short(&layer.digest));
        assert_eq!(steps.len(), 1, "{body}");
        assert_eq!(steps[0]["status"], "Already exists");
    }
    assert!(body.contains("Status: Image is up to date for"), "{body}");

    // The CLI prints the steps (no terminal: a line each).
    docker.ok(&["rmi", &reference]);
    let out = docker.ok(&["pull", &reference]);
    assert!(
        out.contains(&format!(
            "{}: Pull complete",
            short(&image.layers[4].digest)
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: Already exists", short(&base.digest))),
        "{out}"
    );
    assert!(
        out.contains(&format!("Digest: {}", image.manifest_digest)),
        "{out}"
    );

    // A tag the registry does not have: the HTTP error, before any stream.
    let absent = format!(
        "/v1.41/images/create?fromImage={}/test/layers&tag=absent",
        registry.host()
    );
    let (status, _, body) = docker.http("POST", &absent, None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("test/layers"), "{body}");
}

#[tokio::test]
async fn push_with_the_cli_and_pull_back() {
    let docker = DockerEnv::start_pulled().await;
    let registry = &docker.env.registry;
    let host = registry.host();
    // The test image and one more layer, made by `docker commit`.
    let name = unique("pushsrc");
    docker.ok(&[
        "run",
        "--name",
        &name,
        &docker.image,
        "sh",
        "-c",
        "echo pushed > /marker",
    ]);
    let repo = format!("{host}/pushed/{}", unique("app"));
    let target = format!("{repo}:v1");
    docker.ok(&["commit", &name, &target]);
    docker.ok(&["rm", &name]);

    let out = docker.ok(&["push", &target]);
    assert!(
        out.contains(&format!("The push refers to repository [{repo}]")),
        "{out}"
    );
    // The base layer is in the registry's test/busybox: mounted, not uploaded; the
    // committed layer is pushed.
    assert!(out.contains(": Mounted from test/busybox"), "{out}");
    assert!(out.contains(": Pushed"), "{out}");
    let repo_path = repo.split_once('/').map(|(_, p)| p).unwrap_or_default();
    let (manifest, _, digest) = registry.get_manifest(repo_path, "v1").await;
    assert!(
        out.contains(&format!("v1: digest: {digest} size: {}", manifest.len())),
        "{out}"
    );

    // Again: nothing to upload.
    let out = docker.ok(&["push", &target]);
    assert!(out.contains(": Layer already exists"), "{out}");
    assert!(!out.contains(": Pushed"), "{out}");

    // Pulled back after removal: the same manifest.
    docker.ok(&["rmi", &target]);
    let out = docker.ok(&["pull", &target]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    let marker = docker.ok(&["run", "--rm", &target, "cat", "/marker"]);
    assert_eq!(marker, "pushed");

    // An image that is not here: dockerd's message, nothing pushed.
    let err = docker.fails(&["push", &format!("{host}/pushed/none:v1")]);
    assert!(
        err.contains(&format!(
            "An image does not exist locally with the tag: {host}/pushed/none"
        )),
        "{err}"
    );
    // A tag in the name and the tag parameter is refused.
    let (status, _, body) =
        docker.http("POST", &format!("/v1.41/images/{target}/push?tag=v1"), None);
    assert_eq!(status, 400, "{body}");
    // The pushes are in the event log.
    let until = (chrono::Utc::now().timestamp() + 1).to_string();
    let events = docker.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &until,
        "--filter",
        "event=push",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ]);
    assert!(events.lines().any(|l| l.starts_with("push ")), "{events}");
}

#[tokio::test]
async fn push_to_a_registry_that_requires_credentials() {
    let docker = DockerEnv::start_pulled().await;
    let (user, password) = ("pusher", "pa55-w0rd");
    let private = Registry::start_with_basic_auth(user, password).await;
    let target = format!("{}/team/app:1", private.host());
    docker.ok(&["tag", &docker.image, &target]);

    // No credentials: the registry's refusal ends the stream, and the CLI fails.
    let err = docker.fails(&["push", &target]);
    assert!(
        err.contains(&format!(
            "authentication failed for registry {}",
            private.host()
        )),
        "{err}"
    );
    assert!(!err.contains(password));

    // `docker login`: wharfd checks the credentials (POST /auth); a wrong password is
    // refused and nothing is stored.
    let login = |secret: &str| {
        docker.shell(&format!(
            "printf '%s' '{secret}' | \"$DOCKER\" login {} -u {user} --password-stdin",
            private.host()
        ))
    };
    let refused = login("wrong-password");
    assert_ne!(refused.status, 0, "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("authentication failed for registry"),
        "{}",
        refused.stderr
    );
    assert!(
        !docker.config_dir().join("config.json").exists()
            || !std::fs::read_to_string(docker.config_dir().join("config.json"))
                .unwrap_or_default()
                .contains(&private.host())
    );
    let accepted = login(password);
    assert_eq!(accepted.status, 0, "{}{}", accepted.stdout, accepted.stderr);
    assert!(
        accepted.stdout.contains("Login Succeeded"),
        "{}",
        accepted.stdout
    );
    // The CLI stored them and sends them in X-Registry-Auth.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let stored = std::fs::read_to_string(docker.config_dir().join("config.json"))
        .expect("the CLI's config.json");
    assert!(stored.contains(&auth), "{stored}");
    let out = docker.ok(&["push", &target]);
    assert!(out.contains(": Pushed"), "{out}");
    let (_, _, digest) = private.get_manifest("team/app", "1").await;
    assert!(out.contains(&format!("1: digest: {digest}")), "{out}");
    let log = docker.env.daemon.log();
    assert!(!log.contains(password), "the password reached wharfd's log");
    assert!(!log.contains(&auth), "the credentials reached wharfd's log");

    // Search needs Docker Hub's API, which wharf does not call: a clear refusal.
    let err = docker.fails(&["search", "busybox"]);
    assert!(
        err.contains("searching registries is not supported by wharf"),
        "{err}"
    );
}
