//! `sgt serve` (provider: embeddings in, tokens out), `sgt proxy` (client: OpenAI-compatible,
//! applies the SGT locally) and `sgt loadtest`.

use crate::lm::model_args::ModelArgs;
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use stainedglass_models::llm::{Activations, Llama};
use stainedglass_serve::crypto::ServerIdentity;
use stainedglass_serve::loadtest::{self, LoadSpec};
use stainedglass_serve::proxy::access::AccessConfig;
use stainedglass_serve::proxy::{self, ProxyConfig, ProxyState, Upstream, UpstreamKind};
use stainedglass_serve::server::{self, ServerConfig, ServerState};
use stainedglass_text::StainedGlassTransformForText;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Prints the bound address on stdout (scripts and tests read it) and flushes.
fn announce(what: &str, addr: std::net::SocketAddr) {
    println!("{what} listening on http://{addr}");
    let _ = std::io::stdout().flush();
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Accepted API key (repeat for several); also SGT_API_KEYS (comma-separated). None:
    /// no authentication.
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// Largest request body accepted.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Longest prompt accepted, in tokens.
    #[arg(long, default_value_t = 2048)]
    pub max_sequence_length: usize,
    /// Most tokens one request may generate.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Requests decoded together (continuous batching: requests join and leave the running
    /// batch between decoding steps; one KV cache, each row with its own sampling).
    #[arg(long, default_value_t = 16)]
    pub max_concurrency: usize,
    /// Requests allowed to wait for a row; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Reuse the keys and values of a prompt prefix requests share, bit for bit (behind the
    /// proxy: the chat template and system prompt, which the SGT leaves untransformed). The
    /// server then holds the last such prefix in memory, and a caller who times replies can
    /// tell whether a recent request began with the same template and system prompt
    /// (transformed content never matches). `off` prefills every prompt in full.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub prefix_cache: String,
    /// File holding the server's identity key (sealed output is bound to it; created, mode
    /// 0600, when missing). Without it a fresh identity is made at every start.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Model name reported by /v1/model (default: the model file's name).
    #[arg(long)]
    pub name: Option<String>,
    /// How the model's weights are held: `stored` (as the file stores them: a GGUF's quantized
    /// matrices, a fraction of the memory and several times the decoding speed; a Hugging Face
    /// folder's bf16/f16 safetensors, half the memory, the same numbers as f32), or `f32`
    /// (dequantized, the numbers an SGT is trained against). A folder of f32 safetensors loads
    /// in f32 either way.
    #[arg(long, default_value = "stored", value_parser = ["stored", "f32"])]
    pub weights: String,
    /// With `--weights stored`: `f32` (the f32 model's numbers bit for bit: the replies an SGT
    /// was trained and measured with) or `int8` (activations quantized to 8 bits for decoding,
    /// llama.cpp's numerics: about twice as fast; greedy replies may differ where the model's top
    /// two tokens are close) or `bf16` (for a bf16 folder: prefill with activations rounded to
    /// bf16 on the AVX-512 BF16 kernel, as PyTorch's bf16; decoding as `f32`).
    #[arg(long, default_value = "f32", value_parser = ["int8", "f32", "bf16"])]
    pub activations: String,
}

/// The model as `--weights` and `--activations` ask.
fn load_served(a: &ServeArgs, path: &std::path::Path) -> Result<Llama> {
    if a.weights == "f32" {
        return a.model.load_model();
    }
    let act: Activations = a.activations.parse().map_err(anyhow::Error::msg)?;
    Llama::load_stored_with(path, &candle_core::Device::Cpu, act)
        .with_context(|| format!("loading the model from {}", path.display()))
}

pub fn run_serve(a: ServeArgs) -> Result<()> {
    let path = a.model.model_path()?;
    let tok = a.model.load_tokenizer()?;
    // Every join and step allocates and frees the same buffers; kept, they are not faulted in
    // and zeroed again each time. Stored weights are memory maps: loading them frees little,
    // so pages are kept from the start (fewer faults than switching after loading, see
    // `alloc.rs`); an f32 model's load frees its file's bytes, handed back first.
    let stored = a.weights != "f32";
    if stored {
        crate::alloc::keep_freed_pages_from_start();
    }
    let model = Arc::new(load_served(&a, &path)?);
    if !stored {
        crate::alloc::keep_freed_pages();
    }
    eprintln!(
        "sgt serve: weights {} ({:.0} MB)",
        model.storage_summary(),
        model.weight_bytes() as f64 / (1 << 20) as f64
    );
    let mut keys = a.api_keys.clone();
    keys.extend(crate::env::get().api_keys.iter().cloned());
    if keys.is_empty() {
        eprintln!("warning: no --api-key given; the server accepts unauthenticated requests");
    }
    let config = ServerConfig {
        api_keys: keys,
        max_body_bytes: a.max_body_bytes,
        max_sequence_length: a.max_sequence_length,
        max_new_tokens: a.max_new_tokens,
        max_queue: a.max_queue,
        model_name: a.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "model".into())
        }),
        max_concurrency: a.max_concurrency,
        prefix_cache: a.prefix_cache == "on",
        identity: Some(Arc::new(identity(a.key_file.as_deref())?)),
    };
    let state = Arc::new(ServerState::new(model, tok.stop_tokens(), config)?);
    // Proxies pin this key (`sgt proxy --server-key`) so that no one else can seal replies.
    println!("sgt serve identity key: {}", state.info().server_key);
    let rt = runtime()?;
    rt.block_on(async move {
        let (listener, addr) = server::bind(&format!("{}:{}", a.host, a.port)).await?;
        announce("sgt serve", addr);
        server::run(listener, server::router(state), server::shutdown_signal()).await?;
        eprintln!("sgt serve: shut down");
        Ok(())
    })
}

/// The server identity in `path` (created when missing), or a fresh one.
fn identity(path: Option<&std::path::Path>) -> Result<ServerIdentity> {
    let Some(path) = path else {
        return Ok(ServerIdentity::generate()?);
    };
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the key file {}", path.display()))?;
        return ServerIdentity::from_secret_b64(&text).with_context(|| {
            format!(
                "{} is not a key file written by sgt serve (32 bytes of base64)",
                path.display()
            )
        });
    }
    let id = ServerIdentity::generate()?;
    stainedglass_core::io::atomic_write(path, id.secret_b64().as_bytes())
        .with_context(|| format!("writing the key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(id)
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// `sgt serve`.
    Sgt,
    /// vLLM started with --enable-prompt-embeds.
    Vllm,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

#[derive(Args)]
pub struct ProxyArgs {
    /// The client artefact (written by `sgt text export`).
    #[arg(long)]
    pub sgt: PathBuf,
    /// Base URL of the inference server, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub upstream: String,
    /// What the upstream is: `sgt serve`, or vLLM with --enable-prompt-embeds.
    #[arg(long, value_enum, default_value = "sgt")]
    pub upstream_kind: Kind,
    /// Bearer key for the upstream (also SGT_UPSTREAM_API_KEY).
    #[arg(long, env = "SGT_UPSTREAM_API_KEY")]
    pub upstream_api_key: Option<String>,
    /// Ask the server to seal every generated token for this proxy (sgt upstream only).
    #[arg(long)]
    pub protect_output: bool,
    /// Model name sent to vLLM.
    #[arg(long, default_value = "default")]
    pub vllm_model: String,
    /// Precision of vLLM's prompt_embeds tensor.
    #[arg(long, value_enum, default_value = "f32")]
    pub vllm_dtype: Precision,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Model id listed by /v1/models.
    #[arg(long, default_value = "stainedglass")]
    pub model_id: String,
    /// max_tokens of a request that gives none.
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Longest templated prompt accepted, in tokens.
    #[arg(long, default_value_t = 2048)]
    pub max_prompt_tokens: usize,
    /// Do not check at start-up that the server runs the artefact's base model.
    #[arg(long)]
    pub skip_model_check: bool,
    /// The server's identity key (printed by `sgt serve` at start): sealed output from anyone
    /// else is refused, and the start-up check fails if the server has another key.
    #[arg(long)]
    pub server_key: Option<String>,
    /// Most messages in one request.
    #[arg(long, default_value_t = 1024)]
    pub max_messages: usize,
    /// Chat requests in flight at once; more get 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_concurrent: usize,
    /// Seconds to wait for the upstream (to connect, and between two pieces of a reply; 504).
    #[arg(long, default_value_t = 120)]
    pub upstream_timeout_s: u64,
    /// A key callers must send as `Authorization: Bearer <key>` (repeatable; also
    /// SGT_PROXY_API_KEYS, comma-separated). Without one anyone who reaches the port may use
    /// the proxy and its upstream key.
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// A browser origin (e.g. http://localhost:3000) allowed to call the proxy (repeatable);
    /// other cross-origin requests are refused.
    #[arg(long = "allow-origin")]
    pub allow_origins: Vec<String>,
    #[command(flatten)]
    pub pii: crate::pii::GuardArgs,
    #[command(flatten)]
    pub precision: crate::text::precision::PrecisionArgs,
}

pub fn run_proxy(a: ProxyArgs) -> Result<()> {
    let mut sgt = StainedGlassTransformForText::from_pretrained(&a.sgt, &Device::Cpu)
        .with_context(|| format!("loading the artefact {}", a.sgt.display()))?;
    sgt.set_precision(a.precision.precision)?;
    // Every request allocates and frees the same transform buffers: keep their pages.
    crate::alloc::keep_freed_pages();
    let kind = match a.upstream_kind {
        Kind::Sgt => UpstreamKind::Sgt,
        Kind::Vllm => UpstreamKind::Vllm,
    };
    if a.protect_output && kind == UpstreamKind::Vllm {
        anyhow::bail!("--protect-output needs an sgt upstream; vLLM cannot seal its output");
    }
    let upstream = Upstream {
        kind,
        url: a.upstream.clone(),
        api_key: a.upstream_api_key.clone(),
        model: a.vllm_model.clone(),
        protect_output: a.protect_output,
        vllm_dtype: match a.vllm_dtype {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        },
        server_key: a.server_key.clone(),
    };
    let guard = a
        .pii
        .detector()?
        .map(|d| stainedglass_serve::proxy::PiiGuard::new(a.pii.pii, d));
    let mut api_keys = a.api_keys.clone();
    api_keys.extend(crate::env::get().proxy_api_keys.iter().cloned());
    let rt = runtime()?;
    rt.block_on(async move {
        let (listener, addr) = server::bind(&format!("{}:{}", a.host, a.port)).await?;
        if !addr.ip().is_loopback() && api_keys.is_empty() {
            eprintln!(
                "WARNING: sgt proxy listens on {addr}, beyond this machine, without --api-key: \
                 anyone who reaches the port can use it, and your upstream key with it"
            );
        }
        let config = ProxyConfig {
            model_id: a.model_id.clone(),
            default_max_tokens: a.default_max_tokens,
            max_prompt_tokens: a.max_prompt_tokens,
            max_messages: a.max_messages,
            max_concurrent: a.max_concurrent,
            upstream_timeout: std::time::Duration::from_secs(a.upstream_timeout_s.max(1)),
            access: AccessConfig {
                api_keys,
                allowed_origins: a.allow_origins.clone(),
                allowed_hosts: AccessConfig::loopback_hosts(addr),
            },
            ..ProxyConfig::default()
        };
        let mut state = ProxyState::new(Arc::new(sgt), upstream, config);
        if let Some(g) = guard {
            state = state.with_pii(g);
        }
        let state = Arc::new(state);
        if !a.skip_model_check {
            state.check_upstream().await?;
        }
        announce("sgt proxy", addr);
        server::run(listener, proxy::router(state), server::shutdown_signal()).await?;
        eprintln!("sgt proxy: shut down");
        Ok(())
    })
}

#[derive(Args)]
pub struct LoadtestArgs {
    /// Base URL of the proxy.
    #[arg(long)]
    pub url: String,
    /// Requests to send in all.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// max_tokens of every request.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: usize,
    /// Prompts to cycle through (repeat the flag); default: one fixed question.
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
}

pub fn run_loadtest(a: LoadtestArgs) -> Result<()> {
    let report = runtime()?.block_on(loadtest::run(LoadSpec {
        url: a.url,
        requests: a.requests,
        concurrency: a.concurrency,
        max_tokens: a.max_tokens,
        prompts: a.prompts,
    }));
    println!("{}", serde_json::to_string(&report)?);
    if report.errors > 0 {
        anyhow::bail!("{} of {} requests failed", report.errors, report.requests);
    }
    Ok(())
}
