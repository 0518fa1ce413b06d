//! `cradle digest`: a raw snapshot (stored while the phone's backup password was unknown) becomes
//! a digested one with that password; `--all` does every raw snapshot the password opens.

use anyhow::{bail, Context};
use clap::Args;
use cradle::password::{read_password_file, Password};
use cradle::store::digest::{digest, digest_all, DigestError, DigestReport};
use cradle::store::ids::SnapshotId;
use cradle::store::lock::SystemLockEnv;
use cradle::store::repo::Repository;
use cradle::store::snapshot::SnapshotKind;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use super::opsutil::{date, human, resolve, Progress};
use super::repo::{open_repo, RepoArgs};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["snapshot", "all"])))]
pub struct DigestArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The raw snapshot (id or a unique prefix; `cradle snapshots` marks raw ones).
    snapshot: Option<String>,
    /// Every raw snapshot the backup password opens; the others are listed as skipped.
    #[arg(long)]
    all: bool,
    /// The phone's backup password of the raw snapshot(s), from this file (first line; `-` =
    /// stdin); asked for on a terminal otherwise.
    #[arg(long, value_name = "FILE")]
    backup_password_file: Option<PathBuf>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The phone's backup password: from its file, else asked for. CRADLE_PASSWORD_FILE is not used:
/// it holds the repository's password, and a raw snapshot exists because the two differ.
fn backup_password(a: &DigestArgs) -> anyhow::Result<Password> {
    if let Some(f) = &a.backup_password_file {
        return Ok(read_password_file(f)?);
    }
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "give the phone's backup password with --backup-password-file FILE (no terminal to ask \
         on); nothing was changed"
    );
    let s = zeroize::Zeroizing::new(rpassword::prompt_password(
        "The phone's backup password (of the raw snapshot): ",
    )?);
    Ok(Password::new(s.as_bytes()))
}

/// What SNAP names.
enum Target {
    /// A raw snapshot to digest (or whose interrupted digest to finish).
    Raw(SnapshotId),
    /// A raw snapshot already digested and gone: (raw, digested).
    Gone(SnapshotId, SnapshotId),
}

/// SNAP among readable records; else among raw records an interrupted digest left superseded
/// (digest then finishes the job), or the `digested_from` of digested records (nothing to do).
fn resolve_raw(repo: &Repository, snap: &str) -> anyhow::Result<Target> {
    let err = match resolve(repo, snap) {
        Ok((id, rec)) => {
            if rec.kind != SnapshotKind::Raw {
                bail!(
                    "snapshot {} is already digested; only raw snapshots need `digest`",
                    &id.to_hex()[..12]
                );
            }
            return Ok(Target::Raw(id));
        }
        Err(e) => e,
    };
    let s = snap.to_ascii_lowercase();
    if s.len() < 4 {
        return Err(err);
    }
    let listing = repo.snapshot_listing()?;
    let hits: Vec<_> = listing
        .superseded_raw
        .iter()
        .filter(|id| id.to_hex().starts_with(&s))
        .collect();
    if let [id] = hits.as_slice() {
        return Ok(Target::Raw(**id));
    }
    let done: Vec<_> = listing
        .snapshots
        .iter()
        .filter(|(_, r)| !r.digested_from.is_zero() && r.digested_from.to_hex().starts_with(&s))
        .collect();
    match done.as_slice() {
        [(id, r)] => Ok(Target::Gone(r.digested_from, *id)),
        _ => Err(err),
    }
}

fn report_json(r: &DigestReport) -> serde_json::Value {
    serde_json::json!({
        "raw": r.raw.to_hex(),
        "snapshot": r.digested.to_hex(),
        "udid": r.udid,
        "files_plain": r.files_plain,
        "files_raw": r.files_raw,
        "bytes_plain": r.bytes_plain,
        "finished_earlier_run": r.already,
    })
}

fn report_line(r: &DigestReport) -> String {
    if r.already {
        return format!(
            "raw snapshot {} was already digested as {} (an interrupted run); the raw record \
             is now removed",
            &r.raw.to_hex()[..12],
            r.digested
        );
    }
    format!(
        "digested {} of {} into snapshot {}: {} files as plaintext ({}), {} kept as received; \
         the raw record is removed (its data goes at the next `cradle prune`)",
        &r.raw.to_hex()[..12],
        r.udid,
        r.digested,
        r.files_plain,
        human(r.bytes_plain),
        r.files_raw
    )
}

pub fn run(a: DigestArgs) -> anyhow::Result<ExitCode> {
    let (mut repo, _) = open_repo(&a.repo)?;
    let target = match &a.snapshot {
        Some(s) if !a.all => match resolve_raw(&repo, s)? {
            Target::Raw(id) => Some(id),
            Target::Gone(raw, id) => {
                if a.json {
                    let v = serde_json::json!({
                        "digested": [], "skipped": [],
                        "already": {"raw": raw.to_hex(), "snapshot": id.to_hex()},
                    });
                    println!("{v}");
                } else {
                    println!(
                        "raw snapshot {} is already digested as {id}: nothing to do",
                        &raw.to_hex()[..12]
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
        },
        _ => None,
    };
    let pw = backup_password(&a)?;
    let mut p = Progress::new();
    let (done, skipped) = match target {
        Some(id) => {
            let r = digest(&mut repo, &SystemLockEnv, &id, &pw, &mut |pr| {
                p.show("files", pr.done, pr.total)
            });
            p.done();
            match r {
                Ok(r) => (vec![r], Vec::new()),
                Err(e @ DigestError::WrongPassword(_)) => bail!("{e}"),
                Err(e) => return Err(e).context(format!("digesting snapshot {id}")),
            }
        }
        None => {
            let r = digest_all(&mut repo, &SystemLockEnv, &pw, &mut |id, pr| {
                p.show(&format!("{} files", &id.to_hex()[..12]), pr.done, pr.total)
            });
            p.done();
            r.context("digesting the raw snapshots")?
        }
    };
    if a.json {
        let v = serde_json::json!({
            "digested": done.iter().map(report_json).collect::<Vec<_>>(),
            "skipped": skipped.iter().map(|s| serde_json::json!({
                "id": s.id.to_hex(),
                "udid": s.udid,
                "reason": s.reason.to_string(),
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    for r in &done {
        println!("{}", report_line(r));
    }
    for s in &skipped {
        let when = repo
            .load_snapshot(&s.id)
            .map(|r| date(r.phone_date))
            .unwrap_or_default();
        println!(
            "skipped raw snapshot {} of {} ({when}): {}",
            &s.id.to_hex()[..12],
            s.udid,
            s.reason
        );
    }
    if done.is_empty() && skipped.is_empty() {
        println!("no raw snapshots: nothing to digest");
    }
    Ok(ExitCode::SUCCESS)
}
