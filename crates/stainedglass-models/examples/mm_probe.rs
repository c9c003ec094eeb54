use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (m, k, n) in [
        (128usize, 576usize, 3072usize),
        (512, 576, 3072),
        (128, 576, 960),
        (512, 1536, 576),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let wt = w.t()?.contiguous()?;
        for (name, rhs) in [("w.t() view", w.t()?), ("contiguous (k,n)", wt.clone())] {
            let _ = x.matmul(&rhs)?;
            let t = Instant::now();
            let it = 20;
            for _ in 0..it {
                let _ = x.matmul(&rhs)?;
            }
            let dt = t.elapsed().as_secs_f64() / it as f64;
            println!(
                "{m}x{k}x{n} {name}: {:.1} GFLOP/s",
                2.0 * (m * k * n) as f64 / dt / 1e9
            );
        }
    }
    Ok(())
}
