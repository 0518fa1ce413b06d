//! The repository: `init` and `open` with a password, and the blob writer and reader on top of
//! packs (format.md §5, §6, §7, §15): `put_stream` chunks, dedups, compresses, seals and packs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::sync::Arc;

use super::caps::{CONFIG_FILE_MAX, KEY_FILES_MAX, KEY_FILE_LEN, STREAM_DIRECT_MAX};
use super::chunker::{Chunker, ChunkerParams, Cutter, NORMALIZATION_LEVEL};
use super::codec::{DecodeError, Reader};
use super::ids::{BuildChunkIdHasher, ChunkId, KeyId, PackId, RepoId, SnapshotId};
use super::index::Index;
use super::keys::{self, KdfParams, KeyError, Keys, MasterSecret};
use super::pack::{self, BlobLoc, FinishedPack, PackError, PackWriter, ZSTD_LEVEL};
use super::seal::{self, BlobKind, SealError, MAGIC_CONFIG};
use super::storage::{Storage, StorageError};
use super::stream::{Stream, StreamForm};
use crate::password::Password;

/// The repository format version this build reads and writes (`config.1`).
pub const FORMAT_VERSION: u32 = 1;
/// Name of the config file of this format version.
pub const CONFIG_NAME: &str = "config.1";
/// Default pack target size (writer preference, §8).
pub const PACK_TARGET_DEFAULT: u32 = 16 * 1024 * 1024;

/// Top-level directories created by `init`, besides the 256 `packs/xx`.
pub const DIRS: [&str; 7] = [
    "keys",
    "packs",
    "snapshots",
    "pins",
    "locks",
    "staging",
    "index",
];

/// Text of `README.txt` (for humans; never parsed).
pub const README_TEXT: &str = "\
This folder is a Cradle repository: encrypted, deduplicated snapshots of iPhone backups.

Its password is the iPhone backup password set on the Cradle box.

To read it on a computer, install `cradle`, then run:
    cradle snapshots --repo <this folder>
    cradle export <snapshot> --repo <this folder> --out <dir>

Do not edit, rename or delete files here by hand: snapshots could become unreadable.
The `index/` folder is a cache and may be deleted; it is rebuilt when needed.

Format: Cradle's docs/format.md, repository format version 1.
";

/// Everything `init` lets a caller choose.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// Argon2id costs of the first key file.
    pub kdf: KdfParams,
    /// Data chunker sizes.
    pub data_chunker: ChunkerParams,
    /// Metadata chunker sizes.
    pub meta_chunker: ChunkerParams,
    /// Pack target size in bytes.
    pub pack_target: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            kdf: KdfParams::DEFAULT,
            data_chunker: ChunkerParams::DATA_DEFAULT,
            meta_chunker: ChunkerParams::META_DEFAULT,
            pack_target: PACK_TARGET_DEFAULT,
        }
    }
}

impl InitOptions {
    /// Small and fast settings for tests: tiny Argon2id, 1/4/16 KiB data chunks, 1 MiB packs.
    pub fn for_tests() -> Self {
        InitOptions {
            kdf: KdfParams::INSECURE_FOR_TESTS,
            data_chunker: ChunkerParams {
                min: 1024,
                avg: 4096,
                max: 16384,
            },
            meta_chunker: ChunkerParams {
                min: 1024,
                avg: 4096,
                max: 16384,
            },
            pack_target: 1024 * 1024,
        }
    }
}

/// The repository's config (§6), read from `config.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The repository's identity.
    pub repo_id: RepoId,
    /// When `init` ran (ms since the epoch).
    pub created: i64,
    /// Data chunker sizes.
    pub data_chunker: ChunkerParams,
    /// Metadata chunker sizes.
    pub meta_chunker: ChunkerParams,
    /// Pack target size in bytes.
    pub pack_target: u32,
}

const CONFIG_PAYLOAD_LEN: usize = 76;

impl Config {
    /// Encodes the 76-byte payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CONFIG_PAYLOAD_LEN);
        b.extend_from_slice(self.repo_id.as_bytes());
        b.extend_from_slice(&self.created.to_le_bytes());
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.push(1);
        b.push(NORMALIZATION_LEVEL);
        b.extend_from_slice(&[0, 0]);
        for p in [self.data_chunker, self.meta_chunker] {
            b.extend_from_slice(&p.min.to_le_bytes());
            b.extend_from_slice(&p.avg.to_le_bytes());
            b.extend_from_slice(&p.max.to_le_bytes());
        }
        b.extend_from_slice(&self.pack_target.to_le_bytes());
        b
    }

    /// Decodes and validates the payload (known algorithm, level, valid chunker sizes).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let repo_id = RepoId::from_bytes(r.array("repo id")?);
        let created = r.i64("created")?;
        let version = r.u32("format version")?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnknownValue {
                field: "format version",
                value: u64::from(version),
            });
        }
        let algo = r.u8("chunker algorithm")?;
        if algo != 1 {
            return Err(DecodeError::UnknownValue {
                field: "chunker algorithm",
                value: u64::from(algo),
            });
        }
        let level = r.u8("normalization level")?;
        if level != NORMALIZATION_LEVEL {
            return Err(DecodeError::UnknownValue {
                field: "normalization level",
                value: u64::from(level),
            });
        }
        r.reserved(2, "config reserved")?;
        let mut chunker = || -> Result<ChunkerParams, DecodeError> {
            let p = ChunkerParams {
                min: r.u32("chunker min")?,
                avg: r.u32("chunker avg")?,
                max: r.u32("chunker max")?,
            };
            if !p.is_valid() {
                return Err(DecodeError::Invalid("chunker sizes out of range"));
            }
            Ok(p)
        };
        let data_chunker = chunker()?;
        let meta_chunker = chunker()?;
        let pack_target = r.u32("pack target")?;
        if !(64 * 1024..=32 * 1024 * 1024).contains(&pack_target) {
            return Err(DecodeError::Invalid("pack target out of range"));
        }
        r.finish()?;
        Ok(Config {
            repo_id,
            created,
            data_chunker,
            meta_chunker,
            pack_target,
        })
    }
}

/// A failed repository operation.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The drive could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A pack is damaged, missing or foreign.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// No `config.N` here: not a Cradle repository (or not initialized).
    #[error("not a Cradle repository (no config.1)")]
    NotARepository,
    /// `init` found an existing repository.
    #[error("a Cradle repository already exists here")]
    AlreadyInitialized,
    /// A newer format than this build knows.
    #[error("repository format version {0} needs a newer Cradle (this one reads version 1)")]
    UnsupportedFormat(u32),
    /// No key file opens with this password.
    #[error("wrong password: no key file in keys/ opens with it")]
    WrongPassword,
    /// `keys/` holds no key file.
    #[error("no key files in keys/")]
    NoKeyFiles,
    /// A key file could not be made.
    #[error("key file: {0}")]
    Key(#[from] KeyError),
    /// A sealed object does not open.
    #[error("{path}: {source}")]
    Seal {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: SealError,
    },
    /// A record is malformed.
    #[error("{path}: {source}")]
    Decode {
        /// The file (or stream).
        path: String,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// A file whose content does not hash to its name (damaged or swapped).
    #[error("{0}: content does not match its name")]
    NameMismatch(String),
    /// A file table out of order, or with an entry that breaks a rule of §9.3.
    #[error("file table: {0}")]
    Table(DecodeError),
    /// The index failed (it is a cache: the repository falls back to pack headers).
    #[error("index: {0}")]
    Index(String),
    /// Options that `init` cannot accept.
    #[error("invalid options: {0}")]
    BadOptions(&'static str),
    /// A chunk referenced by a stream is in no pack.
    #[error("chunk {0} is in no pack")]
    ChunkMissing(ChunkId),
    /// A chunk is in a pack that is not durable yet (call `flush` first).
    #[error("chunk {0} is in a pack not yet flushed")]
    NotFlushed(ChunkId),
    /// A stream's chunks do not add up to its length, or its list is malformed.
    #[error("stream is damaged: {0}")]
    BadStream(&'static str),
    /// A stream needs more chunks than even an indirect stream can list.
    #[error("stream too long for one indirect level")]
    StreamTooLong,
    /// The caller's reader failed.
    #[error("reading the input: {0}")]
    Input(#[source] io::Error),
    /// The caller's writer failed.
    #[error("writing the output: {0}")]
    Output(#[source] io::Error),
}

/// Where a stored chunk lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLoc {
    /// The pack.
    pub pack: PackId,
    /// The blob inside it.
    pub blob: BlobLoc,
}

/// Milliseconds since the epoch, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Open packs and dedup state of a writer.
struct WriteState {
    data: Option<PackWriter>,
    meta: Option<PackWriter>,
    /// Chunks written to packs not yet finished.
    pending: HashSet<ChunkId, BuildChunkIdHasher>,
    /// Packs finished since the last `flush` returned them.
    finished: Vec<FinishedPack>,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// The blob being made (`pack::encode_blob`); only grows.
    blob: Vec<u8>,
}

/// Per-stream compression heuristic (a writer choice, not a format rule, §7).
struct CompressPolicy {
    enabled: bool,
    misses: u32,
    since_try: u32,
}

impl CompressPolicy {
    fn new(kind: BlobKind) -> Self {
        CompressPolicy {
            enabled: kind != BlobKind::Raw,
            misses: 0,
            since_try: 0,
        }
    }

    /// Looks at the first chunk: JPEG, HEIC/MOV/MP4 (`ftyp`), PNG, WebP, GIF, MP3, Ogg, FLAC,
    /// ZIP/zstd/gzip/xz/bzip2/7z never pay.
    fn sniff(&mut self, first: &[u8]) {
        let known = first.starts_with(&[0xff, 0xd8, 0xff])
            || first.get(4..8) == Some(b"ftyp")
            || first.starts_with(b"\x89PNG")
            || (first.starts_with(b"RIFF") && first.get(8..12) == Some(b"WEBP"))
            || first.starts_with(b"GIF8")
            || first.starts_with(b"ID3")
            || first.starts_with(b"OggS")
            || first.starts_with(b"fLaC")
            || first.starts_with(b"PK\x03\x04")
            || first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
            || first.starts_with(&[0x1f, 0x8b])
            || first.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
            || first.starts_with(b"BZh")
            || first.starts_with(&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c]);
        if known {
            self.enabled = false;
        }
    }

    /// Whether to try compressing the next chunk: after two misses in a row, only every 16th.
    fn attempt(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        if self.misses < 2 {
            return true;
        }
        self.since_try += 1;
        if self.since_try >= 16 {
            self.since_try = 0;
            return true;
        }
        false
    }

    fn record(&mut self, tried: bool, paid: bool) {
        if tried {
            self.misses = if paid {
                0
            } else {
                self.misses.saturating_add(1)
            };
        }
    }
}

/// An open repository. Reading needs only `&self`; writing (`put_stream`, `flush`) needs `&mut`.
pub struct Repository {
    storage: Arc<dyn Storage>,
    keys: Keys,
    config: Config,
    key_id: KeyId,
    chunks: HashMap<ChunkId, ChunkLoc, BuildChunkIdHasher>,
    damaged: Vec<PackError>,
    index: Option<Index>,
    write: WriteState,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("storage", &self.storage)
            .field("repo_id", &self.config.repo_id)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// Creates a repository in the (empty) storage root: every directory, a key file for
    /// `password`, `config.1` and `README.txt`; then opens it.
    pub fn init(
        storage: Arc<dyn Storage>,
        password: &Password,
        options: &InitOptions,
    ) -> Result<Repository, RepoError> {
        if !options.data_chunker.is_valid() || !options.meta_chunker.is_valid() {
            return Err(RepoError::BadOptions("chunker sizes"));
        }
        if !(64 * 1024..=32 * 1024 * 1024).contains(&options.pack_target) {
            return Err(RepoError::BadOptions("pack target"));
        }
        options.kdf.check()?;
        if storage.list("")?.iter().any(|n| n.starts_with("config.")) {
            return Err(RepoError::AlreadyInitialized);
        }
        for d in DIRS {
            storage.create_dir(d)?;
        }
        for i in 0..=255u8 {
            storage.create_dir(&format!("packs/{i:02x}"))?;
        }
        let master = MasterSecret::random();
        let now = now_ms();
        let config = Config {
            repo_id: RepoId::random(),
            created: now,
            data_chunker: options.data_chunker,
            meta_chunker: options.meta_chunker,
            pack_target: options.pack_target,
        };
        let keys = Keys::derive(&master);
        // Key file first: a crash before config.1 leaves no repository, and `init` can run again.
        let key_file = keys::make_key_file(password, &master, &config.repo_id, options.kdf, now)?;
        let key_id = KeyId::of_file(&key_file);
        storage.create(&format!("keys/{key_id}"), &key_file)?;
        let sealed = seal::seal_file(&keys, MAGIC_CONFIG, 1, &config.encode());
        storage.create(CONFIG_NAME, &sealed)?;
        if !storage.exists("README.txt")? {
            storage.create("README.txt", README_TEXT.as_bytes())?;
        }
        let mut repo = Repository::from_parts(storage, keys, config, key_id);
        repo.attach_index()?;
        Ok(repo)
    }

    /// Opens the index and brings it up to date with the drive (§13, §15.2): rebuilt when its
    /// VERSION is missing or wrong, else resynchronized. If sled fails (corruption, or another
    /// process has it open), the index is rebuilt once, then the repository works without it,
    /// reading every pack header instead.
    fn attach_index(&mut self) -> Result<(), RepoError> {
        for attempt in 0..2 {
            let root = self.storage.local_root().map(|p| p.to_path_buf());
            let opened = Index::open(root.as_deref(), &self.keys);
            let (idx, fresh) = match opened {
                Ok(x) => x,
                Err(super::index::IndexError::Busy) => break,
                Err(_) if attempt == 0 => {
                    if let Some(r) = &root {
                        // Damaged beyond opening: delete it (a cache) and try once more. If
                        // another process holds it, the removal fails and so does the retry.
                        let _ = std::fs::remove_file(r.join("index").join("VERSION"));
                    }
                    continue;
                }
                Err(_) => break,
            };
            self.index = Some(idx);
            let synced = if fresh {
                self.rebuild_index()
            } else {
                self.resync_index()
            };
            match synced {
                Ok(()) => return Ok(()),
                Err(RepoError::Storage(e)) => return Err(e.into()),
                Err(_) => {
                    if self.rebuild_index().is_ok() {
                        return Ok(());
                    }
                    self.index = None;
                    break;
                }
            }
        }
        self.damaged.clear();
        self.load_chunks()
    }

    /// Rebuilds the index from every pack header and snapshot record on the drive.
    pub fn rebuild_index(&mut self) -> Result<(), RepoError> {
        let Some(idx) = &self.index else {
            return Ok(());
        };
        idx.clear(&self.keys)?;
        self.damaged.clear();
        for pack in self.list_packs()? {
            self.index_pack(&pack)?;
        }
        for id in self.list_snapshots()? {
            self.index_snapshot(&id)?;
        }
        if let Some(idx) = &self.index {
            idx.complete(&self.keys)?;
        }
        Ok(())
    }

    /// Compares the index with the drive's `packs/` and `snapshots/` and fixes the differences.
    pub fn resync_index(&mut self) -> Result<(), RepoError> {
        let Some(idx) = &self.index else {
            return Ok(());
        };
        let indexed: HashSet<PackId> = idx.packs()?.into_iter().collect();
        let on_drive: HashSet<PackId> = self.list_packs()?.into_iter().collect();
        if indexed.difference(&on_drive).next().is_some() {
            // Packs vanished (prune, or damage): a chunk they held may also be in a surviving
            // pack (a repack's copy), which the index does not list since it keeps one location
            // per chunk. Rebuild rather than lose that copy.
            return self.rebuild_index();
        }
        let indexed_snaps: HashSet<SnapshotId> = idx.snapshots()?.into_iter().collect();
        let snaps: HashSet<SnapshotId> = self.list_snapshots()?.into_iter().collect();
        for gone in indexed_snaps.difference(&snaps) {
            idx.remove_snapshot(gone)?;
        }
        for new in on_drive.difference(&indexed) {
            self.index_pack(new)?;
        }
        for new in snaps.difference(&indexed_snaps) {
            self.index_snapshot(new)?;
        }
        if let Some(idx) = &self.index {
            idx.complete(&self.keys)?;
        }
        Ok(())
    }

    fn index_pack(&mut self, pack: &PackId) -> Result<(), RepoError> {
        match pack::read_pack_header(self.storage.as_ref(), &self.keys, pack) {
            Ok((file_len, blobs)) => {
                if let Some(idx) = &self.index {
                    idx.insert_pack(&FinishedPack {
                        id: *pack,
                        file_len,
                        blobs,
                    })?;
                }
                Ok(())
            }
            Err(PackError {
                problem: pack::PackProblem::Storage(e),
                ..
            }) if !e.is_not_found() && !matches!(e, StorageError::ShortRead { .. }) => {
                Err(e.into())
            }
            Err(e) => {
                self.damaged.push(e);
                Ok(())
            }
        }
    }

    fn index_snapshot(&mut self, id: &SnapshotId) -> Result<(), RepoError> {
        match self.load_snapshot(id) {
            Ok(r) => {
                if let Some(idx) = &self.index {
                    idx.insert_snapshot(&self.keys, id, &r)?;
                }
                Ok(())
            }
            Err(RepoError::Storage(e)) if !e.is_not_found() => Err(e.into()),
            Err(_) => Ok(()), // damaged records are `check`'s to report
        }
    }

    /// Whether the index is in use, and how many chunks it lists.
    /// (A chunk map that cannot be read counts 0, which `check` reports as a disagreement.)
    pub fn index_chunk_count(&self) -> Option<usize> {
        self.index
            .as_ref()
            .map(|i| i.chunk_count().map_or(0, |n| n as usize))
    }

    /// Adds a committed snapshot to the index and flushes it (§15.1 step 5).
    pub(crate) fn index_committed(&mut self, id: &SnapshotId, r: &super::snapshot::SnapshotRecord) {
        if let Some(idx) = &self.index {
            if idx
                .insert_snapshot(&self.keys, id, r)
                .and_then(|_| idx.flush())
                .is_err()
            {
                // A cache: the next open resynchronizes it.
                self.index = None;
            }
        }
    }

    /// Opens the repository with `password`. Nothing is written. Tries each key file in `keys/`
    /// (at most `KEY_FILES_MAX`); a key file that unwraps but does not open `config.1` is skipped.
    pub fn open(storage: Arc<dyn Storage>, password: &Password) -> Result<Repository, RepoError> {
        let root = storage.list("")?;
        let newest = root
            .iter()
            .filter_map(|n| n.strip_prefix("config."))
            .filter_map(|v| v.parse::<u32>().ok())
            .max()
            .ok_or(RepoError::NotARepository)?;
        if newest != FORMAT_VERSION {
            return Err(RepoError::UnsupportedFormat(newest));
        }
        let sealed_config = storage.read(CONFIG_NAME, CONFIG_FILE_MAX)?;
        let names: Vec<String> = storage
            .list("keys")?
            .into_iter()
            .filter(|n| KeyId::from_hex(n).is_some())
            .take(KEY_FILES_MAX)
            .collect();
        if names.is_empty() {
            return Err(RepoError::NoKeyFiles);
        }
        for name in names {
            let path = format!("keys/{name}");
            let Ok(bytes) = storage.read(&path, KEY_FILE_LEN) else {
                continue;
            };
            if KeyId::of_file(&bytes).to_hex() != name {
                continue; // damaged or renamed: its name no longer matches its bytes
            }
            let Ok((master, repo_id)) = keys::open_key_file(&bytes, password) else {
                continue;
            };
            let keys = Keys::derive(&master);
            let Ok((_, payload)) =
                seal::open_file(&keys, MAGIC_CONFIG, &[1], CONFIG_FILE_MAX, &sealed_config)
            else {
                continue; // foreign key file
            };
            let config = Config::decode(&payload).map_err(|source| RepoError::Decode {
                path: CONFIG_NAME.into(),
                source,
            })?;
            if config.repo_id != repo_id {
                continue;
            }
            let key_id = KeyId::from_hex(&name).unwrap_or_default();
            let mut repo = Repository::from_parts(storage, keys, config, key_id);
            repo.attach_index()?;
            return Ok(repo);
        }
        Err(RepoError::WrongPassword)
    }

    fn from_parts(storage: Arc<dyn Storage>, keys: Keys, config: Config, key_id: KeyId) -> Self {
        Repository {
            storage,
            keys,
            config,
            key_id,
            chunks: HashMap::default(),
            damaged: Vec::new(),
            index: None,
            write: WriteState {
                data: None,
                meta: None,
                pending: HashSet::default(),
                finished: Vec::new(),
                compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL).ok(),
                blob: Vec::new(),
            },
        }
    }

    /// Reads every pack header into the chunk map. A pack whose header does not check out is
    /// left out (its chunks read as missing) and listed by `damaged_packs`; `check` reports it.
    fn load_chunks(&mut self) -> Result<(), RepoError> {
        for pack in self.list_packs()? {
            let blobs = match pack::read_pack_header(self.storage.as_ref(), &self.keys, &pack) {
                Ok((_, blobs)) => blobs,
                Err(PackError {
                    problem: pack::PackProblem::Storage(e),
                    ..
                }) if !e.is_not_found() && !matches!(e, StorageError::ShortRead { .. }) => {
                    return Err(e.into())
                }
                Err(e) => {
                    self.damaged.push(e);
                    continue;
                }
            };
            for b in blobs {
                self.chunks
                    .entry(b.entry.id)
                    .or_insert(ChunkLoc { pack, blob: b });
            }
        }
        Ok(())
    }

    /// Every pack under its final name (temporary files ignored), from the drive.
    pub fn list_packs(&self) -> Result<Vec<PackId>, RepoError> {
        let mut out = Vec::new();
        for i in 0..=255u8 {
            let dir = format!("packs/{i:02x}");
            for n in self.storage.list(&dir)? {
                if let Some(id) = PackId::from_hex(&n) {
                    if id.as_bytes()[0] == i {
                        out.push(id);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Packs whose header failed its checks when the repository was opened.
    pub fn damaged_packs(&self) -> &[PackError] {
        &self.damaged
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key file that opened the repository.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The subkeys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Where a chunk lies, if it is in a durable pack.
    pub fn chunk_location(&self, id: &ChunkId) -> Option<ChunkLoc> {
        if let Some(l) = self.chunks.get(id) {
            return Some(*l);
        }
        self.index.as_ref().and_then(|i| i.chunk(id).ok().flatten())
    }

    /// Whether the repository already holds (or is writing) this chunk.
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.write.pending.contains(id) || self.chunk_location(id).is_some()
    }

    /// Stores a byte stream: cuts it (data chunker, or metadata chunker for `BlobKind::Meta`),
    /// skips chunks already stored, compresses when it pays, seals, and appends to packs (meta
    /// blobs to packs of their own). Long streams become indirect. The chunks are durable only
    /// after `flush`.
    pub fn put_stream(&mut self, reader: impl Read, kind: BlobKind) -> Result<Stream, RepoError> {
        let params = match kind {
            BlobKind::Meta => self.config.meta_chunker,
            _ => self.config.data_chunker,
        };
        let mut chunker = Chunker::new(reader, params, self.keys.cdc_seed());
        let mut policy = CompressPolicy::new(kind);
        let mut ids = Vec::new();
        let mut length = 0u64;
        while let Some(chunk) = chunker.next_chunk().map_err(RepoError::Input)? {
            if ids.is_empty() {
                policy.sniff(chunk);
            }
            let id = self.keys.chunk_id(chunk);
            length += chunk.len() as u64;
            ids.push(id);
            self.put_chunk(id, kind, chunk, &mut policy)?;
        }
        self.make_stream(ids, length)
    }

    /// The zstd level of chunks written from now on (`ZSTD_LEVEL` by default; a writer choice,
    /// not recorded, format.md §7). An unusable level keeps the current one.
    pub fn set_zstd_level(&mut self, level: i32) {
        if let Ok(c) = zstd::bulk::Compressor::new(level) {
            self.write.compressor = Some(c);
        }
    }

    /// A direct stream, or an indirect one whose list is stored as meta chunks.
    fn make_stream(&mut self, ids: Vec<ChunkId>, length: u64) -> Result<Stream, RepoError> {
        if ids.len() <= STREAM_DIRECT_MAX as usize {
            return Ok(Stream {
                length,
                form: StreamForm::Direct,
                ids,
            });
        }
        let list: Vec<u8> = ids.iter().flat_map(|i| *i.as_bytes()).collect();
        let inner = self.put_stream(&list[..], BlobKind::Meta)?;
        if inner.form != StreamForm::Direct {
            return Err(RepoError::StreamTooLong);
        }
        Ok(Stream {
            length,
            form: StreamForm::Indirect,
            ids: inner.ids,
        })
    }

    /// A push-style writer for a stream whose bytes are produced piecewise (file tables).
    /// Its methods take the repository as an argument, so the caller may read other streams
    /// between writes.
    pub fn stream_writer(&self, kind: BlobKind) -> StreamWriter {
        let params = match kind {
            BlobKind::Meta => self.config.meta_chunker,
            _ => self.config.data_chunker,
        };
        StreamWriter {
            kind,
            cutter: Cutter::new(params, self.keys.cdc_seed()),
            buf: Vec::new(),
            start: 0,
            ids: Vec::new(),
            length: 0,
            policy: CompressPolicy::new(kind),
        }
    }

    /// Stores one chunk unless it is already stored.
    fn put_chunk(
        &mut self,
        id: ChunkId,
        kind: BlobKind,
        chunk: &[u8],
        policy: &mut CompressPolicy,
    ) -> Result<(), RepoError> {
        if self.has_chunk(&id) {
            return Ok(());
        }
        let w = &mut self.write;
        let tried = policy.attempt();
        let entry = pack::encode_blob(
            &self.keys,
            if tried { w.compressor.as_mut() } else { None },
            &id,
            kind,
            chunk,
            &mut w.blob,
        );
        let blob = &w.blob[..entry.stored_len as usize];
        policy.record(tried, entry.flags != 0);
        let slot = if kind == BlobKind::Meta {
            &mut w.meta
        } else {
            &mut w.data
        };
        if slot.as_ref().is_some_and(|p| !p.has_room(blob.len())) {
            if let Some(full) = slot.take() {
                let fin = full.finish(&self.keys)?;
                w.finished.push(fin);
            }
        }
        if slot.is_none() {
            *slot = Some(PackWriter::create(self.storage.as_ref())?);
        }
        if let Some(p) = slot.as_mut() {
            p.add(entry, blob)?;
            w.pending.insert(id);
            if p.len() >= u64::from(self.config.pack_target) {
                if let Some(full) = slot.take() {
                    let fin = full.finish(&self.keys)?;
                    w.finished.push(fin);
                }
            }
        }
        self.absorb_finished();
        Ok(())
    }

    /// Moves the chunks of finished packs from `pending` to the chunk map.
    fn absorb_finished(&mut self) {
        for fin in &self.write.finished {
            for b in &fin.blobs {
                if self.write.pending.remove(&b.entry.id) {
                    self.chunks.insert(
                        b.entry.id,
                        ChunkLoc {
                            pack: fin.id,
                            blob: *b,
                        },
                    );
                }
            }
        }
    }

    /// Finishes the open packs, making every chunk written so far durable (§15.1 step 1).
    /// Returns the packs finished since the previous `flush`.
    pub fn flush(&mut self) -> Result<Vec<FinishedPack>, RepoError> {
        for slot in [&mut self.write.data, &mut self.write.meta] {
            if let Some(p) = slot.take() {
                let fin = p.finish(&self.keys)?;
                self.write.finished.push(fin);
            }
        }
        self.absorb_finished();
        let finished = std::mem::take(&mut self.write.finished);
        if let Some(idx) = &self.index {
            let indexed = finished
                .iter()
                .try_for_each(|p| idx.insert_pack(p))
                .and_then(|_| idx.flush());
            match indexed {
                Ok(()) => {
                    // The index has them now; keep the in-memory map small.
                    for p in &finished {
                        for b in &p.blobs {
                            self.chunks.remove(&b.entry.id);
                        }
                    }
                }
                // A cache: keep the in-memory map and let the next open resynchronize.
                Err(_) => self.index = None,
            }
        }
        Ok(finished)
    }

    /// True when chunks have been written that `flush` has not yet made durable.
    pub fn has_unflushed(&self) -> bool {
        !self.write.pending.is_empty()
    }

    /// Reads one chunk, checking its ChunkId.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>, RepoError> {
        let Some(loc) = self.chunk_location(id) else {
            if self.write.pending.contains(id) {
                return Err(RepoError::NotFlushed(*id));
            }
            return Err(RepoError::ChunkMissing(*id));
        };
        Ok(pack::read_blob(
            self.storage.as_ref(),
            &self.keys,
            &loc.pack,
            &loc.blob,
            true,
        )?)
    }

    /// Reads a stream's bytes one chunk at a time (bounded memory), as an `io::Read`.
    /// Errors surface as `io::Error`s wrapping a `RepoError`.
    pub fn open_stream<'r>(&'r self, stream: &Stream) -> StreamReader<'r> {
        StreamReader {
            repo: self,
            cursor: StreamCursor::new(stream.clone()),
            cur: Vec::new(),
            cur_pos: 0,
        }
    }

    /// Writes a stream's bytes to `out`, verifying every ChunkId and the total length.
    /// Returns the number of bytes written.
    pub fn read_stream(&self, stream: &Stream, out: &mut impl Write) -> Result<u64, RepoError> {
        let mut c = StreamCursor::new(stream.clone());
        let mut n = 0u64;
        while let Some(chunk) = c.next_chunk(self)? {
            out.write_all(&chunk).map_err(RepoError::Output)?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }
}

/// Writes one stream piecewise; see `Repository::stream_writer`. Cuts exactly where
/// `put_stream` would on the same bytes.
pub struct StreamWriter {
    kind: BlobKind,
    cutter: Cutter,
    buf: Vec<u8>,
    start: usize,
    ids: Vec<ChunkId>,
    length: u64,
    policy: CompressPolicy,
}

impl StreamWriter {
    /// Appends bytes; full chunks are stored as they form.
    pub fn write(&mut self, repo: &mut Repository, bytes: &[u8]) -> Result<(), RepoError> {
        self.buf.extend_from_slice(bytes);
        let max = self.cutter.max();
        while self.buf.len() - self.start >= max {
            self.cut_one(repo)?;
        }
        if self.start >= 2 * max {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }

    fn cut_one(&mut self, repo: &mut Repository) -> Result<(), RepoError> {
        let n = self.cutter.cut(&self.buf[self.start..]);
        let chunk = &self.buf[self.start..self.start + n];
        if self.ids.is_empty() {
            self.policy.sniff(chunk);
        }
        let id = repo.keys.chunk_id(chunk);
        repo.put_chunk(id, self.kind, chunk, &mut self.policy)?;
        self.ids.push(id);
        self.length += n as u64;
        self.start += n;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.length + (self.buf.len() - self.start) as u64
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores the last chunks and returns the stream (durable after `flush`).
    pub fn finish(mut self, repo: &mut Repository) -> Result<Stream, RepoError> {
        while self.start < self.buf.len() {
            self.cut_one(repo)?;
        }
        repo.make_stream(self.ids, self.length)
    }
}

/// Walks a stream's chunks without borrowing the repository (each step takes it), so a caller
/// can read one stream while writing another.
#[derive(Debug)]
pub struct StreamCursor {
    stream: Stream,
    next: usize,
    list_ids: VecDeque<ChunkId>,
    carry: Vec<u8>,
    total: u64,
    done: bool,
}

impl StreamCursor {
    /// A cursor at the start of `stream`.
    pub fn new(stream: Stream) -> Self {
        StreamCursor {
            stream,
            next: 0,
            list_ids: VecDeque::new(),
            carry: Vec::new(),
            total: 0,
            done: false,
        }
    }

    fn next_id(&mut self, repo: &Repository) -> Result<Option<ChunkId>, RepoError> {
        match self.stream.form {
            StreamForm::Direct => {
                let id = self.stream.ids.get(self.next).copied();
                self.next += 1;
                Ok(id)
            }
            StreamForm::Indirect => loop {
                if let Some(id) = self.list_ids.pop_front() {
                    return Ok(Some(id));
                }
                let Some(list_id) = self.stream.ids.get(self.next).copied() else {
                    if !self.carry.is_empty() {
                        return Err(RepoError::BadStream(
                            "chunk list is not a multiple of 32 bytes",
                        ));
                    }
                    return Ok(None);
                };
                self.next += 1;
                let list = repo.read_chunk(&list_id)?;
                self.carry.extend_from_slice(&list);
                let whole = self.carry.len() / 32 * 32;
                for c in self.carry[..whole].chunks_exact(32) {
                    self.list_ids
                        .push_back(ChunkId::from_slice(c).unwrap_or_default());
                }
                self.carry.drain(..whole);
            },
        }
    }

    /// The next chunk's bytes (ChunkId checked), or `None` at the end after checking that the
    /// chunks add up to the stream's length.
    pub fn next_chunk(&mut self, repo: &Repository) -> Result<Option<Vec<u8>>, RepoError> {
        if self.done {
            return Ok(None);
        }
        match self.next_id(repo)? {
            Some(id) => {
                let c = repo.read_chunk(&id)?;
                self.total += c.len() as u64;
                if self.total > self.stream.length {
                    return Err(RepoError::BadStream("chunks are longer than the stream"));
                }
                Ok(Some(c))
            }
            None => {
                self.done = true;
                if self.total != self.stream.length {
                    return Err(RepoError::BadStream("chunks are shorter than the stream"));
                }
                Ok(None)
            }
        }
    }
}

/// An `io::Read` over a stream; see `Repository::open_stream`.
pub struct StreamReader<'r> {
    repo: &'r Repository,
    cursor: StreamCursor,
    cur: Vec<u8>,
    cur_pos: usize,
}

impl Read for StreamReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur_pos == self.cur.len() {
            match self.cursor.next_chunk(self.repo) {
                Ok(Some(c)) => {
                    self.cur = c;
                    self.cur_pos = 0;
                }
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        let n = buf.len().min(self.cur.len() - self.cur_pos);
        buf[..n].copy_from_slice(&self.cur[self.cur_pos..self.cur_pos + n]);
        self.cur_pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_rejections() {
        let c = Config {
            repo_id: RepoId::random(),
            created: 42,
            data_chunker: ChunkerParams::DATA_DEFAULT,
            meta_chunker: ChunkerParams::META_DEFAULT,
            pack_target: PACK_TARGET_DEFAULT,
        };
        let b = c.encode();
        assert_eq!(b.len(), CONFIG_PAYLOAD_LEN);
        assert_eq!(Config::decode(&b).unwrap(), c);
        for (off, v) in [(40usize, 2u8), (44, 2), (45, 0), (46, 1)] {
            let mut bad = b.clone();
            bad[off] = v;
            assert!(Config::decode(&bad).is_err(), "offset {off}");
        }
        // min over the crate's limit; avg above max; pack target of 0.
        for (off, v) in [(48usize, u32::MAX), (64, 300 * 1024), (72, 0)] {
            let mut bad = b.clone();
            bad[off..off + 4].copy_from_slice(&v.to_le_bytes());
            assert!(Config::decode(&bad).is_err(), "offset {off}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Config::decode(&long), Err(DecodeError::Trailing(1)));
        assert!(Config::decode(&b[..75]).is_err());
    }

    #[test]
    fn compress_policy_backs_off_and_sniffs() {
        let mut p = CompressPolicy::new(BlobKind::Data);
        assert!(p.attempt());
        p.record(true, false);
        assert!(p.attempt());
        p.record(true, false);
        let tries = (0..32).filter(|_| p.attempt()).count();
        assert_eq!(tries, 2);
        p.record(true, true);
        assert!(p.attempt());
        let mut raw = CompressPolicy::new(BlobKind::Raw);
        assert!(!raw.attempt());
        let mut jpeg = CompressPolicy::new(BlobKind::Data);
        jpeg.sniff(&[0xff, 0xd8, 0xff, 0xe0, 0, 0]);
        assert!(!jpeg.attempt());
        let mut heic = CompressPolicy::new(BlobKind::Data);
        heic.sniff(b"\0\0\0\x18ftypheic");
        assert!(!heic.attempt());
    }
}
