//! What the fuzz targets exercise, as plain functions: the cargo-fuzz targets call them (scripts/fuzz,
//! coverage-guided); inside `cargo test`, tests/hostile_input.rs replays generated requests through
//! `frame_body` and `config`, and tests/fuzz_targets.rs runs every target over its seeds in
//! fuzz/seeds/, generated mutations of them and every file in fuzz/regressions/, so a crash found here
//! stays covered by the plain test run. A panic or
//! an abort is a finding; so is a broken invariant (the asserts below).

use std::path::Path;

use ed25519_dalek::SigningKey;
use facegate::body::{multipart, parse_code_post, parse_frame_post};
use facegate::config::{Config, FrameConfig};
use facegate::front::head::{self, Parsed};
use facegate::fuzzing;
use facegate::gallery::{EmbedderId, Gallery};
use facegate::{frame, gallery_bundle};
use opencv::prelude::MatTraitConst;

/// One request body as the daemon reads it (raw image, multipart, raw base64 or JSON, for `/image` and
/// for `/code`), and the same bytes taken as an image.
pub fn frame_body(data: &[u8]) {
    let limits = FrameConfig::default();
    if let Ok(post) = parse_frame_post(data, None, limits.max_image_bytes) {
        image(&post.image, &limits);
    }
    let labels = [
        None,
        Some("image/png"),
        Some("multipart/form-data; boundary=----facegateHostile"),
    ];
    for content_type in labels {
        if let Ok(post) = parse_frame_post(data, content_type, limits.max_image_bytes) {
            assert!(!post.image.is_empty() && post.image.len() <= limits.max_image_bytes);
        }
        if let Ok(post) = parse_code_post(data, content_type, limits.max_image_bytes) {
            assert!(!post.code.trim().is_empty() && post.code.chars().count() <= 32);
        }
    }
    if let Ok(decoded) = frame::decode_base64(data, limits.max_image_bytes) {
        assert!(
            !decoded.is_empty() && decoded.len() <= limits.max_image_bytes,
            "decode_base64 returned {} bytes",
            decoded.len()
        );
    }
    image(data, &limits);
}

/// Header check, decode plan and the bounded OpenCV decode of image bytes.
fn image(bytes: &[u8], limits: &FrameConfig) {
    let Ok(header) = frame::read_header(bytes) else {
        assert!(
            frame::decode_image(bytes, limits).is_err(),
            "an image whose header is refused was decoded"
        );
        return;
    };
    let planned = frame::plan_decode(&header, limits);
    if let Ok(decoded) = frame::decode_image(bytes, limits) {
        assert!(planned.is_ok(), "decoded an image the plan refused");
        let (rows, cols) = (decoded.image.rows(), decoded.image.cols());
        let pixels = u64::try_from(rows).unwrap_or(0) * u64::try_from(cols).unwrap_or(0);
        assert!(
            pixels > 0 && pixels <= limits.max_decoded_pixels,
            "decoded {cols}x{rows}, limit {} pixels",
            limits.max_decoded_pixels
        );
    }
}

/// A config file as `facegate --config` reads it: a parsed config is a valid one.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, Path::new("fuzz.toml")) {
        assert!(
            config.validate().is_ok(),
            "Config::parse accepted a config that does not validate"
        );
        assert!(config.worker_count() >= 1);
        let _ = (
            config.gallery_path(),
            config.audit_dir(),
            config.snapshot_dir(),
            facegate::decision::FreshnessRules::of(&config.door),
        );
    }
}

/// Request heads through the front's parser and what the front derives from a parsed head.
pub fn head(data: &[u8]) {
    const MAX_HEAD: usize = 8 * 1024;
    match head::parse(data, MAX_HEAD) {
        Parsed::Complete(parsed, used) => {
            assert!(used <= data.len() && used <= MAX_HEAD, "used {used} bytes");
            assert_eq!(
                head::parse(&data[..used], MAX_HEAD),
                Parsed::Complete(parsed.clone(), used),
                "the bytes after the head changed how it parsed"
            );
            assert!(
                !matches!(
                    head::parse(&data[..used - 1], MAX_HEAD),
                    Parsed::Complete(..)
                ),
                "a head was complete one byte early"
            );
            assert!(!parsed.method.is_empty() && !parsed.target.is_empty());
            let used_by_front = fuzzing::head_use(&parsed);
            for (name, _) in &used_by_front.forwarded {
                for hop in [
                    "connection",
                    "transfer-encoding",
                    "content-length",
                    "expect",
                ] {
                    assert!(!name.eq_ignore_ascii_case(hop), "{name} forwarded");
                }
            }
        }
        Parsed::Incomplete => assert!(data.len() <= MAX_HEAD, "an endless head kept waiting"),
        Parsed::Refused(_) => {}
    }
}

/// Chunked request bodies, decoded whole, in two pieces and (when small) byte by byte: the same outcome
/// each way.
pub fn chunked_body(data: &[u8]) {
    const LIMIT: usize = 64 * 1024;
    let whole = fuzzing::chunked(&[data], LIMIT);
    if let Ok((body, used, done)) = &whole {
        assert!(body.len() <= LIMIT && *used <= data.len());
        assert!(*done || *used == data.len(), "stopped early without an end");
    }
    // Split right before one of the line feeds (the first byte picks which): where a line's CR and LF
    // arrive apart.
    let line_feeds: Vec<usize> = (0..data.len()).filter(|&i| data[i] == b'\n').collect();
    let pick = data.first().map_or(0, |b| usize::from(*b));
    let split = line_feeds
        .get(pick % line_feeds.len().max(1))
        .copied()
        .unwrap_or(pick.min(data.len()));
    let halves = fuzzing::chunked(&[&data[..split], &data[split..]], LIMIT);
    assert_eq!(
        whole, halves,
        "two pieces (split at {split}) decoded differently"
    );
    if data.len() <= 4096 {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(
            whole,
            fuzzing::chunked(&bytes, LIMIT),
            "byte by byte decoded differently"
        );
    }
}

/// `multipart/form-data` frame posts: the first line is the Content-Type, the rest the body.
pub fn multipart(data: &[u8]) {
    let (content_type, body) = split_first_line(data);
    for content_type in [content_type, "multipart/form-data; boundary=facegateFuzz"] {
        let Ok(boundary) = multipart::boundary(content_type) else {
            continue;
        };
        if let Ok(parts) = multipart::parse(body, &boundary) {
            assert!(parts.len() <= 16, "{} parts", parts.len());
            let range = body.as_ptr_range();
            for part in parts {
                let inside =
                    range.start <= part.data.as_ptr() && part.data.as_ptr_range().end <= range.end;
                assert!(inside, "a part's data is not a slice of the body");
            }
        }
    }
}

/// The admin page's forms: URL-encoded fields, cookies and multipart uploads (first line: the
/// Content-Type, the rest the body).
pub fn admin_form(data: &[u8]) {
    use fuzzing::admin_form::{cookie, multipart, multipart_boundary, Fields};
    let text = String::from_utf8_lossy(data);
    let fields = Fields::urlencoded(&text);
    for key in ["name", "password", "csrf", "code"] {
        if let Some(value) = fields.get(key) {
            assert!(!value.is_empty() && value.trim() == value);
        }
    }
    if let Some(value) = cookie(Some(&text), "facegate_session") {
        assert!(!value.contains(';'));
    }
    let (content_type, body) = split_first_line(data);
    let boundaries = [multipart_boundary(content_type), Some("facegateFuzz")];
    for boundary in boundaries.into_iter().flatten() {
        if let Ok((_, uploads)) = multipart(body, boundary) {
            let total: usize = uploads.iter().map(|u| u.bytes.len()).sum();
            assert!(total <= body.len(), "uploads larger than the body");
            for upload in uploads {
                assert!(!upload.bytes.is_empty(), "an empty upload was kept");
                assert!(
                    !upload.file_name.contains(['/', '\\']),
                    "{}",
                    upload.file_name
                );
            }
        }
    }
}

/// When the fuzzed commands are judged (Unix milliseconds): seeds are issued around it.
pub const COMMAND_NOW_MS: i64 = 1_764_600_000_000;

/// MQTT command messages as received, and command bodies signed with the right secret (so that the
/// body's parser and checks run, not only the HMAC). A command is never accepted twice.
pub fn mqtt_command(data: &[u8]) {
    let [first, second] = fuzzing::verify_command_twice(data, COMMAND_NOW_MS);
    assert!(
        first.is_err() || second.is_err(),
        "a message was accepted twice"
    );
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let signed = fuzzing::signed_command_text(body);
    let [first, second] = fuzzing::verify_command_twice(signed.as_bytes(), COMMAND_NOW_MS);
    if let Ok(command) = first {
        assert_eq!(second.map(|_| ()), Err("replayed"));
        assert_eq!(command.door_id, fuzzing::COMMAND_DOOR);
        assert!((8..=64).contains(&command.nonce.len()));
        assert!(command.origin.chars().count() <= 64);
        assert!((command.issued_at_ms - COMMAND_NOW_MS).abs() <= 30_000);
    }
}

/// The embedder the gallery seeds are made for.
pub fn bundle_embedder() -> EmbedderId {
    EmbedderId {
        name: "fuzz".into(),
        sha256: "00".into(),
        dim: 4,
    }
}

/// Gallery exports as a door receives them: as they are (signed or not), with and without a building
/// key, and the same bytes signed with the building key, so that the bundle's parser runs behind a
/// valid signature.
pub fn gallery_bundle(data: &[u8]) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key();
    let wanted = bundle_embedder();
    let origin = Path::new("fuzz");
    let now = chrono::DateTime::from_timestamp(1_764_600_000, 0).expect("a valid time");
    let _ = gallery_bundle::open(data, None, &wanted, origin);
    let _ = gallery_bundle::open(data, Some(&public), &wanted, origin);
    let signed = gallery_bundle::sign(data, &key);
    if let Ok(opened) = gallery_bundle::open(&signed, Some(&public), &wanted, origin) {
        assert!(opened.signed);
        assert_eq!(opened.gallery.embedder(), &wanted);
        assert_eq!(opened.gallery.sequence(), opened.sequence);
        let _ = opened.check_validity(now);
        let again = Gallery::parse(&opened.gallery.to_json(), origin, &wanted)
            .expect("a loaded gallery saves as one that loads");
        assert_eq!(again.people(), opened.gallery.people());
        let _ = gallery_bundle::age_s(&opened.gallery, now);
    }
}

fn split_first_line(data: &[u8]) -> (&str, &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => {
            let first = std::str::from_utf8(&data[..at]).unwrap_or("");
            (first.trim_end_matches('\r'), &data[at + 1..])
        }
        None => ("", data),
    }
}
