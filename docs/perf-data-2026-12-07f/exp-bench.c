#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "core/kern.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(void){
  const kern_ops *t[2]={kern_portable(),kern_avx512()};
  int n=1024; float *x=malloc(n*4); double *y=malloc(n*8);
  for(int i=0;i<n;i++) x[i]=(float)(rand()%2000)/100.0f-10.0f;
  for(int k=0;k<2;k++){ double best=1e9;
    for(int rep=0;rep<20;rep++){ double t0=now(); for(int it=0;it<1000;it++) t[k]->exp_scaled(y,x,n,10.0f,1/0.8); double dt=now()-t0; if(dt<best)best=dt;}
    printf("%s: exp_scaled %.2f ns/value\n", t[k]->name, best/1000/n*1e9);}
}
