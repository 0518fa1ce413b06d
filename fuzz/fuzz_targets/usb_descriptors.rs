//! USB descriptor blobs and usbmuxd socket messages on arbitrary bytes: bounded, never panic.
#![no_main]

use cradle::usb::descriptors::{choose_configuration, parse_blob, Configuration};
use cradle::usb::muxd::{decode_plist, read_message, MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, configs)) = parse_blob(data) {
        let _ = choose_configuration(&configs);
    }
    if let Ok(c) = Configuration::parse(data) {
        let _ = c.mux_interface();
    }
    if let Ok((_, body)) = read_message(&mut &data[..], MAX_MESSAGE_LEN) {
        let _ = decode_plist(&body);
    }
});
