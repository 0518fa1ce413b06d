//! Walking everything a snapshot record references (format.md §9): its top files, its file table
//! and every content stream in the table, indirect lists resolved. Used by prune and stats.

use super::ids::ChunkId;
use super::repo::{RepoError, Repository};
use super::snapshot::SnapshotRecord;
use super::stream::{Stream, StreamForm};
use super::table::FileEntry;

/// Calls `f` with every ChunkId a stream needs: its listed chunks and, for an indirect stream,
/// the chunks its lists name (the lists are read, one chunk at a time).
pub fn stream_ids(
    repo: &Repository,
    s: &Stream,
    f: &mut dyn FnMut(&ChunkId),
) -> Result<(), RepoError> {
    for id in &s.ids {
        f(id);
    }
    if s.form == StreamForm::Indirect {
        let mut carry = Vec::new();
        for list_id in &s.ids {
            carry.extend_from_slice(&repo.read_chunk(list_id)?);
            let whole = carry.len() / 32 * 32;
            for c in carry[..whole].chunks_exact(32) {
                if let Some(id) = ChunkId::from_slice(c) {
                    f(&id);
                }
            }
            carry.drain(..whole);
        }
        if !carry.is_empty() {
            return Err(RepoError::BadStream(
                "chunk list is not a multiple of 32 bytes",
            ));
        }
    }
    Ok(())
}

/// Calls `chunk` with every ChunkId the record needs (duplicates included) and `entry` with each
/// file-table entry, reading the table in order.
pub fn record_chunks(
    repo: &Repository,
    rec: &SnapshotRecord,
    chunk: &mut dyn FnMut(&ChunkId),
    entry: &mut dyn FnMut(&FileEntry),
) -> Result<(), RepoError> {
    for t in &rec.top_files {
        stream_ids(repo, &t.stream, chunk)?;
    }
    stream_ids(repo, &rec.file_table, chunk)?;
    let mut r = repo.file_table_reader(&rec.file_table);
    while let Some(e) = r.next_entry(repo)? {
        if let Some(s) = e.content.stream() {
            stream_ids(repo, s, chunk)?;
        }
        entry(&e);
    }
    Ok(())
}
