//! springboardservices, host side: an app's home-screen icon as PNG bytes, which Info.plist
//! stores as `PlaceholderIcon` for apps that have both ApplicationSINF and iTunesMetadata.
//!
//! Host → `{command:"getIconPNGData", bundleId}`; device → `{pngData:<data>}`.

use crate::plist_frame::{read_frame_max, write_frame, FrameError, PlistFormat};
use crate::transport::BoxStream;
use std::time::Duration;

/// Largest springboardservices reply accepted (an icon is tens of kilobytes).
pub const MAX_SPRINGBOARD_FRAME_LEN: u32 = 4 * 1024 * 1024;
/// Read timeout set on the connection.
pub const SPRINGBOARD_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest bundle identifier sent.
pub const MAX_BUNDLE_ID_LEN: usize = 1024;

/// Errors of the host springboardservices client.
#[derive(Debug, thiserror::Error)]
pub enum SpringboardError {
    /// The bundle identifier cannot be sent (empty or too long). A local fault.
    #[error("bundle identifier {0:?} cannot be sent")]
    InvalidBundleId(String),
    /// The reply has no `pngData` (an `Error` from the device is named when present).
    #[error("springboardservices: no icon for {bundle_id}{}", error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    NoIcon {
        bundle_id: String,
        error: Option<String>,
    },
    /// A frame could not be read (too long, not a plist, connection closed, i/o).
    #[error("springboardservices: {0}")]
    Frame(#[from] FrameError),
}

/// The host side of one springboardservices connection.
pub struct SpringboardClient {
    stream: BoxStream,
}

impl SpringboardClient {
    /// A client over a started `com.apple.springboardservices` connection.
    pub fn new(stream: BoxStream) -> Self {
        Self { stream }
    }

    /// The PNG bytes of `bundle_id`'s icon.
    pub fn icon_png(&mut self, bundle_id: &str) -> Result<Vec<u8>, SpringboardError> {
        if bundle_id.is_empty() || bundle_id.len() > MAX_BUNDLE_ID_LEN {
            return Err(SpringboardError::InvalidBundleId(
                bundle_id.chars().take(64).collect(),
            ));
        }
        let mut req = plist::Dictionary::new();
        req.insert("command".into(), "getIconPNGData".into());
        req.insert("bundleId".into(), bundle_id.into());
        self.stream
            .set_read_timeout(Some(SPRINGBOARD_READ_TIMEOUT))
            .map_err(FrameError::Io)?;
        write_frame(&mut self.stream, &req.into(), PlistFormat::Xml).map_err(FrameError::Io)?;
        let v = read_frame_max(&mut self.stream, MAX_SPRINGBOARD_FRAME_LEN)?;
        let d = v.as_dictionary();
        match d.and_then(|d| d.get("pngData")).and_then(|p| p.as_data()) {
            Some(png) => Ok(png.to_vec()),
            None => Err(SpringboardError::NoIcon {
                bundle_id: bundle_id.to_string(),
                error: d
                    .and_then(|d| d.get("Error"))
                    .and_then(|e| e.as_string())
                    .map(|s| s.chars().take(256).collect()),
            }),
        }
    }
}
