//! Threads that run a usbmux core over a bulk pipe: `MuxHost` (the box's side, a
//! `DeviceConnector`) and `MuxDevice` (the simulated iPhone's side, handing streams to its ports).
//!
//! Two threads per link: a reader that feeds transfers into the core, and a writer that sends
//! what the core queues and fires its timers. Streams are blocking `Read + Write` objects that
//! call into the core under one mutex. Only these threads read the clock.

use super::mux::{CloseReason, ConnId, MuxCore, MuxEvent, StreamError};
use super::pipe::{BulkIn, BulkOut, BulkPipe, PipeError};
use crate::sim::device::DevicePorts;
use crate::transport::{BoxStream, DeviceConnector, Duplex};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `MuxHost::start` waits for the device's VERSION reply.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `connect` waits for SYN|ACK.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a blocked pipe read wakes to notice a shutdown.
const READ_POLL: Duration = Duration::from_millis(250);
/// The writer thread's idle wake-up when no timer is armed.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Errors starting a link.
#[derive(Debug, thiserror::Error)]
pub enum MuxLinkError {
    /// The device did not answer the VERSION request in time.
    #[error("the device did not answer the usbmux VERSION request within {0:?}")]
    HandshakeTimeout(Duration),
    /// The handshake failed (unsupported version, pipe error, unplug).
    #[error("usbmux handshake failed: {0}")]
    Failed(String),
    /// A thread could not be started.
    #[error("cannot start a usbmux thread: {0}")]
    Spawn(io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectStatus {
    Pending,
    Connected,
    Refused,
}

struct State {
    core: MuxCore,
    ready: bool,
    /// Why the link is down, once it is.
    down: Option<String>,
    connects: HashMap<ConnId, ConnectStatus>,
    incoming: VecDeque<(ConnId, u16)>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes streams and connect/handshake waiters.
    streams: Condvar,
    /// Wakes the writer thread.
    writer: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the core's events to the shared state and wakes everyone who may care.
    fn settle(&self, st: &mut State) {
        while let Some(e) = st.core.poll_event() {
            match e {
                MuxEvent::Ready { .. } => st.ready = true,
                MuxEvent::Connected(c) => {
                    st.connects.insert(c, ConnectStatus::Connected);
                }
                MuxEvent::Refused(c) => {
                    st.connects.insert(c, ConnectStatus::Refused);
                }
                MuxEvent::Incoming { conn, port } => st.incoming.push_back((conn, port)),
                MuxEvent::Failed(e) => {
                    if st.down.is_none() {
                        st.down = Some(e.to_string());
                    }
                }
                MuxEvent::Readable(_) | MuxEvent::Writable(_) | MuxEvent::Closed { .. } => {}
            }
        }
        self.streams.notify_all();
        self.writer.notify_all();
    }

    fn shut_down(&self, why: &str) {
        self.stop.store(true, Ordering::SeqCst);
        let mut st = self.lock();
        st.core.fail(why);
        self.settle(&mut st);
    }

    /// Waits on `streams` for a wake-up, at most until `deadline`.
    fn wait_until<'a>(
        &self,
        st: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> MutexGuard<'a, State> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.streams
            .wait_timeout(st, left)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Takes the link down with `why` and joins its threads.
    fn stop_and_join(&self, why: &str, threads: &Mutex<Vec<JoinHandle<()>>>) {
        self.shut_down(why);
        let threads: Vec<_> = threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, MuxLinkError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(MuxLinkError::Spawn)
}

/// Starts the reader and writer threads for `core` over `pipe`.
fn start_link(
    pipe: Box<dyn BulkPipe>,
    core: MuxCore,
    ports: Option<Arc<dyn DevicePorts>>,
) -> Result<(Arc<Shared>, Vec<JoinHandle<()>>), MuxLinkError> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            core,
            ready: false,
            down: None,
            connects: HashMap::new(),
            incoming: VecDeque::new(),
        }),
        streams: Condvar::new(),
        writer: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    let (rx, tx) = pipe.split();
    let s1 = shared.clone();
    let reader = spawn("usbmux-rx", move || reader_loop(s1, rx, ports))?;
    let s2 = shared.clone();
    let writer = match spawn("usbmux-tx", move || writer_loop(s2, tx)) {
        Ok(w) => w,
        Err(e) => {
            shared.shut_down("could not start the writer thread");
            let _ = reader.join();
            return Err(e);
        }
    };
    Ok((shared, vec![reader, writer]))
}

fn pipe_down_reason(e: &PipeError) -> String {
    match e {
        PipeError::Disconnected => "the device was disconnected".into(),
        other => other.to_string(),
    }
}

fn reader_loop(shared: Arc<Shared>, mut rx: Box<dyn BulkIn>, ports: Option<Arc<dyn DevicePorts>>) {
    let mut buf = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match rx.read_transfer(&mut buf, READ_POLL) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                shared.shut_down(&pipe_down_reason(&e));
                return;
            }
        }
        let incoming: Vec<(ConnId, u16)> = {
            let mut st = shared.lock();
            if let Err(e) = st.core.handle_transfer(&buf, Instant::now()) {
                if e.is_fatal() {
                    tracing::warn!("usbmux: link failed: {e}");
                } else {
                    tracing::debug!("usbmux: dropped a packet: {e}");
                }
            }
            shared.settle(&mut st);
            st.incoming.drain(..).collect()
        };
        for (conn, port) in incoming {
            let Some(ports) = &ports else {
                let mut st = shared.lock();
                st.core.close(conn);
                shared.settle(&mut st);
                continue;
            };
            let stream = MuxStream::new(shared.clone(), conn);
            // The stream may be written to before accept() runs; such writes wait until the
            // connection is established.
            match ports.accept(port, Box::new(stream)) {
                Ok(()) => {
                    let mut st = shared.lock();
                    let _ = st.core.accept(conn);
                    shared.settle(&mut st);
                }
                // Dropping the refused stream closes it, which sends the RST.
                Err(stream) => drop(stream),
            }
        }
    }
}

fn writer_loop(shared: Arc<Shared>, mut tx: Box<dyn BulkOut>) {
    let mut st = shared.lock();
    loop {
        if let Some(t) = st.core.poll_transmit() {
            drop(st);
            let res = tx.write_transfer(&t);
            if let Err(e) = res {
                shared.shut_down(&pipe_down_reason(&e));
                return;
            }
            st = shared.lock();
            continue;
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        st.core.handle_timeout(now);
        shared.settle(&mut st);
        if st.core.has_transmit() {
            continue;
        }
        let wait = st
            .core
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(IDLE_WAKE)
            .min(IDLE_WAKE);
        st = shared
            .writer
            .wait_timeout(st, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// A stream to one port over usbmux: blocking reads and writes, optional read timeout.
pub struct MuxStream {
    shared: Arc<Shared>,
    conn: ConnId,
    read_timeout: Mutex<Option<Duration>>,
    /// Set once the connection ended, so later calls answer the same way.
    ended: Mutex<Option<CloseReason>>,
}

impl MuxStream {
    fn new(shared: Arc<Shared>, conn: ConnId) -> MuxStream {
        MuxStream {
            shared,
            conn,
            read_timeout: Mutex::new(None),
            ended: Mutex::new(None),
        }
    }

    fn end(&self, r: CloseReason) {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    fn ended(&self) -> Option<CloseReason> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn closed_error(r: &CloseReason) -> io::Error {
    let kind = match r {
        CloseReason::PeerReset(_) => io::ErrorKind::ConnectionReset,
        CloseReason::MuxDown(_) => io::ErrorKind::NotConnected,
        CloseReason::PeerProtocol(_) | CloseReason::Overflow => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, format!("usbmux connection {r}"))
}

impl Read for MuxStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(r) = self.ended() {
            // A reset is how usbmux ends a connection: end of stream. Anything else repeats.
            return match r {
                CloseReason::PeerReset(_) => Ok(0),
                other => Err(closed_error(&other)),
            };
        }
        let timeout = *self.read_timeout.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            match st.core.recv(self.conn, buf) {
                Ok(n) => {
                    // Reading may have queued an ACK.
                    self.shared.writer.notify_all();
                    return Ok(n);
                }
                Err(StreamError::Blocked) => {}
                Err(StreamError::Closed(r)) => {
                    self.end(r.clone());
                    return match r {
                        CloseReason::PeerReset(_) => Ok(0),
                        other => Err(closed_error(&other)),
                    };
                }
                Err(StreamError::MuxDown(w)) => {
                    let r = CloseReason::MuxDown(w);
                    self.end(r.clone());
                    return Err(closed_error(&r));
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::NotConnected, e)),
            }
            st = match deadline {
                None => self
                    .shared
                    .streams
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    if Instant::now() >= d {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "usbmux read timed out",
                        ));
                    }
                    self.shared.wait_until(st, d)
                }
            };
        }
    }
}

impl Write for MuxStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if let Some(r) = self.ended() {
            return Err(match r {
                CloseReason::PeerReset(_) => {
                    io::Error::new(io::ErrorKind::BrokenPipe, format!("usbmux connection {r}"))
                }
                other => closed_error(&other),
            });
        }
        let mut st = self.shared.lock();
        loop {
            match st.core.send(self.conn, data) {
                Ok(n) => {
                    self.shared.writer.notify_all();
                    return Ok(n);
                }
                Err(StreamError::Blocked) => {}
                Err(StreamError::Closed(r)) => {
                    return Err(match r {
                        CloseReason::PeerReset(_) => io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            format!("usbmux connection {r}"),
                        ),
                        other => closed_error(&other),
                    })
                }
                Err(StreamError::MuxDown(w)) => {
                    return Err(closed_error(&CloseReason::MuxDown(w)));
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::BrokenPipe, e)),
            }
            st = self
                .shared
                .streams
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Data is queued for the writer thread as soon as `write` returns.
        Ok(())
    }
}

impl Duplex for MuxStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a zero read timeout is not allowed",
            ));
        }
        *self.read_timeout.lock().unwrap_or_else(|p| p.into_inner()) = timeout;
        Ok(())
    }

    fn shutdown(&self) -> io::Result<()> {
        let mut st = self.shared.lock();
        st.core.close(self.conn);
        self.shared.settle(&mut st);
        drop(st);
        self.end(CloseReason::PeerReset(Some("closed locally".into())));
        Ok(())
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.core.close(self.conn);
        self.shared.settle(&mut st);
    }
}

/// The host end of a usbmux link: opens streams to the device's ports.
pub struct MuxHost {
    shared: Arc<Shared>,
    udid: String,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl MuxHost {
    /// Starts the link over `pipe` and waits for the version handshake.
    pub fn start<P: BulkPipe + 'static>(pipe: P, udid: &str) -> Result<Arc<MuxHost>, MuxLinkError> {
        let (shared, threads) = start_link(Box::new(pipe), MuxCore::host(), None)?;
        let host = Arc::new(MuxHost {
            shared,
            udid: udid.to_string(),
            threads: Mutex::new(threads),
        });
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut st = host.shared.lock();
        loop {
            if st.ready {
                break;
            }
            if let Some(why) = &st.down {
                return Err(MuxLinkError::Failed(why.clone()));
            }
            if Instant::now() >= deadline {
                drop(st);
                host.shutdown();
                return Err(MuxLinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT));
            }
            st = host.shared.wait_until(st, deadline);
        }
        drop(st);
        Ok(host)
    }

    /// Whether the device is still there (no unplug, no link failure).
    pub fn is_attached(&self) -> bool {
        self.shared.lock().down.is_none()
    }

    /// Why the link went down, if it did.
    pub fn detach_reason(&self) -> Option<String> {
        self.shared.lock().down.clone()
    }

    /// Waits until the link goes down or `timeout` passes; returns whether it went down.
    pub fn wait_detached(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.down.is_none() {
            if Instant::now() >= deadline {
                return false;
            }
            st = self.shared.wait_until(st, deadline);
        }
        true
    }

    /// Stops the threads; open streams fail with `NotConnected`.
    pub fn shutdown(&self) {
        self.shared
            .stop_and_join("the usbmux host was shut down", &self.threads);
    }
}

impl Drop for MuxHost {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl DeviceConnector for MuxHost {
    fn udid(&self) -> &str {
        &self.udid
    }

    fn connect(&self, port: u16) -> io::Result<BoxStream> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut st = self.shared.lock();
        if let Some(why) = &st.down {
            return Err(io::Error::new(io::ErrorKind::NotConnected, why.clone()));
        }
        let conn = st.core.connect(port).map_err(|e| match e {
            StreamError::MuxDown(w) => io::Error::new(io::ErrorKind::NotConnected, w),
            other => io::Error::other(other),
        })?;
        st.connects.insert(conn, ConnectStatus::Pending);
        self.shared.settle(&mut st);
        loop {
            match st.connects.get(&conn).copied() {
                Some(ConnectStatus::Connected) => {
                    st.connects.remove(&conn);
                    drop(st);
                    return Ok(Box::new(MuxStream::new(self.shared.clone(), conn)));
                }
                Some(ConnectStatus::Refused) => {
                    st.connects.remove(&conn);
                    if let Some(why) = &st.down {
                        return Err(io::Error::new(io::ErrorKind::NotConnected, why.clone()));
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("the device refused a connection to port {port}"),
                    ));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                st.connects.remove(&conn);
                st.core.close(conn);
                self.shared.settle(&mut st);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from the device to a connection to port {port}"),
                ));
            }
            st = self.shared.wait_until(st, deadline);
        }
    }
}

/// The device end of a usbmux link (the simulated iPhone): accepted connections go to `ports`.
pub struct MuxDevice {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl MuxDevice {
    /// Starts serving over `pipe`; the host drives the handshake.
    pub fn start<P: BulkPipe + 'static>(
        pipe: P,
        ports: Arc<dyn DevicePorts>,
    ) -> Result<Arc<MuxDevice>, MuxLinkError> {
        let (shared, threads) = start_link(Box::new(pipe), MuxCore::device(), Some(ports))?;
        Ok(Arc::new(MuxDevice {
            shared,
            threads: Mutex::new(threads),
        }))
    }

    /// Whether the host finished the handshake.
    pub fn is_ready(&self) -> bool {
        self.shared.lock().ready
    }

    /// Whether the link is still up.
    pub fn is_attached(&self) -> bool {
        self.shared.lock().down.is_none()
    }

    /// Stops the threads; open streams fail with `NotConnected`.
    pub fn shutdown(&self) {
        self.shared
            .stop_and_join("the usbmux device was shut down", &self.threads);
    }
}

impl Drop for MuxDevice {
    fn drop(&mut self) {
        self.shutdown();
    }
}
