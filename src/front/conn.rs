//! One accepted connection, plain or TLS, owned by the front. Every read and write is bounded by an
//! absolute deadline: the socket's timeout is set to what is left before each system call, and TLS
//! records are read one socket read at a time, so a client that trickles a record byte by byte is
//! cut at the deadline exactly as over plain TCP. Bytes read ahead of the current request stay
//! buffered for the next one.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection};

use super::body::{BodyError, Chunked};
use super::budget::{OverBudget, Reservation};
use super::head::Framing;

/// Bytes read from the socket at a time (one TLS record at most; kept small for the threads' stacks).
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The deadline passed.
    Timeout,
    /// The peer closed (or reset) the connection.
    Closed,
}

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<(ServerConnection, TcpStream)>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(tls) => &tls.1,
        }
    }

    /// Runs the TLS handshake on `stream`, all of it before `deadline`.
    pub(crate) fn accept_tls(
        stream: TcpStream,
        config: Arc<ServerConfig>,
        deadline: Instant,
    ) -> Result<Transport, ReadError> {
        let connection = ServerConnection::new(config).map_err(|_| ReadError::Closed)?;
        let mut tls = Box::new((connection, stream));
        let (connection, stream) = &mut *tls;
        loop {
            write_tls(connection, stream, deadline).map_err(|err| classify(&err, deadline))?;
            if !connection.is_handshaking() {
                break;
            }
            read_tls(connection, stream, deadline)?;
        }
        Ok(Transport::Tls(tls))
    }

    /// Sends `bytes` (as TLS records over TLS), all of it before `deadline`.
    pub fn send(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    set_write_deadline(stream, deadline)?;
                    match stream.write(rest) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => rest = &rest[n..],
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => return Err(err),
                    }
                }
                Ok(())
            }
            Transport::Tls(tls) => {
                let (connection, stream) = &mut **tls;
                let mut rest = bytes;
                loop {
                    write_tls(connection, stream, deadline)?;
                    if rest.is_empty() {
                        return Ok(());
                    }
                    // rustls takes what fits in its buffer; the rest after the records are out.
                    match connection.writer().write(rest)? {
                        0 if !connection.wants_write() => {
                            return Err(io::ErrorKind::WriteZero.into())
                        }
                        n => rest = &rest[n..],
                    }
                }
            }
        }
    }

    /// Ends the connection: TLS close_notify (sent only if the socket takes it at once), then both
    /// directions shut.
    pub fn close(mut self) {
        if let Transport::Tls(tls) = &mut self {
            let (connection, stream) = &mut **tls;
            connection.send_close_notify();
            let _ = write_tls(connection, stream, Instant::now() + CLOSE_WAIT);
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Both);
    }

    /// The client's address, for the summary of what the front refused from it.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.tcp().peer_addr().ok().map(|peer| peer.ip())
    }
}

/// How long the close_notify alert may take to leave.
const CLOSE_WAIT: Duration = Duration::from_millis(100);

/// Writes every TLS record rustls has queued, before `deadline`.
fn write_tls(
    connection: &mut ServerConnection,
    stream: &mut TcpStream,
    deadline: Instant,
) -> io::Result<()> {
    while connection.wants_write() {
        set_write_deadline(stream, deadline)?;
        match connection.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// One socket read into rustls, before `deadline`, and the records it completes processed. A
/// protocol error sends its alert (best effort) and closes.
fn read_tls(
    connection: &mut ServerConnection,
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<(), ReadError> {
    loop {
        set_read_deadline(stream, deadline)?;
        match connection.read_tls(stream) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(_) => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(classify(&err, deadline)),
        }
    }
    if connection.process_new_packets().is_err() {
        let _ = write_tls(connection, stream, Instant::now() + CLOSE_WAIT);
        return Err(ReadError::Closed);
    }
    Ok(())
}

fn left_before(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.max(Duration::from_millis(1)))
}

fn set_read_deadline(stream: &TcpStream, deadline: Instant) -> Result<(), ReadError> {
    let left = left_before(deadline).ok_or(ReadError::Timeout)?;
    stream
        .set_read_timeout(Some(left))
        .map_err(|_| ReadError::Closed)
}

fn set_write_deadline(stream: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = left_before(deadline).ok_or(io::ErrorKind::TimedOut)?;
    stream.set_write_timeout(Some(left))
}

fn classify(err: &io::Error, deadline: Instant) -> ReadError {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadError::Timeout,
        _ if Instant::now() >= deadline => ReadError::Timeout,
        _ => ReadError::Closed,
    }
}

/// A connection and the bytes received on it that no request has used yet.
pub struct Incoming {
    pub transport: Transport,
    pub buffer: Vec<u8>,
}

impl Incoming {
    pub fn new(transport: Transport) -> Incoming {
        Incoming {
            transport,
            buffer: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer before `deadline`; returns how many (never 0).
    pub fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let read = match &mut self.transport {
                Transport::Plain(stream) => {
                    set_read_deadline(stream, deadline)?;
                    stream.read(&mut chunk)
                }
                Transport::Tls(tls) => {
                    let (connection, stream) = &mut **tls;
                    match connection.reader().read(&mut chunk) {
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            // No plaintext yet: one more socket read, then look again.
                            read_tls(connection, stream, deadline)?;
                            continue;
                        }
                        other => other,
                    }
                }
            };
            match read {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => {
                    self.buffer.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(classify(&err, deadline)),
            }
        }
    }

    /// Reads a whole body framed by `framing`, at most `limit` bytes, before `deadline`, holding
    /// its bytes in `reservation` before they are read.
    pub(crate) fn read_body(
        &mut self,
        framing: Framing,
        limit: usize,
        deadline: Instant,
        reservation: &mut Reservation<'_>,
    ) -> Result<Vec<u8>, BodyError> {
        let mut hold = |bytes: usize| {
            reservation
                .grow_to(bytes)
                .map_err(|OverBudget| BodyError::OverBudget)
        };
        let read_more = |incoming: &mut Incoming, have: usize, want: Option<u64>| {
            incoming.fill(deadline).map_err(|err| match err {
                ReadError::Timeout => BodyError::Timeout,
                ReadError::Closed => BodyError::Cut(match want {
                    Some(n) => {
                        format!("the connection closed after {have} of the {n} bytes declared")
                    }
                    None => {
                        format!("the connection closed after {have} bytes, before the last chunk")
                    }
                }),
            })
        };
        match framing {
            Framing::None => Ok(Vec::new()),
            Framing::Length(length) => {
                let length = usize::try_from(length)
                    .ok()
                    .filter(|&n| n <= limit)
                    .ok_or(BodyError::TooLarge)?;
                hold(length)?;
                self.buffer
                    .reserve_exact(length.saturating_sub(self.buffer.len()));
                while self.buffer.len() < length {
                    read_more(self, self.buffer.len(), Some(length as u64))?;
                }
                let rest = self.buffer.split_off(length);
                Ok(std::mem::replace(&mut self.buffer, rest))
            }
            Framing::Chunked => {
                let mut decoder = Chunked::new(limit);
                let mut body = Vec::new();
                loop {
                    let used = decoder.feed(&self.buffer, &mut body)?;
                    self.buffer.drain(..used);
                    if decoder.is_done() {
                        return Ok(body);
                    }
                    hold((body.len() + self.buffer.len() + READ_CHUNK).min(limit))?;
                    read_more(self, body.len(), None)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::budget::BodyBudget;
    use std::net::TcpListener;

    /// A plain `Incoming` on the server side of a loopback connection, and its client.
    fn connected() -> (Incoming, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (Incoming::new(Transport::Plain(server)), client)
    }

    fn unbounded() -> BodyBudget {
        BodyBudget::new(usize::MAX)
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn a_length_body_is_read_whole_and_the_next_request_stays_buffered() {
        let (mut incoming, mut client) = connected();
        incoming.buffer.extend_from_slice(b"abc");
        client.write_all(b"defGET / HTTP/1.1\r\n").unwrap();
        let body = incoming.read_body(
            Framing::Length(6),
            100,
            soon(5_000),
            &mut unbounded().reserve(),
        );
        assert_eq!(body.unwrap(), b"abcdef");
        while !incoming.buffer.ends_with(b"\r\n") {
            incoming.fill(soon(5_000)).unwrap();
        }
        assert_eq!(incoming.buffer, b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn a_chunked_body_is_decoded_from_the_socket() {
        let (mut incoming, mut client) = connected();
        client
            .write_all(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        let body = incoming.read_body(
            Framing::Chunked,
            100,
            soon(5_000),
            &mut unbounded().reserve(),
        );
        assert_eq!(body.unwrap(), b"abcde");
    }

    #[test]
    fn a_silent_body_times_out_and_a_cut_one_says_how_much_came() {
        let (mut incoming, mut client) = connected();
        client.write_all(b"ab").unwrap();
        let started = Instant::now();
        let body = incoming.read_body(
            Framing::Length(10),
            100,
            soon(200),
            &mut unbounded().reserve(),
        );
        assert_eq!(body, Err(BodyError::Timeout));
        assert!(started.elapsed() < Duration::from_secs(2));

        let (mut incoming, mut client) = connected();
        client.write_all(b"ab").unwrap();
        drop(client);
        let body = incoming.read_body(
            Framing::Length(10),
            100,
            soon(5_000),
            &mut unbounded().reserve(),
        );
        assert_eq!(
            body,
            Err(BodyError::Cut(
                "the connection closed after 2 of the 10 bytes declared".into()
            ))
        );
    }

    #[test]
    fn a_tls_client_that_sends_nothing_is_given_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config {
            state_dir: dir.path().to_path_buf(),
            ..crate::config::Config::default()
        };
        config.http.tls.enabled = true;
        let files = super::super::tls::TlsFiles::of(&config);
        files
            .ensure(&["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _silent = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let started = Instant::now();
        let result = Transport::accept_tls(server, files.server_config().unwrap(), soon(300));
        assert!(matches!(result, Err(ReadError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let (mut incoming, _client) = connected();
        let body = incoming.read_body(
            Framing::Length(101),
            100,
            soon(5_000),
            &mut unbounded().reserve(),
        );
        assert_eq!(body, Err(BodyError::TooLarge));
    }
}
