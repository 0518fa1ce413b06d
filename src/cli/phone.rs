//! Reaching the attached phone for the commands that talk to it (`cradle backup`, `cradle
//! password change-phone`): usbmuxd, the box's own USB, or a simulated phone in this process.

use anyhow::Context;
use clap::Args;
use cradle::ios_backup::kdf::{DEFAULT_DPIC, MAX_DPIC};
use cradle::lockdown::{DirPairStore, HostIdentity};
use cradle::sim::phone::Profile;
use cradle::sim::simulator::{Simulator, SimulatorOptions};
use cradle::transport::DeviceConnector;
use cradle::usb::muxd::{MuxdAddr, MuxdClient, MuxdError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The system-wide state folder (pair records, host identity) when it is writable.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/cradle";
/// Where pair records live inside the state folder.
pub const PAIR_RECORDS_DIR: &str = "lockdown";
/// The host identity (HostID, SystemBUID) inside the state folder.
pub const HOST_IDENTITY_FILE: &str = "host.plist";
/// Where `--sim` keeps its simulated phones' state (pairings, password) inside the state folder.
pub const SIM_STATE_DIR: &str = "sim";

/// How to reach the phone, and where this host keeps its pairings.
#[derive(Args, Debug)]
pub struct PhoneArgs {
    /// Reach the phone through usbmuxd at this address: a UNIX socket path or HOST:PORT.
    /// Default: $USBMUXD_SOCKET_ADDRESS, else /var/run/usbmuxd.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["usb", "sim"])]
    pub usbmuxd: Option<String>,
    /// The phone's UDID (default: the only attached phone).
    #[arg(long, short = 'u', value_name = "UDID")]
    pub udid: Option<String>,
    /// Talk to the phone on USB directly (no usbmuxd; needs access to /dev/bus/usb).
    #[arg(long, conflicts_with = "sim")]
    pub usb: bool,
    /// Use a simulated phone in this process instead: PROFILE[:SEED[:DAY]]
    /// (e.g. small:7:2), joined over the in-memory usbmux link. For development and demos.
    #[arg(long, value_name = "PROFILE[:SEED[:DAY]]", value_parser = parse_sim_spec)]
    pub sim: Option<SimSpec>,
    /// Keybag PBKDF2 rounds of the simulated phone (with --sim).
    #[arg(long, hide = true, default_value_t = DEFAULT_DPIC, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DPIC)))]
    pub sim_dpic: u32,
    /// Pull the simulated cable after this many bytes (with --sim; for testing).
    #[arg(long, hide = true, value_name = "BYTES")]
    pub sim_unplug_after: Option<u64>,
    /// Pair records and this host's identity. Default: /var/lib/cradle when writable, else
    /// $XDG_STATE_HOME/cradle (~/.local/state/cradle).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long to wait for "Trust This Computer?" to be answered, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub trust_timeout: u64,
}

/// This host's state folder (created), pair records and identity.
pub struct HostState {
    pub dir: PathBuf,
    pub pairs: DirPairStore,
    pub host: HostIdentity,
}

/// Opens (creating if needed) the state folder given or the default one.
pub fn open_host_state(given: Option<&Path>) -> anyhow::Result<HostState> {
    let state = state_dir(given);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating the state folder {}", state.display()))?;
    let pairs = DirPairStore::new(state.join(PAIR_RECORDS_DIR))
        .with_context(|| format!("opening the pair records in {}", state.display()))?;
    let host = HostIdentity::load_or_create(
        &state.join(HOST_IDENTITY_FILE),
        Some(host_name().unwrap_or_else(|| "cradle".into())),
    )
    .with_context(|| format!("reading this host's identity in {}", state.display()))?;
    Ok(HostState {
        dir: state,
        pairs,
        host,
    })
}

fn host_name() -> Option<String> {
    let n = std::fs::read_to_string("/etc/hostname").ok()?;
    let n = n.trim();
    (!n.is_empty()).then(|| n.to_string())
}

/// `--sim PROFILE[:SEED[:DAY]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSpec {
    pub profile: Profile,
    pub seed: u64,
    pub day: u32,
}

pub fn parse_sim_spec(s: &str) -> Result<SimSpec, String> {
    let mut parts = s.split(':');
    let profile = parts
        .next()
        .unwrap_or_default()
        .parse::<Profile>()
        .map_err(|e| e.to_string())?;
    let seed = match parts.next() {
        Some(p) => p
            .parse::<u64>()
            .map_err(|_| format!("{p:?} is not a seed (a number)"))?,
        None => 1,
    };
    let day = match parts.next() {
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|&d| d >= 1)
            .ok_or_else(|| format!("{p:?} is not a day (1 or more)"))?,
        None => 1,
    };
    if parts.next().is_some() {
        return Err("expected PROFILE[:SEED[:DAY]]".into());
    }
    Ok(SimSpec { profile, seed, day })
}

/// The state folder: the one given, /var/lib/cradle when writable, else the user's.
pub fn state_dir(given: Option<&Path>) -> PathBuf {
    if let Some(d) = given {
        return d.to_path_buf();
    }
    let sys = Path::new(SYSTEM_STATE_DIR);
    if rustix::fs::access(sys, rustix::fs::Access::WRITE_OK).is_ok() {
        return sys.to_path_buf();
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cradle")
}

/// A connected phone, whichever way it was reached. Kept alive for the whole run.
pub enum Connection {
    Muxd(cradle::usb::muxd::MuxdDevice),
    Usb(Arc<cradle::usb::MuxHost>),
    Sim {
        phone: cradle::sim::InMemoryPhone,
        sim: Arc<Simulator>,
    },
}

/// A simulated phone's pairings and password are saved however the run ends, so the next run
/// (another day) finds this host still trusted.
impl Drop for Connection {
    fn drop(&mut self) {
        if let Connection::Sim { phone, sim } = self {
            phone.detach();
            if let Err(e) = sim.shutdown() {
                tracing::warn!(error = %e, "saving the simulated phone's state");
            }
        }
    }
}

impl Connection {
    pub fn connector(&self) -> &dyn DeviceConnector {
        match self {
            Connection::Muxd(d) => d,
            Connection::Usb(h) => h.as_ref(),
            Connection::Sim { phone, .. } => phone,
        }
    }
}

pub fn connect(args: &PhoneArgs, state: &Path) -> anyhow::Result<Connection> {
    if let Some(spec) = args.sim {
        let mut opts = SimulatorOptions::new(spec.seed, spec.profile, spec.day);
        opts.dpic = args.sim_dpic;
        opts.state_dir = Some(
            state
                .join(SIM_STATE_DIR)
                .join(format!("{}-{}", spec.profile, spec.seed)),
        );
        let sim = Simulator::new(opts).context("starting the simulated iPhone")?;
        sim.agent().on_report(|r| eprintln!("simulated phone: {r}"));
        let phone =
            cradle::sim::attach_in_memory(sim.clone()).context("attaching the simulated iPhone")?;
        if let Some(n) = args.sim_unplug_after {
            phone.cable().disconnect_after(n);
        }
        return Ok(Connection::Sim { phone, sim });
    }
    if args.usb {
        let host = cradle::usb::open_usb_device(args.udid.as_deref()).map_err(|e| match e {
            cradle::usb::UsbDiscoverError::NoDevice | cradle::usb::UsbDiscoverError::List(_) => {
                anyhow::anyhow!("{e}: plug it in with a data cable and unlock it")
            }
            cradle::usb::UsbDiscoverError::Open { .. } => {
                anyhow::anyhow!("{e}: run as root, or stop usbmuxd, which holds the phone")
            }
            other => anyhow::anyhow!("{other}"),
        })?;
        return Ok(Connection::Usb(host));
    }
    let client = match &args.usbmuxd {
        Some(s) => MuxdClient::new(MuxdAddr::parse(s).ok_or_else(|| {
            anyhow::anyhow!("--usbmuxd {s:?}: expected a UNIX socket path or HOST:PORT")
        })?),
        None => MuxdClient::from_env(),
    };
    let addr = client.addr().to_string();
    let devices = client.list_devices().map_err(|e| match e {
        MuxdError::Unreachable { .. } => anyhow::anyhow!(
            "{e}: is usbmuxd running? (start it, pass --usbmuxd ADDR, or use --usb)"
        ),
        other => anyhow::anyhow!("{other}"),
    })?;
    // A phone seen both on USB and over the network is listed twice; prefer the cable.
    let mut udids: Vec<&str> = devices
        .iter()
        .filter(|d| d.connection_type == "USB")
        .map(|d| d.udid.as_str())
        .collect();
    if udids.is_empty() {
        udids = devices.iter().map(|d| d.udid.as_str()).collect();
    }
    udids.dedup();
    let udid = match (&args.udid, udids.as_slice()) {
        (Some(u), _) => u.clone(),
        (None, []) => anyhow::bail!(
            "no iPhone attached to usbmuxd at {addr}: plug it in with a data cable and unlock it"
        ),
        (None, [one]) => one.to_string(),
        (None, many) => anyhow::bail!(
            "{} devices attached to usbmuxd at {addr} ({}): choose one with --udid",
            many.len(),
            many.join(", ")
        ),
    };
    let dev = client.device(&udid).map_err(|e| match e {
        MuxdError::NoSuchDevice(_) => anyhow::anyhow!(
            "no device with UDID {udid} is attached to usbmuxd at {addr} (attached: {})",
            if udids.is_empty() {
                "none".to_string()
            } else {
                udids.join(", ")
            }
        ),
        other => anyhow::anyhow!("{other}"),
    })?;
    Ok(Connection::Muxd(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_spec() {
        assert_eq!(
            parse_sim_spec("small").unwrap(),
            SimSpec {
                profile: Profile::Small,
                seed: 1,
                day: 1
            }
        );
        assert_eq!(
            parse_sim_spec("tiny:7:3").unwrap(),
            SimSpec {
                profile: Profile::Tiny,
                seed: 7,
                day: 3
            }
        );
        assert!(parse_sim_spec("tiny:7:0").is_err());
        assert!(parse_sim_spec("huge").is_err());
        assert!(parse_sim_spec("tiny:x").is_err());
        assert!(parse_sim_spec("tiny:1:1:1").is_err());
    }

    #[test]
    fn state_dir_given_wins() {
        assert_eq!(state_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
    }
}
