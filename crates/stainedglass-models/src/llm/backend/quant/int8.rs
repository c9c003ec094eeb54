//! The 8-bit product: activations quantized per block of 32 (`act.rs`), integer block sums
//! (`dot.rs` for Q4_0/Q4_1/Q8_0, candle's per-type dot products for the rest), f32
//! accumulation — llama.cpp's numerics, the fastest path, not the f32 model's numbers.

use super::act::{ActQ8, QK};
use super::dot::{self, Isa, Q4Offset};
use super::{ggml, OutPtr, Part, QMatrix};

impl QMatrix {
    /// `out (m × rows) = x (m × cols) · Wᵀ`, added to `out` when `accumulate`, with the
    /// activations quantized to 8 bits (llama.cpp's numerics).
    pub(super) fn product_int8(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
        let (n, k) = (self.rows, self.cols);
        debug_assert_eq!(x.len(), m * k);
        debug_assert_eq!(out.len(), m * n);
        let isa = Isa::get();
        let own = self.parts.iter().any(|p| !matches!(p, Part::Ggml(_)));
        let act = own.then(|| ActQ8::new(x, k));
        let preps: Vec<Option<ggml::Prepared>> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Ggml(g) => Some(g.prepare(x)),
                _ => None,
            })
            .collect();
        // Tasks of whole groups of `G` rows, several per thread.
        let per_task = (n / (rayon::current_num_threads() * 8)).clamp(16, 256) / G * G;
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
                Part::Ggml(g) => {
                    let Some(prep) = &preps[pi] else { return };
                    for j in r0..r1 {
                        for ar in 0..m {
                            write(ar, j, g.dot(j, prep, ar));
                        }
                    }
                }
                part => {
                    let Some(act) = &act else { return };
                    own_rows(isa, part, act, k / QK, (r0, r1), m, write);
                }
            }
        };
        super::spin_pool(tasks.len(), |range| tasks[range].iter().for_each(&run));
    }
}

/// Weight rows per kernel call (each activation block is loaded once for all of them).
const G: usize = 2;

/// Rows `r0..r1` of one of our parts with every activation row, `G` rows at a time.
fn own_rows(
    isa: Isa,
    part: &Part,
    act: &ActQ8,
    nb: usize,
    (r0, r1): (usize, usize),
    m: usize,
    write: impl Fn(usize, usize, f32),
) {
    let mut j = r0;
    while j < r1 {
        let full = j + G <= r1;
        for ar in 0..m {
            let (xq, xd, xs) = act.row(ar);
            let mut v = [0f32; G];
            match part {
                Part::Q4 { d, m: mins, qs, .. } => {
                    let w = (&qs[j * nb * 16..], &d[j * nb..]);
                    let o = match mins {
                        Some(mn) => Q4Offset {
                            off: &mn[j * nb..],
                            scale: 1.0,
                            xs,
                        },
                        None => Q4Offset {
                            off: &d[j * nb..],
                            scale: -8.0,
                            xs,
                        },
                    };
                    if full {
                        v = dot::q4_dots::<G>(isa, w, xq, xd, o);
                    } else {
                        v[0] = dot::q4_dots::<1>(isa, w, xq, xd, o)[0];
                    }
                }
                Part::Q8 { d, qs, .. } => {
                    let (q, dd) = (&qs[j * nb * QK..], &d[j * nb..]);
                    if full {
                        v = dot::q8_dots::<G>(isa, q, dd, xq, xd);
                    } else {
                        v[0] = dot::q8_dots::<1>(isa, q, dd, xq, xd)[0];
                    }
                }
                Part::Ggml(_) => return,
            }
            for (r, val) in v.iter().enumerate().take(if full { G } else { 1 }) {
                write(ar, j + r, *val);
            }
        }
        j += if full { G } else { 1 };
    }
}
