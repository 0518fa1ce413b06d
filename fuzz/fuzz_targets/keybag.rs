//! Fuzzes the keybag codec: any input either fails with a typed error or parses into a keybag
//! whose encoding is the input itself and parses back to the same keybag.
#![no_main]

use cradle::ios_backup::keybag::Keybag;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kb) = Keybag::decode(data) {
        let bytes = kb.to_bytes();
        assert_eq!(bytes, data, "encoding differs from the parsed input");
        let again = Keybag::decode(&bytes).expect("re-parsing our own encoding failed");
        assert_eq!(again, kb);
        // Unlocking with a KEK exercises the class checks and RFC 3394 unwrap on hostile input.
        let _ = kb.kdf_params();
        let _ = kb.unlock_with_kek(&[0u8; 32]);
    }
});
