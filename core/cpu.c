/* cpu.c: the OPENBLAS_CORETYPE fix.
 *
 * OpenBLAS picks its kernels when the library is loaded, from the CPU model, before main runs;
 * an unknown model gets the generic ones. The only way to change the choice is the
 * OPENBLAS_CORETYPE environment variable, read at load time, hence the re-exec. It happens
 * before MPI_Init, so under mpirun each rank re-executes itself in place (same pid) before it
 * has spoken to anyone. DH_OPENBLAS_REEXEC guards against a loop should the variable not take. */
#include "cpu.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

const char *cpu_openblas_core(void) { return openblas_get_corename(); }

static int generic_core(const char *core) {
    static const char *const generic[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                          "Katmai", "Coppermine", "Northwood", "Banias", "Atom", "unknown"};
    for (size_t i = 0; i < sizeof generic / sizeof generic[0]; i++)
        if (strcmp(core, generic[i]) == 0) return 1;
    return 0;
}

void cpu_fix_openblas(char **argv) {
    if (getenv("OPENBLAS_CORETYPE") || getenv("DH_OPENBLAS_REEXEC")) return;
    const char *core = openblas_get_corename();
    if (!core || !generic_core(core)) return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return;
    const char *want = __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
    const char *rank = getenv("OMPI_COMM_WORLD_RANK"); /* under mpirun, rank 0 speaks for all */
    if (!rank || strcmp(rank, "0") == 0)
        fprintf(stderr,
            "darkhorse: OpenBLAS chose its generic %s kernels for this CPU; restarting with "
            "OPENBLAS_CORETYPE=%s (set OPENBLAS_CORETYPE yourself to choose)\n",
            core, want);
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("DH_OPENBLAS_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "darkhorse: warning: could not re-execute (%s); continuing with %s kernels\n", argv[0], core);
}
