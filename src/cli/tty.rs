//! The local terminal for `-it`: raw mode that is restored on every exit path (normal
//! end, error, a signal, a dropped connection, a panic: `restore` runs from each), the
//! window size and its changes (SIGWINCH), and the detach keys typed by the user.

use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use nix::sys::termios::{self, SetArg, Termios};

/// The settings found before raw mode, put back by `restore`.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the whole life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

pub fn stdin_is_tty() -> bool {
    nix::unistd::isatty(0).unwrap_or(false)
}

pub fn stdout_is_tty() -> bool {
    nix::unistd::isatty(1).unwrap_or(false)
}

/// Raw mode on stdin while it lives; `restore` on drop.
pub struct RawMode(());

impl RawMode {
    /// Puts the terminal on stdin in raw mode (nothing when stdin is not a terminal).
    pub fn enter() -> Result<RawMode, String> {
        if !stdin_is_tty() {
            return Ok(RawMode(()));
        }
        let original = termios::tcgetattr(stdin_fd())
            .map_err(|err| format!("reading the terminal settings of stdin: {err}"))?;
        let mut raw = original.clone();
        termios::cfmakeraw(&mut raw);
        // Output post-processing stays on, as docker's raw mode: "\n" still returns
        // the carriage for anything this process prints itself.
        raw.output_flags |= termios::OutputFlags::OPOST;
        {
            let mut saved = SAVED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if saved.is_none() {
                *saved = Some(original);
            }
        }
        install_panic_hook();
        termios::tcsetattr(stdin_fd(), SetArg::TCSANOW, &raw)
            .map_err(|err| format!("putting the terminal in raw mode: {err}"))?;
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts back the terminal settings found before raw mode; idempotent, and called before
/// every exit of the process (which skips destructors).
pub fn restore() {
    let saved = SAVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(original) = saved {
        let _ = termios::tcsetattr(stdin_fd(), SetArg::TCSANOW, &original);
    }
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// The terminal's size on stdout (or stdin) as (rows, columns).
pub fn size() -> Option<(u16, u16)> {
    for fd in [1, 0] {
        let mut ws = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
        let rc = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Parses docker's `--detach-keys` ("ctrl-p,ctrl-q", letters, "ctrl-@", "ctrl-[" ...)
/// into the byte sequence typed.
pub fn parse_detach_keys(keys: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for key in keys.split(',') {
        let lower = key.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("ctrl-") {
            let bytes = rest.as_bytes();
            let byte = match bytes {
                [c @ b'a'..=b'z'] => c - b'a' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => return Err(format!("invalid detach keys {keys:?}: unknown key {key:?}")),
            };
            out.push(byte);
        } else if key.len() == 1 {
            out.push(key.as_bytes()[0]);
        } else {
            return Err(format!("invalid detach keys {keys:?}: unknown key {key:?}"));
        }
    }
    if out.is_empty() {
        return Err(format!("invalid detach keys {keys:?}"));
    }
    Ok(out)
}

/// Watches typed input for the detach sequence (the daemon detaches; this tells the
/// CLI that the end of the output was a detach, not an exit).
pub struct DetachMatcher {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachMatcher {
    pub fn new(keys: Vec<u8>) -> DetachMatcher {
        DetachMatcher { keys, matched: 0 }
    }

    /// Feeds typed bytes; true once the whole sequence was typed.
    pub fn feed(&mut self, input: &[u8]) -> bool {
        for &byte in input {
            if self.keys.get(self.matched) == Some(&byte) {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return true;
                }
            } else {
                self.matched = usize::from(self.keys.first() == Some(&byte));
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(parse_detach_keys("a,ctrl-@").unwrap(), vec![b'a', 0]);
        assert!(parse_detach_keys("ctrl-").is_err());
        let mut m = DetachMatcher::new(vec![16, 17]);
        assert!(!m.feed(b"ab\x10"));
        assert!(m.feed(b"\x11"));
        let mut m = DetachMatcher::new(vec![16, 17]);
        assert!(!m.feed(b"\x10x\x11"));
    }
}
