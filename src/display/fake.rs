//! `FakeSsd1306`: an in-memory SSD1306 on an I2C bus. It decodes the controller's command stream
//! (control byte, addressing modes, address windows, contrast, power) into its display RAM, so
//! tests can drive the real `ssd1306` driver and then look at the pixels the glass would show.

use super::frame::{Frame, HEIGHT, WIDTH};
use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most complete commands kept in `FakeState::log`; older ones are dropped so a long-running
/// test cannot grow it without bound.
pub const MAX_LOGGED_COMMANDS: usize = 4096;

/// How the controller advances its RAM pointer after each data byte (command 0x20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressingMode {
    /// Left to right, then next page, inside the column/page windows (0x20 0x00).
    Horizontal,
    /// Top to bottom page by page, then next column (0x20 0x01).
    Vertical,
    /// Left to right within one page, set by 0xB0..0xB7 and 0x00..0x1F (0x20 0x02, reset default).
    Page,
}

/// Everything the fake controller has been told, for tests to inspect.
#[derive(Clone, Debug)]
pub struct FakeState {
    /// Display RAM: 8 pages x 128 columns, as written.
    pub ram: Frame,
    /// Display on (0xAF) or sleeping (0xAE).
    pub display_on: bool,
    /// Contrast (0x81 xx).
    pub contrast: u8,
    /// Pre-charge period byte (0xD9 xx).
    pub precharge: u8,
    /// Inverse display (0xA7).
    pub inverted: bool,
    /// Entire display on regardless of RAM (0xA5).
    pub all_on: bool,
    /// Charge pump enabled (0x8D 0x14); without it the panel stays dark.
    pub charge_pump: bool,
    /// Segment remap (0xA1): column 0 drives the left edge with the usual module wiring.
    pub segment_remap: bool,
    /// COM scan reversed (0xC8): page 0 at the top with the usual module wiring.
    pub com_reversed: bool,
    /// Current addressing mode.
    pub addressing: AddressingMode,
    /// Column window (0x21 start end), inclusive.
    pub column_window: (u8, u8),
    /// Page window (0x22 start end), inclusive.
    pub page_window: (u8, u8),
    /// RAM pointer: column.
    pub column: u8,
    /// RAM pointer: page.
    pub page: u8,
    /// Scrolling active (0x2F); the picture would move.
    pub scrolling: bool,
    /// I2C transactions seen (including failed ones).
    pub transactions: usize,
    /// Data bytes written to RAM.
    pub data_bytes: usize,
    /// Complete commands, opcode first, oldest first (at most `MAX_LOGGED_COMMANDS`).
    pub log: Vec<Vec<u8>>,
    /// Opcodes the fake does not know (a test may insist this stays empty).
    pub unknown: Vec<u8>,
    /// When set, every transaction fails as if the OLED were not connected.
    pub unplugged: bool,
    pending: Vec<u8>,
}

impl FakeState {
    fn new() -> Self {
        // Reset values from the datasheet: display off, contrast 0x7F, page addressing.
        Self {
            ram: Frame::new(),
            display_on: false,
            contrast: 0x7F,
            precharge: 0x22,
            inverted: false,
            all_on: false,
            charge_pump: false,
            segment_remap: false,
            com_reversed: false,
            addressing: AddressingMode::Page,
            column_window: (0, (WIDTH - 1) as u8),
            page_window: (0, (HEIGHT / 8 - 1) as u8),
            column: 0,
            page: 0,
            scrolling: false,
            transactions: 0,
            data_bytes: 0,
            log: Vec::new(),
            unknown: Vec::new(),
            unplugged: false,
            pending: Vec::new(),
        }
    }

    /// The picture on the glass: dark when off or without charge pump, RAM mapped through the
    /// remap bits (0xA1 + 0xC8, the `ssd1306` crate's default rotation, shows RAM as is), then
    /// inverse and entire-on applied. Start line and display offset are assumed to be 0.
    pub fn visible(&self) -> Frame {
        if !self.display_on || !self.charge_pump {
            return Frame::new();
        }
        if self.all_on {
            return Frame::new().inverted();
        }
        let f = self.ram.flipped(!self.segment_remap, !self.com_reversed);
        if self.inverted {
            f.inverted()
        } else {
            f
        }
    }

    /// Commands whose opcode is `op`, oldest first (e.g. every contrast change).
    pub fn commands(&self, op: u8) -> Vec<&[u8]> {
        self.log
            .iter()
            .filter(|c| c.first() == Some(&op))
            .map(|c| c.as_slice())
            .collect()
    }

    fn command_byte(&mut self, b: u8) {
        self.pending.push(b);
        let op = self.pending[0];
        if self.pending.len() < 1 + arguments(op) {
            return;
        }
        let cmd = std::mem::take(&mut self.pending);
        self.execute(&cmd);
        if self.log.len() >= MAX_LOGGED_COMMANDS {
            self.log.drain(..MAX_LOGGED_COMMANDS / 2);
        }
        self.log.push(cmd);
    }

    fn execute(&mut self, cmd: &[u8]) {
        let arg = |i: usize| cmd.get(i).copied().unwrap_or(0);
        match cmd[0] {
            0x00..=0x0F => self.column = (self.column & 0xF0) | (cmd[0] & 0x0F),
            0x10..=0x1F => self.column = ((cmd[0] & 0x07) << 4) | (self.column & 0x0F),
            0x20 => {
                self.addressing = match arg(1) & 0x03 {
                    0 => AddressingMode::Horizontal,
                    1 => AddressingMode::Vertical,
                    _ => AddressingMode::Page,
                }
            }
            0x21 => {
                self.column_window = (arg(1) & 0x7F, arg(2) & 0x7F);
                self.column = self.column_window.0;
            }
            0x22 => {
                self.page_window = (arg(1) & 0x07, arg(2) & 0x07);
                self.page = self.page_window.0;
            }
            0x26 | 0x27 | 0x29 | 0x2A | 0xA3 => {}
            0x2E => self.scrolling = false,
            0x2F => self.scrolling = true,
            0x40..=0x7F => {}
            0x81 => self.contrast = arg(1),
            0x8D => self.charge_pump = arg(1) & 0x04 != 0,
            0xA0 | 0xA1 => self.segment_remap = cmd[0] & 1 == 1,
            0xA4 | 0xA5 => self.all_on = cmd[0] & 1 == 1,
            0xA6 | 0xA7 => self.inverted = cmd[0] & 1 == 1,
            0xAE | 0xAF => self.display_on = cmd[0] & 1 == 1,
            0xB0..=0xB7 => self.page = cmd[0] & 0x07,
            0xC0 | 0xC8 => self.com_reversed = cmd[0] == 0xC8,
            0xD9 => self.precharge = arg(1),
            0xA8 | 0xAD | 0xD3 | 0xD5 | 0xDA | 0xDB | 0xE3 => {}
            other => self.unknown.push(other),
        }
    }

    fn data_byte(&mut self, b: u8) {
        self.ram
            .set_page_byte(usize::from(self.page), usize::from(self.column), b);
        self.data_bytes += 1;
        let (c0, c1) = self.column_window;
        let (p0, p1) = self.page_window;
        match self.addressing {
            AddressingMode::Horizontal => {
                if self.column >= c1 {
                    self.column = c0;
                    self.page = if self.page >= p1 { p0 } else { self.page + 1 };
                } else {
                    self.column += 1;
                }
            }
            AddressingMode::Vertical => {
                if self.page >= p1 {
                    self.page = p0;
                    self.column = if self.column >= c1 {
                        c0
                    } else {
                        self.column + 1
                    };
                } else {
                    self.page += 1;
                }
            }
            AddressingMode::Page => {
                self.column = if usize::from(self.column) >= WIDTH - 1 {
                    0
                } else {
                    self.column + 1
                };
            }
        }
    }
}

/// Argument bytes that follow each opcode.
fn arguments(op: u8) -> usize {
    match op {
        0x26 | 0x27 => 6,
        0x29 | 0x2A => 5,
        0x21 | 0x22 | 0xA3 => 2,
        0x20 | 0x81 | 0x8D | 0xA8 | 0xAD | 0xD3 | 0xD5 | 0xD9 | 0xDA | 0xDB => 1,
        _ => 0,
    }
}

/// Where the parser is within one I2C write: each message starts with a control byte whose
/// bit 6 (D/C#) says data or commands and bit 7 (Co) says "only one byte follows, then another
/// control byte".
#[derive(Clone, Copy)]
enum Expect {
    Control,
    Stream { data: bool },
    Single { data: bool },
}

/// A fake SSD1306 at one I2C address. Clones share one controller, so a test keeps a clone
/// while the driver owns the other.
#[derive(Clone, Debug)]
pub struct FakeSsd1306 {
    address: u8,
    state: Arc<Mutex<FakeState>>,
}

impl Default for FakeSsd1306 {
    fn default() -> Self {
        Self::new(0x3C)
    }
}

impl FakeSsd1306 {
    /// A controller in its reset state, answering at `address` (7-bit).
    pub fn new(address: u8) -> Self {
        Self {
            address,
            state: Arc::new(Mutex::new(FakeState::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock leaves usable state behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the controller's state.
    pub fn state(&self) -> FakeState {
        self.lock().clone()
    }

    /// The picture on the glass (see `FakeState::visible`).
    pub fn visible(&self) -> Frame {
        self.lock().visible()
    }

    /// Simulates pulling the OLED off the bus (`true`) or plugging it back (`false`).
    pub fn set_unplugged(&self, unplugged: bool) {
        self.lock().unplugged = unplugged;
    }
}

impl ErrorType for FakeSsd1306 {
    type Error = ErrorKind;
}

impl I2c for FakeSsd1306 {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        let mut st = self.lock();
        st.transactions += 1;
        if st.unplugged || address != self.address {
            return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        }
        // Consecutive writes in one transaction form one I2C message.
        let mut expect = Expect::Control;
        for op in operations.iter_mut() {
            match op {
                Operation::Write(bytes) => {
                    for &b in bytes.iter() {
                        expect = match expect {
                            Expect::Control => {
                                let data = b & 0x40 != 0;
                                if b & 0x80 != 0 {
                                    Expect::Single { data }
                                } else {
                                    Expect::Stream { data }
                                }
                            }
                            Expect::Stream { data } => {
                                feed(&mut st, data, b);
                                expect
                            }
                            Expect::Single { data } => {
                                feed(&mut st, data, b);
                                Expect::Control
                            }
                        };
                    }
                }
                Operation::Read(buf) => {
                    // Status byte: bit 6 set while the display is off.
                    let status = if st.display_on { 0x00 } else { 0x40 };
                    buf.fill(status);
                    expect = Expect::Control;
                }
            }
        }
        Ok(())
    }
}

fn feed(st: &mut FakeState, data: bool, b: u8) {
    if data {
        st.data_byte(b);
    } else {
        st.command_byte(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizontal_window_wraps_inside_the_window() {
        let mut fake = FakeSsd1306::new(0x3C);
        // Horizontal mode, columns 10..=11, pages 2..=3, then 5 data bytes (wraps to page 2).
        fake.write(0x3C, &[0x00, 0x20, 0x00, 0x21, 10, 11, 0x22, 2, 3])
            .unwrap();
        fake.write(0x3C, &[0x40, 1, 2, 3, 4, 5]).unwrap();
        let st = fake.state();
        assert_eq!(st.ram.page_byte(2, 10), 5);
        assert_eq!(st.ram.page_byte(2, 11), 2);
        assert_eq!(st.ram.page_byte(3, 10), 3);
        assert_eq!(st.ram.page_byte(3, 11), 4);
        assert_eq!((st.column, st.page), (11, 2));
        assert!(st.unknown.is_empty());
    }

    #[test]
    fn page_mode_and_single_byte_control() {
        let mut fake = FakeSsd1306::new(0x3C);
        // Co=1 command bytes one at a time: page 5, column 0x23, then a Co=1 data byte.
        fake.write(0x3C, &[0x80, 0xB5, 0x80, 0x03, 0x80, 0x12, 0xC0, 0xFF])
            .unwrap();
        assert_eq!(fake.state().ram.page_byte(5, 0x23), 0xFF);
    }

    #[test]
    fn power_contrast_and_visibility() {
        let mut fake = FakeSsd1306::new(0x3C);
        fake.write(0x3C, &[0x40, 0x01]).unwrap();
        assert_eq!(fake.visible().lit_count(), 0, "off after reset");
        fake.write(0x3C, &[0x00, 0x8D, 0x14, 0xA1, 0xC8, 0xAF, 0x81, 0x10])
            .unwrap();
        let v = fake.visible();
        assert!(v.get(0, 0) && v.lit_count() == 1);
        assert_eq!(fake.state().contrast, 0x10);
        assert_eq!(fake.state().commands(0x81), vec![&[0x81u8, 0x10][..]]);
        // Without remap the picture is mirrored.
        fake.write(0x3C, &[0x00, 0xA0, 0xC0]).unwrap();
        assert!(fake.visible().get(WIDTH - 1, HEIGHT - 1));
        fake.write(0x3C, &[0x00, 0xA7]).unwrap();
        assert_eq!(fake.visible().lit_count(), WIDTH * HEIGHT - 1);
        fake.write(0x3C, &[0x00, 0xAE]).unwrap();
        assert_eq!(fake.visible().lit_count(), 0);
        let mut st = [0u8; 1];
        fake.read(0x3C, &mut st).unwrap();
        assert_eq!(st[0], 0x40);
    }

    #[test]
    fn wrong_address_and_unplugged_do_not_acknowledge() {
        let mut fake = FakeSsd1306::new(0x3C);
        assert!(fake.write(0x3D, &[0x00, 0xAF]).is_err());
        fake.set_unplugged(true);
        assert!(fake.write(0x3C, &[0x00, 0xAF]).is_err());
        assert!(!fake.state().display_on);
        fake.set_unplugged(false);
        fake.write(0x3C, &[0x00, 0xAF]).unwrap();
        assert!(fake.state().display_on);
    }

    #[test]
    fn commands_split_across_writes_and_unknown_opcodes() {
        let mut fake = FakeSsd1306::new(0x3C);
        fake.write(0x3C, &[0x00, 0x81]).unwrap();
        fake.write(0x3C, &[0x00, 0x42, 0xFE]).unwrap();
        let st = fake.state();
        assert_eq!(st.contrast, 0x42);
        assert_eq!(st.unknown, vec![0xFE]);
    }
}
