//! AVX2 byte-sliced scan of two queries per lookup (256-bit codes).
//!
//! The block is laid out as [`avx2::build_planes`]'s nibble planes, seen as one sequence per
//! group: nibble plane `m = 2 j + h` (the low, `h = 0`, or high nibble of byte `j` of 32 codes)
//! at `32 m` bytes into the group. Query pair `(a, b)` has one 16-entry table per nibble plane,
//! `T[v] = popcount(v ^ a_m) + 16 popcount(v ^ b_m)`, so one `vpshufb` looks up both queries:
//! the low field of each byte counts query `a`, the high field query `b`. Up to three lookups
//! add without a carry between the fields (each field at most 12); per such unit `u`, the
//! accumulator `A` adds `u` (wrapping) and `B` adds `u >> 4` (a 16-bit shift, unmasked: the
//! spill from the odd byte is taken out once, at the compare). After every nibble plane,
//! `B = dist_b` and `A - 16 B = dist_a`, both modulo 256: exact for codes of up to 256 bits,
//! except a distance of 256 that reads as 0 (a false candidate, dropped by the exact check).
//!
//! Per two queries and 32 codes that is one `vpshufb` and 4/3 other operations per nibble,
//! against two `vpshufb` and two adds for two single-query lookups ([`avx2::scan_sliced`]).
//! A pass takes [`PASS`] nibble planes (their tables in registers) over every group of the
//! block, the group sums going through `acc` between passes. The last passes skip a group
//! whose partial sums (lower bounds) already exceed both thresholds.
//!
//! [`avx2::build_planes`]: super::avx2::build_planes
//! [`avx2::scan_sliced`]: super::avx2::scan_sliced

use super::avx2::{slot_codes, SlicedBlock, GROUP};
use super::Sink;
use std::arch::x86_64::*;

/// Nibble planes per pass (two units of three); their tables stay in registers.
const PASS: usize = 6;
/// Bytes of one packed table (16 entries, repeated for both 128-bit lanes).
pub(super) const PAIR_TABLE: usize = 32;
/// Passes at the end of the scan that first check whether a group can still have a hit.
const CHECKED_PASSES: usize = 3;

/// Appends the packed tables of queries `a` and `b` (equal widths, at most 4 words) to `out`,
/// one per nibble plane: entry `v` is `popcount(v ^ a_m) + 16 popcount(v ^ b_m)`.
pub(super) fn pair_tables(a: &[u64], b: &[u64], out: &mut Vec<u8>) {
    assert!(a.len() == b.len() && a.len() <= 4);
    let nibbles = |q: &[u64]| -> Vec<u8> {
        q.iter()
            .flat_map(|w| w.to_le_bytes())
            .flat_map(|byte| [byte & 15, byte >> 4])
            .collect()
    };
    for (x, y) in nibbles(a).into_iter().zip(nibbles(b)) {
        for _lane in 0..2 {
            out.extend((0..16u8).map(|v| ((v ^ x).count_ones() + 16 * (v ^ y).count_ones()) as u8));
        }
    }
}

/// Offers to `sinks[i]` (one or two sinks; `q` their queries, row-major, `W` words each), in
/// ascending order, every code of the block within `sinks[i].threshold()` of query `i`, as
/// `base + code`. `tables` from [`pair_tables`] (for one sink: of the query paired with
/// itself); `next`, possibly empty, the tables the caller scans next (prefetched); `acc` holds
/// two 32-byte accumulators per group.
///
/// While a threshold is 255 or more the block is scanned code by code with `popcnt`.
#[target_feature(enable = "avx2,popcnt")]
pub(super) fn scan_pair<S: Sink, const W: usize>(
    block: &SlicedBlock<'_>,
    tables: &[u8],
    next: &[u8],
    q: &[u64],
    acc: &mut [[u64; 4]],
    sinks: &mut [S],
) {
    let SlicedBlock {
        planes,
        rows,
        base,
        order,
    } = *block;
    let nq = sinks.len();
    let n = rows.len() / W;
    let m = 16 * W;
    let groups = n.div_ceil(GROUP);
    assert!(
        (1..=4).contains(&W)
            && (1..=2).contains(&nq)
            && q.len() == nq * W
            && tables.len() == m * PAIR_TABLE
            && planes.len() >= groups * m * PAIR_TABLE
            && acc.len() >= 2 * groups
    );
    if n == 0 {
        return;
    }
    let mut t = [-1i64; 2];
    for (ti, s) in t.iter_mut().zip(sinks.iter()) {
        *ti = s.threshold();
    }
    if t.iter().any(|&x| x >= 255) {
        for (i, sink) in sinks.iter_mut().enumerate() {
            exact::<S, W>(rows, &q[i * W..i * W + W], base, sink);
        }
        return;
    }
    if t.iter().all(|&x| x < 0) {
        return;
    }
    // A query with nothing left to find (or no query) compares as 0 and is never offered.
    let mut tv = t.map(|x| _mm256_set1_epi8(x.max(0) as u8 as i8));
    let ctx = Ctx {
        planes: planes.as_ptr(),
        m,
        groups,
        acc: acc.as_mut_ptr() as *mut __m256i,
    };
    let passes = m.div_ceil(PASS);
    for pass in 0..passes {
        let m0 = pass * PASS;
        let cnt = PASS.min(m - m0);
        if next.len() == tables.len() {
            for k in (0..cnt * PAIR_TABLE).step_by(64) {
                // SAFETY: inside `next`, as long as `tables`; a prefetch reads nothing anyway.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(next.as_ptr().add(m0 * PAIR_TABLE + k) as *const i8)
                };
            }
        }
        let tables = &tables[m0 * PAIR_TABLE..(m0 + cnt) * PAIR_TABLE];
        let checked = pass > 0 && pass + CHECKED_PASSES >= passes;
        let step = Step {
            first: pass == 0,
            checked,
            m0,
        };
        if pass + 1 < passes {
            // SAFETY: `ctx` describes `planes` and `acc` (checked above).
            unsafe {
                match cnt {
                    6 => ctx.pass::<6>(tables, step, &tv, nq),
                    4 => ctx.pass::<4>(tables, step, &tv, nq),
                    _ => ctx.pass::<2>(tables, step, &tv, nq),
                }
            };
            continue;
        }
        // The last pass: sums into registers, then the candidates.
        for g in 0..groups {
            // SAFETY: as above.
            let sums = unsafe {
                match cnt {
                    6 => ctx.group::<6>(tables, step, g, &tv, nq),
                    4 => ctx.group::<4>(tables, step, g, &tv, nq),
                    _ => ctx.group::<2>(tables, step, g, &tv, nq),
                }
            };
            let Some((a, b)) = sums else { continue };
            let slots = live(a, b, &tv, nq);
            for (i, sink) in sinks.iter_mut().enumerate() {
                if slots[i] != 0 && t[i] >= 0 {
                    let qi = &q[i * W..i * W + W];
                    t[i] = offer_group::<S, W>(rows, qi, order, g, slots[i], t[i], base, sink);
                    tv[i] = _mm256_set1_epi8(t[i].clamp(0, 254) as u8 as i8);
                }
            }
        }
    }
}

/// The block's planes and the group accumulators, as raw pointers for the passes.
struct Ctx {
    /// Nibble planes: `groups` groups of `m` planes of [`PAIR_TABLE`] bytes.
    planes: *const u8,
    m: usize,
    groups: usize,
    /// Two accumulators per group.
    acc: *mut __m256i,
}

/// Where a pass starts and what it does first.
#[derive(Clone, Copy)]
struct Step {
    /// No sums yet: start from zero.
    first: bool,
    /// Skip a group whose sums so far exceed every threshold.
    checked: bool,
    /// First nibble plane of the pass.
    m0: usize,
}

impl Ctx {
    /// One pass of `N` nibble planes (tables `tables`, `N` of them) over every group, the sums
    /// stored back into the accumulators.
    ///
    /// # Safety
    /// `planes` must hold `groups * m` planes, `acc` `2 * groups` accumulators, and
    /// `step.m0 + N <= m`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pass<const N: usize>(&self, tables: &[u8], step: Step, tv: &[__m256i; 2], nq: usize) {
        let tl = load_tables::<N>(tables);
        for g in 0..self.groups {
            // SAFETY: the caller's contract.
            if let Some((a, b)) = unsafe { self.sums::<N>(&tl, step, g, tv, nq) } {
                // SAFETY: 2 g + 1 < 2 groups.
                unsafe {
                    _mm256_storeu_si256(self.acc.add(2 * g), a);
                    _mm256_storeu_si256(self.acc.add(2 * g + 1), b);
                }
            }
        }
    }

    /// The sums of group `g` after a pass of `N` planes, or `None` when the group is skipped.
    ///
    /// # Safety
    /// As for [`Ctx::pass`], and `g < groups`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn group<const N: usize>(
        &self,
        tables: &[u8],
        step: Step,
        g: usize,
        tv: &[__m256i; 2],
        nq: usize,
    ) -> Option<(__m256i, __m256i)> {
        let tl = load_tables::<N>(tables);
        // SAFETY: the caller's contract.
        unsafe { self.sums::<N>(&tl, step, g, tv, nq) }
    }

    /// # Safety
    /// As for [`Ctx::group`].
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn sums<const N: usize>(
        &self,
        tl: &[__m256i; N],
        step: Step,
        g: usize,
        tv: &[__m256i; 2],
        nq: usize,
    ) -> Option<(__m256i, __m256i)> {
        let (mut a, mut b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        if !step.first {
            // SAFETY: 2 g + 1 < 2 groups.
            unsafe {
                a = _mm256_loadu_si256(self.acc.add(2 * g));
                b = _mm256_loadu_si256(self.acc.add(2 * g + 1));
            }
            // The sums so far are lower bounds: a group with none within a threshold is done
            // (and stays so: its sums no longer change, thresholds only fall).
            if step.checked && live(a, b, tv, nq) == [0, 0] {
                return None;
            }
        }
        // SAFETY: g < groups and m0 + N <= m: inside the group's planes.
        let p = unsafe { self.planes.add((g * self.m + step.m0) * PAIR_TABLE) };
        // SAFETY: `p` points to N * PAIR_TABLE readable bytes.
        Some(unsafe { units::<N>(tl, p, a, b) })
    }
}

/// The `N` tables at the start of `tables` (at least `N * PAIR_TABLE` bytes).
#[inline]
#[target_feature(enable = "avx2")]
fn load_tables<const N: usize>(tables: &[u8]) -> [__m256i; N] {
    assert!(tables.len() >= N * PAIR_TABLE);
    let mut tl = [_mm256_setzero_si256(); N];
    for (k, x) in tl.iter_mut().enumerate() {
        // SAFETY: k < N: inside `tables` (checked above).
        *x = unsafe { _mm256_loadu_si256(tables.as_ptr().add(k * PAIR_TABLE) as *const __m256i) };
    }
    tl
}

/// Per query, the slots of a group whose distance (so far) is within the query's threshold.
#[inline]
#[target_feature(enable = "avx2")]
fn live(a: __m256i, b: __m256i, tv: &[__m256i; 2], nq: usize) -> [u32; 2] {
    // `b` summed the units shifted right by 4 within 16-bit lanes, unmasked: its even bytes
    // also got 16 times the odd bytes' low fields, which add up to 16 (dist_a mod 16) of the
    // odd code: the low nibble of the odd byte of `a`.
    let spill = _mm256_and_si256(_mm256_srli_epi16::<4>(a), _mm256_set1_epi16(0x00f0));
    let b = _mm256_sub_epi8(b, spill);
    let high = _mm256_set1_epi8(0xf0u8 as i8);
    let da = _mm256_sub_epi8(a, _mm256_and_si256(_mm256_slli_epi16::<4>(b), high));
    let le = |d: __m256i, t: __m256i| {
        _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_min_epu8(d, t), d)) as u32
    };
    [le(da, tv[0]), if nq == 2 { le(b, tv[1]) } else { 0 }]
}

/// Adds the `N` nibble planes at `p` (looked up in `tl`) into the accumulators, in units of
/// up to three lookups.
///
/// # Safety
/// `p` must point to `N * PAIR_TABLE` readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn units<const N: usize>(
    tl: &[__m256i; N],
    p: *const u8,
    mut a: __m256i,
    mut b: __m256i,
) -> (__m256i, __m256i) {
    let look = |k: usize| {
        // SAFETY: k < N: inside the caller's N * PAIR_TABLE bytes.
        let x = unsafe { _mm256_loadu_si256(p.add(k * PAIR_TABLE) as *const __m256i) };
        _mm256_shuffle_epi8(tl[k], x)
    };
    let mut k = 0;
    while k < N {
        let mut u = look(k);
        for j in k + 1..(k + 3).min(N) {
            u = _mm256_add_epi8(u, look(j));
        }
        a = _mm256_add_epi8(a, u);
        // Unmasked: an even byte also gets the odd byte's low field, times 16 (see `live`).
        b = _mm256_add_epi8(b, _mm256_srli_epi16::<4>(u));
        k += 3;
    }
    (a, b)
}

/// Exact distance of code `i` of `rows` (`W` words each) to `q`.
#[inline(always)]
fn dist<const W: usize>(rows: &[u64], q: &[u64], i: usize) -> u32 {
    let row = &rows[i * W..i * W + W];
    row.iter().zip(q).map(|(a, b)| (a ^ b).count_ones()).sum()
}

/// Every code of `rows` within the sink's threshold of `q`, code by code.
#[target_feature(enable = "popcnt")]
fn exact<S: Sink, const W: usize>(rows: &[u64], q: &[u64], base: usize, sink: &mut S) {
    let mut t = sink.threshold();
    for i in 0..rows.len() / W {
        if t < 0 {
            return;
        }
        let d = dist::<W>(rows, q, i);
        if d as i64 <= t {
            sink.offer(base + i, d);
            t = sink.threshold();
        }
    }
}

/// Offers the codes of group `g` whose slots are set in `slots` and whose exact distance is
/// within the threshold `t`, in code order; returns the threshold after the offers.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "popcnt")]
fn offer_group<S: Sink, const W: usize>(
    rows: &[u64],
    q: &[u64],
    order: &[u8; GROUP],
    g: usize,
    slots: u32,
    mut t: i64,
    base: usize,
    sink: &mut S,
) -> i64 {
    let mut m = slot_codes(order, slots, rows.len() / W, g);
    while m != 0 && t >= 0 {
        let i = g * GROUP + m.trailing_zeros() as usize;
        m &= m - 1;
        let d = dist::<W>(rows, q, i);
        if d as i64 <= t {
            sink.offer(base + i, d);
            t = sink.threshold();
        }
    }
    t
}
