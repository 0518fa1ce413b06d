//! The repository's secrets (format.md §5.1, §5.3): the master secret, its BLAKE3-derived
//! subkeys, and key files that wrap the master secret under an Argon2id key from the password.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::caps::{KDF_MEM_MAX_KIB, KDF_P_MAX, KDF_T_MAX, KEY_FILE_LEN};
use super::ids::{ChunkId, DeviceKey, FileKey, RepoId};
use super::seal;
use crate::password::Password;

/// Context string of `data_key`.
pub const CONTEXT_DATA_KEY: &str = "cradle 2026-11-28 repository data key";
/// Context string of `chunk_id_key`.
pub const CONTEXT_CHUNK_ID_KEY: &str = "cradle 2026-11-28 chunk id key";
/// Context string of `index_key`.
pub const CONTEXT_INDEX_KEY: &str = "cradle 2026-11-28 index key";
/// Context string of the FastCDC gear seed.
pub const CONTEXT_CDC_SEED: &str = "cradle 2026-11-28 fastcdc gear seed";

/// The 32-byte master secret. Wiped on drop, never shown by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct MasterSecret([u8; 32]);

impl MasterSecret {
    /// A fresh random master secret, as drawn by `init`.
    pub fn random() -> Self {
        MasterSecret(rand::random())
    }

    /// Wraps known bytes (tests, and unwrapping a key file).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        MasterSecret(b)
    }
}

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterSecret(<redacted>)")
    }
}

/// The subkeys derived from the master secret. Wiped on drop, never shown by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Keys {
    data_key: [u8; 32],
    chunk_id_key: [u8; 32],
    index_key: [u8; 32],
    cdc_seed: u64,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// Derives every subkey with BLAKE3's `derive_key` and the fixed context strings.
    pub fn derive(master: &MasterSecret) -> Self {
        let data_key = blake3::derive_key(CONTEXT_DATA_KEY, &master.0);
        let chunk_id_key = blake3::derive_key(CONTEXT_CHUNK_ID_KEY, &master.0);
        let index_key = blake3::derive_key(CONTEXT_INDEX_KEY, &master.0);
        let mut seed_bytes = Zeroizing::new(blake3::derive_key(CONTEXT_CDC_SEED, &master.0));
        let mut first = [0u8; 8];
        first.copy_from_slice(&seed_bytes[..8]);
        let seed = u64::from_le_bytes(first);
        first.zeroize();
        seed_bytes.zeroize();
        Keys {
            data_key,
            chunk_id_key,
            index_key,
            cdc_seed: if seed == 0 { 1 } else { seed },
        }
    }

    /// The key of every sealed object.
    pub(crate) fn data_key(&self) -> &[u8; 32] {
        &self.data_key
    }

    /// The FastCDC gear seed (never zero).
    pub(crate) fn cdc_seed(&self) -> u64 {
        self.cdc_seed
    }

    /// The keyed ChunkId of a chunk's bytes.
    pub fn chunk_id(&self, chunk: &[u8]) -> ChunkId {
        ChunkId::from_bytes(*blake3::keyed_hash(&self.chunk_id_key, chunk).as_bytes())
    }

    /// Keyed BLAKE3 under `index_key` (index names, staged file names).
    pub fn index_hash(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.index_key, data).as_bytes()
    }

    /// The index key of a device: keyed hash of its UDID, truncated to 16 bytes.
    pub fn device_key(&self, udid: &str) -> DeviceKey {
        let h = self.index_hash(udid.as_bytes());
        DeviceKey::from_slice(&h[..16]).unwrap_or_default()
    }

    /// The index key of a file: keyed hash of its fileID, truncated to 16 bytes.
    pub fn file_key(&self, file_id: &[u8]) -> FileKey {
        let h = self.index_hash(file_id);
        FileKey::from_slice(&h[..16]).unwrap_or_default()
    }
}

/// Argon2id cost parameters of a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes.
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost: 65_536,
        t_cost: 3,
        p_cost: 4,
    };

    /// Tiny parameters for tests only (fast, and still inside the caps).
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
    };

    /// Checks the caps every reader applies (§5.3) before running Argon2id.
    pub fn check(&self) -> Result<(), KeyError> {
        let ok = self.m_cost <= KDF_MEM_MAX_KIB
            && self.t_cost >= 1
            && self.t_cost <= KDF_T_MAX
            && self.p_cost >= 1
            && self.p_cost <= KDF_P_MAX
            && self.m_cost >= 8 * self.p_cost;
        if ok {
            Ok(())
        } else {
            Err(KeyError::KdfParams(*self))
        }
    }

    fn derive(
        &self,
        password: &Password,
        salt: &[u8; 32],
    ) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        self.check()?;
        let params = argon2::Params::new(self.m_cost, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| KeyError::Argon2(e.to_string()))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut kek = Zeroizing::new([0u8; 32]);
        a.hash_password_into(password.expose(), salt, &mut kek[..])
            .map_err(|e| KeyError::Argon2(e.to_string()))?;
        Ok(kek)
    }
}

/// Why a key file could not be made or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not exactly 168 bytes.
    #[error("key file has {0} bytes, expected 168")]
    Length(u64),
    /// Not a key file.
    #[error("not a key file (bad magic)")]
    BadMagic,
    /// A layout version this build does not know.
    #[error("unsupported key file layout version {0}")]
    UnsupportedVersion(u16),
    /// A KDF code this build does not know.
    #[error("unknown KDF {0}")]
    UnknownKdf(u8),
    /// A reserved byte is not zero.
    #[error("reserved field is not zero")]
    Reserved,
    /// Argon2id parameters outside the caps (a planted file could exhaust the box).
    #[error("Argon2id parameters out of range: {0:?}")]
    KdfParams(KdfParams),
    /// The Argon2 implementation refused the parameters.
    #[error("Argon2id failed: {0}")]
    Argon2(String),
    /// The tag does not verify: wrong password, or a damaged file.
    #[error("wrong password (or damaged key file)")]
    WrongPassword,
}

const KEYF_MAGIC: [u8; 8] = *b"CRDLKEYF";
const KEYF_AAD_LEN: usize = 64;

/// Builds a key file (§5.3) wrapping `master` and `repo` under `password`.
pub fn make_key_file(
    password: &Password,
    master: &MasterSecret,
    repo: &RepoId,
    params: KdfParams,
    created_ms: i64,
) -> Result<Vec<u8>, KeyError> {
    let salt: [u8; 32] = rand::random();
    let kek = params.derive(password, &salt)?;
    let mut out = Vec::with_capacity(KEY_FILE_LEN as usize);
    out.extend_from_slice(&KEYF_MAGIC);
    out.extend_from_slice(&1u16.to_le_bytes());
    out.push(1);
    out.push(0);
    out.extend_from_slice(&params.m_cost.to_le_bytes());
    out.extend_from_slice(&params.t_cost.to_le_bytes());
    out.extend_from_slice(&params.p_cost.to_le_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&created_ms.to_le_bytes());
    let aad = out.clone();
    let mut plain = Zeroizing::new([0u8; 64]);
    plain[..32].copy_from_slice(&master.0);
    plain[32..].copy_from_slice(repo.as_bytes());
    seal::seal_into(&mut out, &kek, &aad, &plain[..]);
    debug_assert_eq!(out.len() as u64, KEY_FILE_LEN);
    Ok(out)
}

/// Reads a key file's Argon2id parameters without running the KDF (checked against the caps).
pub fn key_file_params(bytes: &[u8]) -> Result<KdfParams, KeyError> {
    if bytes.len() as u64 != KEY_FILE_LEN {
        return Err(KeyError::Length(bytes.len() as u64));
    }
    if bytes[..8] != KEYF_MAGIC {
        return Err(KeyError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != 1 {
        return Err(KeyError::UnsupportedVersion(version));
    }
    if bytes[10] != 1 {
        return Err(KeyError::UnknownKdf(bytes[10]));
    }
    if bytes[11] != 0 {
        return Err(KeyError::Reserved);
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let params = KdfParams {
        m_cost: u32_at(12),
        t_cost: u32_at(16),
        p_cost: u32_at(20),
    };
    params.check()?;
    Ok(params)
}

/// Opens a key file with `password`, returning the master secret and the RepoId it names.
pub fn open_key_file(
    bytes: &[u8],
    password: &Password,
) -> Result<(MasterSecret, RepoId), KeyError> {
    let params = key_file_params(bytes)?;
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&bytes[24..56]);
    let kek = params.derive(password, &salt)?;
    let plain = Zeroizing::new(
        seal::open(&kek, &bytes[..KEYF_AAD_LEN], &bytes[KEYF_AAD_LEN..])
            .map_err(|_| KeyError::WrongPassword)?,
    );
    let mut m = [0u8; 32];
    m.copy_from_slice(&plain[..32]);
    let master = MasterSecret(m);
    m.zeroize();
    let repo = RepoId::from_slice(&plain[32..64]).ok_or(KeyError::Length(plain.len() as u64))?;
    Ok((master, repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: KdfParams = KdfParams::INSECURE_FOR_TESTS;

    #[test]
    fn subkeys_are_distinct_and_stable() {
        let m = MasterSecret::from_bytes([3u8; 32]);
        let k = Keys::derive(&m);
        assert_ne!(k.data_key, k.chunk_id_key);
        assert_ne!(k.data_key, k.index_key);
        assert_ne!(k.cdc_seed, 0);
        let k2 = Keys::derive(&m);
        assert_eq!(k.chunk_id(b"abc"), k2.chunk_id(b"abc"));
        // Pinned: the derivation is part of the format.
        assert_eq!(
            k.data_key,
            blake3::derive_key("cradle 2026-11-28 repository data key", &[3u8; 32])
        );
        assert_ne!(k.chunk_id(b"abc"), k.chunk_id(b"abd"));
        assert_ne!(
            k.chunk_id(b"abc").as_bytes(),
            blake3::hash(b"abc").as_bytes(),
            "ChunkIds are keyed"
        );
    }

    #[test]
    fn debug_is_redacted() {
        let m = MasterSecret::from_bytes([0xab; 32]);
        let k = Keys::derive(&m);
        let s = format!("{m:?} {k:?}");
        assert!(!s.contains("171") && !s.contains("ab"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn key_file_round_trip() {
        let pw = Password::new("hunter2");
        let m = MasterSecret::random();
        let repo = RepoId::random();
        let f = make_key_file(&pw, &m, &repo, P, 1234).unwrap();
        assert_eq!(f.len(), 168);
        assert_eq!(key_file_params(&f).unwrap(), P);
        let (m2, r2) = open_key_file(&f, &pw).unwrap();
        assert_eq!((m2, r2), (m, repo));
    }

    #[test]
    fn key_file_rejections() {
        let pw = Password::new("pw");
        let m = MasterSecret::random();
        let f = make_key_file(&pw, &m, &RepoId::random(), P, 0).unwrap();
        assert_eq!(
            open_key_file(&f, &Password::new("wrong")),
            Err(KeyError::WrongPassword)
        );
        assert_eq!(open_key_file(&f[..167], &pw), Err(KeyError::Length(167)));
        let mut bad = f.clone();
        bad[0] = b'X';
        assert_eq!(open_key_file(&bad, &pw), Err(KeyError::BadMagic));
        let mut bad = f.clone();
        bad[8] = 2;
        assert_eq!(
            open_key_file(&bad, &pw),
            Err(KeyError::UnsupportedVersion(2))
        );
        let mut bad = f.clone();
        bad[10] = 2;
        assert_eq!(open_key_file(&bad, &pw), Err(KeyError::UnknownKdf(2)));
        let mut bad = f.clone();
        bad[11] = 1;
        assert_eq!(open_key_file(&bad, &pw), Err(KeyError::Reserved));
        // The created time is in the AAD.
        let mut bad = f.clone();
        bad[60] ^= 1;
        assert_eq!(open_key_file(&bad, &pw), Err(KeyError::WrongPassword));
        // The salt changes the KEK.
        let mut bad = f.clone();
        bad[30] ^= 1;
        assert_eq!(open_key_file(&bad, &pw), Err(KeyError::WrongPassword));
    }

    #[test]
    fn key_file_caps_are_checked_before_the_kdf() {
        let pw = Password::new("pw");
        let f = make_key_file(&pw, &MasterSecret::random(), &RepoId::random(), P, 0).unwrap();
        for (off, val) in [
            (12usize, KDF_MEM_MAX_KIB + 1),
            (16, KDF_T_MAX + 1),
            (16, 0),
            (20, KDF_P_MAX + 1),
            (20, 0),
            (20, 9), // m = 64 < 8 * 9
        ] {
            let mut bad = f.clone();
            bad[off..off + 4].copy_from_slice(&val.to_le_bytes());
            assert!(
                matches!(open_key_file(&bad, &pw), Err(KeyError::KdfParams(_))),
                "offset {off} value {val}"
            );
        }
        assert!(make_key_file(
            &pw,
            &MasterSecret::random(),
            &RepoId::random(),
            KdfParams {
                m_cost: KDF_MEM_MAX_KIB * 2,
                t_cost: 1,
                p_cost: 1
            },
            0
        )
        .is_err());
    }
}
