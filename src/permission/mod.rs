//! Who may enter, and when: a person's validity dates, weekly hours, suspension and groups, and the
//! pure evaluation of them at one local instant. It sits between match and decide: the service asks it
//! about the recognised person, and the decision takes the answer as an input.

pub mod hours;

use std::collections::BTreeMap;

use jiff::civil::{Date, DateTime};
use jiff::tz::AmbiguousOffset;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};

pub use hours::{HoursError, WeeklyHours};

/// One person's permissions, as the gallery stores them. Nothing set: always allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// First local day of access (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<Date>,
    /// Last local day of access (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Date>,
    /// The person's own weekly hours; when unset, their groups' hours apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<WeeklyHours>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Permissions {
    pub fn is_unrestricted(&self) -> bool {
        *self == Permissions::default()
    }
}

/// A group of people sharing weekly hours (cleaners, contractors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub schedule: WeeklyHours,
}

/// Groups by name.
pub type Groups = BTreeMap<String, Group>;

/// Why a recognised person, or a visitor with a code, may not enter now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    NotYetValid,
    Expired,
    OutsideSchedule,
    Suspended,
    /// Visitor codes only: today is not a working day of `codes.working_days` or is a holiday.
    NoCodesToday,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotYetValid => "not_yet_valid",
            Reason::Expired => "expired",
            Reason::OutsideSchedule => "outside_schedule",
            Reason::Suspended => "suspended",
            Reason::NoCodesToday => "no_codes_today",
        }
    }

    /// The sentence for the person at the door.
    pub fn message(self) -> &'static str {
        match self {
            Reason::NotYetValid => "your access has not started yet",
            Reason::Expired => "your access has ended; ask the building admin",
            Reason::OutsideSchedule => "you may not enter at this hour",
            Reason::Suspended => "your access is suspended; ask the building admin",
            Reason::NoCodesToday => "visitor codes are not accepted today",
        }
    }
}

/// Whether a person may enter at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Denied(Denial),
}

/// Why a person may not enter now, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    /// When access resumes by itself, if it will (never for a suspension or an expiry).
    pub resumes_at: Option<Timestamp>,
}

/// The weekly hours that apply to a person: their own, else the union of their groups' (an unknown
/// group adds none), else `None`: always.
pub fn effective_hours<'a>(
    permissions: &'a Permissions,
    groups: &'a Groups,
) -> Option<Vec<&'a WeeklyHours>> {
    if let Some(own) = &permissions.schedule {
        return Some(vec![own]);
    }
    if permissions.groups.is_empty() {
        return None;
    }
    Some(
        permissions
            .groups
            .iter()
            .filter_map(|name| groups.get(name))
            .map(|group| &group.schedule)
            .collect(),
    )
}

/// Evaluates `permissions` at the local instant `now` (its zone is the configured `timezone`):
/// suspension first, then the validity dates, then the weekly hours.
pub fn access_at(permissions: &Permissions, groups: &Groups, now: &Zoned) -> Access {
    let today = now.date();
    let hours = effective_hours(permissions, groups);
    let denied = |reason, resumes_at| Access::Denied(Denial { reason, resumes_at });
    if permissions.suspended {
        return denied(Reason::Suspended, None);
    }
    if permissions.valid_until.is_some_and(|last| today > last) {
        return denied(Reason::Expired, None);
    }
    if let Some(first) = permissions.valid_from.filter(|first| today < *first) {
        let resumes = next_open(
            hours.as_deref(),
            first.to_datetime(jiff::civil::Time::midnight()),
        );
        return denied(
            Reason::NotYetValid,
            resumes.and_then(|at| within_validity(permissions, now, at)),
        );
    }
    let Some(hours) = hours else {
        return Access::Allowed;
    };
    let minute = whole_minute(now.datetime());
    match hours::minutes_until_open(hours.iter().copied(), minute) {
        Some(0) => Access::Allowed,
        wait => denied(
            Reason::OutsideSchedule,
            wait.and_then(|minutes| minute.checked_add(jiff::Span::new().minutes(minutes)).ok())
                .and_then(|at| within_validity(permissions, now, at)),
        ),
    }
}

/// The first local time at or after `from` inside `hours` (`None` hours: always open).
fn next_open(hours: Option<&[&WeeklyHours]>, from: DateTime) -> Option<DateTime> {
    match hours {
        None => Some(from),
        Some(hours) => hours::minutes_until_open(hours.iter().copied(), from)
            .and_then(|minutes| from.checked_add(jiff::Span::new().minutes(minutes)).ok()),
    }
}

/// The instant of local time `at`, unless `at` falls after the last valid day.
fn within_validity(permissions: &Permissions, now: &Zoned, at: DateTime) -> Option<Timestamp> {
    if permissions.valid_until.is_some_and(|last| at.date() > last) {
        return None;
    }
    first_instant_of(now, at)
}

/// The first instant from `now` on whose local time (in `now`'s zone) is `at`. A local time skipped
/// by a daylight-saving change resolves to the change itself (the first instant past it); a local
/// time that happens twice to the first pass not already behind `now`.
pub fn first_instant_of(now: &Zoned, at: DateTime) -> Option<Timestamp> {
    let zone = now.time_zone();
    match zone.to_ambiguous_timestamp(at).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(at).ok(),
        AmbiguousOffset::Gap { after, .. } => {
            let inside_the_gap = after.to_timestamp(at).ok()?;
            zone.following(inside_the_gap)
                .next()
                .map(|change| change.timestamp())
        }
        AmbiguousOffset::Fold { before, after } => [before, after]
            .into_iter()
            .filter_map(|offset| offset.to_timestamp(at).ok())
            .find(|instant| *instant >= now.timestamp()),
    }
}

/// `at` without its seconds: hours are kept by the minute.
pub fn whole_minute(at: DateTime) -> DateTime {
    at.with()
        .second(0)
        .subsec_nanosecond(0)
        .build()
        .expect("a whole minute is a valid time")
}

/// The same calendar day as chrono counts it (the visitor codes' calendar).
pub fn chrono_date(date: Date) -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(
        i32::from(date.year()),
        u32::from(date.month() as u8),
        u32::from(date.day() as u8),
    )
    .expect("every civil date is a chrono date")
}

/// `YYYY-MM-DD`, as the CLI, the admin page and the gallery write validity dates.
pub fn parse_date(text: &str) -> Result<Date, String> {
    let text = text.trim();
    let refused = || format!("`{text}` is not a date: write YYYY-MM-DD");
    // Only that shape: jiff would also take `+002026-03-02` and `20260302`.
    let shape = text.len() == 10
        && text.bytes().enumerate().all(|(at, b)| match at {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return Err(refused());
    }
    text.parse::<Date>().map_err(|_| refused())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use jiff::tz::TimeZone;

    fn zoned(zone: &str, at: DateTime) -> Zoned {
        at.to_zoned(TimeZone::get(zone).unwrap()).unwrap()
    }

    fn seoul(at: DateTime) -> Zoned {
        zoned("Asia/Seoul", at)
    }

    fn hours(spec: &str) -> Option<WeeklyHours> {
        Some(WeeklyHours::parse(spec).unwrap())
    }

    fn groups() -> Groups {
        Groups::from([(
            "cleaners".to_string(),
            Group {
                schedule: WeeklyHours::parse("mon-fri 18:00-22:00").unwrap(),
            },
        )])
    }

    fn reason(access: Access) -> Option<Reason> {
        match access {
            Access::Allowed => None,
            Access::Denied(denial) => Some(denial.reason),
        }
    }

    #[test]
    fn each_rule_in_its_order() {
        let contractor = Permissions {
            valid_from: Some(date(2026, 3, 2)),
            valid_until: Some(date(2026, 3, 31)),
            schedule: hours("mon-fri 07:00-19:00"),
            ..Permissions::default()
        };
        let suspended = Permissions {
            suspended: true,
            ..contractor.clone()
        };
        let cleaner = Permissions {
            groups: vec!["cleaners".into()],
            ..Permissions::default()
        };
        let unknown_group = Permissions {
            groups: vec!["nobody-defined-this".into()],
            ..Permissions::default()
        };
        let monday_noon = date(2026, 3, 2).at(12, 0, 0, 0);
        let table = [
            (
                &Permissions::default(),
                monday_noon,
                None,
                "no rules: always",
            ),
            (&contractor, monday_noon, None, "first valid day, in hours"),
            (
                &contractor,
                date(2026, 3, 1).at(23, 59, 59, 0),
                Some(Reason::NotYetValid),
                "the day before",
            ),
            (
                &contractor,
                date(2026, 3, 31).at(18, 59, 0, 0),
                None,
                "last valid day, last minute",
            ),
            (
                &contractor,
                date(2026, 4, 1).at(12, 0, 0, 0),
                Some(Reason::Expired),
                "the day after the last",
            ),
            (
                &contractor,
                date(2026, 3, 2).at(19, 0, 0, 0),
                Some(Reason::OutsideSchedule),
                "after hours",
            ),
            (
                &suspended,
                monday_noon,
                Some(Reason::Suspended),
                "suspension comes first",
            ),
            (
                &suspended,
                date(2026, 4, 1).at(12, 0, 0, 0),
                Some(Reason::Suspended),
                "even once expired",
            ),
            (
                &cleaner,
                date(2026, 3, 2).at(18, 30, 0, 0),
                None,
                "group hours",
            ),
            (
                &cleaner,
                monday_noon,
                Some(Reason::OutsideSchedule),
                "outside the group's hours",
            ),
            (
                &unknown_group,
                monday_noon,
                Some(Reason::OutsideSchedule),
                "an unknown group gives no hours",
            ),
        ];
        for (permissions, at, expected, what) in table {
            assert_eq!(
                reason(access_at(permissions, &groups(), &seoul(at))),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn own_hours_win_over_the_groups() {
        let both = Permissions {
            schedule: hours("sat 09:00-13:00"),
            groups: vec!["cleaners".into()],
            ..Permissions::default()
        };
        let saturday = seoul(date(2026, 3, 7).at(10, 0, 0, 0));
        let monday_evening = seoul(date(2026, 3, 2).at(19, 0, 0, 0));
        assert_eq!(access_at(&both, &groups(), &saturday), Access::Allowed);
        assert_eq!(
            reason(access_at(&both, &groups(), &monday_evening)),
            Some(Reason::OutsideSchedule)
        );
    }

    #[test]
    fn access_resumes_at_the_next_window_within_the_validity() {
        let zone = TimeZone::get("Asia/Seoul").unwrap();
        let at = |dt: DateTime| Some(dt.to_zoned(zone.clone()).unwrap().timestamp());
        let staff = Permissions {
            valid_from: Some(date(2026, 3, 4)),
            valid_until: Some(date(2026, 3, 6)),
            schedule: hours("mon-fri 07:00-19:00"),
            ..Permissions::default()
        };
        let table = [
            (
                date(2026, 3, 2).at(12, 0, 0, 0),
                at(date(2026, 3, 4).at(7, 0, 0, 0)),
                "not yet valid: the first window",
            ),
            (
                date(2026, 3, 4).at(20, 15, 30, 0),
                at(date(2026, 3, 5).at(7, 0, 0, 0)),
                "after hours: tomorrow morning",
            ),
            (
                date(2026, 3, 6).at(19, 0, 0, 0),
                None,
                "after the last window of the last day: never",
            ),
            (date(2026, 3, 7).at(8, 0, 0, 0), None, "expired"),
        ];
        for (now, resumes, what) in table {
            match access_at(&staff, &Groups::new(), &seoul(now)) {
                Access::Denied(denial) => assert_eq!(denial.resumes_at, resumes, "{what}"),
                Access::Allowed => panic!("{what}: allowed"),
            }
        }
    }

    /// Hours that start inside the hour Berlin skips in spring and repeats in autumn.
    fn early_sunday() -> Permissions {
        Permissions {
            schedule: hours("sun 02:30-04:00"),
            ..Permissions::default()
        }
    }

    /// A UTC instant in Berlin: Sunday 2026-03-29 02:00 CET → 03:00 CEST; Sunday 2026-10-25 03:00
    /// CEST → 02:00 CET.
    fn in_berlin(utc: &str) -> Zoned {
        utc.parse::<Timestamp>()
            .unwrap()
            .to_zoned(TimeZone::get("Europe/Berlin").unwrap())
    }

    #[test]
    fn hours_follow_local_time_across_daylight_saving_changes() {
        let night = Permissions {
            schedule: hours("sat 22:00-06:00; sun 00:30-03:00"),
            ..Permissions::default()
        };
        let early = early_sunday();
        let table = [
            (
                &night,
                "2026-03-29T00:59:00Z",
                true,
                "01:59 CET, before the spring change",
            ),
            (
                &night,
                "2026-03-29T01:00:00Z",
                true,
                "03:00 CEST, the first minute after it",
            ),
            (
                &night,
                "2026-03-29T03:59:00Z",
                true,
                "05:59 CEST, the window's last minute",
            ),
            (
                &night,
                "2026-03-29T04:00:00Z",
                false,
                "06:00 CEST, local end, not 06:00 CET",
            ),
            (
                &early,
                "2026-03-29T01:00:00Z",
                true,
                "03:00 CEST lies in 02:30-04:00",
            ),
            (
                &early,
                "2026-10-25T00:15:00Z",
                false,
                "02:15 CEST, first pass through the hour",
            ),
            (&early, "2026-10-25T00:30:00Z", true, "02:30 CEST"),
            (
                &early,
                "2026-10-25T01:15:00Z",
                false,
                "02:15 CET, the repeated hour before the window",
            ),
            (
                &early,
                "2026-10-25T01:45:00Z",
                true,
                "02:45 CET, the repeated hour inside it",
            ),
            (
                &early,
                "2026-10-25T02:59:00Z",
                true,
                "03:59 CET, last minute",
            ),
            (&early, "2026-10-25T03:00:00Z", false, "04:00 CET"),
        ];
        for (permissions, utc, allowed, what) in table {
            let access = access_at(permissions, &Groups::new(), &in_berlin(utc));
            assert_eq!(access == Access::Allowed, allowed, "{what}: {access:?}");
        }
    }

    /// Regression: a window starting in the hour skipped in spring was said to resume half an hour
    /// after access really resumed (02:30 read as 03:30 CEST, while 03:00 CEST is already inside it),
    /// and in the repeated autumn hour the answer could name an instant already past.
    #[test]
    fn access_resumes_when_the_window_really_opens_across_daylight_saving_changes() {
        let early = early_sunday();
        let table = [
            (
                "2026-03-28T20:00:00Z",
                "2026-03-29T01:00:00Z",
                "02:30 is skipped: the window opens with the change, 03:00 CEST",
            ),
            (
                "2026-10-25T00:15:00Z",
                "2026-10-25T00:30:00Z",
                "02:15 CEST, first pass: 02:30 CEST",
            ),
            (
                "2026-10-25T01:15:00Z",
                "2026-10-25T01:30:00Z",
                "02:15 CET, second pass: 02:30 CET, not the 02:30 CEST already past",
            ),
        ];
        for (now, resumes, what) in table {
            match access_at(&early, &Groups::new(), &in_berlin(now)) {
                Access::Denied(denial) => {
                    assert_eq!(denial.resumes_at, Some(resumes.parse().unwrap()), "{what}");
                    // And the door agrees: allowed at that instant, not a minute before.
                    let at = denial.resumes_at.unwrap();
                    assert_eq!(
                        access_at(&early, &Groups::new(), &in_berlin(&at.to_string())),
                        Access::Allowed,
                        "{what}: allowed when it resumes"
                    );
                    let minute_before = at - jiff::SignedDuration::from_mins(1);
                    assert_ne!(
                        access_at(
                            &early,
                            &Groups::new(),
                            &in_berlin(&minute_before.to_string())
                        ),
                        Access::Allowed,
                        "{what}: not a minute before"
                    );
                }
                Access::Allowed => panic!("{what}: allowed"),
            }
        }
    }

    #[test]
    fn permissions_round_trip_through_json_and_nothing_is_written_when_unset() {
        assert_eq!(
            serde_json::to_string(&Permissions::default()).unwrap(),
            "{}"
        );
        let set = Permissions {
            valid_from: Some(date(2026, 3, 2)),
            valid_until: None,
            schedule: hours("fri 22:00-02:00"),
            suspended: true,
            groups: vec!["cleaners".into()],
        };
        let json = serde_json::to_string(&set).unwrap();
        assert!(json.contains("\"valid_from\":\"2026-03-02\""), "{json}");
        assert_eq!(serde_json::from_str::<Permissions>(&json).unwrap(), set);
        for not_a_date in [
            "2026-02-30",
            "+002026-02-28",
            "20260228",
            "2026-2-28",
            "2026-02-28T00:00",
        ] {
            assert!(parse_date(not_a_date).is_err(), "{not_a_date}");
        }
        assert_eq!(parse_date(" 2026-02-28 ").unwrap(), date(2026, 2, 28));
    }
}
