//! Manifest.plist, Status.plist and Info.plist parsing on arbitrary bytes: no panic, bounded
//! work (shared binary objects and deep nesting are capped), and accepted input round-trips.
#![no_main]

use cradle::ios_backup::plists::{InfoPlist, ManifestPlist, StatusPlist};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ManifestPlist::from_bytes(data) {
        let bytes = m.to_bytes();
        assert_eq!(ManifestPlist::from_bytes(&bytes).expect("re-reads").to_bytes(), bytes);
    }
    if let Ok(s) = StatusPlist::from_bytes(data) {
        let bytes = s.to_bytes();
        assert_eq!(StatusPlist::from_bytes(&bytes).expect("re-reads").to_bytes(), bytes);
    }
    let _ = InfoPlist::from_bytes(data);
});
