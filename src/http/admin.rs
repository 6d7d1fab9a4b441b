//! The admin pages' own thread: it reads each `/admin…` request's body (bounded by size and time),
//! hands the request to [`crate::admin::Admin`] parsed, and sends back the answer. Admin work
//! (enrolment runs the models) never holds a recognition worker, so the tablet is never kept waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tiny_http::{Method, Request, Response};

use super::{header, read_body, respond_and_close, Answer, BodyReadError, Transport};
use crate::admin::{self, Admin, AdminRequest};

/// Admin requests waiting for the admin thread; past this they are answered 503 at once.
pub const QUEUE_DEPTH: usize = 8;
/// Photo uploads come from phones over Wi-Fi: they get longer than a tablet frame.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

fn header_value(request: &Request, name: &'static str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}

/// Answers admin requests until the queue closes.
pub fn run(
    admin: Arc<Admin>,
    transport: Arc<Transport>,
    max_body_bytes: usize,
    requests: Receiver<Request>,
) {
    for mut request in requests {
        let Some(peer) = request.remote_addr().copied() else {
            continue;
        };
        let deadline = Instant::now() + BODY_TIMEOUT;
        transport.body_deadlines.watch(peer, deadline);
        let body = read_body(&mut request, max_body_bytes, deadline);
        transport.body_deadlines.done(peer);
        let body = match body {
            Ok(body) => body,
            Err(err) => {
                let (code, message) = match err {
                    BodyReadError::TooLarge => (
                        413,
                        format!(
                            "the upload is larger than the {} bytes allowed: send fewer or smaller photos",
                            max_body_bytes
                        ),
                    ),
                    BodyReadError::Timeout => (408, "the upload took too long".to_string()),
                    BodyReadError::Io(cause) => (400, cause),
                };
                let answer = Answer {
                    code,
                    body: serde_json::json!({"status": "error", "error": "upload_failed", "message": message}),
                };
                respond_and_close(request, &answer, transport.port);
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
