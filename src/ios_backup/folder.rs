//! Reading a standard backup folder (Finder, iTunes, idevicebackup2, Cradle's export): open it,
//! unlock it with the password, list its rows and extract files without ever writing outside the output.

use super::cbc_stream::{self, CbcError, PaddingMode};
use super::keybag::{FileKeyError, Keybag, KeybagError, UnlockedKeybag};
use super::keywrap::{KeyWrapError, WrappedKey};
use super::manifest_db::{self, ManifestDb, ManifestDbError, ManifestRow, PathError, Rows};
use super::plists::{ManifestPlist, PlistError, StatusPlist};
use crate::password::Password;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use zeroize::Zeroizing;

/// Largest plist file read from a backup folder (Manifest.plist with its app list is the biggest).
pub const MAX_PLIST_FILE: u64 = 64 * 1024 * 1024;

/// Errors opening or reading a backup folder. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FolderError {
    /// The path has no Manifest.plist and no single backup folder inside it.
    #[error("{}: not a backup folder (no Manifest.plist in it or in exactly one folder below it)", path.display())]
    NotABackup { path: PathBuf },
    /// Several backups below the given folder; the user must name one.
    #[error("{}: holds {count} backups; give the folder of one of them", path.display())]
    SeveralBackups { path: PathBuf, count: usize },
    /// A file of the backup could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A plist of the backup is malformed.
    #[error(transparent)]
    Plist(Box<PlistError>),
    /// The keybag in Manifest.plist is malformed.
    #[error("Manifest.plist: the backup keybag is unusable: {0}")]
    Keybag(KeybagError),
    /// The password does not open this backup.
    #[error("wrong password: it does not unlock this backup's keybag")]
    WrongPassword,
    /// An encrypted backup was opened without a password.
    #[error("this backup is encrypted: a password is needed")]
    PasswordNeeded,
    /// Manifest.plist says the backup is encrypted but has no ManifestKey (pre-iOS 10.2 or damaged).
    #[error("Manifest.plist: encrypted backup without a ManifestKey (iOS before 10.2 is not supported, or the file is damaged)")]
    NoManifestKey,
    /// The ManifestKey could not be unwrapped.
    #[error("Manifest.plist: the ManifestKey does not unwrap: {0}")]
    ManifestKey(String),
    /// Manifest.db could not be decrypted.
    #[error("Manifest.db: cannot decrypt: {0}")]
    ManifestDecrypt(CbcError),
    /// Manifest.db could not be read.
    #[error(transparent)]
    ManifestDb(Box<ManifestDbError>),
    /// A row's key could not be used.
    #[error("{domain}/{path}: its file key is unusable: {reason}")]
    FileKey {
        domain: String,
        path: String,
        reason: String,
    },
    /// A data file is missing from the backup.
    #[error("{domain}/{path}: its data file {} is missing from the backup", file.display())]
    MissingData {
        domain: String,
        path: String,
        file: PathBuf,
    },
    /// A data file did not decrypt.
    #[error("{domain}/{path}: data file {} does not decrypt: {source}", file.display())]
    Decrypt {
        domain: String,
        path: String,
        file: PathBuf,
        source: CbcError,
    },
    /// A row's domain or path is unsafe to use as a local path.
    #[error("{domain}/{path}: refused: {reason}")]
    UnsafePath {
        domain: String,
        path: String,
        reason: PathError,
    },
    /// A Manifest.db row is inconsistent (bad fileID, unsafe path).
    #[error("{domain}/{path}: refused: {source}")]
    BadRow {
        domain: String,
        path: String,
        source: manifest_db::RowError,
    },
    /// The output would be written through something that is not a plain directory.
    #[error("{}: refused: a path component is a symlink or not a directory", path.display())]
    UnsafeOutput { path: PathBuf },
    /// The output folder is not empty.
    #[error("{}: the output folder is not empty; give a new or empty folder", path.display())]
    OutputNotEmpty { path: PathBuf },
}

impl From<ManifestDbError> for FolderError {
    fn from(e: ManifestDbError) -> Self {
        FolderError::ManifestDb(Box::new(e))
    }
}

impl From<PlistError> for FolderError {
    fn from(e: PlistError) -> Self {
        FolderError::Plist(Box::new(e))
    }
}

impl FolderError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> FolderError + '_ {
        move |source| FolderError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A backup folder whose plists have been read; nothing decrypted yet.
#[derive(Debug)]
pub struct BackupFolder {
    root: PathBuf,
    manifest: ManifestPlist,
    status: Option<StatusPlist>,
}

impl BackupFolder {
    /// Opens `path`: the backup folder itself, or a folder holding exactly one backup folder
    /// (like a MobileSync `Backup` directory with one device in it).
    pub fn open(path: &Path) -> Result<Self, FolderError> {
        let root = find_backup_root(path)?;
        let mpath = root.join("Manifest.plist");
        let manifest = ManifestPlist::from_bytes_at(&read_capped(&mpath)?, &mpath)?;
        let status_path = root.join("Status.plist");
        let status = if status_path.exists() {
            Some(StatusPlist::from_bytes_at(
                &read_capped(&status_path)?,
                &status_path,
            )?)
        } else {
            None
        };
        Ok(BackupFolder {
            root,
            manifest,
            status,
        })
    }

    /// The backup's own folder (the one holding Manifest.plist).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> &ManifestPlist {
        &self.manifest
    }

    pub fn status(&self) -> Option<&StatusPlist> {
        self.status.as_ref()
    }

    pub fn is_encrypted(&self) -> bool {
        self.manifest.is_encrypted()
    }

    /// The parsed keybag from Manifest.plist.
    pub fn keybag(&self) -> Result<Keybag, FolderError> {
        Keybag::decode(self.manifest.backup_keybag()).map_err(FolderError::Keybag)
    }

    /// Checks a password against the keybag only (Manifest.db is not touched).
    pub fn verify_password(&self, password: &Password) -> Result<UnlockedKeybag, FolderError> {
        let kb = self.keybag()?;
        kb.unlock(password).map_err(|e| match e {
            KeybagError::WrongPassword => FolderError::WrongPassword,
            other => FolderError::Keybag(other),
        })
    }

    /// Unlocks the backup (when encrypted) and opens its Manifest.db. An encrypted Manifest.db is
    /// decrypted into a private temporary folder that is removed when the result is dropped.
    pub fn unlock(&self, password: Option<&Password>) -> Result<OpenBackup, FolderError> {
        let db_path = self.root.join("Manifest.db");
        if !self.is_encrypted() {
            let db = ManifestDb::open(&db_path)?;
            return Ok(OpenBackup {
                root: self.root.clone(),
                keys: None,
                db,
                _scratch: None,
            });
        }
        let password = password.ok_or(FolderError::PasswordNeeded)?;
        let keys = self.verify_password(password)?;
        self.open_with_keys(keys)
    }

    /// As [`BackupFolder::unlock`], with a keybag already unlocked (e.g. from a 32-byte KEK).
    pub fn open_with_keys(&self, keys: UnlockedKeybag) -> Result<OpenBackup, FolderError> {
        let mk = self
            .manifest
            .manifest_key()
            .ok_or(FolderError::NoManifestKey)?;
        let wrapped = WrappedKey::decode(mk)
            .map_err(|e: KeyWrapError| FolderError::ManifestKey(e.to_string()))?;
        let key = keys
            .unwrap_file_key(&wrapped)
            .map_err(|e: FileKeyError| FolderError::ManifestKey(e.to_string()))?;
        let scratch = tempfile::Builder::new()
            .prefix(&crate::store::scratch::private_prefix("cradle-manifest-"))
            .tempdir()
            .map_err(FolderError::io(Path::new("temporary folder")))?;
        let src_path = self.root.join("Manifest.db");
        let dst_path = scratch.path().join("Manifest.db");
        let src = fs::File::open(&src_path).map_err(FolderError::io(&src_path))?;
        let dst = fs::File::create(&dst_path).map_err(FolderError::io(&dst_path))?;
        let mut w = io::BufWriter::new(dst);
        let outcome = cbc_stream::decrypt_manifest_db(io::BufReader::new(src), &mut w, &key)
            .map_err(FolderError::ManifestDecrypt)?;
        drop(w);
        tracing::debug!(?outcome, "Manifest.db decrypted");
        let db = ManifestDb::open(&dst_path)?;
        Ok(OpenBackup {
            root: self.root.clone(),
            keys: Some(keys),
            db,
            _scratch: Some(scratch),
        })
    }
}

/// An opened backup: its Manifest.db rows and the keys to decrypt its files.
pub struct OpenBackup {
    root: PathBuf,
    keys: Option<UnlockedKeybag>,
    db: ManifestDb,
    // Declared after `db` so the database closes before its scratch folder is removed.
    _scratch: Option<tempfile::TempDir>,
}

/// Statistics of an extraction.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExtractStats {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files whose decrypted length disagreed with the MBFile `Size` (the bytes were kept).
    pub size_mismatches: u64,
}

/// Which rows to extract: glob patterns on domain and relative path (`*` matches `/` too).
#[derive(Debug, Default)]
pub struct Filter {
    domain: Option<globset::GlobMatcher>,
    path: Option<globset::GlobMatcher>,
}

impl Filter {
    /// A filter from optional glob patterns.
    pub fn new(domain: Option<&str>, path: Option<&str>) -> Result<Self, globset::Error> {
        let m = |p: &str| globset::Glob::new(p).map(|g| g.compile_matcher());
        Ok(Filter {
            domain: domain.map(m).transpose()?,
            path: path.map(m).transpose()?,
        })
    }

    pub fn matches(&self, domain: &str, path: &str) -> bool {
        self.domain.as_ref().is_none_or(|g| g.is_match(domain))
            && self.path.as_ref().is_none_or(|g| g.is_match(path))
    }
}

impl OpenBackup {
    pub fn manifest_db(&self) -> &ManifestDb {
        &self.db
    }

    /// Every row, streamed (bounded memory whatever the backup's size).
    pub fn rows(&self) -> Rows<'_> {
        self.db.rows()
    }

    /// Where a row's data file lives in the folder. The fileID is checked first.
    pub fn data_path(&self, row: &ManifestRow) -> Result<PathBuf, FolderError> {
        row.validate().map_err(|source| FolderError::BadRow {
            domain: row.domain.clone(),
            path: row.relative_path.clone(),
            source,
        })?;
        Ok(self.root.join(&row.file_id[..2]).join(&row.file_id))
    }

    /// Decrypts (or copies, in an unencrypted backup) one regular file's content into `out`.
    /// Returns the plaintext length; a disagreement with `Size` is logged, the bytes are kept.
    pub fn read_file_into(
        &self,
        row: &ManifestRow,
        out: &mut dyn Write,
    ) -> Result<u64, FolderError> {
        let data = self.data_path(row)?;
        let file = match fs::File::open(&data) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FolderError::MissingData {
                    domain: row.domain.clone(),
                    path: row.relative_path.clone(),
                    file: data,
                })
            }
            Err(e) => return Err(FolderError::io(&data)(e)),
        };
        let reader = io::BufReader::with_capacity(cbc_stream::BUF_LEN, file);
        let len = match &self.keys {
            None => {
                let mut w = CountingWriter { inner: out, n: 0 };
                io::copy(&mut reader.take(u64::MAX), &mut w).map_err(FolderError::io(&data))?;
                w.n
            }
            Some(keys) => {
                let key = self.file_key(keys, row)?;
                let d = cbc_stream::decrypt_to(reader, out, &key, PaddingMode::Strict).map_err(
                    |source| FolderError::Decrypt {
                        domain: row.domain.clone(),
                        path: row.relative_path.clone(),
                        file: data.clone(),
                        source,
                    },
                )?;
                d.plaintext_len
            }
        };
        if len != row.file.size {
            tracing::warn!(
                domain = %row.domain,
                path = %row.relative_path,
                decrypted = len,
                size = row.file.size,
                "decrypted length differs from the Size recorded in Manifest.db; kept the decrypted bytes"
            );
        }
        Ok(len)
    }

    fn file_key(
        &self,
        keys: &UnlockedKeybag,
        row: &ManifestRow,
    ) -> Result<Zeroizing<[u8; 32]>, FolderError> {
        let err = |reason: String| FolderError::FileKey {
            domain: row.domain.clone(),
            path: row.relative_path.clone(),
            reason,
        };
        let blob = row
            .file
            .encryption_key
            .as_deref()
            .ok_or_else(|| err("no EncryptionKey in its record".into()))?;
        let wrapped = WrappedKey::decode(blob).map_err(|e| err(e.to_string()))?;
        keys.unwrap_file_key(&wrapped)
            .map_err(|e| err(e.to_string()))
    }

    /// Extracts matching rows into `out/<domain>/<relativePath>`: files with their content,
    /// directories as directories, symlinks as symlinks (target text verbatim). `out` must be new
    /// or empty; nothing is ever written through a symlink or outside `out`. Symlinks are created
    /// last so no later write can pass through one.
    pub fn extract(
        &self,
        filter: &Filter,
        out: &Path,
        progress: &mut dyn FnMut(&ManifestRow, &ExtractStats),
    ) -> Result<ExtractStats, FolderError> {
        prepare_output(out)?;
        let mut stats = ExtractStats::default();
        let mut links = Vec::new();
        for row in self.rows() {
            let row = row?;
            if !filter.matches(&row.domain, &row.relative_path) {
                continue;
            }
            let rel = safe_row_path(&row)?;
            let dest = out.join(&rel);
            match row.flags {
                manifest_db::FLAG_DIRECTORY => {
                    ensure_dirs(out, &rel)?;
                    stats.directories += 1;
                }
                manifest_db::FLAG_SYMLINK => {
                    // Remember only what is needed; links are made at the end.
                    links.push((rel, row.file.target.clone().unwrap_or_default()));
                }
                manifest_db::FLAG_FILE => {
                    if let Some(parent) = rel.parent() {
                        ensure_dirs(out, parent)?;
                    }
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&dest)
                        .map_err(FolderError::io(&dest))?;
                    let mut w = io::BufWriter::with_capacity(cbc_stream::BUF_LEN, f);
                    let res = self.read_file_into(&row, &mut w);
                    let res = res.and_then(|n| {
                        w.flush().map_err(FolderError::io(&dest))?;
                        Ok(n)
                    });
                    match res {
                        Ok(n) => {
                            if n != row.file.size {
                                stats.size_mismatches += 1;
                            }
                            stats.bytes += n;
                            stats.files += 1;
                        }
                        Err(e) => {
                            drop(w);
                            let _ = fs::remove_file(&dest);
                            return Err(e);
                        }
                    }
                }
                other => {
                    tracing::warn!(domain = %row.domain, path = %row.relative_path, flags = other, "skipped a row of unknown kind");
                }
            }
            progress(&row, &stats);
        }
        for (rel, target) in links {
            if let Some(parent) = rel.parent() {
                ensure_dirs(out, parent)?;
            }
            let dest = out.join(&rel);
            std::os::unix::fs::symlink(&target, &dest).map_err(FolderError::io(&dest))?;
            stats.symlinks += 1;
        }
        Ok(stats)
    }
}

/// `<domain>/<relativePath>` of a row, after checking both are safe as local path components.
pub fn safe_row_path(row: &ManifestRow) -> Result<PathBuf, FolderError> {
    let unsafe_path = |reason| FolderError::UnsafePath {
        domain: row.domain.clone(),
        path: row.relative_path.clone(),
        reason,
    };
    let domain = manifest_db::safe_domain(&row.domain).map_err(unsafe_path)?;
    let rel = manifest_db::safe_relative_path(&row.relative_path).map_err(unsafe_path)?;
    Ok(Path::new(domain).join(rel))
}

/// Creates `root/rel` and its parents, refusing to pass through anything that is not a real
/// directory (a symlink planted by an earlier row, a file).
fn ensure_dirs(root: &Path, rel: &Path) -> Result<(), FolderError> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(name) => cur.push(name),
            _ => {
                return Err(FolderError::UnsafeOutput {
                    path: cur.join(rel),
                })
            }
        }
        match fs::symlink_metadata(&cur) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Err(FolderError::UnsafeOutput { path: cur }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(FolderError::io(&cur))?;
            }
            Err(e) => return Err(FolderError::io(&cur)(e)),
        }
    }
    Ok(())
}

/// Creates `out` if missing; refuses a non-empty one.
fn prepare_output(out: &Path) -> Result<(), FolderError> {
    match fs::read_dir(out) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(FolderError::OutputNotEmpty {
                    path: out.to_path_buf(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(out).map_err(FolderError::io(out))
        }
        Err(e) => Err(FolderError::io(out)(e)),
    }
}

fn find_backup_root(path: &Path) -> Result<PathBuf, FolderError> {
    if path.join("Manifest.plist").is_file() {
        return Ok(path.to_path_buf());
    }
    let rd = fs::read_dir(path).map_err(FolderError::io(path))?;
    let mut found = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.join("Manifest.plist").is_file() {
            found.push(p);
        }
    }
    match found.len() {
        0 => Err(FolderError::NotABackup {
            path: path.to_path_buf(),
        }),
        1 => Ok(found.remove(0)),
        count => Err(FolderError::SeveralBackups {
            path: path.to_path_buf(),
            count,
        }),
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, FolderError> {
    let f = fs::File::open(path).map_err(FolderError::io(path))?;
    let mut buf = Vec::new();
    f.take(MAX_PLIST_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(FolderError::io(path))?;
    if buf.len() as u64 > MAX_PLIST_FILE {
        return Err(FolderError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, "larger than 64 MiB"),
        });
    }
    Ok(buf)
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
