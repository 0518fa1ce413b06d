//! Typed DeviceLink/mobilebackup2 messages in both directions, with `decode` (validated, capped)
//! and `encode`. The host decodes `DeviceMessage` and encodes `HostMessage`; the simulator the reverse.

use super::dl::{self, empty_param, message, Args, DlError, ReadError, EMPTY_PARAMETER};
use crate::password::Password;
use plist::{Dictionary, Value};
use std::fmt;
use std::io::{self, Read, Write};
use zeroize::Zeroize;

/// Message names on the wire.
pub mod names {
    pub const VERSION_EXCHANGE: &str = "DLMessageVersionExchange";
    pub const VERSIONS_OK: &str = "DLVersionsOk";
    pub const DEVICE_READY: &str = "DLMessageDeviceReady";
    pub const PROCESS_MESSAGE: &str = "DLMessageProcessMessage";
    pub const DOWNLOAD_FILES: &str = "DLMessageDownloadFiles";
    pub const UPLOAD_FILES: &str = "DLMessageUploadFiles";
    pub const GET_FREE_DISK_SPACE: &str = "DLMessageGetFreeDiskSpace";
    /// Note: no `Message` in this one, on real devices and in both hosts.
    pub const CONTENTS_OF_DIRECTORY: &str = "DLContentsOfDirectory";
    pub const CREATE_DIRECTORY: &str = "DLMessageCreateDirectory";
    pub const MOVE_ITEMS: &str = "DLMessageMoveItems";
    pub const MOVE_FILES: &str = "DLMessageMoveFiles";
    pub const REMOVE_ITEMS: &str = "DLMessageRemoveItems";
    pub const REMOVE_FILES: &str = "DLMessageRemoveFiles";
    pub const COPY_ITEM: &str = "DLMessageCopyItem";
    pub const PURGE_DISK_SPACE: &str = "DLMessagePurgeDiskSpace";
    pub const DISCONNECT: &str = "DLMessageDisconnect";
    pub const STATUS_RESPONSE: &str = "DLMessageStatusResponse";
}

/// The mobilebackup2 protocol versions a host offers in Hello.
pub const SUPPORTED_PROTOCOL_VERSIONS: [f64; 2] = [2.0, 2.1];

/// Status code for "per-file errors, see the dictionary".
pub const MULTI_STATUS: i64 = -13;

/// A message the device sends to the host (protocol.md §4.2, §4.5, §4.8).
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceMessage {
    /// `[VersionExchange, major, minor]`: the device speaks first.
    VersionExchange { major: u64, minor: u64 },
    /// `[DeviceReady]` after the host accepted the version.
    DeviceReady,
    /// `[ProcessMessage, {…}]`: Hello's answer, and the end of every operation.
    ProcessMessage(Dictionary),
    /// Host sends each file (§4.7.2). Progress is element 3.
    DownloadFiles {
        paths: Vec<String>,
        progress: Option<f64>,
    },
    /// A raw upload stream follows (§4.7.1). Progress is element 2, total bytes element 3.
    UploadFiles {
        progress: Option<f64>,
        total_bytes: Option<u64>,
    },
    /// Host replies with its free bytes.
    GetFreeDiskSpace,
    /// Host lists a directory.
    ContentsOfDirectory { path: String },
    /// Host creates a directory and its parents. Some devices add `{}, progress`.
    CreateDirectory { path: String, progress: Option<f64> },
    /// Renames, in the order sent (source → destination).
    MoveItems {
        moves: Vec<(String, String)>,
        progress: Option<f64>,
    },
    /// The older name of `MoveItems` (libimobiledevice handles it, pymobiledevice3 does not).
    MoveFiles {
        moves: Vec<(String, String)>,
        progress: Option<f64>,
    },
    /// Recursive removals, missing paths ignored.
    RemoveItems {
        paths: Vec<String>,
        progress: Option<f64>,
    },
    /// The older name of `RemoveItems`.
    RemoveFiles {
        paths: Vec<String>,
        progress: Option<f64>,
    },
    /// Copy a file or directory.
    CopyItem { src: String, dst: String },
    /// Asks the host to free space; hosts refuse (arguments unknown, ignored).
    PurgeDiskSpace,
    /// The device ends the session.
    Disconnect,
    /// A `DL…` message this codec does not know.
    Unknown { name: String },
}

impl DeviceMessage {
    /// Parses and validates a device message.
    pub fn decode(value: &Value) -> Result<Self, DlError> {
        let (name, items) = dl::split(value)?;
        let a = Args::new(name, items);
        Ok(match name {
            names::VERSION_EXCHANGE => DeviceMessage::VersionExchange {
                major: uint_arg(&a, 1)?,
                minor: a.opt_uint(2).unwrap_or(0),
            },
            names::DEVICE_READY => DeviceMessage::DeviceReady,
            names::PROCESS_MESSAGE => DeviceMessage::ProcessMessage(dict_arg(&a, 1)?.clone()),
            names::DOWNLOAD_FILES => DeviceMessage::DownloadFiles {
                paths: a.paths(1)?,
                progress: a.opt_real(3),
            },
            names::UPLOAD_FILES => DeviceMessage::UploadFiles {
                progress: a.opt_real(2),
                total_bytes: a.opt_uint(3),
            },
            names::GET_FREE_DISK_SPACE => DeviceMessage::GetFreeDiskSpace,
            names::CONTENTS_OF_DIRECTORY => DeviceMessage::ContentsOfDirectory { path: a.path(1)? },
            names::CREATE_DIRECTORY => DeviceMessage::CreateDirectory {
                path: a.path(1)?,
                progress: a.opt_real(3),
            },
            names::MOVE_ITEMS => DeviceMessage::MoveItems {
                moves: a.path_map(1)?,
                progress: a.opt_real(3),
            },
            names::MOVE_FILES => DeviceMessage::MoveFiles {
                moves: a.path_map(1)?,
                progress: a.opt_real(3),
            },
            names::REMOVE_ITEMS => DeviceMessage::RemoveItems {
                paths: a.paths(1)?,
                progress: a.opt_real(3),
            },
            names::REMOVE_FILES => DeviceMessage::RemoveFiles {
                paths: a.paths(1)?,
                progress: a.opt_real(3),
            },
            names::COPY_ITEM => DeviceMessage::CopyItem {
                src: a.path(1)?,
                dst: a.path(2)?,
            },
            names::PURGE_DISK_SPACE => DeviceMessage::PurgeDiskSpace,
            names::DISCONNECT => DeviceMessage::Disconnect,
            other => DeviceMessage::Unknown {
                name: other.to_string(),
            },
        })
    }

    /// The message as a plist, in the shapes both real hosts handle (protocol.md §7 item 13):
    /// progress always present at the index each host reads, UploadFiles with 4 elements.
    pub fn to_value(&self) -> Value {
        let real = |p: &Option<f64>| Value::Real(p.unwrap_or(0.0));
        let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
        let moves_dict = |m: &[(String, String)]| {
            let mut d = Dictionary::new();
            for (s, t) in m {
                d.insert(s.clone(), Value::String(t.clone()));
            }
            Value::Dictionary(d)
        };
        let empty = || Value::Dictionary(Dictionary::new());
        match self {
            DeviceMessage::VersionExchange { major, minor } => message(
                names::VERSION_EXCHANGE,
                [
                    Value::Integer((*major).into()),
                    Value::Integer((*minor).into()),
                ],
            ),
            DeviceMessage::DeviceReady => message(names::DEVICE_READY, []),
            DeviceMessage::ProcessMessage(d) => {
                message(names::PROCESS_MESSAGE, [Value::Dictionary(d.clone())])
            }
            // The fifth element (0) is what real devices send; its meaning is unknown.
            DeviceMessage::DownloadFiles { paths, progress } => message(
                names::DOWNLOAD_FILES,
                [
                    strings(paths),
                    empty(),
                    real(progress),
                    Value::Integer(0.into()),
                ],
            ),
            DeviceMessage::UploadFiles {
                progress,
                total_bytes,
            } => message(
                names::UPLOAD_FILES,
                [
                    empty(),
                    real(progress),
                    Value::Integer(total_bytes.unwrap_or(0).into()),
                ],
            ),
            DeviceMessage::GetFreeDiskSpace => message(names::GET_FREE_DISK_SPACE, [empty_param()]),
            DeviceMessage::ContentsOfDirectory { path } => {
                message(names::CONTENTS_OF_DIRECTORY, [Value::String(path.clone())])
            }
            DeviceMessage::CreateDirectory { path, progress } => match progress {
                Some(p) => message(
                    names::CREATE_DIRECTORY,
                    [Value::String(path.clone()), empty(), Value::Real(*p)],
                ),
                None => message(names::CREATE_DIRECTORY, [Value::String(path.clone())]),
            },
            DeviceMessage::MoveItems { moves, progress } => message(
                names::MOVE_ITEMS,
                [moves_dict(moves), empty(), real(progress)],
            ),
            DeviceMessage::MoveFiles { moves, progress } => message(
                names::MOVE_FILES,
                [moves_dict(moves), empty(), real(progress)],
            ),
            DeviceMessage::RemoveItems { paths, progress } => message(
                names::REMOVE_ITEMS,
                [strings(paths), empty(), real(progress)],
            ),
            DeviceMessage::RemoveFiles { paths, progress } => message(
                names::REMOVE_FILES,
                [strings(paths), empty(), real(progress)],
            ),
            DeviceMessage::CopyItem { src, dst } => message(
                names::COPY_ITEM,
                [Value::String(src.clone()), Value::String(dst.clone())],
            ),
            DeviceMessage::PurgeDiskSpace => message(names::PURGE_DISK_SPACE, [empty_param()]),
            DeviceMessage::Disconnect => message(names::DISCONNECT, [empty_param()]),
            DeviceMessage::Unknown { name } => message(name, [empty_param()]),
        }
    }

    /// The framed message bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&crate::plist_frame::encode(
            &self.to_value(),
            dl::WIRE_FORMAT,
        ));
    }

    /// Writes the message as one frame.
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        dl::write_value(w, &self.to_value())
    }

    /// Reads and decodes one device message.
    pub fn read_from<R: Read + ?Sized>(r: &mut R) -> Result<Self, ReadError> {
        Ok(Self::decode(&dl::read_value(r)?)?)
    }

    /// The wire name, for logs and errors.
    pub fn name(&self) -> &str {
        match self {
            DeviceMessage::VersionExchange { .. } => names::VERSION_EXCHANGE,
            DeviceMessage::DeviceReady => names::DEVICE_READY,
            DeviceMessage::ProcessMessage(_) => names::PROCESS_MESSAGE,
            DeviceMessage::DownloadFiles { .. } => names::DOWNLOAD_FILES,
            DeviceMessage::UploadFiles { .. } => names::UPLOAD_FILES,
            DeviceMessage::GetFreeDiskSpace => names::GET_FREE_DISK_SPACE,
            DeviceMessage::ContentsOfDirectory { .. } => names::CONTENTS_OF_DIRECTORY,
            DeviceMessage::CreateDirectory { .. } => names::CREATE_DIRECTORY,
            DeviceMessage::MoveItems { .. } => names::MOVE_ITEMS,
            DeviceMessage::MoveFiles { .. } => names::MOVE_FILES,
            DeviceMessage::RemoveItems { .. } => names::REMOVE_ITEMS,
            DeviceMessage::RemoveFiles { .. } => names::REMOVE_FILES,
            DeviceMessage::CopyItem { .. } => names::COPY_ITEM,
            DeviceMessage::PurgeDiskSpace => names::PURGE_DISK_SPACE,
            DeviceMessage::Disconnect => names::DISCONNECT,
            DeviceMessage::Unknown { name } => name,
        }
    }

    /// The overall progress (0–100) the message carries, if any.
    pub fn progress(&self) -> Option<f64> {
        match self {
            DeviceMessage::DownloadFiles { progress, .. }
            | DeviceMessage::UploadFiles { progress, .. }
            | DeviceMessage::CreateDirectory { progress, .. }
            | DeviceMessage::MoveItems { progress, .. }
            | DeviceMessage::MoveFiles { progress, .. }
            | DeviceMessage::RemoveItems { progress, .. }
            | DeviceMessage::RemoveFiles { progress, .. } => *progress,
            _ => None,
        }
    }
}

fn uint_arg(a: &Args<'_>, index: usize) -> Result<u64, DlError> {
    let i = a.int(index)?;
    u64::try_from(i).map_err(|_| DlError::WrongType {
        message: a.name.to_string(),
        index,
        expected: "a non-negative integer",
    })
}

fn dict_arg<'a>(a: &Args<'a>, index: usize) -> Result<&'a Dictionary, DlError> {
    a.required(index)?
        .as_dictionary()
        .ok_or_else(|| DlError::WrongType {
            message: a.name.to_string(),
            index,
            expected: "a dictionary",
        })
}

/// `DLMessageStatusResponse`: the host's answer to every file operation (protocol.md §4.6).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusResponse {
    /// 0 = OK; negative DeviceLink error codes otherwise (−13 = multi status).
    pub code: i64,
    /// Error text; `None` is sent as `___EmptyParameterString___`.
    pub message: Option<String>,
    /// The result plist (free bytes, a listing, per-file errors); `None` is sent as the placeholder.
    pub payload: Option<Value>,
}

impl StatusResponse {
    /// Success with an empty dictionary, the shape both hosts send for most operations.
    pub fn ok_empty_dict() -> Self {
        StatusResponse {
            code: 0,
            message: None,
            payload: Some(Value::Dictionary(Dictionary::new())),
        }
    }

    /// Success with a payload.
    pub fn ok(payload: Value) -> Self {
        StatusResponse {
            code: 0,
            message: None,
            payload: Some(payload),
        }
    }

    /// A failure with a code and text and an empty dictionary.
    pub fn error(code: i64, message: impl Into<String>) -> Self {
        StatusResponse {
            code,
            message: Some(message.into()),
            payload: Some(Value::Dictionary(Dictionary::new())),
        }
    }

    /// −13 "Multi status" with `{path: {DLFileErrorCode, DLFileErrorString}}`.
    pub fn multi_status(failures: Dictionary) -> Self {
        StatusResponse {
            code: MULTI_STATUS,
            message: Some("Multi status".into()),
            payload: Some(Value::Dictionary(failures)),
        }
    }

    /// One entry of a multi-status dictionary.
    pub fn file_error(code: i64, text: &str) -> Value {
        let mut d = Dictionary::new();
        d.insert("DLFileErrorCode".into(), Value::Integer(code.into()));
        d.insert("DLFileErrorString".into(), Value::String(text.into()));
        Value::Dictionary(d)
    }

    pub fn is_ok(&self) -> bool {
        self.code == 0
    }
}

/// A request the host puts in `DLMessageProcessMessage` (protocol.md §4.3, §4.4, §5).
#[derive(Debug, Clone, PartialEq)]
pub enum HostRequest {
    /// `{MessageName: Hello, SupportedProtocolVersions}`.
    Hello { versions: Vec<f64> },
    /// `{MessageName: Backup, TargetIdentifier, SourceIdentifier?, Options{ForceFullBackup}?}`.
    Backup {
        target_identifier: String,
        source_identifier: Option<String>,
        force_full_backup: bool,
    },
    /// `{MessageName: ChangePassword, TargetIdentifier, OldPassword?, NewPassword?}`.
    ChangePassword {
        target_identifier: String,
        old_password: Option<Password>,
        new_password: Option<Password>,
    },
    /// `{MessageName: Info, TargetIdentifier, SourceIdentifier}`.
    Info {
        target_identifier: String,
        source_identifier: Option<String>,
    },
    /// `{MessageName: List, TargetIdentifier, SourceIdentifier}`.
    List {
        target_identifier: String,
        source_identifier: Option<String>,
    },
    /// Any other request (Restore, Unback, …), kept as sent.
    Other(RawRequest),
}

/// A request dictionary this codec does not model. `Debug` shows only its key names, since such
/// requests (Restore, Unback) may carry a password.
#[derive(Clone, PartialEq)]
pub struct RawRequest(pub Dictionary);

impl fmt::Debug for RawRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RawRequest")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

const KEY_NAME: &str = "MessageName";

impl HostRequest {
    /// The request as its dictionary.
    pub fn to_dict(&self) -> Dictionary {
        let mut d = Dictionary::new();
        let s = |x: &str| Value::String(x.to_string());
        match self {
            HostRequest::Hello { versions } => {
                d.insert(KEY_NAME.into(), s("Hello"));
                d.insert(
                    "SupportedProtocolVersions".into(),
                    Value::Array(versions.iter().map(|v| Value::Real(*v)).collect()),
                );
            }
            HostRequest::Backup {
                target_identifier,
                source_identifier,
                force_full_backup,
            } => {
                d.insert(KEY_NAME.into(), s("Backup"));
                d.insert("TargetIdentifier".into(), s(target_identifier));
                if let Some(src) = source_identifier {
                    d.insert("SourceIdentifier".into(), s(src));
                }
                // Like libimobiledevice: Options only when forcing, since that is all it carries.
                if *force_full_backup {
                    let mut o = Dictionary::new();
                    o.insert("ForceFullBackup".into(), Value::Boolean(true));
                    d.insert("Options".into(), Value::Dictionary(o));
                }
            }
            HostRequest::ChangePassword {
                target_identifier,
                old_password,
                new_password,
            } => {
                d.insert(KEY_NAME.into(), s("ChangePassword"));
                d.insert("TargetIdentifier".into(), s(target_identifier));
                for (key, pw) in [("OldPassword", old_password), ("NewPassword", new_password)] {
                    if let Some(pw) = pw {
                        // Apple carries the password as a string; bytes that are not UTF-8 are
                        // replaced rather than refused here (Password::expose_str checks earlier).
                        let text = String::from_utf8_lossy(pw.expose()).into_owned();
                        d.insert(key.into(), Value::String(text));
                    }
                }
            }
            HostRequest::Info {
                target_identifier,
                source_identifier,
            }
            | HostRequest::List {
                target_identifier,
                source_identifier,
            } => {
                let name = if matches!(self, HostRequest::Info { .. }) {
                    "Info"
                } else {
                    "List"
                };
                d.insert(KEY_NAME.into(), s(name));
                d.insert("TargetIdentifier".into(), s(target_identifier));
                d.insert(
                    "SourceIdentifier".into(),
                    s(source_identifier.as_deref().unwrap_or(target_identifier)),
                );
            }
            HostRequest::Other(raw) => d = raw.0.clone(),
        }
        d
    }

    /// Parses a request dictionary (the simulator's side).
    pub fn from_dict(d: &Dictionary) -> Result<Self, DlError> {
        let msg = "DLMessageProcessMessage request";
        let missing = |key: &'static str| DlError::MissingKey {
            message: msg.to_string(),
            key,
        };
        let name = d
            .get(KEY_NAME)
            .and_then(Value::as_string)
            .ok_or_else(|| missing(KEY_NAME))?;
        let text = |key: &'static str| -> Result<Option<String>, DlError> {
            match d.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => {
                    dl::check_text_len(msg, s)?;
                    Ok(Some(s.clone()))
                }
                Some(_) => Err(missing(key)),
            }
        };
        let target = || text("TargetIdentifier")?.ok_or_else(|| missing("TargetIdentifier"));
        Ok(match name {
            "Hello" => {
                let arr = d
                    .get("SupportedProtocolVersions")
                    .and_then(Value::as_array)
                    .ok_or_else(|| missing("SupportedProtocolVersions"))?;
                if arr.len() > 16 {
                    return Err(DlError::TooMany {
                        message: msg.to_string(),
                        count: arr.len(),
                        max: 16,
                    });
                }
                HostRequest::Hello {
                    versions: arr.iter().filter_map(crate::plist_frame::as_f64).collect(),
                }
            }
            "Backup" => HostRequest::Backup {
                target_identifier: target()?,
                source_identifier: text("SourceIdentifier")?,
                force_full_backup: d
                    .get("Options")
                    .and_then(Value::as_dictionary)
                    .and_then(|o| o.get("ForceFullBackup"))
                    .and_then(Value::as_boolean)
                    .unwrap_or(false),
            },
            "ChangePassword" => HostRequest::ChangePassword {
                target_identifier: target()?,
                old_password: text("OldPassword")?.map(secret),
                new_password: text("NewPassword")?.map(secret),
            },
            "Info" => HostRequest::Info {
                target_identifier: target()?,
                source_identifier: text("SourceIdentifier")?,
            },
            "List" => HostRequest::List {
                target_identifier: target()?,
                source_identifier: text("SourceIdentifier")?,
            },
            _ => HostRequest::Other(RawRequest(d.clone())),
        })
    }

    /// The request's `MessageName`.
    pub fn name(&self) -> &str {
        match self {
            HostRequest::Hello { .. } => "Hello",
            HostRequest::Backup { .. } => "Backup",
            HostRequest::ChangePassword { .. } => "ChangePassword",
            HostRequest::Info { .. } => "Info",
            HostRequest::List { .. } => "List",
            HostRequest::Other(raw) => raw
                .0
                .get(KEY_NAME)
                .and_then(Value::as_string)
                .unwrap_or("?"),
        }
    }
}

fn secret(mut s: String) -> Password {
    let pw = Password::new(s.as_bytes().to_vec());
    s.zeroize();
    pw
}

/// A message the host sends to the device.
#[derive(Debug, Clone, PartialEq)]
pub enum HostMessage {
    /// `[VersionExchange, DLVersionsOk, major]`.
    VersionsOk { major: u64 },
    /// `[ProcessMessage, {request}]`.
    ProcessMessage(HostRequest),
    /// `[StatusResponse, code, text, payload]`.
    StatusResponse(StatusResponse),
    /// `[Disconnect, ___EmptyParameterString___]`.
    Disconnect,
    /// A `DL…` message this codec does not know.
    Unknown { name: String },
}

impl HostMessage {
    /// The message as a plist.
    pub fn to_value(&self) -> Value {
        match self {
            HostMessage::VersionsOk { major } => message(
                names::VERSION_EXCHANGE,
                [
                    Value::String(names::VERSIONS_OK.into()),
                    Value::Integer((*major).into()),
                ],
            ),
            HostMessage::ProcessMessage(req) => {
                message(names::PROCESS_MESSAGE, [Value::Dictionary(req.to_dict())])
            }
            HostMessage::StatusResponse(st) => message(
                names::STATUS_RESPONSE,
                [
                    Value::Integer(st.code.into()),
                    st.message
                        .as_ref()
                        .map(|m| Value::String(m.clone()))
                        .unwrap_or_else(empty_param),
                    st.payload.clone().unwrap_or_else(empty_param),
                ],
            ),
            HostMessage::Disconnect => message(names::DISCONNECT, [empty_param()]),
            HostMessage::Unknown { name } => message(name, [empty_param()]),
        }
    }

    /// Parses a host message (the simulator's side).
    pub fn decode(value: &Value) -> Result<Self, DlError> {
        let (name, items) = dl::split(value)?;
        let a = Args::new(name, items);
        Ok(match name {
            names::VERSION_EXCHANGE => {
                let ok = a.required(1)?.as_string() == Some(names::VERSIONS_OK);
                if !ok {
                    return Err(DlError::WrongType {
                        message: name.to_string(),
                        index: 1,
                        expected: "the string DLVersionsOk",
                    });
                }
                HostMessage::VersionsOk {
                    major: uint_arg(&a, 2)?,
                }
            }
            names::PROCESS_MESSAGE => {
                HostMessage::ProcessMessage(HostRequest::from_dict(dict_arg(&a, 1)?)?)
            }
            names::STATUS_RESPONSE => HostMessage::StatusResponse(StatusResponse {
                code: a.int(1)?,
                message: a.opt_text(2)?,
                payload: match a.get(3) {
                    None => None,
                    Some(Value::String(s)) if s == EMPTY_PARAMETER => None,
                    Some(v) => Some(v.clone()),
                },
            }),
            names::DISCONNECT => HostMessage::Disconnect,
            other => HostMessage::Unknown {
                name: other.to_string(),
            },
        })
    }

    /// The framed message bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&crate::plist_frame::encode(
            &self.to_value(),
            dl::WIRE_FORMAT,
        ));
    }

    /// Writes the message as one frame. Password-bearing requests have their serialised bytes
    /// and the intermediate plist strings wiped afterwards.
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        let mut value = self.to_value();
        let mut bytes = crate::plist_frame::encode(&value, dl::WIRE_FORMAT);
        let res = w.write_all(&bytes).and_then(|()| w.flush());
        if matches!(
            self,
            HostMessage::ProcessMessage(HostRequest::ChangePassword { .. })
                | HostMessage::ProcessMessage(HostRequest::Other(_))
        ) {
            bytes.zeroize();
            wipe_strings(&mut value);
        }
        res
    }

    /// Reads and decodes one host message.
    pub fn read_from<R: Read + ?Sized>(r: &mut R) -> Result<Self, ReadError> {
        Ok(Self::decode(&dl::read_value(r)?)?)
    }
}

/// Zeroes every string in a plist (used on request copies that held a password).
fn wipe_strings(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(wipe_strings),
        Value::Dictionary(d) => {
            for (_, x) in d.iter_mut() {
                wipe_strings(x);
            }
        }
        _ => {}
    }
}

/// The device's `ProcessMessage` answer: to Hello, and at the end of every operation (§4.8).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceResponse {
    /// `MessageName` ("Response" on real devices).
    pub message_name: Option<String>,
    /// 0 = success.
    pub error_code: i64,
    pub error_description: Option<String>,
    /// Hello only: the chosen protocol version.
    pub protocol_version: Option<f64>,
    /// Info/List results.
    pub content: Option<Value>,
}

impl DeviceResponse {
    /// A plain `{MessageName: Response, ErrorCode}`.
    pub fn new(error_code: i64) -> Self {
        DeviceResponse {
            message_name: Some("Response".into()),
            error_code,
            error_description: None,
            protocol_version: None,
            content: None,
        }
    }

    /// Parses the dictionary; `ErrorCode` is required (a missing one is not taken as success).
    pub fn from_dict(d: &Dictionary) -> Result<Self, DlError> {
        let msg = names::PROCESS_MESSAGE;
        let error_code = d
            .get("ErrorCode")
            .and_then(crate::plist_frame::as_i64)
            .ok_or_else(|| DlError::MissingKey {
                message: msg.to_string(),
                key: "ErrorCode",
            })?;
        let text = |key: &str| -> Result<Option<String>, DlError> {
            match d.get(key).and_then(Value::as_string) {
                Some(s) => {
                    dl::check_text_len(msg, s)?;
                    Ok(Some(s.to_string()))
                }
                None => Ok(None),
            }
        };
        Ok(DeviceResponse {
            message_name: text(KEY_NAME)?,
            error_code,
            error_description: text("ErrorDescription")?.filter(|s| !s.is_empty()),
            protocol_version: d
                .get("ProtocolVersion")
                .and_then(crate::plist_frame::as_f64),
            content: d.get("Content").cloned(),
        })
    }

    /// The dictionary a device sends.
    pub fn to_dict(&self) -> Dictionary {
        let mut d = Dictionary::new();
        if let Some(n) = &self.message_name {
            d.insert(KEY_NAME.into(), Value::String(n.clone()));
        }
        d.insert("ErrorCode".into(), Value::Integer(self.error_code.into()));
        if let Some(s) = &self.error_description {
            d.insert("ErrorDescription".into(), Value::String(s.clone()));
        }
        if let Some(v) = self.protocol_version {
            d.insert("ProtocolVersion".into(), Value::Real(v));
        }
        if let Some(c) = &self.content {
            d.insert("Content".into(), c.clone());
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plist_frame::{self, PlistFormat};

    fn round_trip_device(m: DeviceMessage) {
        for f in [PlistFormat::Binary, PlistFormat::Xml] {
            let bytes = plist_frame::encode(&m.to_value(), f);
            let back = DeviceMessage::read_from(&mut &bytes[..]).unwrap();
            assert_eq!(back, m, "{f:?}");
        }
    }

    #[test]
    fn device_messages_round_trip() {
        round_trip_device(DeviceMessage::VersionExchange {
            major: 300,
            minor: 0,
        });
        round_trip_device(DeviceMessage::DeviceReady);
        round_trip_device(DeviceMessage::ProcessMessage(
            DeviceResponse::new(0).to_dict(),
        ));
        round_trip_device(DeviceMessage::DownloadFiles {
            paths: vec!["U/Manifest.plist".into()],
            progress: Some(1.5),
        });
        round_trip_device(DeviceMessage::UploadFiles {
            progress: Some(50.0),
            total_bytes: Some(1234),
        });
        round_trip_device(DeviceMessage::GetFreeDiskSpace);
        round_trip_device(DeviceMessage::ContentsOfDirectory { path: "U".into() });
        round_trip_device(DeviceMessage::CreateDirectory {
            path: "U/7d".into(),
            progress: Some(5.0),
        });
        round_trip_device(DeviceMessage::CreateDirectory {
            path: "U".into(),
            progress: None,
        });
        let moves = vec![
            ("U/Snapshot/a".into(), "U/a".into()),
            ("b".into(), "c".into()),
        ];
        round_trip_device(DeviceMessage::MoveItems {
            moves: moves.clone(),
            progress: Some(99.0),
        });
        round_trip_device(DeviceMessage::MoveFiles {
            moves,
            progress: Some(99.0),
        });
        round_trip_device(DeviceMessage::RemoveItems {
            paths: vec!["U/Snapshot".into()],
            progress: Some(100.0),
        });
        round_trip_device(DeviceMessage::RemoveFiles {
            paths: vec![],
            progress: Some(0.0),
        });
        round_trip_device(DeviceMessage::CopyItem {
            src: "a".into(),
            dst: "b".into(),
        });
        round_trip_device(DeviceMessage::PurgeDiskSpace);
        round_trip_device(DeviceMessage::Disconnect);
        round_trip_device(DeviceMessage::Unknown {
            name: "DLMessageSomethingNew".into(),
        });
    }

    #[test]
    fn upload_files_has_four_elements() {
        let v = DeviceMessage::UploadFiles {
            progress: None,
            total_bytes: None,
        }
        .to_value();
        assert_eq!(v.as_array().unwrap().len(), 4);
    }

    #[test]
    fn too_many_paths_rejected() {
        let paths: Vec<Value> = (0..=dl::MAX_PATHS_PER_MESSAGE)
            .map(|_| Value::String("a".into()))
            .collect();
        let v = message(names::REMOVE_ITEMS, [Value::Array(paths)]);
        assert!(matches!(
            DeviceMessage::decode(&v),
            Err(DlError::TooMany { .. })
        ));
    }

    #[test]
    fn wrong_types_rejected() {
        let v = message(names::DOWNLOAD_FILES, [Value::String("x".into())]);
        assert!(matches!(
            DeviceMessage::decode(&v),
            Err(DlError::WrongType { index: 1, .. })
        ));
        let v = message(names::VERSION_EXCHANGE, [Value::Integer((-1i64).into())]);
        assert!(DeviceMessage::decode(&v).is_err());
        let v = message(names::PROCESS_MESSAGE, []);
        assert!(matches!(
            DeviceMessage::decode(&v),
            Err(DlError::MissingArgument { index: 1, .. })
        ));
    }

    #[test]
    fn status_response_round_trip_and_negative_code() {
        let mut failures = Dictionary::new();
        failures.insert("U/x".into(), StatusResponse::file_error(-6, "missing"));
        for st in [
            StatusResponse::ok_empty_dict(),
            StatusResponse::ok(Value::Integer(123u64.into())),
            StatusResponse::multi_status(failures),
            StatusResponse {
                code: 0,
                message: None,
                payload: None,
            },
        ] {
            let m = HostMessage::StatusResponse(st);
            let mut bytes = Vec::new();
            m.encode(&mut bytes);
            assert_eq!(HostMessage::read_from(&mut &bytes[..]).unwrap(), m);
        }
        // −13 as libimobiledevice writes it: an unsigned 64-bit value.
        let v = message(
            names::STATUS_RESPONSE,
            [
                Value::Integer(18446744073709551603u64.into()),
                Value::String("Multi status".into()),
                empty_param(),
            ],
        );
        let HostMessage::StatusResponse(st) = HostMessage::decode(&v).unwrap() else {
            panic!("not a status response")
        };
        assert_eq!(st.code, -13);
        assert_eq!(st.payload, None);
    }

    #[test]
    fn host_requests_round_trip() {
        for req in [
            HostRequest::Hello {
                versions: SUPPORTED_PROTOCOL_VERSIONS.to_vec(),
            },
            HostRequest::Backup {
                target_identifier: "U".into(),
                source_identifier: Some("U".into()),
                force_full_backup: true,
            },
            HostRequest::Backup {
                target_identifier: "U".into(),
                source_identifier: None,
                force_full_backup: false,
            },
            HostRequest::ChangePassword {
                target_identifier: "U".into(),
                old_password: None,
                new_password: Some(Password::new("pw")),
            },
            HostRequest::Info {
                target_identifier: "U".into(),
                source_identifier: Some("U".into()),
            },
            HostRequest::List {
                target_identifier: "U".into(),
                source_identifier: Some("U".into()),
            },
        ] {
            let m = HostMessage::ProcessMessage(req);
            let mut out = Vec::new();
            m.write_to(&mut out).unwrap();
            assert_eq!(HostMessage::read_from(&mut &out[..]).unwrap(), m);
        }
        let m = HostMessage::VersionsOk { major: 400 };
        let mut out = Vec::new();
        m.write_to(&mut out).unwrap();
        assert_eq!(HostMessage::read_from(&mut &out[..]).unwrap(), m);
    }

    #[test]
    fn change_password_debug_is_redacted() {
        let req = HostRequest::ChangePassword {
            target_identifier: "U".into(),
            old_password: Some(Password::new("hunter2")),
            new_password: None,
        };
        assert!(!format!("{req:?}").contains("hunter2"));
        let mut d = Dictionary::new();
        d.insert("Password".into(), Value::String("hunter2".into()));
        assert!(!format!("{:?}", HostRequest::Other(RawRequest(d))).contains("hunter2"));
    }

    #[test]
    fn response_requires_error_code() {
        let mut d = Dictionary::new();
        d.insert("MessageName".into(), Value::String("Response".into()));
        assert!(DeviceResponse::from_dict(&d).is_err());
        d.insert("ErrorCode".into(), Value::Integer(105.into()));
        d.insert("ErrorDescription".into(), Value::String("no space".into()));
        let r = DeviceResponse::from_dict(&d).unwrap();
        assert_eq!(r.error_code, 105);
        assert_eq!(r.error_description.as_deref(), Some("no space"));
    }
}
