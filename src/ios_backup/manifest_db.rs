//! Manifest.db: the SQLite index of a backup (one row per file, directory and symlink), read and written.
//! Reading streams validated rows in bounded memory and never writes beside its input; writing is deterministic.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};

use super::mbfile::{FileKind, MbFile, MbFileError, MAX_MBFILE_LEN};
use super::{file_id, is_valid_file_id};

/// The schema iOS writes, statement by statement, as `sqlite3 .schema` prints it for a real
/// iOS 14.3 Manifest.db. Column order matters: irestore reads `SELECT *` positionally.
pub const SCHEMA: [&str; 5] = [
    "CREATE TABLE Files (fileID TEXT PRIMARY KEY, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB)",
    "CREATE INDEX FilesDomainIdx ON Files(domain)",
    "CREATE INDEX FilesRelativePathIdx ON Files(relativePath)",
    "CREATE INDEX FilesFlagsIdx ON Files(flags)",
    "CREATE TABLE Properties (key TEXT PRIMARY KEY, value BLOB)",
];
/// Page size of real Manifest.db files.
pub const PAGE_SIZE: u32 = 4096;
/// `PRAGMA user_version` of real Manifest.db files.
pub const USER_VERSION: i64 = 2;

/// `flags` column: a regular file (the only kind with a data file).
pub const FLAG_FILE: u32 = 1;
/// `flags` column: a directory.
pub const FLAG_DIRECTORY: u32 = 2;
/// `flags` column: a symbolic link.
pub const FLAG_SYMLINK: u32 = 4;

/// Longest domain accepted (real ones are under 200 bytes).
pub const MAX_DOMAIN_LEN: usize = 1024;
/// Longest relativePath accepted (iOS's PATH_MAX is 1024).
pub const MAX_RELATIVE_PATH_LEN: usize = 4096;
/// Most distinct domains [`ManifestDb::domains`] returns (a real phone has about a thousand).
pub const MAX_DOMAINS: usize = 100_000;

/// Rows fetched per query while streaming; with [`BATCH_BYTES`] this bounds memory per batch.
const BATCH_ROWS: usize = 256;
/// A batch stops early once its blobs add up to this many bytes.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The SQLite file header.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// One row of the `Files` table, with its `file` blob decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    /// Lower-case hex SHA-1 of `domain-relativePath`; names the data file `<xx>/<fileID>`.
    pub file_id: String,
    pub domain: String,
    /// Path inside the domain; empty for the domain's root directory row.
    pub relative_path: String,
    /// [`FLAG_FILE`], [`FLAG_DIRECTORY`] or [`FLAG_SYMLINK`] (other values are passed through).
    pub flags: u32,
    pub file: MbFile,
}

impl ManifestRow {
    /// A row for `file` in `domain`: fileID, relativePath and flags are derived from it.
    pub fn new(domain: impl Into<String>, file: MbFile) -> Self {
        let domain = domain.into();
        let flags = match file.kind() {
            FileKind::Directory => FLAG_DIRECTORY,
            FileKind::Symlink => FLAG_SYMLINK,
            _ => FLAG_FILE,
        };
        ManifestRow {
            file_id: file_id(&domain, &file.relative_path),
            relative_path: file.relative_path.clone(),
            domain,
            flags,
            file,
        }
    }

    /// The entry kind the `flags` column claims (`None` for values other than 1, 2, 4).
    pub fn flag_kind(&self) -> Option<FileKind> {
        match self.flags {
            FLAG_FILE => Some(FileKind::File),
            FLAG_DIRECTORY => Some(FileKind::Directory),
            FLAG_SYMLINK => Some(FileKind::Symlink),
            _ => None,
        }
    }

    /// True if the row has a data file in the backup (`flags = 1`), as every decryptor decides.
    pub fn has_data_file(&self) -> bool {
        self.flags == FLAG_FILE
    }

    /// Checks everything that makes a row safe to use for building paths: the fileID's shape
    /// and that it is the hash of domain and path, a safe domain and relative path, and that
    /// the archived path equals the column.
    pub fn validate(&self) -> Result<(), RowError> {
        if !is_valid_file_id(&self.file_id) {
            return Err(RowError::BadFileId(self.file_id.clone()));
        }
        safe_domain(&self.domain).map_err(|reason| RowError::UnsafeDomain {
            domain: self.domain.clone(),
            reason,
        })?;
        safe_relative_path(&self.relative_path).map_err(|reason| RowError::UnsafePath {
            path: self.relative_path.clone(),
            reason,
        })?;
        let expected = file_id(&self.domain, &self.relative_path);
        if expected != self.file_id {
            return Err(RowError::FileIdMismatch {
                file_id: self.file_id.clone(),
                expected,
            });
        }
        if self.file.relative_path != self.relative_path {
            return Err(RowError::PathMismatch {
                column: self.relative_path.clone(),
                archived: self.file.relative_path.clone(),
            });
        }
        Ok(())
    }
}

/// Why a path or domain from a backup may not be used to build a local path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Longer than the cap.
    #[error("{len} bytes is longer than the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    /// An empty domain.
    #[error("empty")]
    Empty,
    /// Starts with `/`.
    #[error("absolute")]
    Absolute,
    /// Contains a NUL byte.
    #[error("contains a NUL byte")]
    Nul,
    /// `//`, or a trailing `/`.
    #[error("has an empty component")]
    EmptyComponent,
    /// A `.` component.
    #[error("has a '.' component")]
    Dot,
    /// A `..` component.
    #[error("has a '..' component")]
    DotDot,
    /// A domain containing `/`.
    #[error("contains '/'")]
    Slash,
}

/// Checks that a relativePath from a backup stays inside whatever root it is joined to: no
/// leading `/`, no `.` or `..` components, no empty components, no NUL, bounded length.
/// The empty path (a domain's root directory row) is allowed. The result has only normal
/// components, so `root.join(domain).join(result)` cannot escape `root`.
pub fn safe_relative_path(path: &str) -> Result<&Path, PathError> {
    if path.len() > MAX_RELATIVE_PATH_LEN {
        return Err(PathError::TooLong {
            len: path.len(),
            max: MAX_RELATIVE_PATH_LEN,
        });
    }
    if path.is_empty() {
        return Ok(Path::new(""));
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." => return Err(PathError::Dot),
            ".." => return Err(PathError::DotDot),
            _ => {}
        }
    }
    Ok(Path::new(path))
}

/// Checks that a domain can be used as one path component: non-empty, no `/`, NUL, `.` or `..`.
pub fn safe_domain(domain: &str) -> Result<&str, PathError> {
    if domain.len() > MAX_DOMAIN_LEN {
        return Err(PathError::TooLong {
            len: domain.len(),
            max: MAX_DOMAIN_LEN,
        });
    }
    match domain {
        "" => Err(PathError::Empty),
        "." => Err(PathError::Dot),
        ".." => Err(PathError::DotDot),
        d if d.contains('\0') => Err(PathError::Nul),
        d if d.contains('/') => Err(PathError::Slash),
        d => Ok(d),
    }
}

/// Why a row was refused. These are faults of the data (the phone or the drive).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// fileID is not 40 lower-case hex characters.
    #[error("fileID {0:?} is not 40 lower-case hex characters")]
    BadFileId(String),
    /// fileID is not SHA-1(domain-relativePath).
    #[error("fileID {file_id} does not match its domain and path (expected {expected})")]
    FileIdMismatch { file_id: String, expected: String },
    /// The domain cannot be used as a path component.
    #[error("unsafe domain {domain:?}: {reason}")]
    UnsafeDomain { domain: String, reason: PathError },
    /// The relative path could escape its root.
    #[error("unsafe relativePath {path:?}: {reason}")]
    UnsafePath { path: String, reason: PathError },
    /// The archived RelativePath differs from the column.
    #[error("relativePath column {column:?} differs from the archived {archived:?}")]
    PathMismatch { column: String, archived: String },
    /// A column has the wrong SQL type, is not UTF-8, or is too long.
    #[error("column {column}: {detail}")]
    BadColumn {
        column: &'static str,
        detail: String,
    },
    /// The `file` blob is not a valid MBFile archive.
    #[error("file blob: {0}")]
    File(#[from] MbFileError),
}

/// Errors reading a Manifest.db. `Row` is a fault of the data and iteration can go on past
/// it; the others concern the whole database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestDbError {
    /// The file (or a scratch copy) could not be read or written: a local fault.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The file is not an SQLite database (for example still encrypted).
    #[error("{}: not an SQLite database", path.display())]
    NotSqlite { path: PathBuf },
    /// SQLite failed: a corrupt database, or a local fault.
    #[error("{}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The database lacks the Files table or one of its columns.
    #[error("{}: not a Manifest.db: {detail}", path.display())]
    Schema { path: PathBuf, detail: String },
    /// More distinct values than a named cap allows.
    #[error("{}: more than {max} {what}", path.display())]
    TooMany {
        path: PathBuf,
        what: &'static str,
        max: usize,
    },
    /// One row is malformed or unsafe.
    #[error("{}: row {rowid} (fileID {file_id:?}): {source}", path.display())]
    Row {
        path: PathBuf,
        rowid: i64,
        file_id: String,
        source: RowError,
    },
}

/// How a Manifest.db was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read in place with SQLite's `immutable=1`: no locks, no `-shm`/`-wal`/`-journal` files are
    /// created or touched, nothing is written beside the input. Used when no sidecar holds data.
    Immutable,
    /// A non-empty `-wal` or `-journal` sat beside the file, holding data `immutable` would
    /// ignore, so the database and its sidecar were copied into a private scratch directory
    /// (removed on drop) and opened there, where SQLite may replay or roll back freely.
    ScratchCopy,
}

/// Counts of rows by their `flags` column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Rows with any other flags value.
    pub other: u64,
}

impl KindCounts {
    pub fn total(&self) -> u64 {
        self.files + self.directories + self.symlinks + self.other
    }
}

/// A plaintext Manifest.db opened read-only.
#[derive(Debug)]
pub struct ManifestDb {
    // Declared before `_scratch`: the connection must close before its directory is removed.
    conn: Connection,
    path: PathBuf,
    mode: OpenMode,
    _scratch: Option<ScratchDir>,
}

impl ManifestDb {
    /// Opens a plaintext Manifest.db for reading without writing anything beside it (see
    /// [`OpenMode`]). Checks the SQLite header and that a Files table with the five columns
    /// exists. The file must not change while it is open (true of a backup folder at rest).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ManifestDbError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| ManifestDbError::Io {
            path: path.clone(),
            source,
        };
        let mut header = [0u8; 16];
        let mut f = fs::File::open(&path).map_err(io_err)?;
        let n = read_up_to(&mut f, &mut header).map_err(io_err)?;
        if n < header.len() || &header != SQLITE_MAGIC {
            return Err(ManifestDbError::NotSqlite { path });
        }
        drop(f);

        let sidecars: Vec<PathBuf> = ["-wal", "-journal"]
            .iter()
            .map(|suffix| sidecar(&path, suffix))
            .filter(|p| fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
            .collect();
        let sqlite_err = |source| ManifestDbError::Sqlite {
            path: path.clone(),
            source,
        };
        let (conn, mode, scratch) = if sidecars.is_empty() {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let uri = immutable_uri(&path);
            let conn = Connection::open_with_flags(uri, flags).map_err(sqlite_err)?;
            (conn, OpenMode::Immutable, None)
        } else {
            let scratch = ScratchDir::new().map_err(io_err)?;
            let copy = scratch.path.join("Manifest.db");
            fs::copy(&path, &copy).map_err(io_err)?;
            for side in &sidecars {
                let suffix = if side.to_string_lossy().ends_with("-wal") {
                    "-wal"
                } else {
                    "-journal"
                };
                fs::copy(side, sidecar(&copy, suffix)).map_err(|source| ManifestDbError::Io {
                    path: side.clone(),
                    source,
                })?;
            }
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&copy, flags).map_err(sqlite_err)?;
            (conn, OpenMode::ScratchCopy, Some(scratch))
        };
        conn.execute_batch("PRAGMA query_only = 1")
            .map_err(sqlite_err)?;
        let db = ManifestDb {
            conn,
            path,
            mode,
            _scratch: scratch,
        };
        db.check_schema()?;
        Ok(db)
    }

    fn check_schema(&self) -> Result<(), ManifestDbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info('Files')")
            .map_err(|e| self.sqlite(e))?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.take(64).collect())
            .map_err(|e| self.sqlite(e))?;
        if names.is_empty() {
            return Err(ManifestDbError::Schema {
                path: self.path.clone(),
                detail: "no Files table".into(),
            });
        }
        for column in ["fileID", "domain", "relativePath", "flags", "file"] {
            if !names.iter().any(|n| n == column) {
                return Err(ManifestDbError::Schema {
                    path: self.path.clone(),
                    detail: format!("the Files table has no {column} column"),
                });
            }
        }
        Ok(())
    }

    fn sqlite(&self, source: rusqlite::Error) -> ManifestDbError {
        ManifestDbError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The path this database was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How it was opened.
    pub fn open_mode(&self) -> OpenMode {
        self.mode
    }

    /// Number of rows in Files.
    pub fn count(&self) -> Result<u64, ManifestDbError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM Files", [], |r| r.get(0))
            .map_err(|e| self.sqlite(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Row counts by `flags`.
    pub fn kind_counts(&self) -> Result<KindCounts, ManifestDbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT flags, count(*) FROM Files GROUP BY flags")
            .map_err(|e| self.sqlite(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sqlite(e))?;
        let mut counts = KindCounts::default();
        while let Some(row) = rows.next().map_err(|e| self.sqlite(e))? {
            let flags: rusqlite::types::Value = row.get(0).map_err(|e| self.sqlite(e))?;
            let n: i64 = row.get(1).map_err(|e| self.sqlite(e))?;
            let n = u64::try_from(n).unwrap_or(0);
            match flags {
                rusqlite::types::Value::Integer(1) => counts.files += n,
                rusqlite::types::Value::Integer(2) => counts.directories += n,
                rusqlite::types::Value::Integer(4) => counts.symlinks += n,
                _ => counts.other += n,
            }
        }
        Ok(counts)
    }

    /// Distinct domains, sorted; at most [`MAX_DOMAINS`].
    pub fn domains(&self) -> Result<Vec<String>, ManifestDbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT domain FROM Files WHERE typeof(domain) = 'text' AND octet_length(domain) <= ?1 ORDER BY domain LIMIT ?2")
            .map_err(|e| self.sqlite(e))?;
        let domains: Vec<String> = stmt
            .query_map(
                params![MAX_DOMAIN_LEN as i64, MAX_DOMAINS as i64 + 1],
                |r| r.get(0),
            )
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sqlite(e))?;
        if domains.len() > MAX_DOMAINS {
            return Err(ManifestDbError::TooMany {
                path: self.path.clone(),
                what: "domains",
                max: MAX_DOMAINS,
            });
        }
        Ok(domains)
    }

    /// Every row, in table order, validated (see [`ManifestRow::validate`]). Memory stays
    /// bounded however many rows there are: rows are fetched in small batches by rowid. A bad
    /// row yields `Err(ManifestDbError::Row)` and iteration continues; any other error ends it.
    pub fn rows(&self) -> Rows<'_> {
        Rows::new(self, None)
    }

    /// Like [`ManifestDb::rows`], restricted to one domain.
    pub fn rows_in_domain(&self, domain: &str) -> Rows<'_> {
        Rows::new(self, Some(domain.to_owned()))
    }

    /// Every row, validated, handed to `f` one at a time in ascending (`domain`, `relativePath`)
    /// order compared as byte strings (the order of Cradle's file tables, docs/format.md §9.3),
    /// ties by rowid. SQLite sorts in its own temporary storage, so memory stays bounded however
    /// many rows there are. A bad row is handed over as `Err(ManifestDbError::Row)` and the walk
    /// goes on; a database error is handed over and ends it; `f` returning `Err` ends it too.
    pub fn for_each_row_by_path<E>(
        &self,
        mut f: impl FnMut(Result<ManifestRow, ManifestDbError>) -> Result<(), E>,
    ) -> Result<(), E> {
        let sql = format!(
            "{ROW_SELECT} ORDER BY CAST(domain AS BLOB), CAST(relativePath AS BLOB), rowid"
        );
        let mut stmt = match self.conn.prepare(&sql) {
            Ok(s) => s,
            Err(e) => return f(Err(self.sqlite(e))),
        };
        let mut rows = match stmt.query(params![MAX_MBFILE_LEN as i64, TEXT_CAP as i64]) {
            Ok(r) => r,
            Err(e) => return f(Err(self.sqlite(e))),
        };
        loop {
            match rows.next() {
                Ok(None) => return Ok(()),
                Ok(Some(row)) => match RawRow::read(row) {
                    Ok(raw) => f(raw.into_row(&self.path))?,
                    Err(e) => return f(Err(self.sqlite(e))),
                },
                Err(e) => return f(Err(self.sqlite(e))),
            }
        }
    }

    /// The row for `domain` / `relative_path`, found by its fileID, validated.
    pub fn lookup(
        &self,
        domain: &str,
        relative_path: &str,
    ) -> Result<Option<ManifestRow>, ManifestDbError> {
        let row = self.lookup_file_id(&file_id(domain, relative_path))?;
        // A hostile table could file another domain/path under this fileID; validation already
        // refuses that (the fileID would not match), so a returned row is the one asked for.
        Ok(row.filter(|r| r.domain == domain && r.relative_path == relative_path))
    }

    /// The row with this fileID, validated. A malformed `file_id` argument finds nothing.
    pub fn lookup_file_id(&self, file_id: &str) -> Result<Option<ManifestRow>, ManifestDbError> {
        if !is_valid_file_id(file_id) {
            return Ok(None);
        }
        let sql = format!("{ROW_SELECT} WHERE fileID = ?3 LIMIT 1");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.sqlite(e))?;
        let mut rows = stmt
            .query(params![MAX_MBFILE_LEN as i64, TEXT_CAP as i64, file_id])
            .map_err(|e| self.sqlite(e))?;
        match rows.next().map_err(|e| self.sqlite(e))? {
            None => Ok(None),
            Some(row) => {
                let raw = RawRow::read(row).map_err(|e| self.sqlite(e))?;
                raw.into_row(&self.path).map(Some)
            }
        }
    }
}

/// Columns fetched per row. Text and blob values over their caps come back as NULL, with
/// their type and length beside them, so a hostile row never makes us load a huge value.
/// Parameters: ?1 blob cap, ?2 text cap.
const ROW_SELECT: &str = "SELECT rowid, \
     typeof(fileID), octet_length(fileID), CASE WHEN octet_length(fileID) <= ?2 THEN fileID END, \
     typeof(domain), octet_length(domain), CASE WHEN octet_length(domain) <= ?2 THEN domain END, \
     typeof(relativePath), octet_length(relativePath), \
         CASE WHEN octet_length(relativePath) <= ?2 THEN relativePath END, \
     flags, \
     typeof(file), octet_length(file), CASE WHEN octet_length(file) <= ?1 THEN file END \
     FROM Files";
/// Largest text column fetched (the longest of the per-column caps).
const TEXT_CAP: usize = MAX_RELATIVE_PATH_LEN;

/// A row as fetched, before validation.
struct RawRow {
    rowid: i64,
    file_id: Column<String>,
    domain: Column<String>,
    relative_path: Column<String>,
    flags: rusqlite::types::Value,
    file: Column<Vec<u8>>,
}

/// A capped column: its SQL type name, byte length, and value if under the cap.
struct Column<T> {
    type_name: String,
    len: i64,
    value: Option<T>,
}

impl RawRow {
    fn read(row: &rusqlite::Row<'_>) -> Result<Self, rusqlite::Error> {
        fn text(row: &rusqlite::Row<'_>, at: usize) -> Result<Column<String>, rusqlite::Error> {
            let type_name: String = row.get(at)?;
            let len: Option<i64> = row.get(at + 1)?;
            // Invalid UTF-8 is reported per row later, not as a database error.
            let value = match row.get_ref(at + 2)? {
                rusqlite::types::ValueRef::Text(t) => {
                    std::str::from_utf8(t).ok().map(str::to_owned)
                }
                _ => None,
            };
            Ok(Column {
                type_name,
                len: len.unwrap_or(0),
                value,
            })
        }
        let file_type: String = row.get(11)?;
        let file_len: Option<i64> = row.get(12)?;
        let file = match row.get_ref(13)? {
            rusqlite::types::ValueRef::Blob(b) => Some(b.to_vec()),
            _ => None,
        };
        Ok(RawRow {
            rowid: row.get(0)?,
            file_id: text(row, 1)?,
            domain: text(row, 4)?,
            relative_path: text(row, 7)?,
            flags: row.get(10)?,
            file: Column {
                type_name: file_type,
                len: file_len.unwrap_or(0),
                value: file,
            },
        })
    }

    fn blob_len(&self) -> usize {
        self.file.value.as_ref().map_or(0, Vec::len)
    }

    /// Decodes and validates; errors name the database, the rowid and the fileID.
    fn into_row(self, path: &Path) -> Result<ManifestRow, ManifestDbError> {
        let rowid = self.rowid;
        let shown_id = self.file_id.value.clone().unwrap_or_default();
        let fail = |source| ManifestDbError::Row {
            path: path.to_path_buf(),
            rowid,
            file_id: shown_id.clone(),
            source,
        };
        let file_id = text_column(self.file_id, "fileID", 40).map_err(&fail)?;
        let domain = text_column(self.domain, "domain", MAX_DOMAIN_LEN).map_err(&fail)?;
        let relative_path = text_column(self.relative_path, "relativePath", MAX_RELATIVE_PATH_LEN)
            .map_err(&fail)?;
        let flags = match self.flags {
            rusqlite::types::Value::Integer(v) => {
                u32::try_from(v).map_err(|_| RowError::BadColumn {
                    column: "flags",
                    detail: format!("value {v} out of range"),
                })
            }
            _ => Err(RowError::BadColumn {
                column: "flags",
                detail: "not an integer".into(),
            }),
        }
        .map_err(&fail)?;
        let blob = match (self.file.type_name.as_str(), self.file.value) {
            ("blob", Some(b)) => b,
            ("blob", None) => {
                return Err(fail(RowError::File(MbFileError::TooLarge {
                    len: usize::try_from(self.file.len).unwrap_or(usize::MAX),
                    max: MAX_MBFILE_LEN,
                })))
            }
            (other, _) => {
                return Err(fail(RowError::BadColumn {
                    column: "file",
                    detail: format!("is {other}, not a blob"),
                }))
            }
        };
        let file = MbFile::decode(&blob).map_err(|e| fail(RowError::File(e)))?;
        let row = ManifestRow {
            file_id,
            domain,
            relative_path,
            flags,
            file,
        };
        row.validate().map_err(fail)?;
        Ok(row)
    }
}

fn text_column(column: Column<String>, name: &'static str, max: usize) -> Result<String, RowError> {
    let bad = |detail: String| RowError::BadColumn {
        column: name,
        detail,
    };
    if column.type_name != "text" {
        return Err(bad(format!("is {}, not text", column.type_name)));
    }
    let len = usize::try_from(column.len).unwrap_or(usize::MAX);
    if len > max {
        return Err(bad(format!(
            "{len} bytes is longer than the {max}-byte limit"
        )));
    }
    column.value.ok_or_else(|| bad("is not valid UTF-8".into()))
}

/// Streaming iterator over validated rows; see [`ManifestDb::rows`].
pub struct Rows<'db> {
    db: &'db ManifestDb,
    domain: Option<String>,
    /// Lowest rowid of the next batch.
    next_rowid: i64,
    pending: VecDeque<RawRow>,
    exhausted: bool,
    failed: bool,
}

impl<'db> Rows<'db> {
    fn new(db: &'db ManifestDb, domain: Option<String>) -> Self {
        Rows {
            db,
            domain,
            next_rowid: i64::MIN,
            pending: VecDeque::new(),
            exhausted: false,
            failed: false,
        }
    }

    fn fetch(&mut self) -> Result<(), rusqlite::Error> {
        let filter = if self.domain.is_some() {
            " AND domain = ?5"
        } else {
            ""
        };
        let sql = format!("{ROW_SELECT} WHERE rowid >= ?3{filter} ORDER BY rowid LIMIT ?4");
        let mut stmt = self.db.conn.prepare_cached(&sql)?;
        let caps = (MAX_MBFILE_LEN as i64, TEXT_CAP as i64);
        let mut rows = match &self.domain {
            Some(d) => stmt.query(params![
                caps.0,
                caps.1,
                self.next_rowid,
                BATCH_ROWS as i64,
                d
            ])?,
            None => stmt.query(params![caps.0, caps.1, self.next_rowid, BATCH_ROWS as i64])?,
        };
        let mut fetched = 0usize;
        let mut bytes = 0usize;
        while let Some(row) = rows.next()? {
            let raw = RawRow::read(row)?;
            match raw.rowid.checked_add(1) {
                Some(next) => self.next_rowid = next,
                None => self.exhausted = true,
            }
            bytes += raw.blob_len();
            fetched += 1;
            self.pending.push_back(raw);
            if bytes >= BATCH_BYTES || self.exhausted {
                // Stop early; the next batch resumes after this rowid.
                return Ok(());
            }
        }
        if fetched < BATCH_ROWS {
            self.exhausted = true;
        }
        Ok(())
    }
}

impl Iterator for Rows<'_> {
    type Item = Result<ManifestRow, ManifestDbError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.pending.is_empty() && !self.exhausted {
            if let Err(e) = self.fetch() {
                self.failed = true;
                return Some(Err(self.db.sqlite(e)));
            }
        }
        let raw = self.pending.pop_front()?;
        Some(raw.into_row(&self.db.path))
    }
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_up_to(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `<path><suffix>`, e.g. `Manifest.db-wal`.
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `file:<percent-encoded path>?mode=ro&immutable=1`.
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    let mut bytes = path.as_os_str().as_bytes();
    // "file://x" would make "x" a URI authority: keep a single leading slash.
    while bytes.starts_with(b"//") {
        bytes = &bytes[1..];
    }
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    uri
}

/// A private temporary directory, removed with its contents on drop.
#[derive(Debug)]
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new() -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..8 {
            let path = base.join(format!("cradle-manifest-{:016x}", rand::random::<u64>()));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(ScratchDir { path }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no scratch directory")))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Errors writing a Manifest.db. `InvalidRow` and `Duplicate` are the caller's data; the
/// others are local faults.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestWriteError {
    /// The target file already exists; the writer never overwrites.
    #[error("{}: already exists", path.display())]
    Exists { path: PathBuf },
    /// SQLite failed (disk full, permissions, ...).
    #[error("{}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The row would not pass the reader's validation.
    #[error("{}: refusing row {file_id}: {source}", path.display())]
    InvalidRow {
        path: PathBuf,
        file_id: String,
        source: RowError,
    },
    /// A row with this fileID was already inserted.
    #[error("{}: duplicate fileID {file_id}", path.display())]
    Duplicate { path: PathBuf, file_id: String },
}

/// Writes a new plaintext Manifest.db with iOS's schema, page size and user_version, in
/// rollback-journal mode, inside one transaction. Deterministic: the same rows in the same
/// order give a byte-identical file (incremental backups rely on it staying stable).
/// Dropping the writer without [`ManifestDbWriter::finish`] leaves an empty database that the
/// caller should delete.
#[derive(Debug)]
pub struct ManifestDbWriter {
    conn: Connection,
    path: PathBuf,
    rows: u64,
}

const INSERT_SQL: &str =
    "INSERT INTO Files (fileID, domain, relativePath, flags, file) VALUES (?1, ?2, ?3, ?4, ?5)";

impl ManifestDbWriter {
    /// Creates the database at `path`, which must not exist yet.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, ManifestWriteError> {
        let path = path.as_ref().to_path_buf();
        if fs::symlink_metadata(&path).is_ok() {
            return Err(ManifestWriteError::Exists { path });
        }
        let err = |source| ManifestWriteError::Sqlite {
            path: path.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(err)?;
        // The page size must be set before the first table exists.
        conn.execute_batch(&format!(
            "PRAGMA page_size = {PAGE_SIZE}; PRAGMA journal_mode = DELETE; PRAGMA auto_vacuum = NONE;"
        ))
        .map_err(err)?;
        let mut batch = String::from("BEGIN;\n");
        batch.push_str(&format!("PRAGMA user_version = {USER_VERSION};\n"));
        for statement in SCHEMA {
            batch.push_str(statement);
            batch.push_str(";\n");
        }
        conn.execute_batch(&batch).map_err(err)?;
        Ok(ManifestDbWriter {
            conn,
            path,
            rows: 0,
        })
    }

    /// Opens a database this writer made earlier to change it in place, inside one transaction
    /// (as a phone keeps its Manifest.db between backups: changed rows are rewritten where they
    /// are, new ones appended, so only a few pages change).
    pub fn reopen(path: impl AsRef<Path>) -> Result<Self, ManifestWriteError> {
        let path = path.as_ref().to_path_buf();
        let err = |source| ManifestWriteError::Sqlite {
            path: path.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(err)?;
        conn.execute_batch("PRAGMA journal_mode = DELETE; BEGIN;")
            .map_err(err)?;
        Ok(ManifestDbWriter {
            conn,
            path,
            rows: 0,
        })
    }

    /// Rewrites the `flags` and `file` columns of `row`'s existing row (matched by fileID).
    pub fn update(&mut self, row: &ManifestRow) -> Result<(), ManifestWriteError> {
        row.validate()
            .map_err(|source| ManifestWriteError::InvalidRow {
                path: self.path.clone(),
                file_id: row.file_id.clone(),
                source,
            })?;
        self.conn
            .prepare_cached("UPDATE Files SET flags = ?2, file = ?3 WHERE fileID = ?1")
            .and_then(|mut st| {
                st.execute(params![
                    row.file_id,
                    i64::from(row.flags),
                    row.file.encode()
                ])
            })
            .map(|_| ())
            .map_err(|source| ManifestWriteError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }

    /// Deletes the row of `file_id` (nothing if there is none).
    pub fn delete(&mut self, file_id: &str) -> Result<(), ManifestWriteError> {
        self.conn
            .prepare_cached("DELETE FROM Files WHERE fileID = ?1")
            .and_then(|mut st| st.execute(params![file_id]))
            .map(|_| ())
            .map_err(|source| ManifestWriteError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }

    /// Validates `row` (as the reader would) and inserts it with its MBFile encoded.
    pub fn insert(&mut self, row: &ManifestRow) -> Result<(), ManifestWriteError> {
        row.validate()
            .map_err(|source| ManifestWriteError::InvalidRow {
                path: self.path.clone(),
                file_id: row.file_id.clone(),
                source,
            })?;
        let blob = row.file.encode();
        let mut stmt =
            self.conn
                .prepare_cached(INSERT_SQL)
                .map_err(|source| ManifestWriteError::Sqlite {
                    path: self.path.clone(),
                    source,
                })?;
        match stmt.execute(params![
            row.file_id,
            row.domain,
            row.relative_path,
            i64::from(row.flags),
            blob
        ]) {
            Ok(_) => {
                self.rows += 1;
                Ok(())
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(ManifestWriteError::Duplicate {
                    path: self.path.clone(),
                    file_id: row.file_id.clone(),
                })
            }
            Err(source) => Err(ManifestWriteError::Sqlite {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Rows inserted so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Commits and closes the database; returns the number of rows written.
    pub fn finish(self) -> Result<u64, ManifestWriteError> {
        let path = self.path.clone();
        let err = |source| ManifestWriteError::Sqlite {
            path: path.clone(),
            source,
        };
        self.conn.execute_batch("COMMIT").map_err(err)?;
        self.conn.close().map_err(|(_, source)| err(source))?;
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: u32, size: u64) -> MbFile {
        MbFile {
            relative_path: path.into(),
            mode,
            size,
            inode: 42,
            user_id: 501,
            group_id: 501,
            birth: 1_600_000_000,
            last_modified: 1_600_000_001,
            last_status_change: 1_600_000_002,
            protection_class: if mode & 0o170000 == 0o100000 { 3 } else { 0 },
            encryption_key: (mode & 0o170000 == 0o100000)
                .then(|| [&3u32.to_le_bytes()[..], &[7u8; 40]].concat()),
            ..Default::default()
        }
    }

    fn sample_rows() -> Vec<ManifestRow> {
        vec![
            ManifestRow::new("HomeDomain", file("", 0o040755, 0)),
            ManifestRow::new("HomeDomain", file("Library", 0o040755, 0)),
            ManifestRow::new("HomeDomain", file("Library/SMS/sms.db", 0o100644, 4096)),
            ManifestRow::new(
                "HomeDomain",
                MbFile {
                    target: Some("/var/mobile/Library".into()),
                    ..file("Library/link", 0o120755, 0)
                },
            ),
            ManifestRow::new(
                "CameraRollDomain",
                file("Media/DCIM/100APPLE/IMG_0001.HEIC", 0o100644, 1),
            ),
        ]
    }

    fn write(path: &Path, rows: &[ManifestRow]) {
        let mut w = ManifestDbWriter::create(path).unwrap();
        for r in rows {
            w.insert(r).unwrap();
        }
        assert_eq!(w.finish().unwrap(), rows.len() as u64);
    }

    #[test]
    fn safe_paths() {
        assert!(safe_relative_path("").is_ok());
        assert!(safe_relative_path("Library/SMS/sms.db").is_ok());
        assert!(safe_relative_path("a/..b/c..").is_ok());
        assert_eq!(safe_relative_path("../x"), Err(PathError::DotDot));
        assert_eq!(safe_relative_path("a/../../x"), Err(PathError::DotDot));
        assert_eq!(safe_relative_path("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(safe_relative_path("a//b"), Err(PathError::EmptyComponent));
        assert_eq!(safe_relative_path("a/"), Err(PathError::EmptyComponent));
        assert_eq!(safe_relative_path("./a"), Err(PathError::Dot));
        assert_eq!(safe_relative_path("a\0b"), Err(PathError::Nul));
        assert!(matches!(
            safe_relative_path(&"a".repeat(MAX_RELATIVE_PATH_LEN + 1)),
            Err(PathError::TooLong { .. })
        ));
        assert!(safe_domain("AppDomain-com.example").is_ok());
        assert_eq!(safe_domain(""), Err(PathError::Empty));
        assert_eq!(safe_domain(".."), Err(PathError::DotDot));
        assert_eq!(safe_domain("a/b"), Err(PathError::Slash));
    }

    #[test]
    fn rows_by_path_come_in_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        let mut rows = sample_rows();
        // Upper case sorts before lower case as bytes; "a/b" before "a0" ('/' < '0').
        rows.push(ManifestRow::new("HomeDomain", file("Zed", 0o100644, 1)));
        rows.push(ManifestRow::new("HomeDomain", file("a0", 0o100644, 1)));
        rows.push(ManifestRow::new("HomeDomain", file("a/b", 0o100644, 1)));
        write(&path, &rows);
        let db = ManifestDb::open(&path).unwrap();
        let mut got = Vec::new();
        db.for_each_row_by_path(|r| -> Result<(), ManifestDbError> {
            let r = r?;
            got.push((r.domain, r.relative_path));
            Ok(())
        })
        .unwrap();
        let mut want: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.domain.clone(), r.relative_path.clone()))
            .collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(got[0].0, "CameraRollDomain");
        // The callback's error ends the walk.
        let mut n = 0;
        let r = db.for_each_row_by_path(|_| {
            n += 1;
            Err::<(), _>("stop")
        });
        assert_eq!((r, n), (Err("stop"), 1));
    }

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        let rows = sample_rows();
        write(&path, &rows);
        let db = ManifestDb::open(&path).unwrap();
        assert_eq!(db.open_mode(), OpenMode::Immutable);
        assert_eq!(db.count().unwrap(), 5);
        let read: Vec<ManifestRow> = db.rows().collect::<Result<_, _>>().unwrap();
        assert_eq!(read, rows);
        assert_eq!(
            db.kind_counts().unwrap(),
            KindCounts {
                files: 2,
                directories: 2,
                symlinks: 1,
                other: 0
            }
        );
        assert_eq!(
            db.domains().unwrap(),
            vec!["CameraRollDomain", "HomeDomain"]
        );
        let found = db
            .lookup("HomeDomain", "Library/SMS/sms.db")
            .unwrap()
            .unwrap();
        assert_eq!(found, rows[2]);
        assert!(db.lookup("HomeDomain", "nope").unwrap().is_none());
        assert!(db.lookup_file_id("../../etc/passwd").unwrap().is_none());
        let in_domain: Vec<_> = db.rows_in_domain("CameraRollDomain").collect();
        assert_eq!(in_domain.len(), 1);
        // Nothing was created beside the database.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("Manifest.db")]);
    }

    #[test]
    fn schema_and_header_match_ios() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        write(&path, &sample_rows());
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[..16], SQLITE_MAGIC);
        assert_eq!(u16::from_be_bytes([bytes[16], bytes[17]]), 4096);
        assert_eq!((bytes[18], bytes[19]), (1, 1), "rollback journal, not WAL");
        assert_eq!(i32::from_be_bytes(bytes[60..64].try_into().unwrap()), 2);
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let sql: Vec<String> = conn
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(sql, SCHEMA.to_vec());
    }

    #[test]
    fn writer_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let mut rows = sample_rows();
        // Enough rows to span many pages and index splits.
        for i in 0..3000 {
            rows.push(ManifestRow::new(
                format!("AppDomain-com.example.app{}", i % 17),
                file(&format!("Documents/file{i:05}.dat"), 0o100644, i),
            ));
        }
        write(&a, &rows);
        write(&b, &rows);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        // A different order is a different file (so the comparison above can fail).
        rows.swap(10, 20);
        let c = dir.path().join("c.db");
        write(&c, &rows);
        assert_ne!(fs::read(&a).unwrap(), fs::read(&c).unwrap());
    }

    #[test]
    fn writer_refuses_bad_rows_and_duplicates_and_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        let mut w = ManifestDbWriter::create(&path).unwrap();
        let good = ManifestRow::new("HomeDomain", file("a", 0o100644, 1));
        w.insert(&good).unwrap();
        assert!(matches!(
            w.insert(&good),
            Err(ManifestWriteError::Duplicate { .. })
        ));
        let mut bad = ManifestRow::new("HomeDomain", file("../x", 0o100644, 1));
        assert!(matches!(
            w.insert(&bad),
            Err(ManifestWriteError::InvalidRow {
                source: RowError::UnsafePath { .. },
                ..
            })
        ));
        bad = ManifestRow::new("HomeDomain", file("b", 0o100644, 1));
        bad.file_id = file_id("HomeDomain", "c");
        assert!(matches!(
            w.insert(&bad),
            Err(ManifestWriteError::InvalidRow {
                source: RowError::FileIdMismatch { .. },
                ..
            })
        ));
        w.finish().unwrap();
        assert!(matches!(
            ManifestDbWriter::create(&path),
            Err(ManifestWriteError::Exists { .. })
        ));
    }

    /// Writes rows straight into a Files table, bypassing the writer's checks.
    fn hostile_db(path: &Path, rows: &[(&str, &str, &str, i64, Vec<u8>)]) {
        let conn = Connection::open(path).unwrap();
        for s in SCHEMA {
            conn.execute_batch(s).unwrap();
        }
        for (id, domain, rel, flags, blob) in rows {
            conn.execute(INSERT_SQL, params![id, domain, rel, flags, blob])
                .unwrap();
        }
    }

    fn row_errors(path: &Path) -> Vec<RowError> {
        let db = ManifestDb::open(path).unwrap();
        db.rows()
            .filter_map(|r| match r {
                Err(ManifestDbError::Row { source, .. }) => Some(source),
                Err(e) => panic!("unexpected {e}"),
                Ok(_) => None,
            })
            .collect()
    }

    #[test]
    fn hostile_rows_are_refused_and_iteration_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        let up = file("../x", 0o100644, 1);
        let abs = file("/etc/passwd", 0o100644, 1);
        let ok = file("fine", 0o100644, 1);
        hostile_db(
            &path,
            &[
                (
                    &file_id("HomeDomain", "../x"),
                    "HomeDomain",
                    "../x",
                    1,
                    up.encode(),
                ),
                (
                    &file_id("HomeDomain", "/etc/passwd"),
                    "HomeDomain",
                    "/etc/passwd",
                    1,
                    abs.encode(),
                ),
                (
                    "../../../../tmp/evil0000000000000000000000",
                    "HomeDomain",
                    "fine",
                    1,
                    ok.encode(),
                ),
                (
                    &file_id("HomeDomain", "other"),
                    "HomeDomain",
                    "fine",
                    1,
                    ok.encode(),
                ),
                (
                    &file_id("HomeDomain", "fine"),
                    "HomeDomain",
                    "fine",
                    1,
                    b"garbage".to_vec(),
                ),
                (
                    &file_id("Home/Domain", "fine"),
                    "Home/Domain",
                    "fine",
                    1,
                    ok.encode(),
                ),
                (&file_id("E", "fine"), "E", "fine", -1, ok.encode()),
                (&file_id("D", "fine"), "D", "fine", 1, ok.encode()),
            ],
        );
        let errors = row_errors(&path);
        assert_eq!(errors.len(), 7, "{errors:?}");
        assert!(matches!(
            errors[0],
            RowError::UnsafePath {
                reason: PathError::DotDot,
                ..
            }
        ));
        assert!(matches!(
            errors[1],
            RowError::UnsafePath {
                reason: PathError::Absolute,
                ..
            }
        ));
        assert!(matches!(
            errors[2],
            RowError::BadColumn {
                column: "fileID",
                ..
            }
        ));
        assert!(matches!(errors[3], RowError::FileIdMismatch { .. }));
        assert!(matches!(errors[4], RowError::File(MbFileError::Plist(_))));
        assert!(matches!(
            errors[5],
            RowError::UnsafeDomain {
                reason: PathError::Slash,
                ..
            }
        ));
        assert!(matches!(
            errors[6],
            RowError::BadColumn {
                column: "flags",
                ..
            }
        ));
        // The last row is fine and still arrives after all those errors.
        let db = ManifestDb::open(&path).unwrap();
        assert_eq!(db.rows().filter(Result::is_ok).count(), 1);
    }

    #[test]
    fn extreme_rowids_are_all_visited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        hostile_db(&path, &[]);
        let conn = Connection::open(&path).unwrap();
        for (rowid, name) in [(i64::MIN, "a"), (-1, "b"), (i64::MAX, "c")] {
            let f = file(name, 0o100644, 1);
            conn.execute(
                "INSERT INTO Files (rowid, fileID, domain, relativePath, flags, file) VALUES (?1, ?2, 'D', ?3, 1, ?4)",
                params![rowid, file_id("D", name), name, f.encode()],
            )
            .unwrap();
        }
        drop(conn);
        let db = ManifestDb::open(&path).unwrap();
        let names: Vec<String> = db.rows().map(|r| r.unwrap().relative_path).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn short_bad_file_id_is_refused_by_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        let ok = file("fine", 0o100644, 1);
        hostile_db(&path, &[("ABC", "HomeDomain", "fine", 1, ok.encode())]);
        assert!(matches!(row_errors(&path)[..], [RowError::BadFileId(_)]));
    }

    #[test]
    fn oversized_blob_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        hostile_db(
            &path,
            &[(
                &file_id("D", "a"),
                "D",
                "a",
                1,
                vec![0u8; MAX_MBFILE_LEN + 1],
            )],
        );
        assert!(matches!(
            row_errors(&path)[..],
            [RowError::File(MbFileError::TooLarge { .. })]
        ));
    }

    #[test]
    fn non_sqlite_and_wrong_schema_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.db");
        fs::write(&junk, b"this is not a database, just some text long enough").unwrap();
        let err = ManifestDb::open(&junk).unwrap_err();
        assert!(matches!(err, ManifestDbError::NotSqlite { .. }));
        assert!(err.to_string().contains("junk.db"));

        let empty = dir.path().join("empty.db");
        fs::write(&empty, b"").unwrap();
        assert!(matches!(
            ManifestDb::open(&empty),
            Err(ManifestDbError::NotSqlite { .. })
        ));

        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(matches!(
            ManifestDb::open(&other),
            Err(ManifestDbError::Schema { .. })
        ));

        // A valid header followed by garbage pages.
        let corrupt = dir.path().join("corrupt.db");
        let mut bytes = SQLITE_MAGIC.to_vec();
        bytes.extend(std::iter::repeat_n(0xa5u8, 8192));
        fs::write(&corrupt, bytes).unwrap();
        let err = ManifestDb::open(&corrupt).unwrap_err();
        assert!(matches!(err, ManifestDbError::Sqlite { .. }), "{err:?}");
        assert!(err.to_string().contains("corrupt.db"));

        let missing = dir.path().join("missing.db");
        assert!(matches!(
            ManifestDb::open(&missing),
            Err(ManifestDbError::Io { .. })
        ));
    }

    #[test]
    fn pending_wal_is_read_from_a_scratch_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Manifest.db");
        let rows = sample_rows();
        write(&path, &rows[..2]);
        // Add a row through WAL and keep the writer open so the WAL is not checkpointed,
        // then copy the three files elsewhere as a crash would leave them.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        conn.execute(
            INSERT_SQL,
            params![
                rows[2].file_id,
                rows[2].domain,
                rows[2].relative_path,
                1,
                rows[2].file.encode()
            ],
        )
        .unwrap();
        let frozen = dir.path().join("frozen");
        fs::create_dir(&frozen).unwrap();
        for suffix in ["", "-wal"] {
            fs::copy(
                sidecar(&path, suffix),
                sidecar(&frozen.join("Manifest.db"), suffix),
            )
            .unwrap();
        }
        drop(conn);
        let frozen_db = frozen.join("Manifest.db");
        let before: Vec<_> = ["", "-wal"]
            .map(|s| fs::read(sidecar(&frozen_db, s)).unwrap())
            .into();
        let db = ManifestDb::open(&frozen_db).unwrap();
        assert_eq!(db.open_mode(), OpenMode::ScratchCopy);
        assert_eq!(db.count().unwrap(), 3);
        drop(db);
        let after: Vec<_> = ["", "-wal"]
            .map(|s| fs::read(sidecar(&frozen_db, s)).unwrap())
            .into();
        assert_eq!(before, after, "the input files are untouched");
        assert!(!sidecar(&frozen_db, "-shm").exists());
    }

    #[test]
    fn uri_escaping() {
        assert_eq!(
            immutable_uri(Path::new("/a b/c?d#e%f")),
            "file:/a%20b/c%3Fd%23e%25f?mode=ro&immutable=1"
        );
        assert_eq!(
            immutable_uri(Path::new("//x/y")),
            "file:/x/y?mode=ro&immutable=1"
        );
    }
}
