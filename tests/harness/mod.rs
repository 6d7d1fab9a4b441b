//! Drives the real `facegate` binary for the daemon tests: a temp state dir and config, people enrolled
//! through the CLI, `facegate serve` on 127.0.0.1:0 with the sim door journaling to a file, a minimal
//! HTTP/1.1 client over loopback, and a stop by SIGTERM (SIGKILL on drop, so no daemon outlives a test).

// Each test uses a different subset of these helpers.
#![allow(dead_code)]

pub mod chromium;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tempfile::TempDir;

pub const FETCH_HINT: &str =
    "run `FACEGATE_MIRROR=/work/shared scripts/fetch-assets` (or plain `scripts/fetch-assets` with \
     internet access) in the crate directory";

/// The bearer token every test daemon requires.
pub const TOKEN: &str = "test-token-0123456789";

/// Enrolled from `obama/obama.jpg`; `GRANTED_PHOTO` is another photo of him.
pub const ENROLLED: [(&str, &str); 2] =
    [("obama", "obama/obama.jpg"), ("biden", "biden/biden.jpg")];
pub const GRANTED_PHOTO: &str = "obama/obama2.jpg";
/// Someone not enrolled: one face, far below the threshold against both enrolled people.
pub const STRANGER_PHOTO: &str = "kit_harington/john2.jpeg";
pub const NO_FACE_PHOTO: &str = "_noface/cat.jpg";

/// Generous limits for things that happen "soon" on a loaded two-core machine: never a timing
/// assertion, only how long to wait before declaring that something did not happen at all.
const STARTUP_LIMIT: Duration = Duration::from_secs(90);
const EXIT_LIMIT: Duration = Duration::from_secs(60);
const HTTP_LIMIT: Duration = Duration::from_secs(60);
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

pub fn assets_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    for sub in ["models", "faces"] {
        assert!(
            dir.join(sub).is_dir(),
            "the test assets are missing: {} does not exist. The daemon tests need the real models and \
             photos: {FETCH_HINT}",
            dir.join(sub).display()
        );
    }
    dir
}

/// A test photo by its path under assets/faces/.
pub fn photo(relative: &str) -> Vec<u8> {
    let path = assets_dir().join("faces").join(relative);
    std::fs::read(&path).unwrap_or_else(|err| {
        panic!(
            "test photo {} is missing or unreadable ({err}): {FETCH_HINT}",
            path.display()
        )
    })
}

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_facegate"));
    // The tests' own environment must not leak into the daemon's configuration or logging.
    command
        .env_remove("FACEGATE_TOKEN")
        .env_remove("FACEGATE_CONFIG")
        .env_remove("FACEGATE_MQTT_PASSWORD")
        .env_remove("FACEGATE_MQTT_COMMAND_SECRET")
        .env_remove("FACEGATE_MODELS_DIR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// How a command that ran to its end finished.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `facegate <args>` to its exit; a process still running after a minute is killed and fails
/// the test (e.g. a daemon that should have refused to start).
pub fn run_facegate(args: &[&str], scratch: &Path) -> Finished {
    run_facegate_in(binary(), args, scratch)
}

/// `facegate --config <setup's config> <args>` with extra environment variables.
pub fn run_facegate_with_env(setup: &Setup, args: &[&str], env: &[(&str, &str)]) -> Finished {
    setup.write_config();
    let mut command = binary();
    command.envs(env.iter().copied());
    let config = setup.config_path();
    let mut full = vec!["--config", config.to_str().unwrap()];
    full.extend_from_slice(args);
    run_facegate_in(command, &full, setup.dir())
}

fn run_facegate_in(mut command: Command, args: &[&str], scratch: &Path) -> Finished {
    let stdout_path = scratch.join("run.stdout");
    let stderr_path = scratch.join("run.stderr");
    let mut child = command
        .args(args)
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("the facegate binary runs");
    let status = wait_with_limit(&mut child, EXIT_LIMIT).unwrap_or_else(|| {
        kill_hard(&mut child);
        panic!(
            "`facegate {}` was still running after {EXIT_LIMIT:?}; stderr:\n{}",
            args.join(" "),
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        )
    });
    Finished {
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting on facegate") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_hard(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The gallery of `ENROLLED`, made once per test binary with `facegate enroll`: `gallery.json` and
/// the face thumbnails enrolment stored, as (path under the state dir, bytes).
fn enrolled_gallery() -> &'static [(PathBuf, Vec<u8>)] {
    static GALLERY: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    GALLERY.get_or_init(|| {
        let setup = Setup::bare();
        setup.write_config();
        for (name, relative) in ENROLLED {
            let image = assets_dir().join("faces").join(relative);
            assert!(
                image.is_file(),
                "{} is missing: {FETCH_HINT}",
                image.display()
            );
            let finished = setup.run(&["enroll", "--name", name, image.to_str().unwrap()]);
            assert!(
                finished.status.success() && finished.stdout.contains("accepted"),
                "`facegate enroll --name {name} {relative}` failed: {finished:?}"
            );
        }
        let state = setup.state_dir();
        let thumbnails =
            std::fs::read_dir(state.join("thumbnails")).expect("enroll stored thumbnails");
        let mut files: Vec<PathBuf> = thumbnails
            .map(|entry| Path::new("thumbnails").join(entry.unwrap().file_name()))
            .collect();
        files.push(PathBuf::from("gallery.json"));
        files
            .into_iter()
            .map(|file| {
                let bytes = std::fs::read(state.join(&file)).expect("an enrolment file");
                (file, bytes)
            })
            .collect()
    })
}

/// A temp directory with a config file for one daemon (or one CLI run): state dir with the enrolled
/// gallery, sim door journal, test token, port 0. `set` changes any key of the config.
pub struct Setup {
    dir: TempDir,
    config: toml::Table,
    /// Extra environment of the daemon (fault injection).
    env: Vec<(String, String)>,
    /// Shrink the daemon's stderr pipe to one page, so a test can fill it with a few lines.
    small_stderr_pipe: bool,
}

impl Setup {
    /// The test config with `ENROLLED` in the gallery.
    pub fn new() -> Setup {
        let setup = Setup::bare();
        std::fs::create_dir_all(setup.state_dir()).expect("state dir");
        std::fs::create_dir_all(setup.state_dir().join("thumbnails")).expect("thumbnails dir");
        for (file, bytes) in enrolled_gallery() {
            std::fs::write(setup.state_dir().join(file), bytes).expect("gallery written");
        }
        setup
    }

    /// The test config with only `name` (one of `ENROLLED`) in the gallery.
    pub fn enrolling_only(name: &str) -> Setup {
        let setup = Setup::new();
        let path = setup.state_dir().join("gallery.json");
        let mut gallery: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("gallery")).expect("JSON");
        let people = gallery["people"].as_array_mut().expect("a people list");
        people.retain(|person| person["name"] == name);
        assert_eq!(people.len(), 1, "{name} is not one of ENROLLED");
        std::fs::write(&path, gallery.to_string()).expect("gallery written");
        setup
    }

    /// A daemon for measurements (the benches): production defaults everywhere but for the test
    /// token, the sim door, port 0 and the models from the assets, with `gallery` as the enrolled
    /// people. Frames are recognised even while the door is open: benches measure recognition.
    pub fn for_bench(gallery: &Path) -> Setup {
        let setup = Setup::empty();
        std::fs::create_dir_all(setup.state_dir()).expect("state dir");
        std::fs::copy(gallery, setup.state_dir().join("gallery.json")).expect("gallery copied");
        setup.set("door.pause_while_open", false)
    }

    /// Merges TOML text (keys and whole tables) into the config, key by key.
    pub fn merge_toml(mut self, text: &str) -> Setup {
        fn merge(into: &mut toml::Table, from: toml::Table) {
            for (key, value) in from {
                match (into.get_mut(&key), value) {
                    (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
                    (_, value) => {
                        into.insert(key, value);
                    }
                }
            }
        }
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|err| panic!("bad TOML {text:?}: {err}"));
        merge(&mut self.config, table);
        self
    }

    /// The test config with nobody enrolled.
    fn bare() -> Setup {
        Setup::empty()
            .set("recognition.opencv_threads", 1)
            .set("http.workers", 1)
            .set("http.queue_depth", 4)
            .set("door.hold_ms", 2000)
            .set("door.cooldown_ms", 0)
            // A loaded machine must not turn a fresh grant stale; the stale test sends an old frame.
            .set("door.max_decision_age_ms", 60_000)
            // Nor turn the relay's report into `pending`.
            .set("door.report_wait_ms", 2000)
            // The web photos are no fair liveness test (docs/accuracy.md); tests/liveness_daemon.rs
            // turns it on with the `_liveness/` samples.
            .set("liveness.enabled", false)
    }

    /// Only what every daemon run needs: state and models, port 0, the test token, the sim door.
    fn empty() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let setup = Setup {
            dir,
            config: toml::Table::new(),
            env: Vec::new(),
            small_stderr_pipe: false,
        };
        let path = |p: PathBuf| p.to_str().expect("UTF-8 temp path").to_string();
        let state = path(setup.state_dir());
        let journal = path(setup.journal_path());
        setup
            .set("state_dir", state)
            .set("models_dir", path(assets_dir().join("models")))
            .set("http.listen", "127.0.0.1:0")
            .set("http.token", TOKEN)
            .set("door.backend", "sim")
            .set("door.sim_journal", journal)
            // A loaded test machine's disk can take longer than a Pi's default 2 s for a /save.
            .set("snapshots.save_wait_ms", 60_000)
    }

    /// Sets a dotted key such as `"door.hold_ms"`, creating its table if needed.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Setup {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut table = &mut self.config;
        for part in parts {
            table = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{part} in {key} is not a table"));
        }
        table.insert(last.into(), value.into());
        self
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Setup {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Gives the daemon a stderr pipe of one page (4 KiB): a few dozen unread lines fill it.
    pub fn small_stderr_pipe(mut self) -> Setup {
        self.small_stderr_pipe = true;
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("facegate.toml")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.path().join("door.jsonl")
    }

    pub fn write_config(&self) {
        let text = toml::to_string(&self.config).expect("config serializes");
        std::fs::write(self.config_path(), text).expect("config written");
    }

    /// Runs `facegate --config <this config> <args>` to its exit.
    pub fn run(&self, args: &[&str]) -> Finished {
        self.write_config();
        let config = self.config_path();
        let mut full = vec!["--config", config.to_str().unwrap()];
        full.extend_from_slice(args);
        run_facegate(&full, self.dir.path())
    }

    /// What the sim relay did so far.
    pub fn journal(&self) -> Vec<Actuation> {
        read_journal(&self.journal_path())
    }

    /// Starts `facegate serve` and waits until it listens.
    pub fn serve(self) -> Daemon {
        Daemon::start(self)
    }

    /// Starts `facegate serve` without waiting for it to listen: for a start-up that stalls.
    pub fn launch(self) -> Daemon {
        let (daemon, _) = Daemon::spawn(self);
        daemon
    }
}

/// Every weekday a working day (so a test passes any day) and codes for yesterday to tomorrow made
/// by `facegate codes generate`: the setup and the 4 codes valid today (3 daily, 1 weekly). Long
/// codes, so that no timestamp or id in a log can contain one by chance.
pub fn with_visitor_codes(setup: Setup) -> (Setup, Vec<String>) {
    let setup = setup.set(
        "codes.working_days",
        toml::Value::Array(
            ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .map(|d| toml::Value::String(d.into()))
                .into(),
        ),
    );
    let today = chrono::Local::now().date_naive();
    let (from, to) = (today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let generated = setup.run(&[
        "codes",
        "generate",
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
        "--daily",
        "3",
        "--weekly",
        "1",
        "--digits",
        "12",
    ]);
    assert!(generated.status.success(), "{generated:?}");
    let shown = setup.run(&["codes", "show", "--json"]);
    let valid: Value = serde_json::from_str(&shown.stdout).unwrap_or_else(|_| panic!("{shown:?}"));
    let codes: Vec<String> = ["daily", "weekly"]
        .iter()
        .flat_map(|kind| valid[kind].as_array().cloned().unwrap_or_default())
        .map(|code| code.as_str().expect("a code is a string").to_string())
        .collect();
    assert_eq!(codes.len(), 4, "{valid}");
    (setup, codes)
}

/// One line of the sim door journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actuation {
    pub ts: DateTime<Utc>,
    pub state: String,
    pub reason: String,
}

impl Actuation {
    pub fn is_unlocked(&self) -> bool {
        self.state == "unlocked"
    }
}

fn read_journal(path: &Path) -> Vec<Actuation> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Vec::new(),
        Err(err) => panic!("cannot read the door journal {}: {err}", path.display()),
    };
    // Only whole lines: the daemon may be appending right now.
    text.split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
        .map(|line| {
            let entry: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("journal line {line:?} is not JSON: {err}"));
            let field = |name: &str| {
                entry[name]
                    .as_str()
                    .unwrap_or_else(|| panic!("journal line {line:?} has no string {name:?}"))
                    .to_string()
            };
            let state = field("state");
            assert!(
                state == "locked" || state == "unlocked",
                "journal line {line:?}: unexpected state"
            );
            Actuation {
                ts: DateTime::parse_from_rfc3339(&field("ts"))
                    .unwrap_or_else(|err| panic!("journal line {line:?}: bad ts: {err}"))
                    .with_timezone(&Utc),
                state,
                reason: field("reason"),
            }
        })
        .collect()
}

/// A zone without daylight saving, so that permission tests can work out its local times with a fixed
/// offset around the real current time.
pub const SEOUL: &str = "Asia/Seoul";

pub fn seoul(at: DateTime<Utc>) -> DateTime<chrono::FixedOffset> {
    at.with_timezone(&chrono::FixedOffset::east_opt(9 * 3600).expect("UTC+9"))
}

/// Weekly hours of one window from `start` (Seoul time) lasting `minutes`, e.g. `thu 21:40-00:40`.
pub fn seoul_window(start: DateTime<Utc>, minutes: i64) -> String {
    let start = seoul(start);
    let end = start + chrono::Duration::minutes(minutes);
    format!(
        "{} {}-{}",
        start.format("%a").to_string().to_lowercase(),
        start.format("%H:%M"),
        end.format("%H:%M")
    )
}

/// Polls `probe` until it returns `Some`, or fails the test after `WAIT_LIMIT`.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {WAIT_LIMIT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `facegate serve`. Killed with SIGKILL if dropped before [`Daemon::terminate`].
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// When the process was started, and how long it took to listen (start-up time, for benches).
    pub launched: Instant,
    pub listening_after: Duration,
    logs: Arc<Mutex<Vec<String>>>,
    /// While set, the drain thread stops reading the daemon's stderr (the pipe fills up).
    stderr_paused: Arc<AtomicBool>,
    drain: Option<JoinHandle<()>>,
    exit: Option<ExitStatus>,
    setup: Setup,
}

impl Daemon {
    fn start(setup: Setup) -> Daemon {
        let (mut daemon, listening) = Daemon::spawn(setup);
        match listening.recv_timeout(STARTUP_LIMIT) {
            Ok(addr) => {
                daemon.listening_after = daemon.launched.elapsed();
                daemon.addr = addr
                    .parse()
                    .unwrap_or_else(|err| panic!("bad listening address {addr:?}: {err}"));
            }
            Err(_) => {
                daemon.kill();
                panic!(
                    "facegate serve did not report `facegate listening on` (exit {:?}); its log:\n{}",
                    daemon.exit,
                    daemon.logs().join("\n")
                );
            }
        }
        daemon
    }

    /// Starts the process; the receiver gets the address once it says it listens.
    fn spawn(setup: Setup) -> (Daemon, mpsc::Receiver<String>) {
        setup.write_config();
        let launched = Instant::now();
        let mut child = binary()
            .args(["serve", "--config"])
            .arg(setup.config_path())
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the facegate binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        if setup.small_stderr_pipe {
            use std::os::fd::AsRawFd;
            // SAFETY: fcntl(2) F_SETPIPE_SZ on the read end of a pipe this process owns.
            let set = unsafe { libc::fcntl(stderr.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
            assert!(set >= 4096, "the stderr pipe could not be resized");
        }
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr_paused = Arc::new(AtomicBool::new(false));
        let (listening_tx, listening) = mpsc::channel();
        let drain = {
            let logs = Arc::clone(&logs);
            let paused = Arc::clone(&stderr_paused);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("facegate listening on ").nth(1) {
                        let url = rest.split_whitespace().next().unwrap_or_default();
                        let addr = url.split("://").nth(1).unwrap_or_default();
                        let _ = listening_tx.send(addr.to_string());
                    }
                    logs.lock().unwrap().push(line);
                    while paused.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        };
        let daemon = Daemon {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            launched,
            listening_after: Duration::ZERO,
            logs,
            stderr_paused,
            drain: Some(drain),
            exit: None,
            setup,
        };
        (daemon, listening)
    }

    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    pub fn state_dir(&self) -> PathBuf {
        self.setup.state_dir()
    }

    pub fn journal(&self) -> Vec<Actuation> {
        self.setup.journal()
    }

    /// Waits until the journal satisfies `done`, and returns it.
    pub fn wait_for_journal(
        &self,
        what: &str,
        done: impl Fn(&[Actuation]) -> bool,
    ) -> Vec<Actuation> {
        wait_for(what, || {
            let journal = self.journal();
            done(&journal).then_some(journal)
        })
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing every one of `needles`, and returns it.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        wait_for(&format!("a log line with {needles:?}"), || {
            self.logs()
                .into_iter()
                .find(|line| needles.iter().all(|n| line.contains(n)))
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    /// The exit status if the daemon has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("wait for the daemon")
    }

    /// Resident and peak memory of the daemon, in KiB (VmRSS, VmHWM).
    pub fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.pid())
    }

    /// Stops the daemon (SIGTERM) and starts it again with the same config and state directory.
    pub fn restart(&mut self) {
        assert!(
            self.terminate().success(),
            "a clean stop before the restart"
        );
        let setup = std::mem::replace(&mut self.setup, Setup::empty());
        *self = Daemon::start(setup);
    }

    /// Sends SIGTERM and waits for the exit; the logs stay readable afterwards.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid; the child is not reaped yet, so the pid is still ours.
        let sent = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM could not be sent");
        let mut child = self.child.take().expect("daemon running");
        let status = wait_with_limit(&mut child, EXIT_LIMIT).unwrap_or_else(|| {
            kill_hard(&mut child);
            panic!(
                "facegate did not exit within {EXIT_LIMIT:?} of SIGTERM; its log:\n{}",
                self.logs().join("\n")
            )
        });
        self.finish_logs();
        self.exit = Some(status);
        status
    }

    /// Starts the daemon again, stopped by [`Daemon::terminate`], with the same config and state
    /// on the same address (a tablet reconnects to where it was).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        let addr = self.addr.to_string();
        let setup = std::mem::replace(&mut self.setup, Setup::empty());
        *self = Daemon::start(setup.set("http.listen", addr));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_hard(&mut child);
            self.exit = child.try_wait().ok().flatten();
            self.finish_logs();
        }
    }

    /// Stops reading the daemon's stderr, as a stalled journal would: its pipe fills up.
    pub fn stop_reading_stderr(&self) {
        self.stderr_paused.store(true, Ordering::SeqCst);
    }

    /// Reads the daemon's stderr again.
    pub fn resume_reading_stderr(&self) {
        self.stderr_paused.store(false, Ordering::SeqCst);
    }

    fn finish_logs(&mut self) {
        self.resume_reading_stderr();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[("Authorization", &bearer())], b"")
    }

    /// Appends one reading (`contact open`, `contact closed`, `exit pressed`) to the simulated door
    /// inputs, `<state_dir>/door-sim-inputs`, which the daemon follows like `tail -f`.
    pub fn door_input(&self, line: &str) {
        let path = self.state_dir().join("door-sim-inputs");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|err| panic!("cannot append to {}: {err}", path.display()));
        writeln!(file, "{line}").expect("a door input line written");
    }

    /// Waits until `/healthz` says the contact is `contact` and the active alarm is `alarm`; returns
    /// the answer. Waiting for the first reading also means the daemon follows the inputs file.
    pub fn wait_for_contact(&self, contact: &str, alarm: Option<&str>) -> Value {
        wait_for(
            &format!("/healthz with contact {contact} and alarm {alarm:?}"),
            || {
                let health = self.get("/healthz").json();
                (health["contact"] == contact && health["alarm"].as_str() == alarm)
                    .then_some(health)
            },
        )
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Reply {
        self.send("POST", path, &[("Authorization", &bearer())], body)
    }

    /// One request on a fresh connection with exactly these headers (plus Host, Content-Length and
    /// Connection: close).
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.send_over(self.connect(), method, path, headers, body)
    }

    /// As [`Daemon::send`], from the loopback address `from` (any of 127.0.0.0/8): one test plays
    /// clients at many addresses.
    pub fn send_from(
        &self,
        from: IpAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let stream = connect_from(self.addr, from).expect("connect from another loopback address");
        stream.set_read_timeout(Some(HTTP_LIMIT)).unwrap();
        stream.set_write_timeout(Some(HTTP_LIMIT)).unwrap();
        self.send_over(stream, method, path, headers, body)
    }

    fn send_over(
        &self,
        mut stream: TcpStream,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        write_tolerating_close(&mut stream, head.as_bytes());
        write_tolerating_close(&mut stream, body);
        read_reply(&mut stream)
    }

    /// A connection to the daemon with generous timeouts, for hand-written requests.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect to the daemon");
        stream.set_read_timeout(Some(HTTP_LIMIT)).unwrap();
        stream.set_write_timeout(Some(HTTP_LIMIT)).unwrap();
        stream
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident and peak memory of process `pid`, in KiB (VmRSS, VmHWM); zeros once it is gone.
pub fn memory_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
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

pub fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A server that answers early (413, 503) may close before the whole body is written.
fn write_tolerating_close(stream: &mut TcpStream, bytes: &[u8]) {
    if let Err(err) = stream.write_all(bytes) {
        assert!(
            matches!(
                err.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
            ),
            "writing the request failed: {err}"
        );
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the answer had been read completely.
    pub received_at: DateTime<Utc>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "HTTP {} answer is not JSON ({err}): {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// Reads one answer: up to its Content-Length, or to the connection's end when it has none. Does
/// not wait for the server to close, so it also works when the server keeps the connection open.
pub fn read_reply(stream: &mut impl Read) -> Reply {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if let Some(reply) = complete_reply(&raw, false) {
            return reply;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // The server may reset a connection whose body it did not read; what arrived counts.
            Err(err) if err.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(err) => panic!(
                "reading the answer failed after {} bytes: {err}: {:?}",
                raw.len(),
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    complete_reply(&raw, true).unwrap_or_else(|| {
        panic!(
            "the connection closed before a whole answer arrived: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// Parses `raw` if it holds a whole answer; `closed` says no more bytes will come.
fn complete_reply(raw: &[u8], closed: bool) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let rest = &raw[split + 4..];
    let body = if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        if !closed && !rest.ends_with(b"0\r\n\r\n") {
            return None;
        }
        dechunk(rest)
    } else if let Some(length) = header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < length {
            assert!(
                !closed,
                "answer body cut short: {} of {length} bytes",
                rest.len()
            );
            return None;
        }
        rest[..length].to_vec()
    } else if closed {
        rest.to_vec()
    } else {
        return None;
    };
    Some(Reply {
        status,
        headers,
        body,
        received_at: Utc::now(),
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|err| panic!("bad chunk size {size_text:?}: {err}"));
        raw = &raw[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

pub fn snapshot_files(daemon: &Daemon, id: &str) -> Vec<std::path::PathBuf> {
    let Ok(days) = std::fs::read_dir(daemon.state_dir().join("snapshots")) else {
        return Vec::new();
    };
    let mut files: Vec<_> = days
        .flatten()
        .filter_map(|day| std::fs::read_dir(day.path()).ok())
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.file_stem().and_then(|s| s.to_str()) == Some(id))
        .collect();
    files.sort();
    files
}

/// Waits for the snapshot `id` (image + sidecar); returns (image path, sidecar JSON).
pub fn wait_for_snapshot(daemon: &Daemon, id: &str) -> (std::path::PathBuf, Value) {
    let files = wait_for(&format!("snapshot {id}"), || {
        let files = snapshot_files(daemon, id);
        (files.len() == 2).then_some(files)
    });
    let sidecar = files
        .iter()
        .find(|p| p.extension().unwrap() == "json")
        .unwrap();
    let image = files
        .iter()
        .find(|p| p.extension().unwrap() != "json")
        .unwrap();
    let sidecar: Value = serde_json::from_slice(&std::fs::read(sidecar).unwrap()).unwrap();
    (image.clone(), sidecar)
}

pub fn audit_lines(daemon: &Daemon) -> Vec<Value> {
    let Ok(files) = std::fs::read_dir(daemon.state_dir().join("audit")) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for file in files.flatten() {
        let name = file.file_name().into_string().unwrap();
        assert!(
            name.starts_with("audit-") && name.ends_with(".jsonl"),
            "unexpected file {name} in the audit dir"
        );
        let text = std::fs::read_to_string(file.path()).unwrap();
        lines.extend(
            text.split_inclusive('\n')
                .filter(|line| line.ends_with('\n'))
                .map(|line| serde_json::from_str::<Value>(line).expect("audit line is JSON")),
        );
    }
    lines
}

/// A connection to `addr` from the loopback address `from` (any of 127.0.0.0/8), so that one test
/// can play clients at many addresses.
pub fn connect_from(addr: SocketAddr, from: impl Into<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from.into(), 0).into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// Puts a FIFO at `path`, a file whose read stays stuck until [`stuck_file_opened`]'s writer is
/// closed: a slow or hung disk, for the daemon's file reads.
pub fn make_stuck_file(path: &Path) {
    let fifo = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `fifo` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
}

/// Waits until the daemon has the stuck file at `path` open to read (`what` names who), and returns
/// the writer that lets the read go on: what it writes, then the end of the file when it is dropped.
pub fn stuck_file_opened(path: &Path, what: &str) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    // Opening a FIFO to write without blocking succeeds only once a reader has it open.
    wait_for(what, || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .ok()
    })
}

pub fn wait_for_audit(daemon: &Daemon, kind: &str, id: &str) -> Value {
    wait_for(&format!("the audit line {kind} {id}"), || {
        audit_lines(daemon)
            .into_iter()
            .find(|line| line["kind"] == kind && line["request_id"] == id)
    })
}
