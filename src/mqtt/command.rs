//! Door commands over MQTT, and why being able to publish is not enough to open a door: each command
//! carries an HMAC-SHA256 of its body under a shared secret, names its door, was issued within a short
//! window, and is accepted once (its nonce is remembered for the window). Pure: no clock, no broker.

use std::collections::HashMap;

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
    let body = serde_json::to_string(body).expect("a command body always serialises");
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
    pub fn new(door_id: &str, secret: &[u8], window: std::time::Duration) -> Verifier {
        Verifier {
            door_id: door_id.to_string(),
            secret: secret.to_vec(),
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            seen: ReplayGuard::new(REPLAY_CAPACITY),
        }
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
        let age_ms = now_ms.saturating_sub(body.issued_at_ms);
        if age_ms.unsigned_abs() > self.window_ms.unsigned_abs() {
            return Err(CommandRejected::OutsideWindow {
                age_ms,
                window_ms: self.window_ms,
            });
        }
        // Remembered until the command could no longer pass the window check.
        let forget_at = body.issued_at_ms.saturating_add(self.window_ms);
        self.seen.admit(&body.nonce, forget_at, now_ms)?;
        Ok(body)
    }
}

/// Nonces of accepted commands until their window has passed; bounded, refusing when full rather than
/// forgetting a nonce that could still be replayed.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    capacity: usize,
    forget_at_ms: HashMap<String, i64>,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard {
            capacity,
            forget_at_ms: HashMap::new(),
        }
    }

    pub(crate) fn admit(
        &mut self,
        nonce: &str,
        forget_at: i64,
        now_ms: i64,
    ) -> Result<(), CommandRejected> {
        self.forget_at_ms.retain(|_, at| *at >= now_ms);
        if self.forget_at_ms.contains_key(nonce) {
            return Err(CommandRejected::Replayed);
        }
        if self.forget_at_ms.len() >= self.capacity {
            return Err(CommandRejected::TooMany);
        }
        self.forget_at_ms.insert(nonce.to_string(), forget_at);
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.forget_at_ms.len()
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
        Verifier::new("front", SECRET, Duration::from_secs(30))
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
        let mut guard = ReplayGuard::new(2);
        guard.admit("a", 100, 0).unwrap();
        guard.admit("b", 200, 0).unwrap();
        assert_eq!(guard.admit("c", 300, 50), Err(CommandRejected::TooMany));
        assert_eq!(guard.admit("a", 300, 50), Err(CommandRejected::Replayed));
        guard.admit("c", 300, 150).unwrap();
        assert_eq!(guard.len(), 2);
    }
}
