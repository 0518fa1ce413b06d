//! lockdownd: framed plist requests, pairing, TLS sessions and StartService. (being written)
