//! `sgt`: the Stained Glass Transform command line. A thin layer over the library crates.

mod alloc;
mod bench;
mod env;
mod eval;
mod lm;
mod pii;
mod quickstart;
mod serve;
mod text;
mod vision;

use clap::{Parser, Subcommand};

/// mimalloc reuses freed pages; with the system allocator every large tensor buffer is a fresh
/// mmap whose pages fault and get zeroed (measured: training step ~25% faster).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sgt",
    version,
    about = "Stained Glass Transform: train, apply and evaluate SGTs"
)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or `RUST_LOG` directives such as
    /// `warn,stainedglass_serve=debug`. Default: `$RUST_LOG`, else warn. Raw inputs are never
    /// logged.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Image SGTs: train the base classifier, train the SGT, apply it, sweep α (evaluate one
    /// with `sgt eval vision`).
    #[command(subcommand)]
    Vision(vision::VisionCommand),
    /// Text SGTs: prepare chat data, train a TransformerCloak.
    #[command(subcommand)]
    Text(text::TextCommand),
    /// The attack and evaluation suite: reports with attacks, utility and baselines.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Generate text with a causal LM (chat template applied unless --raw).
    Generate(lm::GenerateArgs),
    /// Show the ids, tokens and masks the tokenizer wrapper produces for a prompt.
    Tokenize(lm::TokenizeArgs),
    /// Write a model as a Hugging Face folder (f32 safetensors, config, tokenizer).
    ConvertHf(lm::ConvertHfArgs),
    /// The whole product on the bundled model in one command: train a small text SGT, export the
    /// client artefact, chat through the server and the proxy, write the quick report.
    Quickstart(quickstart::QuickstartArgs),
    /// Inference server: prompt embeddings in, tokens out (plain JSON or server-sent events).
    Serve(serve::ServeArgs),
    /// OpenAI-compatible client proxy: applies the SGT locally, forwards only embeddings.
    Proxy(serve::ProxyArgs),
    /// Bounded load test of a proxy's chat completions (latency percentiles, tokens/s).
    Loadtest(serve::LoadtestArgs),
    /// Personal data: scan text for it, measure the detector.
    #[command(subcommand)]
    Pii(pii::PiiCommand),
    /// Benchmarks printing machine-readable JSON (compare with bench/*.py).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Reads the environment once and hands its settings to the libraries, before any thread
/// starts; sets up logging.
fn start(log: Option<&str>) -> anyhow::Result<()> {
    let env = env::init()?;
    if !env.openblas_coretype_set {
        if let Some(core) = stainedglass_models::llm::openblas_coretype() {
            // OpenBLAS reads it when it is loaded (at the first large product, later).
            std::env::set_var("OPENBLAS_CORETYPE", core);
        }
    }
    stainedglass_models::llm::configure_blas(env.blas_options()).map_err(anyhow::Error::msg)?;
    stainedglass_models::llm::set_prepack_budget_mb(env.prepack_mb);
    let (filter, source) = match (log, &env.rust_log) {
        (Some(l), _) => (l, "--log"),
        (None, Some(l)) => (l.as_str(), "RUST_LOG"),
        (None, None) => ("warn", "the default"),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        anyhow::anyhow!("{source} {filter:?} is not a log filter ({e}); use e.g. warn or info,stainedglass_serve=debug")
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

fn main() {
    // Before any thread pool (BLAS, rayon, tokio) starts, so that they all inherit it.
    stainedglass_core::fpu::flush_subnormals();
    let cli = Cli::parse();
    if let Err(e) = start(cli.log.as_deref()) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    let result = match cli.command {
        Command::Vision(cmd) => vision::run(cmd),
        Command::Text(cmd) => text::run(cmd),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Generate(a) => lm::run_generate(a),
        Command::Tokenize(a) => lm::run_tokenize(a),
        Command::ConvertHf(a) => lm::run_convert_hf(a),
        Command::Quickstart(a) => quickstart::run(a),
        Command::Serve(a) => serve::run_serve(a),
        Command::Proxy(a) => serve::run_proxy(a),
        Command::Loadtest(a) => serve::run_loadtest(a),
        Command::Pii(cmd) => pii::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every command and every flag says what it is for in `--help`.
    #[test]
    fn every_command_and_flag_has_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "sgt", &mut missing);
        assert!(missing.is_empty(), "no help line:\n{}", missing.join("\n"));
    }
}
