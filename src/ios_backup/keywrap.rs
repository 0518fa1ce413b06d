//! RFC 3394 AES-256 key wrap of the 32-byte keys in a backup (class keys, file keys, ManifestKey),
//! and the 44-byte `class (u32 LE) ‖ wrapped key` blob that MBFile and Manifest.plist carry.

use aes_kw::cipher::consts::U32;
use aes_kw::{KeyInit, KwAes256};
use zeroize::Zeroizing;

/// Length of every key Apple wraps in a backup: AES-256 keys.
pub const KEY_LEN: usize = 32;
/// Length of an RFC 3394 wrap of a [`KEY_LEN`]-byte key: one 8-byte integrity block more.
pub const WRAPPED_LEN: usize = KEY_LEN + 8;
/// Length of a [`WrappedKey`] blob: 4-byte little-endian protection class, then the wrapped key.
pub const WRAPPED_KEY_BLOB_LEN: usize = 4 + WRAPPED_LEN;

/// Why a key could not be unwrapped (or a wrapped-key blob not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyWrapError {
    /// The input does not have the only length a wrapped 32-byte key (or its blob) can have.
    #[error("wrapped key is {got} bytes long, expected {expected}")]
    BadLength { expected: usize, got: usize },
    /// RFC 3394's integrity value did not come out as A6A6A6A6A6A6A6A6: the unwrapping key is
    /// wrong (a wrong password, a wrong class) or the wrapped bytes are damaged.
    #[error("key unwrap integrity check failed (wrong key or damaged data)")]
    IntegrityCheckFailed,
}

/// Wraps a 32-byte `key` under `kek` (RFC 3394, default IV).
pub fn wrap_key(kek: &[u8; KEY_LEN], key: &[u8; KEY_LEN]) -> [u8; WRAPPED_LEN] {
    let kw = KwAes256::new(kek.into());
    // The fixed-size form has the lengths in its types, so it cannot fail.
    kw.wrap_fixed_key::<U32>(key.into()).into()
}

/// Unwraps a 40-byte RFC 3394 blob under `kek` into a 32-byte key, checking its integrity value.
pub fn unwrap_key(
    kek: &[u8; KEY_LEN],
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyWrapError> {
    if wrapped.len() != WRAPPED_LEN {
        return Err(KeyWrapError::BadLength {
            expected: WRAPPED_LEN,
            got: wrapped.len(),
        });
    }
    let kw = KwAes256::new(kek.into());
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    match kw.unwrap_key(wrapped, &mut out[..]) {
        Ok(_) => Ok(out),
        Err(aes_kw::Error::IntegrityCheckFailed) => Err(KeyWrapError::IntegrityCheckFailed),
        // Lengths were checked above; keep a typed answer rather than a panic anyway.
        Err(_) => Err(KeyWrapError::BadLength {
            expected: WRAPPED_LEN,
            got: wrapped.len(),
        }),
    }
}

/// A wrapped key with the protection class whose class key wraps it: MBFile's `EncryptionKey`
/// and Manifest.plist's `ManifestKey`. On disk: class as u32 **little-endian**, then 40 bytes.
///
/// The wrapped bytes are ciphertext, so `Debug` may show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WrappedKey {
    /// Protection class (1–4 for files, 4 for ManifestKey in real backups).
    pub class: u32,
    /// RFC 3394 wrap of the 32-byte key under that class key.
    pub wrapped: [u8; WRAPPED_LEN],
}

impl WrappedKey {
    /// Reads a 44-byte blob; any other length is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyWrapError> {
        let bad = || KeyWrapError::BadLength {
            expected: WRAPPED_KEY_BLOB_LEN,
            got: bytes.len(),
        };
        let (class, wrapped) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
        let wrapped: [u8; WRAPPED_LEN] = wrapped.try_into().map_err(|_| bad())?;
        Ok(WrappedKey {
            class: u32::from_le_bytes(*class),
            wrapped,
        })
    }

    /// Appends the 44-byte blob to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// The 44-byte blob.
    pub fn to_bytes(&self) -> [u8; WRAPPED_KEY_BLOB_LEN] {
        let mut b = [0u8; WRAPPED_KEY_BLOB_LEN];
        b[..4].copy_from_slice(&self.class.to_le_bytes());
        b[4..].copy_from_slice(&self.wrapped);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3394 §4.6: 256 bits of key data wrapped with a 256-bit KEK.
    #[test]
    fn rfc3394_vector_4_6() {
        let kek: [u8; 32] =
            hex::decode("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
                .unwrap()
                .try_into()
                .unwrap();
        let key: [u8; 32] =
            hex::decode("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
                .unwrap()
                .try_into()
                .unwrap();
        let expected = hex::decode(
            "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21",
        )
        .unwrap();
        let wrapped = wrap_key(&kek, &key);
        assert_eq!(wrapped.as_slice(), expected.as_slice());
        assert_eq!(*unwrap_key(&kek, &wrapped).unwrap(), key);
    }

    #[test]
    fn unwrap_rejects_wrong_length_and_wrong_kek() {
        let kek = [7u8; 32];
        let wrapped = wrap_key(&kek, &[9u8; 32]);
        assert_eq!(
            unwrap_key(&kek, &wrapped[..39]),
            Err(KeyWrapError::BadLength {
                expected: 40,
                got: 39
            })
        );
        assert_eq!(
            unwrap_key(&kek, &[0u8; 48]),
            Err(KeyWrapError::BadLength {
                expected: 40,
                got: 48
            })
        );
        assert_eq!(
            unwrap_key(&[8u8; 32], &wrapped),
            Err(KeyWrapError::IntegrityCheckFailed)
        );
        let mut damaged = wrapped;
        damaged[20] ^= 1;
        assert_eq!(
            unwrap_key(&kek, &damaged),
            Err(KeyWrapError::IntegrityCheckFailed)
        );
    }

    #[test]
    fn wrapped_key_blob_is_little_endian_class_then_40_bytes() {
        let bytes = std::fs::read(crate::ios_backup::testdata(
            "pyiosbackup-fixture/ManifestKey.bin",
        ))
        .unwrap();
        let wk = WrappedKey::decode(&bytes).unwrap();
        assert_eq!(wk.class, 2);
        assert_eq!(wk.to_bytes().as_slice(), bytes.as_slice());
        // Every class key in the fixture is 32 zero bytes, and so is the Manifest.db key.
        assert_eq!(*unwrap_key(&[0u8; 32], &wk.wrapped).unwrap(), [0u8; 32]);

        let mut out = Vec::new();
        WrappedKey {
            class: 0x0403_0201,
            wrapped: [0xAB; 40],
        }
        .encode(&mut out);
        assert_eq!(&out[..4], &[1, 2, 3, 4]);
        assert_eq!(out.len(), WRAPPED_KEY_BLOB_LEN);

        for len in [0, 4, 40, 43, 45, 88] {
            assert_eq!(
                WrappedKey::decode(&vec![0u8; len]),
                Err(KeyWrapError::BadLength {
                    expected: 44,
                    got: len
                })
            );
        }
    }
}
