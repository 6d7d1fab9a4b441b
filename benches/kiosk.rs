//! The kiosk page at the door (issue 17), measured: for one paired kiosk (real headless Chromium, its
//! fake camera playing a clip of an enrolled person, a stranger, or an empty hall), how many frames a
//! second the page sends and how much CPU the daemon spends per second of wall time; then the server's
//! cost of one frame as the kiosk sends it (a 1280x720 JPEG from the canvas) against the original app's
//! (a 1280x720 PNG). Run: `cargo bench --bench kiosk` (release binary; prints tables, asserts nothing).

#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::{Duration, Instant};

use opencv::core::Vector;
use opencv::imgcodecs;
use opencv::prelude::*;

use common::{load_average, mean, median, percentile};
use harness::chromium::{at_the_door, pair_kiosk, Browser, Driver};
use harness::{Daemon, Setup, GRANTED_PHOTO, STRANGER_PHOTO};

/// What the camera sees in each scene.
const SCENES: [(&str, &str); 3] = [
    ("enrolled person", GRANTED_PHOTO),
    ("stranger", STRANGER_PHOTO),
    ("empty hall", "_noface/HDRtoneMapping_memorialSample.jpg"),
];
/// How long each scene is watched, after the page has settled into it.
const WATCH: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(4);
const CAMERA: (i32, i32) = (1280, 720);
/// The canvas's `toBlob("image/jpeg", 0.8)` in kiosk.js, as OpenCV's JPEG quality.
const KIOSK_JPEG_QUALITY: i32 = 80;
const FRAMES_PER_FORMAT: usize = 40;

/// User plus system CPU time of process `pid` so far.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon runs");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

fn main() {
    println!("kiosk bench: load average {}", load_average());
    let clips = tempfile::tempdir().unwrap();
    let daemon = Setup::new().serve();
    let base = format!("http://{}", daemon.addr);
    println!(
        "daemon: test config (1 worker, 1 OpenCV thread, door hold 2 s, pause while open, liveness off)\n"
    );
    watch_scenes(&daemon, &base, clips.path());
    frame_costs(&daemon);
}

fn watch_scenes(daemon: &Daemon, base: &str, clips: &std::path::Path) {
    let driver = Driver::start();
    println!("| scene | frames/s sent | daemon CPU s per s | answers |");
    println!("|---|---|---|---|");
    for (index, (scene, photo)) in SCENES.iter().enumerate() {
        let clip = support::camera_clip(
            clips,
            &format!("scene-{index}"),
            &support::door_view(photo, CAMERA),
        );
        let browser = Browser::open_with(&driver, &at_the_door(&clip, "en-US"));
        pair_kiosk(&browser, daemon, base, &format!("bench-{index}"));
        std::thread::sleep(SETTLE);
        browser.requested_urls();
        let audited = harness::audit_lines(daemon).len();
        let (started, cpu) = (Instant::now(), cpu_time(daemon.pid()));
        std::thread::sleep(WATCH);
        let frames = browser
            .requested_urls()
            .iter()
            .filter(|url| url.ends_with("/image"))
            .count();
        let (elapsed, used) = (started.elapsed(), cpu_time(daemon.pid()) - cpu);
        let mut statuses: Vec<String> = harness::audit_lines(daemon)[audited..]
            .iter()
            .filter_map(|line| line["status"].as_str().map(str::to_string))
            .collect();
        statuses.sort();
        statuses.dedup();
        println!(
            "| {scene} | {:.2} | {:.3} | {} |",
            frames as f64 / elapsed.as_secs_f64(),
            used.as_secs_f64() / elapsed.as_secs_f64(),
            statuses.join(", ")
        );
    }
    println!();
}

/// The same door frame posted as the kiosk sends it and as the original app did, one at a time.
fn frame_costs(daemon: &Daemon) {
    let frame = support::door_view(STRANGER_PHOTO, CAMERA);
    let encode = |ext: &str, params: &[i32]| {
        let mut bytes = Vector::<u8>::new();
        imgcodecs::imencode(ext, &frame, &mut bytes, &Vector::from_slice(params)).unwrap();
        bytes.to_vec()
    };
    let formats = [
        (
            "kiosk: JPEG q80",
            "image/jpeg",
            encode(
                ".jpg",
                &[imgcodecs::IMWRITE_JPEG_QUALITY, KIOSK_JPEG_QUALITY],
            ),
        ),
        ("app: PNG", "image/png", encode(".png", &[])),
    ];
    println!("Server cost of one 1280x720 door frame (a stranger: recognised all the way), {FRAMES_PER_FORMAT} frames each:");
    println!("| frame | bytes | latency median ms | p90 ms | daemon CPU ms per frame | decode ms (mean) |");
    println!("|---|---|---|---|---|---|");
    let bearer = harness::bearer();
    for (label, content_type, body) in &formats {
        let headers = [
            ("Authorization", bearer.as_str()),
            ("Content-Type", *content_type),
        ];
        daemon.send("POST", "/image", &headers, body);
        let cpu = cpu_time(daemon.pid());
        let mut latencies = Vec::new();
        let mut decode = Vec::new();
        for _ in 0..FRAMES_PER_FORMAT {
            let started = Instant::now();
            let reply = daemon.send("POST", "/image", &headers, body);
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            let answer = reply.json();
            assert_eq!(answer["status"], "unknown", "{answer}");
            decode.extend(answer["timings"]["decode_ms"].as_f64());
        }
        let used = cpu_time(daemon.pid()) - cpu;
        println!(
            "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            body.len(),
            median(&latencies),
            percentile(&latencies, 90.0),
            used.as_secs_f64() * 1000.0 / FRAMES_PER_FORMAT as f64,
            mean(&decode)
        );
    }
}
