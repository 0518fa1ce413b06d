//! A snapshot repository driven through the `cradle` binary, as the process tests use it: `init`
//! with the fast test KDF, commands with `--repo` and `--password-file`, simulated-phone backups.
//! A test adds the methods of its own to [`Repo`].

use super::{password_file, run_cradle, s, Output};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one `cradle` command of these tests may take.
pub const LIMIT: Duration = Duration::from_secs(300);

/// `cradle init` of `repo` with the password in `pw` and the fast test KDF.
pub fn init_args<'a>(repo: &'a Path, pw: &'a Path) -> [&'a str; 6] {
    [
        "init",
        "--repo",
        s(repo),
        "--password-file",
        s(pw),
        "--insecure-fast-kdf",
    ]
}

/// `cradle backup` of the simulated phone `spec` (`PROFILE:SEED:DAY`) into `target` (`to` is
/// `--to-repo` or `--to-folder`) with the password in `pw`, pairing state in `state`; `encrypt`
/// turns the phone's backup encryption on (otherwise it is left as it is).
pub fn sim_backup_to<'a>(
    spec: &'a str,
    dpic: &'a str,
    to: &'a str,
    target: &'a Path,
    state: &'a Path,
    pw: &'a Path,
    encrypt: bool,
) -> Vec<&'a str> {
    let mut a = vec![
        "backup",
        "--sim",
        spec,
        "--sim-dpic",
        dpic,
        to,
        s(target),
        "--state-dir",
        s(state),
    ];
    if encrypt {
        a.push("--encrypt");
    }
    a.extend_from_slice(&["--password-file", s(pw)]);
    a
}

/// `cradle backup` of the simulated phone `spec` into the repository `repo`, encrypted with the
/// password in `pw`, pairing state in `state`.
pub fn sim_backup_args<'a>(
    spec: &'a str,
    dpic: &'a str,
    repo: &'a Path,
    state: &'a Path,
    pw: &'a Path,
) -> Vec<&'a str> {
    sim_backup_to(spec, dpic, "--to-repo", repo, state, pw, true)
}

/// The `snapshot …` line of a backup into a repository.
pub fn snapshot_line(o: &Output) -> &str {
    o.stdout
        .lines()
        .find(|l| l.starts_with("snapshot "))
        .unwrap_or_else(|| panic!("no snapshot line: {o:?}"))
}

/// The bytes the phone sent for data files, from a snapshot line ("… (M new, B bytes) …").
pub fn sent_bytes(line: &str) -> u64 {
    let b = line
        .split(" new, ")
        .nth(1)
        .unwrap_or_else(|| panic!("no byte count in {line}"));
    b.split(' ').next().unwrap().parse().unwrap()
}

/// A repository `tmp/Cradle` with its password file; backups keep their state under `state`.
pub struct Repo {
    pub path: PathBuf,
    pub pw: PathBuf,
    pub state: PathBuf,
}

impl Repo {
    /// `cradle init` with `password` (written to `tmp/password`).
    pub fn init(tmp: &Path, password: &str) -> Repo {
        let pw = password_file(tmp, password);
        let path = tmp.join("Cradle");
        let o = run_cradle(&init_args(&path, &pw), LIMIT);
        assert!(o.success, "init: {o:?}");
        Repo {
            path,
            pw,
            state: tmp.join("state"),
        }
    }

    /// Bytes of every file under the repository folder.
    pub fn size(&self) -> u64 {
        super::dir_size(&self.path)
    }

    /// Runs a command with `--repo` and the password file appended.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_pw(args, &self.pw)
    }

    /// Runs a command with `--repo` and the password file `pw` appended.
    pub fn run_pw(&self, args: &[&str], pw: &Path) -> Output {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--repo", s(&self.path), "--password-file", s(pw)]);
        run_cradle(&a, LIMIT)
    }

    /// A command's JSON output, the command asserted successful.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let o = self.run(args);
        assert!(o.success, "{args:?}: {o:?}");
        serde_json::from_str(o.stdout.trim()).unwrap()
    }

    /// `cradle backup --sim SPEC --to-repo` with pairing state in `state`, asserted successful.
    pub fn sim_backup(&self, spec: &str, dpic: &str, state: &Path) -> Output {
        let o = run_cradle(
            &sim_backup_args(spec, dpic, &self.path, state, &self.pw),
            LIMIT,
        );
        assert!(o.success, "backup --to-repo {spec}: {o:?}");
        o
    }
}
