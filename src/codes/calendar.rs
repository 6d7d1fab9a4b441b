//! Which dates are working days: the configured weekdays minus the site's holidays.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{Datelike, Days, IsoWeek, NaiveDate, Weekday};

use super::CodeError;

/// Working weekdays and holiday dates. Codes are valid on working days only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    working_days: BTreeSet<u32>,
    holidays: BTreeSet<NaiveDate>,
}

/// Parses a weekday name as the config spells it: `mon`, `Monday`, `TUE`...
pub(crate) fn parse_weekday(name: &str) -> Option<Weekday> {
    name.trim().parse::<Weekday>().ok()
}

impl Calendar {
    pub fn new(
        working_days: impl IntoIterator<Item = Weekday>,
        holidays: impl IntoIterator<Item = NaiveDate>,
    ) -> Calendar {
        Calendar {
            working_days: working_days
                .into_iter()
                .map(|d| d.num_days_from_monday())
                .collect(),
            holidays: holidays.into_iter().collect(),
        }
    }

    /// Monday to Friday, minus `holidays`: the office calendar the tests share.
    #[cfg(test)]
    pub(crate) fn monday_to_friday(holidays: impl IntoIterator<Item = NaiveDate>) -> Calendar {
        use Weekday::*;
        Calendar::new([Mon, Tue, Wed, Thu, Fri], holidays)
    }

    /// The calendar the config describes: `codes.working_days`, `codes.holidays` and the dates in
    /// `codes.holidays_file`.
    pub fn from_config(config: &crate::config::CodesConfig) -> Result<Calendar, CodeError> {
        let weekdays = config
            .working_days
            .iter()
            .map(|name| parse_weekday(name).ok_or_else(|| CodeError::Weekday(name.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut holidays = config.holidays.clone();
        if let Some(path) = &config.holidays_file {
            holidays.extend(read_holidays_file(path)?);
        }
        Ok(Calendar::new(weekdays, holidays))
    }

    pub(crate) fn is_working_day(&self, date: NaiveDate) -> bool {
        self.working_days
            .contains(&date.weekday().num_days_from_monday())
            && !self.holidays.contains(&date)
    }

    /// Why `date` has no valid code, or `None` on a working day.
    pub fn closed_because(&self, date: NaiveDate) -> Option<&'static str> {
        if self.holidays.contains(&date) {
            Some("a holiday")
        } else if !self.is_working_day(date) {
            Some("not a working day")
        } else {
            None
        }
    }

    /// The working days from `from` to `to`, both included.
    pub(crate) fn working_days_between(&self, from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
        from.iter_days()
            .take_while(|d| *d <= to)
            .filter(|d| self.is_working_day(*d))
            .collect()
    }

    /// The working days of an ISO week.
    pub(crate) fn working_days_of(&self, week: IsoWeek) -> Vec<NaiveDate> {
        let monday = NaiveDate::from_isoywd_opt(week.year(), week.week(), Weekday::Mon)
            .expect("an IsoWeek always has a Monday");
        let sunday = monday + Days::new(6);
        self.working_days_between(monday, sunday)
    }
}

/// The `YYYY-Www` name of a date's ISO week, as codes are stored under.
pub(crate) fn week_key(week: IsoWeek) -> String {
    format!("{:04}-W{:02}", week.year(), week.week())
}

/// Reads a holidays file: one `YYYY-MM-DD` date per line; blank lines and `#` comments are skipped,
/// and anything after the date on a line (a holiday's name) is ignored.
pub(crate) fn read_holidays_file(path: &Path) -> Result<Vec<NaiveDate>, CodeError> {
    let text = std::fs::read_to_string(path).map_err(|cause| CodeError::HolidaysFile {
        path: path.to_owned(),
        problem: cause.to_string(),
    })?;
    parse_holidays(&text).map_err(|problem| CodeError::HolidaysFile {
        path: path.to_owned(),
        problem,
    })
}

fn parse_holidays(text: &str) -> Result<Vec<NaiveDate>, String> {
    let mut dates = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        let date = NaiveDate::parse_from_str(first, "%Y-%m-%d").map_err(|_| {
            format!(
                "line {}: `{first}` is not a date; write one YYYY-MM-DD date per line",
                number + 1
            )
        })?;
        dates.push(date);
    }
    Ok(dates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn office() -> Calendar {
        Calendar::monday_to_friday([date("2026-12-25")])
    }

    #[test]
    fn weekends_and_holidays_are_not_working_days() {
        let cases = [
            ("2026-12-24", true, None),
            ("2026-12-25", false, Some("a holiday")),
            ("2026-12-26", false, Some("not a working day")),
            ("2026-12-27", false, Some("not a working day")),
            ("2026-12-28", true, None),
        ];
        for (day, working, why) in cases {
            assert_eq!(office().is_working_day(date(day)), working, "{day}");
            assert_eq!(office().closed_because(date(day)), why, "{day}");
        }
    }

    #[test]
    fn iso_weeks_cross_the_year_end() {
        let week = date("2026-12-31").iso_week();
        assert_eq!(week_key(week), "2026-W53");
        assert_eq!(
            office().working_days_of(week),
            vec![
                date("2026-12-28"),
                date("2026-12-29"),
                date("2026-12-30"),
                date("2026-12-31"),
                date("2027-01-01"),
            ]
        );
        assert_eq!(week_key(date("2027-01-04").iso_week()), "2027-W01");
        assert_eq!(week_key(date("2024-12-30").iso_week()), "2025-W01");
    }

    #[test]
    fn holidays_files_take_dates_names_and_comments() {
        let text = "# Public holidays\n2026-12-25 Christmas\n\n  2026-12-26   # Boxing day\n";
        assert_eq!(
            parse_holidays(text).unwrap(),
            vec![date("2026-12-25"), date("2026-12-26")]
        );
        let err = parse_holidays("2026-12-25\n25.12.2026\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("25.12.2026"),
            "{err}"
        );
    }

    #[test]
    fn weekday_names_are_read_loosely() {
        for name in ["mon", "Monday", "MON", " mon "] {
            assert_eq!(parse_weekday(name), Some(Weekday::Mon), "{name}");
        }
        assert_eq!(parse_weekday("workday"), None);
    }
}
