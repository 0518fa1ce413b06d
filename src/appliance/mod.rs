//! The box's daemon: a pure state machine (`machine`) that turns events into screens and
//! actions, and the I/O shell around it (phones, drive, display, status socket, run log).
//!
//! `machine` has no I/O and takes time as a parameter; `daemon` is the loop that feeds it;
//! `job` runs one phone's backup on its own thread; `destination` hides where backups go
//! (`repo_dest`: the drive's Cradle repository).

pub mod config;
pub mod daemon;
pub mod destination;
pub mod drive;
pub mod job;
pub mod machine;
pub mod memstore;
pub mod phones;
pub mod repo_dest;
pub mod status;

pub use daemon::{BoxedPanel, Daemon, DaemonParts, Input, NullPanel, PanelOpener};
pub use destination::{
    Destination, DestinationError, FolderDestination, StoreProgress, StoreRequest, Stored,
};
pub use drive::{DirDrive, DriveWatch, LabelDrive};
pub use machine::{
    Action, Appliance, DriveKind, Event, Failure, JobEvent, JobId, MachineConfig, PhoneStatus,
    RunRecord, Stage, DEFAULT_PASSCODE_TIMEOUT,
};
pub use memstore::MemorySecretStore;
pub use phones::{plug_simulator, spawn_usb_watcher};
pub use repo_dest::RepoDestination;
pub use status::{query_status, render_human, serve_status, StatusReport};
