//! Kernel speed measurements of the quantized products (ignored; run with `--ignored
//! --nocapture`), kept apart from the correctness tests in `tests.rs`.

use super::tests::{quantized, weights};
use super::*;

/// The 8-bit product's speed on the bundled model's shapes (Q4_1 layers, the Q8_0 LM head; and
/// K-quant matrices of a similar size, which run candle's per-row dot products),
/// alternating with the f32 product on the same matrix (`cargo test --release -p
/// stainedglass-models q4_int8_speed -- --ignored --nocapture`): a measurement, not a check.
/// Rows above [`INT8_MAX_ROWS`]: what a prefill gives the 8-bit path (on a 512-bit VNNI CPU it
/// takes them).
#[test]
#[ignore]
fn q4_int8_speed() {
    for (dtype, n, k) in [
        (GgmlDType::Q4_1, 3072, 576),
        (GgmlDType::Q4_1, 576, 1536),
        (GgmlDType::Q4_1, 960, 576),
        (GgmlDType::Q8_0, 49152, 576),
        (GgmlDType::Q4K, 3072, 768),
        (GgmlDType::Q6K, 3072, 768),
    ] {
        let (qm, _) = quantized(dtype, n, k, 21);
        for m in [1, 4, 16, 32, 64, 256] {
            let x = weights(m, k, 5);
            let mut out = vec![0f32; m * n];
            let iters = (4000 / m * 3072 / n).max(2);
            for _ in 0..3 {
                let mut rate = |int8: bool| {
                    let t = std::time::Instant::now();
                    for _ in 0..iters {
                        if int8 {
                            qm.product_int8(&x, m, &mut out, false);
                        } else {
                            qm.product_f32(&x, m, &mut out, false);
                        }
                    }
                    (m * n * k * iters) as f64 / t.elapsed().as_secs_f64() / 1e9
                };
                let (a, b) = (rate(true), rate(false));
                println!(
                    "{{\"isa\":\"{}\",\"type\":\"{dtype:?}\",\"n\":{n},\"k\":{k},\"m\":{m},\"int8_gmac_per_s\":{a:.1},\"f32_gmac_per_s\":{b:.1},\"ratio\":{:.2}}}",
                    Isa::get().name(),
                    a / b
                );
            }
        }
    }
}

/// What Q4_K's unpacking costs: the 8-bit product of the same weights as Q4_K and as Q4_1
/// (from 2 activation rows the same kernels once the rows are unpacked; one row is candle's
/// Q4_K dot product), alternating (`cargo test --release
/// -p stainedglass-models q4k_against_q4_1_speed -- --ignored --nocapture`): a measurement,
/// not a check.
#[test]
#[ignore]
fn q4k_against_q4_1_speed() {
    let (n, k) = (3072, 768);
    let (q4k, _) = quantized(GgmlDType::Q4K, n, k, 21);
    let (q41, _) = quantized(GgmlDType::Q4_1, n, k, 21);
    for m in [1, 4, 16] {
        let x = weights(m, k, 5);
        let mut out = vec![0f32; m * n];
        let iters = (4000 / m).max(2);
        for _ in 0..3 {
            let mut rate = |qm: &QMatrix| {
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    qm.product_int8(&x, m, &mut out, false);
                }
                (m * n * k * iters) as f64 / t.elapsed().as_secs_f64() / 1e9
            };
            let (a, b) = (rate(&q4k), rate(&q41));
            println!(
                "{{\"isa\":\"{}\",\"n\":{n},\"k\":{k},\"m\":{m},\"q4k_gmac_per_s\":{a:.1},\"q4_1_gmac_per_s\":{b:.1},\"ratio\":{:.2}}}",
                Isa::get().name(),
                a / b
            );
        }
    }
}

/// Q6_K rows, unpacked for our Q8 tiles from 2 activation rows on, against the f32 product and
/// against one row (candle's dot product, whose rate does not grow with the rows: it reuses
/// no weights across them), on the same weights, alternating (`cargo test --release -p
/// stainedglass-models q6k_speed -- --ignored --nocapture`): a measurement, not a check.
#[test]
#[ignore]
fn q6k_speed() {
    let (n, k) = (3072, 768);
    let (qm, _) = quantized(GgmlDType::Q6K, n, k, 21);
    let x1 = weights(1, k, 5);
    let mut out1 = vec![0f32; n];
    for m in [2, 4, 16, 64, 128, 256] {
        let x = weights(m, k, 5);
        let mut out = vec![0f32; m * n];
        let iters = (2000 / m).max(2);
        for _ in 0..3 {
            let rate = |int8: bool, x: &[f32], m: usize, out: &mut [f32]| {
                let iters = if m == 1 { 2000 } else { iters };
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    if int8 {
                        qm.product_int8(x, m, out, false);
                    } else {
                        qm.product_f32(x, m, out, false);
                    }
                }
                (m * n * k * iters) as f64 / t.elapsed().as_secs_f64() / 1e9
            };
            let a = rate(true, &x, m, &mut out);
            let b = rate(true, &x1, 1, &mut out1);
            let c = rate(false, &x, m, &mut out);
            println!(
                "{{\"isa\":\"{}\",\"n\":{n},\"k\":{k},\"m\":{m},\"ours_gmac_per_s\":{a:.1},\"candle_one_row_gmac_per_s\":{b:.1},\"f32_gmac_per_s\":{c:.1},\"ours_over_candle\":{:.2},\"ours_over_f32\":{:.2}}}",
                Isa::get().name(),
                a / b,
                a / c
            );
        }
    }
}
