//! File tables (format.md §9.3): the entry codec, a writer that streams entries into meta chunks
//! and enforces their order, and a reader that streams them back in bounded memory.

use std::cmp::Ordering;

use super::caps::ENTRY_MAX;
use super::codec::{check_str, put_bytes, DecodeError, Reader};
use super::repo::{RepoError, Repository, StreamCursor, StreamWriter};
use super::seal::BlobKind;
use super::snapshot::Counts;
use super::stream::Stream;

/// Cap of `domain`.
pub const DOMAIN_MAX: u32 = 1024;
/// Cap of `relative_path`.
pub const RELATIVE_PATH_MAX: u32 = 4096;
/// Cap of `mbfile`.
pub const MBFILE_MAX: u32 = 128 * 1024;

/// Manifest.db `flags` of a regular file.
pub const FLAG_FILE: u32 = 1;
/// Manifest.db `flags` of a directory.
pub const FLAG_DIR: u32 = 2;
/// Manifest.db `flags` of a symlink.
pub const FLAG_LINK: u32 = 4;

/// A Manifest.db row, kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `flags` column: 1 file, 2 directory, 4 symlink.
    pub flags: u32,
    /// `domain` (≤ 1,024 bytes).
    pub domain: String,
    /// `relativePath` (≤ 4,096 bytes).
    pub relative_path: String,
    /// `file` column: the NSKeyedArchiver MBFile, verbatim (≤ 128 KiB).
    pub mbfile: Vec<u8>,
}

/// What an entry stores of its data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// No data file (directories, links).
    None,
    /// The data file's plaintext.
    Plain(Stream),
    /// The data file's Apple ciphertext.
    Raw(Stream),
    /// A file row whose data file the folder did not hold.
    Absent,
}

impl Content {
    /// The stream, for `Plain` and `Raw`.
    pub fn stream(&self) -> Option<&Stream> {
        match self {
            Content::Plain(s) | Content::Raw(s) => Some(s),
            _ => None,
        }
    }
}

/// One file-table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Manifest.db fileID (SHA-1 of "domain-relativePath"), or the data file's name, as 20 bytes.
    pub file_id: [u8; 20],
    /// The Manifest.db row, if any.
    pub row: Option<Row>,
    /// Its data file.
    pub content: Content,
}

/// The sort key of an entry: rows by (domain, relative_path) as bytes, then row-less entries by
/// file_id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TableKey {
    /// An entry with a row.
    Row(String, String),
    /// An entry without one.
    Orphan([u8; 20]),
}

impl FileEntry {
    /// The fileID as lower-case hex (the data file's name in a backup folder).
    pub fn file_id_hex(&self) -> String {
        hex::encode(self.file_id)
    }

    /// The entry's sort key.
    pub fn key(&self) -> TableKey {
        match &self.row {
            Some(r) => TableKey::Row(r.domain.clone(), r.relative_path.clone()),
            None => TableKey::Orphan(self.file_id),
        }
    }

    fn check(&self) -> Result<(), DecodeError> {
        match (&self.row, &self.content) {
            (None, Content::None | Content::Absent) => Err(DecodeError::Invalid(
                "an entry without a row must have content",
            )),
            (Some(r), Content::Absent) if r.flags != FLAG_FILE => {
                Err(DecodeError::Invalid("only a file row can be absent"))
            }
            _ => Ok(()),
        }
    }

    /// Appends `entry_len u32` and the entry, checking caps and rules first.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        self.check()?;
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.file_id);
        match &self.row {
            None => out.push(0),
            Some(r) => {
                check_str(&r.domain, DOMAIN_MAX, "domain")?;
                check_str(&r.relative_path, RELATIVE_PATH_MAX, "relative_path")?;
                if r.mbfile.len() > MBFILE_MAX as usize {
                    return Err(DecodeError::TooLong {
                        field: "mbfile",
                        len: r.mbfile.len() as u64,
                        cap: u64::from(MBFILE_MAX),
                    });
                }
                out.push(1);
                out.extend_from_slice(&r.flags.to_le_bytes());
                put_bytes(out, r.domain.as_bytes());
                put_bytes(out, r.relative_path.as_bytes());
                put_bytes(out, &r.mbfile);
            }
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
            out.truncate(start);
            return Err(DecodeError::TooLong {
                field: "entry",
                len: len as u64,
                cap: u64::from(ENTRY_MAX),
            });
        }
        out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }

    /// Decodes one entry's bytes (after its length field).
    pub fn decode_body(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let file_id = r.array("file_id")?;
        let row = if r.bool("row")? {
            Some(Row {
                flags: r.u32("flags")?,
                domain: r.str(DOMAIN_MAX, "domain")?.to_string(),
                relative_path: r.str(RELATIVE_PATH_MAX, "relative_path")?.to_string(),
                mbfile: r.bytes(MBFILE_MAX, "mbfile")?.to_vec(),
            })
        } else {
            None
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
        let e = FileEntry {
            file_id,
            row,
            content,
        };
        e.check()?;
        Ok(e)
    }
}

/// What a finished table adds up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSummary {
    /// The table's stream (meta chunks; durable after `flush`).
    pub table: Stream,
    /// Entry counts (rows by flags; row-less entries count as orphans).
    pub counts: Counts,
    /// Sum of content stream lengths.
    pub content_bytes: u64,
}

/// Streams entries into meta chunks; see `Repository::file_table_writer`. Entries must come in
/// table order; every content chunk must already be stored.
pub struct FileTableWriter {
    w: StreamWriter,
    last: Option<TableKey>,
    counts: Counts,
    content_bytes: u64,
    buf: Vec<u8>,
}

impl FileTableWriter {
    /// Appends one entry.
    pub fn push(&mut self, repo: &mut Repository, e: &FileEntry) -> Result<(), RepoError> {
        let key = e.key();
        if let Some(last) = &self.last {
            if key.cmp(last) != Ordering::Greater {
                return Err(RepoError::Table(DecodeError::Invalid(
                    "entries out of order or repeated",
                )));
            }
        }
        if let Some(s) = e.content.stream() {
            let ids = s.ids.iter();
            for id in ids {
                if !repo.has_chunk(id) {
                    return Err(RepoError::ChunkMissing(*id));
                }
            }
            self.content_bytes += s.length;
        }
        self.buf.clear();
        e.encode(&mut self.buf).map_err(RepoError::Table)?;
        self.w.write(repo, &self.buf)?;
        match (&e.row, &e.content) {
            (None, _) => self.counts.orphans += 1,
            (Some(_), Content::Absent) => self.counts.absent += 1,
            (Some(r), _) => match r.flags {
                FLAG_DIR => self.counts.dirs += 1,
                FLAG_LINK => self.counts.links += 1,
                _ => self.counts.files += 1,
            },
        }
        self.last = Some(key);
        Ok(())
    }

    /// Stores the rest and returns the table stream with its counts.
    pub fn finish(self, repo: &mut Repository) -> Result<TableSummary, RepoError> {
        Ok(TableSummary {
            table: self.w.finish(repo)?,
            counts: self.counts,
            content_bytes: self.content_bytes,
        })
    }
}

/// Reads a table's entries back one at a time, holding one chunk and one entry; checks the order.
pub struct FileTableReader {
    cursor: StreamCursor,
    buf: Vec<u8>,
    pos: usize,
    last: Option<TableKey>,
}

impl FileTableReader {
    fn fill(&mut self, repo: &Repository, need: usize) -> Result<bool, RepoError> {
        while self.buf.len() - self.pos < need {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            match self.cursor.next_chunk(repo)? {
                Some(c) => self.buf.extend_from_slice(&c),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The next entry, or `None` at the end of the table.
    pub fn next_entry(&mut self, repo: &Repository) -> Result<Option<FileEntry>, RepoError> {
        if !self.fill(repo, 4)? {
            if self.buf.len() > self.pos {
                return Err(RepoError::Table(DecodeError::Truncated {
                    field: "entry_len",
                }));
            }
            return Ok(None);
        }
        let p = self.pos;
        let len = u32::from_le_bytes([
            self.buf[p],
            self.buf[p + 1],
            self.buf[p + 2],
            self.buf[p + 3],
        ]);
        if len > ENTRY_MAX {
            return Err(RepoError::Table(DecodeError::TooLong {
                field: "entry",
                len: u64::from(len),
                cap: u64::from(ENTRY_MAX),
            }));
        }
        if !self.fill(repo, 4 + len as usize)? {
            return Err(RepoError::Table(DecodeError::Truncated { field: "entry" }));
        }
        let start = self.pos + 4;
        let e = FileEntry::decode_body(&self.buf[start..start + len as usize])
            .map_err(RepoError::Table)?;
        self.pos = start + len as usize;
        let key = e.key();
        if self
            .last
            .as_ref()
            .is_some_and(|last| key.cmp(last) != Ordering::Greater)
        {
            return Err(RepoError::Table(DecodeError::Invalid(
                "entries out of order or repeated",
            )));
        }
        self.last = Some(key);
        Ok(Some(e))
    }
}

impl Repository {
    /// A writer for a new file table.
    pub fn file_table_writer(&self) -> FileTableWriter {
        FileTableWriter {
            w: self.stream_writer(BlobKind::Meta),
            last: None,
            counts: Counts::default(),
            content_bytes: 0,
            buf: Vec::new(),
        }
    }

    /// A reader over the file table `table` (a record's `file_table`).
    pub fn file_table_reader(&self, table: &Stream) -> FileTableReader {
        FileTableReader {
            cursor: StreamCursor::new(table.clone()),
            buf: Vec::new(),
            pos: 0,
            last: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ids::ChunkId;
    use crate::store::stream::StreamForm;

    fn row(domain: &str, path: &str, flags: u32) -> Row {
        Row {
            flags,
            domain: domain.into(),
            relative_path: path.into(),
            mbfile: b"bplist00...".to_vec(),
        }
    }

    #[test]
    fn entry_round_trip() {
        let s = Stream {
            length: 3,
            form: StreamForm::Direct,
            ids: vec![ChunkId::from_bytes([4; 32])],
        };
        for e in [
            FileEntry {
                file_id: [1; 20],
                row: Some(row("HomeDomain", "Library/a.db", FLAG_FILE)),
                content: Content::Plain(s.clone()),
            },
            FileEntry {
                file_id: [2; 20],
                row: Some(row("HomeDomain", "Library", FLAG_DIR)),
                content: Content::None,
            },
            FileEntry {
                file_id: [3; 20],
                row: Some(row("HomeDomain", "gone", FLAG_FILE)),
                content: Content::Absent,
            },
            FileEntry {
                file_id: [4; 20],
                row: None,
                content: Content::Raw(s.clone()),
            },
        ] {
            let mut b = Vec::new();
            e.encode(&mut b).unwrap();
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            assert_eq!(len, b.len() - 4);
            assert_eq!(FileEntry::decode_body(&b[4..]).unwrap(), e);
        }
    }

    #[test]
    fn entry_rejections() {
        let e = FileEntry {
            file_id: [1; 20],
            row: Some(row("D", "p", FLAG_FILE)),
            content: Content::None,
        };
        let mut b = Vec::new();
        e.encode(&mut b).unwrap();
        let body = &b[4..];
        let mut bad = body.to_vec();
        bad[20] = 2; // row flag
        assert!(FileEntry::decode_body(&bad).is_err());
        let mut bad = body.to_vec();
        let n = bad.len();
        bad[n - 1] = 4; // content kind
        assert!(FileEntry::decode_body(&bad).is_err());
        let mut long = body.to_vec();
        long.push(0);
        assert!(FileEntry::decode_body(&long).is_err());
        // Row-less entries need content; only files can be absent.
        let orphan = FileEntry {
            file_id: [1; 20],
            row: None,
            content: Content::None,
        };
        assert!(orphan.encode(&mut Vec::new()).is_err());
        let absent_dir = FileEntry {
            file_id: [1; 20],
            row: Some(row("D", "p", FLAG_DIR)),
            content: Content::Absent,
        };
        assert!(absent_dir.encode(&mut Vec::new()).is_err());
        let huge = FileEntry {
            file_id: [1; 20],
            row: Some(Row {
                mbfile: vec![0; MBFILE_MAX as usize + 1],
                ..row("D", "p", FLAG_FILE)
            }),
            content: Content::None,
        };
        assert!(huge.encode(&mut Vec::new()).is_err());
        let long_path = FileEntry {
            file_id: [1; 20],
            row: Some(row("D", &"p".repeat(4097), FLAG_FILE)),
            content: Content::None,
        };
        assert!(long_path.encode(&mut Vec::new()).is_err());
    }

    #[test]
    fn key_order_rows_then_orphans() {
        let a = TableKey::Row("AppDomain-x".into(), "b".into());
        let b = TableKey::Row("AppDomain-x".into(), "b/c".into());
        let c = TableKey::Row("HomeDomain".into(), "".into());
        let d = TableKey::Orphan([0; 20]);
        assert!(a < b && b < c && c < d);
        // Byte order, not locale order: upper case sorts before lower case.
        assert!(TableKey::Row("Z".into(), "".into()) < TableKey::Row("a".into(), "".into()));
    }
}
