//! Hamming-ranking histograms against a naive reference, on every SIMD path and thread count.

use cmrops_core::bits::{available_paths, Kernel};
use cmrops_core::rank::{hamming_histogram, hamming_histogram_with};
use cmrops_core::threads::pool;
use cmrops_core::CoreError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[allow(clippy::type_complexity)]
fn naive(
    q: &[u64],
    db: &[u64],
    words: usize,
    ql: &[u64],
    dl: &[u64],
    lw: usize,
) -> (Vec<i64>, Vec<i64>) {
    let bins = words * 64 + 1;
    let nq = q.len() / words;
    let mut t = vec![0i64; nq * bins];
    let mut r = vec![0i64; nq * bins];
    for (qi, qr) in q.chunks_exact(words).enumerate() {
        for (di, dr) in db.chunks_exact(words).enumerate() {
            let d: u32 = qr.iter().zip(dr).map(|(a, b)| (a ^ b).count_ones()).sum();
            t[qi * bins + d as usize] += 1;
            let rel = (0..lw).any(|w| ql[qi * lw + w] & dl[di * lw + w] != 0);
            if rel {
                r[qi * bins + d as usize] += 1;
            }
        }
    }
    (t, r)
}

fn codes(rng: &mut StdRng, n: usize, words: usize) -> Vec<u64> {
    let base: Vec<u64> = (0..words).map(|_| rng.random()).collect();
    (0..n * words)
        .map(|i| base[i % words] ^ (rng.random::<u64>() & rng.random::<u64>()))
        .collect()
}

fn labels(rng: &mut StdRng, n: usize, lw: usize) -> Vec<u64> {
    (0..n * lw)
        .map(|_| {
            if rng.random_range(0..3) == 0 {
                1u64 << rng.random_range(0..64)
            } else {
                0
            }
        })
        .collect()
}

#[test]
fn histograms_match_naive() {
    let mut rng = StdRng::seed_from_u64(20);
    let p = pool(Some(2)).unwrap();
    for words in [1usize, 2, 3, 4, 5, 8] {
        for lw in [1usize, 2, 3] {
            for (nq, nd) in [(1usize, 1usize), (3, 100), (17, 1001), (40, 3000)] {
                let q = codes(&mut rng, nq, words);
                let db = codes(&mut rng, nd, words);
                let ql = labels(&mut rng, nq, lw);
                let dl = labels(&mut rng, nd, lw);
                let want = naive(&q, &db, words, &ql, &dl, lw);
                for path in available_paths() {
                    let k = Kernel::new(path).unwrap();
                    let got = hamming_histogram_with(k, &q, &db, words, &ql, &dl, lw, &p).unwrap();
                    assert_eq!(
                        got, want,
                        "path {path} words {words} lw {lw} nq {nq} nd {nd}"
                    );
                }
            }
        }
    }
}

#[test]
fn thread_count_does_not_matter() {
    let mut rng = StdRng::seed_from_u64(21);
    let (words, nq, nd) = (2, 5, 50_000);
    let q = codes(&mut rng, nq, words);
    let db = codes(&mut rng, nd, words);
    let ql = labels(&mut rng, nq, 1);
    let dl = labels(&mut rng, nd, 1);
    let base = hamming_histogram(&q, &db, words, &ql, &dl, 1, &pool(Some(1)).unwrap()).unwrap();
    for t in [2usize, 3, 5] {
        assert_eq!(
            hamming_histogram(&q, &db, words, &ql, &dl, 1, &pool(Some(t)).unwrap()).unwrap(),
            base
        );
    }
    let (total, _) = &base;
    for row in total.chunks_exact(words * 64 + 1) {
        assert_eq!(row.iter().sum::<i64>(), nd as i64);
    }
}

#[test]
fn empty_inputs_and_argument_errors() {
    let p = pool(Some(1)).unwrap();
    let (t, r) = hamming_histogram(&[1, 2], &[], 1, &[1, 1], &[], 1, &p).unwrap();
    assert_eq!(t.len(), 2 * 65);
    assert!(t.iter().chain(&r).all(|&x| x == 0));
    let (t, _) = hamming_histogram(&[], &[1], 1, &[], &[1], 1, &p).unwrap();
    assert!(t.is_empty());
    let arg = |e: CoreError| match e {
        CoreError::InvalidArgument { arg, .. } => arg,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        arg(hamming_histogram(&[1], &[1], 0, &[1], &[1], 1, &p).unwrap_err()),
        "queries"
    );
    assert_eq!(
        arg(hamming_histogram(&[1, 2, 3], &[1, 2], 2, &[1], &[1], 1, &p).unwrap_err()),
        "queries"
    );
    assert_eq!(
        arg(hamming_histogram(&[1, 2], &[1, 2, 3], 2, &[1], &[1], 1, &p).unwrap_err()),
        "database"
    );
    assert_eq!(
        arg(hamming_histogram(&[1], &[1], 1, &[1, 1], &[1], 1, &p).unwrap_err()),
        "query_labels"
    );
    assert_eq!(
        arg(hamming_histogram(&[1], &[1], 1, &[1], &[], 1, &p).unwrap_err()),
        "database_labels"
    );
    assert_eq!(
        arg(hamming_histogram(&[1], &[1], 1, &[], &[], 0, &p).unwrap_err()),
        "query_labels"
    );
}
