//! `cradle sim serve` as a child process: started on a free TCP port, its ready line read (UDID
//! and usbmuxd address), stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `cradle sim serve`.
pub struct Serve {
    pub child: Child,
    /// The ready line it printed.
    pub line: String,
    /// The simulated phone's UDID.
    pub udid: String,
    /// `USBMUXD_SOCKET_ADDRESS` of its usbmuxd.
    pub addr: String,
}

/// The text after `pre` in `line`, up to `end`.
pub fn field(line: &str, pre: &str, end: char) -> String {
    let i = line
        .find(pre)
        .unwrap_or_else(|| panic!("no {pre:?} in {line:?}"))
        + pre.len();
    line[i..].split(end).next().unwrap().to_string()
}

impl Serve {
    /// Starts `cradle sim serve --listen 127.0.0.1:0 ARGS…` (stderr inherited) and waits for
    /// its ready line.
    pub fn start<I, S>(args: I) -> Serve
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut child = super::cradle()
            .args(["sim", "serve", "--listen", "127.0.0.1:0"])
            .args(args)
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
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        if line.is_empty() {
            let _ = child.kill();
            panic!("cradle sim serve did not print its ready line");
        }
        Serve {
            udid: field(&line, "serving UDID ", ' '),
            addr: field(&line, "USBMUXD_SOCKET_ADDRESS=", ')'),
            line,
            child,
        }
    }

    /// SIGTERM, then its exit status; panics if it does not stop in time.
    pub fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("cradle sim serve ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
