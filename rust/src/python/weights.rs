//! `wao_scores` and `numgen_layout` for Python (stubs in python/waolb/_native.pyi).

use pyo3::buffer::{Element, PyBuffer};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

/// Upstream WAO-LB scores for groups of endpoints.
///
/// Group `g` is `delta_watts[offsets[g]:offsets[g+1]]`; `offsets` starts at 0, never
/// decreases and ends at `len(delta_watts)`, else ValueError. Returns one score in [0, 100]
/// per endpoint, 0 meaning "leave out"; NaN or infinite deltas score 0, and a group in which
/// nothing scores above 0 gets all-1 scores. Float64 buffers are read fastest.
#[pyfunction]
fn wao_scores<'py>(
    delta_watts: &Bound<'py, PyAny>,
    offsets: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let deltas = float_values(delta_watts)?;
    let offsets = offset_values(offsets)?;
    let scores = crate::weights::wao_scores(&deltas, &offsets)
        .map_err(|err| PyValueError::new_err(err.to_string()))?;
    PyList::new(delta_watts.py(), scores)
}

/// The numgen range layout: (modulus, per-endpoint inclusive range or None for weight 0).
///
/// Raises ValueError for a weight outside [0, 2**32 - 1], a total above 2**32 - 1, or no
/// weight above 0.
#[pyfunction]
fn numgen_layout(
    weights: &Bound<'_, PyAny>,
) -> PyResult<(u32, Vec<Option<crate::weights::NumgenRange>>)> {
    let values: Vec<i64> = weights.extract()?;
    let weights = values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            u32::try_from(value).map_err(|_| {
                PyValueError::new_err(format!(
                    "weights[{index}] = {value} is outside 0..={}",
                    u32::MAX
                ))
            })
        })
        .collect::<PyResult<Vec<u32>>>()?;
    let layout = crate::weights::numgen_layout(&weights)
        .map_err(|err| PyValueError::new_err(err.to_string()))?;
    Ok((layout.modulus(), layout.ranges().to_vec()))
}

/// Reads float64 buffers (array('d'), memoryview, numpy) with one copy; anything else is
/// read as a sequence of numbers, which is several times slower.
fn float_values(delta_watts: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    match PyBuffer::<f64>::get(delta_watts) {
        Ok(buffer) => one_dimensional(buffer, "delta_watts")?.to_vec(delta_watts.py()),
        Err(_) => delta_watts.extract(),
    }
}

/// Reads unsigned or signed 32/64-bit integer buffers, else any sequence of ints.
fn offset_values(offsets: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    if let Some(values) = buffer_offsets::<u64>(offsets)? {
        return Ok(values);
    }
    if let Some(values) = buffer_offsets::<i64>(offsets)? {
        return Ok(values);
    }
    if let Some(values) = buffer_offsets::<u32>(offsets)? {
        return Ok(values);
    }
    if let Some(values) = buffer_offsets::<i32>(offsets)? {
        return Ok(values);
    }
    let values: Vec<i64> = offsets.extract()?;
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| offset(index, value.into()))
        .collect()
}

/// `None` if `offsets` is not a buffer of `T`, so the caller can try the next type.
fn buffer_offsets<T: Element + Copy + Into<i128>>(
    offsets: &Bound<'_, PyAny>,
) -> PyResult<Option<Vec<usize>>> {
    let Ok(buffer) = PyBuffer::<T>::get(offsets) else {
        return Ok(None);
    };
    let values = one_dimensional(buffer, "offsets")?.to_vec(offsets.py())?;
    let offsets = values
        .into_iter()
        .enumerate()
        .map(|(index, value)| offset(index, value.into()))
        .collect::<PyResult<_>>()?;
    Ok(Some(offsets))
}

fn offset(index: usize, value: i128) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| {
        let problem = if value < 0 { "negative" } else { "too large" };
        PyValueError::new_err(format!("offsets[{index}] = {value} is {problem}"))
    })
}

/// A multi-dimensional buffer would be silently flattened by `to_vec`; refuse it instead.
fn one_dimensional<T: Element>(buffer: PyBuffer<T>, name: &str) -> PyResult<PyBuffer<T>> {
    match buffer.dimensions() {
        1 => Ok(buffer),
        dimensions => Err(PyValueError::new_err(format!(
            "{name} must be one-dimensional, not a {dimensions}-dimensional buffer"
        ))),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(wao_scores, m)?)?;
    m.add_function(wrap_pyfunction!(numgen_layout, m)?)?;
    Ok(())
}
