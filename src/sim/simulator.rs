//! A whole simulated iPhone: the synthetic phone of one day, lockdownd, the side services and the
//! backup agent on one `SimDevice`, with its pairing and password state optionally kept on disk.
//!
//! The state folder lets the simulator be stopped and started again on another day while the
//! hosts' pair records stay valid: it keeps the paired hosts (certificates, escrow bags), the
//! backup password, and (in `lockdown/`) the usbmuxd facade's pair records and BUID. It is test
//! equipment: the password is stored in clear there (file mode 0600).

use crate::lockdown::certs::CertError;
use crate::password::Password;
use crate::sim::agent::{AgentConfig, BackupAgent};
use crate::sim::device::{DeviceIdentity, PairedHost, SimDevice, SimDeviceConfig, TrustPolicy};
use crate::sim::phone::{Phone, Profile};
use crate::sim::services::{sim_app, SideServices};
use crate::usb::muxd::ServedDevice;
use plist::{Dictionary, Value};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use zeroize::Zeroizing;

/// USB product id the simulator reports (an iPhone; hosts accept 0x1290–0x12AF).
pub const PRODUCT_ID: u16 = 0x12a8;
/// The device state file inside the state folder.
pub const STATE_FILE: &str = "device.plist";
/// The folder (inside the state folder) for the usbmuxd facade's pair records.
pub const PAIR_RECORD_DIR: &str = "lockdown";
/// Largest state file read back.
const MAX_STATE_FILE: u64 = 16 * 1024 * 1024;
/// How often the state is checked for changes and saved.
const SAVE_INTERVAL: Duration = Duration::from_millis(250);

/// What the phone's backup encryption is at start.
#[derive(Debug, Clone)]
pub enum EncryptionChoice {
    /// As the state folder remembers it (off without one).
    Keep,
    /// On, with this password.
    On(Password),
    /// Off.
    Off,
}

/// How a simulator is built.
#[derive(Debug, Clone)]
pub struct SimulatorOptions {
    pub seed: u64,
    pub profile: Profile,
    pub day: u32,
    pub encryption: EncryptionChoice,
    /// Keybag PBKDF2 rounds (phones: 10,000,000).
    pub dpic: u32,
    pub trust: TrustPolicy,
    pub state_dir: Option<PathBuf>,
    /// How long the simulated user takes to type the passcode.
    pub passcode_delay: Duration,
}

impl SimulatorOptions {
    pub fn new(seed: u64, profile: Profile, day: u32) -> Self {
        SimulatorOptions {
            seed,
            profile,
            day,
            encryption: EncryptionChoice::Keep,
            dpic: crate::ios_backup::kdf::DEFAULT_DPIC,
            trust: TrustPolicy::Auto,
            state_dir: None,
            passcode_delay: Duration::ZERO,
        }
    }
}

/// Errors building a simulator or keeping its state.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// The device key or certificates could not be made (local fault).
    #[error("could not create the simulated device: {0}")]
    Device(#[from] CertError),
    /// The state folder could not be read or written.
    #[error("{}: {source}", path.display())]
    State { path: PathBuf, source: io::Error },
    /// The state file is malformed.
    #[error("{}: {detail}", path.display())]
    StateFormat { path: PathBuf, detail: String },
    /// The state folder belongs to another simulated phone.
    #[error("{}: this state belongs to device {found}, not {expected} (another --seed?)", path.display())]
    OtherDevice {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// A running simulated iPhone (without its usbmuxd facade).
pub struct Simulator {
    device: Arc<SimDevice>,
    agent: Arc<BackupAgent>,
    side: SideServices,
    state_dir: Option<PathBuf>,
    saved: Mutex<Option<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    saver: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("udid", &self.device.udid())
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// The lockdownd identity of a synthetic phone (the phone's own identity).
pub fn lockdown_identity(phone: &Phone) -> DeviceIdentity {
    phone.identity().clone()
}

impl Simulator {
    /// Builds the phone of `opts.day`, its device and services; loads the state folder.
    pub fn new(opts: SimulatorOptions) -> Result<Arc<Simulator>, SimulatorError> {
        let phone = Phone::new(opts.seed, opts.profile, opts.day);
        let mut cfg = SimDeviceConfig::new(lockdown_identity(&phone));
        cfg.trust = opts.trust;
        let device = SimDevice::new(cfg)?;
        if let Some(dir) = &opts.state_dir {
            fs::create_dir_all(dir).map_err(|source| SimulatorError::State {
                path: dir.clone(),
                source,
            })?;
            load_state(&device, &dir.join(STATE_FILE))?;
        }
        match &opts.encryption {
            EncryptionChoice::Keep => {}
            EncryptionChoice::On(pw) => device.set_backup_password(Some(pw.clone())),
            EncryptionChoice::Off => device.set_backup_password(None),
        }
        let apps = phone
            .identity()
            .installed_apps
            .iter()
            .map(|a| sim_app(&a.bundle_id, &a.display_name, true))
            .collect();
        let side = SideServices::new(apps);
        if let Err(status) = side.afc.seed_itunes_files() {
            tracing::warn!(
                ?status,
                "simulator: the media partition could not be seeded"
            );
        }
        for (name, handler) in side.handlers() {
            device.register_service(name, false, handler);
        }
        let agent = BackupAgent::new(
            phone,
            device.clone(),
            AgentConfig {
                dpic: opts.dpic,
                passcode_delay: opts.passcode_delay,
                notifications: Some(side.notifications.clone()),
                ..AgentConfig::default()
            },
        );
        agent.register(&device);
        let sim = Arc::new(Simulator {
            device,
            agent,
            side,
            state_dir: opts.state_dir,
            saved: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
            saver: Mutex::new(None),
        });
        if sim.state_dir.is_some() {
            sim.save_state()?;
            let weak = Arc::downgrade(&sim);
            let stop = sim.stop.clone();
            let t = std::thread::Builder::new()
                .name("sim-state".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(SAVE_INTERVAL);
                        let Some(sim) = weak.upgrade() else { return };
                        if let Err(e) = sim.save_state() {
                            tracing::warn!(error = %e, "simulator: state not saved");
                        }
                    }
                })
                .map_err(|source| SimulatorError::State {
                    path: PathBuf::from("state saver thread"),
                    source,
                })?;
            *sim.saver.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        }
        Ok(sim)
    }

    pub fn device(&self) -> &Arc<SimDevice> {
        &self.device
    }

    pub fn agent(&self) -> &Arc<BackupAgent> {
        &self.agent
    }

    pub fn side_services(&self) -> &SideServices {
        &self.side
    }

    pub fn udid(&self) -> &str {
        self.device.udid()
    }

    /// The device as the usbmuxd facade offers it.
    pub fn served_device(&self) -> ServedDevice {
        ServedDevice {
            udid: self.udid().to_string(),
            product_id: PRODUCT_ID,
            ports: self.device.clone(),
        }
    }

    /// Where the usbmuxd facade keeps pair records, when there is a state folder.
    pub fn pair_record_dir(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join(PAIR_RECORD_DIR))
    }

    /// Writes the state file if it changed since the last save.
    pub fn save_state(&self) -> Result<(), SimulatorError> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        let bytes = encode_state(&self.device);
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        if saved.as_deref() == Some(bytes.as_slice()) {
            return Ok(());
        }
        write_private(&dir.join(STATE_FILE), &bytes)?;
        *saved = Some(bytes);
        Ok(())
    }

    /// Stops the background saver and saves one last time.
    pub fn shutdown(&self) -> Result<(), SimulatorError> {
        self.stop.store(true, Ordering::SeqCst);
        let t = self.saver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
        self.save_state()
    }
}

fn data(d: &Dictionary, key: &str) -> Option<Vec<u8>> {
    d.get(key).and_then(Value::as_data).map(<[u8]>::to_vec)
}

fn string(d: &Dictionary, key: &str) -> Option<String> {
    d.get(key).and_then(Value::as_string).map(str::to_string)
}

fn encode_state(device: &SimDevice) -> Vec<u8> {
    let mut root = Dictionary::new();
    root.insert("UDID".into(), device.udid().into());
    let (hosts, password) = device.with_state(|s| {
        (
            s.paired_hosts.values().cloned().collect::<Vec<_>>(),
            s.backup_password.clone(),
        )
    });
    let hosts = hosts
        .into_iter()
        .map(|h| {
            let mut d = Dictionary::new();
            d.insert("HostID".into(), h.host_id.into());
            if let Some(b) = h.system_buid {
                d.insert("SystemBUID".into(), b.into());
            }
            if let Some(n) = h.host_name {
                d.insert("HostName".into(), n.into());
            }
            d.insert("RootCertificate".into(), Value::Data(h.root_cert_pem));
            d.insert("HostCertificate".into(), Value::Data(h.host_cert_pem));
            d.insert("DeviceCertificate".into(), Value::Data(h.device_cert_pem));
            d.insert("EscrowBag".into(), Value::Data(h.escrow_bag.to_vec()));
            Value::Dictionary(d)
        })
        .collect();
    root.insert("PairedHosts".into(), Value::Array(hosts));
    if let Some(pw) = password {
        root.insert(
            "BackupPassword".into(),
            Value::String(String::from_utf8_lossy(pw.expose()).into_owned()),
        );
    }
    let mut out = Vec::new();
    // Writing a dictionary of strings and data into a Vec cannot fail.
    let _ = Value::Dictionary(root).to_writer_xml(&mut out);
    out
}

fn load_state(device: &SimDevice, path: &Path) -> Result<(), SimulatorError> {
    let bad = |detail: &str| SimulatorError::StateFormat {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let bytes = match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SimulatorError::State {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(m) if m.len() > MAX_STATE_FILE => return Err(bad("the state file is too large")),
        Ok(_) => fs::read(path).map_err(|source| SimulatorError::State {
            path: path.to_path_buf(),
            source,
        })?,
    };
    let root = plist::Value::from_reader(io::Cursor::new(&bytes))
        .map_err(|e| bad(&e.to_string()))?
        .into_dictionary()
        .ok_or_else(|| bad("not a dictionary"))?;
    let udid = string(&root, "UDID").ok_or_else(|| bad("no UDID"))?;
    if udid != device.udid() {
        return Err(SimulatorError::OtherDevice {
            path: path.to_path_buf(),
            found: udid,
            expected: device.udid().to_string(),
        });
    }
    let mut hosts = Vec::new();
    for h in root
        .get("PairedHosts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let d = h
            .as_dictionary()
            .ok_or_else(|| bad("a paired host is not a dictionary"))?;
        let need = |k: &str| data(d, k).ok_or_else(|| bad(&format!("a paired host has no {k}")));
        hosts.push(PairedHost {
            host_id: string(d, "HostID").ok_or_else(|| bad("a paired host has no HostID"))?,
            system_buid: string(d, "SystemBUID"),
            host_name: string(d, "HostName"),
            root_cert_pem: need("RootCertificate")?,
            host_cert_pem: need("HostCertificate")?,
            device_cert_pem: need("DeviceCertificate")?,
            escrow_bag: Zeroizing::new(need("EscrowBag")?),
        });
    }
    let password = string(&root, "BackupPassword").map(Password::new);
    device.with_state(|s| {
        for h in hosts {
            s.paired_hosts.insert(h.host_id.clone(), h);
        }
        s.backup_password = password;
    });
    Ok(())
}

/// Writes `bytes` to `path` readable by the owner only, replacing it atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SimulatorError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let err = |source| SimulatorError::State {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = SimulatorOptions::new(3, Profile::Tiny, 1);
        opts.state_dir = Some(dir.path().to_path_buf());
        opts.encryption = EncryptionChoice::On(Password::new("pw"));
        let sim = Simulator::new(opts.clone()).unwrap();
        sim.device().with_state(|s| {
            s.paired_hosts.insert(
                "HOST-1".into(),
                PairedHost {
                    host_id: "HOST-1".into(),
                    system_buid: Some("BUID".into()),
                    host_name: None,
                    root_cert_pem: b"root".to_vec(),
                    host_cert_pem: b"host".to_vec(),
                    device_cert_pem: b"device".to_vec(),
                    escrow_bag: Zeroizing::new(vec![7; 32]),
                },
            );
        });
        sim.shutdown().unwrap();
        drop(sim);
        let mut opts2 = opts.clone();
        opts2.day = 2;
        opts2.encryption = EncryptionChoice::Keep;
        let sim2 = Simulator::new(opts2).unwrap();
        assert!(sim2.device().is_paired("HOST-1"));
        assert_eq!(sim2.device().backup_password(), Some(Password::new("pw")));
        assert_eq!(sim2.agent().phone().day(), 2);
        sim2.shutdown().unwrap();
        // Another phone refuses the folder.
        let mut other = opts;
        other.seed = 4;
        assert!(matches!(
            Simulator::new(other),
            Err(SimulatorError::OtherDevice { .. })
        ));
    }
}
