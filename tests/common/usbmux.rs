//! A simulated phone behind the usbmuxd facade, and real clients pointed at it: what the
//! real-client tests of lockdown and of the side services set up alike.

use cradle::sim::device::SimDevice;
use cradle::usb::muxd::{ListenAddr, MuxdServer, ServedDevice};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// Serves `dev` behind a usbmuxd facade on 127.0.0.1:<free port>.
pub fn serve_device(dev: &Arc<SimDevice>) -> MuxdServer {
    let served = ServedDevice {
        udid: dev.udid().to_string(),
        product_id: 0x12a8,
        ports: dev.clone(),
    };
    MuxdServer::bind(
        &"127.0.0.1:0".parse::<ListenAddr>().unwrap(),
        vec![served],
        None,
    )
    .unwrap()
}

/// A real client `bin ARGS…` that finds the device at `server` and keeps its pair records
/// under `home`.
pub fn client(bin: &Path, args: &[&str], home: &Path, server: &MuxdServer) -> Command {
    let mut c = Command::new(bin);
    c.args(args)
        .env("HOME", home)
        .env("USBMUXD_SOCKET_ADDRESS", server.client_address());
    c
}

/// As [`client`], for pymobiledevice3: always through the facade, no colour in its output.
pub fn pmd3_client(bin: &Path, args: &[&str], home: &Path, server: &MuxdServer) -> Command {
    let mut c = client(bin, args, home, server);
    c.env_remove("PYMOBILEDEVICE3_USBMUX").env("NO_COLOR", "1");
    c
}
