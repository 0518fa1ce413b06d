//! Pair records (what a host keeps after pairing with one phone) and where they are stored.
//! The plist keys are the ones usbmuxd, libimobiledevice and pymobiledevice3 use, so records move between them.

use plist::{Dictionary, Value};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Largest pair record file accepted (a real one is about 10 KB).
pub const MAX_PAIR_RECORD_LEN: u64 = 1024 * 1024;

/// Why a pair record could not be read, written or stored.
#[derive(Debug, thiserror::Error)]
pub enum PairRecordError {
    /// The record is not a plist dictionary.
    #[error("the pair record is not a plist dictionary: {0}")]
    NotAPlist(String),
    /// A required key is absent or has the wrong type.
    #[error("the pair record lacks {0} (or it has the wrong type)")]
    MissingField(&'static str),
    /// The file is larger than any real record.
    #[error("{path}: the pair record is larger than {MAX_PAIR_RECORD_LEN} bytes")]
    TooLarge { path: PathBuf },
    /// A UDID that cannot be a file name (it comes from the device, so it is checked).
    #[error("{0:?} is not a valid device identifier")]
    BadUdid(String),
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A store that is not a directory (e.g. usbmuxd) failed.
    #[error("the pair record store failed: {0}")]
    Store(String),
}

/// Everything a host needs to talk to one paired device. PEM blobs are stored as plist `data`.
#[derive(Clone, PartialEq, Eq)]
pub struct PairRecord {
    /// This host's identifier at the device (uppercase UUID).
    pub host_id: String,
    /// The host system's BUID (usbmuxd `ReadBUID`).
    pub system_buid: String,
    pub root_cert_pem: Vec<u8>,
    pub root_key_pem: Zeroizing<Vec<u8>>,
    pub host_cert_pem: Vec<u8>,
    pub host_key_pem: Zeroizing<Vec<u8>>,
    pub device_cert_pem: Vec<u8>,
    /// From the Pair reply; needed to start mobilebackup2. It unlocks the phone's keybag, so it
    /// is kept as secret as the keys.
    pub escrow_bag: Option<Zeroizing<Vec<u8>>>,
    /// The device's `WiFiAddress`.
    pub wifi_mac: Option<String>,
}

impl fmt::Debug for PairRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairRecord")
            .field("host_id", &self.host_id)
            .field("system_buid", &self.system_buid)
            .field("root_key_pem", &"<redacted>")
            .field("host_key_pem", &"<redacted>")
            .field(
                "escrow_bag",
                &self.escrow_bag.as_ref().map(|_| "<redacted>"),
            )
            .field("wifi_mac", &self.wifi_mac)
            .finish_non_exhaustive()
    }
}

fn data_or_string(d: &Dictionary, key: &'static str) -> Result<Vec<u8>, PairRecordError> {
    crate::lockdown::protocol::bytes_field(d, key).ok_or(PairRecordError::MissingField(key))
}

fn string(d: &Dictionary, key: &'static str) -> Result<String, PairRecordError> {
    d.get(key)
        .and_then(Value::as_string)
        .map(str::to_string)
        .ok_or(PairRecordError::MissingField(key))
}

impl PairRecord {
    /// The record as a plist dictionary with the usbmuxd/libimobiledevice keys.
    pub fn to_dictionary(&self) -> Dictionary {
        let mut d = Dictionary::new();
        d.insert(
            "DeviceCertificate".into(),
            Value::Data(self.device_cert_pem.clone()),
        );
        d.insert(
            "HostCertificate".into(),
            Value::Data(self.host_cert_pem.clone()),
        );
        d.insert(
            "HostPrivateKey".into(),
            Value::Data(self.host_key_pem.to_vec()),
        );
        d.insert(
            "RootCertificate".into(),
            Value::Data(self.root_cert_pem.clone()),
        );
        d.insert(
            "RootPrivateKey".into(),
            Value::Data(self.root_key_pem.to_vec()),
        );
        d.insert("HostID".into(), Value::String(self.host_id.clone()));
        d.insert("SystemBUID".into(), Value::String(self.system_buid.clone()));
        if let Some(bag) = &self.escrow_bag {
            d.insert("EscrowBag".into(), Value::Data(bag.to_vec()));
        }
        if let Some(mac) = &self.wifi_mac {
            d.insert("WiFiMACAddress".into(), Value::String(mac.clone()));
        }
        d
    }

    /// Reads a record from a dictionary; PEM blobs may be data or strings.
    pub fn from_dictionary(d: &Dictionary) -> Result<Self, PairRecordError> {
        Ok(PairRecord {
            host_id: string(d, "HostID")?,
            system_buid: string(d, "SystemBUID")?,
            root_cert_pem: data_or_string(d, "RootCertificate")?,
            root_key_pem: Zeroizing::new(data_or_string(d, "RootPrivateKey")?),
            host_cert_pem: data_or_string(d, "HostCertificate")?,
            host_key_pem: Zeroizing::new(data_or_string(d, "HostPrivateKey")?),
            device_cert_pem: data_or_string(d, "DeviceCertificate")?,
            escrow_bag: crate::lockdown::protocol::bytes_field(d, "EscrowBag").map(Zeroizing::new),
            wifi_mac: d
                .get("WiFiMACAddress")
                .and_then(Value::as_string)
                .map(str::to_string),
        })
    }

    /// XML plist bytes (what pymobiledevice3 writes; usbmuxd stores whatever it is given).
    pub fn to_xml(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        // Writing a dictionary of strings and data into a Vec cannot fail.
        let res = Value::Dictionary(self.to_dictionary()).to_writer_xml(&mut *out);
        debug_assert!(res.is_ok());
        out
    }

    /// Parses XML or binary plist bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PairRecordError> {
        let v = plist::Value::from_reader(std::io::Cursor::new(bytes))
            .map_err(|e| PairRecordError::NotAPlist(e.to_string()))?;
        match v {
            Value::Dictionary(d) => Self::from_dictionary(&d),
            _ => Err(PairRecordError::NotAPlist("not a dictionary".into())),
        }
    }

    /// Writes the record to `path` atomically, readable by the owner only: a temporary file
    /// created with mode 0600 in the same directory, synced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<(), PairRecordError> {
        write_private_file(path, &self.to_xml())
    }

    /// Reads a record written by `save` (or by libimobiledevice/pymobiledevice3).
    pub fn load(path: &Path) -> Result<Self, PairRecordError> {
        let bytes = read_capped(path)?;
        Self::from_bytes(&bytes)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PairRecordError + '_ {
    move |source| PairRecordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_capped(path: &Path) -> Result<Zeroizing<Vec<u8>>, PairRecordError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(MAX_PAIR_RECORD_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > MAX_PAIR_RECORD_LEN {
        return Err(PairRecordError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` through a 0600 temporary file and a rename, so a crash leaves
/// either the old file or the new one, and the secret is never readable by others.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), PairRecordError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| PairRecordError::BadUdid(path.display().to_string()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Checks that a UDID from a device is safe as a file name: 1–64 ASCII letters, digits and dashes.
pub fn check_udid(udid: &str) -> Result<(), PairRecordError> {
    let ok = !udid.is_empty()
        && udid.len() <= 64
        && udid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PairRecordError::BadUdid(udid.to_string()))
    }
}

/// Where a host keeps its pair records, by device UDID.
pub trait PairStore: Send + Sync {
    /// The record for `udid`, or `None` when this host never paired with it.
    fn load(&self, udid: &str) -> Result<Option<PairRecord>, PairRecordError>;
    /// Stores (replaces) the record for `udid`.
    fn save(&self, udid: &str, record: &PairRecord) -> Result<(), PairRecordError>;
    /// Forgets the record for `udid`; absent is fine.
    fn remove(&self, udid: &str) -> Result<(), PairRecordError>;
}

/// Pair records as `<dir>/<UDID>.plist`, mode 0600 (the box uses /var/lib/cradle).
#[derive(Debug, Clone)]
pub struct DirPairStore {
    dir: PathBuf,
}

impl DirPairStore {
    /// A store in `dir`, created (mode 0700) when missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, PairRecordError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        Ok(DirPairStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `udid`'s record.
    pub fn path_for(&self, udid: &str) -> Result<PathBuf, PairRecordError> {
        check_udid(udid)?;
        Ok(self.dir.join(format!("{udid}.plist")))
    }
}

impl PairStore for DirPairStore {
    fn load(&self, udid: &str) -> Result<Option<PairRecord>, PairRecordError> {
        let path = self.path_for(udid)?;
        match PairRecord::load(&path) {
            Ok(r) => Ok(Some(r)),
            Err(PairRecordError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn save(&self, udid: &str, record: &PairRecord) -> Result<(), PairRecordError> {
        record.save(&self.path_for(udid)?)
    }

    fn remove(&self, udid: &str) -> Result<(), PairRecordError> {
        let path = self.path_for(udid)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(PairRecordError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// Pair records kept in memory (tests, the demo).
#[derive(Debug, Default)]
pub struct MemoryPairStore {
    records: std::sync::Mutex<std::collections::HashMap<String, PairRecord>>,
}

impl MemoryPairStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PairStore for MemoryPairStore {
    fn load(&self, udid: &str) -> Result<Option<PairRecord>, PairRecordError> {
        let g = self.records.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.get(udid).cloned())
    }
    fn save(&self, udid: &str, record: &PairRecord) -> Result<(), PairRecordError> {
        let mut g = self.records.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(udid.to_string(), record.clone());
        Ok(())
    }
    fn remove(&self, udid: &str) -> Result<(), PairRecordError> {
        let mut g = self.records.lock().unwrap_or_else(|p| p.into_inner());
        g.remove(udid);
        Ok(())
    }
}

/// Who this host is to the devices: its HostID, its SystemBUID and an optional name shown by
/// the phone. One identity per box, kept beside the pair records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// Uppercase UUID.
    pub host_id: String,
    /// Uppercase UUID.
    pub system_buid: String,
    /// Sent as `HostName` with Pair (pymobiledevice3 does; the phone may show it).
    pub host_name: Option<String>,
}

impl HostIdentity {
    /// A fresh random identity.
    pub fn generate(host_name: Option<String>) -> Self {
        HostIdentity {
            host_id: uuid::Uuid::new_v4().to_string().to_uppercase(),
            system_buid: uuid::Uuid::new_v4().to_string().to_uppercase(),
            host_name,
        }
    }

    /// Reads the identity from `path`, or creates and saves a new one (mode 0600).
    pub fn load_or_create(path: &Path, host_name: Option<String>) -> Result<Self, PairRecordError> {
        match read_capped(path) {
            Ok(bytes) => {
                let v = plist::Value::from_reader(std::io::Cursor::new(&bytes[..]))
                    .map_err(|e| PairRecordError::NotAPlist(e.to_string()))?;
                let d = v
                    .as_dictionary()
                    .ok_or_else(|| PairRecordError::NotAPlist("not a dictionary".into()))?;
                Ok(HostIdentity {
                    host_id: string(d, "HostID")?,
                    system_buid: string(d, "SystemBUID")?,
                    host_name: d
                        .get("HostName")
                        .and_then(Value::as_string)
                        .map(str::to_string)
                        .or(host_name),
                })
            }
            Err(PairRecordError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let id = HostIdentity::generate(host_name);
                let mut d = Dictionary::new();
                d.insert("HostID".into(), Value::String(id.host_id.clone()));
                d.insert("SystemBUID".into(), Value::String(id.system_buid.clone()));
                if let Some(n) = &id.host_name {
                    d.insert("HostName".into(), Value::String(n.clone()));
                }
                let mut bytes = Vec::new();
                Value::Dictionary(d)
                    .to_writer_xml(&mut bytes)
                    .map_err(|e| PairRecordError::NotAPlist(e.to_string()))?;
                write_private_file(path, &bytes)?;
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn sample() -> PairRecord {
        PairRecord {
            host_id: "2A6C1B9E-0C2B-4B8E-9F3A-1D2C3B4A5F60".into(),
            system_buid: "11111111-2222-3333-4444-555555555555".into(),
            root_cert_pem: b"-----BEGIN CERTIFICATE-----\nroot\n".to_vec(),
            root_key_pem: Zeroizing::new(b"-----BEGIN PRIVATE KEY-----\nrk\n".to_vec()),
            host_cert_pem: b"-----BEGIN CERTIFICATE-----\nhost\n".to_vec(),
            host_key_pem: Zeroizing::new(b"-----BEGIN PRIVATE KEY-----\nhk\n".to_vec()),
            device_cert_pem: b"-----BEGIN CERTIFICATE-----\ndev\n".to_vec(),
            escrow_bag: Some(Zeroizing::new(vec![1, 2, 3])),
            wifi_mac: Some("aa:bb:cc:dd:ee:ff".into()),
        }
    }

    #[test]
    fn plist_round_trip_with_usbmuxd_keys() {
        let r = sample();
        let d = r.to_dictionary();
        for k in [
            "DeviceCertificate",
            "HostCertificate",
            "HostPrivateKey",
            "RootCertificate",
            "RootPrivateKey",
            "HostID",
            "SystemBUID",
            "EscrowBag",
            "WiFiMACAddress",
        ] {
            assert!(d.contains_key(k), "{k}");
        }
        assert!(matches!(d.get("HostCertificate"), Some(Value::Data(_))));
        assert_eq!(PairRecord::from_bytes(&r.to_xml()).unwrap(), r);
        // Binary plists (libimobiledevice) read the same.
        let mut bin = Vec::new();
        Value::Dictionary(d).to_writer_binary(&mut bin).unwrap();
        assert_eq!(PairRecord::from_bytes(&bin).unwrap(), r);
    }

    #[test]
    fn debug_hides_secrets() {
        let s = format!("{:?}", sample());
        assert!(!s.contains("rk") && !s.contains("hk"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn missing_field_is_named() {
        let mut d = sample().to_dictionary();
        d.remove("HostID");
        assert!(matches!(
            PairRecord::from_dictionary(&d),
            Err(PairRecordError::MissingField("HostID"))
        ));
    }

    #[test]
    fn save_is_private_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirPairStore::new(dir.path().join("records")).unwrap();
        let udid = "00008030-001A2B3C4D5E6F70";
        assert!(store.load(udid).unwrap().is_none());
        store.save(udid, &sample()).unwrap();
        let path = store.path_for(udid).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(store.load(udid).unwrap().unwrap(), sample());
        // Only the record itself is left in the directory (no temporary files).
        let names: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        store.remove(udid).unwrap();
        assert!(store.load(udid).unwrap().is_none());
        store.remove(udid).unwrap();
    }

    #[test]
    fn hostile_udids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirPairStore::new(dir.path()).unwrap();
        for bad in ["../etc/passwd", "", "a/b", "..", &"x".repeat(65)] {
            assert!(matches!(store.load(bad), Err(PairRecordError::BadUdid(_))));
        }
    }

    #[test]
    fn host_identity_persists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("host.plist");
        let a = HostIdentity::load_or_create(&p, Some("cradle".into())).unwrap();
        let b = HostIdentity::load_or_create(&p, None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.host_id, a.host_id.to_uppercase());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
