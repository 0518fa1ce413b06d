//! DeviceLink framing: each message is a `u32be length + plist` frame holding an array whose
//! element 0 names it (`"DLMessage…"`). Caps, argument accessors and the read/write edge live here.

use crate::plist_frame::{self, FrameError, PlistFormat};
use plist::Value;
use std::io::{self, Read, Write};

/// The placeholder both sides put where a string or plist argument is absent.
pub const EMPTY_PARAMETER: &str = "___EmptyParameterString___";

/// How this side serialises DeviceLink plists. Binary, as libimobiledevice (and Apple's own
/// hosts) send: both real hosts accept it from a device, every device accepts it from a host,
/// and it is a fraction of the size of XML for the per-file status dictionaries. Receiving
/// accepts both forms (pymobiledevice3 sends XML).
pub const WIRE_FORMAT: PlistFormat = PlistFormat::Binary;

/// The DeviceLink major version this host announces (libimobiledevice ≥ 1.3.0 with the Debian
/// patch, and HEAD, use 400; iOS ≥ 14 sends 400 itself).
pub const HOST_DL_VERSION: u64 = 400;

/// Longest path accepted in a DeviceLink message or a file stream, in bytes (the hosts' limit).
pub const MAX_PATH_LEN: usize = 4096;

/// Most paths (or move pairs) accepted in one DownloadFiles/RemoveItems/MoveItems message.
/// Real devices send one to a few thousand; the frame cap bounds memory anyway.
pub const MAX_PATHS_PER_MESSAGE: usize = 100_000;

/// Longest message name accepted (`DLMessageGetFreeDiskSpace` is 25 bytes).
pub const MAX_NAME_LEN: usize = 128;

/// Longest free text (error descriptions) kept from a peer, in bytes.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Why a plist is not an acceptable DeviceLink message. Always the peer's fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DlError {
    /// The frame's plist is not an array.
    #[error("the DeviceLink message is not an array")]
    NotAnArray,
    /// Element 0 is missing, not a string, not `DL…`, or absurdly long.
    #[error("the DeviceLink message has no name (element 0 must be a short string starting with \"DL\")")]
    NoName,
    /// A required argument is absent.
    #[error("{message}: argument {index} is missing")]
    MissingArgument { message: String, index: usize },
    /// An argument has the wrong plist type.
    #[error("{message}: argument {index} must be {expected}")]
    WrongType {
        message: String,
        index: usize,
        expected: &'static str,
    },
    /// A dictionary lacks a required key.
    #[error("{message}: the key {key} is missing or has the wrong type")]
    MissingKey { message: String, key: &'static str },
    /// More entries than [`MAX_PATHS_PER_MESSAGE`].
    #[error("{message}: {count} entries; at most {max} are accepted")]
    TooMany {
        message: String,
        count: usize,
        max: usize,
    },
    /// A path longer than [`MAX_PATH_LEN`].
    #[error("{message}: a path of {len} bytes; at most {max} are accepted", max = MAX_PATH_LEN)]
    PathTooLong { message: String, len: usize },
    /// A text longer than [`MAX_TEXT_LEN`].
    #[error("{message}: a text of {len} bytes; at most {max} are accepted", max = MAX_TEXT_LEN)]
    TextTooLong { message: String, len: usize },
}

/// Why a DeviceLink message could not be read from the connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The frame itself failed (EOF, I/O, over-long, not a plist).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The plist is not a valid DeviceLink message.
    #[error(transparent)]
    Message(#[from] DlError),
}

/// Reads one DeviceLink plist (XML or binary) with the shared frame cap.
pub fn read_value<R: Read + ?Sized>(r: &mut R) -> Result<Value, FrameError> {
    plist_frame::read_frame(r)
}

/// Writes one DeviceLink plist in [`WIRE_FORMAT`].
pub fn write_value<W: Write + ?Sized>(w: &mut W, value: &Value) -> io::Result<()> {
    plist_frame::write_frame(w, value, WIRE_FORMAT)
}

/// Splits a DeviceLink message into its name and its elements (name included at index 0).
pub fn split(value: &Value) -> Result<(&str, &[Value]), DlError> {
    let items = value.as_array().ok_or(DlError::NotAnArray)?;
    let name = items
        .first()
        .and_then(Value::as_string)
        .ok_or(DlError::NoName)?;
    if !name.starts_with("DL") || name.len() > MAX_NAME_LEN {
        return Err(DlError::NoName);
    }
    Ok((name, items.as_slice()))
}

/// Typed, checked access to a message's elements by index.
pub(crate) struct Args<'a> {
    pub name: &'a str,
    pub items: &'a [Value],
}

impl<'a> Args<'a> {
    pub fn new(name: &'a str, items: &'a [Value]) -> Self {
        Args { name, items }
    }

    pub fn get(&self, index: usize) -> Option<&'a Value> {
        self.items.get(index)
    }

    fn wrong(&self, index: usize, expected: &'static str) -> DlError {
        DlError::WrongType {
            message: self.name.to_string(),
            index,
            expected,
        }
    }

    pub fn required(&self, index: usize) -> Result<&'a Value, DlError> {
        self.get(index).ok_or_else(|| DlError::MissingArgument {
            message: self.name.to_string(),
            index,
        })
    }

    /// A path argument: a string of at most [`MAX_PATH_LEN`] bytes.
    pub fn path(&self, index: usize) -> Result<String, DlError> {
        let s = self
            .required(index)?
            .as_string()
            .ok_or_else(|| self.wrong(index, "a string"))?;
        check_path_len(self.name, s)?;
        Ok(s.to_string())
    }

    /// An array of paths, capped at [`MAX_PATHS_PER_MESSAGE`].
    pub fn paths(&self, index: usize) -> Result<Vec<String>, DlError> {
        let arr = self
            .required(index)?
            .as_array()
            .ok_or_else(|| self.wrong(index, "an array of strings"))?;
        self.check_count(arr.len())?;
        arr.iter()
            .map(|v| {
                let s = v
                    .as_string()
                    .ok_or_else(|| self.wrong(index, "an array of strings"))?;
                check_path_len(self.name, s)?;
                Ok(s.to_string())
            })
            .collect()
    }

    /// A dictionary of `source → destination` paths, in the order sent.
    pub fn path_map(&self, index: usize) -> Result<Vec<(String, String)>, DlError> {
        let dict = self
            .required(index)?
            .as_dictionary()
            .ok_or_else(|| self.wrong(index, "a dictionary of strings"))?;
        self.check_count(dict.len())?;
        dict.iter()
            .map(|(k, v)| {
                let dst = v
                    .as_string()
                    .ok_or_else(|| self.wrong(index, "a dictionary of strings"))?;
                check_path_len(self.name, k)?;
                check_path_len(self.name, dst)?;
                Ok((k.clone(), dst.to_string()))
            })
            .collect()
    }

    /// An optional real (progress); integers are accepted too, anything else counts as absent.
    pub fn opt_real(&self, index: usize) -> Option<f64> {
        self.get(index)
            .and_then(plist_frame::as_f64)
            .filter(|x| x.is_finite())
    }

    /// An optional non-negative integer.
    pub fn opt_uint(&self, index: usize) -> Option<u64> {
        self.get(index)
            .and_then(plist_frame::as_i64)
            .and_then(|i| u64::try_from(i).ok())
    }

    /// A required integer, read as i64 (unsigned-encoded negatives included).
    pub fn int(&self, index: usize) -> Result<i64, DlError> {
        plist_frame::as_i64(self.required(index)?).ok_or_else(|| self.wrong(index, "an integer"))
    }

    /// An optional string where [`EMPTY_PARAMETER`] means absent.
    pub fn opt_text(&self, index: usize) -> Result<Option<String>, DlError> {
        match self.get(index) {
            None => Ok(None),
            Some(Value::String(s)) if s == EMPTY_PARAMETER => Ok(None),
            Some(Value::String(s)) => {
                check_text_len(self.name, s)?;
                Ok(Some(s.clone()))
            }
            Some(_) => Err(self.wrong(index, "a string")),
        }
    }

    fn check_count(&self, count: usize) -> Result<(), DlError> {
        if count > MAX_PATHS_PER_MESSAGE {
            return Err(DlError::TooMany {
                message: self.name.to_string(),
                count,
                max: MAX_PATHS_PER_MESSAGE,
            });
        }
        Ok(())
    }
}

pub(crate) fn check_path_len(message: &str, s: &str) -> Result<(), DlError> {
    if s.len() > MAX_PATH_LEN {
        return Err(DlError::PathTooLong {
            message: message.to_string(),
            len: s.len(),
        });
    }
    Ok(())
}

pub(crate) fn check_text_len(message: &str, s: &str) -> Result<(), DlError> {
    if s.len() > MAX_TEXT_LEN {
        return Err(DlError::TextTooLong {
            message: message.to_string(),
            len: s.len(),
        });
    }
    Ok(())
}

/// Builds a message array from its name and arguments.
pub(crate) fn message(name: &str, args: impl IntoIterator<Item = Value>) -> Value {
    let mut items = vec![Value::String(name.to_string())];
    items.extend(args);
    Value::Array(items)
}

/// The empty-parameter placeholder as a value.
pub(crate) fn empty_param() -> Value {
    Value::String(EMPTY_PARAMETER.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_requires_dl_name() {
        let v = message("DLMessageDeviceReady", []);
        assert_eq!(split(&v).unwrap().0, "DLMessageDeviceReady");
        assert_eq!(
            split(&Value::Array(vec![Value::String("Hello".into())])),
            Err(DlError::NoName)
        );
        assert_eq!(split(&Value::Array(vec![])), Err(DlError::NoName));
        assert_eq!(
            split(&Value::Array(vec![Value::Integer(3.into())])),
            Err(DlError::NoName)
        );
        assert_eq!(split(&Value::Boolean(true)), Err(DlError::NotAnArray));
        let long = format!("DL{}", "x".repeat(MAX_NAME_LEN));
        assert_eq!(
            split(&Value::Array(vec![Value::String(long)])),
            Err(DlError::NoName)
        );
    }

    #[test]
    fn path_argument_is_capped() {
        let long = "a".repeat(MAX_PATH_LEN + 1);
        let v = message("DLMessageCreateDirectory", [Value::String(long)]);
        let (name, items) = split(&v).unwrap();
        let args = Args::new(name, items);
        assert!(matches!(args.path(1), Err(DlError::PathTooLong { .. })));
        assert!(matches!(
            args.path(2),
            Err(DlError::MissingArgument { index: 2, .. })
        ));
    }

    #[test]
    fn negative_int_as_unsigned() {
        let v = message(
            "DLMessageStatusResponse",
            [Value::Integer(18446744073709551603u64.into())],
        );
        let (name, items) = split(&v).unwrap();
        assert_eq!(Args::new(name, items).int(1), Ok(-13));
    }
}
