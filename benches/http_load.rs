//! End to end through the real release binary on loopback (issue 5): latency percentiles and throughput at
//! concurrency 1 and at the core count, against the floor (detector + embedder forward alone, measured here
//! in-process on the same frames), for the worker/OpenCV thread settings that matter; start-up time to the
//! first answered frame; and resident memory at idle and while serving 8K JPEGs at concurrency 2.
//! Run: `cargo bench --bench http_load` (prints tables; asserts nothing).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use common::{mean, median, percentile, TestFrame, CAMERA, EIGHT_K};
use support::Engine;

const TOKEN: &str = "http-load-bench";
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
    let gallery = enrol_everyone(state.path());

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
        let mut daemon = Daemon::start(&gallery, settings);
        let first = daemon.first_answer(&camera[0]);
        startup.get_or_insert((daemon.listening_after, first));
        daemon.warm_up(&camera);
        for concurrency in [1, cores] {
            common::set_opencv_threads(if concurrency == 1 { 0 } else { 1 });
            let reference = mean_floor(&mut floor, &camera);
            common::set_opencv_threads(0);
            let run = daemon.load(&camera, concurrency, CAMERA_REQUESTS);
            let versus_floor = if concurrency == 1 {
                breakdowns.push((
                    settings.label,
                    reference,
                    mean(&run.server_detect),
                    mean(&run.server_embed),
                    mean(&run.server_stages),
                    mean(&run.server_totals),
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
    let mut daemon = Daemon::start(&gallery, &SETTINGS[0]);
    let (idle_rss, idle_peak) = daemon.memory_kib();
    daemon.first_answer(&camera[0]);
    let (after_one_rss, _) = daemon.memory_kib();
    let run = daemon.load(&eight_k, 2, EIGHT_K_REQUESTS);
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

/// Enrols each of the 20 identities from their first photo with `facegate enroll`; returns the gallery.
fn enrol_everyone(dir: &Path) -> PathBuf {
    let config = write_config(dir, &SETTINGS[0]);
    for (name, photos) in support::people() {
        let output = Command::new(env!("CARGO_BIN_EXE_facegate"))
            .arg("--config")
            .arg(&config)
            .args(["enroll", "--name", &name])
            .arg(support::faces_dir().join(&photos[0]))
            .output()
            .expect("run facegate enroll");
        assert!(
            output.status.success(),
            "enrolling {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    dir.join("state/gallery.json")
}

fn write_config(dir: &Path, settings: &Settings) -> PathBuf {
    let text = format!(
        "state_dir = {state:?}\nmodels_dir = {models:?}\n\n[recognition]\nopencv_threads = {threads}\n\n[http]\nworkers = {workers}\nrequire_token = true\ntoken = {TOKEN:?}\n\n[door]\nbackend = \"sim\"\nsim_journal = {journal:?}\n",
        state = dir.join("state"),
        models = support::assets_dir().join("models"),
        threads = settings.opencv_threads,
        workers = settings.workers,
        journal = dir.join("door.jsonl"),
    );
    let path = dir.join("facegate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
    launched: Instant,
    listening_after: Duration,
    _dir: tempfile::TempDir,
}

struct Run {
    latencies: Vec<f64>,
    /// The daemon's own `timings.total_ms` (received → answer ready) of each answered request.
    server_totals: Vec<f64>,
    /// The sum of the daemon's decode, detect, align, embed and match timings of each request.
    server_stages: Vec<f64>,
    /// The daemon's detect and embed timings of each request.
    server_detect: Vec<f64>,
    server_embed: Vec<f64>,
    throughput: f64,
    errors: usize,
}

impl Run {
    fn mean(&self) -> f64 {
        mean(&self.latencies)
    }
}

impl Daemon {
    fn start(gallery: &Path, settings: &Settings) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path(), settings);
        std::fs::create_dir_all(dir.path().join("state")).expect("state dir");
        std::fs::copy(gallery, dir.path().join("state/gallery.json")).expect("copy gallery");
        let log_path = dir.path().join("daemon.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let launched = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_facegate"))
            .arg("--config")
            .arg(&config)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn,facegate::daemon=info")
            .env_remove("FACEGATE_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start facegate serve");
        let addr = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(rest) = text.split("facegate listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                break addr.parse().expect("listening address");
            }
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("facegate serve exited ({status}):\n{text}");
            }
            assert!(
                launched.elapsed() < Duration::from_secs(60),
                "facegate serve did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        Daemon {
            child,
            addr,
            launched,
            listening_after: launched.elapsed(),
            _dir: dir,
        }
    }

    /// Posts one frame and returns the time from launch to its answer.
    fn first_answer(&mut self, frame: &TestFrame) -> Duration {
        let mut client = Client::connect(self.addr);
        let (status, _) = client.post(&request(frame));
        assert_eq!(status, 200, "the first frame was not answered 200");
        self.launched.elapsed()
    }

    fn warm_up(&self, frames: &[TestFrame]) {
        let mut client = Client::connect(self.addr);
        for frame in frames.iter().take(WARM_UP_REQUESTS) {
            client.post(&request(frame));
        }
    }

    /// `total` requests over `concurrency` keep-alive connections, frames taken in turn.
    fn load(&self, frames: &[TestFrame], concurrency: usize, total: usize) -> Run {
        let requests: Vec<Vec<u8>> = frames.iter().map(request).collect();
        let next = AtomicUsize::new(0);
        let latencies = Mutex::new(Vec::with_capacity(total));
        let server = Mutex::new(Vec::with_capacity(total));
        let errors = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..concurrency {
                scope.spawn(|| {
                    let mut client = Client::connect(self.addr);
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= total {
                            return;
                        }
                        let sent = Instant::now();
                        let (status, body) = client.post(&requests[i % requests.len()]);
                        let took = common::elapsed_ms(sent);
                        if status == 200 {
                            latencies.lock().unwrap().push(took);
                            server.lock().unwrap().push(server_timings(&body));
                        } else {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        let wall = started.elapsed().as_secs_f64();
        let latencies = latencies.into_inner().unwrap();
        let server = server.into_inner().unwrap();
        Run {
            throughput: latencies.len() as f64 / wall,
            latencies,
            server_totals: server.iter().map(|t| t.total).collect(),
            server_stages: server.iter().map(|t| t.stages).collect(),
            server_detect: server.iter().map(|t| t.detect).collect(),
            server_embed: server.iter().map(|t| t.embed).collect(),
            errors: errors.into_inner(),
        }
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The timings a decision answer reports, in milliseconds.
struct ServerTimings {
    total: f64,
    stages: f64,
    detect: f64,
    embed: f64,
}

fn server_timings(body: &[u8]) -> ServerTimings {
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let ms = |key: &str| answer["timings"][key].as_f64().unwrap_or(0.0);
    ServerTimings {
        total: ms("total_ms"),
        stages: ["decode_ms", "detect_ms", "align_ms", "embed_ms", "match_ms"]
            .iter()
            .map(|k| ms(k))
            .sum(),
        detect: ms("detect_ms"),
        embed: ms("embed_ms"),
    }
}

fn request(frame: &TestFrame) -> Vec<u8> {
    let body = base64::engine::general_purpose::STANDARD.encode(&frame.jpeg);
    let mut bytes = format!(
        "POST /image HTTP/1.1\r\nHost: facegate\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// A keep-alive HTTP/1.1 client that reconnects when the daemon closes the connection.
struct Client {
    addr: SocketAddr,
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client {
            addr,
            stream: Self::open(addr),
            buffer: Vec::new(),
        }
    }

    fn open(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).expect("connect to the daemon");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream
    }

    /// Sends one request; (status, body), or (0, empty) when the connection failed twice.
    fn post(&mut self, request: &[u8]) -> (u16, Vec<u8>) {
        for _ in 0..2 {
            if let Some(answer) = self.try_post(request) {
                return answer;
            }
            self.stream = Self::open(self.addr);
            self.buffer.clear();
        }
        (0, Vec::new())
    }

    fn try_post(&mut self, request: &[u8]) -> Option<(u16, Vec<u8>)> {
        self.stream.write_all(request).ok()?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
                let status = head.get(9..12)?.parse().ok()?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + length;
                while self.buffer.len() < total {
                    let n = self.stream.read(&mut chunk).ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buffer.extend_from_slice(&chunk[..n]);
                }
                let body = self.buffer[end + 4..total].to_vec();
                self.buffer.drain(..total);
                return Some((status, body));
            }
            let n = self.stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}
