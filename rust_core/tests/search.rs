//! HammingIndex: exact kNN and radius search against a naive reference on every SIMD path,
//! ties broken by the smaller id, the same results for any thread count, id bookkeeping and
//! argument errors.

use cmrops_core::bits::{available_paths, Kernel};
use cmrops_core::search::HammingIndex;
use cmrops_core::threads::pool;
use cmrops_core::CoreError;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn naive(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// Codes drawn from a few centres with sparse flips: many small distances and exact ties.
fn codes(rng: &mut StdRng, n: usize, words: usize) -> Vec<u64> {
    let centres: Vec<u64> = (0..4 * words).map(|_| rng.random()).collect();
    let mut out = Vec::with_capacity(n * words);
    for _ in 0..n {
        let c = rng.random_range(0..4);
        for w in 0..words {
            let flips = rng.random::<u64>()
                & rng.random::<u64>()
                & rng.random::<u64>()
                & rng.random::<u64>();
            out.push(centres[c * words + w] ^ flips);
        }
    }
    out
}

fn brute_knn(db: &[u64], ids: &[i64], words: usize, q: &[u64], k: usize) -> (Vec<i32>, Vec<i64>) {
    let mut d = Vec::new();
    let mut i = Vec::new();
    for qr in q.chunks_exact(words) {
        let mut all: Vec<(u32, i64)> = db
            .chunks_exact(words)
            .zip(ids)
            .map(|(r, &id)| (naive(r, qr), id))
            .collect();
        all.sort();
        for &(dd, id) in &all[..k] {
            d.push(dd as i32);
            i.push(id);
        }
    }
    (d, i)
}

fn brute_range(
    db: &[u64],
    ids: &[i64],
    words: usize,
    q: &[u64],
    r: u32,
) -> (Vec<i64>, Vec<i32>, Vec<i64>) {
    let mut lims = vec![0i64];
    let (mut d, mut i) = (Vec::new(), Vec::new());
    for qr in q.chunks_exact(words) {
        let mut hits: Vec<(u32, i64)> = db
            .chunks_exact(words)
            .zip(ids)
            .map(|(row, &id)| (naive(row, qr), id))
            .filter(|&(dd, _)| dd <= r)
            .collect();
        hits.sort();
        d.extend(hits.iter().map(|h| h.0 as i32));
        i.extend(hits.iter().map(|h| h.1));
        lims.push(d.len() as i64);
    }
    (lims, d, i)
}

#[test]
fn knn_matches_brute_force_on_every_path_and_width() {
    let mut rng = StdRng::seed_from_u64(10);
    let p = pool(Some(3)).unwrap();
    for words in [1usize, 2, 3, 4, 5, 8] {
        for n in [1usize, 5, 63, 700, 2500] {
            let db = codes(&mut rng, n, words);
            let q = codes(&mut rng, 9, words);
            let index = HammingIndex::with_codes(&db, words, None).unwrap();
            let ids: Vec<i64> = (0..n as i64).collect();
            for k in [1usize, 2, 10, n] {
                if k > n {
                    continue;
                }
                let want = brute_knn(&db, &ids, words, &q, k);
                for path in available_paths() {
                    let got = index
                        .search_with(Kernel::new(path).unwrap(), &q, k as i64, &p)
                        .unwrap();
                    assert_eq!(got, want, "path {path} words {words} n {n} k {k}");
                }
            }
        }
    }
}

#[test]
fn ties_go_to_the_smaller_id_with_explicit_shuffled_ids() {
    let mut rng = StdRng::seed_from_u64(11);
    let words = 2;
    let n = 3000;
    // Only 5 distinct codes: every result list is made of ties.
    let distinct = codes(&mut rng, 5, words);
    let db: Vec<u64> = (0..n)
        .flat_map(|_| {
            let c = rng.random_range(0..5);
            distinct[c * words..(c + 1) * words].to_vec()
        })
        .collect();
    let mut ids: Vec<i64> = (0..n as i64).map(|i| i * 7 + 3).collect();
    ids.shuffle(&mut rng);
    let index = HammingIndex::with_codes(&db, words, Some(&ids)).unwrap();
    assert!(index.has_explicit_ids());
    let q = codes(&mut rng, 6, words);
    let p = pool(Some(2)).unwrap();
    for k in [1usize, 10, 100, 2999] {
        let want = brute_knn(&db, &ids, words, &q, k);
        for path in available_paths() {
            let got = index
                .search_with(Kernel::new(path).unwrap(), &q, k as i64, &p)
                .unwrap();
            assert_eq!(got, want, "path {path} k {k}");
        }
    }
    let want = brute_range(&db, &ids, words, &q, 40);
    for path in available_paths() {
        assert_eq!(
            index
                .range_search_with(Kernel::new(path).unwrap(), &q, 40, &p)
                .unwrap(),
            want
        );
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let mut rng = StdRng::seed_from_u64(12);
    let words = 1;
    let n = 70_000; // enough rows for database chunking with few queries
    let db = codes(&mut rng, n, words);
    let index = HammingIndex::with_codes(&db, words, None).unwrap();
    for nq in [1usize, 3, 40, 300] {
        let q = codes(&mut rng, nq, words);
        let base = index.search(&q, 25, &pool(Some(1)).unwrap()).unwrap();
        let base_r = index.range_search(&q, 6, &pool(Some(1)).unwrap()).unwrap();
        for t in [2usize, 3, 4, 7] {
            let p = pool(Some(t)).unwrap();
            assert_eq!(
                index.search(&q, 25, &p).unwrap(),
                base,
                "threads {t} nq {nq}"
            );
            assert_eq!(
                index.range_search(&q, 6, &p).unwrap(),
                base_r,
                "threads {t} nq {nq}"
            );
        }
        if nq <= 3 {
            let ids: Vec<i64> = (0..n as i64).collect();
            assert_eq!(base, brute_knn(&db, &ids, words, &q, 25));
        }
    }
}

#[test]
fn range_search_matches_brute_force() {
    let mut rng = StdRng::seed_from_u64(13);
    let p = pool(Some(2)).unwrap();
    for words in [1usize, 2, 3, 4, 8] {
        let db = codes(&mut rng, 1500, words);
        let q = codes(&mut rng, 7, words);
        let index = HammingIndex::with_codes(&db, words, None).unwrap();
        let ids: Vec<i64> = (0..1500).collect();
        for r in [0u32, 1, 5, 20, (words * 32) as u32, (words * 64) as u32] {
            let want = brute_range(&db, &ids, words, &q, r);
            for path in available_paths() {
                let got = index
                    .range_search_with(Kernel::new(path).unwrap(), &q, r as i64, &p)
                    .unwrap();
                assert_eq!(got, want, "path {path} words {words} r {r}");
            }
        }
        // A query equal to a code finds it at distance 0 (radius is inclusive).
        let (lims, d, i) = index.range_search(&db[..words], 0, &p).unwrap();
        assert!(lims[1] >= 1 && d[0] == 0 && i.contains(&0));
    }
}

fn arg_of(e: CoreError) -> &'static str {
    match e {
        CoreError::InvalidArgument { arg, .. } => arg,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn arguments_are_checked() {
    let p = pool(Some(1)).unwrap();
    let empty = HammingIndex::new(2).unwrap();
    let e = empty.search(&[0, 0], 1, &p).unwrap_err();
    assert_eq!(e.to_string(), "index: the index is empty; add codes first");
    assert_eq!(arg_of(HammingIndex::new(0).unwrap_err()), "codes");
    let (lims, d, i) = empty.range_search(&[0, 0, 1, 1], 3, &p).unwrap();
    assert_eq!((lims, d.len(), i.len()), (vec![0, 0, 0], 0, 0));

    let index = HammingIndex::with_codes(&[1, 2, 3, 4, 5, 6], 2, None).unwrap();
    assert_eq!(arg_of(index.search(&[0, 0], 0, &p).unwrap_err()), "k");
    assert_eq!(arg_of(index.search(&[0, 0], -1, &p).unwrap_err()), "k");
    assert_eq!(arg_of(index.search(&[0, 0], 4, &p).unwrap_err()), "k");
    assert!(index.search(&[0, 0], 3, &p).is_ok());
    assert_eq!(
        arg_of(index.search(&[0, 0, 0], 1, &p).unwrap_err()),
        "queries"
    );
    assert_eq!(
        arg_of(index.range_search(&[0, 0], -1, &p).unwrap_err()),
        "radius"
    );
    assert_eq!(
        arg_of(index.range_search(&[0, 0], 129, &p).unwrap_err()),
        "radius"
    );
    assert!(index.range_search(&[0, 0], 128, &p).is_ok());
    assert_eq!(
        arg_of(index.range_search(&[0], 3, &p).unwrap_err()),
        "queries"
    );
    let (d, i) = index.search(&[], 2, &p).unwrap();
    assert!(d.is_empty() && i.is_empty());

    let mut index = index;
    assert_eq!(arg_of(index.add(&[1, 2, 3], None).unwrap_err()), "codes");
    assert_eq!(
        arg_of(index.add(&[1, 2], Some(&[5, 6])).unwrap_err()),
        "ids"
    );
    assert_eq!(
        arg_of(index.add(&[1, 2, 3, 4], Some(&[7, 7])).unwrap_err()),
        "ids"
    );
    assert_eq!(arg_of(index.add(&[1, 2], Some(&[1])).unwrap_err()), "ids");
    let e = index.add(&[1, 2], Some(&[-1])).unwrap_err();
    assert_eq!(arg_of(e.clone()), "ids");
    assert!(e.to_string().contains("non-negative"), "{e}");
    assert_eq!(index.len(), 3, "a refused add changes nothing");
    assert_eq!(index.ids().unwrap(), vec![0, 1, 2]);
}

#[test]
fn ids_add_and_remove() {
    let p = pool(Some(2)).unwrap();
    let words = 1;
    let mut ix = HammingIndex::new(words).unwrap();
    assert!(ix.is_empty());
    ix.add(&[10, 11, 12], None).unwrap();
    assert_eq!(ix.ids().unwrap(), vec![0, 1, 2]);
    ix.add(&[13], Some(&[3])).unwrap();
    assert!(
        !ix.has_explicit_ids(),
        "ids continuing the range stay implicit"
    );
    ix.add(&[14, 15], Some(&[100, 50])).unwrap();
    assert!(ix.has_explicit_ids());
    assert_eq!(ix.ids().unwrap(), vec![0, 1, 2, 3, 100, 50]);
    ix.add(&[16], None).unwrap();
    assert_eq!(
        ix.ids().unwrap(),
        vec![0, 1, 2, 3, 100, 50, 101],
        "next id is the largest + 1"
    );
    assert_eq!(ix.remove(&[1, 1, 100, 999, -5]), 2);
    assert_eq!(ix.ids().unwrap(), vec![0, 2, 3, 50, 101]);
    assert_eq!(
        ix.codes(),
        &[10, 12, 13, 15, 16],
        "order of remaining rows is kept"
    );
    let (d, i) = ix.search(&[15], 2, &p).unwrap();
    assert_eq!((d[0], i[0]), (0, 50));
    assert_eq!(ix.id(3), 50);
    assert_eq!(ix.remove(&[0, 2, 3, 50, 101]), 5);
    assert!(ix.is_empty());
    ix.add(&[1, 2], None).unwrap();
    assert_eq!(
        ix.ids().unwrap(),
        vec![0, 1],
        "an emptied index numbers from 0 again"
    );
    assert!(!ix.has_explicit_ids());

    // Removing a prefix or suffix keeps ids implicit; the middle makes them explicit.
    let mut ix = HammingIndex::with_codes(&(0..10).collect::<Vec<u64>>(), 1, None).unwrap();
    assert_eq!(ix.remove(&[0, 1]), 2);
    assert_eq!(ix.remove(&[9]), 1);
    assert!(!ix.has_explicit_ids());
    assert_eq!(ix.ids().unwrap(), (2..9).collect::<Vec<i64>>());
    assert_eq!(ix.remove(&[5]), 1);
    assert!(ix.has_explicit_ids());
    assert_eq!(ix.ids().unwrap(), vec![2, 3, 4, 6, 7, 8]);
    assert_eq!(ix.codes(), &[2, 3, 4, 6, 7, 8]);
    assert_eq!(ix.remove(&[]), 0);
    let mut ix2 = ix.clone();
    ix2.add(&[99], Some(&[5])).unwrap();
    assert!(ix2.has_explicit_ids());
    assert_eq!(ix2.remove(&[5]), 1);
    assert_eq!(ix2, ix);
}

#[test]
fn implicit_ids_keep_memory_near_the_raw_codes() {
    let words = 1;
    let n = 200_000;
    let db: Vec<u64> = (0..n as u64).collect();
    let ix = HammingIndex::with_codes(&db, words, None).unwrap();
    let raw = n * words * 8;
    assert!(
        ix.memory_bytes() <= raw + raw / 2,
        "{} > 1.5 x {raw}",
        ix.memory_bytes()
    );
    // Growing by many small adds keeps slack bounded too.
    let mut ix = HammingIndex::new(words).unwrap();
    for chunk in db.chunks(997) {
        ix.add(chunk, None).unwrap();
    }
    assert!(!ix.has_explicit_ids());
    assert!(
        ix.memory_bytes() <= raw + raw / 2,
        "{} > 1.5 x {raw}",
        ix.memory_bytes()
    );
}

#[test]
fn a_panicking_task_leaves_the_pool_usable() {
    use rayon::prelude::*;
    let p = pool(Some(2)).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.install(|| {
            (0..100)
                .into_par_iter()
                .for_each(|i| assert!(i != 57, "boom"))
        })
    }));
    assert!(r.is_err());
    let index = HammingIndex::with_codes(&[1, 2, 3], 1, None).unwrap();
    assert_eq!(index.search(&[3], 1, &p).unwrap(), (vec![0], vec![2]));
}
