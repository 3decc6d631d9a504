//! The database file: connection settings, schema migrations and the text form of
//! timestamps. Only `store` uses it.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags};

use super::HistoryError;

/// How long a connection waits for another one's lock before giving up. The worker has
/// one writer, so waits are short; this covers the CLI reading during a checkpoint.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, their stream entries, and per-stream counters for the caps.
    "
    CREATE TABLE jobs (
        id            TEXT PRIMARY KEY NOT NULL,
        runbook       TEXT NOT NULL,
        file_hash     TEXT NOT NULL,
        trigger       TEXT NOT NULL,
        status        TEXT NOT NULL,
        dry_run       INTEGER NOT NULL,
        scheduled_for TEXT,
        created_at    TEXT NOT NULL,
        started_at    TEXT,
        ended_at      TEXT,
        params        TEXT NOT NULL,
        steps         TEXT NOT NULL,
        summary       TEXT,
        error         TEXT
    ) WITHOUT ROWID;
    -- Covers the runbook filter (newest first) and the last status per runbook.
    CREATE INDEX jobs_by_runbook ON jobs (runbook, id, status);
    CREATE INDEX jobs_by_status ON jobs (status, id);
    CREATE INDEX jobs_by_created ON jobs (created_at);
    CREATE TABLE stream_entries (
        job_id TEXT NOT NULL,
        seq    INTEGER NOT NULL,
        kind   TEXT NOT NULL,
        time   TEXT NOT NULL,
        text   TEXT NOT NULL,
        data   TEXT,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE stream_counts (
        job_id  TEXT NOT NULL,
        kind    TEXT NOT NULL,
        kept    INTEGER NOT NULL,
        dropped INTEGER NOT NULL,
        PRIMARY KEY (job_id, kind)
    ) WITHOUT ROWID;
    ",
    // 2: the replica that ran each job (NULL for jobs recorded before).
    "ALTER TABLE jobs ADD COLUMN replica TEXT;",
];

/// The schema version this build writes and understands.
pub(super) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Opens (creating if needed) the database for the single writer and migrates it.
///
/// WAL lets readers (the API, the CLI) run while the writer writes. `synchronous = NORMAL`
/// in WAL mode makes every commit durable against a crash of the process (SIGKILL, OOM
/// kill): the commit is in the WAL file in the kernel's page cache before `COMMIT`
/// returns. Only a crash of the whole machine can lose the last commits, which for a job
/// history is acceptable; `FULL` would add an fsync to every stream append.
pub(super) fn open_writer(path: &Path) -> Result<Connection, HistoryError> {
    let open_err = |source| HistoryError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Opens an existing database for reading only, refusing files that are not a history
/// database or were written by a newer build.
pub(super) fn open_reader(path: &Path) -> Result<Connection, HistoryError> {
    if !path.is_file() {
        return Err(HistoryError::Missing {
            path: path.to_path_buf(),
        });
    }
    let open_err = |source| HistoryError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let version = user_version(&conn).map_err(open_err)?;
    if version == 0 {
        return Err(HistoryError::NotHistory {
            path: path.to_path_buf(),
        });
    }
    if version > current_version() {
        return Err(HistoryError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
            known: current_version(),
        });
    }
    Ok(conn)
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), HistoryError> {
    let open_err = |source| HistoryError::Open {
        path: path.to_path_buf(),
        source,
    };
    let found = user_version(conn).map_err(open_err)?;
    if found > current_version() {
        return Err(HistoryError::NewerSchema {
            path: path.to_path_buf(),
            found,
            known: current_version(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        // Each migration and its version bump commit together, so a crash mid-migration
        // leaves the previous version intact.
        let tx = conn.transaction().map_err(open_err)?;
        tx.execute_batch(sql).map_err(open_err)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(open_err)?;
        tx.commit().map_err(open_err)?;
    }
    Ok(())
}

/// Timestamps are stored as fixed-width RFC 3339 text in UTC with milliseconds
/// (`2026-03-05T06:00:00.000Z`): readable in the `sqlite3` shell and sortable as text.
pub(super) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(super) fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_database_is_migrated_to_the_current_version_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite3");
        let conn = open_writer(&path).unwrap();
        assert_eq!(user_version(&conn).unwrap(), current_version());
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(conn);
        // Opening again applies nothing twice.
        let conn = open_writer(&path).unwrap();
        assert_eq!(user_version(&conn).unwrap(), current_version());
    }

    #[test]
    fn a_database_of_schema_1_gains_the_replica_column_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite3");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO jobs (id, runbook, file_hash, trigger, status, dry_run, created_at, params, steps)
             VALUES ('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'a', 'h', 'manual', 'Completed', 0, '2026-03-05T06:00:00.000Z', '{}', '[]')",
            [],
        )
        .unwrap();
        drop(conn);
        let conn = open_writer(&path).unwrap();
        assert_eq!(user_version(&conn).unwrap(), current_version());
        let replica: Option<String> = conn
            .query_row("SELECT replica FROM jobs", [], |row| row.get(0))
            .unwrap();
        assert_eq!(replica, None, "older jobs have no replica");
    }

    #[test]
    fn a_database_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite3");
        let conn = open_writer(&path).unwrap();
        conn.pragma_update(None, "user_version", current_version() + 1)
            .unwrap();
        drop(conn);
        for err in [
            open_writer(&path).unwrap_err(),
            open_reader(&path).unwrap_err(),
        ] {
            assert!(matches!(err, HistoryError::NewerSchema { .. }), "{err:?}");
            assert!(err.to_string().contains("newer runbook-worker"), "{err}");
        }
    }

    #[test]
    fn the_reader_refuses_a_missing_file_and_a_foreign_database() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.sqlite3");
        assert!(matches!(
            open_reader(&missing),
            Err(HistoryError::Missing { .. })
        ));
        let foreign = dir.path().join("other.sqlite3");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .unwrap();
        assert!(matches!(
            open_reader(&foreign),
            Err(HistoryError::NotHistory { .. })
        ));
    }

    #[test]
    fn timestamps_round_trip_and_sort_as_text() {
        let a = parse_timestamp("2026-03-05T06:00:00.123Z").unwrap();
        let b = a + chrono::Duration::milliseconds(900);
        assert_eq!(parse_timestamp(&timestamp(a)), Some(a));
        assert!(timestamp(a) < timestamp(b));
        assert_eq!(timestamp(a).len(), timestamp(b).len());
    }
}
