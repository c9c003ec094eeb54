//! Conversations encoded as the trainer and the evaluations see them (ids, attention, noise
//! and loss masks), the held-out and training splits, and batches padded for a step.

use super::config::TextTrainConfig;
use crate::Result;
use candle_core::Tensor;
use stainedglass_core::NoiseRng;
use stainedglass_metrics::{quick_eval, EmbeddingIndex, QuickEval};
use stainedglass_models::llm::Llama;
use stainedglass_models::text_sgt::TransformerCloak;
use stainedglass_text::{EncodedPrompt, Padding, PromptInput, Side, TextTokenizer};
use stainedglass_text::{TokenizerWrapper, WrapperOptions};
use std::sync::Arc;

/// Seed of every evaluation's noise, from the training seed (the same noise at every step).
pub(crate) fn eval_seed(cfg: &TextTrainConfig) -> u64 {
    cfg.train.seed ^ 0xE7A1
}

pub(crate) fn encode_all(
    tok: &Arc<TextTokenizer>,
    convs: &[PromptInput],
    cfg: &TextTrainConfig,
    ignore_prompt_loss: bool,
) -> Result<Vec<EncodedPrompt>> {
    let w = TokenizerWrapper::new(
        tok.clone(),
        WrapperOptions {
            include_labels: true,
            ignore_prompt_loss,
            transform_all_tokens: cfg.data.transform_all_tokens,
            max_length: Some(cfg.data.max_length),
            truncation: true,
            truncation_side: Side::Right,
            padding: Padding::Longest,
            padding_side: Side::Right,
            ..Default::default()
        },
    );
    Ok(convs
        .iter()
        .map(|c| w.encode(c))
        .collect::<stainedglass_text::Result<_>>()?)
}

/// Right-pads `rows` into `(ids, attention, noise, loss)` for a training step.
pub(crate) fn collate(
    rows: &[&EncodedPrompt],
    pad: u32,
    dev: &candle_core::Device,
) -> Result<Batch> {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let b = rows.len();
    let (mut ids, mut am, mut nm, mut lm) = (
        vec![pad; b * t],
        vec![0u8; b * t],
        vec![0u8; b * t],
        vec![0f32; b * t],
    );
    for (i, r) in rows.iter().enumerate() {
        let o = i * t;
        ids[o..o + r.len()].copy_from_slice(&r.input_ids);
        am[o..o + r.len()].copy_from_slice(&r.attention_mask);
        nm[o..o + r.len()].copy_from_slice(&r.noise_mask);
        if let Some(l) = &r.loss_mask {
            for (k, &v) in l.iter().enumerate() {
                lm[o + k] = f32::from(v);
            }
        }
    }
    let tokens = am.iter().filter(|&&v| v == 1).count();
    Ok(Batch {
        ids: Tensor::from_vec(ids.clone(), (b, t), dev)?,
        id_list: ids,
        am_t: Tensor::from_vec(am.clone(), (b, t), dev)?,
        nm_f: Tensor::from_vec(
            nm.iter().map(|&v| f32::from(v)).collect::<Vec<_>>(),
            (b, t),
            dev,
        )?,
        lm: Tensor::from_vec(lm, (b, t), dev)?,
        am,
        nm,
        tokens,
    })
}

/// A padded batch: ids (tensor and values), attention mask (tensor and bytes), noise mask (f32 tensor and bytes),
/// loss mask, and the number of real tokens.
pub(crate) struct Batch {
    pub ids: Tensor,
    pub id_list: Vec<u32>,
    pub am_t: Tensor,
    pub nm_f: Tensor,
    pub lm: Tensor,
    pub am: Vec<u8>,
    pub nm: Vec<u8>,
    pub tokens: usize,
}

/// The quick evaluation of `cloak` on the config's held-out conversations (`limit` of them, or
/// all), with the trainer's evaluation noise seed.
pub fn held_out_eval(
    cfg: &TextTrainConfig,
    model: &Llama,
    tok: Arc<TextTokenizer>,
    cloak: &TransformerCloak,
    limit: Option<usize>,
    transform: bool,
) -> Result<QuickEval> {
    let convs = super::data::load_conversations(&cfg.data.conversations)?;
    let held = &convs[convs.len().saturating_sub(cfg.data.held_out)..];
    let n = limit.unwrap_or(held.len()).min(held.len());
    let rows = encode_all(&tok, &held[..n], cfg, true)?;
    let index = EmbeddingIndex::new(model.embedding_table())?;
    let mut rng = NoiseRng::seeded(eval_seed(cfg));
    Ok(quick_eval(
        model, cloak, &index, &rows, &mut rng, transform,
    )?)
}

/// The config's held-out conversations, encoded as the evaluations see them (labels included).
pub fn held_out_rows(
    cfg: &TextTrainConfig,
    tok: &Arc<TextTokenizer>,
) -> Result<Vec<EncodedPrompt>> {
    let convs = super::data::load_conversations(&cfg.data.conversations)?;
    let held = &convs[convs.len().saturating_sub(cfg.data.held_out)..];
    encode_all(tok, held, cfg, true)
}

/// The config's training conversations (all but the held-out ones), encoded like
/// [`held_out_rows`]: an attacker's own text in the evaluation.
pub fn training_rows(
    cfg: &TextTrainConfig,
    tok: &Arc<TextTokenizer>,
) -> Result<Vec<EncodedPrompt>> {
    let convs = super::data::load_conversations(&cfg.data.conversations)?;
    let train = &convs[..convs.len().saturating_sub(cfg.data.held_out)];
    encode_all(tok, train, cfg, true)
}
