//! A bounded load test: `requests` chat completions, `concurrency` at a time, against an
//! OpenAI-compatible endpoint; reports errors, refusals (429), latency percentiles and tokens/s.

use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Base URL of the proxy, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub requests: usize,
    pub concurrency: usize,
    pub max_tokens: usize,
    pub prompts: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub requests: usize,
    pub concurrency: usize,
    /// Failed requests, refusals not included.
    pub errors: usize,
    /// Requests refused for capacity (429), and the longest time one took to be refused.
    pub refused: usize,
    pub refused_max_ms: f64,
    /// First few error messages.
    pub error_samples: Vec<String>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub completion_tokens: usize,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    pub requests_per_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Why a request did not complete.
enum Failure {
    /// 429: the endpoint is at capacity.
    Refused,
    Error(String),
}

async fn one(
    client: &reqwest::Client,
    url: &str,
    prompt: &str,
    max_tokens: usize,
) -> Result<usize, Failure> {
    let body = json!({
        "model": "stainedglass",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    let r = client
        .post(format!("{}/v1/chat/completions", url.trim_end_matches('/')))
        .json(&body)
        .send()
        .await
        .map_err(|e| Failure::Error(e.to_string()))?;
    let status = r.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::Refused);
    }
    let v: Value = r.json().await.map_err(|e| Failure::Error(e.to_string()))?;
    if !status.is_success() {
        return Err(Failure::Error(format!(
            "{status}: {}",
            v["error"]["message"]
        )));
    }
    v["usage"]["completion_tokens"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| Failure::Error("response without usage".into()))
}

pub async fn run(spec: LoadSpec) -> LoadReport {
    let client = reqwest::Client::new();
    let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(spec.requests);
    let prompts = if spec.prompts.is_empty() {
        vec!["What is the capital of France?".to_string()]
    } else {
        spec.prompts.clone()
    };
    for i in 0..spec.requests {
        let (client, gate, url) = (client.clone(), gate.clone(), spec.url.clone());
        let prompt = prompts[i % prompts.len()].clone();
        let max_tokens = spec.max_tokens;
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await;
            let t = Instant::now();
            let r = one(&client, &url, &prompt, max_tokens).await;
            (t.elapsed().as_secs_f64() * 1e3, r)
        }));
    }
    let mut lat = Vec::new();
    let (mut errors, mut samples, mut tokens) = (0, Vec::new(), 0);
    let (mut refused, mut refused_max_ms) = (0, 0f64);
    for t in tasks {
        match t.await {
            Ok((ms, Ok(n))) => {
                lat.push(ms);
                tokens += n;
            }
            Ok((ms, Err(Failure::Refused))) => {
                refused += 1;
                refused_max_ms = refused_max_ms.max(ms);
            }
            Ok((_, Err(Failure::Error(e)))) => {
                errors += 1;
                if samples.len() < 5 {
                    samples.push(e);
                }
            }
            Err(e) => {
                errors += 1;
                if samples.len() < 5 {
                    samples.push(e.to_string());
                }
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    LoadReport {
        requests: spec.requests,
        concurrency: spec.concurrency,
        errors,
        refused,
        refused_max_ms,
        error_samples: samples,
        latency_p50_ms: percentile(&lat, 50.0),
        latency_p99_ms: percentile(&lat, 99.0),
        latency_max_ms: lat.last().copied().unwrap_or(f64::NAN),
        completion_tokens: tokens,
        wall_s: wall,
        tokens_per_s: tokens as f64 / wall,
        requests_per_s: lat.len() as f64 / wall,
    }
}
