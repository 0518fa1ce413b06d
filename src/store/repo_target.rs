//! `RepoTarget`: the phone's backup folder as a repository sees it — the previous snapshot of this
//! phone overlaid by a staging session on the drive; no mirror folder exists anywhere.

use std::io::{self, Read, Seek, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::export::{write_content, write_top, SnapshotKeys};
use super::ids::{SessionId, SnapshotId};
use super::journal::{encode_header, seal_frame, JournalKind, FRAME_PAYLOAD_MAX};
use super::repo::{now_ms, RepoError, Repository};
use super::snapshot::SnapshotRecord;
use super::staging::{
    node_size, Node, Op, Session, SessionInfo, StagingError, TreeError, WorkTree,
};
use super::storage::{NewFile, Storage, StorageError};
use crate::backup2::target::{
    BackupPath, BackupTarget, DirEntry, EntryKind, EntryMeta, TargetError, UploadSink,
};

/// Free space kept back from what the phone is told (§12): 1 GiB plus two packs.
pub const RESERVE_BASE: u64 = 1 << 30;
/// Bytes read from the drive at a time when serving a staged file.
const READ_STEP: u64 = 1 << 20;

fn eio(path: &BackupPath, e: impl ToString) -> TargetError {
    TargetError::io(path, io::Error::other(e.to_string()))
}

/// True when `e` or one of its sources says the drive is full. `#[error(transparent)]`
/// wrappers hide the inner error from `source()`, so `StorageError::NoSpace`'s own words count.
pub fn says_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if matches!(c.downcast_ref(), Some(StorageError::NoSpace { .. }))
            || c.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::StorageFull)
            || c.to_string().ends_with(NO_SPACE_WORDS)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// How `StorageError::NoSpace` ends its message.
const NO_SPACE_WORDS: &str = ": no space left on the drive";

/// A drive error as the backup protocol sees it: ENOSPC stays ENOSPC (the host then answers
/// the phone with its no-space code), anything else is EIO.
fn drive_io(e: &(dyn std::error::Error + 'static)) -> io::Error {
    if says_no_space(e) {
        io::Error::new(io::ErrorKind::StorageFull, e.to_string())
    } else {
        io::Error::other(e.to_string())
    }
}

fn tree_err(path: &BackupPath, e: TreeError) -> TargetError {
    let errno = match e {
        TreeError::NotFound => rustix::io::Errno::NOENT,
        TreeError::NotADirectory => rustix::io::Errno::NOTDIR,
        TreeError::IsADirectory => rustix::io::Errno::ISDIR,
        TreeError::Scratch => rustix::io::Errno::IO,
    };
    TargetError::io(path, errno.into())
}

/// The newest snapshot of `udid` (by box time): the working tree's base.
pub fn newest_of(
    repo: &Repository,
    udid: &str,
) -> Result<Option<(SnapshotId, SnapshotRecord)>, RepoError> {
    Ok(repo
        .snapshots_oldest_first()?
        .into_iter()
        .filter(|(_, r)| r.device.udid == udid)
        .max_by_key(|(id, r)| (r.box_finished, *id)))
}

/// A backup target over a repository (see module docs).
pub struct RepoTarget<'r> {
    repo: &'r Repository,
    session: Session,
    tree: WorkTree,
    parent: Option<(SnapshotId, SnapshotRecord)>,
    parent_keys: Option<SnapshotKeys>,
    /// Data files are Apple ciphertext (encrypted backup): staged verbatim.
    encrypted: bool,
    udid: String,
    /// A write failed because the drive is full.
    no_space: bool,
}

impl std::fmt::Debug for RepoTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoTarget")
            .field("session", &self.session.id())
            .field("udid", &self.udid)
            .finish_non_exhaustive()
    }
}

impl<'r> RepoTarget<'r> {
    /// Starts a staging session for `udid` on top of its newest snapshot. `encrypted` says the
    /// phone's backups are encrypted (data files then arrive as ciphertext and are staged as is;
    /// otherwise everything is staged sealed).
    pub fn start(repo: &'r Repository, udid: &str, encrypted: bool) -> Result<Self, StagingError> {
        let parent = newest_of(repo, udid).map_err(|e| StagingError::Damaged {
            path: "snapshots".into(),
            reason: e.to_string(),
        })?;
        let tree = match &parent {
            Some((_, rec)) => WorkTree::from_parent(repo, rec).map_err(|e| match e {
                StagingError::Scratch(e) => StagingError::Scratch(e),
                e => StagingError::Damaged {
                    path: "parent snapshot".into(),
                    reason: e.to_string(),
                },
            })?,
            None => WorkTree::new()?,
        };
        let session = Session::create(
            repo,
            SessionInfo {
                udid: udid.to_string(),
                parent: parent.as_ref().map(|p| p.0).unwrap_or(SnapshotId::ZERO),
                started: now_ms(),
                raw: false,
            },
        )?;
        Ok(RepoTarget {
            repo,
            session,
            tree,
            parent,
            parent_keys: None,
            encrypted,
            udid: udid.to_string(),
            no_space: false,
        })
    }

    /// True once a write into the session failed because the drive is full (the phone was
    /// told so file by file; the caller says it once, with what to do).
    pub fn saw_no_space(&self) -> bool {
        self.no_space
    }

    fn drive_err(
        &mut self,
        path: &BackupPath,
        e: &(dyn std::error::Error + 'static),
    ) -> TargetError {
        self.no_space |= says_no_space(e);
        TargetError::io(path, drive_io(e))
    }

    /// The session's id.
    pub fn session_id(&self) -> SessionId {
        self.session.id()
    }

    /// The phone finished: marks the session `done` (ingest may run from here, even after a
    /// crash) and hands the session back.
    pub fn finish(mut self) -> Result<SessionId, StagingError> {
        self.session.mark_done(self.repo.keys())?;
        Ok(self.session.id())
    }

    /// The phone did not finish: the session is worth nothing and is deleted.
    pub fn abandon(self) -> Result<(), StagingError> {
        self.session.delete()
    }

    fn record(&mut self, path: &BackupPath, op: Op) -> Result<(), TargetError> {
        self.tree.apply(&op).map_err(|e| tree_err(path, e))?;
        match self.session.record(self.repo.keys(), &op) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.drive_err(path, &e)),
        }
    }

    fn sealed_for(&self, path: &BackupPath) -> bool {
        if !self.encrypted {
            return true;
        }
        // Apple encrypts data files and Manifest.db; the plists arrive in the clear.
        let name = path.file_name();
        !(name == "Manifest.db" || crate::ios_backup::is_valid_file_id(name))
    }

    fn parent_keys(&mut self) -> Result<&SnapshotKeys, String> {
        if self.parent_keys.is_none() {
            let Some((_, rec)) = &self.parent else {
                return Err("no parent snapshot".into());
            };
            self.parent_keys =
                Some(SnapshotKeys::for_record(self.repo, rec).map_err(|e| e.to_string())?);
        }
        self.parent_keys.as_ref().ok_or_else(String::new)
    }

    fn parent_wrapped(&mut self, file_id: &[u8; 20]) -> Result<Option<Vec<u8>>, String> {
        let Some((_, rec)) = &self.parent else {
            return Err("no parent snapshot".into());
        };
        self.tree
            .wrapped_key(self.repo, rec, file_id)
            .map_err(|e| e.to_string())
    }

    fn node(&self, path: &BackupPath) -> Result<Option<Node>, TargetError> {
        self.tree.get(path.as_str()).map_err(|e| tree_err(path, e))
    }
}

/// Reads a staged file back: verbatim ranges, or sealed frames opened one at a time.
pub struct StagedReader {
    storage: Arc<dyn Storage>,
    keys_session: (super::keys::Keys, SessionId),
    path: String,
    sealed: bool,
    pos: u64,
    len: u64,
    seq: u64,
    buf: Vec<u8>,
    at: usize,
}

impl StagedReader {
    /// Opens the staged file `staged` of `session`.
    pub fn open(
        repo: &Repository,
        session: SessionId,
        path: String,
        sealed: bool,
    ) -> io::Result<Self> {
        let storage = repo.storage().clone();
        let len = storage.size(&path).map_err(io::Error::other)?;
        Ok(StagedReader {
            storage,
            keys_session: (repo.keys().clone(), session),
            path,
            sealed,
            pos: if sealed {
                super::journal::HEADER_LEN as u64
            } else {
                0
            },
            len,
            seq: 0,
            buf: Vec::new(),
            at: 0,
        })
    }

    fn refill(&mut self) -> io::Result<bool> {
        if self.pos >= self.len {
            return Ok(false);
        }
        if !self.sealed {
            let n = READ_STEP.min(self.len - self.pos);
            self.buf = self
                .storage
                .read_range(&self.path, self.pos, n)
                .map_err(io::Error::other)?;
            self.pos += n;
        } else {
            let l = self
                .storage
                .read_range(&self.path, self.pos, 4)
                .map_err(io::Error::other)?;
            let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]);
            if len > super::caps::FRAME_MAX {
                return Err(io::Error::other(format!("{}: frame too long", self.path)));
            }
            let body = self
                .storage
                .read_range(&self.path, self.pos + 4, u64::from(len))
                .map_err(io::Error::other)?;
            let (keys, session) = &self.keys_session;
            self.buf =
                super::journal::open_frame(keys, session, JournalKind::Staged, self.seq, &body)
                    .ok_or_else(|| io::Error::other(format!("{}: damaged frame", self.path)))?;
            self.seq += 1;
            self.pos += 4 + u64::from(len);
        }
        self.at = 0;
        Ok(true)
    }
}

impl Read for StagedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.buf.len() {
            if !self.refill()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// An upload being staged.
struct RepoSink<'a, 'r> {
    target: &'a mut RepoTarget<'r>,
    path: BackupPath,
    staged: String,
    file: Option<Box<dyn NewFile>>,
    sealed: bool,
    seq: u64,
    buf: Vec<u8>,
    size: u64,
    failed: Option<io::Error>,
}

impl RepoSink<'_, '_> {
    fn emit(&mut self) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("upload already finished"));
        };
        if self.sealed {
            let mut frame = Vec::with_capacity(self.buf.len() + 44);
            seal_frame(
                self.target.repo.keys(),
                &self.target.session.id(),
                JournalKind::Staged,
                self.seq,
                &self.buf,
                &mut frame,
            )
            .map_err(io::Error::other)?;
            self.seq += 1;
            f.write(&frame).map_err(|e| drive_io(&e))?;
        } else {
            f.write(&self.buf).map_err(|e| drive_io(&e))?;
        }
        self.buf.clear();
        Ok(())
    }

    fn discard(&mut self) {
        if self.file.take().is_some() {
            let full = self.target.session.staged_path(&self.staged);
            if let Ok(tmp) = super::storage::tmp_name(&full) {
                let _ = self.target.session.storage().delete(&tmp);
            }
        }
    }
}

impl Write for RepoSink<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = FRAME_PAYLOAD_MAX.min(1 << 20) - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.buf.len() >= FRAME_PAYLOAD_MAX.min(1 << 20) {
            if let Err(e) = self.emit() {
                self.target.no_space |= says_no_space(&e);
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
                return Err(e);
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl UploadSink for RepoSink<'_, '_> {
    fn commit(mut self: Box<Self>) -> Result<(), TargetError> {
        if let Some(e) = self.failed.take() {
            self.discard();
            return Err(TargetError::io(&self.path, e));
        }
        if !self.buf.is_empty() {
            if let Err(e) = self.emit() {
                return Err(self.target.drive_err(&self.path, &e));
            }
        }
        let Some(f) = self.file.take() else {
            return Ok(());
        };
        // Durable with the whole session, before `done` (`Session::mark_done`, §12).
        if let Err(e) = f.finish_unsynced() {
            return Err(self.target.drive_err(&self.path, &e));
        }
        let op = Op::Received {
            path: self.path.to_string(),
            staged: self.staged.clone(),
            size: self.size,
            sealed: self.sealed,
        };
        let path = self.path.clone();
        self.target.record(&path, op)
    }

    fn abort(mut self: Box<Self>) {
        self.discard();
    }
}

impl Drop for RepoSink<'_, '_> {
    fn drop(&mut self) {
        self.discard();
    }
}

fn spill(
    path: &BackupPath,
    f: impl FnOnce(&mut dyn Write) -> Result<(), String>,
) -> Result<Box<dyn Read>, TargetError> {
    // Local temporary space (never the drive): plaintext is re-encrypted on its way through.
    let mut tmp = tempfile::tempfile().map_err(|e| TargetError::io(path, e))?;
    {
        let mut w = io::BufWriter::new(&mut tmp);
        f(&mut w).map_err(|e| eio(path, e))?;
        w.flush().map_err(|e| TargetError::io(path, e))?;
    }
    tmp.rewind().map_err(|e| TargetError::io(path, e))?;
    Ok(Box::new(tmp))
}

impl BackupTarget for RepoTarget<'_> {
    fn open_read(&mut self, path: &BackupPath) -> Result<Box<dyn Read + '_>, TargetError> {
        let node = self
            .node(path)?
            .ok_or_else(|| TargetError::io(path, rustix::io::Errno::NOENT.into()))?;
        match node {
            Node::Dir => Err(TargetError::io(path, rustix::io::Errno::ISDIR.into())),
            Node::Staged { staged, sealed, .. } => {
                let p = self.session.staged_path(&staged);
                let r = StagedReader::open(self.repo, self.session.id(), p, sealed)
                    .map_err(|e| TargetError::io(path, e))?;
                Ok(Box::new(r))
            }
            Node::BaseTop(top) => {
                let repo = self.repo;
                let keys = self.parent_keys().map_err(|e| eio(path, e))?;
                spill(path, |w| {
                    write_top(repo, keys, &top, w).map_err(|e| e.to_string())
                })
            }
            Node::BaseData(base) => {
                let repo = self.repo;
                self.parent_keys().map_err(|e| eio(path, e))?;
                let wrapped = match base.content {
                    super::table::Content::Plain(_) => self
                        .parent_wrapped(&base.file_id)
                        .map_err(|e| eio(path, e))?,
                    _ => None,
                };
                let keys = self.parent_keys().map_err(|e| eio(path, e))?;
                spill(path, |w| {
                    write_content(
                        repo,
                        keys,
                        &base.content,
                        wrapped.as_deref(),
                        path.as_str(),
                        w,
                    )
                    .map_err(|e| e.to_string())
                })
            }
        }
    }

    fn create_file(&mut self, path: &BackupPath) -> Result<Box<dyn UploadSink + '_>, TargetError> {
        if let Some(parent) = path.parent() {
            let p = self
                .tree
                .get(parent.as_str())
                .map_err(|e| tree_err(path, e))?;
            if !matches!(p, Some(Node::Dir)) {
                return Err(TargetError::io(path, rustix::io::Errno::NOENT.into()));
            }
        }
        if matches!(self.node(path)?, Some(Node::Dir)) {
            return Err(TargetError::io(path, rustix::io::Errno::ISDIR.into()));
        }
        let staged = self.session.staged_name(self.repo.keys(), path.as_str());
        let full = self.session.staged_path(&staged);
        let storage = self.session.storage().clone();
        let dir = full.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let mut file = match storage.exists(dir).and_then(|there| {
            if !there {
                storage.create_dir(dir)?;
            }
            storage.create_streaming(&full)
        }) {
            Ok(f) => f,
            Err(e) => return Err(self.drive_err(path, &e)),
        };
        let sealed = self.sealed_for(path);
        if sealed {
            if let Err(e) = file.write(&encode_header(JournalKind::Staged, &self.session.id())) {
                return Err(self.drive_err(path, &e));
            }
        }
        Ok(Box::new(RepoSink {
            target: self,
            path: path.clone(),
            staged,
            file: Some(file),
            sealed,
            seq: 0,
            buf: Vec::new(),
            size: 0,
            failed: None,
        }))
    }

    fn create_dir_all(&mut self, path: &BackupPath) -> Result<(), TargetError> {
        if matches!(self.node(path)?, Some(Node::Dir)) {
            return Ok(());
        }
        self.record(
            path,
            Op::Mkdir {
                path: path.to_string(),
            },
        )
    }

    fn move_item(&mut self, src: &BackupPath, dst: &BackupPath) -> Result<(), TargetError> {
        self.record(
            src,
            Op::Move {
                src: src.to_string(),
                dst: dst.to_string(),
            },
        )
    }

    fn remove(&mut self, path: &BackupPath) -> Result<(), TargetError> {
        if self.node(path)?.is_none() {
            return Ok(());
        }
        self.record(
            path,
            Op::Remove {
                path: path.to_string(),
            },
        )
    }

    fn copy_item(&mut self, src: &BackupPath, dst: &BackupPath) -> Result<(), TargetError> {
        self.record(
            src,
            Op::Copy {
                src: src.to_string(),
                dst: dst.to_string(),
            },
        )
    }

    fn list_dir(&mut self, path: &BackupPath) -> Result<Vec<DirEntry>, TargetError> {
        match self.node(path)? {
            Some(Node::Dir) => {}
            Some(_) => return Err(TargetError::io(path, rustix::io::Errno::NOTDIR.into())),
            None => return Err(TargetError::io(path, rustix::io::Errno::NOENT.into())),
        }
        let modified = self.modified();
        Ok(self
            .tree
            .children(Some(path.as_str()))
            .map_err(|e| tree_err(path, e))?
            .into_iter()
            .map(|(name, n)| DirEntry {
                name,
                meta: meta_of(&n, modified),
            })
            .collect())
    }

    fn stat(&mut self, path: &BackupPath) -> Result<Option<EntryMeta>, TargetError> {
        let modified = self.modified();
        Ok(self.node(path)?.map(|n| meta_of(&n, modified)))
    }

    fn free_space(&mut self) -> Result<u64, TargetError> {
        let reserve = RESERVE_BASE + 2 * u64::from(self.repo.config().pack_target);
        let free = self
            .repo
            .storage()
            .free_bytes()
            .map_err(|e| TargetError::Io {
                path: self.udid.clone(),
                source: io::Error::other(e.to_string()),
            })?;
        Ok(match free {
            Some(b) => b.saturating_sub(reserve),
            None => u64::MAX / 2,
        })
    }
}

impl RepoTarget<'_> {
    fn modified(&self) -> SystemTime {
        let ms = self.parent.as_ref().map(|p| p.1.box_finished).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
    }
}

fn meta_of(n: &Node, modified: SystemTime) -> EntryMeta {
    EntryMeta {
        kind: if matches!(n, Node::Dir) {
            EntryKind::Directory
        } else {
            EntryKind::File
        },
        size: node_size(n),
        modified,
    }
}
