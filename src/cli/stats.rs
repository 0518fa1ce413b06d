//! `cradle stats`: per device, the logical size of the latest snapshot and of all snapshots, the
//! bytes stored, and the deduplication ratio.

use clap::Args;
use cradle::store::stats::stats;
use std::process::ExitCode;

use super::opsutil::{date, human, Progress};
use super::repo::{open_repo, RepoArgs};

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: StatsArgs) -> anyhow::Result<ExitCode> {
    let (repo, _) = open_repo(&a.repo)?;
    let mut p = Progress::new();
    let st = stats(&repo, &mut |pr| p.show("snapshots", pr.done, pr.total))?;
    p.done();
    if a.json {
        let v = serde_json::json!({
            "snapshots": st.snapshots,
            "packs": st.packs,
            "pack_bytes": st.pack_bytes,
            "blobs": st.blobs,
            "blob_plain_bytes": st.blob_plain_bytes,
            "total_logical_bytes": st.total_logical_bytes,
            "dedup_ratio": st.dedup_ratio,
            "devices": st.devices.iter().map(|d| serde_json::json!({
                "udid": d.udid,
                "device_name": d.device_name,
                "snapshots": d.snapshots,
                "latest": d.latest.to_hex(),
                "latest_phone_date_ms": d.latest_phone_date,
                "latest_logical_bytes": d.latest_logical_bytes,
                "total_logical_bytes": d.total_logical_bytes,
                "stored_bytes": d.stored_bytes,
                "dedup_ratio": d.dedup_ratio,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    for d in &st.devices {
        println!("{} \"{}\"", d.udid, d.device_name);
        println!(
            "  {} snapshots, latest {} ({})",
            d.snapshots,
            date(d.latest_phone_date),
            &d.latest.to_hex()[..12]
        );
        println!(
            "  latest snapshot {}, all snapshots {}, stored {}, dedup {:.2}x",
            human(d.latest_logical_bytes),
            human(d.total_logical_bytes),
            human(d.stored_bytes),
            d.dedup_ratio
        );
    }
    println!(
        "repository: {} snapshots, {} of files in all, {} packs holding {} ({} blobs), dedup {:.2}x",
        st.snapshots,
        human(st.total_logical_bytes),
        st.packs,
        human(st.pack_bytes),
        st.blobs,
        st.dedup_ratio
    );
    Ok(ExitCode::SUCCESS)
}
