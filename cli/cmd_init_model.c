/* cmd_init_model.c: `darkhorse init-model`: a random-weight checkpoint of a preset (or of any
 * config.json of the family), with the tokenizer. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/common.h"
#include "core/genmodel.h"
#include "core/tok_embedded.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: darkhorse init-model (--preset NAME | --config FILE) --out DIR [options]\n\n"
            "Writes DIR/config.json, DIR/model.safetensors (random weights, reproducible from the\n"
            "seed) and DIR/tokenizer.json (DeepSeek-V3's).\n\n"
            "  --preset NAME   genesis-tiny | genesis-1b | genesis-5b\n"
            "  --config FILE   any DeepSeek-V2/V3 config.json instead of a preset\n"
            "  --out DIR       output directory (created if missing)\n"
            "  --seed S        random seed (default 0)\n"
            "  --dtype T       f32 | bf16 | f16 (default bf16)\n"
            "  --mtp-copies    also store the MTP block's copies of the embedding and head\n"
            "  --force         overwrite an existing model.safetensors\n");
}

static int mkdirs(const char *dir) {
    char p[1024];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) return -1;
            *s = '/';
        }
    return mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* DeepSeek-V3's tokenizer.json (built into the binary) as dir/tokenizer.json. */
static int write_tokenizer(const char *dir) {
    size_t len;
    const unsigned char *json = tok_embedded_json(&len);
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(json, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "darkhorse init-model: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 65536, n = 0;
    char *s = xmalloc(cap);
    size_t k;
    while ((k = fread(s + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (n + 1 == cap) s = xrealloc(s, cap *= 2);
    }
    fclose(f);
    s[n] = 0;
    return s;
}

int cmd_init_model(int argc, char **argv) {
    static const struct option opts[] = {
        {"preset", required_argument, 0, 'p'}, {"config", required_argument, 0, 'c'},
        {"out", required_argument, 0, 'o'},    {"seed", required_argument, 0, 's'},
        {"dtype", required_argument, 0, 'd'},  {"mtp-copies", no_argument, 0, 'm'},
        {"force", no_argument, 0, 'f'},        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *preset = NULL, *config = NULL, *out = NULL;
    gen_params gp = {.seed = 0, .dtype = ST_BF16, .progress = 1};
    int force = 0, c;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': preset = optarg; break;
        case 'c': config = optarg; break;
        case 'o': out = optarg; break;
        case 's':
            errno = 0;
            gp.seed = strtoull(optarg, &end, 10);
            if (errno || *end) {
                fprintf(stderr, "darkhorse init-model: --seed wants an unsigned integer, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'd':
            if (strcmp(optarg, "f32") == 0) gp.dtype = ST_F32;
            else if (strcmp(optarg, "bf16") == 0) gp.dtype = ST_BF16;
            else if (strcmp(optarg, "f16") == 0) gp.dtype = ST_F16;
            else {
                fprintf(stderr, "darkhorse init-model: --dtype wants f32, bf16 or f16, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'm': gp.mtp_copies = 1; break;
        case 'f': force = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !out || (!preset == !config)) {
        usage(stderr);
        return 2;
    }
    char *json = preset ? gen_preset_config(preset) : read_text(config);
    if (!json) {
        if (preset) {
            fprintf(stderr, "darkhorse init-model: unknown preset '%s' (", preset);
            for (int i = 0; gen_presets[i]; i++) fprintf(stderr, "%s%s", i ? ", " : "", gen_presets[i]);
            fprintf(stderr, ")\n");
        } else {
            fprintf(stderr, "darkhorse init-model: cannot read %s\n", config);
        }
        return 2;
    }
    char path[1100];
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    if (!force && access(path, F_OK) == 0) {
        fprintf(stderr, "darkhorse init-model: %s exists (use --force to overwrite)\n", path);
        free(json);
        return 1;
    }
    if (mkdirs(out) != 0) {
        fprintf(stderr, "darkhorse init-model: cannot create %s: %s\n", out, strerror(errno));
        free(json);
        return 1;
    }
    int rc = gen_checkpoint(out, json, &gp);
    free(json);
    if (rc) return 1;
    if (write_tokenizer(out) != 0) return 1;
    fprintf(stderr, "init-model: wrote %s\n", out);
    return 0;
}
