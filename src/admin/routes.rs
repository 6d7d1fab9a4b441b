//! The signed-in admin routes: each page's data gathered from the daemon's state dir, audit log,
//! snapshots and door, and each action carried out (enrol, remove, test pulse).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{Days, NaiveDate, Utc};
use opencv::core::{Mat, MatTraitConst, Size};
use opencv::imgproc;
use serde_json::{json, Value};

use super::form::{Fields, Upload};
use super::history::{self, Entry, Filter, Kinds};
use super::pages::{self, Notice};
use super::{Admin, AdminResponse, Session};
use crate::config::DoorConfig;
use crate::door::{Alarm, DoorReport, OpenCause, OpenRequest};
use crate::enrollment::{self, Candidate, EnrolmentError, Verdict};
use crate::gallery::{Gallery, GalleryError, GalleryFile, Sample};
use crate::permission::{self, Access, Groups, Permissions, WeeklyHours};

/// Where the people forms redirect to.
const PEOPLE: &str = "/admin/people";
/// Rows per page of the events list.
const PAGE_SIZE: usize = 50;
/// Height of the decision thumbnails made from snapshots.
const SNAPSHOT_THUMB_HEIGHT: i32 = 96;
/// Statuses the events filter offers.
const STATUSES: [&str; 17] = [
    "granted",
    "not_allowed",
    "unknown",
    "no_face",
    "stale",
    "spoof",
    "denied",
    "locked_out",
    "saved",
    "bad_image",
    "too_large",
    "unauthorized",
    "door_test",
    "enrol",
    "codes_generate",
    "login",
    "login_failed",
];

/// A person's permissions from the people page's form: empty fields clear, the checkbox suspends.
fn permissions_from_form(fields: &Fields) -> Result<Permissions, String> {
    let day = |key: &str| {
        fields
            .get(key)
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(permission::parse_date)
            .transpose()
    };
    let schedule = fields
        .get("schedule")
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(WeeklyHours::parse)
        .transpose()
        .map_err(|err| err.to_string())?;
    Ok(Permissions {
        valid_from: day("valid_from")?,
        valid_until: day("valid_until")?,
        schedule,
        suspended: fields.get("suspended").is_some(),
        groups: fields
            .get("groups")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// The form's values and what they mean at `now`.
fn access_view(permissions: &Permissions, groups: &Groups, now: &jiff::Zoned) -> pages::AccessView {
    let day = |d: Option<jiff::civil::Date>| d.map(|d| d.to_string()).unwrap_or_default();
    let (allowed, text) = match permission::access_at(permissions, groups, now) {
        Access::Allowed => (true, "Allowed now.".to_string()),
        Access::Denied(denial) => {
            let until = denial.resumes_at.map_or(String::new(), |at| {
                format!(
                    " until {}",
                    at.to_zoned(now.time_zone().clone())
                        .strftime("%a %Y-%m-%d %H:%M")
                )
            });
            (
                false,
                format!("Not allowed now ({}){until}.", denial.reason.as_str()),
            )
        }
    };
    pages::AccessView {
        valid_from: day(permissions.valid_from),
        valid_until: day(permissions.valid_until),
        schedule: permissions
            .schedule
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        suspended: permissions.suspended,
        groups: permissions.groups.join(", "),
        now: text,
        allowed,
    }
}

/// What names one sample on the page: its thumbnail file, else its source file name.
fn sample_key(sample: &Sample) -> &str {
    sample.thumbnail.as_deref().unwrap_or(&sample.source)
}

fn badge(status: &str) -> &'static str {
    match status {
        "granted" | "opened" | "unlocked" | "login" => "ok",
        "unknown" | "spoof" | "denied" | "locked_out" | "login_failed" | "not_allowed" => "bad",
        "no_face" | "stale" | "busy" => "warn",
        _ => "",
    }
}

fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// A query string from key/value pairs (values percent-encoded).
fn query_string(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let encoded: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={encoded}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The events filter read from a query; unreadable dates fall back to the last seven days.
struct EventQuery {
    filter: Filter,
    page: usize,
    problem: Option<String>,
}

/// The events filter of a query, over local days in `zone` (today by default).
fn parse_event_query(query: &str, zone: &jiff::tz::TimeZone) -> EventQuery {
    let today =
        crate::permission::chrono_date(jiff::Timestamp::now().to_zoned(zone.clone()).date());
    let fields = Fields::urlencoded(query);
    let date = |key: &str| {
        fields
            .get(key)
            .map(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| text.to_string()))
    };
    let mut problem = None;
    let mut take = |key: &str, default: NaiveDate| match date(key) {
        None => default,
        Some(Ok(day)) => day,
        Some(Err(text)) => {
            problem = Some(format!(
                "`{text}` is not a date (YYYY-MM-DD); showing the last seven days"
            ));
            default
        }
    };
    let to = take("to", today);
    let from = take("from", to.checked_sub_days(Days::new(6)).unwrap_or(to));
    let (from, to) = if from > to { (to, from) } else { (from, to) };
    let filter = Filter {
        status: fields.get("status").map(str::to_string),
        person: fields.get("person").map(str::to_string),
        ..Filter::days(from, to, Kinds::Requests).in_zone(zone.clone())
    };
    let page = fields
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0usize);
    EventQuery {
        filter,
        page,
        problem,
    }
}

fn filter_pairs(filter: &Filter) -> Vec<(&'static str, String)> {
    vec![
        ("status", filter.status.clone().unwrap_or_default()),
        ("person", filter.person.clone().unwrap_or_default()),
        ("from", filter.from.to_string()),
        ("to", filter.to.to_string()),
    ]
}

impl Admin {
    pub(super) fn get(&self, path: &str, query: &str, session: &Session) -> AdminResponse {
        match path {
            "/admin/" => self.dashboard(session),
            super::STATUS_PATH => AdminResponse::json(200, &self.status()),
            "/admin/people" => {
                let (notice, enrolled) = self.take_flash(session);
                self.people_page(session, notice, enrolled)
            }
            "/admin/events" => self.events(session, query),
            "/admin/events.csv" => self.events_csv(query),
            "/admin/door" => self.door_page(session, self.take_flash(session).0),
            "/admin/codes" => self.codes_view(session, query, self.take_flash(session).0),
            "/admin/tablets" => self.tablets_page(session),
            "/admin/tablets/facegate-door.crt" => self.tablet_certificate(session),
            _ => {
                if let Some(name) = path.strip_prefix("/admin/thumbnails/") {
                    return self.thumbnail(session, name);
                }
                if let Some(id) = path.strip_prefix("/admin/events/") {
                    return self.event(session, id);
                }
                if let Some(rest) = path.strip_prefix("/admin/snapshots/") {
                    return self.snapshot(session, rest);
                }
                self.not_found(session)
            }
        }
    }

    fn door_state(&self) -> &'static str {
        let door = &self.ctx.door;
        if !door.is_available() {
            "unavailable"
        } else if door.is_open() {
            "open"
        } else {
            "locked"
        }
    }

    /// The door contact as the pages show it: `open`, `closed`, `unknown` or `not fitted`.
    fn contact_text(&self) -> &'static str {
        if self.ctx.config.door.contact.enabled {
            self.ctx.door.input_status().contact.as_str()
        } else {
            "not fitted"
        }
    }

    fn status(&self) -> Value {
        json!({
            "door": self.door_state(),
            "door_available": self.ctx.door.is_available(),
            "health": (self.ctx.health)(),
        })
    }

    fn gallery_file(&self) -> GalleryFile {
        GalleryFile::of(&self.ctx.config, &self.ctx.embedder)
    }

    fn gallery(&self) -> Result<Gallery, GalleryError> {
        self.gallery_file().load()
    }

    fn thumbnail_dir(&self) -> PathBuf {
        enrollment::thumbnail_dir(&self.ctx.config.state_dir)
    }

    /// Table rows for audit entries: a snapshot's thumbnail when one was stored, else the
    /// recognised person's first enrolled thumbnail.
    fn rows(&self, entries: &[Entry]) -> Vec<pages::DecisionRow> {
        let zone = self.zone();
        let faces: HashMap<String, String> = self
            .gallery()
            .map(|g| {
                g.people()
                    .iter()
                    .filter_map(|p| {
                        let first = p.samples.iter().find_map(|s| s.thumbnail.clone())?;
                        Some((p.name.clone(), first))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let snapshot_dir = self.ctx.config.snapshot_dir();
        entries
            .iter()
            .map(|e| {
                let has_snapshot = history::snapshot(&snapshot_dir, &e.request_id).is_some();
                let thumbnail = if has_snapshot {
                    Some(format!("/admin/snapshots/{}/thumb", e.request_id))
                } else {
                    e.identity
                        .as_ref()
                        .and_then(|name| faces.get(name))
                        .map(|file| format!("/admin/thumbnails/{file}"))
                };
                let at = history::local(&e.ts, &zone);
                pages::DecisionRow {
                    thumbnail,
                    date: at.format("%Y-%m-%d").to_string(),
                    time: at.format("%H:%M:%S").to_string(),
                    badge: badge(&e.status),
                    status: e.status.clone(),
                    person: e.identity.clone().unwrap_or_else(|| "—".into()),
                    score: e.score.map_or(String::new(), |s| format!("{s:.2}")),
                    door: e.door.clone().unwrap_or_default(),
                    request_id: e.request_id.clone(),
                    has_snapshot,
                }
            })
            .collect()
    }

    fn dashboard(&self, session: &Session) -> AdminResponse {
        let audit_dir = self.ctx.config.audit_dir();
        let today = self.ctx.config.local_today();
        let counted = history::count_matching(
            &audit_dir,
            &Filter::days(today, today, Kinds::Decisions).in_zone(self.zone()),
        );
        let yesterday = today.pred_opt().unwrap_or(today);
        let (latest, _) = history::read(
            &audit_dir,
            &Filter::days(yesterday, today, Kinds::Decisions).in_zone(self.zone()),
            20,
        );
        let health = (self.ctx.health)();
        let inputs = self.ctx.door.input_status();
        let page = pages::Dashboard {
            chrome: self.chrome(Some(session), "dashboard"),
            door_state: self.door_state(),
            door_available: self.ctx.door.is_available(),
            contact: self.contact_text(),
            alarm: inputs.alarm.map_or("", |alarm| alarm.as_str()),
            health_status: health["status"].as_str().unwrap_or("unknown").to_string(),
            uptime: uptime(health["uptime_s"].as_u64().unwrap_or(0)),
            people: health["people"].as_u64().unwrap_or(0) as usize,
            code_entry_alarm: health["code_entry_retry_after_s"].as_u64().map(|seconds| {
                format!(
                    "Alarm: too many wrong visitor codes from the network. Code entry is paused for everyone for {} more minutes; the audit log lists the attempts.",
                    seconds.div_ceil(60)
                )
            }),
            counts: pages::Counts {
                granted: counted.granted,
                unknown: counted.unknown,
                spoof: counted.spoof,
                codes: counted.codes,
                not_allowed: counted.not_allowed,
            },
            decisions: self.rows(&latest),
        };
        AdminResponse::page(200, &page)
    }

    fn people_page(
        &self,
        session: &Session,
        notice: Option<Notice>,
        result: Option<pages::EnrolResult>,
    ) -> AdminResponse {
        let mut chrome = self.chrome(Some(session), "people");
        let thumbnails = self.thumbnail_dir();
        let zone = self.zone();
        let now = jiff::Timestamp::now().to_zoned(zone.clone());
        let gallery = self.gallery();
        let groups = gallery.as_ref().map_or_else(
            |_| Vec::new(),
            |gallery| {
                gallery
                    .groups()
                    .iter()
                    .map(|(name, group)| pages::GroupView {
                        name: name.clone(),
                        schedule: group.schedule.to_string(),
                        members: gallery
                            .people()
                            .iter()
                            .filter(|p| p.permissions.groups.contains(name))
                            .count(),
                    })
                    .collect()
            },
        );
        let people = match &gallery {
            Ok(gallery) => gallery
                .people()
                .iter()
                .map(|person| pages::PersonView {
                    access: access_view(&person.permissions, gallery.groups(), &now),
                    name: person.name.clone(),
                    samples: person
                        .samples
                        .iter()
                        .enumerate()
                        .map(|(index, s)| pages::SampleView {
                            index,
                            key: sample_key(s).to_string(),
                            source: s.source.clone(),
                            enrolled_at: s.enrolled_at.clone(),
                            thumbnail: s
                                .thumbnail
                                .as_ref()
                                .filter(|file| thumbnails.join(file).is_file())
                                .map(|file| format!("/admin/thumbnails/{file}")),
                        })
                        .collect(),
                })
                .collect(),
            Err(err) => {
                chrome.notice = Notice::bad(err.to_string());
                Vec::new()
            }
        };
        if notice.is_some() {
            chrome.notice = notice;
        }
        let page = pages::People {
            chrome,
            people,
            groups,
            zone: zone.iana_name().unwrap_or("the system's zone").to_string(),
            result,
        };
        AdminResponse::page(200, &page)
    }

    pub(super) fn enrol(
        &self,
        session: &Session,
        fields: &Fields,
        uploads: &[Upload],
        peer: &str,
    ) -> AdminResponse {
        let Some(name) = fields.get("name") else {
            return self.after_post(
                session,
                PEOPLE,
                Notice::bad("Give the person a name."),
                None,
            );
        };
        let photos: Vec<&Upload> = uploads.iter().filter(|u| u.field == "photos").collect();
        if photos.is_empty() {
            return self.after_post(
                session,
                PEOPLE,
                Notice::bad("Choose at least one photo."),
                None,
            );
        }
        let candidates: Vec<Candidate> = photos
            .iter()
            .map(|u| Candidate {
                source: if u.file_name.is_empty() {
                    "photo".into()
                } else {
                    u.file_name.clone()
                },
                bytes: &u.bytes,
            })
            .collect();
        // Held until the enrolment is saved, so that no other change to the gallery is lost.
        let _editing = match self.gallery_file().lock_for_edit() {
            Ok(lock) => lock,
            Err(err) => {
                return self.after_post(session, PEOPLE, Notice::bad(err.to_string()), None)
            }
        };
        let mut gallery = match self.gallery() {
            Ok(gallery) => gallery,
            Err(err) => {
                return self.after_post(session, PEOPLE, Notice::bad(err.to_string()), None)
            }
        };
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let config = &self.ctx.config;
        let enrolled = self.with_recognizer(|recognizer| {
            enrollment::enroll(
                recognizer,
                &mut gallery,
                name,
                &candidates,
                &config.frame,
                config.recognition.lookalike_warning,
                &now,
            )
        });
        let report = match enrolled {
            Ok(Ok(report)) => report,
            Ok(Err(EnrolmentError::NothingAccepted { reasons, .. })) => {
                let result = pages::EnrolResult {
                    headline: format!("Nothing enrolled for {name}"),
                    verdicts: reasons
                        .into_iter()
                        .map(|reason| {
                            let (source, text) = reason
                                .split_once(": ")
                                .map_or((String::new(), reason.clone()), |(s, t)| {
                                    (s.to_string(), format!("refused: {t}"))
                                });
                            pages::VerdictView {
                                source,
                                accepted: false,
                                text,
                            }
                        })
                        .collect(),
                    warnings: Vec::new(),
                };
                return self.after_post(session, PEOPLE, None, Some(result));
            }
            Ok(Err(err)) => {
                return self.after_post(session, PEOPLE, Notice::bad(err.to_string()), None)
            }
            Err(err) => {
                log::error!("admin enrolment: the models did not load: {err}");
                return self.after_post(session, PEOPLE, Notice::bad(err.to_string()), None);
            }
        };
        let stored = enrollment::store_thumbnails(&self.thumbnail_dir(), &report)
            .map_err(|err| format!("the face thumbnails could not be stored: {err}"))
            .and_then(|()| {
                gallery
                    .save(&config.gallery_path())
                    .map_err(|err| err.to_string())
            });
        if let Err(problem) = stored {
            log::error!("admin enrolment of {name:?} not saved: {problem}");
            return self.after_post(session, PEOPLE, Notice::bad(problem), None);
        }
        log::info!(
            "admin enrolled {name:?}: {} of {} photos accepted",
            report.accepted(),
            photos.len()
        );
        self.audit(json!({
            "action": "enrol",
            "identity": name,
            "accepted": report.accepted(),
            "refused": photos.len() - report.accepted(),
            "remote": peer,
        }));
        let result = pages::EnrolResult {
            headline: format!(
                "Enrolled {name}: {} of {} photos accepted",
                report.accepted(),
                photos.len()
            ),
            verdicts: report
                .verdicts
                .iter()
                .map(|(source, verdict)| match verdict {
                    Verdict::Accepted { face_score } => pages::VerdictView {
                        source: source.clone(),
                        accepted: true,
                        text: format!("accepted (face score {face_score:.2})"),
                    },
                    Verdict::Rejected { reason } => pages::VerdictView {
                        source: source.clone(),
                        accepted: false,
                        text: format!("refused: {reason}"),
                    },
                })
                .collect(),
            warnings: enrollment::warnings(&report, name, self.ctx.threshold),
        };
        self.after_post(session, PEOPLE, None, Some(result))
    }

    /// Edits the gallery under its lock, then redirects to the people page (Post/Redirect/Get): a
    /// change that succeeded is logged, audited and shown as `changed` describes it, a refused one
    /// shows its cause.
    fn edit_gallery<T>(
        &self,
        session: &Session,
        edit: impl FnOnce(&mut Gallery) -> Result<T, GalleryError>,
        changed: impl FnOnce(T) -> Changed,
    ) -> AdminResponse {
        match self.gallery_file().edit(edit) {
            Ok(value) => {
                let Changed { audit, notice } = changed(value);
                log::info!("admin: {notice}");
                self.audit(audit);
                self.after_post(session, PEOPLE, Notice::ok(notice), None)
            }
            Err(err) => self.after_post(session, PEOPLE, Notice::bad(err.to_string()), None),
        }
    }

    /// The configured `timezone` (checked when the config was loaded).
    fn zone(&self) -> jiff::tz::TimeZone {
        self.ctx
            .config
            .time_zone()
            .unwrap_or(jiff::tz::TimeZone::UTC)
    }

    /// POST /admin/people/access: a person's dates, hours, groups and suspension, all at once.
    pub(super) fn set_access(
        &self,
        session: &Session,
        fields: &Fields,
        peer: &str,
    ) -> AdminResponse {
        let name = fields.get("name").unwrap_or_default();
        let permissions = match permissions_from_form(fields) {
            Ok(permissions) => permissions,
            Err(problem) => {
                return self.after_post(
                    session,
                    PEOPLE,
                    Notice::bad(format!("{name}: {problem}")),
                    None,
                )
            }
        };
        let audit = json!({
            "action": "set_access",
            "identity": name,
            "valid_from": permissions.valid_from,
            "valid_until": permissions.valid_until,
            "schedule": permissions.schedule,
            "suspended": permissions.suspended,
            "groups": permissions.groups,
            "remote": peer,
        });
        self.edit_gallery(
            session,
            |g| g.set_permissions(name, permissions),
            |()| Changed {
                audit,
                notice: format!("Saved the access of {name}."),
            },
        )
    }

    /// POST /admin/groups/set: creates a group or changes its hours.
    pub(super) fn set_group(
        &self,
        session: &Session,
        fields: &Fields,
        peer: &str,
    ) -> AdminResponse {
        let name = fields.get("group").unwrap_or_default().trim();
        let schedule = match WeeklyHours::parse(fields.get("schedule").unwrap_or_default()) {
            Ok(schedule) => schedule,
            Err(err) => {
                return self.after_post(session, PEOPLE, Notice::bad(err.to_string()), None)
            }
        };
        let spec = schedule.to_string();
        self.edit_gallery(
            session,
            |g| g.set_group(name, schedule),
            |()| Changed {
                audit: json!({"action": "set_group", "group": name, "schedule": spec, "remote": peer}),
                notice: format!("Saved the group {name}."),
            },
        )
    }

    pub(super) fn remove_person(
        &self,
        session: &Session,
        fields: &Fields,
        peer: &str,
    ) -> AdminResponse {
        let name = fields.get("name").unwrap_or_default();
        self.edit_gallery(
            session,
            |g| g.remove(name),
            |person| {
                enrollment::remove_thumbnails(&self.thumbnail_dir(), &person.samples);
                Changed {
                    audit: json!({"action": "remove_person", "identity": name, "remote": peer}),
                    notice: format!("Removed {name}."),
                }
            },
        )
    }

    pub(super) fn remove_sample(
        &self,
        session: &Session,
        fields: &Fields,
        peer: &str,
    ) -> AdminResponse {
        let name = fields.get("name").unwrap_or_default();
        let Some(index) = fields.get("index").and_then(|i| i.parse::<usize>().ok()) else {
            return self.after_post(session, PEOPLE, Notice::bad("No photo was chosen."), None);
        };
        let expected = fields.get("sample").unwrap_or_default();
        self.edit_gallery(
            session,
            |g| {
                let still_there = g
                    .people()
                    .iter()
                    .find(|p| p.name == name)
                    .and_then(|p| p.samples.get(index))
                    .is_some_and(|s| sample_key(s) == expected);
                if !still_there {
                    return Err(GalleryError::NoSuchSample {
                        name: name.to_string(),
                        index,
                    });
                }
                g.remove_sample(name, index)
            },
            |sample| {
                enrollment::remove_thumbnails(&self.thumbnail_dir(), [&sample]);
                Changed {
                    audit: json!({
                        "action": "remove_sample",
                        "identity": name,
                        "source": sample.source,
                        "remote": peer,
                    }),
                    notice: format!("Removed the photo {} of {name}.", sample.source),
                }
            },
        )
    }

    fn thumbnail(&self, session: &Session, name: &str) -> AdminResponse {
        if !enrollment::is_thumbnail_name(name) {
            return self.not_found(session);
        }
        match std::fs::read(self.thumbnail_dir().join(name)) {
            Ok(bytes) => AdminResponse::new(200, "image/jpeg", bytes)
                .with("Cache-Control", "private, max-age=86400"),
            Err(_) => self.not_found(session),
        }
    }

    fn events(&self, session: &Session, query: &str) -> AdminResponse {
        let EventQuery {
            filter,
            page,
            problem,
        } = parse_event_query(query, &self.zone());
        let (entries, more) =
            history::read(&self.ctx.config.audit_dir(), &filter, history::MAX_ENTRIES);
        let pages_total = entries.len().div_ceil(PAGE_SIZE).max(1);
        let page = page.min(pages_total - 1);
        let shown = &entries[(page * PAGE_SIZE).min(entries.len())..]
            [..PAGE_SIZE.min(entries.len().saturating_sub(page * PAGE_SIZE))];
        let pairs = filter_pairs(&filter);
        let link = |to_page: usize| {
            let mut with_page = pairs.clone();
            with_page.push(("page", to_page.to_string()));
            format!("/admin/events?{}", query_string(&with_page))
        };
        let zone = self.zone();
        let mut summary = format!(
            "{} events from {} to {} ({})",
            entries.len(),
            filter.from,
            filter.to,
            zone.iana_name().unwrap_or("local time")
        );
        if more {
            summary.push_str(&format!(
                "; only the newest {} are listed",
                history::MAX_ENTRIES
            ));
        }
        if pages_total > 1 {
            summary.push_str(&format!(" · page {} of {pages_total}", page + 1));
        }
        let mut chrome = self.chrome(Some(session), "events");
        chrome.notice = problem.and_then(Notice::bad);
        let names = self
            .gallery()
            .map(|g| g.people().iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default();
        let selected = filter.status.clone().unwrap_or_default();
        let mut statuses: Vec<(String, bool)> = STATUSES
            .iter()
            .map(|s| (s.to_string(), *s == selected))
            .collect();
        if !selected.is_empty() && !STATUSES.contains(&selected.as_str()) {
            statuses.push((selected.clone(), true));
        }
        let view = pages::Events {
            chrome,
            filter: pages::FilterView {
                person: filter.person.clone().unwrap_or_default(),
                from: filter.from.to_string(),
                to: filter.to.to_string(),
            },
            statuses,
            names,
            query: query_string(&pairs),
            summary,
            decisions: self.rows(shown),
            newer: (page > 0).then(|| link(page - 1)),
            older: (page + 1 < pages_total).then(|| link(page + 1)),
        };
        AdminResponse::page(200, &view)
    }

    fn events_csv(&self, query: &str) -> AdminResponse {
        let EventQuery { filter, .. } = parse_event_query(query, &self.zone());
        let (entries, _) =
            history::read(&self.ctx.config.audit_dir(), &filter, history::MAX_ENTRIES);
        AdminResponse::new(
            200,
            "text/csv; charset=utf-8",
            history::csv(&entries).into_bytes(),
        )
        .with(
            "Content-Disposition",
            format!(
                "attachment; filename=\"facegate-events-{}-{}.csv\"",
                filter.from, filter.to
            ),
        )
    }

    fn event(&self, session: &Session, id: &str) -> AdminResponse {
        let Some(files) = history::snapshot(&self.ctx.config.snapshot_dir(), id) else {
            return self.not_found(session);
        };
        let sidecar = std::fs::read_to_string(&files.sidecar)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|value| serde_json::to_string_pretty(&value).ok())
            .unwrap_or_else(|| "(the sidecar could not be read)".into());
        let page = pages::Event {
            chrome: self.chrome(Some(session), "events"),
            id: id.to_string(),
            sidecar,
        };
        AdminResponse::page(200, &page)
    }

    /// `/admin/snapshots/<id>` (the image as stored), `<id>.json` (the sidecar), `<id>/thumb`.
    fn snapshot(&self, session: &Session, rest: &str) -> AdminResponse {
        let (id, part) = if let Some(id) = rest.strip_suffix(".json") {
            (id, "sidecar")
        } else if let Some(id) = rest.strip_suffix("/thumb") {
            (id, "thumb")
        } else {
            (rest, "image")
        };
        let Some(files) = history::snapshot(&self.ctx.config.snapshot_dir(), id) else {
            return self.not_found(session);
        };
        let read = |path: &Path| std::fs::read(path).ok();
        let answer = match part {
            "sidecar" => read(&files.sidecar).map(|b| ("application/json", b)),
            "thumb" => read(&files.image)
                .and_then(|bytes| self.small_jpeg(&bytes))
                .map(|b| ("image/jpeg", b)),
            _ => read(&files.image).map(|b| (files.content_type, b)),
        };
        match answer {
            Some((content_type, bytes)) => AdminResponse::new(200, content_type, bytes)
                .with("Cache-Control", "private, max-age=86400"),
            None => self.not_found(session),
        }
    }

    /// A small JPEG of a stored frame, for the decision tables.
    fn small_jpeg(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let decoded = crate::frame::decode_image(bytes, &self.ctx.config.frame).ok()?;
        let image: &Mat = &decoded.image;
        let height = SNAPSHOT_THUMB_HEIGHT;
        let width = (image.cols() * height / image.rows().max(1)).max(1);
        let mut small = Mat::default();
        imgproc::resize(
            image,
            &mut small,
            Size::new(width, height),
            0.0,
            0.0,
            imgproc::INTER_AREA,
        )
        .ok()?;
        crate::frame::jpeg::encode_bgr(&small, 80).ok()
    }

    fn door_page(&self, session: &Session, notice: Option<Notice>) -> AdminResponse {
        let today = self.ctx.config.local_today();
        let yesterday = today.pred_opt().unwrap_or(today);
        let zone = self.zone();
        let (lines, _) = history::read(
            &self.ctx.config.audit_dir(),
            &Filter::days(yesterday, today, Kinds::Door).in_zone(zone.clone()),
            20,
        );
        let mut chrome = self.chrome(Some(session), "door");
        chrome.notice = notice;
        let page = pages::Door {
            chrome,
            door_state: self.door_state(),
            contact: self.contact_text(),
            actuations: lines
                .iter()
                .map(|e| {
                    let state = e.state.clone().unwrap_or_default();
                    pages::ActuationRow {
                        date: history::local(&e.ts, &zone).format("%Y-%m-%d").to_string(),
                        time: history::local(&e.ts, &zone)
                            .format("%H:%M:%S%.3f")
                            .to_string(),
                        badge: badge(&state),
                        state,
                        reason: match &e.error {
                            Some(error) => format!("{} (failed: {error})", e.status),
                            None => e.status.clone(),
                        },
                        cause: e
                            .identity
                            .clone()
                            .or_else(|| e.by.clone())
                            .unwrap_or_else(|| "—".into()),
                        request_id: e.request_id.clone(),
                    }
                })
                .collect(),
        };
        AdminResponse::page(200, &page)
    }

    /// Acknowledges the door alarm the dashboard showed (forced or held open), audited, then back to
    /// the dashboard (Post/Redirect/Get). An alarm raised since the page was drawn is left for its
    /// own acknowledgement.
    pub(super) fn acknowledge_alarm(&self, fields: &Fields, peer: &str) -> AdminResponse {
        let Some(shown) = fields.get("alarm").and_then(Alarm::parse) else {
            return AdminResponse::redirect("/admin/");
        };
        let taken = self.ctx.door.acknowledge_alarm(shown);
        log::info!(
            "admin from {peer} acknowledged the door alarm {} (active: {:?})",
            shown.as_str(),
            self.ctx.door.input_status().alarm.map(|a| a.as_str())
        );
        self.audit(json!({
            "action": "alarm_acknowledged",
            "alarm": shown,
            "taken": taken,
            "remote": peer,
        }));
        AdminResponse::redirect("/admin/")
    }

    /// The test pulse: the same relay path as a grant, audited with the admin as its cause.
    pub(super) fn pulse(
        &self,
        session: &Session,
        peer: &str,
        received_at: Instant,
    ) -> AdminResponse {
        let request_id = (self.ctx.next_id)();
        let report = self.ctx.door.request_open(OpenRequest {
            request_id: request_id.clone(),
            cause: OpenCause::Admin,
            not_after: pulse_deadline(received_at, &self.ctx.config.door),
        });
        log::info!(
            "request_id={request_id} admin test pulse from {peer}: door={}",
            report.detail()
        );
        self.audit(json!({
            "action": "door_test",
            "request_id": request_id,
            "identity": "admin",
            "door": report,
            "door_detail": report.detail(),
            "remote": peer,
        }));
        let notice = match report {
            DoorReport::Opened => Notice::ok(format!(
                "Test pulse sent ({request_id}): the door is unlocked for the hold time."
            )),
            DoorReport::Extended | DoorReport::AlreadyOpen => Notice::ok(format!(
                "Test pulse sent ({request_id}): the door was already open ({}).",
                report.as_str()
            )),
            DoorReport::Pending => Notice::ok(format!(
                "Test pulse sent ({request_id}); the relay has not reported yet: see the actuations below."
            )),
            DoorReport::CoolingDown | DoorReport::Locked(_) | DoorReport::Fault => {
                Notice::bad(format!(
                    "The door did not open for the test ({}); try again in a moment.",
                    report.detail()
                ))
            }
        };
        self.after_post(session, "/admin/door", notice, None)
    }
}

/// What a gallery edit did, once it succeeded: its audit line, and the notice the next page shows
/// (also logged).
struct Changed {
    audit: serde_json::Value,
    notice: String,
}

/// A test pulse is due within `door.max_decision_age_ms` of its arrival at the front, as a frame is:
/// counted from when the admin thread got to it, a pulse queued behind an enrolment opened the door
/// seconds after the click.
fn pulse_deadline(received_at: Instant, door: &DoorConfig) -> Instant {
    received_at + std::time::Duration::from_millis(door.max_decision_age_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pulse_queued_behind_a_slow_request_is_due_from_its_arrival() {
        let door = DoorConfig::default();
        let age = std::time::Duration::from_millis(door.max_decision_age_ms);
        let arrived = Instant::now();
        // The admin thread gets to it only after a slow request ahead of it (an enrolment).
        let handled = arrived + age * 2;
        assert!(pulse_deadline(arrived, &door) < handled);
        assert_eq!(pulse_deadline(arrived, &door), arrived + age);
    }

    #[test]
    fn only_our_thumbnail_names_are_served() {
        let valid_thumbnail = enrollment::is_thumbnail_name;
        assert!(valid_thumbnail("0123456789abcdef01234567.jpg"));
        for bad in [
            "../gallery.json",
            "0123456789abcdef0123456.jpg",
            "0123456789ABCDEF01234567.jpg",
            "0123456789abcdef01234567.png",
            "0123456789abcdef01234567.jpg/..",
            "",
        ] {
            assert!(!valid_thumbnail(bad), "{bad}");
        }
    }

    #[test]
    fn event_queries_default_to_the_last_week_and_report_bad_dates() {
        let q = parse_event_query(
            "status=granted&person=Ann+Lee&from=2026-03-05&to=2026-03-01&page=2",
            &jiff::tz::TimeZone::UTC,
        );
        assert_eq!(q.filter.status.as_deref(), Some("granted"));
        assert_eq!(q.filter.person.as_deref(), Some("Ann Lee"));
        assert_eq!(
            q.filter.from.to_string(),
            "2026-03-01",
            "swapped into order"
        );
        assert_eq!(q.filter.to.to_string(), "2026-03-05");
        assert_eq!(q.page, 2);
        let q = parse_event_query("from=yesterday", &jiff::tz::TimeZone::UTC);
        assert!(q.problem.is_some());
        assert_eq!((q.filter.to - q.filter.from).num_days(), 6);
        assert_eq!(
            query_string(&filter_pairs(
                &parse_event_query(
                    "person=a%26b&from=2026-01-01&to=2026-01-02",
                    &jiff::tz::TimeZone::UTC
                )
                .filter
            )),
            "person=a%26b&from=2026-01-01&to=2026-01-02"
        );
    }
}
