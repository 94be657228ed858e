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
    DT_Q4K = 5, /* super-blocks of up to 256 4-bit values with 6-bit scales and mins: 144 bytes
                   for 256 (wt_q4k_head) */
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

/* q4k: a row is cut into super-blocks of WT_KBLOCK values (the last may be shorter: any
 * multiple of 32), each stored as a 16-byte wt_q4k_head followed by 16 bytes of nibbles per
 * sub-block of 32 (so 144 bytes for a whole super-block: 4.5 bits a value). Sub-block j of a
 * super-block has a 6-bit scale s_j and a 6-bit min m_j; its element i is
 *     d * s_j * nibble - dmin * m_j
 * with the nibbles placed as in wt_q4_block (element i < 16 the low nibble of byte i, element
 * i >= 16 the high nibble of byte i - 16). sc[j] (j < 8) holds s_j in its low 6 bits and the
 * low 2 bits of m_j in its top 2; the high 4 bits of m_j are the low (j even) or high (j odd)
 * nibble of sc[8 + j / 2]. */
#define WT_KBLOCK 256
typedef struct wt_q4k_head {
    uint16_t d;     /* f16 scale of the sub-block scales */
    uint16_t dmin;  /* f16 scale of the sub-block mins */
    uint8_t sc[12];
} wt_q4k_head;
/* s_j and m_j of sub-block j (< 8) */
void wt_q4k_scale(const wt_q4k_head *h, int j, int *s, int *m);
/* Bytes of one q4k row of cols values (cols a multiple of 32). */
size_t wt_q4k_row_bytes(size_t cols);

/* How a q8 or q4k matrix lies in memory. WT_ROWS: row-major, as files store it. WT_G16 (q8
 * and q4k only, in memory only, rows a multiple of 16): the rows in groups of 16, each group
 * taking the bytes of its 16 rows (so the size is the same), laid out in the operand order of
 * kern_avx512's integer dot, so that a decode product streams one sequence of bytes, not 16
 * rows at once, and transposes nothing (docs/performance.md):
 *   q8: the group's cols/32 blocks in order, each 544 bytes: the 16 rows' f16 scales, then 8
 *       vectors of 64 bytes, where bytes 4i..4i+3 of vector g are bytes 4g..4g+3 of row i's
 *       block, stored as q + 128 (the sign bit flipped);
 *   q4k: a row is a sequence of 16-byte pieces (a super-block's head, then 16 bytes of nibbles
 *       a sub-block); piece k of the 16 rows takes 256 bytes at 256 k, where bytes 4i..4i+3
 *       of its vector m (64 bytes at 64 m) are bytes 4m..4m+3 of row i's piece. */
typedef enum wt_layout { WT_ROWS = 0, WT_G16 = 1 } wt_layout;
#define WT_G16_ROWS 16

typedef struct wmat {
    dh_dtype dtype;
    int rows; /* out features */
    int cols; /* in features */
    wt_layout layout; /* WT_ROWS unless a loader packed it (q8, q4k) */
    union {
        const float *f32;
        const uint16_t *bf16;
        const uint16_t *f16;
        const wt_q8_block *q8; /* rows * cols/32 blocks, row-major */
        const wt_q4_block *q4;
        const uint8_t *q4k; /* rows * wt_q4k_row_bytes(cols) bytes, row-major */
    } p;
} wmat;

/* Name of a dtype ("f32", "bf16", ...); and the inverse, -1 if unknown. */
const char *wt_dtype_name(dh_dtype t);
int wt_dtype_parse(const char *name);
/* Bytes a [rows, cols] matrix of dtype t takes (cols must be a multiple of 32 for q8/q4/q4k). */
size_t wt_bytes(dh_dtype t, size_t rows, size_t cols);
/* Bits per weight, counting scales (q4k: of whole super-blocks). */
double wt_bits_per_weight(dh_dtype t);

/* A view of an f32 array as a [rows, cols] matrix (borrowed). */
wmat wt_f32(const float *p, int rows, int cols);
/* A view of rows [r0, r0 + n) of W (borrowed, any dtype; for WT_G16, r0 and n multiples of 16). */
wmat wt_rows(const wmat *W, int r0, int n);
/* Widen row r of W into out[cols], exactly for f32/bf16/f16, dequantized for q8/q4/q4k. */
void wt_row(const wmat *W, int r, float *out);
/* The cols/32 blocks of row r of a q8 matrix (either layout), as a file stores them. */
void wt_q8_row_blocks(const wmat *W, int r, wt_q8_block *out);
/* The wt_q4k_row_bytes(cols) bytes of row r of a q4k matrix (either layout), as a file
 * stores them. */
void wt_q4k_row_data(const wmat *W, int r, uint8_t *out);
/* Can W be packed as WT_G16 (q8 or q4k, row-major, rows a multiple of 16)? */
int wt_g16_packable(const wmat *W);
/* Row r of a q8 or q4k matrix (row: its bytes as a file stores them) written into the
 * WT_G16 matrix of `cols` columns at out. Rows may be written in any order, by any threads
 * (each writes bytes of its own). */
void wt_g16_put_row(dh_dtype t, int cols, void *out, int r, const void *row);
/* W (packable) repacked as WT_G16 into out (wt_bytes(W->dtype, rows, cols) bytes, the
 * caller's); the view returned points at out. A pure byte shuffle: every value is kept. */
wmat wt_g16_pack(const wmat *W, void *out);

/* Scalar conversions. bf16 -> f32 and f16 -> f32 are exact; f32 -> bf16/f16 round to nearest
 * even (NaN stays NaN). */
float wt_bf16_to_f32(uint16_t h);
uint16_t wt_f32_to_bf16(float f);
float wt_f16_to_f32(uint16_t h);
uint16_t wt_f32_to_f16(float f);
#endif
