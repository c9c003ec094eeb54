//! PSNR and SSIM for images in `[0, 1]` (data range 1).
//! SSIM follows Wang et al. (2004) with scikit-image's defaults: 7×7 uniform window, K1 = 0.01,
//! K2 = 0.03, sample covariance; the mean is taken over windows fully inside the image (the same
//! border cropping scikit-image applies), per channel, then averaged.

const K1: f64 = 0.01;
const K2: f64 = 0.03;
const WIN: usize = 7;

/// PSNR in dB between two images of equal length (values in [0, 1]); capped at 100 dB.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    if mse <= 1e-10 {
        100.0
    } else {
        -10.0 * mse.log10()
    }
}

/// Mean SSIM between two `[C, H, W]` images given as flat slices.
pub fn ssim(a: &[f32], b: &[f32], shape: [usize; 3]) -> f64 {
    let [c, h, w] = shape;
    let win = WIN.min(h).min(w);
    let n = (win * win) as f64;
    let cov_norm = n / (n - 1.0).max(1.0);
    let (c1, c2) = (K1 * K1, K2 * K2);
    let mut total = 0.0;
    let mut count = 0usize;
    for ch in 0..c {
        let off = ch * h * w;
        for i in 0..=h - win {
            for j in 0..=w - win {
                let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for di in 0..win {
                    for dj in 0..win {
                        let k = off + (i + di) * w + j + dj;
                        let (x, y) = (a[k] as f64, b[k] as f64);
                        sa += x;
                        sb += y;
                        saa += x * x;
                        sbb += y * y;
                        sab += x * y;
                    }
                }
                let (ma, mb) = (sa / n, sb / n);
                let va = (saa / n - ma * ma) * cov_norm;
                let vb = (sbb / n - mb * mb) * cov_norm;
                let cab = (sab / n - ma * mb) * cov_norm;
                total += ((2.0 * ma * mb + c1) * (2.0 * cab + c2))
                    / ((ma * ma + mb * mb + c1) * (va + vb + c2));
                count += 1;
            }
        }
    }
    total / count.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_are_perfect_and_noise_lowers_scores() {
        let a: Vec<f32> = (0..784).map(|i| ((i * 37) % 255) as f32 / 255.0).collect();
        assert!((ssim(&a, &a, [1, 28, 28]) - 1.0).abs() < 1e-9);
        assert_eq!(psnr(&a, &a), 100.0);
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, &x)| (x + if i % 2 == 0 { 0.1 } else { -0.1 }).clamp(0.0, 1.0))
            .collect();
        let s = ssim(&a, &b, [1, 28, 28]);
        assert!(s < 0.99 && s > 0.0, "{s}");
        assert!((psnr(&a, &b) - 20.0).abs() < 1.0);
        let inv: Vec<f32> = a.iter().map(|x| 1.0 - x).collect();
        assert!(ssim(&a, &inv, [1, 28, 28]) < 0.0);
    }
}
