//! Writes a Llama GGUF of random weights in llama.cpp's Q4_K_M mix, for benchmarks of K-quant
//! decoding at sizes the bundled model (576 wide: not a multiple of 256) cannot give: Q6_K for
//! the LM head and, in the layers llama.cpp gives more bits (the first and last eighth and
//! every third between), for `attn_v` and `ffn_down`; Q4_K for every other matrix; f32 norms.
//! The weights are random (the replies are noise); only speed and memory mean anything. The
//! tokenizer (every `tokenizer.*` key, so llama.cpp loads the file too) and the vocabulary size
//! are another GGUF's.
//!
//! `cargo run --release -p stainedglass-models --example kquant_model -- OUT.gguf
//! TOKENIZER.gguf [hidden ffn layers heads kv_heads]` (default 1024 2816 16 16 4: with
//! SmolLM2's 49,152 tokens, 280 M weights, 170 MB).

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn weights(rows: usize, cols: usize, seed: u64) -> anyhow::Result<Tensor> {
    let mut h = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.06
        })
        .collect();
    Ok(Tensor::from_vec(v, (rows, cols), &Device::Cpu)?)
}

/// llama.cpp's `use_more_bits`: the layers whose `attn_v` and `ffn_down` Q4_K_M keeps in Q6_K.
fn more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: kquant_model OUT.gguf TOKENIZER.gguf [hidden ffn layers heads kv_heads]";
    let (out, tok) = match args.as_slice() {
        [out, tok, ..] => (out, tok),
        _ => anyhow::bail!(usage),
    };
    let mut file = std::fs::File::open(tok)?;
    let content = gguf_file::Content::read(&mut file)?;
    let tokenizer: Vec<(String, gguf_file::Value)> = content
        .metadata
        .into_iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .collect();
    let vocab = tokenizer
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.to_vec().ok())
        .map(|v| v.len())
        .ok_or_else(|| anyhow::anyhow!("{tok} has no tokenizer.ggml.tokens"))?;
    let num = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |s| Ok(s.parse()?))
    };
    let (hidden, ffn, layers) = (num(2, 1024)?, num(3, 2816)?, num(4, 16)?);
    let (heads, kv_heads) = (num(5, 16)?, num(6, 4)?);
    anyhow::ensure!(
        hidden % 256 == 0 && ffn % 256 == 0 && hidden % heads == 0,
        "K-quants need widths that are multiples of 256 (hidden {hidden}, ffn {ffn})"
    );
    let kv = kv_heads * (hidden / heads);
    let mut seed = 0u64;
    let mut q = |rows: usize, cols: usize, dtype: GgmlDType| -> anyhow::Result<QTensor> {
        seed += 1;
        Ok(QTensor::quantize(&weights(rows, cols, seed)?, dtype)?)
    };
    let norm = || {
        QTensor::quantize(
            &Tensor::ones(hidden, candle_core::DType::F32, &Device::Cpu)?,
            GgmlDType::F32,
        )
    };
    let (q4, q6) = (GgmlDType::Q4K, GgmlDType::Q6K);
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q(vocab, hidden, q4)?),
        ("output_norm.weight".into(), norm()?),
        ("output.weight".into(), q(vocab, hidden, q6)?),
    ];
    for l in 0..layers {
        let six = if more_bits(l, layers) { q6 } else { q4 };
        let b = |name: &str| format!("blk.{l}.{name}.weight");
        tensors.push((b("attn_norm"), norm()?));
        tensors.push((b("attn_q"), q(hidden, hidden, q4)?));
        tensors.push((b("attn_k"), q(kv, hidden, q4)?));
        tensors.push((b("attn_v"), q(kv, hidden, six)?));
        tensors.push((b("attn_output"), q(hidden, hidden, q4)?));
        tensors.push((b("ffn_norm"), norm()?));
        tensors.push((b("ffn_gate"), q(ffn, hidden, q4)?));
        tensors.push((b("ffn_up"), q(ffn, hidden, q4)?));
        tensors.push((b("ffn_down"), q(hidden, ffn, six)?));
    }
    let u = |v: usize| gguf_file::Value::U32(v as u32);
    let md = [
        (
            "general.architecture",
            gguf_file::Value::String("llama".into()),
        ),
        (
            "general.name",
            gguf_file::Value::String("random Q4_K_M".into()),
        ),
        ("llama.embedding_length", u(hidden)),
        ("llama.attention.head_count", u(heads)),
        ("llama.attention.head_count_kv", u(kv_heads)),
        ("llama.feed_forward_length", u(ffn)),
        ("llama.block_count", u(layers)),
        ("llama.context_length", u(2048)),
        ("llama.vocab_size", u(vocab)),
        ("llama.rope.dimension_count", u(hidden / heads)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            gguf_file::Value::F32(1e-5),
        ),
        ("llama.rope.freq_base", gguf_file::Value::F32(10_000.0)),
    ];
    let mdr: Vec<(&str, &gguf_file::Value)> = md
        .iter()
        .map(|(k, v)| (*k, v))
        .chain(tokenizer.iter().map(|(k, v)| (k.as_str(), v)))
        .collect();
    let tr: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tmp = format!("{out}.partial");
    let mut f = std::fs::File::create(&tmp)?;
    gguf_file::write(&mut f, &mdr, &tr)?;
    f.sync_all()?;
    std::fs::rename(&tmp, out)?;
    let six = tensors.iter().filter(|(_, t)| t.dtype() == q6).count();
    println!("{out}: {layers} layers, {six} Q6_K tensors");
    Ok(())
}
