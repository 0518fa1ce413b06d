//! The raw file streams that follow DLMessageUploadFiles (device → host, §4.7.1) and
//! DLMessageDownloadFiles (host → device, §4.7.2): incremental readers and writers, bounded buffers.
//!
//! Grammar, per file: `u32be n, path` (an upload has two: the device's own path, then the backup
//! path), then blocks `u32be (k+1), code, k bytes`: `0x0C` data, ended by `0x00` (k = 0, success)
//! or an error block (`0x0B` from the device, `0x06` from the host) whose bytes are a message.
//! `u32be 0` where the next path length would stand ends the stream.
//!
//! Decisions: a data block announcing more than [`MAX_BLOCK_LEN`] bytes is refused before
//! anything is read or allocated; data is handed out in pieces the size of the caller's buffer, so
//! memory never depends on what the peer announces. A data block with k = 0 is *tolerated* on
//! reading (it carries nothing, and refusing it would gain nothing) and never *written*
//! (pymobiledevice3 asserts on it). A success block must have k = 0 exactly.

use std::io::{self, Read, Write};

/// Block code: a piece of file data.
pub const CODE_FILE_DATA: u8 = 0x0C;
/// Block code: the file ended successfully (k = 0).
pub const CODE_SUCCESS: u8 = 0x00;
/// Block code: the host could not read the file; the block holds its error text.
pub const CODE_ERROR_LOCAL: u8 = 0x06;
/// Block code: the device could not read the file; the block holds its error text.
pub const CODE_ERROR_REMOTE: u8 = 0x0B;

/// Largest data block accepted from a peer, in data bytes. Both hosts send 32 KiB; devices
/// send similar sizes. Anything larger is a broken or hostile peer.
pub const MAX_BLOCK_LEN: u32 = 4 * 1024 * 1024;
/// Longest path accepted in a stream, in bytes (the hosts' own limit).
pub const MAX_STREAM_PATH_LEN: u32 = 4096;
/// Longest error text accepted in an error block, in bytes.
pub const MAX_ERROR_TEXT_LEN: u32 = 64 * 1024;
/// The data block size writers produce (what both real hosts send).
pub const DEFAULT_BLOCK_SIZE: usize = 32 * 1024;

/// Which of the two streams: they differ only in the number of paths per file and in which
/// error code their sender uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Device → host after `DLMessageUploadFiles`: device path + backup path per file.
    Upload,
    /// Host → device after `DLMessageDownloadFiles`: one path per file.
    Download,
}

impl StreamKind {
    /// The error code the sender of this stream uses.
    pub fn error_code(self) -> u8 {
        match self {
            StreamKind::Upload => CODE_ERROR_REMOTE,
            StreamKind::Download => CODE_ERROR_LOCAL,
        }
    }
}

/// The paths that open one file in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// Upload only: the device's own (temporary) path; hosts do not use it.
    pub device_path: Option<String>,
    /// The path relative to the backup root (`<UDID>/…`), not yet validated.
    pub path: String,
}

/// One step of a stream, as [`FileStreamReader::next`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A new file begins.
    File(FileHeader),
    /// `n` bytes of the current file were put at the start of the caller's buffer (n ≥ 1).
    Data(usize),
    /// The current file ended with the success block.
    FileDone,
    /// The current file ended with an error block; the data received so far is incomplete.
    FileFailed { code: u8, message: String },
    /// The terminator: no more files.
    End,
}

/// Why a stream could not be read. All but `Io` are the sender's fault.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection ended inside the stream.
    #[error("the file stream ended in the middle of {what}")]
    Truncated { what: &'static str },
    /// A path length over [`MAX_STREAM_PATH_LEN`].
    #[error("the file stream announced a {len}-byte path; at most {max} bytes are accepted", max = MAX_STREAM_PATH_LEN)]
    PathTooLong { len: u32 },
    /// A path that is not UTF-8.
    #[error("the file stream sent a path that is not UTF-8")]
    PathNotUtf8,
    /// A data block over [`MAX_BLOCK_LEN`].
    #[error("the file stream announced a {len}-byte data block; at most {max} bytes are accepted", max = MAX_BLOCK_LEN)]
    BlockTooLong { len: u32 },
    /// A block length of 0 (no room for the code) inside a file.
    #[error("the file stream sent a zero-length block inside a file")]
    ZeroLengthBlock,
    /// A block code other than data, success or error.
    #[error("the file stream sent unknown block code 0x{code:02x}")]
    UnknownCode { code: u8 },
    /// A success block carrying bytes.
    #[error("the file stream's success block carries {len} bytes; it must carry none")]
    BadSuccessBlock { len: u32 },
    /// An error text over [`MAX_ERROR_TEXT_LEN`].
    #[error("the file stream sent a {len}-byte error text; at most {max} bytes are accepted", max = MAX_ERROR_TEXT_LEN)]
    ErrorTextTooLong { len: u32 },
    /// Reading the connection failed (timeouts, resets: the caller decides what they mean).
    #[error("i/o error reading the file stream: {0}")]
    Io(#[source] io::Error),
}

impl StreamError {
    /// True when the sender broke the format (as opposed to the connection failing).
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, StreamError::Io(_) | StreamError::Truncated { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    ExpectFile,
    ExpectBlock,
    InData { left: u32 },
    Finished,
}

/// Pull reader for one stream. Call [`next`](Self::next) until it returns [`StreamEvent::End`].
pub struct FileStreamReader<R> {
    r: R,
    kind: StreamKind,
    state: ReadState,
}

impl<R: Read> FileStreamReader<R> {
    pub fn new(r: R, kind: StreamKind) -> Self {
        FileStreamReader {
            r,
            kind,
            state: ReadState::ExpectFile,
        }
    }

    /// The next step. File data goes into `buf` (at most `buf.len()` bytes per call; `buf` must
    /// not be empty). After an error the stream cannot be resynchronised.
    pub fn next(&mut self, buf: &mut [u8]) -> Result<StreamEvent, StreamError> {
        loop {
            match self.state {
                ReadState::Finished => return Ok(StreamEvent::End),
                ReadState::ExpectFile => {
                    let n = self.read_u32("a path length")?;
                    if n == 0 {
                        self.state = ReadState::Finished;
                        return Ok(StreamEvent::End);
                    }
                    let first = self.read_path(n)?;
                    let header = match self.kind {
                        StreamKind::Download => FileHeader {
                            device_path: None,
                            path: first,
                        },
                        StreamKind::Upload => {
                            let n2 = self.read_u32("a path length")?;
                            FileHeader {
                                device_path: Some(first),
                                path: self.read_path(n2)?,
                            }
                        }
                    };
                    self.state = ReadState::ExpectBlock;
                    return Ok(StreamEvent::File(header));
                }
                ReadState::ExpectBlock => {
                    let len = self.read_u32("a block length")?;
                    if len == 0 {
                        return Err(StreamError::ZeroLengthBlock);
                    }
                    let mut code = [0u8; 1];
                    self.read_exact(&mut code, "a block code")?;
                    let payload = len - 1;
                    match code[0] {
                        CODE_FILE_DATA => {
                            if payload > MAX_BLOCK_LEN {
                                return Err(StreamError::BlockTooLong { len: payload });
                            }
                            if payload > 0 {
                                self.state = ReadState::InData { left: payload };
                            }
                            // An empty data block: nothing to hand out, read the next block.
                        }
                        CODE_SUCCESS => {
                            if payload != 0 {
                                return Err(StreamError::BadSuccessBlock { len: payload });
                            }
                            self.state = ReadState::ExpectFile;
                            return Ok(StreamEvent::FileDone);
                        }
                        c @ (CODE_ERROR_REMOTE | CODE_ERROR_LOCAL) => {
                            if payload > MAX_ERROR_TEXT_LEN {
                                return Err(StreamError::ErrorTextTooLong { len: payload });
                            }
                            let mut text = vec![0u8; payload as usize];
                            self.read_exact(&mut text, "an error text")?;
                            self.state = ReadState::ExpectFile;
                            return Ok(StreamEvent::FileFailed {
                                code: c,
                                message: String::from_utf8_lossy(&text).into_owned(),
                            });
                        }
                        other => return Err(StreamError::UnknownCode { code: other }),
                    }
                }
                ReadState::InData { left } => {
                    let want = buf.len().min(left as usize);
                    if want == 0 {
                        return Ok(StreamEvent::Data(0));
                    }
                    let got = loop {
                        match self.r.read(&mut buf[..want]) {
                            Ok(0) => return Err(StreamError::Truncated { what: "file data" }),
                            Ok(n) => break n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(StreamError::Io(e)),
                        }
                    };
                    // `got ≤ want ≤ left`, so this cannot underflow.
                    let left = left - got as u32;
                    self.state = if left == 0 {
                        ReadState::ExpectBlock
                    } else {
                        ReadState::InData { left }
                    };
                    return Ok(StreamEvent::Data(got));
                }
            }
        }
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), StreamError> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                StreamError::Truncated { what }
            } else {
                StreamError::Io(e)
            }
        })
    }

    fn read_u32(&mut self, what: &'static str) -> Result<u32, StreamError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    fn read_path(&mut self, len: u32) -> Result<String, StreamError> {
        if len > MAX_STREAM_PATH_LEN {
            return Err(StreamError::PathTooLong { len });
        }
        let mut b = vec![0u8; len as usize];
        self.read_exact(&mut b, "a path")?;
        String::from_utf8(b).map_err(|_| StreamError::PathNotUtf8)
    }
}

/// Appends `u32be len, bytes` (a path).
pub fn encode_path(path: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(path.len() as u32).to_be_bytes());
    out.extend_from_slice(path.as_bytes());
}

/// Appends one block: `u32be (k+1), code, k bytes`.
pub fn encode_block(code: u8, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
    out.push(code);
    out.extend_from_slice(data);
}

/// Appends the stream terminator.
pub fn encode_terminator(out: &mut Vec<u8>) {
    out.extend_from_slice(&0u32.to_be_bytes());
}

/// Push writer for one stream. Call order per file: `begin_file`, `write_data`*, then
/// `finish_file` or `fail_file`; after the last file, `finish`.
pub struct FileStreamWriter<W: Write> {
    w: W,
    kind: StreamKind,
    block_size: usize,
    in_file: bool,
    scratch: Vec<u8>,
}

impl<W: Write> FileStreamWriter<W> {
    pub fn new(w: W, kind: StreamKind) -> Self {
        Self::with_block_size(w, kind, DEFAULT_BLOCK_SIZE)
    }

    /// A writer producing data blocks of at most `block_size` bytes (clamped to 1..=MAX_BLOCK_LEN).
    pub fn with_block_size(w: W, kind: StreamKind, block_size: usize) -> Self {
        let block_size = block_size.clamp(1, MAX_BLOCK_LEN as usize);
        FileStreamWriter {
            w,
            kind,
            block_size,
            in_file: false,
            scratch: Vec::with_capacity(block_size.min(DEFAULT_BLOCK_SIZE) + 5),
        }
    }

    fn misuse(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
    }

    fn check_path(p: &str) -> io::Result<()> {
        if p.len() > MAX_STREAM_PATH_LEN as usize {
            return Err(Self::misuse(
                "path longer than the stream's 4096-byte limit",
            ));
        }
        Ok(())
    }

    /// Starts a file. For uploads `header.device_path` is sent first (empty when `None`); for
    /// downloads it is ignored.
    pub fn begin_file(&mut self, header: &FileHeader) -> io::Result<()> {
        if self.in_file {
            return Err(Self::misuse("begin_file inside a file"));
        }
        Self::check_path(&header.path)?;
        if header.path.is_empty() && self.kind == StreamKind::Download {
            return Err(Self::misuse("an empty path would read as the terminator"));
        }
        self.scratch.clear();
        if self.kind == StreamKind::Upload {
            let dp = header.device_path.as_deref().unwrap_or("");
            if dp.is_empty() {
                // An empty first path would read as the terminator.
                return Err(Self::misuse("an upload needs a non-empty device path"));
            }
            Self::check_path(dp)?;
            encode_path(dp, &mut self.scratch);
        }
        encode_path(&header.path, &mut self.scratch);
        self.w.write_all(&self.scratch)?;
        self.in_file = true;
        Ok(())
    }

    /// Sends file data, split into blocks; empty input sends nothing (no k = 0 blocks).
    pub fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.in_file {
            return Err(Self::misuse("write_data outside a file"));
        }
        for chunk in data.chunks(self.block_size) {
            self.scratch.clear();
            encode_block(CODE_FILE_DATA, chunk, &mut self.scratch);
            self.w.write_all(&self.scratch)?;
        }
        Ok(())
    }

    /// Copies everything from `r` into the current file; returns the byte count. A read error
    /// is returned as is (the caller then sends `fail_file`).
    pub fn copy_from(&mut self, r: &mut dyn Read) -> io::Result<u64> {
        let mut buf = vec![0u8; self.block_size.min(DEFAULT_BLOCK_SIZE * 4)];
        let mut total = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.write_data(&buf[..n])?;
            total += n as u64;
        }
    }

    /// Ends the current file with the success block.
    pub fn finish_file(&mut self) -> io::Result<()> {
        if !self.in_file {
            return Err(Self::misuse("finish_file outside a file"));
        }
        self.scratch.clear();
        encode_block(CODE_SUCCESS, &[], &mut self.scratch);
        self.w.write_all(&self.scratch)?;
        self.in_file = false;
        Ok(())
    }

    /// Ends the current file with an error block carrying `message` (cut to the cap).
    pub fn fail_file(&mut self, message: &str) -> io::Result<()> {
        if !self.in_file {
            return Err(Self::misuse("fail_file outside a file"));
        }
        let mut end = message.len().min(MAX_ERROR_TEXT_LEN as usize);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        self.scratch.clear();
        encode_block(
            self.kind.error_code(),
            &message.as_bytes()[..end],
            &mut self.scratch,
        );
        self.w.write_all(&self.scratch)?;
        self.in_file = false;
        Ok(())
    }

    /// Sends the terminator and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.in_file {
            return Err(Self::misuse("finish inside a file"));
        }
        self.scratch.clear();
        encode_terminator(&mut self.scratch);
        self.w.write_all(&self.scratch)?;
        self.w.flush()
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], kind: StreamKind) -> Result<Vec<StreamEvent>, StreamError> {
        let mut r = FileStreamReader::new(bytes, kind);
        let mut buf = [0u8; 7];
        let mut out = Vec::new();
        loop {
            let ev = r.next(&mut buf)?;
            let end = ev == StreamEvent::End;
            out.push(ev);
            if end {
                return Ok(out);
            }
        }
    }

    fn upload_header(p: &str) -> FileHeader {
        FileHeader {
            device_path: Some(format!("/var/.b/{p}")),
            path: p.into(),
        }
    }

    #[test]
    fn upload_round_trip() {
        let mut w = FileStreamWriter::with_block_size(Vec::new(), StreamKind::Upload, 5);
        w.begin_file(&upload_header("U/a")).unwrap();
        w.write_data(b"hello world").unwrap();
        w.write_data(b"").unwrap();
        w.finish_file().unwrap();
        w.begin_file(&upload_header("U/empty")).unwrap();
        w.finish_file().unwrap();
        w.begin_file(&upload_header("U/bad")).unwrap();
        w.write_data(b"xy").unwrap();
        w.fail_file("gone").unwrap();
        w.finish().unwrap();
        let bytes = w.into_inner();
        let evs = read_all(&bytes, StreamKind::Upload).unwrap();
        let mut data = Vec::new();
        let mut r = FileStreamReader::new(&bytes[..], StreamKind::Upload);
        let mut buf = [0u8; 3];
        assert_eq!(
            r.next(&mut buf).unwrap(),
            StreamEvent::File(upload_header("U/a"))
        );
        while let StreamEvent::Data(n) = r.next(&mut buf).unwrap() {
            data.extend_from_slice(&buf[..n]);
        }
        assert_eq!(data, b"hello world");
        assert!(evs.contains(&StreamEvent::File(upload_header("U/empty"))));
        assert!(evs.contains(&StreamEvent::FileFailed {
            code: CODE_ERROR_REMOTE,
            message: "gone".into()
        }));
        assert_eq!(evs.last(), Some(&StreamEvent::End));
        assert_eq!(
            evs.iter().filter(|e| **e == StreamEvent::FileDone).count(),
            2
        );
    }

    #[test]
    fn download_round_trip_and_error_block() {
        let mut w = FileStreamWriter::new(Vec::new(), StreamKind::Download);
        let h = |p: &str| FileHeader {
            device_path: None,
            path: p.into(),
        };
        w.begin_file(&h("U/Manifest.plist")).unwrap();
        w.copy_from(&mut &b"plist bytes"[..]).unwrap();
        w.finish_file().unwrap();
        w.begin_file(&h("U/missing")).unwrap();
        w.fail_file("No such file or directory").unwrap();
        w.finish().unwrap();
        let evs = read_all(&w.into_inner(), StreamKind::Download).unwrap();
        assert_eq!(evs[0], StreamEvent::File(h("U/Manifest.plist")));
        assert_eq!(
            evs[evs.len() - 2],
            StreamEvent::FileFailed {
                code: CODE_ERROR_LOCAL,
                message: "No such file or directory".into()
            }
        );
    }

    #[test]
    fn empty_stream_is_just_terminator() {
        assert_eq!(
            read_all(&[0, 0, 0, 0], StreamKind::Upload).unwrap(),
            vec![StreamEvent::End]
        );
    }

    #[test]
    fn huge_block_rejected_without_allocation() {
        // 4 GiB announced: refused from the length alone.
        let mut b = Vec::new();
        encode_path("U/x", &mut b);
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        b.push(CODE_FILE_DATA);
        assert!(matches!(
            read_all(&b, StreamKind::Download),
            Err(StreamError::BlockTooLong { len }) if len == u32::MAX - 1
        ));
    }

    #[test]
    fn long_path_rejected() {
        let mut b = Vec::new();
        b.extend_from_slice(&(MAX_STREAM_PATH_LEN + 1).to_be_bytes());
        assert!(matches!(
            read_all(&b, StreamKind::Download),
            Err(StreamError::PathTooLong { .. })
        ));
    }

    #[test]
    fn zero_data_block_is_tolerated() {
        let mut b = Vec::new();
        encode_path("U/x", &mut b);
        encode_block(CODE_FILE_DATA, b"", &mut b);
        encode_block(CODE_FILE_DATA, b"ab", &mut b);
        encode_block(CODE_SUCCESS, b"", &mut b);
        encode_terminator(&mut b);
        let evs = read_all(&b, StreamKind::Download).unwrap();
        assert_eq!(evs[1], StreamEvent::Data(2));
        assert_eq!(evs[2], StreamEvent::FileDone);
    }

    #[test]
    fn malformed_blocks_rejected() {
        let base = || {
            let mut b = Vec::new();
            encode_path("U/x", &mut b);
            b
        };
        let mut b = base();
        b.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            read_all(&b, StreamKind::Download),
            Err(StreamError::ZeroLengthBlock)
        ));
        let mut b = base();
        encode_block(0x42, b"", &mut b);
        assert!(matches!(
            read_all(&b, StreamKind::Download),
            Err(StreamError::UnknownCode { code: 0x42 })
        ));
        let mut b = base();
        encode_block(CODE_SUCCESS, b"zz", &mut b);
        assert!(matches!(
            read_all(&b, StreamKind::Download),
            Err(StreamError::BadSuccessBlock { len: 2 })
        ));
        let mut b = base();
        b.extend_from_slice(&(MAX_ERROR_TEXT_LEN + 2).to_be_bytes());
        b.push(CODE_ERROR_REMOTE);
        assert!(matches!(
            read_all(&b, StreamKind::Download),
            Err(StreamError::ErrorTextTooLong { .. })
        ));
    }

    #[test]
    fn truncation_is_reported() {
        let mut b = Vec::new();
        encode_path("U/x", &mut b);
        encode_block(CODE_FILE_DATA, b"abcdef", &mut b);
        for cut in 0..b.len() {
            let r = read_all(&b[..cut], StreamKind::Download);
            assert!(
                matches!(r, Err(StreamError::Truncated { .. })),
                "cut {cut}: {r:?}"
            );
        }
    }

    #[test]
    fn writer_refuses_misuse() {
        let mut w = FileStreamWriter::new(Vec::new(), StreamKind::Upload);
        assert!(w.write_data(b"x").is_err());
        assert!(w
            .begin_file(&FileHeader {
                device_path: None,
                path: "U/x".into()
            })
            .is_err());
        let long = "a".repeat(MAX_STREAM_PATH_LEN as usize + 1);
        assert!(w.begin_file(&upload_header(&long)).is_err());
    }
}
