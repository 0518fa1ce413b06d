//! The mobilebackup2 host against a scripted phone in memory (a `UnixStream` pair): the phone
//! side is written with the same codec the simulated backup agent uses.

mod common;

use common::mb2::ScriptedPhone;
use cradle::backup2::dl::EMPTY_PARAMETER;
use cradle::backup2::file_stream::{self, CODE_FILE_DATA};
use cradle::backup2::host::{HostError, ProtocolError};
use cradle::backup2::messages::DeviceResponse;
use cradle::backup2::*;
use cradle::password::Password;
use plist::{Dictionary, Value};
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

const U: &str = "00008030-001A2B3C4D5E6F70";

/// Each downloaded path with its bytes or the error text the host sent.
type Downloaded = Vec<(String, Result<Vec<u8>, String>)>;

/// The scripted phone's end of the connection.
type Phone = ScriptedPhone<UnixStream>;

impl Phone {
    fn request(&mut self) -> HostRequest {
        match self.recv() {
            HostMessage::ProcessMessage(r) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn expect_backup(&mut self, force_full: bool) {
        match self.request() {
            HostRequest::Backup {
                target_identifier,
                source_identifier,
                force_full_backup,
            } => {
                assert_eq!(target_identifier, U);
                assert_eq!(source_identifier.as_deref(), Some(U));
                assert_eq!(force_full_backup, force_full);
            }
            other => panic!("expected Backup, got {other:?}"),
        }
    }

    fn mkdir(&mut self, path: &str) -> StatusResponse {
        self.send(DeviceMessage::CreateDirectory {
            path: path.into(),
            progress: Some(1.0),
        });
        self.status()
    }

    fn upload(&mut self, files: &[(&str, &[u8])]) -> StatusResponse {
        let total = files.iter().map(|f| f.1.len() as u64).sum();
        self.send(DeviceMessage::UploadFiles {
            progress: Some(50.0),
            total_bytes: Some(total),
        });
        let mut w = FileStreamWriter::new(&mut self.s, StreamKind::Upload);
        for (path, data) in files {
            w.begin_file(&FileHeader {
                device_path: Some(format!("/var/.backup.i/{path}")),
                path: path.to_string(),
            })
            .unwrap();
            w.write_data(data).unwrap();
            w.finish_file().unwrap();
        }
        w.finish().unwrap();
        self.status()
    }

    /// DownloadFiles; returns each file's bytes or its error text, then the status.
    fn download(&mut self, paths: &[&str]) -> (Downloaded, StatusResponse) {
        self.send(DeviceMessage::DownloadFiles {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            progress: Some(0.0),
        });
        let mut r = FileStreamReader::new(&mut self.s, StreamKind::Download);
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::new();
        let mut cur: Option<(String, Vec<u8>)> = None;
        loop {
            match r.next(&mut buf).unwrap() {
                StreamEvent::File(h) => cur = Some((h.path, Vec::new())),
                StreamEvent::Data(n) => cur.as_mut().unwrap().1.extend_from_slice(&buf[..n]),
                StreamEvent::FileDone => {
                    let (p, d) = cur.take().unwrap();
                    out.push((p, Ok(d)));
                }
                StreamEvent::FileFailed { message, .. } => {
                    let (p, _) = cur.take().unwrap();
                    out.push((p, Err(message)));
                }
                StreamEvent::End => break,
            }
        }
        (out, self.status())
    }

    fn move_one(&mut self, src: &str, dst: &str) -> StatusResponse {
        self.send(DeviceMessage::MoveItems {
            moves: vec![(src.into(), dst.into())],
            progress: Some(90.0),
        });
        self.status()
    }

    fn remove(&mut self, paths: &[&str]) -> StatusResponse {
        self.send(DeviceMessage::RemoveItems {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            progress: Some(99.0),
        });
        self.status()
    }

    fn finish(&mut self, code: i64, description: Option<&str>) {
        let mut r = DeviceResponse::new(code);
        r.error_description = description.map(str::to_string);
        self.send(DeviceMessage::ProcessMessage(r.to_dict()));
    }

    /// UploadFiles announcing `total` bytes, then the stream's first file header.
    fn begin_upload(
        &mut self,
        total: u64,
        device_path: &str,
        path: String,
    ) -> FileStreamWriter<&mut UnixStream> {
        self.send(DeviceMessage::UploadFiles {
            progress: Some(1.0),
            total_bytes: Some(total),
        });
        let mut w = FileStreamWriter::new(&mut self.s, StreamKind::Upload);
        w.begin_file(&FileHeader {
            device_path: Some(device_path.into()),
            path,
        })
        .unwrap();
        w
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        idle_timeout: Duration::from_secs(30),
        poll_interval: Duration::from_millis(20),
        cancel: None,
    }
}

/// Starts the scripted phone and returns the host's negotiated session.
fn connect<T: Send + 'static>(
    cfg: SessionConfig,
    script: impl FnOnce(Phone) -> T + Send + 'static,
) -> (Mb2Session, JoinHandle<T>) {
    let (host, dev) = UnixStream::pair().unwrap();
    let phone = thread::spawn(move || {
        let mut p = Phone::new(dev);
        // As libplist sends it: a 4-byte real.
        assert_eq!(p.handshake(f64::from(2.1f32)), vec![2.0, 2.1]);
        script(p)
    });
    let session = Mb2Session::handshake(Box::new(host), cfg).expect("handshake");
    (session, phone)
}

/// A backup of `U` with the default options, its events unwatched.
fn backup(
    session: &mut Mb2Session,
    target: &mut FolderTarget,
) -> Result<TransferSummary, HostError> {
    session.backup(target, U, &BackupOptions::default(), &mut |_| {})
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn status_plist() -> Vec<u8> {
    let mut d = Dictionary::new();
    d.insert("SnapshotState".into(), Value::String("finished".into()));
    d.insert("IsFullBackup".into(), Value::Boolean(true));
    let mut out = Vec::new();
    Value::Dictionary(d).to_writer_xml(&mut out).unwrap();
    out
}

/// Lists every file under `root` (relative paths), for "nothing else was written" checks.
fn all_files(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn handshake_negotiates_2_1() {
    let (session, phone) = connect(config(), |mut p| p.expect_disconnect());
    assert_eq!(session.negotiated().protocol_version, 2.1);
    assert_eq!(session.negotiated().device_version, (300, 0));
    session.disconnect().unwrap();
    phone.join().unwrap();
}

#[test]
fn full_backup_into_folder() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let small = pattern(1000, 1);
    let big = pattern(5 * 1024 * 1024 + 17, 2);
    let status = status_plist();
    let (s2, b2, st2) = (small.clone(), big.clone(), status.clone());
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(true);
        p.send(DeviceMessage::GetFreeDiskSpace);
        let free = p.status();
        assert_eq!(free.code, 0);
        assert!(matches!(free.payload, Some(Value::Integer(i)) if i.as_unsigned().unwrap() > 0));
        for d in [
            U.to_string(),
            format!("{U}/Snapshot"),
            format!("{U}/Snapshot/ab"),
            format!("{U}/Snapshot/cd"),
            format!("{U}/ab"),
            format!("{U}/cd"),
        ] {
            let st = p.mkdir(&d);
            assert_eq!(st.code, 0);
            assert_eq!(
                st.payload, None,
                "CreateDirectory answers with the placeholder"
            );
        }
        let files: Vec<(String, Vec<u8>)> = vec![
            (format!("{U}/Snapshot/ab/ab01"), s2),
            (format!("{U}/Snapshot/cd/cd02"), b2),
            (format!("{U}/Snapshot/ab/ab03"), Vec::new()),
            (format!("{U}/Snapshot/Manifest.db"), b"sqlite".to_vec()),
            (format!("{U}/Snapshot/Manifest.plist"), b"manifest".to_vec()),
            (format!("{U}/Snapshot/Status.plist"), st2),
        ];
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_slice()))
            .collect();
        assert!(p.upload(&refs).is_ok());
        for (src, _) in &files {
            let dst = src.replace("/Snapshot/", "/");
            assert!(p.move_one(src, &dst).is_ok(), "move {src}");
        }
        assert!(p.remove(&[&format!("{U}/Snapshot")]).is_ok());
        p.finish(0, None);
        p.expect_disconnect();
    });
    let mut events = Vec::new();
    let summary = session
        .backup(
            &mut target,
            U,
            &BackupOptions {
                force_full: true,
                source_udid: None,
            },
            &mut |e| events.push(e),
        )
        .unwrap();
    session.disconnect().unwrap();
    phone.join().unwrap();

    assert_eq!(summary.files_received, 6);
    assert_eq!(
        summary.bytes_received,
        (small.len() + big.len() + 6 + 8 + status.len()) as u64
    );
    let root = dir.path().join(U);
    assert_eq!(fs::read(root.join("ab/ab01")).unwrap(), small);
    assert_eq!(fs::read(root.join("cd/cd02")).unwrap(), big);
    assert_eq!(fs::read(root.join("ab/ab03")).unwrap(), b"");
    assert_eq!(fs::read(root.join("Status.plist")).unwrap(), status);
    assert!(!root.join("Snapshot").exists());
    assert_eq!(
        all_files(dir.path()),
        [
            "Manifest.db",
            "Manifest.plist",
            "Status.plist",
            "ab/ab01",
            "ab/ab03",
            "cd/cd02"
        ]
        .map(|f| format!("{U}/{f}"))
    );
    // Progress reached the display: phases, percentages and byte counts.
    assert!(events.contains(&BackupEvent::Phase(Phase::Transferring)));
    let last = events
        .iter()
        .rev()
        .find_map(|e| match e {
            BackupEvent::Progress(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(last.percent, Some(99.0));
    assert_eq!(last.files_received, 6);
    assert_eq!(last.bytes_received, summary.bytes_received);
    assert!(events.contains(&BackupEvent::FileReceived {
        path: format!("{U}/Snapshot/cd/cd02"),
        size: big.len() as u64
    }));
}

#[test]
fn incremental_downloads_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(U);
    fs::create_dir_all(root.join("ab")).unwrap();
    let db = pattern(100_000, 3);
    fs::write(root.join("Manifest.plist"), b"previous manifest").unwrap();
    fs::write(root.join("Manifest.db"), &db).unwrap();
    fs::write(root.join("Status.plist"), status_plist()).unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let db2 = db.clone();
    let root2 = root.clone();
    let (mut session, phone) = connect(config(), move |mut p| {
        let root = root2;
        p.expect_backup(false);
        for (name, want) in [
            ("Manifest.plist", b"previous manifest".to_vec()),
            ("Manifest.db", db2),
            ("Status.plist", status_plist()),
        ] {
            let (files, st) = p.download(&[&format!("{U}/{name}")]);
            assert_eq!(files, vec![(format!("{U}/{name}"), Ok(want))]);
            assert!(st.is_ok());
            assert_eq!(st.payload, Some(Value::Dictionary(Dictionary::new())));
        }
        // A missing file: an error block and −13 with the per-file code −6.
        let missing = format!("{U}/Manifest.mbdb");
        let (files, st) = p.download(&[&missing, &format!("{U}/Manifest.plist")]);
        assert!(files[0].1.is_err());
        assert_eq!(files[1].1.as_deref().ok(), Some(&b"previous manifest"[..]));
        assert_eq!(st.code, -13);
        let failures = st.payload.unwrap().into_dictionary().unwrap();
        let entry = failures.get(&missing).unwrap().as_dictionary().unwrap();
        assert_eq!(
            cradle::plist_frame::as_i64(entry.get("DLFileErrorCode").unwrap()),
            Some(-6)
        );
        // Listing: names, types and sizes.
        p.send(DeviceMessage::ContentsOfDirectory { path: U.into() });
        let st = p.status();
        assert!(st.is_ok());
        let listing = st.payload.unwrap().into_dictionary().unwrap();
        let keys: Vec<_> = listing.keys().cloned().collect();
        assert_eq!(
            keys,
            ["Manifest.db", "Manifest.plist", "Status.plist", "ab"]
        );
        let ab = listing.get("ab").unwrap().as_dictionary().unwrap();
        assert_eq!(
            ab.get("DLFileType").unwrap().as_string(),
            Some("DLFileTypeDirectory")
        );
        let mdb = listing.get("Manifest.db").unwrap().as_dictionary().unwrap();
        assert_eq!(
            mdb.get("DLFileSize").unwrap().as_unsigned_integer(),
            Some(100_000)
        );
        assert!(mdb
            .get("DLFileModificationDate")
            .unwrap()
            .as_date()
            .is_some());
        // A missing directory lists as empty (libimobiledevice's answer).
        p.send(DeviceMessage::ContentsOfDirectory {
            path: format!("{U}/Snapshot"),
        });
        let st = p.status();
        assert!(st.is_ok());
        assert_eq!(st.payload, Some(Value::Dictionary(Dictionary::new())));
        // A deleted file is removed; a missing one is not an error.
        fs::write(root.join("ab/gone"), b"x").unwrap();
        assert!(p
            .remove(&[&format!("{U}/ab/gone"), &format!("{U}/ab/never")])
            .is_ok());
        p.finish(0, None);
        p.expect_disconnect();
    });
    let summary = backup(&mut session, &mut target).unwrap();
    session.disconnect().unwrap();
    phone.join().unwrap();
    assert_eq!(summary.files_sent, 4);
    assert_eq!(summary.local_failures, 1);
    assert!(!root.join("ab/gone").exists());
}

#[test]
fn free_space_purge_copy_and_unknown_messages_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join(U)).unwrap();
    fs::write(dir.path().join(U).join("a"), b"data").unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let expected_free = target.free_space().unwrap();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        p.send(DeviceMessage::GetFreeDiskSpace);
        let st = p.status();
        let free = st.payload.unwrap().as_unsigned_integer().unwrap();
        // Truthful: statvfs of the same filesystem, within what other tests may write meanwhile.
        assert!(
            free.abs_diff(expected_free) < 1 << 30,
            "{free} vs {expected_free}"
        );
        p.send(DeviceMessage::PurgeDiskSpace);
        let st = p.status();
        assert_eq!(st.code, -1);
        assert_eq!(st.message.as_deref(), Some("Operation not supported"));
        p.send(DeviceMessage::Unknown {
            name: "DLMessageFrobnicate".into(),
        });
        let st = p.status();
        assert_eq!(st.code, -1);
        assert!(st.message.unwrap().contains("DLMessageFrobnicate"));
        p.send(DeviceMessage::CopyItem {
            src: format!("{U}/a"),
            dst: format!("{U}/b"),
        });
        assert!(p.status().is_ok());
        p.send(DeviceMessage::MoveFiles {
            moves: vec![(format!("{U}/b"), format!("{U}/c"))],
            progress: Some(10.0),
        });
        assert!(p.status().is_ok());
        p.send(DeviceMessage::RemoveFiles {
            paths: vec![format!("{U}/a")],
            progress: Some(10.0),
        });
        assert!(p.status().is_ok());
        p.finish(0, None);
        p.expect_disconnect();
    });
    backup(&mut session, &mut target).unwrap();
    session.disconnect().unwrap();
    phone.join().unwrap();
    assert_eq!(all_files(dir.path()), [format!("{U}/c")]);
    assert_eq!(fs::read(dir.path().join(U).join("c")).unwrap(), b"data");
}

#[test]
fn hostile_paths_are_refused_and_nothing_escapes_the_root() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir_all(root.join(U)).unwrap();
    fs::write(outer.path().join("victim"), b"keep").unwrap();
    let mut target = FolderTarget::open(&root).unwrap();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        let st = p.upload(&[
            ("../victim", b"owned"),
            ("/etc/passwd-cradle-test", b"owned"),
            (&format!("{U}/../../victim"), b"owned"),
            (&format!("{U}/ok"), b"fine"),
        ]);
        assert_eq!(st.code, -13);
        let failures = st.payload.unwrap().into_dictionary().unwrap();
        assert_eq!(failures.len(), 3);
        assert!(failures.contains_key("../victim"));
        for st in [
            p.move_one(&format!("{U}/ok"), "../victim"),
            p.move_one("/etc/hostname", &format!("{U}/x")),
            p.remove(&["../victim"]),
            p.remove(&["/tmp"]),
            p.mkdir("../evil"),
            p.mkdir("/abs"),
        ] {
            assert_eq!(st.code, -1, "{st:?}");
        }
        p.send(DeviceMessage::CopyItem {
            src: "../victim".into(),
            dst: format!("{U}/stolen"),
        });
        assert_eq!(p.status().code, -1);
        p.send(DeviceMessage::ContentsOfDirectory { path: "..".into() });
        assert_eq!(p.status().code, -1);
        let (files, st) = p.download(&["../victim", "/etc/passwd"]);
        assert!(files.iter().all(|f| f.1.is_err()));
        assert_eq!(st.code, -13);
        p.finish(0, None);
        p.expect_disconnect();
    });
    let mut refused = 0;
    session
        .backup(&mut target, U, &BackupOptions::default(), &mut |e| {
            if matches!(e, BackupEvent::FileRefused { .. }) {
                refused += 1;
            }
        })
        .unwrap();
    session.disconnect().unwrap();
    phone.join().unwrap();
    assert_eq!(refused, 3);
    assert_eq!(fs::read(outer.path().join("victim")).unwrap(), b"keep");
    assert!(!Path::new("/etc/passwd-cradle-test").exists());
    assert_eq!(
        all_files(outer.path()),
        [format!("root/{U}/ok"), "victim".to_string()]
    );
    assert!(!outer.path().join("evil").exists());
}

#[test]
fn stream_stopping_mid_file_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join(U)).unwrap();
    fs::write(dir.path().join(U).join("Manifest.db"), b"previous").unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        let mut w = p.begin_upload(100, "/d/new", format!("{U}/new"));
        w.write_data(&[7u8; 10]).unwrap();
        w.finish_file().unwrap();
        w.begin_file(&FileHeader {
            device_path: Some("/d/Manifest.db".into()),
            path: format!("{U}/Manifest.db"),
        })
        .unwrap();
        // Announce 50 bytes, send 20, then the phone is unplugged.
        let mut b = Vec::new();
        b.extend_from_slice(&51u32.to_be_bytes());
        b.push(CODE_FILE_DATA);
        b.extend_from_slice(&[9u8; 20]);
        p.s.write_all(&b).unwrap();
        drop(p);
    });
    let err = backup(&mut session, &mut target).unwrap_err();
    phone.join().unwrap();
    assert!(matches!(err, HostError::PhoneDisconnected), "{err:?}");
    assert!(err.is_disconnect());
    // The completed file stays; the interrupted one kept its previous content; no temp files.
    assert_eq!(
        all_files(dir.path()),
        [format!("{U}/Manifest.db"), format!("{U}/new")]
    );
    assert_eq!(
        fs::read(dir.path().join(U).join("Manifest.db")).unwrap(),
        b"previous"
    );
    assert!(matches!(
        backup(&mut session, &mut target),
        Err(HostError::Closed)
    ));
}

#[test]
fn file_failed_on_phone_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join(U)).unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        let mut w = p.begin_upload(3, "/d/x", format!("{U}/backup_manifest.db"));
        w.write_data(b"abc").unwrap();
        w.fail_file("Operation not permitted").unwrap();
        w.finish().unwrap();
        assert!(p.status().is_ok());
        p.finish(0, None);
        p.expect_disconnect();
    });
    let mut events = Vec::new();
    let summary = session
        .backup(&mut target, U, &BackupOptions::default(), &mut |e| {
            events.push(e)
        })
        .unwrap();
    session.disconnect().unwrap();
    phone.join().unwrap();
    assert_eq!(summary.files_failed_on_phone, 1);
    assert!(events.contains(&BackupEvent::FileFailedOnPhone {
        path: format!("{U}/backup_manifest.db"),
        message: "Operation not permitted".into()
    }));
    assert!(all_files(dir.path()).is_empty());
}

#[test]
fn four_gib_block_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join(U)).unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        p.send(DeviceMessage::UploadFiles {
            progress: Some(1.0),
            total_bytes: Some(1),
        });
        let mut b = Vec::new();
        file_stream::encode_path("/d/x", &mut b);
        file_stream::encode_path(&format!("{U}/x"), &mut b);
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        b.push(CODE_FILE_DATA);
        p.s.write_all(&b).unwrap();
        p.expect_disconnect();
    });
    let err = backup(&mut session, &mut target).unwrap_err();
    phone.join().unwrap();
    assert!(
        matches!(
            err,
            HostError::Protocol(ProtocolError::Stream(
                file_stream::StreamError::BlockTooLong { .. }
            ))
        ),
        "{err:?}"
    );
    assert!(all_files(dir.path()).is_empty());
}

#[test]
fn error_code_105_is_typed_with_its_meaning() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        p.finish(
            105,
            Some("Insufficient free disk space on drive to upload files"),
        );
        p.expect_disconnect();
    });
    let err = backup(&mut session, &mut target).unwrap_err();
    let HostError::Device(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(f.code, 105);
    assert_eq!(f.meaning, "not enough free space on the backup drive");
    assert!(err.to_string().contains("Insufficient free disk space"));
    // A refusal leaves the session usable for a clean goodbye.
    session.disconnect().unwrap();
    phone.join().unwrap();
}

#[test]
fn phone_eof_mid_backup_leaves_previous_backup_untouched() {
    let outer = tempfile::tempdir().unwrap();
    let (root, before) = previous_backup(outer.path());
    let mut target = FolderTarget::open(&root).unwrap();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        assert!(p.mkdir(&format!("{U}/Snapshot/ab")).is_ok());
        let st = p.upload(&[(&format!("{U}/Snapshot/ab/ab01"), b"new file")]);
        assert!(st.is_ok());
        // Unplugged before any move.
        drop(p);
    });
    let err = backup(&mut session, &mut target).unwrap_err();
    phone.join().unwrap();
    assert!(matches!(err, HostError::PhoneDisconnected), "{err:?}");
    for (f, d) in before {
        assert_eq!(fs::read(outer.path().join(&f)).unwrap(), d, "{f}");
    }
}

#[test]
fn device_disconnect_message_fails_the_operation() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        p.send(DeviceMessage::Disconnect);
        p.expect_disconnect();
    });
    let err = backup(&mut session, &mut target).unwrap_err();
    phone.join().unwrap();
    assert!(matches!(err, HostError::DeviceDisconnected), "{err:?}");
}

#[test]
fn cancel_sends_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let cfg = SessionConfig {
        cancel: Some(cancel.clone()),
        ..config()
    };
    let (mut session, phone) = connect(cfg, move |mut p| {
        p.expect_backup(false);
        // The user presses cancel while the phone is still preparing (silent).
        cancel.store(true, Ordering::SeqCst);
        assert_eq!(p.recv(), HostMessage::Disconnect);
    });
    let err = backup(&mut session, &mut target).unwrap_err();
    phone.join().unwrap();
    assert!(matches!(err, HostError::Cancelled), "{err:?}");
}

#[test]
fn silent_phone_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let cfg = SessionConfig {
        idle_timeout: Duration::from_millis(200),
        poll_interval: Duration::from_millis(10),
        cancel: None,
    };
    let (mut session, phone) = connect(cfg, move |mut p| {
        p.expect_backup(false);
        p.expect_disconnect();
    });
    let err = backup(&mut session, &mut target).unwrap_err();
    phone.join().unwrap();
    assert!(matches!(err, HostError::Timeout(_)), "{err:?}");
}

#[test]
fn change_password_round_trip_and_refusal() {
    let (mut session, phone) = connect(config(), move |mut p| {
        match p.request() {
            HostRequest::ChangePassword {
                target_identifier,
                old_password,
                new_password,
            } => {
                assert_eq!(target_identifier, U);
                assert!(old_password.is_none());
                assert_eq!(new_password.unwrap().expose(), b"s3cret");
            }
            other => panic!("{other:?}"),
        }
        p.finish(0, None);
        // A wrong old password.
        assert!(matches!(p.request(), HostRequest::ChangePassword { .. }));
        p.finish(207, Some("Wrong password"));
        p.expect_disconnect();
    });
    let mut events = Vec::new();
    session
        .change_password(U, None, Some(&Password::new("s3cret")), &mut |e| {
            events.push(e)
        })
        .unwrap();
    assert!(events.contains(&BackupEvent::PasscodeRequested));
    let err = session
        .change_password(U, Some(&Password::new("wrong")), None, &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(&err, HostError::Device(f) if f.code == 207),
        "{err:?}"
    );
    assert!(matches!(
        session.change_password(U, None, None, &mut |_| {}),
        Err(HostError::Usage(_))
    ));
    session.disconnect().unwrap();
    phone.join().unwrap();
}

#[test]
fn xml_from_the_phone_is_accepted() {
    // pymobiledevice3-style peers speak XML; the host must read it.
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        let v = DeviceMessage::CreateDirectory {
            path: U.into(),
            progress: None,
        }
        .to_value();
        cradle::plist_frame::write_frame(&mut p.s, &v, cradle::plist_frame::PlistFormat::Xml)
            .unwrap();
        let st = p.status();
        assert!(st.is_ok());
        // Negative code sent unsigned, XML, as pymobiledevice3 would: parsed by the phone side.
        let raw = format!(
            "<?xml version=\"1.0\"?><plist version=\"1.0\"><array><string>DLMessageStatusResponse</string><integer>18446744073709551603</integer><string>Multi status</string><string>{EMPTY_PARAMETER}</string></array></plist>"
        );
        let back = cradle::plist_frame::decode_body(raw.as_bytes()).unwrap();
        assert!(matches!(
            HostMessage::decode(&back).unwrap(),
            HostMessage::StatusResponse(StatusResponse { code: -13, .. })
        ));
        p.finish(0, None);
        p.expect_disconnect();
    });
    backup(&mut session, &mut target).unwrap();
    session.disconnect().unwrap();
    phone.join().unwrap();
    assert!(dir.path().join(U).is_dir());
}

#[test]
fn side_events_arrive_while_the_phone_is_silent() {
    // The phone waits for its passcode before sending anything; the prompt event (relayed by
    // notification_proxy in real runs) must reach the display meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let mut target = FolderTarget::open(dir.path()).unwrap();
    let (side_tx, side_rx) = std::sync::mpsc::channel();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let (mut session, phone) = connect(config(), move |mut p| {
        p.expect_backup(false);
        side_tx.send(BackupEvent::PasscodeRequested).unwrap();
        seen_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the host delivered the event while waiting");
        p.finish(0, None);
        p.expect_disconnect();
    });
    session.set_side_events(side_rx);
    session
        .backup(&mut target, U, &BackupOptions::default(), &mut |e| {
            if e == BackupEvent::PasscodeRequested {
                let _ = seen_tx.send(());
            }
        })
        .unwrap();
    session.disconnect().unwrap();
    phone.join().unwrap();
}

/// A folder holding a previous backup, with a file beside it that must never change.
fn previous_backup(outer: &Path) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let root = outer.join("root");
    let dir = root.join(U);
    fs::create_dir_all(dir.join("ab")).unwrap();
    for (f, d) in [
        ("Manifest.db", &b"old db"[..]),
        ("Manifest.plist", b"old manifest"),
        ("ab/ab01", b"old file"),
    ] {
        fs::write(dir.join(f), d).unwrap();
    }
    fs::write(dir.join("Status.plist"), status_plist()).unwrap();
    fs::write(outer.join("victim"), b"keep").unwrap();
    let before = all_files(outer)
        .into_iter()
        .map(|f| (f.clone(), fs::read(outer.join(&f)).unwrap()))
        .collect();
    (root, before)
}

fn assert_unchanged(outer: &Path, before: &[(String, Vec<u8>)], what: &str) {
    let now: Vec<String> = all_files(outer)
        .into_iter()
        .filter(|f| !f.contains("/Snapshot/"))
        .collect();
    let was: Vec<String> = before.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(now, was, "{what}: files appeared or vanished");
    for (f, d) in before {
        assert_eq!(&fs::read(outer.join(f)).unwrap(), d, "{what}: {f} changed");
    }
}

#[test]
fn hostile_frames_are_typed_errors_and_leave_the_previous_backup() {
    type Script = fn(&mut Phone);
    let cases: [(&str, Script); 4] = [
        ("4 GiB frame length", |p| {
            p.s.write_all(&u32::MAX.to_be_bytes()).unwrap();
            // The host may already have hung up.
            let _ = p.s.write_all(b"<?xml");
        }),
        ("a frame that is not a plist", |p| {
            let body = b"this is not a property list";
            p.s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
            p.s.write_all(body).unwrap();
        }),
        ("a plist that is not a DeviceLink array", |p| {
            let mut body = Vec::new();
            Value::Dictionary(Dictionary::new())
                .to_writer_binary(&mut body)
                .unwrap();
            p.s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
            p.s.write_all(&body).unwrap();
        }),
        ("an upload stream cut mid-file", |p| {
            p.send(DeviceMessage::UploadFiles {
                progress: Some(1.0),
                total_bytes: Some(100),
            });
            let mut b = Vec::new();
            file_stream::encode_path("/d/x", &mut b);
            file_stream::encode_path(&format!("{U}/Snapshot/ab/ab01"), &mut b);
            file_stream::encode_block(CODE_FILE_DATA, &[7; 40], &mut b);
            p.s.write_all(&b).unwrap();
            // The cable goes: EOF in the middle of the file.
            p.s.shutdown(std::net::Shutdown::Both).unwrap();
        }),
    ];
    for (what, script) in cases {
        let outer = tempfile::tempdir().unwrap();
        let (root, before) = previous_backup(outer.path());
        let mut target = FolderTarget::open(&root).unwrap();
        let (mut session, phone) = connect(config(), move |mut p| {
            p.expect_backup(false);
            assert!(p.mkdir(&format!("{U}/Snapshot/ab")).is_ok());
            script(&mut p);
            p.expect_disconnect();
        });
        let err = backup(&mut session, &mut target).unwrap_err();
        phone.join().unwrap();
        match what {
            "an upload stream cut mid-file" => {
                assert!(
                    matches!(err, HostError::PhoneDisconnected),
                    "{what}: {err:?}"
                )
            }
            _ => assert!(matches!(err, HostError::Protocol(_)), "{what}: {err:?}"),
        }
        // The error names what happened.
        let text = err.to_string();
        assert!(
            text.contains("protocol") || text.contains("disconnected"),
            "{what}: {text}"
        );
        assert_unchanged(outer.path(), &before, what);
        assert!(
            !root.join(U).join("Snapshot/ab/ab01").exists(),
            "{what}: a partial file was kept"
        );
    }
}

/// Every file of a backup decrypted: (domain, path) → bytes.
fn decrypt_all(dir: &Path, pw: &Password) -> std::collections::BTreeMap<(String, String), Vec<u8>> {
    let folder = cradle::ios_backup::folder::BackupFolder::open(dir).unwrap();
    let open = folder.unlock(Some(pw)).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for row in open.rows() {
        let row = row.unwrap();
        if row.flags == 1 {
            let mut bytes = Vec::new();
            open.read_file_into(&row, &mut bytes).unwrap();
            out.insert((row.domain.clone(), row.relative_path.clone()), bytes);
        }
    }
    out
}

#[test]
fn simulated_phone_unplugged_mid_backup_keeps_the_previous_backup() {
    use cradle::backup2::run::{run_backup, RunError, RunOptions};
    use cradle::lockdown::{HostIdentity, MemoryPairStore};
    use cradle::sim::phone::{Phone as SynthPhone, Profile};
    use cradle::sim::simulator::{EncryptionChoice, Simulator, SimulatorOptions};

    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("backups");
    fs::create_dir(&root).unwrap();
    fs::write(outer.path().join("victim"), b"keep").unwrap();
    let pw = Password::new("unplug");
    let mut opts = SimulatorOptions::new(41, Profile::Tiny, 1);
    opts.dpic = 1000;
    opts.encryption = EncryptionChoice::On(pw.clone());
    let sim = Simulator::new(opts).unwrap();
    let store = MemoryPairStore::new();
    let host = HostIdentity::generate(None);
    let mut target = FolderTarget::open(&root).unwrap();
    let run = RunOptions::default();

    let phone = cradle::sim::attach_in_memory(sim.clone()).unwrap();
    run_backup(&phone, &store, &host, &mut target, &run, &mut |_| {}).unwrap();
    drop(phone);
    let dir = root.join(sim.udid());
    let day1 = decrypt_all(&dir, &pw);
    let synth = SynthPhone::new(41, Profile::Tiny, 1);
    assert_eq!(
        day1.len(),
        synth.entries().iter().filter(|e| e.is_file()).count()
    );
    let before: Vec<(String, Vec<u8>)> = all_files(outer.path())
        .into_iter()
        .filter(|f| !f.ends_with("Info.plist"))
        .map(|f| (f.clone(), fs::read(outer.path().join(&f)).unwrap()))
        .collect();

    // A full backup again, with the cable pulled part-way through the upload.
    let phone = cradle::sim::attach_in_memory(sim.clone()).unwrap();
    phone.cable().disconnect_after(1_000_000);
    let run_full = RunOptions {
        force_full: true,
        ..RunOptions::default()
    };
    let err = run_backup(&phone, &store, &host, &mut target, &run_full, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, RunError::Backup(h) if h.is_disconnect()),
        "{err:?}"
    );
    assert!(err.to_string().contains("disconnected"), "{err}");
    let now: Vec<String> = all_files(outer.path())
        .into_iter()
        .filter(|f| !f.contains("/Snapshot/") && !f.ends_with("Info.plist"))
        .collect();
    let was: Vec<String> = before.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(now, was, "files appeared or vanished outside Snapshot/");
    for (f, d) in &before {
        assert_eq!(&fs::read(outer.path().join(f)).unwrap(), d, "{f} changed");
    }
    assert_eq!(
        decrypt_all(&dir, &pw),
        day1,
        "the previous backup decrypts as before"
    );
}
