//! `cradle backup-folder …`: inspect, verify and extract any standard backup folder.

use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum BackupFolderCommand {
    /// Print the fileID (the data file's name, `<xx>/<fileID>`) of a domain and relative path.
    FileId {
        /// The domain, e.g. HomeDomain or AppDomain-com.example.app.
        domain: String,
        /// The path inside the domain, e.g. Library/SMS/sms.db.
        relative_path: String,
    },
}

pub fn run(c: BackupFolderCommand) -> anyhow::Result<ExitCode> {
    match c {
        BackupFolderCommand::FileId {
            domain,
            relative_path,
        } => {
            println!("{}", cradle::ios_backup::file_id(&domain, &relative_path));
            Ok(ExitCode::SUCCESS)
        }
    }
}
