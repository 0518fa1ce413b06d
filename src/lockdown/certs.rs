//! Pairing certificates: RSA-2048 keys, the host's root CA, the host certificate and the device
//! certificate over the phone's `DevicePublicKey`, laid out as pymobiledevice3 and current iOS expect.

use rsa::pkcs1::{DecodeRsaPublicKey, EncodeRsaPublicKey};
use rsa::pkcs8::{DecodePublicKey, EncodePrivateKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use std::time::{Duration, SystemTime};
use x509_cert::der::asn1::{BitString, OctetString, UtcTime};
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Any;
use x509_cert::der::{Encode, EncodePem};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};
use zeroize::Zeroizing;

/// Size of every key made here, as libimobiledevice and pymobiledevice3 use.
pub const RSA_BITS: usize = 2048;
/// How long the certificates are valid (10 years, as both hosts make them).
pub const CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far notBefore lies in the past, so a phone whose clock runs slightly behind accepts them.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
/// sha256WithRSAEncryption (RFC 4055).
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// Largest PEM public key accepted from a device (a 4096-bit PKCS#1 key is under 1 KB).
pub const MAX_PUBLIC_KEY_PEM: usize = 8 * 1024;

/// Why certificates or keys could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Peer misbehaviour: the device's `DevicePublicKey` is not an RSA public key in PEM.
    #[error("the device's public key is not an RSA public key in PEM form: {0}")]
    BadDevicePublicKey(String),
    /// Local fault: key generation failed.
    #[error("could not generate an RSA key: {0}")]
    KeyGeneration(String),
    /// Local fault: the certificate could not be encoded or signed.
    #[error("could not build a certificate: {0}")]
    Build(String),
    /// A key in a pair record is not a readable RSA private key.
    #[error("the private key is not an RSA key in PEM form (PKCS#1 or PKCS#8): {0}")]
    BadPrivateKey(String),
}

/// The certificates and keys a host makes when it pairs (PEM text as bytes).
pub struct PairCertificates {
    pub root_cert_pem: Vec<u8>,
    pub root_key_pem: Zeroizing<Vec<u8>>,
    pub host_cert_pem: Vec<u8>,
    pub host_key_pem: Zeroizing<Vec<u8>>,
    pub device_cert_pem: Vec<u8>,
}

impl std::fmt::Debug for PairCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairCertificates")
            .field("root_key_pem", &"<redacted>")
            .field("host_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Adapts a `rand` 0.9 generator to the `rand_core` 0.6 traits that `rsa` 0.9 takes.
pub struct Rng06<R>(pub R);

impl<R: rand::RngCore> rsa::rand_core::RngCore for Rng06<R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

// Only ever wrapped around cryptographic generators: the thread RNG or a seeded ChaCha (StdRng).
impl<R: rand::RngCore + rand::CryptoRng> rsa::rand_core::CryptoRng for Rng06<R> {}

/// The operating system's generator, for keys that must be secret.
pub fn os_rng() -> Rng06<rand::rngs::ThreadRng> {
    Rng06(rand::rng())
}

/// A deterministic generator (ChaCha12) for the simulator's device keys.
pub fn seeded_rng(seed: u64) -> Rng06<rand::rngs::StdRng> {
    use rand::SeedableRng;
    Rng06(rand::rngs::StdRng::seed_from_u64(seed))
}

/// Generates an RSA-2048 key with e = 65537.
pub fn generate_rsa_key(
    rng: &mut impl rsa::rand_core::CryptoRngCore,
) -> Result<RsaPrivateKey, CertError> {
    RsaPrivateKey::new(rng, RSA_BITS).map_err(|e| CertError::KeyGeneration(e.to_string()))
}

/// `BEGIN RSA PUBLIC KEY` (PKCS#1) PEM, the only form libimobiledevice accepts for `DevicePublicKey`.
pub fn public_key_pkcs1_pem(key: &RsaPublicKey) -> Result<String, CertError> {
    key.to_pkcs1_pem(LineEnding::LF)
        .map_err(|e| CertError::Build(e.to_string()))
}

/// `BEGIN PRIVATE KEY` (PKCS#8) PEM, as pair records store keys.
pub fn private_key_pkcs8_pem(key: &RsaPrivateKey) -> Result<Zeroizing<Vec<u8>>, CertError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| CertError::Build(e.to_string()))?;
    Ok(Zeroizing::new(pem.as_bytes().to_vec()))
}

/// Reads an RSA private key from PKCS#8 or PKCS#1 PEM (libimobiledevice writes PKCS#1).
pub fn parse_private_key_pem(pem: &[u8]) -> Result<RsaPrivateKey, CertError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let text =
        std::str::from_utf8(pem).map_err(|_| CertError::BadPrivateKey("not UTF-8".into()))?;
    RsaPrivateKey::from_pkcs8_pem(text)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(text))
        .map_err(|e| CertError::BadPrivateKey(e.to_string()))
}

/// Reads the device's public key: PKCS#1 PEM as devices send it; PKCS#8 (`BEGIN PUBLIC KEY`)
/// is accepted too.
pub fn parse_public_key_pem(pem: &[u8]) -> Result<RsaPublicKey, CertError> {
    if pem.len() > MAX_PUBLIC_KEY_PEM {
        return Err(CertError::BadDevicePublicKey(format!(
            "{} bytes, at most {MAX_PUBLIC_KEY_PEM} accepted",
            pem.len()
        )));
    }
    let text = std::str::from_utf8(pem)
        .map_err(|_| CertError::BadDevicePublicKey("not UTF-8".into()))?
        .trim_matches(char::from(0));
    RsaPublicKey::from_pkcs1_pem(text)
        .or_else(|_| RsaPublicKey::from_public_key_pem(text))
        .map_err(|e| CertError::BadDevicePublicKey(e.to_string()))
}

/// What kind of certificate to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertKind {
    /// Self-signed CA: critical basicConstraints CA:TRUE.
    Root,
    /// End entity: critical CA:FALSE, critical keyUsage digitalSignature+keyEncipherment,
    /// optionally a subject key identifier.
    Leaf { subject_key_id: bool },
}

fn extension<T: AssociatedOid + Encode>(value: &T, critical: bool) -> Result<Extension, CertError> {
    let der = value
        .to_der()
        .map_err(|e| CertError::Build(e.to_string()))?;
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(der).map_err(|e| CertError::Build(e.to_string()))?,
    })
}

fn time(t: SystemTime) -> Result<Time, CertError> {
    // RFC 5280: UTCTime up to 2049, GeneralizedTime afterwards.
    match UtcTime::from_system_time(t) {
        Ok(u) => Ok(Time::UtcTime(u)),
        Err(_) => Time::try_from(t).map_err(|e| CertError::Build(e.to_string())),
    }
}

/// Builds and signs one X.509 v3 certificate with an empty subject and issuer, serial 1,
/// SHA-256 with RSA.
fn make_cert(
    subject_key: &RsaPublicKey,
    issuer_key: &RsaPrivateKey,
    kind: CertKind,
    now: SystemTime,
) -> Result<Certificate, CertError> {
    use rsa::signature::{SignatureEncoding, Signer};
    let signer = rsa::pkcs1v15::SigningKey::<sha2_09::Sha256>::new(issuer_key.clone());
    let signature_alg = AlgorithmIdentifierOwned {
        oid: SHA256_WITH_RSA,
        parameters: Some(Any::null()),
    };
    let spki = SubjectPublicKeyInfoOwned::from_key(subject_key.clone())
        .map_err(|e| CertError::Build(e.to_string()))?;

    let mut extensions = Vec::new();
    match kind {
        CertKind::Root => extensions.push(extension(
            &BasicConstraints {
                ca: true,
                path_len_constraint: None,
            },
            true,
        )?),
        CertKind::Leaf { subject_key_id } => {
            extensions.push(extension(
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
                true,
            )?);
            extensions.push(extension(
                &KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment),
                true,
            )?);
            if subject_key_id {
                // RFC 5280 method 1: SHA-1 of the subjectPublicKey bits.
                use sha1::Digest;
                let hash = sha1::Sha1::digest(spki.subject_public_key.raw_bytes());
                let ski = SubjectKeyIdentifier(
                    OctetString::new(hash.to_vec()).map_err(|e| CertError::Build(e.to_string()))?,
                );
                extensions.push(extension(&ski, false)?);
            }
        }
    }

    let not_before = now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now);
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&[1]).map_err(|e| CertError::Build(e.to_string()))?,
        signature: signature_alg.clone(),
        issuer: Name::default(),
        validity: Validity {
            not_before: time(not_before)?,
            not_after: time(now + CERT_VALIDITY)?,
        },
        subject: Name::default(),
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(|e| CertError::Build(e.to_string()))?;
    let sig = signer
        .try_sign(&tbs_der)
        .map_err(|e| CertError::Build(e.to_string()))?;
    let signature =
        BitString::from_bytes(&sig.to_bytes()).map_err(|e| CertError::Build(e.to_string()))?;
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: signature_alg,
        signature,
    })
}

fn pem(cert: &Certificate) -> Result<Vec<u8>, CertError> {
    cert.to_pem(LineEnding::LF)
        .map(String::into_bytes)
        .map_err(|e| CertError::Build(e.to_string()))
}

/// Makes a self-signed certificate for `key` (root profile). The simulator uses it before any
/// host has paired.
pub fn self_signed_cert_pem(key: &RsaPrivateKey, now: SystemTime) -> Result<Vec<u8>, CertError> {
    pem(&make_cert(&key.to_public_key(), key, CertKind::Root, now)?)
}

/// Makes everything a host needs to pair with the device whose `DevicePublicKey` is given:
/// fresh root and host keys, the root CA, the host certificate and the device certificate.
pub fn generate_pair_certificates(
    device_public_key_pem: &[u8],
    now: SystemTime,
) -> Result<PairCertificates, CertError> {
    let device_key = parse_public_key_pem(device_public_key_pem)?;
    let mut rng = os_rng();
    let root_key = generate_rsa_key(&mut rng)?;
    let host_key = generate_rsa_key(&mut rng)?;
    let root = make_cert(&root_key.to_public_key(), &root_key, CertKind::Root, now)?;
    let host = make_cert(
        &host_key.to_public_key(),
        &root_key,
        CertKind::Leaf {
            subject_key_id: false,
        },
        now,
    )?;
    let device = make_cert(
        &device_key,
        &root_key,
        CertKind::Leaf {
            subject_key_id: true,
        },
        now,
    )?;
    Ok(PairCertificates {
        root_cert_pem: pem(&root)?,
        root_key_pem: private_key_pkcs8_pem(&root_key)?,
        host_cert_pem: pem(&host)?,
        host_key_pem: private_key_pkcs8_pem(&host_key)?,
        device_cert_pem: pem(&device)?,
    })
}

/// The DER bytes of the first certificate in `pem`.
pub fn cert_der_from_pem(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .ok()
        .map(|c| c.as_ref().to_vec())
}

/// The RSA public key certified by a PEM certificate, if it is one.
pub fn cert_public_key(pem: &[u8]) -> Option<RsaPublicKey> {
    use x509_cert::der::Decode;
    let der = cert_der_from_pem(pem)?;
    let cert = Certificate::from_der(&der).ok()?;
    let spki = cert.tbs_certificate.subject_public_key_info.to_der().ok()?;
    RsaPublicKey::from_public_key_der(&spki).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn device_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| generate_rsa_key(&mut seeded_rng(7)).unwrap())
    }

    fn certs() -> &'static PairCertificates {
        static C: OnceLock<PairCertificates> = OnceLock::new();
        C.get_or_init(|| {
            let pem = public_key_pkcs1_pem(&device_key().to_public_key()).unwrap();
            generate_pair_certificates(pem.as_bytes(), SystemTime::now()).unwrap()
        })
    }

    #[test]
    fn seeded_keys_are_deterministic() {
        let a = generate_rsa_key(&mut seeded_rng(99)).unwrap();
        let b = generate_rsa_key(&mut seeded_rng(99)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, *device_key());
    }

    #[test]
    fn device_public_key_is_pkcs1_pem() {
        let pem = public_key_pkcs1_pem(&device_key().to_public_key()).unwrap();
        assert!(pem.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        assert_eq!(
            parse_public_key_pem(pem.as_bytes()).unwrap(),
            device_key().to_public_key()
        );
        assert!(parse_public_key_pem(b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n").is_err());
        assert!(parse_public_key_pem(&vec![b'A'; MAX_PUBLIC_KEY_PEM + 1]).is_err());
    }

    #[test]
    fn device_cert_certifies_device_key() {
        let c = certs();
        assert_eq!(
            cert_public_key(&c.device_cert_pem).unwrap(),
            device_key().to_public_key()
        );
        let host_key = parse_private_key_pem(&c.host_key_pem).unwrap();
        assert_eq!(
            cert_public_key(&c.host_cert_pem).unwrap(),
            host_key.to_public_key()
        );
        assert!(c.root_key_pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn certificate_fields_match_the_pairing_profile() {
        use x509_cert::der::Decode;
        let c = certs();
        let der = cert_der_from_pem(&c.device_cert_pem).unwrap();
        let cert = Certificate::from_der(&der).unwrap();
        let tbs = &cert.tbs_certificate;
        assert_eq!(tbs.version, Version::V3);
        assert_eq!(tbs.serial_number.as_bytes(), &[1]);
        assert!(tbs.subject.0.is_empty() && tbs.issuer.0.is_empty());
        // sha256WithRSAEncryption
        assert_eq!(
            cert.signature_algorithm.oid.to_string(),
            "1.2.840.113549.1.1.11"
        );
        let exts = tbs.extensions.as_ref().unwrap();
        let ids: Vec<(String, bool)> = exts
            .iter()
            .map(|e| (e.extn_id.to_string(), e.critical))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("2.5.29.19".to_string(), true),
                ("2.5.29.15".to_string(), true),
                ("2.5.29.14".to_string(), false)
            ]
        );
        let nb = tbs.validity.not_before.to_system_time();
        let na = tbs.validity.not_after.to_system_time();
        let span = na.duration_since(nb).unwrap();
        assert!(span >= CERT_VALIDITY && span <= CERT_VALIDITY + Duration::from_secs(120));
    }

    /// Checks the certificates with the OpenSSL command-line tool when it is installed.
    /// `openssl verify` cannot follow a chain whose names are all empty (it takes every
    /// certificate for self-signed), so each signature is checked with `openssl dgst -verify`
    /// over the to-be-signed bytes, and the root with `openssl verify`.
    #[test]
    fn openssl_verifies_the_chain() {
        use x509_cert::der::Decode;
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            println!("openssl not installed; skipping");
            return;
        }
        let openssl = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap();
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        };
        let c = certs();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root.pem");
        let host = dir.path().join("host.pem");
        let device = dir.path().join("device.pem");
        let root_pub = dir.path().join("root.pub");
        std::fs::write(&root, &c.root_cert_pem).unwrap();
        std::fs::write(&host, &c.host_cert_pem).unwrap();
        std::fs::write(&device, &c.device_cert_pem).unwrap();
        let (ok, out) = openssl(&[
            "verify".as_ref(),
            "-CAfile".as_ref(),
            root.as_os_str(),
            root.as_os_str(),
        ]);
        assert!(ok, "{out}");
        let (ok, pubkey) = openssl(&[
            "x509".as_ref(),
            "-pubkey".as_ref(),
            "-noout".as_ref(),
            "-in".as_ref(),
            root.as_os_str(),
        ]);
        assert!(ok, "{pubkey}");
        std::fs::write(&root_pub, pubkey).unwrap();
        for (name, pem) in [
            ("root", &c.root_cert_pem),
            ("host", &c.host_cert_pem),
            ("device", &c.device_cert_pem),
        ] {
            let cert = Certificate::from_der(&cert_der_from_pem(pem).unwrap()).unwrap();
            let tbs = dir.path().join(format!("{name}.tbs"));
            let sig = dir.path().join(format!("{name}.sig"));
            std::fs::write(&tbs, cert.tbs_certificate.to_der().unwrap()).unwrap();
            std::fs::write(&sig, cert.signature.raw_bytes()).unwrap();
            let (ok, out) = openssl(&[
                "dgst".as_ref(),
                "-sha256".as_ref(),
                "-verify".as_ref(),
                root_pub.as_os_str(),
                "-signature".as_ref(),
                sig.as_os_str(),
                tbs.as_os_str(),
            ]);
            assert!(ok && out.contains("Verified OK"), "{name}: {out}");
        }
        // A signature by another key must not verify (the check above can fail).
        let other = dir.path().join("other.tbs");
        std::fs::write(&other, b"not the certificate").unwrap();
        let (ok, _) = openssl(&[
            "dgst".as_ref(),
            "-sha256".as_ref(),
            "-verify".as_ref(),
            root_pub.as_os_str(),
            "-signature".as_ref(),
            dir.path().join("host.sig").as_os_str(),
            other.as_os_str(),
        ]);
        assert!(!ok);
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&device)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("Version: 3 (0x2)"), "{text}");
        assert!(text.contains("sha256WithRSAEncryption"), "{text}");
        assert!(text.contains("Basic Constraints: critical"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(text.contains("Key Usage: critical"), "{text}");
        assert!(
            text.contains("Digital Signature, Key Encipherment"),
            "{text}"
        );
        assert!(text.contains("Subject Key Identifier"), "{text}");
        let root_text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&root)
            .output()
            .unwrap();
        let root_text = String::from_utf8_lossy(&root_text.stdout);
        assert!(root_text.contains("CA:TRUE"), "{root_text}");
    }
}
