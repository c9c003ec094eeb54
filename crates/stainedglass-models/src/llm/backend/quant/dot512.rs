//! Q4 and Q8 rows times 8-bit activation rows with 512-bit AVX-512 VNNI: the kernels decoding
//! and batched requests spend their time in (Q8: the bundled model's embedding table as LM
//! head). `dot.rs`'s 256-bit tiles spend four vector
//! instructions (product, conversion, two scalings) per pair of 32 values and a scalar product
//! per pair for the Q4 offset; measured on the bundled model's shapes they reach 40–65 GMAC/s
//! on two Zen 4 cores. Here one `vpdpbusd` on a 512-bit register covers one block of **four**
//! weight rows for one activation row, so the conversion and scalings are paid once per four
//! rows:
//!
//! - the weights: each row's 16 bytes go to their own 128-bit lane (lane `r` = row `r`), low
//!   nibbles (values 0–15) and high nibbles (16–31) masked out — no shuffles, the stored layout
//!   as it is;
//! - the activations: a block's first and last 16 bytes broadcast to every lane (one load each);
//! - two `vpdpbusd` leave, in lane `r`, four partial sums of row `r`'s block; they are converted
//!   once and scaled by `d_w[r] · d_x` (the row's scale broadcast over its lane);
//! - the offset term (the Q4_1 minimum or Q4_0's −8·d, times the activation block sum) joins
//!   the same accumulator at a quarter in each of the lane's four floats (exact: a power of two);
//! - at the tile's end each lane's four floats are summed.
//!
//! Q8 rows go the same way (lane `r` of two registers: row `r`'s first and last 16 values), with
//! `dot.rs`'s unsigned-activation trick. Up to [`M_MAX`] activation rows share each unpacked
//! weight block. The integer sums are the
//! same as the reference's (`dot::q4_portable`); only the order of the f32 accumulation
//! differs.

#[cfg(target_arch = "x86_64")]
use super::act::QK;
use super::dot::{self, ActRow, Isa, Q4Offset};
#[cfg(target_arch = "x86_64")]
use super::tile16::rows4;

/// The most activation rows one pass over the weights takes.
pub const M_MAX: usize = 8;

/// Weight rows `0..rows` in tiles of 4: `write(t, r, value)` for activation row `t` and weight
/// row `r`, the value `dot::q4_rows` gives. Rows past the last full tile are left to the caller
/// (returned: the first row not written).
///
/// # Panics
/// If the slices are shorter than `rows` rows of `nb` blocks, or the CPU lacks the features
/// ([`Isa::Vnni512`]).
pub fn q4_tiles<const M: usize>(
    (qs, d): (&[u8], &[f32]),
    o: Q4Offset<'_>,
    x: &[ActRow<'_>; M],
    rows: usize,
    write: &mut impl FnMut(usize, usize, f32),
) -> usize {
    let nb = dot::q4_blocks((qs, d), o, x, rows);
    assert!(
        Isa::get() == Isa::Vnni512,
        "the 512-bit Q4 kernel needs AVX-512 F, BW and VNNI"
    );
    let full = rows / 4 * 4;
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (write, nb);
    #[cfg(target_arch = "x86_64")]
    for j in (0..full).step_by(4) {
        // SAFETY: the features are checked above; rows `j..j + 4` of `nb` blocks are in
        // bounds (lengths checked above).
        let v = unsafe {
            q4_tile4::<M>(
                qs.as_ptr().add(j * nb * 16),
                d.as_ptr().add(j * nb),
                (o.off.as_ptr().add(j * nb), o.scale),
                x,
                nb,
            )
        };
        put_tile(&v, j, write);
    }
    full
}

/// Q8 rows `0..rows` in tiles of 4, as [`q4_tiles`]: `write(t, r, value)` gets the value
/// `dot::q8_rows` gives; returns the first row not written.
///
/// # Panics
/// As [`q4_tiles`].
pub fn q8_tiles<const M: usize>(
    (qs, d): (&[i8], &[f32]),
    x: &[ActRow<'_>; M],
    rows: usize,
    write: &mut impl FnMut(usize, usize, f32),
) -> usize {
    let nb = dot::q8_blocks((qs, d), x, rows);
    assert!(
        Isa::get() == Isa::Vnni512,
        "the 512-bit Q8 kernel needs AVX-512 F, BW and VNNI"
    );
    let full = rows / 4 * 4;
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (write, nb);
    #[cfg(target_arch = "x86_64")]
    for j in (0..full).step_by(4) {
        // SAFETY: as in `q4_tiles`.
        let v =
            unsafe { q8_tile4::<M>(qs.as_ptr().add(j * nb * QK), d.as_ptr().add(j * nb), x, nb) };
        put_tile(&v, j, write);
    }
    full
}

/// A tile's values (`v[r][t]`: weight row `j + r`, activation row `t`) to `write`.
#[cfg(target_arch = "x86_64")]
fn put_tile<const M: usize>(
    v: &[[f32; M]; 4],
    j: usize,
    write: &mut impl FnMut(usize, usize, f32),
) {
    for (r, vr) in v.iter().enumerate() {
        for (t, &val) in vr.iter().enumerate() {
            write(t, j + r, val);
        }
    }
}

/// Four Q8 rows: lane `r` of the two weight registers holds row `r`'s first and last 16
/// values; the activations are made unsigned (`x + 128`, a flipped sign bit) and each
/// accumulator starts at `−128 · Σ w`, so one `vpdpbusd` multiplies signed by signed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q8_tile4<const M: usize>(
    qs: *const i8,
    d: *const f32,
    x: &[ActRow<'_>; M],
    nb: usize,
) -> [[f32; M]; 4] {
    use std::arch::x86_64::*;
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); M];
    for b in 0..nb {
        let p = qs.add(b * QK).cast::<u8>();
        let (wa, wb) = (rows4(p, nb * QK), rows4(p.add(16), nb * QK));
        let sum = _mm512_dpbusd_epi32(
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, wa),
            flip,
            wb,
        );
        let start = _mm512_sub_epi32(_mm512_setzero_si512(), sum);
        let dw = lanes(d.add(b), nb);
        for (m, a) in x.iter().enumerate() {
            let xq = a.q.as_ptr().add(b * QK);
            let xlo = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128(xq.cast())), flip);
            let xhi = _mm512_xor_si512(
                _mm512_broadcast_i32x4(_mm_loadu_si128(xq.add(16).cast())),
                flip,
            );
            let t = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start, xlo, wa), xhi, wb);
            let s = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(b)));
            acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), s, acc[m]);
        }
    }
    lane_sums(&acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q4_tile4<const M: usize>(
    qs: *const u8,
    d: *const f32,
    (off, off_scale): (*const f32, f32),
    x: &[ActRow<'_>; M],
    nb: usize,
) -> [[f32; M]; 4] {
    use std::arch::x86_64::*;
    let mask = _mm512_set1_epi8(0x0f);
    let quarter = _mm512_set1_ps(0.25 * off_scale);
    let mut acc = [_mm512_setzero_ps(); M];
    for b in 0..nb {
        let raw = rows4(qs.add(b * 16), nb * 16);
        let lo = _mm512_and_si512(raw, mask);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), mask);
        let dw = lanes(d.add(b), nb);
        let ow = _mm512_mul_ps(lanes(off.add(b), nb), quarter);
        for (m, a) in x.iter().enumerate() {
            let xq = a.q.as_ptr().add(b * QK);
            let xlo = _mm512_broadcast_i32x4(_mm_loadu_si128(xq.cast()));
            let xhi = _mm512_broadcast_i32x4(_mm_loadu_si128(xq.add(16).cast()));
            let t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo);
            let t = _mm512_dpbusd_epi32(t, hi, xhi);
            let s = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(b)));
            let am = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), s, acc[m]);
            acc[m] = _mm512_fmadd_ps(ow, _mm512_set1_ps(*a.s.get_unchecked(b)), am);
        }
    }
    lane_sums(&acc)
}

/// Each accumulator's four lanes summed: `out[r][m]` from lane `r` of `acc[m]`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn lane_sums<const M: usize>(acc: &[std::arch::x86_64::__m512; M]) -> [[f32; M]; 4] {
    let mut out = [[0f32; M]; 4];
    for (m, v) in acc.iter().enumerate() {
        let mut lanes = [0f32; 16];
        std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), *v);
        for (r, o) in out.iter_mut().enumerate() {
            o[m] = (lanes[4 * r] + lanes[4 * r + 1]) + (lanes[4 * r + 2] + lanes[4 * r + 3]);
        }
    }
    out
}

/// `p[r·stride]` for the 4 rows, each broadcast over its 128-bit lane.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn lanes(p: *const f32, stride: usize) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let v = _mm512_castps128_ps512(_mm_set1_ps(*p));
    let v = _mm512_insertf32x4::<1>(v, _mm_set1_ps(*p.add(stride)));
    let v = _mm512_insertf32x4::<2>(v, _mm_set1_ps(*p.add(2 * stride)));
    _mm512_insertf32x4::<3>(v, _mm_set1_ps(*p.add(3 * stride)))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::llm::backend::quant::act::ActQ8;
    use crate::llm::backend::quant::dot::{q4_portable, q8_portable};
    use crate::llm::backend::quant::tile16;

    /// Runs a kernel of tiles of 16 weight rows (`run`, given the writer; it returns the rows
    /// done) and checks that its whole tiles agree with the tiles of 4's values `got` up to
    /// the order of the f32 sums, and that it wrote no row past them.
    fn wide_agrees<const M: usize>(
        got: &[[f32; M]],
        what: &str,
        run: impl FnOnce(&mut dyn FnMut(usize, usize, &[f32; tile16::ROWS])) -> usize,
    ) {
        let rows = got.len();
        let mut wide = vec![[f32::NAN; M]; rows];
        let done16 = run(&mut |t, j, v| {
            for (r, &val) in v.iter().enumerate() {
                wide[j + r][t] = val;
            }
        });
        assert_eq!(done16, rows / 16 * 16);
        for (r, (g, w)) in got.iter().zip(&wide).enumerate() {
            for (a, b) in g.iter().zip(w) {
                if r < done16 {
                    assert!(
                        (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                        "{what} M={M}: {a} vs {b}"
                    );
                } else {
                    assert!(b.is_nan(), "{what} tile16 wrote row {r} past its tiles");
                }
            }
        }
    }

    /// Every tile and activation-row count against the reference, Q4_0 and Q4_1 offsets, with
    /// nibbles 0 and 15 and activations ±127 included.
    #[test]
    fn tiles_match_the_portable_reference() {
        if Isa::get() != Isa::Vnni512 {
            eprintln!("no AVX-512 VNNI on this CPU: the 512-bit kernel is not tested here");
            return;
        }
        let (nb, rows) = (7, 39);
        let qs: Vec<u8> = (0..rows * nb * 16)
            .map(|i| ((i * 97 + 13) % 256) as u8)
            .collect();
        assert!(qs.contains(&0xff) && qs.contains(&0));
        // Scales that differ from row to row (a tile that took a wrong row's would fail).
        let d: Vec<f32> = (0..rows * nb)
            .map(|i| 0.01 + (i * 13 % 17) as f32 * 0.003)
            .collect();
        let mins: Vec<f32> = (0..rows * nb)
            .map(|i| -0.05 + (i % 5) as f32 * 0.02)
            .collect();
        let xs: Vec<f32> = (0..M_MAX * nb * 32)
            .map(|i| ((i * 31) % 19) as f32 * 0.2 - 1.8)
            .collect();
        let act = ActQ8::new(&xs, nb * 32);
        assert!(act.qs.contains(&127) && act.qs.contains(&-127));
        fn run<const M: usize>(
            act: &ActQ8,
            (qs, d): (&[u8], &[f32]),
            o: Q4Offset<'_>,
            rows: usize,
        ) {
            let nb = act.nb;
            let x: [ActRow<'_>; M] = std::array::from_fn(|t| {
                let (q, d, s) = act.row(t);
                ActRow { q, d, s }
            });
            let mut got = vec![[f32::NAN; M]; rows];
            let done = q4_tiles::<M>((qs, d), o, &x, rows, &mut |t, r, v| got[r][t] = v);
            assert_eq!(done, rows / 4 * 4);
            // SAFETY: the features are checked by the caller.
            wide_agrees(&got, "Q4", |put| unsafe {
                tile16::q4_tiles16((qs, d), o, &x, rows, &mut &mut *put)
            });
            for (r, g) in got.iter().enumerate().take(done) {
                for (t, a) in x.iter().enumerate() {
                    let off: f32 = (0..nb).map(|b| o.off[r * nb + b] * a.s[b]).sum();
                    let want =
                        q4_portable(&qs[r * nb * 16..], &d[r * nb..], a.q, a.d) + o.scale * off;
                    assert!(
                        (g[t] - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "M={M} [{r}][{t}]: {} vs {want}",
                        g[t]
                    );
                }
            }
            assert!(got[done..].iter().all(|g| g.iter().all(|v| v.is_nan())));
        }
        for o in [
            Q4Offset {
                off: &d,
                scale: -8.0,
            },
            Q4Offset {
                off: &mins,
                scale: 1.0,
            },
        ] {
            let w = (&qs[..], &d[..]);
            run::<1>(&act, w, o, rows);
            run::<3>(&act, w, o, rows);
            run::<4>(&act, w, o, rows);
            run::<8>(&act, w, o, 20);
            run::<2>(&act, w, o, 16);
            run::<5>(&act, w, o, 3);
        }
        let q8: Vec<i8> = (0..rows * nb * 32)
            .map(|i| ((i * 61 + 5) % 256) as u8 as i8)
            .collect();
        assert!(q8.contains(&-128) && q8.contains(&127));
        fn run8<const M: usize>(act: &ActQ8, (qs, d): (&[i8], &[f32]), rows: usize) {
            let x: [ActRow<'_>; M] = std::array::from_fn(|t| {
                let (q, d, s) = act.row(t);
                ActRow { q, d, s }
            });
            let nb = act.nb;
            let mut got = vec![[f32::NAN; M]; rows];
            let done = q8_tiles::<M>((qs, d), &x, rows, &mut |t, r, v| got[r][t] = v);
            assert_eq!(done, rows / 4 * 4);
            // SAFETY: the features are checked by the caller.
            wide_agrees(&got, "Q8", |put| unsafe {
                tile16::q8_tiles16((qs, d), &x, rows, &mut &mut *put)
            });
            for (r, g) in got.iter().enumerate().take(done) {
                for (t, a) in x.iter().enumerate() {
                    let want = q8_portable(&qs[r * nb * 32..], &d[r * nb..], a.q, a.d);
                    assert!(
                        (g[t] - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "Q8 M={M} [{r}][{t}]: {} vs {want}",
                        g[t]
                    );
                }
            }
            assert!(got[done..].iter().all(|g| g.iter().all(|v| v.is_nan())));
        }
        run8::<1>(&act, (&q8, &d), rows);
        run8::<4>(&act, (&q8, &d), rows);
        run8::<7>(&act, (&q8, &d), rows);
        run8::<8>(&act, (&q8, &d), 20);
        run8::<2>(&act, (&q8, &d), 16);
    }

    /// One thread, 3072 Q4_1 rows of 576 (the bundled model's fused gate|up) times 1 and 16
    /// activation rows: tiles of 16 weight rows (`tile16.rs`) against tiles of 4, alternating
    /// (`cargo test --release -p stainedglass-models dot512_speed -- --ignored --nocapture`):
    /// a measurement, not a check.
    #[test]
    #[ignore]
    fn dot512_speed() {
        if Isa::get() != Isa::Vnni512 {
            return;
        }
        let (rows, nb) = (3072, 18);
        let qs: Vec<u8> = (0..rows * nb * 16).map(|i| (i * 97 % 256) as u8).collect();
        let d: Vec<f32> = (0..rows * nb)
            .map(|i| 0.01 + (i % 7) as f32 * 1e-3)
            .collect();
        let xs: Vec<f32> = (0..16 * nb * 32)
            .map(|i| (i % 19) as f32 * 0.1 - 0.9)
            .collect();
        let act = ActQ8::new(&xs, nb * 32);
        let o = Q4Offset {
            off: &d,
            scale: 1.0,
        };
        let mut sink = 0f32;
        let mut put = |_: usize, _: usize, v: f32| sink += v;
        fn pass<const M: usize>(
            act: &ActQ8,
            w: (&[u8], &[f32]),
            o: Q4Offset<'_>,
            (rows, m): (usize, usize),
            put: &mut impl FnMut(usize, usize, f32),
        ) -> f64 {
            let t = std::time::Instant::now();
            for _ in 0..20 {
                for g in (0..m).step_by(M) {
                    let x: [ActRow<'_>; M] = std::array::from_fn(|t| {
                        let (q, d, s) = act.row(g + t);
                        ActRow { q, d, s }
                    });
                    q4_tiles::<M>(w, o, &x, rows, put);
                }
            }
            t.elapsed().as_secs_f64()
        }
        let w = (&qs[..], &d[..]);
        let all: Vec<ActRow<'_>> = (0..16)
            .map(|t| {
                let (q, d, s) = act.row(t);
                ActRow { q, d, s }
            })
            .collect();
        let mut sink16 = 0f32;
        let mut put16 = |_: usize, _: usize, v: &[f32; tile16::ROWS]| sink16 += v[0];
        for _ in 0..5 {
            for m in [1, 4, 16] {
                let t = std::time::Instant::now();
                for _ in 0..20 {
                    // SAFETY: the features are checked above.
                    unsafe { tile16::q4_tiles16(w, o, &all[..m], rows, &mut put16) };
                }
                let wide = t.elapsed().as_secs_f64();
                let narrow = match m {
                    1 => pass::<1>(&act, w, o, (rows, m), &mut put),
                    4 => pass::<4>(&act, w, o, (rows, m), &mut put),
                    _ => pass::<M_MAX>(&act, w, o, (rows, m), &mut put),
                };
                let macs = (20 * rows * nb * 32 * m) as f64;
                println!(
                    "{{\"activation_rows\":{m},\"tile16_gmac_per_s\":{:.1},\"tile4_gmac_per_s\":{:.1},\"ratio\":{:.2}}}",
                    macs / wide / 1e9,
                    macs / narrow / 1e9,
                    narrow / wide
                );
            }
        }
        assert!(sink.is_finite() && sink16.is_finite());
    }
}
