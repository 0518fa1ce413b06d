//! The snapshot repository end to end, as processes: `cradle backup --to-repo` from the simulated
//! phone, `export` byte-identical to what `--to-folder` and idevicebackup2 wrote from the same
//! phone, `extract` equal to `cradle sim tree`, incremental days storing only what changed, old
//! snapshots still exporting, two phones on one drive, and a wrong password touching nothing.
//!
//! idevicebackup2 and iphone-backup-decrypt are skipped with a printed line when absent, unless
//! CRADLE_REQUIRE_PEERS=1.

mod common;

use common::repo::{sent_bytes, snapshot_line, Repo, LIMIT};
use common::serve::Serve;
use common::{assert_trees_equal, copy_tree, read_tree, run_with_timeout, s, Output, TreeEntry};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PROFILE: &str = "tiny";
const DPIC: &str = "1000";
const PASSWORD: &str = "repo e2e password";

fn cradle(args: &[&str]) -> Output {
    common::run_cradle(args, LIMIT)
}

impl Repo {
    /// `cradle backup --sim … --to-repo`: (bytes the phone sent for data files, stdout).
    fn backup(&self, seed: u64, day: u32) -> (u64, String) {
        let o = self.sim_backup(&format!("{PROFILE}:{seed}:{day}"), DPIC, &self.state);
        let line = snapshot_line(&o);
        assert!(line.contains("(digested)"), "{line}");
        (sent_bytes(line), o.stdout)
    }

    fn snapshot_ids(&self) -> Vec<(String, String)> {
        let v = self.json(&["snapshots", "--json"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["id"].as_str().unwrap().to_string(),
                    x["udid"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn export(&self, snap: &str, out: &Path) -> Duration {
        let t = Instant::now();
        let o = self.run(&["export", snap, "--out", s(out)]);
        assert!(o.success, "export {snap}: {o:?}");
        t.elapsed()
    }
}

/// `cradle backup --sim … --to-folder` into `folder` (its own state dir).
fn folder_backup(tmp: &Path, folder: &Path, pw: &Path, seed: u64, day: u32) {
    let spec = format!("{PROFILE}:{seed}:{day}");
    let o = cradle(&[
        "backup",
        "--sim",
        &spec,
        "--sim-dpic",
        DPIC,
        "--to-folder",
        s(folder),
        "--state-dir",
        s(&tmp.join(format!("state-folder-{seed}"))),
        "--encrypt",
        "--password-file",
        s(pw),
    ]);
    assert!(o.success, "backup --to-folder {spec}: {o:?}");
}

/// Every file of a backup folder (bytes hashed), without Info.plist: the host writes that one
/// itself, with its own clock and GUID.
fn backup_files(dir: &Path) -> BTreeMap<String, TreeEntry> {
    read_tree(dir)
        .into_iter()
        .filter(|(p, e)| matches!(e, TreeEntry::File { .. }) && p != "Info.plist")
        .collect()
}

fn sim_tree(tmp: &Path, seed: u64, day: u32) -> BTreeMap<String, TreeEntry> {
    common::sim_tree(tmp, PROFILE, seed, day, LIMIT)
}

#[test]
fn three_days_into_a_repository_export_byte_identical_and_store_only_changes() {
    const SEED: u64 = 41;
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), PASSWORD);
    let folder = tmp.path().join("folder");
    let mut kept = Vec::new();
    let mut sizes = vec![repo.size()];
    for day in 1..=3u32 {
        let before = repo.size();
        let (sent, _) = repo.backup(SEED, day);
        let after = repo.size();
        sizes.push(after);
        folder_backup(tmp.path(), &folder, &repo.pw, SEED, day);
        let ids = repo.snapshot_ids();
        assert_eq!(ids.len(), day as usize);
        let (id, udid) = ids.last().unwrap().clone();
        let want_dir = tmp.path().join(format!("folder-day{day}"));
        copy_tree(&folder.join(&udid), &want_dir);
        kept.push((id.clone(), want_dir.clone()));

        let out = tmp.path().join(format!("export-{day}"));
        let took = repo.export(&id[..12], &out);
        eprintln!(
            "day {day}: phone sent {sent} bytes of data files, repository +{} bytes \
             (now {after}), export {:.2} s",
            after - before,
            took.as_secs_f64()
        );
        assert_trees_equal(
            &backup_files(&want_dir),
            &backup_files(&out.join(&udid)),
            &format!("day {day}: export vs --to-folder"),
        );
        if day > 1 {
            // Only the changed files cross and are stored: data (≤ 1.1 × what was sent) plus
            // the new Manifest.db and plists, the file table and pack headers.
            let manifest_db = std::fs::metadata(want_dir.join("Manifest.db"))
                .unwrap()
                .len();
            let bound = sent + sent / 10 + manifest_db + 256 * 1024;
            assert!(
                after - before <= bound,
                "day {day}: stored {} bytes for {sent} bytes sent (bound {bound})",
                after - before
            );
        }
        let x = tmp.path().join(format!("extract-{day}"));
        let o = repo.run(&["extract", "latest", "--out", s(&x)]);
        assert!(o.success, "extract: {o:?}");
        assert_trees_equal(
            &sim_tree(tmp.path(), SEED, day),
            &read_tree(&x),
            &format!("day {day}: extract vs sim tree"),
        );
        if let Some(python) = common::peer_python("ibd") {
            let mut c = Command::new(python);
            c.arg(common::root().join("tests/peers/ibd_digest.py"))
                .arg(out.join(&udid))
                .arg(&repo.pw);
            let o = run_with_timeout(c, LIMIT);
            assert!(
                o.success,
                "iphone-backup-decrypt on the export: {}",
                o.stderr
            );
            let files = o.stdout.lines().filter(|l| l.contains("\"file\"")).count();
            assert!(files > 0, "iphone-backup-decrypt read no files");
        }
    }
    // Day 1 stored about what the phone sent (compression may win a little).
    assert!(sizes[1] > sizes[0]);
    // Every older snapshot still exports byte-identical.
    for (i, (id, want)) in kept.iter().enumerate() {
        let out = tmp.path().join(format!("re-export-{i}"));
        repo.export(id, &out);
        let udid = std::fs::read_dir(&out)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        assert_trees_equal(
            &backup_files(want),
            &backup_files(&out.join(udid)),
            &format!("snapshot {i} re-exported after day 3"),
        );
    }
    let o = repo.run(&["diff", &kept[0].0, &kept[1].0]);
    assert!(
        o.success && o.stdout.lines().any(|l| l.starts_with("M ")),
        "{o:?}"
    );
    let o = repo.run(&["ls", "latest", "HomeDomain"]);
    assert!(o.success && o.stdout.contains("HomeDomain/"), "{o:?}");
}

#[test]
fn export_matches_idevicebackup2_over_sim_serve() {
    const SEED: u64 = 42;
    let Some(ib2) = common::system_bin("idevicebackup2") else {
        return;
    };
    let Some(pair) = common::system_bin("idevicepair") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), PASSWORD);
    let sim_state = tmp.path().join("sim-state");
    let seed = SEED.to_string();
    let serve = Serve::start([
        "--profile",
        PROFILE,
        "--dpic",
        DPIC,
        "--seed",
        &seed,
        "--day",
        "1",
        "--state-dir",
        s(&sim_state),
        "--password-file",
        s(&repo.pw),
    ]);
    let (udid, addr) = (serve.udid.clone(), serve.addr.clone());
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let tool = |bin: &Path, args: &[&str]| {
        let mut c = Command::new(bin);
        c.env("USBMUXD_SOCKET_ADDRESS", &addr)
            .args(["-u", &udid])
            .args(args);
        run_with_timeout(c, LIMIT)
    };
    let out = tool(&pair, &["pair"]);
    assert!(out.stdout.contains("SUCCESS"), "{out:?}");
    let out = tool(&ib2, &["backup", "--full", s(&theirs)]);
    assert!(out.stdout.contains("Backup Successful."), "{out:?}");
    let o = cradle(&[
        "backup",
        "--usbmuxd",
        &addr,
        "--to-repo",
        s(&repo.path),
        "--state-dir",
        s(&tmp.path().join("host-state")),
        "--password-file",
        s(&repo.pw),
    ]);
    serve.stop();
    assert!(o.success, "backup --to-repo over usbmuxd: {o:?}");
    let out = tmp.path().join("export");
    repo.export("latest", &out);
    assert_trees_equal(
        &backup_files(&theirs.join(&udid)),
        &backup_files(&out.join(&udid)),
        "export vs idevicebackup2's folder",
    );
}

#[test]
fn two_phones_on_one_drive() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), PASSWORD);
    let (sent1, _) = repo.backup(51, 1);
    let s1 = repo.size();
    let (sent2, _) = repo.backup(52, 1);
    let s2 = repo.size();
    eprintln!(
        "phone 1: sent {sent1}, repository {s1}; phone 2: sent {sent2}, +{}",
        s2 - s1
    );
    // Each phone's bytes are stored at most once (no cross-seed content in the synthetic
    // phone; files duplicated inside a phone, such as SDK files in many apps, are stored once).
    assert!(s2 - s1 <= sent2 + 256 * 1024);
    let ids = repo.snapshot_ids();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0].1, ids[1].1);
    for (i, seed) in [(0usize, 51u64), (1, 52)] {
        let folder = tmp.path().join(format!("folder-{seed}"));
        folder_backup(tmp.path(), &folder, &repo.pw, seed, 1);
        let out = tmp.path().join(format!("export-{seed}"));
        repo.export(&ids[i].0, &out);
        assert_trees_equal(
            &backup_files(&folder.join(&ids[i].1)),
            &backup_files(&out.join(&ids[i].1)),
            &format!("phone {seed}"),
        );
    }
}

#[test]
fn wrong_password_is_one_clear_line_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), PASSWORD);
    repo.backup(61, 1);
    let before = read_tree(&repo.path);
    let bad = tmp.path().join("bad-pw");
    std::fs::write(&bad, "not the password\n").unwrap();
    let o = cradle(&[
        "backup",
        "--sim",
        &format!("{PROFILE}:61:2"),
        "--sim-dpic",
        DPIC,
        "--to-repo",
        s(&repo.path),
        "--state-dir",
        s(&repo.state),
        "--password-file",
        s(&bad),
    ]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("wrong password"), "{}", o.stderr);
    let o = cradle(&[
        "export",
        "latest",
        "--repo",
        s(&repo.path),
        "--password-file",
        s(&bad),
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("wrong password"), "{}", o.stderr);
    assert_eq!(before, read_tree(&repo.path), "the repository changed");
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn a_second_writer_is_refused_while_the_lock_is_held_and_nothing_changes() {
    use cradle::password::Password;
    use cradle::store::lock::{LockPurpose, SystemLockEnv};
    use cradle::store::repo::Repository;
    use cradle::store::storage::LocalStorage;
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), PASSWORD);
    repo.backup(62, 1);
    // This (live) test process holds the writer lock, as a running prune would.
    let storage = Arc::new(LocalStorage::new(&repo.path).unwrap());
    let held = Repository::open(storage, &Password::new(PASSWORD)).unwrap();
    let guard = held
        .lock_writer(LockPurpose::Prune, &SystemLockEnv)
        .unwrap();
    // Closed (its index flushed) so that only the other process could change the folder.
    drop(held);
    let before = read_tree(&repo.path);
    let o = cradle(&[
        "backup",
        "--sim",
        &format!("{PROFILE}:62:2"),
        "--sim-dpic",
        DPIC,
        "--to-repo",
        s(&repo.path),
        "--state-dir",
        s(&repo.state),
        "--password-file",
        s(&repo.pw),
    ]);
    assert_ne!(o.code, Some(0), "{o:?}");
    assert!(
        o.stderr.contains("in use by process") && o.stderr.contains("wait for the other command"),
        "{}",
        o.stderr
    );
    assert_eq!(before, read_tree(&repo.path), "the repository changed");
    guard.release().unwrap();
    // With the lock gone the same backup goes through.
    repo.backup(62, 2);
}
