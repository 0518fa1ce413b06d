//! Little-endian record codec shared by the store's layouts (format.md §2): a bounded `Reader` that
//! checks every length against a named cap before allocating, and rejects trailing bytes.

/// Why a record could not be decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record ends inside a field.
    #[error("truncated at {field}")]
    Truncated {
        /// Field being read.
        field: &'static str,
    },
    /// A length over its cap.
    #[error("{field}: length {len} exceeds the cap of {cap}")]
    TooLong {
        /// Field being read.
        field: &'static str,
        /// Length found.
        len: u64,
        /// Cap.
        cap: u64,
    },
    /// A string that is not UTF-8 or holds NUL.
    #[error("{field}: not UTF-8 text without NUL")]
    BadText {
        /// Field being read.
        field: &'static str,
    },
    /// A reserved field that is not zero.
    #[error("{field}: reserved bytes not zero")]
    Reserved {
        /// Field being read.
        field: &'static str,
    },
    /// An enum value this build does not know.
    #[error("{field}: unknown value {value}")]
    UnknownValue {
        /// Field being read.
        field: &'static str,
        /// Value found.
        value: u64,
    },
    /// Bytes left after the record.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A value that contradicts another (counts, lengths, order).
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// A cursor over a record's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Exactly `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated { field });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A fixed-size array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    /// `u8`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// `u16` LE.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// `u32` LE.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// `u64` LE.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// `i64` LE (times).
    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    /// A `u8` that must be 0 or 1.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::UnknownValue {
                field,
                value: u64::from(v),
            }),
        }
    }

    /// `n` reserved bytes that must be zero.
    pub fn reserved(&mut self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.take(n, field)?.iter().any(|&b| b != 0) {
            return Err(DecodeError::Reserved { field });
        }
        Ok(())
    }

    /// `bytes`: u32 length (checked against `cap` first) and that many bytes.
    pub fn bytes(&mut self, cap: u32, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)?;
        if len > cap {
            return Err(DecodeError::TooLong {
                field,
                len: u64::from(len),
                cap: u64::from(cap),
            });
        }
        self.take(len as usize, field)
    }

    /// `str`: `bytes` holding UTF-8 without NUL.
    pub fn str(&mut self, cap: u32, field: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.bytes(cap, field)?;
        let s = std::str::from_utf8(b).map_err(|_| DecodeError::BadText { field })?;
        if s.contains('\0') {
            return Err(DecodeError::BadText { field });
        }
        Ok(s)
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Appends `bytes` (u32 length + bytes). The caller keeps `b` under the field's cap.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Checks a string against a field's cap and the no-NUL rule before it is written.
pub fn check_str(s: &str, cap: u32, field: &'static str) -> Result<(), DecodeError> {
    if s.len() as u64 > u64::from(cap) {
        return Err(DecodeError::TooLong {
            field,
            len: s.len() as u64,
            cap: u64::from(cap),
        });
    }
    if s.contains('\0') {
        return Err(DecodeError::BadText { field });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_rejects() {
        let mut b = vec![1u8, 2, 0];
        put_bytes(&mut b, b"hey");
        b.extend_from_slice(&7u64.to_le_bytes());
        let mut r = Reader::new(&b);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(r.str(3, "s").unwrap(), "hey");
        assert_eq!(r.u64("n").unwrap(), 7);
        r.finish().unwrap();

        let mut r = Reader::new(&b[3..]);
        assert_eq!(
            r.str(2, "s"),
            Err(DecodeError::TooLong {
                field: "s",
                len: 3,
                cap: 2
            })
        );
        let mut r = Reader::new(&b[..5]);
        r.take(3, "x").unwrap();
        assert_eq!(r.u32("y"), Err(DecodeError::Truncated { field: "y" }));
        let r = Reader::new(&b);
        assert_eq!(r.finish(), Err(DecodeError::Trailing(b.len())));
        let mut nul = Vec::new();
        put_bytes(&mut nul, b"a\0b");
        assert_eq!(
            Reader::new(&nul).str(9, "s"),
            Err(DecodeError::BadText { field: "s" })
        );
        let mut bad = Vec::new();
        put_bytes(&mut bad, &[0xff, 0xfe]);
        assert_eq!(
            Reader::new(&bad).str(9, "s"),
            Err(DecodeError::BadText { field: "s" })
        );
        assert!(Reader::new(&[0, 1]).reserved(2, "r").is_err());
        assert!(Reader::new(&[2]).bool("f").is_err());
        // A huge length is refused before anything is allocated or read.
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            Reader::new(&huge).bytes(10, "h"),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(check_str("abc", 2, "f").is_err());
        assert!(check_str("a\0", 9, "f").is_err());
    }
}
