//! The sled index and the writer lock over a real folder: the index is used after a reopen,
//! rebuilt when VERSION is damaged or the index is deleted, resynchronized with packs and records
//! added or removed behind its back; and `.tmp` leftovers are removed when the writer lock is taken.

use std::sync::Arc;

use cradle::password::Password;
use cradle::store::lock::{LockPurpose, SystemLockEnv};
use cradle::store::repo::{InitOptions, RepoError, Repository};
use cradle::store::seal::BlobKind;
use cradle::store::storage::{LocalStorage, Storage};

fn open(dir: &std::path::Path) -> Repository {
    Repository::open(
        Arc::new(LocalStorage::new(dir).unwrap()),
        &Password::new("pw"),
    )
    .unwrap()
}

#[test]
fn index_is_used_rebuilt_and_resynchronized() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let mut repo = Repository::init(
        storage.clone(),
        &Password::new("pw"),
        &InitOptions::for_tests(),
    )
    .unwrap();
    let a: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let st_a = repo.put_stream(&a[..], BlobKind::Data).unwrap();
    repo.flush().unwrap();
    let n = repo.index_chunk_count().unwrap();
    assert!(n > 0);
    drop(repo);
    assert!(dir.path().join("index/VERSION").exists());

    // Reopened: the index answers, and the stream reads back.
    let repo = open(dir.path());
    assert_eq!(repo.index_chunk_count(), Some(n));
    let mut out = Vec::new();
    repo.read_stream(&st_a, &mut out).unwrap();
    assert_eq!(out, a);
    drop(repo);

    // Damaged VERSION, then a deleted index: rebuilt from the packs.
    std::fs::write(dir.path().join("index/VERSION"), b"garbage").unwrap();
    assert_eq!(open(dir.path()).index_chunk_count(), Some(n));
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    assert_eq!(open(dir.path()).index_chunk_count(), Some(n));

    // A pack deleted behind the index's back: resync drops its chunks.
    let pack = {
        let repo = open(dir.path());
        repo.list_packs().unwrap()[0]
    };
    storage.delete(&pack.path()).unwrap();
    let repo = open(dir.path());
    assert_eq!(repo.index_chunk_count(), Some(0));
    assert!(matches!(
        repo.read_stream(&st_a, &mut Vec::new()),
        Err(RepoError::ChunkMissing(_))
    ));
}

#[test]
fn second_opener_works_without_the_index_and_resync_adds_its_packs() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let first = Repository::init(storage, &Password::new("pw"), &InitOptions::for_tests()).unwrap();
    // sled is held by `first`; a second process-like opener falls back to pack headers.
    let mut second = open(dir.path());
    assert_eq!(second.index_chunk_count(), None);
    let st = second
        .put_stream(&b"written while the index was busy"[..], BlobKind::Data)
        .unwrap();
    second.flush().unwrap();
    drop(second);
    drop(first);
    let repo = open(dir.path());
    assert_eq!(repo.index_chunk_count(), Some(1));
    let mut out = Vec::new();
    repo.read_stream(&st, &mut out).unwrap();
    assert_eq!(out, b"written while the index was busy");
}

#[test]
fn writer_lock_cleans_tmp_files() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(LocalStorage::new(dir.path()).unwrap());
    let repo = Repository::init(
        storage.clone(),
        &Password::new("pw"),
        &InitOptions::for_tests(),
    )
    .unwrap();
    let mut w = storage
        .create_streaming(&format!("packs/ab/{}", "ab".repeat(32)))
        .unwrap();
    w.write(b"torn pack").unwrap();
    drop(w);
    assert!(dir
        .path()
        .join(format!("packs/ab/{}.tmp", "ab".repeat(32)))
        .exists());
    let g = repo
        .lock_writer(LockPurpose::Ingest, &SystemLockEnv)
        .unwrap();
    assert!(!dir
        .path()
        .join(format!("packs/ab/{}.tmp", "ab".repeat(32)))
        .exists());
    // This process is alive: a second writer is refused.
    assert!(repo
        .lock_writer(LockPurpose::Prune, &SystemLockEnv)
        .is_err());
    g.release().unwrap();
    assert!(!dir.path().join("locks/writer").exists());
}
