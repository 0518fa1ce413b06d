//! Staging sessions on the drive (format.md §12): the session file, `ops.log`, received files and
//! the `done` marker; the working tree the phone sees; recovery of sessions left by a crash.

use std::sync::Arc;

use super::codec::{put_bytes, DecodeError, Reader};
use super::ids::{SessionId, SnapshotId};
use super::journal::{Journal, JournalError, JournalKind};
use super::keys::Keys;
use super::repo::{now_ms, RepoError, Repository};
use super::scratch::{Scratch, ScratchError, ScratchMap};
use super::seal::{self, MAGIC_DONE, MAGIC_SESSION};
use super::snapshot::{SnapshotRecord, TopEncoding, TopFile};
use super::storage::{Storage, StorageError};
use super::stream::Stream;
use super::table::Content;
use crate::backup2::target::MAX_BACKUP_PATH_LEN;
use crate::ios_backup::cbc_stream::encrypted_len;
use crate::ios_backup::mbfile::MbFile;

/// The staging directory.
pub const STAGING_DIR: &str = "staging";
/// Largest session or done file.
pub const SESSION_FILE_MAX: u64 = 4096;

/// Why a staging operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The drive failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Local scratch space failed.
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    /// A staged object is damaged.
    #[error("{path}: {reason}")]
    Damaged { path: String, reason: String },
}

impl StagingError {
    fn damaged(path: &str, reason: impl ToString) -> Self {
        StagingError::Damaged {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// One thing the phone asked for, as `ops.log` records it (paths relative to the backup root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A file was received whole and is staged as `received/<xx>/<staged>`.
    Received {
        path: String,
        staged: String,
        size: u64,
        sealed: bool,
    },
    /// A directory (and its parents) was created.
    Mkdir { path: String },
    /// A file or tree was removed.
    Remove { path: String },
    /// A file or tree was renamed (replacing the destination).
    Move { src: String, dst: String },
    /// A file or tree was copied.
    Copy { src: String, dst: String },
}

const PATH_CAP: u32 = MAX_BACKUP_PATH_LEN as u32;

impl Op {
    /// The frame payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::new();
        match self {
            Op::Received {
                path,
                staged,
                size,
                sealed,
            } => {
                o.push(1);
                put_bytes(&mut o, path.as_bytes());
                put_bytes(&mut o, staged.as_bytes());
                o.extend_from_slice(&size.to_le_bytes());
                o.push(u8::from(*sealed));
            }
            Op::Mkdir { path } => {
                o.push(2);
                put_bytes(&mut o, path.as_bytes());
            }
            Op::Remove { path } => {
                o.push(3);
                put_bytes(&mut o, path.as_bytes());
            }
            Op::Move { src, dst } | Op::Copy { src, dst } => {
                o.push(if matches!(self, Op::Move { .. }) {
                    4
                } else {
                    5
                });
                put_bytes(&mut o, src.as_bytes());
                put_bytes(&mut o, dst.as_bytes());
            }
        }
        o
    }

    /// Parses a frame payload.
    pub fn decode(b: &[u8]) -> Result<Op, DecodeError> {
        let mut r = Reader::new(b);
        let op = match r.u8("op")? {
            1 => Op::Received {
                path: r.str(PATH_CAP, "path")?.to_string(),
                staged: r.str(64, "staged name")?.to_string(),
                size: r.u64("size")?,
                sealed: r.bool("sealed")?,
            },
            2 => Op::Mkdir {
                path: r.str(PATH_CAP, "path")?.to_string(),
            },
            3 => Op::Remove {
                path: r.str(PATH_CAP, "path")?.to_string(),
            },
            k @ (4 | 5) => {
                let src = r.str(PATH_CAP, "src")?.to_string();
                let dst = r.str(PATH_CAP, "dst")?.to_string();
                if k == 4 {
                    Op::Move { src, dst }
                } else {
                    Op::Copy { src, dst }
                }
            }
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "op",
                    value: u64::from(v),
                })
            }
        };
        r.finish()?;
        Ok(op)
    }
}

/// Where the bytes of a file in the working tree come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A top file of the parent snapshot.
    BaseTop(Arc<TopFile>),
    /// A data file of the parent snapshot.
    BaseData(Arc<BaseFile>),
    /// A file received in this session.
    Staged {
        staged: String,
        size: u64,
        sealed: bool,
    },
}

/// A data file of the parent snapshot as the working tree keeps it: its fileID and content,
/// not its row (the MBFile stays in the parent's table; see `WorkTree::wrapped_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFile {
    /// The fileID of the parent's entry.
    pub file_id: [u8; 20],
    /// Its content (`Plain` or `Raw`).
    pub content: Content,
}

/// Why an operation on the working tree is refused (mapped to errno by the target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeError {
    /// A path (or the parent it needs) does not exist.
    NotFound,
    /// A directory was expected.
    NotADirectory,
    /// A file was expected.
    IsADirectory,
    /// The local scratch database failed (logged where it happened).
    Scratch,
}

fn scratch_err(e: impl std::fmt::Display) -> TreeError {
    tracing::error!(error = %e, "working tree scratch database");
    TreeError::Scratch
}

fn encode_node(n: &Node) -> Vec<u8> {
    let mut o = Vec::new();
    match n {
        Node::Dir => o.push(0),
        Node::BaseTop(t) => {
            o.push(1);
            put_bytes(&mut o, t.name.as_bytes());
            o.push(t.encoding.code());
            t.stream.encode(&mut o);
        }
        Node::BaseData(f) => {
            o.push(2);
            o.extend_from_slice(&f.file_id);
            match &f.content {
                Content::Plain(s) => {
                    o.push(1);
                    s.encode(&mut o);
                }
                Content::Raw(s) => {
                    o.push(2);
                    s.encode(&mut o);
                }
                Content::None | Content::Absent => o.push(0),
            }
        }
        Node::Staged {
            staged,
            size,
            sealed,
        } => {
            o.push(3);
            put_bytes(&mut o, staged.as_bytes());
            o.extend_from_slice(&size.to_le_bytes());
            o.push(u8::from(*sealed));
        }
    }
    o
}

fn decode_node(b: &[u8]) -> Result<Node, DecodeError> {
    let mut r = Reader::new(b);
    let n = match r.u8("node")? {
        0 => Node::Dir,
        1 => {
            let name = r.str(64, "top name")?.to_string();
            let encoding = TopEncoding::from_code(r.u8("top encoding")?, "top encoding")?;
            Node::BaseTop(Arc::new(TopFile {
                name,
                encoding,
                stream: Stream::decode(&mut r)?,
            }))
        }
        2 => {
            let file_id = r.array("file id")?;
            let content = match r.u8("content")? {
                1 => Content::Plain(Stream::decode(&mut r)?),
                2 => Content::Raw(Stream::decode(&mut r)?),
                0 => Content::None,
                v => {
                    return Err(DecodeError::UnknownValue {
                        field: "content",
                        value: u64::from(v),
                    })
                }
            };
            Node::BaseData(Arc::new(BaseFile { file_id, content }))
        }
        3 => Node::Staged {
            staged: r.str(64, "staged name")?.to_string(),
            size: r.u64("size")?,
            sealed: r.bool("sealed")?,
        },
        v => {
            return Err(DecodeError::UnknownValue {
                field: "node",
                value: u64::from(v),
            })
        }
    };
    r.finish()?;
    Ok(n)
}

fn key_str(k: &[u8]) -> Result<String, TreeError> {
    String::from_utf8(k.to_vec()).map_err(scratch_err)
}

/// The tree the phone sees: the parent snapshot overlaid by this session's operations. Keys are
/// backup-relative paths; the root is implicit. The nodes live in a scratch sled database in the
/// box's temporary space (`scratch`), so memory stays flat whatever the file count.
#[derive(Debug)]
pub struct WorkTree {
    nodes: ScratchMap,
    /// Subtrees on their way through a move or copy.
    moving: ScratchMap,
    /// The parent's wrapped file keys by fileID, filled on first use (`wrapped_key`).
    wrapped: Option<ScratchMap>,
    scratch: Scratch,
}

fn parent_of(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

impl WorkTree {
    /// An empty tree.
    pub fn new() -> Result<Self, StagingError> {
        let scratch = Scratch::new()?;
        Ok(WorkTree {
            nodes: scratch.tree("nodes")?,
            moving: scratch.tree("moving")?,
            wrapped: None,
            scratch,
        })
    }

    /// The scratch database the tree lives in (ingest keeps its own maps there too).
    pub fn scratch(&self) -> &Scratch {
        &self.scratch
    }

    /// The parent snapshot's folder: `<udid>/` with its top files and `<xx>/<fileID>` data files.
    /// The table is read one entry at a time into the scratch database.
    pub fn from_parent(repo: &Repository, record: &SnapshotRecord) -> Result<Self, StagingError> {
        let t = WorkTree::new()?;
        let u = record.device.udid.clone();
        t.put(&u, &Node::Dir)?;
        for top in &record.top_files {
            t.put(
                &format!("{u}/{}", top.name),
                &Node::BaseTop(Arc::new(top.clone())),
            )?;
        }
        let mut dirs = std::collections::BTreeSet::new();
        let mut rd = repo.file_table_reader(&record.file_table);
        while let Some(e) = rd.next_entry(repo)? {
            if e.content.stream().is_none() {
                continue;
            }
            let id = e.file_id_hex();
            if dirs.insert(id[..2].to_string()) {
                t.put(&format!("{u}/{}", &id[..2]), &Node::Dir)?;
            }
            t.put(
                &format!("{u}/{}/{id}", &id[..2]),
                &Node::BaseData(Arc::new(BaseFile {
                    file_id: e.file_id,
                    content: e.content,
                })),
            )?;
        }
        Ok(t)
    }

    fn put(&self, path: &str, n: &Node) -> Result<(), StagingError> {
        self.nodes.insert(path.as_bytes(), encode_node(n))?;
        Ok(())
    }

    fn insert(&self, path: &[u8], n: &Node) -> Result<(), TreeError> {
        self.nodes
            .insert(path, encode_node(n))
            .map_err(scratch_err)?;
        Ok(())
    }

    /// The node at `path`.
    pub fn get(&self, path: &str) -> Result<Option<Node>, TreeError> {
        match self.nodes.get(path.as_bytes()).map_err(scratch_err)? {
            Some(v) => Ok(Some(decode_node(&v).map_err(scratch_err)?)),
            None => Ok(None),
        }
    }

    /// Removes and returns the file at `path` (a directory stays).
    pub fn take_file(&self, path: &str) -> Result<Option<Node>, TreeError> {
        match self.get(path)? {
            Some(Node::Dir) | None => Ok(None),
            Some(n) => {
                self.nodes.remove(path.as_bytes()).map_err(scratch_err)?;
                Ok(Some(n))
            }
        }
    }

    fn is_dir(&self, path: Option<&str>) -> Result<bool, TreeError> {
        match path {
            None => Ok(true),
            Some(p) => Ok(matches!(self.get(p)?, Some(Node::Dir))),
        }
    }

    fn contains(&self, path: &str) -> Result<bool, TreeError> {
        self.nodes
            .contains_key(path.as_bytes())
            .map_err(scratch_err)
    }

    /// Removes `path` and everything under it.
    fn remove_subtree(&self, path: &str) -> Result<(), TreeError> {
        let prefix = format!("{path}/");
        for kv in self.nodes.scan_prefix(prefix.as_bytes()) {
            let (k, _) = kv.map_err(scratch_err)?;
            self.nodes.remove(k).map_err(scratch_err)?;
        }
        self.nodes.remove(path.as_bytes()).map_err(scratch_err)?;
        Ok(())
    }

    /// Copies `path` and its subtree into `moving` (keys relative to `path`), removing them
    /// from the tree when `take`.
    fn stash(&self, path: &str, take: bool) -> Result<(), TreeError> {
        self.moving.clear().map_err(scratch_err)?;
        if let Some(v) = self.nodes.get(path.as_bytes()).map_err(scratch_err)? {
            self.moving.insert(b"", v).map_err(scratch_err)?;
        }
        let prefix = format!("{path}/");
        for kv in self.nodes.scan_prefix(prefix.as_bytes()) {
            let (k, v) = kv.map_err(scratch_err)?;
            self.moving
                .insert(&k[path.len()..], v)
                .map_err(scratch_err)?;
            if take {
                self.nodes.remove(k).map_err(scratch_err)?;
            }
        }
        if take {
            self.nodes.remove(path.as_bytes()).map_err(scratch_err)?;
        }
        Ok(())
    }

    /// Puts the stashed subtree back under `dst`.
    fn unstash(&self, dst: &str) -> Result<(), TreeError> {
        for kv in self.moving.iter() {
            let (k, v) = kv.map_err(scratch_err)?;
            let mut key = dst.as_bytes().to_vec();
            key.extend_from_slice(&k);
            self.nodes.insert(key, v).map_err(scratch_err)?;
        }
        self.moving.clear().map_err(scratch_err)?;
        Ok(())
    }

    /// Entries directly inside `dir` (`None` = root): names and nodes, sorted. Deeper levels
    /// are skipped over, not read.
    pub fn children(&self, dir: Option<&str>) -> Result<Vec<(String, Node)>, TreeError> {
        let prefix = dir.map(|d| format!("{d}/")).unwrap_or_default();
        let p = prefix.as_bytes();
        let mut out = Vec::new();
        let mut it = self.nodes.range_from(p);
        while let Some(kv) = it.next() {
            let (k, v) = kv.map_err(scratch_err)?;
            if !k.starts_with(p) {
                break;
            }
            let rest = &k[p.len()..];
            match rest.iter().position(|&c| c == b'/') {
                None => out.push((key_str(rest)?, decode_node(&v).map_err(scratch_err)?)),
                Some(i) => {
                    // Inside the child `rest[..i]`: jump past its subtree ('0' follows '/').
                    let mut skip = k[..p.len() + i].to_vec();
                    skip.push(b'/' + 1);
                    it = self.nodes.range_from(skip);
                }
            }
        }
        Ok(out)
    }

    /// Every (path, node) under `prefix`, sorted by path (the tree may change meanwhile).
    pub fn scan(&self, prefix: &str) -> impl Iterator<Item = Result<(String, Node), TreeError>> {
        self.nodes.clone().scan_prefix(prefix.as_bytes()).map(|kv| {
            let (k, v) = kv.map_err(scratch_err)?;
            Ok((key_str(&k)?, decode_node(&v).map_err(scratch_err)?))
        })
    }

    /// The wrapped `EncryptionKey` the parent snapshot's row for `file_id` carries (plaintext
    /// entries only). The keys are read from the parent's table into the scratch database the
    /// first time one is asked for (rare while staging: phones read back manifests, not data).
    pub fn wrapped_key(
        &mut self,
        repo: &Repository,
        parent: &SnapshotRecord,
        file_id: &[u8; 20],
    ) -> Result<Option<Vec<u8>>, StagingError> {
        let tree = match &self.wrapped {
            Some(t) => t.clone(),
            None => {
                let t = self.scratch.tree("wrapped")?;
                t.clear()?;
                let mut rd = repo.file_table_reader(&parent.file_table);
                while let Some(e) = rd.next_entry(repo)? {
                    if let (Content::Plain(_), Some(r)) = (&e.content, &e.row) {
                        if let Some(k) = MbFile::decode(&r.mbfile)
                            .ok()
                            .and_then(|f| f.encryption_key)
                        {
                            t.insert(e.file_id, k)?;
                        }
                    }
                }
                self.wrapped = Some(t.clone());
                t
            }
        };
        Ok(tree.get(file_id)?)
    }

    /// Applies one operation with the semantics of `BackupTarget`.
    pub fn apply(&mut self, op: &Op) -> Result<(), TreeError> {
        match op {
            Op::Received {
                path,
                staged,
                size,
                sealed,
            } => {
                if !self.is_dir(parent_of(path))? {
                    return Err(TreeError::NotFound);
                }
                if matches!(self.get(path)?, Some(Node::Dir)) {
                    return Err(TreeError::IsADirectory);
                }
                self.insert(
                    path.as_bytes(),
                    &Node::Staged {
                        staged: staged.clone(),
                        size: *size,
                        sealed: *sealed,
                    },
                )?;
            }
            Op::Mkdir { path } => {
                let mut cur = String::new();
                for c in path.split('/') {
                    if !cur.is_empty() {
                        cur.push('/');
                    }
                    cur.push_str(c);
                    match self.get(&cur)? {
                        Some(Node::Dir) => {}
                        Some(_) => return Err(TreeError::NotADirectory),
                        None => self.insert(cur.as_bytes(), &Node::Dir)?,
                    }
                }
            }
            Op::Remove { path } => self.remove_subtree(path)?,
            Op::Move { src, dst } => {
                if !self.contains(src)? {
                    return Err(TreeError::NotFound);
                }
                if !self.is_dir(parent_of(dst))? || dst.starts_with(&format!("{src}/")) {
                    return Err(TreeError::NotFound);
                }
                if src == dst {
                    return Ok(());
                }
                self.stash(src, true)?;
                self.remove_subtree(dst)?;
                self.unstash(dst)?;
            }
            Op::Copy { src, dst } => {
                let Some(src_node) = self.get(src)? else {
                    return Err(TreeError::NotFound);
                };
                if !self.is_dir(parent_of(dst))? {
                    return Err(TreeError::NotFound);
                }
                let src_is_file = !matches!(src_node, Node::Dir);
                if src_is_file && matches!(self.get(dst)?, Some(Node::Dir)) {
                    return Err(TreeError::IsADirectory);
                }
                self.stash(src, false)?;
                self.unstash(dst)?;
            }
        }
        Ok(())
    }
}

/// Size of a file node as the phone would see it in a folder.
pub fn node_size(n: &Node) -> u64 {
    match n {
        Node::Dir => 0,
        Node::BaseTop(t) => match t.encoding {
            TopEncoding::ManifestDbPlain => encrypted_len(t.stream.length),
            _ => t.stream.length,
        },
        Node::BaseData(e) => match &e.content {
            Content::Plain(s) => encrypted_len(s.length),
            Content::Raw(s) => s.length,
            _ => 0,
        },
        Node::Staged { size, .. } => *size,
    }
}

/// The session file's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub udid: String,
    pub parent: SnapshotId,
    pub started: i64,
    pub raw: bool,
}

impl SessionInfo {
    fn encode(&self) -> Vec<u8> {
        let mut o = Vec::new();
        put_bytes(&mut o, self.udid.as_bytes());
        o.extend_from_slice(self.parent.as_bytes());
        o.extend_from_slice(&self.started.to_le_bytes());
        o.push(u8::from(self.raw));
        o
    }

    fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let s = SessionInfo {
            udid: r.str(64, "udid")?.to_string(),
            parent: SnapshotId::from_bytes(r.array("parent")?),
            started: r.i64("started")?,
            raw: r.bool("raw")?,
        };
        r.finish()?;
        Ok(s)
    }
}

/// A staging session on the drive.
#[derive(Debug)]
pub struct Session {
    storage: Arc<dyn Storage>,
    id: SessionId,
    info: SessionInfo,
    ops: Journal,
}

impl Session {
    /// The session's directory.
    pub fn dir_of(id: &SessionId) -> String {
        format!("{STAGING_DIR}/{id}")
    }

    /// Starts a session: directory, sealed `session` file, empty `ops.log`.
    pub fn create(repo: &Repository, info: SessionInfo) -> Result<Session, StagingError> {
        let storage = repo.storage().clone();
        let id = SessionId::random();
        let dir = Self::dir_of(&id);
        storage.create_dir(&format!("{dir}/received"))?;
        let (ops, _) = Journal::open(
            storage.as_ref(),
            repo.keys(),
            &format!("{dir}/ops.log"),
            JournalKind::Ops,
            id,
        )?;
        // `session` last: a directory without it is garbage (§12).
        storage.create(
            &format!("{dir}/session"),
            &seal::seal_file(repo.keys(), MAGIC_SESSION, 1, &info.encode()),
        )?;
        Ok(Session {
            storage,
            id,
            info,
            ops,
        })
    }

    /// The session file of an existing session.
    pub fn info_of(repo: &Repository, id: SessionId) -> Result<SessionInfo, StagingError> {
        let spath = format!("{}/session", Self::dir_of(&id));
        let bytes = repo.storage().read(&spath, SESSION_FILE_MAX)?;
        let (_, payload) =
            seal::open_file(repo.keys(), MAGIC_SESSION, &[1], SESSION_FILE_MAX, &bytes)
                .map_err(|e| StagingError::damaged(&spath, e))?;
        SessionInfo::decode(&payload).map_err(|e| StagingError::damaged(&spath, e))
    }

    /// Re-opens an existing session: its info, and its ops (torn tail cut) handed to `each` one
    /// at a time, in order.
    pub fn open(
        repo: &Repository,
        id: SessionId,
        mut each: impl FnMut(Op) -> Result<(), StagingError>,
    ) -> Result<Session, StagingError> {
        let storage = repo.storage().clone();
        let dir = Self::dir_of(&id);
        let info = Self::info_of(repo, id)?;
        let opath = format!("{dir}/ops.log");
        let ops = Journal::open_each(
            storage.as_ref(),
            repo.keys(),
            &opath,
            JournalKind::Ops,
            id,
            |p| each(Op::decode(&p).map_err(|e| StagingError::damaged(&opath, e))?),
        )?;
        Ok(Session {
            storage,
            id,
            info,
            ops,
        })
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Path of the session's own file `name`.
    pub fn path(&self, name: &str) -> String {
        format!("{}/{name}", Self::dir_of(&self.id))
    }

    /// Name of the staged file for an upload to `path`, keyed so the drive never shows Apple
    /// paths or fileIDs; the op sequence number keeps two uploads to one path apart.
    pub fn staged_name(&self, keys: &Keys, path: &str) -> String {
        let mut m = path.as_bytes().to_vec();
        m.push(0);
        m.extend_from_slice(&self.ops.frames().to_le_bytes());
        hex::encode(keys.index_hash(&m))
    }

    /// Where a staged file lives.
    pub fn staged_path(&self, staged: &str) -> String {
        let xx = staged.get(..2).unwrap_or("00");
        self.path(&format!("received/{xx}/{staged}"))
    }

    /// Journals an operation (written, not yet fsynced: the phone's own retry covers a crash
    /// before `done`).
    pub fn record(&mut self, keys: &Keys, op: &Op) -> Result<(), StagingError> {
        self.ops.push(keys, &op.encode())?;
        self.ops.write(self.storage.as_ref())?;
        Ok(())
    }

    /// The phone finished: every received file (written and renamed into place without fsync)
    /// and `ops.log` made durable at once, then the sealed `done` marker (§12).
    pub fn mark_done(&mut self, keys: &Keys) -> Result<(), StagingError> {
        self.ops.write(self.storage.as_ref())?;
        self.storage.sync_all()?;
        self.storage.create(
            &self.path("done"),
            &seal::seal_file(keys, MAGIC_DONE, 1, &now_ms().to_le_bytes()),
        )?;
        Ok(())
    }

    /// True once `done` exists.
    pub fn is_done(&self) -> Result<bool, StagingError> {
        Ok(self.storage.exists(&self.path("done"))?)
    }

    /// Deletes the session: `session` first (durably), then the rest (§12 step 4).
    pub fn delete(self) -> Result<(), StagingError> {
        delete_session_dir(self.storage.as_ref(), &self.id)
    }
}

fn delete_session_dir(storage: &dyn Storage, id: &SessionId) -> Result<(), StagingError> {
    let dir = Session::dir_of(id);
    let s = format!("{dir}/session");
    if storage.exists(&s)? {
        storage.delete(&s)?;
        storage.sync_dir(&dir)?;
    }
    storage.delete_dir_all(&dir)?;
    storage.sync_dir(STAGING_DIR)?;
    Ok(())
}

/// Recovery (§12): sessions without `session` or without `done` are deleted; the ids of those
/// with `done` (to be ingested) are returned.
pub fn recover(repo: &Repository) -> Result<Vec<SessionId>, StagingError> {
    let storage = repo.storage().clone();
    let mut resume = Vec::new();
    if !storage.exists(STAGING_DIR)? {
        return Ok(resume);
    }
    for name in storage.list(STAGING_DIR)? {
        let Some(id) = SessionId::from_hex(&name) else {
            continue;
        };
        let dir = Session::dir_of(&id);
        let has_session = storage.exists(&format!("{dir}/session"))?;
        let done = format!("{dir}/done");
        let done_ok = storage.exists(&done)?
            && storage.read(&done, SESSION_FILE_MAX).ok().is_some_and(|b| {
                seal::open_file(repo.keys(), MAGIC_DONE, &[1], SESSION_FILE_MAX, &b).is_ok()
            });
        if has_session && done_ok {
            resume.push(id);
        } else {
            tracing::info!(session = %id, "deleting an unfinished staging session");
            delete_session_dir(storage.as_ref(), &id)?;
        }
    }
    Ok(resume)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, staged: &str) -> Op {
        Op::Received {
            path: path.into(),
            staged: staged.into(),
            size: 3,
            sealed: false,
        }
    }

    #[test]
    fn ops_round_trip() {
        for op in [
            rec("U/Snapshot/ab/x", "s1"),
            Op::Mkdir {
                path: "U/ab".into(),
            },
            Op::Remove {
                path: "U/Snapshot".into(),
            },
            Op::Move {
                src: "a".into(),
                dst: "b".into(),
            },
            Op::Copy {
                src: "a".into(),
                dst: "c".into(),
            },
        ] {
            assert_eq!(Op::decode(&op.encode()).unwrap(), op);
        }
        assert!(Op::decode(&[9]).is_err());
    }

    #[test]
    fn tree_follows_the_phones_moves_and_removals() {
        let mut t = WorkTree::new().unwrap();
        let staged = |t: &WorkTree, p: &str| match t.get(p).unwrap() {
            Some(Node::Staged { staged, .. }) => Some(staged),
            _ => None,
        };
        assert_eq!(
            t.apply(&rec("U/Snapshot/ab/f", "s")),
            Err(TreeError::NotFound)
        );
        t.apply(&Op::Mkdir {
            path: "U/Snapshot/ab".into(),
        })
        .unwrap();
        t.apply(&Op::Mkdir {
            path: "U/ab".into(),
        })
        .unwrap();
        t.apply(&rec("U/Snapshot/ab/f", "s")).unwrap();
        t.apply(&rec("U/ab/old", "o")).unwrap();
        t.apply(&Op::Move {
            src: "U/Snapshot/ab/f".into(),
            dst: "U/ab/f".into(),
        })
        .unwrap();
        assert_eq!(staged(&t, "U/ab/f").as_deref(), Some("s"));
        assert!(t.get("U/Snapshot/ab/f").unwrap().is_none());
        t.apply(&Op::Remove {
            path: "U/Snapshot".into(),
        })
        .unwrap();
        assert!(t.get("U/Snapshot/ab").unwrap().is_none());
        assert!(t.get("U/Snapshot").unwrap().is_none());
        t.apply(&Op::Remove {
            path: "U/nothing".into(),
        })
        .unwrap();
        let names: Vec<String> = t
            .children(Some("U/ab"))
            .unwrap()
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(names, vec!["f", "old"]);
        // A directory moved over a file replaces it with its whole subtree.
        t.apply(&rec("U/cd", "c")).unwrap();
        t.apply(&Op::Move {
            src: "U/ab".into(),
            dst: "U/cd".into(),
        })
        .unwrap();
        assert!(t.get("U/cd/old").unwrap().is_some() && t.get("U/ab/old").unwrap().is_none());
        assert!(matches!(t.get("U/cd").unwrap(), Some(Node::Dir)));
        assert_eq!(
            t.apply(&Op::Move {
                src: "U/zz".into(),
                dst: "U/y".into()
            }),
            Err(TreeError::NotFound)
        );
        t.apply(&Op::Copy {
            src: "U/cd".into(),
            dst: "U/ef".into(),
        })
        .unwrap();
        assert_eq!(staged(&t, "U/ef/f").as_deref(), Some("s"));
        assert!(t.get("U/cd/f").unwrap().is_some());
        // A file moved over a directory replaces the directory and what it held.
        t.apply(&Op::Move {
            src: "U/ef/f".into(),
            dst: "U/cd".into(),
        })
        .unwrap();
        assert_eq!(staged(&t, "U/cd").as_deref(), Some("s"));
        assert!(t.get("U/cd/old").unwrap().is_none());
    }

    #[test]
    fn children_skip_deeper_levels_and_siblings_sharing_a_prefix() {
        let mut t = WorkTree::new().unwrap();
        for d in ["U/a/x/y", "U/a0", "U/a.b", "U/b"] {
            t.apply(&Op::Mkdir { path: d.into() }).unwrap();
        }
        t.apply(&rec("U/a/x/y/f", "1")).unwrap();
        t.apply(&rec("U/a/g", "2")).unwrap();
        t.apply(&rec("U/a-file", "3")).unwrap();
        let names: Vec<String> = t
            .children(Some("U"))
            .unwrap()
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(names, vec!["a", "a-file", "a.b", "a0", "b"]);
        let root: Vec<String> = t.children(None).unwrap().into_iter().map(|c| c.0).collect();
        assert_eq!(root, vec!["U"]);
        let all: Vec<String> = t.scan("U/a/").map(|r| r.unwrap().0).collect();
        assert_eq!(all, vec!["U/a/g", "U/a/x", "U/a/x/y", "U/a/x/y/f"]);
    }

    #[test]
    fn nodes_round_trip_through_the_scratch_encoding() {
        let s = Stream::empty();
        for n in [
            Node::Dir,
            Node::Staged {
                staged: "ab".into(),
                size: 7,
                sealed: true,
            },
            Node::BaseTop(Arc::new(TopFile {
                name: "Manifest.db".into(),
                encoding: TopEncoding::ManifestDbPlain,
                stream: s.clone(),
            })),
            Node::BaseData(Arc::new(BaseFile {
                file_id: [7; 20],
                content: Content::Raw(s.clone()),
            })),
            Node::BaseData(Arc::new(BaseFile {
                file_id: [8; 20],
                content: Content::Plain(s),
            })),
        ] {
            assert_eq!(decode_node(&encode_node(&n)).unwrap(), n);
        }
        assert!(decode_node(&[9]).is_err());
    }
}
