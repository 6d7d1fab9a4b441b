//! The visitor codes page: the codes valid on a day (today by default, in the Pi's local time),
//! generating codes for a range and revoking one; the same codes file and lock as `facegate codes`.
//! Audit lines name what was done, never a code's digits.

use chrono::{Days, NaiveDate};
use serde_json::json;

use super::form::Fields;
use super::pages::{self, Notice};
use super::{Admin, AdminResponse, Session};
use crate::codes::book::{describe_date, os_random, parse_date, GenerateSpec};
use crate::codes::{Calendar, CodeError, CodeStore};

/// Most codes of one kind per day or week the page generates.
const MAX_PER_KIND: usize = 50;

impl Admin {
    fn code_store(&self) -> CodeStore {
        CodeStore::new(self.ctx.config.codes_path())
    }

    pub(super) fn codes_page(
        &self,
        session: &Session,
        date: NaiveDate,
        notice: Option<Notice>,
    ) -> AdminResponse {
        let mut chrome = self.chrome(Some(session), "codes");
        chrome.notice = notice;
        let shown = Calendar::from_config(&self.ctx.config.codes).and_then(|calendar| {
            let valid = self.code_store().load()?.valid_on(&calendar, date);
            Ok((calendar.closed_because(date).map(str::to_string), valid))
        });
        let (closed, groups) = match shown {
            Ok((closed, valid)) => {
                let groups = [("Daily", valid.daily), ("Weekly", valid.weekly)]
                    .into_iter()
                    .filter(|(_, codes)| !codes.is_empty())
                    .collect();
                (closed, groups)
            }
            Err(err) => {
                chrome.notice = Notice::bad(err.to_string());
                (None, Vec::new())
            }
        };
        let page = pages::Codes {
            chrome,
            date: date.to_string(),
            heading: describe_date(date),
            closed,
            groups,
            week_end: date
                .checked_add_days(Days::new(6))
                .unwrap_or(date)
                .to_string(),
        };
        AdminResponse::page(200, &page)
    }

    /// GET /admin/codes?date=YYYY-MM-DD, with the notice a form left (Post/Redirect/Get).
    pub(super) fn codes_view(
        &self,
        session: &Session,
        query: &str,
        notice: Option<Notice>,
    ) -> AdminResponse {
        let fields = Fields::urlencoded(query);
        match fields.get("date").map(parse_date) {
            None => self.codes_page(session, self.ctx.config.local_today(), notice),
            Some(Ok(date)) => self.codes_page(session, date, notice),
            Some(Err(err)) => self.codes_page(
                session,
                self.ctx.config.local_today(),
                Notice::bad(err.to_string()),
            ),
        }
    }

    /// After a codes form: back to the codes of `date`, showing `notice` once.
    fn codes_done(
        &self,
        session: &Session,
        date: NaiveDate,
        notice: Option<Notice>,
    ) -> AdminResponse {
        self.after_post(session, &format!("/admin/codes?date={date}"), notice, None)
    }

    pub(super) fn generate_codes(
        &self,
        session: &Session,
        fields: &Fields,
        peer: &str,
    ) -> AdminResponse {
        let count = |key: &str, default: usize| -> Result<usize, CodeError> {
            match fields.get(key) {
                None => Ok(default),
                Some(text) => text
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n <= MAX_PER_KIND)
                    .ok_or_else(|| {
                        CodeError::Range(format!("`{text}` codes: give 0 to {MAX_PER_KIND}"))
                    }),
            }
        };
        let spec = (|| -> Result<GenerateSpec, CodeError> {
            Ok(GenerateSpec {
                from: parse_date(fields.get("from").unwrap_or_default())?,
                to: parse_date(fields.get("to").unwrap_or_default())?,
                daily: count("daily", 3)?,
                weekly: count("weekly", 1)?,
                digits: count("digits", 6)? as u32,
            })
        })();
        let generated = spec.and_then(|spec| {
            let calendar = Calendar::from_config(&self.ctx.config.codes)?;
            let report = self
                .code_store()
                .update(|book| book.generate(&calendar, spec, &mut os_random))?;
            Ok((spec, report))
        });
        match generated {
            Ok((spec, report)) => {
                log::info!(
                    "admin generated visitor codes from {} to {} ({} days, {} weeks) from {peer}",
                    spec.from,
                    spec.to,
                    report.days,
                    report.weeks
                );
                self.audit(json!({
                    "action": "codes_generate",
                    "from": spec.from,
                    "to": spec.to,
                    "days": report.days,
                    "weeks": report.weeks,
                    "remote": peer,
                }));
                let mut text = format!(
                    "Generated {} daily codes for each of {} working days and {} weekly codes for each of {} weeks.",
                    spec.daily, report.days, spec.weekly, report.weeks
                );
                if !report.replaced_days.is_empty() || !report.replaced_weeks.is_empty() {
                    text.push_str(&format!(
                        " Replaced the codes of {} days and {} weeks.",
                        report.replaced_days.len(),
                        report.replaced_weeks.len()
                    ));
                }
                self.codes_done(session, spec.from, Notice::ok(text))
            }
            Err(err) => self.codes_done(
                session,
                self.ctx.config.local_today(),
                Notice::bad(err.to_string()),
            ),
        }
    }

    pub(super) fn revoke_code(
        &self,
        session: &Session,
        fields: &Fields,
        peer: &str,
    ) -> AdminResponse {
        let date = fields
            .get("date")
            .and_then(|d| parse_date(d).ok())
            .unwrap_or_else(|| self.ctx.config.local_today());
        let code = fields.get("code").unwrap_or_default();
        match self.code_store().update(|book| Ok(book.revoke(code))) {
            Ok(found) if found.is_empty() => {
                self.codes_done(session, date, Notice::bad("No stored code matches."))
            }
            Ok(found) => {
                log::info!(
                    "admin revoked a visitor code ({}) from {peer}",
                    found.join(", ")
                );
                self.audit(json!({"action": "code_revoke", "where": found, "remote": peer}));
                let text = format!("Revoked the code ({}).", found.join(", "));
                self.codes_done(session, date, Notice::ok(text))
            }
            Err(err) => self.codes_done(session, date, Notice::bad(err.to_string())),
        }
    }
}
