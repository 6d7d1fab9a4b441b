//! One gallery for a building: a door's gallery exported as a versioned bundle (sequence, embedder,
//! people), optionally signed with the building's Ed25519 key, and the rules a door applies before
//! loading one: signed when it has a building key, same embedder, never older than what it has.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gallery::{EmbedderId, Gallery, GalleryError};

const BUNDLE_FORMAT: &str = "facegate-gallery-bundle";
const BUNDLE_VERSION: u32 = 1;
const SIGNED_FORMAT: &str = "facegate-signed-gallery";

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
    #[error("the gallery has sequence {offered}, older than the one this door has ({have}); export a fresh one")]
    Older { have: u64, offered: u64 },
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
    /// The gallery file's JSON (which names its embedder).
    gallery: Value,
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

/// The bundle's bytes (JSON).
pub fn export(gallery: &Gallery, sequence: u64, exported_at: &str) -> Vec<u8> {
    let bundle = Bundle {
        format: BUNDLE_FORMAT.into(),
        version: BUNDLE_VERSION,
        sequence,
        exported_at: exported_at.into(),
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
    let value: Value =
        serde_json::from_slice(bytes).map_err(|err| BundleError::NotABundle(err.to_string()))?;
    let (bundle_bytes, signed) = if value["format"] == SIGNED_FORMAT {
        let signed: Signed = serde_json::from_value(value)
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
    let mut gallery = Gallery::parse(&bundle.gallery.to_string(), origin, wanted)?;
    gallery.set_sequence(bundle.sequence);
    Ok(Opened {
        gallery,
        sequence: bundle.sequence,
        signed,
    })
}

/// Whether a door holding a gallery of sequence `have` should load one of sequence `offered`:
/// `Ok(true)` when newer, `Ok(false)` when it is the same one (a retained message seen again).
pub(crate) fn is_newer(have: u64, offered: u64) -> Result<bool, BundleError> {
    match offered.cmp(&have) {
        std::cmp::Ordering::Greater => Ok(true),
        std::cmp::Ordering::Equal => Ok(false),
        std::cmp::Ordering::Less => Err(BundleError::Older { have, offered }),
    }
}

/// Loads an export into the gallery file at `path` if it passes [`open`] and is newer than the file's
/// own sequence; returns the new sequence, or `None` when the file already holds this one. The file is
/// replaced atomically under the gallery's lock; a running daemon reloads it.
pub fn import_into(
    bytes: &[u8],
    key: Option<&VerifyingKey>,
    wanted: &EmbedderId,
    origin: &Path,
    path: &Path,
) -> Result<Option<Opened>, BundleError> {
    let opened = open(bytes, key, wanted, origin)?;
    let _lock = crate::gallery::lock(path)?;
    let current = Gallery::load(path, wanted)?;
    if !is_newer(current.sequence(), opened.sequence)? {
        return Ok(None);
    }
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

    #[test]
    fn opening_rules() {
        let building = key(1);
        let public = building.verifying_key();
        let other_public = key(2).verifying_key();
        let bundle = export(&gallery(), 42, "2026-12-01T00:00:00Z");
        let signed = sign(&bundle, &building);
        let mut tampered: Value = serde_json::from_slice(&signed).unwrap();
        let forged = bundle_with_sequence(&bundle, 43);
        tampered["bundle"] = Value::from(BASE64.encode(&forged));
        let tampered = serde_json::to_vec(&tampered).unwrap();
        let other_embedder = sign(&export(&Gallery::new(id("sface")), 50, "t"), &building);
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
        assert!(is_newer(5, 6).unwrap());
        assert!(!is_newer(6, 6).unwrap());
        assert!(matches!(
            is_newer(6, 5),
            Err(BundleError::Older {
                have: 6,
                offered: 5
            })
        ));
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
    fn import_replaces_the_file_only_with_a_newer_gallery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.json");
        let building = key(7);
        let public = building.verifying_key();
        let import = |sequence| {
            let bytes = sign(&export(&gallery(), sequence, "t"), &building);
            import_into(&bytes, Some(&public), &id("test"), Path::new("x"), &path)
        };
        assert_eq!(import(10).unwrap().unwrap().sequence, 10);
        assert_eq!(Gallery::load(&path, &id("test")).unwrap().sequence(), 10);
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
        let bytes = sign(&export(&g, 5, "t"), &building);
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
