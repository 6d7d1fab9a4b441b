//! The building admin's pages at `/admin/`: sign-in with one Argon2id password, then the dashboard,
//! people (enrol from uploaded photos, remove), events with snapshots and CSV export, and the door.
//! Server-rendered HTML from templates compiled into the binary, one small script, nothing from the
//! internet. The HTTP layer hands each request over parsed ([`AdminRequest`]) and sends back the
//! [`AdminResponse`]; nothing here touches a socket.

pub(crate) mod csrf;
pub(crate) mod form;
pub(crate) mod history;
pub(crate) mod pages;
pub mod password;
mod routes;
pub(crate) mod session;
mod tablets;
mod visitor_codes;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use serde_json::{json, Value};

use crate::audit::AuditWriter;
use crate::config::Config;
use crate::door::DoorController;
use crate::gallery::EmbedderId;
use crate::vision::{PipelineModels, Recognizer};

use crate::codes::lockout::{BuildingRules, Gate, LockoutRules, Lockouts};
use session::{SessionLimits, Sessions};

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "facegate_admin";
/// At most this many admin sessions exist at once.
const MAX_SESSIONS: usize = 16;
/// Sign-in attempts per client address, with the visitor codes' bounded lockout table: five wrong
/// passwords within five minutes lock the address out for five minutes.
const LOGIN_RULES: LockoutRules = LockoutRules {
    max_failures: 5,
    window: Duration::from_secs(300),
    lockout: Duration::from_secs(300),
};
const LOGIN_ADDRESSES: usize = 1024;
/// Wrong passwords from every address together: past 20 within ten minutes, sign-in pauses for
/// everyone for ten minutes (admins signed in stay signed in). One address's lockout alone let a
/// client with many addresses guess without end, and every guess wrote a kept audit line.
const LOGIN_BUILDING: BuildingRules = BuildingRules {
    max_failures: 20,
    window: Duration::from_secs(600),
    pause: Duration::from_secs(600),
};

/// What the pages poll for the door's state; polling does not keep a session alive.
const STATUS_PATH: &str = "/admin/status.json";
const CSS: &str = include_str!("static/admin.css");
const JS: &str = include_str!("static/admin.js");
const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
    Other,
}

/// One request for `/admin…`, its body already read (within the daemon's size and time limits).
#[derive(Debug, Clone)]
pub(crate) struct AdminRequest {
    pub method: Method,
    /// Path and query, as sent.
    pub url: String,
    pub cookie: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub peer: IpAddr,
    /// When the front received the request: the test pulse's freshness counts from it.
    pub received_at: Instant,
}

#[derive(Debug, Clone)]
pub(crate) struct AdminResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl AdminResponse {
    fn new(status: u16, content_type: &str, body: Vec<u8>) -> AdminResponse {
        AdminResponse {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body,
        }
    }

    fn page(status: u16, page: &impl Template) -> AdminResponse {
        match page.render() {
            Ok(html) => AdminResponse::new(status, "text/html; charset=utf-8", html.into_bytes()),
            Err(err) => {
                log::error!("admin page not rendered: {err}");
                AdminResponse::new(
                    500,
                    "text/plain; charset=utf-8",
                    b"the page could not be rendered; see the log".to_vec(),
                )
            }
        }
    }

    fn redirect(location: &str) -> AdminResponse {
        let mut response = AdminResponse::new(303, "text/plain; charset=utf-8", Vec::new());
        response.headers.push(("Location", location.to_string()));
        response
    }

    fn json(status: u16, value: &Value) -> AdminResponse {
        AdminResponse::new(status, "application/json", value.to_string().into_bytes())
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> AdminResponse {
        self.headers.push((name, value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the daemon lends the admin pages.
pub(crate) struct AdminContext {
    pub config: Config,
    pub models: PipelineModels,
    pub embedder: EmbedderId,
    pub threshold: f32,
    pub door: Arc<DoorController>,
    pub audit: AuditWriter,
    /// The daemon's `/healthz` answer.
    pub health: Box<dyn Fn() -> Value + Send + Sync>,
    /// A fresh request id from the daemon's sequence (for audited admin actions).
    pub next_id: Box<dyn Fn() -> String + Send + Sync>,
    /// Cookies get `Secure` when the daemon serves TLS.
    pub secure_cookies: bool,
    /// The PEM certificate a tablet installs to trust the door, when the daemon serves TLS.
    pub tablet_certificate: Option<Box<dyn Fn() -> Result<String, String> + Send + Sync>>,
}

/// What a form that changed something leaves for the page it redirects to (Post/Redirect/Get): a
/// reload of that page shows it once and repeats nothing.
pub(crate) struct Flash {
    notice: Option<pages::Notice>,
    enrolled: Option<pages::EnrolResult>,
    /// A pairing link just made on the Tablets page.
    pairing: Option<pages::PairingView>,
}

pub(crate) struct Admin {
    ctx: AdminContext,
    sessions: Arc<Sessions<Flash>>,
    /// The stored password hash the sessions were made under: when `facegate admin set-password`
    /// changes the file, every session ends.
    password_seen: Mutex<Option<String>>,
    logins: Mutex<Lockouts>,
    /// Loaded at the first enrolment from the page, then kept.
    recognizer: Mutex<Option<Recognizer>>,
}

/// A signed-in request: the session's secret and CSRF token.
struct Session {
    secret: String,
    csrf: String,
}

impl Admin {
    pub fn new(ctx: AdminContext) -> Admin {
        let limits = SessionLimits {
            idle: Duration::from_secs(ctx.config.admin.session_idle_s),
            max_age: Duration::from_secs(ctx.config.admin.session_max_s),
            capacity: MAX_SESSIONS,
        };
        let password_seen = Mutex::new(password::load(&ctx.config.state_dir).ok().flatten());
        Admin {
            ctx,
            sessions: Arc::new(Sessions::new(limits)),
            password_seen,
            logins: Mutex::new(
                Lockouts::with_capacity(LOGIN_RULES, LOGIN_ADDRESSES).with_building(LOGIN_BUILDING),
            ),
            recognizer: Mutex::new(None),
        }
    }

    /// The session store, for the front to tell a signed-in browser from a stranger.
    pub fn sessions(&self) -> Arc<Sessions<Flash>> {
        Arc::clone(&self.sessions)
    }

    /// Answers one `/admin…` request.
    pub fn handle(&self, request: &AdminRequest) -> AdminResponse {
        let now = Instant::now();
        let path = request.url.split('?').next().unwrap_or_default();
        let mut response = match (request.method, path) {
            (_, "/admin") => AdminResponse::redirect("/admin/"),
            (Method::Get, "/admin/static/admin.css") => {
                AdminResponse::new(200, "text/css; charset=utf-8", CSS.into())
                    .with("Cache-Control", "max-age=300")
            }
            (Method::Get, "/admin/static/admin.js") => {
                AdminResponse::new(200, "text/javascript; charset=utf-8", JS.into())
                    .with("Cache-Control", "max-age=300")
            }
            (Method::Get, "/admin/login") => match self.session(request, now) {
                Some(_) => AdminResponse::redirect("/admin/"),
                None => self.login_page(200, None),
            },
            (Method::Post, "/admin/login") => self.login(request, now),
            _ => match self.session(request, now) {
                Some(session) => self.signed_in(request, path, &session),
                None if request.method == Method::Get && !path.ends_with(".json") => {
                    AdminResponse::redirect("/admin/login")
                }
                None => self.message(
                    None,
                    401,
                    "Signed out",
                    "Your session has ended. Sign in again.",
                    "/admin/login",
                ),
            },
        };
        for (name, value) in SECURITY_HEADERS {
            response.headers.push((name, value.to_string()));
        }
        if response.header("Cache-Control").is_none() {
            response.headers.push(("Cache-Control", "no-store".into()));
        }
        response
    }

    /// Ends every session if the password file changed since the sessions were made (`facegate admin
    /// set-password` while the daemon runs). An unreadable file counts as changed. Returns the stored
    /// hash now.
    fn end_sessions_if_the_password_changed(&self) -> Option<String> {
        let current = match password::load(&self.ctx.config.state_dir) {
            Ok(current) => current,
            Err(err) => {
                log::error!("admin password file unreadable, signing everyone out: {err}");
                Some(String::new())
            }
        };
        let mut seen = self.password_seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen != current {
            self.sessions.end_all();
            if seen.is_some() {
                log::warn!("the admin password changed: every admin session ended");
                self.audit(json!({"action": "sessions_ended", "why": "password_changed"}));
            }
            *seen = current.clone();
        }
        current
    }

    fn session(&self, request: &AdminRequest, now: Instant) -> Option<Session> {
        self.end_sessions_if_the_password_changed();
        let secret = form::cookie(request.cookie.as_deref(), SESSION_COOKIE)?;
        let csrf = if request.url.starts_with(STATUS_PATH) {
            self.sessions.peek(secret, now)?
        } else {
            self.sessions.check(secret, now)?
        };
        Some(Session {
            secret: secret.to_string(),
            csrf,
        })
    }

    fn cookie(&self, name: &str, value: &str, max_age: u64) -> String {
        let secure = if self.ctx.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        format!("{name}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }

    fn chrome(&self, session: Option<&Session>, page: &'static str) -> pages::Chrome {
        pages::Chrome {
            signed_in: session.is_some(),
            page,
            csrf: session.map(|s| s.csrf.clone()).unwrap_or_default(),
            notice: None,
        }
    }

    fn message(
        &self,
        session: Option<&Session>,
        status: u16,
        heading: &str,
        text: &str,
        back: &str,
    ) -> AdminResponse {
        let page = pages::Message {
            chrome: self.chrome(session, ""),
            heading: heading.into(),
            text: text.into(),
            back: back.into(),
        };
        AdminResponse::page(status, &page)
    }

    /// The sign-in form, with a fresh pre-login token in a cookie and in the form.
    fn login_page(&self, status: u16, notice: Option<pages::Notice>) -> AdminResponse {
        let token = session::random_token();
        let password_set = matches!(password::load(&self.ctx.config.state_dir), Ok(Some(_)));
        let mut chrome = self.chrome(None, "login");
        chrome.csrf = token.clone();
        chrome.notice = notice;
        let page = pages::Login {
            chrome,
            password_set,
        };
        AdminResponse::page(status, &page)
            .with("Set-Cookie", self.cookie(csrf::LOGIN_COOKIE, &token, 3600))
    }

    fn login(&self, request: &AdminRequest, now: Instant) -> AdminResponse {
        let peer = request.peer;
        let logins = || self.logins.lock().unwrap_or_else(|p| p.into_inner());
        match logins().gate(peer, now) {
            Gate::LockedOut { retry_after } => return self.locked_out(retry_after),
            Gate::Paused { retry_after } => return self.sign_in_paused(retry_after),
            Gate::Open { .. } => {}
        }
        let fields = form::Fields::urlencoded(&String::from_utf8_lossy(&request.body));
        let expected = form::cookie(request.cookie.as_deref(), csrf::LOGIN_COOKIE).unwrap_or("");
        if !csrf::matches(expected, fields.get("csrf")) {
            return self.login_page(
                403,
                pages::Notice::bad("The sign-in form had expired. Please sign in again."),
            );
        }
        let stored = match password::load(&self.ctx.config.state_dir) {
            Ok(Some(stored)) => stored,
            Ok(None) => return self.login_page(403, None),
            Err(err) => {
                log::error!("admin sign-in impossible: {err}");
                return self.login_page(500, pages::Notice::bad(err.to_string()));
            }
        };
        let given = fields.get("password").unwrap_or_default();
        if !password::verify(given, &stored) {
            let failure = logins().failed(peer, now);
            log::warn!("admin sign-in failed from {peer}");
            self.audit(json!({"action": "login_failed", "remote": peer.to_string()}));
            if failure.pause_started {
                log::warn!(
                    "admin sign-in paused for everyone: {} wrong passwords within {} s",
                    LOGIN_BUILDING.max_failures,
                    LOGIN_BUILDING.window.as_secs()
                );
                self.audit(json!({
                    "action": "login_paused",
                    "remote": peer.to_string(),
                    "pause_s": LOGIN_BUILDING.pause.as_secs(),
                }));
            }
            return match failure.gate {
                Gate::LockedOut { retry_after } => self.locked_out(retry_after),
                Gate::Paused { retry_after } => self.sign_in_paused(retry_after),
                // This failure started the lockout.
                Gate::Open { attempts_left: 0 } => self.locked_out(LOGIN_RULES.lockout),
                Gate::Open { .. } => self.login_page(401, pages::Notice::bad("Wrong password.")),
            };
        }
        // Sessions from before a password change end now, not this new one later; and a password
        // changed while this one was being checked is not the password any more.
        if self.end_sessions_if_the_password_changed().as_deref() != Some(stored.as_str()) {
            log::warn!(
                "admin sign-in from {peer} refused: the password changed while it was checked"
            );
            return self.login_page(
                401,
                pages::Notice::bad("The password has just been changed. Sign in with the new one."),
            );
        }
        // The hash check took a while: the session starts now, not when the request arrived.
        let new = self.sessions.create(Instant::now());
        log::info!("admin signed in from {peer}");
        self.audit(json!({"action": "login", "remote": peer.to_string()}));
        AdminResponse::redirect("/admin/")
            .with(
                "Set-Cookie",
                self.cookie(SESSION_COOKIE, &new.secret, self.sessions.cookie_max_age()),
            )
            .with("Set-Cookie", self.cookie(csrf::LOGIN_COOKIE, "", 0))
    }

    fn sign_in_paused(&self, wait: Duration) -> AdminResponse {
        self.sign_in_refused("Sign-in paused", wait, |minutes| {
            format!("Too many wrong passwords from several addresses: sign-in is paused for everyone for {minutes} minutes. Admins already signed in stay signed in.")
        })
    }

    fn locked_out(&self, wait: Duration) -> AdminResponse {
        self.sign_in_refused("Locked out", wait, |minutes| {
            format!("Too many wrong passwords from this address. Try again in {minutes} minutes.")
        })
    }

    /// A 429 page for a sign-in refused for `wait`, whose text names the whole minutes left.
    fn sign_in_refused(
        &self,
        title: &str,
        wait: Duration,
        text: impl FnOnce(u64) -> String,
    ) -> AdminResponse {
        let seconds = wait.as_secs().max(1);
        self.message(
            None,
            429,
            title,
            &text(seconds.div_ceil(60)),
            "/admin/login",
        )
        .with("Retry-After", seconds.to_string())
    }

    /// Queues an `admin` audit line (the audit writer logs and counts disk trouble).
    fn audit(&self, mut record: Value) {
        record["kind"] = json!("admin");
        self.ctx.audit.record(&record);
    }

    fn signed_in(&self, request: &AdminRequest, path: &str, session: &Session) -> AdminResponse {
        let query = request.url.split_once('?').map_or("", |(_, q)| q);
        if request.method == Method::Get {
            return self.get(path, query, session);
        }
        if request.method != Method::Post {
            return self
                .message(
                    Some(session),
                    405,
                    "Not allowed",
                    "Use the page's forms.",
                    "/admin/",
                )
                .with("Allow", "GET, POST");
        }
        let (fields, uploads) = match request
            .content_type
            .as_deref()
            .and_then(form::multipart_boundary)
        {
            Some(boundary) => match form::multipart(&request.body, boundary) {
                Ok(parsed) => parsed,
                Err(err) => {
                    return self.message(
                        Some(session),
                        400,
                        "Upload failed",
                        &err.to_string(),
                        "/admin/people",
                    )
                }
            },
            None => (
                form::Fields::urlencoded(&String::from_utf8_lossy(&request.body)),
                Vec::new(),
            ),
        };
        if !csrf::matches(&session.csrf, fields.get("csrf")) {
            log::warn!("admin form refused: wrong CSRF token from {}", request.peer);
            return self.message(
                Some(session),
                403,
                "Form expired",
                "The form did not carry this session's token. Reload the page and try again.",
                "/admin/",
            );
        }
        let peer = request.peer.to_string();
        match path {
            "/admin/logout" => {
                self.sessions.end(&session.secret);
                self.audit(json!({"action": "logout", "remote": peer}));
                AdminResponse::redirect("/admin/login")
                    .with("Set-Cookie", self.cookie(SESSION_COOKIE, "", 0))
            }
            "/admin/people/add" => self.enrol(session, &fields, &uploads, &peer),
            "/admin/people/remove" => self.remove_person(session, &fields, &peer),
            "/admin/people/remove-sample" => self.remove_sample(session, &fields, &peer),
            "/admin/people/access" => self.set_access(session, &fields, &peer),
            "/admin/groups/set" => self.set_group(session, &fields, &peer),
            "/admin/door/pulse" => self.pulse(session, &peer, request.received_at),
            "/admin/door/acknowledge" => self.acknowledge_alarm(&fields, &peer),
            "/admin/codes/generate" => self.generate_codes(session, &fields, &peer),
            "/admin/codes/revoke" => self.revoke_code(session, &fields, &peer),
            "/admin/tablets/add" => self.add_tablet(session, &fields, &peer),
            "/admin/tablets/revoke" => self.revoke_tablet(session, &fields, &peer),
            _ => self.not_found(session),
        }
    }

    /// Post/Redirect/Get: a form that changed something redirects (303) to `to`, which shows `notice`
    /// (and an enrolment's result) once; reloading it repeats nothing.
    fn after_post(
        &self,
        session: &Session,
        to: &str,
        notice: Option<pages::Notice>,
        enrolled: Option<pages::EnrolResult>,
    ) -> AdminResponse {
        self.sessions.set_flash(
            &session.secret,
            Flash {
                notice,
                enrolled,
                pairing: None,
            },
        );
        AdminResponse::redirect(to)
    }

    /// The flash a form left for this session's next page: its notice and enrolment result.
    fn take_flash(&self, session: &Session) -> (Option<pages::Notice>, Option<pages::EnrolResult>) {
        self.sessions
            .take_flash(&session.secret)
            .map_or((None, None), |flash| (flash.notice, flash.enrolled))
    }

    fn not_found(&self, session: &Session) -> AdminResponse {
        self.message(
            Some(session),
            404,
            "Not found",
            "There is no such admin page.",
            "/admin/",
        )
    }

    /// The recognizer for enrolment, loaded on first use.
    fn with_recognizer<T>(
        &self,
        work: impl FnOnce(&mut Recognizer) -> T,
    ) -> Result<T, crate::vision::VisionError> {
        let mut slot = self.recognizer.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(Recognizer::load(
                &self.ctx.models,
                &self.ctx.config.recognition,
            )?);
        }
        Ok(work(slot.as_mut().expect("loaded above")))
    }
}
