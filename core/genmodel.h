/* genmodel.h: random-weight checkpoints of any DeepSeek-V2/V3 configuration (gen_ prefix). */
#ifndef DH_GENMODEL_H
#define DH_GENMODEL_H
#include <stdint.h>

#include "safetensors.h"

/* The config.json text of a preset ("genesis-tiny", "genesis-1b", "genesis-5b"), malloc'd;
 * NULL for an unknown name. */
char *gen_preset_config(const char *preset);
/* Names of the presets, NULL-terminated. */
extern const char *const gen_presets[];

typedef struct gen_params {
    uint64_t seed;
    st_dtype dtype;    /* ST_F32 or ST_BF16 (ST_F16 works too) */
    int progress;      /* a progress line on stderr */
    int mtp_copies;    /* also write the MTP block's embed_tokens and shared_head.head (as
                          DeepSeek-V3 checkpoints do); off: the loader shares the main ones */
} gen_params;

/* Write dir/config.json (the given text, which must parse) and dir/model.safetensors with
 * every tensor that configuration implies, random and reproducible from the seed: each
 * tensor's values depend only on the seed and its name. Streams: memory use stays a few MB
 * whatever the model size. dir must exist. 0, or a DH_E* code with a message. */
int gen_checkpoint(const char *dir, const char *config_json, const gen_params *p);
#endif
