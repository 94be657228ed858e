/* request.c: a request's tokens and text in the front end: detokenizing, stop strings, usage.
 *
 * Each accepted token goes through the choice's streaming decoder (complete UTF-8 characters
 * only) and its text is appended; a stop string is looked for in the text that is new since
 * what was handed out, widened back by the longest stop string so that one arriving in pieces
 * is found; what is handed out stops (longest stop string - 1) bytes short of the end, moved
 * back to a character boundary, since those bytes may still begin a stop string. Tokens carry
 * their completion index, so a token seen twice (a resumed engine does not send the tokens it
 * was given, but a careless one might) is ignored and a gap is an error rather than a wrong
 * text. */
#include "request.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

freq *freq_new(const freq_params *p, const tokenizer *tok) {
    DH_ASSERT(p->n_prompt >= 1 && p->max_tokens >= 1 && p->n_stop >= 0);
    freq *r = xcalloc(1, sizeof *r);
    r->prompt = xmalloc((size_t)p->n_prompt * sizeof *r->prompt);
    memcpy(r->prompt, p->prompt, (size_t)p->n_prompt * sizeof *r->prompt);
    r->n_prompt = p->n_prompt, r->max_tokens = p->max_tokens, r->sampling = p->sampling;
    r->ignore_eos = p->ignore_eos, r->eos_token_id = p->eos_token_id;
    r->stop = xcalloc((size_t)p->n_stop + 1, sizeof *r->stop);
    for (int i = 0; i < p->n_stop; i++) {
        r->stop[i] = xstrdup(p->stop[i]);
        r->max_stop = DH_MAX(r->max_stop, strlen(p->stop[i]));
    }
    r->n_stop = p->n_stop;
    r->choice.ts = tok_stream_new(tok);
    return r;
}

void freq_free(freq *r) {
    if (!r) return;
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->choice.tokens);
    tok_stream_free(r->choice.ts);
    free(r->choice.text);
    free(r);
}

static void append_text(freq_choice *c, const char *s, size_t n) {
    xappend(&c->text, &c->len, &c->cap, s, n);
}

/* drain the decoder into the text: after a push (id >= 0) or at the end (flush) */
static void decode(freq_choice *c, int id, int flush) {
    char buf[512];
    size_t k;
    if (flush) {
        while ((k = tok_stream_flush(c->ts, buf, sizeof buf)) > 0) append_text(c, buf, k);
        return;
    }
    while ((k = tok_stream_push(c->ts, id, buf, sizeof buf)) > 0) {
        append_text(c, buf, k);
        id = -1; /* further pushes only drain */
        if (k < sizeof buf) break;
    }
}

/* the first stop string in the text not yet handed out (widened back by the longest one):
 * the text is cut before it and the choice ends. 1 if one was found. */
static int cut_at_stop(freq *r, freq_choice *c) {
    size_t from = c->emitted > r->max_stop ? c->emitted - r->max_stop : 0, best = c->len;
    for (int i = 0; i < r->n_stop; i++) {
        size_t n = strlen(r->stop[i]);
        for (size_t at = from; at + n <= c->len && at < best; at++)
            if (memcmp(c->text + at, r->stop[i], n) == 0) {
                best = at;
                break;
            }
    }
    if (best == c->len) return 0;
    c->len = best;
    c->text[best] = 0;
    c->finish = FREQ_FINISH_STOP;
    return 1;
}

/* everything left to hand out, as the choice has ended */
static void hand_out_rest(freq_choice *c, size_t *from, size_t *to) {
    *from = DH_MIN(c->emitted, c->len);
    *to = c->emitted = c->len;
}

int freq_token(freq *r, int token, int index, size_t *from, size_t *to) {
    freq_choice *c = &r->choice;
    *from = *to = c->emitted;
    if (c->finish || index < c->n_tokens) return 1; /* after the end (a cancel on its way), or seen */
    if (index > c->n_tokens) return DH_EINVAL;
    if (c->n_tokens == c->cap_tokens) {
        c->cap_tokens = c->cap_tokens ? 2 * c->cap_tokens : 64;
        c->tokens = xrealloc(c->tokens, (size_t)c->cap_tokens * sizeof *c->tokens);
    }
    c->tokens[c->n_tokens++] = token;
    decode(c, token, 0);
    int at_length = c->n_tokens >= r->max_tokens;
    if (at_length) decode(c, -1, 1);
    if (cut_at_stop(r, c) || at_length) {
        if (!c->finish) c->finish = FREQ_FINISH_LENGTH;
        hand_out_rest(c, from, to);
        return 0;
    }
    // all but what could still become a stop string, on a character boundary
    size_t hold = r->max_stop ? r->max_stop - 1 : 0, safe = c->len > hold ? c->len - hold : 0;
    while (safe > c->emitted && safe < c->len && ((unsigned char)c->text[safe] & 0xC0) == 0x80) safe--;
    if (safe > c->emitted) *to = c->emitted = safe;
    return 0;
}

void freq_end(freq *r, int length, size_t *from, size_t *to) {
    freq_choice *c = &r->choice;
    if (c->finish) {
        *from = *to = c->emitted;
        return;
    }
    decode(c, -1, 1);
    if (!cut_at_stop(r, c)) c->finish = length ? FREQ_FINISH_LENGTH : FREQ_FINISH_STOP;
    hand_out_rest(c, from, to);
}

int freq_prompt_tokens(const freq *r) { return r->n_prompt; }
int freq_completion_tokens(const freq *r) { return r->choice.n_tokens; }
