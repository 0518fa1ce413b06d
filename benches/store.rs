//! Benchmarks of the store's write path, printed as `name value unit` lines: `put_stream` on one
//! core (chunk + hash + compress + seal + pack, in memory) for incompressible and SQLite-like data,
//! and `read_stream`. Not a timed test: nothing here can fail on speed.
//!
//! `CRADLE_BENCH_MODE` selects the modes `scripts/bench store` drives (paths in environment
//! variables, since cargo passes its own arguments):
//! - `tree`: every regular file of `CRADLE_BENCH_TREE` through `put_stream` on one thread into the
//!   repository at `CRADLE_BENCH_REPO` (created if missing); with `CRADLE_BENCH_PREV_TREE`, also
//!   the bytes a file-level store would add (files new or different since that tree).
//! - `stage_many`: stages (does not ingest) an unencrypted backup session of
//!   `CRADLE_BENCH_FILES` tiny files, as a phone would send it.
//! - `ingest`: ingests the staged sessions, then prints this process's peak RSS.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cradle::backup2::target::{BackupPath, BackupTarget};
use cradle::ios_backup::manifest_db::{ManifestDbWriter, ManifestRow};
use cradle::ios_backup::mbfile::MbFile;
use cradle::password::Password;
use cradle::sim::backup::SimBackup;
use cradle::sim::phone::{Phone, Profile};
use cradle::store::ingest::recover_and_ingest;
use cradle::store::keys::KdfParams;
use cradle::store::repo::{InitOptions, Repository};
use cradle::store::repo_target::RepoTarget;
use cradle::store::seal::BlobKind;
use cradle::store::storage::{CrashStorage, LocalStorage};

const BENCH_PASSWORD: &str = "bench password";

const SIZE: usize = 128 << 20;

fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// 4 KiB pages of rows: integers, short repeated words, some random bytes (like message
/// databases), with mostly-zero free space at the end of each page.
fn sqlite_like(n: usize) -> Vec<u8> {
    let words: [&[u8]; 8] = [
        b"hello",
        b"message",
        b"com.apple.",
        b"thread",
        b"2024-05-01",
        b"ok",
        b"iPhone",
        b"attachment",
    ];
    let rnd = noise(n / 4);
    let mut out = Vec::with_capacity(n);
    let mut i = 0usize;
    while out.len() < n {
        let page_start = out.len();
        out.extend_from_slice(&[0x0d, 0, 0, 0, 0x10, 0, 0x0f, 0xa0]);
        while out.len() - page_start < 3000 {
            out.extend_from_slice(&(i as u32).to_be_bytes());
            out.extend_from_slice(words[i % 8]);
            out.extend_from_slice(words[(i * 7 + 3) % 8]);
            let r = (i * 13) % (rnd.len() - 16);
            out.extend_from_slice(&rnd[r..r + 12]);
            i += 1;
        }
        out.resize(page_start + 4096, 0);
    }
    out.truncate(n);
    out
}

/// Peak resident set of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat (clock
/// ticks of 1/100 s): on a shared machine, a fairer figure than wall time.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

/// A zstd level from the environment (to compare levels with one build).
fn zstd_level_env(name: &str) -> Option<i32> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set")))
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn open_or_init(root: &Path) -> Repository {
    std::fs::create_dir_all(root).expect("repository folder");
    let storage = Arc::new(LocalStorage::new(root).expect("storage"));
    let pw = Password::new(BENCH_PASSWORD);
    match Repository::open(storage.clone(), &pw) {
        Ok(r) => r,
        Err(_) => {
            let options = InitOptions {
                kdf: KdfParams::INSECURE_FOR_TESTS,
                ..InitOptions::default()
            };
            Repository::init(storage, &pw, &options).expect("init")
        }
    }
}

/// Regular files under `root`, sorted, as paths relative to it.
fn tree_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let Ok(t) = e.file_type() else { continue };
            let r = rel.join(e.file_name());
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() {
                out.push(r);
            }
        }
    }
    out.sort();
    out
}

fn mode_tree() {
    let (tree, root) = (env_path("CRADLE_BENCH_TREE"), env_path("CRADLE_BENCH_REPO"));
    let mut repo = open_or_init(&root);
    if let Some(level) = zstd_level_env("CRADLE_BENCH_ZSTD_LEVEL") {
        repo.set_zstd_level(level);
    }
    let files = tree_files(&tree);
    let before = dir_bytes(&root.join("packs"));
    let (mut bytes, mut since_flush, mut flush_secs) = (0u64, 0u64, 0f64);
    let t = Instant::now();
    let cpu0 = cpu_secs();
    for rel in &files {
        let f = std::fs::File::open(tree.join(rel)).expect("open");
        let st = repo
            .put_stream(
                std::io::BufReader::with_capacity(1 << 20, f),
                BlobKind::Data,
            )
            .expect("put");
        bytes += st.length;
        since_flush += st.length;
        // As ingest does: packs made durable every 64 MiB of input.
        if since_flush >= 64 << 20 {
            let f = Instant::now();
            repo.flush().expect("flush");
            flush_secs += f.elapsed().as_secs_f64();
            since_flush = 0;
        }
    }
    let f = Instant::now();
    repo.flush().expect("flush");
    flush_secs += f.elapsed().as_secs_f64();
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let added = dir_bytes(&root.join("packs")) - before;
    println!("tree_files {}", files.len());
    println!("tree_bytes {bytes}");
    println!("tree_secs {secs:.3}");
    println!("tree_cpu_secs {cpu:.2}");
    println!("tree_flush_secs {flush_secs:.2}");
    println!("tree_mb_s {:.1}", bytes as f64 / 1e6 / secs);
    println!(
        "tree_mb_per_cpu_s {:.1}",
        bytes as f64 / 1e6 / cpu.max(0.01)
    );
    println!("tree_pack_bytes_added {added}");
    println!("tree_index_bytes {}", dir_bytes(&root.join("index")));
    if let Some(prev) = std::env::var_os("CRADLE_BENCH_PREV_TREE").map(PathBuf::from) {
        let changed: u64 = files
            .iter()
            .filter(|rel| std::fs::read(prev.join(rel)).ok() != std::fs::read(tree.join(rel)).ok())
            .map(|rel| std::fs::metadata(tree.join(rel)).map_or(0, |m| m.len()))
            .sum();
        println!("tree_changed_file_bytes {changed}");
    }
    println!("peak_rss_kib {}", peak_rss_kib());
}

/// Stages an unencrypted backup of `CRADLE_BENCH_FILES` tiny distinct files (one app's
/// thousands of folders of small records), with its Manifest.db, as a phone sends it.
fn mode_stage_many() {
    let root = env_path("CRADLE_BENCH_REPO");
    let n: u64 = std::env::var("CRADLE_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_300_000);
    let repo = open_or_init(&root);
    let phone = Phone::new(1, Profile::Tiny, 1);
    let sb = SimBackup::new(&phone, None).expect("sim backup");
    let udid = phone.identity().udid.clone();
    let scratch = tempfile::tempdir().expect("scratch");
    let db = scratch.path().join("Manifest.db");
    let t = Instant::now();
    let domain = "AppDomain-com.example.records";
    let content = |i: u64| format!("record {i}: {}\n", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut w = ManifestDbWriter::create(&db).expect("Manifest.db");
    for i in 0..n {
        let path = format!("Library/Records/{:04}/{i}.rec", i / 1000);
        let file = MbFile {
            relative_path: path,
            target: None,
            size: content(i).len() as u64,
            mode: 0o100644,
            inode: 100_000 + i,
            user_id: 501,
            group_id: 501,
            birth: 1_700_000_000,
            last_modified: 1_700_000_000,
            last_status_change: 1_700_000_000,
            protection_class: 3,
            flags: 0,
            encryption_key: None,
            digest: None,
            extended_attributes: None,
        };
        w.insert(&ManifestRow::new(domain, file)).expect("row");
    }
    w.finish().expect("Manifest.db");
    println!("stage_manifest_db_secs {:.1}", t.elapsed().as_secs_f64());
    let mut target = RepoTarget::start(&repo, &udid, false).expect("session");
    let bp = |s: &str| BackupPath::parse(s).expect("path");
    target.create_dir_all(&bp(&udid)).expect("dir");
    for x in 0..256 {
        target
            .create_dir_all(&bp(&format!("{udid}/{x:02x}")))
            .expect("dir");
    }
    for i in 0..n {
        let id = cradle::ios_backup::file_id(
            domain,
            &format!("Library/Records/{:04}/{i}.rec", i / 1000),
        );
        let mut sink = target
            .create_file(&bp(&format!("{udid}/{}/{id}", &id[..2])))
            .expect("create");
        sink.write_all(content(i).as_bytes()).expect("write");
        sink.commit().expect("commit");
    }
    // Manifest.db streamed from its file, as the phone sends it (it is large at 1.3M rows).
    let mut sink = target
        .create_file(&bp(&format!("{udid}/Manifest.db")))
        .expect("create");
    std::io::copy(
        &mut std::fs::File::open(&db).expect("open Manifest.db"),
        &mut sink,
    )
    .expect("write");
    sink.commit().expect("commit");
    let tops = [
        ("Manifest.plist", sb.manifest_plist().to_bytes()),
        ("Status.plist", sb.status_plist(true).to_bytes()),
        ("Info.plist", sb.info_plist().to_xml()),
    ];
    for (name, bytes) in tops {
        let mut sink = target
            .create_file(&bp(&format!("{udid}/{name}")))
            .expect("create");
        sink.write_all(&bytes).expect("write");
        sink.commit().expect("commit");
    }
    target.finish().expect("done");
    println!("stage_files {n}");
    println!("stage_secs {:.1}", t.elapsed().as_secs_f64());
    println!("stage_peak_rss_kib {}", peak_rss_kib());
}

fn mode_ingest() {
    let root = env_path("CRADLE_BENCH_REPO");
    let rss0 = peak_rss_kib();
    let mut repo = open_or_init(&root);
    let t = Instant::now();
    let reports = recover_and_ingest(&mut repo, None).expect("ingest");
    println!("ingest_sessions {}", reports.len());
    for r in &reports {
        println!("ingest_files {}", r.files_ingested);
    }
    println!("ingest_secs {:.1}", t.elapsed().as_secs_f64());
    println!("ingest_peak_rss_kib {}", peak_rss_kib());
    println!("ingest_start_rss_kib {rss0}");
}

fn main() {
    // `cargo test --all-targets` runs benchmark binaries too, without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("store benchmarks: run with `cargo bench --bench store`");
        return;
    }
    match std::env::var("CRADLE_BENCH_MODE").as_deref() {
        Ok("tree") => return mode_tree(),
        Ok("stage_many") => return mode_stage_many(),
        Ok("ingest") => return mode_ingest(),
        _ => {}
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let options = InitOptions {
        kdf: KdfParams::INSECURE_FOR_TESTS,
        ..InitOptions::default()
    };
    // `CRADLE_BENCH_ZSTD_LEVELS=3,1,-1` compares levels in one run (names get `_zl<level>`).
    let levels: Vec<Option<i32>> = match std::env::var("CRADLE_BENCH_ZSTD_LEVELS") {
        Ok(v) => v.split(',').map(|l| l.trim().parse().ok()).collect(),
        Err(_) => vec![None],
    };
    let cases = [
        ("incompressible", noise(SIZE)),
        ("sqlite_like", sqlite_like(SIZE)),
    ];
    for ((base, data), level) in cases
        .iter()
        .flat_map(|c| levels.iter().map(move |l| (c, *l)))
    {
        if !want(base) {
            continue;
        }
        let name = match level {
            Some(l) => format!("{base}_zl{l}"),
            None => base.to_string(),
        };
        let storage = CrashStorage::new();
        let mut repo = Repository::init(Arc::new(storage.clone()), &Password::new("b"), &options)
            .expect("init");
        if let Some(l) = level {
            repo.set_zstd_level(l);
        }
        let t = Instant::now();
        let cpu0 = cpu_secs();
        let st = repo.put_stream(&data[..], BlobKind::Data).expect("put");
        repo.flush().expect("flush");
        let secs = t.elapsed().as_secs_f64();
        let cpu = cpu_secs() - cpu0;
        println!(
            "put_stream_{name}_per_cpu_s {:.0} MB/s",
            data.len() as f64 / 1e6 / cpu.max(0.01)
        );
        let stored: u64 = storage
            .file_names()
            .iter()
            .filter(|n| n.starts_with("packs/"))
            .map(|n| cradle::store::storage::Storage::size(&storage, n).unwrap_or(0))
            .sum();
        println!(
            "put_stream_{name} {:.0} MB/s",
            data.len() as f64 / 1e6 / secs
        );
        println!(
            "put_stream_{name}_stored_ratio {:.3}",
            stored as f64 / data.len() as f64
        );
        println!("put_stream_{name}_chunks {}", st.ids.len());
        let t = Instant::now();
        let n = repo.read_stream(&st, &mut std::io::sink()).expect("read");
        println!(
            "read_stream_{name} {:.0} MB/s",
            n as f64 / 1e6 / t.elapsed().as_secs_f64()
        );
    }
}
