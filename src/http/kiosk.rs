//! The pairing endpoints' glue and their own `kiosk` thread: `POST /kiosk/pair` trades a pairing
//! secret for a device token, and each paired tablet's "last seen" is written at a bounded rate. Both
//! write the tablets file (under its lock, with fsync), so neither runs on the accepting thread nor on a
//! recognition worker. `GET /kiosk/hello` needs no file and is answered by `dispatch` itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Deserialize;
use serde_json::json;
use tiny_http::Request;

use super::forwarded::Forwarded;
use super::{read_body, respond, Answer};
use crate::audit::AuditWriter;
use crate::ratelimit::RateLimitedLog;
use crate::tablets::{LiveTablets, TabletError};

/// Jobs waiting for the kiosk thread; past this a pairing is answered 503 and a "last seen" dropped.
const QUEUE_DEPTH: usize = 16;
/// The front holds the whole body already; this only guards against a front gone missing.
const BODY_WAIT: Duration = Duration::from_secs(5);
/// The largest pairing body read (the front refuses larger ones first).
const MAX_BODY_BYTES: usize = 1024;
/// Wrong pairing secrets need no credential to send: at most one log line per this interval, with
/// the count of the others.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the kiosk thread does.
pub(crate) enum KioskJob {
    Pair {
        request: Request,
        request_id: String,
    },
    Seen {
        tablet: String,
        at: DateTime<Utc>,
        address: Option<String>,
    },
}

/// The daemon's paired tablets and the queue to the kiosk thread.
pub struct Kiosk {
    pub tablets: Arc<LiveTablets>,
    queue: Sender<KioskJob>,
}

impl Kiosk {
    /// Starts the kiosk thread.
    pub fn start(tablets: Arc<LiveTablets>, audit: AuditWriter) -> std::io::Result<Kiosk> {
        let (queue, jobs) = crossbeam_channel::bounded(QUEUE_DEPTH);
        let worker = Arc::clone(&tablets);
        std::thread::Builder::new()
            .name("kiosk".into())
            .spawn(move || run(&worker, &audit, jobs))?;
        Ok(Kiosk { tablets, queue })
    }

    /// Queues a pairing; a full queue is answered `busy` at once.
    pub(crate) fn pair(&self, request: Request, request_id: String) {
        let job = KioskJob::Pair {
            request,
            request_id,
        };
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.queue.try_send(job)
        {
            if let KioskJob::Pair {
                request,
                request_id,
            } = job
            {
                let answer = Answer::error(
                    Some(&request_id),
                    503,
                    "busy",
                    "pairing is busy; try again in a moment",
                );
                respond(request, &answer);
            }
        }
    }

    /// Notes that `tablet` was seen from `address`: written when its last write is old enough.
    pub(crate) fn seen(&self, tablet: &str, address: Option<String>) {
        if self.tablets.seen_due(tablet, Instant::now()) {
            let _ = self.queue.try_send(KioskJob::Seen {
                tablet: tablet.to_string(),
                at: Utc::now(),
                address,
            });
        }
    }
}

/// `GET /kiosk/hello` from a paired tablet (the front checked its token), or `null` for a client
/// with the shared `http.token`, which every endpoint but the admin pages accepts too.
pub(crate) fn hello(tablet: Option<&str>) -> Answer {
    Answer::ok(json!({ "tablet": tablet }))
}

#[derive(Deserialize)]
struct PairBody {
    secret: String,
}

fn run(tablets: &LiveTablets, audit: &AuditWriter, jobs: Receiver<KioskJob>) {
    let refusals = RateLimitedLog::new(REFUSAL_LOG_INTERVAL);
    for job in jobs {
        match job {
            KioskJob::Pair {
                mut request,
                request_id,
            } => {
                let peer = Forwarded::of(&request).peer.map(|p| p.ip().to_string());
                let body = read_body(&mut request, MAX_BODY_BYTES, Instant::now() + BODY_WAIT);
                let answer = match body {
                    Ok(body) => pair(tablets, audit, &refusals, &request_id, &body, peer),
                    Err(_) => Answer::error(
                        Some(&request_id),
                        400,
                        "body_unreadable",
                        "send {\"secret\": \"<secret>\"} of at most 1024 bytes",
                    ),
                };
                respond(request, &answer);
            }
            KioskJob::Seen {
                tablet,
                at,
                address,
            } => {
                if let Err(err) = tablets.write_seen(&tablet, at, address) {
                    log::warn!("could not note when tablet {tablet} was last seen: {err}");
                }
            }
        }
    }
}

/// One pairing: the answer, a log line, and an audit line when a tablet paired.
fn pair(
    tablets: &LiveTablets,
    audit: &AuditWriter,
    refusals: &RateLimitedLog,
    request_id: &str,
    body: &[u8],
    peer: Option<String>,
) -> Answer {
    let Ok(PairBody { secret }) = serde_json::from_slice::<PairBody>(body) else {
        return Answer::error(
            Some(request_id),
            400,
            "bad_json",
            "send {\"secret\": \"<secret>\"}: the secret after #pair= in the pairing link",
        );
    };
    let remote = peer.as_deref().unwrap_or("-");
    match tablets.pair(&secret, Utc::now()) {
        Ok(paired) => {
            log::info!(
                "request_id={request_id} tablet {} paired from {remote}",
                paired.tablet
            );
            audit.record(&json!({
                "kind": "tablet_paired",
                "request_id": request_id,
                "tablet": paired.tablet,
                "remote": peer,
            }));
            Answer::ok(json!({ "token": paired.token, "tablet": paired.tablet }))
        }
        Err(TabletError::PairingInvalid) => {
            refusals.warn(format!(
                "request_id={request_id} pairing refused from {remote}: unknown, used or expired secret"
            ));
            Answer::error(
                Some(request_id),
                401,
                "pairing_invalid",
                TabletError::PairingInvalid.to_string(),
            )
        }
        Err(err) => {
            log::error!("request_id={request_id} pairing failed: {err}");
            Answer::error(
                Some(request_id),
                503,
                "pairing_unavailable",
                "the tablets file could not be written; see the log",
            )
        }
    }
}
