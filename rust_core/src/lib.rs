//! cmrops core: exact Hamming search over packed binary codes.
//!
//! Codes are rows of `words` little-endian `u64` words (n_bits = 64 * words); bit `j` of a code
//! is bit `j % 64` of word `j / 64`. Viewed as bytes this is exactly FAISS's binary layout.
//!
//! Pure modules (no PyO3): [`bits`] popcount kernels with runtime SIMD dispatch, [`search`]
//! the kNN / radius index, [`dedup`] near-duplicate pairs and groups by multi-index hashing,
//! [`rank`] Hamming-ranking histograms for evaluation. [`python`] is the binding layer.

pub mod bits;
pub mod dedup;
pub mod error;
mod pairs;
pub mod rank;
pub mod search;
pub mod threads;

#[cfg(feature = "python")]
mod python;

pub use error::{CoreError, Result};
