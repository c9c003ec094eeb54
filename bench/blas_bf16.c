/* Whether oneMKL's bf16 product (cblas_gemm_bf16bf16f32: bf16 inputs, f32 accumulation) is faster
 * than its f32 sgemm on this CPU, single thread, on the client transform's shapes (256 prompt
 * rows × 576 × 1536). On the 2-core AMD EPYC (Zen 4: AVX-512 BF16, no AMX) it is not: 88–92 vs
 * 92–94 GFLOP/s, so a bf16 client apply through the BLAS would gain nothing there. Benchmark only.
 *   cc -O2 bench/blas_bf16.c -o /tmp/blas_bf16 -ldl && \
 *     MKL_THREADING_LAYER=SEQUENTIAL LD_LIBRARY_PATH=assets/mkl /tmp/blas_bf16 assets/mkl/libmkl_rt.so.2
 * Prints one JSON line per round (best of 30 calls each, alternating). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
typedef void (*sgemm_t)(int,int,int,int,int,int,float,const float*,int,const float*,int,float,float*,int);
typedef void (*bgemm_t)(int,int,int,int,int,int,float,const uint16_t*,int,const uint16_t*,int,float,float*,int);
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int c,char**v){
  void*h=dlopen(v[1],RTLD_NOW|RTLD_LOCAL); if(!h){printf("%s\n",dlerror());return 1;}
  sgemm_t sg=dlsym(h,"cblas_sgemm"); bgemm_t bg=dlsym(h,"cblas_gemm_bf16bf16f32");
  ((void(*)(int))dlsym(h,"MKL_Set_Num_Threads"))(1);
  if(!sg||!bg){fprintf(stderr,"blas_bf16: no cblas_sgemm or cblas_gemm_bf16bf16f32 in %s\n",v[1]);return 1;}
  int m=256,k=576,n=1536;
  float*a=malloc(4*m*k),*b=malloc(4*k*n),*cc=malloc(4*m*n);
  uint16_t*ab=malloc(2*m*k),*bb=malloc(2*k*n);
  for(int i=0;i<m*k;i++){a[i]=(i%13)*0.1f;ab[i]=0x3f80;}
  for(int i=0;i<k*n;i++){b[i]=(i%7)*0.1f;bb[i]=0x3f80;}
  for(int r=0;r<3;r++){
  double best_s=1e9,best_b=1e9;
  for(int it=0;it<30;it++){
    double t=now(); sg(101,111,112,m,n,k,1.0f,a,k,b,k,0.0f,cc,n); t=now()-t; if(t<best_s)best_s=t;
    t=now(); bg(101,111,112,m,n,k,1.0f,ab,k,bb,k,0.0f,cc,n); t=now()-t; if(t<best_b)best_b=t;
  }
  double fl=2.0*m*n*k;
  printf("{\"m\":%d,\"k\":%d,\"n\":%d,\"sgemm_gflops\":%.1f,\"bf16_gflops\":%.1f}\n",m,k,n,fl/best_s/1e9,fl/best_b/1e9);}
}
