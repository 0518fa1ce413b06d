//! DeviceLink raw file streams (both directions) and DeviceLink message decoding on arbitrary
//! bytes: no panic, no unbounded allocation, always terminates.
#![no_main]

use cradle::backup2::file_stream::{FileStreamReader, StreamEvent, StreamKind};
use cradle::backup2::messages::{DeviceMessage, HostMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let kind = if sel & 1 == 0 {
        StreamKind::Upload
    } else {
        StreamKind::Download
    };
    // Vary the caller's buffer size too: data is handed out in pieces of at most this size.
    let mut buf = vec![0u8; 1 + usize::from(sel >> 1) * 31];
    let mut r = FileStreamReader::new(rest, kind);
    // Every step consumes at least one byte or ends the stream.
    for _ in 0..=rest.len() {
        match r.next(&mut buf) {
            Ok(StreamEvent::End) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if let Ok(v) = cradle::plist_frame::decode_body(rest) {
        let _ = DeviceMessage::decode(&v);
        let _ = HostMessage::decode(&v);
    }
});
