//! Hands one checked request, body complete, to tiny_http on its Unix socket (one connection per
//! request), with the peer and arrival time in headers only the front sets, and reads the answer back.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::body::Chunked;
use super::head::Head;
use crate::http::forwarded::{
    encode_instant, ADMIN_SESSION_HEADER, PEER_HEADER, RECEIVED_HEADER, TABLET_HEADER,
};

/// The largest answer tiny_http is expected to give (a page of /events, /metrics).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Headers of tiny_http's answer that describe its connection, not the answer.
const HOP_BY_HOP: [&str; 4] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
];

/// tiny_http's answer, ready to be framed for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Upstream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The head of the request as tiny_http receives it: HTTP/1.1, `Connection: close`, an exact
/// Content-Length for `body_length`, the paired tablet the front found for its device token, and
/// whether it showed a live admin session. The body follows it as the client sent it, without being
/// copied next to the head.
pub(crate) fn request_head(
    head: &Head,
    body_length: usize,
    peer: SocketAddr,
    received_at: Instant,
    tablet: Option<&str>,
    admin_session: bool,
) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", head.method, head.target);
    let mut has_host = false;
    for (name, value) in head.forwardable_headers() {
        has_host |= name.eq_ignore_ascii_case("host");
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has_host {
        out.push_str("Host: facegate\r\n");
    }
    if let Some(tablet) = tablet {
        out.push_str(&format!("{TABLET_HEADER}: {tablet}\r\n"));
    }
    if admin_session {
        out.push_str(&format!("{ADMIN_SESSION_HEADER}: 1\r\n"));
    }
    out.push_str(&format!(
        "{PEER_HEADER}: {peer}\r\n{RECEIVED_HEADER}: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        encode_instant(received_at),
        body_length
    ));
    out.into_bytes()
}

/// Sends the request (`head` from [`request_head`], then `body`) to `socket` and waits at most `wait`
/// for the whole answer.
pub fn forward(socket: &Path, head: &[u8], body: &[u8], wait: Duration) -> io::Result<Upstream> {
    let deadline = Instant::now() + wait;
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(wait))?;
    // tiny_http may answer (busy, for instance) before it has read the body; the answer still comes.
    let _ = stream.write_all(head).and_then(|()| stream.write_all(body));
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if answer.len() > MAX_ANSWER_BYTES {
                    return Err(io::Error::other("the answer is too large"));
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    parse_answer(&answer).ok_or_else(|| io::Error::other("the answer does not parse"))
}

/// Parses a complete HTTP/1.1 answer read to the end of its connection.
fn parse_answer(bytes: &[u8]) -> Option<Upstream> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
        if !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let rest = &bytes[head_end..];
    let body = if chunked {
        let mut decoder = Chunked::new(MAX_ANSWER_BYTES);
        let mut body = Vec::new();
        decoder.feed(rest, &mut body).ok()?;
        decoder.is_done().then_some(body)?
    } else {
        match length {
            Some(n) => rest.get(..n)?.to_vec(),
            None => rest.to_vec(),
        }
    };
    Some(Upstream {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::head::{parse, Parsed};

    #[test]
    fn the_front_headers_replace_what_the_client_sent() {
        let text = "POST /image HTTP/1.0\r\nX-Facegate-Peer: 6.6.6.6:1\r\nX-Facegate-Received-Us: 1\r\nX-Facegate-Tablet: forged\r\nX-Facegate-Admin-Session: 1\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer t\r\n\r\n";
        let Parsed::Complete(head, _) = parse(text.as_bytes(), 4096) else {
            panic!()
        };
        let peer: SocketAddr = "192.168.1.20:5000".parse().unwrap();
        let bytes = request_head(&head, 3, peer, Instant::now(), Some("front"), false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("Admin-Session"),
            "forged by the client: {text}"
        );
        let signed_in = request_head(&head, 3, peer, Instant::now(), None, true);
        let signed_in = String::from_utf8(signed_in).unwrap();
        assert!(
            signed_in.contains("X-Facegate-Admin-Session: 1\r\n"),
            "{signed_in}"
        );
        assert!(text.starts_with("POST /image HTTP/1.1\r\n"), "{text}");
        assert!(
            text.contains("X-Facegate-Peer: 192.168.1.20:5000\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("6.6.6.6") && !text.contains("chunked") && !text.contains("forged"),
            "{text}"
        );
        assert!(
            text.contains("Host: facegate\r\n") && text.contains("Authorization: Bearer t\r\n")
        );
        assert!(text.contains("X-Facegate-Tablet: front\r\n"), "{text}");
        assert!(
            text.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn answers_are_read_by_length_chunks_or_to_the_end() {
        let by_length = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        let answer = parse_answer(by_length).unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.headers,
            [("Content-Type".to_string(), "application/json".to_string())]
        );
        assert_eq!(answer.body, b"{}");
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).unwrap().body, b"{}");
        let to_end = b"HTTP/1.1 200 OK\r\n\r\nabc";
        assert_eq!(parse_answer(to_end).unwrap().body, b"abc");
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"),
            None
        );
    }
}
