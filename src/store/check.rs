//! `check` (format.md §16): verifies a repository from the drive, not the index: key files, config,
//! packs and their headers, every snapshot record and file table, every referenced chunk; optionally every blob.
//!
//! The result names what a damage costs: each affected snapshot (id, device, date) and each
//! affected file (`domain/relativePath`). Others call it after a backup (the appliance) and after
//! simulated crashes (tests):
//!
//! ```no_run
//! # fn f(repo: &cradle::store::repo::Repository) -> Result<(), cradle::store::check::CheckError> {
//! use cradle::store::check::{check, CheckOptions, ReadData};
//! let opts = CheckOptions { read_data: ReadData::Subset { percent: 10, seed: 0 } };
//! let report = check(repo, &opts, &mut |_progress| {})?;
//! if !report.is_ok() {
//!     for d in &report.damaged { eprintln!("damaged: {}", d.id); }
//! }
//! # Ok(()) }
//! ```

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use super::caps::{CONFIG_FILE_MAX, ENTRY_MAX, KEY_FILE_LEN, PACK_FILE_MAX, PIN_FILE_MAX};
use super::ids::{ChunkId, KeyId, PackId, SessionId, SnapshotId};
use super::keys;
use super::pack::{self, BlobLoc};
use super::repo::{Config, RepoError, Repository, CONFIG_NAME};
use super::seal::{self, MAGIC_CONFIG, MAGIC_PIN};
use super::snapshot::{Counts, Pin, SnapshotKind};
use super::storage::StorageError;
use super::stream::{Stream, StreamForm};
use super::table::{Content, FileEntry, TableKey, FLAG_DIR, FLAG_LINK};

/// How much blob data `check` reads and verifies besides the structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadData {
    /// Structure only: headers, records, tables (meta chunks are read), chunk presence.
    #[default]
    None,
    /// Every blob of every pack: unsealed, decompressed, ChunkId recomputed.
    All,
    /// A deterministic pseudo-random `percent` of the packs (by keyed hash of `seed` and PackId),
    /// at least one pack when `percent > 0`.
    Subset {
        /// 1..=100.
        percent: u8,
        /// Same seed, same packs.
        seed: u64,
    },
}

/// What `check` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckOptions {
    /// Blob data to read.
    pub read_data: ReadData,
}

/// How bad a finding is (format.md §1: *must* and *should*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// A *must* is broken: data is lost or unreadable.
    Error,
    /// A *should* is broken: no data is lost; recovery, an index rebuild or prune fixes it.
    Warning,
    /// Worth knowing (leftover temporary files, pending staging sessions).
    Info,
}

/// One thing `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What, naming the file or object.
    pub message: String,
}

/// A damaged file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedFile {
    /// `domain/relativePath`, `(no row)/<fileID>` for a row-less entry, or the top file's name.
    pub path: String,
    /// Why (the first missing or damaged chunk).
    pub reason: String,
}

/// A snapshot that does not read back completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedSnapshot {
    /// The SnapshotId.
    pub id: SnapshotId,
    /// Device UDID, empty when the record itself is unreadable.
    pub udid: String,
    /// Device name, empty when the record is unreadable.
    pub device_name: String,
    /// Status.plist date (ms), when the record is readable.
    pub phone_date: Option<i64>,
    /// Set when the record or its file table cannot be read at all (no file list then).
    pub unreadable: Option<String>,
    /// Damaged top files (Manifest.db, the plists).
    pub top_files: Vec<DamagedFile>,
    /// Damaged data files.
    pub files: Vec<DamagedFile>,
}

/// Where `check` is; `done` of `total` in the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckPhase {
    /// Key files and config.
    Keys,
    /// Pack headers.
    Packs,
    /// Blob data (`--read-data`).
    ReadData,
    /// Snapshot records and file tables.
    Snapshots,
    /// Index consistency.
    Index,
}

/// Progress report passed to the caller's callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckProgress {
    /// Phase.
    pub phase: CheckPhase,
    /// Items done in the phase.
    pub done: u64,
    /// Items in the phase.
    pub total: u64,
}

/// What `check` found and how much it covered.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Findings other than damaged snapshots, most severe first.
    pub findings: Vec<Finding>,
    /// Snapshots that do not read back completely, by id.
    pub damaged: Vec<DamagedSnapshot>,
    /// Snapshot records checked.
    pub snapshots: u64,
    /// File-table entries checked.
    pub files: u64,
    /// Packs whose header was checked.
    pub packs: u64,
    /// Packs whose blobs were read.
    pub packs_read: u64,
    /// Blobs read and verified.
    pub blobs_read: u64,
    /// Bytes of packs read for blob verification.
    pub bytes_read: u64,
    /// Distinct chunks referenced by the snapshots.
    pub chunks_referenced: u64,
    /// False when the sled index disagrees with the pack headers (`cradle index rebuild`).
    pub index_consistent: bool,
}

impl CheckReport {
    /// True when no *must* is broken: no damaged snapshot and no error finding.
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty() && !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// Findings of one severity.
    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }
}

/// Why `check` could not run at all (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The drive could not be listed or read (not damage to one object: the repository itself).
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<StorageError> for CheckError {
    fn from(e: StorageError) -> Self {
        CheckError::Repo(e.into())
    }
}

/// Checks `repo` (opened with a password) as `opts` says, reporting progress. Reads only; safe
/// alongside a writer that only adds. Returns `Err` only when the check could not run.
pub fn check(
    repo: &Repository,
    opts: &CheckOptions,
    progress: &mut dyn FnMut(CheckProgress),
) -> Result<CheckReport, CheckError> {
    let mut c = Checker {
        repo,
        locs: HashMap::new(),
        bad: HashSet::new(),
        referenced: HashSet::new(),
        report: CheckReport {
            index_consistent: true,
            ..CheckReport::default()
        },
    };
    c.keys_and_config(progress)?;
    let packs = c.packs(progress)?;
    c.read_data(opts, &packs, progress)?;
    c.snapshots(progress)?;
    c.unreferenced(&packs);
    c.debris()?;
    c.index(progress);
    c.report.chunks_referenced = c.referenced.len() as u64;
    c.report.findings.sort_by_key(|f| f.severity);
    Ok(c.report)
}

/// A file-table entry's display path.
pub fn entry_path(e: &FileEntry) -> String {
    match &e.row {
        Some(r) => format!("{}/{}", r.domain, r.relative_path),
        None => format!("(no row)/{}", hex::encode(e.file_id)),
    }
}

/// The packs `ReadData` selects, in a stable order.
pub fn select_packs(packs: &[PackId], read: ReadData) -> Vec<PackId> {
    match read {
        ReadData::None => Vec::new(),
        ReadData::All => packs.to_vec(),
        ReadData::Subset { percent, seed } => {
            if percent == 0 || packs.is_empty() {
                return Vec::new();
            }
            let pct = u64::from(percent.min(100));
            let n = ((packs.len() as u64 * pct).div_ceil(100)).max(1) as usize;
            let mut keyed: Vec<([u8; 32], PackId)> = packs
                .iter()
                .map(|p| {
                    let mut h = blake3::Hasher::new();
                    h.update(b"cradle check subset");
                    h.update(&seed.to_le_bytes());
                    h.update(p.as_bytes());
                    (*h.finalize().as_bytes(), *p)
                })
                .collect();
            keyed.sort();
            keyed.into_iter().take(n).map(|(_, p)| p).collect()
        }
    }
}

struct Checker<'a> {
    repo: &'a Repository,
    /// Every copy of every chunk, from the pack headers that check out.
    locs: HashMap<ChunkId, Vec<(PackId, BlobLoc)>>,
    /// Copies found damaged (by reading them).
    bad: HashSet<(PackId, ChunkId)>,
    referenced: HashSet<ChunkId>,
    report: CheckReport,
}

impl Checker<'_> {
    fn find(&mut self, severity: Severity, message: String) {
        self.report.findings.push(Finding { severity, message });
    }

    fn keys_and_config(
        &mut self,
        progress: &mut dyn FnMut(CheckProgress),
    ) -> Result<(), CheckError> {
        let storage = self.repo.storage().clone();
        let names = storage.list("keys")?;
        let total = names.len() as u64;
        let mut good = 0;
        let mut current_seen = false;
        for (i, n) in names.iter().enumerate() {
            progress(CheckProgress {
                phase: CheckPhase::Keys,
                done: i as u64,
                total,
            });
            let path = format!("keys/{n}");
            if n.ends_with(".tmp") {
                self.find(Severity::Info, format!("{path}: leftover temporary file"));
                continue;
            }
            let Some(id) = KeyId::from_hex(n) else {
                self.find(Severity::Warning, format!("{path}: not a key file name"));
                continue;
            };
            let bytes = match storage.read(&path, KEY_FILE_LEN) {
                Ok(b) => b,
                Err(e) => {
                    self.find(Severity::Error, format!("{path}: {e}"));
                    continue;
                }
            };
            if KeyId::of_file(&bytes) != id {
                self.find(
                    Severity::Error,
                    format!("{path}: damaged (content does not match its name)"),
                );
                continue;
            }
            if let Err(e) = keys::key_file_params(&bytes) {
                self.find(Severity::Error, format!("{path}: {e}"));
                continue;
            }
            current_seen |= id == self.repo.key_id();
            good += 1;
        }
        if !current_seen {
            self.find(
                Severity::Error,
                format!(
                    "keys/{}: the key file that opened the repository is gone",
                    self.repo.key_id()
                ),
            );
        }
        if good == 0 {
            self.find(Severity::Error, "keys/: no usable key file".into());
        }
        match storage.read(CONFIG_NAME, CONFIG_FILE_MAX) {
            Ok(b) => {
                match seal::open_file(self.repo.keys(), MAGIC_CONFIG, &[1], CONFIG_FILE_MAX, &b) {
                    Ok((_, p)) => match Config::decode(&p) {
                        Ok(c) if c == *self.repo.config() => {}
                        Ok(_) => self.find(
                            Severity::Error,
                            format!("{CONFIG_NAME}: changed since the repository was opened"),
                        ),
                        Err(e) => self.find(Severity::Error, format!("{CONFIG_NAME}: {e}")),
                    },
                    Err(e) => self.find(Severity::Error, format!("{CONFIG_NAME}: {e}")),
                }
            }
            Err(e) => self.find(Severity::Error, format!("{CONFIG_NAME}: {e}")),
        }
        Ok(())
    }

    /// Reads every pack header; returns the packs that check out with their lengths.
    fn packs(
        &mut self,
        progress: &mut dyn FnMut(CheckProgress),
    ) -> Result<Vec<(PackId, u64, Vec<ChunkId>)>, CheckError> {
        let storage = self.repo.storage().clone();
        let list = self.repo.list_packs()?;
        let total = list.len() as u64;
        let mut out = Vec::with_capacity(list.len());
        for (i, p) in list.iter().enumerate() {
            progress(CheckProgress {
                phase: CheckPhase::Packs,
                done: i as u64,
                total,
            });
            match pack::read_pack_header(storage.as_ref(), self.repo.keys(), p) {
                Ok((len, blobs)) => {
                    let ids = blobs.iter().map(|b| b.entry.id).collect();
                    for b in blobs {
                        self.locs.entry(b.entry.id).or_default().push((*p, b));
                    }
                    out.push((*p, len, ids));
                }
                Err(e) => self.find(Severity::Error, e.to_string()),
            }
        }
        self.report.packs = out.len() as u64;
        let dups = self.locs.values().filter(|v| v.len() > 1).count();
        if dups > 0 {
            self.find(
                Severity::Warning,
                format!(
                    "{dups} chunks are stored in more than one pack (prune removes the copies)"
                ),
            );
        }
        Ok(out)
    }

    fn read_data(
        &mut self,
        opts: &CheckOptions,
        packs: &[(PackId, u64, Vec<ChunkId>)],
        progress: &mut dyn FnMut(CheckProgress),
    ) -> Result<(), CheckError> {
        let ids: Vec<PackId> = packs.iter().map(|(p, _, _)| *p).collect();
        let chosen = select_packs(&ids, opts.read_data);
        let storage = self.repo.storage().clone();
        let total = chosen.len() as u64;
        for (i, p) in chosen.iter().enumerate() {
            progress(CheckProgress {
                phase: CheckPhase::ReadData,
                done: i as u64,
                total,
            });
            let path = p.path();
            let bytes = match storage.read(&path, PACK_FILE_MAX) {
                Ok(b) => b,
                Err(e) => {
                    self.find(Severity::Error, format!("pack {p}: {e}"));
                    let ids: Vec<ChunkId> = self.chunks_of(p);
                    for id in ids {
                        self.bad.insert((*p, id));
                    }
                    continue;
                }
            };
            self.report.packs_read += 1;
            self.report.bytes_read += bytes.len() as u64;
            let blobs: Vec<BlobLoc> = packs
                .iter()
                .find(|(q, _, _)| q == p)
                .map(|(_, _, ids)| {
                    ids.iter()
                        .filter_map(|id| {
                            self.locs
                                .get(id)
                                .and_then(|v| v.iter().find(|(q, _)| q == p).map(|(_, l)| *l))
                        })
                        .collect()
                })
                .unwrap_or_default();
            for b in blobs {
                let start = b.offset as usize;
                let end = start + b.entry.stored_len as usize;
                self.report.blobs_read += 1;
                let res = match bytes.get(start..end) {
                    Some(sealed) => {
                        pack::decode_blob(self.repo.keys(), &b.entry, sealed, true).map(|_| ())
                    }
                    None => Err(pack::PackProblem::Length(bytes.len() as u64)),
                };
                if let Err(e) = res {
                    self.find(Severity::Error, format!("pack {p}: {e}"));
                    self.bad.insert((*p, b.entry.id));
                }
            }
        }
        Ok(())
    }

    fn chunks_of(&self, p: &PackId) -> Vec<ChunkId> {
        self.locs
            .iter()
            .filter(|(_, v)| v.iter().any(|(q, _)| q == p))
            .map(|(id, _)| *id)
            .collect()
    }

    /// A chunk's plain length if some copy is present and not known damaged.
    fn state(&self, id: &ChunkId) -> Result<u32, String> {
        match self.locs.get(id) {
            None => Err(format!("chunk {id} is in no pack")),
            Some(v) => v
                .iter()
                .find(|(p, _)| !self.bad.contains(&(*p, *id)))
                .map(|(_, l)| l.entry.plain_len)
                .ok_or_else(|| format!("chunk {id} is damaged")),
        }
    }

    /// Reads a chunk through the pack headers (not the index), trying every copy.
    fn read_chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>, String> {
        let copies = self
            .locs
            .get(id)
            .cloned()
            .ok_or_else(|| format!("chunk {id} is in no pack"))?;
        for (p, loc) in copies {
            if self.bad.contains(&(p, *id)) {
                continue;
            }
            match pack::read_blob(
                self.repo.storage().as_ref(),
                self.repo.keys(),
                &p,
                &loc,
                true,
            ) {
                Ok(b) => return Ok(b),
                Err(e) => {
                    self.find(Severity::Error, e.to_string());
                    self.bad.insert((p, *id));
                }
            }
        }
        Err(format!("chunk {id} is damaged"))
    }

    /// The ChunkIds holding a stream's bytes (reading an indirect stream's lists), each marked
    /// referenced; the lists' own chunks are marked too.
    fn resolve(&mut self, s: &Stream) -> Result<Vec<ChunkId>, String> {
        match s.form {
            StreamForm::Direct => {
                self.referenced.extend(s.ids.iter().copied());
                Ok(s.ids.clone())
            }
            StreamForm::Indirect => {
                let mut out = Vec::new();
                let mut carry = Vec::new();
                let mut problem = None;
                for list_id in &s.ids {
                    self.referenced.insert(*list_id);
                    if problem.is_some() {
                        continue;
                    }
                    match self.read_chunk(list_id) {
                        Ok(b) => {
                            carry.extend_from_slice(&b);
                            let whole = carry.len() / 32 * 32;
                            for c in carry[..whole].chunks_exact(32) {
                                if let Some(id) = ChunkId::from_slice(c) {
                                    out.push(id);
                                }
                            }
                            carry.drain(..whole);
                        }
                        Err(e) => problem = Some(e),
                    }
                }
                self.referenced.extend(out.iter().copied());
                if let Some(p) = problem {
                    return Err(p);
                }
                if !carry.is_empty() {
                    return Err("chunk list is not a multiple of 32 bytes".into());
                }
                Ok(out)
            }
        }
    }

    /// Checks that every chunk of a stream is present (and not known damaged) and that their
    /// lengths add up. Returns the first problem.
    fn check_stream(&mut self, s: &Stream) -> Result<(), String> {
        let ids = self.resolve(s)?;
        let mut sum = 0u64;
        let mut problem = None;
        for id in &ids {
            match self.state(id) {
                Ok(n) => sum += u64::from(n),
                Err(e) => {
                    problem.get_or_insert(e);
                }
            }
        }
        if let Some(p) = problem {
            return Err(p);
        }
        if sum != s.length {
            return Err(format!(
                "its chunks hold {sum} bytes, the stream says {}",
                s.length
            ));
        }
        Ok(())
    }

    fn snapshots(&mut self, progress: &mut dyn FnMut(CheckProgress)) -> Result<(), CheckError> {
        let storage = self.repo.storage().clone();
        let mut ids = Vec::new();
        for n in storage.list("snapshots")? {
            match SnapshotId::from_hex(&n) {
                Some(id) => ids.push(id),
                None if n.ends_with(".tmp") => self.find(
                    Severity::Info,
                    format!("snapshots/{n}: leftover temporary file"),
                ),
                None => self.find(
                    Severity::Warning,
                    format!("snapshots/{n}: not a snapshot name"),
                ),
            }
        }
        let total = ids.len() as u64;
        let mut records = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            progress(CheckProgress {
                phase: CheckPhase::Snapshots,
                done: i as u64,
                total,
            });
            self.report.snapshots += 1;
            let rec = match self.repo.load_snapshot(id) {
                Ok(r) => r,
                Err(RepoError::Storage(e)) if !e.is_not_found() && !is_damage(&e) => {
                    return Err(e.into())
                }
                Err(e) => {
                    self.report.damaged.push(DamagedSnapshot {
                        id: *id,
                        udid: String::new(),
                        device_name: String::new(),
                        phone_date: None,
                        unreadable: Some(format!("record: {e}")),
                        top_files: Vec::new(),
                        files: Vec::new(),
                    });
                    continue;
                }
            };
            let mut d = DamagedSnapshot {
                id: *id,
                udid: rec.device.udid.clone(),
                device_name: rec.device.device_name.clone(),
                phone_date: Some(rec.phone_date),
                unreadable: None,
                top_files: Vec::new(),
                files: Vec::new(),
            };
            for t in &rec.top_files {
                if let Err(reason) = self.check_stream(&t.stream) {
                    d.top_files.push(DamagedFile {
                        path: t.name.clone(),
                        reason,
                    });
                }
            }
            match self.table(&rec.file_table, &mut d.files) {
                Ok((counts, bytes)) => {
                    if counts != rec.counts || bytes != rec.content_bytes {
                        self.find(
                            Severity::Warning,
                            format!(
                                "snapshot {id}: its counts ({:?}, {} bytes) differ from its file \
                                 table ({counts:?}, {bytes} bytes)",
                                rec.counts, rec.content_bytes
                            ),
                        );
                    }
                }
                Err(e) => d.unreadable = Some(format!("file table: {e}")),
            }
            if d.unreadable.is_some() || !d.top_files.is_empty() || !d.files.is_empty() {
                self.report.damaged.push(d);
            }
            records.push((*id, rec.kind, rec.digested_from));
        }
        let live: HashSet<SnapshotId> = records.iter().map(|(id, _, _)| *id).collect();
        let digested_from: HashSet<SnapshotId> = records
            .iter()
            .filter(|(_, _, f)| !f.is_zero())
            .map(|(_, _, f)| *f)
            .collect();
        for (id, kind, _) in &records {
            if *kind == SnapshotKind::Raw && digested_from.contains(id) {
                self.find(
                    Severity::Warning,
                    format!("snapshot {id}: raw record superseded by a digested one (the next writer deletes it)"),
                );
            }
        }
        // Pins.
        for n in storage.list("pins")? {
            let path = format!("pins/{n}");
            let Some(id) = SnapshotId::from_hex(&n) else {
                let sev = if n.ends_with(".tmp") {
                    Severity::Info
                } else {
                    Severity::Warning
                };
                self.find(sev, format!("{path}: not a pin"));
                continue;
            };
            let opened = storage
                .read(&path, PIN_FILE_MAX)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    seal::open_file(self.repo.keys(), MAGIC_PIN, &[1], PIN_FILE_MAX, &b)
                        .map_err(|e| e.to_string())
                })
                .and_then(|(_, p)| Pin::decode(&p).map_err(|e| e.to_string()));
            if let Err(e) = opened {
                self.find(Severity::Warning, format!("{path}: {e}"));
            } else if !live.contains(&id) {
                self.find(
                    Severity::Warning,
                    format!("{path}: pins a snapshot that no longer exists (prune removes it)"),
                );
            }
        }
        Ok(())
    }

    /// Reads a file table through the pack headers: entry codec, order, every content stream.
    /// Damaged files go to `damaged`; returns the counts and content bytes it adds up to.
    fn table(
        &mut self,
        table: &Stream,
        damaged: &mut Vec<DamagedFile>,
    ) -> Result<(Counts, u64), String> {
        self.check_stream(table)?;
        let ids = self.resolve(table)?;
        let mut counts = Counts::default();
        let mut bytes = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        let mut pos = 0usize;
        let mut last: Option<TableKey> = None;
        for id in ids {
            let chunk = self.read_chunk(&id)?;
            buf.drain(..pos);
            pos = 0;
            buf.extend_from_slice(&chunk);
            while let Some(head) = buf.get(pos..pos + 4) {
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
                if len > ENTRY_MAX {
                    return Err(format!("entry of {len} bytes is over the cap"));
                }
                let Some(body) = buf.get(pos + 4..pos + 4 + len as usize) else {
                    break;
                };
                let e = FileEntry::decode_body(body).map_err(|e| e.to_string())?;
                pos += 4 + len as usize;
                let key = e.key();
                if last
                    .as_ref()
                    .is_some_and(|l| key.cmp(l) != Ordering::Greater)
                {
                    return Err("entries out of order or repeated".into());
                }
                last = Some(key);
                self.report.files += 1;
                match (&e.row, &e.content) {
                    (None, _) => counts.orphans += 1,
                    (Some(_), Content::Absent) => counts.absent += 1,
                    (Some(r), _) => match r.flags {
                        FLAG_DIR => counts.dirs += 1,
                        FLAG_LINK => counts.links += 1,
                        _ => counts.files += 1,
                    },
                }
                if let Some(s) = e.content.stream() {
                    bytes += s.length;
                    if let Err(reason) = self.check_stream(s) {
                        damaged.push(DamagedFile {
                            path: entry_path(&e),
                            reason,
                        });
                    }
                }
            }
        }
        if pos != buf.len() {
            return Err("the table ends inside an entry".into());
        }
        Ok((counts, bytes))
    }

    fn unreferenced(&mut self, packs: &[(PackId, u64, Vec<ChunkId>)]) {
        for (p, len, ids) in packs {
            if !ids.iter().any(|id| self.referenced.contains(id)) {
                self.find(
                    Severity::Warning,
                    format!(
                        "pack {p} ({len} bytes) is not referenced by any snapshot (a backup in \
                         progress may still use it; otherwise prune removes it)"
                    ),
                );
            }
        }
    }

    fn debris(&mut self) -> Result<(), CheckError> {
        let storage = self.repo.storage().clone();
        for n in storage.list("")? {
            if n.ends_with(".tmp") {
                self.find(Severity::Info, format!("{n}: leftover temporary file"));
            }
        }
        for i in 0..=255u8 {
            let dir = format!("packs/{i:02x}");
            let names = match storage.list(&dir) {
                Ok(n) => n,
                Err(e) if e.is_not_found() => {
                    self.find(Severity::Warning, format!("{dir}: missing directory"));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for n in names {
                let ok = PackId::from_hex(&n).is_some_and(|id| id.as_bytes()[0] == i);
                if ok {
                    continue;
                }
                let sev = if n.ends_with(".tmp") {
                    Severity::Info
                } else {
                    Severity::Warning
                };
                self.find(sev, format!("{dir}/{n}: not a pack of this directory"));
            }
        }
        if storage.exists("staging")? {
            for n in storage.list("staging")? {
                let what = if SessionId::from_hex(&n).is_some() {
                    "staging session left (the next backup resumes or deletes it)"
                } else {
                    "unknown entry"
                };
                self.find(Severity::Info, format!("staging/{n}: {what}"));
            }
        }
        Ok(())
    }

    /// Compares the index (or the in-memory chunk map) with the pack headers.
    fn index(&mut self, progress: &mut dyn FnMut(CheckProgress)) {
        let total = self.locs.len() as u64;
        let mut wrong = 0u64;
        for (i, (id, copies)) in self.locs.iter().enumerate() {
            if i % 4096 == 0 {
                progress(CheckProgress {
                    phase: CheckPhase::Index,
                    done: i as u64,
                    total,
                });
            }
            let agrees = self
                .repo
                .chunk_location(id)
                .is_some_and(|l| copies.iter().any(|(p, b)| *p == l.pack && *b == l.blob));
            if !agrees {
                wrong += 1;
            }
        }
        if let Some(n) = self.repo.index_chunk_count() {
            if n as u64 != total {
                wrong += 1;
            }
        }
        if wrong > 0 {
            self.report.index_consistent = false;
            self.find(
                Severity::Warning,
                format!(
                    "the index disagrees with the pack headers ({wrong} chunks); \
                     `cradle index rebuild` rebuilds it"
                ),
            );
        }
    }
}

/// Storage errors that are damage to one object rather than the drive failing.
fn is_damage(e: &StorageError) -> bool {
    matches!(
        e,
        StorageError::TooLarge { .. } | StorageError::ShortRead { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_is_deterministic_and_sized() {
        let packs: Vec<PackId> = (0..40u8).map(|i| PackId::from_bytes([i; 32])).collect();
        let a = select_packs(
            &packs,
            ReadData::Subset {
                percent: 10,
                seed: 7,
            },
        );
        let b = select_packs(
            &packs,
            ReadData::Subset {
                percent: 10,
                seed: 7,
            },
        );
        let c = select_packs(
            &packs,
            ReadData::Subset {
                percent: 10,
                seed: 8,
            },
        );
        assert_eq!(a.len(), 4);
        assert_eq!(a, b);
        assert_ne!(a, c, "another seed picks other packs");
        assert_eq!(
            select_packs(
                &packs[..3],
                ReadData::Subset {
                    percent: 1,
                    seed: 0
                }
            )
            .len(),
            1
        );
        assert_eq!(select_packs(&packs, ReadData::All).len(), 40);
        assert!(select_packs(&packs, ReadData::None).is_empty());
    }
}
