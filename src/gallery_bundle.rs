//! One gallery for a building: a door's gallery exported as a versioned bundle (sequence, embedder,
//! people), optionally signed with the building's Ed25519 key, and the rules a door applies before
//! loading one: signed when it has a building key, same embedder, not expired (`valid_until`), never
//! older than the highest sequence the door ever accepted (kept in the door's own state, not in the
//! gallery file, so that deleting the gallery does not let an old bundle back in).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gallery::{EmbedderId, Gallery, GalleryError};

const BUNDLE_FORMAT: &str = "facegate-gallery-bundle";
const BUNDLE_VERSION: u32 = 1;
const SIGNED_FORMAT: &str = "facegate-signed-gallery";
/// The door's own record of the building gallery, in `state_dir`: the highest sequence it accepted.
pub const DOOR_STATE: &str = "building-gallery.json";
/// How long an export is valid unless `facegate gallery export --valid-days` says otherwise.
pub const DEFAULT_VALID_DAYS: u32 = 30;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a facegate gallery export: {0}")]
    NotABundle(String),
    #[error("the export has format version {0}; this facegate reads version {BUNDLE_VERSION}. Upgrade facegate")]
    Version(u32),
    #[error("the gallery is not signed, and this door only loads galleries signed with the building key (mqtt.gallery_public_key). Export it with --sign")]
    Unsigned,
    #[error("the gallery is signed, but mqtt.gallery_public_key is not set, so the signature cannot be checked. Set the building's public key")]
    NoKey,
    #[error("the gallery's signature does not match the building key in mqtt.gallery_public_key: it was altered, or signed with another key")]
    BadSignature,
    #[error("the gallery has sequence {offered}, older than the newest this door ever accepted ({have}); export a fresh one")]
    Older { have: u64, offered: u64 },
    #[error("the gallery expired at {valid_until} (exported {exported_at}); export a fresh one")]
    Expired {
        valid_until: String,
        exported_at: String,
    },
    #[error(
        "the signed gallery carries no valid_until (made by an older facegate); export it again"
    )]
    NoValidity,
    #[error("cannot use the door's gallery state {path}: {cause}. Fix or delete the file (deleting it lets any newer signed gallery in)")]
    DoorState { path: PathBuf, cause: String },
    #[error(transparent)]
    Gallery(#[from] GalleryError),
    #[error("cannot use the key file {path}: {cause}")]
    KeyFile { path: PathBuf, cause: String },
}

/// What is exported, and what is signed (as exact bytes).
#[derive(Debug, Serialize, Deserialize)]
struct Bundle {
    format: String,
    version: u32,
    /// Grows with every export; a door refuses a bundle with a smaller one than it has.
    sequence: u64,
    exported_at: String,
    /// RFC 3339; a door refuses the bundle after it. Required in signed bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_until: Option<String>,
    /// The gallery file's JSON (which names its embedder).
    gallery: Value,
}

/// The `format` of a message on the gallery topic, every other field skipped.
#[derive(Deserialize)]
struct FormatOnly {
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Signed {
    format: String,
    /// Base64 of the bundle's bytes.
    bundle: String,
    /// Base64 Ed25519 signature over those bytes.
    signature: String,
}

/// The sequence for the next export of `gallery`: the time in Unix milliseconds, or one more than the
/// gallery's own if that is larger (a clock set back must not make an export look old).
pub fn next_sequence(gallery: &Gallery, now_ms: u64) -> u64 {
    now_ms.max(gallery.sequence().saturating_add(1))
}

/// Seconds since the building gallery `gallery` came from was exported, from its sequence (the export
/// time in Unix milliseconds); `None` for a gallery never imported.
pub fn age_s(gallery: &Gallery, now: DateTime<Utc>) -> Option<u64> {
    let exported_ms = gallery.sequence();
    let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    (exported_ms > 0).then(|| now_ms.saturating_sub(exported_ms) / 1000)
}

/// The bundle's bytes (JSON), valid until `valid_until` (RFC 3339) if given.
pub fn export(
    gallery: &Gallery,
    sequence: u64,
    exported_at: &str,
    valid_until: Option<&str>,
) -> Vec<u8> {
    let bundle = Bundle {
        format: BUNDLE_FORMAT.into(),
        version: BUNDLE_VERSION,
        sequence,
        exported_at: exported_at.into(),
        valid_until: valid_until.map(String::from),
        gallery: serde_json::from_str(&gallery.to_json()).expect("a gallery is JSON"),
    };
    serde_json::to_vec(&bundle).expect("a bundle always serialises")
}

/// Wraps bundle bytes with the building key's signature.
pub fn sign(bundle: &[u8], key: &SigningKey) -> Vec<u8> {
    let signed = Signed {
        format: SIGNED_FORMAT.into(),
        bundle: BASE64.encode(bundle),
        signature: BASE64.encode(key.sign(bundle).to_bytes()),
    };
    serde_json::to_vec(&signed).expect("a signed bundle always serialises")
}

/// A bundle that passed every check.
#[derive(Debug)]
pub struct Opened {
    pub gallery: Gallery,
    pub sequence: u64,
    pub signed: bool,
    pub exported_at: String,
    pub valid_until: Option<DateTime<Utc>>,
}

impl Opened {
    /// Refuses an expired bundle, and a signed one without a `valid_until`.
    pub fn check_validity(&self, now: DateTime<Utc>) -> Result<(), BundleError> {
        match self.valid_until {
            None if self.signed => Err(BundleError::NoValidity),
            Some(until) if now > until => Err(BundleError::Expired {
                valid_until: until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                exported_at: self.exported_at.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Checks an export (signed or not) and returns its gallery, carrying the bundle's sequence.
/// With `key`, only a bundle signed by that key is accepted; without one, a signed bundle is refused
/// (its signature cannot be checked) and an unsigned one accepted.
pub fn open(
    bytes: &[u8],
    key: Option<&VerifyingKey>,
    wanted: &EmbedderId,
    origin: &Path,
) -> Result<Opened, BundleError> {
    // Only the format is read first, and the rest skipped unbuilt: before the signature is checked
    // the message is anyone's, and `[[0],[0],…]` built as values costs about 50 times its size.
    let outer: FormatOnly =
        serde_json::from_slice(bytes).map_err(|err| BundleError::NotABundle(err.to_string()))?;
    let (bundle_bytes, signed) = if outer.format.as_deref() == Some(SIGNED_FORMAT) {
        let signed: Signed = serde_json::from_slice(bytes)
            .map_err(|err| BundleError::NotABundle(err.to_string()))?;
        let key = key.ok_or(BundleError::NoKey)?;
        let bundle = BASE64
            .decode(&signed.bundle)
            .map_err(|err| BundleError::NotABundle(format!("bundle: {err}")))?;
        let signature = BASE64
            .decode(&signed.signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or(BundleError::BadSignature)?;
        key.verify_strict(&bundle, &signature)
            .map_err(|_| BundleError::BadSignature)?;
        (bundle, true)
    } else if key.is_some() {
        return Err(BundleError::Unsigned);
    } else {
        (bytes.to_vec(), false)
    };
    let bundle: Bundle = serde_json::from_slice(&bundle_bytes)
        .map_err(|err| BundleError::NotABundle(err.to_string()))?;
    if bundle.format != BUNDLE_FORMAT {
        return Err(BundleError::NotABundle(format!(
            "format is `{}`, not `{BUNDLE_FORMAT}`",
            bundle.format
        )));
    }
    if bundle.version != BUNDLE_VERSION {
        return Err(BundleError::Version(bundle.version));
    }
    let valid_until = bundle
        .valid_until
        .as_deref()
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|err| BundleError::NotABundle(format!("valid_until `{text}`: {err}")))
        })
        .transpose()?;
    let mut gallery = Gallery::parse(&bundle.gallery.to_string(), origin, wanted)?;
    gallery.set_sequence(bundle.sequence);
    Ok(Opened {
        gallery,
        sequence: bundle.sequence,
        signed,
        exported_at: bundle.exported_at,
        valid_until,
    })
}

/// Whether a door holding a gallery of sequence `holds`, having once accepted `highest`, should load
/// one of sequence `offered`: `Ok(true)` to load it, `Ok(false)` when the file already holds it (a
/// retained message seen again), an error when it is older than anything the door accepted. A door
/// whose gallery file was deleted reloads the newest bundle, never an older one.
pub(crate) fn should_load(holds: u64, highest: u64, offered: u64) -> Result<bool, BundleError> {
    let have = holds.max(highest);
    if offered < have {
        return Err(BundleError::Older { have, offered });
    }
    Ok(offered != holds)
}

/// The door's own record of the building gallery (`<state_dir>/building-gallery.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct DoorState {
    highest_sequence: u64,
}

fn door_state_error(path: &Path, cause: impl ToString) -> BundleError {
    BundleError::DoorState {
        path: path.to_path_buf(),
        cause: cause.to_string(),
    }
}

/// The highest sequence this door ever accepted (0 before the first).
pub fn highest_accepted(state: &Path) -> Result<u64, BundleError> {
    match std::fs::read(state) {
        Ok(bytes) => serde_json::from_slice::<DoorState>(&bytes)
            .map(|s| s.highest_sequence)
            .map_err(|err| door_state_error(state, err)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(door_state_error(state, err)),
    }
}

/// Loads an export into the gallery file at `path` if it passes [`open`], is valid at `now`, and is
/// not older than what the door holds or ever accepted (recorded in `state`); returns it, or `None`
/// when the file already holds this one. The state is written before the gallery, both atomically and
/// under the gallery's lock; a running daemon reloads the gallery.
pub fn import_into(
    bytes: &[u8],
    key: Option<&VerifyingKey>,
    wanted: &EmbedderId,
    origin: &Path,
    path: &Path,
    state: &Path,
    now: DateTime<Utc>,
) -> Result<Option<Opened>, BundleError> {
    let opened = open(bytes, key, wanted, origin)?;
    let _lock = crate::gallery::lock(path)?;
    let current = Gallery::load(path, wanted)?;
    if !should_load(
        current.sequence(),
        highest_accepted(state)?,
        opened.sequence,
    )? {
        return Ok(None);
    }
    opened.check_validity(now)?;
    let record = DoorState {
        highest_sequence: opened.sequence,
    };
    let record = serde_json::to_vec(&record).expect("the door state always serialises");
    crate::atomic_file::write(state, &record, 0o644).map_err(|err| door_state_error(state, err))?;
    opened.gallery.save(path)?;
    Ok(Some(opened))
}

pub fn public_key_text(key: &VerifyingKey) -> String {
    BASE64.encode(key.as_bytes())
}

/// A fresh building key from the operating system's random source.
pub fn generate_key() -> Result<SigningKey, BundleError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|err| BundleError::KeyFile {
        path: PathBuf::from("(random source)"),
        cause: err.to_string(),
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes the secret key (base64 seed) to a new file readable by its owner only.
pub fn write_secret_key(path: &Path, key: &SigningKey) -> Result<(), BundleError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key_error = |err: std::io::Error| BundleError::KeyFile {
        path: path.to_path_buf(),
        cause: err.to_string(),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(key_error)?;
    writeln!(file, "{}", BASE64.encode(key.to_bytes())).map_err(key_error)?;
    file.sync_all().map_err(key_error)
}

pub fn read_secret_key(path: &Path) -> Result<SigningKey, BundleError> {
    let key_error = |cause: String| BundleError::KeyFile {
        path: path.to_path_buf(),
        cause,
    };
    let text = std::fs::read_to_string(path).map_err(|err| key_error(err.to_string()))?;
    let seed: [u8; 32] = BASE64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| key_error("not a key written by `facegate gallery keygen`".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gallery::Sample;

    fn id(name: &str) -> EmbedderId {
        EmbedderId {
            name: name.into(),
            sha256: "ab".into(),
            dim: 2,
        }
    }

    fn gallery() -> Gallery {
        let mut g = Gallery::new(id("test"));
        g.add_sample(
            "ann",
            Sample {
                source: "ann.jpg".into(),
                enrolled_at: "2026-01-01T00:00:00Z".into(),
                vector: vec![0.6, 0.8],
                thumbnail: None,
            },
        )
        .unwrap();
        g
    }

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_bytes(&[byte; 32])
    }

    /// Regression: a message on the gallery topic was parsed whole into JSON values before its
    /// signature was checked, so anyone able to publish there could send 16 MB of `[0],` that cost a
    /// door 730 MB (`facegate gallery import` of such a file peaked at 733 MB, 46 MB now). Only its
    /// format is read first, every other field skipped unbuilt. The memory is measured, never asserted
    /// in a test: this one pins the refusal the skipped path gives.
    #[test]
    fn a_message_padded_with_a_wide_array_is_refused_without_being_built() {
        let mut padded = format!(r#"{{"format": "{SIGNED_FORMAT}", "pad": ["#).into_bytes();
        for _ in 0..100_000 {
            padded.extend_from_slice(b"[0],");
        }
        padded.extend_from_slice(b"[0]]}");
        let key = key(1).verifying_key();
        let opened = open(&padded, Some(&key), &id("test"), Path::new("mqtt"));
        assert!(
            matches!(&opened, Err(BundleError::NotABundle(why)) if why.contains("missing field `bundle`")),
            "{:?}",
            opened.err()
        );
    }

    #[test]
    fn opening_rules() {
        let building = key(1);
        let public = building.verifying_key();
        let other_public = key(2).verifying_key();
        let bundle = export(&gallery(), 42, "2026-12-01T00:00:00Z", Some(VALID_UNTIL));
        let signed = sign(&bundle, &building);
        let mut tampered: Value = serde_json::from_slice(&signed).unwrap();
        let forged = bundle_with_sequence(&bundle, 43);
        tampered["bundle"] = Value::from(BASE64.encode(&forged));
        let tampered = serde_json::to_vec(&tampered).unwrap();
        let other_embedder = sign(
            &export(&Gallery::new(id("sface")), 50, "t", Some(VALID_UNTIL)),
            &building,
        );
        type Case<'a> = (
            &'a str,
            &'a [u8],
            Option<&'a VerifyingKey>,
            Result<bool, &'a str>,
        );
        let cases: [Case; 8] = [
            ("signed, right key", &signed, Some(&public), Ok(true)),
            (
                "signed, other key",
                &signed,
                Some(&other_public),
                Err("BadSignature"),
            ),
            ("signed, no key to check it", &signed, None, Err("NoKey")),
            (
                "unsigned, door has a key",
                &bundle,
                Some(&public),
                Err("Unsigned"),
            ),
            ("unsigned, standalone door", &bundle, None, Ok(false)),
            (
                "bundle swapped after signing",
                &tampered,
                Some(&public),
                Err("BadSignature"),
            ),
            (
                "another embedder",
                &other_embedder,
                Some(&public),
                Err("Gallery"),
            ),
            ("not JSON", b"gallery", None, Err("NotABundle")),
        ];
        for (case, bytes, key, expected) in cases {
            let got = open(bytes, key, &id("test"), Path::new("x")).map(|o| {
                assert_eq!(o.sequence, 42, "{case}");
                assert_eq!(o.gallery.sequence(), 42, "{case}");
                assert_eq!(o.gallery.people()[0].name, "ann", "{case}");
                o.signed
            });
            let got = got.map_err(|e| format!("{e:?}"));
            match expected {
                Ok(signed) => assert_eq!(got.unwrap(), signed, "{case}"),
                Err(variant) => {
                    let err = got.unwrap_err();
                    assert!(err.starts_with(variant), "{case}: {err}")
                }
            }
        }
    }

    fn bundle_with_sequence(bundle: &[u8], sequence: u64) -> Vec<u8> {
        let mut value: Value = serde_json::from_slice(bundle).unwrap();
        value["sequence"] = Value::from(sequence);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_door_never_goes_back_to_an_older_gallery() {
        // (file holds, highest accepted, offered) → load?
        assert!(should_load(5, 5, 6).unwrap());
        assert!(!should_load(6, 6, 6).unwrap());
        assert!(
            should_load(0, 6, 6).unwrap(),
            "a deleted file gets the newest back"
        );
        assert!(should_load(4, 6, 6).unwrap());
        for (holds, highest) in [(6, 6), (0, 6), (6, 0)] {
            assert!(matches!(
                should_load(holds, highest, 5),
                Err(BundleError::Older {
                    have: 6,
                    offered: 5
                })
            ));
        }
        let mut g = gallery();
        assert_eq!(next_sequence(&g, 1_000), 1_000);
        g.set_sequence(5_000);
        assert_eq!(
            next_sequence(&g, 1_000),
            5_001,
            "a clock set back still moves forward"
        );
        g.set_sequence(u64::MAX);
        assert_eq!(next_sequence(&g, 1_000), u64::MAX, "no overflow");
    }

    #[test]
    fn a_gallery_is_as_old_as_its_export() {
        let now = DateTime::parse_from_rfc3339(NOW).unwrap().to_utc();
        let mut g = gallery();
        assert_eq!(age_s(&g, now), None, "a local gallery has no export age");
        g.set_sequence(u64::try_from(now.timestamp_millis()).unwrap() - 90_500);
        assert_eq!(age_s(&g, now), Some(90));
        g.set_sequence(u64::MAX);
        assert_eq!(
            age_s(&g, now),
            Some(0),
            "an export from the future is not negative"
        );
    }

    struct Door {
        _dir: tempfile::TempDir,
        gallery: PathBuf,
        state: PathBuf,
    }

    impl Door {
        fn new() -> Door {
            let dir = tempfile::tempdir().unwrap();
            Door {
                gallery: dir.path().join("gallery.json"),
                state: dir.path().join(DOOR_STATE),
                _dir: dir,
            }
        }

        fn import(&self, bytes: &[u8], now: &str) -> Result<Option<Opened>, BundleError> {
            let now = DateTime::parse_from_rfc3339(now).unwrap().to_utc();
            let public = key(7).verifying_key();
            let origin = Path::new("x");
            import_into(
                bytes,
                Some(&public),
                &id("test"),
                origin,
                &self.gallery,
                &self.state,
                now,
            )
        }
    }

    fn signed_export(sequence: u64, valid_until: Option<&str>) -> Vec<u8> {
        sign(&export(&gallery(), sequence, "t", valid_until), &key(7))
    }

    const VALID_UNTIL: &str = "2027-01-01T00:00:00Z";
    const NOW: &str = "2026-12-03T12:00:00Z";

    #[test]
    fn import_replaces_the_file_only_with_a_newer_gallery() {
        let door = Door::new();
        let import = |sequence| door.import(&signed_export(sequence, Some(VALID_UNTIL)), NOW);
        assert_eq!(import(10).unwrap().unwrap().sequence, 10);
        assert_eq!(
            Gallery::load(&door.gallery, &id("test"))
                .unwrap()
                .sequence(),
            10
        );
        assert!(
            import(10).unwrap().is_none(),
            "the same gallery again changes nothing"
        );
        assert!(matches!(
            import(9),
            Err(BundleError::Older {
                have: 10,
                offered: 9
            })
        ));
        assert_eq!(import(11).unwrap().unwrap().gallery.people().len(), 1);
    }

    #[test]
    fn expired_and_undated_signed_galleries_are_refused() {
        let door = Door::new();
        let expired = signed_export(10, Some("2026-12-01T00:00:00Z"));
        let err = door.import(&expired, NOW).unwrap_err();
        assert!(matches!(err, BundleError::Expired { .. }), "{err:?}");
        assert!(err.to_string().contains("2026-12-01T00:00:00Z"), "{err}");
        assert!(matches!(
            door.import(&signed_export(11, None), NOW),
            Err(BundleError::NoValidity)
        ));
        let garbled = signed_export(12, Some("next week"));
        assert!(matches!(
            door.import(&garbled, NOW),
            Err(BundleError::NotABundle(_))
        ));
        assert!(
            !door.gallery.exists() && !door.state.exists(),
            "nothing was written"
        );
        assert!(door
            .import(&signed_export(13, Some(VALID_UNTIL)), NOW)
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_deleted_gallery_file_does_not_let_an_old_bundle_back_in() {
        let door = Door::new();
        let old = signed_export(10, Some(VALID_UNTIL));
        let new = signed_export(20, Some(VALID_UNTIL));
        door.import(&old, NOW).unwrap().unwrap();
        door.import(&new, NOW).unwrap().unwrap();
        std::fs::remove_file(&door.gallery).unwrap();
        assert!(matches!(
            door.import(&old, NOW),
            Err(BundleError::Older {
                have: 20,
                offered: 10
            })
        ));
        assert_eq!(door.import(&new, NOW).unwrap().unwrap().sequence, 20);
        assert_eq!(highest_accepted(&door.state).unwrap(), 20);
        std::fs::write(&door.state, "{").unwrap();
        assert!(
            matches!(door.import(&new, NOW), Err(BundleError::DoorState { .. })),
            "a damaged state refuses rather than forgets"
        );
    }

    #[test]
    fn a_signed_bundle_carries_permissions_and_groups() {
        use crate::permission::{Permissions, WeeklyHours};
        let mut g = gallery();
        let hours = WeeklyHours::parse("mon-fri 18:00-22:00").unwrap();
        g.set_group("cleaners", hours.clone()).unwrap();
        let permissions = Permissions {
            valid_until: Some(jiff::civil::date(2026, 12, 31)),
            suspended: true,
            groups: vec!["cleaners".into()],
            ..Permissions::default()
        };
        g.set_permissions("ann", permissions.clone()).unwrap();
        let building = key(3);
        let bytes = sign(&export(&g, 5, "t", Some(VALID_UNTIL)), &building);
        let opened = open(
            &bytes,
            Some(&building.verifying_key()),
            &id("test"),
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            opened.gallery.person("ann").unwrap().permissions,
            permissions
        );
        assert_eq!(opened.gallery.groups()["cleaners"].schedule, hours);
    }

    #[test]
    fn keys_round_trip_through_files_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("building.key");
        let key = generate_key().unwrap();
        write_secret_key(&path, &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            write_secret_key(&path, &key).is_err(),
            "never overwrites a key"
        );
        assert_eq!(read_secret_key(&path).unwrap().to_bytes(), key.to_bytes());
        let public = public_key_text(&key.verifying_key());
        assert_eq!(
            crate::config::parse_building_key(&public).unwrap(),
            key.verifying_key()
        );
        assert!(crate::config::parse_building_key("AAAA").is_err());
    }
}
