//! Paired tablets: the kiosk page on a tablet trades a one-time pairing secret (from `facegate tablets
//! add`) for a device token it then sends as its bearer. `book` holds the rules (pure), `store` the
//! file shared with the CLI, and `LiveTablets` what the daemon keeps: the file as last read, read again
//! whenever it changes, so a new link or a revocation takes effect at the next request.

pub mod book;
pub mod link;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub use book::{looks_like_device_token, Paired, Tablet, TabletBook};
pub use store::TabletStore;

use crate::atomic_file::FileStamp;
use crate::ratelimit::RateLimitedLog;
use crate::sync::lock_recovering;

/// The least time between two writes of one tablet's "last seen" to the file.
pub const SEEN_WRITE_INTERVAL: Duration = Duration::from_secs(60);
/// How often an unreadable tablets file is logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TabletError {
    #[error("`{0}` is not a tablet name: use 1 to {max} letters, digits, `.`, `_` or `-`", max = book::MAX_NAME_CHARS)]
    Name(String),
    #[error("no tablet is called `{0}`; see facegate tablets list")]
    Unknown(String),
    #[error("{max} tablets are paired or waiting to pair already: revoke one first (facegate tablets revoke NAME)", max = book::MAX_TABLETS)]
    Full,
    #[error("this pairing link is unknown, used or expired: make a new one with facegate tablets add NAME")]
    PairingInvalid,
    #[error(transparent)]
    File(#[from] crate::state_file::StateFileError),
}

impl PartialEq for TabletError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// The tablets as the daemon sees them.
pub struct LiveTablets {
    store: TabletStore,
    cached: Mutex<(Option<FileStamp>, Arc<TabletBook>)>,
    /// When each tablet's last-seen was last queued for writing.
    seen_written: Mutex<HashMap<String, Instant>>,
    errors: RateLimitedLog,
}

impl LiveTablets {
    pub fn new(store: TabletStore) -> LiveTablets {
        LiveTablets {
            store,
            cached: Mutex::new((None, Arc::default())),
            seen_written: Mutex::new(HashMap::new()),
            errors: RateLimitedLog::new(ERROR_LOG_INTERVAL),
        }
    }

    /// The tablets as the file holds them now, read again only when it changed. A file that cannot
    /// be read lets no tablet in (the shared token still works), is logged, and is read again at the
    /// next request: what made it unreadable (its owner, its mode, the disk) may be put right without
    /// the file itself changing.
    fn current(&self) -> Arc<TabletBook> {
        let stamp = self.store.stamp();
        let mut cached = lock_recovering(&self.cached);
        if cached.0 != stamp || stamp.is_none() {
            *cached = match self.store.load() {
                Ok(book) => (stamp, Arc::new(book)),
                Err(err) => {
                    self.errors.error(format!("no tablet is let in: {err}"));
                    (None, Arc::default())
                }
            };
        }
        Arc::clone(&cached.1)
    }

    /// The paired tablet whose device token `token` is.
    pub fn tablet_of(&self, token: &str) -> Option<String> {
        self.current().tablet_of(token).map(str::to_string)
    }

    /// Trades a pairing secret for a device token. Secrets that match no pending link are refused
    /// from memory, without taking the file's lock.
    pub fn pair(&self, secret: &str, now: DateTime<Utc>) -> Result<Paired, TabletError> {
        if self.current().pending_name(secret, now).is_none() {
            return Err(TabletError::PairingInvalid);
        }
        self.store
            .update(|book| book.pair(secret, now, &mut book::OsRandom))
    }

    /// Is it time to write that `name` was seen again? At most once per `SEEN_WRITE_INTERVAL` per
    /// tablet, so a tablet posting frames never turns into a stream of file writes.
    pub fn seen_due(&self, name: &str, now: Instant) -> bool {
        let mut written = lock_recovering(&self.seen_written);
        if written
            .get(name)
            .is_some_and(|at| now.duration_since(*at) < SEEN_WRITE_INTERVAL)
        {
            return false;
        }
        if written.len() >= book::MAX_TABLETS {
            written.retain(|_, at| now.duration_since(*at) < SEEN_WRITE_INTERVAL);
        }
        written.insert(name.to_string(), now);
        true
    }

    /// Writes that `name` was seen at `at` from `address` (under the file's lock).
    pub fn write_seen(
        &self,
        name: &str,
        at: DateTime<Utc>,
        address: Option<String>,
    ) -> Result<(), TabletError> {
        self.store.update(|book| {
            book.seen(name, at, address);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_by_the_cli_is_seen_at_the_next_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = TabletStore::new(dir.path().join("tablets.json"));
        let live = LiveTablets::new(store.clone());
        let now = Utc::now();
        assert_eq!(live.pair("nothing", now), Err(TabletError::PairingInvalid));
        let secret = store
            .update(|b| b.add("front", now, &mut book::OsRandom))
            .unwrap();
        let paired = live.pair(&secret, now).unwrap();
        assert_eq!(live.tablet_of(&paired.token).as_deref(), Some("front"));
        store.update(|b| b.revoke("front").map(drop)).unwrap();
        assert_eq!(live.tablet_of(&paired.token), None);
    }

    #[test]
    fn last_seen_is_written_at_a_bounded_rate() {
        let dir = tempfile::tempdir().unwrap();
        let live = LiveTablets::new(TabletStore::new(dir.path().join("tablets.json")));
        let start = Instant::now();
        assert!(live.seen_due("front", start));
        assert!(!live.seen_due("front", start + Duration::from_secs(59)));
        assert!(live.seen_due("back", start + Duration::from_secs(59)));
        assert!(live.seen_due("front", start + SEEN_WRITE_INTERVAL));
    }

    #[test]
    fn a_damaged_file_lets_no_tablet_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = TabletStore::new(dir.path().join("tablets.json"));
        let live = LiveTablets::new(store.clone());
        let now = Utc::now();
        let secret = store
            .update(|b| b.add("front", now, &mut book::OsRandom))
            .unwrap();
        let token = live.pair(&secret, now).unwrap().token;
        std::fs::write(store.path(), "{").unwrap();
        assert_eq!(live.tablet_of(&token), None);
    }

    /// Regression: a tablets file that could not be read was remembered as empty under its stamp, so
    /// putting right what kept it unreadable (a chown, a chmod) without changing the file itself left
    /// every tablet out until the file was next written.
    #[test]
    fn a_file_unreadable_once_is_read_again_though_its_stamp_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = TabletStore::new(dir.path().join("tablets.json"));
        let now = Utc::now();
        let secret = store
            .update(|b| b.add("front", now, &mut book::OsRandom))
            .unwrap();
        let token = LiveTablets::new(store.clone())
            .pair(&secret, now)
            .unwrap()
            .token;
        let readable = std::fs::read(store.path()).unwrap();
        let modified = std::fs::metadata(store.path()).unwrap().modified().unwrap();
        let rewrite_in_place = |content: &[u8]| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(store.path())
                .unwrap();
            std::io::Write::write_all(&mut file, content).unwrap();
            file.set_modified(modified).unwrap();
        };
        let mut unreadable = b"{".to_vec();
        unreadable.resize(readable.len(), b' ');
        rewrite_in_place(&unreadable);
        let stamp_while_unreadable = store.stamp();

        let live = LiveTablets::new(store.clone());
        assert_eq!(live.tablet_of(&token), None);
        rewrite_in_place(&readable);
        assert_eq!(
            store.stamp(),
            stamp_while_unreadable,
            "the file looks unchanged"
        );
        assert_eq!(live.tablet_of(&token).as_deref(), Some("front"));
    }
}
