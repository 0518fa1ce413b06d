//! The simulated device's port table: which service answers a connection to which device port.
//! The usbmuxd server and the in-memory usbmux device side hand every accepted stream to it.

use crate::transport::BoxStream;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Serves one accepted connection to a device port (runs on its own thread).
pub type ServiceHandler = Arc<dyn Fn(BoxStream) + Send + Sync>;

/// Where a connection to a device port goes. Implemented by the simulated device.
pub trait DevicePorts: Send + Sync {
    /// Takes an accepted stream to `port`. Returns `Err(stream)` when nothing listens there, so
    /// the caller can refuse the connection (usbmuxd Result 3 / an RST on the wire).
    fn accept(&self, port: u16, stream: BoxStream) -> Result<(), BoxStream>;
}

/// Lowest port handed out by StartService.
pub const FIRST_DYNAMIC_PORT: u16 = 49152;

/// A table of listening ports. Fixed ports (lockdownd) and ports opened by StartService.
#[derive(Default)]
pub struct PortTable {
    inner: Mutex<PortTableInner>,
}

#[derive(Default)]
struct PortTableInner {
    map: HashMap<u16, ServiceHandler>,
    next: u16,
}

impl PortTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Listens on a fixed port.
    pub fn bind(&self, port: u16, handler: ServiceHandler) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.map.insert(port, handler);
    }

    /// Listens on a fresh dynamic port and returns it. Ports stay valid after the lockdown
    /// session that opened them ends, as on a real device.
    pub fn open_dynamic(&self, handler: ServiceHandler) -> u16 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.next < FIRST_DYNAMIC_PORT {
            g.next = FIRST_DYNAMIC_PORT;
        }
        loop {
            let p = g.next;
            g.next = if g.next == u16::MAX {
                FIRST_DYNAMIC_PORT
            } else {
                g.next + 1
            };
            if let std::collections::hash_map::Entry::Vacant(e) = g.map.entry(p) {
                e.insert(handler);
                return p;
            }
        }
    }

    /// Stops listening on `port`.
    pub fn close(&self, port: u16) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.map.remove(&port);
    }

    /// The handler listening on `port`, if any.
    pub fn handler(&self, port: u16) -> Option<ServiceHandler> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.map.get(&port).cloned()
    }
}

impl DevicePorts for PortTable {
    fn accept(&self, port: u16, stream: BoxStream) -> Result<(), BoxStream> {
        match self.handler(port) {
            Some(h) => {
                // A failed spawn drops the stream, which the peer sees as a closed connection.
                let _ = std::thread::Builder::new()
                    .name(format!("sim-port-{port}"))
                    .spawn(move || h(stream));
                Ok(())
            }
            None => Err(stream),
        }
    }
}
