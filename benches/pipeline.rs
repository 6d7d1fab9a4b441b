//! Where the time of one frame goes (issue 5): per-stage medians (decode, detect, align, embed, match) of
//! the production pipeline over the test photos made into camera-size (640x480) and 8K (7680x4320) JPEGs in
//! memory; the floor — YuNet's detect call on the shrunk frame plus the embedder's forward pass, nothing
//! else — on the same frames, with OpenCV's default threads and with one; and gallery matching at 10,
//! 1,000 and 100,000 enrolled vectors. Then the tablet's case (issue 10): 1280x720 door frames with a large
//! face, as PNG and JPEG q90, through the pipeline with each speed lever switched on in turn (JPEG decoded
//! reduced, smaller detection sizes), with what each does to the decisions; and what the PNG's zlib level
//! costs to decode. Run: `cargo bench --bench pipeline` (prints; asserts nothing).

#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::path::Path;
use std::time::Instant;

use opencv::core::{Vector, VectorToVec};
use opencv::imgcodecs;
use opencv::prelude::MatTraitConstManual;

use facegate::config::Config;
use facegate::decision::Outcome;
use facegate::frame::CheckedImage;
use facegate::gallery::Gallery;
use facegate::recognition::{recognize_image, StageTimings};
use facegate::vision::{Embedding, Recognizer};

use common::{
    mean, median, percentile, DoorFrame, FloorTiming, TestFrame, Xorshift, CAMERA, EIGHT_K,
};
use support::Engine;

/// Timed passes over each camera-size frame, and over each 8K frame.
const CAMERA_RUNS: usize = 3;
const EIGHT_K_RUNS: usize = 2;
/// Every n-th photo of the 20 identities is made into an 8K frame (encoding 8K takes a while).
const EIGHT_K_STEP: usize = 3;
const GALLERY_SIZES: [usize; 3] = [10, 1_000, 100_000];
const MATCH_QUERIES: usize = 200;

fn main() {
    let engine = Engine::get();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (major, minor) = facegate::vision::opencv_version();
    println!("facegate pipeline bench: production stages vs the floor (detector + embedder forward only)");
    println!(
        "  {cores} cores (load average {}), OpenCV {major}.{minor} with {} threads by default, detector {}, embedder {}",
        common::load_average(),
        common::opencv_threads(),
        engine.models.detector.name,
        engine.models.embedder.name
    );
    println!(
        "  detect_max_side {}, decode_target_side {}; medians of per-frame timings, milliseconds",
        engine.config.recognition.detect_max_side, engine.config.frame.decode_target_side
    );

    if std::env::args().any(|arg| arg == "png") {
        // `cargo bench --bench pipeline -- png`: the PNG decoders only.
        png_decoders(engine, &mut engine.recognizer());
        return;
    }
    if std::env::args().any(|arg| arg == "jpeg") {
        // `cargo bench --bench pipeline -- jpeg`: the JPEG decoders only.
        jpeg_decoders(engine, &mut engine.recognizer());
        return;
    }
    let started = Instant::now();
    let camera = common::frames(CAMERA, 1);
    let eight_k = common::frames(EIGHT_K, EIGHT_K_STEP);
    println!(
        "  made {} camera frames (median {:.0} KiB) and {} 8K frames (median {:.0} KiB) in {:.1} s",
        camera.len(),
        median_kib(&camera),
        eight_k.len(),
        median_kib(&eight_k),
        started.elapsed().as_secs_f64()
    );

    let mut recognizer = engine.recognizer();
    let people = support::people();
    let gallery =
        engine.gallery_of_first_photos(&mut recognizer, people.keys().map(String::as_str));
    let mut floor = common::Floor::load(&engine.config, &engine.models);

    for threads in [0, 1] {
        common::set_opencv_threads(threads);
        println!();
        println!(
            "OpenCV threads: {} ({})",
            common::opencv_threads(),
            if threads == 0 {
                "default"
            } else {
                "recognition.opencv_threads = 1"
            }
        );
        println!(
            "  {:<16} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>7}",
            "frames",
            "decode",
            "detect",
            "align",
            "embed",
            "match",
            "total",
            "p90",
            "floor",
            "floor p90",
            "ratio"
        );
        for (label, frames, runs) in [
            ("640x480", &camera, CAMERA_RUNS),
            ("7680x4320", &eight_k, EIGHT_K_RUNS),
        ] {
            let stages = time_stages(engine, &mut recognizer, &gallery, frames, runs);
            let floors = floor.per_frame(frames, runs);
            print_row(label, &stages, &floors);
        }
        let camera_floors = floor.per_frame(&camera, CAMERA_RUNS);
        println!(
            "  floor parts at 640x480: YuNet detect {:.2} ms, embedder forward {:.2} ms (medians); {} of {} frames had a face",
            median(&camera_floors.iter().map(|f| f.detect_ms).collect::<Vec<_>>()),
            median(
                &camera_floors
                    .iter()
                    .filter(|f| f.forward_ms > 0.0)
                    .map(|f| f.forward_ms)
                    .collect::<Vec<_>>()
            ),
            camera_floors.iter().filter(|f| f.forward_ms > 0.0).count(),
            camera_floors.len()
        );
    }
    common::set_opencv_threads(0);

    println!();
    gallery_scaling(engine);

    println!();
    door_levers(engine, &mut recognizer, &gallery);
    println!();
    png_levels(engine, &mut recognizer);
    println!();
    png_decoders(engine, &mut recognizer);
}

/// Every n-th photo becomes a door frame; passes over them per lever.
const DOOR_STEP: usize = 2;
const DOOR_RUNS: usize = 2;

/// A pipeline setting to measure on door frames: the config it changes.
struct Lever {
    label: &'static str,
    change: fn(&mut Config),
}

const LEVERS: [Lever; 5] = [
    Lever {
        label: "before: decode 960, one pass 640",
        change: |c| {
            c.frame.decode_target_side = 960;
            c.recognition.coarse_detect_side = 0;
        },
    },
    Lever {
        label: "JPEG reduced: decode 640",
        change: |c| {
            c.frame.decode_target_side = 640;
            c.recognition.coarse_detect_side = 0;
        },
    },
    Lever {
        label: "+ quick pass 480",
        change: |c| {
            c.frame.decode_target_side = 640;
            c.recognition.coarse_detect_side = 480;
        },
    },
    Lever {
        label: "+ quick pass 320",
        change: |c| {
            c.frame.decode_target_side = 640;
            c.recognition.coarse_detect_side = 320;
        },
    },
    Lever {
        label: "one pass at 320 (min face 20)",
        change: |c| {
            c.frame.decode_target_side = 640;
            c.recognition.coarse_detect_side = 0;
            c.recognition.detect_max_side = 320;
            c.recognition.min_face_px = 20;
        },
    },
];

/// Door frames through the pipeline under each lever: stage medians, and the decisions (granted as the
/// pictured person, unknown, no face, granted as someone else) with the mean score of the best match.
fn door_levers(engine: &Engine, recognizer: &mut Recognizer, gallery: &Gallery) {
    let frames = common::door_frames(recognizer, DOOR_STEP);
    println!(
        "door frames (issue 10): {} photos made into 1280x720 frames, face box {:.0}% of the height; medians of {DOOR_RUNS} passes, ms",
        frames.len(),
        common::DOOR_FACE_SHARE * 100.0
    );
    println!(
        "  {:<32} {:<5} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}  {:<24} {:>6}",
        "lever",
        "fmt",
        "decode",
        "detect",
        "align",
        "embed",
        "total",
        "p90",
        "ratio",
        "own/unknown/none/other",
        "score"
    );
    let mut baseline = [f64::NAN; 2];
    for lever in &LEVERS {
        let mut config = engine.config.clone();
        (lever.change)(&mut config);
        let mut worker =
            Recognizer::load(&engine.models, &config.recognition).expect("models load");
        for (slot, (format, pick)) in [
            (
                "PNG",
                (|f: &DoorFrame| &f.png) as fn(&DoorFrame) -> &Vec<u8>,
            ),
            ("JPEG", |f: &DoorFrame| &f.jpeg),
        ]
        .into_iter()
        .enumerate()
        {
            let mut stages = Vec::new();
            let mut totals = Vec::new();
            let mut counts = [0usize; 4];
            let mut scores = Vec::new();
            for run in 0..=DOOR_RUNS {
                for frame in &frames {
                    let started = Instant::now();
                    let image = CheckedImage::check(pick(frame).clone(), &config.frame)
                        .expect("door frame passes the checks");
                    let recognition =
                        recognize_image(&mut worker, gallery, &image, engine.threshold)
                            .expect("recognised");
                    let took = common::elapsed_ms(started);
                    // Pass 0 warms the worker up and counts the decisions.
                    if run == 0 {
                        let own = support::person_of(&frame.name);
                        let slot = match &recognition.outcome {
                            Outcome::Recognised(m) if m.name == own => 0,
                            Outcome::Recognised(_) => 3,
                            Outcome::Unknown { .. } => 1,
                            Outcome::NoFace => 2,
                        };
                        counts[slot] += 1;
                        scores.extend(recognition.outcome.score().map(f64::from));
                    } else {
                        totals.push(took);
                        stages.push(recognition.timings);
                    }
                }
            }
            let stage = |pick: fn(&StageTimings) -> f64| {
                median(&stages.iter().map(pick).collect::<Vec<_>>())
            };
            let total = median(&totals);
            if baseline[slot].is_nan() {
                baseline[slot] = total;
            }
            println!(
                "  {:<32} {:<5} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2}  {:<24} {:>6.3}",
                lever.label,
                format,
                stage(|t| t.decode_ms),
                stage(|t| t.detect_ms),
                stage(|t| t.align_ms),
                stage(|t| t.embed_ms),
                total,
                percentile(&totals, 90.0),
                total / baseline[slot],
                format!("{}/{}/{}/{}", counts[0], counts[1], counts[2], counts[3]),
                mean(&scores),
            );
        }
    }
    println!("  ratio: median total against the first row's; decisions from one pass at the default threshold {:.2}", engine.threshold);
}

/// What the tablet's PNG zlib level costs: size and decode time of the same door frames encoded at each
/// level (OpenCV's `imencode(".png")` default is level 1 with the RLE strategy, what the tablet sends).
fn png_levels(engine: &Engine, recognizer: &mut Recognizer) {
    let frames = common::door_frames(recognizer, DOOR_STEP * 2);
    println!(
        "PNG zlib level of the tablet's frames: {} door frames re-encoded, decode medians of {DOOR_RUNS} passes",
        frames.len()
    );
    println!(
        "  {:<26} {:>9} {:>10} {:>10}",
        "encoding", "KiB", "decode ms", "encode ms"
    );
    let levels: [(&str, Option<i32>); 5] = [
        ("default (level 1, RLE)", None),
        ("level 0 (stored)", Some(0)),
        ("level 3", Some(3)),
        ("level 6", Some(6)),
        ("level 9", Some(9)),
    ];
    for (label, level) in levels {
        let params = match level {
            Some(level) => Vector::from_slice(&[imgcodecs::IMWRITE_PNG_COMPRESSION, level]),
            None => Vector::new(),
        };
        let mut sizes = Vec::new();
        let mut encodes = Vec::new();
        let mut decodes = Vec::new();
        for frame in &frames {
            let pixels =
                imgcodecs::imdecode(&Vector::from_slice(&frame.png), imgcodecs::IMREAD_COLOR)
                    .expect("decode");
            let mut encoded = Vector::<u8>::new();
            let started = Instant::now();
            imgcodecs::imencode(".png", &pixels, &mut encoded, &params).expect("encode");
            encodes.push(common::elapsed_ms(started));
            sizes.push(encoded.len() as f64 / 1024.0);
            let encoded = encoded.to_vec();
            for _ in 0..DOOR_RUNS {
                let started = Instant::now();
                let image =
                    CheckedImage::check(encoded.clone(), &engine.config.frame).expect("checks");
                image.decode().expect("decodes");
                decodes.push(common::elapsed_ms(started));
            }
        }
        println!(
            "  {:<26} {:>9.0} {:>10.2} {:>10.2}",
            label,
            median(&sizes),
            median(&decodes),
            median(&encodes)
        );
    }
}

/// The tablet's PNGs decoded by libpng through OpenCV (what facegate used before), by the `png` crate
/// (facegate's `CheckedImage::decode`, with its header check and copy of the bytes) and by `zune-png`,
/// each to BGR, and, in the same run, by the Python server's `cv2.imdecode`: wall and CPU medians, and
/// whether each gives libpng's pixels.
fn png_decoders(engine: &Engine, recognizer: &mut Recognizer) {
    let frames = common::door_frames(recognizer, DOOR_STEP);
    let libpng = |bytes: &[u8]| {
        imgcodecs::imdecode(&Vector::from_slice(bytes), imgcodecs::IMREAD_COLOR).expect("decode")
    };
    let zune = |bytes: &[u8]| {
        let mut decoder =
            zune_png::PngDecoder::new(zune_png::zune_core::bytestream::ZCursor::new(bytes));
        let pixels = decoder.decode_raw().expect("zune-png decode");
        let (cols, rows) = decoder.dimensions().expect("size");
        rgb_to_bgr(rows, cols, &pixels)
    };
    let png_crate = |bytes: &[u8]| {
        CheckedImage::check(bytes.to_vec(), &engine.config.frame)
            .expect("checks")
            .decode()
            .expect("decodes")
            .image
    };
    let decoders: [(&str, Decoder); 3] = [
        ("libpng (OpenCV imdecode)", &libpng),
        ("png crate 0.18 (facegate)", &png_crate),
        ("zune-png 0.5", &zune),
    ];
    println!(
        "PNG decoders on {} door frames (1280x720, the tablet's zlib level 1), medians of {DOOR_RUNS} passes, load average {}",
        frames.len(),
        common::load_average()
    );
    time_decoders(&frames, Format::Png, &decoders, "python cv2.imdecode");
}

/// The tablet's frames as JPEGs (quality 90) decoded to BGR at half size, as facegate decodes them:
/// by libjpeg through OpenCV (`IMREAD_REDUCED_COLOR_2`), by `jpeg-decoder`'s scaled decode (facegate
/// before) and by facegate's `CheckedImage::decode` (`zune-jpeg` whole, then halved), and, in the
/// same run, by the Python server's `cv2.imdecode` at full size: wall and CPU medians (the whole
/// process's CPU: `jpeg-decoder` decodes on threads of its own), and the mean difference from
/// libjpeg's pixels.
fn jpeg_decoders(engine: &Engine, recognizer: &mut Recognizer) {
    let frames = common::door_frames(recognizer, DOOR_STEP);
    let libjpeg = |bytes: &[u8]| {
        imgcodecs::imdecode(
            &Vector::from_slice(bytes),
            imgcodecs::IMREAD_REDUCED_COLOR_2,
        )
        .expect("decode")
    };
    let jpeg_decoder_scaled = |bytes: &[u8]| {
        let mut decoder = jpeg_decoder::Decoder::new(bytes);
        decoder.read_info().expect("header");
        let info = decoder.info().expect("info");
        decoder
            .scale(info.width.div_ceil(2), info.height.div_ceil(2))
            .expect("scale");
        let pixels = decoder.decode().expect("jpeg-decoder decode");
        let info = decoder.info().expect("info");
        rgb_to_bgr(usize::from(info.height), usize::from(info.width), &pixels)
    };
    let facegate = |bytes: &[u8]| {
        let image = CheckedImage::check(bytes.to_vec(), &engine.config.frame).expect("checks");
        assert_eq!(image.header().format, facegate::frame::ImageFormat::Jpeg);
        image.decode().expect("decodes").image
    };
    let decoders: [(&str, Decoder); 3] = [
        ("libjpeg (OpenCV imdecode)", &libjpeg),
        ("jpeg-decoder 0.3, scaled", &jpeg_decoder_scaled),
        ("zune-jpeg 0.4 (facegate)", &facegate),
    ];
    println!(
        "JPEG decoders on {} door frames (1280x720, quality 90) to 640x360, medians of {DOOR_RUNS} passes, load average {}",
        frames.len(),
        common::load_average()
    );
    time_decoders(
        &frames,
        Format::Jpeg,
        &decoders,
        "python cv2.imdecode (full)",
    );
}

type Decoder<'a> = &'a dyn Fn(&[u8]) -> opencv::core::Mat;

/// A decoder's RGB samples as an OpenCV BGR image.
fn rgb_to_bgr(rows: usize, cols: usize, rgb: &[u8]) -> opencv::core::Mat {
    let rgb = opencv::core::Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(
        rows as i32,
        cols as i32,
        rgb,
    )
    .expect("mat");
    let mut bgr = opencv::core::Mat::default();
    opencv::imgproc::cvt_color_def(&rgb, &mut bgr, opencv::imgproc::COLOR_RGB2BGR)
        .expect("convert");
    bgr
}

/// One row per decoder of `format`'s frames: wall and CPU medians (the whole process's CPU, as
/// `jpeg-decoder` decodes on threads of its own), and how far each frame's pixels are from the first
/// decoder's: frames with the same pixels byte for byte, and the mean difference per value. Then the
/// Python server's decode of the same files.
fn time_decoders(frames: &[DoorFrame], format: Format, decoders: &[(&str, Decoder)], python: &str) {
    println!(
        "  {:<26} {:>8} {:>8} {:>8} {:>12} {:>10}",
        "decoder", "wall ms", "p90", "CPU ms", "same pixels", "mean apart"
    );
    let (_, reference) = decoders[0];
    for (label, decode) in decoders {
        let (mut wall, mut cpu, mut same, mut apart) = (Vec::new(), Vec::new(), 0, Vec::new());
        for frame in frames {
            let bytes = format.bytes(frame);
            for run in 0..DOOR_RUNS {
                let (started, cpu_started) = (Instant::now(), process_cpu_ms());
                let image = decode(bytes);
                cpu.push(process_cpu_ms() - cpu_started);
                wall.push(common::elapsed_ms(started));
                if run == 0 {
                    let expected = reference(bytes);
                    let (ours, theirs) = (
                        image.data_bytes().expect("pixels"),
                        expected.data_bytes().expect("pixels"),
                    );
                    assert_eq!(ours.len(), theirs.len(), "{label}: size");
                    same += usize::from(ours == theirs);
                    let sum: u64 = ours
                        .iter()
                        .zip(theirs)
                        .map(|(a, b)| u64::from(a.abs_diff(*b)))
                        .sum();
                    apart.push(sum as f64 / ours.len() as f64);
                }
            }
        }
        println!(
            "  {:<26} {:>8.2} {:>8.2} {:>8.2} {:>6} of {:>2} {:>10.2}",
            label,
            median(&wall),
            percentile(&wall, 90.0),
            median(&cpu),
            same,
            frames.len(),
            mean(&apart)
        );
    }
    match python_decode_ms(frames, format) {
        Ok((wall, cpu)) => println!("  {python:<26} {wall:>8.2} {:>8} {cpu:>8.2}", ""),
        Err(why) => println!("  {python} not measured: {why}"),
    }
}

/// CPU time of the whole process, ms.
fn process_cpu_ms() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 * 1000.0 + now.tv_nsec as f64 / 1e6
}

/// The door frames' two encodings.
#[derive(Clone, Copy)]
enum Format {
    Png,
    Jpeg,
}

impl Format {
    fn bytes(self, frame: &DoorFrame) -> &[u8] {
        match self {
            Format::Png => &frame.png,
            Format::Jpeg => &frame.jpeg,
        }
    }
}

/// The Python server's decode (`cv2.imdecode(..., IMREAD_COLOR)`) on the same frames: (wall, CPU)
/// medians in ms, from Debian's Python with OpenCV (`scripts/install-deps --bench`).
fn python_decode_ms(frames: &[DoorFrame], format: Format) -> Result<(f64, f64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let extension = match format {
        Format::Png => "png",
        Format::Jpeg => "jpg",
    };
    for (i, frame) in frames.iter().enumerate() {
        std::fs::write(
            dir.path().join(format!("{i:03}.{extension}")),
            format.bytes(frame),
        )
        .map_err(|e| e.to_string())?;
    }
    let script = format!(
        r#"
import cv2, glob, numpy, statistics, time
walls, cpus = [], []
for path in sorted(glob.glob("{dir}/*.{extension}")):
    data = numpy.frombuffer(open(path, "rb").read(), numpy.uint8)
    for _ in range({DOOR_RUNS}):
        w, c = time.perf_counter(), time.thread_time()
        cv2.imdecode(data, cv2.IMREAD_COLOR)
        cpus.append((time.thread_time() - c) * 1000)
        walls.append((time.perf_counter() - w) * 1000)
print(statistics.median(walls), statistics.median(cpus))
"#,
        dir = dir.path().display()
    );
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .map_err(|e| format!("/usr/bin/python3: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "no Python with cv2 ({}); scripts/install-deps --bench installs it",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut values = text.split_whitespace().map(|v| v.parse::<f64>());
    match (values.next(), values.next()) {
        (Some(Ok(wall)), Some(Ok(cpu))) => Ok((wall, cpu)),
        _ => Err(format!("unexpected output: {text}")),
    }
}

fn median_kib(frames: &[TestFrame]) -> f64 {
    median(
        &frames
            .iter()
            .map(|f| f.jpeg.len() as f64 / 1024.0)
            .collect::<Vec<_>>(),
    )
}

/// Every stage of every run, and each run's total (wall time of the whole call).
struct StageSamples {
    stages: Vec<StageTimings>,
    totals: Vec<f64>,
}

fn time_stages(
    engine: &Engine,
    recognizer: &mut Recognizer,
    gallery: &Gallery,
    frames: &[TestFrame],
    runs: usize,
) -> StageSamples {
    // One untimed pass so that OpenCV's lazy initialisation is not counted.
    for frame in frames.iter().take(3) {
        let _ = engine.try_recognize(recognizer, gallery, &frame.jpeg);
    }
    let mut samples = StageSamples {
        stages: Vec::new(),
        totals: Vec::new(),
    };
    for _ in 0..runs {
        for frame in frames {
            let started = Instant::now();
            let recognition = engine
                .try_recognize(recognizer, gallery, &frame.jpeg)
                .unwrap_or_else(|err| panic!("{}: {err}", frame.name));
            samples.totals.push(common::elapsed_ms(started));
            samples.stages.push(recognition.timings);
        }
    }
    samples
}

fn print_row(label: &str, samples: &StageSamples, floors: &[FloorTiming]) {
    let stage = |pick: fn(&StageTimings) -> f64| {
        median(&samples.stages.iter().map(pick).collect::<Vec<_>>())
    };
    let floor_totals: Vec<f64> = floors.iter().map(FloorTiming::total_ms).collect();
    println!(
        "  {:<16} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.3} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7.2}",
        label,
        stage(|t| t.decode_ms),
        stage(|t| t.detect_ms),
        stage(|t| t.align_ms),
        stage(|t| t.embed_ms),
        stage(|t| t.match_ms),
        median(&samples.totals),
        percentile(&samples.totals, 90.0),
        median(&floor_totals),
        percentile(&floor_totals, 90.0),
        mean(&samples.totals) / mean(&floor_totals),
    );
}

/// Matching cost against galleries of random unit vectors, built through the gallery's own parser.
fn gallery_scaling(engine: &Engine) {
    let id = engine.embedder_id();
    let mut rng = Xorshift(0x5eed_0000_0000_0005);
    println!(
        "gallery matching ({}-value vectors, one sample per person, {MATCH_QUERIES} random queries)",
        id.dim
    );
    println!(
        "  {:>9} {:>12} {:>12} {:>12} {:>10}",
        "people", "median µs", "p99 µs", "build ms", "MiB"
    );
    for size in GALLERY_SIZES {
        let started = Instant::now();
        let text = gallery_json(&id, size, &mut rng);
        let gallery = Gallery::parse(&text, Path::new("bench"), &id).expect("gallery parses");
        let build_ms = common::elapsed_ms(started);
        drop(text);
        let queries: Vec<Embedding> = (0..MATCH_QUERIES)
            .map(|_| random_unit(&mut rng, id.dim))
            .collect();
        let mut micros = Vec::with_capacity(MATCH_QUERIES);
        for query in &queries {
            let started = Instant::now();
            let best = gallery.best_match(query);
            micros.push(started.elapsed().as_secs_f64() * 1e6);
            assert!(best.is_some());
        }
        println!(
            "  {:>9} {:>12.1} {:>12.1} {:>12.0} {:>10.1}",
            size,
            median(&micros),
            percentile(&micros, 99.0),
            build_ms,
            (size * id.dim * 4) as f64 / (1024.0 * 1024.0)
        );
    }
}

fn random_unit(rng: &mut Xorshift, dim: usize) -> Embedding {
    Embedding::from_raw((0..dim).map(|_| rng.gaussian()).collect()).expect("non-zero vector")
}

/// Gallery JSON in the stored format, written directly (a serde_json::Value of 100,000 vectors would
/// need far more memory than the gallery itself).
fn gallery_json(id: &facegate::gallery::EmbedderId, people: usize, rng: &mut Xorshift) -> String {
    let mut text = format!(
        "{{\"format\":\"facegate-gallery\",\"version\":1,\"embedder\":{},\"people\":[",
        serde_json::to_string(id).expect("id serialises")
    );
    for person in 0..people {
        if person > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            "{{\"name\":\"p{person}\",\"samples\":[{{\"source\":\"random\",\"enrolled_at\":\"2026-01-01T00:00:00Z\",\"vector\":["
        ));
        for (i, value) in random_unit(rng, id.dim).as_slice().iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!("{value:.6}"));
        }
        text.push_str("]}]}");
    }
    text.push_str("]}");
    text
}
