//! AdamW with saveable state. Written here rather than using `candle_nn::AdamW` because a resumed
//! training run must restore the moment estimates, which candle-nn's optimizer does not expose.
//! Noise parameters (μ, ρ) are optimised with weight decay 0 (`docs/spec.md` §2).

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};
use rayon::prelude::*;

use crate::host::{is_cpu_f32, with_host, with_hosts, zeroed};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// The SGT default: weight decay 0 (decay would make μ and ρ vanish).
    pub fn noise(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::hyper(
                "lr",
                self.lr,
                "the learning rate must be finite and > 0",
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err(Error::hyper(
                "betas",
                format!("({}, {})", self.beta1, self.beta2),
                "must be in [0, 1)",
            ));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(Error::hyper(
                "weight_decay",
                self.weight_decay,
                "must be ≥ 0",
            ));
        }
        Ok(())
    }
}

/// AdamW over a fixed list of variables.
pub struct AdamW {
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
    config: AdamWConfig,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            t: 0,
            config,
        })
    }

    pub fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.t += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for i in 0..self.vars.len() {
            let Some(g) = grads.get(self.vars[i].as_tensor()) else {
                continue;
            };
            // Detached: a gradient can carry its step's whole graph, and the moments would
            // chain every step's graph together (unbounded memory).
            let g = g.detach().to_dtype(DType::F32)?;
            if let Some((w, m, v)) = self.step_host(i, &g, bc1, bc2)? {
                self.vars[i].set(&w)?;
                self.m[i] = m;
                self.v[i] = v;
                continue;
            }
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let var = &self.vars[i];
            let decayed = if c.weight_decay > 0.0 {
                (var.as_tensor() * (1.0 - c.lr * c.weight_decay))?
            } else {
                var.as_tensor().clone()
            };
            var.set(&(decayed - (update * c.lr)?)?)?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }

    /// The update of variable `i` in one parallel pass over host values (CPU, f32): the new
    /// weight, first and second moments, with the formulas of the tensor path. `None` when the
    /// tensors are elsewhere. (The tensor path runs a dozen full-size ops, each allocating.)
    fn step_host(
        &self,
        i: usize,
        g: &Tensor,
        bc1: f64,
        bc2: f64,
    ) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        let w = self.vars[i].as_tensor();
        let all_host = [w, g, &self.m[i], &self.v[i]].iter().all(|t| is_cpu_f32(t));
        if !all_host || g.dims() != w.dims() {
            return Ok(None);
        }
        let c = self.config;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let (ib1, ib2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
        let (bc1, bc2, eps, lr) = (bc1 as f32, bc2 as f32, c.eps as f32, c.lr as f32);
        let decay = (1.0 - c.lr * c.weight_decay) as f32;
        let n = w.elem_count();
        let (mut nw, mut nm, mut nv) = (zeroed(n), zeroed(n), zeroed(n));
        with_hosts([w, g, &self.m[i], &self.v[i]], |[ws, gs, ms, vs]| {
            const CHUNK: usize = 1 << 14;
            nw.par_chunks_mut(CHUNK)
                .zip(nm.par_chunks_mut(CHUNK).zip(nv.par_chunks_mut(CHUNK)))
                .enumerate()
                .for_each(|(k, (ow, (om, ov)))| {
                    let at = k * CHUNK;
                    for j in 0..ow.len() {
                        let gj = gs[at + j];
                        let m = ms[at + j] * b1 + gj * ib1;
                        let v = vs[at + j] * b2 + gj * gj * ib2;
                        let update = (m / bc1) / ((v / bc2).sqrt() + eps);
                        ow[j] = ws[at + j] * decay - update * lr;
                        om[j] = m;
                        ov[j] = v;
                    }
                });
        })?;
        let shape = w.shape();
        let dev = w.device();
        Ok(Some((
            Tensor::from_vec(nw, shape, dev)?,
            Tensor::from_vec(nm, shape, dev)?,
            Tensor::from_vec(nv, shape, dev)?,
        )))
    }

    /// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        let mut total = 0f64;
        for v in &self.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                total += if is_cpu_f32(g) {
                    // Block sums collected in order, then added in order: the same norm
                    // whatever the thread scheduling (resumed runs stay bit-exact).
                    with_host(g, |x| {
                        x.par_chunks(1 << 14)
                            .map(|c| c.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>())
                            .collect::<Vec<f64>>()
                            .iter()
                            .sum::<f64>()
                    })?
                } else {
                    g.sqr()?
                        .sum_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?
                };
            }
        }
        let norm = total.sqrt();
        if norm > max_norm && norm > 0.0 {
            let s = max_norm / norm;
            for v in &self.vars {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    grads.insert(v.as_tensor(), (g * s)?);
                }
            }
        }
        Ok(norm)
    }

    /// Moment estimates and step count, for checkpoints.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.vars.len() + 1);
        for i in 0..self.vars.len() {
            out.push((format!("m.{i}"), self.m[i].clone()));
            out.push((format!("v.{i}"), self.v[i].clone()));
        }
        let dev = self
            .vars
            .first()
            .map(|v| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.push(("t".into(), Tensor::new(&[self.t as f32], &dev)?));
        Ok(out)
    }

    /// Restores the state written by [`AdamW::state`] (shapes are checked).
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let missing = |n: &str| Error::artefact("<optimizer state>", format!("missing `{n}`"));
        for i in 0..self.vars.len() {
            for (name, slot) in [
                (format!("m.{i}"), &mut self.m[i]),
                (format!("v.{i}"), &mut self.v[i]),
            ] {
                let t = state.get(&name).ok_or_else(|| missing(&name))?;
                if t.dims() != slot.dims() {
                    return Err(Error::artefact(
                        "<optimizer state>",
                        format!(
                            "`{name}` has shape {:?}, expected {:?}",
                            t.dims(),
                            slot.dims()
                        ),
                    ));
                }
                *slot = t.to_dtype(DType::F32)?;
            }
        }
        let t = state.get("t").ok_or_else(|| missing("t"))?;
        self.t = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .first()
            .copied()
            .unwrap_or(0.0) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn minimises_a_quadratic_and_round_trips_state() {
        let x = Var::new(&[3f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![x.clone()], AdamWConfig::noise(0.1)).unwrap();
        for _ in 0..300 {
            let g = x
                .as_tensor()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            opt.step(&g).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
        let state: HashMap<_, _> = opt.state().unwrap().into_iter().collect();
        let mut other = AdamW::new(vec![x.clone()], AdamWConfig::noise(0.1)).unwrap();
        other.load_state(&state).unwrap();
        assert_eq!(other.steps(), 300);
        assert!(AdamW::new(vec![x], AdamWConfig::noise(-1.0)).is_err());
    }

    #[test]
    fn host_step_matches_the_tensor_formulas() {
        // Several chunks of the parallel pass, weight decay on, three steps.
        let n = 3 * (1 << 14) + 77;
        let w0: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let g0: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
            .collect();
        let x = Var::from_vec(w0.clone(), n, &Device::Cpu).unwrap();
        let c = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::noise(0.05)
        };
        let mut opt = AdamW::new(vec![x.clone()], c).unwrap();
        let g = Tensor::from_vec(g0, n, &Device::Cpu).unwrap();
        let (mut w, mut m, mut v) = (
            Tensor::from_vec(w0, n, &Device::Cpu).unwrap(),
            g.zeros_like().unwrap(),
            g.zeros_like().unwrap(),
        );
        for t in 1..=3 {
            let mut store = (x.as_tensor() * 0.0)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            store.insert(x.as_tensor(), g.clone());
            opt.step(&store).unwrap();
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.beta2.powi(t);
            m = ((&m * c.beta1).unwrap() + (&g * (1.0 - c.beta1)).unwrap()).unwrap();
            v = ((&v * c.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - c.beta2)).unwrap()).unwrap();
            let upd = ((&m / bc1).unwrap()
                / ((&v / bc2).unwrap().sqrt().unwrap() + c.eps).unwrap())
            .unwrap();
            w = ((&w * (1.0 - c.lr * c.weight_decay)).unwrap() - (upd * c.lr).unwrap()).unwrap();
            let got = x.as_tensor().to_vec1::<f32>().unwrap();
            let want = w.to_vec1::<f32>().unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "step {t}: max difference {worst}");
        }
    }

    #[test]
    fn moments_hold_no_graph_across_steps() {
        // A gradient that depends on the variable (d/dx x³ = 3x²) is itself tracked; the moments
        // must not keep that graph alive, or memory grows with every step.
        let x = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![x.clone()], AdamWConfig::noise(0.01)).unwrap();
        for _ in 0..3 {
            let g = x
                .as_tensor()
                .powf(3.0)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            opt.step(&g).unwrap();
        }
        for (name, t) in opt.state().unwrap() {
            assert!(!t.track_op(), "{name} still references a graph");
        }
    }
}
