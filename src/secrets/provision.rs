//! First-time provisioning: the user drops `cradle-password.txt` on the drive; the box seals it as
//! its default password, checks that it unseals, then overwrites the file with zeros and deletes it.
//!
//! The drive must never keep a password (ARCHITECTURE.md, invariants), so the plaintext file is
//! destroyed as soon as the sealed copy is proven readable, and kept only if sealing failed.

use super::{SealingMode, SecretStore, SecretsError, Slot};
use crate::password::{first_line, PasswordError, MAX_PASSWORD_LEN};
use std::fs;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The file name the box looks for at the drive's root.
pub const DRIVE_PASSWORD_FILE: &str = "cradle-password.txt";

/// What provisioning did, for the display to confirm ("Password saved (TPM)").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionOutcome {
    /// Always the box default.
    pub slot: Slot,
    /// How it was sealed.
    pub mode: SealingMode,
    /// A default password existed before and was replaced.
    pub replaced: bool,
}

/// Why the password file on the drive could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The file is a symlink, a directory or something else than a plain file; left alone.
    #[error("{path} is not a plain file; remove it and put the password in a plain text file")]
    NotAFile { path: PathBuf },
    /// The content is no usable password; the file was wiped and deleted anyway.
    #[error("{path} held no usable password ({source}); it was wiped and deleted")]
    Invalid {
        path: PathBuf,
        #[source]
        source: PasswordError,
    },
    /// Sealing failed; the file was left on the drive so the next attempt can retry.
    #[error("could not seal the password from {path}; the file was left in place: {source}")]
    Seal {
        path: PathBuf,
        #[source]
        source: SecretsError,
    },
    /// The sealed copy did not read back equal; the file was left on the drive.
    #[error("the password sealed from {path} did not read back; the file was left in place")]
    Verify { path: PathBuf },
    /// Reading, wiping or deleting the file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Looks for [`DRIVE_PASSWORD_FILE`] at `drive_root`. If present: reads it once, seals it as the
/// box default in `store`, verifies it unseals, overwrites the file with zeros, fsyncs, deletes it
/// and fsyncs the directory. `Ok(None)` when there is no such file.
pub fn provision_from_drive(
    drive_root: &Path,
    store: &dyn SecretStore,
) -> Result<Option<ProvisionOutcome>, ProvisionError> {
    let path = drive_root.join(DRIVE_PASSWORD_FILE);
    let io = |source| ProvisionError::Io {
        path: path.clone(),
        source,
    };
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if !meta.file_type().is_file() {
        return Err(ProvisionError::NotAFile { path });
    }
    // O_NOFOLLOW: the file may have been swapped for a link since the check above.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(io)?;
    let mut raw = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD_LEN + 8));
    (&mut file)
        .take(MAX_PASSWORD_LEN as u64 + 6)
        .read_to_end(&mut raw)
        .map_err(io)?;
    // Editors on some systems start UTF-8 files with a byte-order mark; it is not part of the password.
    let text = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&raw[..]);
    let password = match first_line(text) {
        Ok(p) => p,
        Err(source) => {
            wipe_and_delete(file, &path)?;
            return Err(ProvisionError::Invalid { path, source });
        }
    };
    let replaced = match store.get(&Slot::Default) {
        Ok(_) => true,
        Err(SecretsError::NotFound { .. }) => false,
        // A damaged or foreign old default is replaced all the same.
        Err(_) => true,
    };
    store
        .set(&Slot::Default, &password)
        .map_err(|source| ProvisionError::Seal {
            path: path.clone(),
            source,
        })?;
    match store.get(&Slot::Default) {
        Ok(back) if back == password => {}
        _ => return Err(ProvisionError::Verify { path }),
    }
    wipe_and_delete(file, &path)?;
    tracing::info!(mode = %store.mode(), "sealed the default password from the drive and deleted the file");
    Ok(Some(ProvisionOutcome {
        slot: Slot::Default,
        mode: store.mode(),
        replaced,
    }))
}

/// Overwrites the whole file with zeros, fsyncs it, deletes it and fsyncs its directory.
/// (On flash the old blocks may survive in the translation layer; this is the best a file
/// system allows, and why the file should be written only once.)
fn wipe_and_delete(mut file: fs::File, path: &Path) -> Result<(), ProvisionError> {
    let io = |source| ProvisionError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = file.metadata().map_err(io)?.len();
    file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n]).map_err(io)?;
        left -= n as u64;
    }
    file.sync_all().map_err(io)?;
    drop(file);
    fs::remove_file(path).map_err(io)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ProvisionError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::Password;
    use crate::secrets::SealedEntry;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// An in-memory store that can be told to fail, for the file-handling paths.
    #[derive(Default)]
    struct MemStore {
        map: RefCell<BTreeMap<Slot, Password>>,
        fail_set: bool,
    }

    impl SecretStore for MemStore {
        fn get(&self, slot: &Slot) -> Result<Password, SecretsError> {
            self.map
                .borrow()
                .get(slot)
                .cloned()
                .ok_or(SecretsError::NotFound { slot: slot.clone() })
        }
        fn set(&self, slot: &Slot, password: &Password) -> Result<(), SecretsError> {
            if self.fail_set {
                return Err(SecretsError::NoTpm);
            }
            self.map.borrow_mut().insert(slot.clone(), password.clone());
            Ok(())
        }
        fn remove(&self, slot: &Slot) -> Result<bool, SecretsError> {
            Ok(self.map.borrow_mut().remove(slot).is_some())
        }
        fn list(&self) -> Result<Vec<SealedEntry>, SecretsError> {
            Ok(Vec::new())
        }
        fn mode(&self) -> SealingMode {
            SealingMode::Tpm2
        }
    }

    #[test]
    fn absent_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            provision_from_drive(dir.path(), &MemStore::default()).unwrap(),
            None
        );
    }

    #[test]
    fn seals_then_deletes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DRIVE_PASSWORD_FILE);
        fs::write(&path, b"\xEF\xBB\xBFcorrect horse\r\nsecond line ignored\n").unwrap();
        let store = MemStore::default();
        let out = provision_from_drive(dir.path(), &store).unwrap().unwrap();
        assert_eq!(
            out,
            ProvisionOutcome {
                slot: Slot::Default,
                mode: SealingMode::Tpm2,
                replaced: false
            }
        );
        assert_eq!(
            store.get(&Slot::Default).unwrap().expose(),
            b"correct horse"
        );
        assert!(!path.exists());
        // Second drop replaces.
        fs::write(&path, b"battery staple").unwrap();
        let out = provision_from_drive(dir.path(), &store).unwrap().unwrap();
        assert!(out.replaced);
        assert_eq!(
            store.get(&Slot::Default).unwrap().expose(),
            b"battery staple"
        );
    }

    #[test]
    fn wipes_with_zeros_before_deleting() {
        // A hard link keeps the inode reachable after the unlink, so the test can see the bytes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DRIVE_PASSWORD_FILE);
        fs::write(&path, b"s3cret-pass\n").unwrap();
        let witness = dir.path().join("witness");
        fs::hard_link(&path, &witness).unwrap();
        provision_from_drive(dir.path(), &MemStore::default())
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(&witness).unwrap(), vec![0u8; 12]);
    }

    #[test]
    fn empty_file_is_wiped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DRIVE_PASSWORD_FILE);
        fs::write(&path, b"\n\n").unwrap();
        let err = provision_from_drive(dir.path(), &MemStore::default()).unwrap_err();
        assert!(matches!(err, ProvisionError::Invalid { .. }), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn seal_failure_keeps_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DRIVE_PASSWORD_FILE);
        fs::write(&path, b"keep me").unwrap();
        let store = MemStore {
            fail_set: true,
            ..Default::default()
        };
        let err = provision_from_drive(dir.path(), &store).unwrap_err();
        assert!(matches!(err, ProvisionError::Seal { .. }), "{err}");
        assert!(!err.to_string().contains("keep me"));
        assert_eq!(fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"pw").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(DRIVE_PASSWORD_FILE)).unwrap();
        let err = provision_from_drive(dir.path(), &MemStore::default()).unwrap_err();
        assert!(matches!(err, ProvisionError::NotAFile { .. }));
        assert_eq!(fs::read(&target).unwrap(), b"pw");
    }
}
