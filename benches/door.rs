//! The tablet's frames end to end (issue 10): 1280x720 door frames with a large face, as PNG (what the
//! tablet sends) and as JPEG q90, posted over loopback at concurrency 1 and 2 to facegate's release binary
//! and, in the same run, to a Python + OpenCV server doing the same work (benches/opencv_server.py: same
//! models, alignment and gallery; MobileFaceNet in the rewrite OpenCV 4.6 needs to load it, without
//! facegate's widening). Prints latency percentiles, throughput, per-stage means, whether both
//! reached the same decisions, and each server's peak RSS. Run: `cargo bench --bench door` (asserts
//! nothing). The Python side needs Debian's python3-opencv and python3-numpy (`scripts/install-deps
//! --bench`); without them only facegate is measured, and the bench says so.

#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use common::http::{self, Run, Server};
use common::{mean, median, percentile, DoorFrame};
use support::Engine;

/// Every n-th photo of the 20 identities becomes a door frame.
const FRAME_STEP: usize = 2;
/// Each (server, format, concurrency) is measured in this many short rounds, servers taking turns, so
/// that a burst of load from elsewhere on the shared machine hits all of them alike.
const ROUNDS: usize = 6;
const REQUESTS_PER_ROUND: [(usize, usize); 2] = [(1, 14), (2, 20)];
const WARM_UP_PER_CONNECTION: usize = 3;
const MIB: f64 = 1024.0;
/// Liveness off: the Python server has none, so this contender does the same work as Python (what
/// liveness costs: `cargo bench --bench liveness`). The other facegate contender runs as shipped.
const SAME_WORK: &str = "[liveness]\nenabled = false";
/// Frames per format posted at concurrency 2 to each daemon of the memory table.
const MEMORY_FRAMES: usize = 40;
const PYTHON: &str = "python+opencv";
const STAGES: [&str; 5] = ["decode_ms", "detect_ms", "align_ms", "embed_ms", "match_ms"];

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Png,
    Jpeg,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Png => "PNG",
            Format::Jpeg => "JPEG q90",
        }
    }

    fn bytes(self, frame: &DoorFrame) -> &[u8] {
        match self {
            Format::Png => &frame.png,
            Format::Jpeg => &frame.jpeg,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
        }
    }
}

/// How bodies are sent: raw image bytes as the tablet does, or base64 text where facegate does not
/// take raw bodies yet.
#[derive(Clone, Copy, PartialEq)]
enum Body {
    Raw,
    Base64,
}

fn request(format: Format, body: Body, frame: &DoorFrame) -> Vec<u8> {
    let bytes = format.bytes(frame);
    match body {
        Body::Raw => http::post_request("/image", format.content_type(), bytes),
        Body::Base64 => http::post_request(
            "/image",
            "text/plain",
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .as_bytes(),
        ),
    }
}

struct Contender {
    label: &'static str,
    server: Server,
    /// Per (format, concurrency): every round's runs.
    runs: Vec<((Format, usize), Vec<Run>)>,
}

impl Contender {
    fn runs(&self, key: (Format, usize)) -> &[Run] {
        self.runs
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(&[], |(_, runs)| runs)
    }
}

fn main() {
    let engine = Engine::get();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = &engine.config;
    println!("facegate door bench: 1280x720 door frames over loopback, facegate against a Python + OpenCV server doing the same work");
    let mut recognizer = engine.recognizer();
    let frames = common::door_frames(&mut recognizer, FRAME_STEP);
    drop(recognizer);
    println!(
        "  {cores} cores, load average {}; {} door frames (face box {:.0}% of the height; photos scaled x{:.1} median), PNG median {:.0} KiB, JPEG q90 median {:.0} KiB",
        common::load_average(),
        frames.len(),
        common::DOOR_FACE_SHARE * 100.0,
        median(&frames.iter().map(|f| f.scale).collect::<Vec<_>>()),
        median_kib(&frames, Format::Png),
        median_kib(&frames, Format::Jpeg),
    );
    println!(
        "  facegate defaults: detect_max_side {}, min_face_px {}, decode_target_side {}, workers = cores, OpenCV threads = cores",
        config.recognition.detect_max_side,
        config.recognition.min_face_px,
        config.frame.decode_target_side
    );

    let state = tempfile::tempdir().expect("temp dir");
    let gallery = http::enrol_everyone(state.path());
    let python = python_with_opencv();
    if std::env::args().any(|arg| arg == "memory") {
        // `cargo bench --bench door -- memory`: the memory table only.
        memory_levers(&gallery, &frames, python.as_deref().ok(), engine);
        return;
    }
    let mut contenders = vec![
        Contender {
            label: "facegate",
            server: Server::facegate(&gallery, "", "", ""),
            runs: Vec::new(),
        },
        Contender {
            label: "fg no liveness",
            server: Server::facegate(&gallery, "", "", SAME_WORK),
            runs: Vec::new(),
        },
    ];
    println!("  facegate: as shipped (the built-in defaults: quick detection pass at 320, liveness on); fg no liveness: the same without liveness, the Python server's work");
    let body = body_facegate_takes(&contenders[0].server, &frames[0]);
    match body {
        Body::Raw => println!("  bodies: raw image bytes (Content-Type image/png or image/jpeg), as the tablet sends them, to both servers"),
        Body::Base64 => println!("  bodies: BASE64 text to both servers: this facegate does not take raw image bodies on /image yet (the tablet sends raw PNG)"),
    }
    match &python {
        Ok(python) => {
            println!(
                "  Python: {python}; detect_max_side {}, min_face_px {}",
                config.recognition.detect_max_side, config.recognition.min_face_px
            );
            contenders.push(Contender {
                label: PYTHON,
                server: python_server(python, &gallery, engine),
                runs: Vec::new(),
            });
        }
        Err(why) => println!("  Python + OpenCV server NOT measured: {why}"),
    }

    let cases: Vec<(Format, usize, usize)> = [Format::Png, Format::Jpeg]
        .into_iter()
        .flat_map(|f| REQUESTS_PER_ROUND.map(|(conc, n)| (f, conc, n)))
        .collect();
    for format in [Format::Png, Format::Jpeg] {
        let requests: Vec<Vec<u8>> = frames.iter().map(|f| request(format, body, f)).collect();
        for contender in &mut contenders {
            contender
                .server
                .warm_up(&requests, cores, WARM_UP_PER_CONNECTION);
        }
        for round in 0..ROUNDS {
            for &(f, concurrency, total) in cases.iter().filter(|c| c.0 == format) {
                for contender in &mut contenders {
                    let run = contender
                        .server
                        .load(&requests, concurrency, total, round * total);
                    let key = (f, concurrency);
                    match contender.runs.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, runs)) => runs.push(run),
                        None => contender.runs.push((key, vec![run])),
                    }
                }
            }
        }
    }

    println!();
    println!(
        "end to end ({ROUNDS} rounds per row, servers taking turns; latency in ms, client round trip)"
    );
    println!(
        "  {:<8} {:>4} {:<14} {:>7} {:>7} {:>7} {:>9} {:>7}  {:<28} {:>14}",
        "format",
        "conc",
        "server",
        "p50",
        "p90",
        "p99",
        "frames/s",
        "errors",
        "answers",
        "vs python"
    );
    for &(format, concurrency, _) in &cases {
        let key = (format, concurrency);
        let python = contenders
            .iter()
            .find(|c| c.label == PYTHON)
            .map(|c| summary(c.runs(key)));
        for contender in &contenders {
            let s = summary(contender.runs(key));
            let versus = match &python {
                Some(_) if contender.label == PYTHON => String::new(),
                Some(p) if concurrency == 1 => format!("p50 {:.2}x", s.p50 / p.p50),
                Some(p) => format!("rate {:.2}x", s.throughput / p.throughput),
                None => String::new(),
            };
            println!(
                "  {:<8} {:>4} {:<14} {:>7.1} {:>7.1} {:>7.1} {:>9.1} {:>7}  {:<28} {:>14}",
                format.name(),
                concurrency,
                contender.label,
                s.p50,
                s.p90,
                s.p99,
                s.throughput,
                s.errors,
                s.statuses,
                versus
            );
        }
    }
    println!("  targets (issue 20), facegate as shipped: p50 at concurrency 1 <= 0.60x python's; frames/s at concurrency 2 >= 1.50x python's");

    println!();
    println!("where the time goes at concurrency 1 (each server's own timings, means in ms)");
    println!(
        "  {:<8} {:<14} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>8} {:>8}",
        "format",
        "server",
        "decode",
        "detect",
        "align",
        "embed",
        "match",
        "liveness",
        "queue",
        "server",
        "client"
    );
    for format in [Format::Png, Format::Jpeg] {
        for contender in &contenders {
            let runs = contender.runs((format, 1));
            let stage =
                |key: &str| mean(&runs.iter().flat_map(|r| r.timing(key)).collect::<Vec<_>>());
            let latencies: Vec<f64> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
            // Only the recognised frames' answers carry a liveness time above zero.
            let liveness: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.timing("liveness_ms"))
                .filter(|&ms| ms > 0.0)
                .collect();
            println!(
                "  {:<8} {:<14} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.3} {:>8.2} {:>7.2} {:>8.2} {:>8.2}",
                format.name(),
                contender.label,
                stage(STAGES[0]),
                stage(STAGES[1]),
                stage(STAGES[2]),
                stage(STAGES[3]),
                stage(STAGES[4]),
                if liveness.is_empty() { 0.0 } else { mean(&liveness) },
                stage("queue_ms"),
                stage("total_ms"),
                mean(&latencies)
            );
        }
    }
    println!("  liveness: mean over the recognised frames it ran for; queue: facegate's wait from arrival to a worker");
    println!("  server: received to answer ready (facegate includes base64, JSON, queueing; python the same minus the queue)");

    if let Some(python) = contenders.iter().find(|c| c.label == PYTHON) {
        println!();
        for facegate in contenders.iter().filter(|c| c.label != PYTHON) {
            for format in [Format::Png, Format::Jpeg] {
                let (same, total) = agreement(
                    facegate.runs((format, 1)),
                    python.runs((format, 1)),
                    frames.len(),
                );
                println!(
                    "  {} and {PYTHON}: same decision (status and identity) on {same} of {total} {} frames",
                    facegate.label,
                    format.name()
                );
            }
        }
    }

    println!();
    println!("memory: peak RSS (VmHWM) over the whole run, both formats, concurrency up to 2; target facegate <= 120 MB");
    for contender in contenders {
        let (rss, peak) = contender.server.memory_kib();
        println!(
            "  {:<14} peak {:>6.1} MiB ({:.0} MB), RSS at the end {:>6.1} MiB",
            contender.label,
            peak as f64 / MIB,
            peak as f64 * 1024.0 / 1e6,
            rss as f64 / MIB
        );
        contender.server.stop();
    }
    println!();
    memory_levers(&gallery, &frames, python.as_deref().ok(), engine);
}

/// One daemon setting of the memory table: the config lines it changes.
struct MemoryLever {
    label: &'static str,
    toml: &'static str,
}

const MEMORY_LEVERS: [MemoryLever; 6] = [
    MemoryLever {
        label: "as shipped",
        toml: "",
    },
    MemoryLever {
        label: "liveness off",
        toml: "[liveness]\nenabled = false",
    },
    MemoryLever {
        label: "quick pass off",
        toml: "[recognition]\ncoarse_detect_side = 0",
    },
    MemoryLever {
        label: "both off",
        toml: "[liveness]\nenabled = false\n[recognition]\ncoarse_detect_side = 0",
    },
    MemoryLever {
        label: "opencv_threads = 1",
        toml: "[recognition]\nopencv_threads = 1",
    },
    MemoryLever {
        label: "workers = 1",
        toml: "[http]\nworkers = 1",
    },
];

/// Each setting in a daemon of its own, one after the other, and the Python server last: the same
/// PNG then JPEG frames at concurrency 2; peak RSS, and CPU per frame (load-independent, unlike time).
fn memory_levers(gallery: &Path, frames: &[DoorFrame], python: Option<&str>, engine: &Engine) {
    println!(
        "memory levers: {MEMORY_FRAMES} PNG then {MEMORY_FRAMES} JPEG frames at concurrency 2 per daemon, load average {}",
        common::load_average()
    );
    println!(
        "  {:<24} {:>10} {:>10} {:>12} {:>12}",
        "setting", "idle MiB", "peak MiB", "peak MB", "CPU ms/frame"
    );
    let requests: Vec<Vec<Vec<u8>>> = [Format::Png, Format::Jpeg]
        .iter()
        .map(|&format| {
            frames
                .iter()
                .map(|f| request(format, Body::Raw, f))
                .collect()
        })
        .collect();
    let measure = |label: &str, server: Server| {
        let (idle, _) = server.memory_kib();
        let cpu_before = server.cpu_ms();
        for format_requests in &requests {
            server.load(format_requests, 2, MEMORY_FRAMES, 0);
        }
        let cpu = (server.cpu_ms() - cpu_before) / (2 * MEMORY_FRAMES) as f64;
        let (_, peak) = server.memory_kib();
        println!(
            "  {:<24} {:>10.1} {:>10.1} {:>12.0} {:>12.1}",
            label,
            idle as f64 / MIB,
            peak as f64 / MIB,
            peak as f64 * 1024.0 / 1e6,
            cpu
        );
        server.stop();
    };
    for lever in &MEMORY_LEVERS {
        measure(lever.label, Server::facegate_with(gallery, &[lever.toml]));
    }
    match python {
        Some(python) => measure(PYTHON, python_server(python, gallery, engine)),
        None => println!("  {PYTHON}: not measured (no Python with cv2)"),
    }
}

fn median_kib(frames: &[DoorFrame], format: Format) -> f64 {
    median(
        &frames
            .iter()
            .map(|f| format.bytes(f).len() as f64 / 1024.0)
            .collect::<Vec<_>>(),
    )
}

struct Summary {
    p50: f64,
    p90: f64,
    p99: f64,
    throughput: f64,
    errors: usize,
    statuses: String,
}

/// All rounds' latencies pooled; throughput is the mean of the rounds'.
fn summary(runs: &[Run]) -> Summary {
    let latencies: Vec<f64> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
    Summary {
        p50: percentile(&latencies, 50.0),
        p90: percentile(&latencies, 90.0),
        p99: percentile(&latencies, 99.0),
        throughput: mean(&runs.iter().map(|r| r.throughput).collect::<Vec<_>>()),
        errors: runs.iter().map(|r| r.errors).sum(),
        statuses: statuses(runs),
    }
}

/// How many answers had each `status`, as `granted 70, unknown 3`.
fn statuses(runs: &[Run]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for answer in runs.iter().flat_map(|r| r.answers.iter()) {
        *counts
            .entry(answer["status"].as_str().unwrap_or("?"))
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|(status, n)| format!("{status} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// At concurrency 1 the answers come in request order, round after round: how many frames got the
/// same status and identity from both servers (each frame's first answer).
fn agreement(a: &[Run], b: &[Run], frames: usize) -> (usize, usize) {
    let decisions = |runs: &[Run]| {
        let mut by_frame = vec![None; frames];
        let answers = runs.iter().flat_map(|r| r.answers.iter());
        for (i, answer) in answers.enumerate() {
            by_frame[i % frames]
                .get_or_insert((answer["status"].clone(), answer["identity"].clone()));
        }
        by_frame
    };
    let (a, b) = (decisions(a), decisions(b));
    let compared = a.iter().zip(&b).filter(|(x, y)| x.is_some() && y.is_some());
    let total = compared.clone().count();
    let same = compared.filter(|(x, y)| x == y).count();
    (same, total)
}

/// Raw bodies if facegate answers a raw PNG with 200, else base64.
fn body_facegate_takes(server: &Server, frame: &DoorFrame) -> Body {
    let raw = request(Format::Png, Body::Raw, frame);
    let run = server.load(&[raw], 1, 1, 0);
    if run.errors == 0 {
        Body::Raw
    } else {
        Body::Base64
    }
}

/// The first Python that imports cv2 and numpy: `FACEGATE_PYTHON`, Debian's /usr/bin/python3, then
/// `python3` on the PATH (a pyenv or venv Python usually lacks Debian's cv2).
fn python_with_opencv() -> Result<String, String> {
    let candidates: Vec<String> = std::env::var("FACEGATE_PYTHON")
        .into_iter()
        .chain(["/usr/bin/python3".to_string(), "python3".to_string()])
        .collect();
    for python in &candidates {
        let imports = Command::new(python)
            .args(["-c", "import cv2, numpy"])
            .output();
        if imports.is_ok_and(|o| o.status.success()) {
            return Ok(python.clone());
        }
    }
    Err(format!(
        "none of {} can import cv2 and numpy. Install Debian's python3-opencv and python3-numpy \
         (scripts/install-deps --bench), or point FACEGATE_PYTHON at a Python that has them",
        candidates.join(", ")
    ))
}

fn python_server(python: &str, gallery: &Path, engine: &Engine) -> Server {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/opencv_server.py");
    // MobileFaceNet without facegate's widening of its narrow depthwise convolutions: a lever of
    // facegate's, as its quick detection pass is.
    let embedder =
        engine.loadable_only_embedder(gallery.parent().expect("the gallery sits in a directory"));
    let mut command = Command::new(python);
    command
        .arg(script)
        .args(["--listen", "127.0.0.1:0", "--token", http::TOKEN])
        .arg("--detector")
        .arg(&engine.models.detector.path)
        .arg("--embedder")
        .arg(&embedder)
        .arg("--gallery")
        .arg(gallery)
        .arg("--threshold")
        .arg(engine.threshold.to_string())
        .arg("--detect-max-side")
        .arg(engine.config.recognition.detect_max_side.to_string())
        .arg("--min-face-px")
        .arg(engine.config.recognition.min_face_px.to_string());
    Server::spawn(
        command,
        tempfile::tempdir().expect("temp dir"),
        "opencv_server listening on http://",
    )
}
