//! Benchmarks of the store's write path, printed as `name value unit` lines: `put_stream` on one
//! core (chunk + hash + compress + seal + pack, in memory) for incompressible and SQLite-like data,
//! and `read_stream`. Not a timed test: nothing here can fail on speed.

use std::sync::Arc;
use std::time::Instant;

use cradle::password::Password;
use cradle::store::keys::KdfParams;
use cradle::store::repo::{InitOptions, Repository};
use cradle::store::seal::BlobKind;
use cradle::store::storage::CrashStorage;

const SIZE: usize = 128 << 20;

fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// 4 KiB pages of rows: integers, short repeated words, some random bytes (like message
/// databases), with mostly-zero free space at the end of each page.
fn sqlite_like(n: usize) -> Vec<u8> {
    let words: [&[u8]; 8] = [
        b"hello",
        b"message",
        b"com.apple.",
        b"thread",
        b"2024-05-01",
        b"ok",
        b"iPhone",
        b"attachment",
    ];
    let rnd = noise(n / 4);
    let mut out = Vec::with_capacity(n);
    let mut i = 0usize;
    while out.len() < n {
        let page_start = out.len();
        out.extend_from_slice(&[0x0d, 0, 0, 0, 0x10, 0, 0x0f, 0xa0]);
        while out.len() - page_start < 3000 {
            out.extend_from_slice(&(i as u32).to_be_bytes());
            out.extend_from_slice(words[i % 8]);
            out.extend_from_slice(words[(i * 7 + 3) % 8]);
            let r = (i * 13) % (rnd.len() - 16);
            out.extend_from_slice(&rnd[r..r + 12]);
            i += 1;
        }
        out.resize(page_start + 4096, 0);
    }
    out.truncate(n);
    out
}

fn main() {
    // `cargo test --all-targets` runs benchmark binaries too, without `--bench`: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("store benchmarks: run with `cargo bench --bench store`");
        return;
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let options = InitOptions {
        kdf: KdfParams::INSECURE_FOR_TESTS,
        ..InitOptions::default()
    };
    for (name, data) in [
        ("incompressible", noise(SIZE)),
        ("sqlite_like", sqlite_like(SIZE)),
    ] {
        if !want(name) {
            continue;
        }
        let storage = CrashStorage::new();
        let mut repo = Repository::init(Arc::new(storage.clone()), &Password::new("b"), &options)
            .expect("init");
        let t = Instant::now();
        let st = repo.put_stream(&data[..], BlobKind::Data).expect("put");
        repo.flush().expect("flush");
        let secs = t.elapsed().as_secs_f64();
        let stored: u64 = storage
            .file_names()
            .iter()
            .filter(|n| n.starts_with("packs/"))
            .map(|n| cradle::store::storage::Storage::size(&storage, n).unwrap_or(0))
            .sum();
        println!(
            "put_stream_{name} {:.0} MB/s",
            data.len() as f64 / 1e6 / secs
        );
        println!(
            "put_stream_{name}_stored_ratio {:.3}",
            stored as f64 / data.len() as f64
        );
        println!("put_stream_{name}_chunks {}", st.ids.len());
        let t = Instant::now();
        let n = repo.read_stream(&st, &mut std::io::sink()).expect("read");
        println!(
            "read_stream_{name} {:.0} MB/s",
            n as f64 / 1e6 / t.elapsed().as_secs_f64()
        );
    }
}
