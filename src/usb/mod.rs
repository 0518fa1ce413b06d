//! usbmux: the multiplexing protocol an iPhone speaks on its USB interface, and the usbmuxd
//! socket protocol desktops use. Everything above sees only "open a stream to port N".

pub mod descriptors;
pub mod mux;
pub mod muxd;
