//! The one way facegate replaces a file on disk: a crash at any point leaves either the old file or
//! the new one, never a mix (temporary sibling, fsync, rename, fsync of the directory). Beside it, the
//! two helpers every small state file shared by the daemon and the CLI needs: an advisory lock on a
//! sibling file, and a stamp telling whether the file changed since it was read.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Prefix of the temporary files; a store may remove left-overs with it after a crash.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Writes `bytes` to `path` atomically with permission bits `mode` (for a new file; umask applies).
/// The directory must exist.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let temp = dir.join(format!("{TEMP_PREFIX}{}", file_name.to_string_lossy()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Which version of a file was read: a replacement gets a new inode, an edit a new mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    inode: u64,
    modified_ns: i64,
    len: u64,
}

/// The stamp of `path` now, `None` when it does not exist.
pub fn stamp(path: &Path) -> Option<FileStamp> {
    fs::metadata(path).ok().map(|m| FileStamp {
        inode: m.ino(),
        modified_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        len: m.len(),
    })
}

/// The lock file beside `path`: `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// An exclusive advisory lock on `<path>.lock` (created with `mode`, its directory too), held until
/// the returned file is closed. Processes that change `path` only under it never lose each other's
/// changes.
pub fn lock_beside(path: &Path, mode: u32) -> io::Result<fs::File> {
    let lock_path = lock_path(path);
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(mode)
        .open(&lock_path)?;
    // SAFETY: flock on a descriptor this function owns for the lifetime of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.json");
        write(&path, b"old", 0o600).unwrap();
        write(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["codes.json"]);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("file");
        assert!(write(&path, b"x", 0o600).is_err());
    }
}
