//! Quick privacy and utility checks run by the text trainer on held-out conversations:
//! nearest-neighbour token recovery (cosine and L2, top-1) of the transformed tokens against the
//! vocabulary embedding table, and next-token top-1 agreement and KL between the clean and the
//! transformed runs on the assistant replies (teacher-forced).

use crate::{EmbeddingIndex, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use stainedglass_core::NoiseRng;
use stainedglass_models::llm::{Llama, Stop};
use stainedglass_models::text_sgt::TransformerCloak;
use stainedglass_text::EncodedPrompt;

/// Results of one quick evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuickEval {
    pub nn_top1_cosine: f64,
    pub nn_top1_l2: f64,
    /// Recovery by cosine nearest neighbour of `−x̃` (a sign-flip attacker).
    pub nn_top1_cosine_flipped: f64,
    pub transformed_tokens: usize,
    pub next_token_agreement: f64,
    pub next_token_kl: f64,
    pub predicted_tokens: usize,
}

/// Evaluates `cloak` on `rows` (encoded with labels; `loss_mask` marks reply tokens), one
/// conversation at a time. `transform = false` measures the clean embeddings (recovery should be
/// 100%, agreement 100%).
pub fn quick_eval(
    model: &Llama,
    cloak: &TransformerCloak,
    index: &EmbeddingIndex,
    rows: &[EncodedPrompt],
    rng: &mut NoiseRng,
    transform: bool,
) -> Result<QuickEval> {
    quick_eval_served(model, model, cloak, index, rows, rng, transform)
}

/// [`quick_eval`] where the provider serves `served` (e.g. with a served adapter in its first
/// layers) to the transformed inputs; agreement is against `model` on the clean inputs.
pub fn quick_eval_served(
    model: &Llama,
    served: &Llama,
    cloak: &TransformerCloak,
    index: &EmbeddingIndex,
    rows: &[EncodedPrompt],
    rng: &mut NoiseRng,
    transform: bool,
) -> Result<QuickEval> {
    let dev = model.device();
    let (mut hit_c, mut hit_l, mut hit_f, mut n_tr) = (0usize, 0usize, 0usize, 0usize);
    let (mut agree, mut kl, mut n_pred) = (0usize, 0f64, 0usize);
    for r in rows {
        let t = r.len();
        let ids = Tensor::from_vec(r.input_ids.clone(), (1, t), dev)?;
        let x = model.embed(&ids)?;
        let am = Tensor::from_vec(r.attention_mask.clone(), (1, t), dev)?;
        let xt = if transform {
            // The client's path (no graph; the layer's precision), the same noise stream.
            cloak
                .transform(&x, Some(&r.attention_mask), Some(&r.noise_mask), rng)?
                .transformed
        } else {
            x.clone()
        };
        // Nearest-neighbour recovery on transformed tokens.
        let sel: Vec<u32> = (0..t)
            .filter(|&i| r.noise_mask[i] == 1 && r.attention_mask[i] == 1)
            .map(|i| i as u32)
            .collect();
        if !sel.is_empty() {
            let idx = Tensor::new(sel.as_slice(), dev)?;
            let rows_x = xt.squeeze(0)?.index_select(&idx, 0)?;
            let (c, l, f) = index.nearest(&rows_x)?;
            for (k, &i) in sel.iter().enumerate() {
                let truth = r.input_ids[i as usize];
                hit_c += usize::from(c[k] == truth);
                hit_l += usize::from(l[k] == truth);
                hit_f += usize::from(f[k] == truth);
            }
            n_tr += sel.len();
        }
        // Next-token agreement and KL where the next token is a reply token.
        let lm = r.loss_mask.clone().unwrap_or_else(|| vec![0; t]);
        let pos: Vec<u32> = (0..t.saturating_sub(1))
            .filter(|&i| lm[i + 1] == 1)
            .map(|i| i as u32)
            .collect();
        if pos.is_empty() {
            continue;
        }
        let pidx = Tensor::new(pos.as_slice(), dev)?;
        let lc = model
            .forward_embeds(&x, Some(&am), Stop::Logits)?
            .squeeze(0)?
            .index_select(&pidx, 0)?;
        let lt = served
            .forward_embeds(&xt.detach(), Some(&am), Stop::Logits)?
            .squeeze(0)?
            .index_select(&pidx, 0)?;
        let ac = lc.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let at = lt.argmax(D::Minus1)?.to_vec1::<u32>()?;
        agree += ac.iter().zip(&at).filter(|(a, b)| a == b).count();
        let lpc = candle_nn::ops::log_softmax(&lc, D::Minus1)?;
        let lpt = candle_nn::ops::log_softmax(&lt, D::Minus1)?;
        let k = (lpc.exp()? * (&lpc - &lpt)?)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        kl += k;
        n_pred += pos.len();
    }
    let frac = |a: usize, n: usize| if n == 0 { 0.0 } else { a as f64 / n as f64 };
    Ok(QuickEval {
        nn_top1_cosine: frac(hit_c, n_tr),
        nn_top1_l2: frac(hit_l, n_tr),
        nn_top1_cosine_flipped: frac(hit_f, n_tr),
        transformed_tokens: n_tr,
        next_token_agreement: frac(agree, n_pred),
        next_token_kl: if n_pred == 0 { 0.0 } else { kl / n_pred as f64 },
        predicted_tokens: n_pred,
    })
}

/// Per-token detail behind the quick evaluation, for reports: σ relative to the embedding and
/// nearest-neighbour recovery by position in the sequence.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrivacyProfile {
    /// `‖σ_t‖ / ‖x_t‖` of every transformed token.
    pub sigma_over_norm: Vec<f64>,
    /// `(position, recovered by L2, recovered by cosine)` of every transformed token.
    pub recovery_by_position: Vec<(usize, bool, bool)>,
}

/// Transforms each row once (as [`quick_eval`] does) and records, token by token, σ/|x| and
/// whether nearest-neighbour decoding recovers it.
pub fn privacy_profile(
    model: &Llama,
    cloak: &TransformerCloak,
    index: &EmbeddingIndex,
    rows: &[EncodedPrompt],
    rng: &mut NoiseRng,
) -> Result<PrivacyProfile> {
    let dev = model.device();
    let mut p = PrivacyProfile::default();
    for r in rows {
        let t = r.len();
        let ids = Tensor::from_vec(r.input_ids.clone(), (1, t), dev)?;
        let x = model.embed(&ids)?;
        let out = cloak.transform(&x, Some(&r.attention_mask), Some(&r.noise_mask), rng)?;
        let sel: Vec<u32> = (0..t)
            .filter(|&i| r.noise_mask[i] == 1 && r.attention_mask[i] == 1)
            .map(|i| i as u32)
            .collect();
        if sel.is_empty() {
            continue;
        }
        let idx = Tensor::new(sel.as_slice(), dev)?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.squeeze(0)?.index_select(&idx, 0)?) };
        let (xt, xs, sd) = (pick(&out.transformed)?, pick(&x)?, pick(&out.std)?);
        let norm = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1::<f32>()?)
        };
        let (nx, ns) = (norm(&xs)?, norm(&sd)?);
        let (c, l, _) = index.nearest(&xt)?;
        for (k, &i) in sel.iter().enumerate() {
            let truth = r.input_ids[i as usize];
            p.sigma_over_norm
                .push(f64::from(ns[k]) / f64::from(nx[k]).max(1e-12));
            p.recovery_by_position
                .push((i as usize, l[k] == truth, c[k] == truth));
        }
    }
    Ok(p)
}
