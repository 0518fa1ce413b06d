//! Phones coming and going: the box's USB watcher (nusb, polled) and the simulated phone plugged
//! in over the in-memory usbmux link. Both send `Input::PhoneAttached/Detached` to the daemon.

use super::daemon::Input;
use crate::sim::simulator::Simulator;
use crate::sim::InMemoryPhone;
use crate::usb::{MuxHost, MuxLinkError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// How often the USB bus is listed.
pub const USB_POLL: Duration = Duration::from_secs(1);

/// Sends `PhoneDetached` once `host` is detached (cable pulled, link died, or shut down).
fn watch_detach(host: Arc<MuxHost>, udid: String, tx: Sender<Input>) {
    let _ = std::thread::Builder::new()
        .name("phone-watch".into())
        .spawn(move || {
            while !host.wait_detached(Duration::from_secs(1)) {}
            let _ = tx.send(Input::PhoneDetached { udid });
        });
}

/// Plugs a simulated phone into the daemon. Keep the returned phone: dropping it unplugs.
pub fn plug_simulator(
    tx: &Sender<Input>,
    sim: Arc<Simulator>,
) -> Result<Arc<InMemoryPhone>, MuxLinkError> {
    let phone = Arc::new(crate::sim::attach_in_memory(sim)?);
    let udid = crate::transport::DeviceConnector::udid(phone.as_ref()).to_string();
    let _ = tx.send(Input::PhoneAttached {
        udid: udid.clone(),
        conn: phone.clone(),
    });
    watch_detach(phone.host().clone(), udid, tx.clone());
    Ok(phone)
}

/// Watches the USB bus for iPhones until `stop` is set: each new one is opened (its usbmux
/// interface claimed) and announced; it is announced gone when its link detaches.
pub fn spawn_usb_watcher(
    tx: Sender<Input>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("usb-watch".into())
        .spawn(move || {
            let mut open: HashMap<String, Arc<MuxHost>> = HashMap::new();
            let mut failed_logged: HashMap<String, String> = HashMap::new();
            while !stop.load(Ordering::SeqCst) {
                open.retain(|_, h| h.is_attached());
                match crate::usb::discover::list_apple_devices() {
                    Ok(list) => {
                        for (cand, _) in list {
                            if !cand.is_usbmux_device() {
                                continue;
                            }
                            let Some(udid) = cand.udid.clone() else {
                                continue;
                            };
                            if open.contains_key(&udid) {
                                continue;
                            }
                            match crate::usb::open_usb_device(Some(&udid)) {
                                Ok(host) => {
                                    failed_logged.remove(&udid);
                                    open.insert(udid.clone(), host.clone());
                                    let _ = tx.send(Input::PhoneAttached {
                                        udid: udid.clone(),
                                        conn: host.clone(),
                                    });
                                    watch_detach(host, udid, tx.clone());
                                }
                                Err(e) => {
                                    let msg = e.to_string();
                                    if failed_logged.get(&udid) != Some(&msg) {
                                        tracing::warn!("opening iPhone {udid}: {msg}");
                                        failed_logged.insert(udid, msg);
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!("listing USB devices: {e}"),
                }
                std::thread::sleep(USB_POLL);
            }
        })
}
