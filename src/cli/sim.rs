//! `cradle sim …`: the simulated iPhone. `tree` writes a synthetic phone's plaintext files.

use anyhow::Context;
use clap::Subcommand;
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
    }
}
