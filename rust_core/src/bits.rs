//! Popcount kernels over packed codes, with runtime SIMD dispatch.
//!
//! (skeleton: the engine helper fills in the SIMD paths)

/// Hamming distance between two codes of equal word count (portable reference).
#[inline]
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}
