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
