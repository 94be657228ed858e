#include <stdio.h>
#include <stdlib.h>
#include "core/sampler.h"
#include "core/nn.h"
int main(int argc,char**argv){ nn_init(1, argc > 1);
  int V=129280; float *flat=malloc(V*4), *peak=malloc(V*4); srand(1);
  for(int i=0;i<V;i++){ flat[i]=(float)(rand()%2000)/100.0f-10.0f; peak[i]=(float)(rand()%1000)/100.0f - (i%97==0 ? 0 : 25.0f); }
  float *ls[2]={flat,peak};
  sampler_params cfg[4]={{1,1,0,5},{0.7f,0.9f,0,6},{0.8f,0.95f,40,7},{1.3f,0.5f,0,8}};
  for(int c=0;c<4;c++) for(int d=0;d<2;d++){ sampler *s=sampler_new(V,cfg[c]); unsigned h=0;
    for(int i=0;i<(d==0&&cfg[c].top_k==0&&cfg[c].top_p<1?20:300);i++) h=h*31+(unsigned)sampler_sample(s,ls[d],0,i,0);
    printf("cfg %d %s: %08x\n",c,d?"peaked":"flat",h); sampler_free(s);}
}
