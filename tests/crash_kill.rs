//! Crash safety of the real `cradle` binary: `backup --to-repo` (the phone's upload, then the
//! ingest into a snapshot) is killed at seeded pseudo-random points, either by SIGKILL after a
//! random time or by the debug-build hook `CRADLE_TEST_KILL_AFTER_FSYNCS=N` (the process aborts
//! right after its Nth fsync on the drive: see `store::storage::KILL_AFTER_FSYNCS_ENV`).
//!
//! After every kill: `cradle check` finds nothing wrong, every snapshot committed before the kill
//! is still listed and exports byte-identical to its first export, a snapshot the killed run
//! managed to commit exports exactly the phone's backup of that day, and the next run completes.
//! The guarded failure is the one every backup tool fears: a crash during a write that leaves
//! an older snapshot unreadable, or leaves debris that blocks the next backup.
//!
//! `prune --keep-last 1` and `index rebuild` are killed the same way: afterwards the newest
//! snapshot is there, nothing appeared, whatever remains checks clean and exports as before, and
//! the prune run again completes.
//!
//! `CRADLE_CRASH_SEED=N` replays a schedule (time-based kills land near, not exactly on, the
//! same points).

mod common;

use common::repo::{init_args, sim_backup_args};
use common::rng::{crash_seed, Rng};
use common::{copy_tree, phone_files, read_tree, s, Output, TreeEntry};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PROFILE: &str = "tiny";
const PHONE_SEED: u64 = 7;
const DPIC: &str = "1000";
const LIMIT: Duration = Duration::from_secs(180);
const PASSWORD: &str = "crash kill password";
/// Default schedule seed (override with CRADLE_CRASH_SEED).
const DEFAULT_SEED: u64 = 0x5eed_c4a5;
/// Independent repositories, run two at a time.
const LANES: u64 = 8;
/// Kills each lane must land.
const KILLS_PER_LANE: usize = 4;
/// Upper ends of the fsync counts a kill is drawn from, per day (a complete run of the tiny
/// phone does about 190, 70 and 80; a draw past the end is a run that completes).
const FSYNCS: [u64; 3] = [200, 80, 90];

type Tree = BTreeMap<String, TreeEntry>;

#[derive(Debug, Clone, Copy)]
enum Kill {
    /// SIGKILL this long after spawn.
    AfterMs(u64),
    /// Abort right after the Nth fsync (debug-build hook).
    AfterFsyncs(u64),
}

enum Outcome {
    Exited(Output),
    Killed,
}

/// The phone's backup of each day (files as exported, without the host's Info.plist), the
/// paired state folder, and how long a clean run of each day took.
struct Reference {
    days: Vec<Tree>,
    state: PathBuf,
    millis: Vec<u64>,
}

fn backup_args(repo: &Path, state: &Path, pw: &Path, day: u32) -> Vec<String> {
    let spec = format!("{PROFILE}:{PHONE_SEED}:{day}");
    sim_backup_args(&spec, DPIC, repo, state, pw)
        .into_iter()
        .map(String::from)
        .collect()
}

fn init_repo(dir: &Path, pw: &Path) -> PathBuf {
    let repo = dir.join("Cradle");
    let o = common::run_cradle(&init_args(&repo, pw), LIMIT);
    assert!(o.success, "init: {o:?}");
    repo
}

fn repo_cmd(repo: &Path, pw: &Path, args: &[&str]) -> Output {
    let mut a = args.to_vec();
    a.extend_from_slice(&["--repo", s(repo), "--password-file", s(pw)]);
    common::run_cradle(&a, LIMIT)
}

fn snapshot_ids(repo: &Path, pw: &Path) -> Vec<String> {
    let o = repo_cmd(repo, pw, &["snapshots", "--json"]);
    assert!(o.success, "snapshots: {o:?}");
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

/// Exports `id` into a scratch folder and reads it back (the folder is removed).
fn export_tree(repo: &Path, pw: &Path, id: &str, scratch: &Path) -> Tree {
    let out = scratch.join(format!("export-{}", &id[..12]));
    let o = repo_cmd(repo, pw, &["export", id, "--out", s(&out)]);
    assert!(o.success, "export {id}: {o:?}");
    let t = read_tree(&out);
    std::fs::remove_dir_all(&out).unwrap();
    t
}

/// The first few differences between two trees, on one line.
fn differences(want: &Tree, got: &Tree) -> String {
    let mut d = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => d.push(format!("missing {k}")),
            Some(g) if g != v => d.push(format!("differs {k}")),
            _ => {}
        }
    }
    d.extend(
        got.keys()
            .filter(|k| !want.contains_key(*k))
            .map(|k| format!("unexpected {k}")),
    );
    let n = d.len();
    d.truncate(8);
    format!("{n} differences: {}", d.join(", "))
}

/// Runs `cradle ARGS` in `dir`, killed as `kill` says; output goes to files in `dir`.
fn run_killed(dir: &Path, n: usize, args: &[String], kill: Option<Kill>) -> Outcome {
    let out_path = dir.join(format!("run-{n}.out"));
    let err_path = dir.join(format!("run-{n}.err"));
    let mut c = common::cradle();
    c.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    if let Some(Kill::AfterFsyncs(k)) = kill {
        c.env(cradle::store::storage::KILL_AFTER_FSYNCS_ENV, k.to_string());
    }
    let started = Instant::now();
    let mut child = c.spawn().expect("spawn cradle");
    let deadline = match kill {
        Some(Kill::AfterMs(ms)) => Duration::from_millis(ms),
        _ => LIMIT,
    };
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if started.elapsed() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let status = match status {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let st = child.wait().unwrap();
            if !matches!(kill, Some(Kill::AfterMs(_))) {
                panic!("{args:?} did not finish within {LIMIT:?}");
            }
            st
        }
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    match status.signal() {
        // SIGKILL from us, SIGABRT from the fsync hook.
        Some(9) | Some(6) => Outcome::Killed,
        _ => Outcome::Exited(Output {
            success: status.success(),
            code: status.code(),
            stdout: read(&out_path),
            stderr: read(&err_path),
        }),
    }
}

fn reference(dir: &Path, pw: &Path) -> Reference {
    let repo = init_repo(dir, pw);
    let state = dir.join("state");
    let mut days = Vec::new();
    let mut millis = Vec::new();
    let mut seen = Vec::new();
    for day in 1..=3u32 {
        let t = Instant::now();
        let args = backup_args(&repo, &state, pw, day);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = common::run_cradle(&a, LIMIT);
        assert!(o.success, "reference backup day {day}: {o:?}");
        millis.push(t.elapsed().as_millis() as u64);
        let ids = snapshot_ids(&repo, pw);
        let new: Vec<&String> = ids.iter().filter(|i| !seen.contains(*i)).collect();
        assert_eq!(new.len(), 1, "{ids:?}");
        days.push(phone_files(&export_tree(&repo, pw, new[0], dir)));
        seen = ids;
    }
    Reference {
        days,
        state,
        millis,
    }
}

/// One repository taking kills.
struct Lane<'a> {
    name: String,
    dir: PathBuf,
    repo: PathBuf,
    pw: PathBuf,
    state: PathBuf,
    rng: Rng,
    reference: &'a Reference,
    /// Every committed snapshot and its first export.
    known: BTreeMap<String, Tree>,
    runs: usize,
    kills: usize,
    log: Vec<String>,
}

impl<'a> Lane<'a> {
    fn new(root: &Path, lane: u64, seed: u64, reference: &'a Reference) -> Self {
        let dir = root.join(format!("lane-{lane}"));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = common::password_file(&dir, PASSWORD);
        let repo = init_repo(&dir, &pw);
        // Already paired, with backup encryption on: the kills land in the store's work, not
        // in pairing.
        let state = dir.join("state");
        copy_tree(&reference.state, &state);
        Lane {
            name: format!("lane {lane}"),
            dir,
            repo,
            pw,
            state,
            rng: Rng(seed ^ lane.wrapping_mul(0x1234_5678_9abc_def1)),
            reference,
            known: BTreeMap::new(),
            runs: 0,
            kills: 0,
            log: Vec::new(),
        }
    }

    fn fail(&self, what: String) -> ! {
        if std::env::var_os("CRADLE_CRASH_KEEP").is_some() {
            // The lane's folder outlives the test for a look at the repository.
            let keep = self.dir.with_extension("kept");
            let _ = std::fs::rename(&self.dir, &keep);
            let _ = std::fs::rename(
                &keep,
                std::env::temp_dir().join(format!("crash-{}", self.name.replace(' ', "-"))),
            );
        }
        panic!(
            "{}: {what}\nschedule so far:\n  {}",
            self.name,
            self.log.join("\n  ")
        );
    }

    /// New snapshots (not yet known) must each export exactly the phone's backup of `day`.
    fn adopt_new(&mut self, day: u32) -> usize {
        let ids = snapshot_ids(&self.repo, &self.pw);
        for id in self.known.keys() {
            if !ids.contains(id) {
                self.fail(format!("snapshot {id} vanished"));
            }
        }
        let mut n = 0;
        for id in ids {
            if self.known.contains_key(&id) {
                continue;
            }
            let t = export_tree(&self.repo, &self.pw, &id, &self.dir);
            let want = &self.reference.days[day as usize - 1];
            if phone_files(&t) != *want {
                self.fail(format!(
                    "new snapshot {id} does not export the phone's day {day}: {}",
                    differences(want, &phone_files(&t))
                ));
            }
            self.known.insert(id, t);
            n += 1;
        }
        n
    }

    /// After a kill: the repository checks clean, every committed snapshot exports as before.
    fn verify(&mut self, day: u32) {
        if let Some(o) = check(&self.repo, &self.pw) {
            if o.code != Some(0) {
                self.fail(format!("cradle check after the kill: {o:?}"));
            }
        }
        self.adopt_new(day);
        let known: Vec<(String, Tree)> = self
            .known
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, before) in known {
            let now = export_tree(&self.repo, &self.pw, &id, &self.dir);
            if now != before {
                self.fail(format!(
                    "snapshot {id} exports differently after the kill: {}",
                    differences(&before, &now)
                ));
            }
        }
    }

    fn draw_kill(&mut self, day: u32) -> Kill {
        if self.rng.chance(50) {
            Kill::AfterFsyncs(self.rng.range(1, FSYNCS[day as usize - 1]))
        } else {
            let t = self.reference.millis[day as usize - 1];
            Kill::AfterMs(self.rng.range(20, t.max(40)))
        }
    }

    /// One round on `day`: one or two kills (each followed by the checks), then a run that
    /// must complete. A kill drawn past the end of the run is a completed run instead.
    fn round(&mut self, day: u32) {
        let args = backup_args(&self.repo, &self.state, &self.pw, day);
        let attempts = if self.rng.chance(35) { 2 } else { 1 };
        for _ in 0..attempts {
            let kill = self.draw_kill(day);
            self.runs += 1;
            match run_killed(&self.dir, self.runs, &args, Some(kill)) {
                Outcome::Killed => {
                    self.kills += 1;
                    self.log.push(format!("day {day}: killed {kill:?}"));
                    self.verify(day);
                }
                Outcome::Exited(o) => {
                    self.log
                        .push(format!("day {day}: completed before {kill:?}"));
                    if !o.success {
                        self.fail(format!("backup day {day} failed: {o:?}"));
                    }
                    if self.adopt_new(day) == 0 {
                        self.fail(format!("backup day {day} made no snapshot: {o:?}"));
                    }
                    return;
                }
            }
        }
        self.runs += 1;
        match run_killed(&self.dir, self.runs, &args, None) {
            Outcome::Exited(o) if o.success => {
                self.log.push(format!("day {day}: next run completed"));
                if self.adopt_new(day) == 0 {
                    self.fail(format!("backup day {day} made no snapshot: {o:?}"));
                }
            }
            Outcome::Exited(o) => self.fail(format!("the run after the kill failed: {o:?}")),
            Outcome::Killed => self.fail("the run after the kill died".into()),
        }
    }
}

/// `cradle check` on the repository, when this build has it (`None` before it exists).
fn check(repo: &Path, pw: &Path) -> Option<Output> {
    static HAS_CHECK: Mutex<Option<bool>> = Mutex::new(None);
    let mut has = HAS_CHECK.lock().unwrap_or_else(|p| p.into_inner());
    if has.is_none() {
        let o = common::run_cradle(&["help", "check"], LIMIT);
        *has = Some(o.success);
    }
    if *has != Some(true) {
        return None;
    }
    drop(has);
    Some(repo_cmd(repo, pw, &["check"]))
}

#[test]
fn backups_killed_at_random_points_lose_nothing_and_the_next_run_completes() {
    let seed = crash_seed(DEFAULT_SEED);
    eprintln!("crash_kill: schedule seed {seed} (rerun with CRADLE_CRASH_SEED={seed})");
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    if std::env::var_os("CRADLE_CRASH_KEEP").is_some() {
        eprintln!("crash_kill: keeping {}", tmp.path().display());
    }
    let pw = common::password_file(tmp.path(), PASSWORD);
    let reference = reference(&tmp.path().join("reference"), &pw);
    let next_lane = AtomicUsize::new(0);
    let totals = Mutex::new((0usize, 0usize, Vec::new()));
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| loop {
                let lane = next_lane.fetch_add(1, Ordering::SeqCst) as u64;
                if lane >= LANES {
                    return;
                }
                let mut l = Lane::new(tmp.path(), lane, seed, &reference);
                // Day 1 into the empty repository, then days 2 and 3 in turn until the lane
                // has its kills.
                let mut day = 1;
                while l.kills < KILLS_PER_LANE {
                    l.round(day);
                    day = if day == 3 { 2 } else { day + 1 };
                }
                let mut t = totals.lock().unwrap();
                t.0 += l.kills;
                t.1 += l.runs;
                t.2.push(format!("{}: {}", l.name, l.log.join("; ")));
                std::fs::remove_dir_all(&l.dir).unwrap();
            });
        }
    });
    let (kills, runs, logs) = totals.into_inner().unwrap();
    for l in &logs {
        eprintln!("{l}");
    }
    eprintln!(
        "crash_kill: {kills} kills in {runs} runs over {LANES} repositories, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 30, "only {kills} kills landed");
    if std::env::var_os("CRADLE_CRASH_KEEP").is_some() {
        let _ = tmp.keep();
    }
}

/// Prune kills and index-rebuild kills each lane must land (they add to the backups' above).
const MAINTENANCE_KILLS_EACH: usize = 3;
const MAINTENANCE_LANES: u64 = 2;
/// Rounds a lane may take to land them before the schedule counts as broken.
const MAINTENANCE_ROUNDS_MAX: u32 = 25;

impl Lane<'_> {
    /// Records every snapshot not yet known with its first export (no reference to compare with:
    /// days past the reference's are only checked for staying the same from now on).
    fn adopt_any(&mut self) {
        for id in snapshot_ids(&self.repo, &self.pw) {
            if !self.known.contains_key(&id) {
                let t = export_tree(&self.repo, &self.pw, &id, &self.dir);
                self.known.insert(id, t);
            }
        }
    }

    /// After a prune (`--keep-last 1`) ran or was killed: `newest` is still there, nothing new
    /// appeared, and whatever remains checks clean and exports exactly as before.
    fn verify_prune(&mut self, newest: &str) {
        let ids = snapshot_ids(&self.repo, &self.pw);
        if !ids.iter().any(|i| i == newest) {
            self.fail(format!("prune lost the newest snapshot {newest}"));
        }
        if let Some(id) = ids.iter().find(|i| !self.known.contains_key(*i)) {
            self.fail(format!("snapshot {id} appeared during a prune"));
        }
        self.known.retain(|k, _| ids.contains(k));
        self.verify(1);
    }

    /// Runs `args`, killed at a random point; a run that finishes first must succeed.
    fn maintenance_round(
        &mut self,
        what: &str,
        args: &[String],
        clean_ms: u64,
        fsyncs: u64,
    ) -> bool {
        let kill = if self.rng.chance(50) {
            Kill::AfterFsyncs(self.rng.range(1, fsyncs))
        } else {
            Kill::AfterMs(self.rng.range(5, clean_ms.max(10)))
        };
        self.runs += 1;
        match run_killed(&self.dir, self.runs, args, Some(kill)) {
            Outcome::Killed => {
                self.kills += 1;
                self.log.push(format!("{what}: killed {kill:?}"));
                true
            }
            Outcome::Exited(o) => {
                self.log.push(format!("{what}: completed before {kill:?}"));
                if !o.success {
                    self.fail(format!("{what} failed: {o:?}"));
                }
                false
            }
        }
    }

    /// A run of `args` that must complete; returns how long it took.
    fn complete(&mut self, what: &str, args: &[String]) -> u64 {
        self.runs += 1;
        let t = Instant::now();
        match run_killed(&self.dir, self.runs, args, None) {
            Outcome::Exited(o) if o.success => t.elapsed().as_millis() as u64,
            Outcome::Exited(o) => self.fail(format!("{what} after the kill failed: {o:?}")),
            Outcome::Killed => self.fail(format!("{what} died")),
        }
    }
}

#[test]
fn prune_and_index_rebuild_killed_at_random_points_keep_every_kept_snapshot() {
    let seed = crash_seed(DEFAULT_SEED) ^ 0x9e37_79b9;
    eprintln!("crash_kill maintenance: schedule seed {seed}");
    let tmp = tempfile::tempdir().unwrap();
    let pw = common::password_file(tmp.path(), PASSWORD);
    let reference = reference(&tmp.path().join("reference"), &pw);
    let mut kills = 0;
    for lane in 0..MAINTENANCE_LANES {
        let mut l = Lane::new(tmp.path(), 100 + lane, seed, &reference);
        let with_repo = |args: &[&str], l: &Lane| -> Vec<String> {
            let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            a.extend(["--repo", s(&l.repo), "--password-file", s(&l.pw)].map(String::from));
            a
        };
        let prune = with_repo(&["prune", "--keep-last", "1"], &l);
        let rebuild = with_repo(&["index", "rebuild"], &l);
        // A first snapshot, then per round: one more backup (a later phone day), a killed prune
        // that may only remove the older one, and a killed index rebuild.
        l.complete("backup day 1", &backup_args(&l.repo, &l.state, &l.pw, 1));
        l.adopt_any();
        let (mut prune_kills, mut rebuild_kills, mut prune_ms) = (0, 0, 150);
        let mut day = 2;
        while prune_kills < MAINTENANCE_KILLS_EACH || rebuild_kills < MAINTENANCE_KILLS_EACH {
            if day > MAINTENANCE_ROUNDS_MAX {
                l.fail(format!(
                    "{prune_kills} prune and {rebuild_kills} rebuild kills in {day} rounds"
                ));
            }
            l.complete(
                &format!("backup day {day}"),
                &backup_args(&l.repo, &l.state, &l.pw, day),
            );
            let before: Vec<String> = l.known.keys().cloned().collect();
            l.adopt_any();
            let newest = l
                .known
                .keys()
                .find(|k| !before.contains(k))
                .cloned()
                .unwrap_or_else(|| l.fail(format!("backup day {day} made no snapshot")));
            if l.maintenance_round("prune", &prune, prune_ms, 12) {
                prune_kills += 1;
                l.verify_prune(&newest);
            }
            prune_ms = l.complete("prune", &prune);
            l.verify_prune(&newest);
            if l.known.len() != 1 {
                l.fail(format!(
                    "prune --keep-last 1 left {} snapshots",
                    l.known.len()
                ));
            }
            let clean = l.complete("index rebuild", &rebuild);
            if l.maintenance_round("index rebuild", &rebuild, clean, 6) {
                rebuild_kills += 1;
                l.verify(1);
            }
            day += 1;
        }
        eprintln!("{}: {}", l.name, l.log.join("; "));
        kills += l.kills;
    }
    assert!(
        kills >= 2 * MAINTENANCE_KILLS_EACH * MAINTENANCE_LANES as usize,
        "only {kills} kills landed"
    );
}
