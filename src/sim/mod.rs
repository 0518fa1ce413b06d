//! The simulated iPhone: a deterministic synthetic phone and the device side of usbmux, lockdownd,
//! the backup agent and the side services. The harness for every test and the demo.

pub mod agent;
pub mod attach;
pub mod backup;
pub mod device;
pub mod lockdownd;
pub mod phone;
pub mod services;
pub mod simulator;

pub use attach::{attach_in_memory, InMemoryPhone};
