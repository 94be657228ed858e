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
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

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

/* trims the spaces some CPUs pad their brand string with */
static void trim_copy(char *dst, size_t n, const char *src) {
    while (*src == ' ' || *src == '\t') src++;
    snprintf(dst, n, "%s", src);
    size_t l = strlen(dst);
    while (l > 0 && (dst[l - 1] == ' ' || dst[l - 1] == '\n' || dst[l - 1] == '\t')) dst[--l] = 0;
}

static void proc_model_name(char *buf, size_t n) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    buf[0] = 0;
    if (!f) return;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0 && strchr(line, ':')) {
            trim_copy(buf, n, strchr(line, ':') + 1);
            break;
        }
    fclose(f);
}

void cpu_family_model(unsigned *family, unsigned *model) {
    *family = 0, *model = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        *family = (a >> 8) & 0xf, *model = (a >> 4) & 0xf;
        if (*family == 0xf) *family += (a >> 20) & 0xff;
        if (*family == 0x6 || *family >= 0xf) *model |= ((a >> 16) & 0xf) << 4;
    }
#endif
}

int cpu_is_amd(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_is("amd");
#else
    return 0;
#endif
}

void cpu_describe(char *buf, size_t n) {
    char name[128] = "";
    if (n == 0) return;
#if defined(__x86_64__) && defined(__GNUC__)
    unsigned r[12], a, b, c, d;
    char brand[49] = "";
    if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u) {
        for (unsigned i = 0; i < 3; i++) __get_cpuid(0x80000002u + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        memcpy(brand, r, 48);
        brand[48] = 0;
    }
    char cpuid_name[64];
    trim_copy(cpuid_name, sizeof cpuid_name, brand);
    proc_model_name(name, sizeof name); /* what lscpu shows; a VM may name it otherwise in cpuid */
    if (!name[0]) snprintf(name, sizeof name, "%s", cpuid_name);
    else if (cpuid_name[0] && strcmp(cpuid_name, name) != 0)
        snprintf(name + strlen(name), sizeof name - strlen(name), " [cpuid: %s]", cpuid_name);
    unsigned fam, model;
    cpu_family_model(&fam, &model);
    __builtin_cpu_init();
    snprintf(buf, n, "%s (family %u, model %u; %s%s%s)", name[0] ? name : "unknown CPU", fam, model,
             __builtin_cpu_supports("avx512f") ? "avx512" : "no avx512",
             __builtin_cpu_supports("avx512vnni") ? " vnni" : "",
             __builtin_cpu_supports("avx512bf16") ? " bf16" : "");
#else
    proc_model_name(name, sizeof name);
    snprintf(buf, n, "%s", name[0] ? name : "unknown CPU");
#endif
}
