//! Screens as pure functions: `draw` paints a `Screen` onto any 1-bit `DrawTarget` (the SSD1306
//! driver's buffer, a `Frame` for the terminal and PNGs). Layout: a bold 13-px title, then five
//! 10-px rows of at most 21 characters, all inside 127x63 so a 1-px burn-in shift never clips.

use super::frame::Frame;
use super::screen::{BackupProgress, ErrorScreen, PhoneSummary, Screen};
use embedded_graphics::mono_font::iso_8859_1::{FONT_10X20, FONT_6X10, FONT_6X13_BOLD};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use std::time::Duration;

/// Characters per row with the 6-px fonts (21 x 6 = 126 px).
pub const CHARS_PER_LINE: usize = 21;
/// Right edge (exclusive) of the drawing area; column 127 stays free for the pixel shift.
const RIGHT: i32 = 126;
/// Top of the first body row, just under the title.
const BODY_TOP: i32 = 13;
/// Height of one body row.
const ROW: i32 = 10;

/// Draws `screen` shifted by `offset` (the burn-in pixel shift). The target is not cleared first.
pub fn draw<D>(screen: &Screen, offset: (i32, i32), d: &mut D) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    let mut target = d.translated(Point::new(offset.0, offset.1));
    let mut p = Painter { d: &mut target };
    match screen {
        Screen::Boot { version } => {
            p.big_centered(4, "Cradle")?;
            p.centered(28, "iPhone backup box")?;
            p.centered_row(3, "Starting...")?;
            p.centered_row(4, &format!("v{}", fit(version, CHARS_PER_LINE - 1)))?;
        }
        Screen::NoDrive => {
            p.title("No backup drive")?;
            p.rows(&["Plug the USB backup", "drive into the box", "to start."])?;
        }
        Screen::Ready { phones, free_bytes } => ready(&mut p, phones, *free_bytes)?,
        Screen::PhoneFound { name } => {
            p.title("iPhone found")?;
            p.row(0, &fit(name, CHARS_PER_LINE))?;
            p.row(2, "Connecting...")?;
            p.row(3, "Keep it plugged in.")?;
        }
        Screen::Trust { name } => {
            p.title("Trust this box?")?;
            p.row(0, &fit(name, CHARS_PER_LINE))?;
            p.row(2, "Unlock iPhone,")?;
            p.row(3, "tap Trust.")?;
        }
        Screen::Passcode { seconds_left } => {
            p.title("Passcode needed")?;
            p.rows(&["Enter passcode on", "iPhone. Time left:"])?;
            let (m, s) = (seconds_left / 60, seconds_left % 60);
            p.big_centered(BODY_TOP + 2 * ROW + 3, &format!("{m}:{s:02}"))?;
        }
        Screen::EnablingEncryption => {
            p.title("Encrypting backups")?;
            p.rows(&[
                "Turning on backup",
                "encryption on the",
                "iPhone. Enter its",
                "passcode if asked.",
            ])?;
        }
        Screen::BackingUp(progress) => backing_up(&mut p, progress)?,
        Screen::Saving => {
            p.title("Saving backup")?;
            p.rows(&[
                "You can unplug",
                "the phone.",
                "",
                "Keep the drive in",
                "until it's done.",
            ])?;
        }
        Screen::Verifying { permille } => {
            p.title("Verifying")?;
            p.rows(&["Checking the backup", "on the drive."])?;
            if let Some(pm) = permille {
                p.title_right(&percent(*pm))?;
                p.bar(BODY_TOP + 2 * ROW + 3, *pm)?;
            }
            p.row(4, "Keep the drive in.")?;
        }
        Screen::Done {
            new_bytes,
            duration,
        } => {
            p.title("Backup verified")?;
            p.row(0, &format!("New data: {}", size(*new_bytes)))?;
            p.row(1, &format!("Took {}", span(*duration)))?;
            p.row(3, "Safe to remove drive")?;
            p.row(4, "and phone.")?;
        }
        Screen::StoredRaw { new_bytes } => {
            p.title("Stored raw")?;
            p.row(0, &format!("New data: {}", size(*new_bytes)))?;
            p.row(1, "iPhone uses another")?;
            p.row(2, "backup password: kept")?;
            p.row(3, "as sent. Safe to")?;
            p.row(4, "remove drive & phone.")?;
        }
        Screen::Error(e) => error(&mut p, e)?,
    }
    Ok(())
}

/// `draw` into a fresh `Frame`.
pub fn render(screen: &Screen, offset: (i32, i32)) -> Frame {
    let mut f = Frame::new();
    // A Frame cannot fail to draw (its error type is Infallible).
    let Ok(()) = draw(screen, offset, &mut f);
    f
}

fn ready<D: DrawTarget<Color = BinaryColor>>(
    p: &mut Painter<'_, D>,
    phones: &[PhoneSummary],
    free_bytes: u64,
) -> Result<(), D::Error> {
    p.title("Ready")?;
    p.row(0, "Plug in an iPhone.")?;
    // Three rows for phones; with more, two phones and a "+N more" line.
    let shown = if phones.len() > 3 { 2 } else { phones.len() };
    for (i, phone) in phones.iter().take(shown).enumerate() {
        let age = match phone.last_verified_age {
            Some(a) => format!("{} ago", age(a)),
            None => "never".to_string(),
        };
        let room = CHARS_PER_LINE.saturating_sub(age.len() + 1);
        p.row(1 + i as i32, &fit(&phone.name, room))?;
        p.row_right(1 + i as i32, &age)?;
    }
    if phones.is_empty() {
        p.row(1, "No backups yet.")?;
    } else if phones.len() > 3 {
        p.row(3, &format!("+{} more", phones.len() - 2))?;
    }
    p.row(4, &format!("Drive: {} free", size(free_bytes)))
}

fn backing_up<D: DrawTarget<Color = BinaryColor>>(
    p: &mut Painter<'_, D>,
    b: &BackupProgress,
) -> Result<(), D::Error> {
    p.title("Backing up")?;
    p.title_right(&percent(b.permille))?;
    p.row(0, &fit(&b.phase, CHARS_PER_LINE))?;
    p.bar(BODY_TOP + ROW + 1, b.permille)?;
    let amount = if b.total_bytes == 0 {
        format!("{} received", size(b.done_bytes))
    } else {
        pair(b.done_bytes, b.total_bytes)
    };
    p.row(2, &amount)?;
    let speed = match b.bytes_per_sec {
        Some(r) => format!("Speed: {}", rate(r)),
        None => "Measuring speed...".to_string(),
    };
    p.row(3, &speed)?;
    p.row(4, &eta(b.eta))
}

fn error<D: DrawTarget<Color = BinaryColor>>(
    p: &mut Painter<'_, D>,
    e: &ErrorScreen,
) -> Result<(), D::Error> {
    let (title, lines): (&str, &[&str]) = match e {
        ErrorScreen::DriveFull => (
            "Drive full",
            &[
                "No room left for this",
                "backup. Old backups",
                "are safe.",
                "Use a bigger drive.",
            ],
        ),
        ErrorScreen::DriveRemoved => (
            "Drive removed",
            &[
                "The drive was pulled",
                "out during a backup.",
                "Plug it back in, then",
                "reconnect the phone.",
            ],
        ),
        ErrorScreen::PhoneUnplugged => (
            "Phone unplugged",
            &[
                "The backup stopped",
                "before it finished.",
                "Plug the phone in",
                "again to retry.",
            ],
        ),
        ErrorScreen::PhoneLockedTooLong => (
            "Phone stayed locked",
            &[
                "The iPhone was locked",
                "too long to go on.",
                "Unlock it, then plug",
                "it in again.",
            ],
        ),
        ErrorScreen::WrongPassword => (
            "Wrong password",
            &[
                "The iPhone uses",
                "another backup",
                "password. On iPhone:",
                "Reset All Settings.",
            ],
        ),
        ErrorScreen::TrustDenied => (
            "Not trusted",
            &[
                "The iPhone answered",
                "Don't Trust.",
                "Unplug, plug in again",
                "and tap Trust.",
            ],
        ),
        ErrorScreen::DriveUnreadable => (
            "Drive unreadable",
            &[
                "Can't read the backup",
                "drive.",
                "Try another port, or",
                "check it on a PC.",
            ],
        ),
        ErrorScreen::NoTpm => (
            "No TPM found",
            &[
                "The security chip is",
                "missing: the password",
                "can't be sealed.",
                "Check the TPM board.",
            ],
        ),
        ErrorScreen::NotCradleDrive => (
            "Not a Cradle drive",
            &[
                "This drive has other",
                "files: left as it is.",
                "Use an empty drive",
                "labelled CRADLE.",
            ],
        ),
        ErrorScreen::DrivePassword => (
            "Drive locked",
            &[
                "The box's password",
                "does not open the",
                "backups on this",
                "drive. See status.",
            ],
        ),
        ErrorScreen::Other { code } => {
            p.title("Something went wrong")?;
            p.row(0, &format!("Code: {}", fit(code, CHARS_PER_LINE - 6)))?;
            p.row(2, "Unplug the phone and")?;
            return p.row(3, "try again.");
        }
    };
    p.title(title)?;
    p.rows(lines)
}

/// Draws text in the box's fixed grid.
struct Painter<'a, D> {
    d: &'a mut D,
}

impl<D: DrawTarget<Color = BinaryColor>> Painter<'_, D> {
    fn text(&mut self, font: &MonoFont<'_>, x: i32, y: i32, s: &str) -> Result<(), D::Error> {
        let style = MonoTextStyle::new(font, BinaryColor::On);
        Text::with_baseline(&latin1(s), Point::new(x, y), style, Baseline::Top).draw(self.d)?;
        Ok(())
    }

    fn width(font: &MonoFont<'_>, s: &str) -> i32 {
        let n = s.chars().count() as i32;
        n * (font.character_size.width + font.character_spacing) as i32
    }

    fn title(&mut self, s: &str) -> Result<(), D::Error> {
        self.text(&FONT_6X13_BOLD, 0, 0, s)
    }

    fn title_right(&mut self, s: &str) -> Result<(), D::Error> {
        let x = RIGHT - Self::width(&FONT_6X13_BOLD, s);
        self.text(&FONT_6X13_BOLD, x, 0, s)
    }

    fn row(&mut self, i: i32, s: &str) -> Result<(), D::Error> {
        self.text(&FONT_6X10, 0, BODY_TOP + i * ROW, s)
    }

    fn rows(&mut self, lines: &[&str]) -> Result<(), D::Error> {
        for (i, line) in lines.iter().enumerate() {
            self.row(i as i32, line)?;
        }
        Ok(())
    }

    fn row_right(&mut self, i: i32, s: &str) -> Result<(), D::Error> {
        let x = RIGHT - Self::width(&FONT_6X10, s);
        self.text(&FONT_6X10, x, BODY_TOP + i * ROW, s)
    }

    fn centered(&mut self, y: i32, s: &str) -> Result<(), D::Error> {
        let x = (RIGHT - Self::width(&FONT_6X10, s)) / 2;
        self.text(&FONT_6X10, x.max(0), y, s)
    }

    fn centered_row(&mut self, i: i32, s: &str) -> Result<(), D::Error> {
        self.centered(BODY_TOP + i * ROW, s)
    }

    fn big_centered(&mut self, y: i32, s: &str) -> Result<(), D::Error> {
        let x = (RIGHT - Self::width(&FONT_10X20, s)) / 2;
        self.text(&FONT_10X20, x.max(0), y, s)
    }

    /// An 8-px progress bar across the screen: outline, then a fill in proportion.
    fn bar(&mut self, y: i32, permille: u16) -> Result<(), D::Error> {
        let outline = PrimitiveStyle::with_stroke(BinaryColor::On, 1);
        Rectangle::new(Point::new(0, y), Size::new(RIGHT as u32, 8))
            .into_styled(outline)
            .draw(self.d)?;
        let inner = (RIGHT - 4) as u32;
        let filled = inner * u32::from(permille.min(1000)) / 1000;
        if filled > 0 {
            Rectangle::new(Point::new(2, y + 2), Size::new(filled, 4))
                .into_styled(PrimitiveStyle::with_fill(BinaryColor::On))
                .draw(self.d)?;
        }
        Ok(())
    }
}

/// Text the Latin-1 fonts can show: typographic quotes and dashes become ASCII, anything else
/// outside Latin-1 (emoji in a phone's name) becomes '?'.
fn latin1(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{02BC}' => '\'',
            '\u{201C}' | '\u{201D}' => '"',
            '\u{2010}'..='\u{2015}' => '-',
            ' '..='~' | '\u{A0}'..='\u{FF}' => c,
            _ => '?',
        })
        .collect()
}

/// `s` cut to `max` characters, ending in ".." when cut.
fn fit(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(2);
    let mut out: String = s.chars().take(keep).collect();
    out.truncate(out.trim_end().len());
    out.push_str("..");
    out
}

fn percent(permille: u16) -> String {
    format!("{}%", permille.min(1000) / 10)
}

/// A size in decimal units, as drives are sold: "900 MB", "12.3 GB", "412 GB", "1.8 TB".
fn size(bytes: u64) -> String {
    const MB: f64 = 1e6;
    const GB: f64 = 1e9;
    const TB: f64 = 1e12;
    let b = bytes as f64;
    if b < GB {
        format!("{:.0} MB", b / MB)
    } else if b < 100.0 * GB {
        format!("{:.1} GB", b / GB)
    } else if b < TB {
        format!("{:.0} GB", b / GB)
    } else {
        format!("{:.1} TB", b / TB)
    }
}

/// "2345 / 5570 MB", in the unit that suits the total.
fn pair(done: u64, total: u64) -> String {
    let done = done.min(total);
    if total < 10_000_000_000 {
        format!("{} / {} MB", done / 1_000_000, total / 1_000_000)
    } else if total < 1_000_000_000_000 {
        format!("{:.1} / {:.1} GB", done as f64 / 1e9, total as f64 / 1e9)
    } else {
        format!("{:.2} / {:.2} TB", done as f64 / 1e12, total as f64 / 1e12)
    }
}

fn rate(bytes_per_sec: u64) -> String {
    let mb = bytes_per_sec as f64 / 1e6;
    if mb < 10.0 {
        format!("{mb:.2} MB/s")
    } else {
        format!("{mb:.1} MB/s")
    }
}

fn eta(eta: Option<Duration>) -> String {
    let Some(eta) = eta else {
        return "Estimating time...".to_string();
    };
    let s = eta.as_secs();
    if s < 60 {
        "Less than 1 min left".to_string()
    } else if s < 3600 {
        format!("About {} min left", s.div_ceil(60))
    } else {
        let m = s.div_ceil(60);
        format!("About {}h {:02}m left", (m / 60).min(999), m % 60)
    }
}

/// "12 min 31 s", "2 h 5 min", "40 s".
fn span(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", (s / 3600).min(9999), (s % 3600) / 60)
    }
}

/// "now", "5m", "2h", "3d", "6w".
fn age(d: Duration) -> String {
    let m = d.as_secs() / 60;
    if m < 1 {
        "now".to_string()
    } else if m < 60 {
        format!("{m}m")
    } else if m < 48 * 60 {
        format!("{}h", m / 60)
    } else if m < 14 * 24 * 60 {
        format!("{}d", m / (24 * 60))
    } else {
        format!("{}w", (m / (7 * 24 * 60)).min(999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::frame::{HEIGHT, WIDTH};
    use crate::display::screen::samples;

    #[test]
    fn every_sample_fits_and_leaves_room_for_the_shift() {
        for (name, screen) in samples() {
            let f = render(&screen, (0, 0));
            let (x0, y0, x1, y1) = f.lit_bounds().unwrap_or_else(|| panic!("{name} is empty"));
            assert!(
                x1 < WIDTH - 1 && y1 < HEIGHT - 1,
                "{name}: lit up to ({x1},{y1})"
            );
            assert!(f.lit_count() > 60, "{name}: too few pixels");
            // Shifting by one pixel must move every pixel: nothing is clipped at the edge.
            let shifted = render(&screen, (1, 1));
            assert_eq!(
                shifted.lit_count(),
                f.lit_count(),
                "{name} clipped when shifted"
            );
            assert_eq!(shifted.lit_bounds(), Some((x0 + 1, y0 + 1, x1 + 1, y1 + 1)));
        }
    }

    #[test]
    fn text_that_is_too_long_is_detected_by_the_bounds_check() {
        // The bounds check above relies on over-long rows reaching column 126 or beyond.
        let mut f = Frame::new();
        let mut p = Painter { d: &mut f };
        let Ok(()) = p.row(0, "0123456789012345678901");
        assert!(f.lit_bounds().is_some_and(|b| b.2 >= WIDTH - 1));
    }

    #[test]
    fn long_names_are_cut_and_odd_characters_replaced() {
        assert_eq!(fit("Grandpa Jürgen's iPhone", 14), "Grandpa Jürg..");
        assert_eq!(fit("Short", 14), "Short");
        assert_eq!(fit("Anna's  iPhone 15", 9), "Anna's..");
        assert_eq!(latin1("Anna\u{2019}s 📱"), "Anna's ?");
    }

    #[test]
    fn figures_read_naturally() {
        assert_eq!(size(412_300_000_000), "412 GB");
        assert_eq!(size(1_234_000_000), "1.2 GB");
        assert_eq!(size(900_000_000), "900 MB");
        assert_eq!(size(1_800_000_000_000), "1.8 TB");
        assert_eq!(pair(2_345_000_000, 5_570_000_000), "2345 / 5570 MB");
        assert_eq!(pair(12_300_000_000, 45_600_000_000), "12.3 / 45.6 GB");
        assert_eq!(rate(12_400_000), "12.4 MB/s");
        assert_eq!(eta(Some(Duration::from_secs(261))), "About 5 min left");
        assert_eq!(eta(Some(Duration::from_secs(30))), "Less than 1 min left");
        assert_eq!(eta(Some(Duration::from_secs(7300))), "About 2h 02m left");
        assert_eq!(span(Duration::from_secs(751)), "12 min 31 s");
        assert_eq!(age(Duration::from_secs(135 * 60)), "2h");
        assert_eq!(age(Duration::from_secs(73 * 3600)), "3d");
        // The longest ETA line still fits one row.
        assert!(eta(Some(Duration::from_secs(999 * 3600))).len() <= CHARS_PER_LINE);
    }
}
