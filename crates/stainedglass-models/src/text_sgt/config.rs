//! The TransformerCloak's hyper-parameters: [`CloakSettings`] is the `[sgt]` section of a
//! training config (`configs/*.toml`) and, beside the base model's architecture, the layer
//! config an artefact stores ([`TransformerCloakConfig`]). Both are checked when they are read:
//! a value that deserializes is valid.

use serde::{Deserialize, Serialize};
use stainedglass_core::mask::check_percent;
use stainedglass_core::param::{
    BoundedMean, StdParameterization, DEFAULT_RHOS_INIT, DEFAULT_SCALE, DEFAULT_SHALLOW,
};

use crate::error::{Error, Result};
use crate::llm::LlamaConfig;

/// The SGT's own hyper-parameters (`docs/spec.md` §3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SettingsWire")]
pub struct CloakSettings {
    /// Number of estimator decoder layers (`L_est`), initialised from the base model's first.
    pub estimator_layers: usize,
    /// How ρ maps to σ, with σ's bounds (the same type as the image noise layers').
    pub std: StdParameterization,
    /// Initial bias of the ρ head (σ starts near its lower bound).
    pub rhos_init: f64,
    /// Bound `b` of the mean `μ = b·tanh(r / b)`.
    pub mean_bound: f64,
    /// Fraction of each transformed token's features suppressed (largest σ first).
    pub percent_to_mask: Option<f64>,
    /// What a suppressed feature carries (default: μ, as the original).
    #[serde(skip_serializing_if = "MaskedFill::is_mean")]
    pub masked_fill: MaskedFill,
}

/// The value of a suppressed feature (`percent_to_mask`). The original sends μ(x) there, and
/// μ is a function of the token: `docs/eval/` found it a channel the learned inverter reads.
/// The other fills carry no input value in those features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskedFill {
    /// μ(x) (the original's choice).
    #[default]
    Mean,
    /// σ(x)·ε: fresh noise at that feature's scale, no mean.
    Noise,
    /// 0.
    Zero,
}

impl MaskedFill {
    pub fn is_mean(&self) -> bool {
        *self == Self::Mean
    }
}

impl Default for CloakSettings {
    /// Spec defaults: one estimator layer, σ ∈ (1e-4, 2) with temperature 1, ρ₀ = −4.
    fn default() -> Self {
        Self {
            estimator_layers: 1,
            std: StdParameterization::default(),
            rhos_init: DEFAULT_RHOS_INIT,
            mean_bound: 1.0,
            percent_to_mask: None,
            masked_fill: MaskedFill::Mean,
        }
    }
}

impl CloakSettings {
    /// Checks every field (deserialization already did; call it after changing fields).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, expected: String| Error::Invalid {
            what: what.into(),
            expected,
        };
        if self.estimator_layers == 0 {
            return Err(bad("estimator_layers", "at least 1".into()));
        }
        self.std.validate().map_err(|e| bad("std", e.to_string()))?;
        BoundedMean::new(self.mean_bound, 0.0).map_err(|e| bad("mean_bound", e.to_string()))?;
        if let Some(p) = self.percent_to_mask {
            check_percent(p).map_err(|e| bad("percent_to_mask", e.to_string()))?;
        }
        if !self.rhos_init.is_finite() {
            return Err(bad("rhos_init", "a finite number".into()));
        }
        Ok(())
    }
}

/// What a config file may hold: σ as `std`, or as the older `scale = [min, max]` and
/// `shallow` (Cloak form), which configs and artefacts written before `std` still use.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsWire {
    #[serde(default = "one")]
    estimator_layers: usize,
    #[serde(default)]
    std: Option<StdParameterization>,
    #[serde(default)]
    scale: Option<(f64, f64)>,
    #[serde(default)]
    shallow: Option<f64>,
    #[serde(default = "default_rhos_init")]
    rhos_init: f64,
    #[serde(default = "one_f")]
    mean_bound: f64,
    #[serde(default)]
    percent_to_mask: Option<f64>,
    #[serde(default)]
    masked_fill: MaskedFill,
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_rhos_init() -> f64 {
    DEFAULT_RHOS_INIT
}

impl TryFrom<SettingsWire> for CloakSettings {
    type Error = Error;

    fn try_from(w: SettingsWire) -> Result<Self> {
        let std = match (w.std, w.scale, w.shallow) {
            (Some(std), None, None) => std,
            (None, scale, shallow) => {
                let (min, max) = scale.unwrap_or(DEFAULT_SCALE);
                StdParameterization::Cloak {
                    min,
                    max,
                    shallow: shallow.unwrap_or(DEFAULT_SHALLOW),
                }
            }
            _ => {
                return Err(Error::Invalid {
                    what: "std".into(),
                    expected: "σ given once: as `std`, or as the older `scale` and `shallow`"
                        .into(),
                })
            }
        };
        let s = Self {
            estimator_layers: w.estimator_layers,
            std,
            rhos_init: w.rhos_init,
            mean_bound: w.mean_bound,
            percent_to_mask: w.percent_to_mask,
            masked_fill: w.masked_fill,
        };
        s.validate()?;
        Ok(s)
    }
}

/// Serializable configuration of a TransformerCloak: the base architecture and the settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerCloakConfig {
    /// Architecture of the estimator's decoder layers (the base model's).
    pub base: LlamaConfig,
    #[serde(flatten)]
    pub sgt: CloakSettings,
}

impl TransformerCloakConfig {
    /// Spec defaults for `base`.
    pub fn new(base: LlamaConfig) -> Self {
        Self::with_settings(base, CloakSettings::default())
    }

    pub fn with_settings(base: LlamaConfig, sgt: CloakSettings) -> Self {
        Self { base, sgt }
    }

    pub fn validate(&self) -> Result<()> {
        self.sgt.validate()?;
        if self.sgt.estimator_layers > self.base.num_layers {
            return Err(Error::Invalid {
                what: "estimator_layers".into(),
                expected: format!(
                    "between 1 and the base model's {} layers",
                    self.base.num_layers
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_both_sigma_forms_and_reject_bad_values() {
        let old: CloakSettings =
            serde_json::from_str(r#"{"scale": [0.001, 3.0], "shallow": 0.5}"#).expect("old form");
        assert_eq!(
            old.std,
            StdParameterization::cloak(0.001, 3.0, 0.5).expect("std")
        );
        let new: CloakSettings = serde_json::from_str(
            r#"{"std": {"type": "direct", "min": 0.0, "max": 1.0}, "estimator_layers": 2}"#,
        )
        .expect("new form");
        assert_eq!(new.std, StdParameterization::direct(0.0, 1.0).expect("std"));
        assert_eq!(new.estimator_layers, 2);
        for (json, what) in [
            (r#"{"scale": [2.0, 1.0]}"#, "scale"),
            (r#"{"percent_to_mask": 1.5}"#, "percent_to_mask"),
            (r#"{"estimator_layers": 0}"#, "estimator_layers"),
            (
                r#"{"scale": [0.1, 1.0], "std": {"type": "direct", "min": 0.0, "max": 1.0}}"#,
                "std",
            ),
            (r#"{"scael": [0.1, 1.0]}"#, "scael"),
        ] {
            let e = serde_json::from_str::<CloakSettings>(json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(what), "{json}: {e}");
        }
    }

    #[test]
    fn the_layer_config_flattens_the_settings() {
        let c = TransformerCloakConfig::new(LlamaConfig::tiny_for_tests());
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["estimator_layers"], 1);
        assert_eq!(v["std"]["type"], "cloak");
        let back: TransformerCloakConfig = serde_json::from_value(v).expect("back");
        assert_eq!(back, c);
    }

    #[test]
    fn the_masked_fill_is_written_only_when_not_the_original() {
        let mut c = TransformerCloakConfig::new(LlamaConfig::tiny_for_tests());
        let v = serde_json::to_value(&c).expect("json");
        assert!(v.get("masked_fill").is_none(), "{v}");
        c.sgt.masked_fill = MaskedFill::Noise;
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["masked_fill"], "noise");
        let back: TransformerCloakConfig = serde_json::from_value(v).expect("back");
        assert_eq!(back.sgt.masked_fill, MaskedFill::Noise);
        let zero: CloakSettings = serde_json::from_str(r#"{"masked_fill": "zero"}"#).expect("zero");
        assert_eq!(zero.masked_fill, MaskedFill::Zero);
        let e = serde_json::from_str::<CloakSettings>(r#"{"masked_fill": "learned"}"#)
            .expect_err("unknown fill");
        assert!(
            e.to_string().contains("masked_fill") || e.to_string().contains("variant"),
            "{e}"
        );
    }
}
