//! What the front tells tiny_http about a request it forwards: the client's address, when the request
//! arrived at the front, the paired tablet whose device token it carried, and whether it showed a live
//! admin session. Only the front sets these headers; it strips them from client input.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tiny_http::Request;

/// The client's address, `ip:port`.
pub(crate) const PEER_HEADER: &str = "X-Facegate-Peer";
/// When the request's head was complete at the front, in microseconds since `epoch()`.
pub(crate) const RECEIVED_HEADER: &str = "X-Facegate-Received-Us";

/// The paired tablet whose device token the request carried (checked by the front).
pub(crate) const TABLET_HEADER: &str = "X-Facegate-Tablet";

/// Present (`1`) when the request's cookie was a live admin session as the front looked: it decides
/// the admin thread's queue only; the admin pages check the session themselves.
pub(crate) const ADMIN_SESSION_HEADER: &str = "X-Facegate-Admin-Session";

/// A monotonic origin shared by the front and the workers (same process). It must be fixed before the
/// first request arrives, or that request's arrival would be before it: `start_clock`.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Fixes the origin of `RECEIVED_HEADER`; the front calls it before it accepts a connection.
pub(crate) fn start_clock() {
    epoch();
}

/// Is `name` one of the headers only the front may set?
pub(crate) fn is_front_header(name: &str) -> bool {
    [
        PEER_HEADER,
        RECEIVED_HEADER,
        TABLET_HEADER,
        ADMIN_SESSION_HEADER,
    ]
    .iter()
    .any(|front| name.eq_ignore_ascii_case(front))
}

/// The value of `RECEIVED_HEADER` for `at`.
pub(crate) fn encode_instant(at: Instant) -> String {
    at.saturating_duration_since(epoch())
        .as_micros()
        .to_string()
}

fn decode_instant(value: &str) -> Option<Instant> {
    let micros = value.trim().parse::<u64>().ok()?;
    epoch().checked_add(Duration::from_micros(micros))
}

/// What the front said about a request.
#[derive(Debug, Clone)]
pub(crate) struct Forwarded {
    pub peer: Option<SocketAddr>,
    /// The paired tablet that sent it, when it came with a device token.
    pub tablet: Option<String>,
    /// Falls back to now for a request that did not come through the front.
    pub received_at: Instant,
    /// The front saw a live admin session (see `ADMIN_SESSION_HEADER`).
    pub admin_session: bool,
}

impl Forwarded {
    pub fn of(request: &Request) -> Forwarded {
        let value = |name: &str| {
            request
                .headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_string())
        };
        Forwarded {
            peer: value(PEER_HEADER).and_then(|v| v.parse().ok()),
            tablet: value(TABLET_HEADER),
            received_at: value(RECEIVED_HEADER)
                .and_then(|v| decode_instant(&v))
                .unwrap_or_else(Instant::now),
            admin_session: value(ADMIN_SESSION_HEADER).is_some_and(|v| v == "1"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_survives_the_header() {
        let at = Instant::now() + Duration::from_millis(3);
        let back = decode_instant(&encode_instant(at)).unwrap();
        assert!(back <= at && at - back < Duration::from_micros(2));
        assert_eq!(decode_instant("x"), None);
    }
}
