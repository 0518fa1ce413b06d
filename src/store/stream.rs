//! The `Stream` value (format.md §9.1): a byte sequence stored as a list of ChunkIds, listed
//! directly or, for long streams, through meta chunks that hold the list.

use super::caps::STREAM_DIRECT_MAX;
use super::codec::{DecodeError, Reader};
use super::ids::ChunkId;

/// How a stream lists its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamForm {
    /// The listed chunks hold the stream's bytes.
    Direct,
    /// The listed (meta) chunks hold the stream's ChunkId list, 32 bytes per ChunkId.
    Indirect,
}

/// A stored byte sequence: its length and its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// Total length of the stream's bytes.
    pub length: u64,
    /// Direct or indirect.
    pub form: StreamForm,
    /// At most `STREAM_DIRECT_MAX` ChunkIds.
    pub ids: Vec<ChunkId>,
}

impl Stream {
    /// The empty stream: no chunks.
    pub fn empty() -> Self {
        Stream {
            length: 0,
            form: StreamForm::Direct,
            ids: Vec::new(),
        }
    }

    /// Bytes `encode` writes.
    pub fn encoded_len(&self) -> usize {
        13 + 32 * self.ids.len()
    }

    /// Appends `length u64 || form u8 || count u32 || count × ChunkId`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.length.to_le_bytes());
        out.push(match self.form {
            StreamForm::Direct => 0,
            StreamForm::Indirect => 1,
        });
        out.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        for id in &self.ids {
            out.extend_from_slice(id.as_bytes());
        }
    }

    /// Reads a stream, checking the count cap and that length and count agree on emptiness.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let length = r.u64("stream length")?;
        let form = match r.u8("stream form")? {
            0 => StreamForm::Direct,
            1 => StreamForm::Indirect,
            v => {
                return Err(DecodeError::UnknownValue {
                    field: "stream form",
                    value: u64::from(v),
                })
            }
        };
        let count = r.u32("stream count")?;
        if count > STREAM_DIRECT_MAX {
            return Err(DecodeError::TooLong {
                field: "stream count",
                len: u64::from(count),
                cap: u64::from(STREAM_DIRECT_MAX),
            });
        }
        if (length == 0) != (count == 0) || (form == StreamForm::Indirect && count == 0) {
            return Err(DecodeError::Invalid(
                "stream length and chunk count disagree",
            ));
        }
        let mut ids = Vec::with_capacity(count as usize);
        for _ in 0..count {
            ids.push(ChunkId::from_bytes(r.array("stream chunk id")?));
        }
        Ok(Stream { length, form, ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let s = Stream {
            length: 10,
            form: StreamForm::Indirect,
            ids: vec![ChunkId::from_bytes([1; 32]), ChunkId::from_bytes([2; 32])],
        };
        let mut b = Vec::new();
        s.encode(&mut b);
        assert_eq!(b.len(), s.encoded_len());
        let mut r = Reader::new(&b);
        assert_eq!(Stream::decode(&mut r).unwrap(), s);
        r.finish().unwrap();

        let mut e = Vec::new();
        Stream::empty().encode(&mut e);
        assert_eq!(
            Stream::decode(&mut Reader::new(&e)).unwrap(),
            Stream::empty()
        );

        let mut bad = b.clone();
        bad[8] = 2;
        assert!(matches!(
            Stream::decode(&mut Reader::new(&bad)),
            Err(DecodeError::UnknownValue { .. })
        ));
        let mut bad = b.clone();
        bad[9..13].copy_from_slice(&(STREAM_DIRECT_MAX + 1).to_le_bytes());
        assert!(matches!(
            Stream::decode(&mut Reader::new(&bad)),
            Err(DecodeError::TooLong { .. })
        ));
        let mut bad = b.clone();
        bad[..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            Stream::decode(&mut Reader::new(&bad)),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            Stream::decode(&mut Reader::new(&b[..40])),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
