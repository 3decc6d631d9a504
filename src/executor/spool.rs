//! Records on disk and in flight: spool files (one JSON object per line) for step records
//! that are read again later, and [`Tracked`], a record that counts itself in a
//! [`Resident`] gauge while it is held in memory.
//!
//! Spool files live in the job's temporary folder and are removed with it when the job
//! ends; they hold what Exchange returned, which is no more secret than the history.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::Stream;
use serde_json::Value;
use tokio::fs::File;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};

/// How many records are held in memory right now, and the most ever.
#[derive(Debug, Default)]
pub(crate) struct Resident {
    current: AtomicU64,
    peak: AtomicU64,
}

impl Resident {
    fn add(&self) {
        let now = self.current.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn remove(&self) {
        self.current.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }
}

/// A record in the pipeline; counted in its [`Resident`] gauge until dropped.
#[derive(Debug)]
pub(crate) struct Tracked {
    value: Value,
    gauge: Arc<Resident>,
}

impl Tracked {
    pub(crate) fn new(value: Value, gauge: &Arc<Resident>) -> Self {
        gauge.add();
        Self {
            value,
            gauge: Arc::clone(gauge),
        }
    }

    pub(crate) fn value(&self) -> &Value {
        &self.value
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.gauge.remove();
    }
}

/// Why a spool or report file could not be written or read. The message names the real
/// cause and what to do about it, from the error's kind or OS error number.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source} ({})", path.display(), file_hint(source))]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// What to do about a file error. "Too many open files" has no `ErrorKind` of its own, so
/// it is told by its OS error number (EMFILE for the process, ENFILE for the system: 24
/// and 23 on Linux and macOS).
fn file_hint(source: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    if cfg!(unix) && matches!(source.raw_os_error(), Some(EMFILE | ENFILE)) {
        return "the process has too many open files, not a disk problem: raise its open-files limit (ulimit -n, systemd LimitNOFILE) or run fewer jobs at once";
    }
    match source.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "the disk is full: free space on the volume of state.dir"
        }
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            "the worker may not write there: check the permissions of state.dir and that its volume is writable"
        }
        ErrorKind::NotFound => {
            "the folder is gone: check that nothing else removes files under state.dir while jobs run"
        }
        ErrorKind::InvalidData => "the file was changed or cut short while the job ran",
        ErrorKind::OutOfMemory => "the worker ran out of memory",
        _ => "see the cause above",
    }
}

pub(crate) fn file_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError {
        action,
        path,
        source,
    }
}

/// Appends records to a JSON-lines file.
pub(crate) struct JsonLinesWriter {
    path: PathBuf,
    out: BufWriter<File>,
    records: u64,
}

impl JsonLinesWriter {
    pub(crate) async fn create(path: &Path) -> Result<Self, FileError> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(file_error("create the folder of", path))?;
        }
        let file = File::create(path)
            .await
            .map_err(file_error("create", path))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            records: 0,
        })
    }

    pub(crate) async fn write(&mut self, record: &Value) -> Result<(), FileError> {
        let mut line = serde_json::to_vec(record).map_err(|e| FileError {
            action: "write",
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        self.out
            .write_all(&line)
            .await
            .map_err(file_error("write", &self.path))?;
        self.records += 1;
        Ok(())
    }

    /// Flushes and closes the file; returns its path and how many records it holds.
    pub(crate) async fn finish(mut self) -> Result<(PathBuf, u64), FileError> {
        self.out
            .flush()
            .await
            .map_err(file_error("write", &self.path))?;
        Ok((self.path, self.records))
    }
}

/// The records of a JSON-lines file, one at a time.
pub(crate) async fn read_json_lines(
    path: &Path,
) -> Result<impl Stream<Item = Result<Value, FileError>> + Send + 'static, FileError> {
    let file = File::open(path).await.map_err(file_error("read", path))?;
    let lines = BufReader::new(file).lines();
    let path = path.to_path_buf();
    Ok(futures::stream::unfold(
        (lines, path),
        |(mut lines, path)| async move {
            match lines.next_line().await {
                Ok(None) => None,
                Ok(Some(line)) => {
                    let parsed = serde_json::from_str(&line).map_err(|e| FileError {
                        action: "read",
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    });
                    Some((parsed, (lines, path)))
                }
                Err(e) => Some((Err(file_error("read", &path)(e)), (lines, path))),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_error_names_its_real_cause() {
        // Linux error numbers: EMFILE, ENFILE, ENOSPC, EACCES, EROFS.
        let cases = [
            (24, "too many open files", "not a disk problem"),
            (23, "too many open files", "open-files limit"),
            (28, "disk is full", "free space"),
            (13, "may not write there", "permissions of state.dir"),
            (30, "may not write there", "writable"),
        ];
        for (errno, cause, advice) in cases {
            let text = file_error("create", Path::new("/state/tmp/x.jsonl"))(
                std::io::Error::from_raw_os_error(errno),
            )
            .to_string();
            assert!(
                text.starts_with("cannot create /state/tmp/x.jsonl: ")
                    && text.to_lowercase().contains(cause)
                    && text.contains(advice),
                "{errno}: {text}"
            );
            if errno != 28 {
                assert!(!text.contains("disk space"), "{errno}: {text}");
            }
        }
    }

    #[test]
    fn the_gauge_counts_records_until_they_are_dropped_or_taken() {
        let gauge = Arc::new(Resident::default());
        let a = Tracked::new(json!({"a": 1}), &gauge);
        let b = Tracked::new(json!({"b": 2}), &gauge);
        assert_eq!(gauge.current(), 2);
        drop(a);
        assert_eq!(b.value(), &json!({"b": 2}));
        drop(b);
        let _c = Tracked::new(json!(3), &gauge);
        assert_eq!((gauge.current(), gauge.peak()), (1, 2));
    }

    #[tokio::test]
    async fn json_lines_round_trip() {
        let dir = std::env::temp_dir().join(format!("rw-spool-{}", uuid::Uuid::new_v4()));
        let path = dir.join("a").join("x.jsonl");
        let mut writer = JsonLinesWriter::create(&path).await.unwrap();
        let records = [json!({"Name": "a\nb"}), json!({"n": 1, "x": [true, null]})];
        for r in &records {
            writer.write(r).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap().1, 2);
        let read: Vec<Value> = read_json_lines(&path)
            .await
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(read, records);
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }
}
