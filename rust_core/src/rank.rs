//! Hamming-ranking evaluation kernels.
//!
//! Ranking a database by Hamming distance only orders it into `n_bits + 1` distance buckets, so
//! every ranking metric (mAP, precision/recall at a radius or at K, PR curves) follows from two
//! histograms per query: how many database codes sit at each distance, and how many of those
//! share a label with the query. [`hamming_histogram`] computes them exactly, with the batched
//! SIMD distance kernel of [`crate::bits`] and per-task counters that stay in cache.

use crate::bits::{block_len, BlockBuf, Kernel};
use crate::error::{try_filled, CoreError, Result};
use crate::search::Plan;
use rayon::prelude::*;

/// Interleaved sub-histograms: consecutive codes update different copies, so repeated
/// distances do not serialise on one counter.
const SUBS: usize = 4;

/// For each query, `(total, relevant)`: `total[q * (n_bits + 1) + d]` counts the database codes
/// at Hamming distance `d` from query `q`, and `relevant[...]` those of them whose labels share
/// a bit with the query's (`qlabel & dlabel != 0` in some word).
///
/// `queries` and `database` are row-major codes of `words` u64; `qlabels` and `dlabels` hold
/// one packed multi-hot row of `lwords` u64 per query / database code.
pub fn hamming_histogram(
    queries: &[u64],
    database: &[u64],
    words: usize,
    qlabels: &[u64],
    dlabels: &[u64],
    lwords: usize,
    pool: &rayon::ThreadPool,
) -> Result<(Vec<i64>, Vec<i64>)> {
    hamming_histogram_with(
        Kernel::active(),
        queries,
        database,
        words,
        qlabels,
        dlabels,
        lwords,
        pool,
    )
}

/// [`hamming_histogram`] with an explicit kernel (tests, benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn hamming_histogram_with(
    kernel: Kernel,
    queries: &[u64],
    database: &[u64],
    words: usize,
    qlabels: &[u64],
    dlabels: &[u64],
    lwords: usize,
    pool: &rayon::ThreadPool,
) -> Result<(Vec<i64>, Vec<i64>)> {
    if words == 0 {
        return Err(CoreError::invalid(
            "queries",
            "codes must have at least one 64-bit word per row",
        ));
    }
    let rows = |arg: &'static str, data: &[u64], w: usize| {
        if !data.len().is_multiple_of(w) {
            Err(CoreError::invalid(
                arg,
                format!(
                    "holds {} words, not a whole number of {w}-word rows",
                    data.len()
                ),
            ))
        } else {
            Ok(data.len() / w)
        }
    };
    let nq = rows("queries", queries, words)?;
    let nd = rows("database", database, words)?;
    if lwords == 0 {
        return Err(CoreError::invalid(
            "query_labels",
            "labels must have at least one 64-bit word per row",
        ));
    }
    if qlabels.len() != nq * lwords {
        return Err(CoreError::invalid(
            "query_labels",
            format!(
                "holds {} words, expected {nq} rows (one per query) of {lwords}",
                qlabels.len()
            ),
        ));
    }
    if dlabels.len() != nd * lwords {
        return Err(CoreError::invalid(
            "database_labels",
            format!(
                "holds {} words, expected {nd} rows (one per database code) of {lwords}",
                dlabels.len()
            ),
        ));
    }
    let bins = words * 64 + 1;
    let cells = nq.saturating_mul(bins);
    let mut total = try_filled(cells, 0i64, "hamming_histogram: the totals")?;
    let mut relevant = try_filled(cells, 0i64, "hamming_histogram: the relevant counts")?;
    if nq == 0 || nd == 0 {
        return Ok((total, relevant));
    }
    // Keep a batch's counters (batch * SUBS * 2 * bins u32) around 1 MiB.
    let max_batch = ((1usize << 20) / (bins * SUBS * 8)).clamp(8, 256);
    let plan = Plan::new(
        nq,
        nd,
        pool.current_num_threads(),
        max_batch,
        Plan::MIN_CHUNK,
    );
    let parts: Vec<(Vec<i64>, Vec<i64>)> = pool.install(|| {
        (0..plan.tasks())
            .into_par_iter()
            .map(|t| {
                let (qr, dr) = plan.task(t);
                task(
                    kernel,
                    &queries[qr.start * words..qr.end * words],
                    &qlabels[qr.start * lwords..qr.end * lwords],
                    database,
                    dlabels,
                    words,
                    lwords,
                    dr,
                )
            })
            .collect::<Result<_>>()
    })?;
    for (t, (tt, rr)) in parts.iter().enumerate() {
        let (qr, _) = plan.task(t);
        let rows = qr.start * bins..qr.end * bins;
        for (o, v) in total[rows.clone()].iter_mut().zip(tt) {
            *o += v;
        }
        for (o, v) in relevant[rows].iter_mut().zip(rr) {
            *o += v;
        }
    }
    Ok((total, relevant))
}

/// Histograms of `queries` against the database rows `db`.
#[allow(clippy::too_many_arguments)]
fn task(
    kernel: Kernel,
    queries: &[u64],
    qlabels: &[u64],
    database: &[u64],
    dlabels: &[u64],
    words: usize,
    lwords: usize,
    db: std::ops::Range<usize>,
) -> Result<(Vec<i64>, Vec<i64>)> {
    let bins = words * 64 + 1;
    let nq = queries.len() / words;
    // Per query SUBS sub-histograms of 2 * bins counters: bin `d` counts irrelevant codes at
    // distance d, bin `bins + d` relevant ones. A chunk has at most 2^30 rows: u32 suffices.
    let span = SUBS * 2 * bins;
    let mut acc = try_filled(nq * span, 0u32, "hamming_histogram: the counters")?;
    let bl = block_len(words);
    let mut buf = BlockBuf::new();
    let mut slot = vec![0u32; bl];
    let mut start = db.start;
    while start < db.end {
        let len = bl.min(db.end - start);
        let block = buf.load(database, words, start, len);
        let dl = &dlabels[start * lwords..(start + len) * lwords];
        for (qi, q) in queries.chunks_exact(words).enumerate() {
            let s = &mut slot[..len];
            kernel.distances(block, q, s);
            let ql = &qlabels[qi * lwords..(qi + 1) * lwords];
            if let [q] = *ql {
                kernel.mark_relevant(s, q, dl, bins as u32);
            } else {
                mark_relevant_n(s, ql, dl, bins as u32);
            }
            count(&mut acc[qi * span..(qi + 1) * span], s, 2 * bins);
        }
        start += len;
    }
    let mut total = try_filled(nq * bins, 0i64, "hamming_histogram: the totals")?;
    let mut relevant = try_filled(nq * bins, 0i64, "hamming_histogram: the relevant counts")?;
    for qi in 0..nq {
        let h = &acc[qi * span..(qi + 1) * span];
        for b in 0..bins {
            let (mut other, mut rel) = (0i64, 0i64);
            for sub in h.chunks_exact(2 * bins) {
                other += sub[b] as i64;
                rel += sub[bins + b] as i64;
            }
            total[qi * bins + b] = other + rel;
            relevant[qi * bins + b] = rel;
        }
    }
    Ok((total, relevant))
}

/// Move the slot of every relevant code (labels sharing a bit with `ql`) up by `bins`.
#[inline]
fn mark_relevant_n(slot: &mut [u32], ql: &[u64], dl: &[u64], bins: u32) {
    for (s, l) in slot.iter_mut().zip(dl.chunks_exact(ql.len())) {
        let rel = ql.iter().zip(l).fold(0, |a, (x, y)| a | (x & y)) != 0;
        *s += bins & 0u32.wrapping_sub(rel as u32);
    }
}

/// Count each slot in one of SUBS interleaved sub-histograms of `width` counters.
#[inline]
fn count(h: &mut [u32], slot: &[u32], width: usize) {
    let (h0, rest) = h.split_at_mut(width);
    let (h1, rest) = rest.split_at_mut(width);
    let (h2, h3) = rest.split_at_mut(width);
    let h3 = &mut h3[..width];
    // Slots are below `width` by construction; the clamp lets the compiler drop bounds checks.
    let top = width - 1;
    let at = |x: u32| (x as usize).min(top);
    let mut chunks = slot.chunks_exact(SUBS);
    for c in &mut chunks {
        h0[at(c[0])] += 1;
        h1[at(c[1])] += 1;
        h2[at(c[2])] += 1;
        h3[at(c[3])] += 1;
    }
    for &x in chunks.remainder() {
        h0[at(x)] += 1;
    }
}
