//! The host's lockdownd client: one connection to port 62078 carrying framed plist requests,
//! pairing (with the trust dialog as events), sessions with TLS, and StartService.

use crate::lockdown::certs::{self, CertError};
use crate::lockdown::pair_record::{HostIdentity, PairRecord, PairRecordError};
use crate::lockdown::protocol::{self, LockdownError, ReplyError, MAX_LOCKDOWN_FRAME};
use crate::lockdown::tls::{self, TlsError, TlsStream};
use crate::plist_frame::{self, FrameError, PlistFormat};
use crate::transport::{BoxStream, DeviceConnector, LOCKDOWN_PORT};
use plist::{Dictionary, Value};
use std::io;
use std::time::{Duration, Instant, SystemTime};

/// The `Label` sent with every request.
pub const DEFAULT_LABEL: &str = "cradle";
/// How long a reply may take. libimobiledevice waits 30 s too; a device that is silent longer
/// is gone.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a lockdown operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device's port 62078 (or a service port) could not be opened.
    #[error("could not open port {port} on the device: {source}")]
    Connect {
        port: u16,
        #[source]
        source: io::Error,
    },
    /// Reading or writing a frame failed (EOF, I/O, oversized or invalid plist).
    #[error("lockdown connection: {0}")]
    Frame(#[from] FrameError),
    /// The device refused a request by name.
    #[error("the device refused {request}: {error}")]
    Device {
        request: String,
        error: LockdownError,
    },
    /// Peer misbehaviour: a reply that does not fit the request.
    #[error("bad reply from the device: {0}")]
    Reply(ReplyError),
    /// Peer misbehaviour: a reply lacks a value or has the wrong type.
    #[error("the device's reply to {request} has no usable {field}")]
    BadField {
        request: &'static str,
        field: &'static str,
    },
    /// The service on port 62078 is not lockdownd.
    #[error("port 62078 answered QueryType with {0:?}, not lockdownd")]
    NotLockdown(String),
    /// The TLS layer failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The pairing certificates could not be made.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The pair record could not be read or stored.
    #[error(transparent)]
    PairRecord(#[from] PairRecordError),
    /// Nobody answered the trust dialog in time.
    #[error("the phone did not confirm \"Trust This Computer\" within {0:?}")]
    TrustTimeout(Duration),
    /// Local misuse: the operation needs an active session.
    #[error("no lockdown session is active")]
    NoSession,
    /// The pair record has no EscrowBag, so the backup service cannot be started.
    #[error("the pair record has no EscrowBag; pair again to get one")]
    NoEscrowBag,
    /// An earlier TLS switch failed and left the connection unusable.
    #[error("the lockdown connection is unusable after a failed TLS switch")]
    Broken,
}

impl Error {
    /// The device's error name, when the device refused the request.
    pub fn device_error(&self) -> Option<&LockdownError> {
        match self {
            Error::Device { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// What happened while pairing, for the display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairEvent {
    /// Pairing started: certificates are being made and sent.
    Started,
    /// The phone shows "Trust This Computer?" and nobody has answered yet.
    WaitingForTrust { attempt: u32 },
    /// The phone is locked: it must be unlocked before it can show the trust dialog.
    PasscodeRequired,
    /// The user tapped "Don't Trust".
    Denied,
    /// The phone accepted the pairing.
    Paired,
}

/// How long to wait for the trust dialog and how often to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairOptions {
    /// Give up after this long without an answer.
    pub trust_timeout: Duration,
    /// Pause between two `Pair` requests while the dialog is open (pymobiledevice3 uses 1 s).
    pub poll_interval: Duration,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            trust_timeout: Duration::from_secs(120),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// A service the device opened for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub port: u16,
    /// Whether the service connection speaks TLS from its first byte.
    pub ssl: bool,
}

/// An active lockdown session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_id: String,
    /// Whether the session runs over TLS.
    pub ssl: bool,
    /// The negotiated TLS version, when `ssl`.
    pub tls_version: Option<rustls::ProtocolVersion>,
}

enum Conn {
    Plain(BoxStream),
    Tls(Box<TlsStream>),
    Broken,
}

struct Session {
    info: SessionInfo,
    record: PairRecord,
}

/// One connection to lockdownd.
pub struct LockdownClient {
    conn: Conn,
    label: String,
    udid: String,
    session: Option<Session>,
}

impl std::fmt::Debug for LockdownClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockdownClient")
            .field("udid", &self.udid)
            .field("session", &self.session.as_ref().map(|s| &s.info))
            .finish_non_exhaustive()
    }
}

fn pem_data(d: &Value) -> Option<Vec<u8>> {
    match d {
        Value::Data(b) => Some(b.clone()),
        Value::String(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// The `Domain` and `Key` fields of `GetValue`, `SetValue` and `RemoveValue`, each left out
/// when `None`.
fn value_fields(domain: Option<&str>, key: Option<&str>) -> Dictionary {
    let mut f = Dictionary::new();
    if let Some(d) = domain {
        f.insert("Domain".into(), Value::String(d.to_string()));
    }
    if let Some(k) = key {
        f.insert("Key".into(), Value::String(k.to_string()));
    }
    f
}

/// The part of a pair record the phone gets (`Pair`, `ValidatePair`): certificates and
/// identifiers, never a private key.
fn public_pair_record(record: &PairRecord) -> Dictionary {
    let mut pr = Dictionary::new();
    pr.insert(
        "DeviceCertificate".into(),
        Value::Data(record.device_cert_pem.clone()),
    );
    pr.insert(
        "HostCertificate".into(),
        Value::Data(record.host_cert_pem.clone()),
    );
    pr.insert(
        "RootCertificate".into(),
        Value::Data(record.root_cert_pem.clone()),
    );
    pr.insert("HostID".into(), Value::String(record.host_id.clone()));
    pr.insert(
        "SystemBUID".into(),
        Value::String(record.system_buid.clone()),
    );
    pr
}

/// The fields of `Pair`, `ValidatePair` and `Unpair`: the (public) pair record and the
/// protocol version.
fn pair_request_fields(pair_record: Dictionary) -> Dictionary {
    let mut f = Dictionary::new();
    f.insert("PairRecord".into(), Value::Dictionary(pair_record));
    f.insert(
        "ProtocolVersion".into(),
        Value::String(protocol::PROTOCOL_VERSION.into()),
    );
    f
}

impl LockdownClient {
    /// Opens port 62078 on the device.
    pub fn connect(conn: &dyn DeviceConnector, label: &str) -> Result<Self, Error> {
        let stream = conn
            .connect(LOCKDOWN_PORT)
            .map_err(|source| Error::Connect {
                port: LOCKDOWN_PORT,
                source,
            })?;
        Ok(Self::from_stream(stream, conn.udid(), label))
    }

    /// Wraps an already open stream to lockdownd.
    pub fn from_stream(stream: BoxStream, udid: &str, label: &str) -> Self {
        // A stream that cannot time out ignores this; failing to set it is not fatal either.
        let _ = stream.set_read_timeout(Some(REPLY_TIMEOUT));
        LockdownClient {
            conn: Conn::Plain(stream),
            label: label.to_string(),
            udid: udid.to_string(),
            session: None,
        }
    }

    /// The device's UDID.
    pub fn udid(&self) -> &str {
        &self.udid
    }

    /// The active session, if any.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.session.as_ref().map(|s| &s.info)
    }

    fn stream(&mut self) -> Result<&mut dyn crate::transport::Duplex, Error> {
        match &mut self.conn {
            Conn::Plain(s) => Ok(s.as_mut()),
            Conn::Tls(s) => Ok(s.as_mut()),
            Conn::Broken => Err(Error::Broken),
        }
    }

    /// Sends one request (`Label` and `Request` are added) and returns the checked reply.
    pub fn request(&mut self, name: &str, fields: Dictionary) -> Result<Dictionary, Error> {
        let mut req = protocol::request(&self.label, name);
        for (k, v) in fields {
            req.insert(k, v);
        }
        let stream = self.stream()?;
        plist_frame::write_frame(stream, &Value::Dictionary(req), PlistFormat::Xml)
            .map_err(FrameError::Io)?;
        let reply = plist_frame::read_frame_max(stream, MAX_LOCKDOWN_FRAME)?;
        protocol::check_reply(name, reply).map_err(|e| match e {
            ReplyError::Device(error) => Error::Device {
                request: name.to_string(),
                error,
            },
            other => Error::Reply(other),
        })
    }

    /// `QueryType`: "com.apple.mobile.lockdown" on a real lockdownd.
    pub fn query_type(&mut self) -> Result<String, Error> {
        let r = self.request("QueryType", Dictionary::new())?;
        r.get("Type")
            .and_then(Value::as_string)
            .map(str::to_string)
            .ok_or(Error::BadField {
                request: "QueryType",
                field: "Type",
            })
    }

    /// `GetValue`: one value, or a whole domain when `key` is `None`.
    pub fn get_value(&mut self, domain: Option<&str>, key: Option<&str>) -> Result<Value, Error> {
        let mut r = self.request("GetValue", value_fields(domain, key))?;
        r.remove("Value").ok_or(Error::BadField {
            request: "GetValue",
            field: "Value",
        })
    }

    /// `SetValue`.
    pub fn set_value(
        &mut self,
        domain: Option<&str>,
        key: &str,
        value: Value,
    ) -> Result<(), Error> {
        let mut f = value_fields(domain, Some(key));
        f.insert("Value".into(), value);
        self.request("SetValue", f).map(|_| ())
    }

    /// `RemoveValue`.
    pub fn remove_value(&mut self, domain: Option<&str>, key: &str) -> Result<(), Error> {
        self.request("RemoveValue", value_fields(domain, Some(key)))
            .map(|_| ())
    }

    /// Pairs with the device: reads its public key and Wi-Fi address, makes the certificates,
    /// and sends `Pair` until the user answers the trust dialog or `opts.trust_timeout` passes.
    /// Returns the complete record (with EscrowBag); the caller stores it.
    pub fn pair(
        &mut self,
        host: &HostIdentity,
        opts: &PairOptions,
        events: &mut dyn FnMut(PairEvent),
    ) -> Result<PairRecord, Error> {
        let deadline = Instant::now() + opts.trust_timeout;
        events(PairEvent::Started);
        let public_key =
            pem_data(&self.get_value(None, Some("DevicePublicKey"))?).ok_or(Error::BadField {
                request: "GetValue",
                field: "DevicePublicKey",
            })?;
        let wifi_mac = match self.get_value(None, Some("WiFiAddress")) {
            Ok(v) => v.as_string().map(str::to_string),
            Err(Error::Device {
                error: LockdownError::MissingValue,
                ..
            }) => None,
            Err(e) => return Err(e),
        };
        let c = certs::generate_pair_certificates(&public_key, SystemTime::now())?;
        let mut record = PairRecord {
            host_id: host.host_id.clone(),
            system_buid: host.system_buid.clone(),
            root_cert_pem: c.root_cert_pem,
            root_key_pem: c.root_key_pem,
            host_cert_pem: c.host_cert_pem,
            host_key_pem: c.host_key_pem,
            device_cert_pem: c.device_cert_pem,
            escrow_bag: None,
            wifi_mac,
        };

        let mut pr = public_pair_record(&record);
        if let Some(mac) = &record.wifi_mac {
            pr.insert("WiFiMACAddress".into(), Value::String(mac.clone()));
        }
        let mut fields = pair_request_fields(pr);
        let mut options = Dictionary::new();
        options.insert("ExtendedPairingErrors".into(), Value::Boolean(true));
        fields.insert("PairingOptions".into(), Value::Dictionary(options));
        if let Some(name) = &host.host_name {
            fields.insert("HostName".into(), Value::String(name.clone()));
        }

        let mut attempt = 0u32;
        loop {
            match self.request("Pair", fields.clone()) {
                Ok(reply) => {
                    record.escrow_bag = reply
                        .get("EscrowBag")
                        .and_then(pem_data)
                        .map(zeroize::Zeroizing::new);
                    events(PairEvent::Paired);
                    return Ok(record);
                }
                Err(e) => match e.device_error() {
                    Some(LockdownError::PairingDialogResponsePending) => {
                        attempt += 1;
                        events(PairEvent::WaitingForTrust { attempt });
                        if Instant::now() + opts.poll_interval > deadline {
                            return Err(Error::TrustTimeout(opts.trust_timeout));
                        }
                        if !opts.poll_interval.is_zero() {
                            std::thread::sleep(opts.poll_interval);
                        }
                    }
                    Some(LockdownError::UserDeniedPairing) => {
                        events(PairEvent::Denied);
                        return Err(e);
                    }
                    Some(LockdownError::PasswordProtected) => {
                        events(PairEvent::PasscodeRequired);
                        return Err(e);
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// `ValidatePair` (only iOS < 7 needs it; kept for completeness).
    pub fn validate_pair(&mut self, record: &PairRecord) -> Result<(), Error> {
        let fields = pair_request_fields(public_pair_record(record));
        self.request("ValidatePair", fields).map(|_| ())
    }

    /// `Unpair`: the device forgets this host.
    pub fn unpair(&mut self, host_id: &str) -> Result<(), Error> {
        let mut pr = Dictionary::new();
        pr.insert("HostID".into(), Value::String(host_id.to_string()));
        self.request("Unpair", pair_request_fields(pr)).map(|_| ())
    }

    /// `StartSession` with the record's HostID and SystemBUID, then TLS when the device asks.
    /// An unknown host gets `Error::Device { error: InvalidHostID, .. }`: pair again.
    pub fn start_session(&mut self, record: &PairRecord) -> Result<SessionInfo, Error> {
        let mut f = Dictionary::new();
        f.insert("HostID".into(), Value::String(record.host_id.clone()));
        f.insert(
            "SystemBUID".into(),
            Value::String(record.system_buid.clone()),
        );
        let r = self.request("StartSession", f)?;
        let session_id = r
            .get("SessionID")
            .and_then(Value::as_string)
            .map(str::to_string)
            .ok_or(Error::BadField {
                request: "StartSession",
                field: "SessionID",
            })?;
        let ssl = r
            .get("EnableSessionSSL")
            .and_then(Value::as_boolean)
            .unwrap_or(false);
        let mut tls_version = None;
        if ssl {
            let config = tls::client_config(&record.host_cert_pem, &record.host_key_pem)?;
            let Conn::Plain(plain) = std::mem::replace(&mut self.conn, Conn::Broken) else {
                return Err(Error::Broken);
            };
            let s = TlsStream::connect(plain, config)?;
            tls_version = s.protocol_version();
            self.conn = Conn::Tls(Box::new(s));
        }
        let info = SessionInfo {
            session_id,
            ssl,
            tls_version,
        };
        self.session = Some(Session {
            info: info.clone(),
            record: record.clone(),
        });
        Ok(info)
    }

    /// `StopSession`, then back to plaintext (close_notify first, as libimobiledevice does).
    pub fn stop_session(&mut self) -> Result<(), Error> {
        let id = self
            .session
            .as_ref()
            .map(|s| s.info.session_id.clone())
            .ok_or(Error::NoSession)?;
        let mut f = Dictionary::new();
        f.insert("SessionID".into(), Value::String(id));
        self.request("StopSession", f)?;
        self.session = None;
        if let Conn::Tls(_) = self.conn {
            let Conn::Tls(s) = std::mem::replace(&mut self.conn, Conn::Broken) else {
                return Err(Error::Broken);
            };
            self.conn = Conn::Plain(s.close_and_unwrap().map_err(FrameError::Io)?);
        }
        Ok(())
    }

    /// `StartService`. With `escrow`, the session's EscrowBag goes along (mobilebackup2 needs it).
    pub fn start_service(&mut self, name: &str, escrow: bool) -> Result<ServiceInfo, Error> {
        let mut f = Dictionary::new();
        f.insert("Service".into(), Value::String(name.to_string()));
        if escrow {
            let bag = self
                .session
                .as_ref()
                .ok_or(Error::NoSession)?
                .record
                .escrow_bag
                .as_ref()
                .ok_or(Error::NoEscrowBag)?;
            f.insert("EscrowBag".into(), Value::Data(bag.to_vec()));
        }
        let r = self.request("StartService", f)?;
        let port = r
            .get("Port")
            .and_then(plist_frame::as_i64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or(Error::BadField {
                request: "StartService",
                field: "Port",
            })?;
        let ssl = r
            .get("EnableServiceSSL")
            .and_then(Value::as_boolean)
            .unwrap_or(false);
        Ok(ServiceInfo {
            name: name.to_string(),
            port,
            ssl,
        })
    }

    /// `Goodbye`, then the connection closes.
    pub fn goodbye(mut self) -> Result<(), Error> {
        self.request("Goodbye", Dictionary::new()).map(|_| ())
    }
}

/// Opens a connection to a started service, with TLS from the first byte when it asks for it.
pub fn open_service(
    conn: &dyn DeviceConnector,
    service: &ServiceInfo,
    record: &PairRecord,
) -> Result<BoxStream, Error> {
    let raw = conn
        .connect(service.port)
        .map_err(|source| Error::Connect {
            port: service.port,
            source,
        })?;
    if !service.ssl {
        return Ok(raw);
    }
    let config = tls::client_config(&record.host_cert_pem, &record.host_key_pem)?;
    Ok(Box::new(TlsStream::connect(raw, config)?))
}

/// Starts `name` through a lockdown connection of its own (session, StartService, StopSession,
/// as libimobiledevice does) and returns the service stream.
pub fn connect_service(
    conn: &dyn DeviceConnector,
    record: &PairRecord,
    name: &str,
    escrow: bool,
) -> Result<BoxStream, Error> {
    let mut client = LockdownClient::connect(conn, DEFAULT_LABEL)?;
    client.start_session(record)?;
    let info = client.start_service(name, escrow)?;
    // The port outlives the session; a failure to stop it cleanly does not matter.
    let _ = client.stop_session();
    open_service(conn, &info, record)
}
