//! The box's 128x64 OLED: screens as data (`Screen`), drawn by pure functions (`draw`) onto any
//! `DrawTarget`, plus progress/ETA and burn-in models and the panels that show the result.
//!
//! Layers: `screen` (view model) → `draw` (pixels) → `Frame` (a 1-bit framebuffer laid out like
//! the SSD1306's memory) → a `Panel` (SSD1306 over I2C, terminal, PNG). `Display` ties a panel to
//! the burn-in rules and keeps a missing or failing OLED from ever stopping the caller.
//! Everything here takes time as a parameter; nothing reads the clock.

mod burnin;
mod controller;
mod draw;
mod fake;
mod frame;
mod panel;
mod png_io;
mod progress;
mod screen;
mod terminal;

pub use burnin::{BurnIn, BurnInConfig, Look, SHIFT_CYCLE};
pub use controller::{Display, DEFAULT_RETRY_EVERY};
pub use draw::{draw, render, CHARS_PER_LINE};
pub use fake::{FakeSsd1306, FakeState};
pub use frame::{Frame, HEIGHT, WIDTH};
pub use panel::{
    open_oled, Brightness, OledConfig, Panel, PanelError, PngPanel, Ssd1306Panel, TerminalPanel,
    DEFAULT_I2C_ADDRESS, DEFAULT_I2C_BUS,
};
pub use png_io::{decode_png, encode_png, PngError};
pub use progress::ProgressModel;
pub use screen::{samples, BackupProgress, ErrorScreen, PhoneSummary, Screen};
pub use terminal::{render_terminal, TERMINAL_COLUMNS, TERMINAL_ROWS};
