//! Hashing (files, embedding tables) and the atomic write of a whole artefact directory.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 (hex) of a `(vocab, hidden)` table as f32 little-endian, row-major.
pub fn embedding_sha256(table: &Tensor) -> Result<String> {
    use candle_core::{CpuStorage, Storage};
    let t = table.to_dtype(DType::F32)?.contiguous()?;
    let mut hasher = Sha256::new();
    let mut feed = |v: &[f32]| {
        // Little-endian bytes in 64 KiB blocks: no copy of the whole table.
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in v.chunks(1 << 14) {
            update_f32_le(&mut hasher, chunk, &mut buf);
        }
    };
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => feed(&v[a..b]),
        _ => {
            drop(storage);
            feed(&t.flatten_all()?.to_vec1::<f32>()?)
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// [`embedding_sha256`] of a model's input-embedding table, read one row at a time (a model
/// with stored weights never makes the whole f32 table for it).
pub fn model_embedding_sha256(model: &stainedglass_models::llm::Llama) -> Result<String> {
    let (vocab, hidden) = (model.config().vocab_size, model.config().hidden_size);
    let mut hasher = Sha256::new();
    let mut row = vec![0f32; hidden];
    let mut buf = Vec::with_capacity(hidden * 4);
    for id in 0..vocab {
        model.embedding_row(id, &mut row)?;
        update_f32_le(&mut hasher, &row, &mut buf);
    }
    Ok(hex(&hasher.finalize()))
}

/// Feeds `vals` to `hasher` as f32 little-endian bytes, through `buf` (reused between calls).
pub(crate) fn update_f32_le(hasher: &mut Sha256, vals: &[f32], buf: &mut Vec<u8>) {
    buf.clear();
    for x in vals {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    hasher.update(&buf);
}

/// Lower-case hexadecimal of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file's bytes, memory-mapped: large weights are hashed and parsed straight from the page
/// cache instead of being copied into fresh (zeroed) memory first.
pub(crate) fn map(path: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    // SAFETY: the map is read-only and dropped after loading; a concurrent writer could change
    // the bytes under us, which the sha256 check then reports as corruption.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io(path, e))
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "artefact".into());
    dir.with_file_name(format!(
        ".{name}.{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Replaces the existing `dir` with `tmp`. On Linux one `renameat2(RENAME_EXCHANGE)` swaps the
/// two names, so `dir` never goes missing; elsewhere (or where the filesystem cannot exchange)
/// the old directory is moved aside first, a short window in which `dir` is absent.
fn swap_in(tmp: &Path, dir: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, tmp, CWD, dir, RenameFlags::EXCHANGE) {
            Ok(()) => {
                // `tmp` now names the old artefact.
                let _ = std::fs::remove_dir_all(tmp);
                return Ok(());
            }
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {}
            Err(e) => {
                let _ = std::fs::remove_dir_all(tmp);
                return Err(io(dir, e.into()));
            }
        }
    }
    let old = sibling(dir, "old");
    std::fs::rename(dir, &old).map_err(|e| io(dir, e))?;
    if let Err(e) = std::fs::rename(tmp, dir) {
        let _ = std::fs::rename(&old, dir);
        let _ = std::fs::remove_dir_all(tmp);
        return Err(io(dir, e));
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Writes `files` into a fresh sibling directory (each fsynced), then swaps it in for `dir`:
/// a reader sees the old artefact or the new one, never a mix.
pub(crate) fn write_dir_atomic(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| io(dir, e))?.join(dir)
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let tmp = sibling(&dir, "tmp");
    let write = || -> std::io::Result<()> {
        std::fs::create_dir(&tmp)?;
        for (name, bytes) in files {
            let mut f = std::fs::File::create(tmp.join(name))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(&tmp, e));
    }
    if dir.exists() {
        swap_in(&tmp, &dir)?;
    } else if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(&dir, e));
    }
    // The new entry is durable once the parent directory is.
    if let Some(parent) = dir.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
