//! A small binary property list encoder (`bplist00`) with exact-size fitting. Preference
//! files are rendered on every read, so this has to be fast and allocation-light.

/// A plist value as the synthetic phone writes them (ASCII strings only).
#[derive(Clone, Debug)]
pub(crate) enum V {
    Bool(bool),
    Int(u64),
    Str(String),
    Data(Vec<u8>),
    Array(Vec<V>),
    Dict(Vec<(String, V)>),
}

fn count(v: &V) -> usize {
    match v {
        V::Array(a) => 1 + a.iter().map(count).sum::<usize>(),
        V::Dict(d) => 1 + d.iter().map(|(_, v)| 1 + count(v)).sum::<usize>(),
        _ => 1,
    }
}

fn int_bytes(n: u64) -> usize {
    match n {
        0..=0xFF => 1,
        0x100..=0xFFFF => 2,
        0x1_0000..=0xFFFF_FFFF => 4,
        _ => 8,
    }
}

fn put_uint(out: &mut Vec<u8>, n: u64, width: usize) {
    out.extend_from_slice(&n.to_be_bytes()[8 - width..]);
}

/// Marker byte with a 4-bit length, or 0xF and a following integer object.
fn put_len(out: &mut Vec<u8>, kind: u8, len: usize) {
    if len < 15 {
        out.push(kind | len as u8);
    } else {
        out.push(kind | 0xF);
        put_int(out, len as u64);
    }
}

fn put_int(out: &mut Vec<u8>, n: u64) {
    let w = int_bytes(n);
    out.push(0x10 | w.trailing_zeros() as u8);
    put_uint(out, n, w);
}

struct Enc {
    out: Vec<u8>,
    offsets: Vec<usize>,
    ref_size: usize,
}

impl Enc {
    /// Writes `v` as object number `offsets.len()` and its children after it (depth first).
    fn obj(&mut self, v: &V) {
        let me = self.offsets.len();
        self.offsets.push(self.out.len());
        match v {
            V::Bool(b) => self.out.push(if *b { 0x09 } else { 0x08 }),
            V::Int(n) => put_int(&mut self.out, *n),
            V::Str(s) => {
                put_len(&mut self.out, 0x50, s.len());
                self.out.extend_from_slice(s.as_bytes());
            }
            V::Data(d) => {
                put_len(&mut self.out, 0x40, d.len());
                self.out.extend_from_slice(d);
            }
            V::Array(a) => {
                put_len(&mut self.out, 0xA0, a.len());
                // Children are numbered after this object, in order.
                let mut next = me + 1;
                for c in a {
                    put_uint(&mut self.out, next as u64, self.ref_size);
                    next += count(c);
                }
                for c in a {
                    self.obj(c);
                }
            }
            V::Dict(d) => {
                put_len(&mut self.out, 0xD0, d.len());
                let mut next = me + 1;
                for (_, c) in d {
                    put_uint(&mut self.out, next as u64, self.ref_size);
                    next += 1 + count(c);
                }
                let mut next = me + 1;
                for (_, c) in d {
                    put_uint(&mut self.out, next as u64 + 1, self.ref_size);
                    next += 1 + count(c);
                }
                for (k, c) in d {
                    self.obj(&V::Str(k.clone()));
                    self.obj(c);
                }
            }
        }
    }
}

/// Encodes `top`. Object numbering: depth first, a dictionary's key then value per entry.
pub(crate) fn encode(top: &V) -> Vec<u8> {
    let n = count(top);
    let ref_size = int_bytes(n as u64);
    let mut e = Enc {
        out: Vec::with_capacity(256),
        offsets: Vec::with_capacity(n),
        ref_size,
    };
    e.out.extend_from_slice(b"bplist00");
    e.obj(top);
    let table = e.out.len();
    let off_size = int_bytes(*e.offsets.last().unwrap_or(&0) as u64);
    for &o in &e.offsets {
        put_uint(&mut e.out, o as u64, off_size);
    }
    e.out.extend_from_slice(&[0; 6]);
    e.out.push(off_size as u8);
    e.out.push(ref_size as u8);
    put_uint(&mut e.out, n as u64, 8);
    put_uint(&mut e.out, 0, 8);
    put_uint(&mut e.out, table as u64, 8);
    e.out
}

/// Bytes of a length marker (4-bit length, or 0xF plus an integer object).
fn marker(len: usize) -> usize {
    if len < 15 {
        1
    } else {
        2 + int_bytes(len as u64)
    }
}

/// Encoded size of an object tree with references of unknown width: (bytes without
/// references, number of references, number of objects).
fn stats(v: &V) -> (usize, usize, usize) {
    match v {
        V::Bool(_) => (1, 0, 1),
        V::Int(n) => (1 + int_bytes(*n), 0, 1),
        V::Str(s) => (marker(s.len()) + s.len(), 0, 1),
        V::Data(d) => (marker(d.len()) + d.len(), 0, 1),
        V::Array(a) => a
            .iter()
            .map(stats)
            .fold((marker(a.len()), a.len(), 1), |t, c| {
                (t.0 + c.0, t.1 + c.1, t.2 + c.2)
            }),
        V::Dict(d) => d
            .iter()
            .map(entry_stats)
            .fold((marker(d.len()), 0, 1), |t, c| {
                (t.0 + c.0, t.1 + c.1, t.2 + c.2)
            }),
    }
}

/// Stats of one dictionary entry: its key object, its value tree and the two references to
/// them from the dictionary.
fn entry_stats((k, v): &(String, V)) -> (usize, usize, usize) {
    let (b, r, o) = stats(v);
    (marker(k.len()) + k.len() + b, r + 2, o + 1)
}

/// Size of `{ entries…, "_pad": <pad> }` except the pad data object's own bytes, given the
/// entries' summed stats.
fn fixed_size((bytes, refs, objs): (usize, usize, usize), n: usize) -> usize {
    // The top dictionary, the "_pad" key and data objects, their two references.
    let objs = objs + 3;
    let ref_size = int_bytes(objs as u64);
    let before_pad = 8 + marker(n + 1) + bytes + 5 + (refs + 2) * ref_size;
    // The pad is the last object, so the widest offset is its own.
    before_pad + objs * int_bytes(before_pad as u64) + 32
}

/// The pad length that makes the dictionary exactly `size` bytes, if one exists (length
/// markers grow in steps, so a few sizes cannot be met with a given set of entries).
fn solve_pad(stats: (usize, usize, usize), n: usize, size: usize) -> Option<usize> {
    let fixed = fixed_size(stats, n);
    [1usize, 3, 4, 6, 10].into_iter().find_map(|m| {
        let p = size.checked_sub(fixed + m)?;
        (marker(p) == m).then_some(p)
    })
}

fn with_pad(mut d: Vec<(String, V)>, pad: usize, pad_byte: &impl Fn(usize) -> u8) -> Vec<u8> {
    d.push(("_pad".into(), V::Data((0..pad).map(pad_byte).collect())));
    encode(&V::Dict(d))
}

/// `{ entries[..n]…, "_pad": … }` encoded in exactly `size` bytes, with as many entries as
/// fit. Sizes are computed, not rendered, so only the result is encoded.
pub(crate) fn fit_entries(
    entries: &[(String, V)],
    size: usize,
    pad_byte: impl Fn(usize) -> u8,
) -> Option<Vec<u8>> {
    let mut sums = vec![(0usize, 0usize, 0usize)];
    for e in entries {
        let (b, r, o) = entry_stats(e);
        let t = sums[sums.len() - 1];
        let next = (t.0 + b, t.1 + r, t.2 + o);
        if fixed_size(next, sums.len()) + 1 > size {
            break;
        }
        sums.push(next);
    }
    for n in (0..sums.len()).rev().take(16) {
        if let Some(p) = solve_pad(sums[n], n, size) {
            let out = with_pad(entries[..n].to_vec(), p, &pad_byte);
            return (out.len() == size).then_some(out);
        }
    }
    None
}

/// Like [`fit_entries`] for dictionaries that are not a prefix of a list: `build(n)` makes
/// the entries for the first `n` items (n up to `max_n`), sizes grow with `n`.
pub(crate) fn fit(
    build: impl Fn(usize) -> Vec<(String, V)>,
    max_n: usize,
    size: usize,
    pad_byte: impl Fn(usize) -> u8,
) -> Option<Vec<u8>> {
    let sum = |d: &[(String, V)]| {
        d.iter()
            .map(entry_stats)
            .fold((0, 0, 0), |t, c| (t.0 + c.0, t.1 + c.1, t.2 + c.2))
    };
    let fits = |n: usize| {
        let d = build(n);
        fixed_size(sum(&d), d.len()) < size
    };
    let (mut lo, mut hi) = (0usize, max_n);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    for n in (0..=lo).rev().take(16) {
        let d = build(n);
        if let Some(p) = solve_pad(sum(&d), d.len(), size) {
            let out = with_pad(d, p, &pad_byte);
            return (out.len() == size).then_some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> V {
        V::Dict(vec![
            ("enabled".into(), V::Bool(true)),
            ("count".into(), V::Int(70_000)),
            (
                "name".into(),
                V::Str("a string longer than fifteen bytes".into()),
            ),
            ("blob".into(), V::Data(vec![1, 2, 3])),
            (
                "list".into(),
                V::Array(vec![V::Int(1), V::Bool(false), V::Dict(vec![])]),
            ),
            (
                "nested".into(),
                V::Dict(vec![("x".into(), V::Int(u64::from(u32::MAX) + 1))]),
            ),
        ])
    }

    #[test]
    fn encodes_what_plist_reads() {
        let bytes = encode(&sample());
        let v = plist::Value::from_reader(std::io::Cursor::new(&bytes)).unwrap();
        let d = v.as_dictionary().unwrap();
        assert_eq!(d["enabled"].as_boolean(), Some(true));
        assert_eq!(d["count"].as_unsigned_integer(), Some(70_000));
        assert_eq!(
            d["name"].as_string(),
            Some("a string longer than fifteen bytes")
        );
        assert_eq!(d["blob"].as_data(), Some(&[1u8, 2, 3][..]));
        assert_eq!(d["list"].as_array().unwrap().len(), 3);
        let x = d["nested"].as_dictionary().unwrap()["x"].as_unsigned_integer();
        assert_eq!(x, Some(u64::from(u32::MAX) + 1));
    }

    #[test]
    fn many_objects_use_wide_references() {
        let d = V::Dict((0..400).map(|i| (format!("k{i}"), V::Int(i))).collect());
        let bytes = encode(&d);
        let v = plist::Value::from_reader(std::io::Cursor::new(&bytes)).unwrap();
        assert_eq!(
            v.as_dictionary().unwrap()["k399"].as_unsigned_integer(),
            Some(399)
        );
    }

    #[test]
    fn fits_exact_sizes() {
        let entries: Vec<(String, V)> = (0..300)
            .map(|i| (format!("key{i}"), V::Str("value".repeat(i % 7))))
            .collect();
        let mut hits = 0;
        for size in 60..3000 {
            if let Some(v) = fit_entries(&entries, size, |i| b'a' + (i % 26) as u8) {
                assert_eq!(v.len(), size);
                let p = plist::Value::from_reader(std::io::Cursor::new(&v)).unwrap();
                // Mostly entries, not padding.
                let keys = p.as_dictionary().unwrap().len();
                assert!(
                    size < 200 || keys * 40 >= size.min(2000),
                    "{size}: {keys} keys"
                );
                hits += 1;
            }
            let build = |n: usize| {
                vec![(
                    "items".to_string(),
                    V::Array(entries[..n].iter().map(|e| e.1.clone()).collect()),
                )]
            };
            if size >= 80 {
                let v = fit(build, entries.len(), size, |_| 0).unwrap_or_else(|| panic!("{size}"));
                assert_eq!(v.len(), size);
                plist::Value::from_reader(std::io::Cursor::new(&v)).unwrap();
            }
        }
        assert!(hits > 2900, "{hits}");
    }
}
