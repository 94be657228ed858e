/* quant.h: f32 rows into the q8, q4 and q4k block formats of tensor.h (quant_ prefix). */
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
/* q4k (tensor.h): per sub-block of 32 the affine fit x ~ a q + b (a >= 0, b <= 0, q 0..15) of
 * least squared error among a few grids, a and -b quantized to 6 bits against the super-block's
 * f16 d = max a / 63 and dmin = max(-b) / 63, then each nibble the nearest against the stored
 * scale and min. Writes wt_q4k_row_bytes(n) bytes; NaN counts as 0. n a multiple of 32. */
void quant_q4k_row(const float *x, int n, uint8_t *out);
#endif
