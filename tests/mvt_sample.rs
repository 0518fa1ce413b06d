//! The real iOS 14.3 Manifest.db and Info.plist from mvt's test data, read through `ManifestDb`,
//! `MbFile` and `InfoPlist`: every row decodes, validates and re-encodes to the bytes iOS wrote.

use std::path::PathBuf;

use cradle::ios_backup::manifest_db::{KindCounts, ManifestDb, OpenMode};
use cradle::ios_backup::mbfile::{FileKind, MbFile};

/// `../shared/testdata` beside the crate (CI, /work/main), or two levels up from a worktree.
fn sample_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    ["../shared/testdata", "../../shared/testdata"]
        .iter()
        .map(|rel| root.join(rel).join("mvt-ios14.3-manifest"))
        .find(|p| p.is_dir())
        .expect("shared test data not found beside the crate")
}

fn listing() -> Vec<(String, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(sample_dir())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_row_decodes_validates_and_round_trips() {
    let before = listing();
    let db = ManifestDb::open(sample_dir().join("Manifest.db")).unwrap();
    assert_eq!(
        db.open_mode(),
        OpenMode::Immutable,
        "the -wal beside it is empty"
    );
    assert_eq!(db.count().unwrap(), 3721);
    assert_eq!(
        db.kind_counts().unwrap(),
        KindCounts {
            files: 1089,
            directories: 2618,
            symlinks: 14,
            other: 0
        }
    );
    assert_eq!(db.domains().unwrap().len(), 562);

    let mut rows = 0;
    let mut zero_size_files = 0;
    for row in db.rows() {
        let row = row.unwrap();
        rows += 1;
        let f = &row.file;
        let kind = row.flag_kind().unwrap();
        assert_eq!(f.kind(), kind, "{}", row.relative_path);
        match kind {
            FileKind::File => {
                let key = f.encryption_key.as_ref().unwrap();
                assert_eq!(key.len(), 44);
                assert_eq!(f.encryption_key_class(), Some(f.protection_class));
                assert!((1..=4).contains(&f.protection_class));
                if f.size == 0 {
                    zero_size_files += 1;
                }
            }
            FileKind::Symlink => assert!(f.target.as_deref().unwrap().starts_with('/')),
            _ => assert!(f.encryption_key.is_none() && f.target.is_none()),
        }
        assert_eq!(MbFile::decode(&f.encode()).unwrap(), *f);
    }
    assert_eq!(rows, 3721);
    assert_eq!(zero_size_files, 24);
    drop(db);
    assert_eq!(listing(), before, "nothing written beside the sample");
}

#[test]
fn encode_reproduces_apple_bytes() {
    // Raw blobs straight from SQLite, to compare with our encoding of the decoded record.
    let uri = format!(
        "file:{}?mode=ro&immutable=1",
        sample_dir().join("Manifest.db").display()
    );
    let conn = rusqlite::Connection::open_with_flags(
        uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT fileID, file FROM Files ORDER BY rowid")
        .unwrap();
    let blobs: Vec<(String, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut identical = 0;
    let mut differing = Vec::new();
    for (id, blob) in &blobs {
        let encoded = MbFile::decode(blob).unwrap().encode();
        if &encoded == blob {
            identical += 1;
        } else {
            differing.push(id.clone());
        }
    }
    println!(
        "{identical} of {} MBFile blobs re-encode byte-identically",
        blobs.len()
    );
    assert!(
        differing.is_empty(),
        "differing: {:?}",
        &differing[..differing.len().min(10)]
    );
}

#[test]
fn known_rows() {
    let db = ManifestDb::open(sample_dir().join("Manifest.db")).unwrap();
    let keychain = db
        .lookup("KeychainDomain", "keychain-backup.plist")
        .unwrap()
        .unwrap();
    assert_eq!(keychain.file_id, "51a4616e576dd33cd2abadfea874eb8ff246bf0e");
    assert_eq!(keychain.file.protection_class, 1);
    assert_eq!(keychain.file.mode, 0o100400);
    assert!(keychain.has_data_file());
    let root = db.lookup("HomeDomain", "").unwrap().unwrap();
    assert!(root.file.is_directory());
}

#[test]
fn sample_rewritten_by_the_writer_reads_back_identically() {
    use cradle::ios_backup::manifest_db::ManifestDbWriter;
    let db = ManifestDb::open(sample_dir().join("Manifest.db")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let path = dir.path().join(name);
        let mut w = ManifestDbWriter::create(&path).unwrap();
        for row in db.rows() {
            w.insert(&row.unwrap()).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 3721);
        path
    };
    let (a, b) = (write("a.db"), write("b.db"));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let copy = ManifestDb::open(&a).unwrap();
    let original = db.rows().map(Result::unwrap);
    let rewritten = copy.rows().map(Result::unwrap);
    assert!(original.eq(rewritten));
}

#[test]
fn real_info_plist_parses_and_round_trips() {
    use cradle::ios_backup::plists::InfoPlist;
    let path = sample_dir().join("Info.plist");
    let info = InfoPlist::read(&path).unwrap();
    assert_eq!(
        info.target_identifier(),
        Some("1cb128eafa77c5be74283e9a3a2130af36a3c059")
    );
    assert_eq!(
        info.unique_identifier(),
        Some("1CB128EAFA77C5BE74283E9A3A2130AF36A3C059")
    );
    assert_eq!(info.product_version(), Some("14.3"));
    assert_eq!(info.product_type(), Some("iPhone9,3"));
    assert_eq!(info.build_version(), Some("18C66"));
    assert_eq!(info.serial_number(), Some("F1234567890"));
    assert_eq!(info.imei(), Some("42"));
    assert_eq!(info.itunes_version(), Some("12.5.0"));
    assert_eq!(info.installed_applications().len(), 6);
    assert!(info.last_backup_date().is_some());
    assert_eq!(info.dictionary().len(), 15);

    // Finder wrote it as a binary plist; as XML (how a host writes it) it keeps every key,
    // and our XML re-reads to the same value and re-writes to the same bytes.
    let xml = info.to_xml();
    let from_xml = InfoPlist::from_bytes(&xml).unwrap();
    assert_eq!(from_xml, info);
    assert_eq!(from_xml.to_xml(), xml);
    let from_binary = InfoPlist::from_bytes(&info.to_binary()).unwrap();
    assert_eq!(from_binary, info);
}
