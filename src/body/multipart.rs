//! A small `multipart/form-data` reader (RFC 7578) over a body already read and bounded: parts are
//! slices of the body, with a bounded number of parts and bounded part headers.

use memchr::memmem;

/// More parts than a frame post has fields is refused.
pub(crate) const MAX_PARTS: usize = 16;
/// Longest header block of one part.
pub(crate) const MAX_PART_HEADER_BYTES: usize = 8 * 1024;

/// One form field: its name, the file name if it is a file, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the multipart/form-data body is not valid: {0}")]
pub struct MultipartError(pub String);

fn fail<T>(problem: impl Into<String>) -> Result<T, MultipartError> {
    Err(MultipartError(problem.into()))
}

/// The `boundary` parameter of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let (_, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    let boundary = parameters(params)
        .into_iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value);
    match boundary {
        Some(b) if (1..=70).contains(&b.len()) && !b.contains(['\r', '\n']) => Ok(b),
        Some(_) => fail("the boundary must be 1 to 70 characters on one line"),
        None => fail("the Content-Type has no boundary parameter"),
    }
}

/// Splits `body` into its parts.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, MultipartError> {
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    // The first delimiter opens the body, or follows a preamble and a line break.
    let mut at = if body.starts_with(delimiter.as_bytes()) {
        delimiter.len()
    } else {
        match memmem::find(body, next_delimiter.as_bytes()) {
            Some(found) => found + next_delimiter.len(),
            None => return fail(format!("the boundary `{boundary}` never occurs")),
        }
    };
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let padding = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        if !rest[padding..].starts_with(b"\r\n") {
            return fail("a boundary line is not followed by a line break");
        }
        let part_start = at + padding + 2;
        let part = &body[part_start..];
        let Some(end) = memmem::find(part, next_delimiter.as_bytes()) else {
            return fail("the closing boundary is missing (the upload was cut short?)");
        };
        if parts.len() == MAX_PARTS {
            return fail(format!("more than {MAX_PARTS} parts"));
        }
        parts.push(read_part(&part[..end])?);
        at = part_start + end + next_delimiter.len();
    }
}

fn read_part(part: &[u8]) -> Result<Part<'_>, MultipartError> {
    let (head, data) = if part.starts_with(b"\r\n") {
        (&part[..0], &part[2..])
    } else {
        match memmem::find(
            &part[..part.len().min(MAX_PART_HEADER_BYTES + 4)],
            b"\r\n\r\n",
        ) {
            Some(end) => (&part[..end], &part[end + 4..]),
            None if part.len() > MAX_PART_HEADER_BYTES => {
                return fail(format!(
                    "a part's headers are longer than {MAX_PART_HEADER_BYTES} bytes"
                ))
            }
            None => return fail("a part's headers do not end with an empty line"),
        }
    };
    let head = std::str::from_utf8(head).or(fail("a part's headers are not UTF-8"))?;
    let disposition = head
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("Content-Disposition"))
        .map(|(_, value)| value.trim());
    let Some(disposition) = disposition else {
        return fail("a part has no Content-Disposition header");
    };
    let (kind, params) = disposition.split_once(';').unwrap_or((disposition, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return fail(format!("a part is `{}`, not form-data", kind.trim()));
    }
    let params = parameters(params);
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let Some(name) = param("name") else {
        return fail("a part has no name");
    };
    Ok(Part {
        name,
        filename: param("filename"),
        data,
    })
}

/// `; key=value; key="quoted \" value"` → pairs, keys as written.
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ';' || c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ';')).collect();
        if key.is_empty() && chars.peek().is_none() {
            return pairs;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        other => value.push(other),
                    }
                }
            } else {
                value = std::iter::from_fn(|| chars.next_if(|c| *c != ';')).collect();
            }
        }
        pairs.push((key.trim().to_string(), value.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut body = b"preamble to ignore\r\n".to_vec();
        for (name, filename, data) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let file = filename.map_or(String::new(), |f| format!("; filename=\"{f}\""));
            body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"{file}\r\nContent-Type: application/octet-stream\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\nepilogue").as_bytes());
        body
    }

    #[test]
    fn fields_and_files_come_out_as_sent() {
        let jpeg = b"\xff\xd8\xff\xe0\r\n--not-the-boundary\r\n\xff\xd9";
        let body = form(
            "XyZ",
            &[("frame_id", None, b"t-17"), ("image", Some("f.jpg"), jpeg)],
        );
        let parts = parse(&body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].data),
            ("frame_id", &b"t-17"[..])
        );
        assert_eq!(parts[1].filename.as_deref(), Some("f.jpg"));
        assert_eq!(parts[1].data, jpeg);
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        let cases = [
            ("multipart/form-data; boundary=abc", Ok("abc")),
            (
                "multipart/form-data; charset=utf-8; BOUNDARY=\"a b;c\"",
                Ok("a b;c"),
            ),
            ("multipart/form-data", Err("no boundary")),
            ("multipart/form-data; boundary=", Err("1 to 70")),
        ];
        for (header, expected) in cases {
            match (boundary(header), expected) {
                (Ok(found), Ok(wanted)) => assert_eq!(found, wanted, "{header}"),
                (Err(err), Err(word)) => assert!(err.to_string().contains(word), "{header}: {err}"),
                (got, wanted) => panic!("{header}: {got:?}, wanted {wanted:?}"),
            }
        }
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        let many: Vec<(&str, Option<&str>, &[u8])> = vec![("f", None, b"x"); MAX_PARTS + 1];
        let long_header = format!(
            "--b\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\nx\r\n--b--",
            "n".repeat(MAX_PART_HEADER_BYTES)
        );
        let cases: [(Vec<u8>, &str); 7] = [
            (b"no delimiter at all".to_vec(), "never occurs"),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\ncut".to_vec(),
                "cut short",
            ),
            (
                b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--".to_vec(),
                "Content-Disposition",
            ),
            (
                b"--b\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--b--".to_vec(),
                "not form-data",
            ),
            (b"--bjunk\r\n".to_vec(), "line break"),
            (form("b", &many), "more than"),
            (long_header.into_bytes(), "longer than"),
        ];
        for (body, word) in cases {
            let err = parse(&body, "b").unwrap_err().to_string();
            assert!(
                err.contains(word),
                "{:?}: {err}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
        }
    }
}
