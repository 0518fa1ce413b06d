//! The repository's blob layer end to end over the in-memory crash simulator: init/open, wrong
//! passwords, put/read of streams (empty, small, multi-pack, indirect), dedup, damage and crashes.

mod common;

use common::store::{reopen, setup};
use std::io::Read;
use std::sync::Arc;

use cradle::password::Password;
use cradle::store::repo::{InitOptions, RepoError, Repository, README_TEXT};
use cradle::store::seal::BlobKind;
use cradle::store::storage::{CrashStorage, Storage};
use cradle::store::stream::StreamForm;

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn read_all(repo: &Repository, st: &cradle::store::stream::Stream) -> Vec<u8> {
    let mut out = Vec::new();
    repo.read_stream(st, &mut out).unwrap();
    out
}

#[test]
fn init_writes_layout_and_open_checks_the_password() {
    let (s, repo) = setup();
    let rid = repo.config().repo_id;
    drop(repo);
    assert_eq!(
        s.read("README.txt", 1 << 20).unwrap(),
        README_TEXT.as_bytes()
    );
    assert_eq!(s.list("packs").unwrap().len(), 256);
    assert_eq!(s.list("keys").unwrap().len(), 1);
    assert!(s.exists("config.1").unwrap());
    // A second init is refused.
    assert!(matches!(
        Repository::init(
            Arc::new(s.clone()),
            &Password::new("x"),
            &InitOptions::for_tests()
        ),
        Err(RepoError::AlreadyInitialized)
    ));
    // Wrong password: typed error, nothing written.
    let names = s.file_names();
    let syncs = s.fsync_count();
    assert!(matches!(
        Repository::open(Arc::new(s.clone()), &Password::new("wrong")),
        Err(RepoError::WrongPassword)
    ));
    assert_eq!(s.file_names(), names);
    assert_eq!(s.fsync_count(), syncs);
    assert_eq!(reopen(&s).config().repo_id, rid);
    // Durable: a crash right after init loses nothing.
    s.crash();
    assert_eq!(reopen(&s).config().repo_id, rid);
}

#[test]
fn foreign_key_file_is_skipped() {
    let (s, _repo) = setup();
    // A key file from another repository with the same password does not open this one.
    let other = CrashStorage::new();
    Repository::init(
        Arc::new(other.clone()),
        &Password::new("pw"),
        &InitOptions::for_tests(),
    )
    .unwrap();
    let name = other.list("keys").unwrap().remove(0);
    let bytes = other.read(&format!("keys/{name}"), 168).unwrap();
    s.create(&format!("keys/{name}"), &bytes).unwrap();
    let r = reopen(&s);
    assert_ne!(r.key_id().to_hex(), name);
    // With only the foreign key file left, the password no longer opens it.
    let own: Vec<String> = s
        .list("keys")
        .unwrap()
        .into_iter()
        .filter(|n| *n != name)
        .collect();
    for n in own {
        s.delete(&format!("keys/{n}")).unwrap();
    }
    assert!(matches!(
        Repository::open(Arc::new(s.clone()), &Password::new("pw")),
        Err(RepoError::WrongPassword)
    ));
    assert!(matches!(
        Repository::open(Arc::new(CrashStorage::new()), &Password::new("pw")),
        Err(RepoError::NotARepository)
    ));
}

#[test]
fn streams_round_trip_and_dedup() {
    let (s, mut repo) = setup();
    let big = noise(3 << 20, 1); // several 1 MiB packs
    let text: Vec<u8> = b"CREATE TABLE t(x); INSERT INTO t VALUES(1);\n".repeat(5000);
    let empty = repo.put_stream(&b""[..], BlobKind::Data).unwrap();
    let small = repo.put_stream(&b"hello"[..], BlobKind::Data).unwrap();
    assert!(matches!(
        repo.read_stream(&small, &mut Vec::new()),
        Err(RepoError::NotFlushed(_))
    ));
    let st_big = repo.put_stream(&big[..], BlobKind::Data).unwrap();
    let st_text = repo.put_stream(&text[..], BlobKind::Meta).unwrap();
    assert!(repo.has_unflushed());
    let packs = repo.flush().unwrap();
    assert!(packs.len() >= 4, "{}", packs.len());
    assert!(!repo.has_unflushed());
    assert_eq!(empty.ids.len(), 0);
    assert_eq!(small.ids.len(), 1);
    assert!(st_big.ids.len() > 100);
    assert_eq!(read_all(&repo, &empty), b"");
    assert_eq!(read_all(&repo, &small), b"hello");
    assert_eq!(read_all(&repo, &st_big), big);
    assert_eq!(read_all(&repo, &st_text), text);

    // Storing the same bytes again writes no blob.
    let before = s.file_names().len();
    let again = repo.put_stream(&big[..], BlobKind::Data).unwrap();
    assert_eq!(again, st_big);
    assert!(repo.flush().unwrap().is_empty());
    assert_eq!(s.file_names().len(), before);

    // Compressible text (meta blobs, in packs of their own) is stored compressed.
    let meta_bytes: u64 = packs
        .iter()
        .filter(|p| p.blobs.iter().all(|b| b.entry.kind == BlobKind::Meta))
        .map(|p| p.file_len)
        .sum();
    assert!(
        meta_bytes > 0 && meta_bytes < text.len() as u64 / 10,
        "{meta_bytes}"
    );
    assert!(packs
        .iter()
        .all(|p| p.blobs.iter().all(|b| b.entry.kind == BlobKind::Meta)
            || p.blobs.iter().all(|b| b.entry.kind == BlobKind::Data)));

    // Everything reads back after reopening (chunk map rebuilt from pack headers).
    drop(repo);
    let repo = reopen(&s);
    assert_eq!(read_all(&repo, &st_big), big);
    let mut via_read = Vec::new();
    repo.open_stream(&st_text)
        .read_to_end(&mut via_read)
        .unwrap();
    assert_eq!(via_read, text);
}

#[test]
fn long_streams_become_indirect() {
    let (_s, mut repo) = setup();
    // Zeros cut at the 16 KiB max: 8,193 chunks (one blob, deduplicated) need an indirect list.
    let len = 8193u64 * 16384 + 5;
    let st = repo
        .put_stream(std::io::repeat(0).take(len), BlobKind::Data)
        .unwrap();
    repo.flush().unwrap();
    assert_eq!(st.form, StreamForm::Indirect);
    assert_eq!(st.length, len);
    let mut n = 0u64;
    let mut r = repo.open_stream(&st);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        assert!(buf[..k].iter().all(|&b| b == 0));
        n += k as u64;
    }
    assert_eq!(n, len);
}

#[test]
fn damage_is_detected_not_trusted() {
    let (s, mut repo) = setup();
    let data = noise(200_000, 9);
    let st = repo.put_stream(&data[..], BlobKind::Data).unwrap();
    repo.flush().unwrap();
    let pack = s
        .file_names()
        .into_iter()
        .find(|n| n.starts_with("packs/"))
        .unwrap();
    // A flipped bit in a blob: the read fails, never returns wrong bytes.
    assert!(s.tamper(&pack, |b| b[100] ^= 1));
    assert!(matches!(
        repo.read_stream(&st, &mut Vec::new()),
        Err(RepoError::Pack(_))
    ));
    // A stream claiming a different length.
    assert!(s.tamper(&pack, |b| b[100] ^= 1));
    let mut lying = st.clone();
    lying.length += 1;
    assert!(matches!(
        repo.read_stream(&lying, &mut Vec::new()),
        Err(RepoError::BadStream(_))
    ));
    lying.length -= 2;
    assert!(matches!(
        repo.read_stream(&lying, &mut Vec::new()),
        Err(RepoError::BadStream(_))
    ));
    // A damaged header: the repository still opens; the pack is listed as damaged.
    assert!(s.tamper(&pack, |b| {
        let n = b.len();
        b[n - 20] ^= 1
    }));
    drop(repo);
    let repo = reopen(&s);
    assert_eq!(repo.damaged_packs().len(), 1);
    assert!(matches!(
        repo.read_stream(&st, &mut Vec::new()),
        Err(RepoError::ChunkMissing(_))
    ));
}

#[test]
fn crash_keeps_flushed_streams() {
    let (s, mut repo) = setup();
    let a = noise(500_000, 2);
    let st_a = repo.put_stream(&a[..], BlobKind::Data).unwrap();
    repo.flush().unwrap();
    let b = noise(500_000, 3);
    let st_b = repo.put_stream(&b[..], BlobKind::Data).unwrap();
    // Power cut before the second flush.
    s.crash();
    drop(repo);
    let repo = reopen(&s);
    assert_eq!(read_all(&repo, &st_a), a);
    assert!(matches!(
        repo.read_stream(&st_b, &mut Vec::new()),
        Err(RepoError::ChunkMissing(_))
    ));
}

#[test]
fn full_or_removed_drive_fails_cleanly() {
    let (s, mut repo) = setup();
    let a = noise(300_000, 4);
    let st_a = repo.put_stream(&a[..], BlobKind::Data).unwrap();
    repo.flush().unwrap();
    s.fail_after_bytes(100_000);
    let b = noise(300_000, 5);
    let r = repo
        .put_stream(&b[..], BlobKind::Data)
        .and_then(|_| repo.flush());
    assert!(
        matches!(r, Err(RepoError::Pack(_)) | Err(RepoError::Storage(_))),
        "{r:?}"
    );
    s.crash_torn(4096);
    drop(repo);
    let mut repo = reopen(&s);
    assert_eq!(read_all(&repo, &st_a), a);
    s.remove_drive();
    assert!(repo
        .put_stream(&b[..], BlobKind::Data)
        .and_then(|_| repo.flush())
        .is_err());
    assert!(repo.read_stream(&st_a, &mut Vec::new()).is_err());
}
