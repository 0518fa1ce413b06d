//! Host clients against the simulated device's side services, in memory over socket pairs:
//! the sync lock sequence, lock contention, AFC reads, Browse, icons, notification relays and
//! shutdown, and hostile input on both sides.

use cradle::plist_frame::{encode, read_frame, PlistFormat};
use cradle::services::afc::{
    AfcClient, AfcError, AfcHeader, AfcPacket, AfcReply, AfcStatus, FileHandle, LockOp, OpenMode,
    SyncLock, SyncLockError, SyncLockPolicy, AFC_HEADER_LEN, MAX_AFC_PACKET_LEN, SYNC_LOCK_PATH,
};
use cradle::services::installation_proxy::{
    InstProxyError, InstallationProxyClient, BACKUP_APP_ATTRIBUTES,
};
use cradle::services::notification_proxy::{
    NotificationProxyClient, NpError, BACKUP_DOMAIN_CHANGED, LOCAL_AUTH_UI_PRESENTED,
    SYNC_CANCEL_REQUEST, SYNC_DID_FINISH, SYNC_DID_START, SYNC_LOCK_REQUEST, SYNC_WILL_START,
};
use cradle::services::springboard::SpringboardClient;
use cradle::sim::device::ServiceHandler;
use cradle::sim::services::{
    afc_handler, installation_proxy_handler_batched, sim_app, sim_icon_png, springboard_handler,
    SideServices, SimAfcFs,
};
use cradle::transport::BoxStream;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Guards against a hung test: no single read in these tests should take this long.
const TEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn socket_pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_read_timeout(Some(TEST_READ_TIMEOUT)).unwrap();
    (a, b)
}

/// Serves one connection with `handler` on a thread; returns the host end.
fn serve(handler: &ServiceHandler) -> (UnixStream, JoinHandle<()>) {
    let (host, dev) = socket_pair();
    let h = handler.clone();
    let t = std::thread::spawn(move || h(Box::new(dev) as BoxStream));
    (host, t)
}

fn boxed(s: UnixStream) -> BoxStream {
    Box::new(s)
}

fn side() -> (SideServices, ServiceHandler, ServiceHandler) {
    let s = SideServices::new(Vec::new());
    let [(_, np), (_, afc), _, _] = s.handlers();
    (s, np, afc)
}

/// What a host posts over a whole sync lock: acquire, then release.
const FULL_SYNC_POSTS: [&str; 4] = [
    SYNC_WILL_START,
    SYNC_LOCK_REQUEST,
    SYNC_DID_START,
    SYNC_DID_FINISH,
];

/// The sync lock file held exclusively by another host (`holder`, handle `hh`), and this host's
/// notification_proxy and AFC clients.
struct Contended {
    s: SideServices,
    holder: AfcClient,
    hh: FileHandle,
    np: NotificationProxyClient,
    afc: AfcClient,
}

fn contended() -> Contended {
    let (s, np_h, afc_h) = side();
    let (np_s, _np_t) = serve(&np_h);
    let (holder_s, _t1) = serve(&afc_h);
    let (afc_s, _t2) = serve(&afc_h);
    let mut holder = AfcClient::new(boxed(holder_s));
    let hh = holder.open(SYNC_LOCK_PATH, OpenMode::ReadWrite).unwrap();
    holder.lock(hh, LockOp::Exclusive).unwrap();
    Contended {
        s,
        holder,
        hh,
        np: NotificationProxyClient::new(boxed(np_s)),
        afc: AfcClient::new(boxed(afc_s)),
    }
}

#[test]
fn sync_lock_acquire_and_release_post_in_order() {
    let (s, np_h, afc_h) = side();
    let (np_s, np_t) = serve(&np_h);
    let (afc_s, afc_t) = serve(&afc_h);
    let mut np = NotificationProxyClient::new(boxed(np_s));
    let mut afc = AfcClient::new(boxed(afc_s));
    let mut sleeps = 0;
    let lock = SyncLock::acquire(&mut afc, &mut np, SyncLockPolicy::default(), &mut |_| {
        sleeps += 1
    })
    .unwrap();
    assert_eq!(sleeps, 0);
    assert!(s.afc.exists(SYNC_LOCK_PATH), "r+ creates the lock file");
    assert!(s.afc.is_locked(SYNC_LOCK_PATH));
    lock.release(&mut afc, &mut np).unwrap();
    assert!(!s.afc.is_locked(SYNC_LOCK_PATH));
    assert_eq!(s.afc.open_file_count(), 0);
    // ProxyDeath comes after every earlier post has been handled.
    np.shutdown(TEST_READ_TIMEOUT).unwrap();
    assert_eq!(s.notifications.host_posts(), FULL_SYNC_POSTS);
    drop(afc);
    np_t.join().unwrap();
    afc_t.join().unwrap();
}

#[test]
fn sync_lock_retries_while_another_host_holds_it() {
    let Contended {
        s,
        mut holder,
        hh,
        mut np,
        mut afc,
    } = contended();
    let mut slept = Vec::new();
    let lock = SyncLock::acquire(&mut afc, &mut np, SyncLockPolicy::default(), &mut |d| {
        slept.push(d);
        if slept.len() == 3 {
            holder.lock(hh, LockOp::Unlock).unwrap();
        }
    })
    .unwrap();
    assert_eq!(slept, vec![Duration::from_millis(200); 3]);
    lock.release(&mut afc, &mut np).unwrap();
    np.shutdown(TEST_READ_TIMEOUT).unwrap();
    assert_eq!(s.notifications.host_posts(), FULL_SYNC_POSTS);
}

#[test]
fn sync_lock_gives_up_after_the_last_attempt_and_closes_the_file() {
    // The holder stays connected, and the lock held, to the end.
    let Contended {
        s,
        holder: _holder,
        mut np,
        mut afc,
        ..
    } = contended();
    let mut sleeps = 0;
    let policy = SyncLockPolicy {
        attempts: 5,
        interval: Duration::from_millis(200),
    };
    let err = SyncLock::acquire(&mut afc, &mut np, policy, &mut |_| sleeps += 1).unwrap_err();
    assert!(matches!(err, SyncLockError::Busy { attempts: 5 }), "{err}");
    assert_eq!(sleeps, 4);
    assert_eq!(
        s.afc.open_file_count(),
        1,
        "only the holder's handle stays open"
    );
    np.shutdown(TEST_READ_TIMEOUT).unwrap();
    assert_eq!(
        s.notifications.host_posts(),
        [SYNC_WILL_START, SYNC_LOCK_REQUEST]
    );
}

#[test]
fn sync_lock_can_post_through_a_fresh_proxy_per_notification() {
    // idevicebackup2 style: a new notification_proxy connection for every post.
    let (s, np_h, afc_h) = side();
    let (afc_s, _t) = serve(&afc_h);
    let mut afc = AfcClient::new(boxed(afc_s));
    let mut post = |name: &str| -> Result<(), NpError> {
        let (np_s, t) = serve(&np_h);
        let mut np = NotificationProxyClient::new(boxed(np_s));
        np.post(name)?;
        np.shutdown(TEST_READ_TIMEOUT)?;
        t.join().unwrap();
        Ok(())
    };
    let lock =
        SyncLock::acquire(&mut afc, &mut post, SyncLockPolicy::default(), &mut |_| {}).unwrap();
    lock.release(&mut afc, &mut post).unwrap();
    assert_eq!(s.notifications.host_posts(), FULL_SYNC_POSTS);
}

#[test]
fn afc_stat_missing_read_and_list() {
    let fs = Arc::new(SimAfcFs::new());
    let (afc_s, _t) = serve(&afc_handler(fs.clone()));
    let mut afc = AfcClient::new(boxed(afc_s));
    assert_eq!(afc.get_file_info("/Books/iBooksData2.plist").unwrap(), None);
    assert_eq!(
        afc.read_file("/iTunes_Control/iTunes/iTunesPrefs", 1 << 20)
            .unwrap(),
        None
    );

    fs.seed_itunes_files().unwrap();
    let prefs = "/iTunes_Control/iTunes/iTunesPrefs.plist";
    let info = afc.get_file_info(prefs).unwrap().unwrap();
    assert_eq!(info.size, fs.file(prefs).unwrap().len() as u64);
    assert_eq!(afc.read_file(prefs, 1 << 20).unwrap(), fs.file(prefs));
    assert!(matches!(
        afc.read_file(prefs, 10),
        Err(AfcError::TooLarge { .. })
    ));
    assert!(matches!(
        afc.read_file("/iTunes_Control", 1 << 20),
        Err(AfcError::NotAFile { .. })
    ));
    let mut names = afc.read_directory("/iTunes_Control/iTunes").unwrap();
    names.sort();
    assert_eq!(names, ["IC-Info.sidv", "iTunesPrefs.plist"]);

    // A file larger than one read chunk comes back whole.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    fs.put_file("/big.bin", &big).unwrap();
    assert_eq!(afc.read_file("/big.bin", 8 << 20).unwrap().unwrap(), big);

    // Write, mkdir, remove through the client.
    afc.make_dir("/a/b").unwrap();
    let h = afc.open("/a/b/f", OpenMode::WriteOnly).unwrap();
    afc.write(h, b"payload", "/a/b/f").unwrap();
    afc.close(h).unwrap();
    assert_eq!(fs.file("/a/b/f").as_deref(), Some(&b"payload"[..]));
    let e = afc.remove_path("/a").unwrap_err();
    assert_eq!(e.status(), Some(AfcStatus::DIR_NOT_EMPTY));
    afc.remove_path("/a/b/f").unwrap();
    assert!(!fs.exists("/a/b/f"));
    assert!(matches!(
        afc.open("bad\0path", OpenMode::ReadOnly),
        Err(AfcError::InvalidPath { .. })
    ));
}

#[test]
fn browse_collects_several_batches() {
    let apps: Vec<_> = (0..7)
        .map(|i| {
            sim_app(
                &format!("com.example.app{i}"),
                &format!("App {i}"),
                i % 2 == 0,
            )
        })
        .collect();
    let h = installation_proxy_handler_batched(Arc::new(apps), 3);
    let (s, t) = serve(&h);
    let mut ip = InstallationProxyClient::new(boxed(s));
    let got = ip.browse_user_apps(&BACKUP_APP_ATTRIBUTES).unwrap();
    assert_eq!(got.len(), 7);
    assert_eq!(
        got[4]["CFBundleIdentifier"].as_string(),
        Some("com.example.app4")
    );
    assert!(got[4].contains_key("ApplicationSINF") && got[4].contains_key("iTunesMetadata"));
    assert!(!got[3].contains_key("ApplicationSINF"));
    assert!(
        !got[0].contains_key("CFBundleDisplayName"),
        "only the requested attributes"
    );
    // The connection stays usable for a second Browse.
    assert_eq!(
        ip.browse_user_apps(&["CFBundleIdentifier"]).unwrap().len(),
        7
    );
    drop(ip);
    t.join().unwrap();
}

/// A fake device that reads one request and answers with `replies`.
fn fake_plist_device(replies: Vec<Vec<u8>>) -> (UnixStream, JoinHandle<()>) {
    let (host, mut dev) = socket_pair();
    let t = std::thread::spawn(move || {
        let _ = read_frame(&mut dev);
        for r in replies {
            let _ = dev.write_all(&r);
        }
    });
    (host, t)
}

fn dict(pairs: &[(&str, plist::Value)]) -> plist::Value {
    let mut d = plist::Dictionary::new();
    for (k, v) in pairs {
        d.insert((*k).into(), v.clone());
    }
    d.into()
}

#[test]
fn browse_reports_device_errors_and_malformed_replies() {
    let err = dict(&[
        ("Error", "DeviceLocked".into()),
        ("ErrorDescription", "locked".into()),
    ]);
    let (s, _t) = fake_plist_device(vec![encode(&err, PlistFormat::Xml)]);
    let e = InstallationProxyClient::new(boxed(s))
        .browse_user_apps(&["CFBundleIdentifier"])
        .unwrap_err();
    assert!(
        matches!(&e, InstProxyError::Device { error, .. } if error == "DeviceLocked"),
        "{e}"
    );

    let bad = dict(&[
        ("Status", "BrowsingApplications".into()),
        ("CurrentList", "not a list".into()),
    ]);
    let (s, _t) = fake_plist_device(vec![encode(&bad, PlistFormat::Binary)]);
    let e = InstallationProxyClient::new(boxed(s))
        .browse_user_apps(&[])
        .unwrap_err();
    assert!(matches!(e, InstProxyError::Malformed(_)), "{e}");

    let (s, _t) = fake_plist_device(vec![vec![0xff, 0xff, 0xff, 0xff]]);
    let e = InstallationProxyClient::new(boxed(s))
        .browse_user_apps(&[])
        .unwrap_err();
    assert!(matches!(e, InstProxyError::Frame(_)), "{e}");
}

#[test]
fn icon_comes_back_as_png() {
    let (s, t) = serve(&springboard_handler());
    let mut sb = SpringboardClient::new(boxed(s));
    let png = sb.icon_png("com.example.app0").unwrap();
    assert_eq!(png, sim_icon_png());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    drop(sb);
    t.join().unwrap();

    let (s, _t) = fake_plist_device(vec![encode(
        &dict(&[("Error", "nope".into())]),
        PlistFormat::Xml,
    )]);
    assert!(SpringboardClient::new(boxed(s)).icon_png("x").is_err());
}

#[test]
fn notifications_relay_to_observers_and_shutdown_gets_proxy_death() {
    let (s, np_h, _) = side();
    let (np_s, t) = serve(&np_h);
    let mut np = NotificationProxyClient::new(boxed(np_s));
    np.observe(SYNC_CANCEL_REQUEST).unwrap();
    np.observe(BACKUP_DOMAIN_CHANGED).unwrap();
    assert!(s
        .notifications
        .wait_for_observers(BACKUP_DOMAIN_CHANGED, 1, TEST_READ_TIMEOUT));
    assert_eq!(
        np.next_notification(Duration::from_millis(20)).unwrap(),
        None
    );
    assert_eq!(
        s.notifications.post(LOCAL_AUTH_UI_PRESENTED),
        0,
        "not observed"
    );
    assert_eq!(s.notifications.post(BACKUP_DOMAIN_CHANGED), 1);
    assert_eq!(
        np.next_notification(TEST_READ_TIMEOUT).unwrap().as_deref(),
        Some(BACKUP_DOMAIN_CHANGED)
    );
    s.notifications.post(SYNC_CANCEL_REQUEST);
    assert_eq!(
        np.next_notification(TEST_READ_TIMEOUT).unwrap().as_deref(),
        Some(SYNC_CANCEL_REQUEST)
    );
    np.shutdown(TEST_READ_TIMEOUT).unwrap();
    t.join().unwrap();
    assert_eq!(
        s.notifications.observer_count(BACKUP_DOMAIN_CHANGED),
        0,
        "gone after close"
    );
}

#[test]
fn np_device_closes_on_a_4_gib_frame() {
    let (_, np_h, _) = side();
    let (mut host, t) = serve(&np_h);
    host.write_all(&[0xff, 0xff, 0xff, 0xff, b'<', b'?'])
        .unwrap();
    expect_closed(&mut host);
    t.join().unwrap();
}

#[test]
fn np_client_refuses_a_4_gib_frame() {
    let (host, mut dev) = socket_pair();
    dev.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    let mut np = NotificationProxyClient::new(boxed(host));
    assert!(np.next_notification(TEST_READ_TIMEOUT).is_err());
}

fn raw_header(entire: u64, this: u64, num: u64, op: u64) -> Vec<u8> {
    let mut v = Vec::new();
    AfcHeader {
        entire_length: entire,
        this_length: this,
        packet_num: num,
        operation: op,
    }
    .encode(&mut v);
    v
}

/// Reads one reply packet and checks that it is STATUS `want` numbered `num`.
fn expect_status(host: &mut UnixStream, num: u64, want: AfcStatus) {
    let p = cradle::services::afc::read_packet(host, MAX_AFC_PACKET_LEN).unwrap();
    assert_eq!(p.packet_num, num);
    assert_eq!(AfcReply::from_packet(&p).unwrap(), AfcReply::Status(want));
}

fn expect_closed(host: &mut UnixStream) {
    let mut b = [0u8; 1];
    match host.read(&mut b) {
        Ok(0) => {}
        // Linux reports a reset when the peer closed with unread bytes.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
}

#[test]
fn afc_device_survives_hostile_packets() {
    let h = afc_handler(Arc::new(SimAfcFs::new()));

    // entire_length 2^63: refused with the packet number echoed, then closed.
    let (mut host, t) = serve(&h);
    host.write_all(&raw_header(1 << 63, 40, 41, 0x0A)).unwrap();
    expect_status(&mut host, 41, AfcStatus::OP_HEADER_INVALID);
    expect_closed(&mut host);
    t.join().unwrap();

    // this_length < 40.
    let (mut host, t) = serve(&h);
    host.write_all(&raw_header(48, 8, 42, 0x0A)).unwrap();
    expect_status(&mut host, 42, AfcStatus::OP_HEADER_INVALID);
    expect_closed(&mut host);
    t.join().unwrap();

    // Bad magic: closed without a reply.
    let (mut host, t) = serve(&h);
    let mut bad = raw_header(40, 40, 1, 0x0A);
    bad[..8].copy_from_slice(b"GET / HT");
    host.write_all(&bad).unwrap();
    expect_closed(&mut host);
    t.join().unwrap();

    // Unknown operation and a bad body get a status and the connection goes on.
    let (mut host, t) = serve(&h);
    host.write_all(&raw_header(40, 40, 7, 0x99)).unwrap();
    expect_status(&mut host, 7, AfcStatus::UNKNOWN_PACKET_TYPE);
    host.write_all(&raw_header(40, 40, 8, 0x0F)).unwrap(); // Read without arguments
    expect_status(&mut host, 8, AfcStatus::INVALID_ARG);
    let mut p = raw_header(45, 45, 9, 0x0A);
    p.extend_from_slice(b"/nope"); // no NUL
    host.write_all(&p).unwrap();
    expect_status(&mut host, 9, AfcStatus::INVALID_ARG);
    let mut p = raw_header(48, 48, 10, 0x0A);
    p.extend_from_slice(b"/nowhere\0"[..8].as_ref());
    host.write_all(&p).unwrap();
    expect_status(&mut host, 10, AfcStatus::INVALID_ARG);
    let mut p = raw_header(
        AFC_HEADER_LEN as u64 + 2,
        AFC_HEADER_LEN as u64 + 2,
        11,
        0x0A,
    );
    p.extend_from_slice(b"/\0");
    host.write_all(&p).unwrap();
    let reply = cradle::services::afc::read_packet(&mut host, MAX_AFC_PACKET_LEN).unwrap();
    assert_eq!((reply.packet_num, reply.operation), (11, 0x02));
    // EOF in the middle of a packet ends the handler quietly.
    host.write_all(&raw_header(100, 40, 12, 0x10)[..30])
        .unwrap();
    drop(host);
    t.join().unwrap();
}

#[test]
fn afc_client_rejects_bad_replies() {
    // Wrong packet number.
    let (host, mut dev) = socket_pair();
    let t = std::thread::spawn(move || {
        let _ = cradle::services::afc::read_packet(&mut dev, MAX_AFC_PACKET_LEN);
        let mut out = Vec::new();
        AfcReply::Status(AfcStatus::SUCCESS)
            .to_packet(99)
            .encode(&mut out);
        dev.write_all(&out).unwrap();
    });
    let mut afc = AfcClient::new(boxed(host));
    assert!(matches!(
        afc.make_dir("/x"),
        Err(AfcError::PacketNumberMismatch {
            expected: 0,
            got: 99
        })
    ));
    t.join().unwrap();

    // A 2^63-byte reply.
    let (host, mut dev) = socket_pair();
    let t = std::thread::spawn(move || {
        let _ = cradle::services::afc::read_packet(&mut dev, MAX_AFC_PACKET_LEN);
        dev.write_all(&raw_header(1 << 63, 40, 0, 0x02)).unwrap();
    });
    let mut afc = AfcClient::new(boxed(host));
    assert!(matches!(
        afc.get_file_info("/x"),
        Err(AfcError::Protocol { .. })
    ));
    t.join().unwrap();

    // A stat reply that is not a key/value list.
    let (host, mut dev) = socket_pair();
    let t = std::thread::spawn(move || {
        let _ = cradle::services::afc::read_packet(&mut dev, MAX_AFC_PACKET_LEN);
        let mut out = Vec::new();
        AfcPacket {
            packet_num: 0,
            operation: 0x02,
            header_data: Vec::new(),
            payload: b"st_size\0".to_vec(),
        }
        .encode(&mut out);
        dev.write_all(&out).unwrap();
    });
    let mut afc = AfcClient::new(boxed(host));
    assert!(matches!(
        afc.get_file_info("/x"),
        Err(AfcError::Protocol { .. })
    ));
    t.join().unwrap();
}

#[test]
fn plist_services_close_on_garbage() {
    for h in [
        springboard_handler(),
        installation_proxy_handler_batched(Arc::new(Vec::new()), 1),
    ] {
        let (mut host, t) = serve(&h);
        host.write_all(&[0, 0, 0, 4, 1, 2, 3, 4]).unwrap();
        expect_closed(&mut host);
        t.join().unwrap();
        let (mut host, t) = serve(&h);
        host.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
        expect_closed(&mut host);
        t.join().unwrap();
    }
}

#[test]
fn watcher_forwards_relays_until_stopped() {
    let (s, np_h, _) = side();
    let (np_s, t) = serve(&np_h);
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = NotificationProxyClient::new(boxed(np_s))
        .spawn_watcher(&[SYNC_CANCEL_REQUEST, LOCAL_AUTH_UI_PRESENTED], move |n| {
            let _ = tx.send(n);
        })
        .unwrap();
    assert!(s
        .notifications
        .wait_for_observers(LOCAL_AUTH_UI_PRESENTED, 1, TEST_READ_TIMEOUT));
    s.notifications.post(LOCAL_AUTH_UI_PRESENTED);
    s.notifications.post(SYNC_CANCEL_REQUEST);
    assert_eq!(
        rx.recv_timeout(TEST_READ_TIMEOUT).unwrap(),
        LOCAL_AUTH_UI_PRESENTED
    );
    assert_eq!(
        rx.recv_timeout(TEST_READ_TIMEOUT).unwrap(),
        SYNC_CANCEL_REQUEST
    );
    watcher.stop().unwrap();
    t.join().unwrap();
    assert_eq!(s.notifications.observer_count(SYNC_CANCEL_REQUEST), 0);
}
