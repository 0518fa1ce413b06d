//! The agent against the real host session (`backup2::host`) in memory: a socket pair, a
//! `FolderTarget` in a temporary folder, and the folder checked with the backup-folder reader.

use super::*;
use crate::backup2::file_stream::StreamError;
use crate::backup2::host::{BackupOptions, HostError, Mb2Session, ProtocolError, SessionConfig};
use crate::backup2::messages::HostRequest;
use crate::backup2::target::{
    BackupPath, BackupTarget, DirEntry, EntryMeta, FolderTarget, TargetError, UploadSink,
};
use crate::ios_backup::folder::BackupFolder;
use crate::plist_frame::FrameError;
use crate::sim::phone::{Phone, Profile};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;

const SEED: u64 = 7;
const PW: &str = "correct horse";
/// Few rounds: the tests are about the protocol, not the KDF.
const TEST_DPIC: u32 = 1000;

fn config() -> AgentConfig {
    AgentConfig {
        dpic: TEST_DPIC,
        reply_timeout: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(20),
        // Small batches, so a tiny phone still needs several UploadFiles messages.
        batch_files: 16,
        ..AgentConfig::default()
    }
}

/// `config()` with a notification hub for the agent to post to.
fn config_with_hub(hub: Arc<NotificationHub>) -> AgentConfig {
    AgentConfig {
        notifications: Some(hub),
        ..config()
    }
}

fn agent_with(
    day: u32,
    password: Option<&str>,
    cfg: AgentConfig,
) -> (Arc<BackupAgent>, Arc<MemoryEncryption>) {
    let enc = Arc::new(MemoryEncryption::new(password.map(Password::new)));
    let agent = BackupAgent::new(Phone::new(SEED, Profile::Tiny, day), enc.clone(), cfg);
    (agent, enc)
}

fn host_config() -> SessionConfig {
    SessionConfig {
        idle_timeout: Duration::from_secs(20),
        poll_interval: Duration::from_millis(20),
        cancel: None,
    }
}

/// Connects a host session to the agent; the agent's session result comes back on join.
fn connect(
    agent: &Arc<BackupAgent>,
    cfg: SessionConfig,
) -> (Mb2Session, JoinHandle<Result<(), AgentError>>) {
    let (host, device) = UnixStream::pair().unwrap();
    let a = agent.clone();
    let t = std::thread::spawn(move || a.serve(Box::new(device)));
    let s = Mb2Session::handshake(Box::new(host), cfg).expect("handshake");
    (s, t)
}

fn udid(agent: &BackupAgent) -> String {
    agent.phone().identity().udid.clone()
}

/// Runs one backup with the host; returns the host's result and the agent's session result.
fn backup(
    agent: &Arc<BackupAgent>,
    root: &Path,
    force_full: bool,
) -> (
    Result<crate::backup2::TransferSummary, HostError>,
    Result<(), AgentError>,
) {
    let mut target = FolderTarget::open(root).unwrap();
    backup_into(agent, &mut target, force_full, host_config())
}

/// One backup that must succeed; returns the agent's report of it.
fn backup_ok(agent: &Arc<BackupAgent>, root: &Path) -> RunReport {
    backup(agent, root, false).0.expect("backup");
    agent.last_report().expect("a report")
}

/// The phone's refusal code, or a panic saying what came instead.
fn device_code<T: std::fmt::Debug>(host: Result<T, HostError>, what: &str) -> i64 {
    match host {
        Err(HostError::Device(f)) => f.code,
        other => panic!("{what}: expected a device error, got {other:?}"),
    }
}

fn backup_into(
    agent: &Arc<BackupAgent>,
    target: &mut dyn BackupTarget,
    force_full: bool,
    cfg: SessionConfig,
) -> (
    Result<crate::backup2::TransferSummary, HostError>,
    Result<(), AgentError>,
) {
    let (mut s, t) = connect(agent, cfg);
    let opts = BackupOptions {
        force_full,
        source_udid: None,
    };
    let res = s.backup(target, &udid(agent), &opts, &mut |_| {});
    if res.is_ok() {
        s.disconnect().unwrap();
    } else {
        drop(s);
    }
    (res, t.join().unwrap())
}

/// Decrypts the backup folder and checks it holds exactly the phone's entries and bytes.
fn assert_backup_is(root: &Path, phone: &Phone, password: Option<&str>) {
    let dir = root.join(&phone.identity().udid);
    assert!(!dir.join("Snapshot").exists(), "Snapshot left behind");
    let folder = BackupFolder::open(&dir).unwrap();
    assert_eq!(folder.is_encrypted(), password.is_some());
    let pw = password.map(Password::new);
    let open = folder.unlock(pw.as_ref()).unwrap();
    let mut rows = BTreeMap::new();
    for r in open.rows() {
        let r = r.unwrap();
        rows.insert((r.domain.clone(), r.relative_path.clone()), r);
    }
    assert_eq!(rows.len(), phone.entries().len(), "row count");
    let mut data_files = 0;
    for e in phone.entries() {
        let r = rows
            .get(&(e.domain.clone(), e.relative_path.clone()))
            .unwrap_or_else(|| panic!("missing row {}-{}", e.domain, e.relative_path));
        assert_eq!(r.flags, e.flags(), "{}", e.relative_path);
        if e.is_file() {
            data_files += 1;
            let mut got = Vec::new();
            open.read_file_into(r, &mut got).unwrap();
            let mut want = Vec::new();
            phone.open(e).unwrap().read_to_end(&mut want).unwrap();
            assert!(got == want, "content of {}-{}", e.domain, e.relative_path);
        }
    }
    // No stray data files: exactly one per file row.
    let mut on_disk = 0;
    for d in std::fs::read_dir(&dir).unwrap() {
        let d = d.unwrap();
        if d.file_type().unwrap().is_dir() {
            on_disk += std::fs::read_dir(d.path()).unwrap().count();
        }
    }
    assert_eq!(on_disk, data_files, "data files on disk");
}

#[test]
fn full_then_incremental_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let (agent, _) = agent_with(1, Some(PW), config());
    let (host, dev) = backup(&agent, tmp.path(), false);
    let summary = host.expect("day 1 backup");
    dev.expect("agent session");
    let r1 = agent.last_report().unwrap();
    assert_eq!(r1.outcome, RunOutcome::Completed);
    assert_eq!(r1.kind, BackupKind::Full);
    assert!(r1.encrypted);
    let day1 = agent.phone();
    let files1 = day1.entries().iter().filter(|e| e.is_file()).count() as u64;
    assert_eq!(r1.files_uploaded, files1);
    // Every data file plus the three manifests arrived at the host.
    assert_eq!(summary.files_received, files1 + 3);
    assert_backup_is(tmp.path(), &day1, Some(PW));

    let day2 = Phone::new(SEED, Profile::Tiny, 2);
    agent.set_phone(day2.clone());
    let (host, dev) = backup(&agent, tmp.path(), false);
    host.expect("day 2 backup");
    dev.expect("agent session");
    let r2 = agent.last_report().unwrap();
    assert_eq!(r2.kind, BackupKind::Incremental, "{r2}");
    let diff = day2.diff(&day1);
    let changed = diff.changed_files().count() as u64;
    let removed = diff.removed.iter().filter(|e| e.is_file()).count() as u64
        + diff
            .modified
            .iter()
            .filter(|(o, n)| o.is_file() && !n.is_file())
            .count() as u64;
    assert!(
        changed > 0,
        "day 2 changes nothing: the test would prove nothing"
    );
    assert_eq!(r2.files_uploaded, changed, "{r2}");
    assert_eq!(r2.files_removed, removed, "{r2}");
    eprintln!("{r1}\n{r2}");
    let files2 = day2.entries().iter().filter(|e| e.is_file()).count() as u64;
    assert_eq!(r2.files_unchanged + r2.files_uploaded, files2);
    assert_backup_is(tmp.path(), &day2, Some(PW));

    // Forced: everything again.
    let (host, _) = backup(&agent, tmp.path(), true);
    host.unwrap();
    let r3 = agent.last_report().unwrap();
    assert_eq!(r3.kind, BackupKind::Full);
    assert_eq!(r3.files_uploaded, files2);
    assert_eq!(r3.full_reason.as_deref(), Some("forced by the host"));
    assert_backup_is(tmp.path(), &day2, Some(PW));
}

#[test]
fn empty_manifest_plist_means_full_and_password_change_means_full() {
    let tmp = tempfile::tempdir().unwrap();
    let (agent, enc) = agent_with(1, None, config());
    backup_ok(&agent, tmp.path());
    assert_backup_is(tmp.path(), &agent.phone(), None);
    // What pymobiledevice3 leaves before a full backup: an empty Manifest.plist.
    let manifest = tmp.path().join(udid(&agent)).join("Manifest.plist");
    std::fs::write(&manifest, b"").unwrap();
    let r = backup_ok(&agent, tmp.path());
    assert_eq!(r.kind, BackupKind::Full);
    assert!(r.full_reason.unwrap().contains("empty"));
    // Unchanged folder, unchanged phone: incremental with nothing to send.
    let r = backup_ok(&agent, tmp.path());
    assert_eq!(
        (r.kind, r.files_uploaded),
        (BackupKind::Incremental, 0),
        "{r}"
    );
    // Encryption turned on: the old backup does not open with the new keys; a different
    // password: full again.
    for pw in [PW, "another one"] {
        enc.set_backup_password(Some(Password::new(pw)));
        let r = backup_ok(&agent, tmp.path());
        assert_eq!(r.kind, BackupKind::Full, "{r}");
        assert_backup_is(tmp.path(), &agent.phone(), Some(pw));
    }
}

#[test]
fn change_password_on_change_off() {
    let hub = Arc::new(NotificationHub::new());
    let (agent, enc) = agent_with(1, None, config_with_hub(hub));
    let u = udid(&agent);
    let (mut s, t) = connect(&agent, host_config());
    let pw = |s: &str| Password::new(s);
    s.change_password(&u, None, Some(&pw("one")), &mut |_| {})
        .unwrap();
    assert_eq!(enc.backup_password(), Some(pw("one")));
    // Wrong old password: refused with 207, nothing changes.
    assert_eq!(
        device_code(
            s.change_password(&u, Some(&pw("wrong")), None, &mut |_| {}),
            "wrong old password"
        ),
        codes::INVALID_PASSWORD
    );
    // A new password without the old one, while encryption is on: refused.
    assert!(matches!(
        s.change_password(&u, None, Some(&pw("two")), &mut |_| {}),
        Err(HostError::Device(_))
    ));
    assert_eq!(enc.backup_password(), Some(pw("one")));
    s.change_password(&u, Some(&pw("one")), Some(&pw("two")), &mut |_| {})
        .unwrap();
    assert_eq!(enc.backup_password(), Some(pw("two")));
    s.change_password(&u, Some(&pw("two")), None, &mut |_| {})
        .unwrap();
    assert_eq!(enc.backup_password(), None);
    // Turning off what is off: refused.
    assert!(matches!(
        s.change_password(&u, Some(&pw("two")), None, &mut |_| {}),
        Err(HostError::Device(_))
    ));
    s.disconnect().unwrap();
    t.join().unwrap().unwrap();
}

#[test]
fn info_is_refused_not_ignored() {
    let (agent, _) = agent_with(1, None, config());
    let tmp = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(tmp.path()).unwrap();
    let (mut s, t) = connect(&agent, host_config());
    let req = HostRequest::Info {
        target_identifier: udid(&agent),
        source_identifier: None,
    };
    let out = s.request(req, &mut target, &mut |_| {}).unwrap();
    assert_ne!(out.response.error_code, 0);
    s.disconnect().unwrap();
    t.join().unwrap().unwrap();
}

/// A folder whose free space is whatever the test says.
struct Cramped {
    inner: FolderTarget,
    free: u64,
}

impl BackupTarget for Cramped {
    fn open_read(&mut self, p: &BackupPath) -> Result<Box<dyn Read + '_>, TargetError> {
        self.inner.open_read(p)
    }
    fn create_file(&mut self, p: &BackupPath) -> Result<Box<dyn UploadSink + '_>, TargetError> {
        self.inner.create_file(p)
    }
    fn create_dir_all(&mut self, p: &BackupPath) -> Result<(), TargetError> {
        self.inner.create_dir_all(p)
    }
    fn move_item(&mut self, s: &BackupPath, d: &BackupPath) -> Result<(), TargetError> {
        self.inner.move_item(s, d)
    }
    fn remove(&mut self, p: &BackupPath) -> Result<(), TargetError> {
        self.inner.remove(p)
    }
    fn copy_item(&mut self, s: &BackupPath, d: &BackupPath) -> Result<(), TargetError> {
        self.inner.copy_item(s, d)
    }
    fn list_dir(&mut self, p: &BackupPath) -> Result<Vec<DirEntry>, TargetError> {
        self.inner.list_dir(p)
    }
    fn stat(&mut self, p: &BackupPath) -> Result<Option<EntryMeta>, TargetError> {
        self.inner.stat(p)
    }
    fn free_space(&mut self) -> Result<u64, TargetError> {
        Ok(self.free)
    }
}

#[test]
fn not_enough_space_is_error_105() {
    let tmp = tempfile::tempdir().unwrap();
    let (agent, _) = agent_with(1, None, config());
    let mut target = Cramped {
        inner: FolderTarget::open(tmp.path()).unwrap(),
        free: 1000,
    };
    let (host, dev) = backup_into(&agent, &mut target, false, host_config());
    assert_eq!(device_code(host, "cramped"), codes::NOT_ENOUGH_SPACE);
    dev.unwrap();
    assert!(matches!(
        agent.last_report().unwrap().outcome,
        RunOutcome::Refused { code: 105, .. }
    ));
}

fn faulty(fault: Fault) -> Arc<BackupAgent> {
    agent_with(
        1,
        Some(PW),
        AgentConfig {
            fault: Some(fault),
            ..config()
        },
    )
    .0
}

#[test]
fn pulled_cable_mid_upload_is_a_disconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = faulty(Fault::DisconnectAfterUploadBytes(10_000));
    let (host, dev) = backup(&agent, tmp.path(), false);
    assert!(
        matches!(host, Err(HostError::PhoneDisconnected)),
        "{host:?}"
    );
    assert!(matches!(dev, Err(AgentError::Injected(_))), "{dev:?}");
    assert!(matches!(
        agent.last_report().unwrap().outcome,
        RunOutcome::Interrupted { .. }
    ));
}

#[test]
fn malformed_frame_and_huge_lengths_are_protocol_errors() {
    let tmp = tempfile::tempdir().unwrap();
    type Want = fn(&HostError) -> bool;
    let cases: [(Fault, Want); 3] = [
        (
            Fault::MalformedFrame {
                at: FaultPoint::Start,
            },
            |e| {
                matches!(
                    e,
                    HostError::Protocol(ProtocolError::Frame(FrameError::BadPlist(_)))
                )
            },
        ),
        (
            Fault::HugeLength {
                at: FaultPoint::Moves,
            },
            |e| {
                matches!(
                    e,
                    HostError::Protocol(ProtocolError::Frame(FrameError::TooLong { .. }))
                )
            },
        ),
        (
            Fault::HugeLength {
                at: FaultPoint::Upload,
            },
            |e| {
                matches!(
                    e,
                    HostError::Protocol(ProtocolError::Stream(StreamError::BlockTooLong { .. }))
                )
            },
        ),
    ];
    for (fault, want) in cases {
        let (host, _) = backup(&faulty(fault), tmp.path(), false);
        assert!(host.as_ref().is_err_and(want), "{host:?}");
    }
}

#[test]
fn escaping_paths_are_refused_and_reported() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let escape = outer.path().join("escaped");
    for (at, path) in [
        (FaultPoint::Upload, "{udid}/../../escaped".to_string()),
        (FaultPoint::Upload, escape.display().to_string()),
        (FaultPoint::Moves, "{udid}/../../escaped".to_string()),
        (FaultPoint::Start, escape.display().to_string()),
    ] {
        let agent = faulty(Fault::BadPath { at, path });
        let (host, dev) = backup(&agent, &root, false);
        assert_ne!(device_code(host, &format!("{at:?}")), 0);
        dev.unwrap();
        assert!(!escape.exists(), "{at:?}: a path escaped the backup root");
        // The refusal cleaned up the staging folder.
        assert!(!root.join(udid(&agent)).join("Snapshot").exists(), "{at:?}");
    }
}

#[test]
fn stall_longer_than_the_host_waits_is_a_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = faulty(Fault::Stall {
        at: FaultPoint::Upload,
        duration: Duration::from_secs(30),
    });
    let cfg = SessionConfig {
        idle_timeout: Duration::from_millis(300),
        poll_interval: Duration::from_millis(20),
        cancel: None,
    };
    let mut target = FolderTarget::open(tmp.path()).unwrap();
    let started = Instant::now();
    let (host, dev) = backup_into(&agent, &mut target, false, cfg);
    assert!(matches!(host, Err(HostError::Timeout(_))), "{host:?}");
    // The agent noticed the host giving up instead of sleeping its full 30 s.
    assert!(matches!(dev, Err(AgentError::HostClosed)), "{dev:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn host_gone_between_operations_ends_cleanly() {
    let (agent, _) = agent_with(1, None, config());
    let (s, t) = connect(&agent, host_config());
    drop(s);
    t.join().unwrap().unwrap();
}

#[test]
fn change_password_tells_observers() {
    use crate::plist_frame::{read_frame, write_frame, PlistFormat};
    use crate::sim::services::notification_proxy_handler;
    let hub = Arc::new(NotificationHub::new());
    let (mut host_np, device_np) = UnixStream::pair().unwrap();
    let handler = notification_proxy_handler(hub.clone());
    std::thread::spawn(move || handler(Box::new(device_np)));
    let names = [
        NOTIFY_PASSCODE_PRESENTED,
        NOTIFY_PASSCODE_DISMISSED,
        NOTIFY_DOMAIN_CHANGED,
    ];
    for name in names {
        let mut d = plist::Dictionary::new();
        d.insert("Command".into(), "ObserveNotification".into());
        d.insert("Name".into(), name.into());
        write_frame(&mut host_np, &plist::Value::Dictionary(d), PlistFormat::Xml).unwrap();
    }
    assert!(hub.wait_for_observers(NOTIFY_DOMAIN_CHANGED, 1, Duration::from_secs(10)));
    let (agent, _) = agent_with(1, None, config_with_hub(hub));
    let (mut s, t) = connect(&agent, host_config());
    s.change_password(&udid(&agent), None, Some(&Password::new("pw")), &mut |_| {})
        .unwrap();
    s.disconnect().unwrap();
    t.join().unwrap().unwrap();
    host_np
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for name in names {
        let v = read_frame(&mut host_np).unwrap();
        let d = v.as_dictionary().unwrap();
        assert_eq!(
            d.get("Command").and_then(plist::Value::as_string),
            Some("RelayNotification")
        );
        assert_eq!(d.get("Name").and_then(plist::Value::as_string), Some(name));
    }
}
