//! tiny_http sets no socket timeouts and gives us no handle on its sockets, so a sweeper finds the
//! daemon's accepted connections in /proc/self/fd, gives each a read/write timeout, and shuts down
//! connections that have been silent too long (slow or half-open clients).

use crate::sync::lock_recovering;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    /// The daemon's listening port: accepted connections have it as their local port.
    pub port: u16,
    /// Read and write timeout given to every connection.
    pub io_timeout: Duration,
    /// A connection that has neither sent nor received data for this long is shut down.
    pub idle_limit: Duration,
    /// A connection that sends more than this many bytes without completing a request is shut down.
    pub flood_limit: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepStats {
    pub connections: usize,
    pub timeouts_set: usize,
    pub closed_idle: usize,
}

/// One pass over the process's sockets.
pub fn sweep_once(settings: &SweepSettings) -> SweepStats {
    let mut stats = SweepStats::default();
    for (fd, _) in port_connections(settings.port) {
        stats.connections += 1;
        if !has_receive_timeout(fd) && set_timeouts(fd, settings.io_timeout) {
            stats.timeouts_set += 1;
        }
        if idle_for(fd).is_some_and(|idle| idle >= settings.idle_limit) {
            // SAFETY: shutdown on a socket fd we just inspected; it only wakes blocked readers.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            stats.closed_idle += 1;
        }
    }
    stats
}

/// The descriptors (tiny_http keeps two) of the connection from `peer` to our `port`.
fn connection_descriptors(port: u16, peer: SocketAddr) -> Vec<i32> {
    port_connections(port)
        .into_iter()
        .filter(|(_, p)| *p == peer)
        .map(|(fd, _)| fd)
        .collect()
}

/// Writes `bytes` (a complete HTTP answer) on the connection from `peer` to our `port`, then shuts it
/// down, so that readers blocked on it (tiny_http's body drain among them) see end of file at once.
/// False when the connection was not found.
pub fn answer_and_shut_down(port: u16, peer: SocketAddr, bytes: &[u8]) -> bool {
    let descriptors = connection_descriptors(port, peer);
    let Some(&first) = descriptors.first() else {
        return false;
    };
    let mut written = 0;
    while written < bytes.len() {
        let rest = &bytes[written..];
        // SAFETY: send from a live slice on a socket of this connection; MSG_NOSIGNAL avoids SIGPIPE.
        let sent =
            unsafe { libc::send(first, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if sent <= 0 {
            break;
        }
        written += sent as usize;
    }
    for fd in descriptors {
        // SAFETY: shutdown on a socket of this connection; the descriptors stay owned by tiny_http.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    true
}

/// Bodies that workers are reading, each with the time by which it must have arrived. A read that
/// is already blocked does not see a socket timeout set later, so an overdue body's connection is
/// shut down for reading: the blocked read returns at once and the worker answers 408.
#[derive(Debug, Default)]
pub struct BodyDeadlines {
    reading: std::sync::Mutex<Vec<(SocketAddr, std::time::Instant)>>,
}

impl BodyDeadlines {
    pub fn watch(&self, peer: SocketAddr, deadline: std::time::Instant) {
        self.lock().push((peer, deadline));
    }

    pub fn done(&self, peer: SocketAddr) {
        self.lock().retain(|(p, _)| *p != peer);
    }

    /// Shuts down reading on every connection whose body is overdue at `now`; returns how many.
    pub fn enforce(&self, port: u16, now: std::time::Instant) -> usize {
        let overdue: Vec<SocketAddr> = self
            .lock()
            .iter()
            .filter(|(_, deadline)| *deadline < now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &overdue {
            for fd in connection_descriptors(port, *peer) {
                // SAFETY: shutdown on a socket of this connection; the descriptors stay owned by tiny_http.
                unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            }
        }
        overdue.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(SocketAddr, std::time::Instant)>> {
        lock_recovering(&self.reading)
    }
}

/// tiny_http reads request headers with no size limit, so a client can grow the daemon's memory by
/// sending one endless header. The guard tracks, per connection, the bytes received since a request of
/// that connection was last handed to the daemon, and shuts down a connection that passes `limit`
/// without completing a request.
#[derive(Debug, Default)]
pub struct HeaderFloodGuard {
    state: std::sync::Mutex<FloodState>,
}

#[derive(Debug, Default)]
struct FloodState {
    /// Peers with a request dispatched since the last check.
    dispatched: std::collections::HashSet<SocketAddr>,
    /// Bytes each connection had received when one of its requests was last seen.
    baselines: std::collections::HashMap<SocketAddr, u64>,
}

/// One connection's check: its new baseline, and whether to cut it. A connection first seen has
/// its whole history counted, as it has not completed a request yet.
pub fn flood_verdict(
    baseline: Option<u64>,
    received: u64,
    dispatched: bool,
    limit: u64,
) -> (u64, bool) {
    if dispatched {
        return (received, false);
    }
    let baseline = baseline.unwrap_or(0);
    (baseline, received.saturating_sub(baseline) > limit)
}

impl HeaderFloodGuard {
    /// The dispatcher saw a complete request from `peer`.
    pub fn dispatched(&self, peer: SocketAddr) {
        self.lock().dispatched.insert(peer);
    }

    /// Shuts down connections that sent more than `limit` bytes without completing a request.
    pub fn enforce(&self, port: u16, limit: u64) -> usize {
        let mut state = self.lock();
        let dispatched = std::mem::take(&mut state.dispatched);
        let mut baselines = std::collections::HashMap::new();
        let mut cut = 0;
        for (fd, peer) in port_connections(port) {
            let Some(received) = bytes_received(fd) else {
                continue;
            };
            let (baseline, flood) = flood_verdict(
                state.baselines.get(&peer).copied(),
                received,
                dispatched.contains(&peer),
                limit,
            );
            baselines.insert(peer, baseline);
            if flood {
                // SAFETY: shutdown on a socket of this connection; the descriptors stay owned by tiny_http.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                cut += 1;
            }
        }
        state.baselines = baselines;
        cut
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FloodState> {
        lock_recovering(&self.state)
    }
}

/// Every connected socket of this process whose local port is `port`, with its peer.
fn port_connections(port: u16) -> Vec<(i32, SocketAddr)> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
        })
        .filter(|&fd| local_port(fd) == Some(port))
        .filter_map(|fd| peer_address(fd).map(|peer| (fd, peer)))
        .collect()
}

/// The kernel's TCP_INFO for a socket, and how many bytes of it the kernel filled in.
fn tcp_info(fd: i32) -> Option<(libc::tcp_info, usize)> {
    // SAFETY: getsockopt into a zeroed tcp_info of the size the kernel may fill.
    unsafe {
        let mut info: libc::tcp_info = zeroed();
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        let status = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        (status == 0).then_some((info, len as usize))
    }
}

/// Bytes the connection has received so far (Linux TCP_INFO, kernel 4.1 and later).
fn bytes_received(fd: i32) -> Option<u64> {
    let (info, len) = tcp_info(fd)?;
    // Kernels before 4.1 return a shorter struct without the counter.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + size_of::<u64>();
    (len >= needed).then_some(info.tcpi_bytes_received)
}

/// Sweeps every `interval` until `stop` is set, and cuts overdue bodies short.
pub fn spawn_sweeper(
    settings: SweepSettings,
    interval: Duration,
    deadlines: Arc<BodyDeadlines>,
    floods: Arc<HeaderFloodGuard>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("socket-sweeper".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                deadlines.enforce(settings.port, std::time::Instant::now());
                let flooding = floods.enforce(settings.port, settings.flood_limit);
                if flooding > 0 {
                    log::warn!(
                        "closed {flooding} connections sending without completing a request"
                    );
                }
                let stats = sweep_once(&settings);
                if stats.closed_idle > 0 {
                    log::info!("closed {} idle client connections", stats.closed_idle);
                }
                std::thread::sleep(interval);
            }
        })
}

fn local_port(fd: i32) -> Option<u16> {
    socket_address(fd, libc::getsockname).map(|address| address.port())
}

/// The remote end of a connected socket; `None` for the listening socket and non-IP sockets.
fn peer_address(fd: i32) -> Option<SocketAddr> {
    socket_address(fd, libc::getpeername)
}

type AddressQuery = unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32;

/// One end of an IP socket, as `getsockname` or `getpeername` reports it.
fn socket_address(fd: i32, query: AddressQuery) -> Option<SocketAddr> {
    // SAFETY: the query writes at most `len` bytes into a zeroed sockaddr_storage, which is then read
    // as the address type its family names.
    unsafe {
        let mut addr: libc::sockaddr_storage = zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if query(fd, (&raw mut addr).cast(), &mut len) != 0 {
            return None;
        }
        match i32::from(addr.ss_family) {
            libc::AF_INET => {
                let v4: &libc::sockaddr_in = &*(&raw const addr).cast();
                let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
            }
            libc::AF_INET6 => {
                let v6: &libc::sockaddr_in6 = &*(&raw const addr).cast();
                let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
                Some(SocketAddr::from((ip, u16::from_be(v6.sin6_port))))
            }
            _ => None,
        }
    }
}

fn has_receive_timeout(fd: i32) -> bool {
    // SAFETY: getsockopt into a correctly sized timeval.
    unsafe {
        let mut tv: libc::timeval = zeroed();
        let mut len = size_of::<libc::timeval>() as libc::socklen_t;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw mut tv).cast(),
            &mut len,
        ) == 0
            && (tv.tv_sec != 0 || tv.tv_usec != 0)
    }
}

fn set_timeouts(fd: i32, timeout: Duration) -> bool {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    let len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: setsockopt reads a correctly sized timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            len,
        ) == 0
            && libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&raw const tv).cast(),
                len,
            ) == 0
    }
}

/// How long since the connection last sent or received data (Linux TCP_INFO).
fn idle_for(fd: i32) -> Option<Duration> {
    let (info, _) = tcp_info(fd)?;
    let quiet_ms = info.tcpi_last_data_recv.min(info.tcpi_last_data_sent);
    Some(Duration::from_millis(u64::from(quiet_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    fn accepted_connections_get_timeouts_and_silent_ones_are_shut_down() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        let settings = SweepSettings {
            port,
            io_timeout: Duration::from_secs(5),
            idle_limit: Duration::from_secs(3600),
            flood_limit: u64::MAX,
        };
        let first = sweep_once(&settings);
        assert_eq!(
            (first.connections, first.timeouts_set, first.closed_idle),
            (1, 1, 0)
        );
        assert_eq!(
            sweep_once(&settings).timeouts_set,
            0,
            "timeouts are set once"
        );
        let silent = SweepSettings {
            idle_limit: Duration::ZERO,
            ..settings
        };
        assert_eq!(sweep_once(&silent).closed_idle, 1);
        let mut buffer = [0u8; 1];
        assert_eq!(
            accepted.read(&mut buffer).unwrap(),
            0,
            "a shut-down connection reads end of file"
        );
    }

    #[test]
    fn an_answer_is_written_and_the_connection_shut_down_by_its_peer_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut accepted, peer) = listener.accept().unwrap();
        assert!(answer_and_shut_down(port, peer, b"bye"));
        let mut received = Vec::new();
        client.read_to_end(&mut received).unwrap();
        assert_eq!(received, b"bye");
        let mut buffer = [0u8; 1];
        assert_eq!(accepted.read(&mut buffer).unwrap(), 0);
    }

    #[test]
    fn only_bytes_sent_without_completing_a_request_count_towards_a_flood() {
        let cases = [
            (None, 500, false, 1000, (0, false)),
            (None, 1500, false, 1000, (0, true)),
            (Some(0), 900_000, true, 1000, (900_000, false)),
            (Some(900_000), 900_800, false, 1000, (900_000, false)),
            (Some(900_000), 901_001, false, 1000, (900_000, true)),
        ];
        for (baseline, received, dispatched, limit, expected) in cases {
            assert_eq!(
                flood_verdict(baseline, received, dispatched, limit),
                expected,
                "{baseline:?} {received} {dispatched}"
            );
        }
    }

    #[test]
    fn a_connection_flooding_without_a_request_is_shut_down() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut client, &[b'x'; 4096]).unwrap();
        let mut buffer = [0u8; 4096];
        accepted.read_exact(&mut buffer).unwrap();
        if bytes_received(accepted.as_raw_fd()).is_none_or(|n| n < 4096) {
            // qemu-user copies only the start of TCP_INFO while reporting its full length.
            eprintln!("skipped: this kernel (or qemu-user) does not report TCP_INFO byte counts");
            return;
        }
        let guard = HeaderFloodGuard::default();
        assert_eq!(guard.enforce(port, 1024), 1);
        assert_eq!(accepted.read(&mut buffer).unwrap(), 0);
    }
}
