//! `sgt vision …` subcommands.

mod apply;
mod commands;
mod eval;
mod data;

pub use commands::{run, VisionCommand};
