//! JPEG frames decoded (reduced) and thumbnails encoded in Rust instead of through OpenCV's
//! imgcodecs: linking imgcodecs loads its whole codec stack (GDAL, GDCM, OpenEXR, Poppler and about
//! 110 more libraries) into the daemon, 40 MB of resident memory for two image formats
//! (docs/performance.md, "Lever: memory"). The pixels match OpenCV's `IMREAD_COLOR` within rounding and
//! come close to its `IMREAD_REDUCED_COLOR_*` (a door frame at half size: a mean of 0.3 levels apart),
//! EXIF orientation included; this module's tests compare them.

use opencv::core::{self, Mat, Scalar, Size, Vec3b, Vec4b, CV_8UC3};
use opencv::imgproc;
use opencv::prelude::*;
use zune_jpeg::zune_core::colorspace::ColorSpace;

/// Decodes a JPEG whose header was already checked to 8-bit BGR, each side divided by `reduction`
/// (1, 2, 4 or 8, rounded up, as libjpeg's scaled decoding does), turned upright as its EXIF
/// orientation says. `None` when the data is corrupt or of a kind OpenCV does not decode either
/// (12-bit samples).
///
/// Two decoders, by the size the image is decoded at. At 1 and 2 (the tablet's 1280x720 frames)
/// `zune-jpeg` decodes the whole image and a 2x2 average halves it: about half the CPU of
/// `jpeg-decoder`'s scaled decode, which spreads every frame over three threads of its own
/// (docs/performance.md, "Lever: JPEG decoding"). At 4 and 8 (photos of 2560 px and more) the whole
/// image would hold 4 to 16 times the pixels, so `jpeg-decoder` decodes those reduced by DCT scaling,
/// and CMYK photos, whose samples `cmyk_to_bgr` converts as OpenCV does.
pub(crate) fn decode_bgr(bytes: &[u8], reduction: u32) -> Option<Mat> {
    let (bgr, exif) = match reduction {
        1 | 2 => {
            let mut decoder = zune_jpeg::JpegDecoder::new(bytes);
            decoder.decode_headers().ok()?;
            if stores_ink(&decoder)? {
                decode_scaled(bytes, reduction)?
            } else {
                decode_whole(decoder, reduction)?
            }
        }
        _ => decode_scaled(bytes, reduction)?,
    };
    let orientation = exif.as_deref().and_then(exif_orientation).unwrap_or(1);
    upright(bgr, orientation).ok()
}

/// Whether the JPEG, its headers decoded, stores ink (CMYK or YCCK, from print work) rather than
/// light.
fn stores_ink(decoder: &zune_jpeg::JpegDecoder<&[u8]>) -> Option<bool> {
    let colour = decoder.get_input_colorspace()?;
    Some(matches!(colour, ColorSpace::CMYK | ColorSpace::YCCK))
}

/// The image decoded by `zune-jpeg` at full size, then halved by 2x2 averages when `reduction` is 2
/// (the box of pixels libjpeg's half-size decode averages); with its EXIF data. The headers are
/// already decoded, and are not parsed again.
fn decode_whole(
    mut decoder: zune_jpeg::JpegDecoder<&[u8]>,
    reduction: u32,
) -> Option<(Mat, Option<Vec<u8>>)> {
    let pixels = decoder.decode().ok()?;
    let info = decoder.info()?;
    let (rows, cols) = (i32::from(info.height), i32::from(info.width));
    let (decoded, code) = match decoder.get_output_colorspace()? {
        ColorSpace::RGB => (
            Mat::new_rows_cols_with_bytes::<Vec3b>(rows, cols, &pixels).ok()?,
            imgproc::COLOR_RGB2BGR,
        ),
        ColorSpace::Luma => (
            Mat::new_rows_cols_with_bytes::<u8>(rows, cols, &pixels).ok()?,
            imgproc::COLOR_GRAY2BGR,
        ),
        _ => return None,
    };
    // Halved before the conversion to BGR, which then touches a quarter of the pixels.
    let mut bgr = Mat::default();
    if reduction == 2 {
        let half = Size::new((cols + 1) / 2, (rows + 1) / 2);
        let mut halved = Mat::default();
        if cols % 2 == 0 && rows % 2 == 0 {
            imgproc::resize(&decoded, &mut halved, half, 0.0, 0.0, imgproc::INTER_AREA).ok()?;
        } else {
            // An odd side's last pixel is averaged with its copy, as libjpeg averages it with the
            // encoder's edge padding.
            let mut even = Mat::default();
            core::copy_make_border(
                &decoded,
                &mut even,
                0,
                rows % 2,
                0,
                cols % 2,
                core::BORDER_REPLICATE,
                Scalar::default(),
            )
            .ok()?;
            imgproc::resize(&even, &mut halved, half, 0.0, 0.0, imgproc::INTER_AREA).ok()?;
        }
        imgproc::cvt_color_def(&halved, &mut bgr, code).ok()?;
    } else {
        imgproc::cvt_color_def(&decoded, &mut bgr, code).ok()?;
    }
    Some((bgr, decoder.exif().cloned()))
}

/// The image decoded by `jpeg-decoder`, reduced by DCT scaling when `reduction` is above 1; with its
/// EXIF data.
fn decode_scaled(bytes: &[u8], reduction: u32) -> Option<(Mat, Option<Vec<u8>>)> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    if reduction > 1 {
        let factor = u16::try_from(reduction).ok()?;
        decoder
            .scale(info.width.div_ceil(factor), info.height.div_ceil(factor))
            .ok()?;
    }
    let pixels = decoder.decode().ok()?;
    let info = decoder.info()?;
    let (rows, cols) = (i32::from(info.height), i32::from(info.width));
    let bgr = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            converted::<Vec3b>(&pixels, rows, cols, imgproc::COLOR_RGB2BGR)?
        }
        jpeg_decoder::PixelFormat::L8 => {
            converted::<u8>(&pixels, rows, cols, imgproc::COLOR_GRAY2BGR)?
        }
        jpeg_decoder::PixelFormat::CMYK32 => cmyk_to_bgr(&pixels, rows, cols)?,
        jpeg_decoder::PixelFormat::L16 => return None,
    };
    Some((bgr, decoder.exif_data().map(<[u8]>::to_vec)))
}

/// The decoder's samples (`T` a pixel) converted to BGR by OpenCV's `code`, as `frame::png` does.
fn converted<T: DataType>(pixels: &[u8], rows: i32, cols: i32, code: i32) -> Option<Mat> {
    let decoded = Mat::new_rows_cols_with_bytes::<T>(rows, cols, pixels).ok()?;
    let mut bgr = Mat::default();
    imgproc::cvt_color_def(&decoded, &mut bgr, code).ok()?;
    Some(bgr)
}

/// CMYK samples (as `jpeg-decoder` hands them out: 0 is no ink) to BGR the way OpenCV's JPEG decoder
/// converts the same file (it reads Adobe's inverted samples, 255 for no ink).
fn cmyk_to_bgr(pixels: &[u8], rows: i32, cols: i32) -> Option<Mat> {
    let cmyk = Mat::new_rows_cols_with_bytes::<Vec4b>(rows, cols, pixels).ok()?;
    let mut bgr = Mat::new_rows_cols_with_default(rows, cols, CV_8UC3, 0.0.into()).ok()?;
    let out = bgr.data_typed_mut::<Vec3b>().ok()?;
    for (to, from) in out.iter_mut().zip(cmyk.data_typed::<Vec4b>().ok()?) {
        let k = 255 - u32::from(from[3]);
        let ink = |v: u8| (k - ((u32::from(v) * k) >> 8)) as u8;
        *to = Vec3b::from([ink(from[2]), ink(from[1]), ink(from[0])]);
    }
    Some(bgr)
}

/// The orientation tag (0x0112) of IFD0 in EXIF data that starts at its TIFF header.
fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let big_endian = match tiff.get(..4)? {
        b"MM\0*" => true,
        b"II*\0" => false,
        _ => return None,
    };
    // The unsigned number of `len` bytes at `at`, in the data's byte order.
    let number = |at: usize, len: usize| -> Option<u32> {
        let bytes = tiff.get(at..at.checked_add(len)?)?;
        let push = |n: u32, byte: &u8| (n << 8) | u32::from(*byte);
        Some(if big_endian {
            bytes.iter().fold(0, push)
        } else {
            bytes.iter().rev().fold(0, push)
        })
    };
    const ORIENTATION: u32 = 0x0112;
    const SHORT: u32 = 3;
    let ifd = usize::try_from(number(4, 4)?).ok()?;
    let entries = usize::try_from(number(ifd, 2)?).ok()?;
    (0..entries)
        .map(|entry| ifd + 2 + 12 * entry)
        .find(|&entry| number(entry, 2) == Some(ORIENTATION))
        .filter(|&entry| number(entry + 2, 2) == Some(SHORT))
        .and_then(|entry| number(entry + 8, 2))
        .and_then(|orientation| u16::try_from(orientation).ok())
        .filter(|orientation| (1..=8).contains(orientation))
}

/// Turns an image upright for its EXIF orientation, with the same flips and transpositions as
/// OpenCV's `imdecode`.
fn upright(image: Mat, orientation: u16) -> opencv::Result<Mat> {
    let transposed = |image: &Mat| -> opencv::Result<Mat> {
        let mut out = Mat::default();
        core::transpose(image, &mut out)?;
        Ok(out)
    };
    let flipped = |image: &Mat, code: i32| -> opencv::Result<Mat> {
        let mut out = Mat::default();
        core::flip(image, &mut out, code)?;
        Ok(out)
    };
    match orientation {
        2 => flipped(&image, 1),
        3 => flipped(&image, -1),
        4 => flipped(&image, 0),
        5 => transposed(&image),
        6 => flipped(&transposed(&image)?, 1),
        7 => flipped(&transposed(&image)?, -1),
        8 => flipped(&transposed(&image)?, 0),
        _ => Ok(image),
    }
}

/// Why a thumbnail could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the image to encode is not 8-bit BGR with at most 65535 pixels a side")]
    Unsupported,
    #[error("OpenCV failed while preparing the image: {0}")]
    OpenCv(#[from] opencv::Error),
    #[error("the JPEG encoder failed: {0}")]
    Jpeg(#[from] jpeg_encoder::EncodingError),
}

/// Encodes an 8-bit BGR image (a thumbnail) as a baseline JPEG of `quality` (1–100).
pub fn encode_bgr(image: &impl MatTraitConst, quality: u8) -> Result<Vec<u8>, EncodeError> {
    if image.typ() != CV_8UC3 {
        return Err(EncodeError::Unsupported);
    }
    let width = u16::try_from(image.cols()).map_err(|_| EncodeError::Unsupported)?;
    let height = u16::try_from(image.rows()).map_err(|_| EncodeError::Unsupported)?;
    let continuous;
    let pixels = if image.is_continuous() {
        image.data_bytes()?
    } else {
        continuous = image.try_clone()?;
        continuous.data_bytes()?
    };
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, quality).encode(
        pixels,
        width,
        height,
        jpeg_encoder::ColorType::Bgr,
    )?;
    Ok(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{Scalar, Vector};
    use opencv::imgcodecs;

    /// A smooth picture, as a camera gives, rather than noise or hard colour edges JPEG cannot keep.
    fn picture(rows: i32, cols: i32) -> Mat {
        let mut image =
            Mat::new_rows_cols_with_default(rows, cols, CV_8UC3, Scalar::all(0.0)).unwrap();
        for (i, pixel) in image
            .data_typed_mut::<Vec3b>()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            let (y, x) = ((i as i32 / cols) as f32, (i as i32 % cols) as f32);
            *pixel = Vec3b::from([
                (x * 255.0 / cols as f32) as u8,
                (y * 255.0 / rows as f32) as u8,
                (128.0 + 90.0 * (x / 7.0).sin() * (y / 9.0).cos()) as u8,
            ]);
        }
        image
    }

    fn opencv_jpeg(image: &Mat) -> Vec<u8> {
        let mut bytes = Vector::<u8>::new();
        let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, 90]);
        imgcodecs::imencode(".jpg", image, &mut bytes, &params).unwrap();
        bytes.to_vec()
    }

    /// What OpenCV's libjpeg path gives: the pixels this decoder must reproduce within rounding.
    fn opencv_decode(bytes: &[u8], reduction: u32) -> Mat {
        let flags = match reduction {
            8 => imgcodecs::IMREAD_REDUCED_COLOR_8,
            4 => imgcodecs::IMREAD_REDUCED_COLOR_4,
            2 => imgcodecs::IMREAD_REDUCED_COLOR_2,
            _ => imgcodecs::IMREAD_COLOR,
        };
        imgcodecs::imdecode(&Mat::from_slice(bytes).unwrap(), flags).unwrap()
    }

    /// Mean and largest absolute difference of two images of one size and type.
    fn difference(ours: &Mat, theirs: &Mat, what: &str) -> (f64, u8) {
        assert_eq!(ours.size().unwrap(), theirs.size().unwrap(), "{what}: size");
        assert_eq!(ours.typ(), theirs.typ(), "{what}: type");
        let (a, b) = (ours.data_bytes().unwrap(), theirs.data_bytes().unwrap());
        let diffs = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y));
        let max = diffs.clone().max().unwrap_or(0);
        let mean = diffs.map(f64::from).sum::<f64>() / a.len() as f64;
        (mean, max)
    }

    /// At full size `zune-jpeg` and libjpeg differ by IDCT and upsampling rounding only (on this
    /// picture a mean of 0.4, a few pixels 9 apart). Halved, the 2x2 averages differ from libjpeg's
    /// half-size IDCT by a mean of 0.7. Reduced further, libjpeg's scaled IDCT and chroma handling
    /// differ more from `jpeg-decoder`'s, the more so the smaller the image: this picture's colour
    /// changes every few pixels, the hard case. A swapped channel or a wrong turn differs by a mean
    /// of 50 and more.
    fn assert_close(ours: &Mat, theirs: &Mat, reduction: u32, what: &str) {
        let (mean, max) = difference(ours, theirs, what);
        let (mean_limit, max_limit) = match reduction {
            1 => (0.5, 10),
            2 => (1.0, 8),
            4 => (5.0, 32),
            _ => (12.0, 64),
        };
        assert!(
            mean < mean_limit && max <= max_limit,
            "{what}: mean difference {mean:.2}, largest {max} from OpenCV's pixels"
        );
    }

    #[test]
    fn jpeg_frames_decode_to_opencvs_pixels_at_every_reduction() {
        for (rows, cols) in [(720, 1280), (97, 131), (1, 1)] {
            let bytes = opencv_jpeg(&picture(rows, cols));
            for reduction in [1, 2, 4, 8] {
                let what = format!("{cols}x{rows} reduced by {reduction}");
                let ours = decode_bgr(&bytes, reduction).expect(&what);
                assert_close(&ours, &opencv_decode(&bytes, reduction), reduction, &what);
            }
        }
    }

    #[test]
    fn grey_jpegs_come_out_as_bgr_like_opencvs() {
        let mut grey = Mat::default();
        imgproc::cvt_color_def(&picture(48, 64), &mut grey, imgproc::COLOR_BGR2GRAY).unwrap();
        let bytes = opencv_jpeg(&grey);
        let ours = decode_bgr(&bytes, 1).unwrap();
        assert_close(&ours, &opencv_decode(&bytes, 1), 1, "grey");
    }

    #[test]
    fn cmyk_jpegs_come_out_as_bgr_like_opencvs() {
        let (width, height) = (40u16, 24u16);
        let cmyk: Vec<u8> = (0..u32::from(width) * u32::from(height))
            .flat_map(|i| {
                let v = (i * 7 % 256) as u8;
                [v, 255 - v, v / 2, 64 + v / 4]
            })
            .collect();
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 95)
            .encode(&cmyk, width, height, jpeg_encoder::ColorType::Cmyk)
            .unwrap();
        let ours = decode_bgr(&bytes, 1).unwrap();
        assert_close(&ours, &opencv_decode(&bytes, 1), 1, "CMYK");
    }

    /// `bytes` with an APP1 EXIF segment right after SOI whose IFD0 holds only `orientation`.
    fn with_orientation(bytes: &[u8], orientation: u16, big_endian: bool) -> Vec<u8> {
        let u16b = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u32b = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut tiff = Vec::new();
        tiff.extend_from_slice(if big_endian { b"MM\0*" } else { b"II*\0" });
        tiff.extend_from_slice(&u32b(8));
        tiff.extend_from_slice(&u16b(1));
        tiff.extend_from_slice(&u16b(0x0112));
        tiff.extend_from_slice(&u16b(3));
        tiff.extend_from_slice(&u32b(1));
        tiff.extend_from_slice(&u16b(orientation));
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&u32b(0));
        let mut segment = b"Exif\0\0".to_vec();
        segment.extend_from_slice(&tiff);
        let mut out = bytes[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((segment.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&segment);
        out.extend_from_slice(&bytes[2..]);
        out
    }

    #[test]
    fn exif_orientation_turns_photos_upright_as_opencv_does() {
        // A phone's portrait photo is stored sideways with orientation 6, read in either byte order.
        let plain = opencv_jpeg(&picture(30, 52));
        for orientation in 1..=8 {
            for big_endian in [false, true] {
                let bytes = with_orientation(&plain, orientation, big_endian);
                let what = format!("orientation {orientation}, big endian {big_endian}");
                for reduction in [1, 2, 4] {
                    let ours = decode_bgr(&bytes, reduction).expect(&what);
                    assert_close(&ours, &opencv_decode(&bytes, reduction), reduction, &what);
                }
            }
        }
    }

    #[test]
    fn exif_without_a_usable_orientation_leaves_the_image_as_stored() {
        let cases: [(&str, &[u8]); 5] = [
            ("empty", b""),
            ("not TIFF", b"JFIF\0\0\0\0\0\0"),
            ("IFD beyond the data", b"II*\0\xff\0\0\0"),
            (
                "orientation 9",
                b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x09\0\0\0\0\0\0\0",
            ),
            (
                "orientation as LONG",
                b"II*\0\x08\0\0\0\x01\0\x12\x01\x04\0\x01\0\0\0\x06\0\0\0\0\0\0\0",
            ),
        ];
        for (what, tiff) in cases {
            assert_eq!(exif_orientation(tiff), None, "{what}");
        }
        let six = b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0";
        assert_eq!(exif_orientation(six), Some(6));
    }

    #[test]
    fn damaged_jpeg_data_is_refused_not_decoded_to_garbage() {
        let bytes = opencv_jpeg(&picture(64, 64));
        for reduction in [1, 2, 4] {
            assert!(decode_bgr(&bytes[..bytes.len() / 3], reduction).is_none());
        }
        let mut twelve_bit = bytes.clone();
        let sof = twelve_bit
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .unwrap();
        twelve_bit[sof + 4] = 12;
        assert!(decode_bgr(&twelve_bit, 1).is_none());
    }

    #[test]
    fn thumbnails_encode_to_jpegs_opencv_reads_back() {
        let image = picture(40, 56);
        let bytes = encode_bgr(&image, 85).unwrap();
        let (mean, _) = difference(&opencv_decode(&bytes, 1), &image, "thumbnail");
        assert!(
            mean < 4.0,
            "the thumbnail differs from the image by a mean of {mean:.2}"
        );
        let roi = Mat::roi(&image, opencv::core::Rect::new(3, 5, 20, 10)).unwrap();
        let from_roi = encode_bgr(&roi, 85).unwrap();
        assert_eq!(opencv_decode(&from_roi, 1).cols(), 20);
        let mut grey = Mat::default();
        imgproc::cvt_color_def(&image, &mut grey, imgproc::COLOR_BGR2GRAY).unwrap();
        assert!(matches!(
            encode_bgr(&grey, 85),
            Err(EncodeError::Unsupported)
        ));
    }
}
