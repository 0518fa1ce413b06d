//! A bounded, non-expanding reader and a CoreFoundation-style writer for binary property lists.
//! The reader gives objects by index (shared objects are never copied, so no "billion laughs");
//! the writer lays objects out the way Apple's CFBinaryPList does, so archives can be byte-exact.

use std::borrow::Cow;
use std::collections::HashMap;

/// The eight magic bytes every binary plist starts with.
pub const MAGIC: &[u8; 8] = b"bplist00";
/// Size of the fixed trailer at the end of a binary plist.
const TRAILER_LEN: usize = 32;
/// The widest UID accepted (CoreFoundation writes at most 4 bytes; 8 is the format's limit).
const MAX_UID_BYTES: usize = 8;

/// Why a byte string is not an acceptable binary plist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BplistError {
    /// Shorter than a header plus a trailer.
    #[error("{len} bytes is too short for a binary plist")]
    TooShort { len: usize },
    /// Does not start with `bplist00`.
    #[error("missing the bplist00 magic")]
    BadMagic,
    /// The trailer's sizes, counts or offsets are impossible.
    #[error("invalid trailer: {0}")]
    BadTrailer(&'static str),
    /// An object offset points outside the object area.
    #[error("object {index} has an offset outside the object area")]
    BadOffset { index: usize },
    /// An object runs past the end of the object area.
    #[error("object {index} is truncated")]
    Truncated { index: usize },
    /// An object uses a marker this reader does not accept.
    #[error("object {index} has an unsupported marker 0x{marker:02x}")]
    BadMarker { index: usize, marker: u8 },
    /// A reference names an object that does not exist.
    #[error("reference to object {reference}, but there are only {count} objects")]
    BadRef { reference: u64, count: usize },
    /// A string object is not valid ASCII or UTF-16.
    #[error("object {index} is not a valid string")]
    BadString { index: usize },
    /// A collection contains itself, directly or indirectly.
    #[error("object {index} contains itself")]
    Cycle { index: usize },
    /// Expanded as a tree the plist would exceed a value, byte or depth cap.
    #[error(
        "the plist expands beyond {} values, {} bytes or {} levels",
        .0.max_values,
        .0.max_bytes,
        .0.max_depth
    )]
    TooComplex(ExpansionLimits),
}

/// Caps on a plist expanded as a tree; see [`Bplist::check_complexity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpansionLimits {
    /// Values (every scalar and collection, counted once per use).
    pub max_values: u64,
    /// String and data payload bytes, counted once per use.
    pub max_bytes: u64,
    /// Nesting levels (a lone scalar is one level).
    pub max_depth: usize,
}

/// A parsed binary plist: the trailer and offset table, with objects decoded on demand.
#[derive(Debug, Clone)]
pub struct Bplist<'a> {
    data: &'a [u8],
    offset_size: usize,
    ref_size: usize,
    num_objects: usize,
    top: usize,
    table: usize,
}

/// One decoded object. Collections hold references (object indices), not copies.
#[derive(Debug, Clone, PartialEq)]
pub enum Object<'a> {
    Null,
    Bool(bool),
    /// Integers of every width; 16-byte integers carry unsigned 64-bit values.
    Int(i128),
    Real(f64),
    /// Seconds since 2001-01-01 00:00:00 UTC.
    Date(f64),
    Data(&'a [u8]),
    String(Cow<'a, str>),
    Uid(u64),
    Array(Refs<'a>),
    Set(Refs<'a>),
    Dict {
        keys: Refs<'a>,
        values: Refs<'a>,
    },
}

impl Object<'_> {
    /// A short type name for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::Null => "null",
            Object::Bool(_) => "boolean",
            Object::Int(_) => "integer",
            Object::Real(_) => "real",
            Object::Date(_) => "date",
            Object::Data(_) => "data",
            Object::String(_) => "string",
            Object::Uid(_) => "UID",
            Object::Array(_) => "array",
            Object::Set(_) => "set",
            Object::Dict { .. } => "dictionary",
        }
    }
}

/// A list of object references inside a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refs<'a> {
    bytes: &'a [u8],
    size: usize,
    count: usize,
}

impl Refs<'_> {
    /// Number of references.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.size
    }

    /// True if the collection is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The object index at position `i`, checked against the object count.
    pub fn get(&self, i: usize) -> Result<usize, BplistError> {
        let start = i.checked_mul(self.size).ok_or(BplistError::BadRef {
            reference: u64::MAX,
            count: self.count,
        })?;
        let raw = self
            .bytes
            .get(start..start + self.size)
            .ok_or(BplistError::BadRef {
                reference: u64::MAX,
                count: self.count,
            })?;
        let reference = be_uint(raw);
        match usize::try_from(reference) {
            Ok(r) if r < self.count => Ok(r),
            _ => Err(BplistError::BadRef {
                reference,
                count: self.count,
            }),
        }
    }

    /// All references, in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<usize, BplistError>> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }
}

/// Big-endian unsigned integer of 1..=8 bytes.
fn be_uint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

impl<'a> Bplist<'a> {
    /// Checks the header, trailer and offset table. Objects are decoded later, on demand.
    pub fn parse(data: &'a [u8]) -> Result<Self, BplistError> {
        if data.len() < MAGIC.len() + TRAILER_LEN {
            return Err(BplistError::TooShort { len: data.len() });
        }
        if &data[..MAGIC.len()] != MAGIC {
            return Err(BplistError::BadMagic);
        }
        let trailer_at = data.len() - TRAILER_LEN;
        let trailer = &data[trailer_at..];
        let offset_size = usize::from(trailer[6]);
        let ref_size = usize::from(trailer[7]);
        if !matches!(offset_size, 1 | 2 | 3 | 4 | 8) {
            return Err(BplistError::BadTrailer("offset size"));
        }
        if !matches!(ref_size, 1 | 2 | 3 | 4 | 8) {
            return Err(BplistError::BadTrailer("reference size"));
        }
        let num_objects = be_uint(&trailer[8..16]);
        let top = be_uint(&trailer[16..24]);
        let table = be_uint(&trailer[24..32]);
        // Each object needs at least one byte before the table, so the count is bounded by the
        // input length: nothing below allocates in proportion to an unchecked number.
        let num_objects = usize::try_from(num_objects)
            .ok()
            .filter(|&n| n > 0 && n < data.len())
            .ok_or(BplistError::BadTrailer("object count"))?;
        let table = usize::try_from(table)
            .ok()
            .filter(|&t| t > MAGIC.len() && t <= trailer_at)
            .ok_or(BplistError::BadTrailer("offset table position"))?;
        let table_len = num_objects
            .checked_mul(offset_size)
            .ok_or(BplistError::BadTrailer("offset table size"))?;
        if table
            .checked_add(table_len)
            .is_none_or(|end| end > trailer_at)
        {
            return Err(BplistError::BadTrailer("offset table size"));
        }
        let top = usize::try_from(top)
            .ok()
            .filter(|&t| t < num_objects)
            .ok_or(BplistError::BadTrailer("top object"))?;
        Ok(Bplist {
            data,
            offset_size,
            ref_size,
            num_objects,
            top,
            table,
        })
    }

    /// Index of the top (root) object.
    pub fn top(&self) -> usize {
        self.top
    }

    /// Number of objects in the table.
    pub fn num_objects(&self) -> usize {
        self.num_objects
    }

    fn offset_of(&self, index: usize) -> Result<usize, BplistError> {
        if index >= self.num_objects {
            return Err(BplistError::BadRef {
                reference: index as u64,
                count: self.num_objects,
            });
        }
        let at = self.table + index * self.offset_size;
        let raw = &self.data[at..at + self.offset_size];
        usize::try_from(be_uint(raw))
            .ok()
            .filter(|&o| o >= MAGIC.len() && o < self.table)
            .ok_or(BplistError::BadOffset { index })
    }

    /// Decodes object `index`.
    pub fn object(&self, index: usize) -> Result<Object<'a>, BplistError> {
        let start = self.offset_of(index)?;
        // Objects live between the header and the offset table.
        let area = &self.data[..self.table];
        let truncated = BplistError::Truncated { index };
        let take = |from: usize, len: usize| -> Result<&'a [u8], BplistError> {
            let end = from.checked_add(len).ok_or(truncated.clone())?;
            self.data[..self.table]
                .get(from..end)
                .ok_or(truncated.clone())
        };
        let marker = area[start];
        let (kind, low) = (marker >> 4, marker & 0x0f);
        let mut pos = start + 1;
        // Reads a collection/string length: the low nibble, or an integer object after it.
        let read_len = |pos: &mut usize| -> Result<usize, BplistError> {
            if low != 0x0f {
                return Ok(usize::from(low));
            }
            let int_marker = *take(*pos, 1)?.first().ok_or(truncated.clone())?;
            if int_marker >> 4 != 0x1 || int_marker & 0x0f > 3 {
                return Err(BplistError::BadMarker {
                    index,
                    marker: int_marker,
                });
            }
            let width = 1usize << (int_marker & 0x0f);
            let raw = take(*pos + 1, width)?;
            *pos += 1 + width;
            usize::try_from(be_uint(raw)).map_err(|_| truncated.clone())
        };
        let bad_marker = BplistError::BadMarker { index, marker };
        Ok(match kind {
            0x0 => match low {
                0x0 => Object::Null,
                0x8 => Object::Bool(false),
                0x9 => Object::Bool(true),
                _ => return Err(bad_marker),
            },
            0x1 => {
                let raw = match low {
                    0..=3 => take(pos, 1 << low)?,
                    4 => take(pos, 16)?,
                    _ => return Err(bad_marker),
                };
                Object::Int(match low {
                    0..=2 => i128::from(be_uint(raw)),
                    3 => i128::from(be_uint(raw) as i64),
                    _ => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(raw);
                        i128::from_be_bytes(b)
                    }
                })
            }
            0x2 => match low {
                2 => {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(take(pos, 4)?);
                    Object::Real(f64::from(f32::from_be_bytes(b)))
                }
                3 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(take(pos, 8)?);
                    Object::Real(f64::from_be_bytes(b))
                }
                _ => return Err(bad_marker),
            },
            0x3 if low == 3 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(take(pos, 8)?);
                Object::Date(f64::from_be_bytes(b))
            }
            0x4 => {
                let len = read_len(&mut pos)?;
                Object::Data(take(pos, len)?)
            }
            0x5 => {
                let len = read_len(&mut pos)?;
                let raw = take(pos, len)?;
                if !raw.is_ascii() {
                    return Err(BplistError::BadString { index });
                }
                let s = std::str::from_utf8(raw).map_err(|_| BplistError::BadString { index })?;
                Object::String(Cow::Borrowed(s))
            }
            0x6 => {
                let units = read_len(&mut pos)?;
                let raw = take(pos, units.checked_mul(2).ok_or(truncated.clone())?)?;
                let s: Result<String, _> = char::decode_utf16(
                    raw.chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]])),
                )
                .collect();
                Object::String(Cow::Owned(s.map_err(|_| BplistError::BadString { index })?))
            }
            0x8 => {
                let width = usize::from(low) + 1;
                if width > MAX_UID_BYTES {
                    return Err(bad_marker);
                }
                Object::Uid(be_uint(take(pos, width)?))
            }
            0xa | 0xc | 0xd => {
                let len = read_len(&mut pos)?;
                let per = if kind == 0xd { 2 } else { 1 };
                let bytes_len = len
                    .checked_mul(per)
                    .and_then(|n| n.checked_mul(self.ref_size))
                    .ok_or(truncated.clone())?;
                let raw = take(pos, bytes_len)?;
                let refs = |bytes| Refs {
                    bytes,
                    size: self.ref_size,
                    count: self.num_objects,
                };
                match kind {
                    0xa => Object::Array(refs(raw)),
                    0xc => Object::Set(refs(raw)),
                    _ => {
                        let (k, v) = raw.split_at(len * self.ref_size);
                        Object::Dict {
                            keys: refs(k),
                            values: refs(v),
                        }
                    }
                }
            }
            _ => return Err(bad_marker),
        })
    }

    /// Direct children of object `index` (keys then values for a dictionary) and the bytes
    /// of its own payload (string or data length).
    fn children(&self, index: usize) -> Result<(Vec<usize>, u64), BplistError> {
        Ok(match self.object(index)? {
            Object::Array(r) | Object::Set(r) => (r.iter().collect::<Result<_, _>>()?, 0),
            Object::Dict { keys, values } => (
                keys.iter().chain(values.iter()).collect::<Result<_, _>>()?,
                0,
            ),
            Object::Data(d) => (Vec::new(), d.len() as u64),
            Object::String(s) => (Vec::new(), s.len() as u64),
            _ => (Vec::new(), 0),
        })
    }

    /// Checks that the plist, expanded as a tree from its top object (what a tree-building
    /// parser allocates: shared objects count once per use), stays within `limits`, and has no
    /// cycles. Runs in time linear in the object graph, whatever the expanded size.
    pub fn check_complexity(&self, limits: ExpansionLimits) -> Result<(), BplistError> {
        const UNSEEN: u8 = 0;
        const ON_STACK: u8 = 1;
        const DONE: u8 = 2;
        let too_complex = BplistError::TooComplex(limits);
        let n = self.num_objects;
        let mut state = vec![UNSEEN; n];
        // Expanded (values, payload bytes, depth) of each finished object.
        let mut size = vec![(0u64, 0u64, 0usize); n];
        // Iterative post-order walk: (object, its children, its own bytes, next child position).
        let mut stack: Vec<(usize, Vec<usize>, u64, usize)> = Vec::new();
        state[self.top] = ON_STACK;
        let (children, bytes) = self.children(self.top)?;
        stack.push((self.top, children, bytes, 0));
        while let Some(frame) = stack.last_mut() {
            if let Some(&child) = frame.1.get(frame.3) {
                frame.3 += 1;
                match state[child] {
                    ON_STACK => return Err(BplistError::Cycle { index: child }),
                    DONE => {}
                    _ => {
                        if stack.len() >= limits.max_depth {
                            return Err(too_complex);
                        }
                        state[child] = ON_STACK;
                        let (grandchildren, bytes) = self.children(child)?;
                        stack.push((child, grandchildren, bytes, 0));
                    }
                }
                continue;
            }
            let (index, children, own_bytes, _) = (frame.0, &frame.1, frame.2, frame.3);
            let (mut values, mut bytes, mut deepest) = (1u64, own_bytes, 0usize);
            for &child in children {
                let (v, b, d) = size[child];
                values = values.saturating_add(v);
                bytes = bytes.saturating_add(b);
                deepest = deepest.max(d);
            }
            if values > limits.max_values || bytes > limits.max_bytes || deepest >= limits.max_depth
            {
                return Err(too_complex);
            }
            size[index] = (values, bytes, deepest + 1);
            state[index] = DONE;
            stack.pop();
        }
        Ok(())
    }
}

/// An object waiting to be written.
#[derive(Debug, Clone)]
enum WObject {
    Int(i128),
    String(String),
    Data(Vec<u8>),
    Uid(u64),
    Array(Vec<usize>),
    Dict(Vec<usize>, Vec<usize>),
}

/// What makes two objects "the same" for uniquing. Integers carry a class so that values Apple
/// keeps apart (its NSNumbers of different C types) stay apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum UniqueKey {
    Int(u8, i128),
    String(String),
    Data(Vec<u8>),
    Uid(u64),
}

/// Builds a binary plist object by object, in the order CoreFoundation flattens a tree
/// (pre-order: a collection, then its keys, then each value with its own subtree), sharing
/// equal scalars the way Apple's writer does.
#[derive(Debug, Default)]
pub struct BplistWriter {
    objects: Vec<WObject>,
    unique: HashMap<UniqueKey, usize>,
}

impl BplistWriter {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, object: WObject) -> usize {
        self.objects.push(object);
        self.objects.len() - 1
    }

    fn push_unique(&mut self, key: UniqueKey, object: WObject) -> usize {
        if let Some(&index) = self.unique.get(&key) {
            return index;
        }
        let index = self.push(object);
        self.unique.insert(key, index);
        index
    }

    /// A string, shared with any earlier equal string.
    pub fn string(&mut self, s: &str) -> usize {
        self.push_unique(
            UniqueKey::String(s.to_owned()),
            WObject::String(s.to_owned()),
        )
    }

    /// A string that is never shared (nor reused later).
    pub fn fresh_string(&mut self, s: &str) -> usize {
        self.push(WObject::String(s.to_owned()))
    }

    /// An integer, shared with earlier equal integers of the same `class`.
    pub fn int(&mut self, class: u8, value: i128) -> usize {
        self.push_unique(UniqueKey::Int(class, value), WObject::Int(value))
    }

    /// A data object, shared with earlier equal data.
    pub fn data(&mut self, bytes: &[u8]) -> usize {
        self.push_unique(
            UniqueKey::Data(bytes.to_vec()),
            WObject::Data(bytes.to_vec()),
        )
    }

    /// A UID, shared with earlier equal UIDs.
    pub fn uid(&mut self, value: u64) -> usize {
        self.push_unique(UniqueKey::Uid(value), WObject::Uid(value))
    }

    /// Reserves a slot for a collection; fill it with `set_dict`/`set_array` once its children
    /// have been added (children must be added after the slot, to keep the pre-order layout).
    pub fn reserve(&mut self) -> usize {
        self.push(WObject::Array(Vec::new()))
    }

    /// Fills a reserved slot with a dictionary.
    pub fn set_dict(&mut self, slot: usize, keys: Vec<usize>, values: Vec<usize>) {
        debug_assert_eq!(keys.len(), values.len());
        if let Some(o) = self.objects.get_mut(slot) {
            *o = WObject::Dict(keys, values);
        }
    }

    /// Fills a reserved slot with an array.
    pub fn set_array(&mut self, slot: usize, items: Vec<usize>) {
        if let Some(o) = self.objects.get_mut(slot) {
            *o = WObject::Array(items);
        }
    }

    /// Serialises every object, with `top` as the root.
    pub fn finish(self, top: usize) -> Vec<u8> {
        let ref_size = byte_count(self.objects.len() as u64);
        let mut out = Vec::with_capacity(64 + self.objects.len() * 8);
        out.extend_from_slice(MAGIC);
        let mut offsets = Vec::with_capacity(self.objects.len());
        for object in &self.objects {
            offsets.push(out.len() as u64);
            match object {
                WObject::Int(v) => write_int(&mut out, *v),
                WObject::String(s) => {
                    if s.is_ascii() {
                        write_marker_len(&mut out, 0x5, s.len());
                        out.extend_from_slice(s.as_bytes());
                    } else {
                        let units: Vec<u16> = s.encode_utf16().collect();
                        write_marker_len(&mut out, 0x6, units.len());
                        for u in units {
                            out.extend_from_slice(&u.to_be_bytes());
                        }
                    }
                }
                WObject::Data(d) => {
                    write_marker_len(&mut out, 0x4, d.len());
                    out.extend_from_slice(d);
                }
                WObject::Uid(v) => {
                    let width = byte_count(*v);
                    out.push(0x80 | (width as u8 - 1));
                    out.extend_from_slice(&v.to_be_bytes()[8 - width..]);
                }
                WObject::Array(items) => {
                    write_marker_len(&mut out, 0xa, items.len());
                    write_refs(&mut out, items, ref_size);
                }
                WObject::Dict(keys, values) => {
                    write_marker_len(&mut out, 0xd, keys.len());
                    write_refs(&mut out, keys, ref_size);
                    write_refs(&mut out, values, ref_size);
                }
            }
        }
        let table = out.len() as u64;
        let offset_size = byte_count(table);
        for offset in &offsets {
            out.extend_from_slice(&offset.to_be_bytes()[8 - offset_size..]);
        }
        out.extend_from_slice(&[0u8; 6]);
        out.push(offset_size as u8);
        out.push(ref_size as u8);
        out.extend_from_slice(&(self.objects.len() as u64).to_be_bytes());
        out.extend_from_slice(&(top as u64).to_be_bytes());
        out.extend_from_slice(&table.to_be_bytes());
        out
    }
}

/// Bytes needed for `v` as CoreFoundation rounds them: 1, 2, 4 or 8.
fn byte_count(v: u64) -> usize {
    match v {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    }
}

fn write_int(out: &mut Vec<u8>, v: i128) {
    if v < 0 || v > i128::from(u64::MAX) {
        // Negative values are always 8 bytes; anything wider is not a plist integer, and is
        // clamped here only to keep the writer total (callers never pass it).
        let v = i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        out.push(0x13);
        out.extend_from_slice(&v.to_be_bytes());
    } else if v > i128::from(i64::MAX) {
        out.push(0x14);
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        let u = v as u64;
        let width = byte_count(u);
        out.push(0x10 | width.trailing_zeros() as u8);
        out.extend_from_slice(&u.to_be_bytes()[8 - width..]);
    }
}

fn write_marker_len(out: &mut Vec<u8>, kind: u8, len: usize) {
    if len < 15 {
        out.push((kind << 4) | len as u8);
    } else {
        out.push((kind << 4) | 0x0f);
        write_int(out, len as i128);
    }
}

fn write_refs(out: &mut Vec<u8>, refs: &[usize], ref_size: usize) {
    for &r in refs {
        out.extend_from_slice(&(r as u64).to_be_bytes()[8 - ref_size..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_value(bytes: &[u8]) -> plist::Value {
        plist::Value::from_reader(std::io::Cursor::new(bytes)).expect("plist crate reads it")
    }

    #[test]
    fn writer_output_reads_back_with_the_plist_crate() {
        let mut w = BplistWriter::new();
        let top = w.reserve();
        let k1 = w.string("a");
        let k2 = w.string("long key over fifteen chars");
        let k3 = w.string("é");
        let v1 = w.int(0, -5);
        let v2 = w.data(&[1u8; 300]);
        let v3 = w.int(0, i128::from(u64::MAX));
        w.set_dict(top, vec![k1, k2, k3], vec![v1, v2, v3]);
        let bytes = w.finish(top);
        let v = round_trip_value(&bytes);
        let d = v.as_dictionary().unwrap();
        assert_eq!(d.get("a").unwrap().as_signed_integer(), Some(-5));
        assert_eq!(
            d.get("long key over fifteen chars")
                .unwrap()
                .as_data()
                .unwrap()
                .len(),
            300
        );
        assert_eq!(d.get("é").unwrap().as_unsigned_integer(), Some(u64::MAX));

        let p = Bplist::parse(&bytes).unwrap();
        let Object::Dict { keys, values } = p.object(p.top()).unwrap() else {
            panic!()
        };
        assert_eq!(keys.len(), 3);
        assert_eq!(p.object(values.get(0).unwrap()).unwrap(), Object::Int(-5));
        assert_eq!(
            p.object(values.get(2).unwrap()).unwrap(),
            Object::Int(i128::from(u64::MAX))
        );
        assert_eq!(
            p.object(keys.get(2).unwrap()).unwrap(),
            Object::String("é".into())
        );
    }

    #[test]
    fn equal_scalars_are_shared_and_fresh_strings_are_not() {
        let mut w = BplistWriter::new();
        let a = w.string("x");
        let b = w.string("x");
        let c = w.fresh_string("x");
        let i = w.int(0, 7);
        let j = w.int(1, 7);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(i, j);
    }

    const LIMITS: ExpansionLimits = ExpansionLimits {
        max_values: 1_000_000,
        max_bytes: 1_000_000,
        max_depth: 100,
    };

    #[test]
    fn shared_large_string_counts_once_per_use() {
        // An array referencing one 100 KB string 100 times: 10 MB expanded.
        let mut w = BplistWriter::new();
        let top = w.reserve();
        let s = w.string(&"x".repeat(100_000));
        w.set_array(top, vec![s; 100]);
        let bytes = w.finish(top);
        let p = Bplist::parse(&bytes).unwrap();
        assert!(matches!(
            p.check_complexity(LIMITS),
            Err(BplistError::TooComplex(_))
        ));
        let roomy = ExpansionLimits {
            max_bytes: 20_000_000,
            ..LIMITS
        };
        p.check_complexity(roomy).unwrap();
        let shallow = ExpansionLimits {
            max_depth: 1,
            ..roomy
        };
        assert!(p.check_complexity(shallow).is_err());
    }

    /// A chain of arrays that each reference the next one twice expands to 2^n values.
    fn doubling_chain(levels: usize) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut offsets = Vec::new();
        for i in 0..levels {
            offsets.push(out.len() as u16);
            if i + 1 < levels {
                out.extend_from_slice(&[0xa2, (i + 1) as u8, (i + 1) as u8]);
            } else {
                out.push(0x08);
            }
        }
        let table = out.len() as u64;
        for o in offsets {
            out.extend_from_slice(&o.to_be_bytes());
        }
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 2, 1]);
        out.extend_from_slice(&(levels as u64).to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(&table.to_be_bytes());
        out
    }

    #[test]
    fn expansion_bomb_is_refused_quickly() {
        let bytes = doubling_chain(60);
        let p = Bplist::parse(&bytes).unwrap();
        assert!(matches!(
            p.check_complexity(LIMITS),
            Err(BplistError::TooComplex(_))
        ));
        // The same shape, small, passes.
        let small = doubling_chain(5);
        Bplist::parse(&small)
            .unwrap()
            .check_complexity(LIMITS)
            .unwrap();
    }

    #[test]
    fn self_reference_is_a_cycle() {
        // Object 0: an array holding itself.
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[0xa1, 0x00]);
        let table = bytes.len() as u64;
        bytes.push(8);
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 1]);
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&table.to_be_bytes());
        let p = Bplist::parse(&bytes).unwrap();
        assert_eq!(
            p.check_complexity(LIMITS),
            Err(BplistError::Cycle { index: 0 })
        );
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        assert!(matches!(
            Bplist::parse(b"short"),
            Err(BplistError::TooShort { .. })
        ));
        let mut junk = vec![0xffu8; 64];
        assert_eq!(Bplist::parse(&junk).unwrap_err(), BplistError::BadMagic);
        junk[..8].copy_from_slice(MAGIC);
        assert!(Bplist::parse(&junk).is_err());
        // Every truncation of a valid plist fails cleanly.
        let bytes = doubling_chain(4);
        for cut in 0..bytes.len() {
            let _ = Bplist::parse(&bytes[..cut]).and_then(|p| p.object(p.top()).map(|_| ()));
        }
    }
}
