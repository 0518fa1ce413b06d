//! Repository commands: `init`, `snapshots`, `ls`, `diff`, `export` (byte-identical backup
//! folder) and `extract` (plaintext files), all on `--repo PATH`.

use super::opsutil::{date, resolve};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use cradle::ios_backup::folder::{BackupFolder, Filter};
use cradle::ios_backup::mbfile::MbFile;
use cradle::password::{resolve_password, Password};
use cradle::store::export::{export, export_skipping_damaged};
use cradle::store::repo::{InitOptions, RepoError, Repository};
use cradle::store::snapshot::SnapshotKind;
use cradle::store::storage::LocalStorage;
use cradle::store::table::{Content, FileEntry};
use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// The repository folder (e.g. /media/drive/Cradle).
    #[arg(long, value_name = "PATH")]
    pub repo: PathBuf,
    /// The repository password (the phone's backup password), from this file (first line;
    /// `-` = stdin). Also CRADLE_PASSWORD_FILE; asked for on a terminal otherwise.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a snapshot repository (encrypted, deduplicated) in an empty or new folder.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// Cheap key derivation (for tests only: weak against password guessing).
        #[arg(long, hide = true)]
        insecure_fast_kdf: bool,
    },
    /// List the snapshots in a repository.
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the files of a snapshot (optionally below DOMAIN[/PATH]).
    Ls {
        #[command(flatten)]
        repo: RepoArgs,
        /// Snapshot id (or a unique prefix), or `latest`.
        snapshot: String,
        /// Only entries whose `domain/relativePath` starts with this.
        path: Option<String>,
    },
    /// What changed between two snapshots (+ added, - removed, M modified).
    Diff {
        #[command(flatten)]
        repo: RepoArgs,
        snapshot1: String,
        snapshot2: String,
    },
    /// Write a snapshot as a standard backup folder, byte-identical to what the phone sent.
    Export {
        #[command(flatten)]
        repo: RepoArgs,
        snapshot: String,
        /// Output folder (new or empty); the backup goes into OUT/<UDID>/.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Decrypt a snapshot's files into OUT/<domain>/<relativePath>.
    Extract {
        #[command(flatten)]
        repo: RepoArgs,
        snapshot: String,
        /// Only domains matching this glob (e.g. 'AppDomain-*').
        #[arg(long)]
        domain: Option<String>,
        /// Only relative paths matching this glob.
        #[arg(long)]
        path: Option<String>,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Opens the repository at `args.repo` with its password; a wrong password is one clear line.
pub fn open_repo(args: &RepoArgs) -> anyhow::Result<(Repository, Password)> {
    let pw = resolve_password(args.password_file.as_deref(), "Repository password: ")?;
    let repo = open_with(&args.repo, &pw)?;
    Ok((repo, pw))
}

/// Opens `path` with `pw`.
pub fn open_with(path: &Path, pw: &Password) -> anyhow::Result<Repository> {
    let storage = LocalStorage::new(path)
        .with_context(|| format!("opening the repository {}", path.display()))?;
    match Repository::open(Arc::new(storage), pw) {
        Ok(r) => Ok(r),
        Err(RepoError::WrongPassword) => bail!(
            "wrong password for the repository {} (it is the phone's backup password); nothing \
             was changed",
            path.display()
        ),
        Err(RepoError::NotARepository) => bail!(
            "{} is not a Cradle repository: create one with `cradle init --repo {}`",
            path.display(),
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening the repository {}", path.display())),
    }
}

fn kind_name(k: SnapshotKind) -> &'static str {
    match k {
        SnapshotKind::Digested => "digested",
        SnapshotKind::Raw => "raw",
    }
}

fn entry_path(e: &FileEntry) -> String {
    match &e.row {
        Some(r) => format!("{}/{}", r.domain, r.relative_path),
        None => format!("(no row)/{}", e.file_id_hex()),
    }
}

fn entry_size(e: &FileEntry) -> u64 {
    match (&e.content, &e.row) {
        (Content::Plain(s), _) => s.length,
        (_, Some(r)) => MbFile::decode(&r.mbfile).map(|f| f.size).unwrap_or(0),
        (Content::Raw(s), None) => s.length,
        _ => 0,
    }
}

pub fn run(cmd: RepoCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RepoCommand::Init {
            repo,
            insecure_fast_kdf,
        } => {
            let pw = resolve_password(repo.password_file.as_deref(), "New repository password: ")?;
            std::fs::create_dir_all(&repo.repo)
                .with_context(|| format!("creating {}", repo.repo.display()))?;
            let storage = LocalStorage::new(&repo.repo)
                .with_context(|| format!("opening {}", repo.repo.display()))?;
            let mut opts = InitOptions::default();
            if insecure_fast_kdf {
                opts.kdf = InitOptions::for_tests().kdf;
            }
            Repository::init(Arc::new(storage), &pw, &opts)
                .with_context(|| format!("creating a repository in {}", repo.repo.display()))?;
            println!("created a Cradle repository in {}", repo.repo.display());
        }
        RepoCommand::Snapshots { repo, json } => {
            let (r, _) = open_repo(&repo)?;
            let all = r.snapshots_oldest_first()?;
            if json {
                let v: Vec<serde_json::Value> = all
                    .iter()
                    .map(|(id, s)| {
                        serde_json::json!({
                            "id": id.to_hex(),
                            "udid": s.device.udid,
                            "device_name": s.device.device_name,
                            "product_type": s.device.product_type,
                            "product_version": s.device.product_version,
                            "kind": kind_name(s.kind),
                            "phone_date_ms": s.phone_date,
                            "box_finished_ms": s.box_finished,
                            "parent": (!s.parent.is_zero()).then(|| s.parent.to_hex()),
                            "full": s.is_full_backup,
                            "files": s.counts.all_files(),
                            "dirs": s.counts.dirs,
                            "links": s.counts.links,
                            "content_bytes": s.content_bytes,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (id, s) in &all {
                    println!(
                        "{}  {}  {}  {} ({})  {}  {} files  {:.1} MB",
                        &id.to_hex()[..12],
                        date(s.phone_date),
                        s.device.udid,
                        s.device.device_name,
                        s.device.product_type,
                        kind_name(s.kind),
                        s.counts.all_files(),
                        s.content_bytes as f64 / 1e6
                    );
                }
                if all.is_empty() {
                    eprintln!("no snapshots yet");
                }
            }
        }
        RepoCommand::Ls {
            repo,
            snapshot,
            path,
        } => {
            let (r, _) = open_repo(&repo)?;
            let (_, rec) = resolve(&r, &snapshot)?;
            let mut rd = r.file_table_reader(&rec.file_table);
            while let Some(e) = rd.next_entry(&r)? {
                let p = entry_path(&e);
                if path.as_deref().is_some_and(|want| !p.starts_with(want)) {
                    continue;
                }
                let k = match (&e.row, &e.content) {
                    (Some(row), _) if row.flags == 2 => 'd',
                    (Some(row), _) if row.flags == 4 => 'l',
                    (_, Content::Absent) => '!',
                    (_, Content::Raw(_)) => 'r',
                    _ => '-',
                };
                println!("{k} {:>12} {p}", entry_size(&e));
            }
        }
        RepoCommand::Diff {
            repo,
            snapshot1,
            snapshot2,
        } => {
            let (r, _) = open_repo(&repo)?;
            let (_, a) = resolve(&r, &snapshot1)?;
            let (_, b) = resolve(&r, &snapshot2)?;
            // Both tables are in the same order: merge them, one entry of each in memory.
            let mut ra = r.file_table_reader(&a.file_table);
            let mut rb = r.file_table_reader(&b.file_table);
            let (mut ea, mut eb) = (ra.next_entry(&r)?, rb.next_entry(&r)?);
            let (mut add, mut del, mut md) = (0, 0, 0);
            loop {
                let ord = match (&ea, &eb) {
                    (None, None) => break,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(x), Some(y)) => x.key().cmp(&y.key()),
                };
                match ord {
                    Ordering::Less => {
                        if let Some(x) = &ea {
                            del += 1;
                            println!("- {}", entry_path(x));
                        }
                        ea = ra.next_entry(&r)?;
                    }
                    Ordering::Greater => {
                        if let Some(y) = &eb {
                            add += 1;
                            println!("+ {}", entry_path(y));
                        }
                        eb = rb.next_entry(&r)?;
                    }
                    Ordering::Equal => {
                        if ea != eb {
                            md += 1;
                            if let Some(y) = &eb {
                                println!("M {}", entry_path(y));
                            }
                        }
                        ea = ra.next_entry(&r)?;
                        eb = rb.next_entry(&r)?;
                    }
                }
            }
            eprintln!("{add} added, {del} removed, {md} modified");
        }
        RepoCommand::Export {
            repo,
            snapshot,
            out,
        } => {
            let (r, _) = open_repo(&repo)?;
            let (id, rec) = resolve(&r, &snapshot)?;
            let t = Instant::now();
            let st = export(&r, &rec, &out)
                .with_context(|| format!("exporting snapshot {}", &id.to_hex()[..12]))?;
            println!(
                "exported snapshot {} to {}: {} files, {} bytes in {:.2} s",
                &id.to_hex()[..12],
                out.join(&rec.device.udid).display(),
                st.files,
                st.bytes,
                t.elapsed().as_secs_f64()
            );
        }
        RepoCommand::Extract {
            repo,
            snapshot,
            domain,
            path,
            out,
        } => {
            let (r, _) = open_repo(&repo)?;
            let (id, rec) = resolve(&r, &snapshot)?;
            if rec.kind == SnapshotKind::Raw {
                bail!(
                    "snapshot {} is raw (its backup password was unknown): export it and read it \
                     with its own password (`cradle backup-folder extract`)",
                    &id.to_hex()[..12]
                );
            }
            let filter = Filter::new(domain.as_deref(), path.as_deref())
                .context("--domain/--path is not a valid glob")?;
            // The export goes to local temporary space, then the folder reader's extract
            // (symlink-safe, confined to OUT) decrypts from it.
            let tmp = tempfile::Builder::new()
                .prefix("cradle-extract-")
                .tempdir()
                .context("local temporary space")?;
            // A damaged data file is left out of the export; the others still extract.
            let (_, damaged) = export_skipping_damaged(&r, &rec, tmp.path())?;
            for (file, why) in &damaged {
                eprintln!("warning: {file} is damaged and cannot be extracted: {why}");
            }
            let folder = BackupFolder::open(&tmp.path().join(&rec.device.udid))?;
            let open = if folder.is_encrypted() {
                let keys = folder
                    .keybag()?
                    .unlock_with_kek(&rec.backup_kek.0)
                    .map_err(|e| anyhow::anyhow!("the snapshot's recorded key: {e}"))?;
                folder.open_with_keys(keys)?
            } else {
                folder.unlock(None)?
            };
            let st = open.extract(&filter, &out, &mut |_, _| {})?;
            println!(
                "extracted {} files, {} directories, {} symlinks ({} bytes) into {}",
                st.files,
                st.directories,
                st.symlinks,
                st.bytes,
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(cradle::store::prune::civil_from_days(0), (1970, 1, 1));
        assert_eq!(cradle::store::prune::civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(date(86_400_000 + 3_661_000), "1970-01-02 01:01:01");
    }
}
