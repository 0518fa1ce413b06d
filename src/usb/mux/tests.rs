//! Host core ↔ device core in memory, with simulated time: no sockets, no sleeps.

use super::packet::*;
use super::*;

/// Two cores wired back to back.
struct Pair {
    host: MuxCore,
    device: MuxCore,
    now: Instant,
    /// Every transfer the host sent, for inspection.
    host_sent: Vec<Vec<u8>>,
    device_sent: Vec<Vec<u8>>,
    host_events: Vec<MuxEvent>,
    device_events: Vec<MuxEvent>,
    /// Largest receive buffer seen on the device side.
    max_device_rx: usize,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            host: MuxCore::host(),
            device: MuxCore::device(),
            now: Instant::now(),
            host_sent: Vec::new(),
            device_sent: Vec::new(),
            host_events: Vec::new(),
            device_events: Vec::new(),
            max_device_rx: 0,
        }
    }

    fn ready() -> Pair {
        let mut p = Pair::new();
        p.drive();
        assert!(p.host.is_ready() && p.device.is_ready());
        p.host_events.clear();
        p.device_events.clear();
        p
    }

    /// Moves transfers both ways until neither side has anything to send.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.host.poll_transmit() {
                self.device.handle_transfer(&t, self.now).unwrap();
                self.host_sent.push(t);
                moved = true;
            }
            while let Some(t) = self.device.poll_transmit() {
                self.host.handle_transfer(&t, self.now).unwrap();
                self.device_sent.push(t);
                moved = true;
            }
            while let Some(e) = self.host.poll_event() {
                self.host_events.push(e);
            }
            while let Some(e) = self.device.poll_event() {
                self.device_events.push(e);
            }
            for c in self.device.conns.values() {
                self.max_device_rx = self.max_device_rx.max(c.rx.len());
            }
            if !moved {
                return;
            }
        }
    }

    /// Opens a connection to `port` that the device accepts; returns (host, device) ids.
    fn open(&mut self, port: u16) -> (ConnId, ConnId) {
        let h = self.host.connect(port).unwrap();
        self.drive();
        let Some(MuxEvent::Incoming { conn: d, port: p }) = self.device_events.pop() else {
            panic!("no Incoming: {:?}", self.device_events)
        };
        assert_eq!(p, port);
        self.device.accept(d).unwrap();
        self.drive();
        assert!(self.host_events.contains(&MuxEvent::Connected(h)));
        self.host_events.clear();
        (h, d)
    }
}

fn decode_v2(b: &[u8]) -> Packet<'_> {
    Packet::decode(b, HeaderKind::V2).unwrap()
}

fn tcp_of(b: &[u8]) -> (TcpHeader, Vec<u8>) {
    match decode_v2(b).body {
        Body::Tcp { tcp, payload } => (tcp, payload.to_vec()),
        other => panic!("not TCP: {other:?}"),
    }
}

/// A device→host TCP packet built by hand.
fn dev_tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    Packet {
        header: MuxHeader {
            protocol: PROTO_TCP,
            length: 0,
            seq: Some((0, 0)),
        },
        body: Body::Tcp {
            tcp: TcpHeader {
                sport,
                dport,
                seq,
                ack,
                flags,
                window: 512,
            },
            payload,
        },
    }
    .to_vec()
}

#[test]
fn handshake_matches_usbmuxd() {
    let mut p = Pair::new();
    p.drive();
    assert!(p.host.is_ready() && p.device.is_ready());
    assert_eq!(p.host.version(), 2);
    // VERSION request: 8-byte header, length 20, major 2.
    assert_eq!(
        p.host_sent[0],
        [0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    // Device reply: 8-byte header, major 2.
    let r = Packet::decode(&p.device_sent[0], HeaderKind::V1).unwrap();
    assert_eq!(r.body, Body::Version { major: 2, minor: 0 });
    // SETUP: v2 header with tx_seq 0, rx_seq 0xFFFF, payload 07.
    let s = decode_v2(&p.host_sent[1]);
    assert_eq!(s.header.seq, Some((0, 0xFFFF)));
    assert_eq!(s.body, Body::Setup(&[7]));
    assert_eq!(p.host_events, [MuxEvent::Ready { version: 2 }]);
    assert_eq!(p.device_events, [MuxEvent::Ready { version: 2 }]);
}

#[test]
fn host_tx_seq_counts_up_after_setup() {
    let mut p = Pair::ready();
    p.open(62078);
    let seqs: Vec<u16> = p.host_sent[1..]
        .iter()
        .map(|b| decode_v2(b).header.seq.unwrap().0)
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u16).collect::<Vec<_>>());
}

#[test]
fn connect_handshake_flags_are_exact() {
    let mut p = Pair::ready();
    let n = p.host_sent.len();
    p.open(62078);
    let (syn, _) = tcp_of(&p.host_sent[n]);
    assert_eq!((syn.flags, syn.seq, syn.ack, syn.dport), (SYN, 0, 0, 62078));
    assert_eq!(syn.sport, 1);
    assert_eq!(syn.window, 512);
    let (synack, _) = tcp_of(p.device_sent.last().unwrap());
    assert_eq!((synack.flags, synack.seq, synack.ack), (SYN | ACK, 0, 1));
    assert_eq!((synack.sport, synack.dport), (62078, 1));
    let (ack, _) = tcp_of(&p.host_sent[n + 1]);
    assert_eq!((ack.flags, ack.seq, ack.ack), (ACK, 1, 1));
    // The second connection gets the next source port.
    p.open(62078);
    let (syn2, _) = tcp_of(&p.host_sent[n + 2]);
    assert_eq!(syn2.sport, 2);
}

#[test]
fn connect_before_handshake_waits_for_ready() {
    let mut p = Pair::new();
    let h = p.host.connect(62078).unwrap();
    p.drive();
    let Some(MuxEvent::Incoming { conn, .. }) = p.device_events.last().cloned() else {
        panic!("{:?}", p.device_events)
    };
    p.device.accept(conn).unwrap();
    p.drive();
    assert!(p.host_events.contains(&MuxEvent::Connected(h)));
}

#[test]
fn refused_connection() {
    let mut p = Pair::ready();
    let h = p.host.connect(1234).unwrap();
    p.drive();
    let Some(MuxEvent::Incoming { conn, port: 1234 }) = p.device_events.pop() else {
        panic!()
    };
    p.device.close(conn);
    p.drive();
    assert_eq!(p.host_events, [MuxEvent::Refused(h)]);
    assert_eq!(p.host.connection_count(), 0);
    assert_eq!(p.device.connection_count(), 0);
    let (rst, _) = tcp_of(p.device_sent.last().unwrap());
    assert_eq!(rst.flags, RST);
}

#[test]
fn any_reply_but_synack_is_a_refusal() {
    let mut p = Pair::ready();
    let h = p.host.connect(62078).unwrap();
    while p.host.poll_transmit().is_some() {}
    p.host
        .handle_transfer(&dev_tcp(62078, 1, 0, 1, SYN | ACK | 0x08, &[]), p.now)
        .unwrap();
    assert_eq!(p.host.poll_event(), Some(MuxEvent::Refused(h)));
    // usbmuxd answers such a reply with RST.
    let (rst, _) = tcp_of(&p.host.poll_transmit().unwrap());
    assert_eq!(rst.flags, RST);
}

#[test]
fn data_flows_both_ways_with_exact_ack_flags() {
    let mut p = Pair::ready();
    let (h, d) = p.open(62078);
    let n = p.host_sent.len();
    assert_eq!(p.host.send(h, b"ping").unwrap(), 4);
    p.drive();
    let (data, payload) = tcp_of(&p.host_sent[n]);
    assert_eq!(data.flags, ACK);
    assert_eq!(payload, b"ping");
    assert!(p.device_events.contains(&MuxEvent::Readable(d)));
    let mut buf = [0u8; 16];
    assert_eq!(p.device.recv(d, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"ping");
    assert_eq!(p.device.recv(d, &mut buf), Err(StreamError::Blocked));
    p.device.send(d, b"pong!").unwrap();
    p.drive();
    assert_eq!(p.host.recv(h, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"pong!");
    // Every device packet on an open connection has flags exactly ACK.
    for t in &p.device_sent[2..] {
        if let Body::Tcp { tcp, .. } = decode_v2(t).body {
            if tcp.flags != SYN | ACK {
                assert_eq!(tcp.flags, ACK);
            }
        }
    }
}

#[test]
fn host_acks_every_data_packet_and_counts_delivered_bytes() {
    let mut p = Pair::ready();
    let (h, d) = p.open(62078);
    p.device.send(d, &[1u8; 1000]).unwrap();
    let n = p.host_sent.len();
    p.drive();
    // Prompt ACK: nothing delivered yet, so ack stays 1.
    let (ack, _) = tcp_of(&p.host_sent[n]);
    assert_eq!((ack.flags, ack.ack), (ACK, 1));
    let mut buf = vec![0u8; 1000];
    assert_eq!(p.host.recv(h, &mut buf).unwrap(), 1000);
    p.drive();
    // The buffer drained: the ACK of the delivered bytes goes out at once.
    let (ack, _) = tcp_of(p.host_sent.last().unwrap());
    assert_eq!(ack.ack, 1001);
}

#[test]
fn delayed_ack_goes_out_after_30ms() {
    let mut p = Pair::ready();
    let (h, d) = p.open(62078);
    p.device.send(d, &[7u8; 2000]).unwrap();
    p.drive();
    let sent = p.host_sent.len();
    // Read a little: not enough for an eager ACK and the buffer is not empty.
    let mut buf = [0u8; 100];
    p.host.recv(h, &mut buf).unwrap();
    p.drive();
    assert_eq!(p.host_sent.len(), sent, "no ACK yet");
    let due = p.host.poll_timeout().expect("a delayed ACK is armed");
    assert_eq!(due, p.now + DELAYED_ACK);
    p.host.handle_timeout(due - Duration::from_millis(1));
    assert!(p.host.poll_transmit().is_none());
    p.host.handle_timeout(due);
    let (ack, _) = tcp_of(&p.host.poll_transmit().unwrap());
    assert_eq!(ack.ack, 101);
    assert_eq!(p.host.poll_timeout(), None);
}

#[test]
fn payload_sizes_per_role() {
    let mut p = Pair::ready();
    let (h, d) = p.open(62078);
    let big = vec![0xAB; 200_000];
    let n = p.host_sent.len();
    let sent = p.host.send(h, &big).unwrap();
    // The device's window (131072) bounds what goes out before an ACK; the 32840-byte rest
    // of the window waits for an ACK rather than going out as a short packet.
    assert_eq!(sent, 2 * 49116);
    let mut sizes = Vec::new();
    while let Some(t) = p.host.poll_transmit() {
        assert!(t.len() <= HOST_MAX_PACKET);
        sizes.push(tcp_of(&t).1.len());
        p.host_sent.push(t);
    }
    assert_eq!(sizes, [49116, 49116]);
    let _ = n;
    // Device side: up to 65500 bytes per packet (a 65536-byte transfer).
    let sent = p.device.send(d, &big).unwrap();
    assert_eq!(sent, 2 * 65500);
    let t = p.device.poll_transmit().unwrap();
    assert_eq!(t.len(), DEVICE_MAX_PACKET);
    assert_eq!(tcp_of(&t).1.len(), 65500);
}

#[test]
fn a_short_tail_is_sent_when_it_is_all_there_is() {
    let mut p = Pair::ready();
    let (h, _d) = p.open(62078);
    // 98232 bytes fill two packets; the 10-byte tail fits the remaining window and is the end
    // of the data, so it goes out at once.
    let data = vec![1u8; 2 * 49116 + 10];
    assert_eq!(p.host.send(h, &data).unwrap(), data.len());
}

#[test]
fn window_and_backpressure_keep_buffers_bounded() {
    let mut p = Pair::ready();
    let (h, d) = p.open(62078);
    let total = 3 * 1024 * 1024;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut off = 0;
    let mut got = Vec::with_capacity(total);
    let mut buf = vec![0u8; 10_000];
    let mut blocked_seen = false;
    let mut writable_seen = false;
    while got.len() < total {
        if off < total {
            match p.host.send(h, &data[off..]) {
                Ok(n) => off += n,
                Err(StreamError::Blocked) => blocked_seen = true,
                Err(e) => panic!("{e}"),
            }
        }
        p.drive();
        writable_seen |= p.host_events.contains(&MuxEvent::Writable(h));
        p.host_events.clear();
        // A slow reader: at most 10 kB per round.
        match p.device.recv(d, &mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(StreamError::Blocked) => {}
            Err(e) => panic!("{e}"),
        }
        p.drive();
    }
    assert_eq!(got, data);
    assert!(blocked_seen && writable_seen);
    assert!(
        p.max_device_rx <= RECV_WINDOW as usize,
        "device buffered {}",
        p.max_device_rx
    );
}

#[test]
fn non_ack_flags_on_open_connection_kill_it() {
    let mut p = Pair::ready();
    let (h, _d) = p.open(62078);
    // ACK|PSH, as some stacks send, is not allowed.
    p.host
        .handle_transfer(&dev_tcp(62078, 1, 1, 1, ACK | 0x08, b"x"), p.now)
        .unwrap();
    match p.host.poll_event() {
        Some(MuxEvent::Closed {
            conn,
            reason: CloseReason::PeerProtocol(_),
        }) => assert_eq!(conn, h),
        other => panic!("{other:?}"),
    }
    let (rst, _) = tcp_of(&p.host.poll_transmit().unwrap());
    assert_eq!(rst.flags, RST);
    let mut b = [0u8; 4];
    assert!(matches!(
        p.host.recv(h, &mut b),
        Err(StreamError::Closed(_))
    ));
    assert_eq!(p.host.connection_count(), 0);
}

#[test]
fn rst_carries_its_reason_and_buffered_data_stays_readable() {
    let mut p = Pair::ready();
    let (h, _d) = p.open(62078);
    p.host
        .handle_transfer(&dev_tcp(62078, 1, 1, 1, ACK, b"last words"), p.now)
        .unwrap();
    p.host
        .handle_transfer(&dev_tcp(62078, 1, 11, 1, RST, b"service died\n"), p.now)
        .unwrap();
    let evs: Vec<_> = std::iter::from_fn(|| p.host.poll_event()).collect();
    assert!(evs.contains(&MuxEvent::Closed {
        conn: h,
        reason: CloseReason::PeerReset(Some("service died".into()))
    }));
    let mut b = [0u8; 32];
    assert_eq!(p.host.recv(h, &mut b).unwrap(), 10);
    assert_eq!(&b[..10], b"last words");
    assert!(matches!(
        p.host.recv(h, &mut b),
        Err(StreamError::Closed(CloseReason::PeerReset(_)))
    ));
    assert!(matches!(
        p.host.recv(h, &mut b),
        Err(StreamError::UnknownConnection(_))
    ));
}

#[test]
fn unknown_port_pair_gets_an_anonymous_rst() {
    let mut p = Pair::ready();
    p.host
        .handle_transfer(&dev_tcp(5000, 77, 1234, 0, ACK, b"?"), p.now)
        .unwrap();
    let (rst, _) = tcp_of(&p.host.poll_transmit().unwrap());
    assert_eq!(
        (rst.flags, rst.sport, rst.dport, rst.ack, rst.seq),
        (RST, 77, 5000, 1234, 0)
    );
    // An RST for an unknown pair is not answered.
    p.host
        .handle_transfer(&dev_tcp(5000, 77, 1, 0, RST, &[]), p.now)
        .unwrap();
    assert!(p.host.poll_transmit().is_none());
    // The device answers a stray non-SYN the same way.
    let stray = Packet {
        header: MuxHeader {
            protocol: PROTO_TCP,
            length: 0,
            seq: Some((9, 0)),
        },
        body: Body::Tcp {
            tcp: TcpHeader {
                sport: 9,
                dport: 62078,
                seq: 5,
                ack: 1,
                flags: ACK,
                window: 512,
            },
            payload: b"x",
        },
    }
    .to_vec();
    p.device.handle_transfer(&stray, p.now).unwrap();
    let (rst, _) = tcp_of(&p.device.poll_transmit().unwrap());
    assert_eq!((rst.flags, rst.sport, rst.dport), (RST, 62078, 9));
}

#[test]
fn receive_overflow_aborts_only_that_connection() {
    let mut p = Pair::ready();
    let (h, _d) = p.open(62078);
    let (h2, _d2) = p.open(62078);
    let chunk = vec![0u8; 60_000];
    let mut seq = 1u32;
    for _ in 0..5 {
        p.host
            .handle_transfer(&dev_tcp(62078, 1, seq, 1, ACK, &chunk), p.now)
            .unwrap();
        seq += chunk.len() as u32;
    }
    let evs: Vec<_> = std::iter::from_fn(|| p.host.poll_event()).collect();
    assert!(evs.contains(&MuxEvent::Closed {
        conn: h,
        reason: CloseReason::Overflow
    }));
    assert!(p.host.is_established(h2));
}

#[test]
fn unsupported_version_fails_the_link() {
    let mut host = MuxCore::host();
    host.poll_transmit();
    let c = host.connect(62078).unwrap();
    let v = Packet {
        header: MuxHeader {
            protocol: PROTO_VERSION,
            length: 0,
            seq: None,
        },
        body: Body::Version { major: 3, minor: 0 },
    }
    .to_vec();
    let e = host.handle_transfer(&v, Instant::now()).unwrap_err();
    assert!(e.is_fatal());
    assert!(host.is_failed());
    let evs: Vec<_> = std::iter::from_fn(|| host.poll_event()).collect();
    assert_eq!(evs[0], MuxEvent::Refused(c));
    assert!(matches!(evs[1], MuxEvent::Failed(_)));
    assert!(matches!(host.connect(1), Err(StreamError::MuxDown(_))));
}

#[test]
fn version_1_device_uses_short_headers_and_no_setup() {
    let mut host = MuxCore::host();
    host.poll_transmit();
    let v = Packet {
        header: MuxHeader {
            protocol: PROTO_VERSION,
            length: 0,
            seq: None,
        },
        body: Body::Version { major: 1, minor: 0 },
    }
    .to_vec();
    host.handle_transfer(&v, Instant::now()).unwrap();
    assert!(host.is_ready());
    host.connect(62078).unwrap();
    let syn = host.poll_transmit().unwrap();
    assert_eq!(syn.len(), V1_HEADER_LEN + TCP_HEADER_LEN);
    assert!(matches!(
        Packet::decode(&syn, HeaderKind::V1).unwrap().body,
        Body::Tcp { .. }
    ));
}

#[test]
fn packets_split_over_16k_reads_and_packed_in_one_transfer() {
    let mut p = Pair::ready();
    let (h, d) = p.open(62078);
    let data: Vec<u8> = (0..65500u32).map(|i| i as u8).collect();
    p.device.send(d, &data).unwrap();
    let t = p.device.poll_transmit().unwrap();
    assert_eq!(t.len(), 65536);
    for piece in t.chunks(16384) {
        p.host.handle_transfer(piece, p.now).unwrap();
    }
    let mut buf = vec![0u8; 70_000];
    assert_eq!(p.host.recv(h, &mut buf).unwrap(), 65500);
    assert_eq!(&buf[..65500], &data[..]);
    // Two small packets back to back in one transfer.
    p.device.send(d, b"ab").unwrap();
    p.device.send(d, b"cd").unwrap();
    let mut joined = p.device.poll_transmit().unwrap();
    joined.extend(p.device.poll_transmit().unwrap());
    p.host.handle_transfer(&joined, p.now).unwrap();
    assert_eq!(p.host.recv(h, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"abcd");
}

#[test]
fn control_packets_are_only_logged() {
    let mut p = Pair::ready();
    for payload in [&b"\x07hello"[..], b"\x03oops", b""] {
        let c = Packet {
            header: MuxHeader {
                protocol: PROTO_CONTROL,
                length: 0,
                seq: Some((1, 1)),
            },
            body: Body::Control(payload),
        }
        .to_vec();
        p.host.handle_transfer(&c, p.now).unwrap();
    }
    assert!(p.host.poll_event().is_none());
    assert!(p.host.poll_transmit().is_none());
}

#[test]
fn fail_closes_every_connection() {
    let mut p = Pair::ready();
    let (h, _) = p.open(62078);
    let (h2, _) = p.open(49152);
    p.host.fail("device unplugged");
    let evs: Vec<_> = std::iter::from_fn(|| p.host.poll_event()).collect();
    for c in [h, h2] {
        assert!(evs
            .iter()
            .any(|e| matches!(e, MuxEvent::Closed { conn, reason: CloseReason::MuxDown(_) } if *conn == c)));
    }
    assert!(matches!(
        evs.last(),
        Some(MuxEvent::Failed(MuxError::LinkDown(_)))
    ));
    assert!(matches!(p.host.send(h, b"x"), Err(StreamError::MuxDown(_))));
}

#[test]
fn roles_are_enforced() {
    let mut p = Pair::ready();
    assert_eq!(
        p.device.connect(1),
        Err(StreamError::WrongRole(Role::Device))
    );
    let (h, _) = p.open(62078);
    assert_eq!(p.host.accept(h), Err(StreamError::WrongRole(Role::Host)));
}

#[test]
fn garbage_never_panics_and_bad_packets_are_errors() {
    // A small deterministic generator; the fuzz target does the thorough job.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..2000 {
        let mut core = if round % 2 == 0 {
            let mut p = Pair::ready();
            p.open(62078);
            p.host
        } else {
            MuxCore::device()
        };
        for _ in 0..4 {
            let len = (next() % 200) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if b.len() >= 8 && next() % 2 == 0 {
                // Make the length field plausible so deeper code runs.
                b[4..8].copy_from_slice(&(len as u32).to_be_bytes());
                if b.len() >= 12 && next() % 2 == 0 {
                    b[8..12].copy_from_slice(&MAGIC.to_be_bytes());
                }
                b[0..4].copy_from_slice(&[0, 0, 0, [0u8, 1, 2, 6][(next() % 4) as usize]]);
            }
            let _ = core.handle_transfer(&b, Instant::now());
            while core.poll_transmit().is_some() {}
            while core.poll_event().is_some() {}
        }
    }
    let mut host = Pair::ready().host;
    assert!(matches!(
        host.handle_transfer(&[0, 0, 0, 6, 0, 0, 0, 3], Instant::now()),
        Err(MuxError::Malformed(_))
    ));
}
