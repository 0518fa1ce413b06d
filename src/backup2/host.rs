//! The host side of mobilebackup2: the DeviceLink handshake as consuming states, then operations
//! (Backup, ChangePassword, Info/List) whose DL loop answers the phone's file requests on a target.
//!
//! Handshake: `ExpectVersionExchange → ExpectDeviceReady → ExpectHelloResponse → Negotiated`,
//! each a pure `handle(self, msg, out)`. The operation loop is driven by I/O (raw file streams
//! sit between plists), through a connection wrapper that turns read timeouts into patience:
//! a read that times out is retried until the idle limit, checking the cancel flag each time.

use super::dl::{self, HOST_DL_VERSION};
use super::file_stream::{
    FileHeader, FileStreamReader, FileStreamWriter, StreamError, StreamEvent, StreamKind,
};
use super::messages::{
    DeviceMessage, DeviceResponse, HostMessage, HostRequest, StatusResponse,
    SUPPORTED_PROTOCOL_VERSIONS,
};
use super::target::{self, BackupPath, BackupTarget, DirEntry, EntryKind, EntryMeta, TargetError};
use crate::password::Password;
use crate::plist_frame::FrameError;
use crate::transport::BoxStream;
use plist::{Dictionary, Value};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the phone may stay silent before the session gives up. Generous: before the first
/// message of a backup the phone prepares (snapshots, and on iOS ≥ 16.1 waits for the passcode).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How often a blocked read wakes up to check the cancel flag.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A progress event is emitted at least every this many received bytes.
pub const PROGRESS_EVERY_BYTES: u64 = 1024 * 1024;
/// Buffer for received file data (memory per session is bounded by this, not by file sizes).
pub const RECEIVE_BUFFER_LEN: usize = 64 * 1024;
/// Buffer for files sent to the phone.
pub const SEND_BUFFER_LEN: usize = 32 * 1024;

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Longest silence from the phone (measured from its last byte or our last message).
    pub idle_timeout: Duration,
    /// Read timeout set on the stream; each expiry checks `cancel`.
    pub poll_interval: Duration,
    /// Set to stop: the session sends DLMessageDisconnect and closes.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            cancel: None,
        }
    }
}

/// What a backup is doing, for the display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening lockdown and the services.
    Connecting,
    /// Writing Info.plist and taking the sync lock.
    Preparing,
    /// Request sent; the phone prepares (and may ask for its passcode).
    WaitingForPhone,
    /// The phone is sending files.
    Transferring,
    /// Checking the result (Status.plist).
    Verifying,
    /// Unlocking and saying goodbye.
    Finishing,
}

/// Transfer figures for the display.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Overall progress as the phone reports it, 0–100.
    pub percent: Option<f64>,
    /// File bytes received so far in this operation.
    pub bytes_received: u64,
    /// The total the phone announced with its last UploadFiles, if any.
    pub bytes_expected: Option<u64>,
    /// Files received and committed so far.
    pub files_received: u64,
    /// The file being received (backup-relative path).
    pub current_file: Option<String>,
}

/// Something the display or the appliance may want to show.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BackupEvent {
    Phase(Phase),
    /// Pairing with the phone ("Trust This Computer?").
    Pairing(crate::lockdown::PairEvent),
    Progress(Progress),
    /// A file arrived complete.
    FileReceived {
        path: String,
        size: u64,
    },
    /// The phone reported it could not send a file (the partial data was discarded).
    FileFailedOnPhone {
        path: String,
        message: String,
    },
    /// This side could not store a file the phone sent, or refused its path.
    FileRefused {
        path: String,
        reason: String,
    },
    /// The phone shows its passcode prompt (ChangePassword, or iOS ≥ 16.1 before a backup).
    PasscodeRequested,
    /// The passcode prompt went away.
    PasscodeDismissed,
    /// The user cancelled on the phone.
    CancelRequestedOnPhone,
    SuspendRequestedOnPhone,
    ResumeRequestedOnPhone,
    /// The phone's backup settings changed (encryption turned on or off).
    EncryptionSettingChanged,
}

/// A phone's failure report: the final ProcessMessage had a non-zero ErrorCode.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceFailure {
    pub code: i64,
    /// What the code is known to mean.
    pub meaning: &'static str,
    /// The phone's own `ErrorDescription`.
    pub description: Option<String>,
}

impl std::fmt::Display for DeviceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {} ({})", self.code, self.meaning)?;
        if let Some(d) = &self.description {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

/// The phone's ErrorCode when the backup will not fit the free space the host reported.
pub const DEVICE_NO_SPACE: i64 = 105;

/// What a non-zero mobilebackup2 ErrorCode (MBErrorDomain) is known to mean. The phone's own
/// ErrorDescription is kept beside it.
pub fn device_error_meaning(code: i64) -> &'static str {
    match code {
        1 => "the phone failed (often: it was locked while copying the keychain)",
        4 => "a file the phone needed is missing from the backup",
        100 => "the phone could not upload a file",
        103 => "the phone could not read the previous backup's Status.plist",
        104 => "the phone could not upload several files",
        DEVICE_NO_SPACE => "not enough free space on the backup drive",
        205 => "the previous backup on the drive is unreadable or references missing files",
        _ => "unknown error",
    }
}

/// The phone broke the DeviceLink protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A plist that is not a valid DeviceLink message.
    #[error(transparent)]
    Message(#[from] dl::DlError),
    /// A frame over the size cap or not a plist.
    #[error(transparent)]
    Frame(FrameError),
    /// A malformed raw file stream.
    #[error("{0}")]
    Stream(StreamError),
    /// A message where another was required.
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
}

/// Why a mobilebackup2 session or operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The connection closed or was reset: the phone was unplugged, locked up or cancelled.
    #[error("the phone disconnected")]
    PhoneDisconnected,
    /// The phone sent nothing for the idle limit.
    #[error("the phone sent nothing for {} s", .0.as_secs())]
    Timeout(Duration),
    /// Cancelled on this side (the phone was told with DLMessageDisconnect).
    #[error("the backup was cancelled")]
    Cancelled,
    /// The phone sent DLMessageDisconnect before finishing the operation.
    #[error("the phone ended the session before the operation finished")]
    DeviceDisconnected,
    /// The phone finished the operation with a non-zero ErrorCode.
    #[error("the phone reported {0}")]
    Device(DeviceFailure),
    /// The phone refused Hello (ErrorCode 1 = no common protocol version).
    #[error("the phone refused the protocol handshake (error {code})")]
    HelloRefused { code: i64 },
    /// The phone chose a protocol version this host did not offer.
    #[error("the phone chose protocol version {0}, which this host does not speak")]
    UnsupportedProtocol(f64),
    /// The phone broke the protocol.
    #[error("the phone broke the DeviceLink protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The session was already closed by an earlier failure or cancel.
    #[error("the mobilebackup2 session is closed")]
    Closed,
    /// The caller asked for something impossible.
    #[error("{0}")]
    Usage(&'static str),
    /// A local I/O failure on the connection.
    #[error("i/o error on the mobilebackup2 connection: {0}")]
    Io(#[source] io::Error),
}

impl HostError {
    /// True for failures caused by the phone going away (as opposed to refusing or misbehaving).
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            HostError::PhoneDisconnected | HostError::DeviceDisconnected
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    Cancelled,
    TimedOut,
}

/// The stream plus patience: read timeouts become retries until the idle limit.
struct Conn {
    stream: BoxStream,
    idle_timeout: Duration,
    cancel: Option<Arc<AtomicBool>>,
    last_activity: Instant,
    stop: Option<Stop>,
    /// A byte read while waiting for the next message, handed out first by `read`.
    stash: Option<u8>,
    /// Events from elsewhere (notification_proxy) delivered while the phone is silent.
    side: Option<Receiver<BackupEvent>>,
}

impl Conn {
    fn new(stream: BoxStream, config: &SessionConfig) -> Self {
        // Streams that cannot time out just block; cancel is then noticed between messages.
        let _ = stream.set_read_timeout(Some(config.poll_interval.max(Duration::from_millis(1))));
        Conn {
            stream,
            idle_timeout: config.idle_timeout,
            cancel: config.cancel.clone(),
            last_activity: Instant::now(),
            stop: None,
            stash: None,
            side: None,
        }
    }

    /// Hands pending side events to `events`.
    fn drain_side(&mut self, events: &mut dyn FnMut(BackupEvent)) {
        if let Some(rx) = &self.side {
            while let Ok(ev) = rx.try_recv() {
                events(ev);
            }
        }
    }

    /// Waits for the first byte of the next message, delivering side events (such as the
    /// phone's passcode prompt) at every poll while the phone prepares.
    fn wait_for_message(&mut self, events: &mut dyn FnMut(BackupEvent)) -> Result<(), HostError> {
        if self.stash.is_some() {
            return Ok(());
        }
        let mut b = [0u8; 1];
        loop {
            self.drain_side(events);
            match self.stream.read(&mut b) {
                Ok(0) => return Err(HostError::PhoneDisconnected),
                Ok(_) => {
                    self.stash = Some(b[0]);
                    self.last_activity = Instant::now();
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.check_cancel()?;
                    if self.last_activity.elapsed() >= self.idle_timeout {
                        return Err(HostError::Timeout(self.idle_timeout));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
    }

    fn cancel_requested(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }

    fn check_cancel(&self) -> Result<(), HostError> {
        if self.cancel_requested() {
            Err(HostError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn io_err(&mut self, e: io::Error) -> HostError {
        match self.stop.take() {
            Some(Stop::Cancelled) => return HostError::Cancelled,
            Some(Stop::TimedOut) => return HostError::Timeout(self.idle_timeout),
            None => {}
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected => HostError::PhoneDisconnected,
            _ => HostError::Io(e),
        }
    }

    fn frame_err(&mut self, e: FrameError) -> HostError {
        match e {
            FrameError::Eof => HostError::PhoneDisconnected,
            FrameError::Io(e) => self.io_err(e),
            other => HostError::Protocol(ProtocolError::Frame(other)),
        }
    }

    fn stream_err(&mut self, e: StreamError) -> HostError {
        match e {
            StreamError::Truncated { .. } => HostError::PhoneDisconnected,
            StreamError::Io(e) => self.io_err(e),
            other => HostError::Protocol(ProtocolError::Stream(other)),
        }
    }

    fn read_message(&mut self) -> Result<DeviceMessage, HostError> {
        let value = dl::read_value(self).map_err(|e| self.frame_err(e))?;
        Ok(DeviceMessage::decode(&value).map_err(ProtocolError::from)?)
    }

    fn send(&mut self, msg: &HostMessage) -> Result<(), HostError> {
        msg.write_to(self).map_err(|e| self.io_err(e))?;
        // The phone's silence is measured from our last word.
        self.last_activity = Instant::now();
        Ok(())
    }

    /// Best effort goodbye after a failure: Disconnect, then close both directions.
    fn abandon(&mut self) {
        let _ = HostMessage::Disconnect.write_to(&mut self.stream);
        let _ = self.stream.shutdown();
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let (Some(b), Some(first)) = (self.stash, buf.first_mut()) {
            *first = b;
            self.stash = None;
            return Ok(1);
        }
        loop {
            match self.stream.read(buf) {
                Ok(n) => {
                    self.last_activity = Instant::now();
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.cancel_requested() {
                        self.stop = Some(Stop::Cancelled);
                        return Err(io::Error::other("cancelled"));
                    }
                    if self.last_activity.elapsed() >= self.idle_timeout {
                        self.stop = Some(Stop::TimedOut);
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "phone idle"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

fn unexpected(expected: &'static str, got: &DeviceMessage) -> HostError {
    HostError::Protocol(ProtocolError::Unexpected {
        expected,
        got: got.name().to_string(),
    })
}

/// Handshake state 1: waiting for the phone's version announcement.
#[derive(Debug, Default)]
pub struct ExpectVersionExchange;

/// Handshake state 2: version accepted, waiting for DeviceReady.
#[derive(Debug)]
pub struct ExpectDeviceReady {
    pub device_version: (u64, u64),
}

/// Handshake state 3: Hello sent, waiting for the phone's Response.
#[derive(Debug)]
pub struct ExpectHelloResponse {
    pub device_version: (u64, u64),
}

/// The handshake's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Negotiated {
    /// DeviceLink version the phone announced (major, minor).
    pub device_version: (u64, u64),
    /// The mobilebackup2 protocol version the phone chose (2.0 or 2.1).
    pub protocol_version: f64,
}

impl ExpectVersionExchange {
    /// Accepts any device major (hosts that refuse newer ones break on new iOS) and answers
    /// with [`HOST_DL_VERSION`].
    pub fn handle(
        self,
        msg: DeviceMessage,
        out: &mut Vec<HostMessage>,
    ) -> Result<ExpectDeviceReady, HostError> {
        match msg {
            DeviceMessage::VersionExchange { major, minor } => {
                out.push(HostMessage::VersionsOk {
                    major: HOST_DL_VERSION,
                });
                Ok(ExpectDeviceReady {
                    device_version: (major, minor),
                })
            }
            other => Err(unexpected("DLMessageVersionExchange", &other)),
        }
    }
}

impl ExpectDeviceReady {
    /// On DeviceReady, sends Hello offering [`SUPPORTED_PROTOCOL_VERSIONS`].
    pub fn handle(
        self,
        msg: DeviceMessage,
        out: &mut Vec<HostMessage>,
    ) -> Result<ExpectHelloResponse, HostError> {
        match msg {
            DeviceMessage::DeviceReady => {
                out.push(HostMessage::ProcessMessage(HostRequest::Hello {
                    versions: SUPPORTED_PROTOCOL_VERSIONS.to_vec(),
                }));
                Ok(ExpectHelloResponse {
                    device_version: self.device_version,
                })
            }
            other => Err(unexpected("DLMessageDeviceReady", &other)),
        }
    }
}

impl ExpectHelloResponse {
    /// Checks `MessageName == "Response"`, `ErrorCode == 0` and a protocol version we offered.
    pub fn handle(self, msg: DeviceMessage) -> Result<Negotiated, HostError> {
        let DeviceMessage::ProcessMessage(dict) = &msg else {
            return Err(unexpected("the Hello response", &msg));
        };
        let resp = DeviceResponse::from_dict(dict).map_err(ProtocolError::from)?;
        if resp.message_name.as_deref() != Some("Response") {
            return Err(HostError::Protocol(ProtocolError::Unexpected {
                expected: "MessageName Response",
                got: resp.message_name.unwrap_or_default(),
            }));
        }
        if resp.error_code != 0 {
            return Err(HostError::HelloRefused {
                code: resp.error_code,
            });
        }
        // libplist sends 4-byte reals: 2.1 arrives as 2.0999999…
        let v = resp.protocol_version.unwrap_or(f64::NAN);
        let Some(&chosen) = SUPPORTED_PROTOCOL_VERSIONS
            .iter()
            .find(|s| (**s - v).abs() < 1e-3)
        else {
            return Err(HostError::UnsupportedProtocol(v));
        };
        Ok(Negotiated {
            device_version: self.device_version,
            protocol_version: chosen,
        })
    }
}

/// Options for [`Mb2Session::backup`].
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Ask the phone for a full backup even when a previous one exists.
    pub force_full: bool,
    /// Back up from another device's data (idevicebackup2 `-s`); normally the same UDID.
    pub source_udid: Option<String>,
}

/// What an operation transferred.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransferSummary {
    pub files_received: u64,
    pub bytes_received: u64,
    pub files_sent: u64,
    /// Files the phone announced but could not send.
    pub files_failed_on_phone: u64,
    /// Files or operations this side could not perform (each was reported to the phone).
    pub local_failures: u64,
}

/// A finished operation: the phone's final response and the transfer figures.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationOutcome {
    pub response: DeviceResponse,
    pub summary: TransferSummary,
}

/// A negotiated mobilebackup2 connection, ready for operations.
pub struct Mb2Session {
    conn: Conn,
    negotiated: Negotiated,
    closed: bool,
}

impl std::fmt::Debug for Mb2Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mb2Session")
            .field("negotiated", &self.negotiated)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Mb2Session {
    /// Runs the DeviceLink version exchange and Hello on a fresh mobilebackup2 stream.
    pub fn handshake(stream: BoxStream, config: SessionConfig) -> Result<Self, HostError> {
        let mut conn = Conn::new(stream, &config);
        let res = Self::drive_handshake(&mut conn);
        match res {
            Ok(negotiated) => Ok(Mb2Session {
                conn,
                negotiated,
                closed: false,
            }),
            Err(e) => {
                conn.abandon();
                Err(e)
            }
        }
    }

    fn drive_handshake(conn: &mut Conn) -> Result<Negotiated, HostError> {
        let mut out = Vec::new();
        let flush = |conn: &mut Conn, out: &mut Vec<HostMessage>| -> Result<(), HostError> {
            for m in out.drain(..) {
                conn.send(&m)?;
            }
            Ok(())
        };
        conn.check_cancel()?;
        let s = ExpectVersionExchange.handle(conn.read_message()?, &mut out)?;
        flush(conn, &mut out)?;
        let s = s.handle(conn.read_message()?, &mut out)?;
        flush(conn, &mut out)?;
        s.handle(conn.read_message()?)
    }

    /// Delivers events from another source (the notification_proxy observer) through the
    /// operation's `events` callback, including while the phone is silent.
    pub fn set_side_events(&mut self, rx: Receiver<BackupEvent>) {
        self.conn.side = Some(rx);
    }

    /// Hands side events still queued to `events` (call after the source has stopped, so
    /// nothing it sent is lost).
    pub fn deliver_side_events(&mut self, events: &mut dyn FnMut(BackupEvent)) {
        self.conn.drain_side(events);
    }

    /// What the handshake agreed on.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Asks for a backup of `udid` and answers the phone until it finishes. Success means the
    /// phone's final ErrorCode was 0; the caller still checks Status.plist (§4.8). The session
    /// stays open afterwards (send [`disconnect`](Self::disconnect) when done), except after
    /// a cancel or a lost connection.
    pub fn backup(
        &mut self,
        target: &mut dyn BackupTarget,
        udid: &str,
        opts: &BackupOptions,
        events: &mut dyn FnMut(BackupEvent),
    ) -> Result<TransferSummary, HostError> {
        let req = HostRequest::Backup {
            target_identifier: udid.to_string(),
            source_identifier: Some(opts.source_udid.clone().unwrap_or_else(|| udid.to_string())),
            force_full_backup: opts.force_full,
        };
        let outcome = self.request(req, target, events)?;
        check_response(&outcome.response)?;
        Ok(outcome.summary)
    }

    /// Turns backup encryption on (`new` only), off (`old` only) or changes the password (both).
    /// The phone asks for its passcode; [`BackupEvent::PasscodeRequested`] is emitted once the
    /// request is sent.
    pub fn change_password(
        &mut self,
        udid: &str,
        old: Option<&Password>,
        new: Option<&Password>,
        events: &mut dyn FnMut(BackupEvent),
    ) -> Result<(), HostError> {
        if old.is_none() && new.is_none() {
            return Err(HostError::Usage(
                "ChangePassword needs an old password, a new one, or both",
            ));
        }
        for pw in [old, new].into_iter().flatten() {
            if pw.expose_str().is_err() {
                return Err(HostError::Usage("the backup password must be valid UTF-8"));
            }
        }
        let req = HostRequest::ChangePassword {
            target_identifier: udid.to_string(),
            old_password: old.cloned(),
            new_password: new.cloned(),
        };
        let mut no_files = NoFilesTarget;
        let outcome = self.request(req, &mut no_files, events)?;
        check_response(&outcome.response)
    }

    /// Sends any request and runs the DL loop until the phone's final ProcessMessage, which is
    /// returned whatever its ErrorCode (Info and List results are in `response.content`).
    pub fn request(
        &mut self,
        req: HostRequest,
        target: &mut dyn BackupTarget,
        events: &mut dyn FnMut(BackupEvent),
    ) -> Result<OperationOutcome, HostError> {
        if self.closed {
            return Err(HostError::Closed);
        }
        let passcode = matches!(req, HostRequest::ChangePassword { .. });
        let res = self
            .conn
            .send(&HostMessage::ProcessMessage(req))
            .and_then(|()| {
                events(BackupEvent::Phase(Phase::WaitingForPhone));
                if passcode {
                    events(BackupEvent::PasscodeRequested);
                }
                let mut run = Run {
                    target,
                    events,
                    progress: Progress::default(),
                    summary: TransferSummary::default(),
                    transferring: false,
                    last_progress_bytes: 0,
                };
                let response = run.dl_loop(&mut self.conn);
                self.conn.drain_side(run.events);
                let response = response?;
                Ok(OperationOutcome {
                    response,
                    summary: run.summary,
                })
            });
        if let Err(e) = &res {
            // After any of these the stream is unusable (desynchronised or gone).
            if !matches!(e, HostError::Device(_)) {
                self.conn.abandon();
                self.closed = true;
            }
        }
        res
    }

    /// Says goodbye (DLMessageDisconnect) and closes the connection.
    pub fn disconnect(mut self) -> Result<(), HostError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let res = self.conn.send(&HostMessage::Disconnect);
        let _ = self.conn.stream.shutdown();
        res
    }
}

fn check_response(resp: &DeviceResponse) -> Result<(), HostError> {
    if resp.error_code == 0 {
        return Ok(());
    }
    Err(HostError::Device(DeviceFailure {
        code: resp.error_code,
        meaning: device_error_meaning(resp.error_code),
        description: resp.error_description.clone(),
    }))
}

/// One operation's DL loop state.
struct Run<'a> {
    target: &'a mut dyn BackupTarget,
    events: &'a mut dyn FnMut(BackupEvent),
    progress: Progress,
    summary: TransferSummary,
    transferring: bool,
    last_progress_bytes: u64,
}

fn describe(e: &TargetError) -> String {
    e.to_string()
}

impl Run<'_> {
    fn emit_progress(&mut self) {
        self.last_progress_bytes = self.progress.bytes_received;
        (self.events)(BackupEvent::Progress(self.progress.clone()));
    }

    fn dl_loop(&mut self, conn: &mut Conn) -> Result<DeviceResponse, HostError> {
        loop {
            conn.check_cancel()?;
            conn.wait_for_message(self.events)?;
            let msg = conn.read_message()?;
            if !self.transferring && !matches!(msg, DeviceMessage::ProcessMessage(_)) {
                self.transferring = true;
                (self.events)(BackupEvent::Phase(Phase::Transferring));
            }
            if let Some(p) = msg.progress() {
                self.progress.percent = Some(p.clamp(0.0, 100.0));
                self.emit_progress();
            }
            let reply = match msg {
                DeviceMessage::ProcessMessage(d) => {
                    return Ok(DeviceResponse::from_dict(&d).map_err(ProtocolError::from)?)
                }
                DeviceMessage::Disconnect => return Err(HostError::DeviceDisconnected),
                DeviceMessage::DownloadFiles { paths, .. } => self.send_files(conn, &paths)?,
                DeviceMessage::UploadFiles { total_bytes, .. } => {
                    if total_bytes.is_some_and(|t| t > 0) {
                        self.progress.bytes_expected = total_bytes;
                    }
                    self.receive_files(conn)?
                }
                DeviceMessage::GetFreeDiskSpace => match self.target.free_space() {
                    Ok(n) => StatusResponse::ok(Value::Integer(n.into())),
                    Err(e) => StatusResponse {
                        code: -1,
                        message: Some(describe(&e)),
                        payload: Some(Value::Integer(0.into())),
                    },
                },
                DeviceMessage::ContentsOfDirectory { path } => self.list(&path),
                DeviceMessage::CreateDirectory { path, .. } => {
                    // libimobiledevice answers with the placeholder string, not a dictionary.
                    match target::validate(&path).and_then(|p| self.target.create_dir_all(&p)) {
                        Ok(()) => StatusResponse {
                            code: 0,
                            message: None,
                            payload: None,
                        },
                        Err(e) => self.failure(&e, None),
                    }
                }
                DeviceMessage::MoveItems { moves, .. } | DeviceMessage::MoveFiles { moves, .. } => {
                    self.moves(&moves)
                }
                DeviceMessage::RemoveItems { paths, .. }
                | DeviceMessage::RemoveFiles { paths, .. } => self.removes(&paths),
                DeviceMessage::CopyItem { src, dst } => {
                    let res = target::validate(&src).and_then(|s| {
                        let d = target::validate(&dst)?;
                        self.target.copy_item(&s, &d)
                    });
                    match res {
                        Ok(()) => StatusResponse::ok_empty_dict(),
                        Err(e) => self.failure(&e, Some(Value::Dictionary(Dictionary::new()))),
                    }
                }
                // Never leave the phone waiting: libimobiledevice 1.3.0 hangs here.
                DeviceMessage::PurgeDiskSpace => {
                    StatusResponse::error(-1, "Operation not supported")
                }
                other @ (DeviceMessage::VersionExchange { .. }
                | DeviceMessage::DeviceReady
                | DeviceMessage::Unknown { .. }) => StatusResponse::error(
                    -1,
                    format!("Unsupported DeviceLink message {}", other.name()),
                ),
            };
            conn.send(&HostMessage::StatusResponse(reply))?;
        }
    }

    fn failure(&mut self, e: &TargetError, payload: Option<Value>) -> StatusResponse {
        self.summary.local_failures += 1;
        StatusResponse {
            code: e.dl_code(),
            message: Some(describe(e)),
            payload,
        }
    }

    fn list(&mut self, path: &str) -> StatusResponse {
        match target::validate(path).and_then(|p| self.target.list_dir(&p)) {
            Ok(entries) => StatusResponse::ok(Value::Dictionary(listing(&entries))),
            // libimobiledevice answers a missing directory with an empty listing.
            Err(e) if e.is_not_found() => StatusResponse::ok_empty_dict(),
            Err(e) => self.failure(&e, Some(Value::Dictionary(Dictionary::new()))),
        }
    }

    /// Renames in order, stopping at the first failure (as libimobiledevice does).
    fn moves(&mut self, moves: &[(String, String)]) -> StatusResponse {
        for (src, dst) in moves {
            let res = target::validate(src).and_then(|s| {
                let d = target::validate(dst)?;
                self.target.move_item(&s, &d)
            });
            if let Err(e) = res {
                return self.failure(&e, Some(Value::Dictionary(Dictionary::new())));
            }
        }
        StatusResponse::ok_empty_dict()
    }

    /// Removes every path it can; reports the first failure.
    fn removes(&mut self, paths: &[String]) -> StatusResponse {
        let mut first: Option<StatusResponse> = None;
        for p in paths {
            if let Err(e) = target::validate(p).and_then(|bp| self.target.remove(&bp)) {
                let st = self.failure(&e, Some(Value::Dictionary(Dictionary::new())));
                first.get_or_insert(st);
            }
        }
        first.unwrap_or_else(StatusResponse::ok_empty_dict)
    }

    /// DownloadFiles: one stream entry per path (all of them, unlike libimobiledevice which stops
    /// at the first failure), the terminator, then 0 or −13 with the per-file errors.
    fn send_files(
        &mut self,
        conn: &mut Conn,
        paths: &[String],
    ) -> Result<StatusResponse, HostError> {
        let mut failures = Dictionary::new();
        let mut buf = vec![0u8; SEND_BUFFER_LEN];
        let mut w = FileStreamWriter::new(&mut *conn, StreamKind::Download);
        for path in paths {
            if path.is_empty() {
                // Sending it would read as the terminator; report it instead.
                let e = TargetError::invalid(path, target::PathError::Empty);
                failures.insert(
                    path.clone(),
                    StatusResponse::file_error(e.dl_code(), &describe(&e)),
                );
                self.summary.local_failures += 1;
                continue;
            }
            let header = FileHeader {
                device_path: None,
                path: path.clone(),
            };
            let sent = w.begin_file(&header).and_then(|()| {
                let mut reader =
                    match target::validate(path).and_then(|p| self.target.open_read(&p)) {
                        Ok(r) => r,
                        Err(e) => return Ok(Err(e)),
                    };
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let bp =
                                BackupPath::parse(path).map_err(|r| TargetError::invalid(path, r));
                            return Ok(Err(match bp {
                                Ok(bp) => TargetError::io(&bp, e),
                                Err(v) => v,
                            }));
                        }
                    };
                    w.write_data(&buf[..n])?;
                }
                w.finish_file()?;
                Ok(Ok(()))
            });
            match sent {
                Err(io) => {
                    drop(w);
                    return Err(conn.io_err(io));
                }
                Ok(Ok(())) => self.summary.files_sent += 1,
                Ok(Err(e)) => {
                    if let Err(io) = w.fail_file(&describe(&e)) {
                        drop(w);
                        return Err(conn.io_err(io));
                    }
                    failures.insert(
                        path.clone(),
                        StatusResponse::file_error(e.dl_code(), &describe(&e)),
                    );
                    self.summary.local_failures += 1;
                }
            }
        }
        if let Err(io) = w.finish() {
            drop(w);
            return Err(conn.io_err(io));
        }
        Ok(if failures.is_empty() {
            StatusResponse::ok_empty_dict()
        } else {
            StatusResponse::multi_status(failures)
        })
    }

    /// UploadFiles: receive every file of the stream into the target.
    fn receive_files(&mut self, conn: &mut Conn) -> Result<StatusResponse, HostError> {
        let mut failures = Dictionary::new();
        let mut buf = vec![0u8; RECEIVE_BUFFER_LEN];
        let mut rd = FileStreamReader::new(&mut *conn, StreamKind::Upload);
        loop {
            match rd.next(&mut buf) {
                Err(e) => return Err(rd.get_mut().stream_err(e)),
                Ok(StreamEvent::End) => break,
                Ok(StreamEvent::File(h)) => {
                    rd.get_mut().check_cancel()?;
                    self.receive_one(&mut rd, &mut buf, h.path, &mut failures)?;
                }
                // The reader yields data and file ends only inside a file.
                Ok(other) => {
                    return Err(HostError::Protocol(ProtocolError::Unexpected {
                        expected: "a file header",
                        got: format!("{other:?}"),
                    }))
                }
            }
        }
        self.progress.current_file = None;
        self.emit_progress();
        Ok(if failures.is_empty() {
            StatusResponse::ok_empty_dict()
        } else {
            StatusResponse::multi_status(failures)
        })
    }

    fn receive_one(
        &mut self,
        rd: &mut FileStreamReader<&mut Conn>,
        buf: &mut [u8],
        path: String,
        failures: &mut Dictionary,
    ) -> Result<(), HostError> {
        self.progress.current_file = Some(path.clone());
        self.emit_progress();
        // Split the borrows: the sink holds the target while progress and events move on.
        let Run {
            target,
            events,
            progress,
            summary,
            last_progress_bytes,
            ..
        } = self;
        let mut refuse = |events: &mut dyn FnMut(BackupEvent),
                          summary: &mut TransferSummary,
                          e: &TargetError| {
            summary.local_failures += 1;
            failures.insert(
                path.clone(),
                StatusResponse::file_error(e.dl_code(), &describe(e)),
            );
            events(BackupEvent::FileRefused {
                path: path.clone(),
                reason: describe(e),
            });
        };
        let mut sink = match target::validate(&path).and_then(|p| target.create_file(&p)) {
            Ok(s) => Some(s),
            Err(e) => {
                refuse(*events, summary, &e);
                None
            }
        };
        let mut size = 0u64;
        loop {
            let ev = match rd.next(buf) {
                Ok(ev) => ev,
                Err(e) => {
                    if let Some(s) = sink.take() {
                        s.abort();
                    }
                    return Err(rd.get_mut().stream_err(e));
                }
            };
            match ev {
                StreamEvent::Data(n) => {
                    let chunk = buf.get(..n).unwrap_or_default();
                    size += n as u64;
                    progress.bytes_received += n as u64;
                    summary.bytes_received += n as u64;
                    if let Some(s) = sink.as_mut() {
                        if let Err(e) = s.write_all(chunk) {
                            if let Some(s) = sink.take() {
                                s.abort();
                            }
                            let e = match BackupPath::parse(&path) {
                                Ok(bp) => TargetError::io(&bp, e),
                                Err(r) => TargetError::invalid(&path, r),
                            };
                            refuse(*events, summary, &e);
                        }
                    }
                    if progress.bytes_received - *last_progress_bytes >= PROGRESS_EVERY_BYTES {
                        *last_progress_bytes = progress.bytes_received;
                        events(BackupEvent::Progress(progress.clone()));
                    }
                }
                StreamEvent::FileDone => {
                    if let Some(s) = sink.take() {
                        match s.commit() {
                            Ok(()) => {
                                summary.files_received += 1;
                                progress.files_received += 1;
                                events(BackupEvent::FileReceived {
                                    path: path.clone(),
                                    size,
                                });
                            }
                            Err(e) => refuse(*events, summary, &e),
                        }
                    }
                    return Ok(());
                }
                StreamEvent::FileFailed { message, .. } => {
                    // The phone gave up on this file: what arrived is incomplete, keep nothing.
                    if let Some(s) = sink.take() {
                        s.abort();
                    }
                    summary.files_failed_on_phone += 1;
                    events(BackupEvent::FileFailedOnPhone {
                        path: path.clone(),
                        message,
                    });
                    return Ok(());
                }
                StreamEvent::File(_) | StreamEvent::End => {
                    if let Some(s) = sink.take() {
                        s.abort();
                    }
                    return Err(HostError::Protocol(ProtocolError::Unexpected {
                        expected: "file data or a file end",
                        got: format!("{ev:?}"),
                    }));
                }
            }
        }
    }
}

/// A ContentsOfDirectory answer: `{name: {DLFileType, DLFileSize, DLFileModificationDate}}`.
fn listing(entries: &[DirEntry]) -> Dictionary {
    let mut d = Dictionary::new();
    for e in entries {
        let mut f = Dictionary::new();
        let t = match e.meta.kind {
            EntryKind::Directory => "DLFileTypeDirectory",
            EntryKind::File => "DLFileTypeRegular",
            EntryKind::Other => "DLFileTypeUnknown",
        };
        f.insert("DLFileType".into(), Value::String(t.into()));
        f.insert("DLFileSize".into(), Value::Integer(e.meta.size.into()));
        f.insert(
            "DLFileModificationDate".into(),
            Value::Date(e.meta.modified.into()),
        );
        d.insert(e.name.clone(), Value::Dictionary(f));
    }
    d
}

/// The target used by operations that should not touch files (ChangePassword).
struct NoFilesTarget;

impl NoFilesTarget {
    fn no(path: &BackupPath, what: &'static str) -> TargetError {
        TargetError::Unsupported {
            path: path.to_string(),
            what,
        }
    }
}

impl BackupTarget for NoFilesTarget {
    fn open_read(&mut self, path: &BackupPath) -> Result<Box<dyn Read + '_>, TargetError> {
        Err(Self::no(path, "reading"))
    }
    fn create_file(
        &mut self,
        path: &BackupPath,
    ) -> Result<Box<dyn target::UploadSink + '_>, TargetError> {
        Err(Self::no(path, "writing"))
    }
    fn create_dir_all(&mut self, path: &BackupPath) -> Result<(), TargetError> {
        Err(Self::no(path, "creating directories"))
    }
    fn move_item(&mut self, src: &BackupPath, _dst: &BackupPath) -> Result<(), TargetError> {
        Err(Self::no(src, "moving"))
    }
    fn remove(&mut self, path: &BackupPath) -> Result<(), TargetError> {
        Err(Self::no(path, "removing"))
    }
    fn copy_item(&mut self, src: &BackupPath, _dst: &BackupPath) -> Result<(), TargetError> {
        Err(Self::no(src, "copying"))
    }
    fn list_dir(&mut self, path: &BackupPath) -> Result<Vec<DirEntry>, TargetError> {
        Err(Self::no(path, "listing"))
    }
    fn stat(&mut self, _path: &BackupPath) -> Result<Option<EntryMeta>, TargetError> {
        Ok(None)
    }
    fn free_space(&mut self) -> Result<u64, TargetError> {
        Err(TargetError::Unsupported {
            path: ".".into(),
            what: "free space",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_states() {
        let mut out = Vec::new();
        let s = ExpectVersionExchange
            .handle(
                DeviceMessage::VersionExchange {
                    major: 500,
                    minor: 7,
                },
                &mut out,
            )
            .unwrap();
        assert_eq!(out, vec![HostMessage::VersionsOk { major: 400 }]);
        out.clear();
        let s = s.handle(DeviceMessage::DeviceReady, &mut out).unwrap();
        assert!(matches!(
            &out[..],
            [HostMessage::ProcessMessage(HostRequest::Hello { .. })]
        ));
        let mut resp = DeviceResponse::new(0);
        resp.protocol_version = Some(f64::from(2.1f32));
        let n = s
            .handle(DeviceMessage::ProcessMessage(resp.to_dict()))
            .unwrap();
        assert_eq!(n.protocol_version, 2.1);
        assert_eq!(n.device_version, (500, 7));
    }

    #[test]
    fn handshake_rejects_wrong_order_and_refusal() {
        let mut out = Vec::new();
        assert!(matches!(
            ExpectVersionExchange.handle(DeviceMessage::DeviceReady, &mut out),
            Err(HostError::Protocol(ProtocolError::Unexpected { .. }))
        ));
        let s = ExpectHelloResponse {
            device_version: (300, 0),
        };
        assert!(matches!(
            s.handle(DeviceMessage::ProcessMessage(
                DeviceResponse::new(1).to_dict()
            )),
            Err(HostError::HelloRefused { code: 1 })
        ));
        let mut r = DeviceResponse::new(0);
        r.protocol_version = Some(3.0);
        let s = ExpectHelloResponse {
            device_version: (300, 0),
        };
        assert!(matches!(
            s.handle(DeviceMessage::ProcessMessage(r.to_dict())),
            Err(HostError::UnsupportedProtocol(_))
        ));
    }

    /// A stream whose reads follow a script: bytes, or a timeout.
    struct Scripted {
        reads: std::collections::VecDeque<Option<Vec<u8>>>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.reads.pop_front() {
                Some(Some(mut bytes)) => {
                    let n = bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    if n < bytes.len() {
                        self.reads.push_front(Some(bytes.split_off(n)));
                    }
                    Ok(n)
                }
                Some(None) => Err(io::Error::new(io::ErrorKind::WouldBlock, "timeout")),
                // Past the script: keep timing out.
                None => Err(io::Error::new(io::ErrorKind::TimedOut, "timeout")),
            }
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl crate::transport::Duplex for Scripted {}

    fn scripted(reads: Vec<Option<Vec<u8>>>, config: &SessionConfig) -> Conn {
        Conn::new(
            Box::new(Scripted {
                reads: reads.into(),
            }),
            config,
        )
    }

    #[test]
    fn timeouts_inside_a_frame_are_waited_out() {
        let mut frame = Vec::new();
        DeviceMessage::DeviceReady.encode(&mut frame);
        let (a, b) = frame.split_at(2);
        let mut conn = scripted(
            vec![None, Some(a.to_vec()), None, None, Some(b.to_vec())],
            &SessionConfig::default(),
        );
        assert_eq!(conn.read_message().unwrap(), DeviceMessage::DeviceReady);
    }

    #[test]
    fn idle_limit_and_cancel_end_the_wait() {
        let cfg = SessionConfig {
            idle_timeout: Duration::ZERO,
            ..SessionConfig::default()
        };
        let mut conn = scripted(vec![None], &cfg);
        assert!(matches!(conn.read_message(), Err(HostError::Timeout(_))));
        let cancel = Arc::new(AtomicBool::new(true));
        let cfg = SessionConfig {
            cancel: Some(cancel),
            ..SessionConfig::default()
        };
        let mut conn = scripted(vec![None], &cfg);
        assert!(matches!(conn.read_message(), Err(HostError::Cancelled)));
    }

    #[test]
    fn eof_is_a_disconnect() {
        // Two bytes of a length, then EOF (a read of 0 bytes).
        let mut conn = scripted(
            vec![Some(vec![0, 0]), Some(Vec::new())],
            &SessionConfig::default(),
        );
        assert!(matches!(
            conn.read_message(),
            Err(HostError::PhoneDisconnected)
        ));
    }

    #[test]
    fn error_meanings() {
        assert_eq!(
            device_error_meaning(105),
            "not enough free space on the backup drive"
        );
        assert_eq!(device_error_meaning(9999), "unknown error");
        let f = DeviceFailure {
            code: 205,
            meaning: device_error_meaning(205),
            description: Some("Manifest references files not in backup".into()),
        };
        assert!(f.to_string().contains("205"));
        assert!(f.to_string().contains("Manifest references"));
    }
}
