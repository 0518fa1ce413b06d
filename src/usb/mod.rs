//! usbmux: the multiplexing protocol an iPhone speaks on its USB interface, and the usbmuxd
//! socket protocol desktops use. (being written)
