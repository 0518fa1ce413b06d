//! Frames as text: two pixel rows per character cell with Unicode half blocks (▀ ▄ █), inside a
//! box-drawing frame, so the demo can redraw the OLED live in a terminal.

use super::frame::{Frame, HEIGHT, WIDTH};

/// Characters per line of the picture (one per pixel column), without the frame.
pub const TERMINAL_COLUMNS: usize = WIDTH;
/// Lines of the picture (two pixel rows each), without the frame.
pub const TERMINAL_ROWS: usize = HEIGHT / 2;

/// The frame as `TERMINAL_ROWS + 2` lines of `TERMINAL_COLUMNS + 2` characters (border
/// included), each ending in '\n'. Lit pixels are drawn as blocks.
pub fn render_terminal(frame: &Frame) -> String {
    let mut out = String::with_capacity((TERMINAL_ROWS + 2) * (TERMINAL_COLUMNS + 3) * 3);
    out.push('┌');
    out.extend(std::iter::repeat_n('─', TERMINAL_COLUMNS));
    out.push_str("┐\n");
    for row in 0..TERMINAL_ROWS {
        out.push('│');
        for x in 0..WIDTH {
            out.push(match (frame.get(x, 2 * row), frame.get(x, 2 * row + 1)) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push_str("│\n");
    }
    out.push('└');
    out.extend(std::iter::repeat_n('─', TERMINAL_COLUMNS));
    out.push_str("┘\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_blocks_and_frame() {
        let mut f = Frame::new();
        f.set(0, 0, true);
        f.set(1, 1, true);
        f.set(2, 0, true);
        f.set(2, 1, true);
        let text = render_terminal(&f);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), TERMINAL_ROWS + 2);
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == TERMINAL_COLUMNS + 2));
        assert!(lines[1].starts_with("│▀▄█ "));
        assert!(lines[0].starts_with("┌─") && lines[TERMINAL_ROWS + 1].ends_with("─┘"));
    }
}
