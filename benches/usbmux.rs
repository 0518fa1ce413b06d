//! usbmux throughput: bytes pushed host → device (and back) through the protocol cores alone,
//! and through the threaded links over the in-memory pipe. Prints MB/s.
//!
//! `cargo bench --bench usbmux`; `CRADLE_BENCH_MIB` sets the amount (default 1024 MiB).

use cradle::sim::device::PortTable;
use cradle::transport::{BoxStream, DeviceConnector};
use cradle::usb::mux::{MuxCore, MuxEvent, StreamError};
use cradle::usb::{mem_pipe_pair, MuxDevice, MuxHost};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

/// Moves every queued transfer from `from` into `to`.
fn pump(from: &mut MuxCore, to: &mut MuxCore, now: Instant) {
    while let Some(t) = from.poll_transmit() {
        to.handle_transfer(&t, now).expect("clean packet");
    }
}

/// One thread, no pipe: the cost of the protocol itself (framing, windows, ACKs, copies).
fn cores(total: usize, host_to_device: bool) -> f64 {
    let now = Instant::now();
    let mut host = MuxCore::host();
    let mut dev = MuxCore::device();
    let h = host.connect(62078).unwrap();
    pump(&mut host, &mut dev, now);
    pump(&mut dev, &mut host, now);
    pump(&mut host, &mut dev, now);
    let mut d = None;
    while let Some(e) = dev.poll_event() {
        if let MuxEvent::Incoming { conn, .. } = e {
            dev.accept(conn).unwrap();
            d = Some(conn);
        }
    }
    let d = d.expect("incoming connection");
    pump(&mut dev, &mut host, now);
    pump(&mut host, &mut dev, now);
    let (mut tx, mut rx, txc, rxc) = if host_to_device {
        (host, dev, h, d)
    } else {
        (dev, host, d, h)
    };
    let chunk = vec![0x5Au8; 256 * 1024];
    let mut buf = vec![0u8; 256 * 1024];
    let (mut sent, mut got) = (0, 0);
    let start = Instant::now();
    while got < total {
        if sent < total {
            let n = (total - sent).min(chunk.len());
            match tx.send(txc, &chunk[..n]) {
                Ok(k) => sent += k,
                Err(StreamError::Blocked) => {}
                Err(e) => panic!("{e}"),
            }
        }
        pump(&mut tx, &mut rx, now);
        loop {
            match rx.recv(rxc, &mut buf) {
                Ok(k) => got += k,
                Err(StreamError::Blocked) => break,
                Err(e) => panic!("{e}"),
            }
        }
        pump(&mut rx, &mut tx, now);
        while tx.poll_event().is_some() {}
        while rx.poll_event().is_some() {}
    }
    mb_per_s(total, start.elapsed().as_secs_f64())
}

/// Threads, in-memory pipe, blocking streams: what lockdown and backup2 see.
fn links(total: usize) -> (f64, f64) {
    let ports = Arc::new(PortTable::new());
    ports.bind(
        1,
        Arc::new(|mut s: BoxStream| {
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            let _ = n;
        }),
    );
    let dl = total;
    ports.bind(
        2,
        Arc::new(move |mut s: BoxStream| {
            let chunk = vec![0xA5u8; 256 * 1024];
            let mut sent = 0;
            while sent < dl {
                let n = chunk.len().min(dl - sent);
                if s.write_all(&chunk[..n]).is_err() {
                    return;
                }
                sent += n;
            }
        }),
    );
    let (h, d) = mem_pipe_pair();
    let _device = MuxDevice::start(d, ports).unwrap();
    let host = MuxHost::start(h, "bench").unwrap();

    let mut up = host.connect(1).unwrap();
    let chunk = vec![0x5Au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        up.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    let up_rate = mb_per_s(total, start.elapsed().as_secs_f64());
    drop(up);

    let mut down = host.connect(2).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let mut got = 0;
    while got < total {
        let n = down.read(&mut buf).unwrap();
        assert!(n > 0);
        got += n;
    }
    let down_rate = mb_per_s(total, start.elapsed().as_secs_f64());
    (up_rate, down_rate)
}

fn main() {
    // `cargo test --all-targets` runs benchmark binaries too, without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("usbmux benchmark: run with `cargo bench --bench usbmux`");
        return;
    }
    // `cargo bench` passes `--bench`; other arguments select nothing here.
    let mib: usize = std::env::var("CRADLE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let total = mib * 1024 * 1024;
    println!("usbmux: {mib} MiB per direction");
    println!(
        "  cores only, host -> device: {:8.0} MB/s",
        cores(total, true)
    );
    println!(
        "  cores only, device -> host: {:8.0} MB/s",
        cores(total, false)
    );
    let (up, down) = links(total);
    println!("  threaded links over the in-memory pipe, host -> device: {up:8.0} MB/s");
    println!("  threaded links over the in-memory pipe, device -> host: {down:8.0} MB/s");
}
