//! Lockdown requests and replies: the plist dictionaries exchanged on device port 62078 and the
//! error names a device reports, as types. Pure functions over `plist` values; no I/O here.

use plist::{Dictionary, Value};

/// What `QueryType` answers on a real lockdownd.
pub const LOCKDOWN_TYPE: &str = "com.apple.mobile.lockdown";

/// The pairing protocol version both libimobiledevice and pymobiledevice3 send.
pub const PROTOCOL_VERSION: &str = "2";

/// Largest lockdown request or reply accepted, in bytes. Pair requests with three PEM
/// certificates are about 10 KB and a whole-domain GetValue a few KB, so this leaves ample room
/// while keeping a hostile length from costing memory.
pub const MAX_LOCKDOWN_FRAME: u32 = 1024 * 1024;

macro_rules! lockdown_errors {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// An error a lockdownd reports by name (`Error:"<Name>"`). Unknown names are kept in
        /// `Other` so nothing the device says is lost.
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        pub enum LockdownError {
            $( $(#[$doc])* #[error("the device reported {}", $name)] $variant, )*
            /// A name this code does not know.
            #[error("the device reported {0}")]
            Other(String),
        }

        impl LockdownError {
            /// Maps a wire name to its variant.
            pub fn from_name(name: &str) -> Self {
                match name {
                    $( $name => LockdownError::$variant, )*
                    other => LockdownError::Other(other.to_string()),
                }
            }

            /// The wire name of this error.
            pub fn name(&self) -> &str {
                match self {
                    $( LockdownError::$variant => $name, )*
                    LockdownError::Other(s) => s,
                }
            }
        }
    };
}

lockdown_errors! {
    /// The trust dialog is still open on the device; ask again.
    PairingDialogResponsePending => "PairingDialogResponsePending",
    /// The user tapped "Don't Trust".
    UserDeniedPairing => "UserDeniedPairing",
    /// The device is locked with a passcode; it must be unlocked before pairing.
    PasswordProtected => "PasswordProtected",
    /// The device does not know this host (never paired, or unpaired since): pair again.
    InvalidHostID => "InvalidHostID",
    /// The service does not exist or may not be started.
    InvalidService => "InvalidService",
    /// The requested value does not exist.
    MissingValue => "MissingValue",
    /// The request needs a session and none is active.
    SessionInactive => "SessionInactive",
    /// A session is already active on this connection.
    SessionActive => "SessionActive",
    /// The value may not be read.
    GetProhibited => "GetProhibited",
    /// The service may not be started now.
    ServiceProhibited => "ServiceProhibited",
    /// The escrow bag is missing or wrong (the device wants the one from pairing).
    EscrowLocked => "EscrowLocked",
    /// The reply could not be understood.
    InvalidResponse => "InvalidResponse",
    /// A required key is missing from the request.
    MissingKey => "MissingKey",
    /// The value may not be changed.
    ImmutableValue => "ImmutableValue",
    /// The request lacks a HostID.
    MissingHostID => "MissingHostID",
    /// The request lacks a SessionID.
    MissingSessionID => "MissingSessionID",
    /// The SessionID is not the active session's.
    InvalidSessionID => "InvalidSessionID",
    /// The request lacks a Service name.
    MissingService => "MissingService",
    /// Too many services are open.
    ServiceLimit => "ServiceLimit",
    /// The request lacks a PairRecord.
    MissingPairRecord => "MissingPairRecord",
    /// The device could not store the pair record.
    SavePairRecordFailed => "SavePairRecordFailed",
    /// The pair record is malformed or its certificates do not fit this device.
    InvalidPairRecord => "InvalidPairRecord",
    /// Find My iPhone blocks the operation.
    FMiPProtected => "FMiPProtected",
    /// A configuration profile blocks the operation.
    MCProtected => "MCProtected",
    /// Supervised pairing needs a challenge response.
    MCChallengeRequired => "MCChallengeRequired",
    /// Pairing is not allowed over this kind of connection.
    PairingProhibitedOverThisConnection => "PairingProhibitedOverThisConnection",
    /// The connection is not usable for this request.
    InvalidConnection => "InvalidConnection",
    /// The request is unknown or malformed (no `Request` key, not a dictionary, not a plist).
    InvalidRequest => "InvalidRequest",
}

/// Why a reply could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The device refused the request by name.
    #[error(transparent)]
    Device(#[from] LockdownError),
    /// The device answered `Result:"Failure"` without an error name.
    #[error("the device answered {request} with Result \"Failure\"")]
    Failure { request: String },
    /// Peer misbehaviour: the reply is not a dictionary.
    #[error("the device answered {request} with something other than a dictionary")]
    NotADictionary { request: String },
    /// Peer misbehaviour: the reply does not echo the request name.
    #[error("the device answered {sent} with a reply for {got:?}")]
    RequestMismatch { sent: String, got: Option<String> },
}

/// Starts a request dictionary: `Label` and `Request`, as every host sends.
pub fn request(label: &str, name: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("Label".into(), Value::String(label.to_string()));
    d.insert("Request".into(), Value::String(name.to_string()));
    d
}

/// Checks a reply to `request_name`: a named `Error` wins, then the `Request` echo must match,
/// then `Result:"Failure"` is an error. Returns the reply dictionary.
pub fn check_reply(request_name: &str, reply: Value) -> Result<Dictionary, ReplyError> {
    let Value::Dictionary(d) = reply else {
        return Err(ReplyError::NotADictionary {
            request: request_name.to_string(),
        });
    };
    if let Some(err) = d.get("Error") {
        let name = err.as_string().unwrap_or("InvalidResponse");
        return Err(ReplyError::Device(LockdownError::from_name(name)));
    }
    let echoed = d.get("Request").and_then(Value::as_string);
    if echoed != Some(request_name) {
        return Err(ReplyError::RequestMismatch {
            sent: request_name.to_string(),
            got: echoed.map(str::to_string),
        });
    }
    if d.get("Result").and_then(Value::as_string) == Some("Failure") {
        return Err(ReplyError::Failure {
            request: request_name.to_string(),
        });
    }
    Ok(d)
}

/// A request as the device sees it: its name and the whole dictionary.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingRequest {
    pub name: String,
    pub fields: Dictionary,
}

impl IncomingRequest {
    /// Reads a string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_string)
    }
}

/// Parses a request on the device side. A non-dictionary or a missing `Request` is
/// `InvalidRequest`.
pub fn parse_request(v: Value) -> Result<IncomingRequest, LockdownError> {
    let Value::Dictionary(fields) = v else {
        return Err(LockdownError::InvalidRequest);
    };
    let name = fields
        .get("Request")
        .and_then(Value::as_string)
        .ok_or(LockdownError::InvalidRequest)?
        .to_string();
    Ok(IncomingRequest { name, fields })
}

/// A success reply skeleton echoing `request`.
pub fn ok_reply(request: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("Request".into(), Value::String(request.to_string()));
    d
}

/// An error reply: echoes the request name when known, and carries `Error`.
pub fn error_reply(request: Option<&str>, err: &LockdownError) -> Dictionary {
    let mut d = Dictionary::new();
    if let Some(r) = request {
        d.insert("Request".into(), Value::String(r.to_string()));
    }
    d.insert("Error".into(), Value::String(err.name().to_string()));
    d
}

/// Reads a data field that some hosts send as a string (PEM blobs, escrow bags).
pub fn bytes_field(d: &Dictionary, key: &str) -> Option<Vec<u8>> {
    match d.get(key)? {
        Value::Data(b) => Some(b.clone()),
        Value::String(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_round_trip() {
        for name in [
            "PairingDialogResponsePending",
            "UserDeniedPairing",
            "PasswordProtected",
            "InvalidHostID",
            "InvalidService",
            "MissingValue",
            "SessionInactive",
            "EscrowLocked",
        ] {
            let e = LockdownError::from_name(name);
            assert!(!matches!(e, LockdownError::Other(_)), "{name}");
            assert_eq!(e.name(), name);
        }
        assert_eq!(
            LockdownError::from_name("SomethingNew"),
            LockdownError::Other("SomethingNew".into())
        );
    }

    #[test]
    fn reply_must_echo_request() {
        let mut d = ok_reply("GetValue");
        assert!(check_reply("GetValue", Value::Dictionary(d.clone())).is_ok());
        assert!(matches!(
            check_reply("QueryType", Value::Dictionary(d.clone())),
            Err(ReplyError::RequestMismatch { .. })
        ));
        d.remove("Request");
        assert!(matches!(
            check_reply("GetValue", Value::Dictionary(d)),
            Err(ReplyError::RequestMismatch { got: None, .. })
        ));
    }

    #[test]
    fn named_error_becomes_typed() {
        let d = error_reply(Some("Pair"), &LockdownError::UserDeniedPairing);
        assert_eq!(
            check_reply("Pair", Value::Dictionary(d)),
            Err(ReplyError::Device(LockdownError::UserDeniedPairing))
        );
    }

    #[test]
    fn result_failure_is_an_error() {
        let mut d = ok_reply("StopSession");
        d.insert("Result".into(), "Failure".into());
        assert!(matches!(
            check_reply("StopSession", Value::Dictionary(d)),
            Err(ReplyError::Failure { .. })
        ));
    }

    #[test]
    fn request_without_name_is_invalid() {
        let mut d = Dictionary::new();
        d.insert("Label".into(), "x".into());
        assert_eq!(
            parse_request(Value::Dictionary(d)),
            Err(LockdownError::InvalidRequest)
        );
        assert_eq!(
            parse_request(Value::Boolean(true)),
            Err(LockdownError::InvalidRequest)
        );
        let r = parse_request(Value::Dictionary(request("t", "QueryType"))).unwrap();
        assert_eq!(r.name, "QueryType");
        assert_eq!(r.str("Label"), Some("t"));
    }
}
