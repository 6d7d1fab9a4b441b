//! Enrolment: every image must show exactly one acceptable face; look-alikes of enrolled people are flagged.

use std::path::{Path, PathBuf};

use opencv::core::{Mat, MatTraitConst, Rect, Size};
use opencv::imgproc;

use crate::config::FrameConfig;
use crate::frame::jpeg::EncodeError;
use crate::frame::CheckedImage;
use crate::gallery::{BestMatch, Gallery, GalleryError, Sample};
use crate::recognition::RecognitionError;
use crate::vision::{DetectedFace, Embedding, Recognizer};

/// Side of the square face thumbnail kept per sample for the admin page.
const THUMBNAIL_SIDE: i32 = 96;

/// Where the face thumbnails of enrolled samples live: next to the gallery.
pub fn thumbnail_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("thumbnails")
}

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
    /// JPEG face thumbnails of the accepted samples, by the file name their sample records.
    pub thumbnails: Vec<(String, Vec<u8>)>,
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

/// One acceptable face: its embedding, detector score and a JPEG thumbnail.
pub struct EnrolledFace {
    pub embedding: Embedding,
    pub score: f32,
    pub thumbnail: Vec<u8>,
}

/// The look-alike and consistency warnings of an enrolment, as sentences for the admin.
pub fn warnings(report: &EnrolmentReport, name: &str, threshold: f32) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(other) = &report.lookalike {
        let kind = if other.score >= threshold {
            "would be taken for"
        } else {
            "looks like"
        };
        warnings.push(format!(
            "{name} {kind} {} (similarity {:.2}); check that this is not the same person enrolled twice",
            other.name, other.score
        ));
    }
    if let Some(lowest) = report.inconsistent {
        warnings.push(format!(
            "the accepted photos of {name} differ (lowest similarity {lowest:.2}); check that they all show {name}"
        ));
    }
    warnings
}

/// Checks one image: exactly one face that passes the detector's score and size limits.
pub(crate) fn embed_single_face(
    recognizer: &mut Recognizer,
    bytes: &[u8],
    limits: &FrameConfig,
) -> Result<Result<EnrolledFace, String>, RecognitionError> {
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
            let thumbnail = match face_thumbnail(&decoded.image, face) {
                Ok(thumbnail) => thumbnail,
                Err(err) => return Ok(Err(format!("no thumbnail of the face: {err}"))),
            };
            Ok(Ok(EnrolledFace {
                embedding,
                score: face.score,
                thumbnail,
            }))
        }
        many => Ok(Err(format!(
            "{} faces in the picture: enrolment needs a photo of one person alone",
            many.len()
        ))),
    }
}

/// A square JPEG of the face with a margin around it, `THUMBNAIL_SIDE` pixels wide.
pub fn face_thumbnail(image: &Mat, face: &DetectedFace) -> Result<Vec<u8>, EncodeError> {
    let [x, y, w, h] = face.bbox;
    let side = (w.max(h) * 1.4).max(1.0);
    let (cx, cy) = (x + w / 2.0, y + h / 2.0);
    let (cols, rows) = (image.cols(), image.rows());
    let side = (side as i32).min(cols).min(rows).max(1);
    let left = ((cx - side as f32 / 2.0) as i32).clamp(0, cols - side);
    let top = ((cy - side as f32 / 2.0) as i32).clamp(0, rows - side);
    let crop = Mat::roi(image, Rect::new(left, top, side, side))?;
    let mut small = Mat::default();
    imgproc::resize(
        &crop,
        &mut small,
        Size::new(THUMBNAIL_SIDE, THUMBNAIL_SIDE),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;
    crate::frame::jpeg::encode_bgr(&small, 85)
}

/// A fresh thumbnail file name: random, so that no two samples ever share one.
fn new_thumbnail_name() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.jpg")
}

/// Writes the report's thumbnails into `dir` (before the gallery that names them is saved).
pub fn store_thumbnails(dir: &Path, report: &EnrolmentReport) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, jpeg) in &report.thumbnails {
        std::fs::write(dir.join(name), jpeg)?;
    }
    Ok(())
}

/// Is `name` one of the thumbnail file names enrolment makes (24 hex digits + `.jpg`)?
pub fn is_thumbnail_name(name: &str) -> bool {
    name.strip_suffix(".jpg").is_some_and(|stem| {
        stem.len() == 24 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Deletes the thumbnails of removed samples from `dir` (only file names enrolment makes);
/// a thumbnail that cannot be deleted is logged and left.
pub fn remove_thumbnails<'a>(dir: &Path, samples: impl IntoIterator<Item = &'a Sample>) {
    for file in samples.into_iter().filter_map(|s| s.thumbnail.as_deref()) {
        if is_thumbnail_name(file) {
            if let Err(err) = std::fs::remove_file(dir.join(file)) {
                log::warn!("thumbnail {file} not removed: {err}");
            }
        }
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
            Ok(face) => {
                verdicts.push((
                    candidate.source.clone(),
                    Verdict::Accepted {
                        face_score: face.score,
                    },
                ));
                accepted.push((candidate.source.clone(), face.embedding, face.thumbnail));
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
        .filter_map(|(_, e, _)| gallery.best_match_excluding(e, Some(name.trim())))
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .filter(|m| m.score >= lookalike_warning);
    let inconsistent = accepted
        .iter()
        .enumerate()
        .flat_map(|(i, (_, a, _))| accepted[i + 1..].iter().map(move |(_, b, _)| a.cosine(b)))
        .min_by(f32::total_cmp)
        .filter(|&lowest| lowest < lookalike_warning);
    let mut thumbnails = Vec::new();
    for (source, embedding, jpeg) in accepted {
        let thumbnail = new_thumbnail_name();
        gallery.add_sample(
            name,
            Sample {
                source,
                enrolled_at: now.to_string(),
                vector: embedding.as_slice().to_vec(),
                thumbnail: Some(thumbnail.clone()),
            },
        )?;
        thumbnails.push((thumbnail, jpeg));
    }
    Ok(EnrolmentReport {
        verdicts,
        lookalike,
        inconsistent,
        thumbnails,
    })
}
