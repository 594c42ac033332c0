//! bollard (Docker's Rust SDK, a client wharf did not write) against wharfd's Docker
//! API: version negotiation, pull, create/start/wait with an exit code, logs, exec
//! with its output and exit code, pause, remove.

mod support;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use support::docker::DockerEnv;
use support::pods::unique;

#[tokio::test]
async fn bollard_runs_containers_and_execs() {
    let env = DockerEnv::start().await;
    let socket = env.socket();
    let docker = Docker::connect_with_unix(&socket.to_string_lossy(), 120, API_DEFAULT_VERSION)
        .expect("connect")
        .negotiate_version()
        .await
        .expect("negotiate the API version");
    let version = docker.version().await.expect("version");
    assert_eq!(version.api_version.as_deref(), Some("1.41"), "{version:?}");

    // Pull through the API, progress stream and all.
    let mut pull = docker.create_image(
        Some(
            CreateImageOptionsBuilder::default()
                .from_image(&env.image)
                .build(),
        ),
        None,
        None,
    );
    while let Some(progress) = pull.next().await {
        progress.expect("pull progress");
    }

    // Create, start, wait (exit 3), logs.
    let name = unique("bollard");
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            ContainerCreateBody {
                image: Some(env.image.clone()),
                cmd: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "echo hi; echo oops >&2; exit 3".into(),
                ]),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    docker
        .start_container(&created.id, None)
        .await
        .expect("start");
    let mut wait = docker.wait_container(
        &created.id,
        Some(
            WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build(),
        ),
    );
    match wait.next().await.expect("a wait answer") {
        Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => assert_eq!(code, 3),
        Ok(response) => assert_eq!(response.status_code, 3, "{response:?}"),
        Err(err) => panic!("wait: {err}"),
    }
    let mut logs = docker.logs(
        &created.id,
        Some(
            LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(line) = logs.next().await {
        match line.expect("a log frame") {
            bollard::container::LogOutput::StdOut { message } => out.extend_from_slice(&message),
            bollard::container::LogOutput::StdErr { message } => err.extend_from_slice(&message),
            _ => {}
        }
    }
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"hi\n"[..], &b"oops\n"[..])
    );
    docker
        .remove_container(&created.id, None)
        .await
        .expect("remove");

    // Exec: output of both streams and the exit code.
    let runner = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(env.image.clone()),
                cmd: Some(vec!["sleep".into(), "600".into()]),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    docker
        .start_container(&runner.id, None)
        .await
        .expect("start");
    let exec = docker
        .create_exec(
            &runner.id,
            CreateExecOptions {
                cmd: Some(vec!["sh", "-c", "echo from-exec; echo to-err >&2; exit 9"]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.expect("start exec")
    else {
        panic!("detached");
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(frame) = output.next().await {
        match frame.expect("an exec frame") {
            bollard::container::LogOutput::StdOut { message } => out.extend_from_slice(&message),
            bollard::container::LogOutput::StdErr { message } => err.extend_from_slice(&message),
            _ => {}
        }
    }
    assert_eq!(
        (out.as_slice(), err.as_slice()),
        (&b"from-exec\n"[..], &b"to-err\n"[..])
    );
    let inspected = docker.inspect_exec(&exec.id).await.expect("inspect exec");
    assert_eq!(inspected.exit_code, Some(9), "{inspected:?}");
    assert_eq!(inspected.running, Some(false));

    docker.pause_container(&runner.id).await.expect("pause");
    let state = docker
        .inspect_container(&runner.id, None)
        .await
        .expect("inspect")
        .state
        .expect("state");
    assert_eq!(state.paused, Some(true));
    docker.unpause_container(&runner.id).await.expect("unpause");
    docker
        .remove_container(
            &runner.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .expect("remove -f");
    // Errors come back with dockerd's status and message.
    let err = docker
        .inspect_container("no-such-container", None)
        .await
        .expect_err("missing");
    assert!(
        err.to_string()
            .contains("No such container: no-such-container"),
        "{err}"
    );
}
