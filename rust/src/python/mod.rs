//! The `waolb._native` Python module: thin conversions around the pure Rust core, kept
//! apart from it (stubs in python/waolb/_native.pyi).

mod dataplane;
mod errors;
mod port;
mod results;
mod weights;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    weights::register(m)?;
    dataplane::register(m)?;
    Ok(())
}
