//! The systemd-creds secret store against a software TPM (swtpm in socket mode), started and
//! killed by each test: round trip, a foreign TPM, damaged files, and no password leaking anywhere.
//!
//! swtpm has no resource manager, and systemd 252's `decrypt` leaves its policy session loaded
//! (the kernel's /dev/tpmrm0 flushes it when the process exits). Three leaked sessions fill the
//! simulator, so the fixture flushes sessions after each unseal, standing in for the kernel.

use cradle::password::Password;
use cradle::secrets::{
    provision_from_drive, SealingMode, SecretStore, SecretsError, Slot,
    SystemdCredsConfig as Config, SystemdCredsStore, TpmDevice, Udid, DRIVE_PASSWORD_FILE,
};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

/// Every password the tests use; none may show up in logs, errors or files.
const PASSWORDS: &[&str] = &[
    "correct-horse-battery-staple-1",
    "phone-only-pw-Zq81",
    "host-key-pw-77x",
    "drive-dropped-pw-31",
];

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `true` if the peers are here; otherwise one line and `false`, or a failure when
/// `CRADLE_REQUIRE_PEERS` is set (scripts/test sets it, so CI must have them).
fn peers_present() -> bool {
    let missing: Vec<&str> = ["swtpm", "systemd-creds", "tpm2_flushcontext"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CRADLE_REQUIRE_PEERS").is_some() {
        panic!(
            "CRADLE_REQUIRE_PEERS is set but {missing:?} are missing (scripts/test installs them)"
        );
    }
    eprintln!(
        "skipping: {} not installed (apt-get install swtpm tpm2-tools systemd)",
        missing.join(", ")
    );
    false
}

/// All log output of this test binary, captured at TRACE level.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer_buf = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || LogWriter(writer_buf.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);
impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A free port `p` whose neighbour `p + 1` is free too: the swtpm TCTI always finds the control
/// channel at the server port plus one.
fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// One swtpm process with its state in a temporary directory; killed on drop.
struct Swtpm {
    dir: tempfile::TempDir,
    port: u16,
    pid: i32,
}

impl Swtpm {
    fn start() -> Swtpm {
        let dir = tempfile::tempdir().unwrap();
        // Ports are picked free, then bound by swtpm; retry on the rare race with another test.
        for _ in 0..5 {
            let port = free_port_pair();
            let ctrl = port + 1;
            let pidfile = dir.path().join("swtpm.pid");
            // --daemon: the parent exits only once the sockets listen, so no polling is needed.
            let status = Command::new("swtpm")
                .args(["socket", "--tpm2", "--daemon"])
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
                .args(["--flags", "not-need-init,startup-clear"])
                .arg("--pid")
                .arg(format!("file={}", pidfile.display()))
                .status()
                .expect("run swtpm");
            if status.success() {
                let pid = std::fs::read_to_string(&pidfile)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                return Swtpm { dir, port, pid };
            }
        }
        panic!("swtpm did not start");
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// What the kernel resource manager does when a process closes /dev/tpmrm0.
    fn flush_sessions(&self) {
        for what in ["--loaded-session", "--saved-session", "--transient-object"] {
            let st = Command::new("tpm2_flushcontext")
                .arg(what)
                .env("TPM2TOOLS_TCTI", self.tcti())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "tpm2_flushcontext {what} failed");
        }
    }

    fn store(&self, state_dir: &Path) -> SystemdCredsStore {
        SystemdCredsStore::open(Config {
            state_dir: state_dir.to_path_buf(),
            tpm: TpmDevice::Explicit(self.tcti()),
            ..Default::default()
        })
        .unwrap()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let _ = self.dir.path();
    }
}

fn phone(u: &str) -> Slot {
    Slot::Phone(Udid::new(u).unwrap())
}

/// Fails if any test password occurs in any file under `dir` (raw bytes) or in the log.
fn assert_no_plaintext(dir: &Path, log: &Arc<Mutex<Vec<u8>>>) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    assert!(!files.is_empty(), "nothing to scan under {}", dir.display());
    let log = log.lock().unwrap().clone();
    for pw in PASSWORDS {
        let needle = pw.as_bytes();
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "password found in {}",
                f.display()
            );
        }
        assert!(
            !log.windows(needle.len()).any(|w| w == needle),
            "password found in the log"
        );
    }
}

#[test]
fn set_get_round_trip_and_nothing_leaks() {
    if !peers_present() {
        return;
    }
    let log = captured_log();
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("secrets");
    let store = tpm.store(&dir);
    assert_eq!(store.mode(), SealingMode::Tpm2);

    let udid = "00008030-001A2B3C4D5E6F70";
    store
        .set(&Slot::Default, &Password::new(PASSWORDS[0]))
        .unwrap();
    store
        .set(&phone(udid), &Password::new(PASSWORDS[1]))
        .unwrap();

    assert_eq!(
        store.get(&Slot::Default).unwrap().expose(),
        PASSWORDS[0].as_bytes()
    );
    tpm.flush_sessions();
    let got = store.get(&phone(udid)).unwrap();
    tpm.flush_sessions();
    assert_eq!(got.expose(), PASSWORDS[1].as_bytes());
    assert_eq!(format!("{got:?}"), "Password(<redacted>)");

    // Another phone has no password of its own: NotFound, and the default stands in.
    let other = phone("ffffffffffffffffffffffffffffffffffffffff");
    let err = store.get(&other).unwrap_err();
    assert!(matches!(err, SecretsError::NotFound { .. }), "{err}");
    let (slot, pw) = store
        .password_for_phone(&Udid::new("ffffffffffffffffffffffffffffffffffffffff").unwrap())
        .unwrap()
        .unwrap();
    tpm.flush_sessions();
    assert_eq!(slot, Slot::Default);
    assert_eq!(pw.expose(), PASSWORDS[0].as_bytes());

    // status: two sealed entries, TPM mode, no secret in the listing.
    let list = store.list().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|e| e.mode == SealingMode::Tpm2));
    let shown = format!("{list:?}");
    assert!(PASSWORDS.iter().all(|p| !shown.contains(p)));

    // Modes: 0700 directory, 0600 files.
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for e in std::fs::read_dir(&dir).unwrap() {
        let m = e.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
    }

    // Replace, then forget.
    store
        .set(&phone(udid), &Password::new(PASSWORDS[3]))
        .unwrap();
    assert_eq!(
        store.get(&phone(udid)).unwrap().expose(),
        PASSWORDS[3].as_bytes()
    );
    tpm.flush_sessions();
    assert_no_plaintext(state.path(), &log);
    assert!(store.remove(&phone(udid)).unwrap());
    assert!(!store.remove(&phone(udid)).unwrap());
    assert!(matches!(
        store.get(&phone(udid)),
        Err(SecretsError::NotFound { .. })
    ));
    assert_eq!(store.list().unwrap().len(), 1);
    assert_no_plaintext(state.path(), &log);
}

#[test]
fn sealed_file_does_not_open_on_another_tpm() {
    if !peers_present() {
        return;
    }
    let log = captured_log();
    let (a, b) = (Swtpm::start(), Swtpm::start());
    let state = tempfile::tempdir().unwrap();
    let store_a = a.store(state.path());
    store_a
        .set(&Slot::Default, &Password::new(PASSWORDS[0]))
        .unwrap();

    // The same directory (a copy of the box's disk) read on a second TPM.
    let store_b = b.store(state.path());
    let err = store_b.get(&Slot::Default).unwrap_err();
    b.flush_sessions();
    assert!(matches!(err, SecretsError::WrongTpm { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("different TPM"), "{text}");
    assert!(text.contains("default.cred"), "{text}");
    assert!(!text.contains(PASSWORDS[0]) && !format!("{err:?}").contains(PASSWORDS[0]));

    // Still fine on the TPM that sealed it.
    assert_eq!(
        store_a.get(&Slot::Default).unwrap().expose(),
        PASSWORDS[0].as_bytes()
    );
    a.flush_sessions();
    assert_no_plaintext(state.path(), &log);
}

#[test]
fn damaged_files_give_clear_errors() {
    if !peers_present() {
        return;
    }
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let store = tpm.store(state.path());
    store
        .set(&Slot::Default, &Password::new(PASSWORDS[0]))
        .unwrap();
    let path = store.sealed_path(&Slot::Default);
    let good = std::fs::read(&path).unwrap();

    // Each damage must be reported as Corrupt, naming the file; none may unseal.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let mut tail = good.clone();
    let end = tail.len() - 8;
    tail[end] = if tail[end] == b'A' { b'B' } else { b'A' };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one base64 character changed in the middle", flipped),
        ("one character changed near the end", tail),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("not a credential", b"hello\n".to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = store.get(&Slot::Default).unwrap_err();
        tpm.flush_sessions();
        assert!(
            matches!(err, SecretsError::Corrupt { .. }),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains("damaged"), "{what}: {err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{what}: {err}"
        );
    }

    // Without the checksum beside it, a change inside the TPM blob cannot be told from a foreign
    // TPM; the error still says "damaged" rather than guessing.
    let sum = path.with_extension("cred.sha256");
    std::fs::remove_file(&sum).unwrap();
    let mut blob = good.clone();
    blob[200] = if blob[200] == b'A' { b'B' } else { b'A' };
    std::fs::write(&path, &blob).unwrap();
    let err = store.get(&Slot::Default).unwrap_err();
    tpm.flush_sessions();
    assert!(matches!(err, SecretsError::Corrupt { .. }), "{err:?}");

    // Restoring the good bytes makes it readable again (the checksum is only advisory).
    std::fs::write(&path, &good).unwrap();
    assert_eq!(
        store.get(&Slot::Default).unwrap().expose(),
        PASSWORDS[0].as_bytes()
    );
    tpm.flush_sessions();
}

#[test]
fn host_key_mode_round_trip_when_allowed() {
    if !peers_present() {
        return;
    }
    if Path::new("/dev/tpmrm0").exists() {
        eprintln!("skipping: this machine has a real TPM, so Auto would pick it");
        return;
    }
    let log = captured_log();
    let state = tempfile::tempdir().unwrap();
    let cfg = Config {
        state_dir: state.path().join("secrets"),
        tpm: TpmDevice::Auto,
        host_key_file: Some(state.path().join("credential.secret")),
        ..Default::default()
    };
    let err = SystemdCredsStore::open(cfg.clone()).unwrap_err();
    assert!(matches!(err, SecretsError::NoTpm));
    let store = SystemdCredsStore::open(Config {
        allow_host_key: true,
        ..cfg.clone()
    })
    .unwrap();
    assert_eq!(store.mode(), SealingMode::HostKey);
    store
        .set(&phone("abc-123"), &Password::new(PASSWORDS[2]))
        .unwrap();
    assert_eq!(
        store.get(&phone("abc-123")).unwrap().expose(),
        PASSWORDS[2].as_bytes()
    );
    assert_eq!(store.list().unwrap()[0].mode, SealingMode::HostKey);

    // Another box's host key: the file is intact but does not open.
    let other = SystemdCredsStore::open(Config {
        allow_host_key: true,
        host_key_file: Some(state.path().join("other.secret")),
        ..cfg
    })
    .unwrap();
    let err = other.get(&phone("abc-123")).unwrap_err();
    assert!(matches!(err, SecretsError::WrongHostKey { .. }), "{err:?}");
    // The host key file is not ours to scan; the sealed files are.
    assert_no_plaintext(&state.path().join("secrets"), &log);
}

#[test]
fn provisioning_from_the_drive_seals_and_destroys_the_file() {
    if !peers_present() {
        return;
    }
    let log = captured_log();
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let drive = tempfile::tempdir().unwrap();
    let store = tpm.store(state.path());
    std::fs::write(
        drive.path().join(DRIVE_PASSWORD_FILE),
        format!("{}\n", PASSWORDS[3]),
    )
    .unwrap();
    let out = provision_from_drive(drive.path(), &store).unwrap().unwrap();
    tpm.flush_sessions();
    assert_eq!(out.slot, Slot::Default);
    assert_eq!(out.mode, SealingMode::Tpm2);
    assert!(!out.replaced);
    assert!(!drive.path().join(DRIVE_PASSWORD_FILE).exists());
    assert_eq!(
        store.get(&Slot::Default).unwrap().expose(),
        PASSWORDS[3].as_bytes()
    );
    tpm.flush_sessions();
    assert_eq!(provision_from_drive(drive.path(), &store).unwrap(), None);
    assert_no_plaintext(state.path(), &log);
}

#[test]
fn cli_set_status_forget() {
    if !peers_present() {
        return;
    }
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("secrets");
    let cradle = |args: &[&str], stdin: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cradle"))
            .arg("password")
            .args(args)
            .env("CRADLE_SECRETS_DIR", &dir)
            .env("CRADLE_TPM2_DEVICE", tpm.tcti())
            .env_remove("CRADLE_PASSWORD_FILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(PASSWORDS.iter().all(|p| !text.contains(p)), "{text}");
        (out.status.code(), text)
    };
    let pw = format!("{}\n", PASSWORDS[1]);
    let (code, text) = cradle(
        &["set", "--udid", "00008110-000A", "--password-file", "-"],
        pw.as_bytes(),
    );
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = cradle(&["status"], b"");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("sealing: tpm2"), "{text}");
    assert!(
        text.contains("00008110-000A") && text.contains("tpm2"),
        "{text}"
    );
    // Without a file and without a terminal there is no password: refused, nothing stored.
    let (code, text) = cradle(&["set", "--default"], b"");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no password given"), "{text}");
    let (code, _) = cradle(&["forget", "--udid", "00008110-000A"], b"");
    assert_eq!(code, Some(0));
    let (code, text) = cradle(&["status"], b"");
    assert!(text.contains("no passwords stored"), "{text}");
    assert_eq!(code, Some(0));
}

#[test]
fn new_default_wins_over_the_copy_systemd_loaded_at_start() {
    if !peers_present() {
        return;
    }
    let tpm = Swtpm::start();
    let state = tempfile::tempdir().unwrap();
    let creds = state.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("cradle-default-password"), PASSWORDS[0]).unwrap();
    let store = SystemdCredsStore::open(Config {
        state_dir: state.path().join("secrets"),
        credentials_dir: Some(creds),
        tpm: TpmDevice::Explicit(tpm.tcti()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        store.get(&Slot::Default).unwrap().expose(),
        PASSWORDS[0].as_bytes()
    );

    let drive = tempfile::tempdir().unwrap();
    std::fs::write(drive.path().join(DRIVE_PASSWORD_FILE), PASSWORDS[3]).unwrap();
    let out = provision_from_drive(drive.path(), &store).unwrap().unwrap();
    tpm.flush_sessions();
    assert!(out.replaced);
    assert_eq!(
        store.get(&Slot::Default).unwrap().expose(),
        PASSWORDS[3].as_bytes()
    );
    tpm.flush_sessions();
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].mode, SealingMode::Tpm2);
}
