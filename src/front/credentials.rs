//! The one question the front asks of a request before it gives it more than a stranger's share:
//! does its head show a valid credential? The shared tablet token (`http.token`) is compared here;
//! every other source (paired tablets' device tokens, admin sessions) answers through one small
//! trait, and `CredentialSet` asks them all. The answer decides which endpoints open
//! (`front::admit`), whether the connection may be evicted (`registry`), and how large and how slow
//! its body may be.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::head::Head;
use crate::admin::session::Sessions;
use crate::tablets::{looks_like_device_token, LiveTablets};

/// A source of credentials. Each answers only for what it knows; the defaults say "not mine".
pub trait Credentials: Send + Sync {
    /// The paired tablet whose device token `token` (from `Authorization: Bearer`) is.
    fn tablet_of(&self, _token: &str) -> Option<String> {
        None
    }
    /// Is `secret`, the admin session cookie's value, a live admin session?
    fn admin_session(&self, _secret: &str) -> bool {
        false
    }
}

impl Credentials for LiveTablets {
    fn tablet_of(&self, token: &str) -> Option<String> {
        LiveTablets::tablet_of(self, token)
    }
}

/// The admin pages' session store. The front only looks (`peek`): a look does not keep a session
/// alive; the admin pages themselves do that when they answer (and end every session after a
/// password change).
impl<F: Send> Credentials for Sessions<F> {
    fn admin_session(&self, secret: &str) -> bool {
        self.peek(secret, std::time::Instant::now()).is_some()
    }
}

/// What the request's bearer shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No bearer, or one that is no credential of ours and not shaped like a device token.
    Nothing,
    /// The shared `http.token` (the original app, scripts).
    Shared,
    /// The device token of this paired tablet.
    Tablet(String),
    /// A device token no tablet holds (revoked, or never paired).
    Unpaired,
}

/// What a request head showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub bearer: Credential,
    /// A live admin session cookie.
    pub admin: bool,
    /// No token is configured (`http.require_token = false`): there is nothing to show, and every
    /// request counts as credentialed.
    pub open: bool,
}

impl Shown {
    /// Any valid credential: the connection is no longer a stranger's.
    pub fn any(&self) -> bool {
        self.open || self.admin || matches!(self.bearer, Credential::Shared | Credential::Tablet(_))
    }
}

/// Every credential the front accepts.
pub struct CredentialSet {
    /// The shared tablet token; `None`: none is required.
    token: Option<String>,
    sources: Vec<Arc<dyn Credentials>>,
}

impl CredentialSet {
    /// With `token` (the configured shared token; `None`: the tablet endpoints need none).
    pub fn new(token: Option<String>) -> CredentialSet {
        CredentialSet {
            token,
            sources: Vec::new(),
        }
    }

    /// Adds a source (paired tablets, admin sessions).
    pub fn with(mut self, source: Arc<dyn Credentials>) -> CredentialSet {
        self.sources.push(source);
        self
    }

    pub fn token_required(&self) -> bool {
        self.token.is_some()
    }

    /// What `head` shows: every `Authorization: Bearer` value (the shared token in constant time,
    /// then device tokens) and the admin session cookie named `session_cookie`.
    pub fn shown(&self, head: &Head, session_cookie: &str) -> Shown {
        let admin = head
            .values("cookie")
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == session_cookie)
            .any(|(_, secret)| self.sources.iter().any(|s| s.admin_session(secret.trim())));
        Shown {
            bearer: self.bearer(head),
            admin,
            open: self.token.is_none(),
        }
    }

    fn bearer(&self, head: &Head) -> Credential {
        let bearers = || {
            head.values("authorization")
                .filter_map(|value| value.strip_prefix("Bearer "))
                .map(str::trim)
        };
        if let Some(token) = self.token.as_deref() {
            if bearers().any(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes()))) {
                return Credential::Shared;
            }
        }
        let mut unpaired = false;
        for given in bearers().filter(|given| looks_like_device_token(given)) {
            match self.sources.iter().find_map(|s| s.tablet_of(given)) {
                Some(name) => return Credential::Tablet(name),
                None => unpaired = true,
            }
        }
        if unpaired {
            Credential::Unpaired
        } else {
            Credential::Nothing
        }
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
        let sessions: Arc<Sessions<()>> = Arc::new(Sessions::new(SessionLimits {
            idle: Duration::from_secs(60),
            max_age: Duration::from_secs(600),
            capacity: 4,
        }));
        let live = sessions.create(Instant::now());
        let set = CredentialSet::new(Some("t".into())).with(sessions);
        let shown = |text: &str| set.shown(&head(text), "facegate_admin");
        assert!(!shown("GET /healthz HTTP/1.1\r\n\r\n").any());
        let wrong = shown("GET /healthz HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n");
        assert_eq!(wrong.bearer, Credential::Nothing);
        assert!(!wrong.any());
        let shared =
            shown("GET / HTTP/1.1\r\nAuthorization: Bearer x\r\nAuthorization: Bearer t\r\n\r\n");
        assert_eq!(shared.bearer, Credential::Shared);
        let cookie = format!(
            "GET /admin/ HTTP/1.1\r\nCookie: a=b; facegate_admin={}\r\n\r\n",
            live.secret
        );
        let admin = shown(&cookie);
        assert!(admin.admin && admin.any());
        assert!(!shown("GET /admin/ HTTP/1.1\r\nCookie: facegate_admin=guess\r\n\r\n").any());
        let open = CredentialSet::new(None);
        assert!(open.shown(&head("GET / HTTP/1.1\r\n\r\n"), "c").any());
    }
}
