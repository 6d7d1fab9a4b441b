//! Weekly hours written as text (`mon-fri 07:00-19:00; sat 09:00-13:00`, `fri 22:00-02:00`), parsed
//! once into minutes of the week and evaluated on local wall-clock time. Pure: no clock, no zone.

use std::fmt;

use jiff::civil::DateTime;

const MINUTES_PER_DAY: u32 = 24 * 60;
const MINUTES_PER_WEEK: u32 = 7 * MINUTES_PER_DAY;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A malformed spec: which part is wrong and why, quoting the whole spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("weekly hours `{spec}`: `{part}` {problem}. Write days and times like `mon-fri 07:00-19:00; sat 09:00-13:00`")]
pub struct HoursError {
    pub spec: String,
    /// The piece of the spec that is wrong.
    pub part: String,
    pub problem: String,
}

/// Weekly hours: windows of the week in which access is allowed. A window may run past midnight into
/// the next day (`fri 22:00-02:00` ends on Saturday at 02:00, `sun 22:00-02:00` on Monday).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeeklyHours {
    /// The spec as written (trimmed), shown back to the admin.
    spec: String,
    /// `[start, end)` in minutes from Monday 00:00; `end` may pass the end of the week.
    windows: Vec<(u32, u32)>,
}

impl WeeklyHours {
    pub fn parse(spec: &str) -> Result<WeeklyHours, HoursError> {
        let spec = spec.trim();
        let error = |part: &str, problem: &str| HoursError {
            spec: spec.to_string(),
            part: part.to_string(),
            problem: problem.to_string(),
        };
        let mut windows = Vec::new();
        for clause in spec.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let (days, times) = clause.split_once(char::is_whitespace).ok_or_else(|| {
                error(
                    clause,
                    "needs days and then times, e.g. `mon-fri 07:00-19:00`",
                )
            })?;
            let days = parse_days(days.trim()).map_err(|(part, problem)| error(part, problem))?;
            for range in times.split(',').map(str::trim) {
                let (start, end) =
                    parse_range(range).map_err(|(part, problem)| error(part, problem))?;
                for day in &days {
                    let start = day * MINUTES_PER_DAY + start;
                    let end = day * MINUTES_PER_DAY + end;
                    windows.push((
                        start,
                        if end <= start {
                            end + MINUTES_PER_DAY
                        } else {
                            end
                        },
                    ));
                }
            }
        }
        if windows.is_empty() {
            return Err(error(spec, "has no days and times"));
        }
        windows.sort_unstable();
        Ok(WeeklyHours {
            spec: spec.to_string(),
            windows,
        })
    }

    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Whether the local wall-clock time `at` lies in one of the windows (to the minute: the last
    /// minute of `07:00-19:00` is 18:59).
    pub fn contains(&self, at: DateTime) -> bool {
        self.minutes_until_open(at) == Some(0)
    }

    /// Minutes from `at` (floored to its minute) to the start of the next window; 0 inside one.
    pub fn minutes_until_open(&self, at: DateTime) -> Option<u32> {
        minutes_until_open([self], at)
    }
}

/// As [`WeeklyHours::minutes_until_open`], over the union of several weekly hours (a person's groups).
pub fn minutes_until_open<'a>(
    hours: impl IntoIterator<Item = &'a WeeklyHours>,
    at: DateTime,
) -> Option<u32> {
    let now = minute_of_week(at);
    let mut soonest: Option<u32> = None;
    for &(start, end) in hours.into_iter().flat_map(|h| &h.windows) {
        let inside = (start <= now && now < end) || now + MINUTES_PER_WEEK < end;
        let wait = if inside {
            0
        } else {
            (start + MINUTES_PER_WEEK - now) % MINUTES_PER_WEEK
        };
        soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
    }
    soonest
}

fn minute_of_week(at: DateTime) -> u32 {
    let day = u32::from(at.weekday().to_monday_zero_offset() as u8);
    day * MINUTES_PER_DAY + u32::from(at.hour() as u8) * 60 + u32::from(at.minute() as u8)
}

type PartError<'a> = (&'a str, &'static str);

/// `mon-fri`, `sat,sun`, `fri-mon` (wrapping), `daily`: day indices from Monday = 0.
fn parse_days(text: &str) -> Result<Vec<u32>, PartError<'_>> {
    if text.eq_ignore_ascii_case("daily") {
        return Ok((0..7).collect());
    }
    let mut days = Vec::new();
    for item in text.split(',').map(str::trim) {
        match item.split_once('-') {
            Some((first, last)) => {
                let first = day_index(first.trim()).ok_or((first, "is not a day (mon … sun)"))?;
                let last = day_index(last.trim()).ok_or((last, "is not a day (mon … sun)"))?;
                let mut day = first;
                loop {
                    days.push(day);
                    if day == last {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
            None => days.push(day_index(item).ok_or((item, "is not a day (mon … sun, or daily)"))?),
        }
    }
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

fn day_index(name: &str) -> Option<u32> {
    let name = name.to_ascii_lowercase();
    let short = name.get(..3)?;
    let index = DAY_NAMES.iter().position(|d| *d == short)?;
    let full = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ][index];
    (name.len() == 3 || name == full).then_some(index as u32)
}

/// `07:00-19:00` → minutes of the day; an end at or before the start runs into the next day.
fn parse_range(range: &str) -> Result<(u32, u32), PartError<'_>> {
    let (start, end) = range
        .split_once('-')
        .ok_or((range, "is not a time range like 07:00-19:00"))?;
    let start = parse_time(start.trim(), false)?;
    let end = parse_time(end.trim(), true)?;
    if start == end {
        return Err((
            range,
            "starts and ends at the same time; for all day write 00:00-24:00",
        ));
    }
    Ok((start, end))
}

/// `HH:MM`, 00:00 to 23:59; `24:00` only as the end of a range.
fn parse_time(text: &str, is_end: bool) -> Result<u32, PartError<'_>> {
    let malformed = (text, "is not a time (HH:MM, 24-hour)");
    let (hours, minutes) = text.split_once(':').ok_or(malformed)?;
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if hours.is_empty()
        || hours.len() > 2
        || minutes.len() != 2
        || !digits(hours)
        || !digits(minutes)
    {
        return Err(malformed);
    }
    let hours: u32 = hours.parse().map_err(|_| malformed)?;
    let minutes: u32 = minutes.parse().map_err(|_| malformed)?;
    if minutes > 59 {
        return Err((text, "has more than 59 minutes"));
    }
    match hours * 60 + minutes {
        MINUTES_PER_DAY if is_end => Ok(MINUTES_PER_DAY),
        time if time < MINUTES_PER_DAY => Ok(time),
        _ => Err((text, "is past midnight (24:00 is allowed only as an end)")),
    }
}

impl fmt::Display for WeeklyHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

impl serde::Serialize for WeeklyHours {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.spec)
    }
}

impl<'de> serde::Deserialize<'de> for WeeklyHours {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spec = String::deserialize(deserializer)?;
        WeeklyHours::parse(&spec).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    /// 2026-03-02 is a Monday.
    fn at(day_of_march: i8, hour: i8, minute: i8) -> DateTime {
        date(2026, 3, day_of_march).at(hour, minute, 0, 0)
    }

    #[test]
    fn windows_hold_from_their_first_to_their_last_minute() {
        let hours = WeeklyHours::parse("mon-fri 07:00-19:00; sat 09:00-13:00").unwrap();
        let table = [
            (at(2, 6, 59), false, "monday, a minute early"),
            (at(2, 7, 0), true, "monday, first minute"),
            (at(2, 18, 59), true, "monday, last minute"),
            (
                date(2026, 3, 2).at(18, 59, 59, 999),
                true,
                "the last second of the last minute",
            ),
            (at(2, 19, 0), false, "monday, the end is not inside"),
            (at(6, 12, 0), true, "friday"),
            (at(7, 12, 59), true, "saturday's last minute"),
            (at(7, 13, 0), false, "saturday after hours"),
            (at(8, 12, 0), false, "sunday"),
        ];
        for (when, inside, what) in table {
            assert_eq!(hours.contains(when), inside, "{what} ({when})");
        }
    }

    #[test]
    fn windows_run_across_midnight_and_the_end_of_the_week() {
        let friday_night = WeeklyHours::parse("fri 22:00-02:00").unwrap();
        let sunday_night = WeeklyHours::parse("sun 22:00-02:00").unwrap();
        let table = [
            (&friday_night, at(6, 21, 59), false, "friday before"),
            (&friday_night, at(6, 22, 0), true, "friday start"),
            (&friday_night, at(6, 23, 59), true, "friday before midnight"),
            (&friday_night, at(7, 0, 0), true, "saturday midnight"),
            (&friday_night, at(7, 1, 59), true, "saturday last minute"),
            (&friday_night, at(7, 2, 0), false, "saturday end"),
            (
                &friday_night,
                at(5, 1, 0),
                false,
                "thursday night is not friday's",
            ),
            (&sunday_night, at(8, 23, 0), true, "sunday late"),
            (
                &sunday_night,
                at(9, 1, 30),
                true,
                "monday early, past the end of the week",
            ),
            (
                &sunday_night,
                at(2, 1, 30),
                true,
                "the monday before it as well (the week repeats)",
            ),
            (&sunday_night, at(9, 2, 0), false, "monday end"),
        ];
        for (hours, when, inside, what) in table {
            assert_eq!(hours.contains(when), inside, "{what} ({when})");
        }
    }

    #[test]
    fn the_next_window_is_found_across_the_week() {
        let hours = WeeklyHours::parse("mon,wed 08:00-09:00, 17:00-18:30").unwrap();
        assert_eq!(hours.minutes_until_open(at(2, 8, 30)), Some(0));
        assert_eq!(hours.minutes_until_open(at(2, 9, 0)), Some(8 * 60));
        assert_eq!(
            hours.minutes_until_open(at(2, 18, 30)),
            Some(13 * 60 + 30 + 24 * 60)
        );
        // Wednesday evening → next Monday 08:00.
        assert_eq!(
            hours.minutes_until_open(at(4, 19, 0)),
            Some(4 * 24 * 60 + 13 * 60)
        );
        let both = [
            WeeklyHours::parse("sat 10:00-11:00").unwrap(),
            WeeklyHours::parse("fri 10:00-11:00").unwrap(),
        ];
        assert_eq!(minutes_until_open(&both, at(5, 10, 0)), Some(24 * 60));
    }

    #[test]
    fn day_lists_ranges_and_spelling() {
        let table = [
            ("daily 00:00-24:00", at(8, 23, 59), true),
            ("Sat,SUN 10:00-12:00", at(8, 11, 0), true),
            ("fri-mon 10:00-12:00", at(9, 11, 0), true),
            ("fri-mon 10:00-12:00", at(3, 11, 0), false),
            ("saturday 9:00-10:00", at(7, 9, 30), true),
            ("  mon 07:00-08:00 ;  ", at(2, 7, 30), true),
        ];
        for (spec, when, inside) in table {
            assert_eq!(
                WeeklyHours::parse(spec).unwrap().contains(when),
                inside,
                "{spec} at {when}"
            );
        }
        assert_eq!(
            WeeklyHours::parse(" mon 07:00-08:00 ").unwrap().spec(),
            "mon 07:00-08:00"
        );
    }

    #[test]
    fn malformed_specs_name_the_part_that_is_wrong() {
        let table = [
            ("", ""),
            ("mon-fri", "mon-fri"),
            ("mon-fry 07:00-19:00", "fry"),
            ("mon-fri 07:00-25:00", "25:00"),
            ("mon-fri 07:00-19:60", "19:60"),
            ("mon-fri 7-19", "7"),
            ("mon 07:00-19:00; tue 0700-1900", "0700"),
            ("mon 24:00-02:00", "24:00"),
            ("mon 08:00-08:00", "08:00-08:00"),
            ("mon 08:00-24:00, ", ""),
            ("holiday 08:00-09:00", "holiday"),
            ("mon +8:00-19:00", "+8:00"),
            ("mon 08:+5-19:00", "08:+5"),
        ];
        for (spec, part) in table {
            let err = WeeklyHours::parse(spec).unwrap_err();
            assert_eq!(err.part, part, "{spec}: {err}");
            assert!(err.to_string().contains(&format!("`{part}`")), "{err}");
        }
    }

    #[test]
    fn hours_round_trip_through_json_as_their_spec() {
        let hours = WeeklyHours::parse("mon-fri 07:00-19:00").unwrap();
        let json = serde_json::to_string(&hours).unwrap();
        assert_eq!(json, "\"mon-fri 07:00-19:00\"");
        assert_eq!(serde_json::from_str::<WeeklyHours>(&json).unwrap(), hours);
        assert!(serde_json::from_str::<WeeklyHours>("\"mon 25:00-26:00\"").is_err());
    }
}
