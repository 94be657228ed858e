#include <immintrin.h>
#include <stdio.h>
#include <time.h>
int main(void){
  __m512 a[12]; for(int i=0;i<12;i++) a[i]=_mm512_set1_ps(1.0f+i*1e-7f);
  __m512 m=_mm512_set1_ps(0.9999999f), c=_mm512_set1_ps(1e-7f);
  struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
  long N=200000000;
  for(long k=0;k<N;k++){
#pragma GCC unroll 12
    for(int i=0;i<12;i++) a[i]=_mm512_fmadd_ps(a[i],m,c);
  }
  clock_gettime(CLOCK_MONOTONIC,&t1);
  double dt=(t1.tv_sec-t0.tv_sec)+1e-9*(t1.tv_nsec-t0.tv_nsec);
  float s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_ps(a[i]);
  printf("%.3f zmm FMA/ns (%g)\n", N*12/dt*1e-9, s);
}
