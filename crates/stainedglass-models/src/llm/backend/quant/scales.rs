//! Q4_0, Q4_1 and Q8_0 block scales (and Q4_1 minimums) are held as the file stores them, as
//! f16: two bytes a block instead of four, so a stored matrix holds the file's bytes. A kernel
//! widens the scales of the rows it is about to multiply (exact, F16C when the CPU has it) into
//! a per-thread buffer: a sixteenth or less of the work of the rows themselves.

use std::cell::RefCell;

use super::half_rows::{widen, HalfKind};

thread_local! {
    static BUF: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Calls `f` with `d` (and `m`, when present) widened to f32. Not reentrant: `f` must not call
/// it again (it would find the buffers borrowed and panic).
pub(super) fn with_f32<R>(
    d: &[u16],
    m: Option<&[u16]>,
    f: impl FnOnce(&[f32], Option<&[f32]>) -> R,
) -> R {
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        let (bd, bm) = &mut *b;
        grow(bd, d.len());
        widen(HalfKind::F16, d, &mut bd[..d.len()]);
        let m = m.map(|m| {
            grow(bm, m.len());
            widen(HalfKind::F16, m, &mut bm[..m.len()]);
            &bm[..m.len()]
        });
        f(&bd[..d.len()], m)
    })
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// The f16 bits of a little-endian scale at `at`.
pub(super) fn bits_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[cfg(test)]
mod tests {
    use half::f16;

    #[test]
    fn scales_widen_exactly() {
        let v: Vec<f16> = [0.5f32, -3.25, 1e-4, 65504.0]
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        let d: Vec<u16> = v.iter().map(|x| x.to_bits()).collect();
        let m: Vec<u16> = d.iter().rev().copied().collect();
        super::with_f32(&d, Some(&m), |d32, m32| {
            for (a, b) in d32.iter().zip(&v) {
                assert_eq!(a.to_bits(), b.to_f32().to_bits());
            }
            assert_eq!(m32.map(|m| m[0]), Some(65504.0));
        });
    }
}
