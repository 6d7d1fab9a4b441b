//! The admin pages' own thread: it takes each `/admin…` request (its body already read by the
//! front), hands it to [`crate::admin::Admin`] parsed, and sends back the answer. Admin work
//! (enrolment runs the models) never holds a recognition worker, so the tablet is never kept waiting.
//! Requests that showed a live admin session wait in a queue of their own and are taken first, so a
//! stranger's flood of sign-in pages fills only the strangers' few places.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tiny_http::{Method, Request, Response};

use super::forwarded::Forwarded;
use super::{header, read_body, respond, Answer};
use crate::admin::{self, Admin, AdminRequest};

/// Signed-in admins' requests waiting for the admin thread; past this they are answered 503 at once.
pub const SIGNED_IN_QUEUE_DEPTH: usize = 8;
/// Requests without a live session (the sign-in page, its form and files) waiting; past this they
/// are answered 503 at once.
pub const STRANGERS_QUEUE_DEPTH: usize = 4;

/// Where the dispatching thread puts admin requests: by whether the front saw a live session.
pub struct AdminQueues<T> {
    signed_in: Sender<T>,
    strangers: Sender<T>,
}

/// What the admin thread takes requests from: signed-in admins' first.
pub struct AdminInbox<T> {
    signed_in: Receiver<T>,
    strangers: Receiver<T>,
}

/// The two bounded queues to the admin thread.
pub fn admin_queues<T>() -> (AdminQueues<T>, AdminInbox<T>) {
    let (signed_in, signed_in_inbox) = crossbeam_channel::bounded(SIGNED_IN_QUEUE_DEPTH);
    let (strangers, strangers_inbox) = crossbeam_channel::bounded(STRANGERS_QUEUE_DEPTH);
    (
        AdminQueues {
            signed_in,
            strangers,
        },
        AdminInbox {
            signed_in: signed_in_inbox,
            strangers: strangers_inbox,
        },
    )
}

impl<T> AdminQueues<T> {
    /// Queues `request` without waiting; gives it back when its queue is full or the thread is gone.
    pub fn send(&self, request: T, signed_in: bool) -> Result<(), T> {
        let queue = if signed_in {
            &self.signed_in
        } else {
            &self.strangers
        };
        queue.try_send(request).map_err(|err| match err {
            TrySendError::Full(request) | TrySendError::Disconnected(request) => request,
        })
    }
}

impl<T> AdminInbox<T> {
    /// The next request, a signed-in admin's whenever one waits; `None` once both queues are closed
    /// and empty.
    pub fn next(&self) -> Option<T> {
        // `select_biased!` tries its arms in order: a waiting signed-in request always wins.
        crossbeam_channel::select_biased! {
            recv(self.signed_in) -> request => match request {
                Ok(request) => Some(request),
                Err(_) => self.strangers.recv().ok(),
            },
            recv(self.strangers) -> request => match request {
                Ok(request) => Some(request),
                Err(_) => self.signed_in.recv().ok(),
            },
        }
    }
}

/// The front holds the whole body already; this only guards against a front gone missing.
const BODY_WAIT: Duration = Duration::from_secs(5);

fn header_value(request: &Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}

/// Answers admin requests until the queue closes.
pub fn run(admin: Arc<Admin>, max_body_bytes: usize, requests: AdminInbox<Request>) {
    while let Some(mut request) = requests.next() {
        let forwarded = Forwarded::of(&request);
        let Some(peer) = forwarded.peer else {
            log::error!("an admin request came without the front's peer header; refused");
            continue;
        };
        let body = match read_body(&mut request, max_body_bytes, Instant::now() + BODY_WAIT) {
            Ok(body) => body,
            Err(err) => {
                let answer = Answer::error(
                    None,
                    400,
                    "upload_failed",
                    format!("the upload could not be read: {err:?}"),
                );
                respond(request, &answer);
                continue;
            }
        };
        let parsed = AdminRequest {
            method: match request.method() {
                Method::Get => admin::Method::Get,
                Method::Post => admin::Method::Post,
                _ => admin::Method::Other,
            },
            url: request.url().to_string(),
            cookie: header_value(&request, "Cookie"),
            content_type: header_value(&request, "Content-Type"),
            body,
            peer: peer.ip(),
            received_at: forwarded.received_at,
        };
        let answer =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| admin.handle(&parsed)));
        let response = match answer {
            Ok(answer) => answer.headers.iter().fold(
                Response::from_data(answer.body).with_status_code(answer.status),
                |response, (name, value)| response.with_header(header(name, value)),
            ),
            Err(_) => Response::from_data(b"the admin page failed; see the log".to_vec())
                .with_status_code(500),
        };
        if let Err(err) = request.respond(response) {
            log::debug!("could not send the admin answer: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: one queue of 8 for everyone, so a stranger's flood of sign-in pages from one
    /// address kept it full and a signed-in admin's page was answered 503 `busy`.
    #[test]
    fn signed_in_admins_go_first_and_strangers_fill_only_their_own_places() {
        let (queues, inbox) = admin_queues();
        for stranger in 0..STRANGERS_QUEUE_DEPTH {
            assert_eq!(queues.send(format!("stranger {stranger}"), false), Ok(()));
        }
        let refused = "one stranger too many".to_string();
        assert_eq!(queues.send(refused.clone(), false), Err(refused));
        assert_eq!(queues.send("admin".into(), true), Ok(()));
        assert_eq!(inbox.next().as_deref(), Some("admin"));
        assert_eq!(inbox.next().as_deref(), Some("stranger 0"));
        assert_eq!(queues.send("admin again".into(), true), Ok(()));
        assert_eq!(inbox.next().as_deref(), Some("admin again"));
        for admin in 0..SIGNED_IN_QUEUE_DEPTH {
            assert_eq!(queues.send(format!("admin {admin}"), true), Ok(()));
        }
        assert!(queues.send("one admin too many".into(), true).is_err());
        drop(queues);
        let rest: Vec<String> = std::iter::from_fn(|| inbox.next()).collect();
        let admins = (0..SIGNED_IN_QUEUE_DEPTH).map(|admin| format!("admin {admin}"));
        let strangers = (1..STRANGERS_QUEUE_DEPTH).map(|stranger| format!("stranger {stranger}"));
        assert_eq!(rest, admins.chain(strangers).collect::<Vec<_>>());
    }
}
