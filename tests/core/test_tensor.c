/* test_tensor.c: dtype conversions against the compiler's own _Float16 and a rounding oracle. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/tensor.h"

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_f16_widening_is_exact_for_all_65536_values(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 x;
        uint16_t hh = (uint16_t)h;
        memcpy(&x, &hh, 2);
        float want = (float)x, got = wt_f16_to_f32(hh);
        if (!(bits(want) == bits(got) || (isnan(want) && isnan(got)))) {
            if (bad++ < 3) printf("\n  f16 0x%04x: got %g want %g", h, got, want);
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_f32_to_f16_rounds_as_the_compiler_does(void) {
    int bad = 0;
    /* every 4099th f32 bit pattern: normals, subnormals, overflow, NaN */
    for (uint64_t u = 0; u <= 0xffffffffu; u += 4099) {
        float f = from_bits((uint32_t)u);
        _Float16 want = (_Float16)f;
        uint16_t w;
        memcpy(&w, &want, 2);
        uint16_t got = wt_f32_to_f16(f);
        if (isnan(f) ? !isnan(wt_f16_to_f32(got)) : got != w) {
            if (bad++ < 3) printf("\n  f32 0x%08x: got 0x%04x want 0x%04x", (uint32_t)u, got, w);
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_bf16_round_trip_and_nearest_even(void) {
    for (uint32_t h = 0; h < 65536; h += 7) {
        float f = wt_bf16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        CU_ASSERT_EQUAL(wt_f32_to_bf16(f), h);
    }
    /* halfway between 1.0 (0x3f80) and the next bf16 (0x3f81): ties to even, down */
    CU_ASSERT_EQUAL(wt_f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);
    /* halfway between 0x3f81 and 0x3f82: ties to even, up */
    CU_ASSERT_EQUAL(wt_f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);
    CU_ASSERT_EQUAL(wt_f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);
    CU_ASSERT(isnan(wt_bf16_to_f32(wt_f32_to_bf16(NAN))));
}

static void test_q8_and_q4_rows_dequantize_as_documented(void) {
    wt_q8_block b8 = {.d = wt_f32_to_f16(0.5f)};
    for (int j = 0; j < 32; j++) b8.q[j] = (int8_t)(j - 16);
    wmat W8 = {.dtype = DT_Q8, .rows = 1, .cols = 32};
    W8.p.q8 = &b8;
    float out[32];
    wt_row(&W8, 0, out);
    for (int j = 0; j < 32; j++) CU_ASSERT_EQUAL(out[j], 0.5f * (float)(j - 16));
    wt_q4_block b4 = {.d = wt_f32_to_f16(0.25f)};
    for (int j = 0; j < 16; j++) b4.q[j] = (uint8_t)((j & 0xf) | ((15 - j) << 4));
    wmat W4 = {.dtype = DT_Q4, .rows = 1, .cols = 32};
    W4.p.q4 = &b4;
    wt_row(&W4, 0, out);
    for (int j = 0; j < 16; j++) {
        CU_ASSERT_EQUAL(out[j], 0.25f * (float)(j - 8));
        CU_ASSERT_EQUAL(out[j + 16], 0.25f * (float)(15 - j - 8));
    }
    CU_ASSERT_DOUBLE_EQUAL(wt_bits_per_weight(DT_Q8), 8.5, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(wt_bits_per_weight(DT_Q4), 4.5, 1e-9);
    CU_ASSERT_EQUAL(wt_dtype_parse("bf16"), DT_BF16);
    CU_ASSERT_EQUAL(wt_dtype_parse("fp8"), -1);
}

static CU_TestInfo tensor_tests[] = {
    {"f16 widening is exact for all 65536 values", test_f16_widening_is_exact_for_all_65536_values},
    {"f32 to f16 rounds as the compiler does", test_f32_to_f16_rounds_as_the_compiler_does},
    {"bf16 round trip and nearest-even rounding", test_bf16_round_trip_and_nearest_even},
    {"q8 and q4 rows dequantize as documented", test_q8_and_q4_rows_dequantize_as_documented},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo tensor_suite = {"tensor", NULL, NULL, NULL, NULL, tensor_tests};
