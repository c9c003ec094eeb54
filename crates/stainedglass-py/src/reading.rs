//! What a server could read back from transformed embeddings, for notebooks: the
//! nearest-neighbour decoding the attack suite runs first. It is the weakest attack; a learned
//! inverter reads far more (see docs/eval/ of the repository).

use crate::errors::err;
use crate::text::StainedGlassTransformForText;
use candle_core::{Device, Tensor};
use numpy::{PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use stainedglass_metrics::EmbeddingIndex;

/// Decodes `inputs_embeds` (float32 `(seq, hidden)`) to the nearest rows of the transform's
/// embedding table (L2). Returns `input_ids` (the reading), `text`, and — given the true
/// `input_ids` and `noise_mask` — `recovered`, the share of transformed tokens read correctly.
#[pyfunction]
#[pyo3(signature = (transform, inputs_embeds, input_ids = None, noise_mask = None))]
pub fn nearest_neighbour_reading<'py>(
    py: Python<'py>,
    transform: &StainedGlassTransformForText,
    inputs_embeds: PyReadonlyArray2<'py, f32>,
    input_ids: Option<Vec<i64>>,
    noise_mask: Option<Vec<i64>>,
) -> PyResult<Bound<'py, PyDict>> {
    let shape = inputs_embeds.shape().to_vec();
    let hidden = transform.inner.hidden_size();
    if shape[1] != hidden || shape[0] == 0 {
        return Err(PyValueError::new_err(format!(
            "inputs_embeds has shape {shape:?}; expected (seq, {hidden}) with seq > 0"
        )));
    }
    let data: Vec<f32> = inputs_embeds.as_array().iter().copied().collect();
    if data.iter().any(|v| !v.is_finite()) {
        return Err(PyValueError::new_err("inputs_embeds hold NaN or Inf"));
    }
    let inner = transform.inner.clone();
    let read = py
        .detach(|| -> Result<Vec<u32>, String> {
            let x = Tensor::from_vec(data, (shape[0], shape[1]), &Device::Cpu)
                .map_err(|e| e.to_string())?;
            let index = EmbeddingIndex::new(inner.embeddings().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let (_, l2, _) = index.nearest(&x).map_err(|e| e.to_string())?;
            Ok(l2)
        })
        .map_err(err)?;
    let d = PyDict::new(py);
    d.set_item(
        "text",
        transform
            .inner
            .tokenizer()
            .decode(&read, false)
            .map_err(err)?,
    )?;
    if let Some(ids) = input_ids {
        if ids.len() != read.len() {
            return Err(PyValueError::new_err(format!(
                "input_ids has {} entries for {} positions",
                ids.len(),
                read.len()
            )));
        }
        let mask = noise_mask.unwrap_or_else(|| vec![1; ids.len()]);
        if mask.len() != ids.len() {
            return Err(PyValueError::new_err(
                "noise_mask and input_ids differ in length",
            ));
        }
        let scored: Vec<usize> = (0..ids.len()).filter(|&i| mask[i] != 0).collect();
        let hits = scored
            .iter()
            .filter(|&&i| i64::from(read[i]) == ids[i])
            .count();
        d.set_item("recovered", hits as f64 / scored.len().max(1) as f64)?;
    }
    d.set_item(
        "input_ids",
        read.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(),
    )?;
    Ok(d)
}
