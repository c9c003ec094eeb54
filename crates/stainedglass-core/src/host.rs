//! Host views of candle's CPU storage for custom ops: the contiguous f32 slice of a storage
//! view, and a closure over a tensor's host data without copying it.

use candle_core::{CpuStorage, Layout, Storage, Tensor};

/// The f32 values of a contiguous CPU storage view.
pub fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("a custom op needs contiguous inputs (call .contiguous())".into())
    })?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

/// Runs `f` on the f32 host data of a CPU tensor (made contiguous first if it is not).
pub fn with_host<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(c) => Ok(f(cpu_slice(c, l)?)),
        _ => Err(candle_core::Error::Msg(
            "a custom op got a tensor that is not on the CPU".into(),
        )),
    }
}

/// Runs `f` on the f32 host data of several CPU tensors at once (each made contiguous first if
/// it is not; their read locks are held while `f` runs).
pub fn with_hosts<const N: usize, R>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> candle_core::Result<R> {
    let ts = ts
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = ts.iter().map(Tensor::storage_and_layout).collect();
    let mut slices: [&[f32]; N] = [&[]; N];
    for (s, (g, l)) in slices.iter_mut().zip(&guards) {
        *s = match &**g {
            Storage::Cpu(c) => cpu_slice(c, l)?,
            _ => {
                return Err(candle_core::Error::Msg(
                    "a custom op got a tensor that is not on the CPU".into(),
                ))
            }
        };
    }
    Ok(f(slices))
}

/// Whether `t` is an f32 tensor on the CPU (what the host kernels take).
pub fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// Buffers at least this long are zero-filled by all threads.
const PAR_ZERO_MIN: usize = 1 << 16;
/// Values zero-filled per task.
const ZERO_CHUNK: usize = 1 << 14;

/// `n` zeros; long buffers are filled by all of rayon's threads. Training reuses freed pages,
/// which the allocator must zero again, and `vec![0.0; n]` does that on the calling thread
/// alone while the others wait (3% of a text-SGT step's CPU samples, all of it serial).
pub fn zeroed(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    if n < PAR_ZERO_MIN {
        return vec![0.0; n];
    }
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(ZERO_CHUNK)
        .for_each(|c| c.fill(MaybeUninit::new(0.0)));
    // SAFETY: the first `n` values of the capacity were all written just above.
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeroed_is_all_zeros_at_every_length() {
        for n in [
            0,
            1,
            super::PAR_ZERO_MIN - 1,
            super::PAR_ZERO_MIN,
            3 * super::ZERO_CHUNK + 5 + super::PAR_ZERO_MIN,
        ] {
            let v = super::zeroed(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0), "length {n}");
        }
    }
}
