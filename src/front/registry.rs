//! The open connections, bounded: each is either waiting (TLS handshake, request head, or idle between
//! requests) or working on a checked request. At the limit, a new connection evicts the connection that
//! has waited longest, so clients that connect and send nothing cannot lock the tablet out; only when
//! every connection is working is the new one refused.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::Mutex;
use std::time::Instant;

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
pub enum Admission {
    Admitted { id: u64, evicted: bool },
    Refused,
}

pub struct Registry {
    limit: usize,
    inner: Mutex<(u64, HashMap<u64, Entry>)>,
}

impl Registry {
    pub fn new(limit: usize) -> Registry {
        Registry {
            limit,
            inner: Mutex::new((0, HashMap::new())),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut (u64, HashMap<u64, Entry>)) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    /// Takes `stream` in, making room by evicting the longest-waiting connection if needed.
    pub fn admit(&self, stream: &TcpStream) -> Admission {
        let Ok(socket) = stream.try_clone() else {
            return Admission::Refused;
        };
        self.with(|(next, entries)| {
            let mut evicted = false;
            if entries.len() >= self.limit {
                let oldest = entries
                    .iter()
                    .filter_map(|(id, e)| match e.phase {
                        Phase::Waiting(since) => Some((since, *id)),
                        Phase::Working => None,
                    })
                    .min();
                let Some((_, victim)) = oldest else {
                    return Admission::Refused;
                };
                if let Some(entry) = entries.remove(&victim) {
                    // Its thread's read ends at once; the thread then finds itself gone and exits.
                    let _ = entry.socket.shutdown(Shutdown::Both);
                }
                evicted = true;
            }
            *next += 1;
            let entry = Entry {
                socket,
                phase: Phase::Waiting(Instant::now()),
            };
            entries.insert(*next, entry);
            Admission::Admitted { id: *next, evicted }
        })
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
        let Admission::Admitted {
            id: a,
            evicted: false,
        } = registry.admit(&first)
        else {
            panic!()
        };
        let Admission::Admitted {
            id: b,
            evicted: false,
        } = registry.admit(&second)
        else {
            panic!()
        };
        registry.working(b);
        let (_third_client, third) = pair(&listener);
        let Admission::Admitted {
            id: c,
            evicted: true,
        } = registry.admit(&third)
        else {
            panic!()
        };
        assert_eq!(registry.len(), 2);
        let mut byte = [0u8; 1];
        assert_eq!(
            first_client.read(&mut byte).unwrap(),
            0,
            "the evicted client sees the close"
        );
        registry.remove(a);
        registry.working(c);
        let (_fourth_client, fourth) = pair(&listener);
        assert_eq!(
            registry.admit(&fourth),
            Admission::Refused,
            "all connections work"
        );
    }
}
