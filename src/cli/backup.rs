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
use cradle::lockdown::{self, LockdownError, PairEvent};
use cradle::password::{resolve_password, Password};
use cradle::store::lock::{LockGuard, LockPurpose, SystemLockEnv};
use cradle::store::repo_target::RepoTarget;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::phone::{connect, open_host_state, HostState, PhoneArgs};
pub use super::phone::{
    parse_sim_spec, SimSpec, HOST_IDENTITY_FILE, PAIR_RECORDS_DIR, SIM_STATE_DIR, SYSTEM_STATE_DIR,
};

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
    #[command(flatten)]
    phone: PhoneArgs,
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
}

/// Progress on stderr: a rewritten line on a terminal, a line every few seconds otherwise.
pub(super) struct Display {
    tty: bool,
    started: Instant,
    last: Option<Instant>,
    progress: Progress,
    waiting_said: bool,
}

impl Display {
    pub(super) fn new() -> Self {
        Display {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
            progress: Progress::default(),
            waiting_said: false,
        }
    }

    pub(super) fn say(&mut self, line: &str) {
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

    pub(super) fn event(&mut self, e: BackupEvent) {
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

    pub(super) fn finish(&mut self) {
        if self.tty && self.last.is_some() {
            let _ = writeln!(std::io::stderr());
        }
        self.last = None;
    }
}

/// One line: what happened and what to do.
pub(super) fn explain(e: &RunError, dir: &Path) -> String {
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
    let HostState {
        dir: state,
        pairs: store,
        host,
    } = open_host_state(args.phone.state_dir.as_deref())?;
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
    // The repository's writer lock: dropped (removed) on every early return, released below.
    let mut repo_lock: Option<LockGuard> = None;
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
            // One writer at a time (format.md, locks); taking it also clears the `.tmp` debris a
            // killed writer left. Held until this command ends.
            let lock = repo
                .lock_writer(LockPurpose::Ingest, &SystemLockEnv)
                .with_context(|| {
                    format!(
                        "cannot back up into {}: wait for the other command to finish, then \
                         run again",
                        path.display()
                    )
                })?;
            for r in cradle::store::ingest::recover_and_ingest(&mut repo, Some(pw))? {
                display_line(&format!(
                    "finished an interrupted ingest: snapshot {}",
                    &r.snapshot.to_hex()[..12]
                ));
            }
            repo_lock = Some(lock);
            Dest::Repo(Box::new(repo))
        }
        _ => anyhow::bail!("give --to-folder DIR or --to-repo PATH"),
    };

    let conn = connect(&args.phone, &state)?;
    let dev = conn.connector();
    let udid = dev.udid().to_string();
    let mut opts = RunOptions {
        force_full: args.full,
        ..RunOptions::default()
    };
    opts.lockdown.pair.trust_timeout = Duration::from_secs(args.phone.trust_timeout);
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
        if let Some(lock) = repo_lock.take() {
            lock.release()
                .context("removing the repository's writer lock after the backup")?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
