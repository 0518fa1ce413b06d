//! The box's brain as a pure state machine: events (phones, drive, pairing, progress, errors)
//! go in with the time, the `Screen` to show and the `Action`s for the I/O shell come out.
//!
//! Rules it enforces: one backup at a time, other phones wait their turn; a phone not on the
//! allow-list is ignored; a drive is used only when it is a Cradle drive (repository or label);
//! unencrypted phones get encryption turned on with the box's password when it has one; a phone
//! whose backup password the box does not know is still backed up (raw) and the screen says so;
//! "safe to remove" appears only once the drive is synced and unmounted. Events from a job that
//! was abandoned (unplug, drive pulled) are recognised by their job id and ignored.

use crate::display::{BackupProgress, ErrorScreen, PhoneSummary, ProgressModel, Screen};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Identifies one backup attempt; events of older attempts are ignored.
pub type JobId = u64;

/// How long a phone waits for its passcode before giving up when it does not say.
pub const DEFAULT_PASSCODE_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest phone name kept (names come from the phone).
pub const MAX_NAME_LEN: usize = 64;

/// What the shell found on a drive that was plugged in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriveKind {
    /// It already holds a Cradle repository (or backup folder).
    Cradle,
    /// It carries the label the owner chose for Cradle: empty but ours to use.
    Labelled,
    /// Anything else: never written, never formatted.
    Unknown,
    /// It could not be mounted or read.
    Unreadable,
}

/// Why a job ended without a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The phone went away (cable pulled, link died).
    PhoneGone,
    /// The drive went away or failed writing.
    DriveGone,
    /// No room left on the drive.
    DriveFull,
    /// The owner tapped "Don't Trust".
    TrustDenied,
    /// The phone stayed locked / the passcode was not entered in time.
    PhoneLocked,
    /// The phone refused to turn encryption on.
    EncryptionRefused,
    /// The drive's repository does not open with the box's password (or the box has none).
    DrivePassword,
    /// The drive's Cradle folder holds foreign files and no repository: never written.
    NotCradleDrive,
    /// Anything else, with a short code for the screen and a message for the log.
    Other {
        /// Short code shown on the OLED.
        code: String,
        /// One line for the log and status (never a secret).
        message: String,
    },
}

impl Failure {
    fn screen(&self) -> ErrorScreen {
        match self {
            Failure::PhoneGone => ErrorScreen::PhoneUnplugged,
            Failure::DriveGone => ErrorScreen::DriveRemoved,
            Failure::DriveFull => ErrorScreen::DriveFull,
            Failure::TrustDenied => ErrorScreen::TrustDenied,
            Failure::PhoneLocked | Failure::EncryptionRefused => ErrorScreen::PhoneLockedTooLong,
            Failure::DrivePassword => ErrorScreen::DrivePassword,
            Failure::NotCradleDrive => ErrorScreen::NotCradleDrive,
            Failure::Other { code, .. } => ErrorScreen::Other { code: code.clone() },
        }
    }

    /// Short machine-readable name for logs and status.
    pub fn code(&self) -> String {
        match self {
            Failure::PhoneGone => "phone-unplugged".into(),
            Failure::DriveGone => "drive-removed".into(),
            Failure::DriveFull => "drive-full".into(),
            Failure::TrustDenied => "trust-denied".into(),
            Failure::PhoneLocked => "phone-locked".into(),
            Failure::EncryptionRefused => "encryption-refused".into(),
            Failure::DrivePassword => "drive-password".into(),
            Failure::NotCradleDrive => "not-a-cradle-drive".into(),
            Failure::Other { code, .. } => code.clone(),
        }
    }
}

/// What a job reports. The shell wraps each in [`Event::Job`] with its job id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEvent {
    /// The phone shows "Trust This Computer?" (or must be unlocked first to show it).
    TrustPending,
    /// Paired (or already paired).
    TrustAccepted,
    /// Lockdown answered: the phone's name and whether its backups are encrypted.
    Identified {
        /// DeviceName.
        name: String,
        /// WillEncrypt.
        will_encrypt: bool,
    },
    /// The phone asks for its passcode and gives up after `timeout`.
    PasscodeRequested {
        /// How long the phone waits.
        timeout: Duration,
    },
    /// The passcode prompt went away.
    PasscodeDismissed,
    /// Backup encryption is now on.
    EncryptionEnabled,
    /// Transfer figures.
    Progress {
        /// Bytes received.
        done_bytes: u64,
        /// Bytes expected (grows).
        total_bytes: u64,
    },
    /// The phone's part is over: everything is received (the phone may go).
    Received {
        /// Files received.
        files: u64,
        /// Bytes received.
        bytes: u64,
    },
    /// Verifying what was stored.
    Verifying {
        /// Per mille, when known.
        permille: Option<u16>,
    },
    /// Stored and verified.
    Verified {
        /// New bytes written to the drive.
        new_bytes: u64,
        /// Whether the box holds the password the backup is encrypted with (false: stored raw).
        password_known: bool,
        /// Whether the backup is encrypted at all.
        encrypted: bool,
        /// The snapshot made (hex id), when the drive holds a repository.
        snapshot: Option<String>,
    },
    /// The drive is synced and unmounted: safe to remove.
    Unmounted,
    /// The job failed.
    Failed(Failure),
}

/// Everything the machine reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start-up finished (leaves the Boot screen).
    Started,
    /// A drive appeared (already classified by the shell), with its free space and the last
    /// backups it records (UDID → (name, unix seconds)).
    DriveAttached {
        kind: DriveKind,
        free_bytes: u64,
        history: BTreeMap<String, (String, u64)>,
    },
    /// The drive is gone.
    DriveRemoved,
    /// Fresh free-space figure.
    DriveFree { free_bytes: u64 },
    /// A phone was plugged in.
    PhoneAttached { udid: String },
    /// A phone was unplugged.
    PhoneDetached { udid: String },
    /// Whether the box has a default password (secrets looked up by the shell).
    DefaultPassword { available: bool },
    /// A job's report.
    Job(JobId, JobEvent),
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Mount the drive if needed, connect to the phone (pairing if needed), identify it.
    StartJob { job: JobId, udid: String },
    /// Turn the phone's backup encryption on with the box's default password.
    EnableEncryption { job: JobId },
    /// Run the backup, then ingest and verify, then sync and unmount.
    Backup { job: JobId },
    /// Stop the job (it is abandoned; its later events are ignored).
    Cancel { job: JobId },
    /// Sync and unmount the drive; when `job` is given, report `JobEvent::Unmounted` for it.
    ReleaseDrive { job: Option<JobId> },
    /// Append a line to the run log on the drive.
    Record(RunRecord),
}

/// One line of the run log (and the last result per phone in status).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// "start" or "end".
    pub event: String,
    pub udid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Unix seconds.
    pub time: u64,
    /// "ok", "ok-raw" (stored without the password) or a failure code; only on "end".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// Failure detail (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The verified snapshot (hex id), on a successful "end" into a repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// Settings of the machine.
#[derive(Clone, Debug, Default)]
pub struct MachineConfig {
    /// When set, only these UDIDs are backed up.
    pub allow: Option<BTreeSet<String>>,
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Connecting,
    Trust,
    EnablingEncryption,
    BackingUp,
    Saving,
    Verifying,
    Unmounting,
}

#[derive(Clone, Debug)]
struct Job {
    id: JobId,
    udid: String,
    name: Option<String>,
    stage: Stage,
    started: Instant,
    passcode_until: Option<Instant>,
    progress: Option<ProgressModel>,
    received: (u64, u64),
    verify_permille: Option<u16>,
    verified: Option<(u64, bool)>,
    snapshot: Option<String>,
}

/// What the last finished job left on the screen.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Done {
        udid: String,
        new_bytes: u64,
        duration: Duration,
    },
    StoredRaw {
        udid: String,
        new_bytes: u64,
    },
    Error {
        udid: Option<String>,
        screen: ErrorScreen,
    },
}

/// Per phone: what status and the Ready screen show.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PhoneStatus {
    pub udid: String,
    pub name: Option<String>,
    /// Unix seconds of the last verified backup.
    pub last_backup: Option<u64>,
    /// Result of the last attempt ("ok", "ok-raw", a failure code).
    pub last_result: Option<String>,
    /// Plugged in now.
    pub attached: bool,
    /// Not on the allow-list: ignored.
    pub ignored: bool,
    /// The last verified snapshot (hex id) made while the box was running.
    pub last_snapshot: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct PhoneState {
    name: Option<String>,
    last_backup: Option<u64>,
    last_result: Option<String>,
    last_snapshot: Option<String>,
    attached: bool,
    /// This attachment has had its attempt (no retry until replugged).
    attempted: bool,
}

#[derive(Clone, Debug)]
struct Drive {
    kind: DriveKind,
    free_bytes: u64,
}

/// The appliance state machine. Feed it with [`Appliance::handle`]; read [`Appliance::screen`].
#[derive(Clone, Debug)]
pub struct Appliance {
    config: MachineConfig,
    epoch: (Instant, u64),
    started: bool,
    drive: Option<Drive>,
    default_password: bool,
    phones: BTreeMap<String, PhoneState>,
    /// Attach order, for taking turns.
    queue: Vec<String>,
    job: Option<Job>,
    next_job: JobId,
    outcome: Option<Outcome>,
}

impl Appliance {
    /// A machine whose clock reads `unix_now` seconds at `now`.
    pub fn new(config: MachineConfig, now: Instant, unix_now: u64) -> Self {
        Self {
            config,
            epoch: (now, unix_now),
            started: false,
            drive: None,
            default_password: false,
            phones: BTreeMap::new(),
            queue: Vec::new(),
            job: None,
            next_job: 1,
            outcome: None,
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    fn allowed(&self, udid: &str) -> bool {
        self.config.allow.as_ref().is_none_or(|a| a.contains(udid))
    }

    fn drive_usable(&self) -> bool {
        self.drive
            .as_ref()
            .is_some_and(|d| matches!(d.kind, DriveKind::Cradle | DriveKind::Labelled))
    }

    /// Handles one event at `now`; returns what the shell must do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Started => self.started = true,
            Event::DefaultPassword { available } => self.default_password = available,
            Event::DriveAttached {
                kind,
                free_bytes,
                history,
            } => {
                for (udid, (name, time)) in history {
                    let p = self.phones.entry(udid).or_default();
                    if p.last_backup.is_none_or(|t| t < time) {
                        p.last_backup = Some(time);
                        p.last_result = Some("ok".into());
                    }
                    if p.name.is_none() {
                        p.name = Some(clip(&name));
                    }
                }
                self.drive = Some(Drive { kind, free_bytes });
                self.outcome = match kind {
                    DriveKind::Unknown => Some(Outcome::Error {
                        udid: None,
                        screen: ErrorScreen::NotCradleDrive,
                    }),
                    DriveKind::Unreadable => Some(Outcome::Error {
                        udid: None,
                        screen: ErrorScreen::DriveUnreadable,
                    }),
                    _ => None,
                };
            }
            Event::DriveFree { free_bytes } => {
                if let Some(d) = &mut self.drive {
                    d.free_bytes = free_bytes;
                }
            }
            Event::DriveRemoved => {
                self.drive = None;
                match self.job.take() {
                    // After Received the data is on the drive already; still, unflushed work
                    // is lost until the next run resumes it.
                    Some(job) if job.stage != Stage::Unmounting => {
                        out.push(Action::Cancel { job: job.id });
                        self.fail(now, &job, Failure::DriveGone, &mut out);
                        // The phone stays attached and is tried again with the next drive.
                        if let Some(p) = self.phones.get_mut(&job.udid) {
                            p.attempted = false;
                        }
                    }
                    Some(job) => {
                        // Verified and recorded already: only the unmount was missing.
                        self.show_verified(&job, now);
                    }
                    None => self.outcome = None,
                }
            }
            Event::PhoneAttached { udid } => {
                let allowed = self.allowed(&udid);
                let p = self.phones.entry(udid.clone()).or_default();
                p.attached = true;
                p.attempted = !allowed;
                self.queue.retain(|u| *u != udid);
                if allowed {
                    self.queue.push(udid);
                }
            }
            Event::PhoneDetached { udid } => {
                if let Some(p) = self.phones.get_mut(&udid) {
                    p.attached = false;
                    p.attempted = false;
                }
                self.queue.retain(|u| *u != udid);
                let leaves = self.job.as_ref().is_some_and(|j| {
                    j.udid == udid
                        && matches!(
                            j.stage,
                            Stage::Connecting
                                | Stage::Trust
                                | Stage::EnablingEncryption
                                | Stage::BackingUp
                        )
                });
                if leaves {
                    if let Some(job) = self.job.take() {
                        out.push(Action::Cancel { job: job.id });
                        self.fail(now, &job, Failure::PhoneGone, &mut out);
                        out.push(Action::ReleaseDrive { job: None });
                    }
                } else if self.job.is_none() && self.outcome_udid() == Some(udid.as_str()) {
                    // The owner took the phone: back to the overview.
                    self.outcome = None;
                }
            }
            Event::Job(id, ev) => self.job_event(now, id, ev, &mut out),
        }
        self.maybe_start(now, &mut out);
        out
    }

    fn outcome_udid(&self) -> Option<&str> {
        match &self.outcome {
            Some(Outcome::Done { udid, .. }) | Some(Outcome::StoredRaw { udid, .. }) => Some(udid),
            Some(Outcome::Error { udid, .. }) => udid.as_deref(),
            None => None,
        }
    }

    fn maybe_start(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.job.is_some() || !self.started || !self.drive_usable() {
            return;
        }
        let next = self
            .queue
            .iter()
            .find(|u| {
                self.phones
                    .get(*u)
                    .is_some_and(|p| p.attached && !p.attempted)
            })
            .cloned();
        let Some(udid) = next else { return };
        if let Some(p) = self.phones.get_mut(&udid) {
            p.attempted = true;
        }
        let id = self.next_job;
        self.next_job += 1;
        let name = self.phones.get(&udid).and_then(|p| p.name.clone());
        self.job = Some(Job {
            id,
            udid: udid.clone(),
            name: name.clone(),
            stage: Stage::Connecting,
            started: now,
            passcode_until: None,
            progress: None,
            received: (0, 0),
            verify_permille: None,
            verified: None,
            snapshot: None,
        });
        self.outcome = None;
        out.push(Action::Record(RunRecord {
            event: "start".into(),
            udid: udid.clone(),
            name,
            time: self.unix(now),
            result: None,
            bytes: None,
            files: None,
            new_bytes: None,
            duration_secs: None,
            message: None,
            snapshot: None,
        }));
        out.push(Action::StartJob { job: id, udid });
    }

    fn job_event(&mut self, now: Instant, id: JobId, ev: JobEvent, out: &mut Vec<Action>) {
        let Some(job) = self.job.as_mut().filter(|j| j.id == id) else {
            return;
        };
        match ev {
            JobEvent::TrustPending => job.stage = Stage::Trust,
            JobEvent::TrustAccepted => job.stage = Stage::Connecting,
            JobEvent::Identified { name, will_encrypt } => {
                let name = clip(&name);
                job.name = Some(name.clone());
                if let Some(p) = self.phones.get_mut(&job.udid) {
                    p.name = Some(name);
                }
                if !will_encrypt && self.default_password {
                    job.stage = Stage::EnablingEncryption;
                    out.push(Action::EnableEncryption { job: id });
                } else {
                    job.stage = Stage::BackingUp;
                    out.push(Action::Backup { job: id });
                }
            }
            JobEvent::PasscodeRequested { timeout } => job.passcode_until = Some(now + timeout),
            JobEvent::PasscodeDismissed => job.passcode_until = None,
            JobEvent::EncryptionEnabled => {
                job.passcode_until = None;
                if job.stage == Stage::EnablingEncryption {
                    job.stage = Stage::BackingUp;
                    out.push(Action::Backup { job: id });
                }
            }
            JobEvent::Progress {
                done_bytes,
                total_bytes,
            } => {
                job.passcode_until = None;
                job.stage = Stage::BackingUp;
                job.progress
                    .get_or_insert_with(|| ProgressModel::new(now, None))
                    .update(now, done_bytes, total_bytes);
            }
            JobEvent::Received { files, bytes } => {
                job.passcode_until = None;
                job.received = (files, bytes);
                job.stage = Stage::Saving;
            }
            JobEvent::Verifying { permille } => {
                job.stage = Stage::Verifying;
                job.verify_permille = permille;
            }
            JobEvent::Verified {
                new_bytes,
                password_known,
                encrypted,
                snapshot,
            } => {
                if job.stage == Stage::Unmounting {
                    return;
                }
                job.snapshot = snapshot;
                job.stage = Stage::Unmounting;
                job.verify_permille = Some(1000);
                job.verified = Some((new_bytes, password_known || !encrypted));
                let job = job.clone();
                self.record_verified(now, &job, out);
                out.push(Action::ReleaseDrive { job: Some(id) });
            }
            JobEvent::Unmounted => {
                if job.stage == Stage::Unmounting {
                    if let Some(job) = self.job.take() {
                        self.show_verified(&job, now);
                    }
                }
            }
            JobEvent::Failed(f) => {
                if let Some(job) = self.job.take() {
                    self.fail(now, &job, f, out);
                    out.push(Action::ReleaseDrive { job: None });
                }
            }
        }
    }

    /// Verified: the phone's last backup and the run log's end line.
    fn record_verified(&mut self, now: Instant, job: &Job, out: &mut Vec<Action>) {
        let (new_bytes, known) = job.verified.unwrap_or((0, true));
        let result = if known { "ok" } else { "ok-raw" };
        let time = self.unix(now);
        if let Some(p) = self.phones.get_mut(&job.udid) {
            p.last_backup = Some(time);
            p.last_result = Some(result.into());
            p.last_snapshot = job.snapshot.clone();
        }
        let duration = now.saturating_duration_since(job.started);
        out.push(Action::Record(RunRecord {
            event: "end".into(),
            udid: job.udid.clone(),
            name: job.name.clone(),
            time,
            result: Some(result.into()),
            bytes: Some(job.received.1),
            files: Some(job.received.0),
            new_bytes: Some(new_bytes),
            duration_secs: Some(duration.as_secs()),
            message: None,
            snapshot: job.snapshot.clone(),
        }));
    }

    /// Synced and unmounted: the verdict goes on the screen ("safe to remove").
    fn show_verified(&mut self, job: &Job, now: Instant) {
        let (new_bytes, known) = job.verified.unwrap_or((0, true));
        self.outcome = Some(if known {
            Outcome::Done {
                udid: job.udid.clone(),
                new_bytes,
                duration: now.saturating_duration_since(job.started),
            }
        } else {
            Outcome::StoredRaw {
                udid: job.udid.clone(),
                new_bytes,
            }
        });
    }

    fn fail(&mut self, now: Instant, job: &Job, f: Failure, out: &mut Vec<Action>) {
        let time = self.unix(now);
        if let Some(p) = self.phones.get_mut(&job.udid) {
            p.last_result = Some(f.code());
        }
        self.outcome = Some(Outcome::Error {
            udid: Some(job.udid.clone()),
            screen: f.screen(),
        });
        let message = match &f {
            Failure::Other { message, .. } => Some(message.clone()),
            _ => None,
        };
        out.push(Action::Record(RunRecord {
            event: "end".into(),
            udid: job.udid.clone(),
            name: job.name.clone(),
            time,
            result: Some(f.code()),
            bytes: Some(job.received.1),
            files: Some(job.received.0),
            new_bytes: None,
            duration_secs: Some(now.saturating_duration_since(job.started).as_secs()),
            message,
            snapshot: None,
        }));
    }

    /// The screen to show at `now`.
    pub fn screen(&self, now: Instant) -> Screen {
        if !self.started {
            return Screen::Boot {
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
        }
        if let Some(job) = &self.job {
            if let Some(until) = job.passcode_until {
                let left = until.saturating_duration_since(now);
                return Screen::Passcode {
                    seconds_left: u32::try_from(left.as_secs()).unwrap_or(u32::MAX),
                };
            }
            let name = || job.name.clone().unwrap_or_else(|| "iPhone".into());
            return match job.stage {
                Stage::Connecting => Screen::PhoneFound { name: name() },
                Stage::Trust => Screen::Trust { name: name() },
                Stage::EnablingEncryption => Screen::EnablingEncryption,
                Stage::BackingUp => Screen::BackingUp(match &job.progress {
                    Some(m) => m.progress(now, "Receiving files"),
                    None => BackupProgress {
                        phase: "Preparing".into(),
                        permille: 0,
                        done_bytes: 0,
                        total_bytes: 0,
                        bytes_per_sec: None,
                        eta: None,
                    },
                }),
                Stage::Saving => Screen::Saving,
                Stage::Verifying | Stage::Unmounting => Screen::Verifying {
                    permille: job.verify_permille,
                },
            };
        }
        match &self.outcome {
            Some(Outcome::Done {
                new_bytes,
                duration,
                ..
            }) => Screen::Done {
                new_bytes: *new_bytes,
                duration: *duration,
            },
            Some(Outcome::StoredRaw { new_bytes, .. }) => Screen::StoredRaw {
                new_bytes: *new_bytes,
            },
            Some(Outcome::Error { screen, .. }) => Screen::Error(screen.clone()),
            None => match &self.drive {
                None => Screen::NoDrive,
                Some(d) => {
                    let now_unix = self.unix(now);
                    let mut phones: Vec<(Option<u64>, PhoneSummary)> = self
                        .phones
                        .iter()
                        .filter(|(u, p)| self.allowed(u) && (p.last_backup.is_some() || p.attached))
                        .map(|(u, p)| {
                            (
                                p.last_backup,
                                PhoneSummary {
                                    name: p.name.clone().unwrap_or_else(|| short_udid(u)),
                                    last_verified_age: p
                                        .last_backup
                                        .map(|t| Duration::from_secs(now_unix.saturating_sub(t))),
                                },
                            )
                        })
                        .collect();
                    phones.sort_by_key(|p| std::cmp::Reverse(p.0));
                    Screen::Ready {
                        phones: phones.into_iter().map(|(_, s)| s).collect(),
                        free_bytes: d.free_bytes,
                    }
                }
            },
        }
    }

    /// One word for status: boot, no-drive, unknown-drive, idle, a job stage, done, error.
    pub fn state_name(&self) -> String {
        if !self.started {
            return "boot".into();
        }
        if let Some(job) = &self.job {
            if job.passcode_until.is_some() {
                return "passcode".into();
            }
            return serde_json::to_value(&job.stage)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
        }
        match (&self.outcome, &self.drive) {
            (Some(Outcome::Done { .. }), _) => "done".into(),
            (Some(Outcome::StoredRaw { .. }), _) => "done-raw".into(),
            (Some(Outcome::Error { .. }), _) => "error".into(),
            (None, None) => "no-drive".into(),
            (None, Some(_)) => "idle".into(),
        }
    }

    /// The phones known to the box (attached now or seen on the drive).
    pub fn phones(&self) -> Vec<PhoneStatus> {
        self.phones
            .iter()
            .map(|(u, p)| PhoneStatus {
                udid: u.clone(),
                name: p.name.clone(),
                last_backup: p.last_backup,
                last_result: p.last_result.clone(),
                attached: p.attached,
                ignored: !self.allowed(u),
                last_snapshot: p.last_snapshot.clone(),
            })
            .collect()
    }

    /// The running job's id and phone.
    pub fn current_job(&self) -> Option<(JobId, &str)> {
        self.job.as_ref().map(|j| (j.id, j.udid.as_str()))
    }

    /// The drive's kind, when one is present.
    pub fn drive(&self) -> Option<DriveKind> {
        self.drive.as_ref().map(|d| d.kind)
    }

    /// Whether the drive may be pulled now: no job uses it (the shell unmounts after each job).
    pub fn safe_to_remove(&self) -> bool {
        self.job.is_none()
    }
}

fn clip(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_LEN)
        .collect()
}

fn short_udid(udid: &str) -> String {
    format!("iPhone {}", udid.chars().take(8).collect::<String>())
}

#[cfg(test)]
mod tests;
