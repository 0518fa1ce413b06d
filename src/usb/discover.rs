//! Finding an iPhone on the USB bus without usbmuxd: enumerate Apple devices (vendor 0x05ac,
//! usbmux product ids), pick one by UDID, open its usbmux interface and start the host's mux.
//!
//! The choice is pure (`choose`) so it is tested without hardware; enumeration and opening are
//! the thin nusb edge.

use super::descriptors::{is_usbmux_product, udid_from_serial, APPLE_VENDOR_ID};
use super::link::{MuxHost, MuxLinkError};
use super::pipe::{NusbPipe, UsbOpenError};
use nusb::MaybeFuture;
use std::sync::Arc;

/// One Apple device seen on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbCandidate {
    pub vendor_id: u16,
    pub product_id: u16,
    /// The UDID derived from the serial number; `None` when the device reports none.
    pub udid: Option<String>,
    /// Bus and address, for messages.
    pub location: String,
}

impl UsbCandidate {
    /// Whether usbmuxd would talk to it (Apple vendor id, iPhone/iPad/iPod product id).
    pub fn is_usbmux_device(&self) -> bool {
        self.vendor_id == APPLE_VENDOR_ID && is_usbmux_product(self.product_id)
    }
}

/// Why no iPhone could be opened over USB.
#[derive(Debug, thiserror::Error)]
pub enum UsbDiscoverError {
    /// The bus could not be enumerated (no sysfs/usbfs, no permission): no phone is reachable.
    #[error("no iPhone found on USB (cannot list USB devices: {0})")]
    List(#[source] nusb::Error),
    /// No Apple device with a usbmux interface is plugged in.
    #[error("no iPhone found on USB")]
    NoDevice,
    /// No attached iPhone has the requested UDID.
    #[error("no iPhone with UDID {wanted} on USB (found: {})", found.join(", "))]
    NoSuchDevice { wanted: String, found: Vec<String> },
    /// Several iPhones are attached and none was named.
    #[error("{} iPhones on USB ({}): choose one with --udid", found.len(), found.join(", "))]
    Ambiguous { found: Vec<String> },
    /// Opening the device failed (permission, busy, mode switch).
    #[error("opening the iPhone at {location}: {source}")]
    Open {
        location: String,
        #[source]
        source: UsbOpenError,
    },
    /// The usbmux handshake failed.
    #[error("usbmux handshake with {udid}: {source}")]
    Link {
        udid: String,
        #[source]
        source: MuxLinkError,
    },
}

/// Picks the candidate to use: the one with `udid` when given, else the only one.
/// Returns its index in `all`.
pub fn choose(all: &[UsbCandidate], udid: Option<&str>) -> Result<usize, UsbDiscoverError> {
    let phones: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].is_usbmux_device())
        .collect();
    let names = || {
        phones
            .iter()
            .map(|&i| {
                all[i]
                    .udid
                    .clone()
                    .unwrap_or_else(|| format!("no serial at {}", all[i].location))
            })
            .collect::<Vec<_>>()
    };
    if phones.is_empty() {
        return Err(UsbDiscoverError::NoDevice);
    }
    match udid {
        Some(want) => phones
            .iter()
            .copied()
            .find(|&i| {
                all[i]
                    .udid
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(want))
            })
            .ok_or_else(|| UsbDiscoverError::NoSuchDevice {
                wanted: want.to_string(),
                found: names(),
            }),
        None if phones.len() == 1 => Ok(phones[0]),
        None => Err(UsbDiscoverError::Ambiguous { found: names() }),
    }
}

fn candidate(info: &nusb::DeviceInfo) -> UsbCandidate {
    UsbCandidate {
        vendor_id: info.vendor_id(),
        product_id: info.product_id(),
        udid: info.serial_number().map(udid_from_serial),
        location: format!("bus {} address {}", info.busnum(), info.device_address()),
    }
}

/// Lists the Apple devices on the bus.
pub fn list_apple_devices() -> Result<Vec<(UsbCandidate, nusb::DeviceInfo)>, UsbDiscoverError> {
    let list = nusb::list_devices()
        .wait()
        .map_err(UsbDiscoverError::List)?;
    Ok(list
        .filter(|i| i.vendor_id() == APPLE_VENDOR_ID)
        .map(|i| (candidate(&i), i))
        .collect())
}

/// Finds the iPhone (`udid`, or the only one), opens its usbmux interface and starts the host's
/// usbmux link over it: the result is a `DeviceConnector`.
pub fn open_usb_device(udid: Option<&str>) -> Result<Arc<MuxHost>, UsbDiscoverError> {
    let found = list_apple_devices()?;
    let cands: Vec<UsbCandidate> = found.iter().map(|(c, _)| c.clone()).collect();
    let i = choose(&cands, udid)?;
    let (cand, info) = &found[i];
    let pipe = NusbPipe::open(info).map_err(|source| UsbDiscoverError::Open {
        location: cand.location.clone(),
        source,
    })?;
    let udid = pipe.udid().to_string();
    MuxHost::start(pipe, &udid).map_err(|source| UsbDiscoverError::Link { udid, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pid: u16, udid: Option<&str>) -> UsbCandidate {
        UsbCandidate {
            vendor_id: APPLE_VENDOR_ID,
            product_id: pid,
            udid: udid.map(str::to_string),
            location: "bus 1 address 2".into(),
        }
    }

    #[test]
    fn choice_of_device() {
        let keyboard = UsbCandidate {
            vendor_id: APPLE_VENDOR_ID,
            product_id: 0x024f,
            udid: None,
            location: "bus 1 address 9".into(),
        };
        assert!(matches!(
            choose(std::slice::from_ref(&keyboard), None),
            Err(UsbDiscoverError::NoDevice)
        ));
        assert_eq!(
            choose(&[keyboard.clone(), c(0x12a8, Some("AAA"))], None).unwrap(),
            1
        );
        let two = [c(0x12a8, Some("AAA")), c(0x12ab, Some("BBB"))];
        assert!(matches!(
            choose(&two, None),
            Err(UsbDiscoverError::Ambiguous { found }) if found == ["AAA", "BBB"]
        ));
        assert_eq!(choose(&two, Some("bbb")).unwrap(), 1);
        assert!(matches!(
            choose(&two, Some("CCC")),
            Err(UsbDiscoverError::NoSuchDevice { .. })
        ));
        assert_eq!(
            UsbDiscoverError::NoDevice.to_string(),
            "no iPhone found on USB"
        );
    }
}
