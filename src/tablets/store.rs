//! The tablets file in the state dir: versioned JSON, mode 0600, replaced atomically; the CLI and the
//! daemon change it only under an advisory lock on a sibling file, so neither loses the other's change
//! and a pairing secret is used once.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::book::{Tablet, TabletBook};
use super::TabletError;
use crate::atomic_file::FileStamp;

const FORMAT: &str = "facegate-tablets";
const VERSION: u32 = 1;
/// Owner read/write only: the file holds what lets a tablet in.
const MODE: u32 = 0o600;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: String,
    version: u32,
    tablets: BTreeMap<String, Tablet>,
}

/// The tablets file of one state dir.
#[derive(Debug, Clone)]
pub struct TabletStore {
    path: PathBuf,
}

impl TabletStore {
    pub fn new(path: PathBuf) -> TabletStore {
        TabletStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's stamp now, `None` when it does not exist.
    pub fn stamp(&self) -> Option<FileStamp> {
        crate::atomic_file::stamp(&self.path)
    }

    /// Reads the tablets; a missing file holds none.
    pub fn load(&self) -> Result<TabletBook, TabletError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TabletBook::default())
            }
            Err(cause) => {
                return Err(TabletError::Read {
                    path: self.path.clone(),
                    cause,
                })
            }
        };
        let parse_error = |message: String| TabletError::Parse {
            path: self.path.clone(),
            message,
        };
        let stored: Stored = serde_json::from_str(&text).map_err(|e| parse_error(e.to_string()))?;
        if stored.format != FORMAT || stored.version != VERSION {
            return Err(parse_error(format!(
                "format {:?} version {}, this facegate reads {FORMAT:?} version {VERSION}",
                stored.format, stored.version
            )));
        }
        Ok(TabletBook {
            tablets: stored.tablets,
        })
    }

    fn save(&self, book: &TabletBook) -> Result<(), TabletError> {
        let stored = Stored {
            format: FORMAT.into(),
            version: VERSION,
            tablets: book.tablets.clone(),
        };
        let text = serde_json::to_string_pretty(&stored).expect("tablets always serialise");
        crate::atomic_file::write(&self.path, text.as_bytes(), MODE).map_err(|cause| {
            TabletError::Write {
                path: self.path.clone(),
                cause,
            }
        })
    }

    /// Reads, changes and (when `change` altered it) writes the tablets while holding the lock.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut TabletBook) -> Result<T, TabletError>,
    ) -> Result<T, TabletError> {
        let _lock = crate::atomic_file::lock_beside(&self.path, MODE).map_err(|cause| {
            TabletError::Write {
                path: crate::atomic_file::lock_path(&self.path),
                cause,
            }
        })?;
        let mut book = self.load()?;
        let before = book.clone();
        let result = change(&mut book)?;
        if book != before {
            self.save(&book)?;
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tablets::book::OsRandom;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn changes_round_trip_with_mode_0600_and_hashes_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = TabletStore::new(dir.path().join("tablets.json"));
        assert_eq!(store.load().unwrap(), TabletBook::default());
        let now = chrono::Utc::now();
        let secret = store
            .update(|book| book.add("front", now, &mut OsRandom))
            .unwrap();
        let token = store
            .update(|book| book.pair(&secret, now, &mut OsRandom))
            .unwrap()
            .token;
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.contains("\"format\": \"facegate-tablets\""), "{text}");
        assert!(!text.contains(&secret) && !text.contains(&token), "{text}");
        assert_eq!(store.load().unwrap().tablet_of(&token), Some("front"));
    }

    #[test]
    fn a_secret_is_traded_once_by_concurrent_pairings() {
        let dir = tempfile::tempdir().unwrap();
        let store = TabletStore::new(dir.path().join("tablets.json"));
        let now = chrono::Utc::now();
        let secret = store
            .update(|book| book.add("front", now, &mut OsRandom))
            .unwrap();
        let winners: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| store.update(|b| b.pair(&secret, now, &mut OsRandom))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().is_ok() as usize)
                .sum()
        });
        assert_eq!(winners, 1);
    }

    #[test]
    fn damaged_and_foreign_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = TabletStore::new(dir.path().join("tablets.json"));
        for text in [
            "{",
            r#"{"format": "facegate-tablets", "version": 9, "tablets": {}}"#,
        ] {
            fs::write(store.path(), text).unwrap();
            let err = store.load().unwrap_err().to_string();
            assert!(err.contains("tablets.json"), "{err}");
        }
    }
}
