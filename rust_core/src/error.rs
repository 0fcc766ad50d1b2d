//! Errors of the pure core. Plain enum, no PyO3: only `python.rs` maps these to exceptions.

use std::fmt;

/// Every way a core call can refuse its input or fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// An argument has an invalid value (wrong width, k out of range, duplicated id, ...).
    /// `arg` names the argument as the Python caller spelled it.
    InvalidArgument { arg: &'static str, msg: String },
    /// A saved index file is truncated, corrupted, of a newer version or not an index at all.
    CorruptFile(String),
    /// Reading or writing a file failed.
    Io {
        kind: std::io::ErrorKind,
        msg: String,
    },
    /// A result or working buffer does not fit in memory (an allocation failed, or its size is
    /// beyond what this machine can address). The message names what and how large.
    OutOfMemory(String),
}

impl CoreError {
    pub fn invalid(arg: &'static str, msg: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            arg,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::InvalidArgument { arg, msg } => write!(f, "{arg}: {msg}"),
            CoreError::CorruptFile(msg) => write!(f, "{msg}"),
            CoreError::Io { msg, .. } => write!(f, "{msg}"),
            CoreError::OutOfMemory(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for CoreError {}

impl From<std::io::Error> for CoreError {
    fn from(e: std::io::Error) -> Self {
        CoreError::Io {
            kind: e.kind(),
            msg: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, CoreError>;

/// `n` with thousands separators: `"7,200,000,000"`.
pub fn grouped(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `bytes` for a person: `"7.20 GB (7,200,000,000 bytes)"`.
pub fn describe_bytes(bytes: u128) -> String {
    let units = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")];
    match units.iter().find(|(scale, _)| bytes as f64 >= *scale) {
        Some((scale, unit)) => format!(
            "{:.2} {unit} ({} bytes)",
            bytes as f64 / scale,
            grouped(bytes)
        ),
        None => format!("{} bytes", grouped(bytes)),
    }
}

/// The error for `what` (e.g. "search: the distances") needing `count` items of `size` bytes
/// that could not be allocated.
pub fn out_of_memory(what: &str, count: u128, size: usize) -> CoreError {
    CoreError::OutOfMemory(format!(
        "{what} need {} x {size} bytes = {}, more memory than is available",
        grouped(count),
        describe_bytes(count.saturating_mul(size as u128))
    ))
}

/// An empty vector with room for `count` items, or [`CoreError::OutOfMemory`] naming `what`.
pub fn try_with_capacity<T>(count: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(count)
        .map_err(|_| out_of_memory(what, count as u128, std::mem::size_of::<T>()))?;
    Ok(v)
}

/// `count` copies of `value`, or [`CoreError::OutOfMemory`] naming `what`.
pub fn try_filled<T: Clone>(count: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = try_with_capacity(count, what)?;
    v.resize(count, value);
    Ok(v)
}

/// Room for `extra` more items in `v`, or [`CoreError::OutOfMemory`] naming `what`.
pub fn try_reserve<T>(v: &mut Vec<T>, extra: usize, what: &str) -> Result<()> {
    v.try_reserve(extra).map_err(|_| {
        out_of_memory(
            what,
            v.len() as u128 + extra as u128,
            std::mem::size_of::<T>(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(describe_bytes(999), "999 bytes");
        assert_eq!(
            describe_bytes(7_200_000_000),
            "7.20 GB (7,200,000,000 bytes)"
        );
        assert_eq!(describe_bytes(1_000), "1.00 kB (1,000 bytes)");
        let e = try_with_capacity::<[i64; 2]>(usize::MAX / 4, "the pairs").unwrap_err();
        assert!(matches!(e, CoreError::OutOfMemory(_)), "{e}");
        assert!(e.to_string().contains("the pairs need"), "{e}");
    }
}
