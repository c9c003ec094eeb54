//! Compares the bundled GGUF loaded in f32 and as stored: last-position logits on a prompt and
//! greedy decode speed.
use candle_core::{Device, Tensor};
use stainedglass_models::llm::{Llama, Prompt, SamplingParams};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let p = std::path::PathBuf::from(std::env::args().nth(1).expect("gguf path"));
    let f = Llama::load(&p, &Device::Cpu)?;
    let q = Llama::load_stored(&p, &Device::Cpu)?;
    println!("bytes f32 {} stored {}", f.weight_bytes(), q.weight_bytes());
    let ids: Vec<u32> = (0..40).map(|i| 200 + i * 37).collect();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let lf = f
        .forward_ids(&x, None)?
        .squeeze(0)?
        .get(39)?
        .to_vec1::<f32>()?;
    let lq = q
        .forward_ids(&x, None)?
        .squeeze(0)?
        .get(39)?
        .to_vec1::<f32>()?;
    let am = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &x)| if x > a.1 { (i, x) } else { a })
            .0
    };
    let md = lf
        .iter()
        .zip(&lq)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    println!(
        "argmax f32 {} stored {}; max |Δlogit| {md:.3}",
        am(&lf),
        am(&lq)
    );
    for (name, m) in [("f32", &f), ("stored", &q)] {
        for _ in 0..2 {
            let params = SamplingParams {
                max_new_tokens: 65,
                ..Default::default()
            };
            let mut t0 = None;
            let mut n = 0;
            m.generate(Prompt::Ids(&ids[..16]), &params, |_| {
                if t0.is_none() {
                    t0 = Some(Instant::now())
                } else {
                    n += 1
                };
                true
            })?;
            let dt = t0.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
            println!("{name}: decode {:.1} tok/s", n as f64 / dt);
        }
    }
    Ok(())
}
