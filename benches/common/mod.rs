//! Shared by the pipeline and http_load benches: the photo set made into camera-size and 8K JPEGs in
//! memory, the "floor" (YuNet's detect call on the shrunk frame plus the embedder's forward pass, nothing
//! else), and small statistics helpers. Benches print figures; nothing here asserts a timing.

// Each bench uses a different subset of these helpers.
#![allow(dead_code)]

pub mod http;

use std::time::Instant;

use opencv::core::{self as cv, Mat, Ptr, Scalar, Size, Vector, CV_32F};
use opencv::objdetect::{FaceDetectorYN, FaceDetectorYNTrait};
use opencv::prelude::*;
use opencv::{dnn, imgcodecs, imgproc};

use facegate::config::Config;
use facegate::frame;
use facegate::models::ChannelOrder;
use facegate::vision::detect::shrink_factor;
use facegate::vision::{align, PipelineModels, Recognizer};

use crate::support;

pub const CAMERA: (i32, i32) = (640, 480);
pub const EIGHT_K: (i32, i32) = (7680, 4320);

/// One test photo made into a frame as a tablet would send it.
pub struct TestFrame {
    pub name: String,
    pub jpeg: Vec<u8>,
}

/// A baseline JPEG at quality 90, as camera apps send.
pub fn jpeg(image: &Mat) -> Vec<u8> {
    let mut out = Vector::<u8>::new();
    let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, 90]);
    imgcodecs::imencode(".jpg", image, &mut out, &params).expect("encode");
    out.to_vec()
}

/// The photos of the 20 identities (every `step`-th one), letterboxed to `size` and JPEG-encoded.
pub fn frames(size: (i32, i32), step: usize) -> Vec<TestFrame> {
    support::people()
        .into_values()
        .flatten()
        .step_by(step)
        .map(|path| TestFrame {
            jpeg: jpeg(&support::letterbox(&support::photo_pixels(&path), size)),
            name: path,
        })
        .collect()
}

/// A door tablet's frame: 1280x720, one person standing close, so that the face box is this share of
/// the frame's height (about 50 cm from a tablet camera with a 43 degree vertical field of view).
pub const DOOR: (i32, i32) = (1280, 720);
pub const DOOR_FACE_SHARE: f64 = 0.45;
/// Standard deviation of the sensor noise added to door frames, in 8-bit levels: web photos upscaled
/// are smoother than a camera's frames, and PNG's size (so its decode time) depends on that.
pub const DOOR_NOISE: f64 = 2.0;

/// One photo made into a door frame, encoded as the tablet sends it (PNG, OpenCV's default
/// `imencode(".png")`: zlib level 1, RLE strategy, SUB filter) and as a JPEG at quality 90.
pub struct DoorFrame {
    pub name: String,
    pub png: Vec<u8>,
    pub jpeg: Vec<u8>,
    /// How much the photo was scaled to make the face large (above 1: enlarged).
    pub scale: f64,
}

/// Every `step`-th photo of the 20 identities in which the detector finds a face, cut and scaled so that
/// its largest face fills a door camera's view: face box height `DOOR_FACE_SHARE` of 720, face centred
/// a little above the middle, the photo mirrored at its edges where it does not cover the frame.
pub fn door_frames(recognizer: &mut Recognizer, step: usize) -> Vec<DoorFrame> {
    let (width, height) = DOOR;
    support::people()
        .into_values()
        .flatten()
        .step_by(step)
        .enumerate()
        .filter_map(|(i, path)| {
            let photo = support::photo_pixels(&path);
            let faces = recognizer.detect_all(&photo).expect("detect");
            let face = faces.first()?;
            let [x, y, w, h] = face.bbox.map(f64::from);
            let scale = DOOR_FACE_SHARE * f64::from(height) / h;
            let (cx, cy) = (x + w / 2.0, y + h / 2.0);
            let matrix = Mat::from_slice_2d(&[
                [scale, 0.0, f64::from(width) / 2.0 - scale * cx],
                [0.0, scale, 0.46 * f64::from(height) - scale * cy],
            ])
            .expect("matrix");
            // Shrink large photos with area averaging first; warpAffine alone would alias.
            let (source, matrix) = if scale < 0.5 {
                let mut shrunk = Mat::default();
                imgproc::resize(
                    &photo,
                    &mut shrunk,
                    Size::new(0, 0),
                    scale,
                    scale,
                    imgproc::INTER_AREA,
                )
                .expect("resize");
                let shift = Mat::from_slice_2d(&[
                    [1.0, 0.0, f64::from(width) / 2.0 - scale * cx],
                    [0.0, 1.0, 0.46 * f64::from(height) - scale * cy],
                ])
                .expect("matrix");
                (shrunk, shift)
            } else {
                (photo, matrix)
            };
            let mut framed = Mat::default();
            imgproc::warp_affine(
                &source,
                &mut framed,
                &matrix,
                Size::new(width, height),
                imgproc::INTER_LINEAR,
                cv::BORDER_REFLECT_101,
                Scalar::all(0.0),
            )
            .expect("warp");
            let noisy = with_noise(&framed, 0x5eed + i as u64);
            let mut png = Vector::<u8>::new();
            imgcodecs::imencode(".png", &noisy, &mut png, &Vector::new()).expect("encode png");
            Some(DoorFrame {
                jpeg: jpeg(&noisy),
                png: png.to_vec(),
                name: path,
                scale,
            })
        })
        .collect()
}

/// Adds reproducible Gaussian sensor noise (`DOOR_NOISE`) to an 8-bit BGR image.
fn with_noise(image: &Mat, seed: u64) -> Mat {
    cv::set_rng_seed(seed as i32).expect("seed");
    let mut noise =
        Mat::new_rows_cols_with_default(image.rows(), image.cols(), cv::CV_16SC3, Scalar::all(0.0))
            .expect("noise");
    cv::randn(&mut noise, &Scalar::all(0.0), &Scalar::all(DOOR_NOISE)).expect("randn");
    let mut wide = Mat::default();
    image
        .convert_to(&mut wide, cv::CV_16SC3, 1.0, 0.0)
        .expect("widen");
    let mut sum = Mat::default();
    cv::add(&wide, &noise, &mut sum, &cv::no_array(), -1).expect("add");
    let mut out = Mat::default();
    sum.convert_to(&mut out, cv::CV_8UC3, 1.0, 0.0)
        .expect("narrow");
    out
}

/// The detector and the embedder as bare OpenCV objects, to time their own work and nothing around it.
pub struct Floor {
    config: Config,
    yunet: Ptr<FaceDetectorYN>,
    net: dnn::Net,
    input_size: i32,
    mean: Scalar,
    scale: f64,
    swap_rb: bool,
    recognizer: Recognizer,
}

/// The floor of one frame: YuNet's detect call, plus the embedder's forward pass when there is a face.
#[derive(Debug, Clone, Copy)]
pub struct FloorTiming {
    pub detect_ms: f64,
    pub forward_ms: f64,
}

impl FloorTiming {
    pub fn total_ms(&self) -> f64 {
        self.detect_ms + self.forward_ms
    }
}

impl Floor {
    pub fn load(config: &Config, models: &PipelineModels) -> Floor {
        let detector = &models.detector;
        let yunet = FaceDetectorYN::create(
            &detector.path.to_string_lossy(),
            "",
            Size::new(320, 320),
            config.recognition.detect_score_threshold,
            detector.contract.nms_threshold,
            detector.contract.top_k,
            0,
            0,
        )
        .expect("YuNet loads");
        let embedder = &models.embedder;
        let mut net =
            dnn::read_net_from_onnx(&embedder.path.to_string_lossy()).expect("embedder loads");
        net.set_preferable_backend(dnn::DNN_BACKEND_OPENCV)
            .expect("backend");
        net.set_preferable_target(dnn::DNN_TARGET_CPU)
            .expect("target");
        let c = &embedder.contract;
        Floor {
            config: config.clone(),
            yunet,
            net,
            input_size: c.input_size,
            mean: Scalar::new(
                f64::from(c.mean[0]),
                f64::from(c.mean[1]),
                f64::from(c.mean[2]),
                0.0,
            ),
            scale: 1.0 / f64::from((c.std[0] + c.std[1] + c.std[2]) / 3.0),
            swap_rb: c.color == ChannelOrder::Rgb,
            recognizer: Recognizer::load(models, &config.recognition).expect("models load"),
        }
    }

    /// Times the two forward passes on one encoded frame; decoding, shrinking, aligning and blob
    /// making happen outside the timed spans.
    pub fn measure(&mut self, jpeg: &[u8]) -> FloorTiming {
        let decoded = frame::decode_image(jpeg, &self.config.frame).expect("frame decodes");
        let image = decoded.image;
        let scale = shrink_factor(
            image.cols(),
            image.rows(),
            self.config.recognition.detect_max_side,
        );
        let shrunk = if scale < 1.0 {
            let size = Size::new(
                ((image.cols() as f32 * scale).round() as i32).max(1),
                ((image.rows() as f32 * scale).round() as i32).max(1),
            );
            let mut resized = Mat::default();
            imgproc::resize(&image, &mut resized, size, 0.0, 0.0, imgproc::INTER_AREA)
                .expect("resize");
            resized
        } else {
            image.clone()
        };
        self.yunet
            .set_input_size(shrunk.size().expect("size"))
            .expect("input size");
        let mut rows = Mat::default();
        let started = Instant::now();
        self.yunet.detect(&shrunk, &mut rows).expect("detect");
        let detect_ms = elapsed_ms(started);

        let faces = self.recognizer.detect_all(&image).expect("detect");
        let Some(face) = faces.first() else {
            return FloorTiming {
                detect_ms,
                forward_ms: 0.0,
            };
        };
        let crop = align::align_face(&image, &face.landmarks, self.input_size).expect("align");
        let blob = dnn::blob_from_image(
            &crop,
            self.scale,
            Size::new(self.input_size, self.input_size),
            self.mean,
            self.swap_rb,
            false,
            CV_32F,
        )
        .expect("blob");
        let started = Instant::now();
        self.net
            .set_input(&blob, "", 1.0, Scalar::default())
            .expect("input");
        self.net.forward_single("").expect("forward");
        let forward_ms = elapsed_ms(started);
        FloorTiming {
            detect_ms,
            forward_ms,
        }
    }

    /// Per-frame floor, best of `runs` (the floor is what the models cannot go below).
    pub fn per_frame(&mut self, frames: &[TestFrame], runs: usize) -> Vec<FloorTiming> {
        frames
            .iter()
            .map(|f| {
                (0..runs)
                    .map(|_| self.measure(&f.jpeg))
                    .min_by(|a, b| a.total_ms().total_cmp(&b.total_ms()))
                    .expect("at least one run")
            })
            .collect()
    }
}

/// OpenCV's own thread pool: `threads` workers, or its default for 0.
pub fn set_opencv_threads(threads: i32) {
    let wanted = if threads > 0 { threads } else { -1 };
    cv::set_num_threads(wanted).expect("set OpenCV threads");
}

pub fn opencv_threads() -> i32 {
    cv::get_num_threads().unwrap_or(0)
}

/// The 1, 5 and 15 minute load averages: the machine is shared, figures from a busy one are noise.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

pub fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The `p`-th percentile (0..=100) by nearest rank.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// xorshift64 for reproducible random vectors.
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Roughly normal (sum of uniforms), enough for random directions on the sphere.
    pub fn gaussian(&mut self) -> f32 {
        let sum: f64 = (0..4)
            .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        ((sum - 2.0) * 1.732) as f32
    }
}
