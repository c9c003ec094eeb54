//! Shared by the serving tests: the bundled model (loaded once), servers on free loopback ports.

#![allow(dead_code)]

use candle_core::Device;
use stainedglass_models::llm::Llama;
use stainedglass_serve::server::{self, ServerConfig, ServerState};
use stainedglass_text::TextTokenizer;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

pub fn gguf() -> PathBuf {
    // The products on oneMKL from the assets folder, as the `sgt` binary runs them.
    let _ = stainedglass_models::llm::configure_blas(stainedglass_models::llm::BlasOptions {
        assets: Some(stainedglass_test_support::assets()),
        ..Default::default()
    });
    stainedglass_test_support::smollm2_gguf()
}

pub fn model() -> Arc<Llama> {
    static M: OnceLock<Arc<Llama>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Llama::load(&gguf(), &Device::Cpu).expect("load")))
        .clone()
}

pub fn tokenizer() -> Arc<TextTokenizer> {
    static T: OnceLock<Arc<TextTokenizer>> = OnceLock::new();
    T.get_or_init(|| Arc::new(TextTokenizer::from_model_path(&gguf()).expect("tokenizer")))
        .clone()
}

/// Starts a server with `config` on a free port; returns its base URL.
pub async fn start_server(config: ServerConfig) -> String {
    let state =
        Arc::new(ServerState::new(model(), tokenizer().stop_tokens(), config).expect("state"));
    let (listener, addr) = server::bind("127.0.0.1:0").await.expect("bind");
    tokio::spawn(server::run(
        listener,
        server::router(state),
        std::future::pending(),
    ));
    format!("http://{addr}")
}

/// The tensor a `torch.save` archive's `archive/data.pkl` rebuilds, read with candle's pickle
/// parser (an independent reader of the format).
pub fn pickled_tensor_info(
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
) -> candle_core::pickle::TensorInfo {
    use candle_core::pickle::{Object, Stack};
    use std::io::Read;
    let mut pkl = Vec::new();
    zip.by_name("archive/data.pkl")
        .expect("pkl")
        .read_to_end(&mut pkl)
        .expect("read");
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut std::io::BufReader::new(pkl.as_slice()))
        .expect("pickle parses");
    stack
        .finalize()
        .expect("one object")
        .into_tensor_info(
            Object::Unicode("x".into()),
            std::path::Path::new("archive/data"),
        )
        .expect("tensor info")
        .expect("a _rebuild_tensor_v2 tensor")
}
