//! Tilted heads: YuNet 2022mar places its landmarks badly on a face tilted far in the image plane, and the
//! alignment built on them then ruins the embedding. For such a face (eye line past
//! `recognition.max_roll_deg`) the region around it is turned upright, detected again (one small extra
//! detection), and the new landmarks are carried back into the frame's coordinates for alignment.

use opencv::core::{Mat, Scalar, Size, BORDER_REPLICATE};
use opencv::imgproc;

use crate::vision::align::Similarity;
use crate::vision::detect::{DetectSettings, Detector};
use crate::vision::{DetectedFace, VisionError};

/// The upright region is this many face-box sides wide, so the detector sees the whole head with margin.
const REGION_FACTOR: f64 = 2.0;
/// The upright region is scaled down to at most this many pixels a side before detection.
const MAX_CANVAS_SIDE: f64 = 320.0;

/// Angle of the eye line in degrees, positive when the face's left eye (the second landmark, on the
/// right of the image) is lower than its right eye. Image coordinates: y grows downwards.
pub(crate) fn roll_degrees(landmarks: &[[f32; 2]; 5]) -> f32 {
    let [right_eye, left_eye] = [landmarks[0], landmarks[1]];
    (left_eye[1] - right_eye[1])
        .atan2(left_eye[0] - right_eye[0])
        .to_degrees()
}

/// The transform that turns the square region of side `region_side` around `centre` by `-roll_deg`
/// (making the eye line level) and scales it into a `canvas_side` square.
pub(crate) fn upright_transform(
    centre: [f64; 2],
    roll_deg: f64,
    region_side: f64,
    canvas_side: f64,
) -> Similarity {
    let k = canvas_side / region_side;
    let (sin, cos) = roll_deg.to_radians().sin_cos();
    let (a, b) = (k * cos, k * sin);
    let half = canvas_side / 2.0;
    [
        [a, b, half - (a * centre[0] + b * centre[1])],
        [-b, a, half - (-b * centre[0] + a * centre[1])],
    ]
}

/// The inverse of a similarity transform (`None` when it collapses everything to a point).
pub(crate) fn invert(t: &Similarity) -> Option<Similarity> {
    let [[a, b, tx], [c, d, ty]] = *t;
    let det = a * d - b * c;
    if det.abs() < 1e-12 {
        return None;
    }
    let (ia, ib, ic, id) = (d / det, -b / det, -c / det, a / det);
    Some([
        [ia, ib, -(ia * tx + ib * ty)],
        [ic, id, -(ic * tx + id * ty)],
    ])
}

pub fn apply(t: &Similarity, [x, y]: [f32; 2]) -> [f32; 2] {
    let (x, y) = (f64::from(x), f64::from(y));
    [
        (t[0][0] * x + t[0][1] * y + t[0][2]) as f32,
        (t[1][0] * x + t[1][1] * y + t[1][2]) as f32,
    ]
}

/// A second detector for upright face regions. It has its own input size, so the frame detector keeps
/// its anchors, and no size floor of its own (the face was already accepted in the frame).
pub(crate) struct Straightener {
    detector: Detector,
    max_roll_deg: f32,
}

impl Straightener {
    pub fn new(detector: Detector, max_roll_deg: f32) -> Straightener {
        Straightener {
            detector,
            max_roll_deg,
        }
    }

    pub fn settings(score_threshold: f32) -> DetectSettings {
        DetectSettings {
            max_side: MAX_CANVAS_SIDE as u32,
            score_threshold,
            min_face_px: 0,
            coarse_side: 0,
            coarse_face_share: 1.0,
        }
    }

    /// The face with landmarks from an upright second look when it is tilted past the limit and that
    /// look finds it; otherwise the face unchanged. The box stays the frame detector's.
    pub(crate) fn straighten(
        &mut self,
        frame: &Mat,
        face: &DetectedFace,
    ) -> Result<DetectedFace, VisionError> {
        let roll = roll_degrees(&face.landmarks);
        if roll.abs() <= self.max_roll_deg {
            return Ok(face.clone());
        }
        let [x, y, w, h] = face.bbox.map(f64::from);
        let region_side = REGION_FACTOR * w.max(h);
        if region_side.is_nan() || region_side < 1.0 {
            return Ok(face.clone());
        }
        let canvas_side = region_side.min(MAX_CANVAS_SIDE).round();
        let transform = upright_transform(
            [x + w / 2.0, y + h / 2.0],
            f64::from(roll),
            region_side,
            canvas_side,
        );
        let Some(back) = invert(&transform) else {
            return Ok(face.clone());
        };
        let mut canvas = Mat::default();
        imgproc::warp_affine(
            frame,
            &mut canvas,
            &Mat::from_slice_2d(&transform)?,
            Size::new(canvas_side as i32, canvas_side as i32),
            imgproc::INTER_LINEAR,
            BORDER_REPLICATE,
            Scalar::all(0.0),
        )?;
        let centre = canvas_side as f32 / 2.0;
        let nearest = self
            .detector
            .detect(&canvas)?
            .into_iter()
            .min_by(|a, b| distance_to(a, centre).total_cmp(&distance_to(b, centre)));
        Ok(match nearest {
            Some(upright) => DetectedFace {
                landmarks: upright.landmarks.map(|p| apply(&back, p)),
                ..face.clone()
            },
            None => face.clone(),
        })
    }
}

fn distance_to(face: &DetectedFace, centre: f32) -> f32 {
    let [x, y, w, h] = face.bbox;
    (x + w / 2.0 - centre).hypot(y + h / 2.0 - centre)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eyes 40 px apart, turned by `degrees` about (100, 100).
    fn eyes_turned(degrees: f32) -> [[f32; 2]; 5] {
        let (sin, cos) = degrees.to_radians().sin_cos();
        let turn = |dx: f32, dy: f32| [100.0 + dx * cos - dy * sin, 100.0 + dx * sin + dy * cos];
        [
            turn(-20.0, 0.0),
            turn(20.0, 0.0),
            turn(0.0, 15.0),
            turn(-15.0, 30.0),
            turn(15.0, 30.0),
        ]
    }

    #[test]
    fn roll_is_the_angle_of_the_eye_line() {
        for degrees in [0.0f32, 15.0, -15.0, 30.0, -30.0, 60.0] {
            let got = roll_degrees(&eyes_turned(degrees));
            assert!((got - degrees).abs() < 1e-3, "{degrees}: {got}");
        }
    }

    #[test]
    fn the_upright_transform_levels_the_eyes_and_centres_the_face() {
        for degrees in [25.0f32, -25.0, 40.0, -40.0] {
            let landmarks = eyes_turned(degrees);
            let t = upright_transform([100.0, 100.0], f64::from(degrees), 200.0, 100.0);
            let upright = landmarks.map(|p| apply(&t, p));
            assert!(
                roll_degrees(&upright).abs() < 1e-3,
                "{degrees}: {upright:?}"
            );
            // The eyes are 40 px apart in a 200 px region drawn at 100 px: 20 px on the canvas.
            let gap = (upright[1][0] - upright[0][0]).hypot(upright[1][1] - upright[0][1]);
            assert!((gap - 20.0).abs() < 1e-3, "{gap}");
            // The centre of the region is the centre of the canvas.
            let centre = apply(&t, [100.0, 100.0]);
            assert!((centre[0] - 50.0).abs() < 1e-4 && (centre[1] - 50.0).abs() < 1e-4);
        }
    }

    #[test]
    fn points_carried_back_land_where_they_came_from() {
        let t = upright_transform([320.0, 240.0], 33.0, 180.0, 160.0);
        let back = invert(&t).unwrap();
        for p in [
            [0.0f32, 0.0],
            [320.0, 240.0],
            [400.5, 100.25],
            [-50.0, 900.0],
        ] {
            let q = apply(&back, apply(&t, p));
            assert!(
                (q[0] - p[0]).abs() < 1e-3 && (q[1] - p[1]).abs() < 1e-3,
                "{p:?} -> {q:?}"
            );
        }
        assert!(invert(&[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]).is_none());
    }
}
