//! `stats`: what the repository holds and what it costs on the drive, per device: logical bytes
//! (the latest snapshot and all snapshots), stored bytes (packs), and the deduplication ratio.

use std::collections::{BTreeMap, HashSet};

use super::ids::{ChunkId, SnapshotId};
use super::pack;
use super::repo::{RepoError, Repository};
use super::walk;

/// Figures of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStats {
    /// UDID.
    pub udid: String,
    /// Device name of its newest snapshot.
    pub device_name: String,
    /// Snapshots of this device.
    pub snapshots: u64,
    /// The newest snapshot (by phone date).
    pub latest: SnapshotId,
    /// Its phone date (ms).
    pub latest_phone_date: i64,
    /// Sum of content lengths of the data files in the newest snapshot (from its file table).
    pub latest_logical_bytes: u64,
    /// The same summed over every snapshot of the device.
    pub total_logical_bytes: u64,
    /// Stored (sealed, compressed) bytes of the distinct chunks this device's snapshots use,
    /// tables and top files included. Chunks shared with other devices count for each.
    pub stored_bytes: u64,
    /// `total_logical_bytes / stored_bytes` (0 when nothing is stored).
    pub dedup_ratio: f64,
}

/// Figures of the whole repository.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoStats {
    /// Per device, by UDID.
    pub devices: Vec<DeviceStats>,
    /// Snapshots (readable, not superseded).
    pub snapshots: u64,
    /// Packs on the drive.
    pub packs: u64,
    /// Their total size in bytes: what the repository's data costs on the drive.
    pub pack_bytes: u64,
    /// Blobs listed in pack headers.
    pub blobs: u64,
    /// Plaintext bytes of those blobs.
    pub blob_plain_bytes: u64,
    /// Sum of every device's `total_logical_bytes`.
    pub total_logical_bytes: u64,
    /// `total_logical_bytes / pack_bytes` (0 when there are no packs).
    pub dedup_ratio: f64,
}

/// Where `stats` is: snapshots walked so far of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsProgress {
    /// Snapshots done.
    pub done: u64,
    /// Snapshots in all.
    pub total: u64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Computes the figures: reads every pack header and walks every snapshot's file table.
pub fn stats(
    repo: &Repository,
    progress: &mut dyn FnMut(StatsProgress),
) -> Result<RepoStats, RepoError> {
    let storage = repo.storage().clone();
    let mut out = RepoStats {
        devices: Vec::new(),
        snapshots: 0,
        packs: 0,
        pack_bytes: 0,
        blobs: 0,
        blob_plain_bytes: 0,
        total_logical_bytes: 0,
        dedup_ratio: 0.0,
    };
    for p in repo.list_packs()? {
        out.packs += 1;
        out.pack_bytes += storage.size(&p.path())?;
        if let Ok((_, blobs)) = pack::read_pack_header(storage.as_ref(), repo.keys(), &p) {
            out.blobs += blobs.len() as u64;
            out.blob_plain_bytes += blobs
                .iter()
                .map(|b| u64::from(b.entry.plain_len))
                .sum::<u64>();
        }
    }
    let listing = repo.snapshot_listing()?;
    let total = listing.snapshots.len() as u64;
    out.snapshots = total;
    let mut by_device: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (_, r)) in listing.snapshots.iter().enumerate() {
        by_device.entry(r.device.udid.clone()).or_default().push(i);
    }
    let mut done = 0u64;
    for (udid, idx) in by_device {
        let mut chunks: HashSet<ChunkId> = HashSet::new();
        let mut d = DeviceStats {
            udid,
            device_name: String::new(),
            snapshots: idx.len() as u64,
            latest: SnapshotId::ZERO,
            latest_phone_date: i64::MIN,
            latest_logical_bytes: 0,
            total_logical_bytes: 0,
            stored_bytes: 0,
            dedup_ratio: 0.0,
        };
        for i in idx {
            progress(StatsProgress { done, total });
            done += 1;
            let Some((id, rec)) = listing.snapshots.get(i) else {
                continue;
            };
            let mut logical = 0u64;
            walk::record_chunks(
                repo,
                rec,
                &mut |c| {
                    chunks.insert(*c);
                },
                &mut |e| logical += e.content.stream().map_or(0, |s| s.length),
            )?;
            d.total_logical_bytes += logical;
            if (rec.phone_date, *id) > (d.latest_phone_date, d.latest) {
                d.latest = *id;
                d.latest_phone_date = rec.phone_date;
                d.latest_logical_bytes = logical;
                d.device_name = rec.device.device_name.clone();
            }
        }
        for c in &chunks {
            if let Some(l) = repo.chunk_location(c) {
                d.stored_bytes += u64::from(l.blob.entry.stored_len);
            }
        }
        d.dedup_ratio = ratio(d.total_logical_bytes, d.stored_bytes);
        out.total_logical_bytes += d.total_logical_bytes;
        out.devices.push(d);
    }
    out.dedup_ratio = ratio(out.total_logical_bytes, out.pack_bytes);
    Ok(out)
}
