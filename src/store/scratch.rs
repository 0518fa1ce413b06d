//! On-disk scratch maps in the box's own temporary space (never the drive): per-file state of a
//! staging or ingest run kept in sled with a small cache, so memory does not grow with file count.

use std::io;

/// sled page cache of one scratch database.
pub const SCRATCH_CACHE: u64 = 4 << 20;

/// Why scratch space failed.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The temporary folder could not be made.
    #[error("local scratch space: {0}")]
    Io(#[from] io::Error),
    /// sled failed.
    #[error("local scratch database: {0}")]
    Sled(#[from] sled::Error),
}

/// A sled database in a fresh temporary folder, deleted with it.
pub struct Scratch {
    // Dropped before `_dir`, which then removes the folder.
    db: sled::Db,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").finish_non_exhaustive()
    }
}

impl Scratch {
    /// A new empty database under the system's temporary folder (`TMPDIR`).
    pub fn new() -> Result<Self, ScratchError> {
        let dir = tempfile::Builder::new()
            .prefix("cradle-scratch-")
            .tempdir()?;
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .cache_capacity(SCRATCH_CACHE)
            .flush_every_ms(None)
            .mode(sled::Mode::LowSpace)
            .open()?;
        Ok(Scratch { db, _dir: dir })
    }

    /// The map `name` (created empty on first use).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, ScratchError> {
        Ok(self.db.open_tree(name)?)
    }
}
