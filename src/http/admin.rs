//! The admin pages' own thread: it takes each `/admin…` request (its body already read by the
//! front), hands it to [`crate::admin::Admin`] parsed, and sends back the answer. Admin work
//! (enrolment runs the models) never holds a recognition worker, so the tablet is never kept waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tiny_http::{Method, Request, Response};

use super::forwarded::Forwarded;
use super::{header, read_body, respond, Answer};
use crate::admin::{self, Admin, AdminRequest};

/// Admin requests waiting for the admin thread; past this they are answered 503 at once.
pub const QUEUE_DEPTH: usize = 8;
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
pub fn run(admin: Arc<Admin>, max_body_bytes: usize, requests: Receiver<Request>) {
    for mut request in requests {
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
