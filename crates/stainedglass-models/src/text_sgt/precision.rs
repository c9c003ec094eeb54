//! How a trained TransformerCloak multiplies when it is applied: in f32 (the default: the
//! numbers it was trained and measured with) or in bf16 with f32 accumulation
//! ([`Precision::Bf16`]: the estimator's layers and the two heads rounded to bf16 once, their
//! inputs rounded on each product). bf16 runs the client's products at about twice the f32
//! speed on a CPU with AVX-512 BF16; μ and σ move by a fraction of a percent (the unit test
//! `bf16_apply_stays_within_one_percent_of_f32` bounds it; `sgt bench apply --precision bf16`
//! measures it on a trained artefact). Training always runs in f32.

use std::fmt;
use std::str::FromStr;

use candle_core::Var;

use crate::error::{Error, Result};
use crate::llm::backend::quant::QMatrix;

/// The arithmetic of a trained layer's products when applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 products (the trained numbers).
    #[default]
    F32,
    /// bf16 weights and inputs, f32 accumulation.
    Bf16,
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::Invalid {
                what: format!("precision {s:?}"),
                expected: "f32 or bf16".into(),
            }),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// The mean and ρ heads as one bf16 product (`[mean_w; rho_w]`, `2d × d`) and their biases.
pub(super) struct Bf16Heads {
    w: QMatrix,
    bias: Vec<f32>,
}

impl Bf16Heads {
    pub fn new(mean: (&Var, &Var), rho: (&Var, &Var)) -> Result<Self> {
        let host = |v: &Var| -> Result<Vec<f32>> { Ok(v.as_tensor().flatten_all()?.to_vec1()?) };
        let (d, k) = mean.0.as_tensor().dims2()?;
        let mut w = host(mean.0)?;
        w.extend(host(rho.0)?);
        let mut bias = host(mean.1)?;
        bias.extend(host(rho.1)?);
        if w.len() != 2 * d * k || bias.len() != 2 * d {
            return Err(Error::Shape {
                what: "TransformerCloak heads".into(),
                expected: format!("two {d} × {k} weights and two {d}-long biases"),
                got: vec![w.len(), bias.len()],
            });
        }
        Ok(Self {
            w: QMatrix::bf16_from_f32(&w, 2 * d, k),
            bias,
        })
    }

    /// The heads' pre-activations for `h` (`m × k`): `(mean, ρ)`, each `m × d`.
    pub fn raw(&self, h: &[f32], m: usize) -> (Vec<f32>, Vec<f32>) {
        let n = self.bias.len();
        let d = n / 2;
        let mut both: Vec<f32> = self.bias.iter().copied().cycle().take(m * n).collect();
        self.w.product(h, m, &mut both, true);
        let (mut mean, mut rho) = (Vec::with_capacity(m * d), Vec::with_capacity(m * d));
        for row in both.chunks_exact(n) {
            mean.extend_from_slice(&row[..d]);
            rho.extend_from_slice(&row[d..]);
        }
        (mean, rho)
    }
}
