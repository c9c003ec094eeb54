//! `NoiseMaskedNoisyTransformerModel` (`docs/spec.md` §4): ids + attention mask + noise mask → embeddings →
//! TransformerCloak (only tokens with `noise_mask = 1`) → the frozen base model from embeddings,
//! stopping at layer k or at the logits. The mode is explicit: the same object runs the clean
//! pass and the transformed pass, which the distillation loss compares.

use super::cloak::TransformerCloak;
use crate::error::{Error, Result};
use crate::llm::{Llama, Stop};
use candle_core::Tensor;
use stainedglass_core::noise_layer::NoiseOutput;
use stainedglass_core::{Mode, NoiseRng};

/// What a forward pass returns.
pub struct NoisyLmOutput {
    /// Activations at the stop layer or the logits.
    pub output: Tensor,
    /// The clean input embeddings `x`.
    pub input_embeds: Tensor,
    /// The transform's output (`None` in clean mode).
    pub noise: Option<NoiseOutput>,
}

/// The base LM with a TransformerCloak on its input embeddings.
pub struct NoiseMaskedNoisyTransformerModel<'a> {
    pub base: &'a Llama,
    pub cloak: &'a TransformerCloak,
}

impl<'a> NoiseMaskedNoisyTransformerModel<'a> {
    pub fn new(base: &'a Llama, cloak: &'a TransformerCloak) -> Self {
        Self { base, cloak }
    }

    /// `input_ids (b, t)`; masks are `b·t` 0/1 bytes (row-major).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &[u8],
        noise_mask: &[u8],
        mode: Mode,
        stop: Stop,
        rng: &mut NoiseRng,
    ) -> Result<NoisyLmOutput> {
        let (b, t) = input_ids.dims2()?;
        if attention_mask.len() != b * t || noise_mask.len() != b * t {
            return Err(Error::Shape {
                what: "attention / noise mask".into(),
                expected: format!("{} entries for ids {:?}", b * t, input_ids.dims()),
                got: vec![attention_mask.len(), noise_mask.len()],
            });
        }
        let x = self.base.embed(input_ids)?;
        let am = Tensor::from_vec(attention_mask.to_vec(), (b, t), x.device())?;
        match mode {
            Mode::Clean => Ok(NoisyLmOutput {
                output: self.base.forward_embeds(&x, Some(&am), stop)?,
                input_embeds: x,
                noise: None,
            }),
            Mode::Transformed => {
                let noise =
                    self.cloak
                        .forward_masked(&x, Some(attention_mask), Some(noise_mask), rng)?;
                let output = self
                    .base
                    .forward_embeds(&noise.transformed, Some(&am), stop)?;
                Ok(NoisyLmOutput {
                    output,
                    input_embeds: x,
                    noise: Some(noise),
                })
            }
        }
    }
}
