//! The command-line options that choose a PII detector (`sgt pii scan|eval|e2e`, `sgt bench
//! pii`) and the proxy's personal-data handling (`sgt proxy`, `sgt serve`, `sgt text apply`),
//! and the reader of labelled prompt files.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use stainedglass_pii::eval::LabelledPrompt;
use stainedglass_pii::{Detector, DetectorConfig, Lexicon, PiiKind, PiiMode};

#[derive(Args, Clone)]
pub struct DetectorArgs {
    /// Assets directory holding pii/ (default: $SGT_ASSETS, else assets).
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// A further sensitive term to find, e.g. a project name (repeatable).
    #[arg(long = "term")]
    pub terms: Vec<String>,
    /// Only these kinds (repeatable; default all): email, phone, ssn, card_number, iban,
    /// ip_address, date, address, url_credentials, account_number, person, organization,
    /// location, health, custom.
    #[arg(long = "kind")]
    pub kinds: Vec<PiiKind>,
}

impl DetectorArgs {
    pub fn detector(&self) -> Result<Detector> {
        let assets = self.assets.clone().unwrap_or_else(crate::env::assets);
        let lex = Lexicon::load(&assets.join("pii"))?;
        Ok(Detector::new(
            lex,
            DetectorConfig {
                custom_terms: self.terms.clone(),
                kinds: self.kinds.iter().copied().collect(),
            },
        ))
    }
}

/// Personal-data handling of `sgt proxy` (and `sgt text apply --preview`).
#[derive(Args, Clone)]
pub struct GuardArgs {
    /// What to do with personal data in prompts before the SGT: pseudonymize (consistent
    /// stand-ins; the reply is mapped back), redact ([PERSON], [EMAIL], …) or off.
    #[arg(long, default_value = "pseudonymize")]
    pub pii: PiiMode,
    /// A further sensitive term to replace, e.g. a project name (repeatable).
    #[arg(long = "pii-term")]
    pub pii_terms: Vec<String>,
    /// Only these kinds (repeatable; default all), as for `sgt pii scan --kind`.
    #[arg(long = "pii-kind")]
    pub pii_kinds: Vec<PiiKind>,
    /// Assets directory holding pii/ (default: $SGT_ASSETS, else assets).
    #[arg(long)]
    pub pii_assets: Option<PathBuf>,
}

impl GuardArgs {
    /// The detector, or none with `--pii off`.
    pub fn detector(&self) -> Result<Option<Detector>> {
        if self.pii == PiiMode::Off {
            return Ok(None);
        }
        DetectorArgs {
            assets: self.pii_assets.clone(),
            terms: self.pii_terms.clone(),
            kinds: self.pii_kinds.clone(),
        }
        .detector()
        .context("loading the PII word lists (or run with --pii off to send names as written)")
        .map(Some)
    }
}

/// The labelled prompts of a JSON-lines file.
pub fn read_prompts(path: &std::path::Path) -> Result<Vec<LabelledPrompt>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<LabelledPrompt>(l)
                .with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}
