//! PNG files of frames: lit pixels white on black, optionally scaled up (nearest neighbour) for
//! docs; and the reverse, so golden images can be compared pixel by pixel.

use super::frame::{Frame, HEIGHT, WIDTH};

/// Largest scale factor accepted (128x64 at 16 is already 2048x1024).
pub const MAX_SCALE: u32 = 16;

/// Why a frame could not be written to or read from PNG.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The PNG encoder failed.
    #[error("encoding PNG: {0}")]
    Encode(#[from] png::EncodingError),
    /// The PNG could not be decoded.
    #[error("decoding PNG: {0}")]
    Decode(#[from] png::DecodingError),
    /// The image is not 128x64 (or that size times the scale).
    #[error("PNG is {width}x{height}, expected {WIDTH}x{HEIGHT} times a whole scale")]
    Size {
        /// Width found.
        width: u32,
        /// Height found.
        height: u32,
    },
    /// Scale outside 1..=MAX_SCALE.
    #[error("scale {0} is outside 1..={MAX_SCALE}")]
    Scale(u32),
    /// A colour layout this reader does not handle.
    #[error("unsupported PNG colour layout {0:?}")]
    Layout(png::ColorType),
}

/// Encodes `frame` as an 8-bit greyscale PNG, each pixel `scale` x `scale`.
pub fn encode_png(frame: &Frame, scale: u32) -> Result<Vec<u8>, PngError> {
    encode_png_level(frame, scale, 0xFF)
}

/// `encode_png` with lit pixels at grey `level` (a dimmed panel).
pub(crate) fn encode_png_level(frame: &Frame, scale: u32, level: u8) -> Result<Vec<u8>, PngError> {
    if !(1..=MAX_SCALE).contains(&scale) {
        return Err(PngError::Scale(scale));
    }
    let s = scale as usize;
    let (w, h) = (WIDTH * s, HEIGHT * s);
    let mut pixels = vec![0u8; w * h];
    for (y, row) in pixels.chunks_exact_mut(w).enumerate() {
        for (x, px) in row.iter_mut().enumerate() {
            if frame.get(x / s, y / s) {
                *px = level;
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&pixels)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Decodes a PNG written by `encode_png` (any whole scale; 8-bit grey, grey+alpha, RGB or RGBA):
/// a pixel is lit when its first channel is at least half bright.
pub fn decode_png(bytes: &[u8]) -> Result<Frame, PngError> {
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let (width, height) = (reader.info().width, reader.info().height);
    let scale = width / WIDTH as u32;
    if scale == 0
        || scale > MAX_SCALE
        || width != WIDTH as u32 * scale
        || height != HEIGHT as u32 * scale
    {
        return Err(PngError::Size { width, height });
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(PngError::Layout(other)),
    };
    let s = scale as usize;
    let mut frame = Frame::new();
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            // Sample the middle of each scaled pixel.
            let (px, py) = (x * s + s / 2, y * s + s / 2);
            let at = py * info.line_size + px * channels;
            if buf.get(at).is_some_and(|&v| v >= 0x80) {
                frame.set(x, y, true);
            }
        }
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_at_several_scales() {
        let mut f = Frame::new();
        f.set(0, 0, true);
        f.set(127, 63, true);
        f.set(64, 17, true);
        for scale in [1, 3, 4] {
            let png = encode_png(&f, scale).unwrap();
            assert_eq!(decode_png(&png).unwrap(), f);
        }
        assert!(matches!(encode_png(&f, 0), Err(PngError::Scale(0))));
    }

    #[test]
    fn rejects_wrong_sizes() {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 10, 10);
            enc.set_color(png::ColorType::Grayscale);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&[0u8; 100]).unwrap();
        }
        assert!(matches!(decode_png(&out), Err(PngError::Size { .. })));
        assert!(matches!(decode_png(b"not a png"), Err(PngError::Decode(_))));
    }
}
