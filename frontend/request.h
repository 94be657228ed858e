/* request.h: one request's state in the front end (freq_ prefix).
 *
 * The engine speaks token ids; everything a request is besides them lives here, owned by the
 * HTTP server's thread: the prompt ids, the parameters (max_tokens, sampling with its seed
 * always set, ignore_eos, stop strings), the completion tokens accepted so far, the usage, and
 * the text state of each choice (the streaming detokenizer with its pending bytes, the text
 * decoded so far, how much of it was handed out, and what is held back because it may still
 * become a stop string). So a request can be resubmitted to a new engine (prompt + tokens so
 * far, same seed) and its text goes on where it stopped, with no duplicate and no gap.
 *
 * Text rules (unchanged from when the engine held them): only complete UTF-8 characters are
 * handed out; the text is held back by up to (longest stop string - 1) bytes so that a stop
 * string arriving in pieces is never partly shown; a stop string ends the text before it.
 *
 * Per-choice state is a struct of its own (freq_choice), so that n > 1 choices, logprobs or
 * penalties can add theirs beside it. */
#ifndef DH_REQUEST_H
#define DH_REQUEST_H
#include <stddef.h>

#include "core/sampler.h"
#include "core/tokenizer.h"

enum { FREQ_FINISH_NONE = 0, FREQ_FINISH_STOP = 1, FREQ_FINISH_LENGTH = 2 };

typedef struct freq_params {
    const int *prompt;        /* copied */
    int n_prompt;
    int max_tokens;           /* of the completion; >= 1 */
    sampler_params sampling;  /* with the seed the request keeps (the caller draws one if the
                                 client gave none) */
    int ignore_eos;
    const char *const *stop;  /* non-empty stop strings, copied */
    int n_stop;
    int eos_token_id;         /* the model's end-of-sentence token */
} freq_params;

typedef struct freq_choice {  /* one completion choice */
    int *tokens;              /* [n_tokens] accepted completion tokens (the EOS token never) */
    int n_tokens, cap_tokens;
    tok_stream *ts;           /* the detokenizer, holding an incomplete UTF-8 tail */
    char *text;               /* decoded text [len], NUL-terminated; cut at a stop string */
    size_t len, cap;
    size_t emitted;           /* text[0..emitted) handed out by freq_token */
    int finish;               /* FREQ_FINISH_* once the choice has ended */
} freq_choice;

typedef struct freq {
    int *prompt;              /* [n_prompt] */
    int n_prompt;
    int max_tokens;
    sampler_params sampling;
    int ignore_eos, eos_token_id;
    char **stop;              /* [n_stop] */
    int n_stop;
    size_t max_stop;          /* bytes of the longest stop string */
    freq_choice choice;       /* n = 1 */
} freq;

/* A request for p, decoding with tok (kept; it must outlive the request). NULL never. */
freq *freq_new(const freq_params *p, const tokenizer *tok);
void freq_free(freq *r); /* NULL ok */

/* The engine's token `token` at completion index `index`. 0 when taken: the text that may now
 * be shown is choice.text[*from .. *to) (empty when nothing new), and choice.finish says
 * whether the choice ended (a stop string: the caller ends the backend request; LENGTH:
 * max_tokens reached). 1 when ignored: a token after the end (the backend goes on until it
 * hears of it) or one already taken (index below n_tokens). DH_EINVAL for a gap (index beyond
 * n_tokens): nothing taken. */
int freq_token(freq *r, int token, int index, size_t *from, size_t *to);
/* The engine's end (the EOS token, or max_tokens): the decoder is flushed, stop strings are
 * looked for in what it gives, and the choice ends (STOP for EOS, LENGTH otherwise) unless it
 * had ended already. The rest to show is choice.text[*from .. *to). length: 1 when the engine
 * ended by max_tokens. */
void freq_end(freq *r, int length, size_t *from, size_t *to);
/* usage: prompt and completion tokens */
int freq_prompt_tokens(const freq *r);
int freq_completion_tokens(const freq *r);
#endif
