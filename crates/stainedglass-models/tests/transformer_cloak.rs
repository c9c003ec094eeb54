//! TransformerCloak and the noise-masked noisy model on the bundled SmolLM2.

use candle_core::{DType, Device, Tensor};
use stainedglass_core::loss::{distillation_loss_factory, DistillationConfig, DistillationInputs};
use stainedglass_core::param::StdParameterization;
use stainedglass_core::{Mode, NoiseLayer, NoiseRng};
use stainedglass_models::llm::{Llama, Stop};
use stainedglass_models::text_sgt::{
    NoiseMaskedNoisyTransformerModel, TransformerCloak, TransformerCloakConfig,
};
use std::sync::OnceLock;

fn model() -> &'static Llama {
    static M: OnceLock<Llama> = OnceLock::new();
    M.get_or_init(|| {
        let _ = stainedglass_models::llm::configure_blas(stainedglass_models::llm::BlasOptions {
            assets: Some(stainedglass_test_support::assets()),
            ..Default::default()
        });
        let p = stainedglass_test_support::smollm2_gguf();
        Llama::load(&p, &Device::Cpu).expect("load")
    })
}

fn cloak(percent: Option<f64>) -> TransformerCloak {
    let mut c = TransformerCloakConfig::new(model().config().clone());
    c.sgt.percent_to_mask = percent;
    TransformerCloak::from_base(c, model()).expect("cloak")
}

const IDS: [u32; 10] = [19556, 905, 17, 378, 713, 216, 34, 32, 34, 36];

fn ids() -> Tensor {
    Tensor::new(&IDS, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids")
}

fn vec3(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("vec")
}

#[test]
fn zero_noise_mask_is_bit_exact_and_seeds_reproduce() {
    let c = cloak(None);
    let x = model().embed(&ids()).expect("embed");
    let zeros = vec![0u8; IDS.len()];
    let out = c
        .forward_masked(&x, None, Some(&zeros), &mut NoiseRng::from_entropy())
        .expect("fwd");
    assert_eq!(vec3(&out.transformed), vec3(&x));
    // Some tokens transformed: the others are untouched, bit for bit.
    let mut nm = vec![1u8; IDS.len()];
    nm[0] = 0;
    nm[5] = 0;
    let a = c
        .forward_masked(&x, None, Some(&nm), &mut NoiseRng::seeded(7))
        .expect("a");
    let b = c
        .forward_masked(&x, None, Some(&nm), &mut NoiseRng::seeded(7))
        .expect("b");
    assert_eq!(vec3(&a.transformed), vec3(&b.transformed));
    let (xa, xv) = (vec3(&a.transformed), vec3(&x));
    let d = 576;
    assert_eq!(xa[..d], xv[..d]);
    assert_eq!(xa[5 * d..6 * d], xv[5 * d..6 * d]);
    assert_ne!(xa[d..2 * d], xv[d..2 * d]);
    let u1 = c
        .forward_masked(&x, None, Some(&nm), &mut NoiseRng::from_entropy())
        .expect("u1");
    let u2 = c
        .forward_masked(&x, None, Some(&nm), &mut NoiseRng::from_entropy())
        .expect("u2");
    assert_ne!(vec3(&u1.transformed), vec3(&u2.transformed));
}

#[test]
fn initial_transform_is_near_identity_for_the_loss() {
    // σ starts near its minimum and μ at 0: the distillation term is ~0 and L_sim ~1.
    let c = cloak(None);
    let m = NoiseMaskedNoisyTransformerModel::new(model(), &c);
    let am = vec![1u8; IDS.len()];
    let mut rng = NoiseRng::seeded(1);
    let clean = m
        .forward(&ids(), &am, &am, Mode::Clean, Stop::AtLayer(6), &mut rng)
        .expect("c");
    let tr = m
        .forward(
            &ids(),
            &am,
            &am,
            Mode::Transformed,
            Stop::AtLayer(6),
            &mut rng,
        )
        .expect("t");
    let noise = tr.noise.as_ref().expect("noise");
    let mask = Tensor::ones((1, IDS.len()), DType::F32, &Device::Cpu).expect("ones");
    let loss = distillation_loss_factory(DistillationConfig {
        distillation_layer_index: Some(6),
        ..Default::default()
    })
    .expect("loss");
    let r = loss
        .compute(&DistillationInputs {
            clean: &clean.output,
            transformed: &tr.output,
            loss_mask: &mask,
            noise_mask: &mask,
            input_embeds: &tr.input_embeds,
            transformed_embeds: &noise.transformed,
            std: &noise.std,
            keep_mask: None,
        })
        .expect("compute");
    let get = |n: &str| r.components.iter().find(|(k, _)| *k == n).expect(n).1;
    assert!(
        get("distillation_cosine_distance") < 1e-3,
        "{:?}",
        r.components
    );
    assert!((get("input_embedding_similarity") - 1.0).abs() < 1e-3);
    // Gradients reach every SGT parameter and nothing of the frozen base.
    let g = r.loss.backward().expect("backward");
    for (i, p) in c.parameters().iter().enumerate() {
        assert!(g.get(p).is_some(), "SGT parameter {i} got no gradient");
    }
    assert!(
        g.get(model().embedding_table()).is_none(),
        "the base embedding table got a gradient"
    );
    let rho_b = &c.parameters()[c.parameters().len() - 1];
    let gn = g
        .get(rho_b)
        .expect("rho bias")
        .abs()
        .and_then(|t| t.sum_all())
        .and_then(|t| t.to_scalar::<f32>())
        .expect("norm");
    assert!(gn > 0.0, "the ρ head gets a nonzero gradient");
}

#[test]
fn the_transform_is_causal_and_masking_replaces_by_the_mean() {
    let c = cloak(Some(0.5));
    let x = model().embed(&ids()).expect("embed");
    let mut ids2 = IDS;
    ids2[7] = 1234;
    let x2 = model()
        .embed(
            &Tensor::new(&ids2, &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .expect("ids"),
        )
        .expect("embed");
    let am = vec![1u8; IDS.len()];
    let (m1, s1) = c.statistics(&x, &am).expect("stats");
    let (m2, s2) = c.statistics(&x2, &am).expect("stats");
    let d = 576;
    assert_eq!(
        vec3(&m1)[..7 * d],
        vec3(&m2)[..7 * d],
        "μ of tokens before 7 changed"
    );
    assert_eq!(vec3(&s1)[..7 * d], vec3(&s2)[..7 * d]);
    let out = c
        .forward_masked(&x, None, None, &mut NoiseRng::seeded(3))
        .expect("fwd");
    let keep = vec3(out.mask.as_ref().expect("mask"));
    let (tr, mu) = (vec3(&out.transformed), vec3(&out.mean));
    let suppressed: Vec<usize> = (0..keep.len()).filter(|&i| keep[i] == 0.0).collect();
    assert_eq!(suppressed.len(), IDS.len() * d / 2);
    assert!(suppressed.iter().all(|&i| tr[i] == mu[i]));
}

#[test]
fn bad_configs_are_rejected() {
    let mut c = TransformerCloakConfig::new(model().config().clone());
    c.sgt.estimator_layers = 0;
    assert!(TransformerCloak::from_base(c.clone(), model()).is_err());
    c.sgt.estimator_layers = 1;
    c.sgt.std = StdParameterization::Cloak {
        min: 2.0,
        max: 1.0,
        shallow: 1.0,
    };
    assert!(TransformerCloak::from_base(c.clone(), model()).is_err());
    c.sgt.std = StdParameterization::default();
    c.sgt.percent_to_mask = Some(1.5);
    assert!(TransformerCloak::from_base(c, model()).is_err());
}

#[test]
fn inference_transform_matches_the_training_forward() {
    // `transform` (no graph, BLAS-backed products) gives the training forward's values: same
    // noise for the same seed, same suppressed features, products equal to float rounding.
    let c = cloak(Some(0.5));
    let x = model().embed(&ids()).expect("embed");
    let nm: Vec<u8> = (0..IDS.len()).map(|i| u8::from(i % 3 != 0)).collect();
    let a = c
        .forward_masked(&x, None, Some(&nm), &mut NoiseRng::seeded(11))
        .expect("train");
    let b = c
        .transform(&x, None, Some(&nm), &mut NoiseRng::seeded(11))
        .expect("infer");
    assert!(!b.transformed.track_op(), "no autograd graph at inference");
    let (va, vb) = (vec3(&a.transformed), vec3(&b.transformed));
    let worst = va
        .iter()
        .zip(&vb)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "max difference {worst}");
    assert_eq!(
        vec3(&a.mask.expect("mask")),
        vec3(&b.mask.expect("mask")),
        "same suppressed features"
    );
}
