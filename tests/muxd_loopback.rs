//! The usbmuxd facade against our own client: every request kind, Connect to a served port,
//! refusals, Listen events, the legacy binary CONNECT and the 64 KiB request cap.

use cradle::sim::device::PortTable;
use cradle::transport::{BoxStream, DeviceConnector};
use cradle::usb::muxd::{
    self, ListenAddr, MuxdAddr, MuxdClient, MuxdError, MuxdEvent, MuxdServer, ServedDevice,
};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

const UDID: &str = "00008030-001A35E22E88802E";
const ECHO_PORT: u16 = 62078;
const GREETER_PORT: u16 = 49160;

fn echo(mut s: BoxStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn ports() -> Arc<PortTable> {
    let t = Arc::new(PortTable::new());
    t.bind(ECHO_PORT, Arc::new(echo));
    // A service that speaks first, like mobilebackup2's version exchange.
    t.bind(
        GREETER_PORT,
        Arc::new(|mut s: BoxStream| {
            let _ = s.write_all(b"hello first");
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        }),
    );
    t
}

fn device(udid: &str) -> ServedDevice {
    ServedDevice {
        udid: udid.into(),
        product_id: 0x12a8,
        ports: ports(),
    }
}

fn server(dir: Option<std::path::PathBuf>) -> (MuxdServer, MuxdClient) {
    let s = MuxdServer::bind(
        &"127.0.0.1:0".parse::<ListenAddr>().unwrap(),
        vec![device(UDID)],
        dir,
    )
    .unwrap();
    let c = MuxdClient::new(MuxdAddr::parse(&s.client_address()).unwrap());
    (s, c)
}

#[test]
fn lists_the_device_with_the_properties_clients_read() {
    let (_s, c) = server(None);
    let list = c.list_devices().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].udid, UDID);
    assert!(list[0].device_id >= 1);
    assert_eq!(list[0].product_id, 0x12a8);
    assert_eq!(list[0].connection_type, "USB");
}

#[test]
fn buid_is_an_uppercase_uuid_and_stable() {
    let (s, c) = server(None);
    let a = c.read_buid().unwrap();
    let b = c.read_buid().unwrap();
    assert_eq!(a, b);
    assert_eq!(a, s.handle().buid());
    assert_eq!(a.len(), 36);
    assert_eq!(a, a.to_uppercase());
}

#[test]
fn pair_records_round_trip_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    for d in [None, Some(dir.path().to_path_buf())] {
        let (_s, c) = server(d.clone());
        assert_eq!(c.read_pair_record(UDID).unwrap(), None);
        let record = b"<?xml version=\"1.0\"?><plist><dict/></plist>\x00\xff".to_vec();
        c.save_pair_record(UDID, Some(1), &record).unwrap();
        assert_eq!(c.read_pair_record(UDID).unwrap(), Some(record.clone()));
        if let Some(dir) = &d {
            assert_eq!(
                std::fs::read(dir.join(format!("{UDID}.plist"))).unwrap(),
                record
            );
        }
        c.delete_pair_record(UDID).unwrap();
        assert_eq!(c.read_pair_record(UDID).unwrap(), None);
        assert!(matches!(
            c.delete_pair_record(UDID),
            Err(MuxdError::Refused { code: 2, .. })
        ));
        assert!(matches!(
            c.save_pair_record("../escape", None, b"x"),
            Err(MuxdError::Refused { code: 22, .. })
        ));
    }
}

#[test]
fn buid_persists_in_the_pair_record_directory() {
    let dir = tempfile::tempdir().unwrap();
    let a = server(Some(dir.path().to_path_buf()))
        .1
        .read_buid()
        .unwrap();
    let b = server(Some(dir.path().to_path_buf()))
        .1
        .read_buid()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn connect_gives_a_raw_stream_to_the_port() {
    let (_s, c) = server(None);
    let dev = c.device(UDID).unwrap();
    assert_eq!(dev.udid(), UDID);
    let mut st = dev.connect(ECHO_PORT).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    // Chunk by chunk, so the echo never has more in flight than the socket buffers hold.
    for chunk in data.chunks(8192) {
        st.write_all(chunk).unwrap();
        let mut got = vec![0u8; chunk.len()];
        st.read_exact(&mut got).unwrap();
        assert_eq!(got, chunk);
    }
}

#[test]
fn service_that_speaks_first_is_held_until_the_reply_is_out() {
    let (_s, c) = server(None);
    let id = c.list_devices().unwrap()[0].device_id;
    for _ in 0..20 {
        let mut st = c.connect(id, GREETER_PORT).unwrap();
        let mut b = [0u8; 11];
        st.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello first");
    }
}

#[test]
fn unknown_port_is_refused_and_unknown_device_is_baddev() {
    let (_s, c) = server(None);
    let id = c.list_devices().unwrap()[0].device_id;
    let e = c.connect(id, 1234).err().unwrap();
    assert!(matches!(e, MuxdError::Refused { code: 3, .. }), "{e}");
    let e = c.connect(id + 100, ECHO_PORT).err().unwrap();
    assert!(matches!(e, MuxdError::Refused { code: 2, .. }), "{e}");
    let io: std::io::Error = c.connect(id, 1234).err().unwrap().into();
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn listen_reports_attach_detach_and_paired() {
    let (s, c) = server(None);
    let mut ev = c.listen().unwrap();
    ev.set_timeout(Some(Duration::from_secs(10))).unwrap();
    let first = ev.next_event().unwrap();
    let MuxdEvent::Attached(info) = first else {
        panic!("{first:?}")
    };
    assert_eq!(info.udid, UDID);
    let h = s.handle();
    let id2 = h.attach(device("second-device-0001"));
    match ev.next_event().unwrap() {
        MuxdEvent::Attached(i) => {
            assert_eq!(i.device_id, id2);
            assert_eq!(i.udid, "second-device-0001");
        }
        other => panic!("{other:?}"),
    }
    c.save_pair_record("second-device-0001", Some(id2), b"rec")
        .unwrap();
    assert_eq!(
        ev.next_event().unwrap(),
        MuxdEvent::Paired { device_id: id2 }
    );
    assert!(h.detach("second-device-0001"));
    assert_eq!(
        ev.next_event().unwrap(),
        MuxdEvent::Detached { device_id: id2 }
    );
    assert_eq!(c.list_devices().unwrap().len(), 1);
}

fn raw(s: &MuxdServer) -> std::net::TcpStream {
    let ListenAddr::Tcp(a) = s.local_addr() else {
        unreachable!()
    };
    let t = std::net::TcpStream::connect(a).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t
}

#[test]
fn legacy_binary_connect_works() {
    let (s, c) = server(None);
    let id = c.list_devices().unwrap()[0].device_id;
    let mut t = raw(&s);
    let mut body = id.to_le_bytes().to_vec();
    body.extend_from_slice(&ECHO_PORT.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    t.write_all(&muxd::encode_message(0, muxd::message::CONNECT, 5, &body))
        .unwrap();
    let (h, b) = muxd::read_message(&mut t, muxd::MAX_MESSAGE_LEN).unwrap();
    assert_eq!((h.version, h.message, h.tag), (0, muxd::message::RESULT, 5));
    assert_eq!(b, 0u32.to_le_bytes());
    t.write_all(b"ping").unwrap();
    let mut r = [0u8; 4];
    t.read_exact(&mut r).unwrap();
    assert_eq!(&r, b"ping");
}

#[test]
fn replies_echo_the_tag_and_unknown_requests_get_result_1() {
    let (s, _c) = server(None);
    let mut t = raw(&s);
    let mut d = plist::Dictionary::new();
    d.insert("MessageType".into(), "ListListenersPlease".into());
    t.write_all(&muxd::encode_plist(41, &plist::Value::Dictionary(d)))
        .unwrap();
    let (h, b) = muxd::read_message(&mut t, muxd::MAX_MESSAGE_LEN).unwrap();
    assert_eq!((h.version, h.message, h.tag), (1, 8, 41));
    let reply = muxd::decode_plist(&b).unwrap();
    assert_eq!(reply.get("Number").unwrap().as_unsigned_integer(), Some(1));
    assert!(std::str::from_utf8(&b).unwrap().starts_with("<?xml"));
    // Unknown header version → BADVERSION.
    t.write_all(&muxd::encode_message(7, 8, 42, b"")).unwrap();
    let (h, b) = muxd::read_message(&mut t, muxd::MAX_MESSAGE_LEN).unwrap();
    assert_eq!((h.message, h.tag), (muxd::message::RESULT, 42));
    assert_eq!(b, 6u32.to_le_bytes());
}

#[test]
fn oversized_request_is_rejected_without_reading_it() {
    let (s, c) = server(None);
    let mut t = raw(&s);
    let mut hdr = Vec::new();
    muxd::Header {
        length: 10 * 1024 * 1024,
        version: 1,
        message: 8,
        tag: 1,
    }
    .encode(&mut hdr);
    t.write_all(&hdr).unwrap();
    let mut b = [0u8; 1];
    // The server drops the connection instead of waiting for 10 MiB.
    assert!(matches!(t.read(&mut b), Ok(0) | Err(_)));
    // And keeps serving others.
    assert_eq!(c.list_devices().unwrap().len(), 1);
}

#[test]
fn unix_socket_listener_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mux.sock");
    let s = MuxdServer::bind(&ListenAddr::Unix(path.clone()), vec![device(UDID)], None).unwrap();
    assert_eq!(s.client_address(), format!("UNIX:{}", path.display()));
    let c = MuxdClient::new(MuxdAddr::Unix(path.clone()));
    assert_eq!(c.list_devices().unwrap()[0].udid, UDID);
    let mut st = c
        .connect(c.list_devices().unwrap()[0].device_id, ECHO_PORT)
        .unwrap();
    st.write_all(b"abc").unwrap();
    let mut r = [0u8; 3];
    st.read_exact(&mut r).unwrap();
    assert_eq!(&r, b"abc");
    s.shutdown();
    assert!(!path.exists());
}

#[test]
fn client_count_is_capped() {
    let (s, c) = server(None);
    let ListenAddr::Tcp(a) = s.local_addr() else {
        unreachable!()
    };
    // Idle clients up to the cap; each is known to be served once it answers a request.
    let mut idle = Vec::new();
    for _ in 0..muxd::server::MAX_CLIENTS {
        let mut t = std::net::TcpStream::connect(a).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut d = plist::Dictionary::new();
        d.insert("MessageType".into(), "ReadBUID".into());
        t.write_all(&muxd::encode_plist(1, &plist::Value::Dictionary(d)))
            .unwrap();
        muxd::read_message(&mut t, muxd::MAX_MESSAGE_LEN).unwrap();
        idle.push(t);
    }
    assert!(
        c.list_devices().is_err(),
        "a client over the cap was served"
    );
    drop(idle);
    // Slots free up as the server notices the hang-ups.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.list_devices().is_err() {
        assert!(std::time::Instant::now() < deadline, "slots never freed");
    }
}
