//! The codes file in the state dir (a [`StateFile`]: versioned JSON, mode 0600, replaced atomically,
//! changed under a lock), so that the CLI's changes and the daemon's consumption never lose each
//! other's and a single-use code is consumed once.

use super::book::CodeBook;
use super::CodeError;
use crate::state_file::{Document, StateFile};

/// The codes file of one state dir.
pub type CodeStore = StateFile<CodeBook>;

impl Document for CodeBook {
    const FORMAT: &'static str = "facegate-codes";
    const VERSION: u32 = 1;
    const WHAT: &'static str = "codes";
    const REPAIR: &'static str = "generate the codes again with facegate codes generate";
    type Error = CodeError;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
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
