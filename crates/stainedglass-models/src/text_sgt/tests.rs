//! The fused training ops of a TransformerCloak against the composed ops they replace, and
//! the bf16 client path against the f32 one.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use stainedglass_core::noise_layer::NoiseLayer;
use stainedglass_core::NoiseRng;

use super::{MaskedFill, Precision, TransformerCloak, TransformerCloakConfig};
use crate::llm::LlamaConfig;
use crate::test_util::rand;

/// Two estimator layers with GQA and a qkv bias, random weights.
fn tiny(composed: bool) -> TransformerCloak {
    tiny_with(composed, None)
}

fn tiny_with(composed: bool, percent_to_mask: Option<f64>) -> TransformerCloak {
    tiny_filled(composed, percent_to_mask, MaskedFill::Mean)
}

fn tiny_filled(composed: bool, percent_to_mask: Option<f64>, fill: MaskedFill) -> TransformerCloak {
    let mut config = TransformerCloakConfig::new(LlamaConfig::tiny_for_tests());
    config.sgt.estimator_layers = 2;
    config.sgt.percent_to_mask = percent_to_mask;
    config.sgt.masked_fill = fill;
    // Not 1, so that a dropped temperature or bound shows in the gradients.
    config.sgt.std =
        stainedglass_core::param::StdParameterization::cloak(1e-4, 2.0, 0.7).expect("std");
    config.sgt.mean_bound = 2.0;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let named: HashMap<String, Tensor> = TransformerCloak::expected_shapes(&config)
        .into_iter()
        .map(|(n, s)| {
            // Norm weights around 1, products small enough to keep activations tame.
            let t = if s.len() == 1 {
                (rand(&s, &mut r, 0.5) + 1.0).expect("norm")
            } else {
                rand(&s, &mut r, 0.3)
            };
            (n, t)
        })
        .collect();
    let mut c = TransformerCloak::from_named(config, &named, &Device::Cpu).expect("cloak");
    c.estimator.composed_layers = composed;
    c
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|a| a.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("max")
}

fn grads_of(g: &candle_core::backprop::GradStore, vars: &[Var]) -> Vec<Tensor> {
    vars.iter()
        .map(|v| {
            g.get(v.as_tensor())
                .expect("every parameter has a gradient")
                .clone()
        })
        .collect()
}

/// Every gradient of `got` within 1e-4 (relative to its scale) of `want`'s, none of them zero.
fn assert_grads_close(got: &[Tensor], want: &[Tensor]) {
    assert_eq!(got.len(), want.len());
    for (i, (a, e)) in got.iter().zip(want).enumerate() {
        assert_eq!(a.dims(), e.dims(), "parameter {i}");
        let scale = max_abs(e);
        assert!(scale > 0.0, "parameter {i}: zero reference gradient");
        let d = max_abs(&(a - e).expect("diff"));
        assert!(
            d < 1e-4 * scale.max(1.0),
            "parameter {i}: gradient differs by {d} (scale {scale})"
        );
    }
}

/// The training path's one op per estimator layer against the per-part ops it replaces:
/// same hidden states and the same gradient for every estimator parameter (norm weights,
/// packed q/k/v and its bias, output, gate/up and down projections), with left padding in
/// one row.
#[test]
fn layer_op_matches_the_composed_ops_in_value_and_every_gradient() {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let (b, t) = (2, 6);
    let x = rand(&[b, t, 32], &mut r, 1.0);
    let w = rand(&[b, t, 32], &mut r, 1.0);
    let mut am = vec![1u8; b * t];
    am[t] = 0;
    am[t + 1] = 0;
    let run = |composed: bool| {
        let c = tiny(composed);
        let h = c.estimator_hidden(&x, &am).expect("hidden");
        let g = (&h * &w)
            .and_then(|l| l.sum_all()?.backward())
            .expect("backward");
        (h, grads_of(&g, &c.estimator_parameters()))
    };
    let (h_op, g_op) = run(false);
    let (h_ref, g_ref) = run(true);
    let d = max_abs(&(&h_op - &h_ref).expect("diff"));
    assert!(d < 1e-4 * max_abs(&h_ref).max(1.0), "hidden differs by {d}");
    assert_eq!(g_op.len(), g_ref.len());
    assert_eq!(g_op.len(), 2 * 7, "two layers of seven tensors each");
    assert_grads_close(&g_op, &g_ref);
}

/// The whole training forward (fused estimator layers, heads and noise combination)
/// against the composed ops: same transformed embeddings, μ, σ and keep mask for the same
/// seed, and the same gradient for every parameter of the layer (heads included), with
/// suppressed features (each fill), an untransformed token and a padded one.
#[test]
fn fused_training_forward_matches_the_composed_ops() {
    for fill in [MaskedFill::Mean, MaskedFill::Noise, MaskedFill::Zero] {
        fused_matches_composed(fill);
    }
}

fn fused_matches_composed(fill: MaskedFill) {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let (b, t) = (2, 5);
    let x = rand(&[b, t, 32], &mut r, 1.0);
    let ws: Vec<Tensor> = (0..3).map(|_| rand(&[b, t, 32], &mut r, 1.0)).collect();
    let mut am = vec![1u8; b * t];
    am[t] = 0;
    let mut nm = vec![1u8; b * t];
    nm[2] = 0;
    let run = |composed: bool| {
        let c = tiny_filled(composed, Some(0.25), fill);
        let mut rng = NoiseRng::seeded(4);
        let o = c
            .forward_masked(&x, Some(&am), Some(&nm), &mut rng)
            .expect("forward");
        // The client's path (no graph, host combination) gives the same values.
        let served = c
            .transform(&x, Some(&am), Some(&nm), &mut NoiseRng::seeded(4))
            .expect("transform");
        let d = max_abs(&(&served.transformed - &o.transformed).expect("diff"));
        assert!(d < 1e-4, "{fill:?}: transform differs from training by {d}");
        let outs = [o.transformed.clone(), o.mean.clone(), o.std.clone()];
        let loss = outs
            .iter()
            .zip(&ws)
            .map(|(o, w)| (o * w).and_then(|p| p.sum_all()))
            .collect::<candle_core::Result<Vec<_>>>()
            .and_then(|l| Tensor::stack(&l, 0)?.sum_all())
            .expect("loss");
        let g = loss.backward().expect("backward");
        (
            outs,
            o.mask.expect("keep mask"),
            grads_of(&g, &c.parameters()),
        )
    };
    let (o_op, m_op, g_op) = run(false);
    let (o_ref, m_ref, g_ref) = run(true);
    // Suppressed features of a transformed token hold the fill.
    let (out, mean, keep) = (
        o_op[0].get(0).and_then(|r| r.get(0)).expect("row"),
        o_op[1].get(0).and_then(|r| r.get(0)).expect("row"),
        m_op.get(0).and_then(|r| r.get(0)).expect("row"),
    );
    let suppressed = |t: &Tensor| -> Vec<f32> {
        let v = t.to_vec1::<f32>().expect("v");
        let k = keep.to_vec1::<f32>().expect("k");
        v.iter()
            .zip(&k)
            .filter(|(_, &k)| k == 0.0)
            .map(|(x, _)| *x)
            .collect()
    };
    let (got, mu) = (suppressed(&out), suppressed(&mean));
    assert!(!got.is_empty());
    match fill {
        MaskedFill::Mean => assert_eq!(got, mu),
        MaskedFill::Zero => assert!(got.iter().all(|&v| v == 0.0), "{got:?}"),
        MaskedFill::Noise => assert!(got.iter().zip(&mu).all(|(a, b)| a != b), "{got:?}"),
    }
    assert_eq!(
        max_abs(&(&m_op - &m_ref).expect("diff")),
        0.0,
        "keep masks differ"
    );
    for (i, (a, e)) in o_op.iter().zip(&o_ref).enumerate() {
        let d = max_abs(&(a - e).expect("diff"));
        assert!(d < 1e-4 * max_abs(e).max(1.0), "output {i} differs by {d}");
    }
    // The untransformed token passes bit-exactly.
    let row = |t: &Tensor| t.get(0).and_then(|r| r.get(2)).expect("row");
    assert_eq!(max_abs(&(row(&o_op[0]) - row(&x)).expect("diff")), 0.0);
    assert_grads_close(&g_op, &g_ref);
}

/// Applying with bf16 products: μ and σ within 1% (relative L2) of the f32 ones but not equal
/// (the bf16 products ran), untransformed tokens still pass bit-exactly, and setting f32 again
/// gives the f32 numbers bit for bit.
#[test]
fn bf16_apply_stays_within_one_percent_of_f32() {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let (b, t) = (2, 20);
    let x = rand(&[b, t, 32], &mut r, 1.0);
    let am = vec![1u8; b * t];
    let mut nm = vec![1u8; b * t];
    nm[3] = 0;
    let mut c = tiny_with(false, Some(0.25));
    let run = |c: &TransformerCloak| {
        c.transform(&x, Some(&am), Some(&nm), &mut NoiseRng::seeded(5))
            .expect("transform")
    };
    let f = run(&c);
    c.set_precision(Precision::Bf16).expect("bf16");
    assert_eq!(c.precision(), Precision::Bf16);
    let h = run(&c);
    let norm = |t: &Tensor| -> f32 {
        t.sqr()
            .and_then(|s| s.sum_all()?.sqrt()?.to_scalar::<f32>())
            .expect("norm")
    };
    for (name, a, e) in [("mean", &h.mean, &f.mean), ("std", &h.std, &f.std)] {
        let rel = norm(&(a - e).expect("diff")) / norm(e);
        assert!(rel > 0.0 && rel < 0.01, "{name}: relative L2 {rel}");
    }
    let row = |t: &Tensor| t.get(0).and_then(|r| r.get(3)).expect("row");
    assert_eq!(
        max_abs(&(row(&h.transformed) - row(&x)).expect("diff")),
        0.0
    );
    c.set_precision(Precision::F32).expect("f32");
    let g = run(&c);
    assert_eq!(
        max_abs(&(&g.transformed - &f.transformed).expect("diff")),
        0.0
    );
}
