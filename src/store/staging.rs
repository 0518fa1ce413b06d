//! Staging sessions on the drive (format.md §12): the session file, `ops.log`, received files and
//! the `done` marker; the working tree the phone sees; recovery of sessions left by a crash.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::codec::{put_bytes, DecodeError, Reader};
use super::ids::{SessionId, SnapshotId};
use super::journal::{Journal, JournalError, JournalKind};
use super::keys::Keys;
use super::repo::{now_ms, RepoError, Repository};
use super::seal::{self, MAGIC_DONE, MAGIC_SESSION};
use super::snapshot::{SnapshotRecord, TopEncoding, TopFile};
use super::storage::{Storage, StorageError};
use super::table::Content;
use crate::backup2::target::MAX_BACKUP_PATH_LEN;
use crate::ios_backup::cbc_stream::encrypted_len;

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
/// not its row (the MBFile stays in the parent's table; see `export::wrapped_keys`).
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
}

/// The tree the phone sees: the parent snapshot overlaid by this session's operations. Keys are
/// backup-relative paths; the root is implicit.
#[derive(Debug, Default, Clone)]
pub struct WorkTree {
    nodes: BTreeMap<String, Node>,
}

fn parent_of(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

impl WorkTree {
    /// An empty tree.
    pub fn new() -> Self {
        WorkTree::default()
    }

    /// The parent snapshot's folder: `<udid>/` with its top files and `<xx>/<fileID>` data files.
    /// The table is read one entry at a time; the tree keeps a path and a `BaseFile` per data
    /// file (about 100 bytes plus 32 per content chunk), not the rows.
    pub fn from_parent(repo: &Repository, record: &SnapshotRecord) -> Result<Self, RepoError> {
        let mut t = WorkTree::new();
        let u = record.device.udid.clone();
        t.nodes.insert(u.clone(), Node::Dir);
        for top in &record.top_files {
            t.nodes.insert(
                format!("{u}/{}", top.name),
                Node::BaseTop(Arc::new(top.clone())),
            );
        }
        let mut rd = repo.file_table_reader(&record.file_table);
        while let Some(e) = rd.next_entry(repo)? {
            if e.content.stream().is_none() {
                continue;
            }
            let id = e.file_id_hex();
            t.nodes.insert(format!("{u}/{}", &id[..2]), Node::Dir);
            t.nodes.insert(
                format!("{u}/{}/{id}", &id[..2]),
                Node::BaseData(Arc::new(BaseFile {
                    file_id: e.file_id,
                    content: e.content,
                })),
            );
        }
        Ok(t)
    }

    /// The node at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    fn is_dir(&self, path: Option<&str>) -> bool {
        match path {
            None => true,
            Some(p) => matches!(self.nodes.get(p), Some(Node::Dir)),
        }
    }

    fn subtree_keys(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        let mut keys: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        if self.nodes.contains_key(path) {
            keys.push(path.to_string());
        }
        keys
    }

    /// Entries directly inside `dir` (`None` = root): names and nodes, sorted.
    pub fn children(&self, dir: Option<&str>) -> Vec<(String, &Node)> {
        let prefix = dir.map(|d| format!("{d}/")).unwrap_or_default();
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(k, n)| (k[prefix.len()..].to_string(), n))
            .collect()
    }

    /// Every (path, node), sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
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
                if !self.is_dir(parent_of(path)) {
                    return Err(TreeError::NotFound);
                }
                if matches!(self.nodes.get(path), Some(Node::Dir)) {
                    return Err(TreeError::IsADirectory);
                }
                self.nodes.insert(
                    path.clone(),
                    Node::Staged {
                        staged: staged.clone(),
                        size: *size,
                        sealed: *sealed,
                    },
                );
            }
            Op::Mkdir { path } => {
                let mut cur = String::new();
                for c in path.split('/') {
                    if !cur.is_empty() {
                        cur.push('/');
                    }
                    cur.push_str(c);
                    match self.nodes.get(&cur) {
                        Some(Node::Dir) => {}
                        Some(_) => return Err(TreeError::NotADirectory),
                        None => {
                            self.nodes.insert(cur.clone(), Node::Dir);
                        }
                    }
                }
            }
            Op::Remove { path } => {
                for k in self.subtree_keys(path) {
                    self.nodes.remove(&k);
                }
            }
            Op::Move { src, dst } => {
                if !self.nodes.contains_key(src) {
                    return Err(TreeError::NotFound);
                }
                if !self.is_dir(parent_of(dst)) || dst.starts_with(&format!("{src}/")) {
                    return Err(TreeError::NotFound);
                }
                if src == dst {
                    return Ok(());
                }
                let moved: Vec<(String, Node)> = self
                    .subtree_keys(src)
                    .into_iter()
                    .filter_map(|k| self.nodes.remove(&k).map(|n| (k, n)))
                    .collect();
                for k in self.subtree_keys(dst) {
                    self.nodes.remove(&k);
                }
                for (k, n) in moved {
                    self.nodes.insert(format!("{dst}{}", &k[src.len()..]), n);
                }
            }
            Op::Copy { src, dst } => {
                if !self.nodes.contains_key(src) {
                    return Err(TreeError::NotFound);
                }
                if !self.is_dir(parent_of(dst)) {
                    return Err(TreeError::NotFound);
                }
                let copied: Vec<(String, Node)> = self
                    .subtree_keys(src)
                    .into_iter()
                    .filter_map(|k| self.nodes.get(&k).cloned().map(|n| (k, n)))
                    .collect();
                let src_is_file = !matches!(self.nodes.get(src), Some(Node::Dir));
                if src_is_file && matches!(self.nodes.get(dst), Some(Node::Dir)) {
                    return Err(TreeError::IsADirectory);
                }
                for (k, n) in copied {
                    self.nodes.insert(format!("{dst}{}", &k[src.len()..]), n);
                }
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

    /// Re-opens an existing session: its info, and its ops (torn tail cut).
    pub fn open(repo: &Repository, id: SessionId) -> Result<(Session, Vec<Op>), StagingError> {
        let storage = repo.storage().clone();
        let dir = Self::dir_of(&id);
        let spath = format!("{dir}/session");
        let bytes = storage.read(&spath, SESSION_FILE_MAX)?;
        let (_, payload) =
            seal::open_file(repo.keys(), MAGIC_SESSION, &[1], SESSION_FILE_MAX, &bytes)
                .map_err(|e| StagingError::damaged(&spath, e))?;
        let info = SessionInfo::decode(&payload).map_err(|e| StagingError::damaged(&spath, e))?;
        let opath = format!("{dir}/ops.log");
        let (ops, payloads) =
            Journal::open(storage.as_ref(), repo.keys(), &opath, JournalKind::Ops, id)?;
        let ops_list = payloads
            .iter()
            .map(|p| Op::decode(p).map_err(|e| StagingError::damaged(&opath, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            Session {
                storage,
                id,
                info,
                ops,
            },
            ops_list,
        ))
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

    /// The phone finished: `ops.log` durable, then the sealed `done` marker.
    pub fn mark_done(&mut self, keys: &Keys) -> Result<(), StagingError> {
        self.ops.sync(self.storage.as_ref())?;
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
        let mut t = WorkTree::new();
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
        assert!(matches!(t.get("U/ab/f"), Some(Node::Staged { staged, .. }) if staged == "s"));
        assert!(t.get("U/Snapshot/ab/f").is_none());
        t.apply(&Op::Remove {
            path: "U/Snapshot".into(),
        })
        .unwrap();
        assert!(t.get("U/Snapshot/ab").is_none());
        t.apply(&Op::Remove {
            path: "U/nothing".into(),
        })
        .unwrap();
        let names: Vec<String> = t.children(Some("U/ab")).into_iter().map(|c| c.0).collect();
        assert_eq!(names, vec!["f", "old"]);
        // A directory moved over a file replaces it with its whole subtree.
        t.apply(&Op::Move {
            src: "U/ab".into(),
            dst: "U/cd".into(),
        })
        .unwrap();
        assert!(t.get("U/cd/old").is_some() && t.get("U/ab/old").is_none());
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
        assert!(t.get("U/ef/f").is_some() && t.get("U/cd/f").is_some());
    }
}
