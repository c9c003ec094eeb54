//! `torch.save` of one tensor, written without torch: the zip archive PyTorch ≥ 1.6 writes
//! (`archive/data.pkl`, `archive/data/0`, `archive/version`, `archive/byteorder`, entries
//! stored uncompressed and 64-byte aligned) with a protocol-2 pickle that rebuilds the tensor
//! through `torch._utils._rebuild_tensor_v2` — the only globals `torch.load(weights_only=True)`
//! needs. vLLM's `prompt_embeds` field is the base64 of such a file.

use candle_core::{DType, Tensor};
use std::io::Write;
use zip::write::SimpleFileOptions;

/// Pickle opcodes used below.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const NEWFALSE: u8 = 0x89;
    pub const STOP: u8 = b'.';
}

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(op::GLOBAL);
    out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
}

fn unicode(out: &mut Vec<u8>, s: &str) {
    out.push(op::BINUNICODE);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: usize) -> candle_core::Result<()> {
    let v = i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{v} exceeds i32")))?;
    out.push(op::BININT);
    out.extend_from_slice(&v.to_le_bytes());
    Ok(())
}

fn int_tuple(out: &mut Vec<u8>, v: &[usize]) -> candle_core::Result<()> {
    out.push(op::MARK);
    for &x in v {
        int(out, x)?;
    }
    out.push(op::TUPLE);
    Ok(())
}

/// The pickle program for a contiguous tensor of `dims` stored in record `0`.
fn pickle(storage: &str, dims: &[usize]) -> candle_core::Result<Vec<u8>> {
    let numel: usize = dims.iter().product();
    let mut strides = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }
    let mut p = vec![op::PROTO, 2];
    global(&mut p, "torch._utils", "_rebuild_tensor_v2");
    p.push(op::MARK);
    // Persistent id: ('storage', <class>, key, location, numel).
    p.push(op::MARK);
    unicode(&mut p, "storage");
    global(&mut p, "torch", storage);
    unicode(&mut p, "0");
    unicode(&mut p, "cpu");
    int(&mut p, numel)?;
    p.push(op::TUPLE);
    p.push(op::BINPERSID);
    int(&mut p, 0)?; // storage offset
    int_tuple(&mut p, dims)?;
    int_tuple(&mut p, &strides)?;
    p.push(op::NEWFALSE); // requires_grad
    global(&mut p, "collections", "OrderedDict");
    p.push(op::EMPTY_TUPLE);
    p.push(op::REDUCE); // backward hooks: OrderedDict()
    p.push(op::TUPLE);
    p.push(op::REDUCE);
    p.push(op::STOP);
    Ok(p)
}

/// The bytes of `torch.save(tensor)` for an f32, f16 or bf16 tensor (made contiguous).
pub fn save_bytes(tensor: &Tensor) -> candle_core::Result<Vec<u8>> {
    let storage = match tensor.dtype() {
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        other => {
            return Err(candle_core::Error::Msg(format!(
                "torch.save of {other:?} tensors is not supported; use f32, f16 or bf16"
            )))
        }
    };
    let flat = tensor.flatten_all()?;
    let data: Vec<u8> = match tensor.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        _ => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    };
    let pkl = pickle(storage, tensor.dims())?;
    let zip_err = |e: zip::result::ZipError| candle_core::Error::Msg(format!("zip: {e}"));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    let mut put = |name: &str, bytes: &[u8]| -> candle_core::Result<()> {
        w.start_file(format!("archive/{name}"), opts)
            .map_err(zip_err)?;
        w.write_all(bytes)?;
        Ok(())
    };
    put("data.pkl", &pkl)?;
    put(".format_version", b"1")?;
    put(".storage_alignment", b"64")?;
    put("byteorder", b"little")?;
    put("data/0", &data)?;
    put("version", b"3\n")?;
    put(
        ".data/serialization_id",
        b"0000000000000000000000000000000000000000",
    )?;
    let cursor = w.finish().map_err(zip_err)?;
    Ok(cursor.into_inner())
}
