//! DeviceLink and mobilebackup2: the wire codec shared by the host and the simulated backup agent,
//! the host side of a backup (`host`), and the `BackupTarget` its file operations act on.
//!
//! Layers: `dl` (framing, caps) → `messages` (typed messages both ways) and `file_stream` (raw
//! upload/download streams) → `host` (handshake states and the operation loop) on a `target`.

pub mod dl;
pub mod file_stream;
pub mod host;
pub mod messages;
pub mod run;
pub mod target;

pub use file_stream::{FileHeader, FileStreamReader, FileStreamWriter, StreamEvent, StreamKind};
pub use host::{
    BackupEvent, BackupOptions, DeviceFailure, HostError, Mb2Session, Phase, Progress,
    SessionConfig, TransferSummary,
};
pub use messages::{DeviceMessage, DeviceResponse, HostMessage, HostRequest, StatusResponse};
pub use target::{BackupPath, BackupTarget, FolderTarget, TargetError, UploadSink};
