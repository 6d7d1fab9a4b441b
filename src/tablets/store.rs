//! The tablets file in the state dir (a [`StateFile`]: versioned JSON, mode 0600, replaced atomically,
//! changed under a lock), so that the CLI and the daemon never lose each other's change and a pairing
//! secret is used once.

use super::book::TabletBook;
use super::TabletError;
use crate::state_file::{Document, StateFile};

/// The tablets file of one state dir.
pub type TabletStore = StateFile<TabletBook>;

impl Document for TabletBook {
    const FORMAT: &'static str = "facegate-tablets";
    const VERSION: u32 = 1;
    const WHAT: &'static str = "tablets";
    const REPAIR: &'static str = "remove it and pair the tablets again";
    type Error = TabletError;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tablets::book::OsRandom;
    use std::fs;
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
