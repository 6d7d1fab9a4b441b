//! The tablet's HTTP front end (tiny_http, blocking): one accepting thread that routes and sheds load,
//! a bounded queue, and worker threads that each own a recognizer. Every request gets a JSON answer.

pub mod admin;
pub mod body;
pub mod sockets;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tiny_http::{Header, Method, Request, Response};

use crate::service::Service;

/// A request waiting for a worker.
pub struct Job {
    pub request: Request,
    pub request_id: String,
    pub endpoint: Endpoint,
    pub received_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Image,
    Save,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Image => "image",
            Endpoint::Save => "save",
        }
    }
}

/// A JSON answer with its HTTP status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: u16,
    pub body: Value,
}

impl Answer {
    pub fn ok(body: Value) -> Answer {
        Answer { code: 200, body }
    }

    /// An error answer: `status` "error", a stable `error` code and a readable `message`.
    pub fn error(code: u16, request_id: &str, error: &str, message: impl Into<String>) -> Answer {
        Answer {
            code,
            body: json!({
                "request_id": request_id,
                "status": "error",
                "error": error,
                "message": message.into(),
            }),
        }
    }
}

fn json_response(answer: &Answer) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(answer.body.to_string())
        .with_status_code(answer.code)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
}

/// Sends `answer` to a request whose body was read (or that had none).
pub fn respond(request: Request, answer: &Answer) {
    if let Err(err) = request.respond(json_response(answer)) {
        log::debug!("could not send the answer: {err}");
    }
}

/// Announced bodies up to this size are left to tiny_http to discard; it allocates a buffer of the
/// unread size to do so.
const MAX_DISCARDED_BODY: usize = 64 * 1024 * 1024;
/// Connections given up with a larger unread body; past `MAX_PARKED` the daemon asks to be restarted.
static PARKED: AtomicUsize = AtomicUsize::new(0);
pub const MAX_PARKED: usize = 256;

/// How many connections have been parked so far.
pub fn parked_connections() -> usize {
    PARKED.load(Ordering::Relaxed)
}

/// Could this request still have body bytes on the wire that we did not read?
pub fn may_have_unread_body(request: &Request) -> bool {
    request.body_length().is_some_and(|n| n > 0)
        || request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"))
}

/// Sends `answer` to a request whose body is left unread, then shuts the connection down.
/// tiny_http 0.12 would otherwise wait for the whole announced body after the answer (holding the
/// answering thread) and allocate a buffer of its size (aborting the process for an absurd one).
pub fn respond_and_close(request: Request, answer: &Answer, port: u16) {
    let body = answer.body.to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        answer.code,
        tiny_http::StatusCode(answer.code).default_reason_phrase(),
        body.len()
    );
    let sent = request
        .remote_addr()
        .is_some_and(|&peer| sockets::answer_and_shut_down(port, peer, (head + &body).as_bytes()));
    if !sent {
        return respond(request, answer);
    }
    let unread = request.body_length().unwrap_or(0);
    if unread > MAX_DISCARDED_BODY {
        // Dropping the request would make tiny_http allocate `unread` bytes; leaking it costs the
        // connection's descriptors and its tiny_http thread instead.
        std::mem::forget(request);
        let parked = PARKED.fetch_add(1, Ordering::Relaxed) + 1;
        log::warn!("parked a connection that announced a {unread}-byte body ({parked} so far)");
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header values we set are valid")
}

/// Request ids name the answer, the log line, the audit line and the snapshot alike.
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

/// Is the bearer token right? Compared in constant time.
pub fn authorized(request: &Request, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Authorization"))
        .filter_map(|h| h.value.as_str().strip_prefix("Bearer "))
        .any(|given| bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())))
}

#[derive(Debug, PartialEq, Eq)]
pub enum BodyReadError {
    TooLarge,
    Timeout,
    Io(String),
}

/// Reads the whole body, refusing more than `limit` bytes or a body that takes past `deadline`.
pub fn read_body(
    request: &mut Request,
    limit: usize,
    deadline: Instant,
) -> Result<Vec<u8>, BodyReadError> {
    let declared = request.body_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyReadError::TooLarge);
    }
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(64 * 1024).min(limit));
    let mut chunk = vec![0u8; 64 * 1024];
    let reader = request.as_reader();
    loop {
        if Instant::now() > deadline {
            return Err(BodyReadError::Timeout);
        }
        match reader.read(&mut chunk) {
            // The sweeper shuts an overdue body's connection for reading, which ends the read here.
            Ok(0) | Err(_) if Instant::now() > deadline => return Err(BodyReadError::Timeout),
            Ok(0) => {
                if let Some(expected) = declared.filter(|&n| body.len() < n) {
                    return Err(BodyReadError::Io(format!(
                        "the connection closed after {} of the {expected} bytes declared",
                        body.len()
                    )));
                }
                return Ok(body);
            }
            Ok(n) => {
                if body.len() + n > limit {
                    return Err(BodyReadError::TooLarge);
                }
                body.extend_from_slice(&chunk[..n]);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(BodyReadError::Timeout)
            }
            Err(err) => return Err(BodyReadError::Io(err.to_string())),
        }
    }
}

/// Where a request goes, from its method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Events,
    Frame(Endpoint),
    /// The admin pages: their own thread, their own sign-in (the bearer token does not open them).
    Admin,
    WrongMethod(&'static str),
    NotFound,
}

pub fn route(method: &Method, url: &str) -> Route {
    let path = url.split('?').next().unwrap_or("");
    match (method, path) {
        (Method::Get, "/healthz") => Route::Health,
        (Method::Get, "/metrics") => Route::Metrics,
        (Method::Get, "/events") => Route::Events,
        (Method::Post, "/image") => Route::Frame(Endpoint::Image),
        (Method::Post, "/save") => Route::Frame(Endpoint::Save),
        (_, "/healthz" | "/metrics" | "/events") => Route::WrongMethod("GET"),
        (_, "/image" | "/save") => Route::WrongMethod("POST"),
        (_, "/admin") => Route::Admin,
        (_, admin) if admin.starts_with("/admin/") => Route::Admin,
        _ => Route::NotFound,
    }
}

/// Answers what needs no worker and queues frame posts; a full queue is answered `busy` at once.
/// Admin requests go to the admin thread's queue (`admin`, absent when the pages are disabled).
pub fn dispatch(
    service: &Service,
    jobs: &Sender<Job>,
    admin: Option<&Sender<Request>>,
    request: Request,
) {
    let port = service.port;
    let refuse = |request: Request, answer: &Answer| {
        if may_have_unread_body(&request) {
            respond_and_close(request, answer, port);
        } else {
            respond(request, answer);
        }
    };
    let request_id = service.ids.next();
    let received_at = Instant::now();
    if let Some(peer) = request.remote_addr() {
        service.header_floods.dispatched(*peer);
    }
    let route = route(request.method(), request.url());
    if route == Route::Health {
        return refuse(request, &service.health());
    }
    if let (Route::Admin, Some(admin)) = (route, admin) {
        if let Err(TrySendError::Full(request) | TrySendError::Disconnected(request)) =
            admin.try_send(request)
        {
            let answer = Answer::error(503, &request_id, "busy", "the admin pages are busy; reload in a moment");
            refuse(request, &answer);
        }
        return;
    }
    let label = match route {
        Route::Frame(endpoint) => endpoint.name(),
        Route::Metrics => "metrics",
        Route::Events => "events",
        _ => "other",
    };
    if !authorized(&request, service.token.as_deref()) {
        service.metrics.count_request(label, "unauthorized");
        let answer = Answer::error(
            401,
            &request_id,
            "unauthorized",
            "missing or wrong bearer token: send Authorization: Bearer <token>",
        );
        return refuse(request, &answer);
    }
    let endpoint = match route {
        Route::Frame(endpoint) => endpoint,
        Route::Metrics if may_have_unread_body(&request) => {
            let answer = Answer::error(
                400,
                &request_id,
                "unexpected_body",
                "GET /metrics takes no body",
            );
            return refuse(request, &answer);
        }
        Route::Metrics => return respond_text(request, service.metrics_text()),
        Route::Events => {
            let answer = service.events_page(request.url(), &request_id);
            return refuse(request, &answer);
        }
        Route::WrongMethod(allowed) => {
            let answer = Answer::error(
                405,
                &request_id,
                "method_not_allowed",
                format!("use {allowed} on this endpoint"),
            );
            return refuse(request, &answer);
        }
        Route::Health | Route::Admin | Route::NotFound => {
            let answer = Answer::error(
                404,
                &request_id,
                "not_found",
                "no such endpoint: use POST /image, POST /save, GET /healthz, /metrics or /events",
            );
            return refuse(request, &answer);
        }
    };
    if request
        .body_length()
        .is_some_and(|n| n > service.config.http.max_body_bytes)
    {
        service.metrics.count_request(endpoint.name(), "too_large");
        let answer = Answer::error(
            413,
            &request_id,
            "too_large",
            format!(
                "the body is larger than the {} bytes allowed",
                service.config.http.max_body_bytes
            ),
        );
        return refuse(request, &answer);
    }
    let job = Job {
        request,
        request_id,
        endpoint,
        received_at,
    };
    if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = jobs.try_send(job) {
        service.metrics.count_request(job.endpoint.name(), "busy");
        log::warn!(
            "request_id={} endpoint={} status=busy reason=queue_full",
            job.request_id,
            job.endpoint.name()
        );
        let answer = Answer {
            code: 503,
            body: json!({
                "request_id": job.request_id,
                "status": "busy",
                "door": "locked",
                "message": "all workers are busy; send the next frame",
            }),
        };
        refuse(job.request, &answer);
    }
}

fn respond_text(request: Request, text: String) {
    let response = Response::from_string(text)
        .with_header(header("Content-Type", "text/plain; version=0.0.4"));
    if let Err(err) = request.respond(response) {
        log::debug!("could not send the answer: {err}");
    }
}

/// Runs one worker: takes jobs until the queue closes. The answer goes out first; audit lines and
/// snapshots are written after it, so disk I/O never delays the tablet.
pub fn run_worker(
    service: Arc<Service>,
    mut recognizer: crate::vision::Recognizer,
    jobs: Receiver<Job>,
) {
    for job in jobs {
        let Job {
            mut request,
            request_id,
            endpoint,
            received_at,
        } = job;
        let deadline = received_at + Duration::from_millis(service.config.http.body_timeout_ms);
        let peer = request.remote_addr().copied();
        let remote = peer.map(|a| a.ip().to_string());
        let mut body_read = false;
        if let Some(peer) = peer {
            service.body_deadlines.watch(peer, deadline);
        }
        let body = read_body(&mut request, service.config.http.max_body_bytes, deadline);
        if let Some(peer) = peer {
            service.body_deadlines.done(peer);
        }
        let handled = match body {
            Ok(body) => {
                body_read = true;
                let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    service.handle_frame(
                        &mut recognizer,
                        endpoint,
                        &request_id,
                        received_at,
                        body,
                        remote.as_deref(),
                    )
                }));
                attempt.unwrap_or_else(|_| service.internal_error(endpoint, &request_id))
            }
            Err(err) => service.body_read_failed(endpoint, &request_id, err),
        };
        if body_read {
            respond(request, &handled.answer);
        } else {
            respond_and_close(request, &handled.answer, service.port);
        }
        service.follow_up(handled.follow_up);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_method_and_path() {
        let cases = [
            (Method::Get, "/healthz", Route::Health),
            (Method::Get, "/metrics", Route::Metrics),
            (Method::Get, "/events?limit=5", Route::Events),
            (Method::Post, "/image", Route::Frame(Endpoint::Image)),
            (Method::Post, "/save", Route::Frame(Endpoint::Save)),
            (Method::Get, "/image", Route::WrongMethod("POST")),
            (Method::Post, "/healthz", Route::WrongMethod("GET")),
            (Method::Get, "/open", Route::NotFound),
            (Method::Post, "/", Route::NotFound),
            (Method::Get, "/admin", Route::Admin),
            (Method::Post, "/admin/login", Route::Admin),
            (Method::Get, "/administrator", Route::NotFound),
        ];
        for (method, url, expected) in cases {
            assert_eq!(route(&method, url), expected, "{method} {url}");
        }
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
}
