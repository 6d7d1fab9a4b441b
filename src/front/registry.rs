//! The open connections, bounded, and who makes room for whom. Each connection is waiting (TLS
//! handshake, request head, or idle between requests) or working on a request, and it stands as
//! unread (no head read yet), a stranger's (its last head showed no valid credential) or
//! credentialed (its last head showed one, or it is the daemon's own self-probe).
//!
//! Strangers share a small budget of their own (`http.max_connections_without_credential`, and at
//! most `CONNECTIONS_PER_ADDRESS` per client address, IPv6 by /64): a connection that turns out a
//! stranger past either makes the longest-standing other stranger go, whatever it is doing. Unread
//! connections have the same budget per address: a new one past it makes its address's
//! longest-standing unread connection go, so no client holds the slots by connecting and sending
//! nothing. At the limit, a new connection evicts the longest-standing stranger, then the
//! longest-standing unread connection, then the credentialed connection that has waited longest;
//! only when every connection is credentialed and working is it refused. A tablet's fresh connection
//! thus competes only with other unread ones, and only once every stranger is gone: no number of
//! clients without a credential keeps a tablet from being answered.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::codes::lockout::client_group as address_group;
use crate::metrics::Metrics;
use crate::sync::lock_recovering;

/// A stranger's connections from one address (IPv6: one /64) at most, and as many unread ones; its
/// next one takes the place of its own longest-standing one of the kind.
pub(crate) const CONNECTIONS_PER_ADDRESS: usize = 8;

/// How many connections may be open, and how many of them strangers'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub total: usize,
    pub strangers: usize,
    /// Strangers' connections from one address, and unread connections from one address.
    pub per_address: usize,
}

/// What the connection's last request head showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Unread,
    Stranger,
    Credentialed,
}

struct Entry {
    /// A handle on the connection's own socket (a duplicate descriptor), to shut it down on eviction.
    socket: TcpStream,
    /// The client's address group.
    group: IpAddr,
    standing: Standing,
    /// The daemon's own self-probe: credentialed from its first byte, and admitted over the limit.
    probe: bool,
    working: bool,
    /// When the connection last changed phase (admitted, started a request, finished one).
    since: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admitted(u64),
    Refused,
}

pub(crate) struct Registry {
    limits: Limits,
    inner: Mutex<(u64, HashMap<u64, Entry>)>,
    /// Where the self-probe's next connection comes from (it binds before it connects).
    probe_from: Mutex<Option<SocketAddr>>,
    refused: AtomicU64,
    evicted: AtomicU64,
}

/// Reports the open connections and the refusals and evictions so far in /metrics.
pub fn report(registry: &Arc<Registry>, metrics: &Metrics) {
    let open = Arc::clone(registry);
    metrics.add_source(
        "facegate_connections_open",
        "gauge",
        "Connections open at the front.",
        move || open.len() as u64,
    );
    let strangers = Arc::clone(registry);
    metrics.add_source(
        "facegate_connections_without_credential",
        "gauge",
        "Open connections whose last request head showed no valid credential (evicted first).",
        move || strangers.count(|e| e.standing == Standing::Stranger) as u64,
    );
    let refused = Arc::clone(registry);
    metrics.add_source(
        "facegate_connections_refused_total",
        "counter",
        "New connections closed at once: http.max_connections were open, all busy with credentialed requests.",
        move || refused.refused.load(Ordering::Relaxed),
    );
    let evicted = Arc::clone(registry);
    metrics.add_source(
        "facegate_connections_evicted_total",
        "counter",
        "Connections closed to make room for a new one (those without a credential first).",
        move || evicted.evicted.load(Ordering::Relaxed),
    );
}

impl Registry {
    pub fn new(limits: Limits) -> Registry {
        Registry {
            limits,
            inner: Mutex::new((0, HashMap::new())),
            probe_from: Mutex::new(None),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut (u64, HashMap<u64, Entry>)) -> T) -> T {
        f(&mut lock_recovering(&self.inner))
    }

    /// The self-probe's next connection comes from `from`.
    pub(crate) fn expect_probe(&self, from: SocketAddr) {
        *lock_recovering(&self.probe_from) = Some(from);
    }

    fn is_probe(&self, peer: SocketAddr) -> bool {
        let mut expected = lock_recovering(&self.probe_from);
        let canonical = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if expected.is_some_and(|from| from == canonical) {
            *expected = None;
            return true;
        }
        false
    }

    /// Takes `stream` from `peer` in, making room by evicting a connection if needed.
    pub(crate) fn admit(&self, stream: &TcpStream, peer: SocketAddr) -> Admission {
        let Ok(socket) = stream.try_clone() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Admission::Refused;
        };
        let probe = self.is_probe(peer);
        let group = address_group(peer.ip());
        self.with(|(next, entries)| {
            if !probe {
                let unread_from_group =
                    |e: &Entry| e.standing == Standing::Unread && e.group == group;
                let unread = entries.values().filter(|e| unread_from_group(e)).count();
                if unread >= self.limits.per_address {
                    if let Some(victim) = first_to_go(entries, unread_from_group) {
                        self.evict(entries, victim);
                    }
                }
                match self.victim(entries) {
                    Ok(None) => {}
                    Ok(Some(victim)) => self.evict(entries, victim),
                    Err(()) => {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        return Admission::Refused;
                    }
                }
            }
            *next += 1;
            let entry = Entry {
                socket,
                group,
                standing: if probe {
                    Standing::Credentialed
                } else {
                    Standing::Unread
                },
                probe,
                working: false,
                since: Instant::now(),
            };
            entries.insert(*next, entry);
            Admission::Admitted(*next)
        })
    }

    /// Which connection makes room for a new one: `Ok(None)` if none need to, `Err` if none may.
    fn victim(&self, entries: &HashMap<u64, Entry>) -> Result<Option<u64>, ()> {
        let uncredentialed = |e: &Entry| e.standing != Standing::Credentialed;
        let counted = entries.values().filter(|e| !e.probe).count();
        if counted < self.limits.total {
            return Ok(None);
        }
        first_to_go(entries, uncredentialed)
            .or_else(|| first_to_go(entries, |e| !e.working))
            .map(Some)
            .ok_or(())
    }

    fn evict(&self, entries: &mut HashMap<u64, Entry>, victim: u64) {
        if let Some(entry) = entries.remove(&victim) {
            // Its thread's read ends at once; the thread then finds itself gone.
            let _ = entry.socket.shutdown(Shutdown::Both);
        }
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// An admitted connection that could not be served after all (no thread for it).
    pub(crate) fn refuse_admitted(&self, id: u64) {
        self.remove(id);
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The connection waits for its next request; it keeps the standing its last request gave it.
    pub fn waiting(&self, id: u64) {
        self.set(id, |entry| entry.working = false);
    }

    /// The connection carries a request whose head showed a valid credential, or did not. A stranger
    /// past the strangers' budget, in total or from its address, makes the longest-standing other
    /// stranger (from its address, or from anywhere) go.
    pub fn working(&self, id: u64, credentialed: bool) {
        self.set(id, |entry| {
            entry.working = true;
            entry.standing = if credentialed || entry.probe {
                Standing::Credentialed
            } else {
                Standing::Stranger
            };
        });
        if credentialed {
            return;
        }
        self.with(|(_, entries)| {
            let Some(group) = entries.get(&id).map(|e| e.group) else {
                return;
            };
            let stranger = |e: &Entry| e.standing == Standing::Stranger;
            let from_group = |e: &Entry| stranger(e) && e.group == group;
            let over_address =
                entries.values().filter(|e| from_group(e)).count() > self.limits.per_address;
            let over_total =
                entries.values().filter(|e| stranger(e)).count() > self.limits.strangers;
            let victim = if over_address {
                first_to_go(entries, from_group)
            } else if over_total {
                first_to_go(entries, stranger)
            } else {
                None
            };
            if let Some(victim) = victim.filter(|&v| v != id) {
                self.evict(entries, victim);
            }
        });
    }

    fn set(&self, id: u64, change: impl FnOnce(&mut Entry)) {
        self.with(|(_, entries)| {
            if let Some(entry) = entries.get_mut(&id) {
                change(entry);
                entry.since = Instant::now();
            }
        });
    }

    pub fn remove(&self, id: u64) {
        self.with(|(_, entries)| entries.remove(&id));
    }

    pub fn len(&self) -> usize {
        self.with(|(_, entries)| entries.len())
    }

    fn count(&self, keep: impl Fn(&Entry) -> bool) -> usize {
        self.with(|(_, entries)| entries.values().filter(|e| keep(e)).count())
    }
}

/// Of the connections `eligible` (never the self-probe), the one to evict first: a stranger before an
/// unread connection before a credentialed one, and within each, the longest-standing.
fn first_to_go(entries: &HashMap<u64, Entry>, eligible: impl Fn(&Entry) -> bool) -> Option<u64> {
    let rank = |standing: Standing| match standing {
        Standing::Stranger => 0,
        Standing::Unread => 1,
        Standing::Credentialed => 2,
    };
    entries
        .iter()
        .filter(|(_, e)| !e.probe && eligible(e))
        .map(|(id, e)| (rank(e.standing), e.since, *id))
        .min()
        .map(|(_, _, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    struct Bench {
        listener: TcpListener,
        registry: Registry,
        /// The client ends, kept open.
        clients: Vec<TcpStream>,
    }

    impl Bench {
        fn new(total: usize, strangers: usize, per_address: usize) -> Bench {
            Bench {
                listener: TcpListener::bind("127.0.0.1:0").unwrap(),
                registry: Registry::new(Limits {
                    total,
                    strangers,
                    per_address,
                }),
                clients: Vec::new(),
            }
        }

        /// A connection from `from` (its client end is kept), admitted or not.
        fn connect(&mut self, from: &str) -> Admission {
            let client = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
            let (server, _) = self.listener.accept().unwrap();
            self.clients.push(client);
            let peer = SocketAddr::new(from.parse().unwrap(), 40_000);
            self.registry.admit(&server, peer)
        }

        fn admitted(&mut self, from: &str) -> u64 {
            match self.connect(from) {
                Admission::Admitted(id) => id,
                Admission::Refused => panic!("refused"),
            }
        }

        fn closed(&mut self, client: usize) -> bool {
            let mut byte = [0u8; 1];
            self.clients[client]
                .set_read_timeout(Some(std::time::Duration::from_millis(1)))
                .unwrap();
            matches!(self.clients[client].read(&mut byte), Ok(0))
        }
    }

    #[test]
    fn strangers_make_room_first_and_credentialed_work_is_kept() {
        let mut bench = Bench::new(3, 3, 3);
        let tablet = bench.admitted("10.0.0.2");
        bench.registry.working(tablet, true);
        let _idle = bench.admitted("10.0.0.3");
        let login = bench.admitted("10.0.0.4");
        bench.registry.working(login, false);
        // Full: the stranger goes first, though it is working...
        let _next = bench.admitted("10.0.0.5");
        assert!(
            bench.closed(2),
            "the sign-in without a credential made room"
        );
        assert!(!bench.closed(1), "a connection not read yet waits its turn");
        // ...then the longest-standing connection not read yet.
        let _again = bench.admitted("10.0.0.6");
        assert!(bench.closed(1));
        assert!(!bench.closed(0), "the tablet's request is kept");
        assert_eq!(bench.registry.evicted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_waiting_credentialed_connection_makes_room_only_when_no_stranger_is_left() {
        let mut bench = Bench::new(2, 2, 2);
        let a = bench.admitted("10.0.0.2");
        let b = bench.admitted("10.0.0.3");
        bench.registry.working(a, true);
        bench.registry.working(b, true);
        assert_eq!(bench.connect("10.0.0.4"), Admission::Refused, "all work");
        assert_eq!(bench.registry.refused.load(Ordering::Relaxed), 1);
        bench.registry.waiting(a);
        let _c = bench.admitted("10.0.0.4");
        assert!(bench.closed(0), "the waiting tablet connection made room");
        assert!(!bench.closed(1));
    }

    #[test]
    fn strangers_have_a_budget_in_total_and_per_address() {
        let mut bench = Bench::new(10, 4, 2);
        let tablet = bench.admitted("10.0.0.9");
        bench.registry.working(tablet, true);
        let stranger = |bench: &mut Bench, from: &str| {
            let id = bench.admitted(from);
            bench.registry.working(id, false);
        };
        for _ in 0..5 {
            stranger(&mut bench, "10.0.0.2");
        }
        assert_eq!(
            bench.registry.len(),
            3,
            "two from one address, and the tablet"
        );
        for from in ["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"] {
            stranger(&mut bench, from);
        }
        let strangers = bench.registry.count(|e| e.standing == Standing::Stranger);
        assert_eq!(strangers, 4);
        assert_eq!(bench.registry.len(), 5);
        assert!(!bench.closed(0), "the tablet stays");
        // One IPv6 host with many addresses in its /64 counts as one address.
        for from in ["fd00::1", "fd00::2", "fd00::3"] {
            stranger(&mut bench, from);
        }
        let from_host = bench.registry.with(|(_, e)| {
            e.values()
                .filter(|e| e.group == address_group("fd00::9".parse().unwrap()))
                .count()
        });
        assert_eq!(from_host, 2);
    }

    /// Regression: the per-address budget applied only once a head was read, so one client that
    /// connected and sent nothing could hold every slot, and a tablet's fresh connection stood among
    /// a thousand unread ones to be evicted by the next.
    #[test]
    fn unread_connections_have_a_budget_per_address_too() {
        let mut bench = Bench::new(100, 4, 2);
        for _ in 0..5 {
            bench.admitted("10.0.0.2");
        }
        assert_eq!(
            bench.registry.len(),
            2,
            "the newest two from the one address"
        );
        assert!((0..3).all(|c| bench.closed(c)) && !bench.closed(3) && !bench.closed(4));
        let tablet = bench.admitted("10.0.0.9");
        for _ in 0..50 {
            bench.admitted("10.0.0.2");
        }
        assert!(
            !bench.closed(5),
            "another address's unread connection stays"
        );
        bench.registry.working(tablet, true);
        // One IPv6 host with many addresses in its /64 counts as one address.
        for from in ["fd00::1", "fd00::2", "fd00::3"] {
            bench.admitted(from);
        }
        assert_eq!(bench.registry.len(), 2 + 1 + 2);
    }

    #[test]
    fn the_self_probe_is_admitted_over_the_limit_and_never_evicted() {
        let mut bench = Bench::new(1, 1, 1);
        let tablet = bench.admitted("10.0.0.2");
        bench.registry.working(tablet, true);
        bench
            .registry
            .expect_probe("127.0.0.1:40000".parse().unwrap());
        let probe = bench.admitted("127.0.0.1");
        bench.registry.working(probe, false);
        assert_eq!(bench.connect("127.0.0.1"), Admission::Refused, "only once");
        bench.registry.waiting(tablet);
        bench.admitted("10.0.0.3");
        assert!(bench.closed(0) && !bench.closed(1));
    }
}
