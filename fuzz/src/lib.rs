//! What the fuzz targets exercise, as plain functions: the cargo-fuzz targets call them on nightly, and
//! tests/hostile_input.rs replays generated inputs and every file in fuzz/regressions/ through them on
//! stable, so a crash found here stays covered without nightly. A panic or an abort is a finding.

use std::path::Path;

use facegate::body::{parse_code_post, parse_frame_post};
use facegate::config::{Config, FrameConfig};
use facegate::frame;
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
