//! Ingest of a finished staging session (format.md §12 steps 1–4, §15.1): decrypt what §9.2
//! allows, chunk and pack it, journal each file, build the file table, commit, clean up.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Read, Seek};
use std::path::Path;

use zeroize::Zeroizing;

use super::codec::{DecodeError, Reader};
use super::export::{write_content, ExportError, SnapshotKeys};
use super::ids::{SessionId, SnapshotId};
use super::journal::{Journal, JournalError, JournalKind};
use super::repo::{now_ms, RepoError, Repository};
use super::scratch::ScratchError;
use super::seal::BlobKind;
use super::snapshot::{
    is_valid_top_name, BackupKek, Counts, DeviceInfo, SnapshotKind, SnapshotRecord, TopEncoding,
    TopFile,
};
use super::staging::{BaseFile, Node, Session, StagingError, TreeError, WorkTree};
use super::stream::Stream;
use super::table::{Content, FileEntry, Row};
use crate::ios_backup::cbc_stream::{self, DecryptPush, PaddingOutcome};
use crate::ios_backup::is_valid_file_id;
use crate::ios_backup::keybag::{Keybag, KeybagError, UnlockedKeybag};
use crate::ios_backup::keywrap::WrappedKey;
use crate::ios_backup::manifest_db::{ManifestDb, ManifestRow, FLAG_FILE};
use crate::ios_backup::mbfile::MbFile;
use crate::ios_backup::plists::{ManifestPlist, StatusPlist};
use crate::password::Password;

/// Files whose `FileDone` frames are made durable together.
const BATCH_FILES: usize = 2048;
/// Bytes stored between two pack flushes (ingest's staged files, digest's plaintext).
pub(super) const BATCH_BYTES: u64 = 64 << 20;
/// Largest plist read into memory.
pub(super) const PLIST_MAX: u64 = 64 << 20;

/// Why an ingest failed. Everything durable so far stays; running it again resumes.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The staged backup lacks something it needs (Manifest.plist, Manifest.db).
    #[error("the staged backup is incomplete: {0}")]
    Incomplete(String),
    /// A staged plist or Manifest.db is malformed (the phone's fault).
    #[error("the phone's {what} is unusable: {reason}")]
    BadBackup { what: String, reason: String },
    /// Local scratch space failed.
    #[error("local scratch space: {0}")]
    Scratch(io::Error),
    /// A journal frame is malformed.
    #[error("ingest.log: {0}")]
    Decode(#[from] DecodeError),
    /// The working tree's scratch database failed.
    #[error("the local scratch database failed (see the log): free space in TMPDIR and run the ingest again")]
    Tree,
}

impl From<ScratchError> for IngestError {
    fn from(e: ScratchError) -> Self {
        IngestError::Staging(StagingError::Scratch(e))
    }
}

impl From<TreeError> for IngestError {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::Scratch => IngestError::Tree,
            e => IngestError::Incomplete(format!("working tree: {e:?}")),
        }
    }
}

/// What an ingest produced.
#[derive(Debug, Clone)]
pub struct IngestReport {
    pub snapshot: SnapshotId,
    pub kind: SnapshotKind,
    pub udid: String,
    pub counts: Counts,
    /// Files whose bytes came from this session (not from the parent).
    pub files_ingested: u64,
    /// Content bytes of those files.
    pub bytes_ingested: u64,
}

enum Done {
    File(FileEntry),
    Top(TopFile),
    Committing(SnapshotId),
}

fn encode_top(t: &TopFile, out: &mut Vec<u8>) {
    super::codec::put_bytes(out, t.name.as_bytes());
    out.push(t.encoding.code());
    t.stream.encode(out);
}

impl Done {
    fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut o = Vec::new();
        match self {
            Done::File(e) => {
                o.push(1);
                e.encode(&mut o)?;
            }
            Done::Top(t) => {
                o.push(2);
                encode_top(t, &mut o);
            }
            Done::Committing(id) => {
                o.push(3);
                o.extend_from_slice(id.as_bytes());
            }
        }
        Ok(o)
    }

    fn decode(b: &[u8]) -> Result<Done, DecodeError> {
        let mut r = Reader::new(b);
        let d = match r.u8("ingest frame")? {
            1 => Done::File(FileEntry::decode_body(
                r.bytes(super::caps::ENTRY_MAX, "entry")?,
            )?),
            2 => {
                let name = r.str(64, "top name")?.to_string();
                let encoding = TopEncoding::from_code(r.u8("top encoding")?, "top encoding")?;
                Done::Top(TopFile {
                    name,
                    encoding,
                    stream: Stream::decode(&mut r)?,
                })
            }
            3 => Done::Committing(SnapshotId::from_bytes(r.array("snapshot id")?)),
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "ingest frame",
                    value: u64::from(v),
                })
            }
        };
        r.finish()?;
        Ok(d)
    }
}

struct Ctx<'a> {
    repo: &'a mut Repository,
    session: &'a Session,
    journal: Journal,
    pending: Vec<(Done, Option<String>)>,
    pending_bytes: u64,
    files_ingested: u64,
    bytes_ingested: u64,
    parent: Option<(SnapshotRecord, Option<SnapshotKeys>)>,
    /// The working tree (scratch database); data files leave it as their rows take them.
    tree: WorkTree,
    /// `FileDone` entries of an interrupted run by fileID (entry bodies, scratch database).
    done_files: super::scratch::ScratchMap,
    udid: String,
}

impl Ctx<'_> {
    fn staged_reader(&self, staged: &str, sealed: bool) -> Result<Box<dyn Read>, IngestError> {
        let r = super::repo_target::StagedReader::open(
            self.repo,
            self.session.id(),
            self.session.staged_path(staged),
            sealed,
        )
        .map_err(|e| StagingError::Damaged {
            path: self.session.staged_path(staged),
            reason: e.to_string(),
        })?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, r)))
    }

    /// Queues a finished file; durable (and its staged copy deleted) at the next `commit_batch`.
    fn done(&mut self, d: Done, staged: Option<String>, bytes: u64) -> Result<(), IngestError> {
        self.pending.push((d, staged));
        self.pending_bytes += bytes;
        if self.pending.len() >= BATCH_FILES || self.pending_bytes >= BATCH_BYTES {
            self.commit_batch()?;
        }
        Ok(())
    }

    /// §15.1 steps 1–2: packs durable, then the journal, then the staged copies go.
    fn commit_batch(&mut self) -> Result<(), IngestError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.repo.flush()?;
        for (d, _) in &self.pending {
            self.journal.push(self.repo.keys(), &d.encode()?)?;
        }
        let storage = self.session.storage().clone();
        self.journal.sync(storage.as_ref())?;
        for (_, staged) in self.pending.drain(..) {
            if let Some(s) = staged {
                let p = self.session.staged_path(&s);
                match storage.delete(&p) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(StagingError::from(e).into()),
                }
            }
        }
        self.pending_bytes = 0;
        Ok(())
    }

    fn parent_keys(&mut self) -> Result<&SnapshotKeys, IngestError> {
        let repo = &*self.repo;
        let Some((rec, keys)) = self.parent.as_mut() else {
            return Err(IngestError::Incomplete("no parent snapshot".into()));
        };
        if keys.is_none() {
            *keys = Some(SnapshotKeys::for_record(repo, rec)?);
        }
        keys.as_ref()
            .ok_or_else(|| IngestError::Incomplete("parent keys".into()))
    }

    /// The wrapped `EncryptionKey` a parent file was stored under (plaintext content only).
    fn parent_key(&mut self, f: &BaseFile) -> Result<Option<Vec<u8>>, IngestError> {
        match f.content {
            Content::Plain(_) => {
                let Some((rec, _)) = self.parent.as_ref() else {
                    return Err(IngestError::Incomplete("no parent snapshot".into()));
                };
                Ok(self.tree.wrapped_key(self.repo, rec, &f.file_id)?)
            }
            _ => Ok(None),
        }
    }

    /// Takes the data file named `file_id` (lower-case hex) out of the working tree.
    fn take_data(&mut self, file_id: &str) -> Result<Option<Node>, IngestError> {
        if !is_valid_file_id(file_id) {
            return Ok(None);
        }
        let path = format!("{}/{}/{file_id}", self.udid, &file_id[..2]);
        Ok(self.tree.take_file(&path)?)
    }

    /// Takes the entry an interrupted run journaled for `fid`.
    fn take_done(&mut self, fid: &[u8; 20]) -> Result<Option<FileEntry>, IngestError> {
        match self.done_files.remove(fid)? {
            Some(v) => Ok(Some(FileEntry::decode_body(&v)?)),
            None => Ok(None),
        }
    }

    /// A parent file's ciphertext as the phone once sent it, stored raw.
    fn reencrypt_raw(&mut self, f: &BaseFile) -> Result<Content, IngestError> {
        let wrapped = self.parent_key(f)?;
        self.parent_keys()?;
        let mut tmp = tempfile::tempfile().map_err(IngestError::Scratch)?;
        {
            let keys = self
                .parent
                .as_ref()
                .and_then(|p| p.1.as_ref())
                .ok_or_else(|| IngestError::Incomplete("parent keys".into()))?;
            let mut w = io::BufWriter::new(&mut tmp);
            let what = hex::encode(f.file_id);
            write_content(
                self.repo,
                keys,
                &f.content,
                wrapped.as_deref(),
                &what,
                &mut w,
            )?;
            io::Write::flush(&mut w).map_err(IngestError::Scratch)?;
        }
        tmp.rewind().map_err(IngestError::Scratch)?;
        let s = self.repo.put_stream(BufReader::new(tmp), BlobKind::Raw)?;
        Ok(Content::Raw(s))
    }
}

fn read_small(ctx: &Ctx<'_>, node: &Node, what: &str) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::new();
    match node {
        Node::Staged { staged, sealed, .. } => {
            ctx.staged_reader(staged, *sealed)?
                .take(PLIST_MAX)
                .read_to_end(&mut out)
                .map_err(|e| StagingError::Damaged {
                    path: what.into(),
                    reason: e.to_string(),
                })?;
        }
        Node::BaseTop(t) => {
            ctx.repo.read_stream(&t.stream, &mut out)?;
        }
        _ => return Err(IngestError::Incomplete(format!("{what} is not a file"))),
    }
    Ok(out)
}

/// The ManifestKey (Manifest.db's own key) from an unlocked keybag; `None` when Manifest.plist
/// has none or it does not unwrap.
pub(crate) fn manifest_key(
    kb: &UnlockedKeybag,
    manifest: &ManifestPlist,
) -> Option<Zeroizing<[u8; 32]>> {
    let mk = manifest.manifest_key()?;
    WrappedKey::decode(mk)
        .ok()
        .and_then(|w| kb.unwrap_file_key(&w).ok())
}

/// A data file's own key from its MBFile's wrapped `EncryptionKey`.
pub(crate) fn file_key(kb: &UnlockedKeybag, f: &MbFile) -> Option<Zeroizing<[u8; 32]>> {
    let blob = f.encryption_key.as_deref()?;
    let w = WrappedKey::decode(blob).ok()?;
    kb.unwrap_file_key(&w).ok()
}

/// Runs (or resumes) the ingest of a `done` session and commits its snapshot. Manifest.db rows
/// (sorted by SQLite in its own temporary storage), `ops.log`, `ingest.log` and file-table
/// entries stream through one at a time; the working tree, the parent's wrapped file keys and
/// the `FileDone` entries of an interrupted run live in a scratch database on the box's own
/// temporary storage (`scratch`), so memory does not grow with the number of files.
pub fn ingest(
    repo: &mut Repository,
    id: SessionId,
    password: Option<&Password>,
) -> Result<IngestReport, IngestError> {
    let info = Session::info_of(repo, id)?;
    let parent = if info.parent.is_zero() {
        None
    } else {
        Some(repo.load_snapshot(&info.parent)?)
    };
    let mut tree = match &parent {
        Some(rec) => WorkTree::from_parent(repo, rec)?,
        None => WorkTree::new()?,
    };
    let session = Session::open(repo, id, |op| {
        // Ops are journaled only after the tree accepted them; a refusal cannot happen here,
        // but a failing scratch database can.
        match tree.apply(&op) {
            Err(TreeError::Scratch) => Err(StagingError::Damaged {
                path: "local scratch database".into(),
                reason: "failed (see the log); free space in TMPDIR and run the ingest again"
                    .into(),
            }),
            _ => Ok(()),
        }
    })?;
    let storage = session.storage().clone();
    let done_files = tree.scratch().tree("done")?;
    done_files.clear()?;
    let mut done_tops: HashMap<String, TopFile> = HashMap::new();
    let mut committing: Vec<SnapshotId> = Vec::new();
    let journal = Journal::open_each(
        storage.as_ref(),
        repo.keys(),
        &session.path("ingest.log"),
        JournalKind::Ingest,
        id,
        |f| -> Result<(), IngestError> {
            match Done::decode(&f)? {
                Done::File(e) => {
                    let mut o = Vec::new();
                    e.encode(&mut o)?;
                    done_files.insert(e.file_id, &o[4..])?;
                }
                Done::Top(t) => {
                    done_tops.insert(t.name.clone(), t);
                }
                Done::Committing(sid) => committing.push(sid),
            }
            Ok(())
        },
    )?;
    for sid in committing {
        // The record may already be there (crash during cleanup).
        if let Ok(rec) = repo.load_snapshot(&sid) {
            drop(journal);
            session.delete()?;
            return Ok(IngestReport {
                snapshot: sid,
                kind: rec.kind,
                udid: rec.device.udid,
                counts: rec.counts,
                files_ingested: 0,
                bytes_ingested: 0,
            });
        }
        let _ = storage.delete(&format!("snapshots/{sid}.tmp"));
    }

    let u = info.udid.clone();
    let mut tops: Vec<(String, Node)> = Vec::new();
    for (name, node) in tree.children(Some(u.as_str())).map_err(IngestError::from)? {
        if !matches!(node, Node::Dir) {
            tops.push((name, node));
        }
    }
    let top_node = |name: &str| tops.iter().find(|(n, _)| n == name).map(|(_, n)| n.clone());

    let mut ctx = Ctx {
        repo,
        session: &session,
        journal,
        pending: Vec::new(),
        pending_bytes: 0,
        files_ingested: 0,
        bytes_ingested: 0,
        parent: parent.clone().map(|p| (p, None)),
        tree,
        done_files,
        udid: u.clone(),
    };

    let manifest_node = top_node("Manifest.plist")
        .ok_or_else(|| IngestError::Incomplete("no Manifest.plist".into()))?;
    let manifest_bytes = read_small(&ctx, &manifest_node, "Manifest.plist")?;
    let manifest =
        ManifestPlist::from_bytes(&manifest_bytes).map_err(|e| IngestError::BadBackup {
            what: "Manifest.plist".into(),
            reason: e.to_string(),
        })?;
    let status = match top_node("Status.plist") {
        Some(n) => StatusPlist::from_bytes(&read_small(&ctx, &n, "Status.plist")?).ok(),
        None => None,
    };

    // Keys: the parent's KEK first (no PBKDF2), then the password; neither → raw snapshot.
    let encrypted = manifest.is_encrypted();
    let mut unlocked: Option<UnlockedKeybag> = None;
    if encrypted {
        let kb = Keybag::decode(manifest.backup_keybag()).map_err(|e| IngestError::BadBackup {
            what: "keybag".into(),
            reason: e.to_string(),
        })?;
        if let Some(p) = parent.as_ref().filter(|p| p.kind == SnapshotKind::Digested) {
            unlocked = kb.unlock_with_kek(&p.backup_kek.0).ok();
        }
        if unlocked.is_none() {
            if let Some(pw) = password {
                match kb.unlock(pw) {
                    Ok(k) => unlocked = Some(k),
                    Err(KeybagError::WrongPassword) => {
                        tracing::warn!("the backup password is not the repository's: raw snapshot")
                    }
                    Err(e) => {
                        return Err(IngestError::BadBackup {
                            what: "keybag".into(),
                            reason: e.to_string(),
                        })
                    }
                }
            }
        }
    }
    let manifest_key = unlocked.as_ref().and_then(|kb| manifest_key(kb, &manifest));

    // Manifest.db plaintext into local scratch (never on the drive).
    let scratch = tempfile::Builder::new()
        .prefix("cradle-ingest-")
        .tempdir()
        .map_err(IngestError::Scratch)?;
    let db_node =
        top_node("Manifest.db").ok_or_else(|| IngestError::Incomplete("no Manifest.db".into()))?;
    let db_plain = scratch.path().join("Manifest.db");
    let mut db_exact = false;
    let mut digested = !encrypted || manifest_key.is_some();
    if digested {
        let res = plain_manifest_db(&ctx, &db_node, manifest_key.as_deref(), &db_plain);
        match res {
            Ok(exact) => db_exact = exact,
            Err(e) => {
                tracing::warn!(error = %e, "Manifest.db does not decrypt: raw snapshot");
                digested = false;
            }
        }
    }

    // The file table (§12 step 3), written as it is built: rows in (domain, relativePath) byte
    // order straight from SQLite, then data files without a row by fileID.
    let mut writer = ctx.repo.file_table_writer();
    if digested {
        let db = ManifestDb::open(&db_plain).map_err(|e| IngestError::BadBackup {
            what: "Manifest.db".into(),
            reason: e.to_string(),
        })?;
        let mut last: Option<(String, String)> = None;
        db.for_each_row_by_path(|row| -> Result<(), IngestError> {
            let row = row.map_err(|e| IngestError::BadBackup {
                what: "Manifest.db".into(),
                reason: e.to_string(),
            })?;
            if last
                .as_ref()
                .is_some_and(|(d, p)| *d == row.domain && *p == row.relative_path)
            {
                // A repeated domain/path (no real Manifest.db has one): the first row counts.
                return Ok(());
            }
            last = Some((row.domain.clone(), row.relative_path.clone()));
            let Some(fid) = hex20(&row.file_id) else {
                tracing::warn!("skipping a Manifest.db row with a malformed fileID");
                return Ok(());
            };
            let e = row_entry(&mut ctx, unlocked.as_ref(), encrypted, fid, row)?;
            writer.push(ctx.repo, &e)?;
            Ok(())
        })?;
    }
    // Data files without a row (all of them in a raw snapshot): kept as received, by fileID
    // (the tree's `<udid>/<xx>/<fileID>` order).
    let prefix = format!("{u}/");
    for item in ctx.tree.scan(&prefix) {
        let (path, node) = item?;
        let rest = &path[prefix.len()..];
        let Some((xx, name)) = rest.split_once('/') else {
            continue;
        };
        if matches!(node, Node::Dir) {
            continue;
        }
        if !(is_valid_file_id(name) && name.starts_with(xx) && xx.len() == 2) {
            tracing::warn!("ignoring a file the phone left outside the backup layout");
            continue;
        }
        let Some(fid) = hex20(name) else { continue };
        let journaled = ctx
            .take_done(&fid)?
            .filter(|e| matches!(e.content, Content::Raw(_)));
        let content = match (journaled, node) {
            (Some(e), _) => e.content,
            (None, Node::BaseData(pf)) => match &pf.content {
                Content::Plain(_) => ctx.reencrypt_raw(&pf)?,
                c => c.clone(),
            },
            (
                None,
                Node::Staged {
                    staged,
                    sealed,
                    size,
                },
            ) => {
                let r = ctx.staged_reader(&staged, sealed)?;
                let s = ctx.repo.put_stream(r, BlobKind::Raw)?;
                ctx.files_ingested += 1;
                ctx.bytes_ingested += size;
                let e = FileEntry {
                    file_id: fid,
                    row: None,
                    content: Content::Raw(s),
                };
                writer.push(ctx.repo, &e)?;
                ctx.done(Done::File(e), Some(staged), size)?;
                continue;
            }
            _ => continue,
        };
        writer.push(
            ctx.repo,
            &FileEntry {
                file_id: fid,
                row: None,
                content,
            },
        )?;
    }

    // Top files (§12 step 2).
    let mut top_files: Vec<TopFile> = Vec::new();
    for (name, node) in &tops {
        if let Some(t) = done_tops.remove(name) {
            top_files.push(t);
            continue;
        }
        if !is_valid_top_name(name) || name.starts_with('.') {
            continue;
        }
        let t = if name == "Manifest.db" && digested && db_exact {
            match node {
                Node::BaseTop(t) if t.encoding == TopEncoding::ManifestDbPlain => (**t).clone(),
                _ => {
                    let f = fs::File::open(&db_plain).map_err(IngestError::Scratch)?;
                    let s = ctx.repo.put_stream(BufReader::new(f), BlobKind::Data)?;
                    TopFile {
                        name: name.clone(),
                        encoding: TopEncoding::ManifestDbPlain,
                        stream: s,
                    }
                }
            }
        } else {
            match node {
                Node::BaseTop(t) if t.encoding != TopEncoding::ManifestDbPlain => {
                    let mut t = (**t).clone();
                    t.name = name.clone();
                    t
                }
                Node::BaseTop(t) => {
                    // A plaintext Manifest.db of the parent in a snapshot that cannot decrypt.
                    let mut tmp = tempfile::tempfile().map_err(IngestError::Scratch)?;
                    ctx.parent_keys()?;
                    let keys = ctx
                        .parent
                        .as_ref()
                        .and_then(|p| p.1.as_ref())
                        .ok_or_else(|| IngestError::Incomplete("parent keys".into()))?;
                    let mut buf = Vec::new();
                    super::export::write_top(ctx.repo, keys, t, &mut buf)?;
                    io::Write::write_all(&mut tmp, &buf).map_err(IngestError::Scratch)?;
                    tmp.rewind().map_err(IngestError::Scratch)?;
                    let s = ctx.repo.put_stream(BufReader::new(tmp), BlobKind::Raw)?;
                    TopFile {
                        name: name.clone(),
                        encoding: TopEncoding::Raw,
                        stream: s,
                    }
                }
                Node::Staged { staged, sealed, .. } => {
                    let is_db = name == "Manifest.db" && encrypted;
                    let r = ctx.staged_reader(staged, *sealed)?;
                    let kind = if is_db { BlobKind::Raw } else { BlobKind::Data };
                    let s = ctx.repo.put_stream(r, kind)?;
                    TopFile {
                        name: name.clone(),
                        encoding: if is_db {
                            TopEncoding::Raw
                        } else {
                            TopEncoding::Verbatim
                        },
                        stream: s,
                    }
                }
                _ => continue,
            }
        };
        // The staged top files stay until the session is deleted: a resumed ingest reads
        // Manifest.plist and Manifest.db again before it looks at the journal.
        ctx.done(Done::Top(t.clone()), None, t.stream.length)?;
        top_files.push(t);
    }
    top_files.sort_by(|a, b| a.name.cmp(&b.name));
    top_files.truncate(super::caps::TOP_FILES_MAX as usize);
    ctx.commit_batch()?;

    let summary = writer.finish(ctx.repo)?;

    let lock = |k: &str| manifest.lockdown_string(k).unwrap_or_default().to_string();
    let cap = |s: String, n: usize| -> String {
        let mut s = s;
        while s.len() > n {
            s.pop();
        }
        s
    };
    let date_ms = |d: Option<plist::Date>| {
        d.and_then(|d| {
            std::time::SystemTime::from(d)
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
        })
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
    };
    let dc = ctx.repo.config().data_chunker;
    let record = SnapshotRecord {
        kind: if digested {
            SnapshotKind::Digested
        } else {
            SnapshotKind::Raw
        },
        device: DeviceInfo {
            udid: cap(info.udid.clone(), 64),
            device_name: cap(lock("DeviceName"), 256),
            product_type: cap(lock("ProductType"), 64),
            product_version: cap(lock("ProductVersion"), 32),
            build_version: cap(lock("BuildVersion"), 32),
            serial_number: cap(lock("SerialNumber"), 64),
        },
        phone_date: date_ms(status.as_ref().and_then(|s| s.date()).or(manifest.date())),
        box_started: info.started,
        box_finished: now_ms(),
        box_clock_synced: false,
        is_full_backup: status
            .as_ref()
            .and_then(|s| s.is_full_backup())
            .unwrap_or(false),
        parent: info.parent,
        digested_from: SnapshotId::ZERO,
        backup_kek: BackupKek(match (&unlocked, digested) {
            (Some(k), true) => *k.kek(),
            _ => [0; 32],
        }),
        chunker_used: dc,
        top_files,
        counts: summary.counts,
        content_bytes: summary.content_bytes,
        file_table: summary.table,
    };
    // §15.1 step 4: packs durable and the record sealed (its id known), `Committing{id}` durable
    // in the journal, then the record written (and the index told, step 5).
    let prepared = ctx.repo.prepare_snapshot(&record)?;
    ctx.journal
        .push(ctx.repo.keys(), &Done::Committing(prepared.id).encode()?)?;
    ctx.journal.sync(storage.as_ref())?;
    let sid = ctx.repo.write_snapshot(prepared)?;
    let report = IngestReport {
        snapshot: sid,
        kind: record.kind,
        udid: record.device.udid.clone(),
        counts: record.counts,
        files_ingested: ctx.files_ingested,
        bytes_ingested: ctx.bytes_ingested,
    };
    drop(ctx);
    drop(scratch);
    session.delete()?;
    Ok(report)
}

/// The table entry of one Manifest.db row: its data file as an interrupted run journaled it, as
/// the parent had it (stored again, raw, if its key changed), ingested from staging, or absent.
/// The row's data file leaves the working tree, so what stays there afterwards has no row.
fn row_entry(
    ctx: &mut Ctx<'_>,
    unlocked: Option<&UnlockedKeybag>,
    encrypted: bool,
    fid: [u8; 20],
    row: ManifestRow,
) -> Result<FileEntry, IngestError> {
    let erow = Row {
        flags: row.flags,
        domain: row.domain.clone(),
        relative_path: row.relative_path.clone(),
        mbfile: row.file.encode(),
    };
    if row.flags != FLAG_FILE {
        if ctx.take_data(&row.file_id)?.is_some() {
            // Its fileID is the row's: kept as well, it would appear twice in the table.
            tracing::warn!("dropping a data file named after a directory or link row");
        }
        return Ok(FileEntry {
            file_id: fid,
            row: Some(erow),
            content: Content::None,
        });
    }
    let node = ctx.take_data(&row.file_id)?;
    if let Some(e) = ctx.take_done(&fid)? {
        return Ok(FileEntry {
            file_id: fid,
            row: Some(erow),
            content: e.content,
        });
    }
    let content = match node {
        None => Content::Absent,
        Some(Node::BaseData(pf)) => match &pf.content {
            Content::Plain(_) if ctx.parent_key(&pf)? != row.file.encryption_key => {
                ctx.reencrypt_raw(&pf)?
            }
            c => c.clone(),
        },
        Some(Node::Staged {
            staged,
            sealed,
            size,
        }) => {
            let key = unlocked.and_then(|kb| file_key(kb, &row.file));
            let c = ingest_staged(ctx, &staged, sealed, size, encrypted, key)?;
            ctx.files_ingested += 1;
            ctx.bytes_ingested += size;
            let e = FileEntry {
                file_id: fid,
                row: Some(erow),
                content: c,
            };
            ctx.done(Done::File(e.clone()), Some(staged), size)?;
            return Ok(e);
        }
        Some(_) => Content::Absent,
    };
    Ok(FileEntry {
        file_id: fid,
        row: Some(erow),
        content,
    })
}

pub(crate) fn hex20(s: &str) -> Option<[u8; 20]> {
    let mut b = [0u8; 20];
    hex::decode_to_slice(s, &mut b).ok()?;
    Some(b)
}

/// Writes Manifest.db's plaintext to `dst`; `Ok(true)` when re-encrypting it gives back the
/// received bytes exactly (§9.2).
fn plain_manifest_db(
    ctx: &Ctx<'_>,
    node: &Node,
    key: Option<&[u8; 32]>,
    dst: &Path,
) -> Result<bool, IngestError> {
    let mut out = io::BufWriter::new(fs::File::create(dst).map_err(IngestError::Scratch)?);
    let exact = match node {
        Node::BaseTop(t) if t.encoding == TopEncoding::ManifestDbPlain => {
            ctx.repo.read_stream(&t.stream, &mut out)?;
            true
        }
        Node::BaseTop(t) => {
            let mut raw = tempfile::tempfile().map_err(IngestError::Scratch)?;
            ctx.repo.read_stream(&t.stream, &mut raw)?;
            raw.rewind().map_err(IngestError::Scratch)?;
            decrypt_db(BufReader::new(raw), key, &mut out, t.stream.length)?
        }
        Node::Staged {
            staged,
            sealed,
            size,
        } => decrypt_db(ctx.staged_reader(staged, *sealed)?, key, &mut out, *size)?,
        _ => return Err(IngestError::Incomplete("Manifest.db is not a file".into())),
    };
    io::Write::flush(&mut out).map_err(IngestError::Scratch)?;
    Ok(exact)
}

/// Decrypts Manifest.db (`key`; none: copied as is) into `out`; `Ok(true)` when re-encrypting
/// the plaintext gives back the `len` bytes read exactly (§9.2).
pub(crate) fn decrypt_db(
    src: impl Read,
    key: Option<&[u8; 32]>,
    out: &mut impl io::Write,
    len: u64,
) -> Result<bool, IngestError> {
    match key {
        None => {
            let mut src = src;
            io::copy(&mut src, out).map_err(IngestError::Scratch)?;
            Ok(true)
        }
        Some(k) => {
            let d = cbc_stream::decrypt_manifest_db(src, out, k).map_err(|e| {
                IngestError::BadBackup {
                    what: "Manifest.db".into(),
                    reason: e.to_string(),
                }
            })?;
            Ok(len > 0
                && len.is_multiple_of(16)
                && matches!(d.padding, PaddingOutcome::Stripped(_)))
        }
    }
}

/// One staged data file: plaintext chunks when §9.2 allows, else the bytes as received.
fn ingest_staged(
    ctx: &mut Ctx<'_>,
    staged: &str,
    sealed: bool,
    size: u64,
    encrypted: bool,
    key: Option<Zeroizing<[u8; 32]>>,
) -> Result<Content, IngestError> {
    if !encrypted {
        let r = ctx.staged_reader(staged, sealed)?;
        return Ok(Content::Plain(ctx.repo.put_stream(r, BlobKind::Data)?));
    }
    if let Some(k) = key {
        let mut r = ctx.staged_reader(staged, sealed)?;
        let mut next = |_: &Repository, buf: &mut Vec<u8>| read_piece(&mut r, buf);
        match put_plaintext(ctx.repo, &k, size, &mut next) {
            Ok(Some(s)) => return Ok(Content::Plain(s)),
            Ok(None) => tracing::info!("a data file does not decrypt exactly: kept raw"),
            // The staged copy did not read; storing it raw below reports why.
            Err(RepoError::Input(e)) => tracing::info!(error = %e, "a staged file did not read"),
            Err(e) => return Err(e.into()),
        }
    }
    let r = ctx.staged_reader(staged, sealed)?;
    Ok(Content::Raw(ctx.repo.put_stream(r, BlobKind::Raw)?))
}

/// The ciphertext source of `put_plaintext`: fills the buffer with the next piece, `false` at
/// the end; it gets the repository between writes.
pub(crate) type NextPiece<'a> =
    dyn FnMut(&Repository, &mut Vec<u8>) -> Result<bool, RepoError> + 'a;

/// Bytes of ciphertext handed to `put_plaintext` at a time from a staged file.
const PIECE: usize = 1 << 20;

/// Reads the next piece of `r` into `buf`; `false` at the end.
fn read_piece(r: &mut dyn Read, buf: &mut Vec<u8>) -> Result<bool, RepoError> {
    buf.resize(PIECE, 0);
    loop {
        match r.read(buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(n > 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RepoError::Input(e)),
        }
    }
}

/// Stores the plaintext of one Apple data file of `size` ciphertext bytes, decrypted with its own
/// `key` (zero IV), when §9.2 allows it: a non-zero multiple of 16 bytes with valid PKCS#7, so
/// that export re-encrypts it exactly. `next` fills its buffer with the next piece of ciphertext
/// (`false` at the end); it gets the repository between writes, so the ciphertext may itself be
/// a stored stream (`digest`). `Ok(None)`: kept raw by the caller (the chunks already written are
/// garbage for `prune`). Ingest and digest both store plaintext through here, so they cut, dedup
/// and pack the same bytes the same way. Memory: one piece and the stream writer's buffer.
pub(crate) fn put_plaintext(
    repo: &mut Repository,
    key: &[u8; 32],
    size: u64,
    next: &mut NextPiece<'_>,
) -> Result<Option<Stream>, RepoError> {
    if size == 0 || !size.is_multiple_of(16) {
        return Ok(None);
    }
    let mut dec = DecryptPush::new(key);
    let mut w = repo.stream_writer(BlobKind::Data);
    let mut piece = Vec::new();
    let mut plain = Zeroizing::new(Vec::new());
    while next(repo, &mut piece)? {
        plain.clear();
        dec.update(&piece, &mut plain);
        w.write(repo, &plain)?;
    }
    plain.clear();
    match dec.finish(&mut plain) {
        Ok(d) if d.ciphertext_len == size => {
            w.write(repo, &plain)?;
            Ok(Some(w.finish(repo)?))
        }
        Ok(_) => Ok(None),
        Err(_) => Ok(None),
    }
}

/// Ingests every `done` session left on the drive (after a crash) and deletes unfinished ones.
pub fn recover_and_ingest(
    repo: &mut Repository,
    password: Option<&Password>,
) -> Result<Vec<IngestReport>, IngestError> {
    let mut out = Vec::new();
    for id in super::staging::recover(repo)? {
        out.push(ingest(repo, id, password)?);
    }
    Ok(out)
}
