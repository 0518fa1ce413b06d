//! Snapshot records and file-table entries (format.md §9): their byte layouts, and committing,
//! listing and loading records in `snapshots/` (§15.1 step 4, §15.2).

use zeroize::Zeroizing;

use super::caps::{ENTRY_MAX, SNAPSHOT_FILE_MAX, TOP_FILES_MAX};
use super::codec::{check_str, put_bytes, DecodeError, Reader};
use super::ids::SnapshotId;
use super::repo::{RepoError, Repository};
use super::seal::{self, MAGIC_SNAPSHOT};
use super::stream::Stream;

/// Layout version of snapshot records.
pub const SNAPSHOT_VERSION: u16 = 1;
/// Longest MBFile blob kept in an entry.
pub const MBFILE_MAX: u32 = 128 * 1024;

/// Digested or raw (§1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Data files stored as plaintext chunks.
    Digested,
    /// Data files stored as the Apple ciphertext the phone sent.
    Raw,
}

/// How a top file is stored (§9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopEncoding {
    /// The bytes as received (plists).
    Verbatim,
    /// Manifest.db plaintext: export re-encrypts with the ManifestKey.
    ManifestDbPlain,
    /// Apple ciphertext as received.
    Raw,
}

/// One top-level file of the backup folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopFile {
    /// File name (Info.plist, Manifest.plist, Status.plist, Manifest.db, …).
    pub name: String,
    /// How its stream is to be exported.
    pub encoding: TopEncoding,
    /// Its bytes.
    pub stream: Stream,
}

/// The counts of a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub links: u64,
    /// File rows whose data file was not in the folder.
    pub absent: u64,
    /// Data files without a row.
    pub orphans: u64,
}

/// A snapshot record's payload (§9.1).
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub kind: SnapshotKind,
    pub udid: String,
    pub device_name: String,
    pub product_type: String,
    pub product_version: String,
    pub build_version: String,
    pub serial_number: String,
    pub phone_date: i64,
    pub box_started: i64,
    pub box_finished: i64,
    pub box_clock: bool,
    pub is_full_backup: bool,
    pub parent: SnapshotId,
    pub digested_from: SnapshotId,
    /// The Apple backup KEK (digested), zero for raw records. Secret.
    pub backup_kek: Zeroizing<[u8; 32]>,
    pub chunker_used: [u32; 3],
    pub tops: Vec<TopFile>,
    pub counts: Counts,
    pub content_bytes: u64,
    pub file_table: Stream,
}

impl std::fmt::Debug for SnapshotRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotRecord")
            .field("kind", &self.kind)
            .field("udid", &self.udid)
            .field("phone_date", &self.phone_date)
            .field("parent", &self.parent)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

impl SnapshotRecord {
    /// The payload bytes.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        for (s, cap, f) in [
            (&self.udid, 64, "udid"),
            (&self.device_name, 256, "device_name"),
            (&self.product_type, 64, "product_type"),
            (&self.product_version, 32, "product_version"),
            (&self.build_version, 32, "build_version"),
            (&self.serial_number, 64, "serial_number"),
        ] {
            check_str(s, cap, f)?;
        }
        if self.tops.len() > TOP_FILES_MAX as usize {
            return Err(DecodeError::Invalid("too many top files"));
        }
        let mut o = Vec::with_capacity(1024);
        o.push(match self.kind {
            SnapshotKind::Digested => 1,
            SnapshotKind::Raw => 2,
        });
        o.extend_from_slice(&[0; 3]);
        for s in [
            &self.udid,
            &self.device_name,
            &self.product_type,
            &self.product_version,
            &self.build_version,
            &self.serial_number,
        ] {
            put_str(&mut o, s);
        }
        for t in [self.phone_date, self.box_started, self.box_finished] {
            o.extend_from_slice(&t.to_le_bytes());
        }
        o.push(u8::from(self.box_clock));
        o.push(u8::from(self.is_full_backup));
        o.extend_from_slice(self.parent.as_bytes());
        o.extend_from_slice(self.digested_from.as_bytes());
        o.extend_from_slice(&self.backup_kek[..]);
        for c in self.chunker_used {
            o.extend_from_slice(&c.to_le_bytes());
        }
        o.extend_from_slice(&(self.tops.len() as u16).to_le_bytes());
        for t in &self.tops {
            check_str(&t.name, 64, "top file name")?;
            put_str(&mut o, &t.name);
            o.push(match t.encoding {
                TopEncoding::Verbatim => 0,
                TopEncoding::ManifestDbPlain => 1,
                TopEncoding::Raw => 2,
            });
            t.stream.encode(&mut o);
        }
        let c = &self.counts;
        for n in [
            c.files,
            c.dirs,
            c.links,
            c.absent,
            c.orphans,
            self.content_bytes,
        ] {
            o.extend_from_slice(&n.to_le_bytes());
        }
        self.file_table.encode(&mut o);
        Ok(o)
    }

    /// Parses a payload; no trailing bytes.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let kind = match r.u8("snapshot kind")? {
            1 => SnapshotKind::Digested,
            2 => SnapshotKind::Raw,
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "snapshot kind",
                    value: u64::from(v),
                })
            }
        };
        r.reserved(3, "snapshot reserved")?;
        let udid = r.str(64, "udid")?.to_string();
        let device_name = r.str(256, "device_name")?.to_string();
        let product_type = r.str(64, "product_type")?.to_string();
        let product_version = r.str(32, "product_version")?.to_string();
        let build_version = r.str(32, "build_version")?.to_string();
        let serial_number = r.str(64, "serial_number")?.to_string();
        let phone_date = r.i64("phone_date")?;
        let box_started = r.i64("box_started")?;
        let box_finished = r.i64("box_finished")?;
        let box_clock = r.bool("box_clock")?;
        let is_full_backup = r.bool("is_full_backup")?;
        let parent = SnapshotId::from_bytes(r.array("parent")?);
        let digested_from = SnapshotId::from_bytes(r.array("digested_from")?);
        let backup_kek = Zeroizing::new(r.array::<32>("backup_kek")?);
        let chunker_used = [r.u32("chunker")?, r.u32("chunker")?, r.u32("chunker")?];
        let n = r.u16("top_count")?;
        if n > TOP_FILES_MAX {
            return Err(DecodeError::TooLong {
                field: "top_count",
                len: u64::from(n),
                cap: u64::from(TOP_FILES_MAX),
            });
        }
        let mut tops = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let name = r.str(64, "top file name")?.to_string();
            let encoding = match r.u8("top encoding")? {
                0 => TopEncoding::Verbatim,
                1 => TopEncoding::ManifestDbPlain,
                2 => TopEncoding::Raw,
                v => {
                    return Err(DecodeError::UnknownValue {
                        field: "top encoding",
                        value: u64::from(v),
                    })
                }
            };
            let stream = Stream::decode(&mut r)?;
            tops.push(TopFile {
                name,
                encoding,
                stream,
            });
        }
        let counts = Counts {
            files: r.u64("files")?,
            dirs: r.u64("dirs")?,
            links: r.u64("links")?,
            absent: r.u64("absent")?,
            orphans: r.u64("orphans")?,
        };
        let content_bytes = r.u64("content_bytes")?;
        let file_table = Stream::decode(&mut r)?;
        r.finish()?;
        Ok(SnapshotRecord {
            kind,
            udid,
            device_name,
            product_type,
            product_version,
            build_version,
            serial_number,
            phone_date,
            box_started,
            box_finished,
            box_clock,
            is_full_backup,
            parent,
            digested_from,
            backup_kek,
            chunker_used,
            tops,
            counts,
            content_bytes,
            file_table,
        })
    }

    /// The top file called `name`.
    pub fn top(&self, name: &str) -> Option<&TopFile> {
        self.tops.iter().find(|t| t.name == name)
    }
}

/// A Manifest.db row kept in an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    /// `flags` column: 1 file, 2 directory, 4 symlink.
    pub flags: u32,
    pub domain: String,
    pub relative_path: String,
    /// The `file` column verbatim (NSKeyedArchiver MBFile).
    pub mbfile: Vec<u8>,
}

/// What an entry holds (§9.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Directories, links.
    None,
    /// Plaintext chunks; export re-encrypts with the file's key.
    Plain(Stream),
    /// Apple ciphertext as received.
    Raw(Stream),
    /// A file row whose data file was not in the folder.
    Absent,
}

/// One file-table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The fileID (SHA-1 of "domain-relativePath"), or the data file's name.
    pub file_id: [u8; 20],
    pub row: Option<EntryRow>,
    pub content: Content,
}

impl FileEntry {
    /// The fileID as lower-case hex.
    pub fn file_id_hex(&self) -> String {
        hex::encode(self.file_id)
    }

    /// The stream of its data file, if any.
    pub fn stream(&self) -> Option<&Stream> {
        match &self.content {
            Content::Plain(s) | Content::Raw(s) => Some(s),
            _ => None,
        }
    }

    /// Appends `entry_len u32 || entry`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.file_id);
        match &self.row {
            Some(r) => {
                check_str(&r.domain, 1024, "domain")?;
                check_str(&r.relative_path, 4096, "relative_path")?;
                if r.mbfile.len() > MBFILE_MAX as usize {
                    return Err(DecodeError::TooLong {
                        field: "mbfile",
                        len: r.mbfile.len() as u64,
                        cap: u64::from(MBFILE_MAX),
                    });
                }
                out.push(1);
                out.extend_from_slice(&r.flags.to_le_bytes());
                put_str(out, &r.domain);
                put_str(out, &r.relative_path);
                put_bytes(out, &r.mbfile);
            }
            None => out.push(0),
        }
        match &self.content {
            Content::None => out.push(0),
            Content::Plain(s) => {
                out.push(1);
                s.encode(out);
            }
            Content::Raw(s) => {
                out.push(2);
                s.encode(out);
            }
            Content::Absent => out.push(3),
        }
        let len = out.len() - start - 4;
        if len > ENTRY_MAX as usize {
            return Err(DecodeError::TooLong {
                field: "entry",
                len: len as u64,
                cap: u64::from(ENTRY_MAX),
            });
        }
        out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }

    /// Parses one entry body (after its length field).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let file_id = r.array::<20>("file_id")?;
        let row = match r.u8("row")? {
            0 => None,
            1 => Some(EntryRow {
                flags: r.u32("flags")?,
                domain: r.str(1024, "domain")?.to_string(),
                relative_path: r.str(4096, "relative_path")?.to_string(),
                mbfile: r.bytes(MBFILE_MAX, "mbfile")?.to_vec(),
            }),
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "row",
                    value: u64::from(v),
                })
            }
        };
        let content = match r.u8("content")? {
            0 => Content::None,
            1 => Content::Plain(Stream::decode(&mut r)?),
            2 => Content::Raw(Stream::decode(&mut r)?),
            3 => Content::Absent,
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "content",
                    value: u64::from(v),
                })
            }
        };
        r.finish()?;
        Ok(FileEntry {
            file_id,
            row,
            content,
        })
    }

    /// The table order (§9.3): rows by (domain, relative_path), then row-less by file_id.
    pub fn order_key(&self) -> (u8, &[u8], &[u8], &[u8]) {
        match &self.row {
            Some(r) => (0, r.domain.as_bytes(), r.relative_path.as_bytes(), &[]),
            None => (1, &[], &[], &self.file_id),
        }
    }
}

/// Encodes a table from entries already in table order; refuses disorder and duplicates.
pub fn encode_table(entries: &[FileEntry]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 && entries[i - 1].order_key() >= e.order_key() {
            return Err(DecodeError::Invalid("file table out of order"));
        }
        if !seen.insert(e.file_id) {
            return Err(DecodeError::Invalid("fileID twice in a file table"));
        }
        e.encode(&mut out)?;
    }
    Ok(out)
}

/// Decodes a whole table, checking order and uniqueness.
pub fn decode_table(b: &[u8]) -> Result<Vec<FileEntry>, DecodeError> {
    let mut r = Reader::new(b);
    let mut out: Vec<FileEntry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while r.remaining() > 0 {
        let body = r.bytes(ENTRY_MAX, "entry")?;
        let e = FileEntry::decode(body)?;
        if out.last().is_some_and(|p| p.order_key() >= e.order_key()) {
            return Err(DecodeError::Invalid("file table out of order"));
        }
        if !seen.insert(e.file_id) {
            return Err(DecodeError::Invalid("fileID twice in a file table"));
        }
        out.push(e);
    }
    Ok(out)
}

/// Why a record could not be committed or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A record or table is malformed.
    #[error("{path}: {source}")]
    Decode {
        path: String,
        #[source]
        source: DecodeError,
    },
    /// A record does not unseal or hash to its name.
    #[error("{path}: {reason}")]
    Damaged { path: String, reason: String },
}

/// Seals `record`, names it by its hash and writes it under `snapshots/` (temporary name,
/// fsync, rename, directory fsync). Returns its id and the sealed bytes' id before writing via
/// `before_write` (the caller journals `Committing{id}` there).
pub fn commit_record(
    repo: &Repository,
    record: &SnapshotRecord,
    before_write: &mut dyn FnMut(&SnapshotId) -> Result<(), RecordError>,
) -> Result<SnapshotId, RecordError> {
    let payload = record.encode().map_err(|source| RecordError::Decode {
        path: "snapshot record".into(),
        source,
    })?;
    let sealed = seal::seal_file(repo.keys(), MAGIC_SNAPSHOT, SNAPSHOT_VERSION, &payload);
    let id = SnapshotId::of_file(&sealed);
    before_write(&id)?;
    let path = format!("snapshots/{id}");
    repo.storage()
        .create(&path, &sealed)
        .map_err(RepoError::from)?;
    Ok(id)
}

/// Every SnapshotId named in `snapshots/` (drive first, §15.2), sorted.
pub fn list_ids(repo: &Repository) -> Result<Vec<SnapshotId>, RecordError> {
    let mut ids: Vec<SnapshotId> = repo
        .storage()
        .list("snapshots")
        .map_err(RepoError::from)?
        .iter()
        .filter_map(|n| SnapshotId::from_hex(n))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Reads, checks (hash = name, tag, layout) and decodes one record.
pub fn load_record(repo: &Repository, id: &SnapshotId) -> Result<SnapshotRecord, RecordError> {
    let path = format!("snapshots/{id}");
    let bytes = repo
        .storage()
        .read(&path, SNAPSHOT_FILE_MAX)
        .map_err(RepoError::from)?;
    if SnapshotId::of_file(&bytes) != *id {
        return Err(RecordError::Damaged {
            path,
            reason: "its content does not hash to its name".into(),
        });
    }
    let (_, payload) = seal::open_file(
        repo.keys(),
        MAGIC_SNAPSHOT,
        &[SNAPSHOT_VERSION],
        SNAPSHOT_FILE_MAX,
        &bytes,
    )
    .map_err(|e| RecordError::Damaged {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    SnapshotRecord::decode(&payload).map_err(|source| RecordError::Decode { path, source })
}

/// Every readable record, oldest `phone_date` first (raw records superseded by a digested one
/// are hidden, §9.4).
pub fn list_records(repo: &Repository) -> Result<Vec<(SnapshotId, SnapshotRecord)>, RecordError> {
    let mut out = Vec::new();
    for id in list_ids(repo)? {
        match load_record(repo, &id) {
            Ok(r) => out.push((id, r)),
            Err(RecordError::Repo(e)) => return Err(RecordError::Repo(e)),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable snapshot record"),
        }
    }
    let superseded: std::collections::HashSet<SnapshotId> = out
        .iter()
        .filter(|(_, r)| !r.digested_from.is_zero())
        .map(|(_, r)| r.digested_from)
        .collect();
    out.retain(|(id, _)| !superseded.contains(id));
    out.sort_by_key(|(id, r)| (r.box_finished, r.phone_date, *id));
    Ok(out)
}

/// A record's file table, read and decoded.
pub fn load_table(
    repo: &Repository,
    record: &SnapshotRecord,
) -> Result<Vec<FileEntry>, RecordError> {
    let mut b = Vec::with_capacity(record.file_table.length.min(1 << 28) as usize);
    repo.read_stream(&record.file_table, &mut b)?;
    decode_table(&b).map_err(|source| RecordError::Decode {
        path: "file table".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ids::ChunkId;
    use crate::store::stream::StreamForm;

    fn stream(n: u8) -> Stream {
        Stream {
            length: 10,
            form: StreamForm::Direct,
            ids: vec![ChunkId::from_bytes([n; 32])],
        }
    }

    #[test]
    fn record_and_table_round_trip() {
        let r = SnapshotRecord {
            kind: SnapshotKind::Digested,
            udid: "00008030-001".into(),
            device_name: "Phone".into(),
            product_type: "iPhone15,2".into(),
            product_version: "17.5.1".into(),
            build_version: "21F90".into(),
            serial_number: "F2L".into(),
            phone_date: 5,
            box_started: 6,
            box_finished: 7,
            box_clock: true,
            is_full_backup: false,
            parent: SnapshotId::from_bytes([3; 32]),
            digested_from: SnapshotId::ZERO,
            backup_kek: Zeroizing::new([9; 32]),
            chunker_used: [1, 2, 3],
            tops: vec![TopFile {
                name: "Manifest.db".into(),
                encoding: TopEncoding::ManifestDbPlain,
                stream: stream(1),
            }],
            counts: Counts {
                files: 1,
                ..Counts::default()
            },
            content_bytes: 10,
            file_table: stream(2),
        };
        let b = r.encode().unwrap();
        assert_eq!(SnapshotRecord::decode(&b).unwrap(), r);
        let mut long = b.clone();
        long.push(0);
        assert!(SnapshotRecord::decode(&long).is_err());
        assert!(SnapshotRecord::decode(&b[..b.len() - 1]).is_err());

        let a = FileEntry {
            file_id: [1; 20],
            row: Some(EntryRow {
                flags: 1,
                domain: "AppDomain-x".into(),
                relative_path: "a".into(),
                mbfile: vec![1, 2],
            }),
            content: Content::Plain(stream(4)),
        };
        let z = FileEntry {
            file_id: [0; 20],
            row: None,
            content: Content::Raw(stream(5)),
        };
        let t = encode_table(&[a.clone(), z.clone()]).unwrap();
        assert_eq!(decode_table(&t).unwrap(), vec![a.clone(), z.clone()]);
        assert!(encode_table(&[z.clone(), a.clone()]).is_err());
        let mut t2 = Vec::new();
        z.encode(&mut t2).unwrap();
        a.encode(&mut t2).unwrap();
        assert!(decode_table(&t2).is_err());
    }

    #[test]
    fn records_and_tables_read_back_through_the_snapshot_and_table_modules() {
        use crate::store::repo::InitOptions;
        use crate::store::seal::BlobKind;
        use crate::store::storage::CrashStorage;
        let st = std::sync::Arc::new(CrashStorage::new());
        let pw = crate::password::Password::new("pw");
        let mut repo = Repository::init(st, &pw, &InitOptions::for_tests()).unwrap();
        let content = repo.put_stream(&b"hello"[..], BlobKind::Data).unwrap();
        let e = FileEntry {
            file_id: [7; 20],
            row: Some(EntryRow {
                flags: 1,
                domain: "HomeDomain".into(),
                relative_path: "a".into(),
                mbfile: vec![1],
            }),
            content: Content::Plain(content),
        };
        let table = encode_table(std::slice::from_ref(&e)).unwrap();
        let ts = repo.put_stream(&table[..], BlobKind::Meta).unwrap();
        repo.flush().unwrap();
        let r = SnapshotRecord {
            kind: SnapshotKind::Digested,
            udid: "U".into(),
            device_name: "D".into(),
            product_type: String::new(),
            product_version: String::new(),
            build_version: String::new(),
            serial_number: String::new(),
            phone_date: 1,
            box_started: 2,
            box_finished: 3,
            box_clock: false,
            is_full_backup: true,
            parent: SnapshotId::ZERO,
            digested_from: SnapshotId::ZERO,
            backup_kek: Zeroizing::new([5; 32]),
            chunker_used: [65536, 262144, 1048576],
            tops: vec![],
            counts: Counts::default(),
            content_bytes: 5,
            file_table: ts,
        };
        let id = commit_record(&repo, &r, &mut |_| Ok(())).unwrap();
        let theirs = repo.load_snapshot(&id).unwrap();
        assert_eq!(theirs.device.udid, "U");
        assert_eq!(theirs.backup_kek.0, [5; 32]);
        assert_eq!(theirs.file_table, r.file_table);
        let mut rd = repo.file_table_reader(&theirs.file_table);
        let got = rd.next_entry(&repo).unwrap().unwrap();
        assert_eq!(got.file_id, e.file_id);
        assert_eq!(got.content.stream(), e.stream());
        assert!(rd.next_entry(&repo).unwrap().is_none());
    }
}
