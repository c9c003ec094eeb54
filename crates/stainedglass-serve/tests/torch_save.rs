//! The `torch.save` writer read back by an independent reader: candle's pickle parser for the
//! program, the zip entries for the data.

use candle_core::{DType, Device, Tensor};
use stainedglass_serve::torch_save::save_bytes;
use std::io::Read;

mod common;

fn read_back(bytes: &[u8]) -> (DType, Vec<usize>, Vec<usize>, Vec<u8>) {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.to_string()).expect("name"))
        .collect();
    for want in [
        "archive/data.pkl",
        "archive/data/0",
        "archive/version",
        "archive/byteorder",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let info = common::pickled_tensor_info(&mut zip);
    assert_eq!(info.path, "archive/data/0");
    let mut data = Vec::new();
    let mut f = zip.by_name("archive/data/0").expect("data");
    assert_eq!(f.compression(), zip::CompressionMethod::Stored);
    // PyTorch aligns record data to 64 bytes.
    assert_eq!(f.data_start().expect("data start") % 64, 0);
    f.read_to_end(&mut data).expect("read");
    (
        info.dtype,
        info.layout.dims().to_vec(),
        info.layout.stride().to_vec(),
        data,
    )
}

#[test]
fn f32_f16_and_bf16_tensors_read_back_exactly() {
    let t = Tensor::arange(0f32, 15.0, &Device::Cpu)
        .and_then(|t| (t * 0.37)?.reshape((3, 5)))
        .expect("t");
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let x = t.to_dtype(dtype).expect("cast");
        let (d, dims, stride, data) = read_back(&save_bytes(&x).expect("save"));
        assert_eq!(d, dtype);
        assert_eq!(dims, [3, 5]);
        assert_eq!(stride, [5, 1]);
        let back = Tensor::from_raw_buffer(&data, dtype, &[3, 5], &Device::Cpu).expect("raw");
        assert_eq!(
            back.to_dtype(DType::F32)
                .and_then(|b| b.flatten_all()?.to_vec1::<f32>())
                .expect("v"),
            x.to_dtype(DType::F32)
                .and_then(|b| b.flatten_all()?.to_vec1::<f32>())
                .expect("v"),
        );
    }
    assert!(save_bytes(&Tensor::new(&[1u32, 2], &Device::Cpu).expect("u32")).is_err());
}
