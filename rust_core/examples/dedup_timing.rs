//! Timing check for near-duplicate search.
//!
//! `cargo run --release --no-default-features --example dedup_timing -- [n] [radii] [threads] [words] [pairs]`
//! e.g. `... -- 1000000 4,8 1,2 1` (a trailing `pairs` skips `duplicate_groups`). Random codes of which 5% are near-copies (0-4 flipped bits)
//! of other rows; prints the plan, pair count and wall time per (threads, radius), checks that
//! every planted pair within the radius is reported, and times `duplicate_groups` as well.
//! Threads `0` prints the cost model's plans only.

use cmrops_core::dedup::{describe_plan, duplicate_groups, near_duplicates};
use std::time::Instant;

/// User + system CPU seconds of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(1_000_000, |a| a.parse().expect("n"));
    let list = |i: usize, d: &str| -> Vec<u32> {
        args.get(i)
            .map_or(d, |s| s.as_str())
            .split(',')
            .map(|x| x.parse().expect("number"))
            .collect()
    };
    let radii = list(2, "4,8");
    let threads = list(3, "1,2");
    let words: usize = args.get(4).map_or(1, |a| a.parse().expect("words"));
    let pairs_only = args.get(5).is_some_and(|a| a == "pairs");
    if threads == [0] {
        // plan only
        for &r in &radii {
            println!(
                "n={n} words={words} r={r}: {}",
                describe_plan(n, None, words, r)
            );
        }
        return;
    }

    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut codes: Vec<u64> = (0..n * words).map(|_| next()).collect();
    let mut planted = Vec::new(); // (src, dst, flips)
    for _ in 0..n / 20 {
        let (src, dst) = ((next() % n as u64) as usize, (next() % n as u64) as usize);
        if src == dst {
            continue;
        }
        let flips = (next() % 5) as u32;
        let mut c: Vec<u64> = codes[src * words..(src + 1) * words].to_vec();
        let mut done = 0;
        while done < flips {
            let b = (next() % (64 * words) as u64) as usize;
            let m = 1u64 << (b % 64);
            if (c[b / 64] ^ codes[src * words + b / 64]) & m == 0 {
                c[b / 64] ^= m;
                done += 1;
            }
        }
        codes[dst * words..(dst + 1) * words].copy_from_slice(&c);
        planted.push((src, dst));
    }
    let hamming = |a: usize, b: usize| -> u32 {
        (0..words)
            .map(|w| (codes[a * words + w] ^ codes[b * words + w]).count_ones())
            .sum()
    };
    println!(
        "n={n} words={words} planted={} (some overwritten later)",
        planted.len()
    );

    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t as usize)
            .build()
            .unwrap();
        for &r in &radii {
            println!("r={r}: {}", describe_plan(n, None, words, r));
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let pairs = near_duplicates(&codes, words, r, None, None, &pool).unwrap();
            let (dt, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
            let mut missed = 0;
            for &(a, b) in &planted {
                if hamming(a, b) <= r {
                    let key = [a.min(b) as i64, a.max(b) as i64];
                    if pairs.binary_search(&key).is_err() {
                        missed += 1;
                    }
                }
            }
            assert_eq!(missed, 0, "planted pairs missed");
            println!(
                "  threads={t} r={r}: near_duplicates {dt:.3} s wall, {cpu:.2} s cpu, {} pairs",
                pairs.len()
            );
            if pairs_only {
                continue;
            }
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let groups = duplicate_groups(&codes, words, r, &pool).unwrap();
            let (dt, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
            let non_singleton = groups
                .iter()
                .enumerate()
                .filter(|&(i, &g)| g as usize != i)
                .count();
            println!("  threads={t} r={r}: duplicate_groups {dt:.3} s wall, {cpu:.2} s cpu, {non_singleton} rows joined to a smaller one");
        }
    }
}
