//! End to end through the real release binary on loopback (issue 5): latency percentiles and throughput at
//! concurrency 1 and at the core count, against the floor (detector + embedder forward alone, measured here
//! in-process on the same frames), for the worker/OpenCV thread settings that matter; start-up time to the
//! first answered frame; and resident memory at idle and while serving 8K JPEGs at concurrency 2.
//! Run: `cargo bench --bench http_load` (prints tables; asserts nothing).

#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use base64::Engine as _;

use common::http::{self, Run, Server};
use common::{mean, median, percentile, TestFrame, CAMERA, EIGHT_K};
use support::Engine;

/// Requests per measured run (two passes over the 81 camera frames).
const CAMERA_REQUESTS: usize = 162;
const EIGHT_K_REQUESTS: usize = 54;
/// Every n-th photo of the 20 identities becomes an 8K frame.
const EIGHT_K_STEP: usize = 3;
const WARM_UP_REQUESTS: usize = 6;
const MIB: f64 = 1024.0;

/// The `[recognition] opencv_threads` and `[http] workers` values each daemon run uses (0 = default).
struct Settings {
    label: &'static str,
    workers: usize,
    opencv_threads: i32,
}

const SETTINGS: [Settings; 3] = [
    Settings {
        label: "defaults (workers = cores, OpenCV threads = cores)",
        workers: 0,
        opencv_threads: 0,
    },
    Settings {
        label: "opencv_threads = 1 (workers = cores)",
        workers: 0,
        opencv_threads: 1,
    },
    Settings {
        label: "workers = 1 (OpenCV threads = cores)",
        workers: 1,
        opencv_threads: 0,
    },
];

fn main() {
    let engine = Engine::get();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "facegate http_load bench: the release binary on loopback, simulated door, token required"
    );
    let camera = common::frames(CAMERA, 1);
    let eight_k = common::frames(EIGHT_K, EIGHT_K_STEP);

    let mut floor = common::Floor::load(&engine.config, &engine.models);
    println!(
        "  {cores} cores, load average {}; {} camera frames (640x480), {} 8K frames (7680x4320)",
        common::load_average(),
        camera.len(),
        eight_k.len()
    );
    println!("  each run is compared with the floor (YuNet detect + embedder forward, in this process, daemon idle) measured just before it:");
    println!("  concurrency 1 against the floor with OpenCV's default threads (target e2e/floor < 1.15),");
    println!(
        "  concurrency {cores} against {cores} / single-thread floor (target throughput >= 90%)"
    );

    let state = tempfile::tempdir().expect("temp dir");
    let gallery = http::enrol_everyone(state.path());
    let camera_requests: Vec<Vec<u8>> = camera.iter().map(request).collect();

    println!();
    println!(
        "  {:<52} {:>4} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>7}",
        "settings",
        "conc",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean ms",
        "frames/s",
        "floor ms",
        "vs floor",
        "errors"
    );
    let mut startup = None;
    let mut breakdowns = Vec::new();
    for settings in &SETTINGS {
        let mut daemon = start(&gallery, settings);
        let first = daemon.first_answer(&camera_requests[0]);
        startup.get_or_insert((daemon.listening_after, first));
        daemon.warm_up(&camera_requests, 1, WARM_UP_REQUESTS);
        for concurrency in [1, cores] {
            common::set_opencv_threads(if concurrency == 1 { 0 } else { 1 });
            let reference = mean_floor(&mut floor, &camera);
            common::set_opencv_threads(0);
            let run = daemon.load(&camera_requests, concurrency, CAMERA_REQUESTS, 0);
            let versus_floor = if concurrency == 1 {
                breakdowns.push((
                    settings.label,
                    reference,
                    mean(&run.timing("detect_ms")),
                    mean(&run.timing("embed_ms")),
                    mean(&stage_sums(&run)),
                    mean(&run.timing("total_ms")),
                    run.mean(),
                ));
                format!("{:.2}x", run.mean() / reference.mean)
            } else {
                let ideal = cores as f64 * 1000.0 / reference.mean;
                format!("{:.0}%", 100.0 * run.throughput / ideal)
            };
            println!(
                "  {:<52} {:>4} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.2} {:>10} {:>7}",
                settings.label,
                concurrency,
                percentile(&run.latencies, 50.0),
                percentile(&run.latencies, 95.0),
                percentile(&run.latencies, 99.0),
                run.mean(),
                run.throughput,
                reference.mean,
                versus_floor,
                run.errors
            );
        }
        daemon.stop();
    }

    println!();
    println!("where the time goes at concurrency 1 (means, ms): the floor's two passes, then the daemon's own timings");
    println!(
        "  {:<52} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "settings", "f.detect", "f.embed", "detect", "embed", "stages", "daemon", "client"
    );
    for (label, reference, detect, embed, stages, server_total, e2e) in breakdowns {
        println!(
            "  {label:<52} {:>8.2} {:>8.2} {detect:>8.2} {embed:>8.2} {stages:>8.2} {server_total:>8.2} {e2e:>8.2}",
            reference.detect, reference.forward
        );
    }
    println!("  stages: the daemon's decode+detect+align+embed+match; daemon: received to answer ready; client: round trip");

    if let Some((listening, first)) = startup {
        println!();
        println!(
            "start-up (defaults): listening after {:.0} ms, first frame answered {:.0} ms after launch",
            listening.as_secs_f64() * 1000.0,
            first.as_secs_f64() * 1000.0
        );
    }

    println!();
    let mut daemon = start(&gallery, &SETTINGS[0]);
    let (idle_rss, idle_peak) = daemon.memory_kib();
    daemon.first_answer(&camera_requests[0]);
    let (after_one_rss, _) = daemon.memory_kib();
    let eight_k_requests: Vec<Vec<u8>> = eight_k.iter().map(request).collect();
    let run = daemon.load(&eight_k_requests, 2, EIGHT_K_REQUESTS, 0);
    let (rss, peak) = daemon.memory_kib();
    println!(
        "memory (defaults, {} workers): idle {:.0} MiB (peak {:.0}) before any frame, {:.0} MiB after one frame",
        cores,
        idle_rss as f64 / MIB,
        idle_peak as f64 / MIB,
        after_one_rss as f64 / MIB
    );
    println!(
        "  serving 8K JPEGs (median {:.0} KiB) at concurrency 2: peak RSS (VmHWM) {:.0} MiB, RSS after {:.0} MiB; p50 {:.0} ms, {:.1} frames/s, {} errors; target peak < 150 MiB",
        median(&eight_k.iter().map(|f| f.jpeg.len() as f64 / 1024.0).collect::<Vec<_>>()),
        peak as f64 / MIB,
        rss as f64 / MIB,
        percentile(&run.latencies, 50.0),
        run.throughput,
        run.errors
    );
    daemon.stop();
}

#[derive(Clone, Copy)]
struct FloorSummary {
    mean: f64,
    detect: f64,
    forward: f64,
}

fn mean_floor(floor: &mut common::Floor, frames: &[TestFrame]) -> FloorSummary {
    let timings = floor.per_frame(frames, 1);
    let totals: Vec<f64> = timings.iter().map(common::FloorTiming::total_ms).collect();
    FloorSummary {
        mean: mean(&totals),
        detect: mean(&timings.iter().map(|t| t.detect_ms).collect::<Vec<_>>()),
        forward: mean(&timings.iter().map(|t| t.forward_ms).collect::<Vec<_>>()),
    }
}

fn start(gallery: &std::path::Path, settings: &Settings) -> Server {
    Server::facegate(
        gallery,
        &format!("opencv_threads = {}", settings.opencv_threads),
        &format!("workers = {}", settings.workers),
        "",
    )
}

/// The daemon's decode + detect + align + embed + match of each answer.
fn stage_sums(run: &Run) -> Vec<f64> {
    run.answers
        .iter()
        .map(|a| {
            ["decode_ms", "detect_ms", "align_ms", "embed_ms", "match_ms"]
                .iter()
                .filter_map(|k| a["timings"][k].as_f64())
                .sum()
        })
        .collect()
}

fn request(frame: &TestFrame) -> Vec<u8> {
    let body = base64::engine::general_purpose::STANDARD.encode(&frame.jpeg);
    http::post_request("/image", "text/plain", body.as_bytes())
}
