//! The daemon loop: gathers inputs (phones plugged and unplugged, the drive polled, job
//! reports), feeds the state machine, carries out its actions, keeps the display, the status
//! report and the service manager's watchdog up to date. One thread; jobs run on their own.

use super::destination::Destination;
use super::drive::{self, DriveWatch, Presence, CRADLE_DIR};
use super::job::{run_job, JobCommand, JobContext};
use super::machine::{Action, Appliance, DriveKind, Event, JobEvent, JobId, MachineConfig};
use super::status::{drive_kind_name, screen_name, DriveStatus, SecretsStatus, StatusReport};
use crate::backup2::run::RunOptions;
use crate::display::{BurnInConfig, Display, Panel, PanelError, Screen};
use crate::lockdown::{HostIdentity, PairStore};
use crate::sd_notify::{notify, NotifyState};
use crate::secrets::{SecretStore, SecretsError, Slot};
use crate::transport::DeviceConnector;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// A panel behind a box, so any back end (OLED, terminal, none, a test's fake) fits.
pub type BoxedPanel = Box<dyn Panel + Send>;
/// Opens (and reopens after a failure) the panel.
pub type PanelOpener = Box<dyn FnMut() -> Result<BoxedPanel, PanelError> + Send>;
/// Makes the destination for a drive mounted at the given root.
pub type DestinationFactory = Box<dyn Fn(&Path) -> Arc<dyn Destination> + Send>;
/// Called with every new screen (the demo's plain output, tests).
pub type ScreenObserver = Box<dyn FnMut(&Screen) + Send>;

/// How often the drive is polled.
pub const DRIVE_POLL: Duration = Duration::from_secs(1);
/// Longest wait for an abandoned job's thread before the drive is unmounted anyway.
pub const JOB_STOP_WAIT: Duration = Duration::from_secs(10);

/// What reaches the loop from other threads.
pub enum Input {
    /// A phone is plugged in and reachable through `conn`.
    PhoneAttached {
        udid: String,
        conn: Arc<dyn DeviceConnector>,
    },
    /// A phone went away.
    PhoneDetached { udid: String },
    /// A job's report.
    Job(JobId, JobEvent),
    /// Stop the loop.
    Stop,
}

/// A panel that shows nothing (`--display none`).
pub struct NullPanel;

impl Panel for NullPanel {
    fn show(&mut self, _: &Screen, _: (i32, i32)) -> Result<(), PanelError> {
        Ok(())
    }
    fn set_brightness(&mut self, _: crate::display::Brightness) -> Result<(), PanelError> {
        Ok(())
    }
    fn set_power(&mut self, _: bool) -> Result<(), PanelError> {
        Ok(())
    }
}

/// The pieces a daemon is built from.
pub struct DaemonParts {
    pub machine: MachineConfig,
    pub drive: Box<dyn DriveWatch>,
    pub destination: DestinationFactory,
    pub pair_store: Arc<dyn PairStore>,
    pub host: HostIdentity,
    pub secrets: Arc<dyn SecretStore + Send + Sync>,
    /// How `set` seals passwords, for status ("tpm2", "memory", …).
    pub secrets_mode: String,
    pub run_options: RunOptions,
    pub passcode_timeout: Duration,
    pub panel: PanelOpener,
    /// "oled", "terminal", "none", … for status.
    pub panel_kind: String,
    pub burn_in: BurnInConfig,
    /// Tell the service manager READY / WATCHDOG.
    pub notify: bool,
}

struct RunningJob {
    commands: Sender<JobCommand>,
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The daemon. Build with [`Daemon::new`], hand [`Daemon::sender`] to the phone watchers, then
/// [`Daemon::run`].
pub struct Daemon {
    m: Appliance,
    display: Display<BoxedPanel, PanelOpener>,
    panel_kind: String,
    drive: Box<dyn DriveWatch>,
    drive_present: bool,
    destination: DestinationFactory,
    current_dest: Option<Arc<dyn Destination>>,
    ctx: JobContext,
    secrets_mode: String,
    tx: Sender<Input>,
    rx: Receiver<Input>,
    job_tx: Sender<(JobId, JobEvent)>,
    job_rx: Receiver<(JobId, JobEvent)>,
    phones: HashMap<String, Arc<dyn DeviceConnector>>,
    jobs: HashMap<JobId, RunningJob>,
    status: Arc<Mutex<StatusReport>>,
    observer: Option<ScreenObserver>,
    last_screen: Option<Screen>,
    next_poll: Instant,
    notify: bool,
    watchdog: Option<(Duration, Instant)>,
    default_password: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Daemon {
    pub fn new(parts: DaemonParts) -> Self {
        let now = Instant::now();
        let m = Appliance::new(parts.machine, now, unix_now());
        let display = Display::new(parts.panel, now, parts.burn_in, m.screen(now));
        let (tx, rx) = mpsc::channel();
        let (job_tx, job_rx) = mpsc::channel();
        let placeholder: Arc<dyn Destination> =
            Arc::new(super::destination::FolderDestination::new("/nonexistent"));
        Daemon {
            m,
            display,
            panel_kind: parts.panel_kind,
            drive: parts.drive,
            drive_present: false,
            destination: parts.destination,
            current_dest: None,
            ctx: JobContext {
                pair_store: parts.pair_store,
                host: parts.host,
                secrets: parts.secrets,
                destination: placeholder,
                run_options: parts.run_options,
                passcode_timeout: parts.passcode_timeout,
            },
            secrets_mode: parts.secrets_mode,
            tx,
            rx,
            job_tx,
            job_rx,
            phones: HashMap::new(),
            jobs: HashMap::new(),
            status: Arc::new(Mutex::new(StatusReport::default())),
            observer: None,
            last_screen: None,
            next_poll: now,
            notify: parts.notify,
            watchdog: None,
            default_password: false,
        }
    }

    /// Where phone watchers (and tests) send their inputs.
    pub fn sender(&self) -> Sender<Input> {
        self.tx.clone()
    }

    /// The status report, kept current by the loop (for the status socket).
    pub fn status(&self) -> Arc<Mutex<StatusReport>> {
        self.status.clone()
    }

    /// Calls `f` with every new screen.
    pub fn observe(&mut self, f: ScreenObserver) {
        self.observer = Some(f);
    }

    /// Runs until [`Input::Stop`] arrives (or every sender is gone); cancels running jobs.
    pub fn run(mut self) {
        let now = Instant::now();
        let has_default = match self.ctx.secrets.get(&Slot::Default) {
            Ok(_) => true,
            Err(SecretsError::NotFound { .. }) => false,
            Err(e) => {
                tracing::warn!("the box default password cannot be read: {e}");
                false
            }
        };
        self.default_password = has_default;
        self.feed(
            now,
            Event::DefaultPassword {
                available: has_default,
            },
        );
        self.poll_drive(now);
        self.feed(now, Event::Started);
        if self.notify {
            let _ = notify(&[NotifyState::Ready, NotifyState::Status("ready")]);
            self.watchdog = crate::sd_notify::watchdog_interval().map(|i| (i / 2, now));
        }
        loop {
            let now = Instant::now();
            let wake = self
                .display
                .next_wakeup(now)
                .min(self.next_poll)
                .min(now + Duration::from_millis(500));
            let timeout = wake.saturating_duration_since(now);
            // Job reports first (they are ordered), then other inputs.
            while let Ok((id, e)) = self.job_rx.try_recv() {
                self.feed(Instant::now(), Event::Job(id, e));
            }
            match self
                .rx
                .recv_timeout(timeout.min(Duration::from_millis(100)))
            {
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(input) => self.input(input),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= self.next_poll {
                self.poll_drive(now);
            }
            self.refresh(now);
            if let Some((every, last)) = self.watchdog {
                if now.duration_since(last) >= every {
                    let _ = notify(&[NotifyState::Watchdog]);
                    self.watchdog = Some((every, now));
                }
            }
        }
        if self.notify {
            let _ = notify(&[NotifyState::Stopping]);
        }
        for (_, j) in self.jobs.drain() {
            j.cancel.store(true, Ordering::SeqCst);
            let _ = j.commands.send(JobCommand::Cancel);
        }
        let _ = self.drive.release();
    }

    fn input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::PhoneAttached { udid, conn } => {
                self.phones.insert(udid.clone(), conn);
                self.display.event(now);
                self.feed(now, Event::PhoneAttached { udid });
            }
            Input::PhoneDetached { udid } => {
                self.phones.remove(&udid);
                self.display.event(now);
                self.feed(now, Event::PhoneDetached { udid });
            }
            Input::Job(id, e) => self.feed(now, Event::Job(id, e)),
            Input::Stop => {}
        }
    }

    fn poll_drive(&mut self, now: Instant) {
        self.next_poll = now + DRIVE_POLL;
        let present = self.drive.poll() == Presence::Present;
        if present == self.drive_present {
            if present && self.m.safe_to_remove() {
                let free = drive::free_bytes(self.drive.root());
                self.feed(now, Event::DriveFree { free_bytes: free });
            }
            return;
        }
        self.drive_present = present;
        self.display.event(now);
        if !present {
            self.current_dest = None;
            return self.feed(now, Event::DriveRemoved);
        }
        let (kind, free, history) = match self.drive.mount() {
            Ok(()) => {
                let kind = drive::classify(self.drive.as_ref());
                let root = self.drive.root().to_path_buf();
                let history = if kind == DriveKind::Cradle {
                    drive::history(&drive::read_run_log(&root.join(CRADLE_DIR)))
                } else {
                    Default::default()
                };
                let free = drive::free_bytes(&root);
                if let Err(e) = self.drive.release() {
                    tracing::warn!("{e}");
                }
                (kind, free, history)
            }
            Err(e) => {
                tracing::warn!("{e}");
                (DriveKind::Unreadable, 0, Default::default())
            }
        };
        if matches!(kind, DriveKind::Cradle | DriveKind::Labelled) {
            self.current_dest = Some((self.destination)(self.drive.root()));
        }
        self.feed(
            now,
            Event::DriveAttached {
                kind,
                free_bytes: free,
                history,
            },
        );
    }

    fn feed(&mut self, now: Instant, event: Event) {
        let actions = self.m.handle(now, event);
        for a in actions {
            self.act(a);
        }
        self.refresh(now);
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Record(_) if !self.drive_present => {}
            Action::Record(r) => {
                let dir = self.drive.root().join(CRADLE_DIR);
                let res = self
                    .drive
                    .mount()
                    .and_then(|()| drive::append_run_log(&dir, &r));
                if let Err(e) = res {
                    tracing::warn!("run log: {e}");
                }
            }
            Action::StartJob { job, udid } => self.start_job(job, &udid),
            Action::EnableEncryption { job } => self.command(job, JobCommand::EnableEncryption),
            Action::Backup { job } => self.command(job, JobCommand::Backup),
            Action::Cancel { job } => {
                if let Some(j) = self.jobs.get(&job) {
                    j.cancel.store(true, Ordering::SeqCst);
                    let _ = j.commands.send(JobCommand::Cancel);
                }
            }
            Action::ReleaseDrive { job } => {
                self.reap(job);
                if let Err(e) = self.drive.release() {
                    tracing::warn!("{e}");
                }
                if let Some(id) = job {
                    let _ = self.job_tx.send((id, JobEvent::Unmounted));
                }
            }
        }
    }

    /// Waits for finished or abandoned job threads (but not for the one still reporting).
    fn reap(&mut self, keep_going: Option<JobId>) {
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            if Some(id) == keep_going || self.m.current_job().is_some_and(|(j, _)| j == id) {
                continue;
            }
            if let Some(j) = self.jobs.remove(&id) {
                let deadline = Instant::now() + JOB_STOP_WAIT;
                while !j.thread.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if j.thread.is_finished() {
                    let _ = j.thread.join();
                } else {
                    tracing::warn!("job {id} did not stop in time; unmounting anyway");
                }
            }
        }
    }

    fn command(&mut self, job: JobId, cmd: JobCommand) {
        if let Some(j) = self.jobs.get(&job) {
            let _ = j.commands.send(cmd);
        }
    }

    fn start_job(&mut self, id: JobId, udid: &str) {
        let fail = |d: &mut Self, message: String| {
            let _ = d.job_tx.send((
                id,
                JobEvent::Failed(super::machine::Failure::Other {
                    code: "E-START".into(),
                    message,
                }),
            ));
        };
        let Some(conn) = self.phones.get(udid).cloned() else {
            return fail(self, format!("phone {udid} is gone"));
        };
        if let Err(e) = self.drive.mount() {
            return fail(self, e.to_string());
        }
        let Some(dest) = self.current_dest.clone() else {
            return fail(self, "no destination on the drive".into());
        };
        let mut ctx = self.ctx.clone();
        ctx.destination = dest;
        let (ctx_tx, ctx_rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job_tx = self.job_tx.clone();
        let c = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || run_job(id, conn, ctx, ctx_rx, c, job_tx));
        match spawned {
            Ok(thread) => {
                self.jobs.insert(
                    id,
                    RunningJob {
                        commands: ctx_tx,
                        cancel,
                        thread,
                    },
                );
            }
            Err(e) => fail(self, format!("starting the job thread: {e}")),
        }
    }

    fn refresh(&mut self, now: Instant) {
        let screen = self.m.screen(now);
        let report = StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: self.m.state_name(),
            screen: screen_name(&screen).to_string(),
            drive: self.m.drive().map(|k| DriveStatus {
                kind: drive_kind_name(k).to_string(),
                root: self.drive.root().to_path_buf(),
                free_bytes: match &screen {
                    Screen::Ready { free_bytes, .. } => *free_bytes,
                    _ => drive::free_bytes(self.drive.root()),
                },
                safe_to_remove: self.m.safe_to_remove(),
                destination: self
                    .current_dest
                    .as_ref()
                    .map(|d| d.describe())
                    .unwrap_or_else(|| "not used".into()),
            }),
            phones: self.m.phones().into_iter().map(Into::into).collect(),
            secrets: SecretsStatus {
                mode: self.secrets_mode.clone(),
                default_password: self.default_password,
            },
            display: if self.panel_kind == "none" {
                "none".into()
            } else if self.display.is_up() {
                format!("{} (up)", self.panel_kind)
            } else {
                format!("{} (down, retrying)", self.panel_kind)
            },
        };
        // Status first, so whoever reacts to a new screen reads a status that matches it.
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = report;
        if self.last_screen.as_ref() != Some(&screen) {
            if let Some(f) = &mut self.observer {
                f(&screen);
            }
            self.display.set_screen(now, screen.clone());
            self.last_screen = Some(screen.clone());
        } else {
            self.display.tick(now);
        }
    }
}
