//! Popcount kernels over packed codes, with runtime SIMD dispatch.
//!
//! Three code paths compute exactly the same numbers:
//!
//! * [`SimdPath::Scalar`]: portable `u64::count_ones`, the reference;
//! * [`SimdPath::Avx2`]: nibble-lookup popcount (`vpshufb`, Muła's method) summed with `vpsadbw`;
//! * [`SimdPath::Avx512`]: `vpopcntq` (AVX-512 VPOPCNTDQ); the scan compares the lane-wise
//!   minimum of 32 distances with the threshold in one mask compare.
//!
//! The process-wide path is the best one the CPU has, unless the environment variable
//! `CMROPS_SIMD=scalar|avx2|avx512` (read once, at first use) or [`set_path`] picks another.
//!
//! The kernels work on a [`Block`] of database codes laid out word-major ("transposed": word `w`
//! of code `i` at `data[w * stride + i]`), so one SIMD register holds the same word of 8 (or 4)
//! codes and a distance is a sum of per-word popcounts with no horizontal reduction. A caller
//! loads one block (small enough to stay in L1, see [`block_len`]) and runs every query of its
//! batch against it, so the database is read from memory once per batch, not once per query.
//! Word counts 1, 2, 4 and 8 (64 to 512 bits) have specialised, fully unrolled kernels; any
//! other count takes a generic loop.

use crate::error::{CoreError, Result};
use std::sync::atomic::{AtomicU8, Ordering};

/// Hamming distance between two codes of equal word count (portable reference).
#[inline]
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// One implementation of the popcount kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimdPath {
    /// Portable `u64::count_ones`.
    Scalar,
    /// AVX2 nibble-LUT popcount (`vpshufb` + `vpsadbw`); needs AVX2 and POPCNT.
    Avx2,
    /// AVX-512 `vpopcntq`; needs AVX512F and AVX512VPOPCNTDQ.
    Avx512,
}

impl SimdPath {
    /// Every path, slowest first.
    pub const ALL: [SimdPath; 3] = [SimdPath::Scalar, SimdPath::Avx2, SimdPath::Avx512];

    /// Lower-case name: `"scalar"`, `"avx2"` or `"avx512"`.
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Scalar => "scalar",
            SimdPath::Avx2 => "avx2",
            SimdPath::Avx512 => "avx512",
        }
    }

    /// The path called `name` (as [`SimdPath::name`] spells it), if any.
    pub fn from_name(name: &str) -> Option<SimdPath> {
        SimdPath::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            SimdPath::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vpopcntdq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> SimdPath {
        match c {
            1 => SimdPath::Avx2,
            2 => SimdPath::Avx512,
            _ => SimdPath::Scalar,
        }
    }
}

impl std::fmt::Display for SimdPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The paths this CPU can run, slowest first (always starts with [`SimdPath::Scalar`]).
pub fn available_paths() -> Vec<SimdPath> {
    SimdPath::ALL
        .into_iter()
        .filter(|p| p.is_available())
        .collect()
}

/// The fastest path this CPU can run.
pub fn best_path() -> SimdPath {
    available_paths().pop().unwrap_or(SimdPath::Scalar)
}

const UNSET: u8 = u8::MAX;
static ACTIVE: AtomicU8 = AtomicU8::new(UNSET);

/// The path the kernels use now: [`set_path`]'s choice, else `CMROPS_SIMD` (when it names an
/// available path), else [`best_path`].
pub fn active_path() -> SimdPath {
    let c = ACTIVE.load(Ordering::Relaxed);
    if c != UNSET {
        return SimdPath::from_code(c);
    }
    let chosen = std::env::var("CMROPS_SIMD")
        .ok()
        .and_then(|v| SimdPath::from_name(v.trim().to_ascii_lowercase().as_str()))
        .filter(|p| p.is_available())
        .unwrap_or_else(best_path);
    // A concurrent set_path wins over the default.
    match ACTIVE.compare_exchange(UNSET, chosen.code(), Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => chosen,
        Err(current) => SimdPath::from_code(current),
    }
}

/// Make `path` the process-wide path; refused when this CPU cannot run it.
pub fn set_path(path: SimdPath) -> Result<()> {
    if !path.is_available() {
        let have: Vec<&str> = available_paths().into_iter().map(SimdPath::name).collect();
        return Err(CoreError::invalid(
            "path",
            format!(
                "SIMD path {:?} is not available on this CPU (available: {})",
                path.name(),
                have.join(", ")
            ),
        ));
    }
    ACTIVE.store(path.code(), Ordering::Relaxed);
    Ok(())
}

/// Codes per block for a code of `words` words: about 16 KiB of codes, a multiple of 64.
pub fn block_len(words: usize) -> usize {
    ((2048 / words.max(1)) & !63).max(64)
}

/// A block of `len` codes in word-major layout: word `w` of code `i` is `data[w * stride + i]`.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    data: &'a [u64],
    stride: usize,
    words: usize,
    len: usize,
}

impl<'a> Block<'a> {
    /// A word-major view; panics unless `data` holds `words` rows of `stride >= len` words.
    pub fn new(data: &'a [u64], stride: usize, words: usize, len: usize) -> Block<'a> {
        assert!(words >= 1 && stride >= len, "invalid block geometry");
        assert!(
            len == 0 || data.len() >= (words - 1) * stride + len,
            "block data too short"
        );
        Block {
            data,
            stride,
            words,
            len,
        }
    }

    /// Number of codes in the block.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block holds no code.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Words per code.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Word `w` of code `i`.
    #[inline]
    pub fn word(&self, i: usize, w: usize) -> u64 {
        self.data[w * self.stride + i]
    }
}

/// Scratch space that turns a run of row-major codes into a word-major [`Block`].
#[derive(Default, Debug)]
pub struct BlockBuf {
    buf: Vec<u64>,
}

impl BlockBuf {
    pub fn new() -> BlockBuf {
        BlockBuf::default()
    }

    /// The codes `start..start + len` of the row-major `codes` (rows of `words` words) as a block.
    /// One-word codes need no transposition and are viewed in place.
    pub fn load<'a>(
        &'a mut self,
        codes: &'a [u64],
        words: usize,
        start: usize,
        len: usize,
    ) -> Block<'a> {
        let rows = &codes[start * words..(start + len) * words];
        if words == 1 {
            return Block::new(rows, len, 1, len);
        }
        // Every word read back is written first: grow (zeroed) only, never clear.
        if self.buf.len() < words * len {
            self.buf.resize(words * len, 0);
        }
        let out = &mut self.buf[..words * len];
        match words {
            2 => transpose::<2>(rows, out, len),
            4 => transpose::<4>(rows, out, len),
            8 => transpose::<8>(rows, out, len),
            _ => {
                for (i, row) in rows.chunks_exact(words).enumerate() {
                    for (w, &x) in row.iter().enumerate() {
                        out[w * len + i] = x;
                    }
                }
            }
        }
        Block::new(&self.buf, len, words, len)
    }
}

fn transpose<const W: usize>(rows: &[u64], out: &mut [u64], len: usize) {
    assert!(rows.len() == W * len && out.len() == W * len);
    for i in 0..len {
        for w in 0..W {
            out[w * len + i] = rows[i * W + w];
        }
    }
}

/// Receives the codes a kernel finds close enough.
pub trait Sink {
    /// Largest distance still of interest; negative means none (the kernel may stop). A kernel
    /// may offer codes above it: the sink re-checks.
    fn threshold(&self) -> i64;
    /// Code `i` of the block is at distance `dist` from the query. Codes are offered in
    /// ascending `i`.
    fn offer(&mut self, i: usize, dist: u32);
}

/// A verified SIMD path: can only be made for a path this CPU runs, so its kernels are safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    path: SimdPath,
}

impl Kernel {
    /// The kernel of the process-wide [`active_path`].
    pub fn active() -> Kernel {
        Kernel {
            path: active_path(),
        }
    }

    /// The kernel of `path`; refused when this CPU cannot run it.
    pub fn new(path: SimdPath) -> Result<Kernel> {
        if path.is_available() {
            Ok(Kernel { path })
        } else {
            Err(CoreError::invalid(
                "path",
                format!("SIMD path {:?} is not available on this CPU", path.name()),
            ))
        }
    }

    pub fn path(self) -> SimdPath {
        self.path
    }

    /// Offer to `sink`, in ascending order, every code of `block` whose distance to `query` is
    /// at most `sink.threshold()` (re-read after every offer).
    pub fn scan<S: Sink>(self, block: Block<'_>, query: &[u64], sink: &mut S) {
        assert_eq!(
            query.len(),
            block.words,
            "query width differs from the block's"
        );
        if block.len == 0 {
            return;
        }
        match self.path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel with this path exists only when the CPU has AVX-512 VPOPCNTDQ.
            SimdPath::Avx512 => unsafe {
                match block.words {
                    1 => avx512::scan::<S, 1>(block, query, sink),
                    2 => avx512::scan::<S, 2>(block, query, sink),
                    4 => avx512::scan::<S, 4>(block, query, sink),
                    8 => avx512::scan::<S, 8>(block, query, sink),
                    _ => avx512::scan::<S, 0>(block, query, sink),
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel with this path exists only when the CPU has AVX2 and POPCNT.
            SimdPath::Avx2 => unsafe {
                match block.words {
                    1 => avx2::scan::<S, 1>(block, query, sink),
                    2 => avx2::scan::<S, 2>(block, query, sink),
                    4 => avx2::scan::<S, 4>(block, query, sink),
                    8 => avx2::scan::<S, 8>(block, query, sink),
                    _ => avx2::scan::<S, 0>(block, query, sink),
                }
            },
            _ => match block.words {
                1 => scalar::scan::<S, 1>(block, query, sink),
                2 => scalar::scan::<S, 2>(block, query, sink),
                4 => scalar::scan::<S, 4>(block, query, sink),
                8 => scalar::scan::<S, 8>(block, query, sink),
                _ => scalar::scan::<S, 0>(block, query, sink),
            },
        }
    }

    /// `out[i]` = distance from `query` to code `i` of `block`, for every code of the block.
    pub fn distances(self, block: Block<'_>, query: &[u64], out: &mut [u32]) {
        assert_eq!(
            query.len(),
            block.words,
            "query width differs from the block's"
        );
        let out = &mut out[..block.len];
        if block.len == 0 {
            return;
        }
        match self.path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `scan`.
            SimdPath::Avx512 => unsafe {
                match block.words {
                    1 => avx512::distances::<1>(block, query, out),
                    2 => avx512::distances::<2>(block, query, out),
                    4 => avx512::distances::<4>(block, query, out),
                    8 => avx512::distances::<8>(block, query, out),
                    _ => avx512::distances::<0>(block, query, out),
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `scan`.
            SimdPath::Avx2 => unsafe {
                match block.words {
                    1 => avx2::distances::<1>(block, query, out),
                    2 => avx2::distances::<2>(block, query, out),
                    4 => avx2::distances::<4>(block, query, out),
                    8 => avx2::distances::<8>(block, query, out),
                    _ => avx2::distances::<0>(block, query, out),
                }
            },
            _ => match block.words {
                1 => scalar::distances::<1>(block, query, out),
                2 => scalar::distances::<2>(block, query, out),
                4 => scalar::distances::<4>(block, query, out),
                8 => scalar::distances::<8>(block, query, out),
                _ => scalar::distances::<0>(block, query, out),
            },
        }
    }
}

impl Kernel {
    /// `slot[i] += add` for every `i` whose `labels[i]` shares a bit with `query_label`
    /// (one-word labels; the evaluation kernels use it to split relevant codes off).
    pub fn mark_relevant(self, slot: &mut [u32], query_label: u64, labels: &[u64], add: u32) {
        match self.path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel with this path exists only when the CPU has AVX-512F.
            SimdPath::Avx512 => unsafe { avx512::mark_relevant(slot, query_label, labels, add) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel with this path exists only when the CPU has AVX2.
            SimdPath::Avx2 => unsafe { avx2::mark_relevant(slot, query_label, labels, add) },
            _ => mark_relevant(slot, query_label, labels, add),
        }
    }
}

/// Portable body of [`Kernel::mark_relevant`]; the SIMD paths compile the same loop with their
/// target features so it vectorises to a mask test and a masked add.
#[inline(always)]
fn mark_relevant(slot: &mut [u32], q: u64, labels: &[u64], add: u32) {
    for (s, &l) in slot.iter_mut().zip(labels) {
        *s += add & 0u32.wrapping_sub((q & l != 0) as u32);
    }
}

/// Distance of code `i` of the block to `q`, word by word (used for tails by every path).
#[inline(always)]
fn dist_one<const W: usize>(b: &Block<'_>, q: &[u64], i: usize) -> u32 {
    let w = if W == 0 { b.words } else { W };
    let mut d = 0;
    for (j, &qj) in q.iter().enumerate().take(w) {
        d += (b.data[j * b.stride + i] ^ qj).count_ones();
    }
    d
}

/// Clamp a sink threshold into the range every kernel compares in.
#[inline(always)]
fn clamp_threshold(t: i64) -> i64 {
    t.min(u32::MAX as i64)
}

mod scalar {
    use super::{clamp_threshold, dist_one, Block, Sink};

    pub(super) fn scan<S: Sink, const W: usize>(b: Block<'_>, q: &[u64], sink: &mut S) {
        let mut t = clamp_threshold(sink.threshold());
        for i in 0..b.len {
            if t < 0 {
                return;
            }
            let d = dist_one::<W>(&b, q, i);
            if d as i64 <= t {
                sink.offer(i, d);
                t = clamp_threshold(sink.threshold());
            }
        }
    }

    pub(super) fn distances<const W: usize>(b: Block<'_>, q: &[u64], out: &mut [u32]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = dist_one::<W>(&b, q, i);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{clamp_threshold, dist_one, Block, Sink};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) fn mark_relevant(slot: &mut [u32], q: u64, labels: &[u64], add: u32) {
        super::mark_relevant(slot, q, labels, add)
    }

    /// Distances of the 8 codes starting at `i` (u64 lanes).
    #[inline]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    fn dist8<const W: usize>(b: &Block<'_>, qv: &[__m512i; W], q: &[u64], i: usize) -> __m512i {
        let w = if W == 0 { b.words } else { W };
        let base = b.data.as_ptr();
        debug_assert!(i + 8 <= b.len);
        let mut acc = _mm512_setzero_si512();
        for j in 0..w {
            // SAFETY: i + 8 <= len <= stride and the block holds `words` rows of `stride`.
            let x = unsafe { _mm512_loadu_si512(base.add(j * b.stride + i) as *const __m512i) };
            let qj = if W == 0 {
                _mm512_set1_epi64(q[j] as i64)
            } else {
                qv[j]
            };
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, qj)));
        }
        acc
    }

    /// Offer the codes of the four groups of 8 at `i` whose distance is within `t`.
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    fn hits<S: Sink>(sink: &mut S, i: usize, d: [__m512i; 4], t: i64) {
        let tv = _mm512_set1_epi64(t);
        let mut m = 0u32;
        for (g, dg) in d.iter().enumerate() {
            m |= (_mm512_cmple_epi64_mask(*dg, tv) as u32) << (8 * g);
        }
        let mut lanes = [0u64; 32];
        for (g, dg) in d.iter().enumerate() {
            // SAFETY: `lanes` holds 4 x 8 u64.
            unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().add(8 * g) as *mut __m512i, *dg) };
        }
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            sink.offer(i + l, lanes[l] as u32);
            m &= m - 1;
        }
    }

    /// The query's words broadcast to every lane (nothing for the generic `W == 0`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn broadcast<const W: usize>(q: &[u64]) -> [__m512i; W] {
        let mut qv = [_mm512_setzero_si512(); W];
        for (v, &x) in qv.iter_mut().zip(q) {
            *v = _mm512_set1_epi64(x as i64);
        }
        qv
    }

    #[target_feature(enable = "avx512f,avx512vpopcntdq,popcnt")]
    pub(super) fn scan<S: Sink, const W: usize>(b: Block<'_>, q: &[u64], sink: &mut S) {
        let qv = broadcast::<W>(q);
        let n = b.len;
        let mut t = clamp_threshold(sink.threshold());
        if t < 0 {
            return;
        }
        let mut tv = _mm512_set1_epi64(t);
        let mut i = 0;
        // Hot loop: 32 codes, one compare of their lane-wise minimum against the threshold;
        // only a hit (rare once the threshold has tightened) looks at the groups one by one.
        while i + 32 <= n {
            let d0 = dist8::<W>(&b, &qv, q, i);
            let d1 = dist8::<W>(&b, &qv, q, i + 8);
            let d2 = dist8::<W>(&b, &qv, q, i + 16);
            let d3 = dist8::<W>(&b, &qv, q, i + 24);
            let lo = _mm512_min_epu64(_mm512_min_epu64(d0, d1), _mm512_min_epu64(d2, d3));
            if _mm512_cmple_epi64_mask(lo, tv) != 0 {
                hits(sink, i, [d0, d1, d2, d3], t);
                t = clamp_threshold(sink.threshold());
                if t < 0 {
                    return;
                }
                tv = _mm512_set1_epi64(t);
            }
            i += 32;
        }
        while i + 8 <= n {
            let d0 = dist8::<W>(&b, &qv, q, i);
            if _mm512_cmple_epi64_mask(d0, tv) != 0 {
                let big = _mm512_set1_epi64(i64::MAX);
                hits(sink, i, [d0, big, big, big], t);
                t = clamp_threshold(sink.threshold());
                if t < 0 {
                    return;
                }
                tv = _mm512_set1_epi64(t);
            }
            i += 8;
        }
        while i < n {
            let d = dist_one::<W>(&b, q, i);
            if d as i64 <= t {
                sink.offer(i, d);
                t = clamp_threshold(sink.threshold());
                if t < 0 {
                    return;
                }
            }
            i += 1;
        }
    }

    #[target_feature(enable = "avx512f,avx512vpopcntdq,popcnt")]
    pub(super) fn distances<const W: usize>(b: Block<'_>, q: &[u64], out: &mut [u32]) {
        let qv = broadcast::<W>(q);
        let n = b.len.min(out.len());
        let mut i = 0;
        while i + 8 <= n {
            let d = _mm512_cvtepi64_epi32(dist8::<W>(&b, &qv, q, i));
            // SAFETY: i + 8 <= out.len().
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, d) };
            i += 8;
        }
        while i < n {
            out[i] = dist_one::<W>(&b, q, i);
            i += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{clamp_threshold, dist_one, Block, Sink};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub(super) fn mark_relevant(slot: &mut [u32], q: u64, labels: &[u64], add: u32) {
        super::mark_relevant(slot, q, labels, add)
    }

    /// Distances of the 4 codes starting at `i` (u64 lanes), by nibble lookup.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dist4<const W: usize>(b: &Block<'_>, qv: &[__m256i; 8], q: &[u64], i: usize) -> __m256i {
        let w = if W == 0 { b.words } else { W };
        let base = b.data.as_ptr();
        debug_assert!(i + 4 <= b.len);
        let lut = _mm256_setr_epi8(
            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2,
            3, 3, 4,
        );
        let low = _mm256_set1_epi8(0x0f);
        let zero = _mm256_setzero_si256();
        let mut acc64 = zero;
        let mut acc8 = zero;
        for j in 0..w {
            // SAFETY: i + 4 <= len <= stride and the block holds `words` rows of `stride`.
            let x = unsafe { _mm256_loadu_si256(base.add(j * b.stride + i) as *const __m256i) };
            let qj = if W == 0 {
                _mm256_set1_epi64x(q[j] as i64)
            } else {
                qv[j]
            };
            let x = _mm256_xor_si256(x, qj);
            let lo = _mm256_and_si256(x, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(x), low);
            let c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
            acc8 = _mm256_add_epi8(acc8, c);
            // A byte gains at most 8 per word: flush before it could pass 255.
            if W == 0 && j % 31 == 30 {
                acc64 = _mm256_add_epi64(acc64, _mm256_sad_epu8(acc8, zero));
                acc8 = zero;
            }
        }
        _mm256_add_epi64(acc64, _mm256_sad_epu8(acc8, zero))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn le_mask(d: __m256i, t_plus_1: __m256i) -> u32 {
        _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(t_plus_1, d))) as u32
    }

    #[inline(never)]
    fn hits<S: Sink>(sink: &mut S, i: usize, mut m: u32, lanes: &[u64; 16]) {
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            sink.offer(i + l, lanes[l] as u32);
            m &= m - 1;
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn query_vectors<const W: usize>(q: &[u64]) -> [__m256i; 8] {
        let mut qv = [_mm256_setzero_si256(); 8];
        if W != 0 {
            for j in 0..W {
                qv[j] = _mm256_set1_epi64x(q[j] as i64);
            }
        }
        qv
    }

    #[target_feature(enable = "avx2,popcnt")]
    pub(super) fn scan<S: Sink, const W: usize>(b: Block<'_>, q: &[u64], sink: &mut S) {
        let qv = query_vectors::<W>(q);
        let n = b.len;
        let mut t = clamp_threshold(sink.threshold());
        if t < 0 {
            return;
        }
        let mut tv = _mm256_set1_epi64x(t + 1);
        let mut lanes = [0u64; 16];
        let mut i = 0;
        while i + 16 <= n {
            let d0 = dist4::<W>(&b, &qv, q, i);
            let d1 = dist4::<W>(&b, &qv, q, i + 4);
            let d2 = dist4::<W>(&b, &qv, q, i + 8);
            let d3 = dist4::<W>(&b, &qv, q, i + 12);
            let m = le_mask(d0, tv)
                | le_mask(d1, tv) << 4
                | le_mask(d2, tv) << 8
                | le_mask(d3, tv) << 12;
            if m != 0 {
                // SAFETY: `lanes` holds 16 u64, four stores of 4.
                unsafe {
                    let p = lanes.as_mut_ptr() as *mut __m256i;
                    _mm256_storeu_si256(p, d0);
                    _mm256_storeu_si256(p.add(1), d1);
                    _mm256_storeu_si256(p.add(2), d2);
                    _mm256_storeu_si256(p.add(3), d3);
                }
                hits(sink, i, m, &lanes);
                t = clamp_threshold(sink.threshold());
                if t < 0 {
                    return;
                }
                tv = _mm256_set1_epi64x(t + 1);
            }
            i += 16;
        }
        while i + 4 <= n {
            let d0 = dist4::<W>(&b, &qv, q, i);
            let m = le_mask(d0, tv);
            if m != 0 {
                // SAFETY: `lanes` holds 16 u64.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, d0) };
                hits(sink, i, m, &lanes);
                t = clamp_threshold(sink.threshold());
                if t < 0 {
                    return;
                }
                tv = _mm256_set1_epi64x(t + 1);
            }
            i += 4;
        }
        while i < n {
            let d = dist_one::<W>(&b, q, i);
            if d as i64 <= t {
                sink.offer(i, d);
                t = clamp_threshold(sink.threshold());
                if t < 0 {
                    return;
                }
            }
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,popcnt")]
    pub(super) fn distances<const W: usize>(b: Block<'_>, q: &[u64], out: &mut [u32]) {
        let qv = query_vectors::<W>(q);
        let n = b.len.min(out.len());
        let pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0);
        let mut i = 0;
        while i + 4 <= n {
            let d = _mm256_permutevar8x32_epi32(dist4::<W>(&b, &qv, q, i), pick);
            // SAFETY: i + 4 <= out.len().
            unsafe {
                _mm_storeu_si128(
                    out.as_mut_ptr().add(i) as *mut __m128i,
                    _mm256_castsi256_si128(d),
                )
            };
            i += 4;
        }
        while i < n {
            out[i] = dist_one::<W>(&b, q, i);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let x = *seed;
        x ^ (x >> 29) ^ (x << 17)
    }

    struct All(Vec<(usize, u32)>, i64);
    impl Sink for All {
        fn threshold(&self) -> i64 {
            self.1
        }
        fn offer(&mut self, i: usize, d: u32) {
            if d as i64 <= self.1 {
                self.0.push((i, d));
            }
        }
    }

    #[test]
    fn every_path_matches_reference() {
        let mut seed = 7;
        for words in [1usize, 2, 3, 4, 5, 8, 9, 33] {
            for len in [0usize, 1, 3, 7, 8, 9, 31, 33, 100] {
                let codes: Vec<u64> = (0..len * words).map(|_| lcg(&mut seed)).collect();
                let q: Vec<u64> = (0..words).map(|_| lcg(&mut seed)).collect();
                let want: Vec<u32> = codes.chunks_exact(words).map(|c| hamming(c, &q)).collect();
                let mut buf = BlockBuf::new();
                for path in available_paths() {
                    let k = Kernel::new(path).unwrap();
                    let block = buf.load(&codes, words, 0, len);
                    let mut out = vec![0u32; len];
                    k.distances(block, &q, &mut out);
                    assert_eq!(out, want, "{path} words={words} len={len}");
                    let t = (words * 32) as i64;
                    let mut s = All(Vec::new(), t);
                    k.scan(block, &q, &mut s);
                    let exp: Vec<(usize, u32)> = want
                        .iter()
                        .copied()
                        .enumerate()
                        .filter(|&(_, d)| d as i64 <= t)
                        .collect();
                    assert_eq!(s.0, exp, "{path} words={words} len={len}");
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for p in SimdPath::ALL {
            assert_eq!(SimdPath::from_name(p.name()), Some(p));
        }
        assert_eq!(SimdPath::from_name("sse"), None);
        assert!(available_paths().contains(&SimdPath::Scalar));
        assert_eq!(block_len(1) % 64, 0);
        assert!(block_len(1000) >= 64);
    }
}
