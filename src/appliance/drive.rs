//! The backup drive: noticing it come and go, deciding whether it is ours (a Cradle folder on
//! it, or the label the owner chose), mounting it only while working, and its run log.
//!
//! Two kinds of watcher: a directory (tests, the demo, a drive mounted by someone else) and a
//! block device found by its file-system label, mounted by the daemon with mount(8).

use super::destination::RUN_LOG_FILE;
use super::machine::{DriveKind, RunRecord};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder on a drive that holds Cradle's data (the repository and the run log); its
/// presence makes the drive a Cradle drive.
pub const CRADLE_DIR: &str = super::repo_dest::REPO_DIR;
/// In directory mode, a file holding the label the owner gave the drive.
pub const LABEL_FILE: &str = ".cradle-label";
/// Largest run log read back for the history (older lines beyond it are skipped).
pub const MAX_RUN_LOG_READ: u64 = 4 * 1024 * 1024;

/// Why the drive could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// mount/umount failed or could not be run.
    #[error("{action} {}: {detail}", device.display())]
    Mount {
        /// "mounting" or "unmounting".
        action: &'static str,
        /// The device or mount point.
        device: PathBuf,
        /// The tool's message.
        detail: String,
    },
    /// A file on the drive could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// What a poll saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Absent,
    Present,
}

/// A drive the daemon watches and mounts.
pub trait DriveWatch: Send {
    /// Whether the drive is plugged in (cheap; called every second).
    fn poll(&mut self) -> Presence;
    /// Makes the drive's files reachable under [`DriveWatch::root`].
    fn mount(&mut self) -> Result<(), DriveError>;
    /// Flushes and unmounts (no-op when not mounted by us).
    fn release(&mut self) -> Result<(), DriveError>;
    /// Where the drive's files are while mounted.
    fn root(&self) -> &Path;
    /// Whether the label the owner chose is on the drive (checked while mounted).
    fn has_label(&self) -> bool;
}

/// A directory stands in for the drive: present while it exists. Labelled when it holds
/// `.cradle-label` with the configured label.
#[derive(Debug, Clone)]
pub struct DirDrive {
    root: PathBuf,
    label: Option<String>,
}

impl DirDrive {
    pub fn new(root: impl Into<PathBuf>, label: Option<String>) -> Self {
        Self {
            root: root.into(),
            label,
        }
    }
}

impl DriveWatch for DirDrive {
    fn poll(&mut self) -> Presence {
        if self.root.is_dir() {
            Presence::Present
        } else {
            Presence::Absent
        }
    }
    fn mount(&mut self) -> Result<(), DriveError> {
        Ok(())
    }
    fn release(&mut self) -> Result<(), DriveError> {
        // Nothing to unmount; make what was written durable.
        rustix::fs::sync();
        Ok(())
    }
    fn root(&self) -> &Path {
        &self.root
    }
    fn has_label(&self) -> bool {
        let Some(label) = &self.label else {
            return false;
        };
        std::fs::read_to_string(self.root.join(LABEL_FILE)).is_ok_and(|s| s.trim() == label)
    }
}

/// A USB drive found by file-system label under /dev/disk/by-label, mounted at `mount_point`
/// (nosuid, nodev, noexec) only while the daemon works on it.
#[derive(Debug, Clone)]
pub struct LabelDrive {
    label: String,
    device: PathBuf,
    mount_point: PathBuf,
    mounted: bool,
}

impl LabelDrive {
    pub fn new(label: &str, mount_point: impl Into<PathBuf>) -> Self {
        Self {
            label: label.to_string(),
            device: Path::new("/dev/disk/by-label").join(label),
            mount_point: mount_point.into(),
            mounted: false,
        }
    }
}

fn run_tool(action: &'static str, device: &Path, cmd: &mut Command) -> Result<(), DriveError> {
    let out = cmd.output().map_err(|e| DriveError::Mount {
        action,
        device: device.to_path_buf(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DriveError::Mount {
            action,
            device: device.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl DriveWatch for LabelDrive {
    fn poll(&mut self) -> Presence {
        if self.device.exists() {
            Presence::Present
        } else {
            self.mounted = false;
            Presence::Absent
        }
    }
    fn mount(&mut self) -> Result<(), DriveError> {
        if self.mounted {
            return Ok(());
        }
        std::fs::create_dir_all(&self.mount_point).map_err(|source| DriveError::Io {
            path: self.mount_point.clone(),
            source,
        })?;
        run_tool(
            "mounting",
            &self.device,
            Command::new("mount")
                .args(["-o", "nosuid,nodev,noexec"])
                .arg(&self.device)
                .arg(&self.mount_point),
        )?;
        self.mounted = true;
        Ok(())
    }
    fn release(&mut self) -> Result<(), DriveError> {
        if !self.mounted {
            return Ok(());
        }
        rustix::fs::sync();
        run_tool(
            "unmounting",
            &self.mount_point,
            Command::new("umount").arg(&self.mount_point),
        )?;
        self.mounted = false;
        Ok(())
    }
    fn root(&self) -> &Path {
        &self.mount_point
    }
    fn has_label(&self) -> bool {
        // Found by its label in the first place.
        !self.label.is_empty()
    }
}

/// Ours or not: a Cradle folder on it, or the owner's label; otherwise it is never touched.
pub fn classify(drive: &dyn DriveWatch) -> DriveKind {
    let root = drive.root();
    match std::fs::symlink_metadata(root.join(CRADLE_DIR)) {
        Ok(m) if m.is_dir() => return DriveKind::Cradle,
        Ok(_) => return DriveKind::Unknown,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => return DriveKind::Unreadable,
    }
    if std::fs::read_dir(root).is_err() {
        return DriveKind::Unreadable;
    }
    if drive.has_label() {
        DriveKind::Labelled
    } else {
        DriveKind::Unknown
    }
}

/// Free bytes on the file system holding `path` (0 when unknown).
pub fn free_bytes(path: &Path) -> u64 {
    rustix::fs::statvfs(path)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

/// Appends one record to the run log and flushes it to the drive.
pub fn append_run_log(dir: &Path, record: &RunRecord) -> Result<(), DriveError> {
    let path = dir.join(RUN_LOG_FILE);
    let io = |source| DriveError::Io {
        path: path.clone(),
        source,
    };
    // One level only: a drive that vanished must not be recreated as a folder on the box.
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(DriveError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    let mut line = serde_json::to_string(record).map_err(|e| io(std::io::Error::other(e)))?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    f.write_all(line.as_bytes()).map_err(io)?;
    f.sync_data().map_err(io)
}

/// Every well-formed record of the run log (bad lines, e.g. cut by a power loss, are skipped).
pub fn read_run_log(dir: &Path) -> Vec<RunRecord> {
    let Ok(f) = std::fs::File::open(dir.join(RUN_LOG_FILE)) else {
        return Vec::new();
    };
    std::io::BufReader::new(std::io::Read::take(f, MAX_RUN_LOG_READ))
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<RunRecord>(&l).ok())
        .collect()
}

/// The last successful backup per phone, from the run log: UDID → (name, unix seconds).
pub fn history(records: &[RunRecord]) -> BTreeMap<String, (String, u64)> {
    let mut out: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for r in records {
        let ok = r.event == "end" && matches!(r.result.as_deref(), Some("ok" | "ok-raw"));
        if ok && out.get(&r.udid).is_none_or(|(_, t)| *t <= r.time) {
            let name = r.name.clone().unwrap_or_else(|| r.udid.clone());
            out.insert(r.udid.clone(), (name, r.time));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(udid: &str, result: &str, time: u64) -> RunRecord {
        RunRecord {
            event: "end".into(),
            udid: udid.into(),
            name: Some(format!("{udid}-name")),
            time,
            result: Some(result.into()),
            bytes: Some(1),
            files: Some(1),
            new_bytes: Some(1),
            duration_secs: Some(1),
            message: None,
            snapshot: None,
        }
    }

    #[test]
    fn drives_are_classified_and_unknown_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DirDrive::new(dir.path(), Some("CRADLE".into()));
        assert_eq!(d.poll(), Presence::Present);
        assert_eq!(classify(&d), DriveKind::Unknown);
        std::fs::write(dir.path().join(LABEL_FILE), "OTHER\n").unwrap();
        assert_eq!(classify(&d), DriveKind::Unknown);
        std::fs::write(dir.path().join(LABEL_FILE), "CRADLE\n").unwrap();
        assert_eq!(classify(&d), DriveKind::Labelled);
        std::fs::create_dir(dir.path().join(CRADLE_DIR)).unwrap();
        assert_eq!(
            classify(&DirDrive::new(dir.path(), None)),
            DriveKind::Cradle
        );
        // Classifying wrote nothing.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
        let mut gone = DirDrive::new(dir.path().join("nope"), None);
        assert_eq!(gone.poll(), Presence::Absent);
    }

    #[test]
    fn run_log_round_trip_and_history() {
        let dir = tempfile::tempdir().unwrap();
        append_run_log(dir.path(), &rec("A", "ok", 10)).unwrap();
        append_run_log(dir.path(), &rec("A", "phone-unplugged", 20)).unwrap();
        append_run_log(dir.path(), &rec("B", "ok-raw", 5)).unwrap();
        // A torn last line is skipped.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(RUN_LOG_FILE))
            .unwrap();
        f.write_all(b"{\"event\":\"end\",\"ud").unwrap();
        let all = read_run_log(dir.path());
        assert_eq!(all.len(), 3);
        let h = history(&all);
        assert_eq!(h["A"], ("A-name".to_string(), 10));
        assert_eq!(h["B"].1, 5);
    }
}
