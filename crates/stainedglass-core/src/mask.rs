//! The percent masker: suppresses the ⌈p·N⌉ features with the largest σ (the least useful ones).
//! The mask is computed detached from the graph; ties are broken by position (earlier first).

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Validates `p ∈ [0, 1]`.
pub fn check_percent(p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::hyper("percent_to_mask", p, "must be in [0, 1]"));
    }
    Ok(())
}

/// Number of features suppressed out of `n` for fraction `p`: ⌈p·n⌉.
pub fn masked_count(p: f64, n: usize) -> usize {
    // Guard against 0.6 * 10 = 6.000000000000001 rounding up to 7.
    let k = (p * n as f64 - 1e-9).ceil();
    (k.max(0.0) as usize).min(n)
}

/// Keep-mask (1 = keep, 0 = suppressed) of `std`'s shape, f32, suppressing the ⌈p·N⌉ largest σ.
pub fn percent_keep_mask(std: &Tensor, p: f64) -> Result<Tensor> {
    check_percent(p)?;
    let values = std
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let k = masked_count(p, values.len());
    let mut order: Vec<usize> = (0..values.len()).collect();
    // Largest σ first; stable sort keeps earlier positions first among equals.
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut keep = vec![1f32; values.len()];
    for &i in &order[..k] {
        keep[i] = 0.0;
    }
    Ok(Tensor::from_vec(keep, std.shape(), std.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn masks_largest_sigma() {
        let s = Tensor::new(&[0.1f32, 0.9, 0.5, 0.7, 0.2], &Device::Cpu).unwrap();
        let m = percent_keep_mask(&s, 0.4)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(m, vec![1.0, 0.0, 1.0, 0.0, 1.0]);
        let m = percent_keep_mask(&s, 0.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(m, vec![1.0; 5]);
        let m = percent_keep_mask(&s, 1.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(m, vec![0.0; 5]);
        assert!(percent_keep_mask(&s, 1.5).is_err());
        assert_eq!(masked_count(0.6, 10), 6);
        assert_eq!(masked_count(0.61, 10), 7);
    }
}
