//! CDI devices on every machine (no GPU needed): spec fixtures whose device nodes are
//! fake char devices made with mknod (with /dev/null's and /dev/zero's numbers, and one
//! with a number no driver has), reached through the CRI field, the `cdi.k8s.io/`
//! annotations (the tonic client and crictl) and the Docker API's `DeviceRequests`
//! (`docker run --device vendor.com/class=name` and `--gpus` over a fake nvidia.com/gpu
//! spec). Each test checks what the container sees: nodes at their paths with their
//! modes, mounts, env, hooks run; and the device cgroup: listed nodes usable, an unlisted
//! one denied. Bad input (unknown and malformed names, conflicting devices, malformed
//! spec files) is refused or reported and changes nothing.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use serde_json::Value;
use support::docker::DockerEnv;
use support::go_tools::crictl_ok;
use support::pods::{unique, wait_for_file, PodEnv};
use tonic::Code;

/// A number no driver has: usable (ENXIO on open) only where the device cgroup allows it.
const UNDRIVEN_MAJOR: u64 = 240;

/// Spec dirs (a low- and a high-priority one), fake device nodes, a directory to mount
/// and a place where the hooks write.
struct CdiFixture {
    dir: tempfile::TempDir,
}

impl CdiFixture {
    fn new() -> CdiFixture {
        support::daemon::require_root();
        let dir = tempfile::Builder::new()
            .prefix("wharf-cdi-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        for sub in ["low", "high", "nodes", "share", "marks"] {
            std::fs::create_dir_all(root.join(sub)).expect("fixture dir");
        }
        let node = |name: &str, major: u64, minor: u64, mode: u32| {
            let path = root.join("nodes").join(name);
            mknod(
                &path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(mode),
                makedev(major, minor),
            )
            .unwrap_or_else(|err| panic!("mknod {}: {err}", path.display()));
            // mknod applies the umask: set the mode the test expects to see.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .expect("chmod");
        };
        node("fake-null", 1, 3, 0o604);
        node("fake-zero", 1, 5, 0o666);
        node("fake-undriven", UNDRIVEN_MAJOR, 0, 0o666);
        for gpu in ["nvidia0", "nvidia1"] {
            node(gpu, 1, 3, 0o666);
        }
        std::fs::write(root.join("share/hello.txt"), "hello-from-cdi\n").expect("share file");

        let nodes = root.join("nodes");
        let marks = root.join("marks");
        let spec = format!(
            r#"cdiVersion: "0.6.0"
kind: "example.test/fake"
containerEdits:
  env: ["FAKE_VENDOR=wharf-test"]
  hooks:
    - hookName: createRuntime
      path: /bin/sh
      args: ["sh", "-c", "cat >> {marks}/create-runtime.log; echo >> {marks}/create-runtime.log"]
    - hookName: poststart
      path: /bin/sh
      args: ["sh", "-c", "cat >> {marks}/poststart.log; echo >> {marks}/poststart.log"]
    - hookName: poststop
      path: /bin/sh
      args: ["sh", "-c", "cat >> {marks}/poststop.log; echo >> {marks}/poststop.log"]
    - hookName: startContainer
      path: /bin/sh
      args: ["sh", "-c", "echo started-in-container > /tmp/start-container-hook"]
devices:
  - name: a
    containerEdits:
      env: ["FAKE_DEVICE=a"]
      deviceNodes:
        - path: /dev/fake-null
          hostPath: {nodes}/fake-null
        - path: /dev/fake-zero
          hostPath: {nodes}/fake-zero
          fileMode: 432
        - path: /dev/fake-undriven
          hostPath: {nodes}/fake-undriven
      mounts:
        - hostPath: {share}
          containerPath: /opt/fake
          options: ["ro", "bind"]
  - name: b
    containerEdits:
      env: ["FAKE_DEVICE_B=b"]
      deviceNodes:
        - path: /dev/fake-b
          hostPath: {nodes}/fake-zero
  - name: clash
    containerEdits:
      deviceNodes:
        - path: /dev/fake-null
          hostPath: {nodes}/fake-zero
"#,
            marks = marks.display(),
            nodes = nodes.display(),
            share = root.join("share").display(),
        );
        std::fs::write(root.join("high/fake.yaml"), spec).expect("spec");
        // Overridden by the high-priority dir's definition.
        std::fs::write(
            root.join("low/fake-old.json"),
            r#"{"cdiVersion":"0.3.0","kind":"example.test/fake","devices":[{"name":"a","containerEdits":{"env":["FAKE_DEVICE=from-the-low-dir"]}}]}"#,
        )
        .expect("low spec");
        // Malformed: skipped and reported, never hiding the others.
        std::fs::write(root.join("low/broken.yaml"), "cdiVersion: [not, a spec").expect("bad spec");
        CdiFixture { dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// The daemon's `[cdi]` section.
    fn config(&self) -> String {
        format!(
            "[cdi]\nspec_dirs = [{:?}, {:?}]\n",
            self.path("low").display().to_string(),
            self.path("high").display().to_string()
        )
    }

    /// A fake `nvidia.com/gpu` spec (GPUs 0 and 1 and `all`), as `nvidia-ctk cdi
    /// generate` lays them out.
    fn write_gpu_spec(&self) {
        let nodes = self.path("nodes");
        let spec = format!(
            r#"{{"cdiVersion":"0.5.0","kind":"nvidia.com/gpu",
"containerEdits":{{"env":["NVIDIA_VISIBLE_DEVICES=void"]}},
"devices":[
 {{"name":"0","containerEdits":{{"deviceNodes":[{{"path":"/dev/nvidia0","hostPath":"{n}/nvidia0"}}]}}}},
 {{"name":"1","containerEdits":{{"deviceNodes":[{{"path":"/dev/nvidia1","hostPath":"{n}/nvidia1"}}]}}}},
 {{"name":"all","containerEdits":{{"deviceNodes":[{{"path":"/dev/nvidia0","hostPath":"{n}/nvidia0"}},{{"path":"/dev/nvidia1","hostPath":"{n}/nvidia1"}}]}}}}
]}}"#,
            n = nodes.display()
        );
        std::fs::write(self.path("high/nvidia.json"), spec).expect("gpu spec");
    }
}

/// The checks every CDI container with device `a` passes, as one shell script: prints
/// one line per fact.
const DEVICE_A_CHECKS: &str = "stat -c '%n %a %t:%T' /dev/fake-null /dev/fake-zero; \
     echo written > /dev/fake-null && echo write-null-ok; \
     head -c 4 /dev/fake-zero | wc -c; \
     cat /dev/fake-undriven 2>&1 | sed 's/^.*: //'; \
     mknod /tmp/unlisted c 241 0 && (cat /tmp/unlisted 2>&1 | sed 's/^.*: //'); \
     cat /opt/fake/hello.txt; \
     touch /opt/fake/x 2>/dev/null || echo mount-read-only; \
     echo env=$FAKE_VENDOR,$FAKE_DEVICE";

fn assert_device_a(output: &str) {
    for expected in [
        "/dev/fake-null 604 1:3",
        "/dev/fake-zero 660 1:5",
        "write-null-ok",
        "hello-from-cdi",
        "mount-read-only",
        "env=wharf-test,a",
    ] {
        assert!(
            output.contains(expected),
            "missing {expected:?} in:\n{output}"
        );
    }
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    assert!(lines.contains(&"4"), "reading the zero node:\n{output}");
    // Listed: the cgroup lets the open reach the (absent) driver. Unlisted: denied.
    assert!(
        lines.contains(&"No such device or address"),
        "the listed node with no driver:\n{output}"
    );
    assert!(
        lines.contains(&"Operation not permitted"),
        "the unlisted node is denied by the device cgroup:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_field_and_annotations_give_nodes_mounts_env_and_hooks() {
    let fixture = CdiFixture::new();
    let mut env = PodEnv::start_with_config(&fixture.config()).await;
    let pod = env.pod_config("cdi");
    let pod_id = env.run_pod(&pod).await;
    let mut config = env.container_config("gpu", &["sleep", "3600"]);
    config.cdi_devices = vec![cri::CdiDevice {
        name: "example.test/fake=a".into(),
    }];
    // The older annotations: b, and a again (applied once).
    config.annotations = HashMap::from([(
        "cdi.k8s.io/fake-plugin_dev".to_string(),
        "example.test/fake=b,example.test/fake=a".to_string(),
    )]);
    let id = env.run(&pod_id, &pod, &config).await;

    let output = env.exec_ok(&id, &["sh", "-c", DEVICE_A_CHECKS]).await;
    assert_device_a(&output);
    let b = env
        .exec_ok(
            &id,
            &[
                "sh",
                "-c",
                "stat -c '%t:%T' /dev/fake-b; echo $FAKE_DEVICE_B",
            ],
        )
        .await;
    assert_eq!(b, "1:5\nb", "device b from the annotation");
    assert_eq!(
        env.exec_ok(&id, &["cat", "/tmp/start-container-hook"])
            .await,
        "started-in-container"
    );
    // The host-side hooks got the container's state (its ID) on stdin.
    let marks = fixture.path("marks");
    wait_for_file(&marks.join("create-runtime.log"), |t| t.contains(&id)).await;
    wait_for_file(&marks.join("poststart.log"), |t| t.contains(&id)).await;
    env.stop_container(&id, 0).await;
    env.remove_container(&id).await;
    wait_for_file(&marks.join("poststop.log"), |t| t.contains(&id)).await;

    // A container without the devices sees none of them.
    let plain = env
        .run(
            &pod_id,
            &pod,
            &env.container_config("plain", &["sleep", "3600"]),
        )
        .await;
    let none = env
        .exec_ok(
            &plain,
            &[
                "sh",
                "-c",
                "ls /dev/fake-null /opt/fake 2>&1; echo env=$FAKE_VENDOR",
            ],
        )
        .await;
    assert!(
        none.contains("No such file") && none.ends_with("env="),
        "{none}"
    );
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_and_the_runc_handler_apply_cdi_devices() {
    support::require_installed("/usr/sbin/runc", "runc");
    let fixture = CdiFixture::new();
    let env = PodEnv::start_with_config(&fixture.config()).await;
    let socket = env.daemon.paths.cri_socket.clone();
    let name = unique("crictl-cdi");
    let pod = serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "log_directory": env.logs.path().join(&name).display().to_string(),
        "linux": {}
    });
    let container = serde_json::json!({
        "metadata": {"name": "main"},
        "image": {"image": env.image},
        "command": ["sleep", "3600"],
        "CDI_devices": [{"name": "example.test/fake=a"}],
        "log_path": "main.log",
        "linux": {}
    });
    let dir = fixture.path("marks");
    let pod_file = dir.join("pod.json");
    let container_file = dir.join("container.json");
    std::fs::write(&pod_file, pod.to_string()).expect("pod.json");
    std::fs::write(&container_file, container.to_string()).expect("container.json");
    let (pod_file, container_file) = (
        pod_file.display().to_string(),
        container_file.display().to_string(),
    );
    let pod_id = crictl_ok(&socket, &["runp", "--runtime", "runc", &pod_file])
        .trim()
        .to_string();
    let id = crictl_ok(&socket, &["create", &pod_id, &container_file, &pod_file])
        .trim()
        .to_string();
    crictl_ok(&socket, &["start", &id]);
    let output = crictl_ok(
        &socket,
        &["exec", "--sync", &id, "sh", "-c", DEVICE_A_CHECKS],
    );
    assert_device_a(&output);
    wait_for_file(&fixture.path("marks/create-runtime.log"), |t| {
        t.contains(&id)
    })
    .await;
    crictl_ok(&socket, &["rm", "-f", &id]);
    wait_for_file(&fixture.path("marks/poststop.log"), |t| t.contains(&id)).await;
    crictl_ok(&socket, &["rmp", "-f", &pod_id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_cdi_input_is_refused_and_bad_specs_are_reported() {
    let fixture = CdiFixture::new();
    let mut env = PodEnv::start_with_config(&fixture.config()).await;
    let pod = env.pod_config("cdi-bad");
    let pod_id = env.run_pod(&pod).await;
    let try_create = |names: &[&str], annotation: Option<&str>| {
        let mut config = env.container_config("bad", &["sleep", "3600"]);
        config.cdi_devices = names
            .iter()
            .map(|n| cri::CdiDevice {
                name: n.to_string(),
            })
            .collect();
        if let Some(value) = annotation {
            config.annotations = HashMap::from([("cdi.k8s.io/x".to_string(), value.to_string())]);
        }
        config
    };

    let low = fixture.path("low").display().to_string();
    let high = fixture.path("high").display().to_string();
    for (config, wanted) in [
        (
            try_create(&["example.test/fake=nope"], None),
            vec!["example.test/fake=nope", "do not define it", &low, &high],
        ),
        (
            try_create(&["example.test/other=0"], None),
            vec!["no CDI spec for example.test/other", &low, "broken.yaml"],
        ),
        (
            try_create(&["not-a-cdi-name"], None),
            vec![
                "CDI_devices[0].name",
                "not-a-cdi-name",
                "vendor.com/class=name",
            ],
        ),
        (
            try_create(&[], Some("example.test/fake=a,bogus")),
            vec!["annotations", "cdi.k8s.io/x", "bogus"],
        ),
        (
            try_create(&["example.test/fake=a", "example.test/fake=clash"], None),
            vec!["conflict", "example.test/fake=clash", "/dev/fake-null"],
        ),
    ] {
        let err = env.create(&pod_id, &pod, &config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        for part in wanted {
            assert!(
                err.message().contains(part),
                "{part:?} not in {:?}",
                err.message()
            );
        }
    }
    let left = env.list_containers(cri::ContainerFilter::default()).await;
    assert!(left.is_empty(), "a refused create left {left:?}");

    // The malformed spec is in Status(verbose), beside the devices that work.
    let status = env
        .rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("Status")
        .into_inner();
    let cdi: Value = serde_json::from_str(&status.info["cdi"]).expect("cdi info is JSON");
    let errors = cdi["specErrors"].as_array().expect("specErrors");
    assert!(
        errors.len() == 1
            && errors[0]["path"]
                .as_str()
                .unwrap()
                .ends_with("low/broken.yaml"),
        "{cdi}"
    );
    let devices: Vec<&str> = cdi["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices,
        [
            "example.test/fake=a",
            "example.test/fake=b",
            "example.test/fake=clash"
        ]
    );
    assert!(
        env.daemon.log().contains("broken.yaml"),
        "the log names the bad spec"
    );

    // A spec written after the daemon started is used without a restart.
    fixture.write_gpu_spec();
    let mut late = env.container_config("late", &["sleep", "3600"]);
    late.cdi_devices = vec![cri::CdiDevice {
        name: "nvidia.com/gpu=1".into(),
    }];
    let id = env.run(&pod_id, &pod, &late).await;
    assert_eq!(
        env.exec_ok(
            &id,
            &["sh", "-c", "ls /dev/nvidia*; echo $NVIDIA_VISIBLE_DEVICES"]
        )
        .await,
        "/dev/nvidia1\nvoid"
    );
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_device_requests_gpus_and_devices() {
    let fixture = CdiFixture::new();
    let docker = DockerEnv::start_with_config(&fixture.config()).await;
    docker.ok(&["pull", "-q", &docker.image]);
    let image = docker.image.clone();

    let dirs = docker.ok(&["info", "--format", "{{json .CDISpecDirs}}"]);
    assert_eq!(
        dirs.trim(),
        serde_json::json!([fixture.path("low"), fixture.path("high")]).to_string()
    );

    // `--device vendor.com/class=name`: the CLI sends a "cdi" DeviceRequest.
    let name = unique("cdi-docker");
    let output = docker.ok(&[
        "run",
        "--name",
        &name,
        "--device",
        "example.test/fake=a",
        &image,
        "sh",
        "-c",
        DEVICE_A_CHECKS,
    ]);
    assert_device_a(&output);
    let requests = docker.ok(&[
        "inspect",
        "-f",
        "{{json .HostConfig.DeviceRequests}}",
        &name,
    ]);
    assert!(
        requests.contains("\"Driver\":\"cdi\"") && requests.contains("example.test/fake=a"),
        "{requests}"
    );
    docker.ok(&["rm", &name]);

    // --gpus before any nvidia.com/gpu spec exists: dockerd-like advice, nothing made.
    let before = docker.ok(&["ps", "-aq"]);
    let err = docker.fails(&["run", "--rm", "--gpus", "all", &image, "true"]);
    assert!(
        err.contains("no CDI spec for nvidia.com/gpu in")
            && err.contains(&fixture.path("high").display().to_string())
            && err.contains("nvidia-ctk cdi generate"),
        "{err}"
    );
    assert_eq!(docker.ok(&["ps", "-aq"]), before);

    fixture.write_gpu_spec();
    let gpus = |flag: &str| {
        docker
            .ok(&[
                "run",
                "--rm",
                "--gpus",
                flag,
                &image,
                "sh",
                "-c",
                "ls /dev/nvidia*",
            ])
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(gpus("all"), ["/dev/nvidia0", "/dev/nvidia1"]);
    assert_eq!(gpus("1"), ["/dev/nvidia0"]);
    assert_eq!(gpus("device=1"), ["/dev/nvidia1"]);
    assert_eq!(gpus("\"device=0,1\""), ["/dev/nvidia0", "/dev/nvidia1"]);
    let err = docker.fails(&["run", "--rm", "--gpus", "3", &image, "true"]);
    assert!(
        err.contains("3 nvidia.com/gpu devices were asked for"),
        "{err}"
    );
    let err = docker.fails(&["run", "--rm", "--gpus", "device=7", &image, "true"]);
    assert!(err.contains("nvidia.com/gpu=7"), "{err}");

    // `--device /host:/ctr:r`: the cgroup rule lets the node be opened for reading
    // (reaching its absent driver), not for writing.
    let zero = fixture.path("nodes/fake-zero").display().to_string();
    let undriven = fixture.path("nodes/fake-undriven").display().to_string();
    let output = docker.ok(&[
        "run", "--rm", "--device", &format!("{undriven}:/dev/myundriven:r"), &image, "sh",
        "-c", "cat /dev/myundriven 2>&1 | sed 's/^.*: //'; (echo x > /dev/myundriven) 2>&1 | sed 's/^.*: //'",
    ]);
    assert_eq!(output, "No such device or address\nOperation not permitted");
    let err = docker.fails(&[
        "run",
        "--rm",
        "--device",
        "/dev/no-such-node",
        &image,
        "true",
    ]);
    assert!(err.contains("/dev/no-such-node"), "{err}");

    // Raw API: an unknown driver and a malformed CDI name are 400s naming them.
    for (body, wanted) in [
        (
            serde_json::json!({"Image": image, "HostConfig": {"DeviceRequests": [
                {"Driver": "tpu", "Count": 1, "Capabilities": [["tpu"]]}]}}),
            "could not select device driver \"tpu\" with capabilities: [[tpu]]",
        ),
        (
            serde_json::json!({"Image": image, "HostConfig": {"DeviceRequests": [
                {"Driver": "cdi", "DeviceIDs": ["bad name"]}]}}),
            "bad name",
        ),
        (
            serde_json::json!({"Image": image, "HostConfig": {"Devices": [
                {"PathOnHost": zero, "PathInContainer": "/dev/z", "CgroupPermissions": "rwx"}]}}),
            "invalid device mode: rwx",
        ),
    ] {
        let (status, _, text) =
            docker.http("POST", "/v1.41/containers/create", Some(&body.to_string()));
        assert_eq!(status, 400, "{text}");
        let message: Value = serde_json::from_str(&text).expect("a JSON error");
        let message = message["message"].as_str().unwrap_or_default();
        assert!(message.contains(wanted), "{wanted:?} not in {message:?}");
    }
    assert_eq!(docker.ok(&["ps", "-aq"]), before);
}

/// e2e/gpu.sh, the real-GPU proof: it skips cleanly where there is no GPU, and its whole
/// path (spec written from the nodes found, image built from host files and loaded, CRI
/// and Docker containers with and without the device) passes on fake nodes and a
/// stand-in nvidia-smi.
#[test]
fn gpu_e2e_script_skips_without_a_gpu_and_passes_on_fake_devices() {
    support::daemon::require_root();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/gpu.sh");
    let empty = tempfile::tempdir().expect("temp dir");
    let skipped = std::process::Command::new(&script)
        .env("GPU_E2E_DEV_DIR", empty.path())
        .output()
        .expect("run e2e/gpu.sh");
    assert!(skipped.status.success(), "{skipped:?}");
    assert_eq!(
        String::from_utf8_lossy(&skipped.stdout),
        "no NVIDIA GPU: skipped\n"
    );

    let fixture = CdiFixture::new();
    let dev = fixture.path("fake-dev");
    std::fs::create_dir_all(&dev).expect("fake dev dir");
    for (name, minor) in [("nvidia0", 3), ("nvidiactl", 3), ("nvidia-uvm", 5)] {
        mknod(
            &dev.join(name),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, minor),
        )
        .expect("mknod");
    }
    let smi = fixture.path("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0f0f0f0f-1111-2222-3333-444444444444)'\n",
    )
    .expect("stand-in nvidia-smi");
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let bin_dir = Path::new(support::daemon::wharfd_binary())
        .parent()
        .expect("the binaries' dir");
    let run = std::process::Command::new(&script)
        .env("GPU_E2E_DEV_DIR", &dev)
        .env("GPU_E2E_NVIDIA_SMI", &smi)
        .env("WHARF_BIN_DIR", bin_dir)
        .env("GPU_E2E_DRIVER", support::go_tools::go_tool("gpu-e2e"))
        .output()
        .expect("run e2e/gpu.sh");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "e2e/gpu.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for line in [
        "PASS CRI CDI_devices nvidia.com/gpu=all runs nvidia-smi -L",
        "PASS Docker --gpus all runs nvidia-smi -L",
        "PASS a container without the device sees no GPU",
        "ALL PASSED",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    assert_eq!(stdout.matches("GPU 0: Fake GPU").count(), 3, "{stdout}");
}

/// `wharf cdi list`: the devices wharfd finds, with their specs, and the skipped spec on
/// stderr.
#[tokio::test(flavor = "multi_thread")]
async fn wharf_cdi_list_shows_devices_and_skipped_specs() {
    let fixture = CdiFixture::new();
    let env = PodEnv::start_with_config(&fixture.config()).await;
    let output = std::process::Command::new(support::daemon::wharf_binary())
        .args(["--cri-socket"])
        .arg(&env.daemon.paths.cri_socket)
        .args(["cdi", "list"])
        .output()
        .expect("run wharf cdi list");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let spec = fixture.path("high/fake.yaml").display().to_string();
    assert_eq!(
        rows,
        [
            vec!["DEVICE", "SPEC"],
            vec!["example.test/fake=a", spec.as_str()],
            vec!["example.test/fake=b", spec.as_str()],
            vec!["example.test/fake=clash", spec.as_str()],
        ]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "skipped spec {}: ",
            fixture.path("low/broken.yaml").display()
        )),
        "{stderr}"
    );
}
