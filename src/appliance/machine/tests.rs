//! Transition tables: each case is a sequence of (seconds, event) and what must come out after
//! each step (a screen predicate and the kinds of actions, in order).

use super::*;

const U1: &str = "00008110-000A1B2C3D4E5F60";
const U2: &str = "00008030-001122334455667788";

fn t0() -> Instant {
    // A fixed base; only differences matter.
    Instant::now()
}

struct Rig {
    t0: Instant,
    m: Appliance,
}

impl Rig {
    fn new(allow: Option<&[&str]>) -> Self {
        let t0 = t0();
        let config = MachineConfig {
            allow: allow.map(|a| a.iter().map(|s| s.to_string()).collect()),
        };
        Rig {
            t0,
            m: Appliance::new(config, t0, 1_800_000_000),
        }
    }
    fn at(&self, s: u64) -> Instant {
        self.t0 + Duration::from_secs(s)
    }
    fn ev(&mut self, s: u64, e: Event) -> Vec<Action> {
        let now = self.at(s);
        self.m.handle(now, e)
    }
    fn screen(&self, s: u64) -> Screen {
        self.m.screen(self.at(s))
    }
    /// Started with a Cradle drive: Ready at second 1.
    fn ready() -> Self {
        let mut r = Rig::new(None);
        started(&mut r);
        r
    }
    /// U1 plugged in at second 2: job 1 is connecting.
    fn connecting() -> Self {
        let mut r = Rig::ready();
        r.ev(2, attach(U1));
        r
    }
    /// U1 identified at second 3 with encrypted backups: job 1 is backing up.
    fn backing_up() -> Self {
        let mut r = Rig::connecting();
        r.ev(3, job(1, ident(true)));
        r
    }
    /// Everything received at second 4: job 1 is saving.
    fn received() -> Self {
        let mut r = Rig::backing_up();
        r.ev(4, job(1, JobEvent::Received { files: 1, bytes: 1 }));
        r
    }
}

fn drive(kind: DriveKind) -> Event {
    Event::DriveAttached {
        kind,
        free_bytes: 500_000_000_000,
        history: BTreeMap::new(),
    }
}

fn attach(u: &str) -> Event {
    Event::PhoneAttached { udid: u.into() }
}

fn detach(u: &str) -> Event {
    Event::PhoneDetached { udid: u.into() }
}

fn job(id: JobId, e: JobEvent) -> Event {
    Event::Job(id, e)
}

fn ident(enc: bool) -> JobEvent {
    JobEvent::Identified {
        name: "Anna\u{2019}s iPhone".into(),
        will_encrypt: enc,
    }
}

fn verified(known: bool) -> JobEvent {
    JobEvent::Verified {
        new_bytes: 1234,
        password_known: known,
        encrypted: true,
        snapshot: Some("ab".repeat(32)),
    }
}

/// Short names of actions, for compact tables.
fn kinds(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::StartJob { job, .. } => format!("start{job}"),
            Action::EnableEncryption { job } => format!("encrypt{job}"),
            Action::Backup { job } => format!("backup{job}"),
            Action::Cancel { job } => format!("cancel{job}"),
            Action::ReleaseDrive { job: None } => "release".into(),
            Action::ReleaseDrive { job: Some(j) } => format!("release{j}"),
            Action::Record(r) => format!(
                "log-{}{}",
                r.event,
                r.result
                    .as_deref()
                    .map(|x| format!(":{x}"))
                    .unwrap_or_default()
            ),
        })
        .collect()
}

/// The screen's kind as a word.
fn kind(s: &Screen) -> String {
    match s {
        Screen::Boot { .. } => "boot".into(),
        Screen::NoDrive => "no-drive".into(),
        Screen::Ready { .. } => "ready".into(),
        Screen::PhoneFound { .. } => "found".into(),
        Screen::Trust { .. } => "trust".into(),
        Screen::Passcode { seconds_left } => format!("passcode{seconds_left}"),
        Screen::EnablingEncryption => "encrypting".into(),
        Screen::BackingUp(_) => "backing-up".into(),
        Screen::Saving => "saving".into(),
        Screen::Verifying { .. } => "verifying".into(),
        Screen::Done { .. } => "done".into(),
        Screen::StoredRaw { .. } => "stored-raw".into(),
        Screen::Error(e) => format!("error:{e:?}"),
    }
}

/// Runs a table: each row is (second, event, expected screen kind, expected actions).
fn run(rig: &mut Rig, rows: &[(u64, Event, &str, &[&str])]) {
    for (i, (s, e, want_screen, want_actions)) in rows.iter().enumerate() {
        let got = kinds(&rig.ev(*s, e.clone()));
        assert_eq!(got, *want_actions, "row {i} ({e:?}): actions");
        assert_eq!(
            kind(&rig.screen(*s)),
            *want_screen,
            "row {i} ({e:?}): screen"
        );
    }
}

fn started(rig: &mut Rig) {
    run(
        rig,
        &[
            (0, Event::DefaultPassword { available: true }, "boot", &[]),
            (0, Event::Started, "no-drive", &[]),
            (1, drive(DriveKind::Cradle), "ready", &[]),
        ],
    );
}

#[test]
fn happy_path_with_encryption_turned_on() {
    let mut r = Rig::ready();
    run(
        &mut r,
        &[
            (2, attach(U1), "found", &["log-start", "start1"]),
            (3, job(1, JobEvent::TrustPending), "trust", &[]),
            (5, job(1, JobEvent::TrustAccepted), "found", &[]),
            (6, job(1, ident(false)), "encrypting", &["encrypt1"]),
            (
                7,
                job(
                    1,
                    JobEvent::PasscodeRequested {
                        timeout: Duration::from_secs(60),
                    },
                ),
                "passcode60",
                &[],
            ),
            (
                8,
                job(1, JobEvent::EncryptionEnabled),
                "backing-up",
                &["backup1"],
            ),
            (
                10,
                job(
                    1,
                    JobEvent::Progress {
                        done_bytes: 10,
                        total_bytes: 100,
                    },
                ),
                "backing-up",
                &[],
            ),
            (
                20,
                job(
                    1,
                    JobEvent::Received {
                        files: 3,
                        bytes: 100,
                    },
                ),
                "saving",
                &[],
            ),
            (
                21,
                job(
                    1,
                    JobEvent::Verifying {
                        permille: Some(500),
                    },
                ),
                "verifying",
                &[],
            ),
            (
                22,
                job(1, verified(true)),
                "verifying",
                &["log-end:ok", "release1"],
            ),
            (23, job(1, JobEvent::Unmounted), "done", &[]),
            (30, detach(U1), "ready", &[]),
        ],
    );
    let p = &r.m.phones()[0];
    assert_eq!(p.name.as_deref(), Some("Anna\u{2019}s iPhone"));
    assert_eq!(p.last_backup, Some(1_800_000_022));
    assert_eq!(p.last_result.as_deref(), Some("ok"));
    match r.screen(30 + 3600) {
        Screen::Ready { phones, .. } => {
            assert_eq!(phones.len(), 1);
            assert_eq!(
                phones[0].last_verified_age,
                Some(Duration::from_secs(3600 + 8))
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn passcode_counts_down_with_time_and_goes_when_dismissed() {
    let mut r = Rig::backing_up();
    r.ev(
        4,
        job(
            1,
            JobEvent::PasscodeRequested {
                timeout: Duration::from_secs(100),
            },
        ),
    );
    assert_eq!(kind(&r.screen(4)), "passcode100");
    assert_eq!(kind(&r.screen(54)), "passcode50");
    assert_eq!(kind(&r.screen(500)), "passcode0");
    r.ev(60, job(1, JobEvent::PasscodeDismissed));
    assert_eq!(kind(&r.screen(60)), "backing-up");
}

#[test]
fn encrypted_phone_goes_straight_to_backup_and_no_password_means_no_encryption_step() {
    let mut r = Rig::connecting();
    assert_eq!(kinds(&r.ev(3, job(1, ident(true)))), ["backup1"]);

    let mut r = Rig::new(None);
    run(
        &mut r,
        &[
            (0, Event::DefaultPassword { available: false }, "boot", &[]),
            (0, Event::Started, "no-drive", &[]),
            (1, drive(DriveKind::Labelled), "ready", &[]),
            (2, attach(U1), "found", &["log-start", "start1"]),
            (3, job(1, ident(false)), "backing-up", &["backup1"]),
        ],
    );
}

#[test]
fn verified_backups_end_on_their_screen_only_after_unmount() {
    let unencrypted = JobEvent::Verified {
        new_bytes: 1,
        password_known: false,
        encrypted: false,
        snapshot: None,
    };
    // (verified event, actions, screen, state, last result). An unknown password is stored raw
    // and says so; an unencrypted backup (no box password) is not "unknown password".
    let cases: [(JobEvent, [&str; 2], &str, &str, &str); 3] = [
        (
            verified(true),
            ["log-end:ok", "release1"],
            "done",
            "done",
            "ok",
        ),
        (
            verified(false),
            ["log-end:ok-raw", "release1"],
            "stored-raw",
            "done-raw",
            "ok-raw",
        ),
        (
            unencrypted,
            ["log-end:ok", "release1"],
            "done",
            "done",
            "ok",
        ),
    ];
    for (event, acts, screen, state, result) in cases {
        let mut r = Rig::received();
        assert_eq!(kinds(&r.ev(5, job(1, event))), acts);
        assert_eq!(kind(&r.screen(5)), "verifying");
        assert!(!r.m.safe_to_remove());
        assert!(r.ev(6, job(1, JobEvent::Unmounted)).is_empty());
        assert!(r.m.safe_to_remove());
        assert_eq!(kind(&r.screen(6)), screen);
        assert_eq!(r.m.state_name(), state);
        assert_eq!(r.m.phones()[0].last_result.as_deref(), Some(result));
    }
    // An Unmounted before Verified means nothing.
    let mut r = Rig::connecting();
    r.ev(3, job(1, JobEvent::Unmounted));
    assert_eq!(kind(&r.screen(3)), "found");
}

#[test]
fn failures_map_to_their_screens() {
    let cases: Vec<(Failure, &str)> = vec![
        (Failure::TrustDenied, "error:TrustDenied"),
        (Failure::PhoneLocked, "error:PhoneLockedTooLong"),
        (Failure::EncryptionRefused, "error:PhoneLockedTooLong"),
        (Failure::DriveFull, "error:DriveFull"),
        (Failure::PhoneGone, "error:PhoneUnplugged"),
        (Failure::DriveGone, "error:DriveRemoved"),
        (
            Failure::Other {
                code: "E-X".into(),
                message: "m".into(),
            },
            "error:Other { code: \"E-X\" }",
        ),
    ];
    for (f, want) in cases {
        let mut r = Rig::connecting();
        let code = f.code();
        let acts = kinds(&r.ev(3, job(1, JobEvent::Failed(f))));
        assert_eq!(acts, [format!("log-end:{code}"), "release".to_string()]);
        assert_eq!(kind(&r.screen(3)), want);
        assert_eq!(r.m.phones()[0].last_result.as_deref(), Some(code.as_str()));
        // Unplugging clears the error; plugging in again starts a new job.
        run(
            &mut r,
            &[
                (4, detach(U1), "ready", &[]),
                (5, attach(U1), "found", &["log-start", "start2"]),
            ],
        );
    }
}

#[test]
fn phone_unplugged_mid_backup_cancels_and_ignores_late_events() {
    let mut r = Rig::ready();
    run(
        &mut r,
        &[
            (2, attach(U1), "found", &["log-start", "start1"]),
            (3, job(1, ident(true)), "backing-up", &["backup1"]),
            (
                4,
                detach(U1),
                "error:PhoneUnplugged",
                &["cancel1", "log-end:phone-unplugged", "release"],
            ),
            // The abandoned job's own failure report comes late: ignored.
            (
                5,
                job(1, JobEvent::Failed(Failure::PhoneGone)),
                "error:PhoneUnplugged",
                &[],
            ),
            (5, job(1, JobEvent::Unmounted), "error:PhoneUnplugged", &[]),
            (6, attach(U1), "found", &["log-start", "start2"]),
            (7, job(1, ident(true)), "found", &[]),
            (7, job(2, ident(true)), "backing-up", &["backup2"]),
        ],
    );
}

#[test]
fn phone_may_leave_once_everything_is_received() {
    let mut r = Rig::received();
    assert!(r.ev(5, detach(U1)).is_empty());
    assert_eq!(kind(&r.screen(5)), "saving");
    r.ev(6, job(1, verified(true)));
    r.ev(7, job(1, JobEvent::Unmounted));
    assert_eq!(kind(&r.screen(7)), "done");
}

#[test]
fn drive_removed_mid_backup_then_next_drive_retries_the_phone() {
    let mut r = Rig::ready();
    run(
        &mut r,
        &[
            (2, attach(U1), "found", &["log-start", "start1"]),
            (3, job(1, ident(true)), "backing-up", &["backup1"]),
            (
                4,
                Event::DriveRemoved,
                "error:DriveRemoved",
                &["cancel1", "log-end:drive-removed"],
            ),
            (
                5,
                job(1, JobEvent::Failed(Failure::DriveGone)),
                "error:DriveRemoved",
                &[],
            ),
            (
                6,
                drive(DriveKind::Cradle),
                "found",
                &["log-start", "start2"],
            ),
        ],
    );
}

#[test]
fn drive_removed_while_idle_or_after_verify() {
    let mut r = Rig::ready();
    run(&mut r, &[(2, Event::DriveRemoved, "no-drive", &[])]);
    let mut r = Rig::received();
    r.ev(5, job(1, verified(true)));
    // Verified and recorded before the pull: the backup counts.
    assert!(kinds(&r.ev(6, Event::DriveRemoved)).is_empty());
    assert_eq!(kind(&r.screen(6)), "done");
}

#[test]
fn unknown_or_unreadable_drive_is_never_used() {
    for (k, want) in [
        (DriveKind::Unknown, "error:NotCradleDrive"),
        (DriveKind::Unreadable, "error:DriveUnreadable"),
    ] {
        let mut r = Rig::new(None);
        run(
            &mut r,
            &[
                (0, Event::Started, "no-drive", &[]),
                (1, drive(k), want, &[]),
                (2, attach(U1), want, &[]),
                (3, Event::DriveRemoved, "no-drive", &[]),
                (
                    4,
                    drive(DriveKind::Labelled),
                    "found",
                    &["log-start", "start1"],
                ),
            ],
        );
    }
}

#[test]
fn phone_before_drive_and_before_start_waits() {
    let mut r = Rig::new(None);
    run(
        &mut r,
        &[
            (0, attach(U1), "boot", &[]),
            (0, Event::Started, "no-drive", &[]),
            (
                1,
                drive(DriveKind::Cradle),
                "found",
                &["log-start", "start1"],
            ),
        ],
    );
}

#[test]
fn two_phones_take_turns() {
    let mut r = Rig::ready();
    run(
        &mut r,
        &[
            (2, attach(U1), "found", &["log-start", "start1"]),
            (3, attach(U2), "found", &[]),
            (4, job(1, ident(true)), "backing-up", &["backup1"]),
            (
                5,
                job(1, JobEvent::Received { files: 1, bytes: 1 }),
                "saving",
                &[],
            ),
            (
                6,
                job(1, verified(true)),
                "verifying",
                &["log-end:ok", "release1"],
            ),
            // The first is done: the second starts at once.
            (
                7,
                job(1, JobEvent::Unmounted),
                "found",
                &["log-start", "start2"],
            ),
            (
                8,
                job(2, JobEvent::Failed(Failure::TrustDenied)),
                "error:TrustDenied",
                &["log-end:trust-denied", "release"],
            ),
            // U1 leaving does not clear U2's error.
            (9, detach(U1), "error:TrustDenied", &[]),
            (10, detach(U2), "ready", &[]),
        ],
    );
    assert_eq!(r.m.phones().len(), 2);
}

#[test]
fn a_finished_phone_is_not_backed_up_again_until_replugged() {
    let mut r = Rig::received();
    r.ev(5, job(1, verified(true)));
    r.ev(6, job(1, JobEvent::Unmounted));
    // Drive out and in again with the phone still there: no new job.
    assert!(kinds(&r.ev(7, Event::DriveRemoved)).is_empty());
    assert!(kinds(&r.ev(8, drive(DriveKind::Cradle))).is_empty());
    assert_eq!(kinds(&r.ev(9, detach(U1))), Vec::<String>::new());
    assert_eq!(kinds(&r.ev(10, attach(U1))), ["log-start", "start2"]);
}

#[test]
fn allow_list_ignores_other_phones() {
    let mut r = Rig::new(Some(&[U2]));
    started(&mut r);
    run(
        &mut r,
        &[
            (2, attach(U1), "ready", &[]),
            (3, attach(U2), "found", &["log-start", "start1"]),
        ],
    );
    let p = r.m.phones();
    assert!(p.iter().any(|p| p.udid == U1 && p.ignored));
    assert!(p.iter().any(|p| p.udid == U2 && !p.ignored));
}

#[test]
fn history_from_the_drive_fills_the_ready_screen_newest_first() {
    let mut r = Rig::new(None);
    r.ev(0, Event::Started);
    let mut history = BTreeMap::new();
    history.insert(U1.to_string(), ("Old".to_string(), 1_700_000_000));
    history.insert(U2.to_string(), ("New".to_string(), 1_799_999_000));
    r.ev(
        1,
        Event::DriveAttached {
            kind: DriveKind::Cradle,
            free_bytes: 7,
            history,
        },
    );
    match r.screen(1) {
        Screen::Ready { phones, free_bytes } => {
            assert_eq!(free_bytes, 7);
            let names: Vec<_> = phones.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["New", "Old"]);
            assert_eq!(phones[0].last_verified_age, Some(Duration::from_secs(1001)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn phone_names_are_clipped_and_cleaned() {
    let mut r = Rig::connecting();
    r.ev(
        3,
        job(
            1,
            JobEvent::Identified {
                name: format!("a\u{7}b{}", "x".repeat(500)),
                will_encrypt: true,
            },
        ),
    );
    let name = r.m.phones()[0].name.clone().unwrap();
    assert_eq!(name.chars().count(), MAX_NAME_LEN);
    assert!(name.starts_with("abx"));
}

#[test]
fn progress_figures_reach_the_screen() {
    let mut r = Rig::backing_up();
    r.ev(
        4,
        job(
            1,
            JobEvent::Progress {
                done_bytes: 0,
                total_bytes: 1000,
            },
        ),
    );
    r.ev(
        14,
        job(
            1,
            JobEvent::Progress {
                done_bytes: 500,
                total_bytes: 1000,
            },
        ),
    );
    match r.screen(14) {
        Screen::BackingUp(p) => {
            assert_eq!(p.permille, 500);
            assert_eq!(p.done_bytes, 500);
            assert!(p.eta.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.m.state_name(), "backing-up");
}
