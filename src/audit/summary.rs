//! Lines that would flood the audit if written one per request: refused requests (no credential, a
//! head or body the front will not take) and frames answered `paused`. Each is counted here instead,
//! and once per interval one summary line per client address says how many there were, of which
//! kinds, and the first and last request ids. Bounded: past `capacity` addresses in one interval, the
//! rest are counted together under `other`. Pure: the clock is passed in.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

/// Addresses with a summary of their own in one interval; the rest share `other`.
pub(crate) const MAX_SUMMARISED_ADDRESSES: usize = 256;

/// What a summary counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tally {
    /// A request refused before it reached a worker (no credential, bad head, body refused).
    Refused,
    /// A frame answered `paused` while the door was open or cooling down.
    Paused,
}

impl Tally {
    /// The summary line's `kind`.
    pub fn kind(self) -> &'static str {
        match self {
            Tally::Refused => "refused_summary",
            Tally::Paused => "paused_summary",
        }
    }
}

/// One counted request, as the summariser gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub tally: Tally,
    pub remote: Option<IpAddr>,
    /// The refusal's error (`unauthorized`, ...) or the endpoint (`image`): what `by` counts.
    pub label: &'static str,
    pub request_id: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug)]
struct Entry {
    count: u64,
    first_id: String,
    last_id: String,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    by: BTreeMap<&'static str, u64>,
}

/// The counts of the current interval.
#[derive(Debug)]
pub(crate) struct Summaries {
    interval: Duration,
    capacity: usize,
    /// When the current interval began (its first count); `None` while nothing is counted.
    started: Option<Instant>,
    entries: BTreeMap<(Tally, String), Entry>,
}

impl Summaries {
    pub fn new(interval: Duration, capacity: usize) -> Summaries {
        Summaries {
            interval,
            capacity: capacity.max(1),
            started: None,
            entries: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, counted: Counted, now: Instant) {
        self.started.get_or_insert(now);
        let mut remote = counted
            .remote
            .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        if self.entries.len() >= self.capacity
            && !self.entries.contains_key(&(counted.tally, remote.clone()))
        {
            remote = "other".to_string();
        }
        let entry = self
            .entries
            .entry((counted.tally, remote))
            .or_insert_with(|| Entry {
                count: 0,
                first_id: counted.request_id.clone(),
                last_id: String::new(),
                first_at: counted.at,
                last_at: counted.at,
                by: BTreeMap::new(),
            });
        entry.count += 1;
        entry.last_id = counted.request_id;
        entry.last_at = counted.at;
        *entry.by.entry(counted.label).or_default() += 1;
    }

    /// When the current interval ends, if anything is counted.
    pub fn due(&self) -> Option<Instant> {
        self.started.map(|started| started + self.interval)
    }

    /// The summary lines of the interval (one per kind and address), emptying it.
    pub fn flush(&mut self) -> Vec<(Tally, Value)> {
        self.started = None;
        let stamp = |at: DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Millis, true);
        std::mem::take(&mut self.entries)
            .into_iter()
            .map(|((tally, remote), entry)| {
                let line = json!({
                    "kind": tally.kind(),
                    "remote": remote,
                    "count": entry.count,
                    "by": entry.by,
                    "first_request_id": entry.first_id,
                    "last_request_id": entry.last_id,
                    "from": stamp(entry.first_at),
                    "to": stamp(entry.last_at),
                });
                (tally, line)
            })
            .collect()
    }

    /// Due at `now`: the interval is over.
    pub fn is_due(&self, now: Instant) -> bool {
        self.due().is_some_and(|due| now >= due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(tally: Tally, remote: &str, label: &'static str, id: &str) -> Counted {
        Counted {
            tally,
            remote: Some(remote.parse().unwrap()),
            label,
            request_id: id.to_string(),
            at: DateTime::parse_from_rfc3339("2026-12-03T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn a_flood_becomes_one_line_per_address_and_kind_per_interval() {
        let start = Instant::now();
        let mut summaries = Summaries::new(Duration::from_secs(60), 8);
        assert_eq!(summaries.due(), None);
        for n in 0..20_000 {
            let id = format!("r{n}");
            summaries.add(
                counted(Tally::Refused, "10.0.0.9", "unauthorized", &id),
                start,
            );
        }
        summaries.add(
            counted(Tally::Refused, "10.0.0.9", "head_timeout", "r-x"),
            start,
        );
        summaries.add(counted(Tally::Paused, "10.0.0.2", "image", "p1"), start);
        summaries.add(counted(Tally::Paused, "10.0.0.2", "image", "p2"), start);
        assert!(!summaries.is_due(start + Duration::from_secs(59)));
        assert!(summaries.is_due(start + Duration::from_secs(60)));
        let lines = summaries.flush();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let (_, refused) = &lines[0];
        assert_eq!(refused["kind"], "refused_summary");
        assert_eq!(refused["remote"], "10.0.0.9");
        assert_eq!(refused["count"], 20_001);
        assert_eq!(refused["by"]["unauthorized"], 20_000);
        assert_eq!(refused["by"]["head_timeout"], 1);
        assert_eq!(
            (
                refused["first_request_id"].as_str(),
                refused["last_request_id"].as_str()
            ),
            (Some("r0"), Some("r-x"))
        );
        let (_, paused) = &lines[1];
        assert_eq!(
            (paused["kind"].as_str(), paused["count"].as_u64()),
            (Some("paused_summary"), Some(2))
        );
        assert_eq!(summaries.due(), None, "a flush starts a new interval");
        assert!(summaries.flush().is_empty());
    }

    #[test]
    fn rotating_addresses_share_one_other_line_past_the_bound() {
        let start = Instant::now();
        let mut summaries = Summaries::new(Duration::from_secs(60), 4);
        for n in 0..1000u32 {
            let address = std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string();
            summaries.add(
                counted(Tally::Refused, &address, "unauthorized", "r"),
                start,
            );
        }
        let lines = summaries.flush();
        assert_eq!(lines.len(), 5);
        let other = lines
            .iter()
            .find(|(_, line)| line["remote"] == "other")
            .unwrap();
        assert_eq!(other.1["count"], 996);
    }
}
