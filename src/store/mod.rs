//! Cradle's snapshot repository on the backup drive (docs/format.md): keys, sealing, chunking,
//! packs, snapshots and the rebuildable index, over a small `Storage` trait.
//!
//! # How to use the store API
//!
//! ```no_run
//! use std::sync::Arc;
//! use cradle::password::Password;
//! use cradle::store::repo::{InitOptions, Repository};
//! use cradle::store::seal::BlobKind;
//! use cradle::store::storage::LocalStorage;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The repository folder must exist; `init` fills it, `open` checks the password.
//! let storage = Arc::new(LocalStorage::new("/media/drive/Cradle")?);
//! let pw = Password::new("backup password");
//! let mut repo = match Repository::open(storage.clone(), &pw) {
//!     Ok(r) => r,
//!     Err(cradle::store::repo::RepoError::NotARepository) => {
//!         Repository::init(storage, &pw, &InitOptions::default())?
//!     }
//!     Err(e) => return Err(e.into()),
//! };
//! // Store bytes: chunked, deduplicated, compressed when it pays, sealed, packed.
//! let stream = repo.put_stream(&b"file content"[..], BlobKind::Data)?;
//! // Make the packs durable before anything refers to the stream (format.md §15.1).
//! repo.flush()?;
//! // Read it back, every chunk checked against its keyed ChunkId.
//! let mut out = Vec::new();
//! repo.read_stream(&stream, &mut out)?;
//! # Ok(()) }
//! ```
//!
//! - `Stream` (in `stream`) is the value records keep: length + ChunkIds (direct or indirect).
//!   `BlobKind::Data` for plaintext content, `Raw` for Apple ciphertext (never compressed),
//!   `Meta` for file tables (own chunker sizes and own packs).
//! - `Repository::open_stream` gives an `io::Read` over a stream, one chunk in memory at a time.
//! - Tests use `storage::CrashStorage` (in memory; `crash()`, `crash_torn(n)`,
//!   `fail_after_bytes(n)`, `remove_drive()`, `pull_after_ops(n)`) and `InitOptions::for_tests()` (tiny Argon2id,
//!   small chunks and packs).
//! - After any write error, drop the `Repository`: the unfinished `.tmp` pack is garbage that the
//!   next writer's recovery deletes; everything flushed before stays readable.

pub mod caps;
pub mod check;
pub mod chunker;
pub mod chunkmap;
pub mod codec;
pub mod digest;
pub mod export;
pub mod ids;
pub mod index;
pub mod ingest;
pub mod journal;
pub mod keyring;
pub mod keys;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod repo;
pub mod repo_target;
pub mod scratch;
pub mod seal;
pub mod snapshot;
pub mod staging;
pub mod stats;
pub mod storage;
pub mod stream;
pub mod table;
pub mod tz;
pub mod walk;
