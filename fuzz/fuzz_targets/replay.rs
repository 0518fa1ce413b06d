//! A peer for fuzz targets that drive a whole service or client: it sends the fuzzed bytes,
//! then closes, and swallows whatever is written to it.

use cradle::transport::Duplex;
use std::io::{self, Read, Write};

/// A connection whose peer sends the given bytes and then closes; writes are discarded.
pub struct Replay(io::Cursor<Vec<u8>>);

impl Replay {
    pub fn new(data: &[u8]) -> Self {
        Replay(io::Cursor::new(data.to_vec()))
    }
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Duplex for Replay {}
