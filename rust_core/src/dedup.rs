//! Near-duplicate pairs and groups over packed codes.
//!
//! (skeleton: exact brute force; the dedup helper replaces the internals with multi-index
//! hashing behind the same signatures and keeps brute force as the reference)

use crate::bits::hamming;
use crate::error::{CoreError, Result};

fn check(codes: &[u64], words: usize, radius: u32) -> Result<usize> {
    if words == 0 {
        return Err(CoreError::invalid("codes", "codes must have at least one 64-bit word per row"));
    }
    if codes.len() % words != 0 {
        return Err(CoreError::invalid("codes", "length is not a multiple of the word count"));
    }
    if radius as usize > words * 64 {
        return Err(CoreError::invalid("radius", format!("{radius} exceeds the code length of {} bits", words * 64)));
    }
    Ok(codes.len() / words)
}

/// All pairs within `radius` (inclusive): `(i, j)` with `i < j` inside `codes` when `other` is
/// `None`, else `(i, j)` with `i` indexing `codes` and `j` indexing `other`. Sorted ascending.
pub fn near_duplicates(
    codes: &[u64],
    words: usize,
    radius: u32,
    other: Option<&[u64]>,
    pool: &rayon::ThreadPool,
) -> Result<Vec<[i64; 2]>> {
    let n = check(codes, words, radius)?;
    let _ = pool;
    let mut out = Vec::new();
    match other {
        None => {
            for i in 0..n {
                for j in i + 1..n {
                    if hamming(&codes[i * words..(i + 1) * words], &codes[j * words..(j + 1) * words]) <= radius {
                        out.push([i as i64, j as i64]);
                    }
                }
            }
        }
        Some(o) => {
            let m = check(o, words, radius)?;
            for i in 0..n {
                for j in 0..m {
                    if hamming(&codes[i * words..(i + 1) * words], &o[j * words..(j + 1) * words]) <= radius {
                        out.push([i as i64, j as i64]);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Connected components of the "within `radius`" graph; each row gets the smallest row index
/// of its component as group id.
pub fn duplicate_groups(codes: &[u64], words: usize, radius: u32, pool: &rayon::ThreadPool) -> Result<Vec<i64>> {
    let n = check(codes, words, radius)?;
    let pairs = near_duplicates(codes, words, radius, None, pool)?;
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for [a, b] in pairs {
        let (ra, rb) = (find(&mut parent, a as usize), find(&mut parent, b as usize));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            parent[hi] = lo;
        }
    }
    Ok((0..n).map(|i| find(&mut parent, i) as i64).collect())
}
