//! The phone's end of a mobilebackup2 connection, scripted by a test: DeviceLink messages out,
//! the host's messages in, the version exchange and Hello. Tests add their own steps.

use cradle::backup2::messages::DeviceResponse;
use cradle::backup2::{DeviceMessage, HostMessage, HostRequest, StatusResponse};
use std::io::{Read, Write};

/// A scripted phone over `S` (a socket pair's end, or a stream from the simulated device).
pub struct ScriptedPhone<S> {
    pub s: S,
}

impl<S: Read + Write> ScriptedPhone<S> {
    pub fn new(s: S) -> Self {
        ScriptedPhone { s }
    }

    pub fn send(&mut self, m: DeviceMessage) {
        m.write_to(&mut self.s).expect("phone send");
    }

    pub fn recv(&mut self) -> HostMessage {
        HostMessage::read_from(&mut self.s).expect("phone receive")
    }

    pub fn status(&mut self) -> StatusResponse {
        match self.recv() {
            HostMessage::StatusResponse(s) => s,
            other => panic!("expected a status response, got {other:?}"),
        }
    }

    /// Version exchange (the phone offers 300.0), DeviceReady, then the host's Hello answered
    /// with protocol version `answer`. Returns the versions the host offered.
    pub fn handshake(&mut self, answer: f64) -> Vec<f64> {
        self.send(DeviceMessage::VersionExchange {
            major: 300,
            minor: 0,
        });
        assert_eq!(self.recv(), HostMessage::VersionsOk { major: 400 });
        self.send(DeviceMessage::DeviceReady);
        let versions = match self.recv() {
            HostMessage::ProcessMessage(HostRequest::Hello { versions }) => versions,
            other => panic!("expected Hello, got {other:?}"),
        };
        let mut r = DeviceResponse::new(0);
        r.protocol_version = Some(answer);
        self.send(DeviceMessage::ProcessMessage(r.to_dict()));
        versions
    }

    /// Waits for the host's DLMessageDisconnect (or EOF).
    pub fn expect_disconnect(&mut self) {
        match HostMessage::read_from(&mut self.s) {
            Ok(HostMessage::Disconnect) | Err(_) => {}
            Ok(other) => panic!("expected Disconnect, got {other:?}"),
        }
    }
}
