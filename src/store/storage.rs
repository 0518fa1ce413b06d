//! Where repository files live (format.md §4, §17, §21): a small `Storage` trait over names relative
//! to the repository root, a local file-system implementation, and an in-memory crash simulator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// A failed storage operation, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file or directory does not exist.
    #[error("{path}: not found")]
    NotFound {
        /// Repository-relative path.
        path: String,
    },
    /// The name is taken (atomic create and exclusive create never replace).
    #[error("{path}: already exists")]
    AlreadyExists {
        /// Repository-relative path.
        path: String,
    },
    /// The file is larger than the caller's cap.
    #[error("{path}: {size} bytes exceeds the cap of {cap}")]
    TooLarge {
        /// Repository-relative path.
        path: String,
        /// Size found.
        size: u64,
        /// Cap applied.
        cap: u64,
    },
    /// A range read went past the end of the file.
    #[error("{path}: range {offset}+{len} is beyond the end ({size} bytes)")]
    ShortRead {
        /// Repository-relative path.
        path: String,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// File size.
        size: u64,
    },
    /// The drive is full.
    #[error("{path}: no space left on the drive")]
    NoSpace {
        /// Repository-relative path.
        path: String,
    },
    /// A name that Cradle never writes (absolute, `..`, upper case where names are hex, or a
    /// temporary name needing more exFAT entries than its final name).
    #[error("{path}: bad name ({reason})")]
    BadName {
        /// The offending path.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Any other I/O failure (including a drive that vanished).
    #[error("{path}: {source}")]
    Io {
        /// Repository-relative path.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    fn from_io(path: &str, e: io::Error) -> Self {
        let path = path.to_string();
        match e.kind() {
            io::ErrorKind::NotFound => StorageError::NotFound { path },
            io::ErrorKind::AlreadyExists => StorageError::AlreadyExists { path },
            io::ErrorKind::StorageFull => StorageError::NoSpace { path },
            _ => StorageError::Io { path, source: e },
        }
    }

    /// True when the error says the file is absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

/// Result of a storage operation.
pub type StorageResult<T> = Result<T, StorageError>;

/// A file being written under its temporary name; `finish` makes it durable under its final name.
/// Dropping it without `finish` leaves the temporary file, which the next writer's recovery deletes.
pub trait NewFile: Send {
    /// Appends bytes.
    fn write(&mut self, bytes: &[u8]) -> StorageResult<()>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// fsync, rename to the final name (never replacing one), fsync the directory.
    fn finish(self: Box<Self>) -> StorageResult<()>;
    /// Renames to the final name (never replacing one) without any fsync: neither the bytes nor
    /// the name are durable until `Storage::sync_all`. For files many of which are made durable
    /// together (received files of a staging session, format.md §12).
    fn finish_unsynced(self: Box<Self>) -> StorageResult<()> {
        self.finish()
    }
}

/// The repository's files, by names relative to its root with `/` separators (format.md §21).
///
/// Final names are created once (`create`, `create_streaming`) and never rewritten; only journals
/// are appended to. Directories are created durably by `create_dir`.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Names directly inside `dir` (`""` is the root), files and directories, sorted.
    fn list(&self, dir: &str) -> StorageResult<Vec<String>>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &str) -> StorageResult<bool>;
    /// Size of a file.
    fn size(&self, path: &str) -> StorageResult<u64>;
    /// Whole file, refused with `TooLarge` before reading if it exceeds `cap`.
    fn read(&self, path: &str, cap: u64) -> StorageResult<Vec<u8>>;
    /// Exactly `len` bytes at `offset`, or `ShortRead`.
    fn read_range(&self, path: &str, offset: u64, len: u64) -> StorageResult<Vec<u8>>;
    /// Starts writing `path` under its temporary name (`path.tmp`, truncated if left over).
    fn create_streaming(&self, path: &str) -> StorageResult<Box<dyn NewFile>>;
    /// Atomically creates `path` with `bytes`: temporary name, fsync, rename, directory fsync.
    fn create(&self, path: &str, bytes: &[u8]) -> StorageResult<()> {
        let mut f = self.create_streaming(path)?;
        f.write(bytes)?;
        f.finish()
    }
    /// Creates `path` only if absent (`O_CREAT | O_EXCL`), writes, fsyncs it and its directory.
    fn create_exclusive(&self, path: &str, bytes: &[u8]) -> StorageResult<()>;
    /// Deletes a file (not durable until `sync_dir` of its directory).
    fn delete(&self, path: &str) -> StorageResult<()>;
    /// Deletes a directory and everything under it.
    fn delete_dir_all(&self, path: &str) -> StorageResult<()>;
    /// Creates a directory and its parents, durably.
    fn create_dir(&self, path: &str) -> StorageResult<()>;
    /// Appends to a journal, creating it if absent; durable after `sync_file`.
    fn append(&self, path: &str, bytes: &[u8]) -> StorageResult<()>;
    /// Cuts a journal to `len` bytes (a torn last frame); durable after `sync_file`.
    fn truncate(&self, path: &str, len: u64) -> StorageResult<()>;
    /// fsync of a file.
    fn sync_file(&self, path: &str) -> StorageResult<()>;
    /// fsync of a directory (and, on exFAT, `syncfs`).
    fn sync_dir(&self, dir: &str) -> StorageResult<()>;
    /// Makes everything written, created, renamed or deleted so far durable, at once (`syncfs`
    /// of the drive's file system).
    fn sync_all(&self) -> StorageResult<()>;
    /// When a file was last written or touched, in ms since the epoch (by the storage's clock).
    fn modified_ms(&self, path: &str) -> StorageResult<i64>;
    /// Sets a file's modification time to now: a lock holder's refresh (format.md §11).
    fn touch(&self, path: &str) -> StorageResult<()>;
    /// The repository root on the local file system, where a local index may live; `None` for
    /// storage that is not a local folder.
    fn local_root(&self) -> Option<&Path>;
    /// Bytes that can still be written, as far as the storage knows (`None`: no known limit).
    /// By default the free space of the file system under `local_root`.
    fn free_bytes(&self) -> StorageResult<Option<u64>> {
        let Some(root) = self.local_root() else {
            return Ok(None);
        };
        let v = rustix::fs::statvfs(root)
            .map_err(|e| StorageError::from_io(&root.display().to_string(), e.into()))?;
        Ok(Some(v.f_bavail.saturating_mul(v.f_frsize)))
    }
}

/// `t` in ms since the epoch (0 for a time before it).
fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Checks a repository-relative name: non-empty `/`-separated components, none empty, `.` or
/// `..`, no backslash or NUL. `""` (the root) is accepted only where `allow_root`.
pub fn check_path(path: &str, allow_root: bool) -> StorageResult<()> {
    if path.is_empty() {
        return if allow_root {
            Ok(())
        } else {
            Err(bad(path, "empty"))
        };
    }
    for c in path.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(bad(path, "empty, . or .. component"));
        }
        if c.contains(['\\', '\0']) {
            return Err(bad(path, "backslash or NUL"));
        }
    }
    Ok(())
}

fn bad(path: &str, reason: &'static str) -> StorageError {
    StorageError::BadName {
        path: path.to_string(),
        reason,
    }
}

/// Number of exFAT File Name directory entries a name needs (15 UTF-16 units each).
pub fn exfat_name_entries(name: &str) -> usize {
    name.encode_utf16().count().div_ceil(15)
}

/// The temporary name of `path`, refused when it would need more exFAT entries than the final
/// name (the exFAT driver then renames in two steps, see format.md §4).
pub fn tmp_name(path: &str) -> StorageResult<String> {
    check_path(path, false)?;
    let tmp = format!("{path}.tmp");
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    if exfat_name_entries(&base(path)) != exfat_name_entries(&base(&tmp)) {
        return Err(bad(path, "temporary name needs more exFAT entries"));
    }
    Ok(tmp)
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    }
}

// ---------------------------------------------------------------------------------------------
// Local file system

/// Environment variable of the crash-test hook: the process aborts right after its Nth fsync on
/// a `LocalStorage` (debug builds only; see [`after_fsync`]).
pub const KILL_AFTER_FSYNCS_ENV: &str = "CRADLE_TEST_KILL_AFTER_FSYNCS";

/// Crash-test hook, compiled into debug builds only (release builds, which the box runs, have
/// an empty function): with `CRADLE_TEST_KILL_AFTER_FSYNCS=N` set, the process aborts (no
/// destructors, no buffered writes flushed, exactly like SIGKILL for the files it leaves) right
/// after its Nth fsync, so tests/crash_kill.rs can stop a real `cradle` at exact points of the
/// commit order. Without the variable it only counts.
#[cfg(debug_assertions)]
fn after_fsync() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let limit = LIMIT.get_or_init(|| {
        std::env::var(KILL_AFTER_FSYNCS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(limit) = *limit {
        if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == limit {
            std::process::abort();
        }
    }
}

#[cfg(not(debug_assertions))]
fn after_fsync() {}

/// `Storage` on a local folder: ext4 or exFAT (format.md §17).
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    exfat: bool,
}

/// exFAT's `f_type` in statfs.
const EXFAT_SUPER_MAGIC: i64 = 0x2011_BAB0;

impl LocalStorage {
    /// Uses the folder `root` (which must exist). Detects exFAT, where directory fsyncs are
    /// followed by `syncfs`.
    pub fn new(root: impl Into<PathBuf>) -> StorageResult<Self> {
        let root = root.into();
        let f =
            File::open(&root).map_err(|e| StorageError::from_io(&root.display().to_string(), e))?;
        // `f_type`'s integer type differs between targets (i64 here, u32/i32 on 32-bit ARM).
        #[allow(clippy::unnecessary_cast)]
        let exfat = rustix::fs::fstatfs(&f)
            .map(|s| s.f_type as i64 == EXFAT_SUPER_MAGIC)
            .unwrap_or(false);
        Ok(LocalStorage { root, exfat })
    }

    fn full(&self, path: &str, allow_root: bool) -> StorageResult<PathBuf> {
        check_path(path, allow_root)?;
        Ok(if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        })
    }

    fn fsync_dir(&self, dir: &str) -> StorageResult<()> {
        let p = self.full(dir, true)?;
        let f = File::open(&p).map_err(|e| StorageError::from_io(dir, e))?;
        f.sync_all().map_err(|e| StorageError::from_io(dir, e))?;
        if self.exfat {
            rustix::fs::syncfs(&f).map_err(|e| StorageError::from_io(dir, e.into()))?;
        }
        after_fsync();
        Ok(())
    }

    fn rename_noreplace(&self, from: &Path, to: &Path, name: &str) -> StorageResult<()> {
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            from,
            rustix::fs::CWD,
            to,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                // File systems without RENAME_NOREPLACE: we hold the writer lock, so check then rename.
                if to.exists() {
                    return Err(StorageError::AlreadyExists {
                        path: name.to_string(),
                    });
                }
                std::fs::rename(from, to).map_err(|e| StorageError::from_io(name, e))
            }
            Err(e) => Err(StorageError::from_io(name, e.into())),
        }
    }
}

struct LocalNewFile {
    storage: LocalStorage,
    path: String,
    tmp: PathBuf,
    file: io::BufWriter<File>,
    written: u64,
}

impl NewFile for LocalNewFile {
    fn write(&mut self, bytes: &[u8]) -> StorageResult<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| StorageError::from_io(&self.path, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn finish(self: Box<Self>) -> StorageResult<()> {
        let (storage, path) = (*self).close_and_rename(true)?;
        storage.fsync_dir(parent_of(&path))
    }

    fn finish_unsynced(self: Box<Self>) -> StorageResult<()> {
        (*self).close_and_rename(false).map(|_| ())
    }
}

impl LocalNewFile {
    /// Flushes and closes the temporary file (fsynced first when `sync`), then renames it to
    /// its name; returns what the caller may still need to make the rename durable.
    fn close_and_rename(self, sync: bool) -> StorageResult<(LocalStorage, String)> {
        let LocalNewFile {
            storage,
            path,
            tmp,
            file,
            ..
        } = self;
        let file = file
            .into_inner()
            .map_err(|e| StorageError::from_io(&path, e.into_error()))?;
        if sync {
            file.sync_all()
                .map_err(|e| StorageError::from_io(&path, e))?;
            after_fsync();
        }
        drop(file);
        let fin = storage.full(&path, false)?;
        storage.rename_noreplace(&tmp, &fin, &path)?;
        Ok((storage, path))
    }
}

impl Storage for LocalStorage {
    fn list(&self, dir: &str) -> StorageResult<Vec<String>> {
        let p = self.full(dir, true)?;
        let mut out = Vec::new();
        for e in std::fs::read_dir(&p).map_err(|e| StorageError::from_io(dir, e))? {
            let e = e.map_err(|e| StorageError::from_io(dir, e))?;
            // Names that are not UTF-8 were not written by Cradle; they are skipped.
            if let Ok(n) = e.file_name().into_string() {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, path: &str) -> StorageResult<bool> {
        let p = self.full(path, true)?;
        match std::fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::from_io(path, e)),
        }
    }

    fn size(&self, path: &str) -> StorageResult<u64> {
        let p = self.full(path, false)?;
        std::fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| StorageError::from_io(path, e))
    }

    fn read(&self, path: &str, cap: u64) -> StorageResult<Vec<u8>> {
        let p = self.full(path, false)?;
        let f = File::open(&p).map_err(|e| StorageError::from_io(path, e))?;
        let size = f
            .metadata()
            .map_err(|e| StorageError::from_io(path, e))?
            .len();
        if size > cap {
            return Err(StorageError::TooLarge {
                path: path.to_string(),
                size,
                cap,
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        // `take` guards against a file that grew after the size check.
        f.take(cap + 1)
            .read_to_end(&mut out)
            .map_err(|e| StorageError::from_io(path, e))?;
        if out.len() as u64 > cap {
            return Err(StorageError::TooLarge {
                path: path.to_string(),
                size: out.len() as u64,
                cap,
            });
        }
        Ok(out)
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> StorageResult<Vec<u8>> {
        let p = self.full(path, false)?;
        let mut f = File::open(&p).map_err(|e| StorageError::from_io(path, e))?;
        let size = f
            .metadata()
            .map_err(|e| StorageError::from_io(path, e))?
            .len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(StorageError::ShortRead {
                path: path.to_string(),
                offset,
                len,
                size,
            });
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| StorageError::from_io(path, e))?;
        let mut out = vec![0u8; len as usize];
        f.read_exact(&mut out).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => StorageError::ShortRead {
                path: path.to_string(),
                offset,
                len,
                size,
            },
            _ => StorageError::from_io(path, e),
        })?;
        Ok(out)
    }

    fn create_streaming(&self, path: &str) -> StorageResult<Box<dyn NewFile>> {
        let tmp_rel = tmp_name(path)?;
        let fin = self.full(path, false)?;
        if fin.exists() {
            return Err(StorageError::AlreadyExists {
                path: path.to_string(),
            });
        }
        let tmp = self.full(&tmp_rel, false)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StorageError::from_io(&tmp_rel, e))?;
        Ok(Box::new(LocalNewFile {
            storage: self.clone(),
            path: path.to_string(),
            tmp,
            file: io::BufWriter::with_capacity(1 << 20, file),
            written: 0,
        }))
    }

    fn create_exclusive(&self, path: &str, bytes: &[u8]) -> StorageResult<()> {
        let p = self.full(path, false)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| StorageError::from_io(path, e))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| StorageError::from_io(path, e))?;
        after_fsync();
        self.fsync_dir(parent_of(path))
    }

    fn delete(&self, path: &str) -> StorageResult<()> {
        let p = self.full(path, false)?;
        std::fs::remove_file(&p).map_err(|e| StorageError::from_io(path, e))
    }

    fn delete_dir_all(&self, path: &str) -> StorageResult<()> {
        let p = self.full(path, false)?;
        std::fs::remove_dir_all(&p).map_err(|e| StorageError::from_io(path, e))
    }

    fn create_dir(&self, path: &str) -> StorageResult<()> {
        let p = self.full(path, false)?;
        std::fs::create_dir_all(&p).map_err(|e| StorageError::from_io(path, e))?;
        self.fsync_dir(parent_of(path))
    }

    fn append(&self, path: &str, bytes: &[u8]) -> StorageResult<()> {
        let p = self.full(path, false)?;
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&p)
            .map_err(|e| StorageError::from_io(path, e))?;
        f.write_all(bytes)
            .map_err(|e| StorageError::from_io(path, e))
    }

    fn truncate(&self, path: &str, len: u64) -> StorageResult<()> {
        let p = self.full(path, false)?;
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| StorageError::from_io(path, e))?;
        f.set_len(len).map_err(|e| StorageError::from_io(path, e))
    }

    fn sync_file(&self, path: &str) -> StorageResult<()> {
        let p = self.full(path, false)?;
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| StorageError::from_io(path, e))?;
        f.sync_all().map_err(|e| StorageError::from_io(path, e))?;
        after_fsync();
        Ok(())
    }

    fn sync_dir(&self, dir: &str) -> StorageResult<()> {
        self.fsync_dir(dir)
    }

    fn sync_all(&self) -> StorageResult<()> {
        let f = File::open(&self.root).map_err(|e| StorageError::from_io("", e))?;
        rustix::fs::syncfs(&f).map_err(|e| StorageError::from_io("", e.into()))?;
        after_fsync();
        Ok(())
    }

    fn modified_ms(&self, path: &str) -> StorageResult<i64> {
        let p = self.full(path, false)?;
        let m = std::fs::metadata(&p)
            .and_then(|m| m.modified())
            .map_err(|e| StorageError::from_io(path, e))?;
        Ok(epoch_ms(m))
    }

    fn touch(&self, path: &str) -> StorageResult<()> {
        let p = self.full(path, false)?;
        OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .map_err(|e| StorageError::from_io(path, e))
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory crash simulator

/// In-memory `Storage` that keeps what was fsynced apart from what was only written, so a test can
/// "pull the drive" at any point (as redb's `CrashBackend` does).
///
/// Model: a file's bytes become durable at `sync_file` (or `finish`/`create_exclusive`); a name
/// (created, renamed or deleted) becomes durable at `sync_dir` of its directory. Directories are
/// created and removed durably at once. `crash` keeps only what is durable. Clones share state.
#[derive(Clone, Default)]
pub struct CrashStorage {
    inner: Arc<Mutex<CrashState>>,
}

#[derive(Default)]
struct CrashState {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    live: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    dirs: BTreeSet<String>,
    last_write: Option<u64>,
    space_left: Option<u64>,
    removed: bool,
    fsyncs: u64,
    writes: u64,
    /// The drive is pulled once `fsyncs` reaches this.
    pull_at_fsync: Option<u64>,
    /// The drive is pulled once `writes` reaches this.
    pull_at_write: Option<u64>,
    /// Mutating `Storage` calls so far (not counting a `NewFile`'s writes and finish).
    ops: u64,
    /// The mutating call after this many fails, the drive pulled just before it.
    pull_at_op: Option<u64>,
    /// The clock of modification times, when a test set it (else the system's).
    clock_ms: Option<i64>,
}

#[derive(Default, Clone)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Modification time (ms since the epoch), kept across a power cut.
    modified: i64,
}

impl fmt::Debug for CrashStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CrashStorage")
    }
}

impl CrashStorage {
    /// An empty drive holding only its root directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, CrashState> {
        // A panic in another test thread must not hide this one's state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Power cut: keep only durable names and bytes.
    pub fn crash(&self) {
        self.crash_torn(0);
    }

    /// Power cut in which the last file written keeps up to `keep` bytes of its unsynced tail
    /// (a torn write), when that tail extends its durable bytes.
    pub fn crash_torn(&self, keep: usize) {
        let mut s = self.lock();
        if let Some(ino) = s.last_write.take() {
            if let Some(i) = s.inodes.get_mut(&ino) {
                if keep > 0 && i.live.starts_with(&i.durable) {
                    let end = (i.durable.len() + keep).min(i.live.len());
                    i.durable = i.live[..end].to_vec();
                }
            }
        }
        s.live = s.durable.clone();
        let reachable: BTreeSet<u64> = s.live.values().copied().collect();
        s.inodes.retain(|k, _| reachable.contains(k));
        for i in s.inodes.values_mut() {
            i.live = i.durable.clone();
        }
        s.removed = false;
        s.space_left = None;
        s.pull_at_fsync = None;
        s.pull_at_write = None;
        s.pull_at_op = None;
    }

    /// The drive is pulled (as `remove_drive`) right after `n` more fsyncs: the writer fails
    /// from there on, and a following `crash`/`crash_torn` shows what survived that moment.
    pub fn pull_after_fsyncs(&self, n: u64) {
        let mut s = self.lock();
        s.pull_at_fsync = Some(s.fsyncs + n);
    }

    /// The drive is pulled right after `n` more writes (appends or streamed writes).
    pub fn pull_after_writes(&self, n: u64) {
        let mut s = self.lock();
        s.pull_at_write = Some(s.writes + n);
    }

    /// The drive is pulled right before the mutating `Storage` call that follows `n` more of
    /// them (creates, deletes, directory creation, appends, truncates, fsyncs), so that call and
    /// every later one fails.
    pub fn pull_after_ops(&self, n: u64) {
        let mut s = self.lock();
        s.pull_at_op = Some(s.ops + n);
    }

    /// Sets the clock that stamps modification times (ms since the epoch) from now on.
    pub fn set_clock_ms(&self, ms: i64) {
        self.lock().clock_ms = Some(ms);
    }

    /// Number of writes (appends and streamed writes) so far.
    pub fn write_count(&self) -> u64 {
        self.lock().writes
    }

    /// An independent copy of the drive as it is now (live and durable state), to try many
    /// crashes from one starting point.
    pub fn fork(&self) -> CrashStorage {
        let s = self.lock();
        let copy = CrashState {
            inodes: s.inodes.clone(),
            next_ino: s.next_ino,
            live: s.live.clone(),
            durable: s.durable.clone(),
            dirs: s.dirs.clone(),
            last_write: s.last_write,
            space_left: s.space_left,
            removed: s.removed,
            fsyncs: s.fsyncs,
            writes: s.writes,
            pull_at_fsync: s.pull_at_fsync,
            pull_at_write: s.pull_at_write,
            ops: s.ops,
            pull_at_op: s.pull_at_op,
            clock_ms: s.clock_ms,
        };
        CrashStorage {
            inner: Arc::new(Mutex::new(copy)),
        }
    }

    /// After `n` more bytes written, every write fails with `NoSpace` (and `free_bytes` says
    /// what is left).
    pub fn fail_after_bytes(&self, n: u64) {
        self.lock().space_left = Some(n);
    }

    /// Space freed: writes no longer fail for lack of room.
    pub fn unlimited_space(&self) {
        self.lock().space_left = None;
    }

    /// Every operation fails from now on, as when the drive is unplugged.
    pub fn remove_drive(&self) {
        self.lock().removed = true;
    }

    /// Number of fsyncs (files and directories) so far.
    pub fn fsync_count(&self) -> u64 {
        self.lock().fsyncs
    }

    /// Every file name currently visible, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.lock().live.keys().cloned().collect()
    }

    /// Changes a file's bytes in place, durably (a test's bit rot or attacker).
    pub fn tamper(&self, path: &str, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut s = self.lock();
        let Some(&ino) = s.live.get(path) else {
            return false;
        };
        let Some(i) = s.inodes.get_mut(&ino) else {
            return false;
        };
        f(&mut i.live);
        i.durable = i.live.clone();
        true
    }
}

impl CrashState {
    fn check(&self, path: &str) -> StorageResult<()> {
        if self.removed {
            return Err(StorageError::Io {
                path: path.to_string(),
                source: io::Error::other("drive removed"),
            });
        }
        Ok(())
    }

    /// `check` for a mutating call, which is counted first (`pull_after_ops`).
    fn check_mutation(&mut self, path: &str) -> StorageResult<()> {
        self.ops += 1;
        if self.pull_at_op.is_some_and(|n| self.ops > n) {
            self.removed = true;
        }
        self.check(path)
    }

    fn ino(&self, path: &str) -> StorageResult<u64> {
        self.live
            .get(path)
            .copied()
            .ok_or_else(|| StorageError::NotFound {
                path: path.to_string(),
            })
    }

    fn dir_exists(&self, dir: &str) -> bool {
        dir.is_empty() || self.dirs.contains(dir)
    }

    fn need_parent(&self, path: &str) -> StorageResult<()> {
        if self.dir_exists(parent_of(path)) {
            Ok(())
        } else {
            Err(StorageError::NotFound {
                path: path.to_string(),
            })
        }
    }

    fn spend(&mut self, path: &str, n: usize) -> StorageResult<()> {
        if let Some(left) = self.space_left {
            if (n as u64) > left {
                self.space_left = Some(0);
                return Err(StorageError::NoSpace {
                    path: path.to_string(),
                });
            }
            self.space_left = Some(left - n as u64);
        }
        Ok(())
    }

    fn write(&mut self, path: &str, ino: u64, bytes: &[u8]) -> StorageResult<()> {
        self.check(path)?;
        self.spend(path, bytes.len())?;
        let now = self.now_ms();
        let inode = self.inodes.entry(ino).or_default();
        inode.live.extend_from_slice(bytes);
        inode.modified = now;
        self.last_write = Some(ino);
        self.writes += 1;
        if self.pull_at_write.is_some_and(|n| self.writes >= n) {
            self.removed = true;
        }
        Ok(())
    }

    fn count_fsync(&mut self) {
        self.fsyncs += 1;
        if self.pull_at_fsync.is_some_and(|n| self.fsyncs >= n) {
            self.removed = true;
        }
    }

    fn new_inode(&mut self) -> u64 {
        self.next_ino += 1;
        let inode = Inode {
            modified: self.now_ms(),
            ..Inode::default()
        };
        self.inodes.insert(self.next_ino, inode);
        self.next_ino
    }

    fn now_ms(&self) -> i64 {
        self.clock_ms.unwrap_or_else(|| epoch_ms(SystemTime::now()))
    }

    fn sync_ino(&mut self, ino: u64) {
        self.count_fsync();
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.durable = i.live.clone();
        }
        if self.last_write == Some(ino) {
            self.last_write = None;
        }
    }

    fn sync_dir(&mut self, dir: &str) {
        self.count_fsync();
        let in_dir = |p: &String| parent_of(p) == dir;
        self.durable.retain(|k, _| !in_dir(k));
        let live: Vec<(String, u64)> = self
            .live
            .iter()
            .filter(|(k, _)| in_dir(k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        self.durable.extend(live);
    }
}

struct CrashNewFile {
    storage: CrashStorage,
    path: String,
    tmp: String,
    ino: u64,
    written: u64,
}

impl NewFile for CrashNewFile {
    fn write(&mut self, bytes: &[u8]) -> StorageResult<()> {
        let mut s = self.storage.lock();
        // Written to the inode directly, so a crash mid-stream leaves a partial `.tmp`.
        s.write(&self.tmp, self.ino, bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn finish(self: Box<Self>) -> StorageResult<()> {
        (*self).close_and_rename(true)
    }

    fn finish_unsynced(self: Box<Self>) -> StorageResult<()> {
        (*self).close_and_rename(false)
    }
}

impl CrashNewFile {
    /// Renames the temporary file to its name; with `sync` its data is made durable first and
    /// the rename after, as `LocalStorage` does.
    fn close_and_rename(self, sync: bool) -> StorageResult<()> {
        let mut s = self.storage.lock();
        s.check(&self.path)?;
        if sync {
            s.sync_ino(self.ino);
            // A drive pulled right after that fsync: the rename never happens.
            s.check(&self.path)?;
        }
        if s.live.contains_key(&self.path) {
            return Err(StorageError::AlreadyExists { path: self.path });
        }
        if s.live.get(&self.tmp) != Some(&self.ino) {
            return Err(StorageError::NotFound { path: self.tmp });
        }
        s.live.remove(&self.tmp);
        s.live.insert(self.path.clone(), self.ino);
        if sync {
            s.sync_dir(parent_of(&self.path));
        }
        Ok(())
    }
}

impl Storage for CrashStorage {
    fn list(&self, dir: &str) -> StorageResult<Vec<String>> {
        check_path(dir, true)?;
        let s = self.lock();
        s.check(dir)?;
        if !s.dir_exists(dir) {
            return Err(StorageError::NotFound {
                path: dir.to_string(),
            });
        }
        let mut out = BTreeSet::new();
        for p in s.live.keys().chain(s.dirs.iter()) {
            if parent_of(p) == dir {
                out.insert(p.rsplit('/').next().unwrap_or(p).to_string());
            }
        }
        Ok(out.into_iter().collect())
    }

    fn exists(&self, path: &str) -> StorageResult<bool> {
        check_path(path, true)?;
        let s = self.lock();
        s.check(path)?;
        Ok(s.live.contains_key(path) || s.dir_exists(path))
    }

    fn size(&self, path: &str) -> StorageResult<u64> {
        check_path(path, false)?;
        let s = self.lock();
        s.check(path)?;
        let ino = s.ino(path)?;
        Ok(s.inodes.get(&ino).map_or(0, |i| i.live.len() as u64))
    }

    fn read(&self, path: &str, cap: u64) -> StorageResult<Vec<u8>> {
        check_path(path, false)?;
        let s = self.lock();
        s.check(path)?;
        let ino = s.ino(path)?;
        let data = s.inodes.get(&ino).map(|i| &i.live[..]).unwrap_or(&[]);
        if data.len() as u64 > cap {
            return Err(StorageError::TooLarge {
                path: path.to_string(),
                size: data.len() as u64,
                cap,
            });
        }
        Ok(data.to_vec())
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> StorageResult<Vec<u8>> {
        check_path(path, false)?;
        let s = self.lock();
        s.check(path)?;
        let ino = s.ino(path)?;
        let data = s.inodes.get(&ino).map(|i| &i.live[..]).unwrap_or(&[]);
        let size = data.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(data[offset as usize..end as usize].to_vec()),
            _ => Err(StorageError::ShortRead {
                path: path.to_string(),
                offset,
                len,
                size,
            }),
        }
    }

    fn create_streaming(&self, path: &str) -> StorageResult<Box<dyn NewFile>> {
        let tmp = tmp_name(path)?;
        let mut s = self.lock();
        s.check_mutation(path)?;
        s.need_parent(path)?;
        if s.live.contains_key(path) {
            return Err(StorageError::AlreadyExists {
                path: path.to_string(),
            });
        }
        let ino = s.new_inode();
        s.live.insert(tmp.clone(), ino);
        drop(s);
        Ok(Box::new(CrashNewFile {
            storage: self.clone(),
            path: path.to_string(),
            tmp,
            ino,
            written: 0,
        }))
    }

    fn create_exclusive(&self, path: &str, bytes: &[u8]) -> StorageResult<()> {
        check_path(path, false)?;
        let mut s = self.lock();
        s.check_mutation(path)?;
        s.need_parent(path)?;
        if s.live.contains_key(path) {
            return Err(StorageError::AlreadyExists {
                path: path.to_string(),
            });
        }
        let ino = s.new_inode();
        s.live.insert(path.to_string(), ino);
        s.write(path, ino, bytes)?;
        s.sync_ino(ino);
        s.check(path)?;
        s.sync_dir(parent_of(path));
        Ok(())
    }

    fn delete(&self, path: &str) -> StorageResult<()> {
        check_path(path, false)?;
        let mut s = self.lock();
        s.check_mutation(path)?;
        s.ino(path)?;
        s.live.remove(path);
        Ok(())
    }

    fn delete_dir_all(&self, path: &str) -> StorageResult<()> {
        check_path(path, false)?;
        let mut s = self.lock();
        s.check_mutation(path)?;
        if !s.dirs.contains(path) {
            return Err(StorageError::NotFound {
                path: path.to_string(),
            });
        }
        let prefix = format!("{path}/");
        s.dirs.retain(|d| d != path && !d.starts_with(&prefix));
        s.live.retain(|k, _| !k.starts_with(&prefix));
        s.durable.retain(|k, _| !k.starts_with(&prefix));
        s.count_fsync();
        Ok(())
    }

    fn create_dir(&self, path: &str) -> StorageResult<()> {
        check_path(path, false)?;
        let mut s = self.lock();
        s.check_mutation(path)?;
        if s.live.contains_key(path) {
            return Err(StorageError::AlreadyExists {
                path: path.to_string(),
            });
        }
        let mut acc = String::new();
        for c in path.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            s.dirs.insert(acc.clone());
        }
        s.count_fsync();
        Ok(())
    }

    fn append(&self, path: &str, bytes: &[u8]) -> StorageResult<()> {
        check_path(path, false)?;
        let mut s = self.lock();
        s.check_mutation(path)?;
        s.need_parent(path)?;
        let ino = match s.live.get(path) {
            Some(&i) => i,
            None => {
                let i = s.new_inode();
                s.live.insert(path.to_string(), i);
                i
            }
        };
        s.write(path, ino, bytes)
    }

    fn truncate(&self, path: &str, len: u64) -> StorageResult<()> {
        check_path(path, false)?;
        let mut s = self.lock();
        s.check_mutation(path)?;
        let ino = s.ino(path)?;
        let now = s.now_ms();
        if let Some(i) = s.inodes.get_mut(&ino) {
            i.live.truncate(len as usize);
            i.modified = now;
        }
        s.last_write = Some(ino);
        Ok(())
    }

    fn sync_file(&self, path: &str) -> StorageResult<()> {
        check_path(path, false)?;
        let mut s = self.lock();
        s.check_mutation(path)?;
        let ino = s.ino(path)?;
        s.sync_ino(ino);
        Ok(())
    }

    fn sync_dir(&self, dir: &str) -> StorageResult<()> {
        check_path(dir, true)?;
        let mut s = self.lock();
        s.check_mutation(dir)?;
        if !s.dir_exists(dir) {
            return Err(StorageError::NotFound {
                path: dir.to_string(),
            });
        }
        s.sync_dir(dir);
        Ok(())
    }

    fn sync_all(&self) -> StorageResult<()> {
        let mut s = self.lock();
        s.check_mutation("")?;
        s.count_fsync();
        for i in s.inodes.values_mut() {
            i.durable = i.live.clone();
        }
        s.durable = s.live.clone();
        s.last_write = None;
        Ok(())
    }

    fn modified_ms(&self, path: &str) -> StorageResult<i64> {
        check_path(path, false)?;
        let s = self.lock();
        s.check(path)?;
        let ino = s.ino(path)?;
        Ok(s.inodes.get(&ino).map_or(0, |i| i.modified))
    }

    fn touch(&self, path: &str) -> StorageResult<()> {
        check_path(path, false)?;
        let mut s = self.lock();
        s.check_mutation(path)?;
        let ino = s.ino(path)?;
        let now = s.now_ms();
        if let Some(i) = s.inodes.get_mut(&ino) {
            i.modified = now;
        }
        Ok(())
    }

    fn local_root(&self) -> Option<&Path> {
        None
    }

    fn free_bytes(&self) -> StorageResult<Option<u64>> {
        let s = self.lock();
        s.check("")?;
        Ok(s.space_left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> Vec<(Box<dyn Storage>, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStorage::new(dir.path()).unwrap();
        vec![
            (Box::new(local) as Box<dyn Storage>, Some(dir)),
            (Box::new(CrashStorage::new()), None),
        ]
    }

    #[test]
    fn common_behaviour() {
        for (s, _keep) in both() {
            s.create_dir("a/b").unwrap();
            s.create("a/b/x", b"hello").unwrap();
            assert!(matches!(
                s.create("a/b/x", b"again"),
                Err(StorageError::AlreadyExists { .. })
            ));
            assert_eq!(s.read("a/b/x", 5).unwrap(), b"hello");
            assert!(matches!(
                s.read("a/b/x", 4),
                Err(StorageError::TooLarge { size: 5, .. })
            ));
            assert_eq!(s.read_range("a/b/x", 1, 3).unwrap(), b"ell");
            assert!(matches!(
                s.read_range("a/b/x", 3, 3),
                Err(StorageError::ShortRead { .. })
            ));
            assert!(matches!(
                s.read_range("a/b/x", u64::MAX, 3),
                Err(StorageError::ShortRead { .. })
            ));
            assert_eq!(s.size("a/b/x").unwrap(), 5);
            assert_eq!(s.list("a").unwrap(), vec!["b"]);
            assert_eq!(s.list("a/b").unwrap(), vec!["x"]);
            assert!(s.list("").unwrap().contains(&"a".to_string()));
            s.create_exclusive("a/lock", b"1").unwrap();
            assert!(matches!(
                s.create_exclusive("a/lock", b"2"),
                Err(StorageError::AlreadyExists { .. })
            ));
            s.append("a/j", b"ab").unwrap();
            s.append("a/j", b"cd").unwrap();
            s.truncate("a/j", 3).unwrap();
            s.sync_file("a/j").unwrap();
            assert_eq!(s.read("a/j", 10).unwrap(), b"abc");
            s.delete("a/lock").unwrap();
            assert!(!s.exists("a/lock").unwrap());
            assert!(s.delete("a/lock").unwrap_err().is_not_found());
            assert!(s.read("nope", 1).unwrap_err().is_not_found());
            let mut w = s.create_streaming("a/b/y").unwrap();
            w.write(b"12").unwrap();
            w.write(b"34").unwrap();
            assert_eq!(w.written(), 4);
            assert!(s.exists("a/b/y.tmp").unwrap());
            w.finish().unwrap();
            assert!(!s.exists("a/b/y.tmp").unwrap());
            assert_eq!(s.read("a/b/y", 4).unwrap(), b"1234");
            s.delete_dir_all("a/b").unwrap();
            assert!(!s.exists("a/b").unwrap());
            for p in ["/abs", "a/../b", "a//b", "a/./b", ""] {
                assert!(
                    matches!(s.read(p, 1), Err(StorageError::BadName { .. })),
                    "{p}"
                );
            }
        }
    }

    #[test]
    fn tmp_names_keep_exfat_entry_count() {
        let hex64 = "ab".repeat(32);
        assert!(tmp_name(&format!("packs/ab/{hex64}")).is_ok());
        assert!(tmp_name("config.1").is_ok());
        // 12 characters + ".tmp" = 16: two entries instead of one.
        assert!(tmp_name("twelve_chars").is_err());
        assert_eq!(exfat_name_entries(&hex64), 5);
        assert_eq!(exfat_name_entries(&format!("{hex64}.tmp")), 5);
    }

    #[test]
    fn crash_keeps_only_durable_state() {
        let s = CrashStorage::new();
        s.create_dir("d").unwrap();
        s.create("d/final", b"durable").unwrap();
        // Written, fsynced, but its directory entry never synced: gone after a crash.
        s.append("d/j1", b"frame").unwrap();
        s.sync_file("d/j1").unwrap();
        // Entry synced, bytes not: present but empty.
        s.append("d/j2", b"xx").unwrap();
        s.sync_dir("d").unwrap();
        s.append("d/j2", b"more").unwrap();
        // A partial streamed file.
        let mut w = s.create_streaming("d/pack").unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        s.delete("d/final").unwrap(); // deletion not synced: survives
        s.crash();
        assert_eq!(s.read("d/final", 100).unwrap(), b"durable");
        assert_eq!(s.read("d/j1", 100).unwrap(), b"frame");
        assert_eq!(s.read("d/j2", 100).unwrap(), b"");
        assert!(!s.exists("d/pack.tmp").unwrap());
    }

    #[test]
    fn crash_torn_keeps_a_prefix_of_the_last_write() {
        let s = CrashStorage::new();
        s.create_dir("d").unwrap();
        s.append("d/j", b"head").unwrap();
        s.sync_file("d/j").unwrap();
        s.sync_dir("d").unwrap();
        s.append("d/j", b"0123456789").unwrap();
        s.crash_torn(3);
        assert_eq!(s.read("d/j", 100).unwrap(), b"head012");
    }

    #[test]
    fn no_space_and_removed_drive() {
        let s = CrashStorage::new();
        s.create_dir("d").unwrap();
        s.fail_after_bytes(5);
        s.append("d/a", b"123").unwrap();
        assert!(matches!(
            s.append("d/a", b"456"),
            Err(StorageError::NoSpace { .. })
        ));
        s.remove_drive();
        assert!(matches!(s.read("d/a", 10), Err(StorageError::Io { .. })));
        assert!(matches!(s.list("d"), Err(StorageError::Io { .. })));
        s.crash();
        assert!(s.list("d").is_ok());
    }
}
