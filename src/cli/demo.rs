//! `cradle demo`: a simulated iPhone plugged into a simulated box with a temporary drive, the
//! OLED drawn live in the terminal: trust, passcode, encryption, backup, saving, verify, done;
//! then day 2 (an incremental backup of the changed phone) and what was stored.
//!
//! Everything is the daemon's own code (state machine, jobs, destination, run log); only the
//! phone (the simulator, over the in-memory usbmux link), the drive (a folder) and the password
//! store (memory, with a fixed demo password) stand in for hardware.

use anyhow::Context;
use clap::{Args, ValueEnum};
use cradle::appliance::daemon::{DaemonParts, Input};
use cradle::appliance::drive::{read_run_log, CRADLE_DIR, LABEL_FILE};
use cradle::appliance::repo_dest::stored_bytes;
use cradle::appliance::status::screen_name;
use cradle::appliance::{
    plug_simulator, BoxedPanel, Daemon, DirDrive, MachineConfig, MemorySecretStore, NullPanel,
    RepoDestination,
};
use cradle::backup2::run::RunOptions;
use cradle::display::{
    render, render_terminal, Brightness, BurnInConfig, Panel, PanelError, Screen, TERMINAL_ROWS,
};
use cradle::lockdown::{DirPairStore, HostIdentity};
use cradle::password::Password;
use cradle::sim::device::TrustPolicy;
use cradle::sim::phone::Profile;
use cradle::sim::simulator::{EncryptionChoice, Simulator, SimulatorOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The demo's backup password. It is a demo: it is shown on screen.
pub const DEMO_PASSWORD: &str = "cradle-demo";
/// The label the demo gives its drive.
pub const DEMO_LABEL: &str = "CRADLE-DEMO";
/// Keybag rounds of the demo phone (a real phone uses 10,000,000; fewer keep the demo quick).
pub const DEMO_DPIC: u32 = 10_000;
/// Longest wait for one day's backup.
const DAY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DemoProfile {
    Tiny,
    Small,
    Medium,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How big the simulated phone is (tiny ≈ 3.5 MB, small ≈ 40 MB, medium ≈ 480 MB).
    #[arg(long, value_enum, default_value = "small")]
    profile: DemoProfile,
    /// Plain text instead of the animated OLED (also when stdout is not a terminal).
    #[arg(long)]
    no_animation: bool,
    /// Keep the drive and state in DIR (created; must be empty or new) instead of a temp folder.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

/// A caption per screen, so the terminal tells the story beside the OLED.
fn caption(day: u32, s: &Screen) -> String {
    let what = match s {
        Screen::Boot { .. } => "The box starts.".to_string(),
        Screen::NoDrive => "No drive yet.".into(),
        Screen::Ready { .. } => "Idle: the drive is ready; waiting for a phone.".into(),
        Screen::PhoneFound { name } => format!("{name} is plugged in."),
        Screen::Trust { .. } => "The phone asks \"Trust This Computer?\" (the simulated owner taps Trust).".into(),
        Screen::Passcode { .. } => "The phone asks for its passcode (the simulated owner types it).".into(),
        Screen::EnablingEncryption => format!("Backups were unencrypted: turning encryption on with the box's password \"{DEMO_PASSWORD}\"."),
        Screen::BackingUp(_) => "The phone sends its files.".into(),
        Screen::Saving => "Everything received; the phone may go. Deduplicating into a snapshot on the drive.".into(),
        Screen::Verifying { .. } => "Reading the snapshot back: Manifest.db and a sample of the new chunks.".into(),
        Screen::Done { .. } => "Verified, synced: safe to remove.".into(),
        Screen::StoredRaw { .. } => "Stored as the phone sent it (its password is not the box's).".into(),
        Screen::Error(e) => format!("Error: {e:?}"),
    };
    format!("Day {day}: {what}")
}

/// The OLED in the terminal with a caption line, redrawn in place. Pauses a moment on each new
/// kind of screen so people can read it.
struct DemoPanel {
    day: Arc<AtomicU32>,
    drawn: bool,
    last: Option<Screen>,
    last_change: Instant,
}

const MIN_SCREEN_TIME: Duration = Duration::from_millis(900);

impl Panel for DemoPanel {
    fn show(&mut self, screen: &Screen, offset: (i32, i32)) -> Result<(), PanelError> {
        let new_kind = self.last.as_ref().is_none_or(|l| !l.same_kind(screen));
        if new_kind && self.drawn {
            let left = MIN_SCREEN_TIME.saturating_sub(self.last_change.elapsed());
            std::thread::sleep(left);
        }
        if new_kind {
            self.last_change = Instant::now();
        }
        let mut text = String::new();
        if self.drawn {
            text.push_str(&format!("\x1b[{}A\r", TERMINAL_ROWS + 3));
        }
        text.push_str(&render_terminal(&render(screen, offset)));
        text.push_str("\x1b[K");
        text.push_str(&caption(self.day.load(Ordering::SeqCst), screen));
        text.push('\n');
        self.drawn = true;
        self.last = Some(screen.clone());
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|source| PanelError::Io {
                path: PathBuf::from("stdout"),
                source,
            })
    }
    fn set_brightness(&mut self, _: Brightness) -> Result<(), PanelError> {
        Ok(())
    }
    fn set_power(&mut self, _: bool) -> Result<(), PanelError> {
        Ok(())
    }
}

fn profile(p: DemoProfile) -> Profile {
    match p {
        DemoProfile::Tiny => Profile::Tiny,
        DemoProfile::Small => Profile::Small,
        DemoProfile::Medium => Profile::Medium,
    }
}

/// Waits until the screen shows the end of a backup (done or an error).
fn wait_end(screens: &Receiver<String>) -> anyhow::Result<String> {
    let deadline = Instant::now() + DAY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let name = screens.recv_timeout(left).map_err(|_| {
            anyhow::anyhow!(
                "the backup did not finish within {} s",
                DAY_TIMEOUT.as_secs()
            )
        })?;
        if name == "done" || name == "stored-raw" || name.starts_with("error") {
            return Ok(name);
        }
    }
}

fn wait_for(screens: &Receiver<String>, want: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let name = screens
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("the box did not get to {want}"))?;
        if name == want {
            return Ok(());
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let animate = !args.no_animation && std::io::stdout().is_terminal();
    let _temp;
    let base = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            if std::fs::read_dir(d)?.next().is_some() {
                anyhow::bail!(
                    "{} is not empty: give --keep a new or empty folder",
                    d.display()
                );
            }
            d.clone()
        }
        None => {
            _temp = tempfile::Builder::new().prefix("cradle-demo-").tempdir()?;
            _temp.path().to_path_buf()
        }
    };
    let drive = base.join("drive");
    let state = base.join("box-state");
    let sim_state = base.join("phone-state");
    std::fs::create_dir_all(&drive)?;
    std::fs::create_dir_all(&state)?;
    // The owner labelled the drive for Cradle; an unlabelled drive would be left alone.
    std::fs::write(drive.join(LABEL_FILE), format!("{DEMO_LABEL}\n"))?;

    println!("Cradle demo: a simulated iPhone and a simulated box on this machine.");
    println!("  drive (a folder):   {}", drive.display());
    println!("  box password:       {DEMO_PASSWORD}   (a demo: shown here on purpose; a real box keeps it sealed)");
    println!(
        "  phone:              {:?} profile, backups not yet encrypted",
        args.profile
    );
    println!();

    let day = Arc::new(AtomicU32::new(1));
    let panel: cradle::appliance::PanelOpener = if animate {
        let day = day.clone();
        let mut once = Some(DemoPanel {
            day,
            drawn: false,
            last: None,
            last_change: Instant::now(),
        });
        Box::new(move || {
            once.take()
                .map(|p| Box::new(p) as BoxedPanel)
                .ok_or_else(|| PanelError::Io {
                    path: PathBuf::from("stdout"),
                    source: std::io::Error::other("terminal panel already in use"),
                })
        })
    } else {
        Box::new(|| Ok(Box::new(NullPanel) as BoxedPanel))
    };
    let mut run_options = RunOptions::default();
    run_options.lockdown.pair.poll_interval = Duration::from_millis(400);
    let parts = DaemonParts {
        machine: MachineConfig::default(),
        drive: Box::new(DirDrive::new(&drive, Some(DEMO_LABEL.into()))),
        destination: Box::new(|root: &Path| {
            Arc::new(RepoDestination::new(root)) as Arc<dyn cradle::appliance::Destination>
        }),
        pair_store: Arc::new(DirPairStore::new(state.join("lockdown"))?),
        host: HostIdentity::load_or_create(&state.join("host.plist"), Some("Cradle demo".into()))?,
        secrets: Arc::new(MemorySecretStore::with_default(Password::new(
            DEMO_PASSWORD,
        ))),
        secrets_mode: "memory (demo)".into(),
        run_options,
        passcode_timeout: Duration::from_secs(60),
        panel,
        panel_kind: if animate { "terminal" } else { "none" }.into(),
        burn_in: BurnInConfig::default(),
        notify: false,
    };
    let mut daemon = Daemon::new(parts);
    let (screens_tx, screens) = mpsc::channel();
    let plain_day = day.clone();
    let mut last_plain: Option<(String, u16)> = None;
    daemon.observe(Box::new(move |s: &Screen| {
        let name = screen_name(s);
        if !animate {
            // One line per new screen, and a progress line per quarter.
            let quarter = match s {
                Screen::BackingUp(p) => p.permille / 250,
                _ => 0,
            };
            let key = (name.to_string(), quarter);
            if last_plain.as_ref() != Some(&key) {
                let detail = match s {
                    Screen::BackingUp(p) => format!(
                        " {:.0}% ({:.1} of {:.1} MB)",
                        f64::from(p.permille) / 10.0,
                        p.done_bytes as f64 / 1e6,
                        p.total_bytes as f64 / 1e6
                    ),
                    Screen::Done {
                        new_bytes,
                        duration,
                    } => format!(
                        " ({:.1} MB new, {:.1} s)",
                        *new_bytes as f64 / 1e6,
                        duration.as_secs_f64()
                    ),
                    _ => String::new(),
                };
                println!(
                    "[oled] {name}{detail}: {}",
                    caption(plain_day.load(Ordering::SeqCst), s)
                );
                last_plain = Some(key);
            }
        }
        let _ = screens_tx.send(name.to_string());
    }));
    let tx = daemon.sender();
    let loop_thread = std::thread::Builder::new()
        .name("daemon".into())
        .spawn(move || daemon.run())?;
    wait_for(&screens, "ready")?;

    let mut results = Vec::new();
    for d in 1..=2u32 {
        day.store(d, Ordering::SeqCst);
        let mut opts = SimulatorOptions::new(1, profile(args.profile), d);
        opts.dpic = DEMO_DPIC;
        opts.state_dir = Some(sim_state.clone());
        if d == 1 {
            opts.encryption = EncryptionChoice::Off;
            opts.trust = TrustPolicy::AfterPolls(3);
            opts.passcode_delay = Duration::from_millis(1500);
        }
        let sim = Simulator::new(opts).context("starting the simulated iPhone")?;
        let t = Instant::now();
        let phone = plug_simulator(&tx, sim.clone()).context("plugging the simulated iPhone")?;
        let end = wait_end(&screens)?;
        results.push((d, end.clone(), t.elapsed()));
        // The owner unplugs the phone; the box goes back to its overview.
        phone.cable().unplug();
        drop(phone);
        let _ = sim.shutdown();
        if end != "done" {
            break;
        }
        wait_for(&screens, "ready")?;
    }
    let _ = tx.send(Input::Stop);
    let _ = loop_thread.join();

    println!();
    println!("What happened:");
    let log = read_run_log(&drive.join(CRADLE_DIR));
    for (d, end, took) in &results {
        println!("  day {d}: {end} in {:.1} s", took.as_secs_f64());
    }
    let ends: Vec<_> = log.iter().filter(|r| r.event == "end").collect();
    for r in &ends {
        println!(
            "  run log: {} {} files, {:.1} MB received, {:.1} MB new, result {}",
            r.name.as_deref().unwrap_or(&r.udid),
            r.files.unwrap_or(0),
            r.bytes.unwrap_or(0) as f64 / 1e6,
            r.new_bytes.unwrap_or(0) as f64 / 1e6,
            r.result.as_deref().unwrap_or("?")
        );
    }
    let repo_dir = drive.join(CRADLE_DIR);
    let summary = match summarize(&repo_dir, &ends) {
        Ok(text) => text,
        Err(e) => format!("  reading the repository back failed: {e:#}\n"),
    };
    print!("{summary}");
    println!("  took {:.1} s in all", started.elapsed().as_secs_f64());
    println!();
    let ok = results.len() == 2 && results.iter().all(|(_, e, _)| e == "done");
    let repo_arg = repo_dir.display();
    if args.keep.is_some() {
        println!("Look further (password: {DEMO_PASSWORD}):");
        println!("  echo {DEMO_PASSWORD} > pw.txt");
        println!("  cargo run --release -- snapshots --repo {repo_arg} --password-file pw.txt");
        println!("  cargo run --release -- ls --repo {repo_arg} --password-file pw.txt latest");
        println!(
            "  cargo run --release -- export --repo {repo_arg} --password-file pw.txt latest \
             --out exported"
        );
        println!("  cat {}", repo_dir.join("runs.jsonl").display());
    } else {
        println!(
            "The drive was a temporary folder and is gone; keep it with --keep DIR, then look \
             further with `cradle snapshots/ls/export --repo DIR/drive/{CRADLE_DIR}`."
        );
    }
    println!(
        "demo {}",
        if ok {
            "finished: 2 backups verified"
        } else {
            "FAILED"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What the repository holds after the demo: the snapshot list (as `cradle snapshots` prints
/// it), the bytes each backup added to the drive and how much deduplication saved.
fn summarize(repo_dir: &Path, ends: &[&cradle::appliance::RunRecord]) -> anyhow::Result<String> {
    let storage = cradle::store::storage::LocalStorage::new(repo_dir)?;
    let repo =
        cradle::store::repo::Repository::open(Arc::new(storage), &Password::new(DEMO_PASSWORD))?;
    let listing = repo.snapshot_listing()?;
    let mut out = format!(
        "  snapshots in {} (as `cradle snapshots` lists them):\n",
        repo_dir.display()
    );
    let mut logical_total = 0;
    for (i, (id, s)) in listing.snapshots.iter().enumerate() {
        let hex = id.to_hex();
        out.push_str(&format!(
            "    {}  {}  {}  {} ({})  {}  {} files  {:.1} MB\n",
            &hex[..12],
            super::opsutil::date(s.phone_date),
            s.device.udid,
            s.device.device_name,
            s.device.product_type,
            match s.kind {
                cradle::store::snapshot::SnapshotKind::Digested => "digested",
                cradle::store::snapshot::SnapshotKind::Raw => "raw",
            },
            s.counts.files,
            s.content_bytes as f64 / 1e6
        ));
        logical_total += s.content_bytes;
        let new = ends
            .iter()
            .find(|r| r.snapshot.as_deref() == Some(hex.as_str()))
            .and_then(|r| r.new_bytes);
        if let Some(new) = new {
            out.push_str(&format!(
                "      day {}: {:.2} MB of files, {:.2} MB new on the drive ({:.1}% of the files' size)\n",
                i + 1,
                s.content_bytes as f64 / 1e6,
                new as f64 / 1e6,
                100.0 * new as f64 / (s.content_bytes.max(1)) as f64
            ));
        }
    }
    let on_drive = stored_bytes(repo_dir);
    out.push_str(&format!(
        "  dedup: {} snapshots hold {:.2} MB of files in {:.2} MB on the drive (ratio {:.2}x)\n",
        listing.snapshots.len(),
        logical_total as f64 / 1e6,
        on_drive as f64 / 1e6,
        logical_total as f64 / (on_drive.max(1)) as f64
    ));
    Ok(out)
}
