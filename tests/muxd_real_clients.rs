//! Unmodified real clients against the usbmuxd facade: libimobiledevice's `idevice_id` (through
//! libusbmuxd 2.0.2) and pymobiledevice3's `usbmux list` must see the served device.
//!
//! A missing peer skips the test with a printed line, unless CRADLE_REQUIRE_PEERS=1 (CI), where
//! it fails. pymobiledevice3 is looked up in $CRADLE_PEERS_DIR/pmd3, else target/peers/pmd3.

use cradle::sim::device::PortTable;
use cradle::usb::muxd::{ListenAddr, MuxdServer, ServedDevice};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const UDID: &str = "00008030-001A35E22E88802E";
const OLD_UDID: &str = "f1c15f36c3461bf9b24d568084d17cfb2d4243c4";

/// How long one client run may take (pymobiledevice3 start-up alone is 1-2 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

fn require_peers() -> bool {
    std::env::var("CRADLE_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// Reports a missing peer: a failure in CI, a skip elsewhere. Returns `None` to skip.
fn missing(what: &str) -> Option<PathBuf> {
    if require_peers() {
        panic!("required peer missing: {what}");
    }
    println!("SKIP: {what} is not installed");
    None
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn peers_dir() -> PathBuf {
    match std::env::var_os("CRADLE_PEERS_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers"),
    }
}

/// Runs a command to completion with a deadline; returns (success, stdout, stderr).
fn run(mut cmd: Command) -> (bool, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn client");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut o = String::new();
        let mut e = String::new();
        let _ = out.read_to_string(&mut o);
        let _ = err.read_to_string(&mut e);
        let _ = tx.send((o, e));
    });
    match rx.recv_timeout(CLIENT_TIMEOUT) {
        Ok((o, e)) => {
            let status = child.wait().expect("wait client");
            (status.success(), o, e)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("client {cmd:?} did not finish within {CLIENT_TIMEOUT:?}");
        }
    }
}

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
