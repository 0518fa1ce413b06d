//! Hostile frames in both directions: the simulated lockdownd answers or hangs up without
//! panicking, and the host client turns a misbehaving device into typed errors.
//! One test per file on purpose: the panic hook below counts panics in this process only.

use cradle::lockdown::protocol::{LockdownError, ReplyError};
use cradle::lockdown::{Error, LockdownClient};
use cradle::plist_frame::{self, FrameError, PlistFormat};
use cradle::sim::device::{DeviceEvent, DeviceIdentity, SimDevice, SimDeviceConfig};
use cradle::transport::{BoxStream, DeviceConnector, LOCKDOWN_PORT};
use plist::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn read_reply(s: &mut BoxStream) -> Result<Value, FrameError> {
    plist_frame::read_frame(&mut **s)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A fake device that answers the first request with `reply` bytes, then closes.
fn client_against(reply: Vec<u8>) -> LockdownClient {
    let (a, mut b) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let _ = plist_frame::read_frame(&mut b);
        let _ = b.write_all(&reply);
    });
    LockdownClient::from_stream(Box::new(a), "00008120-001C30E22E91401E", "test")
}

#[test]
fn hostile_frames_both_ways() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let dev = SimDevice::new(SimDeviceConfig::new(DeviceIdentity::example())).unwrap();
    let conn = dev.connector();

    // 1. A 4 GiB length: the device hangs up without allocating.
    let mut s = conn.connect(LOCKDOWN_PORT).unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, b'<']).unwrap();
    // (EOF, or a reset because the device left the unread byte behind.)
    assert!(matches!(
        read_reply(&mut s),
        Err(FrameError::Eof) | Err(FrameError::Io(_))
    ));

    // 2. Not a plist, then a dictionary without Request, then a non-dictionary: each gets
    //    `Error: InvalidRequest` and the connection goes on.
    let mut s = conn.connect(LOCKDOWN_PORT).unwrap();
    for body in [
        &b"this is not a plist"[..],
        b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>Label</key><string>x</string></dict></plist>",
        b"<?xml version=\"1.0\"?><plist version=\"1.0\"><array><string>Request</string></array></plist>",
    ] {
        s.write_all(&frame(body)).unwrap();
        let r = read_reply(&mut s).unwrap();
        assert_eq!(
            r.as_dictionary()
                .and_then(|d| d.get("Error"))
                .and_then(Value::as_string),
            Some("InvalidRequest")
        );
    }
    // Unknown request names are refused by name, echoing the request.
    let mut c = LockdownClient::from_stream(s, dev.udid(), "test");
    let err = c
        .request("MakeCoffee", plist::Dictionary::new())
        .unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::InvalidRequest));
    assert_eq!(c.query_type().unwrap(), "com.apple.mobile.lockdown");

    // 3. Garbage where the TLS ClientHello should be: the device logs it and hangs up.
    let mut c = LockdownClient::connect(&conn, "test").unwrap();
    let host = cradle::lockdown::HostIdentity::generate(None);
    let rec = c.pair(&host, &Default::default(), &mut |_| {}).unwrap();
    drop(c);
    let mut s = conn.connect(LOCKDOWN_PORT).unwrap();
    let mut req = cradle::lockdown::protocol::request("test", "StartSession");
    req.insert("HostID".into(), rec.host_id.clone().into());
    req.insert("SystemBUID".into(), rec.system_buid.clone().into());
    plist_frame::write_frame(&mut *s, &Value::Dictionary(req), PlistFormat::Xml).unwrap();
    let r = read_reply(&mut s).unwrap();
    assert_eq!(
        r.as_dictionary()
            .and_then(|d| d.get("EnableSessionSSL"))
            .and_then(Value::as_boolean),
        Some(true)
    );
    s.write_all(&frame(b"<?xml version=\"1.0\"?>")).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    // 4. Truncated frame then EOF.
    let mut s = conn.connect(LOCKDOWN_PORT).unwrap();
    s.write_all(&[0, 0, 1, 0, b'<', b'?']).unwrap();
    s.shutdown().unwrap();
    let _ = read_reply(&mut s);

    // The device still serves, and it logged what happened.
    let mut c = LockdownClient::connect(&conn, "test").unwrap();
    assert_eq!(c.query_type().unwrap(), "com.apple.mobile.lockdown");
    assert!(dev.count_events(|e| matches!(e, DeviceEvent::BadFrame { .. })) >= 4);
    assert_eq!(
        dev.count_events(|e| matches!(e, DeviceEvent::TlsFailed { .. })),
        1
    );

    // Host side: a misbehaving device gives typed errors.
    let mut c = client_against(vec![0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        c.query_type(),
        Err(Error::Frame(FrameError::TooLong { .. }))
    ));
    let mut c = client_against(frame(b"<?xml version=\"1.0\"?><plist><dict><key>Req"));
    assert!(matches!(
        c.query_type(),
        Err(Error::Frame(FrameError::BadPlist(_)))
    ));
    let mut c = client_against(frame(
        b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>Type</key><string>x</string></dict></plist>",
    ));
    assert!(matches!(
        c.query_type(),
        Err(Error::Reply(ReplyError::RequestMismatch { got: None, .. }))
    ));
    let mut c = client_against(frame(
        b"<?xml version=\"1.0\"?><plist version=\"1.0\"><string>QueryType</string></plist>",
    ));
    assert!(matches!(
        c.query_type(),
        Err(Error::Reply(ReplyError::NotADictionary { .. }))
    ));
    let mut c = client_against(frame(
        b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>Request</key><string>QueryType</string></dict></plist>",
    ));
    assert!(matches!(
        c.query_type(),
        Err(Error::BadField { field: "Type", .. })
    ));
    let mut c = client_against(frame(
        b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>Request</key><string>StartService</string><key>Port</key><integer>70000</integer></dict></plist>",
    ));
    assert!(matches!(
        c.start_service("x", false),
        Err(Error::BadField { field: "Port", .. })
    ));
    let mut c = client_against(Vec::new());
    assert!(matches!(c.query_type(), Err(Error::Frame(FrameError::Eof))));

    // Give the device's connection threads a moment to finish, without sleeping blind: one
    // more full request proves the device loop is alive; panics would have been counted.
    let mut c = LockdownClient::connect(&conn, "test").unwrap();
    assert_eq!(c.query_type().unwrap(), "com.apple.mobile.lockdown");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a thread panicked");
}
