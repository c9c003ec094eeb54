//! Learned inversion: the attacker holds the public SGT, transforms its own text, and trains a
//! model to map `x̃` back to tokens. Two inverters: a per-token MLP and a small causal
//! transformer over the whole transformed prompt (initialised from the base model's first
//! decoder layers, which the attacker also has). Both end in the frozen vocabulary table:
//! `logits_v = s·(z·E_v − ½‖E_v‖²)`, which at initialisation (`z = x̃`) is exactly L2
//! nearest-neighbour decoding — training can only improve on it.

use super::mechanism::{table_rms, Mechanism};
use super::observed::{apply_rows, Observed};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use serde::Serialize;
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_core::NoiseRng;
use stainedglass_metrics::index::{top_k_of_row, EmbeddingIndex, Ranked};
use stainedglass_models::llm::Llama;
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use stainedglass_text::EncodedPrompt;

/// Training settings of the learned inverters.
#[derive(Debug, Clone, Serialize)]
pub struct InverterConfig {
    /// Passes over the attacker's text, each with fresh noise.
    pub epochs: usize,
    pub learning_rate: f64,
    /// MLP hidden width.
    pub hidden: usize,
    /// Tokens per MLP step.
    pub batch_tokens: usize,
    /// Decoder layers of the transformer inverter.
    pub transformer_layers: usize,
    pub seed: u64,
}

impl Default for InverterConfig {
    fn default() -> Self {
        Self {
            epochs: 3,
            learning_rate: 1e-3,
            hidden: 1024,
            batch_tokens: 512,
            transformer_layers: 1,
            seed: 7,
        }
    }
}

/// The frozen vocabulary head shared by both inverters.
struct VocabHead<'a> {
    index: &'a EmbeddingIndex,
    half_sq_norms: Tensor,
    log_scale: Var,
    /// Learned per-token log-prior (starts at 0).
    bias: Var,
}

impl<'a> VocabHead<'a> {
    fn new(index: &'a EmbeddingIndex, table: &Tensor) -> Result<Self> {
        let sq = table.sqr()?.sum(D::Minus1)?;
        let mean_sq = sq.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let log_scale = Var::new(&[(10.0 / mean_sq.max(1e-12)).ln() as f32], table.device())?;
        Ok(Self {
            index,
            half_sq_norms: (sq * 0.5)?.unsqueeze(0)?,
            log_scale,
            bias: Var::zeros(table.dim(0)?, DType::F32, table.device())?,
        })
    }

    /// `z (n, d)` → logits `(n, V)`.
    fn logits(&self, z: &Tensor) -> Result<Tensor> {
        let s = self
            .index
            .table()
            .forward(z)?
            .broadcast_sub(&self.half_sq_norms)?;
        Ok(s.broadcast_mul(&self.log_scale.as_tensor().exp()?)?
            .broadcast_add(self.bias.as_tensor())?)
    }

    /// Top-`k` guesses per observation from `z(o)`, the inverter's output at its positions.
    fn guess(
        &self,
        obs: &[Observed],
        k: usize,
        z: impl Fn(&Observed) -> Result<Tensor>,
    ) -> Result<Vec<Ranked>> {
        obs.iter()
            .map(|o| {
                if o.positions.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.top_k(&z(o)?, k)
                }
            })
            .collect()
    }

    fn top_k(&self, z: &Tensor, k: usize) -> Result<Vec<Vec<u32>>> {
        let l = self.logits(&z.detach())?;
        Ok(l.to_vec2::<f32>()?
            .iter()
            .map(|row| top_k_of_row(row, k))
            .collect())
    }
}

fn randn(rng: &mut NoiseRng, shape: (usize, usize), std: f64, dev: &Device) -> Result<Var> {
    Ok(Var::from_tensor(
        &(rng.standard_normal(shape, dev)? * std)?,
    )?)
}

fn check_loss(loss: &Tensor, what: &str) -> Result<f32> {
    let v = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    if !v.is_finite() {
        return Err(Error::Input(format!(
            "{what} training diverged (loss {v}); lower the inverter learning rate"
        )));
    }
    Ok(v)
}

/// Names of [`MlpInverter`]'s weights, in the order of its `vars()`.
const MLP_NAMES: [&str; 6] = ["w1", "b1", "w2", "b2", "log_scale", "bias"];

/// Per-token MLP inverter: `z = x̃ + W₂·gelu(W₁·x̃/r + b₁) + b₂` (W₂ starts at zero).
pub struct MlpInverter<'a> {
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
    input_scale: f64,
    head: VocabHead<'a>,
}

impl<'a> MlpInverter<'a> {
    fn new(index: &'a EmbeddingIndex, table: &Tensor, cfg: &InverterConfig) -> Result<Self> {
        let (dev, d) = (table.device(), table.dim(1)?);
        let mut rng = NoiseRng::seeded(cfg.seed);
        let rms = table_rms(table)?;
        Ok(Self {
            w1: randn(&mut rng, (cfg.hidden, d), (1.0 / d as f64).sqrt(), dev)?,
            b1: Var::zeros(cfg.hidden, DType::F32, dev)?,
            w2: Var::zeros((d, cfg.hidden), DType::F32, dev)?,
            b2: Var::zeros(d, DType::F32, dev)?,
            input_scale: 1.0 / rms.max(1e-12),
            head: VocabHead::new(index, table)?,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![
            self.w1.clone(),
            self.b1.clone(),
            self.w2.clone(),
            self.b2.clone(),
            self.head.log_scale.clone(),
            self.head.bias.clone(),
        ]
    }

    fn z(&self, x: &Tensor) -> Result<Tensor> {
        let h = (x * self.input_scale)?
            .matmul(&self.w1.as_tensor().t()?)?
            .broadcast_add(self.b1.as_tensor())?
            .gelu()?;
        let m = h
            .matmul(&self.w2.as_tensor().t()?)?
            .broadcast_add(self.b2.as_tensor())?;
        Ok((x + m)?)
    }

    /// The trained weights by name (for [`MlpInverter::from_named`]).
    pub(crate) fn named(&self) -> Vec<(String, Tensor)> {
        MLP_NAMES
            .iter()
            .zip(self.vars())
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect()
    }

    /// An inverter with the weights of [`MlpInverter::named`]; `None` when a weight is missing
    /// or has another shape than `cfg` and `table` give.
    pub(crate) fn from_named(
        index: &'a EmbeddingIndex,
        table: &Tensor,
        cfg: &InverterConfig,
        named: &std::collections::HashMap<String, Tensor>,
    ) -> Result<Option<Self>> {
        let inv = Self::new(index, table, cfg)?;
        for (n, v) in MLP_NAMES.iter().zip(inv.vars()) {
            match named.get(*n) {
                Some(t) if t.shape() == v.as_tensor().shape() && t.dtype() == DType::F32 => {
                    v.set(t)?
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(inv))
    }

    /// Trains on the attacker's `rows`, transformed afresh by `mechanism` every epoch.
    pub fn train(
        index: &'a EmbeddingIndex,
        table: &Tensor,
        mechanism: &dyn Mechanism,
        rows: &[EncodedPrompt],
        cfg: &InverterConfig,
        progress: impl FnMut(usize, f32),
    ) -> Result<Self> {
        let clean = super::observed::embed_rows(table, rows)?;
        let epoch_data = |rng: &mut NoiseRng| -> Result<(Tensor, Vec<u32>)> {
            let applied = apply_rows(mechanism, rows, &clean, rng)?;
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for (r, a) in rows.iter().zip(applied) {
                let o = Observed::new(r, a.transformed);
                if o.positions.is_empty() {
                    continue;
                }
                xs.push(o.selected()?);
                ys.extend(o.tokens);
            }
            if ys.is_empty() {
                return Err(Error::Input(
                    "the attacker's rows have no transformed tokens to learn from".into(),
                ));
            }
            Ok((Tensor::cat(&xs, 0)?, ys))
        };
        Self::fit(index, table, cfg, epoch_data, progress)
    }

    /// Trains on `(features (n, d), tokens)` pairs that `epoch_data` draws once per epoch;
    /// features live on the scale of the embedding `table`.
    pub(crate) fn fit(
        index: &'a EmbeddingIndex,
        table: &Tensor,
        cfg: &InverterConfig,
        mut epoch_data: impl FnMut(&mut NoiseRng) -> Result<(Tensor, Vec<u32>)>,
        mut progress: impl FnMut(usize, f32),
    ) -> Result<Self> {
        let inv = Self::new(index, table, cfg)?;
        let mut opt = AdamW::new(inv.vars(), AdamWConfig::noise(cfg.learning_rate))?;
        let mut rng = NoiseRng::seeded(cfg.seed ^ 0x11);
        let dev = table.device();
        for epoch in 0..cfg.epochs {
            let (x, ys) = epoch_data(&mut rng)?;
            let mut order: Vec<u32> = (0..ys.len() as u32).collect();
            rand::seq::SliceRandom::shuffle(order.as_mut_slice(), rng.rng());
            let mut last = 0f32;
            for chunk in order.chunks(cfg.batch_tokens.max(1)) {
                let idx = Tensor::new(chunk, dev)?;
                let xb = x.index_select(&idx, 0)?;
                let yb: Vec<u32> = chunk.iter().map(|&i| ys[i as usize]).collect();
                let yb = Tensor::new(yb.as_slice(), dev)?;
                let logits = inv.head.logits(&inv.z(&xb)?)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
                last = check_loss(&loss, "MLP inverter")?;
                opt.step(&loss.backward()?)?;
            }
            progress(epoch + 1, last);
        }
        Ok(inv)
    }

    /// Ranked guesses (top `k`) for the transformed tokens of each observation.
    pub fn guess(&self, obs: &[Observed], k: usize) -> Result<Vec<Ranked>> {
        self.guess_from(obs, k, |o| o.selected())
    }

    /// Ranked guesses from `features(o)`, `(positions, d)` per observation.
    pub(crate) fn guess_from(
        &self,
        obs: &[Observed],
        k: usize,
        features: impl Fn(&Observed) -> Result<Tensor>,
    ) -> Result<Vec<Ranked>> {
        self.head.guess(obs, k, |o| self.z(&features(o)?))
    }
}

/// Small causal transformer inverter: the estimator stack of a fresh TransformerCloak (decoder
/// layers copied from the base model) reads the whole transformed prompt;
/// `z_t = x̃_t + W·h_t` (W starts at zero).
pub struct TransformerInverter<'a> {
    body: TransformerCloak,
    out: Var,
    head: VocabHead<'a>,
}

impl<'a> TransformerInverter<'a> {
    fn z(&self, x: &Tensor, attention: &[u8], positions: &[u32]) -> Result<Tensor> {
        let h = self.body.estimator_hidden(x, attention)?.squeeze(0)?;
        let idx = Tensor::new(positions, x.device())?;
        let hs = h.index_select(&idx, 0)?;
        let xs = x.squeeze(0)?.index_select(&idx, 0)?;
        Ok((xs + hs.matmul(&self.out.as_tensor().t()?)?)?)
    }

    /// Trains on the attacker's `rows` (one prompt per step), transformed afresh every epoch.
    pub fn train(
        index: &'a EmbeddingIndex,
        model: &Llama,
        mechanism: &dyn Mechanism,
        rows: &[EncodedPrompt],
        cfg: &InverterConfig,
        mut progress: impl FnMut(usize, f32),
    ) -> Result<Self> {
        let base = model.config().clone();
        let d = base.hidden_size;
        let mut body_cfg = TransformerCloakConfig::new(base);
        body_cfg.sgt.estimator_layers = cfg.transformer_layers.max(1);
        let inv = Self {
            body: TransformerCloak::from_base(body_cfg, model)?,
            out: Var::zeros((d, d), DType::F32, model.device())?,
            head: VocabHead::new(index, model.embedding_table())?,
        };
        let mut vars = inv.body.estimator_parameters();
        vars.push(inv.out.clone());
        vars.push(inv.head.log_scale.clone());
        vars.push(inv.head.bias.clone());
        // The copied decoder layers move slowly; the new output map at the given rate.
        let mut opt = AdamW::new(vars, AdamWConfig::noise(cfg.learning_rate * 0.3))?;
        let mut rng = NoiseRng::seeded(cfg.seed ^ 0x22);
        let clean = super::observed::embed_rows(model.embedding_table(), rows)?;
        let dev = model.device();
        for epoch in 0..cfg.epochs {
            let applied = apply_rows(mechanism, rows, &clean, &mut rng)?;
            let mut order: Vec<usize> = (0..rows.len()).collect();
            rand::seq::SliceRandom::shuffle(order.as_mut_slice(), rng.rng());
            let mut last = 0f32;
            for i in order {
                let o = Observed::new(&rows[i], applied[i].transformed.clone());
                if o.positions.is_empty() {
                    continue;
                }
                let z = inv.z(&o.transformed, &o.attention, &o.positions)?;
                let y = Tensor::new(o.tokens.as_slice(), dev)?;
                let loss = candle_nn::loss::cross_entropy(&inv.head.logits(&z)?, &y)?;
                last = check_loss(&loss, "transformer inverter")?;
                opt.step(&loss.backward()?)?;
            }
            progress(epoch + 1, last);
        }
        Ok(inv)
    }

    /// Ranked guesses (top `k`) for the transformed tokens of each observation.
    pub fn guess(&self, obs: &[Observed], k: usize) -> Result<Vec<Ranked>> {
        self.head.guess(obs, k, |o| {
            self.z(&o.transformed.detach(), &o.attention, &o.positions)
        })
    }
}
