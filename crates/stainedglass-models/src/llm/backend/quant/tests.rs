use super::*;
use crate::llm::backend::quant::parse::GgufPiece;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use proptest::prelude::*;

pub(super) fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ seed);
            ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

/// A matrix quantized by candle (`QTensor::quantize`), as a GGUF file stores it, and candle's
/// own dequantized values.
pub(super) fn quantized(
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> (QMatrix, Vec<f32>) {
    let w = Tensor::from_vec(weights(rows, cols, seed), (rows, cols), &Device::Cpu).expect("w");
    let q = QTensor::quantize(&w, dtype).expect("quantize");
    let data = q.data().expect("bytes");
    let deq = q
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .expect("dequantize");
    (
        QMatrix::from_gguf(dtype, &data, rows, cols).expect("matrix"),
        deq,
    )
}

/// K-quant blocks for the unpacking tests (`q4k.rs`, `q6k.rs`): candle's quantization of a
/// `rows × cols` ramp, and the same blocks with every byte `keep` refuses replaced by noise
/// (the f16 factors kept finite), each with candle's dequantized values.
pub(super) fn candle_blocks(
    dtype: GgmlDType,
    (rows, cols): (usize, usize),
    keep: impl Fn(usize) -> bool,
) -> [(Vec<u8>, Vec<f32>); 2] {
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).expect("tensor");
    let quantized = QTensor::quantize(&t, dtype)
        .and_then(|q| q.data().map(|d| d.to_vec()))
        .expect("quantize");
    let mut noise = quantized.clone();
    let mut h = 0x2545_f491_4f6c_dd1du64;
    for (i, v) in noise.iter_mut().enumerate() {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        if !keep(i) {
            *v = h as u8;
        }
    }
    [quantized, noise].map(|data| {
        let q = QTensor::new(
            candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(&data),
                &Device::Cpu,
                dtype,
            )
            .expect("storage"),
            (rows, cols),
        )
        .expect("qtensor");
        let want = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("dequantize");
        (data, want)
    })
}

fn reference(w: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for j in 0..n {
            out[r * n + j] = (0..k).map(|i| x[r * k + i] * w[j * k + i]).sum();
        }
    }
    out
}

const TYPES: [GgmlDType; 6] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
    GgmlDType::F16,
];

/// Rows read back exactly as candle dequantizes them, and products within the 8-bit
/// activations' rounding of the f32 product of those rows, for 1, 3, 9 and 200 activation rows
/// (200: past `INT8_MAX_ROWS`, a long prefill, which the tiles of 16 take on a 512-bit VNNI CPU).
#[test]
fn products_match_the_dequantized_f32_product() {
    let (n, k) = (37, 512);
    for dtype in TYPES {
        let (mut qm, deq) = quantized(dtype, n, k, 3);
        let mut row = vec![0f32; k];
        for r in [0, 5, n - 1] {
            qm.dequantize_row(r, &mut row);
            assert_eq!(row, deq[r * k..(r + 1) * k], "{dtype:?} row {r}");
        }
        for (m, act) in [1, 3, 9, 200]
            .into_iter()
            .flat_map(|m| [(m, Activations::Int8), (m, Activations::F32)])
        {
            qm.set_activations(act);
            let x = weights(m, k, 11);
            let want = reference(&deq, &x, m, n, k);
            let mut got = vec![1f32; m * n];
            qm.product(&x, m, &mut got, false);
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 0.01 * scale,
                    "{dtype:?} {act:?} m={m} [{i}]: {g} vs {w}"
                );
            }
            let mut acc = vec![1f32; m * n];
            qm.product(&x, m, &mut acc, true);
            for (a, g) in acc.iter().zip(&got) {
                assert!((a - 1.0 - g).abs() < 1e-5, "{dtype:?}: accumulate");
            }
        }
    }
}

/// A matrix of candle-multiplied rows (Q5_K) with 8-bit activations multiplies up to
/// [`GGML_INT8_MAX_ROWS`] rows in 8 bits and more in f32 (faster there): past the limit its
/// values are the f32 path's bit for bit, at the limit they are not.
#[test]
fn k_quant_products_past_the_limit_run_in_f32() {
    let (n, k) = (8, 256);
    let (mut qm, _) = quantized(GgmlDType::Q5K, n, k, 4);
    for (m, same) in [(GGML_INT8_MAX_ROWS + 1, true), (GGML_INT8_MAX_ROWS, false)] {
        assert_eq!(int8_is_exact(&mut qm, m, 9), same, "{m} rows");
    }
}

/// Whether `m` activation rows (of seed `seed`) give the same values with 8-bit activations
/// as with f32 ones.
fn int8_is_exact(qm: &mut QMatrix, m: usize, seed: u64) -> bool {
    let (n, k) = qm.dims();
    let x = weights(m, k, seed);
    let mut exact = vec![0f32; m * n];
    qm.set_activations(Activations::F32);
    qm.product(&x, m, &mut exact, false);
    let mut int8 = vec![0f32; m * n];
    qm.set_activations(Activations::Int8);
    qm.product(&x, m, &mut int8, false);
    exact == int8
}

/// A Q8_0 matrix (the LM head) with 8-bit activations multiplies in f32 past this CPU's
/// limit for it (64 rows with AVX2 alone, 128 with 256-bit VNNI, none with 512-bit VNNI): the
/// f32 path's values bit for bit past the limit, not at it.
#[test]
fn q8_products_past_this_cpus_limit_run_in_f32() {
    let (n, k) = (8, 64);
    let (mut qm, _) = quantized(GgmlDType::Q8_0, n, k, 6);
    let limit = qm.int8_max_rows();
    let expected = match Isa::get() {
        Isa::Vnni512 => usize::MAX,
        Isa::Avx2 => AVX2_Q8_INT8_MAX_ROWS,
        _ => INT8_MAX_ROWS,
    };
    assert_eq!(limit, expected);
    if limit == usize::MAX {
        return;
    }
    for (m, same) in [(limit + 1, true), (limit, false)] {
        assert_eq!(int8_is_exact(&mut qm, m, 10), same, "{m} rows");
    }
}

/// A fused matrix (Q4_1 + Q6_K + Q4_1 rows, the middle one read in another order) gives each
/// piece's own products in its rows, with both activation kinds; neighbouring Q4_1 pieces merge
/// into one part, pieces around another type stay separate.
#[test]
fn fused_and_reordered_rows_keep_their_products() {
    let k = 256;
    let raw = |dtype: GgmlDType, rows: usize, seed: u64| {
        let w = weights(rows, k, seed);
        let t = Tensor::from_vec(w, (rows, k), &Device::Cpu).expect("w");
        let q = QTensor::quantize(&t, dtype).expect("quantize");
        let deq = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("dequantize");
        (q.data().expect("bytes").into_owned(), deq)
    };
    let (a, da) = raw(GgmlDType::Q4_1, 8, 1);
    let (b, db) = raw(GgmlDType::Q6K, 4, 2);
    let (c, dc) = raw(GgmlDType::Q4_1, 6, 3);
    let perm = vec![2, 0, 3, 1];
    fn piece(
        dtype: GgmlDType,
        data: &[u8],
        rows: usize,
        order: Option<Vec<usize>>,
    ) -> GgufPiece<'_> {
        GgufPiece {
            dtype,
            data,
            rows,
            order,
        }
    }
    let mut fused = QMatrix::from_gguf_pieces(
        &[
            piece(GgmlDType::Q4_1, &a, 8, None),
            piece(GgmlDType::Q6K, &b, 4, Some(perm.clone())),
            piece(GgmlDType::Q4_1, &c, 6, None),
        ],
        k,
    )
    .expect("fused");
    assert_eq!(fused.dims(), (18, k));
    assert_eq!(fused.storage(), "Q4_1+Q6K+Q4_1");
    let mut w = da.clone();
    for &p in &perm {
        w.extend_from_slice(&db[p * k..(p + 1) * k]);
    }
    w.extend(dc.iter().copied());
    let x = weights(2, k, 5);
    let want = reference(&w, &x, 2, 18, k);
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    for act in [Activations::Int8, Activations::F32] {
        fused.set_activations(act);
        let mut got = vec![0f32; 2 * 18];
        fused.product(&x, 2, &mut got, false);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 0.01 * scale, "{act:?}: {g} vs {w}");
        }
    }
    let merged = QMatrix::from_gguf_pieces(
        &[
            piece(GgmlDType::Q4_1, &a, 8, None),
            piece(GgmlDType::Q4_1, &c, 6, None),
        ],
        k,
    )
    .expect("merged");
    assert_eq!(merged.storage(), "Q4_1");
    let mut row = vec![0f32; k];
    merged.dequantize_row(9, &mut row);
    assert_eq!(row, dc[k..2 * k]);
}

/// With f32 activations a few rows give exactly the f32 kernels' numbers on the dequantized
/// weights (`gemv::gemv_rows`, what the f32 model decodes with), and more rows the BLAS's.
#[test]
fn f32_activations_reproduce_the_f32_kernels_bit_for_bit() {
    use crate::llm::backend::blas::par_sgemm;
    use crate::llm::backend::gemv::gemv_rows;
    let (n, k) = (77, 256);
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let (mut qm, deq) = quantized(dtype, n, k, 9);
        qm.set_activations(Activations::F32);
        for m in [1, 3, 9] {
            let x = weights(m, k, 21);
            let mut want = vec![0f32; m * n];
            if m <= crate::llm::backend::ops::GEMV_MAX_ROWS {
                gemv_rows(&x, &deq, m, k, n, &mut want);
            } else {
                par_sgemm(&x, &deq, &mut want, (m, n, k), true, 0.0);
            }
            let mut got = vec![0f32; m * n];
            qm.product(&x, m, &mut got, false);
            if m <= crate::llm::backend::ops::GEMV_MAX_ROWS {
                assert_eq!(got, want, "{dtype:?} m={m}");
            } else {
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{dtype:?} m={m}");
                }
            }
        }
    }
}

/// K-quant rows read back through our unpackers, eight at a time, from an offset and with a
/// partial last group: candle's dequantization to the bit.
#[test]
fn k_quant_rows_read_back_from_any_offset() {
    let (n, k) = (20, 512);
    for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
        let (qm, deq) = quantized(dtype, n, k, 13);
        for (r0, rows) in [(1, 13), (0, 20), (7, 1), (19, 1), (3, 0)] {
            let mut out = vec![f32::NAN; rows * k];
            qm.rows_f32(r0, &mut out);
            assert_eq!(
                out,
                deq[r0 * k..(r0 + rows) * k],
                "{dtype:?} rows {r0}+{rows}"
            );
        }
    }
}

#[test]
fn bad_bytes_are_refused() {
    let (_, _) = quantized(GgmlDType::Q4_1, 2, 64, 1);
    let e = QMatrix::from_gguf(GgmlDType::Q4_1, &[0u8; 79], 2, 64).err();
    assert!(e.is_some_and(|e| e.contains("expected 80")));
    let mut nan = vec![0u8; 34];
    nan[..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    assert!(QMatrix::from_gguf(GgmlDType::Q8_0, &nan, 1, 32).is_err());
    assert!(QMatrix::from_gguf(GgmlDType::Q4_0, &[0u8; 18], 1, 30).is_err());
    assert!(QMatrix::from_gguf(GgmlDType::Q8K, &[0u8; 292], 1, 256).is_err());
    assert!(QMatrix::from_gguf(GgmlDType::Q4_1, &[], 1, 0).is_err());
    assert!(QMatrix::from_gguf(GgmlDType::Q6K, &[], 1, 0).is_err());
    assert!(QMatrix::from_gguf(GgmlDType::Q4_1, &[0u8; 20], usize::MAX / 2, 64).is_err());
}

/// A NaN or Inf input gives NaN outputs with 8-bit activations too, as in f32 (not a silent 0).
#[test]
fn non_finite_inputs_propagate() {
    let (mut qm, _) = quantized(GgmlDType::Q4_1, 8, 64, 1);
    for act in [Activations::Int8, Activations::F32] {
        qm.set_activations(act);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = vec![0.5f32; 64];
            x[40] = bad;
            let mut out = vec![0f32; 8];
            qm.product(&x, 1, &mut out, false);
            assert!(out.iter().all(|v| !v.is_finite()), "{act:?} {bad}: {out:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// Untrusted bytes of any length and type either load (and multiply to finite values) or
    /// are refused; nothing panics.
    #[test]
    fn any_bytes_load_or_are_refused(
        t in 0usize..6,
        rows in 1usize..4,
        blocks in 1usize..3,
        data in proptest::collection::vec(any::<u8>(), 0..2400),
    ) {
        let dtype = TYPES[t];
        let cols = blocks * if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) { 256 } else { 32 };
        if let Ok(m) = QMatrix::from_gguf(dtype, &data, rows, cols) {
            let x = vec![0.5f32; cols];
            let mut out = vec![0f32; rows];
            m.product(&x, 1, &mut out, false);
            prop_assert!(out.iter().all(|v| v.is_finite()));
        }
    }

    /// Q4_K and Q6_K blocks of arbitrary bytes of the right size load exactly when every
    /// super-block factor is finite (the check reads only the factors), and then every value
    /// and every product is finite.
    #[test]
    fn any_k_quant_blocks_load_when_their_factors_are_finite(
        six in any::<bool>(),
        rows in 1usize..4,
        seed in any::<u64>(),
    ) {
        let (dtype, size, at): (GgmlDType, usize, &[usize]) = if six {
            (GgmlDType::Q6K, 210, &[208])
        } else {
            (GgmlDType::Q4K, 144, &[0, 2])
        };
        let mut h = seed | 1;
        let data: Vec<u8> = (0..rows * size)
            .map(|_| {
                h ^= h << 13;
                h ^= h >> 7;
                h ^= h << 17;
                // Mostly small factors (high byte below an f16 exponent of all ones), and now
                // and then an Inf or NaN.
                (h >> 24) as u8
            })
            .collect();
        let finite = data.chunks_exact(size).all(|b| {
            at.iter()
                .all(|&i| half::f16::from_le_bytes([b[i], b[i + 1]]).is_finite())
        });
        let loaded = QMatrix::from_gguf(dtype, &data, rows, 256);
        prop_assert_eq!(loaded.is_ok(), finite);
        if let Ok(m) = loaded {
            let mut row = vec![0f32; 256];
            for r in 0..rows {
                m.dequantize_row(r, &mut row);
                prop_assert!(row.iter().all(|v| v.is_finite()));
            }
            let x = vec![0.5f32; 2 * 256];
            let mut out = vec![0f32; 2 * rows];
            m.product(&x, 2, &mut out, false);
            prop_assert!(out.iter().all(|v| v.is_finite()));
        }
    }

    /// The 8-bit product of Q4_0, Q4_1, Q8_0, Q4_K and Q6_K matrices of any row count, for any number of
    /// activation rows (the tiles of 16 and of 4, the portable rows, passes of 128 activation
    /// rows), stays within the activations' rounding of the f32 product of the same rows, and
    /// accumulating adds exactly that product.
    #[test]
    fn int8_products_of_any_shape_match_the_f32_product(
        t in 0usize..5,
        n in 1usize..70,
        blocks in 1usize..4,
        m in 1usize..300,
        seed in 0u64..1000,
    ) {
        let dtype = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K][t];
        let k = blocks * if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) { 256 } else { 32 };
        let (mut qm, deq) = quantized(dtype, n, k, seed);
        qm.set_activations(Activations::Int8);
        let x = weights(m, k, seed + 1);
        let want = reference(&deq, &x, m, n, k);
        let mut got = vec![f32::NAN; m * n];
        qm.product(&x, m, &mut got, false);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // Each output's own scale: the sum of its terms' magnitudes.
            let (r, c) = (i / n, i % n);
            let scale: f32 = (0..k).map(|j| (x[r * k + j] * deq[c * k + j]).abs()).sum();
            prop_assert!((g - w).abs() <= 0.02 * scale + 1e-6, "{dtype:?} m={m} n={n} [{i}]: {g} vs {w}");
        }
        let mut acc = vec![2f32; m * n];
        qm.product(&x, m, &mut acc, true);
        for (a, g) in acc.iter().zip(&got) {
            prop_assert!((a - 2.0 - g).abs() <= 1e-5 * g.abs().max(1.0));
        }
    }

    /// Untrusted bytes as f16/bf16 rows either load, with finite values whose product is the
    /// f32 dot product of the widened rows, or are refused; nothing panics.
    #[test]
    fn any_half_bytes_load_or_are_refused(
        bf in any::<bool>(),
        rows in 1usize..10,
        cols in 1usize..40,
        data in proptest::collection::vec(any::<u8>(), 0..1200),
    ) {
        let dtype = if bf { GgmlDType::BF16 } else { GgmlDType::F16 };
        if let Ok(m) = QMatrix::from_gguf(dtype, &data, rows, cols) {
            prop_assert_eq!(data.len(), 2 * rows * cols);
            let x: Vec<f32> = (0..cols).map(|i| (i % 3) as f32 - 1.0).collect();
            let mut out = vec![0f32; rows];
            m.product(&x, 1, &mut out, false);
            let mut row = vec![0f32; cols];
            for (r, &o) in out.iter().enumerate() {
                m.dequantize_row(r, &mut row);
                prop_assert!(row.iter().all(|v| v.is_finite()));
                let want = crate::llm::backend::gemv::dot(&x, &row);
                // (Sums of values near bf16's largest may overflow, in either order.)
                let scale: f32 = x.iter().zip(&row).map(|(a, b)| (a * b).abs()).sum();
                if scale.is_finite() {
                    prop_assert!((o - want).abs() <= 1e-5 * scale, "{o} vs {want}");
                }
            }
        }
    }
}

/// Q4_K tensors keep the file's blocks (candle's), one part per tensor, bytes for bytes.
#[test]
fn q4k_pieces_keep_the_files_bytes() {
    let (rows, k) = (6, 512);
    let w = Tensor::from_vec(weights(rows, k, 8), (rows, k), &Device::Cpu).expect("w");
    let data = QTensor::quantize(&w, GgmlDType::Q4K)
        .and_then(|q| q.data().map(|d| d.to_vec()))
        .expect("quantize");
    let half = data.len() / 2;
    let piece = |data: &'static [u8]| GgufPiece {
        dtype: GgmlDType::Q4K,
        data,
        rows: rows / 2,
        order: None,
    };
    let data: &'static [u8] = Box::leak(data.into_boxed_slice());
    let qm = QMatrix::from_gguf_pieces(&[piece(&data[..half]), piece(&data[half..])], k)
        .expect("matrix");
    assert_eq!(qm.storage(), "Q4K+Q4K");
    assert_eq!(qm.bytes(), data.len());
}

/// Q6_K tensors keep the file's blocks (candle's), one part per tensor, with the file's row
/// order applied.
#[test]
fn q6k_pieces_keep_the_files_bytes_and_order() {
    let (rows, k) = (6, 512);
    let w = Tensor::from_vec(weights(rows, k, 8), (rows, k), &Device::Cpu).expect("w");
    let q = QTensor::quantize(&w, GgmlDType::Q6K).expect("quantize");
    let deq = q
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .expect("dequantize");
    let data: &'static [u8] = Box::leak(q.data().expect("bytes").to_vec().into_boxed_slice());
    let half = data.len() / 2;
    let order = vec![2, 0, 1];
    let pieces = [
        GgufPiece {
            dtype: GgmlDType::Q6K,
            data: &data[..half],
            rows: rows / 2,
            order: Some(order.clone()),
        },
        GgufPiece {
            dtype: GgmlDType::Q6K,
            data: &data[half..],
            rows: rows / 2,
            order: None,
        },
    ];
    let qm = QMatrix::from_gguf_pieces(&pieces, k).expect("matrix");
    assert_eq!(qm.storage(), "Q6K+Q6K");
    assert_eq!(qm.bytes(), data.len());
    let mut row = vec![0f32; k];
    // The first piece's rows in its order, then the second's.
    let sources = order.iter().copied().chain(3..rows);
    for (r, src) in sources.enumerate() {
        qm.dequantize_row(r, &mut row);
        assert_eq!(row, deq[src * k..(src + 1) * k], "row {r}");
    }
}
