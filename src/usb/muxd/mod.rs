//! The usbmuxd socket protocol: 16-byte little-endian headers followed by an XML plist (or a
//! legacy binary body), the socket address rules of libusbmuxd, and the client and server on top.
//!
//! The codec here is pure; `client` opens one socket per request like libusbmuxd does, and
//! `server` is the usbmuxd facade the simulated iPhone serves to unmodified real clients.

pub mod client;
pub mod server;

pub use client::{MuxdClient, MuxdDevice, MuxdDeviceInfo, MuxdError, MuxdEvent, MuxdEvents};
pub use server::{ListenAddr, MuxdServer, MuxdServerError, MuxdServerHandle, ServedDevice};

use crate::transport::Duplex;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Size of the usbmuxd message header (`length, version, message, tag`, each `u32le`).
pub const HEADER_LEN: usize = 16;

/// Largest message (header included) accepted from a peer. usbmuxd rejects requests over 64 KiB;
/// the biggest legitimate message, a SavePairRecord, is about 10 KiB.
pub const MAX_MESSAGE_LEN: u32 = 64 * 1024;

/// Header `version` of the legacy binary protocol.
pub const VERSION_BINARY: u32 = 0;
/// Header `version` of the plist protocol.
pub const VERSION_PLIST: u32 = 1;

/// Message types (header `message` field).
pub mod message {
    /// Binary RESULT: body `u32le` result code.
    pub const RESULT: u32 = 1;
    /// Binary CONNECT: body `u32le device_id, u16 port (network order), u16 reserved`.
    pub const CONNECT: u32 = 2;
    /// Binary LISTEN: no body.
    pub const LISTEN: u32 = 3;
    /// Binary DEVICE_ADD event (268-byte body).
    pub const DEVICE_ADD: u32 = 4;
    /// Binary DEVICE_REMOVE event: body `u32le device_id`.
    pub const DEVICE_REMOVE: u32 = 5;
    /// Binary DEVICE_PAIRED event: body `u32le device_id`.
    pub const DEVICE_PAIRED: u32 = 6;
    /// A plist message (XML or binary plist body).
    pub const PLIST: u32 = 8;
}

/// usbmuxd result codes (`Number` of a `Result` message, or the binary RESULT body).
pub mod result {
    pub const OK: u64 = 0;
    pub const BADCOMMAND: u64 = 1;
    pub const BADDEV: u64 = 2;
    pub const CONNREFUSED: u64 = 3;
    pub const NOSUCHSERVICE: u64 = 4;
    pub const BADVERSION: u64 = 6;
    /// errno ENOENT, used by the pair-record operations.
    pub const ENOENT: u64 = 2;
    /// errno EINVAL, used by the pair-record operations.
    pub const EINVAL: u64 = 22;

    /// A short name for a result code, for error messages.
    pub fn name(code: u64) -> &'static str {
        match code {
            OK => "OK",
            BADCOMMAND => "BADCOMMAND",
            BADDEV => "BADDEV (or ENOENT)",
            CONNREFUSED => "CONNREFUSED",
            NOSUCHSERVICE => "NOSUCHSERVICE",
            BADVERSION => "BADVERSION",
            EINVAL => "EINVAL",
            _ => "unknown result",
        }
    }
}

/// Size of a binary DEVICE_ADD body: `u32le id, u16le product_id, char serial[256], u16 pad,
/// u32le location`.
pub const DEVICE_RECORD_LEN: usize = 268;

/// The fixed message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Whole message length, header included.
    pub length: u32,
    /// 0 binary, 1 plist.
    pub version: u32,
    /// Message type (see [`message`]).
    pub message: u32,
    /// Request tag, echoed by replies; 0 on events.
    pub tag: u32,
}

impl Header {
    /// Appends the header's 16 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.message.to_le_bytes());
        out.extend_from_slice(&self.tag.to_le_bytes());
    }

    /// Reads a header from its 16 bytes (no validation; see [`Header::check`]).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            length: word(0),
            version: word(4),
            message: word(8),
            tag: word(12),
        }
    }

    /// Checks the announced length against the header size and `max`.
    pub fn check(&self, max: u32) -> Result<usize, FrameError> {
        if (self.length as usize) < HEADER_LEN {
            return Err(FrameError::TooShort { len: self.length });
        }
        if self.length > max {
            return Err(FrameError::TooLong {
                len: self.length,
                max,
            });
        }
        Ok(self.length as usize - HEADER_LEN)
    }
}

/// Errors reading one usbmuxd message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the socket before a new message began.
    #[error("the usbmuxd socket closed")]
    Eof,
    /// The peer announced a length smaller than the header itself.
    #[error("the peer announced a {len}-byte usbmuxd message, shorter than its 16-byte header")]
    TooShort { len: u32 },
    /// The peer announced a length over the cap.
    #[error("the peer announced a {len}-byte usbmuxd message; at most {max} bytes are accepted")]
    TooLong { len: u32, max: u32 },
    /// The socket failed or closed in the middle of a message.
    #[error("i/o error on the usbmuxd socket: {0}")]
    Io(#[from] io::Error),
}

/// Encodes one whole message.
pub fn encode_message(version: u32, message: u32, tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    Header {
        length: (HEADER_LEN + body.len()) as u32,
        version,
        message,
        tag,
    }
    .encode(&mut out);
    out.extend_from_slice(body);
    out
}

/// Encodes a plist message (header version 1, type 8) with an XML body, the only form
/// libusbmuxd parses.
pub fn encode_plist(tag: u32, value: &plist::Value) -> Vec<u8> {
    let mut body = Vec::new();
    // Serialising a `plist::Value` into a Vec cannot fail.
    let res = value.to_writer_xml(&mut body);
    debug_assert!(res.is_ok());
    encode_message(VERSION_PLIST, message::PLIST, tag, &body)
}

/// Reads one message, refusing lengths over `max`.
pub fn read_message<R: Read + ?Sized>(
    r: &mut R,
    max: u32,
) -> Result<(Header, Vec<u8>), FrameError> {
    let mut hb = [0u8; HEADER_LEN];
    // EOF before the first byte is a clean close; EOF inside the header is an error.
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut hb[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Eof),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let header = Header::decode(&hb);
    let body_len = header.check(max)?;
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body)?;
    Ok((header, body))
}

/// Parses a plist body (XML or binary).
pub fn decode_plist(body: &[u8]) -> Option<plist::Dictionary> {
    // Through the bounded decoder: a usbmuxd peer is as untrusted as a phone.
    crate::plist_frame::decode_body(body)
        .ok()?
        .into_dictionary()
}

/// A `Result` plist: `{MessageType: "Result", Number: n}`.
pub fn result_plist(number: u64) -> plist::Value {
    let mut d = plist::Dictionary::new();
    d.insert("MessageType".into(), "Result".into());
    d.insert("Number".into(), plist::Value::Integer(number.into()));
    plist::Value::Dictionary(d)
}

/// The integer a client puts in `PortNumber` for `port`: `htons(port)` read as a host integer
/// on the little-endian machines every client runs on (62078 travels as 32498).
pub fn port_to_wire(port: u16) -> u16 {
    port.swap_bytes()
}

/// The device port a `PortNumber` value names (the inverse of [`port_to_wire`]).
pub fn port_from_wire(value: u16) -> u16 {
    value.swap_bytes()
}

/// Default usbmuxd socket path.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/usbmuxd";

/// Environment variable libusbmuxd and pymobiledevice3 read for the usbmuxd address.
pub const SOCKET_ADDRESS_ENV: &str = "USBMUXD_SOCKET_ADDRESS";

/// Where a usbmuxd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxdAddr {
    /// A UNIX socket path.
    Unix(PathBuf),
    /// A TCP host (name, IPv4 or IPv6 without brackets) and port.
    Tcp { host: String, port: u16 },
}

impl MuxdAddr {
    /// Parses an address the way libusbmuxd reads `USBMUXD_SOCKET_ADDRESS`: `UNIX:<path>` (an empty
    /// path means the default socket), or `<host>:<port>` split at the last `:` with an all-digit
    /// port in 1..=65535 and `[v6]` brackets allowed. A bare absolute path (pymobiledevice3's
    /// spelling) is also taken as a UNIX socket. Anything else is `None`.
    pub fn parse(s: &str) -> Option<MuxdAddr> {
        if let Some(path) = s.strip_prefix("UNIX:") {
            let path = if path.is_empty() {
                DEFAULT_SOCKET_PATH
            } else {
                path
            };
            return Some(MuxdAddr::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Some(MuxdAddr::Unix(PathBuf::from(s)));
        }
        let (host, port) = s.rsplit_once(':')?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let port: u32 = port.parse().ok()?;
        if !(1..=65535).contains(&port) {
            return None;
        }
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']')?,
            None => host,
        };
        if host.is_empty() {
            return None;
        }
        Some(MuxdAddr::Tcp {
            host: host.to_string(),
            port: port as u16,
        })
    }

    /// The address from `USBMUXD_SOCKET_ADDRESS`, else the default UNIX socket. Like libusbmuxd,
    /// an unparsable value falls back to the default.
    pub fn from_env() -> MuxdAddr {
        std::env::var(SOCKET_ADDRESS_ENV)
            .ok()
            .and_then(|v| MuxdAddr::parse(&v))
            .unwrap_or_else(|| MuxdAddr::Unix(PathBuf::from(DEFAULT_SOCKET_PATH)))
    }

    /// Opens a stream socket to this address.
    pub fn connect(&self) -> io::Result<Socket> {
        match self {
            MuxdAddr::Unix(p) => UnixStream::connect(p).map(Socket::Unix),
            MuxdAddr::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port))?;
                // Requests are small and latency-bound.
                let _ = s.set_nodelay(true);
                Ok(Socket::Tcp(s))
            }
        }
    }
}

impl std::fmt::Display for MuxdAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MuxdAddr::Unix(p) => write!(f, "UNIX:{}", p.display()),
            MuxdAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            MuxdAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A connected usbmuxd socket, TCP or UNIX.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Another handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    /// Bounds blocking writes (used for event listeners, so one stuck client cannot stall others).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_write_timeout(t),
            Socket::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            Socket::Unix(s) => s.flush(),
        }
    }
}

impl Duplex for Socket {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(timeout),
            Socket::Unix(s) => s.set_read_timeout(timeout),
        }
    }
    fn shutdown(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_is_little_endian() {
        let msg = encode_message(VERSION_PLIST, message::PLIST, 7, b"abc");
        assert_eq!(&msg[..4], &[19, 0, 0, 0]);
        assert_eq!(&msg[12..16], &[7, 0, 0, 0]);
        let (h, body) = read_message(&mut &msg[..], MAX_MESSAGE_LEN).unwrap();
        assert_eq!(h.tag, 7);
        assert_eq!(h.message, message::PLIST);
        assert_eq!(body, b"abc");
    }

    #[test]
    fn rejects_lengths_outside_bounds() {
        let mut big = Vec::new();
        Header {
            length: MAX_MESSAGE_LEN + 1,
            version: 1,
            message: 8,
            tag: 1,
        }
        .encode(&mut big);
        assert!(matches!(
            read_message(&mut &big[..], MAX_MESSAGE_LEN),
            Err(FrameError::TooLong { .. })
        ));
        let mut small = Vec::new();
        Header {
            length: 15,
            version: 1,
            message: 8,
            tag: 1,
        }
        .encode(&mut small);
        assert!(matches!(
            read_message(&mut &small[..], MAX_MESSAGE_LEN),
            Err(FrameError::TooShort { len: 15 })
        ));
    }

    #[test]
    fn eof_between_messages_is_clean_and_inside_is_not() {
        assert!(matches!(
            read_message(&mut &[][..], MAX_MESSAGE_LEN),
            Err(FrameError::Eof)
        ));
        assert!(matches!(
            read_message(&mut &[1u8, 0, 0][..], MAX_MESSAGE_LEN),
            Err(FrameError::Io(_))
        ));
        let msg = encode_message(1, 8, 1, b"abcdef");
        assert!(matches!(
            read_message(&mut &msg[..msg.len() - 1], MAX_MESSAGE_LEN),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn lockdown_port_travels_byte_swapped() {
        assert_eq!(port_to_wire(62078), 32498);
        assert_eq!(port_from_wire(32498), 62078);
    }

    #[test]
    fn address_parsing_follows_libusbmuxd() {
        assert_eq!(
            MuxdAddr::parse("UNIX:/tmp/mux.sock"),
            Some(MuxdAddr::Unix("/tmp/mux.sock".into()))
        );
        assert_eq!(
            MuxdAddr::parse("UNIX:"),
            Some(MuxdAddr::Unix(DEFAULT_SOCKET_PATH.into()))
        );
        assert_eq!(
            MuxdAddr::parse("/tmp/mux.sock"),
            Some(MuxdAddr::Unix("/tmp/mux.sock".into()))
        );
        assert_eq!(
            MuxdAddr::parse("127.0.0.1:27015"),
            Some(MuxdAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 27015
            })
        );
        assert_eq!(
            MuxdAddr::parse("[::1]:27015"),
            Some(MuxdAddr::Tcp {
                host: "::1".into(),
                port: 27015
            })
        );
        assert_eq!(
            MuxdAddr::parse("localhost:1"),
            Some(MuxdAddr::Tcp {
                host: "localhost".into(),
                port: 1
            })
        );
        for bad in [
            "localhost:0",
            "localhost:65536",
            "localhost:+80",
            "localhost:",
            ":80",
            "tcp://127.0.0.1:x",
            "relative/path",
            "[::1:80",
        ] {
            assert_eq!(MuxdAddr::parse(bad), None, "{bad}");
        }
        assert_eq!(
            MuxdAddr::parse("[::1]:27015").unwrap().to_string(),
            "[::1]:27015"
        );
    }
}
