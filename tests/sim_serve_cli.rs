//! `cradle sim serve` as a process: it says where it listens, a real client (ideviceinfo, when
//! installed) reaches the phone through it, SIGTERM stops it cleanly and its state folder then
//! remembers the pairing and the password for the next start.

mod common;

use common::serve::{field, Serve};
use std::path::Path;
use std::process::Command;

/// Starts the command; returns it with its ready line.
fn start(state: &Path, extra: &[&str]) -> (Serve, String) {
    let mut args = vec!["--profile", "tiny", "--seed", "21", "--dpic", "1000"];
    args.extend(["--state-dir", common::s(state)]);
    args.extend_from_slice(extra);
    let serve = Serve::start(args);
    let line = serve.line.clone();
    (serve, line)
}

fn terminate(child: Serve) {
    let status = child.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn serve_prints_its_address_stops_on_sigterm_and_keeps_state() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let pw = common::password_file(tmp.path(), "cli password");
    let (child, line) = start(&state, &["--password-file", pw.to_str().unwrap()]);
    let udid = field(&line, "serving UDID ", ' ');
    let addr = field(&line, "USBMUXD_SOCKET_ADDRESS=", ')');
    assert!(line.contains("backup encryption on"), "{line}");
    if let Some(info) = common::system_bin("ideviceinfo") {
        // ideviceinfo pairs on first use, so this also stores a pairing in the state.
        let out = Command::new(info)
            .env("USBMUXD_SOCKET_ADDRESS", &addr)
            .args(["-u", &udid, "-k", "ProductVersion"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.trim().starts_with("17."), "ideviceinfo said {text:?}");
    }
    terminate(child);
    let saved = std::fs::read_to_string(state.join("device.plist")).unwrap();
    assert!(saved.contains(&udid));
    // Started again on day 2 without a password option: encryption is still on.
    let (child, line) = start(&state, &["--day", "2"]);
    assert!(line.contains("day 2"), "{line}");
    assert!(line.contains("backup encryption on"), "{line}");
    terminate(child);
}
