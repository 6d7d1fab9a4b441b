//! The tablet's HTTP transport (tiny_http, blocking): one accepting thread that routes, checks the
//! token and sheds load, a bounded queue, and worker threads that each own a recognizer, read the
//! body and hand it to the service. Every request gets a JSON answer, rendered from its record.

pub(crate) mod admin;
pub mod forwarded;
pub mod kiosk;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tiny_http::{Header, Method, Request, Response};

use self::forwarded::Forwarded;
use crate::record::{Endpoint, Refusal, RequestIds};
use crate::service::{FrameRequest, Handled, Service};

/// A request waiting for a worker.
pub(crate) struct Job {
    pub request: Request,
    pub request_id: String,
    pub endpoint: Endpoint,
    pub received_at: Instant,
    pub received_wall: DateTime<Utc>,
    /// The paired tablet that sent it.
    pub tablet: Option<String>,
}

/// What the transport needs besides the service: request ids, the token and the paired tablets.
#[derive(Default)]
pub struct Transport {
    pub ids: RequestIds,
    /// The tablet's bearer token; `None` when none is required.
    pub token: Option<String>,
    /// Pairing and the paired tablets; `None` only where no tablet can pair.
    pub kiosk: Option<kiosk::Kiosk>,
}

/// A JSON answer with its HTTP status.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub code: u16,
    pub body: Value,
}

impl Answer {
    pub fn ok(body: Value) -> Answer {
        Answer { code: 200, body }
    }

    /// An error answer: a stable `error` code for programs, a `message` saying what to do, and the door,
    /// which no error moves; `request_id` when the request was given one.
    pub fn error(
        request_id: Option<&str>,
        code: u16,
        error: &str,
        message: impl Into<String>,
    ) -> Answer {
        let mut body = json!({
            "status": "error",
            "error": error,
            "message": message.into(),
            "door": "locked",
        });
        if let Some(id) = request_id {
            body["request_id"] = json!(id);
        }
        Answer { code, body }
    }

    /// The answer rendered from a request's record.
    pub fn of(handled: &Handled) -> Answer {
        Answer {
            code: handled.record.http_status(),
            body: handled.record.answer(),
        }
    }
}

fn json_response(answer: &Answer) -> Response<std::io::Cursor<Vec<u8>>> {
    let response = Response::from_string(answer.body.to_string())
        .with_status_code(answer.code)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"));
    match answer.body.get("retry_after_s").and_then(Value::as_u64) {
        Some(seconds) if answer.code == 429 => {
            response.with_header(header("Retry-After", &seconds.to_string()))
        }
        _ => response,
    }
}

/// Sends `answer` to a request whose body was read (or that had none).
pub(crate) fn respond(request: Request, answer: &Answer) {
    if let Err(err) = request.respond(json_response(answer)) {
        log::debug!("could not send the answer: {err}");
    }
}

/// Could this request still have body bytes on the wire that we did not read?
pub(crate) fn may_have_unread_body(request: &Request) -> bool {
    request.body_length().is_some_and(|n| n > 0)
        || request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"))
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header values we set are valid")
}

/// Is the bearer token right? Compared in constant time.
pub(crate) fn authorized(request: &Request, token: Option<&str>) -> bool {
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
pub(crate) enum BodyReadError {
    TooLarge,
    Timeout,
    Io(String),
}

impl BodyReadError {
    fn refusal(&self, limits: &crate::config::HttpConfig) -> Refusal {
        match self {
            BodyReadError::TooLarge => too_large(limits.max_body_bytes),
            BodyReadError::Timeout => Refusal {
                http: 408,
                error: "body_timeout",
                message: format!(
                    "the body did not arrive within {} ms",
                    limits.body_timeout_ms
                ),
            },
            BodyReadError::Io(cause) => Refusal {
                http: 400,
                error: "body_unreadable",
                message: format!("the body could not be read: {cause}"),
            },
        }
    }
}

fn too_large(max_body_bytes: usize) -> Refusal {
    Refusal {
        http: 413,
        error: "too_large",
        message: format!("the body is larger than the {max_body_bytes} bytes allowed"),
    }
}

/// Reads the whole body, refusing more than `limit` bytes or a body that takes past `deadline`.
pub(crate) fn read_body(
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

/// The 404 message, naming every endpoint.
pub(crate) const NOT_FOUND: &str =
    "no such endpoint: use POST /image, /save, /code or /kiosk/pair, GET /healthz, /metrics, /events or /kiosk/hello";

/// Where a request goes, from its method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Health,
    Metrics,
    Events,
    Frame(Endpoint),
    /// The admin pages: their own thread, their own sign-in (the bearer token does not open them).
    Admin,
    /// `POST /kiosk/pair`: a pairing secret traded for a device token (no credential needed).
    KioskPair,
    /// `GET /kiosk/hello`: is this device token paired, and as which tablet?
    KioskHello,
    /// The kiosk page's static files (`GET /kiosk/...`): no credential, they hold no secret.
    Kiosk,
    WrongMethod(&'static str),
    NotFound,
}

pub(crate) fn route(method: &Method, url: &str) -> Route {
    let path = url.split('?').next().unwrap_or("");
    match (method, path) {
        (Method::Get, "/healthz") => Route::Health,
        (Method::Get, "/metrics") => Route::Metrics,
        (Method::Get, "/events") => Route::Events,
        (Method::Post, "/image") => Route::Frame(Endpoint::Image),
        (Method::Post, "/save") => Route::Frame(Endpoint::Save),
        (Method::Post, "/code") => Route::Frame(Endpoint::Code),
        (Method::Post, "/kiosk/pair") => Route::KioskPair,
        (Method::Get, "/kiosk/hello") => Route::KioskHello,
        (_, "/healthz" | "/metrics" | "/events") => Route::WrongMethod("GET"),
        (_, "/image" | "/save" | "/code" | "/kiosk/pair") => Route::WrongMethod("POST"),
        (_, "/kiosk/hello") => Route::WrongMethod("GET"),
        (Method::Get, "/kiosk") => Route::Kiosk,
        (Method::Get, kiosk) if kiosk.starts_with("/kiosk/") => Route::Kiosk,
        (Method::Get | Method::Post, "/admin") => Route::Admin,
        (Method::Get | Method::Post, admin) if admin.starts_with("/admin/") => Route::Admin,
        // HEAD above all: tiny_http would answer it without the body its length announces, an
        // answer the front cannot read back.
        (_, admin) if admin == "/admin" || admin.starts_with("/admin/") => {
            Route::WrongMethod("GET, POST")
        }
        _ => Route::NotFound,
    }
}

/// An answer that is not about a frame (refusals before any worker), audited like one.
fn refusal_answer(
    service: &Service,
    request_id: &str,
    endpoint: Endpoint,
    refusal: Refusal,
) -> (Answer, Handled) {
    let handled = service.refuse(request_id, endpoint, refusal);
    (Answer::of(&handled), handled)
}

/// Answers what needs no worker and queues frame posts; a full queue is answered `busy` at once.
/// The front has read every body completely before the request gets here, so an answer given without
/// reading the body never waits on the client. Admin requests go to the admin thread's queue
/// (`admin`, absent when the pages are disabled).
pub(crate) fn dispatch(
    service: &Service,
    transport: &Transport,
    jobs: &Sender<Job>,
    admin: Option<&admin::AdminQueues<Request>>,
    request: Request,
) {
    let request_id = transport.ids.next();
    // The request's age counts from its arrival at the front; the front named the paired tablet.
    let Forwarded {
        received_at,
        tablet,
        peer,
        admin_session,
    } = Forwarded::of(&request);
    let received_wall =
        Utc::now() - chrono::TimeDelta::from_std(received_at.elapsed()).unwrap_or_default();
    let route = route(request.method(), request.url());
    if route == Route::Health {
        return respond(request, &Answer::ok(service.health()));
    }
    if route == Route::Kiosk {
        service.metrics.count_request("kiosk", "ok");
        return respond_kiosk(request);
    }
    let plain_error = |code: u16, error: &str, message: String| {
        Answer::error(Some(&request_id), code, error, message)
    };
    if let (Route::Admin, Some(admin)) = (route, admin) {
        if let Err(request) = admin.send(request, admin_session) {
            let answer = plain_error(
                503,
                "busy",
                "the admin pages are busy; reload in a moment".into(),
            );
            respond(request, &answer);
        }
        return;
    }
    if let (Some(tablet), Some(kiosk)) = (&tablet, &transport.kiosk) {
        kiosk.seen(tablet, peer.map(|p| p.ip().to_string()));
    }
    match (route, &tablet, &transport.kiosk) {
        (Route::KioskPair, _, Some(kiosk)) => return kiosk.pair(request, request_id),
        (Route::KioskHello, tablet, _) => {
            if tablet.is_some() || authorized(&request, transport.token.as_deref()) {
                return respond(request, &kiosk::hello(tablet.as_deref()));
            }
            let message = "this tablet is not paired (or was revoked): pair it again".into();
            return respond(request, &plain_error(401, "unpaired", message));
        }
        _ => {}
    }
    // The front let the request in; a paired tablet's frames carry its name from the front.
    let frame_from_tablet = matches!(route, Route::Frame(_)) && tablet.is_some();
    if !frame_from_tablet && !authorized(&request, transport.token.as_deref()) {
        let unauthorized = Refusal {
            http: 401,
            error: "unauthorized",
            message: "missing or wrong bearer token: send Authorization: Bearer <token>".into(),
        };
        return match route {
            Route::Frame(endpoint) => {
                let peer = Forwarded::of(&request).peer.map(|peer| peer.ip());
                let handled =
                    service.refuse_before_worker(&request_id, endpoint, unauthorized, peer);
                respond(request, &Answer::of(&handled));
                service.follow_up(handled);
            }
            _ => {
                let label = match route {
                    Route::Metrics => "metrics",
                    Route::Events => "events",
                    _ => "other",
                };
                service.metrics.count_request(label, "unauthorized");
                respond(
                    request,
                    &plain_error(401, unauthorized.error, unauthorized.message),
                );
            }
        };
    }
    let endpoint = match route {
        Route::Frame(endpoint) => endpoint,
        Route::Metrics if may_have_unread_body(&request) => {
            let answer = plain_error(400, "unexpected_body", "GET /metrics takes no body".into());
            return respond(request, &answer);
        }
        Route::Metrics => return respond_text(request, service.metrics_text()),
        Route::Events => {
            let query = request.url().split_once('?').map_or("", |(_, q)| q);
            let answer = match service.events_page(query) {
                Ok(page) => Answer::ok(page),
                Err(refusal) => plain_error(refusal.http, refusal.error, refusal.message),
            };
            return respond(request, &answer);
        }
        Route::WrongMethod(allowed) => {
            let answer = plain_error(
                405,
                "method_not_allowed",
                format!("use {allowed} on this endpoint"),
            );
            return respond(request, &answer);
        }
        Route::Health
        | Route::Admin
        | Route::Kiosk
        | Route::KioskPair
        | Route::KioskHello
        | Route::NotFound => {
            let answer = plain_error(404, "not_found", NOT_FOUND.into());
            return respond(request, &answer);
        }
    };
    let max_body_bytes = service.config.http.max_body_bytes;
    if request.body_length().is_some_and(|n| n > max_body_bytes) {
        let (answer, handled) =
            refusal_answer(service, &request_id, endpoint, too_large(max_body_bytes));
        respond(request, &answer);
        return service.follow_up(handled);
    }
    let job = Job {
        request,
        request_id,
        endpoint,
        received_at,
        received_wall,
        tablet,
    };
    if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = jobs.try_send(job) {
        let handled = service.busy(&job.request_id, job.endpoint);
        respond(job.request, &Answer::of(&handled));
        service.follow_up(handled);
    }
}

/// A file of the kiosk page from the binary; `/kiosk` itself moves to `/kiosk/`, where the page's
/// relative links resolve.
fn respond_kiosk(request: Request) {
    let path = request.url().split('?').next().unwrap_or("");
    let response = match path.strip_prefix("/kiosk/").map(crate::kiosk::asset) {
        Some(Some(asset)) => crate::kiosk::headers(&asset).iter().fold(
            Response::from_data(asset.body.to_vec()),
            |response, (name, value)| response.with_header(header(name, value)),
        ),
        Some(None) => {
            let answer = Answer::error(
                None,
                404,
                "not_found",
                "no such file of the kiosk page: open /kiosk/",
            );
            return respond(request, &answer);
        }
        None => Response::from_data(Vec::new())
            .with_status_code(308)
            .with_header(header("Location", "/kiosk/")),
    };
    if let Err(err) = request.respond(response) {
        log::debug!("could not send the kiosk page: {err}");
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
pub(crate) fn run_worker(
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
            received_wall,
            tablet,
        } = job;
        // The front holds the whole body already; this deadline only guards against a front gone missing.
        let deadline = Instant::now() + Duration::from_millis(service.config.http.body_timeout_ms);
        let peer = Forwarded::of(&request).peer;
        let body = read_body(&mut request, service.config.http.max_body_bytes, deadline);
        match body {
            Ok(body) => {
                let content_type = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Content-Type"))
                    .map(|h| h.value.as_str().to_string());
                let frame = FrameRequest {
                    request_id: request_id.clone(),
                    endpoint,
                    received_at,
                    received_wall,
                    body,
                    content_type,
                    remote: peer.map(|a| a.ip()),
                    tablet,
                };
                let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    service.handle(&mut recognizer, frame)
                }));
                let handled =
                    attempt.unwrap_or_else(|_| service.internal_error(&request_id, endpoint));
                respond(request, &Answer::of(&handled));
                service.follow_up(handled);
            }
            Err(err) => {
                let refusal = err.refusal(&service.config.http);
                let handled = service.refuse(&request_id, endpoint, refusal);
                respond(request, &Answer::of(&handled));
                service.follow_up(handled);
            }
        }
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
            (Method::Post, "/code", Route::Frame(Endpoint::Code)),
            (Method::Get, "/code", Route::WrongMethod("POST")),
            (Method::Get, "/image", Route::WrongMethod("POST")),
            (Method::Post, "/healthz", Route::WrongMethod("GET")),
            (Method::Get, "/open", Route::NotFound),
            (Method::Post, "/", Route::NotFound),
            (Method::Get, "/admin", Route::Admin),
            (Method::Post, "/admin/login", Route::Admin),
            (Method::Get, "/administrator", Route::NotFound),
            (Method::Head, "/admin/", Route::WrongMethod("GET, POST")),
            (Method::Head, "/admin", Route::WrongMethod("GET, POST")),
            (
                Method::Put,
                "/admin/people",
                Route::WrongMethod("GET, POST"),
            ),
            (Method::Head, "/healthz", Route::WrongMethod("GET")),
            (Method::Head, "/kiosk/", Route::NotFound),
            (Method::Post, "/kiosk/pair", Route::KioskPair),
            (Method::Get, "/kiosk/hello", Route::KioskHello),
            (Method::Get, "/kiosk/pair", Route::WrongMethod("POST")),
            (Method::Post, "/kiosk/hello", Route::WrongMethod("GET")),
            (Method::Get, "/kiosk", Route::Kiosk),
            (Method::Get, "/kiosk/", Route::Kiosk),
            (Method::Get, "/kiosk/kiosk.js?v=1", Route::Kiosk),
            (Method::Post, "/kiosk/", Route::NotFound),
            (Method::Get, "/kiosks", Route::NotFound),
        ];
        for (method, url, expected) in cases {
            assert_eq!(route(&method, url), expected, "{method} {url}");
        }
    }
}
