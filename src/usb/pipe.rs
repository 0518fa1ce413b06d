//! Bulk pipes that carry usbmux transfers: the nusb endpoints of a real iPhone, and an
//! in-memory pair (with injectable unplug) for tests, the simulator and the demo.
//!
//! A pipe is split into an IN half and an OUT half so one thread can block reading while
//! another writes. One call moves one USB transfer, i.e. one usbmux packet.

use super::descriptors::{
    choose_configuration, guess_mode, parse_get_mode_reply, set_mode_accepted, should_switch_mode,
    target_mode_from_env, udid_from_serial, Configuration, DescriptorError, DeviceDescriptor,
    MuxInterface, REQUEST_GET_MODE, REQUEST_SET_MODE,
};
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Errors moving transfers.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    /// The device was unplugged (or the other end of an in-memory pipe went away).
    #[error("the device was disconnected")]
    Disconnected,
    /// The transfer failed for another reason (stall, bus fault, OS error).
    #[error("USB transfer failed: {0}")]
    Transfer(String),
}

/// The receiving half: bulk IN.
pub trait BulkIn: Send {
    /// Waits up to `timeout` for the next transfer and puts its bytes in `buf` (replacing what
    /// was there). Returns `Ok(false)` when the time ran out with nothing received.
    fn read_transfer(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<bool, PipeError>;
}

/// The sending half: bulk OUT.
pub trait BulkOut: Send {
    /// Sends one transfer, followed by a zero-length packet when its length is a multiple of
    /// [`BulkOut::max_packet_size`], so the receiver sees where it ends.
    fn write_transfer(&mut self, data: &[u8]) -> Result<(), PipeError>;
    /// The OUT endpoint's wMaxPacketSize.
    fn max_packet_size(&self) -> usize;
}

/// A bidirectional bulk pipe, split into halves for the driver's reader and writer threads.
pub trait BulkPipe: Send {
    fn split(self: Box<Self>) -> (Box<dyn BulkIn>, Box<dyn BulkOut>);
}

/// Whether a transfer of `len` bytes must be followed by a zero-length packet (usbmuxd
/// `usb_send`: when the length is a multiple of wMaxPacketSize).
pub fn needs_zlp(len: usize, max_packet_size: usize) -> bool {
    max_packet_size > 0 && len.is_multiple_of(max_packet_size)
}

// ---- in-memory pipe ---------------------------------------------------------------------------

/// Transfers one direction of an in-memory pipe holds before writes block (backpressure).
pub const MEM_PIPE_DEPTH: usize = 16;
/// wMaxPacketSize the in-memory pipe reports (high-speed bulk).
pub const MEM_PIPE_MAX_PACKET: usize = 512;

struct Channel {
    queue: Mutex<VecDeque<Vec<u8>>>,
    cv: Condvar,
}

impl Channel {
    fn new() -> Arc<Channel> {
        Arc::new(Channel {
            queue: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
        })
    }
    fn lock(&self) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Link {
    disconnected: AtomicBool,
    /// Bytes that may still cross (both directions together) before the link drops.
    budget: Mutex<Option<u64>>,
    /// Transfers that were a multiple of the packet size (and so needed a ZLP).
    zlps: Mutex<u64>,
    chans: [Arc<Channel>; 2],
}

impl Link {
    fn unplug(&self) {
        self.disconnected.store(true, Ordering::SeqCst);
        for c in &self.chans {
            let _g = c.lock();
            c.cv.notify_all();
        }
    }
    fn is_down(&self) -> bool {
        self.disconnected.load(Ordering::SeqCst)
    }
}

/// One end of an in-memory bulk pipe.
pub struct MemPipe {
    rx: Arc<Channel>,
    tx: Arc<Channel>,
    link: Arc<Link>,
}

/// Fault injection and statistics for an in-memory pipe pair.
#[derive(Clone)]
pub struct MemPipeControl {
    link: Arc<Link>,
}

impl MemPipeControl {
    /// Pulls the cable: every pending and later read or write on both ends fails with
    /// [`PipeError::Disconnected`].
    pub fn unplug(&self) {
        self.link.unplug();
    }

    /// Drops the link once `bytes` more bytes have crossed it (both directions together): the
    /// transfer that would go past the limit is lost and both ends see `Disconnected`.
    pub fn disconnect_after(&self, bytes: u64) {
        *self.link.budget.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
    }

    pub fn is_unplugged(&self) -> bool {
        self.link.is_down()
    }

    /// How many transfers were a multiple of the packet size (a real pipe adds a ZLP to each).
    pub fn zlp_count(&self) -> u64 {
        *self.link.zlps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Two connected in-memory pipe ends (give one to the host driver, one to the device driver).
pub fn mem_pipe_pair() -> (MemPipe, MemPipe) {
    let a = Channel::new();
    let b = Channel::new();
    let link = Arc::new(Link {
        disconnected: AtomicBool::new(false),
        budget: Mutex::new(None),
        zlps: Mutex::new(0),
        chans: [a.clone(), b.clone()],
    });
    (
        MemPipe {
            rx: a.clone(),
            tx: b.clone(),
            link: link.clone(),
        },
        MemPipe { rx: b, tx: a, link },
    )
}

impl MemPipe {
    /// The fault-injection handle shared by both ends.
    pub fn control(&self) -> MemPipeControl {
        MemPipeControl {
            link: self.link.clone(),
        }
    }
}

struct MemIn {
    rx: Arc<Channel>,
    link: Arc<Link>,
}

struct MemOut {
    tx: Arc<Channel>,
    link: Arc<Link>,
}

impl BulkPipe for MemPipe {
    fn split(self: Box<Self>) -> (Box<dyn BulkIn>, Box<dyn BulkOut>) {
        (
            Box::new(MemIn {
                rx: self.rx,
                link: self.link.clone(),
            }),
            Box::new(MemOut {
                tx: self.tx,
                link: self.link,
            }),
        )
    }
}

impl BulkIn for MemIn {
    fn read_transfer(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<bool, PipeError> {
        let deadline = Instant::now() + timeout;
        let mut q = self.rx.lock();
        loop {
            if self.link.is_down() {
                return Err(PipeError::Disconnected);
            }
            if let Some(t) = q.pop_front() {
                *buf = t;
                // A writer may be waiting for room.
                self.rx.cv.notify_all();
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            q = self
                .rx
                .cv
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl BulkOut for MemOut {
    fn write_transfer(&mut self, data: &[u8]) -> Result<(), PipeError> {
        {
            let mut budget = self.link.budget.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(left) = budget.as_mut() {
                if data.len() as u64 > *left {
                    drop(budget);
                    self.link.unplug();
                    return Err(PipeError::Disconnected);
                }
                *left -= data.len() as u64;
            }
        }
        if needs_zlp(data.len(), MEM_PIPE_MAX_PACKET) {
            *self.link.zlps.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }
        let mut q = self.tx.lock();
        loop {
            if self.link.is_down() {
                return Err(PipeError::Disconnected);
            }
            if q.len() < MEM_PIPE_DEPTH {
                q.push_back(data.to_vec());
                self.tx.cv.notify_all();
                return Ok(());
            }
            q = self.tx.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn max_packet_size(&self) -> usize {
        MEM_PIPE_MAX_PACKET
    }
}

// ---- nusb pipe --------------------------------------------------------------------------------

/// Parallel IN transfers kept queued (usbmuxd's NUM_RX_LOOPS).
pub const IN_TRANSFERS: usize = 3;
/// Size of each IN transfer (usbmuxd reads 16 KiB; larger packets span several reads and the
/// mux core reassembles them).
pub const IN_TRANSFER_SIZE: usize = 16384;
/// OUT transfers allowed in flight before a write waits for one to finish.
pub const OUT_TRANSFERS: usize = 4;
/// Timeout of the vendor control requests.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors opening a real device.
#[derive(Debug, thiserror::Error)]
pub enum UsbOpenError {
    /// An OS-level USB operation failed (permissions, busy interface, unplugged meanwhile).
    #[error("{step}: {source}")]
    Usb {
        step: &'static str,
        source: nusb::Error,
    },
    /// The device's descriptors could not be parsed.
    #[error("bad USB descriptors: {0}")]
    Descriptors(#[from] DescriptorError),
    /// No configuration has a usbmux interface.
    #[error("the device has no usbmux interface in any configuration")]
    NoMuxInterface,
    /// The device accepted a mode switch and will re-enumerate; open it again when it returns.
    #[error("the device is switching to USB mode {0} and will reappear")]
    ModeSwitched(u8),
    /// The device has no serial number, so no UDID.
    #[error("the device reports no serial number")]
    NoSerial,
}

/// A real device's usbmux interface, claimed, with its bulk endpoints.
pub struct NusbPipe {
    udid: String,
    interface: MuxInterface,
    ep_in: nusb::Endpoint<nusb::transfer::Bulk, nusb::transfer::In>,
    ep_out: nusb::Endpoint<nusb::transfer::Bulk, nusb::transfer::Out>,
    // Keeps the interface claimed while the endpoints live.
    _intf: nusb::Interface,
}

fn usb(step: &'static str) -> impl FnOnce(nusb::Error) -> UsbOpenError {
    move |source| UsbOpenError::Usb { step, source }
}

/// Whether an enumerated device looks like an iPhone/iPad usbmuxd would take.
pub fn is_candidate(info: &nusb::DeviceInfo) -> bool {
    info.vendor_id() == super::descriptors::APPLE_VENDOR_ID
        && super::descriptors::is_usbmux_product(info.product_id())
}

impl NusbPipe {
    /// Opens the device, switches its mode if usbmuxd would, selects the configuration with the
    /// usbmux interface (detaching kernel drivers of the active configuration first), claims
    /// the interface and opens its bulk endpoints.
    pub fn open(info: &nusb::DeviceInfo) -> Result<NusbPipe, UsbOpenError> {
        use nusb::MaybeFuture;
        let serial = info.serial_number().ok_or(UsbOpenError::NoSerial)?;
        let udid = udid_from_serial(serial);
        let dev = info.open().wait().map_err(usb("opening the device"))?;
        let desc = DeviceDescriptor::parse(dev.device_descriptor().as_bytes())?;
        let configs = dev
            .configurations()
            .map(|c| Configuration::parse(c.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;

        // Mode switch, as usbmuxd does it: only when the current mode can be guessed and
        // differs from the target. A failed request just leaves the device as it is.
        let current = guess_mode(
            desc.num_configurations,
            configs.iter().find(|c| c.value == 5),
        );
        let target = target_mode_from_env();
        if should_switch_mode(current, target) {
            let vendor = |request, index, length| nusb::transfer::ControlIn {
                control_type: nusb::transfer::ControlType::Vendor,
                recipient: nusb::transfer::Recipient::Device,
                request,
                value: 0,
                index,
                length,
            };
            if let Ok(reply) = dev
                .control_in(vendor(REQUEST_GET_MODE, 0, 4), CONTROL_TIMEOUT)
                .wait()
            {
                tracing::debug!(
                    "usbmux: {udid} get-mode reply {reply:?} (initial mode: {:?})",
                    parse_get_mode_reply(&reply)
                );
            }
            match dev
                .control_in(
                    vendor(REQUEST_SET_MODE, u16::from(target), 1),
                    CONTROL_TIMEOUT,
                )
                .wait()
            {
                Ok(reply) if set_mode_accepted(&reply) => {
                    return Err(UsbOpenError::ModeSwitched(target))
                }
                Ok(reply) => tracing::info!("usbmux: {udid} refused mode {target}: {reply:?}"),
                Err(e) => tracing::info!("usbmux: {udid} mode switch failed: {e}"),
            }
        }

        let mux = choose_configuration(&configs).ok_or(UsbOpenError::NoMuxInterface)?;
        let active = dev
            .active_configuration()
            .map(|c| c.configuration_value())
            .unwrap_or(0);
        if active != mux.configuration {
            // Kernel drivers (PTP, ipheth, cdc_ncm) hold interfaces of the active
            // configuration; SET_CONFIGURATION fails with EBUSY unless they are detached.
            if let Some(cfg) = configs.iter().find(|c| c.value == active) {
                let mut numbers: Vec<u8> = cfg.interfaces.iter().map(|i| i.number).collect();
                numbers.dedup();
                for n in numbers {
                    if let Err(e) = dev.detach_kernel_driver(n) {
                        tracing::debug!("usbmux: detaching interface {n} of {udid}: {e}");
                    }
                }
            }
            dev.set_configuration(mux.configuration)
                .wait()
                .map_err(usb("setting the usbmux configuration"))?;
        }
        let intf = dev
            .detach_and_claim_interface(mux.interface)
            .wait()
            .map_err(usb("claiming the usbmux interface"))?;
        let mut ep_in = intf
            .endpoint::<nusb::transfer::Bulk, nusb::transfer::In>(mux.ep_in)
            .map_err(usb("opening the bulk IN endpoint"))?;
        let ep_out = intf
            .endpoint::<nusb::transfer::Bulk, nusb::transfer::Out>(mux.ep_out)
            .map_err(usb("opening the bulk OUT endpoint"))?;
        for _ in 0..IN_TRANSFERS {
            let b = ep_in.allocate(IN_TRANSFER_SIZE);
            ep_in.submit(b);
        }
        Ok(NusbPipe {
            udid,
            interface: mux,
            ep_in,
            ep_out,
            _intf: intf,
        })
    }

    /// The device's UDID (from its serial number).
    pub fn udid(&self) -> &str {
        &self.udid
    }

    /// Where usbmux was found.
    pub fn interface(&self) -> MuxInterface {
        self.interface
    }
}

fn transfer_error(e: nusb::transfer::TransferError) -> PipeError {
    match e {
        nusb::transfer::TransferError::Disconnected => PipeError::Disconnected,
        other => PipeError::Transfer(other.to_string()),
    }
}

struct NusbIn {
    ep: nusb::Endpoint<nusb::transfer::Bulk, nusb::transfer::In>,
    _intf: nusb::Interface,
}

struct NusbOut {
    ep: nusb::Endpoint<nusb::transfer::Bulk, nusb::transfer::Out>,
    mps: usize,
    _intf: nusb::Interface,
}

impl BulkPipe for NusbPipe {
    fn split(self: Box<Self>) -> (Box<dyn BulkIn>, Box<dyn BulkOut>) {
        let mps = self.ep_out.max_packet_size();
        (
            Box::new(NusbIn {
                ep: self.ep_in,
                _intf: self._intf.clone(),
            }),
            Box::new(NusbOut {
                ep: self.ep_out,
                mps,
                _intf: self._intf,
            }),
        )
    }
}

impl BulkIn for NusbIn {
    fn read_transfer(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<bool, PipeError> {
        if self.ep.pending() == 0 {
            return Err(PipeError::Transfer("no IN transfer queued".into()));
        }
        let Some(c) = self.ep.wait_next_complete(timeout) else {
            return Ok(false);
        };
        let mut b = c.buffer;
        match c.status {
            Ok(()) => {
                buf.clear();
                buf.extend_from_slice(&b[..c.actual_len.min(b.len())]);
                b.clear();
                b.set_requested_len(IN_TRANSFER_SIZE);
                self.ep.submit(b);
                Ok(true)
            }
            Err(e) => Err(transfer_error(e)),
        }
    }
}

impl NusbOut {
    fn reap(&mut self, keep: usize) -> Result<(), PipeError> {
        while self.ep.pending() > keep {
            // Bulk OUT to a live device completes quickly; a minute means it is wedged.
            let c = self
                .ep
                .wait_next_complete(Duration::from_secs(60))
                .ok_or_else(|| PipeError::Transfer("bulk OUT transfer timed out".into()))?;
            c.status.map_err(transfer_error)?;
        }
        Ok(())
    }
}

impl BulkOut for NusbOut {
    fn write_transfer(&mut self, data: &[u8]) -> Result<(), PipeError> {
        self.reap(OUT_TRANSFERS - 1)?;
        self.ep.submit(nusb::transfer::Buffer::from(data));
        if needs_zlp(data.len(), self.mps) {
            self.ep.submit(nusb::transfer::Buffer::new(0));
        }
        Ok(())
    }

    fn max_packet_size(&self) -> usize {
        self.mps
    }
}

impl Drop for NusbOut {
    fn drop(&mut self) {
        // Let queued packets (a final RST) reach the device before the interface is released.
        let _ = self.reap(0);
    }
}

/// For `io::Error` callers: an unplug stays recognisable as `NotConnected`.
impl From<PipeError> for io::Error {
    fn from(e: PipeError) -> io::Error {
        match e {
            PipeError::Disconnected => io::Error::new(io::ErrorKind::NotConnected, e),
            other => io::Error::other(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn zlp_rule() {
        assert!(needs_zlp(512, 512));
        assert!(needs_zlp(49152, 512));
        assert!(!needs_zlp(49151, 512));
        assert!(needs_zlp(0, 512));
        assert!(!needs_zlp(10, 0));
    }

    #[test]
    fn transfers_keep_their_boundaries_both_ways() {
        let (a, b) = mem_pipe_pair();
        let ctl = a.control();
        let (mut ar, mut aw) = Box::new(a).split();
        let (mut br, mut bw) = Box::new(b).split();
        aw.write_transfer(b"one").unwrap();
        aw.write_transfer(&[0u8; 1024]).unwrap();
        bw.write_transfer(b"back").unwrap();
        let mut buf = Vec::new();
        assert!(br.read_transfer(&mut buf, T).unwrap());
        assert_eq!(buf, b"one");
        assert!(br.read_transfer(&mut buf, T).unwrap());
        assert_eq!(buf.len(), 1024);
        assert!(ar.read_transfer(&mut buf, T).unwrap());
        assert_eq!(buf, b"back");
        assert!(!ar.read_transfer(&mut buf, Duration::ZERO).unwrap());
        assert_eq!(ctl.zlp_count(), 1);
        assert_eq!(aw.max_packet_size(), 512);
    }

    #[test]
    fn unplug_wakes_a_blocked_reader_and_fails_writes() {
        let (a, b) = mem_pipe_pair();
        let ctl = a.control();
        let (mut ar, _aw) = Box::new(a).split();
        let (_br, mut bw) = Box::new(b).split();
        let t = std::thread::spawn(move || {
            let mut buf = Vec::new();
            ar.read_transfer(&mut buf, Duration::from_secs(60))
        });
        ctl.unplug();
        assert!(matches!(t.join().unwrap(), Err(PipeError::Disconnected)));
        assert!(matches!(
            bw.write_transfer(b"x"),
            Err(PipeError::Disconnected)
        ));
        let e: io::Error = PipeError::Disconnected.into();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    }

    #[test]
    fn disconnect_after_n_bytes() {
        let (a, b) = mem_pipe_pair();
        a.control().disconnect_after(10);
        let (_ar, mut aw) = Box::new(a).split();
        let (mut br, _bw) = Box::new(b).split();
        aw.write_transfer(&[1; 6]).unwrap();
        aw.write_transfer(&[2; 4]).unwrap();
        assert!(matches!(
            aw.write_transfer(&[3; 1]),
            Err(PipeError::Disconnected)
        ));
        let mut buf = Vec::new();
        assert!(matches!(
            br.read_transfer(&mut buf, T),
            Err(PipeError::Disconnected)
        ));
    }

    #[test]
    fn full_queue_blocks_the_writer_until_read() {
        let (a, b) = mem_pipe_pair();
        let (_ar, mut aw) = Box::new(a).split();
        let (mut br, _bw) = Box::new(b).split();
        for i in 0..MEM_PIPE_DEPTH {
            aw.write_transfer(&[i as u8]).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            aw.write_transfer(b"late").unwrap();
            tx.send(()).unwrap();
        });
        // The writer cannot finish while the queue is full.
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        let mut buf = Vec::new();
        br.read_transfer(&mut buf, T).unwrap();
        rx.recv_timeout(T).unwrap();
        t.join().unwrap();
    }
}
