/* fuzz_codezip.c - libFuzzer target for codezip_extract(): arbitrary bytes
 * as an uploaded zip.  Extracts into a fresh directory under a private temp
 * dir with small limits (1 MB, 64 entries), then checks that nothing was
 * created outside it and removes it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "store/codezip.h"

static char DIR_[64];
static char *DEST, *SENTINEL;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(DIR_, sizeof DIR_, "/tmp/flicker-fuzzzip-XXXXXX");
    if (!mkdtemp(DIR_))
        abort();
    DEST = xasprintf("%s/out", DIR_);
    SENTINEL = xasprintf("%s/evil", DIR_);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    err_t err = {0};
    int rc = codezip_extract(data, size, DEST, 1 << 20, 64, NULL, &err);
    if (rc < 0 && access(DEST, F_OK) == 0)
        abort(); /* failures must clean up */
    if (access(SENTINEL, F_OK) == 0)
        abort(); /* something escaped */
    rm_rf(DEST, NULL);
    return 0;
}
