/* etcd_cluster.h - a throwaway 3-member etcd cluster for unit tests that
 * need a real etcd (test_journal_etcd.c, test_store.c): started by
 * scripts/etcd-cluster.sh on a free base port in a temporary directory.
 *
 * The cluster is always stopped: a forked guard process waits for the test
 * process to exit (however it exits, crash included) and then runs
 * "etcd-cluster.sh stop" and removes the directory.  Usage: have_etcd()
 * and find_script() (else SKIP), start_cluster() (eps then holds the
 * comma-separated client URLs), ..., stop_cluster(). */
#ifndef FLICKER_TEST_ETCD_CLUSTER_H
#define FLICKER_TEST_ETCD_CLUSTER_H
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"

static char script[PATH_MAX], cdir[PATH_MAX], eps[512];

/* ---- cluster management ---------------------------------------------- */

static int find_script(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (access("scripts/etcd-cluster.sh", X_OK) == 0) {
        snprintf(script, sizeof script, "%s", "scripts/etcd-cluster.sh");
        if (realpath("scripts/etcd-cluster.sh", exe))
            snprintf(script, sizeof script, "%s", exe);
        return 0;
    }
    if (n <= 0)
        return -1;
    exe[n] = 0;
    for (int up = 0; up < 5; up++) { /* BUILD[/asan]/tests/test_x -> repo root */
        char *slash = strrchr(exe, '/');
        if (!slash)
            break;
        *slash = 0;
        if (snprintf(script, sizeof script, "%s/scripts/etcd-cluster.sh", exe) >= (int)sizeof script)
            return -1;
        if (access(script, X_OK) == 0)
            return 0;
    }
    return -1;
}

static int have_etcd(void)
{
    return system("command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1") == 0;
}

static int ports_free(int base)
{
    for (int p = base; p < base + 6; p++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        if (fd >= 0)
            close(fd);
        if (!ok)
            return 0;
    }
    return 1;
}

/* The guard: holds the read end of a pipe; when the test process is gone
 * (EOF), stops the cluster and removes its directory. */
static int guard_fd = -1;
static pid_t guard_pid;

static void start_guard(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return;
    guard_pid = fork();
    if (guard_pid == 0) {
        close(p[1]);
        setpgid(0, 0); /* a ^C to the test does not stop the guard first */
        char c;
        while (read(p[0], &c, 1) != 0 && errno == EINTR)
            ;
        execl("/bin/sh", "sh", "-c", "\"$0\" stop \"$1\" >/dev/null 2>&1; rm -rf \"$1\"", script, cdir, (char *)NULL);
        _exit(127);
    }
    close(p[0]);
    guard_fd = p[1];
}

static void stop_cluster(void)
{
    if (guard_fd >= 0) {
        close(guard_fd);
        guard_fd = -1;
        waitpid(guard_pid, NULL, 0);
    }
}

static int start_cluster(void)
{
    char tmpl[] = "/tmp/flicker-jetcd-XXXXXX";
    if (!mkdtemp(tmpl))
        return -1;
    snprintf(cdir, sizeof cdir, "%s", tmpl);
    start_guard();
    unsigned seed = (unsigned)getpid() ^ (unsigned)now_mono_us();
    for (int attempt = 0; attempt < 4; attempt++) {
        int base = 0;
        for (int k = 0; k < 50 && !base; k++) {
            int b = 20000 + (int)(rand_r(&seed) % 20000u);
            if (ports_free(b))
                base = b;
        }
        if (!base)
            return -1;
        char cmd[PATH_MAX * 2 + 64];
        snprintf(cmd, sizeof cmd, "'%s' start '%s' %d", script, cdir, base);
        FILE *f = popen(cmd, "r");
        if (!f)
            return -1;
        char line[512] = "";
        char *got = fgets(line, sizeof line, f);
        int rc = pclose(f);
        if (got && rc == 0) {
            line[strcspn(line, "\n")] = 0;
            snprintf(eps, sizeof eps, "%s", line);
            return 0;
        }
    }
    return -1;
}

#endif
