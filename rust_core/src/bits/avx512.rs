//! AVX-512 VPOPCNTDQ kernels: `vpopcntq` on 8 codes per register; the scan compares the lane-wise
//! minimum of 32 distances with the threshold in one mask compare.

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
