//! `facegate serve`: wires config, models, gallery, door, audit log and snapshots to the HTTP front end,
//! and owns the process's life: signals, panics, the watchdog and a fail-secure shutdown.

use std::backtrace::BacktraceStatus;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sd_notify::NotifyState;
use serde_json::json;

use crate::admin::{Admin, AdminContext};
use crate::audit::{AuditRetention, AuditSettings, AuditWriter, AuditWriterThread};
use crate::config::{Config, DoorBackendName, GrantWhileOpenConfig, LineLevel, RelockOnConfig};
use crate::door::{
    self, BackendKind, ContactState, DoorController, DoorEvent, DoorSettings, GrantWhileOpen,
    InputLine, InputSettings, InputStatus, InputWiring, RelayState, RelockOn,
};
use crate::front;
use crate::gallery::{EmbedderId, LiveGallery};
use crate::http;
use crate::metrics::Metrics;
use crate::mqtt::{Remote, RemoteParts};
use crate::service::Service;
use crate::snapshots::{SnapshotRetention, SnapshotWriter};
use crate::tablets::{LiveTablets, TabletStore};
use crate::vision::{PipelineModels, Recognizer};

/// How long the accepting loop waits before looking at the stop flags again.
const ACCEPT_POLL: Duration = Duration::from_millis(250);
/// Consecutive failed self-probes after which the daemon gives up and exits for systemd to restart it.
const PROBE_FAILURES_FATAL: u32 = 3;
/// Descriptors an open connection may use at once: its TCP socket, the registry's handle on it, and
/// both ends of the Unix socket that carries its request to tiny_http.
const DESCRIPTORS_PER_CONNECTION: u64 = 4;
/// How long the audit writer may take to write its queue when the daemon stops.
const AUDIT_FLUSH_LIMIT: Duration = Duration::from_secs(2);
const GALLERY_RECHECK: Duration = Duration::from_secs(2);

pub(crate) fn backend_kind(config: &Config) -> BackendKind {
    match config.door.backend {
        DoorBackendName::Gpio => BackendKind::Gpio {
            pin: config.door.gpio_pin,
            active_low: config.door.active_low,
            inputs: input_wiring(config),
        },
        DoorBackendName::Sim => BackendKind::Sim {
            journal: config.door.sim_journal.clone(),
            inputs: input_wiring(config),
            inputs_file: config.sim_inputs_path(),
        },
    }
}

/// The door's input lines from `[door.contact]` and `[door.exit_button]`.
fn input_wiring(config: &Config) -> InputWiring {
    let line = |enabled: bool, gpio_pin, level, debounce_ms| {
        enabled.then_some(InputLine {
            gpio_pin,
            active_high: level == LineLevel::High,
            debounce: Duration::from_millis(debounce_ms),
        })
    };
    let (contact, exit) = (&config.door.contact, &config.door.exit_button);
    InputWiring {
        contact: line(
            contact.enabled,
            contact.gpio_pin,
            contact.open_level,
            contact.debounce_ms,
        ),
        exit_button: line(
            exit.enabled,
            exit.gpio_pin,
            exit.pressed_level,
            exit.debounce_ms,
        ),
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
        inputs: InputSettings {
            contact_debounce: Duration::from_millis(config.door.contact.debounce_ms),
            exit_debounce: Duration::from_millis(config.door.exit_button.debounce_ms),
            relock_on: match config.door.relock_on {
                RelockOnConfig::Timer => RelockOn::Timer,
                RelockOnConfig::Open => RelockOn::Open,
                RelockOnConfig::Close => RelockOn::Close,
            },
            held_after: Duration::from_secs(config.door.held_open_alarm_s),
        },
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

/// Blocks at least this large are mapped on their own and returned to the system when freed. Above a
/// 1280x720 frame's buffers (the PNG body, 1.5 MB; the decoded pixels, 2.7 MB), which therefore come
/// from the arenas and are used again by the next frame; a larger frame's pixels are mapped.
const MALLOC_MMAP_THRESHOLD: libc::c_int = 4 << 20;
/// Free memory at the top of an arena is kept up to this much instead of being handed back at every
/// `free`: with glibc's 128 KiB, each frame's buffers were faulted in afresh (about 1,500 page faults a
/// frame, 14 % of the daemon's CPU).
const MALLOC_TRIM_THRESHOLD: libc::c_int = 16 << 20;

/// Three glibc malloc settings (docs/performance.md, "Lever: memory" and "Lever: page faults"):
/// - one arena per core instead of up to eight: every connection thread otherwise gets an arena of its
///   own, which keeps the frame bodies it freed, ~45 MB more peak RSS after a few dozen connections of
///   1280x720 PNGs, at no measured CPU cost;
/// - a fixed mmap threshold of 4 MiB: glibc's own threshold rises to the size of the largest block
///   freed (up to 32 MiB), after which larger frames' buffers and the networks' set-up blocks stay in
///   the arenas, fragmented;
/// - a fixed trim threshold of 16 MiB, so that the arenas keep what one frame frees for the next.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter, under glibc's own lock.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
            log::warn!(
                "could not limit glibc's malloc arenas to {arenas}; memory use may be higher"
            );
        }
        // SAFETY: as above.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) } != 1 {
            log::warn!("could not fix glibc's mmap threshold; memory use may be higher");
        }
        // SAFETY: as above.
        if unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) } != 1 {
            log::warn!("could not fix glibc's trim threshold; frames may cost more CPU");
        }
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
    tune_malloc();
    let metrics = Arc::new(Metrics::default());
    add_logging_metrics(&metrics);
    let (audit, audit_thread) = start_audit(&config, &metrics)?;
    let remote = Arc::new(Remote::default());
    let door = start_door(&config, &metrics, audit.clone(), &remote)?;
    let stop = Arc::new(StopFlags::default());
    let panic_stop = Arc::clone(&stop);
    install_panic_hook(door.lock_guard(), move || {
        panic_stop.fatal.store(true, Ordering::SeqCst)
    });
    // From here on the door is running: every early return must lock it first. The exit button and
    // MQTT may unlock while the models load, so a stop signal during the rest of start-up must lock
    // the door too, not end the process where the pin stands.
    let served = spawn_signal_thread(Arc::clone(&stop), door.lock_guard()).and_then(|()| {
        serve(
            config,
            token.is_some(),
            metrics,
            audit,
            Arc::clone(&door),
            &remote,
            &stop,
        )
    });
    let stopped = finish(door, served.err());
    // The door is locked: now tell the broker this door is offline.
    remote.shutdown();
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
    let settings = AuditSettings {
        retention,
        summary_interval: Duration::from_secs(config.audit.summary_interval_s),
    };
    let (audit, thread) = AuditWriter::start(config.audit_dir(), settings)
        .context("cannot start the audit writer thread")?;
    let counters = audit.counters();
    let failed = Arc::clone(&counters);
    metrics.add_source(
        "facegate_audit_failures_total",
        "counter",
        "Audit lines that could not be written.",
        move || failed.failed.load(Ordering::Relaxed),
    );
    let dropped = Arc::clone(&counters);
    metrics.add_source(
        "facegate_audit_dropped_total",
        "counter",
        "Audit lines dropped because the audit writer fell behind (slow or hung disk) or today's file reached its cap.",
        move || dropped.dropped.load(Ordering::Relaxed),
    );
    metrics.add_source(
        "facegate_audit_summarised_total",
        "counter",
        "Requests (refused before a worker, or answered paused) counted into a summary line instead of a line each.",
        move || counters.summarised.load(Ordering::Relaxed),
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
    remote: &Arc<Remote>,
) -> Result<Arc<DoorController>> {
    let backend = door::build_backend(&backend_kind(config))
        .context("the door backend could not be started")?;
    let observed = Arc::clone(metrics);
    let remote = Arc::clone(remote);
    let observer = Box::new(move |event: &DoorEvent| {
        match event {
            DoorEvent::Actuation(actuation) => {
                if actuation.state == RelayState::Unlocked && actuation.error.is_none() {
                    observed.count_door_opening();
                }
                remote.on_actuation(actuation);
            }
            DoorEvent::Input(input) => {
                observed.count_door_input(input.event.as_str());
                remote.on_door_input(input);
            }
            DoorEvent::Request(_) => {}
        }
        audit.record(event);
    });
    let door = Arc::new(DoorController::start(
        backend,
        door_settings(config),
        observer,
    )?);
    for (name, help, dropped) in [
        (
            "facegate_door_reports_dropped_total",
            "Door reports (log and audit) dropped because their thread fell behind.",
            door.dropped_reports(),
        ),
        (
            "facegate_door_inputs_dropped_total",
            "Door input readings dropped because the relay thread fell behind (a chattering line).",
            door.dropped_inputs(),
        ),
    ] {
        metrics.add_source(name, "counter", help, move || {
            dropped.load(Ordering::Relaxed)
        });
    }
    type Holds = fn(&InputStatus) -> bool;
    let gauges: [(&str, &str, Holds); 2] = [
        (
            "facegate_door_contact_open",
            "1 while the door contact reads open, 0 while closed or unknown.",
            |status| status.contact == ContactState::Open,
        ),
        (
            "facegate_door_alarm_active",
            "1 while a forced or held-open alarm waits for the admin.",
            |status| status.alarm.is_some(),
        ),
    ];
    for (name, help, holds) in gauges {
        let door = Arc::downgrade(&door);
        metrics.add_source(name, "gauge", help, move || {
            door.upgrade()
                .map_or(0, |door| u64::from(holds(&door.input_status())))
        });
    }
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
    remote: &Arc<Remote>,
    stop: &Arc<StopFlags>,
) -> Result<()> {
    let models = PipelineModels::resolve(&config.recognition, &config.models_dir)
        .and_then(|models| models.with_liveness(&config.liveness))
        .context("the models are not usable")?;
    let threshold = models.threshold(&config.recognition);
    let embedder = EmbedderId::of(&models.embedder);
    let gallery = LiveGallery::open(&config.gallery_path(), &embedder, GALLERY_RECHECK)?;
    remote
        .start(
            &config,
            RemoteParts {
                metrics: Arc::clone(&metrics),
                door: Arc::downgrade(&door),
                audit: audit.clone(),
                embedder: embedder.clone(),
            },
        )
        .context("MQTT could not be started")?;
    let workers = config.worker_count();
    let recognizers = Recognizer::load_workers(&models, &config.recognition, workers)
        .context("the models did not load")?;
    let snapshots = start_snapshots(&config, &metrics);
    let codes = visitor_codes(&config)?;
    let descriptor_limit = raise_descriptor_limit();
    let wanted = config.http.max_connections as u64 * DESCRIPTORS_PER_CONNECTION + 256;
    if wanted > descriptor_limit {
        log::warn!("http.max_connections = {} may need {wanted} descriptors but only {descriptor_limit} are allowed: raise LimitNOFILE or lower http.max_connections", config.http.max_connections);
    }
    let tls = start_tls(&config)?;
    let listener = TcpListener::bind(config.http.listen)
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    let address = listener.local_addr()?;
    let (server, backend) = listen_for_front(&config)?;
    let people = gallery.current().people().len();
    let tablets = Arc::new(LiveTablets::new(TabletStore::new(config.tablets_path())));
    let kiosk = http::kiosk::Kiosk::start(Arc::clone(&tablets), audit.clone())
        .context("the kiosk pairing thread did not start")?;
    let transport = Arc::new(http::Transport {
        token: config.token(),
        kiosk: Some(kiosk),
        ..http::Transport::default()
    });
    let service = Arc::new(Service::new(
        config,
        threshold,
        metrics,
        door,
        gallery,
        audit,
        snapshots,
        codes,
        Arc::clone(remote),
    ));
    let weak = Arc::downgrade(&service);
    service.metrics.add_source(
        "facegate_gallery_age_seconds",
        "gauge",
        "Seconds since the building gallery in use was exported (0: the gallery is not a building gallery).",
        move || weak.upgrade().and_then(|s| s.gallery_age_s()).unwrap_or(0),
    );
    let admin = service
        .config
        .admin
        .enabled
        .then(|| spawn_admin(&service, &transport, &models, &embedder, threshold))
        .transpose()?;
    let mut credentials = front::credentials::CredentialSet::new(transport.token.clone())
        .with(tablets as Arc<dyn front::credentials::Credentials>);
    if let Some(admin) = &admin {
        credentials = credentials.with(Arc::clone(&admin.sessions));
    }
    let http_config = &service.config.http;
    let front_settings = front::Settings {
        max_connections: http_config.max_connections,
        max_connections_without_credential: http_config.max_connections_without_credential,
        head_timeout: Duration::from_millis(http_config.head_timeout_ms),
        idle_timeout: Duration::from_millis(http_config.idle_timeout_ms),
        body_timeout: Duration::from_millis(http_config.body_timeout_ms),
        max_body_bytes: http_config.max_body_bytes,
        max_body_bytes_in_flight: http_config.max_body_bytes_in_flight,
        credentials,
        backend,
        tls: tls.as_ref().map(|(server, _)| Arc::clone(server)),
    };
    let refusals = Arc::new(FrontRefusals {
        service: Arc::downgrade(&service),
        transport: Arc::clone(&transport),
    });
    let probe_entrance = front::start(
        listener,
        front_settings,
        Arc::clone(&service.metrics),
        refusals,
    )
    .context("the connection front did not start")?;
    let (jobs, queue) = crossbeam_channel::bounded(service.config.http.queue_depth);
    let worker_threads: Vec<JoinHandle<()>> = recognizers
        .into_iter()
        .enumerate()
        .map(|(i, recognizer)| {
            let service = Arc::clone(&service);
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || http::run_worker(service, recognizer, queue))
        })
        .collect::<Result<_, _>>()?;
    drop(queue);
    let probe_tls = tls.map(|(_, client)| client);
    let scheme = if probe_tls.is_some() { "https" } else { "http" };
    spawn_watchdog(
        SelfProbe {
            address,
            tls: probe_tls,
            entrance: probe_entrance,
        },
        Duration::from_millis(service.config.http.self_probe_interval_ms),
        Arc::clone(stop),
    )?;
    log::info!(
        "facegate listening on {scheme}://{address} ({workers} workers, queue {}, {people} people enrolled, threshold {threshold}, door {:?}, token {})",
        service.config.http.queue_depth,
        service.config.door.backend,
        if has_token { "required" } else { "not required" },
    );
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);

    let mut accept_failure = None;
    while !stop.stopping() {
        match server.recv_timeout(ACCEPT_POLL) {
            Ok(Some(request)) => http::dispatch(
                &service,
                &transport,
                &jobs,
                admin.as_ref().map(|admin| &admin.queue),
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
    if let Some(admin) = admin {
        drop(admin.queue);
        let _ = admin.thread.join();
    }
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

/// The admin pages' thread, its queue, and its sessions for the front's credential check.
struct AdminThread {
    queue: http::admin::AdminQueues<tiny_http::Request>,
    thread: JoinHandle<()>,
    sessions: Arc<dyn front::credentials::Credentials>,
}

/// Starts the admin pages' thread.
fn spawn_admin(
    service: &Arc<Service>,
    transport: &Arc<http::Transport>,
    models: &PipelineModels,
    embedder: &EmbedderId,
    threshold: f32,
) -> Result<AdminThread> {
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
        secure_cookies: service.config.http.tls.enabled,
        tablet_certificate: service.config.http.tls.enabled.then(|| {
            let files = front::tls::TlsFiles::of(&service.config);
            Box::new(move || files.trust_pem().map_err(|err| err.to_string()))
                as Box<dyn Fn() -> Result<String, String> + Send + Sync>
        }),
    }));
    let (queue, requests) = http::admin::admin_queues();
    let max_body_bytes = service.config.http.max_body_bytes;
    let sessions: Arc<dyn front::credentials::Credentials> = admin.sessions();
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || http::admin::run(admin, max_body_bytes, requests))?;
    Ok(AdminThread {
        queue,
        thread,
        sessions,
    })
}

/// Starts the snapshot writer thread (which opens the store itself, so a hung snapshot disk cannot
/// hold up start-up) and puts its counters on /metrics.
fn start_snapshots(config: &Config, metrics: &Metrics) -> Option<SnapshotWriter> {
    let retention = SnapshotRetention {
        max_count: config.snapshots.max_count,
        max_bytes: config.snapshots.max_total_mb * 1024 * 1024,
        max_age: Duration::from_secs(u64::from(config.snapshots.max_age_days) * 86_400),
    };
    let save_wait = Duration::from_millis(config.snapshots.save_wait_ms);
    let writer = match SnapshotWriter::start(config.snapshot_dir(), retention, save_wait) {
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

/// The front's refusals of frame posts go through the service, which counts them and summarises them
/// per address. The front outlives the service at shutdown, so it holds it weakly.
struct FrontRefusals {
    service: std::sync::Weak<Service>,
    transport: Arc<http::Transport>,
}

impl front::Refusals for FrontRefusals {
    fn request_id(&self) -> String {
        self.transport.ids.next()
    }

    fn summarise(&self, request_id: &str, error: &'static str, peer: Option<std::net::IpAddr>) {
        if let Some(service) = self.service.upgrade() {
            service
                .audit
                .count(crate::audit::Tally::Refused, peer, error, request_id);
        }
    }

    fn refuse_frame(
        &self,
        request_id: &str,
        endpoint: crate::record::Endpoint,
        refusal: crate::record::Refusal,
        peer: Option<std::net::IpAddr>,
    ) -> (serde_json::Value, Box<dyn FnOnce() + Send>) {
        let Some(service) = self.service.upgrade() else {
            let body = serde_json::json!({
                "request_id": request_id,
                "status": "error",
                "error": refusal.error,
                "message": refusal.message,
                "door": "locked",
            });
            return (body, Box::new(|| {}));
        };
        let handled = service.refuse_before_worker(request_id, endpoint, refusal, peer);
        let body = handled.record.answer();
        (body, Box::new(move || service.follow_up(handled)))
    }
}

/// The server TLS configuration, and a client configuration pinned to it for the self-probe.
type TlsPair = (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>);

fn start_tls(config: &Config) -> Result<Option<TlsPair>> {
    if !config.http.tls.enabled {
        return Ok(None);
    }
    let files = front::tls::TlsFiles::of(config);
    files.ensure(&front::tls::certificate_names_of(config))?;
    let server = files.server_config()?;
    let pin = files.pin()?;
    log::info!("TLS certificate {} (key pin {pin})", files.cert.display());
    Ok(Some((server, front::tls::pinned_client_config(&pin))))
}

/// tiny_http on a Unix socket only the daemon's user can reach (`$RUNTIME_DIRECTORY` under systemd,
/// else `<state_dir>/run`): the front is the only way in from the network.
fn listen_for_front(config: &Config) -> Result<(tiny_http::Server, PathBuf)> {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|dirs| std::env::split_paths(&dirs).next())
        .unwrap_or_else(|| config.state_dir.join("run"));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the runtime directory {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))?;
    let path = dir.join("http.sock");
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("cannot remove the old {}", path.display()))
        }
        _ => {}
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|err| anyhow::anyhow!("tiny_http cannot serve {}: {err}", path.display()))?;
    Ok((server, path))
}

/// SIGTERM, SIGINT, SIGHUP (a closed terminal) and SIGQUIT lock the door on the signal thread itself,
/// then ask the accepting loop to stop: the lock waits neither for the dispatching thread, whatever
/// it is waiting on, nor for the end of start-up. Their default action would end the process with
/// the pin wherever it stands.
fn spawn_signal_thread(stop: Arc<StopFlags>, guard: door::LockGuardHandle) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ])
    .context("cannot install the SIGTERM/SIGINT/SIGHUP/SIGQUIT handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                log::info!("signal {signal} received: stopping, door locking");
                guard.emergency_lock();
                stop.signalled.store(true, Ordering::SeqCst);
            }
        })?;
    Ok(())
}

/// The daemon's own client of its port.
struct SelfProbe {
    address: SocketAddr,
    /// Over TLS with the key pinned, when the daemon serves TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
    entrance: front::ProbeEntrance,
}

impl SelfProbe {
    /// Asks our own port for /healthz, as the tablet would reach it. The socket is bound before it
    /// connects and its address handed to the front, which then lets it in ahead of every client.
    fn probe(&self, timeout: Duration) -> bool {
        let target = if self.address.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], self.address.port()))
        } else {
            self.address
        };
        let attempt = || -> std::io::Result<bool> {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(target),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            socket.bind(&SocketAddr::new(target.ip(), 0).into())?;
            let from = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| std::io::Error::other("the bound address is not IP"))?;
            self.entrance.expect(from);
            socket.connect_timeout(&target.into(), timeout)?;
            exchange_health(TcpStream::from(socket), timeout, self.tls.as_ref())
        };
        attempt().unwrap_or(false)
    }
}

/// GET /healthz on `stream`: is the answer 200?
fn exchange_health(
    stream: TcpStream,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> std::io::Result<bool> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("facegate").expect("a valid name");
            let connection = rustls::ClientConnection::new(Arc::clone(config), name)
                .map_err(std::io::Error::other)?;
            Box::new(rustls::StreamOwned::new(connection, stream))
        }
        None => Box::new(stream),
    };
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: facegate\r\nConnection: close\r\n\r\n")?;
    stream.flush()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
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

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Feeds the systemd watchdog only while the port answers; after repeated probe failures, stops the
/// daemon so that systemd starts a fresh one.
fn spawn_watchdog(probe: SelfProbe, interval: Duration, stop: Arc<StopFlags>) -> Result<()> {
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let interval = if watchdog {
        interval.min(Duration::from_micros(watchdog_usec / 3))
    } else {
        interval
    };
    std::thread::Builder::new().name("self-probe".into()).spawn(move || {
        let mut failures = 0;
        while !stop.stopping() {
            std::thread::sleep(interval);
            if probe.probe(Duration::from_secs(2)) {
                failures = 0;
                if watchdog {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                }
            } else {
                failures += 1;
                log::error!(
                    "self-probe of http://{}/healthz failed ({failures} in a row)",
                    probe.address
                );
                if failures >= PROBE_FAILURES_FATAL && !stop.stopping() {
                    log::error!("the daemon no longer answers on its own port: stopping so that it is restarted");
                    stop.fatal.store(true, Ordering::SeqCst);
                }
            }
        }
    })?;
    Ok(())
}
