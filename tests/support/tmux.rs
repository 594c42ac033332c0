//! A tmux server of a test's own: a real pty for interactive clients (`docker run -it`,
//! `wharf run -it`, `kubectl exec -it`), read back through `capture-pane`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of its own, killed on drop.
pub struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    pub fn new() -> Tmux {
        let tmux = super::require_installed("/usr/bin/tmux", "tmux");
        assert!(tmux.exists());
        let dir = tempfile::tempdir().expect("tempdir");
        Tmux {
            socket: dir.path().join("tmux.sock"),
            _dir: dir,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A new window of 80x24 running `shell_command`.
    pub fn start(&self, name: &str, shell_command: &str) {
        // The server ends with its last window (maybe while this runs): then a new
        // session starts it again.
        let added = self.socket.exists()
            && Command::new("tmux")
                .arg("-S")
                .arg(&self.socket)
                .args(["new-window", "-t", "main", "-n", name, shell_command])
                .output()
                .is_ok_and(|o| o.status.success());
        if !added {
            self.cmd(&[
                "new-session",
                "-d",
                "-s",
                "main",
                "-n",
                name,
                "-x",
                "80",
                "-y",
                "24",
                shell_command,
            ]);
        }
    }

    pub fn screen(&self, name: &str) -> String {
        self.cmd(&["capture-pane", "-p", "-t", &format!("main:{name}")])
    }

    pub fn keys(&self, name: &str, keys: &[&str]) {
        let target = format!("main:{name}");
        let mut args = vec!["send-keys", "-t", target.as_str()];
        args.extend_from_slice(keys);
        self.cmd(&args);
    }

    pub async fn wait_for(&self, name: &str, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen(name);
            if screen.contains(what) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what:?} never appeared in tmux window {name}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}
