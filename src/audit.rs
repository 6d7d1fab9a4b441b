//! Append-only audit trail of decisions and door actuations: one JSON line per event in one file
//! per UTC day, bounded by age and total size, so an operator can answer "who opened the door when".
//! One writer thread owns the files; everyone else queues lines without blocking.
//!
//! Two priorities, so that nobody without a credential can push the door's history out: kept lines
//! (decisions on authenticated requests, door actuations, admin and MQTT actions, alarms) have a queue
//! and a day file of their own; what would flood (refused requests, `paused` frames) is only counted
//! and written once per interval as summaries (`summary`) into a bulk day file, the first thing
//! retention deletes and capped for today.

mod summary;

pub use summary::Tally;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use self::summary::{Counted, Summaries, MAX_SUMMARISED_ADDRESSES};
use crate::ratelimit::RateLimitedLog;

const FILE_PREFIX: &str = "audit-";
const FILE_SUFFIX: &str = ".jsonl";
/// Bulk day files: `audit-YYYY-MM-DD.bulk.jsonl`.
const BULK_SUFFIX: &str = ".bulk.jsonl";
/// Bulk lines may take this share of `max_total_bytes` (a quarter) for today; past it they are dropped.
const BULK_SHARE: u64 = 4;

/// How much audit history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Day files more than this many days before today are deleted (0 keeps only today).
    pub max_age_days: u32,
    /// Bulk files, then the oldest kept files are deleted until all files together fit; today's files
    /// are never deleted but are capped: bulk lines at a quarter of this, kept lines at all of it.
    pub max_total_bytes: u64,
}

impl AuditRetention {
    /// The most today's file of `priority` may hold.
    fn today_cap(&self, priority: Priority) -> u64 {
        match priority {
            Priority::Kept => self.max_total_bytes,
            Priority::Bulk => self.max_total_bytes / BULK_SHARE,
        }
    }
}

/// Which queue and which day file a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Priority {
    /// Summaries of what would flood: deleted first, capped for today.
    Bulk,
    /// Decisions, door actuations, admin and MQTT actions, alarms: never behind a flood, deleted last.
    Kept,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditError {
    #[error(
        "cannot create the audit directory {}: {cause}. Create it, or point the audit directory \
         setting at a directory the facegate user can write",
        path.display()
    )]
    CreateDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "cannot open the audit file {}: {cause}. Check that the directory is writable by the \
         facegate user and that the disk is not full",
        path.display()
    )]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "cannot append to the audit file {}: {cause}. Free disk space (see df) or fix the file's \
         permissions; audit records are lost until then",
        path.display()
    )]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "audit record cannot be written as a JSON object: {0}. Audit records must be structs or \
         maps and must not have their own \"ts\" field"
    )]
    Serialize(serde_json::Error),
    #[error(
        "cannot list the audit directory {}: {cause}. Check that it exists and is readable",
        path.display()
    )]
    List {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "cannot delete the old audit file {}: {cause}. Check the directory's permissions",
        path.display()
    )]
    Delete {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// A record with the timestamp serialized as its first field.
#[derive(Serialize)]
struct Stamped<'a, T: Serialize> {
    ts: String,
    #[serde(flatten)]
    record: &'a T,
}

/// `record` (a struct or map) as one JSON line with `"ts"` (RFC 3339, milliseconds, UTC) as its
/// first field, ending in a newline.
pub(crate) fn stamp_line<T: Serialize>(
    now: DateTime<Utc>,
    record: &T,
) -> Result<String, AuditError> {
    let stamped = Stamped {
        ts: now.to_rfc3339_opts(SecondsFormat::Millis, true),
        record,
    };
    let mut line = serde_json::to_string(&stamped).map_err(AuditError::Serialize)?;
    line.push('\n');
    Ok(line)
}

struct DayFile {
    day: NaiveDate,
    file: File,
    /// The file's size, as opened plus what was written since.
    bytes: u64,
}

/// The audit files on disk. Only the [`AuditWriter`] thread touches them in the daemon.
pub(crate) struct AuditLog {
    dir: PathBuf,
    retention: AuditRetention,
    kept: Option<DayFile>,
    bulk: Option<DayFile>,
}

/// Why a line was not written.
#[derive(Debug)]
pub(crate) enum NotWritten {
    /// Today's file of its priority is at its cap (`AuditRetention::today_cap`).
    Full,
    Failed(AuditError),
}

impl AuditLog {
    /// Creates `dir` if needed, opens today's file (so a permission problem shows at once) and
    /// applies the retention once.
    pub fn open(
        dir: impl Into<PathBuf>,
        retention: AuditRetention,
    ) -> Result<AuditLog, AuditError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| AuditError::CreateDir {
            path: dir.clone(),
            cause: source,
        })?;
        let mut log = AuditLog {
            dir,
            retention,
            kept: None,
            bulk: None,
        };
        let now = Utc::now();
        log.kept = Some(log.open_day(now.date_naive(), Priority::Kept)?);
        if let Err(error) = log.enforce_retention(now) {
            log::warn!("audit retention at start-up: {error}");
        }
        Ok(log)
    }

    /// The file holding the kept records of `day` (UTC).
    pub(crate) fn file_path(&self, day: NaiveDate) -> PathBuf {
        self.dir.join(file_name(day))
    }

    fn path_of(&self, day: NaiveDate, priority: Priority) -> PathBuf {
        match priority {
            Priority::Kept => self.file_path(day),
            Priority::Bulk => self.dir.join(bulk_file_name(day)),
        }
    }

    /// Appends one stamped kept line (see [`stamp_line`]) to the file of `day`.
    #[cfg(test)]
    pub(crate) fn write_line(&mut self, day: NaiveDate, line: &str) -> Result<(), AuditError> {
        match self.append(day, Priority::Kept, line) {
            Ok(()) | Err(NotWritten::Full) => Ok(()),
            Err(NotWritten::Failed(error)) => Err(error),
        }
    }

    /// Appends one stamped line to the day file of its priority, unless that file is at its cap.
    pub(crate) fn append(
        &mut self,
        day: NaiveDate,
        priority: Priority,
        line: &str,
    ) -> Result<(), NotWritten> {
        let slot = match priority {
            Priority::Kept => self.kept.take(),
            Priority::Bulk => self.bulk.take(),
        };
        let mut open = match slot {
            Some(open) if open.day == day => open,
            _ => self.open_day(day, priority).map_err(NotWritten::Failed)?,
        };
        let cap = self.retention.today_cap(priority);
        let result = if open.bytes + line.len() as u64 > cap {
            Err(NotWritten::Full)
        } else {
            // One write of the whole line on an O_APPEND file: no interleaving, no buffering.
            open.file
                .write_all(line.as_bytes())
                .map(|()| open.bytes += line.len() as u64)
                .map_err(|source| {
                    NotWritten::Failed(AuditError::Write {
                        path: self.path_of(day, priority),
                        cause: source,
                    })
                })
        };
        // After a failure the handle is dropped so the next line reopens (the file may have vanished).
        if !matches!(result, Err(NotWritten::Failed(_))) {
            match priority {
                Priority::Kept => self.kept = Some(open),
                Priority::Bulk => self.bulk = Some(open),
            }
        }
        result
    }

    /// Deletes day files older than `max_age_days`, then bulk files, then the oldest kept files,
    /// until the total size fits `max_total_bytes`; never today's files (UTC day of `now`), which
    /// [`AuditLog::append`] caps instead. Returns how many files were deleted; on errors, keeps going
    /// and returns the first one.
    pub(crate) fn enforce_retention(&self, now: DateTime<Utc>) -> Result<usize, AuditError> {
        let list_error = |source| AuditError::List {
            path: self.dir.clone(),
            cause: source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let Some(file) = entry.file_name().to_str().and_then(parse_file_name) else {
                continue;
            };
            let metadata = entry.metadata().map_err(list_error)?;
            if metadata.is_file() {
                files.push((file, metadata.len()));
            }
        }
        let mut deleted = 0;
        let mut first_error = None;
        for (day, priority) in files_to_delete(&files, now.date_naive(), &self.retention) {
            let path = self.path_of(day, priority);
            match fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(source) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    first_error.get_or_insert(AuditError::Delete {
                        path,
                        cause: source,
                    });
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(deleted),
        }
    }

    fn open_day(&self, day: NaiveDate, priority: Priority) -> Result<DayFile, AuditError> {
        let path = self.path_of(day, priority);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| AuditError::Open {
                path: path.clone(),
                cause: source,
            })?;
        let bytes = file.metadata().map_or(0, |m| m.len());
        Ok(DayFile { day, file, bytes })
    }
}

/// Kept lines waiting for the audit writer thread; more are dropped and counted.
const KEPT_QUEUE: usize = 4096;
/// Bulk messages (lines and counts to summarise) waiting; more are dropped and counted. A flood fills
/// this queue, never the kept one.
const BULK_QUEUE: usize = 1024;
/// After the audit log failed to open, lines are counted as failed until the next try.
const REOPEN_INTERVAL: Duration = Duration::from_secs(10);
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the kept queue carries; the bulk queue carries only [`Counted`] requests.
enum Message {
    Line { day: NaiveDate, line: String },
    Stop,
}

/// What became of the lines handed to an [`AuditWriter`], for /metrics.
#[derive(Debug, Default)]
pub(crate) struct AuditCounters {
    /// Lines dropped because the queue was full (the disk is slower than the decisions) or today's
    /// file was at its cap.
    pub dropped: AtomicU64,
    /// Lines that could not be written (the log could not be opened, or the write failed).
    pub failed: AtomicU64,
    /// Requests counted into summaries instead of a line each.
    pub summarised: AtomicU64,
}

/// How the audit writer works: retention and the summaries' interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSettings {
    pub retention: AuditRetention,
    /// One summary line per address and kind per this interval.
    pub summary_interval: Duration,
}

/// The one place audit lines are written from: callers stamp and queue a line with
/// [`AuditWriter::record`], or count a request into a summary with [`AuditWriter::count`]; neither
/// blocks. The `audit-writer` thread opens the log (so a hung audit disk cannot hold up start-up),
/// writes kept lines first, in order, writes the summaries once per interval, and applies the
/// retention on its schedule whatever the load. Cloneable; every clone feeds the same thread.
#[derive(Clone)]
pub struct AuditWriter {
    kept: Sender<Message>,
    bulk: Sender<Counted>,
    counters: Arc<AuditCounters>,
}

/// The `audit-writer` thread, to let it finish the queued lines at shutdown.
pub struct AuditWriterThread {
    kept: Sender<Message>,
    /// Disconnects when the thread ends.
    done: Receiver<()>,
}

impl AuditWriter {
    /// Starts the `audit-writer` thread for the log in `dir`. Returns at once; opening the log and
    /// every later disk error happen on that thread and are logged (rate-limited) and counted.
    pub fn start(
        dir: PathBuf,
        settings: AuditSettings,
    ) -> std::io::Result<(AuditWriter, AuditWriterThread)> {
        let (kept, kept_queue) = crossbeam_channel::bounded(KEPT_QUEUE);
        let (bulk, bulk_queue) = crossbeam_channel::bounded(BULK_QUEUE);
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let counters = Arc::new(AuditCounters::default());
        let thread_counters = Arc::clone(&counters);
        thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || {
                let _done = done_tx;
                Writer::new(dir, settings, &thread_counters).run(&kept_queue, bulk_queue);
            })?;
        Ok((
            AuditWriter {
                kept: kept.clone(),
                bulk,
                counters,
            },
            AuditWriterThread { kept, done },
        ))
    }

    /// Stamps `record` (a struct or map) with the current time and queues it as a kept line; never
    /// blocks. A full queue drops the line and counts it.
    pub fn record<T: Serialize>(&self, record: &T) {
        let now = Utc::now();
        match stamp_line(now, record) {
            Ok(line) => {
                let message = Message::Line {
                    day: now.date_naive(),
                    line,
                };
                if self.kept.try_send(message).is_err() {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                log::error!("audit line not written: {error}");
            }
        }
    }

    /// Counts one request into its address's summary instead of writing a line for it; never
    /// blocks (a full bulk queue drops the count and counts that).
    pub fn count(
        &self,
        tally: Tally,
        remote: Option<std::net::IpAddr>,
        label: &'static str,
        request_id: &str,
    ) {
        let counted = Counted {
            tally,
            remote,
            label,
            request_id: request_id.to_string(),
            at: Utc::now(),
        };
        if self.bulk.try_send(counted).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Dropped and failed line counts.
    pub(crate) fn counters(&self) -> Arc<AuditCounters> {
        Arc::clone(&self.counters)
    }
}

impl AuditWriterThread {
    /// Lets the writer finish the lines queued so far (and write the summaries counted so far),
    /// waiting at most `limit` (a hung disk must not stop a shutdown). Returns whether it finished.
    pub(crate) fn finish(self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        if self.kept.send_timeout(Message::Stop, limit).is_err() {
            return false;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.done.recv_timeout(remaining) != Err(RecvTimeoutError::Timeout)
    }
}

/// The `audit-writer` thread's state: the log once open, the summaries, the schedule.
struct Writer<'a> {
    dir: PathBuf,
    retention: AuditRetention,
    counters: &'a AuditCounters,
    errors: RateLimitedLog,
    full: RateLimitedLog,
    log: Option<AuditLog>,
    next_open: Instant,
    next_retention: Instant,
    summaries: Summaries,
}

impl<'a> Writer<'a> {
    fn new(dir: PathBuf, settings: AuditSettings, counters: &'a AuditCounters) -> Writer<'a> {
        Writer {
            dir,
            retention: settings.retention,
            counters,
            errors: RateLimitedLog::new(ERROR_LOG_INTERVAL),
            full: RateLimitedLog::new(ERROR_LOG_INTERVAL),
            log: None,
            next_open: Instant::now(),
            next_retention: Instant::now() + RETENTION_INTERVAL,
            summaries: Summaries::new(settings.summary_interval, MAX_SUMMARISED_ADDRESSES),
        }
    }

    /// Opens (retrying every [`REOPEN_INTERVAL`]), writes kept lines before bulk ones, writes the
    /// summaries when their interval ends and prunes every [`RETENTION_INTERVAL`], busy or not.
    fn run(mut self, kept: &Receiver<Message>, mut bulk: Receiver<Counted>) {
        loop {
            let now = Instant::now();
            if self.log.is_none() && now >= self.next_open {
                match AuditLog::open(&self.dir, self.retention) {
                    Ok(opened) => self.log = Some(opened),
                    Err(error) => {
                        self.errors
                            .error(format!("audit lines are not written: {error}"));
                        self.next_open = now + REOPEN_INTERVAL;
                    }
                }
            }
            if now >= self.next_retention {
                self.next_retention = now + RETENTION_INTERVAL;
                if let Some(Err(error)) = self
                    .log
                    .as_ref()
                    .map(|log| log.enforce_retention(Utc::now()))
                {
                    self.errors
                        .error(format!("audit retention failed: {error}"));
                }
            }
            if self.summaries.is_due(now) {
                self.write_summaries();
            }
            let wake = self
                .summaries
                .due()
                .map_or(self.next_retention, |due| due.min(self.next_retention));
            let wait = wake.saturating_duration_since(now);
            let message = crossbeam_channel::select_biased! {
                recv(kept) -> message => message.ok(),
                recv(bulk) -> counted => {
                    match counted {
                        Ok(counted) => self.summarise(counted),
                        // Every writer is gone; the kept queue still brings the stop.
                        Err(_) => bulk = crossbeam_channel::never(),
                    }
                    continue;
                },
                default(wait) => continue,
            };
            match message {
                Some(Message::Line { day, line }) => self.write(day, Priority::Kept, &line),
                Some(Message::Stop) | None => {
                    while let Ok(counted) = bulk.try_recv() {
                        self.summarise(counted);
                    }
                    self.write_summaries();
                    return;
                }
            }
        }
    }

    fn summarise(&mut self, counted: Counted) {
        self.counters.summarised.fetch_add(1, Ordering::Relaxed);
        self.summaries.add(counted, Instant::now());
    }

    fn write(&mut self, day: NaiveDate, priority: Priority, line: &str) {
        // Without an open log the line fails silently: opening already said why.
        let Some(log) = self.log.as_mut() else {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match log.append(day, priority, line) {
            Ok(()) => {}
            Err(NotWritten::Full) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.full.error(format!(
                    "today's audit file ({priority:?}) is at its cap of {} bytes (audit.max_total_mb); lines are dropped until tomorrow",
                    self.retention.today_cap(priority)
                ));
            }
            Err(NotWritten::Failed(error)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.errors
                    .error(format!("audit line not written: {error}"));
            }
        }
    }

    /// Writes (and logs, for refusals) one line per summarised address and kind.
    fn write_summaries(&mut self) {
        for (tally, line) in self.summaries.flush() {
            if tally == Tally::Refused {
                log::warn!(
                    "refused {} requests from {} between {} and {} ({}); first request_id={} last request_id={}",
                    line["count"],
                    line["remote"].as_str().unwrap_or_default(),
                    line["from"].as_str().unwrap_or_default(),
                    line["to"].as_str().unwrap_or_default(),
                    line["by"],
                    line["first_request_id"].as_str().unwrap_or_default(),
                    line["last_request_id"].as_str().unwrap_or_default(),
                );
            }
            let now = Utc::now();
            match stamp_line(now, &line) {
                Ok(stamped) => self.write(now.date_naive(), Priority::Bulk, &stamped),
                Err(error) => log::error!("audit summary not written: {error}"),
            }
        }
    }
}

/// The name of the file holding the kept records of `day` (UTC).
pub fn file_name(day: NaiveDate) -> String {
    format!("{FILE_PREFIX}{}{FILE_SUFFIX}", day.format("%Y-%m-%d"))
}

/// The name of the file holding the summaries of `day` (UTC).
pub fn bulk_file_name(day: NaiveDate) -> String {
    format!("{FILE_PREFIX}{}{BULK_SUFFIX}", day.format("%Y-%m-%d"))
}

/// The day and priority of an `audit-YYYY-MM-DD.jsonl` or `audit-YYYY-MM-DD.bulk.jsonl` file name;
/// `None` for any other name.
fn parse_file_name(name: &str) -> Option<(NaiveDate, Priority)> {
    let rest = name.strip_prefix(FILE_PREFIX)?;
    let (date, priority) = match rest.strip_suffix(BULK_SUFFIX) {
        Some(date) => (date, Priority::Bulk),
        None => (rest.strip_suffix(FILE_SUFFIX)?, Priority::Kept),
    };
    let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some((day, priority))
}

/// Chooses which day files to delete: every file more than `max_age_days` before `today`, then,
/// while the total of `((day, priority), bytes)` is over `max_total_bytes`, the oldest bulk files,
/// then the oldest kept files. Today's files are never chosen.
pub(crate) fn files_to_delete(
    files: &[((NaiveDate, Priority), u64)],
    today: NaiveDate,
    retention: &AuditRetention,
) -> Vec<(NaiveDate, Priority)> {
    let mut files = files.to_vec();
    // Bulk before kept, each oldest first: the order in which size makes room.
    files.sort_unstable_by_key(|&((day, priority), _)| (priority, day));
    let too_old = |day: NaiveDate| (today - day).num_days() > i64::from(retention.max_age_days);
    let mut total: u64 = files.iter().map(|&(_, bytes)| bytes).sum();
    let mut doomed = Vec::new();
    for &(file, bytes) in &files {
        if too_old(file.0) && file.0 != today {
            doomed.push(file);
            total -= bytes;
        }
    }
    for &(file, bytes) in &files {
        if file.0 != today && !doomed.contains(&file) && total > retention.max_total_bytes {
            doomed.push(file);
            total -= bytes;
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{json, Value};
    use std::path::Path;

    const ROOMY: AuditRetention = AuditRetention {
        max_age_days: 30,
        max_total_bytes: u64::MAX,
    };

    fn settings(retention: AuditRetention) -> AuditSettings {
        AuditSettings {
            retention,
            summary_interval: Duration::from_secs(3600),
        }
    }

    fn append_at<T: Serialize>(
        log: &mut AuditLog,
        now: DateTime<Utc>,
        record: &T,
    ) -> Result<(), AuditError> {
        log.write_line(now.date_naive(), &stamp_line(now, record)?)
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn read_lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[derive(Serialize)]
    struct Decision<'a> {
        event: &'a str,
        request_id: &'a str,
        score: f32,
    }

    /// (name, files as (day, bytes), retention, expected deletions in order); a day ending in `b`
    /// names that day's bulk file.
    type Case = (
        &'static str,
        Vec<(&'static str, u64)>,
        AuditRetention,
        Vec<&'static str>,
    );

    fn file(text: &str) -> (NaiveDate, Priority) {
        match text.strip_suffix('b') {
            Some(date) => (day(date), Priority::Bulk),
            None => (day(text), Priority::Kept),
        }
    }

    #[test]
    fn files_to_delete_table() {
        let today = day("2025-03-10");
        let retention = |max_age_days, max_total_bytes| AuditRetention {
            max_age_days,
            max_total_bytes,
        };
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            ("nothing to do", vec![("2025-03-09", 10), ("2025-03-10", 10)], retention(30, 100), vec![]),
            ("age limit is inclusive", vec![("2025-03-03", 1), ("2025-03-02", 1), ("2025-03-10", 1)], retention(7, 100), vec!["2025-03-02"]),
            ("zero age keeps only today", vec![("2025-03-09", 1), ("2025-03-10", 1)], retention(0, 100), vec!["2025-03-09"]),
            ("size deletes oldest first", vec![("2025-03-08", 40), ("2025-03-07", 40), ("2025-03-09", 40), ("2025-03-10", 40)], retention(30, 100), vec!["2025-03-07", "2025-03-08"]),
            ("size counts only what is left after age", vec![("2025-01-01", 500), ("2025-03-09", 60), ("2025-03-10", 40)], retention(30, 100), vec!["2025-01-01"]),
            ("today survives even when alone over the limit", vec![("2025-03-09", 10), ("2025-03-10", 500)], retention(30, 100), vec!["2025-03-09"]),
            ("future file (clock jumped back) goes after older ones", vec![("2025-03-12", 60), ("2025-03-09", 60), ("2025-03-10", 10)], retention(30, 50), vec!["2025-03-09", "2025-03-12"]),
            ("no files", vec![], retention(0, 0), vec![]),
            ("bulk files go before any kept file, today's never", vec![("2025-03-01", 40), ("2025-03-09b", 40), ("2025-03-10b", 40), ("2025-03-10", 10)], retention(30, 60), vec!["2025-03-09b", "2025-03-01"]),
            ("bulk alone makes room", vec![("2025-03-01", 40), ("2025-03-08b", 40), ("2025-03-09b", 40), ("2025-03-10", 10)], retention(30, 60), vec!["2025-03-08b", "2025-03-09b"]),
            ("age takes bulk and kept alike", vec![("2025-01-01", 1), ("2025-01-01b", 1), ("2025-03-10b", 1)], retention(30, 100), vec!["2025-01-01b", "2025-01-01"]),
        ];
        for (name, files, retention, expected) in table {
            let files: Vec<_> = files.iter().map(|&(d, b)| (file(d), b)).collect();
            let expected: Vec<_> = expected.into_iter().map(file).collect();
            assert_eq!(
                files_to_delete(&files, today, &retention),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn append_writes_ts_first_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), ROOMY).unwrap();
        let now = at("2025-03-10T08:09:10.123456Z");
        let decision = Decision {
            event: "decision",
            request_id: "r1",
            score: 0.5,
        };
        append_at(&mut log, now, &decision).unwrap();
        append_at(&mut log, now, &json!({"event": "door", "state": "locked"})).unwrap();
        let lines = read_lines(&log.file_path(day("2025-03-10")));
        assert_eq!(
            lines[0],
            r#"{"ts":"2025-03-10T08:09:10.123Z","event":"decision","request_id":"r1","score":0.5}"#
        );
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["ts"], "2025-03-10T08:09:10.123Z");
        assert_eq!(second["state"], "locked");
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn append_switches_file_when_the_utc_day_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), ROOMY).unwrap();
        append_at(&mut log, at("2025-03-10T23:59:59.999Z"), &json!({"n": 1})).unwrap();
        append_at(&mut log, at("2025-03-11T00:00:00.000Z"), &json!({"n": 2})).unwrap();
        assert_eq!(read_lines(&log.file_path(day("2025-03-10"))).len(), 1);
        assert_eq!(read_lines(&log.file_path(day("2025-03-11"))).len(), 1);
    }

    #[test]
    fn non_object_record_is_an_error_not_a_panic() {
        for record in [json!(42), json!("text")] {
            assert!(matches!(
                stamp_line(Utc::now(), &record),
                Err(AuditError::Serialize(_))
            ));
        }
    }

    #[test]
    fn concurrent_records_through_the_writer_stay_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, thread) = AuditWriter::start(dir.path().to_owned(), settings(ROOMY)).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let writer = writer.clone();
                scope.spawn(move || {
                    for n in 0..250 {
                        let padding = "x".repeat(300);
                        writer.record(&json!({"thread": thread, "n": n, "padding": padding}));
                    }
                });
            }
        });
        assert!(thread.finish(Duration::from_secs(30)));
        let mut lines = Vec::new();
        for entry in fs::read_dir(dir.path()).unwrap() {
            lines.extend(read_lines(&entry.unwrap().path()));
        }
        let counters = writer.counters();
        let dropped = counters.dropped.load(Ordering::Relaxed);
        assert_eq!(lines.len() as u64 + dropped, 1000);
        assert_eq!(counters.failed.load(Ordering::Relaxed), 0);
        for line in lines {
            let record: Value = serde_json::from_str(&line).unwrap();
            assert!(record["ts"].is_string());
            assert!(record["n"].is_u64());
        }
    }

    /// Regression: today's audit file on a hung disk kept the daemon from starting at all. A FIFO
    /// nobody reads is a file whose open never returns.
    #[test]
    fn a_hung_audit_file_blocks_neither_start_nor_record() {
        let dir = tempfile::tempdir().unwrap();
        let today = dir.path().join(file_name(Utc::now().date_naive()));
        crate::stuck_file::make(&today);
        let started = Instant::now();
        let (writer, thread) = AuditWriter::start(dir.path().to_owned(), settings(ROOMY)).unwrap();
        for n in 0..(KEPT_QUEUE + 100) {
            writer.record(&json!({ "n": n }));
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "recording waited on the disk"
        );
        assert!(writer.counters().dropped.load(Ordering::Relaxed) >= 100);
        assert!(!thread.finish(Duration::from_millis(100)));
    }

    #[test]
    fn open_fails_with_guidance_when_the_directory_cannot_exist() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-directory");
        fs::write(&blocker, b"").unwrap();
        let error = AuditLog::open(blocker.join("audit"), ROOMY).err().unwrap();
        assert!(matches!(error, AuditError::CreateDir { .. }));
        assert!(error.to_string().contains("facegate user"), "{error}");
    }

    #[test]
    fn append_after_the_directory_vanished_returns_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let audit_dir = dir.path().join("audit");
        let mut log = AuditLog::open(&audit_dir, ROOMY).unwrap();
        fs::remove_dir_all(&audit_dir).unwrap();
        let tomorrow = Utc::now() + chrono::Duration::days(1);
        assert!(matches!(
            append_at(&mut log, tomorrow, &json!({"n": 1})),
            Err(AuditError::Open { .. })
        ));
    }

    #[test]
    fn enforce_retention_deletes_old_day_files_and_keeps_today_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let retention = AuditRetention {
            max_age_days: 2,
            max_total_bytes: u64::MAX,
        };
        let log = AuditLog::open(dir.path(), retention).unwrap();
        let now = Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0).unwrap();
        for (date, text) in [
            ("2025-03-01", "old"),
            ("2025-03-08", "kept"),
            ("2025-03-10", "today"),
        ] {
            fs::write(log.file_path(day(date)), text).unwrap();
        }
        fs::write(dir.path().join("notes.txt"), "unrelated").unwrap();
        assert_eq!(log.enforce_retention(now).unwrap(), 1);
        assert!(!log.file_path(day("2025-03-01")).exists());
        assert!(log.file_path(day("2025-03-08")).exists());
        assert!(log.file_path(day("2025-03-10")).exists());
        assert!(dir.path().join("notes.txt").exists());
    }

    #[test]
    fn file_names_round_trip() {
        let d = day("2025-12-31");
        assert_eq!(file_name(d), "audit-2025-12-31.jsonl");
        assert_eq!(parse_file_name(&file_name(d)), Some((d, Priority::Kept)));
        assert_eq!(bulk_file_name(d), "audit-2025-12-31.bulk.jsonl");
        assert_eq!(
            parse_file_name(&bulk_file_name(d)),
            Some((d, Priority::Bulk))
        );
        for other in [
            "audit-2025-12-31.json",
            "audit-2025-13-01.jsonl",
            "x-2025-12-31.jsonl",
            "audit-2025-12-31.other.jsonl",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn todays_files_are_capped_bulk_at_a_quarter_kept_at_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let retention = AuditRetention {
            max_age_days: 30,
            max_total_bytes: 400,
        };
        let mut log = AuditLog::open(dir.path(), retention).unwrap();
        let today = Utc::now().date_naive();
        let line = format!("{}\n", "x".repeat(49));
        let written = |log: &mut AuditLog, priority| {
            (0..20)
                .filter(|_| log.append(today, priority, &line).is_ok())
                .count()
        };
        assert_eq!(written(&mut log, Priority::Bulk), 2, "100 bytes of bulk");
        assert_eq!(written(&mut log, Priority::Kept), 8, "400 bytes kept");
        assert!(matches!(
            log.append(today, Priority::Kept, &line),
            Err(NotWritten::Full)
        ));
    }

    /// Regression: retention ran only when the writer's queue was empty, so a steady stream of lines
    /// kept it from ever running.
    #[test]
    fn retention_runs_on_its_schedule_while_lines_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let retention = AuditRetention {
            max_age_days: 1,
            max_total_bytes: u64::MAX,
        };
        let counters = AuditCounters::default();
        let mut writer = Writer::new(dir.path().to_owned(), settings(retention), &counters);
        writer.log = Some(AuditLog::open(dir.path(), retention).unwrap());
        let old = dir.path().join(file_name(day("2000-01-01")));
        fs::write(&old, "{}\n").unwrap();
        writer.next_retention = Instant::now();
        let (kept, kept_queue) = crossbeam_channel::bounded(4);
        let (_bulk, bulk_queue) = crossbeam_channel::bounded(4);
        for _ in 0..3 {
            let line = stamp_line(Utc::now(), &json!({"n": 1})).unwrap();
            let day = Utc::now().date_naive();
            kept.send(Message::Line { day, line }).unwrap();
        }
        kept.send(Message::Stop).unwrap();
        writer.run(&kept_queue, bulk_queue);
        assert!(!old.exists(), "retention waited for an empty queue");
    }

    #[test]
    fn counted_requests_become_one_summary_line_in_the_bulk_file() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, thread) = AuditWriter::start(dir.path().to_owned(), settings(ROOMY)).unwrap();
        let remote = Some("10.0.0.9".parse().unwrap());
        for n in 0..500 {
            writer.count(Tally::Refused, remote, "unauthorized", &format!("r{n}"));
        }
        writer.record(&json!({"kind": "decision", "request_id": "g1"}));
        assert!(thread.finish(Duration::from_secs(30)));
        let today = Utc::now().date_naive();
        let bulk = read_lines(&dir.path().join(bulk_file_name(today)));
        let kept = read_lines(&dir.path().join(file_name(today)));
        assert_eq!(kept.len(), 1, "{kept:?}");
        let dropped = writer.counters().dropped.load(Ordering::Relaxed);
        assert_eq!(bulk.len(), 1, "{bulk:?}");
        let summary: Value = serde_json::from_str(&bulk[0]).unwrap();
        assert_eq!(summary["kind"], "refused_summary");
        assert_eq!(summary["count"].as_u64().unwrap() + dropped, 500);
    }
}
