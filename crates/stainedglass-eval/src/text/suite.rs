//! The text attack suite (`docs/spec.md` §9): every mechanism (clean, the SGT, Gaussian and metric-DP
//! baselines at several strengths) is applied once to the held-out prompts; each gets
//! nearest-neighbour recovery, next-token utility, perplexity and answer accuracy; the SGT and
//! the baselines closest to it in utility also face the learned inverters and BeamClean; every
//! mechanism faces the provider's layer-k activation probe, and the SGT with its noise scaled
//! up faces the learned MLP.

use super::beamclean::{beamclean_guesses, likelihood_guesses, BeamCleanConfig, NoiseModel};
use super::info::{sigma_over_norm, text_mutual_information, Information};
use super::inverter::{InverterConfig, MlpInverter, TransformerInverter};
use super::mechanism::{Clean, Gaussian, Mechanism, MetricDp, ScaledSgt, Sgt};
use super::observed::{apply_rows, embed_rows, Observed, Recovery};
use super::probe::ActivationProbe;
use super::quick::{bucket_positions, quantiles, PositionBucket, Quantiles};
use super::utility::{
    answer_accuracy, next_token_utility, AnswerResult, NextTokenUtility, Question,
};
use crate::Result;
use candle_core::Tensor;
use serde::Serialize;
use stainedglass_core::NoiseRng;
use stainedglass_metrics::index::EmbeddingIndex;
use stainedglass_models::llm::Llama;
use stainedglass_models::text_sgt::TransformerCloak;
use stainedglass_text::{EncodedPrompt, TextTokenizer, TokenizerWrapper};
use std::collections::BTreeMap;

/// Settings of a suite run.
#[derive(Debug, Clone, Serialize)]
pub struct TextSuiteConfig {
    /// `k` of the top-k recoveries.
    pub top_k: usize,
    /// Gaussian baseline scales (σ as a multiple of the embedding table's RMS).
    pub gaussian_scales: Vec<f64>,
    /// Metric-DP baselines, as the mean noise radius over the mean embedding norm.
    pub metric_dp_radii: Vec<f64>,
    /// The SGT with its noise multiplied by each factor (same centres): how much more noise
    /// the learned MLP inverter needs before it fails, and what that costs in utility.
    pub sgt_noise_factors: Vec<f64>,
    pub inverter: InverterConfig,
    pub beamclean: BeamCleanConfig,
    /// Decoder layer whose hidden state the activation probe reads (the provider's attack; the
    /// SGT's distillation layer is the natural choice). `None` skips the probe.
    pub probe_layer: Option<usize>,
    /// Held-out prompts the (slow) beam search decodes.
    pub beamclean_rows: usize,
    /// Mixture components of the MI estimate.
    pub mi_components: usize,
    /// Reply budget per question.
    pub answer_tokens: usize,
    /// Run the learned and BeamClean attacks on the baselines closest to the SGT in utility
    /// (unless nearest neighbour already recovers ≥ 99% of their tokens).
    pub attack_baselines: bool,
    /// Also run the learned MLP inverter on every other baseline point: both baselines as
    /// curves under the strongest attack, for a privacy–utility frontier.
    pub attack_all_baselines: bool,
    pub seed: u64,
}

impl Default for TextSuiteConfig {
    fn default() -> Self {
        Self {
            top_k: 5,
            gaussian_scales: vec![0.25, 0.5, 1.0, 4.0, 16.0],
            metric_dp_radii: vec![2.0, 4.0, 8.0, 16.0, 32.0],
            sgt_noise_factors: vec![2.0, 4.0, 8.0],
            inverter: InverterConfig::default(),
            beamclean: BeamCleanConfig::default(),
            probe_layer: Some(6),
            beamclean_rows: 12,
            mi_components: 512,
            answer_tokens: 24,
            attack_baselines: true,
            attack_all_baselines: false,
            seed: 20_261_129,
        }
    }
}

/// What the suite needs.
pub struct TextSuiteInput<'a> {
    pub model: &'a Llama,
    pub tokenizer: &'a TextTokenizer,
    /// Encodes the questions (chat, generation prompt on).
    pub question_wrapper: &'a TokenizerWrapper,
    pub sgt: &'a TransformerCloak,
    /// The attacker's own text (learned inverters, noise estimate).
    pub attacker_rows: &'a [EncodedPrompt],
    /// Held-out prompts (encoded with labels: replies are the utility targets).
    pub held_out: &'a [EncodedPrompt],
    pub questions: &'a [Question],
}

/// Everything measured for one mechanism.
#[derive(Debug, Clone, Serialize)]
pub struct MechanismReport {
    pub name: String,
    pub kind: String,
    /// Scale (Gaussian), radius ratio (metric-DP).
    pub strength: Option<f64>,
    /// Metric-DP ε.
    pub epsilon: Option<f64>,
    /// Token recovery by attack name.
    pub attacks: BTreeMap<String, Recovery>,
    pub utility: NextTokenUtility,
    pub answers: AnswerResult,
    /// Of the questions the clean model answers right, the fraction this mechanism also does.
    pub answers_retained: f64,
    pub information: Option<Information>,
    pub sigma_over_norm: Option<Quantiles>,
    #[serde(skip)]
    pub sigma_over_norm_values: Vec<f64>,
    pub recovery_by_position: Vec<PositionBucket>,
}

impl MechanismReport {
    /// The highest top-1 recovery over all attacks run, and its attack.
    pub fn strongest(&self) -> (String, f64) {
        self.attacks
            .iter()
            .map(|(k, r)| (k.clone(), r.top1))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or_default()
    }
}

/// The suite's result.
#[derive(Debug, Clone, Serialize)]
pub struct TextSuiteReport {
    pub config: TextSuiteConfig,
    pub held_out_prompts: usize,
    pub attacker_prompts: usize,
    pub questions: usize,
    pub vocab: usize,
    pub mechanisms: Vec<MechanismReport>,
}

/// NN, utility, answers and information for one mechanism.
fn measure(
    input: &TextSuiteInput<'_>,
    index: &EmbeddingIndex,
    cfg: &TextSuiteConfig,
    clean: &[Tensor],
    mech: &dyn Mechanism,
    seed: u64,
) -> Result<(MechanismReport, Vec<Observed>)> {
    let mut rng = NoiseRng::seeded(seed);
    let applied = apply_rows(mech, input.held_out, clean, &mut rng)?;
    let utility = next_token_utility(input.model, input.held_out, clean, &applied)?;
    let information = text_mutual_information(
        input.held_out,
        clean,
        &applied,
        cfg.mi_components,
        index.vocab(),
        &mut rng,
    )?;
    let sig = sigma_over_norm(input.held_out, clean, &applied)?;
    let obs: Vec<Observed> = input
        .held_out
        .iter()
        .zip(applied)
        .map(|(r, a)| Observed::new(r, a.transformed))
        .collect();
    let (mut gc, mut gl) = (Vec::new(), Vec::new());
    for o in &obs {
        if o.positions.is_empty() {
            gc.push(Vec::new());
            gl.push(Vec::new());
            continue;
        }
        let (c, l) = index.top_k(&o.selected()?, cfg.top_k)?;
        gc.push(c);
        gl.push(l);
    }
    let (rc, rl) = (Recovery::score(&obs, &gc), Recovery::score(&obs, &gl));
    let by_pos: Vec<(usize, bool, bool)> = rl
        .hits
        .iter()
        .zip(&rc.hits)
        .map(|(l, c)| (l.0, l.1, c.1))
        .collect();
    let answers = answer_accuracy(
        input.model,
        input.question_wrapper,
        input.tokenizer,
        input.questions,
        mech,
        &mut rng,
        cfg.answer_tokens,
    )?;
    let mut attacks = BTreeMap::new();
    attacks.insert("nearest_neighbour_cosine".to_string(), rc);
    attacks.insert("nearest_neighbour_l2".to_string(), rl);
    Ok((
        MechanismReport {
            name: mech.name(),
            kind: String::new(),
            strength: None,
            epsilon: None,
            attacks,
            utility,
            answers,
            answers_retained: 0.0,
            information,
            sigma_over_norm: (!sig.is_empty()).then(|| quantiles(&sig)),
            sigma_over_norm_values: sig,
            recovery_by_position: bucket_positions(&by_pos, 16),
        },
        obs,
    ))
}

/// The learned inverters, the noise-aware nearest neighbour and BeamClean against `mech`; with
/// `mlp_only`, the learned MLP alone (the cheapest of the strong attacks).
#[allow(clippy::too_many_arguments)]
fn strong_attacks(
    input: &TextSuiteInput<'_>,
    index: &EmbeddingIndex,
    cfg: &TextSuiteConfig,
    mech: &dyn Mechanism,
    obs: &[Observed],
    report: &mut MechanismReport,
    mlp_only: bool,
    log: &mut dyn FnMut(String),
) -> Result<()> {
    let name = mech.name();
    let k = cfg.top_k;
    let mlp = MlpInverter::train(
        index,
        input.model.embedding_table(),
        mech,
        input.attacker_rows,
        &cfg.inverter,
        |e, l| log(format!("  {name}: MLP inverter epoch {e} loss {l:.3}")),
    )?;
    report.attacks.insert(
        "learned_mlp".into(),
        Recovery::score(obs, &mlp.guess(obs, k)?),
    );
    drop(mlp);
    if mlp_only {
        return Ok(());
    }
    let tf = TransformerInverter::train(
        index,
        input.model,
        mech,
        input.attacker_rows,
        &cfg.inverter,
        |e, l| {
            log(format!(
                "  {name}: transformer inverter epoch {e} loss {l:.3}"
            ))
        },
    )?;
    report.attacks.insert(
        "learned_transformer".into(),
        Recovery::score(obs, &tf.guess(obs, k)?),
    );
    drop(tf);
    let mut rng = NoiseRng::seeded(cfg.seed ^ 0xBEA7);
    let noise = NoiseModel::estimate(input.model, mech, input.attacker_rows, &mut rng)?;
    report.attacks.insert(
        "noise_aware_nearest_neighbour".into(),
        Recovery::score(obs, &likelihood_guesses(&noise, obs, k)?),
    );
    let n = cfg.beamclean_rows.min(obs.len());
    let g = beamclean_guesses(input.model, index, &noise, &obs[..n], &cfg.beamclean, |i| {
        log(format!("  {name}: BeamClean {i}/{n} prompts"))
    })?;
    report
        .attacks
        .insert("beamclean".into(), Recovery::score(&obs[..n], &g));
    Ok(())
}

/// One mechanism under evaluation: kind, strength, ε and its seed offset.
struct Entry<'m> {
    mech: Box<dyn Mechanism + 'm>,
    kind: &'static str,
    strength: Option<f64>,
    epsilon: Option<f64>,
    seed: u64,
}

impl<'m> Entry<'m> {
    fn new(
        mech: Box<dyn Mechanism + 'm>,
        kind: &'static str,
        strength: Option<f64>,
        epsilon: Option<f64>,
        seed: u64,
    ) -> Self {
        Self {
            mech,
            kind,
            strength,
            epsilon,
            seed,
        }
    }
}

/// The clean embeddings, the SGT, and the configured baselines (Gaussian, metric-DP, the SGT
/// with its noise scaled), in report order.
fn mechanisms<'m>(
    input: &TextSuiteInput<'m>,
    cfg: &TextSuiteConfig,
    index: &'m EmbeddingIndex,
) -> Result<Vec<Entry<'m>>> {
    let table = input.model.embedding_table();
    let mut entries = vec![
        Entry::new(Box::new(Clean), "clean", None, None, 0),
        Entry::new(Box::new(Sgt(input.sgt)), "sgt", None, None, 1),
    ];
    for (i, &s) in cfg.gaussian_scales.iter().enumerate() {
        let g = Gaussian::new(s, table)?;
        entries.push(Entry::new(
            Box::new(g),
            "gaussian",
            Some(s),
            None,
            10 + i as u64,
        ));
    }
    for (i, &r) in cfg.metric_dp_radii.iter().enumerate() {
        let m = MetricDp::new(MetricDp::epsilon_for_radius(r, table)?, table, index)?;
        let eps = Some(m.epsilon);
        entries.push(Entry::new(
            Box::new(m),
            "metric-dp",
            Some(r),
            eps,
            20 + i as u64,
        ));
    }
    for (i, &f) in cfg.sgt_noise_factors.iter().enumerate() {
        let m = ScaledSgt::new(Sgt(input.sgt), f)?;
        let seed = 30 + i as u64;
        entries.push(Entry::new(Box::new(m), "sgt-scaled", Some(f), None, seed));
    }
    Ok(entries)
}

/// Which reports get the learned attacks (`true`: the MLP inverter only): the SGT; with
/// `attack_baselines`, the baseline of each kind closest to it in utility (unless nearest
/// neighbour already inverts it fully: nothing left to find); and every scaled SGT, and with
/// `attack_all_baselines` every other baseline point.
fn attack_targets(
    cfg: &TextSuiteConfig,
    reports: &[MechanismReport],
    entries: &[Entry],
) -> Vec<(usize, bool)> {
    let mut targets = vec![1];
    if cfg.attack_baselines {
        let agreement = reports[1].utility.agreement;
        for kind in ["gaussian", "metric-dp"] {
            let closest = (0..reports.len())
                .filter(|&i| reports[i].kind == kind)
                .min_by(|&a, &b| {
                    (reports[a].utility.agreement - agreement)
                        .abs()
                        .total_cmp(&(reports[b].utility.agreement - agreement).abs())
                })
                .filter(|&i| reports[i].attacks["nearest_neighbour_l2"].top1 < 0.99);
            targets.extend(closest);
        }
    }
    let curves = |i: &usize| {
        let kind = entries[*i].kind;
        kind == "sgt-scaled"
            || (cfg.attack_all_baselines
                && (kind == "gaussian" || kind == "metric-dp")
                && !targets.contains(i))
    };
    let mlp_only: Vec<usize> = (0..entries.len()).filter(curves).collect();
    targets
        .into_iter()
        .map(|i| (i, false))
        .chain(mlp_only.into_iter().map(|i| (i, true)))
        .collect()
}

/// Each report's share of the questions the clean model answers right that it still answers
/// right.
fn set_answers_retained(reports: &mut [MechanismReport]) {
    let clean_right = reports[0].answers.correct.clone();
    let right = clean_right.iter().filter(|&&c| c).count();
    for r in reports {
        let kept = r
            .answers
            .correct
            .iter()
            .zip(&clean_right)
            .filter(|(a, c)| **a && **c)
            .count();
        r.answers_retained = if right == 0 {
            0.0
        } else {
            kept as f64 / right as f64
        };
    }
}

/// Runs the whole suite. `log` receives progress lines.
pub fn run_text_suite(
    input: &TextSuiteInput<'_>,
    cfg: &TextSuiteConfig,
    log: &mut dyn FnMut(String),
) -> Result<TextSuiteReport> {
    let table = input.model.embedding_table();
    let index = EmbeddingIndex::new(table)?;
    let clean = embed_rows(table, input.held_out)?;
    let entries = mechanisms(input, cfg, &index)?;
    let mut reports = Vec::with_capacity(entries.len());
    let mut observed = Vec::with_capacity(entries.len());
    for e in &entries {
        log(format!("measuring {}", e.mech.name()));
        let seed = cfg.seed.wrapping_add(e.seed);
        let (mut r, obs) = measure(input, &index, cfg, &clean, e.mech.as_ref(), seed)?;
        r.kind = e.kind.into();
        r.strength = e.strength;
        r.epsilon = e.epsilon;
        reports.push(r);
        observed.push(obs);
    }
    if let Some(layer) = cfg.probe_layer {
        log(format!(
            "training the layer-{layer} activation probe on clean text"
        ));
        let probe = ActivationProbe::train(
            &index,
            input.model,
            layer,
            input.attacker_rows,
            &cfg.inverter,
            |e, l| log(format!("  activation probe epoch {e} loss {l:.3}")),
        )?;
        for (r, obs) in reports.iter_mut().zip(&observed) {
            let g = probe.guess(obs, cfg.top_k)?;
            r.attacks
                .insert("activation_probe".into(), Recovery::score(obs, &g));
        }
    }
    for (i, mlp_only) in attack_targets(cfg, &reports, &entries) {
        log(format!("attacking {}", reports[i].name));
        let mech = entries[i].mech.as_ref();
        let (obs, report) = (&observed[i], &mut reports[i]);
        strong_attacks(input, &index, cfg, mech, obs, report, mlp_only, log)?;
    }
    set_answers_retained(&mut reports);
    Ok(TextSuiteReport {
        config: cfg.clone(),
        held_out_prompts: input.held_out.len(),
        attacker_prompts: input.attacker_rows.len(),
        questions: input.questions.len(),
        vocab: index.vocab(),
        mechanisms: reports,
    })
}
