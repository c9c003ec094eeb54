//! Prompt embeddings on the wire: base64 of a safetensors file with exactly one tensor.

use crate::error::ApiError;
use base64::Engine;
use candle_core::{DType, Device, Tensor};

/// Name of the tensor inside the safetensors payload.
pub const TENSOR_NAME: &str = "embeddings";

/// Encodes `(seq, hidden)` embeddings as base64 safetensors (f32).
pub fn encode(embeddings: &Tensor) -> candle_core::Result<String> {
    let t = embeddings.to_dtype(DType::F32)?;
    let bytes = safetensors_bytes(&t)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn safetensors_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let (rows, cols) = t.dims2()?;
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    let header = serde_json::json!({
        TENSOR_NAME: {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, data.len() * 4]}
    })
    .to_string();
    // Pad the header to 8 bytes as the format recommends.
    let mut h = header.into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len() * 4);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    Ok(out)
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingLimits {
    pub hidden_size: usize,
    pub max_sequence_length: usize,
}

/// The largest magnitude an input embedding may have. Token embeddings (and an SGT's outputs,
/// σ ≤ a few units) are far below it; larger values cannot be meaningful input, and at ~1e38
/// they overflow the model's activations to Inf.
pub const MAX_EMBEDDING_ABS: f32 = 1e4;

/// Decodes and checks a payload: base64 → safetensors → one `(seq, hidden)` f32 tensor with
/// `1 ≤ seq ≤ max`, the server's hidden size and only finite values.
pub fn decode(b64: &str, limits: EmbeddingLimits) -> Result<Tensor, ApiError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| {
            ApiError::BadRequest(format!(
                "`embeddings` is not valid base64 (standard alphabet): {e}"
            ))
        })?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
        ApiError::BadRequest(format!(
            "`embeddings` is not a readable safetensors file (corrupt or truncated?): {e}"
        ))
    })?;
    if tensors.len() != 1 {
        return Err(ApiError::BadRequest(format!(
            "`embeddings` must hold exactly one tensor, it holds {}",
            tensors.len()
        )));
    }
    let t = tensors
        .into_values()
        .next()
        .ok_or_else(|| ApiError::BadRequest("`embeddings` holds no tensor".into()))?;
    let t = match t.rank() {
        2 => t,
        3 if t.dim(0).ok() == Some(1) => t.squeeze(0).map_err(internal)?,
        _ => {
            return Err(ApiError::Unprocessable(format!(
                "embeddings have shape {:?}; expected (seq, {}) or (1, seq, {})",
                t.dims(),
                limits.hidden_size,
                limits.hidden_size
            )))
        }
    };
    let (seq, hidden) = t.dims2().map_err(internal)?;
    if hidden != limits.hidden_size {
        return Err(ApiError::Unprocessable(format!(
            "embeddings have hidden size {hidden} but this model's is {}; was the SGT built for \
             another base model?",
            limits.hidden_size
        )));
    }
    if seq == 0 || seq > limits.max_sequence_length {
        return Err(ApiError::Unprocessable(format!(
            "the prompt has {seq} positions; this server accepts 1 to {}",
            limits.max_sequence_length
        )));
    }
    if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(ApiError::Unprocessable(format!(
            "embeddings are {:?}; send f32, f16 or bf16",
            t.dtype()
        )));
    }
    let t = t.to_dtype(DType::F32).map_err(internal)?;
    let v = t
        .flatten_all()
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(internal)?;
    let largest = v
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f32, |m, x| m.max(x.abs()));
    if largest > MAX_EMBEDDING_ABS {
        return Err(ApiError::Unprocessable(format!(
            "embeddings hold values up to {largest:e}; input embeddings stay within \
             ±{MAX_EMBEDDING_ABS:e}"
        )));
    }
    let bad = v.iter().filter(|x| !x.is_finite()).count();
    if bad > 0 {
        return Err(ApiError::Unprocessable(format!(
            "embeddings contain {bad} non-finite value(s) (NaN or Inf)"
        )));
    }
    Ok(t)
}

fn internal(e: candle_core::Error) -> ApiError {
    ApiError::Internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: EmbeddingLimits = EmbeddingLimits {
        hidden_size: 4,
        max_sequence_length: 8,
    };

    #[test]
    fn round_trip_and_every_rejection() {
        let t = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .and_then(|t| t.reshape((3, 4)))
            .expect("t");
        let b = encode(&t).expect("enc");
        let back = decode(&b, L).expect("dec");
        assert_eq!(
            back.flatten_all()
                .and_then(|x| x.to_vec1::<f32>())
                .expect("v"),
            t.flatten_all().and_then(|x| x.to_vec1::<f32>()).expect("v")
        );
        let st = |t: &Tensor| encode(t).expect("enc");
        let status = |b: &str| decode(b, L).expect_err("reject").status().as_u16();
        assert_eq!(status("%%%"), 400);
        assert_eq!(status("aGVsbG8="), 400);
        let wide = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).expect("t");
        assert_eq!(status(&st(&wide)), 422);
        let long = Tensor::zeros((9, 4), DType::F32, &Device::Cpu).expect("t");
        assert_eq!(status(&st(&long)), 422);
        let nan = (Tensor::zeros((2, 4), DType::F32, &Device::Cpu).expect("t") / 0.0).expect("nan");
        let e = decode(&st(&nan), L).expect_err("nan");
        assert!(e.to_string().contains("non-finite"), "{e}");
        // A truncated payload.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&b)
            .expect("b64");
        let cut = base64::engine::general_purpose::STANDARD.encode(&raw[..raw.len() - 5]);
        assert_eq!(status(&cut), 400);
    }
}
