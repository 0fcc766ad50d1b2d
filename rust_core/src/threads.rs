//! Thread pools: all cores by default, an explicit count when asked. Results never depend on it.

use crate::error::{CoreError, Result};
use std::sync::{Arc, Mutex, OnceLock};

/// Number of threads used when the caller does not choose: every available core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Pools built so far, by thread count (a handful at most: one per distinct `n_threads`).
type PoolCache = Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>>;

/// A rayon pool with exactly `n` threads (`None` = all cores), cached per size.
pub fn pool(n: Option<usize>) -> Result<Arc<rayon::ThreadPool>> {
    let n = match n {
        None => default_threads(),
        Some(0) => {
            return Err(CoreError::invalid(
                "n_threads",
                "must be at least 1 (or None for all cores)",
            ))
        }
        Some(n) if n > 1024 => {
            return Err(CoreError::invalid(
                "n_threads",
                format!("{n} is more than 1024"),
            ))
        }
        Some(n) => n,
    };
    static POOLS: OnceLock<PoolCache> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = pools.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = guard.iter().find(|(k, _)| *k == n) {
        return Ok(p.clone());
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("cmrops-{i}"))
            .build()
            .map_err(|e| CoreError::invalid("n_threads", e.to_string()))?,
    );
    guard.push((n, p.clone()));
    Ok(p)
}
