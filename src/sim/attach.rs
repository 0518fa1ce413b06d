//! A simulated iPhone plugged into this process: the host's usbmux core and the phone's usbmux
//! core joined by the in-memory bulk pipe, so everything above usbmux runs as with a real cable.
//!
//! This is the path the box's demo and `cradle backup --sim` use: no socket, no usbmuxd, the same
//! `MuxHost` the nusb path uses. The pipe's control can pull the cable mid-backup for tests.

use crate::sim::device::DevicePorts;
use crate::sim::simulator::Simulator;
use crate::transport::{BoxStream, DeviceConnector};
use crate::usb::{mem_pipe_pair, MemPipeControl, MuxDevice, MuxHost, MuxLinkError};
use std::io;
use std::sync::Arc;

/// A simulated phone attached over an in-memory usbmux link; a [`DeviceConnector`] for the host.
pub struct InMemoryPhone {
    host: Arc<MuxHost>,
    device: Arc<MuxDevice>,
    cable: MemPipeControl,
    sim: Option<Arc<Simulator>>,
}

impl std::fmt::Debug for InMemoryPhone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryPhone")
            .field("udid", &self.host.udid())
            .field("attached", &self.host.is_attached())
            .finish_non_exhaustive()
    }
}

/// Plugs the simulator in: starts the phone's usbmux side on one end of an in-memory pipe and the
/// host's on the other, and waits for the usbmux version handshake.
pub fn attach_in_memory(sim: Arc<Simulator>) -> Result<InMemoryPhone, MuxLinkError> {
    let udid = sim.udid().to_string();
    let ports: Arc<dyn DevicePorts> = sim.device().clone();
    let mut phone = attach_ports(ports, &udid)?;
    phone.sim = Some(sim);
    Ok(phone)
}

/// Like [`attach_in_memory`] for any set of device ports (a bare `SimDevice`, a test table).
pub fn attach_ports(
    ports: Arc<dyn DevicePorts>,
    udid: &str,
) -> Result<InMemoryPhone, MuxLinkError> {
    let (host_end, device_end) = mem_pipe_pair();
    let cable = host_end.control();
    let device = MuxDevice::start(device_end, ports)?;
    let host = match MuxHost::start(host_end, udid) {
        Ok(h) => h,
        Err(e) => {
            device.shutdown();
            return Err(e);
        }
    };
    Ok(InMemoryPhone {
        host,
        device,
        cable,
        sim: None,
    })
}

impl InMemoryPhone {
    /// Fault injection: unplug now, or after a number of bytes (see [`MemPipeControl`]).
    pub fn cable(&self) -> &MemPipeControl {
        &self.cable
    }

    /// The simulator behind the link, when attached with [`attach_in_memory`].
    pub fn simulator(&self) -> Option<&Arc<Simulator>> {
        self.sim.as_ref()
    }

    /// The host's end of the link (attachment state, detach reason).
    pub fn host(&self) -> &Arc<MuxHost> {
        &self.host
    }

    /// Unplugs and stops both link drivers.
    pub fn detach(&self) {
        self.host.shutdown();
        self.device.shutdown();
    }
}

impl Drop for InMemoryPhone {
    fn drop(&mut self) {
        self.detach();
    }
}

impl DeviceConnector for InMemoryPhone {
    fn udid(&self) -> &str {
        self.host.udid()
    }

    fn connect(&self, port: u16) -> io::Result<BoxStream> {
        self.host.connect(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockdown::{HostIdentity, MemoryPairStore, SessionOptions};
    use crate::sim::phone::Profile;
    use crate::sim::simulator::SimulatorOptions;

    #[test]
    fn lockdown_session_over_the_in_memory_link() {
        let sim = Simulator::new(SimulatorOptions::new(5, Profile::Tiny, 1)).unwrap();
        let phone = attach_in_memory(sim.clone()).unwrap();
        assert_eq!(phone.udid(), sim.udid());
        let store = MemoryPairStore::new();
        let host = HostIdentity::generate(None);
        let mut ld = crate::lockdown::open(
            &phone,
            &store,
            &host,
            &SessionOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert!(ld.paired_now());
        let v = ld.get_value(None, Some("UniqueDeviceID")).unwrap();
        assert_eq!(v.as_string(), Some(sim.udid()));
        ld.close().unwrap();
        phone.cable().unplug();
        assert!(phone
            .host()
            .wait_detached(std::time::Duration::from_secs(5)));
        assert!(phone.connect(crate::transport::LOCKDOWN_PORT).is_err());
    }
}
