//! File contents of the synthetic phone, described by a small value and generated on demand:
//! media (incompressible behind a real header), binary blobs, plists, JSON, text, SQLite.
//! Every generator is a pure function of its descriptor and the file size.

use super::bplist::{self, V};
use super::catalog::{CORPUS, WORDS};
use super::rng::{hash, mix64, Rng};
use super::sqlite::DbSpec;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{self, Cursor, Read};

/// Bytes generated per step by streaming generators (smaller files use one block of their
/// own size, rounded up to 256). A function of the file size only, so the bytes do not
/// depend on how callers size their reads.
const BLOCK: usize = 64 * 1024;

/// What a regular file contains. Opaque: compare it (equal descriptors give equal bytes for
/// equal sizes) or read it through [`super::Phone::open`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Content(pub(crate) Gen);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Gen {
    Empty,
    /// Incompressible bytes behind a realistic container header.
    Media {
        key: u64,
        format: Media,
    },
    /// Partly compressible binary: `mask` limits each byte's entropy, `zero_pct` of 256-byte
    /// runs are zero (pixel buffers, caches, model files).
    Binary {
        key: u64,
        mask: u8,
        zero_pct: u8,
    },
    /// A small document rendered whole on each open; `version` bumps on every rewrite.
    Doc {
        key: u64,
        version: u32,
        style: Style,
    },
    /// A page-synthetic SQLite database.
    Sqlite(Box<DbSpec>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Media {
    Jpeg,
    Heic,
    Mov,
    Png,
    Webp,
    M4a,
    Raw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Style {
    BinaryPlist,
    XmlPlist,
    Json,
    Log,
    Text,
    /// keychain-backup.plist: genp/inet/cert/keys arrays of items with opaque `v_Data`.
    Keychain,
}

impl Content {
    pub(crate) fn reader(&self, size: u64) -> Box<dyn Read + Send> {
        match &self.0 {
            Gen::Empty => Box::new(io::empty().take(0)),
            Gen::Media { key, format } => Box::new(StreamReader::new(
                *key,
                size,
                media_header(*format, size),
                Fill::Random,
            )),
            Gen::Binary {
                key,
                mask,
                zero_pct,
            } => Box::new(StreamReader::new(
                *key,
                size,
                Vec::new(),
                Fill::Masked {
                    mask: *mask,
                    zero_pct: *zero_pct,
                },
            )),
            Gen::Doc {
                key,
                version,
                style,
            } => {
                let n = usize::try_from(size).unwrap_or(usize::MAX);
                Box::new(Cursor::new(render_doc(
                    hash(&[*key, u64::from(*version)]),
                    *style,
                    n,
                )))
            }
            Gen::Sqlite(spec) => Box::new(spec.reader(size)),
        }
    }

    /// True if the bytes are (nearly) incompressible.
    pub fn is_incompressible(&self) -> bool {
        matches!(self.0, Gen::Media { .. })
    }

    /// True for page-structured SQLite content.
    pub fn is_sqlite(&self) -> bool {
        matches!(self.0, Gen::Sqlite(_))
    }
}

#[derive(Clone, Copy)]
enum Fill {
    Random,
    Masked { mask: u8, zero_pct: u8 },
}

/// Streams `size` bytes: `header` first, the generator's bytes after it.
struct StreamReader {
    rng: ChaCha8Rng,
    fill: Fill,
    header: Vec<u8>,
    buf: Vec<u8>,
    buf_pos: usize,
    block: u64,
    pos: u64,
    size: u64,
}

impl StreamReader {
    fn new(key: u64, size: u64, header: Vec<u8>, fill: Fill) -> StreamReader {
        let mut seed = [0u8; 32];
        for (i, c) in seed.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(
                &mix64(key ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407)).to_le_bytes(),
            );
        }
        StreamReader {
            rng: ChaCha8Rng::from_seed(seed),
            fill,
            header,
            buf: vec![
                0u8;
                usize::try_from(size)
                    .unwrap_or(BLOCK)
                    .min(BLOCK)
                    .next_multiple_of(256)
            ],
            buf_pos: usize::MAX,
            block: 0,
            pos: 0,
            size,
        }
    }

    fn refill(&mut self) {
        // Always whole blocks: the generator's state then advances the same way whatever
        // read sizes the caller uses.
        self.rng.fill_bytes(&mut self.buf);
        if let Fill::Masked { mask, zero_pct } = self.fill {
            // The run's first random byte decides whether it is zeroed, so no second
            // generator is needed; the rest are masked down to the wanted entropy.
            let threshold = (u32::from(zero_pct) * 256 / 100) as u8;
            for run in self.buf.chunks_exact_mut(256) {
                if run[0] < threshold {
                    run.fill(0);
                } else {
                    for b in run.iter_mut() {
                        *b &= mask;
                    }
                }
            }
        }
        if self.block == 0 {
            let n = self.header.len().min(self.buf.len());
            self.buf[..n].copy_from_slice(&self.header[..n]);
        }
        self.block += 1;
        self.buf_pos = 0;
    }
}

impl Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < out.len() && self.pos < self.size {
            if self.buf_pos >= self.buf.len() {
                self.refill();
            }
            let take = (self.buf.len() - self.buf_pos)
                .min(out.len() - n)
                .min(usize::try_from(self.size - self.pos).unwrap_or(usize::MAX));
            out[n..n + take].copy_from_slice(&self.buf[self.buf_pos..self.buf_pos + take]);
            self.buf_pos += take;
            self.pos += take as u64;
            n += take;
        }
        Ok(n)
    }
}

fn be32(v: u64) -> [u8; 4] {
    (u32::try_from(v).unwrap_or(1)).to_be_bytes()
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The first bytes of each media kind, as cameras and encoders write them; enough for `file`
/// and for type sniffing. The rest of the file is random (compressed data looks random).
fn media_header(format: Media, size: u64) -> Vec<u8> {
    let mut h = Vec::new();
    match format {
        Media::Jpeg => {
            h.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE1]);
            let mut exif = Vec::new();
            exif.extend_from_slice(b"Exif\0\0MM\0\x2A\0\0\0\x08");
            // IFD0: Make, Model; strings stored after the IFD.
            exif.extend_from_slice(&2u16.to_be_bytes());
            let make = b"Apple\0";
            let model = b"iPhone 13\0";
            let data_off = 8 + 2 + 2 * 12 + 4;
            exif.extend_from_slice(&[0x01, 0x0F, 0, 2]);
            exif.extend_from_slice(&(make.len() as u32).to_be_bytes());
            exif.extend_from_slice(&(data_off as u32).to_be_bytes());
            exif.extend_from_slice(&[0x01, 0x10, 0, 2]);
            exif.extend_from_slice(&(model.len() as u32).to_be_bytes());
            exif.extend_from_slice(&((data_off + make.len()) as u32).to_be_bytes());
            exif.extend_from_slice(&0u32.to_be_bytes());
            exif.extend_from_slice(make);
            exif.extend_from_slice(model);
            h.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
            h.extend_from_slice(&exif);
            h.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
        }
        Media::Heic => {
            h.extend_from_slice(&[0, 0, 0, 0x18]);
            h.extend_from_slice(b"ftypheic\0\0\0\0mif1heic");
            h.extend_from_slice(&[0, 0, 0, 0x2D]);
            h.extend_from_slice(b"meta\0\0\0\0");
            h.extend_from_slice(&[0, 0, 0, 0x21]);
            h.extend_from_slice(b"hdlr\0\0\0\0\0\0\0\0pict");
            h.extend_from_slice(&[0u8; 13]);
            let rest = size.saturating_sub(h.len() as u64);
            h.extend_from_slice(&be32(rest));
            h.extend_from_slice(b"mdat");
        }
        Media::Mov | Media::M4a => {
            let brand: &[u8; 4] = if format == Media::Mov {
                b"qt  "
            } else {
                b"M4A "
            };
            h.extend_from_slice(&[0, 0, 0, 0x14]);
            h.extend_from_slice(b"ftyp");
            h.extend_from_slice(brand);
            h.extend_from_slice(&[0, 0, 0, 0]);
            h.extend_from_slice(brand);
            h.extend_from_slice(&[0, 0, 0, 8]);
            h.extend_from_slice(b"wide");
            let rest = size.saturating_sub(h.len() as u64);
            h.extend_from_slice(&be32(rest));
            h.extend_from_slice(b"mdat");
        }
        Media::Png => {
            h.extend_from_slice(b"\x89PNG\r\n\x1a\n");
            let mut ihdr = b"IHDR".to_vec();
            ihdr.extend_from_slice(&1170u32.to_be_bytes());
            ihdr.extend_from_slice(&2532u32.to_be_bytes());
            ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
            h.extend_from_slice(&13u32.to_be_bytes());
            h.extend_from_slice(&ihdr);
            h.extend_from_slice(&crc32(&ihdr).to_be_bytes());
            let rest = size.saturating_sub(h.len() as u64 + 12);
            h.extend_from_slice(&be32(rest));
            h.extend_from_slice(b"IDAT");
        }
        Media::Webp => {
            h.extend_from_slice(b"RIFF");
            h.extend_from_slice(
                &(u32::try_from(size.saturating_sub(8)).unwrap_or(0)).to_le_bytes(),
            );
            h.extend_from_slice(b"WEBPVP8 ");
            h.extend_from_slice(
                &(u32::try_from(size.saturating_sub(20)).unwrap_or(0)).to_le_bytes(),
            );
        }
        Media::Raw => {}
    }
    h
}

/// Renders a document of exactly `size` bytes.
pub(crate) fn render_doc(key: u64, style: Style, size: usize) -> Vec<u8> {
    let out = match style {
        Style::BinaryPlist => bplist_fit(key, size, false).or_else(|| xml_plist(key, size)),
        Style::Keychain => bplist_fit(key, size, true).or_else(|| xml_plist(key, size)),
        Style::XmlPlist => xml_plist(key, size),
        Style::Json => json(key, size),
        Style::Log => Some(log(key, size)),
        Style::Text => Some(text(key, size)),
    };
    let mut out = out.unwrap_or_else(|| text(key, size));
    // Every generator above aims at `size` exactly; this only guards the contract.
    out.resize(size, b'\n');
    out
}

fn word(rng: &mut Rng) -> &'static str {
    WORDS[rng.below(WORDS.len() as u64) as usize]
}

/// A slice of the corpus, `lo..=hi` bytes long.
fn corpus_slice(rng: &mut Rng, lo: u64, hi: u64) -> &'static str {
    let len = (rng.range(lo, hi) as usize).min(CORPUS.len());
    let off = rng.below((CORPUS.len() - len) as u64) as usize;
    &CORPUS[off..off + len]
}

fn plist_value(rng: &mut Rng, depth: u32) -> V {
    match rng.below(if depth > 1 { 5 } else { 7 }) {
        0 => V::Bool(rng.percent(50)),
        1 => V::Int(rng.below(64)),
        2 => V::Str(format!("{}.{}", word(rng), word(rng))),
        3 => V::Int(1_700_000_000 + rng.below(1 << 16) * 600),
        4 => V::Str(corpus_slice(rng, 4, 60).to_string()),
        5 => V::Dict(
            (0..rng.range(1, 5))
                .map(|_| (word(rng).to_string(), plist_value(rng, depth + 1)))
                .collect(),
        ),
        _ => V::Array(
            (0..rng.range(1, 4))
                .map(|_| plist_value(rng, depth + 1))
                .collect(),
        ),
    }
}

/// A binary plist of exactly `size` bytes: a preference-like dictionary, or keychain-backup
/// arrays, finished with a `_pad` data value. `None` when the size cannot be met.
fn bplist_fit(key: u64, size: usize, keychain: bool) -> Option<Vec<u8>> {
    let mut rng = Rng::from_parts(&[key, 0xB1]);
    let pad = |i: usize| CORPUS.as_bytes()[i % CORPUS.len()];
    // Candidate entries, more than will fit; a prefix of them is used.
    let mut est = 0usize;
    if keychain {
        // Items of the four keychain tables; v_Data is ciphertext, hence random.
        const TABLES: [&str; 4] = ["genp", "inet", "cert", "keys"];
        let mut items: Vec<(usize, V)> = Vec::new();
        let mut counts = [0u64; 4];
        while est < size {
            let t = rng.below(4) as usize;
            counts[t] += 1;
            let mut blob = vec![0u8; rng.range(120, 360) as usize];
            rng.fill(&mut blob);
            est += blob.len() + 40;
            let mut pref = TABLES[t].as_bytes().to_vec();
            pref.extend_from_slice(&counts[t].to_le_bytes());
            let item = vec![
                ("v_Data".to_string(), V::Data(blob)),
                ("v_PersistentRef".to_string(), V::Data(pref)),
            ];
            items.push((t, V::Dict(item)));
        }
        let build = |n: usize| {
            TABLES
                .iter()
                .enumerate()
                .map(|(t, name)| {
                    let a = items[..n]
                        .iter()
                        .filter(|(x, _)| *x == t)
                        .map(|(_, v)| v.clone());
                    (name.to_string(), V::Array(a.collect()))
                })
                .collect()
        };
        bplist::fit(build, items.len(), size, pad)
    } else {
        let mut entries: Vec<(String, V)> = Vec::new();
        while est < size && entries.len() < 4000 {
            let k = format!("{}{}", word(&mut rng), rng.below(1000));
            est += k.len() + 12;
            entries.push((k, plist_value(&mut rng, 0)));
        }
        bplist::fit_entries(&entries, size, pad)
    }
}

const XML_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \
\"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
<plist version=\"1.0\">\n<dict>\n";
const XML_TAIL: &str = "</dict>\n</plist>\n";
const XML_PAD_OPEN: &str = "\t<key>_pad</key>\n\t<string>";
const XML_PAD_CLOSE: &str = "</string>\n";

fn xml_plist(key: u64, size: usize) -> Option<Vec<u8>> {
    let fixed = XML_HEAD.len() + XML_TAIL.len() + XML_PAD_OPEN.len() + XML_PAD_CLOSE.len();
    if size < fixed {
        return None;
    }
    let mut rng = Rng::from_parts(&[key, 0xC1]);
    let mut s = String::from(XML_HEAD);
    loop {
        let entry = match rng.below(4) {
            0 => format!("\t<key>{}</key>\n\t<true/>\n", word(&mut rng)),
            1 => format!(
                "\t<key>{}</key>\n\t<integer>{}</integer>\n",
                word(&mut rng),
                rng.below(1_000_000)
            ),
            _ => format!(
                "\t<key>{}{}</key>\n\t<string>{}</string>\n",
                word(&mut rng),
                rng.below(100),
                corpus_slice(&mut rng, 4, 50).replace('&', "and")
            ),
        };
        if s.len() + entry.len() + fixed - XML_HEAD.len() > size {
            break;
        }
        s.push_str(&entry);
    }
    let pad = size - s.len() - (fixed - XML_HEAD.len());
    s.push_str(XML_PAD_OPEN);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(XML_PAD_CLOSE);
    s.push_str(XML_TAIL);
    Some(s.into_bytes())
}

fn json(key: u64, size: usize) -> Option<Vec<u8>> {
    const HEAD: &str = "{\"items\":[";
    const TAIL_OPEN: &str = "],\"pad\":\"";
    const TAIL_CLOSE: &str = "\"}";
    let fixed = HEAD.len() + TAIL_OPEN.len() + TAIL_CLOSE.len();
    if size < fixed {
        return None;
    }
    let mut rng = Rng::from_parts(&[key, 0xD1]);
    let mut s = String::from(HEAD);
    let mut n = 0u64;
    loop {
        let item = format!(
            "{}{{\"id\":{},\"{}\":\"{}\",\"ts\":{}}}",
            if n == 0 { "" } else { "," },
            n + 1,
            word(&mut rng),
            corpus_slice(&mut rng, 3, 40).replace('"', "'"),
            1_700_000_000 + rng.below(50_000_000)
        );
        if s.len() + item.len() + fixed - HEAD.len() > size {
            break;
        }
        s.push_str(&item);
        n += 1;
    }
    let pad = size - s.len() - (fixed - HEAD.len());
    s.push_str(TAIL_OPEN);
    s.extend(std::iter::repeat_n('0', pad));
    s.push_str(TAIL_CLOSE);
    Some(s.into_bytes())
}

fn log(key: u64, size: usize) -> Vec<u8> {
    let mut rng = Rng::from_parts(&[key, 0xE1]);
    let mut s = String::with_capacity(size + 128);
    let mut t = 1_700_000_000 + rng.below(50_000_000);
    while s.len() < size {
        t += rng.below(120);
        let lvl = *rng.pick(&["INFO", "DEBUG", "WARN", "ERROR"]);
        let line = format!(
            "{} [{}] {}: {}\n",
            t,
            lvl,
            word(&mut rng),
            corpus_slice(&mut rng, 20, 90)
        );
        s.push_str(&line);
    }
    let mut v = s.into_bytes();
    v.truncate(size);
    v
}

fn text(key: u64, size: usize) -> Vec<u8> {
    let mut rng = Rng::from_parts(&[key, 0xF1]);
    let mut v = Vec::with_capacity(size + 128);
    while v.len() < size {
        v.extend_from_slice(corpus_slice(&mut rng, 40, 400).as_bytes());
        v.push(b'\n');
    }
    v.truncate(size);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(c: &Content, size: u64, chunk: usize) -> Vec<u8> {
        let mut r = c.reader(size);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn streams_do_not_depend_on_read_sizes() {
        for g in [
            Gen::Media {
                key: 5,
                format: Media::Heic,
            },
            Gen::Binary {
                key: 5,
                mask: 0x3F,
                zero_pct: 20,
            },
        ] {
            let c = Content(g);
            let a = read_all(&c, 300_001, 7);
            let b = read_all(&c, 300_001, 65_536 * 3 + 1);
            assert_eq!(a.len(), 300_001);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn media_headers_are_recognisable() {
        let media = |format, len| read_all(&Content(Gen::Media { key: 1, format }), len, 999);
        assert_eq!(&media(Media::Heic, 5000)[4..12], b"ftypheic");
        assert_eq!(&media(Media::Jpeg, 5000)[..3], &[0xFF, 0xD8, 0xFF]);
        assert_eq!(&media(Media::Png, 5000)[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(media(Media::Mov, 10).len(), 10);
    }

    #[test]
    fn documents_have_exact_sizes_and_parse() {
        for size in [
            64usize, 65, 100, 255, 256, 300, 1000, 4095, 4096, 20_000, 70_000,
        ] {
            for (k, style) in [
                Style::BinaryPlist,
                Style::XmlPlist,
                Style::Json,
                Style::Log,
                Style::Text,
                Style::Keychain,
            ]
            .into_iter()
            .enumerate()
            {
                let v = render_doc(size as u64 * 31 + k as u64, style, size);
                assert_eq!(v.len(), size, "{style:?} {size}");
                if matches!(
                    style,
                    Style::BinaryPlist | Style::Keychain | Style::XmlPlist
                ) && size >= 256
                {
                    plist::Value::from_reader(Cursor::new(&v))
                        .unwrap_or_else(|e| panic!("{style:?} {size}: {e}"));
                }
                if style == Style::Json && size >= 64 {
                    serde_json::from_slice::<serde_json::Value>(&v).unwrap();
                }
            }
        }
    }

    #[test]
    fn binary_plists_usually_fit_exactly() {
        // The fallback to XML is for rare sizes; most binary plists must be binary.
        let binary = (200..400)
            .filter(|&s| bplist_fit(s as u64, s, false).is_some_and(|v| v.len() == s))
            .count();
        assert!(binary > 150, "{binary}");
    }

    #[test]
    fn documents_compress_and_media_does_not() {
        for style in [
            Style::BinaryPlist,
            Style::XmlPlist,
            Style::Json,
            Style::Log,
            Style::Text,
        ] {
            let v = render_doc(77, style, 20_000);
            let z = zstd::encode_all(&v[..], 3).unwrap();
            eprintln!("{style:?}: 20000 -> {}", z.len());
            assert!(
                z.len() * 10 < v.len() * 8,
                "{style:?}: {} -> {}",
                v.len(),
                z.len()
            );
        }
        let plist = render_doc(77, Style::BinaryPlist, 6_000);
        let parsed = plist::Value::from_reader(Cursor::new(&plist)).unwrap();
        let d = parsed.as_dictionary().unwrap();
        assert!(d.len() > 10, "mostly padding: {} keys", d.len());
        let media = read_all(
            &Content(Gen::Media {
                key: 1,
                format: Media::Heic,
            }),
            100_000,
            4096,
        );
        let z = zstd::encode_all(&media[..], 3).unwrap();
        assert!(z.len() > media.len() * 99 / 100);
    }

    #[test]
    #[ignore]
    fn stream_speeds() {
        for g in [
            Gen::Media {
                key: 9,
                format: Media::Raw,
            },
            Gen::Binary {
                key: 9,
                mask: 0x3F,
                zero_pct: 10,
            },
        ] {
            let t = std::time::Instant::now();
            let n = io::copy(&mut Content(g.clone()).reader(256 << 20), &mut io::sink()).unwrap();
            let s = t.elapsed().as_secs_f64();
            eprintln!("{g:?}: {:.0} MB/s", n as f64 / s / 1e6);
        }
        let t = std::time::Instant::now();
        let mut n = 0;
        for k in 0..2000 {
            n += render_doc(k, Style::BinaryPlist, 2000 + k as usize).len();
        }
        eprintln!(
            "bplist: {:.1} MB/s",
            n as f64 / t.elapsed().as_secs_f64() / 1e6
        );
    }

    #[test]
    fn incompressible_stream_is_fast_enough_to_matter() {
        // Generates 64 MiB; a regression to per-byte generation would make this crawl.
        let c = Content(Gen::Media {
            key: 9,
            format: Media::Raw,
        });
        let mut r = c.reader(64 << 20);
        let n = io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(n, 64 << 20);
    }
}
