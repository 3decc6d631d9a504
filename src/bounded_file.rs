//! Reading a file the worker is handed (a runbook, the settings file) within a size cap.
//!
//! Only regular files are read: a FIFO would block the reader forever, a device such as
//! `/dev/zero` never ends, and a directory is a mistake worth naming. The size is checked
//! on the metadata of the file a symlink points to before reading, and the read itself
//! stops one byte past the cap, so a file that grows while it is read cannot defeat it.

use std::fs::{File, Metadata};
use std::io::Read as _;
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file but {what}; point it at a file")]
    NotRegular { what: &'static str },
    #[error("the file is larger than the {cap}-byte limit ({size}); split it or shorten it")]
    TooLarge { size: String, cap: u64 },
}

/// Reads the regular file at `path` (following symlinks), refusing anything else and
/// anything larger than `cap` bytes. Never blocks on a FIFO.
pub fn read(path: &Path, cap: u64) -> Result<Vec<u8>, BoundedReadError> {
    check(&std::fs::metadata(path)?, cap)?;
    let mut file = open_nonblocking(path)?;
    // The path may have been replaced between the check and the open.
    let metadata = file.metadata()?;
    check(&metadata, cap)?;
    let expected = usize::try_from(metadata.len()).unwrap_or(usize::MAX);
    let mut bytes = Vec::with_capacity(expected.min(usize::try_from(cap).unwrap_or(usize::MAX)));
    (&mut file)
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(BoundedReadError::TooLarge {
            size: "it grew past the limit while being read".to_string(),
            cap,
        });
    }
    Ok(bytes)
}

/// The most a file holding one secret (a token, a SAS URL, a webhook URL or key) may hold.
pub const SECRET_FILE_CAP: u64 = 16 * 1024;

/// Reads a file that holds one secret as text, trimmed: a regular file of at most
/// [`SECRET_FILE_CAP`] bytes in UTF-8. Errors never contain the file's contents.
pub fn read_secret(path: &Path) -> Result<String, BoundedReadError> {
    let bytes = read(path, SECRET_FILE_CAP)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        BoundedReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is not UTF-8 text",
        ))
    })?;
    Ok(text.trim().to_string())
}

fn check(metadata: &Metadata, cap: u64) -> Result<(), BoundedReadError> {
    if !metadata.is_file() {
        return Err(BoundedReadError::NotRegular {
            what: describe(metadata),
        });
    }
    if metadata.len() > cap {
        return Err(BoundedReadError::TooLarge {
            size: format!("{} bytes", metadata.len()),
            cap,
        });
    }
    Ok(())
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// What a path that is not a regular file is, in words.
pub fn describe(metadata: &Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_trimmed_capped_and_never_quoted_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cr3t-value\n").unwrap();
        assert_eq!(read_secret(&path).unwrap(), "s3cr3t-value");

        let big = format!("s3cr3t-{}", "x".repeat(SECRET_FILE_CAP as usize));
        std::fs::write(&path, &big).unwrap();
        let err = read_secret(&path).unwrap_err().to_string();
        assert!(err.contains("limit"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");

        std::fs::write(&path, [0xff, 0xfe, b's']).unwrap();
        let err = read_secret(&path).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");

        let err = read_secret(dir.path()).unwrap_err();
        assert!(matches!(err, BoundedReadError::NotRegular { .. }), "{err}");
    }

    #[test]
    fn a_regular_file_within_the_cap_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read(&path, 10).unwrap(), b"0123456789");
        let err = read(&path, 9).unwrap_err();
        assert!(
            matches!(err, BoundedReadError::TooLarge { cap: 9, .. }),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn devices_fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let fifo = dir.path().join("fifo.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let folder = dir.path().join("folder.toml");
        std::fs::create_dir(&folder).unwrap();
        for (path, what) in [
            (&zero, "a character device"),
            (&fifo, "a FIFO (named pipe)"),
            (&folder, "a directory"),
        ] {
            let err = read(path, 1024).unwrap_err().to_string();
            assert!(err.contains(what), "{}: {err}", path.display());
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_to_a_regular_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.toml");
        std::fs::write(&target, b"x = 1").unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read(&link, 1024).unwrap(), b"x = 1");
    }
}
