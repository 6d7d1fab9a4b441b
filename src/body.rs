//! What the tablet posts, parsed without I/O: a raw JPEG/PNG body, `multipart/form-data`, raw base64
//! text, or JSON with the image and frame metadata. The Content-Type is a hint; the bytes decide.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::frame::{self, FrameError};
use multipart::MultipartError;

pub mod multipart;

const MAX_FRAME_ID_CHARS: usize = 128;
const MAX_CODE_CHARS: usize = 32;
/// `tablet_id` names a tablet for the confirmation over several frames (`door.confirm_frames`).
const MAX_TABLET_ID_CHARS: usize = 64;
/// Longest text form field (`frame_id`, `captured_at`, `code`) read from a multipart body.
const MAX_FORM_FIELD_BYTES: usize = 512;

/// A frame post after parsing: the image bytes (base64 already decoded) and what the tablet said about it.
#[derive(Debug, Clone, PartialEq)]
pub struct FramePost {
    pub image: Vec<u8>,
    pub frame_id: Option<String>,
    pub captured_at: Option<DateTime<Utc>>,
    /// Which tablet sent it, when several share one address.
    pub tablet_id: Option<String>,
}

/// A visitor code post: the typed code, and the frame when the tablet sent one.
#[derive(Debug, Clone, PartialEq)]
pub struct CodePost {
    pub code: String,
    pub image: Option<Vec<u8>>,
    pub frame_id: Option<String>,
    pub captured_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("the JSON body is not valid: {0}. Send {{\"image\": \"<base64>\", \"frame_id\": \"...\", \"captured_at\": \"RFC 3339\"}}, the raw JPEG or PNG bytes, or the raw base64 text")]
    Json(String),
    #[error("`frame_id` must be at most {MAX_FRAME_ID_CHARS} printable characters")]
    FrameId,
    #[error("`tablet_id` must be a string of 1 to {MAX_TABLET_ID_CHARS} printable characters")]
    TabletId,
    #[error("`captured_at` is not an RFC 3339 time (e.g. 2026-11-21T10:00:00.123Z): {0}")]
    CapturedAt(String),
    #[error("`code` must be a JSON string of 1 to {MAX_CODE_CHARS} characters, e.g. \"012345\" (a number would lose leading zeros)")]
    Code,
    #[error("{0}. Send a file part named `image` and the fields frame_id and captured_at")]
    Multipart(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl From<MultipartError> for BodyError {
    fn from(err: MultipartError) -> BodyError {
        BodyError::Multipart(err.to_string())
    }
}

/// How a body is to be read.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    RawImage,
    Multipart(String),
    Json,
    Base64,
}

fn media_type(content_type: Option<&str>) -> String {
    content_type
        .and_then(|t| t.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_image_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

fn shape(body: &[u8], content_type: Option<&str>) -> Result<Shape, BodyError> {
    // JPEG and PNG are recognised by their first bytes, whatever the label says.
    if is_image_magic(body) {
        return Ok(Shape::RawImage);
    }
    let media = media_type(content_type);
    if media == "multipart/form-data" {
        return Ok(Shape::Multipart(multipart::boundary(
            content_type.unwrap_or(""),
        )?));
    }
    // Base64 text never contains `{`.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Ok(Shape::Json);
    }
    // Labelled as image bytes and not text: answered as an image of an unknown format, not as bad
    // base64.
    let labelled_binary = matches!(
        media.as_str(),
        "image/jpeg" | "image/jpg" | "image/png" | "application/octet-stream"
    );
    let text = body
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if labelled_binary && !text {
        return Ok(Shape::RawImage);
    }
    Ok(Shape::Base64)
}

/// Raw bytes, held to the image size limit.
fn raw_image(bytes: &[u8], max_image_bytes: usize) -> Result<Vec<u8>, FrameError> {
    frame::check_image_size(bytes, max_image_bytes)?;
    Ok(bytes.to_vec())
}

/// A multipart `image` part: the file's bytes, or base64 text of them.
fn image_part(data: &[u8], max_image_bytes: usize) -> Result<Vec<u8>, FrameError> {
    if is_image_magic(data) {
        raw_image(data, max_image_bytes)
    } else {
        frame::decode_base64(data, max_image_bytes)
    }
}

/// Every field a post may carry, before each endpoint takes what it needs.
#[derive(Default)]
struct Fields {
    image: Option<Vec<u8>>,
    code: Option<String>,
    frame_id: Option<String>,
    captured_at: Option<DateTime<Utc>>,
    tablet_id: Option<String>,
}

fn check_frame_id(frame_id: Option<String>) -> Result<Option<String>, BodyError> {
    if let Some(id) = &frame_id {
        if id.chars().count() > MAX_FRAME_ID_CHARS || id.chars().any(char::is_control) {
            return Err(BodyError::FrameId);
        }
    }
    Ok(frame_id)
}

fn check_tablet_id(tablet_id: Option<String>) -> Result<Option<String>, BodyError> {
    if let Some(id) = &tablet_id {
        let length = id.chars().count();
        if !(1..=MAX_TABLET_ID_CHARS).contains(&length) || id.chars().any(char::is_control) {
            return Err(BodyError::TabletId);
        }
    }
    Ok(tablet_id)
}

fn parse_captured_at(text: Option<String>) -> Result<Option<DateTime<Utc>>, BodyError> {
    text.map(|text| {
        DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|err| BodyError::CapturedAt(err.to_string()))
    })
    .transpose()
}

fn check_code(code: String) -> Result<String, BodyError> {
    let length = code.trim().chars().count();
    if length == 0 || length > MAX_CODE_CHARS || code.chars().any(char::is_control) {
        return Err(BodyError::Code);
    }
    Ok(code)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFrame {
    image: String,
    frame_id: Option<Scalar>,
    captured_at: Option<String>,
    tablet_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCode {
    code: Scalar,
    image: Option<String>,
    frame_id: Option<Scalar>,
    captured_at: Option<String>,
}

/// A JSON value that may be a string or a number. An array, an object or a boolean is refused where
/// it starts, before anything of it is built: `{"code": [[0],[0],…]}` as a tree of values cost the
/// daemon about 50 times the body's size.
enum Scalar {
    Text(String),
    Number(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        struct StringOrNumber;
        impl serde::de::Visitor<'_> for StringOrNumber {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(text.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(text))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(Scalar::Number(n.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar::Number(n.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Scalar, E> {
                Ok(Scalar::Number(
                    serde_json::Number::from_f64(n)
                        .map_or_else(|| n.to_string(), |n| n.to_string()),
                ))
            }
        }
        deserializer.deserialize_any(StringOrNumber)
    }
}

fn json_frame_id(value: Option<Scalar>) -> Result<Option<String>, BodyError> {
    check_frame_id(value.map(|(Scalar::Text(id) | Scalar::Number(id))| id))
}

/// The fields of a multipart body; `allowed` names the fields the endpoint takes.
fn form_fields(
    body: &[u8],
    boundary: &str,
    allowed: &[&str],
    max_image_bytes: usize,
) -> Result<Fields, BodyError> {
    let mut fields = Fields::default();
    let mut seen: Vec<String> = Vec::new();
    for part in multipart::parse(body, boundary)? {
        if !allowed.contains(&part.name.as_str()) {
            return Err(BodyError::Multipart(format!(
                "the form field `{}` is not known; this endpoint takes {}",
                part.name,
                allowed.join(", ")
            )));
        }
        if seen.contains(&part.name) {
            return Err(BodyError::Multipart(format!(
                "the form field `{}` is sent twice",
                part.name
            )));
        }
        seen.push(part.name.clone());
        if part.name == "image" {
            fields.image = Some(image_part(part.data, max_image_bytes)?);
            continue;
        }
        if part.data.len() > MAX_FORM_FIELD_BYTES {
            return Err(BodyError::Multipart(format!(
                "the form field `{}` is longer than {MAX_FORM_FIELD_BYTES} bytes",
                part.name
            )));
        }
        let text = String::from_utf8(part.data.to_vec()).map_err(|_| {
            BodyError::Multipart(format!("the form field `{}` is not UTF-8", part.name))
        })?;
        match part.name.as_str() {
            "frame_id" => fields.frame_id = check_frame_id(Some(text))?,
            "captured_at" => fields.captured_at = parse_captured_at(Some(text))?,
            "tablet_id" => fields.tablet_id = check_tablet_id(Some(text))?,
            _ => fields.code = Some(check_code(text)?),
        }
    }
    Ok(fields)
}

/// A post to `/image` or `/save`: a raw JPEG or PNG body, a multipart form with an `image` file,
/// JSON, or raw base64 text.
pub fn parse_frame_post(
    body: &[u8],
    content_type: Option<&str>,
    max_image_bytes: usize,
) -> Result<FramePost, BodyError> {
    let fields = match shape(body, content_type)? {
        Shape::RawImage => Fields {
            image: Some(raw_image(body, max_image_bytes)?),
            ..Fields::default()
        },
        Shape::Base64 => Fields {
            image: Some(frame::decode_base64(body, max_image_bytes)?),
            ..Fields::default()
        },
        Shape::Multipart(boundary) => form_fields(
            body,
            &boundary,
            &["image", "frame_id", "captured_at", "tablet_id"],
            max_image_bytes,
        )?,
        Shape::Json => {
            let post: JsonFrame =
                serde_json::from_slice(body).map_err(|err| BodyError::Json(err.to_string()))?;
            let frame_id = json_frame_id(post.frame_id)?;
            let captured_at = parse_captured_at(post.captured_at)?;
            Fields {
                image: Some(frame::decode_base64(
                    post.image.as_bytes(),
                    max_image_bytes,
                )?),
                frame_id,
                captured_at,
                code: None,
                tablet_id: check_tablet_id(post.tablet_id)?,
            }
        }
    };
    let Some(image) = fields.image else {
        return Err(BodyError::Multipart(
            "the form has no file part named `image`".into(),
        ));
    };
    Ok(FramePost {
        image,
        frame_id: fields.frame_id,
        captured_at: fields.captured_at,
        tablet_id: fields.tablet_id,
    })
}

/// A post to `/code`: JSON `{"code", "frame_id", "captured_at", "image"}` or a multipart form with
/// the same fields (the image as a file part); the image is optional.
pub fn parse_code_post(
    body: &[u8],
    content_type: Option<&str>,
    max_image_bytes: usize,
) -> Result<CodePost, BodyError> {
    let fields = match shape(body, content_type)? {
        Shape::Multipart(boundary) => form_fields(
            body,
            &boundary,
            &["code", "image", "frame_id", "captured_at"],
            max_image_bytes,
        )?,
        Shape::Json => {
            let post: JsonCode =
                serde_json::from_slice(body).map_err(|err| BodyError::Json(err.to_string()))?;
            // A number would have lost its leading zeros.
            let Scalar::Text(code) = post.code else {
                return Err(BodyError::Code);
            };
            Fields {
                code: Some(check_code(code)?),
                image: post
                    .image
                    .map(|image| frame::decode_base64(image.as_bytes(), max_image_bytes))
                    .transpose()?,
                frame_id: json_frame_id(post.frame_id)?,
                captured_at: parse_captured_at(post.captured_at)?,
                tablet_id: None,
            }
        }
        Shape::RawImage | Shape::Base64 => {
            return Err(BodyError::Json(
                "POST /code takes a JSON object with `code` (or a multipart form)".into(),
            ))
        }
    };
    let Some(code) = fields.code else {
        return Err(BodyError::Code);
    };
    Ok(CodePost {
        code,
        image: fields.image,
        frame_id: fields.frame_id,
        captured_at: fields.captured_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JPEG: &[u8] = b"\xff\xd8\xff\xe0 raw jpeg bytes \x00\x80\xff\xd9";
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n raw png \x00";

    fn form(parts: &[(&str, &[u8])]) -> (Vec<u8>, &'static str) {
        let mut body = Vec::new();
        for (name, data) in parts {
            let file = if *name == "image" {
                "; filename=\"frame.png\""
            } else {
                ""
            };
            body.extend_from_slice(
                format!(
                    "--B0undary\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--B0undary--\r\n");
        (body, "multipart/form-data; boundary=B0undary")
    }

    #[test]
    fn raw_and_json_bodies_both_parse() {
        let raw = parse_frame_post(b"aGk=\n", None, 100).unwrap();
        assert_eq!(raw.image, b"hi");
        assert_eq!(raw.frame_id, None);
        let json = parse_frame_post(
            br#" {"image": "aGk=", "frame_id": "t-17", "captured_at": "2026-11-21T10:00:00.5+01:00"}"#,
            Some("application/json"),
            100,
        )
        .unwrap();
        assert_eq!(json.image, b"hi");
        assert_eq!(json.frame_id.as_deref(), Some("t-17"));
        assert_eq!(
            json.captured_at.unwrap().to_rfc3339(),
            "2026-11-21T09:00:00.500+00:00"
        );
        let numeric = parse_frame_post(br#"{"image": "aGk=", "frame_id": 42}"#, None, 100).unwrap();
        assert_eq!(numeric.frame_id.as_deref(), Some("42"));
        let tablet =
            parse_frame_post(br#"{"image": "aGk=", "tablet_id": "front"}"#, None, 100).unwrap();
        assert_eq!(tablet.tablet_id.as_deref(), Some("front"));
        let (form_body, form_label) = form(&[("image", JPEG), ("tablet_id", b"back")]);
        let form_post = parse_frame_post(&form_body, Some(form_label), 100).unwrap();
        assert_eq!(form_post.tablet_id.as_deref(), Some("back"));
    }

    #[test]
    fn raw_images_are_recognised_by_their_bytes_whatever_the_label() {
        let labels = [
            None,
            Some("image/png"),
            Some("image/jpeg"),
            Some("application/octet-stream"),
            Some("text/plain"),
            Some("multipart/form-data; boundary=x"),
        ];
        for image in [JPEG, PNG] {
            for label in labels {
                let post = parse_frame_post(image, label, 100).unwrap();
                assert_eq!(post.image, image, "{label:?}");
            }
        }
        // Base64 text stays base64 under an image label, as tablets have sent it.
        let labelled = parse_frame_post(b"aGk=", Some("image/jpeg"), 100).unwrap();
        assert_eq!(labelled.image, b"hi");
        // Binary that is no JPEG or PNG goes on as an image, to be refused as an unknown format.
        let gif = parse_frame_post(b"GIF89a\x01\x00\x80", Some("image/png"), 100).unwrap();
        assert_eq!(gif.image, b"GIF89a\x01\x00\x80");
    }

    #[test]
    fn limits_hold_for_raw_and_multipart_images() {
        let err = parse_frame_post(JPEG, Some("image/jpeg"), 10).unwrap_err();
        assert!(
            matches!(
                err,
                BodyError::Frame(FrameError::TooLarge { limit: 10, .. })
            ),
            "{err:?}"
        );
        let (body, label) = form(&[("image", JPEG)]);
        let err = parse_frame_post(&body, Some(label), 10).unwrap_err();
        assert!(
            matches!(err, BodyError::Frame(FrameError::TooLarge { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn multipart_forms_carry_the_image_file_and_the_fields() {
        let (body, label) = form(&[
            ("frame_id", b"t-9"),
            ("captured_at", b"2026-11-21T10:00:00Z"),
            ("image", PNG),
        ]);
        let post = parse_frame_post(&body, Some(label), 100).unwrap();
        assert_eq!(post.image, PNG);
        assert_eq!(post.frame_id.as_deref(), Some("t-9"));
        assert!(post.captured_at.is_some());
        let (base64_file, label) = form(&[("image", b"aGk=")]);
        assert_eq!(
            parse_frame_post(&base64_file, Some(label), 100)
                .unwrap()
                .image,
            b"hi"
        );
    }

    #[test]
    fn code_posts_take_json_or_a_form_with_an_optional_image() {
        let json = parse_code_post(
            br#"{"code": "012345", "frame_id": "c-1", "image": "aGk="}"#,
            Some("application/json"),
            100,
        )
        .unwrap();
        assert_eq!(json.code, "012345");
        assert_eq!(json.image.as_deref(), Some(&b"hi"[..]));
        let bare = parse_code_post(br#"{"code": "999999"}"#, None, 100).unwrap();
        assert_eq!((bare.image, bare.frame_id), (None, None));
        let (body, label) = form(&[("code", b"012345"), ("image", JPEG)]);
        let form = parse_code_post(&body, Some(label), 100).unwrap();
        assert_eq!(
            (form.code.as_str(), form.image.as_deref()),
            ("012345", Some(JPEG))
        );
    }

    /// Regression: `code` and `frame_id` were parsed as any JSON value and refused only once built,
    /// so one 16 MiB `{"code": [[0],[0],…]}` took the daemon from 57 MB to 805 MB. They are refused
    /// where they start now: the parser never goes past the first bracket.
    #[test]
    fn a_code_or_frame_id_that_is_an_array_is_refused_where_it_starts() {
        let mut wide = br#"{"code": ["#.to_vec();
        for _ in 0..100_000 {
            wide.extend_from_slice(b"[0],");
        }
        wide.extend_from_slice(b"[0]]}");
        let refused = |result: Result<(), BodyError>| match result {
            Err(BodyError::Json(message)) => message,
            other => panic!("{other:?}"),
        };
        let message = refused(parse_code_post(&wide, None, 100).map(drop));
        assert!(message.ends_with("line 1 column 10"), "{message}");
        let wide_id = [br#"{"image": "aGk=", "frame_id": "#.as_slice(), &wide[9..]].concat();
        let message = refused(parse_frame_post(&wide_id, None, 100).map(drop));
        assert!(message.ends_with("line 1 column 31"), "{message}");
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        let (unknown_field, form_label) = form(&[("door", b"open"), ("image", JPEG)]);
        let (no_image, _) = form(&[("frame_id", b"x")]);
        let (twice, _) = form(&[("image", JPEG), ("image", JPEG)]);
        let (long_id, _) = form(&[("frame_id", &[b'x'; 600]), ("image", JPEG)]);
        let cases: [(&[u8], Option<&str>, &str); 12] = [
            (br#"{"image": "aGk=""#, None, "JSON"),
            (br#"{"frame_id": "x"}"#, None, "image"),
            (
                br#"{"image": "aGk=", "captured_at": "yesterday"}"#,
                None,
                "captured_at",
            ),
            (
                br#"{"image": "aGk=", "frame_id": {"a": 1}}"#,
                None,
                "frame_id",
            ),
            (br#"{"image": "!!!"}"#, None, "base64"),
            (&unknown_field, Some(form_label), "`door` is not known"),
            (&no_image, Some(form_label), "no file part named `image`"),
            (&twice, Some(form_label), "twice"),
            (&long_id, Some(form_label), "longer than"),
            (b"aGk=", Some("multipart/form-data"), "boundary"),
            (br#"{"image": "aGk=", "tablet_id": ""}"#, None, "tablet_id"),
            (br#"{"image": "aGk=", "tablet_id": 7}"#, None, "JSON"),
        ];
        for (body, label, word) in cases {
            let err = parse_frame_post(body, label, 100).unwrap_err().to_string();
            assert!(
                err.contains(word),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
        let code_cases: [&[u8]; 5] = [
            br#"{"code": 12345}"#,
            br#"{"code": ""}"#,
            br#"{"code": "123456789012345678901234567890123"}"#,
            br#"{"image": "aGk="}"#,
            b"123456",
        ];
        for body in code_cases {
            assert!(
                parse_code_post(body, None, 100).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
