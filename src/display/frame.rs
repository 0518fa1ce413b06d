//! `Frame`: a 128x64 1-bit framebuffer stored the way the SSD1306 stores its memory (8 pages of
//! 128 column bytes, bit 0 = top row of the page), so the fake controller can use it as its RAM.

use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::{DrawTarget, OriginDimensions, Pixel, Size};
use std::convert::Infallible;
use std::fmt;

/// Width of the OLED in pixels.
pub const WIDTH: usize = 128;
/// Height of the OLED in pixels.
pub const HEIGHT: usize = 64;
/// Bytes in one frame: one bit per pixel.
pub(crate) const FRAME_BYTES: usize = WIDTH * HEIGHT / 8;

/// One full screen of pixels (`true` = lit).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: [u8; FRAME_BYTES],
}

impl Default for Frame {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({} lit)", self.lit_count())
    }
}

impl Frame {
    /// An all-dark frame.
    pub fn new() -> Self {
        Self {
            bytes: [0; FRAME_BYTES],
        }
    }

    /// Whether the pixel at (x, y) is lit; out-of-range pixels are dark.
    pub fn get(&self, x: usize, y: usize) -> bool {
        if x >= WIDTH || y >= HEIGHT {
            return false;
        }
        self.bytes[(y / 8) * WIDTH + x] & (1 << (y % 8)) != 0
    }

    /// Lights or clears the pixel at (x, y); out-of-range pixels are ignored (clipped).
    pub fn set(&mut self, x: usize, y: usize, on: bool) {
        if x >= WIDTH || y >= HEIGHT {
            return;
        }
        let byte = &mut self.bytes[(y / 8) * WIDTH + x];
        if on {
            *byte |= 1 << (y % 8);
        } else {
            *byte &= !(1 << (y % 8));
        }
    }

    /// The byte of memory at `page` (0..8) and `column` (0..128), as the controller stores it.
    pub fn page_byte(&self, page: usize, column: usize) -> u8 {
        if page >= HEIGHT / 8 || column >= WIDTH {
            return 0;
        }
        self.bytes[page * WIDTH + column]
    }

    /// Stores one byte of controller memory (ignored outside the 8 pages x 128 columns).
    pub fn set_page_byte(&mut self, page: usize, column: usize, value: u8) {
        if page >= HEIGHT / 8 || column >= WIDTH {
            return;
        }
        self.bytes[page * WIDTH + column] = value;
    }

    /// Number of lit pixels.
    pub fn lit_count(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Number of pixels that differ between two frames.
    pub fn diff_count(&self, other: &Frame) -> usize {
        self.bytes
            .iter()
            .zip(other.bytes.iter())
            .map(|(a, b)| (a ^ b).count_ones() as usize)
            .sum()
    }

    /// Every pixel inverted (what the panel shows in inverse mode).
    pub fn inverted(&self) -> Frame {
        let mut out = self.clone();
        for b in out.bytes.iter_mut() {
            *b = !*b;
        }
        out
    }

    /// The frame mirrored left-right and/or upside down.
    pub fn flipped(&self, horizontal: bool, vertical: bool) -> Frame {
        let mut out = Frame::new();
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                let sx = if horizontal { WIDTH - 1 - x } else { x };
                let sy = if vertical { HEIGHT - 1 - y } else { y };
                out.set(x, y, self.get(sx, sy));
            }
        }
        out
    }

    /// The smallest box (x0, y0, x1, y1, inclusive) holding every lit pixel, if any is lit.
    pub fn lit_bounds(&self) -> Option<(usize, usize, usize, usize)> {
        let mut bounds: Option<(usize, usize, usize, usize)> = None;
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                if self.get(x, y) {
                    bounds = Some(match bounds {
                        None => (x, y, x, y),
                        Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
                    });
                }
            }
        }
        bounds
    }
}

impl OriginDimensions for Frame {
    fn size(&self) -> Size {
        Size::new(WIDTH as u32, HEIGHT as u32)
    }
}

impl DrawTarget for Frame {
    type Color = BinaryColor;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, color) in pixels {
            // Negative coordinates fall outside the panel: clip them like any other.
            if let (Ok(x), Ok(y)) = (usize::try_from(p.x), usize::try_from(p.y)) {
                self.set(x, y, color.is_on());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_land_in_controller_layout() {
        let mut f = Frame::new();
        f.set(3, 9, true);
        assert_eq!(f.page_byte(1, 3), 0b10);
        assert!(f.get(3, 9));
        f.set(200, 9, true);
        f.set(3, 64, true);
        assert_eq!(f.lit_count(), 1);
        assert_eq!(f.lit_bounds(), Some((3, 9, 3, 9)));
        let g = f.flipped(true, true);
        assert!(g.get(124, 54));
        assert_eq!(f.diff_count(&g), 2);
        assert_eq!(f.inverted().lit_count(), WIDTH * HEIGHT - 1);
    }
}
