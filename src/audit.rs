//! Append-only audit trail of decisions and door actuations: one JSON line per event in one file
//! per UTC day, bounded by age and total size, so an operator can answer "who opened the door when".
//! One writer thread owns the files; everyone else queues lines without blocking.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::ratelimit::RateLimitedLog;

const FILE_PREFIX: &str = "audit-";
const FILE_SUFFIX: &str = ".jsonl";

/// How much audit history to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Day files more than this many days before today are deleted (0 keeps only today).
    pub max_age_days: u32,
    /// Oldest day files are deleted until all files together fit; today's file is always kept.
    pub max_total_bytes: u64,
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
}

/// The audit files on disk. Only the [`AuditWriter`] thread touches them in the daemon.
pub(crate) struct AuditLog {
    dir: PathBuf,
    retention: AuditRetention,
    current: Option<DayFile>,
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
            current: None,
        };
        let now = Utc::now();
        log.current = Some(log.open_day(now.date_naive())?);
        if let Err(error) = log.enforce_retention(now) {
            log::warn!("audit retention at start-up: {error}");
        }
        Ok(log)
    }

    /// The file holding the records of `day` (UTC).
    pub(crate) fn file_path(&self, day: NaiveDate) -> PathBuf {
        self.dir.join(file_name(day))
    }

    /// Appends one stamped line (see [`stamp_line`]) to the file of `day`.
    pub(crate) fn write_line(&mut self, day: NaiveDate, line: &str) -> Result<(), AuditError> {
        let mut open = match self.current.take() {
            Some(open) if open.day == day => open,
            _ => self.open_day(day)?,
        };
        // One write of the whole line on an O_APPEND file: no interleaving, no buffering. After a
        // failure the handle is dropped so the next line reopens (the file may have vanished).
        open.file
            .write_all(line.as_bytes())
            .map_err(|source| AuditError::Write {
                path: self.file_path(day),
                cause: source,
            })?;
        self.current = Some(open);
        Ok(())
    }
    /// Deletes day files older than `max_age_days`, then the oldest files until the total size
    /// fits `max_total_bytes`; never today's file (UTC day of `now`). Returns how many files were
    /// deleted; on errors, keeps going and returns the first one.
    pub(crate) fn enforce_retention(&self, now: DateTime<Utc>) -> Result<usize, AuditError> {
        let list_error = |source| AuditError::List {
            path: self.dir.clone(),
            cause: source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let Some(day) = entry.file_name().to_str().and_then(parse_file_name) else {
                continue;
            };
            let metadata = entry.metadata().map_err(list_error)?;
            if metadata.is_file() {
                files.push((day, metadata.len()));
            }
        }
        let mut deleted = 0;
        let mut first_error = None;
        for day in files_to_delete(&files, now.date_naive(), &self.retention) {
            let path = self.file_path(day);
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

    fn open_day(&self, day: NaiveDate) -> Result<DayFile, AuditError> {
        let path = self.file_path(day);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| AuditError::Open {
                path,
                cause: source,
            })?;
        Ok(DayFile { day, file })
    }
}

/// Lines waiting for the audit writer thread; more are dropped and counted.
const AUDIT_QUEUE: usize = 1024;
/// After the audit log failed to open, lines are counted as failed until the next try.
const REOPEN_INTERVAL: Duration = Duration::from_secs(10);
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

enum Message {
    Line { day: NaiveDate, line: String },
    Stop,
}

/// What became of the lines handed to an [`AuditWriter`], for /metrics.
#[derive(Debug, Default)]
pub(crate) struct AuditCounters {
    /// Lines dropped because the queue was full (the disk is slower than the decisions).
    pub dropped: AtomicU64,
    /// Lines that could not be written (the log could not be opened, or the write failed).
    pub failed: AtomicU64,
}

/// The one place audit lines are written from: callers stamp and queue a line with
/// [`AuditWriter::record`], which never blocks; the `audit-writer` thread opens the log (so a hung
/// audit disk cannot hold up start-up), writes the lines in order and applies the retention.
/// Cloneable; every clone feeds the same thread.
#[derive(Clone)]
pub struct AuditWriter {
    lines: Sender<Message>,
    counters: Arc<AuditCounters>,
}

/// The `audit-writer` thread, to let it finish the queued lines at shutdown.
pub struct AuditWriterThread {
    lines: Sender<Message>,
    /// Disconnects when the thread ends.
    done: Receiver<()>,
}

impl AuditWriter {
    /// Starts the `audit-writer` thread for the log in `dir`. Returns at once; opening the log and
    /// every later disk error happen on that thread and are logged (rate-limited) and counted.
    pub fn start(
        dir: PathBuf,
        retention: AuditRetention,
    ) -> std::io::Result<(AuditWriter, AuditWriterThread)> {
        let (lines, queue) = crossbeam_channel::bounded(AUDIT_QUEUE);
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let counters = Arc::new(AuditCounters::default());
        let thread_counters = Arc::clone(&counters);
        thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || {
                let _done = done_tx;
                write_lines(&dir, retention, &queue, &thread_counters);
            })?;
        Ok((
            AuditWriter {
                lines: lines.clone(),
                counters,
            },
            AuditWriterThread { lines, done },
        ))
    }

    /// Stamps `record` (a struct or map) with the current time and queues it; never blocks. A
    /// full queue drops the line and counts it.
    pub fn record<T: Serialize>(&self, record: &T) {
        let now = Utc::now();
        match stamp_line(now, record) {
            Ok(line) => {
                let message = Message::Line {
                    day: now.date_naive(),
                    line,
                };
                if self.lines.try_send(message).is_err() {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                log::error!("audit line not written: {error}");
            }
        }
    }

    /// Dropped and failed line counts.
    pub(crate) fn counters(&self) -> Arc<AuditCounters> {
        Arc::clone(&self.counters)
    }
}

impl AuditWriterThread {
    /// Lets the writer finish the lines queued so far, waiting at most `limit` (a hung disk must
    /// not stop a shutdown). Returns whether it finished.
    pub(crate) fn finish(self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        if self.lines.send_timeout(Message::Stop, limit).is_err() {
            return false;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        self.done.recv_timeout(remaining) != Err(RecvTimeoutError::Timeout)
    }
}

/// The `audit-writer` thread's loop: open (retrying every [`REOPEN_INTERVAL`]), write, prune.
fn write_lines(
    dir: &Path,
    retention: AuditRetention,
    queue: &Receiver<Message>,
    counters: &AuditCounters,
) {
    let errors = RateLimitedLog::new(ERROR_LOG_INTERVAL);
    let mut log = None;
    let mut next_open = Instant::now();
    let mut next_retention = Instant::now() + RETENTION_INTERVAL;
    loop {
        if log.is_none() && Instant::now() >= next_open {
            match AuditLog::open(dir, retention) {
                Ok(opened) => log = Some(opened),
                Err(error) => {
                    errors.error(format!("audit lines are not written: {error}"));
                    next_open = Instant::now() + REOPEN_INTERVAL;
                }
            }
        }
        let wait = next_retention.saturating_duration_since(Instant::now());
        match queue.recv_timeout(wait) {
            Ok(Message::Line { day, line }) => {
                // Without an open log the line fails silently: opening already said why.
                let written = log.as_mut().map(|log| log.write_line(day, &line));
                if !matches!(written, Some(Ok(()))) {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(Err(error)) = written {
                    errors.error(format!("audit line not written: {error}"));
                }
            }
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                next_retention = Instant::now() + RETENTION_INTERVAL;
                if let Some(Err(error)) = log.as_ref().map(|log| log.enforce_retention(Utc::now()))
                {
                    errors.error(format!("audit retention failed: {error}"));
                }
            }
        }
    }
}

/// The name of the file holding the records of `day` (UTC).
pub fn file_name(day: NaiveDate) -> String {
    format!("{FILE_PREFIX}{}{FILE_SUFFIX}", day.format("%Y-%m-%d"))
}

/// The day of an `audit-YYYY-MM-DD.jsonl` file name; `None` for any other name.
fn parse_file_name(name: &str) -> Option<NaiveDate> {
    let date = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()
}

/// Chooses which day files to delete, oldest first: every file more than `max_age_days` before
/// `today`, then the oldest remaining until the total of `(day, bytes)` fits `max_total_bytes`.
/// Today's file is never chosen.
pub(crate) fn files_to_delete(
    files: &[(NaiveDate, u64)],
    today: NaiveDate,
    retention: &AuditRetention,
) -> Vec<NaiveDate> {
    let mut files = files.to_vec();
    files.sort_unstable();
    let too_old = |day: NaiveDate| (today - day).num_days() > i64::from(retention.max_age_days);
    let mut total: u64 = files.iter().map(|&(_, bytes)| bytes).sum();
    let mut doomed = Vec::new();
    for &(day, bytes) in &files {
        if day != today && (too_old(day) || total > retention.max_total_bytes) {
            doomed.push(day);
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

    const ROOMY: AuditRetention = AuditRetention {
        max_age_days: 30,
        max_total_bytes: u64::MAX,
    };

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

    /// (name, files as (day, bytes), retention, expected deletions oldest first)
    type Case = (
        &'static str,
        Vec<(&'static str, u64)>,
        AuditRetention,
        Vec<&'static str>,
    );

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
        ];
        for (name, files, retention, expected) in table {
            let files: Vec<_> = files.iter().map(|&(d, b)| (day(d), b)).collect();
            let expected: Vec<_> = expected.into_iter().map(day).collect();
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
        let (writer, thread) = AuditWriter::start(dir.path().to_owned(), ROOMY).unwrap();
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
        let fifo = std::ffi::CString::new(today.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path and a plain mode.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let started = Instant::now();
        let (writer, thread) = AuditWriter::start(dir.path().to_owned(), ROOMY).unwrap();
        for n in 0..(AUDIT_QUEUE + 100) {
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
        assert_eq!(parse_file_name(&file_name(d)), Some(d));
        for other in [
            "audit-2025-12-31.json",
            "audit-2025-13-01.jsonl",
            "x-2025-12-31.jsonl",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }
}
