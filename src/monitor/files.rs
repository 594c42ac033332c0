//! Small file and process helpers shared by the monitor commands. They only do I/O, so
//! they return `std::io::Error`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

/// `err: cause: cause...`, so messages that reach the daemon say what really failed
/// (many library errors put the useful part only in their sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some wrappers repeat their source's text in their own message.
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Appends one line (a newline is added) to `path`, creating it.
pub fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)?;
    file.write_all(format!("{line}\n").as_bytes())
}

/// Fields of `/proc/<pid>/stat` after the command name (which may contain spaces and
/// parentheses, so split after the last `)`): index 0 is field 3 (state).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Field 22 (starttime, clock ticks since boot) of a `/proc/<pid>/stat` line.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    stat_fields(stat)?.get(19)?.parse().ok()
}

/// Field 4 (ppid) of a `/proc/<pid>/stat` line.
pub fn parse_parent_pid(stat: &str) -> Option<i32> {
    stat_fields(stat)?.get(1)?.parse().ok()
}

fn read_stat(pid: &str) -> io::Result<String> {
    fs::read_to_string(format!("/proc/{pid}/stat"))
}

fn malformed(pid: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed /proc/{pid}/stat"),
    )
}

/// Start time of `pid` ("self" for the caller); with the pid it names a process uniquely.
pub fn process_start_time(pid: &str) -> io::Result<u64> {
    parse_start_time(&read_stat(pid)?).ok_or_else(|| malformed(pid))
}

pub fn process_parent_pid(pid: &str) -> io::Result<i32> {
    parse_parent_pid(&read_stat(pid)?).ok_or_else(|| malformed(pid))
}

fn fd_is_open(fd: RawFd) -> bool {
    fcntl(fd, FcntlArg::F_GETFD).is_ok()
}

/// Makes sure fds 0-2 are open (on /dev/null if not), so no file opened later lands on
/// a stdio number and gets handed to a container by accident.
pub fn ensure_stdio_open() -> io::Result<()> {
    for fd in 0..3 {
        if !fd_is_open(fd) {
            // The lowest free number is taken: this one. Keep it open for good.
            let null = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            let raw = null.as_raw_fd();
            std::mem::forget(null);
            if raw != fd {
                return Err(io::Error::other(format!(
                    "/dev/null opened as fd {raw}, expected {fd}"
                )));
            }
            fcntl(raw, FcntlArg::F_SETFD(FdFlag::empty()))?;
        }
    }
    Ok(())
}

/// Sets FD_CLOEXEC on every open fd >= `from`, so nothing inherited from the caller
/// leaks into runtimes or containers.
pub fn set_cloexec_from(from: RawFd) -> io::Result<()> {
    for fd in open_fds()? {
        if fd >= from {
            let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
            fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC))?;
        }
    }
    Ok(())
}

/// Closes every fd >= `from`.
pub fn close_fds_from(from: RawFd) -> io::Result<()> {
    for fd in open_fds()? {
        if fd >= from {
            let _ = nix::unistd::close(fd);
        }
    }
    Ok(())
}

/// A private, read-only file mapping whose pages are all clean page-cache pages.
#[derive(Debug, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    len: usize,
}

/// Parses `/proc/self/smaps` and keeps the mappings whose page-table entries can be
/// dropped without losing data: private, not writable, backed by a file, and with no
/// anonymous (copied-on-write) page. RELRO segments, holding relocated copies, are
/// read-only but anonymous, so they are kept.
fn clean_file_mappings(smaps: &str) -> Vec<CleanMapping> {
    let mut mappings = Vec::new();
    let mut candidate: Option<CleanMapping> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                // Not a mapping header (field names have no '-' followed by hex).
                continue;
            };
            let perms = fields.next().unwrap_or("");
            let inode = fields.nth(2).unwrap_or("0");
            let path = fields.next().unwrap_or("");
            candidate = (perms.len() == 4
                && !perms.contains('w')
                && perms.ends_with('p')
                && inode != "0"
                && path.starts_with('/'))
            .then_some(CleanMapping {
                start,
                len: end.saturating_sub(start),
            });
        } else if first == "Anonymous:" {
            if let Some(mapping) = candidate.take() {
                if fields.next() == Some("0") {
                    mappings.push(mapping);
                }
            }
        }
    }
    mappings
}

/// Drops the page-table entries of clean, read-only file mappings (program and library
/// code and constants). The pages stay in the page cache and what the caller runs next
/// is faulted back in on first use, so a long-lived process's RSS becomes the code its
/// main loop really touches, not everything its setup went through.
pub fn release_clean_file_pages() -> io::Result<()> {
    let smaps = fs::read_to_string("/proc/self/smaps")?;
    for mapping in clean_file_mappings(&smaps) {
        let Some(start) = std::ptr::NonNull::new(mapping.start as *mut std::ffi::c_void) else {
            continue;
        };
        // SAFETY: the range is a whole private file mapping that is not writable and
        // has no anonymous page: MADV_DONTNEED only makes later accesses re-read the
        // same bytes from the file, so no memory content changes.
        let _ = unsafe {
            nix::sys::mman::madvise(
                start,
                mapping.len,
                nix::sys::mman::MmapAdvise::MADV_DONTNEED,
            )
        };
    }
    Ok(())
}

/// Closes every fd not listed in `keep`.
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    for fd in open_fds()? {
        if !keep.contains(&fd) {
            let _ = nix::unistd::close(fd);
        }
    }
    Ok(())
}

/// The caller's open fds (the directory stream's own fd excluded).
fn open_fds() -> io::Result<Vec<RawFd>> {
    let entries = fs::read_dir("/proc/self/fd")?;
    let mut fds: Vec<RawFd> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // read_dir's own fd was listed but is closed now; drop whatever is no longer open.
    fds.retain(|&fd| fd_is_open(fd));
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "4242 (we(ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_parent_pid(stat), Some(1));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        let smaps = "\
55dc5739a000-55dc5761d000 r--p 00000000 fe:00 5442257 /usr/bin/prog
Rss:                 448 kB
Anonymous:             0 kB
55dc5761e000-55dc57afc000 r-xp 00283000 fe:00 5442257 /usr/bin/prog
Rss:                1392 kB
Anonymous:             0 kB
55dc57afc000-55dc57b6f000 r--p 00760000 fe:00 5442257 /usr/bin/prog
Anonymous:           460 kB
55dc57b6f000-55dc57b73000 rw-p 007d2000 fe:00 5442257 /usr/bin/prog
Anonymous:             0 kB
55dc75a5f000-55dc75a80000 rw-p 00000000 00:00 0 [heap]
Anonymous:            92 kB
7f3389e48000-7f3389e4a000 r--s 00031000 fe:00 325843 /dev/shm/x
Anonymous:             0 kB
7ffe3ed2a000-7ffe3ed2c000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
";
        assert_eq!(
            clean_file_mappings(smaps),
            [
                CleanMapping {
                    start: 0x55dc5739a000,
                    len: 0x55dc5761d000 - 0x55dc5739a000
                },
                CleanMapping {
                    start: 0x55dc5761e000,
                    len: 0x55dc57afc000 - 0x55dc5761e000
                },
            ]
        );
    }

    #[test]
    fn releasing_clean_pages_keeps_the_process_working() {
        release_clean_file_pages().expect("release");
        // Code and constants come back from the file on use.
        assert_eq!(format!("{}", 40 + 2), "42");
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time("self").expect("stat") > 0);
    }

    #[test]
    fn error_chain_includes_sources_once() {
        let inner = io::Error::new(io::ErrorKind::NotFound, "no such file");
        let outer = io::Error::other(OuterError(inner));
        assert_eq!(error_chain(&outer), "outer failed: no such file");

        #[derive(Debug)]
        struct OuterError(io::Error);
        impl std::fmt::Display for OuterError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer failed")
            }
        }
        impl std::error::Error for OuterError {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
    }
}
