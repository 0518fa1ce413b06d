//! The simulated iPhone's side services: notification_proxy (with a hub that relays device-side
//! notifications and records what hosts post), AFC over a small in-memory file system,
//! installation_proxy Browse and springboardservices icons.
//!
//! Each `*_handler` returns a [`ServiceHandler`] that serves one connection until EOF, Shutdown or
//! a malformed message (logged, then the connection is closed); none panics on peer input. They are
//! written to satisfy both idevicebackup2 1.3.0 and pymobiledevice3 (see the protocol spec §6–7).

use crate::plist_frame::{read_frame_max, write_frame, FrameError, PlistFormat};
use crate::services::afc::{
    encode_dir_listing, read_packet, write_packet, AfcCodecError, AfcReadError, AfcReply,
    AfcRequest, AfcStatus, FileHandle, FileInfo, FileKind, LockOp, OpenMode,
};
use crate::services::notification_proxy::{MAX_NOTIFICATION_NAME_LEN, MAX_NP_FRAME_LEN};
use crate::services::{
    dict_str, FrameReader, Polled, AFC_SERVICE, INSTALLATION_PROXY_SERVICE,
    NOTIFICATION_PROXY_SERVICE, SPRINGBOARD_SERVICE,
};
use crate::sim::device::{ServiceHandler, SimDevice};
use crate::transport::BoxStream;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------
// notification_proxy
// ------------------------------------------------------------------------------------------

/// Most host posts the hub remembers (older ones are dropped first).
pub const MAX_HOST_POST_LOG: usize = 4096;
/// Most relays queued for one connection that is not reading them.
pub const MAX_QUEUED_RELAYS: usize = 256;
/// Most names one connection may observe.
pub const MAX_OBSERVED_PER_CONNECTION: usize = 256;
/// How often an idle notification_proxy connection checks for relays to deliver.
pub const NP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The device's notification centre as the simulator sees it: which connections observe what,
/// relays waiting to be sent, and the log of what hosts posted (for tests and the backup agent).
#[derive(Default)]
pub struct NotificationHub {
    inner: Mutex<HubInner>,
    changed: Condvar,
}

#[derive(Default)]
struct HubInner {
    host_posts: VecDeque<String>,
    conns: HashMap<u64, NpConn>,
    next_conn: u64,
}

#[derive(Default)]
struct NpConn {
    observing: HashSet<String>,
    queue: VecDeque<String>,
}

impl HubInner {
    /// Queues `name` for every connection observing it; returns how many.
    fn relay(&mut self, name: &str) -> usize {
        let mut n = 0;
        for c in self.conns.values_mut() {
            if c.observing.contains(name) {
                if c.queue.len() >= MAX_QUEUED_RELAYS {
                    c.queue.pop_front();
                }
                c.queue.push_back(name.to_string());
                n += 1;
            }
        }
        n
    }
}

impl NotificationHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Posts `name` from the device side (e.g. `com.apple.mobile.backup.domain_changed` after a
    /// password change, or a cancel request): every connection observing it gets a
    /// RelayNotification. Returns how many connections observe it.
    pub fn post(&self, name: &str) -> usize {
        let n = self.lock().relay(name);
        self.changed.notify_all();
        n
    }

    /// The names hosts posted (PostNotification), oldest first.
    pub fn host_posts(&self) -> Vec<String> {
        self.lock().host_posts.iter().cloned().collect()
    }

    /// How many open connections observe `name`.
    pub fn observer_count(&self, name: &str) -> usize {
        self.lock()
            .conns
            .values()
            .filter(|c| c.observing.contains(name))
            .count()
    }

    /// Waits until at least `count` connections observe `name`; false on timeout.
    pub fn wait_for_observers(&self, name: &str, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |g| {
            g.conns
                .values()
                .filter(|c| c.observing.contains(name))
                .count()
                >= count
        })
    }

    /// Waits until a host has posted `name`; false on timeout.
    pub fn wait_for_host_post(&self, name: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |g| g.host_posts.iter().any(|p| p == name))
    }

    fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&HubInner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if done(&g) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn connect(&self) -> u64 {
        let mut g = self.lock();
        g.next_conn += 1;
        let id = g.next_conn;
        g.conns.insert(id, NpConn::default());
        id
    }

    fn disconnect(&self, id: u64) {
        self.lock().conns.remove(&id);
        self.changed.notify_all();
    }

    fn observe(&self, id: u64, name: &str) {
        let mut g = self.lock();
        if let Some(c) = g.conns.get_mut(&id) {
            if c.observing.len() < MAX_OBSERVED_PER_CONNECTION {
                c.observing.insert(name.to_string());
            } else {
                tracing::warn!(name, "notification_proxy: too many observed names; ignored");
            }
        }
        drop(g);
        self.changed.notify_all();
    }

    /// A host posted `name`: log it and, as the real notification centre does, relay it to
    /// connections observing it.
    fn host_post(&self, name: &str) {
        let mut g = self.lock();
        if g.host_posts.len() >= MAX_HOST_POST_LOG {
            g.host_posts.pop_front();
        }
        g.host_posts.push_back(name.to_string());
        g.relay(name);
        drop(g);
        self.changed.notify_all();
    }

    fn take_relays(&self, id: u64) -> Vec<String> {
        self.lock()
            .conns
            .get_mut(&id)
            .map(|c| c.queue.drain(..).collect())
            .unwrap_or_default()
    }
}

/// Unregisters a notification_proxy connection however its handler ends.
struct NpConnGuard<'a> {
    hub: &'a NotificationHub,
    id: u64,
}

impl Drop for NpConnGuard<'_> {
    fn drop(&mut self) {
        self.hub.disconnect(self.id);
    }
}

fn np_message(command: &str, name: Option<&str>) -> plist::Value {
    let mut d = plist::Dictionary::new();
    d.insert("Command".into(), command.into());
    if let Some(n) = name {
        d.insert("Name".into(), n.into());
    }
    d.into()
}

/// notification_proxy: Observe and Post are accepted silently (posts are logged in the hub),
/// notifications posted through the hub are relayed to observers, and Shutdown is answered with
/// ProxyDeath before closing — without it libimobiledevice waits 30 s after every post.
///
/// Relays go out between reads, every [`NP_POLL_INTERVAL`]; on a stream that ignores read
/// timeouts they wait for the host's next message.
pub fn notification_proxy_handler(hub: Arc<NotificationHub>) -> ServiceHandler {
    Arc::new(move |stream| serve_notification_proxy(&hub, stream))
}

fn serve_notification_proxy(hub: &NotificationHub, mut stream: BoxStream) {
    let guard = NpConnGuard {
        hub,
        id: hub.connect(),
    };
    if let Err(e) = stream.set_read_timeout(Some(NP_POLL_INTERVAL)) {
        tracing::debug!(error = %e, "notification_proxy: no read timeout; relays wait for requests");
    }
    let mut reader = FrameReader::new(MAX_NP_FRAME_LEN);
    loop {
        for name in hub.take_relays(guard.id) {
            let msg = np_message("RelayNotification", Some(&name));
            if let Err(e) = write_frame(&mut stream, &msg, PlistFormat::Xml) {
                tracing::debug!(error = %e, "notification_proxy: relay failed; closing");
                return;
            }
        }
        let v = match reader.poll(&mut stream) {
            Ok(Polled::Frame(v)) => v,
            Ok(Polled::TimedOut) => continue,
            Err(FrameError::Eof) => return,
            Err(e) => {
                tracing::warn!(error = %e, "notification_proxy: bad frame from host; closing");
                return;
            }
        };
        let name =
            dict_str(&v, "Name").filter(|n| !n.is_empty() && n.len() <= MAX_NOTIFICATION_NAME_LEN);
        match (dict_str(&v, "Command"), name) {
            (Some("ObserveNotification"), Some(n)) => hub.observe(guard.id, n),
            (Some("PostNotification"), Some(n)) => hub.host_post(n),
            (Some("Shutdown"), _) => {
                if let Err(e) = write_frame(
                    &mut stream,
                    &np_message("ProxyDeath", None),
                    PlistFormat::Xml,
                ) {
                    tracing::debug!(error = %e, "notification_proxy: ProxyDeath not sent");
                }
                let _ = stream.shutdown();
                return;
            }
            (cmd, _) => tracing::warn!(command = ?cmd, "notification_proxy: ignored message"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// AFC
// ------------------------------------------------------------------------------------------

/// Most bytes the simulated media partition holds.
pub const MAX_SIM_AFC_BYTES: u64 = 64 * 1024 * 1024;
/// Most files and directories it holds.
pub const MAX_SIM_AFC_NODES: usize = 10_000;
/// Most files one connection may have open.
pub const MAX_OPEN_FILES_PER_CONNECTION: usize = 256;
/// Most bytes returned by one Read (pymobiledevice3 asks for up to 4 MiB and takes a short read
/// as the end of the file, so this must not be smaller).
pub const MAX_SIM_READ_LEN: u64 = 8 * 1024 * 1024;
/// Largest packet the simulated AFC accepts: pymobiledevice3 writes a whole file in one packet
/// (up to 1 GiB), so writes up to the partition's size are let through.
pub const MAX_SIM_AFC_PACKET_LEN: u64 = MAX_SIM_AFC_BYTES + 40;
/// The simulated clock's default: 2024-06-01T00:00:00Z, in nanoseconds.
pub const SIM_AFC_DEFAULT_TIME_NS: u64 = 1_717_200_000_000_000_000;

/// An in-memory media partition (what AFC serves): directories and files, open handles with
/// positions, and flock-style locks owned by handles. Starts with only `/`.
pub struct SimAfcFs {
    inner: Mutex<FsInner>,
}

struct FsInner {
    nodes: BTreeMap<String, Node>,
    bytes: u64,
    handles: HashMap<u64, OpenFile>,
    next_handle: u64,
    next_conn: u64,
    now_ns: u64,
}

enum Node {
    Dir {
        birth_ns: u64,
        mtime_ns: u64,
    },
    File {
        data: Vec<u8>,
        birth_ns: u64,
        mtime_ns: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    None,
    Shared,
    Exclusive,
}

struct OpenFile {
    conn: u64,
    path: String,
    pos: u64,
    readable: bool,
    writable: bool,
    append: bool,
    held: Held,
}

/// `path` made absolute and canonical (`/a/b`); `..` never climbs above `/`.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    let i = path.rfind('/')?;
    Some(if i == 0 { "/" } else { &path[..i] })
}

fn child_prefix(dir: &str) -> String {
    if dir == "/" {
        "/".to_string()
    } else {
        format!("{dir}/")
    }
}

impl Default for SimAfcFs {
    fn default() -> Self {
        Self::new()
    }
}

impl SimAfcFs {
    /// A partition holding only `/` (every stat of anything else → OBJECT_NOT_FOUND).
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "/".to_string(),
            Node::Dir {
                birth_ns: SIM_AFC_DEFAULT_TIME_NS,
                mtime_ns: SIM_AFC_DEFAULT_TIME_NS,
            },
        );
        Self {
            inner: Mutex::new(FsInner {
                nodes,
                bytes: 0,
                handles: HashMap::new(),
                next_handle: 0,
                next_conn: 0,
                now_ns: SIM_AFC_DEFAULT_TIME_NS,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the time stamped on files created or written from now on.
    pub fn set_time_ns(&self, now_ns: u64) {
        self.lock().now_ns = now_ns;
    }

    /// Creates or replaces a file, creating its parent directories.
    pub fn put_file(&self, path: &str, data: &[u8]) -> Result<(), AfcStatus> {
        let mut g = self.lock();
        let p = normalize(path);
        let par = parent(&p).ok_or(AfcStatus::OBJECT_IS_DIR)?.to_string();
        g.make_dirs(&par)?;
        g.create_file(&p)?;
        g.set_contents(&p, data.to_vec())
    }

    /// Creates a directory and its parents.
    pub fn make_dirs(&self, path: &str) -> Result<(), AfcStatus> {
        self.lock().make_dirs(&normalize(path))
    }

    /// A file's contents.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        match self.lock().nodes.get(&normalize(path)) {
            Some(Node::File { data, .. }) => Some(data.clone()),
            _ => None,
        }
    }

    /// True if `path` names a file or directory.
    pub fn exists(&self, path: &str) -> bool {
        self.lock().nodes.contains_key(&normalize(path))
    }

    /// True if some open handle holds a lock on `path`.
    pub fn is_locked(&self, path: &str) -> bool {
        let p = normalize(path);
        self.lock()
            .handles
            .values()
            .any(|h| h.path == p && h.held != Held::None)
    }

    /// How many files are open, over all connections.
    pub fn open_file_count(&self) -> usize {
        self.lock().handles.len()
    }

    /// Puts small plausible files where hosts look for them when building Info.plist
    /// (`/iTunes_Control/iTunes/iTunesPrefs.plist`, `…/IC-Info.sidv`, `/Books/iBooksData2.plist`),
    /// so that the AFC read path is exercised end to end.
    pub fn seed_itunes_files(&self) -> Result<(), AfcStatus> {
        let mut prefs = plist::Dictionary::new();
        prefs.insert("iPodPrefsVersion".into(), 1u64.into());
        let mut books = plist::Dictionary::new();
        books.insert("Books".into(), plist::Value::Array(Vec::new()));
        for (path, dict) in [
            ("/iTunes_Control/iTunes/iTunesPrefs.plist", prefs),
            ("/Books/iBooksData2.plist", books),
        ] {
            let mut bytes = Vec::new();
            if plist::Value::Dictionary(dict)
                .to_writer_xml(&mut bytes)
                .is_err()
            {
                return Err(AfcStatus::INTERNAL_ERROR);
            }
            self.put_file(path, &bytes)?;
        }
        self.put_file("/iTunes_Control/iTunes/IC-Info.sidv", &[0u8; 32])
    }

    fn connect(&self) -> u64 {
        let mut g = self.lock();
        g.next_conn += 1;
        g.next_conn
    }

    /// Closes every file a connection left open (releasing its locks), as the device does when
    /// the connection drops.
    fn disconnect(&self, conn: u64) {
        self.lock().handles.retain(|_, h| h.conn != conn);
    }

    /// Executes one request for connection `conn`.
    pub(crate) fn handle(&self, conn: u64, req: AfcRequest) -> AfcReply {
        let mut g = self.lock();
        let res = match req {
            AfcRequest::GetFileInfo { path } => g.stat(&normalize(&path)).map(|fi| {
                let mut b = Vec::new();
                fi.encode(&mut b);
                AfcReply::Data(b)
            }),
            AfcRequest::ReadDirectory { path } => g.list(&normalize(&path)).map(|names| {
                let mut b = Vec::new();
                encode_dir_listing(&names, &mut b);
                AfcReply::Data(b)
            }),
            AfcRequest::MakeDir { path } => g.make_dirs(&normalize(&path)).map(|()| ok()),
            AfcRequest::RemovePath { path } => g.remove(&normalize(&path)).map(|()| ok()),
            AfcRequest::FileOpen { mode, path } => g
                .open(conn, mode, &normalize(&path))
                .map(AfcReply::FileOpened),
            AfcRequest::Read { handle, len } => g.read(conn, handle, len).map(AfcReply::Data),
            AfcRequest::Write { handle, data } => g.write(conn, handle, data).map(|()| ok()),
            AfcRequest::Close { handle } => g.close(conn, handle).map(|()| ok()),
            AfcRequest::Lock { handle, op } => g.flock(conn, handle, op).map(|()| ok()),
        };
        res.unwrap_or_else(AfcReply::Status)
    }
}

fn ok() -> AfcReply {
    AfcReply::Status(AfcStatus::SUCCESS)
}

impl FsInner {
    fn make_dirs(&mut self, p: &str) -> Result<(), AfcStatus> {
        match self.nodes.get(p) {
            Some(Node::Dir { .. }) => return Ok(()),
            Some(Node::File { .. }) => return Err(AfcStatus::OBJECT_EXISTS),
            None => {}
        }
        if let Some(par) = parent(p) {
            let par = par.to_string();
            self.make_dirs(&par)?;
        }
        if self.nodes.len() >= MAX_SIM_AFC_NODES {
            return Err(AfcStatus::NO_SPACE_LEFT);
        }
        let t = self.now_ns;
        self.nodes.insert(
            p.to_string(),
            Node::Dir {
                birth_ns: t,
                mtime_ns: t,
            },
        );
        Ok(())
    }

    /// Creates an empty file if `p` does not exist; its parent must be a directory.
    fn create_file(&mut self, p: &str) -> Result<(), AfcStatus> {
        match self.nodes.get(p) {
            Some(Node::File { .. }) => return Ok(()),
            Some(Node::Dir { .. }) => return Err(AfcStatus::OBJECT_IS_DIR),
            None => {}
        }
        match parent(p).and_then(|par| self.nodes.get(par)) {
            Some(Node::Dir { .. }) => {}
            _ => return Err(AfcStatus::OBJECT_NOT_FOUND),
        }
        if self.nodes.len() >= MAX_SIM_AFC_NODES {
            return Err(AfcStatus::NO_SPACE_LEFT);
        }
        let t = self.now_ns;
        self.nodes.insert(
            p.to_string(),
            Node::File {
                data: Vec::new(),
                birth_ns: t,
                mtime_ns: t,
            },
        );
        Ok(())
    }

    fn set_contents(&mut self, p: &str, new: Vec<u8>) -> Result<(), AfcStatus> {
        let now = self.now_ns;
        let Some(Node::File { data, mtime_ns, .. }) = self.nodes.get_mut(p) else {
            return Err(AfcStatus::OBJECT_NOT_FOUND);
        };
        let total = self.bytes.saturating_sub(data.len() as u64) + new.len() as u64;
        if total > MAX_SIM_AFC_BYTES {
            return Err(AfcStatus::NO_SPACE_LEFT);
        }
        *data = new;
        *mtime_ns = now;
        self.bytes = total;
        Ok(())
    }

    fn stat(&self, p: &str) -> Result<FileInfo, AfcStatus> {
        match self.nodes.get(p).ok_or(AfcStatus::OBJECT_NOT_FOUND)? {
            Node::File {
                data,
                birth_ns,
                mtime_ns,
            } => Ok(FileInfo {
                size: data.len() as u64,
                blocks: (data.len() as u64).div_ceil(4096) * 8,
                nlink: 1,
                kind: FileKind::Regular,
                mtime_ns: *mtime_ns,
                birthtime_ns: *birth_ns,
                link_target: None,
            }),
            Node::Dir { birth_ns, mtime_ns } => {
                let children = self.children(p);
                let subdirs = children
                    .iter()
                    .filter(|c| matches!(self.nodes.get(&join(p, c)), Some(Node::Dir { .. })))
                    .count();
                Ok(FileInfo {
                    size: 64 + 32 * children.len() as u64,
                    blocks: 0,
                    nlink: 2 + subdirs as u64,
                    kind: FileKind::Directory,
                    mtime_ns: *mtime_ns,
                    birthtime_ns: *birth_ns,
                    link_target: None,
                })
            }
        }
    }

    fn children(&self, dir: &str) -> Vec<String> {
        let prefix = child_prefix(dir);
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| {
                let rest = k.get(prefix.len()..)?;
                (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
            })
            .collect()
    }

    fn list(&self, p: &str) -> Result<Vec<String>, AfcStatus> {
        match self.nodes.get(p) {
            Some(Node::Dir { .. }) => {
                let mut names = vec![".".to_string(), "..".to_string()];
                names.extend(self.children(p));
                Ok(names)
            }
            Some(Node::File { .. }) => Err(AfcStatus::INVALID_ARG),
            None => Err(AfcStatus::OBJECT_NOT_FOUND),
        }
    }

    fn remove(&mut self, p: &str) -> Result<(), AfcStatus> {
        match self.nodes.get(p) {
            None => Err(AfcStatus::OBJECT_NOT_FOUND),
            Some(Node::Dir { .. }) if p == "/" => Err(AfcStatus::PERM_DENIED),
            Some(Node::Dir { .. }) if !self.children(p).is_empty() => Err(AfcStatus::DIR_NOT_EMPTY),
            Some(_) => {
                if let Some(Node::File { data, .. }) = self.nodes.remove(p) {
                    self.bytes = self.bytes.saturating_sub(data.len() as u64);
                }
                Ok(())
            }
        }
    }

    fn open(&mut self, conn: u64, mode: OpenMode, p: &str) -> Result<FileHandle, AfcStatus> {
        if self.handles.values().filter(|h| h.conn == conn).count() >= MAX_OPEN_FILES_PER_CONNECTION
        {
            return Err(AfcStatus::NO_RESOURCES);
        }
        use OpenMode::*;
        match mode {
            ReadOnly => match self.nodes.get(p) {
                Some(Node::File { .. }) => {}
                Some(Node::Dir { .. }) => return Err(AfcStatus::OBJECT_IS_DIR),
                None => return Err(AfcStatus::OBJECT_NOT_FOUND),
            },
            _ => self.create_file(p)?,
        }
        if matches!(mode, WriteOnly | WriteRead) {
            self.set_contents(p, Vec::new())?;
        }
        self.next_handle += 1;
        let h = self.next_handle;
        self.handles.insert(
            h,
            OpenFile {
                conn,
                path: p.to_string(),
                pos: 0,
                readable: matches!(mode, ReadOnly | ReadWrite | WriteRead | ReadAppend),
                writable: !matches!(mode, ReadOnly),
                append: matches!(mode, Append | ReadAppend),
                held: Held::None,
            },
        );
        Ok(FileHandle(h))
    }

    /// The open file behind `h`, if this connection opened it.
    fn open_file(&mut self, conn: u64, h: FileHandle) -> Result<&mut OpenFile, AfcStatus> {
        match self.handles.get_mut(&h.0) {
            Some(f) if f.conn == conn => Ok(f),
            _ => Err(AfcStatus::INVALID_ARG),
        }
    }

    fn read(&mut self, conn: u64, h: FileHandle, len: u64) -> Result<Vec<u8>, AfcStatus> {
        let f = self.open_file(conn, h)?;
        if !f.readable {
            return Err(AfcStatus::PERM_DENIED);
        }
        let (path, pos) = (f.path.clone(), f.pos);
        let Some(Node::File { data, .. }) = self.nodes.get(&path) else {
            return Err(AfcStatus::OBJECT_NOT_FOUND);
        };
        let start = usize::try_from(pos).unwrap_or(usize::MAX).min(data.len());
        let n = usize::try_from(len.min(MAX_SIM_READ_LEN)).unwrap_or(0);
        let out = data.get(start..).unwrap_or_default();
        let out = out.get(..n.min(out.len())).unwrap_or_default().to_vec();
        if let Ok(f) = self.open_file(conn, h) {
            f.pos = pos + out.len() as u64;
        }
        Ok(out)
    }

    fn write(&mut self, conn: u64, h: FileHandle, bytes: Vec<u8>) -> Result<(), AfcStatus> {
        let f = self.open_file(conn, h)?;
        if !f.writable {
            return Err(AfcStatus::PERM_DENIED);
        }
        let (path, pos, append) = (f.path.clone(), f.pos, f.append);
        let Some(Node::File { data, .. }) = self.nodes.get(&path) else {
            return Err(AfcStatus::OBJECT_NOT_FOUND);
        };
        let at = if append {
            data.len()
        } else {
            usize::try_from(pos).map_err(|_| AfcStatus::INVALID_ARG)?
        };
        let end = at.checked_add(bytes.len()).ok_or(AfcStatus::INVALID_ARG)?;
        if end as u64 > MAX_SIM_AFC_BYTES {
            return Err(AfcStatus::NO_SPACE_LEFT);
        }
        let mut new = data.clone();
        if new.len() < end {
            new.resize(end, 0);
        }
        if let Some(dst) = new.get_mut(at..end) {
            dst.copy_from_slice(&bytes);
        }
        self.set_contents(&path, new)?;
        if let Ok(f) = self.open_file(conn, h) {
            f.pos = end as u64;
        }
        Ok(())
    }

    fn close(&mut self, conn: u64, h: FileHandle) -> Result<(), AfcStatus> {
        self.open_file(conn, h)?;
        self.handles.remove(&h.0);
        Ok(())
    }

    /// flock semantics with LOCK_NB: locks belong to handles; a conflicting lock held through
    /// another handle (any connection) gives OP_WOULD_BLOCK.
    fn flock(&mut self, conn: u64, h: FileHandle, op: LockOp) -> Result<(), AfcStatus> {
        let path = self.open_file(conn, h)?.path.clone();
        let want = match op {
            LockOp::Unlock => Held::None,
            LockOp::Shared => Held::Shared,
            LockOp::Exclusive => Held::Exclusive,
        };
        let conflict = want != Held::None
            && self.handles.iter().any(|(id, o)| {
                *id != h.0
                    && o.path == path
                    && (o.held == Held::Exclusive
                        || (want == Held::Exclusive && o.held == Held::Shared))
            });
        if conflict {
            return Err(AfcStatus::OP_WOULD_BLOCK);
        }
        self.open_file(conn, h)?.held = want;
        Ok(())
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}{name}", child_prefix(dir))
}

/// Closes a connection's files however its handler ends.
struct AfcConnGuard<'a> {
    fs: &'a SimAfcFs,
    conn: u64,
}

impl Drop for AfcConnGuard<'_> {
    fn drop(&mut self) {
        self.fs.disconnect(self.conn);
    }
}

/// AFC over `fs`: every reply echoes the request's packet number (libimobiledevice refuses a
/// mismatch; pymobiledevice3 routes by it). A request with bad arguments gets INVALID_ARG, an
/// unknown operation UNKNOWN_PACKET_TYPE/OP_NOT_SUPPORTED; a packet with impossible lengths gets
/// OP_HEADER_INVALID and the connection is closed, since the stream can no longer be followed.
pub fn afc_handler(fs: Arc<SimAfcFs>) -> ServiceHandler {
    Arc::new(move |stream| serve_afc(&fs, stream))
}

/// Highest operation code real AFC defines; unknown codes above it are not AFC at all.
const LAST_KNOWN_AFC_OP: u64 = 0x1F;

fn serve_afc(fs: &SimAfcFs, mut stream: BoxStream) {
    let guard = AfcConnGuard {
        fs,
        conn: fs.connect(),
    };
    loop {
        let p = match read_packet(&mut stream, MAX_SIM_AFC_PACKET_LEN) {
            Ok(p) => p,
            Err(AfcReadError::Eof) => return,
            Err(AfcReadError::Malformed { packet_num, error }) => {
                tracing::warn!(%error, "afc: malformed packet; closing");
                if let Some(n) = packet_num {
                    let reply = AfcReply::Status(AfcStatus::OP_HEADER_INVALID).to_packet(n);
                    let _ = write_packet(&mut stream, &reply);
                }
                let _ = stream.shutdown();
                return;
            }
            Err(AfcReadError::Io(e)) => {
                tracing::debug!(error = %e, "afc: connection ended");
                return;
            }
        };
        let reply = match AfcRequest::from_packet(&p) {
            Ok(req) => fs.handle(guard.conn, req),
            Err(AfcCodecError::UnknownOperation(o)) => {
                tracing::debug!(op = o, "afc: unsupported operation");
                AfcReply::Status(if o <= LAST_KNOWN_AFC_OP {
                    AfcStatus::OP_NOT_SUPPORTED
                } else {
                    AfcStatus::UNKNOWN_PACKET_TYPE
                })
            }
            Err(e) => {
                tracing::debug!(error = %e, "afc: bad request");
                AfcReply::Status(AfcStatus::INVALID_ARG)
            }
        };
        if let Err(e) = write_packet(&mut stream, &reply.to_packet(p.packet_num)) {
            tracing::debug!(error = %e, "afc: reply failed; closing");
            return;
        }
    }
}

// ------------------------------------------------------------------------------------------
// installation_proxy and springboardservices
// ------------------------------------------------------------------------------------------

/// Largest request accepted by the simulated installation_proxy and springboardservices.
pub const MAX_SIM_PLIST_REQUEST_LEN: u32 = 1024 * 1024;
/// Apps per BrowsingApplications reply by default (all of a small phone in one, as measured).
pub const DEFAULT_BROWSE_BATCH: usize = 100;

/// A user app as installation_proxy describes it. With `from_store`, it also has the
/// `ApplicationSINF` and `iTunesMetadata` that make hosts record it in Info.plist and fetch
/// its icon.
pub fn sim_app(bundle_id: &str, display_name: &str, from_store: bool) -> plist::Dictionary {
    let mut d = plist::Dictionary::new();
    d.insert("CFBundleIdentifier".into(), bundle_id.into());
    d.insert("CFBundleDisplayName".into(), display_name.into());
    d.insert("ApplicationType".into(), "User".into());
    d.insert("CFBundleVersion".into(), "1.0".into());
    if from_store {
        // Opaque to hosts: they copy both blobs into Info.plist unchanged.
        let sinf = format!("sinf:{bundle_id}").into_bytes();
        d.insert("ApplicationSINF".into(), plist::Value::Data(sinf));
        let mut meta = plist::Dictionary::new();
        meta.insert("softwareVersionBundleId".into(), bundle_id.into());
        meta.insert("itemName".into(), display_name.into());
        let mut bytes = Vec::new();
        if plist::Value::Dictionary(meta)
            .to_writer_binary(&mut bytes)
            .is_ok()
        {
            d.insert("iTunesMetadata".into(), plist::Value::Data(bytes));
        }
    }
    d
}

/// installation_proxy: Browse → BrowsingApplications replies of up to [`DEFAULT_BROWSE_BATCH`]
/// apps (at least one reply, possibly empty), then Complete; Lookup → one `LookupResult`. Apps
/// are filtered by `ClientOptions.ApplicationType` and `BundleIDs` and trimmed to
/// `ReturnAttributes`.
pub fn installation_proxy_handler(apps: Arc<Vec<plist::Dictionary>>) -> ServiceHandler {
    installation_proxy_handler_batched(apps, DEFAULT_BROWSE_BATCH)
}

/// [`installation_proxy_handler`] with `batch` apps per reply.
pub fn installation_proxy_handler_batched(
    apps: Arc<Vec<plist::Dictionary>>,
    batch: usize,
) -> ServiceHandler {
    let batch = batch.max(1);
    Arc::new(move |stream| {
        serve_plist_service("installation_proxy", stream, |req| {
            browse(&apps, batch, req)
        })
    })
}

/// Serves `u32be + plist` requests until EOF; `answer` gives the replies for one request.
fn serve_plist_service(
    what: &str,
    mut stream: BoxStream,
    mut answer: impl FnMut(&plist::Value) -> Vec<plist::Value>,
) {
    loop {
        let req = match read_frame_max(&mut stream, MAX_SIM_PLIST_REQUEST_LEN) {
            Ok(v) => v,
            Err(FrameError::Eof) => return,
            Err(e) => {
                tracing::warn!(service = what, error = %e, "bad request; closing");
                return;
            }
        };
        for reply in answer(&req) {
            if let Err(e) = write_frame(&mut stream, &reply, PlistFormat::Xml) {
                tracing::debug!(service = what, error = %e, "reply failed; closing");
                return;
            }
        }
    }
}

fn error_reply(error: &str, description: &str) -> plist::Value {
    let mut d = plist::Dictionary::new();
    d.insert("Error".into(), error.into());
    d.insert("ErrorDescription".into(), description.into());
    d.into()
}

/// The apps a Browse or Lookup selects (`ApplicationType`, `BundleIDs`), trimmed to
/// `ReturnAttributes`.
fn select_apps(apps: &[plist::Dictionary], req: &plist::Value) -> Vec<plist::Dictionary> {
    let opts = req
        .as_dictionary()
        .and_then(|d| d.get("ClientOptions"))
        .and_then(|o| o.as_dictionary());
    let opt_strings = |key: &str| -> Option<Vec<&str>> {
        opts.and_then(|o| o.get(key))
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_string()).collect())
    };
    let kind = opts
        .and_then(|o| o.get("ApplicationType"))
        .and_then(|t| t.as_string())
        .unwrap_or("Any");
    let attrs = opt_strings("ReturnAttributes");
    let ids = opt_strings("BundleIDs");
    apps.iter()
        .filter(|a| {
            let t = a
                .get("ApplicationType")
                .and_then(|t| t.as_string())
                .unwrap_or("User");
            kind == "Any" || t == kind
        })
        .filter(|a| {
            let id = a.get("CFBundleIdentifier").and_then(|i| i.as_string());
            ids.as_ref()
                .is_none_or(|ids| id.is_some_and(|id| ids.contains(&id)))
        })
        .map(|a| {
            let mut out = a.clone();
            if let Some(attrs) = &attrs {
                out.retain(|k, _| attrs.contains(&k.as_str()));
            }
            out
        })
        .collect()
}

/// Browse → batches then Complete; Lookup → `{LookupResult:{bundle id: app}, Status:Complete}`
/// (what `pymobiledevice3 apps list` uses).
fn browse(apps: &[plist::Dictionary], batch: usize, req: &plist::Value) -> Vec<plist::Value> {
    match dict_str(req, "Command") {
        Some("Browse") => {}
        Some("Lookup") => {
            let mut result = plist::Dictionary::new();
            for a in apps {
                let Some(id) = a.get("CFBundleIdentifier").and_then(|i| i.as_string()) else {
                    continue;
                };
                if let Some(sel) = select_apps(std::slice::from_ref(a), req).pop() {
                    result.insert(id.to_string(), sel.into());
                }
            }
            let mut d = plist::Dictionary::new();
            d.insert("LookupResult".into(), result.into());
            d.insert("Status".into(), "Complete".into());
            return vec![d.into()];
        }
        _ => {
            return vec![error_reply(
                "UnknownCommand",
                "the simulator answers Browse and Lookup",
            )]
        }
    }
    let selected: Vec<plist::Value> = select_apps(apps, req)
        .into_iter()
        .map(plist::Value::Dictionary)
        .collect();
    let total = selected.len() as u64;
    let mut replies = Vec::new();
    let mut index = 0u64;
    let mut chunks: Vec<&[plist::Value]> = selected.chunks(batch).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    for chunk in chunks {
        let mut d = plist::Dictionary::new();
        d.insert("Status".into(), "BrowsingApplications".into());
        d.insert("CurrentIndex".into(), index.into());
        d.insert("CurrentAmount".into(), (chunk.len() as u64).into());
        d.insert("Total".into(), total.into());
        d.insert("CurrentList".into(), plist::Value::Array(chunk.to_vec()));
        replies.push(d.into());
        index += chunk.len() as u64;
    }
    let mut done = plist::Dictionary::new();
    done.insert("Status".into(), "Complete".into());
    replies.push(done.into());
    replies
}

/// A small valid PNG (a 16×16 solid square) served as every app's icon.
pub fn sim_icon_png() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| {
        let (w, h) = (16u32, 16u32);
        let pixels: Vec<u8> = (0..w * h).flat_map(|_| [0x2a, 0x7f, 0xd4]).collect();
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let res = enc
            .write_header()
            .and_then(|mut wr| wr.write_image_data(&pixels).and_then(|()| wr.finish()));
        if let Err(e) = res {
            tracing::error!(error = %e, "encoding the simulated icon failed");
            out.clear();
        }
        out
    })
}

/// springboardservices: getIconPNGData → `{pngData: <PNG>}` for any bundle id; other commands
/// get an `Error`.
pub fn springboard_handler() -> ServiceHandler {
    Arc::new(|stream| {
        serve_plist_service("springboardservices", stream, |req| {
            let reply = if dict_str(req, "command") == Some("getIconPNGData") {
                let mut d = plist::Dictionary::new();
                d.insert(
                    "pngData".into(),
                    plist::Value::Data(sim_icon_png().to_vec()),
                );
                d.into()
            } else {
                error_reply(
                    "UnknownCommand",
                    "the simulator only answers getIconPNGData",
                )
            };
            vec![reply]
        })
    })
}

// ------------------------------------------------------------------------------------------
// Wiring
// ------------------------------------------------------------------------------------------

/// The shared state behind the four side services of one simulated device.
#[derive(Clone)]
pub struct SideServices {
    pub notifications: Arc<NotificationHub>,
    pub afc: Arc<SimAfcFs>,
    pub apps: Arc<Vec<plist::Dictionary>>,
}

impl SideServices {
    /// Fresh services: an empty hub, an empty media partition, and `apps` for Browse.
    pub fn new(apps: Vec<plist::Dictionary>) -> Self {
        Self {
            notifications: Arc::new(NotificationHub::new()),
            afc: Arc::new(SimAfcFs::new()),
            apps: Arc::new(apps),
        }
    }

    /// The four services under their lockdown names, each with its handler. All are started
    /// without TLS (`EnableServiceSSL:false`), which both real hosts accept.
    pub fn handlers(&self) -> [(&'static str, ServiceHandler); 4] {
        [
            (
                NOTIFICATION_PROXY_SERVICE,
                notification_proxy_handler(self.notifications.clone()),
            ),
            (AFC_SERVICE, afc_handler(self.afc.clone())),
            (
                INSTALLATION_PROXY_SERVICE,
                installation_proxy_handler(self.apps.clone()),
            ),
            (SPRINGBOARD_SERVICE, springboard_handler()),
        ]
    }
}

/// Registers notification_proxy, AFC, installation_proxy and springboardservices on `dev` under
/// their real names, without TLS (measured to work with both real hosts). `side` stays with the
/// caller, so that tests and the backup agent can post notifications and seed or inspect files.
pub fn register_side_services(dev: &SimDevice, side: &SideServices) {
    for (name, handler) in side.handlers() {
        dev.register_service(name, false, handler);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_never_climbs_above_root() {
        assert_eq!(normalize("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(normalize("a//b/./c/.."), "/a/b");
        assert_eq!(normalize(""), "/");
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/"), None);
    }

    #[test]
    fn fs_starts_empty_and_stats_missing_as_not_found() {
        let fs = SimAfcFs::new();
        let r = fs.handle(
            1,
            AfcRequest::GetFileInfo {
                path: "/Books/iBooksData2.plist".into(),
            },
        );
        assert_eq!(r, AfcReply::Status(AfcStatus::OBJECT_NOT_FOUND));
        let r = fs.handle(1, AfcRequest::GetFileInfo { path: "/".into() });
        assert!(matches!(r, AfcReply::Data(_)));
    }

    #[test]
    fn open_modes_follow_fopen() {
        let fs = SimAfcFs::new();
        let r = fs.handle(
            1,
            AfcRequest::FileOpen {
                mode: OpenMode::ReadOnly,
                path: "/x".into(),
            },
        );
        assert_eq!(r, AfcReply::Status(AfcStatus::OBJECT_NOT_FOUND));
        let r = fs.handle(
            1,
            AfcRequest::FileOpen {
                mode: OpenMode::ReadWrite,
                path: "/no/dir/x".into(),
            },
        );
        assert_eq!(r, AfcReply::Status(AfcStatus::OBJECT_NOT_FOUND));
        let AfcReply::FileOpened(h) = fs.handle(
            1,
            AfcRequest::FileOpen {
                mode: OpenMode::ReadWrite,
                path: "/x".into(),
            },
        ) else {
            panic!("open failed")
        };
        assert_ne!(h.0, 0);
        assert!(fs.exists("/x"));
        assert_eq!(
            fs.handle(
                1,
                AfcRequest::Write {
                    handle: h,
                    data: b"hello".to_vec()
                }
            ),
            ok()
        );
        // Another connection cannot use the handle.
        assert_eq!(
            fs.handle(2, AfcRequest::Close { handle: h }),
            AfcReply::Status(AfcStatus::INVALID_ARG)
        );
        assert_eq!(fs.handle(1, AfcRequest::Close { handle: h }), ok());
        assert_eq!(fs.file("/x").as_deref(), Some(&b"hello"[..]));
        // w truncates, a appends.
        let AfcReply::FileOpened(h) = fs.handle(
            1,
            AfcRequest::FileOpen {
                mode: OpenMode::Append,
                path: "/x".into(),
            },
        ) else {
            panic!()
        };
        fs.handle(
            1,
            AfcRequest::Write {
                handle: h,
                data: b"!".to_vec(),
            },
        );
        assert_eq!(fs.file("/x").as_deref(), Some(&b"hello!"[..]));
        let AfcReply::FileOpened(h2) = fs.handle(
            1,
            AfcRequest::FileOpen {
                mode: OpenMode::WriteOnly,
                path: "/x".into(),
            },
        ) else {
            panic!()
        };
        assert_ne!(h, h2);
        assert_eq!(fs.file("/x").as_deref(), Some(&b""[..]));
        assert_eq!(
            fs.handle(
                1,
                AfcRequest::Read {
                    handle: h2,
                    len: 10
                }
            ),
            AfcReply::Status(AfcStatus::PERM_DENIED)
        );
    }

    #[test]
    fn exclusive_lock_conflicts_across_handles_and_is_released_on_disconnect() {
        let fs = SimAfcFs::new();
        let open = |conn| match fs.handle(
            conn,
            AfcRequest::FileOpen {
                mode: OpenMode::ReadWrite,
                path: "/lock".into(),
            },
        ) {
            AfcReply::FileOpened(h) => h,
            other => panic!("{other:?}"),
        };
        let (a, b) = (open(1), open(2));
        let lock = |conn, h, op| fs.handle(conn, AfcRequest::Lock { handle: h, op });
        assert_eq!(lock(1, a, LockOp::Exclusive), ok());
        assert_eq!(
            lock(2, b, LockOp::Exclusive),
            AfcReply::Status(AfcStatus::OP_WOULD_BLOCK)
        );
        assert_eq!(
            lock(2, b, LockOp::Shared),
            AfcReply::Status(AfcStatus::OP_WOULD_BLOCK)
        );
        assert!(fs.is_locked("/lock"));
        fs.disconnect(1);
        assert_eq!(lock(2, b, LockOp::Exclusive), ok());
        assert_eq!(lock(2, b, LockOp::Unlock), ok());
        assert!(!fs.is_locked("/lock"));
    }

    #[test]
    fn mkdir_remove_and_list() {
        let fs = SimAfcFs::new();
        assert_eq!(
            fs.handle(
                1,
                AfcRequest::MakeDir {
                    path: "/a/b/c".into()
                }
            ),
            ok()
        );
        fs.put_file("/a/f", b"x").unwrap();
        assert_eq!(
            fs.handle(1, AfcRequest::RemovePath { path: "/a".into() }),
            AfcReply::Status(AfcStatus::DIR_NOT_EMPTY)
        );
        let AfcReply::Data(d) = fs.handle(1, AfcRequest::ReadDirectory { path: "/a".into() })
        else {
            panic!()
        };
        assert_eq!(d, b".\0..\0b\0f\0");
        assert_eq!(
            fs.handle(
                1,
                AfcRequest::RemovePath {
                    path: "/a/b/c".into()
                }
            ),
            ok()
        );
        assert_eq!(
            fs.handle(
                1,
                AfcRequest::RemovePath {
                    path: "/a/b/c".into()
                }
            ),
            AfcReply::Status(AfcStatus::OBJECT_NOT_FOUND)
        );
        assert_eq!(
            fs.handle(
                1,
                AfcRequest::MakeDir {
                    path: "/a/f".into()
                }
            ),
            AfcReply::Status(AfcStatus::OBJECT_EXISTS)
        );
    }

    #[test]
    fn browse_filters_and_batches() {
        let apps: Vec<_> = (0..5)
            .map(|i| sim_app(&format!("com.example.app{i}"), "App", i % 2 == 0))
            .collect();
        let mut req = plist::Dictionary::new();
        req.insert("Command".into(), "Browse".into());
        let mut opts = plist::Dictionary::new();
        opts.insert("ApplicationType".into(), "User".into());
        opts.insert(
            "ReturnAttributes".into(),
            plist::Value::Array(vec!["CFBundleIdentifier".into()]),
        );
        req.insert("ClientOptions".into(), opts.into());
        let replies = browse(&apps, 2, &req.into());
        assert_eq!(replies.len(), 4);
        assert_eq!(dict_str(&replies[3], "Status"), Some("Complete"));
        let first = replies[0].as_dictionary().unwrap();
        let list = first["CurrentList"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].as_dictionary().unwrap().len(), 1);
        // Lookup, restricted to bundle ids.
        let mut req = plist::Dictionary::new();
        req.insert("Command".into(), "Lookup".into());
        let mut opts = plist::Dictionary::new();
        opts.insert(
            "BundleIDs".into(),
            plist::Value::Array(vec!["com.example.app1".into(), "com.example.app3".into()]),
        );
        req.insert("ClientOptions".into(), opts.into());
        let replies = browse(&apps, 2, &req.into());
        assert_eq!(replies.len(), 1);
        let result = replies[0].as_dictionary().unwrap()["LookupResult"]
            .as_dictionary()
            .unwrap();
        assert_eq!(
            result.keys().collect::<Vec<_>>(),
            ["com.example.app1", "com.example.app3"]
        );
        // No apps: one empty batch, then Complete.
        let mut req = plist::Dictionary::new();
        req.insert("Command".into(), "Browse".into());
        assert_eq!(browse(&[], 2, &req.into()).len(), 2);
    }

    #[test]
    fn icon_is_a_png() {
        let png = sim_icon_png();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let reader = dec.read_info().unwrap();
        assert_eq!(reader.info().width, 16);
    }
}
