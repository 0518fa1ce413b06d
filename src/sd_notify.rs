//! The service-manager notification protocol (`sd_notify`): one datagram of `KEY=value` lines to
//! the socket named by `$NOTIFY_SOCKET`, used by the daemon for READY=1, WATCHDOG=1 and STATUS=.
//!
//! A few lines of std instead of a dependency; `Type=notify` + `WatchdogSec=` in `systemd/cradle.service`.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// One notification field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyState<'a> {
    /// Start-up finished (`READY=1`).
    Ready,
    /// Still alive (`WATCHDOG=1`); send at half of [`watchdog_interval`].
    Watchdog,
    /// Shutting down (`STOPPING=1`).
    Stopping,
    /// Free-form status line shown by `systemctl status`; newlines become spaces.
    Status(&'a str),
}

impl NotifyState<'_> {
    fn write_to(&self, out: &mut String) {
        match self {
            NotifyState::Ready => out.push_str("READY=1"),
            NotifyState::Watchdog => out.push_str("WATCHDOG=1"),
            NotifyState::Stopping => out.push_str("STOPPING=1"),
            NotifyState::Status(s) => {
                out.push_str("STATUS=");
                out.extend(
                    s.chars()
                        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
                );
            }
        }
        out.push('\n');
    }
}

/// The datagram for `states`, as sent.
pub fn encode(states: &[NotifyState<'_>]) -> String {
    let mut s = String::new();
    for st in states {
        st.write_to(&mut s);
    }
    s
}

/// Sends `states` to `$NOTIFY_SOCKET`. `Ok(false)` when the variable is unset (not under
/// systemd, or `NotifyAccess=` does not include us): callers need not check first.
pub fn notify(states: &[NotifyState<'_>]) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(addr) => notify_to(&addr, states).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `states` to the socket `addr`: a path, or `@name` for an abstract socket.
pub fn notify_to(addr: &OsStr, states: &[NotifyState<'_>]) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let msg = encode(states);
    let bytes = addr.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let sa = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg.as_bytes(), &sa)?
    } else if bytes.first() == Some(&b'/') {
        sock.send_to(msg.as_bytes(), addr)?
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract name",
        ));
    };
    if sent != msg.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "the notification was cut short",
        ));
    }
    Ok(())
}

/// The watchdog interval systemd expects from this process (`$WATCHDOG_USEC`, honoured only if
/// `$WATCHDOG_PID` is unset or ours); `None` when there is no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] over explicit values, for tests.
pub fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    match usec?.trim().parse::<u64>().ok()? {
        0 => None,
        n => Some(Duration::from_micros(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(
            path.as_os_str(),
            &[
                NotifyState::Ready,
                NotifyState::Status("idle\nwaiting"),
                NotifyState::Watchdog,
            ],
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=idle waiting\nWATCHDOG=1\n");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("cradle-notify-test-{}", std::process::id());
        let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&sa).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), &[NotifyState::Stopping]).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn relative_address_is_refused() {
        let err = notify_to(OsStr::new("notify"), &[NotifyState::Ready]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn watchdog_interval_checks_pid() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
    }
}
