//! Adversarial training of the text SGT (`[adversary]`, off unless `weight > 0`): an inverter
//! updated online on the SGT's current outputs, which the SGT is trained to defeat.
//!
//! The inverter is the suite's per-token MLP (`z = x̃ + W₂·gelu(W₁·x̃/r + b₁) + b₂`, scores
//! `s·(z·E_v − ½‖E_v‖²) + b_v` against the frozen embedding table), scored over a *sampled*
//! vocabulary: the step's true tokens and `negatives` draws from the unigram distribution of the
//! training text, every candidate's score lowered by the log of its probability of being drawn
//! (the log-Q correction of sampled softmax), so that the full 49k-row product is never needed.
//! Each SGT micro-batch first gives the inverter `inner_steps` AdamW steps on the detached
//! outputs, then adds `weight ×` the SGT's adversarial term to the distillation loss:
//!
//! - `objective = "ce"`: `−mean(min(CE_t, ln C))` — the SGT raises the inverter's loss, and a
//!   token whose loss is already at chance (`ln C` over `C` candidates) gives no more push,
//!   so a confidently *wrong* inverter is not rewarded;
//! - `objective = "entropy"`: `−mean(H(p_t))` — the SGT makes the inverter unsure;
//! - `objective = "confusion"`: `mean(−(1/C)·Σ_c ln p_t(c)) − ln C`, the cross-entropy of the
//!   inverter's prediction against the uniform one (domain confusion): unlike the two above
//!   its gradient does not vanish when the inverter is confidently right, which is exactly
//!   when the SGT most needs a push;
//! - `objective = "club"`: the CLUB upper bound on the mutual information between the tokens
//!   and the SGT's outputs (Cheng et al., 2020), with the inverter as the variational
//!   `q(token | output)`: `mean_i log q(t_i | x_i) − mean_{i,j} log q(t_j | x_i)` over the
//!   micro-batch's transformed rows (the other rows' tokens as draws from the marginal), on
//!   the sampled candidates. The SGT minimises it: its own row's token must become no more
//!   likely under the inverter than the batch's other tokens. Zero when the outputs carry
//!   nothing the inverter can use.
//!
//! An in-training adversary is not a privacy measurement (in-training adversaries are known to
//! fall to chance while a fresh one still succeeds): `sgt text train` ends with attacks trained
//! afresh on the frozen layer, and only those are reported as privacy.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_core::NoiseRng;
use stainedglass_text::EncodedPrompt;
use std::collections::HashMap;

/// What the SGT maximises about the in-training inverter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdversaryObjective {
    /// The inverter's cross-entropy, capped at chance per token.
    #[default]
    Ce,
    /// The entropy of the inverter's prediction.
    Entropy,
    /// The cross-entropy of the inverter's prediction against the uniform distribution.
    Confusion,
    /// Minus the CLUB mutual-information bound with the inverter as `q(token | output)`.
    Club,
}

/// The `[adversary]` section of a text-training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdversarySection {
    /// Weight of the adversarial term in the SGT's loss; 0 turns the adversary off.
    pub weight: f64,
    pub objective: AdversaryObjective,
    /// Inverter steps per SGT micro-batch.
    pub inner_steps: usize,
    pub learning_rate: f64,
    /// Hidden width of the inverter's MLP.
    pub hidden: usize,
    /// Negatives drawn from the unigram distribution per inverter step.
    pub negatives: usize,
}

impl Default for AdversarySection {
    fn default() -> Self {
        Self {
            weight: 0.0,
            objective: AdversaryObjective::Ce,
            inner_steps: 1,
            learning_rate: 1e-3,
            hidden: 1024,
            negatives: 512,
        }
    }
}

impl AdversarySection {
    pub fn enabled(&self) -> bool {
        self.weight > 0.0
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("adversary.{m}")));
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return bad("weight must be a finite number ≥ 0 (0 turns the adversary off)");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate must be > 0");
        }
        if self.inner_steps == 0 || self.hidden == 0 || self.negatives == 0 {
            return bad("inner_steps, hidden and negatives must be ≥ 1");
        }
        Ok(())
    }
}

/// The transformed rows of a flattened batch `(b·t, d)`: positions whose noise mask is set,
/// with their token ids. `None` when the batch transforms no token.
pub(crate) fn transformed_rows(
    x: &Tensor,
    ids: &[u32],
    noise_mask: &[u8],
) -> Result<Option<(Tensor, Vec<u32>)>> {
    let pos: Vec<u32> = (0..noise_mask.len() as u32)
        .filter(|&i| noise_mask[i as usize] == 1)
        .collect();
    if pos.is_empty() {
        return Ok(None);
    }
    let tokens = pos.iter().map(|&i| ids[i as usize]).collect();
    let d = x.dim(D::Minus1)?;
    let rows = x
        .reshape(((), d))?
        .index_select(&Tensor::new(pos.as_slice(), x.device())?, 0)?;
    Ok(Some((rows, tokens)))
}

/// The sampled vocabulary of one step.
struct Candidates {
    ids: Tensor,
    /// Index of each target in `ids`.
    targets: Tensor,
    /// `ln P(drawn)` of each candidate under the sampling (the log-Q correction).
    log_q: Tensor,
    len: usize,
}

/// The unigram distribution of the training text's transformed tokens.
struct Unigram {
    /// `(token, cumulative probability)` of every seen token.
    cdf: Vec<(u32, f64)>,
    prob: HashMap<u32, f64>,
}

impl Unigram {
    fn new(rows: &[EncodedPrompt]) -> Result<Self> {
        let mut counts: HashMap<u32, f64> = HashMap::new();
        for r in rows {
            for (&t, &m) in r.input_ids.iter().zip(&r.noise_mask) {
                if m == 1 {
                    *counts.entry(t).or_insert(0.0) += 1.0;
                }
            }
        }
        let total: f64 = counts.values().sum();
        if total == 0.0 {
            return Err(Error::Config(
                "adversary: the training text has no transformed tokens to attack".into(),
            ));
        }
        let mut seen: Vec<(u32, f64)> = counts.into_iter().collect();
        seen.sort_unstable_by_key(|&(t, _)| t);
        let prob: HashMap<u32, f64> = seen.iter().map(|&(t, c)| (t, c / total)).collect();
        let mut acc = 0.0;
        let cdf = seen
            .into_iter()
            .map(|(t, c)| {
                acc += c / total;
                (t, acc)
            })
            .collect();
        Ok(Self { cdf, prob })
    }

    fn sample(&self, rng: &mut NoiseRng) -> u32 {
        let u = rng.uniform();
        let i = self.cdf.partition_point(|&(_, c)| c < u);
        self.cdf[i.min(self.cdf.len() - 1)].0
    }

    /// The step's candidates: the targets and `n` unigram draws.
    fn candidates(
        &self,
        targets: &[u32],
        n: usize,
        rng: &mut NoiseRng,
        dev: &Device,
    ) -> Result<Candidates> {
        let mut index: HashMap<u32, u32> = HashMap::new();
        let mut ids = Vec::new();
        let mut add = |t: u32, ids: &mut Vec<u32>| {
            *index.entry(t).or_insert_with(|| {
                ids.push(t);
                ids.len() as u32 - 1
            })
        };
        let tix: Vec<u32> = targets.iter().map(|&t| add(t, &mut ids)).collect();
        for _ in 0..n {
            add(self.sample(rng), &mut ids);
        }
        let log_q: Vec<f32> = ids
            .iter()
            .map(|t| {
                let q = self.prob.get(t).copied().unwrap_or(0.0);
                // The probability that `t` is among the draws (the candidates are unique, so
                // this, not the expected count, is the sampling correction); targets outside
                // the sample's support (unseen in the training text) count as drawn once.
                (1.0 - (1.0 - q).powi(n as i32)).max(1.0 / n as f64).ln() as f32
            })
            .collect();
        let len = ids.len();
        Ok(Candidates {
            ids: Tensor::new(ids.as_slice(), dev)?,
            targets: Tensor::new(tix.as_slice(), dev)?,
            log_q: Tensor::new(log_q.as_slice(), dev)?,
            len,
        })
    }
}

/// The inverter trained online against the SGT, with its optimizer.
pub(crate) struct Adversary {
    cfg: AdversarySection,
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
    log_scale: Var,
    bias: Var,
    input_scale: f64,
    table: Tensor,
    half_sq: Tensor,
    unigram: Unigram,
    opt: AdamW,
}

/// What the inverter did on one micro-batch (before its update: on outputs it has not seen).
pub(crate) struct AdversaryStats {
    pub loss: f64,
    pub accuracy: f64,
}

/// Named tensors of a checkpoint group.
type Named = Vec<(String, Tensor)>;

const NAMES: [&str; 6] = ["w1", "b1", "w2", "b2", "log_scale", "bias"];

impl Adversary {
    /// A fresh inverter against `table` (the frozen `(V, d)` embeddings), sampling negatives
    /// from the transformed tokens of `rows`.
    pub fn new(
        cfg: &AdversarySection,
        table: &Tensor,
        rows: &[EncodedPrompt],
        seed: u64,
    ) -> Result<Self> {
        let (dev, d, v) = (table.device(), table.dim(1)?, table.dim(0)?);
        let mut rng = NoiseRng::seeded(seed);
        let sq = table.sqr()?.sum(D::Minus1)?;
        let mean_sq = sq.mean_all()?.to_scalar::<f32>()? as f64;
        let rms = (mean_sq / d as f64).sqrt();
        let w1 = (rng.standard_normal((cfg.hidden, d), dev)? * (1.0 / d as f64).sqrt())?;
        let w1 = Var::from_tensor(&w1)?;
        let b1 = Var::zeros(cfg.hidden, DType::F32, dev)?;
        let w2 = Var::zeros((d, cfg.hidden), DType::F32, dev)?;
        let b2 = Var::zeros(d, DType::F32, dev)?;
        let log_scale = Var::new(&[(10.0 / mean_sq.max(1e-12)).ln() as f32], dev)?;
        let bias = Var::zeros(v, DType::F32, dev)?;
        let vars = vec![
            w1.clone(),
            b1.clone(),
            w2.clone(),
            b2.clone(),
            log_scale.clone(),
            bias.clone(),
        ];
        Ok(Self {
            opt: AdamW::new(vars, AdamWConfig::noise(cfg.learning_rate))?,
            cfg: cfg.clone(),
            w1,
            b1,
            w2,
            b2,
            log_scale,
            bias,
            input_scale: 1.0 / rms.max(1e-12),
            table: table.clone(),
            half_sq: (sq * 0.5)?,
            unigram: Unigram::new(rows)?,
        })
    }

    fn vars(&self) -> [&Var; 6] {
        [
            &self.w1,
            &self.b1,
            &self.w2,
            &self.b2,
            &self.log_scale,
            &self.bias,
        ]
    }

    /// The inverter's weights and its optimizer's state, for a checkpoint.
    pub fn state(&self) -> Result<(Named, Named)> {
        let weights = NAMES
            .iter()
            .zip(self.vars())
            .map(|(n, v)| (n.to_string(), v.as_tensor().clone()))
            .collect();
        Ok((weights, self.opt.state()?))
    }

    /// Restores [`Adversary::state`].
    pub fn load(
        &mut self,
        weights: &HashMap<String, Tensor>,
        opt: &HashMap<String, Tensor>,
    ) -> Result<()> {
        for (n, v) in NAMES.iter().zip(self.vars()) {
            let t = weights.get(*n).ok_or_else(|| {
                Error::Config(format!(
                    "the checkpoint's adversary has no `{n}`; pass --fresh to start over"
                ))
            })?;
            v.set(t)?;
        }
        self.opt.load_state(opt)?;
        Ok(())
    }

    /// Candidate logits `(n, C)` of rows `x (n, d)`.
    fn logits(&self, x: &Tensor, c: &Candidates) -> Result<Tensor> {
        let h = (x * self.input_scale)?
            .matmul(&self.w1.as_tensor().t()?)?
            .broadcast_add(self.b1.as_tensor())?
            .gelu()?;
        let z = (x + h
            .matmul(&self.w2.as_tensor().t()?)?
            .broadcast_add(self.b2.as_tensor())?)?;
        let e = self.table.index_select(&c.ids, 0)?;
        let half = self.half_sq.index_select(&c.ids, 0)?;
        let bias = self.bias.as_tensor().index_select(&c.ids, 0)?;
        let s = z.matmul(&e.t()?)?.broadcast_sub(&half.unsqueeze(0)?)?;
        Ok(s.broadcast_mul(&self.log_scale.as_tensor().exp()?)?
            .broadcast_add(&(bias - &c.log_q)?.unsqueeze(0)?)?)
    }

    /// Per-row negative log-likelihood of the targets and whether the top score is the target.
    fn nll(&self, x: &Tensor, c: &Candidates) -> Result<(Tensor, Tensor)> {
        let logits = self.logits(x, c)?;
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let t = c.targets.unsqueeze(1)?;
        let nll = lsm.gather(&t, 1)?.squeeze(1)?.neg()?;
        let hit = logits.argmax(D::Minus1)?.eq(&c.targets)?;
        Ok((nll, hit))
    }

    /// `inner_steps` inverter updates on the (detached) transformed rows `x` and their tokens.
    pub fn update(
        &mut self,
        x: &Tensor,
        tokens: &[u32],
        rng: &mut NoiseRng,
    ) -> Result<AdversaryStats> {
        let x = x.detach();
        let mut stats = None;
        for _ in 0..self.cfg.inner_steps {
            let c = self
                .unigram
                .candidates(tokens, self.cfg.negatives, rng, x.device())?;
            let (nll, hit) = self.nll(&x, &c)?;
            let loss = nll.mean_all()?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(Error::Config(format!(
                    "the in-training adversary diverged (loss {value}); lower adversary.learning_rate"
                )));
            }
            if stats.is_none() {
                let acc = hit.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()? as f64;
                stats = Some(AdversaryStats {
                    loss: value,
                    accuracy: acc,
                });
            }
            self.opt.step(&loss.backward()?)?;
        }
        Ok(stats.unwrap_or(AdversaryStats {
            loss: f64::NAN,
            accuracy: f64::NAN,
        }))
    }

    /// The CLUB bound of candidate `logits (n, C)`: the mean log-likelihood of each row's own
    /// token less that of every row's token (see the module doc).
    fn club(logits: &Tensor, c: &Candidates) -> Result<Tensor> {
        let lsm = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let own = lsm.gather(&c.targets.unsqueeze(1)?, 1)?.mean_all()?;
        let all = lsm.index_select(&c.targets, 1)?.mean_all()?;
        Ok((own - all)?)
    }

    /// The term added to the SGT's loss (already weighted): minimising it raises the
    /// inverter's capped loss or its entropy, or lowers the CLUB bound, on the SGT's live
    /// outputs `x`.
    pub fn sgt_term(&self, x: &Tensor, tokens: &[u32], rng: &mut NoiseRng) -> Result<Tensor> {
        let c = self
            .unigram
            .candidates(tokens, self.cfg.negatives, rng, x.device())?;
        let objective = match self.cfg.objective {
            AdversaryObjective::Ce => {
                let (nll, _) = self.nll(x, &c)?;
                let cap = (c.len as f64).ln();
                // min(CE, cap) with the cap as a constant: no gradient past chance.
                let below = nll.lt(cap)?.to_dtype(DType::F32)?;
                ((&nll * &below)? + ((1.0 - &below)? * cap)?)?.mean_all()?
            }
            AdversaryObjective::Entropy => {
                let lsm = candle_nn::ops::log_softmax(&self.logits(x, &c)?, D::Minus1)?;
                (lsm.exp()? * &lsm)?.sum(D::Minus1)?.neg()?.mean_all()?
            }
            AdversaryObjective::Confusion => {
                // Minimised, so negated here and negated back below: the term is
                // weight × (CE(uniform, p) − ln C) ≥ 0, zero when p is uniform.
                let lsm = candle_nn::ops::log_softmax(&self.logits(x, &c)?, D::Minus1)?;
                let ce_uniform = lsm.mean(D::Minus1)?.neg()?.mean_all()?;
                ((ce_uniform - (c.len as f64).ln())? * -1.0)?
            }
            AdversaryObjective::Club => Self::club(&self.logits(x, &c)?, &c)?.neg()?,
        };
        Ok((objective * -self.cfg.weight)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(tokens: &[u32]) -> Vec<EncodedPrompt> {
        vec![EncodedPrompt {
            input_ids: tokens.to_vec(),
            attention_mask: vec![1; tokens.len()],
            noise_mask: vec![1; tokens.len()],
            labels: None,
            loss_mask: None,
        }]
    }

    fn table(v: usize, d: usize) -> Tensor {
        let mut rng = NoiseRng::seeded(3);
        rng.standard_normal((v, d), &Device::Cpu).expect("table")
    }

    #[test]
    fn candidates_hold_every_target_and_correct_by_sampling_probability() {
        let u = Unigram::new(&rows(&[1, 1, 1, 2])).expect("unigram");
        let mut rng = NoiseRng::seeded(0);
        let c = u
            .candidates(&[2, 7, 2], 16, &mut rng, &Device::Cpu)
            .expect("candidates");
        let ids = c.ids.to_vec1::<u32>().expect("ids");
        let t = c.targets.to_vec1::<u32>().expect("targets");
        assert_eq!(
            [ids[t[0] as usize], ids[t[1] as usize], ids[t[2] as usize]],
            [2, 7, 2]
        );
        assert_eq!(ids.len(), 3, "the draws only add 1 to {{2, 7}}: {ids:?}");
        let lq = c.log_q.to_vec1::<f32>().expect("log q");
        // Token 1 (p = 0.75) is as good as certain in 16 draws; 7 was never seen.
        let i1 = ids.iter().position(|&x| x == 1).expect("1 drawn");
        assert!(lq[i1].abs() < 1e-6, "{lq:?}");
        assert!((lq[1] - (1.0f32 / 16.0).ln()).abs() < 1e-6, "{lq:?}");
    }

    /// The inverter learns a clean identity map quickly, and the SGT's term pushes the other
    /// way: its gradient on the inputs points against the inverter's own loss gradient.
    #[test]
    fn the_inverter_learns_and_the_sgt_term_opposes_it() {
        let (v, d) = (32, 16);
        let e = table(v, d);
        let tokens: Vec<u32> = (0..v as u32).chain(0..v as u32).collect();
        let cfg = AdversarySection {
            weight: 1.0,
            hidden: 32,
            negatives: 8,
            inner_steps: 20,
            learning_rate: 1e-2,
            ..Default::default()
        };
        let mut adv = Adversary::new(&cfg, &e, &rows(&tokens), 1).expect("adversary");
        let noisy = {
            let x = e
                .index_select(
                    &Tensor::new(tokens.as_slice(), &Device::Cpu).expect("ids"),
                    0,
                )
                .expect("rows");
            let mut rng = NoiseRng::seeded(9);
            (&x + (rng.standard_normal(x.shape(), &Device::Cpu).expect("noise") * 0.5))
                .expect("noisy")
        };
        let mut rng = NoiseRng::seeded(5);
        let first = adv.update(&noisy, &tokens, &mut rng).expect("update");
        let second = adv.update(&noisy, &tokens, &mut rng).expect("update");
        assert!(second.loss < first.loss, "{} → {}", first.loss, second.loss);
        assert!(second.accuracy > 0.8, "{}", second.accuracy);

        for objective in [
            AdversaryObjective::Ce,
            AdversaryObjective::Entropy,
            AdversaryObjective::Confusion,
            AdversaryObjective::Club,
        ] {
            adv.cfg.objective = objective;
            let dot = term_against_inverter(&adv, &noisy, &tokens);
            assert!(
                dot < 0.0,
                "{objective:?} must raise the inverter's loss: {dot}"
            );
        }
    }

    /// The CLUB bound is positive when the inverter reads the rows and exactly zero when every
    /// row is the same (the outputs carry nothing about the tokens).
    #[test]
    fn club_bound_is_positive_on_readable_rows_and_zero_on_blank_ones() {
        let (v, d) = (32, 16);
        let e = table(v, d);
        let tokens: Vec<u32> = (0..v as u32).collect();
        let cfg = AdversarySection {
            weight: 1.0,
            objective: AdversaryObjective::Club,
            hidden: 32,
            negatives: 8,
            inner_steps: 30,
            learning_rate: 1e-2,
        };
        let mut adv = Adversary::new(&cfg, &e, &rows(&tokens), 1).expect("adversary");
        let ids = Tensor::new(tokens.as_slice(), &Device::Cpu).expect("ids");
        let x = e.index_select(&ids, 0).expect("rows");
        let mut rng = NoiseRng::seeded(2);
        adv.update(&x, &tokens, &mut rng).expect("update");
        let bound = |x: &Tensor| -> f32 {
            let mut rng = NoiseRng::seeded(4);
            let c = adv
                .unigram
                .candidates(&tokens, 8, &mut rng, &Device::Cpu)
                .expect("candidates");
            let l = adv.logits(x, &c).expect("logits");
            Adversary::club(&l, &c)
                .and_then(|t| Ok(t.to_scalar::<f32>()?))
                .expect("club")
        };
        let readable = bound(&x);
        assert!(readable > 1.0, "bound on readable rows: {readable}");
        let blank = x.zeros_like().expect("zeros");
        assert!(bound(&blank).abs() < 1e-5, "bound on blank rows");
        // The SGT's term is the bound, weighted (the SGT minimises it).
        let mut rng = NoiseRng::seeded(4);
        let term = adv.sgt_term(&x, &tokens, &mut rng).expect("term");
        let t = term.to_scalar::<f32>().expect("scalar");
        assert!((t - readable).abs() < 1e-4, "{t} vs {readable}");
    }

    /// The dot product of the SGT term's input gradient with the inverter's own loss gradient.
    fn term_against_inverter(adv: &Adversary, noisy: &Tensor, tokens: &[u32]) -> f32 {
        let x = Var::from_tensor(noisy).expect("var");
        let mut rng = NoiseRng::seeded(6);
        let term = adv.sgt_term(x.as_tensor(), tokens, &mut rng).expect("term");
        let g_sgt = term
            .backward()
            .expect("bwd")
            .get(x.as_tensor())
            .expect("g")
            .clone();
        let mut rng = NoiseRng::seeded(6);
        let c = adv
            .unigram
            .candidates(tokens, 8, &mut rng, &Device::Cpu)
            .expect("candidates");
        let (nll, _) = adv.nll(x.as_tensor(), &c).expect("nll");
        let g_inv = nll
            .mean_all()
            .expect("mean")
            .backward()
            .expect("bwd")
            .get(x.as_tensor())
            .expect("g")
            .clone();
        (g_sgt * g_inv)
            .expect("mul")
            .sum_all()
            .expect("sum")
            .to_scalar::<f32>()
            .expect("dot")
    }

    #[test]
    fn bad_sections_are_refused_by_name() {
        for s in [
            AdversarySection {
                weight: -1.0,
                ..Default::default()
            },
            AdversarySection {
                inner_steps: 0,
                ..Default::default()
            },
            AdversarySection {
                learning_rate: f64::NAN,
                ..Default::default()
            },
        ] {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains("adversary."), "{e}");
        }
        assert!(!AdversarySection::default().enabled());
    }
}
