//! Alignment: a similarity transform maps the five landmarks onto the ArcFace 112x112 template.

use opencv::core::{Mat, Scalar, Size, BORDER_CONSTANT, CV_64F};
use opencv::imgproc;
use opencv::prelude::*;

use crate::vision::VisionError;

/// Where the five landmarks sit in a 112x112 ArcFace crop (the template every embedder here was trained on).
pub(crate) const ARCFACE_TEMPLATE: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// A 2x3 affine matrix `[a -b tx; b a ty]`: rotation, uniform scale and shift.
pub(crate) type Similarity = [[f64; 3]; 2];

/// Least-squares similarity transform from `from` to `to` (Umeyama, without reflection).
pub(crate) fn estimate_similarity(from: &[[f32; 2]; 5], to: &[[f32; 2]; 5]) -> Option<Similarity> {
    let n = from.len() as f64;
    let mean = |points: &[[f32; 2]; 5]| {
        let (sx, sy) = points.iter().fold((0.0, 0.0), |(x, y), p| {
            (x + f64::from(p[0]), y + f64::from(p[1]))
        });
        (sx / n, sy / n)
    };
    let (fx, fy) = mean(from);
    let (tx, ty) = mean(to);
    let (mut dot, mut cross, mut spread) = (0.0, 0.0, 0.0);
    for (f, t) in from.iter().zip(to) {
        let (ax, ay) = (f64::from(f[0]) - fx, f64::from(f[1]) - fy);
        let (bx, by) = (f64::from(t[0]) - tx, f64::from(t[1]) - ty);
        dot += ax * bx + ay * by;
        cross += ax * by - ay * bx;
        spread += ax * ax + ay * ay;
    }
    if spread < 1e-9 {
        return None;
    }
    let a = dot / spread;
    let b = cross / spread;
    Some([
        [a, -b, tx - (a * fx - b * fy)],
        [b, a, ty - (b * fx + a * fy)],
    ])
}

/// Whether aligning these landmarks to a `size`x`size` crop would enlarge the face: its eyes are
/// closer together than the template's. Enlarging invents no detail, so a larger image is better then.
pub(crate) fn enlarges(landmarks: &[[f32; 2]; 5], size: i32) -> bool {
    let template = ARCFACE_TEMPLATE[1][0] - ARCFACE_TEMPLATE[0][0];
    let [right, left] = [landmarks[0], landmarks[1]];
    let eyes = (left[0] - right[0]).hypot(left[1] - right[1]);
    eyes < template * size as f32 / 112.0
}

/// Cuts the face out of the frame as a `size`x`size` crop in template position.
pub fn align_face(frame: &Mat, landmarks: &[[f32; 2]; 5], size: i32) -> Result<Mat, VisionError> {
    let scale = size as f32 / 112.0;
    let template = ARCFACE_TEMPLATE.map(|[x, y]| [x * scale, y * scale]);
    let transform =
        estimate_similarity(landmarks, &template).ok_or(VisionError::DegenerateLandmarks)?;
    let matrix = Mat::from_slice_2d(&transform)?;
    debug_assert_eq!(matrix.typ(), CV_64F);
    let mut crop = Mat::default();
    imgproc::warp_affine(
        frame,
        &mut crop,
        &matrix,
        Size::new(size, size),
        imgproc::INTER_LINEAR,
        BORDER_CONSTANT,
        Scalar::all(0.0),
    )?;
    Ok(crop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(t: &Similarity, p: [f32; 2]) -> [f64; 2] {
        let (x, y) = (f64::from(p[0]), f64::from(p[1]));
        [
            t[0][0] * x + t[0][1] * y + t[0][2],
            t[1][0] * x + t[1][1] * y + t[1][2],
        ]
    }

    #[test]
    fn identity_template_maps_to_itself() {
        let t = estimate_similarity(&ARCFACE_TEMPLATE, &ARCFACE_TEMPLATE).unwrap();
        assert!((t[0][0] - 1.0).abs() < 1e-9 && t[0][1].abs() < 1e-9 && t[0][2].abs() < 1e-6);
    }

    #[test]
    fn a_scaled_rotated_shifted_face_is_mapped_back_exactly() {
        let (angle, scale, shift) = (0.3f64, 2.5f64, [100.0f64, -40.0]);
        let moved = ARCFACE_TEMPLATE.map(|[x, y]| {
            let (x, y) = (f64::from(x), f64::from(y));
            [
                (scale * (angle.cos() * x - angle.sin() * y) + shift[0]) as f32,
                (scale * (angle.sin() * x + angle.cos() * y) + shift[1]) as f32,
            ]
        });
        let t = estimate_similarity(&moved, &ARCFACE_TEMPLATE).unwrap();
        for (m, want) in moved.iter().zip(ARCFACE_TEMPLATE) {
            let got = apply(&t, *m);
            assert!(
                (got[0] - f64::from(want[0])).abs() < 1e-3,
                "{got:?} vs {want:?}"
            );
            assert!(
                (got[1] - f64::from(want[1])).abs() < 1e-3,
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn only_faces_with_eyes_closer_than_the_templates_are_enlarged() {
        let doubled = ARCFACE_TEMPLATE.map(|[x, y]| [x * 2.0, y * 2.0]);
        let halved = ARCFACE_TEMPLATE.map(|[x, y]| [x * 0.5, y * 0.5]);
        assert!(!enlarges(&doubled, 112));
        assert!(!enlarges(&ARCFACE_TEMPLATE, 112));
        assert!(enlarges(&halved, 112));
        assert!(enlarges(&ARCFACE_TEMPLATE, 224));
    }

    #[test]
    fn coincident_landmarks_are_degenerate() {
        assert!(estimate_similarity(&[[5.0, 5.0]; 5], &ARCFACE_TEMPLATE).is_none());
    }
}
