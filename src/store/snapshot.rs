//! Snapshot records and pins (format.md §9.1, §10, §15.1): the record codec, committing a record
//! after its packs are durable, listing and loading records from the drive, pinning.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::caps::{PIN_FILE_MAX, SNAPSHOT_FILE_MAX, TOP_FILES_MAX};
use super::chunker::ChunkerParams;
use super::codec::{check_str, put_bytes, DecodeError, Reader};
use super::ids::{ChunkId, SnapshotId};
use super::repo::{RepoError, Repository};
use super::seal::{self, MAGIC_PIN, MAGIC_SNAPSHOT};
use super::stream::{Stream, StreamForm};

/// Cap of `udid`.
pub const UDID_MAX: u32 = 64;
/// Cap of `device_name`.
pub const DEVICE_NAME_MAX: u32 = 256;
/// Cap of `product_type`.
pub const PRODUCT_TYPE_MAX: u32 = 64;
/// Cap of `product_version`.
pub const PRODUCT_VERSION_MAX: u32 = 32;
/// Cap of `build_version`.
pub const BUILD_VERSION_MAX: u32 = 32;
/// Cap of `serial_number`.
pub const SERIAL_NUMBER_MAX: u32 = 64;
/// Cap of a top file's name.
pub const TOP_NAME_MAX: u32 = 64;
/// Cap of a pin's note.
pub const PIN_NOTE_MAX: u32 = 256;

/// Digested (plaintext chunks) or raw (Apple ciphertext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Data files stored as plaintext chunks.
    Digested,
    /// Data files stored as the Apple ciphertext the phone sent.
    Raw,
}

/// The Apple backup KEK kept by digested records (§9.1). Wiped on drop, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, Default)]
pub struct BackupKek(pub [u8; 32]);

impl fmt::Debug for BackupKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 == [0u8; 32] {
            "BackupKek(zero)"
        } else {
            "BackupKek(<redacted>)"
        })
    }
}

/// Facts about the device, from its Info.plist / lockdown values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// UniqueDeviceID (≤ 64 bytes).
    pub udid: String,
    /// Device name (≤ 256 bytes).
    pub device_name: String,
    /// e.g. "iPhone15,2" (≤ 64).
    pub product_type: String,
    /// iOS version, e.g. "17.5.1" (≤ 32).
    pub product_version: String,
    /// iOS build (≤ 32).
    pub build_version: String,
    /// Serial number (≤ 64).
    pub serial_number: String,
}

/// How export writes a top file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopEncoding {
    /// Bytes exactly as received (or, for Info.plist, as written by the host).
    Verbatim,
    /// Manifest.db plaintext: export re-encrypts with the ManifestKey, zero IV, PKCS#7.
    ManifestDbPlain,
    /// Raw Apple ciphertext.
    Raw,
}

impl TopEncoding {
    /// Its byte in records and journals.
    pub(super) fn code(self) -> u8 {
        match self {
            TopEncoding::Verbatim => 0,
            TopEncoding::ManifestDbPlain => 1,
            TopEncoding::Raw => 2,
        }
    }

    /// The encoding a byte names; `field` says where it was read, for the error.
    pub(super) fn from_code(v: u8, field: &'static str) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(TopEncoding::Verbatim),
            1 => Ok(TopEncoding::ManifestDbPlain),
            2 => Ok(TopEncoding::Raw),
            v => Err(DecodeError::UnknownValue {
                field,
                value: u64::from(v),
            }),
        }
    }
}

/// A file at the top of the backup folder (Info.plist, Manifest.plist, Status.plist,
/// Manifest.db, or another plain name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopFile {
    /// Plain file name (≤ 64 bytes, no `/`, not `.` or `..`).
    pub name: String,
    /// How export writes it.
    pub encoding: TopEncoding,
    /// Its bytes.
    pub stream: Stream,
}

/// Whether `name` is acceptable as a top file name: a single plain component.
pub fn is_valid_top_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOP_NAME_MAX as usize
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

/// Entry counts of a file table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Rows with flags 1.
    pub files: u64,
    /// Rows with flags 2.
    pub dirs: u64,
    /// Rows with flags 4.
    pub links: u64,
    /// Rows whose data file was absent.
    pub absent: u64,
    /// Entries without a row.
    pub orphans: u64,
}

impl Counts {
    /// Files as a person counts them: file rows (absent ones too) and data files without a row
    /// (every data file of a raw snapshot).
    pub fn all_files(&self) -> u64 {
        self.files + self.absent + self.orphans
    }
}

/// A snapshot record's payload (§9.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Digested or raw.
    pub kind: SnapshotKind,
    /// The device.
    pub device: DeviceInfo,
    /// Status.plist `Date`: the phone's clock; used by retention.
    pub phone_date: i64,
    /// Box clock when the session began.
    pub box_started: i64,
    /// Box clock at commit.
    pub box_finished: i64,
    /// Whether the box clock was NTP-synchronized.
    pub box_clock_synced: bool,
    /// Status.plist `IsFullBackup`.
    pub is_full_backup: bool,
    /// Snapshot the session's working tree started from, or zero.
    pub parent: SnapshotId,
    /// For a digested record made from a raw one, the raw one's id; else zero.
    pub digested_from: SnapshotId,
    /// Digested: the Apple backup KEK; raw: zero.
    pub backup_kek: BackupKek,
    /// Data chunker sizes at ingest (informational).
    pub chunker_used: ChunkerParams,
    /// Top-level files (≤ 16).
    pub top_files: Vec<TopFile>,
    /// File table counts.
    pub counts: Counts,
    /// Sum of content stream lengths.
    pub content_bytes: u64,
    /// The file table (meta chunks).
    pub file_table: Stream,
}

impl SnapshotRecord {
    /// Encodes the payload, checking every cap first.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let d = &self.device;
        for (s, cap, field) in [
            (&d.udid, UDID_MAX, "udid"),
            (&d.device_name, DEVICE_NAME_MAX, "device_name"),
            (&d.product_type, PRODUCT_TYPE_MAX, "product_type"),
            (&d.product_version, PRODUCT_VERSION_MAX, "product_version"),
            (&d.build_version, BUILD_VERSION_MAX, "build_version"),
            (&d.serial_number, SERIAL_NUMBER_MAX, "serial_number"),
        ] {
            check_str(s, cap, field)?;
        }
        if self.top_files.len() > usize::from(TOP_FILES_MAX) {
            return Err(DecodeError::TooLong {
                field: "top_count",
                len: self.top_files.len() as u64,
                cap: u64::from(TOP_FILES_MAX),
            });
        }
        if self.kind == SnapshotKind::Raw && self.backup_kek.0 != [0u8; 32] {
            return Err(DecodeError::Invalid("a raw record keeps no backup KEK"));
        }
        let mut b = Vec::with_capacity(512);
        b.push(match self.kind {
            SnapshotKind::Digested => 1,
            SnapshotKind::Raw => 2,
        });
        b.extend_from_slice(&[0, 0, 0]);
        for s in [
            &d.udid,
            &d.device_name,
            &d.product_type,
            &d.product_version,
            &d.build_version,
            &d.serial_number,
        ] {
            put_bytes(&mut b, s.as_bytes());
        }
        for t in [self.phone_date, self.box_started, self.box_finished] {
            b.extend_from_slice(&t.to_le_bytes());
        }
        b.push(u8::from(self.box_clock_synced));
        b.push(u8::from(self.is_full_backup));
        b.extend_from_slice(self.parent.as_bytes());
        b.extend_from_slice(self.digested_from.as_bytes());
        b.extend_from_slice(&self.backup_kek.0);
        for v in [
            self.chunker_used.min,
            self.chunker_used.avg,
            self.chunker_used.max,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.top_files.len() as u16).to_le_bytes());
        for t in &self.top_files {
            if !is_valid_top_name(&t.name) {
                return Err(DecodeError::Invalid("top file name"));
            }
            put_bytes(&mut b, t.name.as_bytes());
            b.push(t.encoding.code());
            t.stream.encode(&mut b);
        }
        let c = &self.counts;
        for v in [
            c.files,
            c.dirs,
            c.links,
            c.absent,
            c.orphans,
            self.content_bytes,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        self.file_table.encode(&mut b);
        Ok(b)
    }

    /// Decodes and validates a payload.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let kind = match r.u8("kind")? {
            1 => SnapshotKind::Digested,
            2 => SnapshotKind::Raw,
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "kind",
                    value: u64::from(v),
                })
            }
        };
        r.reserved(3, "reserved")?;
        let device = DeviceInfo {
            udid: r.str(UDID_MAX, "udid")?.to_string(),
            device_name: r.str(DEVICE_NAME_MAX, "device_name")?.to_string(),
            product_type: r.str(PRODUCT_TYPE_MAX, "product_type")?.to_string(),
            product_version: r.str(PRODUCT_VERSION_MAX, "product_version")?.to_string(),
            build_version: r.str(BUILD_VERSION_MAX, "build_version")?.to_string(),
            serial_number: r.str(SERIAL_NUMBER_MAX, "serial_number")?.to_string(),
        };
        let phone_date = r.i64("phone_date")?;
        let box_started = r.i64("box_started")?;
        let box_finished = r.i64("box_finished")?;
        let box_clock_synced = r.bool("box_clock")?;
        let is_full_backup = r.bool("is_full_backup")?;
        let parent = SnapshotId::from_bytes(r.array("parent")?);
        let digested_from = SnapshotId::from_bytes(r.array("digested_from")?);
        let backup_kek = BackupKek(r.array("backup_kek")?);
        if kind == SnapshotKind::Raw && backup_kek.0 != [0u8; 32] {
            return Err(DecodeError::Invalid("a raw record keeps no backup KEK"));
        }
        let chunker_used = ChunkerParams {
            min: r.u32("chunker_used")?,
            avg: r.u32("chunker_used")?,
            max: r.u32("chunker_used")?,
        };
        let top_count = r.u16("top_count")?;
        if top_count > TOP_FILES_MAX {
            return Err(DecodeError::TooLong {
                field: "top_count",
                len: u64::from(top_count),
                cap: u64::from(TOP_FILES_MAX),
            });
        }
        let mut top_files = Vec::with_capacity(usize::from(top_count));
        for _ in 0..top_count {
            let name = r.str(TOP_NAME_MAX, "top file name")?;
            if !is_valid_top_name(name) {
                return Err(DecodeError::Invalid("top file name"));
            }
            let encoding = TopEncoding::from_code(r.u8("top file encoding")?, "top file encoding")?;
            let stream = Stream::decode(&mut r)?;
            top_files.push(TopFile {
                name: name.to_string(),
                encoding,
                stream,
            });
        }
        let counts = Counts {
            files: r.u64("counts")?,
            dirs: r.u64("counts")?,
            links: r.u64("counts")?,
            absent: r.u64("counts")?,
            orphans: r.u64("counts")?,
        };
        let content_bytes = r.u64("content_bytes")?;
        let file_table = Stream::decode(&mut r)?;
        r.finish()?;
        Ok(SnapshotRecord {
            kind,
            device,
            phone_date,
            box_started,
            box_finished,
            box_clock_synced,
            is_full_backup,
            parent,
            digested_from,
            backup_kek,
            chunker_used,
            top_files,
            counts,
            content_bytes,
            file_table,
        })
    }

    /// The top file called `name`.
    pub fn top(&self, name: &str) -> Option<&TopFile> {
        self.top_files.iter().find(|t| t.name == name)
    }

    /// The ChunkIds the record lists directly (top streams and the table), for durability checks.
    pub fn listed_chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.top_files
            .iter()
            .flat_map(|t| t.stream.ids.iter())
            .chain(self.file_table.ids.iter())
    }
}

/// A pin (§10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// When it was pinned (ms).
    pub pinned_at: i64,
    /// Free text (≤ 256 bytes).
    pub note: String,
}

impl Pin {
    /// Encodes `pinned_at time || note str`.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        check_str(&self.note, PIN_NOTE_MAX, "note")?;
        let mut b = self.pinned_at.to_le_bytes().to_vec();
        put_bytes(&mut b, self.note.as_bytes());
        Ok(b)
    }

    /// Decodes a pin payload.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let pinned_at = r.i64("pinned_at")?;
        let note = r.str(PIN_NOTE_MAX, "note")?.to_string();
        r.finish()?;
        Ok(Pin { pinned_at, note })
    }
}

/// A sealed record ready to be written; its id is known before it exists, so a journal can
/// name it first (`Committing{id}`, §12).
#[derive(Debug)]
pub struct PreparedSnapshot {
    /// The record's SnapshotId (BLAKE3 of `bytes`).
    pub id: SnapshotId,
    bytes: Vec<u8>,
}

/// The records found on the drive, as readers show them.
#[derive(Debug, Default)]
pub struct SnapshotListing {
    /// Readable records, ordered by (udid, phone_date, id).
    pub snapshots: Vec<(SnapshotId, SnapshotRecord)>,
    /// Raw records superseded by a digested one (hidden; the next writer deletes them).
    pub superseded_raw: Vec<SnapshotId>,
    /// Records that could not be read, with the reason.
    pub damaged: Vec<(SnapshotId, RepoError)>,
}

fn snapshot_path(id: &SnapshotId) -> String {
    format!("snapshots/{id}")
}

fn pin_path(id: &SnapshotId) -> String {
    format!("pins/{id}")
}

fn decode_err(path: String) -> impl FnOnce(DecodeError) -> RepoError {
    move |source| RepoError::Decode { path, source }
}

fn seal_err(path: String) -> impl FnOnce(seal::SealError) -> RepoError {
    move |source| RepoError::Seal { path, source }
}

impl Repository {
    /// Makes every chunk durable (`flush`), checks that the record lists only chunks in existing
    /// packs, and seals it. Step 4's first half of §15.1; `write_snapshot` is the second.
    pub fn prepare_snapshot(
        &mut self,
        record: &SnapshotRecord,
    ) -> Result<PreparedSnapshot, RepoError> {
        self.flush()?;
        for id in record.listed_chunks() {
            if self.chunk_location(id).is_none() {
                return Err(RepoError::ChunkMissing(*id));
            }
        }
        for s in record
            .top_files
            .iter()
            .map(|t| &t.stream)
            .chain([&record.file_table])
        {
            if s.form == StreamForm::Indirect {
                self.check_indirect(s)?;
            }
        }
        let payload = record
            .encode()
            .map_err(decode_err("snapshot record".into()))?;
        let bytes = seal::seal_file(self.keys(), MAGIC_SNAPSHOT, 1, &payload);
        if bytes.len() as u64 > SNAPSHOT_FILE_MAX {
            return Err(RepoError::Decode {
                path: "snapshot record".into(),
                source: DecodeError::TooLong {
                    field: "snapshot file",
                    len: bytes.len() as u64,
                    cap: SNAPSHOT_FILE_MAX,
                },
            });
        }
        Ok(PreparedSnapshot {
            id: SnapshotId::of_file(&bytes),
            bytes,
        })
    }

    /// Checks that every chunk an indirect stream's list names is stored.
    pub(crate) fn check_indirect(&self, s: &Stream) -> Result<(), RepoError> {
        for list_id in &s.ids {
            let list = self.read_chunk(list_id)?;
            for c in list.chunks(32) {
                let id = ChunkId::from_slice(c).ok_or(RepoError::BadStream(
                    "chunk list is not a multiple of 32 bytes",
                ))?;
                if self.chunk_location(&id).is_none() {
                    return Err(RepoError::ChunkMissing(id));
                }
            }
        }
        Ok(())
    }

    /// Writes a prepared record: `snapshots/<id>.tmp`, fsync, rename, fsync `snapshots/`. The
    /// snapshot exists once this returns.
    pub fn write_snapshot(&mut self, prepared: PreparedSnapshot) -> Result<SnapshotId, RepoError> {
        self.storage()
            .create(&snapshot_path(&prepared.id), &prepared.bytes)?;
        if let Ok(r) = seal::open_file(
            self.keys(),
            MAGIC_SNAPSHOT,
            &[1],
            SNAPSHOT_FILE_MAX,
            &prepared.bytes,
        )
        .map_err(|_| ())
        .and_then(|(_, p)| SnapshotRecord::decode(&p).map_err(|_| ()))
        {
            self.index_committed(&prepared.id, &r);
        }
        Ok(prepared.id)
    }

    /// `prepare_snapshot` then `write_snapshot`, for callers without a journal.
    pub fn commit_snapshot(&mut self, record: &SnapshotRecord) -> Result<SnapshotId, RepoError> {
        let p = self.prepare_snapshot(record)?;
        self.write_snapshot(p)
    }

    /// Every SnapshotId under `snapshots/` on the drive (temporary files ignored), sorted.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotId>, RepoError> {
        Ok(self
            .storage()
            .list("snapshots")?
            .iter()
            .filter_map(|n| SnapshotId::from_hex(n))
            .collect())
    }

    /// Loads a record: checks that the file hashes to its name, unseals and decodes it.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<SnapshotRecord, RepoError> {
        let path = snapshot_path(id);
        let bytes = self.storage().read(&path, SNAPSHOT_FILE_MAX)?;
        if SnapshotId::of_file(&bytes) != *id {
            return Err(RepoError::NameMismatch(path));
        }
        let (_, payload) =
            seal::open_file(self.keys(), MAGIC_SNAPSHOT, &[1], SNAPSHOT_FILE_MAX, &bytes)
                .map_err(seal_err(path.clone()))?;
        SnapshotRecord::decode(&payload).map_err(decode_err(path))
    }

    /// Loads every record on the drive, hiding raw records superseded by a digested one (§9.4)
    /// and setting aside those that cannot be read.
    pub fn snapshot_listing(&self) -> Result<SnapshotListing, RepoError> {
        let mut out = SnapshotListing::default();
        for id in self.list_snapshots()? {
            match self.load_snapshot(&id) {
                Ok(r) => out.snapshots.push((id, r)),
                Err(RepoError::Storage(e)) if !e.is_not_found() => return Err(e.into()),
                Err(e) => out.damaged.push((id, e)),
            }
        }
        let superseded: std::collections::HashSet<SnapshotId> = out
            .snapshots
            .iter()
            .filter(|(_, r)| !r.digested_from.is_zero())
            .map(|(_, r)| r.digested_from)
            .collect();
        out.snapshots.retain(|(id, r)| {
            let hide = r.kind == SnapshotKind::Raw && superseded.contains(id);
            if hide {
                out.superseded_raw.push(*id);
            }
            !hide
        });
        out.snapshots.sort_by(|(ia, a), (ib, b)| {
            (&a.device.udid, a.phone_date, ia).cmp(&(&b.device.udid, b.phone_date, ib))
        });
        Ok(out)
    }

    /// The readable records as commands show them and as a backup picks its parent: raw records
    /// superseded by a digested one hidden (§9.4), damaged ones skipped with a warning, oldest
    /// first by (`box_finished`, `phone_date`, id). Drive errors other than a vanished file fail.
    pub fn snapshots_oldest_first(&self) -> Result<Vec<(SnapshotId, SnapshotRecord)>, RepoError> {
        let listing = self.snapshot_listing()?;
        for (id, e) in &listing.damaged {
            tracing::warn!(snapshot = %id, error = %e, "skipping an unreadable snapshot record");
        }
        let mut out = listing.snapshots;
        out.sort_by_key(|(id, r)| (r.box_finished, r.phone_date, *id));
        Ok(out)
    }

    /// Pins an existing snapshot (creates `pins/<id>`); pinning twice keeps the first pin.
    pub fn pin(&mut self, id: &SnapshotId, pin: &Pin) -> Result<(), RepoError> {
        if !self.storage().exists(&snapshot_path(id))? {
            return Err(RepoError::Storage(super::storage::StorageError::NotFound {
                path: snapshot_path(id),
            }));
        }
        if self.storage().exists(&pin_path(id))? {
            return Ok(());
        }
        let payload = pin.encode().map_err(decode_err(pin_path(id)))?;
        let bytes = seal::seal_file(self.keys(), MAGIC_PIN, 1, &payload);
        self.storage().create(&pin_path(id), &bytes)?;
        Ok(())
    }

    /// Removes a pin (deletes `pins/<id>` and fsyncs `pins/`); absent pins are fine.
    pub fn unpin(&mut self, id: &SnapshotId) -> Result<(), RepoError> {
        match self.storage().delete(&pin_path(id)) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.storage().sync_dir("pins")?;
        Ok(())
    }

    /// Every readable pin, by SnapshotId (a pin whose snapshot is gone is still listed; `check`
    /// reports it).
    pub fn list_pins(&self) -> Result<Vec<(SnapshotId, Pin)>, RepoError> {
        let mut out = Vec::new();
        for n in self.storage().list("pins")? {
            let Some(id) = SnapshotId::from_hex(&n) else {
                continue;
            };
            let path = pin_path(&id);
            let bytes = self.storage().read(&path, PIN_FILE_MAX)?;
            let (_, payload) = seal::open_file(self.keys(), MAGIC_PIN, &[1], PIN_FILE_MAX, &bytes)
                .map_err(seal_err(path.clone()))?;
            out.push((id, Pin::decode(&payload).map_err(decode_err(path))?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ids::ChunkId;

    pub(crate) fn sample() -> SnapshotRecord {
        SnapshotRecord {
            kind: SnapshotKind::Digested,
            device: DeviceInfo {
                udid: "00008110-000A1B2C3D4E5F60".into(),
                device_name: "Ann’s iPhone".into(),
                product_type: "iPhone15,2".into(),
                product_version: "17.5.1".into(),
                build_version: "21F90".into(),
                serial_number: "F2LXX0XXXX".into(),
            },
            phone_date: 1_700_000_000_000,
            box_started: 1_700_000_001_000,
            box_finished: 1_700_000_100_000,
            box_clock_synced: true,
            is_full_backup: false,
            parent: SnapshotId::from_bytes([1; 32]),
            digested_from: SnapshotId::ZERO,
            backup_kek: BackupKek([7; 32]),
            chunker_used: ChunkerParams::DATA_DEFAULT,
            top_files: vec![TopFile {
                name: "Manifest.plist".into(),
                encoding: TopEncoding::Verbatim,
                stream: Stream {
                    length: 10,
                    form: StreamForm::Direct,
                    ids: vec![ChunkId::from_bytes([2; 32])],
                },
            }],
            counts: Counts {
                files: 3,
                dirs: 2,
                links: 1,
                absent: 0,
                orphans: 0,
            },
            content_bytes: 1234,
            file_table: Stream::empty(),
        }
    }

    #[test]
    fn record_round_trip() {
        let r = sample();
        let b = r.encode().unwrap();
        assert_eq!(SnapshotRecord::decode(&b).unwrap(), r);
        assert!(
            !format!("{r:?}").contains("7, 7"),
            "KEK must not show in Debug"
        );
    }

    #[test]
    fn record_rejections() {
        let r = sample();
        let b = r.encode().unwrap();
        let mut bad = b.clone();
        bad[0] = 3;
        assert!(matches!(
            SnapshotRecord::decode(&bad),
            Err(DecodeError::UnknownValue { .. })
        ));
        let mut bad = b.clone();
        bad[2] = 1;
        assert!(matches!(
            SnapshotRecord::decode(&bad),
            Err(DecodeError::Reserved { .. })
        ));
        let mut long = b.clone();
        long.push(0);
        assert_eq!(SnapshotRecord::decode(&long), Err(DecodeError::Trailing(1)));
        for n in 0..b.len() {
            assert!(SnapshotRecord::decode(&b[..n]).is_err(), "prefix {n}");
        }
        // Caps are checked when encoding too.
        let mut big = sample();
        big.device.udid = "x".repeat(65);
        assert!(big.encode().is_err());
        let mut many = sample();
        many.top_files = vec![many.top_files[0].clone(); 17];
        assert!(many.encode().is_err());
        let mut slash = sample();
        slash.top_files[0].name = "../Manifest.db".into();
        assert!(slash.encode().is_err());
        let mut raw = sample();
        raw.kind = SnapshotKind::Raw;
        assert!(raw.encode().is_err(), "raw record with a KEK");
        raw.backup_kek = BackupKek::default();
        assert_eq!(SnapshotRecord::decode(&raw.encode().unwrap()).unwrap(), raw);
    }

    #[test]
    fn pin_codec() {
        let p = Pin {
            pinned_at: 5,
            note: "before iOS 18".into(),
        };
        assert_eq!(Pin::decode(&p.encode().unwrap()).unwrap(), p);
        let long = Pin {
            pinned_at: 5,
            note: "n".repeat(257),
        };
        assert!(long.encode().is_err());
    }
}
