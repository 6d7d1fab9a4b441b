//! What the tablet posts, parsed without I/O: raw base64 text, or JSON with the image and frame metadata.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::frame::{self, FrameError};

const MAX_FRAME_ID_CHARS: usize = 128;

/// A frame post after parsing: the image bytes (base64 already decoded) and what the tablet said about it.
#[derive(Debug, Clone, PartialEq)]
pub struct FramePost {
    pub image: Vec<u8>,
    pub frame_id: Option<String>,
    pub captured_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("the JSON body is not valid: {0}. Send {{\"image\": \"<base64>\", \"frame_id\": \"...\", \"captured_at\": \"RFC 3339\"}} or the raw base64 text")]
    Json(String),
    #[error("`frame_id` must be at most {MAX_FRAME_ID_CHARS} printable characters")]
    FrameId,
    #[error("`captured_at` is not an RFC 3339 time (e.g. 2026-11-21T10:00:00.123Z): {0}")]
    CapturedAt(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPost {
    image: String,
    frame_id: Option<serde_json::Value>,
    captured_at: Option<String>,
}

/// JSON when the body is an object (base64 text never contains `{`), raw base64 otherwise.
pub fn parse_frame_post(body: &[u8], max_image_bytes: usize) -> Result<FramePost, BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Ok(FramePost {
            image: frame::decode_base64(body, max_image_bytes)?,
            frame_id: None,
            captured_at: None,
        });
    }
    let post: JsonPost =
        serde_json::from_slice(body).map_err(|err| BodyError::Json(err.to_string()))?;
    let frame_id = match post.frame_id {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(BodyError::FrameId),
    };
    if let Some(id) = &frame_id {
        if id.chars().count() > MAX_FRAME_ID_CHARS || id.chars().any(char::is_control) {
            return Err(BodyError::FrameId);
        }
    }
    let captured_at = post
        .captured_at
        .map(|text| {
            DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|err| BodyError::CapturedAt(err.to_string()))
        })
        .transpose()?;
    Ok(FramePost {
        image: frame::decode_base64(post.image.as_bytes(), max_image_bytes)?,
        frame_id,
        captured_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_json_bodies_both_parse() {
        let raw = parse_frame_post(b"aGk=\n", 100).unwrap();
        assert_eq!(raw.image, b"hi");
        assert_eq!(raw.frame_id, None);
        let json = parse_frame_post(
            br#" {"image": "aGk=", "frame_id": "t-17", "captured_at": "2026-11-21T10:00:00.5+01:00"}"#,
            100,
        )
        .unwrap();
        assert_eq!(json.image, b"hi");
        assert_eq!(json.frame_id.as_deref(), Some("t-17"));
        assert_eq!(
            json.captured_at.unwrap().to_rfc3339(),
            "2026-11-21T09:00:00.500+00:00"
        );
        let numeric = parse_frame_post(br#"{"image": "aGk=", "frame_id": 42}"#, 100).unwrap();
        assert_eq!(numeric.frame_id.as_deref(), Some("42"));
    }

    #[test]
    fn malformed_json_bodies_say_what_is_wrong() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"image": "aGk=""#, "JSON"),
            (br#"{"frame_id": "x"}"#, "image"),
            (
                br#"{"image": "aGk=", "captured_at": "yesterday"}"#,
                "captured_at",
            ),
            (br#"{"image": "aGk=", "frame_id": {"a": 1}}"#, "frame_id"),
            (br#"{"image": "!!!"}"#, "base64"),
        ];
        for (body, word) in cases {
            let err = parse_frame_post(body, 100).unwrap_err().to_string();
            assert!(
                err.contains(word),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
