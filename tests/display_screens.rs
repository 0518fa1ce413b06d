//! Every screen drawn through the real `ssd1306` driver into `FakeSsd1306`, decoded from the
//! command stream and compared pixel for pixel with tests/golden/screens/<name>.png.
//! `CRADLE_BLESS=1 cargo test --test display_screens` rewrites the goldens after a deliberate
//! change; otherwise any difference fails and the actual PNG is written to a printed temp path.

use cradle::display::{
    decode_png, encode_png, render, samples, BurnInConfig, Display, FakeSsd1306, Frame, Panel,
    PanelError, Screen, Ssd1306Panel,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/screens")
}

/// What the glass shows after the driver has drawn `screen` from a freshly initialised panel.
fn through_driver(screen: &Screen, offset: (i32, i32)) -> Frame {
    let fake = FakeSsd1306::new(0x3C);
    let mut panel = Ssd1306Panel::new(fake.clone(), 0x3C).expect("init on the fake bus");
    panel.show(screen, offset).expect("draw on the fake bus");
    let state = fake.state();
    assert!(
        state.unknown.is_empty(),
        "driver sent opcodes the fake does not know: {:x?}",
        state.unknown
    );
    assert!(state.display_on && state.charge_pump);
    fake.visible()
}

#[test]
fn every_screen_matches_its_golden_png() {
    let bless = std::env::var_os("CRADLE_BLESS").is_some_and(|v| v == "1");
    let dir = golden_dir();
    let actual_dir = std::env::temp_dir().join(format!("cradle-screens-{}", std::process::id()));
    let mut failures = Vec::new();
    for (name, screen) in samples() {
        let actual = through_driver(&screen, (0, 0));
        let path = dir.join(format!("{name}.png"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, encode_png(&actual, 1).unwrap()).unwrap();
            continue;
        }
        let golden = match std::fs::read(&path) {
            Ok(bytes) => decode_png(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            Err(e) => {
                failures.push(format!("{name}: no golden at {} ({e})", path.display()));
                Frame::new()
            }
        };
        let diff = golden.diff_count(&actual);
        if diff > 0 {
            std::fs::create_dir_all(&actual_dir).unwrap();
            let out = actual_dir.join(format!("{name}.png"));
            std::fs::write(&out, encode_png(&actual, 1).unwrap()).unwrap();
            failures.push(format!(
                "{name}: {diff} pixels differ; actual image: {}",
                out.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "screens differ from tests/golden/screens (rerun with CRADLE_BLESS=1 if intended):\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_driver_shows_exactly_what_draw_renders_at_every_shift() {
    for (name, screen) in samples() {
        for offset in cradle::display::SHIFT_CYCLE {
            assert_eq!(
                through_driver(&screen, offset),
                render(&screen, offset),
                "{name} at {offset:?}"
            );
        }
    }
}

#[test]
fn consecutive_screens_leave_no_trace_of_the_previous_one() {
    let fake = FakeSsd1306::new(0x3C);
    let mut panel = Ssd1306Panel::new(fake.clone(), 0x3C).unwrap();
    let all = samples();
    for pair in all.windows(2) {
        panel.show(&pair[0].1, (1, 0)).unwrap();
        panel.show(&pair[1].1, (0, 1)).unwrap();
        assert_eq!(
            fake.visible(),
            render(&pair[1].1, (0, 1)),
            "{} after {}",
            pair[1].0,
            pair[0].0
        );
    }
}

#[test]
fn dimming_and_blanking_reach_the_bus_as_contrast_and_power_commands() {
    let t0 = Instant::now();
    let fake = FakeSsd1306::new(0x3C);
    let bus = fake.clone();
    let open = move || -> Result<_, PanelError> { Ssd1306Panel::new(bus.clone(), 0x3C) };
    let mut display = Display::new(open, t0, BurnInConfig::default(), Screen::NoDrive);
    let bright = fake.state().contrast;
    assert!(bright > 0);

    display.tick(t0 + Duration::from_secs(60));
    let dimmed = fake.state();
    assert_eq!(dimmed.contrast, 0, "contrast command 0x81 0x00 sent");
    assert_eq!(
        dimmed.commands(0x81).last().copied(),
        Some(&[0x81u8, 0x00][..])
    );
    assert!(dimmed.display_on);

    display.tick(t0 + Duration::from_secs(600));
    assert!(!fake.state().display_on, "display-off command 0xAE sent");
    assert_eq!(fake.visible().lit_count(), 0);

    display.event(t0 + Duration::from_secs(601));
    let woken = fake.state();
    assert!(woken.display_on);
    assert_eq!(woken.contrast, bright);
    assert_eq!(
        fake.visible(),
        render(
            &Screen::NoDrive,
            display.look(t0 + Duration::from_secs(601)).offset
        )
    );
}

#[test]
fn preview_command_writes_every_screen_as_the_goldens_show_it() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(["display", "preview", "--scale", "2", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    for (name, _) in samples() {
        let written = decode_png(&std::fs::read(out.path().join(format!("{name}.png"))).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let golden =
            decode_png(&std::fs::read(golden_dir().join(format!("{name}.png"))).unwrap()).unwrap();
        assert_eq!(written, golden, "{name}");
    }
}

#[test]
fn preview_command_prints_framed_half_block_screens() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cradle"))
        .args(["display", "preview", "--terminal", "--only", "error-no-tpm"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "error-no-tpm");
    assert_eq!(lines.len(), 1 + cradle::display::TERMINAL_ROWS + 2);
    assert!(lines[1..].iter().all(|l| l.chars().count() == 130));
    assert!(text.contains('▀') && text.contains('▄'));
}
