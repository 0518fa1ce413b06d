//! Digest of raw snapshots (format.md §9.4): with the phone's backup password, a raw record's
//! data files become plaintext chunks (ingest's own path), then the raw record goes.

use std::fs;
use std::io::{self, BufReader};

use super::ids::SnapshotId;
use super::ingest::{decrypt_db, file_key, hex20, put_plaintext, BATCH_BYTES, PLIST_MAX};
use super::lock::{LockEnv, LockError, LockPurpose};
use super::repo::{RepoError, Repository, StreamCursor};
use super::seal::BlobKind;
use super::snapshot::{
    BackupKek, SnapshotKind, SnapshotListing, SnapshotRecord, TopEncoding, TopFile,
};
use super::stream::Stream;
use super::table::{Content, FileEntry, Row};
use crate::ios_backup::kdf::KdfParams;
use crate::ios_backup::keybag::{Keybag, KeybagError, UnlockedKeybag};
use crate::ios_backup::manifest_db::{ManifestDb, FLAG_FILE};
use crate::ios_backup::plists::ManifestPlist;
use crate::password::Password;

/// Why a digest failed. Nothing is committed before the new record, and the raw snapshot stays
/// until the digested one is durable: running it again starts over (what was stored is reused).
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The writer lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The snapshot is already digested.
    #[error("snapshot {0} is already digested; only raw snapshots need `digest`")]
    NotRaw(SnapshotId),
    /// The password does not open the snapshot's keybag.
    #[error(
        "the backup password given does not open snapshot {0}: give the password the phone had \
         when it made this backup; nothing was changed"
    )]
    WrongPassword(SnapshotId),
    /// The snapshot's backup is not usable as Apple backups go (its plists, keybag, Manifest.db).
    #[error("snapshot {id}: its {what} is unusable ({reason}); it stays raw and exportable")]
    BadBackup {
        id: SnapshotId,
        what: String,
        reason: String,
    },
    /// Local scratch space (the decrypted Manifest.db) failed.
    #[error("local scratch space for Manifest.db: {0}; free space in the temporary folder")]
    Scratch(io::Error),
    /// The local scratch map of the raw data files failed.
    #[error("{0}; free space in the temporary folder and run the digest again")]
    ScratchMap(#[from] super::scratch::ScratchError),
}

/// KEKs already derived from the password in this run, by KDF parameters: a phone's raw
/// snapshots share one keybag salt, and Apple's KDF costs seconds each time on the box.
#[derive(Default)]
struct KekCache(Vec<(KdfParams, zeroize::Zeroizing<[u8; 32]>)>);

impl KekCache {
    fn unlock(&mut self, kb: &Keybag, password: &Password) -> Result<UnlockedKeybag, KeybagError> {
        let params = kb.kdf_params()?;
        if let Some((_, kek)) = self.0.iter().find(|(p, _)| *p == params) {
            return kb.unlock_with_kek(kek);
        }
        let kek = crate::ios_backup::kdf::derive_kek(password, &params)?;
        let unlocked = kb.unlock_with_kek(&kek)?;
        // Only a KEK that opened a keybag is kept (a wrong password is tried again each time).
        self.0.push((params, kek));
        Ok(unlocked)
    }
}

/// What one digest did.
#[derive(Debug, Clone)]
pub struct DigestReport {
    /// The raw snapshot (now deleted).
    pub raw: SnapshotId,
    /// The digested snapshot that replaces it.
    pub digested: SnapshotId,
    /// The device.
    pub udid: String,
    /// Data files now stored as plaintext.
    pub files_plain: u64,
    /// Data files kept as received (they do not decrypt exactly, or have no Manifest.db row).
    pub files_raw: u64,
    /// Plaintext bytes of the files now stored as plaintext.
    pub bytes_plain: u64,
    /// True when an earlier, interrupted run had already committed the digested record; this
    /// run only deleted the raw one.
    pub already: bool,
}

/// Progress: data files done of all data files in the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct DigestProgress {
    pub done: u64,
    pub total: u64,
}

/// A raw snapshot `digest_all` left alone, and why.
#[derive(Debug)]
pub struct Skipped {
    pub id: SnapshotId,
    pub udid: String,
    pub reason: DigestError,
}

/// Digests one raw snapshot with its phone's backup `password`, under the writer lock (purpose
/// digest). A wrong password changes nothing. See `digest_locked` for the order of writes.
pub fn digest(
    repo: &mut Repository,
    env: &dyn LockEnv,
    raw: &SnapshotId,
    password: &Password,
    progress: &mut dyn FnMut(DigestProgress),
) -> Result<DigestReport, DigestError> {
    let guard = repo.lock_writer(LockPurpose::Digest, env)?;
    // An interrupted digest of this snapshot: its record is durable, only the retirement is left.
    let listing = repo.snapshot_listing()?;
    let mut done = if listing.superseded_raw.contains(raw) {
        retire_superseded(repo, &listing)?
    } else {
        Vec::new()
    };
    let r = match done.iter().position(|r| r.raw == *raw) {
        Some(i) => done.swap_remove(i),
        None => digest_locked(repo, raw, password, &mut KekCache::default(), progress)?,
    };
    guard.release()?;
    Ok(r)
}

/// Digests every raw snapshot `password` opens (one writer lock for all); the others are
/// skipped with the reason. Raw records left superseded by an interrupted run are deleted first.
pub fn digest_all(
    repo: &mut Repository,
    env: &dyn LockEnv,
    password: &Password,
    progress: &mut dyn FnMut(&SnapshotId, DigestProgress),
) -> Result<(Vec<DigestReport>, Vec<Skipped>), DigestError> {
    let guard = repo.lock_writer(LockPurpose::Digest, env)?;
    let listing = repo.snapshot_listing()?;
    let mut done = retire_superseded(repo, &listing)?;
    let mut skipped = Vec::new();
    let mut keks = KekCache::default();
    for (id, rec) in listing
        .snapshots
        .iter()
        .filter(|(_, r)| r.kind == SnapshotKind::Raw)
    {
        match digest_locked(repo, id, password, &mut keks, &mut |p| progress(id, p)) {
            Ok(r) => done.push(r),
            Err(
                e @ (DigestError::WrongPassword(_)
                | DigestError::BadBackup { .. }
                | DigestError::NotRaw(_)),
            ) => skipped.push(Skipped {
                id: *id,
                udid: rec.device.udid.clone(),
                reason: e,
            }),
            Err(e) => return Err(e),
        }
    }
    guard.release()?;
    Ok((done, skipped))
}

/// Deletes the raw records an earlier run superseded (their digested records are committed),
/// moving their pins over; returns what was finished.
fn retire_superseded(
    repo: &mut Repository,
    listing: &SnapshotListing,
) -> Result<Vec<DigestReport>, DigestError> {
    let mut out = Vec::new();
    for raw in &listing.superseded_raw {
        let Some((id, rec)) = listing
            .snapshots
            .iter()
            .find(|(_, r)| r.digested_from == *raw)
        else {
            continue;
        };
        retire_raw(repo, raw, id)?;
        out.push(DigestReport {
            raw: *raw,
            digested: *id,
            udid: rec.device.udid.clone(),
            files_plain: 0,
            files_raw: 0,
            bytes_plain: 0,
            already: true,
        });
    }
    Ok(out)
}

/// The raw record goes once the digested one exists (§9.4): its pin moves to the digested
/// record, the record is deleted and `snapshots/` fsynced, then its pin. Its chunks are garbage
/// for the next `prune`.
fn retire_raw(
    repo: &mut Repository,
    raw: &SnapshotId,
    digested: &SnapshotId,
) -> Result<(), DigestError> {
    let pins = repo.list_pins()?;
    let pinned = |id: &SnapshotId| pins.iter().find(|(p, _)| p == id).map(|(_, p)| p);
    if let (Some(pin), None) = (pinned(raw), pinned(digested)) {
        repo.pin(digested, pin)?;
    }
    let storage = repo.storage().clone();
    match storage.delete(&format!("snapshots/{raw}")) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(RepoError::from(e).into()),
    }
    storage.sync_dir("snapshots").map_err(RepoError::from)?;
    if pinned(raw).is_some() {
        repo.unpin(raw)?;
    }
    repo.resync_index()?;
    Ok(())
}

/// The digest itself, the writer lock held. Reads the raw record's Manifest.plist and unlocks its
/// keybag (a wrong password stops here, before any write), decrypts the raw Manifest.db into
/// local scratch, then writes the digested table in Manifest.db's (domain, relativePath) order:
/// each file row's raw data file decrypted with its own key through `put_plaintext` when §9.2
/// allows (else kept raw, sharing the raw chunks), then the data files without a row, raw. The
/// record (`digested_from` = the raw id) is committed as in §15.1, then the raw one deleted.
/// Memory: the raw table's streams by fileID live in a scratch map; one piece of a file at a time.
fn digest_locked(
    repo: &mut Repository,
    raw: &SnapshotId,
    password: &Password,
    keks: &mut KekCache,
    progress: &mut dyn FnMut(DigestProgress),
) -> Result<DigestReport, DigestError> {
    let rec = repo.load_snapshot(raw)?;
    if rec.kind != SnapshotKind::Raw {
        return Err(DigestError::NotRaw(*raw));
    }
    let bad = |what: &str, reason: String| DigestError::BadBackup {
        id: *raw,
        what: what.into(),
        reason,
    };

    // Keys, before anything is written.
    let manifest = {
        let top = rec
            .top("Manifest.plist")
            .ok_or_else(|| bad("Manifest.plist", "missing".into()))?;
        if top.stream.length > PLIST_MAX {
            return Err(bad("Manifest.plist", "too large".into()));
        }
        let mut bytes = Vec::new();
        repo.read_stream(&top.stream, &mut bytes)?;
        ManifestPlist::from_bytes(&bytes).map_err(|e| bad("Manifest.plist", e.to_string()))?
    };
    if !manifest.is_encrypted() {
        return Err(bad("Manifest.plist", "the backup is not encrypted".into()));
    }
    let kb = Keybag::decode(manifest.backup_keybag()).map_err(|e| bad("keybag", e.to_string()))?;
    let unlocked = match keks.unlock(&kb, password) {
        Ok(k) => k,
        Err(KeybagError::WrongPassword) => return Err(DigestError::WrongPassword(*raw)),
        Err(e) => return Err(bad("keybag", e.to_string())),
    };
    let manifest_key = super::ingest::manifest_key(&unlocked, &manifest)
        .ok_or_else(|| bad("ManifestKey", "missing or does not unwrap".into()))?;

    // Manifest.db's plaintext into local scratch (never on the drive).
    let db_top = rec
        .top("Manifest.db")
        .ok_or_else(|| bad("Manifest.db", "missing".into()))?
        .clone();
    let scratch = tempfile::Builder::new()
        .prefix("cradle-digest-")
        .tempdir()
        .map_err(DigestError::Scratch)?;
    let db_plain = scratch.path().join("Manifest.db");
    let db_exact = {
        let mut out =
            io::BufWriter::new(fs::File::create(&db_plain).map_err(DigestError::Scratch)?);
        let exact = match db_top.encoding {
            TopEncoding::Raw => decrypt_db(
                repo.open_stream(&db_top.stream),
                Some(&*manifest_key),
                &mut out,
                db_top.stream.length,
            )
            .map_err(|e| bad("Manifest.db", e.to_string()))?,
            _ => return Err(bad("Manifest.db", "not stored raw".into())),
        };
        io::Write::flush(&mut out).map_err(DigestError::Scratch)?;
        exact
    };
    let db = ManifestDb::open(&db_plain).map_err(|e| bad("Manifest.db", e.to_string()))?;

    // The raw data files by fileID, in a scratch map (memory stays flat whatever the count).
    let scratch_map = super::scratch::Scratch::new()?;
    let raw_files = scratch_map.tree("raw")?;
    let mut total = 0u64;
    {
        let mut rd = repo.file_table_reader(&rec.file_table);
        let mut buf = Vec::new();
        while let Some(e) = rd.next_entry(repo)? {
            match e.content {
                Content::Raw(s) if e.row.is_none() => {
                    buf.clear();
                    s.encode(&mut buf);
                    raw_files.insert(e.file_id, &buf)?;
                    total += 1;
                }
                _ => return Err(bad("file table", "an entry is not a raw data file".into())),
            }
        }
    }
    let stream_of = |v: Vec<u8>| -> Result<Stream, DigestError> {
        let mut r = super::codec::Reader::new(&v);
        let s = Stream::decode(&mut r).map_err(|e| bad("scratch map", e.to_string()))?;
        r.finish().map_err(|e| bad("scratch map", e.to_string()))?;
        Ok(s)
    };
    let mut w = Work {
        repo,
        unlocked: &unlocked,
        done: 0,
        total,
        since_flush: 0,
        files_plain: 0,
        files_raw: 0,
        bytes_plain: 0,
        progress,
    };
    let mut writer = w.repo.file_table_writer();
    let mut last: Option<(String, String)> = None;
    db.for_each_row_by_path(|row| -> Result<(), DigestError> {
        let row = row.map_err(|e| bad("Manifest.db", e.to_string()))?;
        if last
            .as_ref()
            .is_some_and(|(d, p)| *d == row.domain && *p == row.relative_path)
        {
            // A repeated domain/path: the first row counts, as in ingest.
            return Ok(());
        }
        last = Some((row.domain.clone(), row.relative_path.clone()));
        let Some(fid) = hex20(&row.file_id) else {
            tracing::warn!("skipping a Manifest.db row with a malformed fileID");
            return Ok(());
        };
        let data = raw_files.remove(fid)?.map(stream_of).transpose()?;
        let content = if row.flags != FLAG_FILE {
            if data.is_some() {
                // Ingest would drop that data file; digest must keep every byte of the export.
                return Err(bad(
                    "Manifest.db",
                    "a data file is named after a directory or link row".into(),
                ));
            }
            Content::None
        } else {
            match data {
                None => Content::Absent,
                Some(s) => w.file(&row.file, s)?,
            }
        };
        let e = FileEntry {
            file_id: fid,
            row: Some(Row {
                flags: row.flags,
                domain: row.domain,
                relative_path: row.relative_path,
                mbfile: row.file.encode(),
            }),
            content,
        };
        writer.push(w.repo, &e)?;
        Ok(())
    })?;
    // Data files without a row: kept as received, by fileID.
    for kv in raw_files.iter() {
        let (k, v) = kv?;
        let fid: [u8; 20] = k
            .as_slice()
            .try_into()
            .map_err(|_| bad("scratch map", "a key is not a fileID".into()))?;
        let s = stream_of(v)?;
        w.files_raw += 1;
        w.tick();
        writer.push(
            w.repo,
            &FileEntry {
                file_id: fid,
                row: None,
                content: Content::Raw(s),
            },
        )?;
    }

    // Top files: Manifest.db as plaintext when it re-encrypts exactly, the rest as they are.
    let mut top_files: Vec<TopFile> = Vec::with_capacity(rec.top_files.len());
    for t in &rec.top_files {
        if t.name == "Manifest.db" && db_exact {
            let f = fs::File::open(&db_plain).map_err(DigestError::Scratch)?;
            let s = w.repo.put_stream(BufReader::new(f), BlobKind::Data)?;
            top_files.push(TopFile {
                name: t.name.clone(),
                encoding: TopEncoding::ManifestDbPlain,
                stream: s,
            });
        } else {
            top_files.push(t.clone());
        }
    }
    let summary = writer.finish(w.repo)?;
    let record = SnapshotRecord {
        kind: SnapshotKind::Digested,
        digested_from: *raw,
        backup_kek: BackupKek(*unlocked.kek()),
        top_files,
        counts: summary.counts,
        content_bytes: summary.content_bytes,
        file_table: summary.table,
        ..rec.clone()
    };
    let (files_plain, files_raw, bytes_plain) = (w.files_plain, w.files_raw, w.bytes_plain);
    let repo = w.repo;
    drop(db);
    drop(scratch);
    drop(raw_files);
    drop(scratch_map);
    // §15.1: packs durable, then the record; only then does the raw record go.
    let id = repo.commit_snapshot(&record)?;
    retire_raw(repo, raw, &id)?;
    Ok(DigestReport {
        raw: *raw,
        digested: id,
        udid: rec.device.udid,
        files_plain,
        files_raw,
        bytes_plain,
        already: false,
    })
}

struct Work<'a, 'p> {
    repo: &'a mut Repository,
    unlocked: &'a UnlockedKeybag,
    done: u64,
    total: u64,
    since_flush: u64,
    files_plain: u64,
    files_raw: u64,
    bytes_plain: u64,
    progress: &'p mut dyn FnMut(DigestProgress),
}

impl Work<'_, '_> {
    fn tick(&mut self) {
        self.done += 1;
        (self.progress)(DigestProgress {
            done: self.done,
            total: self.total,
        });
    }

    /// One file row's data file: plaintext when its key opens it exactly, else the raw stream.
    fn file(
        &mut self,
        mbfile: &crate::ios_backup::mbfile::MbFile,
        raw: Stream,
    ) -> Result<Content, DigestError> {
        self.tick();
        let Some(key) = file_key(self.unlocked, mbfile) else {
            self.files_raw += 1;
            return Ok(Content::Raw(raw));
        };
        let mut cursor = StreamCursor::new(raw.clone());
        let mut next = |repo: &Repository, buf: &mut Vec<u8>| -> Result<bool, RepoError> {
            match cursor.next_chunk(repo)? {
                Some(c) => {
                    *buf = c;
                    Ok(true)
                }
                None => Ok(false),
            }
        };
        match put_plaintext(self.repo, &key, raw.length, &mut next)? {
            Some(s) => {
                self.files_plain += 1;
                self.bytes_plain += s.length;
                self.since_flush += s.length;
                if self.since_flush >= BATCH_BYTES {
                    self.repo.flush()?;
                    self.since_flush = 0;
                }
                Ok(Content::Plain(s))
            }
            None => {
                tracing::info!("a data file does not decrypt exactly: kept raw");
                self.files_raw += 1;
                Ok(Content::Raw(raw))
            }
        }
    }
}
