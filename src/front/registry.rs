//! The open connections, bounded: each is either waiting (TLS handshake, request head, or idle between
//! requests) or working on a checked request. At the limit, a new connection evicts the connection that
//! has waited longest, so clients that connect and send nothing cannot lock the tablet out; only when
//! every connection is working is the new one refused.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::sync::lock_recovering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting(Instant),
    Working,
}

struct Entry {
    /// A handle on the connection's own socket (a duplicate descriptor), to shut it down on eviction.
    socket: TcpStream,
    phase: Phase,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Admitted(u64),
    Refused,
}

pub(crate) struct Registry {
    limit: usize,
    inner: Mutex<(u64, HashMap<u64, Entry>)>,
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
    let refused = Arc::clone(registry);
    metrics.add_source(
        "facegate_connections_refused_total",
        "counter",
        "New connections closed at once: http.max_connections were open, all busy with requests.",
        move || refused.refused.load(Ordering::Relaxed),
    );
    let evicted = Arc::clone(registry);
    metrics.add_source(
        "facegate_connections_evicted_total",
        "counter",
        "Connections waiting for a request, closed to make room for a new one.",
        move || evicted.evicted.load(Ordering::Relaxed),
    );
}

impl Registry {
    pub fn new(limit: usize) -> Registry {
        Registry {
            limit,
            inner: Mutex::new((0, HashMap::new())),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut (u64, HashMap<u64, Entry>)) -> T) -> T {
        f(&mut lock_recovering(&self.inner))
    }

    /// Takes `stream` in, making room by evicting the longest-waiting connection if needed.
    pub(crate) fn admit(&self, stream: &TcpStream) -> Admission {
        let Ok(socket) = stream.try_clone() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Admission::Refused;
        };
        self.with(|(next, entries)| {
            if entries.len() >= self.limit {
                let oldest = entries
                    .iter()
                    .filter_map(|(id, e)| match e.phase {
                        Phase::Waiting(since) => Some((since, *id)),
                        Phase::Working => None,
                    })
                    .min();
                let Some((_, victim)) = oldest else {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Admission::Refused;
                };
                if let Some(entry) = entries.remove(&victim) {
                    // Its thread's read ends at once; the thread then finds itself gone and exits.
                    let _ = entry.socket.shutdown(Shutdown::Both);
                }
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
            *next += 1;
            let entry = Entry {
                socket,
                phase: Phase::Waiting(Instant::now()),
            };
            entries.insert(*next, entry);
            Admission::Admitted(*next)
        })
    }

    /// An admitted connection that could not be served after all (no thread for it).
    pub(crate) fn refuse_admitted(&self, id: u64) {
        self.remove(id);
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The connection waits for its next request.
    pub fn waiting(&self, id: u64) {
        self.set(id, Phase::Waiting(Instant::now()));
    }

    /// The connection carries a checked request.
    pub fn working(&self, id: u64) {
        self.set(id, Phase::Working);
    }

    fn set(&self, id: u64, phase: Phase) {
        self.with(|(_, entries)| {
            if let Some(entry) = entries.get_mut(&id) {
                entry.phase = phase;
            }
        });
    }

    pub fn remove(&self, id: u64) {
        self.with(|(_, entries)| entries.remove(&id));
    }

    pub fn len(&self) -> usize {
        self.with(|(_, entries)| entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn the_longest_waiting_connection_makes_room_and_working_ones_are_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let registry = Registry::new(2);
        let (mut first_client, first) = pair(&listener);
        let (_second_client, second) = pair(&listener);
        let admitted = |stream: &TcpStream| match registry.admit(stream) {
            Admission::Admitted(id) => id,
            Admission::Refused => panic!("refused"),
        };
        let a = admitted(&first);
        let b = admitted(&second);
        registry.working(b);
        let (_third_client, third) = pair(&listener);
        let c = admitted(&third);
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.evicted.load(Ordering::Relaxed), 1);
        let mut byte = [0u8; 1];
        let read = first_client.read(&mut byte).unwrap();
        assert_eq!(read, 0, "the evicted client sees the close");
        registry.remove(a);
        registry.working(c);
        let (_fourth_client, fourth) = pair(&listener);
        assert_eq!(registry.admit(&fourth), Admission::Refused, "all work");
        assert_eq!(registry.refused.load(Ordering::Relaxed), 1);
    }
}
