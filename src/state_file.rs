//! A small secret-holding state file shared by the daemon and the CLI (visitor codes, paired
//! tablets): versioned JSON, mode 0600, replaced atomically, and changed only under an advisory lock
//! on a sibling file, so that neither loses the other's change and a one-time secret is used once.

use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::atomic_file::FileStamp;

/// Owner read/write only: these files hold what opens the door or lets a tablet in.
pub(crate) const MODE: u32 = 0o600;

/// What went wrong with a state file (`what`: "codes", "tablets"), and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(
        "cannot read the {what} file {path}: {cause}. Check the state directory's permissions"
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the {what} file {path} is damaged ({message}); {repair}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        message: String,
        repair: &'static str,
    },
    #[error(
        "cannot write the {what} file {path}: {cause}. Check that the state directory is writable"
    )]
    Write {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// The document a state file holds, stored as its fields beside `format` and `version` (unknown
/// fields should be refused); those two are checked on every read, so that a file from another
/// program or a newer facegate is refused, not misread.
pub trait Document: Default + Clone + PartialEq + Serialize + DeserializeOwned {
    const FORMAT: &'static str;
    const VERSION: u32;
    /// What the file holds, for messages: "the {WHAT} file ... is damaged".
    const WHAT: &'static str;
    /// What to do about a damaged file.
    const REPAIR: &'static str;
    type Error: From<StateFileError>;
}

/// The state file at one path, holding a `D`.
#[derive(Debug)]
pub struct StateFile<D> {
    path: PathBuf,
    document: PhantomData<fn() -> D>,
}

impl<D> Clone for StateFile<D> {
    fn clone(&self) -> Self {
        StateFile::new(self.path.clone())
    }
}

impl<D> StateFile<D> {
    pub fn new(path: PathBuf) -> StateFile<D> {
        StateFile {
            path,
            document: PhantomData,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's stamp now, `None` when it does not exist.
    pub fn stamp(&self) -> Option<FileStamp> {
        crate::atomic_file::stamp(&self.path)
    }
}

impl<D: Document> StateFile<D> {
    /// Reads the document; a missing file holds an empty one.
    pub fn load(&self) -> Result<D, D::Error> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(D::default()),
            Err(cause) => {
                return Err(StateFileError::Read {
                    what: D::WHAT,
                    path: self.path.clone(),
                    cause,
                }
                .into())
            }
        };
        parse::<D>(&text).map_err(|message| {
            StateFileError::Parse {
                what: D::WHAT,
                path: self.path.clone(),
                message,
                repair: D::REPAIR,
            }
            .into()
        })
    }

    /// Reads, changes and (when `change` altered it) writes the document while holding the lock.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut D) -> Result<T, D::Error>,
    ) -> Result<T, D::Error> {
        let write_error = |path: PathBuf, cause| StateFileError::Write {
            what: D::WHAT,
            path,
            cause,
        };
        let _lock = crate::atomic_file::lock_beside(&self.path, MODE)
            .map_err(|cause| write_error(crate::atomic_file::lock_path(&self.path), cause))?;
        let mut document = self.load()?;
        let before = document.clone();
        let result = change(&mut document)?;
        if document != before {
            crate::atomic_file::write(&self.path, render(&document).as_bytes(), MODE)
                .map_err(|cause| write_error(self.path.clone(), cause))?;
        }
        Ok(result)
    }
}

/// The document in `text`, or why it is not one this facegate reads.
fn parse<D: Document>(text: &str) -> Result<D, String> {
    let mut fields: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|err| err.to_string())?;
    let format = fields.remove("format").unwrap_or(Value::Null);
    let version = fields.remove("version").unwrap_or(Value::Null);
    if format.as_str() != Some(D::FORMAT) || version.as_u64() != Some(u64::from(D::VERSION)) {
        return Err(format!(
            "format {format} version {version}, this facegate reads {:?} version {}",
            D::FORMAT,
            D::VERSION
        ));
    }
    serde_json::from_value(Value::Object(fields)).map_err(|err| err.to_string())
}

fn render<D: Document>(document: &D) -> String {
    let mut value = serde_json::to_value(document).expect("state documents serialise");
    if let Value::Object(fields) = &mut value {
        fields.insert("format".into(), D::FORMAT.into());
        fields.insert("version".into(), D::VERSION.into());
    }
    serde_json::to_string_pretty(&value).expect("JSON values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    #[derive(Debug, Default, Clone, PartialEq, Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Notes {
        notes: BTreeMap<String, String>,
    }

    #[derive(Debug)]
    struct NotesError(StateFileError);

    impl From<StateFileError> for NotesError {
        fn from(err: StateFileError) -> Self {
            NotesError(err)
        }
    }

    impl Document for Notes {
        const FORMAT: &'static str = "facegate-notes";
        const VERSION: u32 = 1;
        const WHAT: &'static str = "notes";
        const REPAIR: &'static str = "write the notes again";
        type Error = NotesError;
    }

    fn parse_error(file: &StateFile<Notes>) -> String {
        match file.load() {
            Err(NotesError(err @ StateFileError::Parse { .. })) => err.to_string(),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_file_is_empty_and_changes_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let file: StateFile<Notes> = StateFile::new(dir.path().join("notes.json"));
        assert_eq!(file.load().unwrap(), Notes::default());
        assert_eq!(file.stamp(), None);
        file.update(|notes| {
            notes.notes.insert("a".into(), "b".into());
            Ok(())
        })
        .unwrap();
        let mode = fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, MODE);
        assert_eq!(file.load().unwrap().notes["a"], "b");
        let text = fs::read_to_string(file.path()).unwrap();
        assert!(text.contains("\"format\": \"facegate-notes\""), "{text}");
    }

    #[test]
    fn an_unchanged_document_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let file: StateFile<Notes> = StateFile::new(dir.path().join("notes.json"));
        file.update(|_| Ok(())).unwrap();
        assert!(!file.path().exists());
    }

    #[test]
    fn other_formats_versions_unknown_keys_and_damage_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file: StateFile<Notes> = StateFile::new(dir.path().join("notes.json"));
        let cases = [
            (
                r#"{"format":"facegate-codes","version":1,"notes":{}}"#,
                "\"facegate-codes\"",
            ),
            (
                r#"{"format":"facegate-notes","version":2,"notes":{}}"#,
                "version 2",
            ),
            (r#"{"notes":{}}"#, "format null"),
            (
                r#"{"format":"facegate-notes","version":1,"notes":{},"x":1}"#,
                "unknown field",
            ),
            ("{\"format\":", "EOF"),
        ];
        for (text, expected) in cases {
            fs::write(file.path(), text).unwrap();
            let message = parse_error(&file);
            assert!(message.contains(expected), "{text}: {message}");
        }
    }
}
