//! The real data sets fetched by scripts/setup-assets.sh (CI fetches them; a missing asset fails).

use std::path::PathBuf;

use stainedglass_models::{ImageDataset, Split};

fn assets() -> PathBuf {
    stainedglass_test_support::assets()
}

#[test]
fn fashion_mnist_has_60k_train_and_10k_balanced_test() {
    let dir = assets().join("fashion-mnist");
    let train = ImageDataset::fashion_mnist(&dir, Split::Train).unwrap();
    let test = ImageDataset::fashion_mnist(&dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.shape, [1, 28, 28]);
    let mut counts = [0usize; 10];
    for &l in &test.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [1000; 10]);
    let (x, y) = test.batch(&[0, 1], &candle_core::Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[2, 1, 28, 28]);
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|p| (0.0..=1.0).contains(p)) && v.iter().any(|&p| p > 0.5));
    // First test image of Fashion-MNIST is an ankle boot (class 9).
    assert_eq!(y.to_vec1::<u32>().unwrap()[0], 9);
}

#[test]
fn digits_has_1797_images_of_8x8() {
    let ds = ImageDataset::digits(&assets().join("digits/digits.csv.gz")).unwrap();
    assert_eq!(ds.len(), 1797);
    assert_eq!(ds.shape, [1, 8, 8]);
    assert_eq!(ds.labels[0], 0);
    assert!(ds.pixels.iter().all(|&p| p <= 16));
}

#[test]
fn truncated_copy_is_rejected() {
    let src = assets().join("fashion-mnist/t10k-labels-idx1-ubyte.gz");
    let bytes = std::fs::read(src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gz");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = stainedglass_models::data::read_idx_labels(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
}
