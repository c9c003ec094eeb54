//! Several prompts transformed together: padded on the left to the longest (as for generation),
//! one pass of the SGT over the batch, masks per row.

use super::StainedGlassTransformForText;
use crate::error::{Error, Result};
use crate::prompt::PromptInput;
use crate::wrapper::{Padding, Side, TokenizerWrapper};
use candle_core::Tensor;
use stainedglass_core::NoiseRng;

/// A batch after the transform: `(batch, seq, hidden)` f32 embeddings and `(batch, seq)` masks;
/// padding (left) has `attention_mask = 0` and is not transformed.
#[derive(Debug, Clone)]
pub struct TransformedBatch {
    pub embeddings: Tensor,
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u8>>,
    pub noise_mask: Vec<Vec<u8>>,
}

impl StainedGlassTransformForText {
    /// Tokenizes every prompt, pads the batch on the left and applies the SGT once, with fresh
    /// noise from `rng`.
    pub fn apply_batch(
        &self,
        prompts: &[PromptInput],
        rng: &mut NoiseRng,
    ) -> Result<TransformedBatch> {
        let mut options = self.wrapper.options.clone();
        options.padding = Padding::Longest;
        options.padding_side = Side::Left;
        let wrapper = TokenizerWrapper::new(self.wrapper.tokenizer_arc(), options);
        let rows = wrapper.encode_batch(prompts)?.rows;
        let (b, t) = (rows.len(), rows.first().map_or(0, |r| r.len()));
        let max = self.max_positions();
        if t > max {
            return Err(Error::Prompt(format!(
                "the longest prompt is {t} tokens; the base model takes at most {max}"
            )));
        }
        let ids: Vec<u32> = rows.iter().flat_map(|r| r.input_ids.clone()).collect();
        let am: Vec<u8> = rows.iter().flat_map(|r| r.attention_mask.clone()).collect();
        let nm: Vec<u8> = rows.iter().flat_map(|r| r.noise_mask.clone()).collect();
        let x = self
            .embeddings
            .rows(&ids, &self.device)?
            .reshape((b, t, self.hidden_size()))?;
        let out = self.cloak.transform(&x, Some(&am), Some(&nm), rng)?;
        Ok(TransformedBatch {
            embeddings: out.transformed,
            input_ids: rows.iter().map(|r| r.input_ids.clone()).collect(),
            attention_mask: rows.iter().map(|r| r.attention_mask.clone()).collect(),
            noise_mask: rows.iter().map(|r| r.noise_mask.clone()).collect(),
        })
    }
}
