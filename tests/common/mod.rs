//! Helpers shared by the integration tests: the real peer tools (where they are, and whether a
//! missing one fails or skips the test), the `cradle` binary, `cradle sim serve` as a process
//! (`serve`), the synthetic phone's tree, and tree comparison; a repository through the binary
//! (`repo`), the store API's fixtures (`store`) and the crash tests' seeded schedule (`rng`).
#![allow(dead_code)]

pub mod mb2;
pub mod repo;
pub mod rng;
pub mod serve;
pub mod store;
pub mod usbmux;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The crate root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `cradle` binary built for this test run.
pub fn cradle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cradle"))
}

/// A test path as `&str` (temporary folders are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `cradle ARGS…` to completion within `limit`.
pub fn run_cradle(args: &[&str], limit: Duration) -> Output {
    let mut c = cradle();
    c.args(args);
    run_with_timeout(c, limit)
}

/// The synthetic phone's plaintext tree of that day (`cradle sim tree` into
/// `tmp/tree-SEED-DAY`).
pub fn sim_tree(
    tmp: &Path,
    profile: &str,
    seed: u64,
    day: u32,
    limit: Duration,
) -> BTreeMap<String, TreeEntry> {
    let out = tmp.join(format!("tree-{seed}-{day}"));
    let o = run_cradle(
        &[
            "sim",
            "tree",
            "--seed",
            &seed.to_string(),
            "--profile",
            profile,
            "--day",
            &day.to_string(),
            "--out",
            s(&out),
        ],
        limit,
    );
    assert!(o.success, "sim tree: {o:?}");
    read_tree(&out)
}

/// Where the test command installed the Python peers (one venv per tool).
pub fn peers_dir() -> PathBuf {
    std::env::var_os("CRADLE_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/peers"))
}

/// True when the test command asked for every peer to be present (CI): a missing peer then fails.
pub fn peers_required() -> bool {
    std::env::var("CRADLE_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// The python of a peer venv (`ibd`, `mvt`, `pmd3`), or None (after saying so) when it is absent
/// and not required. Panics when it is required and absent.
pub fn peer_python(venv: &str) -> Option<PathBuf> {
    peer_bin(venv, "python")
}

/// A program inside a peer venv.
pub fn peer_bin(venv: &str, program: &str) -> Option<PathBuf> {
    let p = peers_dir().join(venv).join("bin").join(program);
    if p.exists() {
        return Some(p);
    }
    if peers_required() {
        panic!(
            "peer {venv}/{program} is missing at {}: run scripts/test to install it",
            p.display()
        );
    }
    eprintln!("SKIP: peer {venv}/{program} not installed (scripts/test installs it)");
    None
}

/// A Debian program such as `idevicebackup2`, or None (after saying so) when absent and not required.
pub fn system_bin(program: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return Some(p);
        }
    }
    if peers_required() {
        panic!("{program} is missing: run scripts/test to install it");
    }
    eprintln!("SKIP: {program} not installed (scripts/test installs it)");
    None
}

/// What a plaintext tree holds: relative path → entry.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum TreeEntry {
    Dir,
    File { sha256: String, size: u64 },
    Link { target: String },
}

/// Walks `dir` (not following symlinks) into a map of relative paths.
pub fn read_tree(dir: &Path) -> BTreeMap<String, TreeEntry> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(
                    rel,
                    TreeEntry::Link {
                        target: t.to_string_lossy().into_owned(),
                    },
                );
            } else if md.is_dir() {
                out.insert(rel, TreeEntry::Dir);
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
                out.insert(
                    rel,
                    TreeEntry::File {
                        sha256,
                        size: bytes.len() as u64,
                    },
                );
            }
        }
    }
    out
}

/// The exported files a phone's backup of a day determines: not the host's Info.plist (with its
/// clock), nor Status.plist, which says whether the backup was full (a second backup of the same
/// day, after a kill just after the commit, is incremental).
pub fn phone_files(t: &BTreeMap<String, TreeEntry>) -> BTreeMap<String, TreeEntry> {
    t.iter()
        .filter(|(p, e)| {
            matches!(e, TreeEntry::File { .. })
                && !p.ends_with("/Info.plist")
                && !p.ends_with("/Status.plist")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Asserts two trees are equal, listing the first differences readably.
pub fn assert_trees_equal(
    expected: &BTreeMap<String, TreeEntry>,
    actual: &BTreeMap<String, TreeEntry>,
    what: &str,
) {
    let mut problems = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => problems.push(format!("missing: {k}")),
            Some(a) if a != v => problems.push(format!("differs: {k}: expected {v:?}, got {a:?}")),
            _ => {}
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            problems.push(format!("unexpected: {k}"));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(20);
        panic!(
            "{what}: {n} differences, first ones:\n  {}",
            problems.join("\n  ")
        );
    }
}

/// Copies the folder `src` (files and folders) to `dst`.
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A password file in `dir` holding `pw`.
/// Bytes of every file under `p`.
pub fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

pub fn password_file(dir: &Path, pw: &str) -> PathBuf {
    let p = dir.join("password");
    std::fs::write(&p, format!("{pw}\n")).unwrap();
    p
}

/// What a run of a command produced.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion with stdin closed, killing it (and failing the test) after `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let started = std::time::Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut o = String::new();
        let mut e = String::new();
        let t = std::thread::spawn(move || {
            let _ = err.read_to_string(&mut e);
            e
        });
        let _ = out.read_to_string(&mut o);
        let e = t.join().unwrap_or_default();
        let _ = tx.send((o, e));
    });
    match rx.recv_timeout(limit) {
        Ok((stdout, stderr)) => {
            let status = child.wait().unwrap();
            eprintln!(
                "[{:.1} s, {status}] {shown}",
                started.elapsed().as_secs_f64()
            );
            Output {
                success: status.success(),
                code: status.code(),
                stdout,
                stderr,
            }
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {limit:?}");
        }
    }
}

/// What a later day's backup must send and remove, per the synthetic phone: files whose bytes
/// changed or that are new, and data files that disappeared.
pub fn expected_changes(
    day1: &cradle::sim::phone::Phone,
    day2: &cradle::sim::phone::Phone,
) -> (u64, u64) {
    let diff = day2.diff(day1);
    let changed = diff.changed_files().count() as u64;
    let removed = diff.removed.iter().filter(|e| e.is_file()).count()
        + diff
            .modified
            .iter()
            .filter(|(o, n)| o.is_file() && !n.is_file())
            .count();
    (changed, removed as u64)
}

/// How long one real-client run may take (pymobiledevice3 start-up alone is 1–2 s).
pub const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Reports a missing peer: a failure when peers are required (CI), a printed skip elsewhere.
/// Returns `None` so callers can `else { return }`.
pub fn missing(what: &str) -> Option<PathBuf> {
    if peers_required() {
        panic!("required peer missing: {what}");
    }
    println!("SKIP: {what} is not installed");
    None
}

/// A program on $PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// pymobiledevice3 from its peer venv, or None after reporting it missing.
pub fn pmd3() -> Option<PathBuf> {
    let bin = peers_dir().join("pmd3/bin/pymobiledevice3");
    if bin.is_file() {
        Some(bin)
    } else {
        missing(&bin.display().to_string())
    }
}

/// Runs a real client to completion within [`CLIENT_TIMEOUT`]: (success, stdout, stderr).
pub fn run_client(cmd: Command) -> (bool, String, String) {
    let o = run_with_timeout(cmd, CLIENT_TIMEOUT);
    (o.success, o.stdout, o.stderr)
}
