//! Repository maintenance over the store API: `check` (clean, a flipped byte, a deleted pack, a
//! subset), `prune` (retention, repacking, pins, a crash at every step), `stats` with known data,
//! password changes, and the index rebuilt when deleted or damaged.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::store::{init_on, open_on, record, write_table, PW, UDID};
use cradle::password::Password;
use cradle::store::check::{check, CheckOptions, CheckReport, ReadData};
use cradle::store::ids::SnapshotId;
use cradle::store::keyring;
use cradle::store::lock::{HostFacts, LockEnv, SystemLockEnv};
use cradle::store::prune::{prune, Policy, PruneOptions};
use cradle::store::repo::{RepoError, Repository};
use cradle::store::seal::BlobKind;
use cradle::store::snapshot::Pin;
use cradle::store::stats::stats;
use cradle::store::storage::{CrashStorage, LocalStorage, Storage};
use cradle::store::table::{Content, FileEntry, Row, FLAG_FILE};

const DAY: i64 = 86_400_000;
const BASE: i64 = 1_764_000_000_000; // 2025-11-24

/// A lock environment in which every earlier holder's process is gone (same host and boot, dead
/// pid), so a lock left by a crash is stale; with `host`, this process is on another machine.
struct Holder {
    host: Option<&'static str>,
}

/// This host after a crash.
const AFTER_CRASH: Holder = Holder { host: None };
/// Another machine, its lock just taken (rule 3 keeps it for 30 minutes).
const LAPTOP: Holder = Holder {
    host: Some("laptop-elsewhere"),
};

impl LockEnv for Holder {
    fn facts(&self) -> HostFacts {
        let mine = SystemLockEnv.facts();
        HostFacts {
            hostname: self.host.map_or(mine.hostname.clone(), String::from),
            ..mine
        }
    }
    fn pid_start(&self, _pid: u32) -> Option<u64> {
        None
    }
    fn wait_ms(&self, _ms: u64) {}
    fn now_ms(&self) -> i64 {
        SystemLockEnv.now_ms()
    }
    fn clock_synced(&self) -> bool {
        SystemLockEnv.clock_synced()
    }
}

fn data(seed: &str, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn file_id(path: &str) -> [u8; 20] {
    let mut id = [0u8; 20];
    id.copy_from_slice(&blake3::hash(path.as_bytes()).as_bytes()[..20]);
    id
}

/// Commits a snapshot of `files` (path under HomeDomain, content), dated `BASE + day` days.
fn snapshot(repo: &mut Repository, udid: &str, day: i64, files: &[(&str, &[u8])]) -> SnapshotId {
    let mut sorted: Vec<_> = files.to_vec();
    sorted.sort();
    let mut entries = Vec::new();
    for (p, content) in sorted {
        let st = repo.put_stream(content, BlobKind::Data).unwrap();
        entries.push(FileEntry {
            file_id: file_id(p),
            row: Some(Row {
                flags: FLAG_FILE,
                domain: "HomeDomain".into(),
                relative_path: p.into(),
                mbfile: b"mbfile".to_vec(),
            }),
            content: Content::Plain(st),
        });
    }
    let t = write_table(repo, &entries);
    let manifest = format!("<plist>{udid} {day}</plist>");
    let rec = record(repo, udid, BASE + day * DAY, manifest.as_bytes(), &t);
    repo.commit_snapshot(&rec).unwrap()
}

/// Every file of a snapshot, read back (chunk ids verified).
fn read_all(repo: &Repository, id: &SnapshotId) -> Result<BTreeMap<String, Vec<u8>>, RepoError> {
    let rec = repo.load_snapshot(id)?;
    let mut out = BTreeMap::new();
    for t in &rec.top_files {
        let mut b = Vec::new();
        repo.read_stream(&t.stream, &mut b)?;
        out.insert(t.name.clone(), b);
    }
    let mut r = repo.file_table_reader(&rec.file_table);
    while let Some(e) = r.next_entry(repo)? {
        if let (Some(row), Some(s)) = (&e.row, e.content.stream()) {
            let mut b = Vec::new();
            repo.read_stream(s, &mut b)?;
            out.insert(row.relative_path.clone(), b);
        }
    }
    Ok(out)
}

fn file_stream(repo: &Repository, id: &SnapshotId, path: &str) -> cradle::store::stream::Stream {
    let rec = repo.load_snapshot(id).unwrap();
    let mut r = repo.file_table_reader(&rec.file_table);
    while let Some(e) = r.next_entry(repo).unwrap() {
        if e.row.as_ref().is_some_and(|r| r.relative_path == path) {
            return e.content.stream().unwrap().clone();
        }
    }
    panic!("no {path}");
}

/// `check --read-data` of the whole repository.
fn check_all(repo: &Repository) -> CheckReport {
    check(
        repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
        &mut |_| {},
    )
    .unwrap()
}

struct Scenario {
    s: CrashStorage,
    /// Day 0: a (200 kB), b (50 kB). Day 1: b, c (100 kB). Day 2: b, c, d (30 kB).
    ids: Vec<SnapshotId>,
    a: Vec<u8>,
    b: Vec<u8>,
    c: Vec<u8>,
    d: Vec<u8>,
}

fn scenario() -> Scenario {
    let s = CrashStorage::new();
    let mut repo = init_on(Arc::new(s.clone()));
    let (a, b, c, d) = (
        data("a", 200_000),
        data("b", 50_000),
        data("c", 100_000),
        data("d", 30_000),
    );
    let ids = vec![
        snapshot(&mut repo, UDID, 0, &[("a.bin", &a), ("b.bin", &b)]),
        snapshot(&mut repo, UDID, 1, &[("b.bin", &b), ("c.bin", &c)]),
        snapshot(
            &mut repo,
            UDID,
            2,
            &[("b.bin", &b), ("c.bin", &c), ("d.bin", &d)],
        ),
    ];
    Scenario { s, ids, a, b, c, d }
}

#[test]
fn check_clean_repository_is_ok() {
    let sc = scenario();
    let repo = open_on(Arc::new(sc.s.clone()));
    let mut calls = 0;
    let r = check(
        &repo,
        &CheckOptions {
            read_data: ReadData::All,
        },
        &mut |_| calls += 1,
    )
    .unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!(r.snapshots, 3);
    assert_eq!(r.files, 7);
    assert!(r.packs_read > 0 && r.packs_read == r.packs);
    assert!(r.blobs_read > 50);
    assert!(r.index_consistent);
    assert!(calls > 0, "progress is reported");
}

#[test]
fn check_read_data_names_the_damaged_snapshots_and_files() {
    let sc = scenario();
    let repo = open_on(Arc::new(sc.s.clone()));
    // Flip one byte inside the first blob of b.bin (shared by all three snapshots).
    let st = file_stream(&repo, &sc.ids[0], "b.bin");
    let loc = repo.chunk_location(&st.ids[0]).unwrap();
    assert!(sc.s.tamper(&loc.pack.path(), |bytes| {
        bytes[loc.blob.offset as usize + 30] ^= 0x01;
    }));
    let repo = open_on(Arc::new(sc.s.clone()));
    // The structure still checks out: only reading the blob finds it.
    let r = check(&repo, &CheckOptions::default(), &mut |_| {}).unwrap();
    assert!(r.is_ok(), "{r:?}");
    let r = check_all(&repo);
    assert!(!r.is_ok());
    let mut named: Vec<SnapshotId> = r.damaged.iter().map(|d| d.id).collect();
    named.sort();
    let mut want = sc.ids.clone();
    want.sort();
    assert_eq!(named, want, "every snapshot holding b.bin");
    for d in &r.damaged {
        assert_eq!(d.udid, UDID);
        assert_eq!(d.device_name, "Test iPhone");
        assert!(d.phone_date.is_some());
        assert!(d.unreadable.is_none());
        let paths: Vec<&str> = d.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["HomeDomain/b.bin"], "{d:?}");
        assert!(d.files[0].reason.contains("damaged"), "{d:?}");
    }
    assert!(r
        .findings
        .iter()
        .any(|f| f.message.contains(&loc.pack.to_hex())));
    // The other files still read.
    let mut out = Vec::new();
    repo.read_stream(&file_stream(&repo, &sc.ids[2], "c.bin"), &mut out)
        .unwrap();
    assert_eq!(out, sc.c);
    let mut out = Vec::new();
    repo.read_stream(&file_stream(&repo, &sc.ids[2], "d.bin"), &mut out)
        .unwrap();
    assert_eq!(out, sc.d);
    assert!(repo
        .read_stream(&file_stream(&repo, &sc.ids[2], "b.bin"), &mut Vec::new())
        .is_err());
}

#[test]
fn check_reports_a_deleted_pack_without_reading_data() {
    let sc = scenario();
    let repo = open_on(Arc::new(sc.s.clone()));
    let st = file_stream(&repo, &sc.ids[2], "d.bin");
    let loc = repo.chunk_location(&st.ids[0]).unwrap();
    sc.s.delete(&loc.pack.path()).unwrap();
    let repo = open_on(Arc::new(sc.s.clone()));
    let r = check(&repo, &CheckOptions::default(), &mut |_| {}).unwrap();
    assert!(!r.is_ok());
    assert_eq!(r.damaged.len(), 1, "{:?}", r.damaged);
    assert_eq!(r.damaged[0].id, sc.ids[2]);
    assert!(r.damaged[0]
        .files
        .iter()
        .any(|f| f.path == "HomeDomain/d.bin" && f.reason.contains("in no pack")));
}

#[test]
fn check_subset_reads_some_packs_and_reports_debris_as_info() {
    let sc = scenario();
    sc.s.append("snapshots/leftover.tmp", b"x").unwrap();
    let repo = open_on(Arc::new(sc.s.clone()));
    let r = check(
        &repo,
        &CheckOptions {
            read_data: ReadData::Subset {
                percent: 30,
                seed: 1,
            },
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(r.packs_read >= 1 && r.packs_read < r.packs, "{r:?}");
    assert!(r
        .findings
        .iter()
        .all(|f| f.severity == cradle::store::check::Severity::Info));
    assert!(r
        .findings
        .iter()
        .any(|f| f.message.contains("leftover.tmp")));
}

#[test]
fn prune_keeps_the_policy_repacks_and_frees_space() {
    let sc = scenario();
    let mut repo = open_on(Arc::new(sc.s.clone()));
    let before: u64 = pack_bytes(&sc.s);
    let opts = keep_last_one(true);
    let dry = prune(&mut repo, &opts, &SystemLockEnv, &mut |_| {}).unwrap();
    assert_eq!(dry.forgotten.len(), 2);
    assert!(dry.bytes_freed > 150_000, "{dry:?}");
    assert_eq!(
        repo.list_snapshots().unwrap().len(),
        3,
        "dry run changes nothing"
    );
    assert_eq!(pack_bytes(&sc.s), before);

    let r = prune(
        &mut repo,
        &PruneOptions {
            dry_run: false,
            ..opts
        },
        &SystemLockEnv,
        &mut |_| {},
    )
    .unwrap();
    let mut gone = r.forgotten.clone();
    gone.sort();
    let mut want = vec![sc.ids[0], sc.ids[1]];
    want.sort();
    assert_eq!(gone, want);
    assert!(r.packs_deleted + r.packs_repacked > 0, "{r:?}");
    assert_eq!(repo.list_snapshots().unwrap(), vec![sc.ids[2]]);
    let after = pack_bytes(&sc.s);
    assert!(
        before - after > 150_000,
        "a.bin's 200 kB are freed: {before} -> {after}"
    );
    // What is kept reads back whole, after a power cut too.
    sc.s.crash();
    let repo = open_on(Arc::new(sc.s.clone()));
    let files = read_all(&repo, &sc.ids[2]).unwrap();
    assert_eq!(files["b.bin"], sc.b);
    assert_eq!(files["c.bin"], sc.c);
    assert_eq!(files["d.bin"], sc.d);
    let c = check_all(&repo);
    assert!(c.is_ok() && c.findings.is_empty(), "{c:?}");
}

#[test]
fn pins_survive_prune_and_unpin_releases() {
    let sc = scenario();
    let mut repo = open_on(Arc::new(sc.s.clone()));
    repo.pin(
        &sc.ids[0],
        &Pin {
            pinned_at: 5,
            note: "before the update".into(),
        },
    )
    .unwrap();
    let opts = keep_last_one(false);
    let r = prune(&mut repo, &opts, &SystemLockEnv, &mut |_| {}).unwrap();
    assert_eq!(r.forgotten, vec![sc.ids[1]]);
    let files = read_all(&repo, &sc.ids[0]).unwrap();
    assert_eq!(files["a.bin"], sc.a);
    assert_eq!(repo.list_pins().unwrap()[0].1.note, "before the update");
    repo.unpin(&sc.ids[0]).unwrap();
    let r = prune(&mut repo, &opts, &SystemLockEnv, &mut |_| {}).unwrap();
    assert_eq!(r.forgotten, vec![sc.ids[0]]);
    assert!(repo.list_pins().unwrap().is_empty());
    let c = check_all(&repo);
    assert!(c.is_ok() && c.findings.is_empty(), "{c:?}");
}

/// Prune options keeping the newest snapshot only.
fn keep_last_one(dry_run: bool) -> PruneOptions {
    PruneOptions {
        policy: Policy {
            keep_last: 1,
            ..Policy::default()
        },
        dry_run,
        ..PruneOptions::default()
    }
}

fn pack_bytes(s: &CrashStorage) -> u64 {
    s.file_names()
        .iter()
        .filter(|n| n.starts_with("packs/") && !n.ends_with(".tmp"))
        .map(|n| s.size(n).unwrap())
        .sum()
}

/// A power cut after every possible number of mutating operations of a prune (and, for writes,
/// a torn tail): every snapshot still listed reads back whole, the kept one always exists,
/// `check` finds no *must* violation, and the next prune finishes the job.
#[test]
fn prune_crash_at_every_step_leaves_every_snapshot_readable() {
    let opts = keep_last_one(false);
    let mut steps = 0;
    for k in 0..200u64 {
        let sc = scenario();
        let mut repo = open_on(Arc::new(sc.s.clone()));
        sc.s.pull_after_ops(k);
        let done = prune(&mut repo, &opts, &AFTER_CRASH, &mut |_| {}).is_ok();
        drop(repo);
        sc.s.crash_torn((k as usize * 7919) % 4096);
        let repo = open_on(Arc::new(sc.s.clone()));
        let listed = repo.list_snapshots().unwrap();
        assert!(listed.contains(&sc.ids[2]), "step {k}: the kept snapshot");
        for id in &listed {
            let files = read_all(&repo, id).unwrap_or_else(|e| panic!("step {k}: {id}: {e}"));
            assert_eq!(files["b.bin"], sc.b, "step {k}");
        }
        let files = read_all(&repo, &sc.ids[2]).unwrap();
        assert_eq!(files["c.bin"], sc.c);
        assert_eq!(files["d.bin"], sc.d);
        let c = check_all(&repo);
        assert!(c.is_ok(), "step {k}: {c:?}");
        // The next prune (after the crash, the old lock is stale) finishes.
        let mut repo = repo;
        prune(&mut repo, &opts, &AFTER_CRASH, &mut |_| {})
            .unwrap_or_else(|e| panic!("step {k}: second prune: {e}"));
        assert_eq!(repo.list_snapshots().unwrap(), vec![sc.ids[2]]);
        assert_eq!(
            read_all(&repo, &sc.ids[2]).unwrap()["b.bin"],
            sc.b,
            "step {k}"
        );
        let c = check(&repo, &CheckOptions::default(), &mut |_| {}).unwrap();
        assert!(c.is_ok() && c.findings.is_empty(), "step {k}: {c:?}");
        steps += 1;
        if done {
            break;
        }
    }
    eprintln!("prune crashed at {steps} points");
    assert!(
        steps > 8,
        "prune has more than eight mutating steps: {steps}"
    );
}

#[test]
fn stats_of_known_data() {
    let sc = scenario();
    let mut repo = open_on(Arc::new(sc.s.clone()));
    snapshot(
        &mut repo,
        "OTHER-PHONE",
        5,
        &[("e.bin", &data("e", 40_000))],
    );
    let st = stats(&repo, &mut |_| {}).unwrap();
    assert_eq!(st.snapshots, 4);
    assert_eq!(st.devices.len(), 2);
    let d = st.devices.iter().find(|d| d.udid == UDID).unwrap();
    assert_eq!(d.snapshots, 3);
    assert_eq!(d.latest, sc.ids[2]);
    assert_eq!(d.latest_logical_bytes, 180_000);
    assert_eq!(d.total_logical_bytes, 250_000 + 150_000 + 180_000);
    // Distinct content: a, b, c, d = 380 kB, stored once each (random bytes do not compress),
    // plus 40 bytes per blob and the small tables and plists.
    assert!(
        d.stored_bytes > 380_000 && d.stored_bytes < 400_000,
        "{}",
        d.stored_bytes
    );
    assert!((d.dedup_ratio - 580_000.0 / d.stored_bytes as f64).abs() < 1e-9);
    let o = st.devices.iter().find(|d| d.udid == "OTHER-PHONE").unwrap();
    assert_eq!(
        (o.snapshots, o.latest_logical_bytes, o.total_logical_bytes),
        (1, 40_000, 40_000)
    );
    assert_eq!(st.total_logical_bytes, 620_000);
    assert_eq!(st.pack_bytes, pack_bytes(&sc.s));
    assert!(st.pack_bytes > 420_000 && st.pack_bytes < 450_000, "{st:?}");
    assert!((st.dedup_ratio - 620_000.0 / st.pack_bytes as f64).abs() < 1e-9);
}

#[test]
fn password_change_keeps_every_snapshot_readable() {
    let sc = scenario();
    let storage: Arc<dyn Storage> = Arc::new(sc.s.clone());
    let repo = open_on(storage.clone());
    let (p1, p2, p3) = (
        Password::new(PW),
        Password::new("second"),
        Password::new("third"),
    );
    let k2 = keyring::add_key(&repo, &p1, &p2, None, &SystemLockEnv).unwrap();
    assert_eq!(keyring::list_keys(&repo).unwrap().len(), 2);
    // Removing the key in use is refused (it is the one proven to open the repository).
    assert!(matches!(
        keyring::remove_key(&repo, &repo.key_id(), &SystemLockEnv),
        Err(keyring::KeyringError::LastKey(_))
    ));
    let repo2 = Repository::open(storage.clone(), &p2).unwrap();
    assert_eq!(repo2.key_id(), k2);
    let k3 = keyring::change_password(&repo2, &p2, &p3, false, &SystemLockEnv).unwrap();
    assert!(matches!(
        Repository::open(storage.clone(), &p2),
        Err(RepoError::WrongPassword)
    ));
    let repo3 = Repository::open(storage.clone(), &p3).unwrap();
    assert_eq!(repo3.key_id(), k3);
    for id in &sc.ids {
        read_all(&repo3, id).unwrap();
    }
    // The first password was not changed and still opens; a wrong current password adds nothing.
    let keys = keyring::list_keys(&repo3).unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().any(|k| k.id == k3 && k.current));
    assert!(keyring::add_key(&repo3, &p2, &p1, None, &SystemLockEnv).is_err());
    assert_eq!(keyring::list_keys(&repo3).unwrap().len(), 2);
    // Changing the last remaining password away from p1 leaves p3 only after p1's removal.
    let repo1 = Repository::open(storage.clone(), &p1).unwrap();
    keyring::change_password(&repo1, &p1, &Password::new("fourth"), false, &SystemLockEnv).unwrap();
    assert!(Repository::open(storage.clone(), &p1).is_err());
    let repo4 = Repository::open(storage, &Password::new("fourth")).unwrap();
    assert_eq!(read_all(&repo4, &sc.ids[0]).unwrap()["a.bin"], sc.a);
}

#[test]
fn index_is_rebuilt_automatically_when_deleted_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let local = || -> Arc<dyn Storage> { Arc::new(LocalStorage::new(dir.path()).unwrap()) };
    let (a, b) = (data("a", 60_000), data("b", 20_000));
    let ids = {
        let mut repo = init_on(local());
        vec![
            snapshot(&mut repo, UDID, 0, &[("a.bin", &a)]),
            snapshot(&mut repo, UDID, 1, &[("a.bin", &a), ("b.bin", &b)]),
        ]
    };
    let answers = |repo: &Repository| {
        let l = repo.snapshot_listing().unwrap();
        let ids: Vec<SnapshotId> = l.snapshots.iter().map(|(id, _)| *id).collect();
        let files: Vec<_> = ids.iter().map(|id| read_all(repo, id).unwrap()).collect();
        (ids, files)
    };
    let want = {
        let repo = open_on(local());
        assert!(repo.index_chunk_count().is_some());
        answers(&repo)
    };
    assert_eq!(want.0.len(), 2);
    assert!(ids.iter().all(|i| want.0.contains(i)));
    // Deleted.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    {
        let repo = open_on(local());
        assert!(repo.index_chunk_count().unwrap() > 0, "rebuilt");
        assert_eq!(answers(&repo), want);
    }
    assert!(dir.path().join("index/VERSION").exists());
    // Every file of the sled database overwritten with garbage.
    for e in walk(&dir.path().join("index")) {
        if e.file_name().is_some_and(|n| n != "VERSION") {
            std::fs::write(&e, vec![0x5a; 4096]).unwrap();
        }
    }
    {
        let repo = open_on(local());
        assert_eq!(answers(&repo), want);
        let c = check(&repo, &CheckOptions::default(), &mut |_| {}).unwrap();
        assert!(c.is_ok() && c.index_consistent, "{c:?}");
    }
    // One flipped byte in a run file of the chunk map (its checksum catches it).
    let runs: Vec<_> = walk(&dir.path().join("index/chunks"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "run"))
        .collect();
    assert!(!runs.is_empty());
    let mut bytes = std::fs::read(&runs[0]).unwrap();
    bytes[3] ^= 0x10;
    std::fs::write(&runs[0], bytes).unwrap();
    {
        let repo = open_on(local());
        assert_eq!(answers(&repo), want);
        let c = check(&repo, &CheckOptions::default(), &mut |_| {}).unwrap();
        assert!(c.is_ok() && c.index_consistent, "{c:?}");
    }
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}

#[test]
fn unlock_removes_another_machines_lock_and_the_next_writer_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Cradle");
    let pwf = dir.path().join("pw");
    std::fs::write(&pwf, format!("{PW}\n")).unwrap();
    std::fs::create_dir(&root).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(&root).unwrap());
    let mut repo = init_on(storage);
    let id = snapshot(&mut repo, UDID, 0, &[("Library/a.txt", b"day one")]);
    let g = repo
        .lock_writer(cradle::store::lock::LockPurpose::Ingest, &LAPTOP)
        .unwrap();
    std::mem::forget(g); // the drive was pulled from the laptop mid-backup
    drop(repo);
    let run = |args: &[&str]| {
        let out = common::cradle()
            .args(args)
            .args([
                "--repo",
                common::s(&root),
                "--password-file",
                common::s(&pwf),
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = run(&["prune", "--keep-last", "1"]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("drive in use by laptop-elsewhere"), "{text}");
    let (code, text) = run(&["unlock"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("removed the writer lock laptop-elsewhere took"),
        "{text}"
    );
    let (code, text) = run(&["unlock"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no writer lock"), "{text}");
    let (code, text) = run(&["prune", "--keep-last", "1"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&id.to_hex()[..12]), "{text}");
}

/// A digest that stopped after committing its record but before moving the raw record's pin
/// (format.md §9.4), then a prune: the pin protects the digested snapshot and moves to it.
#[test]
fn prune_moves_a_superseded_raw_records_pin_to_its_digested_successor() {
    for dry_run in [true, false] {
        let (_s, mut repo) = common::store::setup();
        let t = write_table(&mut repo, &[]);
        let mut raw = record(&mut repo, UDID, BASE, b"<plist>raw</plist>", &t);
        raw.kind = cradle::store::snapshot::SnapshotKind::Raw;
        let kek = raw.backup_kek.clone();
        raw.backup_kek = cradle::store::snapshot::BackupKek([0; 32]);
        let raw_id = repo.commit_snapshot(&raw).unwrap();
        let pin = Pin {
            pinned_at: 7,
            note: "keep this one".into(),
        };
        repo.pin(&raw_id, &pin).unwrap();
        let digested = cradle::store::snapshot::SnapshotRecord {
            kind: cradle::store::snapshot::SnapshotKind::Digested,
            digested_from: raw_id,
            backup_kek: kek,
            ..raw.clone()
        };
        let dig_id = repo.commit_snapshot(&digested).unwrap();
        let newer = snapshot(&mut repo, UDID, 2, &[("a", b"newer")]);
        let r = prune(
            &mut repo,
            &keep_last_one(dry_run),
            &SystemLockEnv,
            &mut |_| {},
        )
        .unwrap();
        let kept = |id: &SnapshotId| r.decisions.iter().any(|d| d.id == *id && d.keep);
        assert!(kept(&dig_id) && kept(&newer), "{:?}", r.decisions);
        assert!(r.forgotten.contains(&raw_id));
        if !dry_run {
            let pins = repo.list_pins().unwrap();
            assert_eq!(pins.len(), 1, "{pins:?}");
            assert_eq!(pins[0].0, dig_id);
            assert_eq!(pins[0].1.note, "keep this one");
            assert!(repo.load_snapshot(&dig_id).is_ok());
            // The next prune keeps it on the pin alone.
            let r = prune(
                &mut repo,
                &keep_last_one(false),
                &SystemLockEnv,
                &mut |_| {},
            )
            .unwrap();
            assert!(r.forgotten.is_empty(), "{:?}", r.decisions);
        }
    }
}
