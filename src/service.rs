//! What the daemon does with one request once its body is in: parse the body, check the image,
//! recognise, decide, move the door and build the one record the answer is rendered from; then, after
//! the answer, the audit line, the event and the snapshot, all under the request's id. It knows
//! nothing of HTTP: the transport hands it bytes and renders what it returns.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::audit::{AuditWriter, Tally};
use crate::body::{parse_code_post, parse_frame_post, BodyError, CodePost, FramePost};
use crate::codes::{self, CodeChecker, Verdict};
use crate::config::Config;
use crate::confirmation::{Confirmations, TabletKey};
use crate::decision::{
    confirming_person, decide, decide_with, round_score, Checks, Decision, Freshness,
    FreshnessRules, Liveness, Outcome, Status,
};
use crate::door::{DoorController, OpenCause, OpenRequest};
use crate::events::EventRing;
use crate::frame::{self, CheckedImage, FrameError, RefusedImage};
use crate::gallery::{Gallery, LiveGallery};
use crate::gallery_bundle;
use crate::metrics::Metrics;
use crate::mqtt::Remote;
use crate::permission::{self, Access, Denial, Reason};
use crate::ratelimit::RateLimitedLog;
use crate::recognition::{recognize_image, Recognition, RecognitionError};
use crate::record::{
    rounded, CodeCheck, DecisionRecord, Endpoint, ModelLiveness, Recognised, Refusal, Timings,
};
use crate::snapshots::SnapshotWriter;
use crate::vision::{LivenessReading, Recognizer};

/// How often a failing disk is logged.
const DISK_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Everything the workers share.
pub(crate) struct Service {
    pub config: Config,
    pub threshold: f32,
    pub metrics: Arc<Metrics>,
    pub events: EventRing,
    pub door: Arc<DoorController>,
    pub gallery: LiveGallery,
    pub audit: AuditWriter,
    pub snapshots: Option<SnapshotWriter>,
    pub started: Instant,
    /// Visitor codes and the per-address lockout.
    pub codes: CodeChecker,
    freshness: FreshnessRules,
    snapshot_errors: RateLimitedLog,
    /// Decisions go to the MQTT broker too (a no-op while MQTT is off).
    pub remote: Arc<Remote>,
    /// Each tablet's streak of grants (`door.confirm_frames`): the one recognition state across requests.
    confirmations: Mutex<Confirmations>,
    /// `timezone`: the local time permissions and codes are judged in.
    zone: jiff::tz::TimeZone,
    code_hours: Option<permission::WeeklyHours>,
}

/// The tablet's confirmation a frame is judged within.
pub struct Confirming<'a> {
    pub table: &'a Mutex<Confirmations>,
    pub tablet: TabletKey,
}

/// A request whose body has been read, as the transport hands it over.
pub(crate) struct FrameRequest {
    pub request_id: String,
    pub endpoint: Endpoint,
    /// When the request arrived, on the monotonic clock and on the wall clock.
    pub received_at: Instant,
    pub received_wall: DateTime<Utc>,
    pub body: Vec<u8>,
    /// The body's Content-Type, a hint for how to read it.
    pub content_type: Option<String>,
    /// The client's address, for the log and audit line and the code lockout.
    pub remote: Option<std::net::IpAddr>,
    /// The paired tablet that sent it (its device token checked by the front).
    pub tablet: Option<String>,
}

/// The record the answer is rendered from, plus what is written after the answer is sent.
pub(crate) struct Handled {
    pub record: DecisionRecord,
    snapshot: Option<Snapshot>,
    /// Counted into the client's summary (`audit::Tally`) instead of an audit line of its own.
    summary: Option<(Tally, Option<IpAddr>)>,
}

impl Handled {
    fn without_snapshot(record: DecisionRecord) -> Handled {
        Handled {
            record,
            snapshot: None,
            summary: None,
        }
    }
}

/// A frame kept after the answer, under the request's id.
struct Snapshot {
    image: Vec<u8>,
    ext: &'static str,
    reason: &'static str,
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        threshold: f32,
        metrics: Arc<Metrics>,
        door: Arc<DoorController>,
        gallery: LiveGallery,
        audit: AuditWriter,
        snapshots: Option<SnapshotWriter>,
        codes: CodeChecker,
        remote: Arc<Remote>,
    ) -> Service {
        Service {
            // Both were checked when the config was loaded.
            zone: config.time_zone().unwrap_or(jiff::tz::TimeZone::UTC),
            code_hours: config.code_hours().ok().flatten(),
            events: EventRing::new(config.http.events_kept),
            freshness: FreshnessRules::of(&config.door),
            confirmations: Mutex::new(Confirmations::new(
                config.door.confirm_frames,
                Duration::from_millis(config.door.confirm_window_ms),
            )),
            config,
            threshold,
            metrics,
            door,
            gallery,
            audit,
            snapshots,
            started: Instant::now(),
            codes,
            snapshot_errors: RateLimitedLog::new(DISK_ERROR_LOG_INTERVAL),
            remote,
        }
    }

    pub fn health(&self) -> Value {
        let gallery = self.gallery.current();
        let inputs = self.door.input_status();
        let mut health = json!({
            "status": "ok",
            "door_available": self.door.is_available(),
            "contact": inputs.contact,
            "alarm": inputs.alarm,
            "logging": crate::logging::health().as_str(),
            "people": gallery.people().len(),
            "gallery_sequence": gallery.sequence(),
            "gallery_age_s": gallery_bundle::age_s(&gallery, Utc::now()),
            "uptime_s": self.started.elapsed().as_secs(),
            "code_entry": "open",
        });
        if let Some(paused) = self.codes.paused(Instant::now()) {
            health["code_entry"] = json!("paused");
            health["code_entry_retry_after_s"] = json!(whole_seconds(paused));
        }
        health
    }

    /// Seconds since the building gallery in use was exported (`None`: not from a building gallery).
    pub(crate) fn gallery_age_s(&self) -> Option<u64> {
        gallery_bundle::age_s(&self.gallery.current(), Utc::now())
    }

    pub(crate) fn metrics_text(&self) -> String {
        if let Some(store) = &self.snapshots {
            let (count, bytes) = store.usage();
            self.metrics.set_snapshot_usage(count as u64, bytes);
        }
        self.metrics.render()
    }

    /// GET /events?limit=N&before=SEQ, from the query string.
    pub(crate) fn events_page(&self, query: &str) -> Result<Value, Refusal> {
        let mut limit = 50usize;
        let mut before = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (key, value.parse::<u64>()) {
                ("limit", Ok(n)) if (1..=500).contains(&n) => limit = n as usize,
                ("before", Ok(n)) => before = Some(n),
                _ => {
                    return Err(Refusal {
                        http: 400,
                        error: "bad_query",
                        message: format!("`{pair}` is not understood: use limit=1..500 and before=<seq from next_before>"),
                    })
                }
            }
        }
        let page = self.events.page(limit, before);
        Ok(json!({ "events": page.events, "next_before": page.next_before }))
    }

    /// A request refused before it reached a decision (bad body, full queue, ...): logged, counted
    /// and audited like a decision, the door untouched.
    pub fn refuse(&self, request_id: &str, endpoint: Endpoint, refusal: Refusal) -> Handled {
        self.conclude(DecisionRecord::refused(request_id, endpoint, refusal))
    }

    /// A request refused before any worker saw it (no token, a head or body the front will not
    /// take): counted in /metrics and summarised per client address, never a log or audit line each,
    /// so that a flood without a credential cannot push the door's history out.
    pub fn refuse_before_worker(
        &self,
        request_id: &str,
        endpoint: Endpoint,
        refusal: Refusal,
        remote: Option<IpAddr>,
    ) -> Handled {
        let mut record = DecisionRecord::refused(request_id, endpoint, refusal);
        record.remote = remote.map(|ip| ip.to_string());
        self.conclude_summarised(record, Tally::Refused, remote)
    }

    /// Every worker busy and the queue full.
    pub fn busy(&self, request_id: &str, endpoint: Endpoint) -> Handled {
        self.conclude(DecisionRecord::busy(request_id, endpoint))
    }

    /// A fault of the daemon's own (a panic while handling the request).
    pub fn internal_error(&self, request_id: &str, endpoint: Endpoint) -> Handled {
        self.refuse(request_id, endpoint, internal_error())
    }

    /// A frame post whose body has been read: one pass from the body to the record.
    pub(crate) fn handle(&self, recognizer: &mut Recognizer, request: FrameRequest) -> Handled {
        let FrameRequest {
            request_id,
            endpoint,
            received_at,
            received_wall,
            body,
            content_type,
            remote,
            tablet,
        } = request;
        let mut record = DecisionRecord::new(&request_id, endpoint, Status::Error);
        record.remote = remote.map(|ip| ip.to_string());
        record.tablet = tablet;
        let max_image_bytes = self.config.frame.max_image_bytes;
        if endpoint == Endpoint::Code {
            return match parse_code_post(&body, content_type.as_deref(), max_image_bytes) {
                Ok(post) => {
                    drop(body);
                    self.check_code(record, post, remote, received_at, received_wall)
                }
                Err(err) => {
                    record.refusal = Some(body_refusal(&err));
                    self.conclude(record)
                }
            };
        }
        let post = match parse_frame_post(&body, content_type.as_deref(), max_image_bytes) {
            Ok(post) => post,
            Err(err) => {
                record.refusal = Some(body_refusal(&err));
                return self.conclude(record);
            }
        };
        drop(body);
        record.frame_id = post.frame_id.clone();
        record.captured_at = post.captured_at;
        match endpoint {
            Endpoint::Save => self.save_failed_pin(record, post),
            Endpoint::Image if self.config.door.pause_while_open => {
                match self.door.busy_for(Instant::now()) {
                    Some(busy) => self.paused(record, busy, remote),
                    None => self.decide_frame(
                        recognizer,
                        record,
                        post,
                        remote,
                        received_at,
                        received_wall,
                    ),
                }
            }
            Endpoint::Image | Endpoint::Identify | Endpoint::Code => {
                self.decide_frame(recognizer, record, post, remote, received_at, received_wall)
            }
        }
    }

    /// A frame while the door is open or cooling down after a grant: answered at once, not looked at,
    /// and counted into the tablet's summary rather than audited one by one.
    fn paused(
        &self,
        mut record: DecisionRecord,
        busy: Duration,
        remote: Option<IpAddr>,
    ) -> Handled {
        record.status = Status::Paused;
        record.retry_after_ms = Some(busy.as_micros().div_ceil(1000) as u64);
        self.conclude_summarised(record, Tally::Paused, remote)
    }

    /// POST /code: a locked-out address is refused before its code is looked at; a valid code opens
    /// the door like a fresh grant; a failure or lockout keeps the frame, if one came, as evidence.
    fn check_code(
        &self,
        mut record: DecisionRecord,
        post: CodePost,
        remote: Option<std::net::IpAddr>,
        received_at: Instant,
        received_wall: DateTime<Utc>,
    ) -> Handled {
        record.frame_id = post.frame_id.clone();
        record.captured_at = post.captured_at;
        let freshness =
            Freshness::of_frame(received_at, received_wall, post.captured_at, self.freshness);
        let now = Instant::now();
        // Without a peer address (not on TCP), every such client shares one lockout.
        let address = remote.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let local = jiff::Timestamp::now().to_zoned(self.zone.clone());
        // Outside `codes.hours`, and on a day off of the codes' calendar, no code is looked at (nor
        // consumed, nor counted as a failure): none could be valid.
        if let Some(denial) =
            codes::entry::closed_at(self.codes.calendar(), self.code_hours.as_ref(), &local)
        {
            record.status = Status::NotAllowed;
            explain_denial(&mut record, denial, &self.zone);
            record.code = Some(CodeCheck::default());
            return self.conclude(record);
        }
        let verdict = self.codes.check(
            address,
            &post.code,
            permission::chrono_date(local.date()),
            now,
            freshness.is_fresh_at(now),
        );
        let mut check = CodeCheck::default();
        let snapshot_reason = match verdict {
            Ok(Verdict::Granted(matched)) => {
                record.status = Status::Granted;
                record.reason = Some("code");
                check.code_kind = Some(matched.kind.as_str());
                check.code_index = Some(matched.index);
                if let Some(not_after) = freshness.not_after() {
                    let report = self.door.request_open(OpenRequest {
                        request_id: record.request_id.clone(),
                        cause: OpenCause::Code {
                            code_kind: matched.kind.as_str(),
                            code_index: matched.index,
                        },
                        not_after,
                    });
                    record.door = report.as_str();
                    if report.stayed_locked() {
                        check.code_given_back = self.give_back_code(&record, &matched, &post.code);
                    }
                }
                None
            }
            Ok(Verdict::Denied { attempts_left }) => {
                record.status = Status::Denied;
                record.reason = Some("code_failed");
                check.attempts_left = Some(attempts_left);
                // The failure that starts a lockout says how long it lasts, so the tablet can count down.
                if attempts_left == 0 {
                    check.retry_after_s = Some(self.config.codes.lockout_s);
                }
                Some("code_failed")
            }
            Ok(Verdict::LockedOut { retry_after }) => {
                record.status = Status::LockedOut;
                record.reason = Some("code_locked_out");
                check.retry_after_s = Some(whole_seconds(retry_after));
                Some("code_locked_out")
            }
            Ok(Verdict::Paused { retry_after, alarm }) => {
                record.status = Status::LockedOut;
                record.reason = Some("code_entry_paused");
                check.retry_after_s = Some(whole_seconds(retry_after));
                if alarm {
                    self.raise_code_entry_paused(&record.request_id, retry_after);
                }
                None
            }
            Ok(Verdict::Stale) => {
                let stale = decide(&Outcome::NoFace, freshness, Instant::now()).stale;
                record.status = Status::Stale;
                record.message = stale.map(|cause| cause.message(self.freshness));
                None
            }
            Err(err) => {
                log::error!(
                    "request_id={} visitor codes unusable: {err}",
                    record.request_id
                );
                record.refusal = Some(Refusal {
                    http: 503,
                    error: "codes_unavailable",
                    message: "the visitor codes could not be read; see the log".into(),
                });
                None
            }
        };
        record.code = Some(check);
        match (snapshot_reason, post.image) {
            (Some(reason), Some(image)) => {
                let ext = frame::file_extension(&image);
                self.conclude_with_snapshot(record, image, ext, reason)
            }
            _ => self.conclude(record),
        }
    }

    /// A single-use code that matched while the door stayed locked (cooling down, held locked, a
    /// relay fault) is put back, so that the visitor can type it again without it counting as a
    /// failure. `Some(true)` when it was.
    fn give_back_code(
        &self,
        record: &DecisionRecord,
        matched: &crate::codes::CodeMatch,
        given: &str,
    ) -> Option<bool> {
        match self.codes.give_back(matched, given) {
            Ok(given_back) => given_back.then_some(true),
            Err(err) => {
                log::error!(
                    "request_id={} the door stayed locked ({}) but the single-use code could not be put back: {err}",
                    record.request_id, record.door
                );
                None
            }
        }
    }

    /// The building's code failure budget is spent: code entry pauses for everyone. Raised once per
    /// pause: an audit line (kept like a decision), an MQTT event, a warning and a count; the admin page
    /// and /healthz show the pause while it lasts.
    fn raise_code_entry_paused(&self, request_id: &str, pause: Duration) {
        let codes = &self.config.codes;
        log::warn!(
            "request_id={request_id} alarm: {} wrong visitor codes within {} s from all addresses together; code entry is paused for everyone for {} s",
            codes.building_max_failures,
            codes.building_window_s,
            pause.as_secs()
        );
        let line = json!({
            "kind": "alarm",
            "alarm": "code_entry_paused",
            "request_id": request_id,
            "failures": codes.building_max_failures,
            "window_s": codes.building_window_s,
            "pause_s": whole_seconds(pause),
        });
        self.metrics.count_alarm("code_entry_paused");
        self.audit.record(&line);
        self.remote.publish_alarm(&line);
    }

    /// POST /save: the tablet reports a failed PIN entry with the frame; stored before the answer,
    /// since the answer names the stored snapshot.
    fn save_failed_pin(&self, mut record: DecisionRecord, post: FramePost) -> Handled {
        let Some(store) = &self.snapshots else {
            record.status = Status::Error;
            record.refusal = Some(storage_unavailable(
                "the snapshot writer could not be started; see the log".into(),
            ));
            return self.conclude(record);
        };
        record.status = Status::Saved;
        record.bytes = Some(post.image.len());
        record.snapshot_id = Some(record.request_id.clone());
        let ext = frame::file_extension(&post.image);
        match store.save(
            &record.request_id,
            &post.image,
            ext,
            &record.sidecar("pin_failed"),
        ) {
            Ok(_) => self.conclude(record),
            Err(err) => {
                self.snapshot_errors
                    .error(format!("snapshot {} not stored: {err}", record.request_id));
                record.status = Status::Error;
                record.snapshot_id = None;
                record.bytes = None;
                record.refusal = Some(storage_unavailable(format!(
                    "the snapshot could not be stored: {err}"
                )));
                self.conclude(record)
            }
        }
    }

    /// POST /image: check the image, recognise (unless the frame is already too old), decide, and
    /// on a fresh grant ask the door to open.
    fn decide_frame(
        &self,
        recognizer: &mut Recognizer,
        mut record: DecisionRecord,
        post: FramePost,
        remote: Option<IpAddr>,
        received_at: Instant,
        received_wall: DateTime<Utc>,
    ) -> Handled {
        let freshness =
            Freshness::of_frame(received_at, received_wall, post.captured_at, self.freshness);
        // A paired tablet is known by its name; unknown clients (none over HTTP) share the
        // unspecified address.
        let tablet = match &record.tablet {
            Some(name) => TabletKey::Paired(name.clone()),
            None => TabletKey::Address {
                address: remote.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                tablet_id: post.tablet_id.clone(),
            },
        };
        // Garbage is answered as such even when it is also too old to decide on.
        let image = match CheckedImage::check(post.image, &self.config.frame) {
            Ok(image) => image,
            Err(refused) => {
                self.interrupt_confirmation(&tablet);
                return self.bad_image(record, refused);
            }
        };
        let judged = judge(
            recognizer,
            &self.gallery.current(),
            &self.zone,
            self.threshold,
            self.config.liveness.threshold,
            &image,
            freshness,
            self.freshness,
            received_at,
            Some(Confirming {
                table: &self.confirmations,
                tablet: tablet.clone(),
            }),
            &mut record,
        );
        let decision = match judged {
            Ok(decision) => decision,
            Err(RecognitionError::Frame(error)) => {
                self.interrupt_confirmation(&tablet);
                let bytes = image.into_bytes();
                return self.bad_image(record, RefusedImage { error, bytes });
            }
            Err(RecognitionError::Vision(err)) => {
                self.interrupt_confirmation(&tablet);
                log::error!("request_id={} recognition failed: {err}", record.request_id);
                record.refusal = Some(internal_error());
                let ext = image.header().format.extension();
                return self.conclude_with_snapshot(
                    record,
                    image.into_bytes(),
                    ext,
                    "internal_error",
                );
            }
        };
        if let (Some(not_after), Some(identity)) = (decision.open_until, &decision.identity) {
            let report = self.door.request_open(OpenRequest {
                request_id: record.request_id.clone(),
                cause: OpenCause::Face {
                    identity: identity.clone(),
                },
                not_after,
            });
            record.door = report.as_str();
        }
        let keep = match decision.status {
            Status::Unknown => self.config.snapshots.on_unknown,
            Status::NoFace => self.config.snapshots.on_no_face,
            Status::Spoof => self.config.snapshots.on_spoof,
            _ => false,
        };
        if keep {
            let reason = decision.status.as_str();
            let ext = image.header().format.extension();
            self.conclude_with_snapshot(record, image.into_bytes(), ext, reason)
        } else {
            self.conclude(record)
        }
    }

    /// A frame from `tablet` that cannot be a grant ends its streak.
    fn interrupt_confirmation(&self, tablet: &TabletKey) {
        self.confirmations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .interrupt(tablet);
    }

    fn bad_image(&self, mut record: DecisionRecord, refused: RefusedImage) -> Handled {
        let refusal = frame_refusal(&refused.error);
        let reason = refusal.error;
        record.refusal = Some(refusal);
        if self.config.snapshots.on_error {
            let ext = frame::file_extension(&refused.bytes);
            self.conclude_with_snapshot(record, refused.bytes, ext, reason)
        } else {
            self.conclude(record)
        }
    }

    fn conclude_with_snapshot(
        &self,
        record: DecisionRecord,
        image: Vec<u8>,
        ext: &'static str,
        reason: &'static str,
    ) -> Handled {
        let mut handled = self.conclude(record);
        handled.snapshot = Some(Snapshot { image, ext, reason });
        handled
    }

    /// The record is complete: count it and write its log line (the answer follows at once).
    fn conclude(&self, record: DecisionRecord) -> Handled {
        let record = self.count(record);
        if let Some(recognised) = &record.recognised {
            if recognised.timings.stages.detect_ms > 0.0 || record.status != Status::Stale {
                self.observe(&recognised.timings);
            }
        }
        log::log!(record.log_level(), "{}", record.log_line());
        Handled::without_snapshot(record)
    }

    /// The record of a request that is summarised, not audited: counted, logged only at debug level.
    fn conclude_summarised(
        &self,
        record: DecisionRecord,
        tally: Tally,
        remote: Option<IpAddr>,
    ) -> Handled {
        let record = self.count(record);
        log::debug!("{}", record.log_line());
        Handled {
            summary: Some((tally, remote)),
            ..Handled::without_snapshot(record)
        }
    }

    /// Stamps the record and counts it in /metrics by endpoint and status (or error).
    fn count(&self, mut record: DecisionRecord) -> DecisionRecord {
        record.at = Utc::now();
        if record.refusal.is_some() {
            record.status = Status::Error;
        }
        let status_label = match &record.refusal {
            Some(refusal) => refusal.error,
            None => record.status.as_str(),
        };
        self.metrics
            .count_request(record.endpoint.name(), status_label);
        record
    }

    fn observe(&self, timings: &Timings) {
        let stages = &timings.stages;
        for (stage, value) in [
            ("decode", stages.decode_ms),
            ("detect", stages.detect_ms),
            ("align", stages.align_ms),
            ("embed", stages.embed_ms),
            ("match", stages.match_ms),
            ("total", timings.total_ms),
        ] {
            self.metrics.observe_stage(stage, value);
        }
        // Liveness runs only on recognised faces: the others would fill its histogram with zeros.
        if stages.liveness_ms > 0.0 {
            self.metrics.observe_stage("liveness", stages.liveness_ms);
        }
    }

    /// Audit line, event and snapshot, after the answer went out: queued to their writer threads,
    /// never waiting on a disk. Disk trouble is logged (rate-limited) and counted by the writers; it
    /// never reaches the tablet or the door.
    pub(crate) fn follow_up(&self, handled: Handled) {
        let Handled {
            record,
            snapshot,
            summary,
        } = handled;
        if let Some((tally, remote)) = summary {
            let label = match &record.refusal {
                Some(refusal) => refusal.error,
                None => record.endpoint.name(),
            };
            return self.audit.count(tally, remote, label, &record.request_id);
        }
        let line = record.audit_line();
        self.audit.record(&line);
        if record.kind() == "decision" {
            self.remote.publish_decision(&record);
            self.events.push(line);
        }
        if let (Some(snapshot), Some(store)) = (snapshot, &self.snapshots) {
            let sidecar = record.sidecar(snapshot.reason);
            store.queue(&record.request_id, snapshot.image, snapshot.ext, &sidecar);
        }
    }
}

/// Recognises a checked image (unless the frame is already too old), checks liveness of a recognised
/// face, counts the frame in the tablet's confirmation (when given), decides, and writes all of it into
/// `record`. No door, no disk: the daemon and `facegate identify` share it.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    recognizer: &mut Recognizer,
    gallery: &Gallery,
    zone: &jiff::tz::TimeZone,
    threshold: f32,
    liveness_threshold: f32,
    image: &CheckedImage,
    freshness: Freshness,
    rules: FreshnessRules,
    received_at: Instant,
    confirmation: Option<Confirming<'_>>,
    record: &mut DecisionRecord,
) -> Result<Decision, RecognitionError> {
    let started = Instant::now();
    let recognition = if freshness.is_fresh_at(started) {
        Some(recognize_image(recognizer, gallery, image, threshold)?)
    } else {
        None
    };
    let outcome = recognition
        .as_ref()
        .map_or(Outcome::NoFace, |r| r.outcome.clone());
    let reading = recognition.as_ref().and_then(|r| r.liveness.as_ref());
    let liveness = Liveness::from_reading(reading);
    let now = Instant::now();
    let tally = confirmation.and_then(|Confirming { table, tablet }| {
        let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
        match confirming_person(&outcome, liveness, liveness_threshold, freshness, now) {
            Some(person) => Some(table.grant(&tablet, person, liveness.score(), now)),
            None => {
                table.interrupt(&tablet);
                None
            }
        }
    });
    let access = match &outcome {
        Outcome::Recognised(m) => {
            let local = jiff::Timestamp::now().to_zoned(zone.clone());
            // Matched in this very gallery, so always enrolled; were it not, nobody is let in.
            gallery.access_at(&m.name, &local).unwrap_or(Access::Denied(
                crate::permission::Denial {
                    reason: crate::permission::Reason::Suspended,
                    resumes_at: None,
                },
            ))
        }
        _ => Access::Allowed,
    };
    let checks = Checks {
        liveness,
        liveness_threshold,
        tally,
        access,
    };
    let decision = decide_with(&outcome, &checks, freshness, now);
    record.status = decision.status;
    record.message = decision
        .stale
        .map(|cause| cause.message(rules))
        .or_else(|| reading.and_then(too_small_message));
    if let Some(denial) = decision.denial {
        explain_denial(record, denial, zone);
    }
    if decision.confirming.is_some() {
        record.door = "confirming";
    }
    record.recognised = Some(Recognised {
        identity: decision.identity.clone(),
        nearest_below_threshold: outcome.nearest_below_threshold().map(|m| m.name.clone()),
        score: rounded(decision.score),
        threshold: round_score(threshold),
        faces: recognition.as_ref().map_or(0, |r| r.faces),
        age_ms: freshness.age_at(now).as_millis() as u64,
        timings: stage_timings(recognition.as_ref(), received_at, started),
        liveness: decision.liveness,
        liveness_models: reading.and_then(model_liveness),
        confirming: decision.confirming,
    });
    Ok(decision)
}

/// A `not_allowed` record: its reason, when access resumes (local time) and the sentence for the tablet.
fn explain_denial(record: &mut DecisionRecord, denial: Denial, zone: &jiff::tz::TimeZone) {
    record.reason = Some(denial.reason.as_str());
    let resumes = denial.resumes_at.map(|at| at.to_zoned(zone.clone()));
    record.resumes_at = resumes
        .as_ref()
        .map(|at| at.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string());
    record.message = Some(match (&resumes, denial.reason) {
        (Some(at), _) => format!(
            "{}; access resumes {}",
            denial.reason.message(),
            at.strftime("%a %Y-%m-%d %H:%M")
        ),
        (None, Reason::OutsideSchedule | Reason::NotYetValid) => {
            format!(
                "{}; no hours ahead: ask the building admin",
                denial.reason.message()
            )
        }
        (None, _) => denial.reason.message().to_string(),
    });
}

/// The tablet's message for a face liveness could not judge.
fn too_small_message(reading: &LivenessReading) -> Option<String> {
    match reading {
        LivenessReading::TooSmall {
            face_px,
            min_face_px,
        } => Some(format!(
            "the face is {face_px} px wide, too small to check that it is a live person (liveness.min_face_px is {min_face_px}): come closer to the camera"
        )),
        LivenessReading::Scored { .. } => None,
    }
}

fn model_liveness(reading: &LivenessReading) -> Option<Vec<ModelLiveness>> {
    match reading {
        LivenessReading::Scored { models, .. } => Some(
            models
                .iter()
                .map(|m| ModelLiveness {
                    model: m.model.clone(),
                    probabilities: m.probabilities.map(round_score),
                })
                .collect(),
        ),
        LivenessReading::TooSmall { .. } => None,
    }
}

fn stage_timings(
    recognition: Option<&Recognition>,
    received_at: Instant,
    started: Instant,
) -> Timings {
    Timings {
        queue_ms: started.duration_since(received_at).as_secs_f64() * 1000.0,
        stages: recognition.map(|r| r.timings.clone()).unwrap_or_default(),
        total_ms: received_at.elapsed().as_secs_f64() * 1000.0,
    }
    .rounded()
}

/// A wait as the answers give it: whole seconds, rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

fn internal_error() -> Refusal {
    Refusal {
        http: 500,
        error: "internal_error",
        message: "the request could not be processed; see the log".into(),
    }
}

fn storage_unavailable(message: String) -> Refusal {
    Refusal {
        http: 507,
        error: "storage_unavailable",
        message,
    }
}

fn body_refusal(err: &BodyError) -> Refusal {
    let (http, error) = match err {
        BodyError::Json(_) => (400, "bad_json"),
        BodyError::FrameId => (400, "bad_frame_id"),
        BodyError::TabletId => (400, "bad_tablet_id"),
        BodyError::CapturedAt(_) => (400, "bad_captured_at"),
        BodyError::Code => (400, "bad_code"),
        BodyError::Multipart(_) => (400, "bad_multipart"),
        BodyError::Frame(frame) => return frame_refusal(frame),
    };
    Refusal {
        http,
        error,
        message: err.to_string(),
    }
}

/// The 4xx answer for each way a frame can be wrong.
pub fn frame_refusal(err: &FrameError) -> Refusal {
    let (http, error) = match err {
        FrameError::Empty => (400, "empty_body"),
        FrameError::Base64(_) => (400, "bad_base64"),
        FrameError::TooLarge { .. } => (413, "too_large"),
        FrameError::UnknownFormat(_) => (415, "unsupported_image"),
        FrameError::BadHeader { .. }
        | FrameError::Truncated { .. }
        | FrameError::Undecodable { .. } => (422, "bad_image"),
        FrameError::AbsurdDimensions { .. } | FrameError::TooManyPixels { .. } => {
            (413, "image_too_large")
        }
    };
    Refusal {
        http,
        error,
        message: err.to_string(),
    }
}
