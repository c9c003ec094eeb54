//! Where the small parallel work of a decoding step runs. A step makes about ten parallel
//! calls per layer on a few rows each; handing each to rayon from the model's thread (not a
//! rayon worker) injects a job and sleeps on a latch until a woken worker has run it, which
//! costs more than the work. So: tiny elementwise work runs inline ([`SERIAL_MAX`]), and the
//! products and attention of a step run on candle's persistent pool, whose workers spin
//! briefly between calls ([`spin_pool`]). Training-sized work stays on rayon.

/// Elementwise work (norms, SwiGLU, RoPE) up to this many values runs on the calling thread.
pub const SERIAL_MAX: usize = 1 << 16;

/// Runs `f` over `0..n` split across candle's persistent thread pool (the calling thread
/// takes part), whose workers spin briefly between calls: a decode step makes about four
/// products per layer, each a few tens of microseconds, and waking rayon's sleeping workers
/// for each cost 15–25% of decode speed (measured on 2 cores).
pub fn spin_pool(n: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(n, f);
}
