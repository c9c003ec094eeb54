//! The 8-bit product: activations quantized per block of 32 (`act.rs`), integer block sums
//! (`dot.rs` for Q4_0/Q4_1/Q4_K/Q8_0, candle's per-type dot products for the rest), f32
//! accumulation — llama.cpp's numerics, the fastest path, not the f32 model's numbers.

use super::act::{ActQ8, QK};
use super::dot::{self, ActRow, Isa, Q4Offset};
use super::dot512;
use super::out_ptr::OutPtr;
use super::{ggml, q4k, q6k, Part, QMatrix};
#[cfg(target_arch = "x86_64")]
use super::{tile16, tile8};
use crate::llm::backend::gemv::dot;
use candle_core::quantized::GgmlDType;

impl QMatrix {
    /// `out (m × rows) = x (m × cols) · Wᵀ`, added to `out` when `accumulate`, with the
    /// activations quantized to 8 bits (llama.cpp's numerics).
    pub(super) fn product_int8(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
        let (n, k) = (self.rows, self.cols);
        debug_assert_eq!(x.len(), m * k);
        debug_assert_eq!(out.len(), m * n);
        let isa = Isa::get();
        // Q4_K and Q6_K rows (candle's blocks) take our tiles from `K_OWN_MIN_ROWS` activation
        // rows on.
        let unpack = |p: &Part, t: GgmlDType| {
            m >= K_OWN_MIN_ROWS && matches!(p, Part::Ggml(g) if g.dtype() == t)
        };
        let unpack_q4k = |p: &Part| unpack(p, GgmlDType::Q4K);
        let unpack_q6k = |p: &Part| unpack(p, GgmlDType::Q6K);
        let own = self.parts.iter().any(|p| {
            matches!(p, Part::Q4 { .. } | Part::Q8 { .. }) || unpack_q4k(p) || unpack_q6k(p)
        });
        let act = own.then(|| ActQ8::new(x, k));
        let preps: Vec<Option<ggml::Prepared>> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Ggml(g) if !unpack_q4k(p) && !unpack_q6k(p) => Some(g.prepare(x)),
                _ => None,
            })
            .collect();
        // Tasks of whole groups of `G` rows, several per thread.
        let per_task = (n / (rayon::current_num_threads() * 8)).clamp(16, 256) / R * R;
        let mut tasks = Vec::new();
        let mut offset = 0;
        for (pi, p) in self.parts.iter().enumerate() {
            let r = p.rows();
            tasks.extend(
                (0..r)
                    .step_by(per_task)
                    .map(|s| (pi, s, (s + per_task).min(r), offset)),
            );
            offset += r;
        }
        let out_ptr = OutPtr(out.as_mut_ptr());
        let run = |&(pi, r0, r1, offset): &(usize, usize, usize, usize)| {
            let write = |ar: usize, j: usize, v: f32| {
                // SAFETY: each (row, column) of `out` (m × n) belongs to one task.
                unsafe {
                    let p = out_ptr.at(ar * n + offset + j);
                    *p = if accumulate { *p + v } else { v };
                }
            };
            match &self.parts[pi] {
                p @ Part::Ggml(g) if unpack_q4k(p) => {
                    let Some(act) = &act else { return };
                    // 64 rows unpacked at a time, shared by every activation row.
                    let nb = k / QK;
                    let mut qs = vec![0u8; Q4K_ROWS * nb * 16];
                    let (mut d, mut mins) = (vec![0f32; Q4K_ROWS * nb], vec![0f32; Q4K_ROWS * nb]);
                    for c0 in (r0..r1).step_by(Q4K_ROWS) {
                        let rows = Q4K_ROWS.min(r1 - c0);
                        q4k::unpack_rows(g.raw(), (c0, rows, k), &mut qs, &mut d, &mut mins);
                        let view = View::Q4(&qs, &d, Some(&mins));
                        let write = |ar: usize, j: usize, v: f32| write(ar, c0 + j, v);
                        own_rows(isa, view, act, nb, (0, rows), m, write);
                    }
                }
                p @ Part::Ggml(g) if unpack_q6k(p) => {
                    let Some(act) = &act else { return };
                    // As Q4_K: 64 rows unpacked at a time, shared by every activation row.
                    let nb = k / QK;
                    let (mut qs, mut ds) = (vec![0i8; Q4K_ROWS * k], vec![0f32; Q4K_ROWS * nb * 2]);
                    for c0 in (r0..r1).step_by(Q4K_ROWS) {
                        let rows = Q4K_ROWS.min(r1 - c0);
                        q6k::unpack_rows(g.raw(), (c0, rows, k), &mut qs, &mut ds);
                        let write = |ar: usize, j: usize, v: f32| write(ar, c0 + j, v);
                        own_rows(isa, View::Q6(&qs, &ds), act, nb, (0, rows), m, write);
                    }
                }
                Part::Ggml(g) => {
                    let Some(prep) = &preps[pi] else { return };
                    for j in r0..r1 {
                        for ar in 0..m {
                            write(ar, j, g.dot(j, prep, ar));
                        }
                    }
                }
                Part::Half { kind, vals, .. } => {
                    // f32 activations: widened rows times the activation rows.
                    let mut row = vec![0f32; k];
                    for j in r0..r1 {
                        super::half_rows::widen(*kind, &vals[j * k..(j + 1) * k], &mut row);
                        for ar in 0..m {
                            write(ar, j, dot(&x[ar * k..(ar + 1) * k], &row));
                        }
                    }
                }
                Part::Q4 { d, m: mins, qs, .. } => {
                    let Some(act) = &act else { return };
                    let view = View::Q4(qs, d, mins.as_deref());
                    own_rows(isa, view, act, k / QK, (r0, r1), m, write);
                }
                Part::Q8 { d, qs, .. } => {
                    let Some(act) = &act else { return };
                    own_rows(isa, View::Q8(qs, d), act, k / QK, (r0, r1), m, write);
                }
                Part::Bf16Panels(_) => {}
            }
        };
        super::spin_pool(tasks.len(), |range| tasks[range].iter().for_each(&run));
    }
}

/// The fewest activation rows for which Q4_K and Q6_K rows are unpacked for our tiles
/// (`q4k.rs`, `q6k.rs`): one row runs candle's dot product, which reads the file's blocks once.
const K_OWN_MIN_ROWS: usize = 2;

/// Activation rows per tile (the tiles are 4 weight rows × `M`: each weight block is unpacked
/// once for `M` activation rows, each activation block loaded once for 4 weight rows).
const M: usize = 4;
/// Weight rows per task are a multiple of this (whole tiles of `tile16.rs`).
const R: usize = 16;

/// Q4, Q8_0 or Q6_K rows as the kernels take them: quants and scales from the first row on
/// (Q4: with the Q4_1 minimums, absent for Q4_0; Q6_K: two scales per block, `q6k.rs`).
#[derive(Clone, Copy)]
enum View<'a> {
    Q4(&'a [u8], &'a [f32], Option<&'a [f32]>),
    Q8(&'a [i8], &'a [f32]),
    Q6(&'a [i8], &'a [f32]),
}

/// Rows `r0..r1` of one of our parts with every activation row, `M` activation rows at a time.
fn own_rows(
    isa: Isa,
    part: View<'_>,
    act: &ActQ8,
    nb: usize,
    rows: (usize, usize),
    m: usize,
    write: impl Fn(usize, usize, f32),
) {
    #[cfg(target_arch = "x86_64")]
    let tiled = matches!(isa, Isa::Vnni512 | Isa::Avx2) && !matches!(part, View::Q6(..));
    let rows = if m >= TILE16_MIN_ROWS && tiled {
        let done = wide(isa, act, part, nb, rows, m, &write);
        (rows.0 + done, rows.1)
    } else {
        rows
    };
    if rows.0 == rows.1 {
        return;
    }
    // Q6_K rows have no 512-bit tiles: their 256-bit ones take `M` activation rows.
    if isa == Isa::Vnni512 && !matches!(part, View::Q6(..)) {
        let mut i = 0;
        while i + dot512::M_MAX <= m {
            group::<{ dot512::M_MAX }>(isa, part, act, nb, rows, i, &write);
            i += dot512::M_MAX;
        }
        match m - i {
            7 => group::<7>(isa, part, act, nb, rows, i, &write),
            6 => group::<6>(isa, part, act, nb, rows, i, &write),
            5 => group::<5>(isa, part, act, nb, rows, i, &write),
            4 => group::<4>(isa, part, act, nb, rows, i, &write),
            3 => group::<3>(isa, part, act, nb, rows, i, &write),
            2 => group::<2>(isa, part, act, nb, rows, i, &write),
            1 => group::<1>(isa, part, act, nb, rows, i, &write),
            _ => {}
        }
        return;
    }
    let mut i = 0;
    while i + M <= m {
        group::<M>(isa, part, act, nb, rows, i, &write);
        i += M;
    }
    match m - i {
        3 => group::<3>(isa, part, act, nb, rows, i, &write),
        2 => group::<2>(isa, part, act, nb, rows, i, &write),
        1 => group::<1>(isa, part, act, nb, rows, i, &write),
        _ => {}
    }
}

/// The fewest activation rows the tiles of 16 weight rows (`tile16.rs`) take: below it (one
/// decoding request) the tiles of 4 are faster. Measured on Q4_1 (`dot512_speed`: 0.7–0.9×
/// for one row, 1.1–1.4× for 4, 1.8–2.1× for 16); Q8_0 rows share the threshold.
#[cfg(target_arch = "x86_64")]
const TILE16_MIN_ROWS: usize = 4;

/// Activation rows per pass of the tiles of 16: each 16-row tile streams the pass's
/// activations (128 rows of 1,536 values: 192 KiB), which should stay in the core's L2.
#[cfg(target_arch = "x86_64")]
const TILE16_PASS_ROWS: usize = 128;

/// Q4 or Q8_0 weight rows `r0..` in tiles of 16 times all `m` activation rows (in passes of
/// [`TILE16_PASS_ROWS`]); returns how many weight rows were done (whole tiles). The caller
/// has checked `Isa::Vnni512` (tiles of 16) or `Isa::Avx2` (tiles of 8).
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn wide(
    isa: Isa,
    act: &ActQ8,
    part: View<'_>,
    nb: usize,
    (r0, r1): (usize, usize),
    m: usize,
    write: &impl Fn(usize, usize, f32),
) -> usize {
    let mut done = 0;
    for t0 in (0..m).step_by(TILE16_PASS_ROWS) {
        let x: Vec<ActRow<'_>> = (t0..(t0 + TILE16_PASS_ROWS).min(m))
            .map(|t| {
                let (q, d, s) = act.row(t);
                ActRow { q, d, s }
            })
            .collect();
        let put = |t: usize, j: usize, v: &[f32]| {
            for (r, &val) in v.iter().enumerate() {
                write(t0 + t, r0 + j + r, val);
            }
        };
        let mut put16 = |t: usize, j: usize, v: &[f32; tile16::ROWS]| put(t, j, v);
        // SAFETY: `Isa::get` saw AVX-512 F, BW and VNNI for `Vnni512`, AVX2 and FMA for
        // `Avx2`.
        done = unsafe {
            match part {
                View::Q4(qs, d, mins) => {
                    let o = q4_offset(d, mins, r0 * nb);
                    let w = (&qs[r0 * nb * 16..], &d[r0 * nb..]);
                    if isa == Isa::Vnni512 {
                        tile16::q4_tiles16(w, o, &x, r1 - r0, &mut put16)
                    } else {
                        let mut put8 = |t: usize, j: usize, v: &[f32; tile8::ROWS]| put(t, j, v);
                        tile8::q4_tiles8(w, o, &x, r1 - r0, &mut put8)
                    }
                }
                View::Q8(qs, d) => {
                    let w = (&qs[r0 * nb * QK..], &d[r0 * nb..]);
                    if isa == Isa::Vnni512 {
                        tile16::q8_tiles16(w, &x, r1 - r0, &mut put16)
                    } else {
                        let mut put8 = |t: usize, j: usize, v: &[f32; tile8::ROWS]| put(t, j, v);
                        tile8::q8_tiles8(w, &x, r1 - r0, &mut put8)
                    }
                }
                // No tiles of 8 or 16 for Q6_K rows (they take `group`'s tiles of 4).
                View::Q6(..) => 0,
            }
        };
    }
    done
}

/// The term Q4 rows from block `from` on add to their nibble products: the Q4_1 minimums, or
/// the Q4_0 offset of 8 (−8 · the scales), times the activation block sums.
fn q4_offset<'a>(d: &'a [f32], mins: Option<&'a [f32]>, from: usize) -> Q4Offset<'a> {
    match mins {
        Some(mn) => Q4Offset {
            off: &mn[from..],
            scale: 1.0,
        },
        None => Q4Offset {
            off: &d[from..],
            scale: -8.0,
        },
    }
}

/// Weight rows `r0..r1` times activation rows `i..i + MM`.
fn group<const MM: usize>(
    isa: Isa,
    part: View<'_>,
    act: &ActQ8,
    nb: usize,
    (r0, r1): (usize, usize),
    i: usize,
    write: &impl Fn(usize, usize, f32),
) {
    let x: [ActRow<'_>; MM] = std::array::from_fn(|t| {
        let (q, d, s) = act.row(i + t);
        ActRow { q, d, s }
    });
    let mut put = |t: usize, r: usize, v: f32| write(i + t, r0 + r, v);
    match part {
        View::Q4(qs, d, mins) => {
            let o = q4_offset(d, mins, r0 * nb);
            let w = (&qs[r0 * nb * 16..], &d[r0 * nb..]);
            let done = if isa == Isa::Vnni512 {
                dot512::q4_tiles::<MM>(w, o, &x, r1 - r0, &mut put)
            } else {
                0
            };
            if done < r1 - r0 {
                // The rows past the last tile of 4, or every row on other CPUs.
                let w = (&w.0[done * nb * 16..], &w.1[done * nb..]);
                let o = Q4Offset {
                    off: &o.off[done * nb..],
                    scale: o.scale,
                };
                let mut put = |t: usize, r: usize, v: f32| put(t, done + r, v);
                dot::q4_rows::<MM>(isa, w, o, &x, r1 - r0 - done, &mut put);
            }
        }
        View::Q8(qs, d) => {
            let w = (&qs[r0 * nb * QK..], &d[r0 * nb..]);
            let done = if isa == Isa::Vnni512 {
                dot512::q8_tiles::<MM>(w, &x, r1 - r0, &mut put)
            } else {
                0
            };
            if done < r1 - r0 {
                let w = (&w.0[done * nb * QK..], &w.1[done * nb..]);
                let mut put = |t: usize, r: usize, v: f32| put(t, done + r, v);
                dot::q8_rows::<MM>(isa, w, &x, r1 - r0 - done, &mut put);
            }
        }
        View::Q6(qs, d) => {
            let w = (&qs[r0 * nb * QK..], &d[r0 * nb * 2..]);
            dot::q6_rows::<MM>(isa, w, &x, r1 - r0, &mut put);
        }
    }
}

/// Q4_K rows whose scales are expanded at once, and Q6_K rows unpacked at once (a multiple
/// of [`R`]).
const Q4K_ROWS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction set this CPU can run gives the portable rows' values, for Q4_0, Q4_1,
    /// Q8_0 and Q6_K, for activation row counts below, at and past the tiles' thresholds and the
    /// pass length (so an AVX-512 machine also checks the AVX2 tiles of 8 of `tile8.rs`).
    #[test]
    fn every_isa_matches_the_portable_rows() {
        let (nb, rows) = (3, 37);
        let q4: Vec<u8> = (0..rows * nb * 16)
            .map(|i| ((i * 97 + 13) % 256) as u8)
            .collect();
        let q8: Vec<i8> = (0..rows * nb * QK)
            .map(|i| ((i * 61 + 5) % 256) as u8 as i8)
            .collect();
        let d: Vec<f32> = (0..rows * nb)
            .map(|i| 0.01 + (i % 7) as f32 * 0.003)
            .collect();
        let mins: Vec<f32> = (0..rows * nb)
            .map(|i| -0.05 + (i % 5) as f32 * 0.02)
            .collect();
        let d6: Vec<f32> = (0..rows * nb * 2)
            .map(|i| 0.02 - (i % 9) as f32 * 0.004)
            .collect();
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if Isa::get() == Isa::Vnni512 {
                isas.push(Isa::Vnni512);
            }
        }
        for m in [1, 3, 4, 9, 130] {
            let x: Vec<f32> = (0..m * nb * QK)
                .map(|i| ((i * 31) % 19) as f32 * 0.2 - 1.7)
                .collect();
            let act = ActQ8::new(&x, nb * QK);
            let views = [
                View::Q4(&q4, &d, None),
                View::Q4(&q4, &d, Some(&mins)),
                View::Q8(&q8, &d),
                View::Q6(&q8, &d6),
            ];
            for (vi, view) in views.into_iter().enumerate() {
                let run = |isa: Isa| {
                    let out: Vec<std::cell::Cell<f32>> =
                        (0..m * rows).map(|_| f32::NAN.into()).collect();
                    own_rows(isa, view, &act, nb, (0, rows), m, |t, r, v| {
                        out[t * rows + r].set(v)
                    });
                    out.into_iter().map(|c| c.get()).collect::<Vec<f32>>()
                };
                let want = run(Isa::Portable);
                for &isa in &isas {
                    for (i, (g, w)) in run(isa).iter().zip(&want).enumerate() {
                        let close = (g - w).abs() <= 1e-4 * w.abs().max(1.0);
                        assert!(close, "{isa:?} view {vi} m={m} [{i}]: {g} vs {w}");
                    }
                }
            }
        }
    }
}
