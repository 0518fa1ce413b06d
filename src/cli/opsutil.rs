//! Small helpers shared by the maintenance commands (check, stats, prune, pin, index, keys):
//! dates, snapshot selection by id prefix, and progress lines on a terminal.

use anyhow::bail;
use cradle::store::ids::SnapshotId;
use cradle::store::repo::Repository;
use cradle::store::snapshot::SnapshotRecord;
use std::io::{IsTerminal, Write};

/// `YYYY-MM-DD hh:mm:ss` (UTC) of a time in ms.
pub fn date(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = cradle::store::prune::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `YYYY-MM-DD hh:mm:ss +hh:mm` of a time in ms, in `zone` (prune decides by local days).
pub fn date_in(ms: i64, zone: &cradle::store::tz::Zone) -> String {
    let off = zone.offset_at(ms.div_euclid(1000));
    let sign = if off < 0 { '-' } else { '+' };
    let a = off.unsigned_abs();
    format!(
        "{} {sign}{:02}:{:02}",
        date(zone.local_ms(ms)),
        a / 3600,
        a / 60 % 60
    )
}

/// Resolves SNAP: `latest` (the last of `cradle snapshots`' list), or a unique prefix of a
/// SnapshotId, among readable records.
pub fn resolve(repo: &Repository, snap: &str) -> anyhow::Result<(SnapshotId, SnapshotRecord)> {
    let all = repo.snapshots_oldest_first()?;
    if snap == "latest" {
        return all
            .into_iter()
            .last()
            .ok_or_else(|| anyhow::anyhow!("the repository has no snapshots yet"));
    }
    let s = snap.to_ascii_lowercase();
    let mut hits: Vec<_> = all
        .into_iter()
        .filter(|(id, _)| id.to_hex().starts_with(&s))
        .collect();
    match hits.len() {
        0 => bail!("no snapshot {snap:?} (see `cradle snapshots`)"),
        1 => Ok(hits.remove(0)),
        n => bail!("{n} snapshots start with {snap:?}: give more characters"),
    }
}

/// Progress on stderr, only when it is a terminal; one line rewritten in place.
pub struct Progress {
    on: bool,
    last: String,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            on: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    pub fn show(&mut self, what: &str, done: u64, total: u64) {
        if !self.on {
            return;
        }
        let line = format!("{what} {done}/{total}");
        if line != self.last {
            let mut e = std::io::stderr();
            let _ = write!(e, "\r\x1b[K{line}");
            let _ = e.flush();
            self.last = line;
        }
    }

    pub fn done(&mut self) {
        if self.on && !self.last.is_empty() {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.last.clear();
        }
    }
}

/// Bytes for people: `1.2 MB`.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_sizes() {
        assert_eq!(date(86_400_000 + 3_661_000), "1970-01-02 01:01:01");
        let zone = cradle::store::tz::Zone::from_rule("<-0330>3:30").unwrap();
        assert_eq!(
            date_in(86_400_000 + 3_661_000, &zone),
            "1970-01-01 21:31:01 -03:30"
        );
        assert_eq!(
            date_in(3_661_000, &cradle::store::tz::Zone::utc()),
            "1970-01-01 01:01:01 +00:00"
        );
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500_000), "1.5 MB");
    }
}
