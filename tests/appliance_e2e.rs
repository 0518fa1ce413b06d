//! The daemon loop end to end with the simulated iPhone over the in-memory usbmux link: the
//! screens it shows (through the real ssd1306 driver into FakeSsd1306, compared with golden
//! PNGs in tests/golden/appliance; `CRADLE_BLESS=1` rewrites them), faults (phone unplugged,
//! drive pulled, trust denied, unknown password, no OLED), the demo command, and that the
//! password reaches no log line, status report or run log.

use cradle::appliance::daemon::{DaemonParts, Input};
use cradle::appliance::drive::{read_run_log, CRADLE_DIR, LABEL_FILE};
use cradle::appliance::status::screen_name;
use cradle::appliance::{
    plug_simulator, query_status, render_human, serve_status, BoxedPanel, Daemon, DirDrive,
    MachineConfig, MemorySecretStore, PanelOpener, RepoDestination, StatusReport,
};
use cradle::backup2::run::RunOptions;
use cradle::display::{
    decode_png, encode_png, render, Brightness, BurnInConfig, FakeSsd1306, Frame, Panel,
    PanelError, Screen, Ssd1306Panel,
};
use cradle::lockdown::{HostIdentity, MemoryPairStore};
use cradle::password::Password;
use cradle::sim::device::TrustPolicy;
use cradle::sim::phone::Profile;
use cradle::sim::simulator::{EncryptionChoice, Simulator, SimulatorOptions};
use cradle::sim::InMemoryPhone;
use cradle::store::repo::{InitOptions, Repository};
use cradle::store::storage::LocalStorage;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Zebra-Quartz-7741";
const LABEL: &str = "CRADLE-TEST";
const WAIT: Duration = Duration::from_secs(120);

/// Every log line of this test process, to look for the password.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static LOG_INIT: Once = Once::new();

struct LogWriter;
impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    LOG_INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// A panel that is the real driver on a fake controller, recording each picture on the glass.
struct Recording {
    panel: Ssd1306Panel<FakeSsd1306>,
    fake: FakeSsd1306,
    frames: Arc<Mutex<Vec<(Screen, Frame)>>>,
}

impl Panel for Recording {
    fn show(&mut self, screen: &Screen, offset: (i32, i32)) -> Result<(), PanelError> {
        self.panel.show(screen, offset)?;
        assert_eq!(offset, (0, 0), "no burn-in shift within a test");
        self.frames
            .lock()
            .unwrap()
            .push((screen.clone(), self.fake.visible()));
        Ok(())
    }
    fn set_brightness(&mut self, b: Brightness) -> Result<(), PanelError> {
        self.panel.set_brightness(b)
    }
    fn set_power(&mut self, on: bool) -> Result<(), PanelError> {
        self.panel.set_power(on)
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    drive: PathBuf,
    tx: Sender<Input>,
    screens: Receiver<Screen>,
    seen: Vec<String>,
    status: Arc<Mutex<StatusReport>>,
    frames: Arc<Mutex<Vec<(Screen, Frame)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    socket: PathBuf,
    /// Byte limit of the repository for the next drive attach (a full drive).
    limit: Arc<Mutex<Option<u64>>>,
}

impl Rig {
    fn new(oled: bool) -> Rig {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let drive = dir.path().join("drive");
        std::fs::create_dir_all(&drive).unwrap();
        std::fs::write(drive.join(LABEL_FILE), LABEL).unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let f2 = frames.clone();
        let panel: PanelOpener = if oled {
            Box::new(move || {
                let fake = FakeSsd1306::new(0x3C);
                let panel = Ssd1306Panel::new(fake.clone(), 0x3C)?;
                Ok(Box::new(Recording {
                    panel,
                    fake,
                    frames: f2.clone(),
                }) as BoxedPanel)
            })
        } else {
            // No OLED on the bus: every open fails.
            Box::new(|| {
                let fake = FakeSsd1306::new(0x3C);
                Ssd1306Panel::new(fake, 0x3D).map(|p| Box::new(p) as BoxedPanel)
            })
        };
        let mut run_options = RunOptions::default();
        run_options.lockdown.pair.poll_interval = Duration::from_millis(50);
        let limit: Arc<Mutex<Option<u64>>> = Arc::default();
        let l2 = limit.clone();
        let parts = DaemonParts {
            machine: MachineConfig::default(),
            drive: Box::new(DirDrive::new(&drive, Some(LABEL.into()))),
            destination: Box::new(move |root: &Path| {
                let mut d = RepoDestination::new(root).with_init_options(InitOptions::for_tests());
                if let Some(n) = *l2.lock().unwrap() {
                    d = d.with_byte_limit(n);
                }
                Arc::new(d) as Arc<dyn cradle::appliance::Destination>
            }),
            pair_store: Arc::new(MemoryPairStore::new()),
            host: HostIdentity::generate(Some("Cradle test".into())),
            secrets: Arc::new(MemorySecretStore::with_default(Password::new(PASSWORD))),
            secrets_mode: "memory".into(),
            run_options,
            passcode_timeout: Duration::from_secs(60),
            panel,
            panel_kind: "oled".into(),
            burn_in: BurnInConfig::default(),
            notify: false,
        };
        let mut daemon = Daemon::new(parts);
        let (stx, screens) = mpsc::channel();
        daemon.observe(Box::new(move |s: &Screen| {
            let _ = stx.send(s.clone());
        }));
        let tx = daemon.sender();
        let status = daemon.status();
        let stop = Arc::new(AtomicBool::new(false));
        let socket = dir.path().join("status.sock");
        serve_status(&socket, status.clone(), stop.clone()).unwrap();
        let thread = std::thread::spawn(move || daemon.run());
        let mut rig = Rig {
            _dir: dir,
            drive,
            tx,
            screens,
            seen: Vec::new(),
            status,
            frames,
            thread: Some(thread),
            stop,
            socket,
            limit,
        };
        rig.wait("ready");
        rig
    }

    /// Waits for a screen named `want` (see `screen_name`); returns it.
    fn wait(&mut self, want: &str) -> Screen {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let s = self
                .screens
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {want} screen; seen: {:?}", self.seen));
            let name = screen_name(&s).to_string();
            if self.seen.last() != Some(&name) {
                self.seen.push(name.clone());
            }
            if name == want {
                return s;
            }
        }
    }

    /// Waits for the end of a backup: done, stored-raw or an error screen's name.
    fn wait_end(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let s = self
                .screens
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no end; seen: {:?}", self.seen));
            let name = screen_name(&s).to_string();
            if self.seen.last() != Some(&name) {
                self.seen.push(name.clone());
            }
            if name == "done" || name == "stored-raw" || name.starts_with("error") {
                return name;
            }
        }
    }

    fn status(&self) -> StatusReport {
        self.status.lock().unwrap().clone()
    }

    /// Plugs `phone` in (the handle unplugs it when told, or when dropped with the test).
    fn plug(&self, phone: &Arc<Simulator>) -> Arc<InMemoryPhone> {
        plug_simulator(&self.tx, phone.clone()).unwrap()
    }

    /// Plugs `phone` in and checks that its backup ends on the screen `want`.
    fn back_up(&mut self, phone: &Arc<Simulator>, want: &str) -> Arc<InMemoryPhone> {
        let handle = self.plug(phone);
        assert_eq!(self.wait_end(), want, "{:?}", self.seen);
        handle
    }

    /// Unplugs the phone and waits for the overview.
    fn unplug(&mut self, handle: Arc<InMemoryPhone>) {
        handle.cable().unplug();
        self.wait("ready");
    }

    fn repo_dir(&self) -> PathBuf {
        self.drive.join(CRADLE_DIR)
    }

    /// The snapshots on the drive (opened with the box's password).
    fn snapshots(&self) -> Vec<String> {
        let storage = LocalStorage::new(self.repo_dir()).unwrap();
        let repo = Repository::open(Arc::new(storage), &Password::new(PASSWORD)).unwrap();
        let listing = repo.snapshot_listing().unwrap();
        assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
        listing
            .snapshots
            .iter()
            .map(|(id, _)| id.to_hex())
            .collect()
    }

    /// Exports `snapshot` with the `cradle` command and returns the files it wrote.
    fn export(&self, snapshot: &str) -> usize {
        let out = self._dir.path().join(format!("export-{}", &snapshot[..12]));
        let pw = self._dir.path().join("pw.txt");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_cradle"))
            .arg("export")
            .arg("--repo")
            .arg(self.repo_dir())
            .arg("--password-file")
            .arg(&pw)
            .arg(snapshot)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        count_files(&out)
    }

    /// Takes the drive away, runs `f` with the rig and the pulled drive's folder, puts it back
    /// and waits for the overview.
    fn pull_drive(&mut self, f: impl FnOnce(&Rig, &Path)) {
        let aside = self.drive.with_extension("pulled");
        std::fs::rename(&self.drive, &aside).unwrap();
        self.wait("no-drive");
        f(self, &aside);
        std::fs::rename(&aside, &self.drive).unwrap();
        self.wait("ready");
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.tx.send(Input::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A phone whose backups are already encrypted with the box's password and that trusts at once.
fn box_phone(seed: u64) -> Arc<Simulator> {
    sim(
        seed,
        EncryptionChoice::On(Password::new(PASSWORD)),
        TrustPolicy::Auto,
    )
}

fn sim(seed: u64, enc: EncryptionChoice, trust: TrustPolicy) -> Arc<Simulator> {
    let mut o = SimulatorOptions::new(seed, Profile::Tiny, 1);
    o.dpic = 1000;
    o.encryption = enc;
    o.trust = trust;
    Simulator::new(o).unwrap()
}

/// The first picture of each kind of screen, as it reached the glass.
fn first_frames(frames: &[(Screen, Frame)]) -> Vec<(String, Screen, Frame)> {
    let mut out: Vec<(String, Screen, Frame)> = Vec::new();
    for (s, f) in frames {
        let name = screen_name(s).to_string();
        if !out.iter().any(|(n, _, _)| *n == name) {
            out.push((name, s.clone(), f.clone()));
        }
    }
    out
}

fn compare_golden(name: &str, actual: &Frame) -> Option<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/appliance");
    let path = dir.join(format!("{name}.png"));
    if std::env::var_os("CRADLE_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, encode_png(actual, 1).unwrap()).unwrap();
        return None;
    }
    let golden = match std::fs::read(&path) {
        Ok(b) => decode_png(&b).unwrap(),
        Err(e) => return Some(format!("{name}: no golden at {} ({e})", path.display())),
    };
    let diff = golden.diff_count(actual);
    (diff > 0).then(|| {
        let out = std::env::temp_dir().join(format!("cradle-appliance-{name}.png"));
        std::fs::write(&out, encode_png(actual, 1).unwrap()).unwrap();
        format!("{name}: {diff} pixels differ; actual: {}", out.display())
    })
}

#[test]
fn first_backup_turns_encryption_on_and_the_screens_match_their_goldens() {
    let mut rig = Rig::new(true);
    let phone_sim = sim(11, EncryptionChoice::Off, TrustPolicy::AfterPolls(2));
    let phone = rig.plug(&phone_sim);
    let end = rig.wait_end();
    assert_eq!(end, "done", "seen: {:?}", rig.seen);
    let want = [
        "phone-found",
        "trust",
        "enabling-encryption",
        "passcode",
        "backing-up",
        "saving",
        "verifying",
        "done",
    ];
    let mut it = rig.seen.iter();
    for w in want {
        assert!(
            it.any(|s| s == w),
            "{w} missing or out of order in {:?}",
            rig.seen
        );
    }
    // The phone's backups are now encrypted with the box's password, and the drive has them.
    assert_eq!(
        phone_sim.device().backup_password(),
        Some(Password::new(PASSWORD))
    );
    let st = rig.status();
    assert_eq!(st.state, "done");
    assert_eq!(st.phones.len(), 1);
    assert_eq!(st.phones[0].last_result.as_deref(), Some("ok"));
    assert!(st.drive.as_ref().unwrap().safe_to_remove);
    let log = read_run_log(&rig.drive.join(CRADLE_DIR));
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].result.as_deref(), Some("ok"));
    assert!(log[1].bytes.unwrap() > 1_000_000 && log[1].files.unwrap() > 10);
    // The backup is a snapshot in the drive's repository, verified and exportable.
    let snaps = rig.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(log[1].snapshot.as_deref(), Some(snaps[0].as_str()));
    assert_eq!(
        st.phones[0].last_snapshot.as_deref(),
        Some(snaps[0].as_str())
    );
    assert!(log[1].new_bytes.unwrap() > 0);
    assert!(rig.export(&snaps[0]) > 10);

    // Every picture on the glass is exactly what `render` draws; the fixed ones match goldens.
    let frames = rig.frames.lock().unwrap().clone();
    assert!(frames.len() >= want.len());
    let mut failures = Vec::new();
    for (name, screen, frame) in first_frames(&frames) {
        assert_eq!(frame, render(&screen, (0, 0)), "{name}");
        if matches!(
            name.as_str(),
            "phone-found" | "trust" | "enabling-encryption" | "saving"
        ) {
            failures.extend(compare_golden(&name, &frame));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Unplugged: back to Ready, which lists the phone.
    phone.cable().unplug();
    match rig.wait("ready") {
        Screen::Ready { phones, .. } => assert_eq!(phones.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn phone_unplugged_mid_backup_then_the_next_plug_in_succeeds() {
    let mut rig = Rig::new(true);
    let s = box_phone(12);
    let phone = rig.plug(&s);
    // Cut the cable about halfway through the tiny phone's ~3.5 MB.
    phone.cable().disconnect_after(1_500_000);
    assert_eq!(rig.wait_end(), "error-phone-unplugged", "{:?}", rig.seen);
    drop(phone);
    let st = rig.status();
    assert_eq!(st.phones[0].last_result.as_deref(), Some("phone-unplugged"));
    assert!(st.drive.unwrap().safe_to_remove);
    // Nothing half-done stays: no snapshot, no staging session.
    assert!(rig.snapshots().is_empty());
    assert_eq!(count_files(&rig.repo_dir().join("staging")), 0);
    let _phone = rig.back_up(&s, "done");
    assert_eq!(rig.snapshots().len(), 1);
}

#[test]
fn drive_full_keeps_the_previous_snapshot_and_the_next_plug_in_succeeds() {
    let mut rig = Rig::new(true);
    let s = box_phone(20);
    let phone = rig.back_up(&s, "done");
    rig.unplug(phone);
    let first = rig.snapshots();
    assert_eq!(first.len(), 1);
    // The same drive comes back with almost no room for this repository: the phone is told the
    // truth about the space left and refuses (ErrorCode 105), which is the drive-full screen.
    // Writes failing in the middle of an upload are covered by tests/drive_full.rs.
    rig.pull_drive(|r, _| *r.limit.lock().unwrap() = Some(20_000));
    let phone = rig.back_up(&s, "error-drive-full");
    let st = rig.status();
    assert_eq!(st.phones[0].last_result.as_deref(), Some("drive-full"));
    assert!(st.drive.unwrap().safe_to_remove);
    // What was committed before is intact and still exports.
    assert_eq!(rig.snapshots(), first);
    assert!(rig.export(&first[0]) > 10);
    rig.unplug(phone);
    // Room again: the next plug-in succeeds.
    rig.pull_drive(|r, _| *r.limit.lock().unwrap() = None);
    let _phone = rig.back_up(&s, "done");
    assert_eq!(rig.snapshots().len(), 2);
}

#[test]
fn a_repository_with_another_password_is_left_alone_and_the_screen_says_so() {
    let mut rig = Rig::new(true);
    // Another box's repository on this drive.
    let other = Password::new("another-box-password");
    rig.pull_drive(|_, drive| {
        let dir = drive.join(CRADLE_DIR);
        std::fs::create_dir(&dir).unwrap();
        let storage = LocalStorage::new(dir).unwrap();
        Repository::init(Arc::new(storage), &other, &InitOptions::for_tests()).unwrap();
    });
    rig.wait("ready");
    let s = box_phone(21);
    let phone = rig.back_up(&s, "error-drive-password");
    assert_eq!(
        rig.status().phones[0].last_result.as_deref(),
        Some("drive-password")
    );
    let storage = LocalStorage::new(rig.repo_dir()).unwrap();
    let repo = Repository::open(Arc::new(storage), &other).unwrap();
    assert!(repo.snapshot_listing().unwrap().snapshots.is_empty());
    assert_eq!(count_files(&rig.repo_dir().join("staging")), 0);
    drop(repo);
    rig.unplug(phone);
    // The daemon carries on: with the owner's own (emptied) drive the phone is backed up.
    rig.pull_drive(|_, drive| std::fs::remove_dir_all(drive.join(CRADLE_DIR)).unwrap());
    let _phone = rig.back_up(&s, "done");
    assert_eq!(rig.snapshots().len(), 1);
}

#[test]
fn drive_removed_mid_backup_then_back_and_the_backup_completes() {
    let mut rig = Rig::new(true);
    let mut o = SimulatorOptions::new(13, Profile::Tiny, 1);
    o.dpic = 1000;
    o.encryption = EncryptionChoice::On(Password::new(PASSWORD));
    // The phone waits for its passcode before sending: time to pull the drive.
    o.passcode_delay = Duration::from_secs(3);
    let s = Simulator::new(o).unwrap();
    let _phone = rig.plug(&s);
    rig.wait("passcode");
    let aside = rig.drive.with_extension("pulled");
    std::fs::rename(&rig.drive, &aside).unwrap();
    assert_eq!(rig.wait_end(), "error-drive-removed", "{:?}", rig.seen);
    assert!(rig.status().drive.is_none());
    std::fs::rename(&aside, &rig.drive).unwrap();
    // The same phone, still plugged in, is backed up on the drive's return.
    assert_eq!(rig.wait_end(), "done", "{:?}", rig.seen);
    assert_eq!(rig.snapshots().len(), 1);
}

#[test]
fn trust_denied_then_another_phone_is_backed_up() {
    let mut rig = Rig::new(true);
    let denied = rig.back_up(
        &sim(14, EncryptionChoice::Off, TrustPolicy::Deny),
        "error-trust-denied",
    );
    rig.unplug(denied);
    let _ok = rig.back_up(&box_phone(15), "done");
}

#[test]
fn unknown_password_is_backed_up_raw_and_the_screen_says_so() {
    let mut rig = Rig::new(true);
    let _p = rig.back_up(
        &sim(
            16,
            EncryptionChoice::On(Password::new("not-the-box-password")),
            TrustPolicy::Auto,
        ),
        "stored-raw",
    );
    let st = rig.status();
    assert_eq!(st.state, "done-raw");
    assert_eq!(st.phones[0].last_result.as_deref(), Some("ok-raw"));
    assert!(render_human(&st, 0).contains("stored raw"));
    // The backup is complete on the drive, as a raw snapshot that exports.
    let log = read_run_log(&rig.drive.join(CRADLE_DIR));
    assert_eq!(log.last().unwrap().result.as_deref(), Some("ok-raw"));
    let snaps = rig.snapshots();
    assert_eq!(snaps.len(), 1);
    assert!(rig.export(&snaps[0]) > 10);
}

#[test]
fn no_oled_does_not_stop_backups() {
    let mut rig = Rig::new(false);
    let _p = rig.back_up(&box_phone(17), "done");
    assert!(
        rig.status().display.contains("down"),
        "{}",
        rig.status().display
    );
}

#[test]
fn unknown_drive_is_left_untouched() {
    init_logs();
    let mut rig = Rig::new(true);
    // A drive with someone's files, without the label and without a Cradle folder.
    std::fs::remove_file(rig.drive.join(LABEL_FILE)).unwrap();
    std::fs::write(rig.drive.join("holiday.jpg"), b"not ours").unwrap();
    let aside = rig.drive.with_extension("out");
    std::fs::rename(&rig.drive, &aside).unwrap();
    rig.wait("no-drive");
    std::fs::rename(&aside, &rig.drive).unwrap();
    rig.wait("error-not-cradle-drive");
    let _p = rig.plug(&box_phone(18));
    // Give the loop a few turns: no job may start.
    for _ in 0..20 {
        if rig.status().phones.iter().any(|p| p.attached) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rig.status().state, "error");
    let entries: Vec<_> = std::fs::read_dir(&rig.drive).unwrap().collect();
    assert_eq!(entries.len(), 1, "the unknown drive was written to");
}

#[test]
fn the_password_is_in_no_log_status_or_run_log() {
    let mut rig = Rig::new(true);
    let _p = rig.back_up(&sim(19, EncryptionChoice::Off, TrustPolicy::Auto), "done");
    let from_socket = query_status(&rig.socket).unwrap();
    let json = serde_json::to_string(&from_socket).unwrap();
    let human = render_human(&from_socket, 0);
    let runlog = std::fs::read_to_string(rig.drive.join(CRADLE_DIR).join("runs.jsonl")).unwrap();
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).to_string();
    assert!(!logs.is_empty(), "the log capture works");
    assert!(json.contains("\"default_password\":true"));
    for (what, text) in [
        ("status json", &json),
        ("status text", &human),
        ("run log", &runlog),
        ("log lines", &logs),
    ] {
        assert!(!text.contains(PASSWORD), "the password is in the {what}");
    }
}

#[test]
fn the_demo_runs_and_reports_two_verified_backups() {
    let keep = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(["demo", "--profile", "tiny", "--no-animation", "--keep"])
        .arg(keep.path().join("demo"))
        .env("CRADLE_LOG", "debug")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("demo finished: 2 backups verified"),
        "{stdout}"
    );
    assert!(
        stdout.contains("day 1: done") && stdout.contains("day 2: done"),
        "{stdout}"
    );
    for screen in [
        "trust",
        "enabling-encryption",
        "passcode",
        "saving",
        "verifying",
        "done",
    ] {
        assert!(
            stdout.contains(&format!("[oled] {screen}")),
            "{screen}: {stdout}"
        );
    }
    // The password is shown on purpose on stdout, but never logged.
    assert!(!stderr.contains("cradle-demo"), "{stderr}");
    let log = read_run_log(&keep.path().join("demo/drive").join(CRADLE_DIR));
    let ends: Vec<_> = log.iter().filter(|r| r.event == "end").collect();
    assert_eq!(ends.len(), 2);
    assert!(ends.iter().all(|r| r.result.as_deref() == Some("ok")));
    // Day 2 is incremental: far less than day 1.
    assert!(ends[1].bytes.unwrap() < ends[0].bytes.unwrap() / 2);
    // Both are snapshots in the drive's repository, listed with their figures.
    assert!(ends.iter().all(|r| r.snapshot.is_some()));
    for r in &ends {
        let id = &r.snapshot.as_deref().unwrap()[..12];
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(id) && l.contains("digested")),
            "{id}: {stdout}"
        );
    }
    // Day 2 adds far fewer bytes to the drive than its files hold (deduplication).
    let day2 = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("day 2:") && l.contains("new on the drive"))
        .unwrap_or_else(|| panic!("no day 2 figures: {stdout}"));
    let mb: Vec<f64> = day2
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(mb.len() >= 2 && mb[1] * 4.0 < mb[0], "{day2}");
    assert_eq!(
        (mb[1] * 100.0).round(),
        (ends[1].new_bytes.unwrap() as f64 / 1e4).round(),
        "{day2}"
    );
    let dedup = stdout
        .lines()
        .find(|l| l.contains("dedup: 2 snapshots hold"))
        .unwrap_or_else(|| panic!("no dedup line: {stdout}"));
    assert!(dedup.contains("ratio"), "{dedup}");
    for cmd in ["snapshots --repo", "ls --repo", "export --repo"] {
        assert!(stdout.contains(cmd), "{cmd}: {stdout}");
    }
}
