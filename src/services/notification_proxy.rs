//! notification_proxy, host side: observe and post Darwin notifications on the device, receive
//! the ones it relays (cancel requests, passcode prompts), and shut the proxy down cleanly.
//!
//! Messages are `u32be + plist` dicts: host → `{Command:"ObserveNotification"|"PostNotification",
//! Name}` or `{Command:"Shutdown"}`; device → `{Command:"RelayNotification", Name}` or
//! `{Command:"ProxyDeath"}` (the answer to Shutdown, after which the device closes).

use super::afc::PostNotification;
use super::{dict_str, FrameReader, Polled};
use crate::plist_frame::{write_frame, FrameError, PlistFormat};
use crate::transport::BoxStream;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Posted by the host before it takes the sync lock.
pub const SYNC_WILL_START: &str = "com.apple.itunes-mobdev.syncWillStart";
/// Posted by the host after opening the lock file, before locking it.
pub const SYNC_LOCK_REQUEST: &str = "com.apple.itunes-mobdev.syncLockRequest";
/// Posted by the host once it holds the sync lock.
pub const SYNC_DID_START: &str = "com.apple.itunes-mobdev.syncDidStart";
/// Posted by the host after releasing the sync lock.
pub const SYNC_DID_FINISH: &str = "com.apple.itunes-mobdev.syncDidFinish";
/// Relayed by the device when the user cancels the sync on the phone.
pub const SYNC_CANCEL_REQUEST: &str = "com.apple.itunes-client.syncCancelRequest";
/// Relayed by the device to pause a sync.
pub const SYNC_SUSPEND_REQUEST: &str = "com.apple.itunes-client.syncSuspendRequest";
/// Relayed by the device to resume a paused sync.
pub const SYNC_RESUME_REQUEST: &str = "com.apple.itunes-client.syncResumeRequest";
/// Relayed by the device when backup settings (e.g. encryption) change.
pub const BACKUP_DOMAIN_CHANGED: &str = "com.apple.mobile.backup.domain_changed";
/// Relayed by iOS ≥ 16.1 when it shows the passcode prompt for a backup.
pub const LOCAL_AUTH_UI_PRESENTED: &str = "com.apple.LocalAuthentication.ui.presented";
/// Relayed when the passcode prompt goes away.
pub const LOCAL_AUTH_UI_DISMISSED: &str = "com.apple.LocalAuthentication.ui.dismissed";

/// What a backup host observes (pymobiledevice3's six; libimobiledevice observes the first four).
pub const BACKUP_OBSERVED: [&str; 6] = [
    SYNC_CANCEL_REQUEST,
    SYNC_SUSPEND_REQUEST,
    SYNC_RESUME_REQUEST,
    BACKUP_DOMAIN_CHANGED,
    LOCAL_AUTH_UI_PRESENTED,
    LOCAL_AUTH_UI_DISMISSED,
];

/// Largest notification_proxy frame accepted; its messages are a few hundred bytes.
pub const MAX_NP_FRAME_LEN: u32 = 64 * 1024;
/// Longest notification name sent or accepted.
pub const MAX_NOTIFICATION_NAME_LEN: usize = 1024;
/// Most messages skipped while waiting for ProxyDeath after Shutdown.
pub const MAX_FRAMES_BEFORE_PROXY_DEATH: usize = 1024;
/// How long [`NotificationProxyClient::shutdown`] waits for ProxyDeath by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a [`NotificationWatcher`] thread checks whether it should stop.
pub const WATCHER_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Errors of the host notification_proxy client.
#[derive(Debug, thiserror::Error)]
pub enum NpError {
    /// The name cannot be sent (empty, too long, or containing NUL). A local fault.
    #[error("notification name {0:?} cannot be sent")]
    InvalidName(String),
    /// The device sent something other than a notification_proxy message.
    #[error("notification_proxy: unexpected message from the device: {0}")]
    UnexpectedMessage(String),
    /// The device ended the proxy (ProxyDeath) without being asked.
    #[error("notification_proxy: the device ended the proxy")]
    ProxyDied,
    /// The device did not answer Shutdown with ProxyDeath in time.
    #[error("notification_proxy: no ProxyDeath after Shutdown")]
    NoProxyDeath,
    /// A frame could not be read (too long, not a plist, connection closed, i/o).
    #[error("notification_proxy: {0}")]
    Frame(#[from] FrameError),
}

impl From<io::Error> for NpError {
    fn from(e: io::Error) -> Self {
        Self::Frame(FrameError::Io(e))
    }
}

/// One message from the device.
enum Incoming {
    Relay(String),
    ProxyDeath,
}

fn check_name(name: &str) -> Result<(), NpError> {
    if name.is_empty() || name.len() > MAX_NOTIFICATION_NAME_LEN || name.contains('\0') {
        return Err(NpError::InvalidName(name.chars().take(64).collect()));
    }
    Ok(())
}

/// The host side of one notification_proxy connection.
pub struct NotificationProxyClient {
    stream: BoxStream,
    reader: FrameReader,
}

impl NotificationProxyClient {
    /// A client over a started `com.apple.mobile.notification_proxy` connection.
    pub fn new(stream: BoxStream) -> Self {
        Self {
            stream,
            reader: FrameReader::new(MAX_NP_FRAME_LEN),
        }
    }

    fn send(&mut self, command: &str, name: Option<&str>) -> Result<(), NpError> {
        let mut d = plist::Dictionary::new();
        d.insert("Command".into(), command.into());
        if let Some(n) = name {
            d.insert("Name".into(), n.into());
        }
        write_frame(
            &mut self.stream,
            &plist::Value::Dictionary(d),
            PlistFormat::Xml,
        )?;
        Ok(())
    }

    /// Asks the device to relay `name` to this connection when it is posted.
    pub fn observe(&mut self, name: &str) -> Result<(), NpError> {
        check_name(name)?;
        self.send("ObserveNotification", Some(name))
    }

    /// Posts `name` on the device. The device does not answer.
    pub fn post(&mut self, name: &str) -> Result<(), NpError> {
        check_name(name)?;
        self.send("PostNotification", Some(name))
    }

    /// Reads one message, waiting at most until `deadline`. `Ok(None)` on timeout.
    fn next_message(&mut self, deadline: Instant) -> Result<Option<Incoming>, NpError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let v = match self.reader.poll(&mut self.stream)? {
                Polled::Frame(v) => v,
                Polled::TimedOut => continue,
            };
            match dict_str(&v, "Command") {
                Some("RelayNotification") => match dict_str(&v, "Name") {
                    Some(n) if n.len() <= MAX_NOTIFICATION_NAME_LEN => {
                        return Ok(Some(Incoming::Relay(n.to_string())))
                    }
                    _ => {
                        return Err(NpError::UnexpectedMessage(
                            "RelayNotification without a valid Name".into(),
                        ))
                    }
                },
                Some("ProxyDeath") => return Ok(Some(Incoming::ProxyDeath)),
                Some(other) => {
                    return Err(NpError::UnexpectedMessage(format!(
                        "Command {:?}",
                        other.chars().take(64).collect::<String>()
                    )))
                }
                None => return Err(NpError::UnexpectedMessage("no Command".into())),
            }
        }
    }

    /// The next notification the device relays, or `None` if none arrives within `timeout`.
    /// Needs a stream that honours read timeouts; others block until a message arrives.
    pub fn next_notification(&mut self, timeout: Duration) -> Result<Option<String>, NpError> {
        let deadline = Instant::now() + timeout.max(Duration::from_millis(1));
        match self.next_message(deadline)? {
            Some(Incoming::Relay(n)) => Ok(Some(n)),
            Some(Incoming::ProxyDeath) => Err(NpError::ProxyDied),
            None => Ok(None),
        }
    }

    /// Sends Shutdown and waits up to `timeout` for ProxyDeath, skipping relays still in flight.
    pub fn shutdown(mut self, timeout: Duration) -> Result<(), NpError> {
        self.send("Shutdown", None)?;
        let deadline = Instant::now() + timeout.max(Duration::from_millis(1));
        for _ in 0..MAX_FRAMES_BEFORE_PROXY_DEATH {
            match self.next_message(deadline) {
                Ok(Some(Incoming::ProxyDeath)) => return Ok(()),
                Ok(Some(Incoming::Relay(n))) => {
                    tracing::debug!(name = %n, "notification dropped during shutdown")
                }
                Ok(None) | Err(NpError::Frame(FrameError::Eof)) => {
                    return Err(NpError::NoProxyDeath)
                }
                Err(e) => return Err(e),
            }
        }
        Err(NpError::NoProxyDeath)
    }
}

/// A thread that forwards the notifications one connection observes (cancel requests,
/// passcode prompts) while a backup runs. See [`NotificationProxyClient::spawn_watcher`].
pub struct NotificationWatcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), NpError>>,
}

impl NotificationWatcher {
    /// Stops the thread, which then shuts the proxy down (Shutdown → ProxyDeath); returns the
    /// first error the thread met.
    pub fn stop(self) -> Result<(), NpError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(NpError::UnexpectedMessage(
                "the watcher thread panicked".into(),
            )),
        }
    }
}

impl NotificationProxyClient {
    /// Observes `names`, then hands every relayed notification to `on_relay` from a thread until
    /// [`NotificationWatcher::stop`]. Needs a stream that honours read timeouts.
    pub fn spawn_watcher(
        mut self,
        names: &[&str],
        mut on_relay: impl FnMut(String) + Send + 'static,
    ) -> Result<NotificationWatcher, NpError> {
        for n in names {
            self.observe(n)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("np-watcher".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match self.next_notification(WATCHER_POLL_INTERVAL) {
                        Ok(Some(n)) => on_relay(n),
                        Ok(None) => {}
                        Err(e) => return Err(e),
                    }
                }
                self.shutdown(DEFAULT_SHUTDOWN_TIMEOUT)
            })?;
        Ok(NotificationWatcher { stop, thread })
    }
}

impl PostNotification for NotificationProxyClient {
    fn post_notification(&mut self, name: &str) -> Result<(), NpError> {
        self.post(name)
    }
}
