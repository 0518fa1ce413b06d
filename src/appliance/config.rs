//! The daemon's settings file, /etc/cradle/cradle.toml: a small flat subset of TOML
//! (`[section]` headers, `key = "string" | number | true/false | ["list", "of", "strings"]`,
//! `#` comments), read into `Config`. Command-line flags override it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The settings file of the box.
pub const DEFAULT_CONFIG: &str = "/etc/cradle/cradle.toml";
/// Largest settings file read.
pub const MAX_CONFIG_LEN: u64 = 64 * 1024;

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line is not understood.
    #[error("{}:{line}: {detail}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        detail: String,
    },
}

/// One value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

/// Everything the daemon can be told; `None` = the built-in default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// drive.label: the file-system label of the backup drive.
    pub drive_label: Option<String>,
    /// drive.mount_point: where it is mounted while in use.
    pub drive_mount_point: Option<PathBuf>,
    /// drive.dir: use this directory as the drive instead (already mounted, or for tests).
    pub drive_dir: Option<PathBuf>,
    /// display.kind: oled, terminal or none.
    pub display: Option<String>,
    /// display.i2c_bus.
    pub i2c_bus: Option<PathBuf>,
    /// display.i2c_address (7-bit).
    pub i2c_address: Option<u8>,
    /// phones.allow: only these UDIDs.
    pub allow: Option<Vec<String>>,
    /// status.socket.
    pub status_socket: Option<PathBuf>,
    /// state.dir: pair records and the host identity.
    pub state_dir: Option<PathBuf>,
    /// secrets.allow_host_key.
    pub allow_host_key: Option<bool>,
}

fn parse_value(s: &str) -> Option<Value> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return (!inner.contains('"')).then(|| Value::Str(inner.to_string()));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let mut out = Vec::new();
        for item in inner.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match parse_value(item)? {
                Value::Str(v) => out.push(v),
                _ => return None,
            }
        }
        return Some(Value::List(out));
    }
    match s {
        "true" => return Some(Value::Bool(true)),
        "false" => return Some(Value::Bool(false)),
        _ => {}
    }
    if let Some(hex) = s.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok().map(Value::Int);
    }
    s.parse().ok().map(Value::Int)
}

/// Parses the subset into `section.key` → value.
pub fn parse(text: &str, path: &Path) -> Result<BTreeMap<String, Value>, ConfigError> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |detail: &str| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            detail: detail.to_string(),
        };
        // A '#' starts a comment unless inside quotes (quotes cannot nest here).
        let mut line = String::new();
        let mut quoted = false;
        for c in raw.chars() {
            if c == '"' {
                quoted = !quoted;
            }
            if c == '#' && !quoted {
                break;
            }
            line.push(c);
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err("expected key = value"))?;
        let value = parse_value(value).ok_or_else(|| err("unsupported value"))?;
        let key = if section.is_empty() {
            key.trim().to_string()
        } else {
            format!("{section}.{}", key.trim())
        };
        out.insert(key, value);
    }
    Ok(out)
}

impl Config {
    /// Reads `path`; a missing file is an empty configuration when `optional`.
    pub fn load(path: &Path, optional: bool) -> Result<Config, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = match std::fs::File::open(path) {
            Ok(f) => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_CONFIG_LEN), &mut s)
                    .map_err(io)?;
                s
            }
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(e) => return Err(io(e)),
        };
        Config::from_map(&parse(&text, path)?, path)
    }

    /// Picks the known keys; an unknown key or a wrong type is an error (typos must not pass).
    pub fn from_map(map: &BTreeMap<String, Value>, path: &Path) -> Result<Config, ConfigError> {
        let bad = |key: &str, want: &str| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: 0,
            detail: format!("{key}: expected {want}"),
        };
        let mut c = Config::default();
        for (k, v) in map {
            match (k.as_str(), v) {
                ("drive.label", Value::Str(s)) => c.drive_label = Some(s.clone()),
                ("drive.mount_point", Value::Str(s)) => c.drive_mount_point = Some(s.into()),
                ("drive.dir", Value::Str(s)) => c.drive_dir = Some(s.into()),
                ("display.kind", Value::Str(s)) => c.display = Some(s.clone()),
                ("display.i2c_bus", Value::Str(s)) => c.i2c_bus = Some(s.into()),
                ("display.i2c_address", Value::Int(n)) => {
                    c.i2c_address = Some(
                        u8::try_from(*n)
                            .ok()
                            .filter(|a| *a < 0x80)
                            .ok_or_else(|| bad(k, "a 7-bit address"))?,
                    )
                }
                ("phones.allow", Value::List(l)) => c.allow = Some(l.clone()),
                ("status.socket", Value::Str(s)) => c.status_socket = Some(s.into()),
                ("state.dir", Value::Str(s)) => c.state_dir = Some(s.into()),
                ("secrets.allow_host_key", Value::Bool(b)) => c.allow_host_key = Some(*b),
                (
                    "drive.label" | "drive.mount_point" | "drive.dir" | "display.kind"
                    | "display.i2c_bus" | "status.socket" | "state.dir",
                    _,
                ) => return Err(bad(k, "a string")),
                ("display.i2c_address", _) => return Err(bad(k, "a number")),
                ("phones.allow", _) => return Err(bad(k, "a list of strings")),
                ("secrets.allow_host_key", _) => return Err(bad(k, "true or false")),
                _ => {
                    return Err(ConfigError::Syntax {
                        path: path.to_path_buf(),
                        line: 0,
                        detail: format!("unknown setting {k}"),
                    })
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subset_parses() {
        let text = r#"
# Cradle
[drive]
label = "CRADLE"   # the USB drive
mount_point = "/run/cradle/drive"
[display]
kind = "oled"
i2c_address = 0x3D
[phones]
allow = ["00008110-AAA", "00008030-BBB"]
[secrets]
allow_host_key = true
"#;
        let p = Path::new("cradle.toml");
        let c = Config::from_map(&parse(text, p).unwrap(), p).unwrap();
        assert_eq!(c.drive_label.as_deref(), Some("CRADLE"));
        assert_eq!(c.i2c_address, Some(0x3D));
        assert_eq!(c.allow.unwrap().len(), 2);
        assert_eq!(c.allow_host_key, Some(true));
        assert_eq!(c.drive_dir, None);
    }

    #[test]
    fn typos_and_bad_values_are_errors_with_the_line() {
        let p = Path::new("c.toml");
        let e = parse("[drive]\nlabel CRADLE\n", p).unwrap_err();
        assert!(e.to_string().contains("c.toml:2"), "{e}");
        let m = parse("[drive]\nlable = \"x\"\n", p).unwrap();
        assert!(Config::from_map(&m, p)
            .unwrap_err()
            .to_string()
            .contains("drive.lable"));
        let m = parse("[display]\ni2c_address = 300\n", p).unwrap();
        assert!(Config::from_map(&m, p).is_err());
        assert_eq!(
            Config::load(Path::new("/nonexistent/cradle.toml"), true).unwrap(),
            Config::default()
        );
        assert!(Config::load(Path::new("/nonexistent/cradle.toml"), false).is_err());
    }
}
