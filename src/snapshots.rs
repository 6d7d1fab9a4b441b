//! Keeps the frames behind failed or refused decisions (image + JSON sidecar) for diagnosis,
//! bounded by count, bytes and age; a full or unwritable disk yields an error, never a panic, and a
//! hung one never holds up start-up or a worker (one writer thread owns the directory).

use crate::atomic_file::{self, TEMP_PREFIX};
use crate::ratelimit::RateLimitedLog;
use crate::sync::lock_recovering;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

const MAX_ID_LEN: usize = 64;
const MAX_EXT_LEN: usize = 8;
const SIDECAR_EXT: &str = "json";
const DAY_FORMAT: &str = "%Y-%m-%d";
const CLEANUP_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Limits on the stored snapshots. When a save exceeds the count or byte limit, the oldest
/// snapshots are deleted down to 90% of the limits, so cleanup runs in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotRetention {
    pub max_count: usize,
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// Where a saved snapshot lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SnapshotRef {
    pub id: String,
    pub image_path: PathBuf,
    pub sidecar_path: PathBuf,
    /// Image plus sidecar size.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error(
        "invalid snapshot id {id:?}: use 1 to {MAX_ID_LEN} characters from A-Z, a-z, 0-9, '_' \
         and '-'"
    )]
    InvalidId { id: String },
    #[error(
        "invalid snapshot image extension {ext:?}: use 1 to {MAX_EXT_LEN} ASCII letters or digits \
         other than \"json\", e.g. \"jpg\""
    )]
    InvalidExtension { ext: String },
    #[error(
        "a snapshot already exists at {}: snapshot ids must be unique (use the request id)",
        path.display()
    )]
    Duplicate { path: PathBuf },
    #[error(
        "cannot create the snapshot directory {}: {cause}. Free disk space (see df) and check that \
         the snapshot directory is writable by the facegate user",
        path.display()
    )]
    CreateDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "cannot write the snapshot file {}: {cause}. Free disk space (see df) or fix the snapshot \
         directory's permissions; lower the snapshot byte limit if snapshots fill the disk",
        path.display()
    )]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "snapshot sidecar cannot be serialized to JSON: {0}. Use a struct or a map with string keys"
    )]
    Serialize(serde_json::Error),
    #[error(
        "cannot read the snapshot directory {}: {cause}. Check that it is readable by the \
         facegate user",
        path.display()
    )]
    Scan {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the snapshot store is not answering: {cause}. Check the disk holding the snapshot \
         directory (see the log for the error that disabled it)"
    )]
    Unavailable { cause: &'static str },
}

/// Checks that `id` is safe as a file name: 1–64 characters of `[A-Za-z0-9_-]`.
pub(crate) fn validate_id(id: &str) -> Result<(), SnapshotError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(SnapshotError::InvalidId { id: id.to_owned() })
    }
}

fn validate_extension(ext: &str) -> Result<(), SnapshotError> {
    let valid = !ext.is_empty()
        && ext.len() <= MAX_EXT_LEN
        && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        && !ext.eq_ignore_ascii_case(SIDECAR_EXT);
    if valid {
        Ok(())
    } else {
        Err(SnapshotError::InvalidExtension {
            ext: ext.to_owned(),
        })
    }
}

/// How many of `snapshots` (`(saved_at, bytes)`, oldest first) to delete, counted from the
/// oldest: every one older than `max_age`, then, if the rest still exceeds the count or byte
/// limit, enough more to get down to 90% of both limits.
pub(crate) fn oldest_to_delete(
    snapshots: &[(DateTime<Utc>, u64)],
    now: DateTime<Utc>,
    retention: &SnapshotRetention,
) -> usize {
    let cutoff = TimeDelta::from_std(retention.max_age)
        .ok()
        .and_then(|max_age| now.checked_sub_signed(max_age));
    let mut doomed = match cutoff {
        Some(cutoff) => snapshots
            .iter()
            .take_while(|&&(saved_at, _)| saved_at < cutoff)
            .count(),
        None => 0,
    };
    let mut count = snapshots.len() - doomed;
    let mut bytes: u64 = snapshots[doomed..].iter().map(|&(_, b)| b).sum();
    if count > retention.max_count || bytes > retention.max_bytes {
        let target_count = retention.max_count - retention.max_count / 10;
        let target_bytes = retention.max_bytes - retention.max_bytes / 10;
        while doomed < snapshots.len() && (count > target_count || bytes > target_bytes) {
            count -= 1;
            bytes -= snapshots[doomed].1;
            doomed += 1;
        }
    }
    doomed
}

#[derive(Debug)]
struct StoredSnapshot {
    saved_at: DateTime<Utc>,
    id: String,
    files: Vec<PathBuf>,
    bytes: u64,
}

#[derive(Debug, Default)]
struct Index {
    /// Oldest first.
    snapshots: VecDeque<StoredSnapshot>,
    bytes: u64,
}

/// The snapshot directory: `<dir>/<YYYY-MM-DD>/<id>.<ext>` plus `<id>.json`. Thread-safe.
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    retention: SnapshotRetention,
    index: Mutex<Index>,
    cleanup_errors: RateLimitedLog,
}

impl SnapshotStore {
    /// Creates `dir` if needed, indexes the snapshots already there (removing half-written
    /// left-overs of a crash) and applies the retention once.
    pub fn open(
        dir: impl Into<PathBuf>,
        retention: SnapshotRetention,
    ) -> Result<SnapshotStore, SnapshotError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| SnapshotError::CreateDir {
            path: dir.clone(),
            cause: source,
        })?;
        let mut found = scan(&dir)?;
        found.sort_by(|a, b| (a.saved_at, &a.id).cmp(&(b.saved_at, &b.id)));
        let index = Index {
            bytes: found.iter().map(|s| s.bytes).sum(),
            snapshots: found.into(),
        };
        let store = SnapshotStore {
            dir,
            retention,
            index: Mutex::new(index),
            cleanup_errors: RateLimitedLog::new(CLEANUP_ERROR_LOG_INTERVAL),
        };
        store.enforce_retention(Utc::now());
        Ok(store)
    }

    /// Stores `image` byte for byte as `<dir>/<UTC day>/<id>.<ext>` and `sidecar` as `<id>.json`.
    /// Each file is written to a temporary name, synced and renamed; the sidecar is renamed last
    /// and marks the snapshot complete. Does disk I/O including an fsync: call it off the path
    /// that answers the request.
    pub fn save<T: Serialize>(
        &self,
        id: &str,
        image: &[u8],
        ext: &str,
        sidecar: &T,
    ) -> Result<SnapshotRef, SnapshotError> {
        self.save_at(Utc::now(), id, image, ext, sidecar)
    }

    fn save_at<T: Serialize>(
        &self,
        now: DateTime<Utc>,
        id: &str,
        image: &[u8],
        ext: &str,
        sidecar: &T,
    ) -> Result<SnapshotRef, SnapshotError> {
        validate_id(id)?;
        validate_extension(ext)?;
        let mut sidecar_json =
            serde_json::to_vec_pretty(sidecar).map_err(SnapshotError::Serialize)?;
        sidecar_json.push(b'\n');
        let day_dir = self.dir.join(now.format(DAY_FORMAT).to_string());
        fs::create_dir_all(&day_dir).map_err(|source| SnapshotError::CreateDir {
            path: day_dir.clone(),
            cause: source,
        })?;
        let image_path = day_dir.join(format!("{id}.{ext}"));
        let sidecar_path = day_dir.join(format!("{id}.{SIDECAR_EXT}"));
        for path in [&image_path, &sidecar_path] {
            if path.exists() {
                return Err(SnapshotError::Duplicate { path: path.clone() });
            }
        }
        write_atomically(&image_path, image)?;
        if let Err(error) = write_atomically(&sidecar_path, &sidecar_json) {
            remove_quietly(&image_path);
            return Err(error);
        }
        let bytes = (image.len() + sidecar_json.len()) as u64;
        let mut index = self.lock_index();
        index.snapshots.push_back(StoredSnapshot {
            saved_at: now,
            id: id.to_owned(),
            files: vec![image_path.clone(), sidecar_path.clone()],
            bytes,
        });
        index.bytes += bytes;
        if index.snapshots.len() > self.retention.max_count
            || index.bytes > self.retention.max_bytes
        {
            self.trim(&mut index, now);
        }
        Ok(SnapshotRef {
            id: id.to_owned(),
            image_path,
            sidecar_path,
            bytes,
        })
    }

    /// Deletes snapshots older than `max_age` and, when over the count or byte limit, the oldest
    /// down to 90% of the limits. Returns how many snapshots were deleted. Call periodically.
    pub(crate) fn enforce_retention(&self, now: DateTime<Utc>) -> usize {
        let mut index = self.lock_index();
        self.trim(&mut index, now)
    }

    /// `(count, bytes)` of the stored snapshots, from the in-memory index.
    pub(crate) fn usage(&self) -> (usize, u64) {
        let index = self.lock_index();
        (index.snapshots.len(), index.bytes)
    }

    fn trim(&self, index: &mut Index, now: DateTime<Utc>) -> usize {
        let sizes: Vec<_> = index
            .snapshots
            .iter()
            .map(|s| (s.saved_at, s.bytes))
            .collect();
        let doomed = oldest_to_delete(&sizes, now, &self.retention);
        for snapshot in index.snapshots.drain(..doomed) {
            index.bytes -= snapshot.bytes;
            for file in &snapshot.files {
                if let Err(error) = fs::remove_file(file) {
                    if error.kind() != ErrorKind::NotFound {
                        self.cleanup_errors.error(format!(
                            "cannot delete old snapshot file {}: {error}. Check the snapshot \
                             directory's permissions",
                            file.display()
                        ));
                    }
                }
            }
            if let Some(day_dir) = snapshot.files.first().and_then(|f| f.parent()) {
                // Fails harmlessly while the day still holds other snapshots.
                let _ = fs::remove_dir(day_dir);
            }
        }
        doomed
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        lock_recovering(&self.index)
    }
}

/// Saves waiting for the snapshot writer thread; more are dropped and counted.
const SNAPSHOT_QUEUE: usize = 16;
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);
/// After the store failed to open, saves fail until the next try.
const REOPEN_INTERVAL: Duration = Duration::from_secs(10);

struct SaveJob {
    id: String,
    image: Vec<u8>,
    ext: &'static str,
    sidecar: serde_json::Value,
    /// Present when the caller waits for the outcome.
    reply: Option<Sender<Result<SnapshotRef, SnapshotError>>>,
}

/// What the snapshot writer did, for /metrics.
#[derive(Debug, Default)]
pub(crate) struct SnapshotCounters {
    /// Snapshots on disk and their bytes, from the store's index.
    pub count: AtomicU64,
    pub bytes: AtomicU64,
    /// Snapshots that could not be written (including while the store could not be opened).
    pub failed: AtomicU64,
    /// Snapshots dropped because the writer fell behind (a slow or hung disk).
    pub dropped: AtomicU64,
}

/// The one place snapshots are written from: the `snapshot-writer` thread opens the store (so a
/// hung snapshot disk cannot hold up start-up), writes queued snapshots in order and applies the
/// retention; callers queue without blocking ([`Self::queue`]) or wait a bounded time for the
/// outcome ([`Self::save`]). Cloneable.
#[derive(Clone)]
pub(crate) struct SnapshotWriter {
    jobs: Sender<SaveJob>,
    counters: Arc<SnapshotCounters>,
    /// How long [`Self::save`] waits for the disk before answering that it is unavailable
    /// (`snapshots.save_wait_ms`).
    save_wait: Duration,
}

impl SnapshotWriter {
    /// Starts the `snapshot-writer` thread for the store in `dir`; returns at once.
    pub fn start(
        dir: PathBuf,
        retention: SnapshotRetention,
        save_wait: Duration,
    ) -> std::io::Result<SnapshotWriter> {
        let (jobs, queue) = crossbeam_channel::bounded(SNAPSHOT_QUEUE);
        let counters = Arc::new(SnapshotCounters::default());
        let thread_counters = Arc::clone(&counters);
        thread::Builder::new()
            .name("snapshot-writer".to_owned())
            .spawn(move || {
                let first_retention = Instant::now() + RETENTION_INTERVAL;
                write_snapshots(&dir, retention, &queue, &thread_counters, first_retention)
            })?;
        Ok(SnapshotWriter {
            jobs,
            counters,
            save_wait,
        })
    }

    /// Queues a snapshot written after the answer; never blocks. Failures are logged
    /// (rate-limited) and counted by the writer.
    pub fn queue<T: Serialize>(&self, id: &str, image: Vec<u8>, ext: &'static str, sidecar: &T) {
        if let Ok(job) = self.job(id, image, ext, sidecar, None) {
            if self.jobs.try_send(job).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Saves a snapshot and waits for the outcome, at most `save_wait`: a hung disk is
    /// answered [`SnapshotError::Unavailable`], it never holds a worker.
    pub fn save<T: Serialize>(
        &self,
        id: &str,
        image: &[u8],
        ext: &'static str,
        sidecar: &T,
    ) -> Result<SnapshotRef, SnapshotError> {
        let (reply, outcome) = crossbeam_channel::bounded(1);
        let job = self.job(id, image.to_vec(), ext, sidecar, Some(reply))?;
        if self.jobs.try_send(job).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(SnapshotError::Unavailable {
                cause: "its queue is full",
            });
        }
        outcome
            .recv_timeout(self.save_wait)
            .unwrap_or(Err(SnapshotError::Unavailable {
                cause: "the disk did not finish the write within snapshots.save_wait_ms",
            }))
    }

    /// `(count, bytes)` of the stored snapshots.
    pub(crate) fn usage(&self) -> (usize, u64) {
        (
            self.counters.count.load(Ordering::Relaxed) as usize,
            self.counters.bytes.load(Ordering::Relaxed),
        )
    }

    /// Failed and dropped counts.
    pub(crate) fn counters(&self) -> Arc<SnapshotCounters> {
        Arc::clone(&self.counters)
    }

    fn job<T: Serialize>(
        &self,
        id: &str,
        image: Vec<u8>,
        ext: &'static str,
        sidecar: &T,
        reply: Option<Sender<Result<SnapshotRef, SnapshotError>>>,
    ) -> Result<SaveJob, SnapshotError> {
        let sidecar = serde_json::to_value(sidecar).map_err(|error| {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            SnapshotError::Serialize(error)
        })?;
        Ok(SaveJob {
            id: id.to_owned(),
            image,
            ext,
            sidecar,
            reply,
        })
    }
}

/// The `snapshot-writer` thread's loop: open (retrying every [`REOPEN_INTERVAL`]), save, and prune
/// from `first_retention` on every [`RETENTION_INTERVAL`], busy or not.
fn write_snapshots(
    dir: &Path,
    retention: SnapshotRetention,
    queue: &Receiver<SaveJob>,
    counters: &SnapshotCounters,
    first_retention: Instant,
) {
    let errors = RateLimitedLog::new(CLEANUP_ERROR_LOG_INTERVAL);
    let mut store = None;
    let mut next_open = Instant::now();
    let mut next_retention = first_retention;
    loop {
        if store.is_none() && Instant::now() >= next_open {
            match SnapshotStore::open(dir, retention) {
                Ok(opened) => store = Some(opened),
                Err(error) => {
                    errors.error(format!("failure snapshots are not stored: {error}"));
                    next_open = Instant::now() + REOPEN_INTERVAL;
                }
            }
        }
        let wait = next_retention.saturating_duration_since(Instant::now());
        match queue.recv_timeout(wait) {
            Ok(job) => {
                let saved = match &store {
                    Some(store) => store.save(&job.id, &job.image, job.ext, &job.sidecar),
                    None => Err(SnapshotError::Unavailable {
                        cause: "the snapshot directory could not be opened",
                    }),
                };
                if let Err(error) = &saved {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    if store.is_some() {
                        errors.error(format!("snapshot {} not stored: {error}", job.id));
                    }
                }
                if let Some(reply) = job.reply {
                    let _ = reply.try_send(saved);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // On time whether or not the queue ever empties: a steady stream of failures must not keep
        // snapshots past `max_age`.
        if Instant::now() >= next_retention {
            next_retention = Instant::now() + RETENTION_INTERVAL;
            if let Some(store) = &store {
                store.enforce_retention(Utc::now());
            }
        }
        if let Some(store) = &store {
            let (count, bytes) = store.usage();
            counters.count.store(count as u64, Ordering::Relaxed);
            counters.bytes.store(bytes, Ordering::Relaxed);
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    atomic_file::write(path, bytes, 0o640).map_err(|cause| SnapshotError::Write {
        path: path.to_owned(),
        cause,
    })
}

fn remove_quietly(path: &Path) {
    if let Err(error) = fs::remove_file(path) {
        if error.kind() != ErrorKind::NotFound {
            log::warn!("cannot remove {}: {error}", path.display());
        }
    }
}

/// Indexes every complete snapshot under `dir`; removes temporary files and images whose sidecar
/// never got written (a crash mid-save). Files with other names are left alone.
fn scan(dir: &Path) -> Result<Vec<StoredSnapshot>, SnapshotError> {
    let scan_error = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Scan {
            path,
            cause: source,
        }
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(scan_error(dir))? {
        let entry = entry.map_err(scan_error(dir))?;
        let is_day = entry
            .file_name()
            .to_str()
            .is_some_and(|name| NaiveDate::parse_from_str(name, DAY_FORMAT).is_ok());
        if is_day && entry.file_type().map_err(scan_error(dir))?.is_dir() {
            found.extend(scan_day(&entry.path())?);
        }
    }
    Ok(found)
}

#[derive(Default)]
struct FoundFiles {
    files: Vec<PathBuf>,
    bytes: u64,
    sidecar_modified: Option<SystemTime>,
}

fn scan_day(day_dir: &Path) -> Result<Vec<StoredSnapshot>, SnapshotError> {
    let scan_error = |source| SnapshotError::Scan {
        path: day_dir.to_owned(),
        cause: source,
    };
    let mut by_id: BTreeMap<String, FoundFiles> = BTreeMap::new();
    for entry in fs::read_dir(day_dir).map_err(scan_error)? {
        let entry = entry.map_err(scan_error)?;
        let metadata = entry.metadata().map_err(scan_error)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !metadata.is_file() {
            continue;
        }
        if name.starts_with(TEMP_PREFIX) {
            remove_quietly(&entry.path());
            continue;
        }
        let Some((id, ext)) = name.split_once('.') else {
            continue;
        };
        if validate_id(id).is_err() {
            continue;
        }
        let found = by_id.entry(id.to_owned()).or_default();
        found.files.push(entry.path());
        found.bytes += metadata.len();
        if ext == SIDECAR_EXT {
            found.sidecar_modified = Some(metadata.modified().map_err(scan_error)?);
        }
    }
    let mut complete = Vec::new();
    for (id, found) in by_id {
        match found.sidecar_modified {
            Some(modified) => complete.push(StoredSnapshot {
                saved_at: modified.into(),
                id,
                files: found.files,
                bytes: found.bytes,
            }),
            None => found.files.iter().for_each(|file| remove_quietly(file)),
        }
    }
    if complete.is_empty() {
        // Fails harmlessly if unrelated files remain.
        let _ = fs::remove_dir(day_dir);
    }
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const ROOMY: SnapshotRetention = SnapshotRetention {
        max_count: 1000,
        max_bytes: u64::MAX,
        max_age: Duration::from_secs(30 * 24 * 3600),
    };
    /// A wait for the disk no loaded test machine misses.
    const PATIENT: Duration = Duration::from_secs(60);

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// (name, snapshots as (minutes ago, bytes) oldest first, limits, expected deletions)
    type Case = (&'static str, Vec<(i64, u64)>, SnapshotRetention, usize);

    #[test]
    fn retention_removes_the_oldest_first() {
        let now = at("2025-03-10T12:00:00Z");
        let minutes_ago = |m: i64| now - TimeDelta::minutes(m);
        let limits = |max_count, max_bytes, max_age_minutes: u64| SnapshotRetention {
            max_count,
            max_bytes,
            max_age: Duration::from_secs(max_age_minutes * 60),
        };
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            ("within all limits", vec![(30, 10), (20, 10), (10, 10)], limits(10, 100, 60), 0),
            ("exactly at the limits", vec![(30, 50), (20, 50)], limits(2, 100, 60), 0),
            ("age deletes what is older", vec![(90, 10), (61, 10), (59, 10)], limits(10, 100, 60), 2),
            ("count over deletes down to 90%", vec![(10, 1); 11], limits(10, 100, 60), 2),
            ("bytes over deletes down to 90%", vec![(40, 30), (30, 30), (20, 30), (10, 30)], limits(10, 100, 60), 1),
            ("bytes target is 90 of 100", vec![(40, 25), (30, 25), (20, 25), (10, 26)], limits(10, 100, 60), 1),
            ("age first, then limits on the rest", vec![(120, 500), (30, 60), (20, 60)], limits(10, 100, 60), 2),
            ("a single snapshot over the byte limit goes too", vec![(10, 200)], limits(10, 100, 60), 1),
            ("zero count keeps nothing", vec![(10, 1), (5, 1)], limits(0, 100, 60), 2),
            ("huge max age never overflows", vec![(100_000, 1)], SnapshotRetention { max_age: Duration::MAX, ..limits(10, 100, 0) }, 0),
            ("empty", vec![], limits(0, 0, 0), 0),
        ];
        for (name, snapshots, retention, expected) in table {
            let snapshots: Vec<_> = snapshots
                .iter()
                .map(|&(m, b)| (minutes_ago(m), b))
                .collect();
            assert_eq!(
                oldest_to_delete(&snapshots, now, &retention),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn id_validation_blocks_path_traversal() {
        let longest = "a".repeat(MAX_ID_LEN);
        let too_long = "a".repeat(MAX_ID_LEN + 1);
        #[rustfmt::skip]
        let table = [
            ("req-20250310_abc", true), (longest.as_str(), true), ("A-Z_0-9", true),
            ("", false), (too_long.as_str(), false), ("../etc/passwd", false), ("a/b", false),
            ("a.b", false), ("..", false), ("a b", false), ("é", false), ("a\\b", false), ("a\0", false),
        ];
        for (id, valid) in table {
            assert_eq!(validate_id(id).is_ok(), valid, "{id:?}");
        }
    }

    #[test]
    fn extension_validation() {
        #[rustfmt::skip]
        let table = [
            ("jpg", true), ("JPEG", true), ("png", true),
            ("", false), ("json", false), ("JSON", false), ("j/g", false), (".jpg", false), ("toolongext", false),
        ];
        for (ext, valid) in table {
            assert_eq!(validate_extension(ext).is_ok(), valid, "{ext:?}");
        }
    }

    #[test]
    fn save_writes_image_bytes_exactly_and_the_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), ROOMY).unwrap();
        let image: Vec<u8> = (0..=255).collect();
        let now = at("2025-03-10T08:00:00Z");
        let saved = store
            .save_at(
                now,
                "req-1",
                &image,
                "jpg",
                &json!({"decision": "refused", "score": 0.31}),
            )
            .unwrap();
        assert_eq!(saved.image_path, dir.path().join("2025-03-10/req-1.jpg"));
        assert_eq!(saved.sidecar_path, dir.path().join("2025-03-10/req-1.json"));
        assert_eq!(fs::read(&saved.image_path).unwrap(), image);
        let sidecar: Value =
            serde_json::from_slice(&fs::read(&saved.sidecar_path).unwrap()).unwrap();
        assert_eq!(sidecar["decision"], "refused");
        assert_eq!(store.usage(), (1, saved.bytes));
        let names: Vec<_> = fs::read_dir(dir.path().join("2025-03-10"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    }

    #[test]
    fn save_rejects_bad_ids_duplicates_and_bad_sidecars_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), ROOMY).unwrap();
        let now = at("2025-03-10T08:00:00Z");
        let error = store
            .save_at(now, "../escape", b"x", "jpg", &json!({}))
            .unwrap_err();
        assert!(matches!(error, SnapshotError::InvalidId { .. }));
        store
            .save_at(now, "req-1", b"x", "jpg", &json!({}))
            .unwrap();
        let error = store
            .save_at(now, "req-1", b"y", "jpg", &json!({}))
            .unwrap_err();
        assert!(matches!(error, SnapshotError::Duplicate { .. }));
        let non_string_keys: BTreeMap<Vec<u8>, u8> = BTreeMap::from([(vec![1], 1)]);
        let error = store
            .save_at(now, "req-2", b"x", "jpg", &non_string_keys)
            .unwrap_err();
        assert!(matches!(error, SnapshotError::Serialize(_)));
        assert!(!dir.path().join("2025-03-10/req-2.jpg").exists());
        assert_eq!(
            fs::read(dir.path().join("2025-03-10/req-1.jpg")).unwrap(),
            b"x"
        );
        assert_eq!(store.usage().0, 1);
    }

    #[test]
    fn save_into_an_unwritable_place_returns_an_error_instead_of_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), ROOMY).unwrap();
        // A file where the day directory should go makes every write of that day fail.
        fs::write(dir.path().join("2025-03-10"), b"").unwrap();
        let error = store
            .save_at(at("2025-03-10T08:00:00Z"), "req-1", b"x", "jpg", &json!({}))
            .unwrap_err();
        assert!(matches!(error, SnapshotError::CreateDir { .. }));
        assert!(error.to_string().contains("Free disk space"), "{error}");
        assert_eq!(store.usage(), (0, 0));
    }

    #[test]
    fn count_limit_deletes_the_oldest_in_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let retention = SnapshotRetention {
            max_count: 10,
            ..ROOMY
        };
        let store = SnapshotStore::open(dir.path(), retention).unwrap();
        let start = at("2025-03-10T08:00:00Z");
        for n in 0..=10 {
            let now = start + TimeDelta::seconds(n);
            store
                .save_at(now, &format!("req-{n:02}"), b"img", "jpg", &json!({}))
                .unwrap();
        }
        assert_eq!(store.usage().0, 9);
        let day = dir.path().join("2025-03-10");
        for n in 0..2 {
            assert!(
                !day.join(format!("req-{n:02}.jpg")).exists(),
                "req-{n:02} deleted"
            );
            assert!(
                !day.join(format!("req-{n:02}.json")).exists(),
                "req-{n:02} deleted"
            );
        }
        assert!(day.join("req-02.jpg").exists());
        assert!(day.join("req-10.json").exists());
    }

    #[test]
    fn byte_limit_and_age_are_enforced_and_usage_follows() {
        let dir = tempfile::tempdir().unwrap();
        let retention = SnapshotRetention {
            max_count: 1000,
            max_bytes: 10_000,
            max_age: Duration::from_secs(3600),
        };
        let store = SnapshotStore::open(dir.path(), retention).unwrap();
        let start = at("2025-03-09T23:40:00Z");
        let image = vec![7u8; 3_000];
        for n in 0..4 {
            let now = start + TimeDelta::minutes(n * 10);
            store
                .save_at(now, &format!("req-{n}"), &image, "jpg", &json!({}))
                .unwrap();
        }
        let (count, bytes) = store.usage();
        assert_eq!(count, 2, "4 × 3 kB exceeds 10 kB: down to 9 kB");
        assert!(bytes <= 9_000);
        assert!(
            !dir.path().join("2025-03-09").exists(),
            "emptied day directory removed"
        );
        assert_eq!(store.enforce_retention(start + TimeDelta::hours(3)), 2);
        assert_eq!(store.usage(), (0, 0));
    }

    #[test]
    fn reopening_rebuilds_the_index_and_removes_half_written_left_overs() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("2025-03-10");
        {
            let store = SnapshotStore::open(dir.path(), ROOMY).unwrap();
            for id in ["req-1", "req-2"] {
                store
                    .save_at(at("2025-03-10T08:00:00Z"), id, b"image", "jpg", &json!({}))
                    .unwrap();
            }
        }
        let usage_before = {
            let store = SnapshotStore::open(dir.path(), ROOMY).unwrap();
            store.usage()
        };
        fs::write(day.join(".tmp-req-3.jpg"), b"half").unwrap();
        fs::write(day.join("req-4.jpg"), b"image without sidecar").unwrap();
        fs::write(day.join("README"), b"not a snapshot").unwrap();
        let store = SnapshotStore::open(dir.path(), ROOMY).unwrap();
        assert_eq!(store.usage(), usage_before);
        assert_eq!(usage_before.0, 2);
        assert!(!day.join(".tmp-req-3.jpg").exists());
        assert!(!day.join("req-4.jpg").exists());
        assert!(day.join("README").exists());
    }

    #[test]
    fn the_writer_saves_and_queues_snapshots_and_reports_usage() {
        let dir = tempfile::tempdir().unwrap();
        let writer = SnapshotWriter::start(dir.path().to_owned(), ROOMY, PATIENT).unwrap();
        let saved = writer
            .save(
                "req-1",
                b"jpeg bytes",
                "jpg",
                &json!({"reason": "pin_failed"}),
            )
            .unwrap();
        assert_eq!(fs::read(&saved.image_path).unwrap(), b"jpeg bytes");
        writer.queue(
            "req-2",
            b"more".to_vec(),
            "jpg",
            &json!({"reason": "unknown"}),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while writer.usage().0 < 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(writer.usage().0, 2);
        assert_eq!(writer.counters().failed.load(Ordering::Relaxed), 0);
    }

    /// A hung snapshot disk must not hold a worker: a FIFO nobody reads, where the writer creates
    /// its temporary file, is a write that never returns.
    /// Regression: age retention ran only when the writer's queue was empty, so failure snapshots
    /// coming faster than a slow card wrote them kept old ones past `max_age` (the audit writer had
    /// the same defect). Here two jobs wait in the queue when the writer starts, retention is due at
    /// once and every snapshot saved before it is too old: the first must go while the second waits.
    #[test]
    fn age_retention_runs_on_its_schedule_while_jobs_wait() {
        let dir = tempfile::tempdir().unwrap();
        let retention = SnapshotRetention {
            max_age: Duration::ZERO,
            ..ROOMY
        };
        let (jobs, queue) = crossbeam_channel::unbounded();
        for id in ["first", "second"] {
            let job = SaveJob {
                id: id.into(),
                image: b"x".to_vec(),
                ext: "jpg",
                sidecar: json!({}),
                reply: None,
            };
            jobs.send(job).unwrap();
        }
        drop(jobs);
        let counters = SnapshotCounters::default();
        write_snapshots(dir.path(), retention, &queue, &counters, Instant::now());
        let day = dir.path().join(Utc::now().format(DAY_FORMAT).to_string());
        let saved = |id: &str| day.join(format!("{id}.jpg")).exists();
        assert_eq!(
            (saved("first"), saved("second")),
            (false, true),
            "retention waited for an empty queue"
        );
    }

    #[test]
    fn a_hung_snapshot_disk_never_holds_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let writer = SnapshotWriter::start(dir.path().to_owned(), ROOMY, PATIENT).unwrap();
        let saved = writer.save("first", b"x", "jpg", &json!({})).unwrap();
        let fifo = saved.image_path.with_file_name(".tmp-hang.jpg");
        crate::stuck_file::make(&fifo);
        let impatient = SnapshotWriter {
            save_wait: Duration::from_millis(500),
            ..writer.clone()
        };
        let asked = Instant::now();
        let hung = impatient.save("hang", b"x", "jpg", &json!({}));
        assert!(
            matches!(hung, Err(SnapshotError::Unavailable { .. })),
            "{hung:?}"
        );
        assert!(asked.elapsed() < impatient.save_wait + Duration::from_secs(10));
        let queued_at = Instant::now();
        for n in 0..(SNAPSHOT_QUEUE + 5) {
            writer.queue(&format!("later-{n}"), b"x".to_vec(), "jpg", &json!({}));
        }
        assert!(
            queued_at.elapsed() < Duration::from_secs(10),
            "queueing waited for the hung disk"
        );
        assert!(writer.counters().dropped.load(Ordering::Relaxed) >= 5);
    }
}
