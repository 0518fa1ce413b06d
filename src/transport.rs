//! What every layer above usbmux sees: "open a byte stream to port N on the device".
//! Implemented by the usbmux core over a USB pipe, by a usbmuxd socket client, and by the simulator.

use std::io::{self, Read, Write};
use std::time::Duration;

/// A bidirectional byte stream to one service port on the device.
pub trait Duplex: Read + Write + Send {
    /// Sets how long a read may block before it fails with `TimedOut`/`WouldBlock`
    /// (`None` = forever). Streams that cannot time out ignore it.
    fn set_read_timeout(&self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    /// Closes both directions; later reads return EOF on the peer.
    fn shutdown(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A boxed device stream.
pub type BoxStream = Box<dyn Duplex>;

impl Duplex for std::net::TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, timeout)
    }
    fn shutdown(&self) -> io::Result<()> {
        std::net::TcpStream::shutdown(self, std::net::Shutdown::Both)
    }
}

impl Duplex for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
    fn shutdown(&self) -> io::Result<()> {
        std::os::unix::net::UnixStream::shutdown(self, std::net::Shutdown::Both)
    }
}

/// Opens streams to one attached device.
pub trait DeviceConnector: Send + Sync {
    /// The device's UDID (its USB serial number).
    fn udid(&self) -> &str;
    /// Opens a new stream to `port` on the device (lockdownd is 62078).
    fn connect(&self, port: u16) -> io::Result<BoxStream>;
}

/// lockdownd's well-known port.
pub const LOCKDOWN_PORT: u16 = 62078;
