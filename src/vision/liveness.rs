//! Liveness: is the recognised face a live person in front of the camera, or a print or screen held up
//! to it? Two MiniFASNet anti-spoofing classifiers (V2 on the face box scaled 2.7x, V1SE on 4x), each
//! on an 80x80 crop of the frame; their "real" probabilities averaged give the score. A 2D RGB model
//! makes a print or a phone harder to use, nothing more: docs/accuracy.md says what it does not stop.

use opencv::core::{Mat, Rect, Scalar, Size, CV_32F};
use opencv::dnn;
use opencv::imgproc;
use opencv::prelude::*;

use crate::models::{ChannelOrder, LivenessContract, Manifest, ModelError, ResolvedModel};
use crate::vision::{grey_probe, load_error, load_onnx, DetectedFace, VisionError};

/// Manifest keys of the two classifiers, in the order their scores are reported.
pub(crate) const LIVENESS_MODELS: [&str; 2] = ["minifasnet_v2", "minifasnet_v1se"];

/// Every MiniFASNet output: three logits (0 and 2 are kinds of spoof, the manifest names the real one).
const CLASSES: usize = 3;

/// A crop rectangle in whole pixels of the frame: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub x: i32,
    pub y: i32,
    pub width: i32,
    pub height: i32,
}

/// The region a classifier sees: the face box scaled about its centre by `scale`, the scale capped so that
/// the region fits the frame, and a region that sticks out of the frame shifted back inside (not clipped,
/// which would move the face off-centre and change how much context the model gets). `None` for an empty
/// frame or box.
pub fn crop_box(
    bbox: [f32; 4],
    (frame_width, frame_height): (i32, i32),
    scale: f64,
) -> Option<CropBox> {
    let [x, y, w, h] = bbox.map(f64::from);
    if frame_width < 2 || frame_height < 2 || !(w > 0.0 && h > 0.0) {
        return None;
    }
    let (last_x, last_y) = (f64::from(frame_width - 1), f64::from(frame_height - 1));
    let scale = scale.min(last_y / h).min(last_x / w);
    let (new_w, new_h) = (w * scale, h * scale);
    let (centre_x, centre_y) = (x + w / 2.0, y + h / 2.0);
    let shift_inside = |start: f64, length: f64, last: f64| {
        let start = start.max(0.0);
        let end = (start + length).min(last);
        (end - length).max(0.0)
    };
    let left = shift_inside(centre_x - new_w / 2.0, new_w, last_x);
    let top = shift_inside(centre_y - new_h / 2.0, new_h, last_y);
    // Whole pixels, inclusive of the last column and row the region reaches.
    let (left_px, top_px) = (left as i32, top as i32);
    let right_px = ((left + new_w) as i32).min(frame_width - 1);
    let bottom_px = ((top + new_h) as i32).min(frame_height - 1);
    Some(CropBox {
        x: left_px,
        y: top_px,
        width: right_px - left_px + 1,
        height: bottom_px - top_px + 1,
    })
}

/// Softmax of one classifier's logits, computed stably (shifted by the largest logit).
pub(crate) fn softmax(logits: &[f32; CLASSES]) -> [f32; CLASSES] {
    let largest = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps = logits.map(|l| (l - largest).exp());
    let sum: f32 = exps.iter().sum();
    exps.map(|e| e / sum)
}

/// The liveness score: the classifiers' "real" probabilities summed and divided by their number (for the
/// two MiniFASNets, the summed real probability / 2), so 0..1 whatever the number of models.
pub(crate) fn liveness_score(probabilities: &[[f32; CLASSES]], real_index: usize) -> f32 {
    if probabilities.is_empty() {
        return 0.0;
    }
    let real: f32 = probabilities.iter().map(|p| p[real_index]).sum();
    real / probabilities.len() as f32
}

/// One classifier's view of the face.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReading {
    pub model: String,
    /// Softmaxed outputs, in the model's class order.
    pub probabilities: [f32; CLASSES],
    pub crop: CropBox,
}

/// What liveness found about one face.
#[derive(Debug, Clone, PartialEq)]
pub enum LivenessReading {
    /// Both classifiers ran; `score` is 0 (spoof) .. 1 (real).
    Scored {
        score: f32,
        models: Vec<ModelReading>,
    },
    /// The face is narrower than `liveness.min_face_px` in the frame: too few pixels to judge, so it is
    /// never taken as live.
    TooSmall { face_px: u32, min_face_px: u32 },
}

impl LivenessReading {
    /// The score, or `None` when the face was too small to judge.
    pub fn score(&self) -> Option<f32> {
        match self {
            LivenessReading::Scored { score, .. } => Some(*score),
            LivenessReading::TooSmall { .. } => None,
        }
    }
}

/// Both liveness models, resolved from the manifest and checked against their pins, and the smallest
/// face (`liveness.min_face_px`) they are asked to judge.
#[derive(Debug, Clone)]
pub struct LivenessModels {
    pub models: Vec<ResolvedModel<LivenessContract>>,
    pub min_face_px: u32,
}

impl LivenessModels {
    pub fn resolve(
        manifest: &Manifest,
        models_dir: &std::path::Path,
        min_face_px: u32,
    ) -> Result<Self, ModelError> {
        let models = LIVENESS_MODELS
            .iter()
            .map(|name| manifest.liveness(name, models_dir))
            .collect::<Result<Vec<_>, _>>()?;
        for model in &models {
            model.verify()?;
        }
        Ok(LivenessModels {
            models,
            min_face_px,
        })
    }
}

struct Classifier {
    net: dnn::Net,
    contract: LivenessContract,
    name: String,
}

/// One worker's two anti-spoofing classifiers.
pub(crate) struct LivenessChecker {
    classifiers: Vec<Classifier>,
    min_face_px: u32,
}

impl LivenessChecker {
    pub fn load(models: &LivenessModels) -> Result<LivenessChecker, VisionError> {
        let mut checker = LivenessChecker {
            classifiers: Vec::with_capacity(models.models.len()),
            min_face_px: models.min_face_px,
        };
        for model in &models.models {
            let mut classifier = Classifier {
                net: load_onnx(model)?,
                contract: model.contract.clone(),
                name: model.name.clone(),
            };
            let probe = grey_probe(classifier.contract.input_size)?;
            classifier
                .logits(&probe)
                .map_err(|err| load_error(model, format!("a test inference failed: {err}")))?;
            checker.classifiers.push(classifier);
        }
        Ok(checker)
    }

    /// Judges `face` in `frame`, the image the face's coordinates refer to (the decoded frame, at least
    /// the resolution the face was detected at).
    pub fn check(
        &mut self,
        frame: &Mat,
        face: &DetectedFace,
    ) -> Result<LivenessReading, VisionError> {
        let face_px = face.bbox[2].max(0.0) as u32;
        if face_px < self.min_face_px {
            return Ok(LivenessReading::TooSmall {
                face_px,
                min_face_px: self.min_face_px,
            });
        }
        let size = (frame.cols(), frame.rows());
        let mut models = Vec::with_capacity(self.classifiers.len());
        for classifier in &mut self.classifiers {
            let Some(crop) = crop_box(face.bbox, size, classifier.contract.scale) else {
                return Ok(LivenessReading::TooSmall {
                    face_px,
                    min_face_px: self.min_face_px,
                });
            };
            let region = Mat::roi(frame, Rect::new(crop.x, crop.y, crop.width, crop.height))?;
            let side = classifier.contract.input_size;
            let mut resized = Mat::default();
            imgproc::resize(
                &region,
                &mut resized,
                Size::new(side, side),
                0.0,
                0.0,
                imgproc::INTER_LINEAR,
            )?;
            let logits = classifier.logits(&resized)?;
            models.push(ModelReading {
                model: classifier.name.clone(),
                probabilities: softmax(&logits),
                crop,
            });
        }
        let probabilities: Vec<[f32; CLASSES]> = models.iter().map(|m| m.probabilities).collect();
        let real_index = self
            .classifiers
            .first()
            .map_or(1, |c| c.contract.real_index);
        Ok(LivenessReading::Scored {
            score: liveness_score(&probabilities, real_index),
            models,
        })
    }
}

impl Classifier {
    /// The three logits for an `input_size` square crop, fed as raw 0..255 floats, NCHW.
    fn logits(&mut self, crop: &Mat) -> Result<[f32; CLASSES], VisionError> {
        let side = self.contract.input_size;
        let blob = dnn::blob_from_image(
            crop,
            1.0,
            Size::new(side, side),
            Scalar::all(0.0),
            self.contract.color == ChannelOrder::Rgb,
            false,
            CV_32F,
        )?;
        self.net.set_input(&blob, "", 1.0, Scalar::default())?;
        let output = self.net.forward_single("")?;
        let values = output.data_typed::<f32>()?;
        let logits: [f32; CLASSES] = values.try_into().map_err(|_| VisionError::OutputShape {
            model: self.name.clone(),
            expected: CLASSES,
            actual: values.len(),
        })?;
        if logits.iter().any(|l| !l.is_finite()) {
            return Err(VisionError::OutputShape {
                model: self.name.clone(),
                expected: CLASSES,
                actual: 0,
            });
        }
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crop(x: i32, y: i32, width: i32, height: i32) -> CropBox {
        CropBox {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn the_box_is_scaled_about_its_centre_capped_and_shifted_inside() {
        let cases = [
            // A 100 px face in the middle of 640x480: 2.7x -> 270 px around the same centre.
            (
                [270.0, 190.0, 100.0, 100.0],
                (640, 480),
                2.7,
                crop(185, 105, 271, 271),
            ),
            // 4x would be 400 px: still fits in 480 rows.
            (
                [270.0, 190.0, 100.0, 100.0],
                (640, 480),
                4.0,
                crop(120, 40, 401, 401),
            ),
            // Near the left edge: shifted right, never clipped, so the full 270 px are kept.
            (
                [0.0, 190.0, 100.0, 100.0],
                (640, 480),
                2.7,
                crop(0, 105, 271, 271),
            ),
            // Near the bottom-right corner: shifted up and left to end on the last pixel.
            (
                [600.0, 450.0, 40.0, 40.0],
                (640, 480),
                2.7,
                crop(531, 371, 109, 109),
            ),
            // A 200 px face at 4x would need 800 px; capped to (480-1)/200 = 2.395: all 480 rows.
            (
                [220.0, 140.0, 200.0, 200.0],
                (640, 480),
                4.0,
                crop(80, 0, 480, 480),
            ),
            // A face box wider than the frame (detectors overshoot at the border): capped below 1.
            (
                [-20.0, 0.0, 700.0, 400.0],
                (640, 480),
                2.7,
                crop(0, 17, 640, 366),
            ),
        ];
        for (bbox, frame, scale, want) in cases {
            let got = crop_box(bbox, frame, scale).unwrap();
            assert_eq!(got, want, "{bbox:?} in {frame:?} at {scale}");
            assert!(got.x >= 0 && got.y >= 0, "{got:?}");
            assert!(
                got.x + got.width <= frame.0 && got.y + got.height <= frame.1,
                "{got:?}"
            );
        }
    }

    #[test]
    fn empty_boxes_and_frames_have_no_crop() {
        assert_eq!(crop_box([0.0, 0.0, 0.0, 10.0], (640, 480), 2.7), None);
        assert_eq!(crop_box([0.0, 0.0, 10.0, f32::NAN], (640, 480), 2.7), None);
        assert_eq!(crop_box([0.0, 0.0, 10.0, 10.0], (1, 480), 2.7), None);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let cases: [([f32; 3], [f32; 3]); 3] = [
            ([0.0, 0.0, 0.0], [1.0 / 3.0; 3]),
            ([0.0, 2.0_f32.ln(), 0.0], [0.25, 0.5, 0.25]),
            ([1000.0, 0.0, -1000.0], [1.0, 0.0, 0.0]),
        ];
        for (logits, want) in cases {
            let got = softmax(&logits);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{logits:?} -> {got:?}");
            }
            assert!((got.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn the_score_is_the_summed_real_probability_over_the_models() {
        let cases: [(&[[f32; 3]], f32); 5] = [
            (&[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], 1.0),
            (&[[0.3, 0.0, 0.7], [0.6, 0.1, 0.3]], 0.05),
            (&[[0.0, 0.6, 0.4], [0.0, 0.8, 0.2]], 0.7),
            (&[[0.0, 0.5, 0.5]], 0.5),
            (&[], 0.0),
        ];
        for (probabilities, want) in cases {
            let got = liveness_score(probabilities, 1);
            assert!((got - want).abs() < 1e-6, "{probabilities:?} -> {got}");
        }
    }
}
