//! Identifier types of the repository (format.md §3): one Rust type per kind of ID, so a `PackId`
//! can never be passed where a `ChunkId` is expected. Raw bytes on disk, lower-case hex in names.

use std::fmt;

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Size of this ID in bytes.
            pub const LEN: usize = $len;
            /// The all-zero ID, used by records for "none" (e.g. no parent snapshot).
            pub const ZERO: Self = $name([0u8; $len]);

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }

            /// Reads an ID from exactly `Self::LEN` bytes; `None` for any other length.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(bytes).ok().map($name)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// True for the all-zero ID.
            pub fn is_zero(&self) -> bool {
                self.0 == [0u8; $len]
            }

            /// Lower-case hex, as used in file names.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses lower-case hex of exactly `2 * Self::LEN` digits. Upper case is refused:
            /// exFAT is case-insensitive and Cradle only ever writes lower case.
            pub fn from_hex(s: &str) -> Option<Self> {
                if s.len() != 2 * $len || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return None;
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some($name(out))
            }

            /// A fresh random ID (from the thread-local CSPRNG).
            pub fn random() -> Self {
                $name(rand::random())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // IDs are not secret; the short form keeps test output readable.
                write!(f, concat!(stringify!($name), "({})"), &self.to_hex()[..16])
            }
        }
    };
}

/// Hashes a `ChunkId` by its first eight bytes. ChunkIds are keyed BLAKE3 outputs, uniform and
/// unpredictable without the repository's key, so no one can aim collisions at a map of them;
/// SipHash over 32 bytes was a tenth of the ingest's CPU time.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkIdHasher(u64);

impl std::hash::Hasher for ChunkIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(b);
    }

    fn write_usize(&mut self, n: usize) {
        // The length prefix of the id's bytes: the same for every id.
        self.0 ^= n as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The hasher of maps and sets keyed by `ChunkId`.
pub type BuildChunkIdHasher = std::hash::BuildHasherDefault<ChunkIdHasher>;

define_id!(
    /// A repository's identity, random at `init`; stored in `config.1` and in every key file.
    RepoId, 32
);
define_id!(
    /// Unkeyed BLAKE3 of a whole key file; its name in `keys/`.
    KeyId, 32
);
define_id!(
    /// Keyed BLAKE3 (`chunk_id_key`) of a chunk's bytes.
    ChunkId, 32
);
define_id!(
    /// Random name of a pack, drawn when the pack is started.
    PackId, 32
);
define_id!(
    /// Unkeyed BLAKE3 of a whole sealed snapshot file; its name in `snapshots/`.
    SnapshotId, 32
);
define_id!(
    /// Random name of a staging session.
    SessionId, 16
);
define_id!(
    /// Random identity of a process holding a lock.
    HolderId, 16
);
define_id!(
    /// Keyed BLAKE3 (`index_key`) of a device's UDID, truncated: the device's key in the index.
    DeviceKey, 16
);
define_id!(
    /// Keyed BLAKE3 (`index_key`) of a fileID, truncated: a file's key in the index.
    FileKey, 16
);

impl KeyId {
    /// The KeyId of a key file: BLAKE3 of its complete bytes.
    pub fn of_file(bytes: &[u8]) -> Self {
        KeyId(*blake3::hash(bytes).as_bytes())
    }
}

impl SnapshotId {
    /// The SnapshotId of a sealed snapshot file: BLAKE3 of its complete bytes.
    pub fn of_file(bytes: &[u8]) -> Self {
        SnapshotId(*blake3::hash(bytes).as_bytes())
    }
}

impl PackId {
    /// Path of this pack in the repository: `packs/<first byte>/<PackId>`.
    pub fn path(&self) -> String {
        format!("packs/{:02x}/{}", self.0[0], self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejections() {
        let id = ChunkId::random();
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex(&"AB".repeat(32)), None);
        assert_eq!(ChunkId::from_hex("00"), None);
        assert_eq!(ChunkId::from_hex(&"zz".repeat(32)), None);
        assert_eq!(
            SessionId::from_hex(&"0a".repeat(16)).map(|s| s.as_bytes()[0]),
            Some(10)
        );
    }

    #[test]
    fn pack_path_uses_first_byte() {
        let mut b = [0u8; 32];
        b[0] = 0xab;
        let p = PackId::from_bytes(b).path();
        assert!(p.starts_with("packs/ab/ab00"));
        assert_eq!(p.len(), "packs/ab/".len() + 64);
    }

    #[test]
    fn zero_and_from_slice() {
        assert!(SnapshotId::ZERO.is_zero());
        assert!(SnapshotId::from_slice(&[0u8; 31]).is_none());
        assert!(SnapshotId::from_slice(&[1u8; 32]).is_some_and(|s| !s.is_zero()));
    }
}
