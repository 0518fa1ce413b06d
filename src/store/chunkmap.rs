//! The index's chunk map (format.md §13): ChunkId → pack number and blob location, kept as
//! immutable sorted run files with Bloom filters, merged size-tiered, so memory stays flat.
//!
//! sled keeps every page's bookkeeping in memory (66 MiB for 1.3 million chunk entries with a
//! 2 MiB cache, measured), so the one map that grows with the phone lives here instead.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Trailer magic of a run file.
pub const RUN_MAGIC: [u8; 8] = *b"CRDLRUN1";
/// Bytes per entry: ChunkId 32, pack number 4, offset 4, stored length 4, plain length 4, kind 1,
/// flags 1.
pub const ENTRY_LEN: usize = 50;
/// Trailer: count u64, bloom bits u64, max pack number u32, reserved u32, magic 8, BLAKE3 32.
const TRAILER_LEN: usize = 8 + 8 + 4 + 4 + 8 + 32;
/// Bloom filter bits per entry and probes (about 0.8 % false positives).
const BLOOM_BITS_PER_ENTRY: u64 = 10;
const BLOOM_PROBES: u64 = 7;
/// Entries held in memory before they are written as a run (about 3 MB).
pub const MEMTABLE_MAX: usize = 32_768;
/// Size-tiered merging: a run's tier is how many times `TIER_FACTOR` fits between `TIER_BASE`
/// entries and its count; `TIER_FACTOR` runs of one tier are merged into one of the next. Each
/// entry is rewritten about once per tier (5 times for 1.3 million chunks written 2,048 at a
/// time), and at most `TIER_FACTOR - 1` runs wait per tier.
const TIER_FACTOR: u64 = 4;
const TIER_BASE: u64 = 4096;
/// Read buffer of each run during a merge or scan.
const SCAN_BUF: usize = 64 << 10;

/// One chunk's location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The ChunkId's bytes.
    pub id: [u8; 32],
    /// The pack's number in the index (`packs` tree).
    pub pack_no: u32,
    /// Offset of the blob in the pack.
    pub offset: u32,
    /// Stored length.
    pub stored_len: u32,
    /// Plain length.
    pub plain_len: u32,
    /// Blob kind code.
    pub kind: u8,
    /// Blob flags.
    pub flags: u8,
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[..32].copy_from_slice(&self.id);
        b[32..36].copy_from_slice(&self.pack_no.to_le_bytes());
        b[36..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.stored_len.to_le_bytes());
        b[44..48].copy_from_slice(&self.plain_len.to_le_bytes());
        b[48] = self.kind;
        b[49] = self.flags;
        b
    }

    fn decode(b: &[u8; ENTRY_LEN]) -> Entry {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        Entry {
            id,
            pack_no: u(32),
            offset: u(36),
            stored_len: u(40),
            plain_len: u(44),
            kind: b[48],
            flags: b[49],
        }
    }
}

/// Why the chunk map cannot be used (the caller rebuilds the index).
#[derive(Debug, thiserror::Error)]
pub enum ChunkMapError {
    /// A run file could not be read or written.
    #[error("chunk map files: {0}")]
    Io(#[from] io::Error),
    /// A run file is damaged (length, magic or checksum).
    #[error("chunk map run {0} is damaged")]
    Damaged(String),
}

fn probes(id: &[u8; 32], bits: u64) -> impl Iterator<Item = u64> {
    // ChunkIds are keyed BLAKE3 outputs: their bytes are already uniform hashes.
    let h1 = u64::from_le_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]]);
    let h2 = u64::from_le_bytes([id[8], id[9], id[10], id[11], id[12], id[13], id[14], id[15]]) | 1;
    (0..BLOOM_PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

struct Bloom {
    bits: u64,
    words: Vec<u64>,
}

impl Bloom {
    fn new(entries: u64) -> Bloom {
        let bits = (entries.max(1) * BLOOM_BITS_PER_ENTRY).div_ceil(64) * 64;
        Bloom {
            bits,
            words: vec![0; (bits / 64) as usize],
        }
    }

    fn add(&mut self, id: &[u8; 32]) {
        for p in probes(id, self.bits) {
            self.words[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    fn may_contain(&self, id: &[u8; 32]) -> bool {
        probes(id, self.bits).all(|p| self.words[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
}

/// One run file, open for lookups.
struct Run {
    seq: u64,
    path: PathBuf,
    file: File,
    count: u64,
    max_pack_no: u32,
    bloom: Bloom,
}

impl Run {
    /// Opens and verifies a run file (its whole BLAKE3), keeping its Bloom filter in memory.
    fn open(seq: u64, path: PathBuf) -> Result<Run, ChunkMapError> {
        let damaged = || ChunkMapError::Damaged(path.display().to_string());
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        if len < TRAILER_LEN as u64 {
            return Err(damaged());
        }
        let mut t = [0u8; TRAILER_LEN];
        file.read_exact_at(&mut t, len - TRAILER_LEN as u64)?;
        let u64_at = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().unwrap_or([0; 8]));
        let count = u64_at(0);
        let bloom_bits = u64_at(8);
        let max_pack_no = u32::from_le_bytes(t[16..20].try_into().unwrap_or([0; 4]));
        if t[24..32] != RUN_MAGIC
            || bloom_bits % 64 != 0
            || count
                .checked_mul(ENTRY_LEN as u64)
                .and_then(|e| e.checked_add(bloom_bits / 8))
                != Some(len - TRAILER_LEN as u64)
        {
            return Err(damaged());
        }
        // The checksum covers everything before it; the Bloom words are read on the way.
        let mut h = blake3::Hasher::new();
        let mut r = BufReader::with_capacity(SCAN_BUF, &file);
        let mut left = count * ENTRY_LEN as u64;
        let mut buf = vec![0u8; SCAN_BUF];
        while left > 0 {
            let n = left.min(SCAN_BUF as u64) as usize;
            r.read_exact(&mut buf[..n])?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let mut words = Vec::with_capacity((bloom_bits / 64) as usize);
        let mut w = [0u8; 8];
        for _ in 0..bloom_bits / 64 {
            r.read_exact(&mut w)?;
            h.update(&w);
            words.push(u64::from_le_bytes(w));
        }
        h.update(&t[..TRAILER_LEN - 32]);
        if h.finalize().as_bytes()[..] != t[TRAILER_LEN - 32..] {
            return Err(damaged());
        }
        Ok(Run {
            seq,
            path,
            file,
            count,
            max_pack_no,
            bloom: Bloom {
                bits: bloom_bits.max(64),
                words: if words.is_empty() { vec![0] } else { words },
            },
        })
    }

    fn entry_at(&self, i: u64) -> io::Result<Entry> {
        let mut b = [0u8; ENTRY_LEN];
        self.file.read_exact_at(&mut b, i * ENTRY_LEN as u64)?;
        Ok(Entry::decode(&b))
    }

    /// Every entry for `id` in this run (normally one), by binary search.
    fn find(&self, id: &[u8; 32], out: &mut Vec<Entry>) -> io::Result<()> {
        if self.count == 0 || !self.bloom.may_contain(id) {
            return Ok(());
        }
        let (mut lo, mut hi) = (0u64, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry_at(mid)?.id < *id {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        while lo < self.count {
            let e = self.entry_at(lo)?;
            if e.id != *id {
                break;
            }
            out.push(e);
            lo += 1;
        }
        Ok(())
    }

    fn reader(&self) -> io::Result<RunReader> {
        Ok(RunReader {
            // Its own open file: a clone would share (and move) the lookup handle's offset.
            r: BufReader::with_capacity(SCAN_BUF, File::open(&self.path)?),
            left: self.count,
        })
    }
}

/// Sequential reader of a run's entries.
struct RunReader {
    r: BufReader<File>,
    left: u64,
}

impl RunReader {
    fn next(&mut self) -> io::Result<Option<Entry>> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut b = [0u8; ENTRY_LEN];
        self.r.read_exact(&mut b)?;
        self.left -= 1;
        Ok(Some(Entry::decode(&b)))
    }
}

/// Writes a run: entries in ChunkId order, then the Bloom filter and the trailer; `.tmp`,
/// fsync, rename, fsync of the folder.
struct RunWriter {
    seq: u64,
    tmp: PathBuf,
    path: PathBuf,
    w: BufWriter<File>,
    h: blake3::Hasher,
    count: u64,
    max_pack_no: u32,
    bloom: Bloom,
}

impl RunWriter {
    fn create(dir: &Path, seq: u64, max_entries: u64) -> io::Result<RunWriter> {
        let path = dir.join(format!("{seq:016x}.run"));
        let tmp = dir.join(format!("{seq:016x}.run.tmp"));
        Ok(RunWriter {
            seq,
            w: BufWriter::with_capacity(SCAN_BUF, File::create(&tmp)?),
            tmp,
            path,
            h: blake3::Hasher::new(),
            count: 0,
            max_pack_no: 0,
            bloom: Bloom::new(max_entries),
        })
    }

    fn push(&mut self, e: &Entry) -> io::Result<()> {
        let b = e.encode();
        self.w.write_all(&b)?;
        self.h.update(&b);
        self.bloom.add(&e.id);
        self.count += 1;
        self.max_pack_no = self.max_pack_no.max(e.pack_no);
        Ok(())
    }

    /// Makes the run durable and returns it open for lookups, its Bloom filter taken from
    /// memory (what was just written is not read back).
    fn finish(mut self, dir: &Path) -> io::Result<Run> {
        for w in &self.bloom.words {
            let b = w.to_le_bytes();
            self.w.write_all(&b)?;
            self.h.update(&b);
        }
        let mut t = Vec::with_capacity(TRAILER_LEN);
        t.extend_from_slice(&self.count.to_le_bytes());
        t.extend_from_slice(&self.bloom.bits.to_le_bytes());
        t.extend_from_slice(&self.max_pack_no.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&RUN_MAGIC);
        self.h.update(&t);
        t.extend_from_slice(self.h.finalize().as_bytes());
        self.w.write_all(&t)?;
        let f = self.w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&self.tmp, &self.path)?;
        File::open(dir)?.sync_all()?;
        Ok(Run {
            seq: self.seq,
            file: File::open(&self.path)?,
            path: self.path,
            count: self.count,
            max_pack_no: self.max_pack_no,
            bloom: self.bloom,
        })
    }
}

fn tier(count: u64) -> u32 {
    let mut t = 0;
    let mut size = TIER_BASE;
    while count > size {
        size = size.saturating_mul(TIER_FACTOR);
        t += 1;
    }
    t
}

/// Entries of several runs (oldest first) and, optionally, the memtable (newest), in ChunkId
/// order; for an id in several, the oldest comes first.
struct Merge<'a> {
    readers: Vec<RunReader>,
    heads: Vec<Option<Entry>>,
    mem: Option<std::iter::Peekable<std::collections::btree_map::Values<'a, [u8; 32], Entry>>>,
    last: Option<[u8; 32]>,
}

impl<'a> Merge<'a> {
    fn new(runs: &[Run], mem: Option<&'a BTreeMap<[u8; 32], Entry>>) -> io::Result<Merge<'a>> {
        let mut readers = Vec::with_capacity(runs.len());
        let mut heads = Vec::with_capacity(runs.len());
        for r in runs {
            let mut rd = r.reader()?;
            heads.push(rd.next()?);
            readers.push(rd);
        }
        Ok(Merge {
            readers,
            heads,
            mem: mem.map(|m| m.values().peekable()),
            last: None,
        })
    }

    fn next_any(&mut self) -> io::Result<Option<Entry>> {
        // The smallest head; on ties the first (oldest) source, the memtable last.
        let mut best: Option<(usize, [u8; 32])> = None;
        for (i, h) in self.heads.iter().enumerate() {
            if let Some(e) = h {
                if best.is_none_or(|(_, id)| e.id < id) {
                    best = Some((i, e.id));
                }
            }
        }
        let from_mem = self
            .mem
            .as_mut()
            .and_then(|m| m.peek())
            .is_some_and(|m| best.is_none_or(|(_, id)| m.id < id));
        if from_mem {
            return Ok(self.mem.as_mut().and_then(|m| m.next()).copied());
        }
        let Some((i, _)) = best else { return Ok(None) };
        let e = self.heads[i];
        self.heads[i] = self.readers[i].next()?;
        Ok(e)
    }

    /// The next entry whose pack is live and whose id was not given already.
    fn next_live(&mut self, live: &dyn Fn(u32) -> bool) -> io::Result<Option<Entry>> {
        while let Some(e) = self.next_any()? {
            if live(e.pack_no) && self.last != Some(e.id) {
                self.last = Some(e.id);
                return Ok(Some(e));
            }
        }
        Ok(None)
    }
}

/// The chunk map: runs on disk (oldest first) and the entries not yet written.
pub struct ChunkMap {
    dir: PathBuf,
    runs: Vec<Run>,
    mem: BTreeMap<[u8; 32], Entry>,
    next_seq: u64,
}

impl std::fmt::Debug for ChunkMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkMap")
            .field("dir", &self.dir)
            .field("runs", &self.runs.len())
            .finish()
    }
}

impl ChunkMap {
    /// Opens the runs in `dir` (created if missing), verifying each; leftover `.tmp` files of an
    /// interrupted write or merge are deleted.
    pub fn open(dir: &Path) -> Result<ChunkMap, ChunkMapError> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                fs::remove_file(e.path())?;
                continue;
            }
            if let Some(seq) = name
                .strip_suffix(".run")
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            {
                found.push((seq, e.path()));
            }
        }
        found.sort();
        let mut runs = Vec::with_capacity(found.len());
        for (seq, path) in found {
            runs.push(Run::open(seq, path)?);
        }
        let next_seq = runs.last().map_or(0, |r| r.seq + 1);
        Ok(ChunkMap {
            dir: dir.to_path_buf(),
            runs,
            mem: BTreeMap::new(),
            next_seq,
        })
    }

    /// The highest pack number any run mentions (numbers are never reused past it).
    pub fn max_pack_no(&self) -> Option<u32> {
        self.runs
            .iter()
            .filter(|r| r.count > 0)
            .map(|r| r.max_pack_no)
            .chain(self.mem.values().map(|e| e.pack_no))
            .max()
    }

    /// Deletes every run and unwritten entry.
    pub fn clear(&mut self) -> Result<(), ChunkMapError> {
        self.mem.clear();
        for r in self.runs.drain(..) {
            fs::remove_file(&r.path)?;
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// The entry for `id` whose pack is `live` (the first one written, as `insert` keeps).
    pub fn get(
        &self,
        id: &[u8; 32],
        live: &dyn Fn(u32) -> bool,
    ) -> Result<Option<Entry>, ChunkMapError> {
        let mut found = Vec::new();
        for r in &self.runs {
            r.find(id, &mut found)?;
            if let Some(e) = found.iter().find(|e| live(e.pack_no)) {
                return Ok(Some(*e));
            }
            found.clear();
        }
        Ok(self.mem.get(id).filter(|e| live(e.pack_no)).copied())
    }

    /// Adds an entry (the caller checked that `id` has no live one). Written at `flush`.
    pub fn insert(&mut self, e: Entry) {
        self.mem.entry(e.id).or_insert(e);
    }

    /// Drops unwritten entries of pack `no`.
    pub fn forget_unwritten(&mut self, no: u32) {
        self.mem.retain(|_, e| e.pack_no != no);
    }

    /// Whether enough entries wait (`MEMTABLE_MAX`) to be written as a run now.
    pub fn memtable_full(&self) -> bool {
        self.mem.len() >= MEMTABLE_MAX
    }

    /// Writes the unwritten entries as a run (durable), then merges runs while the newest is at
    /// least a quarter of the one before it; merges drop entries of packs no longer `live`.
    pub fn flush(&mut self, live: &dyn Fn(u32) -> bool) -> Result<(), ChunkMapError> {
        if self.mem.is_empty() {
            return Ok(());
        }
        let seq = self.next_seq;
        let mut w = RunWriter::create(&self.dir, seq, self.mem.len() as u64)?;
        for e in self.mem.values() {
            w.push(e)?;
        }
        self.runs.push(w.finish(&self.dir)?);
        self.next_seq += 1;
        self.mem.clear();
        loop {
            let n = self.runs.len();
            let f = TIER_FACTOR as usize;
            if n < f {
                break;
            }
            let t = tier(self.runs[n - 1].count);
            if self.runs[n - f..].iter().any(|r| tier(r.count) != t) {
                break;
            }
            self.merge_last(f, live)?;
        }
        Ok(())
    }

    /// Merges the `k` newest runs into one (for an id in several, the oldest live entry wins)
    /// and drops entries of packs no longer `live`.
    fn merge_last(&mut self, k: usize, live: &dyn Fn(u32) -> bool) -> Result<(), ChunkMapError> {
        let inputs: Vec<Run> = self.runs.split_off(self.runs.len() - k);
        let seq = self.next_seq;
        let total = inputs.iter().map(|r| r.count).sum();
        let mut w = RunWriter::create(&self.dir, seq, total)?;
        let mut m = Merge::new(&inputs, None)?;
        while let Some(e) = m.next_live(live)? {
            w.push(&e)?;
        }
        self.runs.push(w.finish(&self.dir)?);
        self.next_seq += 1;
        // The merged run is durable: the inputs can go (a crash before this leaves duplicates,
        // which lookups and the next merge treat as one).
        for r in inputs {
            fs::remove_file(&r.path)?;
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Distinct ChunkIds with a live entry (reads every run: for `check` and reports).
    pub fn count_live(&self, live: &dyn Fn(u32) -> bool) -> Result<u64, ChunkMapError> {
        let mut m = Merge::new(&self.runs, Some(&self.mem))?;
        let mut n = 0u64;
        while m.next_live(live)?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Run files on disk.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> [u8; 32] {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    fn entry(i: u64, pack_no: u32) -> Entry {
        Entry {
            id: id(i),
            pack_no,
            offset: i as u32,
            stored_len: 100 + i as u32,
            plain_len: 60,
            kind: 1,
            flags: 0,
        }
    }

    #[test]
    fn entries_survive_flushes_merges_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let all = |_: u32| true;
        let mut m = ChunkMap::open(dir.path()).unwrap();
        // 40 batches of 1,000: size-tiered merging keeps the run count small.
        let mut max_runs = 0;
        for b in 0..40u64 {
            for i in 0..1000 {
                m.insert(entry(b * 1000 + i, b as u32));
            }
            m.flush(&all).unwrap();
            max_runs = max_runs.max(m.run_count());
        }
        assert!(max_runs <= 6, "{max_runs} runs");
        assert_eq!(m.count_live(&all).unwrap(), 40_000);
        assert_eq!(m.max_pack_no(), Some(39));
        drop(m);
        let m = ChunkMap::open(dir.path()).unwrap();
        for i in [0u64, 999, 1000, 20_345, 39_999] {
            assert_eq!(
                m.get(&id(i), &all).unwrap(),
                Some(entry(i, (i / 1000) as u32))
            );
        }
        assert_eq!(m.get(&id(40_000), &all).unwrap(), None);
        // Entries of a dropped pack are gone from answers and counts.
        let not_7 = |p: u32| p != 7;
        assert_eq!(m.get(&id(7_500), &not_7).unwrap(), None);
        assert_eq!(m.count_live(&not_7).unwrap(), 39_000);
    }

    #[test]
    fn the_first_live_location_wins_and_a_dead_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = ChunkMap::open(dir.path()).unwrap();
        let all = |_: u32| true;
        m.insert(entry(1, 1));
        m.flush(&all).unwrap();
        // Pack 1 removed; the chunk stored again in pack 2.
        let not_1 = |p: u32| p != 1;
        assert_eq!(m.get(&id(1), &not_1).unwrap(), None);
        m.insert(entry(1, 2));
        m.flush(&not_1).unwrap();
        assert_eq!(m.get(&id(1), &not_1).unwrap().map(|e| e.pack_no), Some(2));
        assert_eq!(m.count_live(&not_1).unwrap(), 1);
        // Merged (with two more), the dead entry is dropped.
        for i in 2..4 {
            m.insert(entry(i, 2));
            m.flush(&not_1).unwrap();
        }
        assert_eq!(m.run_count(), 1);
        assert_eq!(m.count_live(&all).unwrap(), 3);
    }

    #[test]
    fn damaged_runs_are_refused_and_tmp_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = ChunkMap::open(dir.path()).unwrap();
        for i in 0..100 {
            m.insert(entry(i, 0));
        }
        m.flush(&|_| true).unwrap();
        drop(m);
        fs::write(dir.path().join("0000000000000009.run.tmp"), b"half").unwrap();
        let run = dir.path().join("0000000000000000.run");
        let mut b = fs::read(&run).unwrap();
        assert!(ChunkMap::open(dir.path()).is_ok());
        assert!(!dir.path().join("0000000000000009.run.tmp").exists());
        b[10] ^= 1;
        fs::write(&run, &b).unwrap();
        assert!(matches!(
            ChunkMap::open(dir.path()),
            Err(ChunkMapError::Damaged(_))
        ));
        b.truncate(b.len() - 1);
        fs::write(&run, &b).unwrap();
        assert!(matches!(
            ChunkMap::open(dir.path()),
            Err(ChunkMapError::Damaged(_))
        ));
    }

    #[test]
    fn bloom_filter_false_positives_are_rare() {
        let mut b = Bloom::new(10_000);
        for i in 0..10_000 {
            b.add(&id(i));
        }
        assert!((0..10_000).all(|i| b.may_contain(&id(i))));
        let fp = (10_000..110_000).filter(|i| b.may_contain(&id(*i))).count();
        assert!(fp < 2_000, "{fp} false positives in 100,000");
    }
}
