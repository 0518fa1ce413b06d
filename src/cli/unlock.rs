//! `cradle unlock`: remove a repository's writer lock that no live process here holds — one a
//! crash left, or one another machine holds (the explicit act format.md §11 rule 3 asks for).

use clap::Args;
use cradle::store::lock::{SystemLockEnv, Unlocked};
use std::process::ExitCode;

use super::opsutil::date;
use super::repo::{open_repo, RepoArgs};

#[derive(Args, Debug)]
pub struct UnlockArgs {
    #[command(flatten)]
    repo: RepoArgs,
}

pub fn run(a: UnlockArgs) -> anyhow::Result<ExitCode> {
    let (repo, _) = open_repo(&a.repo)?;
    match repo.unlock_writer(&SystemLockEnv)? {
        Unlocked::NoLock => println!("no writer lock: nothing to do"),
        Unlocked::RemovedUnreadable => {
            println!("removed an unreadable writer lock (left by a crash)")
        }
        Unlocked::Removed {
            hostname,
            purpose,
            created_ms,
        } => println!(
            "removed the writer lock {hostname} took at {} UTC ({purpose:?}); the next backup, \
             prune or digest finishes or cleans up what it left",
            date(created_ms)
        ),
    }
    Ok(ExitCode::SUCCESS)
}
