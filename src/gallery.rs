//! The enrolled people: their embeddings, matched by cosine, and who may enter when (permissions and
//! groups), stored as versioned JSON written atomically under one lock.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::atomic_file::{self, FileStamp};
use crate::models::{EmbedderContract, ResolvedModel};
use crate::permission::{self, Access, Group, Groups, Permissions, WeeklyHours};
use crate::ratelimit::RateLimitedLog;
use crate::sync::lock_recovering;
use crate::vision::embed::{dot, Embedding};

const FORMAT: &str = "facegate-gallery";
/// Version 2 added permissions and groups; version 1 files (no permissions: always allowed) still load.
const VERSION: u32 = 2;
const OLDEST_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("the thread that follows the gallery file did not start ({0}): the system is out of threads or memory")]
    Watch(std::io::Error),
    #[error("cannot read the gallery {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the gallery {path} is damaged ({message}); restore it from a backup or re-enrol")]
    Parse { path: PathBuf, message: String },
    #[error("the gallery {path} has format version {found}; this facegate reads version {VERSION}. Upgrade facegate or re-enrol")]
    Version { path: PathBuf, found: u32 },
    #[error("the gallery was made with embedder `{found}` ({found_sha}), but `{wanted}` ({wanted_sha}) is configured: its vectors cannot be compared. Switch recognition.embedder back, or move the gallery away and re-enrol everyone")]
    EmbedderMismatch {
        found: String,
        found_sha: String,
        wanted: String,
        wanted_sha: String,
    },
    #[error(
        "cannot write the gallery {path}: {cause}. Check that the state directory is writable"
    )]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("`{0}` is not a usable name: use 1 to 64 characters, no control characters")]
    BadName(String),
    #[error("nobody called `{0}` is enrolled")]
    NotEnrolled(String),
    #[error("`{name}` has no sample number {index}; reload the page and try again")]
    NoSuchSample { name: String, index: usize },
    #[error("the embedding has {actual} values, the gallery holds {expected}-value vectors")]
    Dimension { expected: usize, actual: usize },
    #[error("this door follows the building gallery on MQTT (`{topic}`): make this change in the building's gallery (on the machine that runs `facegate gallery export --sign`) and publish it there; a local change would be overwritten")]
    Managed { topic: String },
    #[error(
        "there is no group `{0}`; create it first with `facegate groups set {0} --schedule SPEC`"
    )]
    NoSuchGroup(String),
    #[error("`{0}` is not a usable group name: use 1 to 64 letters, digits, `-`, `_` or `.`")]
    BadGroupName(String),
    #[error("valid_from {from} is after valid_until {until}: access would never start")]
    EmptyValidity {
        from: jiff::civil::Date,
        until: jiff::civil::Date,
    },
}

/// Which model made the vectors; a gallery only matches vectors from the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderId {
    pub name: String,
    /// The embedder's `gallery_sha256` in the manifest, else its file's pinned sha256.
    pub sha256: String,
    pub dim: usize,
}

impl EmbedderId {
    pub fn of(embedder: &ResolvedModel<EmbedderContract>) -> EmbedderId {
        let contract = &embedder.contract;
        EmbedderId {
            name: embedder.name.clone(),
            sha256: contract
                .gallery_sha256
                .as_deref()
                .unwrap_or(&embedder.sha256)
                .to_ascii_lowercase(),
            dim: contract.output_dim,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// The image file it was enrolled from (file name only).
    pub source: String,
    pub enrolled_at: String,
    pub vector: Vec<f32>,
    /// File name of the face thumbnail under `<state_dir>/thumbnails/`, when one was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Person {
    pub name: String,
    pub samples: Vec<Sample>,
    /// Who may enter when; nothing set (every version 1 file): always.
    #[serde(default, skip_serializing_if = "Permissions::is_unrestricted")]
    pub permissions: Permissions,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredGallery {
    format: String,
    version: u32,
    /// The building gallery's sequence this file was imported from (0: never imported).
    #[serde(default)]
    sequence: u64,
    embedder: EmbedderId,
    people: Vec<Person>,
    #[serde(default, skip_serializing_if = "Groups::is_empty")]
    groups: Groups,
}

/// The best-scoring enrolled person for one face.
#[derive(Debug, Clone, PartialEq)]
pub struct BestMatch {
    pub name: String,
    pub score: f32,
}

#[derive(Debug, Clone)]
pub struct Gallery {
    embedder: EmbedderId,
    sequence: u64,
    people: Vec<Person>,
    groups: Groups,
    /// Every sample's vector, back to back, for a tight matching loop.
    matrix: Vec<f32>,
    /// For each row of `matrix`, the index of its person.
    owners: Vec<usize>,
}

impl Gallery {
    pub fn new(embedder: EmbedderId) -> Gallery {
        Gallery {
            embedder,
            sequence: 0,
            people: Vec::new(),
            groups: Groups::new(),
            matrix: Vec::new(),
            owners: Vec::new(),
        }
    }

    /// Parses gallery JSON; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path, wanted: &EmbedderId) -> Result<Gallery, GalleryError> {
        let stored: StoredGallery =
            serde_json::from_str(text).map_err(|err| GalleryError::Parse {
                path: origin.to_path_buf(),
                message: err.to_string(),
            })?;
        if stored.format != FORMAT {
            return Err(GalleryError::Parse {
                path: origin.to_path_buf(),
                message: format!("format is `{}`, not `{FORMAT}`", stored.format),
            });
        }
        if !(OLDEST_VERSION..=VERSION).contains(&stored.version) {
            return Err(GalleryError::Version {
                path: origin.to_path_buf(),
                found: stored.version,
            });
        }
        if stored.embedder != *wanted {
            return Err(GalleryError::EmbedderMismatch {
                found: stored.embedder.name,
                found_sha: stored.embedder.sha256,
                wanted: wanted.name.clone(),
                wanted_sha: wanted.sha256.clone(),
            });
        }
        let bad_vector = stored
            .people
            .iter()
            .flat_map(|p| &p.samples)
            .any(|s| s.vector.len() != wanted.dim || s.vector.iter().any(|v| !v.is_finite()));
        if bad_vector {
            return Err(GalleryError::Parse {
                path: origin.to_path_buf(),
                message: format!("a vector is not {} finite values", wanted.dim),
            });
        }
        let mut names = std::collections::BTreeSet::new();
        if let Some(twice) = stored
            .people
            .iter()
            .find(|p| !names.insert(p.name.as_str()))
        {
            // Permissions are looked up by name: a second entry would be judged by the first's.
            return Err(GalleryError::Parse {
                path: origin.to_path_buf(),
                message: format!(
                    "`{}` is enrolled twice; each person has one entry (merge their samples)",
                    twice.name
                ),
            });
        }
        let mut gallery = Gallery::new(stored.embedder);
        gallery.sequence = stored.sequence;
        gallery.people = stored.people;
        gallery.groups = stored.groups;
        gallery.reindex();
        Ok(gallery)
    }

    /// Loads the gallery file; a missing file is an empty gallery.
    pub fn load(path: &Path, wanted: &EmbedderId) -> Result<Gallery, GalleryError> {
        match fs::read_to_string(path) {
            Ok(text) => Gallery::parse(&text, path, wanted),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Ok(Gallery::new(wanted.clone()))
            }
            Err(source) => Err(GalleryError::Read {
                path: path.to_path_buf(),
                cause: source,
            }),
        }
    }

    pub fn to_json(&self) -> String {
        let stored = StoredGallery {
            format: FORMAT.into(),
            version: VERSION,
            sequence: self.sequence,
            embedder: self.embedder.clone(),
            people: self.people.clone(),
            groups: self.groups.clone(),
        };
        serde_json::to_string_pretty(&stored).expect("a gallery always serialises")
    }

    /// Writes the gallery so that a crash at any point leaves either the old file or the new one:
    /// temp file, fsync, rename over the old, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<(), GalleryError> {
        let write_error = |source| GalleryError::Write {
            path: path.to_path_buf(),
            cause: source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(write_error)?;
        atomic_file::write(path, self.to_json().as_bytes(), 0o644).map_err(write_error)
    }

    pub fn embedder(&self) -> &EmbedderId {
        &self.embedder
    }

    /// The sequence of the building gallery this one came from; 0 if it never came from one.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub(crate) fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    pub fn people(&self) -> &[Person] {
        &self.people
    }

    pub fn person(&self, name: &str) -> Option<&Person> {
        self.people.iter().find(|p| p.name == name)
    }

    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// Whether `name` may enter at the local instant `now`; `None` for someone not enrolled.
    pub fn access_at(&self, name: &str, now: &jiff::Zoned) -> Option<Access> {
        self.person(name)
            .map(|person| permission::access_at(&person.permissions, &self.groups, now))
    }

    /// Replaces the permissions of an enrolled person; every group they name must exist.
    pub fn set_permissions(
        &mut self,
        name: &str,
        permissions: Permissions,
    ) -> Result<(), GalleryError> {
        if let (Some(from), Some(until)) = (permissions.valid_from, permissions.valid_until) {
            if from > until {
                return Err(GalleryError::EmptyValidity { from, until });
            }
        }
        if let Some(missing) = permissions
            .groups
            .iter()
            .find(|group| !self.groups.contains_key(*group))
        {
            return Err(GalleryError::NoSuchGroup(missing.clone()));
        }
        let person = self
            .people
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| GalleryError::NotEnrolled(name.to_string()))?;
        person.permissions = permissions;
        Ok(())
    }

    /// Creates a group or replaces its hours.
    pub fn set_group(&mut self, name: &str, schedule: WeeklyHours) -> Result<(), GalleryError> {
        let name = name.trim();
        let usable = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !usable {
            return Err(GalleryError::BadGroupName(name.to_string()));
        }
        self.groups.insert(name.to_string(), Group { schedule });
        Ok(())
    }

    /// Removes a group; people in it keep their own hours and get none from it.
    pub fn remove_group(&mut self, name: &str) -> Result<Group, GalleryError> {
        self.groups
            .remove(name)
            .ok_or_else(|| GalleryError::NoSuchGroup(name.to_string()))
    }

    pub fn sample_count(&self) -> usize {
        self.owners.len()
    }

    pub fn add_sample(&mut self, name: &str, sample: Sample) -> Result<(), GalleryError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(GalleryError::BadName(name.to_string()));
        }
        if sample.vector.len() != self.embedder.dim {
            return Err(GalleryError::Dimension {
                expected: self.embedder.dim,
                actual: sample.vector.len(),
            });
        }
        match self.people.iter_mut().find(|p| p.name == name) {
            Some(person) => person.samples.push(sample),
            None => self.people.push(Person {
                name: name.to_string(),
                samples: vec![sample],
                permissions: Permissions::default(),
            }),
        }
        self.reindex();
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Result<Person, GalleryError> {
        let index = self
            .people
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| GalleryError::NotEnrolled(name.to_string()))?;
        let person = self.people.remove(index);
        self.reindex();
        Ok(person)
    }

    /// Removes one sample of `name` (by its position); a person left without samples is removed.
    pub fn remove_sample(&mut self, name: &str, index: usize) -> Result<Sample, GalleryError> {
        let position = self
            .people
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| GalleryError::NotEnrolled(name.to_string()))?;
        let person = &mut self.people[position];
        if index >= person.samples.len() {
            return Err(GalleryError::NoSuchSample {
                name: name.to_string(),
                index,
            });
        }
        let sample = person.samples.remove(index);
        if person.samples.is_empty() {
            self.people.remove(position);
        }
        self.reindex();
        Ok(sample)
    }

    fn reindex(&mut self) {
        self.matrix.clear();
        self.owners.clear();
        for (index, person) in self.people.iter().enumerate() {
            for sample in &person.samples {
                self.matrix.extend_from_slice(&sample.vector);
                self.owners.push(index);
            }
        }
    }

    /// The enrolled person most similar to `face` (best sample per person), if anyone is enrolled.
    /// Whether that is similar enough is the decision's business, not the gallery's.
    pub fn best_match(&self, face: &Embedding) -> Option<BestMatch> {
        self.best_match_excluding(face, None)
    }

    /// As `best_match`, ignoring one person (enrolment's look-alike check).
    pub(crate) fn best_match_excluding(
        &self,
        face: &Embedding,
        excluded: Option<&str>,
    ) -> Option<BestMatch> {
        let dim = self.embedder.dim;
        let query = face.as_slice();
        if query.len() != dim {
            return None;
        }
        let mut best: Option<(usize, f32)> = None;
        for (row, owner) in self.matrix.chunks_exact(dim).zip(&self.owners) {
            if excluded.is_some_and(|name| self.people[*owner].name == name) {
                continue;
            }
            let score = dot(row, query);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((*owner, score));
            }
        }
        best.map(|(owner, score)| BestMatch {
            name: self.people[owner].name.clone(),
            score,
        })
    }
}

/// The gallery file as the CLI, the admin page and the daemon change it: every change is made under
/// one lock (`gallery.json.lock`), on the file as it is then, so that none loses another; a door that
/// follows a building gallery over MQTT refuses local changes.
pub struct GalleryFile {
    path: PathBuf,
    embedder: EmbedderId,
    /// The MQTT topic of the building gallery this door follows, if it does.
    building_topic: Option<String>,
}

impl GalleryFile {
    pub fn of(config: &crate::config::Config, embedder: &EmbedderId) -> GalleryFile {
        GalleryFile {
            path: config.gallery_path(),
            embedder: embedder.clone(),
            building_topic: config.building_gallery_topic(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn embedder(&self) -> &EmbedderId {
        &self.embedder
    }

    pub fn load(&self) -> Result<Gallery, GalleryError> {
        Gallery::load(&self.path, &self.embedder)
    }

    /// The lock for a local change (load, change, save while holding it), held until the returned
    /// file is closed; refused on a door that follows a building gallery.
    pub fn lock_for_edit(&self) -> Result<fs::File, GalleryError> {
        if let Some(topic) = &self.building_topic {
            return Err(GalleryError::Managed {
                topic: topic.clone(),
            });
        }
        lock(&self.path)
    }

    /// Loads, changes and saves the gallery under the lock; nothing is saved when `change` fails.
    pub fn edit<T, E: From<GalleryError>>(
        &self,
        change: impl FnOnce(&mut Gallery) -> Result<T, E>,
    ) -> Result<T, E> {
        let _lock = self.lock_for_edit()?;
        let mut gallery = self.load()?;
        let done = change(&mut gallery)?;
        gallery.save(&self.path)?;
        Ok(done)
    }
}

/// The gallery file's lock (`gallery.json.lock`), held until the returned file is closed.
pub(crate) fn lock(path: &Path) -> Result<fs::File, GalleryError> {
    atomic_file::lock_beside(path, 0o644).map_err(|cause| GalleryError::Write {
        path: atomic_file::lock_path(path),
        cause,
    })
}

/// The gallery as the daemon sees it: the file as last read, reloaded by a thread of its own within
/// `recheck` of a change (`facegate enroll`, the admin page, an MQTT import). Requests, `/healthz` on
/// the dispatching thread among them, only take the gallery in use: none waits on the file, however
/// large it is or however slow its disk. A reload that fails keeps the previous gallery.
pub(crate) struct LiveGallery {
    in_use: Arc<Mutex<Arc<Gallery>>>,
}

impl LiveGallery {
    /// Loads the gallery and starts the thread that follows its file.
    pub fn open(
        path: &Path,
        embedder: &EmbedderId,
        recheck: Duration,
    ) -> Result<LiveGallery, GalleryError> {
        let stamp = atomic_file::stamp(path);
        let gallery = Gallery::load(path, embedder)?;
        let in_use = Arc::new(Mutex::new(Arc::new(gallery)));
        let watcher = Watcher {
            path: path.to_path_buf(),
            embedder: embedder.clone(),
            stamp,
            in_use: Arc::downgrade(&in_use),
            errors: RateLimitedLog::new(RELOAD_ERROR_LOG_INTERVAL),
        };
        std::thread::Builder::new()
            .name("gallery".into())
            .spawn(move || watcher.run(recheck))
            .map_err(GalleryError::Watch)?;
        Ok(LiveGallery { in_use })
    }

    /// The gallery to match one request against.
    pub fn current(&self) -> Arc<Gallery> {
        Arc::clone(&lock_recovering(&self.in_use))
    }
}

/// How often a gallery file that does not load is logged.
const RELOAD_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The thread that reads the gallery file again when its stamp (inode, time, length) changes, until
/// the daemon lets go of the gallery.
struct Watcher {
    path: PathBuf,
    embedder: EmbedderId,
    /// The version of the file in use.
    stamp: Option<FileStamp>,
    in_use: Weak<Mutex<Arc<Gallery>>>,
    errors: RateLimitedLog,
}

impl Watcher {
    fn run(mut self, recheck: Duration) {
        while self.in_use.strong_count() > 0 {
            std::thread::sleep(recheck);
            let stamp = atomic_file::stamp(&self.path);
            if stamp == self.stamp {
                continue;
            }
            match Gallery::load(&self.path, &self.embedder) {
                Ok(gallery) => {
                    log::info!(
                        "gallery reloaded: {} people, {} samples",
                        gallery.people().len(),
                        gallery.sample_count()
                    );
                    self.stamp = stamp;
                    let Some(in_use) = self.in_use.upgrade() else {
                        return;
                    };
                    *lock_recovering(&in_use) = Arc::new(gallery);
                }
                Err(err) => {
                    self.errors.error(format!(
                        "gallery not reloaded, keeping the previous one: {err}"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sha256 of the MobileFaceNet rewrite every gallery before the widening was enrolled with.
    const MOBILEFACENET_BEFORE_WIDENING: &str =
        "8fc0277af4af94259f8de44b3e14e4c3cace971192fa622bec5261541af29cb2";

    #[test]
    fn galleries_enrolled_before_the_depthwise_widening_still_match() {
        let embedder = crate::models::Manifest::builtin()
            .embedder("mobilefacenet", Path::new("assets/models"))
            .unwrap();
        assert_ne!(embedder.sha256, MOBILEFACENET_BEFORE_WIDENING);
        let enrolled_before = Gallery::new(EmbedderId {
            name: "mobilefacenet".into(),
            sha256: MOBILEFACENET_BEFORE_WIDENING.into(),
            dim: 128,
        });
        let shipped = EmbedderId::of(&embedder);
        Gallery::parse(
            &enrolled_before.to_json(),
            Path::new("gallery.json"),
            &shipped,
        )
        .unwrap();
    }

    fn id() -> EmbedderId {
        EmbedderId {
            name: "test".into(),
            sha256: "ab".into(),
            dim: 3,
        }
    }

    fn sample(v: [f32; 3]) -> Sample {
        Sample {
            source: "x.jpg".into(),
            enrolled_at: "2026-01-01T00:00:00Z".into(),
            vector: Embedding::from_raw(v.to_vec()).unwrap().as_slice().to_vec(),
            thumbnail: None,
        }
    }

    fn embedding(v: [f32; 3]) -> Embedding {
        Embedding::from_raw(v.to_vec()).unwrap()
    }

    #[test]
    fn best_match_takes_each_persons_best_sample() {
        let mut g = Gallery::new(id());
        g.add_sample("ann", sample([1.0, 0.0, 0.0])).unwrap();
        g.add_sample("ann", sample([0.0, 0.0, 1.0])).unwrap();
        g.add_sample("bob", sample([0.0, 1.0, 0.0])).unwrap();
        assert_eq!(
            g.best_match(&embedding([0.1, 0.0, 1.0])).unwrap().name,
            "ann"
        );
        assert_eq!(
            g.best_match(&embedding([0.1, 1.0, 0.0])).unwrap().name,
            "bob"
        );
        let other = g
            .best_match_excluding(&embedding([0.1, 1.0, 0.0]), Some("bob"))
            .unwrap();
        assert_eq!(other.name, "ann");
        assert!(Gallery::new(id())
            .best_match(&embedding([1.0, 0.0, 0.0]))
            .is_none());
    }

    #[test]
    fn save_and_load_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.json");
        let mut g = Gallery::new(id());
        g.add_sample("ann", sample([1.0, 2.0, 3.0])).unwrap();
        g.save(&path).unwrap();
        let loaded = Gallery::load(&path, &id()).unwrap();
        assert_eq!(loaded.people(), g.people());
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left behind");
    }

    #[test]
    fn missing_file_is_an_empty_gallery() {
        let g = Gallery::load(Path::new("/nonexistent/gallery.json"), &id()).unwrap();
        assert!(g.people().is_empty());
    }

    #[test]
    fn a_gallery_from_another_embedder_is_refused_at_load() {
        let mut g = Gallery::new(id());
        g.add_sample("ann", sample([1.0, 2.0, 3.0])).unwrap();
        let other = EmbedderId {
            name: "sface".into(),
            ..id()
        };
        let err = Gallery::parse(&g.to_json(), Path::new("g"), &other).unwrap_err();
        assert!(
            matches!(err, GalleryError::EmbedderMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn damaged_and_future_galleries_are_refused() {
        let future = Gallery::new(id())
            .to_json()
            .replace("\"version\": 2", "\"version\": 9");
        assert!(matches!(
            Gallery::parse(&future, Path::new("g"), &id()),
            Err(GalleryError::Version { found: 9, .. })
        ));
        assert!(matches!(
            Gallery::parse("{\"format\":", Path::new("g"), &id()),
            Err(GalleryError::Parse { .. })
        ));
        let short = Gallery::new(id()).to_json().replace(
            "\"people\": []",
            "\"people\": [{\"name\":\"a\",\"samples\":[{\"source\":\"s\",\"enrolled_at\":\"t\",\"vector\":[1.0]}]}]",
        );
        assert!(matches!(
            Gallery::parse(&short, Path::new("g"), &id()),
            Err(GalleryError::Parse { .. })
        ));
    }

    /// Regression: permissions are looked up by name, so a gallery (a hand-made file or a building
    /// bundle) with a second, suspended `ann` judged a match on her samples by the first's.
    #[test]
    fn a_person_enrolled_twice_is_refused_at_load() {
        let mut g = Gallery::new(id());
        g.add_sample("ann", sample([1.0, 2.0, 3.0])).unwrap();
        g.add_sample("bob", sample([3.0, 2.0, 1.0])).unwrap();
        let twice = g.to_json().replace("\"bob\"", "\"ann\"");
        assert_ne!(twice, g.to_json());
        let err = Gallery::parse(&twice, Path::new("g"), &id()).unwrap_err();
        assert!(err.to_string().contains("`ann` is enrolled twice"), "{err}");
    }

    #[test]
    fn names_are_checked_and_removal_works() {
        let mut g = Gallery::new(id());
        assert!(matches!(
            g.add_sample("", sample([1.0, 0.0, 0.0])),
            Err(GalleryError::BadName(_))
        ));
        assert!(matches!(
            g.add_sample("a\nb", sample([1.0, 0.0, 0.0])),
            Err(GalleryError::BadName(_))
        ));
        g.add_sample("ann", sample([1.0, 0.0, 0.0])).unwrap();
        assert_eq!(g.remove("ann").unwrap().samples.len(), 1);
        assert!(matches!(g.remove("ann"), Err(GalleryError::NotEnrolled(_))));
        assert_eq!(g.sample_count(), 0);
    }

    #[test]
    fn removing_the_last_sample_removes_the_person() {
        let mut g = Gallery::new(id());
        g.add_sample("ann", sample([1.0, 0.0, 0.0])).unwrap();
        g.add_sample("ann", sample([0.0, 1.0, 0.0])).unwrap();
        assert!(matches!(
            g.remove_sample("ann", 2),
            Err(GalleryError::NoSuchSample { index: 2, .. })
        ));
        g.remove_sample("ann", 0).unwrap();
        assert_eq!(g.people()[0].samples.len(), 1);
        assert_eq!(g.sample_count(), 1);
        g.remove_sample("ann", 0).unwrap();
        assert!(g.people().is_empty());
        assert!(matches!(
            g.remove_sample("ann", 0),
            Err(GalleryError::NotEnrolled(_))
        ));
    }

    #[test]
    fn permissions_and_groups_are_stored_and_version_1_files_still_load() {
        let mut g = Gallery::new(id());
        g.add_sample("ann", sample([1.0, 0.0, 0.0])).unwrap();
        g.add_sample("bob", sample([0.0, 1.0, 0.0])).unwrap();
        let cleaners = WeeklyHours::parse("mon-fri 18:00-22:00").unwrap();
        let permissions = Permissions {
            valid_until: Some(jiff::civil::date(2026, 3, 31)),
            groups: vec!["cleaners".into()],
            ..Permissions::default()
        };
        assert!(matches!(
            g.set_permissions("ann", permissions.clone()),
            Err(GalleryError::NoSuchGroup(name)) if name == "cleaners"
        ));
        g.set_group("cleaners", cleaners.clone()).unwrap();
        g.set_permissions("ann", permissions.clone()).unwrap();
        assert!(matches!(
            g.set_permissions("nobody", Permissions::default()),
            Err(GalleryError::NotEnrolled(_))
        ));
        assert!(matches!(
            g.set_group("night shift", cleaners.clone()),
            Err(GalleryError::BadGroupName(_))
        ));
        let backwards = Permissions {
            valid_from: Some(jiff::civil::date(2026, 4, 1)),
            valid_until: Some(jiff::civil::date(2026, 3, 1)),
            ..Permissions::default()
        };
        assert!(matches!(
            g.set_permissions("bob", backwards),
            Err(GalleryError::EmptyValidity { .. })
        ));
        let loaded = Gallery::parse(&g.to_json(), Path::new("g"), &id()).unwrap();
        assert_eq!(loaded.person("ann").unwrap().permissions, permissions);
        assert!(loaded.person("bob").unwrap().permissions.is_unrestricted());
        assert_eq!(loaded.groups()["cleaners"].schedule, cleaners);
        assert!(
            !g.to_json().contains("\"permissions\": {}"),
            "unrestricted people carry no permissions"
        );

        let version_1 = r#"{"format": "facegate-gallery", "version": 1, "embedder": {"name": "test", "sha256": "ab", "dim": 3},
            "people": [{"name": "old", "samples": [{"source": "s", "enrolled_at": "t", "vector": [1.0, 0.0, 0.0]}]}]}"#;
        let old = Gallery::parse(version_1, Path::new("g"), &id()).unwrap();
        assert!(old.person("old").unwrap().permissions.is_unrestricted());
        let monday = jiff::civil::date(2026, 3, 2)
            .at(3, 0, 0, 0)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap();
        assert_eq!(old.access_at("old", &monday), Some(Access::Allowed));
        assert_eq!(old.access_at("nobody", &monday), None);
        let bad_hours = Gallery::new(id()).to_json().replace(
            "\"people\": []",
            "\"people\": [], \"groups\": {\"x\": {\"schedule\": \"mon 25:00-26:00\"}}",
        );
        let err = Gallery::parse(&bad_hours, Path::new("g"), &id()).unwrap_err();
        assert!(err.to_string().contains("25:00"), "{err}");
    }

    #[test]
    fn a_door_that_follows_a_building_gallery_refuses_local_edits() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config {
            state_dir: dir.path().to_path_buf(),
            ..crate::config::Config::default()
        };
        let file = GalleryFile::of(&config, &id());
        file.edit(|g| g.add_sample("ann", sample([1.0, 0.0, 0.0])))
            .unwrap();
        assert_eq!(file.load().unwrap().people().len(), 1);
        config.mqtt.url = Some("mqtt://127.0.0.1:1883".into());
        config.mqtt.gallery_public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
        let following = GalleryFile::of(&config, &id());
        let err = following.edit(|g| g.remove("ann")).unwrap_err();
        assert!(err.to_string().contains("facegate/gallery"), "{err}");
        assert!(err.to_string().contains("export --sign"), "{err}");
        assert_eq!(
            following.load().unwrap().people().len(),
            1,
            "nothing changed"
        );
    }

    /// Regression: the gallery file was read and parsed under the lock every request takes, by the
    /// request that noticed the change (`/healthz` on the dispatching thread among them), so reloading
    /// a large gallery, or a read stuck on a slow disk, held up every other request. The new file here
    /// is a FIFO, a read that stays stuck until the test writes to it. (The watcher is left waiting
    /// on the FIFO again afterwards, whose write changed its stamp; the test process ends with it.)
    #[test]
    fn a_reload_stuck_on_the_disk_holds_up_no_request() {
        use std::io::Write;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gallery.json");
        let mut gallery = Gallery::new(id());
        gallery.add_sample("ada", sample([1.0, 0.0, 0.0])).unwrap();
        gallery.save(&path).unwrap();
        let live = LiveGallery::open(&path, &id(), Duration::from_millis(1)).unwrap();
        gallery.add_sample("bob", sample([0.0, 1.0, 0.0])).unwrap();
        let newer = gallery.to_json();
        std::fs::remove_file(&path).unwrap();
        crate::stuck_file::make(&path);
        let mut writer = crate::stuck_file::opened(&path);
        let names = |g: &Gallery| {
            g.people()
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&live.current()),
            ["ada"],
            "answered from the gallery in use while the reload is stuck"
        );
        writer.write_all(newer.as_bytes()).unwrap();
        drop(writer);
        while names(&live.current()) != ["ada", "bob"] {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn concurrent_edits_under_the_lock_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            state_dir: dir.path().to_path_buf(),
            ..crate::config::Config::default()
        };
        std::thread::scope(|scope| {
            for t in 0..4 {
                let config = &config;
                scope.spawn(move || {
                    let file = GalleryFile::of(config, &id());
                    for n in 0..10 {
                        file.edit(|g| g.add_sample(&format!("p{t}-{n}"), sample([1.0, 0.0, 0.0])))
                            .unwrap();
                    }
                });
            }
        });
        let file = GalleryFile::of(&config, &id());
        assert_eq!(file.load().unwrap().people().len(), 40);
    }
}
