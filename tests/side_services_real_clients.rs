//! Unmodified real clients use the simulated side services through the usbmuxd facade and
//! lockdown: libimobiledevice's `idevicenotificationproxy post` (which waits 30 s unless Shutdown
//! is answered with ProxyDeath), and pymobiledevice3's `notification post`, `afc ls|pull|push`,
//! `apps list` and `springboard icon`.
//!
//! A missing peer skips the test with a printed line, unless CRADLE_REQUIRE_PEERS=1 (CI), where
//! it fails. pymobiledevice3 is looked up in $CRADLE_PEERS_DIR/pmd3, else target/peers/pmd3.

mod common;

use common::usbmux::{client, pmd3_client, serve_device};
use common::{find_in_path, missing, pmd3, run_client as run};

use cradle::services::notification_proxy::{SYNC_DID_FINISH, SYNC_WILL_START};
use cradle::sim::device::{DeviceIdentity, SimDevice, SimDeviceConfig};
use cradle::sim::services::{register_side_services, sim_app, sim_icon_png, SideServices};
use cradle::usb::muxd::MuxdServer;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A simulated phone with the four side services behind a usbmuxd facade on 127.0.0.1.
fn serve() -> (Arc<SimDevice>, SideServices, MuxdServer) {
    let dev = SimDevice::new(SimDeviceConfig::new(DeviceIdentity::example())).unwrap();
    let side = SideServices::new(vec![
        sim_app("com.example.notes", "Notes", true),
        sim_app("com.example.maps", "Maps", false),
    ]);
    side.afc.seed_itunes_files().unwrap();
    register_side_services(&dev, &side);
    let server = serve_device(&dev);
    (dev, side, server)
}

#[test]
fn libimobiledevice_posts_without_waiting_for_a_timeout() {
    let Some(idevicepair) = find_in_path("idevicepair").or_else(|| missing("idevicepair")) else {
        return;
    };
    let Some(np) =
        find_in_path("idevicenotificationproxy").or_else(|| missing("idevicenotificationproxy"))
    else {
        return;
    };
    let (dev, side, server) = serve();
    let home = tempfile::tempdir().unwrap();
    let udid = dev.udid().to_string();
    let cmd = |bin: &Path, args: &[&str]| client(bin, args, home.path(), &server);
    let (ok, out, err) = run(cmd(&idevicepair, &["-u", &udid, "pair"]));
    assert!(ok, "idevicepair pair failed\nstdout: {out}\nstderr: {err}");

    for name in [SYNC_WILL_START, SYNC_DID_FINISH] {
        let started = Instant::now();
        let (ok, out, err) = run(cmd(&np, &["-u", &udid, "post", name]));
        assert!(
            ok,
            "idevicenotificationproxy failed\nstdout: {out}\nstderr: {err}"
        );
        // Without ProxyDeath the tool waits out its 30 s receive timeout.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "post took {:?}",
            started.elapsed()
        );
    }
    // The relay threads may still be handing the last frames to the phone when the tool exits.
    assert!(
        side.notifications
            .wait_for_host_post(SYNC_DID_FINISH, Duration::from_secs(10)),
        "the phone never saw {SYNC_DID_FINISH}"
    );
    assert_eq!(
        side.notifications.host_posts(),
        [SYNC_WILL_START, SYNC_DID_FINISH]
    );
}

#[test]
fn pymobiledevice3_uses_notification_afc_apps_and_springboard() {
    let Some(bin) = pmd3() else {
        return;
    };
    let (dev, side, server) = serve();
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let udid = dev.udid().to_string();
    let pmd = |args: &[&str]| {
        let mut c = pmd3_client(&bin, args, home.path(), &server);
        c.args(["--udid", &udid]);
        let (ok, out, err) = run(c);
        assert!(
            ok,
            "pymobiledevice3 {args:?} failed\nstdout: {out}\nstderr: {err}"
        );
        out
    };

    pmd(&["notification", "post", SYNC_WILL_START]);
    assert!(side
        .notifications
        .wait_for_host_post(SYNC_WILL_START, Duration::from_secs(10)));

    let out = pmd(&["afc", "ls", "/iTunes_Control/iTunes"]);
    assert!(out.contains("iTunesPrefs.plist"), "{out}");
    assert!(out.contains("IC-Info.sidv"), "{out}");

    let pulled = work.path().join("iBooksData2.plist");
    pmd(&[
        "afc",
        "pull",
        "/Books/iBooksData2.plist",
        pulled.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        side.afc.file("/Books/iBooksData2.plist").unwrap()
    );

    let local = work.path().join("note.txt");
    std::fs::write(&local, b"pushed through AFC").unwrap();
    side.afc.make_dirs("/Downloads").unwrap();
    pmd(&[
        "afc",
        "push",
        local.to_str().unwrap(),
        "/Downloads/note.txt",
    ]);
    assert_eq!(
        side.afc.file("/Downloads/note.txt").as_deref(),
        Some(&b"pushed through AFC"[..])
    );

    let out = pmd(&["apps", "list", "--type", "User"]);
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("apps list printed no JSON ({e}):\n{out}"));
    assert!(json.get("com.example.notes").is_some(), "{out}");
    assert!(json.get("com.example.maps").is_some(), "{out}");

    let icon = work.path().join("icon.png");
    pmd(&[
        "springboard",
        "icon",
        "com.example.notes",
        icon.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&icon).unwrap(), sim_icon_png());
}
