//! The open connections, bounded, and who makes room for whom. Each connection is waiting (TLS
//! handshake, request head, or idle between requests) or working on a request, and it is either
//! credentialed (its last request showed a valid credential, or it is the daemon's own self-probe) or
//! a stranger's. Strangers share a small budget of their own, in total and per client address (IPv6
//! by /64), and are evicted first, longest-standing first, whatever they are doing; a credentialed
//! connection is evicted only while it waits, and only when no stranger is left to evict. Only when
//! every connection is credentialed and working is a new one refused. So no number of clients
//! without a credential can keep the tablet from being answered.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::sync::lock_recovering;

/// A stranger's connections from one address (IPv6: one /64) at most; its next one takes the place
/// of its own longest-standing one.
pub(crate) const STRANGER_CONNECTIONS_PER_ADDRESS: usize = 8;

/// How many connections may be open, and how many of them strangers'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub total: usize,
    pub strangers: usize,
    pub strangers_per_address: usize,
}

struct Entry {
    /// A handle on the connection's own socket (a duplicate descriptor), to shut it down on eviction.
    socket: TcpStream,
    /// The client's address group.
    group: IpAddr,
    credentialed: bool,
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
        "Open connections whose last request showed no valid credential (evicted first).",
        move || strangers.strangers() as u64,
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

/// The address a client's connections are counted under: IPv4 as is, IPv6 by its /64 (one host on
/// a LAN holds a whole /64), an IPv4-mapped IPv6 address as the IPv4 address.
pub(crate) fn address_group(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
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
                match self.victim(entries, group) {
                    Ok(None) => {}
                    Ok(Some(victim)) => {
                        if let Some(entry) = entries.remove(&victim) {
                            // Its thread's read ends at once; the thread then finds itself gone.
                            let _ = entry.socket.shutdown(Shutdown::Both);
                        }
                        self.evicted.fetch_add(1, Ordering::Relaxed);
                    }
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
                credentialed: probe,
                probe,
                working: false,
                since: Instant::now(),
            };
            entries.insert(*next, entry);
            Admission::Admitted(*next)
        })
    }

    /// Which connection makes room for a new stranger's from `group`: `Ok(None)` if none need to,
    /// `Err` if none may.
    fn victim(&self, entries: &HashMap<u64, Entry>, group: IpAddr) -> Result<Option<u64>, ()> {
        let limits = &self.limits;
        let longest_standing = |keep: &dyn Fn(&Entry) -> bool| {
            entries
                .iter()
                .filter(|(_, e)| !e.probe && keep(e))
                .map(|(id, e)| (e.since, *id))
                .min()
                .map(|(_, id)| id)
        };
        let from_group = entries
            .values()
            .filter(|e| !e.credentialed && e.group == group)
            .count();
        if from_group >= limits.strangers_per_address {
            return Ok(longest_standing(&|e| !e.credentialed && e.group == group));
        }
        let strangers = entries.values().filter(|e| !e.credentialed).count();
        if strangers >= limits.strangers {
            return Ok(longest_standing(&|e| !e.credentialed));
        }
        let counted = entries.values().filter(|e| !e.probe).count();
        if counted < limits.total {
            return Ok(None);
        }
        longest_standing(&|e| !e.credentialed)
            .or_else(|| longest_standing(&|e| !e.working))
            .map(Some)
            .ok_or(())
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

    /// The connection carries a request whose head showed a valid credential, or did not.
    pub fn working(&self, id: u64, credentialed: bool) {
        self.set(id, |entry| {
            entry.working = true;
            entry.credentialed = credentialed || entry.probe;
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

    fn strangers(&self) -> usize {
        self.with(|(_, entries)| entries.values().filter(|e| !e.credentialed).count())
    }
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
                    strangers_per_address: per_address,
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
        // Full: the longest-standing stranger goes, though the login is working.
        let _next = bench.admitted("10.0.0.5");
        assert!(bench.closed(1), "the idle stranger made room");
        let _again = bench.admitted("10.0.0.6");
        assert!(bench.closed(2), "then the working stranger");
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
        for _ in 0..5 {
            bench.admitted("10.0.0.2");
        }
        assert_eq!(
            bench.registry.len(),
            3,
            "two from one address, and the tablet"
        );
        for from in ["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"] {
            bench.admitted(from);
        }
        assert_eq!(bench.registry.strangers(), 4);
        assert_eq!(bench.registry.len(), 5);
        assert!(!bench.closed(0), "the tablet stays");
        // One IPv6 host with many addresses in its /64 counts as one address.
        bench.admitted("fd00::1");
        bench.admitted("fd00::2");
        bench.admitted("fd00::3");
        let from_host = bench.registry.with(|(_, e)| {
            e.values()
                .filter(|e| e.group == address_group("fd00::9".parse().unwrap()))
                .count()
        });
        assert_eq!(from_host, 2);
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

    #[test]
    fn ipv6_addresses_are_grouped_by_their_slash_64() {
        let group = |a: &str| address_group(a.parse().unwrap()).to_string();
        assert_eq!(group("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(group("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
        assert_eq!(group("::ffff:10.0.0.7"), "10.0.0.7");
        assert_eq!(group("10.0.0.7"), "10.0.0.7");
    }
}
