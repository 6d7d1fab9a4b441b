//! The connection front: the first code that reads bytes from the network. It owns the TCP listener
//! and every accepted stream (plain or TLS), bounds the number of connections, reads each request head
//! and body under byte caps and deadlines, answers what needs no worker (401/404/405/408/413/431/505)
//! itself, and forwards each checked request, body complete, to tiny_http on a private Unix socket.
//!
//! Threads: one `front-accept` thread, and one thread per open connection, at most
//! `http.max_connections` of them. A connection thread only ever waits on its own socket (with a
//! deadline) or on tiny_http's answer, so slow or idle clients cost a bounded number of threads and never
//! hold a recognition worker.
//!
//! Credentials first: until a request head shows a valid credential (`credentials`: the tablet's
//! token, an admin session, the self-probe's source address), its connection shares a small budget
//! of slots with every other stranger's and is evicted first (`registry`), its body may hold at most
//! `STRANGER_BODY_BYTES` and must arrive within the head deadline. All bodies in flight together stay
//! under `http.max_body_bytes_in_flight` (`budget`). Refusals, evictions and the budget are counted in
//! /metrics.

pub mod body;
mod budget;
pub mod conn;
pub mod credentials;
pub mod forward;
pub mod head;
mod registry;
pub mod tls;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use self::body::BodyError;
use self::budget::BodyBudget;
use self::conn::{Incoming, ReadError, Transport};
use self::credentials::{Credential, CredentialSet, Shown};
use self::head::{Expectation, Framing, Head, HeadError, Parsed};
use self::registry::{Admission, Limits, Registry};
use crate::http::{route, Route};
use crate::metrics::Metrics;
use crate::record::Endpoint;

/// The largest request head accepted (request line and headers).
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;
/// The least time an admin page's upload gets for its body.
const ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the front waits for tiny_http's answer once the body is handed over (recognition included).
const ANSWER_WAIT: Duration = Duration::from_secs(60);
/// Stack of a connection thread: enough for the TLS handshake, small enough for hundreds of them.
const CONNECTION_STACK: usize = 256 * 1024;
pub use crate::config::BODY_BYTES_WITHOUT_CREDENTIAL as STRANGER_BODY_BYTES;
/// What a 503 for a full body budget asks the client to wait, in seconds.
const RETRY_AFTER_S: u32 = 1;

/// Everything a connection thread needs to know.
pub struct Settings {
    pub max_connections: usize,
    /// Of those, connections whose last request showed no valid credential at most.
    pub max_connections_without_credential: usize,
    /// From accept to the end of the first head (the TLS handshake included), and from the first byte
    /// of a later request to the end of its head.
    pub head_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
    /// From the end of the head to the end of the body; also bounds each write to the client.
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
    /// All bodies held at the front at once, together.
    pub max_body_bytes_in_flight: usize,
    /// Who may use the tablet's endpoints, and whose connections are not a stranger's.
    pub credentials: CredentialSet,
    /// tiny_http's Unix socket.
    pub backend: PathBuf,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct Shared {
    settings: Settings,
    metrics: Arc<Metrics>,
    refusals: Arc<dyn Refusals>,
    registry: Arc<Registry>,
    budget: Arc<BodyBudget>,
}

/// How the daemon's self-probe presents itself: it binds its socket first and names the address it
/// will connect from. That connection is admitted over the limit, is never evicted and counts as
/// credentialed, so no client can crowd the probe out and make the daemon restart itself.
#[derive(Clone)]
pub struct ProbeEntrance(Arc<Registry>);

impl ProbeEntrance {
    /// The self-probe's next connection comes from `from`.
    pub fn expect(&self, from: SocketAddr) {
        self.0.expect_probe(from);
    }
}

/// Accepts on `listener` in a thread of its own until the process ends.
pub fn start(
    listener: TcpListener,
    settings: Settings,
    metrics: Arc<Metrics>,
    refusals: Arc<dyn Refusals>,
) -> std::io::Result<ProbeEntrance> {
    crate::http::forwarded::start_clock();
    let registry = Arc::new(Registry::new(Limits {
        total: settings.max_connections,
        strangers: settings.max_connections_without_credential,
        per_address: registry::CONNECTIONS_PER_ADDRESS,
    }));
    registry::report(&registry, &metrics);
    let budget = Arc::new(BodyBudget::new(settings.max_body_bytes_in_flight));
    budget::report(&budget, &metrics);
    let shared = Arc::new(Shared {
        registry: Arc::clone(&registry),
        budget,
        settings,
        metrics,
        refusals,
    });
    std::thread::Builder::new()
        .name("front-accept".into())
        .spawn(move || accept_loop(&listener, &shared))?;
    Ok(ProbeEntrance(registry))
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors or a connection reset before accept: both pass.
                log::warn!("accept failed: {err}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Admission::Admitted(id) = shared.registry.admit(&stream, peer) else {
            continue;
        };
        let connection = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("front-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                serve_connection(stream, peer, id, &connection);
                connection.registry.remove(id);
            });
        if let Err(err) = spawned {
            shared.registry.refuse_admitted(id);
            log::warn!("no thread for a connection from {peer}: {err}");
        }
    }
}

/// What to do with the connection after an exchange.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, id: u64, shared: &Shared) {
    let settings = &shared.settings;
    let first_deadline = Instant::now() + settings.head_timeout;
    let _ = stream.set_nodelay(true);
    let transport = match &settings.tls {
        Some(config) => match Transport::accept_tls(stream, Arc::clone(config), first_deadline) {
            Ok(transport) => transport,
            Err(err) => {
                log::debug!("TLS handshake with {peer} failed: {err:?}");
                return;
            }
        },
        None => Transport::Plain(stream),
    };
    let mut incoming = Incoming::new(transport);
    let mut waits = (first_deadline, Some(first_deadline));
    while exchange(&mut incoming, peer, id, waits, shared) == Next::KeepAlive {
        shared.registry.waiting(id);
        waits = (Instant::now() + settings.idle_timeout, None);
    }
    incoming.transport.close();
}

/// One request: wait for its first byte until `waits.0`, read its head (until `waits.1`, or
/// `head_timeout` after the first byte), check it, read its body, forward it, answer.
fn exchange(
    incoming: &mut Incoming,
    peer: SocketAddr,
    id: u64,
    waits: (Instant, Option<Instant>),
    shared: &Shared,
) -> Next {
    let settings = &shared.settings;
    if incoming.buffer.is_empty() && incoming.fill(waits.0).is_err() {
        return Next::Close;
    }
    let head_deadline = waits
        .1
        .unwrap_or_else(|| Instant::now() + settings.head_timeout);
    let (head, used) = loop {
        match head::parse(&incoming.buffer, MAX_HEAD_BYTES) {
            Parsed::Complete(head, used) => break (head, used),
            Parsed::Refused(err) => return refuse(incoming, shared, refusal_for_head(&err)),
            Parsed::Incomplete => match fill_head(incoming, head_deadline) {
                Ok(()) => {}
                Err(ReadError::Timeout) => {
                    let refusal = Refusal::new(
                        408,
                        "head_timeout",
                        format!(
                            "the request head did not arrive within {} ms",
                            settings.head_timeout.as_millis()
                        ),
                    );
                    return refuse(incoming, shared, refusal);
                }
                Err(ReadError::Closed) => return Next::Close,
            },
        }
    };
    incoming.buffer.drain(..used);
    let received_at = Instant::now();
    let shown = settings
        .credentials
        .shown(&head, crate::admin::SESSION_COOKIE);
    // From here until its next request, the connection's standing is what this head showed.
    shared.registry.working(id, shown.any());
    let (framing, tablet) = match check(&head, settings, &shown) {
        Ok(checked) => checked,
        Err(refusal) => {
            let body_pending = !matches!(head.framing(), Ok(Framing::None | Framing::Length(0)));
            let next = refuse(incoming, shared, refusal.counted_as(&head));
            // A refusal's JSON body after a HEAD is more than the client expects on its connection.
            return if body_pending || !head.keep_alive() || head.method == "HEAD" {
                Next::Close
            } else {
                next
            };
        }
    };
    if head.expectation() == Expectation::Continue
        && framing != Framing::None
        && incoming
            .transport
            .send(b"HTTP/1.1 100 Continue\r\n\r\n", send_deadline(settings))
            .is_err()
    {
        return Next::Close;
    }
    let (limit, body_deadline) = body_limits(&head, settings, &shown, received_at);
    let mut reservation = shared.budget.reserve();
    let body = match incoming.read_body(framing, limit, body_deadline, &mut reservation) {
        Ok(body) => body,
        Err(err) => {
            // Logged and audited in the summary of what the front refused from this address.
            let refusal = refusal_for_body(err, settings, &shown, limit, shared.budget.limit())
                .counted_as(&head);
            refuse(incoming, shared, refusal);
            return Next::Close;
        }
    };
    let request_head = forward::request_head(
        &head,
        body.len(),
        peer,
        received_at,
        tablet.as_deref(),
        shown.admin,
    );
    let forwarded = forward::forward(&settings.backend, &request_head, &body, ANSWER_WAIT);
    drop((body, reservation));
    let upstream = match forwarded {
        Ok(upstream) => upstream,
        Err(err) => {
            log::warn!("no answer from the request handler for {peer}: {err}");
            let refusal = Refusal::new(
                503,
                "unavailable",
                "the daemon could not handle the request (it may be stopping); send it again"
                    .into(),
            );
            refuse(incoming, shared, refusal);
            return Next::Close;
        }
    };
    let keep_alive = head.keep_alive();
    let bytes = answer_bytes(
        upstream.status,
        &upstream.headers,
        &upstream.body,
        keep_alive,
    );
    if incoming
        .transport
        .send(&bytes, send_deadline(settings))
        .is_err()
        || !keep_alive
    {
        return Next::Close;
    }
    Next::KeepAlive
}

/// An answer must have left within `http.body_timeout_ms` of starting.
fn send_deadline(settings: &Settings) -> Instant {
    Instant::now() + settings.body_timeout
}

/// Reads until the buffered head may have changed its verdict: a new line ended, the first bytes
/// (checked as a request line early) or the cap passed. A client sending its head a byte at a time then
/// costs one parse per line, not one per byte.
fn fill_head(incoming: &mut Incoming, deadline: Instant) -> Result<(), ReadError> {
    loop {
        let before = incoming.buffer.len();
        incoming.fill(deadline)?;
        let fresh = &incoming.buffer[before..];
        let len = incoming.buffer.len();
        if fresh.contains(&b'\n') || len <= EARLY_CHECK_BYTES || len > MAX_HEAD_BYTES {
            return Ok(());
        }
    }
}

/// Bytes of a head parsed on every read, so that what cannot be HTTP is refused at once.
const EARLY_CHECK_BYTES: usize = 1024;

/// An answer the front gives itself, as JSON in the daemon's error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    code: u16,
    error: &'static str,
    message: String,
    /// Where the request was going, when its head was read.
    route: Option<Route>,
}

impl Refusal {
    fn new(code: u16, error: &'static str, message: String) -> Refusal {
        Refusal {
            code,
            error,
            message,
            route: None,
        }
    }

    fn counted_as(mut self, head: &Head) -> Refusal {
        let method = head.method.parse().unwrap_or(tiny_http::Method::Get);
        self.route = Some(route(&method, &head.target));
        self
    }
}

/// The /metrics label of a route.
fn route_label(route: Route) -> &'static str {
    match route {
        Route::Frame(endpoint) => endpoint.name(),
        Route::Metrics => "metrics",
        Route::Events => "events",
        Route::Health => "healthz",
        Route::Admin => "admin",
        Route::KioskPair => "kiosk_pair",
        Route::KioskHello => "kiosk_hello",
        Route::Kiosk => "kiosk",
        Route::WrongMethod(_) | Route::NotFound => "other",
    }
}

/// Records what the front refuses, the way the rest of the daemon records refusals.
pub trait Refusals: Send + Sync {
    /// The next request id, from the same sequence as the requests tiny_http handles.
    fn request_id(&self) -> String;
    /// Any other refusal (a head that is not HTTP, no token for `/metrics`, a path that does not
    /// exist, ...): counted into the summary of what was refused from `peer`, never a line each.
    fn summarise(&self, request_id: &str, error: &'static str, peer: Option<std::net::IpAddr>);
    /// A refused frame post (`/image`, `/save`, `/code`) from `peer`, counted and summarised per
    /// address like every refusal before a worker: returns the answer's JSON, and the bookkeeping to
    /// run once the answer is sent.
    fn refuse_frame(
        &self,
        request_id: &str,
        endpoint: Endpoint,
        refusal: crate::record::Refusal,
        peer: Option<std::net::IpAddr>,
    ) -> (serde_json::Value, Box<dyn FnOnce() + Send>);
}

fn refusal_for_head(err: &HeadError) -> Refusal {
    match err {
        HeadError::Malformed(why) => Refusal::new(
            400,
            "bad_request",
            format!("this is not an HTTP/1.1 request: {why}"),
        ),
        HeadError::UnsupportedVersion(version) => Refusal::new(
            505,
            "http_version_not_supported",
            format!("{version} is not spoken here: use HTTP/1.1 (or HTTP/1.0)"),
        ),
        HeadError::TooLarge => Refusal::new(
            431,
            "head_too_large",
            format!(
                "the request line and headers must fit in {MAX_HEAD_BYTES} bytes and {} header lines",
                head::MAX_HEADERS
            ),
        ),
    }
}

fn refusal_for_body(
    err: BodyError,
    settings: &Settings,
    shown: &Shown,
    cap: usize,
    budget: usize,
) -> Refusal {
    match err {
        BodyError::TooLarge => too_large(cap, shown),
        BodyError::OverBudget => Refusal::new(
            503,
            "busy",
            format!(
                "the request bodies in flight would pass the {budget} bytes allowed together \
                 (http.max_body_bytes_in_flight); send it again in a moment"
            ),
        ),
        BodyError::Timeout if !shown.any() => Refusal::new(
            408,
            "body_timeout",
            format!(
                "without a credential, the body must arrive within {} ms",
                stranger_body_timeout(settings).as_millis()
            ),
        ),
        BodyError::Timeout => Refusal::new(
            408,
            "body_timeout",
            format!(
                "the body did not arrive within {} ms",
                settings.body_timeout.as_millis()
            ),
        ),
        BodyError::Cut(why) => Refusal::new(
            400,
            "body_unreadable",
            format!("the body could not be read: {why}"),
        ),
        BodyError::Malformed(why) => Refusal::new(
            400,
            "body_unreadable",
            format!("the chunked body could not be read: {why}"),
        ),
    }
}

fn too_large(cap: usize, shown: &Shown) -> Refusal {
    let message = if shown.any() {
        format!("the body is larger than the {cap} bytes allowed")
    } else {
        format!("without a credential, a body may hold at most {cap} bytes")
    };
    Refusal::new(413, "too_large", message)
}

/// The largest body a request to `route` may carry: `http.max_body_bytes` with a credential, far less
/// without (`STRANGER_BODY_BYTES`), and a pairing request's small JSON in any case.
fn body_cap(route: Route, settings: &Settings, shown: &Shown) -> usize {
    let cap = if shown.any() {
        settings.max_body_bytes
    } else {
        settings.max_body_bytes.min(STRANGER_BODY_BYTES)
    };
    match route {
        Route::KioskPair | Route::KioskHello => cap.min(MAX_PAIRING_BODY_BYTES),
        _ => cap,
    }
}

/// A stranger's body must come as fast as a head.
fn stranger_body_timeout(settings: &Settings) -> Duration {
    settings.head_timeout.min(settings.body_timeout)
}

/// The body's size cap (`body_cap`) and deadline: without a credential, within the head deadline;
/// with one, within `http.body_timeout_ms`, and photo uploads to the admin pages, which come from
/// phones over Wi-Fi, get at least `ADMIN_BODY_TIMEOUT`.
fn body_limits(
    head: &Head,
    settings: &Settings,
    shown: &Shown,
    received_at: Instant,
) -> (usize, Instant) {
    let route = head
        .method
        .parse::<tiny_http::Method>()
        .map_or(Route::NotFound, |method| route(&method, &head.target));
    let cap = body_cap(route, settings, shown);
    let timeout = if !shown.any() {
        stranger_body_timeout(settings)
    } else if route == Route::Admin {
        settings.body_timeout.max(ADMIN_BODY_TIMEOUT)
    } else {
        settings.body_timeout
    };
    (cap, received_at + timeout)
}

/// What needs no body to answer: route, credential, framing, size. `Ok` gives the body's framing and
/// the paired tablet the request's device token belongs to.
fn check(
    head: &Head,
    settings: &Settings,
    shown: &Shown,
) -> Result<(Framing, Option<String>), Refusal> {
    let method = head
        .method
        .parse::<tiny_http::Method>()
        .map_err(|()| Refusal::new(400, "bad_request", "the method is not ASCII".into()))?;
    let route = route(&method, &head.target);
    admit(route, &shown.bearer, settings.credentials.token_required())?;
    match route {
        Route::WrongMethod(allowed) => {
            return Err(Refusal::new(
                405,
                "method_not_allowed",
                format!("use {allowed} on this endpoint"),
            ))
        }
        Route::NotFound => {
            return Err(Refusal::new(
                404,
                "not_found",
                crate::http::NOT_FOUND.into(),
            ))
        }
        _ => {}
    }
    let framing = head.framing().map_err(|why| {
        Refusal::new(
            400,
            "bad_framing",
            format!("the body's framing is refused: {why}"),
        )
    })?;
    if let Framing::Length(length) = framing {
        let cap = body_cap(route, settings, shown);
        if length > cap as u64 {
            return Err(too_large(cap, shown));
        }
    }
    if head.expectation() == Expectation::Unsupported {
        return Err(Refusal::new(
            417,
            "expectation_failed",
            "only `Expect: 100-continue` is understood".into(),
        ));
    }
    let tablet = match &shown.bearer {
        Credential::Tablet(name) => Some(name.clone()),
        _ => None,
    };
    Ok((framing, tablet))
}

/// The largest body of a pairing request (`{"secret": "..."}`).
const MAX_PAIRING_BODY_BYTES: usize = 1024;

/// May a request with `credential` go to `route`? A tablet's device token opens the frame posts and
/// `/kiosk/hello`; the shared token all but the admin pages; the admin pages, the kiosk page's files
/// and pairing need neither.
fn admit(route: Route, credential: &Credential, token_required: bool) -> Result<(), Refusal> {
    let unauthorized = || {
        Refusal::new(
            401,
            "unauthorized",
            "missing or wrong bearer token: send Authorization: Bearer <token>".into(),
        )
    };
    let unpaired = || {
        Refusal::new(
            401,
            "unpaired",
            "this tablet is not paired (or was revoked): pair it again with a link from facegate tablets add NAME".into(),
        )
    };
    match (route, credential) {
        (Route::Health | Route::Admin | Route::Kiosk | Route::KioskPair, _) => Ok(()),
        (Route::KioskHello, Credential::Tablet(_) | Credential::Shared) => Ok(()),
        (Route::KioskHello, _) | (_, Credential::Unpaired) => Err(unpaired()),
        (_, Credential::Shared) => Ok(()),
        (Route::Metrics | Route::Events, Credential::Tablet(_)) => Err(unauthorized()),
        (_, Credential::Tablet(_)) => Ok(()),
        (_, Credential::Nothing) if token_required => Err(unauthorized()),
        (_, Credential::Nothing) => Ok(()),
    }
}

/// Answers `refusal` as JSON, counts it, and tells whether the connection may go on.
fn refuse(incoming: &mut Incoming, shared: &Shared, refusal: Refusal) -> Next {
    let request_id = shared.refusals.request_id();
    let (body, after) = match refusal.route {
        Some(Route::Frame(endpoint)) => {
            let recorded = crate::record::Refusal {
                http: refusal.code,
                error: refusal.error,
                message: refusal.message.clone(),
            };
            let peer = incoming.transport.peer_ip();
            let (body, after) = shared
                .refusals
                .refuse_frame(&request_id, endpoint, recorded, peer);
            (body, Some(after))
        }
        route => {
            if let Some(route) = route {
                shared
                    .metrics
                    .count_request(route_label(route), refusal.error);
            }
            shared
                .refusals
                .summarise(&request_id, refusal.error, incoming.transport.peer_ip());
            let body = json!({
                "request_id": request_id,
                "status": "error",
                "error": refusal.error,
                "message": refusal.message,
            });
            (body, None)
        }
    };
    let next = send_refusal(incoming, shared, &refusal, &body);
    if let Some(after) = after {
        after();
    }
    next
}

fn send_refusal(
    incoming: &mut Incoming,
    shared: &Shared,
    refusal: &Refusal,
    body: &serde_json::Value,
) -> Next {
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Cache-Control".to_string(), "no-store".to_string()),
    ];
    if refusal.code == 503 {
        headers.push(("Retry-After".to_string(), RETRY_AFTER_S.to_string()));
    }
    let keep_alive = matches!(refusal.code, 401 | 404 | 405);
    let bytes = answer_bytes(
        refusal.code,
        &headers,
        body.to_string().as_bytes(),
        keep_alive,
    );
    let deadline = send_deadline(&shared.settings);
    if incoming.transport.send(&bytes, deadline).is_err() || !keep_alive {
        return Next::Close;
    }
    Next::KeepAlive
}

/// An HTTP/1.1 answer with an exact Content-Length and the front's own Connection header.
fn answer_bytes(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\n",
        tiny_http::StatusCode(status).default_reason_phrase()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    ));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            max_connections: 8,
            max_connections_without_credential: 4,
            head_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            max_body_bytes: 1000,
            max_body_bytes_in_flight: 2000,
            credentials: CredentialSet::new(Some("t".into())),
            backend: PathBuf::from("/nonexistent"),
            tls: None,
        }
    }

    fn head(text: &str) -> Head {
        match head::parse(text.as_bytes(), MAX_HEAD_BYTES) {
            Parsed::Complete(head, _) => head,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn the_front_refuses_what_needs_no_body_in_the_daemons_order() {
        let cases = [
            ("GET /healthz HTTP/1.1\r\n\r\n", Ok(Framing::None)),
            ("POST /image HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", Err(401)),
            ("GET /nope HTTP/1.1\r\n\r\n", Err(401)),
            // The admin pages sign in on their own: no bearer token needed to reach them.
            ("GET /admin/ HTTP/1.1\r\n\r\n", Ok(Framing::None)),
            ("GET /kiosk/kiosk.js HTTP/1.1\r\n\r\n", Ok(Framing::None)),
            ("GET /nope HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n", Err(404)),
            ("GET /image HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n", Err(405)),
            ("POST /image HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 1001\r\n\r\n", Err(413)),
            ("POST /image HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: -1\r\n\r\n", Err(400)),
            ("POST /image HTTP/1.1\r\nAuthorization: Bearer t\r\nExpect: 200-ok\r\nContent-Length: 4\r\n\r\n", Err(417)),
            ("POST /image HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 1000\r\n\r\n", Ok(Framing::Length(1000))),
            ("POST /save HTTP/1.1\r\nAuthorization: Bearer t\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(Framing::Chunked)),
            // Pairing needs no credential, and its body is small.
            ("POST /kiosk/pair HTTP/1.1\r\nContent-Length: 40\r\n\r\n", Ok(Framing::Length(40))),
            ("POST /kiosk/pair HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", Err(413)),
            // A device token no tablet holds is told it is unpaired; a wrong shared token is not.
            ("GET /kiosk/hello HTTP/1.1\r\n\r\n", Err(401)),
            ("POST /image HTTP/1.1\r\nAuthorization: Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\nContent-Length: 4\r\n\r\n", Err(401)),
        ];
        let settings = settings();
        for (text, expected) in cases {
            let head = head(text);
            let shown = settings.credentials.shown(&head, "facegate_admin");
            let got = check(&head, &settings, &shown)
                .map(|(framing, _)| framing)
                .map_err(|r| r.code);
            assert_eq!(got, expected, "{text:?}");
        }
    }

    #[test]
    fn each_credential_opens_its_own_routes() {
        let tablet = Credential::Tablet("front".into());
        let image = Route::Frame(Endpoint::Image);
        let cases = [
            (image, Credential::Shared, true, Ok(())),
            (image, tablet.clone(), true, Ok(())),
            (image, Credential::Unpaired, true, Err("unpaired")),
            (image, Credential::Unpaired, false, Err("unpaired")),
            (image, Credential::Nothing, true, Err("unauthorized")),
            (image, Credential::Nothing, false, Ok(())),
            (Route::KioskHello, tablet.clone(), true, Ok(())),
            (Route::KioskHello, Credential::Shared, true, Ok(())),
            (
                Route::KioskHello,
                Credential::Nothing,
                false,
                Err("unpaired"),
            ),
            (Route::KioskPair, Credential::Nothing, true, Ok(())),
            (Route::Metrics, tablet.clone(), true, Err("unauthorized")),
            (Route::Metrics, Credential::Shared, true, Ok(())),
            (Route::NotFound, tablet, true, Ok(())),
        ];
        for (route, credential, required, expected) in cases {
            let got = admit(route, &credential, required).map_err(|r| r.error);
            assert_eq!(
                got, expected,
                "{route:?} {credential:?} required={required}"
            );
        }
    }

    #[test]
    fn answers_carry_an_exact_length_and_the_connection_decision() {
        let bytes = answer_bytes(505, &[], b"{}", false);
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
    }
}
