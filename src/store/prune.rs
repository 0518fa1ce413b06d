//! `prune` (format.md §16): choose snapshots to keep per device by retention policy, forget the
//! others, then delete or repack packs no remaining snapshot needs, in a crash-safe order.
//!
//! Order (each step durable before the next): mark the chunks of every kept record into a Bloom
//! filter (reads only); delete the forgotten records and their pins, fsync `snapshots/`, `pins/`;
//! write new packs holding the live blobs of sparse packs, each fsynced and renamed; only then
//! delete the old packs, fsync their directories; resynchronize the index.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::ids::{ChunkId, PackId, SnapshotId};
use super::lock::{LockEnv, LockError, LockPurpose};
use super::pack::{self, PackError, PackWriter};
use super::repo::{RepoError, Repository};
use super::seal::BlobKind;
use super::snapshot::{SnapshotKind, SnapshotRecord};
use super::tz::Zone;
use super::walk;

/// How many snapshots to keep per device (restic's `forget` rules). All zero: keep every
/// snapshot and only remove garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// The newest `n`.
    pub keep_last: u32,
    /// The newest of each of the last `n` days that have snapshots.
    pub keep_daily: u32,
    /// The newest of each of the last `n` ISO weeks that have snapshots.
    pub keep_weekly: u32,
    /// The newest of each of the last `n` months that have snapshots.
    pub keep_monthly: u32,
    /// The newest of each of the last `n` years that have snapshots.
    pub keep_yearly: u32,
}

impl Policy {
    /// True when no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// What `prune` does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PruneOptions {
    /// Retention.
    pub policy: Policy,
    /// Decide and count, change nothing.
    pub dry_run: bool,
    /// Whose calendar the daily, weekly, monthly and yearly rules count in (UTC by default;
    /// `cradle prune` gives the box's, `Zone::local()`).
    pub zone: Zone,
}

/// The fate of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its device.
    pub udid: String,
    /// Status.plist date (ms), which retention uses.
    pub phone_date: i64,
    /// Kept or forgotten.
    pub keep: bool,
    /// Why (rules that kept it: "last", "daily", "weekly", "monthly", "yearly", "newest",
    /// "pinned", "raw", "no policy"; or "superseded raw" for a forgotten raw record).
    pub reasons: Vec<&'static str>,
}

/// Where `prune` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrunePhase {
    /// Reading the kept snapshots' chunks.
    Mark,
    /// Deleting forgotten records.
    Forget,
    /// Reading pack headers, repacking.
    Sweep,
    /// Deleting unused packs.
    Delete,
}

/// Progress report passed to the caller's callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneProgress {
    /// Phase.
    pub phase: PrunePhase,
    /// Items done.
    pub done: u64,
    /// Items in the phase.
    pub total: u64,
}

/// What `prune` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Every snapshot and its fate, by device then date (newest first).
    pub decisions: Vec<Decision>,
    /// Snapshot records deleted (superseded raw records included).
    pub forgotten: Vec<SnapshotId>,
    /// Pins deleted (of forgotten snapshots, or orphans).
    pub pins_removed: u64,
    /// Packs deleted whole (none of their chunks used).
    pub packs_deleted: u64,
    /// Packs rewritten because less than half of their bytes were used.
    pub packs_repacked: u64,
    /// New packs written by repacking.
    pub packs_written: u64,
    /// Pack bytes freed (deleted and repacked packs minus the new packs).
    pub bytes_freed: u64,
    /// Packs left alone because they could not be read (see `check`).
    pub damaged_packs: Vec<String>,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// Why `prune` refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The writer lock is held, or could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Live readers (`ls`, `export`, `check` …) hold reader locks.
    #[error("the repository is being read ({0:?}); try again when they finish")]
    Readers(Vec<String>),
    /// A backup's staging session is on the drive: its chunks are not in any record yet.
    #[error("a backup is pending in staging/ ({0:?}): let it finish (or the next backup recover it) first")]
    StagingPending(Vec<String>),
    /// Records that cannot be read: their chunks cannot be marked, so nothing may be deleted.
    #[error("{} snapshot records are damaged (run `cradle check`); nothing was pruned", .0.len())]
    DamagedSnapshots(Vec<SnapshotId>),
    /// A kept snapshot could not be walked (a table or chunk list is unreadable); nothing was
    /// deleted.
    #[error("snapshot {id}: {source}; nothing was pruned (run `cradle check`)")]
    Mark {
        /// The snapshot.
        id: SnapshotId,
        /// Why.
        #[source]
        source: RepoError,
    },
    /// The repository or the drive failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Writing a new pack failed; old packs were left in place.
    #[error(transparent)]
    Pack(#[from] PackError),
}

impl From<super::storage::StorageError> for PruneError {
    fn from(e: super::storage::StorageError) -> Self {
        PruneError::Repo(e.into())
    }
}

// ---------------------------------------------------------------------------------------------
// Retention (pure).

/// Days since 1970-01-01 of `ms` (of a wall clock).
fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// ISO 8601 (year, week) of a day number.
fn iso_week(day: i64) -> (i64, i64) {
    let weekday = (day + 3).rem_euclid(7); // Monday = 0; 1970-01-01 was a Thursday
    let thursday = day - weekday + 3;
    let (y, _, _) = civil_from_days(thursday);
    (y, (thursday - days_from_civil(y, 1, 1)) / 7 + 1)
}

/// Decides which snapshots to keep. `snaps` are the readable, non-superseded records; the newest
/// of each device, pinned and raw ones are always kept. Rules are applied per device, newest
/// first, as restic's `forget` does, on `phone_date`'s calendar in `zone`.
pub fn plan(
    snaps: &[(SnapshotId, SnapshotRecord)],
    pinned: &HashSet<SnapshotId>,
    policy: &Policy,
    zone: &Zone,
) -> Vec<Decision> {
    let mut by_device: BTreeMap<&str, Vec<&(SnapshotId, SnapshotRecord)>> = BTreeMap::new();
    for s in snaps {
        by_device.entry(&s.1.device.udid).or_default().push(s);
    }
    let mut out = Vec::new();
    for (udid, mut list) in by_device {
        list.sort_by_key(|s| std::cmp::Reverse((s.1.phone_date, s.0)));
        // (rule name, remaining count, bucket function, last bucket)
        type Bucket = fn(i64) -> i64;
        let mut rules: Vec<(&'static str, u32, Bucket, Option<i64>)> = vec![
            ("daily", policy.keep_daily, |ms| day_of(ms), None),
            (
                "weekly",
                policy.keep_weekly,
                |ms| {
                    let (y, w) = iso_week(day_of(ms));
                    y * 100 + w
                },
                None,
            ),
            (
                "monthly",
                policy.keep_monthly,
                |ms| {
                    let (y, m, _) = civil_from_days(day_of(ms));
                    y * 100 + i64::from(m)
                },
                None,
            ),
            (
                "yearly",
                policy.keep_yearly,
                |ms| civil_from_days(day_of(ms)).0,
                None,
            ),
        ];
        let mut last_left = policy.keep_last;
        for (i, (id, rec)) in list.iter().map(|s| (&s.0, &s.1)).enumerate() {
            let mut reasons = Vec::new();
            if policy.is_empty() {
                reasons.push("no policy");
            }
            if i == 0 {
                reasons.push("newest");
            }
            if pinned.contains(id) {
                reasons.push("pinned");
            }
            if rec.kind == SnapshotKind::Raw {
                reasons.push("raw");
            }
            if last_left > 0 {
                last_left -= 1;
                reasons.push("last");
            }
            for (name, left, bucket, last) in rules.iter_mut() {
                let b = bucket(zone.local_ms(rec.phone_date));
                if *left > 0 && *last != Some(b) {
                    *left -= 1;
                    *last = Some(b);
                    reasons.push(name);
                }
            }
            out.push(Decision {
                id: *id,
                udid: udid.to_string(),
                phone_date: rec.phone_date,
                keep: !reasons.is_empty(),
                reasons,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Bloom filter of live chunks.

/// A Bloom filter over ChunkIds: 16 bits per expected chunk, 11 probes from two 64-bit words of
/// the (keyed, uniform) ChunkId. "Maybe" errs only towards keeping garbage.
#[derive(Debug)]
pub struct ChunkFilter {
    bits: Vec<u64>,
    m: u64,
}

const PROBES: u64 = 11;

impl ChunkFilter {
    /// A filter sized for `n` chunks.
    pub fn new(n: u64) -> Self {
        let m = (n.max(1024) * 16).next_multiple_of(64);
        ChunkFilter {
            bits: vec![0; (m / 64) as usize],
            m,
        }
    }

    fn probes(&self, id: &ChunkId) -> impl Iterator<Item = u64> + '_ {
        let b = id.as_bytes();
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        let h1 = u64::from_le_bytes(w);
        w.copy_from_slice(&b[8..16]);
        let h2 = u64::from_le_bytes(w) | 1;
        (0..PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.m)
    }

    /// Adds a chunk.
    pub fn insert(&mut self, id: &ChunkId) {
        let ps: Vec<u64> = self.probes(id).collect();
        for p in ps {
            if let Some(w) = self.bits.get_mut((p / 64) as usize) {
                *w |= 1 << (p % 64);
            }
        }
    }

    /// False only if the chunk was never inserted.
    pub fn maybe(&self, id: &ChunkId) -> bool {
        self.probes(id).all(|p| {
            self.bits
                .get((p / 64) as usize)
                .is_some_and(|w| w & (1 << (p % 64)) != 0)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Prune.

/// Applies `opts.policy` and removes what no kept snapshot needs. Takes the writer lock (purpose
/// prune) and refuses while live reader locks or staging sessions exist, or while any record is
/// damaged. A crash at any point leaves every kept snapshot readable (see the module comment).
pub fn prune(
    repo: &mut Repository,
    opts: &PruneOptions,
    env: &dyn LockEnv,
    progress: &mut dyn FnMut(PruneProgress),
) -> Result<PruneReport, PruneError> {
    let guard = repo.lock_writer(LockPurpose::Prune, env)?;
    let readers = repo.live_reader_locks(env)?;
    if !readers.is_empty() {
        return Err(PruneError::Readers(readers));
    }
    let storage = repo.storage().clone();
    if storage.exists("staging")? {
        let pending = storage.list("staging")?;
        if !pending.is_empty() {
            return Err(PruneError::StagingPending(pending));
        }
    }
    // The index must know every pack before it is used to read tables.
    repo.resync_index()?;
    let listing = repo.snapshot_listing()?;
    if !listing.damaged.is_empty() {
        return Err(PruneError::DamagedSnapshots(
            listing.damaged.iter().map(|(id, _)| *id).collect(),
        ));
    }
    let mut pins: HashSet<SnapshotId> = storage
        .list("pins")?
        .iter()
        .filter_map(|n| SnapshotId::from_hex(n))
        .collect();
    // A digest stopped between committing its record and moving the raw record's pin (§9.4):
    // the pin protects the digested successor, and moves to it before the raw record goes.
    let mut moved_pins: Vec<(SnapshotId, SnapshotId)> = Vec::new();
    for (id, r) in &listing.snapshots {
        if !r.digested_from.is_zero()
            && listing.superseded_raw.contains(&r.digested_from)
            && pins.contains(&r.digested_from)
            && !pins.contains(id)
        {
            moved_pins.push((r.digested_from, *id));
        }
    }
    if !opts.dry_run && !moved_pins.is_empty() {
        let all = repo.list_pins()?;
        for (raw, digested) in &moved_pins {
            if let Some((_, pin)) = all.iter().find(|(p, _)| p == raw) {
                repo.pin(digested, pin)?;
            }
        }
        storage.sync_dir("pins")?;
    }
    pins.extend(moved_pins.iter().map(|(_, d)| *d));
    let decisions = plan(&listing.snapshots, &pins, &opts.policy, &opts.zone);
    let keep: HashSet<SnapshotId> = decisions.iter().filter(|d| d.keep).map(|d| d.id).collect();
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..PruneReport::default()
    };
    let mut forget: Vec<SnapshotId> = decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
    forget.extend(listing.superseded_raw.iter().copied());
    forget.sort();
    for id in &listing.superseded_raw {
        report.decisions.push(Decision {
            id: *id,
            udid: String::new(),
            phone_date: 0,
            keep: false,
            reasons: vec!["superseded raw"],
        });
    }
    report.decisions.splice(0..0, decisions);

    // 1. Mark (reads only: a failure here changes nothing).
    let packs = repo.list_packs()?;
    let mut blob_count = 0u64;
    let mut headers = Vec::with_capacity(packs.len());
    for p in &packs {
        match pack::read_pack_header(storage.as_ref(), repo.keys(), p) {
            Ok((len, blobs)) => {
                blob_count += blobs.len() as u64;
                headers.push((*p, len));
            }
            Err(e) => report.damaged_packs.push(e.to_string()),
        }
    }
    let mut filter = ChunkFilter::new(blob_count);
    let kept: Vec<&(SnapshotId, SnapshotRecord)> = listing
        .snapshots
        .iter()
        .filter(|(id, _)| keep.contains(id))
        .collect();
    for (i, (id, rec)) in kept.iter().enumerate() {
        progress(PruneProgress {
            phase: PrunePhase::Mark,
            done: i as u64,
            total: kept.len() as u64,
        });
        walk::record_chunks(repo, rec, &mut |c| filter.insert(c), &mut |_| {})
            .map_err(|source| PruneError::Mark { id: *id, source })?;
    }

    // 2. Forget: records and their pins, then orphan pins; durable before any pack goes.
    for (i, id) in forget.iter().enumerate() {
        progress(PruneProgress {
            phase: PrunePhase::Forget,
            done: i as u64,
            total: forget.len() as u64,
        });
        if !opts.dry_run {
            delete_if_present(repo, &format!("snapshots/{id}"))?;
        }
    }
    let live_ids: HashSet<SnapshotId> = listing
        .snapshots
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| keep.contains(id))
        .collect();
    for id in &pins {
        if !live_ids.contains(id) {
            report.pins_removed += 1;
            if !opts.dry_run {
                delete_if_present(repo, &format!("pins/{id}"))?;
            }
        }
    }
    if !opts.dry_run {
        storage.sync_dir("snapshots")?;
        storage.sync_dir("pins")?;
    }
    report.forgotten = forget;

    // 3. Sweep. A pack with no live chunk goes; one at least half live is kept whole, and its
    // chunks are kept there; the live blobs of the others not kept elsewhere are copied into new
    // packs, made durable before any old pack is deleted. A chunk is kept once: copies left by a
    // crashed repack are garbage.
    let mut doomed: Vec<(PackId, u64)> = Vec::new();
    let mut whole: Vec<PackId> = Vec::new();
    let mut sparse: Vec<(PackId, u64)> = Vec::new();
    for (i, (p, len)) in headers.iter().enumerate() {
        progress(PruneProgress {
            phase: PrunePhase::Sweep,
            done: i as u64,
            total: 2 * headers.len() as u64,
        });
        let blobs = match pack::read_pack_header(storage.as_ref(), repo.keys(), p) {
            Ok((_, b)) => b,
            Err(e) => {
                report.damaged_packs.push(e.to_string());
                continue;
            }
        };
        let total: u64 = blobs.iter().map(|b| u64::from(b.entry.stored_len)).sum();
        let live_bytes: u64 = blobs
            .iter()
            .filter(|b| filter.maybe(&b.entry.id))
            .map(|b| u64::from(b.entry.stored_len))
            .sum();
        if live_bytes == 0 {
            report.packs_deleted += 1;
            doomed.push((*p, *len));
        } else if live_bytes * 2 >= total {
            whole.push(*p);
        } else {
            sparse.push((*p, *len));
        }
    }
    // 128 bits of a keyed ChunkId: a collision among millions of chunks is far less likely
    // than a disk error, and the set stays small on the box.
    let short = |id: &ChunkId| -> u128 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&id.as_bytes()[..16]);
        u128::from_le_bytes(b)
    };
    let mut kept: HashSet<u128> = HashSet::new();
    for p in &whole {
        let (_, blobs) = pack::read_pack_header(storage.as_ref(), repo.keys(), p)?;
        for b in blobs.iter().filter(|b| filter.maybe(&b.entry.id)) {
            kept.insert(short(&b.entry.id));
        }
    }
    let mut writers: HashMap<bool, PackWriter> = HashMap::new();
    let mut new_bytes = 0u64;
    for (i, (p, len)) in sparse.iter().enumerate() {
        progress(PruneProgress {
            phase: PrunePhase::Sweep,
            done: (headers.len() + i) as u64,
            total: (headers.len() + sparse.len()) as u64,
        });
        let (_, blobs) = pack::read_pack_header(storage.as_ref(), repo.keys(), p)?;
        let live: Vec<_> = blobs
            .iter()
            .filter(|b| filter.maybe(&b.entry.id) && !kept.contains(&short(&b.entry.id)))
            .collect();
        report.packs_repacked += 1;
        if live.is_empty() {
            doomed.push((*p, *len));
            continue;
        }
        if opts.dry_run {
            for b in live {
                if kept.insert(short(&b.entry.id)) {
                    new_bytes += u64::from(b.entry.stored_len);
                }
            }
            doomed.push((*p, *len));
            continue;
        }
        let mut ok = true;
        for b in live {
            if kept.contains(&short(&b.entry.id)) {
                continue;
            }
            let sealed = storage.read_range(
                &p.path(),
                u64::from(b.offset),
                u64::from(b.entry.stored_len),
            )?;
            if pack::decode_blob(repo.keys(), &b.entry, &sealed, true).is_err() {
                // A damaged live blob: keep the old pack; `check` names what it costs.
                report
                    .damaged_packs
                    .push(format!("pack {p}: blob {} is damaged", b.entry.id));
                ok = false;
                break;
            }
            let meta = b.entry.kind == BlobKind::Meta;
            if writers
                .get(&meta)
                .is_some_and(|w| !w.has_room(sealed.len()))
            {
                if let Some(w) = writers.remove(&meta) {
                    new_bytes += finish(repo, w, &mut report)?;
                }
            }
            let w = match writers.entry(meta) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(PackWriter::create(storage.as_ref())?)
                }
            };
            w.add(b.entry, &sealed)?;
            kept.insert(short(&b.entry.id));
            if w.len() >= u64::from(repo.config().pack_target) {
                if let Some(w) = writers.remove(&meta) {
                    new_bytes += finish(repo, w, &mut report)?;
                }
            }
        }
        if ok {
            doomed.push((*p, *len));
        } else {
            report.packs_repacked -= 1;
        }
    }
    for (_, w) in writers.drain() {
        new_bytes += finish(repo, w, &mut report)?;
    }

    // 4. Delete: only now that every new pack is durable.
    let freed: u64 = doomed.iter().map(|(_, l)| *l).sum();
    report.bytes_freed = freed.saturating_sub(new_bytes);
    if !opts.dry_run {
        let mut dirs = HashSet::new();
        for (i, (p, _)) in doomed.iter().enumerate() {
            progress(PruneProgress {
                phase: PrunePhase::Delete,
                done: i as u64,
                total: doomed.len() as u64,
            });
            delete_if_present(repo, &p.path())?;
            dirs.insert(format!("packs/{:02x}", p.as_bytes()[0]));
        }
        for d in dirs {
            storage.sync_dir(&d)?;
        }
        // 5. The index drops what is gone and learns the new packs (a crash before this leaves a
        // stale index, which every open resynchronizes).
        repo.resync_index()?;
    }
    guard.release()?;
    Ok(report)
}

fn finish(repo: &Repository, w: PackWriter, report: &mut PruneReport) -> Result<u64, PruneError> {
    let fin = w.finish(repo.keys())?;
    report.packs_written += 1;
    Ok(fin.file_len)
}

fn delete_if_present(repo: &Repository, path: &str) -> Result<(), PruneError> {
    match repo.storage().delete(path) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chunker::ChunkerParams;
    use crate::store::snapshot::{BackupKek, Counts, DeviceInfo};
    use crate::store::stream::Stream;

    const DAY: i64 = 86_400_000;

    fn rec(udid: &str, date: i64) -> SnapshotRecord {
        SnapshotRecord {
            kind: SnapshotKind::Digested,
            device: DeviceInfo {
                udid: udid.into(),
                ..DeviceInfo::default()
            },
            phone_date: date,
            box_started: 0,
            box_finished: 0,
            box_clock_synced: false,
            is_full_backup: false,
            parent: SnapshotId::ZERO,
            digested_from: SnapshotId::ZERO,
            backup_kek: BackupKek::default(),
            chunker_used: ChunkerParams::DATA_DEFAULT,
            top_files: Vec::new(),
            counts: Counts::default(),
            content_bytes: 0,
            file_table: Stream::empty(),
        }
    }

    fn id(i: u8) -> SnapshotId {
        SnapshotId::from_bytes([i; 32])
    }

    fn kept(d: &[Decision]) -> Vec<SnapshotId> {
        let mut v: Vec<_> = d.iter().filter(|d| d.keep).map(|d| d.id).collect();
        v.sort();
        v
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        // 2021-01-03 is in ISO week 53 of 2020; 2021-01-04 starts week 1 of 2021.
        assert_eq!(iso_week(days_from_civil(2021, 1, 3)), (2020, 53));
        assert_eq!(iso_week(days_from_civil(2021, 1, 4)), (2021, 1));
        assert_eq!(iso_week(days_from_civil(2026, 11, 28)), (2026, 48));
    }

    #[test]
    fn keep_last_and_daily_per_device() {
        let base = days_from_civil(2026, 11, 1) * DAY;
        // Device A: two snapshots a day for five days (ids 1..=10, newest last); device B: one.
        let mut snaps = Vec::new();
        for i in 0..10u8 {
            let t = base + i64::from(i / 2) * DAY + i64::from(i % 2) * 3_600_000;
            snaps.push((id(i + 1), rec("A", t)));
        }
        snaps.push((id(50), rec("B", base)));
        let none = HashSet::new();
        let d = plan(
            &snaps,
            &none,
            &Policy {
                keep_last: 1,
                ..Policy::default()
            },
            &Zone::utc(),
        );
        assert_eq!(kept(&d), vec![id(10), id(50)], "newest of each device");
        let d = plan(
            &snaps,
            &none,
            &Policy {
                keep_daily: 3,
                ..Policy::default()
            },
            &Zone::utc(),
        );
        // The newest of each of the last three days: 10 (day 4), 8 (day 3), 6 (day 2).
        assert_eq!(kept(&d), vec![id(6), id(8), id(10), id(50)]);
        let d = plan(
            &snaps,
            &none,
            &Policy {
                keep_last: 2,
                keep_daily: 2,
                ..Policy::default()
            },
            &Zone::utc(),
        );
        // last: 10, 9; daily: 10 (day 4), 8 (day 3).
        assert_eq!(kept(&d), vec![id(8), id(9), id(10), id(50)]);
        let pinned: HashSet<SnapshotId> = [id(1)].into();
        let d = plan(
            &snaps,
            &pinned,
            &Policy {
                keep_last: 1,
                ..Policy::default()
            },
            &Zone::utc(),
        );
        assert_eq!(kept(&d), vec![id(1), id(10), id(50)]);
        // No policy: keep everything.
        assert!(plan(&snaps, &none, &Policy::default(), &Zone::utc())
            .iter()
            .all(|d| d.keep));
    }

    #[test]
    fn weekly_monthly_yearly() {
        let mut snaps = Vec::new();
        // One snapshot every 10 days for 400 days from 2025-01-01.
        let start = days_from_civil(2025, 1, 1);
        for i in 0..40u8 {
            snaps.push((id(i + 1), rec("A", (start + i64::from(i) * 10) * DAY)));
        }
        let none = HashSet::new();
        let m = plan(
            &snaps,
            &none,
            &Policy {
                keep_monthly: 3,
                ..Policy::default()
            },
            &Zone::utc(),
        );
        assert_eq!(m.iter().filter(|d| d.keep).count(), 3);
        let y = plan(
            &snaps,
            &none,
            &Policy {
                keep_yearly: 5,
                ..Policy::default()
            },
            &Zone::utc(),
        );
        // Two years have snapshots: the newest of 2026 and the newest of 2025 (day 360).
        assert_eq!(kept(&y), vec![id(37), id(40)]);
        let w = plan(
            &snaps,
            &none,
            &Policy {
                keep_weekly: 4,
                ..Policy::default()
            },
            &Zone::utc(),
        );
        assert_eq!(w.iter().filter(|d| d.keep).count(), 4);
    }

    #[test]
    fn calendar_rules_count_the_zones_days_weeks_months_and_years() {
        const H: i64 = 3_600_000;
        let paris = Zone::from_rule("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let sydney = Zone::from_rule("AEST-10AEDT,M10.1.0,M4.1.0/3").unwrap();
        let none = HashSet::new();
        // Two snapshots an hour apart, on one UTC day, on both sides of a local midnight.
        let pair = |day: i64, utc_hour: i64| {
            let t = day * DAY + utc_hour * H + H / 2;
            vec![(id(1), rec("A", t)), (id(2), rec("A", t + H))]
        };
        let cases = [
            // 23:30 on Sunday June 28, then 00:30 on Monday June 29, in Paris (UTC+2).
            ("daily", days_from_civil(2026, 6, 28), 21, &paris),
            ("weekly", days_from_civil(2026, 6, 28), 21, &paris),
            // June 30 23:30, then July 1 00:30 in Paris.
            ("monthly", days_from_civil(2026, 6, 30), 21, &paris),
            // December 31 23:30, then January 1 2027 00:30 in Sydney (UTC+11).
            ("yearly", days_from_civil(2026, 12, 31), 12, &sydney),
        ];
        for (rule, day, hour, zone) in cases {
            let policy = match rule {
                "daily" => Policy {
                    keep_daily: 2,
                    ..Policy::default()
                },
                "weekly" => Policy {
                    keep_weekly: 2,
                    ..Policy::default()
                },
                "monthly" => Policy {
                    keep_monthly: 2,
                    ..Policy::default()
                },
                _ => Policy {
                    keep_yearly: 2,
                    ..Policy::default()
                },
            };
            let snaps = pair(day, hour);
            let local = plan(&snaps, &none, &policy, zone);
            assert_eq!(
                kept(&local),
                vec![id(1), id(2)],
                "{rule}: two local periods"
            );
            let d = local.iter().find(|d| d.id == id(1)).unwrap();
            assert_eq!(d.reasons, vec![rule]);
            let utc = plan(&snaps, &none, &policy, &Zone::utc());
            assert_eq!(kept(&utc), vec![id(2)], "{rule}: one UTC period");
        }
    }

    #[test]
    fn bloom_filter_never_forgets() {
        let mut f = ChunkFilter::new(1000);
        let ids: Vec<ChunkId> = (0..1000u32)
            .map(|i| ChunkId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        for i in &ids {
            f.insert(i);
        }
        assert!(ids.iter().all(|i| f.maybe(i)));
        let false_hits = (1000..101_000u32)
            .map(|i| ChunkId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .filter(|i| f.maybe(i))
            .count();
        assert!(false_hits < 100, "{false_hits} false positives in 100,000");
    }
}
