//! One frame through the whole core: bytes → decoded frame → sighting → gallery match → outcome.
//! It is a function of (image, gallery, settings) and a worker's models; nothing survives the call.

use std::time::Instant;

use serde::Serialize;

use crate::decision::Outcome;
use crate::frame::{CheckedImage, FrameError, ImageHeader};
use crate::gallery::Gallery;
use crate::vision::{elapsed_ms, LivenessReading, Recognizer, VisionError};

#[derive(Debug, thiserror::Error)]
pub enum RecognitionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Vision(#[from] VisionError),
}

/// Milliseconds spent in each stage of one request.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StageTimings {
    pub decode_ms: f64,
    pub detect_ms: f64,
    pub align_ms: f64,
    pub embed_ms: f64,
    pub match_ms: f64,
    /// Zero unless liveness ran (only for a recognised face).
    pub liveness_ms: f64,
}

#[derive(Debug, Clone)]
pub struct Recognition {
    pub outcome: Outcome,
    /// How many faces the detector found; the outcome is about the largest.
    pub faces: usize,
    pub header: ImageHeader,
    pub timings: StageTimings,
    /// Only for a recognised face, and only with liveness enabled: nobody else can be granted anyway.
    pub liveness: Option<LivenessReading>,
}

/// Recognises the largest face in a checked image.
pub fn recognize_image(
    recognizer: &mut Recognizer,
    gallery: &Gallery,
    image: &CheckedImage,
    threshold: f32,
) -> Result<Recognition, RecognitionError> {
    let started = Instant::now();
    let decoded = image.decode()?;
    let decode_ms = elapsed_ms(started);
    let sighting = recognizer.look_finer(&decoded.image, || image.decode_finer())?;
    let started = Instant::now();
    let outcome = match &sighting.primary {
        None => Outcome::NoFace,
        Some(reading) => Outcome::for_face(gallery.best_match(&reading.embedding), threshold),
    };
    let match_ms = elapsed_ms(started);
    let started = Instant::now();
    let liveness = match (&outcome, &sighting.primary) {
        (Outcome::Recognised(_), Some(reading)) => {
            recognizer.check_liveness(&decoded.image, &reading.face)?
        }
        _ => None,
    };
    let liveness_ms = if liveness.is_some() {
        elapsed_ms(started)
    } else {
        0.0
    };
    Ok(Recognition {
        outcome,
        faces: sighting.faces,
        header: decoded.header,
        timings: StageTimings {
            decode_ms,
            detect_ms: sighting.detect_ms,
            align_ms: sighting.align_ms,
            embed_ms: sighting.embed_ms,
            match_ms,
            liveness_ms,
        },
        liveness,
    })
}
