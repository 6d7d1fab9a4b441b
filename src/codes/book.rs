//! The stored codes (daily per date, weekly per ISO week) and the pure operations on them: generate,
//! list the valid ones, verify in constant time, consume, revoke.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::calendar::{week_key, Calendar};
use super::CodeError;

/// Most codes of one kind per day or week that one generation makes.
pub(crate) const MAX_CODES_PER_KIND: usize = 100;
/// Longest range one generation covers, in days.
pub(crate) const MAX_RANGE_DAYS: i64 = 732;
pub(crate) const DIGITS: std::ops::RangeInclusive<u32> = 4..=12;

/// All codes: daily ones by date, weekly ones by ISO week (`YYYY-Www`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeBook {
    pub daily: BTreeMap<NaiveDate, Vec<String>>,
    pub weekly: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeKind {
    Daily,
    Weekly,
}

impl CodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::Daily => "daily",
            CodeKind::Weekly => "weekly",
        }
    }
}

/// Which stored code a typed one matched: its kind and its 1-based place in `codes show`'s list.
/// This, never the code, is what logs and audit lines name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMatch {
    pub kind: CodeKind,
    pub index: usize,
    date: NaiveDate,
}

/// The codes valid on one date, in the order `codes show` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidCodes {
    pub date: NaiveDate,
    pub daily: Vec<String>,
    pub weekly: Vec<String>,
}

/// What one `generate` asks for.
#[derive(Debug, Clone, Copy)]
pub struct GenerateSpec {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub daily: usize,
    pub weekly: usize,
    pub digits: u32,
}

/// What one `generate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerateReport {
    pub days: usize,
    pub weeks: usize,
    pub replaced_days: Vec<NaiveDate>,
    pub replaced_weeks: Vec<String>,
}

impl CodeBook {
    /// The codes valid on `date`: none on a day the calendar closes, else the day's daily codes and
    /// its week's weekly codes.
    pub fn valid_on(&self, calendar: &Calendar, date: NaiveDate) -> ValidCodes {
        let open = calendar.is_working_day(date);
        let pick =
            |codes: Option<&Vec<String>>| codes.filter(|_| open).cloned().unwrap_or_default();
        ValidCodes {
            date,
            daily: pick(self.daily.get(&date)),
            weekly: pick(self.weekly.get(&week_key(date.iso_week()))),
        }
    }

    /// Finds `given` among the codes valid on `date`. Every candidate is compared, in constant time,
    /// whether or not an earlier one matched, so the time taken says nothing about which one did.
    pub(crate) fn verify(
        &self,
        calendar: &Calendar,
        date: NaiveDate,
        given: &str,
    ) -> Option<CodeMatch> {
        let valid = self.valid_on(calendar, date);
        let given = given.trim().as_bytes();
        let mut found = subtle::Choice::from(0);
        let mut slot = 0u32;
        for (i, candidate) in valid.daily.iter().chain(&valid.weekly).enumerate() {
            let equal = given.ct_eq(candidate.as_bytes());
            slot.conditional_assign(&(i as u32), equal);
            found |= equal;
        }
        if !bool::from(found) {
            return None;
        }
        let slot = slot as usize;
        Some(if slot < valid.daily.len() {
            CodeMatch {
                kind: CodeKind::Daily,
                index: slot + 1,
                date,
            }
        } else {
            CodeMatch {
                kind: CodeKind::Weekly,
                index: slot - valid.daily.len() + 1,
                date,
            }
        })
    }

    /// Removes a matched code so that it cannot be used again (`codes.single_use`).
    pub(crate) fn consume(&mut self, matched: &CodeMatch) {
        let list = match matched.kind {
            CodeKind::Daily => self.daily.get_mut(&matched.date),
            CodeKind::Weekly => self.weekly.get_mut(&week_key(matched.date.iso_week())),
        };
        if let Some(list) = list.filter(|l| matched.index <= l.len()) {
            list.remove(matched.index - 1);
        }
    }

    /// Puts a consumed single-use `code` back where [`CodeBook::consume`] took it from, when the
    /// door stayed locked for it. Nothing is put back where the day's or week's codes are gone
    /// (revoked or generated anew since), or where the code is already.
    pub(crate) fn give_back(&mut self, matched: &CodeMatch, code: &str) {
        let list = match matched.kind {
            CodeKind::Daily => self.daily.get_mut(&matched.date),
            CodeKind::Weekly => self.weekly.get_mut(&week_key(matched.date.iso_week())),
        };
        let code = code.trim();
        if let Some(list) = list.filter(|l| !l.iter().any(|c| c == code)) {
            let place = (matched.index - 1).min(list.len());
            list.insert(place, code.to_string());
        }
    }

    /// Removes `code` wherever it is stored; returns where it was (`daily 2026-12-01`,
    /// `weekly 2026-W49`), empty when it was nowhere.
    pub fn revoke(&mut self, code: &str) -> Vec<String> {
        let code = code.trim();
        let mut found = Vec::new();
        for (date, codes) in &mut self.daily {
            if take(codes, code) {
                found.push(format!("daily {date}"));
            }
        }
        for (week, codes) in &mut self.weekly {
            if take(codes, code) {
                found.push(format!("weekly {week}"));
            }
        }
        found
    }

    /// Fills every working day from `spec.from` to `spec.to` with fresh daily codes, and every ISO
    /// week with a working day in the range with fresh weekly codes (valid all that week), replacing
    /// what those days and weeks had. Codes valid on the same day are all different. `random` must
    /// be a CSPRNG (`os_random` in the daemon and CLI).
    pub fn generate(
        &mut self,
        calendar: &Calendar,
        spec: GenerateSpec,
        random: &mut dyn FnMut() -> Result<u64, CodeError>,
    ) -> Result<GenerateReport, CodeError> {
        check_spec(&spec)?;
        let days = calendar.working_days_between(spec.from, spec.to);
        let weeks: BTreeSet<_> = days.iter().map(|d| d.iso_week()).collect();
        let mut report = GenerateReport {
            days: days.len(),
            weeks: if spec.weekly > 0 { weeks.len() } else { 0 },
            ..GenerateReport::default()
        };
        for day in &days {
            if self.daily.remove(day).is_some_and(|c| !c.is_empty()) {
                report.replaced_days.push(*day);
            }
        }
        for week in &weeks {
            let key = week_key(*week);
            if spec.weekly > 0 && self.weekly.get(&key).is_some_and(|c| !c.is_empty()) {
                report.replaced_weeks.push(key.clone());
            }
            if spec.weekly == 0 {
                continue;
            }
            // Weekly codes must differ from the daily codes of every day of the week, including
            // days outside the range that keep theirs.
            let mut taken: BTreeSet<String> = calendar
                .working_days_of(*week)
                .iter()
                .filter_map(|d| self.daily.get(d))
                .flatten()
                .cloned()
                .collect();
            let codes = draw_distinct(spec.weekly, spec.digits, &mut taken, random)?;
            self.weekly.insert(key, codes);
        }
        for day in &days {
            let mut taken: BTreeSet<String> = self
                .weekly
                .get(&week_key(day.iso_week()))
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            let codes = draw_distinct(spec.daily, spec.digits, &mut taken, random)?;
            if !codes.is_empty() {
                self.daily.insert(*day, codes);
            }
        }
        Ok(report)
    }
}

fn take(codes: &mut Vec<String>, code: &str) -> bool {
    let before = codes.len();
    codes.retain(|c| c != code);
    codes.len() != before
}

fn check_spec(spec: &GenerateSpec) -> Result<(), CodeError> {
    let range = |problem: String| Err(CodeError::Range(problem));
    if spec.to < spec.from {
        return range(format!("--to {} is before --from {}", spec.to, spec.from));
    }
    if (spec.to - spec.from).num_days() >= MAX_RANGE_DAYS {
        return range(format!(
            "the range covers more than {MAX_RANGE_DAYS} days: generate a year or two at a time"
        ));
    }
    if !DIGITS.contains(&spec.digits) {
        return range(format!(
            "--digits {} is outside {}..={}",
            spec.digits,
            DIGITS.start(),
            DIGITS.end()
        ));
    }
    if spec.daily > MAX_CODES_PER_KIND || spec.weekly > MAX_CODES_PER_KIND {
        return range(format!(
            "at most {MAX_CODES_PER_KIND} daily and {MAX_CODES_PER_KIND} weekly codes per day"
        ));
    }
    if spec.daily + spec.weekly == 0 {
        return range("--daily and --weekly are both 0: nothing to generate".into());
    }
    Ok(())
}

/// Draws `count` codes of `digits` digits not yet in `taken` (and adds them to it).
fn draw_distinct(
    count: usize,
    digits: u32,
    taken: &mut BTreeSet<String>,
    random: &mut dyn FnMut() -> Result<u64, CodeError>,
) -> Result<Vec<String>, CodeError> {
    let mut codes = Vec::with_capacity(count);
    // With at most 2 * MAX_CODES_PER_KIND codes among at least 10^4, a collision is rare; the
    // bound only stops a broken generator from spinning forever.
    let mut attempts = 0;
    while codes.len() < count {
        attempts += 1;
        if attempts > 100 * count + 100 {
            return Err(CodeError::Random(
                "it keeps returning the same numbers".into(),
            ));
        }
        let code = draw_code(digits, random)?;
        if taken.insert(code.clone()) {
            codes.push(code);
        }
    }
    Ok(codes)
}

/// One uniformly drawn code of `digits` decimal digits, leading zeros kept.
fn draw_code(
    digits: u32,
    random: &mut dyn FnMut() -> Result<u64, CodeError>,
) -> Result<String, CodeError> {
    let limit = 10u64.pow(digits);
    // Values at or above the largest multiple of `limit` are redrawn, so that every code is
    // equally likely.
    let zone = u64::MAX - u64::MAX % limit;
    loop {
        let value = random()?;
        if value < zone {
            return Ok(format!(
                "{:0width$}",
                value % limit,
                width = digits as usize
            ));
        }
    }
}

/// The operating system's CSPRNG (getrandom(2)).
pub fn os_random() -> Result<u64, CodeError> {
    getrandom::u64().map_err(|err| CodeError::Random(err.to_string()))
}

/// The date `YYYY-MM-DD` that `codes show` and `generate` take.
pub fn parse_date(text: &str) -> Result<NaiveDate, CodeError> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| CodeError::Range(format!("`{text}` is not a date: write YYYY-MM-DD")))
}

/// The weekday and ISO week of a date, for people reading `codes show`.
pub fn describe_date(date: NaiveDate) -> String {
    format!(
        "{date} ({}, week {})",
        date.weekday(),
        week_key(date.iso_week())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn weekdays() -> Calendar {
        Calendar::monday_to_friday([date("2026-12-25")])
    }

    fn spec(from: &str, to: &str, daily: usize, weekly: usize) -> GenerateSpec {
        GenerateSpec {
            from: date(from),
            to: date(to),
            daily,
            weekly,
            digits: 6,
        }
    }

    fn generated(from: &str, to: &str) -> CodeBook {
        let mut book = CodeBook::default();
        book.generate(&weekdays(), spec(from, to, 3, 2), &mut os_random)
            .unwrap();
        book
    }

    #[test]
    fn generation_covers_working_days_and_their_weeks() {
        let mut book = CodeBook::default();
        // Wednesday 2026-12-23 to Tuesday 2026-12-29: Christmas and the weekend are skipped.
        let report = book
            .generate(
                &weekdays(),
                spec("2026-12-23", "2026-12-29", 3, 2),
                &mut os_random,
            )
            .unwrap();
        assert_eq!(report.days, 4);
        assert_eq!(report.weeks, 2);
        assert!(report.replaced_days.is_empty() && report.replaced_weeks.is_empty());
        let dates: Vec<_> = book.daily.keys().map(|d| d.to_string()).collect();
        assert_eq!(
            dates,
            ["2026-12-23", "2026-12-24", "2026-12-28", "2026-12-29"]
        );
        assert_eq!(
            book.weekly.keys().collect::<Vec<_>>(),
            ["2026-W52", "2026-W53"]
        );
        for codes in book.daily.values().chain(book.weekly.values()) {
            for code in codes {
                assert!(
                    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
                    "{code}"
                );
            }
        }
    }

    #[test]
    fn codes_valid_on_one_day_are_all_different() {
        // A generator that repeats itself must still give distinct codes within a day.
        let mut values = [1u64, 1, 2, 2, 3, 1, 4, 5, 6, 7, 8, 9].into_iter().cycle();
        let mut random = || Ok(values.next().unwrap());
        let mut book = CodeBook::default();
        book.generate(
            &weekdays(),
            spec("2026-12-01", "2026-12-01", 3, 2),
            &mut random,
        )
        .unwrap();
        let valid = book.valid_on(&weekdays(), date("2026-12-01"));
        let all: BTreeSet<_> = valid.daily.iter().chain(&valid.weekly).collect();
        assert_eq!(all.len(), 5, "{valid:?}");
        assert_eq!(valid.weekly, ["000001", "000002"]);
    }

    #[test]
    fn a_generator_stuck_on_one_number_is_an_error_not_a_hang() {
        let mut book = CodeBook::default();
        let err = book
            .generate(
                &weekdays(),
                spec("2026-12-01", "2026-12-01", 3, 0),
                &mut || Ok(7),
            )
            .unwrap_err();
        assert!(err.to_string().contains("random"), "{err}");
    }

    #[test]
    fn draws_are_uniform_with_leading_zeros() {
        let mut values = [u64::MAX, 42].into_iter();
        let code = draw_code(6, &mut || Ok(values.next().unwrap())).unwrap();
        assert_eq!(
            code, "000042",
            "the value above the uniform zone is redrawn"
        );
    }

    #[test]
    fn daily_codes_expire_at_midnight_and_weekly_ones_at_the_weeks_end() {
        let book = generated("2026-12-21", "2027-01-08");
        let calendar = weekdays();
        let thursday = book.valid_on(&calendar, date("2026-12-31"));
        let friday = book.valid_on(&calendar, date("2027-01-01"));
        let next_monday = book.valid_on(&calendar, date("2027-01-04"));
        let daily = &thursday.daily[0];
        let weekly = &thursday.weekly[1];
        let cases = [
            ("2026-12-31", daily, Some((CodeKind::Daily, 1))),
            ("2027-01-01", daily, None),
            ("2026-12-30", daily, None),
            ("2026-12-31", weekly, Some((CodeKind::Weekly, 2))),
            ("2026-12-28", weekly, Some((CodeKind::Weekly, 2))),
            ("2027-01-01", weekly, Some((CodeKind::Weekly, 2))),
            ("2027-01-02", weekly, None),
            ("2027-01-04", weekly, None),
        ];
        for (day, code, expected) in cases {
            let found = book
                .verify(&calendar, date(day), code)
                .map(|m| (m.kind, m.index));
            assert_eq!(found, expected, "{code} on {day}");
        }
        assert_ne!(friday.daily, thursday.daily);
        assert_eq!(friday.weekly, thursday.weekly);
        assert_ne!(next_monday.weekly, thursday.weekly);
    }

    #[test]
    fn weekends_and_holidays_have_no_valid_code() {
        let mut book = generated("2026-12-21", "2026-12-31");
        // Even codes stored for a day that later became a holiday are not valid on it.
        let christmas_eve = date("2026-12-24");
        let code = book.valid_on(&weekdays(), christmas_eve).daily[0].clone();
        book.daily.insert(date("2026-12-25"), vec![code.clone()]);
        let calendar = weekdays();
        for day in ["2026-12-25", "2026-12-26", "2026-12-27"] {
            let valid = book.valid_on(&calendar, date(day));
            assert!(valid.daily.is_empty() && valid.weekly.is_empty(), "{day}");
            assert_eq!(book.verify(&calendar, date(day), &code), None, "{day}");
        }
    }

    #[test]
    fn wrong_codes_do_not_match() {
        let book = generated("2026-12-01", "2026-12-01");
        let calendar = weekdays();
        let day = date("2026-12-01");
        let valid = &book.valid_on(&calendar, day).daily[0];
        let shorter = &valid[..5];
        let longer = format!("{valid}0");
        for wrong in ["", "abcdef", shorter, &longer, "1234567890123"] {
            if wrong != valid.as_str() {
                assert_eq!(book.verify(&calendar, day, wrong), None, "{wrong}");
            }
        }
        assert!(book
            .verify(&calendar, day, &format!(" {valid}\n"))
            .is_some());
    }

    #[test]
    fn regenerating_a_range_replaces_it_and_says_so() {
        let mut book = generated("2026-12-01", "2026-12-11");
        let before = book.clone();
        let report = book
            .generate(
                &weekdays(),
                spec("2026-12-03", "2026-12-04", 1, 1),
                &mut os_random,
            )
            .unwrap();
        assert_eq!(
            report.replaced_days,
            vec![date("2026-12-03"), date("2026-12-04")]
        );
        assert_eq!(report.replaced_weeks, vec!["2026-W49".to_string()]);
        assert_eq!(book.daily[&date("2026-12-03")].len(), 1);
        assert_eq!(
            book.daily[&date("2026-12-02")],
            before.daily[&date("2026-12-02")]
        );
        assert_eq!(book.weekly["2026-W50"], before.weekly["2026-W50"]);
    }

    #[test]
    fn consuming_and_revoking_remove_the_code() {
        let mut book = generated("2026-12-01", "2026-12-04");
        let calendar = weekdays();
        let day = date("2026-12-02");
        let valid = book.valid_on(&calendar, day);
        let matched = book.verify(&calendar, day, &valid.weekly[0]).unwrap();
        book.consume(&matched);
        assert_eq!(
            book.verify(&calendar, date("2026-12-03"), &valid.weekly[0]),
            None
        );
        assert_eq!(book.revoke(&valid.daily[1]), vec!["daily 2026-12-02"]);
        assert_eq!(book.verify(&calendar, day, &valid.daily[1]), None);
        assert!(book.verify(&calendar, day, &valid.daily[0]).is_some());
        assert!(book.revoke("not-a-code").is_empty());
    }

    #[test]
    fn a_code_given_back_is_where_it_was_and_only_once() {
        let mut book = generated("2026-12-01", "2026-12-04");
        let before = book.clone();
        let calendar = weekdays();
        let day = date("2026-12-02");
        let valid = book.valid_on(&calendar, day);
        let matched = book.verify(&calendar, day, &valid.daily[1]).unwrap();
        book.consume(&matched);
        assert_eq!(book.verify(&calendar, day, &valid.daily[1]), None);
        book.give_back(&matched, &valid.daily[1]);
        book.give_back(&matched, &valid.daily[1]);
        assert_eq!(book, before, "the same codes in the same places");
        assert_eq!(
            book.verify(&calendar, day, &valid.daily[1]),
            Some(matched.clone())
        );
        // The day's codes were revoked meanwhile: nothing comes back to life.
        book.consume(&matched);
        book.daily.remove(&day);
        book.give_back(&matched, &valid.daily[1]);
        assert_eq!(book.verify(&calendar, day, &valid.daily[1]), None);
    }

    #[test]
    fn impossible_requests_are_refused_with_the_reason() {
        let cases = [
            (spec("2026-12-02", "2026-12-01", 1, 1), "before"),
            (spec("2026-01-01", "2028-12-31", 1, 1), "more than"),
            (spec("2026-12-01", "2026-12-01", 0, 0), "nothing"),
            (spec("2026-12-01", "2026-12-01", 101, 0), "at most"),
            (
                GenerateSpec {
                    digits: 3,
                    ..spec("2026-12-01", "2026-12-01", 1, 1)
                },
                "--digits",
            ),
        ];
        for (spec, word) in cases {
            let err = CodeBook::default()
                .generate(&weekdays(), spec, &mut os_random)
                .unwrap_err()
                .to_string();
            assert!(err.contains(word), "{spec:?}: {err}");
        }
    }
}
