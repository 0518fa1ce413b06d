//! The rebuildable sled index (format.md §13): which pack holds each chunk, and the snapshots,
//! so opening a repository need not read every pack header. A cache, never a source of truth.

use std::path::{Path, PathBuf};

use super::ids::{ChunkId, PackId, SnapshotId};
use super::keys::Keys;
use super::pack::{BlobLoc, FinishedPack, PackEntry};
use super::repo::{ChunkLoc, RepoError};
use super::seal::{self, BlobKind};
use super::snapshot::SnapshotRecord;

/// Index layout version written in `VERSION` (2: sled segments of `SEGMENT_SIZE`; sled refuses
/// to open a database made with another segment size, so older indexes are rebuilt).
pub const INDEX_LAYOUT_VERSION: u32 = 2;
/// Engine code for sled 0.34.
pub const ENGINE_SLED_034: u32 = 1;
/// sled page cache size (bounded memory on the 512 MiB board).
pub const CACHE_CAPACITY: u64 = 2 << 20;
/// sled log segment size. sled's default (512 KiB) left the file at whole multiples of it,
/// 2.6 MB for a phone's 14,000 chunks; the index is a cache on the backup drive, so it is kept
/// small. sled is flushed explicitly at the commit points (§15.1), not every 500 ms.
pub const SEGMENT_SIZE: usize = 64 << 10;
/// Length of `VERSION`.
pub const VERSION_LEN: usize = 56;

/// A failed index operation; callers answer any of these by rebuilding (§13).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// sled failed or reported corruption.
    #[error("index database: {0}")]
    Sled(#[from] sled::Error),
    /// This process already has the index open (sled would be opened twice over one folder).
    #[error("index already open in this process")]
    Busy,
    /// `VERSION` is missing, damaged, or from another build or repository.
    #[error("index VERSION is missing or does not match")]
    Version,
    /// A stored value is malformed.
    #[error("index value is malformed")]
    Value,
    /// The index files could not be written.
    #[error("index files: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `VERSION` (56 bytes).
pub fn encode_version(keys: &Keys, complete: bool) -> [u8; VERSION_LEN] {
    let mut b = [0u8; VERSION_LEN];
    b[..8].copy_from_slice(b"CRDLINDX");
    b[8..12].copy_from_slice(&INDEX_LAYOUT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&u32::from(complete).to_le_bytes());
    b[16..32].copy_from_slice(&keys.index_hash(b"repo")[..16]);
    b[32..36].copy_from_slice(&ENGINE_SLED_034.to_le_bytes());
    let h = blake3::hash(&b[..40]);
    b[40..56].copy_from_slice(&h.as_bytes()[..16]);
    b
}

/// Whether `VERSION` bytes say "complete index of this repository, this layout and engine".
pub fn version_ok(keys: &Keys, bytes: &[u8]) -> bool {
    bytes == encode_version(keys, true)
}

/// The index: sled trees `packs`, `pack_ids`, `chunks`, `snapshots`, `meta`.
pub struct Index {
    db: sled::Db,
    packs: sled::Tree,
    pack_ids: sled::Tree,
    chunks: sled::Tree,
    snapshots: sled::Tree,
    meta: sled::Tree,
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("dir", &self.dir).finish()
    }
}

fn write_version(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("VERSION.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join("VERSION"))?;
    std::fs::File::open(dir)?.sync_all()
}

fn chunk_value(pack_no: u32, b: &BlobLoc) -> [u8; 18] {
    let mut v = [0u8; 18];
    v[..4].copy_from_slice(&pack_no.to_le_bytes());
    v[4..8].copy_from_slice(&b.offset.to_le_bytes());
    v[8..12].copy_from_slice(&b.entry.stored_len.to_le_bytes());
    v[12..16].copy_from_slice(&b.entry.plain_len.to_le_bytes());
    v[16] = b.entry.kind.code();
    v[17] = b.entry.flags;
    v
}

fn le32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

/// Index folders open in this process: sled's file lock does not stop a second opener in the
/// same process, and two instances over one folder would corrupt it.
fn open_dirs() -> std::sync::MutexGuard<'static, std::collections::HashSet<PathBuf>> {
    static OPEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
        std::sync::OnceLock::new();
    OPEN.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

impl Drop for Index {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            if let Ok(k) = d.canonicalize() {
                open_dirs().remove(&k);
            }
        }
    }
}

impl Index {
    /// Opens the index in `<root>/index/` (or a temporary one when `root` is `None`). Returns
    /// the index and whether it must be rebuilt (VERSION missing, damaged or foreign, or state
    /// "building"); in that case the database has already been emptied.
    pub fn open(root: Option<&Path>, keys: &Keys) -> Result<(Index, bool), IndexError> {
        let (config, dir, fresh) = match root {
            Some(r) => {
                let dir = r.join("index");
                std::fs::create_dir_all(&dir)?;
                let key = dir.canonicalize()?;
                if !open_dirs().insert(key) {
                    return Err(IndexError::Busy);
                }
                let ok = std::fs::read(dir.join("VERSION"))
                    .map(|b| version_ok(keys, &b))
                    .unwrap_or(false);
                if !ok {
                    write_version(&dir, &encode_version(keys, false))?;
                    match std::fs::remove_dir_all(dir.join("db")) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                (sled::Config::new().path(dir.join("db")), Some(dir), !ok)
            }
            None => (sled::Config::new().temporary(true), None, true),
        };
        let config = config
            .cache_capacity(CACHE_CAPACITY)
            .segment_size(SEGMENT_SIZE)
            .flush_every_ms(None);
        let db = match config.open() {
            Ok(db) => db,
            Err(e) => {
                if let Some(d) = &dir {
                    if let Ok(k) = d.canonicalize() {
                        open_dirs().remove(&k);
                    }
                }
                return Err(e.into());
            }
        };
        let index = Index {
            packs: db.open_tree("packs")?,
            pack_ids: db.open_tree("pack_ids")?,
            chunks: db.open_tree("chunks")?,
            snapshots: db.open_tree("snapshots")?,
            meta: db.open_tree("meta")?,
            db,
            dir,
        };
        Ok((index, fresh))
    }

    /// Deletes everything (a rebuild starts here); `VERSION` says "building" until `complete`.
    pub fn clear(&self, keys: &Keys) -> Result<(), IndexError> {
        if let Some(d) = &self.dir {
            write_version(d, &encode_version(keys, false))?;
        }
        for t in [
            &self.packs,
            &self.pack_ids,
            &self.chunks,
            &self.snapshots,
            &self.meta,
        ] {
            t.clear()?;
        }
        Ok(())
    }

    /// Flushes sled and marks the index complete.
    pub fn complete(&self, keys: &Keys) -> Result<(), IndexError> {
        self.db.flush()?;
        if let Some(d) = &self.dir {
            write_version(d, &encode_version(keys, true))?;
        }
        Ok(())
    }

    /// Flushes sled (§15.1 steps 3 and 5).
    pub fn flush(&self) -> Result<(), IndexError> {
        self.db.flush()?;
        Ok(())
    }

    /// Whether the pack is indexed.
    pub fn has_pack(&self, id: &PackId) -> Result<bool, IndexError> {
        Ok(self.pack_ids.contains_key(id.as_bytes())?)
    }

    /// Every indexed pack.
    pub fn packs(&self) -> Result<Vec<PackId>, IndexError> {
        let mut out = Vec::new();
        for kv in self.pack_ids.iter() {
            let (k, _) = kv?;
            out.push(PackId::from_slice(&k).ok_or(IndexError::Value)?);
        }
        Ok(out)
    }

    /// Adds a pack and its chunks (a chunk already indexed keeps its first location).
    pub fn insert_pack(&self, pack: &FinishedPack) -> Result<(), IndexError> {
        if self.has_pack(&pack.id)? {
            return Ok(());
        }
        let no = self
            .meta
            .get(b"next_pack")?
            .and_then(|v| le32(&v))
            .unwrap_or(0);
        self.meta.insert(b"next_pack", &(no + 1).to_le_bytes())?;
        let mut v = Vec::with_capacity(44);
        v.extend_from_slice(pack.id.as_bytes());
        v.extend_from_slice(&pack.file_len.to_le_bytes());
        v.extend_from_slice(&(pack.blobs.len() as u32).to_le_bytes());
        self.packs.insert(no.to_be_bytes(), v)?;
        self.pack_ids
            .insert(pack.id.as_bytes(), &no.to_le_bytes())?;
        let mut batch = sled::Batch::default();
        for b in &pack.blobs {
            if !self.chunks.contains_key(b.entry.id.as_bytes())? {
                batch.insert(b.entry.id.as_bytes(), &chunk_value(no, b));
            }
        }
        self.chunks.apply_batch(batch)?;
        Ok(())
    }

    /// Drops a pack and every chunk entry pointing into it.
    pub fn remove_pack(&self, id: &PackId) -> Result<(), IndexError> {
        let Some(no) = self.pack_ids.remove(id.as_bytes())?.and_then(|v| le32(&v)) else {
            return Ok(());
        };
        self.packs.remove(no.to_be_bytes())?;
        let mut batch = sled::Batch::default();
        for kv in self.chunks.iter() {
            let (k, v) = kv?;
            if le32(&v) == Some(no) {
                batch.remove(k);
            }
        }
        self.chunks.apply_batch(batch)?;
        Ok(())
    }

    /// Where a chunk lies, per the index (a hint: reads still check the ChunkId).
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLoc>, IndexError> {
        let Some(v) = self.chunks.get(id.as_bytes())? else {
            return Ok(None);
        };
        if v.len() != 18 {
            return Err(IndexError::Value);
        }
        let no = le32(&v).ok_or(IndexError::Value)?;
        let pv = self.packs.get(no.to_be_bytes())?.ok_or(IndexError::Value)?;
        let pack =
            PackId::from_slice(pv.get(..32).ok_or(IndexError::Value)?).ok_or(IndexError::Value)?;
        let entry = PackEntry {
            kind: BlobKind::from_code(v[16]).ok_or(IndexError::Value)?,
            flags: v[17],
            stored_len: le32(&v[8..]).ok_or(IndexError::Value)?,
            plain_len: le32(&v[12..]).ok_or(IndexError::Value)?,
            id: *id,
        };
        Ok(Some(ChunkLoc {
            pack,
            blob: BlobLoc {
                entry,
                offset: le32(&v[4..]).ok_or(IndexError::Value)?,
            },
        }))
    }

    /// Number of indexed chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    fn snapshot_aad(id: &SnapshotId) -> Vec<u8> {
        let mut aad = b"CRDLIDXVsnapshots".to_vec();
        aad.extend_from_slice(id.as_bytes());
        aad
    }

    /// Adds a snapshot's sealed summary: DeviceKey, phone_date, kind, parent.
    pub fn insert_snapshot(
        &self,
        keys: &Keys,
        id: &SnapshotId,
        r: &SnapshotRecord,
    ) -> Result<(), IndexError> {
        let mut plain = Vec::with_capacity(57);
        plain.extend_from_slice(keys.device_key(&r.device.udid).as_bytes());
        plain.extend_from_slice(&r.phone_date.to_le_bytes());
        plain.push(match r.kind {
            super::snapshot::SnapshotKind::Digested => 1,
            super::snapshot::SnapshotKind::Raw => 2,
        });
        plain.extend_from_slice(r.parent.as_bytes());
        let sealed = seal::seal(keys.data_key(), &Self::snapshot_aad(id), &plain);
        self.snapshots.insert(id.as_bytes(), sealed)?;
        Ok(())
    }

    /// Drops a snapshot.
    pub fn remove_snapshot(&self, id: &SnapshotId) -> Result<(), IndexError> {
        self.snapshots.remove(id.as_bytes())?;
        Ok(())
    }

    /// Every indexed snapshot.
    pub fn snapshots(&self) -> Result<Vec<SnapshotId>, IndexError> {
        let mut out = Vec::new();
        for kv in self.snapshots.iter() {
            let (k, _) = kv?;
            out.push(SnapshotId::from_slice(&k).ok_or(IndexError::Value)?);
        }
        Ok(out)
    }
}

impl From<IndexError> for RepoError {
    fn from(e: IndexError) -> Self {
        RepoError::Index(e.to_string())
    }
}
