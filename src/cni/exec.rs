//! Running one plugin: environment, stdin, bounded output, timeout, error decoding.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::CniError;

/// A plugin's stdout beyond this is an error: results are a few KiB.
pub const MAX_STDOUT: usize = 1 << 20;
/// How much of stderr is kept for error messages (the rest is drained and dropped).
pub const MAX_STDERR: usize = 16 << 10;

/// The CNI operations this runtime issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
        }
    }
}

/// The container-specific part of a call (absent for STATUS).
pub struct Target<'a> {
    pub container_id: &'a str,
    /// Empty for a DEL whose namespace is gone, as the spec allows.
    pub netns: &'a str,
    pub ifname: &'a str,
    /// Already formatted `K=V;K=V`.
    pub args: &'a str,
}

pub struct Invocation<'a> {
    pub network: &'a str,
    pub plugin: &'a str,
    pub path: &'a Path,
    pub command: Command,
    pub target: Option<Target<'a>>,
    /// CNI_PATH: the plugin dirs joined with ':'.
    pub cni_path: &'a str,
    pub stdin: Vec<u8>,
}

/// The first executable regular file named `plugin_type` in `dirs` (libcni's
/// `FindInPath`).
pub fn find_plugin(plugin_type: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|dir| dir.join(plugin_type)).find(|path| {
        std::fs::metadata(path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// CNI_ARGS: `K=V;K=V`. Keys may not hold '=' or ';', values not ';' (the format has no
/// escaping), neither may hold NUL (environment strings).
pub fn format_args(args: &[(String, String)]) -> Result<String, String> {
    let mut out = String::new();
    for (key, value) in args {
        if key.is_empty() || key.contains(['=', ';', '\0']) {
            return Err(format!("invalid CNI_ARGS key {key:?}"));
        }
        if value.contains([';', '\0']) {
            return Err(format!("invalid CNI_ARGS value {value:?} for {key}"));
        }
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    }
    Ok(out)
}

/// A plugin's error report on stdout: `{"code": N, "msg": ..., "details": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PluginErrorBody {
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

pub fn parse_error(stdout: &[u8]) -> Option<PluginErrorBody> {
    serde_json::from_slice(stdout).ok()
}

/// Reads everything, keeping at most `cap` bytes; true when some were dropped. Keeps
/// draining past the cap so the plugin never blocks on a full pipe.
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut overflow = false;
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    overflow = true;
                }
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (kept, overflow)
}

/// Text for an error message: trimmed, lossy UTF-8, at most ~1 KiB.
pub fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(1024) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

const CNI_VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// Runs the plugin; its stdout on success.
pub async fn run(invocation: Invocation<'_>, timeout: Duration) -> Result<Vec<u8>, CniError> {
    let Invocation {
        network,
        plugin,
        path,
        command,
        target,
        cni_path,
        stdin: input,
    } = invocation;
    let mut cmd = tokio::process::Command::new(path);
    // The daemon's own environment (PATH for iptables and friends) is inherited, as
    // libcni does, minus any stray CNI_* variables.
    for var in CNI_VARS {
        cmd.env_remove(var);
    }
    cmd.env("CNI_COMMAND", command.as_str())
        .env("CNI_PATH", cni_path);
    if let Some(target) = &target {
        cmd.env("CNI_CONTAINERID", target.container_id)
            .env("CNI_NETNS", target.netns)
            .env("CNI_IFNAME", target.ifname)
            .env("CNI_ARGS", target.args);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever the plugin started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut attempt = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            // ETXTBSY: the binary is being written (a plugin upgrade), or another
            // thread's fork still holds a write fd to it for a moment. Both pass.
            Err(err) if err.raw_os_error() == Some(nix::libc::ETXTBSY) && attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            Err(source) => {
                return Err(CniError::Spawn {
                    network: network.to_string(),
                    plugin: plugin.to_string(),
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    };
    let pid = child.id();
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let io = async {
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A plugin that exits without reading its config (or reads only part of
                // it) closes the pipe: that is its business, not an error here.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
        };
        let (_, out, err) = tokio::join!(
            feed,
            read_capped(stdout, MAX_STDOUT),
            read_capped(stderr, MAX_STDERR)
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let ((stdout, stdout_overflow), (stderr, _), status) =
        match tokio::time::timeout(timeout, io).await {
            Ok(done) => {
                crate::crash_point::reached("cni.after_plugin");
                done
            }
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    // The child is not reaped yet, so its pid (= its group) is still ours.
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                return Err(CniError::Timeout {
                    network: network.to_string(),
                    plugin: plugin.to_string(),
                    command: command.as_str(),
                    timeout,
                });
            }
        };
    let status = status.map_err(|source| CniError::Spawn {
        network: network.to_string(),
        plugin: plugin.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    if status.success() {
        tracing::debug!(network, plugin, command = command.as_str(), stderr = %excerpt(&stderr), "CNI plugin succeeded");
    } else {
        tracing::warn!(network, plugin, command = command.as_str(), %status, stderr = %excerpt(&stderr), "CNI plugin failed");
    }
    if status.success() {
        if stdout_overflow {
            return Err(CniError::BadOutput {
                network: network.to_string(),
                plugin: plugin.to_string(),
                command: command.as_str(),
                reason: format!("more than {MAX_STDOUT} bytes on stdout"),
            });
        }
        return Ok(stdout);
    }
    if let Some(body) = parse_error(&stdout) {
        return Err(CniError::Plugin {
            network: network.to_string(),
            plugin: plugin.to_string(),
            command: command.as_str(),
            code: body.code,
            msg: body.msg,
            details: body.details,
        });
    }
    let status_text = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    };
    let output = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        excerpt(&stderr)
    } else {
        excerpt(&stdout)
    };
    Err(CniError::PluginExit {
        network: network.to_string(),
        plugin: plugin.to_string(),
        command: command.as_str(),
        status: status_text,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_format() {
        let args = vec![
            ("IgnoreUnknown".to_string(), "1".to_string()),
            ("K8S_POD_NAMESPACE".to_string(), "default".to_string()),
            ("K8S_POD_NAME".to_string(), "web-0".to_string()),
        ];
        assert_eq!(
            format_args(&args).unwrap(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"
        );
        assert_eq!(format_args(&[]).unwrap(), "");
        // '=' in a value is fine: the key ends at the first one.
        assert_eq!(format_args(&[("A".into(), "b=c".into())]).unwrap(), "A=b=c");
        assert!(format_args(&[("A;B".into(), "x".into())]).is_err());
        assert!(format_args(&[("A=B".into(), "x".into())]).is_err());
        assert!(format_args(&[("".into(), "x".into())]).is_err());
        assert!(format_args(&[("A".into(), "x;y".into())]).is_err());
    }

    #[test]
    fn error_json() {
        assert_eq!(
            parse_error(br#"{"cniVersion":"1.0.0","code":7,"msg":"boom","details":"more"}"#),
            Some(PluginErrorBody {
                code: 7,
                msg: "boom".into(),
                details: "more".into()
            })
        );
        assert_eq!(
            parse_error(br#"{"code":11,"msg":"try again"}"#).map(|b| (b.code, b.details)),
            Some((11, String::new()))
        );
        assert_eq!(parse_error(br#"{"msg":"no code"}"#), None);
        assert_eq!(parse_error(b"panic: runtime error"), None);
        assert_eq!(parse_error(b""), None);
    }

    #[test]
    fn finds_only_executable_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("plain"), "").unwrap();
        std::fs::create_dir(a.path().join("dir")).unwrap();
        std::fs::write(b.path().join("plain"), "").unwrap();
        std::fs::set_permissions(
            b.path().join("plain"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_plugin("plain", &dirs), Some(b.path().join("plain")));
        assert_eq!(find_plugin("dir", &dirs), None);
        assert_eq!(find_plugin("missing", &dirs), None);
    }

    #[test]
    fn excerpt_trims_and_cuts() {
        assert_eq!(excerpt(b"  hi \n"), "hi");
        let long = "x".repeat(5000);
        assert_eq!(excerpt(long.as_bytes()).len(), 1027);
    }
}
