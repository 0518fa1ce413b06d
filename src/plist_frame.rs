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

/// Most objects a binary plist frame may declare. The largest legitimate messages (app lists
/// with a few hundred apps) hold tens of thousands; the check's own memory is ~25 bytes each.
pub const MAX_FRAME_OBJECTS: usize = 1 << 20;
/// Most values a frame may expand to as a tree (shared objects counted once per use).
pub const MAX_FRAME_VALUES: u64 = 2_000_000;
/// Most string and data bytes a frame may expand to (a frame is at most 16 MiB on the wire).
pub const MAX_FRAME_EXPANDED_BYTES: u64 = 64 * 1024 * 1024;
/// Deepest nesting accepted (real messages nest under ten levels); keeps the tree-building
/// parser's recursion shallow.
pub const MAX_FRAME_DEPTH: usize = 64;

/// Parses a plist body (XML or `bplist00`) within the caps above. A binary plist can share
/// objects, so a few kilobytes can describe gigabytes of tree ("billion laughs"); it is checked
/// with the non-expanding reader before the `plist` crate builds anything. XML cannot share, but
/// can nest deeply enough to exhaust the parser's stack; its nesting is counted first.
pub fn decode_body(body: &[u8]) -> Result<plist::Value, FrameError> {
    use crate::ios_backup::bplist::{Bplist, ExpansionLimits, MAGIC};
    if body.starts_with(MAGIC) {
        let p = Bplist::parse(body).map_err(|e| FrameError::BadPlist(e.to_string()))?;
        if p.num_objects() > MAX_FRAME_OBJECTS {
            return Err(FrameError::BadPlist(format!(
                "{} objects; at most {MAX_FRAME_OBJECTS} are accepted",
                p.num_objects()
            )));
        }
        p.check_complexity(ExpansionLimits {
            max_values: MAX_FRAME_VALUES,
            max_bytes: MAX_FRAME_EXPANDED_BYTES,
            max_depth: MAX_FRAME_DEPTH,
        })
        .map_err(|e| FrameError::BadPlist(e.to_string()))?;
    } else if xml_depth(body) > MAX_FRAME_DEPTH {
        return Err(FrameError::BadPlist(format!(
            "nested deeper than {MAX_FRAME_DEPTH} levels"
        )));
    }
    plist::Value::from_reader(io::Cursor::new(body))
        .map_err(|e| FrameError::BadPlist(e.to_string()))
}

/// An upper bound of the `<array>`/`<dict>` nesting of an XML plist, by a lexical scan: every
/// element start tag that is not self-closing opens a level, every end tag closes one. Tags in
/// comments or CDATA are counted too, which can only overestimate.
fn xml_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while let Some(off) = body
        .get(i..)
        .and_then(|r| r.iter().position(|&b| b == b'<'))
    {
        let start = i + off + 1;
        let end = match body
            .get(start..)
            .and_then(|r| r.iter().position(|&b| b == b'>'))
        {
            Some(e) => start + e,
            None => break,
        };
        let tag = &body[start..end];
        match tag.first() {
            Some(b'/') => depth = depth.saturating_sub(1),
            Some(b'?') | Some(b'!') => {}
            Some(_) if tag.last() != Some(&b'/') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            _ => {}
        }
        i = end + 1;
    }
    deepest
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

    /// A binary plist of `levels` arrays, each holding its child twice: 2^levels leaves in
    /// about 3 bytes per level.
    fn expansion_bomb(levels: usize) -> Vec<u8> {
        use crate::ios_backup::bplist::BplistWriter;
        let mut w = BplistWriter::new();
        let mut slots = Vec::new();
        for _ in 0..levels {
            slots.push(w.reserve());
        }
        let leaf = w.string("boom boom boom boom boom boom boom boom");
        for k in (0..levels).rev() {
            let child = if k + 1 < levels { slots[k + 1] } else { leaf };
            w.set_array(slots[k], vec![child, child]);
        }
        w.finish(slots[0])
    }

    #[test]
    fn binary_expansion_bomb_is_refused_before_expanding() {
        // 2^40 leaves of 40 bytes: ~40 TiB as a tree, a few hundred bytes on the wire.
        let bomb = expansion_bomb(40);
        assert!(bomb.len() < 1000, "{}", bomb.len());
        let t = std::time::Instant::now();
        let e = decode_body(&bomb).unwrap_err();
        assert!(
            matches!(e, FrameError::BadPlist(ref m) if m.contains("expands")),
            "{e}"
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // Through the framing too.
        let mut framed = (bomb.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&bomb);
        assert!(matches!(
            read_frame(&mut &framed[..]),
            Err(FrameError::BadPlist(_))
        ));
        // A small shared tree is fine: the check is about size, not sharing.
        let ok = decode_body(&expansion_bomb(4)).unwrap();
        assert_eq!(ok.as_array().unwrap().len(), 2);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep_xml = format!(
            "<plist version=\"1.0\">{}{}</plist>",
            "<array>".repeat(100_000),
            "</array>".repeat(100_000)
        );
        assert!(matches!(
            decode_body(deep_xml.as_bytes()),
            Err(FrameError::BadPlist(m)) if m.contains("nested")
        ));
        let shallow = "<?xml version=\"1.0\"?><!DOCTYPE plist><plist version=\"1.0\"><dict><key>a</key><array><integer>1</integer><array/></array></dict></plist>";
        // plist > dict > array > integer (key closes before array opens).
        assert_eq!(xml_depth(shallow.as_bytes()), 4);
        assert!(decode_body(shallow.as_bytes()).is_ok());
        // The same depth in a binary plist.
        let mut w = crate::ios_backup::bplist::BplistWriter::new();
        let slots: Vec<usize> = (0..200).map(|_| w.reserve()).collect();
        let leaf = w.int(0x10, 1);
        for k in 0..200 {
            let child = if k + 1 < 200 { slots[k + 1] } else { leaf };
            w.set_array(slots[k], vec![child]);
        }
        let bin = w.finish(slots[0]);
        assert!(matches!(decode_body(&bin), Err(FrameError::BadPlist(_))));
    }

    #[test]
    fn unsigned_minus_13_reads_as_negative() {
        let xml = b"<?xml version=\"1.0\"?><plist version=\"1.0\"><integer>18446744073709551603</integer></plist>";
        let v = decode_body(xml).unwrap();
        assert_eq!(as_i64(&v), Some(-13));
    }
}
