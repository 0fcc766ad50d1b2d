//! Popcount kernels over packed codes, with runtime SIMD dispatch.
//!
//! Every code path computes exactly the same numbers:
//!
//! * [`SimdPath::Portable`]: `u64::count_ones` compiled for the baseline target, the reference
//!   and the fallback for any CPU;
//! * [`SimdPath::Scalar`]: the same code compiled for the hardware population count (`popcnt`
//!   on x86-64, picked at run time; `cnt` on aarch64);
//! * [`SimdPath::Neon`] (aarch64): `vcntq_u8` on two codes per register, pairwise widening adds;
//! * [`SimdPath::Avx2`]: nibble-lookup popcount (`vpshufb`): byte-sliced with the query folded
//!   into the tables for many queries at once (at 256 bits two queries per table), word-major
//!   with `vpsadbw` otherwise;
//! * [`SimdPath::Avx512`]: `vpopcntq` (AVX-512 VPOPCNTDQ); the scan compares the lane-wise
//!   minimum of 32 distances with the threshold in one mask compare.
//!
//! The process-wide path is the best one the CPU has, unless the environment variable
//! `CMROPS_SIMD=portable|scalar|neon|avx2|avx512` (read once, at first use) or [`set_path`]
//! picks another.
//!
//! Single-query kernels ([`Kernel::scan`], [`Kernel::distances`]) work on a [`Block`] of database
//! codes laid out word-major ("transposed": word `w` of code `i` at `data[w * stride + i]`), so
//! one SIMD register holds the same word of several codes and a distance is a sum of per-word
//! popcounts with no horizontal reduction. A [`Scanner`] runs a batch of queries against a range
//! of row-major codes in blocks small enough to stay in cache, each block against every query of
//! the batch, so the database is read from memory once per batch, not once per query; each path
//! lays the block out as its kernel wants it. Word counts 1, 2, 4 and 8 (64 to 512 bits) have
//! specialised, fully unrolled kernels; any other count takes a generic loop.

use crate::error::{CoreError, Result};
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_pair;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod generic;
#[cfg(target_arch = "aarch64")]
mod neon;

/// Hamming distance between two codes of equal word count (portable reference).
#[inline]
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// One implementation of the popcount kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimdPath {
    /// `u64::count_ones` for the baseline target (no popcount instruction on x86-64).
    Portable,
    /// `u64::count_ones` compiled for the hardware popcount: needs POPCNT on x86-64; aarch64.
    Scalar,
    /// NEON `vcntq_u8`; aarch64.
    Neon,
    /// AVX2 nibble-LUT popcount (`vpshufb`); needs AVX2 and POPCNT.
    Avx2,
    /// AVX-512 `vpopcntq`; needs AVX512F and AVX512VPOPCNTDQ.
    Avx512,
}

impl SimdPath {
    /// Every path, slowest first (a CPU has at most one of Neon and the x86 vector paths).
    pub const ALL: [SimdPath; 5] = [
        SimdPath::Portable,
        SimdPath::Scalar,
        SimdPath::Neon,
        SimdPath::Avx2,
        SimdPath::Avx512,
    ];

    /// Lower-case name: `"portable"`, `"scalar"`, `"neon"`, `"avx2"` or `"avx512"`.
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Portable => "portable",
            SimdPath::Scalar => "scalar",
            SimdPath::Neon => "neon",
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
            SimdPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdPath::Scalar => is_x86_feature_detected!("popcnt"),
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vpopcntdq")
                    && is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "aarch64")]
            SimdPath::Scalar => true,
            #[cfg(target_arch = "aarch64")]
            SimdPath::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> SimdPath {
        SimdPath::ALL
            .into_iter()
            .find(|p| p.code() == c)
            .unwrap_or(SimdPath::Portable)
    }
}

impl std::fmt::Display for SimdPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The paths this CPU can run, slowest first (always starts with [`SimdPath::Portable`]).
pub fn available_paths() -> Vec<SimdPath> {
    SimdPath::ALL
        .into_iter()
        .filter(|p| p.is_available())
        .collect()
}

/// The fastest path this CPU can run.
pub fn best_path() -> SimdPath {
    available_paths().pop().unwrap_or(SimdPath::Portable)
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

/// Evaluates `$body` with the const `$w` set to the word count for the specialised widths
/// (1, 2, 4, 8), or to 0 (= any width, read at run time) otherwise.
macro_rules! by_width {
    ($words:expr, $w:ident => $body:expr) => {
        match $words {
            1 => {
                const $w: usize = 1;
                $body
            }
            2 => {
                const $w: usize = 2;
                $body
            }
            4 => {
                const $w: usize = 4;
                $body
            }
            8 => {
                const $w: usize = 8;
                $body
            }
            _ => {
                const $w: usize = 0;
                $body
            }
        }
    };
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
                by_width!(block.words, W => avx512::scan::<S, W>(block, query, sink))
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel with this path exists only when the CPU has AVX2 and POPCNT.
            SimdPath::Avx2 => unsafe {
                by_width!(block.words, W => avx2::scan::<S, W>(block, query, sink))
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: a Kernel with this path exists only when the CPU has NEON.
            SimdPath::Neon => unsafe {
                by_width!(block.words, W => neon::scan::<S, W>(block, query, sink))
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel with this path exists only when the CPU has POPCNT.
            SimdPath::Scalar => unsafe {
                by_width!(block.words, W => popcnt::scan::<S, W>(block, query, sink))
            },
            _ => by_width!(block.words, W => generic::scan::<S, W>(block, query, sink)),
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
                by_width!(block.words, W => avx512::distances::<W>(block, query, out))
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `scan`.
            SimdPath::Avx2 => unsafe {
                by_width!(block.words, W => avx2::distances::<W>(block, query, out))
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as in `scan`.
            SimdPath::Neon => unsafe {
                by_width!(block.words, W => neon::distances::<W>(block, query, out))
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `scan`.
            SimdPath::Scalar => unsafe {
                by_width!(block.words, W => popcnt::distances::<W>(block, query, out))
            },
            _ => by_width!(block.words, W => generic::distances::<W>(block, query, out)),
        }
    }

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
            #[cfg(target_arch = "aarch64")]
            // SAFETY: a Kernel with this path exists only when the CPU has NEON.
            SimdPath::Neon => unsafe { neon::mark_relevant(slot, query_label, labels, add) },
            _ => mark_relevant(slot, query_label, labels, add),
        }
    }

    /// A [`Scanner`] that runs `queries` (row-major, `words` per row) against database rows.
    pub fn scanner(self, queries: &[u64], words: usize) -> Scanner<'_> {
        assert!(
            words >= 1 && queries.len().is_multiple_of(words),
            "queries are not whole rows of {words} words"
        );
        let nq = queries.len() / words;
        let mut tables = Vec::new();
        let mut order = [0u8; 32];
        let sliced = self.path == SimdPath::Avx2
            && matches!(words, 1 | 2 | PAIRED_WORDS)
            && nq >= SLICED_MIN_QUERIES;
        #[cfg(target_arch = "x86_64")]
        if sliced {
            if words == PAIRED_WORDS {
                // Query pairs (the last one with itself when their number is odd).
                for pair in queries.chunks(2 * words) {
                    let (a, b) = pair.split_at(words);
                    avx2_pair::pair_tables(a, if b.is_empty() { a } else { b }, &mut tables);
                }
            } else {
                for q in queries.chunks_exact(words) {
                    avx2::query_tables(q, &mut tables);
                }
            }
            // SAFETY: `sliced` only for the AVX2 path, which exists only on CPUs with AVX2.
            order = unsafe { avx2::slot_order() };
        }
        Scanner {
            kernel: self,
            queries,
            words,
            sliced,
            tables,
            order,
            planes: Vec::new(),
            scratch: Vec::new(),
            acc: Vec::new(),
            buf: BlockBuf::new(),
        }
    }
}

/// Fewest queries for which the AVX2 byte-sliced kernels pay for laying each block out as
/// nibble planes (below, one query at a time over word-major blocks). Measured on a 2-core AMD
/// EPYC (Zen 3), one thread, 1M codes and 1,000 queries: the single-query byte-sliced kernel
/// takes 0.65x the time of the word-major one at 64 bits and 0.8x at 128 bits, but 1.25x at
/// 256 bits and 1.4x at 512 bits (two table lookups and two adds per code byte, against a
/// shared XOR, nibble split and `vpsadbw`). At 256 bits the paired kernel ([`PAIRED_WORDS`]:
/// one lookup per nibble for two queries) took 0.65-0.8x the word-major time in interleaved
/// runs of `examples/knn_timing.rs` (0.71-0.86 against 1.06-1.10 ns per code and query, before
/// the unmasked high-field sum took about another 10% off), and `benches/bench_core.py` gave
/// 3.5x FAISS against 2.3x with the word-major kernel. 512-bit codes (byte sums past 256) stay
/// word-major.
const SLICED_MIN_QUERIES: usize = 16;

/// Code width (in words) for which the AVX2 byte-sliced scan looks up two queries at once
/// ([`avx2_pair`]; its byte sums are exact modulo 256, so at most 4 words).
const PAIRED_WORDS: usize = 4;

/// Codes per block of the byte-sliced kernel: 16 KiB of nibble planes, whole groups of 32.
#[cfg(target_arch = "x86_64")]
fn sliced_block_len(words: usize) -> usize {
    (1024 / words).max(avx2::GROUP)
}

/// A batch of queries, prepared for one [`Kernel`], that scans ranges of database rows.
///
/// Built by [`Kernel::scanner`]; holds the scratch space its kernel needs, so a task makes one
/// and scans its whole range with it.
#[derive(Debug)]
pub struct Scanner<'q> {
    kernel: Kernel,
    queries: &'q [u64],
    words: usize,
    /// AVX2 byte-sliced kernel: per-query tables (per query pair at [`PAIRED_WORDS`]), a
    /// block's nibble planes, group accumulators.
    sliced: bool,
    tables: Vec<u8>,
    order: [u8; 32],
    planes: Vec<u8>,
    scratch: Vec<u64>,
    acc: Vec<[u64; 4]>,
    buf: BlockBuf,
}

/// Passes a block-relative code index on as a row index.
struct Offset<'s, S> {
    sink: &'s mut S,
    base: usize,
}

impl<S: Sink> Sink for Offset<'_, S> {
    #[inline]
    fn threshold(&self) -> i64 {
        self.sink.threshold()
    }
    #[inline]
    fn offer(&mut self, i: usize, dist: u32) {
        self.sink.offer(self.base + i, dist)
    }
}

impl Scanner<'_> {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.queries.len() / self.words
    }

    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// Offer to `sinks[j]`, in ascending row order, every row `i` of `codes` (row-major, the
    /// queries' width) in `rows` whose distance to query `j` is at most `sinks[j].threshold()`
    /// (re-read after every offer); rows are offered by their index in `codes`.
    pub fn scan<S: Sink>(&mut self, codes: &[u64], rows: Range<usize>, sinks: &mut [S]) {
        let w = self.words;
        assert_eq!(sinks.len(), self.len(), "one sink per query");
        assert!(
            codes.len().is_multiple_of(w) && rows.end <= codes.len() / w,
            "rows outside the codes"
        );
        if rows.is_empty() || sinks.is_empty() {
            return;
        }
        let queries = self.queries;
        match self.kernel.path {
            SimdPath::Portable => {
                by_width!(w, W => generic::rows_scan::<S, W>(codes, w, rows, queries, sinks))
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Kernel with this path exists only when the CPU has POPCNT.
            SimdPath::Scalar => unsafe {
                by_width!(w, W => popcnt::rows_scan::<S, W>(codes, w, rows, queries, sinks))
            },
            #[cfg(not(target_arch = "x86_64"))]
            SimdPath::Scalar => {
                by_width!(w, W => generic::rows_scan::<S, W>(codes, w, rows, queries, sinks))
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 if self.sliced => self.scan_sliced(codes, rows, sinks),
            _ => self.scan_word_major(codes, rows, sinks),
        }
    }

    /// One query at a time over word-major blocks (AVX-512, NEON, AVX2 for a few queries).
    fn scan_word_major<S: Sink>(&mut self, codes: &[u64], rows: Range<usize>, sinks: &mut [S]) {
        let w = self.words;
        let bl = block_len(w);
        let mut start = rows.start;
        while start < rows.end {
            let len = bl.min(rows.end - start);
            let block = self.buf.load(codes, w, start, len);
            for (q, sink) in self.queries.chunks_exact(w).zip(sinks.iter_mut()) {
                let mut s = Offset { sink, base: start };
                self.kernel.scan(block, q, &mut s);
            }
            start += len;
        }
    }

    /// AVX2 byte-sliced kernel: each block laid out as nibble planes once, then every query.
    #[cfg(target_arch = "x86_64")]
    fn scan_sliced<S: Sink>(&mut self, codes: &[u64], rows: Range<usize>, sinks: &mut [S]) {
        let w = self.words;
        let bl = sliced_block_len(w);
        let per_query = 64 * 8 * w;
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + bl).min(rows.end);
            let block = &codes[start * w..end * w];
            // SAFETY: `sliced` only for the AVX2 path, which exists only on CPUs with AVX2.
            unsafe { avx2::build_planes(block, w, &mut self.scratch, &mut self.planes) };
            // The next block's codes, on their way to L2 while this one is scanned (the
            // hardware prefetcher, idle during the scan, leaves them in memory).
            let ahead = &codes[end * w..(end + bl).min(rows.end) * w];
            avx2::prefetch_l2(ahead);
            let groups = (end - start).div_ceil(avx2::GROUP);
            if self.acc.len() < 2 * groups {
                self.acc.resize(2 * groups, [0; 4]);
            }
            let block = avx2::SlicedBlock {
                planes: &self.planes,
                rows: block,
                base: start,
                order: &self.order,
            };
            if w == PAIRED_WORDS {
                scan_pairs(self.queries, &self.tables, &mut self.acc, &block, sinks);
                start = end;
                continue;
            }
            for (j, sink) in sinks.iter_mut().enumerate() {
                let q = &self.queries[j * w..(j + 1) * w];
                let tables = &self.tables[j * per_query..(j + 1) * per_query];
                let acc = &mut self.acc[..];
                // SAFETY: `sliced` is set only for a Kernel of the AVX2 path, which exists only
                // when the CPU has AVX2 and POPCNT.
                unsafe {
                    match w {
                        1 => avx2::scan_sliced::<S, 1>(&block, tables, q, acc, sink),
                        2 => avx2::scan_sliced::<S, 2>(&block, tables, q, acc, sink),
                        _ => unreachable!("the byte-sliced kernel is for 1 or 2 words"),
                    }
                }
            }
            start = end;
        }
    }
}

/// The AVX2 paired kernel over one block (`tables` from [`avx2_pair::pair_tables`], one
/// entry per query pair): two queries at a time, the last alone when their number is odd.
#[cfg(target_arch = "x86_64")]
fn scan_pairs<S: Sink>(
    queries: &[u64],
    tables: &[u8],
    acc: &mut [[u64; 4]],
    block: &avx2::SlicedBlock<'_>,
    sinks: &mut [S],
) {
    const W: usize = PAIRED_WORDS;
    let per_pair = 16 * W * avx2_pair::PAIR_TABLE;
    for (j, pair) in sinks.chunks_mut(2).enumerate() {
        let q = &queries[2 * j * W..(2 * j + pair.len()) * W];
        let t = &tables[j * per_pair..(j + 1) * per_pair];
        let next = tables
            .get((j + 1) * per_pair..(j + 2) * per_pair)
            .unwrap_or(&[]);
        // SAFETY: the sliced kernels run only for a Kernel of the AVX2 path, which exists only
        // when the CPU has AVX2 and POPCNT.
        unsafe { avx2_pair::scan_pair::<S, W>(block, t, next, q, acc, pair) };
    }
}

/// The portable bodies compiled with the hardware popcount (the scalar path on x86-64).
#[cfg(target_arch = "x86_64")]
mod popcnt {
    use super::{generic, Block, Sink};
    use std::ops::Range;

    #[target_feature(enable = "popcnt")]
    pub(super) fn scan<S: Sink, const W: usize>(b: Block<'_>, q: &[u64], sink: &mut S) {
        generic::scan::<S, W>(b, q, sink)
    }

    #[target_feature(enable = "popcnt")]
    pub(super) fn distances<const W: usize>(b: Block<'_>, q: &[u64], out: &mut [u32]) {
        generic::distances::<W>(b, q, out)
    }

    #[target_feature(enable = "popcnt")]
    pub(super) fn rows_scan<S: Sink, const W: usize>(
        codes: &[u64],
        words: usize,
        rows: Range<usize>,
        queries: &[u64],
        sinks: &mut [S],
    ) {
        generic::rows_scan::<S, W>(codes, words, rows, queries, sinks)
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
