//! Backup password → key-encryption key (KEK): PBKDF2-HMAC-SHA256 (DPSL/DPIC, iOS ≥ 10.2), then
//! PBKDF2-HMAC-SHA1 (SALT/ITER). Iteration counts from a keybag are bounded before any work starts.

use crate::password::Password;
use sha1::Sha1;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Length of the KEK and of the SHA-256 stage's output.
pub const KEK_LEN: usize = 32;

/// Largest DPIC (SHA-256 stage rounds) accepted. Real backups use 10,000,000; a hostile keybag
/// must not make us hash for hours. Same bound as iphone-backup-decrypt.
pub const MAX_DPIC: u32 = 20_000_000;
/// Largest ITER (SHA-1 stage rounds) accepted. Real backups use 10,000.
pub const MAX_ITER: u32 = 1_000_000;
/// Longest salt accepted for either stage. Real salts are 20 bytes.
pub const MAX_SALT_LEN: usize = 256;

/// What iOS writes for ITER.
pub const DEFAULT_ITER: u32 = 10_000;
/// What iOS writes for DPIC.
pub const DEFAULT_DPIC: u32 = 10_000_000;

/// The first, slow stage added in iOS 10.2 (keybag tags DPSL and DPIC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Stage {
    /// DPSL.
    pub salt: Vec<u8>,
    /// DPIC.
    pub iterations: u32,
}

/// Everything the KDF needs from a keybag. Salts are public values, so `Debug` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdfParams {
    /// DPSL/DPIC; `None` in keybags written before iOS 10.2.
    pub sha256: Option<Sha256Stage>,
    /// SALT.
    pub salt: Vec<u8>,
    /// ITER.
    pub iterations: u32,
}

/// Parameters refused before deriving (they come from a keybag on a drive or from a phone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KdfError {
    /// ITER is 0 or above [`MAX_ITER`].
    #[error("keybag ITER {got} is outside 1..={MAX_ITER}")]
    IterOutOfRange { got: u32 },
    /// DPIC is 0 or above [`MAX_DPIC`].
    #[error("keybag DPIC {got} is outside 1..={MAX_DPIC}")]
    DpicOutOfRange { got: u32 },
    /// A salt is longer than [`MAX_SALT_LEN`].
    #[error("keybag {which} is {len} bytes long, more than {MAX_SALT_LEN}")]
    SaltTooLong { which: &'static str, len: usize },
}

impl KdfParams {
    /// Checks the iteration counts and salt lengths against the named caps.
    pub fn validate(&self) -> Result<(), KdfError> {
        if !(1..=MAX_ITER).contains(&self.iterations) {
            return Err(KdfError::IterOutOfRange {
                got: self.iterations,
            });
        }
        if self.salt.len() > MAX_SALT_LEN {
            return Err(KdfError::SaltTooLong {
                which: "SALT",
                len: self.salt.len(),
            });
        }
        if let Some(s) = &self.sha256 {
            if !(1..=MAX_DPIC).contains(&s.iterations) {
                return Err(KdfError::DpicOutOfRange { got: s.iterations });
            }
            if s.salt.len() > MAX_SALT_LEN {
                return Err(KdfError::SaltTooLong {
                    which: "DPSL",
                    len: s.salt.len(),
                });
            }
        }
        Ok(())
    }
}

/// Derives the KEK from a password: `PBKDF2-SHA1(PBKDF2-SHA256(pw, DPSL, DPIC), SALT, ITER)`,
/// or `PBKDF2-SHA1(pw, SALT, ITER)` without the SHA-256 stage. About 1.5 s for DPIC = 10 M on
/// x86 with SHA extensions; run it off any latency-sensitive thread.
pub fn derive_kek(
    password: &Password,
    params: &KdfParams,
) -> Result<Zeroizing<[u8; KEK_LEN]>, KdfError> {
    params.validate()?;
    let kek = match &params.sha256 {
        Some(s) => {
            let stage1 = pbkdf2_sha256(password.expose(), &s.salt, s.iterations);
            pbkdf2_sha1(&stage1[..], &params.salt, params.iterations)
        }
        None => pbkdf2_sha1(password.expose(), &params.salt, params.iterations),
    };
    Ok(kek)
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output (the first stage; exposed for benchmarks).
/// `iterations` is not checked here; callers with untrusted counts go through [`derive_kek`].
///
/// This stage runs ten million times per unlock, so its loop works on SHA-256's compression
/// function directly: the HMAC inner and outer states are computed once from the password,
/// and each round is exactly two compressions over pre-padded blocks, with no hashing state
/// cloned or buffered per round (the generic `pbkdf2` path is ~40 % slower in debug builds,
/// where its generic code is compiled with our crate's optimisation level).
pub fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; KEK_LEN]> {
    use sha2::block_api::compress256;
    use sha2::Digest;
    use std::slice::from_ref;

    let mut out = Zeroizing::new([0u8; KEK_LEN]);
    if iterations == 0 {
        return out;
    }
    // HMAC key block: the password, or its SHA-256 if longer than a block, zero-padded.
    let mut key_block = Zeroizing::new([0u8; 64]);
    if password.len() > 64 {
        key_block[..32].copy_from_slice(&Sha256::digest(password));
    } else {
        key_block[..password.len()].copy_from_slice(password);
    }
    let mut ipad = Zeroizing::new([0u8; 64]);
    let mut opad = Zeroizing::new([0u8; 64]);
    for ((i, o), k) in ipad.iter_mut().zip(opad.iter_mut()).zip(key_block.iter()) {
        *i = k ^ 0x36;
        *o = k ^ 0x5c;
    }

    // U1 = HMAC(P, S || INT(1)), written out as the two hashes HMAC is.
    let mut h = Sha256::new();
    h.update(&ipad[..]);
    h.update(salt);
    h.update(1u32.to_be_bytes());
    let mut u = Zeroizing::new([0u8; 32]);
    u.copy_from_slice(&h.finalize());
    let mut h = Sha256::new();
    h.update(&opad[..]);
    h.update(&u[..]);
    out.copy_from_slice(&h.finalize());

    // The states after the key pads are the same every round: compute them once.
    let mut inner = Zeroizing::new(SHA256_IV);
    let mut outer = Zeroizing::new(SHA256_IV);
    compress256(&mut inner, from_ref(&*ipad));
    compress256(&mut outer, from_ref(&*opad));

    // One 64-byte block holding a 32-byte message already padded for a 96-byte total length
    // (64 bytes of key pad + 32): 0x80, zeros, then the bit length 768.
    let mut block = Zeroizing::new([0u8; 64]);
    block[32] = 0x80;
    block[62] = 0x03;
    block[..32].copy_from_slice(&out[..]);
    let mut state = Zeroizing::new([0u32; 8]);
    for _ in 1..iterations {
        *state = *inner;
        compress256(&mut state, from_ref(&*block));
        words_to_bytes(&state, &mut block);
        *state = *outer;
        compress256(&mut state, from_ref(&*block));
        words_to_bytes(&state, &mut block);
        for (o, b) in out.iter_mut().zip(block.iter()) {
            *o ^= b;
        }
    }
    out
}

/// SHA-256's initial hash value (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Writes the state as the big-endian digest into the first 32 bytes of `block`.
fn words_to_bytes(state: &[u32; 8], block: &mut [u8; 64]) {
    for (chunk, w) in block.chunks_exact_mut(4).zip(state.iter()) {
        chunk.copy_from_slice(&w.to_be_bytes());
    }
}

/// The generic PBKDF2 from the `pbkdf2` crate; the reference the fast path is tested against.
#[cfg(test)]
fn pbkdf2_sha256_generic(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEK_LEN] {
    let mut out = [0u8; KEK_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out[..]);
    out
}

/// PBKDF2-HMAC-SHA1 with a 32-byte output (the second stage).
pub fn pbkdf2_sha1(password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; KEK_LEN]> {
    let mut out = Zeroizing::new([0u8; KEK_LEN]);
    pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out[..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(dpic: Option<u32>, iter: u32) -> KdfParams {
        KdfParams {
            sha256: dpic.map(|iterations| Sha256Stage {
                salt: vec![0; 20],
                iterations,
            }),
            salt: vec![0; 20],
            iterations: iter,
        }
    }

    /// RFC 7914 §11 PBKDF2-HMAC-SHA256 vectors (first 32 bytes of the 64-byte outputs).
    #[test]
    fn pbkdf2_sha256_rfc7914() {
        assert_eq!(
            hex::encode(&pbkdf2_sha256(b"passwd", b"salt", 1)[..]),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        assert_eq!(
            hex::encode(&pbkdf2_sha256(b"Password", b"NaCl", 80000)[..]),
            "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56"
        );
    }

    #[test]
    fn pbkdf2_sha256_fast_path_matches_the_generic_one() {
        let long = [0x5a_u8; 200];
        for (pw, salt, n) in [
            (&b""[..], &b""[..], 1),
            (&b"0000"[..], &[0u8; 20][..], 2),
            (&b"hashcat"[..], &b"salt"[..], 3),
            (&long[..64], &long[..20], 1000),
            (&long[..65], &long[..100], 1000),
            (&long[..], &long[..1], 17),
        ] {
            assert_eq!(
                *pbkdf2_sha256(pw, salt, n),
                pbkdf2_sha256_generic(pw, salt, n),
                "pw len {} salt len {} rounds {n}",
                pw.len(),
                salt.len()
            );
        }
    }

    #[test]
    #[ignore = "timing: run with --ignored --nocapture"]
    fn time_ten_million_rounds() {
        let t = std::time::Instant::now();
        let a = pbkdf2_sha256(b"0000", &[0; 20], 10_000_000);
        let fast = t.elapsed();
        let t = std::time::Instant::now();
        let b = pbkdf2_sha256_generic(b"0000", &[0; 20], 10_000_000);
        let generic = t.elapsed();
        assert_eq!(*a, b);
        eprintln!("PBKDF2-SHA256 10M rounds: fast {fast:?}, generic {generic:?}");
    }

    /// RFC 6070 test vector 2 (SHA-1, 2 iterations), first 20 bytes.
    #[test]
    fn pbkdf2_sha1_rfc6070() {
        let out = pbkdf2_sha1(b"password", b"salt", 2);
        assert_eq!(
            hex::encode(&out[..20]),
            "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"
        );
    }

    /// hashcat's self-test hash for mode 14800 (`$itunes_backup$*10*…`, password "hashcat",
    /// DPIC 1000): the KEK below, checked with Python's hashlib.
    #[test]
    fn hashcat_14800_self_test_kek() {
        let p = KdfParams {
            sha256: Some(Sha256Stage {
                salt: hex::decode("99fafc983e732998adb9fadc162a2e382143f115").unwrap(),
                iterations: 1000,
            }),
            salt: hex::decode("2721336781705041205314422175267631184867").unwrap(),
            iterations: 10000,
        };
        let kek = derive_kek(&Password::new("hashcat"), &p).unwrap();
        assert_eq!(
            hex::encode(&kek[..]),
            "ca1bdd8196307fe1e2ed421321267d96e2988bf12f736035192cfed20ec823ea"
        );
    }

    /// hashcat's self-test hash for mode 14700 (pre-10.2 keybag: no SHA-256 stage).
    #[test]
    fn hashcat_14700_self_test_kek() {
        let p = KdfParams {
            sha256: None,
            salt: hex::decode("2202015774208421818002001652122401871832").unwrap(),
            iterations: 10000,
        };
        let kek = derive_kek(&Password::new("hashcat"), &p).unwrap();
        assert_eq!(
            hex::encode(&kek[..]),
            "a29e0b44321c66a8f34c587ce924421e37231a3f020598a9a1a2ccdb71b424db"
        );
    }

    #[test]
    fn hostile_iteration_counts_are_refused_before_work() {
        let pw = Password::new("x");
        assert_eq!(
            derive_kek(&pw, &params(Some(1000), 0)),
            Err(KdfError::IterOutOfRange { got: 0 })
        );
        assert_eq!(
            derive_kek(&pw, &params(None, u32::MAX)),
            Err(KdfError::IterOutOfRange { got: u32::MAX })
        );
        assert_eq!(
            derive_kek(&pw, &params(Some(u32::MAX), 10)),
            Err(KdfError::DpicOutOfRange { got: u32::MAX })
        );
        assert_eq!(
            derive_kek(&pw, &params(Some(MAX_DPIC + 1), 10)),
            Err(KdfError::DpicOutOfRange { got: MAX_DPIC + 1 })
        );
        assert_eq!(
            derive_kek(&pw, &params(Some(0), 10)),
            Err(KdfError::DpicOutOfRange { got: 0 })
        );
        let mut p = params(None, 10);
        p.salt = vec![0; MAX_SALT_LEN + 1];
        assert!(matches!(
            derive_kek(&pw, &p),
            Err(KdfError::SaltTooLong { which: "SALT", .. })
        ));
        assert!(params(Some(MAX_DPIC), MAX_ITER).validate().is_ok());
    }
}
