//! usbmux: the multiplexing protocol an iPhone speaks on its USB interface, and the usbmuxd
//! socket protocol desktops use. Everything above sees only "open a stream to port N".
//!
//! Layers: `descriptors` (find the interface) → `pipe` (bulk transfers: nusb or in memory) →
//! `mux` (the sans-IO protocol core) → `link` (threads; `MuxHost` is a `DeviceConnector`,
//! `MuxDevice` serves a simulated phone). `muxd` is the usbmuxd socket protocol, both sides.

pub mod descriptors;
pub mod discover;
pub mod link;
pub mod mux;
pub mod muxd;
pub mod pipe;

pub use discover::{open_usb_device, UsbDiscoverError};
pub use link::{MuxDevice, MuxHost, MuxLinkError, MuxStream};
pub use pipe::{mem_pipe_pair, BulkPipe, MemPipe, MemPipeControl, NusbPipe, PipeError};
