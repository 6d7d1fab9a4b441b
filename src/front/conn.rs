//! One accepted connection, plain or TLS, owned by the front: every read is bounded by a deadline
//! (the socket's read timeout is set to what is left before each read), and bytes read ahead of the
//! current request stay buffered for the next one.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::body::{BodyError, Chunked};
use super::head::Framing;

/// Bytes read from the socket at a time (one TLS record at most; kept small for the threads' stacks).
const READ_CHUNK: usize = 16 * 1024;

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
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(tls) => &tls.sock,
        }
    }

    /// Runs the TLS handshake on `stream`, all of it before `deadline`.
    pub fn accept_tls(
        stream: TcpStream,
        config: Arc<ServerConfig>,
        deadline: Instant,
    ) -> Result<Transport, ReadError> {
        let mut connection = ServerConnection::new(config).map_err(|_| ReadError::Closed)?;
        let mut stream = stream;
        while connection.is_handshaking() {
            set_read_deadline(&stream, deadline)?;
            match connection.complete_io(&mut stream) {
                Ok((0, 0)) if connection.wants_read() => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(err) => return Err(classify(&err, deadline)),
            }
        }
        Ok(Transport::Tls(Box::new(StreamOwned::new(
            connection, stream,
        ))))
    }

    /// Sends `bytes` (plus TLS records) within the socket's write timeout.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.write_all(bytes),
            Transport::Tls(tls) => {
                tls.write_all(bytes)?;
                tls.flush()
            }
        }
    }

    /// Ends the connection: TLS close_notify, then both directions shut.
    pub fn close(mut self) {
        if let Transport::Tls(tls) = &mut self {
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Both);
    }
}

fn set_read_deadline(stream: &TcpStream, deadline: Instant) -> Result<(), ReadError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ReadError::Timeout);
    }
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|_| ReadError::Closed)
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
            set_read_deadline(self.transport.tcp(), deadline)?;
            let read = match &mut self.transport {
                Transport::Plain(stream) => stream.read(&mut chunk),
                Transport::Tls(tls) => tls.read(&mut chunk),
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

    /// Reads a whole body framed by `framing`, at most `limit` bytes, before `deadline`.
    pub fn read_body(
        &mut self,
        framing: Framing,
        limit: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, BodyError> {
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
                    read_more(self, body.len(), None)?;
                }
            }
        }
    }
}
