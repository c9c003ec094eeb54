//! Subnormal floats off: flush-to-zero (FTZ) and denormals-are-zero (DAZ) for the calling
//! thread and every thread it creates afterwards (Linux threads inherit the floating-point
//! environment of their creator), BLAS and rayon pools included when they start later.
//!
//! Why: a confident softmax over a 49 152-token vocabulary produces many probabilities below
//! `f32::MIN_POSITIVE`; the matrix products of its backward pass then run on subnormal inputs,
//! which x86 cores execute through microcode assists, several times slower. Zeroing them
//! changes results only below 1.2e-38. Written here rather than taken from a crate because it
//! is two instructions, and the crates we found only offer a scoped guard, which worker threads
//! started later do not see.

/// Sets FTZ and DAZ on this thread; returns whether the platform supports it (x86-64 only;
/// elsewhere nothing changes). Call it first thing in `main`, before any thread pool starts.
pub fn flush_subnormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        const FTZ: u32 = 1 << 15;
        const DAZ: u32 = 1 << 6;
        let mut csr: u32 = 0;
        // SAFETY: `stmxcsr`/`ldmxcsr` read and write the SSE control register through a valid
        // pointer to a local u32; setting FTZ/DAZ only changes how subnormals round, every
        // x86-64 CPU supports both bits (DAZ since SSE2 steppings shipped with x86-64).
        unsafe {
            core::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
            csr |= FTZ | DAZ;
            core::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags));
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    #[test]
    fn subnormal_results_become_zero_on_this_thread_and_its_children() {
        // A fresh thread, so the test runner's own thread keeps its settings.
        std::thread::spawn(|| {
            let tiny = black_box(f32::MIN_POSITIVE);
            assert!(black_box(tiny / 4.0) > 0.0, "subnormals exist before");
            if !flush_subnormals() {
                return;
            }
            assert_eq!(black_box(tiny / 4.0), 0.0, "FTZ: subnormal result flushed");
            let child = std::thread::spawn(move || black_box(tiny / 4.0));
            assert_eq!(
                child.join().expect("child"),
                0.0,
                "inherited by new threads"
            );
            // Normal numbers are untouched.
            assert_eq!(black_box(1.5f32) * 2.0, 3.0);
        })
        .join()
        .expect("test thread");
    }
}
