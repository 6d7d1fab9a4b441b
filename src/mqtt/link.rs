//! The one connection to the broker: a thread that drives rumqttc's blocking `Connection`, reconnects
//! with backoff and hands incoming commands and galleries to the daemon; publishers only `try_publish`
//! into rumqttc's bounded request channel, so a slow or absent broker costs them nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ClientError, Connection, Event, LastWill, MqttOptions, Packet, Publish, QoS, Request,
    Subscribe, TlsConfiguration, Transport,
};
use serde::Serialize;
use serde_json::Value;

use super::{discovery, Broker, Topics};
use crate::config::Config;
use crate::decision::Status;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimitedLog;
use crate::record::DecisionRecord;
use crate::sync::lock_recovering;

/// How long one wait on the connection lasts before the stop flag is looked at again.
const POLL: Duration = Duration::from_millis(200);
/// How long shutdown waits for `offline` to reach the broker.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Seconds rumqttc waits for the TCP/TLS connection and the broker's CONNACK.
const CONNECT_TIMEOUT_S: u64 = 5;
/// A connection that lasted this long resets the backoff; one that breaks sooner (a broker refusing
/// us after CONNACK, an oversized retained message) keeps backing off.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// A message above `mqtt.max_message_bytes` breaks the connection while it is read. Up to this many
/// times the limit, the next connection reads it in full once and skips it (a retained one would
/// otherwise break every reconnection); a larger one must be removed from the broker.
const SKIPPABLE_FACTOR: usize = 4;

/// A message for the daemon to judge.
#[derive(Debug)]
pub enum Incoming {
    /// Payload on `<prefix>/<door_id>/command`.
    Command(Vec<u8>),
    /// Payload on `<prefix>/gallery`.
    Gallery(Vec<u8>),
}

/// Called on the MQTT thread for each incoming message; it must not block for long.
pub(crate) type IncomingHandler = Box<dyn FnMut(Incoming) + Send>;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("cannot read {what} {path}: {cause}. Check the path in the [mqtt] section")]
    Pem {
        what: &'static str,
        path: std::path::PathBuf,
        cause: String,
    },
    #[error("the TLS settings of [mqtt] are not usable: {0}")]
    Tls(String),
    #[error("mqtt.gallery_public_key: {0}")]
    Key(String),
    #[error("cannot start the MQTT thread: {0}")]
    Thread(std::io::Error),
}

/// Counters and the last person let in, retained on `<prefix>/<door_id>/stats` for Home Assistant.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
struct Stats {
    granted: u64,
    refused: u64,
    dropped: u64,
    last_person: Option<String>,
    last_let_in_at: Option<String>,
}

struct LinkState {
    topics: Topics,
    /// Messages dropped because the queue was full (`facegate_mqtt_dropped_total`).
    dropped: Arc<AtomicU64>,
    /// `facegate_mqtt_connected`.
    connected: Arc<AtomicBool>,
    /// The latest door state, republished on every (re)connection.
    door: Mutex<Option<String>>,
    stats: Mutex<Stats>,
    stop: AtomicBool,
    /// `mqtt.max_message_bytes`: larger messages are never handed on.
    max_message_bytes: usize,
}

/// The daemon's handle on the broker.
pub struct MqttLink {
    client: Client,
    state: Arc<LinkState>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MqttLink {
    /// Starts the connection thread; returns at once (the broker may be down: it is retried).
    pub fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        subscribe_commands: bool,
        subscribe_gallery: bool,
        handler: IncomingHandler,
    ) -> Result<MqttLink, LinkError> {
        let m = &config.mqtt;
        let url = m.url.as_deref().unwrap_or_default();
        let broker = Broker::parse(url).map_err(LinkError::Url)?;
        let topics = Topics::of(config);
        let client_id = if m.client_id.is_empty() {
            format!("facegate-{}", m.door_id)
        } else {
            m.client_id.clone()
        };
        let mut options = MqttOptions::new(client_id, &broker.host, broker.port);
        options
            .set_keep_alive(Duration::from_secs(m.keepalive_s))
            .set_clean_session(true)
            .set_max_packet_size(m.max_message_bytes, m.max_message_bytes)
            .set_last_will(LastWill::new(
                &topics.availability,
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(password) = config.mqtt_password() {
            options.set_credentials(&m.username, password);
        } else if !m.username.is_empty() {
            options.set_credentials(&m.username, "");
        }
        if broker.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls_config(config)?),
            )));
        }
        let (client, mut connection) = Client::new(options, m.queue_size);
        connection
            .eventloop
            .network_options
            .set_connection_timeout(CONNECT_TIMEOUT_S);
        let state = Arc::new(LinkState {
            topics,
            dropped: Arc::default(),
            connected: Arc::default(),
            door: Mutex::new(None),
            stats: Mutex::new(Stats::default()),
            stop: AtomicBool::new(false),
            max_message_bytes: m.max_message_bytes,
        });
        let dropped = Arc::clone(&state.dropped);
        metrics.add_source(
            "facegate_mqtt_dropped_total",
            "counter",
            "MQTT messages dropped because the broker was slow or away and the queue was full.",
            move || dropped.load(Ordering::Relaxed),
        );
        let connected = Arc::clone(&state.connected);
        metrics.add_source(
            "facegate_mqtt_connected",
            "gauge",
            "1 while connected to the MQTT broker.",
            move || u64::from(connected.load(Ordering::Relaxed)),
        );
        let startup = Startup {
            subscribe_commands,
            subscribe_gallery,
            discovery: m.discovery.then(|| {
                discovery::messages(
                    &m.discovery_prefix,
                    &m.door_id,
                    &state.topics,
                    config.door.contact.enabled,
                )
            }),
        };
        let backoff = Backoff::new(
            Duration::from_millis(m.reconnect_min_ms),
            Duration::from_millis(m.reconnect_max_ms),
        );
        let thread_state = Arc::clone(&state);
        let broker_name = format!("{}:{}", broker.host, broker.port);
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || {
                run(
                    &mut connection,
                    &thread_state,
                    &startup,
                    backoff,
                    handler,
                    &broker_name,
                )
            })
            .map_err(LinkError::Thread)?;
        Ok(MqttLink {
            client,
            state,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues one decision for `<prefix>/<door_id>/event` (its audit line: the same record, no image)
    /// and, when they changed (not for the many frames without a face), the counters for Home
    /// Assistant. Never blocks: when the queue is full, the message is dropped and counted.
    pub(crate) fn publish_decision(&self, record: &DecisionRecord) {
        let stats = {
            let mut stats = lock_recovering(&self.state.stats);
            let before = stats.clone();
            match record.status {
                Status::Granted => stats.granted += 1,
                Status::Unknown | Status::NotAllowed => stats.refused += 1,
                _ => {}
            }
            if matches!(record.door, "opened" | "extended") {
                stats.last_person = record.recognised.as_ref().and_then(|r| r.identity.clone());
                stats.last_let_in_at = Some(
                    record
                        .at
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
            }
            (*stats != before).then(|| serde_json::to_string(&*stats).expect("stats serialise"))
        };
        self.publish_event(&record.audit_line());
        if let Some(stats) = stats {
            self.try_publish(&self.state.topics.stats, true, stats);
        }
    }

    /// Queues one record (a decision, or an executed command) for `<prefix>/<door_id>/event`.
    pub(crate) fn publish_event(&self, record: &Value) {
        self.try_publish(&self.state.topics.event, false, record.to_string());
    }

    /// Queues the door's state, retained on `<prefix>/<door_id>/door`; the latest one is also sent
    /// again after every reconnection.
    pub(crate) fn publish_door(&self, state: &Value) {
        let payload = state.to_string();
        *lock_recovering(&self.state.door) = Some(payload.clone());
        self.try_publish(&self.state.topics.door, true, payload);
    }

    fn try_publish(&self, topic: &str, retain: bool, payload: String) {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {}
            Err(ClientError::TryRequest(_) | ClientError::Request(_)) => {
                self.state.dropped.fetch_add(1, Ordering::Relaxed);
                lock_recovering(&self.state.stats).dropped += 1;
            }
        }
    }

    /// Publishes `offline` and disconnects, waiting at most about a second; if the broker is away,
    /// it publishes the last will (`offline`) itself when the connection drops.
    pub fn shutdown(&self) {
        let _ = self.client.try_publish(
            &self.state.topics.availability,
            QoS::AtLeastOnce,
            true,
            "offline",
        );
        let _ = self.client.try_disconnect();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let thread = lock_recovering(&self.thread).take();
        if let Some(thread) = thread {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.state.stop.store(true, Ordering::SeqCst);
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// What is sent on every (re)connection, ahead of the queued events.
struct Startup {
    subscribe_commands: bool,
    subscribe_gallery: bool,
    discovery: Option<Vec<discovery::DiscoveryMessage>>,
}

/// Reconnection delays: from `min`, doubling to `max`; reset by a successful connection.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn connected(&mut self) {
        self.next = self.min;
    }
}

fn run(
    connection: &mut Connection,
    state: &LinkState,
    startup: &Startup,
    mut backoff: Backoff,
    mut handler: IncomingHandler,
    broker: &str,
) {
    let failures = RateLimitedLog::new(Duration::from_secs(60));
    let mut connected_at: Option<Instant> = None;
    while !state.stop.load(Ordering::SeqCst) {
        match connection.recv_timeout(POLL) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                log::info!("mqtt: connected to {broker}");
                connected_at = Some(Instant::now());
                state.connected.store(true, Ordering::Relaxed);
                queue_startup(connection, state, startup);
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish))))
                if publish.payload.len() > state.max_message_bytes =>
            {
                log::warn!(
                    "mqtt: skipped a {}-byte {}message on {}: above mqtt.max_message_bytes ({})",
                    publish.payload.len(),
                    if publish.retain { "retained " } else { "" },
                    publish.topic,
                    state.max_message_bytes
                );
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish))))
                if publish.retain && publish.topic == state.topics.command =>
            {
                // A retained command would act at every (re)connect, long after it was sent.
                log::warn!(
                    "mqtt: skipped a retained command on {}: commands act only when sent, never from the broker's memory (publish them without retain)",
                    publish.topic
                );
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                let payload = publish.payload.to_vec();
                if publish.topic == state.topics.command {
                    handler(Incoming::Command(payload));
                } else if publish.topic == state.topics.gallery {
                    handler(Incoming::Gallery(payload));
                }
            }
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => {
                // Let the DISCONNECT (after `offline`) reach the broker, then stop.
                let _ = connection.recv_timeout(POLL);
                break;
            }
            Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Ok(Err(err)) => {
                let hint = match oversized(&err) {
                    Some(size) if size <= state.max_message_bytes * SKIPPABLE_FACTOR => {
                        let options = &mut connection.eventloop.mqtt_options;
                        let incoming = size.max(options.max_packet_size());
                        options.set_max_packet_size(incoming, state.max_message_bytes);
                        format!(" (a {size}-byte message is above mqtt.max_message_bytes: the next connection reads it once to skip it)")
                    }
                    Some(size) => format!(" (a {size}-byte message is above mqtt.max_message_bytes, too large to skip: raise the limit, or remove the message from the broker)"),
                    None => String::new(),
                };
                match connected_at.take() {
                    Some(since) => {
                        state.connected.store(false, Ordering::Relaxed);
                        if since.elapsed() >= STABLE_CONNECTION {
                            backoff.connected();
                        }
                        failures.error(format!(
                            "mqtt: connection to {broker} lost: {err}{hint}; reconnecting"
                        ));
                    }
                    None => {
                        failures.error(format!(
                            "mqtt: cannot connect to {broker}: {err}{hint}; retrying"
                        ));
                    }
                }
                sleep_unless_stopped(backoff.failed(), state);
            }
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        }
    }
    state.connected.store(false, Ordering::Relaxed);
}

/// The size of the message that broke the connection by being over the incoming limit, if that did.
fn oversized(err: &rumqttc::ConnectionError) -> Option<usize> {
    match err {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

fn sleep_unless_stopped(delay: Duration, state: &LinkState) {
    let until = Instant::now() + delay;
    while !state.stop.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
}

/// Puts the subscriptions, `online`, discovery and the latest door state at the head of the
/// connection's own queue, so that they never compete with (or are dropped like) queued events.
fn queue_startup(connection: &mut Connection, state: &LinkState, startup: &Startup) {
    let retained = |topic: &str, payload: String| {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
        publish.retain = true;
        Request::Publish(publish)
    };
    let mut requests = Vec::new();
    if startup.subscribe_commands {
        requests.push(Request::Subscribe(Subscribe::new(
            &state.topics.command,
            QoS::AtLeastOnce,
        )));
    }
    if startup.subscribe_gallery {
        requests.push(Request::Subscribe(Subscribe::new(
            &state.topics.gallery,
            QoS::AtLeastOnce,
        )));
    }
    requests.push(retained(&state.topics.availability, "online".into()));
    for message in startup.discovery.iter().flatten() {
        requests.push(retained(&message.topic, message.payload.to_string()));
    }
    if let Some(door) = lock_recovering(&state.door).clone() {
        requests.push(retained(&state.topics.door, door));
    }
    let stats =
        serde_json::to_string(&*lock_recovering(&state.stats)).expect("stats always serialise");
    requests.push(retained(&state.topics.stats, stats));
    let pending = &mut connection.eventloop.pending;
    for request in requests.into_iter().rev() {
        pending.push_front(request);
    }
}

/// rustls with the ring provider (it cross-compiles for the Pi with a plain C cross compiler), the CA
/// bundle of `mqtt.ca_file` and, when set, the client certificate.
fn tls_config(config: &Config) -> Result<rustls::ClientConfig, LinkError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let m = &config.mqtt;
    let pem_error = |what: &'static str, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |err: rustls::pki_types::pem::Error| LinkError::Pem {
            what,
            path,
            cause: err.to_string(),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&m.ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(pem_error("the CA file mqtt.ca_file", &m.ca_file))?;
    let (added, _) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(LinkError::Pem {
            what: "the CA file mqtt.ca_file",
            path: m.ca_file.clone(),
            cause: "it holds no usable certificate".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| LinkError::Tls(err.to_string()))?
        .with_root_certificates(roots);
    match (&m.client_cert, &m.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(pem_error("the client certificate mqtt.client_cert", cert))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(pem_error("the client key mqtt.client_key", key))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| LinkError::Tls(err.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_ceiling_and_resets_on_connection() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.failed().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        b.connected();
        assert_eq!(b.failed(), Duration::from_millis(100));
    }
}
