/* fuzz_api.c: a libFuzzer target over the OpenAI request parser and the bodies built from what
 * it accepts (frontend/api.c). Not part of CI (which runs the deterministic fuzzer of
 * test_api.c on every build); with clang, configure a build with -DCMAKE_C_COMPILER=clang and:
 *
 *   cmake --build build-fuzz --target fuzz_api
 *   build-fuzz/tests/fuzz_api -max_total_time=600 -max_len=4096 CORPUS_DIR
 *
 * The first input byte picks the endpoint (even: completions, odd: chat); the rest is the body.
 * Any crash, sanitizer report or failed DH_ASSERT is a bug: the parser must answer every input
 * with a request within the limits or a 400 whose body is JSON. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "frontend/api.h"
#include "core/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const names[CFG_N_DOMAINS] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
    static const double share[CFG_N_DOMAINS] = {1};
    if (size < 1) return 0;
    api_kind kind = data[0] & 1 ? API_CHAT : API_COMPLETION;
    api_limits lim = {.max_context = 4096, .vocab_size = 129280};
    api_request r;
    api_error e;
    char *out;
    if (api_parse_request(kind, (const char *)data + 1, size - 1, &lim, &r, &e) == 0) {
        DH_ASSERT((r.prompt != NULL) != (r.prompt_ids != NULL));
        DH_ASSERT(r.max_tokens == -1 || (r.max_tokens >= 1 && r.max_tokens <= lim.max_context));
        DH_ASSERT(r.n_stop >= 0 && r.n_stop <= API_MAX_STOP);
        for (int i = 0; i < r.n_prompt_ids; i++) DH_ASSERT(r.prompt_ids[i] >= 0 && r.prompt_ids[i] < lim.vocab_size);
        api_meta m = {.kind = kind, .id = "x", .created = 0, .model = "m"};
        api_final f = {.finish = API_FINISH_STOP, .domain_share = share, .domain_names = names};
        if (r.prompt) {
            out = api_response_json(&m, r.prompt, r.prompt_len, &f);
            json_t *j = json_loads(out, JSON_ALLOW_NUL, NULL);
            DH_ASSERT(j != NULL);
            json_decref(j);
            free(out);
            free(api_chunk_json(&m, r.prompt, r.prompt_len, 1, &f));
        }
        api_request_free(&r);
    } else {
        DH_ASSERT(e.status == 400 && e.message[0]);
        out = api_error_json(&e);
        json_t *j = json_loads(out, 0, NULL);
        DH_ASSERT(j != NULL);
        json_decref(j);
        free(out);
    }
    return 0;
}
