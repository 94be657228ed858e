/* quant.c: weight quantization to the block formats, as llama.cpp's q8_0 and q4_0 define them.
 *
 * q8 keeps one f16 scale per 32 values and int8 values; q4 keeps one f16 scale per 32 values
 * and 4-bit values offset by 8, the scale chosen so that the value of largest magnitude maps
 * to -8 exactly (one more step on that side than on the other). */
#include "quant.h"

#include <math.h>

#include "common.h"

void quant_q8_row(const float *x, int n, wt_q8_block *out) {
    DH_ASSERT(n % WT_QBLOCK == 0);
    for (int b = 0; b < n / WT_QBLOCK; b++) {
        const float *xb = x + b * WT_QBLOCK;
        float amax = 0;
        for (int j = 0; j < WT_QBLOCK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        out[b].d = wt_f32_to_f16(d);
        for (int j = 0; j < WT_QBLOCK; j++) out[b].q[j] = (int8_t)roundf(xb[j] * id);
    }
}

void quant_q4_row(const float *x, int n, wt_q4_block *out) {
    DH_ASSERT(n % WT_QBLOCK == 0);
    for (int b = 0; b < n / WT_QBLOCK; b++) {
        const float *xb = x + b * WT_QBLOCK;
        float amax = 0, m = 0;
        for (int j = 0; j < WT_QBLOCK; j++)
            if (fabsf(xb[j]) > amax) {
                amax = fabsf(xb[j]);
                m = xb[j];
            }
        float d = m / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
        out[b].d = wt_f32_to_f16(d);
        for (int j = 0; j < WT_QBLOCK / 2; j++) {
            int lo = (int)(xb[j] * id + 8.5f), hi = (int)(xb[j + 16] * id + 8.5f);
            lo = lo < 0 ? 0 : lo > 15 ? 15 : lo;
            hi = hi < 0 ? 0 : hi > 15 ? 15 : hi;
            out[b].q[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}
