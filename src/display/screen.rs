//! The view model: one `Screen` value per thing the box can tell its owner. Plain data, no I/O;
//! the appliance builds it, `draw` turns it into pixels, and `samples` feeds previews and tests.

use std::time::Duration;

/// What the OLED shows. Ages, durations and sizes are computed by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Screen {
    /// Power-on, before the daemon is ready.
    Boot {
        /// Firmware version, e.g. "0.1.0".
        version: String,
    },
    /// No backup drive is plugged in.
    NoDrive,
    /// Idle with a drive: the last verified backup of each known phone, and free space.
    Ready {
        /// Known phones, most recently backed up first.
        phones: Vec<PhoneSummary>,
        /// Free space on the drive in bytes.
        free_bytes: u64,
    },
    /// A phone was plugged in; talking to it.
    PhoneFound {
        /// The phone's name ("Anna's iPhone").
        name: String,
    },
    /// The phone is asking whether to trust this box.
    Trust {
        /// The phone's name.
        name: String,
    },
    /// The phone is waiting for its passcode (to trust, or to change backup encryption).
    Passcode {
        /// Seconds left before the phone gives up.
        seconds_left: u32,
    },
    /// Turning on backup encryption on the phone (first backup).
    EnablingEncryption,
    /// A backup is running.
    BackingUp(BackupProgress),
    /// All data is received; writing the snapshot. The phone may go.
    Saving,
    /// Reading the new snapshot back from the drive.
    Verifying {
        /// Progress in per mille, if known.
        permille: Option<u16>,
    },
    /// The backup is stored and verified.
    Done {
        /// New (deduplicated, compressed) data written to the drive, in bytes.
        new_bytes: u64,
        /// How long the backup took, plug-in to verified.
        duration: Duration,
    },
    /// Stored, but the phone's backup password is not the box's: kept exactly as the phone sent
    /// it ("raw"); the box cannot read its files back, only check that every byte is there.
    StoredRaw {
        /// New data written to the drive, in bytes.
        new_bytes: u64,
    },
    /// Something went wrong: what happened and what to do.
    Error(ErrorScreen),
}

/// One line of the Ready screen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhoneSummary {
    /// The phone's name.
    pub name: String,
    /// Age of its last verified backup; `None` if it has none yet.
    pub last_verified_age: Option<Duration>,
}

/// Everything the Backing up screen shows; `ProgressModel::progress` builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupProgress {
    /// Short name of the current phase ("Receiving files"); cut to fit one line.
    pub phase: String,
    /// Progress in per mille (0..=1000); never goes backwards within one backup.
    pub permille: u16,
    /// Bytes received so far.
    pub done_bytes: u64,
    /// Bytes expected in total (an estimate that may grow).
    pub total_bytes: u64,
    /// Smoothed transfer rate, once measured.
    pub bytes_per_sec: Option<u64>,
    /// Estimated time left, once known.
    pub eta: Option<Duration>,
}

/// The causes of failure the owner can do something about, plus a generic one with a code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorScreen {
    /// The drive has no room for this backup.
    DriveFull,
    /// The drive was pulled out while in use.
    DriveRemoved,
    /// The phone was unplugged before the backup finished.
    PhoneUnplugged,
    /// The phone stayed locked so long that the backup could not go on.
    PhoneLockedTooLong,
    /// The phone's backup password is not the one sealed in the box.
    WrongPassword,
    /// The owner tapped "Don't Trust" on the phone.
    TrustDenied,
    /// The drive could not be mounted or read.
    DriveUnreadable,
    /// No TPM was found, so the backup password cannot be sealed.
    NoTpm,
    /// The drive holds other files and neither a Cradle repository nor the Cradle label: it is
    /// never written.
    NotCradleDrive,
    /// The drive's Cradle repository does not open with the box's password (or the box has
    /// none): another box's drive, or the password was changed elsewhere.
    DrivePassword,
    /// Anything else, with a short code to look up in the docs or logs.
    Other {
        /// Short code, e.g. "E-USB-3" (cut to fit).
        code: String,
    },
}

impl Screen {
    /// Screens during which the owner is waiting or acting: the panel may dim but never blanks.
    pub fn keeps_awake(&self) -> bool {
        matches!(
            self,
            Screen::PhoneFound { .. }
                | Screen::Trust { .. }
                | Screen::Passcode { .. }
                | Screen::EnablingEncryption
                | Screen::BackingUp(_)
                | Screen::Saving
                | Screen::Verifying { .. }
        )
    }

    /// Whether `other` is the same kind of screen (only its figures changed). A change of kind
    /// counts as an event that wakes the panel; a progress tick does not.
    pub fn same_kind(&self, other: &Screen) -> bool {
        match (self, other) {
            (Screen::Error(a), Screen::Error(b)) => {
                std::mem::discriminant(a) == std::mem::discriminant(b)
            }
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

const GB: u64 = 1_000_000_000;
const MB: u64 = 1_000_000;

/// Every screen with sample data, named for files (`ready`, `error-drive-full`, …): the preview
/// command, the docs and the golden tests all use this list.
pub fn samples() -> Vec<(&'static str, Screen)> {
    let min = |m: u64| Duration::from_secs(m * 60);
    vec![
        (
            "boot",
            Screen::Boot {
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
        ),
        ("no-drive", Screen::NoDrive),
        (
            "ready",
            Screen::Ready {
                phones: vec![
                    PhoneSummary {
                        name: "Anna\u{2019}s iPhone".into(),
                        last_verified_age: Some(min(135)),
                    },
                    PhoneSummary {
                        name: "Grandpa Jürgen's iPhone 15 Pro".into(),
                        last_verified_age: Some(min(3 * 24 * 60 + 60)),
                    },
                    PhoneSummary {
                        name: "Work phone".into(),
                        last_verified_age: None,
                    },
                ],
                free_bytes: 412 * GB + 300 * MB,
            },
        ),
        (
            "ready-many",
            Screen::Ready {
                phones: (1..=5)
                    .map(|i| PhoneSummary {
                        name: format!("iPhone {i}"),
                        last_verified_age: Some(min(i * 7)),
                    })
                    .collect(),
                free_bytes: 900 * MB,
            },
        ),
        (
            "ready-empty",
            Screen::Ready {
                phones: Vec::new(),
                free_bytes: 1_800 * GB,
            },
        ),
        (
            "phone-found",
            Screen::PhoneFound {
                name: "Anna\u{2019}s iPhone".into(),
            },
        ),
        (
            "trust",
            Screen::Trust {
                name: "Anna\u{2019}s iPhone".into(),
            },
        ),
        ("passcode", Screen::Passcode { seconds_left: 107 }),
        ("enabling-encryption", Screen::EnablingEncryption),
        (
            "backing-up",
            Screen::BackingUp(BackupProgress {
                phase: "Receiving files".into(),
                permille: 421,
                done_bytes: 2_345 * MB,
                total_bytes: 5_570 * MB,
                bytes_per_sec: Some(12_400_000),
                eta: Some(Duration::from_secs(4 * 60 + 20)),
            }),
        ),
        (
            "backing-up-start",
            Screen::BackingUp(BackupProgress {
                phase: "Preparing".into(),
                permille: 0,
                done_bytes: 0,
                total_bytes: 0,
                bytes_per_sec: None,
                eta: None,
            }),
        ),
        ("saving", Screen::Saving),
        (
            "verifying",
            Screen::Verifying {
                permille: Some(640),
            },
        ),
        (
            "done",
            Screen::Done {
                new_bytes: 1_234 * MB,
                duration: Duration::from_secs(12 * 60 + 31),
            },
        ),
        (
            "stored-raw",
            Screen::StoredRaw {
                new_bytes: 987 * MB,
            },
        ),
        ("error-drive-full", Screen::Error(ErrorScreen::DriveFull)),
        (
            "error-drive-removed",
            Screen::Error(ErrorScreen::DriveRemoved),
        ),
        (
            "error-phone-unplugged",
            Screen::Error(ErrorScreen::PhoneUnplugged),
        ),
        (
            "error-phone-locked",
            Screen::Error(ErrorScreen::PhoneLockedTooLong),
        ),
        (
            "error-wrong-password",
            Screen::Error(ErrorScreen::WrongPassword),
        ),
        (
            "error-trust-denied",
            Screen::Error(ErrorScreen::TrustDenied),
        ),
        (
            "error-drive-unreadable",
            Screen::Error(ErrorScreen::DriveUnreadable),
        ),
        ("error-no-tpm", Screen::Error(ErrorScreen::NoTpm)),
        (
            "error-not-cradle-drive",
            Screen::Error(ErrorScreen::NotCradleDrive),
        ),
        (
            "error-drive-password",
            Screen::Error(ErrorScreen::DrivePassword),
        ),
        (
            "error-other",
            Screen::Error(ErrorScreen::Other {
                code: "E-USB-3".into(),
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_every_variant_with_unique_names() {
        let s = samples();
        let mut names: Vec<_> = s.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), s.len());
        // 13 screen kinds + 11 error causes must all appear.
        let mut kinds: Vec<&Screen> = Vec::new();
        for (_, screen) in &s {
            if !kinds.iter().any(|k| k.same_kind(screen)) {
                kinds.push(screen);
            }
        }
        assert_eq!(kinds.len(), 12 + 11);
    }

    #[test]
    fn progress_ticks_are_not_a_new_kind() {
        let a = Screen::Passcode { seconds_left: 3 };
        assert!(a.same_kind(&Screen::Passcode { seconds_left: 2 }));
        assert!(!a.same_kind(&Screen::Saving));
        assert!(
            !Screen::Error(ErrorScreen::NoTpm).same_kind(&Screen::Error(ErrorScreen::DriveFull))
        );
        assert!(a.keeps_awake());
        assert!(!Screen::NoDrive.keeps_awake());
    }
}
