//! On-disk scratch maps in the box's own temporary space (never the drive): per-file state of a
//! staging or ingest run in one SQLite file with a fixed page cache, so memory stays flat.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

/// SQLite page cache of one scratch database, in KiB. SQLite keeps to it: the maps can hold
/// millions of entries (one per phone file) at the same memory.
pub const SCRATCH_CACHE_KIB: u32 = 4 << 10;

/// Entries a scan reads per query (the map may change between batches).
const SCAN_BATCH: u32 = 256;

/// Why scratch space failed.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The temporary folder could not be made.
    #[error("local scratch space: {0}")]
    Io(#[from] io::Error),
    /// SQLite failed.
    #[error("local scratch database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A map name that is not a plain identifier.
    #[error("scratch map name {0:?} is not a plain identifier")]
    BadName(String),
}

type Shared = Arc<Mutex<Connection>>;
/// A key and its value.
type Kv = (Vec<u8>, Vec<u8>);

fn lock(c: &Shared) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves a usable connection (each statement is atomic).
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// A SQLite database in a fresh temporary folder, deleted with it.
pub struct Scratch {
    // Dropped before `_dir`, which then removes the folder.
    conn: Shared,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").finish_non_exhaustive()
    }
}

impl Scratch {
    /// A new empty database under the system's temporary folder (`TMPDIR`).
    pub fn new() -> Result<Self, ScratchError> {
        // Each new scratch map first clears what killed runs left beside it.
        let tmp = std::env::temp_dir();
        if let Err(e) = remove_leftovers(&tmp) {
            tracing::warn!("cannot sweep {}: {e}", tmp.display());
        }
        let dir = tempfile::Builder::new()
            .prefix(&private_prefix("cradle-scratch-"))
            .tempdir()?;
        let conn = Connection::open(dir.path().join("scratch.db"))?;
        // Disposable: no journal, no syncs, one writer; SQLite's own temporary files stay
        // beside it rather than in memory.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; \
             PRAGMA locking_mode = EXCLUSIVE; PRAGMA temp_store = FILE; \
             PRAGMA mmap_size = 0; PRAGMA cache_size = -{SCRATCH_CACHE_KIB};"
        ))?;
        Ok(Scratch {
            conn: Arc::new(Mutex::new(conn)),
            _dir: dir,
        })
    }

    /// The map `name` (created empty on first use; a plain identifier).
    pub fn tree(&self, name: &str) -> Result<ScratchMap, ScratchError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ScratchError::BadName(name.to_string()));
        }
        let table = format!("m_{name}");
        lock(&self.conn).execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;"
        ))?;
        let sql = |s: &str| s.replace("{t}", &table);
        Ok(ScratchMap {
            conn: self.conn.clone(),
            sql: Arc::new(MapSql {
                insert: sql("INSERT OR REPLACE INTO {t} (k, v) VALUES (?1, ?2)"),
                get: sql("SELECT v FROM {t} WHERE k = ?1"),
                remove: sql("DELETE FROM {t} WHERE k = ?1 RETURNING v"),
                clear: sql("DELETE FROM {t}"),
                from: sql("SELECT k, v FROM {t} WHERE k >= ?1 ORDER BY k LIMIT ?2"),
                after: sql("SELECT k, v FROM {t} WHERE k > ?1 ORDER BY k LIMIT ?2"),
            }),
        })
    }
}

#[derive(Debug)]
struct MapSql {
    insert: String,
    get: String,
    remove: String,
    clear: String,
    from: String,
    after: String,
}

/// One ordered byte map of a [`Scratch`] database (keys compare as bytes).
#[derive(Clone)]
pub struct ScratchMap {
    conn: Shared,
    sql: Arc<MapSql>,
}

impl std::fmt::Debug for ScratchMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchMap").finish_non_exhaustive()
    }
}

impl ScratchMap {
    /// Sets `k` to `v`.
    pub fn insert(&self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) -> Result<(), ScratchError> {
        let c = lock(&self.conn);
        c.prepare_cached(&self.sql.insert)?
            .execute(params![k.as_ref(), v.as_ref()])?;
        Ok(())
    }

    /// The value of `k`.
    pub fn get(&self, k: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, ScratchError> {
        let c = lock(&self.conn);
        let mut st = c.prepare_cached(&self.sql.get)?;
        Ok(st.query_row([k.as_ref()], |r| r.get(0)).optional()?)
    }

    /// Whether `k` is set.
    pub fn contains_key(&self, k: impl AsRef<[u8]>) -> Result<bool, ScratchError> {
        Ok(self.get(k)?.is_some())
    }

    /// Removes `k`, returning its value.
    pub fn remove(&self, k: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, ScratchError> {
        let c = lock(&self.conn);
        let mut st = c.prepare_cached(&self.sql.remove)?;
        Ok(st.query_row([k.as_ref()], |r| r.get(0)).optional()?)
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<(), ScratchError> {
        lock(&self.conn)
            .prepare_cached(&self.sql.clear)?
            .execute([])?;
        Ok(())
    }

    /// Entries with keys from `start` on, in key order. Read in batches: changes made while
    /// scanning show from the next batch on, as with any ordered map read by key.
    pub fn range_from(&self, start: impl AsRef<[u8]>) -> Scan {
        Scan {
            map: self.clone(),
            next: Some((start.as_ref().to_vec(), true)),
            prefix: Vec::new(),
            buf: std::collections::VecDeque::new(),
        }
    }

    /// Entries whose keys start with `prefix`, in key order (batched as in [`range_from`]).
    ///
    /// [`range_from`]: ScratchMap::range_from
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        let mut s = self.range_from(prefix.as_ref());
        s.prefix = prefix.as_ref().to_vec();
        s
    }

    /// Every entry in key order.
    pub fn iter(&self) -> Scan {
        self.range_from([])
    }

    fn batch(&self, key: &[u8], inclusive: bool) -> Result<Vec<Kv>, ScratchError> {
        let c = lock(&self.conn);
        let sql = if inclusive {
            &self.sql.from
        } else {
            &self.sql.after
        };
        let mut st = c.prepare_cached(sql)?;
        let rows = st.query_map(params![key, SCAN_BATCH], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A batched ordered scan of a [`ScratchMap`].
pub struct Scan {
    map: ScratchMap,
    /// Where the next batch starts (key, inclusive); `None` when done.
    next: Option<(Vec<u8>, bool)>,
    prefix: Vec<u8>,
    buf: std::collections::VecDeque<Kv>,
}

impl Iterator for Scan {
    type Item = Result<Kv, ScratchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            let (key, inclusive) = self.next.take()?;
            match self.map.batch(&key, inclusive) {
                Err(e) => return Some(Err(e)),
                Ok(rows) => {
                    if rows.len() == SCAN_BATCH as usize {
                        if let Some((k, _)) = rows.last() {
                            self.next = Some((k.clone(), false));
                        }
                    }
                    self.buf.extend(rows);
                }
            }
        }
        let (k, v) = self.buf.pop_front()?;
        if !k.starts_with(&self.prefix) {
            self.next = None;
            self.buf.clear();
            return None;
        }
        Some(Ok((k, v)))
    }
}

/// Prefixes of the folders this crate makes in the temporary folder for a run's private state
/// (the scratch maps above, the decrypted Manifest.db of a backup being read, the temporary
/// index of a repository that is not a local folder). The maker's
/// process id follows the prefix (see [`private_prefix`]), so leftovers of a killed run can be
/// told from folders in use.
const LEFTOVER_PREFIXES: [&str; 3] = ["cradle-scratch-", "cradle-manifest-", "cradle-index-"];

/// `prefix` followed by this process's id: the name start of a private temporary folder.
pub fn private_prefix(prefix: &str) -> String {
    format!("{prefix}{}-", std::process::id())
}

/// Removes what killed runs left in `tmp`: folders named by [`private_prefix`] whose process
/// is gone. Only where `/proc` shows processes (Linux); elsewhere nothing is removed.
/// Returns how many were removed; a folder that cannot be removed is logged and skipped.
pub fn remove_leftovers(tmp: &std::path::Path) -> io::Result<usize> {
    let proc = std::path::Path::new("/proc/self");
    if !proc.exists() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = LEFTOVER_PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id()
            || std::path::Path::new(&format!("/proc/{pid}")).exists()
            || !entry.file_type()?.is_dir()
        {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_ordered_and_scans_see_changes_between_batches() {
        let s = Scratch::new().unwrap();
        let a = s.tree("a").unwrap();
        let b = s.tree("b").unwrap();
        assert!(s.tree("x; DROP").is_err());
        for i in 0..1000u32 {
            a.insert(format!("k/{i:04}"), i.to_le_bytes()).unwrap();
        }
        a.insert("j", b"before").unwrap();
        a.insert("l", b"after").unwrap();
        b.insert("k/0001", b"other map").unwrap();
        assert_eq!(a.get("k/0007").unwrap(), Some(7u32.to_le_bytes().to_vec()));
        assert_eq!(
            a.remove("k/0007").unwrap(),
            Some(7u32.to_le_bytes().to_vec())
        );
        assert_eq!(a.remove("k/0007").unwrap(), None);
        assert!(!a.contains_key("k/0007").unwrap());
        // Removing ahead of the scan while scanning (as ingest does): removed keys in later
        // batches are not seen; the scan ends at the prefix's end.
        let mut seen = 0;
        for kv in a.scan_prefix("k/") {
            let (k, _) = kv.unwrap();
            assert!(k.starts_with(b"k/"));
            if k == b"k/0000" {
                a.remove("k/0999").unwrap();
            }
            seen += 1;
        }
        assert_eq!(seen, 998);
        let all: Vec<Vec<u8>> = a.iter().map(|kv| kv.unwrap().0).collect();
        assert_eq!(all.first().map(Vec::as_slice), Some(&b"j"[..]));
        assert_eq!(all.last().map(Vec::as_slice), Some(&b"l"[..]));
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(b.iter().count(), 1);
        a.clear().unwrap();
        assert_eq!(a.iter().count(), 0);
        assert_eq!(b.get("k/0001").unwrap().as_deref(), Some(&b"other map"[..]));
    }

    #[test]
    fn leftovers_of_dead_processes_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        // No process has pid 4194305 (above Linux's pid_max limit of 2^22).
        let me = std::process::id();
        for d in [
            "cradle-scratch-4194305-a1".to_string(),
            "cradle-manifest-4194305-b2".to_string(),
            format!("cradle-scratch-{me}-c3"),
            "cradle-scratch-1-d4".to_string(),
            "cradle-scratch-old".to_string(),
            "other-4194305-e5".to_string(),
        ] {
            std::fs::create_dir_all(tmp.path().join(&d).join("db")).unwrap();
            std::fs::write(tmp.path().join(&d).join("db").join("x"), b"x").unwrap();
        }
        assert_eq!(remove_leftovers(tmp.path()).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            format!("cradle-scratch-{me}-c3"),
            "cradle-scratch-1-d4".to_string(),
            "cradle-scratch-old".to_string(),
            "other-4194305-e5".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
    }
}
