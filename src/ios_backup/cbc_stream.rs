//! AES-256-CBC with a zero IV and PKCS#7, as Apple encrypts each backup file and Manifest.db,
//! streamed through fixed 64 KiB buffers so a file of any size is never held in memory.
//!
//! Decryption keeps one decrypted block back until the source reports EOF, because only the
//! last block carries the padding. Every key is per file, which is why a zero IV is safe here.

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use aes::Aes256;
use std::io::{self, Read, Write};
use zeroize::Zeroizing;

/// AES block size.
pub const BLOCK_LEN: usize = 16;
/// Size of the working buffers: big enough for the AES back end to decrypt many blocks in
/// parallel, small enough for the box's RAM. A multiple of [`BLOCK_LEN`].
pub const BUF_LEN: usize = 64 * 1024;
/// SQLite's smallest page size: a bare SQLite file is always a multiple of it.
pub const SQLITE_MIN_PAGE: u64 = 512;

type Decryptor = cbc::Decryptor<Aes256>;
type Encryptor = cbc::Encryptor<Aes256>;

/// Why a ciphertext could not be decrypted, or a stream not copied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CbcError {
    /// The ciphertext length is not a multiple of 16: truncated or not CBC at all.
    #[error("ciphertext is {len} bytes long, not a multiple of 16")]
    NotBlockAligned { len: u64 },
    /// The ciphertext is empty, so it cannot even hold its padding (an empty file is one block).
    #[error("ciphertext is {len} bytes long, too short to hold its PKCS#7 padding")]
    TooShort { len: u64 },
    /// The last block does not end in valid PKCS#7 padding: wrong key or damaged file.
    #[error("invalid PKCS#7 padding after decryption (wrong key or damaged file)")]
    BadPadding,
    /// Reading the source failed.
    #[error("reading the encrypted data failed: {0}")]
    Read(#[source] io::Error),
    /// Writing the destination failed.
    #[error("writing the output failed: {0}")]
    Write(#[source] io::Error),
    /// A reader was used again after it had failed.
    #[error("the decrypting reader already failed")]
    AlreadyFailed,
}

impl CbcError {
    /// Recovers the typed error from an `io::Error` returned by [`DecryptReader`]'s `Read`
    /// impl; other I/O errors become [`CbcError::Read`].
    pub fn from_read_error(e: io::Error) -> CbcError {
        if e.get_ref().is_some_and(|inner| inner.is::<CbcError>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(cbc) = inner.downcast::<CbcError>() {
                    return *cbc;
                }
            }
            return CbcError::AlreadyFailed;
        }
        CbcError::Read(e)
    }
}

impl From<CbcError> for io::Error {
    fn from(e: CbcError) -> io::Error {
        match e {
            CbcError::Read(e) | CbcError::Write(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// What to do with PKCS#7 at the end of the plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingMode {
    /// Padding must be present and valid (data files: iOS always pads).
    Strict,
    /// Strip padding when the last block carries valid padding, otherwise keep every byte.
    IfValid,
    /// Manifest.db: as `IfValid`, except that a ciphertext that is a whole number of SQLite
    /// pages ([`SQLITE_MIN_PAGE`]) is taken as unpadded, so that a database some old writer
    /// left unpadded is never cut because its last byte happens to look like padding.
    SqlitePages,
}

/// What was found at the end of the plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingOutcome {
    /// Valid PKCS#7 of this many bytes (1–16) was removed.
    Stripped(u8),
    /// No (valid) padding; nothing was removed. Only in the tolerant modes.
    Absent,
}

/// Summary of a finished decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decrypted {
    /// Bytes of plaintext produced: compare with MBFile `Size` (advisory; warn on mismatch).
    pub plaintext_len: u64,
    /// Bytes of ciphertext consumed.
    pub ciphertext_len: u64,
    /// What happened to the padding.
    pub padding: PaddingOutcome,
}

/// Ciphertext length of a `plaintext_len`-byte file: PKCS#7 always adds 1–16 bytes.
pub const fn encrypted_len(plaintext_len: u64) -> u64 {
    (plaintext_len / BLOCK_LEN as u64 + 1) * BLOCK_LEN as u64
}

/// Length of valid PKCS#7 padding at the end of `last` (one block), if any.
fn pkcs7_len(last: &[u8]) -> Option<u8> {
    let (&p, _) = last.split_last()?;
    let n = usize::from(p);
    if n == 0 || n > BLOCK_LEN || n > last.len() {
        return None;
    }
    last[last.len() - n..].iter().all(|&b| b == p).then_some(p)
}

fn blocks_mut(buf: &mut [u8]) -> &mut [Array<u8, U16>] {
    Array::<u8, U16>::slice_as_chunks_mut(buf).0
}

fn zero_iv() -> Array<u8, U16> {
    Array::default()
}

/// A `Read` adapter that decrypts AES-256-CBC (zero IV) and removes the padding at EOF.
///
/// On a padding or alignment error the bytes already read out are not trustworthy: callers
/// writing to a file must discard it. Errors surface as `io::ErrorKind::InvalidData` carrying a
/// [`CbcError`] ([`CbcError::from_read_error`] gets it back).
pub struct DecryptReader<R> {
    inner: R,
    dec: Decryptor,
    mode: PaddingMode,
    /// Working buffer: a held-back plaintext block in front, then ciphertext read in place.
    buf: Zeroizing<Vec<u8>>,
    /// Plaintext ready to hand out: `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// The last decrypted block, kept until we know whether it is the final one.
    held: Zeroizing<[u8; BLOCK_LEN]>,
    has_held: bool,
    /// Ciphertext bytes that do not yet make a whole block.
    partial: [u8; BLOCK_LEN],
    partial_len: usize,
    ciphertext_len: u64,
    plaintext_len: u64,
    outcome: Option<PaddingOutcome>,
    failed: bool,
}

impl<R: Read> DecryptReader<R> {
    /// A reader for a backup data file: padding required ([`PaddingMode::Strict`]).
    pub fn new(inner: R, key: &[u8; 32]) -> Self {
        Self::with_padding(inner, key, PaddingMode::Strict)
    }

    /// A reader with the given padding rule.
    pub fn with_padding(inner: R, key: &[u8; 32], mode: PaddingMode) -> Self {
        DecryptReader {
            inner,
            dec: Decryptor::new(key.into(), &zero_iv()),
            mode,
            buf: Zeroizing::new(vec![0u8; BLOCK_LEN + BUF_LEN]),
            pos: 0,
            end: 0,
            held: Zeroizing::new([0u8; BLOCK_LEN]),
            has_held: false,
            partial: [0u8; BLOCK_LEN],
            partial_len: 0,
            ciphertext_len: 0,
            plaintext_len: 0,
            outcome: None,
            failed: false,
        }
    }

    /// What happened to the padding; `None` until the end of the stream was reached.
    pub fn padding_outcome(&self) -> Option<PaddingOutcome> {
        self.outcome
    }

    /// Ciphertext bytes read from the source so far.
    pub fn ciphertext_len(&self) -> u64 {
        self.ciphertext_len
    }

    /// The summary, once the whole stream has been read.
    pub fn finished(&self) -> Option<Decrypted> {
        self.outcome.map(|padding| Decrypted {
            plaintext_len: self.plaintext_len,
            ciphertext_len: self.ciphertext_len,
            padding,
        })
    }

    /// The source reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next run of plaintext, borrowed from the working buffer; `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<&[u8]>, CbcError> {
        while self.pos == self.end {
            if self.failed {
                return Err(CbcError::AlreadyFailed);
            }
            if self.outcome.is_some() {
                return Ok(None);
            }
            if let Err(e) = self.fill() {
                self.failed = true;
                return Err(e);
            }
        }
        let (start, end) = (self.pos, self.end);
        self.pos = end;
        Ok(Some(&self.buf[start..end]))
    }

    /// Reads and decrypts the next buffer's worth. Precondition: no plaintext is pending.
    fn fill(&mut self) -> Result<(), CbcError> {
        let mut ct_start = 0;
        if self.has_held {
            self.buf[..BLOCK_LEN].copy_from_slice(&self.held[..]);
            ct_start = BLOCK_LEN;
            self.has_held = false;
        }
        let mut ct_end = ct_start + self.partial_len;
        self.buf[ct_start..ct_end].copy_from_slice(&self.partial[..self.partial_len]);
        self.partial_len = 0;

        // Read until at least one block beyond the held-back one is available (or EOF).
        let mut eof = false;
        while ct_end < self.buf.len() {
            let n = match self.inner.read(&mut self.buf[ct_end..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CbcError::Read(e)),
            };
            ct_end += n;
            self.ciphertext_len += n as u64;
            let whole = (ct_end - ct_start) / BLOCK_LEN * BLOCK_LEN;
            if ct_start + whole >= 2 * BLOCK_LEN {
                break;
            }
        }

        let whole = (ct_end - ct_start) / BLOCK_LEN * BLOCK_LEN;
        let plain_end = ct_start + whole;
        self.partial_len = ct_end - plain_end;
        self.partial[..self.partial_len].copy_from_slice(&self.buf[plain_end..ct_end]);
        // Many blocks per call: CBC decryption is parallel, and the AES back end uses it.
        self.dec
            .decrypt_blocks(blocks_mut(&mut self.buf[ct_start..plain_end]));
        self.pos = 0;

        if !eof {
            // The loop above only stops without EOF once two blocks are here (or the buffer
            // is full), so there is always a block to hold back.
            let keep = plain_end.saturating_sub(BLOCK_LEN);
            self.held.copy_from_slice(&self.buf[keep..plain_end]);
            self.has_held = plain_end >= BLOCK_LEN;
            self.end = keep;
            self.plaintext_len += keep as u64;
            return Ok(());
        }

        if self.partial_len != 0 {
            return Err(CbcError::NotBlockAligned {
                len: self.ciphertext_len,
            });
        }
        let pad = if plain_end == 0 {
            None
        } else {
            pkcs7_len(&self.buf[plain_end - BLOCK_LEN..plain_end])
        };
        let outcome = match (self.mode, pad) {
            (PaddingMode::Strict, _) if self.ciphertext_len == 0 => {
                return Err(CbcError::TooShort { len: 0 });
            }
            (PaddingMode::Strict, None) => return Err(CbcError::BadPadding),
            (PaddingMode::SqlitePages, _)
                if self.ciphertext_len.is_multiple_of(SQLITE_MIN_PAGE) =>
            {
                PaddingOutcome::Absent
            }
            (_, Some(p)) => PaddingOutcome::Stripped(p),
            (_, None) => PaddingOutcome::Absent,
        };
        self.end = match outcome {
            PaddingOutcome::Stripped(p) => plain_end - usize::from(p),
            PaddingOutcome::Absent => plain_end,
        };
        self.plaintext_len += self.end as u64;
        self.outcome = Some(outcome);
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.end {
            if self.failed {
                return Err(CbcError::AlreadyFailed.into());
            }
            if self.outcome.is_some() {
                return Ok(0);
            }
            if let Err(e) = self.fill() {
                self.failed = true;
                return Err(e.into());
            }
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Push-style decryption of one backup data file (padding required, as
/// [`PaddingMode::Strict`]), for callers that receive the ciphertext piece by piece and cannot
/// lend a `Read` (the pieces come from a store that is written between them). Memory: one
/// piece, one held-back block.
pub struct DecryptPush {
    dec: Decryptor,
    /// Ciphertext bytes that do not yet make a whole block.
    partial: [u8; BLOCK_LEN],
    partial_len: usize,
    /// The last decrypted block, kept until we know whether it is the final one.
    held: Zeroizing<[u8; BLOCK_LEN]>,
    has_held: bool,
    ciphertext_len: u64,
    scratch: Zeroizing<Vec<u8>>,
}

impl DecryptPush {
    /// A decryptor for a file encrypted under `key` (zero IV).
    pub fn new(key: &[u8; 32]) -> Self {
        DecryptPush {
            dec: Decryptor::new(key.into(), &zero_iv()),
            partial: [0u8; BLOCK_LEN],
            partial_len: 0,
            held: Zeroizing::new([0u8; BLOCK_LEN]),
            has_held: false,
            ciphertext_len: 0,
            scratch: Zeroizing::new(Vec::new()),
        }
    }

    /// Decrypts `ct` and appends the plaintext it completes to `out` (the last block is held
    /// back: only the end of the stream says whether it carries padding).
    pub fn update(&mut self, ct: &[u8], out: &mut Vec<u8>) {
        self.ciphertext_len += ct.len() as u64;
        let buf = &mut self.scratch;
        buf.clear();
        buf.extend_from_slice(&self.partial[..self.partial_len]);
        buf.extend_from_slice(ct);
        let whole = buf.len() / BLOCK_LEN * BLOCK_LEN;
        self.partial_len = buf.len() - whole;
        self.partial[..self.partial_len].copy_from_slice(&buf[whole..]);
        if whole == 0 {
            return;
        }
        self.dec.decrypt_blocks(blocks_mut(&mut buf[..whole]));
        if self.has_held {
            out.extend_from_slice(&self.held[..]);
        }
        out.extend_from_slice(&buf[..whole - BLOCK_LEN]);
        self.held.copy_from_slice(&buf[whole - BLOCK_LEN..whole]);
        self.has_held = true;
    }

    /// Checks the end (whole blocks, valid PKCS#7) and appends the last plaintext to `out`.
    /// On an error the plaintext handed out so far is not trustworthy.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<Decrypted, CbcError> {
        let len = self.ciphertext_len;
        if self.partial_len != 0 {
            return Err(CbcError::NotBlockAligned { len });
        }
        if !self.has_held {
            return Err(CbcError::TooShort { len });
        }
        let pad = pkcs7_len(&self.held[..]).ok_or(CbcError::BadPadding)?;
        out.extend_from_slice(&self.held[..BLOCK_LEN - usize::from(pad)]);
        Ok(Decrypted {
            plaintext_len: len - u64::from(pad),
            ciphertext_len: len,
            padding: PaddingOutcome::Stripped(pad),
        })
    }
}

/// Decrypts `src` into `dst` with the given padding rule, through one 64 KiB buffer.
pub fn decrypt_to<R: Read, W: Write>(
    src: R,
    mut dst: W,
    key: &[u8; 32],
    mode: PaddingMode,
) -> Result<Decrypted, CbcError> {
    let mut r = DecryptReader::with_padding(src, key, mode);
    while let Some(chunk) = r.next_chunk()? {
        dst.write_all(chunk).map_err(CbcError::Write)?;
    }
    dst.flush().map_err(CbcError::Write)?;
    r.finished().ok_or(CbcError::AlreadyFailed)
}

/// Decrypts one backup data file (padding required) and returns the plaintext length, for the
/// caller to compare with MBFile `Size` — a mismatch is a warning, not an error, since real
/// backups carry SQLite files that changed while they were copied.
pub fn decrypt_file_to<R: Read, W: Write>(src: R, dst: W, key: &[u8; 32]) -> Result<u64, CbcError> {
    decrypt_to(src, dst, key, PaddingMode::Strict).map(|d| d.plaintext_len)
}

/// Decrypts Manifest.db: strips PKCS#7 when present and tolerates its absence (old writers,
/// the pyiosbackup fixture). The result says which happened.
pub fn decrypt_manifest_db<R: Read, W: Write>(
    src: R,
    dst: W,
    key: &[u8; 32],
) -> Result<Decrypted, CbcError> {
    decrypt_to(src, dst, key, PaddingMode::SqlitePages)
}

/// A `Write` adapter that encrypts with AES-256-CBC (zero IV). Call [`EncryptWriter::finish`]
/// to write the padding block; dropping it without `finish` leaves the output incomplete.
pub struct EncryptWriter<W: Write> {
    inner: W,
    enc: Encryptor,
    /// Plaintext waiting to be encrypted: `buf[..filled]`.
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
    plaintext_len: u64,
}

impl<W: Write> EncryptWriter<W> {
    pub fn new(inner: W, key: &[u8; 32]) -> Self {
        EncryptWriter {
            inner,
            enc: Encryptor::new(key.into(), &zero_iv()),
            buf: Zeroizing::new(vec![0u8; BUF_LEN]),
            filled: 0,
            plaintext_len: 0,
        }
    }

    /// The sink, for inspection between writes.
    pub fn get_mut_inner(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Plaintext bytes accepted so far.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Encrypts and writes every whole block buffered, keeping the partial one.
    fn drain_whole_blocks(&mut self) -> io::Result<()> {
        let whole = self.filled / BLOCK_LEN * BLOCK_LEN;
        if whole == 0 {
            return Ok(());
        }
        self.enc.encrypt_blocks(blocks_mut(&mut self.buf[..whole]));
        self.inner.write_all(&self.buf[..whole])?;
        self.buf.copy_within(whole..self.filled, 0);
        self.filled -= whole;
        Ok(())
    }

    /// Reads `src` to its end straight into the buffer (no extra copy).
    fn copy_from<R: Read>(&mut self, mut src: R) -> Result<(), CbcError> {
        loop {
            if self.filled == self.buf.len() {
                self.drain_whole_blocks().map_err(CbcError::Write)?;
            }
            match src.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.filled += n;
                    self.plaintext_len += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CbcError::Read(e)),
            }
        }
    }

    /// Pads (PKCS#7, 1–16 bytes), writes the last blocks, flushes, and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.drain_whole_blocks()?;
        let pad = BLOCK_LEN - self.filled; // filled < 16 here, so 1..=16
        self.buf[self.filled..BLOCK_LEN].fill(pad as u8);
        self.filled = BLOCK_LEN;
        self.drain_whole_blocks()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.filled == self.buf.len() {
            self.drain_whole_blocks()?;
        }
        let n = data.len().min(self.buf.len() - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        self.plaintext_len += n as u64;
        Ok(n)
    }

    /// Writes out every whole block; the last partial block stays until more data or `finish`.
    fn flush(&mut self) -> io::Result<()> {
        self.drain_whole_blocks()?;
        self.inner.flush()
    }
}

/// Encrypts all of `src` into `dst` with padding and returns the plaintext length.
pub fn encrypt_to<R: Read, W: Write>(src: R, dst: W, key: &[u8; 32]) -> Result<u64, CbcError> {
    let mut w = EncryptWriter::new(dst, key);
    w.copy_from(src)?;
    let len = w.plaintext_len();
    w.finish().map_err(CbcError::Write)?;
    Ok(len)
}

/// Encrypts Manifest.db. Always padded: strict readers (iphone-backup-decrypt, mvt, iTunes)
/// refuse an unpadded one.
pub fn encrypt_manifest_db<R: Read, W: Write>(
    src: R,
    dst: W,
    key: &[u8; 32],
) -> Result<u64, CbcError> {
    encrypt_to(src, dst, key)
}

/// Decrypts a whole ciphertext in place and returns the plaintext (padding required). For
/// small files and benchmarks; large files go through [`decrypt_file_to`].
pub fn decrypt_in_place<'a>(key: &[u8; 32], buf: &'a mut [u8]) -> Result<&'a [u8], CbcError> {
    let len = buf.len() as u64;
    if buf.is_empty() {
        return Err(CbcError::TooShort { len });
    }
    if !buf.len().is_multiple_of(BLOCK_LEN) {
        return Err(CbcError::NotBlockAligned { len });
    }
    Decryptor::new(key.into(), &zero_iv()).decrypt_blocks(blocks_mut(buf));
    let pad = pkcs7_len(&buf[buf.len() - BLOCK_LEN..]).ok_or(CbcError::BadPadding)?;
    let end = buf.len() - usize::from(pad);
    Ok(&buf[..end])
}

/// Encrypts `plaintext` into a new padded ciphertext. For small data; see [`encrypt_to`].
pub fn encrypt_vec(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let total = encrypted_len(plaintext.len() as u64) as usize;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(plaintext);
    let pad = total - plaintext.len();
    out.resize(total, pad as u8);
    Encryptor::new(key.into(), &zero_iv()).encrypt_blocks(blocks_mut(&mut out));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::block_padding::Pkcs7;

    const KEY: [u8; 32] = [0x42; 32];

    /// The x86-64 build must use AES-NI when the CPU has it (the `aes` crate picks its back end
    /// at run time; a `soft` back end would make every phone file's decryption several times
    /// slower). `decrypt_blocks` then decrypts eight blocks at a time.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn aes_ni_is_used_when_present() {
        if std::arch::is_x86_feature_detected!("aes") {
            assert!(aes::hardware_accelerated());
        }
    }

    #[test]
    fn push_decryption_matches_the_plaintext_whatever_the_pieces() {
        for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 1000, 70_000] {
            let plain = data(n);
            let ct = encrypt_vec(&KEY, &plain);
            for piece in [1usize, 7, 16, 33, 4096, 1 << 20] {
                let mut d = DecryptPush::new(&KEY);
                let mut out = Vec::new();
                for p in ct.chunks(piece) {
                    d.update(p, &mut out);
                }
                let fin = d.finish(&mut out).unwrap();
                assert_eq!(out, plain, "n {n} piece {piece}");
                assert_eq!(fin.plaintext_len, n as u64);
                assert_eq!(fin.ciphertext_len, ct.len() as u64);
            }
        }
        // Cut, unaligned, empty, wrong key: refused.
        let ct = encrypt_vec(&KEY, &data(100));
        let mut d = DecryptPush::new(&KEY);
        d.update(&ct[..ct.len() - 1], &mut Vec::new());
        assert!(matches!(
            d.finish(&mut Vec::new()),
            Err(CbcError::NotBlockAligned { .. })
        ));
        assert!(matches!(
            DecryptPush::new(&KEY).finish(&mut Vec::new()),
            Err(CbcError::TooShort { len: 0 })
        ));
        let mut d = DecryptPush::new(&[7; 32]);
        d.update(&ct, &mut Vec::new());
        assert!(d.finish(&mut Vec::new()).is_err());
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// Hands out at most `step` bytes per read, to exercise the look-ahead across reads.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// The `cbc` crate's own one-shot padded encryption: an independent reference.
    fn reference_encrypt(plain: &[u8]) -> Vec<u8> {
        Encryptor::new((&KEY).into(), &zero_iv()).encrypt_padded_vec::<Pkcs7>(plain)
    }

    const SIZES: [usize; 8] = [0, 1, 15, 16, 17, 65535, 65536, (1 << 20) + 3];

    #[test]
    fn round_trips_at_block_and_buffer_edges() {
        for n in SIZES {
            let plain = data(n);
            let expected = reference_encrypt(&plain);
            assert_eq!(expected.len() as u64, encrypted_len(n as u64));

            // Stream encryption, fed in odd-sized writes.
            let mut w = EncryptWriter::new(Vec::new(), &KEY);
            for piece in plain.chunks(7777) {
                w.write_all(piece).unwrap();
            }
            assert_eq!(w.plaintext_len(), n as u64);
            let ct = w.finish().unwrap();
            assert_eq!(ct, expected, "EncryptWriter, {n} bytes");

            let mut ct2 = Vec::new();
            assert_eq!(encrypt_to(&plain[..], &mut ct2, &KEY).unwrap(), n as u64);
            assert_eq!(ct2, expected, "encrypt_to, {n} bytes");
            assert_eq!(encrypt_vec(&KEY, &plain), expected);

            // Stream decryption, from whole buffers and from a trickling source.
            let mut out = Vec::new();
            assert_eq!(decrypt_file_to(&ct[..], &mut out, &KEY).unwrap(), n as u64);
            assert_eq!(out, plain, "decrypt_file_to, {n} bytes");
            for step in [1, 13, 16, 4096] {
                if n > 70_000 && step < 4096 {
                    continue;
                }
                let mut r = DecryptReader::new(Trickle { data: &ct, step }, &KEY);
                let mut out = Vec::new();
                let mut small = [0u8; 5];
                // Mix tiny and large reads.
                let k = r.read(&mut small).unwrap();
                out.extend_from_slice(&small[..k]);
                r.read_to_end(&mut out).unwrap();
                assert_eq!(out, plain, "reader step {step}, {n} bytes");
                let d = r.finished().unwrap();
                assert_eq!(d.plaintext_len, n as u64);
                assert_eq!(d.ciphertext_len, ct.len() as u64);
                assert_eq!(
                    d.padding,
                    PaddingOutcome::Stripped((BLOCK_LEN - n % BLOCK_LEN) as u8)
                );
            }
            let mut buf = ct.clone();
            assert_eq!(decrypt_in_place(&KEY, &mut buf).unwrap(), &plain[..]);
        }
    }

    /// A source of endless ciphertext made on the fly, so the test itself holds no big buffer.
    struct Endless {
        w: EncryptWriter<Vec<u8>>,
        left: u64,
        pending: Vec<u8>,
        at: usize,
    }

    impl Read for Endless {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            while self.at == self.pending.len() {
                if self.left == 0 {
                    return Ok(0);
                }
                let n = self.left.min(1 << 20) as usize;
                self.left -= n as u64;
                self.w.get_mut_inner().clear();
                self.w.write_all(&vec![0x5a; n])?;
                self.w.flush()?;
                if self.left == 0 {
                    let w = std::mem::replace(&mut self.w, EncryptWriter::new(Vec::new(), &KEY));
                    self.pending = w.finish()?;
                } else {
                    self.pending = std::mem::take(self.w.get_mut_inner());
                }
                self.at = 0;
            }
            let n = out.len().min(self.pending.len() - self.at);
            out[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// Streams 256 MiB through decryption with bounded buffers and reports the rate.
    #[test]
    #[ignore = "throughput: run with --ignored --nocapture"]
    fn time_streaming_decrypt() {
        let total = 256u64 << 20;
        let src = Endless {
            w: EncryptWriter::new(Vec::new(), &KEY),
            left: total,
            pending: Vec::new(),
            at: 0,
        };
        let t = std::time::Instant::now();
        let n = decrypt_file_to(src, io::sink(), &KEY).unwrap();
        let dt = t.elapsed();
        assert_eq!(n, total);
        eprintln!("encrypt+decrypt stream of {} MiB: {dt:?}", total >> 20);
        let mut buf = encrypt_vec(&KEY, &vec![0u8; 64 << 20]);
        let t = std::time::Instant::now();
        decrypt_in_place(&KEY, &mut buf).unwrap();
        let dt = t.elapsed();
        eprintln!(
            "decrypt_in_place 64 MiB: {dt:?} ({:.2} GB/s)",
            (64u64 << 20) as f64 / dt.as_secs_f64() / 1e9
        );
    }

    #[test]
    fn fixture_file_decrypts_to_test_data() {
        // pyiosbackup's MyTestDomain/Media/Test.txt; its file key, like every key there, is zero.
        let path = crate::ios_backup::testdata(
            "pyiosbackup-fixture/57/5727bd1c5fa1055e15d8b4a75a74793c84b5ffdc",
        );
        let ct = std::fs::read(&path).unwrap();
        let mut out = Vec::new();
        assert_eq!(decrypt_file_to(&ct[..], &mut out, &[0; 32]).unwrap(), 9);
        assert_eq!(out, b"Test data");
    }

    #[test]
    fn fixture_manifest_db_has_no_padding_and_is_kept_whole() {
        let path = crate::ios_backup::testdata("pyiosbackup-fixture/Manifest.db.encrypted");
        let ct = std::fs::read(&path).unwrap();
        let mut out = Vec::new();
        let d =
            decrypt_manifest_db(std::fs::File::open(&path).unwrap(), &mut out, &[0; 32]).unwrap();
        assert_eq!(d.padding, PaddingOutcome::Absent);
        assert_eq!(d.plaintext_len, 8192);
        assert_eq!(out.len(), ct.len());
        assert!(out.starts_with(b"SQLite format 3\0"));
        // A strict reader refuses it, as iphone-backup-decrypt does.
        assert!(matches!(
            decrypt_file_to(&ct[..], io::sink(), &[0; 32]),
            Err(CbcError::BadPadding)
        ));
    }

    #[test]
    fn manifest_db_padding_is_stripped_when_present() {
        let mut db = data(4096 * 3);
        db[..16].copy_from_slice(b"SQLite format 3\0");
        let mut ct = Vec::new();
        assert_eq!(encrypt_manifest_db(&db[..], &mut ct, &KEY).unwrap(), 12288);
        // Like a real iOS Manifest.db: pages, then one full block of 0x10.
        assert_eq!(ct.len(), 12288 + 16);
        let mut out = Vec::new();
        let d = decrypt_manifest_db(&ct[..], &mut out, &KEY).unwrap();
        assert_eq!(d.padding, PaddingOutcome::Stripped(16));
        assert_eq!(out, db);
    }

    #[test]
    fn unpadded_sqlite_ending_like_padding_is_not_cut() {
        // An unpadded database whose last byte is 0x01 looks padded to a naive reader.
        let mut db = data(4096);
        db[4095] = 1;
        let mut ct = encrypt_vec(&KEY, &db);
        ct.truncate(4096); // what an old writer that skipped padding would have produced
        let mut out = Vec::new();
        let d = decrypt_manifest_db(&ct[..], &mut out, &KEY).unwrap();
        assert_eq!(d.padding, PaddingOutcome::Absent);
        assert_eq!(out, db);
        // The generic tolerant mode would strip it; that is why Manifest.db has its own.
        let d = decrypt_to(&ct[..], io::sink(), &KEY, PaddingMode::IfValid).unwrap();
        assert_eq!(d.padding, PaddingOutcome::Stripped(1));
    }

    #[test]
    fn bad_padding_and_short_or_ragged_files_are_rejected() {
        let good = encrypt_vec(&KEY, b"hello");
        // Wrong key: garbage padding (with overwhelming probability; this key/data is fixed).
        assert!(matches!(
            decrypt_file_to(&good[..], io::sink(), &[1; 32]),
            Err(CbcError::BadPadding)
        ));
        // Empty and ragged ciphertexts.
        assert!(matches!(
            decrypt_file_to(&[][..], io::sink(), &KEY),
            Err(CbcError::TooShort { len: 0 })
        ));
        assert!(matches!(
            decrypt_file_to(&good[..15], io::sink(), &KEY),
            Err(CbcError::NotBlockAligned { len: 15 })
        ));
        let mut long = encrypt_vec(&KEY, &data(100));
        long.push(0);
        assert!(matches!(
            decrypt_file_to(&long[..], io::sink(), &KEY),
            Err(CbcError::NotBlockAligned { len: 113 })
        ));
        // Padding byte 0, padding byte 17, inconsistent padding bytes.
        for last in [[0u8; 16], [17u8; 16], {
            let mut b = [4u8; 16];
            b[13] = 3;
            b
        }] {
            let mut plain = data(32);
            plain[16..].copy_from_slice(&last);
            let mut ct = encrypt_vec(&KEY, &plain);
            ct.truncate(32); // drop the real padding block; the crafted block is now last
            assert!(matches!(
                decrypt_file_to(&ct[..], io::sink(), &KEY),
                Err(CbcError::BadPadding)
            ));
            let mut buf = ct.clone();
            assert!(matches!(
                decrypt_in_place(&KEY, &mut buf),
                Err(CbcError::BadPadding)
            ));
        }
    }

    #[test]
    fn reader_errors_are_typed_and_sticky() {
        let ct = encrypt_vec(&KEY, b"x");
        let mut r = DecryptReader::new(&ct[..], &[9; 32]);
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(CbcError::from_read_error(e), CbcError::BadPadding));
        let again = r.read(&mut [0u8; 4]).unwrap_err();
        assert!(matches!(
            CbcError::from_read_error(again),
            CbcError::AlreadyFailed
        ));
    }

    #[test]
    fn read_and_write_errors_are_kept_apart() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk gone"))
            }
        }
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("drive full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(
            decrypt_file_to(Failing, Vec::new(), &KEY),
            Err(CbcError::Read(_))
        ));
        let ct = encrypt_vec(&KEY, &data(100));
        assert!(matches!(
            decrypt_file_to(&ct[..], Failing, &KEY),
            Err(CbcError::Write(_))
        ));
        assert!(matches!(
            encrypt_to(Failing, Vec::new(), &KEY),
            Err(CbcError::Read(_))
        ));
        assert!(matches!(
            encrypt_to(&data(10)[..], Failing, &KEY),
            Err(CbcError::Write(_))
        ));
    }
}
