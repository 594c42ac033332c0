//! The monitor control channel against a real wharfd (issue 16, step 5): containers
//! created through the CRI with `stdin`, `stdin_once` and `tty` are fed input and read
//! through `wharf::runtime::monitor_control`, with the built-in runtime and with runc,
//! through bundle paths longer than a socket address, and after wharfd was killed with
//! SIGKILL and started again.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use support::pods::{wait_for_file, PodEnv};
use wharf::error::{ErrorKind, HasKind};
use wharf::runtime::monitor_control::{self, AttachStreams, Event, Events, Session};

const WAIT: Duration = Duration::from_secs(20);

const ALL: AttachStreams = AttachStreams {
    stdin: true,
    stdout: true,
    stderr: true,
};
const STDIN_STDOUT: AttachStreams = AttachStreams {
    stdin: true,
    stdout: true,
    stderr: false,
};
const STDOUT: AttachStreams = AttachStreams {
    stdin: false,
    stdout: true,
    stderr: false,
};

fn bundle(env: &PodEnv, id: &str) -> PathBuf {
    env.daemon.paths.state.join("containers").join(id)
}

async fn connect(env: &PodEnv, id: &str) -> Session {
    monitor_control::connect(&bundle(env, id), id)
        .await
        .unwrap_or_else(|err| panic!("connect to the monitor of {id}: {err}"))
}

async fn attach(env: &PodEnv, id: &str, streams: AttachStreams) -> Session {
    let session = connect(env, id).await;
    session
        .control
        .attach(streams)
        .await
        .unwrap_or_else(|err| panic!("attach {streams:?} to {id}: {err}"));
    session
}

/// What a session saw: output of both streams, and the exit once it came.
#[derive(Default)]
struct Seen {
    stdout: String,
    stderr: String,
    exit: Option<(i32, Option<i32>)>,
}

/// Reads events until `done` holds for what was seen; panics after [`WAIT`].
async fn read_until(
    events: &mut Events,
    seen: &mut Seen,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match tokio::time::timeout(left, events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(err))) => panic!(
                "waiting for {what}: session error {err}; stdout so far {:?}",
                seen.stdout
            ),
            Ok(None) => panic!(
                "waiting for {what}: session ended; stdout {:?}",
                seen.stdout
            ),
            Err(_) => panic!(
                "waiting for {what}: nothing within {WAIT:?}; stdout {:?} stderr {:?}",
                seen.stdout, seen.stderr
            ),
        };
        match event {
            Event::Stdout(data) => seen.stdout.push_str(&String::from_utf8_lossy(&data)),
            Event::Stderr(data) => seen.stderr.push_str(&String::from_utf8_lossy(&data)),
            Event::Exit { exit_code, signal } => seen.exit = Some((exit_code, signal)),
        }
    }
}

async fn read_stdout(events: &mut Events, seen: &mut Seen, needle: &str) {
    read_until(events, seen, needle, |s| s.stdout.contains(needle)).await;
}

async fn read_exit(events: &mut Events, seen: &mut Seen) -> (i32, Option<i32>) {
    read_until(events, seen, "the exit", |s| s.exit.is_some()).await;
    let exit = seen.exit.expect("exit");
    // The exit is the last event.
    assert!(
        tokio::time::timeout(WAIT, events.next())
            .await
            .expect("the session ends after the exit")
            .is_none(),
        "an event after the exit"
    );
    exit
}

fn with_stdio(
    mut config: cri::ContainerConfig,
    stdin: bool,
    stdin_once: bool,
    tty: bool,
) -> cri::ContainerConfig {
    config.stdin = stdin;
    config.stdin_once = stdin_once;
    config.tty = tty;
    config
}

/// A pod with the given runtime handler and one started container.
async fn run_one(
    env: &mut PodEnv,
    handler: &str,
    name: &str,
    config: &cri::ContainerConfig,
) -> (cri::PodSandboxConfig, String, String) {
    let pod = env.pod_config(name);
    let pod_id = env
        .run_pod_with(&pod, handler)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox with handler {handler:?}: {e:?}"));
    let id = env.run(&pod_id, &pod, config).await;
    (pod, pod_id, id)
}

fn log_lines(
    env: &PodEnv,
    pod: &cri::PodSandboxConfig,
    name: &str,
) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(env.log_path(pod, name)).unwrap_or_default();
    support::pods::parse_log(&text)
}

/// A state dir so deep that no socket path inside it fits in `sun_path` (108 bytes).
fn long_state() -> PathBuf {
    let long: PathBuf = (0..4)
        .map(|i| format!("a-long-state-directory-name-{i}-xxxxxxxxxxxxxxxxxxxx"))
        .collect();
    assert!(long.as_os_str().len() > 150);
    long
}

/// stdin without a TTY: the container's stdin stays open while nobody is attached,
/// input goes in, output comes out on both streams and into the CRI log, CloseStdin
/// gives EOF, and the exit ends the session.
async fn stdin_pipe(handler: &str) {
    // The Docker API socket would go in the state dir, where it cannot fit: off.
    let mut env =
        PodEnv::start_with_state("[docker]\nenabled = false\n", Some(&long_state())).await;
    let name = "echo";
    let config = with_stdio(
        env.container_config(
            name,
            &[
                "sh",
                "-c",
                "while read line; do echo got:$line; echo err:$line >&2; done; echo bye",
            ],
        ),
        true,
        false,
        false,
    );
    let (pod, pod_id, id) = run_one(&mut env, handler, "attach-pipe", &config).await;
    let bundle = bundle(&env, &id);
    assert!(
        bundle.join("control/monitor.sock").as_os_str().len() > 108,
        "the test needs a bundle path over sun_path: {}",
        bundle.display()
    );
    // Nobody attached yet: stdin is open, so `read` waits instead of seeing EOF.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.status(&id).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "the container saw EOF on a stdin nobody closed"
    );

    let session = attach(&env, &id, ALL).await;
    let info = session.info().clone();
    assert!(info.stdin && !info.stdin_once && !info.tty && info.stdin_open && info.running);
    let (control, mut events) = session.into_parts();
    let mut seen = Seen::default();
    control.write_stdin(b"hello\n").await.expect("write");
    read_stdout(&mut events, &mut seen, "got:hello\n").await;
    read_until(&mut events, &mut seen, "stderr", |s| {
        s.stderr.contains("err:hello\n")
    })
    .await;
    control.write_stdin(b"wor").await.expect("write");
    control.write_stdin(b"ld\n").await.expect("write");
    read_stdout(&mut events, &mut seen, "got:world\n").await;
    control.close_stdin().await.expect("CloseStdin");
    read_stdout(&mut events, &mut seen, "bye").await;
    assert_eq!(read_exit(&mut events, &mut seen).await, (0, None));
    assert_eq!(seen.stdout, "got:hello\ngot:world\nbye\n");

    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 0);
    let lines = log_lines(&env, &pod, name);
    for (stream, text) in [
        ("stdout", "got:hello"),
        ("stderr", "err:hello"),
        ("stdout", "got:world"),
        ("stdout", "bye"),
    ] {
        assert!(
            lines
                .iter()
                .any(|(s, t, x)| s == stream && t == "F" && x == text),
            "{stream} {text:?} is not in the CRI log: {lines:?}"
        );
    }
    assert!(
        !bundle.join("control/monitor.sock").exists(),
        "the socket outlived its monitor"
    );
    // An exited container has no channel: FailedPrecondition, naming it.
    let err = monitor_control::connect(&bundle, &id)
        .await
        .expect_err("connect to an exited container");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains(&id), "{err}");
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_pipe_builtin() {
    stdin_pipe("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_pipe_runc() {
    support::require_installed("/usr/sbin/runc", "runc");
    stdin_pipe("runc").await;
}

/// A TTY: output (stdout and stderr alike) comes through the PTY into the session and
/// the CRI log as stdout, input goes in, Resize sets what `stty size` prints, CloseStdin
/// sends the terminal's EOF, and stderr cannot be attached.
async fn tty(handler: &str) {
    let mut env = PodEnv::start().await;
    let name = "term";
    let config = with_stdio(
        env.container_config(
            name,
            &[
                "sh",
                "-c",
                "read x; [ -t 0 ] && [ -t 1 ] && echo is-a-tty; echo to-stderr >&2; \
                 stty size; cat; echo eof-seen",
            ],
        ),
        true,
        false,
        true,
    );
    let (pod, pod_id, id) = run_one(&mut env, handler, "attach-tty", &config).await;

    let session = connect(&env, &id).await;
    assert!(session.info().tty && session.info().stdin);
    let err = session
        .control
        .attach(ALL)
        .await
        .expect_err("stderr with a TTY");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("TTY"), "{err}");
    session.control.attach(STDIN_STDOUT).await.expect("attach");
    let (control, mut events) = session.into_parts();
    control.resize(123, 45).await.expect("resize");
    control.write_stdin(b"go\n").await.expect("write");
    let mut seen = Seen::default();
    read_stdout(&mut events, &mut seen, "45 123").await;
    assert!(seen.stdout.contains("is-a-tty"), "{:?}", seen.stdout);
    assert!(seen.stdout.contains("to-stderr"), "{:?}", seen.stdout);
    assert!(
        seen.stderr.is_empty(),
        "a TTY has no stderr: {:?}",
        seen.stderr
    );
    // The terminal echoes input, and `cat` copies it.
    control.write_stdin(b"typed\n").await.expect("write");
    read_until(&mut events, &mut seen, "typed twice", |s| {
        s.stdout.matches("typed").count() >= 2
    })
    .await;
    control.close_stdin().await.expect("CloseStdin");
    read_stdout(&mut events, &mut seen, "eof-seen").await;
    assert_eq!(read_exit(&mut events, &mut seen).await, (0, None));

    env.wait_exited(&id).await;
    let lines = log_lines(&env, &pod, name);
    for text in ["is-a-tty", "to-stderr", "45 123", "eof-seen"] {
        assert!(
            lines
                .iter()
                .any(|(s, _, x)| s == "stdout" && x.trim_end_matches('\r') == text),
            "{text:?} is not a stdout line of the CRI log: {lines:?}"
        );
    }
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tty_builtin() {
    tty("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tty_runc() {
    support::require_installed("/usr/sbin/runc", "runc");
    tty("runc").await;
}

/// stdin_once with two sessions: both readers get every line; when the session that
/// had stdin goes away, the container sees EOF; a later attach with stdin is refused.
#[tokio::test(flavor = "multi_thread")]
async fn stdin_once_and_two_readers() {
    let mut env = PodEnv::start().await;
    let config = with_stdio(
        env.container_config("once", &["sh", "-c", "cat; echo eof-seen; sleep 1000"]),
        true,
        true,
        false,
    );
    let (_pod, pod_id, id) = run_one(&mut env, "", "attach-once", &config).await;
    let writer = attach(&env, &id, STDIN_STDOUT).await;
    assert!(writer.info().stdin_once);
    // The reader's Control must live while its events are read: dropping the last one
    // closes the session.
    let (_reader_control, mut reader_events) = attach(&env, &id, STDOUT).await.into_parts();
    let (writer_control, mut writer_events) = writer.into_parts();
    writer_control.write_stdin(b"one\n").await.expect("write");
    let (mut seen_w, mut seen_r) = (Seen::default(), Seen::default());
    read_stdout(&mut writer_events, &mut seen_w, "one\n").await;
    read_stdout(&mut reader_events, &mut seen_r, "one\n").await;
    // A third reader joins late: it sees what comes after.
    let (third_control, mut third_events) = attach(&env, &id, STDOUT).await.into_parts();
    writer_control.write_stdin(b"two\n").await.expect("write");
    let mut seen_t = Seen::default();
    for (events, seen) in [
        (&mut writer_events, &mut seen_w),
        (&mut reader_events, &mut seen_r),
        (&mut third_events, &mut seen_t),
    ] {
        read_stdout(events, seen, "two\n").await;
    }
    assert_eq!(seen_t.stdout, "two\n");
    drop(third_control);

    // The first client with stdin disconnects: EOF for `cat`.
    drop(writer_control);
    drop(writer_events);
    read_stdout(&mut reader_events, &mut seen_r, "eof-seen").await;
    assert_eq!(seen_r.stdout, "one\ntwo\neof-seen\n");

    let session = connect(&env, &id).await;
    assert!(!session.info().stdin_open);
    let err = session
        .control
        .attach(STDIN_STDOUT)
        .await
        .expect_err("stdin after stdin_once closed it");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("stdin"), "{err}");

    // Signal through the channel: the exit reaches the reader still attached.
    session.control.signal(9).await.expect("SIGKILL");
    assert_eq!(
        read_exit(&mut reader_events, &mut seen_r).await,
        (137, Some(9))
    );
    assert_eq!(env.wait_exited(&id).await.exit_code, 137);
    env.remove_pod(&pod_id).await;
}

/// The monitor serves the channel from create on: a session attached before
/// StartContainer (as `docker run -it` does) sees the container's first output.
#[tokio::test(flavor = "multi_thread")]
async fn attach_before_start_misses_nothing() {
    let mut env = PodEnv::start().await;
    let config = with_stdio(
        env.container_config("early", &["sh", "-c", "echo first; read x; echo got:$x"]),
        true,
        false,
        false,
    );
    let pod = env.pod_config("attach-early");
    let pod_id = env.run_pod(&pod).await;
    let id = env.create(&pod_id, &pod, &config).await.expect("create");
    let session = attach(&env, &id, STDIN_STDOUT).await;
    assert!(session.info().running, "the init exists, waiting for start");
    let (control, mut events) = session.into_parts();
    env.rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    let mut seen = Seen::default();
    read_stdout(&mut events, &mut seen, "first\n").await;
    control.write_stdin(b"early\n").await.expect("write");
    read_stdout(&mut events, &mut seen, "got:early\n").await;
    assert_eq!(read_exit(&mut events, &mut seen).await, (0, None));
    assert_eq!(seen.stdout, "first\ngot:early\n");
    env.remove_pod(&pod_id).await;
}

/// An attach says where the container's output stood: the log's size then, and the
/// start of a line not logged yet; what follows comes live, so the log up to there,
/// the pending bytes and the live output are each byte once (Docker's attach?logs=1).
#[tokio::test(flavor = "multi_thread")]
async fn attach_says_where_the_output_stood() {
    let mut env = PodEnv::start().await;
    let config = with_stdio(
        env.container_config(
            "point",
            &[
                "sh",
                "-c",
                "echo first; printf part; read x; echo got:$x; sleep 1000",
            ],
        ),
        true,
        false,
        false,
    );
    let (pod, pod_id, id) = run_one(&mut env, "", "attach-point", &config).await;
    let log = env.log_path(&pod, "point");
    wait_for_file(&log, |text| text.contains("first")).await;
    // printf's bytes reach the monitor right after the line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let session = connect(&env, &id).await;
    let point = session.control.attach(STDIN_STDOUT).await.expect("attach");
    let logged = std::fs::read(&log).expect("log");
    assert_eq!(point.log_offset, Some(logged.len() as u64), "{point:?}");
    assert_eq!(point.stdout_pending, b"part", "{point:?}");
    assert!(point.stderr_pending.is_empty(), "{point:?}");
    let (control, mut events) = session.into_parts();
    control.write_stdin(b"x\n").await.expect("write");
    let mut seen = Seen::default();
    read_stdout(&mut events, &mut seen, "got:x\n").await;
    assert_eq!(seen.stdout, "got:x\n");
    // The line the pending bytes began is in the log past the offset.
    wait_for_file(&log, |text| text.contains("partgot:x")).await;
    let after = std::fs::read(&log).expect("log");
    assert!(
        String::from_utf8_lossy(&after[logged.len()..]).contains(" stdout F partgot:x\n"),
        "{}",
        String::from_utf8_lossy(&after)
    );
    drop(control);
    env.remove_pod(&pod_id).await;
}

/// The errors a front end maps: stdin of a container without stdin, resize without a
/// TTY, a bad signal, an exited container. The output of a container without stdin
/// can still be attached.
#[tokio::test(flavor = "multi_thread")]
async fn errors_name_the_container_and_the_step() {
    let mut env = PodEnv::start().await;
    let config = env.container_config(
        "plain",
        &["sh", "-c", "read x || echo stdin-is-null; sleep 1000"],
    );
    let (pod, pod_id, id) = run_one(&mut env, "", "attach-errors", &config).await;
    // stdin is /dev/null: `read` sees EOF at once.
    let log = env.log_path(&pod, "plain");
    wait_for_file(&log, |text| text.contains("stdin-is-null")).await;

    let session = connect(&env, &id).await;
    assert!(!session.info().stdin && !session.info().stdin_open && !session.info().tty);
    let err = session
        .control
        .attach(STDIN_STDOUT)
        .await
        .expect_err("stdin of a container without stdin");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&id) && message.contains("attaching") && message.contains("without stdin"),
        "{message}"
    );
    let err = session.control.resize(80, 24).await.expect_err("no TTY");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("no TTY"), "{err}");
    let err = session.control.signal(0).await.expect_err("signal 0");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let err = session.control.close_stdin().await.expect_err("no stdin");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    // The session still works after refusals.
    session.control.attach(STDOUT).await.expect("attach stdout");
    let (control, mut events) = session.into_parts();
    control.signal(9).await.expect("SIGKILL");
    let mut seen = Seen::default();
    assert_eq!(read_exit(&mut events, &mut seen).await, (137, Some(9)));
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 137);

    let err = monitor_control::connect(&bundle(&env, &id), &id)
        .await
        .expect_err("attach to an exited container");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    env.remove_pod(&pod_id).await;
}

/// The socket belongs to the monitor: after wharfd is killed with SIGKILL and started
/// again on the same root, sessions reach the containers that kept running, with and
/// without a TTY, and what they wrote before is in the log.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_survive_a_wharfd_kill_and_restart() {
    let mut env = PodEnv::start().await;
    let pipe_config = with_stdio(
        env.container_config(
            "pipe",
            &[
                "sh",
                "-c",
                "while read line; do echo got:$line; done; echo bye",
            ],
        ),
        true,
        false,
        false,
    );
    let tty_config = with_stdio(
        env.container_config(
            "term",
            &["sh", "-c", "while read line; do echo got:$line; done"],
        ),
        true,
        false,
        true,
    );
    let (pipe_pod, _, pipe_id) = run_one(&mut env, "", "restart-pipe", &pipe_config).await;
    let (_tty_pod, _, tty_id) = run_one(&mut env, "runc", "restart-tty", &tty_config).await;
    for id in [&pipe_id, &tty_id] {
        let (control, mut events) = attach(&env, id, STDIN_STDOUT).await.into_parts();
        control.write_stdin(b"before\n").await.expect("write");
        read_stdout(&mut events, &mut Seen::default(), "got:before").await;
    }

    let status = env.daemon.kill9();
    assert!(!status.success());
    for id in [&pipe_id, &tty_id] {
        // No daemon at all: the monitor still serves its socket.
        let session = attach(&env, id, STDIN_STDOUT).await;
        assert!(session.info().running);
        drop(session);
    }
    env.daemon.restart().await;
    env.rt = env.daemon.runtime_client().await;

    let (pipe_control, mut pipe_events) = attach(&env, &pipe_id, STDIN_STDOUT).await.into_parts();
    pipe_control.write_stdin(b"after\n").await.expect("write");
    let mut seen = Seen::default();
    read_stdout(&mut pipe_events, &mut seen, "got:after").await;
    let (tty_control, mut tty_events) = attach(&env, &tty_id, STDIN_STDOUT).await.into_parts();
    tty_control
        .resize(100, 30)
        .await
        .expect("resize after restart");
    tty_control.write_stdin(b"after\n").await.expect("write");
    read_stdout(&mut tty_events, &mut Seen::default(), "got:after").await;

    pipe_control.close_stdin().await.expect("CloseStdin");
    assert_eq!(read_exit(&mut pipe_events, &mut seen).await, (0, None));
    assert_eq!(env.wait_exited(&pipe_id).await.exit_code, 0);
    let lines = log_lines(&env, &pipe_pod, "pipe");
    let texts: Vec<&str> = lines.iter().map(|(_, _, text)| text.as_str()).collect();
    assert_eq!(texts, ["got:before", "got:after", "bye"], "{lines:?}");
    tty_control.signal(9).await.expect("SIGKILL");
    assert_eq!(
        read_exit(&mut tty_events, &mut Seen::default()).await,
        (137, Some(9))
    );
}

/// A client that attaches and never reads is disconnected once its queue is full; the
/// container and the CRI log go on, and other readers are not held up.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_is_dropped_not_waited_for() {
    let mut env = PodEnv::start().await;
    let name = "loud";
    // 64 KiB lines, 200 of them (12.5 MiB) at most 13 MB/s (so that the fast reader
    // keeps up on a loaded machine), then a marker; then it waits for stdin.
    let config = with_stdio(
        env.container_config(
            name,
            &[
                "sh",
                "-c",
                "read go; i=0; line=$(head -c 65535 /dev/zero | tr '\\0' x); \
                 while [ $i -lt 200 ]; do echo $line; usleep 5000; i=$((i+1)); done; echo marker; read x; echo done",
            ],
        ),
        true,
        false,
        false,
    );
    let (pod, pod_id, id) = run_one(&mut env, "", "attach-slow", &config).await;
    let (_slow_control, mut slow_events) = attach(&env, &id, STDOUT).await.into_parts();
    let (control, mut events) = attach(&env, &id, STDIN_STDOUT).await.into_parts();
    control.write_stdin(b"go\n").await.expect("write");
    // The fast reader gets everything; the slow one is never read meanwhile.
    let mut fast_bytes = 0;
    loop {
        match tokio::time::timeout(WAIT, events.next()).await {
            Ok(Some(Ok(Event::Stdout(data)))) => {
                fast_bytes += data.len();
                if data.ends_with(b"marker\n") {
                    break;
                }
            }
            other => panic!("the fast reader after {fast_bytes} bytes: {other:?}"),
        }
    }
    assert_eq!(fast_bytes, 200 * 65536 + "marker\n".len());
    let mut seen = Seen::default();
    let log = env.log_path(&pod, name);
    wait_for_file(&log, |text| text.contains("stdout F marker")).await;
    // The slow reader got at most what its queues hold, then the end of its session.
    let mut slow_bytes = 0;
    let ended = loop {
        match tokio::time::timeout(WAIT, slow_events.next()).await {
            Ok(Some(Ok(Event::Stdout(data)))) => slow_bytes += data.len(),
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Ok(Some(Err(err))) => break err,
            Ok(None) => panic!("the slow session ended without an error"),
            Err(_) => panic!("the slow reader was not disconnected ({slow_bytes} bytes read)"),
        }
    };
    assert!(slow_bytes < 200 * 65536, "the slow reader got everything");
    assert_eq!(ended.kind(), ErrorKind::Unavailable, "{ended}");
    wait_for_file(&bundle(&env, &id).join("monitor.log"), |text| {
        text.contains("disconnected 1 attached client(s)")
    })
    .await;
    control.close_stdin().await.expect("CloseStdin");
    assert_eq!(read_exit(&mut events, &mut seen).await, (0, None));
    env.remove_pod(&pod_id).await;
}

/// VmRSS, Pss and private (clean + dirty) memory of the monitor (the watcher) of the
/// container in `bundle`, in KiB.
fn monitor_memory(bundle: &Path) -> (u64, u64, u64) {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("monitor.json")).expect("monitor.json"))
            .expect("json");
    let pid = info["monitor_pid"].as_i64().expect("monitor_pid");
    let field = |file: &str, name: &str| -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("proc");
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/{file}"))
    };
    (
        field("status", "VmRSS:"),
        field("smaps_rollup", "Pss:"),
        field("smaps_rollup", "Private_Clean:") + field("smaps_rollup", "Private_Dirty:"),
    )
}

/// An attach and detach leaves no session buffers behind in the watcher (its private
/// memory grows by at most a few pages). Also prints the memory of idle watchers for
/// docs/benchmarks.md, this build's and (with WHARF_BEFORE_MONITOR=/path/to/an/older/
/// wharf-monitor, its watcher next to it) an older one's: `cargo test --test
/// monitor_attach -- --nocapture watcher_memory`.
#[tokio::test(flavor = "multi_thread")]
async fn watcher_memory() {
    /// Growth allowed per watcher (KiB): far below one session's 1 MiB queue.
    const MAX_GROWTH_KIB: u64 = 256;
    let mut builds = vec![("this build".to_string(), String::new())];
    if let Ok(before) = std::env::var("WHARF_BEFORE_MONITOR") {
        builds.push((
            format!("monitor {before}"),
            format!("[runtime]\nmonitor_path = {before:?}\n"),
        ));
    }
    for (build, config) in builds {
        let mut env = PodEnv::start_with_config(&config).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let config = env.container_config(&format!("idle{i}"), &["sleep", "1000"]);
            let (_, _, id) = run_one(&mut env, "", &format!("rss{i}"), &config).await;
            ids.push(id);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle: Vec<(u64, u64, u64)> = ids
            .iter()
            .map(|id| monitor_memory(&bundle(&env, id)))
            .collect();
        println!("{build}: idle watchers (VmRSS, Pss, private; KiB): {idle:?}");
        if build == "this build" {
            for id in &ids {
                let (control, mut events) = attach(&env, id, STDOUT).await.into_parts();
                control.resize(1, 1).await.expect_err("no tty");
                drop(control);
                assert!(events.next().await.is_some_and(|e| e.is_err()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let used: Vec<(u64, u64, u64)> = ids
                .iter()
                .map(|id| monitor_memory(&bundle(&env, id)))
                .collect();
            println!("{build}: after one attach and detach each: {used:?}");
            for (before, after) in idle.iter().zip(&used) {
                assert!(
                    after.2 <= before.2 + MAX_GROWTH_KIB,
                    "a detached session left {} KiB in the watcher (before {before:?}, after {after:?})",
                    after.2.saturating_sub(before.2)
                );
            }
        }
    }
}

/// The runtime command prefix wharfd gives the monitor for `handler`.
fn runtime_prefix(env: &PodEnv, handler: &str) -> Vec<String> {
    let (program, name, extra): (&str, &str, &[&str]) = match handler {
        "" => (env!("CARGO_BIN_EXE_wharf-monitor"), "builtin", &["oci"]),
        "runc" => ("/usr/sbin/runc", "runc", &[]),
        other => panic!("no prefix for handler {other}"),
    };
    let root = env.daemon.paths.state.join("runtime").join(name);
    let mut argv = vec![program.to_string()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.push("--root".into());
    argv.push(root.to_string_lossy().into_owned());
    argv
}

async fn exec(
    env: &PodEnv,
    handler: &str,
    id: &str,
    request: &monitor_control::ExecRequest,
) -> (Session, i32) {
    monitor_control::exec(&bundle(env, id), id, runtime_prefix(env, handler), request)
        .await
        .unwrap_or_else(|err| panic!("exec {:?} in {id}: {err}", request.cmd))
}

fn request(cmd: &[&str], stdin: bool, tty: bool) -> monitor_control::ExecRequest {
    monitor_control::ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout: true,
        stderr: !tty,
        tty,
        size: tty.then_some((91, 17)),
        ..Default::default()
    }
}

/// The pids (host) in /proc whose parent is `parent` and that are zombies.
fn zombie_children(parent: i32) -> Vec<i32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) && fields[0] == "Z" {
            zombies.push(pid);
        }
    }
    zombies
}

fn monitor_pid(env: &PodEnv, id: &str) -> i32 {
    let text = std::fs::read_to_string(bundle(env, id).join("monitor.json")).expect("monitor.json");
    let value: serde_json::Value = serde_json::from_str(&text).expect("monitor.json is JSON");
    value["monitor_pid"].as_i64().expect("monitor pid") as i32
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let rest = stat.rfind(')').map_or("", |at| &stat[at + 1..]);
            !rest.trim_start().starts_with('Z')
        })
        .unwrap_or(false)
}

/// Exec sessions (protocol version 2): without a TTY, stdin with EOF, both streams and
/// exit codes; with a TTY, the first size, resize and the terminal's EOF; a missing
/// executable is refused with the runtime's message; a client that goes first gets its
/// process killed and reaped; a background child that holds stdout does not hold the
/// session; nothing goes to the container's CRI log, and the monitor keeps no fd.
async fn exec_sessions(handler: &str) {
    let mut env = PodEnv::start().await;
    let name = "exec-target";
    let config = env.container_config(name, &["sleep", "3600"]);
    let (pod, pod_id, id) = run_one(&mut env, handler, "exec", &config).await;
    let monitor = monitor_pid(&env, &id);
    let fds_before = fd_count(monitor);

    // stdin to EOF, both streams, exit code.
    let (session, pid) = exec(
        &env,
        handler,
        &id,
        &request(
            &["sh", "-c", "echo out:$(cat); echo err >&2; exit 3"],
            true,
            false,
        ),
    )
    .await;
    assert!(pid > 0);
    let (control, mut events) = session.into_parts();
    control.write_stdin(b"fed in").await.expect("write");
    control.end_stdin().await.expect("stdin EOF");
    let mut seen = Seen::default();
    assert_eq!(read_exit(&mut events, &mut seen).await, (3, None));
    assert_eq!(seen.stdout, "out:fed in\n");
    assert_eq!(seen.stderr, "err\n");
    drop(control);

    // Exit codes 0 and 137 (killed by a signal through the session).
    let (session, _) = exec(&env, handler, &id, &request(&["true"], false, false)).await;
    let (control, mut events) = session.into_parts();
    assert_eq!(
        read_exit(&mut events, &mut Seen::default()).await,
        (0, None)
    );
    drop(control);
    let (session, _) = exec(&env, handler, &id, &request(&["sleep", "60"], false, false)).await;
    let (control, mut events) = session.into_parts();
    control.signal(9).await.expect("SIGKILL the exec");
    assert_eq!(
        read_exit(&mut events, &mut Seen::default()).await,
        (137, Some(9))
    );
    drop(control);

    // A TTY: the first size, a resize, input echoed, ^D ends `cat`.
    let (session, _) = exec(
        &env,
        handler,
        &id,
        &request(
            &[
                "sh",
                "-c",
                "[ -t 0 ] && echo tty:$TERM; stty size; read x; stty size; cat; echo done",
            ],
            true,
            true,
        ),
    )
    .await;
    let (control, mut events) = session.into_parts();
    let mut seen = Seen::default();
    read_stdout(&mut events, &mut seen, "17 91").await;
    assert!(seen.stdout.contains("tty:xterm"), "{:?}", seen.stdout);
    control.resize(120, 40).await.expect("resize the exec");
    control.write_stdin(b"go\n").await.expect("write");
    read_stdout(&mut events, &mut seen, "40 120").await;
    control.end_stdin().await.expect("^D");
    read_stdout(&mut events, &mut seen, "done").await;
    assert_eq!(read_exit(&mut events, &mut seen).await, (0, None));
    drop(control);

    // The runtime's own words for a missing executable.
    let err = monitor_control::exec(
        &bundle(&env, &id),
        &id,
        runtime_prefix(&env, handler),
        &request(&["/no/such/binary"], false, false),
    )
    .await
    .expect_err("no such binary");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("/no/such/binary"), "{err}");

    // A background child holding stdout open: the session still ends, soon after the
    // main process.
    let started = Instant::now();
    let (session, _) = exec(
        &env,
        handler,
        &id,
        &request(&["sh", "-c", "sleep 30 & echo main-done"], false, false),
    )
    .await;
    let (control, mut events) = session.into_parts();
    let mut seen = Seen::default();
    assert_eq!(read_exit(&mut events, &mut seen).await, (0, None));
    assert_eq!(seen.stdout, "main-done\n");
    drop(control);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the background child held the session for {:?}",
        started.elapsed()
    );

    // A client that goes: its process is killed and reaped.
    let (session, pid) = exec(&env, handler, &id, &request(&["sleep", "600"], true, false)).await;
    assert!(process_alive(pid));
    drop(session);
    let deadline = Instant::now() + WAIT;
    while process_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!process_alive(pid), "the exec outlived its client");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(zombie_children(monitor), Vec::<i32>::new(), "zombies");
    assert_eq!(
        fd_count(monitor),
        fds_before,
        "the monitor kept fds: {:?}",
        std::fs::read_dir(format!("/proc/{monitor}/fd")).map(|d| d
            .flatten()
            .map(|e| std::fs::read_link(e.path()))
            .collect::<Vec<_>>())
    );
    assert!(
        std::fs::read_dir(bundle(&env, &id).join("exec"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "exec directories were left in the bundle"
    );
    // Exec output is the client's alone, not the container's log.
    let lines = log_lines(&env, &pod, name);
    assert!(
        lines.is_empty(),
        "exec output reached the CRI log: {lines:?}"
    );
    env.remove_pod(&pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sessions_builtin() {
    exec_sessions("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sessions_runc() {
    support::require_installed("/usr/sbin/runc", "runc");
    exec_sessions("runc").await;
}

/// An exec's process survives nothing it should not: after wharfd is killed with
/// SIGKILL, the session's connection is gone, so the monitor kills the process (no
/// orphan); a new exec after the restart works.
#[tokio::test(flavor = "multi_thread")]
async fn exec_after_a_wharfd_kill() {
    let mut env = PodEnv::start().await;
    let config = env.container_config("target", &["sleep", "3600"]);
    let (_pod, _pod_id, id) = run_one(&mut env, "", "exec-restart", &config).await;
    let before = env.daemon.kill9();
    assert!(!before.success());
    env.daemon.restart().await;
    env.rt = env.daemon.runtime_client().await;
    let (session, _) = exec(
        &env,
        "",
        &id,
        &request(&["sh", "-c", "echo hi"], false, false),
    )
    .await;
    let (_control, mut events) = session.into_parts();
    let mut seen = Seen::default();
    assert_eq!(read_exit(&mut events, &mut seen).await, (0, None));
    assert_eq!(seen.stdout, "hi\n");
}
