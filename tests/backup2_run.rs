//! A whole backup run (lockdown, notification_proxy, AFC sync lock, installation_proxy,
//! springboard, mobilebackup2) against the simulated device in memory, with a scripted
//! mobilebackup2 agent written with the DeviceLink codec.

mod common;

use common::mb2::ScriptedPhone;
use cradle::backup2::messages::DeviceResponse;
use cradle::backup2::run::{run_backup, RunError, RunOptions, VerifyError};
use cradle::backup2::*;
use cradle::lockdown::{HostIdentity, MemoryPairStore, PairEvent, PairOptions, SessionOptions};
use cradle::services::afc::SYNC_LOCK_PATH;
use cradle::services::notification_proxy::{
    LOCAL_AUTH_UI_PRESENTED, SYNC_CANCEL_REQUEST, SYNC_DID_FINISH, SYNC_DID_START,
    SYNC_LOCK_REQUEST, SYNC_WILL_START,
};
use cradle::sim::device::{DeviceIdentity, SimDevice, SimDeviceConfig, MOBILEBACKUP2_SERVICE};
use cradle::sim::services::{sim_app, SideServices};
use cradle::transport::BoxStream;
use plist::{Dictionary, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The device end of the mobilebackup2 connection.
type Agent = ScriptedPhone<BoxStream>;

impl Agent {
    fn expect_backup(&mut self) {
        assert!(matches!(
            self.recv(),
            HostMessage::ProcessMessage(HostRequest::Backup { .. })
        ));
    }
    fn upload(&mut self, udid: &str, files: &[(&str, Vec<u8>)]) {
        self.send(DeviceMessage::CreateDirectory {
            path: udid.into(),
            progress: None,
        });
        assert!(matches!(self.recv(), HostMessage::StatusResponse(s) if s.is_ok()));
        self.send(DeviceMessage::UploadFiles {
            progress: Some(50.0),
            total_bytes: Some(files.iter().map(|f| f.1.len() as u64).sum()),
        });
        let mut w = FileStreamWriter::new(&mut self.s, StreamKind::Upload);
        for (name, data) in files {
            w.begin_file(&FileHeader {
                device_path: Some(format!("/tmp/{name}")),
                path: format!("{udid}/{name}"),
            })
            .unwrap();
            w.write_data(data).unwrap();
            w.finish_file().unwrap();
        }
        w.finish().unwrap();
        assert!(matches!(self.recv(), HostMessage::StatusResponse(s) if s.is_ok()));
    }
    fn finish(&mut self, code: i64) {
        self.send(DeviceMessage::ProcessMessage(
            DeviceResponse::new(code).to_dict(),
        ));
    }
}

type Script = Box<dyn FnOnce(Agent) + Send>;

/// A simulated phone with the side services and a one-shot scripted mobilebackup2.
fn phone(
    script: impl FnOnce(Agent, &SideServices) + Send + 'static,
) -> (Arc<SimDevice>, SideServices) {
    let dev = SimDevice::new(SimDeviceConfig::new(DeviceIdentity::example())).unwrap();
    let side = SideServices::new(vec![
        sim_app("com.example.store", "Store App", true),
        sim_app("com.example.dev", "Dev App", false),
    ]);
    side.afc.seed_itunes_files().unwrap();
    for (name, h) in side.handlers() {
        dev.register_service(name, false, h);
    }
    let side2 = SideServices {
        notifications: side.notifications.clone(),
        afc: side.afc.clone(),
        apps: side.apps.clone(),
    };
    let script: Script = Box::new(move |a| script(a, &side2));
    let slot = Arc::new(Mutex::new(Some(script)));
    dev.register_service(
        MOBILEBACKUP2_SERVICE,
        true,
        Arc::new(move |s: BoxStream| {
            let script = slot.lock().unwrap().take();
            if let Some(script) = script {
                let mut a = Agent::new(s);
                a.handshake(2.1);
                script(a);
            }
        }),
    );
    (dev, side)
}

fn status_finished() -> Vec<u8> {
    let mut d = Dictionary::new();
    d.insert("SnapshotState".into(), Value::String("finished".into()));
    let mut out = Vec::new();
    Value::Dictionary(d).to_writer_binary(&mut out).unwrap();
    out
}

fn opts() -> RunOptions {
    RunOptions {
        session: SessionConfig {
            idle_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(20),
            cancel: None,
        },
        lockdown: SessionOptions {
            pair: PairOptions {
                trust_timeout: Duration::from_secs(30),
                poll_interval: Duration::ZERO,
            },
            ..SessionOptions::default()
        },
        ..RunOptions::default()
    }
}

#[test]
fn full_run_writes_info_plist_takes_the_lock_and_checks_status() {
    let (dev, side) = phone(|mut a, side| {
        let udid = DeviceIdentity::example().udid;
        a.expect_backup();
        // iOS ≥ 16.1: the passcode prompt before anything is sent.
        assert!(side.notifications.wait_for_observers(
            LOCAL_AUTH_UI_PRESENTED,
            1,
            Duration::from_secs(20)
        ));
        assert_eq!(side.notifications.post(LOCAL_AUTH_UI_PRESENTED), 1);
        a.upload(
            &udid,
            &[
                ("Manifest.db", b"db".to_vec()),
                ("Status.plist", status_finished()),
            ],
        );
        a.finish(0);
        a.expect_disconnect();
    });
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let store = MemoryPairStore::new();
    let host = HostIdentity::generate(Some("cradle-test".into()));
    let mut events = Vec::new();
    let report = run_backup(
        &dev.connector(),
        &store,
        &host,
        &mut target,
        &opts(),
        &mut |e| events.push(e),
    )
    .unwrap();
    let udid = dev.udid().to_string();
    assert_eq!(report.udid, udid);
    assert!(report.paired_now);
    assert!(report.sync_locked);
    assert_eq!(report.summary.files_received, 2);
    assert_eq!(report.product_version.as_deref(), Some("17.5.1"));

    // Info.plist: lockdown values, the app list, the store app's entry with its icon, iTunes files.
    let info = plist::Value::from_file(dir.path().join(&udid).join("Info.plist")).unwrap();
    let d = info.as_dictionary().unwrap();
    assert_eq!(
        d.get("Target Identifier").and_then(Value::as_string),
        Some(udid.as_str())
    );
    assert_eq!(
        d.get("Product Version").and_then(Value::as_string),
        Some("17.5.1")
    );
    let installed: Vec<_> = d
        .get("Installed Applications")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_string)
        .collect();
    assert_eq!(installed, ["com.example.store", "com.example.dev"]);
    let apps = d.get("Applications").unwrap().as_dictionary().unwrap();
    assert_eq!(apps.keys().collect::<Vec<_>>(), ["com.example.store"]);
    let entry = apps
        .get("com.example.store")
        .unwrap()
        .as_dictionary()
        .unwrap();
    assert!(entry.get("PlaceholderIcon").is_some());
    let itunes = d.get("iTunes Files").unwrap().as_dictionary().unwrap();
    assert!(itunes.contains_key("iTunesPrefs.plist"));
    assert!(d.get("iBooks Data 2").is_some());

    // The sync lock was taken and given back, with the notifications in order.
    assert!(!side.afc.is_locked(SYNC_LOCK_PATH));
    let posts = side.notifications.host_posts();
    assert_eq!(
        posts,
        [
            SYNC_WILL_START,
            SYNC_LOCK_REQUEST,
            SYNC_DID_START,
            SYNC_DID_FINISH
        ]
    );

    // The display saw pairing, every phase, and the passcode prompt.
    assert!(events.contains(&BackupEvent::Pairing(PairEvent::Paired)));
    assert!(events.contains(&BackupEvent::PasscodeRequested));
    let phases: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            BackupEvent::Phase(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(
        phases,
        [
            Phase::Connecting,
            Phase::Preparing,
            Phase::WaitingForPhone,
            Phase::Transferring,
            Phase::Verifying,
            Phase::Finishing
        ]
    );
}

#[test]
fn success_without_status_plist_is_not_a_backup() {
    let (dev, side) = phone(|mut a, _| {
        a.expect_backup();
        a.finish(0);
        a.expect_disconnect();
    });
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let err = run_backup(
        &dev.connector(),
        &MemoryPairStore::new(),
        &HostIdentity::generate(None),
        &mut target,
        &opts(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, RunError::Verify(VerifyError::Missing(_))),
        "{err:?}"
    );
    // Cleanup ran all the same.
    assert!(!side.afc.is_locked(SYNC_LOCK_PATH));
    assert!(side
        .notifications
        .host_posts()
        .contains(&SYNC_DID_FINISH.to_string()));
}

#[test]
fn cancel_on_the_phone_stops_the_run() {
    let (dev, side) = phone(|mut a, side| {
        a.expect_backup();
        assert!(side.notifications.wait_for_observers(
            SYNC_CANCEL_REQUEST,
            1,
            Duration::from_secs(20)
        ));
        assert_eq!(side.notifications.post(SYNC_CANCEL_REQUEST), 1);
        a.expect_disconnect();
    });
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let mut events = Vec::new();
    let err = run_backup(
        &dev.connector(),
        &MemoryPairStore::new(),
        &HostIdentity::generate(None),
        &mut target,
        &opts(),
        &mut |e| events.push(e),
    )
    .unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    assert!(events.contains(&BackupEvent::CancelRequestedOnPhone));
    assert!(!side.afc.is_locked(SYNC_LOCK_PATH));
}

#[test]
fn change_password_turns_encryption_on_once() {
    let (dev, _side) = phone(|mut a, _| {
        match a.recv() {
            HostMessage::ProcessMessage(HostRequest::ChangePassword {
                old_password,
                new_password,
                ..
            }) => {
                assert!(old_password.is_none());
                assert_eq!(new_password.unwrap().expose(), b"pw");
            }
            other => panic!("{other:?}"),
        }
        a.finish(0);
        a.expect_disconnect();
    });
    let store = MemoryPairStore::new();
    let host = HostIdentity::generate(None);
    let pw = cradle::password::Password::new("pw");
    let mut events = Vec::new();
    // The scripted agent does not flip WillEncrypt; the device model does that itself.
    let now = cradle::backup2::run::run_change_password(
        &dev.connector(),
        &store,
        &host,
        None,
        Some(&pw),
        &opts(),
        &mut |e| events.push(e),
    )
    .unwrap();
    assert!(!now);
    assert!(events.contains(&BackupEvent::PasscodeRequested));
    // Already on: refused before anything is sent to mobilebackup2.
    dev.set_backup_password(Some(pw.clone()));
    let err = cradle::backup2::run::run_change_password(
        &dev.connector(),
        &store,
        &host,
        None,
        Some(&pw),
        &opts(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, RunError::EncryptionAlreadySet(true)),
        "{err:?}"
    );
}
