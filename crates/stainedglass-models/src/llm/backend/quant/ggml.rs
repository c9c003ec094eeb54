//! Weight rows in any other GGUF storage type (the K-quants Q2_K, Q3_K, Q5_K, Q6_K, Q5_0, Q5_1,
//! f32; Q4_K is ours, `q4k.rs`, f16 and bf16 too, `half_rows.rs`; Q6_K rows are unpacked for
//! our kernels when a product has more than one activation row, `q6k.rs`), multiplied with candle's own per-type dot products (`GgmlType::vec_dot`, AVX2 for the
//! K-quants) after the activations are quantized to the type's partner format (Q8_K for the
//! K-quants). Only the row loop is ours, so these run in the same parallel pass as our own
//! Q4/Q8 kernels (`dot.rs`).

use std::any::Any;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, GgmlType,
};
use candle_core::quantized::GgmlDType;

/// Activations quantized for one storage type.
pub(crate) type Prepared = Box<dyn Any + Send + Sync>;

/// Rows of one storage type.
pub(crate) trait GgmlRows: Send + Sync {
    fn dtype(&self) -> GgmlDType;
    fn rows(&self) -> usize;
    /// Quantizes `m` activation rows (`x`: `m·k`) to the type's partner format.
    fn prepare(&self, x: &[f32]) -> Prepared;
    /// Row `row` with prepared activation row `r`.
    fn dot(&self, row: usize, prep: &Prepared, r: usize) -> f32;
    fn dequantize_row(&self, row: usize, out: &mut [f32]);
    /// Reorders the rows: new row `i` is old row `perm[i]`.
    fn permute(&mut self, perm: &[usize]);
    fn bytes(&self) -> usize;
    /// The blocks as the file stores them.
    fn raw(&self) -> &[u8];
}

struct Rows<T: GgmlType> {
    blocks: Vec<T>,
    /// Blocks per row.
    nb: usize,
    k: usize,
}

impl<T: GgmlType + 'static> GgmlRows for Rows<T>
where
    T::VecDotType: 'static,
{
    fn dtype(&self) -> GgmlDType {
        T::DTYPE
    }

    fn rows(&self) -> usize {
        self.blocks.len() / self.nb.max(1)
    }

    fn prepare(&self, x: &[f32]) -> Prepared {
        let nb = self.k / T::VecDotType::BLCK_SIZE;
        let m = x.len() / self.k;
        let mut q = vec![T::VecDotType::zeros(); m * nb];
        for (xr, qr) in x.chunks_exact(self.k).zip(q.chunks_exact_mut(nb)) {
            T::VecDotType::from_float(xr, qr);
        }
        Box::new(q)
    }

    fn dot(&self, row: usize, prep: &Prepared, r: usize) -> f32 {
        let Some(q) = prep.downcast_ref::<Vec<T::VecDotType>>() else {
            return f32::NAN; // not reachable: prepared by this part
        };
        let nbx = self.k / T::VecDotType::BLCK_SIZE;
        T::vec_dot(
            self.k,
            &self.blocks[row * self.nb..(row + 1) * self.nb],
            &q[r * nbx..(r + 1) * nbx],
        )
    }

    fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        T::to_float(&self.blocks[row * self.nb..(row + 1) * self.nb], out);
    }

    fn permute(&mut self, perm: &[usize]) {
        let nb = self.nb;
        let mut out = Vec::with_capacity(self.blocks.len());
        for &p in perm {
            out.extend_from_slice(&self.blocks[p * nb..(p + 1) * nb]);
        }
        self.blocks = out;
    }

    fn bytes(&self) -> usize {
        std::mem::size_of_val(self.blocks.as_slice())
    }

    fn raw(&self) -> &[u8] {
        // SAFETY: the block types are plain old data (integers and halves, `repr(C)`, no
        // padding: candle asserts their sizes), so their bytes are the file's, as copied in.
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast::<u8>(), self.bytes()) }
    }
}

fn rows_of<T: GgmlType + 'static>(
    data: &[u8],
    rows: usize,
    k: usize,
) -> Result<Box<dyn GgmlRows>, String>
where
    T::VecDotType: 'static,
{
    if !k.is_multiple_of(T::BLCK_SIZE) || T::BLCK_SIZE != T::VecDotType::BLCK_SIZE {
        return Err(format!(
            "{:?} rows of {k} values: not a multiple of its block of {}",
            T::DTYPE,
            T::BLCK_SIZE
        ));
    }
    let nb = k / T::BLCK_SIZE;
    let size = std::mem::size_of::<T>();
    let blocks_n = rows
        .checked_mul(nb)
        .filter(|&n| k > 0 && n.checked_mul(size) == Some(data.len()))
        .ok_or_else(|| {
            format!(
                "{:?} data of {} bytes for {rows} × {k} values (expected {} per row)",
                T::DTYPE,
                data.len(),
                nb * size
            )
        })?;
    let mut blocks = vec![T::zeros(); blocks_n];
    // SAFETY: the block types are plain old data (integers and halves, `repr(C)`); the byte
    // count was checked against the destination's size.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), blocks.as_mut_ptr().cast::<u8>(), data.len());
    }
    Ok(Box::new(Rows { blocks, nb, k }))
}

/// Rows of `dtype` from GGUF bytes (`rows` × `k` values), or why they cannot be used.
pub(crate) fn rows_for(
    dtype: GgmlDType,
    data: &[u8],
    rows: usize,
    k: usize,
) -> Result<Box<dyn GgmlRows>, String> {
    match dtype {
        GgmlDType::Q5_0 => rows_of::<BlockQ5_0>(data, rows, k),
        GgmlDType::Q5_1 => rows_of::<BlockQ5_1>(data, rows, k),
        GgmlDType::Q2K => rows_of::<BlockQ2K>(data, rows, k),
        GgmlDType::Q3K => rows_of::<BlockQ3K>(data, rows, k),
        GgmlDType::Q4K => rows_of::<BlockQ4K>(data, rows, k),
        GgmlDType::Q5K => rows_of::<BlockQ5K>(data, rows, k),
        GgmlDType::Q6K => rows_of::<BlockQ6K>(data, rows, k),
        GgmlDType::F32 => rows_of::<f32>(data, rows, k),
        other => Err(format!("{other:?} is not a weight storage type")),
    }
}
