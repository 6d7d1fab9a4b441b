//! Door commands over MQTT, and why being able to publish is not enough to open a door: each command
//! carries an HMAC-SHA256 of its body under a shared secret, names its door, was issued within a short
//! window, and is accepted once (its nonce is remembered for the window, across restarts through
//! [`ReplayMemory`], and against a clock stepped backwards). Pure: no clock, no broker, no disk.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Larger command messages are refused before parsing.
pub(crate) const MAX_COMMAND_BYTES: usize = 4096;
/// Nonces remembered at once; when all are still inside the window, further commands are refused.
pub(crate) const REPLAY_CAPACITY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Lock now and stay locked until `clear`.
    Lock,
    /// One pulse of the relay, as for a granted face.
    Unlock,
    /// End a lockdown.
    Clear,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Lock => "lock",
            Action::Unlock => "unlock",
            Action::Clear => "clear",
        }
    }
}

/// The signed part of a command message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    pub action: Action,
    pub door_id: String,
    /// When the sender issued it, Unix milliseconds.
    pub issued_at_ms: i64,
    /// Unique per command (8 to 64 characters); a second command with it is a replay.
    pub nonce: String,
    /// Who sent it, for the audit log (at most 64 characters).
    pub origin: String,
}

/// The message on `<prefix>/<door_id>/command`: the body as a string, and its HMAC in hex.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    body: String,
    hmac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommandRejected {
    #[error("larger than {MAX_COMMAND_BYTES} bytes")]
    TooLarge,
    #[error("not a command message: {0}")]
    Malformed(String),
    #[error("the HMAC does not match: wrong mqtt.command_secret, or the body was altered")]
    BadSignature,
    #[error("addressed to door `{0}`")]
    OtherDoor(String),
    #[error(
        "issued {age_ms} ms from now, outside the {window_ms} ms window (check the sender's clock)"
    )]
    OutsideWindow { age_ms: i64, window_ms: i64 },
    #[error("replayed: nonce already used")]
    Replayed,
    #[error("too many commands within the window; try again shortly")]
    TooMany,
}

impl CommandRejected {
    /// Stable label for metrics and audit lines.
    pub fn label(&self) -> &'static str {
        match self {
            CommandRejected::TooLarge | CommandRejected::Malformed(_) => "malformed",
            CommandRejected::BadSignature => "bad_signature",
            CommandRejected::OtherDoor(_) => "other_door",
            CommandRejected::OutsideWindow { .. } => "outside_window",
            CommandRejected::Replayed => "replayed",
            CommandRejected::TooMany => "too_many",
        }
    }
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// The message that carries `body`, signed with `secret`.
pub fn sign(body: &CommandBody, secret: &[u8]) -> String {
    sign_text(
        &serde_json::to_string(body).expect("a command body always serialises"),
        secret,
    )
}

/// The message that carries the body text `body` as it is, signed with `secret`.
pub(crate) fn sign_text(body: &str, secret: &[u8]) -> String {
    let body = body.to_string();
    let mut mac = mac(secret);
    mac.update(body.as_bytes());
    let hmac = hex(&mac.finalize().into_bytes());
    serde_json::to_string(&Envelope { body, hmac }).expect("an envelope always serialises")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// What a verifier knows: its door, the secret and the window.
pub(crate) struct Verifier {
    door_id: String,
    secret: Vec<u8>,
    window_ms: i64,
    seen: ReplayGuard,
}

impl Verifier {
    /// A verifier that remembers `memory` (what an earlier run of the daemon accepted).
    pub fn new(
        door_id: &str,
        secret: &[u8],
        window: std::time::Duration,
        memory: ReplayMemory,
    ) -> Verifier {
        Verifier {
            door_id: door_id.to_string(),
            secret: secret.to_vec(),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            seen: ReplayGuard::new(REPLAY_CAPACITY, memory),
        }
    }

    /// What must outlive the process so that no accepted command is accepted again after a restart.
    pub fn memory(&self) -> &ReplayMemory {
        &self.seen.memory
    }

    /// Checks one message received at `now_ms` (Unix milliseconds). The signature is checked before
    /// anything in the body is believed; the nonce is remembered only for a command that passed.
    pub(crate) fn verify(
        &mut self,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<CommandBody, CommandRejected> {
        if payload.len() > MAX_COMMAND_BYTES {
            return Err(CommandRejected::TooLarge);
        }
        let envelope: Envelope = serde_json::from_slice(payload)
            .map_err(|err| CommandRejected::Malformed(err.to_string()))?;
        let tag = unhex(&envelope.hmac)
            .ok_or_else(|| CommandRejected::Malformed("hmac is not hex".into()))?;
        let mut mac = mac(&self.secret);
        mac.update(envelope.body.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| CommandRejected::BadSignature)?;
        let body: CommandBody = serde_json::from_str(&envelope.body)
            .map_err(|err| CommandRejected::Malformed(err.to_string()))?;
        if body.door_id != self.door_id {
            return Err(CommandRejected::OtherDoor(body.door_id));
        }
        let nonce_ok = (8..=64).contains(&body.nonce.len())
            && body.nonce.chars().all(|c| c.is_ascii_graphic());
        if !nonce_ok {
            return Err(CommandRejected::Malformed(
                "nonce must be 8 to 64 printable characters".into(),
            ));
        }
        if body.origin.chars().count() > 64 || body.origin.chars().any(char::is_control) {
            return Err(CommandRejected::Malformed(
                "origin must be at most 64 characters, no control characters".into(),
            ));
        }
        // A command's age is measured against the latest time this door has seen, so that a clock
        // stepped backwards cannot bring an old command (whose nonce may be forgotten) back into the window.
        let latest_ms = self.seen.observe(now_ms);
        let age_ms = latest_ms.saturating_sub(body.issued_at_ms);
        let ahead_ms = body.issued_at_ms.saturating_sub(now_ms);
        if age_ms > self.window_ms || ahead_ms > self.window_ms {
            return Err(CommandRejected::OutsideWindow {
                age_ms: if ahead_ms > self.window_ms {
                    -ahead_ms
                } else {
                    age_ms
                },
                window_ms: self.window_ms,
            });
        }
        // Remembered until the command could no longer pass the window check.
        let forget_at = body.issued_at_ms.saturating_add(self.window_ms);
        match self.seen.admit(&body.nonce, forget_at) {
            // Fail-secure: a full table never keeps the door from locking down. Unremembered, the
            // lock could be replayed within its window, which can only lock the door again.
            Err(CommandRejected::TooMany) if body.action == Action::Lock => Ok(body),
            admitted => admitted.map(|()| body),
        }
    }
}

/// What a door remembers of the commands it accepted, persisted by the daemon after each one: the
/// latest clock reading it has seen and the nonces that could still pass the window. Bounded by
/// [`REPLAY_CAPACITY`] nonces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayMemory {
    /// The latest time (Unix milliseconds) the door's clock showed when judging a command; never goes
    /// back, so a command older than this minus the window is refused whatever the clock says now.
    pub latest_ms: i64,
    /// Nonce → the time after which its command can no longer pass the window.
    pub nonces: BTreeMap<String, i64>,
}

impl ReplayMemory {
    /// For a door whose memory is lost (unreadable file): refuses every command issued before `now_ms`,
    /// which includes every command seen before.
    pub fn forgotten_at(now_ms: i64, window_ms: i64) -> ReplayMemory {
        ReplayMemory {
            latest_ms: now_ms.saturating_add(window_ms),
            nonces: BTreeMap::new(),
        }
    }
}

/// Nonces of accepted commands until their window has passed; bounded, refusing when full rather than
/// forgetting a nonce that could still be replayed.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    capacity: usize,
    memory: ReplayMemory,
}

impl ReplayGuard {
    /// A guard holding what was persisted; more nonces than `capacity` (a hand-edited file) are kept
    /// too, and refuse new commands until they expire.
    fn new(capacity: usize, memory: ReplayMemory) -> ReplayGuard {
        ReplayGuard { capacity, memory }
    }

    /// Moves the door's latest time forward to `now_ms` if it is later; returns the latest time.
    fn observe(&mut self, now_ms: i64) -> i64 {
        self.memory.latest_ms = self.memory.latest_ms.max(now_ms);
        self.memory.latest_ms
    }

    /// Admits a nonce until `forget_at`; nonces whose time passed (by the latest time seen) are dropped.
    pub(crate) fn admit(&mut self, nonce: &str, forget_at: i64) -> Result<(), CommandRejected> {
        let latest = self.memory.latest_ms;
        self.memory.nonces.retain(|_, at| *at >= latest);
        if self.memory.nonces.contains_key(nonce) {
            return Err(CommandRejected::Replayed);
        }
        if self.memory.nonces.len() >= self.capacity {
            return Err(CommandRejected::TooMany);
        }
        self.memory.nonces.insert(nonce.to_string(), forget_at);
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.memory.nonces.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: &[u8] = b"0123456789abcdef-building";
    const NOW: i64 = 1_764_600_000_000;

    fn body(nonce: &str, issued_at_ms: i64) -> CommandBody {
        CommandBody {
            action: Action::Unlock,
            door_id: "front".into(),
            issued_at_ms,
            nonce: nonce.into(),
            origin: "desk".into(),
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(
            "front",
            SECRET,
            Duration::from_secs(30),
            ReplayMemory::default(),
        )
    }

    #[test]
    fn commands_are_judged_by_signature_door_window_and_nonce() {
        let good = sign(&body("nonce-0001", NOW), SECRET);
        let tampered = good.replace("unlock", "lock");
        let other_secret = sign(&body("nonce-0002", NOW), b"another-secret-of-16+");
        let other_door = sign(
            &CommandBody {
                door_id: "back".into(),
                ..body("nonce-0003", NOW)
            },
            SECRET,
        );
        let cases: Vec<(String, &str, Result<(), &str>)> = vec![
            (good.clone(), "valid", Ok(())),
            (tampered, "body altered after signing", Err("bad_signature")),
            (
                other_secret,
                "signed with another secret",
                Err("bad_signature"),
            ),
            (other_door, "for another door", Err("other_door")),
            (
                sign(&body("nonce-0004", NOW - 31_000), SECRET),
                "too old",
                Err("outside_window"),
            ),
            (
                sign(&body("nonce-0005", NOW + 31_000), SECRET),
                "from the future",
                Err("outside_window"),
            ),
            (
                sign(&body("nonce-0006", NOW - 29_000), SECRET),
                "old but inside the window",
                Ok(()),
            ),
            (
                sign(&body("short", NOW), SECRET),
                "short nonce",
                Err("malformed"),
            ),
            ("{\"body\":\"{}\"}".into(), "no hmac", Err("malformed")),
            (
                "{\"body\":\"{}\",\"hmac\":\"zz\"}".into(),
                "hmac not hex",
                Err("malformed"),
            ),
            ("unlock".into(), "plain text", Err("malformed")),
            (
                sign(&body("nonce-0007", i64::MIN), SECRET),
                "issued at the start of time",
                Err("outside_window"),
            ),
            (
                sign(&body("nonce-0008", i64::MAX), SECRET),
                "issued at the end of time",
                Err("outside_window"),
            ),
            (
                "x".repeat(MAX_COMMAND_BYTES + 1),
                "too large",
                Err("malformed"),
            ),
        ];
        for (payload, case, expected) in cases {
            let got = verifier()
                .verify(payload.as_bytes(), NOW)
                .map(|_| ())
                .map_err(|e| e.label());
            assert_eq!(got, expected, "{case}");
        }
    }

    #[test]
    fn an_exact_replay_inside_the_window_is_refused_and_forgotten_after_it() {
        let mut verifier = verifier();
        let message = sign(&body("nonce-replay", NOW), SECRET);
        let accepted = verifier.verify(message.as_bytes(), NOW).unwrap();
        assert_eq!(accepted.action, Action::Unlock);
        assert_eq!(accepted.origin, "desk");
        assert_eq!(
            verifier.verify(message.as_bytes(), NOW + 1_000),
            Err(CommandRejected::Replayed)
        );
        // After the window the nonce is forgotten, and the window check refuses the message instead.
        assert_eq!(
            verifier
                .verify(message.as_bytes(), NOW + 31_000)
                .map_err(|e| e.label()),
            Err("outside_window")
        );
        let later = sign(&body("nonce-later", NOW + 31_000), SECRET);
        verifier.verify(later.as_bytes(), NOW + 31_000).unwrap();
        assert_eq!(verifier.seen.len(), 1, "the expired nonce was forgotten");
    }

    #[test]
    fn a_rejected_command_does_not_use_up_its_nonce() {
        let mut verifier = verifier();
        let bad = sign(&body("nonce-shared", NOW), b"wrong-secret-wrong!!");
        assert!(verifier.verify(bad.as_bytes(), NOW).is_err());
        let good = sign(&body("nonce-shared", NOW), SECRET);
        assert!(verifier.verify(good.as_bytes(), NOW).is_ok());
    }

    #[test]
    fn replay_guard_refuses_when_full_and_frees_expired_nonces() {
        let mut guard = ReplayGuard::new(2, ReplayMemory::default());
        guard.observe(0);
        guard.admit("a", 100).unwrap();
        guard.admit("b", 200).unwrap();
        guard.observe(50);
        assert_eq!(guard.admit("c", 300), Err(CommandRejected::TooMany));
        assert_eq!(guard.admit("a", 300), Err(CommandRejected::Replayed));
        guard.observe(150);
        guard.admit("c", 300).unwrap();
        assert_eq!(guard.len(), 2);
    }

    /// Regression: with every nonce of the window in use (a busy building's remote unlocks, or a
    /// sender gone wild with the secret), a signed `lock` was refused `too_many` like an `unlock`.
    #[test]
    fn a_full_nonce_table_refuses_unlocks_but_never_a_lock() {
        let mut verifier = verifier();
        for n in 0..REPLAY_CAPACITY {
            let unlock = sign(&body(&format!("nonce-{n:04}"), NOW), SECRET);
            verifier.verify(unlock.as_bytes(), NOW).unwrap();
        }
        let one_more = sign(&body("nonce-more", NOW), SECRET);
        assert_eq!(
            verifier.verify(one_more.as_bytes(), NOW),
            Err(CommandRejected::TooMany)
        );
        let lock = |nonce: &str| {
            sign(
                &CommandBody {
                    action: Action::Lock,
                    ..body(nonce, NOW)
                },
                SECRET,
            )
        };
        assert_eq!(
            verifier
                .verify(lock("nonce-lockdown").as_bytes(), NOW)
                .map(|b| b.action),
            Ok(Action::Lock)
        );
        assert_eq!(
            verifier.verify(lock("nonce-0007").as_bytes(), NOW),
            Err(CommandRejected::Replayed),
            "a remembered nonce stays refused, whatever the action"
        );
    }

    #[test]
    fn a_command_accepted_before_a_restart_is_refused_after_it() {
        let message = sign(&body("nonce-restart", NOW), SECRET);
        let mut before = verifier();
        before.verify(message.as_bytes(), NOW).unwrap();
        let persisted = serde_json::to_string(before.memory()).unwrap();
        let memory: ReplayMemory = serde_json::from_str(&persisted).unwrap();
        let mut after = Verifier::new("front", SECRET, Duration::from_secs(30), memory);
        assert_eq!(
            after.verify(message.as_bytes(), NOW + 5_000),
            Err(CommandRejected::Replayed)
        );
        let lost = ReplayMemory::forgotten_at(NOW + 5_000, 30_000);
        let mut amnesiac = Verifier::new("front", SECRET, Duration::from_secs(30), lost);
        assert_eq!(
            amnesiac
                .verify(message.as_bytes(), NOW + 5_000)
                .map_err(|e| e.label()),
            Err("outside_window"),
            "a door that lost its memory refuses every command issued before it started"
        );
        let fresh = sign(&body("nonce-fresh", NOW + 6_000), SECRET);
        amnesiac.verify(fresh.as_bytes(), NOW + 6_000).unwrap();
    }

    #[test]
    fn a_clock_stepped_backwards_does_not_reopen_a_window() {
        let mut verifier = verifier();
        let message = sign(&body("nonce-clock", NOW), SECRET);
        verifier.verify(message.as_bytes(), NOW).unwrap();
        // The clock jumps an hour ahead (the nonce is forgotten), then back to where it was.
        let later = sign(&body("nonce-ahead", NOW + 3_600_000), SECRET);
        verifier.verify(later.as_bytes(), NOW + 3_600_000).unwrap();
        assert_eq!(verifier.seen.len(), 1, "the first nonce was forgotten");
        assert_eq!(
            verifier
                .verify(message.as_bytes(), NOW + 1_000)
                .map_err(|e| e.label()),
            Err("outside_window")
        );
        let fresh_by_the_stepped_clock = sign(&body("nonce-back", NOW + 1_000), SECRET);
        assert_eq!(
            verifier
                .verify(fresh_by_the_stepped_clock.as_bytes(), NOW + 1_000)
                .map_err(|e| e.label()),
            Err("outside_window"),
            "commands are judged by the latest time the door has seen"
        );
    }
}
