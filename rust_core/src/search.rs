//! Exact Hamming k-nearest-neighbour and radius search over packed codes.
//!
//! [`HammingIndex`] holds row-major codes (`words` u64 per code) and an id per code. Ids are
//! implicit by default (a contiguous range `start..start + n`, nothing stored per code) and
//! become an explicit list only when the caller gives ids that do not continue the range, or
//! removes codes from the middle.
//!
//! Search is brute force, made fast by the batched kernels of [`crate::bits`]: the database is
//! cut into L1-sized blocks, and every query of a batch runs against a block while it is hot.
//! Per query the kernel compares a whole SIMD register of distances with the current k-th best
//! distance and only the rare codes that beat it reach the scalar top-k heap. Work is split over
//! query batches and, when there are too few queries to feed every thread, over database
//! chunks; chunk results are merged by `(distance, id)`, which is a total order, so results are
//! identical for any thread count.

use crate::bits::{Kernel, Sink};
use crate::error::{
    describe_bytes, grouped, out_of_memory, try_filled, try_with_capacity, CoreError, Result,
};
use rayon::prelude::*;
use std::collections::{BinaryHeap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// File magic of a saved [`HammingIndex`].
pub const MAGIC: [u8; 8] = *b"CMRHIDX\0";
/// Newest file format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 32;
const MAX_WORDS: u32 = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ids {
    /// Code `i` has id `start + i`; nothing stored per code.
    Range { start: i64 },
    /// Code `i` has id `ids[i]`; `ascending` when ids increase with `i`.
    List { ids: Vec<i64>, ascending: bool },
}

/// Read-only view of the ids, cheap to copy into the search loops.
#[derive(Clone, Copy, Debug)]
enum IdView<'a> {
    Range(i64),
    List(&'a [i64]),
}

impl IdView<'_> {
    #[inline]
    fn get(self, pos: usize) -> i64 {
        match self {
            IdView::Range(start) => start + pos as i64,
            IdView::List(ids) => ids[pos],
        }
    }
}

/// An exact Hamming index over packed binary codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HammingIndex {
    words: usize,
    codes: Vec<u64>,
    ids: Ids,
}

fn is_contiguous(ids: &[i64]) -> bool {
    ids.windows(2).all(|w| w[0].checked_add(1) == Some(w[1]))
}

fn is_ascending(ids: &[i64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

/// Grow `v` to hold `extra` more items, by at least a quarter of its length: amortised O(1)
/// appends while keeping slack (and so memory) within 1.25x. [`CoreError::OutOfMemory`] (naming
/// `what`) when memory runs out.
fn reserve_growth<T>(v: &mut Vec<T>, extra: usize, what: &str) -> Result<()> {
    let need = v.len().saturating_add(extra);
    if need > v.capacity() {
        let target = need.max(v.len() + v.len() / 4);
        if v.try_reserve_exact(target - v.len()).is_err() {
            // Without the slack, if that fits.
            v.try_reserve_exact(extra)
                .map_err(|_| out_of_memory(what, need as u128, std::mem::size_of::<T>()))?;
        }
    }
    Ok(())
}

/// Largest id an index accepts; ids are `0..=MAX_ID` (the whole non-negative `i64` range).
pub const MAX_ID: i64 = i64::MAX;

/// Release slack beyond a quarter of the length.
fn trim<T>(v: &mut Vec<T>) {
    if v.capacity() > v.len() + v.len() / 4 + 64 {
        v.shrink_to(v.len() + v.len() / 4);
    }
}

impl HammingIndex {
    /// An empty index for codes of `words` 64-bit words (`64 * words` bits).
    pub fn new(words: usize) -> Result<HammingIndex> {
        if words == 0 {
            return Err(CoreError::invalid(
                "codes",
                "codes must have at least one 64-bit word per row",
            ));
        }
        Ok(HammingIndex {
            words,
            codes: Vec::new(),
            ids: Ids::Range { start: 0 },
        })
    }

    /// An index holding `codes` (row-major, `words` per row) with `ids` (default `0..n`).
    pub fn with_codes(codes: &[u64], words: usize, ids: Option<&[i64]>) -> Result<HammingIndex> {
        let mut index = HammingIndex::new(words)?;
        index.add(codes, ids)?;
        Ok(index)
    }

    /// Words per code.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Bits per code.
    pub fn n_bits(&self) -> usize {
        self.words * 64
    }

    /// Number of codes held.
    pub fn len(&self) -> usize {
        self.codes.len() / self.words
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The codes, row-major.
    pub fn codes(&self) -> &[u64] {
        &self.codes
    }

    /// Whether ids are stored per code (`false`: an implicit contiguous range).
    pub fn has_explicit_ids(&self) -> bool {
        matches!(self.ids, Ids::List { .. })
    }

    /// Id of the code at row `pos`.
    pub fn id(&self, pos: usize) -> i64 {
        assert!(pos < self.len(), "row {pos} out of range");
        self.id_view().get(pos)
    }

    /// Every id, in row order.
    pub fn ids(&self) -> Result<Vec<i64>> {
        let n = self.len();
        let mut out = try_with_capacity(n, "HammingIndex.ids: the ids")?;
        match &self.ids {
            // start + n - 1 <= MAX_ID: the range never overflows.
            Ids::Range { start } => out.extend((0..n as i64).map(|i| start + i)),
            Ids::List { ids, .. } => out.extend_from_slice(ids),
        }
        Ok(out)
    }

    /// Heap bytes held (codes, stored ids) plus the struct itself.
    pub fn memory_bytes(&self) -> usize {
        let ids = match &self.ids {
            Ids::Range { .. } => 0,
            Ids::List { ids, .. } => ids.capacity() * 8,
        };
        std::mem::size_of::<Self>() + self.codes.capacity() * 8 + ids
    }

    fn id_view(&self) -> IdView<'_> {
        match &self.ids {
            Ids::Range { start } => IdView::Range(*start),
            Ids::List { ids, .. } => IdView::List(ids),
        }
    }

    /// Ids increase with the row, so a scan in row order meets ties in id order.
    fn ids_ascending(&self) -> bool {
        match &self.ids {
            Ids::Range { .. } => true,
            Ids::List { ascending, .. } => *ascending,
        }
    }

    /// Largest id (None when empty).
    fn largest_id(&self) -> Option<i64> {
        let n = self.len();
        if n == 0 {
            return None;
        }
        Some(match &self.ids {
            Ids::Range { start } => start + (n as i64 - 1),
            Ids::List {
                ids,
                ascending: true,
            } => ids[n - 1],
            Ids::List { ids, .. } => ids.iter().copied().max().unwrap_or(0),
        })
    }

    /// Back to an implicit range when the stored ids happen to be one.
    fn normalise(&mut self) {
        if self.is_empty() {
            self.ids = Ids::Range { start: 0 };
            return;
        }
        if let Ids::List {
            ids,
            ascending: true,
        } = &self.ids
        {
            if ids[ids.len() - 1] - ids[0] == ids.len() as i64 - 1 {
                self.ids = Ids::Range { start: ids[0] };
            }
        }
    }

    fn check_width(&self, arg: &'static str, data: &[u64]) -> Result<usize> {
        if !data.len().is_multiple_of(self.words) {
            return Err(CoreError::invalid(
                arg,
                format!(
                    "holds {} words, not a whole number of {}-word ({}-bit) codes",
                    data.len(),
                    self.words,
                    self.n_bits()
                ),
            ));
        }
        Ok(data.len() / self.words)
    }

    /// Append `codes` (row-major, `words` per row). Without `ids` they continue the ids (largest
    /// id + 1, ...); with `ids`, these must be non-negative and new. Nothing changes on error.
    pub fn add(&mut self, codes: &[u64], ids: Option<&[i64]>) -> Result<()> {
        let m = self.check_width("codes", codes)?;
        let n = self.len();
        match ids {
            None => {
                if m == 0 {
                    return Ok(());
                }
                // Automatic ids continue after the largest id; they must stay <= MAX_ID.
                let first = match self.largest_id() {
                    None => 0,
                    Some(largest) => largest.checked_add(1).ok_or_else(|| {
                        CoreError::invalid(
                            "ids",
                            format!(
                                "no automatic id is left: the largest id is {MAX_ID} (2**63 - 1), \
                                 the largest an index holds; pass explicit ids"
                            ),
                        )
                    })?,
                };
                if first.checked_add(m as i64 - 1).is_none() {
                    return Err(CoreError::invalid(
                        "ids",
                        format!(
                            "{m} automatic ids from {first} would pass {MAX_ID} (2**63 - 1), \
                             the largest id an index holds; pass explicit ids"
                        ),
                    ));
                }
                reserve_growth(&mut self.codes, codes.len(), "HammingIndex.add: the codes")?;
                if n == 0 {
                    self.ids = Ids::Range { start: 0 };
                } else if let Ids::List { ids, .. } = &mut self.ids {
                    reserve_growth(ids, m, "HammingIndex.add: the ids")?;
                    ids.extend((0..m as i64).map(|i| first + i));
                }
            }
            Some(new) => {
                self.check_new_ids(new, m)?;
                if m == 0 {
                    return Ok(());
                }
                let new_asc = is_ascending(new);
                reserve_growth(&mut self.codes, codes.len(), "HammingIndex.add: the codes")?;
                if n == 0 {
                    self.ids = if is_contiguous(new) {
                        Ids::Range { start: new[0] }
                    } else {
                        Ids::List {
                            ids: new.to_vec(),
                            ascending: new_asc,
                        }
                    };
                } else {
                    match &mut self.ids {
                        Ids::Range { start } => {
                            let last = *start + (n as i64 - 1);
                            if !(last.checked_add(1) == Some(new[0]) && is_contiguous(new)) {
                                let mut all: Vec<i64> =
                                    try_with_capacity(n + m, "HammingIndex.add: the ids")?;
                                all.extend((0..n as i64).map(|i| *start + i));
                                all.extend_from_slice(new);
                                let ascending = new_asc && new[0] > last;
                                self.ids = Ids::List {
                                    ids: all,
                                    ascending,
                                };
                            }
                        }
                        Ids::List { ids, ascending } => {
                            *ascending = *ascending && new_asc && new[0] > ids[n - 1];
                            reserve_growth(ids, m, "HammingIndex.add: the ids")?;
                            ids.extend_from_slice(new);
                        }
                    }
                }
            }
        }
        self.codes.extend_from_slice(codes);
        self.normalise();
        Ok(())
    }

    fn check_new_ids(&self, new: &[i64], m: usize) -> Result<()> {
        if new.len() != m {
            return Err(CoreError::invalid(
                "ids",
                format!("has {} ids for {m} codes", new.len()),
            ));
        }
        if let Some(pos) = new.iter().position(|&id| id < 0) {
            return Err(CoreError::invalid(
                "ids",
                format!(
                    "ids must be non-negative (-1 means 'no result'); got {} at position {pos}",
                    new[pos]
                ),
            ));
        }
        let mut sorted = new.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(CoreError::invalid(
                "ids",
                format!("id {} appears more than once", w[0]),
            ));
        }
        let n = self.len();
        if n == 0 || sorted.is_empty() {
            return Ok(());
        }
        let clash = match &self.ids {
            Ids::Range { start } => {
                let last = *start + (n as i64 - 1);
                sorted
                    .iter()
                    .copied()
                    .find(|id| (*start..=last).contains(id))
            }
            Ids::List { ids, .. } => ids
                .iter()
                .copied()
                .find(|id| sorted.binary_search(id).is_ok()),
        };
        match clash {
            Some(id) => Err(CoreError::invalid(
                "ids",
                format!("id {id} is already in the index"),
            )),
            None => Ok(()),
        }
    }

    /// Remove the codes with these ids (ids not present are ignored; repeats count once).
    /// Returns how many codes were removed; the remaining codes keep their order.
    pub fn remove(&mut self, ids: &[i64]) -> usize {
        let n = self.len();
        if n == 0 || ids.is_empty() {
            return 0;
        }
        let mut rows: Vec<usize> = match &self.ids {
            Ids::Range { start } => ids
                .iter()
                .filter_map(|&id| id.checked_sub(*start))
                .filter(|&p| p >= 0 && (p as u64) < n as u64)
                .map(|p| p as usize)
                .collect(),
            Ids::List { ids: have, .. } => {
                let drop: HashSet<i64> = ids.iter().copied().collect();
                have.iter()
                    .enumerate()
                    .filter(|(_, id)| drop.contains(id))
                    .map(|(p, _)| p)
                    .collect()
            }
        };
        rows.sort_unstable();
        rows.dedup();
        let r = rows.len();
        if r == 0 {
            return 0;
        }
        let w = self.words;
        if let Ids::Range { start } = self.ids {
            if rows[r - 1] == r - 1 {
                // A prefix: the range just starts later.
                self.codes.drain(..r * w);
                self.ids = Ids::Range {
                    start: start + r as i64,
                };
                trim(&mut self.codes);
                self.normalise();
                return r;
            }
            if rows[0] == n - r {
                self.codes.truncate((n - r) * w);
                trim(&mut self.codes);
                self.normalise();
                return r;
            }
            self.ids = Ids::List {
                ids: (0..n as i64).map(|i| start + i).collect(),
                ascending: true,
            };
        }
        // Compact in place, keeping order.
        let mut next_drop = rows.iter().copied().peekable();
        let mut kept = 0;
        for row in 0..n {
            if next_drop.peek() == Some(&row) {
                next_drop.next();
                continue;
            }
            if kept != row {
                self.codes.copy_within(row * w..(row + 1) * w, kept * w);
                if let Ids::List { ids, .. } = &mut self.ids {
                    ids[kept] = ids[row];
                }
            }
            kept += 1;
        }
        self.codes.truncate(kept * w);
        trim(&mut self.codes);
        if let Ids::List { ids, ascending } = &mut self.ids {
            ids.truncate(kept);
            trim(ids);
            // Removing rows keeps ascending ids ascending, and may make unordered ones ordered.
            *ascending = *ascending || is_ascending(ids);
        }
        self.normalise();
        r
    }

    /// Exact k nearest neighbours of each query (row-major, `words` per row), with the
    /// process-wide SIMD path. Returns `(distances, ids)`, each `q * k`, row `i` sorted by
    /// `(distance, id)` ascending.
    pub fn search(
        &self,
        queries: &[u64],
        k: i64,
        pool: &rayon::ThreadPool,
    ) -> Result<(Vec<i32>, Vec<i64>)> {
        self.search_with(Kernel::active(), queries, k, pool)
    }

    /// [`HammingIndex::search`] with an explicit kernel (tests, benchmarks).
    pub fn search_with(
        &self,
        kernel: Kernel,
        queries: &[u64],
        k: i64,
        pool: &rayon::ThreadPool,
    ) -> Result<(Vec<i32>, Vec<i64>)> {
        if self.is_empty() {
            return Err(CoreError::invalid(
                "index",
                "the index is empty; add codes first",
            ));
        }
        let n = self.len();
        if k <= 0 || k as u64 > n as u64 {
            return Err(CoreError::invalid(
                "k",
                format!("must be between 1 and the number of indexed codes ({n}), got {k}"),
            ));
        }
        let k = k as usize;
        let nq = self.check_width("queries", queries)?;
        if nq == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        // The result (12 bytes per neighbour) first: it is what a huge `k` or query count asks.
        let cells = nq.saturating_mul(k);
        let mut dists: Vec<i32> = try_filled(cells, 0, "search: the distances")?;
        let mut out_ids: Vec<i64> = try_filled(cells, 0, "search: the ids")?;
        // Per task a heap of k per query: fewer queries per batch when k is large.
        let max_batch = (1usize << 22).div_ceil(k).clamp(1, 256);
        let plan = Plan::new(
            nq,
            n,
            pool.current_num_threads(),
            max_batch,
            Plan::MIN_CHUNK,
        );
        let strict = self.ids_ascending();
        let ids = self.id_view();
        let parts: Vec<Vec<Vec<(u32, i64)>>> = pool.install(|| {
            (0..plan.tasks())
                .into_par_iter()
                .map(|t| {
                    let (qr, dr) = plan.task(t);
                    let mut sinks: Vec<TopK<'_>> =
                        try_with_capacity(qr.len(), "search: the heaps")?;
                    for _ in qr.clone() {
                        sinks.push(TopK::new(k, strict, ids)?);
                    }
                    self.scan(
                        kernel,
                        &queries[qr.start * self.words..qr.end * self.words],
                        dr,
                        &mut sinks,
                    );
                    Ok(sinks.into_iter().map(TopK::into_sorted).collect())
                })
                .collect::<Result<_>>()
        })?;
        let rows = dists
            .par_chunks_mut(k)
            .zip(out_ids.par_chunks_mut(k))
            .enumerate();
        pool.install(|| {
            rows.try_for_each(|(q, (drow, irow))| {
                let b = q / plan.qb;
                let local = q - b * plan.qb;
                let merged;
                let best: &[(u32, i64)] = if plan.n_chunks == 1 {
                    &parts[b][local]
                } else {
                    let mut all: Vec<(u32, i64)> =
                        try_with_capacity(plan.n_chunks * k, "search: merging the chunks")?;
                    for c in 0..plan.n_chunks {
                        all.extend_from_slice(&parts[b * plan.n_chunks + c][local]);
                    }
                    all.sort_unstable();
                    merged = all;
                    &merged[..k]
                };
                for (j, &(d, id)) in best.iter().take(k).enumerate() {
                    drow[j] = d as i32;
                    irow[j] = id;
                }
                Ok::<(), CoreError>(())
            })
        })?;
        Ok((dists, out_ids))
    }

    /// Every code within `radius` (inclusive) of each query. Returns FAISS-style CSR
    /// `(lims, distances, ids)`: the results of query `i` are `lims[i]..lims[i + 1]`, sorted by
    /// `(distance, id)`.
    pub fn range_search(
        &self,
        queries: &[u64],
        radius: i64,
        pool: &rayon::ThreadPool,
    ) -> Result<(Vec<i64>, Vec<i32>, Vec<i64>)> {
        self.range_search_with(Kernel::active(), queries, radius, pool)
    }

    /// [`HammingIndex::range_search`] with an explicit kernel (tests, benchmarks).
    pub fn range_search_with(
        &self,
        kernel: Kernel,
        queries: &[u64],
        radius: i64,
        pool: &rayon::ThreadPool,
    ) -> Result<(Vec<i64>, Vec<i32>, Vec<i64>)> {
        if radius < 0 || radius as u64 > self.n_bits() as u64 {
            return Err(CoreError::invalid(
                "radius",
                format!(
                    "must be between 0 and the code length ({} bits), got {radius}",
                    self.n_bits()
                ),
            ));
        }
        let nq = self.check_width("queries", queries)?;
        let n = self.len();
        if nq == 0 || n == 0 {
            return Ok((vec![0; nq + 1], Vec::new(), Vec::new()));
        }
        let plan = Plan::new(nq, n, pool.current_num_threads(), 256, Plan::MIN_CHUNK);
        let ids = self.id_view();
        let failed = AtomicBool::new(false);
        let parts: Vec<Vec<Vec<(u32, i64)>>> = pool.install(|| {
            (0..plan.tasks())
                .into_par_iter()
                .map(|t| {
                    let (qr, dr) = plan.task(t);
                    let mut sinks: Vec<Within<'_>> = qr
                        .clone()
                        .map(|_| Within {
                            hits: Vec::new(),
                            radius,
                            ids,
                            failed: &failed,
                        })
                        .collect();
                    self.scan(
                        kernel,
                        &queries[qr.start * self.words..qr.end * self.words],
                        dr,
                        &mut sinks,
                    );
                    sinks
                        .into_iter()
                        .map(|s| {
                            let mut h = s.hits;
                            h.sort_unstable();
                            h
                        })
                        .collect()
                })
                .collect()
        });
        let found: u128 = parts.iter().flatten().map(|h| h.len() as u128).sum();
        if failed.load(Ordering::Relaxed) {
            return Err(CoreError::OutOfMemory(format!(
                "range_search (radius {radius}): the result does not fit in memory: {} hits, {}, \
                 were found before an allocation failed, and there are more; use a smaller radius \
                 or fewer queries at a time",
                grouped(found),
                describe_bytes(found * 12)
            )));
        }
        let per_query = |q: usize| {
            let b = q / plan.qb;
            let local = q - b * plan.qb;
            (0..plan.n_chunks).map(move |c| (b * plan.n_chunks + c, local))
        };
        let mut lims = try_with_capacity(nq + 1, "range_search: the offsets")?;
        lims.push(0i64);
        let mut total = 0usize;
        for q in 0..nq {
            total += per_query(q).map(|(t, l)| parts[t][l].len()).sum::<usize>();
            lims.push(total as i64);
        }
        let mut dists = try_with_capacity(total, "range_search: the distances")?;
        let mut out_ids = try_with_capacity(total, "range_search: the ids")?;
        let mut merged = Vec::new();
        for q in 0..nq {
            let src: &[(u32, i64)] = if plan.n_chunks == 1 {
                &parts[q / plan.qb][q % plan.qb]
            } else {
                merged.clear();
                for (t, l) in per_query(q) {
                    merged.extend_from_slice(&parts[t][l]);
                }
                merged.sort_unstable();
                &merged
            };
            dists.extend(src.iter().map(|&(d, _)| d as i32));
            out_ids.extend(src.iter().map(|&(_, id)| id));
        }
        Ok((lims, dists, out_ids))
    }

    /// Run every query of `queries` against the rows `db` (the scanner reads them in blocks
    /// that stay in cache, each block against every query).
    fn scan<S: Sink>(&self, kernel: Kernel, queries: &[u64], db: Range<usize>, sinks: &mut [S]) {
        kernel
            .scanner(queries, self.words)
            .scan(&self.codes, db, sinks);
    }

    /// Write the index to `path` atomically (a temporary file in the same folder, then rename).
    ///
    /// Layout, little-endian: magic `CMRHIDX\0`, format version u32, words u32, n u64, id mode
    /// u32 (0 = implicit range, 1 = explicit list), u32 zero; then the start id i64 (range) or
    /// `n` ids i64 (list); then `n * words` code words u64; then a CRC-32 of all bytes before it.
    pub fn save(&self, path: &Path) -> Result<()> {
        let name = path.file_name().ok_or_else(|| {
            io_error(
                path,
                std::io::Error::new(ErrorKind::InvalidInput, "not a file path"),
            )
        })?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{}-{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let result = self
            .write_to(&tmp, path)
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io_error(path, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Write to `tmp`; errors name `path`, the file the caller asked for.
    fn write_to(&self, tmp: &Path, path: &Path) -> Result<()> {
        let file = File::create(tmp).map_err(|e| io_error(path, e))?;
        let mut w = CrcWriter {
            inner: BufWriter::with_capacity(1 << 16, file),
            crc: crc32fast::Hasher::new(),
        };
        let wr = |w: &mut CrcWriter<BufWriter<File>>, b: &[u8]| {
            w.write_all(b).map_err(|e| io_error(path, e))
        };
        wr(&mut w, &MAGIC)?;
        wr(&mut w, &FORMAT_VERSION.to_le_bytes())?;
        wr(&mut w, &(self.words as u32).to_le_bytes())?;
        wr(&mut w, &(self.len() as u64).to_le_bytes())?;
        match &self.ids {
            Ids::Range { start } => {
                wr(&mut w, &0u32.to_le_bytes())?;
                wr(&mut w, &0u32.to_le_bytes())?;
                wr(&mut w, &start.to_le_bytes())?;
            }
            Ids::List { ids, .. } => {
                wr(&mut w, &1u32.to_le_bytes())?;
                wr(&mut w, &0u32.to_le_bytes())?;
                write_words(&mut w, ids.iter().map(|&x| x as u64))
                    .map_err(|e| io_error(path, e))?;
            }
        }
        write_words(&mut w, self.codes.iter().copied()).map_err(|e| io_error(path, e))?;
        let crc = w.crc.clone().finalize();
        let mut inner = w.inner;
        inner
            .write_all(&crc.to_le_bytes())
            .map_err(|e| io_error(path, e))?;
        let file = inner
            .into_inner()
            .map_err(|e| io_error(path, e.into_error()))?;
        file.sync_all().map_err(|e| io_error(path, e))?;
        Ok(())
    }

    /// Read an index written by [`HammingIndex::save`]. Refuses (as [`CoreError::CorruptFile`])
    /// a foreign file, a newer format version, a truncated or oversized file, and any checksum
    /// mismatch; I/O failures are [`CoreError::Io`].
    pub fn load(path: &Path) -> Result<HammingIndex> {
        let p = path.display();
        let corrupt = |what: String| CoreError::CorruptFile(format!("{p}: {what}"));
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
        let mut r = CrcReader {
            inner: BufReader::with_capacity(1 << 16, file),
            crc: crc32fast::Hasher::new(),
        };
        let read_err = |e: std::io::Error| match e.kind() {
            ErrorKind::UnexpectedEof => corrupt("truncated: the file ended early".to_string()),
            ErrorKind::OutOfMemory => CoreError::OutOfMemory(format!(
                "HammingIndex.load: {p}: the index ({}) does not fit in memory",
                describe_bytes(file_len as u128)
            )),
            _ => io_error(path, e),
        };

        let mut magic = [0u8; 8];
        let got = read_up_to(&mut r, &mut magic).map_err(|e| io_error(path, e))?;
        if magic[..got] != MAGIC[..got] || got == 0 {
            return Err(corrupt(
                "not a cmrops HammingIndex file (bad magic bytes)".to_string(),
            ));
        }
        if got < 8 {
            return Err(corrupt(format!(
                "truncated: {file_len} bytes, not even a header"
            )));
        }
        let mut head = [0u8; (HEADER_LEN - 8) as usize];
        let got = read_up_to(&mut r, &mut head).map_err(|e| io_error(path, e))?;
        let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
        if got >= 4 {
            let version = le32(&head[0..4]);
            if version > FORMAT_VERSION {
                return Err(corrupt(format!(
                    "format version {version} is newer than this cmrops reads (up to {FORMAT_VERSION}); upgrade cmrops"
                )));
            }
            if version == 0 {
                return Err(corrupt("invalid format version 0".to_string()));
            }
        }
        if got < head.len() {
            return Err(corrupt(format!(
                "truncated: {file_len} bytes, not even a header"
            )));
        }
        let words = le32(&head[4..8]);
        let n = u64::from_le_bytes(head[8..16].try_into().unwrap());
        let mode = le32(&head[16..20]);
        let reserved = le32(&head[20..24]);
        if words == 0 || words > MAX_WORDS {
            return Err(corrupt(format!(
                "invalid code width of {words} words in the header"
            )));
        }
        if mode > 1 || reserved != 0 {
            return Err(corrupt(format!(
                "invalid id mode {mode}/{reserved} in the header"
            )));
        }
        let id_words = if mode == 0 { Some(1) } else { n.checked_mul(1) };
        let expected = id_words
            .and_then(|iw| n.checked_mul(words as u64).and_then(|c| c.checked_add(iw)))
            .and_then(|body| body.checked_mul(8))
            .and_then(|b| b.checked_add(HEADER_LEN + 4));
        let Some(expected) = expected.filter(|&e| e <= isize::MAX as u64) else {
            return Err(corrupt(format!(
                "header claims {n} codes of {words} words, more than any file can hold"
            )));
        };
        if file_len < expected {
            return Err(corrupt(format!(
                "truncated: {file_len} bytes, but the header's {n} codes of {} bits need {expected}",
                words as u64 * 64
            )));
        }
        if file_len > expected {
            return Err(corrupt(format!(
                "size mismatch: {file_len} bytes, but the header's {n} codes of {} bits need exactly {expected}",
                words as u64 * 64
            )));
        }
        let n = n as usize;
        let words = words as usize;
        let ids = if mode == 0 {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).map_err(read_err)?;
            Ids::Range {
                start: i64::from_le_bytes(b),
            }
        } else {
            let ids: Vec<i64> = read_words(&mut r, n)
                .map_err(read_err)?
                .into_iter()
                .map(|x| x as i64)
                .collect();
            let ascending = is_ascending(&ids);
            Ids::List { ids, ascending }
        };
        let codes = read_words(&mut r, n * words).map_err(read_err)?;
        let computed = r.crc.clone().finalize();
        let mut b = [0u8; 4];
        r.inner.read_exact(&mut b).map_err(read_err)?;
        let stored = u32::from_le_bytes(b);
        if stored != computed {
            return Err(corrupt(format!(
                "checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupted"
            )));
        }
        match &ids {
            Ids::Range { start } => {
                if *start < 0 || (n > 0 && start.checked_add(n as i64 - 1).is_none()) {
                    return Err(corrupt(format!(
                        "invalid id range: {n} ids from {start} pass {MAX_ID} (2**63 - 1)"
                    )));
                }
            }
            Ids::List { ids, ascending } => {
                if ids.iter().any(|&x| x < 0) {
                    return Err(corrupt("negative ids".to_string()));
                }
                if !ascending {
                    let mut s = ids.clone();
                    s.sort_unstable();
                    if s.windows(2).any(|w| w[0] == w[1]) {
                        return Err(corrupt("repeated ids".to_string()));
                    }
                }
            }
        }
        let mut index = HammingIndex { words, codes, ids };
        index.normalise();
        Ok(index)
    }
}

static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn io_error(path: &Path, e: std::io::Error) -> CoreError {
    CoreError::Io {
        kind: e.kind(),
        msg: format!("{}: {e}", PathBuf::from(path).display()),
    }
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn write_words<W: Write>(w: &mut W, words: impl Iterator<Item = u64>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 15);
    for x in words {
        buf.extend_from_slice(&x.to_le_bytes());
        if buf.len() >= 1 << 15 {
            w.write_all(&buf)?;
            buf.clear();
        }
    }
    w.write_all(&buf)
}

fn read_words<R: Read>(r: &mut R, count: usize) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    out.try_reserve_exact(count).map_err(|_| {
        std::io::Error::new(
            ErrorKind::OutOfMemory,
            format!("{} words do not fit in memory", count),
        )
    })?;
    let mut buf = vec![0u8; 1 << 15];
    let mut left = count;
    while left > 0 {
        let take = left.min(buf.len() / 8);
        r.read_exact(&mut buf[..take * 8])?;
        out.extend(
            buf[..take * 8]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap())),
        );
        left -= take;
    }
    Ok(out)
}

/// The k best `(distance, id)` seen so far, as a max-heap.
struct TopK<'a> {
    heap: BinaryHeap<(u32, i64)>,
    k: usize,
    /// Ids ascend with rows: a code tying the worst distance can never beat it.
    strict: bool,
    ids: IdView<'a>,
    threshold: i64,
}

impl<'a> TopK<'a> {
    fn new(k: usize, strict: bool, ids: IdView<'a>) -> Result<TopK<'a>> {
        let mut heap = BinaryHeap::new();
        heap.try_reserve_exact(k + 1)
            .map_err(|_| out_of_memory("search: the heap of k neighbours", k as u128 + 1, 16))?;
        Ok(TopK {
            heap,
            k,
            strict,
            ids,
            threshold: i64::MAX,
        })
    }

    fn update(&mut self) {
        if let Some(&(worst, _)) = self.heap.peek() {
            self.threshold = worst as i64 - self.strict as i64;
        }
    }

    fn into_sorted(self) -> Vec<(u32, i64)> {
        self.heap.into_sorted_vec()
    }
}

impl Sink for TopK<'_> {
    #[inline]
    fn threshold(&self) -> i64 {
        self.threshold
    }

    #[inline]
    fn offer(&mut self, i: usize, dist: u32) {
        let cand = (dist, self.ids.get(i));
        if self.heap.len() < self.k {
            self.heap.push(cand);
            if self.heap.len() == self.k {
                self.update();
            }
        } else {
            let replaced = match self.heap.peek_mut() {
                Some(mut worst) if cand < *worst => {
                    *worst = cand;
                    true
                }
                _ => false,
            };
            if replaced {
                self.update();
            }
        }
    }
}

/// Every `(distance, id)` within a radius; once memory runs out it sets `failed` and asks
/// the kernels (of every task) to stop.
struct Within<'a> {
    hits: Vec<(u32, i64)>,
    radius: i64,
    ids: IdView<'a>,
    failed: &'a AtomicBool,
}

impl Sink for Within<'_> {
    #[inline]
    fn threshold(&self) -> i64 {
        if self.failed.load(Ordering::Relaxed) {
            -1
        } else {
            self.radius
        }
    }

    #[inline]
    fn offer(&mut self, i: usize, dist: u32) {
        if dist as i64 > self.radius {
            return;
        }
        if self.hits.len() == self.hits.capacity()
            && self
                .hits
                .try_reserve(self.hits.capacity().clamp(64, 1 << 24))
                .is_err()
        {
            self.failed.store(true, Ordering::Relaxed);
            return;
        }
        self.hits.push((dist, self.ids.get(i)));
    }
}

/// How a (queries x database) job splits into tasks: `n_qb` query batches of `qb` queries
/// times `n_chunks` database chunks of `chunk` rows. Task `t` is batch `t / n_chunks`, chunk
/// `t % n_chunks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub nq: usize,
    pub n: usize,
    pub qb: usize,
    pub n_qb: usize,
    pub chunk: usize,
    pub n_chunks: usize,
}

impl Plan {
    /// Smallest database chunk worth a task of its own.
    pub const MIN_CHUNK: usize = 16_384;
    /// Largest database chunk (per-task counters stay within u32).
    pub const MAX_CHUNK: usize = 1 << 30;

    /// Batches of at most `max_batch` queries; about four batches per thread (for work
    /// stealing to even out) while batches keep at least 32 queries, and at least one per
    /// thread while there are queries; when batches alone cannot keep the threads busy,
    /// database chunks of at least `min_chunk` rows too.
    pub fn new(nq: usize, n: usize, threads: usize, max_batch: usize, min_chunk: usize) -> Plan {
        let threads = threads.max(1);
        let nq1 = nq.max(1);
        let n_qb = nq1
            .div_ceil(max_batch.max(1))
            .max((4 * threads).min(nq1.div_ceil(32)))
            .max(threads.min(nq1));
        let qb = nq1.div_ceil(n_qb);
        let n_qb = nq1.div_ceil(qb);
        let mut n_chunks = 1;
        if threads > 1 && n_qb < 2 * threads {
            n_chunks = (2 * threads)
                .div_ceil(n_qb)
                .min(n.div_ceil(min_chunk.max(1)))
                .max(1);
        }
        n_chunks = n_chunks.max(n.div_ceil(Self::MAX_CHUNK));
        let chunk = n.div_ceil(n_chunks).next_multiple_of(64).max(64);
        let n_chunks = n.div_ceil(chunk).max(1);
        Plan {
            nq,
            n,
            qb,
            n_qb,
            chunk,
            n_chunks,
        }
    }

    pub fn tasks(&self) -> usize {
        self.n_qb * self.n_chunks
    }

    /// Query rows and database rows of task `t`.
    pub fn task(&self, t: usize) -> (Range<usize>, Range<usize>) {
        let (b, c) = (t / self.n_chunks, t % self.n_chunks);
        let q0 = (b * self.qb).min(self.nq);
        let d0 = (c * self.chunk).min(self.n);
        (
            q0..(q0 + self.qb).min(self.nq),
            d0..(d0 + self.chunk).min(self.n),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_everything_once() {
        for nq in [0usize, 1, 2, 3, 7, 100, 1000, 1001] {
            for n in [0usize, 1, 100, 20_000, 1_000_000] {
                for threads in [1usize, 2, 3, 8] {
                    let p = Plan::new(nq, n, threads, 256, Plan::MIN_CHUNK);
                    // Each query's database ranges tile 0..n exactly once.
                    let mut per_query: Vec<Vec<Range<usize>>> = vec![Vec::new(); nq];
                    for t in 0..p.tasks() {
                        let (qr, dr) = p.task(t);
                        for q in qr {
                            per_query[q].push(dr.clone());
                        }
                    }
                    for ranges in &mut per_query {
                        ranges.retain(|r| !r.is_empty());
                        ranges.sort_by_key(|r| r.start);
                        let mut at = 0;
                        for r in ranges.iter() {
                            assert_eq!(r.start, at, "{nq} {n} {threads} {p:?}");
                            at = r.end;
                        }
                        assert_eq!(at, n, "{nq} {n} {threads} {p:?}");
                    }
                    assert!(p.qb >= 1 && p.qb <= 256);
                }
            }
        }
    }

    #[test]
    fn range_ids_stay_implicit() {
        let mut ix = HammingIndex::with_codes(&[1, 2, 3, 4], 1, None).unwrap();
        assert!(!ix.has_explicit_ids());
        ix.add(&[5], Some(&[4])).unwrap();
        assert!(!ix.has_explicit_ids());
        assert_eq!(ix.remove(&[0]), 1);
        assert!(!ix.has_explicit_ids());
        assert_eq!(ix.remove(&[4, 4, 99]), 1);
        assert!(!ix.has_explicit_ids());
        assert_eq!(ix.ids().unwrap(), vec![1, 2, 3]);
        assert_eq!(ix.remove(&[2]), 1);
        assert!(ix.has_explicit_ids());
        assert_eq!(ix.ids().unwrap(), vec![1, 3]);
        ix.add(&[9], None).unwrap();
        assert_eq!(ix.ids().unwrap(), vec![1, 3, 4]);
    }
}
