//! The simulated device: its identity, shared state (paired hosts, escrow bags, backup
//! encryption), the port table that routes connections, and the services plugged into it.

use crate::transport::BoxStream;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Serves one accepted connection to a device port (runs on its own thread).
pub type ServiceHandler = Arc<dyn Fn(BoxStream) + Send + Sync>;

/// Where a connection to a device port goes. Implemented by the simulated device.
pub trait DevicePorts: Send + Sync {
    /// Takes an accepted stream to `port`. Returns `Err(stream)` when nothing listens there, so
    /// the caller can refuse the connection (usbmuxd Result 3 / an RST on the wire).
    fn accept(&self, port: u16, stream: BoxStream) -> Result<(), BoxStream>;
}

/// Lowest port handed out by StartService.
pub const FIRST_DYNAMIC_PORT: u16 = 49152;

/// A table of listening ports. Fixed ports (lockdownd) and ports opened by StartService.
#[derive(Default)]
pub struct PortTable {
    inner: Mutex<PortTableInner>,
}

#[derive(Default)]
struct PortTableInner {
    map: HashMap<u16, ServiceHandler>,
    next: u16,
}

impl PortTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Listens on a fixed port.
    pub fn bind(&self, port: u16, handler: ServiceHandler) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.map.insert(port, handler);
    }

    /// Listens on a fresh dynamic port and returns it. Ports stay valid after the lockdown
    /// session that opened them ends, as on a real device.
    pub fn open_dynamic(&self, handler: ServiceHandler) -> u16 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.next < FIRST_DYNAMIC_PORT {
            g.next = FIRST_DYNAMIC_PORT;
        }
        loop {
            let p = g.next;
            g.next = if g.next == u16::MAX {
                FIRST_DYNAMIC_PORT
            } else {
                g.next + 1
            };
            if let std::collections::hash_map::Entry::Vacant(e) = g.map.entry(p) {
                e.insert(handler);
                return p;
            }
        }
    }

    /// Stops listening on `port`.
    pub fn close(&self, port: u16) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.map.remove(&port);
    }

    /// The handler listening on `port`, if any.
    pub fn handler(&self, port: u16) -> Option<ServiceHandler> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.map.get(&port).cloned()
    }
}

impl DevicePorts for PortTable {
    fn accept(&self, port: u16, stream: BoxStream) -> Result<(), BoxStream> {
        match self.handler(port) {
            Some(h) => {
                // A failed spawn drops the stream, which the peer sees as a closed connection.
                let _ = std::thread::Builder::new()
                    .name(format!("sim-port-{port}"))
                    .spawn(move || h(stream));
                Ok(())
            }
            None => Err(stream),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated device
// ---------------------------------------------------------------------------------------------

use crate::lockdown::certs;
use crate::lockdown::tls::{self, TlsVersions};
use crate::password::Password;
use crate::transport::{DeviceConnector, LOCKDOWN_PORT};
use plist::{Dictionary, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{OnceLock, Weak};
use zeroize::Zeroizing;

/// The service name of the backup agent; StartService for it needs the pairing's EscrowBag.
pub const MOBILEBACKUP2_SERVICE: &str = "com.apple.mobilebackup2";
/// Most events kept in the device's log (older ones are dropped).
pub const MAX_EVENTS: usize = 4096;
/// Most service ports left open but not yet connected; older ones are closed. A host that
/// starts services and never connects cannot fill the port table.
pub const MAX_PENDING_SERVICE_PORTS: usize = 64;
/// Size of the escrow bag handed out at pairing.
pub const ESCROW_BAG_LEN: usize = 256;

/// Who the simulated phone is: the values lockdownd reports. One type with the synthetic
/// phone's identity, so the two cannot drift apart.
pub use crate::sim::phone::DeviceIdentity;

/// How the simulated user answers the trust dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustPolicy {
    /// Trusts at once.
    Auto,
    /// Answers `PairingDialogResponsePending` to the first N `Pair` requests of a host, then trusts.
    AfterPolls(u32),
    /// Taps "Don't Trust": `UserDeniedPairing`.
    Deny,
    /// The phone is locked at the first `Pair` (`PasswordProtected`); unlocked after that.
    LockedOnce,
}

/// How a simulated device is built.
#[derive(Debug, Clone)]
pub struct SimDeviceConfig {
    pub identity: DeviceIdentity,
    /// Seed of the device's RSA key (the same seed gives the same key).
    pub key_seed: u64,
    pub trust: TrustPolicy,
    /// TLS versions lockdownd and the services offer.
    pub tls_versions: TlsVersions,
    /// `EnableSessionSSL` in the StartSession reply (real devices: true).
    pub session_ssl: bool,
}

impl SimDeviceConfig {
    /// Auto-trusting, TLS 1.2+1.3, key seeded from the UDID.
    pub fn new(identity: DeviceIdentity) -> Self {
        let key_seed = identity
            .udid
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        SimDeviceConfig {
            identity,
            key_seed,
            trust: TrustPolicy::Auto,
            tls_versions: TlsVersions::Both,
            session_ssl: true,
        }
    }
}

/// A host the device has paired with.
#[derive(Clone, PartialEq, Eq)]
pub struct PairedHost {
    pub host_id: String,
    pub system_buid: Option<String>,
    pub host_name: Option<String>,
    pub root_cert_pem: Vec<u8>,
    pub host_cert_pem: Vec<u8>,
    /// Presented as the TLS server certificate to this host.
    pub device_cert_pem: Vec<u8>,
    pub escrow_bag: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PairedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairedHost")
            .field("host_id", &self.host_id)
            .field("system_buid", &self.system_buid)
            .field("host_name", &self.host_name)
            .finish_non_exhaustive()
    }
}

/// The device's mutable state, shared by lockdownd, the backup agent and the tests.
#[derive(Debug)]
pub struct DeviceState {
    pub trust: TrustPolicy,
    /// By HostID.
    pub paired_hosts: BTreeMap<String, PairedHost>,
    /// Lockdown values by domain; the root domain is `""`.
    pub domains: BTreeMap<String, Dictionary>,
    /// The backup password; `Some` means backups are encrypted (`WillEncrypt`).
    pub backup_password: Option<Password>,
    /// `Pair` requests answered "pending" so far, per HostID (for `TrustPolicy::AfterPolls`).
    pub pair_polls: BTreeMap<String, u32>,
    /// Whether the `LockedOnce` lock was already shown.
    pub unlocked: bool,
}

impl DeviceState {
    /// Whether backups are encrypted (`com.apple.mobile.backup` / `WillEncrypt`).
    pub fn will_encrypt(&self) -> bool {
        self.backup_password.is_some()
    }
}

/// Something that happened on the device, for tests and the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A connection reached a listening port.
    Connected {
        port: u16,
    },
    /// A connection to a port nobody listens on.
    Refused {
        port: u16,
    },
    /// lockdownd received a request.
    Request {
        name: String,
    },
    /// lockdownd could not parse a frame.
    BadFrame {
        detail: String,
    },
    PairPending {
        host_id: String,
    },
    PairDenied {
        host_id: String,
    },
    PairLocked {
        host_id: String,
    },
    Paired {
        host_id: String,
    },
    Unpaired {
        host_id: String,
    },
    SessionStarted {
        host_id: String,
        tls: Option<String>,
    },
    SessionStopped {
        host_id: String,
    },
    ServiceStarted {
        name: String,
        port: u16,
        ssl: bool,
    },
    ServiceConnected {
        name: String,
        port: u16,
    },
    /// A TLS handshake failed.
    TlsFailed {
        detail: String,
    },
}

/// The device's RSA key (never changes for a given seed).
pub struct DeviceKey {
    key: rsa::RsaPrivateKey,
    public_pem: String,
    pkcs8_der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

impl DeviceKey {
    /// `DevicePublicKey`: PKCS#1 PEM.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }
    /// The public half.
    pub fn public_key(&self) -> rsa::RsaPublicKey {
        self.key.to_public_key()
    }
    fn private_der(&self) -> rustls::pki_types::PrivateKeyDer<'static> {
        rustls::pki_types::PrivateKeyDer::Pkcs8(self.pkcs8_der.to_vec().into())
    }
}

/// The device key for `seed`, generated once per process.
fn device_key(seed: u64) -> Result<Arc<DeviceKey>, certs::CertError> {
    use rsa::pkcs8::EncodePrivateKey;
    static CACHE: OnceLock<Mutex<HashMap<u64, Arc<DeviceKey>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // Held while generating, so one seed is generated once even when devices start together.
    let mut g = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(k) = g.get(&seed) {
        return Ok(k.clone());
    }
    let key = certs::generate_rsa_key(&mut certs::seeded_rng(seed))?;
    let public_pem = certs::public_key_pkcs1_pem(&key.to_public_key())?;
    let pkcs8_der = Zeroizing::new(
        key.to_pkcs8_der()
            .map_err(|e| certs::CertError::Build(e.to_string()))?
            .as_bytes()
            .to_vec(),
    );
    let k = Arc::new(DeviceKey {
        key,
        public_pem,
        pkcs8_der,
    });
    g.insert(seed, k.clone());
    Ok(k)
}

/// A service plugged into the device.
#[derive(Clone)]
pub struct RegisteredService {
    /// Whether its connections speak TLS from the first byte (`EnableServiceSSL`).
    pub ssl: bool,
    pub handler: ServiceHandler,
}

/// A simulated iPhone: lockdownd on 62078 plus whatever services are registered.
pub struct SimDevice {
    identity: DeviceIdentity,
    config: SimDeviceConfig,
    key: Arc<DeviceKey>,
    ports: PortTable,
    services: Mutex<HashMap<String, RegisteredService>>,
    state: Mutex<DeviceState>,
    events: Mutex<VecDeque<DeviceEvent>>,
    pending_ports: Mutex<VecDeque<u16>>,
    me: Weak<SimDevice>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("udid", &self.identity.udid)
            .finish_non_exhaustive()
    }
}

fn root_values(id: &DeviceIdentity, key: &DeviceKey) -> Dictionary {
    let mut d = Dictionary::new();
    let mut put = |k: &str, v: Value| {
        d.insert(k.to_string(), v);
    };
    put("ActivationState", "Activated".into());
    put("BluetoothAddress", id.bluetooth_address.clone().into());
    put("BuildVersion", id.build_version.clone().into());
    put("CPUArchitecture", "arm64e".into());
    put("ChipID", Value::Integer(u64::from(id.chip_id).into()));
    put("DeviceClass", id.device_class.clone().into());
    put("DeviceColor", "1".into());
    put("DeviceName", id.device_name.clone().into());
    put(
        "DevicePublicKey",
        Value::Data(key.public_pem().as_bytes().to_vec()),
    );
    put("FirmwareVersion", "iBoot-10151.122.1".into());
    put("HardwareModel", id.hardware_model.clone().into());
    put("HostAttached", true.into());
    put("ModelNumber", "MQ0T3".into());
    put("PasswordProtected", false.into());
    put("ProductName", "iPhone OS".into());
    put("ProductType", id.product_type.clone().into());
    put("ProductVersion", id.product_version.clone().into());
    put("ProtocolVersion", "2".into());
    put("RegionInfo", "LL/A".into());
    put("SerialNumber", id.serial_number.clone().into());
    put("TelephonyCapability", true.into());
    put("TimeZone", id.time_zone.clone().into());
    put("TrustedHostAttached", true.into());
    put("UniqueChipID", Value::Integer(id.unique_chip_id.into()));
    put("UniqueDeviceID", id.udid.clone().into());
    put("WiFiAddress", id.wifi_address.clone().into());
    // Radio values are absent on devices without them (an empty string in the identity).
    for (k, v) in [
        ("PhoneNumber", &id.phone_number),
        ("InternationalMobileEquipmentIdentity", &id.imei),
        ("IntegratedCircuitCardIdentity", &id.iccid),
        ("MobileEquipmentIdentifier", &id.meid),
    ] {
        if !v.is_empty() {
            put(k, v.clone().into());
        }
    }
    d
}

impl SimDevice {
    /// Builds the device and starts listening with lockdownd on 62078. Generating the device
    /// key takes a fraction of a second the first time per seed; failure to do so is a local fault.
    pub fn new(config: SimDeviceConfig) -> Result<Arc<SimDevice>, certs::CertError> {
        let key = device_key(config.key_seed)?;
        let mut domains = BTreeMap::new();
        domains.insert(String::new(), root_values(&config.identity, &key));
        domains.insert("com.apple.mobile.backup".to_string(), Dictionary::new());
        let mut itunes = Dictionary::new();
        itunes.insert("MinITunesVersion".into(), "12.13".into());
        itunes.insert("MinMacOSVersion".into(), "10.15".into());
        domains.insert("com.apple.mobile.iTunes".to_string(), itunes);
        let mut itunes_settings = Dictionary::new();
        itunes_settings.insert("LibraryApplications".into(), Value::Array(Vec::new()));
        domains.insert("com.apple.iTunes".to_string(), itunes_settings);
        let state = DeviceState {
            trust: config.trust,
            paired_hosts: BTreeMap::new(),
            domains,
            backup_password: None,
            pair_polls: BTreeMap::new(),
            unlocked: false,
        };
        let dev = Arc::new_cyclic(|me| SimDevice {
            identity: config.identity.clone(),
            config,
            key,
            ports: PortTable::new(),
            services: Mutex::new(HashMap::new()),
            state: Mutex::new(state),
            events: Mutex::new(VecDeque::new()),
            pending_ports: Mutex::new(VecDeque::new()),
            me: me.clone(),
        });
        dev.ports.bind(
            LOCKDOWN_PORT,
            crate::sim::lockdownd::handler(dev.me.clone()),
        );
        Ok(dev)
    }

    /// Who the device is.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// The UDID.
    pub fn udid(&self) -> &str {
        &self.identity.udid
    }

    /// How it was built.
    pub fn config(&self) -> &SimDeviceConfig {
        &self.config
    }

    /// The device key (its public half is `DevicePublicKey`).
    pub fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// The port table (lockdownd at 62078 and the service ports StartService opens).
    pub fn ports(&self) -> &PortTable {
        &self.ports
    }

    /// Plugs a service in: StartService `name` opens a fresh port whose single connection goes to
    /// `handler` (over TLS when `ssl`). Registering a name again replaces the handler.
    pub fn register_service(&self, name: &str, ssl: bool, handler: ServiceHandler) {
        let mut g = self.services.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(name.to_string(), RegisteredService { ssl, handler });
    }

    /// The registered service `name`.
    pub fn service(&self, name: &str) -> Option<RegisteredService> {
        let g = self.services.lock().unwrap_or_else(|p| p.into_inner());
        g.get(name).cloned()
    }

    /// An in-memory connector to this device (each connection is a socket pair).
    pub fn connector(self: &Arc<Self>) -> SimConnector {
        SimConnector {
            device: self.clone(),
        }
    }

    /// Runs `f` on the shared state (under its lock; keep it short).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut DeviceState) -> R) -> R {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Whether backups are encrypted.
    pub fn will_encrypt(&self) -> bool {
        self.with_state(|s| s.will_encrypt())
    }

    /// The backup password, if encryption is on.
    pub fn backup_password(&self) -> Option<Password> {
        self.with_state(|s| s.backup_password.clone())
    }

    /// Sets (`Some`) or clears the backup password; `WillEncrypt` follows.
    pub fn set_backup_password(&self, password: Option<Password>) {
        self.with_state(|s| s.backup_password = password);
    }

    /// Changes how the simulated user answers the trust dialog (resets pending counters).
    pub fn set_trust_policy(&self, trust: TrustPolicy) {
        self.with_state(|s| {
            s.trust = trust;
            s.pair_polls.clear();
            s.unlocked = false;
        });
    }

    /// Whether `host_id` is paired.
    pub fn is_paired(&self, host_id: &str) -> bool {
        self.with_state(|s| s.paired_hosts.contains_key(host_id))
    }

    /// Forgets every paired host (as after "Reset Location & Privacy").
    pub fn forget_all_hosts(&self) {
        self.with_state(|s| s.paired_hosts.clear());
    }

    /// The escrow bag handed to `host_id` at pairing.
    pub fn escrow_bag(&self, host_id: &str) -> Option<Zeroizing<Vec<u8>>> {
        self.with_state(|s| s.paired_hosts.get(host_id).map(|h| h.escrow_bag.clone()))
    }

    /// Records an event.
    pub fn log(&self, e: DeviceEvent) {
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_EVENTS {
            g.pop_front();
        }
        g.push_back(e);
    }

    /// The events so far (oldest first; at most `MAX_EVENTS`).
    pub fn events(&self) -> Vec<DeviceEvent> {
        let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().cloned().collect()
    }

    /// How many events match `pred`.
    pub fn count_events(&self, pred: impl Fn(&DeviceEvent) -> bool) -> usize {
        let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().filter(|e| pred(e)).count()
    }

    /// How many lockdown requests named `name` arrived.
    pub fn request_count(&self, name: &str) -> usize {
        self.count_events(|e| matches!(e, DeviceEvent::Request { name: n } if n == name))
    }

    /// The TLS server configuration lockdownd and services use towards `host_id`: the device
    /// certificate that host made, with the device key.
    pub fn tls_server_config(
        &self,
        host_id: &str,
    ) -> Result<Arc<rustls::ServerConfig>, tls::TlsError> {
        let cert = self
            .with_state(|s| {
                s.paired_hosts
                    .get(host_id)
                    .map(|h| h.device_cert_pem.clone())
            })
            .ok_or(tls::TlsError::BadCertificate {
                what: "device certificate of an unknown host",
            })?;
        tls::server_config(&cert, self.key.private_der(), self.config.tls_versions)
    }

    /// Opens a one-connection port for `name` (StartService). The connection is wrapped in TLS
    /// towards `host_id` when the service asks for it.
    pub(crate) fn open_service_port(
        &self,
        name: &str,
        service: RegisteredService,
        host_id: &str,
    ) -> Result<u16, tls::TlsError> {
        let tls_config = if service.ssl {
            Some(self.tls_server_config(host_id)?)
        } else {
            None
        };
        let port_cell: Arc<OnceLock<u16>> = Arc::new(OnceLock::new());
        let cell = port_cell.clone();
        let me = self.me.clone();
        let name_owned = name.to_string();
        let handler: ServiceHandler = Arc::new(move |stream: BoxStream| {
            let Some(dev) = me.upgrade() else { return };
            let port = cell.get().copied().unwrap_or(0);
            // One connection per StartService, as on a real device.
            dev.ports.close(port);
            dev.log(DeviceEvent::ServiceConnected {
                name: name_owned.clone(),
                port,
            });
            let stream: BoxStream = match &tls_config {
                None => stream,
                Some(cfg) => match tls::TlsStream::accept_or_return(stream, cfg.clone()) {
                    Ok(s) => Box::new(s),
                    Err((e, sock)) => {
                        dev.log(DeviceEvent::TlsFailed {
                            detail: format!("{name_owned}: {e}"),
                        });
                        drop(sock);
                        return;
                    }
                },
            };
            (service.handler)(stream)
        });
        let port = self.ports.open_dynamic(handler);
        let _ = port_cell.set(port);
        let mut pending = self.pending_ports.lock().unwrap_or_else(|p| p.into_inner());
        pending.push_back(port);
        while pending.len() > MAX_PENDING_SERVICE_PORTS {
            if let Some(old) = pending.pop_front() {
                self.ports.close(old);
            }
        }
        Ok(port)
    }
}

impl DevicePorts for SimDevice {
    fn accept(&self, port: u16, stream: BoxStream) -> Result<(), BoxStream> {
        match self.ports.accept(port, stream) {
            Ok(()) => {
                self.log(DeviceEvent::Connected { port });
                Ok(())
            }
            Err(s) => {
                self.log(DeviceEvent::Refused { port });
                Err(s)
            }
        }
    }
}

/// Connects to a simulated device in memory: each `connect` is a Unix socket pair whose far end
/// goes to the device's port table.
#[derive(Debug, Clone)]
pub struct SimConnector {
    device: Arc<SimDevice>,
}

impl SimConnector {
    /// The device behind this connector.
    pub fn device(&self) -> &Arc<SimDevice> {
        &self.device
    }
}

impl DeviceConnector for SimConnector {
    fn udid(&self) -> &str {
        self.device.udid()
    }
    fn connect(&self, port: u16) -> std::io::Result<BoxStream> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        match self.device.accept(port, Box::new(b)) {
            Ok(()) => Ok(Box::new(a)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("nothing listens on device port {port}"),
            )),
        }
    }
}

#[cfg(test)]
mod sim_device_tests {
    use super::*;

    #[test]
    fn unknown_port_is_refused() {
        let dev = SimDevice::new(SimDeviceConfig::new(DeviceIdentity::example())).unwrap();
        let c = dev.connector();
        let e = c.connect(1234).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(c.connect(LOCKDOWN_PORT).is_ok());
        assert_eq!(
            dev.count_events(|e| matches!(e, DeviceEvent::Refused { port: 1234 })),
            1
        );
    }

    #[test]
    fn password_drives_will_encrypt() {
        let dev = SimDevice::new(SimDeviceConfig::new(DeviceIdentity::example())).unwrap();
        assert!(!dev.will_encrypt());
        dev.set_backup_password(Some(Password::new("secret")));
        assert!(dev.will_encrypt());
        assert_eq!(dev.backup_password(), Some(Password::new("secret")));
        dev.set_backup_password(None);
        assert!(!dev.will_encrypt());
    }

    #[test]
    fn pending_service_ports_are_bounded() {
        let dev = SimDevice::new(SimDeviceConfig::new(DeviceIdentity::example())).unwrap();
        let svc = RegisteredService {
            ssl: false,
            handler: Arc::new(|_s| {}),
        };
        let ports: Vec<u16> = (0..MAX_PENDING_SERVICE_PORTS + 5)
            .map(|_| dev.open_service_port("x", svc.clone(), "h").unwrap())
            .collect();
        assert!(dev.ports().handler(ports[0]).is_none());
        assert!(dev.ports().handler(ports[ports.len() - 1]).is_some());
    }
}
