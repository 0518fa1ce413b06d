//! The synthetic phone's identity: UDID, serial, radio addresses, IMEI, phone number and the
//! installed apps, as lockdownd and Info.plist report them. Derived from the seed alone.

use super::catalog::FIRST_NAMES;
use super::rng::Rng;

/// One installed (third-party) app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledApp {
    pub bundle_id: String,
    pub display_name: String,
    /// CFBundleVersion.
    pub version: String,
    /// CFBundleShortVersionString.
    pub short_version: String,
    /// The app group containers it shares data through (`group.<bundle id>` …), if any.
    pub groups: Vec<String>,
}

/// What the device says about itself (lockdownd values, Info.plist fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// New-style UDID: `<chip id>-<ECID>`, e.g. `00008110-001A2B3C4D5E801E`.
    pub udid: String,
    /// "Zoë’s iPhone" (with the typographic apostrophe iOS uses).
    pub device_name: String,
    /// `iPhone14,5` (iPhone 13).
    pub product_type: String,
    /// Marketing name, `iPhone 13`.
    pub product_name: String,
    /// `D17AP`.
    pub hardware_model: String,
    pub product_version: String,
    pub build_version: String,
    pub device_class: String,
    pub serial_number: String,
    pub wifi_address: String,
    pub bluetooth_address: String,
    /// The ECID, also the UDID's second half.
    pub unique_chip_id: u64,
    pub chip_id: u32,
    pub imei: String,
    pub meid: String,
    pub iccid: String,
    pub phone_number: String,
    pub time_zone: String,
    /// Third-party apps, in the order they were installed.
    pub installed_apps: Vec<InstalledApp>,
}

impl DeviceIdentity {
    /// A fixed, plausible iPhone 14 Pro on iOS 17.5.1 with no apps: for tests that need a
    /// device but not a synthetic phone.
    pub fn example() -> Self {
        DeviceIdentity {
            udid: "00008120-001C30E22E91401E".into(),
            device_name: "Cradle Test iPhone".into(),
            product_type: "iPhone15,2".into(),
            product_name: "iPhone 14 Pro".into(),
            hardware_model: "D73AP".into(),
            product_version: "17.5.1".into(),
            build_version: "21F90".into(),
            device_class: "iPhone".into(),
            serial_number: "F2LXK0Q1PLJ8".into(),
            wifi_address: "a4:c3:f0:12:34:56".into(),
            bluetooth_address: "a4:c3:f0:12:34:57".into(),
            unique_chip_id: 0x001C_30E2_2E91_401E,
            chip_id: 0x8120,
            imei: "356789101234567".into(),
            meid: "35678910123456".into(),
            iccid: "8901410321111851072".into(),
            phone_number: "+1 (555) 010-0123".into(),
            time_zone: "Europe/Berlin".into(),
            installed_apps: Vec::new(),
        }
    }
}

/// Luhn check digit for a string of digits.
fn luhn_digit(digits: &str) -> u32 {
    let mut sum = 0;
    for (i, c) in digits.chars().rev().enumerate() {
        let mut d = c.to_digit(10).unwrap_or(0);
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    (10 - sum % 10) % 10
}

fn digits(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

pub(crate) fn build(seed: u64, apps: Vec<InstalledApp>) -> DeviceIdentity {
    let mut rng = Rng::from_parts(&[seed, 0x1D]);
    let chip_id = 0x8110u32;
    // ECIDs of recent devices have their top 12 bits clear.
    let ecid = rng.next_u64() & 0x000F_FFFF_FFFF_FFFF;
    let udid = format!("{chip_id:08X}-{ecid:016X}");
    let name = *rng.pick(FIRST_NAMES);
    // Serials since 2021: 10 characters without vowels or easily confused letters.
    const SERIAL: &[u8] = b"0123456789BCDFGHJKLMNPQRTVWXYZ";
    let serial_number: String = (0..10)
        .map(|_| char::from(SERIAL[rng.below(SERIAL.len() as u64) as usize]))
        .collect();
    const APPLE_OUIS: &[[u8; 3]] = &[
        [0xA4, 0x83, 0xE7],
        [0xF0, 0x18, 0x98],
        [0x3C, 0x06, 0x30],
        [0x88, 0x66, 0x5A],
    ];
    let oui = *rng.pick(APPLE_OUIS);
    let nic = rng.below(0xFF_FFFE) as u32;
    let mac = |n: u32| {
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            oui[0],
            oui[1],
            oui[2],
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8
        )
    };
    let body = format!("35{}", digits(&mut rng, 12));
    let imei = format!("{body}{}", luhn_digit(&body));
    let meid = body[..14].to_string();
    let iccid_body = format!("8944{}", digits(&mut rng, 14));
    let iccid = format!("{iccid_body}{}", luhn_digit(&iccid_body));
    // Ofcom's range reserved for drama: never a real subscriber.
    let phone_number = format!("+44 7700 900{}", digits(&mut rng, 3));
    DeviceIdentity {
        udid,
        device_name: format!("{name}\u{2019}s iPhone"),
        product_type: "iPhone14,5".into(),
        product_name: "iPhone 13".into(),
        hardware_model: "D17AP".into(),
        product_version: "17.5.1".into(),
        build_version: "21F90".into(),
        device_class: "iPhone".into(),
        serial_number,
        wifi_address: mac(nic),
        bluetooth_address: mac(nic + 1),
        unique_chip_id: ecid,
        chip_id,
        imei,
        meid,
        iccid,
        phone_number,
        time_zone: "Europe/London".into(),
        installed_apps: apps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_shapes() {
        let id = build(7, Vec::new());
        assert_eq!(id.udid.len(), 25);
        assert!(id.udid.starts_with("00008110-"));
        assert_eq!(
            u64::from_str_radix(&id.udid[9..], 16).unwrap(),
            id.unique_chip_id
        );
        assert_eq!(id.imei.len(), 15);
        assert_eq!(
            luhn_digit(&id.imei[..14]),
            id.imei[14..].parse::<u32>().unwrap()
        );
        assert_eq!(id.serial_number.len(), 10);
        assert_eq!(id.wifi_address.len(), 17);
        assert_ne!(id.wifi_address, id.bluetooth_address);
        assert_eq!(build(7, Vec::new()), id);
        assert_ne!(build(8, Vec::new()).udid, id.udid);
        // Known Luhn example: 79927398713.
        assert_eq!(luhn_digit("7992739871"), 3);
    }
}
