//! The side services reached the way a backup host reaches them: pair with the simulated device,
//! StartService each one by its real name, then run the host clients over the service streams
//! (the sync lock posted through a fresh notification_proxy per post, as idevicebackup2 does;
//! Browse, icons and AFC reads for Info.plist; a device-side cancel relayed to an observer).

use cradle::lockdown::{
    self, connect_service, HostIdentity, MemoryPairStore, PairOptions, SessionOptions,
};
use cradle::services::afc::{
    AfcClient, SyncLock, SyncLockPolicy, IBOOKS_DATA2_PATH, ITUNES_CONTROL_DIR, ITUNES_FILES,
};
use cradle::services::installation_proxy::{InstallationProxyClient, BACKUP_APP_ATTRIBUTES};
use cradle::services::notification_proxy::{
    NotificationProxyClient, NpError, BACKUP_OBSERVED, DEFAULT_SHUTDOWN_TIMEOUT,
    SYNC_CANCEL_REQUEST, SYNC_DID_FINISH, SYNC_DID_START, SYNC_LOCK_REQUEST, SYNC_WILL_START,
};
use cradle::services::springboard::SpringboardClient;
use cradle::services::{
    AFC_SERVICE, INSTALLATION_PROXY_SERVICE, NOTIFICATION_PROXY_SERVICE, SPRINGBOARD_SERVICE,
};
use cradle::sim::device::{DeviceIdentity, SimDevice, SimDeviceConfig};
use cradle::sim::services::{register_side_services, sim_app, sim_icon_png, SideServices};
use std::time::Duration;

#[test]
fn backup_side_services_through_lockdown() {
    let dev = SimDevice::new(SimDeviceConfig::new(DeviceIdentity::example())).unwrap();
    let side = SideServices::new(vec![
        sim_app("com.example.notes", "Notes", true),
        sim_app("com.example.maps", "Maps", false),
    ]);
    side.afc.seed_itunes_files().unwrap();
    register_side_services(&dev, &side);

    let conn = dev.connector();
    let store = MemoryPairStore::new();
    let host = HostIdentity::generate(Some("cradle-test".into()));
    let opts = SessionOptions {
        pair: PairOptions {
            trust_timeout: Duration::from_secs(30),
            poll_interval: Duration::ZERO,
        },
        ..SessionOptions::default()
    };
    let session = lockdown::open(&conn, &store, &host, &opts, &mut |_| {}).unwrap();
    let record = session.record().clone();

    // An observer held for the whole backup, as both hosts keep one.
    let np = connect_service(&conn, &record, NOTIFICATION_PROXY_SERVICE, false).unwrap();
    let mut observer = NotificationProxyClient::new(np);
    for n in BACKUP_OBSERVED {
        observer.observe(n).unwrap();
    }

    // The sync lock, with a fresh lockdown connection and proxy per post.
    let mut afc = AfcClient::new(connect_service(&conn, &record, AFC_SERVICE, false).unwrap());
    let mut post = |name: &str| -> Result<(), NpError> {
        let s = connect_service(&conn, &record, NOTIFICATION_PROXY_SERVICE, false)
            .map_err(|e| NpError::UnexpectedMessage(e.to_string()))?;
        let mut np = NotificationProxyClient::new(s);
        np.post(name)?;
        np.shutdown(DEFAULT_SHUTDOWN_TIMEOUT)
    };
    let lock =
        SyncLock::acquire(&mut afc, &mut post, SyncLockPolicy::default(), &mut |_| {}).unwrap();

    // What Info.plist needs.
    let ip = connect_service(&conn, &record, INSTALLATION_PROXY_SERVICE, false).unwrap();
    let apps = InstallationProxyClient::new(ip)
        .browse_user_apps(&BACKUP_APP_ATTRIBUTES)
        .unwrap();
    assert_eq!(apps.len(), 2);
    let with_both: Vec<&str> = apps
        .iter()
        .filter(|a| a.contains_key("ApplicationSINF") && a.contains_key("iTunesMetadata"))
        .filter_map(|a| a.get("CFBundleIdentifier")?.as_string())
        .collect();
    assert_eq!(with_both, ["com.example.notes"]);
    let sb = connect_service(&conn, &record, SPRINGBOARD_SERVICE, false).unwrap();
    assert_eq!(
        SpringboardClient::new(sb).icon_png(with_both[0]).unwrap(),
        sim_icon_png()
    );
    let mut found = Vec::new();
    for f in ITUNES_FILES {
        if let Some(data) = afc
            .read_file(&format!("{ITUNES_CONTROL_DIR}/{f}"), 1 << 20)
            .unwrap()
        {
            found.push((f, data.len()));
        }
    }
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(afc.read_file(IBOOKS_DATA2_PATH, 1 << 20).unwrap().is_some());

    // A cancel on the phone reaches the observer.
    assert!(side
        .notifications
        .wait_for_observers(SYNC_CANCEL_REQUEST, 1, Duration::from_secs(10)));
    side.notifications.post(SYNC_CANCEL_REQUEST);
    assert_eq!(
        observer
            .next_notification(Duration::from_secs(10))
            .unwrap()
            .as_deref(),
        Some(SYNC_CANCEL_REQUEST)
    );

    lock.release(&mut afc, &mut post).unwrap();
    observer.shutdown(DEFAULT_SHUTDOWN_TIMEOUT).unwrap();
    assert_eq!(
        side.notifications.host_posts(),
        [
            SYNC_WILL_START,
            SYNC_LOCK_REQUEST,
            SYNC_DID_START,
            SYNC_DID_FINISH
        ]
    );
    assert!(!side.afc.is_locked(cradle::services::afc::SYNC_LOCK_PATH));
}
