//! `StainedGlassTransformForText` and `TokenizerWrapper` for Python.

use crate::convert::{array, prompts, Prompts};
use crate::errors::err;
use candle_core::{DType, Device};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use stainedglass_core::NoiseRng;
use stainedglass_text as text;
use std::path::PathBuf;
use std::sync::Arc;

/// The client-side text transform: tokenizer, chat template, embedding table and the trained
/// SGT, loaded from the folder `sgt text export` writes.
#[pyclass(module = "stainedglass", frozen)]
pub struct StainedGlassTransformForText {
    pub(crate) inner: Arc<text::StainedGlassTransformForText>,
}

fn u8s_to_i64(v: &[u8]) -> Vec<i64> {
    v.iter().map(|&x| i64::from(x)).collect()
}

fn u32s_to_i64(v: &[u32]) -> Vec<i64> {
    v.iter().map(|&x| i64::from(x)).collect()
}

#[pymethods]
impl StainedGlassTransformForText {
    /// Loads an artefact folder; every file's sha256 is checked against its config.
    /// `precision`: the SGT's products in `"f32"` (the trained numbers) or `"bf16"` (f32
    /// accumulation; faster on CPUs with AVX-512 BF16).
    #[staticmethod]
    #[pyo3(signature = (path, *, precision = "f32"))]
    fn from_pretrained(py: Python<'_>, path: PathBuf, precision: &str) -> PyResult<Self> {
        let precision: stainedglass_models::text_sgt::Precision = precision
            .parse()
            .map_err(|e: stainedglass_models::Error| PyValueError::new_err(e.to_string()))?;
        let inner = py
            .detach(|| {
                let mut t =
                    text::StainedGlassTransformForText::from_pretrained(&path, &Device::Cpu)?;
                t.set_precision(precision)?;
                Ok::<_, stainedglass_text::Error>(t)
            })
            .map_err(err)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Writes the artefact to `path` (atomically: a sibling folder swapped in).
    fn save_pretrained(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save_pretrained(&path))
            .map(|_| ())
            .map_err(err)
    }

    /// Transforms a prompt — a string (one user message) or a list of `{"role", "content"}`
    /// dicts — or a list of prompts (a padded batch). Returns a dict with `inputs_embeds`
    /// (float32, `(seq, hidden)` or `(batch, seq, hidden)`), `input_ids`, `attention_mask` and
    /// `noise_mask` (int64). Noise comes from the OS random source unless `seed` is given.
    #[pyo3(signature = (prompt, *, return_tensors = "np", seed = None))]
    fn apply<'py>(
        &self,
        py: Python<'py>,
        prompt: &Bound<'py, PyAny>,
        return_tensors: &str,
        seed: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let t = crate::convert::return_tensors(return_tensors)?;
        let p = prompts(prompt, false)?;
        let inner = self.inner.clone();
        let hidden = inner.hidden_size();
        let d = PyDict::new(py);
        match p {
            Prompts::One(p) => {
                let out = py
                    .detach(move || -> Result<_, String> {
                        let o = inner
                            .apply(&p, &mut NoiseRng::new(seed))
                            .map_err(|e| e.to_string())?;
                        let e = o
                            .embeddings
                            .to_dtype(DType::F32)
                            .and_then(|e| e.flatten_all())
                            .and_then(|e| e.to_vec1::<f32>())
                            .map_err(|e| e.to_string())?;
                        Ok((e, o))
                    })
                    .map_err(err)?;
                let (e, o) = out;
                let n = o.input_ids.len();
                d.set_item("inputs_embeds", array(py, e, &[n, hidden], t)?)?;
                d.set_item("input_ids", array(py, u32s_to_i64(&o.input_ids), &[n], t)?)?;
                d.set_item(
                    "attention_mask",
                    array(py, u8s_to_i64(&o.attention_mask), &[n], t)?,
                )?;
                d.set_item("noise_mask", array(py, u8s_to_i64(&o.noise_mask), &[n], t)?)?;
            }
            Prompts::Batch(ps) => {
                let out = py
                    .detach(move || -> Result<_, String> {
                        let o = inner
                            .apply_batch(&ps, &mut NoiseRng::new(seed))
                            .map_err(|e| e.to_string())?;
                        let e = o
                            .embeddings
                            .to_dtype(DType::F32)
                            .and_then(|e| e.flatten_all())
                            .and_then(|e| e.to_vec1::<f32>())
                            .map_err(|e| e.to_string())?;
                        Ok((e, o))
                    })
                    .map_err(err)?;
                let (e, o) = out;
                let (b, n) = (o.input_ids.len(), o.input_ids.first().map_or(0, Vec::len));
                let flat_u32 = |v: &[Vec<u32>]| v.iter().flat_map(|r| u32s_to_i64(r)).collect();
                let flat_u8 = |v: &[Vec<u8>]| v.iter().flat_map(|r| u8s_to_i64(r)).collect();
                d.set_item("inputs_embeds", array(py, e, &[b, n, hidden], t)?)?;
                d.set_item(
                    "input_ids",
                    array::<i64>(py, flat_u32(&o.input_ids), &[b, n], t)?,
                )?;
                d.set_item(
                    "attention_mask",
                    array::<i64>(py, flat_u8(&o.attention_mask), &[b, n], t)?,
                )?;
                d.set_item(
                    "noise_mask",
                    array::<i64>(py, flat_u8(&o.noise_mask), &[b, n], t)?,
                )?;
            }
        }
        Ok(d)
    }

    /// The text of token ids (e.g. the ids a server generated), special tokens skipped unless
    /// `skip_special_tokens=False`.
    #[pyo3(signature = (ids, *, skip_special_tokens = true))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        self.inner
            .tokenizer()
            .decode(&ids, skip_special_tokens)
            .map_err(err)
    }

    /// Width of the embeddings.
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }

    /// Size of the vocabulary.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.config().base_model.vocab_size
    }

    /// The longest prompt the transform takes, in tokens.
    #[getter]
    fn max_positions(&self) -> usize {
        self.inner.max_positions()
    }

    /// The base model's name and embedding-table hash, as recorded in the artefact.
    #[getter]
    fn base_model<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let b = &self.inner.config().base_model;
        let d = PyDict::new(py);
        d.set_item("name", &b.name)?;
        d.set_item("hidden_size", b.hidden_size)?;
        d.set_item("vocab_size", b.vocab_size)?;
        d.set_item("embedding_sha256", &b.embedding_sha256)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "StainedGlassTransformForText(base_model={:?}, hidden_size={})",
            self.inner.config().base_model.name,
            self.inner.hidden_size()
        )
    }
}

/// Tokenizes prompts the way the trainers and the transform do: ids and the attention, noise
/// and (optionally) loss masks and labels, aligned per token.
#[pyclass(module = "stainedglass", frozen)]
pub struct TokenizerWrapper {
    inner: text::TokenizerWrapper,
    instructions: bool,
}

#[pymethods]
impl TokenizerWrapper {
    /// `source`: an artefact folder, a model folder (`tokenizer.json`) or a `.gguf` file, or a
    /// `StainedGlassTransformForText`. `prompt_type`: "chat" (lists of messages) or
    /// "instruction" (dicts with `instruction`, `context`, `system_prompt`, `response`).
    #[new]
    #[pyo3(signature = (source, *, prompt_type = "chat", include_labels = false,
                        ignore_prompt_loss = true, transform_all_tokens = false,
                        add_generation_prompt = false, max_length = None, truncation = false,
                        padding_side = "left"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        source: &Bound<'_, PyAny>,
        prompt_type: &str,
        include_labels: bool,
        ignore_prompt_loss: bool,
        transform_all_tokens: bool,
        add_generation_prompt: bool,
        max_length: Option<usize>,
        truncation: bool,
        padding_side: &str,
    ) -> PyResult<Self> {
        let instructions = match prompt_type {
            "chat" => false,
            "instruction" => true,
            o => {
                return Err(PyValueError::new_err(format!(
                    "prompt_type must be \"chat\" or \"instruction\", not {o:?}"
                )))
            }
        };
        let side = match padding_side {
            "left" => text::Side::Left,
            "right" => text::Side::Right,
            o => {
                return Err(PyValueError::new_err(format!(
                    "padding_side must be \"left\" or \"right\", not {o:?}"
                )))
            }
        };
        let tokenizer = if let Ok(t) = source.cast::<StainedGlassTransformForText>() {
            t.get().inner.tokenizer_arc()
        } else {
            let path: PathBuf = source.extract().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(
                    "source must be a path or a StainedGlassTransformForText",
                )
            })?;
            Arc::new(
                py.detach(|| text::TextTokenizer::from_model_path(&path))
                    .map_err(err)?,
            )
        };
        let options = text::WrapperOptions {
            include_labels,
            ignore_prompt_loss,
            transform_all_tokens,
            add_generation_prompt,
            padding: text::Padding::Longest,
            padding_side: side,
            max_length,
            truncation,
            truncation_side: text::Side::Left,
        };
        Ok(Self {
            inner: text::TokenizerWrapper::new(tokenizer, options),
            instructions,
        })
    }

    /// Encodes a prompt (1-D arrays) or a list of prompts (padded, `(batch, seq)`): a dict with
    /// `input_ids`, `attention_mask`, `noise_mask`, and with labels on, `labels` (-100 where no
    /// loss) and `loss_mask`. All int64.
    #[pyo3(signature = (prompt, *, return_tensors = "np"))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        prompt: &Bound<'py, PyAny>,
        return_tensors: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let t = crate::convert::return_tensors(return_tensors)?;
        let (rows, batched) = match prompts(prompt, self.instructions)? {
            Prompts::One(p) => (
                vec![py.detach(|| self.inner.encode(&p)).map_err(err)?],
                false,
            ),
            Prompts::Batch(ps) => (
                py.detach(|| self.inner.encode_batch(&ps))
                    .map_err(err)?
                    .rows,
                true,
            ),
        };
        let n = rows.first().map_or(0, |r| r.len());
        let shape: Vec<usize> = if batched {
            vec![rows.len(), n]
        } else {
            vec![n]
        };
        let d = PyDict::new(py);
        let col = |f: &dyn Fn(&text::EncodedPrompt) -> Vec<i64>| -> Vec<i64> {
            rows.iter().flat_map(f).collect()
        };
        d.set_item(
            "input_ids",
            array(py, col(&|r| u32s_to_i64(&r.input_ids)), &shape, t)?,
        )?;
        d.set_item(
            "attention_mask",
            array(py, col(&|r| u8s_to_i64(&r.attention_mask)), &shape, t)?,
        )?;
        d.set_item(
            "noise_mask",
            array(py, col(&|r| u8s_to_i64(&r.noise_mask)), &shape, t)?,
        )?;
        if rows.iter().all(|r| r.labels.is_some()) {
            d.set_item(
                "labels",
                array(
                    py,
                    col(&|r| r.labels.clone().unwrap_or_default()),
                    &shape,
                    t,
                )?,
            )?;
            d.set_item(
                "loss_mask",
                array(
                    py,
                    col(&|r| u8s_to_i64(r.loss_mask.as_deref().unwrap_or_default())),
                    &shape,
                    t,
                )?,
            )?;
        }
        Ok(d)
    }
}
