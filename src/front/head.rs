//! The request head as the front sees it, parsed without I/O: request line, headers, how the body is
//! framed, and whether the connection may stay open. Anything tiny_http could trip over is refused here.

/// Header names a client may not send: the front sets them for tiny_http (`http::forwarded`), and
/// hop-by-hop fields describe this connection only.
const NOT_FORWARDED: [&str; 7] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "expect",
    "te",
    "upgrade",
];

/// A complete, well-formed HTTP/1.0 or HTTP/1.1 request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
}

/// Why a head was refused; each maps to one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x at all, or broken framing: 400 and close.
    Malformed(&'static str),
    /// HTTP/2.0, HTTP/0.9, HTTP/1.2, an h2c preface...: 505 and close.
    UnsupportedVersion(String),
    /// The head did not end within the byte cap: 431 and close.
    TooLarge,
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Keep reading.
    Incomplete,
    /// The head and how many bytes of the buffer it used.
    Complete(Head, usize),
    Refused(HeadError),
}

/// The client's `Expect` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expectation {
    Nothing,
    /// `Expect: 100-continue`: answer `100 Continue` before reading the body.
    Continue,
    /// Anything else: 417.
    Unsupported,
}

/// How the body after the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// At most this many header lines.
pub(crate) const MAX_HEADERS: usize = 100;

/// Parses `buffer` as a request head of at most `max_bytes`. Refuses early, before the head is
/// complete, when the first bytes cannot start an HTTP/1.x request (a TLS ClientHello sent to a plain
/// port, binary noise), so such a client is closed at once instead of waiting for its deadline.
pub fn parse(buffer: &[u8], max_bytes: usize) -> Parsed {
    // Empty lines (CRLF) before a request line are tolerated (RFC 9112 §2.2).
    let mut start = 0;
    while buffer[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let rest = &buffer[start..];
    let line_end = rest.iter().position(|&b| b == b'\n');
    let first_line = &rest[..line_end.unwrap_or(rest.len())];
    if line_end.is_some() && !first_line.ends_with(b"\r") {
        return Parsed::Refused(HeadError::Malformed("lines must end with CRLF"));
    }
    if let Some(problem) = request_line_problem(first_line, line_end.is_some()) {
        return Parsed::Refused(problem);
    }
    let Some(end) = head_end(rest) else {
        return if buffer.len() > max_bytes {
            Parsed::Refused(HeadError::TooLarge)
        } else {
            Parsed::Incomplete
        };
    };
    if start + end > max_bytes {
        return Parsed::Refused(HeadError::TooLarge);
    }
    match parse_complete(&rest[..end]) {
        Ok(head) => Parsed::Complete(head, start + end),
        Err(err) => Parsed::Refused(err),
    }
}

/// Checks the request line so far: a token, a space, a target without controls, a version.
fn request_line_problem(line: &[u8], complete: bool) -> Option<HeadError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let method_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    if !line[..method_end].iter().all(|&b| is_token(b)) {
        return Some(HeadError::Malformed(
            "the request line does not start with a method",
        ));
    }
    if line.iter().any(|&b| b.is_ascii_control() || b >= 0x80) {
        return Some(HeadError::Malformed(
            "the request line holds control or non-ASCII bytes",
        ));
    }
    if method_end > 32 {
        return Some(HeadError::Malformed("the method is too long"));
    }
    if !complete {
        return None;
    }
    let text = std::str::from_utf8(line).unwrap_or_default();
    let parts: Vec<&str> = text.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Some(version_or_malformed(parts.last().copied().unwrap_or("")));
    };
    if method.is_empty() || target.is_empty() {
        return Some(HeadError::Malformed(
            "the request line is not `METHOD target HTTP/1.1`",
        ));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Some(version_or_malformed(version));
    }
    None
}

fn version_or_malformed(last: &str) -> HeadError {
    if last.starts_with("HTTP/") && last != "HTTP/1.1" && last != "HTTP/1.0" {
        HeadError::UnsupportedVersion(last.to_string())
    } else {
        HeadError::Malformed("the request line is not `METHOD target HTTP/1.1`")
    }
}

/// RFC 9110 token characters.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Offset just past the empty line that ends the head.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// The lines of `bytes`, separated by CRLF.
fn split_crlf(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(2).position(|w| w == b"\r\n") {
            Some(at) => {
                rest = Some(&current[at + 2..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn parse_complete(bytes: &[u8]) -> Result<Head, HeadError> {
    let mut lines = split_crlf(&bytes[..bytes.len() - 4]);
    // A bare CR or LF inside a line: two parsers could split it differently, so it is refused.
    if split_crlf(&bytes[..bytes.len() - 4]).any(|l| l.contains(&b'\r') || l.contains(&b'\n')) {
        return Err(HeadError::Malformed("lines must end with CRLF"));
    }
    let request_line = std::str::from_utf8(lines.next().unwrap_or_default())
        .map_err(|_| HeadError::Malformed("the request line is not ASCII"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("the request line is incomplete"));
    };
    let minor_version = if version == "HTTP/1.1" { 1 } else { 0 };
    let mut headers = Vec::new();
    for line in lines {
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HeadError::Malformed("folded header lines are not accepted"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HeadError::Malformed("a header line has no colon"))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(HeadError::Malformed("a header name is not a token"));
        }
        let value = line[colon + 1..].trim_ascii();
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HeadError::Malformed("a header value holds control bytes"));
        }
        // As the request line (`request_line_problem`): the request handler's parser (tiny_http)
        // drops a connection on any other byte without an answer, which the front could only
        // report as a 503.
        if !value.is_ascii() {
            return Err(HeadError::Malformed(
                "a header value is not ASCII: percent-encode other bytes",
            ));
        }
        if headers.len() == MAX_HEADERS {
            return Err(HeadError::TooLarge);
        }
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        minor_version,
        headers,
    })
}

impl Head {
    /// Values of every header named `name` (case-insensitive).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Content-Length or chunked; anything ambiguous (both, several lengths, other codings) is refused,
    /// since two parsers reading one request differently is how requests are smuggled.
    pub(crate) fn framing(&self) -> Result<Framing, &'static str> {
        let codings: Vec<&str> = self
            .values("transfer-encoding")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        let lengths: Vec<&str> = self.values("content-length").collect();
        if !codings.is_empty() {
            if !lengths.is_empty() {
                return Err("Transfer-Encoding and Content-Length together");
            }
            return match codings[..] {
                [only] if only.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
                _ => Err("only the chunked transfer coding is accepted"),
            };
        }
        match lengths[..] {
            [] => Ok(Framing::None),
            [one] if !one.is_empty() && one.bytes().all(|b| b.is_ascii_digit()) => one
                .parse()
                .map(Framing::Length)
                .map_err(|_| "Content-Length is out of range"),
            [_] => Err("Content-Length is not a number"),
            _ => Err("more than one Content-Length"),
        }
    }

    /// May the connection carry another request after this one?
    pub(crate) fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        self.minor_version == 1 || self.has_token("connection", "keep-alive")
    }

    /// What the client's `Expect` header asks for.
    pub(crate) fn expectation(&self) -> Expectation {
        let mut expects = self.values("expect").peekable();
        if expects.peek().is_none() {
            Expectation::Nothing
        } else if expects.all(|v| v.eq_ignore_ascii_case("100-continue")) {
            Expectation::Continue
        } else {
            Expectation::Unsupported
        }
    }

    /// The headers passed on to tiny_http: all but hop-by-hop fields and those the front sets.
    pub(crate) fn forwardable_headers(&self) -> impl Iterator<Item = &(String, String)> {
        self.headers.iter().filter(|(name, _)| {
            !NOT_FORWARDED.iter().any(|n| name.eq_ignore_ascii_case(n))
                && !crate::http::forwarded::is_front_header(name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(text: &str) -> Head {
        match parse(text.as_bytes(), 64 * 1024) {
            Parsed::Complete(head, used) => {
                assert_eq!(used, text.len(), "{text:?}");
                head
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn refused(bytes: &[u8]) -> HeadError {
        match parse(bytes, 64 * 1024) {
            Parsed::Refused(err) => err,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn a_tablet_post_parses() {
        let head = complete(
            "POST /image HTTP/1.1\r\nHost: pi\r\nAuthorization: Bearer t\r\nContent-Length: 12\r\n\r\n",
        );
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/image");
        assert_eq!(head.minor_version, 1);
        assert_eq!(head.framing(), Ok(Framing::Length(12)));
        assert!(head.keep_alive());
        assert_eq!(
            head.values("authorization").collect::<Vec<_>>(),
            ["Bearer t"]
        );
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for text in [
            "",
            "POST",
            "POST /image HTTP/1.1\r\nHost: x\r\n",
            "GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(parse(text.as_bytes(), 1024), Parsed::Incomplete, "{text:?}");
        }
    }

    #[test]
    fn other_http_versions_are_unsupported() {
        for text in [
            "GET /healthz HTTP/2.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /healthz HTTP/3.0\r\n",
            "GET /healthz HTTP/1.2\r\n",
            "GET /healthz HTTP/0.9\r\n",
        ] {
            assert!(
                matches!(refused(text.as_bytes()), HeadError::UnsupportedVersion(_)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn bytes_that_cannot_start_a_request_are_refused_before_the_head_ends() {
        let client_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00];
        assert!(matches!(refused(&client_hello), HeadError::Malformed(_)));
        assert!(matches!(refused(b"GET /\x00x"), HeadError::Malformed(_)));
        assert!(matches!(
            refused(b"GET  /healthz HTTP/1.1\r\n"),
            HeadError::Malformed(_)
        ));
        assert!(matches!(refused(b"GET\r\n\r\n"), HeadError::Malformed(_)));
    }

    #[test]
    fn heads_past_the_cap_are_too_large() {
        let mut long = b"GET /healthz HTTP/1.1\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(parse(&long, 1024), Parsed::Refused(HeadError::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(refused(text.as_bytes()), HeadError::TooLarge);
    }

    #[test]
    fn broken_header_lines_are_malformed() {
        for text in [
            "GET / HTTP/1.1\r\nNoColonHere\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: 1\r\n   continued\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        ] {
            assert!(
                matches!(refused(text.as_bytes()), HeadError::Malformed(_)),
                "{text:?}"
            );
        }
    }

    /// Regression: a `User-Agent: café` on an unauthenticated route went through to tiny_http, which
    /// dropped the connection without an answer; the client got 503 and the log an unthrottled warning.
    #[test]
    fn non_ascii_request_lines_and_header_values_are_malformed_not_forwarded() {
        for text in [
            "GET /healthz HTTP/1.1\r\nUser-Agent: caf\u{e9}\r\n\r\n",
            "GET /h\u{e9}althz HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(refused(text.as_bytes()), HeadError::Malformed(_)),
                "{text:?}"
            );
        }
        assert!(matches!(
            refused(b"GET /healthz HTTP/1.1\r\nX: \xff\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn leading_empty_lines_are_tolerated_bare_line_feeds_are_not() {
        let head = complete("\r\nGET /healthz HTTP/1.0\r\nHost: x\r\n\r\n");
        assert_eq!(head.minor_version, 0);
        assert!(!head.keep_alive());
        for text in [
            "GET /healthz HTTP/1.1\nHost: x\n\n",
            "GET /healthz HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\ry\r\n\r\n",
        ] {
            assert!(
                matches!(refused(text.as_bytes()), HeadError::Malformed(_)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn framing_refuses_ambiguity() {
        let framing =
            |headers: &str| complete(&format!("POST / HTTP/1.1\r\n{headers}\r\n")).framing();
        assert_eq!(framing(""), Ok(Framing::None));
        assert_eq!(
            framing("Transfer-Encoding: chunked\r\n"),
            Ok(Framing::Chunked)
        );
        assert!(framing("Transfer-Encoding: gzip, chunked\r\n").is_err());
        assert!(framing("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n").is_err());
        assert!(framing("Content-Length: 4\r\nContent-Length: 400\r\n").is_err());
        for bad in ["-1", "abc", "0x100", "1e3", "12 34", "18446744073709551616"] {
            assert!(
                framing(&format!("Content-Length: {bad}\r\n")).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            framing("Content-Length: 999999999999\r\n"),
            Ok(Framing::Length(999_999_999_999))
        );
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let keep = |text: &str| complete(text).keep_alive();
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn front_and_hop_by_hop_headers_are_not_forwarded() {
        let head = complete(
            "POST / HTTP/1.1\r\nHost: x\r\nX-Facegate-Peer: 1.2.3.4:5\r\nx-facegate-received-us: 1\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: Bearer t\r\n\r\n",
        );
        let names: Vec<&str> = head
            .forwardable_headers()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["Host", "Authorization"]);
    }
}
