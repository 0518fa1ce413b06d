//! Back ends behind one small `Panel` trait: the SSD1306 over I2C (any `embedded_hal` bus:
//! linux-embedded-hal's `/dev/i2c-1` on the box, `FakeSsd1306` in tests), the terminal, PNG files.

use super::draw::{draw, render};
use super::frame::{Frame, HEIGHT, WIDTH};
use super::png_io::{encode_png_level, PngError};
use super::screen::Screen;
use super::terminal::{render_terminal, TERMINAL_ROWS};
use embedded_hal::i2c::I2c;
use ssd1306::mode::{BufferedGraphicsMode, DisplayConfig};
use ssd1306::prelude::{DisplayRotation, DisplaySize128x64, I2CInterface};
use ssd1306::{I2CDisplayInterface, Ssd1306};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The I2C bus of the Pi's header pins 3 (SDA, GPIO2) and 5 (SCL, GPIO3).
pub const DEFAULT_I2C_BUS: &str = "/dev/i2c-1";
/// The usual 7-bit address of SSD1306 modules (0x3D when the address jumper is moved).
pub const DEFAULT_I2C_ADDRESS: u8 = 0x3C;

/// Panel contrast levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Brightness {
    /// Normal contrast.
    Normal,
    /// Lowest contrast, after a minute idle.
    Dim,
}

/// Why a panel could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PanelError {
    /// The I2C bus device could not be opened (no such bus, no permission).
    #[error("opening I2C bus {path}: {message}")]
    Open {
        /// The bus device, e.g. /dev/i2c-1.
        path: PathBuf,
        /// The system's reason.
        message: String,
    },
    /// The OLED did not acknowledge or a transfer failed (unplugged, loose wire, wrong address).
    #[error("OLED at I2C address {address:#04x}: {message}")]
    Bus {
        /// 7-bit I2C address.
        address: u8,
        /// What failed.
        message: String,
    },
    /// Writing terminal or PNG output failed.
    #[error("writing {path}: {source}")]
    Io {
        /// Where it was written ("stdout" for the terminal).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Encoding a PNG failed.
    #[error(transparent)]
    Png(#[from] PngError),
}

/// Something that shows screens. Calls may fail; `Display` makes failures harmless.
pub trait Panel {
    /// Shows `screen` drawn with the burn-in `offset`.
    fn show(&mut self, screen: &Screen, offset: (i32, i32)) -> Result<(), PanelError>;
    /// Sets the contrast.
    fn set_brightness(&mut self, brightness: Brightness) -> Result<(), PanelError>;
    /// Switches the panel on or off (off keeps the picture in memory).
    fn set_power(&mut self, on: bool) -> Result<(), PanelError>;
}

impl<P: Panel + ?Sized> Panel for Box<P> {
    fn show(&mut self, screen: &Screen, offset: (i32, i32)) -> Result<(), PanelError> {
        (**self).show(screen, offset)
    }
    fn set_brightness(&mut self, brightness: Brightness) -> Result<(), PanelError> {
        (**self).set_brightness(brightness)
    }
    fn set_power(&mut self, on: bool) -> Result<(), PanelError> {
        (**self).set_power(on)
    }
}

type Driver<I2C> =
    Ssd1306<I2CInterface<I2C>, DisplaySize128x64, BufferedGraphicsMode<DisplaySize128x64>>;

/// An SSD1306 128x64 on an I2C bus, through the `ssd1306` crate's buffered graphics mode.
pub struct Ssd1306Panel<I2C> {
    driver: Driver<I2C>,
    address: u8,
    /// The frame on the glass (and in the driver's buffer), when known for sure. A full frame is
    /// ~90 ms at the Pi's default 100 kHz, so identical frames are skipped and changed ones send
    /// only the rectangle around the changed pixels.
    last: Option<Frame>,
}

impl<I2C: I2c> Ssd1306Panel<I2C> {
    /// Initialises the controller at `address` and clears it.
    pub fn new(i2c: I2C, address: u8) -> Result<Self, PanelError> {
        let iface = I2CDisplayInterface::new_custom_address(i2c, address);
        let mut driver = Ssd1306::new(iface, DisplaySize128x64, DisplayRotation::Rotate0)
            .into_buffered_graphics_mode();
        let bus = |e| bus_error(address, e);
        driver.init().map_err(bus)?;
        // init() switches the panel on with whatever was in its RAM: clear it straight away.
        driver.flush().map_err(bus)?;
        Ok(Self {
            driver,
            address,
            // The first picture goes through the full draw path.
            last: None,
        })
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.driver.release().release()
    }
}

fn bus_error(address: u8, e: impl std::fmt::Debug) -> PanelError {
    PanelError::Bus {
        address,
        message: format!("{e:?}"),
    }
}

impl<I2C: I2c> Panel for Ssd1306Panel<I2C> {
    fn show(&mut self, screen: &Screen, offset: (i32, i32)) -> Result<(), PanelError> {
        let frame = render(screen, offset);
        let address = self.address;
        match self.last.take() {
            Some(last) if last == frame => {
                self.last = Some(last);
                return Ok(());
            }
            Some(last) => {
                // The driver's buffer holds `last`: change only the pixels that differ, so its
                // dirty rectangle (what flush sends) covers just them.
                for y in 0..HEIGHT {
                    for x in 0..WIDTH {
                        let on = frame.get(x, y);
                        if on != last.get(x, y) {
                            self.driver.set_pixel(x as u32, y as u32, on);
                        }
                    }
                }
            }
            None => {
                // Unknown state (new, or a transfer failed): redraw and send everything.
                self.driver.clear_buffer();
                draw(screen, offset, &mut self.driver).map_err(|e| bus_error(address, e))?;
            }
        }
        // On failure `last` stays None, so the next show starts again from a full frame.
        self.driver.flush().map_err(|e| bus_error(address, e))?;
        self.last = Some(frame);
        Ok(())
    }

    fn set_brightness(&mut self, brightness: Brightness) -> Result<(), PanelError> {
        let level = match brightness {
            Brightness::Normal => ssd1306::prelude::Brightness::NORMAL,
            Brightness::Dim => ssd1306::prelude::Brightness::DIMMEST,
        };
        let address = self.address;
        self.driver
            .set_brightness(level)
            .map_err(|e| bus_error(address, e))
    }

    fn set_power(&mut self, on: bool) -> Result<(), PanelError> {
        let address = self.address;
        self.driver
            .set_display_on(on)
            .map_err(|e| bus_error(address, e))
    }
}

/// Where the box's OLED is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OledConfig {
    /// I2C bus device.
    pub bus: PathBuf,
    /// 7-bit address.
    pub address: u8,
}

impl Default for OledConfig {
    fn default() -> Self {
        Self {
            bus: PathBuf::from(DEFAULT_I2C_BUS),
            address: DEFAULT_I2C_ADDRESS,
        }
    }
}

/// Opens the bus and initialises the OLED. Wrap it in `Display` so failures never stop the box:
/// `Display::new(move || open_oled(&config), …)`.
pub fn open_oled(
    config: &OledConfig,
) -> Result<Ssd1306Panel<linux_embedded_hal::I2cdev>, PanelError> {
    let dev = linux_embedded_hal::I2cdev::new(&config.bus).map_err(|e| PanelError::Open {
        path: config.bus.clone(),
        message: e.to_string(),
    })?;
    Ssd1306Panel::new(dev, config.address)
}

/// The OLED drawn in a terminal with half blocks, redrawn in place (the cursor moves back up
/// over the previous picture). Dim uses the terminal's faint attribute; off draws it dark.
pub struct TerminalPanel<W: Write> {
    out: W,
    frame: Frame,
    power: bool,
    brightness: Brightness,
    drawn: bool,
}

impl<W: Write> TerminalPanel<W> {
    /// Draws into `out` (usually stdout), starting at the cursor.
    pub fn new(out: W) -> Self {
        Self {
            out,
            frame: Frame::new(),
            power: true,
            brightness: Brightness::Normal,
            drawn: false,
        }
    }

    fn repaint(&mut self) -> Result<(), PanelError> {
        let mut text = String::new();
        if self.drawn {
            // Back to the first line of the previous picture (rows + 2 border lines).
            text.push_str(&format!("\x1b[{}A\r", TERMINAL_ROWS + 2));
        }
        if self.brightness == Brightness::Dim {
            text.push_str("\x1b[2m");
        }
        let dark = Frame::new();
        text.push_str(&render_terminal(if self.power {
            &self.frame
        } else {
            &dark
        }));
        text.push_str("\x1b[0m");
        self.drawn = true;
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|source| PanelError::Io {
                path: PathBuf::from("terminal"),
                source,
            })
    }
}

impl<W: Write> Panel for TerminalPanel<W> {
    fn show(&mut self, screen: &Screen, offset: (i32, i32)) -> Result<(), PanelError> {
        self.frame = render(screen, offset);
        self.repaint()
    }

    fn set_brightness(&mut self, brightness: Brightness) -> Result<(), PanelError> {
        self.brightness = brightness;
        self.repaint()
    }

    fn set_power(&mut self, on: bool) -> Result<(), PanelError> {
        self.power = on;
        self.repaint()
    }
}

/// Keeps one PNG file showing the panel (written to a temporary name, then renamed, so a
/// reader never sees half a file). Dim pixels are grey; off is black.
pub struct PngPanel {
    path: PathBuf,
    scale: u32,
    frame: Frame,
    power: bool,
    brightness: Brightness,
}

impl PngPanel {
    /// Writes to `path` with each pixel `scale` x `scale`.
    pub fn new(path: impl Into<PathBuf>, scale: u32) -> Self {
        Self {
            path: path.into(),
            scale,
            frame: Frame::new(),
            power: true,
            brightness: Brightness::Normal,
        }
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self) -> Result<(), PanelError> {
        let level = match self.brightness {
            Brightness::Normal => 0xFF,
            Brightness::Dim => 0x90,
        };
        let dark = Frame::new();
        let frame = if self.power { &self.frame } else { &dark };
        let bytes = encode_png_level(frame, self.scale, level)?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let io = |source| PanelError::Io {
            path: self.path.clone(),
            source,
        };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

impl Panel for PngPanel {
    fn show(&mut self, screen: &Screen, offset: (i32, i32)) -> Result<(), PanelError> {
        self.frame = render(screen, offset);
        self.write()
    }

    fn set_brightness(&mut self, brightness: Brightness) -> Result<(), PanelError> {
        self.brightness = brightness;
        self.write()
    }

    fn set_power(&mut self, on: bool) -> Result<(), PanelError> {
        self.power = on;
        self.write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::fake::FakeSsd1306;
    use crate::display::png_io::decode_png;
    use crate::display::screen::ErrorScreen;

    #[test]
    fn ssd1306_panel_puts_the_screen_on_the_fake_glass() {
        let fake = FakeSsd1306::new(0x3C);
        let mut panel = Ssd1306Panel::new(fake.clone(), 0x3C).unwrap();
        assert!(fake.state().display_on && fake.visible().lit_count() == 0);
        let screen = Screen::Error(ErrorScreen::DriveFull);
        panel.show(&screen, (1, 1)).unwrap();
        assert_eq!(fake.visible(), render(&screen, (1, 1)));
        // The same picture again sends nothing.
        let before = fake.state().transactions;
        panel.show(&screen, (1, 1)).unwrap();
        assert_eq!(fake.state().transactions, before);
        assert!(fake.state().unknown.is_empty());
    }

    #[test]
    fn small_changes_send_only_the_changed_rectangle() {
        let fake = FakeSsd1306::new(0x3C);
        let mut panel = Ssd1306Panel::new(fake.clone(), 0x3C).unwrap();
        let countdown = |s| Screen::Passcode { seconds_left: s };
        panel.show(&countdown(107), (0, 0)).unwrap();
        let full = fake.state().data_bytes;
        panel.show(&countdown(106), (0, 0)).unwrap();
        let partial = fake.state().data_bytes - full;
        assert_eq!(fake.visible(), render(&countdown(106), (0, 0)));
        assert!(
            partial > 0 && partial * 4 < 1024,
            "sent {partial} bytes for one digit"
        );
    }

    #[test]
    fn missing_oled_is_an_error_not_a_panic() {
        let fake = FakeSsd1306::new(0x3C);
        assert!(matches!(
            Ssd1306Panel::new(fake.clone(), 0x3D),
            Err(PanelError::Bus { address: 0x3D, .. })
        ));
        let mut panel = Ssd1306Panel::new(fake.clone(), 0x3C).unwrap();
        fake.set_unplugged(true);
        assert!(panel.show(&Screen::NoDrive, (0, 0)).is_err());
        assert!(panel.set_power(false).is_err());
        fake.set_unplugged(false);
        // After a failure the next show sends the picture again, even if it is unchanged.
        panel.show(&Screen::NoDrive, (0, 0)).unwrap();
        assert_eq!(fake.visible(), render(&Screen::NoDrive, (0, 0)));
    }

    #[test]
    fn missing_bus_device_is_reported_with_its_path() {
        let config = OledConfig {
            bus: PathBuf::from("/nonexistent/i2c-9"),
            address: 0x3C,
        };
        let err = open_oled(&config).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/i2c-9"), "{err}");
    }

    #[test]
    fn terminal_panel_redraws_in_place() {
        let mut out = Vec::new();
        {
            let mut panel = TerminalPanel::new(&mut out);
            panel.show(&Screen::Saving, (0, 0)).unwrap();
            panel.set_brightness(Brightness::Dim).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('┌').count(), 2);
        assert_eq!(text.matches("\x1b[34A").count(), 1);
        assert!(text.contains("\x1b[2m"));
    }

    #[test]
    fn png_panel_writes_grey_when_dim_and_black_when_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut panel = PngPanel::new(dir.path().join("oled.png"), 2);
        panel.show(&Screen::Saving, (0, 0)).unwrap();
        let shown = decode_png(&std::fs::read(panel.path()).unwrap()).unwrap();
        assert_eq!(shown, render(&Screen::Saving, (0, 0)));
        panel.set_brightness(Brightness::Dim).unwrap();
        assert_eq!(
            decode_png(&std::fs::read(panel.path()).unwrap()).unwrap(),
            shown
        );
        panel.set_power(false).unwrap();
        let off = decode_png(&std::fs::read(panel.path()).unwrap()).unwrap();
        assert_eq!(off.lit_count(), 0);
    }
}
