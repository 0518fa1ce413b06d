//! MBFile archives (Manifest.db `file` blobs) on arbitrary bytes: decoding never panics, and
//! whatever decodes re-encodes to an archive that decodes to the same record, stably.
#![no_main]

use cradle::ios_backup::mbfile::{decode_extended_attributes, MbFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_extended_attributes(data);
    let Ok(file) = MbFile::decode(data) else {
        return;
    };
    let encoded = file.encode();
    let again = MbFile::decode(&encoded).expect("our own encoding decodes");
    assert_eq!(again, file);
    assert_eq!(again.encode(), encoded, "encoding is stable");
});
