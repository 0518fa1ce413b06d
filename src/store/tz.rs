//! The box's time zone for retention's calendar days: UTC offsets at any instant from a TZif file
//! (`$TZ` or `/etc/localtime`, RFC 8536) and its POSIX TZ rule, read without libc.

use std::io::Read;

use super::prune::{civil_from_days, days_from_civil};

/// Where zone files live.
pub const ZONEINFO: &str = "/usr/share/zoneinfo";
/// The system's zone file.
pub const LOCALTIME: &str = "/etc/localtime";
/// Largest zone file read.
const TZIF_MAX: u64 = 256 * 1024;

/// Why a zone could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TzError {
    /// Not a TZif file, or cut short.
    #[error("not a valid zone file: {0}")]
    BadTzif(&'static str),
    /// A POSIX TZ rule that does not parse.
    #[error("not a valid TZ rule: {0:?}")]
    BadRule(String),
    /// The file could not be read.
    #[error("cannot read the zone file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A time zone: fixed, or transitions followed by a rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Zone {
    /// (UTC second it starts, offset east of UTC in seconds), ascending.
    transitions: Vec<(i64, i32)>,
    /// Offset before the first transition (and everywhere when there are none and no rule).
    initial: i32,
    /// After the last transition.
    rule: Option<Rule>,
}

/// A POSIX TZ rule such as `CET-1CEST,M3.5.0,M10.5.0/3`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    std: i32,
    dst: Option<Dst>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dst {
    offset: i32,
    /// Day rule and local (standard) time in seconds when summer time starts.
    start: (DayRule, i32),
    /// Day rule and local (summer) time in seconds when it ends.
    end: (DayRule, i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DayRule {
    /// `Jn`: 1..=365, February 29 never counted.
    Julian1(u16),
    /// `n`: 0..=365, February 29 counted.
    Julian0(u16),
    /// `Mm.w.d`: day `d` (0 = Sunday) of week `w` (5 = last) of month `m`.
    Month(u32, u8, u8),
}

impl Zone {
    /// UTC.
    pub fn utc() -> Zone {
        Zone::default()
    }

    /// The machine's zone: `$TZ` (a rule, or a zone name or path), else `/etc/localtime`; UTC
    /// when neither is readable, as the C library does.
    pub fn local() -> Zone {
        let read = |p: &str| -> Result<Zone, TzError> {
            let mut b = Vec::new();
            std::fs::File::open(p)
                .and_then(|f| f.take(TZIF_MAX).read_to_end(&mut b))
                .map_err(|source| TzError::Io {
                    path: p.into(),
                    source,
                })?;
            Zone::from_tzif(&b)
        };
        let zone = match std::env::var("TZ") {
            Ok(tz) if !tz.is_empty() => {
                let name = tz.strip_prefix(':').unwrap_or(&tz);
                if name.starts_with('/') {
                    read(name)
                } else if name.contains("..") {
                    Zone::from_rule(name)
                } else {
                    read(&format!("{ZONEINFO}/{name}"))
                        .or_else(|e| Zone::from_rule(name).map_err(|_| e))
                }
            }
            _ => read(LOCALTIME),
        };
        zone.unwrap_or_else(|e| {
            tracing::warn!("using UTC days: {e}");
            Zone::utc()
        })
    }

    /// A zone from a POSIX TZ rule (`CET-1CEST,M3.5.0,M10.5.0/3`, `UTC0`).
    pub fn from_rule(s: &str) -> Result<Zone, TzError> {
        let rule = parse_rule(s).ok_or_else(|| TzError::BadRule(s.into()))?;
        Ok(Zone {
            transitions: Vec::new(),
            initial: rule.std,
            rule: Some(rule),
        })
    }

    /// A zone from the bytes of a TZif file (versions 1 to 4).
    pub fn from_tzif(b: &[u8]) -> Result<Zone, TzError> {
        let (h, body) = header(b)?;
        // Version 1 data (4-byte times), skipped when version 2+ data follows.
        let v1_len = h.data_len(4);
        if h.version >= b'2' {
            let rest = body.get(v1_len..).ok_or(TzError::BadTzif("cut short"))?;
            let (h2, body2) = header(rest)?;
            let zone = data(&h2, body2, 8)?;
            let footer = body2
                .get(h2.data_len(8)..)
                .ok_or(TzError::BadTzif("cut short"))?;
            let rule = std::str::from_utf8(footer)
                .ok()
                .and_then(|f| f.strip_prefix('\n'))
                .and_then(|f| f.split('\n').next())
                .filter(|r| !r.is_empty())
                .and_then(parse_rule);
            Ok(Zone { rule, ..zone })
        } else {
            data(&h, body, 4)
        }
    }

    /// Offset east of UTC, in seconds, at `t` (seconds since the epoch).
    pub fn offset_at(&self, t: i64) -> i32 {
        let after = self.transitions.partition_point(|(at, _)| *at <= t);
        match (after, &self.rule) {
            (0, _) if !self.transitions.is_empty() => self.initial,
            (n, Some(rule)) if n == self.transitions.len() => rule.offset_at(t),
            (0, None) => self.initial,
            (n, _) => self.transitions[n - 1].1,
        }
    }

    /// The local time of `ms` (ms since the epoch), as ms since the epoch of that wall clock.
    pub fn local_ms(&self, ms: i64) -> i64 {
        ms + i64::from(self.offset_at(ms.div_euclid(1000))) * 1000
    }
}

struct Header {
    version: u8,
    isutcnt: usize,
    isstdcnt: usize,
    leapcnt: usize,
    timecnt: usize,
    typecnt: usize,
    charcnt: usize,
}

impl Header {
    fn data_len(&self, time: usize) -> usize {
        self.timecnt * (time + 1)
            + self.typecnt * 6
            + self.charcnt
            + self.leapcnt * (time + 4)
            + self.isstdcnt
            + self.isutcnt
    }
}

fn header(b: &[u8]) -> Result<(Header, &[u8]), TzError> {
    if b.len() < 44 || &b[..4] != b"TZif" {
        return Err(TzError::BadTzif("no TZif header"));
    }
    let n = |i: usize| {
        u32::from_be_bytes([b[20 + 4 * i], b[21 + 4 * i], b[22 + 4 * i], b[23 + 4 * i]]) as usize
    };
    let h = Header {
        version: b[4],
        isutcnt: n(0),
        isstdcnt: n(1),
        leapcnt: n(2),
        timecnt: n(3),
        typecnt: n(4),
        charcnt: n(5),
    };
    let counts = [
        h.isutcnt, h.isstdcnt, h.leapcnt, h.timecnt, h.typecnt, h.charcnt,
    ];
    if h.typecnt == 0 || counts.iter().any(|n| *n > b.len()) {
        return Err(TzError::BadTzif("impossible counts"));
    }
    Ok((h, &b[44..]))
}

fn data(h: &Header, b: &[u8], time: usize) -> Result<Zone, TzError> {
    if b.len() < h.data_len(time) {
        return Err(TzError::BadTzif("cut short"));
    }
    let times = &b[..h.timecnt * time];
    let idx = &b[h.timecnt * time..h.timecnt * (time + 1)];
    let types = &b[h.timecnt * (time + 1)..h.timecnt * (time + 1) + h.typecnt * 6];
    let offset = |t: usize| -> Result<i32, TzError> {
        let e = types
            .get(t * 6..t * 6 + 4)
            .ok_or(TzError::BadTzif("bad type index"))?;
        Ok(i32::from_be_bytes([e[0], e[1], e[2], e[3]]))
    };
    let mut transitions = Vec::with_capacity(h.timecnt);
    for (i, &ty) in idx.iter().enumerate() {
        let at = if time == 8 {
            i64::from_be_bytes(times[i * 8..i * 8 + 8].try_into().unwrap_or_default())
        } else {
            i64::from(i32::from_be_bytes(
                times[i * 4..i * 4 + 4].try_into().unwrap_or_default(),
            ))
        };
        transitions.push((at, offset(usize::from(ty))?));
    }
    Ok(Zone {
        transitions,
        initial: offset(0)?,
        rule: None,
    })
}

impl Rule {
    fn offset_at(&self, t: i64) -> i32 {
        let Some(dst) = &self.dst else {
            return self.std;
        };
        let (year, _, _) = civil_from_days((t + i64::from(self.std)).div_euclid(86_400));
        let start = dst.start.0.day(year) * 86_400 + i64::from(dst.start.1 - self.std);
        let end = dst.end.0.day(year) * 86_400 + i64::from(dst.end.1 - dst.offset);
        let summer = if start < end {
            start <= t && t < end
        } else {
            !(end <= t && t < start)
        };
        if summer {
            dst.offset
        } else {
            self.std
        }
    }
}

impl DayRule {
    /// Days since the epoch of this rule's day in `year`.
    fn day(self, year: i64) -> i64 {
        let jan1 = days_from_civil(year, 1, 1);
        let leap = days_from_civil(year + 1, 1, 1) - jan1 == 366;
        match self {
            DayRule::Julian1(n) => jan1 + i64::from(n) - 1 + i64::from(leap && n >= 60),
            DayRule::Julian0(n) => jan1 + i64::from(n),
            DayRule::Month(m, w, d) => {
                let first = days_from_civil(year, m, 1);
                let next = if m == 12 {
                    days_from_civil(year + 1, 1, 1)
                } else {
                    days_from_civil(year, m + 1, 1)
                };
                let weekday = (first + 4).rem_euclid(7); // 1970-01-01 was a Thursday; Sunday = 0
                let mut day =
                    first + (i64::from(d) - weekday).rem_euclid(7) + 7 * (i64::from(w) - 1);
                while day >= next {
                    day -= 7;
                }
                day
            }
        }
    }
}

/// Parses `std offset [dst [offset] [,start[/time],end[/time]]]`.
fn parse_rule(s: &str) -> Option<Rule> {
    let mut p = Parser(s.as_bytes());
    p.name()?;
    let std = -p.hms()?;
    if p.0.is_empty() {
        return Some(Rule { std, dst: None });
    }
    p.name()?;
    let offset = if p.0.first().is_some_and(|c| *c != b',') {
        -p.hms()?
    } else {
        std + 3600
    };
    let (start, end) = if p.0.is_empty() {
        // No rule given: the US rule, as the C library assumes.
        (
            (DayRule::Month(3, 2, 0), 7200),
            (DayRule::Month(11, 1, 0), 7200),
        )
    } else {
        p.eat(b',')?;
        let start = p.day_and_time()?;
        p.eat(b',')?;
        (start, p.day_and_time()?)
    };
    if !p.0.is_empty() {
        return None;
    }
    Some(Rule {
        std,
        dst: Some(Dst { offset, start, end }),
    })
}

struct Parser<'a>(&'a [u8]);

impl Parser<'_> {
    fn eat(&mut self, c: u8) -> Option<()> {
        let (&first, rest) = self.0.split_first()?;
        (first == c).then(|| self.0 = rest)
    }

    fn name(&mut self) -> Option<()> {
        let n = if self.eat(b'<').is_some() {
            let n = self.0.iter().position(|c| *c == b'>')?;
            self.0 = &self.0[n + 1..];
            n
        } else {
            let n = self
                .0
                .iter()
                .take_while(|c| c.is_ascii_alphabetic())
                .count();
            self.0 = &self.0[n..];
            n
        };
        (n >= 3).then_some(())
    }

    fn number(&mut self) -> Option<i32> {
        let n = self.0.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 3 {
            return None;
        }
        let v = std::str::from_utf8(&self.0[..n]).ok()?.parse().ok()?;
        self.0 = &self.0[n..];
        Some(v)
    }

    /// `[+-]hh[:mm[:ss]]` in seconds (west of UTC positive, as POSIX writes offsets).
    fn hms(&mut self) -> Option<i32> {
        let sign = if self.eat(b'-').is_some() {
            -1
        } else {
            let _ = self.eat(b'+');
            1
        };
        let mut v = self.number()? * 3600;
        if self.eat(b':').is_some() {
            v += self.number()? * 60;
            if self.eat(b':').is_some() {
                v += self.number()?;
            }
        }
        Some(sign * v)
    }

    fn day_and_time(&mut self) -> Option<(DayRule, i32)> {
        let day = if self.eat(b'M').is_some() {
            let m = self.number()?;
            self.eat(b'.')?;
            let w = self.number()?;
            self.eat(b'.')?;
            let d = self.number()?;
            if !(1..=12).contains(&m) || !(1..=5).contains(&w) || !(0..=6).contains(&d) {
                return None;
            }
            DayRule::Month(m as u32, w as u8, d as u8)
        } else if self.eat(b'J').is_some() {
            let n = self.number()?;
            (1..=365)
                .contains(&n)
                .then_some(DayRule::Julian1(n as u16))?
        } else {
            let n = self.number()?;
            (0..=365)
                .contains(&n)
                .then_some(DayRule::Julian0(n as u16))?
        };
        let time = if self.eat(b'/').is_some() {
            self.hms()?
        } else {
            7200
        };
        Some((day, time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i32 = 3600;

    /// Seconds since the epoch of a UTC wall-clock time.
    fn utc(y: i64, m: u32, d: u32, hh: i64, mm: i64) -> i64 {
        days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60
    }

    #[test]
    fn posix_rules_north_and_south() {
        let paris = Zone::from_rule("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        // 2026: summer time from March 29 01:00 UTC to October 25 01:00 UTC.
        assert_eq!(paris.offset_at(utc(2026, 3, 29, 0, 59)), H);
        assert_eq!(paris.offset_at(utc(2026, 3, 29, 1, 0)), 2 * H);
        assert_eq!(paris.offset_at(utc(2026, 10, 25, 0, 59)), 2 * H);
        assert_eq!(paris.offset_at(utc(2026, 10, 25, 1, 0)), H);
        assert_eq!(paris.offset_at(utc(2026, 12, 31, 23, 30)), H);
        let sydney = Zone::from_rule("AEST-10AEDT,M10.1.0,M4.1.0/3").unwrap();
        assert_eq!(sydney.offset_at(utc(2026, 1, 15, 12, 0)), 11 * H);
        assert_eq!(sydney.offset_at(utc(2026, 7, 15, 12, 0)), 10 * H);
        // New Year's Eve in summer time, just before the UTC year ends.
        assert_eq!(sydney.offset_at(utc(2026, 12, 31, 23, 0)), 11 * H);
        let kolkata = Zone::from_rule("IST-5:30").unwrap();
        assert_eq!(kolkata.offset_at(0), 5 * H + 1800);
        let quoted = Zone::from_rule("<-03>3").unwrap();
        assert_eq!(quoted.offset_at(0), -3 * H);
        for bad in [
            "",
            "CET",
            "CE-1",
            "CET-1CEST,M13.1.0,M10.5.0",
            "CET-1CEST,M3.5.0",
            "X",
        ] {
            assert!(Zone::from_rule(bad).is_err(), "{bad}");
        }
    }

    /// A zone file of the system's tzdata, read in place (Debian's `tzdata`, priority required).
    fn system_tzif(name: &str) -> Vec<u8> {
        let path = format!("/usr/share/zoneinfo/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (install tzdata)"))
    }

    #[test]
    fn tzif_files_past_and_future() {
        let paris = Zone::from_tzif(&system_tzif("Europe/Paris")).unwrap();
        assert_eq!(paris.offset_at(utc(2026, 6, 1, 12, 0)), 2 * H);
        assert_eq!(paris.offset_at(utc(2026, 1, 1, 12, 0)), H);
        // 1970s France had no summer time; wartime Paris was on German time.
        assert_eq!(paris.offset_at(utc(1970, 7, 1, 12, 0)), H);
        assert_eq!(paris.offset_at(utc(1942, 1, 1, 12, 0)), 2 * H);
        // Past the file's last transition: its footer rule.
        assert_eq!(paris.offset_at(utc(2060, 7, 1, 12, 0)), 2 * H);
        assert_eq!(paris.offset_at(utc(2060, 1, 1, 12, 0)), H);
        let sydney = Zone::from_tzif(&system_tzif("Australia/Sydney")).unwrap();
        assert_eq!(sydney.offset_at(utc(2026, 1, 1, 0, 0)), 11 * H);
        assert_eq!(sydney.offset_at(utc(2060, 7, 1, 0, 0)), 10 * H);
        assert!(Zone::from_tzif(b"TZif2").is_err());
        assert!(Zone::from_tzif(&[0; 100]).is_err());
        let cut = system_tzif("Europe/Paris");
        assert!(Zone::from_tzif(&cut[..600]).is_err());
    }

    #[test]
    fn utc_is_the_identity() {
        let z = Zone::utc();
        assert_eq!(z.local_ms(1_764_000_000_123), 1_764_000_000_123);
        let paris = Zone::from_rule("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(paris.local_ms(0), 3_600_000);
    }
}
