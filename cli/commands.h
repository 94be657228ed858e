/* commands.h: one function per subcommand (cmd_ prefix); each parses its own options and
 * returns the process exit code (0 success, 1 failure, 2 usage error). */
#ifndef DH_COMMANDS_H
#define DH_COMMANDS_H

int cmd_init_model(int argc, char **argv);
int cmd_hosts(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_trace(int argc, char **argv);
int cmd_simulate(int argc, char **argv);
int cmd_place(int argc, char **argv);
#endif
