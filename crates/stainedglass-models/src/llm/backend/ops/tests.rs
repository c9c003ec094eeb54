//! Each fused op against its reference composition: same forward, same input gradients.

use super::*;
use crate::llm::backend::rope_table::RopeTable;
use candle_core::{Device, Var};
use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flat")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}

/// Forward values and the gradient of `sum(y ⊙ r)` w.r.t. every input, fused vs reference.
fn check(
    inputs: &[Vec<usize>],
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
    tol: f32,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| Var::from_tensor(&rand_tensor(s, 10 + i as u64)).expect("var"))
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let yf = fused(&ts).expect("fused");
    let yr = reference(&ts).expect("reference");
    assert_eq!(yf.dims(), yr.dims());
    assert!(
        max_diff(&yf, &yr) < tol,
        "forward differs: {}",
        max_diff(&yf, &yr)
    );
    let r = rand_tensor(yf.dims(), 99);
    let gf = (yf * &r)
        .expect("mul")
        .sum_all()
        .expect("sum")
        .backward()
        .expect("bwd");
    let gr = (yr * &r)
        .expect("mul")
        .sum_all()
        .expect("sum")
        .backward()
        .expect("bwd");
    for (i, v) in vars.iter().enumerate() {
        let a = gf
            .get(v)
            .unwrap_or_else(|| panic!("fused op cut the gradient of input {i}"));
        let b = gr.get(v).expect("reference gradient");
        let d = max_diff(a, b);
        assert!(d < tol, "gradient of input {i} differs by {d}");
    }
}

#[test]
fn rms_norm_matches_reference() {
    let w = rand_tensor(&[48], 1);
    let op = RmsNorm::new(w.clone(), 1e-5).expect("op");
    check(
        &[vec![3, 5, 48]],
        |x| op.forward(&x[0]),
        |x| reference::rms_norm(&x[0], &w, 1e-5),
        1e-4,
    );
}

#[test]
fn rope_matches_reference_and_inverts() {
    let table = Arc::new(RopeTable::new(16, 10_000.0, 64));
    let pos: Vec<u32> = vec![0, 1, 2, 3, 0, 0, 1, 2];
    let op = Rope::new(table.clone(), Arc::new(pos.clone()));
    check(
        &[vec![2, 4, 3, 16]],
        |x| op.forward(&x[0]),
        |x| reference::rope(&x[0], &table, &pos),
        1e-5,
    );
    // Rotations preserve the norm of every head vector.
    let x = rand_tensor(&[2, 4, 3, 16], 5);
    let y = op.forward(&x).expect("rope");
    let nx = x
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let ny = y
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((nx - ny).abs() < 1e-3 * nx);
}

#[test]
fn rope_rejects_positions_beyond_context() {
    let table = Arc::new(RopeTable::new(8, 10_000.0, 4));
    let op = Rope::new(table, Arc::new(vec![0, 1, 2, 9]));
    let err = op.forward(&rand_tensor(&[1, 4, 1, 8], 1)).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
}

#[test]
fn swiglu_matches_reference() {
    check(
        &[vec![2, 3, 2 * 20]],
        |x| SwiGlu::forward(&x[0]),
        |x| reference::swiglu(&x[0]),
        1e-5,
    );
}

#[test]
fn attention_matches_reference_with_padding_and_offset() {
    // batch 2, 5 queries over 7 keys (2 cached), 6 query heads over 2 kv heads; sample 1 has two
    // left-padding keys, so its first queries see nothing.
    let (b, t, s, hq, hkv, d) = (2, 5, 7, 6, 2, 16);
    let mut valid = vec![1u8; b * s];
    valid[s] = 0;
    valid[s + 1] = 0;
    valid[s + 2] = 0;
    let op = Attention {
        key_valid: Arc::new(valid.clone()),
    };
    check(
        &[vec![b, t, hq, d], vec![b, s, hkv, d], vec![b, s, hkv, d]],
        |x| op.forward(&x[0], &x[1], &x[2]),
        |x| reference::attention(&x[0], &x[1], &x[2], &valid),
        1e-4,
    );
}

#[test]
fn frozen_linear_matches_matmul_and_skips_weight_gradient() {
    let w = rand_tensor(&[12, 8], 3);
    let bias = rand_tensor(&[12], 4);
    let lin = Linear::new(w.clone(), Some(bias.clone()));
    check(
        &[vec![2, 3, 8]],
        |x| lin.forward(&x[0]),
        |x| x[0].broadcast_matmul(&w.t()?)?.broadcast_add(&bias),
        1e-5,
    );
}
