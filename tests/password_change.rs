//! `cradle password change-phone` against the simulated phone, as processes: the phone, the
//! password sealed on the box and the repository's key file move to the new password together,
//! old snapshots stay readable; a wrong old password is refused and changes nothing.

mod common;

use common::repo::{init_args, sim_backup_args, snapshot_line, LIMIT};
use common::{run_with_timeout, s, Output};
use std::path::{Path, PathBuf};

const DPIC: &str = "1000";
const OLD: &str = "old backup password";
const NEW: &str = "new backup password";

struct Box {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    state: PathBuf,
    secrets: PathBuf,
    old: PathBuf,
    new: PathBuf,
}

impl Box {
    fn new() -> Box {
        let tmp = tempfile::tempdir().unwrap();
        let pw = |name: &str, text: &str| {
            let p = tmp.path().join(name);
            std::fs::write(&p, format!("{text}\n")).unwrap();
            p
        };
        let old = pw("old", OLD);
        let new = pw("new", NEW);
        let b = Box {
            repo: tmp.path().join("Cradle"),
            state: tmp.path().join("state"),
            secrets: tmp.path().join("secrets"),
            old,
            new,
            tmp,
        };
        let o = b.cradle(&init_args(&b.repo, &b.old));
        assert!(o.success, "init: {o:?}");
        b
    }

    fn cradle(&self, args: &[&str]) -> Output {
        let mut c = common::cradle();
        c.args(args)
            .env_remove("CRADLE_PASSWORD_FILE")
            .env("CRADLE_SECRETS_DIR", &self.secrets)
            .env("CRADLE_SECRETS_ALLOW_HOST_KEY", "true")
            .env_remove("CRADLE_TPM2_DEVICE")
            .env(
                "CRADLE_SECRETS_HOST_KEY_FILE",
                self.tmp.path().join("host.secret"),
            );
        let o = run_with_timeout(c, LIMIT);
        for p in [OLD, NEW] {
            assert!(!o.stdout.contains(p) && !o.stderr.contains(p), "{o:?}");
        }
        o
    }

    /// `cradle backup --to-repo` of day `day`: the snapshot line.
    fn backup(&self, day: u32, pw: &Path) -> Output {
        let spec = format!("tiny:5:{day}");
        self.cradle(&sim_backup_args(&spec, DPIC, &self.repo, &self.state, pw))
    }

    fn change(&self, old: &Path, extra: &[&str]) -> Output {
        let mut a = vec![
            "password",
            "change-phone",
            "--sim",
            "tiny:5:2",
            "--sim-dpic",
            DPIC,
            "--state-dir",
            s(&self.state),
            "--old-password-file",
            s(old),
            "--new-password-file",
            s(&self.new),
        ];
        a.extend_from_slice(extra);
        self.cradle(&a)
    }

    fn snapshots(&self, pw: &Path) -> Output {
        self.cradle(&[
            "snapshots",
            "--repo",
            s(&self.repo),
            "--password-file",
            s(pw),
            "--json",
        ])
    }
}

/// Whether this machine can seal with the host key (systemd-creds present, no TPM in the way):
/// probed with a real `password set` and `forget` on a slot no test uses.
fn seal_works(b: &Box) -> bool {
    let probe = b.tmp.path().join("probe");
    std::fs::write(&probe, "probe password\n").unwrap();
    let o = b.cradle(&[
        "password",
        "set",
        "--udid",
        "SEAL-PROBE",
        "--password-file",
        s(&probe),
    ]);
    let ok = o.success && o.stdout.contains("host-key");
    if !ok {
        eprintln!("skipping the sealed-password checks: host-key sealing unavailable: {o:?}");
    }
    let _ = b.cradle(&["password", "forget", "--udid", "SEAL-PROBE"]);
    ok
}

#[test]
fn phone_sealed_password_and_repository_change_together() {
    let b = Box::new();
    let day1 = b.backup(1, &b.old);
    assert!(day1.success, "{day1:?}");
    assert!(snapshot_line(&day1).contains("(digested)"), "{day1:?}");
    let seal = seal_works(&b);
    let repo_arg = ["--repo", s(&b.repo)];
    let mut extra = repo_arg.to_vec();
    if !seal {
        extra.push("--no-seal");
    }
    let o = b.change(&b.old, &extra);
    assert!(o.success, "{o:?}");
    assert!(
        o.stdout
            .contains("now encrypts its backups with the new password"),
        "{o:?}"
    );
    assert!(o.stdout.contains("key file keys/"), "{o:?}");

    // The repository opens with the new password only.
    let snaps = b.snapshots(&b.new);
    assert!(snaps.success, "{snaps:?}");
    let v: serde_json::Value = serde_json::from_str(snaps.stdout.trim()).unwrap();
    let old_id = v[0]["id"].as_str().unwrap().to_string();
    let udid = v[0]["udid"].as_str().unwrap().to_string();
    assert!(!b.snapshots(&b.old).success);

    // The phone's next backup is encrypted with the new password: digested, not raw.
    let day2 = b.backup(2, &b.new);
    assert!(day2.success, "{day2:?}");
    assert!(snapshot_line(&day2).contains("(digested)"), "{day2:?}");

    // The snapshot taken before the change still exports, with the new password, and the
    // exported backup opens with the new password.
    let out = b.tmp.path().join("export");
    let o = b.cradle(&[
        "export",
        &old_id[..12],
        "--out",
        s(&out),
        "--repo",
        s(&b.repo),
        "--password-file",
        s(&b.new),
    ]);
    assert!(o.success, "{o:?}");
    assert!(out.join(&udid).join("Manifest.plist").is_file());

    if seal {
        let o = b.cradle(&["password", "status"]);
        assert!(o.success && o.stdout.contains(&udid), "{o:?}");
    }
}

#[test]
fn wrong_old_password_is_refused_and_changes_nothing() {
    let b = Box::new();
    let day1 = b.backup(1, &b.old);
    assert!(day1.success, "{day1:?}");
    let wrong = b.tmp.path().join("wrong");
    std::fs::write(&wrong, "not the password\n").unwrap();
    let keys_before = std::fs::read_dir(b.repo.join("keys")).unwrap().count();

    // With --repo the repository refuses first, before the phone is touched.
    let o = b.change(&wrong, &["--repo", s(&b.repo), "--no-seal"]);
    assert!(!o.success, "{o:?}");
    assert!(
        o.stderr.contains("wrong password for the repository"),
        "{o:?}"
    );

    // Without it the phone itself refuses.
    let seal = seal_works(&b);
    let o = b.change(&wrong, if seal { &[] } else { &["--no-seal"] });
    assert!(!o.success, "{o:?}");
    assert!(
        o.stderr
            .contains("the phone refused to change its backup password")
            && o.stderr.contains("Nothing was changed"),
        "{o:?}"
    );
    if seal {
        let st = b.cradle(&["password", "status"]);
        assert!(st.stdout.contains("no passwords stored"), "{st:?}");
    }

    // Nothing changed: the old password still opens the repository and the phone's next
    // backup still decrypts with it.
    assert_eq!(
        std::fs::read_dir(b.repo.join("keys")).unwrap().count(),
        keys_before
    );
    let day2 = b.backup(2, &b.old);
    assert!(day2.success, "{day2:?}");
    assert!(snapshot_line(&day2).contains("(digested)"), "{day2:?}");
}
