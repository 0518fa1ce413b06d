//! lockdownd traffic on arbitrary bytes: the bounded plist frame decoder (binary expansion and
//! XML nesting caps), the device side's request parsing, and the host's client reading replies
//! (QueryType, GetValue, StartService) from a stream of fuzzed frames: no panic, bounded memory.
#![no_main]

mod replay;

use cradle::lockdown::protocol::{check_reply, parse_request, MAX_LOCKDOWN_FRAME};
use cradle::lockdown::LockdownClient;
use cradle::plist_frame::{decode_body, read_frame_max};
use libfuzzer_sys::fuzz_target;
use replay::Replay;

fuzz_target!(|data: &[u8]| {
    // The body alone, as every framed service decodes it.
    if let Ok(v) = decode_body(data) {
        if let Ok(req) = parse_request(v.clone()) {
            let _ = req.str("Key");
            let _ = req.str("Domain");
        }
        for name in ["QueryType", "GetValue", "StartSession", "StartService", "Pair"] {
            let _ = check_reply(name, v.clone());
        }
    }
    // A stream of frames, as lockdownd reads requests.
    let mut r = data;
    for _ in 0..8 {
        match read_frame_max(&mut r, MAX_LOCKDOWN_FRAME) {
            Ok(v) => {
                let _ = parse_request(v);
            }
            Err(_) => break,
        }
    }
    // The host's client reading the device's replies.
    let mut client = LockdownClient::from_stream(
        Box::new(Replay::new(data)),
        "00008030-001A2B3C4D5E6F70",
        "fuzz",
    );
    let _ = client.query_type();
    let _ = client.get_value(None, None);
    let _ = client.get_value(Some("com.apple.mobile.backup"), Some("WillEncrypt"));
    let _ = client.start_service("com.apple.mobilebackup2", false);
});
