//! The one admin account: an Argon2id hash (PHC string) in `<state_dir>/admin-password`, written
//! atomically with mode 0600, checked at every login.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

/// Shortest password `set-password` accepts.
pub const MIN_LENGTH: usize = 8;
const FILE_NAME: &str = "admin-password";

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is shorter than {MIN_LENGTH} characters; choose a longer one")]
    TooShort,
    #[error("the password could not be hashed: {0}")]
    Hash(String),
    #[error("cannot write the admin password file {path}: {cause}. Check that the state directory is writable")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot read the admin password file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Hashes `password` with Argon2id (default parameters, random salt).
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < MIN_LENGTH {
        return Err(PasswordError::TooShort);
    }
    let hash: argon2::PasswordHash = Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|err| PasswordError::Hash(err.to_string()))?;
    Ok(hash.to_string())
}

/// Does `password` match the stored hash? A damaged hash matches nothing.
pub fn verify(password: &str, stored: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), stored.trim())
        .is_ok()
}

/// Stores the hash of `password` in the state dir (temp file, fsync, rename).
pub fn store(state_dir: &Path, password: &str) -> Result<PathBuf, PasswordError> {
    let hashed = hash(password)?;
    let target = path(state_dir);
    let temp = state_dir.join(format!(".{FILE_NAME}.tmp-{}", std::process::id()));
    let write_error = |cause| PasswordError::Write {
        path: target.clone(),
        cause,
    };
    fs::create_dir_all(state_dir).map_err(write_error)?;
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(format!("{hashed}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, &target)?;
        fs::File::open(state_dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_error)?;
    Ok(target)
}

/// The stored hash, or `None` when no password was set yet.
pub fn load(state_dir: &Path) -> Result<Option<String>, PasswordError> {
    let path = path(state_dir);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(PasswordError::Read { path, cause }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stored_hashes_are_argon2id_private_and_verify_only_the_password() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        assert!(matches!(
            store(dir.path(), "short"),
            Err(PasswordError::TooShort)
        ));
        let path = store(dir.path(), "correct horse").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let stored = load(dir.path()).unwrap().unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(verify("correct horse", &stored));
        assert!(!verify("correct horsE", &stored));
        assert!(!verify("correct horse", "not a hash"));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
