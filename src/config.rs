//! The one configuration struct, read from TOML: every default lives here, and validation names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `recognition.detector` value that picks the YuNet release the running OpenCV can execute.
pub(crate) const AUTO_DETECTOR: &str = "auto";

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}. Pass an existing file with --config")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

/// The error for a value of config key `key` that cannot be used.
fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Shortest accepted `mqtt.command_secret`.
pub(crate) const MIN_COMMAND_SECRET: usize = 16;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Gallery, snapshots and (by default) the audit log live here.
    pub state_dir: PathBuf,
    /// Holds the model files named by `models/manifest.toml`, and the manifest itself.
    pub models_dir: PathBuf,
    /// IANA zone (`Asia/Seoul`) of every local hour and date: weekly hours, validity dates, visitor
    /// codes' days, the admin pages. Empty: the system's zone (`TZ`, else /etc/localtime).
    pub timezone: String,
    pub recognition: RecognitionConfig,
    pub frame: FrameConfig,
    pub http: HttpConfig,
    pub door: DoorConfig,
    pub audit: AuditConfig,
    pub snapshots: SnapshotConfig,
    pub liveness: LivenessConfig,
    pub mqtt: MqttConfig,
    pub admin: AdminConfig,
    pub codes: CodesConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RecognitionConfig {
    /// Manifest key of the face detector, or `auto` for the YuNet release the running OpenCV can execute.
    pub detector: String,
    /// Manifest key of the embedder (`mobilefacenet` or `sface`).
    pub embedder: String,
    /// Cosine similarity needed for a grant; `None` takes the embedder's manifest default.
    pub threshold: Option<f32>,
    /// Frames are shrunk so that their longer side is at most this before detection.
    pub detect_max_side: u32,
    /// YuNet confidence below which a detection is ignored.
    pub detect_score_threshold: f32,
    /// Faces narrower than this (in pixels of the shrunk detection image) are ignored.
    pub min_face_px: u32,
    /// A quick detection pass on the frame shrunk to this longer side runs first; 0 turns it off.
    pub coarse_detect_side: u32,
    /// When the quick pass finds a face at least this share of the frame's height (someone close to
    /// the door camera), the full-size pass is skipped.
    pub coarse_face_share: f32,
    /// Enrolment warns when a new person is at least this similar to an enrolled one.
    pub lookalike_warning: f32,
    /// OpenCV's own thread pool size per process; 0 leaves OpenCV's default.
    pub opencv_threads: i32,
    /// A face whose eye line is tilted more than this (degrees) is turned upright and detected again.
    pub max_roll_deg: f32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessConfig {
    /// Check recognised faces with the MiniFASNet anti-spoofing models before granting.
    pub enabled: bool,
    /// Liveness score (0 = spoof .. 1 = real) a recognised face needs; below it the answer is `spoof`.
    pub threshold: f32,
    /// Faces narrower than this, in pixels of the decoded frame, are too small to judge: never granted.
    pub min_face_px: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FrameConfig {
    /// Largest accepted image file (after base64 decoding).
    pub max_image_bytes: usize,
    /// Largest accepted width or height in the image header.
    pub max_dimension: u32,
    /// Largest image, in pixels, a decode may hold: a JPEG reduced to 1/4 or 1/8 counts at its
    /// reduced size; PNGs, progressive JPEGs and JPEGs decoded at full or half size (decoded whole,
    /// then halved) count at full size.
    pub max_decoded_pixels: u64,
    /// JPEGs are decoded reduced (1/2, 1/4, 1/8) while the longer side stays at least this.
    pub decode_target_side: u32,
}

/// The largest body a request without a valid credential may carry (the admin sign-in form needs far
/// less); fixed, and counted against `http.max_body_bytes_in_flight` for each such connection.
pub const BODY_BYTES_WITHOUT_CREDENTIAL: usize = 16 * 1024;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Recognition worker threads; 0 means one per core.
    pub workers: usize,
    /// Requests that may wait for a worker; more are answered 503 `busy` at once.
    pub queue_depth: usize,
    /// Larger bodies are refused with 413 before they are read.
    pub max_body_bytes: usize,
    /// A body must arrive within this time.
    pub body_timeout_ms: u64,
    /// Require `Authorization: Bearer <token>` on every endpoint but /healthz.
    pub require_token: bool,
    /// The tablet's token; `FACEGATE_TOKEN` in the environment takes precedence.
    pub token: String,
    /// How often the daemon probes its own port before feeding the systemd watchdog.
    pub self_probe_interval_ms: u64,
    /// Decisions kept in memory for GET /events.
    pub events_kept: usize,
    /// Open connections at most; more are closed at once and counted in /metrics.
    pub max_connections: usize,
    /// Of those, connections that have shown no valid credential (no tablet token, no admin session)
    /// at most; they are evicted first. Below `max_connections`, so tablets always find room.
    pub max_connections_without_credential: usize,
    /// Bytes of request bodies held at the front at once, all connections together; a body that
    /// does not fit is answered 503 with `Retry-After`.
    pub max_body_bytes_in_flight: usize,
    /// From accept (TLS handshake included), or from a request's first byte, to the end of its head.
    pub head_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout_ms: u64,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub enabled: bool,
    /// PEM certificate chain; with `key` unset too, a self-signed pair is generated in `<state_dir>/tls`.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// More names (DNS names or addresses) the generated certificate carries, beside the Pi's host
    /// name, `localhost` and the addresses the daemon listens on.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DoorBackendName {
    Sim,
    Gpio,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GrantWhileOpenConfig {
    Extend,
    Ignore,
}

/// When the relay locks again after an unlock (`door.relock_on`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RelockOnConfig {
    Timer,
    Open,
    Close,
}

/// A GPIO line level.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LineLevel {
    High,
    Low,
}

/// The door contact (reed switch), `[door.contact]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ContactConfig {
    pub enabled: bool,
    /// BCM number of the contact's input pin (pull-up on).
    pub gpio_pin: u8,
    /// The level the line reads while the door is open.
    pub open_level: LineLevel,
    /// A change counts once the line has kept its new level this long.
    pub debounce_ms: u64,
}

/// The request-to-exit button, `[door.exit_button]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExitButtonConfig {
    pub enabled: bool,
    /// BCM number of the button's input pin (pull-up on).
    pub gpio_pin: u8,
    /// The level the line reads while the button is pressed.
    pub pressed_level: LineLevel,
    /// Presses closer together than this are one press.
    pub debounce_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DoorConfig {
    pub backend: DoorBackendName,
    /// BCM number of the relay pin.
    pub gpio_pin: u8,
    /// True for relay boards that switch on a low level.
    pub active_low: bool,
    /// How long the relay stays open after a grant.
    pub hold_ms: u64,
    /// After the relay locks again, grants within this time do not reopen it.
    pub cooldown_ms: u64,
    /// What a grant does while the door is already open.
    pub grant_while_open: GrantWhileOpenConfig,
    /// A decision about an older frame never moves the relay.
    pub max_decision_age_ms: u64,
    /// How long a request waits for the relay thread to say what it did before answering `pending`.
    pub report_wait_ms: u64,
    /// How far a frame's `captured_at` may lie ahead of the Pi's clock; further is answered stale.
    pub max_clock_skew_ms: u64,
    /// After a grant, frames are answered `paused` while the door is open or cooling down, without
    /// recognition; off keeps `grant_while_open` for them.
    pub pause_while_open: bool,
    /// Sim backend only: append every actuation to this JSON-lines file.
    pub sim_journal: Option<PathBuf>,
    /// Grants for the same person from the same tablet needed before the door opens (1: the first).
    pub confirm_frames: u32,
    /// Those grants must all fall within this many milliseconds.
    pub confirm_window_ms: u64,
    /// When the relay locks again after an unlock: at the end of `hold_ms`, or as soon as the door
    /// opens or closes again (the contact must be enabled for those).
    pub relock_on: RelockOnConfig,
    /// A door open for longer than this many seconds raises the `held` alarm.
    pub held_open_alarm_s: u64,
    /// Sim backend: the file of simulated input readings. Default: `<state_dir>/door-sim-inputs`.
    pub sim_inputs: Option<PathBuf>,
    pub contact: ContactConfig,
    pub exit_button: ExitButtonConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Default: `<state_dir>/audit`.
    pub dir: Option<PathBuf>,
    pub max_age_days: u32,
    pub max_total_mb: u64,
    /// Refused requests and paused frames: one summary line per address per this many seconds.
    pub summary_interval_s: u64,
}

/// The building admin's pages at `/admin/` (password: `facegate admin set-password`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub enabled: bool,
    /// A session ends after this many seconds without a request...
    pub session_idle_s: u64,
    /// ...and at the latest this many seconds after sign-in.
    pub session_max_s: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Default: `<state_dir>/snapshots`.
    pub dir: Option<PathBuf>,
    pub on_unknown: bool,
    pub on_no_face: bool,
    /// Store frames of recognised faces refused by liveness (`spoof`).
    pub on_spoof: bool,
    pub on_error: bool,
    pub max_count: usize,
    pub max_total_mb: u64,
    pub max_age_days: u32,
    /// How long `POST /save` waits for the disk to store the failed code entry's frame before it answers
    /// `storage_unavailable` (507); a worker is never held longer.
    pub save_wait_ms: u64,
}

/// Visitor codes: which days have codes, and the per-address lockout.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CodesConfig {
    /// Weekdays with codes (`mon` .. `sun`).
    pub working_days: Vec<String>,
    /// Dates without codes, on top of `holidays_file`: TOML dates or `"YYYY-MM-DD"` strings.
    #[serde(deserialize_with = "holiday_dates")]
    pub holidays: Vec<chrono::NaiveDate>,
    /// One `YYYY-MM-DD` date per line (`#` comments allowed), e.g. the country's public holidays.
    pub holidays_file: Option<PathBuf>,
    /// Wrong codes from one address within `failure_window_s` that start a lockout.
    pub max_failures: u32,
    pub failure_window_s: u64,
    /// How long a locked-out address is refused, in seconds.
    pub lockout_s: u64,
    /// Wrong codes from all addresses together within `building_window_s` that pause code entry for
    /// everyone for `building_pause_s` and raise an alarm.
    pub building_max_failures: u32,
    pub building_window_s: u64,
    pub building_pause_s: u64,
    /// A code opens the door once, then is gone (put back when the door stayed locked for it).
    pub single_use: bool,
    /// Weekly hours in which codes are accepted (`mon-fri 08:00-18:00`); unset: all day.
    pub hours: Option<String>,
}

/// Reads `codes.holidays`, whose items may be TOML dates (`2026-12-25`) or strings (`"2026-12-25"`).
fn holiday_dates<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<chrono::NaiveDate>, D::Error> {
    let items = Vec::<toml::Value>::deserialize(deserializer)?;
    items
        .iter()
        .map(|item| {
            let text = match item {
                toml::Value::String(text) => text.clone(),
                toml::Value::Datetime(dt) if dt.time.is_none() && dt.date.is_some() => {
                    dt.to_string()
                }
                other => other.to_string(),
            };
            chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| {
                serde::de::Error::custom(format!(
                    "codes.holidays: `{text}` is not a date; write 2026-12-25"
                ))
            })
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`; MQTT is off when unset.
    pub url: Option<String>,
    /// Empty: `facegate-<door_id>`.
    pub client_id: String,
    pub username: String,
    /// `FACEGATE_MQTT_PASSWORD` in the environment takes precedence.
    pub password: String,
    /// mqtts: PEM file of the CA(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// mqtts: PEM client certificate and key, for brokers that authenticate clients by certificate.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// This door's name in topics and in Home Assistant: letters, digits, `-` and `_`.
    pub door_id: String,
    pub topic_prefix: String,
    /// Publish Home Assistant discovery configs under `discovery_prefix`.
    pub discovery: bool,
    pub discovery_prefix: String,
    /// Act on signed `lock`, `unlock` and `clear` commands on `<prefix>/<door_id>/command`.
    pub allow_commands: bool,
    /// HMAC-SHA256 key of the commands; `FACEGATE_MQTT_COMMAND_SECRET` takes precedence.
    pub command_secret: String,
    /// Commands issued longer ago (or further ahead) than this are refused.
    pub command_window_s: u64,
    /// Building key (base64 Ed25519 public key): follow the signed gallery on `<prefix>/gallery`.
    pub gallery_public_key: String,
    /// Messages waiting for the broker; more are dropped and counted.
    pub queue_size: usize,
    pub keepalive_s: u64,
    /// Reconnection backs off from `reconnect_min_ms`, doubling up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Largest message accepted from the broker (the signed gallery is the big one).
    pub max_message_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/facegate"),
            models_dir: PathBuf::from("/usr/share/facegate/models"),
            timezone: String::new(),
            recognition: RecognitionConfig::default(),
            frame: FrameConfig::default(),
            http: HttpConfig::default(),
            door: DoorConfig::default(),
            audit: AuditConfig::default(),
            snapshots: SnapshotConfig::default(),
            liveness: LivenessConfig::default(),
            mqtt: MqttConfig::default(),
            admin: AdminConfig::default(),
            codes: CodesConfig::default(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            session_idle_s: 30 * 60,
            session_max_s: 12 * 3600,
        }
    }
}

impl Default for RecognitionConfig {
    fn default() -> Self {
        RecognitionConfig {
            detector: AUTO_DETECTOR.into(),
            embedder: "mobilefacenet".into(),
            threshold: None,
            detect_max_side: 640,
            detect_score_threshold: 0.9,
            min_face_px: 40,
            // The door setting: a door tablet's frames show one person close to the camera, whom the
            // quick pass at 320 finds at a quarter of the cost (docs/performance.md, "The tablet's frames").
            coarse_detect_side: 320,
            coarse_face_share: 0.25,
            lookalike_warning: 0.40,
            opencv_threads: 0,
            max_roll_deg: 15.0,
        }
    }
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            enabled: true,
            threshold: 0.8,
            min_face_px: 64,
        }
    }
}

impl Default for FrameConfig {
    fn default() -> Self {
        FrameConfig {
            max_image_bytes: 12 * 1024 * 1024,
            max_dimension: 16_384,
            max_decoded_pixels: 16_000_000,
            decode_target_side: 640,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            workers: 0,
            queue_depth: 4,
            max_body_bytes: 16 * 1024 * 1024,
            body_timeout_ms: 5_000,
            require_token: true,
            token: String::new(),
            self_probe_interval_ms: 5_000,
            events_kept: 1_000,
            max_connections: 1_024,
            max_connections_without_credential: 32,
            max_body_bytes_in_flight: 48 * 1024 * 1024,
            head_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            tls: TlsConfig::default(),
        }
    }
}

impl Default for DoorConfig {
    fn default() -> Self {
        DoorConfig {
            backend: DoorBackendName::Sim,
            gpio_pin: 17,
            active_low: false,
            hold_ms: 3_000,
            cooldown_ms: 1_000,
            grant_while_open: GrantWhileOpenConfig::Extend,
            max_decision_age_ms: 1_500,
            report_wait_ms: 150,
            max_clock_skew_ms: 1_000,
            pause_while_open: true,
            sim_journal: None,
            confirm_frames: 1,
            confirm_window_ms: 1_000,
            relock_on: RelockOnConfig::Timer,
            held_open_alarm_s: 30,
            sim_inputs: None,
            contact: ContactConfig::default(),
            exit_button: ExitButtonConfig::default(),
        }
    }
}

impl Default for ContactConfig {
    fn default() -> Self {
        ContactConfig {
            enabled: false,
            gpio_pin: 27,
            open_level: LineLevel::High,
            debounce_ms: 50,
        }
    }
}

impl Default for ExitButtonConfig {
    fn default() -> Self {
        ExitButtonConfig {
            enabled: false,
            gpio_pin: 22,
            pressed_level: LineLevel::Low,
            debounce_ms: 50,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            dir: None,
            max_age_days: 90,
            max_total_mb: 200,
            summary_interval_s: 60,
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            dir: None,
            on_unknown: true,
            on_no_face: false,
            on_spoof: true,
            on_error: true,
            max_count: 5_000,
            max_total_mb: 500,
            max_age_days: 30,
            save_wait_ms: 2_000,
        }
    }
}

impl Default for CodesConfig {
    fn default() -> Self {
        CodesConfig {
            working_days: ["mon", "tue", "wed", "thu", "fri"].map(String::from).into(),
            holidays: Vec::new(),
            holidays_file: None,
            max_failures: 3,
            failure_window_s: 60,
            lockout_s: 60,
            building_max_failures: 20,
            building_window_s: 600,
            building_pause_s: 600,
            single_use: false,
            hours: None,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: None,
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            ca_file: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            client_cert: None,
            client_key: None,
            door_id: "door".into(),
            topic_prefix: "facegate".into(),
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            allow_commands: false,
            command_secret: String::new(),
            command_window_s: 30,
            gallery_public_key: String::new(),
            queue_size: 64,
            keepalive_s: 30,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Where the broker is, from `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Broker {
    /// Parses `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (8883); an IPv6
    /// address goes in brackets. Credentials belong in `mqtt.username`/`password`, not the URL.
    pub fn parse(url: &str) -> Result<Broker, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!("must start with mqtt:// or mqtts://, not {url:?}"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err("must not carry credentials: use mqtt.username and mqtt.password".into());
        }
        if authority.contains(['/', '?', '#']) {
            return Err(format!("must be scheme://host[:port] only, not {url:?}"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("has an unclosed IPv6 bracket: {url:?}"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("has no host: {url:?}"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("has a bad port {port:?}"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(Broker {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// Reads a building key (`mqtt.gallery_public_key`): the base64 of a 32-byte Ed25519 public key.
pub(crate) fn parse_building_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    use base64::Engine;
    let bad = || {
        format!(
            "{:?} is not a building key: expected the base64 of 32 bytes, as printed by `facegate gallery keygen`",
            text.trim()
        )
    };
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// Command-line values that replace what the file says.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub door: Option<DoorBackendName>,
}

impl Config {
    /// Parses TOML text; `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: err.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        Config::parse(&text, path)
    }

    /// Applies command-line overrides, then validates again.
    pub fn with_overrides(mut self, overrides: &Overrides) -> Result<Config, ConfigError> {
        if let Some(dir) = &overrides.state_dir {
            self.state_dir = dir.clone();
        }
        if let Some(dir) = &overrides.models_dir {
            self.models_dir = dir.clone();
        }
        if let Some(listen) = overrides.listen {
            self.http.listen = listen;
        }
        if let Some(door) = overrides.door {
            self.door.backend = door;
        }
        self.validate()?;
        Ok(self)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.time_zone()
            .map_err(|problem| invalid("timezone", problem))?;
        self.code_hours()
            .map_err(|problem| invalid("codes.hours", problem))?;
        let r = &self.recognition;
        if let Some(t) = r.threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(invalid(
                    "recognition.threshold",
                    format!("must be a cosine similarity between 0 and 1, not {t}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&r.detect_score_threshold) {
            return Err(invalid(
                "recognition.detect_score_threshold",
                "must be between 0 and 1",
            ));
        }
        if !(64..=4096).contains(&r.detect_max_side) {
            return Err(invalid(
                "recognition.detect_max_side",
                "must be between 64 and 4096 pixels",
            ));
        }
        if r.coarse_detect_side != 0 && !(64..=4096).contains(&r.coarse_detect_side) {
            return Err(invalid(
                "recognition.coarse_detect_side",
                "must be 0 (off) or between 64 and 4096 pixels",
            ));
        }
        if !(r.coarse_face_share > 0.0 && r.coarse_face_share <= 1.0) {
            return Err(invalid(
                "recognition.coarse_face_share",
                "must be above 0 and at most 1 (a share of the frame's height)",
            ));
        }
        if self.frame.max_image_bytes == 0 {
            return Err(invalid("frame.max_image_bytes", "must be above 0"));
        }
        if self.frame.decode_target_side < r.detect_max_side {
            return Err(invalid(
                "frame.decode_target_side",
                "must be at least recognition.detect_max_side",
            ));
        }
        if self.http.queue_depth == 0 {
            return Err(invalid("http.queue_depth", "must be at least 1"));
        }
        if self.http.max_body_bytes == 0 {
            return Err(invalid("http.max_body_bytes", "must be above 0"));
        }
        if self.http.body_timeout_ms == 0 {
            return Err(invalid("http.body_timeout_ms", "must be above 0"));
        }
        if self.http.max_connections < 2 {
            return Err(invalid("http.max_connections", "must be at least 2"));
        }
        if self.http.max_connections_without_credential == 0
            || self.http.max_connections_without_credential >= self.http.max_connections
        {
            return Err(invalid(
                "http.max_connections_without_credential",
                "must be at least 1 and below http.max_connections, so that tablets always find room",
            ));
        }
        let strangers_bodies = self.http.max_connections_without_credential
            * BODY_BYTES_WITHOUT_CREDENTIAL.min(self.http.max_body_bytes);
        if self.http.max_body_bytes_in_flight < self.http.max_body_bytes + strangers_bodies {
            return Err(invalid(
                "http.max_body_bytes_in_flight",
                "must hold one largest body (http.max_body_bytes) beside 16 KiB for each of \
                 http.max_connections_without_credential, so that strangers never leave a tablet without room",
            ));
        }
        if self.http.head_timeout_ms == 0 {
            return Err(invalid("http.head_timeout_ms", "must be above 0"));
        }
        if self.http.idle_timeout_ms == 0 {
            return Err(invalid("http.idle_timeout_ms", "must be above 0"));
        }
        if self.http.tls.cert.is_some() != self.http.tls.key.is_some() {
            return Err(invalid(
                "http.tls.cert",
                "and http.tls.key go together: set both, or neither to have a self-signed pair generated",
            ));
        }
        for name in &self.http.tls.names {
            let host_name = !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
            if !host_name && name.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    "http.tls.names",
                    format!("`{name}` is neither a host name (letters, digits, `-`, `.`) nor an IP address"),
                ));
            }
        }
        if self.http.events_kept == 0 {
            return Err(invalid("http.events_kept", "must be at least 1"));
        }
        if self.door.hold_ms == 0 || self.door.hold_ms > 60_000 {
            return Err(invalid(
                "door.hold_ms",
                "must be between 1 and 60000 milliseconds",
            ));
        }
        if self.door.max_decision_age_ms == 0 {
            return Err(invalid("door.max_decision_age_ms", "must be above 0"));
        }
        if self.door.report_wait_ms == 0 || self.door.report_wait_ms > 2_000 {
            return Err(invalid(
                "door.report_wait_ms",
                "must be between 1 and 2000 milliseconds",
            ));
        }
        if self.door.gpio_pin > 27 {
            return Err(invalid(
                "door.gpio_pin",
                "must be a BCM pin number from 0 to 27",
            ));
        }
        self.validate_door_inputs()?;
        if self.admin.session_idle_s == 0 || self.admin.session_max_s == 0 {
            return Err(invalid(
                "admin.session_idle_s",
                "admin.session_idle_s and admin.session_max_s must be at least 1 second",
            ));
        }
        if !(0.0..=90.0).contains(&r.max_roll_deg) {
            return Err(invalid(
                "recognition.max_roll_deg",
                "must be between 0 and 90 degrees",
            ));
        }
        if !(0.0..=1.0).contains(&self.liveness.threshold) {
            return Err(invalid("liveness.threshold", "must be between 0 and 1"));
        }
        if !(1..=crate::confirmation::MAX_CONFIRM_FRAMES).contains(&self.door.confirm_frames) {
            return Err(invalid(
                "door.confirm_frames",
                format!(
                    "must be between 1 and {}",
                    crate::confirmation::MAX_CONFIRM_FRAMES
                ),
            ));
        }
        if self.door.confirm_frames > 1 && self.door.confirm_window_ms == 0 {
            return Err(invalid(
                "door.confirm_window_ms",
                "must be above 0 when door.confirm_frames is above 1",
            ));
        }
        if self.snapshots.max_count == 0 {
            return Err(invalid("snapshots.max_count", "must be at least 1"));
        }
        if !(100..=60_000).contains(&self.snapshots.save_wait_ms) {
            return Err(invalid(
                "snapshots.save_wait_ms",
                "must be from 100 to 60000 (milliseconds a /save waits for the disk)",
            ));
        }
        let codes = &self.codes;
        if let Some(day) = codes
            .working_days
            .iter()
            .find(|d| d.trim().parse::<chrono::Weekday>().is_err())
        {
            return Err(invalid(
                "codes.working_days",
                format!(
                    "has `{day}`, which is not a weekday: use mon, tue, wed, thu, fri, sat, sun"
                ),
            ));
        }
        if !(1..=3600).contains(&self.audit.summary_interval_s) {
            return Err(invalid(
                "audit.summary_interval_s",
                "must be between 1 and 3600 seconds",
            ));
        }
        if !(1..=100).contains(&codes.max_failures) {
            return Err(invalid("codes.max_failures", "must be between 1 and 100"));
        }
        if !(1..=86_400).contains(&codes.failure_window_s) {
            return Err(invalid(
                "codes.failure_window_s",
                "must be between 1 and 86400 seconds",
            ));
        }
        if !(1..=86_400).contains(&codes.lockout_s) {
            return Err(invalid(
                "codes.lockout_s",
                "must be between 1 and 86400 seconds",
            ));
        }
        if !(codes.max_failures..=10_000).contains(&codes.building_max_failures) {
            return Err(invalid(
                "codes.building_max_failures",
                "must be between codes.max_failures and 10000: the budget of all addresses together",
            ));
        }
        for (key, value) in [
            ("codes.building_window_s", codes.building_window_s),
            ("codes.building_pause_s", codes.building_pause_s),
        ] {
            if !(1..=86_400).contains(&value) {
                return Err(invalid(key, "must be between 1 and 86400 seconds"));
            }
        }
        self.validate_mqtt()
            .map_err(|(key, problem)| invalid(key, problem))
    }

    fn validate_mqtt(&self) -> Result<(), (&'static str, String)> {
        let m = &self.mqtt;
        // Checked even with MQTT off: `gallery import` relies on it.
        self.gallery_public_key()
            .map_err(|problem| ("mqtt.gallery_public_key", problem))?;
        let Some(url) = &m.url else {
            return Ok(());
        };
        Broker::parse(url).map_err(|problem| ("mqtt.url", problem))?;
        let topic_word = |key, value: &str| {
            let ok = !value.is_empty()
                && value.len() <= 64
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if ok {
                Ok(())
            } else {
                Err((
                    key,
                    format!("must be 1 to 64 letters, digits, `-` or `_`, not {value:?}"),
                ))
            }
        };
        topic_word("mqtt.door_id", &m.door_id)?;
        topic_word("mqtt.topic_prefix", &m.topic_prefix)?;
        topic_word("mqtt.discovery_prefix", &m.discovery_prefix)?;
        if m.client_cert.is_some() != m.client_key.is_some() {
            return Err((
                "mqtt.client_cert",
                "and mqtt.client_key must be set together".into(),
            ));
        }
        if m.allow_commands && self.mqtt_command_secret().is_none() {
            return Err((
                "mqtt.command_secret",
                format!("must be at least {MIN_COMMAND_SECRET} characters when mqtt.allow_commands is on (or set FACEGATE_MQTT_COMMAND_SECRET)"),
            ));
        }
        if !(1..=3600).contains(&m.command_window_s) {
            return Err((
                "mqtt.command_window_s",
                "must be between 1 and 3600 seconds".into(),
            ));
        }
        if m.queue_size == 0 {
            return Err(("mqtt.queue_size", "must be at least 1".into()));
        }
        if !(1..=3600).contains(&m.keepalive_s) {
            return Err((
                "mqtt.keepalive_s",
                "must be between 1 and 3600 seconds".into(),
            ));
        }
        if m.reconnect_min_ms == 0 || m.reconnect_max_ms < m.reconnect_min_ms {
            return Err((
                "mqtt.reconnect_max_ms",
                "must be at least mqtt.reconnect_min_ms, which must be above 0".into(),
            ));
        }
        if m.max_message_bytes < 1024 {
            return Err(("mqtt.max_message_bytes", "must be at least 1024".into()));
        }
        Ok(())
    }

    /// The tablet token in force: the environment's `FACEGATE_TOKEN` wins over the file.
    pub fn token(&self) -> Option<String> {
        let token = std::env::var("FACEGATE_TOKEN").unwrap_or_else(|_| self.http.token.clone());
        (!token.is_empty()).then_some(token)
    }

    /// The MQTT password in force: `FACEGATE_MQTT_PASSWORD` wins over the file.
    pub(crate) fn mqtt_password(&self) -> Option<String> {
        let password =
            std::env::var("FACEGATE_MQTT_PASSWORD").unwrap_or_else(|_| self.mqtt.password.clone());
        (!password.is_empty()).then_some(password)
    }

    /// The command secret in force (`FACEGATE_MQTT_COMMAND_SECRET` wins), if long enough to use.
    pub fn mqtt_command_secret(&self) -> Option<String> {
        let secret = std::env::var("FACEGATE_MQTT_COMMAND_SECRET")
            .unwrap_or_else(|_| self.mqtt.command_secret.clone());
        (secret.len() >= MIN_COMMAND_SECRET).then_some(secret)
    }

    /// The building key that signs galleries, when `mqtt.gallery_public_key` is set.
    pub fn gallery_public_key(&self) -> Result<Option<ed25519_dalek::VerifyingKey>, String> {
        match self.mqtt.gallery_public_key.trim() {
            "" => Ok(None),
            text => parse_building_key(text).map(Some),
        }
    }

    pub fn gallery_path(&self) -> PathBuf {
        self.state_dir.join("gallery.json")
    }

    /// The zone of every local hour and date (`timezone`, else the system's).
    pub fn time_zone(&self) -> Result<jiff::tz::TimeZone, String> {
        match self.timezone.trim() {
            "" => Ok(jiff::tz::TimeZone::system()),
            name => jiff::tz::TimeZone::get(name).map_err(|_| {
                format!("`{name}` is not a time zone this system knows: use an IANA name such as Europe/Berlin or Asia/Seoul (see /usr/share/zoneinfo), or leave it empty for the system's zone")
            }),
        }
    }

    /// Today's date in `timezone` (visitor codes are valid on local days).
    pub fn local_today(&self) -> chrono::NaiveDate {
        let zone = self.time_zone().unwrap_or(jiff::tz::TimeZone::UTC);
        crate::permission::chrono_date(jiff::Timestamp::now().to_zoned(zone).date())
    }

    /// `codes.hours`, parsed.
    pub fn code_hours(&self) -> Result<Option<crate::permission::WeeklyHours>, String> {
        self.codes
            .hours
            .as_deref()
            .map(crate::permission::WeeklyHours::parse)
            .transpose()
            .map_err(|err| err.to_string())
    }

    /// The MQTT topic of the building gallery this door follows (MQTT on and a building key set):
    /// its gallery is made there, never edited locally.
    pub fn building_gallery_topic(&self) -> Option<String> {
        let follows = self.mqtt.url.is_some() && !self.mqtt.gallery_public_key.trim().is_empty();
        follows.then(|| format!("{}/gallery", self.mqtt.topic_prefix))
    }

    /// The visitor codes file (mode 0600).
    pub fn codes_path(&self) -> PathBuf {
        self.state_dir.join("codes.json")
    }

    /// The paired tablets file (mode 0600).
    pub fn tablets_path(&self) -> PathBuf {
        self.state_dir.join("tablets.json")
    }

    /// The sim backend's inputs file (`door.sim_inputs`).
    pub fn sim_inputs_path(&self) -> PathBuf {
        self.door
            .sim_inputs
            .clone()
            .unwrap_or_else(|| self.state_dir.join("door-sim-inputs"))
    }

    fn validate_door_inputs(&self) -> Result<(), ConfigError> {
        let door = &self.door;
        if !(1..=86_400).contains(&door.held_open_alarm_s) {
            return Err(invalid(
                "door.held_open_alarm_s",
                "must be between 1 and 86400 seconds",
            ));
        }
        if door.relock_on != RelockOnConfig::Timer && !door.contact.enabled {
            return Err(invalid(
                "door.relock_on",
                "\"open\" and \"close\" need the door contact: set door.contact.enabled = true, or relock_on = \"timer\"",
            ));
        }
        let lines = [
            (
                "door.contact.gpio_pin",
                "door.contact.debounce_ms",
                door.contact.enabled,
                door.contact.gpio_pin,
                door.contact.debounce_ms,
            ),
            (
                "door.exit_button.gpio_pin",
                "door.exit_button.debounce_ms",
                door.exit_button.enabled,
                door.exit_button.gpio_pin,
                door.exit_button.debounce_ms,
            ),
        ];
        let mut taken = vec![("door.gpio_pin", door.gpio_pin)];
        for (pin_key, debounce_key, enabled, pin, debounce_ms) in lines {
            if !enabled {
                continue;
            }
            if pin > 27 {
                return Err(invalid(pin_key, "must be a BCM pin number from 0 to 27"));
            }
            if let Some((other, _)) = taken.iter().find(|(_, used)| *used == pin) {
                return Err(invalid(
                    pin_key,
                    format!("is BCM {pin}, which {other} uses already"),
                ));
            }
            taken.push((pin_key, pin));
            if debounce_ms > 1_000 {
                return Err(invalid(
                    debounce_key,
                    "must be between 0 and 1000 milliseconds",
                ));
            }
        }
        Ok(())
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.audit
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit"))
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.snapshots
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("snapshots"))
    }

    pub fn worker_count(&self) -> usize {
        if self.http.workers > 0 {
            self.http.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config/facegate.toml");

    #[test]
    fn shipped_config_parses_and_matches_defaults_where_it_does_not_override() {
        let config = Config::parse(SHIPPED, Path::new("config/facegate.toml")).unwrap();
        assert!(
            config.http.require_token,
            "the shipped config must require a token"
        );
        assert_eq!(
            config.recognition,
            RecognitionConfig::default(),
            "the built-in defaults are the door settings the shipped config lists"
        );
        assert_eq!(
            config.recognition.coarse_detect_side, 320,
            "a door tablet's frames: the quick detection pass is on"
        );
        assert_eq!(config.frame, FrameConfig::default());
        assert_eq!(config.codes, CodesConfig::default());
        assert!(config.http.tls.enabled, "the shipped config must speak TLS");
        assert_eq!(config.liveness, LivenessConfig::default());
        assert!(
            config.liveness.enabled,
            "the shipped config checks liveness"
        );
        assert_eq!(
            (config.door.confirm_frames, config.door.confirm_window_ms),
            (
                DoorConfig::default().confirm_frames,
                DoorConfig::default().confirm_window_ms
            )
        );
        assert_eq!(
            config.door,
            DoorConfig::default(),
            "the shipped [door] documents the defaults"
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn validation_errors_name_the_key() {
        let cases = [
            ("[recognition]\nthreshold = 1.5", "recognition.threshold"),
            ("[door]\nhold_ms = 0", "door.hold_ms"),
            ("[door]\ngpio_pin = 40", "door.gpio_pin"),
            ("[door]\nconfirm_frames = 0", "door.confirm_frames"),
            (
                "[door]\nconfirm_frames = 3\nconfirm_window_ms = 0",
                "door.confirm_window_ms",
            ),
            ("[liveness]\nthreshold = 1.2", "liveness.threshold"),
            (
                "[recognition]\nmax_roll_deg = 100",
                "recognition.max_roll_deg",
            ),
            (
                "[codes]\nworking_days = [\"mon\", \"fr\"]",
                "codes.working_days",
            ),
            ("[codes]\nmax_failures = 0", "codes.max_failures"),
            (
                "[audit]\nsummary_interval_s = 0",
                "audit.summary_interval_s",
            ),
            ("[codes]\nlockout_s = 0", "codes.lockout_s"),
            (
                "[codes]\nbuilding_max_failures = 2",
                "codes.building_max_failures",
            ),
            ("[codes]\nbuilding_window_s = 0", "codes.building_window_s"),
            (
                "[codes]\nbuilding_pause_s = 86401",
                "codes.building_pause_s",
            ),
            ("[door]\nreport_wait_ms = 0", "door.report_wait_ms"),
            ("[door]\nheld_open_alarm_s = 0", "door.held_open_alarm_s"),
            ("[door]\nrelock_on = \"open\"", "door.relock_on"),
            (
                "[door.contact]\nenabled = true\ngpio_pin = 17",
                "door.contact.gpio_pin",
            ),
            (
                "[door.contact]\nenabled = true\n[door.exit_button]\nenabled = true\ngpio_pin = 27",
                "door.exit_button.gpio_pin",
            ),
            (
                "[door.exit_button]\nenabled = true\ngpio_pin = 28",
                "door.exit_button.gpio_pin",
            ),
            (
                "[door.contact]\nenabled = true\ndebounce_ms = 5000",
                "door.contact.debounce_ms",
            ),
            ("[http]\nqueue_depth = 0", "http.queue_depth"),
            ("[http]\nmax_connections = 0", "http.max_connections"),
            (
                "[http]\nmax_connections = 8\nmax_connections_without_credential = 8",
                "http.max_connections_without_credential",
            ),
            (
                "[http]\nmax_body_bytes_in_flight = 1000",
                "http.max_body_bytes_in_flight",
            ),
            ("[http.tls]\ncert = \"c.pem\"", "http.tls.cert"),
            (
                "[recognition]\ncoarse_detect_side = 10",
                "recognition.coarse_detect_side",
            ),
            (
                "[recognition]\ncoarse_face_share = 0",
                "recognition.coarse_face_share",
            ),
            (
                "[frame]\ndecode_target_side = 100",
                "frame.decode_target_side",
            ),
            ("[mqtt]\nurl = \"http://x\"", "mqtt.url"),
            (
                "[mqtt]\nurl = \"mqtt://x\"\ndoor_id = \"a/b\"",
                "mqtt.door_id",
            ),
            (
                "[mqtt]\nurl = \"mqtt://x\"\nallow_commands = true\ncommand_secret = \"short\"",
                "mqtt.command_secret",
            ),
            (
                "[mqtt]\ngallery_public_key = \"nope\"",
                "mqtt.gallery_public_key",
            ),
            (
                "[mqtt]\nurl = \"mqtt://x\"\nqueue_size = 0",
                "mqtt.queue_size",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text, Path::new("x")).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn holidays_are_toml_dates_or_strings() {
        let config = Config::parse(
            "[codes]\nholidays = [2026-12-25, \"2026-12-26\"]",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            config.codes.holidays,
            [
                chrono::NaiveDate::from_ymd_opt(2026, 12, 25).unwrap(),
                chrono::NaiveDate::from_ymd_opt(2026, 12, 26).unwrap()
            ]
        );
        for bad in ["[\"25.12.2026\"]", "[2026-12-25T10:00:00]", "[1]"] {
            let err = Config::parse(&format!("[codes]\nholidays = {bad}"), Path::new("x"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("codes.holidays"), "{bad}: {err}");
        }
    }

    #[test]
    fn broker_urls() {
        let ok = [
            ("mqtt://broker", false, "broker", 1883),
            ("mqtts://broker.lan", true, "broker.lan", 8883),
            ("mqtt://127.0.0.1:1884/", false, "127.0.0.1", 1884),
            ("mqtts://[::1]:8884", true, "::1", 8884),
            ("mqtt://[fe80::1]", false, "fe80::1", 1883),
        ];
        for (url, tls, host, port) in ok {
            assert_eq!(
                Broker::parse(url).unwrap(),
                Broker {
                    tls,
                    host: host.into(),
                    port
                },
                "{url}"
            );
        }
        let bad = [
            ("http://broker", "mqtt://"),
            ("mqtt://user:pw@broker", "credentials"),
            ("mqtt://", "no host"),
            ("mqtt://broker:0", "port"),
            ("mqtt://broker:99999", "port"),
            ("mqtt://broker/topic", "host[:port] only"),
            ("mqtt://[::1", "bracket"),
        ];
        for (url, problem) in bad {
            let err = Broker::parse(url).unwrap_err();
            assert!(err.contains(problem), "{url}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse("[door]\nhold = 3", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hold"), "{err}");
    }

    #[test]
    fn overrides_replace_file_values() {
        let overrides = Overrides {
            state_dir: Some("/tmp/s".into()),
            door: Some(DoorBackendName::Gpio),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::default().with_overrides(&overrides).unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(config.door.backend, DoorBackendName::Gpio);
        assert_eq!(config.http.listen.port(), 0);
    }
}
