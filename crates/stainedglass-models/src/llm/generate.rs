//! Autoregressive generation with a KV cache from token ids or from input embeddings, with
//! greedy decoding or sampling (temperature, top-k, top-p, repetition penalty), stop tokens,
//! a token budget and an optional seed (otherwise the sampler draws from OS entropy).

use super::kv_cache::KvCache;
use super::model::Llama;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Decoding parameters. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// HF-style: logits of already-seen tokens are divided (if > 0) or multiplied by it.
    pub repetition_penalty: f32,
    /// Generation stops after emitting any of these (the model's end-of-turn ids belong here).
    pub stop_tokens: Vec<u32>,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            stop_tokens: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, expected: &str| {
            Err(Error::Invalid {
                what: what.into(),
                expected: expected.into(),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", "a finite value ≥ 0");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top_p", "a value in (0, 1]");
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k", "at least 1");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", "a finite value > 0");
        }
        Ok(())
    }
}

/// What to start from.
pub enum Prompt<'a> {
    Ids(&'a [u32]),
    /// `(t, hidden)` or `(1, t, hidden)` input embeddings (e.g. SGT-transformed).
    Embeds(&'a Tensor),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was generated (it is included in `tokens`).
    Stop,
    /// `max_new_tokens` or the context length was reached.
    Length,
    /// The token callback asked to stop.
    Cancelled,
    /// The row's logits were not finite (its input cannot be meaningful); the other rows of the
    /// batch go on.
    NonFinite,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
}

/// Picks the next token from logits.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha20Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = match params.seed {
            Some(s) => ChaCha20Rng::seed_from_u64(s),
            None => ChaCha20Rng::from_os_rng(),
        };
        Ok(Self { params, rng })
    }

    /// `logits` over the vocabulary; `seen` are the tokens the repetition penalty applies to.
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let mut l = logits.to_vec();
        let rp = self.params.repetition_penalty;
        if rp != 1.0 {
            let mut done = std::collections::HashSet::new();
            for &t in seen {
                if done.insert(t) {
                    if let Some(x) = l.get_mut(t as usize) {
                        *x = if *x > 0.0 { *x / rp } else { *x * rp };
                    }
                }
            }
        }
        if self.params.temperature == 0.0 {
            return argmax(&l);
        }
        let temp = self.params.temperature;
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_unstable_by(|&a, &b| l[b].total_cmp(&l[a]));
        if let Some(k) = self.params.top_k {
            idx.truncate(k.max(1));
        }
        // Differences from the largest logit, divided in f64: a temperature as small as 1e-40
        // then gives weight 1 to the largest logits and 0 to the rest (greedy), never inf − inf.
        let top = f64::from(l[idx[0]]);
        let mut p: Vec<f64> = idx
            .iter()
            .map(|&i| ((f64::from(l[i]) - top) / temp).exp())
            .collect();
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
        if let Some(top_p) = self.params.top_p {
            let mut c = 0f64;
            let mut keep = p.len();
            for (n, x) in p.iter().enumerate() {
                c += x;
                if c >= top_p {
                    keep = n + 1;
                    break;
                }
            }
            p.truncate(keep);
            idx.truncate(keep);
        }
        let z: f64 = p.iter().sum();
        let mut u = self.rng.random::<f64>() * z;
        for (n, x) in p.iter().enumerate() {
            if u < *x {
                return idx[n] as u32;
            }
            u -= x;
        }
        idx[p.len() - 1] as u32
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

impl Llama {
    /// Generates from `prompt` with a KV cache, calling `on_token` with each new token; it
    /// returns `false` to stop early.
    pub fn generate(
        &self,
        prompt: Prompt<'_>,
        params: &SamplingParams,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(params.clone())?;
        let (embeds, mut seen) = match prompt {
            Prompt::Ids(ids) => {
                if ids.is_empty() {
                    return Err(Error::Invalid {
                        what: "prompt (empty)".into(),
                        expected: "at least one token".into(),
                    });
                }
                let t = Tensor::new(ids, self.device())?.unsqueeze(0)?;
                (self.embed(&t)?, ids.to_vec())
            }
            Prompt::Embeds(e) => {
                let e = if e.rank() == 2 {
                    e.unsqueeze(0)?
                } else {
                    e.clone()
                };
                (e, Vec::new())
            }
        };
        let prompt_tokens = embeds.dim(1).unwrap_or(0);
        let mut cache = KvCache::new(self.config().num_layers, 1);
        let mut logits = self.forward_cached(&embeds, None, &mut cache)?;
        let mut tokens = Vec::new();
        let finish = loop {
            if tokens.len() >= params.max_new_tokens {
                break FinishReason::Length;
            }
            let row = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            if row.iter().any(|x| x.is_nan()) {
                return Err(Error::Invalid {
                    what: "logits (NaN)".into(),
                    expected: "finite logits; are the input embeddings finite?".into(),
                });
            }
            let next = sampler.sample(&row, &seen);
            tokens.push(next);
            seen.push(next);
            if !on_token(next) {
                break FinishReason::Cancelled;
            }
            if params.stop_tokens.contains(&next) {
                break FinishReason::Stop;
            }
            if cache.len() + 1 > self.max_positions() {
                break FinishReason::Length;
            }
            let e = self.embed(&Tensor::new(&[[next]], self.device())?)?;
            logits = self.forward_cached(&e, None, &mut cache)?;
        };
        Ok(Generation {
            tokens,
            finish,
            prompt_tokens,
        })
    }
}

impl Llama {
    /// Generates for several prompts at once (left-padded, one KV cache): decoding a batch reads
    /// the weights once per step for every row. Row `i` samples with seed `seed + i` when a seed
    /// is given. Rows stop independently; the batch ends when all have.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
    ) -> Result<Vec<Generation>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::Invalid {
                what: "prompt (empty)".into(),
                expected: "at least one token per prompt".into(),
            });
        }
        let b = prompts.len();
        let t = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for p in prompts {
            ids.extend(std::iter::repeat_n(0u32, t - p.len()));
            ids.extend_from_slice(p);
            mask.extend(std::iter::repeat_n(0u8, t - p.len()));
            mask.extend(std::iter::repeat_n(1u8, p.len()));
        }
        let dev = self.device();
        let mut samplers = (0..b)
            .map(|i| {
                Sampler::new(SamplingParams {
                    seed: params.seed.map(|s| s.wrapping_add(i as u64)),
                    ..params.clone()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut cache = KvCache::new(self.config().num_layers, b);
        let x = self.embed(&Tensor::from_vec(ids, (b, t), dev)?)?;
        let m = Tensor::from_vec(mask, (b, t), dev)?;
        let mut logits = self.forward_cached(&x, Some(&m), &mut cache)?;
        let mut seen: Vec<Vec<u32>> = prompts.to_vec();
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut finish: Vec<Option<FinishReason>> = vec![None; b];
        loop {
            let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let mut next = vec![0u32; b];
            let mut alive = vec![0u8; b];
            for i in 0..b {
                if finish[i].is_some() {
                    continue;
                }
                let tok = samplers[i].sample(&rows[i], &seen[i]);
                out[i].push(tok);
                seen[i].push(tok);
                next[i] = tok;
                alive[i] = 1;
                if params.stop_tokens.contains(&tok) {
                    finish[i] = Some(FinishReason::Stop);
                } else if out[i].len() >= params.max_new_tokens {
                    finish[i] = Some(FinishReason::Length);
                }
            }
            if finish.iter().all(Option::is_some) || cache.len() + 1 > self.max_positions() {
                break;
            }
            let e = self.embed(&Tensor::from_vec(next, (b, 1), dev)?)?;
            let m = Tensor::from_vec(alive, (b, 1), dev)?;
            logits = self.forward_cached(&e, Some(&m), &mut cache)?;
        }
        Ok(out
            .into_iter()
            .zip(finish)
            .zip(prompts)
            .map(|((tokens, f), p)| Generation {
                tokens,
                finish: f.unwrap_or(FinishReason::Length),
                prompt_tokens: p.len(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            seed: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_argmax_and_penalty_changes_it() {
        let mut s = Sampler::new(params(0.0)).expect("sampler");
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[]), 1);
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 1.2,
            ..params(0.0)
        })
        .expect("sampler");
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[1]), 2);
    }

    /// A vanishing temperature samples the largest logit, never a garbage token from an
    /// overflow (1e-40 is below f32's smallest normal number).
    #[test]
    fn tiny_temperatures_are_greedy() {
        let logits: Vec<f32> = (0..500).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        let best = argmax(&logits);
        for t in [1e-40, 1e-300, 1e-6] {
            let mut s = Sampler::new(params(t)).expect("sampler");
            for _ in 0..20 {
                assert_eq!(s.sample(&logits, &[]), best, "temperature {t}");
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy_and_seeded_sampling_repeats() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut s = Sampler::new(SamplingParams {
            top_k: Some(1),
            ..params(1.0)
        })
        .expect("sampler");
        for _ in 0..20 {
            assert_eq!(s.sample(&logits, &[]), argmax(&logits));
        }
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                ..params(1.0)
            })
            .expect("sampler");
            (0..30).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // One token holds ~90% of the mass; top_p 0.5 must always pick it.
        let logits = [5.0, 0.0, 0.0, 0.0];
        let mut s = Sampler::new(SamplingParams {
            top_p: Some(0.5),
            ..params(1.0)
        })
        .expect("sampler");
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 0));
    }

    #[test]
    fn bad_parameters_are_rejected() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: Some(0.0),
                ..Default::default()
            },
            SamplingParams {
                top_k: Some(0),
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(p).is_err());
        }
    }
}
