//! Page-synthetic SQLite databases: valid files (they open and pass `PRAGMA integrity_check`)
//! whose every 4096-byte page is generated from (key, page role, page version), never stored.
//!
//! Layout: page 1 holds the header and the schema (one table), page 2 is the table's root, and
//! the remaining pages are appended in the order a growing table would allocate them: leaves,
//! with each interior node allocated just before the leaf that gives it its second child. A
//! day's changes rewrite a few leaves (mostly recent ones), append a few, and thereby touch
//! only their parents, the root and page 1 — the pattern an incremental backup sees.

use super::catalog::CORPUS;
use super::rng::{hash, Rng};
use std::collections::HashMap;
use std::io::{self, Read};

/// SQLite page size used by every synthetic database (and by iOS).
pub(crate) const PAGE: usize = 4096;
/// Children per interior node before a new node is started (the last one may hold one more).
/// With 4-byte keys a cell takes 10 bytes, so 401 children fit a 4096-byte page.
pub(crate) const FANOUT: u16 = 400;
/// Rowids of leaf `j` lie in `j*ROWID_SLOT+1 ..= j*ROWID_SLOT+63`, so leaves are rewritten
/// without touching their neighbours' keys.
const ROWID_SLOT: u64 = 64;
const MAX_ROWS_PER_LEAF: u64 = ROWID_SLOT - 1;
/// Largest payload kept on the leaf itself for a 4096-byte page (U - 35): larger rows would
/// need overflow pages, which the generator never produces.
const MAX_LOCAL_PAYLOAD: usize = PAGE - 35;
/// A version number SQLite 3.45 writes (offset 96); any recent value is fine for readers.
const SQLITE_VERSION_NUMBER: u32 = 3_045_001;

const TAG_ACTIVE: u64 = 0x5154_4143;
const TAG_GROW: u64 = 0x5154_4752;
const TAG_CHANGE: u64 = 0x5154_4348;
const TAG_LEAF: u64 = 0x5154_4C46;

/// How a database changes from one day to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Activity {
    /// Chance (percent) that the database is written at all on a given day.
    pub daily_pct: u8,
    /// Leaves rewritten on such a day, in millionths of the leaf count (at least one).
    pub change_ppm: u32,
    /// Up to this many leaves appended on such a day.
    pub grow_max: u32,
}

/// Everything needed to regenerate one database file on a given day.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DbSpec {
    pub key: u64,
    /// Leaves (data pages) on the day the database was born.
    pub leaves0: u32,
    pub born: u32,
    /// The last day whose changes are included (the file is identical on every later day
    /// until the next change, so unchanged databases compare equal across days).
    pub state_day: u32,
    pub activity: Activity,
    /// Share of row payload that is text (compressible) rather than random blob.
    pub text_pct: u8,
    /// Name of the single table.
    pub table: &'static str,
    /// Interior fan-out ([`FANOUT`]; tests use small values to get deep trees cheaply).
    pub fanout: u16,
}

/// Most leaves a tree of `depth` interior levels holds with fan-out `f` (the root, like every
/// node, limited to f+1 children).
fn capacity(f: u64, depth: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    // The root's children are level depth-1 units; at most f+1 of them.
    let mut lo = 1u64;
    let mut hi = 1u64 << 40;
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let s = Shape {
            leaves: mid,
            depth,
            f,
        };
        if s.count(depth - 1) <= f + 1 {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Interior levels: 0 = the root is the only leaf; 1 = root over leaves; 2, 3 … more levels.
fn depth_for(f: u64, leaves0: u64) -> u32 {
    let mut d = 0;
    while capacity(f, d) < leaves0 {
        d += 1;
    }
    d
}

/// First leaf index at which a level-`l` node is allocated: 1 + f + … + f^(l-1).
fn first_alloc(f: u64, l: u32) -> u64 {
    (0..l).map(|i| f.pow(i)).sum()
}

/// Level-`l` nodes allocated up to and including leaf `j`.
fn allocated(f: u64, l: u32, j: u64) -> u64 {
    let c = first_alloc(f, l);
    if j >= c {
        (j - c) / f.pow(l) + 1
    } else {
        0
    }
}

/// The shape of a tree with `leaves` leaves, `depth` interior levels and fan-out `f`.
#[derive(Clone, Copy, Debug)]
struct Shape {
    leaves: u64,
    depth: u32,
    f: u64,
}

impl Shape {
    fn leaf_page(&self, j: u64) -> u64 {
        if self.depth == 0 {
            return 2;
        }
        3 + j
            + (1..self.depth)
                .map(|l| allocated(self.f, l, j))
                .sum::<u64>()
    }

    fn pages(&self) -> u64 {
        self.leaf_page(self.leaves - 1)
    }

    /// Units at level `l` (level 0 = leaves; levels 1..depth-1 = interior nodes below root).
    fn count(&self, l: u32) -> u64 {
        if l == 0 {
            self.leaves
        } else {
            allocated(self.f, l, self.leaves - 1)
        }
    }

    fn node_page(&self, l: u32, m: u64) -> u64 {
        if l == 0 {
            self.leaf_page(m)
        } else if l == self.depth {
            2
        } else {
            let s = first_alloc(self.f, l) + m * self.f.pow(l);
            self.leaf_page(s) - u64::from(l)
        }
    }

    /// Children (at level l-1) of node (l, m).
    fn children(&self, l: u32, m: u64) -> std::ops::Range<u64> {
        let below = self.count(l - 1);
        if l == self.depth {
            0..below
        } else if m + 1 == self.count(l) {
            m * self.f..below
        } else {
            m * self.f..(m + 1) * self.f
        }
    }

    fn last_leaf(&self, l: u32, m: u64) -> u64 {
        if l == 0 {
            m
        } else if l == self.depth || m + 1 == self.count(l) {
            self.leaves - 1
        } else {
            (m + 1) * self.f.pow(l) - 1
        }
    }
}

impl DbSpec {
    fn f(&self) -> u64 {
        u64::from(self.fanout.max(2))
    }

    fn depth(&self) -> u32 {
        depth_for(self.f(), u64::from(self.leaves0.max(1)))
    }

    fn shape(&self, leaves: u64) -> Shape {
        Shape {
            leaves,
            depth: self.depth(),
            f: self.f(),
        }
    }

    fn changes_on(&self, day: u32) -> bool {
        day > self.born
            && hash(&[self.key, TAG_ACTIVE, u64::from(day)]) % 100
                < u64::from(self.activity.daily_pct)
    }

    fn growth_on(&self, day: u32, leaves: u64) -> u64 {
        let cap = capacity(self.f(), self.depth());
        let g = Rng::from_parts(&[self.key, TAG_GROW, u64::from(day)])
            .range(0, u64::from(self.activity.grow_max));
        g.min(cap.saturating_sub(leaves))
    }

    /// Leaves rewritten on `day`, given the leaf count before it; mostly near the end, where
    /// new rows land, some anywhere.
    fn changed_leaves(&self, day: u32, leaves: u64) -> Vec<u64> {
        let mut rng = Rng::from_parts(&[self.key, TAG_CHANGE, u64::from(day)]);
        let n = (leaves * u64::from(self.activity.change_ppm) / 1_000_000).clamp(1, leaves);
        let tail = (leaves / 20).max(1);
        (0..n)
            .map(|_| {
                if rng.percent(70) {
                    leaves - 1 - rng.below(tail)
                } else {
                    rng.below(leaves)
                }
            })
            .collect()
    }

    /// Leaf count and last change day after applying days `born+1 ..= day`.
    pub(crate) fn history(&self, day: u32) -> (u64, u32) {
        let mut leaves = u64::from(self.leaves0.max(1));
        let mut last = self.born;
        for d in self.born + 1..=day {
            if self.changes_on(d) {
                leaves += self.growth_on(d, leaves);
                last = d;
            }
        }
        (leaves, last)
    }

    /// Moves the state to `day`; returns the file size.
    pub(crate) fn advance_to(&mut self, day: u32) -> u64 {
        let (_, last) = self.history(day);
        self.state_day = last;
        self.size()
    }

    pub(crate) fn size(&self) -> u64 {
        let (leaves, _) = self.history(self.state_day);
        self.shape(leaves).pages() * PAGE as u64
    }

    /// Version of every leaf that is not at its birth content, as of `state_day`.
    fn versions(&self) -> (u64, HashMap<u64, u32>) {
        let mut leaves = u64::from(self.leaves0.max(1));
        let mut v = HashMap::new();
        for d in self.born + 1..=self.state_day {
            if !self.changes_on(d) {
                continue;
            }
            for j in self.changed_leaves(d, leaves) {
                v.insert(j, d);
            }
            let g = self.growth_on(d, leaves);
            for j in leaves..leaves + g {
                v.insert(j, d);
            }
            leaves += g;
        }
        (leaves, v)
    }

    pub(crate) fn reader(&self, size: u64) -> DbReader {
        let (leaves, versions) = self.versions();
        let shape = self.shape(leaves);
        DbReader {
            spec: self.clone(),
            shape,
            versions,
            next_page: 1,
            leaf_cursor: 0,
            pending: Vec::new(),
            page: vec![0u8; PAGE],
            page_pos: PAGE,
            remaining: size,
        }
    }
}

/// What a page in the allocation sequence is.
#[derive(Clone, Copy, Debug)]
enum Role {
    Schema,
    Node(u32, u64),
}

/// Streams a database page by page.
pub(crate) struct DbReader {
    spec: DbSpec,
    shape: Shape,
    versions: HashMap<u64, u32>,
    next_page: u64,
    leaf_cursor: u64,
    /// Pages queued for the current leaf cursor (interior nodes, then the leaf), in reverse.
    pending: Vec<Role>,
    page: Vec<u8>,
    page_pos: usize,
    remaining: u64,
}

impl DbReader {
    fn next_role(&mut self) -> Option<Role> {
        let page = self.next_page;
        self.next_page += 1;
        match page {
            1 => return Some(Role::Schema),
            2 => return Some(Role::Node(self.shape.depth, 0)),
            _ => {}
        }
        if self.shape.depth == 0 {
            return None;
        }
        if self.pending.is_empty() {
            let j = self.leaf_cursor;
            if j >= self.shape.leaves {
                return None;
            }
            self.leaf_cursor += 1;
            self.pending.push(Role::Node(0, j));
            let f = self.shape.f;
            for l in 1..self.shape.depth {
                let c = first_alloc(f, l);
                if j >= c && (j - c).is_multiple_of(f.pow(l)) {
                    self.pending.push(Role::Node(l, (j - c) / f.pow(l)));
                } else {
                    break;
                }
            }
        }
        self.pending.pop()
    }

    fn render(&mut self, role: Role) {
        self.page.fill(0);
        let shape = self.shape;
        match role {
            Role::Schema => self.schema_page(),
            Role::Node(0, j) => {
                let v = self.versions.get(&j).copied().unwrap_or(0);
                leaf_page(&self.spec, j, v, &mut self.page);
            }
            Role::Node(l, m) => {
                let mut cells = Vec::new();
                let kids = shape.children(l, m);
                let last = kids.end - 1;
                for c in kids {
                    if c != last {
                        let key = (shape.last_leaf(l - 1, c) + 1) * ROWID_SLOT;
                        cells.push((shape.node_page(l - 1, c) as u32, key));
                    }
                }
                interior_page(&cells, shape.node_page(l - 1, last) as u32, &mut self.page);
            }
        }
    }

    fn schema_page(&mut self) {
        let counter = 1 + self.spec.state_day;
        let pages = self.shape.pages() as u32;
        let h = &mut self.page;
        h[..16].copy_from_slice(b"SQLite format 3\0");
        h[16..18].copy_from_slice(&(PAGE as u16).to_be_bytes());
        h[18] = 1; // rollback journal (write/read version 1)
        h[19] = 1;
        h[20] = 0; // reserved bytes per page
        h[21] = 64;
        h[22] = 32;
        h[23] = 32;
        h[24..28].copy_from_slice(&counter.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        h[40..44].copy_from_slice(&1u32.to_be_bytes()); // schema cookie
        h[44..48].copy_from_slice(&4u32.to_be_bytes()); // schema format
        h[56..60].copy_from_slice(&1u32.to_be_bytes()); // UTF-8
        h[92..96].copy_from_slice(&counter.to_be_bytes());
        h[96..100].copy_from_slice(&SQLITE_VERSION_NUMBER.to_be_bytes());
        let sql = format!(
            "CREATE TABLE {} (id INTEGER PRIMARY KEY, ts INTEGER, kind TEXT, body TEXT, data BLOB)",
            self.spec.table
        );
        let t = self.spec.table.as_bytes();
        let record = record(&[
            Col::Text(b"table"),
            Col::Text(t),
            Col::Text(t),
            Col::Int(2),
            Col::Text(sql.as_bytes()),
        ]);
        let mut cell = Vec::new();
        put_varint(&mut cell, record.len() as u64);
        put_varint(&mut cell, 1);
        cell.extend_from_slice(&record);
        let start = PAGE - cell.len();
        h[start..].copy_from_slice(&cell);
        let b = &mut h[100..];
        b[0] = 0x0D;
        b[3..5].copy_from_slice(&1u16.to_be_bytes());
        b[5..7].copy_from_slice(&(start as u16).to_be_bytes());
        b[8..10].copy_from_slice(&(start as u16).to_be_bytes());
    }
}

impl Read for DbReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < out.len() && self.remaining > 0 {
            if self.page_pos == PAGE {
                match self.next_role() {
                    Some(role) => self.render(role),
                    // Only reached if the size asked for exceeds the tree: pad with zeros.
                    None => self.page.fill(0),
                }
                self.page_pos = 0;
            }
            let take = (PAGE - self.page_pos)
                .min(out.len() - n)
                .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            out[n..n + take].copy_from_slice(&self.page[self.page_pos..self.page_pos + take]);
            self.page_pos += take;
            self.remaining -= take as u64;
            n += take;
        }
        Ok(n)
    }
}

enum Col<'a> {
    Null,
    Int(i64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

/// An SQLite record: header (size, serial types) then the values.
fn record(cols: &[Col]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut body = Vec::new();
    for c in cols {
        match c {
            Col::Null => put_varint(&mut types, 0),
            Col::Int(v) => {
                if (-128..128).contains(v) {
                    put_varint(&mut types, 1);
                    body.push(*v as u8);
                } else {
                    put_varint(&mut types, 6);
                    body.extend_from_slice(&v.to_be_bytes());
                }
            }
            Col::Text(t) => {
                put_varint(&mut types, 13 + 2 * t.len() as u64);
                body.extend_from_slice(t);
            }
            Col::Blob(b) => {
                put_varint(&mut types, 12 + 2 * b.len() as u64);
                body.extend_from_slice(b);
            }
        }
    }
    // The header length counts itself; with under 127 bytes of types it is one byte.
    let mut out = Vec::with_capacity(1 + types.len() + body.len());
    let mut hl = types.len() as u64 + 1;
    if hl > 127 {
        hl += 1;
    }
    put_varint(&mut out, hl);
    out.extend_from_slice(&types);
    out.extend_from_slice(&body);
    out
}

/// SQLite's big-endian variable-length integer (1–9 bytes).
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v > 0x00FF_FFFF_FFFF_FFFF {
        let mut buf = [0u8; 9];
        buf[8] = v as u8;
        let mut x = v >> 8;
        for b in buf[..8].iter_mut().rev() {
            *b = ((x & 0x7F) | 0x80) as u8;
            x >>= 7;
        }
        out.extend_from_slice(&buf);
        return;
    }
    let mut tmp = [0u8; 9];
    let mut n = 0;
    let mut x = v;
    loop {
        tmp[n] = ((x & 0x7F) as u8) | 0x80;
        n += 1;
        x >>= 7;
        if x == 0 {
            break;
        }
    }
    tmp[0] &= 0x7F;
    tmp[..n].reverse();
    out.extend_from_slice(&tmp[..n]);
}

/// A table interior page: cells (left child, key) in key order plus the right-most child.
fn interior_page(cells: &[(u32, u64)], right: u32, page: &mut [u8]) {
    let mut end = PAGE;
    let mut ptrs = Vec::with_capacity(cells.len());
    let mut cell = Vec::with_capacity(16);
    for &(child, key) in cells {
        cell.clear();
        cell.extend_from_slice(&child.to_be_bytes());
        put_varint(&mut cell, key);
        end -= cell.len();
        page[end..end + cell.len()].copy_from_slice(&cell);
        ptrs.push(end as u16);
    }
    page[0] = 0x05;
    page[3..5].copy_from_slice(&(cells.len() as u16).to_be_bytes());
    page[5..7].copy_from_slice(&(end as u16).to_be_bytes());
    page[8..12].copy_from_slice(&right.to_be_bytes());
    for (i, p) in ptrs.iter().enumerate() {
        page[12 + 2 * i..14 + 2 * i].copy_from_slice(&p.to_be_bytes());
    }
}

const KINDS: &[&[u8]] = &[
    b"sample",
    b"message",
    b"event",
    b"workout",
    b"record",
    b"heart_rate",
    b"steps",
    b"note",
];

/// A table leaf page: rows with a timestamp, a short kind, text from the corpus and a random
/// blob; the rest of the page stays zero as unused space does in real databases.
fn leaf_page(spec: &DbSpec, j: u64, version: u32, page: &mut [u8]) {
    let mut rng = Rng::from_parts(&[spec.key, TAG_LEAF, j, u64::from(version)]);
    let fill_target = PAGE * rng.range(70, 97) as usize / 100;
    let text_pct = u64::from(spec.text_pct);
    let ts0 = 1_700_000_000 + (spec.key % 10_000_000) as i64 + j as i64 * 900;
    let mut end = PAGE;
    let mut ptrs: Vec<u16> = Vec::new();
    let mut blob = vec![0u8; 2048];
    let corpus = CORPUS.as_bytes();
    while (ptrs.len() as u64) < MAX_ROWS_PER_LEAF {
        let body_len = (rng.range(16, 900) * text_pct / 100) as usize;
        let blob_len = (rng.range(0, 1800) * (100 - text_pct) / 100) as usize;
        let off = rng.below((corpus.len() - body_len) as u64) as usize;
        rng.fill(&mut blob[..blob_len]);
        let kind = *rng.pick(KINDS);
        let ts = ts0 + ptrs.len() as i64 * 7 + version as i64 * 86_400;
        let rec = record(&[
            Col::Null,
            Col::Int(ts),
            Col::Text(kind),
            Col::Text(&corpus[off..off + body_len]),
            Col::Blob(&blob[..blob_len]),
        ]);
        if rec.len() > MAX_LOCAL_PAYLOAD {
            continue;
        }
        let rowid = j * ROWID_SLOT + ptrs.len() as u64 + 1;
        let mut cell = Vec::with_capacity(rec.len() + 12);
        put_varint(&mut cell, rec.len() as u64);
        put_varint(&mut cell, rowid);
        cell.extend_from_slice(&rec);
        let header_end = 8 + 2 * (ptrs.len() + 1);
        if end < header_end + cell.len() {
            break;
        }
        end -= cell.len();
        page[end..end + cell.len()].copy_from_slice(&cell);
        ptrs.push(end as u16);
        if PAGE - end >= fill_target {
            break;
        }
    }
    page[0] = 0x0D;
    page[3..5].copy_from_slice(&(ptrs.len() as u16).to_be_bytes());
    page[5..7].copy_from_slice(&(end as u16).to_be_bytes());
    for (i, p) in ptrs.iter().enumerate() {
        page[8 + 2 * i..10 + 2 * i].copy_from_slice(&p.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(leaves0: u32, grow_max: u32) -> DbSpec {
        spec_f(leaves0, grow_max, FANOUT)
    }

    fn spec_f(leaves0: u32, grow_max: u32, fanout: u16) -> DbSpec {
        DbSpec {
            key: 42,
            leaves0,
            born: 1,
            state_day: 1,
            activity: Activity {
                daily_pct: 100,
                change_ppm: 5_000,
                grow_max,
            },
            text_pct: 60,
            table: "records",
            fanout,
        }
    }

    fn bytes(s: &DbSpec) -> Vec<u8> {
        let mut v = Vec::new();
        s.reader(s.size()).read_to_end(&mut v).unwrap();
        assert_eq!(v.len() as u64, s.size());
        v
    }

    fn check_with_sqlite(data: &[u8], expect_rows_at_least: u64) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.sqlite");
        std::fs::write(&p, data).unwrap();
        let c =
            rusqlite::Connection::open_with_flags(&p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let n: i64 = c
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .unwrap();
        assert!(n as u64 >= expect_rows_at_least, "{n}");
    }

    #[test]
    fn varints() {
        for (v, enc) in [
            (0u64, vec![0u8]),
            (127, vec![0x7F]),
            (128, vec![0x81, 0x00]),
            (16383, vec![0xFF, 0x7F]),
            (16384, vec![0x81, 0x80, 0x00]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, enc, "{v}");
        }
    }

    #[test]
    fn shapes_are_consistent() {
        for (f, leaves) in [
            (400u64, 2u64),
            (400, 3),
            (400, 401),
            (400, 402),
            (400, 403),
            (400, 800),
            (400, 801),
            (400, 802),
            (400, 5000),
            (400, 160_401),
            (400, 160_402),
            (400, 170_000),
            (3, 100),
            (3, 1000),
            (2, 77),
        ] {
            let depth = depth_for(f, leaves);
            let s = Shape { leaves, depth, f };
            // Every page number 3..=pages is used exactly once.
            let mut seen = vec![false; s.pages() as usize + 1];
            let mut mark = |p: u64| {
                assert!(!seen[p as usize], "page {p} twice (leaves {leaves})");
                seen[p as usize] = true;
            };
            for j in 0..leaves {
                mark(s.leaf_page(j));
            }
            for l in 1..depth {
                for m in 0..s.count(l) {
                    mark(s.node_page(l, m));
                    assert!(s.children(l, m).count() >= 2);
                    assert!(s.children(l, m).count() as u64 <= f + 1);
                }
            }
            if depth > 0 {
                let root = s.children(depth, 0).count() as u64;
                assert!((2..=f + 1).contains(&root), "root {root} (leaves {leaves})");
            }
            assert!(seen[3..].iter().all(|&b| b), "hole (leaves {leaves})");
        }
    }

    #[test]
    fn small_and_medium_databases_are_valid_sqlite() {
        for (leaves, grow) in [(1u32, 0u32), (2, 1), (9, 2), (400, 3), (402, 5), (1200, 9)] {
            let mut s = spec(leaves, grow);
            check_with_sqlite(&bytes(&s), u64::from(leaves));
            s.advance_to(6);
            check_with_sqlite(&bytes(&s), u64::from(leaves));
        }
    }

    #[test]
    fn a_day_changes_few_pages() {
        let mut s = spec(3000, 4);
        let day1 = bytes(&s);
        s.advance_to(2);
        let day2 = bytes(&s);
        assert!(day2.len() >= day1.len() && day2.len() <= day1.len() + 6 * PAGE);
        let changed = day1
            .chunks(PAGE)
            .zip(day2.chunks(PAGE))
            .filter(|(a, b)| a != b)
            .count();
        // 0.5 % of 3000 leaves = 15, plus page 1, the root and a parent or two.
        assert!((2..=25).contains(&changed), "{changed}");
    }

    #[test]
    fn deep_trees_are_valid() {
        // Three and more interior levels (the large profile's >1 GiB database has three),
        // made cheap with a small fan-out.
        assert_eq!(depth_for(400, 270_000), 3);
        for (leaves, grow) in [(40u32, 3u32), (150, 4), (700, 2)] {
            let mut s = spec_f(leaves, grow, 4);
            assert!(s.depth() >= 3, "{}", s.depth());
            check_with_sqlite(&bytes(&s), u64::from(leaves));
            s.advance_to(9);
            check_with_sqlite(&bytes(&s), u64::from(leaves));
        }
    }
}
