//! `sgt vision …`: train the provider's classifier, train an SGT on it, apply it, sweep α.
//! (Evaluating one is `sgt eval vision`.)

mod apply;
mod curve;
pub(crate) mod data;
mod train;

use anyhow::Result;
use candle_core::Device;
use clap::Subcommand;
use stainedglass_train::checkpoint::clear;

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum VisionCommand {
    /// Train the base image classifier (the provider's model).
    TrainClassifier(train::TrainClassifierArgs),
    /// Train an SGT on a frozen classifier with the composite cloak loss.
    Train(train::TrainSgtArgs),
    /// Client side: transform images with a trained SGT artefact, write a PNG grid.
    Apply(apply::ApplyArgs),
    /// Train and evaluate SGTs over several α; write curve.json and PNG plots.
    Curve(curve::CurveArgs),
}

pub fn run(cmd: VisionCommand) -> Result<()> {
    let device = Device::Cpu;
    match cmd {
        VisionCommand::TrainClassifier(a) => train::run_train_classifier(a, &device),
        VisionCommand::Train(a) => train::run_train_sgt(a, &device),
        VisionCommand::Apply(a) => apply::run(a, &device),
        VisionCommand::Curve(a) => {
            if a.train.fresh {
                clear(&a.train.output)?;
            }
            curve::curve(a, &device)
        }
    }
}
