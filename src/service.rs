//! What the daemon does with one request once its body is in: recognise, decide, move the door, answer;
//! then, after the answer, the audit line, the event and the snapshot, all under the request's id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::decision::{decide, round_score, Decision, Outcome, Status};
use crate::door::{DoorController, GrantOutcome};
use crate::events::EventRing;
use crate::frame::{self, FrameError};
use crate::gallery::LiveGallery;
use crate::http::body::{parse_frame_post, BodyError, FramePost};
use crate::http::{Answer, BodyReadError, Endpoint, RequestIds};
use crate::metrics::Metrics;
use crate::mqtt::Remote;
use crate::ratelimit::RateLimitedLog;
use crate::recognition::{recognize_image, RecognitionError, StageTimings};
use crate::snapshots::SnapshotStore;
use crate::vision::Recognizer;

/// How often a failing disk is logged.
const DISK_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Everything the workers share.
pub struct Service {
    pub config: Config,
    pub token: Option<String>,
    pub threshold: f32,
    pub ids: RequestIds,
    pub metrics: Arc<Metrics>,
    pub events: EventRing,
    pub door: Arc<DoorController>,
    pub gallery: LiveGallery,
    pub audit: Option<Arc<AuditLog>>,
    pub snapshots: Option<SnapshotStore>,
    pub started: Instant,
    /// The port the daemon listens on, to find its own connections.
    pub port: u16,
    /// Bodies being read, for the socket sweeper to cut short when overdue.
    pub body_deadlines: Arc<crate::http::sockets::BodyDeadlines>,
    /// Connections' traffic since their last request, for the sweeper to cut header floods.
    pub header_floods: Arc<crate::http::sockets::HeaderFloodGuard>,
    pub audit_errors: Arc<RateLimitedLog>,
    snapshot_errors: RateLimitedLog,
    /// Decisions go to the MQTT broker too (a no-op while MQTT is off).
    pub remote: Arc<Remote>,
}

/// An answer plus the bookkeeping that follows it.
pub struct Handled {
    pub answer: Answer,
    pub follow_up: FollowUp,
}

/// Written after the answer is sent.
#[derive(Default)]
pub struct FollowUp {
    record: Option<Value>,
    snapshot: Option<Snapshot>,
}

struct Snapshot {
    id: String,
    image: Vec<u8>,
    ext: &'static str,
    sidecar: Value,
}

fn rounded(score: Option<f32>) -> Option<f64> {
    score.map(round_score)
}

fn ms(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        port: u16,
        threshold: f32,
        metrics: Arc<Metrics>,
        door: Arc<DoorController>,
        gallery: LiveGallery,
        audit: Option<Arc<AuditLog>>,
        audit_errors: Arc<RateLimitedLog>,
        snapshots: Option<SnapshotStore>,
        remote: Arc<Remote>,
    ) -> Service {
        Service {
            token: config.token(),
            events: EventRing::new(config.http.events_kept),
            config,
            threshold,
            ids: RequestIds::default(),
            metrics,
            door,
            gallery,
            audit,
            snapshots,
            started: Instant::now(),
            port,
            body_deadlines: Arc::default(),
            header_floods: Arc::default(),
            audit_errors,
            snapshot_errors: RateLimitedLog::new(DISK_ERROR_LOG_INTERVAL),
            remote,
        }
    }

    pub fn health(&self) -> Answer {
        let gallery = self.gallery.current();
        Answer::ok(json!({
            "status": "ok",
            "door_available": self.door.is_available(),
            "people": gallery.people().len(),
            "uptime_s": self.started.elapsed().as_secs(),
        }))
    }

    pub fn metrics_text(&self) -> String {
        if let Some(store) = &self.snapshots {
            let (count, bytes) = store.usage();
            self.metrics.set_snapshot_usage(count as u64, bytes);
        }
        self.metrics.render()
    }

    /// GET /events?limit=N&before=SEQ
    pub fn events_page(&self, url: &str, request_id: &str) -> Answer {
        let query = url.split_once('?').map_or("", |(_, q)| q);
        let mut limit = 50usize;
        let mut before = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let parsed = value.parse::<u64>();
            match (key, parsed) {
                ("limit", Ok(n)) if (1..=500).contains(&n) => limit = n as usize,
                ("before", Ok(n)) => before = Some(n),
                _ => {
                    return Answer::error(
                        400,
                        request_id,
                        "bad_query",
                        format!("`{pair}` is not understood: use limit=1..500 and before=<seq from next_before>"),
                    )
                }
            }
        }
        let page = self.events.page(limit, before);
        Answer::ok(json!({ "events": page.events, "next_before": page.next_before }))
    }

    pub fn body_read_failed(
        &self,
        endpoint: Endpoint,
        request_id: &str,
        err: BodyReadError,
    ) -> Handled {
        let (code, error, message) = match err {
            BodyReadError::TooLarge => (
                413,
                "too_large",
                format!(
                    "the body is larger than the {} bytes allowed",
                    self.config.http.max_body_bytes
                ),
            ),
            BodyReadError::Timeout => (
                408,
                "body_timeout",
                format!(
                    "the body did not arrive within {} ms",
                    self.config.http.body_timeout_ms
                ),
            ),
            BodyReadError::Io(cause) => (
                400,
                "body_unreadable",
                format!("the body could not be read: {cause}"),
            ),
        };
        self.rejected(endpoint, request_id, code, error, message, None)
    }

    pub fn internal_error(&self, endpoint: Endpoint, request_id: &str) -> Handled {
        self.rejected(
            endpoint,
            request_id,
            500,
            "internal_error",
            "the request could not be processed; see the log".into(),
            None,
        )
    }

    /// An answer that is not a decision: logged, audited and counted like one, the door untouched.
    fn rejected(
        &self,
        endpoint: Endpoint,
        request_id: &str,
        code: u16,
        error: &'static str,
        message: String,
        frame_id: Option<&str>,
    ) -> Handled {
        self.metrics.count_request(endpoint.name(), error);
        let level = if code >= 500 {
            log::Level::Error
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "request_id={request_id} endpoint={} status=error error={error} http={code} door=locked message={message:?}",
            endpoint.name()
        );
        let mut answer = Answer::error(code, request_id, error, message.clone());
        answer.body["frame_id"] = json!(frame_id);
        answer.body["door"] = json!("locked");
        Handled {
            answer,
            follow_up: FollowUp {
                record: Some(json!({
                    "kind": "rejected",
                    "request_id": request_id,
                    "endpoint": endpoint.name(),
                    "frame_id": frame_id,
                    "http": code,
                    "error": error,
                    "message": message,
                })),
                snapshot: None,
            },
        }
    }

    /// A frame post whose body has been read.
    pub fn handle_frame(
        &self,
        recognizer: &mut Recognizer,
        endpoint: Endpoint,
        request_id: &str,
        received_at: Instant,
        body: Vec<u8>,
        remote: Option<&str>,
    ) -> Handled {
        let post = match parse_frame_post(&body, self.config.frame.max_image_bytes) {
            Ok(post) => post,
            Err(err) => {
                let (code, error) = body_error_status(&err);
                return self.rejected(endpoint, request_id, code, error, err.to_string(), None);
            }
        };
        drop(body);
        match endpoint {
            Endpoint::Save => self.save_failed_pin(request_id, post, remote),
            Endpoint::Image => self.decide_frame(recognizer, request_id, received_at, post, remote),
        }
    }

    /// POST /save: the tablet reports a failed PIN entry with the frame; stored at once.
    fn save_failed_pin(&self, request_id: &str, post: FramePost, remote: Option<&str>) -> Handled {
        let ext = frame::file_extension(&post.image);
        let sidecar = json!({
            "request_id": request_id,
            "reason": "pin_failed",
            "frame_id": post.frame_id,
            "captured_at": post.captured_at.map(|t| t.to_rfc3339()),
            "received_at": Utc::now().to_rfc3339(),
            "remote": remote,
            "bytes": post.image.len(),
        });
        let Some(store) = &self.snapshots else {
            return self.rejected(
                Endpoint::Save,
                request_id,
                507,
                "storage_unavailable",
                "the snapshot store could not be opened at start-up; see the log".into(),
                post.frame_id.as_deref(),
            );
        };
        match store.save(request_id, &post.image, ext, &sidecar) {
            Ok(saved) => {
                self.metrics.count_request("save", "saved");
                log::info!(
                    "request_id={request_id} endpoint=save status=saved reason=pin_failed frame_id={:?} bytes={}",
                    post.frame_id.as_deref().unwrap_or(""),
                    saved.bytes
                );
                let answer = Answer::ok(json!({
                    "request_id": request_id,
                    "frame_id": post.frame_id,
                    "status": "saved",
                    "snapshot_id": saved.id,
                    "door": "locked",
                }));
                let mut record = sidecar;
                record["kind"] = json!("snapshot");
                Handled {
                    answer,
                    follow_up: FollowUp {
                        record: Some(record),
                        snapshot: None,
                    },
                }
            }
            Err(err) => {
                self.metrics.count_snapshot_failure();
                self.snapshot_errors
                    .error(format!("snapshot {request_id} not stored: {err}"));
                self.rejected(
                    Endpoint::Save,
                    request_id,
                    507,
                    "storage_unavailable",
                    format!("the snapshot could not be stored: {err}"),
                    post.frame_id.as_deref(),
                )
            }
        }
    }

    /// How old the frame is now: time since it was received, or since the tablet captured it
    /// when that is longer.
    fn frame_age(received_at: Instant, post: &FramePost) -> Duration {
        let since_received = received_at.elapsed();
        let since_captured = post
            .captured_at
            .and_then(|t| (Utc::now() - t).to_std().ok())
            .unwrap_or_default();
        since_received.max(since_captured)
    }

    /// POST /image: recognise, decide, and on a fresh grant ask the door to open.
    fn decide_frame(
        &self,
        recognizer: &mut Recognizer,
        request_id: &str,
        received_at: Instant,
        post: FramePost,
        remote: Option<&str>,
    ) -> Handled {
        let max_age = self.config.max_decision_age();
        let started = Instant::now();
        let queued_ms = started.duration_since(received_at).as_secs_f64() * 1000.0;
        // Garbage is answered as such even when it is also too old to decide on.
        let header = match frame::read_header(&post.image) {
            Ok(header) => header,
            Err(err) => return self.bad_image(request_id, post, err, remote),
        };
        let (outcome, faces, timings) = if Self::frame_age(received_at, &post) > max_age {
            (Outcome::NoFace, 0, StageTimings::default())
        } else {
            let gallery = self.gallery.current();
            match recognize_image(
                recognizer,
                &gallery,
                &post.image,
                &self.config.frame,
                self.threshold,
            ) {
                Ok(recognition) => (recognition.outcome, recognition.faces, recognition.timings),
                Err(RecognitionError::Frame(err)) => {
                    return self.bad_image(request_id, post, err, remote)
                }
                Err(RecognitionError::Vision(err)) => {
                    log::error!("request_id={request_id} recognition failed: {err}");
                    let mut handled = self.internal_error(Endpoint::Image, request_id);
                    handled.follow_up.snapshot =
                        self.error_snapshot(request_id, &post, "internal_error", remote);
                    return handled;
                }
            }
        };
        let age = Self::frame_age(received_at, &post);
        let decision = decide(&outcome, age, max_age);
        let door = if decision.may_open {
            let identity = decision.identity.as_deref().unwrap_or_default();
            self.door.request_open(request_id, identity)
        } else {
            GrantOutcome::Unavailable
        };
        let door_open = decision.may_open
            && matches!(
                door,
                GrantOutcome::Opened | GrantOutcome::Extended | GrantOutcome::AlreadyOpen
            );
        let total_ms = received_at.elapsed().as_secs_f64() * 1000.0;
        self.observe(&decision, &timings, total_ms);
        let door_word = if door_open { "opened" } else { "locked" };
        let door_action = if decision.may_open {
            door.as_str()
        } else {
            "none"
        };
        let nearest = match &outcome {
            Outcome::Unknown { best: Some(best) } => Some(best.name.as_str()),
            _ => None,
        };
        log::info!(
            "request_id={request_id} endpoint=image status={} identity={:?} score={} threshold={} faces={faces} door={door_word} door_action={door_action} age_ms={} total_ms={:.1} frame_id={:?} nearest={:?} remote={}",
            decision.status.as_str(),
            decision.identity.as_deref().unwrap_or(""),
            rounded(decision.score).map_or("-".to_string(), |s| s.to_string()),
            self.threshold,
            age.as_millis(),
            total_ms,
            post.frame_id.as_deref().unwrap_or(""),
            nearest.unwrap_or(""),
            remote.unwrap_or("-"),
        );
        let answer = Answer::ok(json!({
            "request_id": request_id,
            "frame_id": post.frame_id,
            "status": decision.status,
            "identity": decision.identity,
            "score": rounded(decision.score),
            "threshold": rounded(Some(self.threshold)),
            "faces": faces,
            "door": door_word,
            "timings": {
                "queue_ms": ms(queued_ms),
                "decode_ms": ms(timings.decode_ms),
                "detect_ms": ms(timings.detect_ms),
                "align_ms": ms(timings.align_ms),
                "embed_ms": ms(timings.embed_ms),
                "match_ms": ms(timings.match_ms),
                "total_ms": ms(total_ms),
            },
        }));
        let record = json!({
            "kind": "decision",
            "request_id": request_id,
            "frame_id": post.frame_id,
            "captured_at": post.captured_at.map(|t| t.to_rfc3339()),
            "status": decision.status,
            "identity": decision.identity,
            "nearest_below_threshold": nearest,
            "score": rounded(decision.score),
            "threshold": rounded(Some(self.threshold)),
            "faces": faces,
            "door": door_word,
            "door_action": door_action,
            "age_ms": age.as_millis() as u64,
            "total_ms": ms(total_ms),
            "remote": remote,
        });
        let wants_snapshot = match decision.status {
            Status::Unknown => self.config.snapshots.on_unknown,
            Status::NoFace => self.config.snapshots.on_no_face,
            _ => false,
        };
        let snapshot = wants_snapshot.then(|| {
            let ext = header.format.extension();
            let mut sidecar = record.clone();
            sidecar["reason"] = json!(decision.status.as_str());
            Snapshot {
                id: request_id.to_string(),
                image: post.image,
                ext,
                sidecar,
            }
        });
        Handled {
            answer,
            follow_up: FollowUp {
                record: Some(record),
                snapshot,
            },
        }
    }

    fn bad_image(
        &self,
        request_id: &str,
        post: FramePost,
        err: FrameError,
        remote: Option<&str>,
    ) -> Handled {
        let (code, error) = frame_error_status(&err);
        let mut handled = self.rejected(
            Endpoint::Image,
            request_id,
            code,
            error,
            err.to_string(),
            post.frame_id.as_deref(),
        );
        handled.follow_up.snapshot = self.error_snapshot(request_id, &post, error, remote);
        handled
    }

    fn error_snapshot(
        &self,
        request_id: &str,
        post: &FramePost,
        reason: &str,
        remote: Option<&str>,
    ) -> Option<Snapshot> {
        self.config.snapshots.on_error.then(|| Snapshot {
            id: request_id.to_string(),
            image: post.image.clone(),
            ext: frame::file_extension(&post.image),
            sidecar: json!({
                "request_id": request_id,
                "reason": reason,
                "frame_id": post.frame_id,
                "remote": remote,
            }),
        })
    }

    fn observe(&self, decision: &Decision, timings: &StageTimings, total_ms: f64) {
        self.metrics
            .count_request("image", decision.status.as_str());
        if decision.status == Status::Stale && timings.detect_ms == 0.0 {
            return;
        }
        for (stage, value) in [
            ("decode", timings.decode_ms),
            ("detect", timings.detect_ms),
            ("align", timings.align_ms),
            ("embed", timings.embed_ms),
            ("match", timings.match_ms),
            ("total", total_ms),
        ] {
            self.metrics.observe_stage(stage, value);
        }
    }

    /// Audit line, event and snapshot, after the answer went out. Disk trouble is logged (rate-limited)
    /// and counted; it never reaches the tablet or the door.
    pub fn follow_up(&self, follow_up: FollowUp) {
        if let Some(record) = &follow_up.record {
            if let Some(audit) = &self.audit {
                if let Err(err) = audit.append(record) {
                    self.metrics.count_audit_failure();
                    self.audit_errors
                        .error(format!("audit line not written: {err}"));
                }
            }
            if record["kind"] == "decision" {
                self.remote.publish_decision(record);
                let mut event = record.clone();
                event["ts"] =
                    json!(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                self.events.push(event);
            }
        }
        if let (Some(snapshot), Some(store)) = (follow_up.snapshot, &self.snapshots) {
            if let Err(err) = store.save(
                &snapshot.id,
                &snapshot.image,
                snapshot.ext,
                &snapshot.sidecar,
            ) {
                self.metrics.count_snapshot_failure();
                self.snapshot_errors
                    .error(format!("snapshot {} not stored: {err}", snapshot.id));
            }
        }
    }
}

fn body_error_status(err: &BodyError) -> (u16, &'static str) {
    match err {
        BodyError::Json(_) => (400, "bad_json"),
        BodyError::FrameId => (400, "bad_frame_id"),
        BodyError::CapturedAt(_) => (400, "bad_captured_at"),
        BodyError::Frame(frame) => frame_error_status(frame),
    }
}

/// The 4xx answer for each way a frame can be wrong.
pub fn frame_error_status(err: &FrameError) -> (u16, &'static str) {
    match err {
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
    }
}
