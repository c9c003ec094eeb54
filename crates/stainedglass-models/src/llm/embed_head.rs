//! The input-embedding table and the LM head of a model, in f32 or as the file stores them
//! (rows dequantized on lookup, the head a quantized product).

use std::sync::OnceLock;

use candle_core::{Device, Tensor};

use super::backend::ops::Linear;
use super::backend::quant::QMatrix;
use crate::error::{Error, Result};

/// The embedding table and LM head, in either form.
pub(crate) enum EmbedHead {
    F32 {
        embed: Tensor,
        lm_head: Option<Linear>,
    },
    Stored {
        embed: QMatrix,
        lm_head: Option<QMatrix>,
        /// The f32 table, made on the first `Llama::embedding_table` call.
        table: OnceLock<Tensor>,
    },
}

impl EmbedHead {
    pub fn is_stored(&self) -> bool {
        matches!(self, EmbedHead::Stored { .. })
    }

    /// The error for an operation a stored model does not run.
    pub fn needs_f32(&self, what: &str) -> Error {
        Error::Unsupported(format!(
            "{what} needs the model's f32 weights; it was loaded with its weights as stored \
             (quantized, for inference): load it with `Llama::load` instead"
        ))
    }

    /// The whole table in f32.
    pub fn table(&self, device: &Device) -> &Tensor {
        match self {
            EmbedHead::F32 { embed, .. } => embed,
            EmbedHead::Stored { embed, table, .. } => table.get_or_init(|| {
                let (rows, cols) = embed.dims();
                let mut v = vec![0f32; rows * cols];
                for (r, row) in v.chunks_exact_mut(cols.max(1)).enumerate() {
                    embed.dequantize_row(r, row);
                }
                Tensor::from_vec(v, (rows, cols), device)
                    .expect("a rows × cols buffer makes a rows × cols tensor")
            }),
        }
    }

    /// The rows of `ids` (checked below the vocabulary size), `(ids.len(), hidden)`.
    pub fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            EmbedHead::F32 { embed, .. } => {
                let idx = Tensor::new(ids, device)?;
                Ok(embed.index_select(&idx, 0)?)
            }
            EmbedHead::Stored { embed, .. } => {
                let (rows, cols) = embed.dims();
                if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
                    return Err(Error::Shape {
                        what: format!("token id {bad}"),
                        expected: format!("ids below the vocabulary size {rows}"),
                        got: vec![ids.len()],
                    });
                }
                let mut v = vec![0f32; ids.len() * cols];
                for (&id, row) in ids.iter().zip(v.chunks_exact_mut(cols.max(1))) {
                    embed.dequantize_row(id as usize, row);
                }
                Ok(Tensor::from_vec(v, (ids.len(), cols), device)?)
            }
        }
    }

    /// One row of the table in f32 (`out`: hidden long).
    pub fn row(&self, id: usize, out: &mut [f32]) -> Result<()> {
        match self {
            EmbedHead::F32 { embed, .. } => {
                out.copy_from_slice(&embed.get(id)?.to_vec1::<f32>()?);
            }
            EmbedHead::Stored { embed, .. } => embed.dequantize_row(id, out),
        }
        Ok(())
    }

    /// The LM head on normed hidden states `(…, hidden)` → `(…, vocab)`.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            EmbedHead::F32 {
                lm_head: Some(l), ..
            } => Ok(l.forward(x)?),
            EmbedHead::F32 { embed, .. } => Ok(Linear::new(embed.clone(), None).forward(x)?),
            EmbedHead::Stored { embed, lm_head, .. } => {
                let w = lm_head.as_ref().unwrap_or(embed);
                let (vocab, hidden) = w.dims();
                let mut dims = x.dims().to_vec();
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let m = xs.len() / hidden.max(1);
                let mut out = vec![0f32; m * vocab];
                w.product(&xs, m, &mut out, false);
                dims.pop();
                dims.push(vocab);
                Ok(Tensor::from_vec(out, dims, x.device())?)
            }
        }
    }
}
