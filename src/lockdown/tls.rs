//! TLS on device streams: the host as client (pair-record certificate, no server verification, as
//! every real host does) and the simulated device as server; streams can return to plaintext.

use crate::transport::{BoxStream, Duplex};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ProtocolVersion, ServerConfig,
    SignatureScheme,
};
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

/// Length of a TLS record header.
const RECORD_HEADER_LEN: usize = 5;
/// Largest record body a peer may send (RFC 5246 §6.2.3: 2^14 + 2048).
pub const MAX_TLS_RECORD_BODY: usize = 16384 + 2048;

/// Which TLS versions a side offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersions {
    /// TLS 1.2 and 1.3 (what both real hosts and current iOS negotiate).
    #[default]
    Both,
    /// TLS 1.2 only (as devices were observed to answer before TLS 1.3).
    Tls12Only,
    /// TLS 1.3 only.
    Tls13Only,
}

impl TlsVersions {
    fn list(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static V12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static V13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersions::Both => &BOTH,
            TlsVersions::Tls12Only => &V12,
            TlsVersions::Tls13Only => &V13,
        }
    }
}

/// Why a TLS layer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate (from a pair record) is not PEM.
    #[error("the {what} is not a PEM certificate")]
    BadCertificate { what: &'static str },
    /// A private key (from a pair record) is not usable.
    #[error("the {what} is not a usable private key: {detail}")]
    BadKey { what: &'static str, detail: String },
    /// Local fault: rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The handshake failed (peer closed, sent garbage, or negotiation failed).
    #[error("the TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
}

/// Signature schemes offered. RSA only: every pairing key is RSA.
const RSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    provider: &CryptoProvider,
    cert_pem: &[u8],
    key: PrivateKeyDer<'static>,
    what: &'static str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert =
        CertificateDer::from_pem_slice(cert_pem).map_err(|_| TlsError::BadCertificate { what })?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            what,
            detail: e.to_string(),
        })?;
    // `CertifiedKey::new` does not parse the certificate: pair records made by other hosts
    // (serial 0, SHA-1, empty names) must work unchanged.
    Ok(Arc::new(CertifiedKey::new(vec![cert], signer)))
}

/// Parses a PEM private key (PKCS#8 or PKCS#1).
pub fn private_key_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::BadKey {
        what,
        detail: e.to_string(),
    })
}

/// The handshake-signature checks of a verifier that accepts anything: neither end checks the
/// other's certificate (see [`AcceptAnyServer`], [`AcceptAnyClient`]), so nor its signatures.
macro_rules! accept_any_signature {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
    };
}

/// Accepts any server certificate. No host verifies the device: the device certificate is
/// the one the host itself issued at pairing, and real devices present it unverifiable.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    accept_any_signature!();
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        RSA_SCHEMES.to_vec()
    }
}

/// Always presents the pair record's certificate.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The host's TLS configuration: TLS 1.2 and 1.3, client certificate `cert_pem` with `key_pem`
/// (the pair record's HostCertificate and HostPrivateKey).
pub fn client_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let key = private_key_from_pem(key_pem, "host private key")?;
    let ck = certified_key(&provider, cert_pem, key, "host certificate")?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(TlsVersions::Both.list())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_cert_resolver(Arc::new(FixedClientCert(ck)));
    // Like libimobiledevice and pymobiledevice3: no SNI, a full handshake every time.
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Asks for a client certificate but accepts whatever comes, or none: hosts send the root
/// certificate (libimobiledevice with OpenSSL) or the host certificate (pymobiledevice3), some
/// SHA-1-signed with serial 0 and empty names. Whether a real device checks it is unknown.
#[derive(Debug)]
struct AcceptAnyClient;

impl ClientCertVerifier for AcceptAnyClient {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    accept_any_signature!();
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let mut v = RSA_SCHEMES.to_vec();
        v.push(SignatureScheme::RSA_PKCS1_SHA1);
        v
    }
}

/// Always presents the device certificate.
#[derive(Debug)]
struct FixedServerCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedServerCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The device's TLS configuration: certificate `cert_pem` (the DeviceCertificate the host made
/// at pairing) with the device's own key.
pub fn server_config(
    cert_pem: &[u8],
    key: PrivateKeyDer<'static>,
    versions: TlsVersions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let ck = certified_key(&provider, cert_pem, key, "device certificate")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions.list())?
        .with_client_cert_verifier(Arc::new(AcceptAnyClient))
        .with_cert_resolver(Arc::new(FixedServerCert(ck)));
    // No session tickets: nothing may follow the handshake that a host returning to plaintext
    // after StopSession would have to skip.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Stands in for the socket once it has been handed back.
struct Detached;

impl Read for Detached {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}
impl Write for Detached {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::NotConnected.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Duplex for Detached {}

/// A stream whose first bytes were already read (a plaintext frame header read while looking
/// for a TLS record).
pub struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: BoxStream,
}

impl Prefixed {
    /// `prefix` comes out of `read` before anything from `inner`.
    pub fn new(prefix: Vec<u8>, inner: BoxStream) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl Read for Prefixed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.prefix.len() {
            let n = buf.len().min(self.prefix.len() - self.pos);
            buf[..n].copy_from_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}
impl Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
impl Duplex for Prefixed {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }
    fn shutdown(&self) -> io::Result<()> {
        self.inner.shutdown()
    }
}

fn looks_like_tls_header(h: &[u8]) -> bool {
    // Content types 20..=24 (change_cipher_spec, alert, handshake, application_data, heartbeat)
    // and a 3.x version. A plaintext lockdown frame never starts like this: its first byte is
    // the top byte of a length that would be over 300 MB.
    h.len() >= 3 && (20..=24).contains(&h[0]) && h[1] == 3
}

/// TLS over a device stream. Reads whole records from the socket, never more, so that the
/// stream can be handed back in plaintext after StopSession without losing a byte.
pub struct TlsStream {
    conn: rustls::Connection,
    sock: BoxStream,
    /// A record being received (kept across read timeouts).
    rec: Vec<u8>,
    /// The socket reached EOF.
    sock_eof: bool,
    /// close_notify was sent, or the socket was handed back: Drop sends nothing.
    done: bool,
}

impl TlsStream {
    /// Runs the client handshake on `sock`.
    pub fn connect(sock: BoxStream, config: Arc<ClientConfig>) -> Result<Self, TlsError> {
        let name = ServerName::try_from("Device").map_err(|e| TlsError::BadKey {
            what: "server name",
            detail: e.to_string(),
        })?;
        let conn = rustls::ClientConnection::new(config, name)?;
        Self::handshake(rustls::Connection::Client(conn), sock).map_err(|(e, _)| e)
    }

    /// Runs the server handshake on `sock`.
    pub fn accept(sock: BoxStream, config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Self::accept_or_return(sock, config).map_err(|(e, _)| e)
    }

    /// Like `accept`, but a failed handshake hands the socket back (so the caller decides when
    /// the peer sees the connection close).
    pub fn accept_or_return(
        sock: BoxStream,
        config: Arc<ServerConfig>,
    ) -> Result<Self, (TlsError, BoxStream)> {
        let conn = match rustls::ServerConnection::new(config) {
            Ok(c) => c,
            Err(e) => return Err((e.into(), sock)),
        };
        Self::handshake(rustls::Connection::Server(conn), sock)
    }

    fn handshake(conn: rustls::Connection, sock: BoxStream) -> Result<Self, (TlsError, BoxStream)> {
        let mut s = TlsStream {
            conn,
            sock,
            rec: Vec::new(),
            sock_eof: false,
            done: false,
        };
        let res = (|| {
            while s.conn.is_handshaking() {
                s.flush_tls()?;
                if !s.conn.is_handshaking() {
                    break;
                }
                if !s.conn.wants_read() {
                    return Err(io::Error::other("TLS handshake stalled"));
                }
                if !s.read_record()? {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    ));
                }
            }
            s.flush_tls()
        })();
        match res {
            Ok(()) => Ok(s),
            Err(e) => {
                // Nothing to say after a failed handshake (the alert, if any, was flushed).
                s.done = true;
                let sock = std::mem::replace(&mut s.sock, Box::new(Detached));
                Err((TlsError::Handshake(e), sock))
            }
        }
    }

    /// The negotiated version.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The peer's certificate chain (DER), if it sent one.
    pub fn peer_certificates(&self) -> Option<Vec<Vec<u8>>> {
        self.conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
    }

    fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        self.sock.flush()
    }

    /// Reads exactly one record from the socket and hands it to rustls. `Ok(false)` = clean EOF
    /// at a record boundary.
    fn read_record(&mut self) -> io::Result<bool> {
        loop {
            let need = if self.rec.len() < RECORD_HEADER_LEN {
                RECORD_HEADER_LEN
            } else {
                let body = usize::from(u16::from_be_bytes([self.rec[3], self.rec[4]]));
                if self.rec.len() == RECORD_HEADER_LEN + body {
                    break;
                }
                RECORD_HEADER_LEN + body
            };
            // Read straight into the record buffer, as much of the record as the socket has:
            // one call for the header, usually one for the body (a 16 KiB record in 4 KiB
            // pieces cost five system calls). Never past the record's end: after StopSession
            // the same socket carries plaintext.
            let start = self.rec.len();
            self.rec.resize(need, 0);
            let n = match self.sock.read(&mut self.rec[start..]) {
                Ok(n) => n,
                Err(e) => {
                    self.rec.truncate(start);
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            self.rec.truncate(start + n);
            if n == 0 {
                self.sock_eof = true;
                if self.rec.is_empty() {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed inside a TLS record",
                ));
            }
            if self.rec.len() == RECORD_HEADER_LEN {
                if !looks_like_tls_header(&self.rec) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the peer sent something that is not a TLS record",
                    ));
                }
                let len = usize::from(u16::from_be_bytes([self.rec[3], self.rec[4]]));
                if len > MAX_TLS_RECORD_BODY {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("TLS record of {len} bytes; at most {MAX_TLS_RECORD_BODY}"),
                    ));
                }
            }
        }
        // The buffer is handed back afterwards so its capacity serves the next record.
        let mut rec = std::mem::take(&mut self.rec);
        let mut slice = &rec[..];
        while !slice.is_empty() {
            if let Err(e) = self.conn.read_tls(&mut slice) {
                rec.clear();
                self.rec = rec;
                return Err(e);
            }
        }
        rec.clear();
        self.rec = rec;
        if let Err(e) = self.conn.process_new_packets() {
            // Send the alert rustls queued, then fail.
            let _ = self.flush_tls();
            self.done = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(true)
    }

    /// Sends close_notify (once).
    pub fn send_close_notify(&mut self) -> io::Result<()> {
        if !self.done {
            self.done = true;
            self.conn.send_close_notify();
            self.flush_tls()?;
        }
        Ok(())
    }

    /// Host side of StopSession: sends close_notify and returns the socket for plaintext.
    pub fn close_and_unwrap(mut self) -> io::Result<BoxStream> {
        self.send_close_notify()?;
        Ok(std::mem::replace(&mut self.sock, Box::new(Detached)))
    }

    /// Device side of StopSession: consumes the host's close_notify if one comes (a host may
    /// also go straight to plaintext or close), sends nothing, and returns the socket.
    pub fn finish_and_unwrap(mut self) -> io::Result<BoxStream> {
        self.done = true;
        let mut sock = std::mem::replace(&mut self.sock, Box::new(Detached));
        if self.sock_eof {
            return Ok(sock);
        }
        if self.rec.is_empty() {
            let mut header = [0u8; RECORD_HEADER_LEN];
            let mut got = 0;
            while got < header.len() {
                match sock.read(&mut header[got..]) {
                    Ok(0) => return Ok(Box::new(Prefixed::new(header[..got].to_vec(), sock))),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if !looks_like_tls_header(&header) {
                return Ok(Box::new(Prefixed::new(header.to_vec(), sock)));
            }
            self.rec.extend_from_slice(&header);
        }
        // Finish and decrypt the record (close_notify; anything else is the host's mistake but
        // harmless: it is dropped).
        self.sock = sock;
        let _ = self.read_record()?;
        Ok(std::mem::replace(&mut self.sock, Box::new(Detached)))
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.sock_eof || !self.read_record()? {
                // EOF without close_notify: report EOF; the framing layer above decides.
                return Ok(0);
            }
            // Key updates and alerts may need an answer.
            self.flush_tls()?;
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.flush_tls()?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.conn.writer().flush()?;
        self.flush_tls()
    }
}

impl Duplex for TlsStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
    fn shutdown(&self) -> io::Result<()> {
        self.sock.shutdown()
    }
}

impl Drop for TlsStream {
    fn drop(&mut self) {
        // OpenSSL hosts report an error on EOF without close_notify, so say goodbye properly.
        let _ = self.send_close_notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockdown::certs;
    use std::os::unix::net::UnixStream;
    use std::sync::OnceLock;

    struct Fixture {
        pair: certs::PairCertificates,
        device_key_der: Vec<u8>,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            use rsa::pkcs8::EncodePrivateKey;
            let key = certs::generate_rsa_key(&mut certs::seeded_rng(11)).unwrap();
            let pem = certs::public_key_pkcs1_pem(&key.to_public_key()).unwrap();
            let pair =
                certs::generate_pair_certificates(pem.as_bytes(), std::time::SystemTime::now())
                    .unwrap();
            let der = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
            Fixture {
                pair,
                device_key_der: der,
            }
        })
    }

    fn server_cfg(v: TlsVersions) -> Arc<ServerConfig> {
        let f = fixture();
        server_config(
            &f.pair.device_cert_pem,
            PrivateKeyDer::Pkcs8(f.device_key_der.clone().into()),
            v,
        )
        .unwrap()
    }

    fn client_cfg(root: bool) -> Arc<ClientConfig> {
        let f = fixture();
        if root {
            client_config(&f.pair.root_cert_pem, &f.pair.root_key_pem).unwrap()
        } else {
            client_config(&f.pair.host_cert_pem, &f.pair.host_key_pem).unwrap()
        }
    }

    /// Handshake, one message each way, then both sides return to plaintext.
    fn round_trip(v: TlsVersions, root_cert: bool) -> ProtocolVersion {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut s = TlsStream::accept(Box::new(b), server_cfg(v)).unwrap();
            assert!(s.peer_certificates().is_some());
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hello");
            s.write_all(b"world").unwrap();
            let mut plain = s.finish_and_unwrap().unwrap();
            let mut buf = [0u8; 5];
            plain.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"plain");
            plain.write_all(b"text!").unwrap();
        });
        let mut c = TlsStream::connect(Box::new(a), client_cfg(root_cert)).unwrap();
        let version = c.protocol_version().unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"world");
        let mut plain = c.close_and_unwrap().unwrap();
        plain.write_all(b"plain").unwrap();
        plain.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"text!");
        server.join().unwrap();
        version
    }

    #[test]
    fn tls13_round_trip_and_back_to_plaintext() {
        assert_eq!(
            round_trip(TlsVersions::Both, false),
            ProtocolVersion::TLSv1_3
        );
    }

    #[test]
    fn tls12_round_trip_and_back_to_plaintext() {
        assert_eq!(
            round_trip(TlsVersions::Tls12Only, false),
            ProtocolVersion::TLSv1_2
        );
    }

    #[test]
    fn root_certificate_as_client_certificate_is_accepted() {
        assert_eq!(
            round_trip(TlsVersions::Tls12Only, true),
            ProtocolVersion::TLSv1_2
        );
    }

    #[test]
    fn device_accepts_host_going_straight_to_plaintext() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let s = TlsStream::accept(Box::new(b), server_cfg(TlsVersions::Both)).unwrap();
            let mut plain = s.finish_and_unwrap().unwrap();
            let mut buf = [0u8; 8];
            plain.read_exact(&mut buf).unwrap();
            buf
        });
        let mut c = TlsStream::connect(Box::new(a), client_cfg(false)).unwrap();
        // Skip close_notify: take the socket back without it.
        c.done = true;
        let mut sock = std::mem::replace(&mut c.sock, Box::new(Detached));
        sock.write_all(&[0, 0, 0, 4, b'a', b'b', b'c', b'd'])
            .unwrap();
        assert_eq!(
            &server.join().unwrap(),
            &[0, 0, 0, 4, b'a', b'b', b'c', b'd']
        );
    }

    #[test]
    fn garbage_instead_of_client_hello_fails_the_handshake() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            TlsStream::accept(Box::new(b), server_cfg(TlsVersions::Both))
        });
        let mut a = a;
        a.write_all(b"\x00\x00\x01\x00<?xml version").unwrap();
        assert!(matches!(
            server.join().unwrap(),
            Err(TlsError::Handshake(_))
        ));
    }

    #[test]
    fn oversized_record_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            TlsStream::accept(Box::new(b), server_cfg(TlsVersions::Both))
        });
        let mut a = a;
        a.write_all(&[22, 3, 1, 0xff, 0xff]).unwrap();
        assert!(matches!(
            server.join().unwrap(),
            Err(TlsError::Handshake(_))
        ));
    }
}
