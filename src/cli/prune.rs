//! `cradle prune` (retention per device, then removing unused data), `cradle pin` / `unpin`
//! (keep a snapshot whatever the policy) and `cradle pins`.

use anyhow::Context;
use clap::Args;
use cradle::store::lock::{LockPurpose, SystemLockEnv};
use cradle::store::prune::{prune, Policy, PruneOptions, PrunePhase};
use cradle::store::repo::now_ms;
use cradle::store::snapshot::Pin;
use cradle::store::tz::Zone;
use std::process::ExitCode;

use super::opsutil::{date, date_in, human, resolve, Progress};
use super::repo::{open_repo, RepoArgs};

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Keep the newest N snapshots of each device.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N days (per device, by the phone's date).
    /// Days, weeks, months and years are those of this machine's time zone ($TZ, else
    /// /etc/localtime; UTC when neither is readable).
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_yearly: u32,
    /// Say what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PinArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Snapshot id (or a unique prefix), or `latest`.
    snapshot: String,
    /// Why it is kept (≤ 256 bytes).
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(Args, Debug)]
pub struct UnpinArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Snapshot id (or a unique prefix).
    snapshot: String,
}

#[derive(Args, Debug)]
pub struct PinsArgs {
    #[command(flatten)]
    repo: RepoArgs,
}

pub fn run_prune(a: PruneArgs) -> anyhow::Result<ExitCode> {
    let (mut repo, _) = open_repo(&a.repo)?;
    let opts = PruneOptions {
        policy: Policy {
            keep_last: a.keep_last,
            keep_daily: a.keep_daily,
            keep_weekly: a.keep_weekly,
            keep_monthly: a.keep_monthly,
            keep_yearly: a.keep_yearly,
        },
        dry_run: a.dry_run,
        zone: Zone::local(),
    };
    let mut p = Progress::new();
    let r = prune(&mut repo, &opts, &SystemLockEnv, &mut |pr| {
        let what = match pr.phase {
            PrunePhase::Mark => "marking",
            PrunePhase::Forget => "forgetting",
            PrunePhase::Sweep => "packs",
            PrunePhase::Delete => "deleting",
        };
        p.show(what, pr.done, pr.total);
    })
    .context("prune")?;
    p.done();
    if a.json {
        let v = serde_json::json!({
            "dry_run": r.dry_run,
            "snapshots": r.decisions.iter().map(|d| serde_json::json!({
                "id": d.id.to_hex(),
                "udid": d.udid,
                "phone_date_ms": d.phone_date,
                "keep": d.keep,
                "reasons": d.reasons,
            })).collect::<Vec<_>>(),
            "forgotten": r.forgotten.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
            "pins_removed": r.pins_removed,
            "packs_deleted": r.packs_deleted,
            "packs_repacked": r.packs_repacked,
            "packs_written": r.packs_written,
            "bytes_freed": r.bytes_freed,
            "damaged_packs": r.damaged_packs,
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    for d in &r.decisions {
        let what = if d.keep { "keep  " } else { "forget" };
        let when = if d.phone_date == 0 {
            String::new()
        } else {
            date_in(d.phone_date, &opts.zone)
        };
        println!(
            "{what} {}  {when}  {}  ({})",
            &d.id.to_hex()[..12],
            d.udid,
            d.reasons.join(", ")
        );
    }
    for d in &r.damaged_packs {
        println!("warning: left alone: {d}");
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {} snapshots and {} pins; {} packs deleted, {} repacked into {} new; {} freed",
        r.forgotten.len(),
        r.pins_removed,
        r.packs_deleted,
        r.packs_repacked,
        r.packs_written,
        human(r.bytes_freed)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_pin(a: PinArgs) -> anyhow::Result<ExitCode> {
    let (mut repo, _) = open_repo(&a.repo)?;
    let (id, rec) = resolve(&repo, &a.snapshot)?;
    let guard = repo.lock_writer(LockPurpose::Admin, &SystemLockEnv)?;
    repo.pin(
        &id,
        &Pin {
            pinned_at: now_ms(),
            note: a.note,
        },
    )
    .with_context(|| format!("pinning {id}"))?;
    guard.release()?;
    println!(
        "pinned {} ({} {}): prune keeps it",
        &id.to_hex()[..12],
        rec.device.udid,
        date(rec.phone_date)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_unpin(a: UnpinArgs) -> anyhow::Result<ExitCode> {
    let (mut repo, _) = open_repo(&a.repo)?;
    // A pin may outlive its snapshot: match prefixes among pins too.
    let want = a.snapshot.to_ascii_lowercase();
    let pins = repo.list_pins()?;
    let hits: Vec<_> = pins
        .iter()
        .filter(|(id, _)| id.to_hex().starts_with(&want))
        .collect();
    let id = match hits.as_slice() {
        [(id, _)] => *id,
        [] => anyhow::bail!("no pinned snapshot {:?} (see `cradle pins`)", a.snapshot),
        _ => anyhow::bail!(
            "{} pins start with {:?}: give more characters",
            hits.len(),
            a.snapshot
        ),
    };
    let guard = repo.lock_writer(LockPurpose::Admin, &SystemLockEnv)?;
    repo.unpin(&id)?;
    guard.release()?;
    println!("unpinned {}", &id.to_hex()[..12]);
    Ok(ExitCode::SUCCESS)
}

pub fn run_pins(a: PinsArgs) -> anyhow::Result<ExitCode> {
    let (repo, _) = open_repo(&a.repo)?;
    for (id, pin) in repo.list_pins()? {
        println!(
            "{}  pinned {}  {}",
            &id.to_hex()[..12],
            date(pin.pinned_at),
            pin.note
        );
    }
    Ok(ExitCode::SUCCESS)
}
