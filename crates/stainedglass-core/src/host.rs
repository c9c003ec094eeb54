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
