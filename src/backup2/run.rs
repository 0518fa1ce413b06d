//! A whole backup of an attached phone (protocol.md §6.2/§6.3): lockdown, notifications, sync
//! lock, Info.plist, the mobilebackup2 operation, the Status.plist check, then the goodbyes.

use super::host::{
    BackupEvent, BackupOptions, HostError, Mb2Session, Phase, SessionConfig, TransferSummary,
};
use super::target::{BackupPath, BackupTarget, TargetError};
use crate::ios_backup::plists::{InfoPlist, InfoPlistParams, DEFAULT_ITUNES_VERSION};
use crate::lockdown::{self, HostIdentity, LockdownSession, PairStore, SessionOptions};
use crate::services::afc::{
    AfcClient, PostNotification, SyncLock, SyncLockError, SyncLockPolicy, IBOOKS_DATA2_PATH,
    ITUNES_CONTROL_DIR, ITUNES_FILES,
};
use crate::services::installation_proxy::{InstallationProxyClient, BACKUP_APP_ATTRIBUTES};
use crate::services::notification_proxy::{
    NotificationProxyClient, NpError, BACKUP_OBSERVED, DEFAULT_SHUTDOWN_TIMEOUT,
    SYNC_CANCEL_REQUEST,
};
use crate::services::springboard::SpringboardClient;
use crate::services::{
    AFC_SERVICE, INSTALLATION_PROXY_SERVICE, NOTIFICATION_PROXY_SERVICE, SPRINGBOARD_SERVICE,
};
use crate::transport::{BoxStream, DeviceConnector};
use plist::{Dictionary, Value};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::SystemTime;

/// Lockdown name of the backup service.
pub const MOBILEBACKUP2_SERVICE: &str = "com.apple.mobilebackup2";

/// Largest Status.plist read back for the final check (real ones are ~200 bytes).
pub const MAX_STATUS_PLIST_LEN: u64 = 1024 * 1024;

/// Largest file read from the phone's media partition for Info.plist (`iTunes Files`, iBooks).
pub const MAX_INFO_FILE_LEN: u64 = 16 * 1024 * 1024;

/// What a relayed notification means for the display; `None` for names of no interest.
pub fn notification_event(name: &str) -> Option<BackupEvent> {
    use crate::services::notification_proxy::*;
    Some(match name {
        SYNC_CANCEL_REQUEST => BackupEvent::CancelRequestedOnPhone,
        SYNC_SUSPEND_REQUEST => BackupEvent::SuspendRequestedOnPhone,
        SYNC_RESUME_REQUEST => BackupEvent::ResumeRequestedOnPhone,
        BACKUP_DOMAIN_CHANGED => BackupEvent::EncryptionSettingChanged,
        LOCAL_AUTH_UI_PRESENTED => BackupEvent::PasscodeRequested,
        LOCAL_AUTH_UI_DISMISSED => BackupEvent::PasscodeDismissed,
        _ => return None,
    })
}

/// Why the finished backup does not check out.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// `<UDID>/Status.plist` is absent: the phone reported success without finishing.
    #[error("{0}/Status.plist is missing: the phone did not finish the backup")]
    Missing(String),
    /// It could not be read.
    #[error("reading Status.plist: {0}")]
    Unreadable(#[from] TargetError),
    /// It is too large or not a plist dictionary.
    #[error("{path} is not a valid Status.plist: {reason}")]
    Invalid { path: String, reason: String },
    /// `SnapshotState` is not `finished`.
    #[error("{path} says SnapshotState {state:?}, not \"finished\"")]
    NotFinished { path: String, state: Option<String> },
}

fn udid_path(udid: &str, name: &str) -> Result<BackupPath, TargetError> {
    super::target::validate(&format!("{udid}/{name}"))
}

/// libimobiledevice's success test after a backup: `<UDID>/Status.plist` has
/// `SnapshotState == "finished"` (read through the target, so it works on a repository too).
pub fn check_snapshot_finished(
    target: &mut dyn BackupTarget,
    udid: &str,
) -> Result<(), VerifyError> {
    let path = udid_path(udid, "Status.plist")?;
    let shown = path.to_string();
    let mut bytes = Vec::new();
    match target.open_read(&path) {
        Ok(r) => {
            r.take(MAX_STATUS_PLIST_LEN + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| TargetError::io(&path, e))?;
        }
        Err(e) if e.is_not_found() => return Err(VerifyError::Missing(udid.to_string())),
        Err(e) => return Err(e.into()),
    }
    if bytes.len() as u64 > MAX_STATUS_PLIST_LEN {
        return Err(VerifyError::Invalid {
            path: shown,
            reason: format!("longer than {MAX_STATUS_PLIST_LEN} bytes"),
        });
    }
    let value = crate::plist_frame::decode_body(&bytes).map_err(|e| VerifyError::Invalid {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let dict = value.as_dictionary().ok_or_else(|| VerifyError::Invalid {
        path: shown.clone(),
        reason: "not a dictionary".into(),
    })?;
    let state = dict
        .get("SnapshotState")
        .and_then(plist::Value::as_string)
        .map(str::to_string);
    if state.as_deref() == Some("finished") {
        Ok(())
    } else {
        Err(VerifyError::NotFinished { path: shown, state })
    }
}

/// Writes the host's `<UDID>/Info.plist` (creating `<UDID>`), committed only when complete.
pub fn write_info_plist(
    target: &mut dyn BackupTarget,
    udid: &str,
    bytes: &[u8],
) -> Result<(), TargetError> {
    let dir = super::target::validate(udid)?;
    target.create_dir_all(&dir)?;
    let path = udid_path(udid, "Info.plist")?;
    let mut sink = target.create_file(&path)?;
    if let Err(e) = sink.write_all(bytes) {
        sink.abort();
        return Err(TargetError::io(&path, e));
    }
    sink.commit()
}

/// Settings of a whole backup run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Ask for a full backup even when a previous one exists.
    pub force_full: bool,
    /// The mobilebackup2 session (timeouts; `cancel` also stops the run).
    pub session: SessionConfig,
    /// Lockdown label and trust-dialog timing.
    pub lockdown: SessionOptions,
    /// Sync lock attempts.
    pub sync_lock: SyncLockPolicy,
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub udid: String,
    /// `ProductVersion` from lockdown.
    pub product_version: Option<String>,
    /// Whether the phone encrypts its backups (`WillEncrypt`).
    pub will_encrypt: bool,
    /// Whether this host had to pair first.
    pub paired_now: bool,
    /// Whether the iTunes sync lock was held during the backup (no AFC: not held).
    pub sync_locked: bool,
    pub summary: TransferSummary,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Connecting, pairing or the lockdown session failed.
    #[error("lockdown: {0}")]
    Lockdown(#[from] lockdown::Error),
    /// A required service could not be started.
    #[error("could not start {service}: {source}")]
    Service {
        service: &'static str,
        #[source]
        source: lockdown::Error,
    },
    /// The sync lock could not be taken (another sync in progress).
    #[error(transparent)]
    SyncLock(#[from] SyncLockError),
    /// Info.plist could not be written to the target.
    #[error("writing Info.plist: {0}")]
    InfoPlist(#[source] TargetError),
    /// The mobilebackup2 session failed (phone refused, disconnected, cancelled, …).
    #[error(transparent)]
    Backup(#[from] HostError),
    /// The phone reported success but the backup is not complete.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Encryption is already in the requested state (`WillEncrypt`), so nothing was asked.
    #[error("backup encryption is already {}", if *.0 { "on" } else { "off" })]
    EncryptionAlreadySet(bool),
}

impl RunError {
    /// True when the run was cancelled (on this side or on the phone).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, RunError::Backup(HostError::Cancelled))
    }
}

/// Posts notifications on an open notification_proxy connection, or nowhere when none could be
/// opened (the sync lock is still taken; only the phone's own UI misses the hints).
struct Poster(Option<NotificationProxyClient>);

impl PostNotification for Poster {
    fn post_notification(&mut self, name: &str) -> Result<(), NpError> {
        match &mut self.0 {
            Some(np) => np.post(name),
            None => Ok(()),
        }
    }
}

/// The lockdown session every run starts with, pairing first when this host has no record.
fn open_lockdown(
    conn: &dyn DeviceConnector,
    pair_store: &dyn PairStore,
    host: &HostIdentity,
    opts: &RunOptions,
    events: &mut dyn FnMut(BackupEvent),
) -> Result<LockdownSession, RunError> {
    events(BackupEvent::Phase(Phase::Connecting));
    Ok(lockdown::open(
        conn,
        pair_store,
        host,
        &opts.lockdown,
        &mut |e| events(BackupEvent::Pairing(e)),
    )?)
}

/// `WillEncrypt`, taken as false when the phone does not say (no such key, or not a boolean).
fn will_encrypt(ld: &mut LockdownSession) -> bool {
    ld.get_value(Some("com.apple.mobile.backup"), Some("WillEncrypt"))
        .ok()
        .and_then(|v| v.as_boolean())
        .unwrap_or(false)
}

/// The mobilebackup2 service over SSL (as both real hosts start it).
fn connect_mobilebackup2(
    conn: &dyn DeviceConnector,
    ld: &mut LockdownSession,
) -> Result<BoxStream, RunError> {
    ld.connect_service(conn, MOBILEBACKUP2_SERVICE, true)
        .map_err(|source| RunError::Service {
            service: MOBILEBACKUP2_SERVICE,
            source,
        })
}

/// Backs up the attached phone into `target`, as idevicebackup2 and pymobiledevice3 do
/// (protocol.md §6.2, §6.3):
///
/// 1. lockdown session (pairing if needed), `GetValue` of the root values and `WillEncrypt`;
/// 2. mobilebackup2 started with the EscrowBag, DeviceLink handshake and Hello;
/// 3. notification_proxy and AFC (AFC failures tolerated, like libimobiledevice: then no sync
///    lock and no iTunes files), the sync lock, the observer for cancel / passcode prompts;
/// 4. `<UDID>/Info.plist` from lockdown, installation_proxy, springboard icons and AFC files
///    (each tolerated when it fails);
/// 5. `Backup` and the DL loop; then `Status.plist` must say `SnapshotState == finished`;
/// 6. unlock, syncDidFinish, DLMessageDisconnect, goodbyes: on every path once reached.
pub fn run_backup(
    conn: &dyn DeviceConnector,
    pair_store: &dyn PairStore,
    host: &HostIdentity,
    target: &mut dyn BackupTarget,
    opts: &RunOptions,
    events: &mut dyn FnMut(BackupEvent),
) -> Result<RunReport, RunError> {
    let mut ld = open_lockdown(conn, pair_store, host, opts, events)?;
    let udid = ld.udid().to_string();
    let res = backup_in_session(conn, &mut ld, &udid, target, opts, events);
    // The session's own goodbye; the backup's outcome matters more than its failure.
    let _ = ld.close();
    res
}

fn backup_in_session(
    conn: &dyn DeviceConnector,
    ld: &mut LockdownSession,
    udid: &str,
    target: &mut dyn BackupTarget,
    opts: &RunOptions,
    events: &mut dyn FnMut(BackupEvent),
) -> Result<RunReport, RunError> {
    let root = match ld.get_value(None, None)? {
        Value::Dictionary(d) => d,
        _ => Dictionary::new(),
    };
    let will_encrypt = will_encrypt(ld);
    let product_version = root
        .get("ProductVersion")
        .and_then(Value::as_string)
        .map(str::to_string);

    let mb2_stream = connect_mobilebackup2(conn, ld)?;
    // The phone's cancel (syncCancelRequest) and the caller's share one flag.
    let cancel = opts
        .session
        .cancel
        .clone()
        .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
    let config = SessionConfig {
        cancel: Some(cancel.clone()),
        ..opts.session.clone()
    };
    let mut mb2 = Mb2Session::handshake(mb2_stream, config)?;

    events(BackupEvent::Phase(Phase::Preparing));
    let mut poster = Poster(
        ld.connect_service(conn, NOTIFICATION_PROXY_SERVICE, false)
            .map(NotificationProxyClient::new)
            .map_err(|e| tracing::warn!(error = %e, "notification_proxy unavailable"))
            .ok(),
    );
    let mut afc = ld
        .connect_service(conn, AFC_SERVICE, false)
        .map(AfcClient::new)
        .map_err(|e| tracing::warn!(error = %e, "AFC unavailable: no sync lock"))
        .ok();
    let lock = match afc.as_mut() {
        Some(afc) => {
            match SyncLock::acquire(afc, &mut poster, opts.sync_lock, &mut std::thread::sleep) {
                Ok(lock) => Some(lock),
                Err(e) => {
                    let _ = mb2.disconnect();
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    let sync_locked = lock.is_some();

    let (tx, rx) = mpsc::channel();
    mb2.set_side_events(rx);
    // A second notification_proxy connection only observes, from its own thread: the phone's
    // cancel sets the session's cancel flag; cancel and passcode prompts become events.
    let watcher = {
        let cancel = cancel.clone();
        ld.connect_service(conn, NOTIFICATION_PROXY_SERVICE, false)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                NotificationProxyClient::new(s)
                    .spawn_watcher(&BACKUP_OBSERVED, move |name| {
                        if name == SYNC_CANCEL_REQUEST {
                            cancel.store(true, Ordering::SeqCst);
                        }
                        if let Some(ev) = notification_event(&name) {
                            let _ = tx.send(ev);
                        }
                    })
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| tracing::warn!(error = %e, "not observing the phone's notifications"))
            .ok()
    };

    let outcome = (|| -> Result<TransferSummary, RunError> {
        let info = gather_info_plist(conn, ld, afc.as_mut(), udid, &root);
        write_info_plist(target, udid, &info.to_xml()).map_err(RunError::InfoPlist)?;
        let summary = mb2.backup(
            target,
            udid,
            &BackupOptions {
                force_full: opts.force_full,
                source_udid: None,
            },
            events,
        )?;
        events(BackupEvent::Phase(Phase::Verifying));
        check_snapshot_finished(target, udid)?;
        Ok(summary)
    })();

    events(BackupEvent::Phase(Phase::Finishing));
    if let Some(w) = watcher {
        if let Err(e) = w.stop() {
            tracing::debug!(error = %e, "notification watcher");
        }
    }
    mb2.deliver_side_events(events);
    if let (Some(lock), Some(afc)) = (lock, afc.as_mut()) {
        if let Err(e) = lock.release(afc, &mut poster) {
            tracing::warn!(error = %e, "releasing the sync lock");
        }
    }
    let bye = mb2.disconnect();
    if let Some(np) = poster.0.take() {
        let _ = np.shutdown(DEFAULT_SHUTDOWN_TIMEOUT);
    }
    let summary = outcome?;
    bye?;
    Ok(RunReport {
        udid: udid.to_string(),
        product_version,
        will_encrypt,
        paired_now: ld.paired_now(),
        sync_locked,
        summary,
    })
}

/// Turns backup encryption on (`new` only), off (`old` only) or changes the password (both),
/// as `idevicebackup2 encryption on|off` / `changepw` do: refused locally when `WillEncrypt`
/// already says so; otherwise mobilebackup2 `ChangePassword`, the phone asks for its passcode,
/// and its answer decides. Returns the new `WillEncrypt`.
pub fn run_change_password(
    conn: &dyn DeviceConnector,
    pair_store: &dyn PairStore,
    host: &HostIdentity,
    old: Option<&crate::password::Password>,
    new: Option<&crate::password::Password>,
    opts: &RunOptions,
    events: &mut dyn FnMut(BackupEvent),
) -> Result<bool, RunError> {
    let mut ld = open_lockdown(conn, pair_store, host, opts, events)?;
    let udid = ld.udid().to_string();
    let res = (|| -> Result<bool, RunError> {
        let before = will_encrypt(&mut ld);
        match (old.is_some(), new.is_some()) {
            (false, true) if before => return Err(RunError::EncryptionAlreadySet(true)),
            (true, false) if !before => return Err(RunError::EncryptionAlreadySet(false)),
            _ => {}
        }
        let stream = connect_mobilebackup2(conn, &mut ld)?;
        let mut mb2 = Mb2Session::handshake(stream, opts.session.clone())?;
        let res = mb2.change_password(&udid, old, new, events);
        let bye = mb2.disconnect();
        res?;
        bye?;
        Ok(will_encrypt(&mut ld))
    })();
    let _ = ld.close();
    res
}

/// Whether the phone encrypts its backups (`WillEncrypt` in `com.apple.mobile.backup`), pairing
/// first when this host has no record. Lets a caller refuse an unencrypted backup, or turn
/// encryption on, before any file moves.
pub fn query_will_encrypt(
    conn: &dyn DeviceConnector,
    pair_store: &dyn PairStore,
    host: &HostIdentity,
    opts: &RunOptions,
    events: &mut dyn FnMut(BackupEvent),
) -> Result<bool, RunError> {
    let mut ld = open_lockdown(conn, pair_store, host, opts, events)?;
    let v = ld.get_value(Some("com.apple.mobile.backup"), Some("WillEncrypt"));
    let _ = ld.close();
    match v {
        Ok(v) => Ok(v.as_boolean().unwrap_or(false)),
        // Phones that never had a backup password have no such key.
        Err(e) if e.device_error() == Some(&lockdown::LockdownError::MissingValue) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Gathers Info.plist from lockdown's values and the side services. Every source but lockdown's
/// root values is optional: a failure leaves its keys empty, as both real hosts do.
fn gather_info_plist(
    conn: &dyn DeviceConnector,
    ld: &mut LockdownSession,
    afc: Option<&mut AfcClient>,
    udid: &str,
    root: &Dictionary,
) -> InfoPlist {
    let mut src = InfoPlistParams::new(InfoPlistParams::random_guid());
    src.last_backup_date = Some(SystemTime::now().into());
    src.itunes_settings = match ld.get_value(Some("com.apple.iTunes"), None) {
        Ok(Value::Dictionary(d)) => d,
        _ => Dictionary::new(),
    };
    src.itunes_version = ld
        .get_value(Some("com.apple.mobile.iTunes"), Some("MinITunesVersion"))
        .ok()
        .and_then(|v| v.as_string().map(str::to_string))
        .unwrap_or_else(|| DEFAULT_ITUNES_VERSION.to_string());

    let apps = ld
        .connect_service(conn, INSTALLATION_PROXY_SERVICE, false)
        .map_err(|e| e.to_string())
        .and_then(|s| {
            InstallationProxyClient::new(s)
                .browse_user_apps(&BACKUP_APP_ATTRIBUTES)
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no app list for Info.plist");
            Vec::new()
        });
    let mut icons: Option<SpringboardClient> = None;
    let mut icons_tried = false;
    for app in &apps {
        let Some(id) = app.get("CFBundleIdentifier").and_then(Value::as_string) else {
            continue;
        };
        src.installed_applications.push(id.to_string());
        let sinf = app.get("ApplicationSINF").and_then(Value::as_data);
        let meta = app.get("iTunesMetadata").and_then(Value::as_data);
        let (Some(sinf), Some(meta)) = (sinf, meta) else {
            continue;
        };
        // Icons only for apps that have both blobs, as both hosts do; one connection for all.
        if !icons_tried {
            icons_tried = true;
            icons = ld
                .connect_service(conn, SPRINGBOARD_SERVICE, false)
                .map(SpringboardClient::new)
                .map_err(|e| tracing::warn!(error = %e, "no app icons for Info.plist"))
                .ok();
        }
        let icon = icons.as_mut().and_then(|c| c.icon_png(id).ok());
        src.applications.insert(
            id.to_string(),
            InfoPlist::application_entry(sinf.to_vec(), meta.to_vec(), icon),
        );
    }

    if let Some(afc) = afc {
        src.ibooks_data = afc
            .read_file(IBOOKS_DATA2_PATH, MAX_INFO_FILE_LEN)
            .ok()
            .flatten();
        for name in ITUNES_FILES {
            let path = format!("{ITUNES_CONTROL_DIR}/{name}");
            if let Ok(Some(bytes)) = afc.read_file(&path, MAX_INFO_FILE_LEN) {
                src.itunes_files
                    .insert(name.to_string(), Value::Data(bytes));
            }
        }
    }
    InfoPlist::from_lockdown_values(udid, root, src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup2::target::FolderTarget;
    use std::fs;

    const U: &str = "00008030-001A2B3C4D5E6F70";

    #[test]
    fn info_plist_keys() {
        let mut root = Dictionary::new();
        root.insert("DeviceName".into(), "Phone".into());
        root.insert("ProductVersion".into(), "17.5.1".into());
        root.insert("PhoneNumber".into(), Value::Integer(5.into()));
        let mut src = InfoPlistParams::new("AB");
        src.installed_applications = vec!["com.a".into()];
        let info = InfoPlist::from_lockdown_values("00008030-001a", &root, src);
        let d = info.dictionary();
        let s = |k: &str| d.get(k).and_then(Value::as_string);
        assert_eq!(s("Device Name"), Some("Phone"));
        assert_eq!(s("Display Name"), Some("Phone"));
        assert_eq!(s("Product Version"), Some("17.5.1"));
        assert_eq!(s("Target Identifier"), Some("00008030-001a"));
        assert_eq!(s("Unique Identifier"), Some("00008030-001A"));
        assert_eq!(s("Target Type"), Some("Device"));
        assert_eq!(s("iTunes Version"), Some("10.0.1"));
        // A non-string lockdown value is left out rather than copied with the wrong type.
        assert!(d.get("Phone Number").is_none());
        assert!(d.get("Last Backup Date").is_none());
    }

    #[test]
    fn notifications_map_to_events() {
        assert_eq!(
            notification_event(crate::services::notification_proxy::LOCAL_AUTH_UI_PRESENTED),
            Some(BackupEvent::PasscodeRequested)
        );
        assert_eq!(
            notification_event(crate::services::notification_proxy::SYNC_CANCEL_REQUEST),
            Some(BackupEvent::CancelRequestedOnPhone)
        );
        assert_eq!(notification_event("com.example.other"), None);
    }

    #[test]
    fn snapshot_state_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = FolderTarget::open(dir.path()).unwrap();
        assert!(matches!(
            check_snapshot_finished(&mut t, U),
            Err(VerifyError::Missing(_))
        ));
        write_info_plist(&mut t, U, b"<plist/>").unwrap();
        assert_eq!(
            fs::read(dir.path().join(U).join("Info.plist")).unwrap(),
            b"<plist/>"
        );
        let write = |state: &str| {
            let mut d = plist::Dictionary::new();
            d.insert("SnapshotState".into(), plist::Value::String(state.into()));
            plist::Value::Dictionary(d)
                .to_file_binary(dir.path().join(U).join("Status.plist"))
                .unwrap();
        };
        write("uploading");
        assert!(matches!(
            check_snapshot_finished(&mut t, U),
            Err(VerifyError::NotFinished { state: Some(s), .. }) if s == "uploading"
        ));
        write("finished");
        check_snapshot_finished(&mut t, U).unwrap();
        fs::write(dir.path().join(U).join("Status.plist"), b"garbage").unwrap();
        assert!(matches!(
            check_snapshot_finished(&mut t, U),
            Err(VerifyError::Invalid { .. })
        ));
    }
}
