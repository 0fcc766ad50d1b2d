//! AVX2 kernels.
//!
//! * The **byte-sliced** scan (many queries against a block): a block's codes are stored as
//!   nibble planes, one 256-bit register holding the low (or high) nibble of the same byte of 32
//!   codes. For each query and byte position a 16-entry table gives `popcount(nibble ^ query
//!   nibble)`, so one `vpshufb` looks up 32 codes with the XOR folded into the table, and the
//!   per-code byte sums (saturating) are compared with the threshold 32 codes at a time. Four
//!   byte positions per pass keep their eight tables in registers. (256-bit codes use the
//!   same planes with two queries per table: [`super::avx2_pair`].)
//! * The **word-major** kernels (one query at a time, and `distances`): nibble-lookup popcount
//!   (`vpshufb`, Muła's method) over 4 codes per register, summed with `vpsadbw`.

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
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3,
        3, 4,
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
        let m =
            le_mask(d0, tv) | le_mask(d1, tv) << 4 | le_mask(d2, tv) << 8 | le_mask(d3, tv) << 12;
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

// ---------------------------------------------------------------------------------------------
// Byte-sliced scan

/// Codes per sliced group: one byte of each fills a 256-bit register.
pub(super) const GROUP: usize = 32;
/// Byte positions per pass; their 2 * PASS tables stay in registers.
const PASS: usize = 4;
/// Bytes of lookup tables per byte position of a query (low then high nibble, both lanes).
const TABLE: usize = 64;

/// Appends the lookup tables of query `q` to `out`: for byte position `j` of the code, 16
/// bytes `popcount(v ^ (q_j & 15))` for `v` in `0..16` (repeated for both 128-bit lanes), then
/// the same for the high nibble.
pub(super) fn query_tables(q: &[u64], out: &mut Vec<u8>) {
    for &word in q {
        for byte in word.to_le_bytes() {
            let (lo, hi) = (byte & 15, byte >> 4);
            for nibble in [lo, hi] {
                for _lane in 0..2 {
                    out.extend((0..16u8).map(|v| (v ^ nibble).count_ones() as u8));
                }
            }
        }
    }
}

/// Transposes 32 codes of one word (`v[k]` holds codes `4k..4k + 4`) into 8 registers, one per
/// byte of the word, each holding that byte of all 32 codes, in the slot order [`slot_order`]
/// reports (the same for every byte: in-lane shuffles and unpacks only).
#[inline]
#[target_feature(enable = "avx2")]
fn transpose32(v: [__m256i; 8]) -> [__m256i; 8] {
    // Per lane: the 8 bytes of two codes interleaved, so 16-bit unit m holds byte m of both.
    let pairs = _mm256_setr_epi8(
        0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5,
        13, 6, 14, 7, 15,
    );
    let a = v.map(|x| _mm256_shuffle_epi8(x, pairs));
    // 32-bit unit m: byte m of four codes (bytes 0-3 in the low halves, 4-7 in the high).
    let b = [
        _mm256_unpacklo_epi16(a[0], a[1]),
        _mm256_unpackhi_epi16(a[0], a[1]),
        _mm256_unpacklo_epi16(a[2], a[3]),
        _mm256_unpackhi_epi16(a[2], a[3]),
        _mm256_unpacklo_epi16(a[4], a[5]),
        _mm256_unpackhi_epi16(a[4], a[5]),
        _mm256_unpacklo_epi16(a[6], a[7]),
        _mm256_unpackhi_epi16(a[6], a[7]),
    ];
    // 64-bit units: byte m of eight codes.
    let c = [
        _mm256_unpacklo_epi32(b[0], b[2]), // bytes 0, 1 of codes 0-15 (per lane: 8)
        _mm256_unpackhi_epi32(b[0], b[2]), // bytes 2, 3
        _mm256_unpacklo_epi32(b[4], b[6]), // bytes 0, 1 of codes 16-31
        _mm256_unpackhi_epi32(b[4], b[6]), // bytes 2, 3
        _mm256_unpacklo_epi32(b[1], b[3]), // bytes 4, 5 of codes 0-15
        _mm256_unpackhi_epi32(b[1], b[3]), // bytes 6, 7
        _mm256_unpacklo_epi32(b[5], b[7]), // bytes 4, 5 of codes 16-31
        _mm256_unpackhi_epi32(b[5], b[7]), // bytes 6, 7
    ];
    [
        _mm256_unpacklo_epi64(c[0], c[2]),
        _mm256_unpackhi_epi64(c[0], c[2]),
        _mm256_unpacklo_epi64(c[1], c[3]),
        _mm256_unpackhi_epi64(c[1], c[3]),
        _mm256_unpacklo_epi64(c[4], c[6]),
        _mm256_unpackhi_epi64(c[4], c[6]),
        _mm256_unpacklo_epi64(c[5], c[7]),
        _mm256_unpackhi_epi64(c[5], c[7]),
    ]
}

/// Which code of a group each byte slot of a plane holds (`order[slot] = code`).
#[target_feature(enable = "avx2")]
pub(super) fn slot_order() -> [u8; GROUP] {
    let mut v = [_mm256_setzero_si256(); 8];
    for (k, x) in v.iter_mut().enumerate() {
        // Code i is the word with every byte equal to i.
        let code = |i: usize| (i as u64 * 0x0101_0101_0101_0101) as i64;
        *x = _mm256_setr_epi64x(
            code(4 * k),
            code(4 * k + 1),
            code(4 * k + 2),
            code(4 * k + 3),
        );
    }
    let mut order = [0u8; GROUP];
    // SAFETY: `order` holds 32 bytes.
    unsafe { _mm256_storeu_si256(order.as_mut_ptr() as *mut __m256i, transpose32(v)[0]) };
    order
}

/// Nibble planes of `rows` (row-major codes of `words` words): for group `g` (codes
/// `32 g..32 g + 32`, in [`slot_order`] within the group) and byte position `j` of the code,
/// the 32 low nibbles at `(g * 8 words + j) * 64`, then the 32 high nibbles. Codes past the end
/// of `rows` are zero. `scratch` holds the block word-major (not needed for 4-word codes,
/// which are transposed in registers).
#[target_feature(enable = "avx2")]
pub(super) fn build_planes(rows: &[u64], words: usize, scratch: &mut Vec<u64>, out: &mut Vec<u8>) {
    let n = rows.len() / words;
    let nb = 8 * words;
    let groups = n.div_ceil(GROUP);
    let padded = groups * GROUP;
    // Every byte is written below: no need to clear.
    out.resize(groups * nb * TABLE, 0);
    let op = out.as_mut_ptr();
    if words == 4 {
        let mut tail = [0u64; 4 * GROUP];
        for g in 0..groups {
            let codes = &rows[g * GROUP * 4..((g + 1) * GROUP * 4).min(rows.len())];
            let codes = if codes.len() == tail.len() {
                codes
            } else {
                tail[..codes.len()].copy_from_slice(codes);
                &tail[..]
            };
            let mut v = [[_mm256_setzero_si256(); 8]; 4];
            #[allow(clippy::needless_range_loop)] // k indexes the inner arrays of v
            for k in 0..8 {
                // SAFETY: `codes` holds 32 codes of 4 words; 4 k + 3 < 32.
                let r = unsafe {
                    let p = codes.as_ptr().add(16 * k) as *const __m256i;
                    [
                        _mm256_loadu_si256(p),
                        _mm256_loadu_si256(p.add(1)),
                        _mm256_loadu_si256(p.add(2)),
                        _mm256_loadu_si256(p.add(3)),
                    ]
                };
                // 4 x 4 transpose of u64: v[w][k] = word w of codes 4 k..4 k + 4.
                let t0 = _mm256_unpacklo_epi64(r[0], r[1]);
                let t1 = _mm256_unpackhi_epi64(r[0], r[1]);
                let t2 = _mm256_unpacklo_epi64(r[2], r[3]);
                let t3 = _mm256_unpackhi_epi64(r[2], r[3]);
                v[0][k] = _mm256_permute2x128_si256::<0x20>(t0, t2);
                v[1][k] = _mm256_permute2x128_si256::<0x20>(t1, t3);
                v[2][k] = _mm256_permute2x128_si256::<0x31>(t0, t2);
                v[3][k] = _mm256_permute2x128_si256::<0x31>(t1, t3);
            }
            for (w, vw) in v.into_iter().enumerate() {
                // SAFETY: g < groups and w < 4 = words.
                unsafe { store_planes(op, (g * nb + w * 8) * TABLE, vw) };
            }
        }
        return;
    }
    // Word-major, zero-padded to whole groups: word w of code i at scratch[w * padded + i].
    scratch.clear();
    scratch.resize(words * padded, 0);
    for (i, code) in rows.chunks_exact(words).enumerate() {
        for (w, &x) in code.iter().enumerate() {
            scratch[w * padded + i] = x;
        }
    }
    let sp = scratch.as_ptr();
    for g in 0..groups {
        for w in 0..words {
            let mut v = [_mm256_setzero_si256(); 8];
            for (k, x) in v.iter_mut().enumerate() {
                // SAFETY: w < words and 32 g + 4 k + 4 <= padded: inside `scratch`.
                *x = unsafe {
                    _mm256_loadu_si256(sp.add(w * padded + g * GROUP + 4 * k) as *const __m256i)
                };
            }
            // SAFETY: g < groups and w < words.
            unsafe { store_planes(op, (g * nb + w * 8) * TABLE, v) };
        }
    }
}

/// Transposes one word of 32 codes (`v[k]` holds codes `4k..4k + 4`) and stores the nibble
/// planes of its 8 bytes from `at`.
///
/// # Safety
/// `out` must be valid for writes of `8 * TABLE` bytes from `at`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_planes(out: *mut u8, at: usize, v: [__m256i; 8]) {
    let low = _mm256_set1_epi8(0x0f);
    for (b, p) in transpose32(v).into_iter().enumerate() {
        let lo = _mm256_and_si256(p, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), low);
        // SAFETY: b < 8: inside the caller's 8 * TABLE bytes.
        unsafe {
            let o = out.add(at + b * TABLE);
            _mm256_storeu_si256(o as *mut __m256i, lo);
            _mm256_storeu_si256(o.add(GROUP) as *mut __m256i, hi);
        }
    }
}

/// Asks for `data` to be brought into L2, one prefetch per 64-byte line.
pub(super) fn prefetch_l2(data: &[u64]) {
    for line in data.chunks(8) {
        // SAFETY: SSE is part of x86-64; a prefetch reads nothing, and the address is inside
        // `data`.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr() as *const i8) };
    }
}

/// A block laid out for [`scan_sliced`].
#[derive(Clone, Copy)]
pub(super) struct SlicedBlock<'a> {
    /// Nibble planes of `rows`, from [`build_planes`].
    pub planes: &'a [u8],
    /// The codes, row-major.
    pub rows: &'a [u64],
    /// Row index of the first code.
    pub base: usize,
    /// [`slot_order`].
    pub order: &'a [u8; GROUP],
}

/// The codes of group `g` (of `n` codes) whose slots (in [`slot_order`]) are set in `slots`, as
/// a mask in code order; codes past the end are padding and left out.
#[inline]
pub(super) fn slot_codes(order: &[u8; GROUP], mut slots: u32, n: usize, g: usize) -> u32 {
    let mut m = 0u32;
    while slots != 0 {
        m |= 1 << order[slots.trailing_zeros() as usize];
        slots &= slots - 1;
    }
    let valid = n - g * GROUP;
    if valid < GROUP {
        m &= (1u32 << valid) - 1;
    }
    m
}

/// Offer to `sink`, in ascending order, every code of `rows` (row-major, `W` words each;
/// `planes` built from them by [`build_planes`], slots in `order`) within `sink.threshold()` of
/// `q` (`tables` from [`query_tables`]); code `i` is offered as `base + i`. `acc` holds one
/// 32-byte accumulator per group.
///
/// Byte sums saturate at 255, so a threshold of 255 or more cannot be decided here: the block
/// is then scanned code by code with `popcnt`.
#[target_feature(enable = "avx2,popcnt")]
pub(super) fn scan_sliced<S: Sink, const W: usize>(
    block: &SlicedBlock<'_>,
    tables: &[u8],
    q: &[u64],
    acc: &mut [[u64; 4]],
    sink: &mut S,
) {
    let SlicedBlock {
        planes,
        rows,
        base,
        order,
    } = *block;
    let n = rows.len() / W;
    let nb = 8 * W;
    let groups = n.div_ceil(GROUP);
    assert!(
        q.len() == W
            && tables.len() == nb * TABLE
            && planes.len() >= groups * nb * TABLE
            && acc.len() >= groups
    );
    let dist = |i: usize| -> u32 {
        let row = &rows[i * W..i * W + W];
        row.iter().zip(q).map(|(a, b)| (a ^ b).count_ones()).sum()
    };
    let mut t = sink.threshold();
    if t < 0 || n == 0 {
        return;
    }
    if t >= 255 {
        for i in 0..n {
            let d = dist(i);
            if d as i64 <= t {
                sink.offer(base + i, d);
                t = sink.threshold();
                if t < 0 {
                    return;
                }
            }
        }
        return;
    }
    let pp = planes.as_ptr();
    let tp = tables.as_ptr();
    let ap = acc.as_mut_ptr() as *mut __m256i;
    let passes = nb / PASS;
    let mut tv = _mm256_set1_epi8(t as u8 as i8);
    for pass in 0..passes {
        let mut tlo = [_mm256_setzero_si256(); PASS];
        let mut thi = [_mm256_setzero_si256(); PASS];
        for k in 0..PASS {
            let j = pass * PASS + k;
            // SAFETY: j < nb and tables holds nb * TABLE bytes.
            unsafe {
                tlo[k] = _mm256_loadu_si256(tp.add(j * TABLE) as *const __m256i);
                thi[k] = _mm256_loadu_si256(tp.add(j * TABLE + GROUP) as *const __m256i);
            }
        }
        let last = pass + 1 == passes;
        for g in 0..groups {
            let mut a = [_mm256_setzero_si256(); 4];
            if pass > 0 {
                // SAFETY: g < groups <= acc.len().
                a[0] = unsafe { _mm256_loadu_si256(ap.add(g)) };
            }
            for k in 0..PASS {
                let j = pass * PASS + k;
                // SAFETY: g < groups and j < nb: inside the planes of `groups` groups.
                let (lo, hi) = unsafe {
                    let p = pp.add((g * nb + j) * TABLE);
                    (
                        _mm256_loadu_si256(p as *const __m256i),
                        _mm256_loadu_si256(p.add(GROUP) as *const __m256i),
                    )
                };
                a[k % 2] = _mm256_adds_epu8(a[k % 2], _mm256_shuffle_epi8(tlo[k], lo));
                a[2 + k % 2] = _mm256_adds_epu8(a[2 + k % 2], _mm256_shuffle_epi8(thi[k], hi));
            }
            let sum = _mm256_adds_epu8(_mm256_adds_epu8(a[0], a[1]), _mm256_adds_epu8(a[2], a[3]));
            if !last {
                // SAFETY: as above.
                unsafe { _mm256_storeu_si256(ap.add(g), sum) };
                continue;
            }
            let le = _mm256_cmpeq_epi8(_mm256_min_epu8(sum, tv), sum);
            let slots = _mm256_movemask_epi8(le) as u32;
            if slots == 0 {
                continue;
            }
            let mut m = slot_codes(order, slots, n, g);
            while m != 0 {
                let i = g * GROUP + m.trailing_zeros() as usize;
                m &= m - 1;
                let d = dist(i);
                if d as i64 <= t {
                    sink.offer(base + i, d);
                    t = sink.threshold();
                    if t < 0 {
                        return;
                    }
                    tv = _mm256_set1_epi8(t.min(254) as u8 as i8);
                }
            }
        }
    }
}
