//! Request bodies read by the front, completely, before a worker is involved: an exact Content-Length
//! or a chunked body decoded incrementally, both under the body size cap. Pure over bytes; the I/O
//! and the deadline are the connection's (`conn::Incoming`).

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    /// The bodies in flight together would pass `http.max_body_bytes_in_flight`.
    OverBudget,
    Timeout,
    /// The client closed before the body was complete.
    Cut(String),
    /// Chunked framing that does not parse.
    Malformed(&'static str),
}

/// A chunk-size line (with extensions) or a trailer line longer than this is refused.
const MAX_LINE: usize = 4 * 1024;
/// All trailer lines together.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` as bytes arrive.
#[derive(Debug)]
pub(crate) struct Chunked {
    state: State,
    line: Vec<u8>,
    trailer_bytes: usize,
    limit: usize,
}

impl Chunked {
    pub fn new(limit: usize) -> Chunked {
        Chunked {
            state: State::Size,
            line: Vec::new(),
            trailer_bytes: 0,
            limit,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes what it can of `input` into `body`; returns how many bytes of `input` it used. Stops
    /// right after the final empty line, so bytes of a pipelined next request stay unused.
    pub(crate) fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<usize, BodyError> {
        let mut used = 0;
        while used < input.len() && self.state != State::Done {
            let rest = &input[used..];
            if let State::Data(remaining) = self.state {
                let take = rest
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                body.extend_from_slice(&rest[..take]);
                used += take;
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    State::DataEnd
                } else {
                    State::Data(left)
                };
                continue;
            }
            let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
                self.line.extend_from_slice(rest);
                used = input.len();
                // A CR at the end may be the line's own, its LF still on the way.
                let pending = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                if pending.len() > MAX_LINE {
                    return Err(BodyError::Malformed("a chunk line is too long"));
                }
                break;
            };
            self.line.extend_from_slice(&rest[..newline]);
            used += newline + 1;
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.len() > MAX_LINE {
                return Err(BodyError::Malformed("a chunk line is too long"));
            }
            self.state = self.after_line(line, body.len())?;
        }
        Ok(used)
    }

    fn after_line(&mut self, line: &[u8], body_len: usize) -> Result<State, BodyError> {
        match self.state {
            State::Size => {
                let size = line
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                    return Err(BodyError::Malformed("a chunk size is not a hex number"));
                }
                let size = u64::from_str_radix(std::str::from_utf8(size).unwrap_or("x"), 16)
                    .map_err(|_| BodyError::Malformed("a chunk size is not a hex number"))?;
                if size == 0 {
                    return Ok(State::Trailers);
                }
                if body_len as u64 + size > self.limit as u64 {
                    return Err(BodyError::TooLarge);
                }
                Ok(State::Data(size))
            }
            State::DataEnd if line.is_empty() => Ok(State::Size),
            State::DataEnd => Err(BodyError::Malformed("chunk data is longer than its size")),
            State::Trailers if line.is_empty() => Ok(State::Done),
            State::Trailers => {
                self.trailer_bytes += line.len();
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(BodyError::Malformed("the trailers are too long"));
                }
                Ok(State::Trailers)
            }
            State::Data(_) | State::Done => unreachable!("no line is read in this state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(
        input: &[u8],
        piece: usize,
        limit: usize,
    ) -> Result<(Vec<u8>, usize), BodyError> {
        let mut decoder = Chunked::new(limit);
        let mut body = Vec::new();
        let mut used = 0;
        while !decoder.is_done() && used < input.len() {
            let end = (used + piece).min(input.len());
            used += decoder.feed(&input[used..end], &mut body)?;
        }
        assert!(decoder.is_done(), "not done after {used} bytes");
        Ok((body, used))
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces_and_leave_the_next_request() {
        let input = b"4;ext=1\r\naGk=\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\n";
        for piece in [1, 2, 7, input.len()] {
            let (body, used) = decode_in_pieces(input, piece, 100).unwrap();
            assert_eq!(body, b"aGk=abc");
            assert_eq!(&input[used..], b"GET / HTTP/1.1\r\n", "piece {piece}");
        }
    }

    /// Found by the `chunked_body` fuzz target: a line of exactly `MAX_LINE` bytes was refused when
    /// its CR and LF arrived in different reads, and accepted when they came together.
    #[test]
    fn a_line_at_the_cap_is_accepted_however_its_crlf_arrives() {
        let mut input = b"4;".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_LINE - 2));
        let cr = input.len();
        input.extend_from_slice(b"\r\nabcd\r\n0\r\n\r\n");
        for piece in [1, cr + 1, input.len()] {
            let (body, used) = decode_in_pieces(&input, piece, 100).unwrap();
            assert_eq!(
                (body.as_slice(), used),
                (&b"abcd"[..], input.len()),
                "piece {piece}"
            );
        }
        input.insert(2, b'a');
        assert!(
            decode_in_pieces(&input, cr + 2, 100).is_err(),
            "one byte more is refused"
        );
    }

    #[test]
    fn broken_chunked_framing_is_refused() {
        let cases: [(&[u8], BodyError); 5] = [
            (
                b"zz\r\nhello\r\n0\r\n\r\n",
                BodyError::Malformed("a chunk size is not a hex number"),
            ),
            (
                b"FFFFFFFFFFFFFFFFFFFF\r\naGk=\r\n0\r\n\r\n",
                BodyError::Malformed("a chunk size is not a hex number"),
            ),
            (
                b"4\r\naGk=EXTRA\r\n0\r\n\r\n",
                BodyError::Malformed("chunk data is longer than its size"),
            ),
            (b"65\r\n", BodyError::TooLarge),
            (
                b"\r\n",
                BodyError::Malformed("a chunk size is not a hex number"),
            ),
        ];
        for (input, expected) in cases {
            let mut body = Vec::new();
            let got = Chunked::new(100).feed(input, &mut body);
            assert_eq!(got, Err(expected), "{:?}", String::from_utf8_lossy(input));
        }
        let long_line = vec![b'1'; MAX_LINE + 10];
        assert!(Chunked::new(100).feed(&long_line, &mut Vec::new()).is_err());
    }
}
