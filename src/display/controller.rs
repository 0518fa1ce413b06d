//! `Display`: the one object the daemon owns. It keeps the current screen, applies the burn-in
//! rules, and makes a missing or failing OLED harmless: the error is logged once, the panel is
//! dropped, and it is reopened a little later; the caller never sees an error.

use super::burnin::{BurnIn, BurnInConfig, Look};
use super::panel::{Brightness, Panel, PanelError};
use super::screen::Screen;
use std::time::{Duration, Instant};

/// How long to wait before reopening a panel that failed.
pub const DEFAULT_RETRY_EVERY: Duration = Duration::from_secs(30);

/// What was last sent to the panel successfully.
#[derive(Default)]
struct Sent {
    brightness: Option<Brightness>,
    power: Option<bool>,
    picture: Option<(Screen, (i32, i32))>,
}

/// A screen on a panel, with burn-in care and failure isolation. Time is passed in.
pub struct Display<P, F> {
    open: F,
    panel: Option<P>,
    retry_at: Option<Instant>,
    retry_every: Duration,
    burn_in: BurnIn,
    screen: Screen,
    /// What the panel is known to be showing; empty after a (re)open so all is sent again.
    sent: Sent,
    /// Whether the current outage has been logged (one warning per outage, not per frame).
    outage_logged: bool,
}

impl<P: Panel, F: FnMut() -> Result<P, PanelError>> Display<P, F> {
    /// Opens the panel with `open` (if that fails, the display is simply off until a retry
    /// succeeds) and shows `screen`.
    pub fn new(open: F, now: Instant, config: BurnInConfig, screen: Screen) -> Self {
        let mut d = Self {
            open,
            panel: None,
            retry_at: None,
            retry_every: DEFAULT_RETRY_EVERY,
            burn_in: BurnIn::new(now, config),
            screen,
            sent: Sent::default(),
            outage_logged: false,
        };
        d.refresh(now);
        d
    }

    /// Changes how long to wait before reopening a failed panel.
    pub fn with_retry_every(mut self, every: Duration) -> Self {
        self.retry_every = every;
        self
    }

    /// Shows `screen`. A different kind of screen wakes the panel; new figures on the same
    /// kind (progress, countdown) do not.
    pub fn set_screen(&mut self, now: Instant, screen: Screen) {
        if !self.screen.same_kind(&screen) {
            self.burn_in.event(now);
        }
        self.screen = screen;
        self.refresh(now);
    }

    /// Something happened that should wake the panel (plug, unplug, button).
    pub fn event(&mut self, now: Instant) {
        self.burn_in.event(now);
        self.refresh(now);
    }

    /// Applies time-driven changes (dim, blank, shift, reopening). Call it at `next_wakeup`.
    pub fn tick(&mut self, now: Instant) {
        self.refresh(now);
    }

    /// When `tick` next has something to do.
    pub fn next_wakeup(&self, now: Instant) -> Instant {
        let next = self.burn_in.next_change(now, self.screen.keeps_awake());
        match (self.panel.is_some(), self.retry_at) {
            (false, Some(retry)) => next.min(retry.max(now)),
            _ => next,
        }
    }

    /// The screen being shown (or that would be, if the panel is down).
    pub fn screen(&self) -> &Screen {
        &self.screen
    }

    /// Whether the panel is working.
    pub fn is_up(&self) -> bool {
        self.panel.is_some()
    }

    /// The look burn-in care asks for at `now`.
    pub fn look(&self, now: Instant) -> Look {
        self.burn_in.look(now, self.screen.keeps_awake())
    }

    /// The panel, while it is up (tests inspect their fake through it).
    pub fn panel(&self) -> Option<&P> {
        self.panel.as_ref()
    }

    fn refresh(&mut self, now: Instant) {
        if self.panel.is_none() {
            if self.retry_at.is_some_and(|t| now < t) {
                return;
            }
            match (self.open)() {
                Ok(p) => {
                    if self.outage_logged {
                        tracing::info!("OLED is working again");
                    }
                    self.outage_logged = false;
                    self.panel = Some(p);
                    self.sent = Sent::default();
                }
                Err(e) => return self.fail(now, e),
            }
        }
        let look = self.look(now);
        if let Err(e) = self.apply(look) {
            self.fail(now, e);
        }
    }

    fn apply(&mut self, look: Look) -> Result<(), PanelError> {
        let Some(panel) = self.panel.as_mut() else {
            return Ok(());
        };
        // Forget what the panel shows until each step succeeds, so a failure resends it all.
        let sent = std::mem::take(&mut self.sent);
        if sent.brightness != Some(look.brightness) {
            panel.set_brightness(look.brightness)?;
        }
        let mut now_sent = Sent {
            brightness: Some(look.brightness),
            ..Sent::default()
        };
        if look.power {
            // Draw before switching on, so waking never flashes the old picture.
            let wanted = (self.screen.clone(), look.offset);
            if sent.picture.as_ref() != Some(&wanted) {
                panel.show(&wanted.0, wanted.1)?;
            }
            now_sent.picture = Some(wanted);
            if sent.power != Some(true) {
                panel.set_power(true)?;
            }
            now_sent.power = Some(true);
        } else {
            // Off: the picture stays in the panel's memory as it was.
            now_sent.picture = sent.picture;
            if sent.power != Some(false) {
                panel.set_power(false)?;
            }
            now_sent.power = Some(false);
        }
        self.sent = now_sent;
        Ok(())
    }

    fn fail(&mut self, now: Instant, e: PanelError) {
        if self.outage_logged {
            tracing::debug!("OLED still failing: {e}");
        } else {
            tracing::warn!(
                "OLED: {e}; carrying on without it, retrying every {} s",
                self.retry_every.as_secs()
            );
            self.outage_logged = true;
        }
        self.panel = None;
        self.sent = Sent::default();
        self.retry_at = Some(now + self.retry_every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::draw::render;
    use crate::display::fake::FakeSsd1306;
    use crate::display::panel::Ssd1306Panel;
    use crate::display::screen::{ErrorScreen, Screen};

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    fn opener(fake: &FakeSsd1306) -> impl FnMut() -> Result<Ssd1306Panel<FakeSsd1306>, PanelError> {
        let fake = fake.clone();
        move || Ssd1306Panel::new(fake.clone(), 0x3C)
    }

    #[test]
    fn dim_and_blank_reach_the_bus_and_an_event_wakes_it() {
        let t0 = Instant::now();
        let fake = FakeSsd1306::new(0x3C);
        let mut d = Display::new(opener(&fake), t0, BurnInConfig::default(), Screen::NoDrive);
        let normal = fake.state().contrast;
        assert_eq!(fake.visible(), render(&Screen::NoDrive, (0, 0)));

        d.tick(at(t0, 61));
        let st = fake.state();
        assert_eq!(st.contrast, 0x00, "dimmed to the lowest contrast");
        assert!(st.display_on);

        d.tick(at(t0, 601));
        assert!(!fake.state().display_on, "blanked");
        assert_eq!(fake.visible().lit_count(), 0);

        d.event(at(t0, 700));
        let st = fake.state();
        assert!(st.display_on);
        assert_eq!(st.contrast, normal);
        // 700 s is in the fourth 3-minute period: offset (0, 1).
        assert_eq!(fake.visible(), render(&Screen::NoDrive, (0, 1)));
        // Power and contrast went over the bus as commands, in order.
        let log: Vec<u8> = st
            .log
            .iter()
            .filter_map(|c| match c[0] {
                0xAE | 0xAF => Some(c[0]),
                _ => None,
            })
            .collect();
        assert_eq!(log.last(), Some(&0xAF));
        assert!(log.ends_with(&[0xAF, 0xAE, 0xAF]), "{log:x?}");
    }

    #[test]
    fn a_new_kind_of_screen_wakes_but_progress_does_not() {
        let t0 = Instant::now();
        let fake = FakeSsd1306::new(0x3C);
        let mut d = Display::new(
            opener(&fake),
            t0,
            BurnInConfig::default(),
            Screen::Passcode { seconds_left: 120 },
        );
        d.set_screen(at(t0, 90), Screen::Passcode { seconds_left: 30 });
        assert_eq!(
            fake.state().contrast,
            0x00,
            "a countdown tick is not an event"
        );
        d.set_screen(at(t0, 91), Screen::Saving);
        assert_ne!(fake.state().contrast, 0x00, "a new screen wakes the panel");
        // Busy screens never blank.
        d.tick(at(t0, 5000));
        assert!(fake.state().display_on);
    }

    #[test]
    fn a_failing_oled_is_logged_once_then_retried_later() {
        let t0 = Instant::now();
        let fake = FakeSsd1306::new(0x3C);
        fake.set_unplugged(true);
        let mut d = Display::new(opener(&fake), t0, BurnInConfig::default(), Screen::NoDrive)
            .with_retry_every(Duration::from_secs(30));
        assert!(!d.is_up());
        let tries = fake.state().transactions;
        // Within the retry delay nothing touches the bus, whatever the caller does.
        d.set_screen(at(t0, 10), Screen::Error(ErrorScreen::DriveFull));
        d.tick(at(t0, 29));
        assert_eq!(fake.state().transactions, tries);
        assert_eq!(
            d.next_wakeup(at(t0, 29)),
            d.next_wakeup(at(t0, 29)).min(at(t0, 30))
        );
        fake.set_unplugged(false);
        d.tick(at(t0, 30));
        assert!(d.is_up());
        assert_eq!(
            fake.visible(),
            render(&Screen::Error(ErrorScreen::DriveFull), (0, 0))
        );
        // Pulled while running: the next update fails quietly and the box goes on.
        fake.set_unplugged(true);
        d.set_screen(at(t0, 40), Screen::NoDrive);
        assert!(!d.is_up());
        fake.set_unplugged(false);
        d.tick(at(t0, 71));
        assert!(d.is_up());
        assert_eq!(fake.visible(), render(&Screen::NoDrive, (0, 0)));
    }

    #[test]
    fn identical_updates_send_nothing() {
        let t0 = Instant::now();
        let fake = FakeSsd1306::new(0x3C);
        let mut d = Display::new(opener(&fake), t0, BurnInConfig::default(), Screen::Saving);
        let n = fake.state().transactions;
        d.set_screen(at(t0, 1), Screen::Saving);
        d.tick(at(t0, 2));
        assert_eq!(fake.state().transactions, n);
    }
}
