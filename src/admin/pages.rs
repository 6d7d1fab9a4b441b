//! The admin pages' view models: one askama template (compiled into the binary from
//! `src/admin/templates/`) per page, fed plain strings so the templates hold no logic.

use askama::Template;

/// What every page's frame needs: whether to show the menu, which item is current, the session's
/// CSRF token for its forms, and an optional notice.
pub struct Chrome {
    pub signed_in: bool,
    pub page: &'static str,
    pub csrf: String,
    pub notice: Option<Notice>,
}

pub struct Notice {
    /// `ok`, `bad` or `warn` (a CSS class).
    pub kind: &'static str,
    pub text: String,
}

impl Notice {
    pub fn ok(text: impl Into<String>) -> Option<Notice> {
        Some(Notice {
            kind: "ok",
            text: text.into(),
        })
    }

    pub fn bad(text: impl Into<String>) -> Option<Notice> {
        Some(Notice {
            kind: "bad",
            text: text.into(),
        })
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct Login {
    pub chrome: Chrome,
    pub password_set: bool,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct Message {
    pub chrome: Chrome,
    pub heading: String,
    pub text: String,
    pub back: String,
}

/// One row of a decisions table.
pub struct DecisionRow {
    pub thumbnail: Option<String>,
    pub date: String,
    pub time: String,
    pub status: String,
    /// CSS class of the status badge.
    pub badge: &'static str,
    pub person: String,
    pub score: String,
    pub door: String,
    pub request_id: String,
    pub has_snapshot: bool,
}

pub struct Counts {
    pub granted: usize,
    pub unknown: usize,
    pub spoof: usize,
    pub codes: usize,
    pub not_allowed: usize,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct Dashboard {
    pub chrome: Chrome,
    pub door_state: &'static str,
    pub door_available: bool,
    /// The door contact: `open`, `closed`, `unknown`, or `not fitted`.
    pub contact: &'static str,
    /// The alarm waiting for the admin (`forced`, `held`), empty when none.
    pub alarm: &'static str,
    pub health_status: String,
    pub uptime: String,
    pub people: usize,
    /// The alarm while code entry is paused for everyone (the building's failure budget is spent).
    pub code_entry_alarm: Option<String>,
    pub counts: Counts,
    pub decisions: Vec<DecisionRow>,
}

pub struct SampleView {
    pub index: usize,
    /// Names the sample beside its index, so a stale page cannot remove another one.
    pub key: String,
    pub source: String,
    pub enrolled_at: String,
    pub thumbnail: Option<String>,
}

pub struct PersonView {
    pub name: String,
    pub samples: Vec<SampleView>,
    pub access: AccessView,
}

/// A person's permissions as the form shows them, and what they mean right now.
pub struct AccessView {
    pub valid_from: String,
    pub valid_until: String,
    pub schedule: String,
    pub suspended: bool,
    /// Comma-separated.
    pub groups: String,
    /// `allowed now`, or why not and until when.
    pub now: String,
    pub allowed: bool,
}

pub struct GroupView {
    pub name: String,
    pub schedule: String,
    pub members: usize,
}

pub struct VerdictView {
    pub source: String,
    pub accepted: bool,
    pub text: String,
}

pub struct EnrolResult {
    pub headline: String,
    pub verdicts: Vec<VerdictView>,
    pub warnings: Vec<String>,
}

#[derive(Template)]
#[template(path = "people.html")]
pub struct People {
    pub chrome: Chrome,
    pub people: Vec<PersonView>,
    pub groups: Vec<GroupView>,
    /// The configured `timezone`, which hours and dates are in.
    pub zone: String,
    pub result: Option<EnrolResult>,
}

/// The filter as the form shows it.
pub struct FilterView {
    pub person: String,
    pub from: String,
    pub to: String,
}

#[derive(Template)]
#[template(path = "events.html")]
pub struct Events {
    pub chrome: Chrome,
    pub filter: FilterView,
    /// Each status the filter offers, and whether it is selected.
    pub statuses: Vec<(String, bool)>,
    pub names: Vec<String>,
    /// The filter as a query string, for the CSV link.
    pub query: String,
    pub summary: String,
    pub decisions: Vec<DecisionRow>,
    pub newer: Option<String>,
    pub older: Option<String>,
}

#[derive(Template)]
#[template(path = "event.html")]
pub struct Event {
    pub chrome: Chrome,
    pub id: String,
    pub sidecar: String,
}

pub struct ActuationRow {
    pub date: String,
    pub time: String,
    pub state: String,
    pub badge: &'static str,
    pub reason: String,
    pub cause: String,
    pub request_id: String,
}

#[derive(Template)]
#[template(path = "door.html")]
pub struct Door {
    pub chrome: Chrome,
    pub door_state: &'static str,
    /// The door contact: `open`, `closed`, `unknown`, or `not fitted`.
    pub contact: &'static str,
    pub actuations: Vec<ActuationRow>,
}

#[derive(Template)]
#[template(path = "codes.html")]
pub struct Codes {
    pub chrome: Chrome,
    /// The date shown, `YYYY-MM-DD`.
    pub date: String,
    /// The date with its weekday and ISO week.
    pub heading: String,
    /// Why no code is valid that day (weekend, holiday), if so.
    pub closed: Option<String>,
    /// `Daily` and `Weekly` codes valid that day (a group only when it has codes).
    pub groups: Vec<(&'static str, Vec<String>)>,
    /// The default end of a generated range.
    pub week_end: String,
}

/// One paired (or pairing) tablet.
pub struct TabletRow {
    pub name: String,
    pub paired: String,
    pub last_seen: String,
    pub address: String,
}

/// A pairing link just made, shown once: the link and its QR code as inline SVG.
pub struct PairingView {
    pub name: String,
    pub link: String,
    /// Rendered by `tablets::link::qr_svg` from the link alone.
    pub qr_svg: String,
}

#[derive(Template)]
#[template(path = "tablets.html")]
pub struct Tablets {
    pub chrome: Chrome,
    pub rows: Vec<TabletRow>,
    pub pairing: Option<PairingView>,
    /// Whether the daemon serves TLS (and so has a certificate to offer).
    pub tls: bool,
}
