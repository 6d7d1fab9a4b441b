//! PNG frames decoded by the `png` crate instead of libpng through OpenCV: the tablet's 1280x720 PNGs
//! (zlib level 1) take about 40 % of libpng's CPU time, and come out as the same BGR pixels OpenCV's
//! `IMREAD_COLOR` gives (docs/performance.md, "PNG decoding"; this module's tests compare the pixels).

use opencv::core::{Mat, Scalar, Vec3b, Vec4b, CV_8UC3};
use opencv::imgproc;
use opencv::prelude::*;
use png::{BitDepth, ColorType, Transformations};

/// Decodes a PNG whose header was already checked to 8-bit BGR, as OpenCV's `imdecode` with
/// `IMREAD_COLOR` does: 16-bit samples keep their high byte, alpha and transparency are dropped (not
/// blended), grey is repeated in all three channels, palettes are expanded. `None` when the data is
/// corrupt.
pub(crate) fn decode_bgr(bytes: &[u8]) -> Option<Mat> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().ok()?;
    if reader.output_color_type() == (ColorType::Rgb, BitDepth::Eight) {
        return decode_rgb_in_place(&mut reader);
    }
    let mut pixels = vec![0; reader.output_buffer_size()?];
    let info = reader.next_frame(&mut pixels).ok()?;
    pixels.truncate(info.buffer_size());
    let (rows, cols) = (
        i32::try_from(info.height).ok()?,
        i32::try_from(info.width).ok()?,
    );
    let conversion = match info.color_type {
        ColorType::Rgb => imgproc::COLOR_RGB2BGR,
        ColorType::Rgba => imgproc::COLOR_RGBA2BGR,
        ColorType::Grayscale | ColorType::GrayscaleAlpha => imgproc::COLOR_GRAY2BGR,
        ColorType::Indexed => {
            log::debug!("the png crate left a PNG indexed despite EXPAND");
            return None;
        }
    };
    if info.color_type == ColorType::GrayscaleAlpha {
        // Keep the grey samples, drop the alpha ones.
        pixels = pixels.iter().step_by(2).copied().collect();
    }
    let decoded = match info.color_type {
        ColorType::Rgb => Mat::new_rows_cols_with_bytes::<Vec3b>(rows, cols, &pixels),
        ColorType::Rgba => Mat::new_rows_cols_with_bytes::<Vec4b>(rows, cols, &pixels),
        _ => Mat::new_rows_cols_with_bytes::<u8>(rows, cols, &pixels),
    }
    .ok()?;
    let mut bgr = Mat::default();
    imgproc::cvt_color_def(&decoded, &mut bgr, conversion).ok()?;
    Some(bgr)
}

/// The tablet's frames (8-bit RGB, or a palette without transparency): decoded straight into the
/// BGR frame's own buffer and its channels swapped there, so that no second full-size buffer is
/// allocated and faulted in per frame (2.7 MB for 1280x720; docs/performance.md, "Lever: memory").
fn decode_rgb_in_place<R: std::io::BufRead + std::io::Seek>(
    reader: &mut png::Reader<R>,
) -> Option<Mat> {
    let (width, height) = reader.info().size();
    let (rows, cols) = (i32::try_from(height).ok()?, i32::try_from(width).ok()?);
    let mut bgr = Mat::new_rows_cols_with_default(rows, cols, CV_8UC3, Scalar::all(0.0)).ok()?;
    let pixels = bgr.data_bytes_mut().ok()?;
    if pixels.len() != reader.output_buffer_size()? {
        return None;
    }
    let frame = reader.next_frame(pixels).ok()?;
    if (frame.width, frame.height) != (width, height) {
        log::debug!("a PNG whose first frame is smaller than its image was refused");
        return None;
    }
    for pixel in pixels.chunks_exact_mut(3) {
        pixel.swap(0, 2);
    }
    Some(bgr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{self, Scalar, Vector, CV_16UC1, CV_16UC3, CV_8UC1, CV_8UC3, CV_8UC4};
    use opencv::imgcodecs;

    /// What OpenCV's libpng path gives for the same bytes: the pixels this decoder must reproduce.
    fn opencv_decode(bytes: &[u8]) -> Mat {
        let buffer = Mat::from_slice(bytes).unwrap();
        imgcodecs::imdecode(&buffer, imgcodecs::IMREAD_COLOR).unwrap()
    }

    fn assert_same_pixels(bytes: &[u8], what: &str) {
        let ours = decode_bgr(bytes).expect(what);
        let theirs = opencv_decode(bytes);
        assert_eq!(ours.size().unwrap(), theirs.size().unwrap(), "{what}");
        assert_eq!(ours.typ(), theirs.typ(), "{what}");
        assert_eq!(
            ours.data_bytes().unwrap(),
            theirs.data_bytes().unwrap(),
            "{what}: the pixels differ"
        );
    }

    /// Random pixels, so that every filter and byte value occurs.
    fn noise(rows: i32, cols: i32, typ: i32, seed: i32) -> Mat {
        core::set_rng_seed(seed).unwrap();
        let mut image = Mat::new_rows_cols_with_default(rows, cols, typ, Scalar::all(0.0)).unwrap();
        let high = if typ == CV_16UC1 || typ == CV_16UC3 {
            65535.0
        } else {
            255.0
        };
        core::randu(&mut image, &Scalar::all(0.0), &Scalar::all(high)).unwrap();
        image
    }

    fn opencv_encode(image: &Mat, params: &[i32]) -> Vec<u8> {
        let mut bytes = Vector::<u8>::new();
        imgcodecs::imencode(".png", image, &mut bytes, &Vector::from_slice(params)).unwrap();
        bytes.to_vec()
    }

    fn png_crate_encode(
        (width, height): (u32, u32),
        color: ColorType,
        depth: png::BitDepth,
        extra: impl FnOnce(&mut png::Encoder<&mut Vec<u8>>),
        data: &[u8],
    ) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        extra(&mut encoder);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        bytes
    }

    #[test]
    fn png_frames_decode_to_the_pixels_opencv_gives() {
        let level = |n: i32| vec![imgcodecs::IMWRITE_PNG_COMPRESSION, n];
        let cases = [
            (
                "the tablet's frame: BGR, OpenCV's default level 1",
                noise(72, 128, CV_8UC3, 1),
                vec![],
            ),
            ("BGR at level 9", noise(33, 47, CV_8UC3, 2), level(9)),
            ("BGR stored (level 0)", noise(5, 3, CV_8UC3, 3), level(0)),
            ("BGRA", noise(31, 17, CV_8UC4, 4), vec![]),
            ("grey", noise(20, 21, CV_8UC1, 5), vec![]),
            ("16-bit BGR", noise(9, 11, CV_16UC3, 6), vec![]),
            ("16-bit grey", noise(12, 7, CV_16UC1, 7), vec![]),
            ("one pixel", noise(1, 1, CV_8UC3, 8), vec![]),
        ];
        for (what, image, params) in cases {
            assert_same_pixels(&opencv_encode(&image, &params), what);
        }
    }

    #[test]
    fn png_colour_types_opencv_cannot_write_decode_to_the_same_pixels() {
        use png::BitDepth;
        let (width, height) = (13u32, 6u32);
        let samples = |per_pixel: u32, seed: u32| -> Vec<u8> {
            (0..width * height * per_pixel)
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
                .collect()
        };
        let palette: Vec<u8> = (0..16u8)
            .flat_map(|i| [i * 16, 255 - i * 9, i * 5])
            .collect();
        let indices: Vec<u8> = samples(1, 1).iter().map(|v| v % 16).collect();
        // Two pixels a byte, each row starting on a byte of its own.
        let four_bit: Vec<u8> = indices
            .chunks(width as usize)
            .flat_map(|row| {
                row.chunks(2)
                    .map(|p| p[0] << 4 | p.get(1).copied().unwrap_or(0))
            })
            .collect();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "palette with transparency",
                png_crate_encode(
                    (width, height),
                    ColorType::Indexed,
                    BitDepth::Eight,
                    |e| {
                        e.set_palette(palette.clone());
                        e.set_trns(vec![0u8, 128, 255]);
                    },
                    &indices,
                ),
            ),
            (
                "4-bit palette",
                png_crate_encode(
                    (width, height),
                    ColorType::Indexed,
                    BitDepth::Four,
                    |e| e.set_palette(palette.clone()),
                    &four_bit,
                ),
            ),
            (
                "grey with alpha",
                png_crate_encode(
                    (width, height),
                    ColorType::GrayscaleAlpha,
                    BitDepth::Eight,
                    |_| {},
                    &samples(2, 2),
                ),
            ),
            (
                "16-bit RGBA",
                png_crate_encode(
                    (width, height),
                    ColorType::Rgba,
                    BitDepth::Sixteen,
                    |_| {},
                    &samples(8, 3),
                ),
            ),
            (
                "4-bit grey",
                png_crate_encode(
                    (width, height),
                    ColorType::Grayscale,
                    BitDepth::Four,
                    |_| {},
                    &four_bit,
                ),
            ),
        ];
        for (what, bytes) in cases {
            assert_same_pixels(&bytes, what);
        }
    }

    #[test]
    fn damaged_png_data_is_refused_not_decoded_to_garbage() {
        let mut bytes = opencv_encode(&noise(40, 40, CV_8UC3, 9), &[]);
        let middle = bytes.len() / 2;
        bytes[middle..middle + 64].fill(0x55);
        assert!(decode_bgr(&bytes).is_none());
    }
}
