//! The simulated lockdownd on port 62078: values, pairing with a scripted trust dialog, sessions
//! over TLS (back to plaintext after StopSession) and StartService onto the device's ports.

use crate::lockdown::certs;
use crate::lockdown::protocol::{
    self, bytes_field, error_reply, ok_reply, IncomingRequest, LockdownError, LOCKDOWN_TYPE,
    MAX_LOCKDOWN_FRAME,
};
use crate::lockdown::tls::TlsStream;
use crate::plist_frame::{self, FrameError, PlistFormat};
use crate::sim::device::{
    DeviceEvent, PairedHost, ServiceHandler, SimDevice, TrustPolicy, ESCROW_BAG_LEN,
    MOBILEBACKUP2_SERVICE,
};
use crate::transport::{BoxStream, Duplex};
use plist::{Dictionary, Value};
use std::sync::{Arc, Weak};
use zeroize::Zeroizing;

/// Unparsable frames tolerated on one connection before lockdownd hangs up.
pub const MAX_BAD_FRAMES: u32 = 16;

/// Keys of the root domain a host may not change.
const IMMUTABLE_KEYS: &[&str] = &[
    "UniqueDeviceID",
    "DevicePublicKey",
    "SerialNumber",
    "ProductType",
    "ProductVersion",
    "BuildVersion",
    "UniqueChipID",
];

/// What the connection does after a reply is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep reading requests.
    Continue,
    /// Switch to TLS (server side) towards this host.
    StartTls { host_id: String },
    /// Leave TLS: consume the host's close_notify, carry on in plaintext.
    StopTls,
    /// Hang up.
    Close,
}

/// Per-connection state.
#[derive(Debug, Default)]
pub struct Connection {
    session: Option<ActiveSession>,
}

#[derive(Debug, Clone)]
struct ActiveSession {
    id: String,
    host_id: String,
}

/// The lockdownd handler for `SimDevice`'s port table.
pub fn handler(device: Weak<SimDevice>) -> ServiceHandler {
    Arc::new(move |stream| {
        if let Some(d) = device.upgrade() {
            serve(&d, stream);
        }
    })
}

enum Stream {
    Plain(BoxStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    fn io(&mut self) -> &mut dyn Duplex {
        match self {
            Stream::Plain(s) => s.as_mut(),
            Stream::Tls(s) => s.as_mut(),
        }
    }
}

/// Serves one lockdown connection until the host closes it, says Goodbye, or misbehaves.
pub fn serve(device: &SimDevice, stream: BoxStream) {
    let mut conn = Connection::default();
    let mut stream = Stream::Plain(stream);
    let mut bad_frames = 0u32;
    loop {
        let reply;
        let mut action = Action::Continue;
        match plist_frame::read_frame_max(stream.io(), MAX_LOCKDOWN_FRAME) {
            Ok(v) => match protocol::parse_request(v) {
                Ok(req) => {
                    device.log(DeviceEvent::Request {
                        name: req.name.clone(),
                    });
                    (reply, action) = handle(device, &mut conn, &req);
                }
                Err(e) => {
                    bad_frames += 1;
                    device.log(DeviceEvent::BadFrame {
                        detail: "a request without a Request key".into(),
                    });
                    reply = error_reply(None, &e);
                }
            },
            Err(FrameError::Eof) => break,
            Err(FrameError::BadPlist(detail)) => {
                bad_frames += 1;
                device.log(DeviceEvent::BadFrame { detail });
                reply = error_reply(None, &LockdownError::InvalidRequest);
            }
            Err(e) => {
                // Oversized length or I/O failure: the stream cannot be resynchronised.
                device.log(DeviceEvent::BadFrame {
                    detail: e.to_string(),
                });
                break;
            }
        }
        if plist_frame::write_frame(stream.io(), &Value::Dictionary(reply), PlistFormat::Xml)
            .is_err()
        {
            break;
        }
        if bad_frames > MAX_BAD_FRAMES {
            break;
        }
        match action {
            Action::Continue => {}
            Action::Close => break,
            Action::StartTls { host_id } => {
                let Stream::Plain(plain) = stream else {
                    break;
                };
                let cfg = match device.tls_server_config(&host_id) {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        device.log(DeviceEvent::TlsFailed {
                            detail: e.to_string(),
                        });
                        return;
                    }
                };
                match TlsStream::accept_or_return(plain, cfg) {
                    Ok(s) => {
                        device.log(DeviceEvent::SessionStarted {
                            host_id,
                            tls: s.protocol_version().map(|v| format!("{v:?}")),
                        });
                        stream = Stream::Tls(Box::new(s));
                    }
                    Err((e, sock)) => {
                        // Logged before the host sees the connection close.
                        device.log(DeviceEvent::TlsFailed {
                            detail: e.to_string(),
                        });
                        drop(sock);
                        return;
                    }
                }
            }
            Action::StopTls => {
                if let Stream::Tls(s) = stream {
                    match s.finish_and_unwrap() {
                        Ok(plain) => stream = Stream::Plain(plain),
                        Err(_) => return,
                    }
                }
            }
        }
    }
    // Dropping a TLS stream sends close_notify, as OpenSSL hosts expect before EOF.
}

/// Answers one request. Pure apart from the device's shared state.
pub fn handle(
    device: &SimDevice,
    conn: &mut Connection,
    req: &IncomingRequest,
) -> (Dictionary, Action) {
    let name = req.name.as_str();
    let result = match name {
        "QueryType" => {
            let mut r = ok_reply(name);
            r.insert("Type".into(), Value::String(LOCKDOWN_TYPE.into()));
            Ok((r, Action::Continue))
        }
        "GetValue" => get_value(device, req).map(|r| (r, Action::Continue)),
        "SetValue" => set_value(device, req).map(|r| (r, Action::Continue)),
        "RemoveValue" => remove_value(device, req).map(|r| (r, Action::Continue)),
        "Pair" => pair(device, req).map(|r| (r, Action::Continue)),
        "ValidatePair" => validate_pair(device, req).map(|r| (r, Action::Continue)),
        "Unpair" => unpair(device, req).map(|r| (r, Action::Continue)),
        "StartSession" => start_session(device, conn, req),
        "StopSession" => stop_session(device, conn, req),
        "StartService" => start_service(device, conn, req).map(|r| (r, Action::Continue)),
        "Goodbye" => {
            let mut r = ok_reply(name);
            r.insert("Result".into(), "Success".into());
            Ok((r, Action::Close))
        }
        _ => Err(LockdownError::InvalidRequest),
    };
    match result {
        Ok(r) => r,
        Err(e) => (error_reply(Some(name), &e), Action::Continue),
    }
}

fn domain_dict(device: &SimDevice, domain: &str) -> Option<Dictionary> {
    device.with_state(|s| {
        let mut d = s.domains.get(domain)?.clone();
        if domain == "com.apple.mobile.backup" {
            d.insert("WillEncrypt".into(), Value::Boolean(s.will_encrypt()));
        }
        Some(d)
    })
}

fn get_value(device: &SimDevice, req: &IncomingRequest) -> Result<Dictionary, LockdownError> {
    let domain = req.str("Domain");
    let key = req.str("Key");
    let dict = domain_dict(device, domain.unwrap_or("")).ok_or(LockdownError::MissingValue)?;
    let value = match key {
        None => Value::Dictionary(dict),
        Some(k) => dict.get(k).cloned().ok_or(LockdownError::MissingValue)?,
    };
    let mut r = ok_reply("GetValue");
    if let Some(d) = domain {
        r.insert("Domain".into(), Value::String(d.into()));
    }
    if let Some(k) = key {
        r.insert("Key".into(), Value::String(k.into()));
    }
    r.insert("Value".into(), value);
    Ok(r)
}

fn set_value(device: &SimDevice, req: &IncomingRequest) -> Result<Dictionary, LockdownError> {
    let domain = req.str("Domain").unwrap_or("").to_string();
    let key = req.str("Key").ok_or(LockdownError::MissingKey)?.to_string();
    let value = req
        .fields
        .get("Value")
        .cloned()
        .ok_or(LockdownError::MissingValue)?;
    if domain.is_empty() && IMMUTABLE_KEYS.contains(&key.as_str()) {
        return Err(LockdownError::ImmutableValue);
    }
    device.with_state(|s| {
        s.domains.entry(domain).or_default().insert(key, value);
    });
    Ok(ok_reply("SetValue"))
}

fn remove_value(device: &SimDevice, req: &IncomingRequest) -> Result<Dictionary, LockdownError> {
    let domain = req.str("Domain").unwrap_or("").to_string();
    let key = req.str("Key").ok_or(LockdownError::MissingKey)?.to_string();
    if domain.is_empty() && IMMUTABLE_KEYS.contains(&key.as_str()) {
        return Err(LockdownError::ImmutableValue);
    }
    device.with_state(|s| {
        if let Some(d) = s.domains.get_mut(&domain) {
            d.remove(&key);
        }
    });
    Ok(ok_reply("RemoveValue"))
}

fn pair_record_dict(req: &IncomingRequest) -> Result<&Dictionary, LockdownError> {
    req.fields
        .get("PairRecord")
        .and_then(Value::as_dictionary)
        .ok_or(LockdownError::MissingPairRecord)
}

fn host_id_of(req: &IncomingRequest) -> Result<String, LockdownError> {
    let from_record = req
        .fields
        .get("PairRecord")
        .and_then(Value::as_dictionary)
        .and_then(|d| d.get("HostID"))
        .and_then(Value::as_string);
    from_record
        .or_else(|| req.str("HostID"))
        .map(str::to_string)
        .ok_or(LockdownError::MissingHostID)
}

fn pair(device: &SimDevice, req: &IncomingRequest) -> Result<Dictionary, LockdownError> {
    let pr = pair_record_dict(req)?;
    let host_id = pr
        .get("HostID")
        .and_then(Value::as_string)
        .ok_or(LockdownError::MissingHostID)?
        .to_string();
    let root_cert_pem =
        bytes_field(pr, "RootCertificate").ok_or(LockdownError::InvalidPairRecord)?;
    let host_cert_pem =
        bytes_field(pr, "HostCertificate").ok_or(LockdownError::InvalidPairRecord)?;
    let device_cert_pem =
        bytes_field(pr, "DeviceCertificate").ok_or(LockdownError::InvalidPairRecord)?;
    // The device certificate must certify this device's key, or TLS could never work.
    if certs::cert_public_key(&device_cert_pem) != Some(device.key().public_key()) {
        return Err(LockdownError::InvalidPairRecord);
    }

    // The simulated user and the trust dialog.
    let verdict = device.with_state(|s| match s.trust {
        TrustPolicy::Auto => Ok(()),
        TrustPolicy::Deny => Err(LockdownError::UserDeniedPairing),
        TrustPolicy::AfterPolls(n) => {
            let polls = s.pair_polls.entry(host_id.clone()).or_insert(0);
            if *polls < n {
                *polls += 1;
                Err(LockdownError::PairingDialogResponsePending)
            } else {
                s.pair_polls.remove(&host_id);
                Ok(())
            }
        }
        TrustPolicy::LockedOnce => {
            if s.unlocked {
                Ok(())
            } else {
                s.unlocked = true;
                Err(LockdownError::PasswordProtected)
            }
        }
    });
    if let Err(e) = verdict {
        let host_id = host_id.clone();
        device.log(match e {
            LockdownError::PairingDialogResponsePending => DeviceEvent::PairPending { host_id },
            LockdownError::PasswordProtected => DeviceEvent::PairLocked { host_id },
            _ => DeviceEvent::PairDenied { host_id },
        });
        return Err(e);
    }

    let system_buid = pr
        .get("SystemBUID")
        .and_then(Value::as_string)
        .map(str::to_string);
    let host_name = req.str("HostName").map(str::to_string);
    let escrow_bag = device.with_state(|s| {
        // One escrow bag per host, kept across re-pairing.
        let bag = s
            .paired_hosts
            .get(&host_id)
            .map(|h| h.escrow_bag.clone())
            .unwrap_or_else(|| {
                let mut b = Zeroizing::new(vec![0u8; ESCROW_BAG_LEN]);
                rand::Rng::fill(&mut rand::rng(), &mut b[..]);
                b
            });
        s.paired_hosts.insert(
            host_id.clone(),
            PairedHost {
                host_id: host_id.clone(),
                system_buid,
                host_name,
                root_cert_pem,
                host_cert_pem,
                device_cert_pem,
                escrow_bag: bag.clone(),
            },
        );
        bag
    });
    device.log(DeviceEvent::Paired { host_id });
    let mut r = ok_reply("Pair");
    r.insert("EscrowBag".into(), Value::Data(escrow_bag.to_vec()));
    Ok(r)
}

fn validate_pair(device: &SimDevice, req: &IncomingRequest) -> Result<Dictionary, LockdownError> {
    let host_id = host_id_of(req)?;
    if device.is_paired(&host_id) {
        Ok(ok_reply("ValidatePair"))
    } else {
        Err(LockdownError::InvalidHostID)
    }
}

fn unpair(device: &SimDevice, req: &IncomingRequest) -> Result<Dictionary, LockdownError> {
    let host_id = host_id_of(req)?;
    let removed = device.with_state(|s| s.paired_hosts.remove(&host_id).is_some());
    if !removed {
        return Err(LockdownError::InvalidHostID);
    }
    device.log(DeviceEvent::Unpaired { host_id });
    Ok(ok_reply("Unpair"))
}

fn start_session(
    device: &SimDevice,
    conn: &mut Connection,
    req: &IncomingRequest,
) -> Result<(Dictionary, Action), LockdownError> {
    if conn.session.is_some() {
        return Err(LockdownError::SessionActive);
    }
    let host_id = req
        .str("HostID")
        .ok_or(LockdownError::MissingHostID)?
        .to_string();
    if !device.is_paired(&host_id) {
        return Err(LockdownError::InvalidHostID);
    }
    let id = uuid::Uuid::new_v4().to_string().to_uppercase();
    conn.session = Some(ActiveSession {
        id: id.clone(),
        host_id: host_id.clone(),
    });
    let ssl = device.config().session_ssl;
    let mut r = ok_reply("StartSession");
    r.insert("SessionID".into(), Value::String(id));
    r.insert("EnableSessionSSL".into(), Value::Boolean(ssl));
    if ssl {
        Ok((r, Action::StartTls { host_id }))
    } else {
        device.log(DeviceEvent::SessionStarted { host_id, tls: None });
        Ok((r, Action::Continue))
    }
}

fn stop_session(
    device: &SimDevice,
    conn: &mut Connection,
    req: &IncomingRequest,
) -> Result<(Dictionary, Action), LockdownError> {
    let session = conn
        .session
        .as_ref()
        .ok_or(LockdownError::SessionInactive)?;
    let id = req
        .str("SessionID")
        .ok_or(LockdownError::MissingSessionID)?;
    if id != session.id {
        return Err(LockdownError::InvalidSessionID);
    }
    let host_id = session.host_id.clone();
    conn.session = None;
    device.log(DeviceEvent::SessionStopped { host_id });
    let mut r = ok_reply("StopSession");
    r.insert("Result".into(), "Success".into());
    let action = if device.config().session_ssl {
        Action::StopTls
    } else {
        Action::Continue
    };
    Ok((r, action))
}

fn start_service(
    device: &SimDevice,
    conn: &mut Connection,
    req: &IncomingRequest,
) -> Result<Dictionary, LockdownError> {
    let session = conn
        .session
        .as_ref()
        .ok_or(LockdownError::SessionInactive)?;
    let name = req.str("Service").ok_or(LockdownError::MissingService)?;
    let service = device.service(name).ok_or(LockdownError::InvalidService)?;
    if name == MOBILEBACKUP2_SERVICE {
        let sent = bytes_field(&req.fields, "EscrowBag");
        let ours = device.escrow_bag(&session.host_id);
        match (sent, ours) {
            (Some(a), Some(b)) if a[..] == b[..] => {}
            _ => return Err(LockdownError::EscrowLocked),
        }
    }
    let ssl = service.ssl;
    let port = device
        .open_service_port(name, service, &session.host_id)
        .map_err(|_| LockdownError::ServiceProhibited)?;
    device.log(DeviceEvent::ServiceStarted {
        name: name.to_string(),
        port,
        ssl,
    });
    let mut r = ok_reply("StartService");
    r.insert("Service".into(), Value::String(name.to_string()));
    r.insert("Port".into(), Value::Integer(u64::from(port).into()));
    r.insert("EnableServiceSSL".into(), Value::Boolean(ssl));
    Ok(r)
}
