//! The usbmux connection layer as a sans-IO state machine, for either end of the cable: the
//! version handshake, SETUP, and the small TCP-like layer (SYN, SYN|ACK, ACK, RST, windows).
//!
//! Fully deterministic: no I/O, no clock. The caller passes time in (`now`) and moves bytes.
//! Methods come in four kinds, as in quinn-proto:
//! * getters (`role`, `is_ready`, `is_failed`);
//! * `handle_transfer` (one USB transfer that arrived) and `handle_timeout` (time passed);
//! * mutators (`connect`, `accept`, `close`, `send`, `recv`, `fail`);
//! * `poll_transmit` (one USB transfer to send), `poll_event`, `poll_timeout`.
//!
//! After any `handle_*` or mutator call, drain `poll_transmit` and `poll_event`, then arm a timer
//! for `poll_timeout`.

pub mod packet;

use packet::{
    Body, CodecError, HeaderKind, MuxHeader, Packet, TcpHeader, ACK, MAX_PACKET_LEN, PROTO_CONTROL,
    PROTO_SETUP, PROTO_TCP, PROTO_VERSION, RST, SYN, TCP_HEADER_LEN, V1_HEADER_LEN, V2_HEADER_LEN,
};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Receive window both ends advertise (131072 bytes = 512 units of 256).
pub const RECV_WINDOW: u32 = 131_072;
/// Bytes a connection may hold that its reader has not taken; more aborts the connection.
pub const RECV_BUFFER_CAP: usize = 262_144;
/// Largest host→device packet (usbmuxd's USB_MTU), so the payload is at most 49116 bytes.
pub const HOST_MAX_PACKET: usize = 49_152;
/// Largest device→host packet.
pub const DEVICE_MAX_PACKET: usize = MAX_PACKET_LEN;
/// usbmuxd never has more than this in one packet (its per-connection output buffer).
pub const MAX_SEND_CHUNK: usize = 65_536;
/// A consumed-but-unacknowledged amount that is acknowledged at once rather than delayed.
pub const EAGER_ACK_BYTES: u32 = RECV_WINDOW / 4;
/// How long an acknowledgement of consumed data may wait (usbmuxd's ACK_TIMEOUT).
pub const DELAYED_ACK: Duration = Duration::from_millis(30);
/// Most simultaneous connections per device.
pub const MAX_CONNECTIONS: usize = 1024;
/// The SETUP payload the host sends.
pub const SETUP_PAYLOAD: u8 = 0x07;

/// Which end of the cable this core plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Host,
    Device,
}

/// A connection handle, unique for the life of a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer sent RST (with its reason text, if any).
    PeerReset(Option<String>),
    /// The peer broke the rules (flags other than ACK on an open connection).
    PeerProtocol(String),
    /// The peer sent more than [`RECV_BUFFER_CAP`] unread bytes.
    Overflow,
    /// The whole mux failed or the device went away.
    MuxDown(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::PeerReset(Some(r)) => write!(f, "reset by the peer: {r}"),
            CloseReason::PeerReset(None) => write!(f, "reset by the peer"),
            CloseReason::PeerProtocol(w) => write!(f, "peer broke the usbmux rules: {w}"),
            CloseReason::Overflow => {
                write!(f, "peer overran the {RECV_BUFFER_CAP}-byte receive buffer")
            }
            CloseReason::MuxDown(w) => write!(f, "usbmux link down: {w}"),
        }
    }
}

/// What happened, for the caller to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// The version handshake finished; connections can be used.
    Ready { version: u32 },
    /// Host: the device accepted a connection.
    Connected(ConnId),
    /// Host: the device refused a connection (or answered anything but SYN|ACK).
    Refused(ConnId),
    /// Device: the host wants `port`; answer with `accept` or `close`.
    Incoming { conn: ConnId, port: u16 },
    /// Data is waiting in `recv`.
    Readable(ConnId),
    /// A `send` that was cut short can continue.
    Writable(ConnId),
    /// The connection ended. Data already received can still be read.
    Closed { conn: ConnId, reason: CloseReason },
    /// The mux failed for good; every connection was closed.
    Failed(MuxError),
}

/// Faults of the peer or of the link, reported by `handle_transfer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// A packet could not be decoded; it (and the rest of its transfer) was dropped.
    #[error("malformed usbmux packet: {0}")]
    Malformed(#[from] CodecError),
    /// The peer's VERSION names a major version this side does not speak (fatal).
    #[error("peer speaks usbmux version {major}.{minor}; 1 and 2 are supported")]
    UnsupportedVersion { major: u32, minor: u32 },
    /// A packet arrived that the handshake state does not allow; it was dropped.
    #[error("unexpected usbmux protocol {protocol} packet while {phase}")]
    UnexpectedPacket { protocol: u32, phase: &'static str },
    /// SETUP with a payload other than 0x07; ignored.
    #[error("SETUP packet with payload {0:02x?} instead of [07]")]
    BadSetup(Vec<u8>),
    /// The link went down (set by [`MuxCore::fail`]).
    #[error("usbmux link down: {0}")]
    LinkDown(String),
}

impl MuxError {
    /// Whether the core gave up (all connections closed).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            MuxError::UnsupportedVersion { .. } | MuxError::LinkDown(_)
        )
    }
}

/// Local misuse or state of the stream API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// Nothing to read yet, or the peer's window is full.
    #[error("would block")]
    Blocked,
    /// The connection ended (after any buffered data was read).
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// No such connection (already reaped, or never opened here).
    #[error("unknown usbmux connection {0:?}")]
    UnknownConnection(ConnId),
    /// The operation belongs to the other role (connect on a device, accept on a host).
    #[error("operation not available on the {0:?} side")]
    WrongRole(Role),
    /// Every source port is in use.
    #[error("too many usbmux connections (at most {MAX_CONNECTIONS})")]
    TooManyConnections,
    /// The mux failed or the device is gone.
    #[error("usbmux link down: {0}")]
    MuxDown(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Host: VERSION sent, waiting for the reply.
    HostAwaitVersion,
    /// Device: waiting for the host's VERSION.
    DeviceAwaitVersion,
    /// Device: replied VERSION 2, waiting for SETUP.
    DeviceAwaitSetup,
    Active,
    Failed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::HostAwaitVersion => "waiting for the device's VERSION",
            Phase::DeviceAwaitVersion => "waiting for the host's VERSION",
            Phase::DeviceAwaitSetup => "waiting for SETUP",
            Phase::Active => "active",
            Phase::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ConnState {
    /// Host: connect() before the handshake finished; SYN goes out on Ready.
    SynQueued,
    /// Host: SYN sent.
    SynSent,
    /// Device: SYN received, waiting for accept/close.
    SynReceived,
    Established,
    /// Peer closed; buffered data may remain.
    Closed(CloseReason),
}

#[derive(Debug)]
struct Conn {
    local_port: u16,
    remote_port: u16,
    state: ConnState,
    /// Next sequence number to send.
    tx_seq: u32,
    /// Our acknowledgement: 1 + bytes the reader has taken.
    tx_ack: u32,
    /// The acknowledgement value last sent.
    acked_sent: u32,
    /// When an ACK was last sent (for the delayed ACK).
    ack_sent_at: Option<Instant>,
    /// Peer's last acknowledgement of our data.
    peer_ack: u32,
    /// Peer's window in bytes.
    peer_window: u32,
    rx: VecDeque<u8>,
    /// In the prompt-ACK queue.
    ack_queued: bool,
    /// Consumed data waits for a delayed ACK.
    delayed_ack: bool,
    readable_signalled: bool,
    write_blocked: bool,
}

impl Conn {
    fn new(local_port: u16, remote_port: u16, state: ConnState) -> Conn {
        Conn {
            local_port,
            remote_port,
            state,
            tx_seq: 0,
            tx_ack: 0,
            acked_sent: 0,
            ack_sent_at: None,
            peer_ack: 0,
            peer_window: 0,
            rx: VecDeque::new(),
            ack_queued: false,
            delayed_ack: false,
            readable_signalled: false,
            write_blocked: false,
        }
    }

    /// Bytes the peer's window allows now.
    fn sendable(&self) -> u32 {
        let in_flight = self.tx_seq.wrapping_sub(self.peer_ack);
        self.peer_window.saturating_sub(in_flight)
    }
}

/// The usbmux state machine for one device link.
#[derive(Debug)]
pub struct MuxCore {
    role: Role,
    phase: Phase,
    version: u32,
    /// Header-level sequence counters (v2 only).
    hdr_tx_seq: u16,
    hdr_rx_seq: u16,
    conns: HashMap<ConnId, Conn>,
    by_ports: HashMap<(u16, u16), ConnId>,
    next_conn: u64,
    next_sport: u16,
    transmit: VecDeque<Vec<u8>>,
    ack_queue: VecDeque<ConnId>,
    events: VecDeque<MuxEvent>,
    /// Bytes of a packet split over several transfers.
    partial: Vec<u8>,
    /// The latest time handed in.
    now: Option<Instant>,
}

impl MuxCore {
    /// The host end: queues the VERSION request at once.
    pub fn host() -> MuxCore {
        let mut c = MuxCore::new(Role::Host, Phase::HostAwaitVersion);
        let version = Packet {
            header: MuxHeader {
                protocol: PROTO_VERSION,
                length: 0,
                seq: None,
            },
            body: Body::Version { major: 2, minor: 0 },
        };
        c.transmit.push_back(version.to_vec());
        c
    }

    /// The device end: waits for the host's VERSION.
    pub fn device() -> MuxCore {
        MuxCore::new(Role::Device, Phase::DeviceAwaitVersion)
    }

    fn new(role: Role, phase: Phase) -> MuxCore {
        MuxCore {
            role,
            phase,
            version: 0,
            hdr_tx_seq: 0,
            hdr_rx_seq: 0,
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            next_conn: 1,
            next_sport: 1,
            transmit: VecDeque::new(),
            ack_queue: VecDeque::new(),
            events: VecDeque::new(),
            partial: Vec::new(),
            now: None,
        }
    }

    // ---- getters -------------------------------------------------------------------------

    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the handshake finished and the link is up.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Active
    }

    /// Whether the core gave up.
    pub fn is_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    /// The negotiated usbmux major version (0 before the handshake).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether `poll_transmit` has something to hand out.
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty() || !self.ack_queue.is_empty()
    }

    /// Bytes waiting to be read on `conn`.
    pub fn readable_bytes(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.rx.len())
    }

    /// Whether `conn` is open for data (established and not closed).
    pub fn is_established(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.state == ConnState::Established)
    }

    /// The device port a connection goes to (host) or arrived on (device).
    pub fn port(&self, conn: ConnId) -> Option<u16> {
        self.conns.get(&conn).map(|c| match self.role {
            Role::Host => c.remote_port,
            Role::Device => c.local_port,
        })
    }

    fn header_kind(&self) -> HeaderKind {
        match self.phase {
            Phase::HostAwaitVersion | Phase::DeviceAwaitVersion => HeaderKind::V1,
            _ if self.version >= 2 => HeaderKind::V2,
            _ => HeaderKind::V1,
        }
    }

    fn max_payload(&self) -> usize {
        let hlen = if self.version >= 2 {
            V2_HEADER_LEN
        } else {
            V1_HEADER_LEN
        };
        let max_packet = match self.role {
            Role::Host => HOST_MAX_PACKET,
            Role::Device => DEVICE_MAX_PACKET,
        };
        (max_packet - hlen - TCP_HEADER_LEN).min(MAX_SEND_CHUNK)
    }

    // ---- input ---------------------------------------------------------------------------

    /// Feeds one USB transfer. Packets split over several transfers (the host reads in
    /// 16 KiB pieces) are reassembled; several packets in one transfer are all handled.
    /// An error means something was dropped; see [`MuxError::is_fatal`].
    pub fn handle_transfer(&mut self, bytes: &[u8], now: Instant) -> Result<(), MuxError> {
        self.now = Some(now);
        if self.phase == Phase::Failed {
            return Ok(());
        }
        if !self.partial.is_empty() {
            // A packet was split over transfers: finish it from this one.
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(bytes);
            return self.handle_stream(&buf);
        }
        self.handle_stream(bytes)
    }

    /// Handles back-to-back packets; keeps an incomplete tail in `partial`.
    fn handle_stream(&mut self, mut bytes: &[u8]) -> Result<(), MuxError> {
        let mut result = Ok(());
        while !bytes.is_empty() && self.phase != Phase::Failed {
            let Some(len) = packet::peek_length(bytes) else {
                self.partial.extend_from_slice(bytes);
                break;
            };
            if !(V1_HEADER_LEN..=MAX_PACKET_LEN).contains(&len) {
                // No way to find the next packet boundary: drop the rest of this transfer.
                return Err(MuxError::Malformed(if len > MAX_PACKET_LEN {
                    CodecError::TooLong {
                        declared: len,
                        max: MAX_PACKET_LEN,
                    }
                } else {
                    CodecError::Truncated {
                        have: len,
                        need: V1_HEADER_LEN,
                    }
                }));
            }
            if bytes.len() < len {
                self.partial.extend_from_slice(bytes);
                break;
            }
            let (one, rest) = bytes.split_at(len);
            if let Err(e) = self.handle_one(one) {
                if e.is_fatal() {
                    return Err(e);
                }
                result = Err(e);
            }
            bytes = rest;
        }
        result
    }

    fn handle_one(&mut self, bytes: &[u8]) -> Result<(), MuxError> {
        let kind = self.header_kind();
        let p = Packet::decode(bytes, kind)?;
        if let Some((tx, rx)) = p.header.seq {
            // The host repeats the rx_seq field the device last sent (usbmuxd); the device
            // echoes the host's tx_seq, which is what the field means.
            self.hdr_rx_seq = match self.role {
                Role::Host => rx,
                Role::Device => tx,
            };
        }
        match (self.phase, p.body) {
            (Phase::HostAwaitVersion, Body::Version { major, minor }) => {
                if major != 1 && major != 2 {
                    let e = MuxError::UnsupportedVersion { major, minor };
                    self.fail_with(e.clone());
                    return Err(e);
                }
                self.version = major;
                self.phase = Phase::Active;
                if major >= 2 {
                    // SETUP resets the header counters: it goes out with tx 0, rx 0xFFFF.
                    self.hdr_tx_seq = 0;
                    self.hdr_rx_seq = 0xFFFF;
                    self.queue_packet(Body::Setup(&[SETUP_PAYLOAD]));
                }
                self.become_active();
                Ok(())
            }
            (Phase::DeviceAwaitVersion, Body::Version { major, .. }) => {
                // Answer with the highest version both speak.
                let reply = if major >= 2 { 2 } else { 1 };
                if major == 0 {
                    let e = MuxError::UnsupportedVersion { major, minor: 0 };
                    self.fail_with(e.clone());
                    return Err(e);
                }
                let p = Packet {
                    header: MuxHeader {
                        protocol: PROTO_VERSION,
                        length: 0,
                        seq: None,
                    },
                    body: Body::Version {
                        major: reply,
                        minor: 0,
                    },
                };
                self.transmit.push_back(p.to_vec());
                self.version = reply;
                if reply >= 2 {
                    self.phase = Phase::DeviceAwaitSetup;
                } else {
                    self.become_active();
                }
                Ok(())
            }
            (Phase::DeviceAwaitSetup, Body::Setup(payload)) => {
                if payload != [SETUP_PAYLOAD] {
                    tracing::warn!("usbmux: SETUP payload {payload:02x?}, expected [07]");
                }
                self.become_active();
                Ok(())
            }
            (Phase::Active, Body::Version { .. }) => {
                tracing::warn!("usbmux: VERSION packet on an active link, ignored");
                Ok(())
            }
            (_, Body::Control(payload)) => {
                log_control(payload);
                Ok(())
            }
            (Phase::Active, Body::Setup(payload)) => {
                if self.role == Role::Device && payload == [SETUP_PAYLOAD] {
                    // A host that re-sends SETUP resets its counters; nothing to do here.
                    return Ok(());
                }
                Err(MuxError::BadSetup(payload.to_vec()))
            }
            (Phase::Active, Body::Tcp { tcp, payload }) => {
                self.handle_tcp(tcp, payload);
                Ok(())
            }
            (phase, body) => Err(MuxError::UnexpectedPacket {
                protocol: match body {
                    Body::Version { .. } => PROTO_VERSION,
                    Body::Control(_) => PROTO_CONTROL,
                    Body::Setup(_) => PROTO_SETUP,
                    Body::Tcp { .. } => PROTO_TCP,
                    Body::Unknown { protocol, .. } => protocol,
                },
                phase: phase.name(),
            }),
        }
    }

    fn become_active(&mut self) {
        self.phase = Phase::Active;
        self.events.push_back(MuxEvent::Ready {
            version: self.version,
        });
        // Host: SYNs requested before the handshake go out now.
        let mut queued: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == ConnState::SynQueued)
            .map(|(id, _)| *id)
            .collect();
        queued.sort();
        for id in queued {
            self.send_syn(id);
        }
    }

    fn handle_tcp(&mut self, tcp: TcpHeader, payload: &[u8]) {
        // Our local port is the packet's destination.
        let key = (tcp.dport, tcp.sport);
        let Some(&id) = self.by_ports.get(&key) else {
            self.handle_unknown_pair(tcp);
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.peer_window = u32::from(tcp.window) << 8;
        conn.peer_ack = tcp.ack;
        let state = conn.state.clone();
        let reason_text = || {
            let t = String::from_utf8_lossy(payload);
            let t = t.trim_end_matches(['\n', '\0']).to_string();
            (!t.is_empty()).then_some(t)
        };
        match state {
            ConnState::SynSent => {
                if tcp.flags == SYN | ACK {
                    conn.tx_seq = 1;
                    conn.tx_ack = 1;
                    conn.state = ConnState::Established;
                    self.events.push_back(MuxEvent::Connected(id));
                    self.send_bare(id, ACK);
                    return;
                }
                if tcp.flags & RST == 0 {
                    // usbmuxd answers anything but SYN|ACK or RST with its own RST.
                    self.send_bare(id, RST);
                } else if let Some(r) = reason_text() {
                    tracing::debug!("usbmux: connection refused: {r}");
                }
                self.remove(id);
                self.events.push_back(MuxEvent::Refused(id));
            }
            ConnState::Established => {
                if tcp.flags != ACK {
                    let reason = if tcp.flags & RST != 0 {
                        CloseReason::PeerReset(reason_text())
                    } else {
                        self.send_bare(id, RST);
                        CloseReason::PeerProtocol(format!(
                            "TCP flags {:#04x} on an open connection",
                            tcp.flags
                        ))
                    };
                    self.peer_closed(id, reason);
                    return;
                }
                if !payload.is_empty() {
                    if conn.rx.len() + payload.len() > RECV_BUFFER_CAP {
                        self.send_bare(id, RST);
                        self.peer_closed(id, CloseReason::Overflow);
                        return;
                    }
                    conn.rx.extend(payload);
                    if !conn.readable_signalled {
                        conn.readable_signalled = true;
                        self.events.push_back(MuxEvent::Readable(id));
                    }
                }
                if conn.write_blocked && conn.sendable() > 0 {
                    conn.write_blocked = false;
                    self.events.push_back(MuxEvent::Writable(id));
                }
                if !payload.is_empty() {
                    // Peers like prompt ACKs (usbmuxd ACKs every data packet).
                    self.queue_ack(id);
                }
            }
            ConnState::SynReceived => {
                // The host gave up before we answered (RST), or broke the handshake.
                if tcp.flags & RST != 0 {
                    self.peer_closed(id, CloseReason::PeerReset(reason_text()));
                } else if tcp.flags != SYN {
                    self.send_bare(id, RST);
                    self.peer_closed(
                        id,
                        CloseReason::PeerProtocol(format!(
                            "TCP flags {:#04x} before the connection was accepted",
                            tcp.flags
                        )),
                    );
                }
            }
            ConnState::SynQueued | ConnState::Closed(_) => {}
        }
    }

    fn handle_unknown_pair(&mut self, tcp: TcpHeader) {
        if self.role == Role::Device && tcp.flags == SYN {
            if self.conns.len() >= MAX_CONNECTIONS {
                self.send_anonymous_rst(tcp);
                return;
            }
            let id = self.new_conn(tcp.dport, tcp.sport, ConnState::SynReceived);
            if let Some(c) = self.conns.get_mut(&id) {
                c.peer_window = u32::from(tcp.window) << 8;
            }
            self.events.push_back(MuxEvent::Incoming {
                conn: id,
                port: tcp.dport,
            });
            return;
        }
        if tcp.flags & RST == 0 {
            tracing::debug!(
                "usbmux: packet for unknown connection {}->{}, answering RST",
                tcp.sport,
                tcp.dport
            );
            self.send_anonymous_rst(tcp);
        }
    }

    fn send_anonymous_rst(&mut self, tcp: TcpHeader) {
        let h = TcpHeader {
            sport: tcp.dport,
            dport: tcp.sport,
            seq: 0,
            ack: tcp.seq,
            flags: RST,
            window: 0,
        };
        self.queue_packet(Body::Tcp {
            tcp: h,
            payload: &[],
        });
    }

    /// Advances time: delayed ACKs that are due go out.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.delayed_ack && c.ack_sent_at.is_none_or(|t| now >= t + DELAYED_ACK))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.queue_ack(id);
        }
    }

    // ---- mutators ------------------------------------------------------------------------

    /// Host: opens a connection to device `port`. The SYN goes out now, or when the handshake
    /// finishes. Watch for `Connected` or `Refused`.
    pub fn connect(&mut self, port: u16) -> Result<ConnId, StreamError> {
        if self.role != Role::Host {
            return Err(StreamError::WrongRole(self.role));
        }
        if self.phase == Phase::Failed {
            return Err(StreamError::MuxDown("the usbmux link failed".into()));
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            return Err(StreamError::TooManyConnections);
        }
        let mut sport = self.next_sport;
        while sport == 0 || self.by_ports.contains_key(&(sport, port)) {
            sport = sport.wrapping_add(1);
        }
        self.next_sport = sport.wrapping_add(1);
        let id = self.new_conn(sport, port, ConnState::SynQueued);
        if self.phase == Phase::Active {
            self.send_syn(id);
        }
        Ok(id)
    }

    /// Device: accepts an `Incoming` connection (sends SYN|ACK).
    pub fn accept(&mut self, conn: ConnId) -> Result<(), StreamError> {
        if self.role != Role::Device {
            return Err(StreamError::WrongRole(self.role));
        }
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(StreamError::UnknownConnection(conn))?;
        match &c.state {
            ConnState::SynReceived => {}
            ConnState::Closed(r) => return Err(StreamError::Closed(r.clone())),
            _ => return Ok(()),
        }
        c.tx_seq = 0;
        c.tx_ack = 1;
        self.send_bare(conn, SYN | ACK);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.tx_seq = 1;
            c.state = ConnState::Established;
        }
        Ok(())
    }

    /// Closes a connection (RST), or refuses an `Incoming` one. Unread data is dropped.
    pub fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        match c.state {
            ConnState::SynSent | ConnState::SynReceived | ConnState::Established => {
                self.send_bare(conn, RST)
            }
            ConnState::SynQueued | ConnState::Closed(_) => {}
        }
        self.remove(conn);
    }

    /// Queues as much of `data` as the peer's window allows, as packets of at most the
    /// role's payload size. Returns the bytes taken (0 = `Blocked`: wait for `Writable`).
    pub fn send(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, StreamError> {
        if self.phase == Phase::Failed {
            return Err(StreamError::MuxDown("the usbmux link failed".into()));
        }
        let max_payload = self.max_payload();
        let kind = self.header_kind();
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(StreamError::UnknownConnection(conn))?;
        match &c.state {
            ConnState::Established => {}
            ConnState::Closed(r) => return Err(StreamError::Closed(r.clone())),
            // Not open yet: the caller waits for Connected (or for accept).
            _ => return Err(StreamError::Blocked),
        }
        let mut sent = 0;
        while sent < data.len() {
            let room = c.sendable() as usize;
            if room == 0 {
                break;
            }
            let n = room.min(max_payload).min(data.len() - sent);
            // Avoid the silly window: with data still in flight, a sliver of window (65500-byte
            // packets leave 72 bytes of a 131072-byte window) waits for the next ACK instead of
            // going out as a tiny packet.
            let in_flight = c.tx_seq.wrapping_sub(c.peer_ack);
            if n < max_payload
                && n < data.len() - sent
                && in_flight > 0
                && (room as u32) < c.peer_window / 2
            {
                break;
            }
            let tcp = TcpHeader {
                sport: c.local_port,
                dport: c.remote_port,
                seq: c.tx_seq,
                ack: c.tx_ack,
                flags: ACK,
                window: (RECV_WINDOW >> 8) as u16,
            };
            let seq = match kind {
                HeaderKind::V1 => None,
                HeaderKind::V2 => {
                    let s = (self.hdr_tx_seq, self.hdr_rx_seq);
                    self.hdr_tx_seq = self.hdr_tx_seq.wrapping_add(1);
                    Some(s)
                }
            };
            let p = Packet {
                header: MuxHeader {
                    protocol: PROTO_TCP,
                    length: 0,
                    seq,
                },
                body: Body::Tcp {
                    tcp,
                    payload: &data[sent..sent + n],
                },
            };
            self.transmit.push_back(p.to_vec());
            c.tx_seq = c.tx_seq.wrapping_add(n as u32);
            // The data packet carries our current acknowledgement.
            c.acked_sent = c.tx_ack;
            c.delayed_ack = false;
            c.ack_sent_at = self.now;
            sent += n;
        }
        if sent < data.len() {
            c.write_blocked = true;
        }
        if sent == 0 && !data.is_empty() {
            return Err(StreamError::Blocked);
        }
        Ok(sent)
    }

    /// Reads buffered data. `Blocked` when there is none yet; `Closed` once the peer closed
    /// and everything was read (the connection is then forgotten).
    pub fn recv(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, StreamError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(StreamError::UnknownConnection(conn))?;
        if c.rx.is_empty() {
            c.readable_signalled = false;
            return match c.state.clone() {
                ConnState::Closed(r) => {
                    self.remove(conn);
                    Err(StreamError::Closed(r))
                }
                _ if buf.is_empty() => Ok(0),
                _ => Err(StreamError::Blocked),
            };
        }
        let n = buf.len().min(c.rx.len());
        let (a, b) = c.rx.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        c.rx.drain(..n);
        if c.rx.is_empty() {
            c.readable_signalled = false;
        }
        if c.state == ConnState::Established {
            c.tx_ack = c.tx_ack.wrapping_add(n as u32);
            let unacked = c.tx_ack.wrapping_sub(c.acked_sent);
            if c.rx.is_empty() || unacked >= EAGER_ACK_BYTES || c.ack_sent_at.is_none() {
                self.queue_ack(conn);
            } else {
                c.delayed_ack = true;
            }
        }
        Ok(n)
    }

    /// Takes the link down (unplug, pipe error): every connection closes with `reason`.
    pub fn fail(&mut self, reason: &str) {
        self.fail_with(MuxError::LinkDown(reason.to_string()));
    }

    fn fail_with(&mut self, e: MuxError) {
        if self.phase == Phase::Failed {
            return;
        }
        self.phase = Phase::Failed;
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            match c.state {
                ConnState::Closed(_) => {}
                ConnState::SynQueued | ConnState::SynSent => {
                    self.remove(id);
                    self.events.push_back(MuxEvent::Refused(id));
                }
                _ => {
                    let reason = CloseReason::MuxDown(e.to_string());
                    c.state = ConnState::Closed(reason.clone());
                    self.events.push_back(MuxEvent::Closed { conn: id, reason });
                }
            }
        }
        self.transmit.clear();
        self.ack_queue.clear();
        self.partial.clear();
        self.events.push_back(MuxEvent::Failed(e));
    }

    // ---- output --------------------------------------------------------------------------

    /// The next USB transfer to send (one packet).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if let Some(p) = self.transmit.pop_front() {
            return Some(p);
        }
        while let Some(id) = self.ack_queue.pop_front() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.ack_queued = false;
            if c.state != ConnState::Established {
                continue;
            }
            self.send_bare(id, ACK);
            if let Some(p) = self.transmit.pop_front() {
                return Some(p);
            }
        }
        None
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should next be called (a delayed ACK is due), if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter(|c| c.delayed_ack)
            .filter_map(|c| c.ack_sent_at.map(|t| t + DELAYED_ACK))
            .min()
    }

    // ---- internals -----------------------------------------------------------------------

    fn new_conn(&mut self, local: u16, remote: u16, state: ConnState) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(id, Conn::new(local, remote, state));
        self.by_ports.insert((local, remote), id);
        id
    }

    fn remove(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            if self.by_ports.get(&(c.local_port, c.remote_port)) == Some(&id) {
                self.by_ports.remove(&(c.local_port, c.remote_port));
            }
        }
    }

    /// The peer ended the connection: it stays readable until drained, but its ports are free.
    fn peer_closed(&mut self, id: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.state = ConnState::Closed(reason.clone());
        c.delayed_ack = false;
        let key = (c.local_port, c.remote_port);
        if self.by_ports.get(&key) == Some(&id) {
            self.by_ports.remove(&key);
        }
        self.events.push_back(MuxEvent::Closed { conn: id, reason });
    }

    fn queue_ack(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.delayed_ack = false;
            if !c.ack_queued {
                c.ack_queued = true;
                self.ack_queue.push_back(id);
            }
        }
    }

    fn send_syn(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.state = ConnState::SynSent;
            c.tx_seq = 0;
            c.tx_ack = 0;
        }
        self.send_bare(id, SYN);
    }

    /// Queues a payload-less packet with the connection's current numbers.
    fn send_bare(&mut self, id: ConnId, flags: u8) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let tcp = TcpHeader {
            sport: c.local_port,
            dport: c.remote_port,
            seq: c.tx_seq,
            ack: c.tx_ack,
            flags,
            window: (RECV_WINDOW >> 8) as u16,
        };
        c.acked_sent = c.tx_ack;
        c.ack_sent_at = self.now;
        c.delayed_ack = false;
        self.queue_packet(Body::Tcp { tcp, payload: &[] });
    }

    fn queue_packet(&mut self, body: Body<'_>) {
        let seq = match self.header_kind() {
            HeaderKind::V1 => None,
            HeaderKind::V2 => {
                let s = (self.hdr_tx_seq, self.hdr_rx_seq);
                self.hdr_tx_seq = self.hdr_tx_seq.wrapping_add(1);
                Some(s)
            }
        };
        let protocol = match body {
            Body::Version { .. } => PROTO_VERSION,
            Body::Control(_) => PROTO_CONTROL,
            Body::Setup(_) => PROTO_SETUP,
            Body::Tcp { .. } => PROTO_TCP,
            Body::Unknown { protocol, .. } => protocol,
        };
        let p = Packet {
            header: MuxHeader {
                protocol,
                length: 0,
                seq,
            },
            body,
        };
        self.transmit.push_back(p.to_vec());
    }
}

fn log_control(payload: &[u8]) {
    let Some((&kind, text)) = payload.split_first() else {
        tracing::warn!("usbmux: CONTROL packet without payload");
        return;
    };
    let text = String::from_utf8_lossy(text);
    let text = text.trim_end_matches(['\0', '\n']);
    match kind {
        3 => tracing::error!("usbmux device error: {text}"),
        5 => tracing::warn!("usbmux device warning: {text}"),
        7 => tracing::info!("usbmux device: {text}"),
        k => tracing::debug!("usbmux CONTROL type {k}: {text}"),
    }
}

#[cfg(test)]
mod tests;
