//! The model manifest (`models/manifest.toml`): which file each model is, its checksum and its input contract.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

const BUILTIN_MANIFEST: &str = include_str!("../models/manifest.toml");
use sha2::{Digest, Sha256};

/// Why a model could not be found or trusted.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model manifest {path} is not valid: {message}")]
    ManifestParse { path: PathBuf, message: String },
    #[error("the manifest has no model `{name}`; known: {known}")]
    Unknown { name: String, known: String },
    #[error("model `{name}` is a {actual}, not a {wanted}")]
    WrongRole {
        name: String,
        actual: String,
        wanted: &'static str,
    },
    #[error("model file {path} is missing or unreadable ({cause}). Run scripts/fetch-assets (with FACEGATE_MIRROR=DIR on an offline machine)")]
    Missing {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("model file {files} is missing: searched {searched}. Run scripts/fetch-assets in the checkout (with FACEGATE_MIRROR=DIR on an offline machine), or point models_dir, --models-dir or FACEGATE_MODELS_DIR at the models")]
    NotFound { files: String, searched: String },
    #[error("model file {path} has sha256 {actual}, the manifest pins {expected}: the file is corrupt or not the pinned model. Delete it and run scripts/fetch-assets again")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub models: BTreeMap<String, ModelSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub role: String,
    pub file: String,
    pub sha256: String,
    #[serde(default)]
    pub license: String,
    /// Set for models made locally from another (`scripts/fetch-assets` runs the derivation).
    pub derived_from: Option<String>,
    pub detector: Option<DetectorContract>,
    pub embedder: Option<EmbedderContract>,
    pub liveness: Option<LivenessContract>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DetectorContract {
    pub score_threshold: f32,
    pub nms_threshold: f32,
    pub top_k: i32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

/// How an embedder wants its 112x112 aligned face, and what it returns.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbedderContract {
    pub input_size: i32,
    pub color: ChannelOrder,
    /// Per channel, in the fed channel order, on 0..255 values.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub output_dim: usize,
    /// Default cosine threshold for a grant.
    pub threshold: f32,
    /// The sha256 galleries know this embedder's vectors by, when it is not the file's own pin: that of
    /// the first pinned file that made them. A graph rewrite that gives the same vectors keeps it, so
    /// galleries and building bundles enrolled before it still match.
    #[serde(default)]
    pub gallery_sha256: Option<String>,
}

/// How an anti-spoofing classifier wants its crop of the frame, and which output means "real".
#[derive(Debug, Clone, Deserialize)]
pub struct LivenessContract {
    /// The detector's box is scaled about its centre by this before cropping.
    pub scale: f64,
    pub input_size: i32,
    pub color: ChannelOrder,
    /// Index of the "real face" class among the softmaxed outputs.
    pub real_index: usize,
}

/// A model chosen from the manifest, with its file resolved and its contract checked to exist.
#[derive(Debug, Clone)]
pub struct ResolvedModel<C> {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    /// A derived model may carry a locally recorded checksum in place of the pin (see `verify`).
    pub derived: bool,
    pub contract: C,
}

impl Manifest {
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, ModelError> {
        toml::from_str(text).map_err(|err| ModelError::ManifestParse {
            path: origin.to_path_buf(),
            message: err.to_string(),
        })
    }

    /// The manifest this binary was built with: the pins travel with the code that relies on them.
    pub(crate) fn builtin() -> Manifest {
        Manifest::parse(BUILTIN_MANIFEST, Path::new("models/manifest.toml"))
            .expect("models/manifest.toml is checked by the unit tests")
    }

    fn spec(&self, name: &str) -> Result<&ModelSpec, ModelError> {
        self.models.get(name).ok_or_else(|| ModelError::Unknown {
            name: name.to_string(),
            known: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    pub fn detector(
        &self,
        name: &str,
        models_dir: &Path,
    ) -> Result<ResolvedModel<DetectorContract>, ModelError> {
        let spec = self.spec(name)?;
        let contract = spec
            .detector
            .clone()
            .ok_or_else(|| wrong_role(name, spec, "detector"))?;
        Ok(resolve(name, spec, models_dir, contract))
    }

    pub fn embedder(
        &self,
        name: &str,
        models_dir: &Path,
    ) -> Result<ResolvedModel<EmbedderContract>, ModelError> {
        let spec = self.spec(name)?;
        let contract = spec
            .embedder
            .clone()
            .ok_or_else(|| wrong_role(name, spec, "embedder"))?;
        Ok(resolve(name, spec, models_dir, contract))
    }

    pub fn liveness(
        &self,
        name: &str,
        models_dir: &Path,
    ) -> Result<ResolvedModel<LivenessContract>, ModelError> {
        let spec = self.spec(name)?;
        let contract = spec
            .liveness
            .clone()
            .ok_or_else(|| wrong_role(name, spec, "liveness model"))?;
        Ok(resolve(name, spec, models_dir, contract))
    }
}

/// Where `scripts/fetch-assets` puts the models in a checkout.
const CHECKOUT_MODELS: &str = "assets/models";

/// The directories searched for model files, in order. A `configured` directory other than the
/// installed `default` is the user's explicit choice and the only one. Otherwise a checkout's
/// `assets/models` comes next: under the current directory, then above the executable
/// (`<checkout>/target/debug/facegate` finds `<checkout>/assets/models`).
pub(crate) fn search_dirs(
    configured: &Path,
    default: &Path,
    current_dir: Option<&Path>,
    executable: Option<&Path>,
) -> Vec<PathBuf> {
    let mut dirs = vec![configured.to_path_buf()];
    if configured != default {
        return dirs;
    }
    let checkouts = current_dir.into_iter().chain(
        executable
            .into_iter()
            .flat_map(|exe| exe.ancestors().skip(1).take(4)),
    );
    for checkout in checkouts {
        let dir = checkout.join(CHECKOUT_MODELS);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// The first of `dirs` that holds every one of `files`; when none does, the error names the files
/// missing from the first directory and every directory searched.
pub(crate) fn locate(files: &[&str], dirs: &[PathBuf]) -> Result<PathBuf, ModelError> {
    if let Some(dir) = dirs
        .iter()
        .find(|dir| files.iter().all(|file| dir.join(file).is_file()))
    {
        return Ok(dir.clone());
    }
    let first = dirs.first().map(PathBuf::as_path).unwrap_or(Path::new("."));
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|file| !first.join(file).is_file())
        .collect();
    let shown = if missing.is_empty() {
        files
    } else {
        &missing[..]
    };
    Err(ModelError::NotFound {
        files: shown.join(", "),
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn wrong_role(name: &str, spec: &ModelSpec, wanted: &'static str) -> ModelError {
    ModelError::WrongRole {
        name: name.to_string(),
        actual: spec.role.clone(),
        wanted,
    }
}

fn resolve<C>(name: &str, spec: &ModelSpec, models_dir: &Path, contract: C) -> ResolvedModel<C> {
    ResolvedModel {
        name: name.to_string(),
        path: models_dir.join(&spec.file),
        sha256: spec.sha256.to_ascii_lowercase(),
        derived: spec.derived_from.is_some(),
        contract,
    }
}

impl<C> ResolvedModel<C> {
    /// Checks the file against the pinned sha256, so a corrupt or swapped model stops start-up.
    pub(crate) fn verify(&self) -> Result<(), ModelError> {
        let actual = sha256_file(&self.path).map_err(|source| ModelError::Missing {
            path: self.path.clone(),
            cause: source,
        })?;
        if actual != self.sha256 && !(self.derived && self.locally_recorded(&actual)) {
            return Err(ModelError::Checksum {
                path: self.path.clone(),
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl<C> ResolvedModel<C> {
    /// A derivation made with another `onnx` version can differ in bytes from the pin while its
    /// weights are unchanged; `scripts/fetch-assets` checks that and records the sha256 it got in
    /// `<file>.sha256`, which is accepted here with a warning.
    fn locally_recorded(&self, actual: &str) -> bool {
        let record = self.path.with_file_name(format!(
            "{}.sha256",
            self.path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        let recorded = std::fs::read_to_string(record).unwrap_or_default();
        let accepted = recorded.split_whitespace().next() == Some(actual);
        if accepted {
            log::warn!(
                "model `{}` differs from its pin but matches the derivation recorded by scripts/fetch-assets ({actual})",
                self.name
            );
        }
        accepted
    }
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_manifest_describes_the_default_models_and_sface() {
        let manifest = Manifest::builtin();
        let dir = Path::new("/m");
        manifest.detector("yunet_2022mar", dir).unwrap();
        let mobile = manifest.embedder("mobilefacenet", dir).unwrap();
        assert_eq!(mobile.contract.output_dim, 128);
        assert_eq!(mobile.contract.input_size, 112);
        let sface = manifest.embedder("sface", dir).unwrap();
        assert_eq!(
            sface.sha256,
            "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79"
        );
        let v2 = manifest.liveness("minifasnet_v2", dir).unwrap();
        let v1se = manifest.liveness("minifasnet_v1se", dir).unwrap();
        assert_eq!((v2.contract.scale, v1se.contract.scale), (2.7, 4.0));
        assert_eq!(v2.contract.input_size, 80);
        assert_eq!(v1se.contract.color, ChannelOrder::Bgr);
        assert!(manifest.liveness("mobilefacenet", dir).is_err());
    }

    #[test]
    fn asking_a_detector_for_an_embedder_names_the_roles() {
        let manifest = Manifest::builtin();
        let err = manifest
            .embedder("yunet_2022mar", Path::new("/m"))
            .unwrap_err();
        assert!(err.to_string().contains("not a embedder") || err.to_string().contains("embedder"));
        let err = manifest.embedder("nope", Path::new("/m")).unwrap_err();
        assert!(err.to_string().contains("mobilefacenet"), "{err}");
    }

    #[test]
    fn the_installed_default_also_searches_the_checkout() {
        let default = Path::new("/usr/share/facegate/models");
        let exe = Path::new("/home/me/facegate/target/debug/facegate");
        let cwd = Path::new("/home/me/facegate");
        let dirs = search_dirs(default, default, Some(cwd), Some(exe));
        let shown: Vec<_> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(
            shown,
            [
                "/usr/share/facegate/models",
                "/home/me/facegate/assets/models",
                "/home/me/facegate/target/debug/assets/models",
                "/home/me/facegate/target/assets/models",
                "/home/me/assets/models",
            ]
        );
        let chosen = Path::new("/srv/models");
        assert_eq!(search_dirs(chosen, default, Some(cwd), Some(exe)), [chosen]);
    }

    #[test]
    fn the_first_directory_with_every_file_wins_and_a_miss_names_every_place() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = ["installed", "half", "checkout"]
            .iter()
            .map(|name| root.path().join(name))
            .collect();
        std::fs::create_dir(&dirs[1]).unwrap();
        std::fs::write(dirs[1].join("detector.onnx"), b"").unwrap();
        let err = locate(&["detector.onnx", "embedder.onnx"], &dirs)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("detector.onnx, embedder.onnx is missing"),
            "{err}"
        );
        for dir in &dirs {
            assert!(err.contains(dir.to_str().unwrap()), "{err}");
        }
        assert!(err.contains("FACEGATE_MODELS_DIR") && err.contains("fetch-assets"));
        std::fs::create_dir(&dirs[2]).unwrap();
        for file in ["detector.onnx", "embedder.onnx"] {
            std::fs::write(dirs[2].join(file), b"").unwrap();
        }
        assert_eq!(
            locate(&["detector.onnx", "embedder.onnx"], &dirs).unwrap(),
            dirs[2]
        );
    }

    #[test]
    fn a_corrupt_model_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.onnx"), b"not a model").unwrap();
        let model = ResolvedModel {
            name: "m".into(),
            path: dir.path().join("m.onnx"),
            sha256: "00".repeat(32),
            derived: false,
            contract: (),
        };
        assert!(matches!(model.verify(), Err(ModelError::Checksum { .. })));
        let missing = ResolvedModel {
            path: dir.path().join("gone.onnx"),
            ..model
        };
        assert!(matches!(missing.verify(), Err(ModelError::Missing { .. })));
    }
}
