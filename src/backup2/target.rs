//! Where a backup's files go: the `BackupTarget` trait (the file operations the phone drives, on
//! validated backup-relative paths) and `FolderTarget`, a plain directory like idevicebackup2's.
//!
//! Every path from the phone passes [`BackupPath::parse`] before a target sees it. A target
//! implementation therefore only receives relative, normalised paths with no `..`, `.`, NUL or
//! empty components. The snapshot store implements the same trait over "previous snapshot
//! overlaid by a staging area"; nothing here assumes a real directory tree.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Longest backup-relative path accepted, in bytes.
pub const MAX_BACKUP_PATH_LEN: usize = 4096;

/// Deepest directory nesting a recursive copy follows (backups are 3–4 levels deep).
pub const MAX_COPY_DEPTH: usize = 64;

/// Why a path from the phone is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path is {len} bytes long; at most {max} are accepted", max = MAX_BACKUP_PATH_LEN)]
    TooLong { len: usize },
    #[error("the path contains a NUL byte")]
    Nul,
    #[error("the path is absolute")]
    Absolute,
    #[error("the path has an empty component (\"//\")")]
    EmptyComponent,
    #[error("the path has a \".\" or \"..\" component")]
    DotComponent,
}

/// A validated path relative to the backup root, such as `<UDID>/Snapshot/ab/ab12…`.
///
/// Rules: not empty, at most [`MAX_BACKUP_PATH_LEN`] bytes, no NUL, not absolute, no empty,
/// `.` or `..` components. Trailing slashes are dropped (`"U/Snapshot/"` is `"U/Snapshot"`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupPath(String);

impl BackupPath {
    /// The one gate every phone-supplied path goes through.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.len() > MAX_BACKUP_PATH_LEN {
            return Err(PathError::TooLong { len: s.len() });
        }
        if s.as_bytes().contains(&0) {
            return Err(PathError::Nul);
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute);
        }
        let trimmed = s.trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(PathError::Empty);
        }
        for c in trimmed.split('/') {
            match c {
                "" => return Err(PathError::EmptyComponent),
                "." | ".." => return Err(PathError::DotComponent),
                _ => {}
            }
        }
        Ok(BackupPath(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent path, `None` for a single component.
    pub fn parent(&self) -> Option<BackupPath> {
        self.0
            .rfind('/')
            .map(|i| BackupPath(self.0[..i].to_string()))
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &str) -> Result<BackupPath, PathError> {
        BackupPath::parse(&format!("{}/{}", self.0, name))
    }

    /// True if `self` is `other` or lies below it (component-wise).
    pub fn starts_with(&self, other: &BackupPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }
}

impl fmt::Display for BackupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupPath({:?})", self.0)
    }
}

/// What kind of entry a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    /// Anything else (symbolic links, devices): reported, never followed.
    Other,
}

/// Metadata of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    pub kind: EntryKind,
    pub size: u64,
    pub modified: SystemTime,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub meta: EntryMeta,
}

/// A failed target operation. `path` is always the backup-relative path (never a host path),
/// since its text is also sent to the phone.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The phone sent a path that is not acceptable.
    #[error("refused path {path:?}: {reason}")]
    InvalidPath { path: String, reason: PathError },
    /// The operating system (or the store) failed the operation.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The path is, or passes through, a symbolic link; links are never followed in a backup.
    #[error(
        "{path}: is or passes through a symbolic link, which is never followed inside a backup"
    )]
    Symlink { path: String },
    /// This target cannot perform the operation.
    #[error("{path}: {what} is not supported by this backup target")]
    Unsupported { path: String, what: &'static str },
}

/// DeviceLink error codes for errno values (protocol.md §4.6; libimobiledevice HEAD).
pub mod dl_codes {
    pub const OTHER: i64 = -1;
    pub const NOT_FOUND: i64 = -6;
    pub const EXISTS: i64 = -7;
    pub const NOT_A_DIRECTORY: i64 = -8;
    pub const IS_A_DIRECTORY: i64 = -9;
    pub const LOOP: i64 = -10;
    pub const IO: i64 = -11;
    pub const NO_SPACE: i64 = -15;
}

/// Maps an I/O error to the DeviceLink code the phone understands.
pub fn io_error_dl_code(e: &io::Error) -> i64 {
    use rustix::io::Errno;
    if let Some(errno) = Errno::from_io_error(e) {
        return match errno {
            Errno::NOENT => dl_codes::NOT_FOUND,
            Errno::EXIST => dl_codes::EXISTS,
            Errno::NOTDIR => dl_codes::NOT_A_DIRECTORY,
            Errno::ISDIR => dl_codes::IS_A_DIRECTORY,
            Errno::LOOP => dl_codes::LOOP,
            Errno::IO => dl_codes::IO,
            Errno::NOSPC => dl_codes::NO_SPACE,
            _ => dl_codes::OTHER,
        };
    }
    match e.kind() {
        io::ErrorKind::NotFound => dl_codes::NOT_FOUND,
        io::ErrorKind::AlreadyExists => dl_codes::EXISTS,
        io::ErrorKind::NotADirectory => dl_codes::NOT_A_DIRECTORY,
        io::ErrorKind::IsADirectory => dl_codes::IS_A_DIRECTORY,
        io::ErrorKind::StorageFull => dl_codes::NO_SPACE,
        _ => dl_codes::OTHER,
    }
}

impl TargetError {
    pub fn io(path: &BackupPath, source: io::Error) -> Self {
        TargetError::Io {
            path: path.to_string(),
            source,
        }
    }

    /// Refusal of a raw phone path.
    pub fn invalid(path: &str, reason: PathError) -> Self {
        TargetError::InvalidPath {
            path: path.chars().take(256).collect(),
            reason,
        }
    }

    /// The DeviceLink status code to send for this failure.
    pub fn dl_code(&self) -> i64 {
        match self {
            TargetError::Io { source, .. } => io_error_dl_code(source),
            TargetError::Symlink { .. } => dl_codes::LOOP,
            TargetError::InvalidPath { .. } | TargetError::Unsupported { .. } => dl_codes::OTHER,
        }
    }

    /// True if the path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TargetError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Parses a phone path into a [`BackupPath`] or the matching [`TargetError`].
pub fn validate(path: &str) -> Result<BackupPath, TargetError> {
    BackupPath::parse(path).map_err(|reason| TargetError::invalid(path, reason))
}

/// A file being received. Bytes go in through `Write`; only [`commit`](Self::commit) makes the
/// file visible at its path. Dropping the sink without committing must behave as
/// [`abort`](Self::abort), so a stream that stops mid-way never leaves a file looking complete.
pub trait UploadSink: Write {
    /// Makes the received bytes the file at the path, replacing any previous file there.
    fn commit(self: Box<Self>) -> Result<(), TargetError>;
    /// Discards the received bytes; a previous file at the path stays as it was.
    fn abort(self: Box<Self>);
}

/// The file operations a phone drives during mobilebackup2, on backup-relative paths.
///
/// Semantics follow libimobiledevice's host (the reference every device is tested against):
/// parents are not created implicitly by `create_file`; `move_item` replaces an existing
/// destination; `remove` is recursive and ignores missing paths.
pub trait BackupTarget {
    /// Opens a file for reading (DownloadFiles). A directory is an error.
    fn open_read(&mut self, path: &BackupPath) -> Result<Box<dyn Read + '_>, TargetError>;
    /// Starts receiving a file (UploadFiles). Its parent directory must exist.
    fn create_file(&mut self, path: &BackupPath) -> Result<Box<dyn UploadSink + '_>, TargetError>;
    /// Creates a directory and its missing parents; an existing directory is fine.
    fn create_dir_all(&mut self, path: &BackupPath) -> Result<(), TargetError>;
    /// Renames `src` to `dst`. An existing `dst` (file, or directory with all its contents) is
    /// removed first, as libimobiledevice does: `dst` names the item's final path, so the item
    /// is never moved *into* an existing directory. `dst`'s parent must exist. A missing `src`
    /// is an error and then nothing is removed.
    fn move_item(&mut self, src: &BackupPath, dst: &BackupPath) -> Result<(), TargetError>;
    /// Removes a file or a whole directory; a missing path is success.
    fn remove(&mut self, path: &BackupPath) -> Result<(), TargetError>;
    /// Copies a file (replacing `dst`) or a directory tree (merged into `dst`).
    fn copy_item(&mut self, src: &BackupPath, dst: &BackupPath) -> Result<(), TargetError>;
    /// Lists a directory (names only, no `.`/`..`), sorted by name.
    fn list_dir(&mut self, path: &BackupPath) -> Result<Vec<DirEntry>, TargetError>;
    /// Metadata of a path, `None` if it does not exist.
    fn stat(&mut self, path: &BackupPath) -> Result<Option<EntryMeta>, TargetError>;
    /// Free bytes available for the backup (what `statvfs` calls `f_bavail × f_frsize`).
    fn free_space(&mut self) -> Result<u64, TargetError>;
}

/// Prefix of the temporary files uploads are written to before `commit`. Listings hide them.
pub const PARTIAL_PREFIX: &str = ".cradle-partial-";

/// A plain backup folder: `<root>/<UDID>/…`, the layout idevicebackup2 and Finder use.
///
/// Confinement: every operation walks the path from the root with `symlink_metadata` and refuses
/// a symbolic link at any component, so nothing outside the root is reached through a link that
/// was planted in the folder. (It does not defend against another process racing to swap a
/// directory for a link between the check and the use: the folder is ours while a backup runs.)
///
/// Uploads go to a temporary file beside their destination and are renamed into place on
/// commit. Files are not fsynced one by one (a backup has tens of thousands of them); the
/// caller decides when the folder as a whole must be durable.
#[derive(Debug)]
pub struct FolderTarget {
    root: PathBuf,
    counter: u64,
}

/// How the last component of a path may be a symbolic link.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LastLink {
    /// The operation would follow it: refuse.
    Refuse,
    /// The operation acts on the link itself (unlink, replace): allowed.
    Allow,
}

impl FolderTarget {
    /// Uses `root` (which must exist and be a directory) as the backup root.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, TargetError> {
        let root = root.into();
        let shown = || root.display().to_string();
        let meta = fs::metadata(&root).map_err(|source| TargetError::Io {
            path: shown(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(TargetError::Io {
                path: shown(),
                source: rustix::io::Errno::NOTDIR.into(),
            });
        }
        Ok(FolderTarget { root, counter: 0 })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `p`, after checking that no component (but possibly the last) is a
    /// symbolic link.
    fn resolve(&self, p: &BackupPath, last: LastLink) -> Result<PathBuf, TargetError> {
        let mut cur = self.root.clone();
        let mut shown = String::new();
        let n = p.components().count();
        let mut exists = true;
        for (i, c) in p.components().enumerate() {
            cur.push(c);
            if !shown.is_empty() {
                shown.push('/');
            }
            shown.push_str(c);
            if !exists {
                continue;
            }
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    if i + 1 < n || last == LastLink::Refuse {
                        return Err(TargetError::Symlink { path: shown });
                    }
                }
                Ok(_) => {}
                // Nothing below a missing component exists either; the operation itself will
                // report ENOENT (or create it).
                Err(e) if e.kind() == io::ErrorKind::NotFound => exists = false,
                // ENOTDIR and the like: let the operation report it.
                Err(_) => exists = false,
            }
        }
        Ok(cur)
    }

    fn lstat(&self, host: &Path, p: &BackupPath) -> Result<Option<fs::Metadata>, TargetError> {
        match fs::symlink_metadata(host) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
                Ok(None)
            }
            Err(e) => Err(TargetError::io(p, e)),
        }
    }

    fn meta_of(m: &fs::Metadata) -> EntryMeta {
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            EntryKind::Other
        } else if ft.is_dir() {
            EntryKind::Directory
        } else if ft.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        };
        EntryMeta {
            kind,
            size: m.len(),
            modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    fn remove_host(host: &Path, p: &BackupPath) -> Result<(), TargetError> {
        let res = match fs::symlink_metadata(host) {
            Err(e) => Err(e),
            // remove_dir_all never follows links inside the tree.
            Ok(m) if m.is_dir() => fs::remove_dir_all(host),
            Ok(_) => fs::remove_file(host),
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TargetError::io(p, e)),
        }
    }

    fn copy_tree(src: &Path, dst: &Path, p: &BackupPath, depth: usize) -> Result<(), TargetError> {
        if depth > MAX_COPY_DEPTH {
            return Err(TargetError::io(
                p,
                io::Error::other("directory nesting too deep to copy"),
            ));
        }
        match fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(TargetError::Symlink {
                    path: p.to_string(),
                })
            }
            Ok(_) => return Err(TargetError::io(p, rustix::io::Errno::NOTDIR.into())),
            Err(_) => fs::create_dir(dst).map_err(|e| TargetError::io(p, e))?,
        }
        let rd = fs::read_dir(src).map_err(|e| TargetError::io(p, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| TargetError::io(p, e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(PARTIAL_PREFIX) {
                continue;
            }
            let ft = entry.file_type().map_err(|e| TargetError::io(p, e))?;
            let (s, d) = (src.join(&name), dst.join(&name));
            if ft.is_dir() {
                Self::copy_tree(&s, &d, p, depth + 1)?;
            } else if ft.is_file() {
                Self::copy_file(&s, &d, p)?;
            }
            // Links and special files are not copied: a backup holds neither.
        }
        Ok(())
    }

    fn copy_file(src: &Path, dst: &Path, p: &BackupPath) -> Result<(), TargetError> {
        // fs::copy would write through a link at dst; replace it instead.
        if let Ok(m) = fs::symlink_metadata(dst) {
            if m.file_type().is_symlink() {
                fs::remove_file(dst).map_err(|e| TargetError::io(p, e))?;
            }
        }
        fs::copy(src, dst)
            .map(|_| ())
            .map_err(|e| TargetError::io(p, e))
    }
}

/// An upload in progress into a [`FolderTarget`].
struct FolderSink {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    dst: PathBuf,
    shown: BackupPath,
}

impl Write for FolderSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("upload already finished")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl UploadSink for FolderSink {
    fn commit(mut self: Box<Self>) -> Result<(), TargetError> {
        let Some(f) = self.file.take() else {
            return Ok(());
        };
        let res = f
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|_file| fs::rename(&self.tmp, &self.dst));
        if let Err(e) = res {
            let _ = fs::remove_file(&self.tmp);
            return Err(TargetError::io(&self.shown, e));
        }
        Ok(())
    }

    fn abort(mut self: Box<Self>) {
        self.discard();
    }
}

impl FolderSink {
    fn discard(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for FolderSink {
    fn drop(&mut self) {
        self.discard();
    }
}

impl BackupTarget for FolderTarget {
    fn open_read(&mut self, path: &BackupPath) -> Result<Box<dyn Read + '_>, TargetError> {
        let host = self.resolve(path, LastLink::Refuse)?;
        let f = File::open(&host).map_err(|e| TargetError::io(path, e))?;
        let m = f.metadata().map_err(|e| TargetError::io(path, e))?;
        if m.is_dir() {
            return Err(TargetError::io(path, rustix::io::Errno::ISDIR.into()));
        }
        Ok(Box::new(f))
    }

    fn create_file(&mut self, path: &BackupPath) -> Result<Box<dyn UploadSink + '_>, TargetError> {
        let dst = self.resolve(path, LastLink::Allow)?;
        if let Some(m) = self.lstat(&dst, path)? {
            if m.is_dir() {
                return Err(TargetError::io(path, rustix::io::Errno::ISDIR.into()));
            }
        }
        let parent = dst.parent().unwrap_or(&self.root).to_path_buf();
        self.counter += 1;
        let tmp = parent.join(format!(
            "{PARTIAL_PREFIX}{}-{}",
            std::process::id(),
            self.counter
        ));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| TargetError::io(path, e))?;
        Ok(Box::new(FolderSink {
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            tmp,
            dst,
            shown: path.clone(),
        }))
    }

    fn create_dir_all(&mut self, path: &BackupPath) -> Result<(), TargetError> {
        let mut cur = self.root.clone();
        let mut shown = String::new();
        for c in path.components() {
            cur.push(c);
            if !shown.is_empty() {
                shown.push('/');
            }
            shown.push_str(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(TargetError::Symlink { path: shown })
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(TargetError::Io {
                        path: shown,
                        source: rustix::io::Errno::NOTDIR.into(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&cur) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && cur.is_dir() => {}
                    Err(source) => {
                        return Err(TargetError::Io {
                            path: shown,
                            source,
                        })
                    }
                },
                Err(source) => {
                    return Err(TargetError::Io {
                        path: shown,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    fn move_item(&mut self, src: &BackupPath, dst: &BackupPath) -> Result<(), TargetError> {
        let s = self.resolve(src, LastLink::Refuse)?;
        let d = self.resolve(dst, LastLink::Allow)?;
        match self.lstat(&s, src)? {
            None => return Err(TargetError::io(src, rustix::io::Errno::NOENT.into())),
            Some(m) if m.file_type().is_symlink() => {
                return Err(TargetError::Symlink {
                    path: src.to_string(),
                })
            }
            Some(_) => {}
        }
        if src == dst {
            return Ok(());
        }
        // Removing dst first must never destroy src: refuse moves between a path and its own
        // ancestor or descendant (rename(2) would refuse them too, after the damage).
        if src.starts_with(dst) || dst.starts_with(src) {
            return Err(TargetError::io(dst, rustix::io::Errno::INVAL.into()));
        }
        Self::remove_host(&d, dst)?;
        fs::rename(&s, &d).map_err(|e| TargetError::io(dst, e))
    }

    fn remove(&mut self, path: &BackupPath) -> Result<(), TargetError> {
        let host = self.resolve(path, LastLink::Allow)?;
        Self::remove_host(&host, path)
    }

    fn copy_item(&mut self, src: &BackupPath, dst: &BackupPath) -> Result<(), TargetError> {
        let s = self.resolve(src, LastLink::Refuse)?;
        let d = self.resolve(dst, LastLink::Allow)?;
        if dst.starts_with(src) {
            return Err(TargetError::io(dst, rustix::io::Errno::INVAL.into()));
        }
        match self.lstat(&s, src)? {
            None => Err(TargetError::io(src, rustix::io::Errno::NOENT.into())),
            Some(m) if m.is_dir() => Self::copy_tree(&s, &d, dst, 0),
            Some(m) if m.is_file() => Self::copy_file(&s, &d, dst),
            Some(_) => Err(TargetError::Symlink {
                path: src.to_string(),
            }),
        }
    }

    fn list_dir(&mut self, path: &BackupPath) -> Result<Vec<DirEntry>, TargetError> {
        let host = self.resolve(path, LastLink::Refuse)?;
        let rd = fs::read_dir(&host).map_err(|e| TargetError::io(path, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| TargetError::io(path, e))?;
            // Names that are not UTF-8 cannot be sent in a plist key; a backup never has them.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with(PARTIAL_PREFIX) {
                continue;
            }
            let m = match fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(TargetError::io(path, e)),
            };
            out.push(DirEntry {
                name,
                meta: Self::meta_of(&m),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&mut self, path: &BackupPath) -> Result<Option<EntryMeta>, TargetError> {
        let host = self.resolve(path, LastLink::Allow)?;
        Ok(self.lstat(&host, path)?.map(|m| Self::meta_of(&m)))
    }

    fn free_space(&mut self) -> Result<u64, TargetError> {
        let st = rustix::fs::statvfs(&self.root).map_err(|e| TargetError::Io {
            path: ".".into(),
            source: e.into(),
        })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> BackupPath {
        BackupPath::parse(s).unwrap()
    }

    #[test]
    fn path_rules() {
        assert_eq!(p("U/Snapshot/").as_str(), "U/Snapshot");
        assert_eq!(BackupPath::parse(""), Err(PathError::Empty));
        assert_eq!(BackupPath::parse("/"), Err(PathError::Absolute));
        assert_eq!(BackupPath::parse("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(
            BackupPath::parse("../etc/passwd"),
            Err(PathError::DotComponent)
        );
        assert_eq!(BackupPath::parse("U/../../x"), Err(PathError::DotComponent));
        assert_eq!(BackupPath::parse("U/./x"), Err(PathError::DotComponent));
        assert_eq!(BackupPath::parse("U//x"), Err(PathError::EmptyComponent));
        assert_eq!(BackupPath::parse("U/a\0b"), Err(PathError::Nul));
        assert!(matches!(
            BackupPath::parse(&"a".repeat(MAX_BACKUP_PATH_LEN + 1)),
            Err(PathError::TooLong { .. })
        ));
        assert!(BackupPath::parse("U/..a/b..").is_ok());
        assert_eq!(p("U/a/b").parent(), Some(p("U/a")));
        assert_eq!(p("U").parent(), None);
        assert_eq!(p("U/a/b").file_name(), "b");
        assert!(p("U/a/b").starts_with(&p("U/a")));
        assert!(!p("U/ab").starts_with(&p("U/a")));
    }

    #[test]
    fn errno_mapping() {
        use rustix::io::Errno;
        for (e, code) in [
            (Errno::NOENT, -6),
            (Errno::EXIST, -7),
            (Errno::NOTDIR, -8),
            (Errno::ISDIR, -9),
            (Errno::LOOP, -10),
            (Errno::IO, -11),
            (Errno::NOSPC, -15),
            (Errno::ACCESS, -1),
        ] {
            assert_eq!(io_error_dl_code(&e.into()), code, "{e:?}");
        }
        assert_eq!(io_error_dl_code(&io::Error::other("x")), -1);
    }

    fn folder() -> (tempfile::TempDir, FolderTarget) {
        let dir = tempfile::tempdir().unwrap();
        let t = FolderTarget::open(dir.path()).unwrap();
        (dir, t)
    }

    fn put(t: &mut FolderTarget, path: &str, data: &[u8]) {
        let mut s = t.create_file(&p(path)).unwrap();
        s.write_all(data).unwrap();
        s.commit().unwrap();
    }

    fn get(t: &mut FolderTarget, path: &str) -> Vec<u8> {
        let mut v = Vec::new();
        t.open_read(&p(path)).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn upload_commit_and_abort() {
        let (dir, mut t) = folder();
        t.create_dir_all(&p("U/Snapshot/ab")).unwrap();
        put(&mut t, "U/Snapshot/ab/f", b"one");
        assert_eq!(get(&mut t, "U/Snapshot/ab/f"), b"one");
        // An aborted (or dropped) upload leaves the previous file untouched and no temp file.
        let mut s = t.create_file(&p("U/Snapshot/ab/f")).unwrap();
        s.write_all(b"partial").unwrap();
        s.abort();
        let mut s = t.create_file(&p("U/Snapshot/ab/g")).unwrap();
        s.write_all(b"partial").unwrap();
        drop(s);
        assert_eq!(get(&mut t, "U/Snapshot/ab/f"), b"one");
        assert!(t.stat(&p("U/Snapshot/ab/g")).unwrap().is_none());
        let names: Vec<_> = fs::read_dir(dir.path().join("U/Snapshot/ab"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["f".to_string()]);
        // No implicit parents.
        let e = t.create_file(&p("U/nope/f")).err().unwrap();
        assert_eq!(e.dl_code(), -6);
    }

    #[test]
    fn move_replaces_file_and_directory() {
        let (_d, mut t) = folder();
        t.create_dir_all(&p("U/Snapshot")).unwrap();
        put(&mut t, "U/Snapshot/Manifest.db", b"new");
        put(&mut t, "U/Manifest.db", b"old");
        t.move_item(&p("U/Snapshot/Manifest.db"), &p("U/Manifest.db"))
            .unwrap();
        assert_eq!(get(&mut t, "U/Manifest.db"), b"new");
        // dst an existing directory: replaced, not moved into.
        t.create_dir_all(&p("U/dir/sub")).unwrap();
        put(&mut t, "U/dir/sub/x", b"x");
        put(&mut t, "U/file", b"f");
        t.move_item(&p("U/file"), &p("U/dir")).unwrap();
        assert_eq!(get(&mut t, "U/dir"), b"f");
        // Missing src: error, and dst is left alone.
        let e = t.move_item(&p("U/none"), &p("U/dir")).err().unwrap();
        assert_eq!(e.dl_code(), -6);
        assert_eq!(get(&mut t, "U/dir"), b"f");
        // Moving onto an ancestor would destroy the source: refused.
        t.create_dir_all(&p("U/a/b")).unwrap();
        assert!(t.move_item(&p("U/a/b"), &p("U/a")).is_err());
        assert!(t.stat(&p("U/a/b")).unwrap().is_some());
    }

    #[test]
    fn remove_is_recursive_and_ignores_missing() {
        let (_d, mut t) = folder();
        t.create_dir_all(&p("U/Snapshot/00")).unwrap();
        put(&mut t, "U/Snapshot/00/a", b"a");
        t.remove(&p("U/Snapshot")).unwrap();
        assert!(t.stat(&p("U/Snapshot")).unwrap().is_none());
        t.remove(&p("U/Snapshot")).unwrap();
        t.remove(&p("U/missing/deeper")).unwrap();
    }

    #[test]
    fn copy_list_stat_free_space() {
        let (_d, mut t) = folder();
        t.create_dir_all(&p("U/a/b")).unwrap();
        put(&mut t, "U/a/f", b"12345");
        put(&mut t, "U/a/b/g", b"g");
        t.copy_item(&p("U/a"), &p("U/c")).unwrap();
        assert_eq!(get(&mut t, "U/c/b/g"), b"g");
        t.copy_item(&p("U/a/f"), &p("U/f2")).unwrap();
        assert_eq!(get(&mut t, "U/f2"), b"12345");
        let l = t.list_dir(&p("U/a")).unwrap();
        assert_eq!(
            l.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["b", "f"]
        );
        assert_eq!(l[0].meta.kind, EntryKind::Directory);
        assert_eq!(l[1].meta.size, 5);
        assert_eq!(t.stat(&p("U/a/f")).unwrap().unwrap().kind, EntryKind::File);
        assert!(t.list_dir(&p("U/none")).err().unwrap().is_not_found());
        assert!(t.free_space().unwrap() > 0);
    }

    #[test]
    fn symlinks_are_never_followed() {
        let (dir, mut t) = folder();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        t.create_dir_all(&p("U")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("U/link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("U/filelink"))
            .unwrap();
        let code = |r: Result<(), TargetError>| r.err().map(|e| e.dl_code());
        assert_eq!(
            t.create_file(&p("U/link/x")).err().map(|e| e.dl_code()),
            Some(-10)
        );
        assert_eq!(code(t.create_dir_all(&p("U/link/d"))), Some(-10));
        assert!(t.open_read(&p("U/filelink")).is_err());
        assert!(t.open_read(&p("U/link/secret")).is_err());
        assert!(t.list_dir(&p("U/link")).is_err());
        assert_eq!(code(t.remove(&p("U/link/secret"))), Some(-10));
        assert!(t.move_item(&p("U/filelink"), &p("U/moved")).is_err());
        assert!(t.copy_item(&p("U/link"), &p("U/copy")).is_err());
        // Replacing the link itself is fine and does not touch its target.
        put(&mut t, "U/filelink", b"replaced");
        t.remove(&p("U/link")).unwrap();
        assert_eq!(fs::read(outside.path().join("secret")).unwrap(), b"s");
        assert!(outside.path().join("secret").exists());
        assert_eq!(
            fs::read_dir(outside.path()).unwrap().count(),
            1,
            "nothing written outside"
        );
    }
}
