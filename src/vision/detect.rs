//! Face detection: YuNet (OpenCV `FaceDetectorYN`) on the frame shrunk to a camera-like size.

use opencv::core::{Mat, MatTraitConst, Ptr, Size};
use opencv::imgproc;
use opencv::objdetect::{FaceDetectorYN, FaceDetectorYNTrait};

use crate::models::{DetectorContract, ResolvedModel};
use crate::vision::VisionError;

/// One detected face, in the coordinates of the decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectedFace {
    /// x, y, width, height.
    pub bbox: [f32; 4],
    /// Right eye, left eye, nose tip, right and left mouth corners (YuNet's order).
    pub landmarks: [[f32; 2]; 5],
    pub score: f32,
}

impl DetectedFace {
    pub fn area(&self) -> f32 {
        self.bbox[2] * self.bbox[3]
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct DetectSettings {
    pub max_side: u32,
    pub score_threshold: f32,
    /// Minimum face width in pixels of the shrunk detection image.
    pub min_face_px: u32,
    /// The quick first pass: longer side of its image, 0 for none.
    pub coarse_side: u32,
    /// A face found by the quick pass whose box is at least this share of the frame's height is taken
    /// without the full-size pass.
    pub coarse_face_share: f32,
}

/// The smallest width and height the detector is given; smaller frames are padded up to it.
const MIN_INPUT_SIDE: i32 = 64;

pub(crate) struct Detector {
    full: Pass,
    /// The quick pass at `settings.coarse_side`, when it is smaller than the full one.
    coarse: Option<Pass>,
    settings: DetectSettings,
}

/// One YuNet instance run at one size.
struct Pass {
    yunet: Ptr<FaceDetectorYN>,
    max_side: u32,
    /// The size YuNet's anchor priors were generated for: setting the size regenerates them, so it is
    /// only set when the frame size changes (each pass has its own instance, so alternating passes do
    /// not regenerate them). A property of the model set-up, not of any result.
    input_size: Size,
}

impl Detector {
    pub fn load(
        model: &ResolvedModel<DetectorContract>,
        settings: DetectSettings,
    ) -> Result<Detector, VisionError> {
        let coarse = (settings.coarse_side > 0 && settings.coarse_side < settings.max_side)
            .then(|| Pass::load(model, &settings, settings.coarse_side))
            .transpose()?;
        Ok(Detector {
            full: Pass::load(model, &settings, settings.max_side)?,
            coarse,
            settings,
        })
    }

    /// Every face in the frame, largest first, from the full-size pass.
    pub fn detect(&mut self, frame: &Mat) -> Result<Vec<DetectedFace>, VisionError> {
        self.full
            .detect(frame, &self.settings, self.settings.min_face_px)
    }

    /// Faces for a decision about the largest one, largest first: the quick pass alone when it finds a
    /// face large enough (someone close to the door camera), else the full-size pass. Smaller faces
    /// behind a large one may then go uncounted.
    pub fn detect_for_largest(&mut self, frame: &Mat) -> Result<Vec<DetectedFace>, VisionError> {
        if let Some(coarse) = &mut self.coarse {
            let faces = coarse.detect(frame, &self.settings, 0)?;
            let large = frame.rows() as f32 * self.settings.coarse_face_share;
            if faces.first().is_some_and(|face| face.bbox[3] >= large) {
                return Ok(faces);
            }
        }
        self.detect(frame)
    }
}

impl Pass {
    fn load(
        model: &ResolvedModel<DetectorContract>,
        settings: &DetectSettings,
        max_side: u32,
    ) -> Result<Pass, VisionError> {
        let path = model.path.to_string_lossy();
        let yunet = FaceDetectorYN::create(
            &path,
            "",
            Size::new(320, 320),
            settings.score_threshold,
            model.contract.nms_threshold,
            model.contract.top_k,
            0,
            0,
        )
        .map_err(|err| VisionError::ModelLoad {
            model: model.name.clone(),
            path: model.path.clone(),
            cause: err.to_string(),
        })?;
        Ok(Pass {
            yunet,
            max_side,
            input_size: Size::new(320, 320),
        })
    }

    /// Faces at least `min_face_px` wide in the shrunk image, in frame coordinates, largest first.
    fn detect(
        &mut self,
        frame: &Mat,
        settings: &DetectSettings,
        min_face_px: u32,
    ) -> Result<Vec<DetectedFace>, VisionError> {
        let (width, height) = (frame.cols(), frame.rows());
        let scale = shrink_factor(width, height, self.max_side);
        let shrunk;
        let input = if scale < 1.0 {
            let size = Size::new(
                ((width as f32 * scale).round() as i32).max(1),
                ((height as f32 * scale).round() as i32).max(1),
            );
            shrunk = shrink(frame, size)?;
            &shrunk
        } else {
            frame
        };
        // YuNet (OpenCV 4.6) fails outright on an input with a side under 63 px; pad such frames with
        // black at the bottom and right, which leaves the face coordinates unchanged.
        let padded;
        let input = if input.cols() < MIN_INPUT_SIDE || input.rows() < MIN_INPUT_SIDE {
            let mut bordered = Mat::default();
            opencv::core::copy_make_border(
                input,
                &mut bordered,
                0,
                (MIN_INPUT_SIDE - input.rows()).max(0),
                0,
                (MIN_INPUT_SIDE - input.cols()).max(0),
                opencv::core::BORDER_CONSTANT,
                opencv::core::Scalar::all(0.0),
            )?;
            padded = bordered;
            &padded
        } else {
            input
        };
        let size = input.size()?;
        if size != self.input_size {
            self.yunet.set_input_size(size)?;
            self.input_size = size;
        }
        let mut rows = Mat::default();
        self.yunet.detect(input, &mut rows)?;
        let mut faces = Vec::new();
        for row in 0..rows.rows() {
            let value = |col: i32| rows.at_2d::<f32>(row, col).copied();
            let score = value(14)?;
            let face_width = value(2)?;
            if score < settings.score_threshold || face_width < min_face_px as f32 {
                continue;
            }
            let back = |v: f32| v / scale;
            let mut landmarks = [[0.0f32; 2]; 5];
            for (i, point) in landmarks.iter_mut().enumerate() {
                let col = 4 + 2 * i as i32;
                *point = [back(value(col)?), back(value(col + 1)?)];
            }
            faces.push(DetectedFace {
                bbox: [
                    back(value(0)?),
                    back(value(1)?),
                    back(value(2)?),
                    back(value(3)?),
                ],
                landmarks,
                score,
            });
        }
        faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
        Ok(faces)
    }
}

/// `frame` shrunk to `size` by area averaging, exact halvings first. OpenCV's `INTER_AREA` is
/// vectorised for a factor of exactly 2 only: a 1280x720 PNG frame to the quick pass's 320x180 takes
/// 2.2 ms in one step and 0.4 ms as two halvings, which average the same 4x4 boxes (rounded once
/// more). JPEG frames arrive already halved (`frame::jpeg`).
fn shrink(frame: &Mat, size: Size) -> opencv::Result<Mat> {
    let mut halved: Option<Mat> = None;
    loop {
        let source = halved.as_ref().unwrap_or(frame);
        let (width, height) = (source.cols(), source.rows());
        let half = Size::new(width / 2, height / 2);
        if width % 2 != 0 || height % 2 != 0 || half.width < size.width || half.height < size.height
        {
            break;
        }
        let mut out = Mat::default();
        imgproc::resize(source, &mut out, half, 0.0, 0.0, imgproc::INTER_AREA)?;
        halved = Some(out);
    }
    match halved {
        Some(image) if image.size()? == size => Ok(image),
        halved => {
            let mut out = Mat::default();
            let source = halved.as_ref().unwrap_or(frame);
            imgproc::resize(source, &mut out, size, 0.0, 0.0, imgproc::INTER_AREA)?;
            Ok(out)
        }
    }
}

/// The factor (≤ 1) that brings the longer side to at most `max_side`.
pub fn shrink_factor(width: i32, height: i32, max_side: u32) -> f32 {
    let longer = width.max(height).max(1) as f32;
    (max_side as f32 / longer).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::prelude::MatTraitConstManual;

    /// Noise smoothed to a camera's texture: detail at every scale the halvings average over.
    fn picture(rows: i32, cols: i32) -> Mat {
        let mut noise =
            Mat::new_rows_cols_with_default(rows, cols, opencv::core::CV_8UC3, 0.0.into()).unwrap();
        let (low, high) = (
            opencv::core::Scalar::all(0.0),
            opencv::core::Scalar::all(256.0),
        );
        opencv::core::randu(&mut noise, &low, &high).unwrap();
        let mut smooth = Mat::default();
        imgproc::gaussian_blur_def(&noise, &mut smooth, Size::new(0, 0), 4.0).unwrap();
        smooth
    }

    #[test]
    fn shrinking_by_halvings_gives_the_one_step_area_average_within_rounding() {
        // 4x exactly (a PNG frame to the quick pass), 2x then a remainder, odd sides (no halving).
        for ((cols, rows), (to_cols, to_rows)) in [
            ((1280, 720), (320, 180)),
            ((1280, 720), (300, 169)),
            ((1281, 721), (320, 180)),
            ((640, 360), (320, 180)),
        ] {
            let frame = picture(rows, cols);
            let size = Size::new(to_cols, to_rows);
            let ours = shrink(&frame, size).unwrap();
            let mut one_step = Mat::default();
            imgproc::resize(&frame, &mut one_step, size, 0.0, 0.0, imgproc::INTER_AREA).unwrap();
            assert_eq!(ours.size().unwrap(), size);
            let (a, b) = (ours.data_bytes().unwrap(), one_step.data_bytes().unwrap());
            let apart: Vec<u8> = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).collect();
            let mean = apart.iter().map(|&d| f64::from(d)).sum::<f64>() / apart.len() as f64;
            let largest = apart.iter().copied().max().unwrap_or(0);
            let what = format!("{cols}x{rows} to {to_cols}x{to_rows}");
            if (cols, rows) == (1280, 720) && (to_cols, to_rows) == (320, 180) {
                assert!(
                    largest <= 1,
                    "{what}: exact halvings differ by rounding only, not {largest}"
                );
            }
            // Otherwise the halvings change the area filter's footprint a little.
            assert!(
                mean < 1.0 && largest <= 8,
                "{what}: mean {mean:.2}, largest {largest}"
            );
        }
    }

    #[test]
    fn frames_are_shrunk_only_when_larger_than_the_limit() {
        assert_eq!(shrink_factor(640, 480, 640), 1.0);
        assert_eq!(shrink_factor(320, 240, 640), 1.0);
        assert_eq!(shrink_factor(1280, 720, 640), 0.5);
        assert_eq!(shrink_factor(720, 1280, 640), 0.5);
    }
}
