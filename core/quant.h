/* quant.h: f32 rows into the q8 and q4 block formats of tensor.h (quant_ prefix). */
#ifndef DH_QUANT_H
#define DH_QUANT_H
#include "tensor.h"

/* n a multiple of 32. q8: d = max|x| / 127, q = round(x / d). */
void quant_q8_row(const float *x, int n, wt_q8_block *out);
/* q4: d = m / -8 with m the value of largest magnitude, nibble = clamp(round(x / d) + 8, 0, 15). */
void quant_q4_row(const float *x, int n, wt_q4_block *out);
#endif
