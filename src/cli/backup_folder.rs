//! `cradle backup-folder …`: inspect, verify and extract any standard backup folder.

use anyhow::Context;
use clap::{Args, Subcommand};
use cradle::ios_backup::folder::{BackupFolder, Filter, FolderError, OpenBackup};
use cradle::ios_backup::manifest_db;
use cradle::password::{resolve_password, Password};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum BackupFolderCommand {
    /// What the backup is: device, iOS version, date, encryption, and (with the password) its contents.
    Info(FolderArgs),
    /// List the backup's files, directories and symlinks.
    Ls {
        #[command(flatten)]
        folder: FolderArgs,
        /// Only domains matching this glob (e.g. 'AppDomain-*').
        #[arg(long)]
        domain: Option<String>,
        /// Only relative paths matching this glob (e.g. 'Library/SMS/*').
        #[arg(long)]
        path: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Decrypt files into OUT/<domain>/<relativePath>.
    Extract {
        #[command(flatten)]
        folder: FolderArgs,
        /// A new or empty folder to write into.
        #[arg(long)]
        out: PathBuf,
        /// Only domains matching this glob.
        #[arg(long)]
        domain: Option<String>,
        /// Only relative paths matching this glob.
        #[arg(long)]
        path: Option<String>,
    },
    /// Check a password: exit 0 if it opens the backup, 1 if it does not.
    VerifyPassword(FolderArgs),
    /// Print the fileID (the data file's name, `<xx>/<fileID>`) of a domain and relative path.
    FileId {
        /// The domain, e.g. HomeDomain or AppDomain-com.example.app.
        domain: String,
        /// The path inside the domain, e.g. Library/SMS/sms.db.
        relative_path: String,
    },
}

#[derive(Args, Debug)]
pub struct FolderArgs {
    /// The backup folder (holding Manifest.plist), or a folder holding exactly one backup.
    pub folder: PathBuf,
    /// Read the password from this file (first line; `-` = stdin). Also CRADLE_PASSWORD_FILE.
    /// Without either, the password is asked for on the terminal.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl FolderArgs {
    fn open(&self) -> anyhow::Result<BackupFolder> {
        Ok(BackupFolder::open(&self.folder)?)
    }

    fn password(&self) -> anyhow::Result<Password> {
        Ok(resolve_password(
            self.password_file.as_deref(),
            "Backup password: ",
        )?)
    }

    /// Opens the backup, asking for the password only when it is encrypted.
    fn unlock(&self, folder: &BackupFolder) -> anyhow::Result<OpenBackup> {
        if folder.is_encrypted() {
            let pw = self.password()?;
            Ok(folder.unlock(Some(&pw))?)
        } else {
            Ok(folder.unlock(None)?)
        }
    }
}

pub fn run(c: BackupFolderCommand) -> anyhow::Result<ExitCode> {
    match c {
        BackupFolderCommand::Info(a) => info(&a),
        BackupFolderCommand::Ls {
            folder,
            domain,
            path,
            json,
        } => ls(&folder, domain.as_deref(), path.as_deref(), json),
        BackupFolderCommand::Extract {
            folder,
            out,
            domain,
            path,
        } => extract(&folder, &out, domain.as_deref(), path.as_deref()),
        BackupFolderCommand::VerifyPassword(a) => {
            let folder = a.open()?;
            if !folder.is_encrypted() {
                println!("this backup is not encrypted: no password needed");
                return Ok(ExitCode::SUCCESS);
            }
            let pw = a.password()?;
            match folder.verify_password(&pw) {
                Ok(_) => {
                    println!("password OK");
                    Ok(ExitCode::SUCCESS)
                }
                Err(FolderError::WrongPassword) => {
                    println!("wrong password");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        BackupFolderCommand::FileId {
            domain,
            relative_path,
        } => {
            println!("{}", cradle::ios_backup::file_id(&domain, &relative_path));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn info(a: &FolderArgs) -> anyhow::Result<ExitCode> {
    let folder = a.open()?;
    let m = folder.manifest();
    let mut out = std::io::stdout().lock();
    writeln!(out, "folder:        {}", folder.root().display())?;
    for (label, key) in [
        ("device name:", "DeviceName"),
        ("udid:", "UniqueDeviceID"),
        ("product type:", "ProductType"),
        ("iOS version:", "ProductVersion"),
        ("build:", "BuildVersion"),
        ("serial number:", "SerialNumber"),
    ] {
        if let Some(v) = m.lockdown_string(key) {
            writeln!(out, "{label:<14} {v}")?;
        }
    }
    if let Some(d) = m.date() {
        writeln!(out, "date:          {}", d.to_xml_format())?;
    }
    writeln!(
        out,
        "encrypted:     {}",
        if folder.is_encrypted() { "yes" } else { "no" }
    )?;
    if let Some(kb) = folder.keybag().ok().filter(|_| folder.is_encrypted()) {
        if let Some(dpic) = kb.dpic() {
            writeln!(
                out,
                "key rounds:    {dpic} (PBKDF2-SHA256) + {} (PBKDF2-SHA1)",
                kb.iterations().unwrap_or(0)
            )?;
        }
    }
    match folder.status() {
        Some(s) => writeln!(out, "state:         {}", s.snapshot_state())?,
        None => writeln!(out, "state:         no Status.plist (incomplete backup?)")?,
    }
    if folder.is_encrypted()
        && a.password_file.is_none()
        && std::env::var_os("CRADLE_PASSWORD_FILE").is_none()
    {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            writeln!(out, "contents:      (give --password-file to count files)")?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    drop(out);
    let open = a.unlock(&folder)?;
    let c = open.manifest_db().kind_counts()?;
    let mut bytes = 0u64;
    for row in open.rows() {
        let row = row?;
        if row.flags == manifest_db::FLAG_FILE {
            bytes += row.file.size;
        }
    }
    println!(
        "contents:      {} files ({}), {} directories, {} symlinks",
        c.files,
        human_bytes(bytes),
        c.directories,
        c.symlinks
    );
    Ok(ExitCode::SUCCESS)
}

fn ls(
    a: &FolderArgs,
    domain: Option<&str>,
    path: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let folder = a.open()?;
    let open = a.unlock(&folder)?;
    let filter = Filter::new(domain, path).context("bad --domain or --path pattern")?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for row in open.rows() {
        let row = row?;
        if !filter.matches(&row.domain, &row.relative_path) {
            continue;
        }
        let kind = match row.flags {
            manifest_db::FLAG_FILE => "file",
            manifest_db::FLAG_DIRECTORY => "dir",
            manifest_db::FLAG_SYMLINK => "link",
            _ => "other",
        };
        if json {
            let v = serde_json::json!({
                "kind": kind,
                "domain": row.domain,
                "path": row.relative_path,
                "file_id": row.file_id,
                "size": row.file.size,
                "mode": format!("{:o}", row.file.mode),
                "mtime": row.file.last_modified,
                "protection_class": row.file.protection_class,
                "target": row.file.target,
            });
            writeln!(out, "{v}")?;
        } else {
            let target = row
                .file
                .target
                .as_deref()
                .map(|t| format!(" -> {t}"))
                .unwrap_or_default();
            writeln!(
                out,
                "{kind:<4} {:>12} {}/{}{target}",
                row.file.size, row.domain, row.relative_path
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn extract(
    a: &FolderArgs,
    out: &std::path::Path,
    domain: Option<&str>,
    path: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let folder = a.open()?;
    let open = a.unlock(&folder)?;
    let filter = Filter::new(domain, path).context("bad --domain or --path pattern")?;
    let stats = open.extract(&filter, out, &mut |_, _| {})?;
    println!(
        "extracted {} files ({}), {} directories, {} symlinks into {}",
        stats.files,
        human_bytes(stats.bytes),
        stats.directories,
        stats.symlinks,
        out.display()
    );
    if stats.size_mismatches > 0 {
        println!(
            "note: {} files decrypted to a length other than the Size in Manifest.db; the decrypted bytes were kept",
            stats.size_mismatches
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `1.5 MB`-style sizes (powers of 1000, as the box's screen shows them).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
