//! `cradle sim serve` as a process: it says where it listens, a real client (ideviceinfo, when
//! installed) reaches the phone through it, SIGTERM stops it cleanly and its state folder then
//! remembers the pairing and the password for the next start.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the command; returns the child and its ready line.
fn start(state: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = common::cradle()
        .args([
            "sim",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--profile",
            "tiny",
        ])
        .args(["--seed", "21", "--dpic", "1000", "--state-dir"])
        .arg(state)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn cradle sim serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    if line.is_empty() {
        let _ = child.kill();
        panic!("cradle sim serve did not print its ready line");
    }
    (child, line)
}

fn field(line: &str, pre: &str, end: char) -> String {
    let i = line
        .find(pre)
        .unwrap_or_else(|| panic!("no {pre:?} in {line:?}"))
        + pre.len();
    line[i..].split(end).next().unwrap().to_string()
}

fn terminate(mut child: Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cradle sim serve ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
