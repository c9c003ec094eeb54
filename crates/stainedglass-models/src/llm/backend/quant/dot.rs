//! Dot products of quantized weight rows with quantized activation rows, written here rather
//! than taken from candle: candle 0.11's CPU Q4_1 dot product is scalar, and its Q4_0/Q8_0 ones
//! run one row at a time. These multiply a tile of `R` weight rows by `M` activation rows (each
//! weight block unpacked once for all `M`, each activation block loaded once for all `R`: a
//! batch of decoding requests shares the unpacking) with AVX-512 VNNI (`vpdpbusd`, 256-bit)
//! when the CPU has it, AVX2 (`vpmaddubsw` + `vpmaddwd`) otherwise, and a portable loop — the
//! reference the tests compare against — elsewhere. Q8 weights with VNNI take the activations
//! as unsigned bytes (`x + 128`) and start each accumulator at `−128·Σw`, one instruction per
//! pair instead of two sign fix-ups.
//!
//! Layouts (llama.cpp's, with f32 scales): a Q4 block is 16 bytes, byte `j` holding value `j`
//! in its low nibble and value `j + 16` in its high one; a Q8 block is 32 signed bytes. Each
//! returns `Σ_b d_w[b] · d_x[b] · Σ_i w_i · x_i` over the row's blocks, with Q4 values taken as
//! unsigned nibbles plus the Q4_0 offset or the Q4_1 minimum times the activation block sums.

use std::sync::OnceLock;

use super::act::QK;

/// The instruction set the kernels run with, chosen once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI with 512-bit registers (F and BW too): Q4 and Q8 rows take `dot512.rs`'s
    /// tiles of 4, the rows past the last tile the 256-bit VNNI ones.
    Vnni512,
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
                    if std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                    {
                        return Isa::Vnni512;
                    }
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
            Isa::Vnni512 => "avx512-vnni-512",
            Isa::Vnni => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// One activation row's quantized blocks (`q`: `nb·32` values, `d`: `nb` scales, `s`: `nb`
/// block sums `d·Σq`).
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// The per-block term Q4 rows add to their nibble products: `scale · Σ_b off[b] · s_x[b]`,
/// with `off` the Q4_1 minimums (`scale` 1) or the Q4_0 scales (`scale` −8, the offset of 8);
/// `off` holds `R·nb` values like the scales.
#[derive(Clone, Copy)]
pub struct Q4Offset<'a> {
    pub off: &'a [f32],
    pub scale: f32,
}

/// The blocks per row of the activation rows `x`, after checking that `rows` Q4 rows of that
/// many blocks (16 bytes, a scale and an offset each) and every activation row are in bounds:
/// the check each Q4 kernel makes before its unchecked reads.
///
/// # Panics
/// If any slice is too short or the activation rows differ in length.
pub fn q4_blocks(
    (qs, d): (&[u8], &[f32]),
    o: Q4Offset<'_>,
    x: &[ActRow<'_>],
    rows: usize,
) -> usize {
    let nb = x.first().map_or(0, |a| a.d.len());
    assert!(qs.len() >= rows * nb * 16 && d.len() >= rows * nb && o.off.len() >= rows * nb);
    assert!(x
        .iter()
        .all(|a| a.d.len() == nb && a.s.len() == nb && a.q.len() >= nb * QK));
    nb
}

/// As [`q4_blocks`], for Q8_0 rows (32 bytes and a scale per block).
///
/// # Panics
/// As [`q4_blocks`].
pub fn q8_blocks((qs, d): (&[i8], &[f32]), x: &[ActRow<'_>], rows: usize) -> usize {
    let nb = x.first().map_or(0, |a| a.d.len());
    assert!(qs.len() >= rows * nb * QK && d.len() >= rows * nb);
    assert!(x.iter().all(|a| a.d.len() == nb && a.q.len() >= nb * QK));
    nb
}

/// `rows` Q4 rows (`qs`: `rows·nb·16` bytes, `d`: `rows·nb` scales, `o.off` as many offsets)
/// times `M` activation rows, in tiles of 4 weight rows × `M`: `write(t, r, value)` gets
/// `Σ_b d_w[b] · d_x[b] · Σ_i nibble_i · x_i` plus the offset term for activation row `t` and
/// weight row `r`. Each weight block is unpacked once for all `M` rows, each activation block
/// loaded once for 4 weight rows.
#[inline]
pub fn q4_rows<const M: usize>(
    isa: Isa,
    (qs, d): (&[u8], &[f32]),
    o: Q4Offset<'_>,
    x: &[ActRow<'_>; M],
    rows: usize,
    write: &mut impl FnMut(usize, usize, f32),
) {
    let nb = q4_blocks((qs, d), o, x, rows);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::get` saw the features; the lengths are checked above.
        Isa::Vnni | Isa::Vnni512 => unsafe {
            x86::q4_vnni::<M, _>(qs.as_ptr(), d.as_ptr(), o, x, (nb, rows), write)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe {
            x86::q4_avx2::<M, _>(qs.as_ptr(), d.as_ptr(), o, x, (nb, rows), write)
        },
        _ => {
            for r in 0..rows {
                for (t, a) in x.iter().enumerate() {
                    let off: f32 = (0..nb).map(|b| o.off[r * nb + b] * a.s[b]).sum();
                    let v = q4_portable(&qs[r * nb * 16..], &d[r * nb..], a.q, a.d);
                    write(t, r, v + o.scale * off);
                }
            }
        }
    }
}

/// `rows` Q8 rows (`qs`: `rows·nb·32` bytes, `d`: `rows·nb` scales) times `M` activation rows,
/// as [`q4_rows`].
#[inline]
pub fn q8_rows<const M: usize>(
    isa: Isa,
    w: (&[i8], &[f32]),
    x: &[ActRow<'_>; M],
    rows: usize,
    write: &mut impl FnMut(usize, usize, f32),
) {
    signed_rows::<M, false>(isa, w, x, rows, write)
}

/// `rows` Q6_K rows as `q6k.rs` unpacks them (`qs`: `rows·nb·32` signed bytes, `d`:
/// `rows·nb·2` group scales) times `M` activation rows, as [`q8_rows`].
///
/// # Panics
/// As [`q4_blocks`].
#[inline]
pub fn q6_rows<const M: usize>(
    isa: Isa,
    w: (&[i8], &[f32]),
    x: &[ActRow<'_>; M],
    rows: usize,
    write: &mut impl FnMut(usize, usize, f32),
) {
    signed_rows::<M, true>(isa, w, x, rows, write)
}

/// Rows of signed bytes with one scale per block (Q8_0) or two (`SIX`: Q6_K's groups of 16).
#[inline]
fn signed_rows<const M: usize, const SIX: bool>(
    isa: Isa,
    (qs, d): (&[i8], &[f32]),
    x: &[ActRow<'_>; M],
    rows: usize,
    write: &mut impl FnMut(usize, usize, f32),
) {
    let per_block = if SIX { 2 } else { 1 };
    let nb = q8_blocks((qs, d), x, rows);
    assert!(d.len() >= rows * nb * per_block);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::get` saw the features; the lengths are checked above.
        Isa::Vnni | Isa::Vnni512 => unsafe {
            x86::q8_vnni::<M, SIX, _>(qs.as_ptr(), d.as_ptr(), x, (nb, rows), write)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe {
            x86::q8_avx2::<M, SIX, _>(qs.as_ptr(), d.as_ptr(), x, (nb, rows), write)
        },
        _ => {
            for r in 0..rows {
                let (qs, d) = (&qs[r * nb * QK..], &d[r * nb * per_block..]);
                for (t, a) in x.iter().enumerate() {
                    let v = if SIX {
                        q6_portable(qs, d, a.q, a.d)
                    } else {
                        q8_portable(qs, d, a.q, a.d)
                    };
                    write(t, r, v);
                }
            }
        }
    }
}

/// The reference: one Q6_K row (two group scales per block).
pub fn q6_portable(qs: &[i8], d: &[f32], xq: &[i8], xd: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, &dx) in xd.iter().enumerate() {
        let half = |h: usize| -> f32 {
            let s: i32 = (h * 16..h * 16 + 16)
                .map(|j| i32::from(qs[b * QK + j]) * i32::from(xq[b * QK + j]))
                .sum();
            d[2 * b + h] * s as f32
        };
        acc += dx * (half(0) + half(1));
    }
    acc
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
    use super::{ActRow, Q4Offset};
    use std::arch::x86_64::*;

    /// Unsigned bytes (nibbles) times signed bytes, summed in fours.
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

    /// Q8 with VNNI: the activations are made unsigned (`x + 128`, a flipped sign bit) once per
    /// block, and each weight block's `−128 · Σ w` starts its accumulator: one `vpdpbusd` per
    /// pair.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    unsafe fn q8w_vnni(w: __m256i) -> (__m256i, __m256i) {
        let c = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(-128), w);
        (w, _mm256_sub_epi32(_mm256_setzero_si256(), c))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    unsafe fn q8x_vnni(x: __m256i) -> __m256i {
        _mm256_xor_si256(x, _mm256_set1_epi8(-128))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    unsafe fn q8dp_vnni((w, c): (__m256i, __m256i), xu: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(c, xu, w)
    }

    /// Q8 with AVX2: |w| as unsigned bytes times x carrying w's sign.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q8w_avx2(w: __m256i) -> (__m256i, __m256i) {
        (_mm256_sign_epi8(w, w), w)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q8x_avx2(x: __m256i) -> __m256i {
        x
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q8dp_avx2((aw, w): (__m256i, __m256i), x: __m256i) -> __m256i {
        dp_avx2(aw, _mm256_sign_epi8(x, w))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The block loop both tiles share: `$wblock(r, b)` gives weight row `r`'s block `b`
    /// prepared, `$xprep` prepares an activation block, `$dot` multiplies a pair; `$off`, a Q4
    /// offset or `None`, adds its per-block term (scalar: one product per pair and block).
    macro_rules! tile {
        ($r:expr, $m:ident, $d:ident, $off:ident, $x:ident, $nb:ident,
         |$rr:ident, $bb:ident| $wblock:expr, $xprep:ident, $dot:ident) => {
            tile!(
                $r,
                $m,
                $d,
                $off,
                $x,
                $nb,
                |$rr, $bb| $wblock,
                $xprep,
                $dot,
                one_scale
            )
        };
        ($r:expr, $m:ident, $d:ident, $off:ident, $x:ident, $nb:ident,
         |$rr:ident, $bb:ident| $wblock:expr, $xprep:ident, $dot:ident, $dw:expr) => {{
            let mut acc = [[_mm256_setzero_ps(); $m]; $r];
            let mut offs = [[0f32; $m]; $r];
            let mut xp = [std::ptr::null::<i8>(); $m];
            let mut xd = [std::ptr::null::<f32>(); $m];
            let mut xs = [std::ptr::null::<f32>(); $m];
            for m in 0..$m {
                xp[m] = $x[m].q.as_ptr();
                xd[m] = $x[m].d.as_ptr();
                xs[m] = $x[m].s.as_ptr();
            }
            let off: Option<Q4Offset<'_>> = $off;
            let mut xv = [_mm256_setzero_si256(); $m];
            let mut dx = [_mm256_setzero_ps(); $m];
            for $bb in 0..$nb {
                let mut xsb = [0f32; $m];
                for m in 0..$m {
                    xv[m] = $xprep(_mm256_loadu_si256(xp[m].add($bb * 32).cast()));
                    dx[m] = _mm256_set1_ps(*xd[m].add($bb));
                    xsb[m] = *xs[m].add($bb);
                }
                for $rr in 0..$r {
                    let w = $wblock;
                    let dw = ($dw)($d, $rr * $nb + $bb);
                    if let Some(o) = off {
                        // One 4-wide product per weight row (the activation sums side by side).
                        let ob = *o.off.get_unchecked($rr * $nb + $bb);
                        for m in 0..$m {
                            offs[$rr][m] += ob * xsb[m];
                        }
                    }
                    for m in 0..$m {
                        // (p · d_x) · d_w: two vector ops; written as p · (d_w · d_x) the
                        // compiler multiplies the scales as scalars and broadcasts each pair's.
                        let p = _mm256_mul_ps(_mm256_cvtepi32_ps($dot(w, xv[m])), dx[m]);
                        acc[$rr][m] = _mm256_fmadd_ps(p, dw, acc[$rr][m]);
                    }
                }
            }
            let mut out = [[0f32; $m]; $r];
            for r in 0..$r {
                for m in 0..$m {
                    out[r][m] = hsum(acc[r][m]) + off.map_or(0.0, |o| o.scale) * offs[r][m];
                }
            }
            out
        }};
    }

    /// Block `i`'s scale in every lane (Q4, Q8_0).
    #[inline(always)]
    unsafe fn one_scale(d: *const f32, i: usize) -> __m256 {
        _mm256_set1_ps(*d.add(i))
    }

    /// Block `i`'s scales: [`two_scales`] for Q6_K rows, [`one_scale`] otherwise.
    #[inline(always)]
    unsafe fn scales<const SIX: bool>(d: *const f32, i: usize) -> __m256 {
        if SIX {
            two_scales(d, i)
        } else {
            one_scale(d, i)
        }
    }

    /// Block `i`'s two group scales (Q6_K: `d[2i]` for values 0..16, lanes 0–3 of the integer
    /// products; `d[2i + 1]` for values 16..32, lanes 4–7).
    #[inline(always)]
    unsafe fn two_scales(d: *const f32, i: usize) -> __m256 {
        _mm256_set_m128(_mm_set1_ps(*d.add(2 * i + 1)), _mm_set1_ps(*d.add(2 * i)))
    }

    /// A Q4 block's 32 nibbles as bytes: values `0..16` (low nibbles) then `16..32`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q4_block(p: *const u8) -> __m256i {
        let mask = _mm_set1_epi8(0x0f);
        let raw = _mm_loadu_si128(p.cast());
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// A one-row tile as the four-row tile `row_loop!` takes (rows past the first unused).
    #[inline(always)]
    fn pad4<const M: usize>(t: [[f32; M]; 1]) -> [[f32; M]; 4] {
        let mut four = [[0f32; M]; 4];
        four[0] = t[0];
        four
    }

    /// Rows `0..rows` in tiles of 4 (then 1): `$tile` computes the tile of `$n` rows at row
    /// `$j` (as `[[f32; M]; 4]`, rows past `$n` unused) and its values go to `$write`.
    macro_rules! row_loop {
        ($rows:ident, $m:ident, $write:ident, |$j:ident, $n:ident| $tile:expr) => {{
            let mut $j = 0;
            while $j < $rows {
                let $n = if $j + 4 <= $rows { 4usize } else { 1 };
                let v: [[f32; $m]; 4] = $tile;
                for (r, vr) in v.iter().enumerate().take($n) {
                    for (t, val) in vr.iter().enumerate() {
                        $write(t, $j + r, *val);
                    }
                }
                $j += $n;
            }
        }};
    }

    macro_rules! kernels {
        ($q4:ident, $q8:ident, $feat:literal, $dp:ident, $q8w:ident, $q8x:ident, $q8dp:ident) => {
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q4<const M: usize, W: FnMut(usize, usize, f32)>(
                qs: *const u8,
                d: *const f32,
                off: Q4Offset<'_>,
                x: &[ActRow<'_>; M],
                (nb, rows): (usize, usize),
                write: &mut W,
            ) {
                #[inline(always)]
                fn same(x: __m256i) -> __m256i {
                    x
                }
                row_loop!(rows, M, write, |j, n| {
                    let (qs, d) = (qs.add(j * nb * 16), d.add(j * nb));
                    let o = Some(Q4Offset {
                        off: off.off.get_unchecked(j * nb..),
                        scale: off.scale,
                    });
                    if n == 4 {
                        let t = tile!(
                            4,
                            M,
                            d,
                            o,
                            x,
                            nb,
                            |r, b| q4_block(qs.add((r * nb + b) * 16)),
                            same,
                            $dp
                        );
                        t
                    } else {
                        let t = tile!(
                            1,
                            M,
                            d,
                            o,
                            x,
                            nb,
                            |r, b| q4_block(qs.add((r * nb + b) * 16)),
                            same,
                            $dp
                        );
                        pad4(t)
                    }
                })
            }

            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q8<
                const M: usize,
                const SIX: bool,
                W: FnMut(usize, usize, f32),
            >(
                qs: *const i8,
                d: *const f32,
                x: &[ActRow<'_>; M],
                (nb, rows): (usize, usize),
                write: &mut W,
            ) {
                let none: Option<Q4Offset<'_>> = None;
                // Q6_K rows have two scales per block.
                let per_block = if SIX { 2 } else { 1 };
                row_loop!(rows, M, write, |j, n| {
                    let (qs, d) = (qs.add(j * nb * 32), d.add(j * nb * per_block));
                    if n == 4 {
                        tile!(
                            4,
                            M,
                            d,
                            none,
                            x,
                            nb,
                            |r, b| { $q8w(_mm256_loadu_si256(qs.add((r * nb + b) * 32).cast())) },
                            $q8x,
                            $q8dp,
                            scales::<SIX>
                        )
                    } else {
                        let t = tile!(
                            1,
                            M,
                            d,
                            none,
                            x,
                            nb,
                            |r, b| { $q8w(_mm256_loadu_si256(qs.add((r * nb + b) * 32).cast())) },
                            $q8x,
                            $q8dp,
                            scales::<SIX>
                        );
                        pad4(t)
                    }
                })
            }
        };
    }

    kernels!(
        q4_vnni,
        q8_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        dp_vnni,
        q8w_vnni,
        q8x_vnni,
        q8dp_vnni
    );
    kernels!(q4_avx2, q8_avx2, "avx2,fma", dp_avx2, q8w_avx2, q8x_avx2, q8dp_avx2);
}

#[cfg(test)]
#[path = "dot_tests.rs"]
mod tests;
