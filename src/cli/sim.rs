//! `cradle sim …`: the simulated iPhone. `tree` writes a synthetic phone's plaintext files,
//! `generate` the backup folder the phone would leave on a host.

use anyhow::Context;
use clap::Subcommand;
use cradle::ios_backup::kdf::{DEFAULT_DPIC, MAX_DPIC};
use cradle::password::resolve_password;
use cradle::sim::backup::{Encryption, SimBackup};
use cradle::sim::phone::{write_tree, Phone, Profile};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Write the synthetic phone's files as OUT/<domain>/<relativePath> (plaintext, no backup).
    Tree {
        /// Seed of the phone: same seed, profile and day give the same files on any machine.
        #[arg(long)]
        seed: u64,
        /// Size: tiny (~120 entries, 3 MB), small (~1,400, 40 MB), medium (~15,000, 450 MB),
        /// large (~150,000, 4.5 GB, one file over 1 GiB).
        #[arg(long, default_value = "small")]
        profile: Profile,
        /// Day of the phone's life (1 = first; each later day adds, removes and changes files).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        day: u32,
        /// Output folder (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the backup folder this phone leaves on a host on that day (Manifest.plist,
    /// Manifest.db, Status.plist, Info.plist, xx/<fileID>), encrypted unless --unencrypted.
    Generate {
        /// Seed of the phone.
        #[arg(long)]
        seed: u64,
        /// Size of the phone (tiny, small, medium, large).
        #[arg(long, default_value = "small")]
        profile: Profile,
        /// Day of the phone's life (1 = first).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        day: u32,
        /// The backup password, from this file (first line; `-` = stdin). Also
        /// CRADLE_PASSWORD_FILE; asked for on a terminal otherwise.
        #[arg(long, value_name = "FILE", conflicts_with = "unencrypted")]
        password_file: Option<PathBuf>,
        /// Write an unencrypted backup (the phone has no backup password).
        #[arg(long)]
        unencrypted: bool,
        /// PBKDF2-SHA256 rounds of the keybag (phones use 10,000,000).
        #[arg(long, default_value_t = DEFAULT_DPIC, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DPIC)))]
        dpic: u32,
        /// The backup folder to create (must be new or empty).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(c: SimCommand) -> anyhow::Result<ExitCode> {
    match c {
        SimCommand::Tree {
            seed,
            profile,
            day,
            out,
        } => {
            let t = Instant::now();
            let phone = Phone::new(seed, profile, day);
            let st = write_tree(&phone, &out)
                .with_context(|| format!("writing the phone's files to {}", out.display()))?;
            println!(
                "{}: {} entries ({} files, {} dirs, {} symlinks), {} bytes; seed {seed}, {profile}, day {day}, {:.1} s",
                out.display(),
                st.entries,
                st.files,
                st.dirs,
                st.symlinks,
                st.bytes,
                t.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Generate {
            seed,
            profile,
            day,
            password_file,
            unencrypted,
            dpic,
            out,
        } => {
            let t = Instant::now();
            let encryption = if unencrypted {
                None
            } else {
                let password = resolve_password(password_file.as_deref(), "Backup password: ")?;
                Some(Encryption { password, dpic })
            };
            let phone = Phone::new(seed, profile, day);
            let backup = SimBackup::new(&phone, encryption.as_ref())?;
            let st = backup
                .write_folder(&out)
                .with_context(|| format!("writing the backup folder {}", out.display()))?;
            println!(
                "{}: {} backup of {} ({}), {} files ({} bytes), {} dirs, {} symlinks; {:.1} s",
                out.display(),
                if encryption.is_some() {
                    "encrypted"
                } else {
                    "unencrypted"
                },
                phone.identity().device_name,
                phone.identity().udid,
                st.files,
                st.plaintext_bytes,
                st.directories,
                st.symlinks,
                t.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
