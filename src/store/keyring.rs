//! Key files (format.md §5.3): listing them, adding one for a new password, and changing the
//! password (add the new key file, prove it opens the repository, then remove the old one).

use super::caps::{CONFIG_FILE_MAX, KEY_FILE_LEN};
use super::ids::KeyId;
use super::keys::{self, KdfParams, KeyError, Keys};
use super::lock::{LockEnv, LockError, LockPurpose};
use super::repo::{now_ms, RepoError, Repository, CONFIG_NAME};
use super::seal::{self, MAGIC_CONFIG};
use super::storage::StorageError;
use crate::password::Password;

/// One file in `keys/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileInfo {
    /// Its KeyId (its name).
    pub id: KeyId,
    /// When it was made (ms), if readable.
    pub created: Option<i64>,
    /// Its Argon2id costs, if readable.
    pub kdf: Option<KdfParams>,
    /// The key file that opened this repository.
    pub current: bool,
    /// Why it is unusable, if it is.
    pub problem: Option<String>,
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The writer lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The drive or repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A key file could not be made or opened.
    #[error("key file: {0}")]
    Key(#[from] KeyError),
    /// The current password does not open the key file that opened the repository.
    #[error("keys/{0}: the current password does not open it")]
    CurrentPassword(KeyId),
    /// The new key file, read back, does not open the repository: nothing was removed.
    #[error("keys/{0}: the new key file does not open the repository; the old one was kept")]
    NotVerified(KeyId),
    /// Removing this key would leave no key file that opens the repository.
    #[error("keys/{0}: it is the last key file; refusing to remove it")]
    LastKey(KeyId),
    /// No such key file.
    #[error("keys/{0}: no such key file")]
    NoSuchKey(String),
}

impl From<StorageError> for KeyringError {
    fn from(e: StorageError) -> Self {
        KeyringError::Repo(e.into())
    }
}

/// Every key file in `keys/`, with what can be read without a password.
pub fn list_keys(repo: &Repository) -> Result<Vec<KeyFileInfo>, KeyringError> {
    let mut out = Vec::new();
    for n in repo.storage().list("keys")? {
        let Some(id) = KeyId::from_hex(&n) else {
            continue;
        };
        let mut info = KeyFileInfo {
            id,
            created: None,
            kdf: None,
            current: id == repo.key_id(),
            problem: None,
        };
        match repo.storage().read(&format!("keys/{n}"), KEY_FILE_LEN) {
            Ok(b) if KeyId::of_file(&b) != id => {
                info.problem = Some("content does not match its name".into())
            }
            Ok(b) => match keys::key_file_params(&b) {
                Ok(p) => {
                    info.kdf = Some(p);
                    let mut c = [0u8; 8];
                    c.copy_from_slice(&b[56..64]);
                    info.created = Some(i64::from_le_bytes(c));
                }
                Err(e) => info.problem = Some(e.to_string()),
            },
            Err(e) => info.problem = Some(e.to_string()),
        }
        out.push(info);
    }
    Ok(out)
}

/// Adds a key file for `new` (same Argon2id costs as the current key file unless `kdf` is given)
/// and proves, by reading it back, that it opens the repository. Takes the writer lock.
pub fn add_key(
    repo: &Repository,
    current: &Password,
    new: &Password,
    kdf: Option<KdfParams>,
    env: &dyn LockEnv,
) -> Result<KeyId, KeyringError> {
    let guard = repo.lock_writer(LockPurpose::Admin, env)?;
    let id = add_locked(repo, current, new, kdf)?;
    guard.release()?;
    Ok(id)
}

fn add_locked(
    repo: &Repository,
    current: &Password,
    new: &Password,
    kdf: Option<KdfParams>,
) -> Result<KeyId, KeyringError> {
    let cur = repo.key_id();
    let bytes = repo.storage().read(&format!("keys/{cur}"), KEY_FILE_LEN)?;
    let params = match kdf {
        Some(p) => p,
        None => keys::key_file_params(&bytes)?,
    };
    let (master, repo_id) =
        keys::open_key_file(&bytes, current).map_err(|_| KeyringError::CurrentPassword(cur))?;
    let file = keys::make_key_file(new, &master, &repo_id, params, now_ms())?;
    let id = KeyId::of_file(&file);
    // Temporary name, fsync, rename, directory fsync (§5.3).
    repo.storage().create(&format!("keys/{id}"), &file)?;
    verify(repo, &id, new)?;
    Ok(id)
}

/// Reads `keys/<id>` back and checks that `pw` opens it and that it unseals `config.1` of this
/// repository, as `Repository::open` would.
fn verify(repo: &Repository, id: &KeyId, pw: &Password) -> Result<(), KeyringError> {
    let bytes = repo.storage().read(&format!("keys/{id}"), KEY_FILE_LEN)?;
    if KeyId::of_file(&bytes) != *id {
        return Err(KeyringError::NotVerified(*id));
    }
    let (master, repo_id) =
        keys::open_key_file(&bytes, pw).map_err(|_| KeyringError::NotVerified(*id))?;
    let k = Keys::derive(&master);
    let config = repo.storage().read(CONFIG_NAME, CONFIG_FILE_MAX)?;
    let opens = seal::open_file(&k, MAGIC_CONFIG, &[1], CONFIG_FILE_MAX, &config).is_ok();
    if !opens || repo_id != repo.config().repo_id {
        return Err(KeyringError::NotVerified(*id));
    }
    Ok(())
}

/// Changes the password: adds a key file for `new`, verifies it, then removes the key file that
/// opened `repo` (unless `keep_old`). Returns the new KeyId. The master secret is unchanged, so
/// every snapshot stays readable.
pub fn change_password(
    repo: &Repository,
    current: &Password,
    new: &Password,
    keep_old: bool,
    env: &dyn LockEnv,
) -> Result<KeyId, KeyringError> {
    let guard = repo.lock_writer(LockPurpose::Admin, env)?;
    let id = add_locked(repo, current, new, None)?;
    if !keep_old {
        remove_locked(repo, &repo.key_id(), Some(&id))?;
    }
    guard.release()?;
    Ok(id)
}

/// Removes `keys/<id>`, refusing when no other key file that opens the repository would remain.
/// `known_good` is a key file proven to open it (else the current one is, when it is not `id`).
fn remove_locked(
    repo: &Repository,
    id: &KeyId,
    known_good: Option<&KeyId>,
) -> Result<(), KeyringError> {
    let path = format!("keys/{id}");
    if !repo.storage().exists(&path)? {
        return Err(KeyringError::NoSuchKey(id.to_hex()));
    }
    let other_good = match known_good {
        Some(g) => g != id && repo.storage().exists(&format!("keys/{g}"))?,
        None => repo.key_id() != *id,
    };
    if !other_good {
        return Err(KeyringError::LastKey(*id));
    }
    repo.storage().delete(&path)?;
    repo.storage().sync_dir("keys")?;
    Ok(())
}

/// Removes another key file (not the one that opened the repository, which proves a remaining
/// key works). Takes the writer lock.
pub fn remove_key(repo: &Repository, id: &KeyId, env: &dyn LockEnv) -> Result<(), KeyringError> {
    let guard = repo.lock_writer(LockPurpose::Admin, env)?;
    remove_locked(repo, id, None)?;
    guard.release()?;
    Ok(())
}
