//! `cradle password change-phone`: change the attached phone's backup password, then the password
//! sealed on the box for it, then (with --repo) the repository's key file, in that order.
//!
//! The order is what makes a failure safe: everything that can be checked is checked before the
//! phone is touched (the old password opens the repository, the sealed store can seal); the phone
//! goes first because only it can refuse (wrong old password, passcode not entered), and then
//! nothing has changed. The repository keeps its master key (a new key file is added, and the
//! old one removed only after the new one is proven), so old snapshots stay readable and
//! deduplication continues across the change.

use anyhow::Context;
use clap::Args;
use cradle::backup2::host::{device_error_meaning, BackupEvent, HostError, Phase};
use cradle::backup2::run::{run_change_password, RunError, RunOptions};
use cradle::password::{read_password_file, Password};
use cradle::secrets::{SecretStore, Slot, Udid};
use cradle::store::repo::Repository;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::backup::Display;
use super::password::StoreArgs;
use super::phone::{connect, open_host_state, PhoneArgs};

#[derive(Args, Debug)]
pub struct ChangePhoneArgs {
    #[command(flatten)]
    phone: PhoneArgs,
    /// The current backup password, from this file (first line; `-` = stdin); asked for on a
    /// terminal otherwise.
    #[arg(long, value_name = "FILE")]
    old_password_file: Option<PathBuf>,
    /// The new backup password, from this file (first line; `-` = stdin); asked for twice on a
    /// terminal otherwise.
    #[arg(long, value_name = "FILE")]
    new_password_file: Option<PathBuf>,
    /// The snapshot repository on the drive: its key file for the old password is replaced by
    /// one for the new password (every snapshot stays readable).
    #[arg(long, value_name = "PATH")]
    repo: Option<PathBuf>,
    /// Also seal the new password as the box default (for phones without their own).
    #[arg(long, conflicts_with = "no_seal")]
    default: bool,
    /// Leave the passwords sealed on the box alone (by default the new one is sealed for this
    /// phone's UDID).
    #[arg(long)]
    no_seal: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// A password from `file`, else asked for on the terminal (twice when `confirm`). The
/// CRADLE_PASSWORD_FILE variable is not used: it could not tell the old password from the new.
fn password(file: Option<&Path>, what: &str, confirm: bool) -> anyhow::Result<Password> {
    if let Some(f) = file {
        return Ok(read_password_file(f)?);
    }
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "give the {what} password with --{what}-password-file FILE (no terminal to ask on); \
         nothing was changed"
    );
    let prompt = |p: &str| -> anyhow::Result<Password> {
        let s = zeroize::Zeroizing::new(rpassword::prompt_password(p)?);
        Ok(Password::new(s.as_bytes()))
    };
    let first = prompt(&format!("{} backup password: ", capitalized(what)))?;
    if confirm {
        let again = prompt("Repeat the new password: ")?;
        anyhow::ensure!(
            first == again,
            "the two passwords differ; nothing was changed"
        );
    }
    anyhow::ensure!(
        !first.is_empty(),
        "an empty password is refused; nothing was changed"
    );
    Ok(first)
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// One line for a phone that did not change its password.
fn explain_refusal(e: &RunError) -> String {
    match e {
        RunError::Backup(HostError::Device(f)) => format!(
            "the phone refused to change its backup password (ErrorCode {}: {}{}): is the old \
             password right? Nothing was changed",
            f.code,
            device_error_meaning(f.code),
            f.description
                .as_deref()
                .map(|d| format!(", {d}"))
                .unwrap_or_default()
        ),
        RunError::EncryptionAlreadySet(false) => {
            "the phone's backups are not encrypted, so it has no backup password to change: \
             turn encryption on with `cradle backup --encrypt`; nothing was changed"
                .into()
        }
        other => format!(
            "{}; nothing was changed",
            super::backup::explain(other, Path::new("the drive"))
        ),
    }
}

pub fn run(args: ChangePhoneArgs) -> anyhow::Result<ExitCode> {
    let old_file = args.old_password_file.as_deref();
    let new_file = args.new_password_file.as_deref();
    anyhow::ensure!(
        !(old_file == Some(Path::new("-")) && new_file == Some(Path::new("-"))),
        "only one of --old-password-file and --new-password-file can be `-` (stdin)"
    );
    // Everything that can be checked is checked before the phone is touched.
    let old = password(old_file, "old", false)?;
    let new = password(new_file, "new", true)?;
    anyhow::ensure!(
        old != new,
        "the new password is the old one; nothing was changed"
    );
    let secrets = if args.no_seal {
        None
    } else {
        Some(args.store.open().context(
            "cannot seal the new password on this box (pass --no-seal to change the phone \
             and the repository only); nothing was changed",
        )?)
    };
    let repo = match &args.repo {
        Some(path) => Some((path.clone(), open_repo(path, &old)?)),
        None => None,
    };

    let st = open_host_state(args.phone.state_dir.as_deref())?;
    let conn = connect(&args.phone, &st.dir)?;
    let dev = conn.connector();
    let udid = dev.udid().to_string();
    let slot_udid = Udid::new(&udid).with_context(|| format!("the phone's UDID {udid:?}"))?;
    let mut opts = RunOptions::default();
    opts.lockdown.pair.trust_timeout = Duration::from_secs(args.phone.trust_timeout);

    // 1. The phone: the only step that can be refused by someone else.
    let mut display = Display::new();
    display.say("changing the phone's backup password (the phone asks for its passcode)");
    let res = run_change_password(
        dev,
        &st.pairs,
        &st.host,
        Some(&old),
        Some(&new),
        &opts,
        &mut |e| match e {
            BackupEvent::PasscodeRequested => {
                display.say("enter the passcode on the phone to allow the change")
            }
            BackupEvent::Phase(Phase::WaitingForPhone) => {}
            e => display.event(e),
        },
    );
    display.finish();
    match res {
        Ok(true) => println!("the phone {udid} now encrypts its backups with the new password"),
        Ok(false) => anyhow::bail!(
            "the phone turned backup encryption off instead of changing the password; \
             turn it on again with `cradle backup --encrypt`"
        ),
        Err(e) => anyhow::bail!("{}", explain_refusal(&e)),
    }
    // The phone holds the new password from here on: a later failure names what is left to do.
    drop(conn);

    // 2. The password sealed on the box.
    if let Some(store) = &secrets {
        let mut slots = vec![Slot::Phone(slot_udid)];
        if args.default {
            slots.push(Slot::Default);
        }
        for slot in slots {
            store.set(&slot, &new).with_context(|| {
                format!(
                    "the phone has the new password, but sealing it for {slot} failed: run \
                     `cradle password set` for it{}",
                    if repo.is_some() {
                        ", then `cradle password change --repo` for the repository"
                    } else {
                        ""
                    }
                )
            })?;
            println!("sealed the new password for {slot}");
        }
    }

    // 3. The repository's key file.
    if let Some((path, repo)) = &repo {
        change_repo_key(path, repo, &old, &new)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn open_repo(path: &Path, old: &Password) -> anyhow::Result<Repository> {
    super::repo::open_with(path, old)
        .context("the repository must open with the old password before the phone's is changed")
}

/// Adds a key file for `new` (proven to open the repository) and only then removes the old one.
fn change_repo_key(
    path: &Path,
    repo: &Repository,
    old: &Password,
    new: &Password,
) -> anyhow::Result<()> {
    let before = repo.key_id();
    let id = cradle::store::keyring::change_password(
        repo,
        old,
        new,
        false,
        &cradle::store::lock::SystemLockEnv,
    )
    .with_context(|| {
        format!(
            "the phone has the new password, but the repository {} could not be changed: run \
             `cradle password change --repo {}` with the old password",
            path.display(),
            path.display()
        )
    })?;
    println!(
        "repository {}: key file keys/{id} added for the new password, keys/{before} removed; \
         every snapshot is still readable",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cradle::backup2::host::DeviceFailure;

    #[test]
    fn a_refusal_says_nothing_changed() {
        let e = RunError::Backup(HostError::Device(DeviceFailure {
            code: 207,
            meaning: device_error_meaning(207),
            description: Some("wrong password".into()),
        }));
        let s = explain_refusal(&e);
        assert!(
            s.contains("ErrorCode 207") && s.contains("old password"),
            "{s}"
        );
        assert!(s.ends_with("Nothing was changed"), "{s}");
        let s = explain_refusal(&RunError::EncryptionAlreadySet(false));
        assert!(
            s.contains("not encrypted") && s.contains("nothing was changed"),
            "{s}"
        );
    }
}
