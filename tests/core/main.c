/* main.c: the core test executable; one CUnit suite per core module. */
#include "tests/runner.h"
#include "core/cpu.h"

extern CU_SuiteInfo tensor_suite, kern_suite, config_suite, safetensors_suite, model_suite,
    tokenizer_suite, chat_suite, sampler_suite;

int main(int argc, char **argv) {
    cpu_fix_openblas(argv); /* OpenBLAS's AVX-512 kernels, as darkhorse does (core/cpu.c) */
    CU_SuiteInfo suites[] = {tensor_suite, kern_suite, config_suite, safetensors_suite, model_suite,
                             tokenizer_suite, chat_suite, sampler_suite, CU_SUITE_INFO_NULL};
    return dh_test_main(argc, argv, suites);
}
