//! The store API tests' fixtures: a repository on the in-memory crash simulator, file tables, and
//! the snapshot record of a test iPhone around one.

use cradle::password::Password;
use cradle::store::chunker::ChunkerParams;
use cradle::store::ids::SnapshotId;
use cradle::store::repo::{InitOptions, Repository};
use cradle::store::seal::BlobKind;
use cradle::store::snapshot::{
    BackupKek, DeviceInfo, SnapshotKind, SnapshotRecord, TopEncoding, TopFile,
};
use cradle::store::storage::{CrashStorage, Storage};
use cradle::store::table::{FileEntry, TableSummary};
use std::sync::Arc;

/// The test repositories' password.
pub const PW: &str = "pw";
/// The test iPhone's UDID.
pub const UDID: &str = "00008110-000A1B2C3D4E5F60";

/// A new repository (test KDF and sizes) on `s`.
pub fn init_on(s: Arc<dyn Storage>) -> Repository {
    Repository::init(s, &Password::new(PW), &InitOptions::for_tests()).unwrap()
}

/// The repository on `s`, opened with [`PW`].
pub fn open_on(s: Arc<dyn Storage>) -> Repository {
    Repository::open(s, &Password::new(PW)).unwrap()
}

/// A new repository on a new crash simulator.
pub fn setup() -> (CrashStorage, Repository) {
    let s = CrashStorage::new();
    let repo = init_on(Arc::new(s.clone()));
    (s, repo)
}

/// The repository on `s`, opened again.
pub fn reopen(s: &CrashStorage) -> Repository {
    open_on(Arc::new(s.clone()))
}

/// Writes `es` (in table order) as a file table.
pub fn write_table(repo: &mut Repository, es: &[FileEntry]) -> TableSummary {
    let mut w = repo.file_table_writer();
    for e in es {
        w.push(repo, e).unwrap();
    }
    w.finish(repo).unwrap()
}

/// A digested record of the test iPhone `udid`, dated `phone_date`, of table `t`, whose only top
/// file is a Manifest.plist holding `manifest`.
pub fn record(
    repo: &mut Repository,
    udid: &str,
    phone_date: i64,
    manifest: &[u8],
    t: &TableSummary,
) -> SnapshotRecord {
    let manifest = repo.put_stream(manifest, BlobKind::Data).unwrap();
    SnapshotRecord {
        kind: SnapshotKind::Digested,
        device: DeviceInfo {
            udid: udid.into(),
            device_name: "Test iPhone".into(),
            product_type: "iPhone15,2".into(),
            product_version: "17.5.1".into(),
            build_version: "21F90".into(),
            serial_number: "F2LTEST".into(),
        },
        phone_date,
        box_started: 1,
        box_finished: 2,
        box_clock_synced: false,
        is_full_backup: true,
        parent: SnapshotId::ZERO,
        digested_from: SnapshotId::ZERO,
        backup_kek: BackupKek([9; 32]),
        chunker_used: ChunkerParams::DATA_DEFAULT,
        top_files: vec![TopFile {
            name: "Manifest.plist".into(),
            encoding: TopEncoding::Verbatim,
            stream: manifest,
        }],
        counts: t.counts,
        content_bytes: t.content_bytes,
        file_table: t.table.clone(),
    }
}
