//! usbmux packets and whole transfers on arbitrary bytes: the codec never panics, and host and
//! device cores (fresh, and with an open connection) stay within their bounds whatever arrives.
#![no_main]

use cradle::usb::mux::packet::{HeaderKind, Packet};
use cradle::usb::mux::{MuxCore, RECV_BUFFER_CAP};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    for kind in [HeaderKind::V1, HeaderKind::V2] {
        if let Ok(p) = Packet::decode(data, kind) {
            // What decodes re-encodes to the same bytes when the length field was honest.
            let again = p.to_vec();
            let _ = Packet::decode(&again, kind);
        }
    }
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut cores = vec![MuxCore::device(), MuxCore::host()];
    // A host that finished its handshake with an open connection, so TCP paths run too.
    let mut host = MuxCore::host();
    let mut dev = MuxCore::device();
    let conn = host.connect(62078).ok();
    for _ in 0..4 {
        while let Some(t) = host.poll_transmit() {
            let _ = dev.handle_transfer(&t, now);
        }
        while let Some(e) = dev.poll_event() {
            if let cradle::usb::mux::MuxEvent::Incoming { conn, .. } = e {
                let _ = dev.accept(conn);
            }
        }
        while let Some(t) = dev.poll_transmit() {
            let _ = host.handle_transfer(&t, now);
        }
    }
    cores.push(host);
    // Split the input into transfers at sizes chosen by the selector byte.
    let step = 1 + usize::from(sel) * 7;
    for core in &mut cores {
        for chunk in rest.chunks(step) {
            let _ = core.handle_transfer(chunk, now);
            while core.poll_transmit().is_some() {}
            while core.poll_event().is_some() {}
        }
        core.handle_timeout(now + Duration::from_millis(50));
        while core.poll_transmit().is_some() {}
        if let Some(c) = conn {
            assert!(core.readable_bytes(c) <= RECV_BUFFER_CAP);
            let mut buf = [0u8; 4096];
            let _ = core.recv(c, &mut buf);
        }
    }
});
