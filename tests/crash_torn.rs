//! Power cuts during a backup into a repository, at the library level: the simulated phone backs
//! up over the in-memory usbmux link into a `RepoTarget` on the in-memory crash simulator, then
//! ingest runs, as `cradle backup --to-repo` does. The drive is pulled after a seeded random
//! number of fsyncs or writes, and the power cut keeps only what was fsynced, sometimes with the
//! last write torn at a random length.
//!
//! After each cut: the repository opens, every snapshot committed before reads back identical,
//! a snapshot whose commit survived is exactly the phone's backup, recovery plus the next backup
//! complete, and everything survives one more power cut after that. The guarded failure: a cut
//! between two steps of the commit order (packs, journal, record, cleanup) that leaves a
//! snapshot pointing at chunks that never became durable, or a staging session that blocks the
//! next backup.
//!
//! `CRADLE_CRASH_SEED=N` replays a schedule exactly.

mod common;

use common::rng::{crash_seed, Rng};
use common::{phone_files, read_tree, TreeEntry};
use cradle::backup2::run::{run_backup, RunOptions};
use cradle::lockdown::{HostIdentity, MemoryPairStore};
use cradle::password::Password;
use cradle::sim::phone::Profile;
use cradle::sim::simulator::{EncryptionChoice, Simulator, SimulatorOptions};
use cradle::store::ids::SnapshotId;
use cradle::store::ingest::{ingest, recover_and_ingest};
use cradle::store::repo::{InitOptions, Repository};
use cradle::store::repo_target::RepoTarget;
use cradle::store::storage::CrashStorage;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const PASSWORD: &str = "crash torn password";
const PHONE_SEED: u64 = 9;
/// Default schedule seed (override with CRADLE_CRASH_SEED).
const DEFAULT_SEED: u64 = 0x7042_c0de;
/// Cuts per day (three days: 36 in all).
const CUTS: usize = 12;

type Tree = BTreeMap<String, TreeEntry>;

/// The simulated phone of one day, with the host that pairs with it.
struct PhoneDay {
    sim: Arc<Simulator>,
    pairs: MemoryPairStore,
    host: HostIdentity,
}

impl PhoneDay {
    fn new(day: u32) -> Self {
        let mut opts = SimulatorOptions::new(PHONE_SEED, Profile::Tiny, day);
        opts.dpic = 1000;
        opts.encryption = EncryptionChoice::On(Password::new(PASSWORD));
        PhoneDay {
            sim: Simulator::new(opts).unwrap(),
            pairs: MemoryPairStore::new(),
            host: HostIdentity::generate(None),
        }
    }

    /// What `cradle backup --to-repo` does after opening: finish sessions a crash left, back
    /// up, ingest. Returns the new snapshot, or the first error as text.
    fn backup(&self, repo: &mut Repository) -> Result<SnapshotId, String> {
        let pw = Password::new(PASSWORD);
        recover_and_ingest(repo, Some(&pw)).map_err(|e| format!("recovery: {e}"))?;
        let phone = cradle::sim::attach_in_memory(self.sim.clone()).map_err(|e| e.to_string())?;
        let mut target =
            RepoTarget::start(repo, self.sim.udid(), true).map_err(|e| format!("start: {e}"))?;
        let res = run_backup(
            &phone,
            &self.pairs,
            &self.host,
            &mut target,
            &RunOptions::default(),
            &mut |_| {},
        );
        drop(phone);
        let session = match res {
            Ok(_) => target.finish().map_err(|e| format!("finish: {e}"))?,
            Err(e) => {
                let _ = target.abandon();
                return Err(format!("backup: {e}"));
            }
        };
        ingest(repo, session, Some(&pw))
            .map(|r| r.snapshot)
            .map_err(|e| format!("ingest: {e}"))
    }
}

fn open(s: &CrashStorage) -> Repository {
    Repository::open(Arc::new(s.clone()), &Password::new(PASSWORD))
        .unwrap_or_else(|e| panic!("the repository does not open after the cut: {e}"))
}

/// Exports a snapshot through the same code as `cradle export`, read back as a tree.
fn export_tree(repo: &Repository, id: &SnapshotId, scratch: &Path) -> Tree {
    let rec = repo.load_snapshot(id).unwrap();
    let out = scratch.join(format!("export-{}", &id.to_hex()[..12]));
    cradle::store::export::export(repo, &rec, &out).unwrap_or_else(|e| panic!("export {id}: {e}"));
    let t = read_tree(&out);
    std::fs::remove_dir_all(&out).unwrap();
    t
}

/// Snapshots by id and their exports, as the repository lists them now.
fn all_exports(repo: &Repository, scratch: &Path) -> BTreeMap<SnapshotId, Tree> {
    repo.list_snapshots()
        .unwrap()
        .into_iter()
        .map(|id| {
            let t = export_tree(repo, &id, scratch);
            (id, t)
        })
        .collect()
}

/// Days 1..day-1 backed up without a cut, then `CUTS` cuts into day `day`'s backup and ingest.
fn cuts_into_day(day: u32) {
    let seed = crash_seed(DEFAULT_SEED) ^ u64::from(day).wrapping_mul(0x51_7cc1_b727_220a);
    eprintln!(
        "crash_torn day {day}: seed {seed} (CRADLE_CRASH_SEED={})",
        crash_seed(DEFAULT_SEED)
    );
    let mut rng = Rng(seed);
    let scratch = tempfile::tempdir().unwrap();
    let base = CrashStorage::new();
    let mut repo = Repository::init(
        Arc::new(base.clone()),
        &Password::new(PASSWORD),
        &InitOptions::for_tests(),
    )
    .unwrap();
    for d in 1..day {
        PhoneDay::new(d).backup(&mut repo).unwrap();
    }
    drop(repo);
    let phone = PhoneDay::new(day);
    let known = all_exports(&open(&base), scratch.path());

    // A clean run of the day on a copy: its fsync and write counts bound the cut points, its
    // snapshot is what a surviving commit must export.
    let clean = base.fork();
    let (f0, w0) = (clean.fsync_count(), clean.write_count());
    let mut repo = open(&clean);
    let id = phone.backup(&mut repo).unwrap();
    let want = phone_files(&export_tree(&repo, &id, scratch.path()));
    let fsyncs = clean.fsync_count() - f0;
    let writes = clean.write_count() - w0;
    drop(repo);

    let mut log = Vec::new();
    let mut cuts = 0;
    for _ in 0..CUTS {
        let s = base.fork();
        let by_fsync = rng.next().is_multiple_of(2);
        let at = if by_fsync {
            rng.range(1, fsyncs)
        } else {
            rng.range(1, writes)
        };
        let torn = if rng.next().is_multiple_of(2) {
            0
        } else {
            rng.range(1, 64 * 1024) as usize
        };
        let what = format!(
            "day {day}: drive pulled after {at} {}, {torn} torn bytes kept",
            if by_fsync { "fsyncs" } else { "writes" }
        );
        let fail = |m: String| -> ! { panic!("{what}: {m}\nearlier: {log:?}") };
        let mut repo = open(&s);
        if by_fsync {
            s.pull_after_fsyncs(at);
        } else {
            s.pull_after_writes(at);
        }
        let res = phone.backup(&mut repo);
        drop(repo);
        if let Ok(id) = res {
            fail(format!("the backup completed ({id}) with the drive pulled"));
        }
        s.crash_torn(torn);
        cuts += 1;

        let mut repo = open(&s);
        let now = all_exports(&repo, scratch.path());
        for (id, t) in &known {
            match now.get(id) {
                None => fail(format!("snapshot {id} vanished")),
                Some(n) if n != t => fail(format!("snapshot {id} reads differently")),
                _ => {}
            }
        }
        for (id, t) in now.iter().filter(|(id, _)| !known.contains_key(id)) {
            if phone_files(t) != want {
                fail(format!(
                    "the surviving snapshot {id} is not the phone's day {day}"
                ));
            }
        }
        let id = phone
            .backup(&mut repo)
            .unwrap_or_else(|e| fail(format!("the next backup failed: {e}")));
        drop(repo);
        // Everything the completed backup reported is durable.
        s.crash();
        let repo = open(&s);
        let after = all_exports(&repo, scratch.path());
        match after.get(&id) {
            Some(t) if phone_files(t) == want => {}
            Some(_) => fail(format!(
                "the next backup's snapshot {id} is not the phone's day"
            )),
            None => fail(format!("the next backup's snapshot {id} was not durable")),
        }
        for (id, t) in &now {
            if after.get(id) != Some(t) {
                fail(format!("snapshot {id} changed after the next backup"));
            }
        }
        log.push(what);
    }
    eprintln!("crash_torn day {day}: {cuts} cuts within {fsyncs} fsyncs / {writes} writes: ok");
}

#[test]
fn power_cuts_during_the_first_backup() {
    cuts_into_day(1);
}

#[test]
fn power_cuts_during_an_incremental_backup() {
    cuts_into_day(2);
}

#[test]
fn power_cuts_during_a_third_backup() {
    cuts_into_day(3);
}
