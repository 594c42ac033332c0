//! Size-based rotation of the log the monitor writes, for Docker's json-file and local
//! drivers (`--log-opt max-size=10m --log-opt max-file=3`): once the file holds
//! `max_size` bytes it becomes `<log>.1` (older ones move up to `<log>.<max_files - 1>`,
//! the oldest is dropped) and the monitor opens a new, empty `<log>`, as dockerd's
//! json-file driver rotates. With `max_files` 1 the file is started over. CRI logs are
//! not rotated here: kubelet renames them itself and asks for a reopen.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// When and how far to rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRotation {
    /// Bytes a file may reach before it is rotated (at least 1).
    pub max_size: u64,
    /// Files kept, the current one included (at least 1).
    pub max_files: u32,
}

/// `<log>.<n>`: the n-th newest rotated file.
pub fn rotated_path(log: &Path, n: u32) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The rotated files of `log` that exist, oldest first (`<log>.N` .. `<log>.1`).
pub fn rotated_files(log: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut n = 1;
    loop {
        let path = rotated_path(log, n);
        if !path.exists() {
            break;
        }
        files.push(path);
        n += 1;
    }
    files.reverse();
    files
}

impl LogRotation {
    /// Moves the files along for a new `<log>`; the caller then opens it.
    pub fn rotate(&self, log: &Path) -> io::Result<()> {
        if self.max_files <= 1 {
            return match std::fs::remove_file(log) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            };
        }
        match std::fs::remove_file(rotated_path(log, self.max_files - 1)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        for n in (1..self.max_files - 1).rev() {
            match std::fs::rename(rotated_path(log, n), rotated_path(log, n + 1)) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        std::fs::rename(log, rotated_path(log, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_move_up_and_the_oldest_goes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("container.log");
        let rotation = LogRotation {
            max_size: 10,
            max_files: 3,
        };
        for round in 0..4 {
            std::fs::write(&log, format!("round {round}")).unwrap();
            rotation.rotate(&log).unwrap();
        }
        assert!(!log.exists());
        assert_eq!(
            std::fs::read_to_string(rotated_path(&log, 1)).unwrap(),
            "round 3"
        );
        assert_eq!(
            std::fs::read_to_string(rotated_path(&log, 2)).unwrap(),
            "round 2"
        );
        assert!(!rotated_path(&log, 3).exists());
        assert_eq!(
            rotated_files(&log),
            vec![rotated_path(&log, 2), rotated_path(&log, 1)]
        );
        let single = LogRotation {
            max_size: 10,
            max_files: 1,
        };
        std::fs::write(&log, "x").unwrap();
        single.rotate(&log).unwrap();
        assert!(!log.exists());
    }
}
