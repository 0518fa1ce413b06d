//! `cradle display …`: the OLED's screens. `preview` draws every screen with sample data as PNG
//! files or in the terminal; `oled` cycles them on a real SSD1306 to check the wiring.

use anyhow::Context;
use clap::{Args, Subcommand};
use cradle::display::{
    encode_png, open_oled, render, render_terminal, samples, OledConfig, Panel,
    DEFAULT_I2C_ADDRESS, DEFAULT_I2C_BUS,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum DisplayCommand {
    /// Draw every screen with sample data: PNG files (--out) and/or the terminal (--terminal).
    Preview(PreviewArgs),
    /// Show every sample screen on the OLED in turn (checks wiring and address).
    Oled(OledArgs),
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
}
