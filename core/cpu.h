/* cpu.h: what the CPU can do, and making OpenBLAS use it (cpu_ prefix). */
#ifndef DH_CPU_H
#define DH_CPU_H
#include <stddef.h>

/* Debian's OpenBLAS 0.3.21 does not recognise recent Xeons (Sapphire/Emerald Rapids) and falls
 * back to its generic "Prescott" kernels, about ten times slower than its AVX-512 ones. Call
 * first thing in main(), before MPI_Init and before any thread: when OPENBLAS_CORETYPE is not
 * set and OpenBLAS chose a generic core on a CPU with AVX-512, set OPENBLAS_CORETYPE
 * (Cooperlake with AVX512-BF16, else SkylakeX) and re-execute this program with the same argv
 * and environment, saying so on stderr. A value the user set is respected. Returns only when
 * nothing needs doing (or the re-exec failed, with a warning). */
void cpu_fix_openblas(char **argv);
/* The CPU this runs on, for the figures that depend on it: the brand string (cpuid; else
 * /proc/cpuinfo's "model name"), family and model, and the vector features the kernels use,
 * e.g. "AMD EPYC (family 26, model 2; avx512 vnni bf16)". Always NUL-terminated. */
void cpu_describe(char *buf, size_t n);
/* cpuid's family and model, extended fields folded in (AMD Zen 3 and 4 are family 25, Zen 5
 * 26); 0 and 0 where there is no cpuid. */
void cpu_family_model(unsigned *family, unsigned *model);
/* 1 on an AMD CPU (cpuid vendor "AuthenticAMD") */
int cpu_is_amd(void);
/* OpenBLAS's core name ("SkylakeX", "Prescott", ...). */
const char *cpu_openblas_core(void);
#endif
