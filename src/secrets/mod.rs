//! The box's secrets: backup passwords sealed to the box (by the TPM2, or the weaker host key),
//! one per phone UDID plus the box default, behind the [`SecretStore`] trait.
//!
//! Why systemd-creds and not tss-esapi, the file layout and the threat model: `docs/secrets.md`.
//! Passwords only ever travel as [`Password`] (zeroized, redacted); no error or log line holds one.

use crate::password::Password;
use std::fmt;
use std::path::PathBuf;

mod provision;
mod systemd_creds;

pub use provision::{provision_from_drive, ProvisionError, ProvisionOutcome, DRIVE_PASSWORD_FILE};
pub use systemd_creds::{
    mode_of, SystemdCredsConfig, SystemdCredsStore, TpmDevice, DEFAULT_STATE_DIR, TPM_RM_DEVICE,
};

/// Longest UDID accepted as a slot name (real ones are 25 or 40 characters).
pub const MAX_UDID_LEN: usize = 64;

/// A phone's UDID, checked so that it can name a file: 1..=64 ASCII letters, digits or `-`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Udid(String);

impl Udid {
    /// Validates a UDID as given by the phone, the user or a file name.
    pub fn new(s: &str) -> Result<Self, SecretsError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_UDID_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Udid(s.to_owned()))
        } else {
            Err(SecretsError::BadUdid {
                udid: s.chars().take(MAX_UDID_LEN).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Udid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Udid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Udid({})", self.0)
    }
}

/// Whose password: one phone's, or the box default (used for phones whose encryption the box
/// turns on itself).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    Default,
    Phone(Udid),
}

impl Slot {
    /// The credential name sealed into the file (systemd checks it on decryption, and
    /// `LoadCredentialEncrypted=` uses it as the file name under `$CREDENTIALS_DIRECTORY`).
    pub fn credential_name(&self) -> String {
        match self {
            Slot::Default => DEFAULT_CREDENTIAL_NAME.to_owned(),
            Slot::Phone(u) => format!("{PHONE_CREDENTIAL_PREFIX}{u}"),
        }
    }

    /// The inverse of [`Slot::credential_name`]; `None` for names that are not ours.
    pub fn from_credential_name(name: &str) -> Option<Slot> {
        if name == DEFAULT_CREDENTIAL_NAME {
            return Some(Slot::Default);
        }
        let udid = name.strip_prefix(PHONE_CREDENTIAL_PREFIX)?;
        Udid::new(udid).ok().map(Slot::Phone)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Default => f.write_str("the box default"),
            Slot::Phone(u) => write!(f, "phone {u}"),
        }
    }
}

/// Credential name of the box default password (also the `LoadCredentialEncrypted=` id).
pub const DEFAULT_CREDENTIAL_NAME: &str = "cradle-default-password";
/// Credential names of per-phone passwords are this prefix plus the UDID.
pub const PHONE_CREDENTIAL_PREFIX: &str = "cradle-password-";

/// What protects a sealed password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealingMode {
    /// Sealed by the TPM2 chip: the file opens only on this box's TPM.
    Tpm2,
    /// Encrypted with the host key in a root-only file on the box's own disk: anyone with the
    /// SD card can open it. Only when configured (`secrets.allow_host_key=true`).
    HostKey,
    /// Bound to both the host key and the TPM2.
    HostKeyAndTpm2,
    /// Loaded by systemd into `$CREDENTIALS_DIRECTORY` (already unsealed by the service manager).
    ServiceCredential,
    /// A file whose format was not recognised.
    Unknown,
}

impl SealingMode {
    /// Short name for `cradle status` and `cradle password status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SealingMode::Tpm2 => "tpm2",
            SealingMode::HostKey => "host-key",
            SealingMode::HostKeyAndTpm2 => "host-key+tpm2",
            SealingMode::ServiceCredential => "service-credential",
            SealingMode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for SealingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored password as `status` shows it: never the password itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEntry {
    pub slot: Slot,
    pub mode: SealingMode,
    /// The sealed file, or the credential file under `$CREDENTIALS_DIRECTORY`.
    pub path: PathBuf,
}

/// Where backup passwords are kept. Implementations never log, print or return a password
/// except through `get`.
pub trait SecretStore {
    /// The password of `slot`; [`SecretsError::NotFound`] if none is stored.
    fn get(&self, slot: &Slot) -> Result<Password, SecretsError>;
    /// Seals and stores `password` for `slot`, replacing any earlier one atomically.
    fn set(&self, slot: &Slot, password: &Password) -> Result<(), SecretsError>;
    /// Forgets the password of `slot`; `Ok(false)` if there was none.
    fn remove(&self, slot: &Slot) -> Result<bool, SecretsError>;
    /// Every stored password's slot and sealing mode, sorted by slot.
    fn list(&self) -> Result<Vec<SealedEntry>, SecretsError>;
    /// How `set` seals new passwords (for `cradle status`).
    fn mode(&self) -> SealingMode;

    /// The password to use for a phone: its own, else the box default; `None` if neither exists.
    fn password_for_phone(&self, udid: &Udid) -> Result<Option<(Slot, Password)>, SecretsError> {
        for slot in [Slot::Phone(udid.clone()), Slot::Default] {
            match self.get(&slot) {
                Ok(pw) => return Ok(Some((slot, pw))),
                Err(SecretsError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// Why a secret could not be stored or read. No variant carries a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// No TPM and host-key mode not allowed: the store refuses to seal with a weaker key silently.
    #[error("no TPM found; set secrets.allow_host_key=true to use the weaker host-key mode")]
    NoTpm,
    /// Nothing stored for this slot.
    #[error("no password stored for {slot}")]
    NotFound { slot: Slot },
    /// The UDID cannot name a slot.
    #[error("not a valid UDID: {udid:?} (1 to {MAX_UDID_LEN} letters, digits or '-')")]
    BadUdid { udid: String },
    /// The sealed file's bytes are damaged (checksum or structure wrong).
    #[error("the sealed password file {path} is damaged ({detail}); set the password again with `cradle password set`")]
    Corrupt { path: PathBuf, detail: String },
    /// The file is intact but this TPM refuses it: sealed on another box, or the TPM was cleared.
    #[error("the sealed password file {path} was sealed by a different TPM (or this TPM was cleared); set the password again with `cradle password set`")]
    WrongTpm { path: PathBuf },
    /// The file is intact but was sealed with a host key this box does not have.
    #[error("the sealed password file {path} was sealed with another host key; set the password again with `cradle password set`")]
    WrongHostKey { path: PathBuf },
    /// The TPM could not be reached (device missing, no permission, simulator down).
    #[error("the TPM could not be used while {action} {path}: {detail}")]
    TpmUnavailable {
        action: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// The `systemd-creds` program could not be started.
    #[error("could not run {program}: {source}")]
    ToolMissing {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `systemd-creds` failed for another reason; `detail` is its own message (never a password).
    #[error("systemd-creds failed while {action} {path}: {detail}")]
    Tool {
        action: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// The unsealed password is unusable (empty, too long or not UTF-8).
    #[error("the password unsealed from {path} is unusable: {detail}")]
    BadPassword { path: PathBuf, detail: &'static str },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
