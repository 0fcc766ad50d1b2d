//! Where the near-duplicate search puts the pairs it finds: collected into per-task vectors
//! that grow only while memory allows (and a caller's limit holds), or merged at once into
//! groups by a concurrent union-find, which needs no memory per pair.

use crate::error::{describe_bytes, grouped, CoreError, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The pairs of one parallel task.
pub(crate) trait PairOut: Send {
    /// Record the pair `(a, b)` (already ordered as the caller wants it).
    fn push(&mut self, a: usize, b: usize);
    /// The job should stop: memory ran out or a limit was passed (checked now and then).
    fn stopped(&self) -> bool;
    /// Nothing worth keeping from this task.
    fn is_empty(&self) -> bool;
}

/// Growth step of a task's pair vector: at most 2^24 pairs (256 MiB) at a time.
const MAX_STEP: usize = 1 << 24;

/// What the tasks of one collecting job share: whether to stop, and why.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Most pairs the caller accepts.
    limit: u64,
    /// Pairs the tasks reported so far (each reports when it grows, so this lags a little).
    found: AtomicU64,
    stop: AtomicBool,
    alloc_failed: AtomicBool,
}

impl Budget {
    pub(crate) fn new(limit: Option<u64>) -> Budget {
        Budget {
            limit: limit.unwrap_or(u64::MAX),
            found: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            alloc_failed: AtomicBool::new(false),
        }
    }

    /// The error for a job that stopped early (or found more than the limit), with the pairs
    /// it had found: `what` names the call and the radius.
    pub(crate) fn check(&self, found: u64, what: &str) -> Result<()> {
        let bytes = |n: u64| describe_bytes(n as u128 * 16);
        if self.alloc_failed.load(Ordering::Relaxed) {
            return Err(CoreError::OutOfMemory(format!(
                "{what}: the result does not fit in memory: {} pairs, {}, were found before an \
                 allocation failed, and there are more; use a smaller radius, or duplicate_groups \
                 to group the codes without listing every pair",
                grouped(found as u128),
                bytes(found)
            )));
        }
        if found > self.limit {
            return Err(CoreError::invalid(
                "max_pairs",
                format!(
                    "{what}: more than {} pairs are within the radius (at least {}, {}); raise \
                     max_pairs or use a smaller radius, or duplicate_groups to group the codes \
                     without listing every pair",
                    self.limit,
                    grouped(found as u128),
                    bytes(found)
                ),
            ));
        }
        Ok(())
    }
}

/// Collects one task's pairs; its vector grows fallibly and the shared [`Budget`] stops every
/// task once memory runs out or the limit is passed.
pub(crate) struct Collect<'a> {
    pub(crate) pairs: Vec<[i64; 2]>,
    budget: &'a Budget,
    reported: usize,
}

impl<'a> Collect<'a> {
    pub(crate) fn new(budget: &'a Budget) -> Collect<'a> {
        Collect {
            pairs: Vec::new(),
            budget,
            reported: 0,
        }
    }

    /// Report the pairs found since the last report, then grow; false when the job must stop.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) -> bool {
        let b = self.budget;
        let new = (self.pairs.len() - self.reported) as u64;
        self.reported = self.pairs.len();
        let found = b.found.fetch_add(new, Ordering::Relaxed) + new;
        if b.stop.load(Ordering::Relaxed) || found > b.limit {
            b.stop.store(true, Ordering::Relaxed);
            return false;
        }
        let step = self.pairs.capacity().clamp(1024, MAX_STEP);
        if self.pairs.try_reserve_exact(step).is_err() {
            b.alloc_failed.store(true, Ordering::Relaxed);
            b.stop.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }
}

impl PairOut for Collect<'_> {
    #[inline(always)]
    fn push(&mut self, a: usize, b: usize) {
        if self.pairs.len() == self.pairs.capacity() && !self.grow() {
            return;
        }
        self.pairs.push([a as i64, b as i64]);
    }

    #[inline(always)]
    fn stopped(&self) -> bool {
        self.budget.stop.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Concatenates the tasks' pairs into one vector: the largest task's vector grows in place
/// (no second copy of it), the others are appended and freed one by one. Fails with
/// [`CoreError::OutOfMemory`] naming the size of the whole result.
pub(crate) fn concat(mut chunks: Vec<Vec<[i64; 2]>>, what: &str) -> Result<Vec<[i64; 2]>> {
    let total: usize = chunks.iter().map(Vec::len).sum();
    let Some(largest) = (0..chunks.len()).max_by_key(|&i| chunks[i].len()) else {
        return Ok(Vec::new());
    };
    let mut out = chunks.swap_remove(largest);
    out.try_reserve_exact(total - out.len()).map_err(|_| {
        CoreError::OutOfMemory(format!(
            "{what}: the result does not fit in memory: {} pairs need {}",
            grouped(total as u128),
            describe_bytes(total as u128 * 16)
        ))
    })?;
    for c in chunks {
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// A concurrent union-find over items `0..n`: each item points towards a parent of smaller
/// `key` (distinct keys), so the root of a set is its item of smallest key and the result does
/// not depend on the order the unions arrive in. Lock-free: links and path halving are
/// compare-and-swaps that only ever move a pointer to an item of smaller key.
pub(crate) struct Dsu<'a> {
    parent: Vec<AtomicUsize>,
    key: &'a [usize],
}

impl<'a> Dsu<'a> {
    /// Singletons `0..key.len()`; `key` must hold distinct values.
    pub(crate) fn new(key: &'a [usize]) -> Result<Dsu<'a>> {
        let mut parent =
            crate::error::try_with_capacity(key.len(), "duplicate_groups: the groups")?;
        parent.extend((0..key.len()).map(AtomicUsize::new));
        Ok(Dsu { parent, key })
    }

    /// The root of `x`'s set (the set's item of smallest key once every union is done).
    pub(crate) fn find(&self, mut x: usize) -> usize {
        loop {
            let p = self.parent[x].load(Ordering::Relaxed);
            if p == x {
                return x;
            }
            let gp = self.parent[p].load(Ordering::Relaxed);
            if gp != p {
                // Path halving; losing the race only leaves a longer path.
                let _ = self.parent[x].compare_exchange_weak(
                    p,
                    gp,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            x = p;
        }
    }

    /// Merge the sets of `a` and `b`.
    pub(crate) fn union(&self, a: usize, b: usize) {
        loop {
            let (ra, rb) = (self.find(a), self.find(b));
            if ra == rb {
                return;
            }
            let (lo, hi) = if self.key[ra] < self.key[rb] {
                (ra, rb)
            } else {
                (rb, ra)
            };
            // Link only while `hi` is still a root; else someone linked it: look again.
            if self.parent[hi]
                .compare_exchange(hi, lo, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// Merges each pair it is given into a [`Dsu`] over the pair's items.
pub(crate) struct Unite<'a, 'k> {
    pub(crate) dsu: &'a Dsu<'k>,
}

impl PairOut for Unite<'_, '_> {
    #[inline(always)]
    fn push(&mut self, a: usize, b: usize) {
        self.dsu.union(a, b);
    }

    #[inline(always)]
    fn stopped(&self) -> bool {
        false
    }

    fn is_empty(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_find_roots_are_the_smallest_keys_in_any_order() {
        let key: Vec<usize> = vec![50, 3, 7, 9, 1, 20];
        let edges = [(0, 2), (2, 5), (3, 4), (1, 0)];
        for rot in 0..edges.len() {
            let dsu = Dsu::new(&key).unwrap();
            for k in 0..edges.len() {
                let (a, b) = edges[(k + rot) % edges.len()];
                dsu.union(a, b);
            }
            let roots: Vec<usize> = (0..key.len()).map(|x| dsu.find(x)).collect();
            assert_eq!(roots, vec![1, 1, 1, 4, 4, 1]);
        }
    }

    #[test]
    fn a_limit_stops_collection_with_a_clear_error() {
        let budget = Budget::new(Some(10));
        let mut c = Collect::new(&budget);
        for i in 0..5000 {
            c.push(i, i + 1);
            if c.stopped() {
                break;
            }
        }
        let found = c.pairs.len() as u64;
        let e = budget.check(found.max(11), "near_duplicates").unwrap_err();
        assert!(e.to_string().contains("more than 10 pairs"), "{e}");
    }
}
