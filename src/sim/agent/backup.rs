//! The Backup operation, device side: learn what the host already holds (previous manifests),
//! decide full or incremental, stage the files in `Snapshot/`, move them into place, report.
//!
//! Every host answer is checked: a non-zero status ends the backup with a non-zero ErrorCode
//! (after a best-effort removal of the Snapshot folder); a closed connection ends it silently.

use super::conn::{io_error, Conn};
use super::{
    codes, respond, AgentError, BackupAgent, BackupKind, Fault, FaultPoint, RunOutcome, RunReport,
};
use crate::backup2::file_stream::{
    FileHeader, FileStreamReader, FileStreamWriter, StreamError, StreamEvent, StreamKind,
    DEFAULT_BLOCK_SIZE, MAX_STREAM_PATH_LEN,
};
use crate::backup2::messages::{DeviceMessage, StatusResponse, MULTI_STATUS};
use crate::ios_backup::folder::BackupFolder;
use crate::ios_backup::is_valid_file_id;
use crate::ios_backup::plists::ManifestPlist;
use crate::sim::backup::{Encryption, SimBackup};
use crate::sim::phone::{Entry, Phone};
use plist::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

/// Largest previous Manifest.plist or Status.plist accepted from the host.
pub const MAX_PREVIOUS_PLIST_LEN: u64 = 16 * 1024 * 1024;
/// Largest previous Manifest.db accepted; a larger one makes the backup full.
pub const MAX_PREVIOUS_DB_LEN: u64 = 4 * 1024 * 1024 * 1024;
/// Most rows read from a previous Manifest.db; more make the backup full.
pub const MAX_PREVIOUS_ROWS: usize = 2_000_000;
/// Free space asked for beyond the data files: the manifests and some room.
const FREE_SPACE_BASE: u64 = 16 * 1024 * 1024;
/// Free space asked for per Manifest.db row.
const FREE_SPACE_PER_ENTRY: u64 = 1024;
/// Paths per RemoveItems message.
const REMOVE_BATCH: usize = 500;
/// How long the agent waits for the host to close after a deliberate protocol violation.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Buffer for downloaded files.
const DOWNLOAD_BUFFER_LEN: usize = 64 * 1024;

const MANIFEST_PLIST: &str = "Manifest.plist";
const MANIFEST_DB: &str = "Manifest.db";
const STATUS_PLIST: &str = "Status.plist";

/// Why a backup stopped early.
enum Stop {
    /// Report this ErrorCode to the host.
    Refuse { code: i64, description: String },
    /// The connection cannot go on.
    Conn(AgentError),
}

impl From<AgentError> for Stop {
    fn from(e: AgentError) -> Self {
        Stop::Conn(e)
    }
}

fn refuse(code: i64, description: impl Into<String>) -> Stop {
    Stop::Refuse {
        code,
        description: description.into(),
    }
}

/// What the previous backup recorded about a file.
struct PrevRow {
    is_file: bool,
    size: u64,
    mtime: i64,
    key: Option<Vec<u8>>,
}

/// What this backup sends and removes.
struct Plan<'p> {
    kind: BackupKind,
    full_reason: Option<String>,
    send: Vec<&'p Entry>,
    unchanged: u64,
    /// fileIDs of the previous backup's data files that no longer exist.
    removed: Vec<String>,
}

/// The outcome of one download.
enum Fetched {
    Got,
    Missing(String),
    TooLarge,
}

/// Runs one Backup request; the report is filled in whatever happens.
pub(super) fn run(
    agent: &BackupAgent,
    conn: &mut Conn,
    target: &str,
    force_full: bool,
) -> (Result<(), AgentError>, RunReport) {
    let phone = agent.phone();
    let mut report = RunReport {
        kind: BackupKind::Full,
        full_reason: None,
        encrypted: false,
        day: phone.day(),
        files_uploaded: 0,
        bytes_uploaded: 0,
        files_unchanged: 0,
        files_removed: 0,
        outcome: RunOutcome::Interrupted {
            reason: "not started".into(),
        },
        elapsed: Duration::ZERO,
    };
    let udid = phone.identity().udid.clone();
    let mut run = Run {
        agent,
        conn,
        phone: &phone,
        udid,
        progress: 0.0,
        report: &mut report,
        snapshot_created: false,
        first_upload: true,
        first_move: true,
    };
    let res = run.go(target, force_full);
    let res = match res {
        Ok(()) => respond(run.conn, 0, None).map(|()| RunOutcome::Completed),
        Err(Stop::Refuse { code, description }) => {
            tracing::info!(code, %description, "backup agent: refusing the backup");
            let cleaned = if run.snapshot_created {
                run.remove(&[run.snapshot()])
            } else {
                Ok(())
            };
            match cleaned {
                Ok(()) | Err(Stop::Refuse { .. }) => {
                    respond(run.conn, code, Some(description.clone()))
                        .map(|()| RunOutcome::Refused { code, description })
                }
                Err(Stop::Conn(e)) => Err(e),
            }
        }
        Err(Stop::Conn(e)) => Err(e),
    };
    drop(run);
    match res {
        Ok(outcome) => {
            report.outcome = outcome;
            (Ok(()), report)
        }
        Err(e) => {
            report.outcome = RunOutcome::Interrupted {
                reason: e.to_string(),
            };
            (Err(e), report)
        }
    }
}

struct Run<'a> {
    agent: &'a BackupAgent,
    conn: &'a mut Conn,
    phone: &'a Phone,
    udid: String,
    progress: f64,
    report: &'a mut RunReport,
    snapshot_created: bool,
    first_upload: bool,
    first_move: bool,
}

/// Reads a status code's payload as an unsigned count (free bytes).
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => i
            .as_unsigned()
            .or_else(|| i.as_signed().and_then(|s| u64::try_from(s).ok())),
        _ => None,
    }
}

fn describe(st: &StatusResponse) -> String {
    match &st.message {
        Some(m) => format!("error {}: {m}", st.code),
        None => format!("error {}", st.code),
    }
}

/// The device-side name of a file in an upload (hosts only log it; pymobiledevice3's backup
/// filters match it against `domain/relativePath`).
fn device_path(e: &Entry, id: &str) -> String {
    let p = format!("{}/{}", e.domain, e.relative_path);
    if p.len() > MAX_STREAM_PATH_LEN as usize {
        id.to_string()
    } else {
        p
    }
}

fn stream_error(e: StreamError, waited: Duration) -> AgentError {
    match e {
        StreamError::Truncated { .. } => AgentError::HostClosed,
        StreamError::Io(e) => io_error(e, waited),
        other => AgentError::Protocol(other.to_string()),
    }
}

/// Gathers file data into full blocks before handing it to the stream writer, and remembers
/// whether a failure came from the connection (as opposed to the phone's content).
struct BlockSink<'w, 'c> {
    w: &'w mut FileStreamWriter<&'c mut Conn>,
    buf: Vec<u8>,
    conn_error: Option<io::Error>,
}

impl BlockSink<'_, '_> {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = self.w.write_data(&self.buf);
        self.buf.clear();
        res.map_err(|e| {
            let kind = e.kind();
            self.conn_error = Some(e);
            io::Error::new(kind, "the connection failed")
        })
    }
}

impl Write for BlockSink<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = DEFAULT_BLOCK_SIZE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= DEFAULT_BLOCK_SIZE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Run<'_> {
    fn reply_timeout(&self) -> Duration {
        self.agent.config.reply_timeout
    }

    fn snapshot(&self) -> String {
        format!("{}/Snapshot", self.udid)
    }

    fn fault(&self) -> Option<&Fault> {
        self.agent.config.fault.as_ref()
    }

    /// The path a BadPath fault substitutes at `at`, if one is configured there.
    fn bad_path(&self, at: FaultPoint) -> Option<String> {
        match self.fault() {
            Some(Fault::BadPath { at: p, path }) if *p == at => {
                Some(path.replace("{udid}", &self.udid))
            }
            _ => None,
        }
    }

    /// Frame-level faults (stall, malformed frame, 4 GiB length) at `at`.
    fn fault_frame(&mut self, at: FaultPoint) -> Result<(), Stop> {
        match self.fault().cloned() {
            Some(Fault::Stall { at: p, duration }) if p == at && at != FaultPoint::Upload => {
                tracing::info!(?at, ?duration, "backup agent: stalling (fault)");
                self.conn.stall(duration)?;
                Ok(())
            }
            Some(Fault::MalformedFrame { at: p }) if p == at => {
                let body = b"this frame is not a plist";
                let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
                bytes.extend_from_slice(body);
                self.conn.send_raw(&bytes)?;
                self.conn.drain_until_closed(DRAIN_LIMIT);
                Err(Stop::Conn(AgentError::Injected("a malformed frame")))
            }
            Some(Fault::HugeLength { at: p }) if p == at && at != FaultPoint::Upload => {
                self.conn.send_raw(&u32::MAX.to_be_bytes())?;
                self.conn.drain_until_closed(DRAIN_LIMIT);
                Err(Stop::Conn(AgentError::Injected("a 4 GiB frame length")))
            }
            _ => Ok(()),
        }
    }

    fn go(&mut self, target: &str, force_full: bool) -> Result<(), Stop> {
        if !target.eq_ignore_ascii_case(&self.udid) {
            return Err(refuse(
                codes::FAILED,
                format!("unknown target {target}: this device is {}", self.udid),
            ));
        }
        self.fault_frame(FaultPoint::Start)?;
        self.agent.passcode_prompt();
        let encryption = self
            .agent
            .encryption
            .backup_password()
            .map(|password| Encryption {
                password,
                dpic: self.agent.config.dpic,
            });
        let sb = SimBackup::new(self.phone, encryption.as_ref())
            .map_err(|e| refuse(codes::FAILED, format!("the phone could not prepare: {e}")))?;
        self.report.encrypted = sb.is_encrypted();
        let scratch = tempfile::Builder::new()
            .prefix("cradle-agent-")
            .tempdir()
            .map_err(|e| Stop::Conn(AgentError::Scratch(e)))?;
        let phone = self.phone;
        let plan = self.plan(&sb, phone, scratch.path(), force_full)?;
        self.report.kind = plan.kind;
        self.report.full_reason = plan.full_reason.clone();
        self.report.files_unchanged = plan.unchanged;
        tracing::info!(
            kind = %plan.kind,
            send = plan.send.len(),
            unchanged = plan.unchanged,
            removed = plan.removed.len(),
            "backup agent: plan"
        );
        let upload_bytes: u64 = plan.send.iter().map(|e| sb.data_len(e)).sum();
        self.check_free_space(upload_bytes, phone.entries().len() as u64)?;
        self.prepare_dirs(&plan)?;
        self.upload_files(&sb, &plan.send, upload_bytes)?;
        self.upload_manifests(&sb, scratch.path(), plan.kind == BackupKind::Full)?;
        self.move_into_place(&plan)?;
        Ok(())
    }

    // ---- step a: what the host holds -----------------------------------------------------

    fn plan<'e>(
        &mut self,
        sb: &SimBackup<'_>,
        phone: &'e Phone,
        scratch: &Path,
        force_full: bool,
    ) -> Result<Plan<'e>, Stop> {
        let previous = scratch.join("previous");
        fs::create_dir_all(&previous).map_err(|e| Stop::Conn(AgentError::Scratch(e)))?;
        let mut full_reason: Option<String> = force_full.then(|| "forced by the host".into());

        let mut manifest = Vec::new();
        let fetched = self.download(MANIFEST_PLIST, &mut manifest, MAX_PREVIOUS_PLIST_LEN)?;
        self.progress = 1.0;
        let manifest_ok = match fetched {
            Fetched::Got if manifest.is_empty() => {
                Err("the previous Manifest.plist is empty".into())
            }
            Fetched::Got => ManifestPlist::from_bytes(&manifest)
                .map(|_| ())
                .map_err(|e| format!("the previous Manifest.plist is unusable: {e}")),
            Fetched::Missing(why) => Err(format!("no previous Manifest.plist ({why})")),
            Fetched::TooLarge => Err("the previous Manifest.plist is too large".into()),
        };
        if let Err(why) = manifest_ok {
            full_reason.get_or_insert(why);
        }

        let mut prev_rows = None;
        if full_reason.is_none() {
            let db_path = previous.join(MANIFEST_DB);
            let mut f =
                fs::File::create(&db_path).map_err(|e| Stop::Conn(AgentError::Scratch(e)))?;
            let fetched = self.download(MANIFEST_DB, &mut f, MAX_PREVIOUS_DB_LEN)?;
            drop(f);
            match fetched {
                Fetched::Got => match previous_rows(sb, &previous, &manifest) {
                    Ok(rows) => prev_rows = Some(rows),
                    Err(why) => full_reason = Some(why),
                },
                Fetched::Missing(why) => {
                    full_reason = Some(format!("no previous Manifest.db ({why})"))
                }
                Fetched::TooLarge => {
                    full_reason = Some("the previous Manifest.db is too large".into())
                }
            }
        }
        self.progress = 1.5;
        // Read for completeness, as phones do; the decision rests on Manifest.plist (hosts such
        // as pymobiledevice3 write a Status.plist of their own before a backup).
        let mut status = Vec::new();
        let _ = self.download(STATUS_PLIST, &mut status, MAX_PREVIOUS_PLIST_LEN)?;
        self.progress = 2.0;

        let mut plan = Plan {
            kind: if prev_rows.is_some() {
                BackupKind::Incremental
            } else {
                BackupKind::Full
            },
            full_reason,
            send: Vec::new(),
            unchanged: 0,
            removed: Vec::new(),
        };
        let mut today = HashSet::new();
        for e in phone.entries().iter().filter(|e| e.is_file()) {
            let id = e.file_id();
            let unchanged = match prev_rows.as_ref().and_then(|m| m.get(&id)) {
                Some(p) if p.is_file => {
                    let row = sb.row(e).map_err(|e| {
                        refuse(codes::FAILED, format!("the phone could not prepare: {e}"))
                    })?;
                    p.size == row.file.size
                        && p.mtime == row.file.last_modified
                        && p.key == row.file.encryption_key
                }
                _ => false,
            };
            if unchanged {
                plan.unchanged += 1;
            } else {
                plan.send.push(e);
            }
            if prev_rows.is_some() {
                today.insert(id);
            }
        }
        if let Some(prev) = prev_rows {
            let mut removed: Vec<String> = prev
                .into_iter()
                .filter(|(id, p)| p.is_file && !today.contains(id))
                .map(|(id, _)| id)
                .collect();
            removed.sort();
            plan.removed = removed;
        }
        Ok(plan)
    }

    /// Downloads one file from the host into `sink` (at most `cap` bytes are kept).
    fn download(&mut self, name: &str, sink: &mut dyn Write, cap: u64) -> Result<Fetched, Stop> {
        let path = format!("{}/{name}", self.udid);
        let timeout = self.reply_timeout();
        self.conn.send(&DeviceMessage::DownloadFiles {
            paths: vec![path.clone()],
            progress: Some(self.progress),
        })?;
        self.conn.set_read_timeout(timeout);
        let mut result = Fetched::Missing("the host sent nothing".into());
        let mut got = 0u64;
        let mut too_large = false;
        let mut buf = vec![0u8; DOWNLOAD_BUFFER_LEN];
        {
            let mut rd = FileStreamReader::new(&mut *self.conn, StreamKind::Download);
            loop {
                match rd.next(&mut buf).map_err(|e| stream_error(e, timeout))? {
                    StreamEvent::File(h) => {
                        if h.path != path {
                            return Err(Stop::Conn(AgentError::Protocol(format!(
                                "asked for {path}, the host sent {}",
                                h.path
                            ))));
                        }
                        got = 0;
                        too_large = false;
                    }
                    StreamEvent::Data(n) => {
                        got += n as u64;
                        if got > cap {
                            too_large = true;
                        } else {
                            sink.write_all(buf.get(..n).unwrap_or_default())
                                .map_err(|e| Stop::Conn(AgentError::Scratch(e)))?;
                        }
                    }
                    StreamEvent::FileDone => {
                        result = if too_large {
                            Fetched::TooLarge
                        } else {
                            Fetched::Got
                        }
                    }
                    StreamEvent::FileFailed { message, .. } => result = Fetched::Missing(message),
                    StreamEvent::End => break,
                }
            }
        }
        let st = self.conn.status(timeout, "DownloadFiles")?;
        match st.code {
            0 => Ok(result),
            MULTI_STATUS => Ok(match result {
                Fetched::Got => Fetched::Missing("listed in the host's multi status".into()),
                other => other,
            }),
            _ => Err(refuse(
                codes::FAILED,
                format!("the host could not send {path}: {}", describe(&st)),
            )),
        }
    }

    // ---- steps b and c: space and folders -------------------------------------------------

    fn check_free_space(&mut self, upload_bytes: u64, entries: u64) -> Result<(), Stop> {
        let needed = upload_bytes
            .saturating_add(FREE_SPACE_BASE)
            .saturating_add(entries.saturating_mul(FREE_SPACE_PER_ENTRY));
        self.conn.send(&DeviceMessage::GetFreeDiskSpace)?;
        let st = self.conn.status(self.reply_timeout(), "GetFreeDiskSpace")?;
        if st.code != 0 {
            return Err(refuse(
                codes::FAILED,
                format!("the host could not tell its free space: {}", describe(&st)),
            ));
        }
        let free = st.payload.as_ref().and_then(as_u64).ok_or_else(|| {
            refuse(
                codes::FAILED,
                "the host answered GetFreeDiskSpace without a number",
            )
        })?;
        if free < needed {
            return Err(refuse(
                codes::NOT_ENOUGH_SPACE,
                format!(
                    "Not enough free space on the host: {needed} bytes needed, {free} available (MBErrorDomain/105)"
                ),
            ));
        }
        Ok(())
    }

    /// Checks the host's answer to a file operation.
    fn op_status(&mut self, what: &str) -> Result<(), Stop> {
        let st = self.conn.status(self.reply_timeout(), what)?;
        if st.code != 0 {
            return Err(refuse(
                codes::FAILED,
                format!("the host could not {what}: {}", describe(&st)),
            ));
        }
        Ok(())
    }

    fn create_dir(&mut self, path: String) -> Result<(), Stop> {
        let what = format!("create the folder {path}");
        self.conn.send(&DeviceMessage::CreateDirectory {
            path,
            progress: Some(self.progress),
        })?;
        self.op_status(&what)
    }

    fn remove(&mut self, paths: &[String]) -> Result<(), Stop> {
        self.conn.send(&DeviceMessage::RemoveItems {
            paths: paths.to_vec(),
            progress: Some(self.progress),
        })?;
        let what = match paths {
            [one] => format!("remove {one}"),
            _ => format!("remove {} items", paths.len()),
        };
        self.op_status(&what)
    }

    fn prepare_dirs(&mut self, plan: &Plan<'_>) -> Result<(), Stop> {
        if let Some(bad) = self.bad_path(FaultPoint::Start) {
            self.create_dir(bad)?;
        }
        // A Snapshot left by an interrupted backup would mix old files into this one.
        self.remove(&[self.snapshot()])?;
        self.create_dir(self.udid.clone())?;
        self.create_dir(self.snapshot())?;
        self.snapshot_created = true;
        let prefixes: BTreeSet<String> = plan
            .send
            .iter()
            .map(|e| e.file_id()[..2].to_string())
            .collect();
        let n = prefixes.len().max(1) as f64;
        for (i, p) in prefixes.iter().enumerate() {
            self.progress = 2.0 + 3.0 * (i as f64) / n;
            self.create_dir(format!("{}/{p}", self.snapshot()))?;
            self.create_dir(format!("{}/{p}", self.udid))?;
        }
        self.progress = 5.0;
        Ok(())
    }

    // ---- step d: uploads ------------------------------------------------------------------

    fn upload_files(
        &mut self,
        sb: &SimBackup<'_>,
        send: &[&Entry],
        total: u64,
    ) -> Result<(), Stop> {
        let cfg = &self.agent.config;
        let (max_bytes, max_files) = (cfg.batch_bytes.max(1), cfg.batch_files.max(1));
        let mut start = 0;
        let mut done = 0u64;
        while start < send.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < send.len() && end - start < max_files {
                let len = sb.data_len(send[end]);
                if end > start && bytes + len > max_bytes {
                    break;
                }
                bytes += len;
                end += 1;
            }
            self.progress = 5.0 + 85.0 * (done as f64) / (total.max(1) as f64);
            self.upload_batch(sb, &send[start..end], bytes)?;
            done += bytes;
            start = end;
        }
        self.progress = 90.0;
        Ok(())
    }

    fn upload_batch(
        &mut self,
        sb: &SimBackup<'_>,
        batch: &[&Entry],
        bytes: u64,
    ) -> Result<(), Stop> {
        let first = std::mem::replace(&mut self.first_upload, false);
        if first {
            self.fault_frame(FaultPoint::Upload)?;
        }
        let fault = if first { self.fault().cloned() } else { None };
        let bad_path = if first {
            self.bad_path(FaultPoint::Upload)
        } else {
            None
        };
        self.conn.send(&DeviceMessage::UploadFiles {
            progress: Some(self.progress),
            total_bytes: Some(bytes),
        })?;
        self.conn.set_counting(true);
        let snapshot = self.snapshot();
        let mut uploaded = (0u64, 0u64);
        {
            let mut w = FileStreamWriter::new(&mut *self.conn, StreamKind::Upload);
            for (i, e) in batch.iter().enumerate() {
                let id = e.file_id();
                let mut path = format!("{snapshot}/{}/{id}", &id[..2]);
                if i == 0 {
                    if let Some(bad) = &bad_path {
                        path = bad.clone();
                    }
                }
                let header = FileHeader {
                    device_path: Some(device_path(e, &id)),
                    path,
                };
                w.begin_file(&header)
                    .map_err(|e| w.get_mut().write_err(e))?;
                if i == 0 {
                    match &fault {
                        Some(Fault::Stall {
                            at: FaultPoint::Upload,
                            duration,
                        }) => {
                            tracing::info!(
                                ?duration,
                                "backup agent: stalling inside an upload (fault)"
                            );
                            w.get_mut().stall(*duration)?;
                        }
                        Some(Fault::HugeLength {
                            at: FaultPoint::Upload,
                        }) => {
                            let mut b = u32::MAX.to_be_bytes().to_vec();
                            b.push(crate::backup2::file_stream::CODE_FILE_DATA);
                            w.get_mut().send_raw(&b)?;
                            w.get_mut().drain_until_closed(DRAIN_LIMIT);
                            return Err(Stop::Conn(AgentError::Injected(
                                "a 4 GiB data block length",
                            )));
                        }
                        _ => {}
                    }
                }
                let mut sink = BlockSink {
                    w: &mut w,
                    buf: Vec::with_capacity(DEFAULT_BLOCK_SIZE),
                    conn_error: None,
                };
                let res = sb.write_data(e, &mut sink).and_then(|n| {
                    sink.send()
                        .map_err(|source| crate::sim::backup::SimBackupError::Io {
                            path: header.path.clone().into(),
                            source,
                        })?;
                    Ok(n)
                });
                let conn_error = sink.conn_error.take();
                if let Some(ce) = conn_error {
                    return Err(Stop::Conn(w.get_mut().write_err(ce)));
                }
                match res {
                    Ok(n) => {
                        w.finish_file().map_err(|e| w.get_mut().write_err(e))?;
                        uploaded.0 += 1;
                        uploaded.1 += n;
                    }
                    Err(err) => {
                        // The phone could not read its own file: say so in the stream, go on.
                        tracing::warn!(error = %err, "backup agent: a file could not be read");
                        w.fail_file(&err.to_string())
                            .map_err(|e| w.get_mut().write_err(e))?;
                    }
                }
            }
            w.finish().map_err(|e| w.get_mut().write_err(e))?;
        }
        self.conn.set_counting(false);
        self.report.files_uploaded += uploaded.0;
        self.report.bytes_uploaded += uploaded.1;
        let st = self.conn.status(self.reply_timeout(), "UploadFiles")?;
        if st.code != 0 {
            return Err(refuse(
                codes::UPLOAD_FAILED,
                format!(
                    "the host did not store every uploaded file: {}",
                    describe(&st)
                ),
            ));
        }
        Ok(())
    }

    /// Uploads Manifest.db, Manifest.plist and Status.plist into Snapshot/.
    fn upload_manifests(
        &mut self,
        sb: &SimBackup<'_>,
        scratch: &Path,
        full: bool,
    ) -> Result<(), Stop> {
        let db = scratch.join(MANIFEST_DB);
        sb.write_manifest_db(&db).map_err(|e| {
            refuse(
                codes::FAILED,
                format!("the phone could not write Manifest.db: {e}"),
            )
        })?;
        let manifest = sb.manifest_plist().to_bytes();
        let status = sb.status_plist(full).to_bytes();
        let db_len = fs::metadata(&db)
            .map_err(|e| Stop::Conn(AgentError::Scratch(e)))?
            .len();
        let mut db_file = fs::File::open(&db).map_err(|e| Stop::Conn(AgentError::Scratch(e)))?;
        self.conn.send(&DeviceMessage::UploadFiles {
            progress: Some(self.progress),
            total_bytes: Some(db_len + manifest.len() as u64 + status.len() as u64),
        })?;
        self.conn.set_counting(true);
        let snapshot = self.snapshot();
        {
            let mut w = FileStreamWriter::new(&mut *self.conn, StreamKind::Upload);
            let header = |name: &str| FileHeader {
                device_path: Some(format!("/var/mobile/Library/Backup/{name}")),
                path: format!("{snapshot}/{name}"),
            };
            w.begin_file(&header(MANIFEST_DB))
                .map_err(|e| w.get_mut().write_err(e))?;
            // A read error here is local (the scratch file); a write error is the connection's.
            let mut buf = vec![0u8; DEFAULT_BLOCK_SIZE];
            loop {
                let n = match io::Read::read(&mut db_file, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Stop::Conn(AgentError::Scratch(e))),
                };
                w.write_data(&buf[..n])
                    .map_err(|e| w.get_mut().write_err(e))?;
            }
            w.finish_file().map_err(|e| w.get_mut().write_err(e))?;
            for (name, bytes) in [(MANIFEST_PLIST, &manifest), (STATUS_PLIST, &status)] {
                w.begin_file(&header(name))
                    .map_err(|e| w.get_mut().write_err(e))?;
                w.write_data(bytes).map_err(|e| w.get_mut().write_err(e))?;
                w.finish_file().map_err(|e| w.get_mut().write_err(e))?;
            }
            w.finish().map_err(|e| w.get_mut().write_err(e))?;
        }
        self.conn.set_counting(false);
        let st = self.conn.status(self.reply_timeout(), "UploadFiles")?;
        if st.code != 0 {
            return Err(refuse(
                codes::UPLOAD_FAILED,
                format!("the host did not store the manifests: {}", describe(&st)),
            ));
        }
        Ok(())
    }

    // ---- step e: into place ----------------------------------------------------------------

    fn move_one(&mut self, src: String, mut dst: String) -> Result<(), Stop> {
        if std::mem::replace(&mut self.first_move, false) {
            self.fault_frame(FaultPoint::Moves)?;
            if let Some(bad) = self.bad_path(FaultPoint::Moves) {
                dst = bad;
            }
        }
        let what = format!("move {src} to {dst}");
        self.conn.send(&DeviceMessage::MoveItems {
            moves: vec![(src, dst)],
            progress: Some(self.progress),
        })?;
        self.op_status(&what)
    }

    fn move_into_place(&mut self, plan: &Plan<'_>) -> Result<(), Stop> {
        let snapshot = self.snapshot();
        let n = (plan.send.len() + 3) as f64;
        for (i, e) in plan.send.iter().enumerate() {
            let id = e.file_id();
            self.progress = 90.0 + 9.0 * (i as f64) / n;
            self.move_one(
                format!("{snapshot}/{}/{id}", &id[..2]),
                format!("{}/{}/{id}", self.udid, &id[..2]),
            )?;
        }
        // Files gone from the phone: their data files go before the new manifests land.
        let removed: Vec<String> = plan
            .removed
            .iter()
            .filter(|id| is_valid_file_id(id))
            .map(|id| format!("{}/{}/{id}", self.udid, &id[..2]))
            .collect();
        for chunk in removed.chunks(REMOVE_BATCH) {
            self.remove(chunk)?;
        }
        self.report.files_removed = removed.len() as u64;
        for name in [MANIFEST_DB, MANIFEST_PLIST, STATUS_PLIST] {
            self.progress = 99.0;
            self.move_one(
                format!("{snapshot}/{name}"),
                format!("{}/{name}", self.udid),
            )?;
        }
        self.progress = 100.0;
        self.remove(&[snapshot])?;
        self.snapshot_created = false;
        Ok(())
    }
}

/// Reads the previous backup's rows, if its Manifest.plist and Manifest.db open with this
/// phone's keys. `Err` says why not (the backup is then full).
fn previous_rows(
    sb: &SimBackup<'_>,
    dir: &Path,
    manifest: &[u8],
) -> Result<HashMap<String, PrevRow>, String> {
    fs::write(dir.join(MANIFEST_PLIST), manifest).map_err(|e| format!("scratch space: {e}"))?;
    let folder = BackupFolder::open(dir).map_err(|e| format!("previous backup: {e}"))?;
    let open = if folder.is_encrypted() {
        let ours = sb
            .unlocked_keybag()
            .ok_or("the previous backup is encrypted, this one is not")?;
        let keybag = folder
            .keybag()
            .map_err(|e| format!("previous backup: {e}"))?;
        let keys = keybag.unlock_with_kek(ours.kek()).map_err(|_| {
            "the previous backup does not open with this phone's keys (password changed)"
        })?;
        folder.open_with_keys(keys)
    } else {
        if sb.is_encrypted() {
            return Err("the previous backup is not encrypted, this one is".into());
        }
        folder.unlock(None)
    }
    .map_err(|e| format!("previous backup: {e}"))?;
    let mut rows = HashMap::new();
    for row in open.rows() {
        let row = row.map_err(|e| format!("previous Manifest.db: {e}"))?;
        if rows.len() >= MAX_PREVIOUS_ROWS {
            return Err(format!(
                "the previous Manifest.db has more than {MAX_PREVIOUS_ROWS} rows"
            ));
        }
        rows.insert(
            row.file_id.clone(),
            PrevRow {
                is_file: row.has_data_file(),
                size: row.file.size,
                mtime: row.file.last_modified,
                key: row.file.encryption_key,
            },
        );
    }
    Ok(rows)
}
