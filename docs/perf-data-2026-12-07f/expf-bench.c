#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "core/kern.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(void){
  const kern_ops *t[2]={kern_portable(),kern_avx512()};
  int n=1025; float *x=malloc(n*4), *y=malloc(n*4);
  for(int i=0;i<n;i++) x[i]=(float)(rand()%1000)/100.0f-5.0f;
  for(int k=0;k<2;k++){ double best=1e9;
    for(int rep=0;rep<20;rep++){ double t0=now(); for(int it=0;it<1000;it++){ for(int i=0;i<n;i++) y[i]=x[i]; t[k]->exp_sub(y,n,5.0f);} double dt=now()-t0; if(dt<best)best=dt;}
    printf("%s exp16=%d: %.2f ns/value\n", t[k]->name, t[k]->exp16, best/1000/n*1e9);}
}
