//! `cradle digest` end to end, as processes. A simulated phone whose backup password is not the
//! repository's is backed up `--to-repo` (a raw snapshot), then digested with the phone's
//! password: the export is byte-identical before and after (and to the phone's own backup
//! folder), `check --read-data` is clean, the next day's backup deduplicates against the
//! digested plaintext, a wrong password leaves every byte of the repository as it was, `--all`
//! skips a raw snapshot of another password, and a digest killed at random points (the debug
//! hook CRADLE_TEST_KILL_AFTER_FSYNCS, or SIGKILL) leaves one exportable snapshot, a clean
//! `check`, and a next run that completes.

mod common;

use common::repo::{sent_bytes, sim_backup_to, snapshot_line, Repo, LIMIT};
use common::rng::{crash_seed, Rng};
use common::{copy_tree, read_tree, s, Output, TreeEntry};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const PROFILE: &str = "tiny";
const DPIC: &str = "1000";
const REPO_PW: &str = "digest repository password";
const PHONE_PW: &str = "the phone's own backup password";

type Tree = BTreeMap<String, TreeEntry>;

fn cradle(args: &[&str]) -> Output {
    common::run_cradle(args, LIMIT)
}

fn pw_file(dir: &Path, name: &str, pw: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    p
}

/// A repository at `path` opened with the password file `pw`.
fn repo_at(path: PathBuf, pw: PathBuf) -> Repo {
    Repo {
        path,
        pw,
        state: PathBuf::new(),
    }
}

impl Repo {
    /// `cradle backup --sim … --to-repo` with the repository's password, the phone's encryption
    /// left as it is: (stdout line, bytes the phone sent for data files).
    fn backup(&self, state: &Path, seed: u64, day: u32) -> (String, u64) {
        let spec = format!("{PROFILE}:{seed}:{day}");
        let o = cradle(&sim_backup_to(
            &spec,
            DPIC,
            "--to-repo",
            &self.path,
            state,
            &self.pw,
            false,
        ));
        assert!(o.success, "backup --to-repo {spec}: {o:?}");
        let line = snapshot_line(&o).to_string();
        let bytes = sent_bytes(&line);
        (line, bytes)
    }

    /// (id, kind) of every listed snapshot.
    fn snapshots(&self) -> Vec<(String, String)> {
        let v = self.json(&["snapshots", "--json"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["id"].as_str().unwrap().to_string(),
                    x["kind"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Exports `id` into `out` and reads it back.
    fn export(&self, id: &str, out: &Path) -> Tree {
        let o = self.run(&["export", id, "--out", s(out)]);
        assert!(o.success, "export {id}: {o:?}");
        read_tree(out)
    }

    fn digest(&self, args: &[&str], backup_pw: &Path) -> Output {
        let mut a = vec!["digest"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--backup-password-file", s(backup_pw)]);
        self.run(&a)
    }

    fn check(&self, what: &str) {
        let o = self.run(&["check", "--read-data"]);
        assert!(o.success, "{what}: check --read-data: {o:?}");
    }
}

/// A phone (sim seed) whose backups are encrypted with `phone_pw`, set by a first backup into a
/// plain folder; returns its paired state folder and that folder backup (`<udid>/…`).
fn phone(dir: &Path, seed: u64, phone_pw: &Path) -> (PathBuf, PathBuf) {
    let state = dir.join(format!("state-{seed}"));
    let folder = dir.join(format!("folder-{seed}"));
    let spec = format!("{PROFILE}:{seed}:1");
    let o = cradle(&sim_backup_to(
        &spec,
        DPIC,
        "--to-folder",
        &folder,
        &state,
        phone_pw,
        true,
    ));
    assert!(o.success, "backup --to-folder {spec}: {o:?}");
    (state, folder)
}

/// The data files of a backup folder tree (`<udid>/xx/<fileID>`), what the phone sent byte for
/// byte; the plists and Manifest.db carry the run's own dates and keys.
fn data_files(t: &Tree) -> Tree {
    t.iter()
        .filter(|(p, e)| matches!(e, TreeEntry::File { .. }) && p.matches('/').count() == 2)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A repository holding one raw snapshot of phone `seed` (its password is PHONE_PW).
struct RawSetup {
    repo: Repo,
    state: PathBuf,
    folder: PathBuf,
    phone_pw: PathBuf,
    raw_id: String,
}

fn raw_setup(dir: &Path, seed: u64) -> RawSetup {
    let repo = Repo::init(dir, REPO_PW);
    let phone_pw = pw_file(dir, "phone-password", PHONE_PW);
    let (state, folder) = phone(dir, seed, &phone_pw);
    let (line, _) = repo.backup(&state, seed, 1);
    assert!(line.contains("(raw"), "{line}");
    let snaps = repo.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0].1, "raw");
    RawSetup {
        raw_id: snaps[0].0.clone(),
        repo,
        state,
        folder,
        phone_pw,
    }
}

#[test]
fn digest_exports_the_same_bytes_dedups_the_next_backup_and_a_wrong_password_changes_nothing() {
    const SEED: u64 = 51;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let RawSetup {
        repo,
        state,
        folder,
        phone_pw,
        raw_id,
    } = raw_setup(t, SEED);

    let a = repo.export(&raw_id, &t.join("export-raw"));
    let sent = data_files(&read_tree(&folder));
    assert!(sent.len() > 10, "{} data files", sent.len());
    common::assert_trees_equal(&sent, &data_files(&a), "raw export vs the phone's folder");

    // A wrong password: refused, and not one byte of the repository changes.
    let before = read_tree(&repo.path);
    let wrong = pw_file(t, "wrong-password", "not the phone's password");
    let o = repo.digest(&[&raw_id[..12]], &wrong);
    assert!(!o.success, "{o:?}");
    assert!(
        o.stderr.contains("does not open") && o.stderr.contains("nothing was changed"),
        "{o:?}"
    );
    common::assert_trees_equal(&before, &read_tree(&repo.path), "after a wrong password");

    // The right one.
    let raw_size = repo.size();
    let took = Instant::now();
    let o = repo.digest(&[&raw_id[..12]], &phone_pw);
    assert!(o.success, "digest: {o:?}");
    assert!(o.stdout.contains("digested "), "{o:?}");
    let digested_size = repo.size();
    let snaps = repo.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0].1, "digested");
    assert_ne!(snaps[0].0, raw_id);
    let b = repo.export(&snaps[0].0, &t.join("export-digested"));
    common::assert_trees_equal(&a, &b, "export after digest vs export of the raw snapshot");
    repo.check("after digest");
    let o = repo.run(&["prune"]);
    assert!(o.success, "prune: {o:?}");
    let pruned_size = repo.size();
    repo.check("after prune");
    let c = repo.export(&snaps[0].0, &t.join("export-pruned"));
    common::assert_trees_equal(&a, &c, "export after prune");
    eprintln!(
        "raw repository {raw_size} bytes; after digest {digested_size} (+{}) in {:.2} s; after \
         prune {pruned_size}",
        digested_size - raw_size,
        took.elapsed().as_secs_f64()
    );
    // The plaintext is about the ciphertext's size, stored once more, then the raw data goes.
    assert!(digested_size - raw_size <= raw_size + raw_size / 10);
    assert!(pruned_size <= raw_size + raw_size / 10);

    // The next backup unlocks with the digested snapshot's key and stores only what changed.
    let before = repo.size();
    let (line, sent) = repo.backup(&state, SEED, 2);
    assert!(line.contains("(digested)"), "{line}");
    let after = repo.size();
    let manifest_db = std::fs::metadata(
        folder
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("Manifest.db"),
    )
    .unwrap()
    .len();
    let bound = sent + sent / 10 + manifest_db + 256 * 1024;
    eprintln!(
        "day 2 after digest: phone sent {sent} bytes, repository +{}",
        after - before
    );
    assert!(
        after - before <= bound,
        "day 2 stored {} bytes for {sent} bytes sent (bound {bound})",
        after - before
    );
    repo.check("after day 2");
}

#[test]
fn digest_all_skips_a_raw_snapshot_of_another_password() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let RawSetup {
        repo,
        phone_pw,
        raw_id,
        ..
    } = raw_setup(t, 52);
    // A second phone with a password of its own.
    let other_dir = t.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other_pw = pw_file(&other_dir, "phone-password", "a third password");
    let (other_state, _) = phone(&other_dir, 53, &other_pw);
    let (line, _) = repo.backup(&other_state, 53, 1);
    assert!(line.contains("(raw"), "{line}");
    let other_id = repo
        .snapshots()
        .into_iter()
        .find(|(id, _)| *id != raw_id)
        .unwrap()
        .0;

    let o = repo.digest(&["--all"], &phone_pw);
    assert!(o.success, "digest --all: {o:?}");
    assert!(
        o.stdout.contains(&format!("digested {}", &raw_id[..12])),
        "{o:?}"
    );
    assert!(
        o.stdout
            .contains(&format!("skipped raw snapshot {}", &other_id[..12]))
            && o.stdout.contains("does not open"),
        "{o:?}"
    );
    let kinds: BTreeMap<String, String> = repo.snapshots().into_iter().collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(kinds.get(&other_id).map(String::as_str), Some("raw"));
    assert_eq!(kinds.values().filter(|k| *k == "digested").count(), 1);
    // The JSON form, with the other password: the remaining raw one goes, none is skipped.
    let o = repo.run(&[
        "digest",
        "--all",
        "--json",
        "--backup-password-file",
        s(&other_pw),
    ]);
    assert!(o.success, "digest --all --json: {o:?}");
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["digested"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["skipped"].as_array().unwrap().len(), 0, "{v}");
    assert!(repo.snapshots().iter().all(|(_, k)| k == "digested"));
    repo.check("after both digests");
}

#[derive(Debug, Clone, Copy)]
enum Kill {
    AfterFsyncs(u64),
    AfterMs(u64),
}

/// Runs `cradle ARGS` killed as `kill` says; `true` when it was killed, else its output.
fn run_killed(dir: &Path, n: usize, args: &[&str], kill: Kill) -> Result<Output, ()> {
    let out_path = dir.join(format!("run-{n}.out"));
    let err_path = dir.join(format!("run-{n}.err"));
    let mut c = common::cradle();
    c.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    if let Kill::AfterFsyncs(k) = kill {
        c.env(cradle::store::storage::KILL_AFTER_FSYNCS_ENV, k.to_string());
    }
    let started = Instant::now();
    let mut child = c.spawn().expect("spawn cradle");
    let deadline = match kill {
        Kill::AfterMs(ms) => Duration::from_millis(ms),
        Kill::AfterFsyncs(_) => LIMIT,
    };
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    match status.signal() {
        Some(9) | Some(6) => Err(()),
        _ => Ok(Output {
            success: status.success(),
            code: status.code(),
            stdout: read(&out_path),
            stderr: read(&err_path),
        }),
    }
}

#[test]
fn digest_killed_at_random_points_leaves_one_exportable_snapshot_and_reruns() {
    const KILLS: usize = 8;
    let seed = crash_seed(0x00d1_6e57);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let setup = raw_setup(t, 54);
    let want = setup
        .repo
        .export(&setup.raw_id, &t.join("export-reference"));

    let digest_args = |repo: &Path| -> Vec<String> {
        [
            "digest",
            &setup.raw_id[..12],
            "--repo",
            s(repo),
            "--password-file",
            s(&setup.repo.pw),
            "--backup-password-file",
            s(&setup.phone_pw),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    // How long a clean digest takes, and how many fsyncs (the fewest that let it finish), on
    // copies.
    let probe = t.join("probe");
    copy_tree(&setup.repo.path, &probe);
    let started = Instant::now();
    let o = repo_at(probe.clone(), setup.repo.pw.clone())
        .digest(&[&setup.raw_id[..12]], &setup.phone_pw);
    assert!(o.success, "probe digest: {o:?}");
    let full_ms = started.elapsed().as_millis() as u64;
    std::fs::remove_dir_all(&probe).unwrap();
    let (mut lo, mut hi) = (1u64, 64u64);
    while lo < hi {
        let mid = (lo + hi) / 2;
        copy_tree(&setup.repo.path, &probe);
        let a = digest_args(&probe);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        match run_killed(t, 100 + mid as usize, &a, Kill::AfterFsyncs(mid)) {
            Err(()) => lo = mid + 1,
            Ok(o) => {
                assert!(o.success, "probe digest: {o:?}");
                hi = mid;
            }
        }
        std::fs::remove_dir_all(&probe).unwrap();
    }
    // A kill after fsync `fsyncs - 1` or earlier lands inside the digest.
    let fsyncs = lo;
    assert!(fsyncs > 4, "a digest made only {fsyncs} fsyncs");

    let mut rng = Rng(seed);
    let mut killed = 0;
    let mut log = Vec::new();
    for n in 0..KILLS {
        let lane = t.join(format!("lane-{n}"));
        copy_tree(&setup.repo.path, &lane);
        let repo = repo_at(lane.clone(), setup.repo.pw.clone());
        // The last fsyncs (record durable, raw record deleted, pins, index) every time; then
        // random fsyncs, and SIGKILLs at random times.
        let kill = match n {
            0..=2 => Kill::AfterFsyncs(fsyncs - 1 - n as u64),
            _ if n % 3 == 2 => Kill::AfterMs(rng.range(1, full_ms.max(2))),
            _ => Kill::AfterFsyncs(rng.range(1, fsyncs - 1)),
        };
        let args = digest_args(&lane);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let what = format!("seed {seed:#x}, run {n}, {kill:?}");
        match run_killed(t, n, &a, kill) {
            Err(()) => {
                killed += 1;
                log.push(format!("{kill:?}: killed"));
            }
            Ok(o) => {
                assert!(o.success, "{what}: finished but failed: {o:?}");
                log.push(format!("{kill:?}: completed"));
            }
        }
        // One snapshot, raw or digested, exporting the same bytes; check clean.
        let o = repo.run(&["check"]);
        assert!(o.success, "{what}: check after the kill: {o:?}");
        let snaps = repo.snapshots();
        assert_eq!(snaps.len(), 1, "{what}: {snaps:?}");
        let got = repo.export(&snaps[0].0, &t.join(format!("export-{n}-killed")));
        common::assert_trees_equal(&want, &got, &format!("{what}: export after the kill"));
        // The next run completes (or finds the job done) and leaves a digested snapshot.
        let o = repo.digest(&[&setup.raw_id[..12]], &setup.phone_pw);
        assert!(o.success, "{what}: digest after the kill: {o:?}");
        let snaps = repo.snapshots();
        assert_eq!(snaps.len(), 1, "{what}: {snaps:?}");
        assert_eq!(snaps[0].1, "digested", "{what}");
        let got = repo.export(&snaps[0].0, &t.join(format!("export-{n}-rerun")));
        common::assert_trees_equal(&want, &got, &format!("{what}: export after the rerun"));
        let o = repo.run(&["check", "--read-data"]);
        assert!(o.success, "{what}: check after the rerun: {o:?}");
        assert!(
            !o.stdout.contains("superseded") && !o.stderr.contains("superseded"),
            "{what}: {o:?}"
        );
        std::fs::remove_dir_all(&lane).unwrap();
    }
    eprintln!(
        "seed {seed:#x}: a digest makes {fsyncs} fsyncs; {killed} of {KILLS} runs killed: {}",
        log.join("; ")
    );
    assert!(killed >= KILLS - 2, "too few kills landed: {log:?}");
}
