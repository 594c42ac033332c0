//! An attached session with a container or an exec'd process (`run` without `-d`,
//! `start -a`, `attach`, `exec`): the hijacked stream, raw mode, resizes, detach keys,
//! stdin piping, signals, and the exit code.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connection::{self, Client};
use super::containers::{each, AttachArgs, ExecArgs, StartArgs};
use super::create::{detach_keys, env_entry, start_error};
use super::{enc, tty, CliError, Result};

/// An attached session with a container: attach, (start), pump stdio, and the exit.
pub(super) struct Session {
    pub(super) id: String,
    pub(super) tty: bool,
    pub(super) stdin: bool,
    pub(super) detach_keys: (String, Vec<u8>),
    pub(super) start: bool,
    /// The wait condition registered before the start ("next-exit", "removed"), or
    /// "" to only attach.
    pub(super) wait_condition: &'static str,
}

impl Session {
    /// Returns the container's exit code, or None when the user detached.
    pub(super) async fn run(&self, client: &Client) -> Result<Option<i64>> {
        let id = &self.id;
        let attach_path = format!(
            "/containers/{id}/attach?stream=1&stdin={}&stdout=1&stderr=1&detachKeys={}",
            u8::from(self.stdin),
            enc(&self.detach_keys.0)
        );
        let stream = client.hijack(&attach_path, None).await?;
        // Registered before the start, so a container that exits at once is seen.
        let waiter = if self.wait_condition.is_empty() {
            None
        } else {
            let response = client
                .call(
                    hyper::Method::POST,
                    &format!("/containers/{id}/wait?condition={}", self.wait_condition),
                    connection::empty(),
                    "application/json",
                )
                .await?;
            let wait_id = id.clone();
            Some(tokio::spawn(async move {
                let bytes = connection::read_body(response, "wait").await.map_err(|err| {
                    CliError::connect(format!(
                        "waiting for container {wait_id}: the connection to wharfd broke ({err}); the container may still run"
                    ))
                })?;
                let value: Value = serde_json::from_slice(&bytes).map_err(|err| {
                    CliError::internal(format!("waiting for the container: a bad answer ({err})"))
                })?;
                if let Some(msg) = value
                    .pointer("/Error/Message")
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
                {
                    return Err(CliError::daemon(500, msg));
                }
                Ok(value
                    .get("StatusCode")
                    .and_then(Value::as_i64)
                    .unwrap_or(-1))
            }))
        };
        if self.start {
            if let Err(err) = client.post(&format!("/containers/{id}/start"), None).await {
                return Err(start_error(err));
            }
        }
        let raw = if self.tty && self.stdin && tty::stdin_is_tty() {
            Some(tty::RawMode::enter().map_err(CliError::internal)?)
        } else {
            None
        };
        let resize_path = format!("/containers/{id}/resize");
        let detached = pump(
            client,
            stream,
            self.tty,
            self.stdin,
            &self.detach_keys.1,
            &resize_path,
            Some(id),
        )
        .await?;
        drop(raw);
        if detached {
            return Ok(None);
        }
        match waiter {
            Some(waiter) => match waiter.await {
                Ok(result) => result.map(Some),
                Err(err) => Err(CliError::internal(format!(
                    "waiting for container {id}: {err}"
                ))),
            },
            None => Ok(Some(0)),
        }
    }
}

/// Moves bytes between the local stdio and a hijacked stream until the output ends.
/// With a TTY: output raw, window size forwarded to `resize_path` now and on SIGWINCH,
/// input watched for the detach keys. Without: output demultiplexed, SIGINT/SIGTERM
/// forwarded to the container (docker's --sig-proxy). Returns whether the user detached.
pub(super) async fn pump(
    client: &Client,
    stream: connection::Hijacked,
    tty_mode: bool,
    stdin: bool,
    keys: &[u8],
    resize_path: &str,
    // The container that SIGINT/SIGTERM are forwarded to (none for exec, as docker).
    signal_target: Option<&str>,
) -> Result<bool> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut reader, mut writer) = tokio::io::split(stream);
    let detached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if stdin {
        let detached = detached.clone();
        let mut matcher = tty::DetachMatcher::new(keys.to_vec());
        let watch = tty_mode;
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if watch && matcher.feed(&buf[..n]) {
                            detached.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        if writer.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // End of input: half-close, so the container's stdin ends (StdinOnce).
            let _ = writer.shutdown().await;
            // Keep the write half alive until the output ends (a dropped half is fine).
            std::future::pending::<()>().await;
        });
    }
    let output = async move {
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        if tty_mode {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdout.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let _ = stdout.flush().await;
                    }
                }
            }
        } else {
            demux(&mut reader, &mut stdout, &mut stderr).await;
        }
    };
    tokio::pin!(output);
    let resize = |client: Client, path: String| async move {
        if let Some((rows, cols)) = tty::size() {
            let _ = client
                .post(&format!("{path}?h={rows}&w={cols}"), None)
                .await;
        }
    };
    let mut winch = signal(SignalKind::window_change())
        .map_err(|err| CliError::internal(format!("watching SIGWINCH: {err}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|err| CliError::internal(format!("watching SIGTERM: {err}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|err| CliError::internal(format!("watching SIGHUP: {err}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|err| CliError::internal(format!("watching SIGINT: {err}")))?;
    if tty_mode {
        resize(client.clone(), resize_path.to_string()).await;
    }
    loop {
        tokio::select! {
            _ = &mut output => break,
            _ = winch.recv() => {
                if tty_mode {
                    resize(client.clone(), resize_path.to_string()).await;
                }
            }
            _ = int.recv() => {
                // With a TTY ctrl-c reaches the container as a byte; a SIGINT here came
                // from elsewhere (or `-t` without `-i`): leave, as docker's CLI does.
                match signal_target.filter(|_| !tty_mode) {
                    Some(container) => {
                        let _ = client.post(&format!("/containers/{container}/kill?signal=INT"), None).await;
                    }
                    None => {
                        tty::restore();
                        return Err(CliError::exit(130));
                    }
                }
            }
            _ = term.recv() => {
                if tty_mode {
                    tty::restore();
                    return Err(CliError::exit(128 + 15));
                }
                match signal_target {
                    Some(container) => {
                        let _ = client.post(&format!("/containers/{container}/kill?signal=TERM"), None).await;
                    }
                    None => return Err(CliError::exit(143)),
                }
            }
            _ = hup.recv() => {
                tty::restore();
                return Err(CliError::exit(128 + 1));
            }
        }
    }
    Ok(detached.load(std::sync::atomic::Ordering::SeqCst))
}

/// Docker's multiplexed stream: 8-byte headers (stream, 0, 0, 0, size) before each frame.
pub(super) async fn demux<R, O, E>(reader: &mut R, stdout: &mut O, stderr: &mut E)
where
    R: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncWrite + Unpin,
{
    let mut header = [0u8; 8];
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if reader.read_exact(&mut header).await.is_err() {
            return;
        }
        let mut left = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        while left > 0 {
            let want = left.min(buf.len());
            match reader.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let written = if header[0] == 2 {
                        stderr.write_all(&buf[..n]).await.and(stderr.flush().await)
                    } else {
                        stdout.write_all(&buf[..n]).await.and(stdout.flush().await)
                    };
                    if written.is_err() {
                        return;
                    }
                    left -= n;
                }
            }
        }
    }
}

pub(super) async fn inspect_container(client: &Client, name: &str) -> Result<Value> {
    client.get(&format!("/containers/{}/json", enc(name))).await
}

pub(super) async fn start(client: &Client, args: StartArgs) -> Result<()> {
    if args.attach || args.interactive {
        if args.containers.len() > 1 {
            return Err(CliError::usage(
                "you cannot start and attach multiple containers at once",
            ));
        }
        let name = &args.containers[0];
        let info = inspect_container(client, name).await?;
        let id = info
            .get("Id")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_string();
        let tty_mode = info
            .pointer("/Config/Tty")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let session = Session {
            id,
            tty: tty_mode,
            stdin: args.interactive,
            detach_keys: detach_keys(args.detach_keys.as_deref())?,
            start: true,
            wait_condition: "next-exit",
        };
        return match session.run(client).await? {
            Some(0) | None => Ok(()),
            Some(code) => Err(CliError::exit(code as i32)),
        };
    }
    each(
        &args.containers,
        |c| format!("/containers/{}/start", enc(c)),
        client,
    )
    .await
}

pub(super) async fn attach(client: &Client, args: AttachArgs) -> Result<()> {
    let info = inspect_container(client, &args.container).await?;
    let id = info
        .get("Id")
        .and_then(Value::as_str)
        .unwrap_or(&args.container)
        .to_string();
    if info.pointer("/State/Running").and_then(Value::as_bool) != Some(true) {
        return Err(CliError::internal(
            "You cannot attach to a stopped container, start it first",
        ));
    }
    if info.pointer("/State/Paused").and_then(Value::as_bool) == Some(true) {
        return Err(CliError::internal(
            "You cannot attach to a paused container, unpause it first",
        ));
    }
    let tty_mode = info
        .pointer("/Config/Tty")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let open_stdin = info
        .pointer("/Config/OpenStdin")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let session = Session {
        id,
        tty: tty_mode,
        stdin: open_stdin && !args.no_stdin,
        detach_keys: detach_keys(args.detach_keys.as_deref())?,
        start: false,
        wait_condition: "next-exit",
    };
    match session.run(client).await? {
        Some(0) | None => Ok(()),
        Some(code) => Err(CliError::exit(code as i32)),
    }
}

pub(super) async fn exec(client: &Client, args: ExecArgs) -> Result<()> {
    let (container, command) = args
        .container_and_command
        .split_first()
        .ok_or_else(|| CliError::usage("\"exec\" requires at least 2 arguments"))?;
    if args.tty && args.interactive && !args.detach && !tty::stdin_is_tty() {
        return Err(CliError::internal("the input device is not a TTY"));
    }
    let keys = detach_keys(args.detach_keys.as_deref())?;
    let mut config = json!({
        "AttachStdin": args.interactive && !args.detach,
        "AttachStdout": !args.detach,
        "AttachStderr": !args.detach,
        "Tty": args.tty,
        "Cmd": command,
        "Env": args.env.iter().filter_map(|e| env_entry(e)).collect::<Vec<_>>(),
        "Privileged": args.privileged,
        "DetachKeys": keys.0,
    });
    if let Some(user) = &args.user {
        config["User"] = user.clone().into();
    }
    if let Some(dir) = &args.workdir {
        config["WorkingDir"] = dir.clone().into();
    }
    if args.tty {
        if let Some((rows, cols)) = tty::size() {
            config["ConsoleSize"] = json!([rows, cols]);
        }
    }
    let created = client
        .post(
            &format!("/containers/{}/exec", enc(container)),
            Some(&config),
        )
        .await?;
    let exec_id = created
        .get("Id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CliError::internal(format!(
                "exec in {container}: the daemon answered no exec ID"
            ))
        })?
        .to_string();
    if args.detach {
        client
            .post(
                &format!("/exec/{exec_id}/start"),
                Some(&json!({"Detach": true, "Tty": args.tty})),
            )
            .await?;
        return Ok(());
    }
    let stream = client
        .hijack(
            &format!("/exec/{exec_id}/start"),
            Some(&json!({"Detach": false, "Tty": args.tty})),
        )
        .await
        .map_err(start_error)?;
    let raw = if args.tty && args.interactive && tty::stdin_is_tty() {
        Some(tty::RawMode::enter().map_err(CliError::internal)?)
    } else {
        None
    };
    let detached = pump(
        client,
        stream,
        args.tty,
        args.interactive,
        &keys.1,
        &format!("/exec/{exec_id}/resize"),
        None,
    )
    .await?;
    drop(raw);
    if detached {
        return Ok(());
    }
    let inspect = client.get(&format!("/exec/{exec_id}/json")).await?;
    match inspect.get("ExitCode").and_then(Value::as_i64) {
        Some(0) | None => Ok(()),
        Some(code) => Err(CliError::exit(code as i32)),
    }
}
