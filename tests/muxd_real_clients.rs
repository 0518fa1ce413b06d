//! Unmodified real clients against the usbmuxd facade: libimobiledevice's `idevice_id` (through
//! libusbmuxd 2.0.2) and pymobiledevice3's `usbmux list` must see the served device.
//!
//! A missing peer skips the test with a printed line, unless CRADLE_REQUIRE_PEERS=1 (CI), where
//! it fails. pymobiledevice3 is looked up in $CRADLE_PEERS_DIR/pmd3, else target/peers/pmd3.

mod common;

use common::{find_in_path, missing, peers_dir, run_client as run};

use cradle::sim::device::PortTable;
use cradle::usb::muxd::{ListenAddr, MuxdServer, ServedDevice};
use std::process::Command;
use std::sync::Arc;

const UDID: &str = "00008030-001A35E22E88802E";
const OLD_UDID: &str = "f1c15f36c3461bf9b24d568084d17cfb2d4243c4";

fn serve() -> MuxdServer {
    let devices = [UDID, OLD_UDID]
        .into_iter()
        .map(|udid| ServedDevice {
            udid: udid.into(),
            product_id: 0x12a8,
            ports: Arc::new(PortTable::new()),
        })
        .collect();
    MuxdServer::bind(&"127.0.0.1:0".parse::<ListenAddr>().unwrap(), devices, None).unwrap()
}

#[test]
fn idevice_id_lists_the_served_devices() {
    let Some(bin) = find_in_path("idevice_id").or_else(|| missing("idevice_id")) else {
        return;
    };
    let server = serve();
    let mut cmd = Command::new(bin);
    cmd.arg("-l")
        .env("USBMUXD_SOCKET_ADDRESS", server.client_address());
    let (ok, out, err) = run(cmd);
    assert!(ok, "idevice_id failed\nstdout: {out}\nstderr: {err}");
    let listed: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(listed.contains(&UDID), "{out}");
    assert!(listed.contains(&OLD_UDID), "{out}");
}

#[test]
fn pymobiledevice3_usbmux_list_sees_the_served_devices() {
    let bin = peers_dir().join("pmd3/bin/pymobiledevice3");
    if !bin.is_file() && missing(&format!("{}", bin.display())).is_none() {
        return;
    }
    let server = serve();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["usbmux", "list", "--simple"])
        .env("HOME", home.path())
        .env("USBMUXD_SOCKET_ADDRESS", server.client_address())
        .env_remove("PYMOBILEDEVICE3_USBMUX")
        .env("NO_COLOR", "1");
    let (ok, out, err) = run(cmd);
    assert!(ok, "pymobiledevice3 failed\nstdout: {out}\nstderr: {err}");
    assert!(out.contains(UDID), "{out}\n{err}");
    assert!(out.contains(OLD_UDID), "{out}\n{err}");

    // The same through the --usbmux option.
    let mut cmd = Command::new(peers_dir().join("pmd3/bin/pymobiledevice3"));
    cmd.args([
        "usbmux",
        "list",
        "--simple",
        "--usbmux",
        &server.client_address(),
    ])
    .env("HOME", home.path())
    .env_remove("USBMUXD_SOCKET_ADDRESS")
    .env_remove("PYMOBILEDEVICE3_USBMUX");
    let (ok, out, err) = run(cmd);
    assert!(
        ok,
        "pymobiledevice3 --usbmux failed\nstdout: {out}\nstderr: {err}"
    );
    assert!(out.contains(UDID), "{out}\n{err}");
}
