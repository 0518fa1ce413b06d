//! Progress, speed and time left for the Backing up screen, from (time, bytes done, bytes
//! expected) samples the caller passes in. No clock inside, so tests replay synthetic series.

use super::screen::BackupProgress;
use std::time::{Duration, Instant};

/// Time constant of the smoothed rate: a change of speed shows up mostly within ~10 s.
pub const RATE_TIME_CONSTANT: Duration = Duration::from_secs(10);
/// Samples closer together than this are merged, so bursty callbacks don't make the rate jump.
pub const MIN_SAMPLE: Duration = Duration::from_millis(500);
/// How long the seed rate (this phone's earlier runs) dominates: after this much measuring the
/// measured rate weighs as much as the seed; the seed's weight then falls with the square of
/// time (1% after ten times as long), since early measurements are the noisy ones.
pub const SEED_WEIGHT: Duration = Duration::from_secs(30);

/// Tracks one backup's progress. Call `update` whenever new figures arrive (any rhythm), then
/// read `progress(now, phase)` for the screen.
#[derive(Clone, Debug)]
pub struct ProgressModel {
    started: Instant,
    seed_rate: Option<f64>,
    done: u64,
    total: u64,
    fraction: f64,
    rate: Option<f64>,
    window: Option<(Instant, u64)>,
    eta: Option<(Instant, Duration)>,
}

impl ProgressModel {
    /// Starts tracking at `now`. `seed_bytes_per_sec` is this phone's average rate from earlier
    /// backups (see `average_rate`), used until enough is measured; ignored unless positive.
    pub fn new(now: Instant, seed_bytes_per_sec: Option<f64>) -> Self {
        Self {
            started: now,
            seed_rate: seed_bytes_per_sec.filter(|r| r.is_finite() && *r > 0.0),
            done: 0,
            total: 0,
            fraction: 0.0,
            rate: None,
            window: None,
            eta: None,
        }
    }

    /// Takes a sample: `done_bytes` received so far and `total_bytes` now expected (the phone
    /// revises its estimate; a total below `done_bytes` is treated as equal to it).
    pub fn update(&mut self, now: Instant, done_bytes: u64, total_bytes: u64) {
        let total = total_bytes.max(done_bytes);
        let delta = done_bytes.saturating_sub(self.done);
        let remaining = total - done_bytes;

        // Fraction: the exact ratio when it is ahead; otherwise move the shown fraction towards
        // 1 in proportion to the bytes just done over the bytes still to do. When the total
        // grows, the bar slows down instead of jumping back.
        if total > 0 {
            let raw = done_bytes as f64 / total as f64;
            let step = if delta > 0 {
                (1.0 - self.fraction) * delta as f64 / (delta + remaining) as f64
            } else {
                0.0
            };
            self.fraction = raw.max(self.fraction + step).clamp(self.fraction, 1.0);
        }

        // Rate: an exponentially weighted average of the speed over each sample window.
        match self.window {
            Some((t0, b0)) if done_bytes >= b0 => {
                let dt = now.saturating_duration_since(t0);
                if dt >= MIN_SAMPLE {
                    let secs = dt.as_secs_f64();
                    let inst = (done_bytes - b0) as f64 / secs;
                    let alpha = 1.0 - (-secs / RATE_TIME_CONSTANT.as_secs_f64()).exp();
                    self.rate = Some(match self.rate {
                        Some(r) => r + alpha * (inst - r),
                        None => inst,
                    });
                    self.window = Some((now, done_bytes));
                }
            }
            // First sample, or the count went backwards (the caller restarted counting).
            _ => self.window = Some((now, done_bytes)),
        }

        self.done = done_bytes;
        self.total = total;
        self.update_eta(now, remaining);
    }

    fn update_eta(&mut self, now: Instant, remaining: u64) {
        if remaining == 0 && self.total > 0 {
            // Finished: the only moment the ETA may drop to zero at once.
            self.eta = Some((now, Duration::ZERO));
            return;
        }
        let Some(rate) = self.estimated_rate(now) else {
            return;
        };
        let raw = Duration::from_secs_f64((remaining as f64 / rate).min(1e7));
        // Never count down faster than time passes: the floor is the previous ETA minus the
        // time since it was given. Upward revisions (a bigger total, a slower phone) pass.
        let floor = self.eta(now).unwrap_or(Duration::ZERO);
        self.eta = Some((now, raw.max(floor)));
    }

    /// The rate the ETA uses: the seed, blended into the measured rate as measurement time
    /// accumulates.
    fn estimated_rate(&self, now: Instant) -> Option<f64> {
        let e = now.saturating_duration_since(self.started).as_secs_f64();
        let h = SEED_WEIGHT.as_secs_f64();
        let w = e * e / (e * e + h * h);
        let r = match (self.seed_rate, self.rate) {
            (Some(s), Some(m)) => w * m + (1.0 - w) * s,
            (Some(s), None) => s,
            (None, Some(m)) => m,
            (None, None) => return None,
        };
        (r.is_finite() && r > 0.0).then_some(r)
    }

    /// Shown progress, 0.0..=1.0; never decreases.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Shown progress in per mille; 1000 only when everything expected has arrived.
    pub fn permille(&self) -> u16 {
        let pm = (self.fraction * 1000.0).floor() as u16;
        if self.total > 0 && self.done >= self.total {
            1000
        } else {
            pm.min(999)
        }
    }

    /// Smoothed measured rate in bytes per second, once two samples are far enough apart.
    pub fn bytes_per_sec(&self) -> Option<f64> {
        self.rate
    }

    /// Time left as of `now`: the last estimate, counted down since it was made.
    pub fn eta(&self, now: Instant) -> Option<Duration> {
        self.eta
            .map(|(at, eta)| eta.saturating_sub(now.saturating_duration_since(at)))
    }

    /// Average rate since the start, to store as the seed for this phone's next backup.
    pub fn average_rate(&self, now: Instant) -> Option<f64> {
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        (secs >= 1.0 && self.done > 0).then(|| self.done as f64 / secs)
    }

    /// What the Backing up screen shows.
    pub fn progress(&self, now: Instant, phase: &str) -> BackupProgress {
        BackupProgress {
            phase: phase.to_string(),
            permille: self.permille(),
            done_bytes: self.done,
            total_bytes: self.total,
            bytes_per_sec: self.rate.map(|r| r.round() as u64),
            eta: self.eta(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    /// (seconds since start, shown fraction, ETA) after each sample.
    type Seen = Vec<(f64, f64, Option<Duration>)>;

    /// Replays (seconds, done, total) samples; returns the model, its start and what was seen.
    fn replay(
        seed: Option<f64>,
        samples: impl IntoIterator<Item = (f64, u64, u64)>,
    ) -> (ProgressModel, Instant, Seen) {
        let t0 = Instant::now();
        let mut m = ProgressModel::new(t0, seed);
        let mut seen = Vec::new();
        for (t, done, total) in samples {
            let now = t0 + Duration::from_secs_f64(t);
            m.update(now, done, total);
            seen.push((t, m.fraction(), m.eta(now)));
        }
        (m, t0, seen)
    }

    /// A tiny deterministic generator for jitter.
    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn steady_rate_gives_steady_figures() {
        // 10 MB/s for 50 s of a 1000 MB backup, a sample per second.
        let (m, t0, _) = replay(None, (0..=50).map(|s| (s as f64, s * 10 * MB, 1000 * MB)));
        let now = t0 + Duration::from_secs(50);
        let rate = m.bytes_per_sec().unwrap();
        assert!((rate - 10e6).abs() < 1e4, "rate {rate}");
        let eta = m.eta(now).unwrap().as_secs_f64();
        assert!((eta - 50.0).abs() < 1.0, "eta {eta}");
        assert_eq!(m.permille(), 500);
        let p = m.progress(now, "Receiving files");
        assert_eq!(
            (p.done_bytes, p.total_bytes, p.permille),
            (500 * MB, 1000 * MB, 500)
        );
    }

    #[test]
    fn fraction_never_goes_back_when_the_total_grows() {
        // Total doubles halfway; then the count catches up.
        let mut samples: Vec<(f64, u64, u64)> =
            (0..=5).map(|s| (s as f64, s * 10 * MB, 100 * MB)).collect();
        samples.extend((6..=20).map(|s| (s as f64, s * 10 * MB, 200 * MB)));
        let (m, _, seen) = replay(None, samples);
        for pair in seen.windows(2) {
            assert!(pair[1].1 >= pair[0].1, "fraction went back: {pair:?}");
        }
        // At t=6 the raw ratio is 0.30 but the bar stays above the 0.5 it had shown.
        assert!(seen[6].1 > 0.5);
        assert_eq!(m.fraction(), 1.0);
        assert_eq!(m.permille(), 1000);
    }

    #[test]
    fn not_finished_is_never_shown_as_100() {
        let (m, _, _) = replay(None, [(0.0, 0, 1000 * MB), (1.0, 999_999_999, 1000 * MB)]);
        assert_eq!(m.permille(), 999);
    }

    #[test]
    fn eta_never_drops_faster_than_time_even_when_speed_jumps() {
        // 5 MB/s with ±50% jitter, then a sudden 50 MB/s burst, then a re-estimated total.
        let mut rng = 7u64;
        let mut done = 0u64;
        let mut samples = Vec::new();
        let mut t = 0.0;
        while t < 300.0 {
            let speed = if (100.0..150.0).contains(&t) {
                50e6
            } else {
                5e6
            };
            let dt = 0.2 + lcg(&mut rng) * 1.8;
            done += (speed * dt * (0.5 + lcg(&mut rng))) as u64;
            t += dt;
            let total = if t < 200.0 { 5_000 * MB } else { 6_000 * MB };
            samples.push((t, done.min(total - 1), total));
        }
        let (_, _, seen) = replay(None, samples);
        let mut checked = 0;
        for pair in seen.windows(2) {
            let ((t1, _, e1), (t2, _, e2)) = (pair[0], pair[1]);
            if let (Some(e1), Some(e2)) = (e1, e2) {
                let floor = e1.as_secs_f64() - (t2 - t1);
                assert!(
                    e2.as_secs_f64() >= floor - 1e-6,
                    "ETA fell from {e1:?} to {e2:?} in {}s",
                    t2 - t1
                );
                checked += 1;
            }
        }
        assert!(checked > 100);
    }

    #[test]
    fn eta_rises_when_the_total_is_re_estimated_upwards() {
        let mut samples: Vec<(f64, u64, u64)> = (0..=30)
            .map(|s| (s as f64, s * 10 * MB, 1000 * MB))
            .collect();
        samples.push((31.0, 310 * MB, 2000 * MB));
        let (_, _, seen) = replay(None, samples);
        let before = seen[30].2.unwrap().as_secs_f64();
        let after = seen[31].2.unwrap().as_secs_f64();
        assert!(after > before + 90.0, "{before} -> {after}");
    }

    #[test]
    fn seed_rate_gives_an_eta_before_anything_is_measured() {
        let (m, t0, _) = replay(Some(20e6), [(0.0, 0, 1000 * MB)]);
        let eta = m.eta(t0).unwrap().as_secs_f64();
        assert!((eta - 50.0).abs() < 0.01, "{eta}");
        assert!(
            m.bytes_per_sec().is_none(),
            "the seed is not shown as a measured speed"
        );
        let (m, t0, _) = replay(None, [(0.0, 0, 1000 * MB)]);
        assert!(m.eta(t0).is_none());
    }

    #[test]
    fn seed_fades_as_the_real_rate_is_measured() {
        // The seed says 20 MB/s; this run does 5 MB/s. After 5 min the ETA follows the truth.
        let (m, t0, _) = replay(
            Some(20e6),
            (0..=300).map(|s| (s as f64, s * 5 * MB, 10_000 * MB)),
        );
        let now = t0 + Duration::from_secs(300);
        let eta = m.eta(now).unwrap().as_secs_f64();
        let truth = (10_000.0 - 1_500.0) / 5.0;
        assert!((eta - truth).abs() / truth < 0.1, "eta {eta} vs {truth}");
        let avg = m.average_rate(now).unwrap();
        assert!((avg - 5e6).abs() < 1e3);
    }

    #[test]
    fn noisy_samples_are_smoothed() {
        // Alternating 5 and 15 MB/s every second averages 10 MB/s.
        let mut done = 0;
        let samples: Vec<_> = (0..=120)
            .map(|s| {
                done += if s % 2 == 0 { 5 * MB } else { 15 * MB };
                (s as f64, done, 100_000 * MB)
            })
            .collect();
        let (m, _, _) = replay(None, samples);
        let r = m.bytes_per_sec().unwrap();
        assert!((8e6..12e6).contains(&r), "{r}");
    }

    #[test]
    fn bursts_closer_than_the_minimum_sample_are_merged() {
        let (m, _, _) = replay(None, [(0.0, 0, 100 * MB), (0.01, 10 * MB, 100 * MB)]);
        assert!(m.bytes_per_sec().is_none(), "10 ms is too short to measure");
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let t0 = Instant::now();
        let mut m = ProgressModel::new(t0 + Duration::from_secs(10), Some(f64::NAN));
        m.update(t0, 50, 10); // time before the start, total below done
        m.update(t0, 20, 0); // count goes backwards
        m.update(t0 + Duration::from_secs(20), u64::MAX, u64::MAX);
        assert!(m.fraction() <= 1.0);
        let _ = m.progress(t0, "x");
        assert_eq!(ProgressModel::new(t0, None).permille(), 0);
    }
}
