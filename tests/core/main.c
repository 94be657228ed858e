/* main.c: the core test executable; one CUnit suite per core module. */
#include "tests/runner.h"

extern CU_SuiteInfo tensor_suite, kern_suite, config_suite, safetensors_suite, model_suite,
    tokenizer_suite, chat_suite, sampler_suite, threadpool_suite, hugemem_suite;

int main(int argc, char **argv) {
    CU_SuiteInfo suites[] = {tensor_suite, kern_suite, config_suite, safetensors_suite, model_suite,
                             tokenizer_suite, chat_suite, sampler_suite, threadpool_suite, hugemem_suite,
                             CU_SUITE_INFO_NULL};
    return dh_test_main(argc, argv, suites);
}
