/* main.c: the darkhorse executable: picks the subcommand and hands it the rest of argv.
 *
 * Every subcommand parses its own options (getopt_long) and returns the exit code; only this
 * folder calls exit. */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "core/common.h"

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"init-model", cmd_init_model, "write a random-weight checkpoint of a preset"},
    {"logits", cmd_logits, "run a prompt in one prefill and write its logits"},
    {"generate", cmd_generate, "generate text or token ids from a prompt"},
    {"tokenize", cmd_tokenize, "turn text into token ids with a tokenizer.json"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
    fprintf(f, "usage: darkhorse <command> [options]   (darkhorse <command> --help for its options)\n\n"
               "Distributed expert-parallel inference for DeepSeek-V3-style MoE models.\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "darkhorse: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
