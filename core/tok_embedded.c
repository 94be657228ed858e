/* tok_embedded.c: the vendored tokenizer.json as read-only data in the library.
 *
 * The assembler's .incbin copies the file into .rodata at build time: no generated C array,
 * no xxd step, no multi-megabyte source for the compiler to parse. CMake passes the absolute
 * path as DH_TOK_JSON_PATH and lists the file in OBJECT_DEPENDS, so editing the json rebuilds
 * this object. A NUL follows the data so that it may also be used as a C string. The labels
 * are local to this object file (no .globl), so only tok_embedded_json reaches the bytes. */
#include "tok_embedded.h"

#ifndef DH_TOK_JSON_PATH
#error "DH_TOK_JSON_PATH must name models/deepseek-v3/tokenizer.json (set by core/CMakeLists.txt)"
#endif

/* "%progbits", not "@progbits": '@' starts a comment on some ELF targets (32-bit ARM). */
__asm__(".pushsection .rodata, \"a\", %progbits\n"
        ".balign 16\n"
        "dh_tok_json_begin:\n"
        ".incbin \"" DH_TOK_JSON_PATH "\"\n"
        "dh_tok_json_end:\n"
        ".byte 0\n"
        ".popsection\n");

extern const unsigned char dh_tok_json_begin[], dh_tok_json_end[];

const unsigned char *tok_embedded_json(size_t *len) {
    *len = (size_t)(dh_tok_json_end - dh_tok_json_begin);
    return dh_tok_json_begin;
}
