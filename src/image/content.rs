//! The content store: blobs (manifests, configs, layers) addressed by their sha256
//! digest under `<root>/content/sha256/<hex>`, shared by every image that uses them.
//!
//! Ingest is atomic: bytes go to `<root>/content/ingest/<hex>.<n>` while being hashed, and
//! only a blob whose size and digest match is fsynced and renamed into place. A crash
//! leaves at most a temp file, removed at the next start. Archives being loaded are
//! spooled the same way, one file per entry, in a directory `ingest/spool-<n>` (a
//! [`SpoolDir`]) removed when done or at the next start; a spooled file whose digest
//! was computed while writing it becomes a blob by a rename ([`ContentStore::commit_spooled`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    InvalidDigest(String),
    #[error("blob {0} is not in the content store")]
    NotFound(String),
    #[error("blob {expected} failed verification: its content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest} failed verification: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("content store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Storing a blob failed: a full disk is ResourceExhausted (the pull can be
    /// retried once there is room), anything else Internal.
    #[error("storing blob {digest} in {path}: {source}")]
    Write {
        digest: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A write failed for want of space (ENOSPC) or quota (EDQUOT).
pub fn out_of_space(err: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOSPC | Errno::EDQUOT)
    ) || err.kind() == std::io::ErrorKind::StorageFull
}

impl crate::error::HasKind for ContentError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ContentError::InvalidDigest(_) => ErrorKind::InvalidArgument,
            ContentError::NotFound(_) => ErrorKind::NotFound,
            ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. } => {
                ErrorKind::DataLoss
            }
            ContentError::Io { .. } => ErrorKind::Internal,
            ContentError::Write { source, .. } if out_of_space(source) => {
                ErrorKind::ResourceExhausted
            }
            ContentError::Write { .. } => ErrorKind::Internal,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks `sha256:<64 lowercase hex>` and returns the hex part. Digests become file
/// names, so nothing else may pass.
pub fn digest_hex(digest: &str) -> Result<&str, ContentError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        _ => Err(ContentError::InvalidDigest(digest.to_string())),
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    next_ingest: AtomicU64,
    /// One lock per digest being written, so concurrent pulls sharing a blob fetch it
    /// once: the second waits, then finds the blob present.
    writers: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("blobs", &self.blobs)
            .finish()
    }
}

impl ContentStore {
    /// Opens the store under `root` (`<root>/sha256`, `<root>/ingest`), removing
    /// partial ingests a crash left behind.
    pub fn open(root: &Path) -> Result<ContentStore, ContentError> {
        let blobs = root.join("sha256");
        let ingest = root.join("ingest");
        for dir in [&blobs, &ingest] {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        for entry in std::fs::read_dir(&ingest).map_err(io_err(&ingest))? {
            let entry = entry.map_err(io_err(&ingest))?;
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing partial download left by a crash");
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(ContentStore {
            blobs,
            ingest,
            next_ingest: AtomicU64::new(0),
            writers: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        Ok(self.blobs.join(digest_hex(digest)?))
    }

    pub fn exists(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Size of a stored blob, or None.
    pub fn size(&self, digest: &str) -> Option<u64> {
        let path = self.path(digest).ok()?;
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ContentError> {
        let path = self.path(digest)?;
        std::fs::read(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => ContentError::NotFound(digest.to_string()),
            _ => ContentError::Io { path, source: err },
        })
    }

    /// Stores a small blob held in memory (manifest, config), verifying its digest.
    pub fn write_blob(&self, digest: &str, data: &[u8]) -> Result<(), ContentError> {
        if self.exists(digest) {
            return Ok(());
        }
        let mut ingest = self.ingest(digest, Some(data.len() as u64))?;
        ingest.write(data)?;
        ingest.commit()
    }

    /// Starts writing a blob. Bytes are verified against `digest` (and `size` when
    /// known) at [`Ingest::commit`]; a dropped ingest leaves nothing behind.
    pub fn ingest(&self, digest: &str, size: Option<u64>) -> Result<Ingest, ContentError> {
        let hex = digest_hex(digest)?;
        let n = self.next_ingest.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .ingest
            .join(format!("{hex}.{}.{n}", std::process::id()));
        let file = File::create(&temp).map_err(io_err(&temp))?;
        Ok(Ingest {
            file: Some(std::io::BufWriter::with_capacity(256 * 1024, file)),
            temp,
            target: self.blobs.join(hex),
            blobs_dir: self.blobs.clone(),
            digest: digest.to_string(),
            expected_size: size,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// A fresh directory to spool an archive's entries into (`ingest/spool-<pid>.<n>`),
    /// removed with everything in it when dropped.
    pub fn spool_dir(&self) -> Result<SpoolDir, ContentError> {
        let n = self.next_ingest.fetch_add(1, Ordering::Relaxed);
        let path = self
            .ingest
            .join(format!("spool-{}.{n}", std::process::id()));
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(SpoolDir {
            path,
            next: AtomicU64::new(0),
        })
    }

    /// Makes a spooled file (in a [`SpoolDir`] of this store) the blob `digest`: the
    /// caller computed `digest` from the file's bytes while writing it. The file is
    /// synced and renamed into place; if the blob exists already, the file is left
    /// where it is (its spool directory removes it).
    pub fn commit_spooled(&self, file: &Path, digest: &str) -> Result<(), ContentError> {
        let target = self.blobs.join(digest_hex(digest)?);
        if target.is_file() {
            return Ok(());
        }
        File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(io_err(file))?;
        std::fs::rename(file, &target).map_err(io_err(&target))?;
        File::open(&self.blobs)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err(&self.blobs))
    }

    /// Serializes writers of one digest (see `writers`). Hold the guard while checking
    /// for and fetching the blob. Any other content-addressed key (a snapshot chain ID)
    /// can be locked the same way.
    pub async fn lock_digest(&self, digest: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
            writers.retain(|_, weak| weak.strong_count() > 0);
            match writers.get(digest).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    writers.insert(digest.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// Removes a blob; false if it was not there.
    pub fn delete(&self, digest: &str) -> Result<bool, ContentError> {
        let path = self.path(digest)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(ContentError::Io { path, source: err }),
        }
    }

    /// Every stored blob's digest and size.
    pub fn list(&self) -> Result<Vec<(String, u64)>, ContentError> {
        let mut blobs = Vec::new();
        for entry in std::fs::read_dir(&self.blobs).map_err(io_err(&self.blobs))? {
            let entry = entry.map_err(io_err(&self.blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if digest_hex(&digest).is_ok() {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                blobs.push((digest, size));
            }
        }
        Ok(blobs)
    }

    /// Bytes and inodes used by blobs and partial ingests.
    pub fn usage(&self) -> Result<(u64, u64), ContentError> {
        let mut bytes = 0;
        let mut inodes = 0;
        for dir in [&self.blobs, &self.ingest] {
            for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
                let entry = entry.map_err(io_err(dir))?;
                if let Ok(meta) = entry.metadata() {
                    use std::os::unix::fs::MetadataExt;
                    bytes += meta.blocks() * 512;
                    inodes += 1;
                }
            }
        }
        Ok((bytes, inodes))
    }
}

/// A temporary directory of spooled files (see [`ContentStore::spool_dir`]); removed
/// with its content when dropped.
#[derive(Debug)]
pub struct SpoolDir {
    path: PathBuf,
    next: AtomicU64,
}

impl SpoolDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new empty file in the directory, open for writing.
    pub fn create(&self) -> Result<(File, PathBuf), ContentError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.path.join(n.to_string());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((file, path))
    }
}

impl Drop for SpoolDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    path = %self.path.display(),
                    error = %err,
                    "cannot remove a spool directory (removed at the next start)"
                );
            }
        }
    }
}

/// A blob being written. Implements `std::io::Write` so it can sit behind a tee.
pub struct Ingest {
    file: Option<std::io::BufWriter<File>>,
    temp: PathBuf,
    target: PathBuf,
    blobs_dir: PathBuf,
    digest: String,
    expected_size: Option<u64>,
    hasher: Sha256,
    written: u64,
}

impl Ingest {
    pub fn write(&mut self, data: &[u8]) -> Result<(), ContentError> {
        let temp = self.temp.clone();
        let file = self.file.as_mut().ok_or_else(|| ContentError::Io {
            path: temp.clone(),
            source: std::io::Error::other("ingest already finished"),
        })?;
        file.write_all(data).map_err(|source| ContentError::Write {
            digest: self.digest.clone(),
            path: temp.clone(),
            source,
        })?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        if let Some(expected) = self.expected_size {
            if self.written > expected {
                return Err(ContentError::SizeMismatch {
                    digest: self.digest.clone(),
                    expected,
                    actual: self.written,
                });
            }
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies size and digest, then makes the blob durable and visible.
    pub fn commit(mut self) -> Result<(), ContentError> {
        let mut file = self.file.take().ok_or_else(|| ContentError::Io {
            path: self.temp.clone(),
            source: std::io::Error::other("ingest already finished"),
        })?;
        if let Some(expected) = self.expected_size {
            if self.written != expected {
                return Err(ContentError::SizeMismatch {
                    digest: self.digest.clone(),
                    expected,
                    actual: self.written,
                });
            }
        }
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if actual != self.digest {
            return Err(ContentError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        let write_error = |source| ContentError::Write {
            digest: self.digest.clone(),
            path: self.temp.clone(),
            source,
        };
        file.flush().map_err(&write_error)?;
        let file = file
            .into_inner()
            .map_err(|err| write_error(err.into_error()))?;
        file.sync_all().map_err(&write_error)?;
        std::fs::rename(&self.temp, &self.target).map_err(io_err(&self.target))?;
        File::open(&self.blobs_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err(&self.blobs_dir))?;
        crate::crash_point::reached("content.after_commit");
        Ok(())
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ingest::write(self, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if self.file.is_some() || self.temp.exists() {
            self.file.take();
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn verified_blob_is_stored_once_by_digest() {
        let (_dir, store) = open();
        let data = b"hello layers";
        let digest = sha256_digest(data);
        store.write_blob(&digest, data).unwrap();
        store.write_blob(&digest, data).unwrap();
        assert_eq!(store.read(&digest).unwrap(), data);
        assert_eq!(store.size(&digest), Some(data.len() as u64));
        assert_eq!(
            store.list().unwrap(),
            vec![(digest.clone(), data.len() as u64)]
        );
        assert!(store.delete(&digest).unwrap());
        assert!(!store.delete(&digest).unwrap());
        assert!(!store.exists(&digest));
    }

    #[test]
    fn mismatched_digest_stores_nothing() {
        let (dir, store) = open();
        let digest = sha256_digest(b"expected");
        let err = store.write_blob(&digest, b"tampered").unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&digest), "{err}");
        assert!(!store.exists(&digest));
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn size_mismatch_is_named() {
        let (_dir, store) = open();
        let digest = sha256_digest(b"abc");
        let mut ingest = store.ingest(&digest, Some(2)).unwrap();
        let err = ingest.write(b"abc").unwrap_err();
        assert!(matches!(
            err,
            ContentError::SizeMismatch {
                expected: 2,
                actual: 3,
                ..
            }
        ));
        drop(ingest);
        let mut short = store.ingest(&digest, Some(10)).unwrap();
        short.write(b"abc").unwrap();
        assert!(matches!(
            short.commit(),
            Err(ContentError::SizeMismatch { .. })
        ));
        assert!(!store.exists(&digest));
    }

    #[test]
    fn digests_cannot_name_other_paths() {
        let (_dir, store) = open();
        for bad in [
            "sha256:../../etc/passwd",
            "md5:abc",
            "sha256:ABC",
            "",
            "sha256:",
        ] {
            assert!(
                matches!(store.path(bad), Err(ContentError::InvalidDigest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn partial_ingests_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let digest = sha256_digest(b"x");
        let mut ingest = store.ingest(&digest, None).unwrap();
        ingest.write(b"x").unwrap();
        // Simulate a crash: the temp file stays, the process is gone.
        std::mem::forget(ingest);
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            1
        );
        drop(store);
        ContentStore::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn spooled_files_become_blobs_and_the_rest_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let spool = store.spool_dir().unwrap();
        let (mut file, path) = spool.create().unwrap();
        file.write_all(b"layer").unwrap();
        drop(file);
        let (_, other) = spool.create().unwrap();
        let digest = sha256_digest(b"layer");
        store.commit_spooled(&path, &digest).unwrap();
        assert_eq!(store.read(&digest).unwrap(), b"layer");
        assert!(!path.exists() && other.exists());
        let spool_path = spool.path().to_path_buf();
        drop(spool);
        assert!(!spool_path.exists());
        // A crash leaves a spool directory: removed at the next open.
        let left = store.spool_dir().unwrap();
        let left_path = left.path().to_path_buf();
        std::mem::forget(left);
        drop(store);
        ContentStore::open(dir.path()).unwrap();
        assert!(!left_path.exists());
    }

    #[tokio::test]
    async fn digest_lock_serializes_writers_of_one_blob() {
        let (_dir, store) = open();
        let store = Arc::new(store);
        let first = store.lock_digest("sha256:a").await;
        let other = store.clone();
        let waiter = tokio::spawn(async move {
            let _guard = other.lock_digest("sha256:a").await;
        });
        // A different digest is not blocked.
        let _b = store.lock_digest("sha256:b").await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.unwrap();
    }
}
