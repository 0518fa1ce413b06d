//! lockdownd, host side: framed plist requests, pairing (certificates, pair records), sessions
//! with TLS and StartService. The simulated device's side lives in `crate::sim::lockdownd`.

pub mod certs;
pub mod pair_record;
pub mod protocol;
pub mod tls;

pub use pair_record::{DirPairStore, HostIdentity, MemoryPairStore, PairRecord, PairStore};
pub use protocol::LockdownError;
