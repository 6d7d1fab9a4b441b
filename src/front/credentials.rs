//! The one question the front asks of a request before it gives it more than a stranger's share:
//! does its head show a valid credential? Each source of credentials (the tablet's configured token,
//! the admin sessions, paired tablets) answers through one small trait, and `CredentialSet` asks them
//! all. The answer decides whether the connection may be evicted (`registry`), how large and how slow
//! its body may be, and whether a tablet endpoint is open to it.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::head::Head;
use crate::admin::session::Sessions;

/// A source of credentials. Each answers only for what it knows; the defaults say "not mine".
pub trait Credentials: Send + Sync {
    /// Is `token`, sent as `Authorization: Bearer <token>`, a valid tablet credential?
    fn tablet_bearer(&self, _token: &str) -> bool {
        false
    }
    /// Is `secret`, the admin session cookie's value, a live admin session?
    fn admin_session(&self, _secret: &str) -> bool {
        false
    }
}

/// The tablet token from the configuration (`http.token` or `FACEGATE_TOKEN`), compared in constant
/// time.
pub struct TabletToken(pub String);

impl Credentials for TabletToken {
    fn tablet_bearer(&self, token: &str) -> bool {
        bool::from(token.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

/// The admin pages' session store. The front only looks (`peek`): a look does not keep a session
/// alive, the admin pages themselves do that when they answer.
impl Credentials for Sessions {
    fn admin_session(&self, secret: &str) -> bool {
        self.peek(secret, std::time::Instant::now()).is_some()
    }
}

/// What a request head showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    /// A bearer token a tablet credential source accepted (or no token is required at all).
    pub tablet: bool,
    /// A live admin session cookie.
    pub admin: bool,
}

impl Shown {
    /// Any valid credential: the connection is no longer a stranger's.
    pub fn any(self) -> bool {
        self.tablet || self.admin
    }
}

/// Every credential source the front accepts.
pub struct CredentialSet {
    /// No tablet token configured (`http.require_token = false`): the tablet endpoints are open.
    open_tablet_endpoints: bool,
    sources: Vec<Arc<dyn Credentials>>,
}

impl CredentialSet {
    /// With `token` (the configured tablet token; `None`: the tablet endpoints need none).
    pub fn new(token: Option<String>) -> CredentialSet {
        let mut set = CredentialSet {
            open_tablet_endpoints: token.is_none(),
            sources: Vec::new(),
        };
        if let Some(token) = token {
            set.sources.push(Arc::new(TabletToken(token)));
        }
        set
    }

    /// Adds a source (the admin sessions; paired tablets).
    pub fn with(mut self, source: Arc<dyn Credentials>) -> CredentialSet {
        self.sources.push(source);
        self
    }

    /// What `head` shows: every `Authorization: Bearer` value and the admin session cookie are tried.
    pub fn shown(&self, head: &Head, session_cookie: &str) -> Shown {
        let tablet = self.open_tablet_endpoints
            || head
                .values("authorization")
                .filter_map(|value| value.strip_prefix("Bearer "))
                .any(|token| {
                    let token = token.trim();
                    self.sources.iter().any(|s| s.tablet_bearer(token))
                });
        let admin = head
            .values("cookie")
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == session_cookie)
            .any(|(_, secret)| self.sources.iter().any(|s| s.admin_session(secret.trim())));
        Shown { tablet, admin }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::session::SessionLimits;
    use crate::front::head::{parse, Parsed};
    use std::time::{Duration, Instant};

    fn head(text: &str) -> Head {
        match parse(text.as_bytes(), 32 * 1024) {
            Parsed::Complete(head, _) => head,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_request_shows_a_credential_only_with_a_valid_token_or_a_live_session() {
        let sessions = Arc::new(Sessions::new(SessionLimits {
            idle: Duration::from_secs(60),
            max_age: Duration::from_secs(600),
            capacity: 4,
        }));
        let live = sessions.create(Instant::now());
        let set = CredentialSet::new(Some("t".into())).with(sessions);
        let shown = |text: &str| set.shown(&head(text), "facegate_admin");
        let none = Shown {
            tablet: false,
            admin: false,
        };
        assert_eq!(shown("GET /healthz HTTP/1.1\r\n\r\n"), none);
        assert_eq!(
            shown("GET /healthz HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n"),
            none
        );
        assert!(
            shown("GET / HTTP/1.1\r\nAuthorization: Bearer x\r\nAuthorization: Bearer t\r\n\r\n")
                .tablet
        );
        let cookie = format!(
            "GET /admin/ HTTP/1.1\r\nCookie: a=b; facegate_admin={}\r\n\r\n",
            live.secret
        );
        assert_eq!(
            shown(&cookie),
            Shown {
                tablet: false,
                admin: true
            }
        );
        assert_eq!(
            shown("GET /admin/ HTTP/1.1\r\nCookie: facegate_admin=guess\r\n\r\n"),
            none
        );
        let open = CredentialSet::new(None);
        assert!(open.shown(&head("GET / HTTP/1.1\r\n\r\n"), "c").tablet);
    }
}
