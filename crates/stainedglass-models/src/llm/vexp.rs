//! A branch-free `f32` exponential, so loops over rows vectorize (libm's `expf` is a call per
//! element: 5% of an SGT training step went there), and the row loops of SwiGLU and softmax
//! compiled for AVX2+FMA when the CPU has it (checked at run time), portable otherwise.
//!
//! Written here rather than taken from a crate: the SIMD math crates need nightly or pull in a
//! whole vector type system for one function of 20 lines.

/// `eˣ` with the Cephes `expf` polynomial (relative error ≤ 2 ulp). Inputs are clamped to
/// `[-87.33, 88]`: below, the result is the smallest normal `f32` (≈ 1.2e-38) instead of a
/// subnormal or 0; above, ≈ 1.65e38 instead of infinity. NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5·2²³: adding it rounds to an integer in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 0.166_666_65)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    f32::from_bits(((ni + 127) << 23) as u32) * p
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Runs `$body` compiled for AVX2+FMA when available, else the portable build of the same code.
macro_rules! dispatch {
    ($name:ident ( $($arg:ident : $ty:ty),* ) $body:block) => {
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn portable($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) { portable($($arg),*) }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `fast` is compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}

dispatch!(swiglu_row(gate: &[f32], up: &[f32], y: &mut [f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
        *y = g * sigmoid(g) * u;
    }
});

dispatch!(swiglu_bwd_row(gate: &[f32], up: &[f32], g: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    for ((((dg, du), &x), &u), &gr) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(g) {
        let s = sigmoid(x);
        *du = gr * x * s;
        *dg = gr * u * s * (1.0 + x * (1.0 - s));
    }
});

dispatch!(softmax_row(row: &mut [f32], valid: &[u8], m: f32, out_sum: &mut f32) {
    let mut sum = 0f32;
    for (x, &v) in row.iter_mut().zip(valid) {
        let e = if v != 0 { exp(*x - m) } else { 0.0 };
        *x = e;
        sum += e;
    }
    *out_sum = sum;
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_clamps() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5 * f32::EPSILON, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 2e-38);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn rows_match_scalar_formulas() {
        let gate: Vec<f32> = (0..37).map(|i| i as f32 * 0.7 - 12.0).collect();
        let up: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.05).collect();
        let mut y = vec![0f32; 37];
        swiglu_row(&gate, &up, &mut y);
        for k in 0..37 {
            let want = gate[k] / (1.0 + (-gate[k]).exp()) * up[k];
            assert!((y[k] - want).abs() <= 1e-6 * want.abs().max(1.0), "{k}");
        }
        let mut row = gate.clone();
        let valid: Vec<u8> = (0..37).map(|i| u8::from(i % 3 != 0)).collect();
        let mut sum = 0.0;
        softmax_row(&mut row, &valid, 13.2, &mut sum);
        let want: f32 = (0..37)
            .filter(|i| i % 3 != 0)
            .map(|i| (gate[i] - 13.2).exp())
            .sum();
        assert!((sum - want).abs() < 1e-6 * want);
        assert!(row.iter().step_by(3).all(|&x| x == 0.0));
    }
}
