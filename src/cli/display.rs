//! `cradle display …`: the OLED's screens. `preview` draws every screen with sample data as PNG
//! files or in the terminal; `oled` cycles them on a real SSD1306 to check the wiring; `demo`
//! plays a scripted backup live in the terminal.

use anyhow::Context;
use clap::{Args, Subcommand};
use cradle::display::{
    encode_png, open_oled, render, render_terminal, samples, BurnInConfig, Display, OledConfig,
    Panel, PanelError, PngPanel, ProgressModel, Screen, TerminalPanel, DEFAULT_I2C_ADDRESS,
    DEFAULT_I2C_BUS,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum DisplayCommand {
    /// Draw every screen with sample data: PNG files (--out) and/or the terminal (--terminal).
    Preview(PreviewArgs),
    /// Show every sample screen on the OLED in turn (checks wiring and address).
    Oled(OledArgs),
    /// Play a scripted backup (plug in, trust, passcode, progress, verify, idle dimming) live in
    /// the terminal, or into a PNG file that is rewritten at each change.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 10.0, value_parser = parse_speed)]
    speed: f64,
    /// Keep this PNG file up to date instead of drawing in the terminal.
    #[arg(long)]
    png: Option<PathBuf>,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=1000.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: speed must be between 0.1 and 1000")),
    }
}

#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// Write <name>.png for each screen into this folder (created if needed).
    #[arg(long, required_unless_present = "terminal")]
    out: Option<PathBuf>,
    /// Print each screen with Unicode half blocks (needs a terminal 130 columns wide).
    #[arg(long)]
    terminal: bool,
    /// Pixel size in the PNG files (1 = the OLED's own 128x64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    scale: u32,
    /// Only screens whose name contains this text (e.g. "error").
    #[arg(long)]
    only: Option<String>,
}

#[derive(Args, Debug)]
pub struct OledArgs {
    /// I2C bus device.
    #[arg(long, default_value = DEFAULT_I2C_BUS)]
    bus: PathBuf,
    /// 7-bit I2C address (0x3C, or 0x3D on some modules).
    #[arg(long, default_value = "0x3C", value_parser = parse_address)]
    address: u8,
    /// Seconds per screen.
    #[arg(long, default_value_t = 2)]
    seconds: u64,
}

fn parse_address(s: &str) -> Result<u8, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => s.parse::<u8>(),
    };
    match parsed {
        Ok(a) if a <= 0x7F => Ok(a),
        _ => Err(format!(
            "{s:?} is not a 7-bit I2C address (e.g. {DEFAULT_I2C_ADDRESS:#04x})"
        )),
    }
}

pub fn run(c: DisplayCommand) -> anyhow::Result<ExitCode> {
    match c {
        DisplayCommand::Preview(args) => preview(args),
        DisplayCommand::Oled(args) => oled(args),
        DisplayCommand::Demo(args) => demo(args),
    }
}

fn preview(args: PreviewArgs) -> anyhow::Result<ExitCode> {
    let screens: Vec<_> = samples()
        .into_iter()
        .filter(|(name, _)| args.only.as_deref().is_none_or(|o| name.contains(o)))
        .collect();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (name, screen) in &screens {
        let frame = render(screen, (0, 0));
        if let Some(dir) = &args.out {
            let path = dir.join(format!("{name}.png"));
            let png = encode_png(&frame, args.scale)?;
            std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        }
        if args.terminal {
            writeln!(out, "{name}")?;
            write!(out, "{}", render_terminal(&frame))?;
        }
    }
    if let (Some(dir), false) = (&args.out, args.terminal) {
        writeln!(out, "wrote {} screens to {}", screens.len(), dir.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn oled(args: OledArgs) -> anyhow::Result<ExitCode> {
    let config = OledConfig {
        bus: args.bus,
        address: args.address,
    };
    let mut panel = open_oled(&config)?;
    for (name, screen) in samples() {
        println!("{name}");
        panel.show(&screen, (0, 0))?;
        std::thread::sleep(Duration::from_secs(args.seconds));
    }
    Ok(ExitCode::SUCCESS)
}

/// One step of the demo: a screen (built from simulated seconds since the step began) held for
/// a number of simulated seconds.
struct Step {
    seconds: u32,
    screen: Box<dyn Fn(u32) -> Screen>,
}

fn demo_script() -> Vec<Step> {
    let sample = |name: &str| {
        samples()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
            .unwrap_or(Screen::NoDrive)
    };
    let fixed =
        |screen: Screen| -> Box<dyn Fn(u32) -> Screen> { Box::new(move |_| screen.clone()) };
    vec![
        Step {
            seconds: 2,
            screen: fixed(sample("boot")),
        },
        Step {
            seconds: 4,
            screen: fixed(sample("ready")),
        },
        Step {
            seconds: 2,
            screen: fixed(sample("phone-found")),
        },
        Step {
            seconds: 3,
            screen: fixed(sample("trust")),
        },
        Step {
            seconds: 8,
            screen: Box::new(|t| Screen::Passcode {
                seconds_left: 120 - t,
            }),
        },
        Step {
            seconds: 3,
            screen: fixed(Screen::EnablingEncryption),
        },
    ]
}

fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let png = args.png.clone();
    let open = move || -> Result<Box<dyn Panel>, PanelError> {
        Ok(match &png {
            Some(path) => Box::new(PngPanel::new(path.clone(), 3)),
            None => Box::new(TerminalPanel::new(std::io::stdout())),
        })
    };
    let t0 = Instant::now();
    let at = |sim: f64| t0 + Duration::from_secs_f64(sim);
    let mut sim = 0.0f64;
    // Sleep so that `sim` simulated seconds have passed in real time at the chosen speed.
    let wait_until = |sim: f64| {
        let due = t0 + Duration::from_secs_f64(sim / args.speed);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    };
    let mut display = Display::new(open, at(0.0), BurnInConfig::default(), Screen::NoDrive);

    for step in demo_script() {
        for t in 0..step.seconds {
            display.set_screen(at(sim), (step.screen)(t));
            sim += 1.0;
            wait_until(sim);
        }
    }

    // Backing up: ~3 GB at ~25 MB/s with jitter; the phone revises its total upwards halfway.
    let mut model = ProgressModel::new(at(sim), Some(20e6));
    let (mut done, mut total) = (0u64, 3_000_000_000u64);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    while done < total {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let jitter = 0.6 + (rng % 800) as f64 / 1000.0;
        done = (done + (25e6 * jitter) as u64).min(total);
        if done > 1_200_000_000 && total == 3_000_000_000 {
            total = 3_400_000_000;
        }
        model.update(at(sim), done, total);
        let phase = if done < total / 20 {
            "Preparing"
        } else {
            "Receiving files"
        };
        display.set_screen(at(sim), Screen::BackingUp(model.progress(at(sim), phase)));
        sim += 1.0;
        wait_until(sim);
    }
    let took = sim;
    for _ in 0..3 {
        display.set_screen(at(sim), Screen::Saving);
        sim += 1.0;
        wait_until(sim);
    }
    for pm in (0..=1000).step_by(125) {
        display.set_screen(at(sim), Screen::Verifying { permille: Some(pm) });
        sim += 1.0;
        wait_until(sim);
    }
    display.set_screen(
        at(sim),
        Screen::Done {
            new_bytes: 1_234_000_000,
            duration: Duration::from_secs_f64(took + 11.0),
        },
    );
    // Idle: the panel dims after a minute (and would go dark after ten).
    let end = sim + 75.0;
    while sim < end {
        sim = display
            .next_wakeup(at(sim))
            .saturating_duration_since(t0)
            .as_secs_f64()
            .min(end);
        wait_until(sim);
        display.tick(at(sim));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_hex_or_decimal() {
        assert_eq!(parse_address("0x3C"), Ok(0x3C));
        assert_eq!(parse_address("61"), Ok(0x3D));
        assert!(parse_address("0x80").is_err());
        assert!(parse_address("oled").is_err());
    }

    #[test]
    fn demo_script_stays_in_range() {
        // Every step's screen can be built for every second it is held (no underflow).
        for step in demo_script() {
            for t in 0..step.seconds {
                let _ = (step.screen)(t);
            }
        }
        assert!(parse_speed("0").is_err() && parse_speed("10").is_ok());
    }
}
