//! Enrolment: every image must show exactly one acceptable face; look-alikes of enrolled people are flagged.

use crate::config::FrameConfig;
use crate::frame::CheckedImage;
use crate::gallery::{BestMatch, Gallery, GalleryError, Sample};
use crate::recognition::RecognitionError;
use crate::vision::{Embedding, Recognizer};

/// One image offered for enrolment.
pub struct Candidate<'a> {
    pub source: String,
    pub bytes: &'a [u8],
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accepted { face_score: f32 },
    Rejected { reason: String },
}

#[derive(Debug, Clone)]
pub struct EnrolmentReport {
    pub verdicts: Vec<(String, Verdict)>,
    /// The most similar other enrolled person, when at or above the look-alike warning level.
    pub lookalike: Option<BestMatch>,
    /// The new samples disagree with each other: they may not all show the same person.
    pub inconsistent: Option<f32>,
}

impl EnrolmentReport {
    pub fn accepted(&self) -> usize {
        self.verdicts
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Accepted { .. }))
            .count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolmentError {
    #[error("no image was accepted for `{name}`; nothing was enrolled. {}", reasons.join("; "))]
    NothingAccepted { name: String, reasons: Vec<String> },
    #[error(transparent)]
    Gallery(#[from] GalleryError),
    #[error(transparent)]
    Recognition(#[from] RecognitionError),
}

/// Checks one image: exactly one face that passes the detector's score and size limits.
pub(crate) fn embed_single_face(
    recognizer: &mut Recognizer,
    bytes: &[u8],
    limits: &FrameConfig,
) -> Result<Result<(Embedding, f32), String>, RecognitionError> {
    let image = match CheckedImage::check(bytes.to_vec(), limits) {
        Ok(image) => image,
        Err(refused) => return Ok(Err(refused.error.to_string())),
    };
    let decoded = match image.decode() {
        Ok(decoded) => decoded,
        Err(err) => return Ok(Err(err.to_string())),
    };
    let faces = recognizer.detect_all(&decoded.image)?;
    match faces.as_slice() {
        [] => Ok(Err(
            "no acceptable face (none found, or too small or too unsure): use a well-lit, frontal photo".into(),
        )),
        [face] => {
            let embedding =
                recognizer.embed_face_finer(&decoded.image, face, || image.decode_finer())?;
            Ok(Ok((embedding, face.score)))
        }
        many => Ok(Err(format!(
            "{} faces in the picture: enrolment needs a photo of one person alone",
            many.len()
        ))),
    }
}

/// Adds the accepted images of `name` to `gallery` (in memory; the caller saves it).
pub fn enroll(
    recognizer: &mut Recognizer,
    gallery: &mut Gallery,
    name: &str,
    candidates: &[Candidate<'_>],
    limits: &FrameConfig,
    lookalike_warning: f32,
    now: &str,
) -> Result<EnrolmentReport, EnrolmentError> {
    let mut verdicts = Vec::new();
    let mut accepted = Vec::new();
    for candidate in candidates {
        match embed_single_face(recognizer, candidate.bytes, limits)? {
            Ok((embedding, face_score)) => {
                verdicts.push((candidate.source.clone(), Verdict::Accepted { face_score }));
                accepted.push((candidate.source.clone(), embedding));
            }
            Err(reason) => verdicts.push((candidate.source.clone(), Verdict::Rejected { reason })),
        }
    }
    if accepted.is_empty() {
        let reasons = verdicts
            .into_iter()
            .filter_map(|(source, verdict)| match verdict {
                Verdict::Rejected { reason } => Some(format!("{source}: {reason}")),
                Verdict::Accepted { .. } => None,
            })
            .collect();
        return Err(EnrolmentError::NothingAccepted {
            name: name.to_string(),
            reasons,
        });
    }
    let lookalike = accepted
        .iter()
        .filter_map(|(_, e)| gallery.best_match_excluding(e, Some(name.trim())))
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .filter(|m| m.score >= lookalike_warning);
    let inconsistent = accepted
        .iter()
        .enumerate()
        .flat_map(|(i, (_, a))| accepted[i + 1..].iter().map(move |(_, b)| a.cosine(b)))
        .min_by(f32::total_cmp)
        .filter(|&lowest| lowest < lookalike_warning);
    for (source, embedding) in accepted {
        gallery.add_sample(
            name,
            Sample {
                source,
                enrolled_at: now.to_string(),
                vector: embedding.as_slice().to_vec(),
            },
        )?;
    }
    Ok(EnrolmentReport {
        verdicts,
        lookalike,
        inconsistent,
    })
}
