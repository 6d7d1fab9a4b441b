//! One typed record per request: what was asked, what was decided, what the door did. The answer, the
//! log line, the audit line, the event and the snapshot sidecar are all rendered from it, so they
//! cannot disagree, and the request id names every one of them.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::decision::{round_score, LivenessVerdict, Status};
use crate::recognition::StageTimings;

/// The endpoints whose requests are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Image,
    Save,
    /// A visitor code typed on the tablet.
    Code,
    /// `facegate identify`, from the command line.
    Identify,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Image => "image",
            Endpoint::Save => "save",
            Endpoint::Code => "code",
            Endpoint::Identify => "identify",
        }
    }
}

/// Request ids name the answer, the log line, the audit line and the snapshot alike; they are
/// safe as file names.
#[derive(Default)]
pub struct RequestIds {
    counter: AtomicU64,
}

impl RequestIds {
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}-{:04x}",
            Utc::now().format("%Y%m%dT%H%M%S%3f"),
            n & 0xffff
        )
    }
}

/// Milliseconds spent on one request, as the answer shows them (two decimals): waiting for a worker,
/// each stage of recognition, and in all.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub queue_ms: f64,
    #[serde(flatten)]
    pub stages: StageTimings,
    pub total_ms: f64,
}

impl Timings {
    /// The same timings rounded to two decimals.
    pub(crate) fn rounded(&self) -> Timings {
        let r = |ms: f64| (ms * 100.0).round() / 100.0;
        let s = &self.stages;
        Timings {
            queue_ms: r(self.queue_ms),
            stages: StageTimings {
                decode_ms: r(s.decode_ms),
                detect_ms: r(s.detect_ms),
                align_ms: r(s.align_ms),
                embed_ms: r(s.embed_ms),
                match_ms: r(s.match_ms),
                liveness_ms: r(s.liveness_ms),
            },
            total_ms: r(self.total_ms),
        }
    }
}

/// A refused request: the HTTP status, a stable code and a sentence saying what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    #[serde(skip)]
    pub http: u16,
    pub error: &'static str,
    pub message: String,
}

/// What recognition saw, for a decision about a frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recognised {
    pub identity: Option<String>,
    /// For the log and audit line only: the nearest person below the threshold, never answered.
    pub nearest_below_threshold: Option<String>,
    pub score: Option<f64>,
    pub threshold: f64,
    pub faces: usize,
    pub age_ms: u64,
    pub timings: Timings,
    /// Where liveness ran: the score the decision used and the threshold.
    pub liveness: Option<LivenessVerdict>,
    /// For the audit line and sidecar only: each liveness model's probabilities (real is index 1).
    pub liveness_models: Option<Vec<ModelLiveness>>,
    /// A grant still waiting for more frames from the same tablet: (grants so far, needed).
    pub confirming: Option<(u32, u32)>,
}

/// One liveness model's view of the face, as the audit line and the snapshot sidecar keep it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelLiveness {
    pub model: String,
    pub probabilities: [f64; 3],
}

/// What a `/code` request found. Names which stored code matched (kind and place in `codes show`),
/// never the code itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CodeCheck {
    /// `daily` or `weekly`, for a grant.
    pub code_kind: Option<&'static str>,
    /// 1-based place of the matched code in `facegate codes show`, for a grant.
    pub code_index: Option<usize>,
    /// Wrong codes this address may still send before a lockout, for a denial.
    pub attempts_left: Option<u32>,
    /// Seconds until a lockout ends.
    pub retry_after_s: Option<u64>,
    /// `true` when a single-use code matched but the door stayed locked, so it was put back.
    pub code_given_back: Option<bool>,
}

/// Everything known about one request once it is decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    pub request_id: String,
    pub endpoint: Endpoint,
    pub status: Status,
    /// When the decision was made.
    pub at: DateTime<Utc>,
    pub frame_id: Option<String>,
    pub captured_at: Option<DateTime<Utc>>,
    /// What the relay did for this request.
    pub door: &'static str,
    #[serde(flatten)]
    pub recognised: Option<Recognised>,
    #[serde(flatten)]
    pub refusal: Option<Refusal>,
    /// A sentence for the tablet beside a non-error status (stale, busy).
    pub message: Option<String>,
    /// The stored snapshot, for `/save`.
    pub snapshot_id: Option<String>,
    /// Bytes of the stored frame, for `/save`.
    pub bytes: Option<usize>,
    /// The client's address, for the log and audit line.
    pub remote: Option<String>,
    /// The paired tablet that sent the request (proved by its device token), named everywhere.
    pub tablet: Option<String>,
    #[serde(flatten)]
    pub code: Option<CodeCheck>,
    /// Why the door moved or the frame was kept, where that is not the status: `code` for a code
    /// grant, `code_failed` and `code_locked_out` for a code refused.
    pub reason: Option<&'static str>,
    /// For a `paused` answer: when the door is ready for the next frame.
    pub retry_after_ms: Option<u64>,
    /// For `not_allowed`: when access resumes, local time with its offset (`2026-03-02T07:00:00+09:00`);
    /// absent when it does not resume by itself.
    pub resumes_at: Option<String>,
}

impl DecisionRecord {
    /// A record with the request's identity filled in and nothing decided yet: the door locked.
    pub fn new(request_id: &str, endpoint: Endpoint, status: Status) -> DecisionRecord {
        DecisionRecord {
            request_id: request_id.to_string(),
            endpoint,
            status,
            at: Utc::now(),
            frame_id: None,
            captured_at: None,
            door: "locked",
            recognised: None,
            refusal: None,
            message: None,
            snapshot_id: None,
            bytes: None,
            remote: None,
            tablet: None,
            code: None,
            reason: None,
            retry_after_ms: None,
            resumes_at: None,
        }
    }

    /// A refused request (the door untouched).
    pub fn refused(request_id: &str, endpoint: Endpoint, refusal: Refusal) -> DecisionRecord {
        let mut record = DecisionRecord::new(request_id, endpoint, Status::Error);
        record.refusal = Some(refusal);
        record
    }

    /// The answer for a full queue.
    pub fn busy(request_id: &str, endpoint: Endpoint) -> DecisionRecord {
        let mut record = DecisionRecord::new(request_id, endpoint, Status::Busy);
        record.message = Some("all workers are busy; send the next frame".into());
        record
    }

    /// The HTTP status of the answer.
    pub(crate) fn http_status(&self) -> u16 {
        match (&self.refusal, self.status) {
            (Some(refusal), _) => refusal.http,
            (None, Status::Busy) => 503,
            (None, Status::LockedOut) => 429,
            (None, _) => 200,
        }
    }

    /// `decision` for a frame decided, `snapshot` for a frame stored by `/save`, `rejected` for a
    /// refused request: the audit line's `kind`.
    pub fn kind(&self) -> &'static str {
        match self.status {
            Status::Error | Status::Busy => "rejected",
            Status::Saved => "snapshot",
            Status::Paused => "paused",
            _ => "decision",
        }
    }

    /// The JSON the tablet gets. It never names the nearest person below the threshold, nor the
    /// client's address.
    pub fn answer(&self) -> Value {
        let mut answer = json!({
            "request_id": self.request_id,
            "frame_id": self.frame_id,
            "status": self.status,
            "door": self.door,
        });
        let fields = answer.as_object_mut().expect("an object");
        if let Some(tablet) = &self.tablet {
            fields.insert("tablet".into(), json!(tablet));
        }
        if let Some(refusal) = &self.refusal {
            fields.insert("error".into(), json!(refusal.error));
            fields.insert("message".into(), json!(refusal.message));
        }
        if let Some(message) = &self.message {
            fields.insert("message".into(), json!(message));
        }
        if let Some(snapshot_id) = &self.snapshot_id {
            fields.insert("snapshot_id".into(), json!(snapshot_id));
        }
        if let Some(code) = &self.code {
            if let Some(kind) = code.code_kind {
                fields.insert("kind".into(), json!(kind));
            }
            if let Some(left) = code.attempts_left {
                fields.insert("attempts_left".into(), json!(left));
            }
            if let Some(seconds) = code.retry_after_s {
                fields.insert("retry_after_s".into(), json!(seconds));
            }
        }
        if let Some(ms) = self.retry_after_ms {
            fields.insert("retry_after_ms".into(), json!(ms));
        }
        if self.status == Status::NotAllowed {
            fields.insert("reason".into(), json!(self.reason));
            if let Some(at) = &self.resumes_at {
                fields.insert("resumes_at".into(), json!(at));
            }
        }
        if let Some(recognised) = &self.recognised {
            fields.insert("identity".into(), json!(recognised.identity));
            fields.insert("score".into(), json!(recognised.score));
            fields.insert("threshold".into(), json!(recognised.threshold));
            fields.insert("faces".into(), json!(recognised.faces));
            fields.insert("timings".into(), json!(recognised.timings));
            if let Some(liveness) = &recognised.liveness {
                fields.insert("liveness".into(), json!(liveness));
            }
        }
        answer
    }

    /// The audit line (also the event and, with a `reason`, the snapshot sidecar): every field,
    /// with `kind` and the time of the decision.
    pub fn audit_line(&self) -> Value {
        let mut line = serde_json::to_value(self).expect("a record always serialises");
        let fields = line.as_object_mut().expect("an object");
        fields.insert("kind".into(), json!(self.kind()));
        if let Some(refusal) = &self.refusal {
            fields.insert("http".into(), json!(refusal.http));
        }
        fields.insert(
            "at".into(),
            json!(self.at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        fields.retain(|_, value| !value.is_null());
        line
    }

    /// The snapshot's sidecar: the audit line plus why the frame was kept.
    pub fn sidecar(&self, reason: &str) -> Value {
        let mut sidecar = self.audit_line();
        sidecar["reason"] = json!(reason);
        sidecar
    }

    /// One log line with stable `key=value` fields, `request_id` first.
    pub(crate) fn log_line(&self) -> String {
        let mut line = format!(
            "request_id={} endpoint={} status={} door={}",
            self.request_id,
            self.endpoint.name(),
            self.status.as_str(),
            self.door
        );
        if let Some(refusal) = &self.refusal {
            line += &format!(
                " error={} http={} message={:?}",
                refusal.error, refusal.http, refusal.message
            );
        }
        if let Some(r) = &self.recognised {
            line += &format!(
                " identity={:?} score={} threshold={} faces={} age_ms={} total_ms={:.1} nearest={:?}",
                r.identity.as_deref().unwrap_or(""),
                r.score.map_or("-".to_string(), |s| s.to_string()),
                r.threshold,
                r.faces,
                r.age_ms,
                r.timings.total_ms,
                r.nearest_below_threshold.as_deref().unwrap_or(""),
            );
            if let Some(liveness) = &r.liveness {
                line += &format!(
                    " liveness={} liveness_threshold={}",
                    rounded(liveness.lowest.or(liveness.score))
                        .map_or("-".to_string(), |s| s.to_string()),
                    round_score(liveness.threshold)
                );
            }
        }
        if let Some(code) = &self.code {
            let field = |value: Option<String>| value.unwrap_or_else(|| "-".into());
            line += &format!(
                " code_kind={} code_index={} attempts_left={} retry_after_s={}",
                code.code_kind.unwrap_or("-"),
                field(code.code_index.map(|i| i.to_string())),
                field(code.attempts_left.map(|n| n.to_string())),
                field(code.retry_after_s.map(|s| s.to_string())),
            );
            if code.code_given_back == Some(true) {
                line += " code_given_back=true";
            }
        }
        if let Some(ms) = self.retry_after_ms {
            line += &format!(" retry_after_ms={ms}");
        }
        if self.status == Status::NotAllowed {
            line += &format!(
                " reason={} resumes_at={}",
                self.reason.unwrap_or("-"),
                self.resumes_at.as_deref().unwrap_or("-")
            );
        }
        if let Some(message) = self.message.as_ref().filter(|_| self.refusal.is_none()) {
            line += &format!(" message={message:?}");
        }
        if let Some(bytes) = self.bytes {
            line += &format!(" bytes={bytes}");
        }
        line += &format!(
            " frame_id={:?} remote={} tablet={}",
            self.frame_id.as_deref().unwrap_or(""),
            self.remote.as_deref().unwrap_or("-"),
            self.tablet.as_deref().unwrap_or("-")
        );
        line
    }

    /// The level the log line is written at: errors the daemon caused are errors, refusals warnings.
    pub(crate) fn log_level(&self) -> log::Level {
        match self.http_status() {
            500.. => log::Level::Error,
            400.. => log::Level::Warn,
            _ => log::Level::Info,
        }
    }
}

/// A similarity rounded as answers show it, for optional scores.
pub(crate) fn rounded(score: Option<f32>) -> Option<f64> {
    score.map(round_score)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recognised(identity: Option<&str>, nearest: Option<&str>) -> Recognised {
        Recognised {
            identity: identity.map(String::from),
            nearest_below_threshold: nearest.map(String::from),
            score: Some(0.31),
            threshold: 0.45,
            faces: 1,
            age_ms: 40,
            timings: Timings::default(),
            liveness: None,
            liveness_models: None,
            confirming: None,
        }
    }

    #[test]
    fn a_paired_tablet_is_named_in_the_answer_the_audit_line_and_the_log_line() {
        let mut record = DecisionRecord::new("r-1", Endpoint::Image, Status::Granted);
        record.tablet = Some("front".into());
        assert_eq!(record.answer()["tablet"], "front");
        assert_eq!(record.audit_line()["tablet"], "front");
        assert!(
            record.log_line().contains(" tablet=front"),
            "{}",
            record.log_line()
        );
        let unpaired = DecisionRecord::new("r-2", Endpoint::Image, Status::Granted);
        assert!(unpaired.answer().get("tablet").is_none());
    }

    #[test]
    fn the_answer_never_names_the_nearest_person_but_the_audit_line_does() {
        let mut record = DecisionRecord::new("r-1", Endpoint::Image, Status::Unknown);
        record.recognised = Some(recognised(None, Some("bob")));
        record.remote = Some("10.0.0.7".into());
        let answer = record.answer().to_string();
        assert!(!answer.contains("bob"), "{answer}");
        assert!(!answer.contains("10.0.0.7"), "{answer}");
        let audit = record.audit_line();
        assert_eq!(audit["nearest_below_threshold"], "bob");
        assert_eq!(audit["kind"], "decision");
        assert_eq!(audit["remote"], "10.0.0.7");
        assert!(record.log_line().starts_with("request_id=r-1 "));
    }

    #[test]
    fn every_rendering_carries_the_same_request_id_and_status() {
        let records = [
            DecisionRecord::new("r-2", Endpoint::Image, Status::Granted),
            DecisionRecord::busy("r-3", Endpoint::Image),
            DecisionRecord::refused(
                "r-4",
                Endpoint::Save,
                Refusal {
                    http: 415,
                    error: "unsupported_image",
                    message: "only JPEG and PNG".into(),
                },
            ),
        ];
        for record in records {
            let id = record.request_id.as_str();
            let status = record.status.as_str();
            for rendered in [record.answer(), record.audit_line(), record.sidecar("x")] {
                assert_eq!(rendered["request_id"], id, "{rendered}");
                assert_eq!(rendered["status"], status, "{rendered}");
            }
            assert!(record.log_line().contains(&format!("status={status}")));
        }
    }

    #[test]
    fn http_status_follows_the_record() {
        let refused = DecisionRecord::refused(
            "r",
            Endpoint::Image,
            Refusal {
                http: 413,
                error: "too_large",
                message: String::new(),
            },
        );
        assert_eq!(refused.http_status(), 413);
        assert_eq!(refused.answer()["error"], "too_large");
        assert_eq!(refused.audit_line()["http"], 413);
        assert_eq!(
            DecisionRecord::busy("r", Endpoint::Image).http_status(),
            503
        );
        let granted = DecisionRecord::new("r", Endpoint::Image, Status::Granted);
        assert_eq!(granted.http_status(), 200);
    }

    #[test]
    fn request_ids_are_unique_and_safe_as_file_names() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{a}"
        );
    }

    #[test]
    fn a_spoof_answer_carries_the_liveness_and_its_sidecar_both_models() {
        let mut record = DecisionRecord::new("r-5", Endpoint::Image, Status::Spoof);
        record.recognised = Some(Recognised {
            liveness: Some(LivenessVerdict {
                score: Some(0.1451),
                lowest: None,
                threshold: 0.8,
            }),
            liveness_models: Some(vec![ModelLiveness {
                model: "minifasnet_v2".into(),
                probabilities: [0.3, 0.006, 0.694],
            }]),
            ..recognised(None, Some("ann"))
        });
        let answer = record.answer();
        assert_eq!(answer["liveness"]["score"], 0.1451);
        assert_eq!(answer["liveness"]["threshold"], 0.8);
        assert!(answer.get("liveness_models").is_none(), "{answer}");
        let sidecar = record.sidecar("spoof");
        assert_eq!(sidecar["reason"], "spoof");
        assert_eq!(sidecar["liveness_models"][0]["model"], "minifasnet_v2");
        assert_eq!(sidecar["liveness"]["score"], 0.1451);
        assert!(
            record.log_line().contains("liveness=0.1451"),
            "{}",
            record.log_line()
        );
    }
}
