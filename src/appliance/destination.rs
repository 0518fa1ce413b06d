//! Where backups go, behind a small trait so the daemon does not care whether the drive holds
//! standard backup folders or a Cradle repository: begin a backup, finish it (ingest, verify).

use crate::backup2::run::RunError;
use crate::backup2::target::{BackupTarget, FolderTarget, TargetError};
use crate::ios_backup::folder::{BackupFolder, FolderError};
use crate::password::Password;
use std::path::{Path, PathBuf};

/// The run log's file name inside the destination root (one JSON object per line).
pub const RUN_LOG_FILE: &str = "runs.jsonl";

/// Why a destination could not take or check a backup.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// A file operation on the drive failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The backup target could not be opened.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The stored backup does not read back.
    #[error("verifying {}: {source}", path.display())]
    Verify {
        /// The backup checked.
        path: PathBuf,
        /// What was wrong.
        source: Box<FolderError>,
    },
    /// The phone's side of the backup failed (not the drive's fault, unless `is_full` says so).
    #[error(transparent)]
    Receive(Box<RunError>),
    /// No room left on the drive (or under the repository's byte limit).
    #[error("{}: the drive is full", path.display())]
    Full {
        /// The repository or folder.
        path: PathBuf,
    },
    /// The drive's repository does not open with the box's password, or the box has none.
    #[error("{}: {reason}", path.display())]
    Password {
        /// The repository.
        path: PathBuf,
        /// "wrong password" or "the box has no password".
        reason: &'static str,
    },
    /// The drive's Cradle folder holds files that are not Cradle's and no repository.
    #[error("{}: not a Cradle repository and not empty ({found}); left untouched", path.display())]
    NotCradle {
        /// The folder.
        path: PathBuf,
        /// One foreign name found there.
        found: String,
    },
    /// Another writer (a `cradle` command on the drive) holds the repository.
    #[error("{}: {reason}", path.display())]
    Busy {
        /// The repository.
        path: PathBuf,
        /// Who holds it.
        reason: String,
    },
    /// The repository failed (opening, staging, ingest).
    #[error("{}: {reason}", path.display())]
    Repo {
        /// The repository.
        path: PathBuf,
        /// What failed, with the store's message.
        reason: String,
    },
    /// The new snapshot does not read back.
    #[error("verifying snapshot {snapshot}: {reason}")]
    Check {
        /// The snapshot (hex id).
        snapshot: String,
        /// What was wrong.
        reason: String,
    },
}

/// True when `e` or any error below it says the drive has no room.
pub fn error_chain_says_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull {
                return true;
            }
        }
        if let Some(crate::store::storage::StorageError::NoSpace { .. }) = e.downcast_ref() {
            return true;
        }
        cur = e.source();
    }
    false
}

impl DestinationError {
    /// True when the drive has no room left.
    pub fn is_full(&self) -> bool {
        match self {
            DestinationError::Full { .. } => true,
            DestinationError::Receive(e) => error_chain_says_full(e.as_ref()),
            other => error_chain_says_full(other),
        }
    }
}

/// What a finished backup left on the drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// New bytes written to the drive for this backup.
    pub new_bytes: u64,
    /// Bytes of the backup's files (what a plain folder would hold).
    pub logical_bytes: u64,
    /// Whether the backup is encrypted.
    pub encrypted: bool,
    /// Whether the box's password opens it (false: stored as the phone sent it, "raw").
    pub password_known: bool,
    /// The snapshot made (hex id), when the destination is a repository.
    pub snapshot: Option<String>,
}

/// One backup to store.
#[derive(Clone, Copy, Debug)]
pub struct StoreRequest<'a> {
    /// The phone.
    pub udid: &'a str,
    /// Whether the phone's backups are encrypted (data files then arrive as Apple ciphertext).
    pub encrypted: bool,
    /// The box's password: it opens (or creates) the drive's repository.
    pub box_password: Option<&'a Password>,
    /// The phone's backup password when the box holds one for this phone (else the box's is
    /// tried): it decides whether the backup is digested or kept raw.
    pub phone_password: Option<&'a Password>,
}

/// Where the destination is in its part of the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreProgress {
    /// The phone is done; writing to the drive.
    Saving,
    /// Reading back, in per mille.
    Verifying(u16),
}

/// The phone's part: fills the target (the mobilebackup2 session).
pub type Receive<'a> = dyn FnMut(&mut dyn BackupTarget) -> Result<(), RunError> + 'a;

/// A place on the drive that receives backups.
pub trait Destination: Send + Sync {
    /// One line for the status and the demo ("Cradle repository in /mnt/cradle/Cradle").
    fn describe(&self) -> String;
    /// The folder on the drive this destination uses (the run log lives there).
    fn root(&self) -> &Path;
    /// Takes one backup: prepares a target, lets `receive` fill it, makes it durable and checks
    /// it reads back. Nothing committed before is touched when any step fails.
    fn store(
        &self,
        req: &StoreRequest<'_>,
        receive: &mut Receive<'_>,
        progress: &mut dyn FnMut(StoreProgress),
    ) -> Result<Stored, DestinationError>;
}

/// Standard backup folders (`<root>/<UDID>/`, as Finder and idevicebackup2 write them): the
/// destination until the repository takes over, and for owners who want plain folders.
#[derive(Debug, Clone)]
pub struct FolderDestination {
    root: PathBuf,
}

impl FolderDestination {
    /// Uses `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl Destination for FolderDestination {
    fn describe(&self) -> String {
        format!("backup folders in {}", self.root.display())
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn store(
        &self,
        req: &StoreRequest<'_>,
        receive: &mut Receive<'_>,
        progress: &mut dyn FnMut(StoreProgress),
    ) -> Result<Stored, DestinationError> {
        // The drive's root must exist (it is mounted); only Cradle's folders below are made.
        let drive_root = self
            .root
            .parent()
            .and_then(Path::parent)
            .unwrap_or(&self.root);
        if !drive_root.is_dir() {
            return Err(DestinationError::Io {
                path: drive_root.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        std::fs::create_dir_all(&self.root).map_err(|source| DestinationError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut target = FolderTarget::open(&self.root)?;
        receive(&mut target).map_err(|e| DestinationError::Receive(Box::new(e)))?;
        drop(target);
        progress(StoreProgress::Saving);
        let dir = self.root.join(req.udid);
        sync_dir_tree(&dir)?;
        progress(StoreProgress::Verifying(300));
        let verify = |source| DestinationError::Verify {
            path: dir.clone(),
            source: Box::new(source),
        };
        let folder = BackupFolder::open(&dir).map_err(verify)?;
        let encrypted = folder.is_encrypted();
        progress(StoreProgress::Verifying(600));
        let password = req.phone_password.or(req.box_password);
        let password_known = match (encrypted, password) {
            (false, _) => true,
            (true, None) => false,
            (true, Some(pw)) => match folder.verify_password(pw) {
                Ok(_) => true,
                Err(FolderError::WrongPassword) => false,
                Err(e) => return Err(verify(e)),
            },
        };
        progress(StoreProgress::Verifying(1000));
        let bytes = dir_bytes(&dir);
        Ok(Stored {
            new_bytes: bytes,
            logical_bytes: bytes,
            encrypted,
            password_known,
            snapshot: None,
        })
    }
}

/// Bytes of the files under `dir` (0 for what cannot be read).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// fsyncs the top of a backup folder (the manifests) and the folder itself, so a backup that
/// was reported done survives a power cut before the drive is unmounted (which syncs the rest).
fn sync_dir_tree(dir: &Path) -> Result<(), DestinationError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DestinationError::Io { path, source }
    };
    for name in [
        "Manifest.db",
        "Manifest.plist",
        "Status.plist",
        "Info.plist",
    ] {
        let p = dir.join(name);
        if let Ok(f) = std::fs::File::open(&p) {
            f.sync_all().map_err(io(&p))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_drive_is_recognised() {
        let e = DestinationError::Io {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        assert!(e.is_full());
        let e = DestinationError::Io {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(!e.is_full());
    }
}
