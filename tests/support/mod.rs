//! Shared by the integration tests and the accuracy bench: where the fetched models and photos are,
//! the photo list from tests/faces.toml, and the engine (models, recognizer, gallery) built from them.
//! Missing assets fail loudly with the command that fetches them; nothing is ever skipped.

// Each test crate and the bench use a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use chrono::Utc;

use opencv::core::{self as cv, Mat, Point2f, Scalar, Size, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};

use facegate::config::Config;
use facegate::decision::{decide, Decision, Freshness, FreshnessRules, Outcome, Status};
use facegate::enrollment::{self, Candidate, EnrolmentReport};
use facegate::frame::CheckedImage;
use facegate::gallery::{EmbedderId, Gallery};
use facegate::recognition::{recognize_image, Recognition, RecognitionError};
use facegate::vision::{PipelineModels, Recognizer};

pub const FETCH_HINT: &str = "run `FACEGATE_MIRROR=/work/shared scripts/fetch-assets` (or plain \
    `scripts/fetch-assets` with internet access), or point FACEGATE_ASSETS at a directory holding \
    models/ and faces/";

/// A fixed enrolment time, so galleries built by the tests are reproducible.
pub const ENROLLED_AT: &str = "2026-01-01T00:00:00Z";

/// The assets directory: env `FACEGATE_ASSETS`, else `<crate>/assets`. Panics (never skips) when the
/// models or photos are not there.
pub fn assets_dir() -> PathBuf {
    let dir = std::env::var_os("FACEGATE_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"));
    for sub in ["models", "faces"] {
        assert!(
            dir.join(sub).is_dir(),
            "the test assets are missing: {} does not exist. These tests need the real models and photos: {FETCH_HINT}",
            dir.join(sub).display()
        );
    }
    dir
}

pub fn faces_dir() -> PathBuf {
    assets_dir().join("faces")
}

/// The production defaults, with the models taken from the assets directory, and liveness off: the
/// photo set is web photos, mostly tight crops, which are no fair liveness test (docs/accuracy.md);
/// liveness has its own tests, on `Engine::with_liveness`.
pub fn config() -> Config {
    let mut config = Config {
        models_dir: assets_dir().join("models"),
        ..Config::default()
    };
    config.liveness.enabled = false;
    config
}

/// Reads a photo by its path under faces/ (as in tests/faces.toml).
pub fn photo(relative: &str) -> Vec<u8> {
    let path = faces_dir().join(relative);
    std::fs::read(&path).unwrap_or_else(|err| {
        panic!(
            "test photo {} is missing or unreadable ({err}): {FETCH_HINT}",
            path.display()
        )
    })
}

/// One `[[photo]]` entry of tests/faces.toml.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PinnedPhoto {
    pub path: String,
    pub faces_640: usize,
}

#[derive(serde::Deserialize)]
struct FacesManifest {
    photo: Vec<PinnedPhoto>,
}

/// Every photo tests/faces.toml pins, each checked to be present in the assets directory.
pub fn pinned_photos() -> &'static [PinnedPhoto] {
    static PHOTOS: OnceLock<Vec<PinnedPhoto>> = OnceLock::new();
    PHOTOS.get_or_init(|| {
        let manifest_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faces.toml");
        let text = std::fs::read_to_string(&manifest_path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", manifest_path.display()));
        let manifest: FacesManifest = toml::from_str(&text)
            .unwrap_or_else(|err| panic!("{} is not valid: {err}", manifest_path.display()));
        let faces = faces_dir();
        let missing: Vec<&str> = manifest
            .photo
            .iter()
            .filter(|p| !faces.join(&p.path).is_file())
            .map(|p| p.path.as_str())
            .collect();
        assert!(
            missing.is_empty(),
            "{} pinned test photos are missing from {} (first: {}): {FETCH_HINT}",
            missing.len(),
            faces.display(),
            missing.first().unwrap_or(&"")
        );
        manifest.photo
    })
}

/// The faces_640 count tests/faces.toml records for one photo.
pub fn pinned_face_count(relative: &str) -> usize {
    pinned_photos()
        .iter()
        .find(|p| p.path == relative)
        .unwrap_or_else(|| panic!("{relative} is not pinned in tests/faces.toml"))
        .faces_640
}

/// Photos of one `_category/` folder (e.g. `_noface`), sorted by path.
pub fn category(name: &str) -> Vec<String> {
    let prefix = format!("{name}/");
    let mut paths: Vec<String> = pinned_photos()
        .iter()
        .filter(|p| p.path.starts_with(&prefix))
        .map(|p| p.path.clone())
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "tests/faces.toml pins no photo under {prefix}"
    );
    paths
}

/// The identities (folders not starting with `_`), each with its photo paths sorted by file name.
pub fn people() -> BTreeMap<String, Vec<String>> {
    let mut people: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for photo in pinned_photos() {
        let (folder, _) = photo
            .path
            .split_once('/')
            .unwrap_or_else(|| panic!("{} has no folder", photo.path));
        if !folder.starts_with('_') {
            people
                .entry(folder.to_string())
                .or_default()
                .push(photo.path.clone());
        }
    }
    for paths in people.values_mut() {
        paths.sort();
    }
    people
}

/// The person folder a photo path belongs to.
pub fn person_of(relative: &str) -> &str {
    relative
        .split_once('/')
        .map_or(relative, |(folder, _)| folder)
}

pub fn file_name(relative: &str) -> &str {
    relative.rsplit('/').next().unwrap_or(relative)
}

/// Models resolved and verified once per test binary (hashing them is the slow part).
pub struct Engine {
    pub config: Config,
    pub models: PipelineModels,
    pub threshold: f32,
}

impl Engine {
    /// The default pipeline with liveness off (see `config`).
    pub fn get() -> &'static Engine {
        static ENGINE: OnceLock<Engine> = OnceLock::new();
        ENGINE.get_or_init(|| Engine::load(config()))
    }

    /// The default pipeline with liveness on, as shipped.
    pub fn with_liveness() -> &'static Engine {
        static ENGINE: OnceLock<Engine> = OnceLock::new();
        ENGINE.get_or_init(|| {
            let mut config = config();
            config.liveness.enabled = true;
            Engine::load(config)
        })
    }

    fn load(config: Config) -> Engine {
        let models = PipelineModels::resolve(&config.recognition, &config.models_dir)
            .and_then(|models| models.with_liveness(&config.liveness))
            .unwrap_or_else(|err| {
                panic!(
                    "the models in {} are not usable: {err}. {FETCH_HINT}",
                    config.models_dir.display()
                )
            });
        let threshold = models.threshold(&config.recognition);
        Engine {
            config,
            models,
            threshold,
        }
    }

    /// A fresh worker: its own detector and embedder.
    pub fn recognizer(&self) -> Recognizer {
        Recognizer::load(&self.models, &self.config.recognition)
            .unwrap_or_else(|err| panic!("the models did not load: {err}"))
    }

    pub fn embedder_id(&self) -> EmbedderId {
        EmbedderId::of(&self.models.embedder)
    }

    /// MobileFaceNet in the smallest rewrite OpenCV 4.6 loads, without the widening of its narrow
    /// depthwise convolutions (`scripts/derive-mobilefacenet-opencv46 --loadable-only`), written into
    /// `dir` from the upstream file that sits beside the shipped embedder.
    pub fn loadable_only_embedder(&self, dir: &Path) -> PathBuf {
        let upstream = self
            .models
            .embedder
            .path
            .with_file_name("mobilefacenet_foamliu.onnx");
        let loadable = dir.join("mobilefacenet_foamliu_loadable_only.onnx");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/derive-mobilefacenet-opencv46");
        let derived = std::process::Command::new(&script)
            .arg("--loadable-only")
            .arg(&upstream)
            .arg(&loadable)
            .output()
            .unwrap_or_else(|err| panic!("{} did not run: {err}", script.display()));
        assert!(
            derived.status.success(),
            "{} --loadable-only {} failed: {}",
            script.display(),
            upstream.display(),
            String::from_utf8_lossy(&derived.stderr)
        );
        loadable
    }

    pub fn empty_gallery(&self) -> Gallery {
        Gallery::new(self.embedder_id())
    }

    /// Runs the production path on encoded image bytes at the configured threshold.
    pub fn try_recognize(
        &self,
        recognizer: &mut Recognizer,
        gallery: &Gallery,
        bytes: &[u8],
    ) -> Result<Recognition, RecognitionError> {
        let image = CheckedImage::check(bytes.to_vec(), &self.config.frame)
            .map_err(|refused| RecognitionError::Frame(refused.error))?;
        recognize_image(recognizer, gallery, &image, self.threshold)
    }

    /// As `try_recognize` on a pinned photo, which must decode.
    pub fn recognize(
        &self,
        recognizer: &mut Recognizer,
        gallery: &Gallery,
        relative: &str,
    ) -> Recognition {
        self.try_recognize(recognizer, gallery, &photo(relative))
            .unwrap_or_else(|err| panic!("{relative}: recognition failed: {err}"))
    }

    /// Enrols `name` from pinned photos with the configured look-alike level.
    pub fn enrol(
        &self,
        recognizer: &mut Recognizer,
        gallery: &mut Gallery,
        name: &str,
        relatives: &[&str],
    ) -> Result<EnrolmentReport, enrollment::EnrolmentError> {
        let contents: Vec<Vec<u8>> = relatives.iter().map(|r| photo(r)).collect();
        let candidates: Vec<Candidate> = relatives
            .iter()
            .zip(&contents)
            .map(|(relative, bytes)| Candidate {
                source: file_name(relative).to_string(),
                bytes,
            })
            .collect();
        enrollment::enroll(
            recognizer,
            gallery,
            name,
            &candidates,
            &self.config.frame,
            self.config.recognition.lookalike_warning,
            ENROLLED_AT,
        )
    }

    /// Enrols each named person from the first of their photos (by file name).
    pub fn gallery_of_first_photos<'a>(
        &self,
        recognizer: &mut Recognizer,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Gallery {
        let people = people();
        let mut gallery = self.empty_gallery();
        for name in names {
            let first = people
                .get(name)
                .and_then(|paths| paths.first())
                .unwrap_or_else(|| panic!("no photos of {name}"));
            let report = self
                .enrol(recognizer, &mut gallery, name, &[first])
                .unwrap_or_else(|err| panic!("enrolling {name} from {first} failed: {err}"));
            assert_eq!(report.accepted(), 1, "{first}: {:?}", report.verdicts);
        }
        gallery
    }

    /// Enrols each named person from all of their photos; photos enrolment rejects are left out.
    pub fn gallery_of_all_photos<'a>(
        &self,
        recognizer: &mut Recognizer,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Gallery {
        let people = people();
        let mut gallery = self.empty_gallery();
        for name in names {
            let paths: Vec<&str> = people
                .get(name)
                .unwrap_or_else(|| panic!("no photos of {name}"))
                .iter()
                .map(String::as_str)
                .collect();
            self.enrol(recognizer, &mut gallery, name, &paths)
                .unwrap_or_else(|err| panic!("enrolling {name} failed: {err}"));
        }
        gallery
    }
}

/// The decision production takes on a fresh frame (age zero) with this outcome.
pub fn decide_fresh(outcome: &Outcome) -> Decision {
    let now = Instant::now();
    let rules = FreshnessRules::of(&Config::default().door);
    decide(
        outcome,
        Freshness::of_frame(now, Utc::now(), None, rules),
        now,
    )
}

pub fn status(outcome: &Outcome) -> Status {
    decide_fresh(outcome).status
}

/// A pinned photo's pixels, as OpenCV decodes them (BGR).
pub fn photo_pixels(relative: &str) -> Mat {
    let bytes = Vector::<u8>::from_slice(&photo(relative));
    imgcodecs::imdecode(&bytes, imgcodecs::IMREAD_COLOR).expect("a pinned photo decodes")
}

/// Scales the image to fit `width`x`height` and pads it with black, as a camera frame.
pub fn letterbox(image: &Mat, (width, height): (i32, i32)) -> Mat {
    let scale = (f64::from(width) / f64::from(image.cols()))
        .min(f64::from(height) / f64::from(image.rows()));
    let w = ((f64::from(image.cols()) * scale).round() as i32).clamp(1, width);
    let h = ((f64::from(image.rows()) * scale).round() as i32).clamp(1, height);
    let interpolation = if scale < 1.0 {
        imgproc::INTER_AREA
    } else {
        imgproc::INTER_LINEAR
    };
    let mut resized = Mat::default();
    imgproc::resize(
        image,
        &mut resized,
        Size::new(w, h),
        0.0,
        0.0,
        interpolation,
    )
    .expect("resize");
    let (left, top) = ((width - w) / 2, (height - h) / 2);
    let mut framed = Mat::default();
    cv::copy_make_border(
        &resized,
        &mut framed,
        top,
        height - h - top,
        left,
        width - w - left,
        cv::BORDER_CONSTANT,
        Scalar::all(0.0),
    )
    .expect("pad");
    framed
}

/// The decoded frame turned by `degrees` (counter-clockwise as seen), on a canvas grown to hold all of it.
pub fn turned(image: &Mat, degrees: f64) -> Mat {
    let (w, h) = (f64::from(image.cols()), f64::from(image.rows()));
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (new_w, new_h) = (w * cos.abs() + h * sin.abs(), w * sin.abs() + h * cos.abs());
    let centre = Point2f::new((w / 2.0) as f32, (h / 2.0) as f32);
    let mut matrix = imgproc::get_rotation_matrix_2d(centre, degrees, 1.0).expect("rotation");
    *matrix.at_2d_mut::<f64>(0, 2).expect("matrix") += (new_w - w) / 2.0;
    *matrix.at_2d_mut::<f64>(1, 2).expect("matrix") += (new_h - h) / 2.0;
    let mut out = Mat::default();
    imgproc::warp_affine(
        image,
        &mut out,
        &matrix,
        Size::new(new_w.round() as i32, new_h.round() as i32),
        imgproc::INTER_LINEAR,
        cv::BORDER_CONSTANT,
        Scalar::all(0.0),
    )
    .expect("warp");
    out
}

/// A Y4M clip (YUV4MPEG2, 4:2:0, two frames at 10 fps) of `frame` (BGR, even sides), written to
/// `dir/<name>.y4m`: Chromium's fake capture device plays it, in a loop, as the camera
/// (`--use-file-for-fake-video-capture`).
pub fn camera_clip(dir: &Path, name: &str, frame: &Mat) -> PathBuf {
    let mut i420 = Mat::default();
    imgproc::cvt_color(frame, &mut i420, imgproc::COLOR_BGR2YUV_I420, 0).expect("BGR to I420");
    let planes = i420.data_bytes().expect("a continuous I420 frame");
    let mut clip = format!(
        "YUV4MPEG2 W{} H{} F10:1 Ip A1:1 C420jpeg\n",
        frame.cols(),
        frame.rows()
    )
    .into_bytes();
    for _ in 0..2 {
        clip.extend_from_slice(b"FRAME\n");
        clip.extend_from_slice(planes);
    }
    let path = dir.join(format!("{name}.y4m"));
    std::fs::write(&path, clip).expect("clip written");
    path
}

/// `relative` as a camera sees it at the door: letterboxed into a `size` frame.
pub fn door_view(relative: &str, size: (i32, i32)) -> Mat {
    letterbox(&photo_pixels(relative), size)
}
