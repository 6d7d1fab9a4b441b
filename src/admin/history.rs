//! The admin's view of what happened: audit lines read back from the day files (filtered, newest
//! first, bounded), today's counts, the relay's actuations, CSV export, and the snapshot files of one
//! request, found by its validated id in paths we build.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Days, NaiveDate, Utc};
use serde_json::Value;

use crate::audit;
use crate::snapshots;

/// At most this many matching lines are kept for one view or export.
pub const MAX_ENTRIES: usize = 20_000;
/// The longest date range one query reads.
pub const MAX_DAYS: u64 = 366;

/// One audit line as the pages show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub ts: DateTime<Utc>,
    pub kind: String,
    /// `image`, `code` or `save` for the tablet's requests.
    pub endpoint: Option<String>,
    pub request_id: String,
    /// The decision's status, a refused request's error, a snapshot's reason or an admin's action.
    pub status: String,
    pub identity: Option<String>,
    pub score: Option<f64>,
    pub door: Option<String>,
    pub frame_id: Option<String>,
    pub remote: Option<String>,
    /// The relay state of a `door` line.
    pub state: Option<String>,
    /// What asked for the door on a `door` line (`face`, `code`, `admin`).
    pub by: Option<String>,
    pub error: Option<String>,
}

fn text(record: &Value, key: &str) -> Option<String> {
    record[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl Entry {
    fn from_record(record: &Value) -> Option<Entry> {
        let ts = DateTime::parse_from_rfc3339(record["ts"].as_str()?)
            .ok()?
            .with_timezone(&Utc);
        let kind = text(record, "kind")?;
        // A door line's status is why the relay moved; its error is shown beside it.
        // A refused request's status is `error`; its error name says more.
        let keys: &[&str] = match kind.as_str() {
            "door" => &["reason"],
            // The door contact's and exit button's events: forced, held, opened, exit, ...
            "door_input" => &["event"],
            "rejected" => &["error", "status"],
            _ => &["status", "error", "reason", "action"],
        };
        let status = keys
            .iter()
            .find_map(|key| text(record, key))
            .unwrap_or_else(|| kind.clone());
        Some(Entry {
            ts,
            request_id: text(record, "request_id").unwrap_or_default(),
            endpoint: text(record, "endpoint"),
            status,
            identity: text(record, "identity"),
            score: record["score"].as_f64(),
            door: text(record, "door"),
            frame_id: text(record, "frame_id"),
            remote: text(record, "remote"),
            state: text(record, "state"),
            by: text(record, "by"),
            error: text(record, "error"),
            kind,
        })
    }
}

/// Which kinds of audit line a view reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kinds {
    /// Everything but the relay's own reports: decisions, refused requests, snapshots, admin actions.
    Requests,
    /// Decisions on faces and visitor codes only.
    Decisions,
    /// Relay actuations only.
    Door,
}

impl Kinds {
    fn include(self, kind: &str) -> bool {
        match self {
            // Frames answered `paused` while the door is open are many and say nothing new.
            Kinds::Requests => !matches!(kind, "door" | "door_request" | "paused"),
            Kinds::Decisions => kind == "decision",
            Kinds::Door => kind == "door",
        }
    }
}

/// Which lines a view wants. Dates are local days in `zone` (the config's `timezone`), both ends
/// included; the audit files are per UTC day, so a local day may span two of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub kinds: Kinds,
    pub status: Option<String>,
    pub person: Option<String>,
    pub zone: jiff::tz::TimeZone,
}

impl Filter {
    pub fn days(from: NaiveDate, to: NaiveDate, kinds: Kinds) -> Filter {
        Filter {
            from,
            to,
            kinds,
            status: None,
            person: None,
            zone: jiff::tz::TimeZone::UTC,
        }
    }

    /// The same filter over local days in `zone`.
    pub fn in_zone(self, zone: jiff::tz::TimeZone) -> Filter {
        Filter { zone, ..self }
    }

    fn wants(&self, entry: &Entry) -> bool {
        let day = local(&entry.ts, &self.zone).date();
        self.kinds.include(&entry.kind)
            && day >= self.from
            && day <= self.to
            && self.status.as_ref().is_none_or(|s| entry.status == *s)
            && self.person.as_ref().is_none_or(|p| {
                entry
                    .identity
                    .as_ref()
                    .is_some_and(|i| i.eq_ignore_ascii_case(p))
            })
    }
}

/// An audit time as wall-clock time in `zone`, for the admin's dates and times.
pub fn local(ts: &DateTime<Utc>, zone: &jiff::tz::TimeZone) -> chrono::NaiveDateTime {
    let civil = jiff::Timestamp::from_millisecond(ts.timestamp_millis())
        .map(|at| at.to_zoned(zone.clone()).datetime())
        .unwrap_or_default();
    crate::permission::chrono_date(civil.date())
        .and_hms_milli_opt(
            u32::from(civil.hour() as u8),
            u32::from(civil.minute() as u8),
            u32::from(civil.second() as u8),
            (civil.subsec_nanosecond() / 1_000_000) as u32,
        )
        .unwrap_or_default()
}

/// Matching lines, newest first, at most `limit`; `true` when more matched. Only the newest `limit`
/// of a day are kept while it is read: a day of an idle kiosk's `no_face` lines is ~170,000.
pub fn read(audit_dir: &Path, filter: &Filter, limit: usize) -> (Vec<Entry>, bool) {
    let mut found = Vec::new();
    let mut more = false;
    for path in day_files(audit_dir, filter) {
        let wanted = limit - found.len();
        // One more than wanted tells whether more matched.
        let mut newest = VecDeque::with_capacity(wanted.min(1024) + 1);
        for_each_entry(&path, filter, |entry| {
            if newest.len() > wanted {
                newest.pop_front();
            }
            newest.push_back(entry);
        });
        if newest.len() > wanted {
            newest.pop_front();
            more = true;
        }
        found.extend(newest.into_iter().rev());
        if more {
            break;
        }
    }
    (found, more)
}

/// How many matching lines there are of each outcome, every one counted and none kept.
pub fn count_matching(audit_dir: &Path, filter: &Filter) -> Counts {
    let mut counts = Counts::default();
    for path in day_files(audit_dir, filter) {
        for_each_entry(&path, filter, |entry| counts.add(&entry));
    }
    counts
}

/// The UTC day files that hold the local days `filter` asks for (one more on each side), newest
/// first, at most `MAX_DAYS` of them.
fn day_files(audit_dir: &Path, filter: &Filter) -> Vec<PathBuf> {
    let earliest = filter.to.checked_sub_days(Days::new(MAX_DAYS - 1));
    let first = earliest.map_or(filter.from, |earliest| filter.from.max(earliest));
    let first = first.pred_opt().unwrap_or(first);
    let mut day = filter.to.succ_opt().unwrap_or(filter.to);
    let mut files = Vec::new();
    while day >= first {
        files.push(audit_dir.join(audit::file_name(day)));
        let Some(previous) = day.pred_opt() else {
            break;
        };
        day = previous;
    }
    files
}

/// Hands each matching line of the day file at `path` to `found`, oldest first.
fn for_each_entry(path: &Path, filter: &Filter, mut found: impl FnMut(Entry)) {
    let Ok(file) = File::open(path) else {
        return;
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter_map(|record| Entry::from_record(&record))
        .filter(|entry| filter.wants(entry))
        .for_each(&mut found);
}

/// Today's decisions by outcome; `codes` counts visitor codes that opened the door, `not_allowed`
/// people (or codes) refused for their dates, hours or suspension.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub granted: usize,
    pub unknown: usize,
    pub spoof: usize,
    pub codes: usize,
    pub not_allowed: usize,
    pub other: usize,
}

impl Counts {
    fn add(&mut self, entry: &Entry) {
        match (entry.endpoint.as_deref(), entry.status.as_str()) {
            (Some("code"), "granted") => self.codes += 1,
            (_, "granted") => self.granted += 1,
            (_, "unknown") => self.unknown += 1,
            (_, "spoof") => self.spoof += 1,
            (_, "not_allowed") => self.not_allowed += 1,
            _ => self.other += 1,
        }
    }
}

/// A CSV cell: quoted when needed; text that a spreadsheet would run as a formula is defused.
fn cell(value: &str) -> String {
    let defused = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

pub fn csv(entries: &[Entry]) -> String {
    let mut out = String::from("ts,request_id,kind,status,identity,score,door,frame_id,remote\r\n");
    for e in entries {
        let fields = [
            e.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            cell(&e.request_id),
            cell(&e.kind),
            cell(&e.status),
            cell(e.identity.as_deref().unwrap_or("")),
            e.score.map_or(String::new(), |s| s.to_string()),
            cell(e.door.as_deref().unwrap_or("")),
            cell(e.frame_id.as_deref().unwrap_or("")),
            cell(e.remote.as_deref().unwrap_or("")),
        ];
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

/// The stored files of one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotFiles {
    pub image: PathBuf,
    pub content_type: &'static str,
    pub sidecar: PathBuf,
}

/// The snapshot named `id`, if stored. The id must be a request id (`YYYYMMDDTHHMMSSmmm-xxxx`, the
/// snapshot store's characters); the day directories are the id's UTC day and the next one (a
/// snapshot is written just after its request). No part of a path comes from the request unchecked.
pub fn snapshot(snapshot_dir: &Path, id: &str) -> Option<SnapshotFiles> {
    snapshots::validate_id(id).ok()?;
    let day = NaiveDate::parse_from_str(id.get(..8)?, "%Y%m%d").ok()?;
    [Some(day), day.succ_opt()]
        .into_iter()
        .flatten()
        .find_map(|day| {
            let dir = snapshot_dir.join(day.format("%Y-%m-%d").to_string());
            let sidecar = dir.join(format!("{id}.json"));
            if !sidecar.is_file() {
                return None;
            }
            [
                ("jpg", "image/jpeg"),
                ("png", "image/png"),
                ("bin", "application/octet-stream"),
            ]
            .into_iter()
            .map(|(ext, content_type)| (dir.join(format!("{id}.{ext}")), content_type))
            .find(|(image, _)| image.is_file())
            .map(|(image, content_type)| SnapshotFiles {
                image,
                content_type,
                sidecar: sidecar.clone(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn write_day(dir: &Path, date: &str, lines: &[&str]) {
        let mut file = File::create(dir.join(format!("audit-{date}.jsonl"))).unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
    }

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_day(
            dir.path(),
            "2026-03-01",
            &[
                r#"{"ts":"2026-03-01T08:00:00.000Z","kind":"decision","request_id":"a1","status":"granted","identity":"Ann","score":0.71,"door":"opened"}"#,
                r#"{"ts":"2026-03-01T08:00:00.100Z","kind":"door","request_id":"a1","identity":"Ann","state":"unlocked","reason":"granted"}"#,
                r#"{"ts":"2026-03-01T09:00:00.000Z","kind":"decision","request_id":"a2","status":"unknown","remote":"10.0.0.9"}"#,
                "not json",
            ],
        );
        write_day(
            dir.path(),
            "2026-03-02",
            &[
                r#"{"ts":"2026-03-02T10:00:00.000Z","kind":"rejected","request_id":"b1","error":"bad_image","http":422}"#,
                r#"{"ts":"2026-03-02T11:00:00.000Z","kind":"decision","request_id":"b2","status":"granted","identity":"=cmd","score":0.8}"#,
                r#"{"ts":"2026-03-02T11:30:00.000Z","kind":"decision","endpoint":"code","request_id":"b3","status":"granted"}"#,
                r#"{"ts":"2026-03-02T11:31:00.000Z","kind":"paused","request_id":"b4","status":"paused"}"#,
            ],
        );
        dir
    }

    #[test]
    fn lines_come_newest_first_filtered_and_bounded() {
        let dir = fixture();
        let all = Filter::days(day("2026-03-01"), day("2026-03-02"), Kinds::Requests);
        let (entries, more) = read(dir.path(), &all, 100);
        let ids: Vec<&str> = entries.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(
            ids,
            ["b3", "b2", "b1", "a2", "a1"],
            "paused frames are left out"
        );
        assert!(!more);
        assert_eq!(entries[2].status, "bad_image");
        let (first_two, more) = read(dir.path(), &all, 2);
        assert_eq!(first_two.len(), 2);
        assert_eq!(first_two[0].endpoint.as_deref(), Some("code"));
        assert!(more);
        let granted_ann = Filter {
            status: Some("granted".into()),
            person: Some("ann".into()),
            ..all.clone()
        };
        let (entries, _) = read(dir.path(), &granted_ann, 100);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].request_id, "a1");
        let one_day = Filter::days(day("2026-03-02"), day("2026-03-02"), Kinds::Requests);
        assert_eq!(read(dir.path(), &one_day, 100).0.len(), 3);
        let door = Filter {
            kinds: Kinds::Door,
            ..all.clone()
        };
        let (lines, _) = read(dir.path(), &door, 100);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].state.as_deref(), Some("unlocked"));
        assert_eq!(lines[0].status, "granted");
        let decisions = Filter {
            kinds: Kinds::Decisions,
            ..all
        };
        assert_eq!(read(dir.path(), &decisions, 100).0.len(), 4);
    }

    #[test]
    fn a_door_input_line_shows_its_event_and_what_unlocked() {
        let line = r#"{"ts":"2026-03-01T08:00:01.000Z","kind":"door_input","event":"opened","request_id":"exit-1","by":"exit","contact":"open"}"#;
        let entry = Entry::from_record(&serde_json::from_str(line).unwrap()).unwrap();
        assert_eq!(
            (entry.status.as_str(), entry.by.as_deref()),
            ("opened", Some("exit"))
        );
    }

    #[test]
    fn counts_sort_decisions_by_outcome() {
        let dir = fixture();
        let all = Filter::days(day("2026-03-01"), day("2026-03-02"), Kinds::Decisions);
        let counts = count_matching(dir.path(), &all);
        assert_eq!((counts.granted, counts.unknown, counts.codes), (2, 1, 1));
    }

    /// Regression: the dashboard counted today's decisions from the newest 20,000 read back, so an
    /// idle kiosk's `no_face` lines (~170,000 a day) pushed the morning's grants out of "today", and
    /// a day was read whole into memory before the newest were kept.
    #[test]
    fn a_busy_day_is_counted_whole_and_read_back_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = vec![
            r#"{"ts":"2026-03-02T00:10:00.000Z","kind":"decision","request_id":"morning","status":"granted"}"#.to_string(),
        ];
        lines.extend((0..25_000).map(|n| {
            format!(
                r#"{{"ts":"2026-03-02T01:00:00.000Z","kind":"decision","request_id":"idle-{n}","status":"no_face"}}"#
            )
        }));
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        write_day(dir.path(), "2026-03-02", &lines);
        let today = Filter::days(day("2026-03-02"), day("2026-03-02"), Kinds::Decisions);
        let counts = count_matching(dir.path(), &today);
        assert_eq!((counts.granted, counts.other), (1, 25_000));
        let (newest, more) = read(dir.path(), &today, 3);
        let ids: Vec<&str> = newest.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(
            (ids, more),
            (vec!["idle-24999", "idle-24998", "idle-24997"], true)
        );
        let (all, more) = read(dir.path(), &today, 30_000);
        assert_eq!(
            (all.len(), all.last().map(|e| e.request_id.as_str()), more),
            (25_001, Some("morning"), false)
        );
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let dir = fixture();
        let one_day = Filter::days(day("2026-03-02"), day("2026-03-02"), Kinds::Requests);
        let (entries, _) = read(dir.path(), &one_day, 100);
        let text = csv(&entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ts,request_id,kind,status,identity,score,door,frame_id,remote"
        );
        assert_eq!(
            lines[2],
            "2026-03-02T11:00:00.000Z,b2,decision,granted,'=cmd,0.8,,,"
        );
        assert_eq!(cell("a,\"b\""), "\"a,\"\"b\"\"\"");
    }

    #[test]
    fn snapshots_are_found_only_by_a_valid_id_in_our_own_paths() {
        let dir = tempfile::tempdir().unwrap();
        let id = "20260301T235959999-00ff";
        let next_day = dir.path().join("2026-03-02");
        std::fs::create_dir_all(&next_day).unwrap();
        std::fs::write(next_day.join(format!("{id}.png")), b"png").unwrap();
        std::fs::write(next_day.join(format!("{id}.json")), b"{}").unwrap();
        let found = snapshot(dir.path(), id).unwrap();
        assert_eq!(found.content_type, "image/png");
        assert_eq!(found.image, next_day.join(format!("{id}.png")));
        for bad in [
            "../2026-03-02/x",
            "20260301T235959999-00ff/..",
            "",
            "x",
            "20261399T000000000-0000",
        ] {
            assert_eq!(snapshot(dir.path(), bad), None, "{bad}");
        }
    }

    #[test]
    fn local_days_in_the_configured_zone_span_two_utc_files() {
        let dir = tempfile::tempdir().unwrap();
        // 2026-03-02 in Seoul (UTC+9) runs from 03-01T15:00Z to 03-02T15:00Z.
        write_day(
            dir.path(),
            "2026-03-01",
            &[
                r#"{"ts":"2026-03-01T14:59:59.000Z","kind":"decision","request_id":"before","status":"granted"}"#,
                r#"{"ts":"2026-03-01T15:00:00.000Z","kind":"decision","request_id":"first","status":"not_allowed"}"#,
            ],
        );
        write_day(
            dir.path(),
            "2026-03-02",
            &[
                r#"{"ts":"2026-03-02T14:59:59.000Z","kind":"decision","request_id":"last","status":"granted"}"#,
                r#"{"ts":"2026-03-02T15:00:00.000Z","kind":"decision","request_id":"after","status":"granted"}"#,
            ],
        );
        let seoul = jiff::tz::TimeZone::get("Asia/Seoul").unwrap();
        let filter = Filter::days(day("2026-03-02"), day("2026-03-02"), Kinds::Decisions)
            .in_zone(seoul.clone());
        let (entries, more) = read(dir.path(), &filter, 10);
        let ids: Vec<&str> = entries.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!((ids, more), (vec!["last", "first"], false));
        assert_eq!(count_matching(dir.path(), &filter).not_allowed, 1);
        let shown = local(&entries[1].ts, &seoul);
        assert_eq!(shown.to_string(), "2026-03-02 00:00:00");
    }
}
