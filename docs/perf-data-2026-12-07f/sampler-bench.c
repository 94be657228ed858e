#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "core/sampler.h"
#include "core/nn.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){ nn_init(1, argc > 1);
  int V=129280; float *l=malloc(V*4); srand(1);
  for(int i=0;i<V;i++) l[i]=(float)(rand()%2000)/100.0f-10.0f;
  const char *names[]={"temperature 1 (the API's default: no top-k, top-p 1)","temperature 0.8, top-p 0.95, top-k 40 (our default)"};
  unsigned h=0;
  for(int c=0;c<2;c++){ sampler_params p=sampler_default_params(); p.seed=5;
    if(c==0){p.temperature=1;p.top_p=1;p.top_k=0;}
    sampler *s=sampler_new(V,p); double t[7];
    for(int r=0;r<7;r++){double t0=now(); for(int i=0;i<100;i++) h = h*31 + (unsigned)sampler_sample(s,l,0,i,0); t[r]=(now()-t0)/100;}
    for(int a=0;a<7;a++)for(int b=a+1;b<7;b++)if(t[b]<t[a]){double q=t[a];t[a]=t[b];t[b]=q;}
    printf("%s %s: median %.3f ms a token (min %.3f, max %.3f)\n", argc>1?"portable":"avx512", names[c],t[3]*1e3,t[0]*1e3,t[6]*1e3); sampler_free(s);}
  printf("hash of the 1400 draws: %08x\n", h);
}
