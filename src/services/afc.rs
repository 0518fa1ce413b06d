//! AFC (Apple File Conduit): the packet codec shared by both sides, the host client, and the iTunes
//! sync lock built on it (`/com.apple.itunes.lock_sync` plus the sync notifications).
//!
//! Wire format (all little-endian): a 40-byte header `"CFA6LPAA", u64 entire_length,
//! u64 this_length, u64 packet_num, u64 operation`, then `this_length − 40` bytes of header data,
//! then `entire_length − this_length` bytes of payload. Requests carry their arguments in the
//! header data (Write puts the bytes in the payload); a reply echoes the request's packet number.

use super::notification_proxy::{
    NpError, SYNC_DID_FINISH, SYNC_DID_START, SYNC_LOCK_REQUEST, SYNC_WILL_START,
};
use crate::transport::BoxStream;
use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

/// The magic every AFC packet starts with.
pub const AFC_MAGIC: [u8; 8] = *b"CFA6LPAA";
/// Length of the fixed packet header.
pub const AFC_HEADER_LEN: usize = 40;
/// Largest `entire_length` accepted from a peer: 8 MiB of data plus the header. Hosts read in
/// chunks of at most 1 MiB (pymobiledevice3) and write in chunks the host chooses; this client
/// never asks for more than [`MAX_READ_CHUNK`].
pub const MAX_AFC_PACKET_LEN: u64 = 8 * 1024 * 1024 + AFC_HEADER_LEN as u64;
/// Longest path accepted in a request (bytes, without the NUL).
pub const MAX_AFC_PATH_LEN: usize = 4096;
/// Bytes this client asks for per Read request.
pub const MAX_READ_CHUNK: u64 = 1024 * 1024;
/// Read timeout set on the connection: a device answers every AFC request within seconds.
pub const AFC_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most key/value pairs accepted in a GetFileInfo reply (a real one has about eight).
pub const MAX_FILE_INFO_PAIRS: usize = 64;
/// Most entries accepted in a ReadDirectory reply.
pub const MAX_DIR_ENTRIES: usize = 100_000;
/// The file the iTunes sync lock is taken on.
pub const SYNC_LOCK_PATH: &str = "/com.apple.itunes.lock_sync";

/// Where hosts look for the iTunes files copied into Info.plist (`iTunes Files`).
pub const ITUNES_CONTROL_DIR: &str = "/iTunes_Control/iTunes";
/// The files of [`ITUNES_CONTROL_DIR`] both real hosts read (each stat'ed, read when present).
pub const ITUNES_FILES: [&str; 11] = [
    "ApertureAlbumPrefs",
    "IC-Info.sidb",
    "IC-Info.sidv",
    "PhotosFolderAlbums",
    "PhotosFolderName",
    "PhotosFolderPrefs",
    "VoiceMemos.plist",
    "iPhotoAlbumPrefs",
    "iTunesApplicationIDs",
    "iTunesPrefs",
    "iTunesPrefs.plist",
];
/// The file copied into Info.plist as `iBooks Data 2`.
pub const IBOOKS_DATA2_PATH: &str = "/Books/iBooksData2.plist";

/// AFC operation codes (the `operation` header field).
pub mod op {
    /// Reply: `u64` status code.
    pub const STATUS: u64 = 0x01;
    /// Reply: data.
    pub const DATA: u64 = 0x02;
    /// Request: list a directory (path).
    pub const READ_DIR: u64 = 0x03;
    /// Request: remove a file or an empty directory (path).
    pub const REMOVE_PATH: u64 = 0x08;
    /// Request: create a directory and its parents (path).
    pub const MAKE_DIR: u64 = 0x09;
    /// Request: stat (path).
    pub const GET_FILE_INFO: u64 = 0x0A;
    /// Request: open (`u64 mode`, path).
    pub const FILE_OPEN: u64 = 0x0D;
    /// Reply to FILE_OPEN: `u64` handle.
    pub const FILE_OPEN_RES: u64 = 0x0E;
    /// Request: read (`u64 handle, u64 length`).
    pub const READ: u64 = 0x0F;
    /// Request: write (`u64 handle` in the header data, bytes in the payload).
    pub const WRITE: u64 = 0x10;
    /// Request: close (`u64 handle`).
    pub const FILE_CLOSE: u64 = 0x14;
    /// Request: flock (`u64 handle, u64 operation`).
    pub const FILE_LOCK: u64 = 0x1B;
}

/// An AFC status code (the payload of a STATUS reply).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AfcStatus(pub u64);

impl AfcStatus {
    pub const SUCCESS: Self = Self(0);
    pub const UNKNOWN_ERROR: Self = Self(1);
    pub const OP_HEADER_INVALID: Self = Self(2);
    pub const NO_RESOURCES: Self = Self(3);
    pub const READ_ERROR: Self = Self(4);
    pub const WRITE_ERROR: Self = Self(5);
    pub const UNKNOWN_PACKET_TYPE: Self = Self(6);
    pub const INVALID_ARG: Self = Self(7);
    pub const OBJECT_NOT_FOUND: Self = Self(8);
    pub const OBJECT_IS_DIR: Self = Self(9);
    pub const PERM_DENIED: Self = Self(10);
    pub const OP_NOT_SUPPORTED: Self = Self(15);
    pub const OBJECT_EXISTS: Self = Self(16);
    pub const OBJECT_BUSY: Self = Self(17);
    pub const NO_SPACE_LEFT: Self = Self(18);
    pub const OP_WOULD_BLOCK: Self = Self(19);
    pub const IO_ERROR: Self = Self(20);
    pub const INTERNAL_ERROR: Self = Self(23);
    pub const DIR_NOT_EMPTY: Self = Self(33);

    /// The libimobiledevice/pymobiledevice3 name of the code, when it has one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "SUCCESS",
            1 => "UNKNOWN_ERROR",
            2 => "OP_HEADER_INVALID",
            3 => "NO_RESOURCES",
            4 => "READ_ERROR",
            5 => "WRITE_ERROR",
            6 => "UNKNOWN_PACKET_TYPE",
            7 => "INVALID_ARG",
            8 => "OBJECT_NOT_FOUND",
            9 => "OBJECT_IS_DIR",
            10 => "PERM_DENIED",
            11 => "SERVICE_NOT_CONNECTED",
            12 => "OP_TIMEOUT",
            13 => "TOO_MUCH_DATA",
            14 => "END_OF_DATA",
            15 => "OP_NOT_SUPPORTED",
            16 => "OBJECT_EXISTS",
            17 => "OBJECT_BUSY",
            18 => "NO_SPACE_LEFT",
            19 => "OP_WOULD_BLOCK",
            20 => "IO_ERROR",
            21 => "OP_INTERRUPTED",
            22 => "OP_IN_PROGRESS",
            23 => "INTERNAL_ERROR",
            30 => "MUX_ERROR",
            31 => "NO_MEM",
            32 => "NOT_ENOUGH_DATA",
            33 => "DIR_NOT_EMPTY",
            _ => return None,
        })
    }
}

impl fmt::Debug for AfcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for AfcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{} ({n})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// `fopen` modes as AFC numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// `r`: read only; the file must exist.
    ReadOnly = 1,
    /// `r+`: read and write, created when missing (the sync lock uses this).
    ReadWrite = 2,
    /// `w`: write only, created or truncated.
    WriteOnly = 3,
    /// `w+`: read and write, created or truncated.
    WriteRead = 4,
    /// `a`: append, created when missing.
    Append = 5,
    /// `a+`: read and append, created when missing.
    ReadAppend = 6,
}

impl OpenMode {
    /// The mode for a wire value.
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            1 => Self::ReadOnly,
            2 => Self::ReadWrite,
            3 => Self::WriteOnly,
            4 => Self::WriteRead,
            5 => Self::Append,
            6 => Self::ReadAppend,
            _ => return None,
        })
    }
}

/// `flock` operations as both hosts send them (always with LOCK_NB = 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOp {
    /// LOCK_SH | LOCK_NB.
    Shared = 5,
    /// LOCK_EX | LOCK_NB.
    Exclusive = 6,
    /// LOCK_UN | LOCK_NB.
    Unlock = 12,
}

impl LockOp {
    /// Reads flock bits: UN wins over EX, EX over SH; NB is implied (a device never blocks).
    pub fn from_u64(v: u64) -> Option<Self> {
        if v & 8 != 0 {
            Some(Self::Unlock)
        } else if v & 2 != 0 {
            Some(Self::Exclusive)
        } else if v & 1 != 0 {
            Some(Self::Shared)
        } else {
            None
        }
    }
}

/// An open file on the device (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileHandle(pub u64);

/// Why bytes are not a valid AFC packet, request or reply. Always the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AfcCodecError {
    /// Fewer bytes than the packet needs; `needed` is the total length it announces so far.
    #[error("incomplete AFC packet: {needed} bytes needed")]
    Incomplete { needed: usize },
    /// The packet does not start with `CFA6LPAA`.
    #[error("not an AFC packet (bad magic)")]
    BadMagic,
    /// `this_length` is shorter than the fixed header.
    #[error("AFC this_length {this_length} is shorter than the 40-byte header")]
    ThisLengthTooShort { this_length: u64 },
    /// `entire_length` is shorter than `this_length`.
    #[error("AFC entire_length {entire_length} is shorter than this_length {this_length}")]
    EntireShorterThanThis {
        entire_length: u64,
        this_length: u64,
    },
    /// `entire_length` is over the cap.
    #[error("AFC packet of {entire_length} bytes; at most {max} are accepted")]
    TooLong { entire_length: u64, max: u64 },
    /// The operation code is not one this side understands.
    #[error("unknown AFC operation {0:#x}")]
    UnknownOperation(u64),
    /// A request or reply body is shorter than its fixed fields.
    #[error("AFC operation {op:#x}: body of {len} bytes is too short")]
    ShortBody { op: u64, len: usize },
    /// A path is not NUL-terminated, not UTF-8, or too long.
    #[error("AFC operation {op:#x}: bad path ({why})")]
    BadPath { op: u64, why: &'static str },
    /// A numeric argument is out of range (open mode, lock operation).
    #[error("AFC operation {op:#x}: invalid argument {value}")]
    BadArgument { op: u64, value: u64 },
    /// A GetFileInfo reply is not the expected NUL-separated key/value list.
    #[error("malformed AFC file info: {0}")]
    BadFileInfo(&'static str),
}

/// The fixed 40-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfcHeader {
    pub entire_length: u64,
    pub this_length: u64,
    pub packet_num: u64,
    pub operation: u64,
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

impl AfcHeader {
    /// Reads the header fields after checking only the magic, so that a side can still echo the
    /// packet number when it refuses the lengths.
    pub fn decode_unchecked(buf: &[u8]) -> Result<Self, AfcCodecError> {
        let head = buf.get(..AFC_HEADER_LEN).ok_or(AfcCodecError::Incomplete {
            needed: AFC_HEADER_LEN,
        })?;
        if head.get(..8) != Some(&AFC_MAGIC[..]) {
            return Err(AfcCodecError::BadMagic);
        }
        let f = |at| le_u64(head, at).unwrap_or_default();
        Ok(Self {
            entire_length: f(8),
            this_length: f(16),
            packet_num: f(24),
            operation: f(32),
        })
    }

    /// Checks `this_length ≥ 40`, `entire_length ≥ this_length` and `entire_length ≤ max`.
    pub fn validate(&self, max: u64) -> Result<(), AfcCodecError> {
        if self.this_length < AFC_HEADER_LEN as u64 {
            return Err(AfcCodecError::ThisLengthTooShort {
                this_length: self.this_length,
            });
        }
        if self.entire_length < self.this_length {
            return Err(AfcCodecError::EntireShorterThanThis {
                entire_length: self.entire_length,
                this_length: self.this_length,
            });
        }
        if self.entire_length > max {
            return Err(AfcCodecError::TooLong {
                entire_length: self.entire_length,
                max,
            });
        }
        Ok(())
    }

    /// Reads and validates a header against the cap `max`.
    pub fn decode(buf: &[u8], max: u64) -> Result<Self, AfcCodecError> {
        let h = Self::decode_unchecked(buf)?;
        h.validate(max)?;
        Ok(h)
    }

    /// Appends the 40 header bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&AFC_MAGIC);
        for v in [
            self.entire_length,
            self.this_length,
            self.packet_num,
            self.operation,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Bytes of header data after the fixed header. Only meaningful after [`Self::validate`].
    pub fn header_data_len(&self) -> u64 {
        self.this_length.saturating_sub(AFC_HEADER_LEN as u64)
    }

    /// Bytes of payload after the header data. Only meaningful after [`Self::validate`].
    pub fn payload_len(&self) -> u64 {
        self.entire_length.saturating_sub(self.this_length)
    }
}

/// One whole AFC packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfcPacket {
    pub packet_num: u64,
    pub operation: u64,
    /// Bytes counted in `this_length`.
    pub header_data: Vec<u8>,
    /// Bytes after them, up to `entire_length`.
    pub payload: Vec<u8>,
}

impl AfcPacket {
    /// Appends the packet's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let this_length = (AFC_HEADER_LEN + self.header_data.len()) as u64;
        AfcHeader {
            entire_length: this_length + self.payload.len() as u64,
            this_length,
            packet_num: self.packet_num,
            operation: self.operation,
        }
        .encode(out);
        out.extend_from_slice(&self.header_data);
        out.extend_from_slice(&self.payload);
    }

    /// Parses the packet at the start of `buf`; returns it and the bytes it used.
    pub fn decode(buf: &[u8], max: u64) -> Result<(Self, usize), AfcCodecError> {
        let h = AfcHeader::decode(buf, max)?;
        // Both lengths are ≤ max, which fits in usize on every supported target.
        let this = usize::try_from(h.this_length).map_err(|_| AfcCodecError::TooLong {
            entire_length: h.entire_length,
            max,
        })?;
        let entire = usize::try_from(h.entire_length).map_err(|_| AfcCodecError::TooLong {
            entire_length: h.entire_length,
            max,
        })?;
        let (Some(header_data), Some(payload)) =
            (buf.get(AFC_HEADER_LEN..this), buf.get(this..entire))
        else {
            return Err(AfcCodecError::Incomplete { needed: entire });
        };
        Ok((
            Self {
                packet_num: h.packet_num,
                operation: h.operation,
                header_data: header_data.to_vec(),
                payload: payload.to_vec(),
            },
            entire,
        ))
    }

    /// Header data followed by payload: where the arguments are does not depend on how a peer
    /// split them (pymobiledevice3 and libimobiledevice split some requests differently).
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.header_data.len() + self.payload.len());
        b.extend_from_slice(&self.header_data);
        b.extend_from_slice(&self.payload);
        b
    }
}

/// Why a packet could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum AfcReadError {
    /// The connection closed before a packet started.
    #[error("the AFC connection closed")]
    Eof,
    /// The peer sent an invalid header. `packet_num` is set when the magic was right, so that a
    /// reply can still echo it.
    #[error("malformed AFC packet: {error}")]
    Malformed {
        packet_num: Option<u64>,
        error: AfcCodecError,
    },
    /// I/O error (including EOF inside a packet, or a read timeout).
    #[error("i/o error on the AFC connection: {0}")]
    Io(#[from] io::Error),
}

/// Reads one packet, refusing an `entire_length` over `max` before allocating.
pub fn read_packet<R: Read + ?Sized>(r: &mut R, max: u64) -> Result<AfcPacket, AfcReadError> {
    let mut head = [0u8; AFC_HEADER_LEN];
    let mut got = 0;
    while got < AFC_HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Err(AfcReadError::Eof),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let h = AfcHeader::decode_unchecked(&head).map_err(|error| AfcReadError::Malformed {
        packet_num: None,
        error,
    })?;
    h.validate(max).map_err(|error| AfcReadError::Malformed {
        packet_num: Some(h.packet_num),
        error,
    })?;
    // Validated: both lengths ≤ max.
    let mut header_data = vec![0u8; h.header_data_len() as usize];
    r.read_exact(&mut header_data)?;
    let mut payload = vec![0u8; h.payload_len() as usize];
    r.read_exact(&mut payload)?;
    Ok(AfcPacket {
        packet_num: h.packet_num,
        operation: h.operation,
        header_data,
        payload,
    })
}

/// Writes one packet.
pub fn write_packet<W: Write + ?Sized>(w: &mut W, p: &AfcPacket) -> io::Result<()> {
    let mut out = Vec::with_capacity(AFC_HEADER_LEN + p.header_data.len() + p.payload.len());
    p.encode(&mut out);
    w.write_all(&out)?;
    w.flush()
}

/// A request, as the host sends it and the device reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfcRequest {
    ReadDirectory { path: String },
    RemovePath { path: String },
    MakeDir { path: String },
    GetFileInfo { path: String },
    FileOpen { mode: OpenMode, path: String },
    Read { handle: FileHandle, len: u64 },
    Write { handle: FileHandle, data: Vec<u8> },
    Close { handle: FileHandle },
    Lock { handle: FileHandle, op: LockOp },
}

fn encode_path(out: &mut Vec<u8>, path: &str) {
    out.extend_from_slice(path.as_bytes());
    out.push(0);
}

fn decode_path(op: u64, b: &[u8]) -> Result<String, AfcCodecError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or(AfcCodecError::BadPath {
            op,
            why: "no terminating NUL",
        })?;
    if end > MAX_AFC_PATH_LEN {
        return Err(AfcCodecError::BadPath {
            op,
            why: "too long",
        });
    }
    let s = b.get(..end).unwrap_or_default();
    String::from_utf8(s.to_vec()).map_err(|_| AfcCodecError::BadPath {
        op,
        why: "not UTF-8",
    })
}

fn need_u64(op: u64, b: &[u8], at: usize) -> Result<u64, AfcCodecError> {
    le_u64(b, at).ok_or(AfcCodecError::ShortBody { op, len: b.len() })
}

impl AfcRequest {
    /// The request's operation code.
    pub fn operation(&self) -> u64 {
        match self {
            Self::ReadDirectory { .. } => op::READ_DIR,
            Self::RemovePath { .. } => op::REMOVE_PATH,
            Self::MakeDir { .. } => op::MAKE_DIR,
            Self::GetFileInfo { .. } => op::GET_FILE_INFO,
            Self::FileOpen { .. } => op::FILE_OPEN,
            Self::Read { .. } => op::READ,
            Self::Write { .. } => op::WRITE,
            Self::Close { .. } => op::FILE_CLOSE,
            Self::Lock { .. } => op::FILE_LOCK,
        }
    }

    /// The request as a packet: arguments in the header data, written bytes in the payload
    /// (the libimobiledevice layout).
    pub fn to_packet(&self, packet_num: u64) -> AfcPacket {
        let mut hd = Vec::new();
        let mut payload = Vec::new();
        match self {
            Self::ReadDirectory { path }
            | Self::RemovePath { path }
            | Self::MakeDir { path }
            | Self::GetFileInfo { path } => encode_path(&mut hd, path),
            Self::FileOpen { mode, path } => {
                hd.extend_from_slice(&(*mode as u64).to_le_bytes());
                encode_path(&mut hd, path);
            }
            Self::Read { handle, len } => {
                hd.extend_from_slice(&handle.0.to_le_bytes());
                hd.extend_from_slice(&len.to_le_bytes());
            }
            Self::Write { handle, data } => {
                hd.extend_from_slice(&handle.0.to_le_bytes());
                payload.extend_from_slice(data);
            }
            Self::Close { handle } => hd.extend_from_slice(&handle.0.to_le_bytes()),
            Self::Lock { handle, op } => {
                hd.extend_from_slice(&handle.0.to_le_bytes());
                hd.extend_from_slice(&(*op as u64).to_le_bytes());
            }
        }
        AfcPacket {
            packet_num,
            operation: self.operation(),
            header_data: hd,
            payload,
        }
    }

    /// Parses a request from its operation and body (header data followed by payload).
    pub fn parse(operation: u64, body: &[u8]) -> Result<Self, AfcCodecError> {
        let o = operation;
        Ok(match o {
            op::READ_DIR => Self::ReadDirectory {
                path: decode_path(o, body)?,
            },
            op::REMOVE_PATH => Self::RemovePath {
                path: decode_path(o, body)?,
            },
            op::MAKE_DIR => Self::MakeDir {
                path: decode_path(o, body)?,
            },
            op::GET_FILE_INFO => Self::GetFileInfo {
                path: decode_path(o, body)?,
            },
            op::FILE_OPEN => {
                let m = need_u64(o, body, 0)?;
                let mode =
                    OpenMode::from_u64(m).ok_or(AfcCodecError::BadArgument { op: o, value: m })?;
                Self::FileOpen {
                    mode,
                    path: decode_path(o, body.get(8..).unwrap_or_default())?,
                }
            }
            op::READ => Self::Read {
                handle: FileHandle(need_u64(o, body, 0)?),
                len: need_u64(o, body, 8)?,
            },
            op::WRITE => Self::Write {
                handle: FileHandle(need_u64(o, body, 0)?),
                data: body.get(8..).unwrap_or_default().to_vec(),
            },
            op::FILE_CLOSE => Self::Close {
                handle: FileHandle(need_u64(o, body, 0)?),
            },
            op::FILE_LOCK => {
                let v = need_u64(o, body, 8)?;
                Self::Lock {
                    handle: FileHandle(need_u64(o, body, 0)?),
                    op: LockOp::from_u64(v)
                        .ok_or(AfcCodecError::BadArgument { op: o, value: v })?,
                }
            }
            other => return Err(AfcCodecError::UnknownOperation(other)),
        })
    }

    /// Parses a request packet.
    pub fn from_packet(p: &AfcPacket) -> Result<Self, AfcCodecError> {
        Self::parse(p.operation, &p.body())
    }
}

/// A reply, as the device sends it and the host reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfcReply {
    Status(AfcStatus),
    Data(Vec<u8>),
    FileOpened(FileHandle),
}

impl AfcReply {
    /// The reply as a packet, laid out as a real device does: STATUS and FILE_OPEN_RES carry their
    /// 8 bytes in the header data (`this_length = entire_length = 48`), DATA carries its bytes in
    /// the payload (`this_length = 40`).
    pub fn to_packet(&self, packet_num: u64) -> AfcPacket {
        let (operation, header_data, payload) = match self {
            Self::Status(s) => (op::STATUS, s.0.to_le_bytes().to_vec(), Vec::new()),
            Self::FileOpened(h) => (op::FILE_OPEN_RES, h.0.to_le_bytes().to_vec(), Vec::new()),
            Self::Data(d) => (op::DATA, Vec::new(), d.clone()),
        };
        AfcPacket {
            packet_num,
            operation,
            header_data,
            payload,
        }
    }

    /// Parses a reply packet (whatever way the peer split header data and payload).
    pub fn from_packet(p: &AfcPacket) -> Result<Self, AfcCodecError> {
        let body = p.body();
        Ok(match p.operation {
            op::STATUS => Self::Status(AfcStatus(need_u64(op::STATUS, &body, 0)?)),
            op::FILE_OPEN_RES => {
                Self::FileOpened(FileHandle(need_u64(op::FILE_OPEN_RES, &body, 0)?))
            }
            op::DATA => Self::Data(body),
            other => return Err(AfcCodecError::UnknownOperation(other)),
        })
    }
}

/// What kind of object a path names (`st_ifmt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    /// Another `S_IF*` value, kept as sent.
    Other(String),
}

impl FileKind {
    fn as_str(&self) -> &str {
        match self {
            Self::Regular => "S_IFREG",
            Self::Directory => "S_IFDIR",
            Self::Symlink => "S_IFLNK",
            Self::Other(s) => s,
        }
    }
}

/// The result of GetFileInfo. Times are nanoseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub size: u64,
    pub blocks: u64,
    pub nlink: u64,
    pub kind: FileKind,
    pub mtime_ns: u64,
    pub birthtime_ns: u64,
    /// `LinkTarget`, sent for symbolic links.
    pub link_target: Option<String>,
}

impl FileInfo {
    /// Appends the NUL-separated `key NUL value NUL …` list a device sends as DATA: the six keys
    /// pymobiledevice3 parses unconditionally, in a real device's order.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut kv = |k: &str, v: &str| {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        };
        kv("st_size", &self.size.to_string());
        kv("st_blocks", &self.blocks.to_string());
        kv("st_nlink", &self.nlink.to_string());
        kv("st_ifmt", self.kind.as_str());
        kv("st_mtime", &self.mtime_ns.to_string());
        kv("st_birthtime", &self.birthtime_ns.to_string());
        if let Some(t) = &self.link_target {
            kv("LinkTarget", t);
        }
    }

    /// Parses a GetFileInfo DATA body. `st_size` and `st_ifmt` are required; the other numbers
    /// default to 0 (older devices omit `st_birthtime`).
    pub fn decode(b: &[u8]) -> Result<Self, AfcCodecError> {
        let s = std::str::from_utf8(b).map_err(|_| AfcCodecError::BadFileInfo("not UTF-8"))?;
        // Every item ends with NUL, so the text after the last one must be empty.
        let mut items: Vec<&str> = s.split('\0').collect();
        if items.pop() != Some("") {
            return Err(AfcCodecError::BadFileInfo("not NUL-terminated"));
        }
        if !items.len().is_multiple_of(2) {
            return Err(AfcCodecError::BadFileInfo("a key without a value"));
        }
        if items.len() / 2 > MAX_FILE_INFO_PAIRS {
            return Err(AfcCodecError::BadFileInfo("too many entries"));
        }
        let mut info = FileInfo {
            size: 0,
            blocks: 0,
            nlink: 0,
            kind: FileKind::Other(String::new()),
            mtime_ns: 0,
            birthtime_ns: 0,
            link_target: None,
        };
        let (mut have_size, mut have_kind) = (false, false);
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| AfcCodecError::BadFileInfo("a number field is not a number"))
        };
        for pair in items.chunks_exact(2) {
            let (k, v) = (pair[0], pair[1]);
            match k {
                "st_size" => {
                    info.size = num(v)?;
                    have_size = true;
                }
                "st_blocks" => info.blocks = num(v)?,
                "st_nlink" => info.nlink = num(v)?,
                "st_mtime" => info.mtime_ns = num(v)?,
                "st_birthtime" => info.birthtime_ns = num(v)?,
                "st_ifmt" => {
                    info.kind = match v {
                        "S_IFREG" => FileKind::Regular,
                        "S_IFDIR" => FileKind::Directory,
                        "S_IFLNK" => FileKind::Symlink,
                        o => FileKind::Other(o.to_string()),
                    };
                    have_kind = true;
                }
                "LinkTarget" => info.link_target = Some(v.to_string()),
                _ => {}
            }
        }
        if !(have_size && have_kind) {
            return Err(AfcCodecError::BadFileInfo("st_size or st_ifmt missing"));
        }
        Ok(info)
    }
}

/// Encodes a ReadDirectory DATA body: each name followed by NUL.
pub fn encode_dir_listing(names: &[String], out: &mut Vec<u8>) {
    for n in names {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
    }
}

/// Parses a ReadDirectory DATA body, dropping `.` and `..`.
pub fn decode_dir_listing(b: &[u8]) -> Result<Vec<String>, AfcCodecError> {
    let mut names = Vec::new();
    for item in b.split(|&c| c == 0) {
        if item.is_empty() || item == b"." || item == b".." {
            continue;
        }
        if names.len() >= MAX_DIR_ENTRIES {
            return Err(AfcCodecError::BadFileInfo("too many directory entries"));
        }
        let name = std::str::from_utf8(item)
            .map_err(|_| AfcCodecError::BadFileInfo("a directory entry is not UTF-8"))?;
        names.push(name.to_string());
    }
    Ok(names)
}

// ------------------------------------------------------------------------------------------
// Host client
// ------------------------------------------------------------------------------------------

/// Errors of the host AFC client.
#[derive(Debug, thiserror::Error)]
pub enum AfcError {
    /// The device refused the operation.
    #[error("AFC {what} {path:?}: the device answered status {status}")]
    Status {
        what: &'static str,
        path: String,
        status: AfcStatus,
    },
    /// The device sent something that is not a valid reply.
    #[error("AFC {what} {path:?}: bad reply from the device: {error}")]
    Protocol {
        what: &'static str,
        path: String,
        error: AfcCodecError,
    },
    /// The reply's packet number is not the request's.
    #[error("AFC reply numbered {got}, expected {expected}")]
    PacketNumberMismatch { expected: u64, got: u64 },
    /// The reply is of a kind that does not answer this request.
    #[error("AFC {what} {path:?}: unexpected reply {reply}")]
    UnexpectedReply {
        what: &'static str,
        path: String,
        reply: &'static str,
    },
    /// A file is larger than the caller allows.
    #[error("AFC file {path:?} is {size} bytes; at most {max} are read")]
    TooLarge { path: String, size: u64, max: u64 },
    /// The path names a directory or something else that cannot be read as a file.
    #[error("AFC path {path:?} is not a regular file")]
    NotAFile { path: String },
    /// The path cannot be sent (contains NUL or is too long). A local fault.
    #[error("AFC path {path:?} cannot be sent: {why}")]
    InvalidPath { path: String, why: &'static str },
    /// The connection closed.
    #[error("the AFC connection closed")]
    Closed,
    /// I/O error on the connection.
    #[error("i/o error on the AFC connection: {0}")]
    Io(#[from] io::Error),
}

impl AfcError {
    /// The status code, when the device refused the operation.
    pub fn status(&self) -> Option<AfcStatus> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The host side of one AFC connection. Requests are answered in order, one at a time.
pub struct AfcClient {
    stream: BoxStream,
    next_packet: u64,
}

impl AfcClient {
    /// A client over a started `com.apple.afc` connection. Sets [`AFC_READ_TIMEOUT`] on it.
    pub fn new(stream: BoxStream) -> Self {
        if let Err(e) = stream.set_read_timeout(Some(AFC_READ_TIMEOUT)) {
            tracing::debug!(error = %e, "afc: no read timeout on this connection");
        }
        Self {
            stream,
            next_packet: 0,
        }
    }

    /// Sends one request and reads its reply, turning a non-zero status into [`AfcError::Status`].
    fn call(
        &mut self,
        req: &AfcRequest,
        what: &'static str,
        path: &str,
    ) -> Result<AfcReply, AfcError> {
        let num = self.next_packet;
        self.next_packet = self.next_packet.wrapping_add(1);
        write_packet(&mut self.stream, &req.to_packet(num))?;
        let p = match read_packet(&mut self.stream, MAX_AFC_PACKET_LEN) {
            Ok(p) => p,
            Err(AfcReadError::Eof) => return Err(AfcError::Closed),
            Err(AfcReadError::Io(e)) => return Err(AfcError::Io(e)),
            Err(AfcReadError::Malformed { error, .. }) => {
                return Err(AfcError::Protocol {
                    what,
                    path: path.to_string(),
                    error,
                })
            }
        };
        if p.packet_num != num {
            return Err(AfcError::PacketNumberMismatch {
                expected: num,
                got: p.packet_num,
            });
        }
        match AfcReply::from_packet(&p) {
            Ok(AfcReply::Status(s)) if s != AfcStatus::SUCCESS => Err(AfcError::Status {
                what,
                path: path.to_string(),
                status: s,
            }),
            Ok(r) => Ok(r),
            Err(error) => Err(AfcError::Protocol {
                what,
                path: path.to_string(),
                error,
            }),
        }
    }

    fn expect_status(
        &mut self,
        req: &AfcRequest,
        what: &'static str,
        path: &str,
    ) -> Result<(), AfcError> {
        match self.call(req, what, path)? {
            AfcReply::Status(_) => Ok(()),
            other => Err(unexpected(what, path, &other)),
        }
    }

    fn expect_data(
        &mut self,
        req: &AfcRequest,
        what: &'static str,
        path: &str,
    ) -> Result<Vec<u8>, AfcError> {
        match self.call(req, what, path)? {
            AfcReply::Data(d) => Ok(d),
            other => Err(unexpected(what, path, &other)),
        }
    }

    /// Stats `path`; `None` when the device answers OBJECT_NOT_FOUND (as both real hosts read it).
    pub fn get_file_info(&mut self, path: &str) -> Result<Option<FileInfo>, AfcError> {
        check_path(path)?;
        let req = AfcRequest::GetFileInfo {
            path: path.to_string(),
        };
        match self.expect_data(&req, "stat", path) {
            Ok(d) => FileInfo::decode(&d)
                .map(Some)
                .map_err(|error| AfcError::Protocol {
                    what: "stat",
                    path: path.to_string(),
                    error,
                }),
            Err(e) if e.status() == Some(AfcStatus::OBJECT_NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a whole regular file of at most `max_len` bytes; `None` when it does not exist.
    pub fn read_file(&mut self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, AfcError> {
        let Some(info) = self.get_file_info(path)? else {
            return Ok(None);
        };
        if info.kind != FileKind::Regular {
            return Err(AfcError::NotAFile {
                path: path.to_string(),
            });
        }
        if info.size > max_len {
            return Err(AfcError::TooLarge {
                path: path.to_string(),
                size: info.size,
                max: max_len,
            });
        }
        let h = match self.open(path, OpenMode::ReadOnly) {
            Ok(h) => h,
            Err(e) if e.status() == Some(AfcStatus::OBJECT_NOT_FOUND) => return Ok(None),
            Err(e) => return Err(e),
        };
        let res = self.read_to_end(h, path, info.size);
        let closed = self.close(h);
        let data = res?;
        closed?;
        Ok(Some(data))
    }

    /// Reads `expected` bytes from `h` (fewer if the file shrank since the stat), as
    /// idevicebackup2 does: no read past the announced size, so growth cannot exceed the cap.
    fn read_to_end(
        &mut self,
        h: FileHandle,
        path: &str,
        expected: u64,
    ) -> Result<Vec<u8>, AfcError> {
        // `expected` was checked against the caller's cap before this call.
        let mut out = Vec::with_capacity(expected as usize);
        while (out.len() as u64) < expected {
            let want = (expected - out.len() as u64).min(MAX_READ_CHUNK);
            let chunk = self.read(h, want, path)?;
            if chunk.is_empty() {
                break;
            }
            if chunk.len() as u64 > want {
                return Err(AfcError::UnexpectedReply {
                    what: "read",
                    path: path.to_string(),
                    reply: "more data than asked for",
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Opens `path`; the handle is never 0.
    pub fn open(&mut self, path: &str, mode: OpenMode) -> Result<FileHandle, AfcError> {
        check_path(path)?;
        let req = AfcRequest::FileOpen {
            mode,
            path: path.to_string(),
        };
        match self.call(&req, "open", path)? {
            AfcReply::FileOpened(h) if h.0 != 0 => Ok(h),
            AfcReply::FileOpened(_) => Err(AfcError::UnexpectedReply {
                what: "open",
                path: path.to_string(),
                reply: "handle 0",
            }),
            other => Err(unexpected("open", path, &other)),
        }
    }

    /// Reads up to `len` bytes at the handle's position (an empty result is EOF). `path` only
    /// names the file in errors.
    pub fn read(&mut self, h: FileHandle, len: u64, path: &str) -> Result<Vec<u8>, AfcError> {
        let req = AfcRequest::Read {
            handle: h,
            len: len.min(MAX_READ_CHUNK),
        };
        self.expect_data(&req, "read", path)
    }

    /// Writes `data` at the handle's position.
    pub fn write(&mut self, h: FileHandle, data: &[u8], path: &str) -> Result<(), AfcError> {
        for chunk in data.chunks(MAX_READ_CHUNK as usize) {
            let req = AfcRequest::Write {
                handle: h,
                data: chunk.to_vec(),
            };
            self.expect_status(&req, "write", path)?;
        }
        Ok(())
    }

    /// `flock` on an open file. A held lock gives [`AfcError::Status`] with OP_WOULD_BLOCK.
    pub fn lock(&mut self, h: FileHandle, op: LockOp) -> Result<(), AfcError> {
        self.expect_status(&AfcRequest::Lock { handle: h, op }, "lock", "")
    }

    /// Closes an open file.
    pub fn close(&mut self, h: FileHandle) -> Result<(), AfcError> {
        self.expect_status(&AfcRequest::Close { handle: h }, "close", "")
    }

    /// Creates a directory and its missing parents.
    pub fn make_dir(&mut self, path: &str) -> Result<(), AfcError> {
        check_path(path)?;
        let req = AfcRequest::MakeDir {
            path: path.to_string(),
        };
        self.expect_status(&req, "mkdir", path)
    }

    /// Removes a file or an empty directory.
    pub fn remove_path(&mut self, path: &str) -> Result<(), AfcError> {
        check_path(path)?;
        let req = AfcRequest::RemovePath {
            path: path.to_string(),
        };
        self.expect_status(&req, "remove", path)
    }

    /// Lists a directory (without `.` and `..`).
    pub fn read_directory(&mut self, path: &str) -> Result<Vec<String>, AfcError> {
        check_path(path)?;
        let req = AfcRequest::ReadDirectory {
            path: path.to_string(),
        };
        let d = self.expect_data(&req, "list", path)?;
        decode_dir_listing(&d).map_err(|error| AfcError::Protocol {
            what: "list",
            path: path.to_string(),
            error,
        })
    }

    /// Gives the connection back.
    pub fn into_inner(self) -> BoxStream {
        self.stream
    }
}

fn unexpected(what: &'static str, path: &str, r: &AfcReply) -> AfcError {
    AfcError::UnexpectedReply {
        what,
        path: path.to_string(),
        reply: match r {
            AfcReply::Status(_) => "STATUS",
            AfcReply::Data(_) => "DATA",
            AfcReply::FileOpened(_) => "FILE_OPEN_RES",
        },
    }
}

fn check_path(path: &str) -> Result<(), AfcError> {
    let why = if path.contains('\0') {
        "contains NUL"
    } else if path.len() > MAX_AFC_PATH_LEN {
        "too long"
    } else {
        return Ok(());
    };
    Err(AfcError::InvalidPath {
        path: path.chars().take(64).collect(),
        why,
    })
}

// ------------------------------------------------------------------------------------------
// Sync lock
// ------------------------------------------------------------------------------------------

/// Anything that can post a notification to the device: a [`NotificationProxyClient`] kept open,
/// or a closure that opens a fresh one per post (as idevicebackup2 does).
///
/// [`NotificationProxyClient`]: super::notification_proxy::NotificationProxyClient
pub trait PostNotification {
    /// Posts `name` to the device.
    fn post_notification(&mut self, name: &str) -> Result<(), NpError>;
}

impl<F: FnMut(&str) -> Result<(), NpError>> PostNotification for F {
    fn post_notification(&mut self, name: &str) -> Result<(), NpError> {
        self(name)
    }
}

/// How hard to try for the sync lock. Both real hosts use 50 tries 200 ms apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLockPolicy {
    pub attempts: u32,
    pub interval: Duration,
}

impl Default for SyncLockPolicy {
    fn default() -> Self {
        Self {
            attempts: 50,
            interval: Duration::from_millis(200),
        }
    }
}

/// Errors taking or releasing the sync lock.
#[derive(Debug, thiserror::Error)]
pub enum SyncLockError {
    /// An AFC operation failed.
    #[error("sync lock: {0}")]
    Afc(#[from] AfcError),
    /// Posting a sync notification failed.
    #[error("sync lock: posting a notification failed: {0}")]
    Notify(#[from] NpError),
    /// Another host (or iTunes on the device) held the lock through every attempt.
    #[error("sync lock: {SYNC_LOCK_PATH} still locked after {attempts} attempts")]
    Busy { attempts: u32 },
}

/// The iTunes sync lock, held. Release it with [`SyncLock::release`]; dropping it without
/// releasing leaves the device to drop the lock when the AFC connection closes.
#[derive(Debug)]
#[must_use = "the sync lock must be released"]
pub struct SyncLock {
    handle: FileHandle,
}

impl SyncLock {
    /// Takes the lock as both real hosts do: post syncWillStart, open the lock file `r+`, post
    /// syncLockRequest, try LOCK_EX while the device answers OP_WOULD_BLOCK (calling `sleep`
    /// between attempts), then post syncDidStart. On failure the lock file is closed again.
    pub fn acquire(
        afc: &mut AfcClient,
        np: &mut dyn PostNotification,
        policy: SyncLockPolicy,
        sleep: &mut dyn FnMut(Duration),
    ) -> Result<Self, SyncLockError> {
        np.post_notification(SYNC_WILL_START)?;
        let handle = afc.open(SYNC_LOCK_PATH, OpenMode::ReadWrite)?;
        let res = Self::lock_loop(afc, np, handle, policy, sleep);
        if res.is_err() {
            // The original error matters more than a failed close.
            let _ = afc.close(handle);
        }
        res.map(|()| Self { handle })
    }

    fn lock_loop(
        afc: &mut AfcClient,
        np: &mut dyn PostNotification,
        handle: FileHandle,
        policy: SyncLockPolicy,
        sleep: &mut dyn FnMut(Duration),
    ) -> Result<(), SyncLockError> {
        np.post_notification(SYNC_LOCK_REQUEST)?;
        for attempt in 0..policy.attempts {
            if attempt > 0 {
                sleep(policy.interval);
            }
            match afc.lock(handle, LockOp::Exclusive) {
                Ok(()) => {
                    np.post_notification(SYNC_DID_START)?;
                    return Ok(());
                }
                Err(e) if e.status() == Some(AfcStatus::OP_WOULD_BLOCK) => {
                    tracing::debug!(attempt, "sync lock busy");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(SyncLockError::Busy {
            attempts: policy.attempts,
        })
    }

    /// The lock file's handle.
    pub fn handle(&self) -> FileHandle {
        self.handle
    }

    /// Unlocks, closes the lock file and posts syncDidFinish. Every step is tried even when an
    /// earlier one fails; the first error is returned.
    pub fn release(
        self,
        afc: &mut AfcClient,
        np: &mut dyn PostNotification,
    ) -> Result<(), SyncLockError> {
        let unlocked = afc.lock(self.handle, LockOp::Unlock);
        let closed = afc.close(self.handle);
        let posted = np.post_notification(SYNC_DID_FINISH);
        unlocked?;
        closed?;
        posted?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(entire: u64, this: u64, num: u64, op: u64) -> Vec<u8> {
        let mut v = Vec::new();
        AfcHeader {
            entire_length: entire,
            this_length: this,
            packet_num: num,
            operation: op,
        }
        .encode(&mut v);
        v
    }

    #[test]
    fn status_reply_layout_matches_a_real_device() {
        let mut out = Vec::new();
        AfcReply::Status(AfcStatus::OBJECT_NOT_FOUND)
            .to_packet(7)
            .encode(&mut out);
        assert_eq!(out.len(), 48);
        assert_eq!(&out[..8], b"CFA6LPAA");
        assert_eq!(le_u64(&out, 8), Some(48)); // entire
        assert_eq!(le_u64(&out, 16), Some(48)); // this
        assert_eq!(le_u64(&out, 24), Some(7));
        assert_eq!(le_u64(&out, 32), Some(op::STATUS));
        assert_eq!(le_u64(&out, 40), Some(8));
    }

    #[test]
    fn data_reply_puts_bytes_in_payload() {
        let mut out = Vec::new();
        AfcReply::Data(b"abc".to_vec())
            .to_packet(1)
            .encode(&mut out);
        assert_eq!(le_u64(&out, 8), Some(43));
        assert_eq!(le_u64(&out, 16), Some(40));
        let (p, used) = AfcPacket::decode(&out, MAX_AFC_PACKET_LEN).unwrap();
        assert_eq!(used, 43);
        assert_eq!(
            AfcReply::from_packet(&p).unwrap(),
            AfcReply::Data(b"abc".to_vec())
        );
    }

    #[test]
    fn requests_round_trip() {
        let reqs = [
            AfcRequest::GetFileInfo {
                path: "/Books/iBooksData2.plist".into(),
            },
            AfcRequest::FileOpen {
                mode: OpenMode::ReadWrite,
                path: SYNC_LOCK_PATH.into(),
            },
            AfcRequest::Read {
                handle: FileHandle(3),
                len: 100,
            },
            AfcRequest::Write {
                handle: FileHandle(3),
                data: b"xyz".to_vec(),
            },
            AfcRequest::Close {
                handle: FileHandle(3),
            },
            AfcRequest::Lock {
                handle: FileHandle(3),
                op: LockOp::Exclusive,
            },
            AfcRequest::MakeDir {
                path: "/a/b".into(),
            },
            AfcRequest::RemovePath {
                path: "/a/b".into(),
            },
            AfcRequest::ReadDirectory { path: "/".into() },
        ];
        for (i, r) in reqs.iter().enumerate() {
            let mut out = Vec::new();
            r.to_packet(i as u64).encode(&mut out);
            let (p, used) = AfcPacket::decode(&out, MAX_AFC_PACKET_LEN).unwrap();
            assert_eq!(used, out.len());
            assert_eq!(p.packet_num, i as u64);
            assert_eq!(&AfcRequest::from_packet(&p).unwrap(), r);
        }
    }

    #[test]
    fn write_split_like_pymobiledevice3_parses_the_same() {
        // pymobiledevice3: this_length = 48, handle then data both after the header.
        let mut b = header(48 + 3, 48, 0, op::WRITE);
        b.extend_from_slice(&9u64.to_le_bytes());
        b.extend_from_slice(b"xyz");
        let (p, _) = AfcPacket::decode(&b, MAX_AFC_PACKET_LEN).unwrap();
        assert_eq!(
            AfcRequest::from_packet(&p).unwrap(),
            AfcRequest::Write {
                handle: FileHandle(9),
                data: b"xyz".to_vec()
            }
        );
    }

    #[test]
    fn rejects_bad_lengths() {
        let h = header(1 << 63, 40, 0, op::STATUS);
        assert!(matches!(
            AfcHeader::decode(&h, MAX_AFC_PACKET_LEN),
            Err(AfcCodecError::TooLong { .. })
        ));
        let h = header(48, 39, 0, op::STATUS);
        assert!(matches!(
            AfcHeader::decode(&h, MAX_AFC_PACKET_LEN),
            Err(AfcCodecError::ThisLengthTooShort { this_length: 39 })
        ));
        let h = header(44, 48, 0, op::STATUS);
        assert!(matches!(
            AfcHeader::decode(&h, MAX_AFC_PACKET_LEN),
            Err(AfcCodecError::EntireShorterThanThis { .. })
        ));
        let mut h = header(40, 40, 0, op::STATUS);
        h[0] = b'X';
        assert_eq!(
            AfcHeader::decode(&h, MAX_AFC_PACKET_LEN),
            Err(AfcCodecError::BadMagic)
        );
        let h = header(100, 40, 0, op::DATA);
        assert_eq!(
            AfcPacket::decode(&h, MAX_AFC_PACKET_LEN),
            Err(AfcCodecError::Incomplete { needed: 100 })
        );
    }

    #[test]
    fn read_packet_refuses_huge_length_without_allocating() {
        let h = header(u64::MAX, 40, 5, op::DATA);
        match read_packet(&mut &h[..], MAX_AFC_PACKET_LEN) {
            Err(AfcReadError::Malformed {
                packet_num: Some(5),
                error: AfcCodecError::TooLong { .. },
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_request_bodies_are_errors() {
        assert!(matches!(
            AfcRequest::parse(op::GET_FILE_INFO, b"no nul"),
            Err(AfcCodecError::BadPath { .. })
        ));
        assert!(matches!(
            AfcRequest::parse(op::GET_FILE_INFO, b"\xff\xfe\0"),
            Err(AfcCodecError::BadPath { .. })
        ));
        assert!(matches!(
            AfcRequest::parse(op::READ, &[1, 2, 3]),
            Err(AfcCodecError::ShortBody { .. })
        ));
        let mut b = 99u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"/x\0");
        assert!(matches!(
            AfcRequest::parse(op::FILE_OPEN, &b),
            Err(AfcCodecError::BadArgument { value: 99, .. })
        ));
        assert_eq!(
            AfcRequest::parse(0x77, b""),
            Err(AfcCodecError::UnknownOperation(0x77))
        );
        let long = vec![b'a'; MAX_AFC_PATH_LEN + 1];
        let mut b = long.clone();
        b.push(0);
        assert!(matches!(
            AfcRequest::parse(op::MAKE_DIR, &b),
            Err(AfcCodecError::BadPath {
                why: "too long",
                ..
            })
        ));
    }

    #[test]
    fn file_info_round_trips_and_has_the_six_keys() {
        let fi = FileInfo {
            size: 12,
            blocks: 8,
            nlink: 1,
            kind: FileKind::Regular,
            mtime_ns: 1_700_000_000_000_000_000,
            birthtime_ns: 1_600_000_000_000_000_000,
            link_target: None,
        };
        let mut b = Vec::new();
        fi.encode(&mut b);
        let text = String::from_utf8(b.clone()).unwrap();
        for k in [
            "st_size",
            "st_blocks",
            "st_nlink",
            "st_ifmt",
            "st_mtime",
            "st_birthtime",
        ] {
            assert!(text.contains(&format!("{k}\0")), "{k} missing");
        }
        assert!(text.ends_with('\0'));
        assert_eq!(FileInfo::decode(&b).unwrap(), fi);
    }

    #[test]
    fn file_info_rejects_malformed() {
        assert!(FileInfo::decode(b"st_size\0").is_err());
        assert!(FileInfo::decode(b"st_size\x001").is_err());
        assert!(FileInfo::decode(b"st_size\0x\0st_ifmt\0S_IFREG\0").is_err());
        assert!(FileInfo::decode(b"st_blocks\x001\0").is_err());
        let many: Vec<u8> = (0..=MAX_FILE_INFO_PAIRS)
            .flat_map(|_| b"k\0v\0".to_vec())
            .collect();
        assert!(FileInfo::decode(&many).is_err());
    }

    #[test]
    fn lock_ops_read_flock_bits() {
        assert_eq!(LockOp::from_u64(6), Some(LockOp::Exclusive));
        assert_eq!(LockOp::from_u64(2), Some(LockOp::Exclusive));
        assert_eq!(LockOp::from_u64(12), Some(LockOp::Unlock));
        assert_eq!(LockOp::from_u64(5), Some(LockOp::Shared));
        assert_eq!(LockOp::from_u64(4), None);
    }

    #[test]
    fn status_display_names_the_code() {
        assert_eq!(AfcStatus::OP_WOULD_BLOCK.to_string(), "19 (OP_WOULD_BLOCK)");
        assert_eq!(AfcStatus(999).to_string(), "999");
    }
}
