//! What the daemon does with the broker: door state and decisions out; signed commands to the door
//! and signed building galleries to the gallery file in, each audited. Works as a no-op while MQTT is
//! off, so the rest of the daemon calls it unconditionally.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};

use super::command::{Action, CommandBody, ReplayMemory, Verifier};
use super::link::{Incoming, LinkError, MqttLink};
use crate::audit::AuditWriter;
use crate::config::Config;
use crate::door::{Actuation, DoorController, InputReport, OpenCause, OpenRequest};
use crate::gallery::EmbedderId;
use crate::gallery_bundle::{self, BundleError};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimitedLog;
use crate::record::{DecisionRecord, RequestIds};
use crate::sync::lock_recovering;

/// Marks a lockdown from a `lock` command, so a restart keeps the door locked until `clear`.
const LOCKDOWN_MARKER: &str = "lockdown";
/// What the door remembers of accepted commands (nonces, latest clock reading), so that a restart does
/// not let a captured command through again.
const COMMAND_MEMORY: &str = "mqtt-commands.json";

/// The daemon's side of MQTT.
#[derive(Default)]
pub struct Remote {
    link: OnceLock<Arc<MqttLink>>,
    /// The door's latest state (from the relay observer), sent when the link starts.
    door_state: Mutex<Option<Value>>,
    lockdown: AtomicBool,
    /// The contact and active alarm of the latest input event, merged into the door state.
    inputs: Mutex<Option<Value>>,
}

/// Everything the incoming side needs.
pub struct RemoteParts {
    pub metrics: Arc<Metrics>,
    /// Weak, so that the daemon can still shut the controller down while the MQTT thread runs.
    pub door: Weak<DoorController>,
    pub audit: AuditWriter,
    pub embedder: EmbedderId,
}

impl Remote {
    /// The relay observer's report: published retained as the door's state.
    pub(crate) fn on_actuation(&self, actuation: &Actuation) {
        let mut state = serde_json::to_value(actuation).expect("an actuation always serialises");
        state["at"] = json!(actuation
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        self.set_door_state(state);
    }

    /// An event of the door's inputs: on the event topic as its audit line, and the contact and
    /// active alarm into the retained door state.
    pub(crate) fn on_door_input(&self, report: &InputReport) {
        let mut line = serde_json::to_value(report).expect("an input report always serialises");
        line["kind"] = json!("door_input");
        line["at"] = json!(report
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        if let Some(link) = self.link.get() {
            link.publish_event(&line);
        }
        let mut latest = lock_recovering(&self.door_state);
        *lock_recovering(&self.inputs) =
            Some(json!({ "contact": report.contact, "alarm": report.active_alarm }));
        self.republish_door_state(&mut latest);
    }

    fn set_door_state(&self, state: Value) {
        // Queued under the lock, so that the door-reports and MQTT threads publish in order.
        let mut latest = lock_recovering(&self.door_state);
        *latest = Some(state);
        self.republish_door_state(&mut latest);
    }

    fn set_lockdown(&self, on: bool) {
        let mut latest = lock_recovering(&self.door_state);
        self.lockdown.store(on, Ordering::SeqCst);
        self.republish_door_state(&mut latest);
    }

    fn republish_door_state(&self, latest: &mut Option<Value>) {
        if let Some(state) = latest {
            state["lockdown"] = json!(self.lockdown.load(Ordering::SeqCst));
            if let Some(Value::Object(inputs)) = &*lock_recovering(&self.inputs) {
                for (key, value) in inputs {
                    state[key] = value.clone();
                }
            }
            if let Some(link) = self.link.get() {
                link.publish_door(state);
            }
        }
    }

    /// One decision for `<prefix>/<door_id>/event`, as its audit line.
    pub(crate) fn publish_decision(&self, record: &DecisionRecord) {
        if let Some(link) = self.link.get() {
            link.publish_decision(record);
        }
    }

    /// An alarm for `<prefix>/<door_id>/event`, as its audit line (`kind: "alarm"`).
    pub(crate) fn publish_alarm(&self, line: &Value) {
        if let Some(link) = self.link.get() {
            link.publish_event(line);
        }
    }

    /// Starts MQTT when `mqtt.url` is set: restores a lockdown left by a `lock` command, connects, and
    /// from then on publishes door state and decisions and acts on commands and galleries.
    pub fn start(self: &Arc<Self>, config: &Config, parts: RemoteParts) -> Result<(), LinkError> {
        if config.mqtt.url.is_none() {
            return Ok(());
        }
        let marker = config.state_dir.join(LOCKDOWN_MARKER);
        if let Some(door) = parts.door.upgrade() {
            if config.mqtt.allow_commands && marker.exists() {
                log::warn!(
                    "the door is held locked by an earlier MQTT lock command ({}); send `clear` to end it",
                    marker.display()
                );
                door.hold_locked();
                self.set_lockdown(true);
            }
        }
        let verifier = config
            .mqtt
            .allow_commands
            .then(|| config.mqtt_command_secret())
            .flatten()
            .map(|secret| {
                let window = Duration::from_secs(config.mqtt.command_window_s);
                Verifier::new(
                    &config.mqtt.door_id,
                    secret.as_bytes(),
                    window,
                    load_command_memory(&config.state_dir.join(COMMAND_MEMORY), window),
                )
            });
        let gallery_key = config.gallery_public_key().map_err(LinkError::Key)?;
        let mut incoming = IncomingSide {
            remote: Arc::clone(self),
            metrics: Arc::clone(&parts.metrics),
            door: parts.door,
            audit: parts.audit,
            max_age: Duration::from_millis(config.door.max_decision_age_ms),
            rejections: RateLimitedLog::new(Duration::from_secs(10)),
            verifier,
            gallery_key,
            embedder: parts.embedder,
            gallery_path: config.gallery_path(),
            gallery_state: config.state_dir.join(gallery_bundle::DOOR_STATE),
            command_memory: config.state_dir.join(COMMAND_MEMORY),
            marker,
            ids: RequestIds::default(),
        };
        let link = MqttLink::start(
            config,
            parts.metrics,
            incoming.verifier.is_some(),
            incoming.gallery_key.is_some(),
            Box::new(move |message| incoming.handle(message)),
        )?;
        let _ = self.link.set(Arc::new(link));
        self.republish_door_state(&mut lock_recovering(&self.door_state));
        Ok(())
    }

    /// Says `offline` and disconnects (bounded); call after the door is locked.
    pub fn shutdown(&self) {
        if let Some(link) = self.link.get() {
            link.shutdown();
        }
    }
}

struct IncomingSide {
    remote: Arc<Remote>,
    metrics: Arc<Metrics>,
    door: Weak<DoorController>,
    audit: AuditWriter,
    /// A granted `unlock` is dropped by the relay thread if it has not reached it by then.
    max_age: Duration,
    rejections: RateLimitedLog,
    verifier: Option<Verifier>,
    gallery_key: Option<ed25519_dalek::VerifyingKey>,
    embedder: EmbedderId,
    gallery_path: PathBuf,
    /// The highest building-gallery sequence this door ever accepted.
    gallery_state: PathBuf,
    command_memory: PathBuf,
    marker: PathBuf,
    ids: RequestIds,
}

impl IncomingSide {
    fn handle(&mut self, message: Incoming) {
        match message {
            Incoming::Command(payload) => self.command(&payload),
            // An empty retained message is how a gallery is withdrawn from the broker: nothing to load.
            Incoming::Gallery(payload) if payload.is_empty() => {}
            Incoming::Gallery(payload) => self.gallery(&payload),
        }
    }

    /// Audits what became of one incoming message, then counts it (a count seen in /metrics means
    /// its audit line is queued); returns the audit record.
    fn settle(&self, kind: &'static str, result: &'static str, mut record: Value) -> Value {
        record["kind"] = json!(kind);
        record["result"] = json!(result);
        self.audit.record(&record);
        self.metrics.count_mqtt_received(kind, result);
        record
    }

    fn command(&mut self, payload: &[u8]) {
        let Some(verifier) = &mut self.verifier else {
            return;
        };
        let now_ms = Utc::now().timestamp_millis();
        // An unlock's freshness counts from here: writing the command memory first may be slow.
        let verified_at = Instant::now();
        // Every outcome, a refusal too, is traced by one id from the log line to the audit line.
        let request_id = format!("mqtt-{}", self.ids.next());
        match verifier.verify(payload, now_ms) {
            // Remembered on disk before it acts: a command that could be accepted again after a
            // restart does not open the door. Locking needs no such care.
            Ok(body) => match save_command_memory(&self.command_memory, verifier.memory()) {
                Ok(()) => self.execute(&body, verified_at, request_id),
                Err(_) if body.action == Action::Lock => {
                    self.execute(&body, verified_at, request_id)
                }
                Err(err) => {
                    let problem = format!(
                        "not executed: {} cannot be written ({err}), so a restart would accept this command again",
                        self.command_memory.display()
                    );
                    self.rejections.error(format!(
                        "request_id={request_id} mqtt: command refused: {problem}"
                    ));
                    let record = json!({
                        "request_id": request_id,
                        "error": problem,
                        "nonce": body.nonce,
                    });
                    self.settle("command", "unpersisted", record);
                }
            },
            Err(rejected) => {
                self.rejections.error(format!(
                    "request_id={request_id} mqtt: command refused: {rejected}"
                ));
                let record = json!({ "request_id": request_id, "error": rejected.to_string() });
                self.settle("command", rejected.label(), record);
            }
        }
    }

    fn execute(&self, body: &CommandBody, verified_at: Instant, request_id: String) {
        let Some(door) = self.door.upgrade() else {
            return;
        };
        let door_action = match body.action {
            Action::Unlock => door
                .request_open(OpenRequest {
                    request_id: request_id.clone(),
                    cause: OpenCause::Command {
                        origin: body.origin.clone(),
                    },
                    not_after: verified_at + self.max_age,
                })
                .detail(),
            Action::Lock => {
                door.hold_locked();
                if let Err(err) = std::fs::write(&self.marker, now_text()) {
                    log::error!(
                        "the lockdown marker {} was not written ({err}); a restart would end the lockdown",
                        self.marker.display()
                    );
                }
                self.remote.set_lockdown(true);
                "held_locked"
            }
            Action::Clear => {
                door.release_hold();
                remove_marker(&self.marker);
                self.remote.set_lockdown(false);
                "released"
            }
        };
        log::info!(
            "request_id={request_id} mqtt command={} origin={:?} door_action={door_action}",
            body.action.as_str(),
            body.origin
        );
        let record = json!({
            "request_id": request_id,
            "action": body.action,
            "origin": body.origin,
            "nonce": body.nonce,
            "issued_at_ms": body.issued_at_ms,
            "door_action": door_action,
        });
        let record = self.settle("command", "accepted", record);
        if let Some(link) = self.remote.link.get() {
            link.publish_event(&record);
        }
    }

    fn gallery(&self, payload: &[u8]) {
        let origin = Path::new("the MQTT gallery topic");
        let request_id = format!("mqtt-{}", self.ids.next());
        match gallery_bundle::import_into(
            payload,
            self.gallery_key.as_ref(),
            &self.embedder,
            origin,
            &self.gallery_path,
            &self.gallery_state,
            Utc::now(),
        ) {
            Ok(Some(opened)) => {
                let people = opened.gallery.people().len();
                log::info!(
                    "request_id={request_id} mqtt: building gallery {} loaded: {people} people",
                    opened.sequence
                );
                let record = json!({
                    "request_id": request_id,
                    "sequence": opened.sequence,
                    "people": people,
                });
                self.settle("gallery", "loaded", record);
            }
            Ok(None) => self.metrics.count_mqtt_received("gallery", "unchanged"),
            Err(err) => {
                log::warn!("request_id={request_id} mqtt: building gallery refused: {err}");
                let record = json!({ "request_id": request_id, "error": err.to_string() });
                self.settle("gallery", gallery_refusal_label(&err), record);
            }
        }
    }
}

fn gallery_refusal_label(err: &BundleError) -> &'static str {
    match err {
        BundleError::Unsigned | BundleError::NoKey | BundleError::BadSignature => "bad_signature",
        BundleError::Older { .. } => "older",
        BundleError::Expired { .. } | BundleError::NoValidity => "expired",
        BundleError::Gallery(crate::gallery::GalleryError::EmbedderMismatch { .. }) => {
            "other_embedder"
        }
        BundleError::Gallery(crate::gallery::GalleryError::Write { .. }) => "write_failed",
        _ => "malformed",
    }
}

/// The command memory left by the last run. A missing or unreadable file (first start, a deleted or
/// damaged file) is treated as forgotten: every command issued before now is refused.
fn load_command_memory(path: &Path, window: Duration) -> ReplayMemory {
    let now_ms = Utc::now().timestamp_millis();
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let forgotten = ReplayMemory::forgotten_at(now_ms, window_ms);
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<ReplayMemory>(&bytes) {
            Ok(memory) => {
                if memory.latest_ms > now_ms.saturating_add(window_ms) {
                    log::warn!(
                        "mqtt: the door's clock once read {} ms, ahead of now; commands issued before then are refused until it catches up (delete {} if that reading was wrong)",
                        memory.latest_ms,
                        path.display()
                    );
                }
                memory
            }
            Err(err) => {
                log::warn!(
                    "mqtt: {} is damaged ({err}); commands issued before now are refused",
                    path.display()
                );
                forgotten
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => forgotten,
        Err(err) => {
            log::warn!(
                "mqtt: cannot read {} ({err}); commands issued before now are refused",
                path.display()
            );
            forgotten
        }
    }
}

fn save_command_memory(path: &Path, memory: &ReplayMemory) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(memory).expect("the command memory always serialises");
    crate::atomic_file::write(path, &bytes, 0o600)
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn remove_marker(marker: &Path) {
    match std::fs::remove_file(marker) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => log::error!(
            "the lockdown marker {} was not removed ({err}); a restart would lock the door down again",
            marker.display()
        ),
    }
}
