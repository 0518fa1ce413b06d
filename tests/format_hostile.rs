//! Hostile or damaged backup folders: every case must end in one clear error line, no panic, and
//! nothing written outside the output folder.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn generate(dir: &Path, name: &str, password: Option<&Path>) -> PathBuf {
    let out = dir.join(name);
    let mut cmd = cradle();
    cmd.args([
        "sim",
        "generate",
        "--seed",
        "9",
        "--profile",
        "tiny",
        "--dpic",
        "1000",
        "--out",
    ])
    .arg(&out);
    match password {
        Some(p) => cmd.arg("--password-file").arg(p),
        None => cmd.arg("--unencrypted"),
    };
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Runs `backup-folder extract` and checks it failed cleanly; returns stderr.
fn extract_fails(backup: &Path, password: Option<&Path>, out: &Path) -> String {
    let mut cmd = cradle();
    cmd.args(["backup-folder", "extract"])
        .arg(backup)
        .arg("--out")
        .arg(out);
    if let Some(p) = password {
        cmd.arg("--password-file").arg(p);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "must fail with exit 2: {err}");
    assert!(!err.contains("panicked"), "no panic: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    err
}

/// Adds a row to a plaintext Manifest.db (fileID computed so only the path is hostile).
fn add_row(db: &Path, domain: &str, rel: &str, blob_from: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    let blob: Vec<u8> = c
        .query_row(
            "SELECT file FROM Files WHERE flags = 1 AND relativePath = ?",
            [blob_from],
            |r| r.get(0),
        )
        .unwrap();
    c.execute(
        "INSERT INTO Files (fileID, domain, relativePath, flags, file) VALUES (?, ?, ?, 1, ?)",
        rusqlite::params![cradle::ios_backup::file_id(domain, rel), domain, rel, blob],
    )
    .unwrap();
}

fn any_file_path(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(
        "SELECT relativePath FROM Files WHERE flags = 1 LIMIT 1",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn dotdot_and_absolute_paths_are_refused_and_nothing_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, domain, rel) in [
        ("dotdot", "HomeDomain", "../../../escaped"),
        ("absolute", "HomeDomain", "/tmp/escaped-absolute"),
        ("domain-dotdot", "..", "escaped"),
        ("domain-slash", "Home/../..", "escaped"),
    ] {
        let backup = generate(tmp.path(), name, None);
        let db = backup.join("Manifest.db");
        let src = any_file_path(&db);
        add_row(&db, domain, rel, &src);
        let sandbox = tmp.path().join(format!("{name}-sandbox"));
        std::fs::create_dir(&sandbox).unwrap();
        let out = sandbox.join("a/b/out");
        let err = extract_fails(&backup, None, &out);
        assert!(
            err.contains("refused") || err.contains("unsafe"),
            "{name}: {err}"
        );
        assert!(!tmp.path().join("escaped").exists());
        assert!(!Path::new("/tmp/escaped-absolute").exists());
        for p in [
            sandbox.join("escaped"),
            sandbox.join("a/escaped"),
            sandbox.join("a/b/escaped"),
        ] {
            assert!(!p.exists(), "{name}: wrote {}", p.display());
        }
    }
}

#[test]
fn a_symlink_row_cannot_redirect_a_later_file() {
    let tmp = tempfile::tempdir().unwrap();
    let backup = generate(tmp.path(), "link", None);
    let db = backup.join("Manifest.db");
    let src = any_file_path(&db);
    // A symlink row "Evil" pointing outside, and a file row below it.
    let c = rusqlite::Connection::open(&db).unwrap();
    let link_blob: Vec<u8> = c
        .query_row("SELECT file FROM Files WHERE flags = 4 LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut mb = cradle::ios_backup::mbfile::MbFile::decode(&link_blob).unwrap();
    mb.relative_path = "Evil".into();
    mb.target = Some(tmp.path().join("outside").display().to_string());
    c.execute(
        "INSERT INTO Files VALUES (?, 'HomeDomain', 'Evil', 4, ?)",
        rusqlite::params![
            cradle::ios_backup::file_id("HomeDomain", "Evil"),
            mb.encode()
        ],
    )
    .unwrap();
    drop(c);
    add_row(&db, "HomeDomain", "Evil/planted", &src);
    std::fs::create_dir(tmp.path().join("outside")).unwrap();
    let out = tmp.path().join("out");
    let _ = extract_fails(&backup, None, &out);
    assert!(
        !tmp.path().join("outside/planted").exists(),
        "wrote through the symlink"
    );
}

#[test]
fn damaged_folders_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let pw = password_file(tmp.path(), "pw");

    // Truncated keybag.
    let b = generate(tmp.path(), "keybag", Some(&pw));
    let mut m: plist::Dictionary = plist::from_file(b.join("Manifest.plist")).unwrap();
    if let Some(plist::Value::Data(kb)) = m.get_mut("BackupKeyBag") {
        kb.truncate(203);
    }
    plist::to_file_binary(b.join("Manifest.plist"), &m).unwrap();
    let err = extract_fails(&b, Some(&pw), &tmp.path().join("o1"));
    assert!(err.contains("keybag"), "{err}");

    // Manifest.db ciphertext damaged.
    let b = generate(tmp.path(), "db", Some(&pw));
    let mut bytes = std::fs::read(b.join("Manifest.db")).unwrap();
    let n = bytes.len();
    for x in &mut bytes[n - 40..] {
        *x ^= 0x5a;
    }
    std::fs::write(b.join("Manifest.db"), &bytes).unwrap();
    let err = extract_fails(&b, Some(&pw), &tmp.path().join("o2"));
    assert!(err.contains("Manifest.db"), "{err}");

    // Not SQLite at all (unencrypted backup).
    let b = generate(tmp.path(), "notsqlite", None);
    std::fs::write(b.join("Manifest.db"), b"this is not a database").unwrap();
    let err = extract_fails(&b, None, &tmp.path().join("o3"));
    assert!(err.contains("Manifest.db"), "{err}");

    // A data file shorter than its padding.
    let b = generate(tmp.path(), "short", Some(&pw));
    let victim = walk_data_files(&b)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let data = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &data[..8]).unwrap();
    let out = tmp.path().join("o4");
    let err = extract_fails(&b, Some(&pw), &out);
    assert!(err.contains("does not decrypt"), "{err}");
    // The half-written output file is not left behind looking complete.
    let left: Vec<_> = read_tree(&out)
        .into_iter()
        .filter(|(_, e)| matches!(e, TreeEntry::File { size, .. } if *size == 0))
        .collect();
    assert!(left.len() < 100, "sanity");

    // Missing Manifest.plist.
    let err = extract_fails(
        tmp.path().join("nothing-here").as_path(),
        None,
        &tmp.path().join("o5"),
    );
    assert!(err.contains("nothing-here"), "{err}");
}

fn walk_data_files(backup: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(backup).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for f in std::fs::read_dir(&p).unwrap() {
                v.push(f.unwrap().path());
            }
        }
    }
    v
}
