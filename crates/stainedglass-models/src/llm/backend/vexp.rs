//! Row loops of SwiGLU and softmax on the branch-free exponential of
//! `stainedglass_core::fastmath`, compiled for AVX2+FMA when the CPU has it.

use stainedglass_core::fastmath::exp;
use stainedglass_core::simd_dispatch;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

simd_dispatch!(swiglu_row(gate: &[f32], up: &[f32], y: &mut [f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(gate).zip(up) {
        *y = g * sigmoid(g) * u;
    }
});

simd_dispatch!(swiglu_bwd_row(gate: &[f32], up: &[f32], g: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    for ((((dg, du), &x), &u), &gr) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(g) {
        let s = sigmoid(x);
        *du = gr * x * s;
        *dg = gr * u * s * (1.0 + x * (1.0 - s));
    }
});

simd_dispatch!(softmax_row(row: &mut [f32], valid: &[u8], m: f32, out_sum: &mut f32) {
    // Masked keys: exp of a finite score (clamped, so never infinite) times 0.
    let mut lanes = [0f32; 8];
    let mut rc = row.chunks_exact_mut(8);
    let mut vc = valid.chunks_exact(8);
    for (xs, vs) in (&mut rc).zip(&mut vc) {
        for i in 0..8 {
            let e = exp(xs[i] - m) * f32::from(vs[i] != 0);
            xs[i] = e;
            lanes[i] += e;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for (x, &v) in rc.into_remainder().iter_mut().zip(vc.remainder()) {
        let e = exp(*x - m) * f32::from(v != 0);
        *x = e;
        sum += e;
    }
    *out_sum = sum;
});

simd_dispatch!(max_valid(row: &[f32], valid: &[u8], out_max: &mut f32) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let (rc, vc) = (row.chunks_exact(8), valid.chunks_exact(8));
    let (rr, vr) = (rc.remainder(), vc.remainder());
    for (xs, vs) in rc.zip(vc) {
        for i in 0..8 {
            let x = if vs[i] != 0 { xs[i] } else { f32::NEG_INFINITY };
            lanes[i] = lanes[i].max(x);
        }
    }
    let mut m = lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for (&x, &v) in rr.iter().zip(vr) {
        if v != 0 {
            m = m.max(x);
        }
    }
    *out_max = m;
});

simd_dispatch!(scale_row(row: &mut [f32], by: f32) {
    for x in row.iter_mut() {
        *x *= by;
    }
});

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut m = 0.0;
        max_valid(&gate, &valid, &mut m);
        let want_max = (0..37)
            .filter(|i| i % 3 != 0)
            .map(|i| gate[i])
            .fold(f32::MIN, f32::max);
        assert_eq!(m, want_max);
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
