//! The privacy figure of a periodic evaluation: attackers trained afresh on the layer as it is
//! at that step. The attacks live in `stainedglass-eval`, a sibling of this crate, so the caller
//! supplies them through [`PrivacyCheck`]; the trainer records and prints what they read. No
//! attacker is carried from one evaluation to the next (an attacker that trained alongside the
//! layer says little about one trained after it).

use serde::{Deserialize, Serialize};
use stainedglass_models::text_sgt::TransformerCloak;
use std::collections::BTreeMap;

/// What the attackers trained on one step's layer recovered of the held-out transformed tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyReading {
    /// The attack with the highest top-1 recovery, and that recovery.
    pub strongest: String,
    pub strongest_top1: f64,
    /// Top-1 recovery of every attack that ran.
    pub attacks: BTreeMap<String, f64>,
}

/// Trains attackers on `cloak` as it is now and scores them on held-out text.
pub trait PrivacyCheck {
    fn check(
        &mut self,
        cloak: &TransformerCloak,
    ) -> std::result::Result<PrivacyReading, Box<dyn std::error::Error + Send + Sync>>;
}

impl PrivacyReading {
    /// The reading of `attacks` (name → top-1): the strongest named. `None` when empty.
    pub fn of(attacks: BTreeMap<String, f64>) -> Option<Self> {
        let (strongest, top) = attacks
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, v)| (k.clone(), *v))?;
        Some(Self {
            strongest,
            strongest_top1: top,
            attacks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reading_names_the_strongest_attack() {
        let r = PrivacyReading::of(BTreeMap::from([
            ("nearest_neighbour_l2".to_string(), 0.05),
            ("learned_mlp".to_string(), 0.9),
        ]))
        .expect("reading");
        assert_eq!(
            (r.strongest.as_str(), r.strongest_top1),
            ("learned_mlp", 0.9)
        );
        assert!(PrivacyReading::of(BTreeMap::new()).is_none());
    }
}
