//! When a typed visitor code is looked at: inside `codes.hours` on a working day of the codes'
//! calendar. Pure, so that the refusal, the moment it says entry reopens and the check agree: a code
//! typed when none can be valid is refused before it is looked at, never counted as a failure.

use jiff::civil::{DateTime, Time};
use jiff::Zoned;

use super::Calendar;
use crate::permission::{self, Denial, Reason, WeeklyHours};

/// How far ahead the next opening is looked for; a calendar with no working day in a year has none.
const LOOK_AHEAD_DAYS: usize = 366;

/// `None` when a code typed at `now` is looked at; otherwise why not, and when codes are next looked
/// at (none when never within a year).
pub fn closed_at(calendar: &Calendar, hours: Option<&WeeklyHours>, now: &Zoned) -> Option<Denial> {
    let minute = permission::whole_minute(now.datetime());
    let opens = next_opening(calendar, hours, minute);
    if opens == Some(minute) {
        return None;
    }
    let working_today = calendar.is_working_day(permission::chrono_date(minute.date()));
    Some(Denial {
        reason: if working_today {
            Reason::OutsideSchedule
        } else {
            Reason::NoCodesToday
        },
        resumes_at: opens.and_then(|at| permission::first_instant_of(now, at)),
    })
}

/// The first local minute at or after `from` inside `hours` (none: all day) on a working day.
fn next_opening(
    calendar: &Calendar,
    hours: Option<&WeeklyHours>,
    from: DateTime,
) -> Option<DateTime> {
    let mut from = from;
    for _ in 0..LOOK_AHEAD_DAYS {
        let open = match hours {
            None => from,
            Some(hours) => {
                let minutes = hours.minutes_until_open(from)?;
                from.checked_add(jiff::Span::new().minutes(minutes)).ok()?
            }
        };
        if calendar.is_working_day(permission::chrono_date(open.date())) {
            return Some(open);
        }
        from = open.date().tomorrow().ok()?.to_datetime(Time::midnight());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use jiff::civil::date;
    use jiff::tz::TimeZone;

    /// Monday to Friday, with Monday 2026-12-07 a holiday.
    fn office() -> Calendar {
        Calendar::monday_to_friday([NaiveDate::from_ymd_opt(2026, 12, 7).unwrap()])
    }

    fn seoul(at: DateTime) -> Zoned {
        at.to_zoned(TimeZone::get("Asia/Seoul").unwrap()).unwrap()
    }

    #[test]
    fn codes_are_looked_at_in_hours_on_working_days_only() {
        let office_hours = WeeklyHours::parse("mon-fri 09:00-18:00").unwrap();
        let every_evening = WeeklyHours::parse("mon-sun 18:00-20:00").unwrap();
        let in_hours = Some(&office_hours);
        // (hours, now, expected: None = looked at, else (reason, resumes at local time))
        let table = [
            (
                in_hours,
                date(2026, 12, 4).at(10, 0, 0, 0),
                None,
                "friday morning",
            ),
            (
                in_hours,
                date(2026, 12, 4).at(8, 59, 59, 0),
                Some((
                    Reason::OutsideSchedule,
                    Some(date(2026, 12, 4).at(9, 0, 0, 0)),
                )),
                "friday, a second before the hours",
            ),
            (
                in_hours,
                date(2026, 12, 4).at(18, 0, 0, 0),
                Some((
                    Reason::OutsideSchedule,
                    Some(date(2026, 12, 8).at(9, 0, 0, 0)),
                )),
                "friday evening: not monday, a holiday, but tuesday",
            ),
            (
                in_hours,
                date(2026, 12, 5).at(10, 0, 0, 0),
                Some((Reason::NoCodesToday, Some(date(2026, 12, 8).at(9, 0, 0, 0)))),
                "saturday",
            ),
            (
                in_hours,
                date(2026, 12, 7).at(10, 0, 0, 0),
                Some((Reason::NoCodesToday, Some(date(2026, 12, 8).at(9, 0, 0, 0)))),
                "the holiday, in what would be its hours",
            ),
            (
                None,
                date(2026, 12, 6).at(23, 0, 0, 0),
                Some((Reason::NoCodesToday, Some(date(2026, 12, 8).at(0, 0, 0, 0)))),
                "no hours: the next working day from midnight",
            ),
            (
                Some(&every_evening),
                date(2026, 12, 5).at(19, 0, 0, 0),
                Some((
                    Reason::NoCodesToday,
                    Some(date(2026, 12, 8).at(18, 0, 0, 0)),
                )),
                "hours on a weekend day open nothing",
            ),
        ];
        for (hours, now, expected, what) in table {
            let expected = expected.map(|(reason, at): (Reason, Option<DateTime>)| Denial {
                reason,
                resumes_at: at.map(|at| seoul(at).timestamp()),
            });
            assert_eq!(closed_at(&office(), hours, &seoul(now)), expected, "{what}");
        }
    }

    #[test]
    fn a_calendar_without_working_days_names_no_reopening() {
        let never = Calendar::new([], []);
        assert_eq!(
            closed_at(&never, None, &seoul(date(2026, 12, 4).at(10, 0, 0, 0))),
            Some(Denial {
                reason: Reason::NoCodesToday,
                resumes_at: None
            })
        );
    }
}
