//! The codes file in the state dir: versioned JSON, mode 0600, replaced atomically; changes by the CLI
//! and consumption by the daemon are serialised by an advisory lock on a sibling file.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::book::CodeBook;
use super::CodeError;
use crate::atomic_file::FileStamp;

const FORMAT: &str = "facegate-codes";
const VERSION: u32 = 1;
/// Owner read/write only: the file holds the secrets that open the door.
pub(crate) const MODE: u32 = 0o600;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: String,
    version: u32,
    daily: std::collections::BTreeMap<chrono::NaiveDate, Vec<String>>,
    weekly: std::collections::BTreeMap<String, Vec<String>>,
}

/// The codes file of one state dir.
#[derive(Debug, Clone)]
pub struct CodeStore {
    path: PathBuf,
}

impl CodeStore {
    pub fn new(path: PathBuf) -> CodeStore {
        CodeStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's stamp now, `None` when it does not exist.
    pub(crate) fn stamp(&self) -> Option<FileStamp> {
        crate::atomic_file::stamp(&self.path)
    }

    /// Reads the codes; a missing file holds none.
    pub fn load(&self) -> Result<CodeBook, CodeError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(CodeBook::default())
            }
            Err(cause) => {
                return Err(CodeError::Read {
                    path: self.path.clone(),
                    cause,
                })
            }
        };
        let stored: Stored = serde_json::from_str(&text).map_err(|err| CodeError::Parse {
            path: self.path.clone(),
            message: err.to_string(),
        })?;
        if stored.format != FORMAT || stored.version != VERSION {
            return Err(CodeError::Parse {
                path: self.path.clone(),
                message: format!(
                    "format {:?} version {}, this facegate reads {FORMAT:?} version {VERSION}",
                    stored.format, stored.version
                ),
            });
        }
        Ok(CodeBook {
            daily: stored.daily,
            weekly: stored.weekly,
        })
    }

    fn save(&self, book: &CodeBook) -> Result<(), CodeError> {
        let stored = Stored {
            format: FORMAT.into(),
            version: VERSION,
            daily: book.daily.clone(),
            weekly: book.weekly.clone(),
        };
        let text = serde_json::to_string_pretty(&stored).expect("codes always serialise");
        // The lock file's directory is created before this runs (`lock`).
        crate::atomic_file::write(&self.path, text.as_bytes(), MODE).map_err(|cause| {
            CodeError::Write {
                path: self.path.clone(),
                cause,
            }
        })
    }

    /// Reads, changes and (when `change` altered it) writes the codes while holding the lock, so
    /// that the CLI and the daemon never lose each other's changes and a code is consumed once.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut CodeBook) -> Result<T, CodeError>,
    ) -> Result<T, CodeError> {
        let _lock = self.lock()?;
        let mut book = self.load()?;
        let before = book.clone();
        let result = change(&mut book)?;
        if book != before {
            self.save(&book)?;
        }
        Ok(result)
    }

    /// An exclusive advisory lock on `codes.json.lock`, released when the returned file is closed.
    fn lock(&self) -> Result<fs::File, CodeError> {
        crate::atomic_file::lock_beside(&self.path, MODE).map_err(|cause| CodeError::Write {
            path: crate::atomic_file::lock_path(&self.path),
            cause,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn updates_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path().join("codes.json"));
        assert_eq!(store.load().unwrap(), CodeBook::default());
        assert_eq!(store.stamp(), None);
        store
            .update(|book| {
                book.weekly.insert("2026-W49".into(), vec!["123456".into()]);
                Ok(())
            })
            .unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.load().unwrap().weekly["2026-W49"], ["123456"]);
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.contains("\"format\": \"facegate-codes\""), "{text}");
    }

    #[test]
    fn an_unchanged_book_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path().join("codes.json"));
        store.update(|_| Ok(())).unwrap();
        assert!(!store.path().exists());
    }

    #[test]
    fn damaged_and_foreign_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path().join("codes.json"));
        for text in [
            "{",
            r#"{"format": "facegate-codes", "version": 9, "daily": {}, "weekly": {}}"#,
        ] {
            fs::write(store.path(), text).unwrap();
            let err = store.load().unwrap_err().to_string();
            assert!(err.contains("codes.json"), "{err}");
        }
    }

    #[test]
    fn concurrent_consumers_take_a_code_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path().join("codes.json"));
        store
            .update(|book| {
                book.weekly.insert("2026-W49".into(), vec!["123456".into()]);
                Ok(())
            })
            .unwrap();
        let winners: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        store
                            .update(|book| Ok(!book.revoke("123456").is_empty()))
                            .unwrap()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(winners, 1);
    }
}
