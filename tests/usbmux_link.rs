//! The box's usbmux host against the simulated device over the in-memory pipe: echo, many
//! connections at once, 32 MiB each way, refusals, timeouts, and pulling the cable mid-transfer.

use cradle::sim::device::PortTable;
use cradle::transport::{BoxStream, DeviceConnector};
use cradle::usb::{mem_pipe_pair, MuxDevice, MuxHost, MuxLinkError};
use std::io::{ErrorKind, Read, Write};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

const UDID: &str = "00008030-001A35E22E88802E";
const ECHO: u16 = 62078;
const SINK: u16 = 1000;
const SOURCE: u16 = 1001;
const GREETER: u16 = 1002;
const SILENT: u16 = 1003;
const BIG: usize = 32 * 1024 * 1024;

/// Deterministic test bytes.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn fnv(h: &mut u64, data: &[u8]) {
    for &b in data {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

fn ports(events: mpsc::Sender<String>) -> Arc<PortTable> {
    let t = Arc::new(PortTable::new());
    t.bind(
        ECHO,
        Arc::new(|mut s: BoxStream| {
            let mut buf = vec![0u8; 70_000];
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
        }),
    );
    // Reads a u64be length, then that many bytes; answers with the FNV hash.
    t.bind(
        SINK,
        Arc::new(|mut s: BoxStream| {
            let mut len = [0u8; 8];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let mut left = u64::from_be_bytes(len) as usize;
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            let mut buf = vec![0u8; 100_000];
            while left > 0 {
                let want = left.min(buf.len());
                match s.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        fnv(&mut h, &buf[..n]);
                        left -= n;
                    }
                }
            }
            let _ = s.write_all(&h.to_be_bytes());
        }),
    );
    // Reads a u64be length, then writes that many pattern bytes.
    let ev = events.clone();
    t.bind(
        SOURCE,
        Arc::new(move |mut s: BoxStream| {
            let mut len = [0u8; 8];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let total = u64::from_be_bytes(len) as usize;
            let mut off = 0;
            let mut chunk = vec![0u8; 200_000];
            while off < total {
                let n = chunk.len().min(total - off);
                for (i, b) in chunk[..n].iter_mut().enumerate() {
                    *b = pattern(off + i);
                }
                if let Err(e) = s.write_all(&chunk[..n]) {
                    let _ = ev.send(format!("source write failed: {:?}", e.kind()));
                    return;
                }
                off += n;
            }
            let _ = ev.send("source done".into());
        }),
    );
    // Speaks first, like mobilebackup2.
    t.bind(
        GREETER,
        Arc::new(|mut s: BoxStream| {
            let _ = s.write_all(b"DLMessageVersionExchange");
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        }),
    );
    // Never answers; reports when the host closes.
    t.bind(
        SILENT,
        Arc::new(move |mut s: BoxStream| {
            let mut b = [0u8; 16];
            let r = s.read(&mut b);
            let _ = events.send(format!("silent saw {r:?}"));
        }),
    );
    t
}

struct Rig {
    host: Arc<MuxHost>,
    _device: Arc<MuxDevice>,
    control: cradle::usb::MemPipeControl,
    events: mpsc::Receiver<String>,
}

fn rig() -> Rig {
    let (tx, rx) = mpsc::channel();
    let (h, d) = mem_pipe_pair();
    let control = h.control();
    let device = MuxDevice::start(d, ports(tx)).unwrap();
    let host = MuxHost::start(h, UDID).unwrap();
    Rig {
        host,
        _device: device,
        control,
        events: rx,
    }
}

fn upload(s: &mut BoxStream, total: usize) -> u64 {
    s.write_all(&(total as u64).to_be_bytes()).unwrap();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut chunk = vec![0u8; 300_000];
    let mut off = 0;
    while off < total {
        let n = chunk.len().min(total - off);
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern(off + i);
        }
        fnv(&mut h, &chunk[..n]);
        s.write_all(&chunk[..n]).unwrap();
        off += n;
    }
    h
}

#[test]
fn echo_round_trip_and_udid() {
    let r = rig();
    assert_eq!(r.host.udid(), UDID);
    let mut s = r.host.connect(ECHO).unwrap();
    for size in [1usize, 100, 49_116, 49_117, 65_536, 131_072] {
        let data: Vec<u8> = (0..size).map(pattern).collect();
        s.write_all(&data).unwrap();
        let mut got = vec![0u8; size];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, data, "size {size}");
    }
}

#[test]
fn many_concurrent_connections() {
    let r = rig();
    let host = r.host.clone();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let host = host.clone();
            std::thread::spawn(move || {
                let mut s = host.connect(ECHO).unwrap();
                for round in 0..40 {
                    let data: Vec<u8> = (0..20_000).map(|i| pattern(i + w * 7 + round)).collect();
                    s.write_all(&data).unwrap();
                    let mut got = vec![0u8; data.len()];
                    s.read_exact(&mut got).unwrap();
                    assert_eq!(got, data);
                }
            })
        })
        .collect();
    // Big transfers run alongside the echoes.
    let mut up = host.connect(SINK).unwrap();
    let sent = upload(&mut up, 4 * 1024 * 1024);
    let mut h = [0u8; 8];
    up.read_exact(&mut h).unwrap();
    assert_eq!(u64::from_be_bytes(h), sent);
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn thirty_two_mib_each_way() {
    let r = rig();
    let mut up = r.host.connect(SINK).unwrap();
    let sent = upload(&mut up, BIG);
    let mut h = [0u8; 8];
    up.read_exact(&mut h).unwrap();
    assert_eq!(u64::from_be_bytes(h), sent);

    let mut down = r.host.connect(SOURCE).unwrap();
    down.write_all(&(BIG as u64).to_be_bytes()).unwrap();
    let mut buf = vec![0u8; 150_000];
    let mut got = 0;
    while got < BIG {
        let n = down.read(&mut buf).unwrap();
        assert!(n > 0, "early EOF at {got}");
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(got + i), "byte {}", got + i);
        }
        got += n;
    }
    assert_eq!(r.events.recv().unwrap(), "source done");
    // The service finished and its stream dropped: the host sees the end.
    assert_eq!(down.read(&mut buf).unwrap(), 0);
}

#[test]
fn slow_reader_holds_the_writer_back() {
    let r = rig();
    let mut down = r.host.connect(SOURCE).unwrap();
    down.write_all(&(8u64 * 1024 * 1024).to_be_bytes()).unwrap();
    // Not reading: the source must stall on the window instead of finishing.
    assert!(r.events.recv_timeout(Duration::from_millis(300)).is_err());
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < 8 * 1024 * 1024 {
        got += down.read(&mut buf).unwrap();
    }
    assert_eq!(r.events.recv().unwrap(), "source done");
}

#[test]
fn refused_port_and_service_that_speaks_first() {
    let r = rig();
    let e = r.host.connect(4242).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    for _ in 0..10 {
        let mut s = r.host.connect(GREETER).unwrap();
        let mut b = [0u8; 24];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"DLMessageVersionExchange");
    }
}

#[test]
fn read_timeout_is_honoured_and_drop_closes() {
    let r = rig();
    let mut s = r.host.connect(SILENT).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = [0u8; 4];
    let e = s.read(&mut b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    drop(s);
    // The device side sees end of stream once the host's RST arrives.
    assert_eq!(r.events.recv().unwrap(), "silent saw Ok(0)");
}

#[test]
fn unplug_mid_transfer_fails_cleanly() {
    let r = rig();
    let mut down = r.host.connect(SOURCE).unwrap();
    down.write_all(&(BIG as u64).to_be_bytes()).unwrap();
    let mut buf = vec![0u8; 100_000];
    let mut got = 0;
    while got < 2 * 1024 * 1024 {
        got += down.read(&mut buf).unwrap();
    }
    r.control.unplug();
    let err = loop {
        match down.read(&mut buf) {
            Ok(n) => assert!(n > 0),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::NotConnected);
    assert!(err.to_string().contains("disconnected"), "{err}");
    assert!(r.host.wait_detached(Duration::from_secs(10)));
    assert!(!r.host.is_attached());
    assert_eq!(
        r.host.connect(ECHO).err().unwrap().kind(),
        ErrorKind::NotConnected
    );
    assert!(down.write(b"x").is_err());
    // The device side's writer fails too.
    let msg = r.events.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(msg.starts_with("source write failed"), "{msg}");
}

#[test]
fn disconnect_after_some_bytes() {
    let (tx, _rx) = mpsc::channel();
    let (h, d) = mem_pipe_pair();
    h.control().disconnect_after(300_000);
    let _device = MuxDevice::start(d, ports(tx)).unwrap();
    let host = MuxHost::start(h, UDID).unwrap();
    let mut s = host.connect(SINK).unwrap();
    let mut res = Ok(());
    s.write_all(&(BIG as u64).to_be_bytes()).unwrap();
    let chunk = vec![7u8; 100_000];
    for _ in 0..100 {
        res = s.write_all(&chunk);
        if res.is_err() {
            break;
        }
    }
    let e = res.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotConnected, "{e}");
}

#[test]
fn start_on_an_unplugged_pipe_fails() {
    let (h, _d) = mem_pipe_pair();
    h.control().unplug();
    match MuxHost::start(h, UDID) {
        Err(MuxLinkError::Failed(why)) => assert!(why.contains("disconnected"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started on an unplugged pipe"),
    }
}
