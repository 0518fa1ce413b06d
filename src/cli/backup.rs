//! `cradle backup --to-folder DIR`: back up an attached iPhone into a standard backup folder
//! (the same layout Finder, iTunes and idevicebackup2 write), through usbmuxd, USB or a simulator.
//!
//! The phone is reached through one of three connectors (all `DeviceConnector`s): a usbmuxd
//! socket, the box's own usbmux over nusb, or a simulated phone in this process over the
//! in-memory usbmux link. Progress goes to stderr, one summary line to stdout.

use anyhow::Context;
use clap::Args;
use cradle::backup2::host::{device_error_meaning, BackupEvent, HostError, Phase, Progress};
use cradle::backup2::run::{
    query_will_encrypt, run_backup, run_change_password, RunError, RunOptions, RunReport,
};
use cradle::backup2::target::FolderTarget;
use cradle::ios_backup::folder::{BackupFolder, FolderError};
use cradle::ios_backup::kdf::{DEFAULT_DPIC, MAX_DPIC};
use cradle::lockdown::{self, DirPairStore, HostIdentity, LockdownError, PairEvent};
use cradle::password::{resolve_password, Password};
use cradle::sim::phone::Profile;
use cradle::sim::simulator::{Simulator, SimulatorOptions};
use cradle::store::repo_target::RepoTarget;
use cradle::transport::DeviceConnector;
use cradle::usb::muxd::{MuxdAddr, MuxdClient, MuxdError};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The system-wide state folder (pair records, host identity) when it is writable.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/cradle";
/// Where pair records live inside the state folder.
pub const PAIR_RECORDS_DIR: &str = "lockdown";
/// The host identity (HostID, SystemBUID) inside the state folder.
pub const HOST_IDENTITY_FILE: &str = "host.plist";
/// Where `--sim` keeps its simulated phones' state (pairings, password) inside the state folder.
pub const SIM_STATE_DIR: &str = "sim";

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("dest").required(true).args(["to_folder", "to_repo"])))]
pub struct BackupArgs {
    /// The backup folder; the backup goes into DIR/<UDID>/ (created if needed; a previous
    /// backup there makes this one incremental).
    #[arg(long, value_name = "DIR")]
    to_folder: Option<PathBuf>,
    /// A snapshot repository (`cradle init`): the backup becomes a new snapshot, incremental
    /// against this phone's newest one. Its password is the phone's backup password.
    #[arg(long, value_name = "PATH")]
    to_repo: Option<PathBuf>,
    /// Reach the phone through usbmuxd at this address: a UNIX socket path or HOST:PORT.
    /// Default: $USBMUXD_SOCKET_ADDRESS, else /var/run/usbmuxd.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["usb", "sim"])]
    usbmuxd: Option<String>,
    /// The phone's UDID (default: the only attached phone).
    #[arg(long, short = 'u', value_name = "UDID")]
    udid: Option<String>,
    /// Talk to the phone on USB directly (no usbmuxd; needs access to /dev/bus/usb).
    #[arg(long, conflicts_with = "sim")]
    usb: bool,
    /// Back up a simulated phone in this process instead: PROFILE[:SEED[:DAY]]
    /// (e.g. small:7:2), joined over the in-memory usbmux link. For development and demos.
    #[arg(long, value_name = "PROFILE[:SEED[:DAY]]", value_parser = parse_sim_spec)]
    sim: Option<SimSpec>,
    /// Keybag PBKDF2 rounds of the simulated phone (with --sim).
    #[arg(long, hide = true, default_value_t = DEFAULT_DPIC, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DPIC)))]
    sim_dpic: u32,
    /// Pull the simulated cable after this many bytes (with --sim; for testing).
    #[arg(long, hide = true, value_name = "BYTES")]
    sim_unplug_after: Option<u64>,
    /// Pair records and this host's identity. Default: /var/lib/cradle when writable, else
    /// $XDG_STATE_HOME/cradle (~/.local/state/cradle).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Ask the phone for a full backup even when a previous one is in the folder.
    #[arg(long)]
    full: bool,
    /// Make sure backups are encrypted: if the phone's backup encryption is off, turn it on
    /// with the password (the phone asks for its passcode).
    #[arg(long)]
    encrypt: bool,
    /// The backup password for --encrypt, from this file (first line; `-` = stdin). Also
    /// CRADLE_PASSWORD_FILE; asked for on a terminal otherwise.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Back up even though the phone's backups are not encrypted (they then lack passwords,
    /// Health and keychain data, and are readable by anyone with the drive).
    #[arg(long, conflicts_with = "encrypt")]
    allow_unencrypted: bool,
    /// How long to wait for "Trust This Computer?" to be answered, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    trust_timeout: u64,
}

/// `--sim PROFILE[:SEED[:DAY]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSpec {
    pub profile: Profile,
    pub seed: u64,
    pub day: u32,
}

pub fn parse_sim_spec(s: &str) -> Result<SimSpec, String> {
    let mut parts = s.split(':');
    let profile = parts
        .next()
        .unwrap_or_default()
        .parse::<Profile>()
        .map_err(|e| e.to_string())?;
    let seed = match parts.next() {
        Some(p) => p
            .parse::<u64>()
            .map_err(|_| format!("{p:?} is not a seed (a number)"))?,
        None => 1,
    };
    let day = match parts.next() {
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|&d| d >= 1)
            .ok_or_else(|| format!("{p:?} is not a day (1 or more)"))?,
        None => 1,
    };
    if parts.next().is_some() {
        return Err("expected PROFILE[:SEED[:DAY]]".into());
    }
    Ok(SimSpec { profile, seed, day })
}

/// The state folder: the one given, /var/lib/cradle when writable, else the user's.
fn state_dir(given: Option<&Path>) -> PathBuf {
    if let Some(d) = given {
        return d.to_path_buf();
    }
    let sys = Path::new(SYSTEM_STATE_DIR);
    if rustix::fs::access(sys, rustix::fs::Access::WRITE_OK).is_ok() {
        return sys.to_path_buf();
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cradle")
}

/// A connected phone, whichever way it was reached. Kept alive for the whole run.
enum Connection {
    Muxd(cradle::usb::muxd::MuxdDevice),
    Usb(Arc<cradle::usb::MuxHost>),
    Sim {
        phone: cradle::sim::InMemoryPhone,
        sim: Arc<Simulator>,
    },
}

/// A simulated phone's pairings and password are saved however the run ends, so the next run
/// (another day) finds this host still trusted.
impl Drop for Connection {
    fn drop(&mut self) {
        if let Connection::Sim { phone, sim } = self {
            phone.detach();
            if let Err(e) = sim.shutdown() {
                tracing::warn!(error = %e, "saving the simulated phone's state");
            }
        }
    }
}

impl Connection {
    fn connector(&self) -> &dyn DeviceConnector {
        match self {
            Connection::Muxd(d) => d,
            Connection::Usb(h) => h.as_ref(),
            Connection::Sim { phone, .. } => phone,
        }
    }
}

fn connect(args: &BackupArgs, state: &Path) -> anyhow::Result<Connection> {
    if let Some(spec) = args.sim {
        let mut opts = SimulatorOptions::new(spec.seed, spec.profile, spec.day);
        opts.dpic = args.sim_dpic;
        opts.state_dir = Some(
            state
                .join(SIM_STATE_DIR)
                .join(format!("{}-{}", spec.profile, spec.seed)),
        );
        let sim = Simulator::new(opts).context("starting the simulated iPhone")?;
        sim.agent().on_report(|r| eprintln!("simulated phone: {r}"));
        let phone =
            cradle::sim::attach_in_memory(sim.clone()).context("attaching the simulated iPhone")?;
        if let Some(n) = args.sim_unplug_after {
            phone.cable().disconnect_after(n);
        }
        return Ok(Connection::Sim { phone, sim });
    }
    if args.usb {
        let host = cradle::usb::open_usb_device(args.udid.as_deref()).map_err(|e| match e {
            cradle::usb::UsbDiscoverError::NoDevice | cradle::usb::UsbDiscoverError::List(_) => {
                anyhow::anyhow!("{e}: plug it in with a data cable and unlock it")
            }
            cradle::usb::UsbDiscoverError::Open { .. } => {
                anyhow::anyhow!("{e}: run as root, or stop usbmuxd, which holds the phone")
            }
            other => anyhow::anyhow!("{other}"),
        })?;
        return Ok(Connection::Usb(host));
    }
    let client = match &args.usbmuxd {
        Some(s) => MuxdClient::new(MuxdAddr::parse(s).ok_or_else(|| {
            anyhow::anyhow!("--usbmuxd {s:?}: expected a UNIX socket path or HOST:PORT")
        })?),
        None => MuxdClient::from_env(),
    };
    let addr = client.addr().to_string();
    let devices = client.list_devices().map_err(|e| match e {
        MuxdError::Unreachable { .. } => anyhow::anyhow!(
            "{e}: is usbmuxd running? (start it, pass --usbmuxd ADDR, or use --usb)"
        ),
        other => anyhow::anyhow!("{other}"),
    })?;
    // A phone seen both on USB and over the network is listed twice; prefer the cable.
    let mut udids: Vec<&str> = devices
        .iter()
        .filter(|d| d.connection_type == "USB")
        .map(|d| d.udid.as_str())
        .collect();
    if udids.is_empty() {
        udids = devices.iter().map(|d| d.udid.as_str()).collect();
    }
    udids.dedup();
    let udid = match (&args.udid, udids.as_slice()) {
        (Some(u), _) => u.clone(),
        (None, []) => anyhow::bail!(
            "no iPhone attached to usbmuxd at {addr}: plug it in with a data cable and unlock it"
        ),
        (None, [one]) => one.to_string(),
        (None, many) => anyhow::bail!(
            "{} devices attached to usbmuxd at {addr} ({}): choose one with --udid",
            many.len(),
            many.join(", ")
        ),
    };
    let dev = client.device(&udid).map_err(|e| match e {
        MuxdError::NoSuchDevice(_) => anyhow::anyhow!(
            "no device with UDID {udid} is attached to usbmuxd at {addr} (attached: {})",
            if udids.is_empty() {
                "none".to_string()
            } else {
                udids.join(", ")
            }
        ),
        other => anyhow::anyhow!("{other}"),
    })?;
    Ok(Connection::Muxd(dev))
}

/// Progress on stderr: a rewritten line on a terminal, a line every few seconds otherwise.
struct Display {
    tty: bool,
    started: Instant,
    last: Option<Instant>,
    progress: Progress,
    waiting_said: bool,
}

impl Display {
    fn new() -> Self {
        Display {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
            progress: Progress::default(),
            waiting_said: false,
        }
    }

    fn say(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty && self.last.is_some() {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(err, "{line}");
        self.last = None;
    }

    fn progress_line(&self) -> String {
        let p = &self.progress;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let mb = p.bytes_received as f64 / 1e6;
        let mut s = format!(
            "{} files, {:.1} MB, {:.1} MB/s",
            p.files_received,
            mb,
            mb / secs
        );
        if let Some(pc) = p.percent {
            s.push_str(&format!(", {pc:.0}%"));
        }
        s
    }

    fn event(&mut self, e: BackupEvent) {
        match e {
            BackupEvent::Progress(p) => {
                self.progress = p;
                let every = if self.tty {
                    Duration::from_millis(250)
                } else {
                    Duration::from_secs(5)
                };
                if self.last.is_none_or(|t| t.elapsed() >= every) {
                    let line = self.progress_line();
                    let mut err = std::io::stderr().lock();
                    if self.tty {
                        let _ = write!(err, "\r\x1b[K{line}");
                    } else {
                        let _ = writeln!(err, "{line}");
                    }
                    let _ = err.flush();
                    self.last = Some(Instant::now());
                }
            }
            BackupEvent::Pairing(PairEvent::Started) => {
                self.say("pairing with the phone (this computer is new to it)")
            }
            BackupEvent::Pairing(PairEvent::WaitingForTrust { attempt: 1 }) => {
                self.say("tap \"Trust\" on the phone and enter its passcode")
            }
            BackupEvent::Pairing(PairEvent::PasscodeRequired) if !self.waiting_said => {
                self.waiting_said = true;
                self.say("the phone is locked: unlock it so it can ask to trust this computer")
            }
            BackupEvent::Pairing(PairEvent::Paired) => self.say("paired"),
            BackupEvent::Phase(Phase::WaitingForPhone) => {
                self.started = Instant::now();
                self.say("waiting for the phone to start sending")
            }
            BackupEvent::PasscodeRequested => {
                self.say("enter the passcode on the phone to allow the backup")
            }
            BackupEvent::CancelRequestedOnPhone => self.say("cancelled on the phone"),
            BackupEvent::FileFailedOnPhone { path, message } => {
                self.say(&format!("the phone could not send {path}: {message}"))
            }
            BackupEvent::FileRefused { path, reason } => {
                self.say(&format!("not stored: {path}: {reason}"))
            }
            _ => {}
        }
    }

    fn finish(&mut self) {
        if self.tty && self.last.is_some() {
            let _ = writeln!(std::io::stderr());
        }
        self.last = None;
    }
}

/// One line: what happened and what to do.
fn explain(e: &RunError, dir: &Path) -> String {
    use LockdownError as L;
    let device = match e {
        RunError::Lockdown(l) | RunError::Service { source: l, .. } => l.device_error(),
        _ => None,
    };
    match device {
        Some(L::UserDeniedPairing) => {
            return "the phone refused to trust this computer (\"Don't Trust\" was tapped): \
                    unplug it, plug it in again, and tap Trust"
                .into()
        }
        Some(L::PasswordProtected) => {
            return "the phone is locked: unlock it (and keep it unlocked) and run again".into()
        }
        Some(L::PairingDialogResponsePending) => {
            return "the phone still shows \"Trust This Computer?\": tap Trust and run again".into()
        }
        Some(L::InvalidHostID) => {
            return "the phone no longer knows this computer: run again to pair anew".into()
        }
        _ => {}
    }
    let gone = "the phone was disconnected during the backup: plug it in again and run again";
    let kept = format!(
        "(the previous backup in {} is left as it was)",
        dir.display()
    );
    match e {
        RunError::Lockdown(lockdown::Error::TrustTimeout(t)) => format!(
            "nobody answered \"Trust This Computer?\" on the phone within {} s: unlock it, \
             tap Trust and run again",
            t.as_secs()
        ),
        RunError::Lockdown(lockdown::Error::Connect { source, .. })
        | RunError::Service {
            source: lockdown::Error::Connect { source, .. },
            ..
        } if source.kind() == std::io::ErrorKind::NotConnected => format!("{gone} {kept}"),
        RunError::Backup(h) if h.is_disconnect() => format!("{gone} {kept}"),
        RunError::Backup(HostError::Device(f)) => format!(
            "the phone stopped the backup with ErrorCode {} ({}){} {kept}",
            f.code,
            device_error_meaning(f.code),
            f.description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        RunError::Backup(HostError::Timeout(t)) => format!(
            "the phone sent nothing for {} s: unlock it, keep it plugged in and run again {kept}",
            t.as_secs()
        ),
        RunError::Backup(HostError::Cancelled) => format!("the backup was cancelled {kept}"),
        RunError::Backup(HostError::Protocol(p)) => {
            format!("the phone broke the backup protocol ({p}); nothing outside {} was written {kept}", dir.display())
        }
        RunError::SyncLock(s) => format!(
            "{s}: another program (iTunes, Finder, a sync) is using the phone; close it and run again"
        ),
        RunError::InfoPlist(t) => format!("cannot write into {}: {t}", dir.display()),
        other => format!("{other}"),
    }
}

pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let state = state_dir(args.state_dir.as_deref());
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating the state folder {}", state.display()))?;
    let store = DirPairStore::new(state.join(PAIR_RECORDS_DIR))
        .with_context(|| format!("opening the pair records in {}", state.display()))?;
    let host = HostIdentity::load_or_create(
        &state.join(HOST_IDENTITY_FILE),
        Some(host_name().unwrap_or_else(|| "cradle".into())),
    )
    .with_context(|| format!("reading this host's identity in {}", state.display()))?;
    // Asked before anything touches the phone, so a prompt does not race the trust dialog.
    let password: Option<Password> = if args.encrypt || args.to_repo.is_some() {
        Some(resolve_password(
            args.password_file.as_deref(),
            "Backup password: ",
        )?)
    } else {
        None
    };
    let dest_dir = args
        .to_folder
        .clone()
        .or_else(|| args.to_repo.clone())
        .unwrap_or_default();
    let mut dest = match (&args.to_folder, &args.to_repo, &password) {
        (Some(dir), _, _) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the backup folder {}", dir.display()))?;
            Dest::Folder(
                FolderTarget::open(dir)
                    .with_context(|| format!("opening the backup folder {}", dir.display()))?,
            )
        }
        (None, Some(path), Some(pw)) => {
            // Opened (password checked) before the phone is touched; then sessions a crash
            // left are finished or cleared.
            let mut repo = super::repo::open_with(path, pw)?;
            for r in cradle::store::ingest::recover_and_ingest(&mut repo, Some(pw))? {
                display_line(&format!(
                    "finished an interrupted ingest: snapshot {}",
                    &r.snapshot.to_hex()[..12]
                ));
            }
            Dest::Repo(Box::new(repo))
        }
        _ => anyhow::bail!("give --to-folder DIR or --to-repo PATH"),
    };

    let conn = connect(&args, &state)?;
    let dev = conn.connector();
    let udid = dev.udid().to_string();
    let mut opts = RunOptions {
        force_full: args.full,
        ..RunOptions::default()
    };
    opts.lockdown.pair.trust_timeout = Duration::from_secs(args.trust_timeout);
    let mut display = Display::new();
    let fail = |e: RunError, display: &mut Display| -> anyhow::Result<ExitCode> {
        display.finish();
        anyhow::bail!("{}", explain(&e, &dest_dir))
    };

    let encrypted = match query_will_encrypt(dev, &store, &host, &opts, &mut |e| display.event(e)) {
        Ok(b) => b,
        Err(e) => return fail(e, &mut display),
    };
    let mut turned_on = false;
    if !encrypted {
        match &password {
            Some(pw) => {
                display.say("turning backup encryption on (the phone asks for its passcode)");
                match run_change_password(dev, &store, &host, None, Some(pw), &opts, &mut |e| {
                    display.event(e)
                }) {
                    Ok(true) => turned_on = true,
                    Ok(false) => anyhow::bail!(
                        "the phone did not turn backup encryption on: enter the passcode on \
                         the phone when asked and run again"
                    ),
                    Err(e) => return fail(e, &mut display),
                }
            }
            None if !args.allow_unencrypted => anyhow::bail!(
                "the phone's backups are not encrypted: run with --encrypt (and a password) to \
                 turn encryption on, or --allow-unencrypted to back up without it"
            ),
            None => display.say("warning: this backup is not encrypted"),
        }
    }

    let t = Instant::now();
    let mut staged = None;
    let res = match &mut dest {
        Dest::Folder(target) => {
            run_backup(dev, &store, &host, target, &opts, &mut |e| display.event(e))
        }
        Dest::Repo(repo) => {
            let mut target = RepoTarget::start(repo, &udid, encrypted || turned_on)
                .context("starting a staging session in the repository")?;
            let res = run_backup(dev, &store, &host, &mut target, &opts, &mut |e| {
                display.event(e)
            });
            match res {
                Ok(r) => {
                    staged = Some(
                        target
                            .finish()
                            .context("marking the staging session complete")?,
                    );
                    Ok(r)
                }
                Err(e) => {
                    let full = target.saw_no_space();
                    if let Err(e) = target.abandon() {
                        tracing::warn!(error = %e, "removing the unfinished staging session");
                    }
                    if full {
                        display.finish();
                        anyhow::bail!("{}", drive_full(&dest_dir, false));
                    }
                    Err(e)
                }
            }
        }
    };
    display.finish();
    let report: RunReport = match res {
        Ok(r) => r,
        Err(e) => return fail(e, &mut display),
    };
    let secs = t.elapsed().as_secs_f64();
    let s = &report.summary;
    println!(
        "backup of {udid} into {}: {} files received, {} bytes ({:.1} MB) in {:.1} s \
         ({:.1} MB/s), {}, ErrorCode 0 (success)",
        dest_dir
            .join(if args.to_folder.is_some() { &udid } else { "" })
            .display(),
        s.files_received,
        s.bytes_received,
        s.bytes_received as f64 / 1e6,
        secs,
        s.bytes_received as f64 / 1e6 / secs.max(0.001),
        if report.will_encrypt || turned_on {
            "encrypted"
        } else {
            "NOT encrypted"
        },
    );
    if let (Dest::Repo(repo), Some(session)) = (&mut dest, staged) {
        let t = Instant::now();
        let r = match cradle::store::ingest::ingest(repo, session, password.as_ref()) {
            Ok(r) => r,
            Err(e) if cradle::store::repo_target::says_no_space(&e) => {
                anyhow::bail!("{}", drive_full(&dest_dir, true))
            }
            Err(e) => return Err(e).context("ingesting the backup into the repository"),
        };
        println!(
            "snapshot {} ({}) of {udid}: {} files ({} new, {} bytes) in {:.1} s",
            r.snapshot,
            match r.kind {
                cradle::store::snapshot::SnapshotKind::Digested => "digested",
                cradle::store::snapshot::SnapshotKind::Raw =>
                    "raw: the phone's backup password is not the repository's",
            },
            r.counts.all_files(),
            r.files_ingested,
            r.bytes_ingested,
            t.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // When encryption was already on, the phone's password may not be the one given.
    if encrypted && args.encrypt {
        if let Some(pw) = &password {
            let folder =
                BackupFolder::open(&dest_dir.join(&udid)).context("reading the new backup back")?;
            if let Err(FolderError::WrongPassword) = folder.verify_password(pw) {
                anyhow::bail!(
                    "the backup is complete but encrypted with the phone's existing backup \
                     password, not the one given: use that password to read it (or change it \
                     with Finder/iTunes)"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line for a drive that filled up: what happened, what is kept, what to do.
fn drive_full(repo: &Path, received: bool) -> String {
    format!(
        "the drive holding {} is full: {}; the snapshots already there are intact. Free space \
         on the drive (remove other files, or old snapshots with `cradle prune`) and run the \
         backup again",
        repo.display(),
        if received {
            "the backup was received but could not all be stored (the next run finishes it first)"
        } else {
            "the backup stopped before the phone had sent everything"
        }
    )
}

/// Where the backup goes.
enum Dest {
    Folder(FolderTarget),
    Repo(Box<cradle::store::repo::Repository>),
}

fn display_line(s: &str) {
    eprintln!("{s}");
}

fn host_name() -> Option<String> {
    let n = std::fs::read_to_string("/etc/hostname").ok()?;
    let n = n.trim();
    (!n.is_empty()).then(|| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_spec() {
        assert_eq!(
            parse_sim_spec("small").unwrap(),
            SimSpec {
                profile: Profile::Small,
                seed: 1,
                day: 1
            }
        );
        assert_eq!(
            parse_sim_spec("tiny:7:3").unwrap(),
            SimSpec {
                profile: Profile::Tiny,
                seed: 7,
                day: 3
            }
        );
        assert!(parse_sim_spec("tiny:7:0").is_err());
        assert!(parse_sim_spec("huge").is_err());
        assert!(parse_sim_spec("tiny:x").is_err());
        assert!(parse_sim_spec("tiny:1:1:1").is_err());
    }

    #[test]
    fn errors_say_what_happened_and_what_to_do() {
        use cradle::backup2::host::DeviceFailure;
        let dir = Path::new("/backups");
        let gone = explain(&RunError::Backup(HostError::PhoneDisconnected), dir);
        assert!(
            gone.contains("disconnected") && gone.contains("plug it in again"),
            "{gone}"
        );
        assert!(gone.contains("/backups is left as it was"), "{gone}");
        let full = explain(
            &RunError::Backup(HostError::Device(DeviceFailure {
                code: 105,
                meaning: device_error_meaning(105),
                description: Some("Insufficient free disk space".into()),
            })),
            dir,
        );
        assert!(
            full.contains("ErrorCode 105 (not enough free space on the backup drive)"),
            "{full}"
        );
        let denied = explain(
            &RunError::Lockdown(lockdown::Error::Device {
                request: "Pair".into(),
                error: LockdownError::UserDeniedPairing,
            }),
            dir,
        );
        assert!(denied.contains("tap Trust"), "{denied}");
        let locked = explain(
            &RunError::Service {
                service: "com.apple.mobilebackup2",
                source: lockdown::Error::Device {
                    request: "StartService".into(),
                    error: LockdownError::PasswordProtected,
                },
            },
            dir,
        );
        assert!(locked.starts_with("the phone is locked"), "{locked}");
        for e in [gone, full, denied, locked] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn a_full_drive_is_one_line_saying_what_to_do() {
        for received in [false, true] {
            let m = drive_full(Path::new("/media/d/Cradle"), received);
            assert!(m.contains("/media/d/Cradle is full"), "{m}");
            assert!(
                m.contains("Free space") && m.contains("cradle prune"),
                "{m}"
            );
            assert!(m.contains("intact") && !m.contains('\n'), "{m}");
        }
    }

    #[test]
    fn state_dir_given_wins() {
        assert_eq!(state_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
    }
}
