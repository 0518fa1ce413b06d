//! Host-side clients of the side services a backup touches: notification_proxy (sync notifications),
//! AFC (sync lock, iTunes files), installation_proxy (app list) and springboardservices (icons).
//!
//! Each client runs over one `BoxStream` obtained from lockdown's StartService. The device side of
//! the same services, used by the simulated iPhone, lives in [`crate::sim::services`].

pub mod afc;
pub mod installation_proxy;
pub mod notification_proxy;
pub mod springboard;

use crate::plist_frame::{decode_body, FrameError};
use std::io::{self, Read};

/// Lockdown name of the notification proxy.
pub const NOTIFICATION_PROXY_SERVICE: &str = "com.apple.mobile.notification_proxy";
/// Lockdown name of the Apple File Conduit (the media partition).
pub const AFC_SERVICE: &str = "com.apple.afc";
/// Lockdown name of the installation proxy.
pub const INSTALLATION_PROXY_SERVICE: &str = "com.apple.mobile.installation_proxy";
/// Lockdown name of springboardservices.
pub const SPRINGBOARD_SERVICE: &str = "com.apple.springboardservices";

/// Bytes asked of the stream per read while assembling a frame.
const READ_CHUNK: usize = 16 * 1024;

/// Assembles `u32be length + plist` frames from a stream through a buffer, so that a read timeout
/// in the middle of a frame loses nothing: the partial bytes wait for the next call. Used where a
/// side polls a connection (notification relays) instead of blocking on it.
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    max: u32,
}

/// What one [`FrameReader::poll`] produced.
pub(crate) enum Polled {
    /// A whole frame.
    Frame(plist::Value),
    /// The read timed out before a whole frame arrived.
    TimedOut,
}

impl FrameReader {
    /// A reader refusing frames longer than `max` bytes.
    pub(crate) fn new(max: u32) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// A complete frame from the buffer, if one is there.
    fn take_frame(&mut self) -> Result<Option<plist::Value>, FrameError> {
        let Some(len_bytes) = self.buf.get(..4) else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(len_bytes);
        let len = u32::from_be_bytes(len);
        if len > self.max {
            return Err(FrameError::TooLong { len, max: self.max });
        }
        let end = 4 + len as usize;
        let Some(body) = self.buf.get(4..end) else {
            return Ok(None);
        };
        let value = decode_body(body);
        self.buf.drain(..end);
        value.map(Some)
    }

    /// Reads until a whole frame is buffered. A read timeout (`WouldBlock`/`TimedOut`, as set with
    /// `Duplex::set_read_timeout`) gives [`Polled::TimedOut`] and keeps any partial frame.
    pub(crate) fn poll<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<Polled, FrameError> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if let Some(v) = self.take_frame()? {
                return Ok(Polled::Frame(v));
            }
            match r.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Err(FrameError::Eof),
                Ok(0) => {
                    return Err(FrameError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed in the middle of a frame",
                    )))
                }
                Ok(n) => self
                    .buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(Polled::TimedOut)
                }
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }
}

/// The string at `key` of a dictionary value, if the value is a dictionary and the entry a string.
pub(crate) fn dict_str<'a>(v: &'a plist::Value, key: &str) -> Option<&'a str> {
    v.as_dictionary()?.get(key)?.as_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plist_frame::{encode, PlistFormat};

    /// Hands out its bytes in fixed slices, reporting a timeout between slices.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        timeout_next: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.timeout_next {
                self.timeout_next = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.timeout_next = true;
            let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn timeouts_mid_frame_lose_nothing() {
        let v = plist::Value::String("hello".into());
        let mut data = encode(&v, PlistFormat::Xml);
        data.extend(encode(&v, PlistFormat::Binary));
        let mut src = Trickle {
            data,
            pos: 0,
            step: 3,
            timeout_next: false,
        };
        let mut r = FrameReader::new(1024);
        let mut frames = 0;
        let mut timeouts = 0;
        while frames < 2 {
            match r.poll(&mut src).unwrap() {
                Polled::Frame(got) => {
                    assert_eq!(got, v);
                    frames += 1;
                }
                Polled::TimedOut => timeouts += 1,
            }
        }
        assert!(timeouts > 10);
        assert!(matches!(r.poll(&mut src), Ok(Polled::TimedOut)));
        assert!(matches!(r.poll(&mut src), Err(FrameError::Eof)));
    }

    #[test]
    fn refuses_long_frame_before_reading_it() {
        let mut r = FrameReader::new(100);
        let mut src: &[u8] = &[0, 0, 0, 101, b'x'];
        assert!(matches!(
            r.poll(&mut src),
            Err(FrameError::TooLong { len: 101, max: 100 })
        ));
    }

    #[test]
    fn eof_mid_frame_is_an_error_not_eof() {
        let mut r = FrameReader::new(100);
        let mut src: &[u8] = &[0, 0, 0, 10, b'<'];
        assert!(matches!(r.poll(&mut src), Err(FrameError::Io(_))));
    }
}
