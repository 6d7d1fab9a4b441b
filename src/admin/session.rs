//! Admin sessions: a small bounded map from a hash of the cookie's secret to the session's CSRF token,
//! times and flash (what a form that changed something leaves for the page it redirects to). Sessions
//! end on logout, after `idle` without a request, `max_age` after login, or all at once when the admin
//! password changes; when the map is full the least recently used session makes room. A restart
//! forgets every session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub idle: Duration,
    pub max_age: Duration,
    pub capacity: usize,
}

struct Session<F> {
    csrf: String,
    created: Instant,
    last_seen: Instant,
    /// Shown once, by the next page the session gets.
    flash: Option<F>,
}

/// What a browser gets at login: the cookie's secret and the token its forms carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub secret: String,
    pub csrf: String,
}

pub struct Sessions<F> {
    limits: SessionLimits,
    /// Keyed by the SHA-256 of the secret, so a lookup's timing says nothing about a secret.
    by_hash: Mutex<HashMap<[u8; 32], Session<F>>>,
}

/// A random token of 32 bytes, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl<F> Sessions<F> {
    pub fn new(limits: SessionLimits) -> Sessions<F> {
        Sessions {
            limits,
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self, session: &Session<F>, now: Instant) -> bool {
        now.saturating_duration_since(session.last_seen) < self.limits.idle
            && now.saturating_duration_since(session.created) < self.limits.max_age
    }

    /// Starts a session, evicting expired ones and, when still full, the least recently used.
    pub fn create(&self, now: Instant) -> NewSession {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, session| self.live(session, now));
        while map.len() >= self.limits.capacity.max(1) {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(key, _)| *key)
                .expect("the map is not empty");
            map.remove(&oldest);
        }
        let new = NewSession {
            secret: random_token(),
            csrf: random_token(),
        };
        map.insert(
            hash(&new.secret),
            Session {
                csrf: new.csrf.clone(),
                created: now,
                last_seen: now,
                flash: None,
            },
        );
        new
    }

    /// The CSRF token of the live session named by `secret`; the session counts as used now.
    pub fn check(&self, secret: &str, now: Instant) -> Option<String> {
        self.find(secret, now, true)
    }

    /// As [`Sessions::check`], without counting as use: the page's own background polls must not
    /// keep an unattended session alive.
    pub fn peek(&self, secret: &str, now: Instant) -> Option<String> {
        self.find(secret, now, false)
    }

    fn find(&self, secret: &str, now: Instant, used: bool) -> Option<String> {
        let key = hash(secret);
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let live = map.get(&key).is_some_and(|s| self.live(s, now));
        if !live {
            map.remove(&key);
            return None;
        }
        let session = map.get_mut(&key)?;
        if used {
            session.last_seen = now;
        }
        Some(session.csrf.clone())
    }

    pub fn end(&self, secret: &str) {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&hash(secret));
    }

    /// Ends every session (the admin password changed).
    pub fn end_all(&self) {
        self.by_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Leaves `flash` for the next page of the session named by `secret` (replacing an unread one).
    pub fn set_flash(&self, secret: &str, flash: F) {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = map.get_mut(&hash(secret)) {
            session.flash = Some(flash);
        }
    }

    /// The flash left for this session, once.
    pub fn take_flash(&self, secret: &str) -> Option<F> {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(&hash(secret))?.flash.take()
    }

    /// Seconds a fresh session's cookie should live (the browser forgets it with the session).
    pub fn cookie_max_age(&self) -> u64 {
        self.limits.max_age.as_secs()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(capacity: usize) -> Sessions<&'static str> {
        Sessions::new(SessionLimits {
            idle: Duration::from_secs(60),
            max_age: Duration::from_secs(600),
            capacity,
        })
    }

    #[test]
    fn a_session_is_found_by_its_secret_until_logout() {
        let s = sessions(4);
        let now = Instant::now();
        let new = s.create(now);
        assert_eq!(new.secret.len(), 64);
        assert_ne!(new.secret, new.csrf);
        assert_eq!(s.check(&new.secret, now), Some(new.csrf.clone()));
        assert_eq!(s.check("not-a-secret", now), None);
        s.end(&new.secret);
        assert_eq!(s.check(&new.secret, now), None);
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_maximum_age() {
        let s = sessions(4);
        let t0 = Instant::now();
        let idle = s.create(t0);
        assert!(s
            .check(&idle.secret, t0 + Duration::from_secs(59))
            .is_some());
        assert!(
            s.check(&idle.secret, t0 + Duration::from_secs(118))
                .is_some(),
            "use keeps it alive"
        );
        assert!(s
            .check(&idle.secret, t0 + Duration::from_secs(178))
            .is_none());
        let busy = s.create(t0);
        let mut now = t0;
        while now < t0 + Duration::from_secs(570) {
            now += Duration::from_secs(30);
            assert!(s.check(&busy.secret, now).is_some());
        }
        assert!(s
            .check(&busy.secret, t0 + Duration::from_secs(600))
            .is_none());
        assert!(s.is_empty(), "expired sessions are dropped when seen");
    }

    #[test]
    fn background_polls_do_not_keep_a_session_alive() {
        let s = sessions(4);
        let t0 = Instant::now();
        let new = s.create(t0);
        for second in [20, 40, 59] {
            assert!(s
                .peek(&new.secret, t0 + Duration::from_secs(second))
                .is_some());
        }
        assert!(s.peek(&new.secret, t0 + Duration::from_secs(61)).is_none());
    }

    #[test]
    fn a_full_store_drops_its_least_recently_used_session() {
        let s = sessions(2);
        let t0 = Instant::now();
        let a = s.create(t0);
        let b = s.create(t0 + Duration::from_secs(1));
        assert!(s.check(&a.secret, t0 + Duration::from_secs(2)).is_some());
        let c = s.create(t0 + Duration::from_secs(3));
        assert_eq!(s.len(), 2);
        assert!(s.check(&b.secret, t0 + Duration::from_secs(3)).is_none());
        assert!(s.check(&a.secret, t0 + Duration::from_secs(3)).is_some());
        assert!(s.check(&c.secret, t0 + Duration::from_secs(3)).is_some());
    }

    #[test]
    fn a_flash_is_shown_once_and_a_password_change_ends_every_session() {
        let s = sessions(4);
        let now = Instant::now();
        let (a, b) = (s.create(now), s.create(now));
        s.set_flash(&a.secret, "Removed ann.");
        assert_eq!(s.take_flash(&b.secret), None);
        assert_eq!(s.take_flash(&a.secret), Some("Removed ann."));
        assert_eq!(s.take_flash(&a.secret), None, "shown once");
        s.set_flash("not-a-secret", "lost");
        s.end_all();
        assert!(s.check(&a.secret, now).is_none() && s.check(&b.secret, now).is_none());
        assert!(s.is_empty());
    }
}
