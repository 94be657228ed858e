/* quant.h: f32 rows into the q8 and q4 block formats of tensor.h (quant_ prefix). */
#ifndef DH_QUANT_H
#define DH_QUANT_H
#include "tensor.h"

/* n a multiple of 32. q8: d = max|x| / 127 (NaN ignored), q = roundf(x * (1/d)) as
 * kern_ops.quantize defines it, the f32 d stored as f16. Vectorized where the CPU allows; the
 * bits never depend on it. */
void quant_q8_row(const float *x, int n, wt_q8_block *out);
/* q4: d = m / -8 with m the first value of largest magnitude, nibble = clamp(trunc(x * (1/d)
 * + 8.5), 0, 15) (0 where that is NaN), d stored as f16. Vectorized where the CPU allows, bit
 * for bit the same as: */
void quant_q4_row(const float *x, int n, wt_q4_block *out);
/* the scalar definition, which CPUs without AVX-512 run (exposed for the tests) */
void quant_q4_row_ref(const float *x, int n, wt_q4_block *out);
#endif
