//! Command-line definitions and dispatch. Each area's commands live in their own file;
//! this file only parses and routes.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod backup;
mod backup_folder;
mod check;
mod daemon;
mod demo;
mod digest;
mod display;
mod index;
mod opsutil;
mod password;
mod password_change;
mod phone;
mod prune;
mod repo;
mod repo_keys;
mod sim;
mod stats;
mod unlock;

#[derive(Parser, Debug)]
#[command(
    name = "cradle",
    version,
    about = "Encrypted, incremental iPhone backups onto a USB drive"
)]
pub struct Cli {
    /// More log output (-v info, -vv debug); logs never contain passwords.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A simulated iPhone plugged into a simulated box, the OLED drawn in this terminal:
    /// the first backup, then day 2's incremental one. Needs nothing but this program.
    Demo(demo::DemoArgs),
    /// The box: back up phones as they are plugged in, onto the Cradle drive.
    Daemon(daemon::DaemonArgs),
    /// What the daemon is doing: state, drive, last backup per phone, secrets mode.
    Status(daemon::StatusArgs),
    /// Back up an attached iPhone into a standard backup folder (encrypted; incremental when a
    /// previous backup is there).
    Backup(backup::BackupArgs),
    /// Read any standard backup folder (Finder, iTunes, idevicebackup2, Cradle's export).
    #[command(subcommand, name = "backup-folder")]
    BackupFolder(backup_folder::BackupFolderCommand),
    /// The OLED's screens: previews as PNG or in the terminal, a wiring check.
    #[command(subcommand)]
    Display(display::DisplayCommand),
    /// The simulated iPhone: a deterministic synthetic phone for tests and the demo.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Backup passwords sealed on the box (per phone, or the box default); `add`, `change`,
    /// `list` manage the passwords (key files) of a repository.
    #[command(subcommand)]
    Password(password::PasswordCommand),
    #[command(flatten)]
    Repo(repo::RepoCommand),
    /// Verify a repository: structure, and with --read-data every blob. Exit 0 clean, 1
    /// problems (naming damaged snapshots and files), 2 could not run.
    Check(check::CheckArgs),
    /// Per device: logical size of the latest and of all snapshots, bytes stored, dedup ratio.
    Stats(stats::StatsArgs),
    /// Forget snapshots by retention policy (per device) and remove the data no one uses.
    Prune(prune::PruneArgs),
    /// Turn a raw snapshot (stored while the phone's backup password was unknown) into a
    /// digested one, with that password: deduplicated, searchable, exporting the same bytes.
    Digest(digest::DigestArgs),
    /// Keep a snapshot whatever the retention policy says.
    Pin(prune::PinArgs),
    /// Remove a snapshot's pin.
    Unpin(prune::UnpinArgs),
    /// List pinned snapshots.
    Pins(prune::PinsArgs),
    /// The repository's index (a rebuildable cache).
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Remove the repository's writer lock when no process here holds it: one a crash left, or
    /// one another machine holds ("drive in use by …") when you know it is not writing.
    Unlock(unlock::UnlockArgs),
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRADLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Daemon(a) => daemon::daemon(a),
        Command::Status(a) => daemon::status(a),
        Command::Backup(a) => backup::run(a),
        Command::BackupFolder(c) => backup_folder::run(c),
        Command::Display(c) => display::run(c),
        Command::Sim(c) => sim::run(c),
        Command::Password(c) => password::run(c),
        Command::Repo(c) => repo::run(c),
        Command::Check(a) => check::run(a),
        Command::Stats(a) => stats::run(a),
        Command::Prune(a) => prune::run_prune(a),
        Command::Digest(a) => digest::run(a),
        Command::Pin(a) => prune::run_pin(a),
        Command::Unpin(a) => prune::run_unpin(a),
        Command::Pins(a) => prune::run_pins(a),
        Command::Index(c) => index::run(c),
        Command::Unlock(a) => unlock::run(a),
    }
}
