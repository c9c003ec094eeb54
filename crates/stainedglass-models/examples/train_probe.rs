#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use candle_core::{DType, Device, Tensor, Var};
use stainedglass_models::llm::{Llama, Stop};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let m = Llama::load(
        std::path::Path::new("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &dev,
    )?;
    let ids: Vec<u32> = (0..512u32).map(|i| 100 + i * 37).collect();
    let base = m.embed(&Tensor::from_vec(ids, (4, 128), &dev)?)?;
    let noise = (Tensor::randn(0f32, 1.0, base.dims(), &dev)? * 0.01)?;
    let mask = Tensor::ones((4, 128), DType::U8, &dev)?;
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let (mut tf, mut tn, mut tb) = (0.0, 0.0, 0.0);
    for _ in 0..n {
        let t = Instant::now();
        let clean = m.forward_embeds(&base, Some(&mask), Stop::AtLayer(6))?;
        tf += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let x = Var::from_tensor(&(&base + &noise)?)?;
        let noisy = m.forward_embeds(x.as_tensor(), Some(&mask), Stop::AtLayer(6))?;
        let loss = (noisy - clean)?.sqr()?.mean_all()?;
        tn += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _g = loss.backward()?;
        tb += t.elapsed().as_secs_f64();
    }
    let k = n as f64;
    println!(
        "clean fwd {:.0} ms, tracked fwd {:.0} ms, backward {:.0} ms, total {:.0} tok/s",
        tf / k * 1e3,
        tn / k * 1e3,
        tb / k * 1e3,
        512.0 * k / (tf + tn + tb)
    );
    Ok(())
}
