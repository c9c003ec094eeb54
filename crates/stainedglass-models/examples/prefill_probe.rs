#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use candle_core::{Device, Tensor};
use stainedglass_models::llm::{KvCache, Llama};
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let m = Llama::load(
        std::path::Path::new("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Device::Cpu,
    )?;
    let ids: Vec<u32> = (0..128u32).map(|i| 100 + i * 37).collect();
    let x = m.embed(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?)?;
    let mode = std::env::args().nth(1).unwrap_or_default();
    let t = Instant::now();
    for _ in 0..20 {
        if mode == "layers" {
            m.forward_embeds(&x, None, stainedglass_models::Stop::AtLayer(30))?;
        } else {
            let mut c = KvCache::new(30, 1);
            m.forward_cached(&x, None, &mut c)?;
        }
    }
    println!("{:.1} tok/s", 20.0 * 128.0 / t.elapsed().as_secs_f64());
    Ok(())
}
