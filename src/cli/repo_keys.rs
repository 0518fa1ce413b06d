//! `cradle password add|change|list --repo PATH`: the repository's key files (one per password
//! that opens it). Every snapshot stays readable: the master secret never changes.

use anyhow::Context;
use clap::Subcommand;
use cradle::password::{resolve_password, Password};
use cradle::store::keyring;
use cradle::store::lock::SystemLockEnv;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use super::opsutil::date;
use super::repo::{open_repo, RepoArgs};

#[derive(Subcommand, Debug)]
pub enum RepoPasswordCommand {
    /// Add a password that opens the repository (a new key file); the current one keeps working.
    Add {
        #[command(flatten)]
        repo: RepoArgs,
        /// The new password, from this file (first line); asked for twice on a terminal otherwise.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Change the password: add a key file for the new one, then remove the one that opened
    /// the repository (unless --keep-old).
    Change {
        #[command(flatten)]
        repo: RepoArgs,
        /// The new password, from this file (first line); asked for twice on a terminal otherwise.
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
        /// Keep the old key file too.
        #[arg(long)]
        keep_old: bool,
    },
    /// List the repository's key files (never a password).
    List {
        #[command(flatten)]
        repo: RepoArgs,
        /// One JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn new_password(file: Option<&std::path::Path>) -> anyhow::Result<Password> {
    if let Some(f) = file {
        return Ok(resolve_password(Some(f), "")?);
    }
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "give the new password with --new-password-file (no terminal to ask on)"
    );
    let first = Password::new(rpassword::prompt_password("New repository password: ")?);
    let again = Password::new(rpassword::prompt_password("Repeat the new password: ")?);
    anyhow::ensure!(
        first == again,
        "the two passwords differ; nothing was changed"
    );
    anyhow::ensure!(!first.is_empty(), "an empty password is refused");
    Ok(first)
}

pub fn run(cmd: RepoPasswordCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RepoPasswordCommand::Add {
            repo,
            new_password_file,
        } => {
            let (r, cur) = open_repo(&repo)?;
            let new = new_password(new_password_file.as_deref())?;
            let id = keyring::add_key(&r, &cur, &new, None, &SystemLockEnv)
                .context("adding a key file")?;
            println!("added key file keys/{id}: the new password opens the repository");
        }
        RepoPasswordCommand::Change {
            repo,
            new_password_file,
            keep_old,
        } => {
            let (r, cur) = open_repo(&repo)?;
            let new = new_password(new_password_file.as_deref())?;
            let old = r.key_id();
            let id = keyring::change_password(&r, &cur, &new, keep_old, &SystemLockEnv)
                .context("changing the password")?;
            if keep_old {
                println!("added key file keys/{id}; the old one (keys/{old}) was kept");
            } else {
                println!(
                    "password changed: keys/{id} added, keys/{old} removed; every snapshot is \
                     still readable"
                );
            }
        }
        RepoPasswordCommand::List { repo, json } => {
            let (r, _) = open_repo(&repo)?;
            let keys = keyring::list_keys(&r)?;
            if json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id.to_hex(),
                            "created_ms": k.created,
                            "current": k.current,
                            "kdf": k.kdf.map(|p| serde_json::json!({
                                "m_cost_kib": p.m_cost, "t_cost": p.t_cost, "p_cost": p.p_cost,
                            })),
                            "problem": k.problem,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for k in &keys {
                    let when = k.created.map(date).unwrap_or_default();
                    let kdf = k
                        .kdf
                        .map(|p| {
                            format!("argon2id m={} KiB t={} p={}", p.m_cost, p.t_cost, p.p_cost)
                        })
                        .unwrap_or_default();
                    let cur = if k.current {
                        "  (opened with this one)"
                    } else {
                        ""
                    };
                    let prob = k
                        .problem
                        .as_deref()
                        .map(|p| format!("  DAMAGED: {p}"))
                        .unwrap_or_default();
                    println!("{}  {when}  {kdf}{cur}{prob}", k.id);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
