//! lockdownd, host side: framed plist requests, pairing (certificates, pair records), sessions
//! with TLS and StartService. The simulated device's side lives in `crate::sim::lockdownd`.

pub mod certs;
pub mod client;
pub mod pair_record;
pub mod protocol;
pub mod session;
pub mod tls;

pub use client::{
    connect_service, open_service, Error, LockdownClient, PairEvent, PairOptions, ServiceInfo,
    SessionInfo,
};
pub use pair_record::{DirPairStore, HostIdentity, MemoryPairStore, PairRecord, PairStore};
pub use protocol::LockdownError;
pub use session::{open, LockdownSession, SessionOptions};
