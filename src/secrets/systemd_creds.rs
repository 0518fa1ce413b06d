//! [`SecretStore`] on `systemd-creds`: each password is one encrypted credential file sealed by
//! the TPM2 (or the host key when allowed), plus credentials systemd already unsealed for the unit.
//!
//! The password reaches `systemd-creds` only through a pipe on its stdin and comes back only
//! through a pipe on its stdout, never on a command line, in an environment variable or in a file.
//! Sealed files are `<state dir>/<slot>.cred` exactly as `systemd-creds encrypt` wrote them (so
//! `LoadCredentialEncrypted=` can read the default one), each with a `<slot>.cred.sha256` beside
//! it: when the TPM refuses a file, the checksum tells a damaged file from a foreign TPM.

use super::{SealedEntry, SealingMode, SecretStore, SecretsError, Slot, Udid};
use crate::password::{Password, MAX_PASSWORD_LEN};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// Where sealed passwords live on the box.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cradle/secrets";
/// The kernel's TPM resource manager node; its presence means "this box has a TPM".
pub const TPM_RM_DEVICE: &str = "/dev/tpmrm0";
/// Largest sealed file read back (a 4 KiB password seals to about 6 KiB of base64).
pub const MAX_SEALED_LEN: usize = 64 * 1024;
/// Most of `systemd-creds`' stderr kept for an error message.
const MAX_TOOL_MESSAGE: usize = 2048;
const SEALED_SUFFIX: &str = ".cred";
const SUM_SUFFIX: &str = ".cred.sha256";

/// The first 16 bytes of a systemd credential name the key that sealed it (systemd's
/// `creds-util.c`; checked here with systemd 252).
const ID_HOST: [u8; 16] = hex16("5a1c6a86df9d4096b1d5a65e0862f19a");
const ID_TPM2: [u8; 16] = hex16("0c7cc07b117645919c4b0bea08bc20fe");
const ID_HOST_TPM2: [u8; 16] = hex16("93a894094874449090caf2fc93cab553");

const fn hex16(s: &str) -> [u8; 16] {
    const fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not lowercase hex"),
        }
    }
    let b = s.as_bytes();
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = nib(b[2 * i]) << 4 | nib(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// Which TPM `systemd-creds` talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TpmDevice {
    /// The box's own chip, if [`TPM_RM_DEVICE`] exists.
    Auto,
    /// An explicit `--tpm2-device=` value: a device node, or a TCTI such as
    /// `swtpm:host=127.0.0.1,port=2321` (the tests' simulator).
    Explicit(String),
}

/// How a [`SystemdCredsStore`] is set up.
#[derive(Clone, Debug)]
pub struct SystemdCredsConfig {
    /// Sealed files; created 0700 on first `set`.
    pub state_dir: PathBuf,
    /// `$CREDENTIALS_DIRECTORY` of the unit (read-only, already unsealed), looked at first.
    pub credentials_dir: Option<PathBuf>,
    pub tpm: TpmDevice,
    /// `secrets.allow_host_key`: without a TPM, seal with the host key instead of refusing.
    pub allow_host_key: bool,
    /// Host key file for host-key mode (`SYSTEMD_CREDENTIAL_SECRET`); `None` = systemd's own
    /// `/var/lib/systemd/credential.secret`.
    pub host_key_file: Option<PathBuf>,
    /// The `systemd-creds` program.
    pub program: PathBuf,
}

impl Default for SystemdCredsConfig {
    fn default() -> Self {
        SystemdCredsConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            credentials_dir: None,
            tpm: TpmDevice::Auto,
            allow_host_key: false,
            host_key_file: None,
            program: PathBuf::from("systemd-creds"),
        }
    }
}

impl SystemdCredsConfig {
    /// The defaults plus `$CREDENTIALS_DIRECTORY` when systemd set it for this process.
    pub fn from_env() -> Self {
        SystemdCredsConfig {
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            ..Default::default()
        }
    }
}

/// Passwords sealed with `systemd-creds`, one file per slot.
#[derive(Debug)]
pub struct SystemdCredsStore {
    cfg: SystemdCredsConfig,
    mode: SealingMode,
    /// Slots set or removed by this process: their copy in `$CREDENTIALS_DIRECTORY` (unsealed at
    /// service start) is stale from then on, so `get` and `list` skip it.
    superseded: Mutex<BTreeSet<Slot>>,
}

impl SystemdCredsStore {
    /// Chooses the sealing mode without touching the disk: TPM2 if there is one, the host key if
    /// allowed, otherwise [`SecretsError::NoTpm`].
    pub fn open(cfg: SystemdCredsConfig) -> Result<Self, SecretsError> {
        let has_tpm = match &cfg.tpm {
            TpmDevice::Explicit(_) => true,
            TpmDevice::Auto => Path::new(TPM_RM_DEVICE).exists(),
        };
        let mode = if has_tpm {
            SealingMode::Tpm2
        } else if cfg.allow_host_key {
            SealingMode::HostKey
        } else {
            return Err(SecretsError::NoTpm);
        };
        Ok(SystemdCredsStore {
            cfg,
            mode,
            superseded: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn config(&self) -> &SystemdCredsConfig {
        &self.cfg
    }

    /// The sealed file of a slot.
    pub fn sealed_path(&self, slot: &Slot) -> PathBuf {
        self.cfg.state_dir.join(file_stem(slot) + SEALED_SUFFIX)
    }

    fn sum_path(&self, slot: &Slot) -> PathBuf {
        self.cfg.state_dir.join(file_stem(slot) + SUM_SUFFIX)
    }

    fn command(&self, verb: &str) -> Command {
        let mut cmd = Command::new(&self.cfg.program);
        cmd.arg(verb);
        if let TpmDevice::Explicit(dev) = &self.cfg.tpm {
            cmd.arg(format!("--tpm2-device={dev}"));
        }
        // A path, not a secret: where systemd keeps the host key in host-key mode.
        if let Some(k) = &self.cfg.host_key_file {
            cmd.env("SYSTEMD_CREDENTIAL_SECRET", k);
        }
        cmd
    }

    fn is_superseded(&self, slot: &Slot) -> bool {
        self.superseded
            .lock()
            .map(|s| s.contains(slot))
            .unwrap_or(true)
    }

    fn supersede(&self, slot: &Slot) {
        if let Ok(mut s) = self.superseded.lock() {
            s.insert(slot.clone());
        }
    }

    fn read_credentials_dir(&self, slot: &Slot) -> Result<Option<Password>, SecretsError> {
        let Some(dir) = &self.cfg.credentials_dir else {
            return Ok(None);
        };
        if self.is_superseded(slot) {
            return Ok(None);
        }
        let path = dir.join(slot.credential_name());
        let mut raw = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD_LEN + 3));
        match fs::File::open(&path) {
            Ok(f) => f
                .take(MAX_PASSWORD_LEN as u64 + 3)
                .read_to_end(&mut raw)
                .map_err(|source| SecretsError::Io {
                    path: path.clone(),
                    source,
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SecretsError::Io { path, source }),
        };
        password_from_bytes(&raw, &path).map(Some)
    }

    fn unseal(&self, slot: &Slot, path: &Path, sealed: &[u8]) -> Result<Password, SecretsError> {
        let mut cmd = self.command("decrypt");
        cmd.arg(format!("--name={}", slot.credential_name()))
            .arg("--newline=no")
            .arg("-")
            .arg("-");
        let out = run_tool(cmd, &self.cfg.program, sealed, MAX_PASSWORD_LEN + 2)?;
        if out.success {
            return password_from_bytes(&out.stdout, path);
        }
        Err(self.classify_unseal_failure(slot, path, sealed, out.stderr))
    }

    /// Turns a failed `decrypt` into the most useful error: damaged bytes, a foreign TPM or
    /// host key, an unreachable TPM, or systemd's own message.
    fn classify_unseal_failure(
        &self,
        slot: &Slot,
        path: &Path,
        sealed: &[u8],
        msg: String,
    ) -> SecretsError {
        let path = path.to_path_buf();
        if let Err(detail) = check_structure(sealed) {
            return SecretsError::Corrupt { path, detail };
        }
        let sum_matches = match fs::read_to_string(self.sum_path(slot)) {
            Ok(s) => Some(s.trim() == hex::encode(Sha256::digest(sealed))),
            Err(_) => None,
        };
        if sum_matches == Some(false) {
            return SecretsError::Corrupt {
                path,
                detail: "its checksum does not match".into(),
            };
        }
        let lower = msg.to_ascii_lowercase();
        if lower.contains("tcti")
            || lower.contains("no tpm2 device")
            || lower.contains("tpm2 support not available")
        {
            return SecretsError::TpmUnavailable {
                action: "unsealing",
                path,
                detail: last_line(&msg),
            };
        }
        if lower.contains("integrity check failed") {
            // The TPM's own HMAC over the sealed blob failed. With an intact checksum the file is
            // what we wrote, so the key that sealed it belongs to another TPM (or was cleared).
            return if sum_matches == Some(true) {
                SecretsError::WrongTpm { path }
            } else {
                SecretsError::Corrupt {
                    path,
                    detail: "the TPM's integrity check failed and there is no checksum to tell damage from another TPM".into(),
                }
            };
        }
        if lower.contains("does not match filename") {
            return SecretsError::Corrupt {
                path,
                detail: format!("it holds the credential of another slot, not {slot}"),
            };
        }
        if mode_of(sealed) == SealingMode::HostKey && sum_matches == Some(true) {
            return SecretsError::WrongHostKey { path };
        }
        if sum_matches == Some(true) && lower.contains("decrypt") {
            // The key unsealed, so the TPM is right; the authenticated ciphertext is not.
            return SecretsError::Corrupt {
                path,
                detail: last_line(&msg),
            };
        }
        SecretsError::Tool {
            action: "unsealing",
            path,
            detail: last_line(&msg),
        }
    }

    fn ensure_state_dir(&self) -> Result<(), SecretsError> {
        let dir = &self.cfg.state_dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SecretsError::Io {
                path: dir.clone(),
                source,
            })?;
        let meta = fs::metadata(dir).map_err(|source| SecretsError::Io {
            path: dir.clone(),
            source,
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
                SecretsError::Io {
                    path: dir.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }
}

impl SecretStore for SystemdCredsStore {
    fn get(&self, slot: &Slot) -> Result<Password, SecretsError> {
        if let Some(pw) = self.read_credentials_dir(slot)? {
            return Ok(pw);
        }
        let path = self.sealed_path(slot);
        let sealed = match read_capped(&path, MAX_SEALED_LEN) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretsError::NotFound { slot: slot.clone() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(SecretsError::Corrupt {
                    path,
                    detail: format!("it is larger than {MAX_SEALED_LEN} bytes"),
                })
            }
            Err(source) => return Err(SecretsError::Io { path, source }),
        };
        self.unseal(slot, &path, &sealed)
    }

    fn set(&self, slot: &Slot, password: &Password) -> Result<(), SecretsError> {
        let path = self.sealed_path(slot);
        if password.is_empty() {
            return Err(SecretsError::BadPassword {
                path,
                detail: "it is empty",
            });
        }
        if password.expose().len() > MAX_PASSWORD_LEN {
            return Err(SecretsError::BadPassword {
                path,
                detail: "it is too long",
            });
        }
        let mut cmd = self.command("encrypt");
        cmd.arg(match self.mode {
            SealingMode::HostKey => "--with-key=host",
            _ => "--with-key=tpm2",
        })
        .arg(format!("--name={}", slot.credential_name()))
        .arg("-")
        .arg("-");
        let out = run_tool(cmd, &self.cfg.program, password.expose(), MAX_SEALED_LEN)?;
        if !out.success {
            let lower = out.stderr.to_ascii_lowercase();
            let detail = last_line(&out.stderr);
            return Err(
                if lower.contains("tcti") || lower.contains("tpm2 support not available") {
                    SecretsError::TpmUnavailable {
                        action: "sealing",
                        path,
                        detail,
                    }
                } else {
                    SecretsError::Tool {
                        action: "sealing",
                        path,
                        detail,
                    }
                },
            );
        }
        if let Err(detail) = check_structure(&out.stdout) {
            return Err(SecretsError::Tool {
                action: "sealing",
                path,
                detail: format!("systemd-creds wrote an unusable credential: {detail}"),
            });
        }
        self.ensure_state_dir()?;
        // The checksum goes first: a crash between the two renames leaves a new checksum beside
        // an old file, which reads back fine (it is only consulted when unsealing fails).
        let sum = hex::encode(Sha256::digest(&out.stdout[..])) + "\n";
        write_atomic(&self.sum_path(slot), sum.as_bytes())?;
        write_atomic(&path, &out.stdout)?;
        self.supersede(slot);
        tracing::info!(slot = %slot, mode = %self.mode, "sealed a backup password");
        Ok(())
    }

    fn remove(&self, slot: &Slot) -> Result<bool, SecretsError> {
        let path = self.sealed_path(slot);
        // Even if nothing was sealed, a copy loaded by systemd must not answer any more.
        let had_loaded = self.read_credentials_dir(slot)?.is_some();
        self.supersede(slot);
        let existed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(SecretsError::Io { path, source }),
        };
        let sum = self.sum_path(slot);
        match fs::remove_file(&sum) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SecretsError::Io { path: sum, source }),
        }
        if existed {
            sync_dir(&self.cfg.state_dir)?;
            tracing::info!(slot = %slot, "forgot a backup password");
        }
        Ok(existed || had_loaded)
    }

    fn list(&self) -> Result<Vec<SealedEntry>, SecretsError> {
        let mut out = Vec::new();
        if let Some(dir) = &self.cfg.credentials_dir {
            for (name, path) in dir_entries(dir)? {
                if let Some(slot) = name
                    .to_str()
                    .and_then(Slot::from_credential_name)
                    .filter(|s| !self.is_superseded(s))
                {
                    out.push(SealedEntry {
                        slot,
                        mode: SealingMode::ServiceCredential,
                        path,
                    });
                }
            }
        }
        for (name, path) in dir_entries(&self.cfg.state_dir)? {
            let Some(slot) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SEALED_SUFFIX))
                .and_then(slot_from_stem)
            else {
                continue;
            };
            let mode = match read_capped(&path, MAX_SEALED_LEN) {
                Ok(b) => mode_of(&b),
                Err(_) => SealingMode::Unknown,
            };
            out.push(SealedEntry { slot, mode, path });
        }
        out.sort_by(|a, b| a.slot.cmp(&b.slot).then(a.path.cmp(&b.path)));
        Ok(out)
    }

    fn mode(&self) -> SealingMode {
        self.mode
    }
}

fn file_stem(slot: &Slot) -> String {
    match slot {
        Slot::Default => "default".to_owned(),
        Slot::Phone(u) => format!("phone-{u}"),
    }
}

fn slot_from_stem(stem: &str) -> Option<Slot> {
    if stem == "default" {
        return Some(Slot::Default);
    }
    Udid::new(stem.strip_prefix("phone-")?)
        .ok()
        .map(Slot::Phone)
}

/// Which key sealed a credential, from its leading 16-byte id.
pub fn mode_of(sealed: &[u8]) -> SealingMode {
    let Ok(raw) = decode_base64(sealed) else {
        return SealingMode::Unknown;
    };
    match raw.get(..16) {
        Some(id) if id == ID_TPM2 => SealingMode::Tpm2,
        Some(id) if id == ID_HOST => SealingMode::HostKey,
        Some(id) if id == ID_HOST_TPM2 => SealingMode::HostKeyAndTpm2,
        _ => SealingMode::Unknown,
    }
}

/// Cheap checks before the TPM sees a file: valid base64, a known key id, the AES-GCM header
/// (four little-endian u32 sizes) consistent with the length.
fn check_structure(sealed: &[u8]) -> Result<(), String> {
    let raw = decode_base64(sealed)?;
    if mode_of(sealed) == SealingMode::Unknown {
        return Err("it is not a systemd credential (unknown header)".into());
    }
    let u32_at = |i: usize| -> Option<usize> {
        let b = raw.get(i..i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (Some(key_size), Some(iv_size), Some(tag_size)) = (u32_at(16), u32_at(24), u32_at(28))
    else {
        return Err("it is truncated".into());
    };
    // AES-256-GCM, as systemd writes it; anything else means the header was damaged.
    if key_size != 32 || iv_size > 64 || tag_size != 16 {
        return Err("its header is damaged".into());
    }
    if raw.len() < 32 + iv_size + tag_size + 16 {
        return Err("it is truncated".into());
    }
    Ok(())
}

fn decode_base64(text: &[u8]) -> Result<Vec<u8>, String> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits, mut pad) = (0u32, 0u32, 0usize);
    for &c in text {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            pad += 1;
            continue;
        }
        if pad > 0 {
            return Err("it is not valid base64 (data after padding)".into());
        }
        let v = val(c).ok_or_else(|| "it is not valid base64".to_string())?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if pad > 2 {
        return Err("it is not valid base64 (too much padding)".into());
    }
    Ok(out)
}

fn password_from_bytes(raw: &[u8], path: &Path) -> Result<Password, SecretsError> {
    let bad = |detail| SecretsError::BadPassword {
        path: path.to_path_buf(),
        detail,
    };
    let mut line = raw;
    if let Some(rest) = line.strip_suffix(b"\n") {
        line = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if line.is_empty() {
        return Err(bad("it is empty"));
    }
    if line.len() > MAX_PASSWORD_LEN {
        return Err(bad("it is too long"));
    }
    if std::str::from_utf8(line).is_err() {
        return Err(bad("it is not UTF-8"));
    }
    Ok(Password::new(line.to_vec()))
}

fn read_capped(path: &Path, cap: usize) -> std::io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(cap as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > cap {
        return Err(std::io::Error::from(std::io::ErrorKind::FileTooLarge));
    }
    Ok(buf)
}

fn dir_entries(dir: &Path) -> Result<Vec<(OsString, PathBuf)>, SecretsError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SecretsError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|source| SecretsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        out.push((e.file_name(), e.path()));
    }
    Ok(out)
}

/// Writes `data` to `path` through a fresh 0600 temporary file in the same directory: fsync,
/// rename, fsync of the directory. The file takes the directory's owner, so that a root
/// `cradle password set` leaves files the service user can read.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), SecretsError> {
    let io = |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if let (Ok(dir_meta), Ok(file_meta)) = (fs::metadata(dir), f.metadata()) {
            if (dir_meta.uid(), dir_meta.gid()) != (file_meta.uid(), file_meta.gid()) {
                // Only root may give the file away; anyone else keeps their own files.
                let _ = std::os::unix::fs::fchown(&f, Some(dir_meta.uid()), Some(dir_meta.gid()));
            }
        }
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), SecretsError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SecretsError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

fn last_line(msg: &str) -> String {
    msg.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_owned()
}

struct ToolOutput {
    success: bool,
    /// May hold a password (decrypt): wiped on drop, never reallocated while filling.
    stdout: Zeroizing<Vec<u8>>,
    stderr: String,
}

/// Runs `systemd-creds`, feeding `input` on stdin from a separate thread (so a full pipe cannot
/// deadlock) and reading at most `stdout_cap` bytes of stdout into a buffer allocated once.
fn run_tool(
    mut cmd: Command,
    program: &Path,
    input: &[u8],
    stdout_cap: usize,
) -> Result<ToolOutput, SecretsError> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| SecretsError::ToolMissing {
        program: program.to_path_buf(),
        source,
    })?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(SecretsError::ToolMissing {
            program: program.to_path_buf(),
            source: std::io::Error::other("pipes were not set up"),
        });
    };
    let mut buf = Zeroizing::new(vec![0u8; stdout_cap + 1]);
    let (filled, err_text) = std::thread::scope(|s| {
        s.spawn(move || {
            // A failed write means the tool exited early; its status and stderr say why.
            let _ = stdin.write_all(input);
        });
        let err_reader = s.spawn(move || {
            let mut e = Vec::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut e);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            e
        });
        let mut filled = 0;
        while filled < buf.len() {
            match stdout.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        (filled, err_reader.join().unwrap_or_default())
    });
    let status = child.wait().map_err(|source| SecretsError::ToolMissing {
        program: program.to_path_buf(),
        source,
    })?;
    let mut stderr = String::from_utf8_lossy(&err_text).into_owned();
    if stderr.len() > MAX_TOOL_MESSAGE {
        let cut = stderr.len() - MAX_TOOL_MESSAGE;
        let cut = (cut..stderr.len())
            .find(|&i| stderr.is_char_boundary(i))
            .unwrap_or(0);
        stderr = stderr.split_off(cut);
    }
    if !stderr.trim().is_empty() {
        tracing::debug!(message = %last_line(&stderr), "systemd-creds");
    }
    if filled > stdout_cap {
        return Ok(ToolOutput {
            success: false,
            stdout: Zeroizing::new(Vec::new()),
            stderr: format!("output longer than {stdout_cap} bytes"),
        });
    }
    buf.truncate(filled);
    Ok(ToolOutput {
        success: status.success(),
        stdout: buf,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_vectors() {
        assert_eq!(decode_base64(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64(b"aGVs\nbG8h").unwrap(), b"hello!");
        assert!(decode_base64(b"aGV*").is_err());
        assert!(decode_base64(b"aG==Vs").is_err());
    }

    #[test]
    fn ids_decode() {
        assert_eq!(ID_TPM2[0], 0x0c);
        assert_eq!(ID_HOST[15], 0x9a);
    }

    #[test]
    fn structure_check_rejects_garbage_and_truncation() {
        assert!(check_structure(b"hello\n").is_err());
        assert!(check_structure(b"not base64 *").is_err());
        // A tpm2 id followed by nothing.
        let mut raw = ID_TPM2.to_vec();
        let short = encode_base64(&raw);
        assert_eq!(
            check_structure(short.as_bytes()),
            Err("it is truncated".into())
        );
        // Plausible header, enough bytes.
        for v in [32u32, 16, 12, 16] {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        raw.extend_from_slice(&[0u8; 80]);
        assert!(check_structure(encode_base64(&raw).as_bytes()).is_ok());
        assert_eq!(mode_of(encode_base64(&raw).as_bytes()), SealingMode::Tpm2);
    }

    fn encode_base64(b: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn slot_names_round_trip() {
        let u = Udid::new("00008030-001A2B3C4D5E6F70").unwrap();
        for slot in [Slot::Default, Slot::Phone(u)] {
            assert_eq!(
                Slot::from_credential_name(&slot.credential_name()),
                Some(slot.clone())
            );
            assert_eq!(slot_from_stem(&file_stem(&slot)), Some(slot));
        }
        assert!(Udid::new("../etc").is_err());
        assert!(Udid::new("").is_err());
        assert!(Udid::new(&"a".repeat(65)).is_err());
        assert_eq!(slot_from_stem("phone-../x"), None);
    }

    #[test]
    fn no_tpm_refuses_unless_host_key_allowed() {
        if Path::new(TPM_RM_DEVICE).exists() {
            return; // a real TPM: Auto picks it, nothing to check here
        }
        let cfg = SystemdCredsConfig::default();
        let err = SystemdCredsStore::open(cfg.clone()).unwrap_err();
        assert!(matches!(err, SecretsError::NoTpm));
        assert_eq!(
            err.to_string(),
            "no TPM found; set secrets.allow_host_key=true to use the weaker host-key mode"
        );
        let store = SystemdCredsStore::open(SystemdCredsConfig {
            allow_host_key: true,
            ..cfg
        })
        .unwrap();
        assert_eq!(store.mode(), SealingMode::HostKey);
    }

    #[test]
    fn credentials_dir_is_read_first() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        fs::create_dir(&creds).unwrap();
        fs::write(
            creds.join(super::super::DEFAULT_CREDENTIAL_NAME),
            b"from-systemd\n",
        )
        .unwrap();
        let store = SystemdCredsStore::open(SystemdCredsConfig {
            state_dir: dir.path().join("sealed"),
            credentials_dir: Some(creds),
            tpm: TpmDevice::Explicit("swtpm:port=1".into()),
            program: PathBuf::from("/nonexistent/systemd-creds"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(store.get(&Slot::Default).unwrap().expose(), b"from-systemd");
        let phone = Slot::Phone(Udid::new("abc").unwrap());
        assert!(matches!(
            store.get(&phone),
            Err(SecretsError::NotFound { .. })
        ));
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].mode, SealingMode::ServiceCredential);
        // Forgotten in this process: the copy systemd loaded at start no longer answers.
        assert!(store.remove(&Slot::Default).unwrap());
        assert!(matches!(
            store.get(&Slot::Default),
            Err(SecretsError::NotFound { .. })
        ));
        assert!(store.list().unwrap().is_empty());
        assert!(!store.remove(&Slot::Default).unwrap());
    }

    #[test]
    fn missing_tool_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = SystemdCredsStore::open(SystemdCredsConfig {
            state_dir: dir.path().to_path_buf(),
            tpm: TpmDevice::Explicit("swtpm:port=1".into()),
            program: PathBuf::from("/nonexistent/systemd-creds"),
            ..Default::default()
        })
        .unwrap();
        let err = store.set(&Slot::Default, &Password::new("pw")).unwrap_err();
        assert!(matches!(err, SecretsError::ToolMissing { .. }), "{err}");
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
