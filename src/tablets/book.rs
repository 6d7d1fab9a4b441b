//! The paired tablets, pure: add a tablet (a one-time pairing secret), trade a secret for a device
//! token, find the tablet of a token, note when a tablet was last seen, revoke. Secrets and tokens are
//! kept only as SHA-256 hashes; both are 128+ bits from the OS CSPRNG, so a plain hash is enough.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::TabletError;

/// Tablets paired (or waiting to pair) at once: a door has one or two.
pub const MAX_TABLETS: usize = 32;
/// The longest tablet name.
pub const MAX_NAME_CHARS: usize = 32;
/// How long a pairing link works.
pub const PAIRING_VALID: TimeDelta = TimeDelta::minutes(10);
/// Bytes of a pairing secret (128 bits) and of a device token (256 bits).
const SECRET_BYTES: usize = 16;
const TOKEN_BYTES: usize = 32;

/// Characters of a device token: 32 bytes in URL-safe base64 without padding.
pub const TOKEN_CHARS: usize = 43;

/// A pairing link not used yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pairing {
    pub secret_sha256: String,
    pub expires_at: DateTime<Utc>,
}

/// One tablet, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tablet {
    pub added_at: DateTime<Utc>,
    /// The hash of the device token, once the tablet has paired.
    pub token_sha256: Option<String>,
    pub paired_at: Option<DateTime<Utc>>,
    /// The link `tablets add` printed, until it is used or replaced.
    pub pairing: Option<Pairing>,
    /// When the daemon last saw the tablet's token, and from where (written at a bounded rate).
    pub last_seen: Option<DateTime<Utc>>,
    pub last_address: Option<String>,
}

impl Tablet {
    pub fn is_paired(&self) -> bool {
        self.token_sha256.is_some()
    }

    /// How a list shows its pairing at `now`: when it paired (and a new link waiting, if any), or
    /// that it waits for its link, or that the link expired.
    pub fn pairing_text(&self, now: DateTime<Utc>) -> String {
        let until = |p: &Pairing| format!("link valid until {}", p.expires_at.format("%H:%M UTC"));
        match (self.paired_at, self.pending_pairing(now)) {
            (Some(at), None) => time_text(Some(at)),
            (Some(at), Some(pending)) => format!("{}; new {}", time_text(Some(at)), until(pending)),
            (None, Some(pending)) => format!("waiting ({})", until(pending)),
            (None, None) => "no (link expired)".into(),
        }
    }

    /// The pairing link, while it still works at `now`.
    pub fn pending_pairing(&self, now: DateTime<Utc>) -> Option<&Pairing> {
        self.pairing.as_ref().filter(|p| p.expires_at > now)
    }
}

/// A pairing secret traded for a device token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired {
    pub tablet: String,
    pub token: String,
}

/// Every tablet, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabletBook {
    pub tablets: BTreeMap<String, Tablet>,
}

/// A source of random bytes (the OS CSPRNG in the daemon and the CLI; fixed bytes in tests).
pub trait Random {
    fn fill(&mut self, bytes: &mut [u8]);
}

/// The OS CSPRNG.
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, bytes: &mut [u8]) {
        getrandom::fill(bytes).expect("the OS random source is available");
    }
}

fn random_text(random: &mut dyn Random, len: usize) -> String {
    let mut bytes = vec![0u8; len];
    random.fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A time as the tablet lists show it, `-` for none.
pub fn time_text(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_string(),
        |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// The stored form of a secret or token.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn same_hash(stored: &str, given: &str) -> bool {
    bool::from(stored.as_bytes().ct_eq(given.as_bytes()))
}

/// Could `bearer` be a device token (rather than a mistyped shared token)? 43 URL-safe characters.
pub fn looks_like_device_token(bearer: &str) -> bool {
    bearer.len() == TOKEN_CHARS
        && bearer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A tablet name: 1 to `MAX_NAME_CHARS` letters, digits, `.`, `_` or `-` (it appears in answers,
/// log lines, audit lines and MQTT messages as it is).
pub fn check_name(name: &str) -> Result<(), TabletError> {
    let fine = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if fine {
        Ok(())
    } else {
        Err(TabletError::Name(name.to_string()))
    }
}

impl TabletBook {
    /// Adds `name` (or keeps it, when it exists) with a new pairing link, replacing an earlier
    /// unused link. A paired tablet keeps its token until the new link is used. Returns the secret.
    pub fn add(
        &mut self,
        name: &str,
        now: DateTime<Utc>,
        random: &mut dyn Random,
    ) -> Result<String, TabletError> {
        check_name(name)?;
        self.forget_expired(now);
        if !self.tablets.contains_key(name) && self.tablets.len() >= MAX_TABLETS {
            return Err(TabletError::Full);
        }
        let secret = random_text(random, SECRET_BYTES);
        let tablet = self.tablets.entry(name.to_string()).or_insert(Tablet {
            added_at: now,
            token_sha256: None,
            paired_at: None,
            pairing: None,
            last_seen: None,
            last_address: None,
        });
        tablet.pairing = Some(Pairing {
            secret_sha256: hash(&secret),
            expires_at: now + PAIRING_VALID,
        });
        Ok(secret)
    }

    /// Trades a pairing secret, once and before it expires, for a new device token.
    pub fn pair(
        &mut self,
        secret: &str,
        now: DateTime<Utc>,
        random: &mut dyn Random,
    ) -> Result<Paired, TabletError> {
        let name = self
            .pending_name(secret, now)
            .ok_or(TabletError::PairingInvalid)?;
        let token = random_text(random, TOKEN_BYTES);
        let tablet = self.tablets.get_mut(&name).expect("found above");
        tablet.pairing = None;
        tablet.token_sha256 = Some(hash(&token));
        tablet.paired_at = Some(now);
        Ok(Paired {
            tablet: name,
            token,
        })
    }

    /// The tablet whose unused, unexpired link carries `secret`.
    pub fn pending_name(&self, secret: &str, now: DateTime<Utc>) -> Option<String> {
        let given = hash(secret);
        self.tablets
            .iter()
            .find(|(_, t)| {
                t.pending_pairing(now)
                    .is_some_and(|p| same_hash(&p.secret_sha256, &given))
            })
            .map(|(name, _)| name.clone())
    }

    /// The paired tablet whose device token is `token`.
    pub fn tablet_of(&self, token: &str) -> Option<&str> {
        let given = hash(token);
        self.tablets
            .iter()
            .find(|(_, t)| {
                t.token_sha256
                    .as_deref()
                    .is_some_and(|stored| same_hash(stored, &given))
            })
            .map(|(name, _)| name.as_str())
    }

    /// Notes that the paired tablet `name` was seen at `at` from `address` (nothing for a tablet
    /// revoked in the meantime).
    pub fn seen(&mut self, name: &str, at: DateTime<Utc>, address: Option<String>) {
        if let Some(tablet) = self.tablets.get_mut(name).filter(|t| t.is_paired()) {
            tablet.last_seen = Some(at);
            if address.is_some() {
                tablet.last_address = address;
            }
        }
    }

    /// Removes `name`: its token stops working and its link too.
    pub fn revoke(&mut self, name: &str) -> Result<Tablet, TabletError> {
        self.tablets
            .remove(name)
            .ok_or_else(|| TabletError::Unknown(name.to_string()))
    }

    /// Drops expired links, and the tablets that never paired with them.
    fn forget_expired(&mut self, now: DateTime<Utc>) {
        self.tablets.retain(|_, t| {
            if t.pairing.as_ref().is_some_and(|p| p.expires_at <= now) {
                t.pairing = None;
            }
            t.is_paired() || t.pairing.is_some()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts up, so every secret and token differs.
    struct Counting(u8);

    impl Random for Counting {
        fn fill(&mut self, bytes: &mut [u8]) {
            self.0 += 1;
            bytes.fill(self.0);
        }
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        "2026-12-03T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::minutes(minutes)
    }

    #[test]
    fn a_secret_pairs_once_within_ten_minutes() {
        let mut book = TabletBook::default();
        let mut random = Counting(0);
        let secret = book.add("front", at(0), &mut random).unwrap();
        assert!(secret.len() >= 22, "128 bits: {secret}");
        assert!(book.tablet_of(&secret).is_none(), "a secret is no token");
        let paired = book.pair(&secret, at(9), &mut random).unwrap();
        assert_eq!(paired.tablet, "front");
        assert_eq!(paired.token.len(), TOKEN_CHARS);
        assert!(looks_like_device_token(&paired.token));
        assert_eq!(book.tablet_of(&paired.token), Some("front"));
        assert_eq!(
            book.pair(&secret, at(9), &mut random),
            Err(TabletError::PairingInvalid),
            "single use"
        );
        let late = book.add("back", at(10), &mut random).unwrap();
        assert_eq!(
            book.pair(&late, at(20), &mut random),
            Err(TabletError::PairingInvalid),
            "expired"
        );
    }

    #[test]
    fn only_hashes_are_kept() {
        let mut book = TabletBook::default();
        let mut random = Counting(0);
        let secret = book.add("front", at(0), &mut random).unwrap();
        let pending = format!("{book:?}");
        assert!(!pending.contains(&secret), "{pending}");
        let token = book.pair(&secret, at(1), &mut random).unwrap().token;
        let paired = format!("{book:?}");
        assert!(!paired.contains(&token), "{paired}");
    }

    #[test]
    fn revoking_ends_the_token_and_a_new_link_replaces_the_old_one() {
        let mut book = TabletBook::default();
        let mut random = Counting(0);
        let first = book.add("front", at(0), &mut random).unwrap();
        let second = book.add("front", at(1), &mut random).unwrap();
        assert_eq!(
            book.pair(&first, at(2), &mut random),
            Err(TabletError::PairingInvalid)
        );
        let token = book.pair(&second, at(2), &mut random).unwrap().token;
        // A paired tablet given a new link keeps its token until the link is used.
        let again = book.add("front", at(3), &mut random).unwrap();
        assert_eq!(book.tablet_of(&token), Some("front"));
        let new_token = book.pair(&again, at(4), &mut random).unwrap().token;
        assert_eq!(book.tablet_of(&token), None);
        assert_eq!(book.tablet_of(&new_token), Some("front"));
        book.revoke("front").unwrap();
        assert_eq!(book.tablet_of(&new_token), None);
        assert_eq!(
            book.revoke("front"),
            Err(TabletError::Unknown("front".into()))
        );
    }

    #[test]
    fn names_and_numbers_are_bounded() {
        let mut book = TabletBook::default();
        let mut random = Counting(0);
        for bad in ["", "front door", "a/b", &"x".repeat(MAX_NAME_CHARS + 1)] {
            assert!(
                matches!(book.add(bad, at(0), &mut random), Err(TabletError::Name(_))),
                "{bad:?}"
            );
        }
        for i in 0..MAX_TABLETS {
            book.add(&format!("t{i}"), at(0), &mut random).unwrap();
        }
        assert_eq!(
            book.add("one-more", at(0), &mut random),
            Err(TabletError::Full)
        );
        // Links never used make room once they expire.
        book.add("one-more", at(11), &mut random).unwrap();
        assert_eq!(book.tablets.len(), 1);
    }

    #[test]
    fn last_seen_is_noted_for_paired_tablets_only() {
        let mut book = TabletBook::default();
        let mut random = Counting(0);
        let secret = book.add("front", at(0), &mut random).unwrap();
        book.seen("front", at(1), Some("10.0.0.7".into()));
        assert_eq!(book.tablets["front"].last_seen, None);
        book.pair(&secret, at(1), &mut random).unwrap();
        book.seen("front", at(2), Some("10.0.0.7".into()));
        book.seen("gone", at(2), None);
        assert_eq!(book.tablets["front"].last_seen, Some(at(2)));
        assert_eq!(
            book.tablets["front"].last_address.as_deref(),
            Some("10.0.0.7")
        );
        assert_eq!(book.tablets.len(), 1);
    }
}
