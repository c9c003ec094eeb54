//! Dot products of quantized weight rows with quantized activation rows, written here rather
//! than taken from candle: candle 0.11's CPU Q4_1 dot product is scalar, and its Q4_0/Q8_0 ones
//! run one row at a time. These read `R` weight rows per activation block (the activation is
//! loaded once for all of them) and multiply bytes with AVX-512 VNNI (`vpdpbusd`, 256-bit) when
//! the CPU has it, AVX2 (`vpmaddubsw` + `vpmaddwd`) otherwise, and a portable loop — the
//! reference the tests compare against — elsewhere.
//!
//! Layouts (llama.cpp's, with f32 scales): a Q4 block is 16 bytes, byte `j` holding value `j`
//! in its low nibble and value `j + 16` in its high one; a Q8 block is 32 signed bytes. Each
//! returns `Σ_b d_w[b] · d_x[b] · Σ_i w_i · x_i` over the row's blocks, with Q4 values taken as
//! unsigned nibbles (the caller adds the Q4_0 offset or the Q4_1 minimum).

use std::sync::OnceLock;

use super::act::QK;

/// The instruction set the kernels run with, chosen once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Vnni,
    Avx2,
    Portable,
}

impl Isa {
    pub fn get() -> Self {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 =
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
                if avx2
                    && std::is_x86_feature_detected!("avx512vnni")
                    && std::is_x86_feature_detected!("avx512vl")
                {
                    return Isa::Vnni;
                }
                if avx2 {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Vnni => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// The per-block term a Q4 row adds to its nibble products: `scale · Σ_b off[b] · s_x[b]`,
/// with `off` the Q4_1 minimums (`scale` 1) or the Q4_0 scales (`scale` −8, the offset of 8).
#[derive(Clone, Copy)]
pub struct Q4Offset<'a> {
    pub off: &'a [f32],
    pub scale: f32,
    /// The activation row's block sums `d_x · Σ q_x`.
    pub xs: &'a [f32],
}

/// `R` Q4 rows (`qs`: `R·nb·16` bytes, `d`: `R·nb` scales) with one activation row, their
/// offset terms added.
#[inline]
pub fn q4_dots<const R: usize>(
    isa: Isa,
    (qs, d): (&[u8], &[f32]),
    xq: &[i8],
    xd: &[f32],
    o: Q4Offset<'_>,
) -> [f32; R] {
    let nb = xd.len();
    assert!(qs.len() >= R * nb * 16 && d.len() >= R * nb && xq.len() >= nb * QK);
    assert!(o.off.len() >= R * nb && o.xs.len() >= nb);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::get` saw the features; the lengths are checked above.
        Isa::Vnni => unsafe { x86::q4_vnni::<R>(qs.as_ptr(), d.as_ptr(), xq.as_ptr(), xd, o) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::q4_avx2::<R>(qs.as_ptr(), d.as_ptr(), xq.as_ptr(), xd, o) },
        _ => std::array::from_fn(|r| {
            let off: f32 = (0..nb).map(|b| o.off[r * nb + b] * o.xs[b]).sum();
            q4_portable(&qs[r * nb * 16..], &d[r * nb..], xq, xd) + o.scale * off
        }),
    }
}

/// `R` Q8 rows (`qs`: `R·nb·32` bytes, `d`: `R·nb` scales) with one activation row.
#[inline]
pub fn q8_dots<const R: usize>(isa: Isa, qs: &[i8], d: &[f32], xq: &[i8], xd: &[f32]) -> [f32; R] {
    let nb = xd.len();
    assert!(qs.len() >= R * nb * QK && d.len() >= R * nb && xq.len() >= nb * QK);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::get` saw the features; the lengths are checked above.
        Isa::Vnni => unsafe { x86::q8_vnni::<R>(qs.as_ptr(), d.as_ptr(), xq.as_ptr(), xd, nb) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::q8_avx2::<R>(qs.as_ptr(), d.as_ptr(), xq.as_ptr(), xd, nb) },
        _ => std::array::from_fn(|r| q8_portable(&qs[r * nb * QK..], &d[r * nb..], xq, xd)),
    }
}

/// The reference: one Q4 row.
pub fn q4_portable(qs: &[u8], d: &[f32], xq: &[i8], xd: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, &dx) in xd.iter().enumerate() {
        let mut s = 0i32;
        for j in 0..16 {
            let byte = qs[b * 16 + j];
            s += i32::from(byte & 0x0f) * i32::from(xq[b * QK + j]);
            s += i32::from(byte >> 4) * i32::from(xq[b * QK + j + 16]);
        }
        acc += d[b] * dx * s as f32;
    }
    acc
}

/// The reference: one Q8 row.
pub fn q8_portable(qs: &[i8], d: &[f32], xq: &[i8], xd: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, &dx) in xd.iter().enumerate() {
        let s: i32 = (0..QK)
            .map(|j| i32::from(qs[b * QK + j]) * i32::from(xq[b * QK + j]))
            .sum();
        acc += d[b] * dx * s as f32;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    unsafe fn dp_vnni(w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dp_avx2(w: __m256i, x: __m256i) -> __m256i {
        // Nibbles (≤ 15) or |i8| (≤ 128) times i8, two per i16: no saturation.
        _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    macro_rules! kernels {
        ($q4:ident, $q8:ident, $feat:literal, $dp:ident) => {
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q4<const R: usize>(
                qs: *const u8,
                d: *const f32,
                xq: *const i8,
                xd: &[f32],
                o: super::Q4Offset<'_>,
            ) -> [f32; R] {
                let nb = xd.len();
                let mask = _mm_set1_epi8(0x0f);
                let mut acc = [_mm256_setzero_ps(); R];
                let mut offs = [0f32; R];
                let off = o.off.as_ptr();
                for (b, &dx) in xd.iter().enumerate() {
                    let xv = _mm256_loadu_si256(xq.add(b * 32).cast());
                    let sb = *o.xs.get_unchecked(b);
                    for (r, a) in acc.iter_mut().enumerate() {
                        offs[r] += *off.add(r * nb + b) * sb;
                        let raw = _mm_loadu_si128(qs.add((r * nb + b) * 16).cast());
                        let lo = _mm_and_si128(raw, mask);
                        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                        let p = $dp(_mm256_set_m128i(hi, lo), xv);
                        let scale = _mm256_set1_ps(*d.add(r * nb + b) * dx);
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, *a);
                    }
                }
                std::array::from_fn(|r| hsum(acc[r]) + o.scale * offs[r])
            }

            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q8<const R: usize>(
                qs: *const i8,
                d: *const f32,
                xq: *const i8,
                xd: &[f32],
                nb: usize,
            ) -> [f32; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                for (b, &dx) in xd.iter().enumerate().take(nb) {
                    let xv = _mm256_loadu_si256(xq.add(b * 32).cast());
                    for (r, a) in acc.iter_mut().enumerate() {
                        let w = _mm256_loadu_si256(qs.add((r * nb + b) * 32).cast());
                        // |w| as unsigned bytes times x carrying w's sign.
                        let p = $dp(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
                        let scale = _mm256_set1_ps(*d.add(r * nb + b) * dx);
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, *a);
                    }
                }
                std::array::from_fn(|r| hsum(acc[r]))
            }
        };
    }

    kernels!(q4_vnni, q8_vnni, "avx2,fma,avx512vnni,avx512vl", dp_vnni);
    kernels!(q4_avx2, q8_avx2, "avx2,fma", dp_avx2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::backend::quant::act::ActQ8;

    fn data(nb: usize, rows: usize) -> (Vec<u8>, Vec<i8>, Vec<f32>, ActQ8) {
        let q4: Vec<u8> = (0..rows * nb * 16)
            .map(|i| ((i * 97 + 13) % 256) as u8)
            .collect();
        let q8: Vec<i8> = (0..rows * nb * 32)
            .map(|i| ((i * 61 + 5) % 256) as u8 as i8)
            .collect();
        let d: Vec<f32> = (0..rows * nb)
            .map(|i| 0.01 + (i % 7) as f32 * 0.003)
            .collect();
        let x: Vec<f32> = (0..nb * 32)
            .map(|i| ((i * 31) % 19) as f32 * 0.2 - 1.7)
            .collect();
        (q4, q8, d, ActQ8::new(&x, nb * 32))
    }

    /// Every instruction set this CPU has gives the reference's value (the integer sums are
    /// exact; only the f32 accumulation order differs).
    #[test]
    fn kernels_match_the_portable_reference() {
        let (nb, rows) = (5, 4);
        let (q4, q8, d, x) = data(nb, rows);
        let (xq, xd, _) = x.row(0);
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if Isa::get() == Isa::Vnni {
                isas.push(Isa::Vnni);
            }
        }
        let (_, _, xs) = x.row(0);
        let off = Q4Offset {
            off: &d,
            scale: -8.0,
            xs,
        };
        for isa in isas {
            let a = q4_dots::<4>(isa, (&q4, &d), xq, xd, off);
            let b = q8_dots::<4>(isa, &q8, &d, xq, xd);
            for r in 0..rows {
                let o: f32 = (0..nb).map(|b| d[r * nb + b] * xs[b]).sum();
                let want4 = q4_portable(&q4[r * nb * 16..], &d[r * nb..], xq, xd) - 8.0 * o;
                let want8 = q8_portable(&q8[r * nb * 32..], &d[r * nb..], xq, xd);
                assert!(
                    (a[r] - want4).abs() <= 1e-4 * want4.abs().max(1.0),
                    "{isa:?} q4"
                );
                assert!(
                    (b[r] - want8).abs() <= 1e-4 * want8.abs().max(1.0),
                    "{isa:?} q8"
                );
            }
        }
    }
}
