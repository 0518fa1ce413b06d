//! The backup keybag (`BackupKeyBag` in Manifest.plist): a bounded TLV codec that round-trips byte
//! for byte, unlocking with a password or KEK, and the keybags an encryptor writes.
//!
//! Layout: records of 4-byte ASCII tag, u32 big-endian length, value. The first `UUID` is the
//! keybag's, the first `WRAP` is the keybag-level WRAP, every later `UUID` opens a class record
//! that takes the `CLAS WRAP KTYP WPKY PBKY` tags after it; any other tag is a keybag attribute.
//! Tags we do not know are kept, so `encode(decode(b)) == b` for every accepted `b`.

use super::kdf::{self, KdfError, KdfParams, Sha256Stage};
use super::keywrap::{self, KeyWrapError, WrappedKey, KEY_LEN, WRAPPED_LEN};
use crate::password::Password;
use rand::CryptoRng;
use std::fmt;
use zeroize::Zeroizing;

/// Longest keybag accepted. Real ones are 1,388 bytes (encrypted) or 1,336 (unencrypted).
pub const MAX_KEYBAG_LEN: usize = 64 * 1024;
/// Longest value of a single record. The longest real value is 40 bytes (HMCK, WPKY).
pub const MAX_VALUE_LEN: usize = 1024;
/// Most records accepted in one keybag. Real ones have 65 (10 globals + 11 × 5).
pub const MAX_RECORDS: usize = 512;
/// Most class records accepted. Real backup keybags have 11.
pub const MAX_CLASSES: usize = 32;

/// WRAP bit 1: the class key is also wrapped with the device's UID-derived key 0x835, so it can
/// only be used on the phone that made the backup.
pub const WRAP_DEVICE: u32 = 1;
/// WRAP bit 2: the class key is RFC 3394-wrapped with the password-derived KEK.
pub const WRAP_PASSCODE: u32 = 2;

/// Protection classes used in backups (`ProtectionClass` in MBFile, the prefix of EncryptionKey).
pub mod class {
    /// NSFileProtectionComplete (A).
    pub const COMPLETE: u32 = 1;
    /// NSFileProtectionCompleteUnlessOpen (B).
    pub const COMPLETE_UNLESS_OPEN: u32 = 2;
    /// NSFileProtectionCompleteUntilFirstUserAuthentication (C).
    pub const COMPLETE_UNTIL_FIRST_AUTH: u32 = 3;
    /// NSFileProtectionNone (D): what real backups use for ManifestKey.
    pub const NONE: u32 = 4;
    /// kSecAttrAccessibleWhenUnlocked (keychain).
    pub const KEYCHAIN_WHEN_UNLOCKED: u32 = 6;
    /// kSecAttrAccessibleAfterFirstUnlock (keychain).
    pub const KEYCHAIN_AFTER_FIRST_UNLOCK: u32 = 7;
    /// kSecAttrAccessibleAlways (keychain).
    pub const KEYCHAIN_ALWAYS: u32 = 8;
    /// Highest class in a backup keybag (…AlwaysThisDeviceOnly).
    pub const MAX: u32 = 11;
}

/// Keybag version written by iOS 10.2 and later (and found in unencrypted keybags).
pub const VERSION_CURRENT: u32 = 5;

/// A keybag record tag: four bytes, normally ASCII.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub [u8; 4]);

impl Tag {
    /// Keybag version.
    pub const VERS: Tag = Tag(*b"VERS");
    /// Keybag type (1 = backup).
    pub const TYPE: Tag = Tag(*b"TYPE");
    /// Keybag UUID (first occurrence) or class record UUID (later ones).
    pub const UUID: Tag = Tag(*b"UUID");
    /// Wrapped HMAC key of on-device keybags; unused in backups.
    pub const HMCK: Tag = Tag(*b"HMCK");
    /// Wrap flags (keybag-level the first time, then per class).
    pub const WRAP: Tag = Tag(*b"WRAP");
    /// Salt of the PBKDF2-SHA1 stage.
    pub const SALT: Tag = Tag(*b"SALT");
    /// Rounds of the PBKDF2-SHA1 stage.
    pub const ITER: Tag = Tag(*b"ITER");
    /// Present with the SHA-256 stage; its meaning is not known (always 1).
    pub const DPWT: Tag = Tag(*b"DPWT");
    /// Rounds of the PBKDF2-SHA256 stage.
    pub const DPIC: Tag = Tag(*b"DPIC");
    /// Salt of the PBKDF2-SHA256 stage.
    pub const DPSL: Tag = Tag(*b"DPSL");
    /// Protection class of a class record.
    pub const CLAS: Tag = Tag(*b"CLAS");
    /// Key type of a class record (0 = AES, 1 = Curve25519).
    pub const KTYP: Tag = Tag(*b"KTYP");
    /// Wrapped class key.
    pub const WPKY: Tag = Tag(*b"WPKY");
    /// Public key of a Curve25519 class (not seen in backups).
    pub const PBKY: Tag = Tag(*b"PBKY");
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic()) {
            f.write_str(&String::from_utf8_lossy(&self.0))
        } else {
            write!(f, "0x{}", hex::encode(self.0))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One TLV record, exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub tag: Tag,
    pub value: Vec<u8>,
}

/// The keybag's TYPE (masked with 0x3FFFFFFF; the high bits may carry flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeybagType {
    System,
    Backup,
    Escrow,
    Ota,
    Other(u32),
}

impl KeybagType {
    fn from_raw(raw: u32) -> Self {
        match raw & 0x3FFF_FFFF {
            0 => KeybagType::System,
            1 => KeybagType::Backup,
            2 => KeybagType::Escrow,
            3 => KeybagType::Ota,
            n => KeybagType::Other(n),
        }
    }
}

/// One class record: the class key of one protection class, wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRecord {
    /// UUID of the record.
    pub uuid: [u8; 16],
    /// CLAS: the protection class.
    pub class: u32,
    /// WRAP: [`WRAP_PASSCODE`] and/or [`WRAP_DEVICE`].
    pub wrap: u32,
    /// KTYP, if present (0 = AES).
    pub key_type: Option<u32>,
    /// WPKY: the wrapped class key, if present.
    pub wrapped_key: Option<[u8; WRAPPED_LEN]>,
    /// PBKY, if present.
    pub public_key: Option<Vec<u8>>,
}

impl ClassRecord {
    /// What the password alone can do with this class.
    pub fn state(&self) -> ClassKeyState {
        ClassKeyState::from_wrap(self.wrap)
    }
}

/// What the backup password gives access to, per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassKeyState {
    /// WRAP has the passcode bit and not the device bit: the class key is usable.
    Available,
    /// WRAP = 3: the KEK unwraps it, but the result is still encrypted with the original
    /// device's key 0x835. Not an error: such classes (5, 9–11) are simply unreadable off-device.
    DeviceBound,
    /// WRAP lacks the passcode bit: the password does not protect this class at all.
    NotPasswordWrapped,
}

impl ClassKeyState {
    fn from_wrap(wrap: u32) -> Self {
        if wrap & WRAP_PASSCODE == 0 {
            ClassKeyState::NotPasswordWrapped
        } else if wrap & WRAP_DEVICE != 0 {
            ClassKeyState::DeviceBound
        } else {
            ClassKeyState::Available
        }
    }
}

/// Why a keybag could not be read or unlocked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeybagError {
    /// The blob is longer than [`MAX_KEYBAG_LEN`].
    #[error("keybag is {len} bytes long, more than {MAX_KEYBAG_LEN}")]
    TooLong { len: usize },
    /// A record header or value runs past the end of the blob.
    #[error("keybag is truncated: the record at offset {offset} runs past its end")]
    Truncated { offset: usize },
    /// A record's length is above [`MAX_VALUE_LEN`].
    #[error(
        "keybag record {tag} at offset {offset} claims {len} bytes, more than {MAX_VALUE_LEN}"
    )]
    ValueTooLong { tag: Tag, offset: usize, len: u32 },
    /// More than [`MAX_RECORDS`] records.
    #[error("keybag has more than {MAX_RECORDS} records")]
    TooManyRecords,
    /// More than [`MAX_CLASSES`] class records.
    #[error("keybag has more than {MAX_CLASSES} class records")]
    TooManyClasses,
    /// A known tag has a value of the wrong size (integers are 4 bytes, UUIDs 16, WPKY 40).
    #[error("keybag record {tag} has {got} bytes, expected {expected}")]
    BadValueLength {
        tag: Tag,
        expected: usize,
        got: usize,
    },
    /// A keybag attribute, or a tag inside one class record, appears twice.
    #[error("keybag record {tag} appears twice in the same scope")]
    DuplicateTag { tag: Tag },
    /// Two class records carry the same CLAS.
    #[error("keybag has two records for protection class {class}")]
    DuplicateClass { class: u32 },
    /// A class tag (CLAS, KTYP, WPKY, PBKY, or a second WRAP) before any class record.
    #[error("keybag record {tag} appears before the first class record")]
    ClassTagOutsideRecord { tag: Tag },
    /// A class record lacks CLAS or WRAP.
    #[error("class record #{index} of the keybag has no {tag}")]
    IncompleteClass { index: usize, tag: Tag },
    /// A keybag attribute the key derivation needs (SALT, ITER) is missing.
    #[error("keybag has no {tag}, needed to derive the key")]
    MissingTag { tag: Tag },
    /// DPSL without DPIC or the reverse.
    #[error("keybag has only one of DPSL and DPIC")]
    IncompleteSha256Stage,
    /// A class whose WRAP has the passcode bit has no WPKY to unwrap.
    #[error("class {class} is password-wrapped but has no WPKY")]
    MissingWrappedKey { class: u32 },
    /// No class is wrapped with the password, so there is nothing to unlock or verify with.
    #[error("no class key in the keybag is wrapped with the password")]
    NoPasswordClasses,
    /// Key-derivation parameters outside the accepted bounds.
    #[error(transparent)]
    Kdf(#[from] KdfError),
    /// The first password-wrapped class key failed its RFC 3394 integrity check.
    #[error("wrong backup password")]
    WrongPassword,
    /// An earlier class unwrapped with this KEK but this one did not: the keybag is damaged.
    #[error("class {class} key does not unwrap although earlier classes did: damaged keybag")]
    DamagedClassKey { class: u32 },
}

/// Why a file key (or a class key) could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileKeyError {
    /// The keybag has no record for this protection class.
    #[error("the keybag has no protection class {class}")]
    UnknownClass { class: u32 },
    /// The class key needs the original device's key 0x835.
    #[error("protection class {class} is bound to the original device and unusable here")]
    DeviceBound { class: u32 },
    /// The class key is not wrapped with the password.
    #[error("protection class {class} is not protected by the backup password")]
    NotPasswordWrapped { class: u32 },
    /// The wrapped file key does not unwrap under the class key.
    #[error("file key of class {class} does not unwrap: {source}")]
    Unwrap {
        class: u32,
        #[source]
        source: KeyWrapError,
    },
}

/// A parsed backup keybag. Holds no secrets (salts and wrapped keys are public), so `Debug` is
/// unredacted. Build one with [`Keybag::decode`], [`Keybag::from_records`],
/// [`Keybag::new_backup`] or [`Keybag::new_unencrypted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keybag {
    records: Vec<Record>,
    version: Option<u32>,
    kind: Option<u32>,
    uuid: Option<[u8; 16]>,
    hmck: Option<Vec<u8>>,
    wrap: Option<u32>,
    salt: Option<Vec<u8>>,
    iter: Option<u32>,
    dpwt: Option<u32>,
    dpic: Option<u32>,
    dpsl: Option<Vec<u8>>,
    classes: Vec<ClassRecord>,
}

fn be_u32(tag: Tag, v: &[u8]) -> Result<u32, KeybagError> {
    let a: [u8; 4] = v.try_into().map_err(|_| KeybagError::BadValueLength {
        tag,
        expected: 4,
        got: v.len(),
    })?;
    Ok(u32::from_be_bytes(a))
}

fn fixed<const N: usize>(tag: Tag, v: &[u8]) -> Result<[u8; N], KeybagError> {
    v.try_into().map_err(|_| KeybagError::BadValueLength {
        tag,
        expected: N,
        got: v.len(),
    })
}

fn set_once<T>(slot: &mut Option<T>, tag: Tag, v: T) -> Result<(), KeybagError> {
    if slot.is_some() {
        return Err(KeybagError::DuplicateTag { tag });
    }
    *slot = Some(v);
    Ok(())
}

/// A class record while its tags are being collected.
struct OpenClass {
    uuid: [u8; 16],
    class: Option<u32>,
    wrap: Option<u32>,
    key_type: Option<u32>,
    wrapped_key: Option<[u8; WRAPPED_LEN]>,
    public_key: Option<Vec<u8>>,
}

impl OpenClass {
    fn close(self, index: usize) -> Result<ClassRecord, KeybagError> {
        let class = self.class.ok_or(KeybagError::IncompleteClass {
            index,
            tag: Tag::CLAS,
        })?;
        let wrap = self.wrap.ok_or(KeybagError::IncompleteClass {
            index,
            tag: Tag::WRAP,
        })?;
        Ok(ClassRecord {
            uuid: self.uuid,
            class,
            wrap,
            key_type: self.key_type,
            wrapped_key: self.wrapped_key,
            public_key: self.public_key,
        })
    }
}

impl Keybag {
    /// Parses a keybag blob. Every length is checked against the named caps; nothing panics.
    pub fn decode(data: &[u8]) -> Result<Self, KeybagError> {
        if data.len() > MAX_KEYBAG_LEN {
            return Err(KeybagError::TooLong { len: data.len() });
        }
        let mut records = Vec::new();
        let mut off = 0usize;
        while off < data.len() {
            if records.len() == MAX_RECORDS {
                return Err(KeybagError::TooManyRecords);
            }
            let header: &[u8; 8] = data
                .get(off..off + 8)
                .and_then(|h| h.try_into().ok())
                .ok_or(KeybagError::Truncated { offset: off })?;
            let tag = Tag([header[0], header[1], header[2], header[3]]);
            let len32 = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let len = len32 as usize;
            if len > MAX_VALUE_LEN {
                return Err(KeybagError::ValueTooLong {
                    tag,
                    offset: off,
                    len: len32,
                });
            }
            let value = data
                .get(off + 8..off + 8 + len)
                .ok_or(KeybagError::Truncated { offset: off })?;
            records.push(Record {
                tag,
                value: value.to_vec(),
            });
            off += 8 + len;
        }
        Self::from_records(records)
    }

    /// Interprets a list of records (the same rules and caps as [`Keybag::decode`]).
    pub fn from_records(records: Vec<Record>) -> Result<Self, KeybagError> {
        if records.len() > MAX_RECORDS {
            return Err(KeybagError::TooManyRecords);
        }
        let mut total = 0usize;
        for r in &records {
            if r.value.len() > MAX_VALUE_LEN {
                return Err(KeybagError::ValueTooLong {
                    tag: r.tag,
                    offset: total,
                    len: u32::try_from(r.value.len()).unwrap_or(u32::MAX),
                });
            }
            total += 8 + r.value.len();
        }
        if total > MAX_KEYBAG_LEN {
            return Err(KeybagError::TooLong { len: total });
        }

        let mut kb = Keybag {
            records: Vec::new(),
            version: None,
            kind: None,
            uuid: None,
            hmck: None,
            wrap: None,
            salt: None,
            iter: None,
            dpwt: None,
            dpic: None,
            dpsl: None,
            classes: Vec::new(),
        };
        let mut open: Option<OpenClass> = None;
        for r in &records {
            let (tag, v) = (r.tag, r.value.as_slice());
            match tag {
                Tag::UUID if kb.uuid.is_none() => {
                    kb.uuid = Some(fixed(tag, v)?);
                }
                Tag::UUID => {
                    if let Some(c) = open.take() {
                        kb.push_class(c)?;
                    }
                    if kb.classes.len() == MAX_CLASSES {
                        return Err(KeybagError::TooManyClasses);
                    }
                    open = Some(OpenClass {
                        uuid: fixed(tag, v)?,
                        class: None,
                        wrap: None,
                        key_type: None,
                        wrapped_key: None,
                        public_key: None,
                    });
                }
                // The first WRAP anywhere is the keybag's: that is how every reader parses it.
                Tag::WRAP if kb.wrap.is_none() => kb.wrap = Some(be_u32(tag, v)?),
                Tag::CLAS | Tag::WRAP | Tag::KTYP | Tag::WPKY | Tag::PBKY => {
                    let c = open
                        .as_mut()
                        .ok_or(KeybagError::ClassTagOutsideRecord { tag })?;
                    match tag {
                        Tag::CLAS => set_once(&mut c.class, tag, be_u32(tag, v)?)?,
                        Tag::WRAP => set_once(&mut c.wrap, tag, be_u32(tag, v)?)?,
                        Tag::KTYP => set_once(&mut c.key_type, tag, be_u32(tag, v)?)?,
                        Tag::WPKY => set_once(&mut c.wrapped_key, tag, fixed(tag, v)?)?,
                        _ => set_once(&mut c.public_key, tag, v.to_vec())?,
                    }
                }
                Tag::VERS => set_once(&mut kb.version, tag, be_u32(tag, v)?)?,
                Tag::TYPE => set_once(&mut kb.kind, tag, be_u32(tag, v)?)?,
                Tag::HMCK => set_once(&mut kb.hmck, tag, v.to_vec())?,
                Tag::SALT => set_once(&mut kb.salt, tag, v.to_vec())?,
                Tag::ITER => set_once(&mut kb.iter, tag, be_u32(tag, v)?)?,
                Tag::DPWT => set_once(&mut kb.dpwt, tag, be_u32(tag, v)?)?,
                Tag::DPIC => set_once(&mut kb.dpic, tag, be_u32(tag, v)?)?,
                Tag::DPSL => set_once(&mut kb.dpsl, tag, v.to_vec())?,
                // Unknown attribute: kept in `records` so that encoding gives the same bytes.
                _ => {}
            }
        }
        if let Some(c) = open.take() {
            kb.push_class(c)?;
        }
        kb.records = records;
        Ok(kb)
    }

    fn push_class(&mut self, c: OpenClass) -> Result<(), KeybagError> {
        let rec = c.close(self.classes.len())?;
        if self.classes.iter().any(|o| o.class == rec.class) {
            return Err(KeybagError::DuplicateClass { class: rec.class });
        }
        self.classes.push(rec);
        Ok(())
    }

    /// Appends the TLV encoding to `out`: the records exactly as parsed or built.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for r in &self.records {
            out.extend_from_slice(&r.tag.0);
            // Values are capped at MAX_VALUE_LEN, so the length always fits.
            out.extend_from_slice(&(r.value.len() as u32).to_be_bytes());
            out.extend_from_slice(&r.value);
        }
    }

    /// The TLV encoding as a new vector (what goes into Manifest.plist's `BackupKeyBag`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.records.iter().map(|r| 8 + r.value.len()).sum());
        self.encode(&mut v);
        v
    }

    /// The records in keybag order, unknown ones included.
    pub fn records(&self) -> &[Record] {
        &self.records
    }
    /// VERS: 5 since iOS 10.2, 3 before.
    pub fn version(&self) -> Option<u32> {
        self.version
    }
    /// TYPE, raw.
    pub fn type_raw(&self) -> Option<u32> {
        self.kind
    }
    /// TYPE, interpreted. A backup keybag is [`KeybagType::Backup`].
    pub fn keybag_type(&self) -> Option<KeybagType> {
        self.kind.map(KeybagType::from_raw)
    }
    /// The keybag UUID (the first UUID record).
    pub fn uuid(&self) -> Option<&[u8; 16]> {
        self.uuid.as_ref()
    }
    /// HMCK (unused in backups).
    pub fn hmck(&self) -> Option<&[u8]> {
        self.hmck.as_deref()
    }
    /// The keybag-level WRAP.
    pub fn wrap(&self) -> Option<u32> {
        self.wrap
    }
    /// SALT (SHA-1 stage).
    pub fn salt(&self) -> Option<&[u8]> {
        self.salt.as_deref()
    }
    /// ITER (SHA-1 stage).
    pub fn iterations(&self) -> Option<u32> {
        self.iter
    }
    /// DPWT.
    pub fn dpwt(&self) -> Option<u32> {
        self.dpwt
    }
    /// DPIC (SHA-256 stage rounds).
    pub fn dpic(&self) -> Option<u32> {
        self.dpic
    }
    /// DPSL (SHA-256 stage salt).
    pub fn dpsl(&self) -> Option<&[u8]> {
        self.dpsl.as_deref()
    }
    /// Class records in keybag order.
    pub fn classes(&self) -> &[ClassRecord] {
        &self.classes
    }
    /// The record of one protection class (CLAS compared as stored, unmasked).
    pub fn class(&self, class: u32) -> Option<&ClassRecord> {
        self.classes.iter().find(|c| c.class == class)
    }

    /// The KDF parameters, checked against the caps in [`kdf`].
    pub fn kdf_params(&self) -> Result<KdfParams, KeybagError> {
        let salt = self
            .salt
            .clone()
            .ok_or(KeybagError::MissingTag { tag: Tag::SALT })?;
        let iterations = self
            .iter
            .ok_or(KeybagError::MissingTag { tag: Tag::ITER })?;
        let sha256 = match (&self.dpsl, self.dpic) {
            (Some(salt), Some(iterations)) => Some(Sha256Stage {
                salt: salt.clone(),
                iterations,
            }),
            (None, None) => None,
            _ => return Err(KeybagError::IncompleteSha256Stage),
        };
        let p = KdfParams {
            sha256,
            salt,
            iterations,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks what unlocking needs besides the KEK, so that a useless keybag fails before the
    /// (slow) key derivation.
    fn check_unlockable(&self) -> Result<(), KeybagError> {
        let mut any = false;
        for c in &self.classes {
            if c.wrap & WRAP_PASSCODE != 0 {
                if c.wrapped_key.is_none() {
                    return Err(KeybagError::MissingWrappedKey { class: c.class });
                }
                any = true;
            }
        }
        if any {
            Ok(())
        } else {
            Err(KeybagError::NoPasswordClasses)
        }
    }

    /// Derives the KEK from `password` and unlocks every class (see [`Keybag::unlock_with_kek`]).
    /// Takes about 1.5 s with DPIC = 10,000,000.
    pub fn unlock(&self, password: &Password) -> Result<UnlockedKeybag, KeybagError> {
        let params = self.kdf_params()?;
        self.check_unlockable()?;
        let kek = kdf::derive_kek(password, &params)?;
        self.unlock_with_kek(&kek)
    }

    /// Unlocks with an already derived KEK (mvt's `--key-file`, iphone-backup-decrypt's
    /// `passphrase_key`). Every class whose WRAP has the passcode bit is unwrapped; if the first
    /// one fails its integrity check the password (KEK) is wrong.
    pub fn unlock_with_kek(&self, kek: &[u8; KEY_LEN]) -> Result<UnlockedKeybag, KeybagError> {
        self.check_unlockable()?;
        let mut classes = Vec::with_capacity(self.classes.len());
        let mut unwrapped_any = false;
        for c in &self.classes {
            let key = match (c.wrap & WRAP_PASSCODE != 0, &c.wrapped_key) {
                (true, Some(w)) => match keywrap::unwrap_key(kek, w) {
                    Ok(k) => {
                        unwrapped_any = true;
                        Some(k)
                    }
                    Err(_) if !unwrapped_any => return Err(KeybagError::WrongPassword),
                    Err(_) => return Err(KeybagError::DamagedClassKey { class: c.class }),
                },
                (true, None) => return Err(KeybagError::MissingWrappedKey { class: c.class }),
                (false, _) => None,
            };
            classes.push(UnlockedClass {
                uuid: c.uuid,
                class: c.class,
                wrap: c.wrap,
                key,
            });
        }
        Ok(UnlockedKeybag {
            kek: Zeroizing::new(*kek),
            uuid: self.uuid,
            hmck: self.hmck.clone(),
            classes,
        })
    }

    /// A new keybag for an encrypted backup, the way iOS writes one (spec §6): VERS 5, TYPE 1,
    /// UUID, HMCK, WRAP 0, SALT, ITER, DPWT 1, DPIC, DPSL, then classes 11 down to 1, each
    /// UUID CLAS WRAP KTYP WPKY with a random class key. WRAP mirrors Apple: 3 (device-bound)
    /// for classes 5 and 9–11, 2 for the rest; 1388 bytes. Real backups use
    /// [`kdf::DEFAULT_DPIC`] and [`kdf::DEFAULT_ITER`]; tests may pass small counts.
    pub fn new_backup<R: CryptoRng + ?Sized>(
        password: &Password,
        dpic: u32,
        iter: u32,
        rng: &mut R,
    ) -> Result<(Keybag, UnlockedKeybag), KeybagError> {
        let classes = (1..=class::MAX)
            .rev()
            .map(|class| {
                let mut key = Zeroizing::new([0u8; KEY_LEN]);
                rng.fill_bytes(&mut key[..]);
                UnlockedClass {
                    uuid: random(rng),
                    class,
                    wrap: encrypted_backup_wrap(class),
                    key: Some(key),
                }
            })
            .collect();
        let hmck: [u8; 40] = random(rng);
        let uuid: [u8; 16] = random(rng);
        build_encrypted(password, dpic, iter, rng, uuid, hmck.to_vec(), classes)
    }

    /// A keybag for an **unencrypted** backup, shaped like the real ones (1336 bytes): VERS 5,
    /// TYPE 1, UUID, HMCK of 40 zero bytes, WRAP 0, SALT, ITER 10000 and no DPWT/DPIC/DPSL;
    /// classes 1 up to 11, WRAP 2 for 1–4 and 3 (device-bound) for 5–11, KTYP 0, and WPKY
    /// wrapped under a random key that is thrown away — in a real unencrypted backup nobody
    /// off the device can unwrap them either.
    pub fn new_unencrypted<R: CryptoRng + ?Sized>(rng: &mut R) -> Keybag {
        let mut b = Builder::default();
        let uuid: [u8; 16] = random(rng);
        let salt: [u8; 20] = random(rng);
        b.u32(Tag::VERS, VERSION_CURRENT);
        b.u32(Tag::TYPE, 1);
        b.bytes(Tag::UUID, &uuid);
        b.bytes(Tag::HMCK, &[0u8; 40]);
        b.u32(Tag::WRAP, 0);
        b.bytes(Tag::SALT, &salt);
        b.u32(Tag::ITER, kdf::DEFAULT_ITER);
        let throwaway_kek = Zeroizing::new(random::<32, R>(rng));
        for class in 1..=class::MAX {
            let key = Zeroizing::new(random::<32, R>(rng));
            let wrap = if class <= class::NONE { 2 } else { 3 };
            b.class(
                &random(rng),
                class,
                wrap,
                &keywrap::wrap_key(&throwaway_kek, &key),
            );
        }
        b.finish(uuid, &salt, None)
    }
}

/// WRAP for `class` in an encrypted backup keybag, as Apple writes it (spec §4.3).
pub const fn encrypted_backup_wrap(class: u32) -> u32 {
    match class {
        5 | 9 | 10 | 11 => WRAP_PASSCODE | WRAP_DEVICE,
        _ => WRAP_PASSCODE,
    }
}

fn random<const N: usize, R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; N] {
    let mut b = [0u8; N];
    rng.fill_bytes(&mut b);
    b
}

/// Builds records and the parsed view side by side, for keybags we write ourselves.
#[derive(Default)]
struct Builder {
    records: Vec<Record>,
    version: Option<u32>,
    kind: Option<u32>,
    hmck: Option<Vec<u8>>,
    wrap: Option<u32>,
    iter: Option<u32>,
    dpwt: Option<u32>,
    dpic: Option<u32>,
    classes: Vec<ClassRecord>,
}

impl Builder {
    fn u32(&mut self, tag: Tag, v: u32) {
        match tag {
            Tag::VERS => self.version = Some(v),
            Tag::TYPE => self.kind = Some(v),
            Tag::WRAP => self.wrap = Some(v),
            Tag::ITER => self.iter = Some(v),
            Tag::DPWT => self.dpwt = Some(v),
            Tag::DPIC => self.dpic = Some(v),
            _ => {}
        }
        self.records.push(Record {
            tag,
            value: v.to_be_bytes().to_vec(),
        });
    }

    fn bytes(&mut self, tag: Tag, v: &[u8]) {
        if tag == Tag::HMCK {
            self.hmck = Some(v.to_vec());
        }
        self.records.push(Record {
            tag,
            value: v.to_vec(),
        });
    }

    fn class(&mut self, uuid: &[u8; 16], class: u32, wrap: u32, wpky: &[u8; WRAPPED_LEN]) {
        self.bytes(Tag::UUID, uuid);
        self.u32(Tag::CLAS, class);
        self.records.push(Record {
            tag: Tag::WRAP,
            value: wrap.to_be_bytes().to_vec(),
        });
        self.u32(Tag::KTYP, 0);
        self.bytes(Tag::WPKY, wpky);
        self.classes.push(ClassRecord {
            uuid: *uuid,
            class,
            wrap,
            key_type: Some(0),
            wrapped_key: Some(*wpky),
            public_key: None,
        });
    }

    fn finish(self, uuid: [u8; 16], salt: &[u8], dpsl: Option<&[u8]>) -> Keybag {
        Keybag {
            records: self.records,
            version: self.version,
            kind: self.kind,
            uuid: Some(uuid),
            hmck: self.hmck,
            wrap: self.wrap,
            salt: Some(salt.to_vec()),
            iter: self.iter,
            dpwt: self.dpwt,
            dpic: self.dpic,
            dpsl: dpsl.map(<[u8]>::to_vec),
            classes: self.classes,
        }
    }
}

/// Writes the §6 layout around the given class keys, under a KEK derived from `password` with
/// fresh salts. Used for a new keybag and for a password change (same class keys).
fn build_encrypted<R: CryptoRng + ?Sized>(
    password: &Password,
    dpic: u32,
    iter: u32,
    rng: &mut R,
    uuid: [u8; 16],
    hmck: Vec<u8>,
    classes: Vec<UnlockedClass>,
) -> Result<(Keybag, UnlockedKeybag), KeybagError> {
    let salt: [u8; 20] = random(rng);
    let dpsl: [u8; 20] = random(rng);
    let params = KdfParams {
        sha256: Some(Sha256Stage {
            salt: dpsl.to_vec(),
            iterations: dpic,
        }),
        salt: salt.to_vec(),
        iterations: iter,
    };
    let kek = kdf::derive_kek(password, &params)?;

    let mut b = Builder::default();
    b.u32(Tag::VERS, VERSION_CURRENT);
    b.u32(Tag::TYPE, 1);
    b.bytes(Tag::UUID, &uuid);
    b.bytes(Tag::HMCK, &hmck);
    b.u32(Tag::WRAP, 0);
    b.bytes(Tag::SALT, &salt);
    b.u32(Tag::ITER, iter);
    b.u32(Tag::DPWT, 1);
    b.u32(Tag::DPIC, dpic);
    b.bytes(Tag::DPSL, &dpsl);
    for c in &classes {
        // Classes without a key (not password-wrapped) cannot be re-wrapped; a keybag we write
        // always has one for every class, and one from a phone keeps only password classes.
        if let Some(key) = &c.key {
            b.class(&c.uuid, c.class, c.wrap, &keywrap::wrap_key(&kek, key));
        }
    }
    let keybag = b.finish(uuid, &salt, Some(&dpsl));
    let unlocked = UnlockedKeybag {
        kek,
        uuid: Some(uuid),
        hmck: Some(hmck),
        classes: classes.into_iter().filter(|c| c.key.is_some()).collect(),
    };
    Ok((keybag, unlocked))
}

/// One class after unlocking. `key` is the unwrapped WPKY for password-wrapped classes (for
/// device-bound ones that is still the 0x835-encrypted intermediate, never handed out).
struct UnlockedClass {
    uuid: [u8; 16],
    class: u32,
    wrap: u32,
    key: Option<Zeroizing<[u8; KEY_LEN]>>,
}

/// A keybag whose class keys are unwrapped. Keys are wiped on drop and never shown by `Debug`.
pub struct UnlockedKeybag {
    kek: Zeroizing<[u8; KEY_LEN]>,
    uuid: Option<[u8; 16]>,
    hmck: Option<Vec<u8>>,
    classes: Vec<UnlockedClass>,
}

impl fmt::Debug for UnlockedKeybag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Classes<'a>(&'a [UnlockedClass]);
        impl fmt::Debug for Classes<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(
                        self.0
                            .iter()
                            .map(|c| (c.class, ClassKeyState::from_wrap(c.wrap))),
                    )
                    .finish()
            }
        }
        f.debug_struct("UnlockedKeybag")
            .field("kek", &"<redacted>")
            .field("classes", &Classes(&self.classes))
            .finish()
    }
}

impl UnlockedKeybag {
    /// The KEK (mvt calls it the decryption key; 64 hex characters in its key file). Secret.
    pub fn kek(&self) -> &[u8; KEY_LEN] {
        &self.kek
    }

    /// The keybag UUID.
    pub fn uuid(&self) -> Option<&[u8; 16]> {
        self.uuid.as_ref()
    }

    /// Every class in keybag order with what the password gives for it.
    pub fn classes(&self) -> impl Iterator<Item = (u32, ClassKeyState)> + '_ {
        self.classes
            .iter()
            .map(|c| (c.class, ClassKeyState::from_wrap(c.wrap)))
    }

    /// What the password gives for one class; `None` if the keybag has no such class.
    pub fn class_state(&self, class: u32) -> Option<ClassKeyState> {
        self.find(class).map(|c| ClassKeyState::from_wrap(c.wrap))
    }

    fn find(&self, class: u32) -> Option<&UnlockedClass> {
        self.classes.iter().find(|c| c.class == class)
    }

    /// The usable class key of `class` (e.g. keychain classes 6–8 for keychain items).
    pub fn class_key(&self, class: u32) -> Result<&[u8; KEY_LEN], FileKeyError> {
        let c = self
            .find(class)
            .ok_or(FileKeyError::UnknownClass { class })?;
        match (ClassKeyState::from_wrap(c.wrap), &c.key) {
            (ClassKeyState::Available, Some(k)) => Ok(k),
            (ClassKeyState::DeviceBound, _) => Err(FileKeyError::DeviceBound { class }),
            _ => Err(FileKeyError::NotPasswordWrapped { class }),
        }
    }

    /// Unwraps a file's (or the ManifestKey's) key with the class key its prefix names.
    pub fn unwrap_file_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, FileKeyError> {
        let class = wrapped.class;
        let ck = self.class_key(class)?;
        keywrap::unwrap_key(ck, &wrapped.wrapped)
            .map_err(|source| FileKeyError::Unwrap { class, source })
    }

    /// Wraps a file key under the class key of `class` (1–4 for files, 4 for ManifestKey).
    pub fn wrap_file_key(
        &self,
        class: u32,
        key: &[u8; KEY_LEN],
    ) -> Result<WrappedKey, FileKeyError> {
        let ck = self.class_key(class)?;
        Ok(WrappedKey {
            class,
            wrapped: keywrap::wrap_key(ck, key),
        })
    }

    /// A fresh random file key and its wrapped form for `class`.
    pub fn new_file_key<R: CryptoRng + ?Sized>(
        &self,
        class: u32,
        rng: &mut R,
    ) -> Result<(Zeroizing<[u8; KEY_LEN]>, WrappedKey), FileKeyError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut key[..]);
        let wrapped = self.wrap_file_key(class, &key)?;
        Ok((key, wrapped))
    }

    /// The keybag after a password change: the same keybag UUID, class UUIDs and class keys
    /// (so every file key stays valid), wrapped under a KEK from `new_password` with fresh
    /// salts, in the §6 layout. Classes that were not password-wrapped are dropped.
    pub fn change_password<R: CryptoRng + ?Sized>(
        &self,
        new_password: &Password,
        dpic: u32,
        iter: u32,
        rng: &mut R,
    ) -> Result<(Keybag, UnlockedKeybag), KeybagError> {
        let classes = self
            .classes
            .iter()
            .filter_map(|c| {
                c.key.as_ref().map(|k| UnlockedClass {
                    uuid: c.uuid,
                    class: c.class,
                    wrap: c.wrap,
                    key: Some(k.clone()),
                })
            })
            .collect();
        let uuid = self.uuid.unwrap_or_else(|| random(rng));
        let hmck = self
            .hmck
            .clone()
            .unwrap_or_else(|| random::<40, R>(rng).to_vec());
        build_encrypted(new_password, dpic, iter, rng, uuid, hmck, classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const FIXTURE_KEK: &str = "ec8edc160b5745ccae000bfb4787630f322821191fba7eea38feab2c6307cd9b";

    fn fixture(name: &str) -> Vec<u8> {
        let path = crate::ios_backup::testdata(&format!("pyiosbackup-fixture/{name}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn fixture_kek() -> [u8; 32] {
        hex::decode(FIXTURE_KEK).unwrap().try_into().unwrap()
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn fixture_keybag_parses_with_the_layout_of_a_real_one() {
        let blob = fixture("BackupKeyBag.bin");
        let kb = Keybag::decode(&blob).unwrap();
        assert_eq!(kb.version(), Some(5));
        assert_eq!(kb.keybag_type(), Some(KeybagType::Backup));
        assert_eq!(kb.uuid(), Some(&[0u8; 16]));
        assert_eq!(kb.wrap(), Some(0));
        assert_eq!(kb.iterations(), Some(10_000));
        assert_eq!(kb.dpic(), Some(10_000_000));
        assert_eq!(kb.dpwt(), Some(1));
        assert_eq!(kb.salt(), Some(&[0u8; 20][..]));
        let classes: Vec<(u32, u32)> = kb.classes().iter().map(|c| (c.class, c.wrap)).collect();
        assert_eq!(
            classes,
            vec![
                (11, 3),
                (10, 3),
                (9, 3),
                (8, 2),
                (7, 2),
                (6, 2),
                (5, 3),
                (4, 2),
                (3, 2),
                (2, 2),
                (1, 2)
            ]
        );
        assert_eq!(kb.to_bytes(), blob, "round trip must be byte-identical");
    }

    /// The full KDF with DPIC = 10,000,000 (about 1.5 s): the §10 known answer.
    #[test]
    fn fixture_unlocks_with_0000() {
        let kb = Keybag::decode(&fixture("BackupKeyBag.bin")).unwrap();
        let u = kb.unlock(&Password::new("0000")).unwrap();
        assert_eq!(hex::encode(u.kek()), FIXTURE_KEK);
        for (class, state) in u.classes() {
            let expect = if [5, 9, 10, 11].contains(&class) {
                ClassKeyState::DeviceBound
            } else {
                ClassKeyState::Available
            };
            assert_eq!(state, expect, "class {class}");
        }
        for class in [1, 2, 3, 4, 6, 7, 8] {
            assert_eq!(u.class_key(class).unwrap(), &[0u8; 32]);
        }
        assert_eq!(
            u.class_key(11),
            Err(FileKeyError::DeviceBound { class: 11 })
        );
        let mk = WrappedKey::decode(&fixture("ManifestKey.bin")).unwrap();
        assert_eq!(*u.unwrap_file_key(&mk).unwrap(), [0u8; 32]);
    }

    #[test]
    fn fixture_unlocks_with_kek_and_refuses_a_wrong_one() {
        let kb = Keybag::decode(&fixture("BackupKeyBag.bin")).unwrap();
        let u = kb.unlock_with_kek(&fixture_kek()).unwrap();
        assert_eq!(u.class_key(4).unwrap(), &[0u8; 32]);
        let mut wrong = fixture_kek();
        wrong[0] ^= 1;
        assert_eq!(
            kb.unlock_with_kek(&wrong).unwrap_err(),
            KeybagError::WrongPassword
        );
    }

    /// The pre-10.2 keybag (VERS 3, no DPSL/DPIC): KEK = PBKDF2-SHA1 only. Its class 10 record
    /// carries CLAS 16 in the fixture; it must still parse and round-trip.
    #[test]
    fn pre_10_2_fixture() {
        let blob = fixture("BackupKeyBag-pre10.2.bin");
        let kb = Keybag::decode(&blob).unwrap();
        assert_eq!(kb.version(), Some(3));
        assert_eq!(kb.dpic(), None);
        assert!(kb.kdf_params().unwrap().sha256.is_none());
        assert_eq!(kb.to_bytes(), blob);
        assert_eq!(kb.classes().len(), 11);
        assert!(kb.class(16).is_some());

        let u = kb.unlock(&Password::new("0000")).unwrap();
        for class in [1, 2, 3, 4, 6, 7, 8] {
            assert_eq!(u.class_key(class).unwrap(), &[0u8; 32]);
        }
        assert_eq!(
            kb.unlock(&Password::new("0001")).unwrap_err(),
            KeybagError::WrongPassword
        );
    }

    fn hashcat_keybag() -> Keybag {
        // hashcat's mode 14800 self-test hash, laid out as a one-class keybag.
        let u32r = |tag, v: u32| Record {
            tag,
            value: v.to_be_bytes().to_vec(),
        };
        let hexr = |tag, h: &str| Record {
            tag,
            value: hex::decode(h).unwrap(),
        };
        Keybag::from_records(vec![
            u32r(Tag::VERS, 5),
            u32r(Tag::TYPE, 1),
            hexr(Tag::UUID, "00112233445566778899aabbccddeeff"),
            u32r(Tag::WRAP, 0),
            hexr(Tag::SALT, "2721336781705041205314422175267631184867"),
            u32r(Tag::ITER, 10000),
            u32r(Tag::DPWT, 1),
            u32r(Tag::DPIC, 1000),
            hexr(Tag::DPSL, "99fafc983e732998adb9fadc162a2e382143f115"),
            hexr(Tag::UUID, "ffeeddccbbaa99887766554433221100"),
            u32r(Tag::CLAS, 1),
            u32r(Tag::WRAP, 2),
            u32r(Tag::KTYP, 0),
            hexr(
                Tag::WPKY,
                "17a3b858e79bc273be43a9f113b71efe7ec8e7e401396b350180b4592ef45db67ffef7b2d64329a5",
            ),
        ])
        .unwrap()
    }

    #[test]
    fn hashcat_14800_vector_unlocks_and_wrong_password_is_detected() {
        let kb = hashcat_keybag();
        let u = kb.unlock(&Password::new("hashcat")).unwrap();
        // Class key checked independently with Python (hashlib + cryptography's key unwrap).
        assert_eq!(
            hex::encode(u.class_key(1).unwrap()),
            "2ed7042e87b50000fa6ba698661c000013194470a1f70000c35bd72ce0360000"
        );
        assert_eq!(
            kb.unlock(&Password::new("hashcaT")).unwrap_err(),
            KeybagError::WrongPassword
        );
    }

    #[test]
    fn new_backup_keybag_has_the_section_6_layout_and_unlocks() {
        let pw = Password::new("test");
        let (kb, u) = Keybag::new_backup(&pw, 1000, 10, &mut rng()).unwrap();
        let bytes = kb.to_bytes();
        assert_eq!(bytes.len(), 1388);
        assert_eq!(Keybag::decode(&bytes).unwrap(), kb);
        let tags: Vec<Tag> = kb.records().iter().map(|r| r.tag).collect();
        assert_eq!(
            &tags[..10],
            &[
                Tag::VERS,
                Tag::TYPE,
                Tag::UUID,
                Tag::HMCK,
                Tag::WRAP,
                Tag::SALT,
                Tag::ITER,
                Tag::DPWT,
                Tag::DPIC,
                Tag::DPSL
            ]
        );
        for rec in tags[10..].chunks(5) {
            assert_eq!(
                rec,
                &[Tag::UUID, Tag::CLAS, Tag::WRAP, Tag::KTYP, Tag::WPKY]
            );
        }
        let order: Vec<u32> = kb.classes().iter().map(|c| c.class).collect();
        assert_eq!(order, (1..=11).rev().collect::<Vec<_>>());
        assert_eq!(kb.dpic(), Some(1000));
        assert_eq!(kb.iterations(), Some(10));

        let again = kb.unlock(&pw).unwrap();
        assert_eq!(again.kek(), u.kek());
        for c in 1..=11 {
            assert_eq!(again.class_state(c), u.class_state(c));
            if u.class_state(c) == Some(ClassKeyState::Available) {
                assert_eq!(again.class_key(c).unwrap(), u.class_key(c).unwrap());
            }
        }
        assert_eq!(
            kb.unlock(&Password::new("tesT")).unwrap_err(),
            KeybagError::WrongPassword
        );

        // File keys written through one unlock read back through the other.
        let (fk, wk) = u.new_file_key(class::NONE, &mut rng()).unwrap();
        assert_eq!(wk.class, 4);
        assert_eq!(*again.unwrap_file_key(&wk).unwrap(), *fk);
        assert_eq!(
            u.wrap_file_key(9, &fk),
            Err(FileKeyError::DeviceBound { class: 9 })
        );
        assert_eq!(
            u.wrap_file_key(12, &fk),
            Err(FileKeyError::UnknownClass { class: 12 })
        );
        let other = WrappedKey {
            class: 3,
            wrapped: wk.wrapped,
        };
        assert!(matches!(
            again.unwrap_file_key(&other),
            Err(FileKeyError::Unwrap {
                class: 3,
                source: KeyWrapError::IntegrityCheckFailed
            })
        ));
    }

    #[test]
    fn new_backup_refuses_out_of_range_counts() {
        let pw = Password::new("x");
        assert_eq!(
            Keybag::new_backup(&pw, 0, 10, &mut rng()).unwrap_err(),
            KeybagError::Kdf(KdfError::DpicOutOfRange { got: 0 })
        );
        assert_eq!(
            Keybag::new_backup(&pw, 10, kdf::MAX_ITER + 1, &mut rng()).unwrap_err(),
            KeybagError::Kdf(KdfError::IterOutOfRange {
                got: kdf::MAX_ITER + 1
            })
        );
    }

    #[test]
    fn change_password_keeps_class_keys() {
        let (kb, u) = Keybag::new_backup(&Password::new("old"), 100, 10, &mut rng()).unwrap();
        let (_, wk) = u.new_file_key(class::COMPLETE, &mut rng()).unwrap();
        let (kb2, _) = u
            .change_password(&Password::new("new"), 100, 10, &mut rng())
            .unwrap();
        assert_eq!(kb2.to_bytes().len(), 1388);
        assert_eq!(kb2.uuid(), kb.uuid());
        assert_ne!(kb2.salt(), kb.salt());
        assert_eq!(
            kb2.unlock(&Password::new("old")).unwrap_err(),
            KeybagError::WrongPassword
        );
        let u2 = kb2.unlock(&Password::new("new")).unwrap();
        assert_eq!(
            *u2.unwrap_file_key(&wk).unwrap(),
            *u.unwrap_file_key(&wk).unwrap()
        );
    }

    #[test]
    fn unencrypted_keybag_looks_like_a_real_one() {
        let kb = Keybag::new_unencrypted(&mut rng());
        let bytes = kb.to_bytes();
        assert_eq!(bytes.len(), 1336);
        assert_eq!(Keybag::decode(&bytes).unwrap(), kb);
        assert_eq!(kb.version(), Some(5));
        assert_eq!(kb.hmck(), Some(&[0u8; 40][..]));
        assert_eq!(kb.dpic(), None);
        assert_eq!(kb.dpsl(), None);
        assert_eq!(kb.dpwt(), None);
        let classes: Vec<(u32, ClassKeyState)> =
            kb.classes().iter().map(|c| (c.class, c.state())).collect();
        let expect: Vec<(u32, ClassKeyState)> = (1..=11)
            .map(|c| {
                let s = if c <= 4 {
                    ClassKeyState::Available
                } else {
                    ClassKeyState::DeviceBound
                };
                (c, s)
            })
            .collect();
        assert_eq!(classes, expect);
        // Nobody can unlock it with a password.
        assert_eq!(
            kb.unlock(&Password::new("")).unwrap_err(),
            KeybagError::WrongPassword
        );
    }

    #[test]
    fn unlocked_keybag_debug_is_redacted() {
        let kb = Keybag::decode(&fixture("BackupKeyBag.bin")).unwrap();
        let u = kb.unlock_with_kek(&fixture_kek()).unwrap();
        let dbg = format!("{u:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(dbg.contains("DeviceBound"));
        // The KEK starts ec 8e dc: neither its decimal nor its hex form may show up.
        assert!(!dbg.contains("236, 142"), "{dbg}");
        assert!(!dbg.to_lowercase().contains("ec8e"), "{dbg}");
    }

    #[test]
    fn every_prefix_of_the_fixture_is_an_error_or_a_shorter_keybag() {
        let blob = fixture("BackupKeyBag.bin");
        for n in 0..blob.len() {
            // Prefixes that end between records parse; all others are typed errors.
            match Keybag::decode(&blob[..n]) {
                Ok(kb) => assert_eq!(kb.to_bytes(), &blob[..n]),
                Err(e) => assert!(
                    matches!(
                        e,
                        KeybagError::Truncated { .. } | KeybagError::IncompleteClass { .. }
                    ),
                    "prefix {n}: {e:?}"
                ),
            }
        }
    }

    fn tlv(tag: &[u8; 4], len: u32, value: &[u8]) -> Vec<u8> {
        let mut v = tag.to_vec();
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn hostile_keybags_are_refused_without_panics() {
        let e = |b: &[u8]| Keybag::decode(b).unwrap_err();
        // Length past the buffer, and a huge length.
        assert_eq!(
            e(&tlv(b"SALT", 20, &[0; 19])),
            KeybagError::Truncated { offset: 0 }
        );
        assert!(matches!(
            e(&tlv(b"SALT", u32::MAX, &[0; 8])),
            KeybagError::ValueTooLong { len: u32::MAX, .. }
        ));
        assert_eq!(e(b"VERS\0\0"), KeybagError::Truncated { offset: 0 });
        // Wrong sizes for known tags.
        assert!(matches!(
            e(&tlv(b"ITER", 2, &[0, 1])),
            KeybagError::BadValueLength { expected: 4, .. }
        ));
        assert!(matches!(
            e(&tlv(b"UUID", 4, &[0; 4])),
            KeybagError::BadValueLength { expected: 16, .. }
        ));
        // Too big overall, too many records, too many classes.
        assert!(matches!(
            e(&vec![0; MAX_KEYBAG_LEN + 1]),
            KeybagError::TooLong { .. }
        ));
        let many: Vec<u8> = (0..=MAX_RECORDS)
            .flat_map(|_| tlv(b"ZZZZ", 0, &[]))
            .collect();
        assert_eq!(e(&many), KeybagError::TooManyRecords);
        let mut classes = tlv(b"UUID", 16, &[0; 16]);
        classes.extend(tlv(b"WRAP", 4, &[0; 4]));
        for i in 0..=MAX_CLASSES as u32 {
            classes.extend(tlv(b"UUID", 16, &[1; 16]));
            classes.extend(tlv(b"CLAS", 4, &i.to_be_bytes()));
            classes.extend(tlv(b"WRAP", 4, &2u32.to_be_bytes()));
        }
        assert_eq!(e(&classes), KeybagError::TooManyClasses);
        // Duplicates and misplaced class tags.
        let mut dup = tlv(b"SALT", 1, &[1]);
        dup.extend(tlv(b"SALT", 1, &[2]));
        assert_eq!(e(&dup), KeybagError::DuplicateTag { tag: Tag::SALT });
        assert_eq!(
            e(&tlv(b"CLAS", 4, &[0; 4])),
            KeybagError::ClassTagOutsideRecord { tag: Tag::CLAS }
        );
        let mut two = tlv(b"UUID", 16, &[0; 16]);
        two.extend(tlv(b"WRAP", 4, &[0; 4]));
        for _ in 0..2 {
            two.extend(tlv(b"UUID", 16, &[1; 16]));
            two.extend(tlv(b"CLAS", 4, &1u32.to_be_bytes()));
            two.extend(tlv(b"WRAP", 4, &2u32.to_be_bytes()));
        }
        assert_eq!(e(&two), KeybagError::DuplicateClass { class: 1 });
    }

    #[test]
    fn hostile_iteration_counts_fail_before_any_hashing() {
        let mut blob = fixture("BackupKeyBag.bin");
        // ITER's value is at offset 0x90, DPIC's at 0xa8 (see the fixture's layout).
        assert_eq!(&blob[0x88..0x8c], b"ITER");
        blob[0x90..0x94].copy_from_slice(&u32::MAX.to_be_bytes());
        let kb = Keybag::decode(&blob).unwrap();
        assert_eq!(
            kb.unlock(&Password::new("0000")).unwrap_err(),
            KeybagError::Kdf(KdfError::IterOutOfRange { got: u32::MAX })
        );
        let mut blob = fixture("BackupKeyBag.bin");
        assert_eq!(&blob[0xa0..0xa4], b"DPIC");
        blob[0xa8..0xac].copy_from_slice(&(kdf::MAX_DPIC + 1).to_be_bytes());
        let kb = Keybag::decode(&blob).unwrap();
        assert_eq!(
            kb.unlock(&Password::new("0000")).unwrap_err(),
            KeybagError::Kdf(KdfError::DpicOutOfRange {
                got: kdf::MAX_DPIC + 1
            })
        );
    }

    #[test]
    fn unknown_tags_survive_a_round_trip() {
        let mut blob = fixture("BackupKeyBag-pre10.2.bin");
        blob.extend(tlv(b"SIGN", 20, &[5; 20]));
        blob.extend(tlv(b"\x00\x01\x02\x03", 3, &[1, 2, 3]));
        let kb = Keybag::decode(&blob).unwrap();
        assert_eq!(kb.to_bytes(), blob);
        assert_eq!(kb.classes().len(), 11);
    }

    #[test]
    fn missing_pieces_are_typed_errors() {
        let kb = Keybag::decode(&tlv(b"UUID", 16, &[0; 16])).unwrap();
        assert_eq!(
            kb.unlock(&Password::new("x")).unwrap_err(),
            KeybagError::MissingTag { tag: Tag::SALT }
        );
        assert_eq!(
            kb.unlock_with_kek(&[0; 32]).unwrap_err(),
            KeybagError::NoPasswordClasses
        );
        let mut b = tlv(b"SALT", 20, &[0; 20]);
        b.extend(tlv(b"ITER", 4, &10u32.to_be_bytes()));
        b.extend(tlv(b"DPIC", 4, &10u32.to_be_bytes()));
        assert_eq!(
            Keybag::decode(&b).unwrap().kdf_params().unwrap_err(),
            KeybagError::IncompleteSha256Stage
        );
        let mut no_wpky = tlv(b"UUID", 16, &[0; 16]);
        no_wpky.extend(tlv(b"WRAP", 4, &[0; 4]));
        no_wpky.extend(tlv(b"UUID", 16, &[1; 16]));
        no_wpky.extend(tlv(b"CLAS", 4, &1u32.to_be_bytes()));
        no_wpky.extend(tlv(b"WRAP", 4, &2u32.to_be_bytes()));
        assert_eq!(
            Keybag::decode(&no_wpky)
                .unwrap()
                .unlock_with_kek(&[0; 32])
                .unwrap_err(),
            KeybagError::MissingWrappedKey { class: 1 }
        );
    }
}
