//! What the simulated phone puts into a backup: keybag, per-file keys, Manifest.db rows, encrypted
//! data and the phone-written plists — all derived from the phone and the password, deterministically.
//!
//! Determinism is what a real phone does not have but a test harness needs: the same phone, day and
//! password always give byte-identical backups, and a file that did not change between two days keeps
//! its key (as on a real phone, whose Manifest.db carries unchanged rows over).

use super::phone::DeviceIdentity;
use super::phone::{Entry, EntryKind, Phone, PhoneError};
use crate::ios_backup::cbc_stream::{self, EncryptWriter};
use crate::ios_backup::kdf;
use crate::ios_backup::keybag::{FileKeyError, Keybag, KeybagError, UnlockedKeybag};
use crate::ios_backup::manifest_db::{ManifestDbWriter, ManifestRow, ManifestWriteError};
use crate::ios_backup::mbfile::MbFile;
use crate::ios_backup::plists::{
    InfoPlist, InfoPlistParams, ManifestPlist, ManifestPlistParams, StatusPlist,
};
use crate::password::Password;
use hmac::{KeyInit, Mac};
use plist::{Dictionary, Value};
use rand::SeedableRng;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The protection class of ManifestKey, as on real phones.
const MANIFEST_KEY_CLASS: u32 = 4;

/// How the simulated phone encrypts its backups.
#[derive(Clone, Debug)]
pub struct Encryption {
    pub password: Password,
    /// PBKDF2-SHA256 rounds (`DPIC`); phones use 10,000,000, tests may use fewer.
    pub dpic: u32,
}

/// Errors producing a simulated backup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimBackupError {
    #[error("building the keybag failed: {0}")]
    Keybag(#[from] KeybagError),
    #[error("wrapping a file key failed: {0}")]
    FileKey(#[from] FileKeyError),
    #[error(transparent)]
    Phone(#[from] PhoneError),
    #[error("writing Manifest.db failed: {0}")]
    ManifestDb(#[from] ManifestWriteError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the output folder {} is not empty; give a new or empty folder", path.display())]
    OutputNotEmpty { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SimBackupError + '_ {
    move |source| SimBackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Keys {
    keybag: Keybag,
    unlocked: UnlockedKeybag,
    /// Secret from which every file key is derived (HMAC of the file's identity and version).
    file_key_seed: Zeroizing<[u8; 32]>,
    manifest_key: Zeroizing<[u8; 32]>,
    manifest_key_blob: Vec<u8>,
}

/// One day's backup of a simulated phone.
pub struct SimBackup<'p> {
    phone: &'p Phone,
    keys: Option<Keys>,
    keybag_bytes: Vec<u8>,
}

/// Counts of what a folder write produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteStats {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Plaintext bytes of all files.
    pub plaintext_bytes: u64,
    /// Bytes written for data files (ciphertext when encrypted).
    pub data_bytes: u64,
}

impl<'p> SimBackup<'p> {
    /// Prepares the backup of `phone`; with `encryption`, derives the keybag's KEK once (the only
    /// slow step: about 1.5 s at 10,000,000 rounds here).
    pub fn new(phone: &'p Phone, encryption: Option<&Encryption>) -> Result<Self, SimBackupError> {
        // Keys depend on the phone's seed only, not on the day: class keys and file keys stay
        // stable across days, as a phone's do.
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(phone.seed() ^ 0x6b65_7962_6167);
        match encryption {
            None => {
                let keybag = Keybag::new_unencrypted(&mut rng);
                let keybag_bytes = keybag.to_bytes();
                Ok(SimBackup {
                    phone,
                    keys: None,
                    keybag_bytes,
                })
            }
            Some(enc) => {
                let (keybag, unlocked) =
                    Keybag::new_backup(&enc.password, enc.dpic, kdf::DEFAULT_ITER, &mut rng)?;
                let mut file_key_seed = Zeroizing::new([0u8; 32]);
                rand::RngCore::fill_bytes(&mut rng, &mut file_key_seed[..]);
                let (manifest_key, wrapped) =
                    unlocked.new_file_key(MANIFEST_KEY_CLASS, &mut rng)?;
                let keybag_bytes = keybag.to_bytes();
                Ok(SimBackup {
                    phone,
                    keys: Some(Keys {
                        keybag,
                        unlocked,
                        file_key_seed,
                        manifest_key,
                        manifest_key_blob: wrapped.to_bytes().to_vec(),
                    }),
                    keybag_bytes,
                })
            }
        }
    }

    pub fn phone(&self) -> &Phone {
        self.phone
    }

    pub fn is_encrypted(&self) -> bool {
        self.keys.is_some()
    }

    /// The unlocked keybag, when encrypted: its KEK opens this phone's earlier backups (the
    /// backup agent reads the previous Manifest.db with it to back up incrementally).
    pub fn unlocked_keybag(&self) -> Option<&UnlockedKeybag> {
        self.keys.as_ref().map(|k| &k.unlocked)
    }

    /// The keybag, when encrypted.
    pub fn keybag(&self) -> Option<&Keybag> {
        self.keys.as_ref().map(|k| &k.keybag)
    }

    /// The key of one file's current content: HMAC-SHA256 over its fileID, size and mtime, so a
    /// changed file gets a new key (keeping the zero IV safe) and an unchanged one keeps its key.
    fn file_key(&self, keys: &Keys, e: &Entry) -> Zeroizing<[u8; 32]> {
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&keys.file_key_seed[..])
                .expect("HMAC takes keys of any length");
        mac.update(e.file_id().as_bytes());
        mac.update(&e.size().to_be_bytes());
        mac.update(&e.last_modified.to_be_bytes());
        let out = mac.finalize().into_bytes();
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&out[..32]);
        k
    }

    /// The Manifest.db row of an entry, with its wrapped key when encrypted.
    pub fn row(&self, e: &Entry) -> Result<ManifestRow, SimBackupError> {
        let (size, target) = match &e.kind {
            EntryKind::File { size, .. } => (*size, None),
            EntryKind::Dir => (0, None),
            EntryKind::Symlink { target } => (0, Some(target.clone())),
        };
        let encryption_key = match (&self.keys, &e.kind) {
            (Some(keys), EntryKind::File { .. }) => {
                let key = self.file_key(keys, e);
                let wrapped = keys.unlocked.wrap_file_key(e.protection_class, &key)?;
                Some(wrapped.to_bytes().to_vec())
            }
            _ => None,
        };
        let file = MbFile {
            relative_path: e.relative_path.clone(),
            target,
            size,
            mode: e.mode,
            inode: e.inode,
            user_id: i64::from(e.user_id),
            group_id: i64::from(e.group_id),
            birth: e.birth,
            last_modified: e.last_modified,
            last_status_change: e.last_status_change,
            protection_class: e.protection_class,
            flags: 0,
            encryption_key,
            digest: None,
            extended_attributes: None,
        };
        Ok(ManifestRow::new(e.domain.clone(), file))
    }

    /// Length of an entry's data file in the backup (ciphertext length when encrypted).
    pub fn data_len(&self, e: &Entry) -> u64 {
        match self.keys {
            Some(_) => cbc_stream::encrypted_len(e.size()),
            None => e.size(),
        }
    }

    /// Writes an entry's data file (encrypted with its own key when the backup is encrypted).
    pub fn write_data(&self, e: &Entry, out: &mut dyn Write) -> Result<u64, SimBackupError> {
        let mut src = self.phone.open(e)?;
        let stream_err = |source| SimBackupError::Io {
            path: PathBuf::from(format!("{}/{}", e.domain, e.relative_path)),
            source,
        };
        match &self.keys {
            None => io::copy(&mut src, out).map_err(stream_err),
            Some(keys) => {
                let key = self.file_key(keys, e);
                let mut w = EncryptWriter::new(out, &key);
                let n = io::copy(&mut src, &mut w).map_err(stream_err)?;
                w.finish().map_err(stream_err)?;
                Ok(cbc_stream::encrypted_len(n))
            }
        }
    }

    /// Writes Manifest.db (encrypted with the ManifestKey and padded, when encrypted) to `path`.
    /// Day 1's rows are written in the phone's entry order; each later day changes that
    /// database in place as a phone does (changed rows rewritten, removed ones deleted, new
    /// ones appended), so the same phone and day give the same bytes and a day changes only a
    /// few pages of the day before.
    pub fn write_manifest_db(&self, path: &Path) -> Result<(), SimBackupError> {
        let plain_path = match &self.keys {
            None => path.to_path_buf(),
            Some(_) => path.with_extension("plain-tmp"),
        };
        self.write_plain_manifest_db(&plain_path)?;
        if let Some(keys) = &self.keys {
            let src = fs::File::open(&plain_path).map_err(io_err(&plain_path))?;
            let dst = fs::File::create(path).map_err(io_err(path))?;
            let mut dst = BufWriter::new(dst);
            cbc_stream::encrypt_manifest_db(io::BufReader::new(src), &mut dst, &keys.manifest_key)
                .map_err(|e| SimBackupError::Io {
                    path: path.to_path_buf(),
                    source: e.into(),
                })?;
            dst.flush().map_err(io_err(path))?;
            fs::remove_file(&plain_path).map_err(io_err(&plain_path))?;
        }
        Ok(())
    }

    /// Writes the plaintext Manifest.db (the rows carry wrapped keys when the backup is
    /// encrypted) to `plain_path`, replacing any file there: what a host holds after decrypting
    /// it, and what the snapshot repository stores.
    pub fn write_plain_manifest_db(&self, plain_path: &Path) -> Result<(), SimBackupError> {
        let _ = fs::remove_file(plain_path);
        let (seed, profile) = (self.phone.seed(), self.phone.profile());
        let mut prev = if self.phone.day() == 1 {
            self.phone.clone()
        } else {
            Phone::new(seed, profile, 1)
        };
        let mut w = ManifestDbWriter::create(plain_path)?;
        for e in prev.entries() {
            w.insert(&self.row(e)?)?;
        }
        w.finish()?;
        for day in 2..=self.phone.day() {
            let cur = if day == self.phone.day() {
                self.phone.clone()
            } else {
                Phone::new(seed, profile, day)
            };
            let diff = cur.diff(&prev);
            let mut w = ManifestDbWriter::reopen(plain_path)?;
            for e in &diff.removed {
                w.delete(&e.file_id())?;
            }
            for (_, e) in &diff.modified {
                w.update(&self.row(e)?)?;
            }
            for e in &diff.added {
                w.insert(&self.row(e)?)?;
            }
            w.finish()?;
            prev = cur;
        }
        Ok(())
    }

    /// Manifest.plist as the phone writes it.
    pub fn manifest_plist(&self) -> ManifestPlist {
        let id = self.phone.identity();
        let mut applications = Dictionary::new();
        for app in &id.installed_apps {
            let mut d = Dictionary::new();
            d.insert(
                "CFBundleIdentifier".into(),
                Value::String(app.bundle_id.clone()),
            );
            d.insert("CFBundleVersion".into(), Value::String(app.version.clone()));
            d.insert(
                "ContainerContentClass".into(),
                Value::String("Data/Application".into()),
            );
            d.insert(
                "Path".into(),
                Value::String(format!(
                    "/private/var/containers/Bundle/Application/{}.app",
                    app.display_name
                )),
            );
            applications.insert(app.bundle_id.clone(), Value::Dictionary(d));
        }
        let params = ManifestPlistParams {
            backup_keybag: self.keybag_bytes.clone(),
            manifest_key: self.keys.as_ref().map(|k| k.manifest_key_blob.clone()),
            lockdown: ManifestPlist::lockdown_from_values(&lockdown_root_values(id)),
            applications,
            date: unix_date(self.phone.now()),
            was_passcode_set: true,
            system_domains_version: "24.0".into(),
        };
        // Every value above has the type the model expects.
        ManifestPlist::new_for_backup(params).expect("well-typed Manifest.plist values")
    }

    /// Status.plist of a finished backup.
    pub fn status_plist(&self, full: bool) -> StatusPlist {
        StatusPlist::finished(self.backup_uuid(), unix_date(self.phone.now()), full)
    }

    /// Info.plist as a host (idevicebackup2) writes it.
    pub fn info_plist(&self) -> InfoPlist {
        let id = self.phone.identity();
        let mut host = InfoPlistParams::new(hex::encode_upper(self.backup_uuid().as_bytes()));
        host.installed_applications = id
            .installed_apps
            .iter()
            .map(|a| a.bundle_id.clone())
            .collect();
        host.last_backup_date = Some(unix_date(self.phone.now()));
        InfoPlist::from_lockdown_values(&id.udid, &lockdown_root_values(id), host)
    }

    /// A stable UUID for this phone's backup on this day.
    fn backup_uuid(&self) -> uuid::Uuid {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            self.phone.seed() ^ (u64::from(self.phone.day()) << 32) ^ 0x7575_6964,
        );
        let mut b = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rng, &mut b);
        uuid::Builder::from_random_bytes(b).into_uuid()
    }

    /// Writes the complete backup folder at `out` (created if missing, refused if not empty):
    /// Info.plist, Manifest.plist, Manifest.db, Status.plist and `xx/<fileID>` for every file.
    pub fn write_folder(&self, out: &Path) -> Result<WriteStats, SimBackupError> {
        match fs::read_dir(out) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return Err(SimBackupError::OutputNotEmpty {
                        path: out.to_path_buf(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(out).map_err(io_err(out))?
            }
            Err(e) => return Err(io_err(out)(e)),
        }
        let mut stats = WriteStats::default();
        for e in self.phone.entries() {
            match &e.kind {
                EntryKind::Dir => stats.directories += 1,
                EntryKind::Symlink { .. } => stats.symlinks += 1,
                EntryKind::File { size, .. } => {
                    let id = e.file_id();
                    let dir = out.join(&id[..2]);
                    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                    let path = dir.join(&id);
                    let f = fs::File::create(&path).map_err(io_err(&path))?;
                    let mut w = BufWriter::with_capacity(cbc_stream::BUF_LEN, f);
                    stats.data_bytes += self.write_data(e, &mut w)?;
                    w.flush().map_err(io_err(&path))?;
                    stats.files += 1;
                    stats.plaintext_bytes += size;
                }
            }
        }
        self.write_manifest_db(&out.join("Manifest.db"))?;
        let write = |name: &str, bytes: Vec<u8>| {
            let p = out.join(name);
            fs::write(&p, bytes).map_err(io_err(&p))
        };
        write("Manifest.plist", self.manifest_plist().to_bytes())?;
        write("Status.plist", self.status_plist(true).to_bytes())?;
        write("Info.plist", self.info_plist().to_xml())?;
        Ok(stats)
    }
}

/// A Unix time as a plist date.
pub fn unix_date(secs: i64) -> plist::Date {
    let t = if secs >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_secs(secs.unsigned_abs())
    };
    plist::Date::from(t)
}

/// The lockdown root values of the simulated phone (what `GetValue` with no domain and no key
/// returns), without the device's public key.
pub fn lockdown_root_values(id: &DeviceIdentity) -> Dictionary {
    let mut d = Dictionary::new();
    let mut s = |k: &str, v: &str| {
        d.insert(k.into(), Value::String(v.to_owned()));
    };
    s("BuildVersion", &id.build_version);
    s("DeviceClass", &id.device_class);
    s("DeviceName", &id.device_name);
    s("HardwareModel", &id.hardware_model);
    s("IntegratedCircuitCardIdentity", &id.iccid);
    s("InternationalMobileEquipmentIdentity", &id.imei);
    s("MobileEquipmentIdentifier", &id.meid);
    s("PhoneNumber", &id.phone_number);
    s("ProductName", "iPhone OS");
    s("ProductType", &id.product_type);
    s("ProductVersion", &id.product_version);
    s("SerialNumber", &id.serial_number);
    s("TimeZone", &id.time_zone);
    s("UniqueDeviceID", &id.udid);
    s("WiFiAddress", &id.wifi_address);
    s("BluetoothAddress", &id.bluetooth_address);
    d.insert(
        "UniqueChipID".into(),
        Value::Integer(id.unique_chip_id.into()),
    );
    d.insert(
        "ChipID".into(),
        Value::Integer(u64::from(id.chip_id).into()),
    );
    d
}
