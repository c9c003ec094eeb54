//! Rows stored as 16-bit floats (bf16 or f16: what Hugging Face safetensors usually hold, and
//! GGUF's F16/BF16), kept at two bytes a weight and widened to f32 on use. Widening is exact,
//! so products on these rows compute the f32 model of the same file bit for bit (f32
//! activations, f32 accumulation, `gemv`'s order). Our own widening instead of `half`'s
//! per-element conversion or candle's f16/bf16 dot products: those round the activations to
//! 16 bits and run a scalar loop; here a decode step's 8-row pass widens in registers (AVX2,
//! F16C) and multiplies as the f32 kernels do.

use half::{bf16, f16};

/// Which 16-bit float a [`super::Part::Half`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HalfKind {
    Bf16,
    F16,
}

impl HalfKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            HalfKind::Bf16 => "BF16",
            HalfKind::F16 => "F16",
        }
    }

    /// Whether this CPU runs the fused (in-register) widening of this kind.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn fused_ok(self) -> bool {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        avx2 && (self == HalfKind::Bf16 || std::is_x86_feature_detected!("f16c"))
    }
}

/// `src` (16-bit floats as bits) widened into `dst` (same length): exact.
pub(super) fn widen(kind: HalfKind, src: &[u16], dst: &mut [f32]) {
    match kind {
        HalfKind::Bf16 => {
            // bf16 is the top half of an f32: a shift, which the compiler vectorizes.
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = f32::from_bits(u32::from(s) << 16);
            }
        }
        HalfKind::F16 => {
            #[cfg(target_arch = "x86_64")]
            if f16c() {
                // SAFETY: the CPU has F16C and AVX; `dst` is at least as long as `src`.
                return unsafe { x86::widen_f16(src, &mut dst[..src.len()]) };
            }
            use half::slice::HalfFloatSliceExt;
            let src: &[f16] = bytemuck_u16_as_f16(src);
            src.convert_to_f32_slice(&mut dst[..src.len()]);
        }
    }
}

/// Whether the CPU converts f16 in hardware (checked once).
#[cfg(target_arch = "x86_64")]
fn f16c() -> bool {
    static F16C: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F16C.get_or_init(|| {
        std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx")
    })
}

fn bytemuck_u16_as_f16(s: &[u16]) -> &[f16] {
    // SAFETY: `f16` is `repr(transparent)` over `u16`: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f16>(), s.len()) }
}

/// Whether every value is finite.
pub(super) fn all_finite(kind: HalfKind, v: &[u16]) -> bool {
    match kind {
        HalfKind::Bf16 => v.iter().all(|&b| bf16::from_bits(b).is_finite()),
        HalfKind::F16 => v.iter().all(|&b| f16::from_bits(b).is_finite()),
    }
}

/// Dot products of `x` with `R` consecutive rows (`vals`: `R · x.len()` halves), in
/// `gemv::dot_rows`'s order and arithmetic: eight lanes multiply-added in sequence, summed.
/// `x.len()` must be a multiple of 8 and the CPU must pass [`HalfKind::fused_ok`].
#[cfg(target_arch = "x86_64")]
pub(super) fn dot_rows<const R: usize>(kind: HalfKind, vals: &[u16], x: &[f32]) -> [f32; R] {
    let k = x.len();
    assert!(
        k.is_multiple_of(8) && vals.len() == R * k && kind.fused_ok(),
        "half rows: {} values for {R} rows of {k}",
        vals.len()
    );
    // SAFETY: lengths checked above; the CPU features were checked by `fused_ok`.
    unsafe {
        match kind {
            HalfKind::Bf16 => x86::rows::<R, false>(vals, x),
            HalfKind::F16 => x86::rows::<R, true>(vals, x),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Eight halves at `p` widened to f32: f16 through F16C, bf16 by a 16-bit shift.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen8<const F16: bool>(p: *const u16) -> __m256 {
        let raw = _mm_loadu_si128(p.cast());
        if F16 {
            _mm256_cvtph_ps(raw)
        } else {
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
        }
    }

    /// f16 bits widened to f32, eight at a time (`src` and `dst` of one length).
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen_f16(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(
                dp.add(i),
                _mm256_cvtph_ps(_mm_loadu_si128(sp.add(i).cast())),
            );
            i += 8;
        }
        for j in i..n {
            *dp.add(j) = half::f16::from_bits(*sp.add(j)).to_f32();
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows<const R: usize, const F16: bool>(
        vals: &[u16],
        x: &[f32],
    ) -> [f32; R] {
        let k = x.len();
        let (vp, xp) = (vals.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); R];
        let mut i = 0;
        while i + 8 <= k {
            let xv = _mm256_loadu_ps(xp.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(widen8::<F16>(vp.add(r * k + i)), xv, *a);
            }
            i += 8;
        }
        std::array::from_fn(|r| {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
            lanes.iter().sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halves(kind: HalfKind, v: &[f32]) -> Vec<u16> {
        v.iter()
            .map(|&x| match kind {
                HalfKind::Bf16 => bf16::from_f32(x).to_bits(),
                HalfKind::F16 => f16::from_f32(x).to_bits(),
            })
            .collect()
    }

    #[test]
    fn widening_is_exact_and_fused_rows_match_the_f32_kernel() {
        let k = 72;
        let w: Vec<f32> = (0..8 * k)
            .map(|i| ((i * 37) % 101) as f32 * 0.013 - 0.6)
            .collect();
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
        let x: Vec<f32> = (0..k).map(|i| ((i * 11) % 17) as f32 * 0.1 - 0.8).collect();
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            let h = halves(kind, &w);
            let mut wide = vec![0f32; h.len()];
            widen(kind, &h, &mut wide);
            for (a, &b) in wide.iter().zip(&h) {
                let want = match kind {
                    HalfKind::Bf16 => bf16::from_bits(b).to_f32(),
                    HalfKind::F16 => f16::from_bits(b).to_f32(),
                };
                assert_eq!(a.to_bits(), want.to_bits());
            }
            #[cfg(target_arch = "x86_64")]
            if kind.fused_ok() {
                let fused = dot_rows::<8>(kind, &h, &x);
                let reference = crate::llm::backend::gemv::dot_rows::<8>(&x, &wide);
                assert_eq!(fused, reference, "{kind:?}");
            }
            assert!(all_finite(kind, &h));
            let mut bad = h.clone();
            bad[5] = match kind {
                HalfKind::Bf16 => bf16::NAN.to_bits(),
                HalfKind::F16 => f16::INFINITY.to_bits(),
            };
            assert!(!all_finite(kind, &bad));
        }
    }
}
