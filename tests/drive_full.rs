//! A full drive during a backup into a repository, at the library level over the in-memory
//! crash simulator: the phone is told the truth about free space (and refuses a backup that
//! cannot fit, ErrorCode 105), a drive that fills up during the upload or during the ingest
//! fails with an error that says the drive is full, nothing committed is lost, and once space is
//! freed the next backup completes (an ingest cut short by the full drive is finished first).

use cradle::backup2::run::{run_backup, RunOptions};
use cradle::backup2::target::{
    BackupPath, BackupTarget, DirEntry, EntryMeta, TargetError, UploadSink,
};
use cradle::lockdown::{HostIdentity, MemoryPairStore};
use cradle::password::Password;
use cradle::sim::phone::Profile;
use cradle::sim::simulator::{EncryptionChoice, Simulator, SimulatorOptions};
use cradle::store::ids::SnapshotId;
use cradle::store::ingest::{ingest, recover_and_ingest};
use cradle::store::repo::{InitOptions, Repository};
use cradle::store::repo_target::says_no_space;
use cradle::store::repo_target::{RepoTarget, RESERVE_BASE};
use cradle::store::storage::CrashStorage;
use std::io::Read;
use std::sync::Arc;

const PASSWORD: &str = "drive full password";

fn sim(day: u32) -> Arc<Simulator> {
    let mut opts = SimulatorOptions::new(13, Profile::Tiny, day);
    opts.dpic = 1000;
    opts.encryption = EncryptionChoice::On(Password::new(PASSWORD));
    Simulator::new(opts).unwrap()
}

/// A target that answers GetFreeDiskSpace truthfully and then lets the drive fill up (another
/// writer on the same drive): only `left` more bytes fit from then on.
struct FillsUp<'a, 'r> {
    inner: &'a mut RepoTarget<'r>,
    storage: CrashStorage,
    left: u64,
    told: Option<u64>,
}

impl BackupTarget for FillsUp<'_, '_> {
    fn open_read(&mut self, p: &BackupPath) -> Result<Box<dyn Read + '_>, TargetError> {
        self.inner.open_read(p)
    }
    fn create_file(&mut self, p: &BackupPath) -> Result<Box<dyn UploadSink + '_>, TargetError> {
        self.inner.create_file(p)
    }
    fn create_dir_all(&mut self, p: &BackupPath) -> Result<(), TargetError> {
        self.inner.create_dir_all(p)
    }
    fn move_item(&mut self, a: &BackupPath, b: &BackupPath) -> Result<(), TargetError> {
        self.inner.move_item(a, b)
    }
    fn remove(&mut self, p: &BackupPath) -> Result<(), TargetError> {
        self.inner.remove(p)
    }
    fn copy_item(&mut self, a: &BackupPath, b: &BackupPath) -> Result<(), TargetError> {
        self.inner.copy_item(a, b)
    }
    fn list_dir(&mut self, p: &BackupPath) -> Result<Vec<DirEntry>, TargetError> {
        self.inner.list_dir(p)
    }
    fn stat(&mut self, p: &BackupPath) -> Result<Option<EntryMeta>, TargetError> {
        self.inner.stat(p)
    }
    fn free_space(&mut self) -> Result<u64, TargetError> {
        let told = self.inner.free_space()?;
        self.told = Some(told);
        self.storage.fail_after_bytes(self.left);
        Ok(told)
    }
}

struct Rig {
    storage: CrashStorage,
    repo: Repository,
    pairs: MemoryPairStore,
    host: HostIdentity,
}

impl Rig {
    fn new() -> Rig {
        let storage = CrashStorage::new();
        let repo = Repository::init(
            Arc::new(storage.clone()),
            &Password::new(PASSWORD),
            &InitOptions::for_tests(),
        )
        .unwrap();
        Rig {
            storage,
            repo,
            pairs: MemoryPairStore::new(),
            host: HostIdentity::generate(None),
        }
    }

    /// Room for the repository's reserve plus `extra` bytes.
    fn room(&self, extra: u64) -> u64 {
        RESERVE_BASE + 2 * u64::from(self.repo.config().pack_target) + extra
    }

    /// Recovery, backup, ingest (as `cradle backup --to-repo`); `fill` lets the drive fill up
    /// after the phone asked for free space.
    fn backup(&mut self, day: u32, fill: Option<u64>) -> Result<SnapshotId, String> {
        let pw = Password::new(PASSWORD);
        recover_and_ingest(&mut self.repo, Some(&pw)).map_err(|e| format!("recovery: {e}"))?;
        let sim = sim(day);
        let phone = cradle::sim::attach_in_memory(sim.clone()).unwrap();
        let mut target = RepoTarget::start(&self.repo, sim.udid(), true).unwrap();
        let res = match fill {
            None => run_backup(
                &phone,
                &self.pairs,
                &self.host,
                &mut target,
                &RunOptions::default(),
                &mut |_| {},
            ),
            Some(left) => {
                let mut t = FillsUp {
                    inner: &mut target,
                    storage: self.storage.clone(),
                    left,
                    told: None,
                };
                let r = run_backup(
                    &phone,
                    &self.pairs,
                    &self.host,
                    &mut t,
                    &RunOptions::default(),
                    &mut |_| {},
                );
                assert!(t.told.is_some(), "the phone never asked for free space");
                r
            }
        };
        drop(phone);
        let session = match res {
            Ok(_) => target.finish().map_err(|e| format!("finish: {e}"))?,
            Err(e) => {
                let full = target.saw_no_space();
                let _ = target.abandon();
                return Err(if full {
                    format!("backup: drive full (the target saw it): {e}")
                } else {
                    full_or(&e, "backup")
                });
            }
        };
        ingest(&mut self.repo, session, Some(&pw))
            .map(|r| r.snapshot)
            .map_err(|e| full_or(&e, "ingest"))
    }

    fn exports(&self) -> Vec<(SnapshotId, Vec<u8>)> {
        let mut out = Vec::new();
        for id in self.repo.list_snapshots().unwrap() {
            let rec = self.repo.load_snapshot(&id).unwrap();
            let dir = tempfile::tempdir().unwrap();
            cradle::store::export::export(&self.repo, &rec, dir.path()).unwrap();
            out.push((id, digest_dir(dir.path())));
        }
        out
    }
}

fn digest_dir(p: &std::path::Path) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut stack = vec![p.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort();
    for f in files {
        h.update(f.strip_prefix(p).unwrap().to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).unwrap());
    }
    h.finalize().to_vec()
}

/// "drive full: …" when the error chain says so, else the text.
fn full_or(e: &(dyn std::error::Error + 'static), what: &str) -> String {
    if says_no_space(e) {
        format!("{what}: drive full: {e}")
    } else {
        format!("{what}: {e}")
    }
}

#[test]
fn the_phone_is_told_the_truth_and_refuses_a_backup_that_cannot_fit() {
    let mut rig = Rig::new();
    rig.backup(1, None).unwrap();
    let before = rig.exports();
    // 100 kB beyond the reserve: the phone needs megabytes, so it must refuse before sending.
    rig.storage.fail_after_bytes(rig.room(100_000));
    let told = {
        let sim = sim(2);
        let mut t = RepoTarget::start(&rig.repo, sim.udid(), true).unwrap();
        let told = t.free_space().unwrap();
        t.abandon().unwrap();
        told
    };
    assert!(told <= 100_000, "told {told} bytes free with 100000 left");
    let e = rig.backup(2, None).unwrap_err();
    assert!(
        e.contains("105") || e.contains("not enough free space"),
        "expected the phone's not-enough-space refusal: {e}"
    );
    assert_eq!(rig.exports(), before, "a committed snapshot changed");
    // Space freed: the next backup completes.
    rig.storage.unlimited_space();
    rig.backup(2, None).unwrap();
    assert_eq!(rig.repo.list_snapshots().unwrap().len(), 2);
    let now = rig.exports();
    assert!(
        before.iter().all(|b| now.contains(b)),
        "the first snapshot changed"
    );
}

#[test]
fn a_drive_that_fills_up_during_the_upload_fails_clearly_and_loses_nothing() {
    let mut rig = Rig::new();
    rig.backup(1, None).unwrap();
    let before = rig.exports();
    for left in [0u64, 5_000, 200_000] {
        let e = rig.backup(2, Some(left)).unwrap_err();
        assert!(e.contains("drive full"), "left {left}: {e}");
        rig.storage.unlimited_space();
        assert_eq!(
            rig.exports(),
            before,
            "left {left}: a committed snapshot changed"
        );
    }
    // After a power cut as well, what was committed stays.
    rig.storage.crash();
    rig.repo = Repository::open(Arc::new(rig.storage.clone()), &Password::new(PASSWORD)).unwrap();
    assert_eq!(rig.exports(), before);
    rig.backup(2, None).unwrap();
    assert_eq!(rig.repo.list_snapshots().unwrap().len(), 2);
}

#[test]
fn a_drive_that_fills_up_during_the_ingest_fails_clearly_and_the_next_run_finishes_it() {
    let mut rig = Rig::new();
    rig.backup(1, None).unwrap();
    let before = rig.exports();
    let pw = Password::new(PASSWORD);
    for (day, left) in [(2u32, 0u64), (3, 20_000), (4, 60_000)] {
        // The upload fits; the drive fills up as ingest packs the files (a new day each time,
        // so there is something new to store).
        let sim = sim(day);
        let phone = cradle::sim::attach_in_memory(sim.clone()).unwrap();
        let mut target = RepoTarget::start(&rig.repo, sim.udid(), true).unwrap();
        run_backup(
            &phone,
            &rig.pairs,
            &rig.host,
            &mut target,
            &RunOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        drop(phone);
        let session = target.finish().unwrap();
        rig.storage.fail_after_bytes(left);
        let e = ingest(&mut rig.repo, session, Some(&pw)).unwrap_err();
        let msg = full_or(&e, "ingest");
        assert!(msg.contains("drive full"), "left {left}: {msg}");
        rig.storage.unlimited_space();
        // Dropped after a write error, as the store's docs ask; reopened for the next run.
        rig.repo = Repository::open(Arc::new(rig.storage.clone()), &pw).unwrap();
        let now = rig.exports();
        assert!(
            before.iter().all(|b| now.contains(b)),
            "left {left}: a committed snapshot changed"
        );
        let before = now;
        // The next run finishes the received backup first, then backs up again.
        let done = recover_and_ingest(&mut rig.repo, Some(&pw)).unwrap();
        assert_eq!(
            done.len(),
            1,
            "left {left}: the cut-short ingest was not finished"
        );
        let n = rig.repo.list_snapshots().unwrap().len();
        rig.backup(day, None).unwrap();
        assert_eq!(rig.repo.list_snapshots().unwrap().len(), n + 1);
        let now = rig.exports();
        assert!(
            before.iter().all(|b| now.contains(b)),
            "the first snapshot changed"
        );
    }
}
