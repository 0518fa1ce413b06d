//! Snapshot records, file tables and pins end to end over the crash simulator: commit order,
//! listing from the drive, bounded table reading, order checks, damage and crashes.

mod common;

use common::store::{record, reopen, setup, write_table, UDID};
use cradle::store::ids::SnapshotId;
use cradle::store::repo::{RepoError, Repository};
use cradle::store::seal::BlobKind;
use cradle::store::snapshot::{BackupKek, Pin, SnapshotKind};
use cradle::store::storage::Storage;
use cradle::store::stream::Stream;
use cradle::store::table::{Content, FileEntry, Row, FLAG_DIR, FLAG_FILE};

/// The Manifest.plist of every test record.
const MANIFEST: &[u8] = b"<plist>manifest</plist>";

fn file_id(i: usize) -> [u8; 20] {
    let h = blake3::hash(format!("f{i}").as_bytes());
    let mut id = [0u8; 20];
    id.copy_from_slice(&h.as_bytes()[..20]);
    id
}

/// `n` entries in table order: a directory, then files whose content is stored, then orphans.
fn entries(repo: &mut Repository, n: usize) -> Vec<FileEntry> {
    let mut out = vec![FileEntry {
        file_id: file_id(0),
        row: Some(Row {
            flags: FLAG_DIR,
            domain: "HomeDomain".into(),
            relative_path: "Library".into(),
            mbfile: b"dir mbfile".to_vec(),
        }),
        content: Content::None,
    }];
    for i in 1..n {
        let data = format!("content of file {i} ").repeat(i % 50 + 1);
        let st = repo.put_stream(data.as_bytes(), BlobKind::Data).unwrap();
        out.push(FileEntry {
            file_id: file_id(i),
            row: Some(Row {
                flags: FLAG_FILE,
                domain: "HomeDomain".into(),
                relative_path: format!("Library/f{i:06}"),
                mbfile: vec![i as u8; 300],
            }),
            content: Content::Plain(st),
        });
    }
    let st = repo
        .put_stream(&b"orphan ciphertext"[..], BlobKind::Raw)
        .unwrap();
    let mut orphans: Vec<[u8; 20]> = (0..3).map(|i| file_id(1_000_000 + i)).collect();
    orphans.sort();
    for id in orphans {
        out.push(FileEntry {
            file_id: id,
            row: None,
            content: Content::Raw(st.clone()),
        });
    }
    out
}

fn read_table(repo: &Repository, table: &Stream) -> Result<Vec<FileEntry>, RepoError> {
    let mut r = repo.file_table_reader(table);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry(repo)? {
        out.push(e);
    }
    Ok(out)
}

#[test]
fn commit_list_load_and_read_back() {
    let (s, mut repo) = setup();
    let es = entries(&mut repo, 2000);
    let t = write_table(&mut repo, &es);
    assert_eq!(t.counts.files, 1999);
    assert_eq!(t.counts.dirs, 1);
    assert_eq!(t.counts.orphans, 3);
    assert!(
        t.table.ids.len() > 20,
        "a multi-chunk table: {}",
        t.table.ids.len()
    );
    let rec = record(&mut repo, UDID, 100, MANIFEST, &t);
    let id = repo.commit_snapshot(&rec).unwrap();
    assert!(!repo.has_unflushed());
    assert_eq!(repo.list_snapshots().unwrap(), vec![id]);
    // Durable: a power cut right after the commit keeps it.
    s.crash();
    drop(repo);
    let repo = reopen(&s);
    assert_eq!(repo.list_snapshots().unwrap(), vec![id]);
    let loaded = repo.load_snapshot(&id).unwrap();
    assert_eq!(loaded, rec);
    let back = read_table(&repo, &loaded.file_table).unwrap();
    assert_eq!(back, es);
    let mut out = Vec::new();
    repo.read_stream(es[7].content.stream().unwrap(), &mut out)
        .unwrap();
    assert_eq!(out, "content of file 7 ".repeat(8).into_bytes());
    let listing = repo.snapshot_listing().unwrap();
    assert_eq!(listing.snapshots.len(), 1);
    assert!(listing.damaged.is_empty());
}

#[test]
fn unchanged_tables_deduplicate() {
    let (s, mut repo) = setup();
    let es = entries(&mut repo, 1500);
    let t1 = write_table(&mut repo, &es);
    repo.flush().unwrap();
    let before = s.file_names().len();
    // The same entries again: the same meta chunks, nothing new stored.
    let t2 = write_table(&mut repo, &es);
    assert_eq!(t1, t2);
    assert!(repo.flush().unwrap().is_empty());
    assert_eq!(s.file_names().len(), before);
}

#[test]
fn writer_and_reader_enforce_order() {
    let (_s, mut repo) = setup();
    let es = entries(&mut repo, 5);
    let mut w = repo.file_table_writer();
    w.push(&mut repo, &es[2]).unwrap();
    assert!(matches!(
        w.push(&mut repo, &es[1]),
        Err(RepoError::Table(_))
    ));
    assert!(matches!(
        w.push(&mut repo, &es[2]),
        Err(RepoError::Table(_))
    ));
    // A content stream whose chunks are not stored is refused.
    let mut bogus = es[3].clone();
    if let Content::Plain(st) = &mut bogus.content {
        st.ids[0] = cradle::store::ids::ChunkId::from_bytes([0xee; 32]);
    }
    assert!(matches!(
        w.push(&mut repo, &bogus),
        Err(RepoError::ChunkMissing(_))
    ));

    // A table written out of order (bypassing the writer) is rejected by the reader.
    let mut sw = repo.stream_writer(BlobKind::Meta);
    for e in [&es[3], &es[1]] {
        let mut b = Vec::new();
        e.encode(&mut b).unwrap();
        sw.write(&mut repo, &b).unwrap();
    }
    let bad = sw.finish(&mut repo).unwrap();
    // A table cut inside an entry.
    let mut sw = repo.stream_writer(BlobKind::Meta);
    let mut b = Vec::new();
    es[1].encode(&mut b).unwrap();
    sw.write(&mut repo, &b[..b.len() - 1]).unwrap();
    let cut = sw.finish(&mut repo).unwrap();
    repo.flush().unwrap();
    assert!(matches!(read_table(&repo, &bad), Err(RepoError::Table(_))));
    assert!(matches!(read_table(&repo, &cut), Err(RepoError::Table(_))));
}

#[test]
fn records_need_durable_chunks_and_crash_before_write_leaves_nothing() {
    let (s, mut repo) = setup();
    let es = entries(&mut repo, 10);
    let t = write_table(&mut repo, &es);
    let mut rec = record(&mut repo, UDID, 5, MANIFEST, &t);
    let mut broken = rec.clone();
    broken.top_files[0].stream.ids[0] = cradle::store::ids::ChunkId::from_bytes([1; 32]);
    assert!(matches!(
        repo.prepare_snapshot(&broken),
        Err(RepoError::ChunkMissing(_))
    ));
    // Prepared (id known, packs durable) but not written: a crash leaves no snapshot.
    let prepared = repo.prepare_snapshot(&rec).unwrap();
    let id = prepared.id;
    s.crash();
    drop(repo);
    let mut repo = reopen(&s);
    assert!(repo.list_snapshots().unwrap().is_empty());
    // Committing again gives another id (fresh nonce), and the chunks are all still there.
    rec.box_finished = 3;
    let id2 = repo.commit_snapshot(&rec).unwrap();
    assert_ne!(id, id2);
    assert_eq!(
        read_table(&repo, &repo.load_snapshot(&id2).unwrap().file_table).unwrap(),
        es
    );
}

#[test]
fn damaged_records_and_superseded_raw() {
    let (s, mut repo) = setup();
    let es = entries(&mut repo, 10);
    let t = write_table(&mut repo, &es);
    let mut raw = record(&mut repo, UDID, 10, MANIFEST, &t);
    raw.kind = SnapshotKind::Raw;
    raw.backup_kek = BackupKek::default();
    let raw_id = repo.commit_snapshot(&raw).unwrap();
    let mut dig = record(&mut repo, UDID, 10, MANIFEST, &t);
    dig.digested_from = raw_id;
    let dig_id = repo.commit_snapshot(&dig).unwrap();
    let other = record(&mut repo, UDID, 20, MANIFEST, &t);
    let other_id = repo.commit_snapshot(&other).unwrap();
    let l = repo.snapshot_listing().unwrap();
    assert_eq!(l.superseded_raw, vec![raw_id]);
    let ids: Vec<SnapshotId> = l.snapshots.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, vec![dig_id, other_id], "ordered by phone_date");
    // Oldest first by box time, then phone date; the superseded raw record stays hidden.
    let mut late = record(&mut repo, UDID, 5, MANIFEST, &t);
    late.box_finished = 9;
    let late_id = repo.commit_snapshot(&late).unwrap();
    let ids: Vec<SnapshotId> = repo
        .snapshots_oldest_first()
        .unwrap()
        .iter()
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(ids, vec![dig_id, other_id, late_id]);
    repo.storage()
        .delete(&format!("snapshots/{late_id}"))
        .unwrap();

    // Bit rot in a record: its name no longer matches; listed as damaged, others still readable.
    assert!(s.tamper(&format!("snapshots/{other_id}"), |b| b[60] ^= 1));
    assert!(matches!(
        repo.load_snapshot(&other_id),
        Err(RepoError::NameMismatch(_))
    ));
    let l = repo.snapshot_listing().unwrap();
    assert_eq!(l.damaged.len(), 1);
    assert_eq!(l.snapshots.len(), 1);
    // A record renamed to another's name fails too; a `.tmp` is never listed.
    s.create(
        &format!("snapshots/{}", SnapshotId::from_bytes([3; 32])),
        b"junk",
    )
    .unwrap();
    let mut w = s
        .create_streaming(&format!("snapshots/{}", SnapshotId::from_bytes([4; 32])))
        .unwrap();
    w.write(b"partial").unwrap();
    drop(w);
    assert_eq!(repo.list_snapshots().unwrap().len(), 4);
}

#[test]
fn pins() {
    let (s, mut repo) = setup();
    let es = entries(&mut repo, 3);
    let t = write_table(&mut repo, &es);
    let rec = record(&mut repo, UDID, 1, MANIFEST, &t);
    let id = repo.commit_snapshot(&rec).unwrap();
    let pin = Pin {
        pinned_at: 77,
        note: "keep".into(),
    };
    assert!(repo.pin(&SnapshotId::from_bytes([5; 32]), &pin).is_err());
    repo.pin(&id, &pin).unwrap();
    repo.pin(
        &id,
        &Pin {
            pinned_at: 78,
            note: "again".into(),
        },
    )
    .unwrap();
    s.crash();
    drop(repo);
    let mut repo = reopen(&s);
    assert_eq!(repo.list_pins().unwrap(), vec![(id, pin)]);
    repo.unpin(&id).unwrap();
    repo.unpin(&id).unwrap();
    s.crash();
    assert!(reopen(&s).list_pins().unwrap().is_empty());
}
