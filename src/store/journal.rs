//! Append-only sealed journals (format.md §12): `ops.log`, `ingest.log` and sealed staged files,
//! a clear header then frames sealed with their sequence number, cut at the first bad frame.

use super::caps::FRAME_MAX;
use super::ids::SessionId;
use super::keys::Keys;
use super::seal::{self, AEAD_OVERHEAD};
use super::storage::{Storage, StorageError};

/// Magic at the start of every journal.
pub const JOURNAL_MAGIC: [u8; 8] = *b"CRDLJRNL";
/// Layout version of journals.
pub const JOURNAL_VERSION: u16 = 1;
/// Bytes of the journal header.
pub const HEADER_LEN: usize = 28;
/// Largest payload one frame carries.
pub const FRAME_PAYLOAD_MAX: usize = FRAME_MAX as usize - AEAD_OVERHEAD;
/// Bytes of a journal read from the drive at a time when it is opened.
const READ_WINDOW: u64 = 1 << 20;

/// A sliding read window over a journal on the drive.
struct Window<'a> {
    storage: &'a dyn Storage,
    path: &'a str,
    size: u64,
    start: u64,
    buf: Vec<u8>,
}

impl Window<'_> {
    /// The `len` bytes at `pos`, or `None` past the end of the file.
    fn get(&mut self, pos: u64, len: usize) -> Result<Option<&[u8]>, JournalError> {
        let end = pos + len as u64;
        if end > self.size {
            return Ok(None);
        }
        if pos < self.start || end > self.start + self.buf.len() as u64 {
            let n = (len as u64).max(READ_WINDOW).min(self.size - pos);
            self.buf = self.storage.read_range(self.path, pos, n)?;
            self.start = pos;
        }
        let at = (pos - self.start) as usize;
        Ok(Some(&self.buf[at..at + len]))
    }
}

/// What a journal records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalKind {
    /// `ops.log`: what the phone asked for.
    Ops,
    /// `ingest.log`: ingest progress.
    Ingest,
    /// A staged file kept in sealed framing (plists, unencrypted data).
    Staged,
}

impl JournalKind {
    /// The on-disk code.
    pub fn code(self) -> u8 {
        match self {
            JournalKind::Ops => 1,
            JournalKind::Ingest => 2,
            JournalKind::Staged => 3,
        }
    }
}

/// Why a journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The drive failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The header is not a journal header of the expected kind and session.
    #[error("{path}: not a journal of this session and kind")]
    BadHeader {
        /// The journal.
        path: String,
    },
    /// A payload larger than one frame may carry.
    #[error("journal payload of {0} bytes exceeds one frame")]
    TooLarge(usize),
}

/// The 28-byte header.
pub fn encode_header(kind: JournalKind, session: &SessionId) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&JOURNAL_MAGIC);
    h[8..10].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
    h[10] = kind.code();
    h[12..28].copy_from_slice(session.as_bytes());
    h
}

fn frame_aad(session: &SessionId, kind: JournalKind, seq: u64) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[..8].copy_from_slice(b"CRDLJFRM");
    a[8..24].copy_from_slice(session.as_bytes());
    a[24] = kind.code();
    a[25..33].copy_from_slice(&seq.to_le_bytes());
    a
}

/// Appends frame `seq` holding `payload` to `out`.
pub fn seal_frame(
    keys: &Keys,
    session: &SessionId,
    kind: JournalKind,
    seq: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), JournalError> {
    if payload.len() > FRAME_PAYLOAD_MAX {
        return Err(JournalError::TooLarge(payload.len()));
    }
    out.extend_from_slice(&((payload.len() + AEAD_OVERHEAD) as u32).to_le_bytes());
    seal::seal_into(
        out,
        keys.data_key(),
        &frame_aad(session, kind, seq),
        payload,
    );
    Ok(())
}

/// Opens one frame body (`nonce || ciphertext || tag`) expected at `seq`.
pub fn open_frame(
    keys: &Keys,
    session: &SessionId,
    kind: JournalKind,
    seq: u64,
    body: &[u8],
) -> Option<Vec<u8>> {
    seal::open(keys.data_key(), &frame_aad(session, kind, seq), body).ok()
}

/// A whole journal decoded: the payloads of its good frames, in order, and the length of the
/// good prefix (header included). A reader stops at the first short or failing frame.
pub fn decode_frames(
    keys: &Keys,
    session: &SessionId,
    kind: JournalKind,
    bytes: &[u8],
    path: &str,
) -> Result<(Vec<Vec<u8>>, u64), JournalError> {
    if bytes.len() < HEADER_LEN || bytes[..HEADER_LEN] != encode_header(kind, session) {
        return Err(JournalError::BadHeader { path: path.into() });
    }
    let mut pos = HEADER_LEN;
    let mut out = Vec::new();
    while let Some(len) = bytes
        .get(pos..pos + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    {
        if len > FRAME_MAX || (len as usize) < AEAD_OVERHEAD {
            break;
        }
        let Some(body) = bytes.get(pos + 4..pos + 4 + len as usize) else {
            break;
        };
        let Some(p) = open_frame(keys, session, kind, out.len() as u64, body) else {
            break;
        };
        out.push(p);
        pos += 4 + len as usize;
    }
    Ok((out, pos as u64))
}

/// An append-only journal on the drive (`ops.log`, `ingest.log`).
#[derive(Debug)]
pub struct Journal {
    path: String,
    session: SessionId,
    kind: JournalKind,
    next_seq: u64,
    buf: Vec<u8>,
}

impl Journal {
    /// Opens `path`, creating it with its header if absent. An existing journal is read, cut at
    /// its first bad frame (fsynced) and its good payloads returned.
    pub fn open(
        storage: &dyn Storage,
        keys: &Keys,
        path: &str,
        kind: JournalKind,
        session: SessionId,
    ) -> Result<(Journal, Vec<Vec<u8>>), JournalError> {
        let mut payloads = Vec::new();
        let j = Self::open_each(storage, keys, path, kind, session, |p| {
            payloads.push(p);
            Ok::<(), JournalError>(())
        })?;
        Ok((j, payloads))
    }

    /// As `open`, handing each good payload to `each` in order instead of collecting them: the
    /// journal is read through a window of `READ_WINDOW` bytes, so memory does not grow with it.
    pub fn open_each<E: From<JournalError>>(
        storage: &dyn Storage,
        keys: &Keys,
        path: &str,
        kind: JournalKind,
        session: SessionId,
        mut each: impl FnMut(Vec<u8>) -> Result<(), E>,
    ) -> Result<Journal, E> {
        let mut frames = 0u64;
        if storage.exists(path).map_err(JournalError::from)? {
            let size = storage.size(path).map_err(JournalError::from)?;
            if size < HEADER_LEN as u64 {
                // A header torn by a crash: nothing in it was ever durable.
                storage.truncate(path, 0).map_err(JournalError::from)?;
                storage
                    .append(path, &encode_header(kind, &session))
                    .map_err(JournalError::from)?;
                storage.sync_file(path).map_err(JournalError::from)?;
            } else {
                let mut w = Window {
                    storage,
                    path,
                    size,
                    start: 0,
                    buf: Vec::new(),
                };
                let header = w.get(0, HEADER_LEN)?.unwrap_or_default();
                if header != encode_header(kind, &session) {
                    return Err(JournalError::BadHeader { path: path.into() }.into());
                }
                let mut pos = HEADER_LEN as u64;
                while let Some(l) = w.get(pos, 4)? {
                    let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]);
                    if len > FRAME_MAX || (len as usize) < AEAD_OVERHEAD {
                        break;
                    }
                    let Some(body) = w.get(pos + 4, len as usize)? else {
                        break;
                    };
                    let Some(p) = open_frame(keys, &session, kind, frames, body) else {
                        break;
                    };
                    each(p)?;
                    frames += 1;
                    pos += 4 + u64::from(len);
                }
                if pos != size {
                    storage.truncate(path, pos).map_err(JournalError::from)?;
                    storage.sync_file(path).map_err(JournalError::from)?;
                }
            }
        } else {
            storage
                .append(path, &encode_header(kind, &session))
                .map_err(JournalError::from)?;
            storage.sync_file(path).map_err(JournalError::from)?;
        }
        Ok(Journal {
            path: path.to_string(),
            session,
            kind,
            next_seq: frames,
            buf: Vec::new(),
        })
    }

    /// Queues one frame; written by the next `write` or `sync`.
    pub fn push(&mut self, keys: &Keys, payload: &[u8]) -> Result<(), JournalError> {
        seal_frame(
            keys,
            &self.session,
            self.kind,
            self.next_seq,
            payload,
            &mut self.buf,
        )?;
        self.next_seq += 1;
        Ok(())
    }

    /// Writes the queued frames (not yet durable).
    pub fn write(&mut self, storage: &dyn Storage) -> Result<(), JournalError> {
        if !self.buf.is_empty() {
            storage.append(&self.path, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the queued frames and fsyncs the journal.
    pub fn sync(&mut self, storage: &dyn Storage) -> Result<(), JournalError> {
        self.write(storage)?;
        storage.sync_file(&self.path)?;
        Ok(())
    }

    /// Frames written or queued so far.
    pub fn frames(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::MasterSecret;
    use crate::store::storage::CrashStorage;

    #[test]
    fn frames_round_trip_and_stop_at_the_first_bad_one() {
        let keys = Keys::derive(&MasterSecret::random());
        let s = SessionId::random();
        let mut b = encode_header(JournalKind::Ops, &s).to_vec();
        for (i, p) in [&b"one"[..], b"two", b"three"].iter().enumerate() {
            seal_frame(&keys, &s, JournalKind::Ops, i as u64, p, &mut b).unwrap();
        }
        let (p, good) = decode_frames(&keys, &s, JournalKind::Ops, &b, "x").unwrap();
        assert_eq!(p, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(good, b.len() as u64);
        // Torn last frame: the first two survive.
        let (p, good) = decode_frames(&keys, &s, JournalKind::Ops, &b[..b.len() - 3], "x").unwrap();
        assert_eq!(p.len(), 2);
        assert!(good < b.len() as u64);
        // A flipped byte in the second frame stops there.
        let mut bad = b.clone();
        bad[HEADER_LEN + 4 + 3 + 40 + 4 + 30] ^= 1;
        assert_eq!(
            decode_frames(&keys, &s, JournalKind::Ops, &bad, "x")
                .unwrap()
                .0
                .len(),
            1
        );
        // Another kind, session or key does not read it.
        assert!(decode_frames(&keys, &s, JournalKind::Ingest, &b, "x").is_err());
        assert!(decode_frames(&keys, &SessionId::random(), JournalKind::Ops, &b, "x").is_err());
        let other = Keys::derive(&MasterSecret::random());
        assert!(decode_frames(&other, &s, JournalKind::Ops, &b, "x")
            .unwrap()
            .0
            .is_empty());
        // Dropped frame: the sequence number catches it.
        let first_len = 4 + 3 + 40;
        let mut dropped = b[..HEADER_LEN].to_vec();
        dropped.extend_from_slice(&b[HEADER_LEN + first_len..]);
        assert!(decode_frames(&keys, &s, JournalKind::Ops, &dropped, "x")
            .unwrap()
            .0
            .is_empty());
    }

    #[test]
    fn reopen_truncates_a_torn_tail_and_continues_the_sequence() {
        let keys = Keys::derive(&MasterSecret::random());
        let st = CrashStorage::new();
        st.create_dir("j").unwrap();
        let s = SessionId::random();
        let (mut j, p) = Journal::open(&st, &keys, "j/ops.log", JournalKind::Ops, s).unwrap();
        assert!(p.is_empty());
        j.push(&keys, b"a").unwrap();
        j.push(&keys, b"b").unwrap();
        j.sync(&st).unwrap();
        st.append("j/ops.log", &[9, 9, 9]).unwrap();
        st.sync_file("j/ops.log").unwrap();
        let (mut j, p) = Journal::open(&st, &keys, "j/ops.log", JournalKind::Ops, s).unwrap();
        assert_eq!(p, vec![b"a".to_vec(), b"b".to_vec()]);
        j.push(&keys, b"c").unwrap();
        j.sync(&st).unwrap();
        let (_, p) = Journal::open(&st, &keys, "j/ops.log", JournalKind::Ops, s).unwrap();
        assert_eq!(p.len(), 3);
    }
}
