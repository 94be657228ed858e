/* tok_unicode.h: Unicode general categories as Hugging Face tokenizers' regex engine sees them
 * (Unicode 16.0), for the tokenizer's regexes (tok_ prefix). Data in tok_unicode.c, generated. */
#ifndef DH_TOK_UNICODE_H
#define DH_TOK_UNICODE_H
#include <stddef.h>
#include <stdint.h>

#define TOK_UNICODE_VERSION "16.0"

/* The 30 general categories, in the order of tok_gc_names. */
enum {
    TOK_GC_LU, TOK_GC_LL, TOK_GC_LT, TOK_GC_LM, TOK_GC_LO, TOK_GC_MN, TOK_GC_MC, TOK_GC_ME,
    TOK_GC_ND, TOK_GC_NL, TOK_GC_NO, TOK_GC_PC, TOK_GC_PD, TOK_GC_PS, TOK_GC_PE, TOK_GC_PI,
    TOK_GC_PF, TOK_GC_PO, TOK_GC_SM, TOK_GC_SC, TOK_GC_SK, TOK_GC_SO, TOK_GC_ZS, TOK_GC_ZL,
    TOK_GC_ZP, TOK_GC_CC, TOK_GC_CF, TOK_GC_CS, TOK_GC_CO, TOK_GC_CN, TOK_GC_COUNT
};

typedef struct tok_gc_run {
    uint32_t first; /* first code point of the run; it ends where the next run starts */
    uint8_t gc;     /* TOK_GC_* */
} tok_gc_run;

extern const char *const tok_gc_names[TOK_GC_COUNT]; /* "Lu", "Ll", ... */
extern const tok_gc_run tok_gc_runs[];               /* ascending, from U+0000 to U+10FFFF */
extern const size_t tok_gc_n_runs;
#endif
