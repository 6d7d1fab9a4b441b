//! Liveness figures behind `liveness.threshold` (issue 11): the MiniFASNet scores of every pinned photo's
//! largest face (the `_liveness/` samples and the web photos of the 20 identities), how many pass at a
//! few thresholds, what liveness costs per recognised frame at 640x480 and 1280x720, and what the upright
//! second look at a tilted head costs.
//! Run: `cargo bench --bench liveness` (prints; asserts nothing).

#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::Instant;

use facegate::frame;
use facegate::vision::liveness::crop_box;
use facegate::vision::{LivenessReading, Recognizer};
use opencv::prelude::MatTraitConst;

use common::{median, percentile};
use support::Engine;

const THRESHOLDS: [f32; 6] = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9];
/// Frame sizes the cost is measured at: a camera's 640x480 and the tablet's 1280x720 centre crop.
const SIZES: [(i32, i32); 2] = [(640, 480), (1280, 720)];
const TIMED_RUNS: usize = 3;

/// A label and which photo paths belong to it.
type PhotoGroup = (&'static str, fn(&str) -> bool);

struct Scored {
    path: String,
    face_px: u32,
    /// How many face widths the V1SE crop really spans (4 when the frame has room, less when capped).
    v1se_context: f32,
    reading: LivenessReading,
}

fn main() {
    let engine = Engine::with_liveness();
    let mut recognizer = engine.recognizer();
    let (major, minor) = facegate::vision::opencv_version();
    println!(
        "facegate liveness: MiniFASNetV2 (2.7x) + MiniFASNetV1SE (4x), score = mean real probability"
    );
    println!(
        "  {} cores (load average {}), OpenCV {major}.{minor}, detector {}, configured threshold {}, liveness.min_face_px {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        common::load_average(),
        engine.models.detector.name,
        engine.config.liveness.threshold,
        engine.config.liveness.min_face_px
    );

    let scored = score_every_photo(engine, &mut recognizer);
    println!();
    println!(
        "  {:<48} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "photo (largest face)", "face px", "V1SE x", "V2", "V1SE", "score"
    );
    for s in &scored {
        match &s.reading {
            LivenessReading::Scored { score, models } => println!(
                "  {:<48} {:>7} {:>7.2} {:>7.3} {:>7.3} {:>7.3}",
                s.path,
                s.face_px,
                s.v1se_context,
                models[0].probabilities[1],
                models[1].probabilities[1],
                score
            ),
            LivenessReading::TooSmall { .. } => println!(
                "  {:<48} {:>7} {:>7} {:>7} {:>7} {:>7}",
                s.path, s.face_px, "", "", "", "too small"
            ),
        }
    }

    println!();
    println!("how many largest faces reach each threshold:");
    let groups: [PhotoGroup; 4] = [
        ("_liveness/real*", |p| p.starts_with("_liveness/real")),
        ("_liveness/spoof*", |p| p.starts_with("_liveness/spoof")),
        ("20 identities", |p| !p.starts_with('_')),
        ("other _ folders", |p| {
            p.starts_with('_') && !p.starts_with("_liveness/")
        }),
    ];
    print!("  {:<20} {:>6}", "photos", "faces");
    for t in THRESHOLDS {
        print!(" {:>7}", format!(">={t}"));
    }
    println!(" {:>8} {:>8}", "median", "too small");
    for (label, member) in groups {
        let in_group: Vec<&Scored> = scored.iter().filter(|s| member(&s.path)).collect();
        let scores: Vec<f64> = in_group
            .iter()
            .filter_map(|s| s.reading.score())
            .map(f64::from)
            .collect();
        print!("  {:<20} {:>6}", label, in_group.len());
        for t in THRESHOLDS {
            let passing = scores.iter().filter(|s| **s >= f64::from(t)).count();
            print!(" {:>7}", passing);
        }
        let too_small = in_group.len() - scores.len();
        println!(" {:>8.3} {:>8}", median(&scores), too_small);
    }
    println!("the 20 identities by how much context the V1SE crop had (face widths it spans):");
    let identities: Vec<&Scored> = scored.iter().filter(|s| !s.path.starts_with('_')).collect();
    for (label, low, high) in [
        ("under 2x", 0.0, 2.0),
        ("2x to 3x", 2.0, 3.0),
        ("3x or more", 3.0, f32::INFINITY),
    ] {
        let scores: Vec<f64> = identities
            .iter()
            .filter(|s| s.v1se_context >= low && s.v1se_context < high)
            .filter_map(|s| s.reading.score().map(f64::from))
            .collect();
        let passing = scores
            .iter()
            .filter(|s| **s >= f64::from(engine.config.liveness.threshold))
            .count();
        println!(
            "  {label:<12} {:>3} photos, median score {:.3}, {passing} at or above {}",
            scores.len(),
            median(&scores),
            engine.config.liveness.threshold
        );
    }

    println!();
    cost(engine, &mut recognizer);
    println!();
    straightening_cost(engine, &mut recognizer);
}

/// The align stage (which includes the upright second look for a tilted face) on the identities'
/// 640x480 frames upright and turned by 30°.
fn straightening_cost(engine: &Engine, recognizer: &mut Recognizer) {
    println!(
        "tilted heads: align stage on 640x480 frames (includes the second detection past recognition.max_roll_deg = {}°), ms:",
        engine.config.recognition.max_roll_deg
    );
    let frames = common::frames((640, 480), 1);
    for degrees in [0.0, 30.0] {
        let mut align_ms = Vec::new();
        for _ in 0..TIMED_RUNS {
            for frame in &frames {
                let decoded = frame::decode_image(&frame.jpeg, &engine.config.frame)
                    .unwrap_or_else(|err| panic!("{}: {err}", frame.name));
                let image = support::turned(&decoded.image, degrees);
                let sighting = recognizer.look(&image).expect("the pipeline runs");
                if sighting.primary.is_some() {
                    align_ms.push(sighting.align_ms);
                }
            }
        }
        println!(
            "  turned {degrees:>4}°: {:>3} faces, align median {:.2}, p90 {:.2}",
            align_ms.len() / TIMED_RUNS,
            median(&align_ms),
            percentile(&align_ms, 90.0)
        );
    }
}

fn score_every_photo(engine: &Engine, recognizer: &mut Recognizer) -> Vec<Scored> {
    let mut scored = Vec::new();
    for photo in support::pinned_photos() {
        let decoded = frame::decode_image(&support::photo(&photo.path), &engine.config.frame)
            .unwrap_or_else(|err| panic!("{}: {err}", photo.path));
        let faces = recognizer
            .detect_all(&decoded.image)
            .unwrap_or_else(|err| panic!("{}: {err}", photo.path));
        let Some(face) = faces.first() else {
            continue;
        };
        let reading = recognizer
            .check_liveness(&decoded.image, face)
            .unwrap_or_else(|err| panic!("{}: {err}", photo.path))
            .expect("liveness is enabled");
        let size = (decoded.image.cols(), decoded.image.rows());
        let v1se_context =
            crop_box(face.bbox, size, 4.0).map_or(0.0, |c| c.width as f32 / face.bbox[2].max(1.0));
        scored.push(Scored {
            path: photo.path.clone(),
            face_px: face.bbox[2].max(0.0) as u32,
            v1se_context,
            reading,
        });
    }
    scored
}

/// Liveness's own time on frames with a face, and the whole recognition of a recognised frame with
/// liveness on and off, on the identities' photos letterboxed to each size.
fn cost(engine: &Engine, recognizer: &mut Recognizer) {
    let people = support::people();
    let gallery = engine.gallery_of_first_photos(recognizer, people.keys().map(String::as_str));
    let mut without = Engine::get().recognizer();
    println!(
        "cost per recognised frame (OpenCV threads {}; medians over {TIMED_RUNS} runs of the identities' photos), ms:",
        common::opencv_threads()
    );
    println!(
        "  {:<10} {:>7} {:>10} {:>12} {:>12} {:>10}",
        "frame", "frames", "liveness", "liveness p90", "total with", "total off"
    );
    for size in SIZES {
        let frames = common::frames(size, 1);
        let mut liveness_ms = Vec::new();
        let mut with_ms = Vec::new();
        let mut without_ms = Vec::new();
        for frame in frames.iter().take(3) {
            let _ = engine.try_recognize(recognizer, &gallery, &frame.jpeg);
        }
        for _ in 0..TIMED_RUNS {
            for frame in &frames {
                let started = Instant::now();
                let recognition = engine
                    .try_recognize(recognizer, &gallery, &frame.jpeg)
                    .unwrap_or_else(|err| panic!("{}: {err}", frame.name));
                let total = common::elapsed_ms(started);
                if recognition.liveness.is_none() {
                    continue;
                }
                liveness_ms.push(recognition.timings.liveness_ms);
                with_ms.push(total);
                let started = Instant::now();
                engine
                    .try_recognize(&mut without, &gallery, &frame.jpeg)
                    .expect("recognises");
                without_ms.push(common::elapsed_ms(started));
            }
        }
        println!(
            "  {:<10} {:>7} {:>10.2} {:>12.2} {:>12.2} {:>10.2}",
            format!("{}x{}", size.0, size.1),
            liveness_ms.len() / TIMED_RUNS,
            median(&liveness_ms),
            percentile(&liveness_ms, 90.0),
            median(&with_ms),
            median(&without_ms)
        );
    }
}
