//! The artefact's input-embedding table.
//!
//! A loaded artefact keeps the table where it lies, in the memory map of `model.safetensors`,
//! and gathers only the rows a prompt uses. Copying it out (and, for an f16 artefact, widening
//! it to f32) made a cold `sgt text apply` allocate, and so have the kernel zero, 2–3 bytes of
//! fresh memory for every stored byte: 83% of a 0.3 s start on this VM was page zeroing. The
//! check of the table (finite values, its hash against `config.json`) reads the map in one
//! streaming pass instead. Tools that need the whole f32 table (nearest neighbour, attacks,
//! re-export) get it on first request, made once.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};

use super::files;
use super::EmbeddingDtype;

/// Where the table's values are.
enum Source {
    /// Built in memory (a freshly packaged artefact): `(vocab, hidden)` f32.
    Owned(Tensor),
    Mapped(Mapped),
}

/// Little-endian f32 or f16 values, row-major, at `offset` in a file's memory map.
struct Mapped {
    map: Arc<memmap2::Mmap>,
    offset: usize,
    dtype: EmbeddingDtype,
    hidden: usize,
}

impl Mapped {
    /// Row `id`'s stored bytes. `id < vocab` is the caller's to check.
    fn row_bytes(&self, id: usize) -> &[u8] {
        let len = self.hidden * width(self.dtype);
        let start = self.offset + id * len;
        &self.map[start..start + len]
    }

    /// Row `id` as f32, appended to `out`.
    fn push_row(&self, id: usize, out: &mut Vec<f32>) {
        widen(self.row_bytes(id), self.dtype, out);
    }
}

/// The `(vocab, hidden)` input-embedding table, read as f32.
pub(crate) struct EmbeddingTable {
    source: Source,
    vocab: usize,
    hidden: usize,
    full: OnceLock<Tensor>,
}

impl EmbeddingTable {
    /// A table already in memory (any float dtype; kept as f32).
    pub(crate) fn owned(table: Tensor) -> Result<Self> {
        let (vocab, hidden) = table.dims2()?;
        let table = table.to_dtype(DType::F32)?.contiguous()?;
        Ok(Self {
            source: Source::Owned(table),
            vocab,
            hidden,
            full: OnceLock::new(),
        })
    }

    /// The table stored at `map[offset..]`. The caller has checked that the bytes are there
    /// (the safetensors header says so); this checks it again rather than trust it.
    pub(crate) fn mapped(
        map: Arc<memmap2::Mmap>,
        offset: usize,
        dtype: EmbeddingDtype,
        vocab: usize,
        hidden: usize,
    ) -> Result<Self> {
        let len = vocab
            .checked_mul(hidden)
            .and_then(|n| n.checked_mul(width(dtype)))
            .ok_or_else(|| Error::Prompt(format!("a {vocab}×{hidden} table is too large")))?;
        if offset.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(Error::Prompt(format!(
                "the {vocab}×{hidden} table does not fit in its {}-byte file",
                map.len()
            )));
        }
        Ok(Self {
            source: Source::Mapped(Mapped {
                map,
                offset,
                dtype,
                hidden,
            }),
            vocab,
            hidden,
            full: OnceLock::new(),
        })
    }

    /// The rows `ids` as a `(ids.len(), hidden)` f32 tensor on `device`.
    pub(crate) fn rows(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(Error::Prompt(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.vocab
            )));
        }
        let m = match &self.source {
            Source::Owned(t) => return Ok(t.index_select(&Tensor::new(ids, t.device())?, 0)?),
            Source::Mapped(m) => m,
        };
        let mut out = Vec::with_capacity(ids.len() * self.hidden);
        for &id in ids {
            m.push_row(id as usize, &mut out);
        }
        Ok(Tensor::from_vec(out, (ids.len(), self.hidden), device)?)
    }

    /// The whole table as one f32 tensor, made on first call (hundreds of MB for a large
    /// vocabulary: only the tools that search the table ask for it).
    pub(crate) fn full(&self) -> Result<&Tensor> {
        if let Some(t) = self.full.get() {
            return Ok(t);
        }
        let t = match &self.source {
            Source::Owned(t) => t.clone(),
            Source::Mapped(m) => {
                let mut out = Vec::with_capacity(self.vocab * self.hidden);
                for id in 0..self.vocab {
                    m.push_row(id, &mut out);
                }
                Tensor::from_vec(out, (self.vocab, self.hidden), &Device::Cpu)?
            }
        };
        Ok(self.full.get_or_init(|| t))
    }

    /// One pass over the table: the number of NaN or infinite values, and the sha256 (hex) of
    /// the table as f32 little-endian, row-major (`embedding_sha256`'s definition).
    pub(crate) fn check(&self) -> Result<(usize, String)> {
        let m = match &self.source {
            Source::Owned(t) => {
                let vals = t.flatten_all()?.to_vec1::<f32>()?;
                let bad = vals.iter().filter(|x| !x.is_finite()).count();
                return Ok((bad, files::embedding_sha256(t)?));
            }
            Source::Mapped(m) => m,
        };
        let mut hasher = Sha256::new();
        let mut bad = 0usize;
        let mut row = Vec::with_capacity(self.hidden);
        let mut buf = Vec::with_capacity(self.hidden * 4);
        for id in 0..self.vocab {
            if m.dtype == EmbeddingDtype::F32 {
                // f32 rows are hashed as they lie; only the finiteness needs the values.
                let bytes = m.row_bytes(id);
                bad += bytes
                    .chunks_exact(4)
                    .filter(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & EXP32 == EXP32)
                    .count();
                hasher.update(bytes);
            } else {
                row.clear();
                m.push_row(id, &mut row);
                bad += row.iter().filter(|x| !x.is_finite()).count();
                files::update_f32_le(&mut hasher, &row, &mut buf);
            }
        }
        Ok((bad, files::hex(&hasher.finalize())))
    }
}

const EXP32: u32 = 0x7f80_0000;

fn width(dtype: EmbeddingDtype) -> usize {
    match dtype {
        EmbeddingDtype::F32 => 4,
        EmbeddingDtype::F16 => 2,
    }
}

/// Little-endian f32 or f16 `bytes` appended to `out` as f32. A safetensors header need not
/// leave the data aligned, so unaligned bytes are assembled one value at a time; aligned f16 goes
/// through `half`'s vectorised (F16C) conversion, a third of the table check's time otherwise.
fn widen(bytes: &[u8], dtype: EmbeddingDtype, out: &mut Vec<f32>) {
    match dtype {
        EmbeddingDtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        EmbeddingDtype::F16 => {
            // SAFETY: any bit pattern is a valid u16; `align_to` only splits at alignment.
            let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
            if cfg!(target_endian = "little") && pre.is_empty() && post.is_empty() {
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                let start = out.len();
                out.resize(start + mid.len(), 0.0);
                mid.reinterpret_cast::<half::f16>()
                    .convert_to_f32_slice(&mut out[start..]);
            } else {
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(bytes: &[u8]) -> Arc<memmap2::Mmap> {
        let mut f = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut f, bytes).expect("write");
        // SAFETY: a private temporary file nobody else writes.
        Arc::new(unsafe { memmap2::Mmap::map(&f) }.expect("map"))
    }

    #[test]
    fn mapped_rows_hash_and_full_table_agree_with_the_owned_table() {
        let vals: Vec<f32> = (0..35).map(|i| i as f32 * 0.25 - 3.0).collect();
        let owned =
            EmbeddingTable::owned(Tensor::from_vec(vals.clone(), (7, 5), &Device::Cpu).expect("t"))
                .expect("owned");
        for (dtype, bytes) in [
            (
                EmbeddingDtype::F32,
                vals.iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
            (
                EmbeddingDtype::F16,
                vals.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
        ] {
            // An odd offset too: the values need not be aligned in the file.
            for pad in [3usize, 4] {
                let mut file = vec![9u8; pad];
                file.extend(&bytes);
                let t = EmbeddingTable::mapped(map_of(&file), pad, dtype, 7, 5).expect("mapped");
                let ids = [6u32, 0, 3, 3];
                let got = t.rows(&ids, &Device::Cpu).expect("rows");
                let want = owned.rows(&ids, &Device::Cpu).expect("rows");
                assert_eq!(
                    got.to_vec2::<f32>().expect("v"),
                    want.to_vec2::<f32>().expect("v")
                );
                assert_eq!(t.check().expect("check"), owned.check().expect("check"));
                assert_eq!(
                    t.full().expect("full").to_vec2::<f32>().expect("v"),
                    owned.full().expect("full").to_vec2::<f32>().expect("v")
                );
                assert!(
                    t.rows(&[7], &Device::Cpu).is_err(),
                    "id past the vocabulary"
                );
            }
        }
    }

    #[test]
    fn non_finite_values_are_counted_and_short_files_refused() {
        let mut vals = [1f32; 12];
        vals[4] = f32::NAN;
        vals[11] = f32::NEG_INFINITY;
        let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        let t =
            EmbeddingTable::mapped(map_of(&bytes), 0, EmbeddingDtype::F32, 3, 4).expect("mapped");
        assert_eq!(t.check().expect("check").0, 2);
        let h: Vec<u8> = vals
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        let t = EmbeddingTable::mapped(map_of(&h), 0, EmbeddingDtype::F16, 3, 4).expect("f16");
        assert_eq!(t.check().expect("check").0, 2);
        assert!(EmbeddingTable::mapped(map_of(&h), 1, EmbeddingDtype::F16, 3, 4).is_err());
        assert!(EmbeddingTable::mapped(map_of(&h), 0, EmbeddingDtype::F16, usize::MAX, 4).is_err());
    }
}
