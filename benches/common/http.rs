//! Shared by the http_load and door benches: servers run as child processes on loopback (facegate's
//! release binary, or the Python + OpenCV comparison server), a keep-alive HTTP/1.1 client, and a load
//! runner that posts prepared requests at a given concurrency and keeps every answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support;

pub use crate::harness::TOKEN;

/// Enrols each of the 20 identities from their first photo with `facegate enroll`; returns the gallery.
pub fn enrol_everyone(dir: &Path) -> PathBuf {
    let setup = crate::harness::Setup::for_bench(&empty_gallery(dir));
    for (name, photos) in support::people() {
        let photo = support::faces_dir().join(&photos[0]);
        let enrolled = setup.run(&[
            "enroll",
            "--name",
            &name,
            photo.to_str().expect("UTF-8 path"),
        ]);
        assert!(
            enrolled.status.success(),
            "enrolling {name} failed: {enrolled:?}"
        );
    }
    let gallery = dir.join("gallery.json");
    std::fs::copy(setup.state_dir().join("gallery.json"), &gallery).expect("gallery copied");
    gallery
}

/// A gallery file with nobody in it yet (the daemon makes one when none exists).
fn empty_gallery(dir: &Path) -> PathBuf {
    let path = dir.join("empty-gallery.json");
    let engine = support::Engine::get();
    engine
        .empty_gallery()
        .save(&path)
        .expect("empty gallery written");
    path
}

/// A POST of `body` to `path` with the bench's token, as bytes ready to send.
pub fn post_request(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "POST {path} HTTP/1.1\r\nHost: facegate\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A server under test, running as a child process: facegate through the test harness, or the
/// comparison server.
pub struct Server {
    process: Process,
    addr: SocketAddr,
    launched: Instant,
    pub listening_after: Duration,
}

enum Process {
    Facegate(crate::harness::Daemon),
    Other {
        child: Child,
        _dir: tempfile::TempDir,
    },
}

/// The answers of one load run.
pub struct Run {
    pub latencies: Vec<f64>,
    /// Every 200 answer's JSON body.
    pub answers: Vec<serde_json::Value>,
    pub throughput: f64,
    pub errors: usize,
}

impl Run {
    pub fn mean(&self) -> f64 {
        super::mean(&self.latencies)
    }

    /// `timings.<key>` of every answer that has it, in milliseconds.
    pub fn timing(&self, key: &str) -> Vec<f64> {
        self.answers
            .iter()
            .filter_map(|a| a["timings"][key].as_f64())
            .collect()
    }
}

impl Server {
    /// facegate serve with production defaults, a copy of `gallery`, and `recognition` and `http`
    /// lines for those tables and `tables` whole tables more (TOML).
    pub fn facegate(gallery: &Path, recognition: &str, http: &str, tables: &str) -> Server {
        let tables_named = format!("[recognition]\n{recognition}\n[http]\n{http}\n");
        Server::facegate_with(gallery, &[&tables_named, tables])
    }

    /// facegate serve with production defaults, a copy of `gallery`, and each of `tomls` merged into
    /// its config in turn.
    pub fn facegate_with(gallery: &Path, tomls: &[&str]) -> Server {
        let daemon = tomls
            .iter()
            .fold(crate::harness::Setup::for_bench(gallery), |setup, toml| {
                setup.merge_toml(toml)
            })
            .env("RUST_LOG", "warn,facegate::daemon=info")
            .serve();
        Server {
            addr: daemon.addr,
            launched: daemon.launched,
            listening_after: daemon.listening_after,
            process: Process::Facegate(daemon),
        }
    }

    /// Starts `command` with stderr to a log in `dir`, and waits for `marker` followed by the address.
    pub fn spawn(mut command: Command, dir: tempfile::TempDir, marker: &str) -> Server {
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let launched = Instant::now();
        let mut child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the server");
        let addr = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(rest) = text.split(marker).nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                break addr.parse().expect("listening address");
            }
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("the server exited ({status}):\n{text}");
            }
            assert!(
                launched.elapsed() < Duration::from_secs(60),
                "the server did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        Server {
            process: Process::Other { child, _dir: dir },
            addr,
            launched,
            listening_after: launched.elapsed(),
        }
    }

    /// Posts one request, which must be answered 200, and returns the time from launch to its answer.
    pub fn first_answer(&mut self, request: &[u8]) -> Duration {
        let mut client = Client::connect(self.addr);
        let (status, body) = client.post(request);
        assert_eq!(
            status,
            200,
            "the first frame was not answered 200: {}",
            String::from_utf8_lossy(&body)
        );
        self.launched.elapsed()
    }

    /// Posts `count` requests over each of `connections` connections at once, untimed, so that every
    /// worker has loaded its models and run once.
    pub fn warm_up(&self, requests: &[Vec<u8>], connections: usize, count: usize) {
        self.load(requests, connections, connections * count, 0);
    }

    /// `total` requests over `concurrency` keep-alive connections, requests taken in turn from
    /// `first` on.
    pub fn load(
        &self,
        requests: &[Vec<u8>],
        concurrency: usize,
        total: usize,
        first: usize,
    ) -> Run {
        let next = AtomicUsize::new(first);
        let total = first + total;
        let answered = Mutex::new(Vec::with_capacity(total));
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
                        let took = super::elapsed_ms(sent);
                        if status == 200 {
                            let answer = serde_json::from_slice(&body).unwrap_or_default();
                            answered.lock().unwrap().push((took, answer));
                        } else {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        let wall = started.elapsed().as_secs_f64();
        let (latencies, answers): (Vec<f64>, Vec<serde_json::Value>) =
            answered.into_inner().unwrap().into_iter().unzip();
        Run {
            throughput: latencies.len() as f64 / wall,
            latencies,
            answers,
            errors: errors.into_inner(),
        }
    }

    fn pid(&self) -> i32 {
        match &self.process {
            Process::Facegate(daemon) => daemon.pid(),
            Process::Other { child, .. } => child.id() as i32,
        }
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        crate::harness::memory_kib(self.pid())
    }

    /// CPU time the server has used so far (user and system, all threads), ms.
    pub fn cpu_ms(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields 14 and 15 (utime, stime), counted after the parenthesised command name.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: u64 = after_name
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum();
        // SAFETY: sysconf only reads a system constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        ticks as f64 * 1000.0 / per_second
    }

    pub fn stop(mut self) {
        match &mut self.process {
            Process::Facegate(daemon) => {
                daemon.terminate();
            }
            Process::Other { child, .. } => {
                // SAFETY: kill(2) on our own child's pid, not reaped yet.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Process::Other { child, .. } = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A keep-alive HTTP/1.1 client that reconnects when the server closes the connection.
pub struct Client {
    addr: SocketAddr,
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client {
            addr,
            stream: Self::open(addr),
            buffer: Vec::new(),
        }
    }

    fn open(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).expect("connect to the server");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream
    }

    /// Sends one request; (status, body), or (0, empty) when the connection failed twice.
    pub fn post(&mut self, request: &[u8]) -> (u16, Vec<u8>) {
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
