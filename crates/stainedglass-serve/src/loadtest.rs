//! A bounded load test: `requests` chat completions, `concurrency` at a time, against an
//! OpenAI-compatible endpoint; reports errors, latency percentiles and tokens/s.

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
    pub errors: usize,
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

async fn one(
    client: &reqwest::Client,
    url: &str,
    prompt: &str,
    max_tokens: usize,
) -> Result<usize, String> {
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
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", v["error"]["message"]));
    }
    v["usage"]["completion_tokens"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| "response without usage".to_string())
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
    for t in tasks {
        match t.await {
            Ok((ms, Ok(n))) => {
                lat.push(ms);
                tokens += n;
            }
            Ok((_, Err(e))) => {
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
        error_samples: samples,
        latency_p50_ms: percentile(&lat, 50.0),
        latency_p99_ms: percentile(&lat, 99.0),
        latency_max_ms: lat.last().copied().unwrap_or(f64::NAN),
        completion_tokens: tokens,
        wall_s: wall,
        tokens_per_s: tokens as f64 / wall,
        requests_per_s: (spec.requests - errors) as f64 / wall,
    }
}
