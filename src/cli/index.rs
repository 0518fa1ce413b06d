//! `cradle index rebuild`: rebuild the sled index (a cache) from the pack headers and snapshot
//! records. Opening a repository already rebuilds a missing or damaged index on its own.

use clap::Subcommand;
use cradle::store::lock::{LockPurpose, SystemLockEnv};
use std::process::ExitCode;

use super::repo::{open_repo, RepoArgs};

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Delete and rebuild the index from every pack header and snapshot record on the drive.
    Rebuild {
        #[command(flatten)]
        repo: RepoArgs,
    },
}

pub fn run(cmd: IndexCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IndexCommand::Rebuild { repo } => {
            let (mut r, _) = open_repo(&repo)?;
            let guard = r.lock_writer(LockPurpose::Index, &SystemLockEnv)?;
            r.rebuild_index()?;
            guard.release()?;
            match r.index_chunk_count() {
                Some(n) => println!(
                    "index rebuilt: {n} chunks in {} packs",
                    r.list_packs()?.len()
                ),
                None => println!(
                    "the index is in use by another process here; nothing rebuilt (the \
                     repository works without it)"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
