//! Blobs and packs (format.md §7, §8): compressing and sealing one chunk, streaming blobs into a
//! pack with its encrypted header at the end, and reading a pack back with every check of §8.

use super::caps::{BLOB_PLAIN_MAX, HEADER_MAX, PACK_BLOBS_MAX, PACK_FILE_MAX};
use super::ids::{ChunkId, PackId};
use super::keys::Keys;
use super::seal::{self, BlobKind, SealError, AEAD_OVERHEAD, FLAG_COMPRESSED};
use super::storage::{NewFile, Storage, StorageError};

/// Magic at the start of a pack.
pub const PACK_MAGIC: [u8; 8] = *b"CRDLPACK";
/// Magic at the very end of a pack.
pub const PACK_END_MAGIC: [u8; 8] = *b"CRDLPEND";
/// Bytes after the encrypted header: its length and the end magic.
pub const TRAILER_LEN: u64 = 12;
/// Bytes of one header entry.
pub const ENTRY_LEN: usize = 42;
/// zstd level used when compressing (not recorded; decoding does not need it).
pub const ZSTD_LEVEL: i32 = 3;

/// One blob as listed in a pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// What the blob was first written for.
    pub kind: BlobKind,
    /// Blob flags (`FLAG_COMPRESSED`).
    pub flags: u8,
    /// Length in the pack: 40 + payload.
    pub stored_len: u32,
    /// Length of the chunk after decompression.
    pub plain_len: u32,
    /// The chunk's keyed ID.
    pub id: ChunkId,
}

/// A blob's entry and where it starts in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLoc {
    /// The header entry.
    pub entry: PackEntry,
    /// Offset of the blob in the pack file.
    pub offset: u32,
}

/// What is wrong with a pack or one of its blobs.
#[derive(Debug, thiserror::Error)]
pub enum PackProblem {
    /// The file could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Shorter than magic + trailer, or longer than `PACK_FILE_MAX`.
    #[error("bad pack length {0}")]
    Length(u64),
    /// The end magic is wrong: not a pack, or a torn one.
    #[error("bad end magic")]
    EndMagic,
    /// The start magic is wrong.
    #[error("bad start magic")]
    StartMagic,
    /// The header length field is over `HEADER_MAX` or does not fit in the file.
    #[error("bad header length {0}")]
    HeaderLength(u64),
    /// The header does not unseal (damaged, or moved from another pack).
    #[error("header: {0}")]
    HeaderSeal(SealError),
    /// The header plaintext is malformed.
    #[error("malformed header: {0}")]
    Header(&'static str),
    /// The entries do not cover the blob area exactly.
    #[error("entries cover {covered} bytes, blob area is {area}")]
    Tiling {
        /// Bytes the entries add up to.
        covered: u64,
        /// Bytes between the start magic and the header.
        area: u64,
    },
    /// A blob does not unseal.
    #[error("blob {0}: authentication failed")]
    BlobSeal(ChunkId),
    /// A blob does not decompress to its `plain_len`.
    #[error("blob {0}: bad compressed data or length")]
    Decompress(ChunkId),
    /// A blob's plaintext does not hash to its ChunkId.
    #[error("blob {0}: content does not match its ChunkId")]
    WrongChunkId(ChunkId),
    /// The pack would exceed a cap while being written.
    #[error("pack full")]
    Full,
}

/// A pack's problem, naming the pack.
#[derive(Debug, thiserror::Error)]
#[error("pack {pack}: {problem}")]
pub struct PackError {
    /// The pack.
    pub pack: PackId,
    /// What is wrong.
    #[source]
    pub problem: PackProblem,
}

fn err(pack: &PackId, problem: impl Into<PackProblem>) -> PackError {
    PackError {
        pack: *pack,
        problem: problem.into(),
    }
}

/// Encodes the header plaintext: version, reserved, count, entries.
pub fn encode_header(entries: &[PackEntry], out: &mut Vec<u8>) {
    out.push(1);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.push(e.kind.code());
        out.push(e.flags);
        out.extend_from_slice(&e.stored_len.to_le_bytes());
        out.extend_from_slice(&e.plain_len.to_le_bytes());
        out.extend_from_slice(e.id.as_bytes());
    }
}

/// Decodes the header plaintext, checking version, reserved bytes, count, kinds, flags and caps.
pub fn decode_header(b: &[u8]) -> Result<Vec<PackEntry>, PackProblem> {
    if b.len() < 8 {
        return Err(PackProblem::Header("too short"));
    }
    if b[0] != 1 {
        return Err(PackProblem::Header("unknown header layout version"));
    }
    if b[1..4] != [0, 0, 0] {
        return Err(PackProblem::Header("reserved bytes not zero"));
    }
    let n = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if n > PACK_BLOBS_MAX {
        return Err(PackProblem::Header("too many entries"));
    }
    if (b.len() - 8) as u64 != u64::from(n) * ENTRY_LEN as u64 {
        return Err(PackProblem::Header("length does not match the entry count"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for e in b[8..].chunks_exact(ENTRY_LEN) {
        let kind = BlobKind::from_code(e[0]).ok_or(PackProblem::Header("unknown blob kind"))?;
        let flags = e[1];
        if flags & !FLAG_COMPRESSED != 0 {
            return Err(PackProblem::Header("unknown blob flags"));
        }
        let stored_len = u32::from_le_bytes([e[2], e[3], e[4], e[5]]);
        let plain_len = u32::from_le_bytes([e[6], e[7], e[8], e[9]]);
        if (stored_len as usize) < AEAD_OVERHEAD {
            return Err(PackProblem::Header("blob shorter than its nonce and tag"));
        }
        if plain_len > BLOB_PLAIN_MAX {
            return Err(PackProblem::Header("plain length over the cap"));
        }
        if flags & FLAG_COMPRESSED == 0
            && stored_len as u64 != plain_len as u64 + AEAD_OVERHEAD as u64
        {
            return Err(PackProblem::Header("stored length of an uncompressed blob"));
        }
        let id = ChunkId::from_slice(&e[10..42]).ok_or(PackProblem::Header("entry length"))?;
        out.push(PackEntry {
            kind,
            flags,
            stored_len,
            plain_len,
            id,
        });
    }
    Ok(out)
}

fn header_aad(pack: &PackId) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..8].copy_from_slice(b"CRDLPHDR");
    aad[8..].copy_from_slice(pack.as_bytes());
    aad
}

/// Parses the last 12 bytes of a pack of `file_len` bytes: returns the encrypted header length,
/// checked against `HEADER_MAX` and the file length.
pub fn parse_trailer(pack: &PackId, trailer: &[u8], file_len: u64) -> Result<u32, PackError> {
    if !(8 + TRAILER_LEN..=PACK_FILE_MAX).contains(&file_len) {
        return Err(err(pack, PackProblem::Length(file_len)));
    }
    if trailer.len() != TRAILER_LEN as usize {
        return Err(err(pack, PackProblem::Length(file_len)));
    }
    if trailer[4..12] != PACK_END_MAGIC {
        return Err(err(pack, PackProblem::EndMagic));
    }
    let h = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if h > HEADER_MAX || u64::from(h) + 20 > file_len || (h as usize) < AEAD_OVERHEAD + 8 {
        return Err(err(pack, PackProblem::HeaderLength(u64::from(h))));
    }
    Ok(h)
}

/// Unseals and decodes an encrypted header, then checks that its entries tile the blob area
/// `8..file_len - 12 - header.len()` exactly. Returns every blob with its offset.
pub fn open_header(
    keys: &Keys,
    pack: &PackId,
    encrypted: &[u8],
    file_len: u64,
) -> Result<Vec<BlobLoc>, PackError> {
    let plain = seal::open(keys.data_key(), &header_aad(pack), encrypted)
        .map_err(|e| err(pack, PackProblem::HeaderSeal(e)))?;
    let entries = decode_header(&plain).map_err(|p| err(pack, p))?;
    let area = file_len
        .checked_sub(8 + TRAILER_LEN + encrypted.len() as u64)
        .ok_or_else(|| err(pack, PackProblem::HeaderLength(encrypted.len() as u64)))?;
    let mut offset = 8u64;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        out.push(BlobLoc {
            entry,
            offset: offset as u32,
        });
        offset += u64::from(entry.stored_len);
        if offset - 8 > area {
            break;
        }
    }
    let covered = offset - 8;
    if covered != area {
        return Err(err(pack, PackProblem::Tiling { covered, area }));
    }
    Ok(out)
}

/// Reads a pack's header through `storage`: size, trailer, encrypted header, tiling.
/// Returns the file length and every blob.
pub fn read_pack_header(
    storage: &dyn Storage,
    keys: &Keys,
    pack: &PackId,
) -> Result<(u64, Vec<BlobLoc>), PackError> {
    let path = pack.path();
    let len = storage.size(&path).map_err(|e| err(pack, e))?;
    if len < 8 + TRAILER_LEN {
        return Err(err(pack, PackProblem::Length(len)));
    }
    let trailer = storage
        .read_range(&path, len - TRAILER_LEN, TRAILER_LEN)
        .map_err(|e| err(pack, e))?;
    let h = parse_trailer(pack, &trailer, len)?;
    let enc = storage
        .read_range(&path, len - TRAILER_LEN - u64::from(h), u64::from(h))
        .map_err(|e| err(pack, e))?;
    Ok((len, open_header(keys, pack, &enc, len)?))
}

/// Reads, unseals and decompresses one blob; with `verify`, also recomputes its ChunkId.
pub fn read_blob(
    storage: &dyn Storage,
    keys: &Keys,
    pack: &PackId,
    loc: &BlobLoc,
    verify: bool,
) -> Result<Vec<u8>, PackError> {
    let sealed = storage
        .read_range(
            &pack.path(),
            u64::from(loc.offset),
            u64::from(loc.entry.stored_len),
        )
        .map_err(|e| err(pack, e))?;
    decode_blob(keys, &loc.entry, &sealed, verify).map_err(|p| err(pack, p))
}

/// Unseals and decompresses a blob's stored bytes against its header entry.
pub fn decode_blob(
    keys: &Keys,
    entry: &PackEntry,
    sealed: &[u8],
    verify: bool,
) -> Result<Vec<u8>, PackProblem> {
    let e = entry;
    let payload = seal::open_blob(keys, &e.id, e.kind, e.flags, sealed)
        .map_err(|_| PackProblem::BlobSeal(e.id))?;
    let plain = if e.flags & FLAG_COMPRESSED != 0 {
        let mut out = Vec::with_capacity(e.plain_len as usize);
        zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(&payload, &mut out))
            .map_err(|_| PackProblem::Decompress(e.id))?;
        out
    } else {
        payload
    };
    if plain.len() != e.plain_len as usize {
        return Err(PackProblem::Decompress(e.id));
    }
    if verify && keys.chunk_id(&plain) != e.id {
        return Err(PackProblem::WrongChunkId(e.id));
    }
    Ok(plain)
}

/// Compresses (when a compressor is given and it pays: `len(c) ≤ len − len/16`) and seals one
/// chunk into `out`, a buffer reused from chunk to chunk: the blob is `out[..stored_len]` of the
/// returned entry. The chunk is compressed straight into `out` and encrypted there, or encrypted
/// from where it lies; `out` only grows (its new part zeroed once), so no chunk is copied first.
pub fn encode_blob(
    keys: &Keys,
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    id: &ChunkId,
    kind: BlobKind,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> PackEntry {
    let room = match compressor {
        Some(_) => zstd::zstd_safe::compress_bound(plain.len()).max(plain.len()),
        None => plain.len(),
    };
    if out.len() < room + AEAD_OVERHEAD {
        out.resize(room + AEAD_OVERHEAD, 0);
    }
    let mut compressed = None;
    if let Some(c) = compressor {
        let limit = plain.len() - plain.len() / 16;
        let body = &mut out[seal::NONCE_LEN..seal::NONCE_LEN + room];
        if let Ok(n) = c.compress_to_buffer(plain, body) {
            if limit > 0 && n <= limit {
                compressed = Some(n);
            }
        }
    }
    let (flags, len) = match compressed {
        Some(n) => {
            seal::seal_blob_in(out, keys, id, kind, FLAG_COMPRESSED, None, n);
            (FLAG_COMPRESSED, n)
        }
        None => {
            seal::seal_blob_in(out, keys, id, kind, 0, Some(plain), plain.len());
            (0, plain.len())
        }
    };
    PackEntry {
        kind,
        flags,
        stored_len: (len + AEAD_OVERHEAD) as u32,
        plain_len: plain.len() as u32,
        id: *id,
    }
}

/// A finished, durable pack.
#[derive(Debug, Clone)]
pub struct FinishedPack {
    /// Its ID.
    pub id: PackId,
    /// Its file length.
    pub file_len: u64,
    /// Every blob, with offsets.
    pub blobs: Vec<BlobLoc>,
}

/// Streams blobs into `packs/xx/<PackId>.tmp`; `finish` appends the sealed header and trailer
/// and makes the pack durable under its final name (§15.1 step 1).
pub struct PackWriter {
    id: PackId,
    file: Box<dyn NewFile>,
    blobs: Vec<BlobLoc>,
    len: u64,
}

impl PackWriter {
    /// Starts a pack with a fresh random PackId.
    pub fn create(storage: &dyn Storage) -> Result<Self, PackError> {
        let id = PackId::random();
        let mut file = storage
            .create_streaming(&id.path())
            .map_err(|e| err(&id, e))?;
        file.write(&PACK_MAGIC).map_err(|e| err(&id, e))?;
        Ok(PackWriter {
            id,
            file,
            blobs: Vec::new(),
            len: PACK_MAGIC.len() as u64,
        })
    }

    /// The pack's ID.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Blobs written so far.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// True when no blob has been written.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Whether a blob of `stored_len` bytes still fits under the caps, header and trailer included.
    pub fn has_room(&self, stored_len: usize) -> bool {
        let n = self.blobs.len() as u64 + 1;
        let header = 8 + ENTRY_LEN as u64 * n + AEAD_OVERHEAD as u64;
        n <= u64::from(PACK_BLOBS_MAX)
            && self.len + stored_len as u64 + header + TRAILER_LEN <= PACK_FILE_MAX
    }

    /// Appends one sealed blob (as made by `encode_blob`) and returns where it lies.
    pub fn add(&mut self, entry: PackEntry, blob: &[u8]) -> Result<BlobLoc, PackError> {
        if !self.has_room(blob.len()) || blob.len() != entry.stored_len as usize {
            return Err(err(&self.id, PackProblem::Full));
        }
        self.file.write(blob).map_err(|e| err(&self.id, e))?;
        let loc = BlobLoc {
            entry,
            offset: self.len as u32,
        };
        self.len += blob.len() as u64;
        self.blobs.push(loc);
        Ok(loc)
    }

    /// Writes the sealed header and trailer, fsyncs, renames, fsyncs the directory.
    pub fn finish(mut self, keys: &Keys) -> Result<FinishedPack, PackError> {
        let entries: Vec<PackEntry> = self.blobs.iter().map(|b| b.entry).collect();
        let mut plain = Vec::with_capacity(8 + ENTRY_LEN * entries.len());
        encode_header(&entries, &mut plain);
        let mut tail = seal::seal(keys.data_key(), &header_aad(&self.id), &plain);
        let h = tail.len() as u32;
        tail.extend_from_slice(&h.to_le_bytes());
        tail.extend_from_slice(&PACK_END_MAGIC);
        self.file.write(&tail).map_err(|e| err(&self.id, e))?;
        let file_len = self.len + tail.len() as u64;
        self.file.finish().map_err(|e| err(&self.id, e))?;
        Ok(FinishedPack {
            id: self.id,
            file_len,
            blobs: self.blobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::MasterSecret;
    use crate::store::storage::CrashStorage;

    fn keys() -> Keys {
        Keys::derive(&MasterSecret::from_bytes([5u8; 32]))
    }

    fn blob(k: &Keys, kind: BlobKind, plain: &[u8], compress: bool) -> (PackEntry, Vec<u8>) {
        let id = k.chunk_id(plain);
        let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        let mut out = Vec::new();
        let e = encode_blob(k, compress.then_some(&mut c), &id, kind, plain, &mut out);
        out.truncate(e.stored_len as usize);
        (e, out)
    }

    /// Builds pack bytes by hand, with `gap` stray bytes between the blobs and the header.
    fn build(k: &Keys, pack: &PackId, blobs: &[(PackEntry, Vec<u8>)], gap: usize) -> Vec<u8> {
        let mut f = PACK_MAGIC.to_vec();
        for (_, b) in blobs {
            f.extend_from_slice(b);
        }
        f.extend(std::iter::repeat_n(0u8, gap));
        let entries: Vec<PackEntry> = blobs.iter().map(|b| b.0).collect();
        let mut plain = Vec::new();
        encode_header(&entries, &mut plain);
        let enc = seal::seal(k.data_key(), &header_aad(pack), &plain);
        f.extend_from_slice(&enc);
        f.extend_from_slice(&(enc.len() as u32).to_le_bytes());
        f.extend_from_slice(&PACK_END_MAGIC);
        f
    }

    fn open_bytes(k: &Keys, pack: &PackId, f: &[u8]) -> Result<Vec<BlobLoc>, PackError> {
        let len = f.len() as u64;
        let h = parse_trailer(pack, &f[f.len() - 12..], len)?;
        open_header(k, pack, &f[f.len() - 12 - h as usize..f.len() - 12], len)
    }

    #[test]
    fn compression_only_when_it_pays() {
        let k = keys();
        let (e, b) = blob(&k, BlobKind::Data, &[7u8; 10_000], true);
        assert_eq!(e.flags, FLAG_COMPRESSED);
        assert!(b.len() < 200);
        let mut x = 88172645463325252u64;
        let noise: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let (e, b) = blob(&k, BlobKind::Data, &noise, true);
        assert_eq!(e.flags, 0);
        assert_eq!(b.len(), 10_040);
        let (e, b) = blob(&k, BlobKind::Data, b"", true);
        assert_eq!((e.flags, e.stored_len, e.plain_len), (0, 40, 0));
        assert_eq!(decode_blob(&k, &e, &b, true).unwrap(), b"");
    }

    #[test]
    fn pack_round_trip_through_storage() {
        let k = keys();
        let s = CrashStorage::new();
        s.create_dir("packs/00").unwrap();
        let mut w = loop {
            // The directory must match the random PackId's first byte.
            let w = PackWriter::create(&s);
            match w {
                Ok(w) => break w,
                Err(_) => {
                    for i in 0..=255u8 {
                        s.create_dir(&format!("packs/{i:02x}")).unwrap();
                    }
                }
            }
        };
        let plains: Vec<Vec<u8>> = vec![
            vec![1u8; 5000],
            b"short".to_vec(),
            (0..3000u32).map(|i| i as u8).collect(),
        ];
        for (i, p) in plains.iter().enumerate() {
            let (e, b) = blob(
                &k,
                if i == 1 {
                    BlobKind::Meta
                } else {
                    BlobKind::Data
                },
                p,
                true,
            );
            w.add(e, &b).unwrap();
        }
        let id = w.id();
        let fin = w.finish(&k).unwrap();
        assert_eq!(s.size(&id.path()).unwrap(), fin.file_len);
        let (len, locs) = read_pack_header(&s, &k, &id).unwrap();
        assert_eq!(len, fin.file_len);
        assert_eq!(locs, fin.blobs);
        for (loc, p) in locs.iter().zip(&plains) {
            assert_eq!(&read_blob(&s, &k, &id, loc, true).unwrap(), p);
        }
        assert!(!s.file_names().iter().any(|n| n.ends_with(".tmp")));
    }

    #[test]
    fn header_and_tiling_rejections() {
        let k = keys();
        let pack = PackId::random();
        let blobs = vec![
            blob(&k, BlobKind::Data, b"alpha", false),
            blob(&k, BlobKind::Data, b"beta", false),
        ];
        let good = build(&k, &pack, &blobs, 0);
        assert_eq!(open_bytes(&k, &pack, &good).unwrap().len(), 2);

        // A gap between the last blob and the header.
        let gap = build(&k, &pack, &blobs, 1);
        assert!(matches!(
            open_bytes(&k, &pack, &gap).unwrap_err().problem,
            PackProblem::Tiling { .. }
        ));
        // Entries that cover more than the area (a blob missing from the file).
        let mut over = PACK_MAGIC.to_vec();
        over.extend_from_slice(&blobs[0].1);
        let full = build(&k, &pack, &blobs, 0);
        let tail = &full[8 + blobs[0].1.len() + blobs[1].1.len()..];
        over.extend_from_slice(tail);
        assert!(matches!(
            open_bytes(&k, &pack, &over).unwrap_err().problem,
            PackProblem::Tiling { .. }
        ));
        // The header of another pack (moved or renamed file).
        assert!(matches!(
            open_bytes(&k, &PackId::random(), &good)
                .unwrap_err()
                .problem,
            PackProblem::HeaderSeal(SealError::BadTag)
        ));
        // Bad end magic.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(matches!(
            open_bytes(&k, &pack, &bad).unwrap_err().problem,
            PackProblem::EndMagic
        ));
        // Header length over the cap, or over the file.
        let mut bad = good.clone();
        bad[n - 12..n - 8].copy_from_slice(&(HEADER_MAX + 1).to_le_bytes());
        assert!(matches!(
            open_bytes(&k, &pack, &bad).unwrap_err().problem,
            PackProblem::HeaderLength(_)
        ));
        let mut bad = good.clone();
        bad[n - 12..n - 8].copy_from_slice(&(n as u32).to_le_bytes());
        assert!(matches!(
            open_bytes(&k, &pack, &bad).unwrap_err().problem,
            PackProblem::HeaderLength(_)
        ));
        // A flipped bit in the header ciphertext.
        let mut bad = good.clone();
        bad[n - 30] ^= 4;
        assert!(matches!(
            open_bytes(&k, &pack, &bad).unwrap_err().problem,
            PackProblem::HeaderSeal(_)
        ));
        // Too short to be a pack.
        assert!(matches!(
            parse_trailer(&pack, &good[n - 12..], 19)
                .unwrap_err()
                .problem,
            PackProblem::Length(19)
        ));
        assert!(matches!(
            parse_trailer(&pack, &good[n - 12..], PACK_FILE_MAX + 1)
                .unwrap_err()
                .problem,
            PackProblem::Length(_)
        ));
    }

    #[test]
    fn header_plaintext_rejections() {
        let e = PackEntry {
            kind: BlobKind::Data,
            flags: 0,
            stored_len: 45,
            plain_len: 5,
            id: ChunkId::from_bytes([1; 32]),
        };
        let mut h = Vec::new();
        encode_header(&[e], &mut h);
        assert_eq!(decode_header(&h).unwrap(), vec![e]);
        let cases: Vec<(usize, u8)> = vec![(0, 2), (1, 1), (8, 9), (9, 2), (4, 2)];
        for (off, v) in cases {
            let mut b = h.clone();
            b[off] = v;
            assert!(decode_header(&b).is_err(), "offset {off}");
        }
        assert!(decode_header(&h[..h.len() - 1]).is_err());
        let mut big = e;
        big.plain_len = BLOB_PLAIN_MAX + 1;
        big.flags = FLAG_COMPRESSED;
        let mut b = Vec::new();
        encode_header(&[big], &mut b);
        assert!(decode_header(&b).is_err());
        let mut small = e;
        small.stored_len = 39;
        let mut b = Vec::new();
        encode_header(&[small], &mut b);
        assert!(decode_header(&b).is_err());
        let mut count = h.clone();
        count[4..8].copy_from_slice(&(PACK_BLOBS_MAX + 1).to_le_bytes());
        assert!(decode_header(&count).is_err());
    }

    #[test]
    fn blob_rejections() {
        let k = keys();
        let (e, b) = blob(&k, BlobKind::Data, &[3u8; 4000], true);
        assert_eq!(decode_blob(&k, &e, &b, true).unwrap(), vec![3u8; 4000]);
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert!(matches!(
            decode_blob(&k, &e, &bad, true),
            Err(PackProblem::BlobSeal(_))
        ));
        // A header lying about the plain length.
        let mut lie = e;
        lie.plain_len = 3999;
        assert!(matches!(
            decode_blob(&k, &lie, &b, true),
            Err(PackProblem::Decompress(_))
        ));
        // A blob sealed under a ChunkId that is not its content's.
        let wrong = ChunkId::from_bytes([9; 32]);
        let mut out = Vec::new();
        let e2 = encode_blob(&k, None, &wrong, BlobKind::Data, b"content", &mut out);
        out.truncate(e2.stored_len as usize);
        assert!(matches!(
            decode_blob(&k, &e2, &out, true),
            Err(PackProblem::WrongChunkId(_))
        ));
        assert!(decode_blob(&k, &e2, &out, false).is_ok());
        // Flipped compression flag: the AAD no longer matches.
        let mut flip = e;
        flip.flags = 0;
        assert!(matches!(
            decode_blob(&k, &flip, &b, false),
            Err(PackProblem::BlobSeal(_))
        ));
    }
}
