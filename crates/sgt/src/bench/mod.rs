//! `sgt bench …`: benchmarks that print one machine-readable JSON record each; the scripts
//! under `bench/` run them beside the PyTorch reference of the same computation and print the
//! ratios.

mod apply;
mod common;
mod llm;
mod pii;
mod text_sgt;
mod vision;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Vision SGT: training step (small CNN, Fashion-MNIST shape) and client transform.
    Vision(vision::VisionBenchArgs),
    /// Causal LM: prefill and decode at batch 1, an SGT-style training step, decode memory.
    Llm(llm::LlmBenchArgs),
    /// Text SGT: one training step (TransformerCloak + distillation to layer k).
    TextSgt(text_sgt::TextSgtBenchArgs),
    /// Client side: applying the text artefact to a prompt, and the proxy's per-request overhead.
    Apply(apply::ApplyBenchArgs),
    /// Personal-data handling: detection, pseudonymisation and mapping back per 1,000 characters.
    Pii(pii::PiiBenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Vision(a) => vision::vision(a),
        BenchCommand::Llm(a) => llm::llm(a),
        BenchCommand::TextSgt(a) => text_sgt::text_sgt(a),
        BenchCommand::Apply(a) => apply::apply(a),
        BenchCommand::Pii(a) => pii::pii(a),
    }
}
