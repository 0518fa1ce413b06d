//! A usbmuxd-compatible server: the facade through which unmodified clients (libimobiledevice,
//! pymobiledevice3) reach simulated devices. One thread per client connection, blocking I/O.

use super::{
    decode_plist, encode_message, encode_plist, message, port_from_wire, read_message, result,
    result_plist, FrameError, Socket, DEVICE_RECORD_LEN, MAX_MESSAGE_LEN, VERSION_BINARY,
    VERSION_PLIST,
};
use crate::sim::device::DevicePorts;
use crate::transport::{BoxStream, Duplex};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// USB speed reported for every served device (high speed).
const CONNECTION_SPEED: u64 = 480_000_000;

/// How long an event write to a Listen client may block before that listener is dropped.
const LISTENER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most client connections served at once (request sockets and Listen sockets; sockets handed
/// to a device after Connect no longer count). Further clients are closed at once.
pub const MAX_CLIENTS: usize = 256;

/// A request socket idle this long between requests is closed.
const REQUEST_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest UDID accepted as a pair-record key (real ones are 25 or 40 characters).
const MAX_UDID_LEN: usize = 64;

/// File (in the pair-record directory) that keeps the server's BUID, as usbmuxd does.
const SYSTEM_CONFIG_FILE: &str = "SystemConfiguration.plist";

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (port 0 picks a free port).
    Tcp(SocketAddr),
    /// A UNIX socket path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    /// Parses a `--listen` value: `HOST:PORT` (e.g. `127.0.0.1:27015`) or `unix:PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("UNIX:")) {
            if p.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(p)));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s:?} is neither IP:PORT (e.g. 127.0.0.1:27015) nor unix:PATH"))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A device the server offers.
#[derive(Clone)]
pub struct ServedDevice {
    /// The UDID clients see as `SerialNumber`.
    pub udid: String,
    /// USB product id (0x1290..=0x12AF for iPhones).
    pub product_id: u16,
    /// Where connections to the device's ports go.
    pub ports: Arc<dyn DevicePorts>,
}

impl std::fmt::Debug for ServedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedDevice")
            .field("udid", &self.udid)
            .field("product_id", &format_args!("{:#06x}", self.product_id))
            .finish_non_exhaustive()
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum MuxdServerError {
    /// The listening socket could not be created.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    /// The pair-record directory could not be prepared or read.
    #[error("pair-record directory {path}: {source}")]
    PairDir { path: PathBuf, source: io::Error },
}

struct AttachedDevice {
    id: u32,
    location: u32,
    dev: ServedDevice,
}

struct Listener {
    sock: Socket,
    binary: bool,
}

struct State {
    devices: Vec<AttachedDevice>,
    next_id: u32,
    listeners: Vec<Listener>,
    /// Pair records when no directory is configured.
    records: HashMap<String, Vec<u8>>,
}

struct Shared {
    state: Mutex<State>,
    buid: String,
    pair_dir: Option<PathBuf>,
    stop: AtomicBool,
    clients: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum BoundListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A running usbmuxd facade. Dropping it stops accepting new clients.
pub struct MuxdServer {
    shared: Arc<Shared>,
    addr: ListenAddr,
    accept: Option<JoinHandle<()>>,
}

/// A handle to change what a running server offers.
#[derive(Clone)]
pub struct MuxdServerHandle {
    shared: Arc<Shared>,
}

impl MuxdServer {
    /// Starts serving `devices` on `listen`. Pair records are kept in `pair_record_dir`
    /// (`<UDID>.plist`, like usbmuxd's `/var/lib/lockdown`) or in memory when `None`.
    pub fn bind(
        listen: &ListenAddr,
        devices: Vec<ServedDevice>,
        pair_record_dir: Option<PathBuf>,
    ) -> Result<MuxdServer, MuxdServerError> {
        let buid = match &pair_record_dir {
            Some(dir) => load_or_create_buid(dir)?,
            None => new_buid(),
        };
        let bind_err = |source| MuxdServerError::Bind {
            addr: listen.to_string(),
            source,
        };
        let (listener, addr) = match listen {
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                (BoundListener::Tcp(l), ListenAddr::Tcp(local))
            }
            ListenAddr::Unix(p) => {
                // A stale socket file from an earlier run would make bind fail.
                if std::fs::symlink_metadata(p)
                    .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                    .unwrap_or(false)
                {
                    let _ = std::fs::remove_file(p);
                }
                let l = UnixListener::bind(p).map_err(bind_err)?;
                (BoundListener::Unix(l), ListenAddr::Unix(p.clone()))
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                devices: Vec::new(),
                next_id: 1,
                listeners: Vec::new(),
                records: HashMap::new(),
            }),
            buid,
            pair_dir: pair_record_dir,
            stop: AtomicBool::new(false),
            clients: std::sync::atomic::AtomicUsize::new(0),
        });
        let handle = MuxdServerHandle {
            shared: shared.clone(),
        };
        for d in devices {
            handle.attach(d);
        }
        let s2 = shared.clone();
        let accept = std::thread::Builder::new()
            .name("muxd-accept".into())
            .spawn(move || accept_loop(listener, s2))
            .map_err(bind_err)?;
        Ok(MuxdServer {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The value clients put in `USBMUXD_SOCKET_ADDRESS` to reach this server
    /// (`127.0.0.1:PORT`, or `UNIX:/path` which only libusbmuxd understands).
    pub fn client_address(&self) -> String {
        match &self.addr {
            ListenAddr::Tcp(a) => a.to_string(),
            ListenAddr::Unix(p) => format!("UNIX:{}", p.display()),
        }
    }

    /// A handle to attach and detach devices while the server runs.
    pub fn handle(&self) -> MuxdServerHandle {
        MuxdServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Stops accepting clients and closes event listeners. Connections already handed to a
    /// device keep running.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept() with a throw-away connection.
        match &self.addr {
            ListenAddr::Tcp(a) => {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                let _ = std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1));
            }
            ListenAddr::Unix(p) => {
                let _ = std::os::unix::net::UnixStream::connect(p);
            }
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let mut st = self.shared.lock();
        for l in st.listeners.drain(..) {
            let _ = l.sock.shutdown();
        }
        drop(st);
        if let ListenAddr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for MuxdServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl MuxdServerHandle {
    /// Offers a device; Listen clients get an `Attached` event. Returns its DeviceID.
    pub fn attach(&self, dev: ServedDevice) -> u32 {
        let mut st = self.shared.lock();
        let id = st.next_id;
        st.next_id = st.next_id.checked_add(1).unwrap_or(1);
        let location = 0x0010_0000 | id;
        let props = device_properties(id, location, &dev);
        let bin = binary_device_add(id, location, &dev);
        st.devices.push(AttachedDevice { id, location, dev });
        broadcast(&mut st, &attached_event(id, props), &bin);
        id
    }

    /// Withdraws the device `udid`; Listen clients get a `Detached` event. Open connections to
    /// it are not closed. Returns whether it was attached.
    pub fn detach(&self, udid: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(pos) = st.devices.iter().position(|d| d.dev.udid == udid) else {
            return false;
        };
        let id = st.devices.remove(pos).id;
        let mut d = plist::Dictionary::new();
        d.insert("MessageType".into(), "Detached".into());
        d.insert(
            "DeviceID".into(),
            plist::Value::Integer(u64::from(id).into()),
        );
        let bin = encode_message(VERSION_BINARY, message::DEVICE_REMOVE, 0, &id.to_le_bytes());
        broadcast(&mut st, &plist::Value::Dictionary(d), &bin);
        true
    }

    /// The DeviceIDs and UDIDs currently offered.
    pub fn devices(&self) -> Vec<(u32, String)> {
        let st = self.shared.lock();
        st.devices
            .iter()
            .map(|d| (d.id, d.dev.udid.clone()))
            .collect()
    }

    /// The server's BUID (what ReadBUID answers).
    pub fn buid(&self) -> &str {
        &self.shared.buid
    }

    /// The stored pair record of `udid`, if any.
    pub fn pair_record(&self, udid: &str) -> Option<Vec<u8>> {
        read_record(&self.shared, udid).ok().flatten()
    }
}

fn new_buid() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

fn load_or_create_buid(dir: &Path) -> Result<String, MuxdServerError> {
    let err = |source| MuxdServerError::PairDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let path = dir.join(SYSTEM_CONFIG_FILE);
    if let Ok(v) = plist::Value::from_file(&path) {
        if let Some(b) = v
            .as_dictionary()
            .and_then(|d| d.get("SystemBUID"))
            .and_then(|b| b.as_string())
        {
            return Ok(b.to_string());
        }
    }
    let buid = new_buid();
    let mut d = plist::Dictionary::new();
    d.insert("SystemBUID".into(), buid.clone().into());
    let mut bytes = Vec::new();
    let _ = plist::Value::Dictionary(d).to_writer_xml(&mut bytes);
    write_atomically(&path, &bytes).map_err(|source| MuxdServerError::PairDir {
        path: path.clone(),
        source,
    })?;
    Ok(buid)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// A UDID is used as a file name: only letters, digits and '-' (both real forms), bounded.
fn valid_udid(udid: &str) -> bool {
    !udid.is_empty()
        && udid.len() <= MAX_UDID_LEN
        && udid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn record_path(dir: &Path, udid: &str) -> PathBuf {
    dir.join(format!("{udid}.plist"))
}

fn read_record(shared: &Shared, udid: &str) -> io::Result<Option<Vec<u8>>> {
    match &shared.pair_dir {
        Some(dir) => match std::fs::read(record_path(dir, udid)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
        None => Ok(shared.lock().records.get(udid).cloned()),
    }
}

fn device_properties(id: u32, location: u32, dev: &ServedDevice) -> plist::Dictionary {
    let int = |v: u64| plist::Value::Integer(v.into());
    let mut p = plist::Dictionary::new();
    p.insert("ConnectionSpeed".into(), int(CONNECTION_SPEED));
    p.insert("ConnectionType".into(), "USB".into());
    p.insert("DeviceID".into(), int(id.into()));
    p.insert("LocationID".into(), int(location.into()));
    p.insert("ProductID".into(), int(dev.product_id.into()));
    p.insert("SerialNumber".into(), dev.udid.clone().into());
    p.insert("UDID".into(), dev.udid.clone().into());
    p.insert("USBSerialNumber".into(), dev.udid.replace('-', "").into());
    p
}

fn attached_event(id: u32, props: plist::Dictionary) -> plist::Value {
    let mut d = plist::Dictionary::new();
    d.insert(
        "DeviceID".into(),
        plist::Value::Integer(u64::from(id).into()),
    );
    d.insert("MessageType".into(), "Attached".into());
    d.insert("Properties".into(), plist::Value::Dictionary(props));
    plist::Value::Dictionary(d)
}

fn binary_device_add(id: u32, location: u32, dev: &ServedDevice) -> Vec<u8> {
    let mut body = Vec::with_capacity(DEVICE_RECORD_LEN);
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(&dev.product_id.to_le_bytes());
    let mut serial = [0u8; 256];
    let s = dev.udid.as_bytes();
    let n = s.len().min(255);
    serial[..n].copy_from_slice(&s[..n]);
    body.extend_from_slice(&serial);
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&location.to_le_bytes());
    encode_message(VERSION_BINARY, message::DEVICE_ADD, 0, &body)
}

/// Sends an event to every Listen client, dropping those that fail.
fn broadcast(st: &mut State, plist_event: &plist::Value, binary_event: &[u8]) {
    let xml = encode_plist(0, plist_event);
    st.listeners.retain_mut(|l| {
        let bytes = if l.binary { binary_event } else { &xml[..] };
        l.sock.write_all(bytes).is_ok()
    });
}

fn accept_loop(listener: BoundListener, shared: Arc<Shared>) {
    loop {
        let sock = match &listener {
            BoundListener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Socket::Tcp(s)
            }),
            BoundListener::Unix(l) => l.accept().map(|(s, _)| Socket::Unix(s)),
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match sock {
            Ok(sock) => {
                if shared.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    shared.clients.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!("usbmuxd facade: {MAX_CLIENTS} clients already; closing one");
                    continue;
                }
                let s2 = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("muxd-client".into())
                    .spawn(move || {
                        serve_client(sock, &s2);
                        s2.clients.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    shared.clients.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!("usbmuxd facade: cannot start a client thread: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("usbmuxd facade: accept failed: {e}");
                // Avoid spinning when the process is out of file descriptors.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// What a handled request leaves the connection as.
enum Next {
    /// Keep reading requests.
    More,
    /// The socket was handed to a device or registered as a listener; stop reading it here.
    HandedOver,
    /// Close the socket.
    Close,
}

fn serve_client(mut sock: Socket, shared: &Arc<Shared>) {
    let _ = sock.set_read_timeout(Some(REQUEST_IDLE_TIMEOUT));
    loop {
        let (header, body) = match read_message(&mut sock, MAX_MESSAGE_LEN) {
            Ok(m) => m,
            Err(FrameError::Eof) => return,
            Err(e) => {
                tracing::debug!("usbmuxd facade: dropping a client: {e}");
                return;
            }
        };
        let next = match header.version {
            VERSION_PLIST if header.message == message::PLIST => {
                handle_plist(&mut sock, shared, header.tag, &body)
            }
            VERSION_PLIST => reply_plist(&mut sock, header.tag, &result_plist(result::BADCOMMAND)),
            VERSION_BINARY => handle_binary(&mut sock, shared, header.message, header.tag, &body),
            _ => reply_binary(&mut sock, header.tag, result::BADVERSION),
        };
        match next {
            Next::More => {}
            Next::HandedOver | Next::Close => return,
        }
    }
}

fn reply_plist(sock: &mut Socket, tag: u32, v: &plist::Value) -> Next {
    match sock.write_all(&encode_plist(tag, v)) {
        Ok(()) => Next::More,
        Err(_) => Next::Close,
    }
}

fn reply_binary(sock: &mut Socket, tag: u32, code: u64) -> Next {
    let msg = encode_message(
        VERSION_BINARY,
        message::RESULT,
        tag,
        &(code as u32).to_le_bytes(),
    );
    match sock.write_all(&msg) {
        Ok(()) => Next::More,
        Err(_) => Next::Close,
    }
}

fn handle_plist(sock: &mut Socket, shared: &Arc<Shared>, tag: u32, body: &[u8]) -> Next {
    let Some(req) = decode_plist(body) else {
        return reply_plist(sock, tag, &result_plist(result::BADCOMMAND));
    };
    let kind = req
        .get("MessageType")
        .and_then(|v| v.as_string())
        .unwrap_or("");
    let record_id = || {
        req.get("PairRecordID")
            .and_then(|v| v.as_string())
            .filter(|u| valid_udid(u))
            .map(str::to_string)
    };
    match kind {
        "ListDevices" => {
            let st = shared.lock();
            let list = st
                .devices
                .iter()
                .map(|d| attached_event(d.id, device_properties(d.id, d.location, &d.dev)))
                .collect();
            drop(st);
            let mut d = plist::Dictionary::new();
            d.insert("DeviceList".into(), plist::Value::Array(list));
            reply_plist(sock, tag, &plist::Value::Dictionary(d))
        }
        "ReadBUID" => {
            let mut d = plist::Dictionary::new();
            d.insert("BUID".into(), shared.buid.clone().into());
            reply_plist(sock, tag, &plist::Value::Dictionary(d))
        }
        "Listen" => start_listening(sock, shared, tag, false),
        "Connect" => {
            let id = req.get("DeviceID").and_then(|v| v.as_unsigned_integer());
            let port = req
                .get("PortNumber")
                .and_then(|v| v.as_unsigned_integer())
                .and_then(|v| u16::try_from(v).ok());
            match (id, port) {
                (Some(id), Some(port)) => {
                    connect(sock, shared, tag, id, port_from_wire(port), false)
                }
                _ => reply_plist(sock, tag, &result_plist(result::BADCOMMAND)),
            }
        }
        "ReadPairRecord" => {
            let Some(udid) = record_id() else {
                return reply_plist(sock, tag, &result_plist(result::EINVAL));
            };
            match read_record(shared, &udid) {
                Ok(Some(data)) => {
                    let mut d = plist::Dictionary::new();
                    d.insert("PairRecordData".into(), plist::Value::Data(data));
                    reply_plist(sock, tag, &plist::Value::Dictionary(d))
                }
                Ok(None) => reply_plist(sock, tag, &result_plist(result::ENOENT)),
                Err(e) => {
                    tracing::warn!("usbmuxd facade: reading the pair record of {udid}: {e}");
                    reply_plist(sock, tag, &result_plist(result::EINVAL))
                }
            }
        }
        "SavePairRecord" => {
            let data = req.get("PairRecordData").and_then(|v| v.as_data());
            let (Some(udid), Some(data)) = (record_id(), data) else {
                return reply_plist(sock, tag, &result_plist(result::EINVAL));
            };
            let saved = match &shared.pair_dir {
                Some(dir) => write_atomically(&record_path(dir, &udid), data),
                None => {
                    shared.lock().records.insert(udid.clone(), data.to_vec());
                    Ok(())
                }
            };
            if let Err(e) = saved {
                tracing::warn!("usbmuxd facade: saving the pair record of {udid}: {e}");
                return reply_plist(sock, tag, &result_plist(result::EINVAL));
            }
            let device_id = req
                .get("DeviceID")
                .and_then(|v| v.as_unsigned_integer())
                .and_then(|v| u32::try_from(v).ok());
            if let Some(id) = device_id {
                let mut st = shared.lock();
                if st.devices.iter().any(|d| d.id == id) {
                    let mut d = plist::Dictionary::new();
                    d.insert("MessageType".into(), "Paired".into());
                    d.insert(
                        "DeviceID".into(),
                        plist::Value::Integer(u64::from(id).into()),
                    );
                    let bin = encode_message(
                        VERSION_BINARY,
                        message::DEVICE_PAIRED,
                        0,
                        &id.to_le_bytes(),
                    );
                    broadcast(&mut st, &plist::Value::Dictionary(d), &bin);
                }
            }
            reply_plist(sock, tag, &result_plist(result::OK))
        }
        "DeletePairRecord" => {
            let Some(udid) = record_id() else {
                return reply_plist(sock, tag, &result_plist(result::EINVAL));
            };
            let existed = match &shared.pair_dir {
                Some(dir) => std::fs::remove_file(record_path(dir, &udid)).is_ok(),
                None => shared.lock().records.remove(&udid).is_some(),
            };
            let code = if existed { result::OK } else { result::ENOENT };
            reply_plist(sock, tag, &result_plist(code))
        }
        _ => reply_plist(sock, tag, &result_plist(result::BADCOMMAND)),
    }
}

fn handle_binary(sock: &mut Socket, shared: &Arc<Shared>, msg: u32, tag: u32, body: &[u8]) -> Next {
    match msg {
        message::CONNECT => {
            let (Some(id), Some(port)) = (body.get(0..4), body.get(4..6)) else {
                return reply_binary(sock, tag, result::BADCOMMAND);
            };
            let id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
            // The binary body carries the port in network byte order.
            let port = u16::from_be_bytes([port[0], port[1]]);
            connect(sock, shared, tag, id.into(), port, true)
        }
        message::LISTEN => start_listening(sock, shared, tag, true),
        _ => reply_binary(sock, tag, result::BADCOMMAND),
    }
}

fn start_listening(sock: &mut Socket, shared: &Arc<Shared>, tag: u32, binary: bool) -> Next {
    let Ok(listener_sock) = sock.try_clone() else {
        return Next::Close;
    };
    let _ = listener_sock.set_write_timeout(Some(LISTENER_WRITE_TIMEOUT));
    // Hold the lock while replying and replaying the device list, so an attach or detach that
    // happens meanwhile is neither lost nor seen twice.
    let mut st = shared.lock();
    let ok = if binary {
        reply_binary(sock, tag, result::OK)
    } else {
        reply_plist(sock, tag, &result_plist(result::OK))
    };
    if !matches!(ok, Next::More) {
        return Next::Close;
    }
    let mut listener = Listener {
        sock: listener_sock,
        binary,
    };
    for d in &st.devices {
        let bytes = if binary {
            binary_device_add(d.id, d.location, &d.dev)
        } else {
            encode_plist(
                0,
                &attached_event(d.id, device_properties(d.id, d.location, &d.dev)),
            )
        };
        if listener.sock.write_all(&bytes).is_err() {
            return Next::Close;
        }
    }
    st.listeners.push(listener);
    drop(st);
    let _ = sock.set_read_timeout(None);
    // The client sends nothing more; a read returning means it hung up. Keep the thread parked
    // on the socket so the listener is dropped at the next failed event write.
    let mut scratch = [0u8; 64];
    loop {
        match sock.read(&mut scratch) {
            Ok(0) | Err(_) => return Next::Close,
            Ok(_) => {}
        }
    }
}

fn connect(
    sock: &mut Socket,
    shared: &Arc<Shared>,
    tag: u32,
    device_id: u64,
    port: u16,
    binary: bool,
) -> Next {
    let reply = |sock: &mut Socket, code: u64| {
        if binary {
            reply_binary(sock, tag, code)
        } else {
            reply_plist(sock, tag, &result_plist(code))
        }
    };
    let ports = {
        let st = shared.lock();
        st.devices
            .iter()
            .find(|d| u64::from(d.id) == device_id)
            .map(|d| d.dev.ports.clone())
    };
    let Some(ports) = ports else {
        return reply(sock, result::BADDEV);
    };
    let Ok(stream_sock) = sock.try_clone() else {
        return Next::Close;
    };
    // The request idle timeout must not leak into the device stream.
    if stream_sock.set_read_timeout(None).is_err() {
        return Next::Close;
    }
    // The service may start writing as soon as it has the stream, but the client must see
    // Result 0 first; the gate holds the service's writes until the reply is out.
    let gate = Arc::new(Gate::default());
    let stream = GatedSocket {
        sock: stream_sock,
        gate: gate.clone(),
    };
    match ports.accept(port, Box::new(stream)) {
        Ok(()) => {
            let res = reply(sock, result::OK);
            gate.open(matches!(res, Next::More));
            Next::HandedOver
        }
        Err(stream) => {
            drop(stream);
            reply(sock, result::CONNREFUSED);
            Next::Close
        }
    }
}

/// Holds writes until the Connect reply has been sent.
#[derive(Default)]
struct Gate {
    state: Mutex<Option<bool>>,
    cv: Condvar,
}

impl Gate {
    fn open(&self, ok: bool) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(ok);
        self.cv.notify_all();
    }

    fn wait(&self) -> io::Result<()> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match *g {
                Some(true) => return Ok(()),
                Some(false) => return Err(io::ErrorKind::BrokenPipe.into()),
                None => g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

/// The client socket after Connect: a raw pipe to the device port.
struct GatedSocket {
    sock: Socket,
    gate: Arc<Gate>,
}

impl Read for GatedSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }
}

impl Write for GatedSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.gate.wait()?;
        self.sock.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl Duplex for GatedSocket {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
    fn shutdown(&self) -> io::Result<()> {
        self.sock.shutdown()
    }
}

// Keeps the stream type handed to devices honest.
const _: fn(GatedSocket) -> BoxStream = |s| Box::new(s);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_parses_both_forms() {
        assert_eq!(
            "127.0.0.1:27015".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:27015".parse().unwrap())
        );
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn udids_that_could_escape_the_directory_are_rejected() {
        assert!(valid_udid("00008030-001A35E22E88802E"));
        assert!(valid_udid("f1c15f36c3461bf9b24d568084d17cfb2d4243c4"));
        for bad in ["", "../x", "a/b", "a.b", &"a".repeat(65)] {
            assert!(!valid_udid(bad), "{bad}");
        }
    }
}
