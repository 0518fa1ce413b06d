//! The `u32be length + plist` framing shared by lockdownd, DeviceLink and the plist services.
//! Encoding never fails; decoding checks the length against a named cap before reading the body.

use std::io::{self, Read, Write};

/// Largest plist frame accepted from a peer. Lockdown and DeviceLink messages are kilobytes; the
/// largest legitimate ones (Info.plist app lists, icons) stay well under this.
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// How a frame's plist is serialised on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlistFormat {
    Xml,
    Binary,
}

/// Errors reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the connection closed")]
    Eof,
    #[error("the peer announced a {len}-byte plist; at most {max} bytes are accepted")]
    TooLong { len: u32, max: u32 },
    #[error("the peer sent a frame that is not a valid plist: {0}")]
    BadPlist(String),
    #[error("i/o error on the device connection: {0}")]
    Io(#[from] io::Error),
}

/// Serialises `value` as one frame.
pub fn encode(value: &plist::Value, format: PlistFormat) -> Vec<u8> {
    let mut body = Vec::new();
    let res = match format {
        PlistFormat::Xml => value.to_writer_xml(&mut body),
        PlistFormat::Binary => value.to_writer_binary(&mut body),
    };
    // Writing into a Vec cannot fail for any well-formed `plist::Value`.
    debug_assert!(res.is_ok());
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Parses a plist body (XML or `bplist00`).
pub fn decode_body(body: &[u8]) -> Result<plist::Value, FrameError> {
    plist::Value::from_reader(io::Cursor::new(body))
        .map_err(|e| FrameError::BadPlist(e.to_string()))
}

/// Writes one frame.
pub fn write_frame<W: Write + ?Sized>(
    w: &mut W,
    value: &plist::Value,
    format: PlistFormat,
) -> io::Result<()> {
    w.write_all(&encode(value, format))?;
    w.flush()
}

/// Reads one frame, refusing lengths over `max`.
pub fn read_frame_max<R: Read + ?Sized>(r: &mut R, max: u32) -> Result<plist::Value, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Eof),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    decode_body(&body)
}

/// Reads one frame with the default cap.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<plist::Value, FrameError> {
    read_frame_max(r, MAX_FRAME_LEN)
}

/// Reads an integer field as i64. Hosts send negative status codes as unsigned 64-bit values
/// (−13 arrives as 18446744073709551603), so both signed and unsigned forms are accepted.
pub fn as_i64(v: &plist::Value) -> Option<i64> {
    match v {
        plist::Value::Integer(i) => i.as_signed().or_else(|| i.as_unsigned().map(|u| u as i64)),
        _ => None,
    }
}

/// Reads a real or an integer as f64 (libplist sends 4-byte reals; some hosts send integers).
pub fn as_f64(v: &plist::Value) -> Option<f64> {
    match v {
        plist::Value::Real(r) => Some(*r),
        plist::Value::Integer(i) => i
            .as_signed()
            .map(|x| x as f64)
            .or_else(|| i.as_unsigned().map(|x| x as f64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_formats() {
        let mut d = plist::Dictionary::new();
        d.insert("Request".into(), "QueryType".into());
        let v = plist::Value::Dictionary(d);
        for f in [PlistFormat::Xml, PlistFormat::Binary] {
            let bytes = encode(&v, f);
            let back = read_frame(&mut &bytes[..]).unwrap();
            assert_eq!(back, v);
        }
    }

    #[test]
    fn rejects_huge_length_without_allocating() {
        let bytes = [0xff, 0xff, 0xff, 0xff, b'<'];
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn eof_before_length_is_eof() {
        assert!(matches!(read_frame(&mut &[][..]), Err(FrameError::Eof)));
    }

    #[test]
    fn unsigned_minus_13_reads_as_negative() {
        let xml = b"<?xml version=\"1.0\"?><plist version=\"1.0\"><integer>18446744073709551603</integer></plist>";
        let v = decode_body(xml).unwrap();
        assert_eq!(as_i64(&v), Some(-13));
    }
}
