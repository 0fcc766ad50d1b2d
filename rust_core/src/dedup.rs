//! Near-duplicate pairs and groups over packed codes.
//!
//! # Algorithm
//!
//! Exact multi-index hashing (Norouzi, Punjani & Fleet, "Fast exact search in Hamming space
//! with multi-index hashing"). The code bits are cut into `m` disjoint substrings of at most
//! [`MAX_SUB_BITS`] bits each. If two codes are within `r`, their distance restricted to the
//! substrings is within `r` as well, so by pigeonhole at least one substring differs in at most
//! `s = floor(r / m)` bits (`m * (s + 1) > r`). The substrings need not cover every bit for this
//! to hold, so the planner may leave bits out when fewer, wider substrings are cheaper (128-bit
//! codes, `r = 4`: five substrings of 21-23 bits, `s = 0`); 64-bit codes are always covered.
//!
//! For each substring `t` in turn (table `t + 1` is built while table `t` is probed, so at most
//! two tables are alive):
//!
//! * the rows are sorted by their `t`-key (LSD radix sort, stable) and their codes copied in
//!   that order, so every bucket is a contiguous run of rows and codes;
//! * the buckets are addressed directly through a rank bitmap over the `2^b` keys (one bit per
//!   key plus a prefix count per 64 keys, `2^b / 8 + 2^b / 16` bytes, half a megabyte for
//!   `b = 22`, so an empty-bucket probe is an L2 hit) and the start of each non-empty bucket;
//! * every query row enumerates the keys within `s` of its own key (precomputed XOR masks of
//!   popcount `1..=s`), looks them up, and verifies each candidate with the full distance; the
//!   lookups run in stages (branch-free occupancy test, then rank + prefetch of the bucket start,
//!   then prefetch of the first code, then verification) so their cache misses overlap;
//! * a verified pair is reported by table `t` only if no earlier table `u < t` also catches it,
//!   i.e. the pair's distance on substring `u` exceeds `s` for all `u < t` (a few popcounts on
//!   the XOR already in registers), so every pair comes out exactly once without a hash set.
//!
//! Self mode visits each bucket pair once: a row pairs with the later rows of its own bucket and
//! with the buckets whose key is greater than its own (a mask raises the key exactly when the
//! mask's highest bit is clear in the key, so only masks grouped under the key's zero bits are
//! tried). Cross mode indexes the larger set and probes with the smaller one (sorted by key too,
//! so probes walk the bitmap almost sequentially).
//!
//! # Cost model
//!
//! With `n_q` query rows, `n_i` indexed rows, `P` candidate pairs (`n(n-1)/2` or `n_q * n_i`)
//! and `V(b, s) = sum_{i<=s} C(b, i)` keys within `s` of a `b`-bit key, one table costs about
//!
//! ```text
//!   build:   (n_i [+ n_q]) * c_row  +  2^b / 64 * c_block
//!   probes:  n_q * (V - 1) * f * (c_probe + p_occupied * c_hit)   f = 1/2 in self mode
//!   verify:  P * V / 2^b * c_verify                                 (uniformly random codes)
//! ```
//!
//! and the plan with the smallest sum over its tables wins against blocked brute force
//! (`P * c_brute`). For 64-bit codes this picks 22/21/21 bits, `s = 1` for `r = 4` (`m = 5,
//! s = 0` would verify ~30x more candidates) and 22/21/21, `s = 2` for `r = 8`.
//!
//! Results are sorted, so they do not depend on the thread count. Hot loops are compiled twice,
//! once with hardware `popcnt` (picked at run time) and once portable.

use crate::bits::hamming;
use crate::error::{try_with_capacity, CoreError, Result};
use crate::pairs::{concat, Budget, Collect, Dsu, PairOut, Unite};
use rayon::prelude::*;

/// Largest substring (table key) width in bits.
pub const MAX_SUB_BITS: u32 = 24;

// Cost-model constants, in nanoseconds per unit (measured on a 2-core AMD EPYC, single thread).
const C_ROW: f64 = 12.0; // key extraction + radix sort + gather, per row (plus C_ROW_WORD per word)
const C_ROW_WORD: f64 = 2.0;
const C_BLOCK: f64 = 1.0; // bitmap + rank construction per 64 keys
const C_PROBE: f64 = 1.0; // one enumerated key, bitmap test
const C_HIT: f64 = 5.0; // rank + bucket start + first code, random accesses, per occupied key
const C_VERIFY: f64 = 1.2; // one candidate inside a fetched bucket (plus C_VERIFY_WORD per word)
const C_VERIFY_WORD: f64 = 0.4;
const C_BRUTE: f64 = 0.25; // one brute-force pair (plus C_BRUTE_WORD per word)
const C_BRUTE_WORD: f64 = 0.45;
const C_TABLE: f64 = 30_000.0; // fixed overhead per table (allocation, parallel dispatch)

fn check(codes: &[u64], words: usize, arg: &'static str) -> Result<usize> {
    if words == 0 {
        return Err(CoreError::invalid(
            arg,
            "codes must have at least one 64-bit word per row",
        ));
    }
    if !codes.len().is_multiple_of(words) {
        return Err(CoreError::invalid(
            arg,
            format!(
                "length {} is not a multiple of the word count {words}",
                codes.len()
            ),
        ));
    }
    Ok(codes.len() / words)
}

fn check_radius(words: usize, radius: u32) -> Result<()> {
    if radius as u64 > words as u64 * 64 {
        return Err(CoreError::invalid(
            "radius",
            format!("{radius} exceeds the code length of {} bits", words * 64),
        ));
    }
    Ok(())
}

/// All pairs within `radius` (inclusive): `(i, j)` with `i < j` inside `codes` when `other` is
/// `None`, else `(i, j)` with `i` indexing `codes` and `j` indexing `other`. Sorted ascending.
///
/// The result can be quadratic in the number of codes (one large group of near-identical
/// codes); it is collected only while memory allows and, with `max_pairs`, up to that many
/// pairs: past either the call fails ([`CoreError::OutOfMemory`], or
/// [`CoreError::InvalidArgument`] for `max_pairs`) with the number of pairs found, and frees
/// what it held. [`duplicate_groups`] groups codes without listing pairs.
pub fn near_duplicates(
    codes: &[u64],
    words: usize,
    radius: u32,
    other: Option<&[u64]>,
    max_pairs: Option<u64>,
    pool: &rayon::ThreadPool,
) -> Result<Vec<[i64; 2]>> {
    near_duplicates_with(codes, words, radius, other, max_pairs, pool, Strategy::Auto)
}

/// How [`near_duplicates_with`] finds the pairs (tests and benchmarks force one).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Cost model picks.
    Auto,
    /// Blocked brute force.
    BruteForce,
    /// Multi-index hashing with `tables` substrings of at most `max_bits` bits.
    MultiIndex { tables: usize, max_bits: u32 },
}

/// [`near_duplicates`] with a forced strategy. Every strategy returns the same pairs.
#[doc(hidden)]
pub fn near_duplicates_with(
    codes: &[u64],
    words: usize,
    radius: u32,
    other: Option<&[u64]>,
    max_pairs: Option<u64>,
    pool: &rayon::ThreadPool,
    strategy: Strategy,
) -> Result<Vec<[i64; 2]>> {
    let n = check(codes, words, "codes")?;
    let n_other = match other {
        Some(o) => Some(check(o, words, "other")?),
        None => None,
    };
    check_radius(words, radius)?;
    if n == 0 || n_other == Some(0) {
        return Ok(Vec::new());
    }
    let budget = Budget::new(max_pairs);
    let make = || Collect::new(&budget);
    let tasks = pool.install(|| find_pairs(codes, words, radius, other, strategy, &make))?;
    let chunks: Vec<Vec<[i64; 2]>> = tasks.into_iter().map(|c| c.pairs).collect();
    let found: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let what = format!("near_duplicates (radius {radius})");
    budget.check(found, &what)?;
    let mut out = concat(chunks, &what)?;
    pool.install(|| out.par_sort_unstable());
    Ok(out)
}

/// Plain O(n^2) reference (sequential, portable popcount); the tests compare against it.
#[doc(hidden)]
pub fn near_duplicates_brute(
    codes: &[u64],
    words: usize,
    radius: u32,
    other: Option<&[u64]>,
) -> Result<Vec<[i64; 2]>> {
    let n = check(codes, words, "codes")?;
    let n_other = match other {
        Some(o) => Some(check(o, words, "other")?),
        None => None,
    };
    check_radius(words, radius)?;
    fn row(c: &[u64], words: usize, i: usize) -> &[u64] {
        &c[i * words..(i + 1) * words]
    }
    let mut out = Vec::new();
    match (other, n_other) {
        (Some(o), Some(m)) => {
            for i in 0..n {
                for j in 0..m {
                    if hamming(row(codes, words, i), row(o, words, j)) <= radius {
                        out.push([i as i64, j as i64]);
                    }
                }
            }
        }
        _ => {
            for i in 0..n {
                for j in i + 1..n {
                    if hamming(row(codes, words, i), row(codes, words, j)) <= radius {
                        out.push([i as i64, j as i64]);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Human-readable plan the cost model picks for these sizes (timing tools print it).
#[doc(hidden)]
pub fn describe_plan(n: usize, n_other: Option<usize>, words: usize, radius: u32) -> String {
    let (n_q, n_i) = match n_other {
        Some(m) => (n.min(m), n.max(m)),
        None => (n, n),
    };
    let self_mode = n_other.is_none();
    let brute_ms = brute_cost(n_q, n_i, self_mode, words) / 1e6;
    match plan(n_q, n_i, self_mode, words, radius) {
        Plan::Brute => format!("brute force (model: {brute_ms:.1} ms on one thread)"),
        Plan::Mih { subs, s } => {
            let bits: Vec<String> = subs.iter().map(|u| u.len.to_string()).collect();
            let ms = mih_cost(&binom_table(), &subs, s, n_q, n_i, self_mode, words) / 1e6;
            format!(
                "multi-index: m={} substrings of {} bits, s={s} (model: {ms:.1} ms on one thread, brute force {brute_ms:.0} ms)",
                subs.len(),
                bits.join("/")
            )
        }
    }
}

/// Connected components of the "within `radius`" graph; each row gets the smallest row index
/// of its component as group id.
pub fn duplicate_groups(
    codes: &[u64],
    words: usize,
    radius: u32,
    pool: &rayon::ThreadPool,
) -> Result<Vec<i64>> {
    let n = check(codes, words, "codes")?;
    check_radius(words, radius)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    pool.install(|| groups(codes, words, radius, n))
}

fn groups(codes: &[u64], words: usize, radius: u32, n: usize) -> Result<Vec<i64>> {
    if n <= u32::MAX as usize {
        groups_with::<u32>(codes, words, radius, n)
    } else {
        groups_with::<u64>(codes, words, radius, n)
    }
}

fn groups_with<I: Idx>(codes: &[u64], words: usize, radius: u32, n: usize) -> Result<Vec<i64>> {
    fn same(a: &[u64], b: &[u64]) -> bool {
        a.iter().zip(b).all(|(x, y)| x == y)
    }
    const WHAT: &str = "duplicate_groups: the working memory";
    // Collapse exact duplicates first: a cluster of k identical codes then costs one row of
    // near-duplicate work instead of k^2/2 pairs.
    let order = sort_rows_by_code::<I>(codes, words)?;
    let mut class: Vec<I> = try_with_capacity(n, WHAT)?; // distinct code of each row
    class.resize(n, I::default());
    let mut reps: Vec<usize> = Vec::new(); // smallest row of each distinct code
    let mut uniq: Vec<u64> = Vec::new();
    let row = |i: I| &codes[i.to_usize() * words..(i.to_usize() + 1) * words];
    let mut g = 0;
    while g < n {
        let first = order[g];
        let mut e = g + 1;
        while e < n && same(row(order[e]), row(first)) {
            e += 1;
        }
        // `order` breaks ties by row index, so `first` is the smallest row of this code.
        for &i in &order[g..e] {
            class[i.to_usize()] = I::from_usize(reps.len());
        }
        crate::error::try_reserve(&mut reps, 1, WHAT)?;
        crate::error::try_reserve(&mut uniq, words, WHAT)?;
        reps.push(first.to_usize());
        uniq.extend_from_slice(row(first));
        g = e;
    }
    drop(order);

    // Pairs of distinct codes go straight into a union-find (rooted at the smallest row), as
    // the search finds them: no pair is stored.
    let dsu = Dsu::new(&reps)?;
    if reps.len() > 1 {
        let make = || Unite { dsu: &dsu };
        find_pairs(&uniq, words, radius, None, Strategy::Auto, &make)?;
    }
    drop(uniq);
    let mut out: Vec<i64> = try_with_capacity(n, "duplicate_groups: the result")?;
    out.extend(class.iter().map(|c| reps[dsu.find(c.to_usize())] as i64));
    Ok(out)
}

/// Row indices sorted by code (words compared in order), ties by index.
fn sort_rows_by_code<I: Idx>(codes: &[u64], words: usize) -> Result<Vec<I>> {
    const WHAT: &str = "duplicate_groups: the working memory";
    let n = codes.len() / words;
    if words == 1 {
        let mut v: Vec<u128> = try_with_capacity(n, WHAT)?;
        v.extend(
            codes
                .iter()
                .enumerate()
                .map(|(i, &c)| ((c as u128) << 64) | i as u128),
        );
        v.par_sort_unstable();
        let mut out: Vec<I> = try_with_capacity(n, WHAT)?;
        out.extend(v.into_iter().map(|x| I::from_usize(x as u64 as usize)));
        Ok(out)
    } else {
        let mut v: Vec<I> = try_with_capacity(n, WHAT)?;
        v.extend((0..n).map(I::from_usize));
        v.par_sort_unstable_by(|&a, &b| {
            let (a, b) = (a.to_usize(), b.to_usize());
            codes[a * words..(a + 1) * words]
                .cmp(&codes[b * words..(b + 1) * words])
                .then(a.cmp(&b))
        });
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------------------
// Planning

/// One table key: `len` bits of word `word` starting at bit `shift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sub {
    word: usize,
    shift: u32,
    len: u32,
}

impl Sub {
    #[inline(always)]
    fn mask(&self) -> u64 {
        (1u64 << self.len) - 1
    }
    #[inline(always)]
    fn key(&self, code: &[u64]) -> u32 {
        ((code[self.word] >> self.shift) & self.mask()) as u32
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    Brute,
    Mih { subs: Vec<Sub>, s: u32 },
}

/// `m` disjoint substrings of at most `max_bits` bits, spread evenly over the words, none
/// crossing a word boundary. Covers every bit when `m * max_bits` allows it.
fn layout(words: usize, m: usize, max_bits: u32) -> Vec<Sub> {
    let mut subs = Vec::with_capacity(m);
    for w in 0..words {
        // substrings i with i * words / m == w: an even share of m, spread over the words
        let c = ((w + 1) * m).div_ceil(words) - (w * m).div_ceil(words);
        let c = c as u32;
        if c == 0 {
            continue;
        }
        let total = (c * max_bits).min(64);
        let (base, extra) = (total / c, total % c);
        let mut shift = 0;
        for i in 0..c {
            let len = base + u32::from(i < extra);
            subs.push(Sub {
                word: w,
                shift,
                len,
            });
            shift += len;
        }
    }
    subs
}

fn binom_table() -> [[f64; 65]; 65] {
    let mut t = [[0.0; 65]; 65];
    for n in 0..65 {
        t[n][0] = 1.0;
        for k in 1..=n {
            t[n][k] = t[n - 1][k - 1] + if k < n { t[n - 1][k] } else { 0.0 };
        }
    }
    t
}

/// Number of keys within `s` of a `b`-bit key, `sum_{i<=s} C(b, i)`.
fn ball(binom: &[[f64; 65]; 65], b: u32, s: u32) -> f64 {
    (0..=s.min(b)).map(|i| binom[b as usize][i as usize]).sum()
}

/// Estimated cost (ns, single thread) of multi-index hashing with these substrings.
fn mih_cost(
    binom: &[[f64; 65]; 65],
    subs: &[Sub],
    s: u32,
    n_q: usize,
    n_i: usize,
    self_mode: bool,
    words: usize,
) -> f64 {
    let (nq, ni) = (n_q as f64, n_i as f64);
    let pairs = if self_mode {
        nq * (nq - 1.0) / 2.0
    } else {
        nq * ni
    };
    let w = words as f64;
    let row = C_ROW + C_ROW_WORD * w;
    let f = if self_mode { 0.5 } else { 1.0 };
    let mut cost = 0.0;
    for u in subs {
        let keys = (u.len as f64).exp2();
        let v = ball(binom, u.len, s);
        let occupied = 1.0 - (-ni / keys).exp();
        let build = (if self_mode { ni } else { ni + nq }) * row + keys / 64.0 * C_BLOCK + C_TABLE;
        let probes = nq * (v - 1.0) * f * (C_PROBE + occupied * C_HIT) + nq * C_HIT;
        let verify = pairs * (v / keys) * (C_VERIFY + C_VERIFY_WORD * w);
        cost += build + probes + verify;
    }
    cost
}

fn brute_cost(n_q: usize, n_i: usize, self_mode: bool, words: usize) -> f64 {
    let (nq, ni) = (n_q as f64, n_i as f64);
    let pairs = if self_mode {
        nq * (nq - 1.0) / 2.0
    } else {
        nq * ni
    };
    pairs * (C_BRUTE + C_BRUTE_WORD * words as f64)
}

/// Largest enumerated neighbourhood the planner accepts (keys per probe).
const MAX_BALL: f64 = (1u64 << 20) as f64;

fn plan(n_q: usize, n_i: usize, self_mode: bool, words: usize, radius: u32) -> Plan {
    let n_bits = words * 64;
    let binom = binom_table();
    let mut best = Plan::Brute;
    let mut best_cost = brute_cost(n_q, n_i, self_mode, words);
    // More than r + 1 tables cannot lower s below 0; beyond 256 tables nothing beats brute force.
    let max_m = (radius as usize + 1).min(n_bits).min(256);
    for m in 1..=max_m {
        let s = radius / m as u32;
        for max_bits in 1..=MAX_SUB_BITS {
            let subs = layout(words, m, max_bits);
            if subs.iter().any(|u| ball(&binom, u.len, s) > MAX_BALL) {
                continue;
            }
            let cost = mih_cost(&binom, &subs, s, n_q, n_i, self_mode, words);
            if cost < best_cost {
                best_cost = cost;
                best = Plan::Mih { subs, s };
            }
        }
    }
    best
}

fn forced_plan(words: usize, radius: u32, tables: usize, max_bits: u32) -> Result<Plan> {
    if tables == 0 || tables > words * 64 {
        return Err(CoreError::invalid(
            "tables",
            format!("{tables} is not in 1..={}", words * 64),
        ));
    }
    if !(1..=MAX_SUB_BITS).contains(&max_bits) {
        return Err(CoreError::invalid(
            "max_bits",
            format!("{max_bits} is not in 1..={MAX_SUB_BITS}"),
        ));
    }
    Ok(Plan::Mih {
        subs: layout(words, tables, max_bits),
        s: radius / tables as u32,
    })
}

// ---------------------------------------------------------------------------------------------
// Driver

/// Finds the pairs and gives them to one [`PairOut`] per parallel task (made by `make`), in no
/// particular order; self mode gives `i < j`. Returns the tasks' outputs that are not empty.
fn find_pairs<P: PairOut, F: Fn() -> P + Sync>(
    codes: &[u64],
    words: usize,
    radius: u32,
    other: Option<&[u64]>,
    strategy: Strategy,
    make: &F,
) -> Result<Vec<P>> {
    let n = codes.len() / words;
    let (query, index, swap) = match other {
        None => (codes, codes, false),
        // Probe with the smaller set, index the larger one.
        Some(o) if o.len() < codes.len() => (o, codes, true),
        Some(o) => (codes, o, false),
    };
    let self_mode = other.is_none();
    let (n_q, n_i) = (query.len() / words, index.len() / words);
    let p = match strategy {
        Strategy::Auto => plan(n_q, n_i, self_mode, words, radius),
        Strategy::BruteForce => Plan::Brute,
        Strategy::MultiIndex { tables, max_bits } => forced_plan(words, radius, tables, max_bits)?,
    };
    let hw = has_popcnt();
    let large = n_q.max(n_i).max(n) > u32::MAX as usize;
    Ok(match p {
        Plan::Brute => brute(query, index, self_mode, swap, words, radius, hw, make),
        Plan::Mih { subs, s } => {
            let job = MihJob {
                query,
                index,
                self_mode,
                swap,
                words,
                radius,
                s,
                subs: &subs,
                hw,
            };
            if large {
                job.run::<u64, P, F>(make)
            } else {
                job.run::<u32, P, F>(make)
            }
        }
    })
}

fn has_popcnt() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("popcnt")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows (per task) handled by one parallel task.
fn task_rows(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (n / (threads * 16)).clamp(256, 1 << 16)
}

/// Evaluates `$body` with the const `$w` set to the word count for the common widths, or to 0
/// (= any width, read at run time) otherwise.
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
            _ => {
                const $w: usize = 0;
                $body
            }
        }
    };
}

#[inline(always)]
fn dist<const W: usize>(a: &[u64], b: &[u64]) -> u32 {
    if W > 0 {
        let mut d = 0;
        for i in 0..W {
            d += (a[i] ^ b[i]).count_ones();
        }
        d
    } else {
        let mut d = 0;
        for i in 0..a.len().min(b.len()) {
            d += (a[i] ^ b[i]).count_ones();
        }
        d
    }
}

#[inline(always)]
fn row<const W: usize>(codes: &[u64], words: usize, i: usize) -> &[u64] {
    let w = if W > 0 { W } else { words };
    &codes[i * w..i * w + w]
}

#[inline(always)]
fn emit<P: PairOut>(out: &mut P, q: usize, c: usize, self_mode: bool, swap: bool) {
    let (a, b) = if self_mode {
        if q < c {
            (q, c)
        } else {
            (c, q)
        }
    } else if swap {
        (c, q)
    } else {
        (q, c)
    };
    out.push(a, b);
}

// ---------------------------------------------------------------------------------------------
// Brute force

const TILE: usize = 2048;

#[allow(clippy::too_many_arguments)]
fn brute<P: PairOut, F: Fn() -> P + Sync>(
    query: &[u64],
    index: &[u64],
    self_mode: bool,
    swap: bool,
    words: usize,
    radius: u32,
    hw: bool,
    make: &F,
) -> Vec<P> {
    let n_q = query.len() / words;
    let n_i = index.len() / words;
    // Self mode is triangular: smaller tasks keep the threads balanced.
    let per = if self_mode { 64 } else { 256 };
    let tasks = n_q.div_ceil(per);
    (0..tasks)
        .into_par_iter()
        .map(|t| {
            let (i0, i1) = (t * per, ((t + 1) * per).min(n_q));
            let mut out = make();
            let args = BruteArgs {
                query,
                index,
                n_i,
                self_mode,
                swap,
                words,
                radius,
                i0,
                i1,
            };
            by_width!(words, W => brute_dispatch::<P, W>(&args, &mut out, hw));
            out
        })
        .filter(|v| !v.is_empty())
        .collect()
}

struct BruteArgs<'a> {
    query: &'a [u64],
    index: &'a [u64],
    n_i: usize,
    self_mode: bool,
    swap: bool,
    words: usize,
    radius: u32,
    i0: usize,
    i1: usize,
}

fn brute_dispatch<P: PairOut, const W: usize>(a: &BruteArgs, out: &mut P, hw: bool) {
    #[cfg(target_arch = "x86_64")]
    if hw {
        // SAFETY: `hw` is true only when the CPU reports popcnt.
        unsafe { brute_popcnt::<P, W>(a, out) };
        return;
    }
    let _ = hw;
    brute_body::<P, W>(a, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn brute_popcnt<P: PairOut, const W: usize>(a: &BruteArgs, out: &mut P) {
    brute_body::<P, W>(a, out)
}

#[inline(always)]
fn brute_body<P: PairOut, const W: usize>(a: &BruteArgs, out: &mut P) {
    let j_start = if a.self_mode { a.i0 + 1 } else { 0 };
    let mut j0 = j_start;
    while j0 < a.n_i {
        let j1 = (j0 + TILE).min(a.n_i);
        if out.stopped() {
            return;
        }
        for i in a.i0..a.i1 {
            let q = row::<W>(a.query, a.words, i);
            let lo = if a.self_mode { j0.max(i + 1) } else { j0 };
            for j in lo..j1 {
                if dist::<W>(q, row::<W>(a.index, a.words, j)) <= a.radius {
                    emit(out, i, j, a.self_mode, a.swap);
                }
            }
        }
        j0 = j1;
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-index hashing

/// Row index type of the tables: `u32` whenever it fits.
trait Idx: Copy + Send + Sync + Default + 'static {
    fn from_usize(x: usize) -> Self;
    fn to_usize(self) -> usize;
}

impl Idx for u32 {
    #[inline(always)]
    fn from_usize(x: usize) -> Self {
        x as u32
    }
    #[inline(always)]
    fn to_usize(self) -> usize {
        self as usize
    }
}

impl Idx for u64 {
    #[inline(always)]
    fn from_usize(x: usize) -> Self {
        x as u64
    }
    #[inline(always)]
    fn to_usize(self) -> usize {
        self as usize
    }
}

/// Rows sorted by one substring key, with their codes copied in that order.
struct Sorted<I> {
    rows: Vec<I>,
    codes: Vec<u64>,
}

/// A [`Sorted`] set plus the direct-addressed bucket directory over all `2^b` keys.
struct Table<I> {
    sorted: Sorted<I>,
    /// bit `k` set iff bucket `k` is non-empty
    bitmap: Vec<u64>,
    /// non-empty buckets before each 64-key block
    rank: Vec<I>,
    /// start position of each non-empty bucket (in key order), then the row count
    starts: Vec<I>,
}

impl<I: Idx> Table<I> {
    /// Positions `[start, end)` of bucket `k`, if it is non-empty.
    #[inline(always)]
    fn bucket(&self, k: u32) -> Option<(usize, usize)> {
        let blk = (k >> 6) as usize;
        let bits = self.bitmap[blk];
        let bit = 1u64 << (k & 63);
        if bits & bit == 0 {
            return None;
        }
        let idx = self.rank[blk].to_usize() + (bits & (bit - 1)).count_ones() as usize;
        Some((self.starts[idx].to_usize(), self.starts[idx + 1].to_usize()))
    }

    /// Index (among non-empty buckets) of bucket `k`, which must be non-empty.
    #[inline(always)]
    fn bucket_index(&self, k: u32) -> usize {
        let blk = (k >> 6) as usize;
        let bit = 1u64 << (k & 63);
        self.rank[blk].to_usize() + (self.bitmap[blk] & (bit - 1)).count_ones() as usize
    }
}

/// Stable LSD radix sort of `(key, row)` by the low `bits` bits of key.
fn radix_sort<I: Idx>(mut a: Vec<(u32, I)>, bits: u32) -> Vec<(u32, I)> {
    if bits == 0 || a.len() <= 1 {
        return a;
    }
    let passes = bits.div_ceil(11);
    let digit = bits.div_ceil(passes);
    let mut b = vec![(0u32, I::default()); a.len()];
    let mut cnt = vec![0usize; (1usize << digit) + 1];
    let mut shift = 0;
    while shift < bits {
        let d = digit.min(bits - shift);
        let mask = (1u32 << d) - 1;
        cnt.iter_mut().for_each(|c| *c = 0);
        for e in &a {
            cnt[((e.0 >> shift) & mask) as usize + 1] += 1;
        }
        for k in 1..cnt.len() {
            cnt[k] += cnt[k - 1];
        }
        for e in &a {
            let k = ((e.0 >> shift) & mask) as usize;
            b[cnt[k]] = *e;
            cnt[k] += 1;
        }
        std::mem::swap(&mut a, &mut b);
        shift += d;
    }
    a
}

fn sort_by_sub<I: Idx>(codes: &[u64], words: usize, sub: Sub) -> Sorted<I> {
    let n = codes.len() / words;
    let ents: Vec<(u32, I)> = (0..n)
        .into_par_iter()
        .with_min_len(1 << 14)
        .map(|i| {
            (
                sub.key(&codes[i * words..(i + 1) * words]),
                I::from_usize(i),
            )
        })
        .collect();
    let ents = radix_sort(ents, sub.len);
    let mut sorted_codes = vec![0u64; n * words];
    sorted_codes
        .par_chunks_mut(words * 4096)
        .zip(ents.par_chunks(4096))
        .for_each(|(dst, src)| {
            if words == 1 {
                for (d, e) in dst.iter_mut().zip(src) {
                    *d = codes[e.1.to_usize()];
                }
            } else {
                for (d, e) in dst.chunks_exact_mut(words).zip(src) {
                    let r = e.1.to_usize();
                    for (x, y) in d.iter_mut().zip(&codes[r * words..(r + 1) * words]) {
                        *x = *y;
                    }
                }
            }
        });
    let rows = ents.into_iter().map(|e| e.1).collect();
    Sorted {
        rows,
        codes: sorted_codes,
    }
}

fn build_table<I: Idx>(codes: &[u64], words: usize, sub: Sub) -> Table<I> {
    let sorted = sort_by_sub::<I>(codes, words, sub);
    let n = sorted.rows.len();
    let blocks = (1usize << sub.len).div_ceil(64);
    let mut bitmap = vec![0u64; blocks];
    let mut starts = Vec::new();
    let mut prev = None;
    for (p, code) in sorted.codes.chunks_exact(words).enumerate() {
        let k = sub.key(code);
        if prev != Some(k) {
            bitmap[(k >> 6) as usize] |= 1u64 << (k & 63);
            starts.push(I::from_usize(p));
            prev = Some(k);
        }
    }
    starts.push(I::from_usize(n));
    let mut rank = Vec::with_capacity(blocks);
    let mut acc = 0usize;
    for &b in &bitmap {
        rank.push(I::from_usize(acc));
        acc += b.count_ones() as usize;
    }
    Table {
        sorted,
        bitmap,
        rank,
        starts,
    }
}

/// All non-zero masks of `b` bits with popcount `<= s`, grouped by their highest set bit:
/// masks with top bit `h` are `masks[groups[h]..groups[h + 1]]`.
fn flip_masks(b: u32, s: u32) -> (Vec<u32>, Vec<usize>) {
    let mut masks = Vec::new();
    for k in 1..=s.min(b) {
        // Gosper's hack over all b-bit masks of popcount k.
        let mut x: u64 = (1u64 << k) - 1;
        while x < (1u64 << b) {
            masks.push(x as u32);
            let c = x & x.wrapping_neg();
            let r = x + c;
            x = (((r ^ x) >> 2) / c) | r;
        }
    }
    masks.sort_by_key(|&m| (31 - m.leading_zeros(), m));
    let mut groups = vec![0usize; b as usize + 1];
    for h in 0..b {
        groups[h as usize + 1] = groups[h as usize]
            + masks
                .iter()
                .filter(|&&m| 31 - m.leading_zeros() == h)
                .count();
    }
    (masks, groups)
}

struct MihJob<'a> {
    query: &'a [u64],
    index: &'a [u64],
    self_mode: bool,
    swap: bool,
    words: usize,
    radius: u32,
    s: u32,
    subs: &'a [Sub],
    hw: bool,
}

/// Everything one probing task needs for table `t`.
struct Probe<'a, I> {
    job: &'a MihJob<'a>,
    table: &'a Table<I>,
    /// query rows sorted by this table's key (`None` in self mode: the table itself)
    queries: Option<&'a Sorted<I>>,
    t: usize,
    masks: &'a [u32],
    groups: &'a [usize],
}

impl MihJob<'_> {
    /// Runs the tables in turn; table `t + 1` is built while table `t` is probed, so the
    /// mostly sequential build overlaps the parallel probing (two tables alive at most).
    fn run<I: Idx, P: PairOut, F: Fn() -> P + Sync>(&self, make: &F) -> Vec<P> {
        let mut all: Vec<P> = Vec::new();
        let mut next = Some(self.prepare::<I>(0));
        for t in 0..self.subs.len() {
            let Some(stage) = next.take() else { break };
            let (mut found, following) = rayon::join(
                || self.probe_stage(t, &stage, make),
                || (t + 1 < self.subs.len()).then(|| self.prepare::<I>(t + 1)),
            );
            drop(stage);
            next = following;
            let stop = found.iter().any(PairOut::stopped);
            all.append(&mut found);
            if stop {
                break;
            }
        }
        all
    }

    /// Everything table `t` needs before probing: the table, the sorted queries (cross mode)
    /// and the flip masks.
    fn prepare<I: Idx>(&self, t: usize) -> Stage<I> {
        let sub = self.subs[t];
        let table = build_table::<I>(self.index, self.words, sub);
        let queries = if self.self_mode {
            None
        } else {
            Some(sort_by_sub::<I>(self.query, self.words, sub))
        };
        let (masks, groups) = flip_masks(sub.len, self.s);
        Stage {
            table,
            queries,
            masks,
            groups,
        }
    }

    fn probe_stage<I: Idx, P: PairOut, F: Fn() -> P + Sync>(
        &self,
        t: usize,
        stage: &Stage<I>,
        make: &F,
    ) -> Vec<P> {
        let probe = Probe {
            job: self,
            table: &stage.table,
            queries: stage.queries.as_ref(),
            t,
            masks: &stage.masks,
            groups: &stage.groups,
        };
        let n_q = self.query.len() / self.words;
        let per = task_rows(n_q);
        (0..n_q.div_ceil(per))
            .into_par_iter()
            .map(|c| {
                let mut out = make();
                let (p0, p1) = (c * per, ((c + 1) * per).min(n_q));
                by_width!(self.words, W => probe_dispatch::<I, P, W>(&probe, p0, p1, &mut out, self.hw));
                out
            })
            .filter(|v| !v.is_empty())
            .collect()
    }
}

struct Stage<I> {
    table: Table<I>,
    queries: Option<Sorted<I>>,
    masks: Vec<u32>,
    groups: Vec<usize>,
}

fn probe_dispatch<I: Idx, P: PairOut, const W: usize>(
    p: &Probe<I>,
    p0: usize,
    p1: usize,
    out: &mut P,
    hw: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if hw {
        // SAFETY: `hw` is true only when the CPU reports popcnt.
        unsafe { probe_popcnt::<I, P, W>(p, p0, p1, out) };
        return;
    }
    let _ = hw;
    probe_body::<I, P, W>(p, p0, p1, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn probe_popcnt<I: Idx, P: PairOut, const W: usize>(
    p: &Probe<I>,
    p0: usize,
    p1: usize,
    out: &mut P,
) {
    probe_body::<I, P, W>(p, p0, p1, out)
}

/// Probes query positions `p0..p1` against the table.
///
/// Per query the neighbour keys go through three short loops so that their memory accesses
/// overlap instead of forming one dependent chain per key: a branch-free occupancy test against
/// the bitmap (about a third of the keys are occupied, so branching there mispredicts), then
/// rank + prefetch of the bucket start, then bucket range + prefetch of the first candidate code,
/// then verification.
#[inline(always)]
fn probe_body<I: Idx, P: PairOut, const W: usize>(
    pr: &Probe<I>,
    p0: usize,
    p1: usize,
    out: &mut P,
) {
    let job = pr.job;
    let words = job.words;
    let sub = job.subs[pr.t];
    let earlier = &job.subs[..pr.t];
    let (radius, s) = (job.radius, job.s);
    let table = pr.table;
    let icodes = &table.sorted.codes;
    let irows = &table.sorted.rows;
    let full = sub.mask() as u32;
    let has_masks = !pr.masks.is_empty();
    let v = Verifier {
        icodes,
        irows,
        words,
        radius,
        s,
        earlier,
        self_mode: job.self_mode,
        swap: job.swap,
    };
    let mut keys = vec![0u32; pr.masks.len() + 1];
    let mut ranges = vec![(0usize, 0usize); pr.masks.len() + 1];

    match pr.queries {
        None => {
            // Self mode: the later rows of the own bucket, then buckets with a greater key.
            let mut bidx = table.bucket_index(sub.key(row::<W>(icodes, words, p0)));
            for (p, qrow) in (p0..p1).zip(&irows[p0..p1]) {
                if out.stopped() {
                    return;
                }
                let q = row::<W>(icodes, words, p);
                let k = sub.key(q);
                while table.starts[bidx + 1].to_usize() <= p {
                    bidx += 1;
                }
                let qrow = qrow.to_usize();
                v.run::<P, W>(q, qrow, p + 1, table.starts[bidx + 1].to_usize(), out);
                if has_masks {
                    // A mask raises the key iff its top bit is clear in the key.
                    let mut cnt = 0;
                    let mut z = !k & full;
                    while z != 0 {
                        let h = z.trailing_zeros() as usize;
                        z &= z - 1;
                        let group = &pr.masks[pr.groups[h]..pr.groups[h + 1]];
                        cnt = occupied(&table.bitmap, k, group, &mut keys, cnt);
                    }
                    probe_keys::<I, P, W>(table, &v, q, qrow, &keys[..cnt], &mut ranges, out);
                }
            }
        }
        Some(qs) => {
            for p in p0..p1 {
                if out.stopped() {
                    return;
                }
                let q = row::<W>(&qs.codes, words, p);
                let k = sub.key(q);
                let qrow = qs.rows[p].to_usize();
                if let Some((c0, c1)) = table.bucket(k) {
                    v.run::<P, W>(q, qrow, c0, c1, out);
                }
                let cnt = occupied(&table.bitmap, k, pr.masks, &mut keys, 0);
                probe_keys::<I, P, W>(table, &v, q, qrow, &keys[..cnt], &mut ranges, out);
            }
        }
    }
}

/// Appends to `keys[cnt..]` the keys `k ^ m` (`m` in `masks`) whose bucket is non-empty, without
/// branching; returns the new count. `keys` must have room for every mask tried plus one.
#[inline(always)]
fn occupied(bitmap: &[u64], k: u32, masks: &[u32], keys: &mut [u32], mut cnt: usize) -> usize {
    for &m in masks {
        let k2 = k ^ m;
        let present = (bitmap[(k2 >> 6) as usize] >> (k2 & 63)) & 1;
        keys[cnt] = k2;
        cnt += present as usize;
    }
    cnt
}

/// Verifies query `q` against the (non-empty) buckets `keys`, overlapping their lookups.
#[inline(always)]
fn probe_keys<I: Idx, P: PairOut, const W: usize>(
    table: &Table<I>,
    v: &Verifier<I>,
    q: &[u64],
    qrow: usize,
    keys: &[u32],
    ranges: &mut [(usize, usize)],
    out: &mut P,
) {
    let ranges = &mut ranges[..keys.len()];
    for (r, &k2) in ranges.iter_mut().zip(keys) {
        let idx = table.bucket_index(k2);
        prefetch(&table.starts[idx]);
        r.0 = idx;
    }
    let w = if W > 0 { W } else { v.words };
    for r in ranges.iter_mut() {
        let (c0, c1) = (
            table.starts[r.0].to_usize(),
            table.starts[r.0 + 1].to_usize(),
        );
        prefetch(&v.icodes[c0 * w]);
        *r = (c0, c1);
    }
    for &(c0, c1) in ranges.iter() {
        v.run::<P, W>(q, qrow, c0, c1, out);
    }
}

#[inline(always)]
fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetching is a hint; it never faults, and SSE is part of x86_64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(x as *const T as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Checks table candidates against one query and emits the pairs this table owns.
struct Verifier<'a, I> {
    icodes: &'a [u64],
    irows: &'a [I],
    words: usize,
    radius: u32,
    s: u32,
    earlier: &'a [Sub],
    self_mode: bool,
    swap: bool,
}

impl<I: Idx> Verifier<'_, I> {
    /// Verifies table positions `c0..c1` against query `q` (row `qrow`).
    #[inline(always)]
    fn run<P: PairOut, const W: usize>(
        &self,
        q: &[u64],
        qrow: usize,
        c0: usize,
        c1: usize,
        out: &mut P,
    ) {
        for c in c0..c1 {
            let cc = row::<W>(self.icodes, self.words, c);
            if dist::<W>(q, cc) <= self.radius && !self.caught_earlier(q, cc) {
                emit(
                    out,
                    qrow,
                    self.irows[c].to_usize(),
                    self.self_mode,
                    self.swap,
                );
            }
        }
    }

    /// Whether an earlier table reports this pair: some earlier substring is within `s`.
    #[inline(always)]
    fn caught_earlier(&self, q: &[u64], cc: &[u64]) -> bool {
        for u in self.earlier {
            if (((q[u.word] ^ cc[u.word]) >> u.shift) & u.mask()).count_ones() <= self.s {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_disjoint_and_bounded() {
        for words in 1..=8 {
            for m in 1..=80.min(words * 64) {
                for max_bits in 1..=MAX_SUB_BITS {
                    let subs = layout(words, m, max_bits);
                    assert_eq!(subs.len(), m, "words={words} m={m}");
                    let mut seen = vec![false; words * 64];
                    for u in &subs {
                        assert!(u.len >= 1 && u.len <= max_bits && u.shift + u.len <= 64);
                        for b in 0..u.len as usize {
                            let j = u.word * 64 + u.shift as usize + b;
                            assert!(!seen[j]);
                            seen[j] = true;
                        }
                    }
                    if m as u32 * max_bits >= 64 * words as u32 && m % words == 0 {
                        assert!(
                            seen.iter().all(|&x| x),
                            "words={words} m={m} b={max_bits} not covering"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn flip_masks_enumerate_the_ball() {
        let binom = binom_table();
        for b in 1..=12 {
            for s in 0..=4 {
                let (masks, groups) = flip_masks(b, s);
                assert_eq!(masks.len() as f64 + 1.0, ball(&binom, b, s));
                assert_eq!(*groups.last().unwrap(), masks.len());
                for h in 0..b as usize {
                    for &m in &masks[groups[h]..groups[h + 1]] {
                        assert_eq!(31 - m.leading_zeros(), h as u32);
                    }
                }
            }
        }
    }

    #[test]
    fn radix_sort_is_stable() {
        let v: Vec<(u32, u32)> = (0..5000u32)
            .map(|i| ((i.wrapping_mul(2654435761) >> 9) & 0x3fffff, i))
            .collect();
        let mut want = v.clone();
        want.sort_by_key(|e| e.0);
        assert_eq!(radix_sort(v, 22), want);
    }

    #[test]
    fn planner_picks_the_documented_plans() {
        let p4 = plan(1_000_000, 1_000_000, true, 1, 4);
        let Plan::Mih { subs, s } = p4 else {
            panic!("{p4:?}")
        };
        assert_eq!((subs.len(), s), (3, 1));
        assert_eq!(
            subs.iter().map(|u| u.len).collect::<Vec<_>>(),
            vec![22, 21, 21]
        );
        let p8 = plan(1_000_000, 1_000_000, true, 1, 8);
        let Plan::Mih { subs, s } = p8 else {
            panic!("{p8:?}")
        };
        assert_eq!((subs.len(), s), (3, 2));
        assert_eq!(plan(100, 100, true, 1, 4), Plan::Brute);
        assert_eq!(plan(1_000_000, 1_000_000, true, 1, 40), Plan::Brute);
    }

    #[test]
    fn wide_row_indices_agree() {
        let mut x = 7u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut codes: Vec<u64> = (0..3000).map(|_| next()).collect();
        for i in 0..1000 {
            codes[2000 + i] = codes[i] ^ (next() & next() & next() & next());
        }
        let other: Vec<u64> = codes[..700].to_vec();
        for (query, index, self_mode) in [
            (&codes[..], &codes[..], true),
            (&other[..], &codes[..], false),
        ] {
            for radius in [0, 3, 6] {
                let subs = layout(1, 3, 16);
                let job = MihJob {
                    query,
                    index,
                    self_mode,
                    swap: false,
                    words: 1,
                    radius,
                    s: radius / 3,
                    subs: &subs,
                    hw: has_popcnt(),
                };
                let budget = Budget::new(None);
                let make = || Collect::new(&budget);
                let flat = |c: Vec<Collect<'_>>| {
                    let mut v: Vec<[i64; 2]> = c.into_iter().flat_map(|c| c.pairs).collect();
                    v.sort_unstable();
                    v
                };
                let narrow = flat(job.run::<u32, _, _>(&make));
                let wide = flat(job.run::<u64, _, _>(&make));
                let portable = flat(MihJob { hw: false, ..job }.run::<u32, _, _>(&make));
                let want = near_duplicates_brute(
                    query,
                    1,
                    radius,
                    if self_mode { None } else { Some(index) },
                )
                .unwrap();
                assert_eq!(narrow, want);
                assert_eq!(wide, want);
                assert_eq!(portable, want);
            }
        }
    }
}
