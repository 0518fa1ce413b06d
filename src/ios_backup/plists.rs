//! The three plists of a backup folder: Manifest.plist and Status.plist (device-written, binary)
//! and Info.plist (host-written, XML), with typed accessors, validation and unknown keys kept.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plist::{Date, Dictionary, Value};

use super::bplist::{Bplist, BplistError, ExpansionLimits, MAGIC};

/// Largest plist file read. Info.plist carries app metadata and icons (a few MB on a full
/// phone); Manifest.plist and Status.plist are far smaller.
pub const MAX_PLIST_LEN: usize = 64 * 1024 * 1024;
/// Most values a plist may expand to (shared objects counted once per use).
pub const MAX_PLIST_NODES: u64 = 4_000_000;
/// Most string and data bytes a plist may expand to (shared objects counted once per use).
pub const MAX_PLIST_EXPANDED_BYTES: u64 = 256 * 1024 * 1024;
/// Deepest nesting accepted; real backup plists nest a handful of levels.
pub const MAX_PLIST_DEPTH: usize = 128;

/// Why a backup plist was refused. `Io` is a local fault; the rest are faults of the data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlistError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Larger than [`MAX_PLIST_LEN`].
    #[error("{}: {len} bytes exceeds the {max}-byte limit", path.display())]
    TooLarge { path: PathBuf, len: u64, max: usize },
    /// A binary plist whose structure is invalid or would expand beyond the caps.
    #[error("{}: {source}", path.display())]
    Malformed { path: PathBuf, source: BplistError },
    /// Nested deeper than [`MAX_PLIST_DEPTH`].
    #[error("{}: nested deeper than {max} levels", path.display())]
    TooDeep { path: PathBuf, max: usize },
    /// Not a plist at all.
    #[error("{}: not a valid plist: {source}", path.display())]
    Parse { path: PathBuf, source: plist::Error },
    /// The top-level value is not a dictionary.
    #[error("{}: the top level is not a dictionary", path.display())]
    NotADictionary { path: PathBuf },
    /// A required key is absent.
    #[error("{}: missing key {key}", path.display())]
    MissingKey { path: PathBuf, key: String },
    /// A key holds a value of the wrong type.
    #[error("{}: key {key} should be {expected}, found {found}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
}

/// The type a known key must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Bool,
    Data,
    Date,
    Dict,
    /// A string or data (Info.plist's GUID: a hex string from libimobiledevice, 16 bytes from
    /// pymobiledevice3).
    StringOrData,
    /// An array of strings.
    StringArray,
    /// A dictionary whose values are all dictionaries.
    DictOfDicts,
    /// A dictionary whose values are all data.
    DictOfData,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::String => "a string",
            Kind::Bool => "a boolean",
            Kind::Data => "data",
            Kind::Date => "a date",
            Kind::Dict => "a dictionary",
            Kind::StringOrData => "a string or data",
            Kind::StringArray => "an array of strings",
            Kind::DictOfDicts => "a dictionary of dictionaries",
            Kind::DictOfData => "a dictionary of data",
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            Kind::String => matches!(v, Value::String(_)),
            Kind::Bool => matches!(v, Value::Boolean(_)),
            Kind::Data => matches!(v, Value::Data(_)),
            Kind::Date => matches!(v, Value::Date(_)),
            Kind::Dict => matches!(v, Value::Dictionary(_)),
            Kind::StringOrData => matches!(v, Value::String(_) | Value::Data(_)),
            Kind::StringArray => v
                .as_array()
                .is_some_and(|a| a.iter().all(|x| matches!(x, Value::String(_)))),
            Kind::DictOfDicts => v
                .as_dictionary()
                .is_some_and(|d| d.values().all(|x| matches!(x, Value::Dictionary(_)))),
            Kind::DictOfData => v
                .as_dictionary()
                .is_some_and(|d| d.values().all(|x| matches!(x, Value::Data(_)))),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::Dictionary(_) => "a dictionary",
        Value::Boolean(_) => "a boolean",
        Value::Data(_) => "data",
        Value::Date(_) => "a date",
        Value::Real(_) => "a real",
        Value::Integer(_) => "an integer",
        Value::String(_) => "a string",
        Value::Uid(_) => "a UID",
        _ => "an unknown value",
    }
}

/// A known key: its name, type, and whether it must be present.
struct KeySpec {
    key: &'static str,
    kind: Kind,
    required: bool,
}

const fn spec(key: &'static str, kind: Kind, required: bool) -> KeySpec {
    KeySpec {
        key,
        kind,
        required,
    }
}

/// Parses `bytes` (binary or XML) into a dictionary, within the size, expansion and depth caps.
fn parse_dictionary(bytes: &[u8], path: &Path) -> Result<Dictionary, PlistError> {
    if bytes.len() > MAX_PLIST_LEN {
        return Err(PlistError::TooLarge {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            max: MAX_PLIST_LEN,
        });
    }
    // A binary plist can share objects, so a small file can describe an enormous tree; check
    // its expanded size before building anything.
    if bytes.starts_with(MAGIC) {
        Bplist::parse(bytes)
            .and_then(|p| {
                p.check_complexity(ExpansionLimits {
                    max_values: MAX_PLIST_NODES,
                    max_bytes: MAX_PLIST_EXPANDED_BYTES,
                    max_depth: MAX_PLIST_DEPTH,
                })
            })
            .map_err(|source| PlistError::Malformed {
                path: path.to_path_buf(),
                source,
            })?;
    }
    let value = Value::from_reader(Cursor::new(bytes)).map_err(|source| PlistError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    // XML has no sharing but can nest deeply; dropping a deep tree recursively could overflow
    // the stack, so a too-deep value is taken apart iteratively.
    if depth(&value) > MAX_PLIST_DEPTH {
        dismantle(value);
        return Err(PlistError::TooDeep {
            path: path.to_path_buf(),
            max: MAX_PLIST_DEPTH,
        });
    }
    match value {
        Value::Dictionary(d) => Ok(d),
        _ => Err(PlistError::NotADictionary {
            path: path.to_path_buf(),
        }),
    }
}

/// Nesting depth, computed without recursion.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Dictionary(m) => stack.extend(m.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// Drops a value without recursion.
fn dismantle(value: Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a),
            Value::Dictionary(m) => stack.extend(m.into_iter().map(|(_, x)| x)),
            _ => {}
        }
    }
}

/// Checks every known key present (and every required one) has its type.
fn check_keys(dict: &Dictionary, specs: &[KeySpec], path: &Path) -> Result<(), PlistError> {
    for s in specs {
        match dict.get(s.key) {
            None if s.required => {
                return Err(PlistError::MissingKey {
                    path: path.to_path_buf(),
                    key: s.key.to_owned(),
                })
            }
            None => {}
            Some(v) if s.kind.accepts(v) => {}
            Some(v) => {
                return Err(PlistError::WrongType {
                    path: path.to_path_buf(),
                    key: s.key.to_owned(),
                    expected: s.kind.name(),
                    found: type_name(v),
                })
            }
        }
    }
    Ok(())
}

fn read_capped(path: &Path) -> Result<Vec<u8>, PlistError> {
    let io = |source| PlistError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_PLIST_LEN as u64 {
        return Err(PlistError::TooLarge {
            path: path.to_path_buf(),
            len,
            max: MAX_PLIST_LEN,
        });
    }
    std::fs::read(path).map_err(io)
}

fn to_binary(dict: &Dictionary) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing a well-formed Value into a Vec cannot fail.
    let _ = Value::Dictionary(dict.clone()).to_writer_binary(&mut out);
    out
}

fn to_xml(dict: &Dictionary) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = Value::Dictionary(dict.clone()).to_writer_xml(&mut out);
    out
}

fn get_str<'a>(dict: &'a Dictionary, key: &str) -> Option<&'a str> {
    dict.get(key).and_then(Value::as_string)
}

fn get_data<'a>(dict: &'a Dictionary, key: &str) -> Option<&'a [u8]> {
    dict.get(key).and_then(Value::as_data)
}

fn get_bool(dict: &Dictionary, key: &str) -> Option<bool> {
    dict.get(key).and_then(Value::as_boolean)
}

fn get_date(dict: &Dictionary, key: &str) -> Option<Date> {
    dict.get(key).and_then(Value::as_date)
}

fn get_dict<'a>(dict: &'a Dictionary, key: &str) -> Option<&'a Dictionary> {
    dict.get(key).and_then(Value::as_dictionary)
}

/// `date` rounded down to whole seconds. Plist dates are stored as seconds (XML keeps no
/// fraction at all), so whole seconds make parse → write byte-stable in both formats.
pub fn whole_seconds(date: Date) -> Date {
    let t: SystemTime = date.into();
    let rounded = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(e) => {
            let d = e.duration();
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            UNIX_EPOCH - Duration::from_secs(secs)
        }
    };
    Date::from(rounded)
}

/// What the three plist types have alike, given their `FILE_NAME` and `from_dictionary`:
/// parsing from bytes or a file within the caps, the dictionary itself, and a type-checked
/// `insert`.
macro_rules! plist_file_common {
    ($ty:ident, $file:literal) => {
        impl $ty {
            #[doc = concat!("Parses ", $file, " bytes (binary or XML).")]
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, PlistError> {
                Self::from_bytes_at(bytes, Path::new(Self::FILE_NAME))
            }

            /// Parses bytes read from `path` (named in errors).
            pub fn from_bytes_at(bytes: &[u8], path: &Path) -> Result<Self, PlistError> {
                Self::from_dictionary(parse_dictionary(bytes, path)?, path)
            }

            #[doc = concat!("Reads and parses a ", $file, " file.")]
            pub fn read(path: impl AsRef<Path>) -> Result<Self, PlistError> {
                let path = path.as_ref();
                Self::from_bytes_at(&read_capped(path)?, path)
            }

            /// Every key, known and unknown, in file order.
            pub fn dictionary(&self) -> &Dictionary {
                &self.dict
            }

            pub fn into_dictionary(self) -> Dictionary {
                self.dict
            }

            /// Sets any key. Known keys are type-checked; unknown ones are kept as given.
            pub fn insert(&mut self, key: &str, value: Value) -> Result<(), PlistError> {
                let mut dict = self.dict.clone();
                dict.insert(key.into(), value);
                *self = Self::from_dictionary(dict, Path::new(Self::FILE_NAME))?;
                Ok(())
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Manifest.plist

mod manifest_key {
    pub const BACKUP_KEY_BAG: &str = "BackupKeyBag";
    pub const IS_ENCRYPTED: &str = "IsEncrypted";
    pub const MANIFEST_KEY: &str = "ManifestKey";
    pub const LOCKDOWN: &str = "Lockdown";
    pub const APPLICATIONS: &str = "Applications";
    pub const VERSION: &str = "Version";
    pub const DATE: &str = "Date";
    pub const WAS_PASSCODE_SET: &str = "WasPasscodeSet";
    pub const SYSTEM_DOMAINS_VERSION: &str = "SystemDomainsVersion";
}

const MANIFEST_SPECS: &[KeySpec] = &[
    spec(manifest_key::BACKUP_KEY_BAG, Kind::Data, true),
    spec(manifest_key::IS_ENCRYPTED, Kind::Bool, true),
    spec(manifest_key::MANIFEST_KEY, Kind::Data, false),
    spec(manifest_key::LOCKDOWN, Kind::Dict, false),
    spec(manifest_key::APPLICATIONS, Kind::DictOfDicts, false),
    spec(manifest_key::VERSION, Kind::String, false),
    spec(manifest_key::DATE, Kind::Date, false),
    spec(manifest_key::WAS_PASSCODE_SET, Kind::Bool, false),
    spec(manifest_key::SYSTEM_DOMAINS_VERSION, Kind::String, false),
];

/// Device facts copied from lockdown into Manifest.plist's `Lockdown` dictionary.
pub const MANIFEST_LOCKDOWN_KEYS: [&str; 6] = [
    "ProductVersion",
    "BuildVersion",
    "DeviceName",
    "ProductType",
    "SerialNumber",
    "UniqueDeviceID",
];

const LOCKDOWN_SPECS: &[KeySpec] = &[
    spec("ProductVersion", Kind::String, false),
    spec("BuildVersion", Kind::String, false),
    spec("DeviceName", Kind::String, false),
    spec("ProductType", Kind::String, false),
    spec("SerialNumber", Kind::String, false),
    spec("UniqueDeviceID", Kind::String, false),
];

/// `Version` of Manifest.plist in Manifest.db-era backups.
pub const MANIFEST_VERSION: &str = "10.0";

/// Manifest.plist: the keybag, encryption state and device facts (device-written, binary).
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestPlist {
    dict: Dictionary,
}

plist_file_common!(ManifestPlist, "Manifest.plist");

/// What a phone puts in a new Manifest.plist.
#[derive(Debug, Clone)]
pub struct ManifestPlistParams {
    /// The keybag TLV blob.
    pub backup_keybag: Vec<u8>,
    /// 44-byte ManifestKey (LE class + wrapped key) for an encrypted backup; `None` for a clear one.
    /// `IsEncrypted` follows it.
    pub manifest_key: Option<Vec<u8>>,
    /// Device facts; see [`ManifestPlist::lockdown_from_values`].
    pub lockdown: Dictionary,
    /// Bundle id → app dictionary (`CFBundleIdentifier`, `CFBundleVersion`, `Path`, `ContainerContentClass`).
    pub applications: Dictionary,
    pub date: Date,
    pub was_passcode_set: bool,
    /// E.g. "24.0".
    pub system_domains_version: String,
}

impl ManifestPlist {
    pub const FILE_NAME: &'static str = "Manifest.plist";

    /// Builds what a phone writes at the end of a backup. Fails only if `lockdown` or
    /// `applications` hold wrongly typed values.
    pub fn new_for_backup(params: ManifestPlistParams) -> Result<Self, PlistError> {
        use manifest_key::*;
        let mut dict = Dictionary::new();
        dict.insert(APPLICATIONS.into(), Value::Dictionary(params.applications));
        dict.insert(BACKUP_KEY_BAG.into(), Value::Data(params.backup_keybag));
        dict.insert(DATE.into(), Value::Date(whole_seconds(params.date)));
        dict.insert(
            IS_ENCRYPTED.into(),
            Value::Boolean(params.manifest_key.is_some()),
        );
        dict.insert(LOCKDOWN.into(), Value::Dictionary(params.lockdown));
        if let Some(key) = params.manifest_key {
            dict.insert(MANIFEST_KEY.into(), Value::Data(key));
        }
        dict.insert(
            SYSTEM_DOMAINS_VERSION.into(),
            Value::String(params.system_domains_version),
        );
        dict.insert(VERSION.into(), Value::String(MANIFEST_VERSION.into()));
        dict.insert(
            WAS_PASSCODE_SET.into(),
            Value::Boolean(params.was_passcode_set),
        );
        Self::from_dictionary(dict, Path::new(Self::FILE_NAME))
    }

    /// The `Lockdown` dictionary for a backup: the [`MANIFEST_LOCKDOWN_KEYS`] found in the
    /// lockdown root values (as `GetValue` with no domain and no key returns them).
    pub fn lockdown_from_values(values: &Dictionary) -> Dictionary {
        let mut out = Dictionary::new();
        for key in MANIFEST_LOCKDOWN_KEYS {
            if let Some(v @ Value::String(_)) = values.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
        out
    }

    /// Validates a dictionary as a Manifest.plist; `path` names it in errors.
    pub fn from_dictionary(dict: Dictionary, path: &Path) -> Result<Self, PlistError> {
        check_keys(&dict, MANIFEST_SPECS, path)?;
        if let Some(lockdown) = get_dict(&dict, manifest_key::LOCKDOWN) {
            check_keys(lockdown, LOCKDOWN_SPECS, path).map_err(|e| prefix_key(e, "Lockdown."))?;
        }
        Ok(ManifestPlist { dict })
    }

    /// The binary plist, as a phone writes it. Parsing it and writing again gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        to_binary(&self.dict)
    }

    /// The keybag TLV blob.
    pub fn backup_keybag(&self) -> &[u8] {
        get_data(&self.dict, manifest_key::BACKUP_KEY_BAG).unwrap_or_default()
    }

    pub fn is_encrypted(&self) -> bool {
        get_bool(&self.dict, manifest_key::IS_ENCRYPTED).unwrap_or(false)
    }

    /// The 44-byte ManifestKey (encrypted backups of iOS ≥ 10.2).
    pub fn manifest_key(&self) -> Option<&[u8]> {
        get_data(&self.dict, manifest_key::MANIFEST_KEY)
    }

    pub fn lockdown(&self) -> Option<&Dictionary> {
        get_dict(&self.dict, manifest_key::LOCKDOWN)
    }

    /// A string from the `Lockdown` dictionary.
    pub fn lockdown_string(&self, key: &str) -> Option<&str> {
        self.lockdown().and_then(|d| get_str(d, key))
    }

    pub fn product_version(&self) -> Option<&str> {
        self.lockdown_string("ProductVersion")
    }

    pub fn build_version(&self) -> Option<&str> {
        self.lockdown_string("BuildVersion")
    }

    pub fn device_name(&self) -> Option<&str> {
        self.lockdown_string("DeviceName")
    }

    pub fn product_type(&self) -> Option<&str> {
        self.lockdown_string("ProductType")
    }

    pub fn serial_number(&self) -> Option<&str> {
        self.lockdown_string("SerialNumber")
    }

    pub fn unique_device_id(&self) -> Option<&str> {
        self.lockdown_string("UniqueDeviceID")
    }

    pub fn applications(&self) -> Option<&Dictionary> {
        get_dict(&self.dict, manifest_key::APPLICATIONS)
    }

    pub fn version(&self) -> Option<&str> {
        get_str(&self.dict, manifest_key::VERSION)
    }

    pub fn date(&self) -> Option<Date> {
        get_date(&self.dict, manifest_key::DATE)
    }

    pub fn was_passcode_set(&self) -> Option<bool> {
        get_bool(&self.dict, manifest_key::WAS_PASSCODE_SET)
    }

    pub fn system_domains_version(&self) -> Option<&str> {
        get_str(&self.dict, manifest_key::SYSTEM_DOMAINS_VERSION)
    }

    pub fn set_backup_keybag(&mut self, keybag: Vec<u8>) {
        self.dict
            .insert(manifest_key::BACKUP_KEY_BAG.into(), Value::Data(keybag));
    }

    /// Sets the ManifestKey and `IsEncrypted` together (`None`: a clear backup).
    pub fn set_manifest_key(&mut self, key: Option<Vec<u8>>) {
        self.dict.insert(
            manifest_key::IS_ENCRYPTED.into(),
            Value::Boolean(key.is_some()),
        );
        match key {
            Some(k) => {
                self.dict
                    .insert(manifest_key::MANIFEST_KEY.into(), Value::Data(k));
            }
            None => {
                self.dict.remove(manifest_key::MANIFEST_KEY);
            }
        }
    }

    pub fn set_date(&mut self, date: Date) {
        self.dict
            .insert(manifest_key::DATE.into(), Value::Date(whole_seconds(date)));
    }

    pub fn set_was_passcode_set(&mut self, set: bool) {
        self.dict
            .insert(manifest_key::WAS_PASSCODE_SET.into(), Value::Boolean(set));
    }
}

fn prefix_key(e: PlistError, prefix: &str) -> PlistError {
    match e {
        PlistError::MissingKey { path, key } => PlistError::MissingKey {
            path,
            key: format!("{prefix}{key}"),
        },
        PlistError::WrongType {
            path,
            key,
            expected,
            found,
        } => PlistError::WrongType {
            path,
            key: format!("{prefix}{key}"),
            expected,
            found,
        },
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Status.plist

mod status_key {
    pub const IS_FULL_BACKUP: &str = "IsFullBackup";
    pub const VERSION: &str = "Version";
    pub const BACKUP_STATE: &str = "BackupState";
    pub const DATE: &str = "Date";
    pub const UUID: &str = "UUID";
    pub const SNAPSHOT_STATE: &str = "SnapshotState";
}

const STATUS_SPECS: &[KeySpec] = &[
    spec(status_key::IS_FULL_BACKUP, Kind::Bool, false),
    spec(status_key::VERSION, Kind::String, false),
    spec(status_key::BACKUP_STATE, Kind::String, false),
    spec(status_key::DATE, Kind::Date, false),
    spec(status_key::UUID, Kind::String, false),
    spec(status_key::SNAPSHOT_STATE, Kind::String, true),
];

/// `Version` of Status.plist in Manifest.db-era backups.
pub const STATUS_VERSION: &str = "3.3";
/// `SnapshotState` of a complete backup (libimobiledevice refuses to restore anything else).
pub const SNAPSHOT_FINISHED: &str = "finished";

/// Status.plist: whether the last backup finished (device-written, binary).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPlist {
    dict: Dictionary,
}

plist_file_common!(StatusPlist, "Status.plist");

impl StatusPlist {
    pub const FILE_NAME: &'static str = "Status.plist";

    /// What a phone writes after a complete backup: BackupState `new`, SnapshotState
    /// `finished`, Version 3.3, the upper-case UUID.
    pub fn finished(uuid: uuid::Uuid, date: Date, full: bool) -> Self {
        use status_key::*;
        let mut dict = Dictionary::new();
        dict.insert(BACKUP_STATE.into(), Value::String("new".into()));
        dict.insert(DATE.into(), Value::Date(whole_seconds(date)));
        dict.insert(IS_FULL_BACKUP.into(), Value::Boolean(full));
        dict.insert(
            SNAPSHOT_STATE.into(),
            Value::String(SNAPSHOT_FINISHED.into()),
        );
        dict.insert(
            UUID.into(),
            Value::String(uuid.hyphenated().to_string().to_uppercase()),
        );
        dict.insert(VERSION.into(), Value::String(STATUS_VERSION.into()));
        StatusPlist { dict }
    }

    /// Validates a dictionary as a Status.plist; `path` names it in errors.
    pub fn from_dictionary(dict: Dictionary, path: &Path) -> Result<Self, PlistError> {
        check_keys(&dict, STATUS_SPECS, path)?;
        Ok(StatusPlist { dict })
    }

    /// The binary plist. Parsing it and writing again gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        to_binary(&self.dict)
    }

    pub fn snapshot_state(&self) -> &str {
        get_str(&self.dict, status_key::SNAPSHOT_STATE).unwrap_or_default()
    }

    /// True when SnapshotState is `finished`.
    pub fn is_finished(&self) -> bool {
        self.snapshot_state() == SNAPSHOT_FINISHED
    }

    pub fn is_full_backup(&self) -> Option<bool> {
        get_bool(&self.dict, status_key::IS_FULL_BACKUP)
    }

    pub fn version(&self) -> Option<&str> {
        get_str(&self.dict, status_key::VERSION)
    }

    pub fn backup_state(&self) -> Option<&str> {
        get_str(&self.dict, status_key::BACKUP_STATE)
    }

    pub fn date(&self) -> Option<Date> {
        get_date(&self.dict, status_key::DATE)
    }

    pub fn uuid(&self) -> Option<&str> {
        get_str(&self.dict, status_key::UUID)
    }

    pub fn set_snapshot_state(&mut self, state: &str) {
        self.dict.insert(
            status_key::SNAPSHOT_STATE.into(),
            Value::String(state.into()),
        );
    }

    pub fn set_full_backup(&mut self, full: bool) {
        self.dict
            .insert(status_key::IS_FULL_BACKUP.into(), Value::Boolean(full));
    }

    pub fn set_date(&mut self, date: Date) {
        self.dict
            .insert(status_key::DATE.into(), Value::Date(whole_seconds(date)));
    }
}

// ---------------------------------------------------------------------------------------------
// Info.plist

/// Info.plist keys (note the spaces).
pub mod info_key {
    pub const APPLICATIONS: &str = "Applications";
    pub const BUILD_VERSION: &str = "Build Version";
    pub const DEVICE_NAME: &str = "Device Name";
    pub const DISPLAY_NAME: &str = "Display Name";
    pub const GUID: &str = "GUID";
    pub const ICCID: &str = "ICCID";
    pub const IMEI: &str = "IMEI";
    pub const INSTALLED_APPLICATIONS: &str = "Installed Applications";
    pub const LAST_BACKUP_DATE: &str = "Last Backup Date";
    pub const MEID: &str = "MEID";
    pub const PHONE_NUMBER: &str = "Phone Number";
    pub const PRODUCT_NAME: &str = "Product Name";
    pub const PRODUCT_TYPE: &str = "Product Type";
    pub const PRODUCT_VERSION: &str = "Product Version";
    pub const SERIAL_NUMBER: &str = "Serial Number";
    pub const TARGET_IDENTIFIER: &str = "Target Identifier";
    pub const TARGET_TYPE: &str = "Target Type";
    pub const UNIQUE_IDENTIFIER: &str = "Unique Identifier";
    pub const IBOOKS_DATA_2: &str = "iBooks Data 2";
    pub const ITUNES_FILES: &str = "iTunes Files";
    pub const ITUNES_SETTINGS: &str = "iTunes Settings";
    pub const ITUNES_VERSION: &str = "iTunes Version";
}

const INFO_SPECS: &[KeySpec] = &[
    spec(info_key::APPLICATIONS, Kind::DictOfDicts, false),
    spec(info_key::BUILD_VERSION, Kind::String, false),
    spec(info_key::DEVICE_NAME, Kind::String, false),
    spec(info_key::DISPLAY_NAME, Kind::String, false),
    spec(info_key::GUID, Kind::StringOrData, false),
    spec(info_key::ICCID, Kind::String, false),
    spec(info_key::IMEI, Kind::String, false),
    spec(info_key::INSTALLED_APPLICATIONS, Kind::StringArray, false),
    spec(info_key::LAST_BACKUP_DATE, Kind::Date, false),
    spec(info_key::MEID, Kind::String, false),
    spec(info_key::PHONE_NUMBER, Kind::String, false),
    spec(info_key::PRODUCT_NAME, Kind::String, false),
    spec(info_key::PRODUCT_TYPE, Kind::String, false),
    spec(info_key::PRODUCT_VERSION, Kind::String, false),
    spec(info_key::SERIAL_NUMBER, Kind::String, false),
    spec(info_key::TARGET_IDENTIFIER, Kind::String, false),
    spec(info_key::TARGET_TYPE, Kind::String, false),
    spec(info_key::UNIQUE_IDENTIFIER, Kind::String, false),
    spec(info_key::IBOOKS_DATA_2, Kind::Data, false),
    spec(info_key::ITUNES_FILES, Kind::DictOfData, false),
    spec(info_key::ITUNES_SETTINGS, Kind::Dict, false),
    spec(info_key::ITUNES_VERSION, Kind::String, false),
];

/// `iTunes Version` written when lockdown has no `MinITunesVersion` (libimobiledevice's default).
pub const DEFAULT_ITUNES_VERSION: &str = "10.0.1";

/// What a host gathers for Info.plist besides lockdown's root values.
#[derive(Debug, Clone)]
pub struct InfoPlistParams {
    /// 32 upper-case hex characters (see [`InfoPlistParams::new`]).
    pub guid: String,
    /// Written by libimobiledevice; `None` leaves the key out (as pymobiledevice3 does).
    pub last_backup_date: Option<Date>,
    /// Bundle id → `{ApplicationSINF, iTunesMetadata, PlaceholderIcon?}`, only for apps that
    /// have both SINF and metadata (see [`InfoPlist::application_entry`]).
    pub applications: Dictionary,
    /// Bundle ids of the user's apps (installation_proxy `Browse`, type User).
    pub installed_applications: Vec<String>,
    /// AFC `/Books/iBooksData2.plist`, if present.
    pub ibooks_data: Option<Vec<u8>>,
    /// File name → contents from AFC `/iTunes_Control/iTunes/`.
    pub itunes_files: Dictionary,
    /// Lockdown domain `com.apple.iTunes`.
    pub itunes_settings: Dictionary,
    /// Lockdown `com.apple.mobile.iTunes` `MinITunesVersion`, or [`DEFAULT_ITUNES_VERSION`].
    pub itunes_version: String,
}

impl InfoPlistParams {
    /// Empty app data, no iBooks data, the default iTunes version, the given GUID.
    pub fn new(guid: impl Into<String>) -> Self {
        InfoPlistParams {
            guid: guid.into(),
            last_backup_date: None,
            applications: Dictionary::new(),
            installed_applications: Vec::new(),
            ibooks_data: None,
            itunes_files: Dictionary::new(),
            itunes_settings: Dictionary::new(),
            itunes_version: DEFAULT_ITUNES_VERSION.into(),
        }
    }

    /// A fresh random GUID: 32 upper-case hex characters, as libimobiledevice makes it.
    pub fn random_guid() -> String {
        hex::encode_upper(rand::random::<[u8; 16]>())
    }
}

/// Info.plist: the host's description of the device and backup (host-written, XML).
#[derive(Debug, Clone, PartialEq)]
pub struct InfoPlist {
    dict: Dictionary,
}

plist_file_common!(InfoPlist, "Info.plist");

impl InfoPlist {
    pub const FILE_NAME: &'static str = "Info.plist";

    /// Builds Info.plist as idevicebackup2 does from lockdown's root values (`GetValue` with
    /// no domain and no key) and what the host gathered. `udid` becomes `Target Identifier` as
    /// given and `Unique Identifier` in upper case. Lockdown values of the wrong type are left
    /// out, so the result is always valid.
    pub fn from_lockdown_values(udid: &str, lockdown: &Dictionary, host: InfoPlistParams) -> Self {
        use info_key::*;
        let string = |key: &str| get_str(lockdown, key).map(|s| Value::String(s.to_owned()));
        let mut dict = Dictionary::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                dict.insert(key.into(), v);
            }
        };
        put(APPLICATIONS, Some(Value::Dictionary(host.applications)));
        put(BUILD_VERSION, string("BuildVersion"));
        put(DEVICE_NAME, string("DeviceName"));
        put(DISPLAY_NAME, string("DeviceName"));
        put(GUID, Some(Value::String(host.guid)));
        put(ICCID, string("IntegratedCircuitCardIdentity"));
        put(IMEI, string("InternationalMobileEquipmentIdentity"));
        put(
            INSTALLED_APPLICATIONS,
            Some(Value::Array(
                host.installed_applications
                    .into_iter()
                    .map(Value::String)
                    .collect(),
            )),
        );
        put(
            LAST_BACKUP_DATE,
            host.last_backup_date.map(|d| Value::Date(whole_seconds(d))),
        );
        put(MEID, string("MobileEquipmentIdentifier"));
        put(PHONE_NUMBER, string("PhoneNumber"));
        put(PRODUCT_NAME, string("ProductName"));
        put(PRODUCT_TYPE, string("ProductType"));
        put(PRODUCT_VERSION, string("ProductVersion"));
        put(SERIAL_NUMBER, string("SerialNumber"));
        put(TARGET_IDENTIFIER, Some(Value::String(udid.to_owned())));
        put(TARGET_TYPE, Some(Value::String("Device".into())));
        put(UNIQUE_IDENTIFIER, Some(Value::String(udid.to_uppercase())));
        put(IBOOKS_DATA_2, host.ibooks_data.map(Value::Data));
        put(ITUNES_FILES, Some(Value::Dictionary(host.itunes_files)));
        put(
            ITUNES_SETTINGS,
            Some(Value::Dictionary(host.itunes_settings)),
        );
        put(ITUNES_VERSION, Some(Value::String(host.itunes_version)));
        // Drop anything a caller-supplied dictionary got wrong (e.g. a non-dictionary app
        // entry), keeping the invariant that an InfoPlist always validates.
        dict.retain(|k, v| {
            INFO_SPECS
                .iter()
                .find(|s| s.key == k)
                .is_none_or(|s| s.kind.accepts(v))
        });
        InfoPlist { dict }
    }

    /// One `Applications` entry.
    pub fn application_entry(
        sinf: Vec<u8>,
        itunes_metadata: Vec<u8>,
        placeholder_icon: Option<Vec<u8>>,
    ) -> Value {
        let mut d = Dictionary::new();
        d.insert("ApplicationSINF".into(), Value::Data(sinf));
        d.insert("iTunesMetadata".into(), Value::Data(itunes_metadata));
        if let Some(icon) = placeholder_icon {
            d.insert("PlaceholderIcon".into(), Value::Data(icon));
        }
        Value::Dictionary(d)
    }

    /// Validates a dictionary as an Info.plist; `path` names it in errors.
    pub fn from_dictionary(dict: Dictionary, path: &Path) -> Result<Self, PlistError> {
        check_keys(&dict, INFO_SPECS, path)?;
        Ok(InfoPlist { dict })
    }

    /// XML, as idevicebackup2 writes it. Parsing it and writing again gives the same bytes.
    pub fn to_xml(&self) -> Vec<u8> {
        to_xml(&self.dict)
    }

    /// The same content as a binary plist.
    pub fn to_binary(&self) -> Vec<u8> {
        to_binary(&self.dict)
    }

    /// Any string-valued key (see [`info_key`]).
    pub fn string(&self, key: &str) -> Option<&str> {
        get_str(&self.dict, key)
    }

    pub fn target_identifier(&self) -> Option<&str> {
        self.string(info_key::TARGET_IDENTIFIER)
    }

    pub fn unique_identifier(&self) -> Option<&str> {
        self.string(info_key::UNIQUE_IDENTIFIER)
    }

    pub fn device_name(&self) -> Option<&str> {
        self.string(info_key::DEVICE_NAME)
    }

    pub fn display_name(&self) -> Option<&str> {
        self.string(info_key::DISPLAY_NAME)
    }

    pub fn product_type(&self) -> Option<&str> {
        self.string(info_key::PRODUCT_TYPE)
    }

    pub fn product_version(&self) -> Option<&str> {
        self.string(info_key::PRODUCT_VERSION)
    }

    pub fn build_version(&self) -> Option<&str> {
        self.string(info_key::BUILD_VERSION)
    }

    pub fn serial_number(&self) -> Option<&str> {
        self.string(info_key::SERIAL_NUMBER)
    }

    pub fn imei(&self) -> Option<&str> {
        self.string(info_key::IMEI)
    }

    pub fn iccid(&self) -> Option<&str> {
        self.string(info_key::ICCID)
    }

    pub fn phone_number(&self) -> Option<&str> {
        self.string(info_key::PHONE_NUMBER)
    }

    pub fn itunes_version(&self) -> Option<&str> {
        self.string(info_key::ITUNES_VERSION)
    }

    /// The GUID as a string (libimobiledevice) or raw bytes (pymobiledevice3).
    pub fn guid(&self) -> Option<&Value> {
        self.dict.get(info_key::GUID)
    }

    pub fn last_backup_date(&self) -> Option<Date> {
        get_date(&self.dict, info_key::LAST_BACKUP_DATE)
    }

    /// Bundle ids of installed user apps.
    pub fn installed_applications(&self) -> Vec<&str> {
        self.dict
            .get(info_key::INSTALLED_APPLICATIONS)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_string).collect())
            .unwrap_or_default()
    }

    pub fn applications(&self) -> Option<&Dictionary> {
        get_dict(&self.dict, info_key::APPLICATIONS)
    }

    pub fn set_last_backup_date(&mut self, date: Date) {
        self.dict.insert(
            info_key::LAST_BACKUP_DATE.into(),
            Value::Date(whole_seconds(date)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(secs: u64) -> Date {
        Date::from(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn lockdown_values() -> Dictionary {
        let mut d = Dictionary::new();
        for (k, v) in [
            ("ProductVersion", "17.5.1"),
            ("BuildVersion", "21F90"),
            ("DeviceName", "Test iPhone"),
            ("ProductType", "iPhone14,5"),
            ("SerialNumber", "F2LXXXXXXXXX"),
            ("UniqueDeviceID", "00008110-001A2B3C4D5E801E"),
            ("InternationalMobileEquipmentIdentity", "356789012345678"),
            ("PhoneNumber", "+1 555 0100"),
        ] {
            d.insert(k.into(), Value::String(v.into()));
        }
        d.insert("DevicePublicKey".into(), Value::Data(vec![1, 2, 3]));
        d
    }

    fn manifest() -> ManifestPlist {
        ManifestPlist::new_for_backup(ManifestPlistParams {
            backup_keybag: vec![0x56; 1388],
            manifest_key: Some(vec![4, 0, 0, 0].into_iter().chain([9; 40]).collect()),
            lockdown: ManifestPlist::lockdown_from_values(&lockdown_values()),
            applications: Dictionary::new(),
            date: Date::from(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            was_passcode_set: true,
            system_domains_version: "24.0".into(),
        })
        .unwrap()
    }

    #[test]
    fn manifest_round_trip_is_byte_identical() {
        let m = manifest();
        assert!(m.is_encrypted());
        assert_eq!(m.manifest_key().unwrap().len(), 44);
        assert_eq!(m.product_version(), Some("17.5.1"));
        assert_eq!(m.unique_device_id(), Some("00008110-001A2B3C4D5E801E"));
        assert_eq!(m.version(), Some("10.0"));
        assert_eq!(m.date(), Some(date(1_700_000_000)));
        assert!(m.lockdown().unwrap().get("DevicePublicKey").is_none());
        let bytes = m.to_bytes();
        assert!(bytes.starts_with(b"bplist00"));
        let back = ManifestPlist::from_bytes(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn unknown_keys_survive_in_order() {
        let mut m = manifest();
        m.insert("ZFutureKey", Value::Integer(7.into())).unwrap();
        m.insert("AFutureKey", Value::String("x".into())).unwrap();
        let back = ManifestPlist::from_bytes(&m.to_bytes()).unwrap();
        let keys: Vec<_> = back.dictionary().keys().cloned().collect();
        assert_eq!(&keys[keys.len() - 2..], ["ZFutureKey", "AFutureKey"]);
        assert_eq!(back.to_bytes(), m.to_bytes());
    }

    #[test]
    fn clear_backup_has_no_manifest_key() {
        let mut m = manifest();
        m.set_manifest_key(None);
        assert!(!m.is_encrypted());
        assert!(m.manifest_key().is_none());
        let back = ManifestPlist::from_bytes(&m.to_bytes()).unwrap();
        assert!(!back.is_encrypted());
    }

    #[test]
    fn manifest_errors_name_the_file_and_key() {
        let mut d = manifest().into_dictionary();
        d.remove("BackupKeyBag");
        let bytes = crate::plist_frame::encode(
            &Value::Dictionary(d),
            crate::plist_frame::PlistFormat::Binary,
        );
        let err = ManifestPlist::from_bytes(&bytes[4..]).unwrap_err();
        assert!(matches!(&err, PlistError::MissingKey { key, .. } if key == "BackupKeyBag"));
        assert!(err.to_string().contains("Manifest.plist"));

        let mut m = manifest();
        let err = m
            .insert("IsEncrypted", Value::String("yes".into()))
            .unwrap_err();
        assert!(
            matches!(err, PlistError::WrongType { ref key, found: "a string", .. } if key == "IsEncrypted")
        );
        assert!(
            m.is_encrypted(),
            "a refused insert leaves the plist unchanged"
        );

        let mut lockdown = Dictionary::new();
        lockdown.insert("ProductVersion".into(), Value::Integer(17.into()));
        let err = m
            .insert("Lockdown", Value::Dictionary(lockdown))
            .unwrap_err();
        assert!(
            matches!(err, PlistError::WrongType { ref key, .. } if key == "Lockdown.ProductVersion")
        );
    }

    #[test]
    fn not_a_dictionary_and_garbage() {
        let mut arr = Vec::new();
        Value::Array(vec![]).to_writer_binary(&mut arr).unwrap();
        assert!(matches!(
            StatusPlist::from_bytes(&arr),
            Err(PlistError::NotADictionary { .. })
        ));
        assert!(StatusPlist::from_bytes(b"\x00\x01garbage").is_err());
        assert!(matches!(
            StatusPlist::from_bytes(b"<?xml version=\"1.0\"?><plist><dict><key>a</key></plist>"),
            Err(PlistError::Parse { .. })
        ));
        assert!(matches!(
            StatusPlist::from_bytes(b"bplist00 truncated"),
            Err(PlistError::Malformed { .. })
        ));
        let err = StatusPlist::read("/nonexistent/Status.plist").unwrap_err();
        assert!(matches!(err, PlistError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/Status.plist"));
    }

    #[test]
    fn deep_xml_is_refused_without_overflowing_the_stack() {
        let depth = 100_000;
        let mut xml =
            String::from(r#"<?xml version="1.0" encoding="UTF-8"?><plist version="1.0">"#);
        xml.push_str(&"<array>".repeat(depth));
        xml.push_str(&"</array>".repeat(depth));
        xml.push_str("</plist>");
        // Run on a small stack to prove nothing recurses per level.
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || InfoPlist::from_bytes(xml.as_bytes()).map(|_| ()))
            .unwrap();
        assert!(matches!(
            handle.join().unwrap(),
            Err(PlistError::TooDeep { .. })
        ));
    }

    #[test]
    fn status_finished() {
        let uuid = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let s = StatusPlist::finished(uuid, date(1_700_000_000), true);
        assert!(s.is_finished());
        assert_eq!(s.uuid(), Some("01234567-89AB-CDEF-0123-456789ABCDEF"));
        assert_eq!(s.version(), Some("3.3"));
        assert_eq!(s.backup_state(), Some("new"));
        assert_eq!(s.is_full_backup(), Some(true));
        let bytes = s.to_bytes();
        let back = StatusPlist::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.to_bytes(), bytes);

        let mut d = s.into_dictionary();
        d.remove("SnapshotState");
        assert!(matches!(
            StatusPlist::from_dictionary(d, Path::new("x/Status.plist")),
            Err(PlistError::MissingKey { key, .. }) if key == "SnapshotState"
        ));
    }

    #[test]
    fn info_from_lockdown_values() {
        let mut params = InfoPlistParams::new(InfoPlistParams::random_guid());
        params.installed_applications = vec!["com.example.app".into()];
        params.applications.insert(
            "com.example.app".into(),
            InfoPlist::application_entry(vec![1], vec![2], None),
        );
        params.last_backup_date = Some(date(1_700_000_000));
        let info = InfoPlist::from_lockdown_values(
            "00008110-001a2b3c4d5e801e",
            &lockdown_values(),
            params,
        );
        assert_eq!(info.target_identifier(), Some("00008110-001a2b3c4d5e801e"));
        assert_eq!(info.unique_identifier(), Some("00008110-001A2B3C4D5E801E"));
        assert_eq!(info.device_name(), Some("Test iPhone"));
        assert_eq!(info.display_name(), Some("Test iPhone"));
        assert_eq!(info.imei(), Some("356789012345678"));
        assert_eq!(info.phone_number(), Some("+1 555 0100"));
        assert_eq!(info.iccid(), None);
        assert_eq!(info.string("Target Type"), Some("Device"));
        assert_eq!(info.itunes_version(), Some("10.0.1"));
        assert_eq!(info.installed_applications(), vec!["com.example.app"]);
        let guid = info.guid().unwrap().as_string().unwrap();
        assert!(
            guid.len() == 32
                && guid
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
        );
        let xml = info.to_xml();
        assert!(xml.starts_with(b"<?xml"));
        let back = InfoPlist::from_bytes(&xml).unwrap();
        assert_eq!(back, info);
        assert_eq!(back.to_xml(), xml);
    }

    #[test]
    fn info_guid_may_be_data() {
        let mut d = Dictionary::new();
        d.insert("GUID".into(), Value::Data(vec![0; 16]));
        InfoPlist::from_dictionary(d, Path::new("Info.plist")).unwrap();
        let mut d = Dictionary::new();
        d.insert(
            "Installed Applications".into(),
            Value::Array(vec![Value::Boolean(true)]),
        );
        assert!(matches!(
            InfoPlist::from_dictionary(d, Path::new("Info.plist")),
            Err(PlistError::WrongType { .. })
        ));
    }

    #[test]
    fn sub_second_dates_are_rounded_down() {
        let t = Date::from(UNIX_EPOCH + Duration::from_millis(1_500));
        assert_eq!(whole_seconds(t), date(1));
        let before = Date::from(UNIX_EPOCH - Duration::from_millis(1_500));
        assert_eq!(
            whole_seconds(before),
            Date::from(UNIX_EPOCH - Duration::from_secs(2))
        );
    }
}
