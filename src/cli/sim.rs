//! `cradle sim …`: the simulated iPhone. `tree` writes a synthetic phone's plaintext files,
//! `generate` the backup folder the phone would leave on a host, and `serve` puts the phone
//! behind a usbmuxd-compatible socket so unmodified hosts (idevicebackup2, pymobiledevice3) can
//! pair with it and back it up.

use anyhow::Context;
use clap::{Args, Subcommand};
use cradle::ios_backup::kdf::{DEFAULT_DPIC, MAX_DPIC};
use cradle::password::{read_password_file, resolve_password};
use cradle::sim::backup::{Encryption, SimBackup};
use cradle::sim::device::TrustPolicy;
use cradle::sim::phone::{write_tree, Phone, Profile};
use cradle::sim::simulator::{EncryptionChoice, Simulator, SimulatorOptions};
use cradle::usb::muxd::{ListenAddr, MuxdServer};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
    /// Serve a simulated iPhone behind a usbmuxd-compatible socket until SIGINT or SIGTERM.
    ///
    /// Prints one line when ready: `serving UDID <udid> on <address>
    /// (USBMUXD_SOCKET_ADDRESS=<value for clients>), …`; each backup then prints a line on
    /// stderr (`backup done: incremental, 12 files, …`). To move to another day, stop it and
    /// start it again with the same --state-dir and another --day: pairings and the password
    /// survive.
    Serve(ServeArgs),
}

pub fn run(c: SimCommand) -> anyhow::Result<ExitCode> {
    match c {
        SimCommand::Serve(args) => serve(args),
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

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where to listen: IP:PORT (port 0 picks a free one) or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:27015")]
    listen: ListenAddr,
    /// The synthetic phone's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How much the phone holds: tiny, small, medium or large.
    #[arg(long, default_value = "small")]
    profile: Profile,
    /// Which day of the phone's life (day N is day 1 changed N-1 times).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    day: u32,
    /// The phone already encrypts its backups, with the password in this file (first line).
    #[arg(long, conflicts_with = "unencrypted")]
    password_file: Option<PathBuf>,
    /// Backup encryption is off (a host turns it on with ChangePassword).
    #[arg(long)]
    unencrypted: bool,
    /// PBKDF2-SHA256 rounds of the backup keybag (phones use 10,000,000).
    #[arg(long, default_value_t = DEFAULT_DPIC, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DPIC)))]
    dpic: u32,
    /// How the simulated user answers "Trust This Computer?": auto, after:N (N pending
    /// answers first), deny, locked-once.
    #[arg(long, default_value = "auto", value_parser = parse_trust)]
    trust: TrustPolicy,
    /// Keeps pairings, the password and the pair records here across restarts.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How long the simulated user takes to type the passcode, in milliseconds.
    #[arg(long, default_value_t = 0)]
    passcode_delay_ms: u64,
}

fn parse_trust(s: &str) -> Result<TrustPolicy, String> {
    match s {
        "auto" => Ok(TrustPolicy::Auto),
        "deny" => Ok(TrustPolicy::Deny),
        "locked-once" => Ok(TrustPolicy::LockedOnce),
        _ => s
            .strip_prefix("after:")
            .and_then(|n| n.parse::<u32>().ok())
            .map(TrustPolicy::AfterPolls)
            .ok_or_else(|| format!("{s:?}: expected auto, after:N, deny or locked-once")),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let encryption = match (&args.password_file, args.unencrypted) {
        (Some(p), _) => EncryptionChoice::On(
            read_password_file(p).with_context(|| format!("--password-file {}", p.display()))?,
        ),
        (None, true) => EncryptionChoice::Off,
        (None, false) => EncryptionChoice::Keep,
    };
    let opts = SimulatorOptions {
        seed: args.seed,
        profile: args.profile,
        day: args.day,
        encryption,
        dpic: args.dpic,
        trust: args.trust,
        state_dir: args.state_dir.clone(),
        passcode_delay: Duration::from_millis(args.passcode_delay_ms),
    };
    let sim = Simulator::new(opts).context("starting the simulated iPhone")?;
    sim.agent().on_report(|r| eprintln!("{r}"));
    let server = MuxdServer::bind(
        &args.listen,
        vec![sim.served_device()],
        sim.pair_record_dir(),
    )
    .context("starting the usbmuxd facade")?;
    let encrypted = sim.device().will_encrypt();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "serving UDID {} on {} (USBMUXD_SOCKET_ADDRESS={}), {} {} day {}, backup encryption {}",
        sim.udid(),
        server.local_addr(),
        server.client_address(),
        args.profile,
        args.seed,
        args.day,
        if encrypted { "on" } else { "off" },
    )?;
    out.flush()?;
    drop(out);
    wait_for_signal().context("waiting for SIGINT or SIGTERM")?;
    server.shutdown();
    sim.shutdown().context("saving the simulator state")?;
    Ok(ExitCode::SUCCESS)
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
