//! Every SIMD path the CPU has agrees with the scalar path and with a naive popcount, for every
//! word count the kernels specialise and for generic ones, on odd sizes and tails.

use cmrops_core::bits::{
    active_path, available_paths, block_len, hamming, set_path, Block, BlockBuf, Kernel, SimdPath,
    Sink,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn naive(a: &[u64], b: &[u64]) -> u32 {
    let mut d = 0;
    for (x, y) in a.iter().zip(b) {
        let z = x ^ y;
        for bit in 0..64 {
            d += ((z >> bit) & 1) as u32;
        }
    }
    d
}

/// Random codes with clustered bits so that small distances and ties occur.
fn codes(rng: &mut StdRng, n: usize, words: usize) -> Vec<u64> {
    let base: Vec<u64> = (0..words).map(|_| rng.random()).collect();
    (0..n * words)
        .map(|i| {
            let flips = rng.random::<u64>() & rng.random::<u64>() & rng.random::<u64>();
            if rng.random_range(0..4) == 0 {
                rng.random()
            } else {
                base[i % words] ^ flips
            }
        })
        .collect()
}

const WORDS: [usize; 9] = [1, 2, 3, 4, 5, 8, 9, 16, 40];
const LENS: [usize; 12] = [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 31, 33];

#[test]
fn hamming_matches_naive() {
    let mut rng = StdRng::seed_from_u64(1);
    for words in WORDS {
        let c = codes(&mut rng, 2, words);
        assert_eq!(
            hamming(&c[..words], &c[words..]),
            naive(&c[..words], &c[words..])
        );
    }
}

#[test]
fn distances_agree_on_every_path() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut lens: Vec<usize> = LENS.to_vec();
    lens.extend([63, 64, 65, 100, 127, 129, 257]);
    for words in WORDS {
        for &len in &lens {
            let c = codes(&mut rng, len + 5, words);
            let q = codes(&mut rng, 1, words);
            // Use a window that does not start at row 0, so blocks see unaligned data.
            let start = 5.min(len);
            let want: Vec<u32> = c[start * words..(start + len) * words]
                .chunks_exact(words)
                .map(|r| naive(r, &q))
                .collect();
            let mut buf = BlockBuf::new();
            for path in available_paths() {
                let kernel = Kernel::new(path).unwrap();
                let block = buf.load(&c, words, start, len);
                assert_eq!(block.len(), len);
                let mut out = vec![u32::MAX; len];
                kernel.distances(block, &q, &mut out);
                assert_eq!(out, want, "path {path} words {words} len {len}");
            }
        }
    }
}

/// Collects offers above a fixed threshold.
struct Fixed {
    t: i64,
    got: Vec<(usize, u32)>,
}

impl Sink for Fixed {
    fn threshold(&self) -> i64 {
        self.t
    }
    fn offer(&mut self, i: usize, d: u32) {
        if d as i64 <= self.t {
            self.got.push((i, d));
        }
    }
}

/// Keeps the single best code and tightens the threshold to strictly below it, like a top-1.
struct Best {
    best: Option<(u32, usize)>,
    offers: usize,
}

impl Sink for Best {
    fn threshold(&self) -> i64 {
        self.best.map_or(i64::MAX, |(d, _)| d as i64 - 1)
    }
    fn offer(&mut self, i: usize, d: u32) {
        self.offers += 1;
        if self.best.is_none_or(|(bd, _)| d < bd) {
            self.best = Some((d, i));
        }
    }
}

#[test]
fn scan_agrees_on_every_path() {
    let mut rng = StdRng::seed_from_u64(3);
    for words in WORDS {
        for len in LENS.iter().copied().chain([64, 100, 300]) {
            let c = codes(&mut rng, len, words);
            let q = codes(&mut rng, 1, words);
            let dists: Vec<u32> = c.chunks_exact(words).map(|r| naive(r, &q)).collect();
            let mut buf = BlockBuf::new();
            for t in [
                -1i64,
                0,
                3,
                (words * 20) as i64,
                (words * 32) as i64,
                (words * 64) as i64,
                i64::MAX,
            ] {
                let want: Vec<(usize, u32)> = dists
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|&(_, d)| d as i64 <= t)
                    .collect();
                for path in available_paths() {
                    let block = buf.load(&c, words, 0, len);
                    let mut s = Fixed { t, got: Vec::new() };
                    Kernel::new(path).unwrap().scan(block, &q, &mut s);
                    assert_eq!(s.got, want, "path {path} words {words} len {len} t {t}");
                }
            }
            let want_best = dists
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|&(i, d)| (d, i))
                .map(|(i, d)| (d, i));
            for path in available_paths() {
                let block = buf.load(&c, words, 0, len);
                let mut s = Best {
                    best: None,
                    offers: 0,
                };
                Kernel::new(path).unwrap().scan(block, &q, &mut s);
                assert_eq!(s.best, want_best, "path {path} words {words} len {len}");
                assert!(s.offers <= len);
            }
        }
    }
}

#[test]
fn mark_relevant_agrees_on_every_path() {
    let mut rng = StdRng::seed_from_u64(4);
    for len in [0usize, 1, 7, 8, 9, 16, 17, 100] {
        let labels: Vec<u64> = (0..len).map(|_| 1u64 << rng.random_range(0..8)).collect();
        let q = 0b1010_0101u64;
        let base: Vec<u32> = (0..len).map(|_| rng.random_range(0..65)).collect();
        let want: Vec<u32> = base
            .iter()
            .zip(&labels)
            .map(|(&b, &l)| b + if q & l != 0 { 65 } else { 0 })
            .collect();
        for path in available_paths() {
            let mut slot = base.clone();
            Kernel::new(path)
                .unwrap()
                .mark_relevant(&mut slot, q, &labels, 65);
            assert_eq!(slot, want, "path {path} len {len}");
        }
    }
}

#[test]
fn block_view_is_word_major() {
    let words = 3;
    let rows: Vec<u64> = (0..4 * words as u64).collect();
    let mut buf = BlockBuf::new();
    let b = buf.load(&rows, words, 1, 2);
    assert_eq!((b.len(), b.words()), (2, 3));
    assert_eq!(b.word(0, 0), 3);
    assert_eq!(b.word(1, 2), 8);
    let direct = Block::new(&rows, 4, 3, 4);
    assert_eq!(direct.word(1, 1), 5);
    assert!(block_len(1) >= 64 && block_len(1).is_multiple_of(64));
    assert!(block_len(8) >= 64 && block_len(512) == 64);
}

#[test]
fn path_selection() {
    let paths = available_paths();
    assert_eq!(paths[0], SimdPath::Portable);
    assert!(paths.contains(&active_path()));
    for p in SimdPath::ALL {
        assert_eq!(SimdPath::from_name(p.name()), Some(p));
        assert_eq!(Kernel::new(p).is_ok(), p.is_available());
        if !p.is_available() {
            assert!(set_path(p).is_err());
        }
    }
    // Setting the active path to itself is always allowed (other tests may run concurrently).
    set_path(active_path()).unwrap();
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vpopcntdq") {
        assert!(paths.contains(&SimdPath::Avx512));
    }
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        paths.contains(&SimdPath::Scalar),
        is_x86_feature_detected!("popcnt")
    );
    // Every aarch64 CPU has NEON and a popcount (cnt): both paths run, and these tests cover them.
    #[cfg(target_arch = "aarch64")]
    assert_eq!(
        paths,
        vec![SimdPath::Portable, SimdPath::Scalar, SimdPath::Neon]
    );
}

/// A top-k sink (by distance, then row): tightens its threshold as codes arrive, strictly below
/// the worst kept distance once full, as the search does (rows are offered in ascending order).
struct TopRows {
    k: usize,
    kept: Vec<(u32, usize)>,
}

impl Sink for TopRows {
    fn threshold(&self) -> i64 {
        if self.kept.len() < self.k {
            i64::MAX
        } else {
            self.kept.last().map_or(i64::MAX, |&(d, _)| d as i64 - 1)
        }
    }
    fn offer(&mut self, i: usize, d: u32) {
        let at = self.kept.partition_point(|&x| x <= (d, i));
        if at < self.k {
            self.kept.insert(at, (d, i));
            self.kept.truncate(self.k);
        }
    }
}

/// Every path's scanner, with a [`TopRows`] sink of `k` per query over `rows` of `codes`, keeps
/// what sorting `dists` (one row of distances per query) keeps.
fn top_k_on_every_path(
    codes: &[u64],
    queries: &[u64],
    words: usize,
    rows: &std::ops::Range<usize>,
    dists: &[Vec<u32>],
    k: usize,
) {
    let nq = dists.len();
    let want: Vec<Vec<(u32, usize)>> = dists
        .iter()
        .map(|d| {
            let mut all: Vec<(u32, usize)> = rows.clone().map(|i| (d[i], i)).collect();
            all.sort_unstable();
            all.truncate(k);
            all
        })
        .collect();
    for path in available_paths() {
        let mut sinks: Vec<TopRows> = (0..nq)
            .map(|_| TopRows {
                k,
                kept: Vec::new(),
            })
            .collect();
        Kernel::new(path)
            .unwrap()
            .scanner(queries, words)
            .scan(codes, rows.clone(), &mut sinks);
        let got: Vec<Vec<(u32, usize)>> = sinks.into_iter().map(|s| s.kept).collect();
        assert_eq!(
            got, want,
            "path {path} words {words} nq {nq} rows {rows:?} k {k}"
        );
    }
}

/// Collects every offer within a fixed threshold, checking that rows come in ascending order.
struct Ordered {
    t: i64,
    last: Option<usize>,
    got: Vec<(usize, u32)>,
}

impl Sink for Ordered {
    fn threshold(&self) -> i64 {
        self.t
    }
    fn offer(&mut self, i: usize, d: u32) {
        assert!(self.last.is_none_or(|l| i > l), "rows offered out of order");
        self.last = Some(i);
        if d as i64 <= self.t {
            self.got.push((i, d));
        }
    }
}

#[test]
fn scanner_agrees_on_every_path() {
    let mut rng = StdRng::seed_from_u64(5);
    // Query counts below and above the batch size where the AVX2 path switches kernels; row
    // ranges that start inside the codes and end on partial groups of 32.
    for words in [1usize, 2, 3, 4, 5, 8, 9] {
        let n = 200;
        let c = codes(&mut rng, n, words);
        for nq in [1usize, 5, 17] {
            let q = codes(&mut rng, nq, words);
            for rows in [0..n, 3..n - 1, 5..38, 40..40] {
                let dists: Vec<Vec<u32>> = q
                    .chunks_exact(words)
                    .map(|qr| c.chunks_exact(words).map(|r| naive(r, qr)).collect())
                    .collect();
                for t in [-1i64, 0, 5, (words * 28) as i64, i64::MAX] {
                    let want: Vec<Vec<(usize, u32)>> = dists
                        .iter()
                        .map(|d| {
                            rows.clone()
                                .map(|i| (i, d[i]))
                                .filter(|&(_, x)| x as i64 <= t)
                                .collect()
                        })
                        .collect();
                    for path in available_paths() {
                        let kernel = Kernel::new(path).unwrap();
                        let mut sinks: Vec<Ordered> = (0..nq)
                            .map(|_| Ordered {
                                t,
                                last: None,
                                got: Vec::new(),
                            })
                            .collect();
                        kernel.scanner(&q, words).scan(&c, rows.clone(), &mut sinks);
                        let got: Vec<Vec<(usize, u32)>> =
                            sinks.into_iter().map(|s| s.got).collect();
                        assert_eq!(
                            got, want,
                            "path {path} words {words} nq {nq} rows {rows:?} t {t}"
                        );
                    }
                }
                for k in [1usize, 10, 150] {
                    top_k_on_every_path(&c, &q, words, &rows, &dists, k);
                }
            }
        }
    }
}

#[test]
fn scanner_edges_of_the_paired_kernel() {
    // 256-bit codes, many queries (the AVX2 path looks two queries up at once, with byte sums
    // modulo 256): several blocks and a partial group, an odd and an even number of queries,
    // codes at distance 0, 1, 255 and 256 from a query, thresholds around 255.
    let words = 4;
    let mut rng = StdRng::seed_from_u64(11);
    let n = 700;
    for nq in [16usize, 17, 40] {
        let q: Vec<u64> = (0..nq * words).map(|_| rng.random()).collect();
        let mut c: Vec<u64> = (0..n * words).map(|_| rng.random()).collect();
        for (j, qr) in q.chunks_exact(words).enumerate() {
            let at = |k: usize| (j * 37 + k * 211) % n * words;
            let flipped: Vec<u64> = qr.iter().map(|w| !w).collect();
            c[at(0)..at(0) + words].copy_from_slice(&flipped);
            c[at(1)..at(1) + words].copy_from_slice(qr);
            c[at(2)..at(2) + words].copy_from_slice(&flipped);
            c[at(2)] ^= 1 << (j % 64);
            c[at(3)..at(3) + words].copy_from_slice(qr);
            c[at(3) + 3] ^= 1 << 63;
        }
        let dists: Vec<Vec<u32>> = q
            .chunks_exact(words)
            .map(|qr| c.chunks_exact(words).map(|r| naive(r, qr)).collect())
            .collect();
        for rows in [0..n, 1..n - 3] {
            for t in [0i64, 1, 100, 253, 254, 255, 256, i64::MAX] {
                let want: Vec<Vec<(usize, u32)>> = dists
                    .iter()
                    .map(|d| {
                        rows.clone()
                            .map(|i| (i, d[i]))
                            .filter(|&(_, x)| x as i64 <= t)
                            .collect()
                    })
                    .collect();
                for path in available_paths() {
                    let mut sinks: Vec<Ordered> = (0..nq)
                        .map(|_| Ordered {
                            t,
                            last: None,
                            got: Vec::new(),
                        })
                        .collect();
                    Kernel::new(path).unwrap().scanner(&q, words).scan(
                        &c,
                        rows.clone(),
                        &mut sinks,
                    );
                    let got: Vec<Vec<(usize, u32)>> = sinks.into_iter().map(|s| s.got).collect();
                    assert_eq!(got, want, "path {path} nq {nq} rows {rows:?} t {t}");
                }
            }
            for k in [1usize, 3, 10] {
                top_k_on_every_path(&c, &q, words, &rows, &dists, k);
            }
        }
    }
}
