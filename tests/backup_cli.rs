//! `cradle backup --to-folder` as a process, judged by what it leaves in the folder: each backup
//! must decrypt (`cradle backup-folder extract`) to exactly the synthetic phone's tree of that day
//! (`cradle sim tree`). Over a TCP usbmuxd socket from `cradle sim serve`, side by side with
//! Debian's idevicebackup2; over the in-memory usbmux link (`--sim`); day 2 incremental; a cable
//! pulled mid-backup leaves the previous backup intact; the refusals say what to do.
//!
//! idevicebackup2 is skipped with a printed line when absent, unless CRADLE_REQUIRE_PEERS=1.

mod common;

use common::serve::Serve as Server;
use common::{assert_trees_equal, read_tree, run_with_timeout, s, Output};
use cradle::sim::phone::{Phone, Profile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PROFILE: Profile = Profile::Tiny;
/// Keybag rounds of the simulated phone: the protocol is under test, not the KDF.
const DPIC: &str = "1000";
const LIMIT: Duration = Duration::from_secs(180);
const PASSWORD: &str = "cli backup password";

fn cradle(args: &[&str]) -> Output {
    common::run_cradle(args, LIMIT)
}

/// `cradle sim tree` of that day.
fn phone_tree(tmp: &Path, seed: u64, day: u32) -> BTreeMap<String, common::TreeEntry> {
    common::sim_tree(tmp, PROFILE.name(), seed, day, LIMIT)
}

/// Decrypts a backup folder with `cradle backup-folder extract` into a fresh folder.
fn extracted(backup: &Path, pw: &Path, out: &Path) -> BTreeMap<String, common::TreeEntry> {
    let o = cradle(&[
        "backup-folder",
        "extract",
        s(backup),
        "--password-file",
        s(pw),
        "--out",
        s(out),
    ]);
    assert!(o.success, "extract {}: {}", backup.display(), o.stderr);
    read_tree(out)
}

/// The files of a backup as iphone-backup-decrypt decrypts them (`tests/peers/ibd_digest.py`),
/// as `domain/path` → entry; `None` when the peer is not installed (and not required).
fn ibd_files(backup: &Path, pw: &Path) -> Option<BTreeMap<String, common::TreeEntry>> {
    let python = common::peer_python("ibd")?;
    let mut c = Command::new(python);
    c.arg(common::root().join("tests/peers/ibd_digest.py"))
        .arg(backup)
        .arg(pw);
    let o = run_with_timeout(c, LIMIT);
    assert!(
        o.success,
        "iphone-backup-decrypt on {}: {}",
        backup.display(),
        o.stderr
    );
    let mut files = BTreeMap::new();
    for line in o.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["kind"] == "file" {
            files.insert(
                format!(
                    "{}/{}",
                    v["domain"].as_str().unwrap(),
                    v["path"].as_str().unwrap()
                ),
                common::TreeEntry::File {
                    sha256: v["sha256"].as_str().unwrap().to_string(),
                    size: v["size"].as_u64().unwrap(),
                },
            );
        }
    }
    Some(files)
}

/// Only the regular files of a tree.
fn files_of(tree: &BTreeMap<String, common::TreeEntry>) -> BTreeMap<String, common::TreeEntry> {
    tree.iter()
        .filter(|(_, e)| matches!(e, common::TreeEntry::File { .. }))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `… N files received, …` from cradle backup's summary line.
fn files_received(summary: &str) -> u64 {
    let i = summary
        .find(" files received")
        .unwrap_or_else(|| panic!("no summary in {summary:?}"));
    summary[..i].rsplit(' ').next().unwrap().parse().unwrap()
}

/// `simulated phone: backup done: incremental, 9 files, …` → (kind, files).
fn sim_report(stderr: &str) -> (String, u64) {
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("simulated phone: backup done: "))
        .unwrap_or_else(|| panic!("no completed simulator report in {stderr}"));
    let parts: Vec<&str> = line.split(", ").collect();
    (
        parts[0].to_string(),
        parts[1].split(' ').next().unwrap().parse().unwrap(),
    )
}

/// `cradle sim serve` as a process.
struct Serve {
    server: Server,
    udid: String,
    addr: String,
}

impl Serve {
    fn start(state: &Path, seed: u64, day: u32, extra: &[&str]) -> Serve {
        let (seed, day) = (seed.to_string(), day.to_string());
        let mut args = vec!["--profile", PROFILE.name(), "--dpic", DPIC];
        args.extend(["--seed", &seed, "--day", &day, "--state-dir", s(state)]);
        args.extend_from_slice(extra);
        let server = Server::start(args);
        Serve {
            udid: server.udid.clone(),
            addr: server.addr.clone(),
            server,
        }
    }

    fn stop(self) {
        self.server.stop();
    }
}

#[test]
fn usbmuxd_socket_cradle_and_idevicebackup2_back_up_the_same_phone() {
    const SEED: u64 = 31;
    let tmp = tempfile::tempdir().unwrap();
    let pw = common::password_file(tmp.path(), PASSWORD);
    let serve = Serve::start(
        &tmp.path().join("sim-state"),
        SEED,
        1,
        &["--password-file", s(&pw)],
    );
    let ours = tmp.path().join("ours");
    let o = cradle(&[
        "backup",
        "--usbmuxd",
        &serve.addr,
        "--to-folder",
        s(&ours),
        "--state-dir",
        s(&tmp.path().join("host-state")),
        "--encrypt",
        "--password-file",
        s(&pw),
    ]);
    assert!(o.success, "cradle backup: {}\n{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("ErrorCode 0 (success)"), "{}", o.stdout);
    assert!(o.stdout.contains(", encrypted,"), "{}", o.stdout);
    let want = phone_tree(tmp.path(), SEED, 1);
    let got = extracted(&ours.join(&serve.udid), &pw, &tmp.path().join("x-ours"));
    assert_trees_equal(&want, &got, "cradle backup over usbmuxd, decrypted");
    // An independent reader agrees, file by file.
    if let Some(ibd) = ibd_files(&ours.join(&serve.udid), &pw) {
        assert_trees_equal(
            &files_of(&want),
            &ibd,
            "cradle's backup through iphone-backup-decrypt",
        );
    }

    if let (Some(ib2), Some(pair)) = (
        common::system_bin("idevicebackup2"),
        common::system_bin("idevicepair"),
    ) {
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        let tool = |bin: &Path, args: &[&str]| {
            let mut c = Command::new(bin);
            c.env("USBMUXD_SOCKET_ADDRESS", &serve.addr)
                .args(["-u", &serve.udid])
                .args(args);
            run_with_timeout(c, LIMIT)
        };
        let out = tool(&pair, &["pair"]);
        assert!(out.stdout.contains("SUCCESS"), "{out:?}");
        // idevicebackup2 exits 0 on failure too: judged by its words and its folder.
        let out = tool(&ib2, &["backup", "--full", s(&theirs)]);
        assert!(out.stdout.contains("Backup Successful."), "{out:?}");
        let got2 = extracted(&theirs.join(&serve.udid), &pw, &tmp.path().join("x-theirs"));
        assert_trees_equal(
            &got,
            &got2,
            "idevicebackup2's backup vs cradle's, decrypted",
        );
    }
    serve.stop();
}

#[test]
fn in_memory_sim_backup_then_day_two_incremental() {
    const SEED: u64 = 32;
    let tmp = tempfile::tempdir().unwrap();
    let pw = common::password_file(tmp.path(), PASSWORD);
    let folder = tmp.path().join("backups");
    let state = tmp.path().join("state");
    let backup = |day: u32, extra: &[&str]| {
        let spec = format!("{}:{SEED}:{day}", PROFILE.name());
        let mut args = vec![
            "backup",
            "--sim",
            &spec,
            "--sim-dpic",
            DPIC,
            "--to-folder",
            s(&folder),
            "--state-dir",
            s(&state),
        ];
        args.extend_from_slice(extra);
        cradle(&args)
    };

    // The simulated phone starts without backup encryption: refused unless asked for.
    let o = backup(1, &[]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(
        o.stderr.contains("not encrypted") && o.stderr.contains("--encrypt"),
        "{}",
        o.stderr
    );
    assert_eq!(
        o.stderr
            .lines()
            .filter(|l| l.starts_with("cradle:"))
            .count(),
        1
    );
    assert!(!folder.join("x").exists());

    // --encrypt turns it on (ChangePassword), then a full backup.
    let o = backup(1, &["--encrypt", "--password-file", s(&pw)]);
    assert!(o.success, "{o:?}");
    assert!(
        o.stderr.contains("turning backup encryption on"),
        "{}",
        o.stderr
    );
    let (kind, _) = sim_report(&o.stderr);
    assert_eq!(kind, "full");
    let udid = Phone::new(SEED, PROFILE, 1).identity().udid.clone();
    let day1 = phone_tree(tmp.path(), SEED, 1);
    let got = extracted(&folder.join(&udid), &pw, &tmp.path().join("x1"));
    assert_trees_equal(&day1, &got, "--sim day 1, decrypted");

    // Day 2 into the same folder: only the changed files cross.
    let o = backup(2, &["--encrypt", "--password-file", s(&pw)]);
    assert!(o.success, "{o:?}");
    assert!(!o.stderr.contains("turning backup encryption on"));
    let (kind, files) = sim_report(&o.stderr);
    assert_eq!(kind, "incremental");
    let (changed, _removed) =
        common::expected_changes(&Phone::new(SEED, PROFILE, 1), &Phone::new(SEED, PROFILE, 2));
    assert!(changed > 0);
    assert_eq!(files, changed, "data files the phone sent on day 2");
    // Beside the data files the host receives Manifest.db, Manifest.plist and Status.plist.
    assert_eq!(files_received(&o.stdout), changed + 3, "{}", o.stdout);
    let day2 = phone_tree(tmp.path(), SEED, 2);
    assert_ne!(day1, day2);
    let got = extracted(&folder.join(&udid), &pw, &tmp.path().join("x2"));
    assert_trees_equal(&day2, &got, "--sim day 2, decrypted");
}

#[test]
fn cable_pulled_mid_backup_leaves_the_previous_backup_intact() {
    const SEED: u64 = 33;
    let tmp = tempfile::tempdir().unwrap();
    let pw = common::password_file(tmp.path(), PASSWORD);
    let folder = tmp.path().join("backups");
    let state = tmp.path().join("state");
    let backup = |day: u32, extra: &[&str]| {
        let spec = format!("{}:{SEED}:{day}", PROFILE.name());
        let mut args = vec![
            "backup",
            "--sim",
            &spec,
            "--sim-dpic",
            DPIC,
            "--to-folder",
            s(&folder),
            "--state-dir",
            s(&state),
            "--encrypt",
            "--password-file",
            s(&pw),
        ];
        args.extend_from_slice(extra);
        cradle(&args)
    };
    let o = backup(1, &[]);
    assert!(o.success, "{o:?}");
    let udid = Phone::new(SEED, PROFILE, 1).identity().udid.clone();
    let before = snapshot(&folder);

    // Day 2 with the cable pulled after 600 kB (lockdown, services and part of the upload).
    let o = backup(2, &["--full", "--sim-unplug-after", "600000"]);
    assert_eq!(o.code, Some(2), "{o:?}");
    let line = o
        .stderr
        .lines()
        .find(|l| l.starts_with("cradle:"))
        .unwrap_or_else(|| panic!("no error line in {}", o.stderr));
    assert!(line.contains("disconnected"), "{line}");
    assert!(line.contains("plug it in again"), "{line}");
    assert!(line.contains("left as it was"), "{line}");
    // Nothing outside the backup folder's own tree changed, and every file of the previous
    // backup (manifests, data files) is byte for byte as it was. Info.plist is the host's own
    // file, rewritten before each backup (as idevicebackup2 does).
    let after = snapshot(&folder);
    let info = format!("{udid}/Info.plist");
    for (path, entry) in before.iter().filter(|(p, _)| **p != info) {
        assert_eq!(after.get(path), Some(entry), "{path} changed");
    }
    assert!(plist::Value::from_file(folder.join(&info)).is_ok());
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        assert!(
            path.starts_with(&format!("{udid}/")),
            "written outside the phone's folder: {path}"
        );
    }
    let day1 = phone_tree(tmp.path(), SEED, 1);
    let got = extracted(&folder.join(&udid), &pw, &tmp.path().join("x"));
    assert_trees_equal(&day1, &got, "the day-1 backup after a failed day-2 backup");

    // Plugged in again, the day-2 backup completes.
    let o = backup(2, &[]);
    assert!(o.success, "{o:?}");
    let got = extracted(&folder.join(&udid), &pw, &tmp.path().join("x2"));
    assert_trees_equal(
        &phone_tree(tmp.path(), SEED, 2),
        &got,
        "the day-2 backup after the retry",
    );
}

/// Every file and directory under `dir` with its bytes' hash (Snapshot/ staging excluded: the
/// phone stages an unfinished backup there and clears it next time).
fn snapshot(dir: &Path) -> BTreeMap<String, common::TreeEntry> {
    read_tree(dir)
        .into_iter()
        .filter(|(p, _)| !p.split('/').any(|c| c == "Snapshot"))
        .collect()
}

#[test]
fn usb_without_a_phone_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cradle(&[
        "backup",
        "--usb",
        "--to-folder",
        s(&tmp.path().join("b")),
        "--state-dir",
        s(&tmp.path().join("st")),
    ]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("no iPhone found on USB"), "{}", o.stderr);
}

#[test]
fn unreachable_usbmuxd_and_missing_device_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let sock: PathBuf = tmp.path().join("nothing-here.sock");
    let o = cradle(&[
        "backup",
        "--usbmuxd",
        s(&sock),
        "--to-folder",
        s(&tmp.path().join("b")),
        "--state-dir",
        s(&tmp.path().join("st")),
    ]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("cannot reach usbmuxd"), "{}", o.stderr);
    assert!(o.stderr.contains("is usbmuxd running?"), "{}", o.stderr);

    // A usbmuxd with one phone, asked for another.
    let serve = Serve::start(&tmp.path().join("sim"), 34, 1, &["--unencrypted"]);
    let o = cradle(&[
        "backup",
        "--usbmuxd",
        &serve.addr,
        "--udid",
        "00008110-000000000000000A",
        "--to-folder",
        s(&tmp.path().join("b")),
        "--state-dir",
        s(&tmp.path().join("st")),
    ]);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(
        o.stderr
            .contains("no device with UDID 00008110-000000000000000A")
            && o.stderr.contains(&serve.udid),
        "{}",
        o.stderr
    );
    serve.stop();
}

#[test]
fn trust_denied_and_locked_phone_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (folder, state) = (tmp.path().join("b"), tmp.path().join("st"));
    let backup = |serve: &Serve, extra: &[&str]| {
        let mut args = vec![
            "backup",
            "--usbmuxd",
            &serve.addr,
            "--to-folder",
            s(&folder),
            "--state-dir",
            s(&state),
            "--allow-unencrypted",
        ];
        args.extend_from_slice(extra);
        cradle(&args)
    };
    let error_line = |o: &Output| {
        assert_eq!(o.code, Some(2), "{o:?}");
        let lines: Vec<&str> = o
            .stderr
            .lines()
            .filter(|l| l.starts_with("cradle:"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", o.stderr);
        lines[0].to_string()
    };

    let serve = Serve::start(
        &tmp.path().join("sim1"),
        35,
        1,
        &["--unencrypted", "--trust", "deny"],
    );
    let line = error_line(&backup(&serve, &[]));
    assert!(line.contains("refused to trust this computer"), "{line}");
    assert!(line.contains("tap Trust"), "{line}");
    serve.stop();

    // Locked, and nobody unlocks it within the time given.
    let serve = Serve::start(
        &tmp.path().join("sim2"),
        36,
        1,
        &["--unencrypted", "--trust", "locked-once"],
    );
    let line = error_line(&backup(&serve, &["--trust-timeout", "0"]));
    assert!(line.contains("the phone is locked: unlock it"), "{line}");
    // Unlocked meanwhile: the next attempt pairs and backs up.
    let o = backup(&serve, &[]);
    assert!(o.success, "{o:?}");
    assert!(o.stdout.contains("NOT encrypted"), "{}", o.stdout);
    serve.stop();
}
