//! Cradle: firmware for a backup box that takes encrypted iPhone backups onto a USB drive.
//!
//! Layers, left to right along the path of a backup (see `docs/architecture.md`):
//! `usb` (usbmux) → `lockdown` (pairing, TLS) → `backup2` (DeviceLink/mobilebackup2) →
//! `ios_backup` (Apple's on-disk format). `sim` is the simulated iPhone used by the tests and the demo.
#![forbid(unsafe_code)]
#![deny(unused_must_use)]

pub mod appliance;
pub mod backup2;
pub mod display;
pub mod ios_backup;
pub mod lockdown;
pub mod password;
pub mod plist_frame;
pub mod sd_notify;
pub mod secrets;
pub mod services;
pub mod sim;
pub mod store;
pub mod transport;
pub mod usb;
