//! Burn-in care as a pure state machine: dim after a minute without events, blank after ten,
//! and shift the picture by a pixel every few minutes. Time is passed in; nothing sleeps.

use super::panel::Brightness;
use std::time::{Duration, Instant};

/// Pixel offsets the picture cycles through. Screens keep column 127 and row 63 free, so every
/// offset shows the whole picture.
pub const SHIFT_CYCLE: [(i32, i32); 4] = [(0, 0), (1, 0), (1, 1), (0, 1)];

/// Burn-in timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BurnInConfig {
    /// Dim after this long without an event.
    pub dim_after: Duration,
    /// Switch the panel off after this long without an event (unless a screen keeps it awake).
    pub blank_after: Duration,
    /// Move to the next offset of `SHIFT_CYCLE` this often.
    pub shift_every: Duration,
}

impl Default for BurnInConfig {
    fn default() -> Self {
        Self {
            dim_after: Duration::from_secs(60),
            blank_after: Duration::from_secs(10 * 60),
            shift_every: Duration::from_secs(3 * 60),
        }
    }
}

/// What the panel should look like at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Look {
    /// Panel on (false = blanked).
    pub power: bool,
    /// Contrast level.
    pub brightness: Brightness,
    /// Pixel shift to draw with.
    pub offset: (i32, i32),
}

/// The burn-in state: when the last event happened and when shifting started.
#[derive(Clone, Debug)]
pub struct BurnIn {
    config: BurnInConfig,
    epoch: Instant,
    last_event: Instant,
}

impl BurnIn {
    /// Starts awake at `now`.
    pub fn new(now: Instant, config: BurnInConfig) -> Self {
        Self {
            config,
            epoch: now,
            last_event: now,
        }
    }

    /// Something happened (phone or drive plugged or pulled, a new screen, a button): wake up.
    pub fn event(&mut self, now: Instant) {
        self.last_event = self.last_event.max(now);
    }

    /// The look at `now`. With `keep_awake` (a backup or a prompt on screen) the panel dims
    /// but never blanks, so the owner can always see that work is going on.
    pub fn look(&self, now: Instant, keep_awake: bool) -> Look {
        let idle = now.saturating_duration_since(self.last_event);
        let power = keep_awake || idle < self.config.blank_after;
        let brightness = if idle >= self.config.dim_after {
            Brightness::Dim
        } else {
            Brightness::Normal
        };
        Look {
            power,
            brightness,
            offset: SHIFT_CYCLE[self.shift_index(now)],
        }
    }

    fn shift_index(&self, now: Instant) -> usize {
        let every = self.config.shift_every.as_millis().max(1);
        let since = now.saturating_duration_since(self.epoch).as_millis();
        ((since / every) % SHIFT_CYCLE.len() as u128) as usize
    }

    /// The next moment after `now` at which `look` may change (dimming, blanking or the next
    /// shift), so a caller can sleep until then.
    pub fn next_change(&self, now: Instant, keep_awake: bool) -> Instant {
        let every = self.config.shift_every.max(Duration::from_millis(1));
        let since = now.saturating_duration_since(self.epoch);
        let steps = since.as_millis() / every.as_millis() + 1;
        let mut next = self.epoch + every.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX));
        let dim = self.last_event + self.config.dim_after;
        let blank = self.last_event + self.config.blank_after;
        for t in [dim, blank] {
            if t > now && (t != blank || !keep_awake) {
                next = next.min(t);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn dims_after_a_minute_blanks_after_ten_and_wakes_on_events() {
        let t0 = Instant::now();
        let mut b = BurnIn::new(t0, BurnInConfig::default());
        let look = b.look(at(t0, 59), false);
        assert!(look.power && look.brightness == Brightness::Normal);
        let look = b.look(at(t0, 60), false);
        assert!(look.power && look.brightness == Brightness::Dim);
        assert!(b.look(at(t0, 599), false).power);
        assert!(!b.look(at(t0, 600), false).power);
        b.event(at(t0, 700));
        let look = b.look(at(t0, 700), false);
        assert!(look.power && look.brightness == Brightness::Normal);
        assert!(!b.look(at(t0, 1300), false).power);
        // An event reported late (older than the last one) does not move time back.
        b.event(at(t0, 650));
        assert!(!b.look(at(t0, 1300), false).power);
    }

    #[test]
    fn busy_screens_dim_but_never_blank() {
        let t0 = Instant::now();
        let b = BurnIn::new(t0, BurnInConfig::default());
        let look = b.look(at(t0, 7200), true);
        assert!(look.power && look.brightness == Brightness::Dim);
    }

    #[test]
    fn offset_cycles_every_three_minutes() {
        let t0 = Instant::now();
        let mut b = BurnIn::new(t0, BurnInConfig::default());
        let offsets: Vec<_> = (0..9)
            .map(|i| b.look(at(t0, i * 180 + 5), false).offset)
            .collect();
        assert_eq!(&offsets[..5], &[(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]);
        // Events don't reset the cycle (otherwise a busy box would never shift).
        b.event(at(t0, 190));
        assert_eq!(b.look(at(t0, 200), false).offset, (1, 0));
        for w in offsets.windows(2) {
            let d = (w[0].0 - w[1].0).abs() + (w[0].1 - w[1].1).abs();
            assert_eq!(d, 1, "each shift moves one pixel");
        }
    }

    #[test]
    fn next_change_points_at_the_next_transition() {
        let t0 = Instant::now();
        let b = BurnIn::new(t0, BurnInConfig::default());
        assert_eq!(b.next_change(t0, false), at(t0, 60));
        assert_eq!(b.next_change(at(t0, 60), false), at(t0, 180));
        assert_eq!(b.next_change(at(t0, 540), false), at(t0, 600));
        assert_eq!(b.next_change(at(t0, 540), true), at(t0, 720));
        // Walking from change to change visits every change of look.
        let mut now = t0;
        let mut changes = 0;
        while now < at(t0, 1000) {
            let next = b.next_change(now, false);
            assert!(next > now);
            for s in (now.duration_since(t0).as_secs() + 1)..next.duration_since(t0).as_secs() {
                assert_eq!(
                    b.look(at(t0, s), false),
                    b.look(now, false),
                    "missed a change at {s}"
                );
            }
            now = next;
            changes += 1;
        }
        assert!(changes >= 6);
    }
}
