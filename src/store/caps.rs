//! The caps of format.md §20 as named constants: every length or count read from the drive is
//! checked against one of these before anything is allocated for it.

/// Key files tried in `keys/` when opening.
pub const KEY_FILES_MAX: usize = 64;
/// Largest Argon2id memory cost accepted, in KiB (256 MiB; the box has 512 MiB).
pub const KDF_MEM_MAX_KIB: u32 = 262_144;
/// Largest Argon2id pass count accepted.
pub const KDF_T_MAX: u32 = 64;
/// Largest Argon2id lane count accepted.
pub const KDF_P_MAX: u32 = 16;
/// Largest `config.N` file.
pub const CONFIG_FILE_MAX: u64 = 4096;
/// Largest lock file.
pub const LOCK_FILE_MAX: u64 = 4096;
/// Largest pin file.
pub const PIN_FILE_MAX: u64 = 4096;
/// Largest chunk after decompression (fastcdc's `MAXIMUM_MAX`).
pub const BLOB_PLAIN_MAX: u32 = 16 * 1024 * 1024;
/// Most blobs listed in one pack header.
pub const PACK_BLOBS_MAX: u32 = 65_536;
/// Largest encrypted pack header: version and count, 42 bytes per entry, nonce and tag.
pub const HEADER_MAX: u32 = 8 + 42 * PACK_BLOBS_MAX + 40;
/// Largest pack file.
pub const PACK_FILE_MAX: u64 = 64 * 1024 * 1024;
/// Largest snapshot record file.
pub const SNAPSHOT_FILE_MAX: u64 = 8 * 1024 * 1024;
/// Most ChunkIds listed in one stream (direct, or the list chunks of an indirect one).
pub const STREAM_DIRECT_MAX: u32 = 8_192;
/// Most top-level files in a snapshot.
pub const TOP_FILES_MAX: u16 = 16;
/// Largest file-table entry (bytes after its length field).
pub const ENTRY_MAX: u32 = 512 * 1024;
/// Largest journal frame.
pub const FRAME_MAX: u32 = 1024 * 1024 + 40;
/// Age of another host's writer lock after which it counts as stale (§11 rule 3), in milliseconds.
pub const LOCK_STALE_FOREIGN_MS: i64 = 30 * 60 * 1000;
/// Exact size of a key file.
pub const KEY_FILE_LEN: u64 = 168;
