//! The host's lockdown client against the simulated lockdownd, in memory: pairing with every
//! trust-dialog answer, sessions over TLS 1.3 and 1.2, StopSession back to plaintext,
//! StartService onto TLS service ports, re-pairing after the phone forgot the host.

use cradle::lockdown::{
    self, connect_service, Error, HostIdentity, LockdownClient, LockdownError, MemoryPairStore,
    PairEvent, PairOptions, PairStore, SessionOptions,
};
use cradle::sim::device::{
    DeviceEvent, DeviceIdentity, SimDevice, SimDeviceConfig, TrustPolicy, MOBILEBACKUP2_SERVICE,
};
use cradle::transport::{BoxStream, DeviceConnector, LOCKDOWN_PORT};
use plist::Value;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

fn device_with(f: impl FnOnce(&mut SimDeviceConfig)) -> Arc<SimDevice> {
    let mut cfg = SimDeviceConfig::new(DeviceIdentity::example());
    f(&mut cfg);
    SimDevice::new(cfg).unwrap()
}

fn opts() -> SessionOptions {
    SessionOptions {
        pair: PairOptions {
            trust_timeout: Duration::from_secs(30),
            poll_interval: Duration::ZERO,
        },
        ..SessionOptions::default()
    }
}

fn host() -> HostIdentity {
    HostIdentity::generate(Some("cradle-test".into()))
}

fn echo_handler() -> cradle::sim::device::ServiceHandler {
    Arc::new(|mut s: BoxStream| {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

fn echo_round_trip(mut s: BoxStream) {
    s.write_all(b"ping over the service").unwrap();
    let mut buf = [0u8; 21];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping over the service");
}

#[test]
fn auto_pair_then_tls13_session() {
    let dev = device_with(|_| {});
    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let host = host();
    let mut events = Vec::new();
    let mut s = lockdown::open(&conn, &store, &host, &opts(), &mut |e| events.push(e)).unwrap();
    assert!(s.paired_now());
    assert_eq!(events, vec![PairEvent::Started, PairEvent::Paired]);
    assert!(s.info().ssl);
    assert_eq!(s.info().tls_version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(
        s.get_value(None, Some("ProductVersion")).unwrap(),
        Value::String("17.5.1".into())
    );
    // The record is stored, complete, and the device knows the host.
    let rec = store.load(dev.udid()).unwrap().unwrap();
    assert_eq!(&rec, s.record());
    assert_eq!(rec.host_id, host.host_id);
    assert_eq!(rec.wifi_mac.as_deref(), Some("a4:c3:f0:12:34:56"));
    assert_eq!(
        rec.escrow_bag.as_deref(),
        dev.escrow_bag(&host.host_id).as_deref()
    );
    assert!(dev.is_paired(&host.host_id));
    assert!(dev.events().contains(&DeviceEvent::SessionStarted {
        host_id: host.host_id.clone(),
        tls: Some("TLSv1_3".into())
    }));
    s.close().unwrap();

    // A second open uses the stored record and does not pair.
    let s2 = lockdown::open(&conn, &store, &host, &opts(), &mut |_| panic!("no pairing")).unwrap();
    assert!(!s2.paired_now());
    assert_eq!(dev.request_count("Pair"), 1);
}

#[test]
fn tls12_session_when_the_device_offers_only_tls12() {
    let dev = device_with(|c| c.tls_versions = cradle::lockdown::tls::TlsVersions::Tls12Only);
    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let mut s = lockdown::open(&conn, &store, &host(), &opts(), &mut |_| {}).unwrap();
    assert_eq!(s.info().tls_version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert!(s.get_value(None, None).unwrap().as_dictionary().is_some());
}

#[test]
fn pairing_waits_for_trust_and_reports_it() {
    let dev = device_with(|c| c.trust = TrustPolicy::AfterPolls(3));
    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let mut events = Vec::new();
    let s = lockdown::open(&conn, &store, &host(), &opts(), &mut |e| events.push(e)).unwrap();
    assert!(s.paired_now());
    assert_eq!(
        events,
        vec![
            PairEvent::Started,
            PairEvent::WaitingForTrust { attempt: 1 },
            PairEvent::WaitingForTrust { attempt: 2 },
            PairEvent::WaitingForTrust { attempt: 3 },
            PairEvent::Paired
        ]
    );
    assert_eq!(dev.request_count("Pair"), 4);
    assert_eq!(
        dev.count_events(|e| matches!(e, DeviceEvent::PairPending { .. })),
        3
    );
}

#[test]
fn unanswered_trust_dialog_times_out() {
    let dev = device_with(|c| c.trust = TrustPolicy::AfterPolls(u32::MAX));
    let conn = dev.connector();
    let mut client = LockdownClient::connect(&conn, "test").unwrap();
    let mut events = Vec::new();
    let err = client
        .pair(
            &host(),
            &PairOptions {
                trust_timeout: Duration::ZERO,
                poll_interval: Duration::ZERO,
            },
            &mut |e| events.push(e),
        )
        .unwrap_err();
    assert!(matches!(err, Error::TrustTimeout(_)), "{err}");
    assert_eq!(
        events.last(),
        Some(&PairEvent::WaitingForTrust { attempt: 1 })
    );
}

#[test]
fn denied_pairing_is_typed_and_stores_nothing() {
    let dev = device_with(|c| c.trust = TrustPolicy::Deny);
    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let mut events = Vec::new();
    let err = lockdown::open(&conn, &store, &host(), &opts(), &mut |e| events.push(e)).unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::UserDeniedPairing));
    assert_eq!(events.last(), Some(&PairEvent::Denied));
    assert!(store.load(dev.udid()).unwrap().is_none());
}

#[test]
fn locked_phone_is_asked_again_after_unlock() {
    let dev = device_with(|c| c.trust = TrustPolicy::LockedOnce);
    let conn = dev.connector();
    // The client alone reports the lock as a typed error.
    let mut client = LockdownClient::connect(&conn, "test").unwrap();
    let mut events = Vec::new();
    let err = client
        .pair(&host(), &PairOptions::default(), &mut |e| events.push(e))
        .unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::PasswordProtected));
    assert_eq!(events.last(), Some(&PairEvent::PasscodeRequired));

    // `open` keeps asking: the phone is unlocked by now.
    dev.set_trust_policy(TrustPolicy::LockedOnce);
    let store = MemoryPairStore::new();
    let mut events = Vec::new();
    lockdown::open(&conn, &store, &host(), &opts(), &mut |e| events.push(e)).unwrap();
    assert!(events.contains(&PairEvent::PasscodeRequired));
    assert_eq!(events.last(), Some(&PairEvent::Paired));
}

#[test]
fn stop_session_returns_to_plaintext_and_the_connection_goes_on() {
    let dev = device_with(|_| {});
    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let mut s = lockdown::open(&conn, &store, &host(), &opts(), &mut |_| {}).unwrap();
    let record = s.record().clone();
    let client = s.client();
    client.stop_session().unwrap();
    assert!(client.session().is_none());
    // Plaintext request on the same connection.
    assert_eq!(
        client.get_value(None, Some("DeviceName")).unwrap(),
        Value::String("Cradle Test iPhone".into())
    );
    // And a second TLS session on it.
    let info = client.start_session(&record).unwrap();
    assert!(info.ssl);
    assert_eq!(client.query_type().unwrap(), "com.apple.mobile.lockdown");
    client.stop_session().unwrap();
    assert_eq!(dev.request_count("StartSession"), 2);
    assert_eq!(dev.request_count("StopSession"), 2);
    assert_eq!(
        dev.count_events(|e| matches!(e, DeviceEvent::TlsFailed { .. })),
        0
    );
}

#[test]
fn services_start_on_fresh_ports_with_and_without_tls() {
    let dev = device_with(|_| {});
    dev.register_service("com.example.echo.tls", true, echo_handler());
    dev.register_service("com.example.echo.plain", false, echo_handler());
    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let mut s = lockdown::open(&conn, &store, &host(), &opts(), &mut |_| {}).unwrap();

    let a = s.start_service("com.example.echo.tls", false).unwrap();
    let b = s.start_service("com.example.echo.tls", false).unwrap();
    assert!(a.ssl);
    assert_ne!(a.port, b.port);
    echo_round_trip(lockdown::open_service(&conn, &a, s.record()).unwrap());
    echo_round_trip(lockdown::open_service(&conn, &b, s.record()).unwrap());
    // One connection per StartService.
    assert!(conn.connect(a.port).is_err());

    let p = s.start_service("com.example.echo.plain", false).unwrap();
    assert!(!p.ssl);
    echo_round_trip(lockdown::open_service(&conn, &p, s.record()).unwrap());

    echo_round_trip(
        s.connect_service(&conn, "com.example.echo.tls", false)
            .unwrap(),
    );

    let err = s
        .start_service("com.apple.mobile.diagnostics_relay", false)
        .unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::InvalidService));

    // The libimobiledevice pattern: own connection, StopSession, then connect to the port.
    let record = s.record().clone();
    echo_round_trip(connect_service(&conn, &record, "com.example.echo.tls", false).unwrap());
}

#[test]
fn backup_service_needs_the_escrow_bag() {
    let dev = device_with(|_| {});
    dev.register_service(MOBILEBACKUP2_SERVICE, true, echo_handler());
    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let mut s = lockdown::open(&conn, &store, &host(), &opts(), &mut |_| {}).unwrap();
    echo_round_trip(
        s.connect_service(&conn, MOBILEBACKUP2_SERVICE, true)
            .unwrap(),
    );

    let err = s.start_service(MOBILEBACKUP2_SERVICE, false).unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::EscrowLocked));

    let mut f = plist::Dictionary::new();
    f.insert("Service".into(), MOBILEBACKUP2_SERVICE.into());
    f.insert("EscrowBag".into(), Value::Data(vec![1, 2, 3]));
    let err = s.client().request("StartService", f).unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::EscrowLocked));

    // A record without an escrow bag fails before asking.
    let mut rec = s.record().clone();
    rec.escrow_bag = None;
    let mut c = LockdownClient::connect(&conn, "test").unwrap();
    c.start_session(&rec).unwrap();
    assert!(matches!(
        c.start_service(MOBILEBACKUP2_SERVICE, true),
        Err(Error::NoEscrowBag)
    ));
}

#[test]
fn start_service_needs_a_session() {
    let dev = device_with(|_| {});
    dev.register_service("com.example.echo", false, echo_handler());
    let mut c = LockdownClient::connect(&dev.connector(), "test").unwrap();
    let err = c.start_service("com.example.echo", false).unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::SessionInactive));
}

#[test]
fn forgotten_host_is_paired_again_once() {
    let dev = device_with(|_| {});
    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let host = host();
    lockdown::open(&conn, &store, &host, &opts(), &mut |_| {}).unwrap();
    let first = store.load(dev.udid()).unwrap().unwrap();

    // Unknown host at StartSession is a typed error.
    dev.forget_all_hosts();
    let mut c = LockdownClient::connect(&conn, "test").unwrap();
    let err = c.start_session(&first).unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::InvalidHostID));

    let mut events = Vec::new();
    let s = lockdown::open(&conn, &store, &host, &opts(), &mut |e| events.push(e)).unwrap();
    assert!(s.paired_now());
    assert_eq!(events, vec![PairEvent::Started, PairEvent::Paired]);
    let second = store.load(dev.udid()).unwrap().unwrap();
    assert_ne!(first.root_cert_pem, second.root_cert_pem);
    assert_eq!(dev.request_count("Pair"), 2);
}

#[test]
fn values_domains_and_set_remove() {
    let dev = device_with(|_| {});
    let conn = dev.connector();
    let mut c = LockdownClient::connect(&conn, "test").unwrap();
    let all = c.get_value(None, None).unwrap();
    let all = all.as_dictionary().unwrap();
    for k in [
        "UniqueDeviceID",
        "SerialNumber",
        "ProductVersion",
        "ProductType",
        "DeviceName",
        "BuildVersion",
        "DeviceClass",
        "WiFiAddress",
        "UniqueChipID",
        "InternationalMobileEquipmentIdentity",
        "IntegratedCircuitCardIdentity",
        "MobileEquipmentIdentifier",
        "PhoneNumber",
    ] {
        assert!(all.contains_key(k), "{k}");
    }
    assert_eq!(
        all.get("UniqueDeviceID").and_then(Value::as_string),
        Some(dev.udid())
    );
    let Some(Value::Data(pk)) = all.get("DevicePublicKey") else {
        panic!("DevicePublicKey is not data");
    };
    assert!(pk.starts_with(b"-----BEGIN RSA PUBLIC KEY-----"));

    let we = |c: &mut LockdownClient| {
        c.get_value(Some("com.apple.mobile.backup"), Some("WillEncrypt"))
            .unwrap()
    };
    assert_eq!(we(&mut c), Value::Boolean(false));
    dev.set_backup_password(Some(cradle::password::Password::new("pw")));
    assert_eq!(we(&mut c), Value::Boolean(true));
    assert!(c
        .get_value(Some("com.apple.mobile.iTunes"), Some("MinITunesVersion"))
        .unwrap()
        .as_string()
        .is_some());
    assert!(c
        .get_value(Some("com.apple.iTunes"), None)
        .unwrap()
        .as_dictionary()
        .is_some());
    let err = c.get_value(None, Some("NoSuchKey")).unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::MissingValue));

    c.set_value(None, "UntrustedHostBUID", "ABC".into())
        .unwrap();
    assert_eq!(
        c.get_value(None, Some("UntrustedHostBUID")).unwrap(),
        Value::String("ABC".into())
    );
    c.remove_value(None, "UntrustedHostBUID").unwrap();
    assert!(c.get_value(None, Some("UntrustedHostBUID")).is_err());
    let err = c.set_value(None, "UniqueDeviceID", "x".into()).unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::ImmutableValue));
}

#[test]
fn binary_requests_get_xml_replies() {
    let dev = device_with(|_| {});
    let mut s = dev.connector().connect(LOCKDOWN_PORT).unwrap();
    let req = Value::Dictionary(cradle::lockdown::protocol::request("test", "QueryType"));
    cradle::plist_frame::write_frame(&mut *s, &req, cradle::plist_frame::PlistFormat::Binary)
        .unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    assert!(body.starts_with(b"<?xml"));
    let v = cradle::plist_frame::decode_body(&body).unwrap();
    assert_eq!(
        v.as_dictionary()
            .and_then(|d| d.get("Type"))
            .and_then(Value::as_string),
        Some("com.apple.mobile.lockdown")
    );
}

#[test]
fn validate_and_unpair() {
    let dev = device_with(|_| {});
    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let host = host();
    lockdown::open(&conn, &store, &host, &opts(), &mut |_| {}).unwrap();
    let rec = store.load(dev.udid()).unwrap().unwrap();
    let mut c = LockdownClient::connect(&conn, "test").unwrap();
    c.validate_pair(&rec).unwrap();
    c.unpair(&rec.host_id).unwrap();
    assert!(!dev.is_paired(&host.host_id));
    let err = c.validate_pair(&rec).unwrap_err();
    assert_eq!(err.device_error(), Some(&LockdownError::InvalidHostID));
}

#[test]
fn damaged_record_on_disk_is_replaced_by_pairing() {
    let dev = device_with(|_| {});
    let conn = dev.connector();
    let dir = tempfile::tempdir().unwrap();
    let store = cradle::lockdown::DirPairStore::new(dir.path()).unwrap();
    std::fs::write(store.path_for(dev.udid()).unwrap(), b"not a plist").unwrap();
    let s = lockdown::open(&conn, &store, &host(), &opts(), &mut |_| {}).unwrap();
    assert!(s.paired_now());
    assert_eq!(&store.load(dev.udid()).unwrap().unwrap(), s.record());
}
