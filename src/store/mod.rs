//! Metadata persistence: one SQLite database (bundled, WAL mode) under the root dir.
//!
//! Objects (pods, containers, images, networks, volumes, ...) are JSON documents keyed by
//! (namespace, kind, id), with an optional name that is unique per (namespace, kind): the
//! database itself refuses a second container with the same name, so a name is reserved
//! exactly as long as its record exists. This mirrors containerd's metadata store
//! (namespaced buckets of objects), with SQL transactions making multi-object changes
//! atomic. No SQL or table layout exists outside this module.
//!
//! Calls block on disk I/O (a commit fsyncs the WAL); async callers run them on a
//! blocking thread. Hot read paths (CRI List*/Status) are served from memory by the
//! layers above, never from here.

mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use schema::SCHEMA_VERSION;

/// File name of the database inside the root directory.
pub const DATABASE_FILE: &str = "metadata.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open metadata database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "metadata database {path} has schema version {found}, newer than this wharfd supports ({supported}); run a newer wharfd"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("migrating metadata database {path} to schema version {version}: {source}")]
    Migration {
        path: PathBuf,
        version: u32,
        source: rusqlite::Error,
    },
    #[error("{kind} name {name:?} is already in use in namespace {namespace:?}")]
    NameTaken {
        namespace: String,
        kind: Kind,
        name: String,
    },
    #[error("{kind} {id:?} already exists in namespace {namespace:?}")]
    IdTaken {
        namespace: String,
        kind: Kind,
        id: String,
    },
    #[error("{kind} {id:?} record is corrupt: {source}")]
    Corrupt {
        kind: Kind,
        id: String,
        source: serde_json::Error,
    },
    #[error("cannot encode {kind} {id:?}: {source}")]
    Encode {
        kind: Kind,
        id: String,
        source: serde_json::Error,
    },
    #[error("metadata database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl crate::error::HasKind for StoreError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            StoreError::NameTaken { .. } | StoreError::IdTaken { .. } => ErrorKind::AlreadyExists,
            StoreError::NewerSchema { .. } => ErrorKind::FailedPrecondition,
            StoreError::Open { .. }
            | StoreError::Migration { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Encode { .. }
            | StoreError::Sqlite(_) => ErrorKind::Internal,
        }
    }
}

/// The kinds of object kept in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Container,
    Image,
    Network,
    Volume,
    /// An address given to a pod by the built-in bridge network's IPAM.
    Lease,
    /// A container's attachment to a user-defined network (Docker's endpoint).
    Endpoint,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::Container => "container",
            Kind::Image => "image",
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Lease => "lease",
            Kind::Endpoint => "endpoint",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Object namespaces, kept apart as containerd keeps its namespaces: CRI calls see only
/// `k8s.io` objects, the Docker API only `docker` ones.
pub const CRI_NAMESPACE: &str = "k8s.io";
pub const DOCKER_NAMESPACE: &str = "docker";
/// Node-wide network state (built-in bridge networks and their address leases), shared
/// by the CRI and Docker APIs.
pub const NETWORK_NAMESPACE: &str = "network";

/// One stored object as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    pub namespace: String,
    pub id: String,
    pub name: Option<String>,
    pub value: T,
    /// Nanoseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Time per operation (waiting for the connection included), for the metrics.
    op_seconds: prometheus::HistogramVec,
}

/// Store operation latency buckets (seconds): reads take microseconds, a synchronous
/// commit an fsync or two.
const STORE_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
];

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database in `root`, and migrates it to the current
    /// schema. A database written by a newer wharfd is refused rather than guessed at.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let path = root.join(DATABASE_FILE);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        // WAL: readers never block the writer. synchronous=FULL: a commit is on disk
        // before the call returns, so neither kill -9 nor power loss loses a record.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        // 256 KiB of page cache instead of SQLite's 2 MiB: hot reads are served from
        // memory above this layer, and the pages a write walks stay in the OS cache.
        conn.pragma_update(None, "cache_size", -256)
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        schema::migrate(&mut conn, &path)?;
        let op_seconds = crate::metrics::fixed(prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "wharf_store_operation_duration_seconds",
                "Metadata store (SQLite) operations: get, list, update (a transaction, \
                 committed with fsync).",
            )
            .buckets(STORE_BUCKETS.to_vec()),
            &["operation"],
        ));
        Ok(Store {
            path,
            conn: Mutex::new(conn),
            op_seconds,
        })
    }

    /// The store's metrics, for the engine's registry.
    pub fn metric_collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.op_seconds.clone())]
    }

    /// Times one operation.
    fn timed<R>(&self, operation: &str, f: impl FnOnce() -> R) -> R {
        let timer = self
            .op_seconds
            .with_label_values(&[operation])
            .start_timer();
        let result = f();
        timer.observe_duration();
        result
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(schema::user_version(&self.lock())?)
    }

    /// A cheap query proving the database answers (for readiness checks).
    pub fn check(&self) -> Result<(), StoreError> {
        self.lock()
            .query_row("SELECT count(*) FROM meta", [], |_| Ok(()))?;
        Ok(())
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        namespace: &str,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Record<T>>, StoreError> {
        self.timed("get", || get_record(&self.lock(), namespace, kind, id))
    }

    /// Every object of `kind` in `namespace` (all namespaces when `None`), oldest first.
    pub fn list<T: DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        kind: Kind,
    ) -> Result<Vec<Record<T>>, StoreError> {
        self.timed("list", || self.list_untimed(namespace, kind))
    }

    fn list_untimed<T: DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        kind: Kind,
    ) -> Result<Vec<Record<T>>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT namespace, id, name, data, created_at, updated_at FROM objects \
             WHERE kind = ?1 AND (?2 IS NULL OR namespace = ?2) ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map(params![kind.as_str(), namespace], RawRecord::from_row)?;
        let mut records = Vec::new();
        for row in rows {
            records.push(row?.decode(kind)?);
        }
        Ok(records)
    }

    /// Runs `change` in one transaction: every write in it lands, or none does (an
    /// error from the closure, or a crash before commit, rolls all of them back).
    pub fn update<R, E>(&self, change: impl FnOnce(&mut Txn<'_>) -> Result<R, E>) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        self.timed("update", || self.update_untimed(change))
    }

    fn update_untimed<R, E>(
        &self,
        change: impl FnOnce(&mut Txn<'_>) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let mut txn = Txn { tx };
        let result = change(&mut txn)?;
        crate::crash_point::reached("store.before_commit");
        txn.tx.commit().map_err(StoreError::from)?;
        crate::crash_point::reached("store.after_commit");
        Ok(result)
    }

    /// A small key/value area for the daemon's own bookkeeping.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the connection half-changed (an
        // open transaction rolls back when dropped), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Writes inside one [`Store::update`] transaction.
pub struct Txn<'conn> {
    tx: rusqlite::Transaction<'conn>,
}

impl Txn<'_> {
    /// Adds a new object. Fails with `IdTaken` or `NameTaken` if either is in use.
    pub fn insert<T: Serialize>(
        &mut self,
        namespace: &str,
        kind: Kind,
        id: &str,
        name: Option<&str>,
        value: &T,
    ) -> Result<(), StoreError> {
        let data = encode(kind, id, value)?;
        let now = now_nanos();
        let result = self.tx.execute(
            "INSERT INTO objects (namespace, kind, id, name, data, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![namespace, kind.as_str(), id, name, data, now],
        );
        match result {
            Ok(_) => Ok(()),
            Err(err) if is_unique_violation(&err) => {
                if self.exists(namespace, kind, id)? {
                    Err(StoreError::IdTaken {
                        namespace: namespace.to_string(),
                        kind,
                        id: id.to_string(),
                    })
                } else {
                    Err(StoreError::NameTaken {
                        namespace: namespace.to_string(),
                        kind,
                        name: name.unwrap_or_default().to_string(),
                    })
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Replaces the value of an existing object, keeping its name and creation time.
    /// Returns false if there is no such object.
    pub fn replace<T: Serialize>(
        &mut self,
        namespace: &str,
        kind: Kind,
        id: &str,
        value: &T,
    ) -> Result<bool, StoreError> {
        let data = encode(kind, id, value)?;
        let changed = self.tx.execute(
            "UPDATE objects SET data = ?4, updated_at = ?5 \
             WHERE namespace = ?1 AND kind = ?2 AND id = ?3",
            params![namespace, kind.as_str(), id, data, now_nanos()],
        )?;
        Ok(changed > 0)
    }

    /// Replaces an object's value and gives it a new name, in one step: `NameTaken` if
    /// another object of the namespace and kind has it. Returns false if there is no
    /// such object.
    pub fn rename<T: Serialize>(
        &mut self,
        namespace: &str,
        kind: Kind,
        id: &str,
        name: &str,
        value: &T,
    ) -> Result<bool, StoreError> {
        let data = encode(kind, id, value)?;
        let result = self.tx.execute(
            "UPDATE objects SET name = ?4, data = ?5, updated_at = ?6 \
             WHERE namespace = ?1 AND kind = ?2 AND id = ?3",
            params![namespace, kind.as_str(), id, name, data, now_nanos()],
        );
        match result {
            Ok(changed) => Ok(changed > 0),
            Err(err) if is_unique_violation(&err) => Err(StoreError::NameTaken {
                namespace: namespace.to_string(),
                kind,
                name: name.to_string(),
            }),
            Err(err) => Err(err.into()),
        }
    }

    /// Removes an object; returns false if it was not there (removal is idempotent).
    pub fn delete(&mut self, namespace: &str, kind: Kind, id: &str) -> Result<bool, StoreError> {
        let changed = self.tx.execute(
            "DELETE FROM objects WHERE namespace = ?1 AND kind = ?2 AND id = ?3",
            params![namespace, kind.as_str(), id],
        )?;
        Ok(changed > 0)
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        namespace: &str,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Record<T>>, StoreError> {
        get_record(&self.tx, namespace, kind, id)
    }

    fn exists(&self, namespace: &str, kind: Kind, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .query_row(
                "SELECT 1 FROM objects WHERE namespace = ?1 AND kind = ?2 AND id = ?3",
                params![namespace, kind.as_str(), id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

struct RawRecord {
    namespace: String,
    id: String,
    name: Option<String>,
    data: String,
    created_at: i64,
    updated_at: i64,
}

impl RawRecord {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
        Ok(RawRecord {
            namespace: row.get(0)?,
            id: row.get(1)?,
            name: row.get(2)?,
            data: row.get(3)?,
            created_at: row.get(4)?,
            updated_at: row.get(5)?,
        })
    }

    fn decode<T: DeserializeOwned>(self, kind: Kind) -> Result<Record<T>, StoreError> {
        let value = serde_json::from_str(&self.data).map_err(|source| StoreError::Corrupt {
            kind,
            id: self.id.clone(),
            source,
        })?;
        Ok(Record {
            namespace: self.namespace,
            id: self.id,
            name: self.name,
            value,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn get_record<T: DeserializeOwned>(
    conn: &Connection,
    namespace: &str,
    kind: Kind,
    id: &str,
) -> Result<Option<Record<T>>, StoreError> {
    let raw = conn
        .prepare_cached(
            "SELECT namespace, id, name, data, created_at, updated_at FROM objects \
             WHERE namespace = ?1 AND kind = ?2 AND id = ?3",
        )?
        .query_row(params![namespace, kind.as_str(), id], RawRecord::from_row)
        .optional()?;
    raw.map(|raw| raw.decode(kind)).transpose()
}

fn encode<T: Serialize>(kind: Kind, id: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode {
        kind,
        id: id.to_string(),
        source,
    })
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pod {
        uid: String,
        attempt: u32,
    }

    fn pod(uid: &str) -> Pod {
        Pod {
            uid: uid.to_string(),
            attempt: 0,
        }
    }

    fn open_temp() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn fresh_database_is_at_current_schema_in_wal_mode() {
        let (_dir, store) = open_temp();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let mode: String = store
            .lock()
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        store.check().unwrap();
    }

    #[test]
    fn records_survive_reopen() {
        let (dir, store) = open_temp();
        store
            .update(|tx| tx.insert(CRI_NAMESPACE, Kind::Pod, "p1", Some("web"), &pod("u1")))
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let record = store
            .get::<Pod>(CRI_NAMESPACE, Kind::Pod, "p1")
            .unwrap()
            .unwrap();
        assert_eq!(record.value, pod("u1"));
        assert_eq!(record.name.as_deref(), Some("web"));
        assert!(record.created_at > 0);
    }

    #[test]
    fn failed_update_changes_nothing() {
        let (_dir, store) = open_temp();
        let result: Result<(), StoreError> = store.update(|tx| {
            tx.insert(CRI_NAMESPACE, Kind::Pod, "p1", Some("a"), &pod("u1"))?;
            tx.insert(CRI_NAMESPACE, Kind::Container, "c1", Some("c"), &pod("u1"))?;
            // Same name as p1: the whole transaction must roll back.
            tx.insert(CRI_NAMESPACE, Kind::Pod, "p2", Some("a"), &pod("u2"))?;
            Ok(())
        });
        let err = result.unwrap_err();
        assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
        assert!(err.to_string().contains("\"a\""), "{err}");
        assert!(store.list::<Pod>(None, Kind::Pod).unwrap().is_empty());
        assert!(store.list::<Pod>(None, Kind::Container).unwrap().is_empty());
    }

    #[test]
    fn duplicate_id_is_reported_as_such() {
        let (_dir, store) = open_temp();
        store
            .update(|tx| tx.insert(CRI_NAMESPACE, Kind::Pod, "p1", None, &pod("u1")))
            .unwrap();
        let err = store
            .update(|tx| tx.insert(CRI_NAMESPACE, Kind::Pod, "p1", None, &pod("u2")))
            .unwrap_err();
        assert!(matches!(err, StoreError::IdTaken { .. }), "{err}");
    }

    #[test]
    fn names_are_unique_per_namespace_and_kind_only() {
        let (_dir, store) = open_temp();
        store
            .update(|tx| {
                tx.insert(CRI_NAMESPACE, Kind::Pod, "p1", Some("x"), &pod("1"))?;
                tx.insert(DOCKER_NAMESPACE, Kind::Pod, "p2", Some("x"), &pod("2"))?;
                tx.insert(CRI_NAMESPACE, Kind::Container, "c1", Some("x"), &pod("3"))?;
                // Unnamed objects never clash.
                tx.insert(CRI_NAMESPACE, Kind::Image, "i1", None, &pod("4"))?;
                tx.insert(CRI_NAMESPACE, Kind::Image, "i2", None, &pod("5"))
            })
            .unwrap();
        let cri_pods = store.list::<Pod>(Some(CRI_NAMESPACE), Kind::Pod).unwrap();
        assert_eq!(cri_pods.len(), 1);
        assert_eq!(cri_pods[0].id, "p1");
        assert_eq!(store.list::<Pod>(None, Kind::Pod).unwrap().len(), 2);
    }

    #[test]
    fn rename_moves_the_name_or_refuses_a_taken_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .update(|tx| {
                tx.insert(CRI_NAMESPACE, Kind::Pod, "p1", Some("a"), &pod("u1"))?;
                tx.insert(CRI_NAMESPACE, Kind::Pod, "p2", Some("b"), &pod("u2"))
            })
            .unwrap();
        let err = store
            .update(|tx| tx.rename(CRI_NAMESPACE, Kind::Pod, "p1", "b", &pod("u1")))
            .unwrap_err();
        assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
        assert!(store
            .update(|tx| tx.rename(CRI_NAMESPACE, Kind::Pod, "p1", "c", &pod("u3")))
            .unwrap());
        // "a" is free again, and the value changed with the name.
        store
            .update(|tx| tx.insert(CRI_NAMESPACE, Kind::Pod, "p3", Some("a"), &pod("u4")))
            .unwrap();
        let renamed = store
            .get::<Pod>(CRI_NAMESPACE, Kind::Pod, "p1")
            .unwrap()
            .unwrap();
        assert_eq!(renamed.name.as_deref(), Some("c"));
        assert_eq!(renamed.value, pod("u3"));
    }

    #[test]
    fn deleting_releases_the_name() {
        let (_dir, store) = open_temp();
        store
            .update(|tx| tx.insert(CRI_NAMESPACE, Kind::Container, "c1", Some("n"), &pod("1")))
            .unwrap();
        assert!(store
            .update(|tx| tx.delete(CRI_NAMESPACE, Kind::Container, "c1"))
            .unwrap());
        assert!(!store
            .update(|tx| tx.delete(CRI_NAMESPACE, Kind::Container, "c1"))
            .unwrap());
        store
            .update(|tx| tx.insert(CRI_NAMESPACE, Kind::Container, "c2", Some("n"), &pod("2")))
            .unwrap();
    }

    #[test]
    fn replace_keeps_name_and_creation_time() {
        let (_dir, store) = open_temp();
        store
            .update(|tx| tx.insert(CRI_NAMESPACE, Kind::Pod, "p1", Some("n"), &pod("1")))
            .unwrap();
        let before = store
            .get::<Pod>(CRI_NAMESPACE, Kind::Pod, "p1")
            .unwrap()
            .unwrap();
        let mut changed = pod("1");
        changed.attempt = 7;
        assert!(store
            .update(|tx| tx.replace(CRI_NAMESPACE, Kind::Pod, "p1", &changed))
            .unwrap());
        assert!(!store
            .update(|tx| tx.replace(CRI_NAMESPACE, Kind::Pod, "missing", &changed))
            .unwrap());
        let after = store
            .get::<Pod>(CRI_NAMESPACE, Kind::Pod, "p1")
            .unwrap()
            .unwrap();
        assert_eq!(after.value.attempt, 7);
        assert_eq!(after.name, before.name);
        assert_eq!(after.created_at, before.created_at);
        assert!(after.updated_at >= before.updated_at);
    }

    #[test]
    fn corrupt_record_is_an_error_naming_it() {
        let (_dir, store) = open_temp();
        store
            .lock()
            .execute(
                "INSERT INTO objects VALUES ('k8s.io', 'pod', 'bad', NULL, 'not json', 0, 0)",
                [],
            )
            .unwrap();
        let err = store
            .get::<Pod>(CRI_NAMESPACE, Kind::Pod, "bad")
            .unwrap_err();
        assert!(err.to_string().contains("\"bad\""), "{err}");
    }

    #[test]
    fn meta_values() {
        let (_dir, store) = open_temp();
        assert_eq!(store.meta("k").unwrap(), None);
        store.set_meta("k", "v1").unwrap();
        store.set_meta("k", "v2").unwrap();
        assert_eq!(store.meta("k").unwrap().as_deref(), Some("v2"));
    }
}
