//! Benchmarks of the backup format's hot paths, printed as `name value unit` lines that
//! `scripts/bench` reads: passcode-key derivation at phone strength, and AES-256-CBC decryption
//! on one core. Not a timed test: nothing here can fail on speed.

use cradle::ios_backup::cbc_stream::{self, PaddingMode};
use cradle::ios_backup::kdf;
use std::time::Instant;

fn main() {
    // `cargo test --all-targets` runs benchmark binaries too, without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("format benchmarks: run with `cargo bench --bench format`");
        return;
    }
    // `cargo bench` passes `--bench`; any other argument filters by name.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));

    if want("kdf") {
        let salt = [7u8; 20];
        let t = Instant::now();
        let stage1 = kdf::pbkdf2_sha256(b"benchmark password", &salt, kdf::DEFAULT_DPIC);
        let kek = kdf::pbkdf2_sha1(&stage1[..], &salt, kdf::DEFAULT_ITER);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(kek);
        println!("kdf_dpic_10m {secs:.3} s");
    }

    if want("cbc") {
        let key = [0x42u8; 32];
        let plain = vec![0x5au8; 256 * 1024 * 1024];
        let cipher = cbc_stream::encrypt_vec(&key, &plain);
        drop(plain);
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let d = cbc_stream::decrypt_to(&cipher[..], std::io::sink(), &key, PaddingMode::Strict)
                .expect("decrypts");
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(d);
        }
        let mbps = cipher.len() as f64 / 1e6 / best;
        println!("cbc_decrypt_one_core {mbps:.0} MB/s");
        let mut sink = std::io::sink();
        let t = Instant::now();
        let mut w = cbc_stream::EncryptWriter::new(&mut sink, &key);
        std::io::Write::write_all(&mut w, &cipher[..64 * 1024 * 1024]).expect("encrypts");
        w.finish().expect("finishes");
        let mbps = 64.0 * 1.048576 / t.elapsed().as_secs_f64();
        println!("cbc_encrypt_one_core {mbps:.0} MB/s");
    }
}
