//! Schema versions and migrations. The version lives in SQLite's `user_version`; each
//! migration runs in its own transaction together with the version bump, so a crash
//! mid-migration leaves the previous version intact and the next start retries it.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only: a released
/// migration is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: namespaced JSON objects with per-(namespace, kind) unique names; daemon meta.
    "CREATE TABLE objects (
        namespace  TEXT NOT NULL,
        kind       TEXT NOT NULL,
        id         TEXT NOT NULL,
        name       TEXT,
        data       TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, kind, id)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX objects_by_name ON objects (namespace, kind, name)
        WHERE name IS NOT NULL;
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub(super) fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found = user_version(conn).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = from as u32 + 1;
        let migration_err = |source| StoreError::Migration {
            path: path.to_path_buf(),
            version,
            source,
        };
        let tx = conn.transaction().map_err(migration_err)?;
        tx.execute_batch(sql).map_err(migration_err)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(migration_err)?;
        tx.commit().map_err(migration_err)?;
        tracing::info!(path = %path.display(), version, "metadata schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Store, DATABASE_FILE};
    use super::*;

    #[test]
    fn newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 5)
            .unwrap();
        drop(conn);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
        assert!(err.to_string().contains("newer than this wharfd"), "{err}");
        let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION + 5);
    }

    #[test]
    fn migration_is_idempotent_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        }
    }

    #[test]
    fn failed_migration_keeps_the_old_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_FILE);
        let mut conn = Connection::open(&path).unwrap();
        // A table in the way makes migration 1 fail half-way through its batch.
        conn.execute_batch("CREATE TABLE meta (x INTEGER);")
            .unwrap();
        let err = migrate(&mut conn, &path).unwrap_err();
        assert!(
            matches!(err, StoreError::Migration { version: 1, .. }),
            "{err}"
        );
        assert_eq!(user_version(&conn).unwrap(), 0);
        let objects: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'objects'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(
            objects, 0,
            "the objects table of the failed migration was rolled back"
        );
    }
}
