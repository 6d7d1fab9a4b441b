//! What a browser sends, parsed without sockets: cookies, URL-encoded forms and queries, and
//! `multipart/form-data` uploads. Every parser works on the bounded body it is given.

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Decoded form fields (from a URL-encoded body, a query or the text parts of a multipart body).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// Decodes `application/x-www-form-urlencoded` text: `+` is a space, bad escapes stay literal.
    pub fn urlencoded(text: &str) -> Fields {
        Fields(
            text.split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(key), percent_decode(value))
                })
                .collect(),
        )
    }

    /// The first value of `key`, trimmed; `None` when absent or blank.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn push(&mut self, key: String, value: String) {
        self.0.push((key, value));
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, other) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One uploaded file of a multipart body.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub field: String,
    /// The browser's file name, reduced to its last path component.
    pub file_name: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MultipartError {
    #[error("the upload is cut short or malformed; send the form again")]
    Malformed,
}

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn multipart_boundary(content_type: &str) -> Option<&str> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

/// Splits a multipart body into text fields and uploaded files (parts with a `filename`).
/// Empty file parts (a file input left blank) are dropped.
pub fn multipart(body: &[u8], boundary: &str) -> Result<(Fields, Vec<Upload>), MultipartError> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut fields = Fields::default();
    let mut uploads = Vec::new();
    let mut rest = match find(body, &delimiter) {
        Some(at) => &body[at + delimiter.len()..],
        None => return Err(MultipartError::Malformed),
    };
    let separator = [b"\r\n".as_slice(), &delimiter].concat();
    loop {
        if rest.starts_with(b"--") {
            return Ok((fields, uploads));
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or(MultipartError::Malformed)?;
        let head_end = find(rest, b"\r\n\r\n").ok_or(MultipartError::Malformed)?;
        let head = String::from_utf8_lossy(&rest[..head_end]);
        let after_head = &rest[head_end + 4..];
        let end = find(after_head, &separator).ok_or(MultipartError::Malformed)?;
        let content = &after_head[..end];
        rest = &after_head[end + separator.len()..];
        let disposition = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then_some(value.to_string())
            })
            .ok_or(MultipartError::Malformed)?;
        let name = disposition_param(&disposition, "name").ok_or(MultipartError::Malformed)?;
        match disposition_param(&disposition, "filename") {
            Some(file_name) => {
                if !content.is_empty() {
                    let base = file_name.rsplit(['/', '\\']).next().unwrap_or_default();
                    uploads.push(Upload {
                        field: name,
                        file_name: base.to_string(),
                        bytes: content.to_vec(),
                    });
                }
            }
            None => fields.push(name, String::from_utf8_lossy(content).into_owned()),
        }
    }
}

fn disposition_param(disposition: &str, key: &str) -> Option<String> {
    disposition.split(';').skip(1).find_map(|param| {
        let (k, v) = param.trim().split_once('=')?;
        k.eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let header = Some("a=1; facegate_admin=xyz; facegate_admin_x=2");
        assert_eq!(cookie(header, "facegate_admin"), Some("xyz"));
        assert_eq!(cookie(header, "b"), None);
        assert_eq!(cookie(None, "a"), None);
    }

    #[test]
    fn urlencoded_fields_decode_escapes_and_plus() {
        let fields = Fields::urlencoded("name=Ann+Lee&x=%C3%A9t%C3%A9&bad=%zz&empty=&csrf=a%2Fb");
        assert_eq!(fields.get("name"), Some("Ann Lee"));
        assert_eq!(fields.get("x"), Some("été"));
        assert_eq!(fields.get("bad"), Some("%zz"));
        assert_eq!(fields.get("empty"), None);
        assert_eq!(fields.get("csrf"), Some("a/b"));
        assert_eq!(fields.get("missing"), None);
    }

    #[test]
    fn boundaries_come_from_the_content_type() {
        assert_eq!(
            multipart_boundary("multipart/form-data; boundary=----abc"),
            Some("----abc")
        );
        assert_eq!(
            multipart_boundary("Multipart/Form-Data; charset=x; boundary=\"q q\""),
            Some("q q")
        );
        assert_eq!(
            multipart_boundary("application/x-www-form-urlencoded"),
            None
        );
        assert_eq!(multipart_boundary("multipart/form-data"), None);
    }

    #[test]
    fn multipart_bodies_split_into_fields_and_files() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\ntok\r\n\
--XX\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"C:\\\\pics\\\\a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\r\n--X\xff\r\n\
--XX\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"\"\r\n\r\n\r\n\
--XX--\r\n";
        let (fields, uploads) = multipart(body, "XX").unwrap();
        assert_eq!(fields.get("csrf"), Some("tok"));
        assert_eq!(uploads.len(), 1, "the empty file input is dropped");
        assert_eq!(uploads[0].field, "photos");
        assert_eq!(uploads[0].file_name, "a.jpg");
        assert_eq!(uploads[0].bytes, b"\xff\xd8\r\n--X\xff");
    }

    #[test]
    fn cut_multipart_bodies_are_refused() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\ntok";
        assert_eq!(multipart(body, "XX"), Err(MultipartError::Malformed));
        assert_eq!(multipart(b"garbage", "XX"), Err(MultipartError::Malformed));
    }
}
