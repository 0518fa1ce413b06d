//! What `cradle status` shows: a snapshot of the daemon's state as JSON, served on a UNIX
//! socket (one JSON document per connection), and its human rendering. Never holds a password.

use super::machine::{DriveKind, PhoneStatus};
use crate::display::Screen;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default status socket of the box.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/cradle/status.sock";
/// Largest status document read by the client.
pub const MAX_STATUS_LEN: u64 = 1024 * 1024;

/// The daemon's state for `cradle status`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub version: String,
    /// One word: boot, no-drive, idle, connecting, trust, passcode, backing-up, …
    pub state: String,
    /// The screen's kind, as in docs/display.md.
    pub screen: String,
    pub drive: Option<DriveStatus>,
    pub phones: Vec<PhoneReport>,
    pub secrets: SecretsStatus,
    /// "up", "down" (failing or absent; retried) or "none".
    pub display: String,
}

/// The drive as status shows it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DriveStatus {
    /// cradle, labelled, unknown, unreadable.
    pub kind: String,
    pub root: PathBuf,
    pub free_bytes: u64,
    /// No job uses it: it may be pulled.
    pub safe_to_remove: bool,
    /// Where backups go on it.
    pub destination: String,
}

/// One phone.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhoneReport {
    pub udid: String,
    pub name: Option<String>,
    /// Unix seconds of the last verified backup.
    pub last_backup: Option<u64>,
    pub last_result: Option<String>,
    pub attached: bool,
    pub ignored: bool,
    /// The last verified snapshot (hex id), when made while the daemon ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<String>,
}

impl From<PhoneStatus> for PhoneReport {
    fn from(p: PhoneStatus) -> Self {
        Self {
            udid: p.udid,
            name: p.name,
            last_backup: p.last_backup,
            last_result: p.last_result,
            attached: p.attached,
            ignored: p.ignored,
            last_snapshot: p.last_snapshot,
        }
    }
}

/// How the box keeps its passwords (never the passwords).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SecretsStatus {
    /// tpm2, host-key, memory (demo), …
    pub mode: String,
    /// Whether a box default password is stored.
    pub default_password: bool,
}

/// The kind name of a drive.
pub fn drive_kind_name(k: DriveKind) -> &'static str {
    match k {
        DriveKind::Cradle => "cradle",
        DriveKind::Labelled => "labelled",
        DriveKind::Unknown => "unknown",
        DriveKind::Unreadable => "unreadable",
    }
}

/// The file-style name of a screen's kind (as `display::samples` names them).
pub fn screen_name(s: &Screen) -> &'static str {
    use crate::display::ErrorScreen as E;
    match s {
        Screen::Boot { .. } => "boot",
        Screen::NoDrive => "no-drive",
        Screen::Ready { .. } => "ready",
        Screen::PhoneFound { .. } => "phone-found",
        Screen::Trust { .. } => "trust",
        Screen::Passcode { .. } => "passcode",
        Screen::EnablingEncryption => "enabling-encryption",
        Screen::BackingUp(_) => "backing-up",
        Screen::Saving => "saving",
        Screen::Verifying { .. } => "verifying",
        Screen::Done { .. } => "done",
        Screen::StoredRaw { .. } => "stored-raw",
        Screen::Error(e) => match e {
            E::DriveFull => "error-drive-full",
            E::DriveRemoved => "error-drive-removed",
            E::PhoneUnplugged => "error-phone-unplugged",
            E::PhoneLockedTooLong => "error-phone-locked",
            E::WrongPassword => "error-wrong-password",
            E::TrustDenied => "error-trust-denied",
            E::DriveUnreadable => "error-drive-unreadable",
            E::NoTpm => "error-no-tpm",
            E::NotCradleDrive => "error-not-cradle-drive",
            E::DrivePassword => "error-drive-password",
            _ => "error-other",
        },
    }
}

/// The report for people.
pub fn render_human(r: &StatusReport, now_unix: u64) -> String {
    let mut s = format!("cradle {}: {} (screen: {})\n", r.version, r.state, r.screen);
    match &r.drive {
        None => s.push_str("drive: none\n"),
        Some(d) => s.push_str(&format!(
            "drive: {} at {} ({:.1} GB free, {}); {}\n",
            d.kind,
            d.root.display(),
            d.free_bytes as f64 / 1e9,
            if d.safe_to_remove {
                "safe to remove"
            } else {
                "in use"
            },
            d.destination
        )),
    }
    s.push_str(&format!(
        "secrets: {} (default password {})\n",
        r.secrets.mode,
        if r.secrets.default_password {
            "set"
        } else {
            "not set"
        }
    ));
    s.push_str(&format!("display: {}\n", r.display));
    if r.phones.is_empty() {
        s.push_str("phones: none yet\n");
    }
    for p in &r.phones {
        let last = match p.last_backup {
            Some(t) => format!("last backup {} ago", ago(now_unix.saturating_sub(t))),
            None => "never backed up".into(),
        };
        s.push_str(&format!(
            "phone {} ({}): {}{}{}{}{}\n",
            p.name.as_deref().unwrap_or("?"),
            p.udid,
            last,
            p.last_result
                .as_deref()
                .map(|r| match r {
                    "ok-raw" => ", last result ok-raw (stored raw: the phone's backup password \
                                 is not the box's, so its files could not be checked)"
                        .to_string(),
                    r => format!(", last result {r}"),
                })
                .unwrap_or_default(),
            p.last_snapshot
                .as_deref()
                .map(|id| format!(", verified snapshot {}", id.get(..12).unwrap_or(id)))
                .unwrap_or_default(),
            if p.attached { ", plugged in" } else { "" },
            if p.ignored {
                ", ignored (not allowed)"
            } else {
                ""
            },
        ));
    }
    s
}

fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

/// Serves `report` on a UNIX socket until `stop` is set: each connection gets the current
/// report as one JSON document. The socket file is replaced if stale and removed at the end.
pub fn serve_status(
    path: &Path,
    report: Arc<Mutex<StatusReport>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let doc = {
                            let r = report.lock().unwrap_or_else(|p| p.into_inner());
                            serde_json::to_string(&*r).unwrap_or_default()
                        };
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = s.write_all(doc.as_bytes());
                        let _ = s.write_all(b"\n");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!("status socket: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        })
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The socket could not be reached (daemon not running?).
    #[error("cannot reach the daemon at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The answer was not a status document.
    #[error("bad status from {}: {detail}", path.display())]
    Bad { path: PathBuf, detail: String },
}

/// Reads the daemon's status from its socket.
pub fn query_status(path: &Path) -> Result<StatusReport, StatusError> {
    let connect = |source| StatusError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let s = UnixStream::connect(path).map_err(connect)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(connect)?;
    let mut buf = Vec::new();
    s.take(MAX_STATUS_LEN)
        .read_to_end(&mut buf)
        .map_err(connect)?;
    serde_json::from_slice(&buf).map_err(|e| StatusError::Bad {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_report_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let report = Arc::new(Mutex::new(StatusReport {
            version: "1".into(),
            state: "idle".into(),
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let t = serve_status(&path, report.clone(), stop.clone()).unwrap();
        assert_eq!(query_status(&path).unwrap().state, "idle");
        report.lock().unwrap().state = "trust".into();
        assert_eq!(query_status(&path).unwrap().state, "trust");
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        assert!(!path.exists());
        assert!(matches!(
            query_status(&path),
            Err(StatusError::Connect { .. })
        ));
    }

    #[test]
    fn human_rendering() {
        let r = StatusReport {
            version: "0.1.0".into(),
            state: "idle".into(),
            screen: "ready".into(),
            phones: vec![PhoneReport {
                udid: "U".into(),
                name: Some("Anna".into()),
                last_backup: Some(1000),
                last_result: Some("ok".into()),
                attached: true,
                ignored: false,
                last_snapshot: Some("0123456789abcdef".into()),
            }],
            ..Default::default()
        };
        let text = render_human(&r, 1000 + 3 * 3600);
        assert!(text.contains(
            "phone Anna (U): last backup 3 h ago, last result ok, verified snapshot \
             0123456789ab, plugged in"
        ));
        assert!(text.contains("drive: none"));
    }
}
