//! The agent's end of a mobilebackup2 connection: writes are buffered and flushed before every
//! read, reads carry a deadline, and an upload byte budget simulates a cable pulled mid-transfer.

use super::{AgentError, Incoming};
use crate::backup2::dl;
use crate::backup2::messages::{names, DeviceMessage, HostMessage, StatusResponse};
use crate::plist_frame::FrameError;
use crate::transport::BoxStream;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Output is sent once this much is buffered (and before every read).
const OUT_BUFFER_LEN: usize = 256 * 1024;

/// A connection with write buffering, read deadlines and the simulated disconnect.
pub(crate) struct Conn {
    stream: BoxStream,
    out: Vec<u8>,
    /// Upload-stream bytes still allowed before the connection is cut (fault injection).
    cut_budget: Option<u64>,
    /// Whether written bytes count against `cut_budget` (only inside upload streams).
    counting: bool,
    /// The budget ran out: the connection was shut down on purpose.
    cut: bool,
}

/// Maps an I/O error on the connection to what it means for the session.
pub(crate) fn io_error(e: io::Error, waited: Duration) -> AgentError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected => AgentError::HostClosed,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => AgentError::HostTimeout(waited),
        _ => AgentError::Io(e),
    }
}

impl Conn {
    pub fn new(stream: BoxStream, cut_after_upload_bytes: Option<u64>) -> Self {
        Conn {
            stream,
            out: Vec::with_capacity(OUT_BUFFER_LEN),
            cut_budget: cut_after_upload_bytes,
            counting: false,
            cut: false,
        }
    }

    /// Starts or stops counting written bytes against the disconnect budget.
    pub fn set_counting(&mut self, on: bool) {
        self.counting = on;
    }

    /// Sends one message (and everything buffered before it).
    pub fn send(&mut self, msg: &DeviceMessage) -> Result<(), AgentError> {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        self.write_all(&bytes).map_err(|e| self.write_err(e))?;
        self.flush().map_err(|e| self.write_err(e))
    }

    /// Sends raw bytes as they are (fault injection).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        self.write_all(bytes).map_err(|e| self.write_err(e))?;
        self.flush().map_err(|e| self.write_err(e))
    }

    /// What a failed write means: the injected cut, or the host going away.
    pub fn write_err(&self, e: io::Error) -> AgentError {
        if self.cut {
            AgentError::Injected("disconnected in the middle of an upload")
        } else {
            io_error(e, Duration::ZERO)
        }
    }

    fn flush_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let res = self.stream.write_all(&self.out);
            self.out.clear();
            res?;
        }
        self.stream.flush()
    }

    fn recv_value(&mut self, timeout: Duration) -> Result<plist::Value, AgentError> {
        self.flush().map_err(|e| self.write_err(e))?;
        // A timeout inside a frame would lose the bytes read so far, so it ends the session.
        let _ = self
            .stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        dl::read_value(&mut self.stream).map_err(|e| match e {
            FrameError::Eof => AgentError::HostClosed,
            FrameError::Io(e) => io_error(e, timeout),
            other => AgentError::Protocol(other.to_string()),
        })
    }

    /// Receives one host message, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<HostMessage, AgentError> {
        let value = self.recv_value(timeout)?;
        HostMessage::decode(&value).map_err(|e| AgentError::Protocol(e.to_string()))
    }

    /// Receives the next request. A ProcessMessage whose dictionary is not understood (say, a
    /// Backup without TargetIdentifier) is returned as `BadRequest`, to be refused politely.
    pub fn recv_request(&mut self, timeout: Duration) -> Result<Incoming, AgentError> {
        let value = self.recv_value(timeout)?;
        match HostMessage::decode(&value) {
            Ok(m) => Ok(Incoming::Message(m)),
            Err(e) => match dl::split(&value) {
                Ok((names::PROCESS_MESSAGE, _)) => Ok(Incoming::BadRequest(e.to_string())),
                _ => Err(AgentError::Protocol(e.to_string())),
            },
        }
    }

    /// Receives the host's answer to a file operation. A Disconnect here is the host cancelling.
    pub fn status(&mut self, timeout: Duration, what: &str) -> Result<StatusResponse, AgentError> {
        loop {
            match self.recv(timeout)? {
                HostMessage::StatusResponse(st) => return Ok(st),
                HostMessage::Disconnect => return Err(AgentError::HostClosed),
                HostMessage::Unknown { name } => {
                    tracing::debug!(%name, "backup agent: ignored an unknown host message");
                }
                other => {
                    return Err(AgentError::Protocol(format!(
                        "expected the status response to {what}, got {}",
                        host_message_name(&other)
                    )))
                }
            }
        }
    }

    /// Sets the stream's read timeout for raw reads (download streams).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        let _ = self
            .stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
    }

    /// Waits up to `duration` without sending; returns early (with `HostClosed`) when the host
    /// sends anything or closes, since either means it gave up waiting.
    pub fn stall(&mut self, duration: Duration) -> Result<(), AgentError> {
        self.flush().map_err(|e| self.write_err(e))?;
        let deadline = Instant::now() + duration;
        let mut b = [0u8; 1];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut b) {
                Ok(_) => return Err(AgentError::HostClosed),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(AgentError::HostClosed),
            }
        }
    }

    /// After a deliberate protocol violation: reads and drops whatever the host still sends
    /// until it closes (at most `limit`), then closes this side.
    pub fn drain_until_closed(&mut self, limit: Duration) {
        let _ = self.flush();
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.shutdown();
    }

    /// Closes both directions.
    pub fn shutdown(&mut self) {
        let _ = self.stream.shutdown();
    }
}

fn host_message_name(m: &HostMessage) -> String {
    match m {
        HostMessage::VersionsOk { .. } => "DLVersionsOk".into(),
        HostMessage::ProcessMessage(r) => format!("the request {}", r.name()),
        HostMessage::StatusResponse(_) => "a status response".into(),
        HostMessage::Disconnect => "DLMessageDisconnect".into(),
        HostMessage::Unknown { name } => name.clone(),
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cut {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection cut"));
        }
        let mut take = buf.len();
        let mut cut_now = false;
        if self.counting {
            if let Some(left) = self.cut_budget.as_mut() {
                if (take as u64) >= *left {
                    take = *left as usize;
                    cut_now = true;
                }
                *left -= take as u64;
            }
        }
        self.out.extend_from_slice(&buf[..take]);
        if cut_now {
            // Everything up to the budget reaches the host, then the cable is "pulled".
            let _ = self.flush_out();
            self.cut = true;
            self.shutdown();
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection cut"));
        }
        if self.out.len() >= OUT_BUFFER_LEN {
            self.flush_out()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.cut {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection cut"));
        }
        self.flush_out()
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.flush()?;
        self.stream.read(buf)
    }
}
