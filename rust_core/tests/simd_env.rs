//! `CMROPS_SIMD` picks the process-wide path at first use (its own test binary, so that no
//! other test has touched the path before).

use cmrops_core::bits::{active_path, best_path, set_path, SimdPath};

#[test]
fn environment_variable_selects_the_path_once() {
    std::env::set_var("CMROPS_SIMD", "scalar");
    assert_eq!(active_path(), SimdPath::Scalar);
    std::env::set_var("CMROPS_SIMD", "avx512");
    assert_eq!(active_path(), SimdPath::Scalar, "read once, at first use");
    set_path(best_path()).unwrap();
    assert_eq!(active_path(), best_path());
    set_path(SimdPath::Scalar).unwrap();
    assert_eq!(active_path(), SimdPath::Scalar);
}
