//! Unmodified real clients back up the simulated iPhone through its usbmuxd socket (TCP): Debian's
//! idevicebackup2 1.3.0 (pairing, full, incremental, encryption off/on) and pymobiledevice3
//! (full, incremental, change-password). Judged by what they wrote, never by exit codes
//! (idevicebackup2 exits 0 on failure): each backup folder must decrypt with
//! iphone-backup-decrypt to exactly the synthetic phone of that day, and the day-2 backups must
//! have transferred only the files that changed.
//!
//! A missing client skips the test with a printed line, unless CRADLE_REQUIRE_PEERS=1.

mod common;

use cradle::password::Password;
use cradle::sim::phone::{EntryKind, Phone, Profile};
use cradle::sim::simulator::{EncryptionChoice, Simulator, SimulatorOptions};
use cradle::usb::muxd::{ListenAddr, MuxdServer};
use sha2::Digest;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROFILE: Profile = Profile::Tiny;
/// Keybag rounds for these runs: the protocol is under test, not the KDF.
const DPIC: u32 = 1000;

/// A running simulator behind its usbmuxd socket: what `cradle sim serve` assembles, in this
/// process (`tests/sim_serve_cli.rs` covers the command itself).
struct Serve {
    sim: Arc<Simulator>,
    server: MuxdServer,
    /// What clients put in USBMUXD_SOCKET_ADDRESS.
    addr: String,
    udid: String,
    reports: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    fn start(seed: u64, day: u32, state: &Path, encryption: EncryptionChoice) -> Serve {
        let mut opts = SimulatorOptions::new(seed, PROFILE, day);
        opts.dpic = DPIC;
        opts.state_dir = Some(state.to_path_buf());
        opts.encryption = encryption;
        let sim = Simulator::new(opts).expect("simulator");
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = reports.clone();
        sim.agent().on_report(move |r| {
            eprintln!("[sim] {r}");
            sink.lock().unwrap().push(r.to_string());
        });
        let listen = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
        let server = MuxdServer::bind(&listen, vec![sim.served_device()], sim.pair_record_dir())
            .expect("usbmuxd facade");
        Serve {
            addr: server.client_address(),
            udid: sim.udid().to_string(),
            sim,
            server,
            reports,
        }
    }

    /// The n-th backup report (the agent records it right after its final message).
    fn report(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.reports.lock().unwrap().get(n - 1) {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no backup report #{n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops serving and saves the state, as `cradle sim serve` does on SIGTERM.
    fn stop(self) {
        self.server.shutdown();
        self.sim.shutdown().expect("save the simulator state");
    }
}

/// One row as iphone-backup-decrypt sees it.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Row {
    File { sha256: String, size: u64 },
    Dir,
    Link { target: String },
}

/// Decrypts `dir` with iphone-backup-decrypt: (domain, path) → row.
fn decrypt(python: &Path, dir: &Path, password: &str) -> BTreeMap<(String, String), Row> {
    let tmp = tempfile::tempdir().unwrap();
    let pw = common::password_file(tmp.path(), password);
    let script = common::root().join("tests/peers/ibd_digest.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(dir)
        .arg(&pw)
        .output()
        .expect("run ibd_digest.py");
    assert!(
        out.status.success(),
        "iphone-backup-decrypt failed on {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let row = match v["kind"].as_str() {
            Some("file") => Row::File {
                sha256: s("sha256"),
                size: v["size"].as_u64().unwrap(),
            },
            Some("dir") => Row::Dir,
            Some("link") => Row::Link {
                target: s("target"),
            },
            other => panic!("unexpected row kind {other:?}"),
        };
        rows.insert((s("domain"), s("path")), row);
    }
    rows
}

/// The phone's own tree, as `cradle sim tree` writes it, in the same shape.
fn expected(phone: &Phone) -> BTreeMap<(String, String), Row> {
    phone
        .entries()
        .iter()
        .map(|e| {
            let row = match &e.kind {
                EntryKind::File { .. } => {
                    let mut bytes = Vec::new();
                    phone.open(e).unwrap().read_to_end(&mut bytes).unwrap();
                    Row::File {
                        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
                        size: bytes.len() as u64,
                    }
                }
                EntryKind::Dir => Row::Dir,
                EntryKind::Symlink { target } => Row::Link {
                    target: target.clone(),
                },
            };
            ((e.domain.clone(), e.relative_path.clone()), row)
        })
        .collect()
}

fn assert_decrypts_to(python: &Path, dir: &Path, password: &str, phone: &Phone) {
    let got = decrypt(python, dir, password);
    let want = expected(phone);
    let count = |m: &BTreeMap<_, Row>, f: fn(&Row) -> bool| m.values().filter(|r| f(r)).count();
    assert_eq!(
        count(&got, |r| matches!(r, Row::Dir)),
        count(&want, |r| matches!(r, Row::Dir)),
        "directory count"
    );
    assert!(
        count(&want, |r| matches!(r, Row::Link { .. })) > 0,
        "the phone has symlinks"
    );
    let mut problems = Vec::new();
    for (k, v) in &want {
        match got.get(k) {
            None => problems.push(format!("missing {k:?}")),
            Some(g) if g != v => problems.push(format!("differs {k:?}: {g:?} != {v:?}")),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        problems.push(format!("unexpected {k:?}"));
    }
    assert!(
        problems.is_empty(),
        "{}: {} differences from day {}: {:#?}",
        dir.display(),
        problems.len(),
        phone.day(),
        &problems[..problems.len().min(10)]
    );
}

/// `backup done: incremental, 9 files, 443584 bytes, 2 removed, …` → (kind, files, removed).
fn parse_report(line: &str) -> (String, u64, u64) {
    let rest = line
        .strip_prefix("backup done: ")
        .unwrap_or_else(|| panic!("not a completed backup: {line}"));
    let parts: Vec<&str> = rest.split(", ").collect();
    let num = |s: &str| s.split(' ').next().unwrap().parse::<u64>().unwrap();
    (parts[0].to_string(), num(parts[1]), num(parts[3]))
}

/// Runs a client to completion with a deadline; returns its stdout and stderr together.
fn run(cmd: Command) -> String {
    let o = common::run_with_timeout(cmd, common::CLIENT_TIMEOUT);
    o.stdout + &o.stderr
}

struct Peers {
    ibd: PathBuf,
}

fn peers() -> Option<Peers> {
    Some(Peers {
        ibd: common::peer_python("ibd")?,
    })
}

#[test]
fn idevicebackup2_full_incremental_and_encryption() {
    let (Some(peers), Some(ib2), Some(pair), Some(info)) = (
        peers(),
        common::system_bin("idevicebackup2"),
        common::system_bin("idevicepair"),
        common::system_bin("ideviceinfo"),
    ) else {
        return;
    };
    const SEED: u64 = 11;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let backups = tmp.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let first = EncryptionChoice::On(Password::new("first password"));
    let serve = Serve::start(SEED, 1, &state, first);
    let udid = serve.udid.clone();
    let tool = |bin: &Path, serve: &Serve, args: &[&str]| {
        let mut c = Command::new(bin);
        c.env("USBMUXD_SOCKET_ADDRESS", &serve.addr)
            .arg("-u")
            .arg(&udid)
            .args(args);
        run(c)
    };
    let out = tool(&pair, &serve, &["pair"]);
    assert!(out.contains("SUCCESS: Paired with device"), "{out}");
    let out = tool(&pair, &serve, &["validate"]);
    assert!(out.contains("SUCCESS: Validated pairing"), "{out}");
    let out = tool(&info, &serve, &["-k", "UniqueDeviceID"]);
    assert_eq!(out.trim(), udid);
    let will_encrypt = |serve: &Serve| {
        tool(
            &info,
            serve,
            &["-q", "com.apple.mobile.backup", "-k", "WillEncrypt"],
        )
        .trim()
        .to_string()
    };
    assert_eq!(will_encrypt(&serve), "true");

    // Day 1: a full backup.
    let bdir = backups.to_str().unwrap();
    let out = tool(&ib2, &serve, &["backup", "--full", bdir]);
    assert!(out.contains("Backup Successful."), "{out}");
    let (kind, _, _) = parse_report(&serve.report(1));
    assert_eq!(kind, "full");
    let day1 = Phone::new(SEED, PROFILE, 1);
    assert_decrypts_to(&peers.ibd, &backups.join(&udid), "first password", &day1);
    serve.stop();

    // Day 2, same pairing: an incremental backup sends only what changed.
    let serve = Serve::start(SEED, 2, &state, EncryptionChoice::Keep);
    let out = tool(&ib2, &serve, &["backup", bdir]);
    assert!(out.contains("Backup Successful."), "{out}");
    let day2 = Phone::new(SEED, PROFILE, 2);
    let (kind, files, removed) = parse_report(&serve.report(1));
    assert_eq!(kind, "incremental");
    assert_eq!((files, removed), common::expected_changes(&day1, &day2));
    assert!(files > 0);
    assert_decrypts_to(&peers.ibd, &backups.join(&udid), "first password", &day2);

    // Encryption off (wrong password first), then on with another password.
    let out = tool(&ib2, &serve, &["encryption", "off", "not the password"]);
    assert!(out.contains("Could not disable backup encryption"), "{out}");
    assert_eq!(will_encrypt(&serve), "true");
    let out = tool(&ib2, &serve, &["encryption", "off", "first password"]);
    assert!(
        out.contains("Backup encryption has been disabled successfully"),
        "{out}"
    );
    assert_eq!(will_encrypt(&serve), "false");
    let out = tool(&ib2, &serve, &["encryption", "on", "second password"]);
    assert!(
        out.contains("Backup encryption has been enabled successfully"),
        "{out}"
    );
    assert_eq!(will_encrypt(&serve), "true");

    // The new keys do not open the old backup: a full one, under the new password.
    let out = tool(&ib2, &serve, &["backup", bdir]);
    assert!(out.contains("Backup Successful."), "{out}");
    let (kind, _, _) = parse_report(&serve.report(2));
    assert_eq!(kind, "full");
    assert_decrypts_to(&peers.ibd, &backups.join(&udid), "second password", &day2);
    serve.stop();
}

#[test]
fn pymobiledevice3_full_incremental_and_change_password() {
    let (Some(peers), Some(pmd3)) = (peers(), common::peer_bin("pmd3", "pymobiledevice3")) else {
        return;
    };
    const SEED: u64 = 12;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let home = tmp.path().join("home");
    let backups = tmp.path().join("backups");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir(&backups).unwrap();
    let tool = |serve: &Serve, args: &[&str]| {
        let mut c = Command::new(&pmd3);
        // Its own HOME: pymobiledevice3 caches pair records there.
        c.env("HOME", &home)
            .env("USBMUXD_SOCKET_ADDRESS", &serve.addr)
            .env_remove("PYMOBILEDEVICE3_USBMUX")
            .args(args);
        run(c)
    };
    let bdir = backups.to_str().unwrap();

    let serve = Serve::start(
        SEED,
        1,
        &state,
        EncryptionChoice::On(Password::new("pmd3 password")),
    );
    let udid = serve.udid.clone();
    tool(&serve, &["backup2", "backup", "--full", bdir]);
    let (kind, _, _) = parse_report(&serve.report(1));
    assert_eq!(kind, "full");
    let day1 = Phone::new(SEED, PROFILE, 1);
    assert_decrypts_to(&peers.ibd, &backups.join(&udid), "pmd3 password", &day1);
    serve.stop();

    let serve = Serve::start(SEED, 2, &state, EncryptionChoice::Keep);
    tool(&serve, &["backup2", "backup", bdir]);
    let day2 = Phone::new(SEED, PROFILE, 2);
    let (kind, files, removed) = parse_report(&serve.report(1));
    assert_eq!(kind, "incremental");
    assert_eq!((files, removed), common::expected_changes(&day1, &day2));
    assert_decrypts_to(&peers.ibd, &backups.join(&udid), "pmd3 password", &day2);

    tool(
        &serve,
        &[
            "backup2",
            "change-password",
            "pmd3 password",
            "new pmd3 password",
        ],
    );
    tool(&serve, &["backup2", "backup", bdir]);
    let (kind, _, _) = parse_report(&serve.report(2));
    assert_eq!(kind, "full");
    assert_decrypts_to(&peers.ibd, &backups.join(&udid), "new pmd3 password", &day2);
    serve.stop();
}
