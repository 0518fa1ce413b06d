//! A deterministic synthetic iPhone: from a seed, a size profile and a day, the file tree a
//! real phone would back up (domains, apps, photos, SQLite databases, keychain), its identity,
//! and each file's bytes, generated on demand. The ground truth for every backup test.
//!
//! Day N is day 1 changed N-1 times (new photos and messages, deletions, rewritten
//! preferences, a few database pages); any day is computed directly from (seed, profile, day).
//! Nothing reads the clock or the environment, so every machine builds the same phone.
//! Phones of the small, medium and large profiles also hold files every such phone may share
//! whatever its seed (app downloads, the default wallpaper, forwarded pictures), drawn from
//! one shared-content seed.

mod bplist;
mod build;
mod catalog;
mod content;
mod identity;
mod rng;
mod sqlite;

pub use content::Content;
pub use identity::{DeviceIdentity, InstalledApp};

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Manifest.db `flags` of a regular file, a directory and a symlink.
pub const FLAG_FILE: u32 = 1;
pub const FLAG_DIR: u32 = 2;
pub const FLAG_SYMLINK: u32 = 4;

/// Longest path component the phone creates (APFS's limit, in UTF-8 bytes).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// How much the phone holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// About 120 entries and 3.5 MB: fast enough for every unit test.
    Tiny,
    /// About 1,350 entries and 35–45 MB.
    Small,
    /// About 15,800 entries and 540 MB, a 60 MB health database and a 15 MB Manifest.db.
    /// Its later days are light: one new photo, one rewritten preference, every other day an
    /// app file deleted, and the big databases change a few pages (the premise of the
    /// deduplication tests and `scripts/bench store`).
    Medium,
    /// About 153,000 entries and 4.5 GB, one database larger than 1 GiB.
    Large,
}

impl Profile {
    pub const ALL: [Profile; 4] = [
        Profile::Tiny,
        Profile::Small,
        Profile::Medium,
        Profile::Large,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Tiny => "tiny",
            Profile::Small => "small",
            Profile::Medium => "medium",
            Profile::Large => "large",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = PhoneError;
    fn from_str(s: &str) -> Result<Profile, PhoneError> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| PhoneError::UnknownProfile(s.to_string()))
    }
}

/// Errors of the synthetic phone.
#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    /// A profile name other than tiny, small, medium, large.
    #[error("unknown profile {0:?} (expected tiny, small, medium or large)")]
    UnknownProfile(String),
    /// `open` was given a directory or symlink entry.
    #[error("{domain}-{relative_path} is not a regular file")]
    NotAFile {
        domain: String,
        relative_path: String,
    },
    /// An entry whose path could escape the output folder (never produced by the phone
    /// itself; guards `write_tree` against hand-made entries).
    #[error("{domain}-{relative_path}: unsafe path component")]
    UnsafePath {
        domain: String,
        relative_path: String,
    },
    /// Writing the plaintext tree failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file of `size` bytes; read it with [`Phone::open`].
    File {
        size: u64,
        content: Content,
    },
    Dir,
    /// `target` is the absolute on-device path, stored verbatim.
    Symlink {
        target: String,
    },
}

/// One Manifest.db row: a file, directory or symlink in a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub domain: String,
    /// Path inside the domain; empty for the domain's root directory.
    pub relative_path: String,
    pub kind: EntryKind,
    /// Full `st_mode` including the type bits (0o100644, 0o040755, 0o120755 …).
    pub mode: u32,
    pub user_id: u32,
    pub group_id: u32,
    pub inode: u64,
    /// Unix seconds.
    pub birth: i64,
    pub last_modified: i64,
    pub last_status_change: i64,
    /// 1–4 for files; 0 for symlinks and most directories.
    pub protection_class: u32,
}

impl Entry {
    pub fn is_file(&self) -> bool {
        matches!(self.kind, EntryKind::File { .. })
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }

    pub fn is_symlink(&self) -> bool {
        matches!(self.kind, EntryKind::Symlink { .. })
    }

    /// Plaintext size; 0 for directories and symlinks (as MBFile `Size`).
    pub fn size(&self) -> u64 {
        match self.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        }
    }

    pub fn content(&self) -> Option<&Content> {
        match &self.kind {
            EntryKind::File { content, .. } => Some(content),
            _ => None,
        }
    }

    /// Manifest.db `flags`: 1 file, 2 directory, 4 symlink.
    pub fn flags(&self) -> u32 {
        match self.kind {
            EntryKind::File { .. } => FLAG_FILE,
            EntryKind::Dir => FLAG_DIR,
            EntryKind::Symlink { .. } => FLAG_SYMLINK,
        }
    }

    /// The backup's fileID: SHA-1 of `domain-relativePath`.
    pub fn file_id(&self) -> String {
        crate::ios_backup::file_id(&self.domain, &self.relative_path)
    }

    fn key(&self) -> (&str, &str) {
        (&self.domain, &self.relative_path)
    }
}

/// Differences between two days of a phone, each list in (domain, path) order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhoneDiff {
    pub added: Vec<Entry>,
    pub removed: Vec<Entry>,
    /// (older, newer) pairs whose content or metadata differ.
    pub modified: Vec<(Entry, Entry)>,
}

impl PhoneDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }

    /// Regular files whose bytes a backup must send: added files and files whose content
    /// or size changed.
    pub fn changed_files(&self) -> impl Iterator<Item = &Entry> {
        self.added.iter().filter(|e| e.is_file()).chain(
            self.modified
                .iter()
                .filter(|(old, new)| new.is_file() && old.kind != new.kind)
                .map(|(_, new)| new),
        )
    }
}

struct Inner {
    seed: u64,
    profile: Profile,
    day: u32,
    now: i64,
    identity: DeviceIdentity,
    entries: Vec<Entry>,
}

/// A synthetic phone on one day. Cheap to clone (shared).
#[derive(Clone)]
pub struct Phone {
    inner: Arc<Inner>,
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Phone")
            .field("seed", &self.inner.seed)
            .field("profile", &self.inner.profile)
            .field("day", &self.inner.day)
            .field("entries", &self.inner.entries.len())
            .finish()
    }
}

impl Phone {
    /// The phone of `seed` and `profile` on `day` (day 0 is taken as day 1).
    pub fn new(seed: u64, profile: Profile, day: u32) -> Phone {
        let day = day.max(1);
        let built = build::build(seed, profile, day);
        let identity = identity::build(seed, built.apps);
        Phone {
            inner: Arc::new(Inner {
                seed,
                profile,
                day,
                now: built.now,
                identity,
                entries: built.entries,
            }),
        }
    }

    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    pub fn profile(&self) -> Profile {
        self.inner.profile
    }

    pub fn day(&self) -> u32 {
        self.inner.day
    }

    /// The moment of this day's backup (Unix seconds): later than every timestamp in the tree.
    pub fn now(&self) -> i64 {
        self.inner.now
    }

    pub fn identity(&self) -> &DeviceIdentity {
        &self.inner.identity
    }

    /// Every entry, sorted by (domain, relative path); includes the domain roots ("" rows),
    /// directories and symlinks.
    pub fn entries(&self) -> &[Entry] {
        &self.inner.entries
    }

    /// The entry at `domain`/`relative_path`.
    pub fn find(&self, domain: &str, relative_path: &str) -> Option<&Entry> {
        let e = &self.inner.entries;
        e.binary_search_by(|x| x.key().cmp(&(domain, relative_path)))
            .ok()
            .map(|i| &e[i])
    }

    /// Sum of all regular files' sizes.
    pub fn total_file_bytes(&self) -> u64 {
        self.inner.entries.iter().map(Entry::size).sum()
    }

    /// Streams a regular file's bytes (exactly `size` of them), generated as they are read.
    pub fn open(&self, e: &Entry) -> Result<Box<dyn Read + Send>, PhoneError> {
        match &e.kind {
            EntryKind::File { size, content } => Ok(content.reader(*size)),
            _ => Err(PhoneError::NotAFile {
                domain: e.domain.clone(),
                relative_path: e.relative_path.clone(),
            }),
        }
    }

    /// What changed from `older` to `self`.
    pub fn diff(&self, older: &Phone) -> PhoneDiff {
        let (a, b) = (older.entries(), self.entries());
        let (mut i, mut j) = (0, 0);
        let mut d = PhoneDiff::default();
        while i < a.len() || j < b.len() {
            let ord = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.key().cmp(&y.key()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    d.removed.push(a[i].clone());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    d.added.push(b[j].clone());
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if a[i] != b[j] {
                        d.modified.push((a[i].clone(), b[j].clone()));
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        d
    }
}

/// What [`write_tree`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// True if `s` is a safe single path component.
fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.contains('\0')
        && s.len() <= MAX_COMPONENT_BYTES
}

/// True if `domain`/`relative_path` stays inside its folder: no empty, `.`, `..`, NUL or
/// over-long components, not absolute.
pub fn is_safe_path(domain: &str, relative_path: &str) -> bool {
    safe_component(domain)
        && (relative_path.is_empty() || relative_path.split('/').all(safe_component))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PhoneError + '_ {
    move |source| PhoneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn set_mtime(path: &Path, secs: i64) -> Result<(), PhoneError> {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    fs::File::open(path)
        .and_then(|f| f.set_modified(t))
        .map_err(io_err(path))
}

/// Writes the phone's plaintext as `out/<domain>/<relativePath>`: directories as
/// directories, symlinks as symlinks (target verbatim), files with their bytes and mtime.
/// `out` is created if needed; same-named files in it are replaced.
pub fn write_tree(phone: &Phone, out: &Path) -> Result<TreeStats, PhoneError> {
    let mut st = TreeStats::default();
    fs::create_dir_all(out).map_err(io_err(out))?;
    for e in phone.entries() {
        if !is_safe_path(&e.domain, &e.relative_path) {
            return Err(PhoneError::UnsafePath {
                domain: e.domain.clone(),
                relative_path: e.relative_path.clone(),
            });
        }
        let mut path = out.join(&e.domain);
        if !e.relative_path.is_empty() {
            path.push(&e.relative_path);
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        st.entries += 1;
        match &e.kind {
            EntryKind::Dir => {
                fs::create_dir_all(&path).map_err(io_err(&path))?;
                st.dirs += 1;
            }
            EntryKind::Symlink { target } => {
                if fs::symlink_metadata(&path).is_ok() {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
                symlink(target, &path).map_err(io_err(&path))?;
                st.symlinks += 1;
            }
            EntryKind::File { .. } => {
                let mut r = phone.open(e)?;
                let mut f = fs::File::create(&path).map_err(io_err(&path))?;
                st.bytes += io::copy(&mut r, &mut f).map_err(io_err(&path))?;
                drop(f);
                set_mtime(&path, e.last_modified)?;
                st.files += 1;
            }
        }
    }
    // Directory times last: creating their children moved them.
    for e in phone.entries().iter().rev().filter(|e| e.is_dir()) {
        let mut path = out.join(&e.domain);
        if !e.relative_path.is_empty() {
            path.push(&e.relative_path);
        }
        set_mtime(&path, e.last_modified)?;
    }
    Ok(st)
}

#[cfg(unix)]
fn symlink(target: &str, path: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, path)
}

#[cfg(not(unix))]
fn symlink(_target: &str, _path: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks need a Unix system",
    ))
}

#[cfg(test)]
mod tests;
