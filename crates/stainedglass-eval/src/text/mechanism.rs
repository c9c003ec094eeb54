//! What the server sees: the mechanisms under evaluation. The SGT, and two baselines — an
//! input-independent Gaussian and the metric-DP token mechanism — that every attack and
//! utility measure is run against in the same report.

use crate::{Error, Result};
use candle_core::{DType, Tensor, D};
use rand_distr::{Distribution, Gamma};
use stainedglass_core::NoiseRng;
use stainedglass_metrics::index::EmbeddingIndex;
use stainedglass_models::text_sgt::TransformerCloak;

/// One transformed prompt: `x̃ (1, t, d)` and, for Gaussian mechanisms, the centres and σ of
/// each token's noise distribution (for the mutual-information estimate).
pub struct Applied {
    pub transformed: Tensor,
    /// `(centre, σ)`, each `(1, t, d)`: `x̃ ~ N(centre, diag σ²)` on transformed tokens.
    pub gaussian: Option<(Tensor, Tensor)>,
}

/// A randomized map from clean prompt embeddings to what the server receives. Tokens whose
/// `noise_mask` is 0 pass through unchanged.
pub trait Mechanism {
    /// Short name for tables and plots (`sgt`, `gaussian(1.0)`, …).
    fn name(&self) -> String;
    /// `x (1, t, d)` → [`Applied`].
    fn apply(
        &self,
        x: &Tensor,
        attention: &[u8],
        noise: &[u8],
        rng: &mut NoiseRng,
    ) -> Result<Applied>;
}

/// `(1, t, 1)` selector of the transformed tokens.
fn selector(x: &Tensor, attention: &[u8], noise: &[u8]) -> Result<Tensor> {
    let t = x.dim(1)?;
    if attention.len() != t || noise.len() != t {
        return Err(Error::Input(format!(
            "masks of {} and {} entries for a prompt of {t} tokens",
            attention.len(),
            noise.len()
        )));
    }
    let sel: Vec<u8> = attention.iter().zip(noise).map(|(a, n)| a & n).collect();
    Ok(Tensor::from_vec(sel, (1, t, 1), x.device())?)
}

/// RMS of every entry of the embedding `table` (the scale baselines and inverters share).
pub(crate) fn table_rms(table: &Tensor) -> Result<f64> {
    Ok(table
        .sqr()?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?
        .sqrt())
}

/// The clean embeddings (the reference every measure is compared with).
pub struct Clean;

impl Mechanism for Clean {
    fn name(&self) -> String {
        "clean".into()
    }

    fn apply(&self, x: &Tensor, _: &[u8], _: &[u8], _: &mut NoiseRng) -> Result<Applied> {
        Ok(Applied {
            transformed: x.clone(),
            gaussian: None,
        })
    }
}

/// The trained Stained Glass Transform.
pub struct Sgt<'a>(pub &'a TransformerCloak);

impl Mechanism for Sgt<'_> {
    fn name(&self) -> String {
        "sgt".into()
    }

    fn apply(
        &self,
        x: &Tensor,
        attention: &[u8],
        noise: &[u8],
        rng: &mut NoiseRng,
    ) -> Result<Applied> {
        let out = self.0.transform(x, Some(attention), Some(noise), rng)?;
        // Kept features centre on x + μ with σ; suppressed ones are exactly μ (σ at its floor).
        let full = (x + &out.mean)?;
        let (centre, std) = match &out.mask {
            Some(m) => {
                let keep = m.ne(0f64)?;
                let floor = out
                    .std
                    .ones_like()?
                    .affine(self.0.config().sgt.std.bounds().0, 0.0)?;
                (
                    keep.where_cond(&full, &out.mean)?,
                    keep.where_cond(&out.std, &floor)?,
                )
            }
            None => (full, out.std),
        };
        Ok(Applied {
            transformed: out.transformed,
            gaussian: Some((centre, std)),
        })
    }
}

/// The trained SGT with its noise multiplied by `factor` around the same centre:
/// `x̃ = c + factor·(x̃_sgt − c)`, `c` the SGT's per-token centre. One trained layer becomes a
/// family of operating points, to trace how far the noise must grow before an attack fails.
pub struct ScaledSgt<'a> {
    sgt: Sgt<'a>,
    factor: f64,
}

impl<'a> ScaledSgt<'a> {
    pub fn new(sgt: Sgt<'a>, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(Error::Input(format!(
                "SGT noise factor {factor} must be finite and positive"
            )));
        }
        Ok(Self { sgt, factor })
    }
}

impl Mechanism for ScaledSgt<'_> {
    fn name(&self) -> String {
        format!("sgt×{}", self.factor)
    }

    fn apply(
        &self,
        x: &Tensor,
        attention: &[u8],
        noise: &[u8],
        rng: &mut NoiseRng,
    ) -> Result<Applied> {
        let a = self.sgt.apply(x, attention, noise, rng)?;
        let Some((centre, std)) = a.gaussian else {
            return Err(Error::Input(
                "the SGT reported no noise distribution".into(),
            ));
        };
        let transformed = (&centre + ((&a.transformed - &centre)? * self.factor)?)?;
        Ok(Applied {
            transformed,
            gaussian: Some((centre, (std * self.factor)?)),
        })
    }
}

/// Input-independent Gaussian noise `x̃ = x + s·r·ε`, `r` the per-feature RMS of the
/// embedding table, on transformed tokens.
pub struct Gaussian {
    pub scale: f64,
    pub table_rms: f64,
}

impl Gaussian {
    pub fn new(scale: f64, table: &Tensor) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::Input(format!(
                "Gaussian baseline scale {scale}: use a positive number"
            )));
        }
        let table_rms = table_rms(table)?;
        Ok(Self { scale, table_rms })
    }

    pub fn sigma(&self) -> f64 {
        self.scale * self.table_rms
    }
}

impl Mechanism for Gaussian {
    fn name(&self) -> String {
        format!("gaussian({})", self.scale)
    }

    fn apply(
        &self,
        x: &Tensor,
        attention: &[u8],
        noise: &[u8],
        rng: &mut NoiseRng,
    ) -> Result<Applied> {
        let sel = selector(x, attention, noise)?;
        let eps = rng.standard_normal(x.dims(), x.device())?;
        let noisy = (x + (eps * self.sigma())?)?;
        let transformed = sel.broadcast_as(x.dims())?.where_cond(&noisy, x)?;
        let std = Tensor::full(self.sigma() as f32, x.dims(), x.device())?;
        Ok(Applied {
            transformed,
            gaussian: Some((x.clone(), std)),
        })
    }
}

/// The metric-DP token mechanism: `η` with density `∝ exp(−ε‖η‖)` (a uniform direction and a
/// `Gamma(d, 1/ε)` radius) is added to the token's embedding and the result snapped to the
/// nearest vocabulary embedding (L2), which is what the server receives.
pub struct MetricDp<'a> {
    pub epsilon: f64,
    table: &'a Tensor,
    index: &'a EmbeddingIndex,
}

impl<'a> MetricDp<'a> {
    pub fn new(epsilon: f64, table: &'a Tensor, index: &'a EmbeddingIndex) -> Result<Self> {
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(Error::Input(format!(
                "metric-DP epsilon {epsilon}: use a positive number"
            )));
        }
        Ok(Self {
            epsilon,
            table,
            index,
        })
    }

    /// ε whose mean noise radius `d/ε` is `r` times the mean embedding norm.
    pub fn epsilon_for_radius(r: f64, table: &Tensor) -> Result<f64> {
        let d = table.dim(1)? as f64;
        let mean_norm = table
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        Ok(d / (r * mean_norm).max(1e-12))
    }
}

impl Mechanism for MetricDp<'_> {
    fn name(&self) -> String {
        format!("metric-dp(ε={:.0})", self.epsilon)
    }

    fn apply(
        &self,
        x: &Tensor,
        attention: &[u8],
        noise: &[u8],
        rng: &mut NoiseRng,
    ) -> Result<Applied> {
        let (_, t, d) = x.dims3()?;
        let sel = selector(x, attention, noise)?;
        let gamma = Gamma::new(d as f64, 1.0 / self.epsilon)
            .map_err(|e| Error::Input(format!("metric-DP radius distribution: {e}")))?;
        let dirs = rng.standard_normal((t, d), x.device())?;
        let dirs = dirs.broadcast_div(&dirs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?;
        let radii: Vec<f32> = (0..t).map(|_| gamma.sample(rng.rng()) as f32).collect();
        let radii = Tensor::from_vec(radii, (t, 1), x.device())?;
        let noisy = (x.squeeze(0)? + dirs.broadcast_mul(&radii)?)?;
        let (_, nearest, _) = self.index.nearest(&noisy)?;
        let ids = Tensor::new(nearest.as_slice(), x.device())?;
        let snapped = self.table.index_select(&ids, 0)?.unsqueeze(0)?;
        let transformed = sel.broadcast_as(x.dims())?.where_cond(&snapped, x)?;
        Ok(Applied {
            transformed,
            gaussian: None,
        })
    }
}
