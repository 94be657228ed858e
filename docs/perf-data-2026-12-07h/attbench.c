/* attbench.c: the absorbed attention's kernels alone (nn_dot_rows, nn_softmax, nn_axpy_rows), one
 * thread, genesis-5b's shapes: NH heads over P positions of L layers, rows of 512 + 64 floats in
 * cache blocks of 16 rows. Not a test; a table line on stdout, the best of REPS.
 *   attbench P NH L REPS MODE PF
 * MODE 0: blocks laid out as the KV cache was before d81d32c ([block][layer]: a layer's blocks
 * L blocks apart); 1: blocks shuffled; 2: a layer's blocks contiguous (as after d81d32c).
 * PF > 0: prefetch the whole block PF ahead before each block's scores; PF < 0: a quarter of the
 * block -PF ahead before each 4 rows' scores, with locality HINT (build with -DHINT=3, 2 or 1).
 * Build: gcc -O2 -march=native -DHINT=2 -I. -I<build> attbench.c <build>/core/libdh_core.a
 *        -lopenblas -lm -lpthread */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "core/nn.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  int P=argc>1?atoi(argv[1]):4096, NH=argc>2?atoi(argv[2]):8, L=argc>3?atoi(argv[3]):17, reps=argc>4?atoi(argv[4]):5;
  int C=512,row=576,B=16; nn_init(1,0); int mode=argc>5?atoi(argv[5]):0; int pf=argc>6?atoi(argv[6]):0;
  int nb=(P+B-1)/B; size_t blk=(size_t)B*row;
  /* L layers of blocks, scattered: allocate a pool and shuffle */
  size_t nblk=(size_t)nb*L; float*pool=aligned_alloc(64,nblk*blk*4); for(size_t i=0;i<nblk*blk;i++)pool[i]=(float)((i*2654435761u)%1000)/1000.f-0.5f;
  size_t*perm=malloc(nblk*sizeof*perm); for(size_t i=0;i<nblk;i++)perm[i]=i; if(mode==1){srand(1); for(size_t i=nblk-1;i>0;i--){size_t j=rand()%(i+1),t=perm[i];perm[i]=perm[j];perm[j]=t;}} else if(mode==0){for(int l=0;l<L;l++)for(int b=0;b<nb;b++)perm[(size_t)l*nb+b]=(size_t)b*L+l;}
  float*q=aligned_alloc(64,(size_t)NH*row*4); for(int i=0;i<NH*row;i++)q[i]=0.01f*(i%37);
  float*sc=aligned_alloc(64,(size_t)NH*P*4), *ol=aligned_alloc(64,(size_t)NH*C*4);
  double best_d=1e9,best_a=1e9,best_s=1e9;
  for(int r=0;r<reps;r++){
    double td=0,ta=0,ts=0;
    for(int l=0;l<L;l++){
      double t0=now();
      for(int b=0;b<nb;b++){ if(pf<0){ const char*nx=(const char*)(pool+perm[(size_t)l*nb+(b+(-pf)<nb?b-pf:b)]*blk); const float*xb=pool+perm[(size_t)l*nb+b]*blk; for(int r4=0;r4<16;r4+=4){ for(size_t o=r4*(blk*4/16);o<(r4+4)*(blk*4/16);o+=64) __builtin_prefetch(nx+o,0,HINT); nn_dot_rows(sc+b*B+r4,P,q,row,NH,xb+(size_t)r4*row,row,4,row);} continue;} if(pf&&b+pf<nb){const char*nx=(const char*)(pool+perm[(size_t)l*nb+b+pf]*blk); for(size_t o=0;o<blk*4;o+=64) __builtin_prefetch(nx+o,0,3);} nn_dot_rows(sc+b*B,P,q,row,NH,pool+perm[(size_t)l*nb+b]*blk,row,B<P-b*B?B:P-b*B,row);}
      double t1=now();
      for(int h=0;h<NH;h++) nn_softmax(sc+(size_t)h*P,P);
      double t2=now();
      memset(ol,0,(size_t)NH*C*4);
      for(int b=0;b<nb;b++) nn_axpy_rows(ol,C,sc+b*B,P,NH,pool+perm[(size_t)l*nb+b]*blk,row,B<P-b*B?B:P-b*B,C);
      double t3=now(); td+=t1-t0; ts+=t2-t1; ta+=t3-t2;
    }
    if(td<best_d)best_d=td; if(ta<best_a)best_a=ta; if(ts<best_s)best_s=ts;
  }
  double fd=(double)NH*P*row*L, fa=(double)NH*P*C*L;
  printf("P=%d NH=%d L=%d: dot %.2f ms (%.2f GFMA/s)  softmax %.2f ms  axpy %.2f ms (%.2f GFMA/s)  cache %.1f MB\n",P,NH,L,best_d*1e3,fd/best_d/1e9,best_s*1e3,best_a*1e3,fa/best_a/1e9,nblk*blk*4/1e6);
  return 0;}
