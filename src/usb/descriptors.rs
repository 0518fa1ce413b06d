//! USB descriptors of an Apple device, parsed from raw bytes: which configuration and interface
//! carry usbmux, what mode the device is in, and its UDID. Pure and bounded; never panics.
//!
//! Rules follow usbmuxd (`src/usb.c`) except one deliberate fix: the interface must match class
//! 0xFF *and* subclass 0xFE *and* protocol 0x02 (usbmuxd's test ORs them, which is a bug).

/// Apple's USB vendor id.
pub const APPLE_VENDOR_ID: u16 = 0x05AC;

/// The usbmux interface class, subclass and protocol.
pub const MUX_CLASS: u8 = 0xFF;
pub const MUX_SUBCLASS: u8 = 0xFE;
pub const MUX_PROTOCOL: u8 = 0x02;

/// The "Valeria" screen-capture interface (class 0xFF, subclass 0x2A, protocol 0xFF).
pub const VALERIA_SUBCLASS: u8 = 0x2A;
/// CDC-NCM: class 0x02, subclass 0x0D.
pub const CDC_CLASS: u8 = 0x02;
pub const CDC_NCM_SUBCLASS: u8 = 0x0D;

/// bmRequestType of Apple's vendor requests (device-to-host, vendor, device).
pub const VENDOR_REQUEST_TYPE: u8 = 0xC0;
/// Vendor request: read the current mode (wLength 4).
pub const REQUEST_GET_MODE: u8 = 0x45;
/// Vendor request: switch to mode `wIndex` (1..=5, wLength 1).
pub const REQUEST_SET_MODE: u8 = 0x52;
/// The mode with the plain usbmux configuration, usbmuxd's default target.
pub const DEFAULT_MODE: u8 = 1;
/// Environment variable usbmuxd reads for the target mode.
pub const MODE_ENV: &str = "USBMUXD_DEFAULT_DEVICE_MODE";

/// Descriptor types.
const DT_DEVICE: u8 = 1;
const DT_CONFIG: u8 = 2;
const DT_INTERFACE: u8 = 4;
const DT_ENDPOINT: u8 = 5;
const DEVICE_LEN: usize = 18;
const CONFIG_LEN: usize = 9;
const INTERFACE_LEN: usize = 9;
const ENDPOINT_LEN: usize = 7;

/// Most interface alternate settings kept per configuration (real iPhones have under 10).
pub const MAX_INTERFACE_ALTS: usize = 64;
/// Most endpoints kept per interface alternate setting (USB allows 30).
pub const MAX_ENDPOINTS: usize = 32;
/// Most configurations read from a descriptor blob (USB allows 255; iPhones have up to 6).
pub const MAX_CONFIGURATIONS: usize = 16;

/// Errors parsing descriptors. All are faults of the bytes (the device or a file), never local.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// Fewer bytes than the descriptor needs.
    #[error("{what} descriptor truncated: {have} bytes, {need} needed")]
    Truncated {
        what: &'static str,
        have: usize,
        need: usize,
    },
    /// A descriptor's type byte is not the one expected at that place.
    #[error("expected a {what} descriptor (type {expected}), found type {found}")]
    WrongType {
        what: &'static str,
        expected: u8,
        found: u8,
    },
    /// A descriptor's bLength is too small for its type, or runs past the end.
    #[error("descriptor at offset {offset} has an impossible bLength {len}")]
    BadLength { offset: usize, len: u8 },
    /// More items than the named cap.
    #[error("more than {max} {what} in one descriptor set")]
    TooMany { what: &'static str, max: usize },
}

/// The fields of a device descriptor that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDescriptor {
    pub usb_version: u16,
    pub max_packet_size0: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    pub device_version: u16,
    pub manufacturer_index: u8,
    pub product_index: u8,
    pub serial_index: u8,
    pub num_configurations: u8,
}

fn le16(b: &[u8], i: usize) -> u16 {
    match (b.get(i), b.get(i + 1)) {
        (Some(&lo), Some(&hi)) => u16::from_le_bytes([lo, hi]),
        _ => 0,
    }
}

fn byte(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

impl DeviceDescriptor {
    /// Parses an 18-byte device descriptor (extra bytes are ignored).
    pub fn parse(b: &[u8]) -> Result<DeviceDescriptor, DescriptorError> {
        if b.len() < DEVICE_LEN || (byte(b, 0) as usize) < DEVICE_LEN {
            return Err(DescriptorError::Truncated {
                what: "device",
                have: b.len().min(byte(b, 0) as usize),
                need: DEVICE_LEN,
            });
        }
        if b[1] != DT_DEVICE {
            return Err(DescriptorError::WrongType {
                what: "device",
                expected: DT_DEVICE,
                found: b[1],
            });
        }
        Ok(DeviceDescriptor {
            usb_version: le16(b, 2),
            max_packet_size0: b[7],
            vendor_id: le16(b, 8),
            product_id: le16(b, 10),
            device_version: le16(b, 12),
            manufacturer_index: b[14],
            product_index: b[15],
            serial_index: b[16],
            num_configurations: b[17],
        })
    }

    /// Whether usbmuxd would handle this device (Apple vendor id and a known product range).
    pub fn is_usbmux_candidate(&self) -> bool {
        self.vendor_id == APPLE_VENDOR_ID && is_usbmux_product(self.product_id)
    }
}

/// Product ids usbmuxd accepts: iPhone/iPod/iPad `0x1290..=0x12AF`, T2 `0x8600`, Apple-silicon
/// restore `0x1901..=0x1905`.
pub fn is_usbmux_product(pid: u16) -> bool {
    matches!(pid, 0x1290..=0x12AF | 0x8600 | 0x1901..=0x1905)
}

/// One endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub address: u8,
    pub attributes: u8,
    pub max_packet_size: u16,
}

impl Endpoint {
    pub fn is_in(&self) -> bool {
        self.address & 0x80 != 0
    }
    pub fn is_bulk(&self) -> bool {
        self.attributes & 0x03 == 0x02
    }
    /// Packet size in bytes (bits 0..10 of wMaxPacketSize).
    pub fn packet_bytes(&self) -> u16 {
        self.max_packet_size & 0x07FF
    }
}

/// One interface alternate setting and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAlt {
    pub number: u8,
    pub alt_setting: u8,
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub endpoints: Vec<Endpoint>,
}

/// A configuration and its interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    pub value: u8,
    pub num_interfaces: u8,
    pub attributes: u8,
    pub max_power: u8,
    pub interfaces: Vec<InterfaceAlt>,
}

impl Configuration {
    /// Parses one configuration descriptor with everything under it (`wTotalLength` bytes;
    /// bytes beyond it are ignored). Unknown descriptor types are skipped.
    pub fn parse(b: &[u8]) -> Result<Configuration, DescriptorError> {
        Self::parse_prefix(b).map(|(c, _)| c)
    }

    /// Parses a configuration at the start of `b` and returns it with its total length.
    fn parse_prefix(b: &[u8]) -> Result<(Configuration, usize), DescriptorError> {
        if b.len() < CONFIG_LEN {
            return Err(DescriptorError::Truncated {
                what: "configuration",
                have: b.len(),
                need: CONFIG_LEN,
            });
        }
        if b[1] != DT_CONFIG {
            return Err(DescriptorError::WrongType {
                what: "configuration",
                expected: DT_CONFIG,
                found: b[1],
            });
        }
        let head_len = b[0] as usize;
        let total = le16(b, 2) as usize;
        if head_len < CONFIG_LEN || head_len > total {
            return Err(DescriptorError::BadLength {
                offset: 0,
                len: b[0],
            });
        }
        let Some(body) = b.get(..total) else {
            return Err(DescriptorError::Truncated {
                what: "configuration",
                have: b.len(),
                need: total,
            });
        };
        let mut cfg = Configuration {
            value: b[5],
            num_interfaces: b[4],
            attributes: b[7],
            max_power: b[8],
            interfaces: Vec::new(),
        };
        let mut off = head_len;
        while off < total {
            let rest = &body[off..];
            let len = rest[0] as usize;
            if rest.len() < 2 || len < 2 || len > rest.len() {
                return Err(DescriptorError::BadLength {
                    offset: off,
                    len: rest[0],
                });
            }
            let d = &rest[..len];
            match d[1] {
                DT_INTERFACE if len >= INTERFACE_LEN => {
                    if cfg.interfaces.len() >= MAX_INTERFACE_ALTS {
                        return Err(DescriptorError::TooMany {
                            what: "interface alternate settings",
                            max: MAX_INTERFACE_ALTS,
                        });
                    }
                    cfg.interfaces.push(InterfaceAlt {
                        number: d[2],
                        alt_setting: d[3],
                        class: d[5],
                        subclass: d[6],
                        protocol: d[7],
                        endpoints: Vec::new(),
                    });
                }
                DT_ENDPOINT if len >= ENDPOINT_LEN => {
                    // An endpoint before any interface belongs to nothing; skip it.
                    if let Some(intf) = cfg.interfaces.last_mut() {
                        if intf.endpoints.len() >= MAX_ENDPOINTS {
                            return Err(DescriptorError::TooMany {
                                what: "endpoints",
                                max: MAX_ENDPOINTS,
                            });
                        }
                        intf.endpoints.push(Endpoint {
                            address: d[2],
                            attributes: d[3],
                            max_packet_size: le16(d, 4),
                        });
                    }
                }
                DT_INTERFACE | DT_ENDPOINT => {
                    return Err(DescriptorError::BadLength {
                        offset: off,
                        len: d[0],
                    })
                }
                _ => {}
            }
            off += len;
        }
        Ok((cfg, total))
    }

    /// The usbmux interface of this configuration, if it has one (alternate setting 0 only,
    /// class/subclass/protocol all matching, exactly two bulk endpoints, one IN and one OUT).
    pub fn mux_interface(&self) -> Option<MuxInterface> {
        self.interfaces.iter().find_map(|i| {
            if i.alt_setting != 0
                || (i.class, i.subclass, i.protocol) != (MUX_CLASS, MUX_SUBCLASS, MUX_PROTOCOL)
            {
                return None;
            }
            let [a, b] = i.endpoints.as_slice() else {
                return None;
            };
            if !a.is_bulk() || !b.is_bulk() {
                return None;
            }
            let (ep_in, ep_out) = match (a.is_in(), b.is_in()) {
                (false, true) => (b, a),
                (true, false) => (a, b),
                _ => return None,
            };
            Some(MuxInterface {
                configuration: self.value,
                interface: i.number,
                ep_in: ep_in.address,
                ep_out: ep_out.address,
                max_packet_size: ep_out.packet_bytes(),
            })
        })
    }

    fn has_interface(&self, class: u8, subclass: u8) -> bool {
        self.interfaces
            .iter()
            .any(|i| i.class == class && i.subclass == subclass)
    }
}

/// Where usbmux lives on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxInterface {
    /// bConfigurationValue to set.
    pub configuration: u8,
    /// bInterfaceNumber to claim.
    pub interface: u8,
    /// Bulk IN endpoint address (0x8n).
    pub ep_in: u8,
    /// Bulk OUT endpoint address.
    pub ep_out: u8,
    /// wMaxPacketSize of the OUT endpoint: transfers that are a multiple of it need a ZLP.
    pub max_packet_size: u16,
}

/// The configuration to use: like usbmuxd, the highest bConfigurationValue that has a usbmux
/// interface.
pub fn choose_configuration(configs: &[Configuration]) -> Option<MuxInterface> {
    configs
        .iter()
        .filter_map(Configuration::mux_interface)
        .max_by_key(|m| m.configuration)
}

/// Parses a whole descriptor blob: the device descriptor followed by every configuration, as
/// Linux exposes it in sysfs `descriptors`. Trailing bytes after the last configuration that do
/// not start another configuration are an error.
pub fn parse_blob(b: &[u8]) -> Result<(DeviceDescriptor, Vec<Configuration>), DescriptorError> {
    let dev = DeviceDescriptor::parse(b)?;
    let mut off = byte(b, 0) as usize;
    let mut configs = Vec::new();
    while off < b.len() {
        if configs.len() >= MAX_CONFIGURATIONS {
            return Err(DescriptorError::TooMany {
                what: "configurations",
                max: MAX_CONFIGURATIONS,
            });
        }
        let (c, len) = Configuration::parse_prefix(&b[off..])?;
        configs.push(c);
        off += len;
    }
    Ok((dev, configs))
}

/// The UDID a device's serial-number string stands for: a 24-character serial (newer devices)
/// gets a '-' after its first 8 characters; the older 40-hex form is used as is.
pub fn udid_from_serial(serial: &str) -> String {
    let s = serial.trim_end_matches('\0');
    if s.len() == 24 && s.is_ascii() && !s.contains('-') {
        format!("{}-{}", &s[..8], &s[8..])
    } else {
        s.to_string()
    }
}

/// The device's current mode, guessed the way usbmuxd does from bNumConfigurations: 1 → 5,
/// 2..=4 → 1 (the initial mode), 6 → 4, and 5 → by what configuration 5 carries (the Valeria
/// interface → 2, CDC-NCM → 3). `None` when it cannot tell, in which case no switch is tried.
pub fn guess_mode(num_configurations: u8, config5: Option<&Configuration>) -> Option<u8> {
    match num_configurations {
        1 => Some(5),
        2..=4 => Some(1),
        6 => Some(4),
        5 => {
            let c = config5?;
            if c.has_interface(MUX_CLASS, VALERIA_SUBCLASS) {
                Some(2)
            } else if c.has_interface(CDC_CLASS, CDC_NCM_SUBCLASS) {
                Some(3)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The mode to ask for: `USBMUXD_DEFAULT_DEVICE_MODE` when it is 1..=5, else 1.
pub fn target_mode_from_env() -> u8 {
    std::env::var(MODE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .filter(|m| (1..=5).contains(m))
        .unwrap_or(DEFAULT_MODE)
}

/// Whether to send a set-mode request: only when the current mode is known and differs.
pub fn should_switch_mode(current: Option<u8>, target: u8) -> bool {
    matches!(current, Some(c) if c != target)
}

/// Reads the 4-byte reply of the get-mode request: `3:3:3:0` in the initial mode,
/// `5:3:3:0` otherwise. `None` if the reply is malformed.
pub fn parse_get_mode_reply(reply: &[u8]) -> Option<bool> {
    match reply {
        [3, 3, 3, 0] => Some(true),
        [5, 3, 3, 0] => Some(false),
        _ => None,
    }
}

/// Whether the set-mode reply (1 byte) says the switch was accepted (byte 0 is 0).
pub fn set_mode_accepted(reply: &[u8]) -> bool {
    reply.first() == Some(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a `[section]` of tests/data/usb/iphone-descriptors.hex.
    fn section(name: &str) -> Vec<u8> {
        let text = include_str!("../../tests/data/usb/iphone-descriptors.hex");
        let mut out = Vec::new();
        let mut on = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                on = line == format!("[{name}]");
                continue;
            }
            if on {
                out.extend(
                    line.split_whitespace()
                        .map(|h| u8::from_str_radix(h, 16).unwrap()),
                );
            }
        }
        out
    }

    /// A minimal PTP-only configuration (what configurations 1..3 look like for usbmux).
    fn ptp_config(value: u8) -> Vec<u8> {
        let mut c = vec![9, 2, 39, 0, 1, value, 5, 0xC0, 0xFA];
        c.extend_from_slice(&[9, 4, 0, 0, 3, 6, 1, 1, 0]);
        c.extend_from_slice(&[7, 5, 0x02, 2, 0, 2, 0]);
        c.extend_from_slice(&[7, 5, 0x81, 2, 0, 2, 0]);
        c.extend_from_slice(&[7, 5, 0x83, 3, 0x40, 0, 10]);
        c
    }

    #[test]
    fn real_iphone_device_descriptor() {
        let d = DeviceDescriptor::parse(&section("device")).unwrap();
        assert_eq!(d.vendor_id, APPLE_VENDOR_ID);
        assert_eq!(d.product_id, 0x12a8);
        assert_eq!(d.num_configurations, 4);
        assert_eq!(d.serial_index, 3);
        assert!(d.is_usbmux_candidate());
        assert_eq!(guess_mode(d.num_configurations, None), Some(1));
    }

    #[test]
    fn real_iphone_configuration_4_has_usbmux_on_interface_1() {
        let bytes = section("config4");
        assert_eq!(bytes.len(), 117);
        let c = Configuration::parse(&bytes).unwrap();
        assert_eq!(c.value, 4);
        assert_eq!(c.num_interfaces, 3);
        // PTP, usbmux, and three alternate settings of the Ethernet interface.
        assert_eq!(c.interfaces.len(), 5);
        assert_eq!(
            c.mux_interface(),
            Some(MuxInterface {
                configuration: 4,
                interface: 1,
                ep_in: 0x85,
                ep_out: 0x04,
                max_packet_size: 512,
            })
        );
    }

    #[test]
    fn highest_configuration_with_usbmux_is_chosen() {
        let mut blob = section("device");
        for v in 1..=3 {
            blob.extend(ptp_config(v));
        }
        blob.extend(section("config4"));
        let (dev, configs) = parse_blob(&blob).unwrap();
        assert_eq!(dev.num_configurations as usize, configs.len());
        assert_eq!(choose_configuration(&configs).unwrap().configuration, 4);
        // With only PTP configurations there is nothing to use.
        assert_eq!(choose_configuration(&configs[..3]), None);
        // A higher configuration that also has usbmux wins.
        let mut c5 = configs[3].clone();
        c5.value = 5;
        let mut all = configs.clone();
        all.insert(0, c5);
        assert_eq!(choose_configuration(&all).unwrap().configuration, 5);
    }

    #[test]
    fn interface_must_match_class_subclass_and_protocol_together() {
        let base = Configuration::parse(&section("config4")).unwrap();
        for (cl, sub, pr) in [(0xFF, 0xFE, 0x01), (0xFF, 0xFD, 0x02), (0x06, 0xFE, 0x02)] {
            let mut c = base.clone();
            c.interfaces[1].class = cl;
            c.interfaces[1].subclass = sub;
            c.interfaces[1].protocol = pr;
            // The ethernet interface has 2 bulk endpoints in alt 1 but is not alt 0: no match.
            assert_eq!(c.mux_interface(), None, "{cl:x}/{sub:x}/{pr:x}");
        }
    }

    #[test]
    fn endpoints_must_be_two_bulk_one_each_way() {
        let base = Configuration::parse(&section("config4")).unwrap();
        let mut swapped = base.clone();
        swapped.interfaces[1].endpoints.reverse();
        let m = swapped.mux_interface().unwrap();
        assert_eq!((m.ep_in, m.ep_out), (0x85, 0x04));
        let mut both_in = base.clone();
        both_in.interfaces[1].endpoints[0].address = 0x84;
        assert_eq!(both_in.mux_interface(), None);
        let mut interrupt = base.clone();
        interrupt.interfaces[1].endpoints[0].attributes = 3;
        assert_eq!(interrupt.mux_interface(), None);
        let mut three = base.clone();
        let extra = three.interfaces[1].endpoints[0];
        three.interfaces[1].endpoints.push(extra);
        assert_eq!(three.mux_interface(), None);
    }

    #[test]
    fn malformed_descriptors_are_errors_not_panics() {
        let good = section("config4");
        // Every truncation.
        for n in 0..good.len() {
            assert!(Configuration::parse(&good[..n]).is_err(), "len {n}");
        }
        // A zero bLength inside would loop forever if not caught.
        let mut zero = good.clone();
        zero[9] = 0;
        assert!(matches!(
            Configuration::parse(&zero),
            Err(DescriptorError::BadLength { offset: 9, .. })
        ));
        // An interface descriptor too short for its type.
        let mut short = good.clone();
        short[9] = 5;
        assert!(Configuration::parse(&short).is_err());
        // Wrong type byte.
        let mut wrong = good.clone();
        wrong[1] = 4;
        assert!(matches!(
            Configuration::parse(&wrong),
            Err(DescriptorError::WrongType { .. })
        ));
        // Garbage after the last configuration of a blob.
        let mut blob = section("device");
        blob.extend(&good);
        blob.push(0);
        assert!(parse_blob(&blob).is_err());
        // Every single-byte corruption: must not panic.
        for i in 0..good.len() {
            for v in [0u8, 1, 2, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = Configuration::parse(&b);
            }
        }
    }

    #[test]
    fn udid_forms() {
        assert_eq!(
            udid_from_serial("00008030001A35E22E88802E"),
            "00008030-001A35E22E88802E"
        );
        assert_eq!(
            udid_from_serial("f1c15f36c3461bf9b24d568084d17cfb2d4243c4"),
            "f1c15f36c3461bf9b24d568084d17cfb2d4243c4"
        );
        assert_eq!(
            udid_from_serial("00008030-001A35E22E88802E"),
            "00008030-001A35E22E88802E"
        );
    }

    #[test]
    fn product_ranges() {
        for p in [0x1290, 0x12a8, 0x12AF, 0x8600, 0x1901, 0x1905] {
            assert!(is_usbmux_product(p), "{p:x}");
        }
        for p in [0x128F, 0x12B0, 0x1281, 0x1900, 0x1906, 0x8601] {
            assert!(!is_usbmux_product(p), "{p:x}");
        }
    }

    #[test]
    fn mode_rules() {
        assert_eq!(guess_mode(1, None), Some(5));
        assert_eq!(guess_mode(3, None), Some(1));
        assert_eq!(guess_mode(4, None), Some(1));
        assert_eq!(guess_mode(6, None), Some(4));
        assert_eq!(guess_mode(5, None), None);
        assert_eq!(guess_mode(0, None), None);
        let mut valeria = Configuration::parse(&section("config4")).unwrap();
        valeria.interfaces[2].subclass = VALERIA_SUBCLASS;
        assert_eq!(guess_mode(5, Some(&valeria)), Some(2));
        let mut ncm = Configuration::parse(&section("config4")).unwrap();
        ncm.interfaces[2].class = CDC_CLASS;
        ncm.interfaces[2].subclass = CDC_NCM_SUBCLASS;
        assert_eq!(guess_mode(5, Some(&ncm)), Some(3));
        assert!(!should_switch_mode(None, 1));
        assert!(!should_switch_mode(Some(1), 1));
        assert!(should_switch_mode(Some(2), 1));
        assert_eq!(parse_get_mode_reply(&[3, 3, 3, 0]), Some(true));
        assert_eq!(parse_get_mode_reply(&[5, 3, 3, 0]), Some(false));
        assert_eq!(parse_get_mode_reply(&[5, 3]), None);
        assert!(set_mode_accepted(&[0]));
        assert!(!set_mode_accepted(&[1]));
        assert!(!set_mode_accepted(&[]));
    }
}
