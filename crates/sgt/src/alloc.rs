//! Allocator policy of the `sgt` binary (mimalloc).
//!
//! A training step frees and reallocates the same large buffers every step. With mimalloc's
//! default (freed pages go back to the OS after a delay) they were handed back between steps and
//! faulted in and zeroed again: 72 633 page faults in 8 text-SGT steps, against 2 170 when freed
//! pages are kept, and 11% less CPU time (`perf stat`, `sgt bench text-sgt --steps 8`). Keeping
//! them for good everywhere would also keep whatever a command freed earlier (the weight file read
//! at load: 500 MB), so training commands and `sgt serve` (whose joins and decoding steps do the
//! same) switch to it only once the model is loaded, after handing that back; so does `sgt proxy`
//! once the artefact is loaded (each request allocates the same transform buffers: a 256-token
//! apply in bf16 took 13.0 instead of 16.8 ms, 3 alternating pairs, `sgt bench apply`).
//!
//! Switching after loading is not the same as from the start: under `sgt serve`'s load test
//! the server still took 1,450–2,000 page faults (2 MB huge pages zeroed: 9% of its `perf`
//! samples), against 630–750 with `MIMALLOC_PURGE_DELAY` set from the start (−1 or 10⁹ ms
//! alike). `sgt serve` with stored weights frees little while loading (the weights are memory
//! maps, parsed into buffers of their final size), so it switches before loading
//! ([`keep_freed_pages_from_start`]).

/// mimalloc's `purge_delay` option (same index in mimalloc 2 and 3; the Rust bindings do not
/// name it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Its defaults (mimalloc 2: 10 ms, mimalloc 3: 1 s), to check the index before changing it.
const PURGE_DELAY_DEFAULTS: [std::os::raw::c_long; 2] = [10, 1000];

/// Returns memory freed so far to the OS, then keeps freed pages from now on. No-op when
/// `MIMALLOC_PURGE_DELAY` is set explicitly or the option does not look like `purge_delay`.
pub fn keep_freed_pages() {
    switch(true)
}

/// Keeps freed pages from now on, without handing back what was freed before: for a command
/// that has freed little so far (call it before loading).
pub fn keep_freed_pages_from_start() {
    switch(false)
}

fn switch(collect_first: bool) {
    if crate::env::get().mimalloc_purge_delay_set {
        return;
    }
    // SAFETY: plain calls into the linked global allocator; no outstanding invariants.
    unsafe {
        if !PURGE_DELAY_DEFAULTS.contains(&libmimalloc_sys::mi_option_get(PURGE_DELAY)) {
            tracing::debug!("allocator option layout not recognised; leaving it alone");
            return;
        }
        if collect_first {
            libmimalloc_sys::mi_collect(true);
        }
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
}

/// Hands memory the program has already freed back to the OS (e.g. before measuring a peak).
pub fn release_freed_pages() {
    // SAFETY: a plain call into the linked global allocator.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
