/* tensor.h: typed, read-only views of weight matrices whatever their storage (wt_ prefix).
 *
 * A weight matrix is stored [rows, cols] = [out, in], as checkpoints store linear layers.
 * The view never owns its data: it points into an mmap'd safetensors file, or into a buffer
 * that the model owns (converted or quantized weights). Vectors (norm weights, biases) are
 * always widened to f32 at load and are plain `const float *`. */
#ifndef DH_TENSOR_H
#define DH_TENSOR_H
#include <stddef.h>
#include <stdint.h>

typedef enum dh_dtype {
    DT_F32 = 0,
    DT_BF16 = 1,
    DT_F16 = 2,
    DT_Q8 = 3, /* blocks of 32 int8 with one f16 scale: 34 bytes a block */
    DT_Q4 = 4, /* blocks of 32 4-bit values with one f16 scale: 18 bytes a block */
    DT_COUNT
} dh_dtype;

#define WT_QBLOCK 32 /* values per quantization block */

typedef struct wt_q8_block {
    uint16_t d;            /* f16 scale */
    int8_t q[WT_QBLOCK];   /* value = d * q */
} wt_q8_block;

typedef struct wt_q4_block {
    uint16_t d;                  /* f16 scale */
    uint8_t q[WT_QBLOCK / 2];    /* value = d * (nibble - 8); element j is the low nibble of
                                    q[j] for j < 16, the high nibble of q[j - 16] for j >= 16 */
} wt_q4_block;

typedef struct wmat {
    dh_dtype dtype;
    int rows; /* out features */
    int cols; /* in features */
    union {
        const float *f32;
        const uint16_t *bf16;
        const uint16_t *f16;
        const wt_q8_block *q8; /* rows * cols/32 blocks, row-major */
        const wt_q4_block *q4;
    } p;
} wmat;

/* Name of a dtype ("f32", "bf16", ...); and the inverse, -1 if unknown. */
const char *wt_dtype_name(dh_dtype t);
int wt_dtype_parse(const char *name);
/* Bytes a [rows, cols] matrix of dtype t takes (cols must be a multiple of 32 for q8/q4). */
size_t wt_bytes(dh_dtype t, size_t rows, size_t cols);
/* Bits per weight, counting scales. */
double wt_bits_per_weight(dh_dtype t);

/* A view of an f32 array as a [rows, cols] matrix (borrowed). */
wmat wt_f32(const float *p, int rows, int cols);
/* A view of rows [r0, r0 + n) of W (borrowed, any dtype). */
wmat wt_rows(const wmat *W, int r0, int n);
/* Widen row r of W into out[cols], exactly for f32/bf16/f16, dequantized for q8/q4. */
void wt_row(const wmat *W, int r, float *out);

/* Scalar conversions. bf16 -> f32 and f16 -> f32 are exact; f32 -> bf16/f16 round to nearest
 * even (NaN stays NaN). */
float wt_bf16_to_f32(uint16_t h);
uint16_t wt_f32_to_bf16(float f);
float wt_f16_to_f32(uint16_t h);
uint16_t wt_f32_to_f16(float f);
#endif
