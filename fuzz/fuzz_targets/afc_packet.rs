//! AFC packets from a hostile peer: the codec must never panic, a decoded packet must re-encode
//! to the same bytes, and the simulated device must answer or close on any byte stream.
#![no_main]

mod replay;

use cradle::services::afc::{
    decode_dir_listing, read_packet, AfcPacket, AfcReply, AfcRequest, FileInfo, MAX_AFC_PACKET_LEN,
};
use cradle::sim::services::{afc_handler, SimAfcFs};
use libfuzzer_sys::fuzz_target;
use replay::Replay;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if let Ok((p, used)) = AfcPacket::decode(data, MAX_AFC_PACKET_LEN) {
        let mut again = Vec::new();
        p.encode(&mut again);
        assert_eq!(&again[..], &data[..used]);
        let _ = AfcRequest::from_packet(&p);
        if let Ok(AfcReply::Data(d)) = AfcReply::from_packet(&p) {
            let _ = FileInfo::decode(&d);
            let _ = decode_dir_listing(&d);
        }
    }
    let _ = read_packet(&mut &data[..], MAX_AFC_PACKET_LEN);
    afc_handler(Arc::new(SimAfcFs::new()))(Box::new(Replay::new(data)));
});
