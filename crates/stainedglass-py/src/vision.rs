//! The image noise layers (`CloakNoiseLayer`, `PatchCloakNoiseLayer`) for Python.

use crate::convert::{array, return_tensors};
use crate::errors::err;
use candle_core::{Device, Tensor};
use numpy::{PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use stainedglass_core::io::load_noise_layer;
use stainedglass_core::{NoiseLayer as _, NoiseRng, VisionNoiseLayer};
use std::path::PathBuf;

/// A trained image SGT, loaded from the folder `sgt vision train` writes (`noise_layer/`).
#[pyclass(module = "stainedglass", frozen)]
pub struct NoiseLayer {
    inner: VisionNoiseLayer,
}

#[pymethods]
impl NoiseLayer {
    #[staticmethod]
    fn from_pretrained(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py
            .detach(|| load_noise_layer(&path, &Device::Cpu))
            .map_err(err)?;
        Ok(Self { inner })
    }

    /// The per-image shape `(channels, height, width)` the layer takes.
    #[getter]
    fn input_shape(&self) -> Vec<usize> {
        self.inner.input_shape().to_vec()
    }

    /// Transforms `images`, a float32 array `(n, channels, height, width)` with finite values,
    /// with fresh noise (OS random source unless `seed` is given).
    #[pyo3(signature = (images, *, return_tensors = "np", seed = None))]
    fn apply<'py>(
        &self,
        py: Python<'py>,
        images: PyReadonlyArray4<'py, f32>,
        return_tensors: &str,
        seed: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = return_tensors_checked(return_tensors)?;
        let shape = images.shape().to_vec();
        let want = self.inner.input_shape();
        if shape[1..] != *want {
            return Err(PyValueError::new_err(format!(
                "images have shape {shape:?}; this layer takes (n, {}, {}, {})",
                want[0], want[1], want[2]
            )));
        }
        if shape[0] == 0 {
            return Err(PyValueError::new_err("no images (the first axis is 0)"));
        }
        let data: Vec<f32> = match images.as_slice() {
            Ok(s) => s.to_vec(),
            Err(_) => images.as_array().iter().copied().collect(),
        };
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "images hold a non-finite value (NaN or Inf) at flat index {i}"
            )));
        }
        let out = py
            .detach(|| -> Result<Vec<f32>, String> {
                let x = Tensor::from_vec(data, shape.clone(), &Device::Cpu)
                    .map_err(|e| e.to_string())?;
                let y = self
                    .inner
                    .transform(&x, None, &mut NoiseRng::new(seed))
                    .map_err(|e| e.to_string())?;
                y.flatten_all()
                    .and_then(|y| y.to_vec1::<f32>())
                    .map_err(|e| e.to_string())
            })
            .map_err(err)?;
        array(py, out, &shape, t)
    }
}

fn return_tensors_checked(s: &str) -> PyResult<crate::convert::Tensors> {
    return_tensors(s)
}
