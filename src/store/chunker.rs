//! Content-defined chunking (format.md §7): FastCDC 2020 from the `fastcdc` crate with the
//! repository's gear seed, driven over our own reusable buffer so chunks are lent, not allocated.

use fastcdc::v2020;
use std::io::{self, Read};

/// Chunker sizes of one repository (stored in its config; they never change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Smallest chunk (except the last of a stream).
    pub min: u32,
    /// Target average.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl ChunkerParams {
    /// Initial data chunker sizes: 64 KiB / 256 KiB / 1 MiB (to be measured, §7).
    pub const DATA_DEFAULT: ChunkerParams = ChunkerParams {
        min: 64 * 1024,
        avg: 256 * 1024,
        max: 1024 * 1024,
    };
    /// Initial metadata chunker sizes: 16 KiB / 64 KiB / 256 KiB.
    pub const META_DEFAULT: ChunkerParams = ChunkerParams {
        min: 16 * 1024,
        avg: 64 * 1024,
        max: 256 * 1024,
    };

    /// True when the `fastcdc` crate accepts these sizes (it panics otherwise) and
    /// min ≤ avg ≤ max.
    pub fn is_valid(&self) -> bool {
        (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&self.min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&self.avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max
    }
}

/// FastCDC normalization level used by format version 1.
pub const NORMALIZATION_LEVEL: u8 = 1;

/// The cut-point function of one chunker configuration (sizes, masks, seeded gear tables).
#[derive(Clone)]
pub struct Cutter {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

impl Cutter {
    /// A cutter for `params` (which must be valid, `is_valid`) and the repository's `seed`.
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        debug_assert!(params.is_valid());
        let bits = v2020::logarithm2(params.avg.clamp(v2020::AVERAGE_MIN, v2020::AVERAGE_MAX));
        let n = u32::from(NORMALIZATION_LEVEL);
        let (gear, gear_ls) = v2020::get_gear_with_seed(seed);
        Cutter {
            min: params.min as usize,
            avg: params.avg as usize,
            max: params.max as usize,
            mask_s: v2020::MASKS[(bits + n) as usize],
            mask_l: v2020::MASKS[(bits - n) as usize],
            gear,
            gear_ls,
        }
    }

    /// The largest chunk.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Length of the next chunk at the start of `window`. The window must hold the next `max`
    /// bytes, or everything left at the end of the stream; that is what `StreamCDC` passes.
    pub fn cut(&self, window: &[u8]) -> usize {
        let window = &window[..window.len().min(self.max)];
        let (_, count) = v2020::cut_gear(
            window,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        count.clamp(window.len().min(1), window.len())
    }
}

/// First size of a chunker's buffer; it doubles as a stream needs, up to four `max` windows.
const FIRST_BUF: usize = 64 * 1024;

/// Cuts a byte stream pulled from a reader. Produces exactly the boundaries of
/// `v2020::StreamCDC::with_level_and_seed(.., Normalization::Level1, seed)`.
pub struct Chunker<R> {
    source: R,
    cutter: Cutter,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `source`. `params` must be valid (`is_valid`); the repository checks it when
    /// reading its config. `seed` is the repository's `cdc_seed`.
    pub fn new(source: R, params: ChunkerParams, seed: u64) -> Self {
        let cutter = Cutter::new(params, seed);
        Chunker {
            source,
            // Grows on demand up to four windows (the unread tail, < max, is then moved to the
            // front once per ~3 windows): most phone files are far smaller than one window, and
            // zeroing four windows per stream cost more than chunking them.
            buf: Vec::new(),
            cutter,
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// The next chunk, lent until the next call; `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        let max = self.cutter.max();
        if self.end - self.start < max && !self.eof {
            if self.buf.len() - self.start < max {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            while self.end - self.start < max && !self.eof {
                if self.end == self.buf.len() {
                    let grown = (self.buf.len() * 2).max(FIRST_BUF).min(4 * max);
                    self.buf.resize(grown, 0);
                }
                match self.source.read(&mut self.buf[self.end..]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if self.start == self.end {
            return Ok(None);
        }
        let count = self.cutter.cut(&self.buf[self.start..self.end]);
        let chunk = &self.buf[self.start..self.start + count];
        self.start += count;
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn cut_all(data: &[u8], p: ChunkerParams, seed: u64) -> Vec<usize> {
        let mut c = Chunker::new(data, p, seed);
        let mut out = Vec::new();
        while let Some(ch) = c.next_chunk().unwrap() {
            out.push(ch.len());
        }
        out
    }

    const SMALL: ChunkerParams = ChunkerParams {
        min: 1024,
        avg: 4096,
        max: 16384,
    };

    #[test]
    fn same_boundaries_as_streamcdc() {
        let data = pseudo_random(300_000, 7);
        for seed in [1u64, 0xdead_beef_1234] {
            let ours = cut_all(&data, SMALL, seed);
            let theirs: Vec<usize> = v2020::StreamCDC::with_level_and_seed(
                &data[..],
                SMALL.min,
                SMALL.avg,
                SMALL.max,
                v2020::Normalization::Level1,
                seed,
            )
            .map(|c| c.unwrap().length)
            .collect();
            assert_eq!(ours, theirs);
            assert_eq!(ours.iter().sum::<usize>(), data.len());
            assert!(ours.len() > 20);
        }
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = pseudo_random(200_000, 3);
        assert_ne!(cut_all(&data, SMALL, 1), cut_all(&data, SMALL, 99));
    }

    #[test]
    fn edge_cases() {
        assert!(cut_all(&[], SMALL, 1).is_empty());
        assert_eq!(cut_all(&[5u8; 100], SMALL, 1), vec![100]);
        // Zeros never hit a cut point: chunks of exactly max.
        assert_eq!(
            cut_all(&vec![0u8; 40_000], SMALL, 1),
            vec![16384, 16384, 7232]
        );
    }

    #[test]
    fn insert_shifts_only_nearby_chunks() {
        let a = pseudo_random(400_000, 11);
        let mut b = a.clone();
        b.splice(200_000..200_000, [1u8, 2, 3]);
        let ca = cut_all(&a, SMALL, 5);
        let cb = cut_all(&b, SMALL, 5);
        let same_prefix = ca.iter().zip(&cb).take_while(|(x, y)| x == y).count();
        let same_suffix = ca
            .iter()
            .rev()
            .zip(cb.iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        assert!(
            same_prefix + same_suffix + 3 >= ca.len(),
            "{same_prefix} {same_suffix} {}",
            ca.len()
        );
    }

    #[test]
    fn validity() {
        assert!(ChunkerParams::DATA_DEFAULT.is_valid());
        assert!(ChunkerParams::META_DEFAULT.is_valid());
        assert!(!ChunkerParams {
            min: 10,
            avg: 4096,
            max: 16384
        }
        .is_valid());
        assert!(!ChunkerParams {
            min: 8192,
            avg: 4096,
            max: 16384
        }
        .is_valid());
        assert!(!ChunkerParams {
            min: 1024,
            avg: 4096,
            max: 32 << 20
        }
        .is_valid());
    }
}
