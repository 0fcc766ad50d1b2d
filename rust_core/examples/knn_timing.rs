//! Timing check for exact kNN on every SIMD path this CPU has.
//!
//! `cargo run --release --no-default-features --example knn_timing -- [n] [queries] [words] [k] [rounds]`
//! e.g. `... -- 1000000 1000 1,4 10 3`. Random codes, one thread; prints per path the best of
//! `rounds` interleaved rounds in process CPU seconds (Linux: the threads' `schedstat`,
//! which a busy machine disturbs less than wall time) and checks that every path returns the
//! same answer.

use cmrops_core::bits::{available_paths, Kernel};
use cmrops_core::search::HammingIndex;

/// CPU seconds all threads of this process have run (Linux; wall time elsewhere).
fn cpu_seconds(start: std::time::Instant) -> f64 {
    let ns = std::fs::read_dir("/proc/self/task").ok().map(|tasks| {
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .sum::<f64>()
    });
    ns.map_or_else(|| start.elapsed().as_secs_f64(), |ns| ns / 1e9)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let n: usize = arg(1, "1000000").parse().expect("n");
    let nq: usize = arg(2, "1000").parse().expect("queries");
    let widths: Vec<usize> = arg(3, "1,4")
        .split(',')
        .map(|x| x.parse().expect("words"))
        .collect();
    let k: i64 = arg(4, "10").parse().expect("k");
    let rounds: usize = arg(5, "3").parse().expect("rounds");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let t0 = std::time::Instant::now();
    for words in widths {
        let codes: Vec<u64> = (0..n * words).map(|_| next()).collect();
        let queries: Vec<u64> = (0..nq * words).map(|_| next()).collect();
        let index = HammingIndex::with_codes(&codes, words, None).unwrap();
        let paths = available_paths();
        let mut best = vec![f64::MAX; paths.len()];
        let mut answers = vec![None; paths.len()];
        for _ in 0..rounds {
            for (p, &path) in paths.iter().enumerate() {
                let kernel = Kernel::new(path).unwrap();
                let c = cpu_seconds(t0);
                let got = pool.install(|| index.search_with(kernel, &queries, k, &pool).unwrap());
                best[p] = best[p].min(cpu_seconds(t0) - c);
                answers[p] = Some(got);
            }
        }
        for (p, path) in paths.iter().enumerate() {
            let same = answers[p] == answers[0];
            println!(
                "{:>4} bits  {:<9} {:8.3} s  {:6.3} ns/pair  {}",
                words * 64,
                path.name(),
                best[p],
                best[p] / (n * nq) as f64 * 1e9,
                if same { "same" } else { "DIFFERENT" }
            );
        }
    }
}
