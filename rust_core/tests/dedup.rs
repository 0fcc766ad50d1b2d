//! Near-duplicate pairs and groups: every strategy against the brute-force reference.

use cmrops_core::dedup::{
    duplicate_groups, near_duplicates, near_duplicates_brute, near_duplicates_with, Strategy,
};
use cmrops_core::CoreError;

/// splitmix64: small, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
}

/// `n` rows: random codes, a share of them near-copies of earlier rows with `0..=max_flips`
/// flipped bits, and a few chains/clusters so that components and buckets get interesting.
fn planted(rng: &mut Rng, n: usize, words: usize, max_flips: usize) -> Vec<u64> {
    let bits = words * 64;
    let mut codes: Vec<u64> = Vec::with_capacity(n * words);
    for i in 0..n {
        if i > 0 && rng.below(3) == 0 {
            let src = rng.below(i);
            let start = codes.len();
            codes.extend_from_within(src * words..(src + 1) * words);
            let flips = rng.below(max_flips + 1);
            for _ in 0..flips {
                let b = rng.below(bits);
                codes[start + b / 64] ^= 1u64 << (b % 64);
            }
        } else {
            for _ in 0..words {
                codes.push(rng.next());
            }
        }
    }
    codes
}

/// Low-entropy codes: every bit set with probability 1/16, so random pairs are close and the
/// substring buckets are heavily skewed (key 0 holds most rows).
fn sparse(rng: &mut Rng, n: usize, words: usize) -> Vec<u64> {
    (0..n * words)
        .map(|_| rng.next() & rng.next() & rng.next() & rng.next())
        .collect()
}

/// Keys within `s` of a `b`-bit key.
fn ball(b: u32, s: u32) -> u64 {
    let mut c = 1u64; // C(b, 0)
    let mut sum = 1u64;
    for i in 1..=s.min(b) as u64 {
        c = c * (b as u64 - i + 1) / i;
        sum += c;
    }
    sum
}

/// Auto, brute force, and forced multi-index layouts: 1 to r + 2 tables (so s ranges from r
/// down to 0, including more tables than needed) of tiny to full-width substrings. Layouts whose
/// probe ball is huge are skipped: they are correct but slow in debug builds.
fn strategies(words: usize, radius: u32) -> Vec<Strategy> {
    let mut v = vec![Strategy::Auto, Strategy::BruteForce];
    for tables in 1..=(radius as usize + 2).min(words * 64) {
        let s = radius / tables as u32;
        for max_bits in [3, 7, 16, 24] {
            let b = max_bits.min((64 * words).div_ceil(tables) as u32);
            if ball(b, s) <= 3000 && !(max_bits == 24 && tables > 3) {
                v.push(Strategy::MultiIndex { tables, max_bits });
            }
        }
    }
    v
}

fn assert_same(
    codes: &[u64],
    words: usize,
    radius: u32,
    other: Option<&[u64]>,
    pools: &[rayon::ThreadPool],
) {
    let want = near_duplicates_brute(codes, words, radius, other).unwrap();
    for strategy in strategies(words, radius) {
        for p in pools {
            let got = near_duplicates_with(codes, words, radius, other, None, p, strategy).unwrap();
            assert!(
                got == want,
                "words={words} radius={radius} cross={} strategy={strategy:?} threads={}: got {} pairs, want {}",
                other.is_some(),
                p.current_num_threads(),
                got.len(),
                want.len()
            );
        }
    }
}

#[test]
fn self_pairs_match_brute_force_all_widths_and_radii() {
    let pools = [pool(2)];
    let mut rng = Rng(1);
    for words in [1usize, 2, 3, 4, 8] {
        for radius in 0..=10u32 {
            let codes = planted(&mut rng, 300, words, radius as usize + 2);
            assert_same(&codes, words, radius, None, &pools);
        }
    }
}

#[test]
fn cross_pairs_match_brute_force_all_widths_and_radii() {
    let pools = [pool(2)];
    let mut rng = Rng(2);
    for words in [1usize, 2, 3, 4, 8] {
        for radius in 0..=10u32 {
            // near-copies across the two sets: plant in one array, then split it
            let all = planted(&mut rng, 400, words, radius as usize + 2);
            let cut = if radius % 2 == 0 { 150 } else { 250 }; // both "codes smaller" and "larger"
            let (a, b) = all.split_at(cut * words);
            assert_same(a, words, radius, Some(b), &pools);
        }
    }
}

#[test]
fn skewed_buckets_match_brute_force() {
    let pools = [pool(2)];
    let mut rng = Rng(3);
    for words in [1usize, 2, 3] {
        for radius in [0u32, 1, 3, 6, 10] {
            let codes = sparse(&mut rng, 250, words);
            assert_same(&codes, words, radius, None, &pools);
            let other = sparse(&mut rng, 120, words);
            assert_same(&codes, words, radius, Some(&other), &pools);
        }
    }
}

#[test]
fn large_radii_match_brute_force() {
    let p = pool(2);
    let mut rng = Rng(4);
    for words in [1usize, 2] {
        let codes = planted(&mut rng, 200, words, 40);
        let other = planted(&mut rng, 90, words, 40);
        let n_bits = 64 * words as u32;
        for radius in [16, 24, 30, 32, 40, n_bits - 1, n_bits] {
            for o in [None, Some(&other[..])] {
                let want = near_duplicates_brute(&codes, words, radius, o).unwrap();
                for strategy in [
                    Strategy::Auto,
                    Strategy::BruteForce,
                    Strategy::MultiIndex {
                        tables: 2,
                        max_bits: 12,
                    },
                    Strategy::MultiIndex {
                        tables: 5,
                        max_bits: 8,
                    },
                ] {
                    let got =
                        near_duplicates_with(&codes, words, radius, o, None, &p, strategy).unwrap();
                    assert_eq!(got, want, "words={words} radius={radius} {strategy:?}");
                }
            }
        }
        // radius == n_bits: every pair
        let all = near_duplicates(&codes, words, n_bits, None, None, &p).unwrap();
        assert_eq!(all.len(), 200 * 199 / 2);
    }
}

#[test]
fn identical_codes_in_one_bucket() {
    let p = pool(2);
    let mut rng = Rng(5);
    for words in [1usize, 3] {
        let mut codes = planted(&mut rng, 200, words, 3);
        let dup: Vec<u64> = (0..words).map(|_| rng.next()).collect();
        for k in 0..150 {
            // 150 identical rows, interleaved with 150 of their 1-bit neighbours
            codes.extend_from_slice(&dup);
            let mut near = dup.clone();
            near[k % words] ^= 1 << (k % 64);
            codes.extend_from_slice(&near);
        }
        for radius in [0u32, 1, 2, 5] {
            assert_same(&codes, words, radius, None, std::slice::from_ref(&p));
            let other: Vec<u64> = codes[..100 * words].to_vec();
            assert_same(
                &codes,
                words,
                radius,
                Some(&other),
                std::slice::from_ref(&p),
            );
        }
        let pairs = near_duplicates(&codes, words, 0, None, None, &p).unwrap();
        assert!(pairs.len() >= 150 * 149 / 2);
    }
}

#[test]
fn empty_and_single_row() {
    let p = pool(2);
    for words in [1usize, 2, 8] {
        let one: Vec<u64> = (0..words as u64).collect();
        for radius in [0u32, 3, 64] {
            assert!(near_duplicates(&[], words, radius, None, None, &p)
                .unwrap()
                .is_empty());
            assert!(near_duplicates(&one, words, radius, None, None, &p)
                .unwrap()
                .is_empty());
            assert!(near_duplicates(&one, words, radius, Some(&[]), None, &p)
                .unwrap()
                .is_empty());
            assert!(near_duplicates(&[], words, radius, Some(&one), None, &p)
                .unwrap()
                .is_empty());
            assert_eq!(
                near_duplicates(&one, words, radius, Some(&one), None, &p).unwrap(),
                vec![[0, 0]]
            );
            assert!(duplicate_groups(&[], words, radius, &p).unwrap().is_empty());
            assert_eq!(duplicate_groups(&one, words, radius, &p).unwrap(), vec![0]);
            for strategy in strategies(words, radius).into_iter().take(6) {
                assert!(
                    near_duplicates_with(&one, words, radius, None, None, &p, strategy)
                        .unwrap()
                        .is_empty()
                );
            }
        }
    }
}

fn invalid_arg<T: std::fmt::Debug>(r: cmrops_core::Result<T>) -> &'static str {
    match r {
        Err(CoreError::InvalidArgument { arg, .. }) => arg,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn invalid_arguments_are_named() {
    let p = pool(1);
    let codes = [1u64, 2, 3, 4];
    assert_eq!(
        invalid_arg(near_duplicates(&codes, 0, 1, None, None, &p)),
        "codes"
    );
    assert_eq!(
        invalid_arg(near_duplicates(&codes, 3, 1, None, None, &p)),
        "codes"
    );
    assert_eq!(
        invalid_arg(near_duplicates(&codes, 2, 1, Some(&[1, 2, 3]), None, &p)),
        "other"
    );
    assert_eq!(
        invalid_arg(near_duplicates(&codes, 2, 129, None, None, &p)),
        "radius"
    );
    assert_eq!(
        invalid_arg(near_duplicates(&codes, 1, 65, Some(&[1]), None, &p)),
        "radius"
    );
    assert_eq!(invalid_arg(duplicate_groups(&codes, 3, 1, &p)), "codes");
    assert_eq!(invalid_arg(duplicate_groups(&codes, 1, 65, &p)), "radius");
    assert_eq!(invalid_arg(duplicate_groups(&codes, 0, 1, &p)), "codes");
    // empty input is still validated
    assert_eq!(
        invalid_arg(near_duplicates(&[], 1, 65, None, None, &p)),
        "radius"
    );
    assert!(near_duplicates(&codes, 2, 128, None, None, &p).is_ok());
}

#[test]
fn thread_count_does_not_change_results() {
    let (p1, p2) = (pool(1), pool(2));
    let mut rng = Rng(6);
    for (words, n) in [(1usize, 6_000), (2, 3_000)] {
        let codes = planted(&mut rng, n, words, 6);
        let other = planted(&mut rng, n / 3, words, 6);
        for radius in [0u32, 2, 4, 8] {
            for o in [None, Some(&other[..])] {
                let a = near_duplicates(&codes, words, radius, o, None, &p1).unwrap();
                let b = near_duplicates(&codes, words, radius, o, None, &p2).unwrap();
                assert_eq!(a, b);
                let c =
                    near_duplicates_with(&codes, words, radius, o, None, &p2, Strategy::BruteForce)
                        .unwrap();
                assert_eq!(a, c, "words={words} radius={radius}");
                assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
            }
            let g1 = duplicate_groups(&codes, words, radius, &p1).unwrap();
            let g2 = duplicate_groups(&codes, words, radius, &p2).unwrap();
            assert_eq!(g1, g2);
        }
    }
}

/// Naive component labelling: BFS over the brute-force pair graph, label = smallest row.
fn naive_groups(codes: &[u64], words: usize, radius: u32) -> Vec<i64> {
    let n = codes.len() / words;
    let mut adj = vec![Vec::new(); n];
    for [a, b] in near_duplicates_brute(codes, words, radius, None).unwrap() {
        adj[a as usize].push(b as usize);
        adj[b as usize].push(a as usize);
    }
    let mut label = vec![-1i64; n];
    for start in 0..n {
        if label[start] >= 0 {
            continue;
        }
        label[start] = start as i64; // rows are visited in order: start is the smallest
        let mut stack = vec![start];
        while let Some(x) = stack.pop() {
            for &y in &adj[x] {
                if label[y] < 0 {
                    label[y] = start as i64;
                    stack.push(y);
                }
            }
        }
    }
    label
}

#[test]
fn duplicate_groups_match_naive_components() {
    let p = pool(2);
    let mut rng = Rng(7);
    for words in [1usize, 2, 3, 4, 8] {
        for radius in [0u32, 1, 2, 4, 7, 10] {
            let mut codes = planted(&mut rng, 250, words, radius as usize + 2);
            // a chain: each link one bit from the previous, so the component spans far more
            // than the radius; inserted at scattered rows via a shuffle below
            let mut link: Vec<u64> = (0..words).map(|_| rng.next()).collect();
            for k in 0..40 {
                codes.extend_from_slice(&link);
                link[k % words] ^= 1 << (k % 64);
            }
            // exact duplicates
            for _ in 0..30 {
                let src = rng.below(codes.len() / words);
                codes.extend_from_within(src * words..(src + 1) * words);
            }
            // shuffle rows
            let n = codes.len() / words;
            for i in (1..n).rev() {
                let j = rng.below(i + 1);
                for w in 0..words {
                    codes.swap(i * words + w, j * words + w);
                }
            }
            let want = naive_groups(&codes, words, radius);
            let got = duplicate_groups(&codes, words, radius, &p).unwrap();
            assert_eq!(got, want, "words={words} radius={radius}");
        }
    }
    let sparse_codes = sparse(&mut rng, 300, 1);
    for radius in [0u32, 3, 8, 20, 64] {
        assert_eq!(
            duplicate_groups(&sparse_codes, 1, radius, &p).unwrap(),
            naive_groups(&sparse_codes, 1, radius)
        );
    }
}

#[test]
fn one_huge_group_is_grouped_without_listing_its_pairs() {
    let p = pool(2);
    // 20,000 identical codes: 199,990,000 pairs (3.2 GB) that a limit refuses, naming the count.
    let n = 20_000;
    let codes = vec![0x0123_4567_89ab_cdefu64; n];
    // (Its pairs run into the limit after about a million: the search stops there.)
    let e = near_duplicates(&codes, 1, 0, None, Some(1_000_000), &p).unwrap_err();
    assert!(
        matches!(
            e,
            CoreError::InvalidArgument {
                arg: "max_pairs",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("more than 1000000 pairs"), "{e}");
    assert!(duplicate_groups(&codes, 1, 3, &p)
        .unwrap()
        .iter()
        .all(|&g| g == 0));
    // Distinct codes that are all within the radius of each other: the union-find merges the
    // pairs as they are found (496 codes, 122,760 pairs).
    let base = 0x5555_aaaa_0f0f_f0f0u64;
    let mut near = Vec::new();
    for a in 0..32 {
        for b in a + 1..32 {
            near.push(base ^ (1 << a) ^ (1 << b));
        }
    }
    near.reverse();
    let groups = duplicate_groups(&near, 1, 4, &p).unwrap();
    assert!(groups.iter().all(|&g| g == 0), "one group, rooted at row 0");
    let pairs = near_duplicates(&near, 1, 4, None, None, &p).unwrap();
    assert_eq!(pairs.len(), near.len() * (near.len() - 1) / 2);
}
