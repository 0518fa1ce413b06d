//! The usbmux wire format: the 8- or 16-byte mux header, VERSION/CONTROL/SETUP bodies and the
//! 20-byte BSD tcphdr. Pure codec over byte slices; decoding checks every length it reads.

/// v1 header: `u32be protocol, u32be length`.
pub const V1_HEADER_LEN: usize = 8;
/// v2 header: v1 plus `u32be magic, u16be tx_seq, u16be rx_seq`.
pub const V2_HEADER_LEN: usize = 16;
/// The v2 header magic.
pub const MAGIC: u32 = 0xFEED_FACE;
/// The TCP header usbmux carries (no options).
pub const TCP_HEADER_LEN: usize = 20;
/// The VERSION body: `u32be major, minor, padding`.
pub const VERSION_BODY_LEN: usize = 12;
/// Largest packet accepted from either side (usbmuxd's DEV_MRU), header included.
pub const MAX_PACKET_LEN: usize = 65536;

/// Mux protocols (header `protocol` field).
pub const PROTO_VERSION: u32 = 0;
pub const PROTO_CONTROL: u32 = 1;
pub const PROTO_SETUP: u32 = 2;
pub const PROTO_TCP: u32 = 6;

/// TCP flags usbmux uses.
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// Which header a packet carries: v1 before and during the version handshake (and for v1
/// devices), v2 after a major-2 handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    V1,
    V2,
}

impl HeaderKind {
    pub fn header_len(self) -> usize {
        match self {
            HeaderKind::V1 => V1_HEADER_LEN,
            HeaderKind::V2 => V2_HEADER_LEN,
        }
    }
}

/// Malformed packets: always the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the header or body needs.
    #[error("usbmux packet truncated: {have} bytes, {need} needed")]
    Truncated { have: usize, need: usize },
    /// The header's length field disagrees with the bytes that make up the packet.
    #[error("usbmux header announces {declared} bytes but the packet has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    /// The header's length field is over the cap.
    #[error("usbmux header announces {declared} bytes; at most {max} are accepted")]
    TooLong { declared: usize, max: usize },
    /// A v2 header without the 0xFEEDFACE magic.
    #[error("usbmux v2 header has magic {0:#010x} instead of 0xfeedface")]
    BadMagic(u32),
}

/// The fixed mux header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxHeader {
    pub protocol: u32,
    /// Whole packet length, header included.
    pub length: u32,
    /// `(tx_seq, rx_seq)` of a v2 header; `None` for v1.
    pub seq: Option<(u16, u16)>,
}

/// The TCP header, host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Window in 256-byte units.
    pub window: u16,
}

impl TcpHeader {
    /// Appends the 20 bytes (data offset 5 words, checksum and urgent pointer 0).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ack.to_be_bytes());
        out.push(0x50);
        out.push(self.flags);
        out.extend_from_slice(&self.window.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
    }

    /// Reads the first 20 bytes. Like usbmuxd, the data offset is not trusted: the payload
    /// always starts after 20 bytes.
    pub fn decode(b: &[u8]) -> Result<TcpHeader, CodecError> {
        let Some(h) = b.get(..TCP_HEADER_LEN) else {
            return Err(CodecError::Truncated {
                have: b.len(),
                need: TCP_HEADER_LEN,
            });
        };
        Ok(TcpHeader {
            sport: u16::from_be_bytes([h[0], h[1]]),
            dport: u16::from_be_bytes([h[2], h[3]]),
            seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            flags: h[13],
            window: u16::from_be_bytes([h[14], h[15]]),
        })
    }
}

/// A packet body by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    Version {
        major: u32,
        minor: u32,
    },
    /// CONTROL: `payload[0]` is 3 error, 5 warning, 7 info, then text.
    Control(&'a [u8]),
    Setup(&'a [u8]),
    Tcp {
        tcp: TcpHeader,
        payload: &'a [u8],
    },
    Unknown {
        protocol: u32,
        payload: &'a [u8],
    },
}

/// One decoded packet, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub header: MuxHeader,
    pub body: Body<'a>,
}

fn be32(b: &[u8], i: usize) -> u32 {
    match b.get(i..i + 4) {
        Some(w) => u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
        None => 0,
    }
}

/// The length a packet at the start of `b` announces, if the length field is there.
pub fn peek_length(b: &[u8]) -> Option<usize> {
    let w = b.get(4..8)?;
    Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize)
}

impl<'a> Packet<'a> {
    /// Decodes exactly one packet: `b` must be as long as the header says.
    pub fn decode(b: &'a [u8], kind: HeaderKind) -> Result<Packet<'a>, CodecError> {
        let hlen = kind.header_len();
        if b.len() < hlen {
            return Err(CodecError::Truncated {
                have: b.len(),
                need: hlen,
            });
        }
        let protocol = be32(b, 0);
        let length = be32(b, 4) as usize;
        if length > MAX_PACKET_LEN {
            return Err(CodecError::TooLong {
                declared: length,
                max: MAX_PACKET_LEN,
            });
        }
        if length != b.len() {
            return Err(CodecError::LengthMismatch {
                declared: length,
                actual: b.len(),
            });
        }
        let seq = match kind {
            HeaderKind::V1 => None,
            HeaderKind::V2 => {
                let magic = be32(b, 8);
                if magic != MAGIC {
                    return Err(CodecError::BadMagic(magic));
                }
                Some((
                    u16::from_be_bytes([b[12], b[13]]),
                    u16::from_be_bytes([b[14], b[15]]),
                ))
            }
        };
        let header = MuxHeader {
            protocol,
            length: length as u32,
            seq,
        };
        let rest = &b[hlen..];
        let body = match protocol {
            PROTO_VERSION => {
                if rest.len() < VERSION_BODY_LEN {
                    return Err(CodecError::Truncated {
                        have: b.len(),
                        need: hlen + VERSION_BODY_LEN,
                    });
                }
                Body::Version {
                    major: be32(rest, 0),
                    minor: be32(rest, 4),
                }
            }
            PROTO_CONTROL => Body::Control(rest),
            PROTO_SETUP => Body::Setup(rest),
            PROTO_TCP => {
                let tcp = TcpHeader::decode(rest).map_err(|_| CodecError::Truncated {
                    have: b.len(),
                    need: hlen + TCP_HEADER_LEN,
                })?;
                Body::Tcp {
                    tcp,
                    payload: &rest[TCP_HEADER_LEN..],
                }
            }
            other => Body::Unknown {
                protocol: other,
                payload: rest,
            },
        };
        Ok(Packet { header, body })
    }

    /// Appends the encoded packet. The header's `length` is computed, not taken from `self`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (protocol, body_len) = match &self.body {
            Body::Version { .. } => (PROTO_VERSION, VERSION_BODY_LEN),
            Body::Control(p) => (PROTO_CONTROL, p.len()),
            Body::Setup(p) => (PROTO_SETUP, p.len()),
            Body::Tcp { payload, .. } => (PROTO_TCP, TCP_HEADER_LEN + payload.len()),
            Body::Unknown { protocol, payload } => (*protocol, payload.len()),
        };
        let hlen = if self.header.seq.is_some() {
            V2_HEADER_LEN
        } else {
            V1_HEADER_LEN
        };
        out.reserve(hlen + body_len);
        out.extend_from_slice(&protocol.to_be_bytes());
        out.extend_from_slice(&((hlen + body_len) as u32).to_be_bytes());
        if let Some((tx, rx)) = self.header.seq {
            out.extend_from_slice(&MAGIC.to_be_bytes());
            out.extend_from_slice(&tx.to_be_bytes());
            out.extend_from_slice(&rx.to_be_bytes());
        }
        match &self.body {
            Body::Version { major, minor } => {
                out.extend_from_slice(&major.to_be_bytes());
                out.extend_from_slice(&minor.to_be_bytes());
                out.extend_from_slice(&0u32.to_be_bytes());
            }
            Body::Control(p) | Body::Setup(p) | Body::Unknown { payload: p, .. } => {
                out.extend_from_slice(p)
            }
            Body::Tcp { tcp, payload } => {
                tcp.encode(out);
                out.extend_from_slice(payload);
            }
        }
    }

    /// The encoded packet as a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_request_matches_usbmuxd_bytes() {
        let p = Packet {
            header: MuxHeader {
                protocol: PROTO_VERSION,
                length: 0,
                seq: None,
            },
            body: Body::Version { major: 2, minor: 0 },
        };
        let b = p.to_vec();
        assert_eq!(
            b,
            [0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let d = Packet::decode(&b, HeaderKind::V1).unwrap();
        assert_eq!(d.body, Body::Version { major: 2, minor: 0 });
        assert_eq!(d.header.length, 20);
    }

    #[test]
    fn tcp_round_trip_v2() {
        let tcp = TcpHeader {
            sport: 1,
            dport: 62078,
            seq: 0x01020304,
            ack: 7,
            flags: ACK,
            window: 512,
        };
        let p = Packet {
            header: MuxHeader {
                protocol: PROTO_TCP,
                length: 0,
                seq: Some((5, 0xFFFF)),
            },
            body: Body::Tcp {
                tcp,
                payload: b"hello",
            },
        };
        let b = p.to_vec();
        assert_eq!(b.len(), 16 + 20 + 5);
        assert_eq!(&b[8..12], &[0xFE, 0xED, 0xFA, 0xCE]);
        assert_eq!(b[16 + 12], 0x50);
        let d = Packet::decode(&b, HeaderKind::V2).unwrap();
        assert_eq!(d.header.seq, Some((5, 0xFFFF)));
        assert_eq!(
            d.body,
            Body::Tcp {
                tcp,
                payload: b"hello"
            }
        );
    }

    #[test]
    fn rejects_bad_lengths_and_magic() {
        let mut b = Packet {
            header: MuxHeader {
                protocol: PROTO_SETUP,
                length: 0,
                seq: Some((0, 0)),
            },
            body: Body::Setup(&[7]),
        }
        .to_vec();
        assert!(Packet::decode(&b, HeaderKind::V2).is_ok());
        assert!(matches!(
            Packet::decode(&b[..b.len() - 1], HeaderKind::V2),
            Err(CodecError::LengthMismatch { .. })
        ));
        b[8] = 0;
        assert!(matches!(
            Packet::decode(&b, HeaderKind::V2),
            Err(CodecError::BadMagic(_))
        ));
        let mut huge = vec![0, 0, 0, 6, 0, 2, 0, 0];
        huge.resize(16, 0);
        assert!(matches!(
            Packet::decode(&huge, HeaderKind::V1),
            Err(CodecError::TooLong { .. })
        ));
        // A TCP packet too short for its tcphdr.
        let short = [0, 0, 0, 6, 0, 0, 0, 12, 1, 2, 3, 4];
        assert!(matches!(
            Packet::decode(&short, HeaderKind::V1),
            Err(CodecError::Truncated { .. })
        ));
        for n in 0..16 {
            let _ = Packet::decode(&b[..n], HeaderKind::V2);
        }
    }
}
