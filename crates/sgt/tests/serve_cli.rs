//! Private chat end to end on loopback with the real bundled model: `sgt text export` writes a
//! client artefact, `sgt serve` and `sgt proxy` run as processes, the official `openai` Python
//! client asks "What is the capital of France?" (plain and streamed) through the proxy, and a
//! relay between proxy and server records every byte the server receives. Then a bounded
//! load test through the proxy, and a graceful shutdown of both.

mod common;

use base64::Engine;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) if the test fails before it is stopped gracefully.
struct Proc {
    child: Option<Child>,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proc {
    /// Starts `sgt args…` and waits for its "listening on http://…" line.
    fn start(args: &[&str]) -> Proc {
        let mut child = common::sgt()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sgt");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let mut p = Proc {
            child: Some(child),
            addr: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => p.addr = a,
            Err(_) => {
                let mut c = p.child.take().expect("child");
                let _ = c.kill();
                let _ = c.wait();
                let mut err = String::new();
                if let Some(mut s) = c.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                panic!("sgt {args:?} did not start:\n{err}");
            }
        }
        p
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGTERM, then expects a clean exit within `secs`; returns stderr.
    fn stop(mut self, secs: u64) -> String {
        let mut c = self.child.take().expect("child");
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                assert!(s.success(), "exit status {s} after SIGTERM:\n{err}");
                return err;
            }
            assert!(
                start.elapsed().as_secs() < secs,
                "no shutdown within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HTTP/1.1 POST on a fresh connection; returns the status and the body.
fn http_post(addr: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// Everything sent towards the server, one byte stream per connection.
type Recording = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// Forwards TCP connections to `target`, recording everything sent towards it.
fn relay(target: String) -> (String, Recording) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let addr = listener.local_addr().expect("addr").to_string();
    let record: Recording = Arc::default();
    let all = record.clone();
    std::thread::spawn(move || {
        for inbound in listener.incoming().map_while(Result::ok) {
            let Ok(outbound) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut in_r, mut out_w) = (
                inbound.try_clone().expect("clone"),
                outbound.try_clone().expect("clone"),
            );
            let (mut out_r, mut in_w) = (outbound, inbound);
            let rec: Arc<Mutex<Vec<u8>>> = Arc::default();
            all.lock().expect("lock").push(rec.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = in_r.read(&mut buf) {
                    if n == 0 || out_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    rec.lock().expect("lock").extend_from_slice(&buf[..n]);
                }
                let _ = out_w.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut out_r, &mut in_w);
                let _ = in_w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, record)
}

fn python() -> PathBuf {
    let p = common::assets().join("pyenv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run ./scripts/setup-assets.sh",
        p.display()
    );
    p
}

/// Splits a recording into HTTP requests: (request line + headers, body).
fn requests(rec: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = rec;
    while !rest.is_empty() {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!(
                "unparseable recording tail: {:?}",
                String::from_utf8_lossy(&rest[..rest.len().min(200)])
            );
        };
        let head = String::from_utf8_lossy(&rest[..end]).to_string();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let body = rest[end + 4..end + 4 + len].to_vec();
        rest = &rest[end + 4 + len..];
        out.push((head, body));
    }
    out
}

fn check_recording(rec: &[u8]) -> usize {
    let lower = String::from_utf8_lossy(rec).to_lowercase();
    for word in ["capital", "france", "primary colors", "im_start"] {
        assert!(!lower.contains(word), "the server received `{word}`");
    }
    // The note's personal data (with characters outside base64, so no chance match).
    let raw = String::from_utf8_lossy(rec);
    for value in ["Michael Roy", "michael.roy@example.com", "2026-04-15"] {
        assert!(!raw.contains(value), "the server received `{value}`");
    }
    let mut generates = 0;
    for (head, body) in requests(rec) {
        let first = head.lines().next().unwrap_or_default().to_string();
        if first.starts_with("GET /v1/model ") {
            continue;
        }
        assert!(
            first.starts_with("POST /v1/generate "),
            "unexpected request {first}"
        );
        generates += 1;
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
        let obj = v.as_object().expect("object");
        for (k, val) in obj {
            assert!(
                [
                    "embeddings",
                    "max_tokens",
                    "temperature",
                    "top_p",
                    "seed",
                    "stream"
                ]
                .contains(&k.as_str()),
                "unexpected field `{k}` sent to the server"
            );
            assert!(!val.is_array(), "field `{k}` is an array (token ids?)");
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["embeddings"].as_str().expect("embeddings"))
            .expect("base64");
        let t = candle_core::safetensors::load_buffer(&raw, &candle_core::Device::Cpu)
            .expect("safetensors");
        assert_eq!(t.len(), 1, "one tensor only");
        let e = t.values().next().expect("tensor");
        assert_eq!(e.dtype(), candle_core::DType::F32);
        assert_eq!(e.dims()[1], 576);
    }
    generates
}

#[test]
fn openai_client_chats_through_proxy_and_server_sees_only_embeddings() {
    let dir = tempfile::tempdir().expect("tmp");
    let art = dir.path().join("artefact");
    let art_s = art.to_string_lossy().to_string();
    common::ok(&["text", "export", "--init-only", "--f16", "--output", &art_s]);

    let server = Proc::start(&[
        "serve",
        "--port",
        "0",
        "--api-key",
        "test-key",
        "--max-new-tokens",
        "64",
        "--log",
        "info",
    ]);
    let (relay_addr, record) = relay(server.addr.clone());
    let proxy = Proc::start(&[
        "proxy",
        "--sgt",
        &art_s,
        "--upstream",
        &format!("http://{relay_addr}"),
        "--upstream-api-key",
        "test-key",
        "--protect-output",
        "--port",
        "0",
    ]);

    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .arg(proxy.url())
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "openai client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    for key in ["plain", "streamed"] {
        let answer = r[key].as_str().expect("answer");
        assert!(answer.contains("Paris"), "{key} answer: {answer}");
    }
    assert_eq!(
        r["plain"], r["streamed"],
        "greedy plain and streamed answers agree"
    );
    assert!(r["stream_chunks"].as_u64().expect("chunks") > 2, "{r}");
    assert_eq!(r["plain_finish"], "stop");
    assert_eq!(r["stream_finish"], "stop");
    assert_eq!(r["models"][0], "stainedglass");
    assert!(r["usage"]["prompt_tokens"].as_u64().expect("usage") > 8);
    assert!(r["pii_reply"].is_string(), "{r}");

    // Hostile requests to the running processes: the right 4xx at once, then a good answer.
    let words = "word ".repeat(9_000);
    let hostile = [
        (
            serde_json::json!({"model": "stainedglass", "messages": [{"role": "user", "content": words}]}),
            "application/json",
            400,
        ),
        (
            serde_json::json!({"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}),
            "application/json",
            404,
        ),
        (
            serde_json::json!({"model": "stainedglass", "messages": [{"role": "user", "content": "Hi"}], "top_p": 5}),
            "application/json",
            400,
        ),
        (
            serde_json::json!({"model": "stainedglass", "messages": [{"role": "user", "content": "Hi"}]}),
            "text/plain",
            415,
        ),
    ];
    for (body, ct, want) in hostile {
        let t0 = Instant::now();
        let (status, reply) = http_post(&proxy.addr, "/v1/chat/completions", ct, &body.to_string());
        assert_eq!(status, want, "{reply}");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t0.elapsed()
        );
    }
    // A slow sender is cut off by the server; the server still answers (the client run below).
    let mut slow = TcpStream::connect(&server.addr).expect("connect");
    slow.write_all(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")
        .expect("write");

    // A bounded load test through the proxy.
    let load = common::ok(&[
        "loadtest",
        "--url",
        &proxy.url(),
        "--requests",
        "200",
        "--concurrency",
        "16",
        "--max-tokens",
        "4",
        "--prompt",
        "Name three primary colors.",
        "--prompt",
        "What is the capital of France?",
    ]);
    let l: serde_json::Value = serde_json::from_str(&load).expect("load JSON");
    assert_eq!(l["errors"], 0, "{l}");
    assert!(
        l["latency_p99_ms"].as_f64().expect("p99") >= l["latency_p50_ms"].as_f64().expect("p50")
    );
    assert!(l["tokens_per_s"].as_f64().expect("tok/s") > 0.0);
    eprintln!("load test: {l}");

    // Past its capacity a proxy refuses at once (429), nothing waits unbounded, nothing fails.
    let small = Proc::start(&[
        "proxy",
        "--sgt",
        &art_s,
        "--upstream",
        &format!("http://{relay_addr}"),
        "--upstream-api-key",
        "test-key",
        "--port",
        "0",
        "--max-concurrent",
        "4",
    ]);
    let load = common::ok(&[
        "loadtest",
        "--url",
        &small.url(),
        "--requests",
        "64",
        "--concurrency",
        "64",
        "--max-tokens",
        "2",
    ]);
    let l: serde_json::Value = serde_json::from_str(&load).expect("load JSON");
    assert_eq!(l["errors"], 0, "{l}");
    let refused = l["refused"].as_u64().expect("refused");
    assert!(refused > 0 && refused < 64, "{l}");
    assert!(l["refused_max_ms"].as_f64().expect("ms") < 2000.0, "{l}");
    let _ = small.stop(30);

    let proxy_err = proxy.stop(30);
    assert!(proxy_err.contains("shut down"), "{proxy_err}");
    let server_err = server.stop(30);
    assert!(server_err.contains("shut down"), "{server_err}");
    // Metadata only in the logs: never the prompt or the answer.
    for log in [&proxy_err, &server_err] {
        for secret in ["France", "Paris", "Michael", "example.com"] {
            assert!(!log.contains(secret), "{log}");
        }
    }
    let connections: Vec<Vec<u8>> = record
        .lock()
        .expect("lock")
        .iter()
        .map(|c| c.lock().expect("lock").clone())
        .collect();
    let generates: usize = connections.iter().map(|c| check_recording(c)).sum();
    assert!(
        generates >= 203,
        "3 chats, 200 load-test requests and the admitted ones of the second reached the server"
    );
}
