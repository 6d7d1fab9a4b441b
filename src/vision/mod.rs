//! The face pipeline of one worker: detect → (straighten) → align → embed, and liveness on request.
//! It holds model weights and nothing else, so every call starts from the frame alone.

pub mod align;
pub mod detect;
pub mod embed;
pub mod liveness;
pub mod tilt;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use opencv::core::Mat;
use opencv::prelude::MatTraitConst;

use crate::config::{LivenessConfig, RecognitionConfig, AUTO_DETECTOR};
use crate::models::{DetectorContract, EmbedderContract, Manifest, ModelError, ResolvedModel};
pub use detect::DetectedFace;
pub use embed::Embedding;
pub use liveness::LivenessReading;

/// Why the pipeline could not run. These are the daemon's faults (5xx), not the sender's.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("model `{model}` at {path} could not be loaded by OpenCV: {cause}. Check that the file is the pinned one (scripts/fetch-assets) and that OpenCV is 4.6 or newer")]
    ModelLoad {
        model: String,
        path: PathBuf,
        cause: String,
    },
    #[error("model `{model}` returned {actual} values, its manifest says {expected}: the manifest and the model file disagree")]
    OutputShape {
        model: String,
        expected: usize,
        actual: usize,
    },
    #[error("the face landmarks are degenerate (all in one point), so the face cannot be aligned")]
    DegenerateLandmarks,
    #[error("the embedder returned an all-zero or non-finite vector")]
    DegenerateEmbedding,
    #[error("OpenCV failed: {0}")]
    OpenCv(#[from] opencv::Error),
}

/// YuNet 2022mar's outputs are what OpenCV before 4.8 decodes; 4.8 and later expect 2023mar's.
pub(crate) fn detector_for_opencv((major, minor): (i32, i32)) -> &'static str {
    if (major, minor) >= (4, 8) {
        "yunet_2023mar"
    } else {
        "yunet_2022mar"
    }
}

pub fn opencv_version() -> (i32, i32) {
    (
        opencv::core::get_version_major(),
        opencv::core::get_version_minor(),
    )
}

/// The models of the pipeline, resolved from the manifest and checked against their pins.
#[derive(Debug, Clone)]
pub struct PipelineModels {
    pub detector: ResolvedModel<DetectorContract>,
    pub embedder: ResolvedModel<EmbedderContract>,
    /// Only after `with_liveness` with `liveness.enabled`.
    pub liveness: Option<liveness::LivenessModels>,
}

impl PipelineModels {
    pub fn resolve(
        settings: &RecognitionConfig,
        models_dir: &Path,
    ) -> Result<PipelineModels, ModelError> {
        let manifest = Manifest::builtin();
        let detector = match settings.detector.as_str() {
            AUTO_DETECTOR => detector_for_opencv(opencv_version()),
            named => named,
        };
        let embedder = settings.embedder.as_str();
        // Resolved against an empty directory, the paths are the manifest's file names.
        let files = [
            manifest.detector(detector, Path::new(""))?.path,
            manifest.embedder(embedder, Path::new(""))?.path,
        ];
        let files: Vec<&str> = files.iter().filter_map(|f| f.to_str()).collect();
        let dirs = crate::models::search_dirs(
            models_dir,
            &crate::config::Config::default().models_dir,
            std::env::current_dir().ok().as_deref(),
            std::env::current_exe().ok().as_deref(),
        );
        let dir = crate::models::locate(&files, &dirs)?;
        if dir != models_dir {
            log::info!(
                "models_dir {} has no models; using {} (a checkout's assets/models)",
                models_dir.display(),
                dir.display()
            );
        }
        let models = PipelineModels {
            detector: manifest.detector(detector, &dir)?,
            embedder: manifest.embedder(embedder, &dir)?,
            liveness: None,
        };
        models.detector.verify()?;
        models.embedder.verify()?;
        Ok(models)
    }

    /// Adds the liveness models (resolved next to the detector, and verified) when `settings.enabled`;
    /// recognition alone (enrolment, gallery tools) never needs them.
    pub fn with_liveness(self, settings: &LivenessConfig) -> Result<PipelineModels, ModelError> {
        let liveness = if settings.enabled {
            let dir = self.detector.path.parent().unwrap_or(Path::new(""));
            Some(liveness::LivenessModels::resolve(
                &Manifest::builtin(),
                dir,
                settings.min_face_px,
            )?)
        } else {
            None
        };
        Ok(PipelineModels { liveness, ..self })
    }

    /// The threshold in force: the config's, else the embedder's manifest default.
    pub fn threshold(&self, settings: &RecognitionConfig) -> f32 {
        settings
            .threshold
            .unwrap_or(self.embedder.contract.threshold)
    }
}

/// The face the decision is about, with the other faces counted.
#[derive(Debug, Clone)]
pub struct FaceReading {
    pub face: DetectedFace,
    pub embedding: Embedding,
}

/// What the pipeline saw in one frame, and how long each stage took.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// The largest (closest) face, embedded; `None` when no face was found.
    pub primary: Option<FaceReading>,
    pub faces: usize,
    pub detect_ms: f64,
    pub align_ms: f64,
    pub embed_ms: f64,
}

/// One worker's detector and embedder, and (when their models were resolved) the liveness classifiers
/// it shares with the other workers.
pub struct Recognizer {
    detector: detect::Detector,
    straightener: tilt::Straightener,
    embedder: embed::Embedder,
    liveness: Option<SharedLiveness>,
}

/// One set of liveness classifiers for all workers: each copy of the two networks costs about 8 MiB,
/// and they run only on recognised faces, for a few milliseconds (docs/performance.md, "Memory"). The
/// networks keep nothing from one call to the next, so a worker that panicked inside them leaves them
/// usable: a poisoned lock is taken over, not refused.
type SharedLiveness = Arc<Mutex<liveness::LivenessChecker>>;

impl Recognizer {
    /// One recognizer, with liveness classifiers of its own when its models were resolved.
    pub fn load(models: &PipelineModels, r: &RecognitionConfig) -> Result<Recognizer, VisionError> {
        let liveness = Self::load_liveness(models)?;
        Recognizer::load_sharing(models, r, liveness)
    }

    /// `count` recognizers for the daemon's workers, each with a detector and an embedder of its own
    /// and one set of liveness classifiers between them.
    pub fn load_workers(
        models: &PipelineModels,
        r: &RecognitionConfig,
        count: usize,
    ) -> Result<Vec<Recognizer>, VisionError> {
        let liveness = Self::load_liveness(models)?;
        (0..count)
            .map(|_| Recognizer::load_sharing(models, r, liveness.clone()))
            .collect()
    }

    fn load_liveness(models: &PipelineModels) -> Result<Option<SharedLiveness>, VisionError> {
        models
            .liveness
            .as_ref()
            .map(|liveness_models| {
                liveness::LivenessChecker::load(liveness_models)
                    .map(|checker| Arc::new(Mutex::new(checker)))
            })
            .transpose()
    }

    fn load_sharing(
        models: &PipelineModels,
        r: &RecognitionConfig,
        liveness: Option<SharedLiveness>,
    ) -> Result<Recognizer, VisionError> {
        let settings = detect::DetectSettings {
            max_side: r.detect_max_side,
            score_threshold: r.detect_score_threshold,
            min_face_px: r.min_face_px,
            coarse_side: r.coarse_detect_side,
            coarse_face_share: r.coarse_face_share,
        };
        let upright_detector = detect::Detector::load(
            &models.detector,
            tilt::Straightener::settings(r.detect_score_threshold),
        )?;
        Ok(Recognizer {
            detector: detect::Detector::load(&models.detector, settings)?,
            straightener: tilt::Straightener::new(upright_detector, r.max_roll_deg),
            embedder: embed::Embedder::load(&models.embedder)?,
            liveness,
        })
    }

    /// Detects the faces of a frame decoded at full size and embeds the largest:
    /// [`Recognizer::look_finer`] without a finer image.
    pub fn look(&mut self, frame: &Mat) -> Result<Sighting, VisionError> {
        self.look_finer(frame, || None)
    }

    /// Detects the faces (a quick pass may do when one face is large: see
    /// [`detect::Detector::detect_for_largest`]), then straightens, aligns and embeds the largest one.
    /// When `frame` was decoded reduced and that face is too small to fill the embedder's crop without
    /// enlarging it, `finer` is asked for the same frame decoded larger, and the face is aligned from
    /// that (its time counts as align).
    pub fn look_finer(
        &mut self,
        frame: &Mat,
        finer: impl FnOnce() -> Option<Mat>,
    ) -> Result<Sighting, VisionError> {
        let started = Instant::now();
        let faces = self.detector.detect_for_largest(frame)?;
        let detect_ms = elapsed_ms(started);
        let Some(largest) = faces.first().cloned() else {
            return Ok(Sighting {
                primary: None,
                faces: 0,
                detect_ms,
                align_ms: 0.0,
                embed_ms: 0.0,
            });
        };
        let started = Instant::now();
        let largest = self.straightener.straighten(frame, &largest)?;
        let crop = self.align(frame, &largest, finer)?;
        let align_ms = elapsed_ms(started);
        let started = Instant::now();
        let embedding = self.embedder.embed(&crop)?;
        let embed_ms = elapsed_ms(started);
        Ok(Sighting {
            primary: Some(FaceReading {
                face: largest,
                embedding,
            }),
            faces: faces.len(),
            detect_ms,
            align_ms,
            embed_ms,
        })
    }

    /// Every face in the frame, for enrolment's "exactly one face" rule.
    pub fn detect_all(&mut self, frame: &Mat) -> Result<Vec<DetectedFace>, VisionError> {
        self.detector.detect(frame)
    }

    /// Aligns (straightening a tilted head first) and embeds one chosen face of a frame decoded at
    /// full size.
    pub fn embed_face(
        &mut self,
        frame: &Mat,
        face: &DetectedFace,
    ) -> Result<Embedding, VisionError> {
        self.embed_face_finer(frame, face, || None)
    }

    /// As [`Recognizer::embed_face`], for a frame that may have been decoded reduced: a face too
    /// small for the crop is aligned from `finer()`, as [`Recognizer::look`] does.
    pub fn embed_face_finer(
        &mut self,
        frame: &Mat,
        face: &DetectedFace,
        finer: impl FnOnce() -> Option<Mat>,
    ) -> Result<Embedding, VisionError> {
        let face = self.straightener.straighten(frame, face)?;
        let crop = self.align(frame, &face, finer)?;
        self.embedder.embed(&crop)
    }

    /// The embedder's crop of `face`, from `frame` or, when that would enlarge the face, from
    /// `finer()` (the same frame decoded larger) if there is one.
    fn align(
        &self,
        frame: &Mat,
        face: &DetectedFace,
        finer: impl FnOnce() -> Option<Mat>,
    ) -> Result<Mat, VisionError> {
        let side = self.embedder.input_size();
        let larger = if align::enlarges(&face.landmarks, side) {
            finer()
        } else {
            None
        };
        match larger {
            Some(image) => {
                let ratio = image.cols() as f32 / frame.cols().max(1) as f32;
                let landmarks = face.landmarks.map(|[x, y]| [x * ratio, y * ratio]);
                align::align_face(&image, &landmarks, side)
            }
            None => align::align_face(frame, &face.landmarks, side),
        }
    }

    /// Judges whether `face` in `frame` (the decoded frame its coordinates refer to) is a live person;
    /// `None` when liveness is off.
    pub fn check_liveness(
        &mut self,
        frame: &Mat,
        face: &DetectedFace,
    ) -> Result<Option<LivenessReading>, VisionError> {
        match &self.liveness {
            Some(shared) => shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .check(frame, face)
                .map(Some),
            None => Ok(None),
        }
    }
}

/// Loads an ONNX model onto OpenCV's CPU backend.
pub(crate) fn load_onnx<C>(model: &ResolvedModel<C>) -> Result<opencv::dnn::Net, VisionError> {
    use opencv::dnn::{self, NetTrait};
    let mut net = dnn::read_net_from_onnx(&model.path.to_string_lossy())
        .map_err(|err| load_error(model, err.to_string()))?;
    net.set_preferable_backend(dnn::DNN_BACKEND_OPENCV)?;
    net.set_preferable_target(dnn::DNN_TARGET_CPU)?;
    Ok(net)
}

/// A mid-grey BGR square for the test inference every network gets at load.
pub(crate) fn grey_probe(side: i32) -> Result<Mat, VisionError> {
    Ok(Mat::new_rows_cols_with_default(
        side,
        side,
        opencv::core::CV_8UC3,
        opencv::core::Scalar::all(128.0),
    )?)
}

/// `model` could not be loaded (or failed its test inference) for `cause`.
pub(crate) fn load_error<C>(model: &ResolvedModel<C>, cause: String) -> VisionError {
    VisionError::ModelLoad {
        model: model.name.clone(),
        path: model.path.clone(),
        cause,
    }
}

pub fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_detector_follows_the_opencv_release() {
        assert_eq!(detector_for_opencv((4, 6)), "yunet_2022mar");
        assert_eq!(detector_for_opencv((4, 7)), "yunet_2022mar");
        assert_eq!(detector_for_opencv((4, 8)), "yunet_2023mar");
        assert_eq!(detector_for_opencv((4, 10)), "yunet_2023mar");
        assert_eq!(detector_for_opencv((5, 0)), "yunet_2023mar");
    }
}
