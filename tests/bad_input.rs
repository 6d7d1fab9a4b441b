//! What a tablet (or an attacker) can send that is not a good frame: each gets a typed `FrameError`
//! before any large allocation, or is decoded within the limits; nothing panics. Built from real photos.

mod support;

use base64::Engine as _;
use opencv::core::{Mat, Size, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};

use facegate::frame::{self, FrameError, ImageFormat};
use facegate::recognition::{Recognition, RecognitionError};

use support::{decide_fresh, photo, Engine};

/// Deterministic noise (xorshift64), so every run forges the same bytes.
struct Noise(u64);

impl Noise {
    fn bytes(&mut self, count: usize) -> Vec<u8> {
        (0..count)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 24) as u8
            })
            .collect()
    }
}

/// Runs encoded bytes through the production path with nobody enrolled.
fn recognize(bytes: &[u8]) -> Result<Recognition, RecognitionError> {
    let engine = Engine::get();
    engine.try_recognize(&mut engine.recognizer(), &engine.empty_gallery(), bytes)
}

/// The frame error `recognize` gives; panics if the bytes were accepted or failed elsewhere.
fn frame_error(bytes: &[u8]) -> FrameError {
    match recognize(bytes) {
        Err(RecognitionError::Frame(err)) => err,
        Err(other) => panic!("expected a frame error, got {other}"),
        Ok(recognition) => panic!("expected a frame error, got {:?}", recognition.outcome),
    }
}

/// Offsets of a JPEG's segments before the scan: (marker, position of its 0xFF).
fn jpeg_segments(jpeg: &[u8]) -> Vec<(u8, usize)> {
    let mut segments = Vec::new();
    let mut pos = 2;
    while pos + 4 <= jpeg.len() {
        assert_eq!(jpeg[pos], 0xFF, "not a marker at {pos}");
        let marker = jpeg[pos + 1];
        segments.push((marker, pos));
        if marker == 0xDA {
            break;
        }
        pos += 2 + usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
    }
    segments
}

/// A real JPEG whose frame header (SOF) claims `width` x `height`.
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = photo("obama/obama.jpg");
    let (_, sof) = jpeg_segments(&jpeg)
        .into_iter()
        .find(|(marker, _)| matches!(marker, 0xC0..=0xC2))
        .expect("obama.jpg has a baseline or progressive frame header");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// A real PNG whose IHDR claims `width` x `height` (its CRC no longer matches; the size check comes first).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = photo("_edge/obama_32bit_rgba.png");
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    png
}

#[test]
fn a_body_that_is_not_base64_is_refused() {
    let limit = Engine::get().config.frame.max_image_bytes;
    for body in [
        &b"this is not base64!"[..],
        b"/9j/4AAQ*SkZJRg==",
        b"data:image/jpeg,/9j/4AAQ",
    ] {
        assert!(
            matches!(
                frame::decode_base64(body, limit),
                Err(FrameError::Base64(_))
            ),
            "{body:?}"
        );
    }
    let text = base64::engine::general_purpose::STANDARD.encode(b"hello, this is text");
    let bytes = frame::decode_base64(text.as_bytes(), limit).unwrap();
    assert!(matches!(frame_error(&bytes), FrameError::UnknownFormat(_)));
}

#[test]
fn an_empty_body_and_zero_bytes_are_refused() {
    let limit = Engine::get().config.frame.max_image_bytes;
    assert_eq!(frame::decode_base64(b"", limit), Err(FrameError::Empty));
    assert_eq!(
        frame::decode_base64(b" \r\n ", limit),
        Err(FrameError::Empty)
    );
    assert_eq!(frame_error(&[]), FrameError::Empty);
}

#[test]
fn a_photo_cut_in_half_is_truncated() {
    let jpeg = photo("obama/obama.jpg");
    assert_eq!(
        frame_error(&jpeg[..jpeg.len() / 2]),
        FrameError::Truncated { format: "JPEG" }
    );
    let png = photo("_edge/obama_32bit_rgba.png");
    assert_eq!(
        frame_error(&png[..png.len() / 2]),
        FrameError::Truncated { format: "PNG" }
    );
}

#[test]
fn forged_huge_dimensions_are_refused_before_decoding() {
    let limit = Engine::get().config.frame.max_dimension;
    assert_eq!(
        frame_error(&jpeg_claiming(65_000, 65_000)),
        FrameError::AbsurdDimensions {
            width: 65_000,
            height: 65_000,
            limit
        }
    );
    assert_eq!(
        frame_error(&png_claiming(100_000, 100_000)),
        FrameError::AbsurdDimensions {
            width: 100_000,
            height: 100_000,
            limit
        }
    );
    // A PNG cannot be decoded reduced, so an 8K one is refused for its pixel count.
    assert!(matches!(
        frame_error(&png_claiming(7680, 4320)),
        FrameError::TooManyPixels {
            format: "PNG",
            width: 7680,
            height: 4320,
            ..
        }
    ));
}

#[test]
fn a_forged_jpeg_size_within_the_limits_is_decoded_reduced_or_refused() {
    let limits = &Engine::get().config.frame;
    let forged = jpeg_claiming(16_000, 12_000);
    match frame::decode_image(&forged, limits) {
        Ok(decoded) => {
            assert_eq!(decoded.reduction, 8);
            assert!(decoded.image.cols() <= 2_000 && decoded.image.rows() <= 1_500);
        }
        Err(err) => assert_eq!(err, FrameError::Undecodable { format: "JPEG" }),
    }
    assert!(!matches!(
        recognize(&forged),
        Err(RecognitionError::Vision(_))
    ));
}

#[test]
fn an_oversized_image_is_refused() {
    let limit = Engine::get().config.frame.max_image_bytes;
    let mut padded = photo("obama/obama.jpg");
    padded.resize(limit + 1, 0);
    assert_eq!(
        frame_error(&padded),
        FrameError::TooLarge {
            actual: limit + 1,
            limit
        }
    );
    let body = base64::engine::general_purpose::STANDARD.encode(&padded);
    assert!(matches!(
        frame::decode_base64(body.as_bytes(), limit),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn random_bytes_are_refused() {
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let mut random = noise.bytes(4096);
    random[0] = 0x00;
    assert!(matches!(frame_error(&random), FrameError::UnknownFormat(_)));
    for signature in [&[0xFF, 0xD8, 0xFF][..], b"\x89PNG\r\n\x1a\n"] {
        let mut forged = signature.to_vec();
        forged.extend(noise.bytes(4096));
        assert!(
            matches!(
                frame_error(&forged),
                FrameError::BadHeader { .. } | FrameError::Truncated { .. }
            ),
            "{signature:?} + noise"
        );
    }
}

#[test]
fn a_jpeg_with_corrupted_scan_data_is_decoded_or_refused_never_a_panic() {
    let jpeg = photo("obama/obama.jpg");
    let (_, sos) = *jpeg_segments(&jpeg).last().unwrap();
    let scan_start = sos + 2 + usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
    let middle = scan_start + (jpeg.len() - scan_start) / 2;
    for seed in 1..=4u64 {
        let mut corrupt = jpeg.clone();
        let noise = Noise(seed.wrapping_mul(0x2545_F491_4F6C_DD1D)).bytes(4096);
        corrupt[middle..middle + noise.len()].copy_from_slice(&noise);
        match recognize(&corrupt) {
            Ok(recognition) => assert_eq!(recognition.header.format, ImageFormat::Jpeg),
            Err(RecognitionError::Frame(err)) => {
                assert_eq!(
                    err,
                    FrameError::Undecodable { format: "JPEG" },
                    "seed {seed}"
                )
            }
            Err(other) => panic!("seed {seed}: {other}"),
        }
    }
}

#[test]
fn a_png_with_damaged_image_data_is_decoded_or_refused_never_a_panic() {
    let mut png = photo("_edge/obama_32bit_rgba.png");
    let middle = png.len() / 2;
    png[middle..middle + 512].copy_from_slice(&Noise(7).bytes(512));
    match recognize(&png) {
        Ok(recognition) => assert_eq!(recognition.header.format, ImageFormat::Png),
        Err(RecognitionError::Frame(err)) => {
            assert_eq!(err, FrameError::Undecodable { format: "PNG" })
        }
        Err(other) => panic!("{other}"),
    }
}

/// obama/obama1.jpg (1480x832, 16:9) blown up to 7680x4320 and re-encoded.
fn eight_k_jpeg() -> Vec<u8> {
    let source = imgcodecs::imdecode(
        &Vector::<u8>::from_slice(&photo("obama/obama1.jpg")),
        imgcodecs::IMREAD_COLOR,
    )
    .unwrap();
    let mut big = Mat::default();
    imgproc::resize(
        &source,
        &mut big,
        Size::new(7680, 4320),
        0.0,
        0.0,
        imgproc::INTER_LINEAR,
    )
    .unwrap();
    let mut encoded = Vector::<u8>::new();
    let quality = Vector::<i32>::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, 85]);
    assert!(imgcodecs::imencode(".jpg", &big, &mut encoded, &quality).unwrap());
    encoded.to_vec()
}

#[test]
fn an_8k_jpeg_is_decoded_reduced_and_its_face_found() {
    let engine = Engine::get();
    let jpeg = eight_k_jpeg();
    assert!(jpeg.len() <= engine.config.frame.max_image_bytes);
    let decoded = frame::decode_image(&jpeg, &engine.config.frame).unwrap();
    assert_eq!((decoded.header.width, decoded.header.height), (7680, 4320));
    assert_eq!(decoded.reduction, 8);
    assert_eq!((decoded.image.cols(), decoded.image.rows()), (960, 540));

    let mut recognizer = engine.recognizer();
    let gallery = engine.gallery_of_first_photos(&mut recognizer, ["obama"]);
    let recognition = engine
        .try_recognize(&mut recognizer, &gallery, &jpeg)
        .unwrap();
    assert_eq!(recognition.faces, 1);
    assert_eq!(
        decide_fresh(&recognition.outcome).identity.as_deref(),
        Some("obama"),
        "{:?}",
        recognition.outcome
    );
}

#[test]
fn a_base64_frame_as_tablets_send_it_is_recognised() {
    let engine = Engine::get();
    let jpeg = photo("obama/obama2.jpg");
    let encoded = base64::engine::general_purpose::STANDARD.encode(&jpeg);
    let wrapped: Vec<String> = encoded
        .as_bytes()
        .chunks(76)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect();
    let body = format!("data:image/jpeg;base64,{}\r\n", wrapped.join("\r\n"));
    let bytes = frame::decode_base64(body.as_bytes(), engine.config.frame.max_image_bytes).unwrap();
    assert_eq!(bytes, jpeg);
    let mut recognizer = engine.recognizer();
    let gallery = engine.gallery_of_first_photos(&mut recognizer, ["obama"]);
    let recognition = engine
        .try_recognize(&mut recognizer, &gallery, &bytes)
        .unwrap();
    assert_eq!(
        decide_fresh(&recognition.outcome).identity.as_deref(),
        Some("obama")
    );
}
