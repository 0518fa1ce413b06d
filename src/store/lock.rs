//! Locks (format.md §11): one writer at a time through `locks/writer`, created exclusively; readers
//! through `locks/reader-<HolderId>`; stale-lock rules; the writer's `.tmp` cleanup on taking the lock.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::caps::{LOCK_FILE_MAX, LOCK_STALE_FOREIGN_MS};
use super::codec::{check_str, put_bytes, DecodeError, Reader};
use super::ids::HolderId;
use super::repo::{RepoError, Repository};
use super::seal::{self, MAGIC_LOCK};
use super::storage::{Storage, StorageError};

/// Path of the writer lock.
pub const WRITER_LOCK: &str = "locks/writer";
/// Cap of a lock's hostname.
pub const HOSTNAME_MAX: u32 = 64;
/// Wait between two reads of an unreadable lock (§11 rule 4), in milliseconds.
pub const UNREADABLE_RECHECK_MS: u64 = 10_000;
/// How often a holder touches its lock's mtime (§11), in milliseconds.
pub const LOCK_REFRESH_MS: u64 = 5 * 60 * 1000;
/// What systemd-timesyncd creates once the clock is synchronized (and removes at boot).
pub const TIMESYNC_SYNCHRONIZED: &str = "/run/systemd/timesync/synchronized";

/// Why a lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPurpose {
    /// A backup's ingest.
    Ingest,
    /// Prune.
    Prune,
    /// Digest of a raw snapshot.
    Digest,
    /// Pins, key changes and other small edits.
    Admin,
    /// Index rebuild.
    Index,
    /// Format upgrade.
    Upgrade,
    /// A reader.
    Read,
}

impl LockPurpose {
    fn code(self) -> u8 {
        match self {
            LockPurpose::Ingest => 1,
            LockPurpose::Prune => 2,
            LockPurpose::Digest => 3,
            LockPurpose::Admin => 4,
            LockPurpose::Index => 5,
            LockPurpose::Upgrade => 6,
            LockPurpose::Read => 7,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => LockPurpose::Ingest,
            2 => LockPurpose::Prune,
            3 => LockPurpose::Digest,
            4 => LockPurpose::Admin,
            5 => LockPurpose::Index,
            6 => LockPurpose::Upgrade,
            7 => LockPurpose::Read,
            _ => return None,
        })
    }
}

/// The process facts a lock records, and what stale checks compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Process id.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot).
    pub pid_start: u64,
    /// `/proc/sys/kernel/random/boot_id` as 16 bytes.
    pub boot_id: [u8; 16],
    /// Host name (≤ 64 bytes).
    pub hostname: String,
}

/// A lock file's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Random per process.
    pub holder: HolderId,
    /// Why it is held.
    pub purpose: LockPurpose,
    /// Who holds it.
    pub facts: HostFacts,
    /// When it was created (ms).
    pub created: i64,
}

impl LockInfo {
    /// Encodes the payload.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        check_str(&self.facts.hostname, HOSTNAME_MAX, "hostname")?;
        let mut b = Vec::with_capacity(96);
        b.extend_from_slice(self.holder.as_bytes());
        b.push(self.purpose.code());
        b.extend_from_slice(&[0, 0, 0]);
        b.extend_from_slice(&self.facts.pid.to_le_bytes());
        b.extend_from_slice(&self.facts.pid_start.to_le_bytes());
        b.extend_from_slice(&self.facts.boot_id);
        put_bytes(&mut b, self.facts.hostname.as_bytes());
        b.extend_from_slice(&self.created.to_le_bytes());
        Ok(b)
    }

    /// Decodes a payload.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let holder = HolderId::from_bytes(r.array("holder")?);
        let code = r.u8("purpose")?;
        let purpose = LockPurpose::from_code(code).ok_or(DecodeError::UnknownValue {
            field: "purpose",
            value: u64::from(code),
        })?;
        r.reserved(3, "reserved")?;
        let pid = r.u32("pid")?;
        let pid_start = r.u64("pid_start")?;
        let boot_id = r.array("boot_id")?;
        let hostname = r.str(HOSTNAME_MAX, "hostname")?.to_string();
        let created = r.i64("created")?;
        r.finish()?;
        Ok(LockInfo {
            holder,
            purpose,
            facts: HostFacts {
                pid,
                pid_start,
                boot_id,
                hostname,
            },
            created,
        })
    }
}

/// What the stale rules need from the machine; tests supply a fake (no real sleeps).
pub trait LockEnv {
    /// This process's facts.
    fn facts(&self) -> HostFacts;
    /// Start time of a local process, `None` if no such process.
    fn pid_start(&self, pid: u32) -> Option<u64>;
    /// Waits before the second read of an unreadable lock.
    fn wait_ms(&self, ms: u64);
    /// Now, in ms since the epoch.
    fn now_ms(&self) -> i64;
    /// Whether this machine's clock is NTP-synchronized (rule 3 trusts `now_ms` only then).
    fn clock_synced(&self) -> bool;
}

/// The real machine: `/proc`, the host name, `std::thread::sleep`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLockEnv;

fn proc_pid_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts with field 3 (state); field 22 is the 20th after it.
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl LockEnv for SystemLockEnv {
    fn facts(&self) -> HostFacts {
        let pid = std::process::id();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let mut boot_id = [0u8; 16];
        let hex: String = boot.trim().chars().filter(|c| *c != '-').collect();
        let _ = hex::decode_to_slice(&hex, &mut boot_id);
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let hostname: String = hostname
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() <= HOSTNAME_MAX as usize)
            .map(|(_, c)| c)
            .collect();
        HostFacts {
            pid,
            pid_start: proc_pid_start(pid).unwrap_or(0),
            boot_id,
            hostname,
        }
    }

    fn pid_start(&self, pid: u32) -> Option<u64> {
        proc_pid_start(pid)
    }

    fn wait_ms(&self, ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }

    fn now_ms(&self) -> i64 {
        super::repo::now_ms()
    }

    fn clock_synced(&self) -> bool {
        std::path::Path::new(TIMESYNC_SYNCHRONIZED).exists()
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live process on this host holds the writer lock.
    #[error("the repository is in use by process {pid} on this host ({purpose:?})")]
    Held {
        /// Its pid.
        pid: u32,
        /// Why it holds it.
        purpose: LockPurpose,
    },
    /// Another host holds the lock and refreshed it within the last 30 minutes (or this
    /// machine's clock is not synchronized, so the age cannot be trusted).
    #[error(
        "drive in use by {hostname}: let it finish there; a lock {hostname} left behind counts \
         as abandoned 30 minutes after its last refresh, once this machine's clock is synchronized"
    )]
    HeldByOtherHost {
        /// Its host name.
        hostname: String,
    },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<StorageError> for LockError {
    fn from(e: StorageError) -> Self {
        LockError::Repo(e.into())
    }
}

/// What [`Repository::unlock_writer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlocked {
    /// There was no writer lock.
    NoLock,
    /// A lock was removed: who held it, why, and since when (ms since the epoch).
    Removed {
        /// Its holder's host name.
        hostname: String,
        /// What it was taken for.
        purpose: LockPurpose,
        /// When it was taken.
        created_ms: i64,
    },
    /// An unreadable (torn or empty) lock was removed.
    RemovedUnreadable,
}

/// A held lock, its mtime touched every [`LOCK_REFRESH_MS`] by a thread of its own; released by
/// `release` (or, best effort, on drop).
#[derive(Debug)]
pub struct LockGuard {
    storage: Arc<dyn Storage>,
    path: String,
    holder: HolderId,
    released: bool,
    /// Dropping it stops the refresh thread.
    stop_refresh: Option<mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl LockGuard {
    fn new(storage: Arc<dyn Storage>, path: String, holder: HolderId) -> LockGuard {
        let (stop, stopped) = mpsc::channel::<()>();
        let (s, p) = (storage.clone(), path.clone());
        let refresher = std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || {
                let every = Duration::from_millis(LOCK_REFRESH_MS);
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if let Err(e) = s.touch(&p) {
                        tracing::warn!("could not refresh the lock {p}: {e}");
                    }
                }
            })
            .map_err(|e| tracing::warn!("no lock refresh thread: {e}"))
            .ok();
        LockGuard {
            storage,
            path,
            holder,
            released: false,
            stop_refresh: Some(stop),
            refresher,
        }
    }

    /// The holder id written in the lock.
    pub fn holder(&self) -> HolderId {
        self.holder
    }

    /// Touches the lock's mtime now (what the refresh thread does every [`LOCK_REFRESH_MS`]).
    pub fn refresh(&self) -> Result<(), RepoError> {
        Ok(self.storage.touch(&self.path)?)
    }

    fn stop_refreshing(&mut self) {
        self.stop_refresh = None;
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
    }

    /// Unlinks the lock and fsyncs `locks/`.
    pub fn release(mut self) -> Result<(), RepoError> {
        self.released = true;
        self.stop_refreshing();
        self.storage.delete(&self.path)?;
        self.storage.sync_dir("locks")?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_refreshing();
        if !self.released {
            let _ = self.storage.delete(&self.path);
            let _ = self.storage.sync_dir("locks");
        }
    }
}

enum Existing {
    Stale,
    Held(LockError),
}

impl Repository {
    fn lock_bytes(&self, info: &LockInfo) -> Result<Vec<u8>, RepoError> {
        let payload = info.encode().map_err(|source| RepoError::Decode {
            path: WRITER_LOCK.into(),
            source,
        })?;
        Ok(seal::seal_file(self.keys(), MAGIC_LOCK, 1, &payload))
    }

    fn read_lock(&self, path: &str) -> Result<Option<LockInfo>, StorageError> {
        let bytes = match self.storage().read(path, LOCK_FILE_MAX) {
            Ok(b) => b,
            Err(StorageError::TooLarge { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(
            seal::open_file(self.keys(), MAGIC_LOCK, &[1], LOCK_FILE_MAX, &bytes)
                .ok()
                .and_then(|(_, p)| LockInfo::decode(&p).ok()),
        )
    }

    /// Applies §11's stale rules to the lock at `path`.
    fn judge(&self, path: &str, env: &dyn LockEnv) -> Result<Existing, LockError> {
        let me = env.facts();
        let info = match self.read_lock(path) {
            Ok(Some(i)) => i,
            Ok(None) => {
                // Rule 4: unreadable twice, 10 s apart.
                env.wait_ms(UNREADABLE_RECHECK_MS);
                match self.read_lock(path) {
                    Ok(Some(i)) => i,
                    Ok(None) => return Ok(Existing::Stale),
                    Err(e) if e.is_not_found() => return Ok(Existing::Stale),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) if e.is_not_found() => return Ok(Existing::Stale),
            Err(e) => return Err(e.into()),
        };
        if info.facts.hostname != me.hostname {
            // Rule 3: not refreshed for 30 minutes, by a clock that can be trusted.
            let refreshed = match self.storage().modified_ms(path) {
                Ok(ms) => ms,
                Err(e) if e.is_not_found() => return Ok(Existing::Stale),
                Err(e) => return Err(e.into()),
            };
            if env.clock_synced() && env.now_ms().saturating_sub(refreshed) > LOCK_STALE_FOREIGN_MS
            {
                return Ok(Existing::Stale);
            }
            return Ok(Existing::Held(LockError::HeldByOtherHost {
                hostname: info.facts.hostname,
            }));
        }
        if info.facts.boot_id != me.boot_id {
            return Ok(Existing::Stale); // rule 2: rebooted since
        }
        if env.pid_start(info.facts.pid) != Some(info.facts.pid_start) {
            return Ok(Existing::Stale); // rule 1: gone, or pid reused
        }
        Ok(Existing::Held(LockError::Held {
            pid: info.facts.pid,
            purpose: info.purpose,
        }))
    }

    /// Takes the writer lock (`O_CREAT | O_EXCL`), removing a stale one first. Having it, deletes
    /// every leftover `.tmp` (format.md §4), which is the start of a writer's recovery.
    pub fn lock_writer(
        &self,
        purpose: LockPurpose,
        env: &dyn LockEnv,
    ) -> Result<LockGuard, LockError> {
        let info = LockInfo {
            holder: HolderId::random(),
            purpose,
            facts: env.facts(),
            created: env.now_ms(),
        };
        let bytes = self.lock_bytes(&info)?;
        for attempt in 0..2 {
            match self.storage().create_exclusive(WRITER_LOCK, &bytes) {
                Ok(()) => {
                    let guard =
                        LockGuard::new(self.storage().clone(), WRITER_LOCK.into(), info.holder);
                    self.delete_tmp_files()?;
                    return Ok(guard);
                }
                Err(StorageError::AlreadyExists { .. }) if attempt == 0 => {
                    match self.judge(WRITER_LOCK, env)? {
                        Existing::Held(e) => return Err(e),
                        Existing::Stale => {
                            match self.storage().delete(WRITER_LOCK) {
                                Ok(()) => {}
                                Err(e) if e.is_not_found() => {}
                                Err(e) => return Err(e.into()),
                            }
                            self.storage().sync_dir("locks")?;
                        }
                    }
                }
                Err(StorageError::AlreadyExists { .. }) => {
                    return Err(LockError::Held {
                        pid: 0,
                        purpose: LockPurpose::Admin,
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(LockError::Held {
            pid: 0,
            purpose: LockPurpose::Admin,
        })
    }

    /// `cradle unlock`: removes the writer lock when no live process on this host holds it — a
    /// stale one (§11 rules 1, 2, 4), or, as the explicit act rule 3 asks for, one another host
    /// holds (for a drive moved away from a box mid-backup, or a box whose clock is not
    /// synchronized). A live local holder is refused. The next writer recovers (§15.3).
    pub fn unlock_writer(&self, env: &dyn LockEnv) -> Result<Unlocked, LockError> {
        let info = match self.read_lock(WRITER_LOCK) {
            Ok(i) => i,
            Err(e) if e.is_not_found() => return Ok(Unlocked::NoLock),
            Err(e) => return Err(e.into()),
        };
        let found = match self.judge(WRITER_LOCK, env)? {
            Existing::Held(e @ LockError::Held { .. }) => return Err(e),
            Existing::Held(_) | Existing::Stale => match info {
                Some(i) => Unlocked::Removed {
                    hostname: i.facts.hostname,
                    purpose: i.purpose,
                    created_ms: i.created,
                },
                None => Unlocked::RemovedUnreadable,
            },
        };
        match self.storage().delete(WRITER_LOCK) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => return Ok(Unlocked::NoLock),
            Err(e) => return Err(e.into()),
        }
        self.storage().sync_dir("locks")?;
        Ok(found)
    }

    /// Takes a reader lock `locks/reader-<HolderId>`.
    pub fn lock_reader(&self, env: &dyn LockEnv) -> Result<LockGuard, LockError> {
        let info = LockInfo {
            holder: HolderId::random(),
            purpose: LockPurpose::Read,
            facts: env.facts(),
            created: env.now_ms(),
        };
        let path = format!("locks/reader-{}", info.holder);
        let bytes = self.lock_bytes(&info)?;
        self.storage().create_exclusive(&path, &bytes)?;
        Ok(LockGuard::new(self.storage().clone(), path, info.holder))
    }

    /// Reader locks held by live processes (stale ones are not counted);
    /// `prune` starts only when this is empty.
    pub fn live_reader_locks(&self, env: &dyn LockEnv) -> Result<Vec<String>, LockError> {
        let mut out = Vec::new();
        for n in self.storage().list("locks")? {
            if !n.starts_with("reader-") {
                continue;
            }
            let path = format!("locks/{n}");
            if let Existing::Held(_) = self.judge(&path, env)? {
                out.push(path);
            }
        }
        Ok(out)
    }

    /// Deletes every `*.tmp` under the repository's final-name directories (§4, §15.3).
    fn delete_tmp_files(&self) -> Result<(), RepoError> {
        let mut dirs: Vec<String> =
            vec!["".into(), "keys".into(), "snapshots".into(), "pins".into()];
        dirs.extend((0..=255u8).map(|i| format!("packs/{i:02x}")));
        for d in dirs {
            let names = match self.storage().list(&d) {
                Ok(n) => n,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let mut any = false;
            for n in names.iter().filter(|n| n.ends_with(".tmp")) {
                let p = if d.is_empty() {
                    n.clone()
                } else {
                    format!("{d}/{n}")
                };
                match self.storage().delete(&p) {
                    Ok(()) => any = true,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if any {
                self.storage().sync_dir(&d)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::Password;
    use crate::store::repo::InitOptions;
    use crate::store::storage::CrashStorage;
    use std::cell::Cell;

    struct FakeEnv {
        facts: HostFacts,
        live: Vec<(u32, u64)>,
        waits: Cell<u32>,
        now: i64,
        synced: bool,
    }

    impl LockEnv for FakeEnv {
        fn facts(&self) -> HostFacts {
            self.facts.clone()
        }
        fn pid_start(&self, pid: u32) -> Option<u64> {
            self.live.iter().find(|(p, _)| *p == pid).map(|(_, s)| *s)
        }
        fn wait_ms(&self, _ms: u64) {
            self.waits.set(self.waits.get() + 1);
        }
        fn now_ms(&self) -> i64 {
            self.now
        }
        fn clock_synced(&self) -> bool {
            self.synced
        }
    }

    fn env(pid: u32, boot: u8, host: &str, live: Vec<(u32, u64)>) -> FakeEnv {
        FakeEnv {
            facts: HostFacts {
                pid,
                pid_start: 500 + u64::from(pid),
                boot_id: [boot; 16],
                hostname: host.into(),
            },
            live,
            waits: Cell::new(0),
            now: 1000,
            synced: true,
        }
    }

    fn repo() -> (CrashStorage, Repository) {
        let s = CrashStorage::new();
        let r = Repository::init(
            Arc::new(s.clone()),
            &Password::new("pw"),
            &InitOptions::for_tests(),
        )
        .unwrap();
        (s, r)
    }

    #[test]
    fn lock_info_codec() {
        let i = LockInfo {
            holder: HolderId::from_bytes([1; 16]),
            purpose: LockPurpose::Prune,
            facts: env(7, 1, "box", vec![]).facts,
            created: 9,
        };
        let b = i.encode().unwrap();
        assert_eq!(LockInfo::decode(&b).unwrap(), i);
        let mut bad = b.clone();
        bad[16] = 8;
        assert!(LockInfo::decode(&bad).is_err());
        let mut bad = b.clone();
        bad[18] = 1;
        assert!(LockInfo::decode(&bad).is_err());
    }

    #[test]
    fn one_writer_and_stale_rules() {
        let (s, r) = repo();
        let a = env(10, 1, "box", vec![(10, 510)]);
        let g = r.lock_writer(LockPurpose::Ingest, &a).unwrap();
        // Same host, same boot, holder alive: refused.
        let b = env(11, 1, "box", vec![(10, 510), (11, 511)]);
        assert!(matches!(
            r.lock_writer(LockPurpose::Prune, &b),
            Err(LockError::Held { pid: 10, .. })
        ));
        // Rule 1: the holder's pid now has another start time (reused).
        let b2 = env(11, 1, "box", vec![(10, 999), (11, 511)]);
        let g2 = r.lock_writer(LockPurpose::Prune, &b2).unwrap();
        std::mem::forget(g); // the first holder "died" without releasing
                             // Rule 2: a different boot id on the same host: stale.
        let c = env(12, 2, "box", vec![(11, 511)]);
        let g3 = r.lock_writer(LockPurpose::Admin, &c).unwrap();
        std::mem::forget(g2);
        // Another host's lock, just written (by the storage's clock): held.
        let d = env(13, 3, "laptop", vec![]);
        assert!(matches!(
            r.lock_writer(LockPurpose::Admin, &d),
            Err(LockError::HeldByOtherHost { .. })
        ));
        g3.release().unwrap();
        assert!(!s.exists(WRITER_LOCK).unwrap());
        let g4 = r.lock_writer(LockPurpose::Admin, &d).unwrap();
        drop(g4);
        assert!(!s.exists(WRITER_LOCK).unwrap(), "dropping releases");
    }

    #[test]
    fn another_hosts_lock_is_stale_30_minutes_after_its_last_refresh_by_a_synced_clock() {
        const MIN: i64 = 60_000;
        let t0 = 1_800_000_000_000;
        let (s, r) = repo();
        s.set_clock_ms(t0);
        let laptop = env(20, 5, "laptop", vec![(20, 520)]);
        let g = r.lock_writer(LockPurpose::Ingest, &laptop).unwrap();
        let reader = r.lock_reader(&laptop).unwrap();
        // This box, at `now`, its clock synchronized or not.
        let box_at = |now: i64, synced: bool| FakeEnv {
            now,
            synced,
            ..env(10, 1, "box", vec![(10, 510)])
        };
        let refused = |e: &FakeEnv| {
            matches!(
                r.lock_writer(LockPurpose::Prune, e),
                Err(LockError::HeldByOtherHost { ref hostname }) if hostname == "laptop"
            )
        };
        assert!(refused(&box_at(t0 + 29 * MIN, true)));
        assert_eq!(
            r.live_reader_locks(&box_at(t0 + 29 * MIN, true))
                .unwrap()
                .len(),
            1
        );
        // Refreshed at minute 20: at minute 31 only 11 minutes have passed.
        s.set_clock_ms(t0 + 20 * MIN);
        g.refresh().unwrap();
        assert!(refused(&box_at(t0 + 31 * MIN, true)));
        // The reader lock was not refreshed: stale at minute 31.
        assert!(r
            .live_reader_locks(&box_at(t0 + 31 * MIN, true))
            .unwrap()
            .is_empty());
        // 31 minutes after the refresh, but this clock is not synchronized: still held.
        assert!(refused(&box_at(t0 + 51 * MIN, false)));
        assert_eq!(
            r.live_reader_locks(&box_at(t0 + 51 * MIN, false))
                .unwrap()
                .len(),
            1
        );
        // Synchronized: stale, removed and taken over.
        std::mem::forget(g); // the laptop went away without releasing
        std::mem::forget(reader);
        let mine = r
            .lock_writer(LockPurpose::Prune, &box_at(t0 + 51 * MIN, true))
            .unwrap();
        mine.release().unwrap();
        assert!(!s.exists(WRITER_LOCK).unwrap());
    }

    #[test]
    fn unlock_removes_another_hosts_or_a_stale_lock_never_a_live_local_one() {
        let (s, r) = repo();
        let me = env(10, 1, "box", vec![(10, 510)]);
        assert_eq!(r.unlock_writer(&me).unwrap(), Unlocked::NoLock);
        // Another host's fresh lock (rule 3 would refuse it for 30 minutes): removed on request.
        let laptop = env(20, 5, "laptop", vec![(20, 520)]);
        let g = r.lock_writer(LockPurpose::Digest, &laptop).unwrap();
        assert!(matches!(
            r.lock_writer(LockPurpose::Ingest, &me),
            Err(LockError::HeldByOtherHost { .. })
        ));
        assert!(matches!(
            r.unlock_writer(&me).unwrap(),
            Unlocked::Removed { ref hostname, purpose: LockPurpose::Digest, .. } if hostname == "laptop"
        ));
        std::mem::forget(g);
        assert!(!s.exists(WRITER_LOCK).unwrap());
        // A live process here: refused, the lock stays.
        let held = r.lock_writer(LockPurpose::Ingest, &me).unwrap();
        let other_pid = env(11, 1, "box", vec![(10, 510), (11, 511)]);
        assert!(matches!(
            r.unlock_writer(&other_pid),
            Err(LockError::Held { pid: 10, .. })
        ));
        assert!(s.exists(WRITER_LOCK).unwrap());
        // Its process gone (rule 1): removed.
        let later = env(11, 1, "box", vec![(11, 511)]);
        assert!(matches!(
            r.unlock_writer(&later).unwrap(),
            Unlocked::Removed { .. }
        ));
        std::mem::forget(held);
        // Torn: removed after the second read.
        s.create_exclusive(WRITER_LOCK, b"torn").unwrap();
        assert_eq!(r.unlock_writer(&me).unwrap(), Unlocked::RemovedUnreadable);
        r.lock_writer(LockPurpose::Ingest, &me)
            .unwrap()
            .release()
            .unwrap();
    }

    #[test]
    fn unreadable_lock_is_stale_after_a_second_read() {
        let (s, r) = repo();
        s.create_exclusive(WRITER_LOCK, b"").unwrap();
        let a = env(10, 1, "box", vec![(10, 510)]);
        let g = r.lock_writer(LockPurpose::Ingest, &a).unwrap();
        assert_eq!(a.waits.get(), 1);
        drop(g);
    }

    #[test]
    fn taking_the_lock_deletes_tmp_files() {
        let (s, r) = repo();
        let mut w = s
            .create_streaming(&format!("packs/ab/{}", "ab".repeat(32)))
            .unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        let mut w = s
            .create_streaming(&format!("snapshots/{}", "cd".repeat(32)))
            .unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(
            s.file_names()
                .iter()
                .filter(|n| n.ends_with(".tmp"))
                .count(),
            2
        );
        let a = env(10, 1, "box", vec![(10, 510)]);
        let _g = r.lock_writer(LockPurpose::Ingest, &a).unwrap();
        assert_eq!(
            s.file_names()
                .iter()
                .filter(|n| n.ends_with(".tmp"))
                .count(),
            0
        );
    }

    #[test]
    fn readers() {
        let (_s, r) = repo();
        let a = env(10, 1, "box", vec![(10, 510)]);
        let g = r.lock_reader(&a).unwrap();
        assert_eq!(r.live_reader_locks(&a).unwrap().len(), 1);
        let after_reboot = env(10, 2, "box", vec![]);
        assert!(r.live_reader_locks(&after_reboot).unwrap().is_empty());
        g.release().unwrap();
        assert!(r.live_reader_locks(&a).unwrap().is_empty());
    }
}
