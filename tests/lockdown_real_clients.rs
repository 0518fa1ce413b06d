//! Unmodified real clients pair with and read the simulated lockdownd through the usbmuxd facade:
//! libimobiledevice's `idevicepair pair|validate` and `ideviceinfo` (Debian 1.3.0, OpenSSL 3), and
//! pymobiledevice3's `lockdown info`. Their pair records must then work for Cradle's own client.
//!
//! A missing peer skips the test with a printed line, unless CRADLE_REQUIRE_PEERS=1 (CI), where
//! it fails. pymobiledevice3 is looked up in $CRADLE_PEERS_DIR/pmd3, else target/peers/pmd3.

mod common;

use common::usbmux::{client, pmd3_client, serve_device};
use common::{find_in_path, missing, peers_dir, run_client as run};

use cradle::lockdown::tls::TlsVersions;
use cradle::lockdown::{LockdownClient, PairRecord};
use cradle::sim::device::{DeviceEvent, DeviceIdentity, SimDevice, SimDeviceConfig};
use cradle::usb::muxd::MuxdServer;
use plist::Value;
use std::path::Path;
use std::sync::Arc;

/// A simulated phone behind a usbmuxd facade on 127.0.0.1:<free port>.
fn serve() -> (Arc<SimDevice>, MuxdServer) {
    serve_with(TlsVersions::Both)
}

fn serve_with(tls: TlsVersions) -> (Arc<SimDevice>, MuxdServer) {
    let mut cfg = SimDeviceConfig::new(DeviceIdentity::example());
    cfg.tls_versions = tls;
    let dev = SimDevice::new(cfg).unwrap();
    let server = serve_device(&dev);
    (dev, server)
}

/// The pair record a real client saved through the facade works for Cradle's own client.
fn record_works_for_cradle(dev: &Arc<SimDevice>, server: &MuxdServer) -> PairRecord {
    let bytes = server
        .handle()
        .pair_record(dev.udid())
        .expect("the client saved a pair record through usbmuxd");
    let record = PairRecord::from_bytes(&bytes).unwrap();
    assert!(
        record.escrow_bag.is_some(),
        "the saved record has no EscrowBag"
    );
    assert!(dev.is_paired(&record.host_id));
    let mut c = LockdownClient::connect(&dev.connector(), "cradle-test").unwrap();
    let info = c.start_session(&record).unwrap();
    assert!(info.ssl);
    assert_eq!(
        c.get_value(None, Some("UniqueDeviceID")).unwrap(),
        Value::String(dev.udid().into())
    );
    c.stop_session().unwrap();
    record
}

/// Checks that the device saw at least `min` sessions and that every one ran over `tls`;
/// returns how many there were.
fn sessions_all_over(dev: &SimDevice, min: usize, tls: &str) -> usize {
    let sessions: Vec<DeviceEvent> = dev
        .events()
        .into_iter()
        .filter(|e| matches!(e, DeviceEvent::SessionStarted { .. }))
        .collect();
    assert!(sessions.len() >= min, "{sessions:?}");
    assert!(
        sessions.iter().all(|e| matches!(
            e,
            DeviceEvent::SessionStarted { tls: Some(v), .. } if v == tls
        )),
        "{sessions:?}"
    );
    sessions.len()
}

/// `key: value` lines of ideviceinfo.
fn info_value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .map(str::trim)
}

#[test]
fn libimobiledevice_pairs_validates_and_reads_values() {
    let Some(idevicepair) = find_in_path("idevicepair").or_else(|| missing("idevicepair")) else {
        return;
    };
    let Some(ideviceinfo) = find_in_path("ideviceinfo").or_else(|| missing("ideviceinfo")) else {
        return;
    };
    let (dev, server) = serve();
    let home = tempfile::tempdir().unwrap();
    let udid = dev.udid().to_string();
    let cmd = |bin: &Path, args: &[&str]| client(bin, args, home.path(), &server);

    let (ok, out, err) = run(cmd(&idevicepair, &["-u", &udid, "pair"]));
    assert!(ok, "idevicepair pair failed\nstdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!("SUCCESS: Paired with device {udid}")),
        "{out}\n{err}"
    );
    assert_eq!(
        dev.count_events(|e| matches!(e, DeviceEvent::Paired { .. })),
        1
    );

    let (ok, out, err) = run(cmd(&idevicepair, &["-u", &udid, "validate"]));
    assert!(
        ok,
        "idevicepair validate failed\nstdout: {out}\nstderr: {err}"
    );
    assert!(
        out.contains(&format!("SUCCESS: Validated pairing with device {udid}")),
        "{out}\n{err}"
    );

    let (ok, out, err) = run(cmd(&ideviceinfo, &["-u", &udid]));
    assert!(ok, "ideviceinfo failed\nstdout: {out}\nstderr: {err}");
    assert_eq!(
        info_value(&out, "UniqueDeviceID"),
        Some(udid.as_str()),
        "{out}"
    );
    assert_eq!(info_value(&out, "ProductVersion"), Some("17.5.1"), "{out}");
    assert_eq!(info_value(&out, "ProductType"), Some("iPhone15,2"), "{out}");
    assert_eq!(
        info_value(&out, "DeviceName"),
        Some("Cradle Test iPhone"),
        "{out}"
    );
    assert_eq!(
        info_value(&out, "SerialNumber"),
        Some("F2LXK0Q1PLJ8"),
        "{out}"
    );
    assert_eq!(
        info_value(&out, "WiFiAddress"),
        Some("a4:c3:f0:12:34:56"),
        "{out}"
    );

    // One value from a domain, before and after the backup password is set.
    let q = [
        "-u",
        &udid,
        "-q",
        "com.apple.mobile.backup",
        "-k",
        "WillEncrypt",
    ];
    let (ok, out, err) = run(cmd(&ideviceinfo, &q));
    assert!(ok, "ideviceinfo -q failed\nstdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "false");
    dev.set_backup_password(Some(cradle::password::Password::new("pw")));
    let (ok, out, _) = run(cmd(&ideviceinfo, &q));
    assert!(ok);
    assert_eq!(out.trim(), "true");

    // Every session ran over TLS, and StopSession went back to plaintext cleanly.
    let sessions = sessions_all_over(&dev, 3, "TLSv1_3");
    assert_eq!(
        dev.count_events(|e| matches!(e, DeviceEvent::TlsFailed { .. })),
        0
    );
    assert_eq!(dev.request_count("StopSession"), sessions);

    // libimobiledevice's record (binary plist, its own key format) works for Cradle.
    record_works_for_cradle(&dev, &server);
}

#[test]
fn pymobiledevice3_pairs_and_prints_lockdown_info() {
    let bin = peers_dir().join("pmd3/bin/pymobiledevice3");
    if !bin.is_file() && missing(&format!("{}", bin.display())).is_none() {
        return;
    }
    let (dev, server) = serve();
    let home = tempfile::tempdir().unwrap();
    let udid = dev.udid().to_string();
    let info = || {
        run(pmd3_client(
            &bin,
            &["lockdown", "info", "--udid", &udid],
            home.path(),
            &server,
        ))
    };

    // First run: no record anywhere, so it pairs (and saves the record through usbmuxd).
    let (ok, out, err) = info();
    assert!(
        ok,
        "pymobiledevice3 lockdown info failed\nstdout: {out}\nstderr: {err}"
    );
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("lockdown info printed no JSON ({e}):\n{out}\n{err}"));
    assert_eq!(json["UniqueDeviceID"], udid.as_str(), "{out}");
    assert_eq!(json["ProductVersion"], "17.5.1", "{out}");
    assert_eq!(json["ProductType"], "iPhone15,2", "{out}");
    assert_eq!(json["DeviceName"], "Cradle Test iPhone", "{out}");
    assert_eq!(json["SerialNumber"], "F2LXK0Q1PLJ8", "{out}");
    assert_eq!(json["BuildVersion"], "21F90", "{out}");
    assert_eq!(
        dev.count_events(|e| matches!(e, DeviceEvent::Paired { .. })),
        1
    );

    // Second run: uses its saved record, no new pairing.
    let (ok, out, err) = info();
    assert!(
        ok,
        "second lockdown info failed\nstdout: {out}\nstderr: {err}"
    );
    assert!(out.contains(&udid), "{out}");
    assert_eq!(
        dev.count_events(|e| matches!(e, DeviceEvent::Paired { .. })),
        1
    );
    assert!(
        dev.count_events(|e| matches!(
            e,
            DeviceEvent::SessionStarted { tls: Some(v), .. } if v == "TLSv1_3"
        )) >= 2
    );
    assert_eq!(
        dev.count_events(|e| matches!(e, DeviceEvent::TlsFailed { .. })),
        0
    );

    // pymobiledevice3's record (XML, with RootPrivateKey and HostName extras) works for Cradle.
    record_works_for_cradle(&dev, &server);
}

/// A device that offers only TLS 1.2 (as phones were observed to): OpenSSL 3 without
/// SSL_OP_LEGACY_SERVER_CONNECT needs renegotiation_info from the server, and pymobiledevice3
/// must negotiate 1.2 too.
#[test]
fn both_clients_work_over_tls12() {
    let Some(idevicepair) = find_in_path("idevicepair").or_else(|| missing("idevicepair")) else {
        return;
    };
    let Some(ideviceinfo) = find_in_path("ideviceinfo").or_else(|| missing("ideviceinfo")) else {
        return;
    };
    let pmd3 = peers_dir().join("pmd3/bin/pymobiledevice3");
    if !pmd3.is_file() && missing(&format!("{}", pmd3.display())).is_none() {
        return;
    }
    let (dev, server) = serve_with(TlsVersions::Tls12Only);
    let home = tempfile::tempdir().unwrap();
    let udid = dev.udid().to_string();
    let cmd = |bin: &Path, args: &[&str]| pmd3_client(bin, args, home.path(), &server);
    let (ok, out, err) = run(cmd(&idevicepair, &["-u", &udid, "pair"]));
    assert!(ok, "idevicepair pair failed\nstdout: {out}\nstderr: {err}");
    let (ok, out, err) = run(cmd(&ideviceinfo, &["-u", &udid, "-k", "UniqueDeviceID"]));
    assert!(ok, "ideviceinfo failed\nstdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), udid);
    // pymobiledevice3 reads the record libimobiledevice saved in usbmuxd.
    let (ok, out, err) = run(cmd(&pmd3, &["lockdown", "info", "--udid", &udid]));
    assert!(ok, "pymobiledevice3 failed\nstdout: {out}\nstderr: {err}");
    assert!(out.contains(&udid), "{out}");
    assert_eq!(
        dev.count_events(|e| matches!(e, DeviceEvent::Paired { .. })),
        1,
        "pymobiledevice3 paired again instead of using the saved record"
    );
    sessions_all_over(&dev, 2, "TLSv1_2");
}
