//! Byte-identical export of a snapshot (format.md §9.2): each plaintext file re-encrypted with its
//! own key (zero IV, PKCS#7), Manifest.db with the ManifestKey, raw files as stored.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::repo::{RepoError, Repository};
use super::snapshot::{SnapshotKind, SnapshotRecord, TopEncoding, TopFile};
use super::table::{Content, FileEntry};
use crate::ios_backup::cbc_stream::EncryptWriter;
use crate::ios_backup::keybag::{Keybag, UnlockedKeybag};
use crate::ios_backup::keywrap::WrappedKey;
use crate::ios_backup::mbfile::MbFile;
use crate::ios_backup::plists::ManifestPlist;

/// Why an export (or a read of a snapshot's files) failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the repository (a record, its table or a stream) failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The snapshot's keys do not open (its Manifest.plist or recorded KEK is unusable).
    #[error("snapshot {what}: {reason}")]
    Keys { what: String, reason: String },
    /// A file's own key is unusable.
    #[error("{file}: its file key is unusable: {reason}")]
    FileKey { file: String, reason: String },
    /// Writing the output failed.
    #[error("{}: {source}", path.display())]
    Output { path: PathBuf, source: io::Error },
    /// The output folder exists and is not empty.
    #[error("{}: the output folder is not empty; give a new or empty folder", .0.display())]
    OutputNotEmpty(PathBuf),
}

/// What is needed to re-encrypt a snapshot's plaintext: the unlocked keybag (from the recorded
/// KEK) and the ManifestKey. `None` for raw snapshots and unencrypted backups.
pub struct SnapshotKeys {
    unlocked: Option<UnlockedKeybag>,
    manifest_key: Option<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for SnapshotKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotKeys(..)")
    }
}

impl SnapshotKeys {
    /// The keys of `record`, from its Manifest.plist and `backup_kek`.
    pub fn for_record(repo: &Repository, record: &SnapshotRecord) -> Result<Self, ExportError> {
        let none = SnapshotKeys {
            unlocked: None,
            manifest_key: None,
        };
        if record.kind == SnapshotKind::Raw {
            return Ok(none);
        }
        let err = |reason: String| ExportError::Keys {
            what: "Manifest.plist".into(),
            reason,
        };
        let Some(top) = record.top("Manifest.plist") else {
            return Err(err("missing".into()));
        };
        let mut bytes = Vec::new();
        repo.read_stream(&top.stream, &mut bytes)?;
        let manifest = ManifestPlist::from_bytes(&bytes).map_err(|e| err(e.to_string()))?;
        if !manifest.is_encrypted() {
            return Ok(none);
        }
        let kb = Keybag::decode(manifest.backup_keybag()).map_err(|e| err(e.to_string()))?;
        let unlocked = kb
            .unlock_with_kek(&record.backup_kek.0)
            .map_err(|e| err(format!("the recorded backup key does not unlock it: {e}")))?;
        let manifest_key = match manifest.manifest_key() {
            Some(mk) => {
                let w = WrappedKey::decode(mk).map_err(|e| err(e.to_string()))?;
                Some(
                    unlocked
                        .unwrap_file_key(&w)
                        .map_err(|e| err(format!("ManifestKey: {e}")))?,
                )
            }
            None => None,
        };
        Ok(SnapshotKeys {
            unlocked: Some(unlocked),
            manifest_key,
        })
    }

    /// The unlocked keybag, for encrypted digested snapshots.
    pub fn unlocked(&self) -> Option<&UnlockedKeybag> {
        self.unlocked.as_ref()
    }

    /// A file's own key from its MBFile blob.
    pub fn file_key(&self, mbfile: &[u8]) -> Result<Option<Zeroizing<[u8; 32]>>, String> {
        if self.unlocked.is_none() {
            return Ok(None);
        }
        let f = MbFile::decode(mbfile).map_err(|e| e.to_string())?;
        self.unwrap_key(f.encryption_key.as_deref())
    }

    /// A file's own key from its wrapped `EncryptionKey` blob (`None`: its record had none).
    pub fn unwrap_key(&self, blob: Option<&[u8]>) -> Result<Option<Zeroizing<[u8; 32]>>, String> {
        let Some(kb) = &self.unlocked else {
            return Ok(None);
        };
        let blob = blob.ok_or("no EncryptionKey in its record")?;
        let w = WrappedKey::decode(blob).map_err(|e| e.to_string())?;
        kb.unwrap_file_key(&w).map(Some).map_err(|e| e.to_string())
    }
}

/// The wrapped `EncryptionKey` of every plaintext entry with a row, by fileID: what a working
/// tree needs to re-encrypt its parent's files without keeping their rows. The table is read one
/// entry at a time; the map costs about 100 bytes per plaintext file (20-byte fileID, ~44-byte
/// blob, map overhead). Rows whose MBFile does not decode are left out (writing them fails as
/// `write_entry` would).
pub fn wrapped_keys(
    repo: &Repository,
    record: &SnapshotRecord,
) -> Result<HashMap<[u8; 20], Vec<u8>>, ExportError> {
    let mut out = HashMap::new();
    let mut rd = repo.file_table_reader(&record.file_table);
    while let Some(e) = rd.next_entry(repo)? {
        if let (Content::Plain(_), Some(r)) = (&e.content, &e.row) {
            if let Some(k) = MbFile::decode(&r.mbfile)
                .ok()
                .and_then(|f| f.encryption_key)
            {
                out.insert(e.file_id, k);
            }
        }
    }
    Ok(out)
}

fn copy_stream(
    repo: &Repository,
    stream: &super::stream::Stream,
    key: Option<&[u8; 32]>,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    let out_err = |e: io::Error| ExportError::Repo(RepoError::Output(e));
    match key {
        None => {
            repo.read_stream(stream, &mut &mut *out)?;
        }
        Some(k) => {
            let mut w = EncryptWriter::new(out, k);
            repo.read_stream(stream, &mut w)?;
            w.finish().map_err(out_err)?;
        }
    }
    Ok(())
}

/// Writes a top file as the phone sent it.
pub fn write_top(
    repo: &Repository,
    keys: &SnapshotKeys,
    top: &TopFile,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    let key = match top.encoding {
        TopEncoding::ManifestDbPlain => keys.manifest_key.as_deref(),
        _ => None,
    };
    copy_stream(repo, &top.stream, key, out)
}

/// Writes an entry's data file as the phone sent it. Entries without content write nothing.
pub fn write_entry(
    repo: &Repository,
    keys: &SnapshotKeys,
    entry: &FileEntry,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    match &entry.content {
        Content::Raw(s) => copy_stream(repo, s, None, out),
        Content::Plain(s) => {
            let key = match &entry.row {
                Some(r) => keys
                    .file_key(&r.mbfile)
                    .map_err(|reason| ExportError::FileKey {
                        file: format!("{}/{}", r.domain, r.relative_path),
                        reason,
                    })?,
                None => None,
            };
            copy_stream(repo, s, key.as_deref(), out)
        }
        Content::None | Content::Absent => Ok(()),
    }
}

/// Writes a data file as the phone sent it from its content and, for plaintext, its wrapped
/// `EncryptionKey` (see `wrapped_keys`); `what` names it in errors.
pub fn write_content(
    repo: &Repository,
    keys: &SnapshotKeys,
    content: &Content,
    wrapped_key: Option<&[u8]>,
    what: &str,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    match content {
        Content::Raw(s) => copy_stream(repo, s, None, out),
        Content::Plain(s) => {
            let key = keys
                .unwrap_key(wrapped_key)
                .map_err(|reason| ExportError::FileKey {
                    file: what.to_string(),
                    reason,
                })?;
            copy_stream(repo, s, key.as_deref(), out)
        }
        Content::None | Content::Absent => Ok(()),
    }
}

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    pub files: u64,
    pub bytes: u64,
}

struct Counting<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Checks that `out` is absent or an empty directory, and creates it.
pub fn prepare_out(out: &Path) -> Result<(), ExportError> {
    match fs::symlink_metadata(out) {
        Ok(m) if m.is_dir() => {
            let mut rd = fs::read_dir(out).map_err(|source| ExportError::Output {
                path: out.into(),
                source,
            })?;
            if rd.next().is_some() {
                return Err(ExportError::OutputNotEmpty(out.into()));
            }
            Ok(())
        }
        Ok(_) => Err(ExportError::OutputNotEmpty(out.into())),
        Err(_) => fs::create_dir_all(out).map_err(|source| ExportError::Output {
            path: out.into(),
            source,
        }),
    }
}

fn write_file(
    path: &Path,
    stats: &mut ExportStats,
    f: impl FnOnce(&mut dyn Write) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let oerr = |source| ExportError::Output {
        path: path.into(),
        source,
    };
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(oerr)?;
    let mut bw = BufWriter::with_capacity(1 << 20, file);
    let mut c = Counting {
        inner: &mut bw,
        n: 0,
    };
    f(&mut c)?;
    let n = c.n;
    bw.flush().map_err(oerr)?;
    stats.files += 1;
    stats.bytes += n;
    Ok(())
}

/// Writes `<out>/<udid>/`: the top files and one data file per entry with content, each
/// byte-identical to what the phone sent. `out` must be absent or empty. The table is read one
/// entry at a time.
pub fn export(
    repo: &Repository,
    record: &SnapshotRecord,
    out: &Path,
) -> Result<ExportStats, ExportError> {
    export_inner(repo, record, out, None)
}

/// Like `export`, but a data file whose content cannot be read (a chunk missing or damaged) is
/// left out and listed (`domain/relativePath`, and why) instead of ending the export, so the
/// rest of a damaged snapshot still exports (format.md §16).
pub fn export_skipping_damaged(
    repo: &Repository,
    record: &SnapshotRecord,
    out: &Path,
) -> Result<(ExportStats, Vec<(String, String)>), ExportError> {
    let mut damaged = Vec::new();
    let st = export_inner(repo, record, out, Some(&mut damaged))?;
    Ok((st, damaged))
}

/// A read error that is damage to the repository's data rather than the drive failing.
fn is_data_damage(e: &ExportError) -> bool {
    use super::pack::PackProblem;
    match e {
        ExportError::Repo(RepoError::ChunkMissing(_) | RepoError::BadStream(_)) => true,
        ExportError::Repo(RepoError::Pack(p)) => match &p.problem {
            PackProblem::Storage(s) => s.is_not_found(),
            _ => true,
        },
        _ => false,
    }
}

fn export_inner(
    repo: &Repository,
    record: &SnapshotRecord,
    out: &Path,
    mut damaged: Option<&mut Vec<(String, String)>>,
) -> Result<ExportStats, ExportError> {
    prepare_out(out)?;
    let keys = SnapshotKeys::for_record(repo, record)?;
    let root = out.join(&record.device.udid);
    let mk = |p: &Path| {
        fs::create_dir_all(p).map_err(|source| ExportError::Output {
            path: p.into(),
            source,
        })
    };
    mk(&root)?;
    let mut stats = ExportStats::default();
    for top in &record.top_files {
        write_file(&root.join(&top.name), &mut stats, |w| {
            write_top(repo, &keys, top, w)
        })?;
    }
    let mut rd = repo.file_table_reader(&record.file_table);
    while let Some(e) = rd.next_entry(repo)? {
        if e.content.stream().is_none() {
            continue;
        }
        let id = e.file_id_hex();
        let dir = root.join(&id[..2]);
        if !dir.is_dir() {
            mk(&dir)?;
        }
        let path = dir.join(&id);
        let res = write_file(&path, &mut stats, |w| write_entry(repo, &keys, &e, w));
        match (res, damaged.as_deref_mut()) {
            (Ok(()), _) => {}
            (Err(err), Some(list)) if is_data_damage(&err) => {
                let _ = fs::remove_file(&path);
                let name = match &e.row {
                    Some(r) => format!("{}/{}", r.domain, r.relative_path),
                    None => format!("(no row)/{id}"),
                };
                list.push((name, err.to_string()));
            }
            (Err(err), _) => return Err(err),
        }
    }
    Ok(stats)
}
