//! The `[adapter]` section: the served model's first layers trained together with the SGT
//! (`ServedAdapter`), and its part of a run — its optimizer, checkpoint groups, and the served
//! model written beside the SGT (`served_model/`, a Hugging Face folder that `--model` loads).
//! What it assumes: the provider serves these modified first layers to the SGT's clients.

use crate::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_models::llm::Llama;
use stainedglass_models::text_sgt::ServedAdapter;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a run with an adapter writes the served model.
pub const SERVED_DIR: &str = "served_model";

/// The `[adapter]` section of a text-training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterSection {
    /// How many of the served model's first layers train with the SGT; 0: none (the provider
    /// serves its model unchanged).
    pub layers: usize,
    /// The adapter's AdamW learning rate (same warm-up and decay as the SGT's).
    pub learning_rate: f64,
}

impl Default for AdapterSection {
    fn default() -> Self {
        Self {
            layers: 0,
            learning_rate: 1e-5,
        }
    }
}

impl AdapterSection {
    pub fn enabled(&self) -> bool {
        self.layers > 0
    }

    /// The adapter must stop before the distillation layer (it is part of the student).
    pub fn validate(&self, distillation_layer: Option<usize>) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::Config(format!(
                "adapter.learning_rate {} must be > 0",
                self.learning_rate
            )));
        }
        match distillation_layer {
            Some(k) if k <= self.layers => Err(Error::Config(format!(
                "adapter.layers = {} must stay below loss.distillation_layer_index = {k}",
                self.layers
            ))),
            _ => Ok(()),
        }
    }
}

/// Named tensors, as a checkpoint group holds them.
type Named = HashMap<String, Tensor>;
/// A checkpoint group to write: its name and tensors.
type Group = (&'static str, Vec<(String, Tensor)>);

/// The adapter and its optimizer during a run.
pub(crate) struct AdapterRun {
    pub adapter: ServedAdapter,
    opt: AdamW,
}

impl AdapterRun {
    /// A fresh adapter from `model`, or the checkpoint's `(weights, optimizer)` groups.
    pub fn start(
        a: &AdapterSection,
        model: &Llama,
        resumed: Option<(&Named, &Named)>,
    ) -> Result<Option<Self>> {
        if !a.enabled() {
            return Ok(None);
        }
        let adapter = match resumed {
            Some((w, _)) => ServedAdapter::from_named(model.config(), a.layers, w)?,
            None => ServedAdapter::from_base(model, a.layers)?,
        };
        let mut opt = AdamW::new(adapter.parameters(), AdamWConfig::noise(a.learning_rate))?;
        if let Some((_, o)) = resumed {
            opt.load_state(o)?;
        }
        Ok(Some(Self { adapter, opt }))
    }

    /// Clips the adapter's gradients on their own (their scale is not the SGT's) and steps.
    pub fn step(
        &mut self,
        grads: &mut candle_core::backprop::GradStore,
        lr: f64,
        clip: f64,
        step: u64,
    ) -> Result<()> {
        self.opt.set_learning_rate(lr);
        let norm = self.opt.clip_grad_norm(grads, clip)?;
        if !norm.is_finite() {
            return Err(Error::Diverged {
                step,
                what: "the adapter's gradient norm".into(),
            });
        }
        self.opt.step(grads)?;
        Ok(())
    }

    /// The checkpoint groups `adapter` and `optimizer_adapter`.
    pub fn groups(&self) -> Result<[Group; 2]> {
        Ok([
            ("adapter", self.adapter.named_tensors()),
            ("optimizer_adapter", self.opt.state()?),
        ])
    }

    /// Writes the served model (base with the adapter's layers) as a Hugging Face folder
    /// `dir` (f32, atomic files) and returns `dir`.
    pub fn save_served(&self, model: &Llama, dir: &Path) -> Result<PathBuf> {
        let served = self.adapter.served_model(model)?;
        stainedglass_models::llm::hf::save_hf_folder(&served, dir, 1, candle_core::DType::F32)?;
        Ok(dir.to_path_buf())
    }

    /// The served model as it is now (a copy), for an evaluation; `None` without an adapter.
    pub fn served_of(run: &Option<Self>, model: &Llama) -> Result<Option<Llama>> {
        match run {
            Some(a) => Ok(Some(a.adapter.served_model(model)?)),
            None => Ok(None),
        }
    }
}

/// The served model's checkpoint group names, when the config has an adapter.
pub(crate) fn groups(a: &AdapterSection) -> &'static [&'static str] {
    match a.enabled() {
        true => &["adapter", "optimizer_adapter"],
        false => &[],
    }
}
