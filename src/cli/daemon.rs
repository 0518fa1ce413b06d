//! `cradle daemon` (the box: phones on USB or a simulated one, the drive, the OLED, the status
//! socket, the service manager) and `cradle status` (what the daemon is doing).

use super::backup::SimSpec;
use anyhow::Context;
use clap::{Args, ValueEnum};
use cradle::appliance::config::{Config, DEFAULT_CONFIG};
use cradle::appliance::daemon::{DaemonParts, Input};
use cradle::appliance::status::{render_human, DEFAULT_STATUS_SOCKET};
use cradle::appliance::{
    plug_simulator, query_status, serve_status, spawn_usb_watcher, BoxedPanel, Daemon, DirDrive,
    DriveWatch, LabelDrive, MachineConfig, NullPanel, PanelOpener, RepoDestination,
    DEFAULT_PASSCODE_TIMEOUT,
};
use cradle::backup2::run::RunOptions;
use cradle::display::{open_oled, BurnInConfig, OledConfig, TerminalPanel};
use cradle::lockdown::{DirPairStore, HostIdentity};
use cradle::secrets::{SecretStore, SystemdCredsConfig, SystemdCredsStore};
use cradle::sim::simulator::{Simulator, SimulatorOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where the OLED picture goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DisplayKind {
    /// The SSD1306 on I2C.
    Oled,
    /// Drawn in this terminal.
    Terminal,
    /// Nowhere.
    None,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Settings file (a missing default file is fine).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Use this directory as the backup drive (instead of a labelled USB drive).
    #[arg(long, value_name = "DIR")]
    drive_dir: Option<PathBuf>,
    /// File-system label of the backup drive (default CRADLE).
    #[arg(long, value_name = "LABEL")]
    drive_label: Option<String>,
    /// Where the drive is mounted while in use (default /run/cradle/drive).
    #[arg(long, value_name = "DIR")]
    mount_point: Option<PathBuf>,
    /// Where the screens go (default oled).
    #[arg(long, value_enum)]
    display: Option<DisplayKind>,
    /// I2C bus of the OLED (default /dev/i2c-1).
    #[arg(long, value_name = "DEV")]
    i2c_bus: Option<PathBuf>,
    /// I2C address of the OLED (default 0x3C).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    i2c_address: Option<u8>,
    /// Only back up these phones (repeatable).
    #[arg(long = "allow", value_name = "UDID")]
    allow: Vec<String>,
    /// The status socket `cradle status` reads.
    #[arg(long, value_name = "PATH")]
    status_socket: Option<PathBuf>,
    /// Pair records and this box's identity (default /var/lib/cradle).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Where sealed passwords are kept.
    #[arg(long, value_name = "DIR", env = "CRADLE_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    /// Plug a simulated phone in at start instead of watching USB: PROFILE[:SEED[:DAY]].
    #[arg(long, value_name = "PROFILE[:SEED[:DAY]]", value_parser = super::backup::parse_sim_spec)]
    sim: Option<SimSpec>,
}

fn parse_addr(s: &str) -> Result<u8, String> {
    let n = match s.strip_prefix("0x") {
        Some(h) => u8::from_str_radix(h, 16),
        None => s.parse(),
    };
    n.ok()
        .filter(|a| *a < 0x80)
        .ok_or_else(|| format!("{s:?} is not a 7-bit I2C address"))
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The daemon's status socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_STATUS_SOCKET)]
    socket: PathBuf,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let report = query_status(&args.socket)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        print!("{}", render_human(&report, now));
    }
    Ok(ExitCode::SUCCESS)
}

/// The panel opener for a display kind.
pub fn panel_opener(kind: DisplayKind, oled: OledConfig) -> PanelOpener {
    match kind {
        DisplayKind::Oled => Box::new(move || open_oled(&oled).map(|p| Box::new(p) as BoxedPanel)),
        DisplayKind::Terminal => {
            Box::new(|| Ok(Box::new(TerminalPanel::new(std::io::stdout())) as BoxedPanel))
        }
        DisplayKind::None => Box::new(|| Ok(Box::new(NullPanel) as BoxedPanel)),
    }
}

pub fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let given = args.config != Path::new(DEFAULT_CONFIG);
    let cfg = Config::load(&args.config, !given)?;
    let state = args
        .state_dir
        .or(cfg.state_dir)
        .unwrap_or_else(|| PathBuf::from(super::backup::SYSTEM_STATE_DIR));
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating the state folder {}", state.display()))?;
    let pair_store = DirPairStore::new(state.join(super::backup::PAIR_RECORDS_DIR))
        .with_context(|| format!("opening the pair records in {}", state.display()))?;
    let host = HostIdentity::load_or_create(
        &state.join(super::backup::HOST_IDENTITY_FILE),
        Some("Cradle".into()),
    )
    .with_context(|| format!("reading this box's identity in {}", state.display()))?;

    let mut sc = SystemdCredsConfig::from_env();
    if let Some(d) = args.secrets_dir {
        sc.state_dir = d;
    }
    sc.allow_host_key = cfg.allow_host_key.unwrap_or(false);
    // Without sealed passwords the daemon still runs and says why (status, and the "drive
    // locked" screen when a phone is plugged in): the drive's repository needs the box's password.
    let (secrets, secrets_mode): (Arc<dyn SecretStore + Send + Sync>, String) =
        match SystemdCredsStore::open(sc) {
            Ok(s) => {
                let mode = s.mode().to_string();
                (Arc::new(s), mode)
            }
            Err(e) => {
                tracing::warn!("sealed passwords unavailable: {e}");
                (
                    Arc::new(cradle::appliance::MemorySecretStore::default()),
                    format!("unavailable ({e})"),
                )
            }
        };

    let label = args.drive_label.or(cfg.drive_label);
    let drive: Box<dyn DriveWatch> = match args.drive_dir.or(cfg.drive_dir) {
        Some(dir) => Box::new(DirDrive::new(dir, label)),
        None => Box::new(LabelDrive::new(
            label.as_deref().unwrap_or("CRADLE"),
            args.mount_point
                .or(cfg.drive_mount_point)
                .unwrap_or_else(|| PathBuf::from("/run/cradle/drive")),
        )),
    };
    let kind = match (args.display, cfg.display.as_deref()) {
        (Some(k), _) => k,
        (None, None | Some("oled")) => DisplayKind::Oled,
        (None, Some("terminal")) => DisplayKind::Terminal,
        (None, Some("none")) => DisplayKind::None,
        (None, Some(other)) => {
            anyhow::bail!("display.kind {other:?}: expected oled, terminal or none")
        }
    };
    let oled = OledConfig {
        bus: args
            .i2c_bus
            .or(cfg.i2c_bus)
            .unwrap_or_else(|| OledConfig::default().bus),
        address: args
            .i2c_address
            .or(cfg.i2c_address)
            .unwrap_or(cradle::display::DEFAULT_I2C_ADDRESS),
    };
    let allow: Vec<String> = if args.allow.is_empty() {
        cfg.allow.unwrap_or_default()
    } else {
        args.allow
    };
    let parts = DaemonParts {
        machine: MachineConfig {
            allow: (!allow.is_empty()).then(|| allow.into_iter().collect()),
        },
        drive,
        destination: Box::new(|root: &Path| {
            Arc::new(RepoDestination::new(root)) as Arc<dyn cradle::appliance::Destination>
        }),
        pair_store: Arc::new(pair_store),
        host,
        secrets,
        secrets_mode,
        run_options: RunOptions::default(),
        passcode_timeout: DEFAULT_PASSCODE_TIMEOUT,
        panel: panel_opener(kind, oled),
        panel_kind: format!("{kind:?}").to_lowercase(),
        burn_in: BurnInConfig::default(),
        notify: true,
    };
    let daemon = Daemon::new(parts);
    let tx = daemon.sender();
    let stop = Arc::new(AtomicBool::new(false));
    let socket = args
        .status_socket
        .or(cfg.status_socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATUS_SOCKET));
    let status_thread = serve_status(&socket, daemon.status(), stop.clone())
        .with_context(|| format!("opening the status socket {}", socket.display()))?;

    // Keep the simulated phone plugged in for the daemon's lifetime.
    let mut _sim_phone = None;
    match args.sim {
        Some(spec) => {
            let mut opts = SimulatorOptions::new(spec.seed, spec.profile, spec.day);
            opts.state_dir = Some(
                state
                    .join(super::backup::SIM_STATE_DIR)
                    .join(format!("{}-{}", spec.profile, spec.seed)),
            );
            let sim = Simulator::new(opts).context("starting the simulated iPhone")?;
            _sim_phone = Some(plug_simulator(&tx, sim).context("plugging the simulated iPhone")?);
        }
        None => {
            spawn_usb_watcher(tx.clone(), stop.clone()).context("watching USB")?;
        }
    }
    // SIGTERM/SIGINT stop the loop cleanly (jobs cancelled, drive unmounted).
    let tx_sig = tx.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
                let _ = tx_sig.send(Input::Stop);
            })
        })
        .context("starting the signal thread")?;
    daemon.run();
    stop.store(true, Ordering::SeqCst);
    let _ = status_thread.join();
    Ok(ExitCode::SUCCESS)
}
