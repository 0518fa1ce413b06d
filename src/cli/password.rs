//! `cradle password set|forget|status`: the backup passwords sealed on the box, per phone UDID or
//! the box default. A password comes from a file, stdin or a prompt, never from the command line.

use anyhow::Context;
use clap::{Args, Subcommand};
use cradle::password::resolve_password;
use cradle::secrets::{
    SealingMode, SecretStore, SecretsError, Slot, SystemdCredsConfig, SystemdCredsStore, TpmDevice,
    Udid, DEFAULT_STATE_DIR,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum PasswordCommand {
    /// Seal a backup password for one phone (--udid) or as the box default.
    Set {
        #[command(flatten)]
        slot: SlotArgs,
        /// Read the password from this file (first line; `-` = stdin). Also CRADLE_PASSWORD_FILE;
        /// asked for twice on a terminal otherwise.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Forget the sealed password of one phone (--udid) or the box default.
    Forget {
        #[command(flatten)]
        slot: SlotArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Which phones have a sealed password, and how passwords are sealed (never the password).
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The repository's own passwords (key files): add, change, list with --repo.
    #[command(flatten)]
    Repo(super::repo_keys::RepoPasswordCommand),
}

#[derive(Args, Debug)]
pub struct SlotArgs {
    /// The phone's UDID.
    #[arg(long, conflicts_with = "default")]
    udid: Option<String>,
    /// The box default, used for phones without a password of their own (the default when
    /// --udid is not given).
    #[arg(long)]
    default: bool,
}

impl SlotArgs {
    fn slot(&self) -> anyhow::Result<Slot> {
        Ok(match &self.udid {
            Some(u) => Slot::Phone(Udid::new(u)?),
            None => Slot::Default,
        })
    }
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Where sealed passwords are kept.
    #[arg(long, value_name = "DIR", env = "CRADLE_SECRETS_DIR", default_value = DEFAULT_STATE_DIR)]
    secrets_dir: PathBuf,
    /// TPM to use: a device node or a TCTI such as swtpm:host=127.0.0.1,port=2321
    /// (default: /dev/tpmrm0 if present).
    #[arg(long, value_name = "DEVICE", env = "CRADLE_TPM2_DEVICE")]
    tpm2_device: Option<String>,
    /// secrets.allow_host_key: without a TPM, seal with the weaker host key instead of refusing.
    #[arg(long, env = "CRADLE_SECRETS_ALLOW_HOST_KEY")]
    allow_host_key: bool,
}

impl StoreArgs {
    fn config(&self) -> SystemdCredsConfig {
        SystemdCredsConfig {
            state_dir: self.secrets_dir.clone(),
            tpm: match &self.tpm2_device {
                Some(d) => TpmDevice::Explicit(d.clone()),
                None => TpmDevice::Auto,
            },
            allow_host_key: self.allow_host_key,
            ..SystemdCredsConfig::from_env()
        }
    }

    fn open(&self) -> anyhow::Result<SystemdCredsStore> {
        Ok(SystemdCredsStore::open(self.config())?)
    }
}

pub fn run(cmd: PasswordCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PasswordCommand::Repo(c) => super::repo_keys::run(c),
        PasswordCommand::Set {
            slot,
            password_file,
            store,
        } => {
            let slot = slot.slot()?;
            let store = store.open()?;
            let password =
                if password_file.is_some() || std::env::var_os("CRADLE_PASSWORD_FILE").is_some() {
                    resolve_password(password_file.as_deref(), "")?
                } else {
                    let first = resolve_password(None, "New backup password: ")?;
                    let again = resolve_password(None, "Repeat the password: ")?;
                    anyhow::ensure!(
                        first == again,
                        "the two passwords differ; nothing was changed"
                    );
                    first
                };
            store
                .set(&slot, &password)
                .with_context(|| format!("could not seal the password for {slot}"))?;
            println!(
                "sealed the password for {slot} ({})",
                describe(store.mode())
            );
            Ok(ExitCode::SUCCESS)
        }
        PasswordCommand::Forget { slot, store } => {
            let slot = slot.slot()?;
            // Forgetting needs no TPM: open in any mode.
            let store = SystemdCredsStore::open(SystemdCredsConfig {
                allow_host_key: true,
                ..store.config()
            })?;
            if store.remove(&slot)? {
                println!("forgot the password for {slot}");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("no password was stored for {slot}");
                Ok(ExitCode::from(1))
            }
        }
        PasswordCommand::Status { store: args } => {
            let (store, mode_line) = match args.open() {
                Ok(s) => {
                    let line = describe(s.mode()).to_owned();
                    (s, line)
                }
                Err(e) => match e.downcast_ref::<SecretsError>() {
                    Some(SecretsError::NoTpm) => (
                        SystemdCredsStore::open(SystemdCredsConfig {
                            allow_host_key: true,
                            ..args.config()
                        })?,
                        format!("none: {e}"),
                    ),
                    _ => return Err(e),
                },
            };
            println!("sealing: {mode_line}");
            let entries = store.list()?;
            if entries.is_empty() {
                println!("no passwords stored in {}", args.secrets_dir.display());
            }
            for e in entries {
                let who = match &e.slot {
                    Slot::Default => "default".to_owned(),
                    Slot::Phone(u) => u.to_string(),
                };
                println!("{who:<42} {:<18} {}", e.mode.as_str(), e.path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn describe(mode: SealingMode) -> &'static str {
    match mode {
        SealingMode::Tpm2 => "tpm2: sealed by this box's TPM",
        SealingMode::HostKey => {
            "host-key: encrypted with a key on the box's own disk (weaker, no TPM)"
        }
        _ => mode.as_str(),
    }
}
