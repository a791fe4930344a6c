/* seccomp_filter.h - the sandbox's seccomp deny-list, compiled once to BPF.
 *
 * The filter is built with libseccomp in the worker (where libseccomp is
 * linked) and exported as a classic-BPF program; the sandbox's setup child
 * installs it with prctl(PR_SET_SECCOMP) right before it execs flicker-init,
 * so init and everything below it run under it.  Installing needs no
 * allocation, which matters because the setup child is forked from a
 * possibly multi-threaded worker. */
#ifndef FLICKER_SECCOMP_FILTER_H
#define FLICKER_SECCOMP_FILTER_H
#include <linux/filter.h>
#include "common/err.h"

/* Builds the deny-list (default allow; the listed syscalls fail with EPERM,
 * clone3 with ENOSYS so libc falls back to clone, syscalls of other ABIs
 * (i386, x32) fail with EPERM) into *prog, whose filter array is malloc'd
 * (free with seccomp_filter_free).  Returns 0 or -1/err. */
int seccomp_filter_build(struct sock_fprog *prog, err_t *err);
void seccomp_filter_free(struct sock_fprog *prog);
/* Installs prog on the calling thread (and, by inheritance, its future
 * children).  Async-signal-safe.  Returns 0 or -1 with errno set. */
int seccomp_filter_install(const struct sock_fprog *prog);
#endif
