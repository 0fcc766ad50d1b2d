//! Portable kernel bodies, `#[inline(always)]` so that each path compiles them with its own
//! target features: as they are for the portable path (`count_ones` becomes a bit-twiddling
//! sequence on a baseline x86-64), with `popcnt` for the scalar path.

use super::{block_len, clamp_threshold, dist_one, Block, Sink};
use std::ops::Range;

#[inline(always)]
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

#[inline(always)]
pub(super) fn distances<const W: usize>(b: Block<'_>, q: &[u64], out: &mut [u32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = dist_one::<W>(&b, q, i);
    }
}

/// A sink threshold as an exclusive bound: a code is wanted iff its distance is below it.
#[inline(always)]
fn bound(t: i64) -> u32 {
    if t < 0 {
        0
    } else if t >= u32::MAX as i64 {
        u32::MAX
    } else {
        t as u32 + 1
    }
}

/// Distance between two rows of `W` words (`W == 0`: as many as the rows have).
#[inline(always)]
fn dist<const W: usize>(row: &[u64], q: &[u64]) -> u32 {
    let mut d = 0;
    for (a, b) in row.iter().zip(q) {
        d += (a ^ b).count_ones();
    }
    d
}

/// Offer to `sinks[j]`, in ascending order, every row `i` of `codes` (row-major, `words` per row)
/// in `rows` whose distance to query `j` is within `sinks[j].threshold()`.
///
/// The rows are read in blocks that stay in L1 while every query runs over them, four queries
/// per pass: each code is loaded once per pass and compared with four queries.
#[inline(always)]
pub(super) fn rows_scan<S: Sink, const W: usize>(
    codes: &[u64],
    words: usize,
    rows: Range<usize>,
    queries: &[u64],
    sinks: &mut [S],
) {
    let w = if W == 0 { words } else { W };
    let bl = block_len(w);
    // Two queries per pass: measured faster than one or four on a Zen 3 at 64 and 256 bits.
    const QB: usize = 2;
    let mut start = rows.start;
    while start < rows.end {
        let end = (start + bl).min(rows.end);
        let block = &codes[start * w..end * w];
        let mut qs = queries.chunks_exact(QB * w);
        let mut ss = sinks.chunks_exact_mut(QB);
        for (qb, sb) in (&mut qs).zip(&mut ss) {
            rows_group::<S, W, QB>(block, w, start, qb, sb);
        }
        for (q, s) in qs.remainder().chunks_exact(w).zip(ss.into_remainder()) {
            rows_group::<S, W, 1>(block, w, start, q, std::slice::from_mut(s));
        }
        start = end;
    }
}

/// [`rows_scan`] of `QB` queries over one block whose first row is `base`.
#[inline(always)]
fn rows_group<S: Sink, const W: usize, const QB: usize>(
    block: &[u64],
    w: usize,
    base: usize,
    qs: &[u64],
    sinks: &mut [S],
) {
    assert!(qs.len() == QB * w && sinks.len() == QB);
    // Exclusive bounds, at most 2^31 so that `d - bound` (distances are far below 2^31) has its
    // sign bit set exactly when `d < bound`.
    let clamp = |s: &S| bound(s.threshold()).min(1 << 31);
    let mut lim = [0u32; QB];
    for (l, s) in lim.iter_mut().zip(sinks.iter()) {
        *l = clamp(s);
    }
    if lim.iter().all(|&l| l == 0) {
        return;
    }
    let mut chunks = block.chunks_exact(8 * w);
    let mut i = base;
    for c8 in &mut chunks {
        // Branch-free over 8 codes, each loaded once for the QB queries.
        let mut below = [0u32; QB];
        for r in c8.chunks_exact(w) {
            for j in 0..QB {
                below[j] |= dist::<W>(r, &qs[j * w..(j + 1) * w]).wrapping_sub(lim[j]);
            }
        }
        if below.iter().any(|&b| b >> 31 != 0) {
            for j in 0..QB {
                if below[j] >> 31 == 0 {
                    continue;
                }
                let q = &qs[j * w..(j + 1) * w];
                for (k, r) in c8.chunks_exact(w).enumerate() {
                    let d = dist::<W>(r, q);
                    if d < lim[j] {
                        sinks[j].offer(i + k, d);
                        lim[j] = clamp(&sinks[j]);
                    }
                }
            }
        }
        i += 8;
    }
    for (k, r) in chunks.remainder().chunks_exact(w).enumerate() {
        for j in 0..QB {
            let d = dist::<W>(r, &qs[j * w..(j + 1) * w]);
            if d < lim[j] {
                sinks[j].offer(i + k, d);
                lim[j] = clamp(&sinks[j]);
            }
        }
    }
}
