//! A whole backup of an attached phone (protocol.md §6.2/§6.3): lockdown, notifications, sync
//! lock, Info.plist, the mobilebackup2 operation, the Status.plist check, then the goodbyes.

use super::host::BackupEvent;
use super::target::{BackupPath, BackupTarget, TargetError};
use std::io::{Read, Write};

/// Largest Status.plist read back for the final check (real ones are ~200 bytes).
pub const MAX_STATUS_PLIST_LEN: u64 = 1024 * 1024;

/// Notification names the host observes during a backup (both real hosts' set).
pub mod notifications {
    pub const SYNC_CANCEL_REQUEST: &str = "com.apple.itunes-client.syncCancelRequest";
    pub const SYNC_SUSPEND_REQUEST: &str = "com.apple.itunes-client.syncSuspendRequest";
    pub const SYNC_RESUME_REQUEST: &str = "com.apple.itunes-client.syncResumeRequest";
    pub const BACKUP_DOMAIN_CHANGED: &str = "com.apple.mobile.backup.domain_changed";
    pub const LOCAL_AUTH_UI_PRESENTED: &str = "com.apple.LocalAuthentication.ui.presented";
    pub const LOCAL_AUTH_UI_DISMISSED: &str = "com.apple.LocalAuthentication.ui.dismissed";
}

/// What a relayed notification means for the display; `None` for names of no interest.
pub fn notification_event(name: &str) -> Option<BackupEvent> {
    use notifications::*;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup2::target::FolderTarget;
    use std::fs;

    const U: &str = "00008030-001A2B3C4D5E6F70";

    #[test]
    fn notifications_map_to_events() {
        assert_eq!(
            notification_event(notifications::LOCAL_AUTH_UI_PRESENTED),
            Some(BackupEvent::PasscodeRequested)
        );
        assert_eq!(
            notification_event(notifications::SYNC_CANCEL_REQUEST),
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
