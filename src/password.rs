//! The backup password as a secret value: zeroized on drop, redacted in `Debug`, never printed.
//! Also the one place that reads a password from a file, stdin or an interactive prompt.

use std::fmt;
use std::io::Read;
use std::path::Path;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Longest password accepted from a file or stdin, in bytes; longer input is refused, not truncated.
pub const MAX_PASSWORD_LEN: usize = 4096;

/// A backup password. Its bytes are wiped when it is dropped and never appear in `Debug` output.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    /// Wraps raw password bytes (UTF-8 as typed; Apple derives keys from these bytes).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Password(bytes.into())
    }

    /// The password bytes, for key derivation only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The password as text, for protocol fields that carry it as a string (ChangePassword).
    pub fn expose_str(&self) -> Result<&str, PasswordError> {
        std::str::from_utf8(&self.0).map_err(|_| PasswordError::NotUtf8)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Why a password could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("could not read the password file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the password is empty: put the password on the first line of the file")]
    Empty,
    #[error("the password is longer than {MAX_PASSWORD_LEN} bytes")]
    TooLong,
    #[error("the password is not valid UTF-8")]
    NotUtf8,
    #[error("no password given: use --password-file FILE (or - for stdin), set CRADLE_PASSWORD_FILE, or run in a terminal to be asked")]
    NoTerminal,
    #[error("could not read the password from the terminal: {0}")]
    Prompt(#[source] std::io::Error),
}

/// Reads a password from `path` (`-` means stdin). Only the first line counts; a trailing
/// `\n` or `\r\n` is not part of the password.
pub fn read_password_file(path: &Path) -> Result<Password, PasswordError> {
    let mut raw = Vec::new();
    let res = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_PASSWORD_LEN as u64 + 3)
            .read_to_end(&mut raw)
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PASSWORD_LEN as u64 + 3).read_to_end(&mut raw))
    };
    if let Err(source) = res {
        raw.zeroize();
        return Err(PasswordError::File {
            path: path.display().to_string(),
            source,
        });
    }
    let pw = first_line(&raw);
    raw.zeroize();
    pw
}

pub(crate) fn first_line(raw: &[u8]) -> Result<Password, PasswordError> {
    let end = raw.iter().position(|&b| b == b'\n').unwrap_or(raw.len());
    let mut line = &raw[..end];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    if line.is_empty() {
        return Err(PasswordError::Empty);
    }
    if line.len() > MAX_PASSWORD_LEN {
        return Err(PasswordError::TooLong);
    }
    if std::str::from_utf8(line).is_err() {
        return Err(PasswordError::NotUtf8);
    }
    Ok(Password::new(line.to_vec()))
}

/// Resolves a password the way every command does: `--password-file`, then the
/// `CRADLE_PASSWORD_FILE` variable, then an interactive prompt when stdin is a terminal.
pub fn resolve_password(file: Option<&Path>, prompt: &str) -> Result<Password, PasswordError> {
    if let Some(p) = file {
        return read_password_file(p);
    }
    if let Some(p) = std::env::var_os("CRADLE_PASSWORD_FILE") {
        return read_password_file(Path::new(&p));
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(PasswordError::NoTerminal);
    }
    let mut s = rpassword::prompt_password(prompt).map_err(PasswordError::Prompt)?;
    let pw = first_line(s.as_bytes());
    s.zeroize();
    pw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let p = Password::new("hunter2");
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
    }

    #[test]
    fn first_line_strips_newline_and_crlf() {
        assert_eq!(first_line(b"abc\n").unwrap().expose(), b"abc");
        assert_eq!(first_line(b"abc\r\nignored").unwrap().expose(), b"abc");
        assert!(matches!(first_line(b"\n"), Err(PasswordError::Empty)));
        assert!(matches!(
            first_line(&[0xff, 0xfe]),
            Err(PasswordError::NotUtf8)
        ));
    }
}
