/* tokenizer.c: tokenizer.json loading, the encode pipeline, whole and streaming decode.
 *
 * Encoding follows Hugging Face tokenizers step by step, because "almost the same" tokens
 * silently change what the model sees:
 *   1. added tokens are cut out of the raw text: first the non-normalized ones, then, in the
 *      pieces between, the normalized ones (the normalizer is the identity, the only one
 *      implemented); each set is matched leftmost-longest, as HF's Aho-Corasick does, here by a
 *      byte trie walked from each position whose byte can start a token;
 *   2. every other piece goes through the pre-tokenizer steps depth first: a Split step runs
 *      its regex over the piece and hands each match and each gap (empty ones dropped) to the
 *      next step, with HF's rules for empty matches; ByteLevel may prefix a space and split
 *      with the GPT-2 regex;
 *   3. each final piece is merged by the BPE model (bpe.c) on its raw bytes.
 * The regexes run on Oniguruma, the engine HF itself uses, with its syntax and options, so
 * backtracking order, look-ahead and \s behave as in HF. One thing differs: the Oniguruma that
 * HF bundles has Unicode 16.0 tables, Debian's 6.9.8 has 14.0 ones, so a \p{L} would disagree
 * on the ~10k characters assigned since. Patterns are therefore rewritten before compiling:
 * each general-category escape becomes an explicit class of ranges from tok_unicode.c (probed
 * from HF itself); escapes that need other tables (\w, \b, scripts, ...) are refused. PCRE2
 * with JIT would match faster but differs in more ways (its \s takes U+180E, \h means
 * horizontal space, case folding), each one a way for a new tokenizer file to go wrong quietly.
 *
 * Decoding maps each id to the bytes it stands for (the ByteLevel decoder: a token made only
 * of byte characters gives those bytes, any other token its UTF-8 text), precomputed at load,
 * then repairs invalid UTF-8 with U+FFFD per maximal invalid subpart, as Rust's
 * String::from_utf8_lossy does. The streaming decoder runs the same repair incrementally and
 * holds back a tail that is still a valid prefix of a character. */
#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <oniguruma.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "common.h"
#include "tok_unicode.h"

/* GPT-2's pattern, which ByteLevel uses when use_regex is true (HF byte_level.rs). */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

#define MAX_STEPS 16 /* pre-tokenizer steps after flattening nested Sequences */
#define MAX_TEXT ((size_t)INT32_MAX)

typedef enum step_kind {
    STEP_SPLIT,  /* each regex match and each gap between matches becomes a piece */
    STEP_PREFIX, /* ByteLevel add_prefix_space: prepend ' ' unless the piece starts with one */
} step_kind;

typedef struct tok_step {
    step_kind kind;
    regex_t *re; /* STEP_SPLIT; owned */
} tok_step;

typedef struct trie_node {
    int32_t token;      /* id of the added token ending here, -1 if none */
    int32_t first_edge; /* -1: leaf */
} trie_node;

typedef struct trie_edge {
    unsigned char byte;
    int32_t child;
    int32_t next; /* sibling edge, -1 at the end */
} trie_edge;

typedef struct trie { /* byte trie over added token contents */
    trie_node *node;
    trie_edge *edge;
    size_t n_node, n_edge, cap_node, cap_edge;
    unsigned char first[256]; /* 1 if some token starts with this byte */
} trie;

struct tokenizer {
    char *name;               /* file name for messages */
    bpe_model *bpe;
    trie added[2];            /* [0] non-normalized, [1] normalized added tokens */
    char **added_content;     /* [n_added] NUL-terminated, for tok_token_id */
    int *added_id;            /* [n_added] */
    size_t n_added;
    tok_step step[MAX_STEPS]; /* flattened pre-tokenizer */
    int n_steps;
    int vocab_size;           /* max id + 1 */
    unsigned char *dec_pool;  /* decoded bytes of every id, back to back */
    uint32_t *dec_off;        /* [vocab_size] */
    uint32_t *dec_len;        /* [vocab_size], UINT32_MAX: no token has this id */
    size_t max_token_bytes;   /* the longest dec_len */
};

/* ---- UTF-8 ------------------------------------------------------------------------------- */

enum { U8_OK, U8_BAD, U8_SHORT };

/* The sequence at s[0..n), n >= 1: U8_OK and *len its length; U8_BAD and *len the length of
 * the maximal invalid subpart (replaced by one U+FFFD); U8_SHORT: a valid start cut by the end
 * of the buffer, *len bytes of it. Well-formed sequences are those of Unicode Table 3-7. */
static int utf8_next(const unsigned char *s, size_t n, size_t *len) {
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c < 0x80) {
        *len = 1;
        return U8_OK;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlongs */
        hi = c == 0xED ? 0x9F : 0xBF; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing above U+10FFFF */
    } else {
        *len = 1;
        return U8_BAD;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n) {
            *len = i;
            return U8_SHORT;
        }
        if (s[i] < lo || s[i] > hi) {
            *len = i;
            return U8_BAD;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    *len = need + 1;
    return U8_OK;
}

size_t tok_utf8_check(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) { /* ASCII runs 8 bytes at a time */
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        size_t len;
        if (utf8_next(s + i, n - i, &len) != U8_OK) return i;
        i += len;
    }
    return n;
}

/* Repair in[0..n) into out (at most cap bytes): valid characters are copied, each maximal
 * invalid subpart becomes U+FFFD. Stops before a character that does not fit, and, unless
 * final, before a tail that may still complete. Returns the input bytes consumed. */
static size_t utf8_repair(const unsigned char *in, size_t n, int final, char *out, size_t cap,
                          size_t *written) {
    size_t i = 0, w = 0;
    while (i < n) {
        size_t len;
        int st = utf8_next(in + i, n - i, &len);
        if (st == U8_SHORT && !final) break;
        if (st == U8_OK) {
            if (w + len > cap) break;
            memcpy(out + w, in + i, len);
            w += len;
        } else {
            if (w + 3 > cap) break;
            memcpy(out + w, "\xEF\xBF\xBD", 3);
            w += 3;
        }
        i += len;
    }
    *written = w;
    return i;
}

/* ---- regex -------------------------------------------------------------------------------- */

static pthread_once_t onig_once = PTHREAD_ONCE_INIT;
static void onig_init_once(void) {
    OnigEncoding enc = ONIG_ENCODING_UTF8;
    onig_initialize(&enc, 1);
}

typedef struct sbuf { /* a growable string */
    char *p;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t len) {
    if (b->n + len + 1 > b->cap) {
        b->cap = 2 * (b->n + len + 1);
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

#define GC(x) (1u << TOK_GC_##x)
#define GC_L (GC(LU) | GC(LL) | GC(LT) | GC(LM) | GC(LO))
#define GC_M (GC(MN) | GC(MC) | GC(ME))
#define GC_N (GC(ND) | GC(NL) | GC(NO))
#define GC_P (GC(PC) | GC(PD) | GC(PS) | GC(PE) | GC(PI) | GC(PF) | GC(PO))
#define GC_S (GC(SM) | GC(SC) | GC(SK) | GC(SO))
#define GC_Z (GC(ZS) | GC(ZL) | GC(ZP))
#define GC_C (GC(CC) | GC(CF) | GC(CS) | GC(CO) | GC(CN))

/* Oniguruma's names for the general categories, lower case without ' ', '-', '_' (how it
 * compares property names). */
static const struct {
    const char *name;
    uint32_t set;
} gc_aliases[] = {
    {"l", GC_L}, {"letter", GC_L}, {"lc", GC(LU) | GC(LL) | GC(LT)},
    {"casedletter", GC(LU) | GC(LL) | GC(LT)}, {"lu", GC(LU)}, {"uppercaseletter", GC(LU)},
    {"ll", GC(LL)}, {"lowercaseletter", GC(LL)}, {"lt", GC(LT)}, {"titlecaseletter", GC(LT)},
    {"lm", GC(LM)}, {"modifierletter", GC(LM)}, {"lo", GC(LO)}, {"otherletter", GC(LO)},
    {"m", GC_M}, {"mark", GC_M}, {"combiningmark", GC_M}, {"mn", GC(MN)},
    {"nonspacingmark", GC(MN)}, {"mc", GC(MC)}, {"spacingmark", GC(MC)}, {"me", GC(ME)},
    {"enclosingmark", GC(ME)}, {"n", GC_N}, {"number", GC_N}, {"nd", GC(ND)},
    {"decimalnumber", GC(ND)}, {"nl", GC(NL)}, {"letternumber", GC(NL)}, {"no", GC(NO)},
    {"othernumber", GC(NO)}, {"p", GC_P}, {"punctuation", GC_P}, {"pc", GC(PC)},
    {"connectorpunctuation", GC(PC)}, {"pd", GC(PD)}, {"dashpunctuation", GC(PD)},
    {"ps", GC(PS)}, {"openpunctuation", GC(PS)}, {"pe", GC(PE)}, {"closepunctuation", GC(PE)},
    {"pi", GC(PI)}, {"initialpunctuation", GC(PI)}, {"pf", GC(PF)},
    {"finalpunctuation", GC(PF)}, {"po", GC(PO)}, {"otherpunctuation", GC(PO)}, {"s", GC_S},
    {"symbol", GC_S}, {"sm", GC(SM)}, {"mathsymbol", GC(SM)}, {"sc", GC(SC)},
    {"currencysymbol", GC(SC)}, {"sk", GC(SK)}, {"modifiersymbol", GC(SK)}, {"so", GC(SO)},
    {"othersymbol", GC(SO)}, {"z", GC_Z}, {"separator", GC_Z}, {"zs", GC(ZS)},
    {"spaceseparator", GC(ZS)}, {"zl", GC(ZL)}, {"lineseparator", GC(ZL)}, {"zp", GC(ZP)},
    {"paragraphseparator", GC(ZP)}, {"c", GC_C}, {"other", GC_C}, {"cc", GC(CC)},
    {"control", GC(CC)}, {"cf", GC(CF)}, {"format", GC(CF)}, {"cs", GC(CS)},
    {"surrogate", GC(CS)}, {"co", GC(CO)}, {"privateuse", GC(CO)}, {"cn", GC(CN)},
    {"unassigned", GC(CN)},
};

/* The general-category set a property name stands for, 0 if it is not one. */
static uint32_t gc_lookup(const char *name, size_t len) {
    char norm[64];
    size_t n = 0;
    for (size_t i = 0; i < len && n + 1 < sizeof norm; i++) {
        char c = name[i];
        if (c == ' ' || c == '-' || c == '_') continue;
        norm[n++] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    norm[n] = 0;
    for (size_t i = 0; i < sizeof gc_aliases / sizeof gc_aliases[0]; i++)
        if (strcmp(norm, gc_aliases[i].name) == 0) return gc_aliases[i].set;
    return 0;
}

/* A bracket class of the code points whose category is in set (or not in it, when negated),
 * written as \x{..} ranges. As a nested class it also works inside another class. Surrogates
 * are left out: they never occur in valid UTF-8, and Oniguruma refuses them in ranges. */
static void put_gc_class(sbuf *b, uint32_t set, int negate) {
    char tmp[40];
    uint32_t lo = 0, hi = 0;
    int open = 0, any = 0;
    sb_put(b, negate ? "[^" : "[", negate ? 2 : 1);
    for (size_t i = 0; i <= tok_gc_n_runs; i++) {
        int in = i < tok_gc_n_runs && (set >> tok_gc_runs[i].gc & 1) &&
                 tok_gc_runs[i].gc != TOK_GC_CS;
        uint32_t first = i < tok_gc_n_runs ? tok_gc_runs[i].first : 0x110000;
        if (open && (!in || first != hi + 1)) { /* close the range lo..hi */
            int k = lo == hi ? snprintf(tmp, sizeof tmp, "\\x{%X}", lo)
                             : snprintf(tmp, sizeof tmp, "\\x{%X}-\\x{%X}", lo, hi);
            sb_put(b, tmp, (size_t)k);
            open = 0;
            any = 1;
        }
        if (!in) continue;
        if (!open) lo = first;
        open = 1;
        hi = (i + 1 < tok_gc_n_runs ? tok_gc_runs[i + 1].first : 0x110000) - 1;
    }
    if (!any) sb_put(b, "^\\x{0}-\\x{10FFFF}", 17); /* an empty set: [^all] */
    sb_put(b, "]", 1);
}

/* Rewrite a pattern so that its Unicode properties mean what they mean in HF tokenizers:
 * \p{..}, \P{..} and \p{^..} of a general category, and \d, \D, become explicit ranges from
 * tok_unicode.c (Unicode 16.0; the installed Oniguruma's own tables are older). \s, \S keep
 * their meaning (White_Space, unchanged since Unicode 6.3). Escapes whose meaning depends on
 * other Unicode tables (\w, \W, \b, \B, \X, scripts and binary properties, POSIX brackets) are
 * refused: NULL, with a logged error. The result is malloc'd, *out_len bytes. */
static char *regex_translate(const char *pat, size_t len, const char *name, const char *path,
                             size_t *out_len) {
    sbuf b = {0};
    sb_put(&b, "", 0);
    for (size_t i = 0; i < len;) {
        char c = pat[i], d = i + 1 < len ? pat[i + 1] : 0;
        if (c == '[' && d == ':') { /* [:alpha:], [:^alpha:] */
            size_t j = i + 2 + (i + 2 < len && pat[i + 2] == '^');
            while (j < len && ((pat[j] | 0x20) >= 'a' && (pat[j] | 0x20) <= 'z')) j++;
            if (j + 1 < len && pat[j] == ':' && pat[j + 1] == ']') {
                log_error("%s: %s: POSIX bracket %.*s is not supported (its meaning depends on "
                          "the Unicode tables)", name, path, (int)(j + 2 - i), pat + i);
                goto fail;
            }
        }
        if (c != '\\' || i + 1 >= len) {
            sb_put(&b, &c, 1);
            i++;
            continue;
        }
        if (d == 'p' || d == 'P') {
            const char *close = i + 2 < len && pat[i + 2] == '{'
                                    ? memchr(pat + i + 3, '}', len - (i + 3)) : NULL;
            const char *nm = pat + i + 3;
            int neg = d == 'P';
            if (!close) {
                log_error("%s: %s: \\%c without {name} is not supported", name, path, d);
                goto fail;
            }
            if (*nm == '^') neg = !neg, nm++;
            uint32_t set = gc_lookup(nm, (size_t)(close - nm));
            if (!set) {
                log_error("%s: %s: property \\%c{%.*s} is not supported (only general categories, "
                          "whose Unicode %s tables are built in)", name, path, d,
                          (int)(close - (pat + i + 3)), pat + i + 3, TOK_UNICODE_VERSION);
                goto fail;
            }
            put_gc_class(&b, set, neg);
            i = (size_t)(close - pat) + 1;
        } else if (d == 'd' || d == 'D') { /* Oniguruma's \d is Decimal_Number */
            put_gc_class(&b, GC(ND), d == 'D');
            i += 2;
        } else if (strchr("wWbBX", d)) {
            log_error("%s: %s: \\%c is not supported (its meaning depends on the Unicode tables of "
                      "the regex library)", name, path, d);
            goto fail;
        } else {
            sb_put(&b, pat + i, 2);
            i += 2;
        }
    }
    *out_len = b.n;
    return b.p;
fail:
    free(b.p);
    return NULL;
}

/* Compile as the onig crate's Regex::new does (default syntax, no options), after
 * regex_translate. Compiling is serialised: Oniguruma documents searches with a shared regex as
 * thread-safe, not compilation, and loading is rare. */
static pthread_mutex_t onig_compile_mu = PTHREAD_MUTEX_INITIALIZER;

static regex_t *regex_compile(const char *pat, size_t len, const char *name, const char *path) {
    pthread_once(&onig_once, onig_init_once);
    size_t tr_len;
    char *tr = regex_translate(pat, len, name, path, &tr_len);
    if (!tr) return NULL;
    regex_t *re;
    OnigErrorInfo einfo;
    pthread_mutex_lock(&onig_compile_mu);
    int r = onig_new(&re, (const OnigUChar *)tr, (const OnigUChar *)tr + tr_len,
                     ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &einfo);
    pthread_mutex_unlock(&onig_compile_mu);
    free(tr);
    if (r != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, r, &einfo);
        log_error("%s: %s: bad regex: %s", name, path, (const char *)msg);
        return NULL;
    }
    return re;
}

/* A Split "String" pattern: HF escapes it into a regex; here every ASCII punctuation byte
 * becomes \x{..}, which Oniguruma reads as that literal character. */
static regex_t *regex_literal(const char *s, size_t len, const char *name, const char *path) {
    char *pat = xmalloc(xmul(len, 6) + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80 && !((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
                          (c >= 'a' && c <= 'z')))
            n += (size_t)sprintf(pat + n, "\\x{%02X}", c);
        else
            pat[n++] = (char)c;
    }
    regex_t *re = regex_compile(pat, n, name, path);
    free(pat);
    return re;
}

/* ---- added tokens ------------------------------------------------------------------------- */

static int32_t trie_add_node(trie *tr) {
    if (tr->n_node == tr->cap_node) {
        tr->cap_node = tr->cap_node ? 2 * tr->cap_node : 64;
        tr->node = xrealloc(tr->node, xmul(tr->cap_node, sizeof *tr->node));
    }
    tr->node[tr->n_node] = (trie_node){.token = -1, .first_edge = -1};
    return (int32_t)tr->n_node++;
}

static int32_t trie_child(const trie *tr, int32_t node, unsigned char b) {
    for (int32_t e = tr->node[node].first_edge; e >= 0; e = tr->edge[e].next)
        if (tr->edge[e].byte == b) return tr->edge[e].child;
    return -1;
}

static void trie_insert(trie *tr, const char *s, size_t n, int id) {
    if (tr->n_node == 0) trie_add_node(tr);
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        int32_t c = trie_child(tr, node, b);
        if (c < 0) {
            c = trie_add_node(tr);
            if (tr->n_edge == tr->cap_edge) {
                tr->cap_edge = tr->cap_edge ? 2 * tr->cap_edge : 64;
                tr->edge = xrealloc(tr->edge, xmul(tr->cap_edge, sizeof *tr->edge));
            }
            tr->edge[tr->n_edge] =
                (trie_edge){.byte = b, .child = c, .next = tr->node[node].first_edge};
            tr->node[node].first_edge = (int32_t)tr->n_edge++;
        }
        node = c;
    }
    if (tr->node[node].token < 0) tr->node[node].token = id; /* first of equal contents wins */
    tr->first[(unsigned char)s[0]] = 1;
}

/* Longest token starting at s[0]: its length (0 if none), *id set. */
static size_t trie_longest(const trie *tr, const unsigned char *s, size_t n, int *id) {
    size_t best = 0;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        node = trie_child(tr, node, s[i]);
        if (node < 0) break;
        if (tr->node[node].token >= 0) {
            best = i + 1;
            *id = tr->node[node].token;
        }
    }
    return best;
}

/* ---- encoding ------------------------------------------------------------------------------ */

typedef struct enc {
    const tokenizer *t;
    bpe_ids out;
    OnigRegion *region;
    unsigned char *scratch; /* STEP_PREFIX output */
    size_t scratch_cap;
    int rc;
} enc;

static void run_steps(enc *e, int k, const unsigned char *s, size_t n);

/* HF's Split with Isolated behaviour: the onig crate's find_iter (an empty match right after
 * a match is skipped, the search then moves one character on), then every match and every gap
 * is a piece of its own, empty ones dropped. invert does not change Isolated pieces. */
static void split_apply(enc *e, int k, regex_t *re, const unsigned char *s, size_t n) {
    size_t last_end = 0, prev = 0;
    int skip_next_empty = 0;
    while (last_end <= n && e->rc == 0) {
        int r = onig_search(re, s, s + n, s + last_end, s + n, e->region, ONIG_OPTION_NONE);
        if (r == ONIG_MISMATCH) break;
        if (r < 0) {
            OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
            onig_error_code_to_str(msg, r);
            log_error("%s: regex search failed on a %zu-byte piece: %s", e->t->name, n,
                      (const char *)msg);
            e->rc = DH_EUNSUPPORTED;
            return;
        }
        size_t ms = (size_t)e->region->beg[0], me = (size_t)e->region->end[0];
        last_end = me;
        if (me == ms) {
            size_t len = 1;
            if (me < n) utf8_next(s + me, n - me, &len);
            last_end += len;
            if (skip_next_empty) {
                skip_next_empty = 0;
                continue;
            }
        } else {
            skip_next_empty = 1;
        }
        if (prev != ms) run_steps(e, k + 1, s + prev, ms - prev);
        if (me > ms) run_steps(e, k + 1, s + ms, me - ms);
        prev = me;
    }
    if (prev < n && e->rc == 0) run_steps(e, k + 1, s + prev, n - prev);
}

/* Step k of the pre-tokenizer on a non-empty piece; past the last step, the BPE model. */
static void run_steps(enc *e, int k, const unsigned char *s, size_t n) {
    if (k == e->t->n_steps) {
        bpe_encode_word(e->t->bpe, s, n, &e->out);
        return;
    }
    const tok_step *st = &e->t->step[k];
    if (st->kind == STEP_SPLIT) {
        split_apply(e, k, st->re, s, n);
        return;
    }
    if (s[0] == ' ') { /* STEP_PREFIX: only ' ' counts, not other white space */
        run_steps(e, k + 1, s, n);
        return;
    }
    if (n + 1 > e->scratch_cap) { /* one prefix step, always the deepest copy: reuse is safe */
        e->scratch_cap = 2 * (n + 1);
        free(e->scratch);
        e->scratch = xmalloc(e->scratch_cap);
    }
    e->scratch[0] = ' ';
    memcpy(e->scratch + 1, s, n);
    run_steps(e, k + 1, e->scratch, n + 1);
}

/* Added tokens of set `pass` in s[0..n); gaps go to the next pass, then the pre-tokenizer. */
static void match_added(enc *e, int pass, const unsigned char *s, size_t n) {
    const trie *tr = &e->t->added[pass];
    size_t start = 0;
    if (tr->n_node > 0) {
        for (size_t i = 0; i < n && e->rc == 0;) {
            int id;
            size_t len = tr->first[s[i]] ? trie_longest(tr, s + i, n - i, &id) : 0;
            if (len == 0) {
                i++;
                continue;
            }
            if (i > start) {
                if (pass == 0) match_added(e, 1, s + start, i - start);
                else run_steps(e, 0, s + start, i - start);
            }
            bpe_ids_push(&e->out, id);
            i += len;
            start = i;
        }
    }
    if (start < n && e->rc == 0) {
        if (pass == 0) match_added(e, 1, s + start, n - start);
        else run_steps(e, 0, s + start, n - start);
    }
}

int tok_encode(const tokenizer *t, const char *text, size_t len, int **ids, size_t *n_ids,
               size_t *err_offset) {
    *ids = NULL;
    *n_ids = 0;
    if (len > MAX_TEXT) {
        if (err_offset) *err_offset = MAX_TEXT;
        return DH_EINVAL;
    }
    size_t bad = tok_utf8_check(text, len);
    if (bad < len) {
        if (err_offset) *err_offset = bad;
        return DH_EINVAL;
    }
    enc e = {.t = t, .region = onig_region_new()};
    if (len > 0) match_added(&e, 0, (const unsigned char *)text, len);
    onig_region_free(e.region, 1);
    free(e.scratch);
    if (e.rc != 0) {
        free(e.out.v);
        return e.rc;
    }
    *ids = e.out.v ? e.out.v : xmalloc(sizeof **ids);
    *n_ids = e.out.n;
    return 0;
}

/* ---- decoding ------------------------------------------------------------------------------- */

/* Bytes that id stands for, NULL if no token has this id. */
static const unsigned char *id_bytes(const tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->vocab_size || t->dec_len[id] == UINT32_MAX) return NULL;
    *len = t->dec_len[id];
    return t->dec_pool + t->dec_off[id];
}

int tok_decode(const tokenizer *t, const int *ids, size_t n, char **out, size_t *out_len) {
    size_t total = 0, len;
    for (size_t i = 0; i < n; i++)
        if (id_bytes(t, ids[i], &len)) total += len;
    unsigned char *raw = xmalloc(total + 1);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *b = id_bytes(t, ids[i], &len);
        if (!b) continue;
        memcpy(raw + at, b, len);
        at += len;
    }
    char *s = xmalloc(xmul(total, 3) + 1); /* each bad byte may become 3 */
    size_t w;
    utf8_repair(raw, total, 1, s, xmul(total, 3), &w);
    s[w] = 0;
    free(raw);
    *out = s;
    if (out_len) *out_len = w;
    return 0;
}

struct tok_stream {
    const tokenizer *t;
    unsigned char *held; /* bytes not yet written: an incomplete tail, or what did not fit */
    size_t n, cap;
};

tok_stream *tok_stream_new(const tokenizer *t) {
    tok_stream *s = xcalloc(1, sizeof *s);
    s->t = t;
    return s;
}

void tok_stream_free(tok_stream *s) {
    if (!s) return;
    free(s->held);
    free(s);
}

static size_t stream_emit(tok_stream *s, int final, char *out, size_t cap) {
    if (s->n == 0) return 0;
    size_t w, used = utf8_repair(s->held, s->n, final, out, cap, &w);
    memmove(s->held, s->held + used, s->n - used);
    s->n -= used;
    return w;
}

size_t tok_stream_push(tok_stream *s, int id, char *out, size_t cap) {
    size_t len;
    const unsigned char *b = id_bytes(s->t, id, &len);
    if (b) {
        if (s->n + len > s->cap) {
            s->cap = 2 * (s->n + len);
            s->held = xrealloc(s->held, s->cap);
        }
        memcpy(s->held + s->n, b, len);
        s->n += len;
    }
    return stream_emit(s, 0, out, cap);
}

size_t tok_stream_flush(tok_stream *s, char *out, size_t cap) {
    return stream_emit(s, 1, out, cap);
}

/* ---- queries -------------------------------------------------------------------------------- */

int tok_vocab_size(const tokenizer *t) { return t->vocab_size; }

size_t tok_max_token_bytes(const tokenizer *t) { return t->max_token_bytes; }

int tok_token_id(const tokenizer *t, const char *piece) {
    for (size_t i = 0; i < t->n_added; i++)
        if (strcmp(t->added_content[i], piece) == 0) return t->added_id[i];
    return bpe_piece_id(t->bpe, piece, strlen(piece));
}

void tok_cache_clear(const tokenizer *t) { bpe_cache_clear(t->bpe); }

/* ---- loading -------------------------------------------------------------------------------- */

static const char *type_of(const json_t *obj) {
    const json_t *ty = json_object_get(obj, "type");
    return json_is_string(ty) ? json_string_value(ty) : NULL;
}

/* The normalizer must be the identity: null, or Sequences of nothing but Sequences. */
static int load_normalizer(const json_t *n, const char *name, const char *path) {
    if (!n || json_is_null(n)) return 0;
    const char *ty = json_is_object(n) ? type_of(n) : NULL;
    const json_t *list = json_object_get(n, "normalizers");
    if (!ty || strcmp(ty, "Sequence") != 0 || !json_is_array(list)) {
        log_error("%s: %s.type: unsupported normalizer \"%s\" (only none or an empty Sequence "
                  "is implemented)", name, path, ty ? ty : "?");
        return DH_EUNSUPPORTED;
    }
    for (size_t i = 0; i < json_array_size(list); i++) {
        char sub[256];
        snprintf(sub, sizeof sub, "%s.normalizers[%zu]", path, i);
        int rc = load_normalizer(json_array_get(list, i), name, sub);
        if (rc) return rc;
    }
    return 0;
}

static int add_step(tokenizer *t, step_kind kind, regex_t *re, const char *path) {
    if (t->n_steps == MAX_STEPS) {
        log_error("%s: %s: more than %d pre-tokenizer steps", t->name, path, MAX_STEPS);
        onig_free(re);
        return DH_EUNSUPPORTED;
    }
    t->step[t->n_steps++] = (tok_step){.kind = kind, .re = re};
    return 0;
}

static int load_split(tokenizer *t, const json_t *p, const char *path) {
    char sub[256];
    const json_t *pat = json_object_get(p, "pattern"), *beh = json_object_get(p, "behavior");
    const json_t *inv = json_object_get(p, "invert");
    if (!json_is_string(beh) || strcmp(json_string_value(beh), "Isolated") != 0) {
        log_error("%s: %s.behavior: unsupported Split behaviour \"%s\" (only \"Isolated\" is "
                  "implemented)",
                  t->name, path, json_is_string(beh) ? json_string_value(beh) : "?");
        return DH_EUNSUPPORTED;
    }
    if (inv && !json_is_boolean(inv)) {
        log_error("%s: %s.invert: must be true or false", t->name, path);
        return DH_EFORMAT;
    }
    const json_t *rx = json_object_get(pat, "Regex"), *str = json_object_get(pat, "String");
    regex_t *re = NULL;
    if (json_is_string(rx)) {
        snprintf(sub, sizeof sub, "%s.pattern.Regex", path);
        re = regex_compile(json_string_value(rx), json_string_length(rx), t->name, sub);
    } else if (json_is_string(str)) {
        snprintf(sub, sizeof sub, "%s.pattern.String", path);
        re = regex_literal(json_string_value(str), json_string_length(str), t->name, sub);
    } else {
        log_error("%s: %s.pattern: must be {\"Regex\": ...} or {\"String\": ...}", t->name, path);
        return DH_EFORMAT;
    }
    if (!re) return DH_EFORMAT;
    return add_step(t, STEP_SPLIT, re, path);
}

static int get_flag(const json_t *obj, const char *key, int def) {
    const json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* ByteLevel: the optional ' ' prefix, the optional GPT-2 split; the byte mapping itself is
 * implicit (bpe.c works on raw bytes). Defaults are HF's: add_prefix_space and use_regex on. */
static int load_bytelevel(tokenizer *t, const json_t *p, const char *path) {
    char sub[256];
    if (get_flag(p, "add_prefix_space", 1)) {
        int rc = add_step(t, STEP_PREFIX, NULL, path);
        if (rc) return rc;
    }
    if (get_flag(p, "use_regex", 1)) {
        snprintf(sub, sizeof sub, "%s (GPT-2 regex)", path);
        regex_t *re = regex_compile(gpt2_pattern, strlen(gpt2_pattern), t->name, sub);
        if (!re) return DH_EFORMAT;
        return add_step(t, STEP_SPLIT, re, path);
    }
    return 0;
}

/* Flatten Sequence / Split / ByteLevel into steps; *seen_bl counts ByteLevel steps met. */
static int load_pretok(tokenizer *t, const json_t *p, const char *path, int *seen_bl) {
    const char *ty = json_is_object(p) ? type_of(p) : NULL;
    if (*seen_bl) {
        log_error("%s: %s: a pre-tokenizer after ByteLevel is not supported (ByteLevel must be "
                  "the last step)", t->name, path);
        return DH_EUNSUPPORTED;
    }
    if (ty && strcmp(ty, "Sequence") == 0) {
        const json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list)) {
            log_error("%s: %s.pretokenizers: missing or not an array", t->name, path);
            return DH_EFORMAT;
        }
        for (size_t i = 0; i < json_array_size(list); i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", path, i);
            int rc = load_pretok(t, json_array_get(list, i), sub, seen_bl);
            if (rc) return rc;
        }
        return 0;
    }
    if (ty && strcmp(ty, "Split") == 0) return load_split(t, p, path);
    if (ty && strcmp(ty, "ByteLevel") == 0) {
        (*seen_bl)++;
        return load_bytelevel(t, p, path);
    }
    log_error("%s: %s.type: unsupported pre-tokenizer \"%s\" (implemented: Sequence, Split, "
              "ByteLevel)", t->name, path, ty ? ty : "?");
    return DH_EUNSUPPORTED;
}

/* One entry of added_tokens: checked, its id as HF would assign it, into the trie. */
static int load_added_one(tokenizer *t, const json_t *a, size_t i, int *max_added) {
    const json_t *content = json_object_get(a, "content"), *idv = json_object_get(a, "id");
    if (!json_is_object(a) || !json_is_string(content) || !json_is_integer(idv)) {
        log_error("%s: added_tokens[%zu]: needs a string \"content\" and an integer \"id\"",
                  t->name, i);
        return DH_EFORMAT;
    }
    static const char *const flags[] = {"lstrip", "rstrip", "single_word"};
    for (int f = 0; f < 3; f++)
        if (get_flag(a, flags[f], 0)) {
            log_error("%s: added_tokens[%zu].%s: true is not supported (token \"%s\")", t->name,
                      i, flags[f], json_string_value(content));
            return DH_EUNSUPPORTED;
        }
    const char *c = json_string_value(content);
    size_t len = json_string_length(content);
    if (len == 0) return 0; /* HF ignores empty tokens */
    if (strlen(c) != len) {
        log_error("%s: added_tokens[%zu].content: contains a NUL character", t->name, i);
        return DH_EFORMAT;
    }
    for (size_t j = 0; j < t->n_added; j++)
        if (strcmp(t->added_content[j], c) == 0) {
            log_error("%s: added_tokens[%zu]: \"%s\" is already added_tokens entry %zu", t->name,
                      i, c, j);
            return DH_EUNSUPPORTED;
        }
    // HF's AddedVocabulary::add_tokens: an existing vocab entry keeps its id, a new token
    // takes max(added ids) + 1, or the vocab size if that is larger
    int n_vocab = bpe_vocab_count(t->bpe), id = bpe_piece_id(t->bpe, c, len);
    if (id < 0) id = *max_added >= n_vocab ? *max_added + 1 : n_vocab;
    if (id != json_integer_value(idv)) {
        log_error("%s: added_tokens[%zu]: \"%s\" has id %lld, but Hugging Face tokenizers "
                  "assigns it %d", t->name, i, c, (long long)json_integer_value(idv), id);
        return DH_EUNSUPPORTED;
    }
    *max_added = DH_MAX(*max_added, id);
    t->added_content = xrealloc(t->added_content, xmul(t->n_added + 1, sizeof(char *)));
    t->added_id = xrealloc(t->added_id, xmul(t->n_added + 1, sizeof(int)));
    t->added_content[t->n_added] = xstrdup(c);
    t->added_id[t->n_added++] = id;
    return 0;
}

/* added_tokens; the tries take the special tokens first, then the others, as HF orders them. */
static int load_added(tokenizer *t, const json_t *list) {
    if (!list || json_is_null(list)) return 0;
    if (!json_is_array(list)) {
        log_error("%s: added_tokens: not an array", t->name);
        return DH_EFORMAT;
    }
    int max_added = -1;
    for (size_t i = 0; i < json_array_size(list); i++) {
        int rc = load_added_one(t, json_array_get(list, i), i, &max_added);
        if (rc) return rc;
    }
    for (int special = 1; special >= 0; special--)
        for (size_t i = 0; i < json_array_size(list); i++) {
            const json_t *a = json_array_get(list, i);
            const json_t *c = json_object_get(a, "content");
            if (get_flag(a, "special", 0) != special || json_string_length(c) == 0) continue;
            const char *s = json_string_value(c);
            int normalized = get_flag(a, "normalized", !special);
            trie_insert(&t->added[normalized], s, strlen(s), tok_token_id(t, s));
        }
    return 0;
}

/* Per id, the bytes the ByteLevel decoder gives it. */
static void build_decoder(tokenizer *t) {
    int max_id = bpe_max_id(t->bpe);
    for (size_t i = 0; i < t->n_added; i++) max_id = DH_MAX(max_id, t->added_id[i]);
    t->vocab_size = max_id + 1;
    size_t n = (size_t)t->vocab_size, total = 0, len;
    const char **piece = xcalloc(n + 1, sizeof *piece);
    size_t *plen = xcalloc(n + 1, sizeof *plen);
    for (int id = 0; id < t->vocab_size; id++)
        if ((piece[id] = bpe_piece(t->bpe, id, &len))) plen[id] = len;
    for (size_t i = 0; i < t->n_added; i++) { /* added tokens shadow the vocab, as in HF */
        piece[t->added_id[i]] = t->added_content[i];
        plen[t->added_id[i]] = strlen(t->added_content[i]);
    }
    for (size_t id = 0; id < n; id++) total += plen[id];
    t->dec_pool = xmalloc(total + 1);
    t->dec_off = xmalloc(xmul(n + 1, sizeof *t->dec_off));
    t->dec_len = xmalloc(xmul(n + 1, sizeof *t->dec_len));
    size_t at = 0;
    for (size_t id = 0; id < n; id++) {
        t->dec_off[id] = (uint32_t)at;
        t->dec_len[id] = UINT32_MAX;
        if (!piece[id]) continue;
        int b = bpe_bytelevel_decode(piece[id], plen[id], t->dec_pool + at);
        if (b < 0) { /* not all byte characters: the token's own UTF-8 */
            memcpy(t->dec_pool + at, piece[id], plen[id]);
            b = (int)plen[id];
        }
        t->dec_len[id] = (uint32_t)b;
        t->max_token_bytes = DH_MAX(t->max_token_bytes, (size_t)b);
        at += (size_t)b;
    }
    free(piece);
    free(plen);
}

static int check_top(const tokenizer *t, const json_t *root) {
    const json_t *v = json_object_get(root, "version");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "1.0") == 0)) {
        log_error("%s: version: unknown tokenizer.json version (expected \"1.0\")", t->name);
        return DH_EUNSUPPORTED;
    }
    static const char *const must_be_null[] = {"truncation", "padding"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(root, must_be_null[i]);
        if (v && !json_is_null(v)) {
            log_error("%s: %s: not supported, must be null", t->name, must_be_null[i]);
            return DH_EUNSUPPORTED;
        }
    }
    const json_t *dec = json_object_get(root, "decoder");
    const char *ty = json_is_object(dec) ? type_of(dec) : NULL;
    if (!ty || strcmp(ty, "ByteLevel") != 0) {
        log_error("%s: decoder.type: unsupported decoder \"%s\" (only ByteLevel is implemented)",
                  t->name, ty ? ty : "null");
        return DH_EUNSUPPORTED;
    }
    // post_processor: only adds special tokens, which tok_encode never does, so any is fine
    return 0;
}

static int load_root(tokenizer *t, const json_t *root) {
    int seen_bl = 0, rc;
    if (!json_is_object(root)) {
        log_error("%s: not a JSON object", t->name);
        return DH_EFORMAT;
    }
    if ((rc = check_top(t, root)) != 0) return rc;
    if ((rc = load_normalizer(json_object_get(root, "normalizer"), t->name, "normalizer")) != 0)
        return rc;
    if (!(t->bpe = bpe_load(json_object_get(root, "model"), t->name))) return DH_EFORMAT;
    const json_t *pre = json_object_get(root, "pre_tokenizer");
    if (!pre || json_is_null(pre)) {
        log_error("%s: pre_tokenizer: null is not supported (a ByteLevel step is required)",
                  t->name);
        return DH_EUNSUPPORTED;
    }
    if ((rc = load_pretok(t, pre, "pre_tokenizer", &seen_bl)) != 0) return rc;
    if (!seen_bl) {
        log_error("%s: pre_tokenizer: has no ByteLevel step; only byte-level BPE is implemented",
                  t->name);
        return DH_EUNSUPPORTED;
    }
    if ((rc = load_added(t, json_object_get(root, "added_tokens"))) != 0) return rc;
    build_decoder(t);
    return 0;
}

tokenizer *tok_load_buffer(const char *json, size_t len, const char *name) {
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root) {
        log_error("%s: malformed JSON at line %d column %d: %s", name, jerr.line, jerr.column,
                  jerr.text);
        return NULL;
    }
    tokenizer *t = xcalloc(1, sizeof *t);
    t->name = xstrdup(name);
    int rc = load_root(t, root);
    json_decref(root);
    if (rc != 0) {
        tok_free(t);
        return NULL;
    }
    return t;
}

tokenizer *tok_load(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        log_error("%s: cannot open tokenizer: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0, got;
    do {
        if (cap - n < 65536) {
            cap = cap ? 2 * cap : 1 << 20;
            buf = xrealloc(buf, cap);
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    int err = ferror(f);
    fclose(f);
    if (err) {
        log_error("%s: read error", path);
        free(buf);
        return NULL;
    }
    tokenizer *t = tok_load_buffer(buf, n, path);
    free(buf);
    return t;
}

static void trie_free(trie *tr) {
    free(tr->node);
    free(tr->edge);
}

void tok_free(tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_steps; i++)
        if (t->step[i].re) onig_free(t->step[i].re);
    trie_free(&t->added[0]);
    trie_free(&t->added[1]);
    for (size_t i = 0; i < t->n_added; i++) free(t->added_content[i]);
    free(t->added_content);
    free(t->added_id);
    free(t->dec_pool);
    free(t->dec_off);
    free(t->dec_len);
    bpe_free(t->bpe);
    free(t->name);
    free(t);
}
