/* main.c: the darkhorse executable: picks the subcommand and hands it the rest of argv.
 *
 * Every subcommand parses its own options (getopt_long) and returns the exit code; only this
 * folder calls exit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "core/common.h"
#include "core/cpu.h"
#include "core/version.h"
#include "proto/exchange.h"

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    int runs_model; /* under mpirun every rank runs it; otherwise only rank 0 does */
    const char *summary;
} command;

static const command commands[] = {
    {"init-model", cmd_init_model, 0, "write a random-weight checkpoint of a preset"},
    {"logits", cmd_logits, 1, "run a prompt in one prefill and write its logits"},
    {"generate", cmd_generate, 1, "generate text or token ids from a prompt"},
    {"tokenize", cmd_tokenize, 0, "turn text into token ids with a tokenizer.json"},
    {"serve", cmd_serve, 1, "serve the OpenAI-compatible HTTP API (continuous batching)"},
    {"hosts", cmd_hosts, 1, "check every rank of a pool: host, version, model, speed, can it serve"},
    {"bench", cmd_bench, 1, "measure prompt processing and generation speed"},
    {"quantize", cmd_quantize, 0, "store a checkpoint with q8 or q4 weights"},
    {"trace", cmd_trace, 0, "import a routing trace, or describe one"},
    {"simulate", cmd_simulate, 0, "replay a routing trace against a placement plan"},
    {"place", cmd_place, 0, "plan which workers host which experts, from a routing trace"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
    fprintf(f, "usage: darkhorse <command> [options]   (darkhorse <command> --help for its options)\n\n"
               "Distributed expert-parallel inference for DeepSeek-V3-style MoE models (version %s).\n\n"
               "commands:\n", DH_VERSION);
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
}

static int run(const command *c, int argc, char **argv) {
    if (!c->runs_model && xchg_rank() > 0) return 0; /* one rank is enough */
    return c->fn(argc, argv);
}

int main(int argc, char **argv) {
    /* the commands that run the model link OpenBLAS's choice of kernels: fix it first (not
     * for --help, which runs nothing) */
    int help = 0;
    for (int i = 2; i < argc; i++) help |= strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
    for (size_t i = 0; argc > 1 && !help && i < N_COMMANDS; i++)
        if (commands[i].runs_model && strcmp(argv[1], commands[i].name) == 0) cpu_fix_openblas(argv);
    const char *level = getenv("DH_LOG_LEVEL");
    if (level) log_set_level(atoi(level));
    xchg_init(&argc, &argv);
    int rc = 2;
    if (argc < 2) {
        if (xchg_rank() == 0) usage(stderr);
    } else if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        if (xchg_rank() == 0) usage(stdout);
        rc = 0;
    } else if (strcmp(argv[1], "--version") == 0) {
        if (xchg_rank() == 0) printf("darkhorse %s\n", DH_VERSION);
        rc = 0;
    } else {
        size_t i = 0;
        while (i < N_COMMANDS && strcmp(argv[1], commands[i].name) != 0) i++;
        if (i < N_COMMANDS) {
            rc = run(&commands[i], argc - 1, argv + 1);
        } else if (xchg_rank() == 0) {
            fprintf(stderr, "darkhorse: unknown command '%s'\n\n", argv[1]);
            usage(stderr);
        }
    }
    fflush(stdout);
    xchg_finalize();
    return rc;
}
