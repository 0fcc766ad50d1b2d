//! NEON kernels (aarch64): `vcntq_u8` counts the bits of two codes' words per register; the
//! per-code byte counts are summed over the words, then by pairwise widening adds (`vpaddlq`).

use super::{clamp_threshold, dist_one, Block, Sink};
use std::arch::aarch64::*;

#[target_feature(enable = "neon")]
pub(super) fn mark_relevant(slot: &mut [u32], q: u64, labels: &[u64], add: u32) {
    super::mark_relevant(slot, q, labels, add)
}

#[inline]
#[target_feature(enable = "neon")]
fn widen(v: uint8x16_t) -> uint64x2_t {
    vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(v)))
}

/// Distances of the 2 codes starting at `i` (u64 lanes).
#[inline]
#[target_feature(enable = "neon")]
fn dist2<const W: usize>(b: &Block<'_>, q: &[u64], i: usize) -> uint64x2_t {
    let w = if W == 0 { b.words } else { W };
    let base = b.data.as_ptr();
    debug_assert!(i + 2 <= b.len);
    let mut acc64 = vdupq_n_u64(0);
    let mut acc8 = vdupq_n_u8(0);
    for (j, &qj) in q.iter().enumerate().take(w) {
        // SAFETY: i + 2 <= len <= stride and the block holds `words` rows of `stride`.
        let x = unsafe { vld1q_u64(base.add(j * b.stride + i)) };
        let x = veorq_u64(x, vdupq_n_u64(qj));
        acc8 = vaddq_u8(acc8, vcntq_u8(vreinterpretq_u8_u64(x)));
        // A byte gains at most 8 per word: flush before it could pass 255.
        if W == 0 && j % 31 == 30 {
            acc64 = vaddq_u64(acc64, widen(acc8));
            acc8 = vdupq_n_u8(0);
        }
    }
    vaddq_u64(acc64, widen(acc8))
}

#[target_feature(enable = "neon")]
pub(super) fn scan<S: Sink, const W: usize>(b: Block<'_>, q: &[u64], sink: &mut S) {
    let n = b.len;
    let mut t = clamp_threshold(sink.threshold());
    if t < 0 {
        return;
    }
    // d <= t  <=>  d < t + 1 (t + 1 fits: t is at most u32::MAX).
    let mut lim = vdupq_n_u64(t as u64 + 1);
    let mut lanes = [0u64; 8];
    let mut i = 0;
    while i + 8 <= n {
        let d = [
            dist2::<W>(&b, q, i),
            dist2::<W>(&b, q, i + 2),
            dist2::<W>(&b, q, i + 4),
            dist2::<W>(&b, q, i + 6),
        ];
        let any = vorrq_u64(
            vorrq_u64(vcltq_u64(d[0], lim), vcltq_u64(d[1], lim)),
            vorrq_u64(vcltq_u64(d[2], lim), vcltq_u64(d[3], lim)),
        );
        if vmaxvq_u32(vreinterpretq_u32_u64(any)) != 0 {
            for (g, dg) in d.iter().enumerate() {
                // SAFETY: `lanes` holds 4 x 2 u64.
                unsafe { vst1q_u64(lanes.as_mut_ptr().add(2 * g), *dg) };
            }
            for (l, &dl) in lanes.iter().enumerate() {
                if dl as i64 <= t {
                    sink.offer(i + l, dl as u32);
                    t = clamp_threshold(sink.threshold());
                    if t < 0 {
                        return;
                    }
                    lim = vdupq_n_u64(t as u64 + 1);
                }
            }
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

#[target_feature(enable = "neon")]
pub(super) fn distances<const W: usize>(b: Block<'_>, q: &[u64], out: &mut [u32]) {
    let n = b.len.min(out.len());
    let mut i = 0;
    while i + 2 <= n {
        let d = vmovn_u64(dist2::<W>(&b, q, i));
        // SAFETY: i + 2 <= out.len().
        unsafe { vst1_u32(out.as_mut_ptr().add(i), d) };
        i += 2;
    }
    while i < n {
        out[i] = dist_one::<W>(&b, q, i);
        i += 1;
    }
}
