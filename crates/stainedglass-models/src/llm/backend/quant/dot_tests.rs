//! Tests of `dot.rs`: every instruction set against the portable reference.

use super::*;
use crate::llm::backend::quant::act::ActQ8;

fn data(nb: usize, rows: usize, m: usize) -> (Vec<u8>, Vec<i8>, Vec<f32>, ActQ8) {
    let q4: Vec<u8> = (0..rows * nb * 16)
        .map(|i| ((i * 97 + 13) % 256) as u8)
        .collect();
    let q8: Vec<i8> = (0..rows * nb * 32)
        .map(|i| ((i * 61 + 5) % 256) as u8 as i8)
        .collect();
    let d: Vec<f32> = (0..rows * nb)
        .map(|i| 0.01 + (i % 7) as f32 * 0.003)
        .collect();
    let x: Vec<f32> = (0..m * nb * 32)
        .map(|i| ((i * 31) % 19) as f32 * 0.2 - 1.7)
        .collect();
    (q4, q8, d, ActQ8::new(&x, nb * 32))
}

/// Every instruction set this CPU has gives the reference's value for every (weight row,
/// activation row) of a tile (the integer sums are exact; only the f32 accumulation order
/// differs). Q8 weights include −128, the value the VNNI path's unsigned shift must handle;
/// Q6_K rows take the same bytes with two scales per block.
#[test]
fn tiles_match_the_portable_reference() {
    let (nb, rows, m) = (5, 5, 3);
    let (q4, q8, d, x) = data(nb, rows, m);
    assert!(q8.contains(&-128) && q8.contains(&127));
    // Q6_K's two group scales per block, of both signs.
    let d6: Vec<f32> = (0..rows * nb * 2)
        .map(|i| 0.02 - (i % 5) as f32 * 0.007)
        .collect();
    let acts: [ActRow<'_>; 3] = std::array::from_fn(|i| {
        let (q, d, s) = x.row(i);
        ActRow { q, d, s }
    });
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut isas = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            isas.push(Isa::Avx2);
        }
        if matches!(Isa::get(), Isa::Vnni | Isa::Vnni512) {
            isas.push(Isa::Vnni);
        }
    }
    for isa in isas {
        let o = Q4Offset {
            off: &d,
            scale: -8.0,
        };
        // 4 weight rows and 1 more (a tile of 4, then one of 1), 3 activation rows.
        let mut a = vec![[0f32; 3]; rows];
        q4_rows::<3>(isa, (&q4, &d), o, &acts, rows, &mut |t, r, v| a[r][t] = v);
        let mut b = vec![[0f32; 3]; rows];
        q8_rows::<3>(isa, (&q8, &d), &acts, rows, &mut |t, r, v| b[r][t] = v);
        let mut c = vec![[0f32; 3]; rows];
        q6_rows::<3>(isa, (&q8, &d6), &acts, rows, &mut |t, r, v| c[r][t] = v);
        for r in 0..rows {
            for (i, act) in acts.iter().enumerate() {
                let o: f32 = (0..nb).map(|b| d[r * nb + b] * act.s[b]).sum();
                let want4 = q4_portable(&q4[r * nb * 16..], &d[r * nb..], act.q, act.d) - 8.0 * o;
                let want8 = q8_portable(&q8[r * nb * 32..], &d[r * nb..], act.q, act.d);
                let want6 = q6_portable(&q8[r * nb * 32..], &d6[r * nb * 2..], act.q, act.d);
                let close = |g: f32, w: f32| (g - w).abs() <= 1e-4 * w.abs().max(1.0);
                assert!(close(a[r][i], want4), "{isa:?} q4 [{r}][{i}]");
                assert!(close(b[r][i], want8), "{isa:?} q8 [{r}][{i}]");
                assert!(close(c[r][i], want6), "{isa:?} q6 [{r}][{i}]");
            }
        }
    }
}
