//! The drive's Cradle repository as the box's destination: each backup is staged, ingested into a
//! snapshot (digested, or raw when the phone's password is not the box's) and read back.
//!
//! The repository is `<drive>/Cradle/` (format.md). It is created on a drive the owner marked for
//! Cradle (the label, or an empty `Cradle/` folder) and opened with the box's password otherwise;
//! a `Cradle/` folder holding anything else is never written.

use super::destination::{
    dir_bytes, error_chain_says_full, Destination, DestinationError, Receive, StoreProgress,
    StoreRequest, Stored, RUN_LOG_FILE,
};
use crate::ios_backup::manifest_db::ManifestDb;
use crate::password::Password;
use crate::store::ids::{ChunkId, SnapshotId};
use crate::store::ingest::{ingest, recover_and_ingest};
use crate::store::lock::{LockPurpose, SystemLockEnv};
use crate::store::repo::{InitOptions, RepoError, Repository};
use crate::store::repo_target::RepoTarget;
use crate::store::snapshot::{SnapshotKind, SnapshotRecord, TopEncoding};
use crate::store::storage::{LocalStorage, NewFile, Storage, StorageError, StorageResult};
use crate::store::stream::Stream;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The repository's folder on the drive (format.md: "by default `Cradle/`").
pub const REPO_DIR: &str = "Cradle";
/// Bytes of new file content read back after each backup (spread over the new files); the
/// top files and the whole file table are always read.
pub const VERIFY_SAMPLE_BYTES: u64 = 64 << 20;
/// Largest Manifest.db read back into a temporary file to be opened.
pub const MANIFEST_DB_MAX: u64 = 2 << 30;
/// Names a `Cradle/` folder may hold besides a repository and still be made one: the run log,
/// and what an interrupted `init` leaves.
const OWN_NAMES: &[&str] = &[
    RUN_LOG_FILE,
    "README.txt",
    "keys",
    "packs",
    "snapshots",
    "pins",
    "locks",
    "staging",
    "index",
];

/// The drive's repository (see module docs).
#[derive(Debug, Clone)]
pub struct RepoDestination {
    repo_dir: PathBuf,
    init: InitOptions,
    limit: Option<u64>,
    sample: u64,
}

impl RepoDestination {
    /// The repository `<drive_root>/Cradle`.
    pub fn new(drive_root: &Path) -> Self {
        RepoDestination {
            repo_dir: drive_root.join(REPO_DIR),
            init: InitOptions::default(),
            limit: None,
            sample: VERIFY_SAMPLE_BYTES,
        }
    }

    /// Settings for a repository this destination creates (tests and the demo use cheaper key
    /// derivation and smaller chunks).
    pub fn with_init_options(mut self, init: InitOptions) -> Self {
        self.init = init;
        self
    }

    /// Lets the repository grow by at most `bytes` per backup on top of what is there: past
    /// it, writes fail as on a full drive (for owners sharing the drive, and for tests).
    pub fn with_byte_limit(mut self, bytes: u64) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// The repository folder.
    pub fn repo_dir(&self) -> &Path {
        &self.repo_dir
    }

    fn repo_err(&self, what: &str, e: impl std::fmt::Display) -> DestinationError {
        DestinationError::Repo {
            path: self.repo_dir.clone(),
            reason: format!("{what}: {e}"),
        }
    }

    /// Opens the repository, creating it when the folder is new or holds only Cradle's own
    /// files; refuses a folder with anything else.
    fn open(
        &self,
        password: Option<&Password>,
        storage: Arc<WatchedStorage>,
    ) -> Result<Repository, DestinationError> {
        let Some(pw) = password else {
            return Err(DestinationError::Password {
                path: self.repo_dir.clone(),
                reason: "the box has no password to open or create the repository with",
            });
        };
        match Repository::open(storage.clone(), pw) {
            Ok(r) => Ok(r),
            Err(RepoError::WrongPassword | RepoError::NoKeyFiles) => {
                Err(DestinationError::Password {
                    path: self.repo_dir.clone(),
                    reason: "the box's password does not open this repository",
                })
            }
            Err(RepoError::NotARepository) => {
                let names = std::fs::read_dir(&self.repo_dir)
                    .map_err(|source| DestinationError::Io {
                        path: self.repo_dir.clone(),
                        source,
                    })?
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>();
                if let Some(found) = names.iter().find(|n| !OWN_NAMES.contains(&n.as_str())) {
                    return Err(DestinationError::NotCradle {
                        path: self.repo_dir.clone(),
                        found: found.clone(),
                    });
                }
                tracing::info!(repo = %self.repo_dir.display(), "creating the Cradle repository");
                Repository::init(storage, pw, &self.init).map_err(|e| self.failed("creating", e))
            }
            Err(e) => Err(self.failed("opening", e)),
        }
    }

    fn failed(&self, what: &str, e: impl std::error::Error + 'static) -> DestinationError {
        if error_chain_says_full(&e) {
            DestinationError::Full {
                path: self.repo_dir.clone(),
            }
        } else {
            self.repo_err(what, e)
        }
    }

    fn storage(&self) -> Result<Arc<WatchedStorage>, DestinationError> {
        // The drive's root must be there (mounted); only `Cradle/` itself may be made.
        let drive = self.repo_dir.parent().unwrap_or(&self.repo_dir);
        let io = |source| DestinationError::Io {
            path: self.repo_dir.clone(),
            source,
        };
        if !drive.is_dir() {
            return Err(io(std::io::ErrorKind::NotFound.into()));
        }
        match std::fs::create_dir(&self.repo_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let local = LocalStorage::new(&self.repo_dir).map_err(|e| self.failed("opening", e))?;
        Ok(Arc::new(WatchedStorage::new(Arc::new(local), self.limit)))
    }
}

impl Destination for RepoDestination {
    fn describe(&self) -> String {
        format!("Cradle repository in {}", self.repo_dir.display())
    }

    fn root(&self) -> &Path {
        &self.repo_dir
    }

    fn store(
        &self,
        req: &StoreRequest<'_>,
        receive: &mut Receive<'_>,
        progress: &mut dyn FnMut(StoreProgress),
    ) -> Result<Stored, DestinationError> {
        let storage = self.storage()?;
        let full = |storage: &WatchedStorage, e: DestinationError| {
            if storage.saw_no_space() {
                DestinationError::Full {
                    path: self.repo_dir.clone(),
                }
            } else {
                e
            }
        };
        let mut repo = self.open(req.box_password, storage.clone())?;
        let lock = repo
            .lock_writer(LockPurpose::Ingest, &SystemLockEnv)
            .map_err(|e| DestinationError::Busy {
                path: self.repo_dir.clone(),
                reason: e.to_string(),
            })?;
        let result = (|| {
            let ingest_pw = req.phone_password.or(req.box_password);
            // A backup a power cut or a pulled drive interrupted after the phone was done.
            for r in recover_and_ingest(&mut repo, ingest_pw)
                .map_err(|e| full(&storage, self.failed("finishing an earlier backup", e)))?
            {
                tracing::info!(snapshot = %r.snapshot, udid = %r.udid, "finished an interrupted ingest");
            }
            let before = stored_bytes(&self.repo_dir);
            let mut target = RepoTarget::start(&repo, req.udid, req.encrypted)
                .map_err(|e| full(&storage, self.failed("starting a staging session", e)))?;
            if let Err(e) = receive(&mut target) {
                if let Err(a) = target.abandon() {
                    tracing::warn!(error = %a, "removing the unfinished staging session");
                }
                return Err(full(&storage, DestinationError::Receive(Box::new(e))));
            }
            let session = target
                .finish()
                .map_err(|e| full(&storage, self.failed("closing the staging session", e)))?;
            progress(StoreProgress::Saving);
            // From here the session is `done`: if ingest fails, the next backup finishes it.
            let report = ingest(&mut repo, session, ingest_pw)
                .map_err(|e| full(&storage, self.failed("ingesting", e)))?;
            progress(StoreProgress::Verifying(0));
            let record = repo
                .load_snapshot(&report.snapshot)
                .map_err(|e| check_err(&report.snapshot, e))?;
            verify(&repo, &report.snapshot, &record, self.sample, progress)?;
            let after = stored_bytes(&self.repo_dir);
            Ok(Stored {
                new_bytes: after.saturating_sub(before),
                logical_bytes: record.content_bytes,
                encrypted: req.encrypted,
                password_known: !req.encrypted || record.kind == SnapshotKind::Digested,
                snapshot: Some(report.snapshot.to_hex()),
            })
        })();
        if let Err(e) = lock.release() {
            tracing::warn!(error = %e, "releasing the repository's writer lock");
        }
        result
    }
}

/// Bytes the repository keeps on the drive for snapshots (packs and records; not the index).
pub fn stored_bytes(repo_dir: &Path) -> u64 {
    dir_bytes(&repo_dir.join("packs")) + dir_bytes(&repo_dir.join("snapshots"))
}

fn check_err(id: &SnapshotId, e: impl std::fmt::Display) -> DestinationError {
    DestinationError::Check {
        snapshot: id.to_hex(),
        reason: e.to_string(),
    }
}

/// Reads a new snapshot back: its record (already loaded), every top file, Manifest.db opened as
/// a database when it is stored decrypted, the whole file table, and a sample of the file
/// contents that are new since the parent snapshot, each chunk checked against its keyed id.
fn verify(
    repo: &Repository,
    id: &SnapshotId,
    record: &SnapshotRecord,
    sample: u64,
    progress: &mut dyn FnMut(StoreProgress),
) -> Result<(), DestinationError> {
    for top in &record.top_files {
        if top.encoding == TopEncoding::ManifestDbPlain {
            if top.stream.length > MANIFEST_DB_MAX {
                return Err(check_err(id, "Manifest.db is too large to check"));
            }
            let tmp = tempfile::NamedTempFile::new().map_err(|e| check_err(id, e))?;
            let mut f = tmp.reopen().map_err(|e| check_err(id, e))?;
            repo.read_stream(&top.stream, &mut f)
                .map_err(|e| check_err(id, e))?;
            let db = ManifestDb::open(tmp.path()).map_err(|e| check_err(id, e))?;
            db.count().map_err(|e| check_err(id, e))?;
        } else {
            repo.read_stream(&top.stream, &mut std::io::sink())
                .map_err(|e| check_err(id, e))?;
        }
    }
    progress(StoreProgress::Verifying(200));
    let mut known: HashSet<ChunkId> = HashSet::new();
    if !record.parent.is_zero() {
        if let Ok(parent) = repo.load_snapshot(&record.parent) {
            let mut r = repo.file_table_reader(&parent.file_table);
            while let Some(e) = r.next_entry(repo).map_err(|e| check_err(id, e))? {
                if let Some(s) = e.content.stream() {
                    known.extend(s.ids.iter().copied());
                }
            }
        }
    }
    let mut fresh: Vec<Stream> = Vec::new();
    let mut r = repo.file_table_reader(&record.file_table);
    while let Some(e) = r.next_entry(repo).map_err(|e| check_err(id, e))? {
        if let Some(s) = e.content.stream() {
            if s.ids.iter().any(|c| !known.contains(c)) {
                fresh.push(s.clone());
            }
        }
    }
    progress(StoreProgress::Verifying(400));
    // Every k-th new file so that about `sample` bytes are read, spread over the backup.
    let total: u64 = fresh.iter().map(|s| s.length).sum();
    let step = total.div_ceil(sample.max(1)).max(1) as usize;
    let picked: Vec<&Stream> = fresh.iter().step_by(step).collect();
    for (i, s) in picked.iter().enumerate() {
        repo.read_stream(s, &mut std::io::sink())
            .map_err(|e| check_err(id, e))?;
        let pm = 400 + 600 * (i + 1) / picked.len().max(1);
        progress(StoreProgress::Verifying(u16::try_from(pm).unwrap_or(1000)));
    }
    progress(StoreProgress::Verifying(1000));
    Ok(())
}

/// `Storage` that notes a full drive (so a failure deep in a phone session is still reported
/// as "drive full") and can cap how many bytes one backup may add.
#[derive(Debug)]
pub struct WatchedStorage {
    inner: Arc<dyn Storage>,
    left: Option<Arc<AtomicU64>>,
    no_space: Arc<AtomicBool>,
}

impl WatchedStorage {
    /// Wraps `inner`; with `limit`, writes beyond that many bytes fail with `NoSpace`.
    pub fn new(inner: Arc<dyn Storage>, limit: Option<u64>) -> Self {
        WatchedStorage {
            inner,
            left: limit.map(|l| Arc::new(AtomicU64::new(l))),
            no_space: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a write failed for lack of room.
    pub fn saw_no_space(&self) -> bool {
        self.no_space.load(Ordering::SeqCst)
    }

    fn note<T>(&self, r: StorageResult<T>) -> StorageResult<T> {
        note(&self.no_space, r)
    }

    fn take(&self, path: &str, n: usize) -> StorageResult<()> {
        take(self.left.as_deref(), &self.no_space, path, n)
    }
}

fn note<T>(flag: &AtomicBool, r: StorageResult<T>) -> StorageResult<T> {
    if matches!(r, Err(StorageError::NoSpace { .. })) {
        flag.store(true, Ordering::SeqCst);
    }
    r
}

fn take(left: Option<&AtomicU64>, flag: &AtomicBool, path: &str, n: usize) -> StorageResult<()> {
    let Some(left) = left else { return Ok(()) };
    let n = n as u64;
    let ok = left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(n))
        .is_ok();
    if ok {
        Ok(())
    } else {
        flag.store(true, Ordering::SeqCst);
        Err(StorageError::NoSpace {
            path: path.to_string(),
        })
    }
}

struct WatchedFile {
    inner: Box<dyn NewFile>,
    path: String,
    left: Option<Arc<AtomicU64>>,
    no_space: Arc<AtomicBool>,
}

impl NewFile for WatchedFile {
    fn write(&mut self, bytes: &[u8]) -> StorageResult<()> {
        take(
            self.left.as_deref(),
            &self.no_space,
            &self.path,
            bytes.len(),
        )?;
        note(&self.no_space, self.inner.write(bytes))
    }
    fn written(&self) -> u64 {
        self.inner.written()
    }
    fn finish(self: Box<Self>) -> StorageResult<()> {
        let flag = self.no_space.clone();
        note(&flag, self.inner.finish())
    }
    fn finish_unsynced(self: Box<Self>) -> StorageResult<()> {
        let flag = self.no_space.clone();
        note(&flag, self.inner.finish_unsynced())
    }
}

impl Storage for WatchedStorage {
    fn list(&self, dir: &str) -> StorageResult<Vec<String>> {
        self.inner.list(dir)
    }
    fn exists(&self, path: &str) -> StorageResult<bool> {
        self.inner.exists(path)
    }
    fn size(&self, path: &str) -> StorageResult<u64> {
        self.inner.size(path)
    }
    fn read(&self, path: &str, cap: u64) -> StorageResult<Vec<u8>> {
        self.inner.read(path, cap)
    }
    fn read_range(&self, path: &str, offset: u64, len: u64) -> StorageResult<Vec<u8>> {
        self.inner.read_range(path, offset, len)
    }
    fn create_streaming(&self, path: &str) -> StorageResult<Box<dyn NewFile>> {
        let inner = self.note(self.inner.create_streaming(path))?;
        Ok(Box::new(WatchedFile {
            inner,
            path: path.to_string(),
            left: self.left.clone(),
            no_space: self.no_space.clone(),
        }))
    }
    fn create_exclusive(&self, path: &str, bytes: &[u8]) -> StorageResult<()> {
        self.take(path, bytes.len())?;
        self.note(self.inner.create_exclusive(path, bytes))
    }
    fn delete(&self, path: &str) -> StorageResult<()> {
        self.inner.delete(path)
    }
    fn delete_dir_all(&self, path: &str) -> StorageResult<()> {
        self.inner.delete_dir_all(path)
    }
    fn create_dir(&self, path: &str) -> StorageResult<()> {
        self.note(self.inner.create_dir(path))
    }
    fn append(&self, path: &str, bytes: &[u8]) -> StorageResult<()> {
        self.take(path, bytes.len())?;
        self.note(self.inner.append(path, bytes))
    }
    fn truncate(&self, path: &str, len: u64) -> StorageResult<()> {
        self.inner.truncate(path, len)
    }
    fn sync_file(&self, path: &str) -> StorageResult<()> {
        self.note(self.inner.sync_file(path))
    }
    fn sync_dir(&self, dir: &str) -> StorageResult<()> {
        self.note(self.inner.sync_dir(dir))
    }
    fn sync_all(&self) -> StorageResult<()> {
        self.note(self.inner.sync_all())
    }
    fn modified_ms(&self, path: &str) -> StorageResult<i64> {
        self.inner.modified_ms(path)
    }
    fn touch(&self, path: &str) -> StorageResult<()> {
        self.inner.touch(path)
    }
    fn local_root(&self) -> Option<&Path> {
        self.inner.local_root()
    }
    /// The smaller of what the drive has and what the limit leaves: the phone is told this.
    fn free_bytes(&self) -> StorageResult<Option<u64>> {
        let inner = self.note(self.inner.free_bytes())?;
        let Some(left) = &self.left else {
            return Ok(inner);
        };
        let left = left.load(Ordering::SeqCst);
        Ok(Some(inner.map_or(left, |i| i.min(left))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_limit_fails_writes_as_a_full_drive_and_is_noted() {
        let dir = tempfile::tempdir().unwrap();
        let s = WatchedStorage::new(Arc::new(LocalStorage::new(dir.path()).unwrap()), Some(10));
        s.create("a", b"12345").unwrap();
        assert!(!s.saw_no_space());
        // What the phone is told: the limit's remainder, not the file system's free space.
        assert_eq!(s.free_bytes().unwrap(), Some(5));
        let e = s.create("b", b"123456").unwrap_err();
        assert!(matches!(e, StorageError::NoSpace { .. }), "{e}");
        assert!(s.saw_no_space());
        assert!(!s.exists("b").unwrap());
        let unlimited = WatchedStorage::new(Arc::new(LocalStorage::new(dir.path()).unwrap()), None);
        unlimited.create("c", &[0; 100]).unwrap();
        assert!(!unlimited.saw_no_space());
        // Without a limit: the file system's own figure.
        assert!(unlimited.free_bytes().unwrap().is_some());
    }

    #[test]
    fn a_cradle_folder_with_foreign_files_is_not_made_a_repository() {
        let drive = tempfile::tempdir().unwrap();
        std::fs::create_dir(drive.path().join(REPO_DIR)).unwrap();
        std::fs::write(drive.path().join(REPO_DIR).join("holiday.jpg"), b"x").unwrap();
        let d = RepoDestination::new(drive.path()).with_init_options(InitOptions::for_tests());
        let pw = Password::new("pw");
        let e = d.open(Some(&pw), d.storage().unwrap()).unwrap_err();
        assert!(matches!(e, DestinationError::NotCradle { .. }), "{e}");
        assert_eq!(
            std::fs::read_dir(drive.path().join(REPO_DIR))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn the_repository_is_created_once_and_then_needs_its_password() {
        let drive = tempfile::tempdir().unwrap();
        let d = RepoDestination::new(drive.path()).with_init_options(InitOptions::for_tests());
        // Only the run log so far: still ours to create.
        std::fs::create_dir(d.repo_dir()).unwrap();
        std::fs::write(d.repo_dir().join(RUN_LOG_FILE), b"").unwrap();
        let pw = Password::new("box password");
        d.open(Some(&pw), d.storage().unwrap()).unwrap();
        d.open(Some(&pw), d.storage().unwrap()).unwrap();
        for bad in [Some(Password::new("other")), None] {
            let e = d.open(bad.as_ref(), d.storage().unwrap()).unwrap_err();
            assert!(matches!(e, DestinationError::Password { .. }), "{e}");
        }
    }

    #[test]
    fn a_missing_drive_is_not_recreated() {
        let drive = tempfile::tempdir().unwrap();
        let gone = drive.path().join("gone");
        let d = RepoDestination::new(&gone);
        assert!(matches!(d.storage(), Err(DestinationError::Io { .. })));
        assert!(!gone.exists());
    }
}
