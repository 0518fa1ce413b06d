//! installation_proxy, host side: the Browse command that lists the user's apps for Info.plist
//! (`Applications`, `Installed Applications`), with every reply and the whole list capped.
//!
//! Host → `{Command:"Browse", ClientOptions:{ApplicationType:"User", ReturnAttributes:[…]}}`;
//! device → `{Status:"BrowsingApplications", CurrentList:[…], …}` zero or more times, then
//! `{Status:"Complete"}`. A reply with `Error` ends the command with a failure.

use crate::plist_frame::{read_frame_max, write_frame, FrameError, PlistFormat};
use crate::transport::BoxStream;
use std::time::Duration;

/// Largest installation_proxy reply accepted. A batch of app dicts with SINF and iTunesMetadata
/// can reach megabytes.
pub const MAX_INSTPROXY_FRAME_LEN: u32 = 16 * 1024 * 1024;
/// Most apps accepted from one Browse.
pub const MAX_BROWSE_APPS: usize = 10_000;
/// Most replies accepted for one Browse (a device sends batches of a few apps each).
pub const MAX_BROWSE_REPLIES: usize = 10_000;
/// Read timeout set on the connection: a device answers Browse within seconds.
pub const INSTPROXY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The attributes a backup host asks for.
pub const BACKUP_APP_ATTRIBUTES: [&str; 3] =
    ["CFBundleIdentifier", "ApplicationSINF", "iTunesMetadata"];

/// Errors of the host installation_proxy client.
#[derive(Debug, thiserror::Error)]
pub enum InstProxyError {
    /// The device reported a failure (`Error`, with `ErrorDescription` when given).
    #[error("installation_proxy Browse failed on the device: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Device {
        error: String,
        description: Option<String>,
    },
    /// A reply is not a dict, has no usable Status, or a CurrentList that is not a list of dicts.
    #[error("installation_proxy: malformed reply: {0}")]
    Malformed(&'static str),
    /// The device sent more apps or replies than accepted.
    #[error("installation_proxy: more than {max} {what}")]
    TooMany { what: &'static str, max: usize },
    /// A frame could not be read (too long, not a plist, connection closed, i/o).
    #[error("installation_proxy: {0}")]
    Frame(#[from] FrameError),
}

/// The host side of one installation_proxy connection.
pub struct InstallationProxyClient {
    stream: BoxStream,
}

impl InstallationProxyClient {
    /// A client over a started `com.apple.mobile.installation_proxy` connection.
    pub fn new(stream: BoxStream) -> Self {
        Self { stream }
    }

    /// Lists the user's apps, each a dict holding (at most) the requested `attributes`.
    pub fn browse_user_apps(
        &mut self,
        attributes: &[&str],
    ) -> Result<Vec<plist::Dictionary>, InstProxyError> {
        let mut opts = plist::Dictionary::new();
        opts.insert("ApplicationType".into(), "User".into());
        opts.insert(
            "ReturnAttributes".into(),
            plist::Value::Array(attributes.iter().map(|a| (*a).into()).collect()),
        );
        let mut req = plist::Dictionary::new();
        req.insert("Command".into(), "Browse".into());
        req.insert("ClientOptions".into(), opts.into());
        self.stream
            .set_read_timeout(Some(INSTPROXY_READ_TIMEOUT))
            .map_err(FrameError::Io)?;
        write_frame(&mut self.stream, &req.into(), PlistFormat::Xml).map_err(FrameError::Io)?;

        let mut apps = Vec::new();
        for _ in 0..MAX_BROWSE_REPLIES {
            let v = read_frame_max(&mut self.stream, MAX_INSTPROXY_FRAME_LEN)?;
            let d = v
                .as_dictionary()
                .ok_or(InstProxyError::Malformed("reply is not a dict"))?;
            if let Some(e) = d.get("Error") {
                return Err(InstProxyError::Device {
                    error: e
                        .as_string()
                        .unwrap_or("(not a string)")
                        .chars()
                        .take(256)
                        .collect(),
                    description: d
                        .get("ErrorDescription")
                        .and_then(|x| x.as_string())
                        .map(|s| s.chars().take(1024).collect()),
                });
            }
            if let Some(list) = d.get("CurrentList") {
                let list = list
                    .as_array()
                    .ok_or(InstProxyError::Malformed("CurrentList is not a list"))?;
                if apps.len() + list.len() > MAX_BROWSE_APPS {
                    return Err(InstProxyError::TooMany {
                        what: "apps",
                        max: MAX_BROWSE_APPS,
                    });
                }
                for app in list {
                    let app = app
                        .as_dictionary()
                        .ok_or(InstProxyError::Malformed("an app is not a dict"))?;
                    apps.push(app.clone());
                }
            }
            match d.get("Status").and_then(|s| s.as_string()) {
                Some("Complete") => return Ok(apps),
                Some(_) => {}
                None => return Err(InstProxyError::Malformed("reply without Status")),
            }
        }
        Err(InstProxyError::TooMany {
            what: "replies",
            max: MAX_BROWSE_REPLIES,
        })
    }
}
