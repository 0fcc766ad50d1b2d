//! The binding layer, and the only module that knows about Python: converts numpy arrays
//! (zero-copy, exact dtype, C order), releases the GIL around every heavy call, and maps
//! [`CoreError`] to Python exceptions.

use crate::bits::{self, SimdPath};
use crate::error::CoreError;
use crate::search::HammingIndex as CoreIndex;
use crate::{dedup, rank, threads};
use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayDescr, PyArrayDescrMethods, PyArrayMethods,
    PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyIsADirectoryError, PyMemoryError,
    PyNotADirectoryError, PyOSError, PyPermissionError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pyo3::create_exception!(
    cmrops._core,
    CorruptIndexError,
    PyValueError,
    "A saved HammingIndex file is truncated, corrupted, of a newer format version, or not an index file."
);

fn to_py(e: CoreError) -> PyErr {
    match e {
        CoreError::InvalidArgument { .. } => PyValueError::new_err(e.to_string()),
        CoreError::CorruptFile(msg) => CorruptIndexError::new_err(msg),
        CoreError::OutOfMemory(msg) => PyMemoryError::new_err(msg),
        CoreError::Io { kind, msg } => match kind {
            ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            ErrorKind::AlreadyExists => PyFileExistsError::new_err(msg),
            ErrorKind::IsADirectory => PyIsADirectoryError::new_err(msg),
            ErrorKind::NotADirectory => PyNotADirectoryError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".to_string())
}

/// Check that `obj` is a numpy array of exactly `dtype`, `ndim` dimensions, in C order.
fn checked_array<'py>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
    dtype: Bound<'py, PyArrayDescr>,
    expected: &str,
    ndim: usize,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let Ok(arr) = obj.cast::<PyUntypedArray>() else {
        return Err(PyTypeError::new_err(format!(
            "{arg}: expected {expected}, got {}",
            type_name(obj)
        )));
    };
    let have = arr.dtype();
    if !have.is_equiv_to(&dtype) {
        let name = have
            .str()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "another dtype".to_string());
        let order = if have.is_native_byteorder() == Some(false) {
            " (non-native byte order)"
        } else {
            ""
        };
        return Err(PyTypeError::new_err(format!(
            "{arg}: expected {expected}, got {name}{order}"
        )));
    }
    if arr.ndim() != ndim {
        let dims: Vec<String> = arr.shape().iter().map(|d| d.to_string()).collect();
        let shape = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        return Err(PyValueError::new_err(format!(
            "{arg}: expected {expected}, got a {}-D array of shape {shape}",
            arr.ndim()
        )));
    }
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{arg}: the array is not C-contiguous; pass np.ascontiguousarray({arg})"
        )));
    }
    Ok(arr.clone())
}

/// A uint64 matrix argument: the readonly borrow (kept alive while the slice is used) and its
/// column count.
struct Codes<'py> {
    array: PyReadonlyArray2<'py, u64>,
    cols: usize,
}

impl Codes<'_> {
    fn rows(&self) -> usize {
        self.array.shape()[0]
    }
}

fn codes_arg<'py>(obj: &Bound<'py, PyAny>, arg: &str, what: &str) -> PyResult<Codes<'py>> {
    let py = obj.py();
    let expected = format!("a numpy uint64 array of shape (n, {what})");
    let arr = checked_array(obj, arg, numpy::dtype::<u64>(py), &expected, 2)?;
    let cols = arr.shape()[1];
    if cols == 0 {
        return Err(PyValueError::new_err(format!(
            "{arg}: has zero columns; expected {expected} with at least one uint64 word per row"
        )));
    }
    let typed = arr.cast::<PyArray2<u64>>().map_err(PyErr::from)?;
    let array = typed
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{arg}: {e}")))?;
    Ok(Codes { array, cols })
}

fn slice_of<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    a: &'a numpy::PyReadonlyArray<'_, T, D>,
    arg: &str,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        PyValueError::new_err(format!(
            "{arg}: the array data is not aligned for its dtype; pass np.ascontiguousarray({arg}) or a copy"
        ))
    })
}

fn ids_arg<'py>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let py = obj.py();
    let arr = checked_array(
        obj,
        arg,
        numpy::dtype::<i64>(py),
        "a numpy int64 array of shape (n,)",
        1,
    )?;
    let typed = arr.cast::<PyArray1<i64>>().map_err(PyErr::from)?;
    typed
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{arg}: {e}")))
}

/// An integer argument: a Python int (or numpy integer) of any size. One beyond the `i64`
/// range is refused here by name, as the range checks refuse the others.
fn int_arg(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<i64> {
    match obj.extract::<i64>() {
        Ok(v) => Ok(v),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(obj.py()) => {
            Err(PyValueError::new_err(format!(
                "{arg}: {} is out of range",
                obj.str().map(|s| s.to_string()).unwrap_or_default()
            )))
        }
        Err(_) => Err(PyTypeError::new_err(format!(
            "{arg}: expected an int, got {}",
            type_name(obj)
        ))),
    }
}

/// [`int_arg`] for an argument that may be None.
fn opt_int_arg(obj: Option<&Bound<'_, PyAny>>, arg: &str) -> PyResult<Option<i64>> {
    obj.filter(|o| !o.is_none())
        .map(|o| int_arg(o, arg))
        .transpose()
}

fn pool(n_threads: Option<&Bound<'_, PyAny>>) -> PyResult<Arc<rayon::ThreadPool>> {
    let n_threads = opt_int_arg(n_threads, "n_threads")?;
    let n = match n_threads {
        None => None,
        Some(n) if n < 1 => {
            return Err(PyValueError::new_err(format!(
                "n_threads: must be at least 1 (or None for all cores), got {n}"
            )))
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    threads::pool(n).map_err(to_py)
}

fn radius_arg(radius: i64, words: usize) -> PyResult<u32> {
    let bits = words * 64;
    if radius < 0 || radius as u64 > bits as u64 {
        return Err(PyValueError::new_err(format!(
            "radius: must be between 0 and the code length ({bits} bits), got {radius}"
        )));
    }
    Ok(radius as u32)
}

fn width_mismatch(arg: &str, got: usize, want: usize, of: &str) -> PyErr {
    PyValueError::new_err(format!(
        "{arg}: has {got} uint64 words ({} bits) per row, but {of} has {want} ({} bits)",
        got * 64,
        want * 64
    ))
}

/// Two 2-D arrays returned together.
type Matrices<'py, A, B> = (Bound<'py, PyArray2<A>>, Bound<'py, PyArray2<B>>);
/// FAISS-style CSR radius-search result.
type Csr<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i32>>,
    Bound<'py, PyArray1<i64>>,
);

fn matrix<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    rows: usize,
    cols: usize,
) -> Bound<'py, PyArray2<T>> {
    Array2::from_shape_vec((rows, cols), v)
        .expect("result length matches its shape")
        .into_pyarray(py)
}

/// Exact Hamming k-NN / radius index over packed binary codes.
#[pyclass(module = "cmrops._core", name = "HammingIndex", frozen)]
struct PyHammingIndex {
    inner: RwLock<CoreIndex>,
    pool: Arc<rayon::ThreadPool>,
    n_threads: usize,
}

impl PyHammingIndex {
    // A panic while the lock is held cannot leave the index half-changed (every change is
    // validated first), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, CoreIndex> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, CoreIndex> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn wrap(index: CoreIndex, n_threads: Option<&Bound<'_, PyAny>>) -> PyResult<PyHammingIndex> {
        let pool = pool(n_threads)?;
        let n_threads = pool.current_num_threads();
        Ok(PyHammingIndex {
            inner: RwLock::new(index),
            pool,
            n_threads,
        })
    }
}

#[pymethods]
impl PyHammingIndex {
    #[new]
    #[pyo3(signature = (codes, ids = None, n_threads = None))]
    fn new(
        py: Python<'_>,
        codes: &Bound<'_, PyAny>,
        ids: Option<&Bound<'_, PyAny>>,
        n_threads: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyHammingIndex> {
        let codes = codes_arg(codes, "codes", "n_bits/64")?;
        let ids = ids.map(|i| ids_arg(i, "ids")).transpose()?;
        let words = codes.cols;
        let data = slice_of(&codes.array, "codes")?;
        let id_slice = ids.as_ref().map(|i| slice_of(i, "ids")).transpose()?;
        let index = py
            .detach(|| CoreIndex::with_codes(data, words, id_slice))
            .map_err(to_py)?;
        PyHammingIndex::wrap(index, n_threads)
    }

    /// Append codes; without ids they continue after the largest id.
    #[pyo3(signature = (codes, /, ids = None))]
    fn add(
        &self,
        py: Python<'_>,
        codes: &Bound<'_, PyAny>,
        ids: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let codes = codes_arg(codes, "codes", "n_bits/64")?;
        let ids = ids.map(|i| ids_arg(i, "ids")).transpose()?;
        let words = self.read().words();
        if codes.cols != words {
            return Err(width_mismatch("codes", codes.cols, words, "the index"));
        }
        let data = slice_of(&codes.array, "codes")?;
        let id_slice = ids.as_ref().map(|i| slice_of(i, "ids")).transpose()?;
        py.detach(|| self.write().add(data, id_slice))
            .map_err(to_py)
    }

    /// Remove the codes with these ids; returns how many were removed.
    #[pyo3(signature = (ids, /))]
    fn remove(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<usize> {
        let ids = ids_arg(ids, "ids")?;
        let id_slice = slice_of(&ids, "ids")?;
        Ok(py.detach(|| self.write().remove(id_slice)))
    }

    /// Exact k nearest neighbours: (distances int32 (q, k), ids int64 (q, k)).
    #[pyo3(signature = (queries, /, k))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: &Bound<'py, PyAny>,
    ) -> PyResult<Matrices<'py, i32, i64>> {
        let k = int_arg(k, "k")?;
        let q = codes_arg(queries, "queries", "n_bits/64")?;
        let words = self.read().words();
        if q.cols != words {
            return Err(width_mismatch("queries", q.cols, words, "the index"));
        }
        let data = slice_of(&q.array, "queries")?;
        let pool = &self.pool;
        let (d, i) = py
            .detach(|| self.read().search(data, k, pool))
            .map_err(to_py)?;
        let (rows, k) = (q.rows(), k as usize);
        Ok((matrix(py, d, rows, k), matrix(py, i, rows, k)))
    }

    /// Every code within `radius` (inclusive): (lims int64 (q+1,), distances int32, ids int64).
    #[pyo3(signature = (queries, /, radius))]
    fn range_search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        radius: &Bound<'py, PyAny>,
    ) -> PyResult<Csr<'py>> {
        let radius = int_arg(radius, "radius")?;
        let q = codes_arg(queries, "queries", "n_bits/64")?;
        let words = self.read().words();
        if q.cols != words {
            return Err(width_mismatch("queries", q.cols, words, "the index"));
        }
        let data = slice_of(&q.array, "queries")?;
        let pool = &self.pool;
        let (l, d, i) = py
            .detach(|| self.read().range_search(data, radius, pool))
            .map_err(to_py)?;
        Ok((l.into_pyarray(py), d.into_pyarray(py), i.into_pyarray(py)))
    }

    fn __len__(&self) -> usize {
        self.read().len()
    }

    #[getter]
    fn n_bits(&self) -> usize {
        self.read().n_bits()
    }

    #[getter]
    fn n_words(&self) -> usize {
        self.read().words()
    }

    #[getter]
    fn n_threads(&self) -> usize {
        self.n_threads
    }

    #[getter]
    fn memory_bytes(&self) -> usize {
        self.read().memory_bytes()
    }

    /// Every id, in row order.
    fn ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let ids = py.detach(|| self.read().ids()).map_err(to_py)?;
        Ok(ids.into_pyarray(py))
    }

    /// Write atomically to `path` (str or os.PathLike).
    #[pyo3(signature = (path, /))]
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.read().save(&path)).map_err(to_py)
    }

    /// Read an index written by `save`.
    #[staticmethod]
    #[pyo3(signature = (path, n_threads = None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        n_threads: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyHammingIndex> {
        let pool = pool(n_threads)?;
        let index = py.detach(|| CoreIndex::load(&path)).map_err(to_py)?;
        let n_threads = pool.current_num_threads();
        Ok(PyHammingIndex {
            inner: RwLock::new(index),
            pool,
            n_threads,
        })
    }

    fn __repr__(&self) -> String {
        let ix = self.read();
        format!(
            "HammingIndex(n={}, n_bits={}, ids={}, n_threads={})",
            ix.len(),
            ix.n_bits(),
            if ix.has_explicit_ids() {
                "'explicit'"
            } else {
                "'implicit'"
            },
            self.n_threads
        )
    }
}

/// All pairs of codes within `radius` (inclusive), as an int64 array of shape (m, 2).
#[pyfunction]
#[pyo3(signature = (codes, radius, other = None, n_threads = None, max_pairs = None))]
fn near_duplicates<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    radius: &Bound<'py, PyAny>,
    other: Option<&Bound<'py, PyAny>>,
    n_threads: Option<&Bound<'py, PyAny>>,
    max_pairs: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let radius = int_arg(radius, "radius")?;
    let max_pairs = match opt_int_arg(max_pairs, "max_pairs")? {
        Some(m) if m < 0 => {
            return Err(PyValueError::new_err(format!(
                "max_pairs: must be at least 0 (or None for no limit), got {m}"
            )))
        }
        m => m.map(|m| m as u64),
    };
    let c = codes_arg(codes, "codes", "n_bits/64")?;
    let o = other
        .map(|o| codes_arg(o, "other", "n_bits/64"))
        .transpose()?;
    if let Some(o) = &o {
        if o.cols != c.cols {
            return Err(width_mismatch("other", o.cols, c.cols, "codes"));
        }
    }
    let radius = radius_arg(radius, c.cols)?;
    let pool = pool(n_threads)?;
    let data = slice_of(&c.array, "codes")?;
    let other = o
        .as_ref()
        .map(|o| slice_of(&o.array, "other"))
        .transpose()?;
    let words = c.cols;
    let pairs = py
        .detach(|| dedup::near_duplicates(data, words, radius, other, max_pairs, &pool))
        .map_err(to_py)?;
    let m = pairs.len();
    // (m, 2) without a copy: the pairs' memory becomes the array's.
    Ok(matrix(py, pairs.into_flattened(), m, 2))
}

/// Group id (smallest row index of its component) of each code under "within `radius`".
#[pyfunction]
#[pyo3(signature = (codes, radius, n_threads = None))]
fn duplicate_groups<'py>(
    py: Python<'py>,
    codes: &Bound<'py, PyAny>,
    radius: &Bound<'py, PyAny>,
    n_threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let radius = int_arg(radius, "radius")?;
    let c = codes_arg(codes, "codes", "n_bits/64")?;
    let radius = radius_arg(radius, c.cols)?;
    let pool = pool(n_threads)?;
    let data = slice_of(&c.array, "codes")?;
    let words = c.cols;
    let groups = py
        .detach(|| dedup::duplicate_groups(data, words, radius, &pool))
        .map_err(to_py)?;
    Ok(groups.into_pyarray(py))
}

/// Per-query histograms over Hamming distance 0..=n_bits: (total, relevant), int64 (q, n_bits+1).
#[pyfunction]
#[pyo3(signature = (queries, database, query_labels, database_labels, n_threads = None))]
fn hamming_histogram<'py>(
    py: Python<'py>,
    queries: &Bound<'py, PyAny>,
    database: &Bound<'py, PyAny>,
    query_labels: &Bound<'py, PyAny>,
    database_labels: &Bound<'py, PyAny>,
    n_threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Matrices<'py, i64, i64>> {
    let q = codes_arg(queries, "queries", "n_bits/64")?;
    let d = codes_arg(database, "database", "n_bits/64")?;
    if d.cols != q.cols {
        return Err(width_mismatch("database", d.cols, q.cols, "queries"));
    }
    let ql = codes_arg(query_labels, "query_labels", "n_labels/64")?;
    let dl = codes_arg(database_labels, "database_labels", "n_labels/64")?;
    if dl.cols != ql.cols {
        return Err(width_mismatch(
            "database_labels",
            dl.cols,
            ql.cols,
            "query_labels",
        ));
    }
    if ql.rows() != q.rows() {
        return Err(PyValueError::new_err(format!(
            "query_labels: has {} rows but queries has {}",
            ql.rows(),
            q.rows()
        )));
    }
    if dl.rows() != d.rows() {
        return Err(PyValueError::new_err(format!(
            "database_labels: has {} rows but database has {}",
            dl.rows(),
            d.rows()
        )));
    }
    let pool = pool(n_threads)?;
    let (qs, ds) = (
        slice_of(&q.array, "queries")?,
        slice_of(&d.array, "database")?,
    );
    let (qls, dls) = (
        slice_of(&ql.array, "query_labels")?,
        slice_of(&dl.array, "database_labels")?,
    );
    let (words, lwords) = (q.cols, ql.cols);
    let (total, relevant) = py
        .detach(|| rank::hamming_histogram(qs, ds, words, qls, dls, lwords, &pool))
        .map_err(to_py)?;
    let (rows, bins) = (q.rows(), words * 64 + 1);
    Ok((
        matrix(py, total, rows, bins),
        matrix(py, relevant, rows, bins),
    ))
}

/// Names of the SIMD paths this CPU can run, slowest first.
#[pyfunction]
fn simd_paths() -> Vec<&'static str> {
    bits::available_paths()
        .into_iter()
        .map(SimdPath::name)
        .collect()
}

/// Name of the SIMD path in use.
#[pyfunction]
fn get_simd_path() -> &'static str {
    bits::active_path().name()
}

/// Use the named SIMD path ("portable", "scalar", "neon", "avx2" or "avx512") from now on,
/// process-wide.
#[pyfunction]
#[pyo3(signature = (name, /))]
fn set_simd_path(name: &str) -> PyResult<()> {
    let all: Vec<&str> = SimdPath::ALL.iter().map(|p| p.name()).collect();
    let path = SimdPath::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "name: unknown SIMD path {name:?}; expected one of {}",
            all.join(", ")
        ))
    })?;
    bits::set_path(path).map_err(|e| match e {
        CoreError::InvalidArgument { msg, .. } => PyValueError::new_err(format!("name: {msg}")),
        other => to_py(other),
    })
}

/// Exact Hamming search, near-duplicate and ranking kernels over packed binary codes.
#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHammingIndex>()?;
    m.add("CorruptIndexError", m.py().get_type::<CorruptIndexError>())?;
    m.add_function(wrap_pyfunction!(near_duplicates, m)?)?;
    m.add_function(wrap_pyfunction!(duplicate_groups, m)?)?;
    m.add_function(wrap_pyfunction!(hamming_histogram, m)?)?;
    m.add_function(wrap_pyfunction!(simd_paths, m)?)?;
    m.add_function(wrap_pyfunction!(get_simd_path, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_path, m)?)?;
    Ok(())
}
