//! Apple's local backup format (Finder, iTunes, idevicebackup2), read and written.
//! Keybag and key derivation, Manifest.db and MBFile records, per-file AES-CBC, the three plists.

pub mod bplist;
pub mod cbc_stream;
pub mod folder;
pub mod kdf;
pub mod keybag;
pub mod keywrap;
pub mod manifest_db;
pub mod mbfile;
pub mod plists;

use sha1::{Digest, Sha1};

/// The fileID of a backup entry: lower-case hex SHA-1 of `"<domain>-<relativePath>"`.
/// Data files live at `<xx>/<fileID>`, `xx` being its first two characters.
pub fn file_id(domain: &str, relative_path: &str) -> String {
    let mut h = Sha1::new();
    h.update(domain.as_bytes());
    h.update(b"-");
    h.update(relative_path.as_bytes());
    hex::encode(h.finalize())
}

/// True if `id` has the only shape a fileID may have: 40 lower-case hex characters.
/// Anything else (a `..`, a slash) is refused before it is used as a path.
pub fn is_valid_file_id(id: &str) -> bool {
    id.len() == 40
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Path of a file under the shared public test data (`../shared/testdata` beside the clone; from a
/// worktree in a subfolder, one level further up; `CRADLE_TESTDATA` overrides both).
#[cfg(test)]
pub(crate) fn testdata(rel: &str) -> std::path::PathBuf {
    use std::path::PathBuf;
    let root = std::env::var_os("CRADLE_TESTDATA")
        .map(PathBuf::from)
        .or_else(|| {
            let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            crate_dir
                .ancestors()
                .skip(1)
                .take(2)
                .map(|d| d.join("shared/testdata"))
                .find(|d| d.is_dir())
        })
        .unwrap_or_else(|| PathBuf::from("../shared/testdata"));
    root.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_file_ids() {
        assert_eq!(
            file_id("HomeDomain", "Library/SMS/sms.db"),
            "3d0d7e5fb2ce288813306e4d4636395e047a3d28"
        );
        assert_eq!(
            file_id(
                "CameraRollDomain",
                "Media/PhotoData/Thumbnails/V2/DCIM/102APPLE"
            ),
            "ae94e0607ca39a88c18aca095cb5b4f8471291a0"
        );
        assert_eq!(
            file_id("KeychainDomain", "keychain-backup.plist"),
            "51a4616e576dd33cd2abadfea874eb8ff246bf0e"
        );
    }

    #[test]
    fn file_id_shape() {
        assert!(is_valid_file_id("51a4616e576dd33cd2abadfea874eb8ff246bf0e"));
        assert!(!is_valid_file_id(
            "../a616e576dd33cd2abadfea874eb8ff246bf0e0"
        ));
        assert!(!is_valid_file_id(
            "51A4616E576DD33CD2ABADFEA874EB8FF246BF0E"
        ));
    }
}
