//! Reading a Hugging Face folder keeping its matrices as stored: bf16 and f16 safetensors (how
//! models are usually released) stay at two bytes a weight, widened to f32 exactly when they
//! multiply (`backend::quant`'s half parts), so the model computes the numbers of the f32 model
//! of the same files at half its memory. The shards are read through read-only memory maps
//! (candle's `MmapedSafetensors`) and each matrix is copied once into a buffer of its final
//! size, fused as the model runs it; norms and biases are read as f32. Names, shapes and finite
//! values are checked as [`super::weights::load_hf_folder`] checks them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};

use super::backend::quant::{GgufPiece, QMatrix};
use super::config::LlamaConfig;
use super::weights::{expected_shapes, fused_stored, hf_folder_files, StoredMap, TensorMap};
use crate::error::{Error, Result};

/// The folder's shards, memory-mapped.
fn open(files: &[PathBuf], dir: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: the maps are read-only and every view into them is bounds-checked by the
    // safetensors parser. As with any memory-mapped loader, another process truncating a
    // shard while it is read is outside what this can guard against; model files are not
    // expected to change while being loaded.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
        Error::model(
            dir,
            format!("cannot read safetensors ({e}); is a shard truncated? download it again"),
        )
    })
}

/// The storage type of every two-dimensional tensor the model needs, by name.
fn matrix_dtypes(st: &MmapedSafetensors, cfg: &LlamaConfig) -> HashMap<String, DType> {
    expected_shapes(cfg)
        .into_iter()
        .filter(|(_, s)| s.len() == 2)
        .filter_map(|(n, _)| {
            let v = st.get(&n).ok()?;
            let d = DType::try_from(v.dtype()).ok()?;
            Some((n, d))
        })
        .collect()
}

/// Whether the folder's matrices are all f32 (nothing to keep smaller than the f32 model).
pub fn hf_folder_is_f32(dir: &Path) -> Result<bool> {
    let (cfg, files) = hf_folder_files(dir)?;
    let st = open(&files, dir)?;
    Ok(matrix_dtypes(&st, &cfg).values().all(|&d| d == DType::F32))
}

/// Reads a Hugging Face folder with its matrices as stored (see the module doc): the
/// configuration, the vectors in f32, and the matrices fused as [`super::weights`]'s
/// `load_gguf_stored` fuses them.
pub fn load_hf_stored(dir: &Path, device: &Device) -> Result<(LlamaConfig, TensorMap, StoredMap)> {
    let (cfg, files) = hf_folder_files(dir)?;
    let st = open(&files, dir)?;
    let shapes: HashMap<String, Vec<usize>> = expected_shapes(&cfg).into_iter().collect();
    let mut vectors = TensorMap::new();
    for (name, shape) in &shapes {
        if shape.len() != 1 {
            continue;
        }
        let Ok(t) = st.load(name, device) else {
            continue; // reported as missing by the check below
        };
        vectors.insert(name.clone(), t.to_dtype(DType::F32)?);
    }
    super::weights::check_vectors(&vectors, &cfg, dir)?;
    let missing = |name: &str| {
        Error::model(
            dir,
            format!("missing tensor `{name}` for a {} model", cfg.architecture),
        )
    };
    let piece = |name: &str| -> Result<GgufPiece<'_>> {
        let v = st.get(name).map_err(|_| missing(name))?;
        let want = shapes.get(name).ok_or_else(|| missing(name))?;
        if v.shape() != want.as_slice() {
            return Err(Error::model(
                dir,
                format!(
                    "tensor `{name}` has shape {:?}, the config implies {want:?}",
                    v.shape()
                ),
            ));
        }
        let dtype = match DType::try_from(v.dtype()) {
            Ok(DType::BF16) => GgmlDType::BF16,
            Ok(DType::F16) => GgmlDType::F16,
            Ok(DType::F32) => GgmlDType::F32,
            _ => {
                return Err(Error::model(
                    dir,
                    format!(
                        "tensor `{name}` is stored as {:?}; matrices are read from f32, f16 or \
                         bf16 safetensors",
                        v.dtype()
                    ),
                ))
            }
        };
        Ok(GgufPiece {
            dtype,
            data: v.data(),
            rows: want[0],
            order: None,
        })
    };
    let build = |names: &[String]| -> Result<QMatrix> {
        let pieces = names.iter().map(|n| piece(n)).collect::<Result<Vec<_>>>()?;
        let cols = shapes.get(&names[0]).map_or(0, |s| s[1]);
        QMatrix::from_gguf_pieces(&pieces, cols)
            .map_err(|e| Error::model(dir, format!("tensor `{}`: {e}", names[0])))
    };
    let mats = fused_stored(&cfg, build)?;
    Ok((cfg, vectors, mats))
}
