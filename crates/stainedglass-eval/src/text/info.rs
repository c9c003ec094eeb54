//! Information measures of a Gaussian mechanism on text (`docs/spec.md` §5.3): the Monte-Carlo mutual
//! information between tokens and what the server sees, and σ/|x| per transformed token.

use super::mechanism::Applied;
use super::observed::Observed;
use crate::{Error, Result};
use candle_core::{Tensor, D};
use serde::Serialize;
use stainedglass_core::info::mutual_information;
use stainedglass_core::NoiseRng;
use stainedglass_text::EncodedPrompt;

/// The MI estimate over a sample of transformed tokens.
#[derive(Debug, Clone, Serialize)]
pub struct Information {
    /// `I(X; X̃)` in nats, mixture of `components` token occurrences.
    pub mutual_information_nats: f64,
    pub components: usize,
    /// `I / log K` (1 = the K tokens are perfectly distinguishable).
    pub normalised_by_log_components: f64,
    /// `I / log |V|` (`docs/spec.md` §5.3); bounded by `log K / log |V|`.
    pub normalised_by_log_vocab: f64,
}

/// `(centre, σ, x)` rows `(n, d)` of the transformed tokens of every row.
fn gather(
    rows: &[EncodedPrompt],
    clean: &[Tensor],
    applied: &[Applied],
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let (mut c, mut s, mut x) = (Vec::new(), Vec::new(), Vec::new());
    for ((r, xc), a) in rows.iter().zip(clean).zip(applied) {
        let Some((centre, std)) = &a.gaussian else {
            return Ok(None);
        };
        let o = Observed::new(r, centre.clone());
        if o.positions.is_empty() {
            continue;
        }
        c.push(o.selected()?);
        s.push(Observed::new(r, std.clone()).selected()?);
        x.push(Observed::new(r, xc.clone()).selected()?);
    }
    if c.is_empty() {
        return Err(Error::Input("no transformed tokens to measure".into()));
    }
    Ok(Some((
        Tensor::cat(&c, 0)?,
        Tensor::cat(&s, 0)?,
        Tensor::cat(&x, 0)?,
    )))
}

/// Monte-Carlo MI over the first `components` transformed tokens, with fresh samples
/// `x̃ = centre + σ·ε` from each token's own Gaussian. `None` for a non-Gaussian mechanism.
pub fn text_mutual_information(
    rows: &[EncodedPrompt],
    clean: &[Tensor],
    applied: &[Applied],
    components: usize,
    vocab: usize,
    rng: &mut NoiseRng,
) -> Result<Option<Information>> {
    let Some((c, s, _)) = gather(rows, clean, applied)? else {
        return Ok(None);
    };
    let k = components.clamp(2, c.dim(0)?.max(2)).min(c.dim(0)?);
    if k < 2 {
        return Err(Error::Input(
            "the MI estimate needs at least 2 transformed tokens".into(),
        ));
    }
    let (c, s) = (c.narrow(0, 0, k)?, s.narrow(0, 0, k)?);
    let xt = (&c + (rng.standard_normal(c.dims(), c.device())? * &s)?)?;
    let i = mutual_information(&c, &xt, &c.zeros_like()?, &s, None, rng)?;
    Ok(Some(Information {
        mutual_information_nats: i,
        components: k,
        normalised_by_log_components: i / (k as f64).ln(),
        normalised_by_log_vocab: i / (vocab.max(2) as f64).ln(),
    }))
}

/// `‖σ_t‖ / ‖x_t‖` of every transformed token (Gaussian mechanisms; empty otherwise).
pub fn sigma_over_norm(
    rows: &[EncodedPrompt],
    clean: &[Tensor],
    applied: &[Applied],
) -> Result<Vec<f64>> {
    let Some((_, s, x)) = gather(rows, clean, applied)? else {
        return Ok(Vec::new());
    };
    let norm =
        |t: &Tensor| -> Result<Vec<f32>> { Ok(t.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1::<f32>()?) };
    Ok(norm(&s)?
        .iter()
        .zip(norm(&x)?)
        .map(|(a, b)| f64::from(*a) / f64::from(b).max(1e-12))
        .collect())
}
