//! Sealing with XChaCha20-Poly1305 (format.md §5.2, §7): the sealed-file layout shared by config,
//! snapshots, pins, locks and staging files, the blob framing, and the AEAD primitive under both.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};

use super::ids::ChunkId;
use super::keys::Keys;

/// Nonce length of XChaCha20-Poly1305.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed buffer adds to its plaintext: nonce and tag.
pub const AEAD_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Length of a sealed file's clear header (magic, layout version, reserved), which is its AAD.
pub const SEALED_HEADER_LEN: usize = 12;
/// Bytes a sealed file adds to its payload.
pub const SEALED_FILE_OVERHEAD: usize = SEALED_HEADER_LEN + AEAD_OVERHEAD;

/// Magic of `config.N`.
pub const MAGIC_CONFIG: [u8; 8] = *b"CRDLCONF";
/// Magic of a snapshot record.
pub const MAGIC_SNAPSHOT: [u8; 8] = *b"CRDLSNAP";
/// Magic of a pin.
pub const MAGIC_PIN: [u8; 8] = *b"CRDLPIN_";
/// Magic of a lock.
pub const MAGIC_LOCK: [u8; 8] = *b"CRDLLOCK";
/// Magic of a staging session file.
pub const MAGIC_SESSION: [u8; 8] = *b"CRDLSESS";
/// Magic of a staging `done` marker.
pub const MAGIC_DONE: [u8; 8] = *b"CRDLDONE";

/// Why sealed bytes could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// Shorter than the fixed parts of the layout.
    #[error("sealed object too short ({0} bytes)")]
    TooShort(usize),
    /// Larger than the cap for this kind of object.
    #[error("sealed object of {len} bytes exceeds its cap of {cap}")]
    TooLarge {
        /// Actual length.
        len: u64,
        /// Cap that applies.
        cap: u64,
    },
    /// The magic is not the one expected for this kind of file.
    #[error("wrong magic {found:?}, expected {expected:?}")]
    BadMagic {
        /// Magic found, lossily as text.
        found: String,
        /// Magic expected.
        expected: String,
    },
    /// A layout version this build does not know.
    #[error("unsupported layout version {0}")]
    UnsupportedVersion(u16),
    /// A reserved field is not zero.
    #[error("reserved field is not zero")]
    Reserved,
    /// The tag does not verify: damaged, swapped, or sealed under another key or AAD.
    #[error("authentication failed (damaged, moved or foreign data)")]
    BadTag,
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

/// Appends `nonce || ciphertext || tag` of `plaintext` under `key` and `aad` to `out`,
/// with a fresh random nonce.
pub fn seal_into(out: &mut Vec<u8>, key: &[u8; 32], aad: &[u8], plaintext: &[u8]) {
    let nonce: [u8; NONCE_LEN] = rand::random();
    out.reserve(plaintext.len() + AEAD_OVERHEAD);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = cipher(key)
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut out[start..])
        // Only fails for plaintexts beyond 256 GiB; ours are capped far below.
        .unwrap_or_default();
    out.extend_from_slice(&tag);
}

/// XChaCha20-Poly1305 of `dst` in place, or of `src` written into `dst` (same length) when
/// given: the construction of the `chacha20poly1305` crate (a test pins that the bytes are the
/// same), driven here so that a chunk is encrypted where it lies instead of being copied first.
/// Returns the tag.
fn xchacha_seal(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    src: Option<&[u8]>,
    dst: &mut [u8],
) -> [u8; TAG_LEN] {
    use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
    use poly1305::universal_hash::{KeyInit as _, UniversalHash};
    let mut stream = chacha20::XChaCha20::new(key.into(), nonce.into());
    // The Poly1305 key is the first 32 bytes of keystream block 0; the message starts at block 1.
    let mut mac_key = zeroize::Zeroizing::new([0u8; 32]);
    stream.apply_keystream(&mut mac_key[..]);
    let mut mac = poly1305::Poly1305::new((&*mac_key).into());
    stream.seek(64u64);
    match src {
        // Lengths are equal by construction; a mismatch (or a message past 256 GiB) would
        // leave `dst` unencrypted, and the tag below would then not verify on reading.
        Some(src) if src.len() == dst.len() => {
            let _ = stream.apply_keystream_b2b(src, dst);
        }
        Some(_) => return [0u8; TAG_LEN],
        None => stream.apply_keystream(dst),
    }
    mac.update_padded(aad);
    mac.update_padded(dst);
    let mut lengths = poly1305::Block::default();
    lengths[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lengths[8..].copy_from_slice(&(dst.len() as u64).to_le_bytes());
    mac.update(&[lengths]);
    mac.finalize().into()
}

/// `nonce || ciphertext || tag` of `plaintext` as a new vector.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + AEAD_OVERHEAD);
    seal_into(&mut out, key, aad, plaintext);
    out
}

/// Opens `nonce || ciphertext || tag`, returning the plaintext.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < AEAD_OVERHEAD {
        return Err(SealError::TooShort(sealed.len()));
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut buf = ct.to_vec();
    cipher(key)
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            aad,
            &mut buf,
            Tag::from_slice(tag),
        )
        .map_err(|_| SealError::BadTag)?;
    Ok(buf)
}

/// Builds a sealed file (§5.2): `magic | version u16 | reserved u16 | nonce | ciphertext | tag`,
/// with the first 12 bytes as AAD.
pub fn seal_file(keys: &Keys, magic: [u8; 8], version: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + SEALED_FILE_OVERHEAD);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    let aad: [u8; SEALED_HEADER_LEN] = header_of(&out);
    seal_into(&mut out, keys.data_key(), &aad, payload);
    out
}

fn header_of(b: &[u8]) -> [u8; SEALED_HEADER_LEN] {
    let mut h = [0u8; SEALED_HEADER_LEN];
    h.copy_from_slice(&b[..SEALED_HEADER_LEN]);
    h
}

/// Opens a sealed file of kind `magic`, accepting layout versions in `versions` and at most
/// `cap` bytes. Returns the layout version and the payload.
pub fn open_file(
    keys: &Keys,
    magic: [u8; 8],
    versions: &[u16],
    cap: u64,
    bytes: &[u8],
) -> Result<(u16, Vec<u8>), SealError> {
    if bytes.len() as u64 > cap {
        return Err(SealError::TooLarge {
            len: bytes.len() as u64,
            cap,
        });
    }
    if bytes.len() < SEALED_FILE_OVERHEAD {
        return Err(SealError::TooShort(bytes.len()));
    }
    if bytes[..8] != magic {
        return Err(SealError::BadMagic {
            found: String::from_utf8_lossy(&bytes[..8]).into_owned(),
            expected: String::from_utf8_lossy(&magic).into_owned(),
        });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !versions.contains(&version) {
        return Err(SealError::UnsupportedVersion(version));
    }
    if bytes[10..12] != [0, 0] {
        return Err(SealError::Reserved);
    }
    let payload = open(keys.data_key(), &bytes[..SEALED_HEADER_LEN], &bytes[12..])?;
    Ok((version, payload))
}

/// What a blob holds (format.md §7); also recorded in pack headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// Plaintext file content, plists, Manifest.db.
    Data,
    /// File-table streams and indirect stream lists.
    Meta,
    /// Apple ciphertext: raw data files, a raw Manifest.db.
    Raw,
}

impl BlobKind {
    /// The on-disk code.
    pub fn code(self) -> u8 {
        match self {
            BlobKind::Data => 1,
            BlobKind::Meta => 2,
            BlobKind::Raw => 3,
        }
    }

    /// Parses an on-disk code; `None` for unknown values.
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(BlobKind::Data),
            2 => Some(BlobKind::Meta),
            3 => Some(BlobKind::Raw),
            _ => None,
        }
    }
}

/// Blob flag bit 0: the payload is one zstd frame.
pub const FLAG_COMPRESSED: u8 = 1;

fn blob_aad(id: &ChunkId, kind: BlobKind, flags: u8) -> [u8; 42] {
    let mut aad = [0u8; 42];
    aad[..8].copy_from_slice(b"CRDLBLOB");
    aad[8..40].copy_from_slice(id.as_bytes());
    aad[40] = kind.code();
    aad[41] = flags;
    aad
}

/// Appends a sealed blob (`nonce || ciphertext || tag`) of `payload` (already compressed if
/// `flags` says so) to `out`.
pub fn seal_blob_into(
    out: &mut Vec<u8>,
    keys: &Keys,
    id: &ChunkId,
    kind: BlobKind,
    flags: u8,
    payload: &[u8],
) {
    seal_into(out, keys.data_key(), &blob_aad(id, kind, flags), payload);
}

/// Seals a blob in `out[..len + AEAD_OVERHEAD]`, with a fresh nonce. The payload (already
/// compressed if `flags` says so) is `src` when given (`len` must be its length), else it is
/// already in place at `out[NONCE_LEN..NONCE_LEN + len]`. `out` must be long enough.
pub fn seal_blob_in(
    out: &mut [u8],
    keys: &Keys,
    id: &ChunkId,
    kind: BlobKind,
    flags: u8,
    src: Option<&[u8]>,
    len: usize,
) {
    let nonce: [u8; NONCE_LEN] = rand::random();
    out[..NONCE_LEN].copy_from_slice(&nonce);
    let (body, rest) = out[NONCE_LEN..].split_at_mut(len);
    let tag = xchacha_seal(
        keys.data_key(),
        &nonce,
        &blob_aad(id, kind, flags),
        src,
        body,
    );
    rest[..TAG_LEN].copy_from_slice(&tag);
}

/// Opens a sealed blob; the result is still compressed if `flags` says so.
pub fn open_blob(
    keys: &Keys,
    id: &ChunkId,
    kind: BlobKind,
    flags: u8,
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    open(keys.data_key(), &blob_aad(id, kind, flags), sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::MasterSecret;

    fn keys() -> Keys {
        Keys::derive(&MasterSecret::from_bytes([9u8; 32]))
    }

    #[test]
    fn sealed_file_round_trip_and_overhead() {
        let k = keys();
        let f = seal_file(&k, MAGIC_PIN, 1, b"hello");
        assert_eq!(f.len(), 5 + 52);
        assert_eq!(&f[..8], b"CRDLPIN_");
        let (v, p) = open_file(&k, MAGIC_PIN, &[1], 4096, &f).unwrap();
        assert_eq!((v, p.as_slice()), (1, &b"hello"[..]));
    }

    #[test]
    fn sealed_file_rejections() {
        let k = keys();
        let f = seal_file(&k, MAGIC_PIN, 1, b"hello");
        // wrong kind
        assert!(matches!(
            open_file(&k, MAGIC_LOCK, &[1], 4096, &f),
            Err(SealError::BadMagic { .. })
        ));
        // unknown version
        assert_eq!(
            open_file(&k, MAGIC_PIN, &[2], 4096, &f),
            Err(SealError::UnsupportedVersion(1))
        );
        // cap
        assert!(matches!(
            open_file(&k, MAGIC_PIN, &[1], 10, &f),
            Err(SealError::TooLarge { .. })
        ));
        // reserved non-zero (also breaks the AAD, but reserved is checked first)
        let mut r = f.clone();
        r[11] = 1;
        assert_eq!(
            open_file(&k, MAGIC_PIN, &[1], 4096, &r),
            Err(SealError::Reserved)
        );
        // flipped ciphertext bit
        let mut c = f.clone();
        c[40] ^= 1;
        assert_eq!(
            open_file(&k, MAGIC_PIN, &[1], 4096, &c),
            Err(SealError::BadTag)
        );
        // flipped tag bit
        let mut t = f.clone();
        let last = t.len() - 1;
        t[last] ^= 0x80;
        assert_eq!(
            open_file(&k, MAGIC_PIN, &[1], 4096, &t),
            Err(SealError::BadTag)
        );
        // another key
        let other = Keys::derive(&MasterSecret::from_bytes([8u8; 32]));
        assert_eq!(
            open_file(&other, MAGIC_PIN, &[1], 4096, &f),
            Err(SealError::BadTag)
        );
        // truncated
        assert_eq!(
            open_file(&k, MAGIC_PIN, &[1], 4096, &f[..51]),
            Err(SealError::TooShort(51))
        );
    }

    #[test]
    fn magic_is_authenticated() {
        // A pin relabelled as a lock (same version) must fail the tag, not parse as a lock.
        let k = keys();
        let mut f = seal_file(&k, MAGIC_PIN, 1, b"x");
        f[..8].copy_from_slice(&MAGIC_LOCK);
        assert_eq!(
            open_file(&k, MAGIC_LOCK, &[1], 4096, &f),
            Err(SealError::BadTag)
        );
    }

    #[test]
    fn blob_round_trip_and_wrong_aad() {
        let k = keys();
        let id = ChunkId::from_bytes([1; 32]);
        let mut b = Vec::new();
        seal_blob_into(&mut b, &k, &id, BlobKind::Data, 0, b"chunk bytes");
        assert_eq!(b.len(), 11 + 40);
        assert_eq!(
            open_blob(&k, &id, BlobKind::Data, 0, &b).unwrap(),
            b"chunk bytes"
        );
        let other = ChunkId::from_bytes([2; 32]);
        assert_eq!(
            open_blob(&k, &other, BlobKind::Data, 0, &b),
            Err(SealError::BadTag)
        );
        assert_eq!(
            open_blob(&k, &id, BlobKind::Meta, 0, &b),
            Err(SealError::BadTag)
        );
        assert_eq!(
            open_blob(&k, &id, BlobKind::Data, FLAG_COMPRESSED, &b),
            Err(SealError::BadTag)
        );
        assert_eq!(
            open_blob(&k, &id, BlobKind::Data, 0, &b[..39]),
            Err(SealError::TooShort(39))
        );
    }

    #[test]
    fn blob_sealed_in_place_or_from_source_opens() {
        let k = keys();
        let id = ChunkId::from_bytes([3; 32]);
        for len in [0usize, 1, 63, 64, 65, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            // From a source, into a longer reused buffer holding stale bytes.
            let mut out = vec![0xaau8; len + AEAD_OVERHEAD + 9];
            seal_blob_in(&mut out, &k, &id, BlobKind::Data, 0, Some(&plain), len);
            let sealed = &out[..len + AEAD_OVERHEAD];
            assert_eq!(
                open_blob(&k, &id, BlobKind::Data, 0, sealed).unwrap(),
                plain
            );
            // The same bytes as the AEAD crate's in-place encryption under that nonce.
            let mut theirs = sealed[..NONCE_LEN].to_vec();
            theirs.extend_from_slice(&plain);
            let tag = cipher(k.data_key())
                .encrypt_in_place_detached(
                    XNonce::from_slice(&sealed[..NONCE_LEN]),
                    &blob_aad(&id, BlobKind::Data, 0),
                    &mut theirs[NONCE_LEN..],
                )
                .unwrap();
            theirs.extend_from_slice(&tag);
            assert_eq!(sealed, &theirs[..]);
            // In place.
            let mut inplace = vec![0u8; len + AEAD_OVERHEAD];
            inplace[NONCE_LEN..NONCE_LEN + len].copy_from_slice(&plain);
            seal_blob_in(&mut inplace, &k, &id, BlobKind::Meta, 1, None, len);
            assert_eq!(
                open_blob(&k, &id, BlobKind::Meta, 1, &inplace).unwrap(),
                plain
            );
            assert_eq!(
                open_blob(&k, &id, BlobKind::Meta, 0, &inplace),
                Err(SealError::BadTag)
            );
        }
    }

    #[test]
    fn nonces_are_fresh() {
        let k = keys();
        assert_ne!(
            seal_file(&k, MAGIC_PIN, 1, b"a"),
            seal_file(&k, MAGIC_PIN, 1, b"a")
        );
    }

    #[test]
    fn blob_kind_codes() {
        for k in [BlobKind::Data, BlobKind::Meta, BlobKind::Raw] {
            assert_eq!(BlobKind::from_code(k.code()), Some(k));
        }
        assert_eq!(BlobKind::from_code(0), None);
        assert_eq!(BlobKind::from_code(4), None);
    }
}
