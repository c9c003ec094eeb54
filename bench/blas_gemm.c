/* Side-by-side single-thread sgemm throughput of the run-time BLAS choices of
 * stainedglass-models/src/llm/backend/blas.rs on the LM's training shapes (512 rows; a column block
 * per thread as the products are split): OpenBLAS, oneMKL, and oneMKL with the weight operand
 * packed once (llm/backend/packed.rs). Benchmark only.
 *   cc -O2 bench/blas_gemm.c -o /tmp/blas_gemm -ldl && /tmp/blas_gemm assets/mkl/libmkl_rt.so.2
 * Prints one JSON line per shape (best of 40 calls each, calls alternating between the three). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
typedef void (*sgemm_t)(int, int, int, int, int, int, float, const float *, int, const float *,
                        int, float, float *, int);
typedef size_t (*pack_size_t)(int, int, int, int);
typedef void (*pack_t)(int, int, int, int, int, int, float, const float *, int, float *);
typedef void (*compute_t)(int, int, int, int, int, int, const float *, int, const float *, int,
                          float, float *, int);
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
static void *must(void *p, const char *what) {
  if (!p) { fprintf(stderr, "blas_gemm: cannot load %s: %s\n", what, dlerror()); exit(1); }
  return p;
}
int main(int argc, char **argv) {
  if (setenv("OPENBLAS_CORETYPE", "SkylakeX", 0) != 0) return 1;
  void *ob = must(dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL), "libopenblas.so.0");
  ((void (*)(int))must(dlsym(ob, "openblas_set_num_threads"), "openblas_set_num_threads"))(1);
  sgemm_t ob_sgemm = must(dlsym(ob, "cblas_sgemm"), "OpenBLAS cblas_sgemm");
  const char *mkl_path = argc > 1 ? argv[1] : "assets/mkl/libmkl_rt.so.2";
  void *mk = must(dlopen(mkl_path, RTLD_NOW | RTLD_LOCAL), mkl_path);
  ((int (*)(int))must(dlsym(mk, "MKL_Set_Threading_Layer"), "MKL_Set_Threading_Layer"))(1);
  sgemm_t mk_sgemm = must(dlsym(mk, "cblas_sgemm"), "oneMKL cblas_sgemm");
  pack_size_t size = must(dlsym(mk, "cblas_sgemm_pack_get_size"), "cblas_sgemm_pack_get_size");
  pack_t pack = must(dlsym(mk, "cblas_sgemm_pack"), "cblas_sgemm_pack");
  compute_t compute = must(dlsym(mk, "cblas_sgemm_compute"), "cblas_sgemm_compute");
  /* rows, columns of this block, inner, b transposed (forward x·Wᵀ) or not (dy·W) */
  int shapes[][4] = {{512, 480, 576, 1},  {512, 288, 576, 1},  {512, 1536, 576, 1},
                     {512, 288, 1536, 0}, {512, 288, 3072, 0}, {512, 768, 576, 0}};
  int n_shapes = sizeof shapes / sizeof shapes[0];
  for (int s = 0; s < n_shapes; s++) {
    int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], bt = shapes[s][3];
    float *a = malloc(4L * m * k), *b = malloc(4L * n * k), *c = malloc(4L * m * n);
    float *bp = malloc(size(162, m, n, k));
    if (!a || !b || !c || !bp) return 1;
    for (long i = 0; i < (long)m * k; i++) a[i] = (float)(i % 13) / 7.0f - 0.9f;
    for (long i = 0; i < (long)n * k; i++) b[i] = (float)(i % 11) / 6.0f - 0.8f;
    int ldb = bt ? k : n, tb = bt ? 112 : 111;
    pack(101, 162, tb, m, n, k, 1.0f, b, ldb, bp);
    double best[3] = {1e9, 1e9, 1e9};
    for (int r = 0; r < 40; r++) {
      for (int w = 0; w < 3; w++) {
        double t = now();
        if (w == 0) ob_sgemm(101, 111, tb, m, n, k, 1.0f, a, k, b, ldb, 0.0f, c, n);
        if (w == 1) mk_sgemm(101, 111, tb, m, n, k, 1.0f, a, k, b, ldb, 0.0f, c, n);
        if (w == 2) compute(101, 111, 151, m, n, k, a, k, bp, ldb, 0.0f, c, n);
        t = now() - t;
        if (t < best[w]) best[w] = t;
      }
    }
    double gf = 2.0 * m * n * k / 1e9;
    printf("{\"m\": %d, \"n\": %d, \"k\": %d, \"layout\": \"%s\", \"openblas_gflops\": %.1f, "
           "\"mkl_gflops\": %.1f, \"mkl_packed_gflops\": %.1f, \"mkl_over_openblas\": %.3f, "
           "\"packed_over_mkl\": %.3f}\n",
           m, n, k, bt ? "NT" : "NN", gf / best[0], gf / best[1], gf / best[2], best[0] / best[1],
           best[1] / best[2]);
    free(a); free(b); free(c); free(bp);
  }
  return 0;
}
