//! Text privacy and utility evaluation (`docs/spec.md` §9): nearest-neighbour, learned and
//! BeamClean-style inversion of transformed tokens, mutual information and σ/|x|, next-token
//! utility, perplexity and answer accuracy, against the SGT and two baselines, with reports.

pub mod beamclean;
pub mod fresh;
pub mod info;
pub mod inverter;
pub mod mechanism;
pub mod observed;
pub mod probe;
pub mod probe_cache;
pub mod quick;
pub mod report;
pub mod suite;
pub mod utility;

pub use quick::{
    bucket_positions, write_quick_report, PositionBucket, Quantiles, QuickReportInput,
};
pub use report::write_text_report;
pub use stainedglass_metrics::EmbeddingIndex;
pub use suite::{
    run_text_suite, MechanismReport, TextSuiteConfig, TextSuiteInput, TextSuiteReport,
};

#[cfg(test)]
mod tests;
