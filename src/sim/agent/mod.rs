//! The simulated iPhone's backup agent: the device side of mobilebackup2. It speaks first
//! (DeviceLink version exchange), answers Hello, serves Backup and ChangePassword, refuses the rest.
//!
//! A backup uses only messages both real hosts handle (protocol.md §7 items 12–16), in this order:
//! DownloadFiles (one path each: Manifest.plist, Manifest.db, Status.plist) → GetFreeDiskSpace →
//! RemoveItems (a stale Snapshot) → CreateDirectory (`<UDID>`, `Snapshot`, hash folders) →
//! UploadFiles batches into `Snapshot/xx/<fileID>`, then Manifest.db, Manifest.plist, Status.plist
//! → MoveItems, one file each, Status.plist last → RemoveItems (deleted files, Snapshot) →
//! ProcessMessage ErrorCode 0. It is incremental when the previous Manifest.plist and
//! Manifest.db open with this phone's keys; only new or changed files are sent then.
//!
//! Memory stays bounded: file data streams from the synthetic phone through the encryptor onto
//! the connection; the previous Manifest.db goes to a scratch file, its rows to a map of small
//! records, capped.

mod backup;
mod conn;

use crate::backup2::messages::{DeviceMessage, DeviceResponse, HostMessage, HostRequest};
use crate::password::Password;
use crate::sim::backup::SimBackupError;
use crate::sim::device::{ServiceHandler, SimDevice, MOBILEBACKUP2_SERVICE};
use crate::sim::phone::Phone;
use crate::sim::services::NotificationHub;
use crate::transport::BoxStream;
use conn::Conn;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// DeviceLink version the agent announces: both hosts accept 300 (protocol.md §4.2).
pub const DL_VERSION: (u64, u64) = (300, 0);
/// The mobilebackup2 protocol version chosen when the host offers it.
pub const PROTOCOL_VERSION: f64 = 2.1;

/// Posted to notification_proxy observers after the backup password changed.
pub const NOTIFY_DOMAIN_CHANGED: &str = "com.apple.mobile.backup.domain_changed";
/// Posted when the phone shows its passcode prompt (iOS ≥ 16.1, backups and ChangePassword).
pub const NOTIFY_PASSCODE_PRESENTED: &str = "com.apple.LocalAuthentication.ui.presented";
/// Posted when the passcode prompt goes away.
pub const NOTIFY_PASSCODE_DISMISSED: &str = "com.apple.LocalAuthentication.ui.dismissed";

/// The ErrorCodes the agent reports in its final ProcessMessage (MBErrorDomain values).
pub mod codes {
    /// A generic failure: the host refused an operation, or a request was malformed.
    pub const FAILED: i64 = 1;
    /// A file could not be uploaded (the host refused it).
    pub const UPLOAD_FAILED: i64 = 100;
    /// The host has less free space than the backup needs.
    pub const NOT_ENOUGH_SPACE: i64 = 105;
    /// ChangePassword with a wrong or missing old password (as real phones answer).
    pub const INVALID_PASSWORD: i64 = 207;
}

/// How long the agent waits for the host's answer to one operation by default. Hosts answer
/// file operations in milliseconds; the limit only frees the thread of a host that hung.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an idle connection waits for the next request by default (hosts build Info.plist
/// and take the sync lock between Hello and Backup).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default cap of one UploadFiles batch, in data bytes.
pub const DEFAULT_BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// Default cap of one UploadFiles batch, in files.
pub const DEFAULT_BATCH_FILES: usize = 500;
/// How long the passcode prompt waits for a host to finish registering its observers.
pub const OBSERVER_GRACE: Duration = Duration::from_millis(250);
/// Reports kept by an agent (older ones are dropped).
pub const MAX_REPORTS: usize = 64;

/// Where the phone keeps its backup password; `Some` means backups are encrypted.
pub trait EncryptionState: Send + Sync {
    /// The current password, if encryption is on.
    fn backup_password(&self) -> Option<Password>;
    /// Turns encryption on (`Some`), changes the password, or turns it off (`None`).
    fn set_backup_password(&self, password: Option<Password>);
}

impl EncryptionState for SimDevice {
    fn backup_password(&self) -> Option<Password> {
        SimDevice::backup_password(self)
    }
    fn set_backup_password(&self, password: Option<Password>) {
        SimDevice::set_backup_password(self, password)
    }
}

/// An [`EncryptionState`] held in memory, for an agent without a simulated lockdownd.
#[derive(Default)]
pub struct MemoryEncryption(Mutex<Option<Password>>);

impl MemoryEncryption {
    pub fn new(password: Option<Password>) -> Self {
        MemoryEncryption(Mutex::new(password))
    }
}

impl EncryptionState for MemoryEncryption {
    fn backup_password(&self) -> Option<Password> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set_backup_password(&self, password: Option<Password>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = password;
    }
}

/// Where in a backup a fault is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Right after the Backup request arrives, before any message.
    Start,
    /// In the first upload: in place of its UploadFiles message (frame faults) or in its stream,
    /// after the first file's paths (stream faults).
    Upload,
    /// Before the first MoveItems.
    Moves,
}

/// A deliberate misbehaviour, for testing hosts against a hostile or broken phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Closes the connection after this many bytes of upload stream (a pulled cable).
    DisconnectAfterUploadBytes(u64),
    /// Goes silent for this long (ended early when the host gives up and closes).
    Stall { at: FaultPoint, duration: Duration },
    /// Sends a frame whose body is not a plist, then waits for the host to close.
    MalformedFrame { at: FaultPoint },
    /// Sends a 4 GiB length: a frame length at `Start`/`Moves`, a data block length in `Upload`.
    HugeLength { at: FaultPoint },
    /// Uses this path instead of a real one: the first CreateDirectory at `Start`, the first
    /// uploaded file's backup path at `Upload`, the first move's destination at `Moves`.
    /// `{udid}` is replaced by the UDID (e.g. `{udid}/../escape`, `/tmp/escape`).
    BadPath { at: FaultPoint, path: String },
}

/// How an agent behaves.
#[derive(Clone)]
pub struct AgentConfig {
    /// PBKDF2-SHA256 rounds of the keybag it writes (`DPIC`): 10,000,000 on phones.
    pub dpic: u32,
    /// Shows the passcode prompt at backup start and for ChangePassword (iOS ≥ 16.1 does, for
    /// every backup, encrypted or not).
    pub passcode_prompt: bool,
    /// How long the simulated user takes to type the passcode.
    pub passcode_delay: Duration,
    /// Longest wait for the host's answer to one operation.
    pub reply_timeout: Duration,
    /// Longest wait for the next request.
    pub idle_timeout: Duration,
    /// Cap of one UploadFiles batch in data bytes (a single larger file is sent alone).
    pub batch_bytes: u64,
    /// Cap of one UploadFiles batch in files.
    pub batch_files: usize,
    /// A deliberate misbehaviour, applied to every backup.
    pub fault: Option<Fault>,
    /// Where LocalAuthentication and domain_changed notifications are posted.
    pub notifications: Option<Arc<NotificationHub>>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            dpic: crate::ios_backup::kdf::DEFAULT_DPIC,
            passcode_prompt: true,
            passcode_delay: Duration::ZERO,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            batch_bytes: DEFAULT_BATCH_BYTES,
            batch_files: DEFAULT_BATCH_FILES,
            fault: None,
            notifications: None,
        }
    }
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("dpic", &self.dpic)
            .field("passcode_prompt", &self.passcode_prompt)
            .field("passcode_delay", &self.passcode_delay)
            .field("reply_timeout", &self.reply_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("batch_bytes", &self.batch_bytes)
            .field("batch_files", &self.batch_files)
            .field("fault", &self.fault)
            .field("notifications", &self.notifications.is_some())
            .finish()
    }
}

/// Why a session ended other than by the host saying goodbye.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The host closed the connection or sent DLMessageDisconnect (in an operation: a cancel).
    #[error("the host closed the connection")]
    HostClosed,
    /// The host sent nothing for the limit.
    #[error("the host sent nothing for {} s", .0.as_secs())]
    HostTimeout(Duration),
    /// The host broke the DeviceLink protocol.
    #[error("the host broke the DeviceLink protocol: {0}")]
    Protocol(String),
    /// A configured fault ended the session.
    #[error("fault injected: {0}")]
    Injected(&'static str),
    /// The simulated phone could not produce its backup (a local fault).
    #[error("the simulated phone could not produce its backup: {0}")]
    Backup(#[from] SimBackupError),
    /// Scratch space for manifests could not be used (a local fault).
    #[error("scratch space for the backup manifests: {0}")]
    Scratch(#[source] io::Error),
    /// The connection failed.
    #[error("i/o error on the mobilebackup2 connection: {0}")]
    Io(#[source] io::Error),
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    Full,
    Incremental,
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        })
    }
}

/// How a backup run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// ErrorCode 0 was sent after Status.plist was in place.
    Completed,
    /// The agent reported a non-zero ErrorCode (the host refused something, or no space).
    Refused { code: i64, description: String },
    /// The connection ended in the middle (host cancel, timeout, injected fault).
    Interrupted { reason: String },
}

/// What one Backup request did, for tests and the simulator's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub kind: BackupKind,
    /// Why the backup was full (`None` for incremental ones).
    pub full_reason: Option<String>,
    pub encrypted: bool,
    /// The phone's day.
    pub day: u32,
    /// Data files uploaded (the three manifests not counted).
    pub files_uploaded: u64,
    /// Bytes of those data files as sent (ciphertext when encrypted).
    pub bytes_uploaded: u64,
    /// Files left as they were in the previous backup.
    pub files_unchanged: u64,
    /// Data files of the previous backup removed.
    pub files_removed: u64,
    pub outcome: RunOutcome,
    pub elapsed: Duration,
}

impl fmt::Display for RunReport {
    /// One line: `backup done: incremental, 12 files, 3412345 bytes, 2 removed, 80 unchanged`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            RunOutcome::Completed => write!(f, "backup done: ")?,
            RunOutcome::Refused { code, description } => {
                write!(f, "backup refused (error {code}: {description}): ")?
            }
            RunOutcome::Interrupted { reason } => write!(f, "backup interrupted ({reason}): ")?,
        }
        write!(
            f,
            "{}, {} files, {} bytes, {} removed, {} unchanged, day {}, {}, {:.1} s",
            self.kind,
            self.files_uploaded,
            self.bytes_uploaded,
            self.files_removed,
            self.files_unchanged,
            self.day,
            if self.encrypted {
                "encrypted"
            } else {
                "not encrypted"
            },
            self.elapsed.as_secs_f64()
        )?;
        if let Some(r) = &self.full_reason {
            write!(f, " (full: {r})")?;
        }
        Ok(())
    }
}

type ReportObserver = Arc<dyn Fn(&RunReport) + Send + Sync>;

/// The backup agent of one simulated phone. One instance serves every mobilebackup2 connection.
pub struct BackupAgent {
    phone: Mutex<Phone>,
    encryption: Arc<dyn EncryptionState>,
    config: AgentConfig,
    reports: Mutex<VecDeque<RunReport>>,
    observer: Mutex<Option<ReportObserver>>,
}

impl fmt::Debug for BackupAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupAgent")
            .field(
                "phone",
                &*self.phone.lock().unwrap_or_else(|p| p.into_inner()),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BackupAgent {
    /// An agent backing up `phone`, encrypting when `encryption` holds a password.
    pub fn new(
        phone: Phone,
        encryption: Arc<dyn EncryptionState>,
        config: AgentConfig,
    ) -> Arc<BackupAgent> {
        Arc::new(BackupAgent {
            phone: Mutex::new(phone),
            encryption,
            config,
            reports: Mutex::new(VecDeque::new()),
            observer: Mutex::new(None),
        })
    }

    /// Plugs the agent into `device` as `com.apple.mobilebackup2`, over TLS as on real phones.
    pub fn register(self: &Arc<Self>, device: &SimDevice) {
        device.register_service(MOBILEBACKUP2_SERVICE, true, self.handler());
    }

    /// The handler serving one connection (errors are logged).
    pub fn handler(self: &Arc<Self>) -> ServiceHandler {
        let me = self.clone();
        Arc::new(move |stream| {
            if let Err(e) = me.serve(stream) {
                tracing::info!(error = %e, "backup agent: session ended");
            }
        })
    }

    /// The phone backed up from now on (another day of it, typically).
    pub fn set_phone(&self, phone: Phone) {
        *self.phone.lock().unwrap_or_else(|p| p.into_inner()) = phone;
    }

    /// The phone being backed up.
    pub fn phone(&self) -> Phone {
        self.phone.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Reports of the backups served so far (oldest first, at most [`MAX_REPORTS`]).
    pub fn reports(&self) -> Vec<RunReport> {
        let g = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().cloned().collect()
    }

    /// The latest report.
    pub fn last_report(&self) -> Option<RunReport> {
        let g = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        g.back().cloned()
    }

    /// Calls `f` with every report as a backup ends (the simulator prints them).
    pub fn on_report(&self, f: impl Fn(&RunReport) + Send + Sync + 'static) {
        *self.observer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    fn record(&self, report: RunReport) {
        tracing::info!("{report}");
        let observer = self
            .observer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(f) = observer {
            f(&report);
        }
        let mut g = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_REPORTS {
            g.pop_front();
        }
        g.push_back(report);
    }

    fn notify(&self, name: &str) {
        if let Some(hub) = &self.config.notifications {
            let n = hub.post(name);
            tracing::debug!(name, observers = n, "backup agent: notification posted");
        }
    }

    /// The passcode prompt: presented, the simulated typing time, dismissed.
    fn passcode_prompt(&self) {
        if !self.config.passcode_prompt {
            return;
        }
        if let Some(hub) = &self.config.notifications {
            // A host registers its observers on notification_proxy just before it sends the
            // request, on another connection: give that connection a moment to be read, or the
            // first notification reaches nobody.
            hub.wait_for_observers(NOTIFY_PASSCODE_PRESENTED, 1, OBSERVER_GRACE);
        }
        self.notify(NOTIFY_PASSCODE_PRESENTED);
        if !self.config.passcode_delay.is_zero() {
            std::thread::sleep(self.config.passcode_delay);
        }
        self.notify(NOTIFY_PASSCODE_DISMISSED);
    }

    /// Serves one mobilebackup2 connection until the host disconnects. `Ok` when the host said
    /// goodbye or closed between operations.
    pub fn serve(&self, stream: BoxStream) -> Result<(), AgentError> {
        let cut = match &self.config.fault {
            Some(Fault::DisconnectAfterUploadBytes(n)) => Some(*n),
            _ => None,
        };
        let mut conn = Conn::new(stream, cut);
        self.session(&mut conn)
    }

    fn session(&self, conn: &mut Conn) -> Result<(), AgentError> {
        conn.send(&DeviceMessage::VersionExchange {
            major: DL_VERSION.0,
            minor: DL_VERSION.1,
        })?;
        match conn.recv(self.config.reply_timeout)? {
            HostMessage::VersionsOk { .. } => {}
            other => {
                return Err(AgentError::Protocol(format!(
                    "expected DLVersionsOk, got {other:?}"
                )))
            }
        }
        conn.send(&DeviceMessage::DeviceReady)?;
        let mut hello = false;
        loop {
            let msg = match conn.recv_request(self.config.idle_timeout) {
                Ok(m) => m,
                Err(AgentError::HostClosed) => return Ok(()),
                Err(e) => return Err(e),
            };
            let req = match msg {
                Incoming::Message(HostMessage::ProcessMessage(req)) => req,
                Incoming::Message(HostMessage::Disconnect) => return Ok(()),
                Incoming::Message(other) => {
                    tracing::debug!(
                        ?other,
                        "backup agent: ignored a host message outside an operation"
                    );
                    continue;
                }
                Incoming::BadRequest(why) => {
                    respond(
                        conn,
                        codes::FAILED,
                        Some(format!("malformed request: {why}")),
                    )?;
                    continue;
                }
            };
            match req {
                HostRequest::Hello { versions } => {
                    let offered = |v: f64| versions.iter().any(|x| (x - v).abs() < 1e-3);
                    let chosen = [PROTOCOL_VERSION, 2.0].into_iter().find(|v| offered(*v));
                    let mut r = DeviceResponse::new(if chosen.is_some() { 0 } else { 1 });
                    r.protocol_version = chosen;
                    conn.send(&DeviceMessage::ProcessMessage(r.to_dict()))?;
                    hello = chosen.is_some();
                }
                _ if !hello => respond(
                    conn,
                    codes::FAILED,
                    Some("Hello must come first".to_string()),
                )?,
                HostRequest::Backup {
                    target_identifier,
                    force_full_backup,
                    ..
                } => {
                    let started = Instant::now();
                    let (res, mut report) =
                        backup::run(self, conn, &target_identifier, force_full_backup);
                    report.elapsed = started.elapsed();
                    self.record(report);
                    res?;
                }
                HostRequest::ChangePassword {
                    target_identifier,
                    old_password,
                    new_password,
                } => self.change_password(
                    conn,
                    &target_identifier,
                    old_password.as_ref(),
                    new_password.as_ref(),
                )?,
                other => respond(
                    conn,
                    codes::FAILED,
                    Some(format!("{} is not supported by this device", other.name())),
                )?,
            }
        }
    }

    fn change_password(
        &self,
        conn: &mut Conn,
        target: &str,
        old: Option<&Password>,
        new: Option<&Password>,
    ) -> Result<(), AgentError> {
        let udid = self.phone().identity().udid.clone();
        if !target.eq_ignore_ascii_case(&udid) {
            return respond(
                conn,
                codes::FAILED,
                Some(format!("unknown target {target}")),
            );
        }
        // The phone asks for its passcode before touching the password (iOS ≥ 16.1).
        self.passcode_prompt();
        let current = self.encryption.backup_password();
        let verdict = match (&current, old, new) {
            (_, None, None) => Err((codes::FAILED, "neither OldPassword nor NewPassword given")),
            (Some(cur), Some(old), _) if old == cur => Ok(new.cloned()),
            (Some(_), Some(_), _) => Err((codes::INVALID_PASSWORD, "Invalid password")),
            (Some(_), None, Some(_)) => Err((
                codes::INVALID_PASSWORD,
                "encryption is on: the old password is needed",
            )),
            (None, _, Some(new)) => Ok(Some(new.clone())),
            (None, Some(_), None) => Err((codes::FAILED, "backup encryption is not on")),
        };
        match verdict {
            Ok(next) => {
                let on = next.is_some();
                self.encryption.set_backup_password(next);
                tracing::info!(
                    encryption = if on { "on" } else { "off" },
                    "backup agent: backup password changed"
                );
                self.notify(NOTIFY_DOMAIN_CHANGED);
                respond(conn, 0, None)
            }
            Err((code, why)) => {
                tracing::info!(code, why, "backup agent: ChangePassword refused");
                respond(conn, code, Some(format!("{why} (MBErrorDomain/{code})")))
            }
        }
    }
}

/// A request, or a ProcessMessage whose dictionary could not be understood.
pub(crate) enum Incoming {
    Message(HostMessage),
    BadRequest(String),
}

/// Sends the final `ProcessMessage{MessageName: Response, ErrorCode, ErrorDescription?}`.
fn respond(conn: &mut Conn, code: i64, description: Option<String>) -> Result<(), AgentError> {
    let mut r = DeviceResponse::new(code);
    r.error_description = description;
    conn.send(&DeviceMessage::ProcessMessage(r.to_dict()))
}

#[cfg(test)]
mod tests;
