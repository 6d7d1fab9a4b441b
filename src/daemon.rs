//! `facegate serve`: wires config, models, gallery, door, audit log and snapshots to the HTTP front end,
//! and owns the process's life: signals, panics, the watchdog and a fail-secure shutdown.

use std::backtrace::BacktraceStatus;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sd_notify::NotifyState;
use serde_json::json;

use crate::admin::{Admin, AdminContext};
use crate::audit::{AuditRetention, AuditWriter, AuditWriterThread};
use crate::config::{Config, DoorBackendName, GrantWhileOpenConfig};
use crate::door::{
    self, BackendKind, DoorController, DoorEvent, DoorSettings, GrantWhileOpen, RelayState,
};
use crate::gallery::{EmbedderId, LiveGallery};
use crate::http::{self, sockets};
use crate::metrics::Metrics;
use crate::service::Service;
use crate::snapshots::{SnapshotRetention, SnapshotWriter};
use crate::vision::{PipelineModels, Recognizer};

/// How long the accepting loop waits before looking at the stop flags again.
const ACCEPT_POLL: Duration = Duration::from_millis(250);
/// Consecutive failed self-probes after which the daemon gives up and exits for systemd to restart it.
const PROBE_FAILURES_FATAL: u32 = 3;
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Connections silent for this long are closed.
const IDLE_CONNECTION_LIMIT: Duration = Duration::from_secs(60);
/// Bytes beyond the largest body a connection may send without completing a request (headers).
const FLOOD_ALLOWANCE: u64 = 1024 * 1024;
/// How long the audit writer may take to write its queue when the daemon stops.
const AUDIT_FLUSH_LIMIT: Duration = Duration::from_secs(2);
const GALLERY_RECHECK: Duration = Duration::from_secs(2);

pub fn backend_kind(config: &Config) -> BackendKind {
    match config.door.backend {
        DoorBackendName::Gpio => BackendKind::Gpio {
            pin: config.door.gpio_pin,
            active_low: config.door.active_low,
        },
        DoorBackendName::Sim => BackendKind::Sim {
            journal: config.door.sim_journal.clone(),
        },
    }
}

/// `facegate door lock`: drive the relay locked once and exit.
pub fn lock_door(config: &Config) -> Result<()> {
    door::lock_once(&backend_kind(config)).context("the relay could not be driven locked")
}

/// The visitor code checker; a holidays file that cannot be read stops start-up.
fn visitor_codes(config: &Config) -> Result<crate::codes::CodeChecker> {
    crate::codes::CodeChecker::from_config(config).context("the visitor codes are not usable")
}

fn door_settings(config: &Config) -> DoorSettings {
    DoorSettings {
        hold: Duration::from_millis(config.door.hold_ms),
        cooldown: Duration::from_millis(config.door.cooldown_ms),
        grant_while_open: match config.door.grant_while_open {
            GrantWhileOpenConfig::Extend => GrantWhileOpen::Extend,
            GrantWhileOpenConfig::Ignore => GrantWhileOpen::Ignore,
        },
        report_wait: Duration::from_millis(config.door.report_wait_ms),
    }
}

/// Why the accepting loop stopped.
#[derive(Default)]
struct StopFlags {
    /// SIGTERM or SIGINT: a clean stop.
    signalled: AtomicBool,
    /// Something the daemon cannot recover from: exit non-zero so systemd restarts it.
    fatal: AtomicBool,
}

impl StopFlags {
    fn stopping(&self) -> bool {
        self.signalled.load(Ordering::SeqCst) || self.fatal.load(Ordering::SeqCst)
    }
}

pub fn run(config: Config) -> Result<()> {
    let token = config.token();
    if config.http.require_token && token.is_none() {
        bail!("http.require_token is on but no token is set: put the tablet's token in FACEGATE_TOKEN (or http.token), or set http.require_token = false on a trusted network");
    }
    if config.recognition.opencv_threads > 0 {
        opencv::core::set_num_threads(config.recognition.opencv_threads)?;
    }
    let metrics = Arc::new(Metrics::default());
    add_logging_metrics(&metrics);
    let (audit, audit_thread) = start_audit(&config, &metrics)?;
    let door = Arc::new(start_door(&config, &metrics, audit.clone())?);
    let stop = Arc::new(StopFlags::default());
    let panic_stop = Arc::clone(&stop);
    install_panic_hook(door.lock_guard(), move || {
        panic_stop.fatal.store(true, Ordering::SeqCst)
    });
    // From here on the door is running: every early return must lock it first.
    let served = serve(
        config,
        token.is_some(),
        metrics,
        audit,
        Arc::clone(&door),
        &stop,
    );
    let stopped = finish(door, served.err());
    if !audit_thread.finish(AUDIT_FLUSH_LIMIT) {
        log::error!("the audit writer did not finish its queue within {AUDIT_FLUSH_LIMIT:?}; lines may be lost");
    }
    stopped
}

fn finish(door: Arc<DoorController>, failure: Option<anyhow::Error>) -> Result<()> {
    let locked = match Arc::try_unwrap(door) {
        Ok(door) => door.shutdown().map_err(anyhow::Error::from),
        Err(shared) => {
            if shared.emergency_lock() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("the relay could not be confirmed locked"))
            }
        }
    };
    match (failure, locked) {
        (None, Ok(())) => {
            log::info!("facegate stopped; door locked");
            Ok(())
        }
        (Some(err), Ok(())) => Err(err.context("facegate stopped with the door locked")),
        (None, Err(lock)) => Err(lock),
        (Some(err), Err(lock)) => Err(err.context(format!("and locking failed: {lock:#}"))),
    }
}

/// Starts the audit writer thread (which opens the log itself, so a hung audit disk cannot hold up
/// start-up) and puts its counters on /metrics.
fn start_audit(config: &Config, metrics: &Metrics) -> Result<(AuditWriter, AuditWriterThread)> {
    let retention = AuditRetention {
        max_age_days: config.audit.max_age_days,
        max_total_bytes: config.audit.max_total_mb * 1024 * 1024,
    };
    let (audit, thread) = AuditWriter::start(config.audit_dir(), retention)
        .context("cannot start the audit writer thread")?;
    let counters = audit.counters();
    let failed = Arc::clone(&counters);
    metrics.add_source(
        "facegate_audit_failures_total",
        "counter",
        "Audit lines that could not be written.",
        move || failed.failed.load(Ordering::Relaxed),
    );
    metrics.add_source(
        "facegate_audit_dropped_total",
        "counter",
        "Audit lines dropped because the audit writer fell behind (slow or hung disk).",
        move || counters.dropped.load(Ordering::Relaxed),
    );
    Ok((audit, thread))
}

/// Puts the logger's state on /metrics.
fn add_logging_metrics(metrics: &Metrics) {
    metrics.add_source(
        "facegate_log_lines_dropped_total",
        "counter",
        "Log lines dropped because stderr (the journal) did not take them.",
        || crate::logging::health().dropped_lines,
    );
    metrics.add_source(
        "facegate_logging_stalled",
        "gauge",
        "1 while writing to stderr is stalled and log lines are being lost.",
        || u64::from(crate::logging::health().stalled),
    );
}

fn start_door(
    config: &Config,
    metrics: &Arc<Metrics>,
    audit: AuditWriter,
) -> Result<DoorController> {
    let backend = door::build_backend(&backend_kind(config))
        .context("the door backend could not be started")?;
    let observed = Arc::clone(metrics);
    let observer = Box::new(move |event: &DoorEvent| {
        if let DoorEvent::Actuation(actuation) = event {
            if actuation.state == RelayState::Unlocked && actuation.error.is_none() {
                observed.count_door_opening();
            }
        }
        audit.record(event);
    });
    let door = DoorController::start(backend, door_settings(config), observer)?;
    let dropped = door.dropped_reports();
    metrics.add_source(
        "facegate_door_reports_dropped_total",
        "counter",
        "Door reports (log and audit) dropped because their thread fell behind.",
        move || dropped.load(Ordering::Relaxed),
    );
    Ok(door)
}

/// The one panic policy: a panic anywhere drives the door locked first (latching the lockdown),
/// then `on_panic` runs (the daemon stops for systemd to start a fresh process), then the panic
/// is logged through the non-blocking logger (or, without it, by the previous hook). A panic on
/// the relay thread itself is locked by that thread as it unwinds (see `door::DoorController`).
pub fn install_panic_hook(
    guard: door::LockGuardHandle,
    on_panic: impl Fn() + Send + Sync + 'static,
) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        guard.emergency_lock();
        on_panic();
        if !crate::logging::installed() {
            return previous(info);
        }
        // Resolving the backtrace's symbols can take a second: another thread does it, so that a
        // panic on the relay thread goes on unwinding to its lock at once.
        let message = format!(
            "thread {} panicked: {info}; the door is locked and facegate is stopping",
            std::thread::current().name().unwrap_or("unnamed")
        );
        let backtrace = std::backtrace::Backtrace::capture();
        let reported = std::thread::Builder::new()
            .name("panic-report".into())
            .spawn(move || match backtrace.status() {
                BacktraceStatus::Captured => log::error!("{message}\n{backtrace}"),
                _ => log::error!("{message} (RUST_BACKTRACE=1 adds a backtrace)"),
            });
        if let Err(err) = reported {
            log::error!("a thread panicked and its report could not be logged: {err}");
        }
    }));
}

fn serve(
    config: Config,
    has_token: bool,
    metrics: Arc<Metrics>,
    audit: AuditWriter,
    door: Arc<DoorController>,
    stop: &Arc<StopFlags>,
) -> Result<()> {
    let models = PipelineModels::resolve(&config.recognition, &config.models_dir)
        .context("the models are not usable")?;
    let threshold = models.threshold(&config.recognition);
    let embedder = EmbedderId {
        name: models.embedder.name.clone(),
        sha256: models.embedder.sha256.clone(),
        dim: models.embedder.contract.output_dim,
    };
    let gallery = LiveGallery::open(&config.gallery_path(), &embedder, GALLERY_RECHECK)?;
    let workers = config.worker_count();
    let recognizers = (0..workers)
        .map(|_| Recognizer::load(&models, &config.recognition))
        .collect::<Result<Vec<_>, _>>()
        .context("the models did not load")?;
    let snapshots = start_snapshots(&config, &metrics);
    let codes = visitor_codes(&config)?;
    let server = tiny_http::Server::http(config.http.listen)
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", config.http.listen))?;
    let address = server
        .server_addr()
        .to_ip()
        .context("the server is not listening on an IP address")?;
    let people = gallery.current().people().len();
    let transport = Arc::new(http::Transport {
        token: config.token(),
        port: address.port(),
        ..http::Transport::default()
    });
    let service = Arc::new(Service::new(
        config, threshold, metrics, door, gallery, audit, snapshots, codes,
    ));
    let admin = service
        .config
        .admin
        .enabled
        .then(|| spawn_admin(&service, &transport, &models, &embedder, threshold))
        .transpose()?;
    let (jobs, queue) = crossbeam_channel::bounded(service.config.http.queue_depth);
    let worker_threads: Vec<JoinHandle<()>> = recognizers
        .into_iter()
        .enumerate()
        .map(|(i, recognizer)| {
            let service = Arc::clone(&service);
            let transport = Arc::clone(&transport);
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || http::run_worker(service, transport, recognizer, queue))
        })
        .collect::<Result<_, _>>()?;
    drop(queue);
    let sweeper_stop = Arc::new(AtomicBool::new(false));
    let sweep = sockets::SweepSettings {
        port: address.port(),
        io_timeout: Duration::from_millis(service.config.http.body_timeout_ms),
        idle_limit: IDLE_CONNECTION_LIMIT,
        flood_limit: service.config.http.max_body_bytes as u64 + FLOOD_ALLOWANCE,
    };
    sockets::spawn_sweeper(
        sweep,
        SWEEP_INTERVAL,
        Arc::clone(&transport.body_deadlines),
        Arc::clone(&transport.header_floods),
        Arc::clone(&sweeper_stop),
    )?;
    spawn_signal_thread(Arc::clone(stop))?;
    spawn_watchdog(
        address,
        Duration::from_millis(service.config.http.self_probe_interval_ms),
        Arc::clone(stop),
    )?;
    log::info!(
        "facegate listening on http://{address} ({workers} workers, queue {}, {people} people enrolled, threshold {threshold}, door {:?}, token {})",
        service.config.http.queue_depth,
        service.config.door.backend,
        if has_token { "required" } else { "not required" },
    );
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);

    let mut accept_failure = None;
    while !stop.stopping() {
        if http::parked_connections() > http::MAX_PARKED {
            log::error!(
                "more than {} connections parked after absurd bodies: restarting to release them",
                http::MAX_PARKED
            );
            stop.fatal.store(true, Ordering::SeqCst);
            break;
        }
        match server.recv_timeout(ACCEPT_POLL) {
            Ok(Some(request)) => http::dispatch(
                &service,
                &transport,
                &jobs,
                admin.as_ref().map(|(queue, _)| queue),
                request,
            ),
            Ok(None) => {}
            Err(err) => {
                accept_failure = Some(err);
                break;
            }
        }
    }
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    // Lock first, then let the workers answer what they hold: no grant from here on moves the relay.
    service.door.emergency_lock();
    drop(server);
    drop(jobs);
    for worker in worker_threads {
        let _ = worker.join();
    }
    if let Some((queue, thread)) = admin {
        drop(queue);
        let _ = thread.join();
    }
    sweeper_stop.store(true, Ordering::SeqCst);
    drop(service);
    if let Some(err) = accept_failure {
        bail!("the HTTP server stopped accepting connections ({err}); exiting so that systemd restarts facegate");
    }
    if stop.fatal.load(Ordering::SeqCst) {
        bail!("stopping after a fatal fault (see the log above)");
    }
    log::info!("stop signal received: answered the requests in progress");
    Ok(())
}

/// The admin pages' thread and its queue.
fn spawn_admin(
    service: &Arc<Service>,
    transport: &Arc<http::Transport>,
    models: &PipelineModels,
    embedder: &EmbedderId,
    threshold: f32,
) -> Result<(
    crossbeam_channel::Sender<tiny_http::Request>,
    JoinHandle<()>,
)> {
    let for_health = Arc::downgrade(service);
    let for_ids = Arc::downgrade(transport);
    let admin = Arc::new(Admin::new(AdminContext {
        config: service.config.clone(),
        models: models.clone(),
        embedder: embedder.clone(),
        threshold,
        door: Arc::clone(&service.door),
        audit: service.audit.clone(),
        health: Box::new(move || {
            for_health
                .upgrade()
                .map_or_else(|| json!({"status": "stopping"}), |s| s.health())
        }),
        next_id: Box::new(move || {
            for_ids
                .upgrade()
                .map_or_else(|| "admin".to_string(), |t| t.ids.next())
        }),
        // Plain HTTP until the daemon serves TLS (issue 9): then `Secure` follows http.tls.enabled.
        secure_cookies: false,
    }));
    let (queue, requests) = crossbeam_channel::bounded(http::admin::QUEUE_DEPTH);
    let transport = Arc::clone(transport);
    let max_body_bytes = service.config.http.max_body_bytes;
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || http::admin::run(admin, transport, max_body_bytes, requests))?;
    Ok((queue, thread))
}

/// Starts the snapshot writer thread (which opens the store itself, so a hung snapshot disk cannot
/// hold up start-up) and puts its counters on /metrics.
fn start_snapshots(config: &Config, metrics: &Metrics) -> Option<SnapshotWriter> {
    let retention = SnapshotRetention {
        max_count: config.snapshots.max_count,
        max_bytes: config.snapshots.max_total_mb * 1024 * 1024,
        max_age: Duration::from_secs(u64::from(config.snapshots.max_age_days) * 86_400),
    };
    let writer = match SnapshotWriter::start(config.snapshot_dir(), retention) {
        Ok(writer) => writer,
        Err(err) => {
            log::error!(
                "failure snapshots disabled: the snapshot writer thread did not start: {err}"
            );
            return None;
        }
    };
    let failed = writer.counters();
    metrics.add_source(
        "facegate_snapshot_failures_total",
        "counter",
        "Snapshots that could not be written.",
        move || failed.failed.load(Ordering::Relaxed),
    );
    let dropped = writer.counters();
    metrics.add_source(
        "facegate_snapshots_dropped_total",
        "counter",
        "Snapshots dropped because the snapshot writer fell behind (slow or hung disk).",
        move || dropped.dropped.load(Ordering::Relaxed),
    );
    Some(writer)
}

fn spawn_signal_thread(stop: Arc<StopFlags>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install the SIGTERM/SIGINT handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                log::info!("signal {signal} received: stopping, door locking");
                stop.signalled.store(true, Ordering::SeqCst);
            }
        })?;
    Ok(())
}

/// Asks our own port for /healthz, as the tablet would reach it.
pub fn probe(address: SocketAddr, timeout: Duration) -> bool {
    let target = if address.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    };
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: facegate\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    attempt().unwrap_or(false)
}

/// Raises the soft limit on open descriptors to the hard limit (at most 65536) and returns it.
// `rlim_t` is 64-bit on aarch64 and x86_64 but 32-bit on armv7: the casts are needed there.
#[allow(clippy::unnecessary_cast)]
fn raise_descriptor_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a local, fully initialised struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let wanted = limit.rlim_max.min(65_536);
        if wanted > limit.rlim_cur {
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return wanted as u64;
            }
        }
        limit.rlim_cur as u64
    }
}

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Feeds the systemd watchdog only while the port answers and descriptors are not running out; after
/// repeated probe failures, or when connections that tiny_http cannot release pile up, stops the daemon
/// so that systemd starts a fresh one.
fn spawn_watchdog(address: SocketAddr, interval: Duration, stop: Arc<StopFlags>) -> Result<()> {
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let interval = if watchdog {
        interval.min(Duration::from_micros(watchdog_usec / 3))
    } else {
        interval
    };
    let descriptor_limit = raise_descriptor_limit();
    let descriptor_alarm = descriptor_limit / 4 * 3;
    std::thread::Builder::new().name("self-probe".into()).spawn(move || {
        let mut failures = 0;
        while !stop.stopping() {
            std::thread::sleep(interval);
            let open = open_descriptors();
            if open > descriptor_alarm {
                log::error!("{open} descriptors open of {descriptor_limit} allowed: connections are not being released; stopping so that facegate is restarted");
                stop.fatal.store(true, Ordering::SeqCst);
                break;
            }
            if probe(address, Duration::from_secs(2)) {
                failures = 0;
                if watchdog {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                }
            } else {
                failures += 1;
                log::error!("self-probe of http://{address}/healthz failed ({failures} in a row)");
                if failures >= PROBE_FAILURES_FATAL && !stop.stopping() {
                    log::error!("the daemon no longer answers on its own port: stopping so that it is restarted");
                    stop.fatal.store(true, Ordering::SeqCst);
                }
            }
        }
    })?;
    Ok(())
}
