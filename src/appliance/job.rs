//! One phone's backup attempt on its own thread: connect (pairing if needed), identify, then do
//! what the state machine decides (turn encryption on, back up, stop), reporting `JobEvent`s.
//!
//! The thread never decides policy; it only turns library calls into events and errors into
//! `Failure`s the screen can explain.

use super::destination::{Destination, DestinationError, StoreProgress, StoreRequest};
use super::machine::{Failure, JobEvent, JobId};
use crate::backup2::host::{BackupEvent, HostError, DEVICE_NO_SPACE};
use crate::backup2::run::{run_backup, run_change_password, RunError, RunOptions};
use crate::backup2::target::TargetError;
use crate::lockdown::{self, HostIdentity, LockdownError, PairEvent, PairStore};
use crate::secrets::{SecretStore, SecretsError, Slot, Udid};
use crate::transport::DeviceConnector;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

/// What the state machine tells a job to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobCommand {
    EnableEncryption,
    Backup,
    Cancel,
}

/// Everything a job needs besides its phone.
#[derive(Clone)]
pub struct JobContext {
    pub pair_store: Arc<dyn PairStore>,
    pub host: HostIdentity,
    pub secrets: Arc<dyn SecretStore + Send + Sync>,
    pub destination: Arc<dyn Destination>,
    /// Lockdown and session settings (trust timeout, idle timeout).
    pub run_options: RunOptions,
    /// How long a phone is assumed to wait for its passcode.
    pub passcode_timeout: Duration,
}

/// Runs a job to its end. `send` delivers events (tagged by the caller); `commands` carries the
/// machine's decisions; `cancel` stops a running session early.
pub fn run_job(
    id: JobId,
    conn: Arc<dyn DeviceConnector>,
    ctx: JobContext,
    commands: Receiver<JobCommand>,
    cancel: Arc<AtomicBool>,
    send: Sender<(JobId, JobEvent)>,
) {
    let emit = |e: JobEvent| {
        let _ = send.send((id, e));
    };
    let mut opts = ctx.run_options.clone();
    opts.session.cancel = Some(cancel.clone());
    let udid = conn.udid().to_string();

    let mut trust_said = false;
    let mut events = |e: BackupEvent| match e {
        BackupEvent::Pairing(PairEvent::Paired) => emit(JobEvent::TrustAccepted),
        BackupEvent::Pairing(PairEvent::WaitingForTrust { .. } | PairEvent::PasscodeRequired)
            if !trust_said =>
        {
            trust_said = true;
            emit(JobEvent::TrustPending)
        }
        BackupEvent::PasscodeRequested => emit(JobEvent::PasscodeRequested {
            timeout: ctx.passcode_timeout,
        }),
        BackupEvent::PasscodeDismissed => emit(JobEvent::PasscodeDismissed),
        BackupEvent::Progress(p) => emit(JobEvent::Progress {
            done_bytes: p.bytes_received,
            total_bytes: p.bytes_expected.unwrap_or(0).max(p.bytes_received),
        }),
        _ => {}
    };

    let mut encrypted = match identify(conn.as_ref(), &ctx, &opts, &mut events) {
        Ok((name, will_encrypt)) => {
            emit(JobEvent::Identified { name, will_encrypt });
            will_encrypt
        }
        Err(e) => return emit(JobEvent::Failed(failure_of_run(&e, &cancel))),
    };
    loop {
        let Ok(cmd) = commands.recv() else { return };
        match cmd {
            JobCommand::Cancel => return,
            JobCommand::EnableEncryption => {
                let pw = match ctx.secrets.get(&Slot::Default) {
                    Ok(pw) => pw,
                    Err(e) => return emit(JobEvent::Failed(failure_of_secrets(&e))),
                };
                match run_change_password(
                    conn.as_ref(),
                    ctx.pair_store.as_ref(),
                    &ctx.host,
                    None,
                    Some(&pw),
                    &opts,
                    &mut events,
                ) {
                    Ok(true) | Err(RunError::EncryptionAlreadySet(true)) => {
                        encrypted = true;
                        emit(JobEvent::EncryptionEnabled)
                    }
                    Ok(false) => return emit(JobEvent::Failed(Failure::EncryptionRefused)),
                    Err(e) => return emit(JobEvent::Failed(failure_of_run(&e, &cancel))),
                }
            }
            JobCommand::Backup => {
                let result = backup(
                    conn.as_ref(),
                    &udid,
                    encrypted,
                    &ctx,
                    &opts,
                    &mut events,
                    &emit,
                );
                if let Err(f) = result {
                    if !cancel.load(Ordering::SeqCst) {
                        emit(JobEvent::Failed(f));
                    }
                }
                return;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn backup(
    conn: &dyn DeviceConnector,
    udid: &str,
    encrypted: bool,
    ctx: &JobContext,
    opts: &RunOptions,
    events: &mut dyn FnMut(BackupEvent),
    emit: &dyn Fn(JobEvent),
) -> Result<(), Failure> {
    let box_password = match ctx.secrets.get(&Slot::Default) {
        Ok(pw) => Some(pw),
        Err(SecretsError::NotFound { .. }) => None,
        Err(e) => {
            tracing::warn!("reading the box's password: {e}");
            None
        }
    };
    let phone_password = match Udid::new(udid) {
        Ok(u) => match ctx.secrets.password_for_phone(&u) {
            Ok(p) => p.map(|(_, pw)| pw),
            Err(e) => {
                tracing::warn!("reading the backup password: {e}");
                None
            }
        },
        Err(_) => None,
    };
    let req = StoreRequest {
        udid,
        encrypted,
        box_password: box_password.as_ref(),
        phone_password: phone_password.as_ref(),
    };
    let mut receive = |target: &mut dyn crate::backup2::target::BackupTarget| {
        let report = run_backup(
            conn,
            ctx.pair_store.as_ref(),
            &ctx.host,
            target,
            opts,
            events,
        )?;
        let s = &report.summary;
        emit(JobEvent::Received {
            files: s.files_received,
            bytes: s.bytes_received,
        });
        Ok(())
    };
    let stored = ctx
        .destination
        .store(&req, &mut receive, &mut |p| match p {
            StoreProgress::Saving => {}
            StoreProgress::Verifying(pm) => emit(JobEvent::Verifying { permille: Some(pm) }),
        })
        .map_err(|e| failure_of_dest(&e))?;
    emit(JobEvent::Verified {
        new_bytes: stored.new_bytes,
        password_known: stored.password_known,
        encrypted: stored.encrypted,
        snapshot: stored.snapshot,
    });
    Ok(())
}

/// Opens lockdown (pairing if needed) and reads the phone's name and `WillEncrypt`.
fn identify(
    conn: &dyn DeviceConnector,
    ctx: &JobContext,
    opts: &RunOptions,
    events: &mut dyn FnMut(BackupEvent),
) -> Result<(String, bool), RunError> {
    let mut ld = lockdown::open(
        conn,
        ctx.pair_store.as_ref(),
        &ctx.host,
        &opts.lockdown,
        &mut |e| events(BackupEvent::Pairing(e)),
    )?;
    let name = ld
        .get_value(None, Some("DeviceName"))
        .ok()
        .and_then(|v| v.as_string().map(str::to_string))
        .unwrap_or_else(|| "iPhone".into());
    let enc = match ld.get_value(Some("com.apple.mobile.backup"), Some("WillEncrypt")) {
        Ok(v) => Ok(v.as_boolean().unwrap_or(false)),
        Err(e) if e.device_error() == Some(&LockdownError::MissingValue) => Ok(false),
        Err(e) => Err(e),
    };
    let _ = ld.close();
    Ok((name, enc?))
}

fn is_disconnect_io(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotConnected
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof
    )
}

/// What a failed library call means for the owner.
pub fn failure_of_run(e: &RunError, cancel: &AtomicBool) -> Failure {
    let device = match e {
        RunError::Lockdown(l) | RunError::Service { source: l, .. } => l.device_error(),
        _ => None,
    };
    match device {
        Some(LockdownError::UserDeniedPairing) => return Failure::TrustDenied,
        Some(LockdownError::PasswordProtected | LockdownError::PairingDialogResponsePending) => {
            return Failure::PhoneLocked
        }
        _ => {}
    }
    match e {
        RunError::Lockdown(lockdown::Error::TrustTimeout(_)) => Failure::PhoneLocked,
        RunError::Lockdown(lockdown::Error::Connect { source, .. })
        | RunError::Service {
            source: lockdown::Error::Connect { source, .. },
            ..
        } if is_disconnect_io(source) => Failure::PhoneGone,
        RunError::Backup(h) if h.is_disconnect() => Failure::PhoneGone,
        RunError::Backup(HostError::Cancelled) if cancel.load(Ordering::SeqCst) => {
            Failure::PhoneGone
        }
        RunError::Backup(HostError::Timeout(_)) => Failure::PhoneLocked,
        // The phone compared its backup with the free space we reported and refused.
        RunError::Backup(HostError::Device(d)) if d.code == DEVICE_NO_SPACE => Failure::DriveFull,
        RunError::InfoPlist(TargetError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::StorageFull =>
        {
            Failure::DriveFull
        }
        RunError::InfoPlist(_) => Failure::DriveGone,
        other => Failure::Other {
            code: "E-BACKUP".into(),
            message: other.to_string(),
        },
    }
}

fn failure_of_dest(e: &DestinationError) -> Failure {
    if e.is_full() {
        return Failure::DriveFull;
    }
    match e {
        DestinationError::Receive(run) => failure_of_run(run, &AtomicBool::new(false)),
        DestinationError::Password { .. } => Failure::DrivePassword,
        DestinationError::NotCradle { .. } => Failure::NotCradleDrive,
        DestinationError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Failure::DriveGone
        }
        DestinationError::Check { .. } | DestinationError::Verify { .. } => Failure::Other {
            code: "E-VERIFY".into(),
            message: e.to_string(),
        },
        _ => Failure::Other {
            code: "E-DRIVE".into(),
            message: e.to_string(),
        },
    }
}

fn failure_of_secrets(e: &SecretsError) -> Failure {
    Failure::Other {
        code: "E-SECRETS".into(),
        message: e.to_string(),
    }
}
