#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use candle_core::{Device, Tensor};
use stainedglass_core::NoiseRng;
use stainedglass_models::llm::Llama;
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let m = Llama::load(
        std::path::Path::new("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &dev,
    )?;
    let cloak = TransformerCloak::from_base(TransformerCloakConfig::new(m.config().clone()), &m)?;
    let ids: Vec<u32> = (0..512u32).map(|i| 100 + i * 37).collect();
    let x = m.embed(&Tensor::from_vec(ids, (4, 128), &dev)?)?;
    let ones = vec![1u8; 512];
    let mut rng = NoiseRng::seeded(0);
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let (mut tf, mut tb) = (0.0, 0.0);
    for _ in 0..n {
        let t = Instant::now();
        let o = cloak.forward_masked(&x, Some(&ones), Some(&ones), &mut rng)?;
        let l = (o.transformed.sqr()?.sum_all()? + o.std.sum_all()?)?;
        tf += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _g = l.backward()?;
        tb += t.elapsed().as_secs_f64();
    }
    println!(
        "cloak fwd {:.1} ms, bwd {:.1} ms",
        tf / n as f64 * 1e3,
        tb / n as f64 * 1e3
    );
    Ok(())
}
