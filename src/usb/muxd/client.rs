//! A usbmuxd client: device list, BUID, pair records, Listen events and Connect, for desktops
//! where usbmuxd (or the simulator's facade) owns the phone. One socket per request, like libusbmuxd.

use super::{
    decode_plist, encode_plist, port_to_wire, read_message, result, FrameError, MuxdAddr, Socket,
    MAX_MESSAGE_LEN, VERSION_PLIST,
};
use crate::transport::{BoxStream, DeviceConnector, Duplex};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long a request waits for its reply (libusbmuxd waits 5 s; the simulator may be slower
/// under a loaded test machine).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors talking to usbmuxd.
#[derive(Debug, thiserror::Error)]
pub enum MuxdError {
    /// The usbmuxd socket could not be opened.
    #[error("cannot reach usbmuxd at {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    /// The socket failed while sending a request or waiting for its reply.
    #[error("i/o error talking to usbmuxd at {addr}: {source}")]
    Io { addr: String, source: io::Error },
    /// usbmuxd sent a message that breaks the framing rules.
    #[error("usbmuxd at {addr} sent a bad message: {source}")]
    Frame { addr: String, source: FrameError },
    /// usbmuxd sent a well-framed reply that is not what the request calls for.
    #[error("usbmuxd at {addr} sent an unexpected reply to {request}: {detail}")]
    BadReply {
        addr: String,
        request: &'static str,
        detail: String,
    },
    /// usbmuxd answered the request with a non-zero result code.
    #[error("usbmuxd refused {request}: result {code} ({})", result::name(*code))]
    Refused { request: &'static str, code: u64 },
    /// No attached device has this UDID.
    #[error("no device with UDID {0} is attached to usbmuxd")]
    NoSuchDevice(String),
}

impl From<MuxdError> for io::Error {
    fn from(e: MuxdError) -> io::Error {
        let kind = match &e {
            MuxdError::Unreachable { source, .. } | MuxdError::Io { source, .. } => source.kind(),
            MuxdError::Refused { code, .. } if *code == result::CONNREFUSED => {
                io::ErrorKind::ConnectionRefused
            }
            MuxdError::NoSuchDevice(_) => io::ErrorKind::NotFound,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// One device in usbmuxd's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxdDeviceInfo {
    /// usbmuxd's handle for the device (≥ 1).
    pub device_id: u32,
    /// The device's UDID (`SerialNumber`).
    pub udid: String,
    /// USB product id, 0 when absent.
    pub product_id: u16,
    /// USB location, 0 when absent.
    pub location_id: u32,
    /// `"USB"` or `"Network"`.
    pub connection_type: String,
}

/// An event on a Listen socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxdEvent {
    Attached(MuxdDeviceInfo),
    Detached { device_id: u32 },
    Paired { device_id: u32 },
}

/// A client of one usbmuxd.
#[derive(Debug)]
pub struct MuxdClient {
    addr: MuxdAddr,
    tag: AtomicU32,
}

impl MuxdClient {
    /// A client for `addr` (nothing is opened yet).
    pub fn new(addr: MuxdAddr) -> MuxdClient {
        MuxdClient {
            addr,
            tag: AtomicU32::new(1),
        }
    }

    /// A client for the address in `USBMUXD_SOCKET_ADDRESS`, else the default socket.
    pub fn from_env() -> MuxdClient {
        MuxdClient::new(MuxdAddr::from_env())
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &MuxdAddr {
        &self.addr
    }

    fn open(&self) -> Result<Socket, MuxdError> {
        self.addr
            .connect()
            .map_err(|source| MuxdError::Unreachable {
                addr: self.addr.to_string(),
                source,
            })
    }

    fn io_err(&self, source: io::Error) -> MuxdError {
        MuxdError::Io {
            addr: self.addr.to_string(),
            source,
        }
    }

    fn bad(&self, request: &'static str, detail: impl Into<String>) -> MuxdError {
        MuxdError::BadReply {
            addr: self.addr.to_string(),
            request,
            detail: detail.into(),
        }
    }

    /// Sends one plist request on `sock` and reads its reply dictionary.
    fn exchange(
        &self,
        sock: &mut Socket,
        request: &'static str,
        mut fields: plist::Dictionary,
    ) -> Result<plist::Dictionary, MuxdError> {
        let tag = self.tag.fetch_add(1, Ordering::Relaxed);
        fields.insert("MessageType".into(), request.into());
        fields.insert(
            "ClientVersionString".into(),
            concat!("cradle ", env!("CARGO_PKG_VERSION")).into(),
        );
        fields.insert("ProgName".into(), "cradle".into());
        fields.insert(
            "kLibUSBMuxVersion".into(),
            plist::Value::Integer(3u64.into()),
        );
        let msg = encode_plist(tag, &plist::Value::Dictionary(fields));
        sock.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| self.io_err(e))?;
        sock.write_all(&msg).map_err(|e| self.io_err(e))?;
        loop {
            let (header, body) = read_message(sock, MAX_MESSAGE_LEN).map_err(|e| match e {
                FrameError::Io(source) => self.io_err(source),
                FrameError::Eof => self.io_err(io::ErrorKind::UnexpectedEof.into()),
                other => MuxdError::Frame {
                    addr: self.addr.to_string(),
                    source: other,
                },
            })?;
            if header.tag == 0 && tag != 0 {
                // An event slipped in (only possible on a Listen socket); not our reply.
                continue;
            }
            if header.tag != tag {
                return Err(self.bad(
                    request,
                    format!("reply tag {} for request tag {tag}", header.tag),
                ));
            }
            if header.version != VERSION_PLIST || header.message != super::message::PLIST {
                return Err(self.bad(
                    request,
                    format!(
                        "a version {} message of type {} instead of a plist",
                        header.version, header.message
                    ),
                ));
            }
            return decode_plist(&body).ok_or_else(|| self.bad(request, "not a plist dictionary"));
        }
    }

    /// Opens a socket, sends one request and returns its reply.
    fn request(
        &self,
        request: &'static str,
        fields: plist::Dictionary,
    ) -> Result<plist::Dictionary, MuxdError> {
        let mut sock = self.open()?;
        self.exchange(&mut sock, request, fields)
    }

    /// The `Number` of a `Result` reply, if the reply is one.
    fn result_number(reply: &plist::Dictionary) -> Option<u64> {
        if reply.get("MessageType").and_then(|v| v.as_string()) != Some("Result") {
            return None;
        }
        reply
            .get("Number")
            .and_then(crate::plist_frame::as_i64)
            .map(|n| n as u64)
    }

    fn expect_ok(&self, request: &'static str, reply: &plist::Dictionary) -> Result<(), MuxdError> {
        match Self::result_number(reply) {
            Some(0) => Ok(()),
            Some(code) => Err(MuxdError::Refused { request, code }),
            None => Err(self.bad(request, "no Result message")),
        }
    }

    /// The attached devices.
    pub fn list_devices(&self) -> Result<Vec<MuxdDeviceInfo>, MuxdError> {
        let reply = self.request("ListDevices", plist::Dictionary::new())?;
        let Some(list) = reply.get("DeviceList").and_then(|v| v.as_array()) else {
            if let Some(code) = Self::result_number(&reply) {
                return Err(MuxdError::Refused {
                    request: "ListDevices",
                    code,
                });
            }
            return Err(self.bad("ListDevices", "no DeviceList"));
        };
        let mut out = Vec::new();
        for item in list {
            match item.as_dictionary().and_then(parse_device_record) {
                Some(d) => out.push(d),
                None => {
                    return Err(self.bad(
                        "ListDevices",
                        "a DeviceList entry lacks DeviceID or SerialNumber",
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The device with this UDID, if attached.
    pub fn find_device(&self, udid: &str) -> Result<Option<MuxdDeviceInfo>, MuxdError> {
        Ok(self.list_devices()?.into_iter().find(|d| d.udid == udid))
    }

    /// usbmuxd's host identifier (SystemBUID), used by lockdown StartSession.
    pub fn read_buid(&self) -> Result<String, MuxdError> {
        let reply = self.request("ReadBUID", plist::Dictionary::new())?;
        match reply.get("BUID").and_then(|v| v.as_string()) {
            Some(b) => Ok(b.to_string()),
            None => match Self::result_number(&reply) {
                Some(code) => Err(MuxdError::Refused {
                    request: "ReadBUID",
                    code,
                }),
                None => Err(self.bad("ReadBUID", "no BUID")),
            },
        }
    }

    /// The stored pair record of `udid` (a plist, as bytes), or `None` when there is none.
    pub fn read_pair_record(&self, udid: &str) -> Result<Option<Vec<u8>>, MuxdError> {
        let mut f = plist::Dictionary::new();
        f.insert("PairRecordID".into(), udid.into());
        let reply = self.request("ReadPairRecord", f)?;
        if let Some(data) = reply.get("PairRecordData").and_then(|v| v.as_data()) {
            return Ok(Some(data.to_vec()));
        }
        match Self::result_number(&reply) {
            Some(result::ENOENT) => Ok(None),
            Some(code) => Err(MuxdError::Refused {
                request: "ReadPairRecord",
                code,
            }),
            None => Err(self.bad("ReadPairRecord", "no PairRecordData")),
        }
    }

    /// Stores the pair record of `udid` (plist bytes, kept unchanged). `device_id` lets usbmuxd
    /// tell its listeners that the device is now paired.
    pub fn save_pair_record(
        &self,
        udid: &str,
        device_id: Option<u32>,
        record: &[u8],
    ) -> Result<(), MuxdError> {
        let mut f = plist::Dictionary::new();
        f.insert("PairRecordID".into(), udid.into());
        f.insert("PairRecordData".into(), plist::Value::Data(record.to_vec()));
        if let Some(id) = device_id {
            f.insert(
                "DeviceID".into(),
                plist::Value::Integer(u64::from(id).into()),
            );
        }
        let reply = self.request("SavePairRecord", f)?;
        self.expect_ok("SavePairRecord", &reply)
    }

    /// Deletes the pair record of `udid`. A missing record is `Refused { code: 2 }`.
    pub fn delete_pair_record(&self, udid: &str) -> Result<(), MuxdError> {
        let mut f = plist::Dictionary::new();
        f.insert("PairRecordID".into(), udid.into());
        let reply = self.request("DeletePairRecord", f)?;
        self.expect_ok("DeletePairRecord", &reply)
    }

    /// Opens a raw stream to `port` on the device `device_id`.
    pub fn connect(&self, device_id: u32, port: u16) -> Result<BoxStream, MuxdError> {
        let mut sock = self.open()?;
        let mut f = plist::Dictionary::new();
        f.insert(
            "DeviceID".into(),
            plist::Value::Integer(u64::from(device_id).into()),
        );
        f.insert(
            "PortNumber".into(),
            plist::Value::Integer(u64::from(port_to_wire(port)).into()),
        );
        let reply = self.exchange(&mut sock, "Connect", f)?;
        self.expect_ok("Connect", &reply)?;
        // From here on the socket is the device stream; the reply timeout must not leak into it.
        sock.set_read_timeout(None).map_err(|e| self.io_err(e))?;
        Ok(Box::new(sock))
    }

    /// Subscribes to attach/detach/paired events. The current devices arrive first as
    /// `Attached` events.
    pub fn listen(&self) -> Result<MuxdEvents, MuxdError> {
        let mut sock = self.open()?;
        let reply = self.exchange(&mut sock, "Listen", plist::Dictionary::new())?;
        self.expect_ok("Listen", &reply)?;
        sock.set_read_timeout(None).map_err(|e| self.io_err(e))?;
        Ok(MuxdEvents {
            sock,
            addr: self.addr.to_string(),
        })
    }

    /// A [`DeviceConnector`] for the attached device `udid`.
    pub fn device(self, udid: &str) -> Result<MuxdDevice, MuxdError> {
        let info = self
            .find_device(udid)?
            .ok_or_else(|| MuxdError::NoSuchDevice(udid.to_string()))?;
        Ok(MuxdDevice { client: self, info })
    }
}

fn parse_device_record(item: &plist::Dictionary) -> Option<MuxdDeviceInfo> {
    // pymobiledevice3 reads DeviceID at the top of each entry, libusbmuxd inside Properties;
    // accept either.
    let props = item.get("Properties").and_then(|v| v.as_dictionary());
    let get = |k: &str| props.and_then(|p| p.get(k)).or_else(|| item.get(k));
    let device_id = get("DeviceID")?.as_unsigned_integer()?;
    let device_id = u32::try_from(device_id).ok().filter(|&d| d > 0)?;
    let udid = get("SerialNumber")?.as_string()?.to_string();
    let product_id = get("ProductID")
        .and_then(|v| v.as_unsigned_integer())
        .and_then(|v| u16::try_from(v).ok())
        .unwrap_or(0);
    let location_id = get("LocationID")
        .and_then(|v| v.as_unsigned_integer())
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    let connection_type = get("ConnectionType")
        .and_then(|v| v.as_string())
        .unwrap_or("USB")
        .to_string();
    Some(MuxdDeviceInfo {
        device_id,
        udid,
        product_id,
        location_id,
        connection_type,
    })
}

/// The event stream of a Listen socket.
pub struct MuxdEvents {
    sock: Socket,
    addr: String,
}

impl MuxdEvents {
    /// Bounds how long [`MuxdEvents::next_event`] blocks (`None` = forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    /// Waits for the next event. Messages that are not device events are skipped.
    pub fn next_event(&mut self) -> Result<MuxdEvent, MuxdError> {
        loop {
            let (header, body) =
                read_message(&mut self.sock, MAX_MESSAGE_LEN).map_err(|e| match e {
                    FrameError::Io(source) => MuxdError::Io {
                        addr: self.addr.clone(),
                        source,
                    },
                    FrameError::Eof => MuxdError::Io {
                        addr: self.addr.clone(),
                        source: io::ErrorKind::UnexpectedEof.into(),
                    },
                    other => MuxdError::Frame {
                        addr: self.addr.clone(),
                        source: other,
                    },
                })?;
            if header.message != super::message::PLIST {
                continue;
            }
            let Some(d) = decode_plist(&body) else {
                continue;
            };
            let id = || {
                d.get("DeviceID")
                    .and_then(|v| v.as_unsigned_integer())
                    .and_then(|v| u32::try_from(v).ok())
            };
            match d.get("MessageType").and_then(|v| v.as_string()) {
                Some("Attached") => {
                    if let Some(info) = parse_device_record(&d) {
                        return Ok(MuxdEvent::Attached(info));
                    }
                }
                Some("Detached") => {
                    if let Some(device_id) = id() {
                        return Ok(MuxdEvent::Detached { device_id });
                    }
                }
                Some("Paired") => {
                    if let Some(device_id) = id() {
                        return Ok(MuxdEvent::Paired { device_id });
                    }
                }
                _ => {}
            }
        }
    }
}

/// One device reached through usbmuxd.
#[derive(Debug)]
pub struct MuxdDevice {
    client: MuxdClient,
    info: MuxdDeviceInfo,
}

impl MuxdDevice {
    /// usbmuxd's record of the device.
    pub fn info(&self) -> &MuxdDeviceInfo {
        &self.info
    }

    /// The client used to reach it (for pair records and the BUID).
    pub fn client(&self) -> &MuxdClient {
        &self.client
    }
}

impl DeviceConnector for MuxdDevice {
    fn udid(&self) -> &str {
        &self.info.udid
    }

    fn connect(&self, port: u16) -> io::Result<BoxStream> {
        Ok(self.client.connect(self.info.device_id, port)?)
    }
}

// `Socket` is the stream type handed out by `connect`.
const _: fn() = || {
    fn is_duplex<T: Duplex>() {}
    is_duplex::<Socket>();
};
