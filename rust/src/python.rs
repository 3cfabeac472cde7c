//! The `waolb._native` Python module: thin conversions around the pure Rust core.
use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crate::weights::py::register(m)?;
    crate::dataplane::py::register(m)?;
    Ok(())
}
