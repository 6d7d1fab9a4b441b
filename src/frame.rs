//! First stage of the data path: request body → base64 → image header check → bounded decode
//! (JPEG by `zune-jpeg` whole and halved, or by `jpeg-decoder` reduced by DCT scaling for large
//! photos; PNG by the `png` crate).

use base64::Engine;
use opencv::core::{Mat, MatTraitConst};

use crate::config::FrameConfig;

pub mod jpeg;
mod png;

/// Why a frame was refused. Every variant is the sender's fault and maps to a 4xx answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the body is empty: send the base64 of a JPEG or PNG frame")]
    Empty,
    #[error("the body is not valid base64 ({0}): send the JPEG bytes base64-encoded, standard or URL-safe alphabet")]
    Base64(String),
    #[error("the image is {actual} bytes, more than the {limit} allowed: send a smaller frame")]
    TooLarge { actual: usize, limit: usize },
    #[error("the data is not a JPEG or PNG image (it starts with {0}): only JPEG and PNG frames are accepted")]
    UnknownFormat(String),
    #[error("the {format} header is damaged or incomplete: {reason}")]
    BadHeader {
        format: &'static str,
        reason: String,
    },
    #[error("the {format} is truncated: it has no end marker, so the upload was cut short")]
    Truncated { format: &'static str },
    #[error(
        "the image claims {width}x{height} pixels, beyond the {limit} pixels allowed per side"
    )]
    AbsurdDimensions { width: u32, height: u32, limit: u32 },
    #[error("the {format} is {width}x{height}; decoding it would take {pixels} pixels, more than the {limit} allowed: send a smaller frame (or a baseline JPEG, which decodes reduced)")]
    TooManyPixels {
        format: &'static str,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("the {format} could not be decoded: the image data is corrupt")]
    Undecodable { format: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
        }
    }
}

/// What the header says, read before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// A progressive JPEG: libjpeg keeps the whole image's coefficients in memory however much the
    /// output is reduced, so its full size counts against the pixel limit.
    pub progressive: bool,
}

/// A decoded frame: 8-bit BGR pixels, with the size the sender's image had.
pub struct Frame {
    pub image: Mat,
    pub header: ImageHeader,
    /// 1, 2, 4 or 8: how much the JPEG decoder reduced the image.
    pub reduction: u32,
}

/// Refuses image bytes that are empty or larger than `max_image_bytes`, before anything reads them.
pub(crate) fn check_image_size(bytes: &[u8], max_image_bytes: usize) -> Result<(), FrameError> {
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    if bytes.len() > max_image_bytes {
        return Err(FrameError::TooLarge {
            actual: bytes.len(),
            limit: max_image_bytes,
        });
    }
    Ok(())
}

/// Decodes base64 in the forms tablets send: standard or URL-safe alphabet, padded or not,
/// with an optional `data:image/...;base64,` prefix and line breaks or spaces anywhere.
pub fn decode_base64(body: &[u8], max_image_bytes: usize) -> Result<Vec<u8>, FrameError> {
    let mut text = trim_ascii(body);
    if text.starts_with(b"data:") {
        let comma = text
            .iter()
            .position(|&b| b == b',')
            .ok_or_else(|| FrameError::Base64("a data: URL without a comma".into()))?;
        if !text[..comma].ends_with(b";base64") {
            return Err(FrameError::Base64("a data: URL that is not ;base64".into()));
        }
        text = &text[comma + 1..];
    }
    let max_encoded = max_image_bytes.saturating_add(2) / 3 * 4 + 4;
    let mut compact = Vec::with_capacity(text.len().min(max_encoded + 4));
    for &byte in text {
        match byte {
            b'\r' | b'\n' | b' ' | b'\t' => {}
            b'-' => compact.push(b'+'),
            b'_' => compact.push(b'/'),
            b'=' => {}
            other => compact.push(other),
        }
        if compact.len() > max_encoded {
            return Err(FrameError::TooLarge {
                actual: text.len() / 4 * 3,
                limit: max_image_bytes,
            });
        }
    }
    if compact.is_empty() {
        return Err(FrameError::Empty);
    }
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&compact)
        .map_err(|err| FrameError::Base64(err.to_string()))?;
    check_image_size(&bytes, max_image_bytes)?;
    Ok(bytes)
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Reads format and dimensions from a JPEG or PNG header, and checks that the file is complete.
pub fn read_header(bytes: &[u8]) -> Result<ImageHeader, FrameError> {
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        read_jpeg_header(bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        read_png_header(bytes)
    } else {
        let shown: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Err(FrameError::UnknownFormat(shown.join(" ")))
    }
}

fn read_jpeg_header(bytes: &[u8]) -> Result<ImageHeader, FrameError> {
    let bad = |reason: &str| FrameError::BadHeader {
        format: "JPEG",
        reason: reason.to_string(),
    };
    let mut pos = 2;
    let mut size = None;
    let mut progressive = false;
    let mut scan_start = None;
    while pos + 4 <= bytes.len() {
        if bytes[pos] != 0xFF {
            return Err(bad("a segment does not start with a marker"));
        }
        let marker = bytes[pos + 1];
        if marker == 0xFF {
            pos += 1;
            continue;
        }
        let length = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
        if length < 2 {
            return Err(bad("a segment length is below 2"));
        }
        let is_frame_header =
            matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_frame_header {
            if pos + 9 > bytes.len() || length < 7 {
                return Err(bad("the frame header is cut short"));
            }
            let height = u32::from(u16::from_be_bytes([bytes[pos + 5], bytes[pos + 6]]));
            let width = u32::from(u16::from_be_bytes([bytes[pos + 7], bytes[pos + 8]]));
            size = Some((width, height));
            progressive = matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE);
        }
        if marker == 0xDA {
            scan_start = Some(pos + 2 + length);
            break;
        }
        pos += 2 + length;
    }
    let (width, height) = size.ok_or_else(|| bad("no frame header (SOF) before the image data"))?;
    let scan_start = scan_start.ok_or(FrameError::Truncated { format: "JPEG" })?;
    if width == 0 || height == 0 {
        return Err(bad("a width or height of zero"));
    }
    // Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so an
    // end-of-image marker after the scan start means the file arrived whole.
    let tail_from = scan_start.max(bytes.len().saturating_sub(4096));
    let complete = bytes
        .get(tail_from..)
        .is_some_and(|tail| tail.windows(2).any(|w| w == [0xFF, 0xD9]));
    if !complete {
        return Err(FrameError::Truncated { format: "JPEG" });
    }
    Ok(ImageHeader {
        format: ImageFormat::Jpeg,
        width,
        height,
        progressive,
    })
}

fn read_png_header(bytes: &[u8]) -> Result<ImageHeader, FrameError> {
    if bytes.len() < 33 || &bytes[12..16] != b"IHDR" {
        return Err(FrameError::BadHeader {
            format: "PNG",
            reason: "no IHDR chunk".into(),
        });
    }
    let width = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let height = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    if width == 0 || height == 0 {
        return Err(FrameError::BadHeader {
            format: "PNG",
            reason: "a width or height of zero".into(),
        });
    }
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    if !tail.windows(4).any(|w| w == b"IEND") {
        return Err(FrameError::Truncated { format: "PNG" });
    }
    Ok(ImageHeader {
        format: ImageFormat::Png,
        width,
        height,
        progressive: false,
    })
}

/// The file extension a stored copy of these bytes gets: `jpg`, `png`, or `bin` for anything else.
pub(crate) fn file_extension(bytes: &[u8]) -> &'static str {
    read_header(bytes).map_or("bin", |h| h.format.extension())
}

/// Chooses the JPEG reduction (1, 2, 4, 8): the largest that keeps the longer side at least
/// `target_side`. PNG decoders cannot reduce, so PNGs always get 1.
pub(crate) fn choose_reduction(header: &ImageHeader, target_side: u32) -> u32 {
    if header.format != ImageFormat::Jpeg {
        return 1;
    }
    let longer = header.width.max(header.height);
    [8, 4, 2]
        .into_iter()
        .find(|&factor| longer / factor >= target_side)
        .unwrap_or(1)
}

/// The pixels a decode at `reduction` holds at once: the whole image for a progressive JPEG (its
/// coefficients are gathered before any pixel comes out) and for reductions 1 and 2 (decoded whole,
/// then halved: `frame::jpeg`), the reduced image otherwise.
fn held_pixels(header: &ImageHeader, reduction: u32) -> u64 {
    let held = if header.progressive || reduction <= 2 {
        1
    } else {
        reduction
    };
    u64::from(header.width.div_ceil(held)) * u64::from(header.height.div_ceil(held))
}

/// The smallest JPEG reduction, at most `planned`, whose decode holds at most `max_pixels`.
fn finest_reduction(header: &ImageHeader, planned: u32, max_pixels: u64) -> u32 {
    [1, 2, 4, 8]
        .into_iter()
        .filter(|&factor| factor <= planned)
        .find(|&factor| held_pixels(header, factor) <= max_pixels)
        .unwrap_or(planned)
}

/// Checks the header against the limits and returns the reduction to decode with.
pub fn plan_decode(header: &ImageHeader, limits: &FrameConfig) -> Result<u32, FrameError> {
    if header.width > limits.max_dimension || header.height > limits.max_dimension {
        return Err(FrameError::AbsurdDimensions {
            width: header.width,
            height: header.height,
            limit: limits.max_dimension,
        });
    }
    let reduction = choose_reduction(header, limits.decode_target_side);
    let pixels = held_pixels(header, reduction);
    if pixels > limits.max_decoded_pixels {
        return Err(FrameError::TooManyPixels {
            format: header.format.name(),
            width: header.width,
            height: header.height,
            pixels,
            limit: limits.max_decoded_pixels,
        });
    }
    Ok(reduction)
}

/// Image bytes whose header was read and checked against the limits, once: every later stage
/// (decode, snapshot file name) takes this instead of reading the header again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedImage {
    bytes: Vec<u8>,
    header: ImageHeader,
    /// 1, 2, 4 or 8: the JPEG reduction the decode will use.
    reduction: u32,
    /// The smallest reduction whose image still fits the pixel limit: what a finer decode may use.
    finest: u32,
}

impl CheckedImage {
    /// Reads the header and plans the decode; refuses, before any pixel is decoded, a file or an
    /// image larger than the limits allow. A refused image's bytes come back with the error.
    pub fn check(bytes: Vec<u8>, limits: &FrameConfig) -> Result<CheckedImage, RefusedImage> {
        let plan = (|| {
            check_image_size(&bytes, limits.max_image_bytes)?;
            let header = read_header(&bytes)?;
            Ok((header, plan_decode(&header, limits)?))
        })();
        match plan {
            Ok((header, reduction)) => Ok(CheckedImage {
                bytes,
                header,
                reduction,
                finest: finest_reduction(&header, reduction, limits.max_decoded_pixels),
            }),
            Err(error) => Err(RefusedImage { error, bytes }),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn header(&self) -> ImageHeader {
        self.header
    }

    /// Decodes to BGR pixels with the planned reduction.
    pub fn decode(&self) -> Result<Frame, FrameError> {
        self.decode_reduced(self.reduction)
    }

    /// The pixels of a JPEG that was decoded reduced, decoded again as large as the pixel limit
    /// allows, for a face too small to align well from the reduced image. `None` when no finer decode
    /// is possible (or it fails, in which case the reduced image is all there is).
    pub fn decode_finer(&self) -> Option<Mat> {
        (self.finest < self.reduction)
            .then(|| self.decode_reduced(self.finest).ok())
            .flatten()
            .map(|frame| frame.image)
    }

    fn decode_reduced(&self, reduction: u32) -> Result<Frame, FrameError> {
        let header = self.header;
        let undecodable = || FrameError::Undecodable {
            format: header.format.name(),
        };
        let image = match header.format {
            ImageFormat::Png => png::decode_bgr(&self.bytes).ok_or_else(undecodable)?,
            ImageFormat::Jpeg => {
                jpeg::decode_bgr(&self.bytes, reduction).ok_or_else(undecodable)?
            }
        };
        if image.empty() || image.channels() != 3 {
            return Err(undecodable());
        }
        Ok(Frame {
            image,
            header,
            reduction,
        })
    }
}

/// An image refused by [`CheckedImage::check`], with its bytes (to keep as a failure snapshot).
#[derive(Debug)]
pub struct RefusedImage {
    pub error: FrameError,
    pub bytes: Vec<u8>,
}

/// Checks and decodes in one call, for callers that hold bytes only (enrolment, tools).
pub fn decode_image(bytes: &[u8], limits: &FrameConfig) -> Result<Frame, FrameError> {
    CheckedImage::check(bytes.to_vec(), limits)
        .map_err(|refused| refused.error)?
        .decode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FrameConfig {
        FrameConfig::default()
    }

    fn jpeg_with_size(width: u16, height: u16) -> Vec<u8> {
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
        bytes.extend_from_slice(&height.to_be_bytes());
        bytes.extend_from_slice(&width.to_be_bytes());
        bytes.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        bytes.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0x12, 0x34, 0xFF, 0xD9]);
        bytes
    }

    #[test]
    fn base64_variants_tablets_send_all_decode() {
        let expected = b"\xff\xd8\xff\xe0 hello?>".to_vec();
        let cases = [
            "/9j/4CBoZWxsbz8+",
            "_9j_4CBoZWxsbz8-",
            "/9j/4CBo\r\nZWxs\nbz8+\n",
            "data:image/jpeg;base64,/9j/4CBoZWxsbz8+",
            "  /9j/4CBoZWxsbz8+  ",
        ];
        for case in cases {
            assert_eq!(
                decode_base64(case.as_bytes(), 1000).unwrap(),
                expected,
                "{case}"
            );
        }
        assert_eq!(decode_base64(b"aGk=", 10).unwrap(), b"hi");
        assert_eq!(decode_base64(b"aGk", 10).unwrap(), b"hi");
    }

    #[test]
    fn bad_base64_is_refused_with_the_reason() {
        let cases: [(&[u8], &str); 4] = [
            (b"", "empty"),
            (b"   \n", "empty"),
            (b"not base64 at all!", "base64"),
            (b"data:image/jpeg,abcd", "base64"),
        ];
        for (body, word) in cases {
            let err = decode_base64(body, 1000).unwrap_err().to_string();
            assert!(err.contains(word), "{body:?}: {err}");
        }
    }

    #[test]
    fn oversized_base64_is_refused_before_decoding_all_of_it() {
        let body = "QUFB".repeat(1000);
        assert!(matches!(
            decode_base64(body.as_bytes(), 100),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn headers_are_read_and_damage_is_named() {
        let header = read_header(&jpeg_with_size(7680, 4320)).unwrap();
        assert_eq!((header.width, header.height), (7680, 4320));
        let mut cut = jpeg_with_size(640, 480);
        cut.truncate(cut.len() - 2);
        assert_eq!(
            read_header(&cut),
            Err(FrameError::Truncated { format: "JPEG" })
        );
        assert!(matches!(
            read_header(b"GIF89a...."),
            Err(FrameError::UnknownFormat(_))
        ));
        assert!(matches!(
            read_header(&[0xFF, 0xD8, 0xFF]),
            Err(FrameError::BadHeader { .. })
        ));
        assert!(matches!(
            read_header(&jpeg_with_size(0, 480)),
            Err(FrameError::BadHeader { .. })
        ));
        assert_eq!(read_header(&[]), Err(FrameError::Empty));
    }

    #[test]
    fn reduction_keeps_the_longer_side_above_the_target() {
        let cases = [
            (7680, 4320, 8),
            (3840, 2160, 4),
            (1920, 1080, 2),
            (1280, 720, 1),
            (640, 480, 1),
        ];
        for (width, height, factor) in cases {
            let header = ImageHeader {
                format: ImageFormat::Jpeg,
                width,
                height,
                progressive: false,
            };
            assert_eq!(choose_reduction(&header, 960), factor, "{width}x{height}");
        }
        let png = ImageHeader {
            format: ImageFormat::Png,
            width: 7680,
            height: 4320,
            progressive: false,
        };
        assert_eq!(choose_reduction(&png, 960), 1);
    }

    #[test]
    fn absurd_dimensions_are_refused_before_decoding() {
        let huge = read_header(&jpeg_with_size(65_000, 65_000)).unwrap();
        assert!(matches!(
            plan_decode(&huge, &limits()),
            Err(FrameError::AbsurdDimensions { .. })
        ));
        let big_png = ImageHeader {
            format: ImageFormat::Png,
            width: 7680,
            height: 4320,
            progressive: false,
        };
        assert!(matches!(
            plan_decode(&big_png, &limits()),
            Err(FrameError::TooManyPixels { .. })
        ));
    }

    #[test]
    fn a_large_progressive_jpeg_counts_at_full_size() {
        let baseline = ImageHeader {
            format: ImageFormat::Jpeg,
            width: 7680,
            height: 4320,
            progressive: false,
        };
        assert_eq!(plan_decode(&baseline, &limits()), Ok(8));
        let progressive = ImageHeader {
            progressive: true,
            ..baseline
        };
        assert!(matches!(
            plan_decode(&progressive, &limits()),
            Err(FrameError::TooManyPixels { .. })
        ));
        let mut sof2 = jpeg_with_size(640, 480);
        sof2[3] = 0xC2;
        assert!(read_header(&sof2).unwrap().progressive);
    }

    #[test]
    fn a_finer_decode_stays_within_the_pixel_limit() {
        let header = |width, height| ImageHeader {
            format: ImageFormat::Jpeg,
            width,
            height,
            progressive: false,
        };
        let cases = [
            (1280, 720, 2, 1),
            // Halving decodes the whole image first: 33 MP, over the limit.
            (7680, 4320, 8, 4),
            (16_000, 9_000, 8, 4),
            (640, 480, 1, 1),
        ];
        for (width, height, planned, finest) in cases {
            assert_eq!(
                finest_reduction(&header(width, height), planned, 16_000_000),
                finest,
                "{width}x{height}"
            );
        }
    }

    #[test]
    fn a_header_only_jpeg_is_not_decodable() {
        let err = decode_image(&jpeg_with_size(64, 64), &limits())
            .err()
            .unwrap();
        assert_eq!(err, FrameError::Undecodable { format: "JPEG" });
    }
}
