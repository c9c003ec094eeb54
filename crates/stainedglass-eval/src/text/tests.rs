//! Sanity checks of the attack suite on a synthetic vocabulary (`docs/spec.md` §9).

use super::info::text_mutual_information;
use super::inverter::{InverterConfig, MlpInverter};
use super::mechanism::{Clean, Gaussian, Mechanism};
use super::observed::{apply_rows, embed_rows, Observed, Recovery};
use super::probe_cache::ProbeCache;
use candle_core::{Device, Tensor};
use stainedglass_core::NoiseRng;
use stainedglass_metrics::index::{EmbeddingIndex, Ranked};
use stainedglass_text::EncodedPrompt;

const V: usize = 64;
const D: usize = 16;

fn table() -> Tensor {
    NoiseRng::seeded(1)
        .standard_normal((V, D), &Device::Cpu)
        .expect("table")
}

fn row(ids: Vec<u32>) -> EncodedPrompt {
    let n = ids.len();
    EncodedPrompt {
        input_ids: ids,
        attention_mask: vec![1; n],
        noise_mask: vec![1; n],
        labels: None,
        loss_mask: None,
    }
}

/// `rows` prompts of `len` tokens drawn from a Zipf-like law (token `v` ∝ 1/(v+1)).
fn zipf_rows(rows: usize, len: usize, seed: u64) -> Vec<EncodedPrompt> {
    let w: Vec<f64> = (0..V).map(|v| 1.0 / (v as f64 + 1.0)).collect();
    let total: f64 = w.iter().sum();
    let mut rng = NoiseRng::seeded(seed);
    (0..rows)
        .map(|_| {
            row((0..len)
                .map(|_| {
                    let mut u = rng.uniform() * total;
                    let mut v = 0;
                    while v + 1 < V && u >= w[v] {
                        u -= w[v];
                        v += 1;
                    }
                    v as u32
                })
                .collect())
        })
        .collect()
}

fn nn_recovery(
    index: &EmbeddingIndex,
    t: &Tensor,
    rows: &[EncodedPrompt],
    mech: &dyn Mechanism,
    seed: u64,
) -> f64 {
    let clean = embed_rows(t, rows).expect("embed");
    let applied = apply_rows(mech, rows, &clean, &mut NoiseRng::seeded(seed)).expect("apply");
    let obs: Vec<Observed> = rows
        .iter()
        .zip(applied)
        .map(|(r, a)| Observed::new(r, a.transformed))
        .collect();
    let guesses: Vec<Ranked> = obs
        .iter()
        .map(|o| index.top_k(&o.selected().expect("sel"), 1).expect("nn").1)
        .collect();
    Recovery::score(&obs, &guesses).top1
}

#[test]
fn clean_embeddings_are_fully_recovered() {
    let t = table();
    let index = EmbeddingIndex::new(&t).expect("index");
    let rows = zipf_rows(4, 32, 2);
    assert_eq!(nn_recovery(&index, &t, &rows, &Clean, 3), 1.0);
}

#[test]
fn recovery_falls_as_the_noise_grows() {
    let t = table();
    let index = EmbeddingIndex::new(&t).expect("index");
    let rows = zipf_rows(20, 50, 4);
    let r: Vec<f64> = [0.1, 0.3, 0.6, 1.2, 3.0]
        .iter()
        .map(|&s| nn_recovery(&index, &t, &rows, &Gaussian::new(s, &t).expect("g"), 5))
        .collect();
    assert!(r[0] > 0.95, "{r:?}");
    assert!(r.windows(2).all(|w| w[1] <= w[0]), "not monotone: {r:?}");
    assert!(r[4] < 0.2, "{r:?}");
}

#[test]
fn mutual_information_spans_zero_to_log_b() {
    let t = table();
    // Every token once: the K components are distinct.
    let rows = vec![row((0..V as u32).collect())];
    let clean = embed_rows(&t, &rows).expect("embed");
    let mi = |scale: f64| {
        let g = Gaussian::new(scale, &t).expect("g");
        let mut rng = NoiseRng::seeded(6);
        let applied = apply_rows(&g, &rows, &clean, &mut rng).expect("apply");
        text_mutual_information(&rows, &clean, &applied, V, V, &mut rng)
            .expect("mi")
            .expect("gaussian")
    };
    let tiny = mi(1e-3);
    assert!(
        (tiny.normalised_by_log_components - 1.0).abs() < 0.02,
        "{tiny:?}"
    );
    let huge = mi(1e3);
    assert!(huge.normalised_by_log_components.abs() < 0.05, "{huge:?}");
    assert!(text_mutual_information(
        &rows,
        &clean,
        &apply_rows(&Clean, &rows, &clean, &mut NoiseRng::seeded(1)).expect("a"),
        V,
        V,
        &mut NoiseRng::seeded(1)
    )
    .expect("ok")
    .is_none());
}

#[test]
fn learned_inverter_beats_nearest_neighbour_on_gaussian_noise() {
    let t = table();
    let index = EmbeddingIndex::new(&t).expect("index");
    let g = Gaussian::new(2.5, &t).expect("g");
    let attacker = zipf_rows(60, 50, 7);
    let held = zipf_rows(20, 50, 8);
    let nn = nn_recovery(&index, &t, &held, &g, 9);
    let cfg = InverterConfig {
        epochs: 8,
        learning_rate: 1e-2,
        hidden: 64,
        batch_tokens: 256,
        ..Default::default()
    };
    let inv = MlpInverter::train(&index, &t, &g, &attacker, &cfg, |_, _| {}).expect("train");
    let clean = embed_rows(&t, &held).expect("embed");
    let applied = apply_rows(&g, &held, &clean, &mut NoiseRng::seeded(9)).expect("apply");
    let obs: Vec<Observed> = held
        .iter()
        .zip(applied)
        .map(|(r, a)| Observed::new(r, a.transformed))
        .collect();
    let learned = Recovery::score(&obs, &inv.guess(&obs, 5).expect("guess"));
    assert!(
        learned.top1 > nn + 0.05,
        "learned {:.3} vs nearest neighbour {nn:.3}",
        learned.top1
    );
    assert!(learned.top5.expect("ranked") >= learned.top1);

    // Kept and restored through a probe cache, the inverter guesses exactly as before; a file
    // whose weights do not fit these settings is not used.
    let dir = tempfile::tempdir().expect("tmp");
    let cache = ProbeCache::new(dir.path());
    cache.store("k", &inv.named()).expect("store");
    let named = cache.load("k", t.device()).expect("load");
    let back = MlpInverter::from_named(&index, &t, &cfg, &named)
        .expect("restore")
        .expect("fits");
    assert_eq!(
        back.guess(&obs, 5).expect("guess"),
        inv.guess(&obs, 5).expect("guess")
    );
    let wider = InverterConfig { hidden: 65, ..cfg };
    assert!(MlpInverter::from_named(&index, &t, &wider, &named)
        .expect("restore")
        .is_none());
    std::fs::write(
        dir.path().join("bad.safetensors"),
        b"not a safetensors file",
    )
    .expect("write");
    assert!(cache.load("bad", t.device()).is_none());
    assert!(cache.load("absent", t.device()).is_none());
}
