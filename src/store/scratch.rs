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
        // Each new scratch map first clears what killed runs left beside it.
        let tmp = std::env::temp_dir();
        if let Err(e) = remove_leftovers(&tmp) {
            tracing::warn!("cannot sweep {}: {e}", tmp.display());
        }
        let dir = tempfile::Builder::new()
            .prefix(&private_prefix("cradle-scratch-"))
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

/// Prefixes of the folders this crate makes in the temporary folder for a run's private state
/// (the scratch maps above, the decrypted Manifest.db of a backup being read). The maker's
/// process id follows the prefix (see [`private_prefix`]), so leftovers of a killed run can be
/// told from folders in use.
const LEFTOVER_PREFIXES: [&str; 2] = ["cradle-scratch-", "cradle-manifest-"];

/// `prefix` followed by this process's id: the name start of a private temporary folder.
pub fn private_prefix(prefix: &str) -> String {
    format!("{prefix}{}-", std::process::id())
}

/// Removes what killed runs left in `tmp`: folders named by [`private_prefix`] whose process
/// is gone. Only where `/proc` shows processes (Linux); elsewhere nothing is removed.
/// Returns how many were removed; a folder that cannot be removed is logged and skipped.
pub fn remove_leftovers(tmp: &std::path::Path) -> io::Result<usize> {
    let proc = std::path::Path::new("/proc/self");
    if !proc.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = LEFTOVER_PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id()
            || std::path::Path::new(&format!("/proc/{pid}")).exists()
            || !entry.file_type()?.is_dir()
        {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_processes_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        // No process has pid 4194305 (above Linux's pid_max limit of 2^22).
        let me = std::process::id();
        for d in [
            "cradle-scratch-4194305-a1".to_string(),
            "cradle-manifest-4194305-b2".to_string(),
            format!("cradle-scratch-{me}-c3"),
            "cradle-scratch-1-d4".to_string(),
            "cradle-scratch-old".to_string(),
            "other-4194305-e5".to_string(),
        ] {
            std::fs::create_dir_all(tmp.path().join(&d).join("db")).unwrap();
            std::fs::write(tmp.path().join(&d).join("db").join("x"), b"x").unwrap();
        }
        assert_eq!(remove_leftovers(tmp.path()).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            format!("cradle-scratch-{me}-c3"),
            "cradle-scratch-1-d4".to_string(),
            "cradle-scratch-old".to_string(),
            "other-4194305-e5".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
    }
}
