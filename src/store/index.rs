//! The rebuildable index (format.md §13): packs and snapshots in sled, which pack holds each
//! chunk in the run files of `chunkmap`. A cache, never a source of truth.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::chunkmap::{ChunkMap, ChunkMapError, Entry};

use super::ids::{ChunkId, PackId, SnapshotId};
use super::keys::Keys;
use super::pack::{BlobLoc, FinishedPack, PackEntry};
use super::repo::{ChunkLoc, RepoError};
use super::seal::{self, BlobKind};
use super::snapshot::SnapshotRecord;

/// Index layout version written in `VERSION` (2: sled segments of `SEGMENT_SIZE`, which sled
/// checks; 3: the chunk map in run files under `chunks/`). Older indexes are rebuilt.
pub const INDEX_LAYOUT_VERSION: u32 = 3;
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
    /// The chunk map's run files failed or are damaged.
    #[error("index {0}")]
    ChunkMap(#[from] ChunkMapError),
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

/// The index: sled trees `packs`, `pack_ids`, `snapshots`, `meta`, and the chunk map.
pub struct Index {
    db: sled::Db,
    packs: sled::Tree,
    pack_ids: sled::Tree,
    snapshots: sled::Tree,
    meta: sled::Tree,
    dir: Option<PathBuf>,
    state: Mutex<Chunks>,
}

/// The chunk map and what it needs in memory: each indexed pack's number and ID (about 60 bytes
/// per 16 MiB pack), and the packs added since the last flush, which go to sled only after
/// their chunk entries are durable (a pack in sled always has its entries; entries whose pack
/// is not in sled are ignored, and their numbers are never given out again).
struct Chunks {
    map: ChunkMap,
    packs: HashMap<u32, PackId>,
    pending: Vec<(u32, PackId, u64, u32)>,
    next_pack: u32,
    _tmp: Option<tempfile::TempDir>,
}

impl Chunks {
    fn live(&self) -> impl Fn(u32) -> bool + '_ {
        |no| self.packs.contains_key(&no)
    }
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

fn chunk_entry(pack_no: u32, b: &BlobLoc) -> Entry {
    Entry {
        id: *b.entry.id.as_bytes(),
        pack_no,
        offset: b.offset,
        stored_len: b.entry.stored_len,
        plain_len: b.entry.plain_len,
        kind: b.entry.kind.code(),
        flags: b.entry.flags,
    }
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
        let release = |dir: &Option<PathBuf>| {
            if let Some(d) = dir {
                if let Ok(k) = d.canonicalize() {
                    open_dirs().remove(&k);
                }
            }
        };
        let (chunk_dir, tmp) = match &dir {
            Some(d) => (d.join("chunks"), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&super::scratch::private_prefix("cradle-index-"))
                    .tempdir()?;
                (t.path().join("chunks"), Some(t))
            }
        };
        if fresh {
            match std::fs::remove_dir_all(&chunk_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    release(&dir);
                    return Err(e.into());
                }
            }
        }
        let map = match ChunkMap::open(&chunk_dir) {
            Ok(m) => m,
            Err(e) => {
                release(&dir);
                return Err(e.into());
            }
        };
        let db = match config.open() {
            Ok(db) => db,
            Err(e) => {
                release(&dir);
                return Err(e.into());
            }
        };
        let packs = db.open_tree("packs")?;
        let mut by_no = HashMap::new();
        for kv in packs.iter() {
            let (k, v) = kv?;
            let no = u32::from_be_bytes(k.as_ref().try_into().map_err(|_| IndexError::Value)?);
            let id = PackId::from_slice(v.get(..32).ok_or(IndexError::Value)?)
                .ok_or(IndexError::Value)?;
            by_no.insert(no, id);
        }
        let meta = db.open_tree("meta")?;
        let next_pack = [
            meta.get(b"next_pack")?.and_then(|v| le32(&v)),
            map.max_pack_no().map(|n| n + 1),
            by_no.keys().max().map(|n| n + 1),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let index = Index {
            packs,
            pack_ids: db.open_tree("pack_ids")?,
            snapshots: db.open_tree("snapshots")?,
            meta,
            db,
            dir,
            state: Mutex::new(Chunks {
                map,
                packs: by_no,
                pending: Vec::new(),
                next_pack,
                _tmp: tmp,
            }),
        };
        Ok((index, fresh))
    }

    fn state(&self) -> MutexGuard<'_, Chunks> {
        // Every change to the state is completed under the lock before it can fail halfway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes everything (a rebuild starts here); `VERSION` says "building" until `complete`.
    pub fn clear(&self, keys: &Keys) -> Result<(), IndexError> {
        if let Some(d) = &self.dir {
            write_version(d, &encode_version(keys, false))?;
        }
        for t in [&self.packs, &self.pack_ids, &self.snapshots, &self.meta] {
            t.clear()?;
        }
        let mut st = self.state();
        st.map.clear()?;
        st.packs.clear();
        st.pending.clear();
        Ok(())
    }

    /// Flushes and marks the index complete.
    pub fn complete(&self, keys: &Keys) -> Result<(), IndexError> {
        self.flush()?;
        if let Some(d) = &self.dir {
            write_version(d, &encode_version(keys, true))?;
        }
        Ok(())
    }

    /// Makes everything durable (§15.1 steps 3 and 5): the new chunk entries as a run first,
    /// then the new packs into sled, then sled.
    pub fn flush(&self) -> Result<(), IndexError> {
        let mut st = self.state();
        self.flush_locked(&mut st)
    }

    fn flush_locked(&self, st: &mut Chunks) -> Result<(), IndexError> {
        let Chunks {
            map,
            packs,
            pending,
            next_pack,
            ..
        } = st;
        map.flush(&|no| packs.contains_key(&no))?;
        for (no, id, file_len, blobs) in pending.drain(..) {
            let mut v = Vec::with_capacity(44);
            v.extend_from_slice(id.as_bytes());
            v.extend_from_slice(&file_len.to_le_bytes());
            v.extend_from_slice(&blobs.to_le_bytes());
            self.packs.insert(no.to_be_bytes(), v)?;
            self.pack_ids.insert(id.as_bytes(), &no.to_le_bytes())?;
        }
        self.meta.insert(b"next_pack", &next_pack.to_le_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Whether the pack is indexed.
    pub fn has_pack(&self, id: &PackId) -> Result<bool, IndexError> {
        if self.state().pending.iter().any(|p| p.1 == *id) {
            return Ok(true);
        }
        Ok(self.pack_ids.contains_key(id.as_bytes())?)
    }

    /// Every indexed pack.
    pub fn packs(&self) -> Result<Vec<PackId>, IndexError> {
        let mut out: Vec<PackId> = self.state().pending.iter().map(|p| p.1).collect();
        for kv in self.pack_ids.iter() {
            let (k, _) = kv?;
            out.push(PackId::from_slice(&k).ok_or(IndexError::Value)?);
        }
        Ok(out)
    }

    /// Adds a pack and its chunks (a chunk already indexed keeps its first location). Durable
    /// at the next `flush`; a large rebuild writes a run on the way.
    pub fn insert_pack(&self, pack: &FinishedPack) -> Result<(), IndexError> {
        if self.has_pack(&pack.id)? {
            return Ok(());
        }
        let mut st = self.state();
        let no = st.next_pack;
        st.next_pack = no.checked_add(1).ok_or(IndexError::Value)?;
        st.pending
            .push((no, pack.id, pack.file_len, pack.blobs.len() as u32));
        st.packs.insert(no, pack.id);
        for b in &pack.blobs {
            let known = {
                let live = st.live();
                st.map.get(b.entry.id.as_bytes(), &live)?.is_some()
            };
            if !known {
                st.map.insert(chunk_entry(no, b));
            }
        }
        if st.map.memtable_full() {
            self.flush_locked(&mut st)?;
        }
        Ok(())
    }

    /// Drops a pack; its chunk entries stop counting at once and leave the run files at their
    /// next merge.
    pub fn remove_pack(&self, id: &PackId) -> Result<(), IndexError> {
        let mut st = self.state();
        let no = match st.pending.iter().position(|p| p.1 == *id) {
            Some(i) => Some(st.pending.remove(i).0),
            None => self.pack_ids.remove(id.as_bytes())?.and_then(|v| le32(&v)),
        };
        let Some(no) = no else {
            return Ok(());
        };
        self.packs.remove(no.to_be_bytes())?;
        st.packs.remove(&no);
        st.map.forget_unwritten(no);
        Ok(())
    }

    /// Where a chunk lies, per the index (a hint: reads still check the ChunkId).
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLoc>, IndexError> {
        let st = self.state();
        let live = st.live();
        let Some(e) = st.map.get(id.as_bytes(), &live)? else {
            return Ok(None);
        };
        let pack = *st.packs.get(&e.pack_no).ok_or(IndexError::Value)?;
        let entry = PackEntry {
            kind: BlobKind::from_code(e.kind).ok_or(IndexError::Value)?,
            flags: e.flags,
            stored_len: e.stored_len,
            plain_len: e.plain_len,
            id: *id,
        };
        Ok(Some(ChunkLoc {
            pack,
            blob: BlobLoc {
                entry,
                offset: e.offset,
            },
        }))
    }

    /// Number of indexed chunks (reads the whole chunk map).
    pub fn chunk_count(&self) -> Result<u64, IndexError> {
        let st = self.state();
        let live = st.live();
        Ok(st.map.count_live(&live)?)
    }

    /// Run files of the chunk map (for reports).
    pub fn chunk_runs(&self) -> usize {
        self.state().map.run_count()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::MasterSecret;

    fn pack(n: u8, chunks: &[u8]) -> FinishedPack {
        FinishedPack {
            id: PackId::from_bytes([n; 32]),
            file_len: 1000,
            blobs: chunks
                .iter()
                .enumerate()
                .map(|(i, c)| BlobLoc {
                    entry: PackEntry {
                        kind: BlobKind::Data,
                        flags: 0,
                        stored_len: 100,
                        plain_len: 60,
                        id: ChunkId::from_bytes([*c; 32]),
                    },
                    offset: 8 + 100 * i as u32,
                })
                .collect(),
        }
    }

    #[test]
    fn entries_whose_pack_never_reached_sled_are_ignored_and_their_number_never_reused() {
        let keys = Keys::derive(&MasterSecret::from_bytes([5; 32]));
        let root = tempfile::tempdir().unwrap();
        let (idx, fresh) = Index::open(Some(root.path()), &keys).unwrap();
        assert!(fresh);
        idx.insert_pack(&pack(1, &[1, 2])).unwrap();
        idx.complete(&keys).unwrap();
        drop(idx);
        // A crash between the run and sled: a run names pack number 7, which sled never got.
        let mut m = ChunkMap::open(&root.path().join("index").join("chunks")).unwrap();
        let orphan = chunk_entry(7, &pack(9, &[9]).blobs[0]);
        m.insert(orphan);
        m.flush(&|_| true).unwrap();
        drop(m);
        let (idx, fresh) = Index::open(Some(root.path()), &keys).unwrap();
        assert!(!fresh);
        assert!(idx.chunk(&ChunkId::from_bytes([9; 32])).unwrap().is_none());
        assert_eq!(idx.chunk_count().unwrap(), 2);
        let loc = idx.chunk(&ChunkId::from_bytes([2; 32])).unwrap().unwrap();
        assert_eq!(
            (loc.pack, loc.blob.offset),
            (PackId::from_bytes([1; 32]), 108)
        );
        // The next pack gets number 8, so the orphan entry stays dead.
        idx.insert_pack(&pack(3, &[3, 1])).unwrap();
        idx.flush().unwrap();
        let no = idx.pack_ids.get([3u8; 32]).unwrap().and_then(|v| le32(&v));
        assert_eq!(no, Some(8));
        // Chunk 1 keeps its first location; removing that pack drops both of its chunks.
        let loc = idx.chunk(&ChunkId::from_bytes([1; 32])).unwrap().unwrap();
        assert_eq!(loc.pack, PackId::from_bytes([1; 32]));
        idx.remove_pack(&PackId::from_bytes([1; 32])).unwrap();
        assert!(idx.chunk(&ChunkId::from_bytes([1; 32])).unwrap().is_none());
        assert_eq!(idx.chunk_count().unwrap(), 1);
        assert_eq!(idx.packs().unwrap(), vec![PackId::from_bytes([3; 32])]);
    }

    #[test]
    fn a_damaged_run_fails_the_open_so_the_index_is_rebuilt() {
        let keys = Keys::derive(&MasterSecret::from_bytes([6; 32]));
        let root = tempfile::tempdir().unwrap();
        let (idx, _) = Index::open(Some(root.path()), &keys).unwrap();
        idx.insert_pack(&pack(1, &[1])).unwrap();
        idx.complete(&keys).unwrap();
        drop(idx);
        let dir = root.path().join("index").join("chunks");
        let run = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut b = std::fs::read(&run).unwrap();
        b[0] ^= 0x40;
        std::fs::write(&run, b).unwrap();
        assert!(matches!(
            Index::open(Some(root.path()), &keys),
            Err(IndexError::ChunkMap(_))
        ));
    }
}
