/* sampler-topp-bench.c: sampler_sample with top-p and no top-k over 129,280 flat logits (the
 * best 1024 do not hold top_p of the mass, so it sorts the whole vocabulary), 7 x 20 calls;
 * and the hash of the draws, to compare two libraries' tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "core/sampler.h"
#include "core/nn.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(void){ nn_init(1, 0);
  int V=129280; float *l=malloc(V*4); srand(1);
  for(int i=0;i<V;i++) l[i]=(float)(rand()%2000)/100.0f-10.0f;
  float tp[2]={0.95f,0.5f}; unsigned h=0;
  for(int c=0;c<2;c++){ sampler_params p={.temperature=0.8f,.top_p=tp[c],.top_k=0,.seed=5};
    sampler *s=sampler_new(V,p); double t[7];
    for(int r=0;r<7;r++){double t0=now(); for(int i=0;i<20;i++) h = h*31 + (unsigned)sampler_sample(s,l,0,r*20+i,0); t[r]=(now()-t0)/20;}
    for(int a=0;a<7;a++)for(int b=a+1;b<7;b++)if(t[b]<t[a]){double q=t[a];t[a]=t[b];t[b]=q;}
    printf("temperature 0.8, top-p %.2f, no top-k: median %.3f ms a token (min %.3f, max %.3f)\n", tp[c], t[3]*1e3,t[0]*1e3,t[6]*1e3); sampler_free(s);}
  printf("hash of the 280 draws: %08x\n", h);
}
