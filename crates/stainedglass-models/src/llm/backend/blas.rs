//! Optional run-time BLAS: if a system BLAS can be loaded, large f32 matrix products go through
//! its `cblas_sgemm`; otherwise candle's pure-Rust `gemm` is used, so the build never depends on
//! one. Two are known: Intel oneMKL (`libmkl_rt.so.2`, sequential layer) and OpenBLAS
//! (`libopenblas.so.0`, SkylakeX kernels). On the 2-core AVX-512 Xeon, one thread, the LM's
//! training shapes (`bench/blas_gemm.c`): oneMKL 1–5% faster when the machine is quiet (both
//! ~130–145 GFLOP/s) and 12–20% faster when it is loaded (~110 vs ~93), which it mostly is;
//! candle's `gemm` reached 75–97.
//!
//! Which one, in order (the caller sets [`BlasOptions`] once with [`configure`]; the `sgt`
//! binary fills them from `SGT_BLAS`, `SGT_BLAS_LIB` and `SGT_ASSETS`):
//! - [`BlasChoice::Off`]: none; [`BlasChoice::Mkl`] / [`BlasChoice::OpenBlas`]: only that one.
//! - [`BlasOptions::library`]: that CBLAS library first.
//! - oneMKL first on Intel CPUs, OpenBLAS first elsewhere, then the other. oneMKL is looked for
//!   in `<assets>/mkl/` ([`BlasOptions::assets`]; `scripts/setup-assets.sh` puts it there from
//!   the `mkl` wheel on PyPI), then on the loader's path.
//!
//! OpenBLAS picks its kernels from the CPU model and falls back to slow generic ones on CPUs it
//! does not know (virtual CPUs often); [`openblas_coretype`] names the kernels for the CPU
//! features seen here, which the binary puts in `OPENBLAS_CORETYPE` before anything loads (a
//! library sets no environment). oneMKL is switched to its sequential threading layer before its
//! first call.

use std::path::PathBuf;
use std::sync::OnceLock;

type SgemmFn = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

struct Blas {
    _lib: libloading::Library,
    sgemm: SgemmFn,
    kind: Kind,
    pack: Option<PackFns>,
}

/// `cblas_sgemm_pack_get_size(identifier, m, n, k)`.
type PackSizeFn = unsafe extern "C" fn(i32, i32, i32, i32) -> usize;
/// `cblas_sgemm_pack(layout, identifier, trans, m, n, k, alpha, src, ld, dest)`.
type PackFn = unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *mut f32);
/// `cblas_sgemm_compute`: `cblas_sgemm`'s arguments without `alpha` (packed into the operand).
type ComputeFn = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

/// oneMKL's packed-operand products: a matrix used in many products is packed once
/// (`super::packed`).
pub(super) struct PackFns {
    pub size: PackSizeFn,
    pub pack: PackFn,
    pub compute: ComputeFn,
}

/// The system BLAS the products go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Mkl,
    OpenBlas,
    /// A library named by [`BlasOptions::library`] that is neither.
    Other,
}

impl Kind {
    /// Short name for logs and benchmark records.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mkl => "mkl",
            Kind::OpenBlas => "openblas",
            Kind::Other => "cblas",
        }
    }
}

pub(super) const ROW_MAJOR: i32 = 101;
pub(super) const NO_TRANS: i32 = 111;
pub(super) const TRANS: i32 = 112;
/// `MKL_THREADING_SEQUENTIAL`: parallelism comes from rayon, as with OpenBLAS below.
const MKL_SEQUENTIAL: i32 = 1;

/// Which system BLAS to look for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BlasChoice {
    /// oneMKL first on Intel CPUs, OpenBLAS first elsewhere, then the other.
    #[default]
    Auto,
    Mkl,
    OpenBlas,
    /// No system BLAS: candle's `gemm`.
    Off,
}

impl std::str::FromStr for BlasChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "auto" => Ok(Self::Auto),
            "mkl" => Ok(Self::Mkl),
            "openblas" => Ok(Self::OpenBlas),
            "off" | "0" => Ok(Self::Off),
            other => Err(format!(
                "{other:?} is not a BLAS choice: use one of auto, mkl, openblas, off"
            )),
        }
    }
}

/// How the run-time BLAS is chosen (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlasOptions {
    pub choice: BlasChoice,
    /// A CBLAS library to try first.
    pub library: Option<PathBuf>,
    /// The assets folder, searched for oneMKL in its `mkl/` subfolder.
    pub assets: Option<PathBuf>,
}

static OPTIONS: OnceLock<BlasOptions> = OnceLock::new();

/// Sets how the BLAS is chosen, before the first product loads it. Fails, naming both, if it
/// was already chosen with other options (the library is loaded once per process).
pub fn configure(options: BlasOptions) -> Result<(), String> {
    let set = OPTIONS.get_or_init(|| options.clone());
    if *set == options {
        Ok(())
    } else {
        Err(format!(
            "the BLAS was already chosen with {set:?}; cannot switch to {options:?}"
        ))
    }
}

fn load() -> Option<Blas> {
    let options = OPTIONS.get_or_init(BlasOptions::default);
    let (mkl, openblas) = match options.choice {
        BlasChoice::Off => return None,
        BlasChoice::Mkl => (true, false),
        BlasChoice::OpenBlas => (false, true),
        BlasChoice::Auto => (true, true),
    };
    if let Some(path) = &options.library {
        match open(path) {
            Some(b) => return Some(b),
            None => tracing::warn!(
                "{} could not be loaded as a CBLAS library (needs cblas_sgemm); looking for \
                 oneMKL and OpenBLAS instead",
                path.display()
            ),
        }
    }
    let mut order: Vec<Vec<PathBuf>> = Vec::new();
    if mkl {
        order.push(mkl_candidates(options.assets.as_deref()));
    }
    if openblas {
        let names = ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"];
        order.push(names.iter().map(PathBuf::from).collect());
    }
    if mkl && openblas && !intel_cpu() {
        order.reverse();
    }
    order.iter().flatten().find_map(|p| open(p))
}

/// oneMKL's single dynamic library: the assets folder first, then the loader's path.
fn mkl_candidates(assets: Option<&std::path::Path>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = assets
        .map(|a| a.join("mkl").join("libmkl_rt.so.2"))
        .into_iter()
        .collect();
    v.extend([
        PathBuf::from("libmkl_rt.so.2"),
        PathBuf::from("libmkl_rt.so"),
    ]);
    v
}

/// The `OPENBLAS_CORETYPE` that suits this CPU (OpenBLAS reads it when it is loaded), if any.
pub fn openblas_coretype() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return Some("SkylakeX");
        }
        if std::is_x86_feature_detected!("avx2") {
            return Some("Haswell");
        }
    }
    None
}

/// Whether the CPU reports the vendor `GenuineIntel` (oneMKL's fast paths are tuned for it).
fn intel_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `cpuid` leaf 0 exists on every x86-64 CPU (the intrinsic is safe on newer
        // toolchains, unsafe on older ones).
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&r.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&r.edx.to_le_bytes());
        v[8..].copy_from_slice(&r.ecx.to_le_bytes());
        &v == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Loads `path` as a CBLAS library set up for one thread per call.
fn open(path: &std::path::Path) -> Option<Blas> {
    // SAFETY: loading a BLAS library whose initialisers have no preconditions.
    let lib = unsafe { libloading::Library::new(path) }.ok()?;
    // SAFETY: `cblas_sgemm` has this C signature in every CBLAS.
    let sgemm = unsafe { lib.get::<SgemmFn>(b"cblas_sgemm\0") }
        .ok()
        .map(|f| *f)?;
    // SAFETY (both lookups and calls): plain C functions taking one int, called before any
    // product; one thread per call, as parallelism comes from splitting products over rayon,
    // so BLAS threads never spin against rayon's and candle's on the same cores.
    let kind = unsafe {
        if let Ok(layer) = lib.get::<unsafe extern "C" fn(i32) -> i32>(b"MKL_Set_Threading_Layer\0")
        {
            layer(MKL_SEQUENTIAL);
            Kind::Mkl
        } else if let Ok(set) = lib.get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0")
        {
            set(1);
            Kind::OpenBlas
        } else {
            Kind::Other
        }
    };
    tracing::debug!(
        "using {} ({}) for matrix products",
        path.display(),
        kind.name()
    );
    // SAFETY: oneMKL's packed-product functions have these C signatures (LP64 interface).
    let pack = unsafe {
        match (
            lib.get(b"cblas_sgemm_pack_get_size\0"),
            lib.get(b"cblas_sgemm_pack\0"),
            lib.get(b"cblas_sgemm_compute\0"),
        ) {
            (Ok(size), Ok(pack), Ok(compute)) if kind == Kind::Mkl => Some(PackFns {
                size: *size,
                pack: *pack,
                compute: *compute,
            }),
            _ => None,
        }
    };
    Some(Blas {
        _lib: lib,
        sgemm,
        kind,
        pack,
    })
}

fn blas() -> Option<&'static Blas> {
    static B: OnceLock<Option<Blas>> = OnceLock::new();
    B.get_or_init(load).as_ref()
}

/// Whether products go through a system BLAS.
pub fn available() -> bool {
    blas().is_some()
}

/// The packed-operand products, when the BLAS has them (oneMKL).
pub(super) fn pack_fns() -> Option<&'static PackFns> {
    blas().and_then(|b| b.pack.as_ref())
}

/// The system BLAS in use, if any.
pub fn kind() -> Option<Kind> {
    blas().map(|b| b.kind)
}

/// `c (m×n) = a (m×k) · bᵀ` with `b` stored `(n×k)` row-major if `b_transposed`, else
/// `c = a · b` with `b` stored `(k×n)`. Returns `false` (and leaves `c`) without a BLAS.
pub fn sgemm(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    b_transposed: bool,
) -> bool {
    if blas().is_none() {
        return false;
    }
    par_sgemm(a, b, c, (m, n, k), b_transposed, 0.0);
    true
}

/// `c (m×n) = a (m×k) · bᵀ + beta·c` with `b` stored `(n×k)` row-major if `b_transposed`, else
/// `c = a · b + beta·c` with `b` stored `(k×n)`; the output columns are split over rayon's
/// threads (each task packs only its share of `b`). Runs with or without a system BLAS.
pub fn par_sgemm(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    (m, n, k): (usize, usize, usize),
    b_transposed: bool,
    beta: f32,
) {
    assert!(c.len() >= m * n, "sgemm: short output buffer");
    // SAFETY: `c` holds at least m×n values (checked above).
    unsafe { par_sgemm_raw(a, b, c.as_mut_ptr(), (m, n, k), b_transposed, beta) }
}

/// A new `m×n` buffer holding `a · bᵀ` (`b_transposed`) or `a · b`, as [`par_sgemm`] computes
/// it, without zero-filling it first: with `beta = 0` the product writes every value, so the
/// allocator's (serial) zeroing of reused pages is skipped.
pub fn par_sgemm_new(
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    b_transposed: bool,
) -> Vec<f32> {
    if k == 0 {
        // An empty inner dimension: the product is all zeros (not left to the BLAS).
        return vec![0.0; m * n];
    }
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the capacity holds m×n values; with beta = 0 and k > 0 every one of them is
    // written (BLAS does not read C when beta is 0, and the `gemm` fallback is told not to),
    // so all m×n are initialised before `set_len`.
    unsafe {
        par_sgemm_raw(a, b, c.as_mut_ptr(), (m, n, k), b_transposed, 0.0);
        c.set_len(m * n);
    }
    c
}

/// [`par_sgemm`] into a raw output pointer.
///
/// # Safety
/// `c` must address `m×n` writable values (initialised unless `beta == 0`) that nothing else
/// accesses meanwhile.
unsafe fn par_sgemm_raw(
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    (m, n, k): (usize, usize, usize),
    b_transposed: bool,
    beta: f32,
) {
    assert!(
        a.len() >= m * k && b.len() >= n * k,
        "sgemm: short input buffers"
    );
    let ldb = if b_transposed { k } else { n };
    let c_ptr = c as usize;
    // Computes the output columns `j0..j0 + cols`: `b`'s rows (transposed) or columns.
    let call = |j0: usize, cols: usize| {
        let b_off = if b_transposed { j0 * k } else { j0 };
        // SAFETY: `a` holds m×k, `b` the full matrix with leading dimension `ldb`, and `c` m×n
        // with leading dimension n; each task writes only its own column range of `c`.
        unsafe {
            sgemm_strided(
                false,
                b_transposed,
                m,
                cols,
                k,
                1.0,
                a.as_ptr(),
                k,
                b.as_ptr().add(b_off),
                ldb,
                beta,
                (c_ptr as *mut f32).add(j0),
                n,
            )
        }
    };
    for_column_blocks((m, n, k), call);
}

/// Calls `call(j0, cols)` for the column blocks an `m×k · k×n` product is split into, in
/// parallel: one block per rayon thread ([`columns_per_task`]), or all `n` columns at once for
/// a small product. `par_sgemm` and the stored-weight product share it, so they split alike.
pub(super) fn for_column_blocks(
    (m, n, k): (usize, usize, usize),
    call: impl Fn(usize, usize) + Sync,
) {
    let per = columns_per_task(n);
    if per >= n || m * n * k < MIN_SPLIT_WORK {
        call(0, n);
    } else {
        use rayon::prelude::*;
        (0..n.div_ceil(per))
            .into_par_iter()
            .for_each(|i| call(i * per, per.min(n - i * per)));
    }
}

/// Width of the column blocks a product's `n` output columns are split into, one per rayon
/// thread (`n` itself on one thread).
pub(super) fn columns_per_task(n: usize) -> usize {
    let parts = rayon::current_num_threads().max(1);
    if parts == 1 {
        return n.max(1);
    }
    n.div_ceil(parts).div_ceil(MIN_COLS_PER_TASK) * MIN_COLS_PER_TASK
}

/// Column blocks are multiples of this (SIMD-friendly).
const MIN_COLS_PER_TASK: usize = 16;
/// Products smaller than this many multiply-adds run on one thread.
pub(super) const MIN_SPLIT_WORK: usize = 1 << 20;

/// General strided product `C = alpha·op(A)·op(B) + beta·C` on row-major storage: `op(A)` is
/// `m×k` (`A` stored `k×m` when `ta`), `op(B)` is `k×n` (`B` stored `n×k` when `tb`), with
/// row strides `lda`, `ldb`, `ldc`. Single-threaded (callers parallelise); system BLAS when
/// loaded, the `gemm` crate otherwise.
///
/// # Safety
/// The pointers must address matrices of the stated shapes and strides; `c` must not be
/// written concurrently in the same region.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_strided(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if let Some(bl) = blas() {
        (bl.sgemm)(
            ROW_MAJOR,
            if ta { TRANS } else { NO_TRANS },
            if tb { TRANS } else { NO_TRANS },
            m as i32,
            n as i32,
            k as i32,
            alpha,
            a,
            lda as i32,
            b,
            ldb as i32,
            beta,
            c,
            ldc as i32,
        );
        return;
    }
    let (a_rs, a_cs) = if ta {
        (1, lda as isize)
    } else {
        (lda as isize, 1)
    };
    let (b_rs, b_cs) = if tb {
        (1, ldb as isize)
    } else {
        (ldb as isize, 1)
    };
    // gemm's convention: dst = alpha·dst + beta·lhs·rhs.
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        beta != 0.0,
        a,
        a_cs,
        a_rs,
        b,
        b_cs,
        b_rs,
        beta,
        alpha,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is not a CBLAS library is refused (no panic), whatever else is loaded.
    #[test]
    fn a_non_blas_library_is_refused() {
        let dir = std::env::temp_dir().join(format!("sgt-blas-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let fake = dir.join("libnot_a_blas.so");
        std::fs::write(&fake, b"not a shared library").expect("write");
        assert!(open(&fake).is_none());
        assert!(open(&dir.join("missing.so")).is_none());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn strided_product_matches_naive_in_all_transpositions() {
        let (m, n, k) = (5, 7, 6);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 2.0).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let ae = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
                let be = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
                let mut c = vec![1f32; m * n];
                let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
                // SAFETY: buffers sized for the shapes above.
                unsafe {
                    sgemm_strided(
                        ta,
                        tb,
                        m,
                        n,
                        k,
                        2.0,
                        a.as_ptr(),
                        lda,
                        b.as_ptr(),
                        ldb,
                        0.5,
                        c.as_mut_ptr(),
                        n,
                    )
                };
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 =
                            2.0 * (0..k).map(|p| ae(i, p) * be(p, j)).sum::<f32>() + 0.5;
                        assert!((c[i * n + j] - want).abs() < 1e-3, "ta {ta} tb {tb}");
                    }
                }
            }
        }
    }

    /// The allocating product (split over threads at this size) equals the naive product in
    /// both layouts of `b`, and an empty inner dimension gives zeros.
    #[test]
    fn allocating_product_matches_naive() {
        let (m, n, k) = (64, 160, 112);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 3) % 13) as f32 - 6.0).collect();
        for bt in [false, true] {
            let c = par_sgemm_new(&a, &b, (m, n, k), bt);
            assert_eq!(c.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k)
                        .map(|p| a[i * k + p] * if bt { b[j * k + p] } else { b[p * n + j] })
                        .sum();
                    assert_eq!(c[i * n + j], want, "bt {bt} at ({i}, {j})");
                }
            }
        }
        assert!(par_sgemm_new(&[], &[], (3, 4, 0), true)
            .iter()
            .all(|&v| v == 0.0));
    }
}
