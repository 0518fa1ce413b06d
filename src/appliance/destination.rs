//! Where backups go, behind a small trait so the daemon does not care whether the drive holds
//! standard backup folders or a Cradle repository: begin a backup, finish it (ingest, verify).

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
}

impl DestinationError {
    /// True when the drive has no room left.
    pub fn is_full(&self) -> bool {
        let io = match self {
            DestinationError::Io { source, .. } => Some(source),
            DestinationError::Target(TargetError::Io { source, .. }) => Some(source),
            _ => None,
        };
        io.is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// What a finished backup left on the drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// New bytes written to the drive for this backup.
    pub new_bytes: u64,
    /// Whether the backup is encrypted.
    pub encrypted: bool,
    /// Whether the box's password opens it (false: stored as the phone sent it, "raw").
    pub password_known: bool,
}

/// A place on the drive that receives backups.
pub trait Destination: Send + Sync {
    /// One line for the status and the demo ("backup folders in /mnt/cradle").
    fn describe(&self) -> String;
    /// The folder on the drive this destination uses (the run log lives there).
    fn root(&self) -> &Path;
    /// A target to receive a new backup of `udid` into.
    fn begin(&self, udid: &str) -> Result<Box<dyn BackupTarget + Send>, DestinationError>;
    /// After the phone's session succeeded: make the backup durable and check it reads back
    /// (with `password` when the box has one). `received_bytes` is what the phone sent.
    fn finish(
        &self,
        udid: &str,
        target: Box<dyn BackupTarget + Send>,
        password: Option<&Password>,
        received_bytes: u64,
        progress: &mut dyn FnMut(u16),
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

    fn begin(&self, _udid: &str) -> Result<Box<dyn BackupTarget + Send>, DestinationError> {
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
        Ok(Box::new(FolderTarget::open(&self.root)?))
    }

    fn finish(
        &self,
        udid: &str,
        target: Box<dyn BackupTarget + Send>,
        password: Option<&Password>,
        received_bytes: u64,
        progress: &mut dyn FnMut(u16),
    ) -> Result<Stored, DestinationError> {
        drop(target);
        let dir = self.root.join(udid);
        sync_dir_tree(&dir)?;
        progress(300);
        let verify = |source| DestinationError::Verify {
            path: dir.clone(),
            source: Box::new(source),
        };
        let folder = BackupFolder::open(&dir).map_err(verify)?;
        let encrypted = folder.is_encrypted();
        progress(600);
        let password_known = match (encrypted, password) {
            (false, _) => true,
            (true, None) => false,
            (true, Some(pw)) => match folder.verify_password(pw) {
                Ok(_) => true,
                Err(FolderError::WrongPassword) => false,
                Err(e) => return Err(verify(e)),
            },
        };
        progress(1000);
        Ok(Stored {
            new_bytes: received_bytes,
            encrypted,
            password_known,
        })
    }
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
