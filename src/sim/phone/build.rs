//! Builds the synthetic phone's file tree: day 1 from the seed and profile, then each later
//! day's changes replayed in order (new photos and messages, deletions, rewritten files).

use super::catalog::{
    AppKind, APPLE_APPS, APPS, HOME_PREFS, ODD_NAMES, PREF_SUFFIXES, PRODUCTS, SYS_CONTAINERS,
    SYS_SHARED, VENDORS, WORDS,
};
use super::content::{Content, Gen, Media, Style};
use super::identity::InstalledApp;
use super::rng::{hash, Rng};
use super::sqlite::{Activity, DbSpec, FANOUT};
use super::{Entry, EntryKind, Profile};
use std::collections::HashMap;

const DAY: i64 = 86_400;
/// 2026-01-01T00:00:00Z: the earliest day 1; each seed moves it forward by up to a year.
const EPOCH_2026: i64 = 1_767_225_600;
const MOBILE: u32 = 501;
/// Seed of the content phones share with each other whatever their own seed: what apps
/// download after install (the same bytes on every phone with the app), the model's default
/// wallpaper, pictures forwarded around group chats. Rich profiles only, so two phones on one
/// drive hold a realistic set of identical files.
pub(crate) const SHARED_CONTENT_SEED: u64 = 0x5A4E_D0C0_17E7_0001;
/// Pictures in the shared pool that messengers and Messages draw from.
const SHARED_MEDIA_POOL: u64 = 150;
/// Leaves a big database rewrites on a light day (plus at most one appended).
const LIGHT_DAY_LEAVES: u64 = 3;
/// Databases of at least this many leaves count as big on light days; smaller ones rest.
const BIG_DB_LEAVES: u32 = 1_000;

/// A value-stable key of a string (bundle ids), for content that must not depend on the seed.
fn str_key(s: &str) -> u64 {
    let parts: Vec<u64> = s
        .as_bytes()
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    hash(&parts)
}

/// Size knobs per profile.
pub(crate) struct Params {
    home_prefs: usize,
    apps: usize,
    app_files: usize,
    apple_apps: usize,
    sys_containers: usize,
    sys_shared: usize,
    notification_dirs: usize,
    photos: usize,
    thumbnails: bool,
    /// Media sizes as a percentage of a real camera's.
    media_pct: u64,
    sms_leaves: u32,
    health_leaves: u32,
    photos_db_leaves: u32,
    db_leaves_max: u32,
    attachments: usize,
    odd_names: usize,
    keychain_bytes: u64,
    /// Extra folders and files a real phone has that carry no new kind of test value; off
    /// for the tiny profile to keep it tiny.
    rich: bool,
    /// Multiplier of each day's changes.
    daily: u64,
    /// Later days change only a few files and a few pages of the big databases (a phone left
    /// alone for a day; the premise of the deduplication tests and benchmarks).
    light_days: bool,
}

pub(crate) fn params(p: Profile) -> Params {
    match p {
        Profile::Tiny => Params {
            home_prefs: 3,
            apps: 1,
            app_files: 3,
            apple_apps: 1,
            sys_containers: 1,
            sys_shared: 1,
            notification_dirs: 0,
            photos: 3,
            thumbnails: false,
            media_pct: 8,
            sms_leaves: 12,
            health_leaves: 24,
            photos_db_leaves: 6,
            db_leaves_max: 3,
            attachments: 1,
            odd_names: 3,
            keychain_bytes: 6_000,
            rich: false,
            daily: 1,
            light_days: false,
        },
        Profile::Small => Params {
            home_prefs: 90,
            apps: 10,
            app_files: 55,
            apple_apps: 14,
            sys_containers: 10,
            sys_shared: 6,
            notification_dirs: 30,
            photos: 10,
            thumbnails: false,
            media_pct: 30,
            sms_leaves: 300,
            health_leaves: 900,
            photos_db_leaves: 150,
            db_leaves_max: 40,
            attachments: 6,
            odd_names: ODD_NAMES.len(),
            keychain_bytes: 60_000,
            rich: true,
            daily: 1,
            light_days: false,
        },
        Profile::Medium => Params {
            home_prefs: 250,
            apps: 40,
            app_files: 290,
            apple_apps: 20,
            sys_containers: 16,
            sys_shared: 8,
            notification_dirs: 80,
            photos: 30,
            thumbnails: true,
            media_pct: 100,
            sms_leaves: 6_000,
            health_leaves: 15_000,
            photos_db_leaves: 2_500,
            db_leaves_max: 300,
            attachments: 24,
            odd_names: ODD_NAMES.len(),
            keychain_bytes: 250_000,
            rich: true,
            daily: 2,
            light_days: true,
        },
        Profile::Large => Params {
            home_prefs: 480,
            apps: 140,
            app_files: 930,
            apple_apps: 20,
            sys_containers: 16,
            sys_shared: 8,
            notification_dirs: 150,
            photos: 250,
            thumbnails: true,
            media_pct: 100,
            sms_leaves: 60_000,
            // > 1 GiB: the one file big enough to need streaming everywhere.
            health_leaves: 270_000,
            photos_db_leaves: 20_000,
            db_leaves_max: 2_000,
            attachments: 150,
            odd_names: ODD_NAMES.len(),
            keychain_bytes: 600_000,
            rich: true,
            daily: 4,
            light_days: false,
        },
    }
}

/// Day 1's "now" for a seed: a backup moment in the evening of some day of 2026.
pub(crate) fn epoch(seed: u64) -> i64 {
    let mut r = Rng::from_parts(&[seed, 0xE90C]);
    EPOCH_2026 + r.below(365) as i64 * DAY + 18 * 3600 + r.below(4 * 3600) as i64
}

#[derive(Clone, Copy)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    pc: u32,
}

const fn attrs(mode: u32, pc: u32) -> Attrs {
    Attrs {
        mode,
        uid: MOBILE,
        gid: MOBILE,
        pc,
    }
}

const DIR: Attrs = attrs(0o40755, 0);
const PREF: Attrs = attrs(0o100600, 4);
const PLAIN: Attrs = attrs(0o100644, 4);
const PRIVATE: Attrs = attrs(0o100600, 3);
const MEDIA: Attrs = attrs(0o100644, 3);
const DB: Attrs = attrs(0o100644, 4);
const LINK: Attrs = attrs(0o120755, 0);

enum Kind {
    Dir,
    Link(String),
    File { size: u64, content: Gen },
}

struct Node {
    domain: u32,
    path: String,
    kind: Kind,
    attrs: Attrs,
    inode: u64,
    birth: i64,
    mtime: i64,
    ctime: i64,
    alive: bool,
}

pub(crate) struct Built {
    pub entries: Vec<Entry>,
    pub apps: Vec<InstalledApp>,
    pub now: i64,
}

struct Builder {
    seed: u64,
    p: Params,
    t0: i64,
    rng: Rng,
    domains: Vec<String>,
    domain_ids: HashMap<String, u32>,
    dirs: Vec<HashMap<String, usize>>,
    nodes: Vec<Node>,
    next_inode: u64,
    /// Rewritable documents (preference plists and the like).
    plists: Vec<usize>,
    /// Other small documents that change now and then.
    docs: Vec<usize>,
    /// Camera roll items: the files (and thumbnail folders) that go together.
    photos: Vec<Vec<usize>>,
    next_img: u32,
    /// App files that may disappear (media, downloads).
    ephemeral: Vec<usize>,
    dbs: Vec<usize>,
    /// Group containers where messengers keep received media.
    messenger_media: Vec<u32>,
    apps: Vec<InstalledApp>,
    /// Past times: day-1 files were born up to this long before day 1.
    history: i64,
}

pub(crate) fn build(seed: u64, profile: Profile, day: u32) -> Built {
    let t0 = epoch(seed);
    let mut b = Builder {
        seed,
        p: params(profile),
        t0,
        rng: Rng::from_parts(&[seed, profile as u64, 0xB111D]),
        domains: Vec::new(),
        domain_ids: HashMap::new(),
        dirs: Vec::new(),
        nodes: Vec::new(),
        next_inode: 20_000 + hash(&[seed, 0x1A0]) % 400_000,
        plists: Vec::new(),
        docs: Vec::new(),
        photos: Vec::new(),
        next_img: 1,
        ephemeral: Vec::new(),
        dbs: Vec::new(),
        messenger_media: Vec::new(),
        apps: Vec::new(),
        history: 700 * DAY,
    };
    b.day_one();
    for d in 2..=day.max(1) {
        b.mutate(d);
    }
    let now = t0 + i64::from(day.max(1) - 1) * DAY;
    let apps = std::mem::take(&mut b.apps);
    Built {
        entries: b.finish(day.max(1)),
        apps,
        now,
    }
}

fn uuid(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let c = rng.next_u64();
    format!(
        "{:08X}-{:04X}-4{:03X}-{:04X}-{:012X}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFF,
        0x8000 | (c >> 48) & 0x3FFF,
        c & 0xFFFF_FFFF_FFFF
    )
}

/// Canonical decomposition (NFD) of the Latin letters used in the odd names.
fn nfd(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        let (base, mark) = match c {
            'é' => ('e', '\u{301}'),
            'è' => ('e', '\u{300}'),
            'ê' => ('e', '\u{302}'),
            'ë' => ('e', '\u{308}'),
            'ï' => ('i', '\u{308}'),
            'ü' => ('u', '\u{308}'),
            'ö' => ('o', '\u{308}'),
            'á' => ('a', '\u{301}'),
            'à' => ('a', '\u{300}'),
            'û' => ('u', '\u{302}'),
            'ç' => ('c', '\u{327}'),
            'ñ' => ('n', '\u{303}'),
            'É' => ('E', '\u{301}'),
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push(base);
        out.push(mark);
    }
    out
}

impl Builder {
    fn domain(&mut self, name: &str) -> u32 {
        self.domain_with(name, DIR)
    }

    fn domain_with(&mut self, name: &str, a: Attrs) -> u32 {
        if let Some(&d) = self.domain_ids.get(name) {
            return d;
        }
        let d = self.domains.len() as u32;
        self.domains.push(name.to_string());
        self.domain_ids.insert(name.to_string(), d);
        self.dirs.push(HashMap::new());
        self.add_dir(d, "", a);
        d
    }

    fn past_times(&mut self) -> (i64, i64, i64) {
        let birth = self.t0 - self.rng.range(DAY as u64, self.history as u64) as i64;
        let mtime = birth + self.rng.below((self.t0 - birth - 3600) as u64) as i64;
        let ctime = mtime + self.rng.below(3600) as i64;
        (birth, mtime, ctime)
    }

    fn push(
        &mut self,
        domain: u32,
        path: String,
        kind: Kind,
        a: Attrs,
        times: (i64, i64, i64),
    ) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node {
            domain,
            path,
            kind,
            attrs: a,
            inode: self.next_inode,
            birth: times.0,
            mtime: times.1,
            ctime: times.2,
            alive: true,
        });
        self.next_inode += 1 + self.rng.below(3);
        i
    }

    fn add_dir(&mut self, d: u32, path: &str, a: Attrs) -> usize {
        let times = self.past_times();
        self.add_dir_at(d, path, a, times)
    }

    fn add_dir_at(&mut self, d: u32, path: &str, a: Attrs, times: (i64, i64, i64)) -> usize {
        if let Some(&i) = self.dirs[d as usize].get(path) {
            return i;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.add_dir_at(d, parent, DIR, times);
        } else if !path.is_empty() {
            self.add_dir_at(d, "", DIR, times);
        }
        let i = self.push(d, path.to_string(), Kind::Dir, a, times);
        self.dirs[d as usize].insert(path.to_string(), i);
        i
    }

    fn dir(&mut self, d: u32, path: &str) -> usize {
        self.add_dir(d, path, DIR)
    }

    fn parent_of(&mut self, d: u32, path: &str, times: (i64, i64, i64)) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !self.dirs[d as usize].contains_key(parent) {
                self.add_dir_at(d, parent, DIR, times);
            }
        }
    }

    /// A day-1 file with past timestamps.
    fn file(&mut self, d: u32, path: &str, size: u64, content: Gen, a: Attrs) -> usize {
        let times = self.past_times();
        self.file_at(d, path, size, content, a, times)
    }

    fn file_at(
        &mut self,
        d: u32,
        path: &str,
        size: u64,
        content: Gen,
        a: Attrs,
        times: (i64, i64, i64),
    ) -> usize {
        self.parent_of(d, path, times);
        let size = if matches!(content, Gen::Empty) {
            0
        } else {
            size
        };
        self.push(d, path.to_string(), Kind::File { size, content }, a, times)
    }

    fn link(&mut self, d: u32, path: &str, target: String) -> usize {
        let times = self.past_times();
        self.parent_of(d, path, times);
        self.push(d, path.to_string(), Kind::Link(target), LINK, times)
    }

    fn key(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn doc(&mut self, style: Style) -> Gen {
        Gen::Doc {
            key: self.key(),
            version: 0,
            style,
        }
    }

    fn plist_size(&mut self) -> u64 {
        self.rng.log_uniform(96, 12_000)
    }

    /// A preference plist (binary, as iOS writes them), rewritten now and then.
    fn pref(&mut self, d: u32, path: &str) -> usize {
        let size = self.plist_size();
        let g = self.doc(Style::BinaryPlist);
        let i = self.file(d, path, size, g, PREF);
        self.plists.push(i);
        i
    }

    fn db(
        &mut self,
        d: u32,
        path: &str,
        leaves: u32,
        activity: Activity,
        (text_pct, table): (u8, &'static str),
        a: Attrs,
    ) -> usize {
        let activity = if self.p.light_days {
            if leaves >= BIG_DB_LEAVES {
                // A few rows updated or inserted: SQLite rewrites a few leaves.
                Activity {
                    daily_pct: activity.daily_pct,
                    change_ppm: u32::try_from(LIGHT_DAY_LEAVES * 1_000_000 / u64::from(leaves))
                        .unwrap_or(1),
                    grow_max: 1,
                }
            } else {
                Activity {
                    daily_pct: 0,
                    ..activity
                }
            }
        } else {
            activity
        };
        let spec = DbSpec {
            key: self.key(),
            leaves0: leaves.max(1),
            born: 1,
            state_day: 1,
            activity,
            text_pct,
            table,
            fanout: FANOUT,
        };
        let size = spec.size();
        let i = self.file(d, path, size, Gen::Sqlite(Box::new(spec)), a);
        self.dbs.push(i);
        i
    }

    /// A small database that changes on some days.
    fn small_db(&mut self, d: u32, path: &str) -> usize {
        let leaves = self.rng.log_uniform(1, u64::from(self.p.db_leaves_max)) as u32;
        let activity = Activity {
            daily_pct: self.rng.range(5, 40) as u8,
            change_ppm: 20_000,
            grow_max: self.rng.range(0, 1) as u32,
        };
        let text = self.rng.range(30, 90) as u8;
        let a = if self.rng.percent(60) { DB } else { PRIVATE };
        self.db(d, path, leaves, activity, (text, "records"), a)
    }

    fn media_size(&mut self, lo: u64, hi: u64) -> u64 {
        (self.rng.log_uniform(lo, hi) * self.p.media_pct / 100).max(1024)
    }

    fn day_one(&mut self) {
        self.home();
        self.camera_roll();
        self.media();
        self.keychain();
        self.health();
        self.system_domains();
        self.apple_apps();
        self.third_party_apps();
        self.files_app();
    }

    fn home(&mut self) {
        let h = self.domain_with("HomeDomain", attrs(0o40711, 0));
        for dir in [
            "Documents",
            "Library/Preferences",
            "Library/SMS/Drafts",
            "Library/MusicLibrary",
        ] {
            if self.p.rich || dir == "Library/Preferences" {
                self.dir(h, dir);
            }
        }
        let n = self.p.home_prefs;
        for i in 0..n {
            let name = if i < HOME_PREFS.len() {
                HOME_PREFS[i].to_string()
            } else {
                let base = HOME_PREFS[i % HOME_PREFS.len()];
                let suf = PREF_SUFFIXES[(i / HOME_PREFS.len() - 1) % PREF_SUFFIXES.len()];
                let round = (i / HOME_PREFS.len() - 1) / PREF_SUFFIXES.len();
                if round == 0 {
                    format!("{base}.{suf}")
                } else {
                    format!("{base}.{suf}{round}")
                }
            };
            self.pref(h, &format!("Library/Preferences/{name}.plist"));
        }
        // Carrier settings are symlinks into the carrier bundle, as on a real phone.
        self.link(
            h,
            "Library/Preferences/com.apple.carrier.plist",
            "/var/mobile/Library/Carrier Bundles/Overlay/device+carrier+23410+D17+51.0.plist"
                .into(),
        );
        self.link(
            h,
            "Library/Preferences/com.apple.operator.plist",
            "/var/mobile/Library/Carrier Bundles/Overlay/default+device+carrier+23410+Default.bundle:D17:51.0+D17+51.0.plist".into(),
        );
        let sms_activity = Activity {
            daily_pct: 95,
            change_ppm: 5_000,
            grow_max: 2 + self.p.sms_leaves / 2_000,
        };
        self.db(
            h,
            "Library/SMS/sms.db",
            self.p.sms_leaves,
            sms_activity,
            (85, "message"),
            DB,
        );
        let big = self.p.db_leaves_max;
        let contacts = Activity {
            daily_pct: 20,
            change_ppm: 10_000,
            grow_max: 1,
        };
        self.db(
            h,
            "Library/AddressBook/AddressBook.sqlitedb",
            big / 2 + 2,
            contacts,
            (90, "ABPerson"),
            PRIVATE,
        );
        self.db(
            h,
            "Library/AddressBook/AddressBookImages.sqlitedb",
            big / 3 + 1,
            contacts,
            (10, "ABThumbnailImage"),
            PRIVATE,
        );
        for path in [
            "Library/Calendar/Calendar.sqlitedb",
            "Library/CallHistoryDB/CallHistory.storedata",
            "Library/Safari/History.db",
            "Library/Safari/Bookmarks.db",
            "Library/TCC/TCC.db",
            "Library/Voicemail/voicemail.db",
            "Library/Accounts/Accounts3.sqlite",
            "Library/Notes/notes.sqlite",
            "Library/FrontBoard/applicationState.db",
            "Library/CoreDuet/People/interactionC.db",
            "Library/PersonalizationPortrait/PPSQLDatabase.db",
            "Library/com.apple.itunesstored/itunesstored2.sqlitedb",
            "Library/Shortcuts/Shortcuts.sqlite",
            "Library/Accessibility/com.apple.personalaudio.sqlite",
        ]
        .into_iter()
        .take(self.p.home_prefs / 8)
        {
            self.small_db(h, path);
        }
        // The lock screen wallpaper: raw pixels, stored twice with identical bytes.
        let own = self.key();
        let px = Gen::Binary {
            // Rich phones keep the model's default wallpaper: the same on every phone.
            key: if self.p.rich {
                hash(&[SHARED_CONTENT_SEED, 0x3A11])
            } else {
                own
            },
            mask: 0x3F,
            zero_pct: 8,
        };
        let px_size = self.media_size(10_176_144, 10_176_144);
        let spring: &[&str] = if self.p.home_prefs < 100 {
            &[
                "Library/SpringBoard/LockBackground.cpbitmap",
                "Library/SpringBoard/OriginalLockBackground.cpbitmap",
            ]
        } else {
            &[
                "Library/SpringBoard/LockBackground.cpbitmap",
                "Library/SpringBoard/OriginalLockBackground.cpbitmap",
                "Library/SpringBoard/LockBackgrounddark.cpbitmap",
                "Library/SpringBoard/OriginalLockBackgrounddark.cpbitmap",
            ]
        };
        for p in spring {
            self.file(h, p, px_size, px.clone(), PLAIN);
        }
        let s = self.media_size(20_000, 90_000);
        let g = Gen::Media {
            key: self.key(),
            format: Media::Jpeg,
        };
        self.file(
            h,
            "Library/SpringBoard/LockBackgroundThumbnail.jpg",
            s,
            g,
            PLAIN,
        );
        let g = self.doc(Style::BinaryPlist);
        let i = self.file(h, "Library/SpringBoard/IconState.plist", 1_487, g, PLAIN);
        self.plists.push(i);
        for _ in 0..self.p.notification_dirs {
            let id = uuid(&mut self.rng);
            let dir = format!("Library/UserNotifications/{id}");
            self.dir(h, &dir);
            if self.rng.percent(60) {
                self.pref(h, &format!("{dir}/Categories.plist"));
            }
            if self.rng.percent(25) {
                let s = self.plist_size();
                let g = self.doc(Style::BinaryPlist);
                let i = self.file(
                    h,
                    &format!("{dir}/DeliveredNotifications.plist"),
                    s,
                    g,
                    PREF,
                );
                self.plists.push(i);
            }
        }
        if self.p.rich {
            let g = self.doc(Style::Json);
            let s = self.rng.range(200, 4_000);
            let i = self.file(h, "Library/DoNotDisturb/DB/Assertions.json", s, g, PRIVATE);
            self.docs.push(i);
        }
        self.file(
            h,
            "Library/DeviceRegistry.state/ClassAFile.txt",
            0,
            Gen::Empty,
            attrs(0o100600, 1),
        );
    }

    /// A photo or video taken at `times`; returns its group (files that go together).
    fn take_photo(&mut self, times: (i64, i64, i64)) -> Vec<usize> {
        let cr = self.domain("CameraRollDomain");
        let n = self.next_img;
        self.next_img += 1;
        let folder = format!("Media/DCIM/{}APPLE", 100 + (n - 1) / 1000);
        let roll = self.rng.below(100);
        let (ext, format, lo, hi) = match roll {
            0..=77 => ("HEIC", Media::Heic, 1_200_000, 3_500_000),
            78..=82 => ("JPG", Media::Jpeg, 2_000_000, 5_000_000),
            83..=95 => ("PNG", Media::Png, 250_000, 3_000_000),
            _ => ("MOV", Media::Mov, 6_000_000, 40_000_000),
        };
        let size = self.media_size(lo, hi);
        let key = self.key();
        let mut group = vec![self.file_at(
            cr,
            &format!("{folder}/IMG_{n:04}.{ext}"),
            size,
            Gen::Media { key, format },
            MEDIA,
            times,
        )];
        if ext == "HEIC" && self.rng.percent(40) {
            // A Live Photo's motion part.
            let s = self.media_size(1_500_000, 3_500_000);
            let g = Gen::Media {
                key: self.key(),
                format: Media::Mov,
            };
            group.push(self.file_at(cr, &format!("{folder}/IMG_{n:04}.MOV"), s, g, MEDIA, times));
        }
        if self.p.thumbnails {
            let dir = format!(
                "Media/PhotoData/Thumbnails/V2/DCIM/{}APPLE/IMG_{n:04}.{ext}",
                100 + (n - 1) / 1000
            );
            let di = self.add_dir_at(cr, &dir, DIR, times);
            let s = self.rng.range(40_000, 250_000);
            let g = Gen::Media {
                key: self.key(),
                format: Media::Jpeg,
            };
            group.push(self.file_at(
                cr,
                &format!("{dir}/5005.JPG"),
                s,
                g,
                attrs(0o100644, 3),
                times,
            ));
            group.push(di);
        }
        group
    }

    fn camera_roll(&mut self) {
        let cr = self.domain_with("CameraRollDomain", attrs(0o40711, 0));
        self.dir(cr, "Media/DCIM");
        if self.p.rich {
            self.dir(cr, "Media/DCIM/.MISC/Incoming");
            self.dir(cr, "Media/PhotoData/MISC");
        }
        let n = self.p.photos as i64;
        for k in 0..n {
            // Older photos first, about one every two days.
            let t = self.t0 - (n - k) * DAY * 2 + self.rng.below(DAY as u64) as i64;
            let c = t + self.rng.below(200) as i64;
            let g = self.take_photo((t, t, c));
            self.photos.push(g);
        }
        let act = Activity {
            daily_pct: 90,
            change_ppm: 8_000,
            grow_max: 2,
        };
        self.db(
            cr,
            "Media/PhotoData/Photos.sqlite",
            self.p.photos_db_leaves,
            act,
            (40, "ZASSET"),
            DB,
        );
        self.file(
            cr,
            "Media/PhotoData/cpl_download_finished_marker",
            0,
            Gen::Empty,
            attrs(0o100644, 4),
        );
        if self.p.rich {
            let id = uuid(&mut self.rng);
            let g = self.doc(Style::BinaryPlist);
            let path = format!("Media/PhotoData/AlbumsMetadata/{id}.foldermetadata");
            self.file(cr, &path, 420, g, PRIVATE);
        }
    }

    fn attachment_path(&mut self, name: &str) -> String {
        let guid = uuid(&mut self.rng);
        format!(
            "Library/SMS/Attachments/{:02x}/{:02}/{guid}/{name}",
            self.rng.below(256),
            self.rng.below(16)
        )
    }

    /// A message attachment; often a photo from the camera roll, byte for byte.
    fn add_attachment(&mut self, times: (i64, i64, i64)) -> usize {
        let md = self.domain("MediaDomain");
        let copy = if self.photos.is_empty() || self.rng.percent(40) {
            None
        } else {
            let g = self.rng.below(self.photos.len() as u64) as usize;
            let i = self.photos[g][0];
            match &self.nodes[i].kind {
                Kind::File { size, content }
                    if matches!(
                        content,
                        Gen::Media {
                            format: Media::Heic | Media::Jpeg,
                            ..
                        }
                    ) =>
                {
                    Some((*size, content.clone()))
                }
                _ => None,
            }
        };
        let n = self.rng.range(1000, 9999);
        let copy = match copy {
            None if self.p.rich && self.rng.percent(25) => Some(self.shared_picture()),
            c => c,
        };
        let (size, content) = match copy {
            Some(c) => c,
            None => (
                self.media_size(80_000, 2_000_000),
                Gen::Media {
                    key: self.key(),
                    format: Media::Jpeg,
                },
            ),
        };
        let path = self.attachment_path(&format!("IMG_{n}.jpeg"));
        let i = self.file_at(md, &path, size, content, attrs(0o100644, 3), times);
        self.ephemeral.push(i);
        i
    }

    fn media(&mut self) {
        let md = self.domain("MediaDomain");
        if self.p.rich {
            self.dir(md, "Media/iTunes_Control");
            self.dir(md, "Media/Recordings/.Recordings_SUPPORT/_EXTERNAL_DATA");
        }
        for _ in 0..self.p.attachments {
            let times = self.past_times();
            self.add_attachment(times);
        }
        let recordings = (self.p.attachments / 4).max(1);
        for k in 0..recordings {
            let s = self.media_size(60_000, 6_000_000);
            let g = Gen::Media {
                key: self.key(),
                format: Media::M4a,
            };
            self.file(
                md,
                &format!(
                    "Media/Recordings/2025{:02}{:02} 0{k}3021.m4a",
                    1 + k % 12,
                    1 + k % 28
                ),
                s,
                g,
                MEDIA,
            );
        }
        let act = Activity {
            daily_pct: 5,
            change_ppm: 20_000,
            grow_max: 1,
        };
        self.db(
            md,
            "Media/Recordings/CloudRecordings.db",
            3,
            act,
            (60, "ZCLOUDRECORDING"),
            DB,
        );
    }

    fn keychain(&mut self) {
        let k = self.domain_with(
            "KeychainDomain",
            Attrs {
                mode: 0o40755,
                uid: 64,
                gid: 0,
                pc: 4,
            },
        );
        let g = self.doc(Style::Keychain);
        let size = self.p.keychain_bytes;
        let i = self.file(
            k,
            "keychain-backup.plist",
            size,
            g,
            Attrs {
                mode: 0o100400,
                uid: 0,
                gid: 0,
                pc: 1,
            },
        );
        self.plists.push(i);
        let act = Activity {
            daily_pct: 3,
            change_ppm: 10_000,
            grow_max: 0,
        };
        self.db(
            k,
            "TrustStore.sqlite3",
            2,
            act,
            (20, "tsettings"),
            Attrs {
                mode: 0o100600,
                uid: 64,
                gid: 0,
                pc: 4,
            },
        );
    }

    fn health(&mut self) {
        let h = self.domain("HealthDomain");
        if self.p.rich {
            self.dir(h, "MedicalID");
        }
        let act = Activity {
            daily_pct: 100,
            change_ppm: 5_000,
            grow_max: 1 + self.p.health_leaves / 10_000,
        };
        self.db(
            h,
            "Health/healthdb_secure.sqlite",
            self.p.health_leaves,
            act,
            (15, "samples"),
            attrs(0o100600, 3),
        );
        let act = Activity {
            daily_pct: 30,
            change_ppm: 10_000,
            grow_max: 1,
        };
        self.db(
            h,
            "Health/healthdb.sqlite",
            4,
            act,
            (50, "source_devices"),
            attrs(0o100600, 3),
        );
        let g = Gen::Binary {
            key: self.key(),
            mask: 0xFF,
            zero_pct: 60,
        };
        self.file(
            h,
            "Health/healthdb_secure.hfd",
            65_536,
            g,
            attrs(0o100600, 2),
        );
    }

    fn system_domains(&mut self) {
        let root = self.domain_with(
            "RootDomain",
            Attrs {
                mode: 0o40755,
                uid: 0,
                gid: 0,
                pc: 0,
            },
        );
        let root_prefs: &[&str] = &[
            "com.apple.MobileBackup",
            "com.apple.backupd",
            "com.apple.MobileAsset",
            "com.apple.preferences.network",
            "UserEventAgent",
            "com.apple.atc",
            "com.apple.corecaptured",
            "com.apple.tailspin",
        ];
        let n = (self.p.home_prefs / 10).clamp(1, root_prefs.len());
        for name in &root_prefs[..n] {
            let s = self.plist_size();
            let g = self.doc(Style::BinaryPlist);
            let i = self.file(
                root,
                &format!("Library/Preferences/{name}.plist"),
                s,
                g,
                Attrs {
                    mode: 0o100600,
                    uid: 0,
                    gid: 0,
                    pc: 4,
                },
            );
            self.plists.push(i);
        }
        if self.p.home_prefs >= 10 {
            let s = self.plist_size();
            let g = self.doc(Style::XmlPlist);
            let s = s.max(400);
            self.file(
                root,
                "Library/Caches/locationd/clients.plist",
                s,
                g,
                Attrs {
                    mode: 0o100600,
                    uid: 0,
                    gid: 0,
                    pc: 4,
                },
            );
        }

        let w = self.domain_with(
            "WirelessDomain",
            Attrs {
                mode: 0o40755,
                uid: 25,
                gid: 25,
                pc: 4,
            },
        );
        let act = Activity {
            daily_pct: 80,
            change_ppm: 20_000,
            grow_max: 1,
        };
        self.db(
            w,
            "Library/Databases/DataUsage.sqlite",
            self.p.db_leaves_max / 2 + 1,
            act,
            (30, "ZPROCESS"),
            Attrs {
                mode: 0o100644,
                uid: 25,
                gid: 25,
                pc: 4,
            },
        );
        if self.p.home_prefs >= 10 {
            self.small_db(w, "Library/Databases/CellularUsage.db");
        }
        for name in [
            "com.apple.commcenter",
            "com.apple.commcenter.callservices",
            "com.apple.coretelephony",
        ]
        .iter()
        .take(1 + self.p.home_prefs / 40)
        {
            let s = self.plist_size();
            let g = self.doc(Style::BinaryPlist);
            let i = self.file(
                w,
                &format!("Library/Preferences/{name}.plist"),
                s,
                g,
                Attrs {
                    mode: 0o100600,
                    uid: 25,
                    gid: 25,
                    pc: 4,
                },
            );
            self.plists.push(i);
        }

        let m = self.domain("ManagedPreferencesDomain");
        self.pref(m, "mobile/.GlobalPreferences.plist");
        if self.p.home_prefs >= 10 {
            self.pref(m, "mobile/com.apple.webcontentfilter.plist");
        }

        let sp = self.domain("SystemPreferencesDomain");
        let s = self.rng.range(2_000, 30_000);
        let g = self.doc(Style::XmlPlist);
        let i = self.file(
            sp,
            "SystemConfiguration/preferences.plist",
            s,
            g,
            attrs(0o100644, 3),
        );
        self.plists.push(i);
        let g = self.doc(Style::BinaryPlist);
        let s = self.rng.range(1_000, 20_000);
        let i = self.file(
            sp,
            "com.apple.wifi.known-networks.plist",
            s,
            g,
            Attrs {
                mode: 0o100644,
                uid: 0,
                gid: 0,
                pc: 3,
            },
        );
        self.plists.push(i);
        if self.p.home_prefs >= 10 {
            self.pref(sp, "com.apple.networkextension.plist");
            self.pref(sp, "SystemConfiguration/com.apple.radios.plist");
        }

        let db = self.domain_with(
            "DatabaseDomain",
            Attrs {
                mode: 0o40755,
                uid: 0,
                gid: 0,
                pc: 4,
            },
        );
        self.add_dir(
            db,
            "timezone",
            Attrs {
                mode: 0o40555,
                uid: 0,
                gid: 0,
                pc: 4,
            },
        );
        self.link(
            db,
            "timezone/localtime",
            "/var/db/timezone/zoneinfo/Europe/London".into(),
        );
        if self.p.rich {
            let g = self.doc(Style::XmlPlist);
            let a = Attrs {
                mode: 0o100644,
                uid: 0,
                gid: 0,
                pc: 4,
            };
            self.file(db, "com.apple.xpc.launchd/disabled.plist", 512, g, a);
        }
        if self.p.rich {
            self.dir(db, "lsd");
        }

        for name in SYS_CONTAINERS.iter().take(self.p.sys_containers) {
            let d = self.domain_with(
                &format!("SysContainerDomain-{name}"),
                Attrs {
                    mode: 0o40755,
                    uid: 0,
                    gid: 0,
                    pc: 0,
                },
            );
            for dir in ["Documents", "Library", "Library/Preferences", "tmp"] {
                self.dir(d, dir);
            }
            if self.rng.percent(40) {
                self.pref(d, &format!("Library/Preferences/{name}.plist"));
            }
        }
        for name in SYS_SHARED.iter().take(self.p.sys_shared) {
            let d = self.domain(&format!("SysSharedContainerDomain-{name}"));
            self.dir(d, "Library/Preferences");
            self.pref(d, &format!("Library/Preferences/{name}.plist"));
            if name.ends_with("bluetooth") {
                self.small_db(
                    d,
                    "Library/Database/com.apple.MobileBluetooth.ledevices.paired.db",
                );
            }
        }
    }

    fn container_skeleton(&mut self, d: u32) {
        for dir in ["Documents", "Library", "Library/Preferences"] {
            self.dir(d, dir);
        }
    }

    fn apple_apps(&mut self) {
        for b in APPLE_APPS.iter().take(self.p.apple_apps) {
            let d = self.domain(&format!("AppDomain-{b}"));
            self.container_skeleton(d);
            if self.rng.percent(60) {
                self.pref(d, &format!("Library/Preferences/{b}.plist"));
            }
            if *b == "com.apple.mobilesafari" && self.p.rich {
                let t = self.container_path("Library/WebKit/WebsiteData/IndexedDB");
                self.link(d, "Library/WebKit/WebsiteData/IndexedDB/v0", t);
            }
        }
        if self.p.apple_apps > 4 {
            let d = self.domain("AppDomainGroup-group.com.apple.notes");
            let act = Activity {
                daily_pct: 25,
                change_ppm: 10_000,
                grow_max: 1,
            };
            self.db(
                d,
                "NoteStore.sqlite",
                self.p.db_leaves_max,
                act,
                (80, "ZICCLOUDSYNCINGOBJECT"),
                PRIVATE,
            );
            self.dir(d, "Accounts/LocalAccount/Media");
        }
    }

    fn container_path(&mut self, rest: &str) -> String {
        let id = uuid(&mut self.rng);
        format!("/var/mobile/Containers/Data/Application/{id}/{rest}")
    }

    fn app_list(&mut self) -> Vec<(String, String, AppKind)> {
        let mut out: Vec<(String, String, AppKind)> = APPS
            .iter()
            .map(|(b, n, k)| (b.to_string(), n.to_string(), *k))
            .collect();
        // Which well-known apps this phone has: a seed-dependent selection, messengers first.
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by_key(|&i| (i > 0, hash(&[self.seed, i as u64]) % 1000));
        out = order.into_iter().map(|i| out[i].clone()).collect();
        let kinds = [
            AppKind::Tool,
            AppKind::Game,
            AppKind::Media,
            AppKind::Social,
        ];
        let mut k = 0u64;
        while out.len() < self.p.apps {
            let v = VENDORS[(k as usize) % VENDORS.len()];
            let p = PRODUCTS[((k / VENDORS.len() as u64) as usize + k as usize) % PRODUCTS.len()];
            out.push((
                format!("com.{v}.{}", p.to_lowercase()),
                format!("{p} by {v}"),
                kinds[(k % 4) as usize],
            ));
            k += 1;
        }
        out.truncate(self.p.apps);
        out
    }

    fn third_party_apps(&mut self) {
        let apps = self.app_list();
        // Files shared by SDKs bundled into many apps: byte-identical across containers.
        let sdk: Vec<(&str, u64, Gen)> = vec![
            (
                "Library/Application Support/Google/FIRApp/firebase-heartbeat.json",
                380,
                Gen::Doc {
                    key: hash(&[self.seed, 0x5D0]),
                    version: 0,
                    style: Style::Json,
                },
            ),
            (
                "Library/Application Support/com.crashlytics/settings.json",
                1_900,
                Gen::Doc {
                    key: hash(&[self.seed, 0x5D1]),
                    version: 0,
                    style: Style::Json,
                },
            ),
            (
                "Library/Application Support/Fonts/Inter-Regular.ttf",
                310_000,
                Gen::Binary {
                    // A font file is the same on every phone.
                    key: hash(&[SHARED_CONTENT_SEED, 0x5D2]),
                    mask: 0xFF,
                    zero_pct: 15,
                },
            ),
            (
                "Library/Application Support/Sentry/sentry-envelope.bin",
                12_288,
                Gen::Binary {
                    key: hash(&[self.seed, 0x5D3]),
                    mask: 0x7F,
                    zero_pct: 30,
                },
            ),
        ];
        // Zipf-like weights: a few apps hold most files.
        let weights: Vec<u64> = (0..apps.len())
            .map(|i| 1_000_000 / (i as u64 + 2))
            .collect();
        let total_w: u64 = weights.iter().sum::<u64>().max(1);
        let budget = (self.p.apps * self.p.app_files) as u64;
        for (i, (bundle, name, kind)) in apps.iter().enumerate() {
            let files = (budget * weights[i] / total_w).max(2) as usize;
            let mut groups = Vec::new();
            let d = self.domain(&format!("AppDomain-{bundle}"));
            self.container_skeleton(d);
            self.pref(d, &format!("Library/Preferences/{bundle}.plist"));
            for (k, (path, size, g)) in sdk.iter().enumerate() {
                if self.p.rich && hash(&[self.seed, i as u64, k as u64]) % 100 < 45 {
                    self.file(d, path, *size, g.clone(), PLAIN);
                }
            }
            if matches!(kind, AppKind::Browser | AppKind::Social) {
                let s = self.rng.range(4_000, 200_000);
                let g = Gen::Binary {
                    key: self.key(),
                    mask: 0x7F,
                    zero_pct: 10,
                };
                self.file(d, "Library/Cookies/Cookies.binarycookies", s, g, PRIVATE);
                let t = self.container_path("Library/WebKit/WebsiteData/IndexedDB");
                self.link(d, "Library/WebKit/WebsiteData/IndexedDB/v0", t);
            }
            let short = name.replace(' ', "");
            self.small_db(d, &format!("Library/Application Support/{short}.sqlite"));
            if self.p.rich {
                let path = format!("Library/Application Support/{short}/.migrated");
                self.file(d, &path, 0, Gen::Empty, PLAIN);
            }
            let mut data_domain = d;
            if matches!(kind, AppKind::Messenger) || self.rng.percent(35) {
                let group = format!("group.{bundle}");
                let g = self.domain(&format!("AppDomainGroup-{group}"));
                groups.push(group.clone());
                self.dir(g, "Library/Preferences");
                self.pref(g, &format!("Library/Preferences/{group}.plist"));
                if matches!(kind, AppKind::Messenger) {
                    let act = Activity {
                        daily_pct: 95,
                        change_ppm: 6_000,
                        grow_max: 1 + self.p.db_leaves_max / 200,
                    };
                    self.db(
                        g,
                        "ChatStorage.sqlite",
                        self.p.db_leaves_max * 2,
                        act,
                        (70, "ZWAMESSAGE"),
                        PRIVATE,
                    );
                    self.messenger_media.push(g);
                    data_domain = g;
                }
            }
            // The first app always has an extension, so every profile has a plugin domain.
            if i == 0 || self.rng.percent(30) {
                let n = if self.p.rich {
                    1 + self.rng.below(2) as usize
                } else {
                    1
                };
                for ext in ["ShareExtension", "Widget"].iter().take(n) {
                    let pb = format!("{bundle}.{ext}");
                    let pd = self.domain(&format!("AppDomainPlugin-{pb}"));
                    self.container_skeleton(pd);
                    self.pref(pd, &format!("Library/Preferences/{pb}.plist"));
                }
            }
            if self.p.rich {
                self.app_assets(d, bundle, &short);
            }
            self.app_payload(d, data_domain, &short, *kind, files);
            self.apps.push(InstalledApp {
                bundle_id: bundle.clone(),
                display_name: name.clone(),
                version: format!(
                    "{}.{}",
                    100 + hash(&[self.seed, i as u64, 1]) % 900,
                    hash(&[self.seed, i as u64, 2]) % 50
                ),
                short_version: format!(
                    "{}.{}.{}",
                    1 + hash(&[self.seed, i as u64, 3]) % 30,
                    hash(&[self.seed, i as u64, 4]) % 20,
                    hash(&[self.seed, i as u64, 5]) % 10
                ),
                groups,
            });
        }
    }

    /// The bulk of an app's files: folders of documents, caches the app keeps, media.
    fn app_payload(&mut self, d: u32, data_domain: u32, short: &str, kind: AppKind, files: usize) {
        let tops = [
            format!("Library/Application Support/{short}"),
            "Documents".to_string(),
            format!("Library/{short}Data"),
            "Library/WebKit/WebsiteData/LocalStorage".to_string(),
        ];
        let mut folders: Vec<String> = Vec::new();
        for _ in 0..(files / 25).clamp(1, 200) {
            let top = self.rng.pick(&tops).clone();
            let depth = if self.p.rich { self.rng.range(0, 3) } else { 0 };
            let mut p = top;
            for _ in 0..depth {
                p = format!("{p}/{}", self.rng.pick(WORDS));
            }
            folders.push(p);
        }
        for k in 0..files {
            let media = self.p.rich
                && matches!(kind, AppKind::Messenger | AppKind::Social)
                && self.rng.percent(15);
            if media && data_domain != d {
                let i = self.messenger_file(data_domain, None);
                self.ephemeral.push(i);
                continue;
            }
            let folder = self.rng.pick(&folders).clone();
            let roll = self.rng.below(1000);
            let w = *self.rng.pick(WORDS);
            let (name, size, g, a, mutable) = match roll {
                0..=299 => (
                    format!("{w}_{k}.plist"),
                    self.plist_size(),
                    self.doc(Style::BinaryPlist),
                    PREF,
                    true,
                ),
                300..=499 => (
                    format!("{w}-{k}.json"),
                    self.rng.log_uniform(40, 16_000),
                    self.doc(Style::Json),
                    PRIVATE,
                    true,
                ),
                500..=579 => (
                    format!("{w}.{k}.log"),
                    self.rng.log_uniform(200, 60_000),
                    self.doc(Style::Log),
                    PRIVATE,
                    true,
                ),
                580..=639 => (
                    format!("{}.txt", uuid(&mut self.rng)),
                    self.rng.log_uniform(40, 8_000),
                    self.doc(Style::Text),
                    PLAIN,
                    true,
                ),
                640..=949 => {
                    let s = self.rng.log_uniform(64, 32_000);
                    let mask = *self.rng.pick(&[0xFFu8, 0x7F, 0x3F]);
                    (
                        format!("{w}{k}.dat"),
                        s,
                        Gen::Binary {
                            key: self.key(),
                            mask,
                            zero_pct: 25,
                        },
                        PRIVATE,
                        false,
                    )
                }
                950..=997 => {
                    let s = self.rng.log_uniform(8_000, 200_000);
                    let fmt = *self.rng.pick(&[Media::Jpeg, Media::Png, Media::Webp]);
                    let ext = match fmt {
                        Media::Png => "png",
                        Media::Webp => "webp",
                        _ => "jpg",
                    };
                    (
                        format!("{}.{ext}", uuid(&mut self.rng).to_lowercase()),
                        s,
                        Gen::Media {
                            key: self.key(),
                            format: fmt,
                        },
                        PLAIN,
                        false,
                    )
                }
                _ => {
                    let s = self.media_size(400_000, 4_000_000);
                    (
                        format!("{w}-{k}.bin"),
                        s,
                        Gen::Media {
                            key: self.key(),
                            format: Media::Raw,
                        },
                        PLAIN,
                        false,
                    )
                }
            };
            let i = self.file(d, &format!("{folder}/{name}"), size, g, a);
            if mutable {
                self.docs.push(i);
            } else if self.rng.percent(50) {
                self.ephemeral.push(i);
            }
        }
    }

    /// A media file a messenger received; `times` None means a day-1 file.
    fn messenger_file(&mut self, domain: u32, times: Option<(i64, i64, i64)>) -> usize {
        let chat = format!("{:02x}{:06x}", self.rng.below(256), self.rng.below(1 << 24));
        let name = format!(
            "Message/Media/{chat}@s.whatsapp.net/{:x}/{:x}/{}.jpg",
            self.rng.below(16),
            self.rng.below(16),
            uuid(&mut self.rng).to_lowercase()
        );
        let (size, g) = if self.p.rich && self.rng.percent(30) {
            self.shared_picture()
        } else {
            let size = self.media_size(30_000, 250_000);
            let g = Gen::Media {
                key: self.key(),
                format: Media::Jpeg,
            };
            (size, g)
        };
        let times = times.unwrap_or_else(|| self.past_times());
        self.file_at(domain, &name, size, g, attrs(0o100644, 3), times)
    }

    /// A picture from the pool every phone's chats draw from (size and bytes from the shared
    /// seed; which one from this phone's generator).
    fn shared_picture(&mut self) -> (u64, Gen) {
        let idx = self.rng.below(SHARED_MEDIA_POOL);
        let mut r = Rng::from_parts(&[SHARED_CONTENT_SEED, 0x9E11, idx]);
        let size = (r.log_uniform(40_000, 400_000) * self.p.media_pct / 100).max(1024);
        let g = Gen::Media {
            key: r.next_u64(),
            format: Media::Jpeg,
        };
        (size, g)
    }

    /// What an app downloads after install (ML models, sticker packs): named, sized and
    /// filled from the shared seed and the bundle id, so every phone with the app has the
    /// same files.
    fn app_assets(&mut self, d: u32, bundle: &str, short: &str) {
        let mut r = Rng::from_parts(&[SHARED_CONTENT_SEED, str_key(bundle)]);
        for k in 0..r.range(1, 3) {
            let size = (r.log_uniform(60_000, 3_000_000) * self.p.media_pct / 100).max(4096);
            let (name, g) = if r.percent(50) {
                let g = Gen::Binary {
                    key: r.next_u64(),
                    mask: 0xFF,
                    zero_pct: 5,
                };
                (format!("model-{k}.bin"), g)
            } else {
                let g = Gen::Media {
                    key: r.next_u64(),
                    format: Media::Png,
                };
                (format!("stickers-{k}.png"), g)
            };
            let path = format!("Library/Application Support/{short}/Assets/{name}");
            self.file(d, &path, size, g, PLAIN);
        }
    }

    /// Files with names that exercise every path-handling layer (Files app storage).
    fn files_app(&mut self) {
        let d = self.domain("AppDomainGroup-group.com.apple.FileProvider.LocalStorage");
        for (k, name) in ODD_NAMES.iter().take(self.p.odd_names).enumerate() {
            let size = if k == 0 {
                0
            } else {
                self.rng.log_uniform(40, 30_000)
            };
            let g = if size == 0 {
                Gen::Empty
            } else {
                self.doc(Style::Text)
            };
            self.file(
                d,
                &format!("File Provider Storage/Documents/{name}"),
                size,
                g.clone(),
                attrs(0o100644, 3),
            );
            let decomposed = nfd(name);
            if decomposed != *name {
                // The same name in the other normal form, in another folder (one folder
                // cannot hold both on a normalisation-insensitive file system).
                self.file(
                    d,
                    &format!("File Provider Storage/Archive/{decomposed}"),
                    size,
                    g,
                    attrs(0o100644, 3),
                );
            }
        }
        // Long components: 240 ASCII bytes, and 249 bytes of three-byte CJK + ".txt" (253).
        let long_ascii = format!(
            "{}.txt",
            &"Quarterly report draft with comments ".repeat(7)[..236]
        );
        let long_cjk = format!("{}.txt", "長".repeat(83));
        for name in [long_ascii, long_cjk] {
            debug_assert!(name.len() <= 255 && name.len() > 200);
            let g = self.doc(Style::Text);
            let s = self.rng.range(100, 5_000);
            self.file(
                d,
                &format!("File Provider Storage/Long names/{name}"),
                s,
                g,
                attrs(0o100644, 3),
            );
        }
    }

    fn change_times(&mut self, day: u32) -> (i64, i64, i64) {
        let now = self.t0 + i64::from(day - 1) * DAY;
        let t = now - self.rng.range(120, (DAY - 600) as u64) as i64;
        (t, t, t + self.rng.below(5) as i64)
    }

    fn remove(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.alive = false;
        if matches!(n.kind, Kind::Dir) {
            self.dirs[n.domain as usize].remove(&n.path);
        }
    }

    fn rewrite(&mut self, i: usize, day: u32) {
        let times = self.change_times(day);
        let mut rng = Rng::from_parts(&[self.seed, u64::from(day), i as u64, 0x4E11]);
        let n = &mut self.nodes[i];
        if let Kind::File {
            size,
            content: Gen::Doc { version, style, .. },
        } = &mut n.kind
        {
            *version += 1;
            let s = *size;
            *size = match style {
                // Logs grow; the keychain keeps its size class; the rest wobble.
                Style::Log => s + rng.range(80, 2_000),
                Style::Keychain => s,
                _ => (s + rng.range(0, s / 10 + 8))
                    .saturating_sub(rng.range(0, s / 10 + 8))
                    .max(if *style == Style::XmlPlist { 300 } else { 96 }),
            };
            n.mtime = times.1;
            n.ctime = times.2;
        }
    }

    /// A light day: one photo, one preference rewritten, every other day an app file gone;
    /// the big databases change a few leaves by themselves (see [`Builder::db`]).
    fn light_day(&mut self, day: u32) {
        let t = self.change_times(day);
        let g = self.take_photo(t);
        self.photos.push(g);
        if !self.plists.is_empty() {
            let i = *self.rng.pick(&self.plists);
            self.rewrite(i, day);
        }
        if day % 2 == 1 && !self.ephemeral.is_empty() {
            let k = self.rng.below(self.ephemeral.len() as u64) as usize;
            let i = self.ephemeral.swap_remove(k);
            self.remove(i);
        }
    }

    fn mutate(&mut self, day: u32) {
        self.rng = Rng::from_parts(&[self.seed, u64::from(day), 0xDA7]);
        if self.p.light_days {
            self.light_day(day);
            return;
        }
        let daily = self.p.daily;
        // New photos (at least one: every day brings something new).
        for _ in 0..self.rng.range(1, 2 * daily) {
            let t = self.change_times(day);
            let g = self.take_photo(t);
            self.photos.push(g);
        }
        // Messages: sms.db changes by itself; an attachment now and then.
        if self.rng.percent(70) {
            let t = self.change_times(day);
            self.add_attachment(t);
        }
        for _ in 0..self.rng.range(0, 2 * daily) {
            if self.messenger_media.is_empty() {
                break;
            }
            let m = self.rng.below(self.messenger_media.len() as u64) as usize;
            let dom = self.messenger_media[m];
            let t = self.change_times(day);
            let i = self.messenger_file(dom, Some(t));
            self.ephemeral.push(i);
        }
        // Deletions: a photo or two, some app media.
        for _ in 0..self.rng.range(1, daily) {
            if self.photos.len() <= 1 {
                break;
            }
            let g = self.rng.below(self.photos.len() as u64) as usize;
            for i in self.photos.swap_remove(g) {
                self.remove(i);
            }
        }
        for _ in 0..self.rng.range(0, 3 * daily) {
            if self.ephemeral.is_empty() {
                break;
            }
            let k = self.rng.below(self.ephemeral.len() as u64) as usize;
            let i = self.ephemeral.swap_remove(k);
            self.remove(i);
        }
        // Rewritten preferences (about 1 %) and documents (about 0.5 %), at least one.
        let n = (self.plists.len() as u64 * self.rng.range(5, 15) / 1000).max(1);
        for _ in 0..n {
            let i = *self.rng.pick(&self.plists);
            self.rewrite(i, day);
        }
        if !self.docs.is_empty() {
            let n = (self.docs.len() as u64 / 200).max(1);
            for _ in 0..n {
                let i = *self.rng.pick(&self.docs);
                self.rewrite(i, day);
            }
        }
    }

    fn finish(mut self, day: u32) -> Vec<Entry> {
        // Databases: their own day-by-day model decides size and mtime.
        for &i in &self.dbs {
            let n = &mut self.nodes[i];
            if let Kind::File {
                size,
                content: Gen::Sqlite(spec),
            } = &mut n.kind
            {
                *size = spec.advance_to(day);
                if spec.state_day > spec.born {
                    let now = self.t0 + i64::from(spec.state_day - 1) * DAY;
                    let t = now
                        - (hash(&[spec.key, u64::from(spec.state_day)]) % (DAY as u64 - 600))
                            as i64
                        - 120;
                    n.mtime = t;
                    n.ctime = t;
                }
            }
        }
        let domains = self.domains;
        let mut out: Vec<Entry> = self
            .nodes
            .into_iter()
            .filter(|n| n.alive)
            .map(|n| Entry {
                domain: domains[n.domain as usize].clone(),
                relative_path: n.path,
                kind: match n.kind {
                    Kind::Dir => EntryKind::Dir,
                    Kind::Link(target) => EntryKind::Symlink { target },
                    Kind::File { size, content } => EntryKind::File {
                        size,
                        content: Content(content),
                    },
                },
                mode: n.attrs.mode,
                user_id: n.attrs.uid,
                group_id: n.attrs.gid,
                inode: n.inode,
                birth: n.birth,
                last_modified: n.mtime.max(n.birth),
                last_status_change: n.ctime.max(n.mtime).max(n.birth),
                protection_class: n.attrs.pc,
            })
            .collect();
        out.sort_unstable_by(|a, b| {
            (a.domain.as_str(), a.relative_path.as_str(), a.inode).cmp(&(
                b.domain.as_str(),
                b.relative_path.as_str(),
                b.inode,
            ))
        });
        // A path created twice (a random name drawn again) keeps its latest version.
        out.dedup_by(|later, earlier| {
            if later.domain == earlier.domain && later.relative_path == earlier.relative_path {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfd_decomposes() {
        assert_eq!(nfd("café"), "cafe\u{301}");
        assert_ne!(nfd("Résumé"), "Résumé");
        assert_eq!(nfd("plain"), "plain");
    }

    #[test]
    fn uuids_look_like_uuids() {
        let mut r = Rng::new(3);
        let u = uuid(&mut r);
        assert_eq!(u.len(), 36);
        assert_eq!(u.as_bytes()[14], b'4');
    }
}
