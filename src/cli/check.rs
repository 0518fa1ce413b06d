//! `cradle check`: verify a repository from the drive (structure, optionally every blob) and say
//! which snapshots and files any damage costs. Exit 0 clean, 1 problems, 2 could not run.

use clap::Args;
use cradle::store::check::{check, CheckOptions, CheckPhase, CheckReport, ReadData, Severity};
use cradle::store::lock::{LockPurpose, SystemLockEnv};
use std::process::ExitCode;

use super::opsutil::{date, human, Progress};
use super::repo::{open_repo, RepoArgs};

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Also read every blob: decrypt, decompress and recompute its ChunkId.
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Read the blobs of N% of the packs (e.g. 10%), chosen by --subset-seed.
    #[arg(long, value_name = "N%")]
    read_data_subset: Option<String>,
    /// Which packs a subset reads: the same seed picks the same packs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    subset_seed: u64,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_percent(s: &str) -> anyhow::Result<u8> {
    let n: u8 = s.trim().trim_end_matches('%').parse().map_err(|_| {
        anyhow::anyhow!("--read-data-subset {s:?}: expected a percentage, e.g. 10%")
    })?;
    anyhow::ensure!(
        (1..=100).contains(&n),
        "--read-data-subset {s:?}: between 1% and 100%"
    );
    Ok(n)
}

fn sev(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

pub fn run(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let read_data = match (&a.read_data_subset, a.read_data) {
        (Some(p), _) => ReadData::Subset {
            percent: parse_percent(p)?,
            seed: a.subset_seed,
        },
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    let (mut repo, _) = open_repo(&a.repo)?;
    let reader = repo.lock_reader(&SystemLockEnv);
    if let Err(e) = &reader {
        eprintln!("warning: could not take a reader lock ({e}); checking anyway");
    }
    let mut p = Progress::new();
    let mut report = check(&repo, &CheckOptions { read_data }, &mut |pr| {
        let what = match pr.phase {
            CheckPhase::Keys => "key files",
            CheckPhase::Packs => "pack headers",
            CheckPhase::ReadData => "reading packs",
            CheckPhase::Snapshots => "snapshots",
            CheckPhase::Index => "index",
        };
        p.show(what, pr.done, pr.total);
    })?;
    p.done();
    if let Ok(g) = reader {
        let _ = g.release();
    }
    if !report.index_consistent {
        // The index is a cache: repair it now rather than only report it.
        match repo.lock_writer(LockPurpose::Index, &SystemLockEnv) {
            Ok(g) => {
                repo.rebuild_index()?;
                g.release()?;
                report.findings.push(cradle::store::check::Finding {
                    severity: Severity::Info,
                    message: "the index was rebuilt from the pack headers".into(),
                });
            }
            Err(e) => report.findings.push(cradle::store::check::Finding {
                severity: Severity::Warning,
                message: format!("the index could not be rebuilt now: {e}"),
            }),
        }
    }
    if a.json {
        println!("{}", to_json(&report));
    } else {
        print_text(&report);
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_text(r: &CheckReport) {
    println!(
        "checked {} snapshots ({} file entries), {} packs, {} chunks referenced",
        r.snapshots, r.files, r.packs, r.chunks_referenced
    );
    if r.packs_read > 0 {
        println!(
            "read {} packs: {} blobs, {}",
            r.packs_read,
            r.blobs_read,
            human(r.bytes_read)
        );
    }
    for f in &r.findings {
        println!("{}: {}", sev(f.severity), f.message);
    }
    for d in &r.damaged {
        let when = d
            .phone_date
            .map(date)
            .unwrap_or_else(|| "date unknown".into());
        let who = if d.udid.is_empty() {
            "device unknown".to_string()
        } else {
            format!("{} \"{}\"", d.udid, d.device_name)
        };
        println!("damaged snapshot {}  {who}  {when}", d.id);
        if let Some(u) = &d.unreadable {
            println!("  unreadable: {u}");
        }
        for t in &d.top_files {
            println!("  top file {}: {}", t.path, t.reason);
        }
        for f in &d.files {
            println!("  file {}: {}", f.path, f.reason);
        }
    }
    let errors = r.count(Severity::Error) + r.damaged.len();
    if r.is_ok() {
        println!(
            "no errors found ({} warnings, {} notes)",
            r.count(Severity::Warning),
            r.count(Severity::Info)
        );
    } else {
        println!(
            "{errors} errors: {} damaged snapshots; undamaged files still export",
            r.damaged.len()
        );
    }
}

fn to_json(r: &CheckReport) -> serde_json::Value {
    let files = |v: &[cradle::store::check::DamagedFile]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|f| serde_json::json!({"path": f.path, "reason": f.reason}))
            .collect()
    };
    serde_json::json!({
        "ok": r.is_ok(),
        "snapshots": r.snapshots,
        "files": r.files,
        "packs": r.packs,
        "packs_read": r.packs_read,
        "blobs_read": r.blobs_read,
        "bytes_read": r.bytes_read,
        "chunks_referenced": r.chunks_referenced,
        "index_consistent": r.index_consistent,
        "findings": r.findings.iter().map(|f| serde_json::json!({
            "severity": sev(f.severity), "message": f.message,
        })).collect::<Vec<_>>(),
        "damaged": r.damaged.iter().map(|d| serde_json::json!({
            "id": d.id.to_hex(),
            "udid": d.udid,
            "device_name": d.device_name,
            "phone_date_ms": d.phone_date,
            "unreadable": d.unreadable,
            "top_files": files(&d.top_files),
            "files": files(&d.files),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("10%").unwrap(), 10);
        assert_eq!(parse_percent("100").unwrap(), 100);
        assert!(parse_percent("0%").is_err());
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("ten").is_err());
    }
}
