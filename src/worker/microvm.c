/* microvm.c - QEMU microVM execution environments (placeholder until the
 * backend lands: every create fails with a clear message). */
#include <errno.h>
#include <stddef.h>
#include "worker/isolation.h"

static int vm_create(const sandbox_spec_t *spec, void **out, err_t *err)
{
    (void)spec;
    *out = NULL;
    err_set(err, ENOTSUP, "the microvm isolation backend is not available in this build");
    return -1;
}

const isolation_ops_t microvm_isolation = {
    .name = "microvm",
    .create = vm_create,
};
