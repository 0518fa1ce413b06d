//! Maintenance commands end to end, as processes, on repositories filled by
//! `cradle backup --sim … --to-repo`: `check` (clean, a flipped byte, a deleted pack, a wrong
//! password), `prune` with pins, `stats` figures, `password change`, and the index deleted,
//! damaged and rebuilt.

mod common;

use common::repo::{snapshot_line, Repo, LIMIT};
use common::{run_cradle, s, Output};
use std::path::{Path, PathBuf};

const PASSWORD: &str = "ops e2e password";

fn cradle(args: &[&str]) -> Output {
    run_cradle(args, LIMIT)
}

impl Repo {
    /// The phone `tiny:SEED:DAY` backed up (each phone its own state): the new snapshot's id.
    fn backup(&self, seed: u64, day: u32) -> String {
        let spec = format!("tiny:{seed}:{day}");
        let o = self.sim_backup(&spec, "1000", &self.state.join(seed.to_string()));
        snapshot_line(&o).split(' ').nth(1).unwrap().to_string()
    }

    fn snapshot_ids(&self) -> Vec<String> {
        let v = self.json(&["snapshots", "--json"]);
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    fn packs(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(self.path.join("packs")).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                let f = f.unwrap();
                out.push((f.path(), f.metadata().unwrap().len()));
            }
        }
        out.sort_by_key(|(_, l)| std::cmp::Reverse(*l));
        out
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn check_clean_flipped_byte_deleted_pack_and_could_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), PASSWORD);
    let ids = sorted((1..=3).map(|d| repo.backup(7, d)).collect());
    assert_eq!(repo.snapshot_ids(), ids);

    let o = repo.run(&["check", "--read-data"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("no errors found"), "{o:?}");
    let v = repo.json(&["check", "--read-data-subset", "50%", "--json"]);
    assert_eq!(v["ok"], true);
    assert!(v["packs_read"].as_u64().unwrap() >= 1);

    // A flipped byte inside the first blob of the biggest (data) pack.
    let (pack, _) = repo.packs()[0].clone();
    let saved = std::fs::read(&pack).unwrap();
    let mut bad = saved.clone();
    bad[8 + 24 + 10] ^= 0x40;
    std::fs::write(&pack, &bad).unwrap();
    let o = repo.run(&["check"]);
    assert_eq!(o.code, Some(0), "structure is intact: {o:?}");
    let o = repo.run(&["check", "--read-data", "--json"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim()).unwrap();
    assert_eq!(v["ok"], false);
    let damaged = v["damaged"].as_array().unwrap();
    assert!(!damaged.is_empty());
    for d in damaged {
        assert!(ids.contains(&d["id"].as_str().unwrap().to_string()));
        assert!(d["udid"].as_str().unwrap().starts_with("00008"), "{d}");
        assert!(d["phone_date_ms"].as_i64().is_some());
        let files = d["files"].as_array().unwrap();
        assert!(!files.is_empty(), "{d}");
        for f in files {
            let p = f["path"].as_str().unwrap();
            assert!(p.contains("Domain"), "domain/relativePath: {p}");
        }
    }
    let o = repo.run(&["check", "--read-data"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stdout.contains("damaged snapshot "), "{o:?}");
    assert!(o.stdout.contains("  file "), "{o:?}");
    // Undamaged parts still read: listings work, and files of another domain extract.
    let ls = repo.run(&["ls", "latest"]);
    assert!(ls.success, "{ls:?}");
    let latest = repo
        .json(&["snapshots", "--json"])
        .as_array()
        .unwrap()
        .last()
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bad_domains: std::collections::BTreeSet<String> = damaged
        .iter()
        .filter(|d| d["id"].as_str() == Some(latest.as_str()))
        .flat_map(|d| d["files"].as_array().unwrap().clone())
        .map(|f| {
            f["path"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        !bad_domains.is_empty(),
        "the latest snapshot shares the damaged file"
    );
    let good = ls
        .stdout
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(|p| p.split('/').next().unwrap().to_string())
        .find(|d| !bad_domains.contains(d))
        .expect("a domain without damage");
    let out = tmp.path().join("extract-good");
    let o = repo.run(&["extract", "latest", "--domain", &good, "--out", s(&out)]);
    assert!(o.success, "{o:?}");
    assert!(o.stderr.contains("is damaged"), "{o:?}");
    assert!(out.join(&good).is_dir());
    let bad = bad_domains.iter().next().unwrap();
    let out = tmp.path().join("extract-bad");
    let o = repo.run(&["extract", "latest", "--domain", bad, "--out", s(&out)]);
    assert!(!o.success, "a damaged file does not extract: {o:?}");
    std::fs::write(&pack, &saved).unwrap();

    // A deleted pack is found without reading data.
    std::fs::remove_file(&pack).unwrap();
    let o = repo.run(&["check"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stdout.contains("is in no pack"), "{o:?}");
    std::fs::write(&pack, &saved).unwrap();
    assert_eq!(repo.run(&["check"]).code, Some(0));

    // Could not run: wrong password, no repository.
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not it\n").unwrap();
    let o = repo.run_pw(&["check"], &wrong);
    assert_eq!(o.code, Some(2), "{o:?}");
    assert!(o.stderr.contains("wrong password"), "{o:?}");
    let o = cradle(&[
        "check",
        "--repo",
        s(&tmp.path().join("nothing")),
        "--password-file",
        s(&repo.pw),
    ]);
    assert_eq!(o.code, Some(2), "{o:?}");
}

#[test]
fn prune_with_pins_then_export_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), PASSWORD);
    let days: Vec<String> = (1..=4).map(|d| repo.backup(11, d)).collect();
    let before: u64 = repo.packs().iter().map(|(_, l)| l).sum();
    let o = repo.run(&["pin", &days[0][..10], "--note", "first day"]);
    assert!(o.success, "{o:?}");
    let o = repo.run(&["pins"]);
    assert!(o.stdout.contains("first day"), "{o:?}");

    let o = repo.run(&["prune", "--keep-last", "1", "--dry-run"]);
    assert!(o.success, "{o:?}");
    assert!(o.stdout.contains("would remove 2 snapshots"), "{o:?}");
    assert_eq!(repo.snapshot_ids().len(), 4);

    let v = repo.json(&["prune", "--keep-last", "1", "--json"]);
    let forgotten: Vec<String> = v["forgotten"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sorted(forgotten),
        sorted(vec![days[1].clone(), days[2].clone()])
    );
    assert_eq!(
        repo.snapshot_ids(),
        sorted(vec![days[0].clone(), days[3].clone()])
    );
    let after: u64 = repo.packs().iter().map(|(_, l)| l).sum();
    assert!(after < before, "{before} -> {after}");
    for id in [&days[0], &days[3]] {
        let out = tmp.path().join(format!("export-{}", &id[..8]));
        let o = repo.run(&["export", &id[..12], "--out", s(&out)]);
        assert!(o.success, "{o:?}");
    }
    let o = repo.run(&["check", "--read-data"]);
    assert_eq!(o.code, Some(0), "{o:?}");

    let o = repo.run(&["unpin", &days[0][..10]]);
    assert!(o.success, "{o:?}");
    let v = repo.json(&["prune", "--keep-last", "1", "--json"]);
    assert_eq!(v["forgotten"][0].as_str().unwrap(), days[0]);
    assert_eq!(repo.snapshot_ids(), vec![days[3].clone()]);
    assert_eq!(repo.run(&["check", "--read-data"]).code, Some(0));
}

#[test]
fn stats_figures_match_the_snapshots_and_the_drive() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), PASSWORD);
    for d in 1..=3 {
        repo.backup(5, d);
    }
    let snaps = repo.json(&["snapshots", "--json"]);
    let snaps = snaps.as_array().unwrap();
    let total: u64 = snaps
        .iter()
        .map(|x| x["content_bytes"].as_u64().unwrap())
        .sum();
    let latest = snaps
        .iter()
        .max_by_key(|x| x["phone_date_ms"].as_i64().unwrap())
        .unwrap();
    let st = repo.json(&["stats", "--json"]);
    let pack_bytes: u64 = repo.packs().iter().map(|(_, l)| l).sum();
    assert_eq!(st["pack_bytes"].as_u64().unwrap(), pack_bytes);
    assert_eq!(st["snapshots"].as_u64().unwrap(), 3);
    let d = &st["devices"][0];
    assert_eq!(d["snapshots"].as_u64().unwrap(), 3);
    assert_eq!(d["latest"], latest["id"]);
    assert_eq!(
        d["latest_logical_bytes"].as_u64().unwrap(),
        latest["content_bytes"].as_u64().unwrap()
    );
    assert_eq!(d["total_logical_bytes"].as_u64().unwrap(), total);
    let ratio = st["dedup_ratio"].as_f64().unwrap();
    assert!((ratio - total as f64 / pack_bytes as f64).abs() < 1e-9);
    assert!(ratio > 2.0, "three similar days deduplicate: {ratio}");
    let o = repo.run(&["stats"]);
    assert!(o.success && o.stdout.contains("dedup"), "{o:?}");
}

#[test]
fn password_change_and_index_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path(), PASSWORD);
    let ids = sorted((1..=2).map(|d| repo.backup(3, d)).collect());
    let listing = repo.run(&["snapshots"]).stdout;
    let ls = repo.run(&["ls", "latest"]).stdout;
    assert!(ls.lines().count() > 10);

    // The index deleted, then damaged: the same answers; then rebuilt on request.
    std::fs::remove_dir_all(repo.path.join("index")).unwrap();
    assert_eq!(repo.run(&["snapshots"]).stdout, listing);
    assert_eq!(repo.run(&["ls", "latest"]).stdout, ls);
    for e in walk(&repo.path.join("index/db")) {
        std::fs::write(&e, vec![0xa5u8; 1000]).unwrap();
    }
    assert_eq!(repo.run(&["snapshots"]).stdout, listing);
    assert_eq!(repo.run(&["ls", "latest"]).stdout, ls);
    let o = repo.run(&["index", "rebuild"]);
    assert!(o.success && o.stdout.contains("index rebuilt"), "{o:?}");
    assert_eq!(repo.run(&["ls", "latest"]).stdout, ls);

    // Password change: the old one is refused, the new one opens everything.
    let new = tmp.path().join("new-password");
    std::fs::write(&new, "a new password\n").unwrap();
    let o = repo.run(&["password", "change", "--new-password-file", s(&new)]);
    assert!(o.success, "{o:?}");
    let o = repo.run(&["snapshots"]);
    assert_eq!(o.code, Some(2), "old password refused: {o:?}");
    assert!(o.stderr.contains("wrong password"));
    let o = repo.run_pw(&["snapshots"], &new);
    assert_eq!(o.stdout, listing);
    for id in &ids {
        let out = tmp.path().join(format!("x-{}", &id[..8]));
        let o = repo.run_pw(&["export", &id[..12], "--out", s(&out)], &new);
        assert!(o.success, "{o:?}");
    }
    let o = repo.run_pw(&["password", "list"], &new);
    assert_eq!(o.stdout.lines().count(), 1, "{o:?}");
    assert!(o.stdout.contains("(opened with this one)"));
    let o = repo.run_pw(&["check", "--read-data"], &new);
    assert_eq!(o.code, Some(0), "{o:?}");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}
