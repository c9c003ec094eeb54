//! σ and μ parameterizations (`docs/spec.md` §2).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::fastmath::tanh_affine_in_place;
use crate::{Error, Result};

/// Default σ bounds `(min, max)`.
pub const DEFAULT_SCALE: (f64, f64) = (1e-4, 2.0);
/// Default Cloak temperature.
pub const DEFAULT_SHALLOW: f64 = 1.0;
/// Default initial ρ (σ starts near `min`).
pub const DEFAULT_RHOS_INIT: f64 = -4.0;
/// Clamp margin of the Cloak inverse: the atanh argument stays in (−1+δ, 1−δ).
const INVERSE_DELTA: f64 = 1e-6;

/// How ρ maps to σ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StdParameterization {
    /// `σ(ρ) = min + (max − min)·(1 + tanh(ρ/s))/2`, in the open interval (min, max).
    Cloak { min: f64, max: f64, shallow: f64 },
    /// `σ = clamp(ρ, min, max)`.
    Direct { min: f64, max: f64 },
}

fn check_scale(min: f64, max: f64) -> Result<()> {
    if !min.is_finite() || !max.is_finite() {
        return Err(Error::hyper(
            "scale",
            format!("({min}, {max})"),
            "bounds must be finite",
        ));
    }
    if min < 0.0 {
        return Err(Error::hyper(
            "scale.min",
            min,
            "σ's lower bound must be ≥ 0",
        ));
    }
    if min >= max {
        return Err(Error::hyper(
            "scale",
            format!("({min}, {max})"),
            "min must be strictly below max",
        ));
    }
    Ok(())
}

impl StdParameterization {
    /// Validated Cloak parameterization.
    pub fn cloak(min: f64, max: f64, shallow: f64) -> Result<Self> {
        check_scale(min, max)?;
        if !(shallow > 0.0 && shallow.is_finite()) {
            return Err(Error::hyper(
                "shallow",
                shallow,
                "the temperature must be > 0",
            ));
        }
        Ok(Self::Cloak { min, max, shallow })
    }

    /// Validated direct parameterization.
    pub fn direct(min: f64, max: f64) -> Result<Self> {
        check_scale(min, max)?;
        Ok(Self::Direct { min, max })
    }

    /// Re-checks a deserialized value.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Cloak { min, max, shallow } => Self::cloak(min, max, shallow).map(|_| ()),
            Self::Direct { min, max } => Self::direct(min, max).map(|_| ()),
        }
    }

    /// `(min, max)`.
    pub fn bounds(&self) -> (f64, f64) {
        match *self {
            Self::Cloak { min, max, .. } | Self::Direct { min, max } => (min, max),
        }
    }

    /// σ(ρ), differentiable in ρ, computed in ρ's dtype (f32 for the SGT).
    pub fn forward(&self, rhos: &Tensor) -> candle_core::Result<Tensor> {
        match *self {
            Self::Cloak { min, max, shallow } => {
                let t = (rhos / shallow)?.tanh()?;
                ((t + 1.0)? * ((max - min) / 2.0))? + min
            }
            Self::Direct { min, max } => rhos.clamp(min, max),
        }
    }

    /// σ(ρ) in place on host values: the client's no-graph path (same formula as
    /// [`Self::forward`], with the vectorized `tanh` of [`crate::fastmath`]).
    pub fn forward_in_place(&self, rhos: &mut [f32]) {
        match *self {
            Self::Cloak { min, max, shallow } => {
                let half = ((max - min) / 2.0) as f32;
                let scale = (1.0 / shallow) as f32;
                tanh_affine_in_place(rhos, 0.0, scale, half, min as f32 + half);
            }
            Self::Direct { min, max } => {
                let (lo, hi) = (min as f32, max as f32);
                rhos.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
            }
        }
    }

    /// The Cloak form as `post_scale·tanh((ρ + pre_shift)·pre_scale) + post_shift` (for fused
    /// host kernels); `None` for the direct (clamped) form.
    pub fn tanh_form(&self) -> Option<TanhAffine> {
        match *self {
            Self::Cloak { min, max, shallow } => {
                let half = (max - min) / 2.0;
                Some(TanhAffine {
                    pre_shift: 0.0,
                    pre_scale: (1.0 / shallow) as f32,
                    post_scale: half as f32,
                    post_shift: (min + half) as f32,
                })
            }
            Self::Direct { .. } => None,
        }
    }

    /// Scalar σ(ρ), for initialisation and tests.
    pub fn sigma(&self, rho: f64) -> f64 {
        match *self {
            Self::Cloak { min, max, shallow } => {
                min + (max - min) * (1.0 + (rho / shallow).tanh()) / 2.0
            }
            Self::Direct { min, max } => rho.clamp(min, max),
        }
    }

    /// ρ such that σ(ρ) = `sigma` (clamped into the representable range).
    pub fn inverse(&self, sigma: f64) -> f64 {
        match *self {
            Self::Cloak { min, max, shallow } => {
                let a = (2.0 * (sigma - min) / (max - min) - 1.0)
                    .clamp(-1.0 + INVERSE_DELTA, 1.0 - INVERSE_DELTA);
                shallow * a.atanh()
            }
            Self::Direct { min, max } => sigma.clamp(min, max),
        }
    }
}

impl Default for StdParameterization {
    fn default() -> Self {
        Self::Cloak {
            min: DEFAULT_SCALE.0,
            max: DEFAULT_SCALE.1,
            shallow: DEFAULT_SHALLOW,
        }
    }
}

/// `y = post_scale·tanh((x + pre_shift)·pre_scale) + post_shift`: the shape of both the
/// Cloak σ parameterization and the bounded mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TanhAffine {
    pub pre_shift: f32,
    pub pre_scale: f32,
    pub post_scale: f32,
    pub post_shift: f32,
}

/// Bounded mean for estimator-produced means: `μ = b·tanh((r + c)/b)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundedMean {
    pub bound: f64,
    pub shift: f64,
}

impl BoundedMean {
    /// Validated bounded mean (`bound > 0`).
    pub fn new(bound: f64, shift: f64) -> Result<Self> {
        if !(bound > 0.0 && bound.is_finite() && shift.is_finite()) {
            return Err(Error::hyper(
                "mean bound",
                bound,
                "the bound must be finite and > 0",
            ));
        }
        Ok(Self { bound, shift })
    }

    /// μ(r), differentiable.
    pub fn forward(&self, r: &Tensor) -> candle_core::Result<Tensor> {
        ((r + self.shift)? / self.bound)?.tanh()? * self.bound
    }

    /// μ as `post_scale·tanh((r + pre_shift)·pre_scale) + post_shift` (for fused host kernels).
    pub fn tanh_form(&self) -> TanhAffine {
        TanhAffine {
            pre_shift: self.shift as f32,
            pre_scale: (1.0 / self.bound) as f32,
            post_scale: self.bound as f32,
            post_shift: 0.0,
        }
    }

    /// μ(r) in place on host values (the client's no-graph path).
    pub fn forward_in_place(&self, r: &mut [f32]) {
        let b = self.bound as f32;
        tanh_affine_in_place(r, self.shift as f32, 1.0 / b, b, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cloak() -> StdParameterization {
        StdParameterization::cloak(1e-4, 2.0, 1.0).unwrap()
    }

    #[test]
    fn sigma_in_open_interval_and_monotone() {
        let p = cloak();
        let rhos: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.25).collect();
        let t = Tensor::new(rhos.as_slice(), &Device::Cpu).unwrap();
        let s = p.forward(&t).unwrap().to_vec1::<f32>().unwrap();
        for w in s.windows(2) {
            assert!(w[1] >= w[0], "not monotone: {w:?}");
        }
        for (&r, &v) in rhos.iter().zip(&s) {
            if r.abs() < 8.0 {
                assert!(v > 1e-4 && v < 2.0, "σ({r}) = {v} outside (min, max)");
            }
        }
        for i in -7..7 {
            let r = i as f64;
            let sig = p.sigma(r);
            assert!(sig > 1e-4 && sig < 2.0);
            assert!(p.sigma(r + 0.5) > sig);
        }
    }

    #[test]
    fn inverse_round_trips() {
        let p = StdParameterization::cloak(0.01, 3.0, 0.7).unwrap();
        for rho in [-3.0, -1.0, 0.0, 0.5, 2.0] {
            let back = p.inverse(p.sigma(rho));
            assert!((back - rho).abs() < 1e-6, "{rho} -> {back}");
        }
        // Out-of-range σ is clamped, not NaN.
        assert!(p.inverse(10.0).is_finite());
        assert!(p.inverse(-1.0).is_finite());
    }

    #[test]
    fn in_place_forms_match_the_tensor_forms() {
        let r: Vec<f32> = (0..40).map(|i| i as f32 * 0.37 - 7.0).collect();
        let t = Tensor::new(r.as_slice(), &Device::Cpu).unwrap();
        let check = |want: Tensor, got: Vec<f32>| {
            for (a, b) in got.iter().zip(want.to_vec1::<f32>().unwrap()) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
            }
        };
        for p in [
            StdParameterization::cloak(1e-4, 2.0, 0.7).unwrap(),
            StdParameterization::direct(0.01, 1.5).unwrap(),
        ] {
            let mut v = r.clone();
            p.forward_in_place(&mut v);
            check(p.forward(&t).unwrap(), v);
        }
        let m = BoundedMean::new(3.0, 0.25).unwrap();
        let mut v = r.clone();
        m.forward_in_place(&mut v);
        check(m.forward(&t).unwrap(), v);
    }

    #[test]
    fn cloak_formula_at_shallow_one() {
        let p = cloak();
        for rho in [-2.0f64, 0.0, 1.3] {
            let expected = 1e-4 + (2.0 - 1e-4) * (1.0 + rho.tanh()) / 2.0;
            let t = Tensor::new(&[rho as f32], &Device::Cpu).unwrap();
            let got = p.forward(&t).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
            assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        }
    }

    #[test]
    fn sigma_at_default_rho_init() {
        let p = cloak();
        let expected = 1e-4 + 3.35e-4 * (2.0 - 1e-4);
        let got = p.sigma(DEFAULT_RHOS_INIT);
        assert!(
            (got - expected).abs() / expected < 0.01,
            "{got} vs {expected}"
        );
    }

    #[test]
    fn invalid_hyper_parameters_are_errors() {
        assert!(StdParameterization::cloak(0.1, 1.0, 0.0).is_err());
        assert!(StdParameterization::cloak(0.1, 1.0, -1.0).is_err());
        assert!(StdParameterization::cloak(-0.1, 1.0, 1.0).is_err());
        assert!(StdParameterization::cloak(1.0, 1.0, 1.0).is_err());
        assert!(StdParameterization::cloak(2.0, 1.0, 1.0).is_err());
        assert!(StdParameterization::direct(f64::NAN, 1.0).is_err());
        assert!(BoundedMean::new(0.0, 0.0).is_err());
        let msg = StdParameterization::cloak(0.1, 1.0, 0.0)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("shallow"), "{msg}");
    }

    #[test]
    fn direct_clamps_and_bounded_mean_bounds() {
        let p = StdParameterization::direct(0.1, 1.0).unwrap();
        let t = Tensor::new(&[-1f32, 0.5, 3.0], &Device::Cpu).unwrap();
        assert_eq!(
            p.forward(&t).unwrap().to_vec1::<f32>().unwrap(),
            vec![0.1, 0.5, 1.0]
        );
        let m = BoundedMean::new(0.5, 0.0).unwrap();
        let t = Tensor::new(&[-100f32, 0.0, 100.0], &Device::Cpu).unwrap();
        let v = m.forward(&t).unwrap().to_vec1::<f32>().unwrap();
        assert!(v[0] >= -0.5 && v[2] <= 0.5 && v[1] == 0.0);
    }
}
