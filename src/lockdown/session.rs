//! Opening a usable lockdown session on an attached phone: pair when this host has no record,
//! start the session, and re-pair once when the phone has forgotten us. What the backup code calls.

use crate::lockdown::client::{
    open_service, Error, LockdownClient, PairEvent, PairOptions, ServiceInfo, SessionInfo,
    DEFAULT_LABEL,
};
use crate::lockdown::pair_record::{HostIdentity, PairRecord, PairRecordError, PairStore};
use crate::lockdown::protocol::{LockdownError, LOCKDOWN_TYPE};
use crate::transport::{BoxStream, DeviceConnector};
use plist::Value;
use std::time::Instant;

/// How `open` behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// The `Label` on every request.
    pub label: String,
    /// Trust dialog timing. A locked phone (`PasswordProtected`) is asked again at the same
    /// pace within the same timeout, so the user can unlock it and then tap Trust.
    pub pair: PairOptions,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            label: DEFAULT_LABEL.to_string(),
            pair: PairOptions::default(),
        }
    }
}

/// A lockdown connection with an active session and the pair record it used.
#[derive(Debug)]
pub struct LockdownSession {
    client: LockdownClient,
    record: PairRecord,
    info: SessionInfo,
    paired_now: bool,
}

impl LockdownSession {
    /// The device's UDID.
    pub fn udid(&self) -> &str {
        self.client.udid()
    }
    /// The pair record in use (already saved in the store).
    pub fn record(&self) -> &PairRecord {
        &self.record
    }
    /// The session (id, TLS version).
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }
    /// Whether `open` had to pair (first time, or the phone forgot this host).
    pub fn paired_now(&self) -> bool {
        self.paired_now
    }
    /// The underlying client, for requests not wrapped here.
    pub fn client(&mut self) -> &mut LockdownClient {
        &mut self.client
    }
    /// `GetValue`.
    pub fn get_value(&mut self, domain: Option<&str>, key: Option<&str>) -> Result<Value, Error> {
        self.client.get_value(domain, key)
    }
    /// `StartService` in this session.
    pub fn start_service(&mut self, name: &str, escrow: bool) -> Result<ServiceInfo, Error> {
        self.client.start_service(name, escrow)
    }
    /// Starts `name` in this session and connects to it (TLS when the device asks).
    pub fn connect_service(
        &mut self,
        conn: &dyn DeviceConnector,
        name: &str,
        escrow: bool,
    ) -> Result<BoxStream, Error> {
        let info = self.client.start_service(name, escrow)?;
        open_service(conn, &info, &self.record)
    }
    /// Stops the session and says goodbye.
    pub fn close(mut self) -> Result<(), Error> {
        self.client.stop_session()?;
        self.client.goodbye()
    }
}

/// Pairs, asking again while the phone is locked, until `deadline`.
fn pair_until(
    client: &mut LockdownClient,
    host: &HostIdentity,
    opts: &PairOptions,
    deadline: Instant,
    events: &mut dyn FnMut(PairEvent),
) -> Result<PairRecord, Error> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = PairOptions {
            trust_timeout: left,
            ..*opts
        };
        match client.pair(host, &attempt, events) {
            Err(e) if e.device_error() == Some(&LockdownError::PasswordProtected) => {
                if Instant::now() + opts.poll_interval > deadline {
                    return Err(e);
                }
                if !opts.poll_interval.is_zero() {
                    std::thread::sleep(opts.poll_interval);
                }
            }
            other => return other,
        }
    }
}

/// QueryType → pair if this host has no record for the phone → StartSession (TLS) → on
/// `InvalidHostID` (the phone forgot us): pair again once and retry. An unreadable stored record
/// counts as none. New records are saved in `store` before the session starts.
pub fn open(
    conn: &dyn DeviceConnector,
    store: &dyn PairStore,
    host: &HostIdentity,
    opts: &SessionOptions,
    events: &mut dyn FnMut(PairEvent),
) -> Result<LockdownSession, Error> {
    let deadline = Instant::now() + opts.pair.trust_timeout;
    let mut client = LockdownClient::connect(conn, &opts.label)?;
    let t = client.query_type()?;
    if t != LOCKDOWN_TYPE {
        return Err(Error::NotLockdown(t));
    }
    let udid = conn.udid().to_string();
    let mut paired_now = false;
    let stored = match store.load(&udid) {
        Ok(r) => r,
        // A damaged record is as good as none: pairing again replaces it.
        Err(PairRecordError::NotAPlist(_) | PairRecordError::MissingField(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let mut record = match stored {
        Some(r) => r,
        None => {
            let r = pair_until(&mut client, host, &opts.pair, deadline, events)?;
            store.save(&udid, &r)?;
            paired_now = true;
            r
        }
    };
    let info = match client.start_session(&record) {
        Ok(info) => info,
        Err(e) if e.device_error() == Some(&LockdownError::InvalidHostID) && !paired_now => {
            // The phone was erased or "Reset Location & Privacy": our record is stale.
            record = pair_until(&mut client, host, &opts.pair, deadline, events)?;
            store.save(&udid, &record)?;
            paired_now = true;
            client.start_session(&record)?
        }
        Err(e) => return Err(e),
    };
    Ok(LockdownSession {
        client,
        record,
        info,
        paired_now,
    })
}
