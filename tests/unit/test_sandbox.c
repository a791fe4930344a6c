/* test_sandbox.c - real sandboxes (needs root, cgroups, user namespaces).
 *
 * Each TEST runs /bin/sh or python3 (from the host's /usr, as the sandbox
 * sees it) inside a fresh sandbox and checks one property of the jail from
 * the inside, or one cgroup behaviour from the outside.  No assertion
 * depends on timing except generous timeouts; the create/destroy benchmark
 * only prints. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "common/util.h"
#include "worker/cgroup.h"
#include "worker/sandbox.h"

static char g_parent[64]; /* 0700 dir: the code dir's parent is not traversable by others */
static char g_code[128];
static char g_state[128]; /* the worker's state dir: /tmp images under g_state/ephemeral */
static bool g_disk_tmp;   /* /tmp is disk-backed (else the tmpfs fallback) */
#define NEEDS_DISK_TMP()                                                                  \
    do {                                                                                  \
        if (!g_disk_tmp) {                                                                \
            printf("  skipped: /tmp is tmpfs (FLICKER_TEST_TMPFS)\n");                    \
            return;                                                                       \
        }                                                                                 \
    } while (0)
static int g_seq;

static char *const g_env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8",
                              "FOO=bar baz", NULL};

/* Python probe run inside: each command prints "<name> rc=<rc> errno=<E>". */
static const char PROBE[] =
    "import ctypes, os, sys, errno\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.syscall.restype = ctypes.c_long\n"
    "def show(name, r):\n"
    "    e = ctypes.get_errno() if r < 0 else 0\n"
    "    print('%s rc=%d errno=%s' % (name, 0 if r >= 0 else -1, errno.errorcode.get(e, e) if e else 0), flush=True)\n"
    "for cmd in sys.argv[1:]:\n"
    "    if cmd == 'mount': show(cmd, libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))\n"
    "    elif cmd == 'umount': show(cmd, libc.umount2(b'/tmp', 2))\n"
    "    elif cmd == 'unshare_user': show(cmd, libc.unshare(0x10000000))\n"
    "    elif cmd == 'unshare_ns': show(cmd, libc.unshare(0x00020000))\n"
    "    elif cmd == 'setns':\n"
    "        fd = os.open('/proc/self/ns/net', os.O_RDONLY)\n"
    "        show(cmd, libc.setns(fd, 0))\n"
    "    elif cmd == 'ptrace':\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n"
    "            import time; time.sleep(30); os._exit(0)\n"
    "        show(cmd, libc.ptrace(16, pid, None, None))\n"
    "        os.kill(pid, 9); os.waitpid(pid, 0)\n"
    "    elif cmd == 'traceme': show(cmd, libc.ptrace(0, 0, None, None))\n"
    "    elif cmd == 'clone_newnet': show(cmd, libc.syscall(56, 0x40000000 | 17, 0, 0, 0, 0))\n"
    "    elif cmd == 'clone3': show(cmd, libc.syscall(435, None, 0))\n"
    "    elif cmd == 'bpf': show(cmd, libc.syscall(321, 0, None, 0))\n"
    "    elif cmd == 'keyctl': show(cmd, libc.syscall(250, 0, 0, 0, 0, 0))\n"
    "    elif cmd == 'personality_query': show(cmd, libc.personality(0xffffffff))\n"
    "    elif cmd == 'personality_default': show(cmd, libc.personality(0))\n"
    "    elif cmd == 'personality_norandom': show(cmd, libc.personality(0x0040000))\n"
    "    elif cmd == 'fork':\n"
    "        pid = os.fork()\n"
    "        if pid == 0: os._exit(5)\n"
    "        show(cmd, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) - 5)\n"
    "    elif cmd == 'hog':\n"
    "        chunks = []\n"
    "        for i in range(2000): chunks.append(b'x' * (1 << 20))\n"
    "        print('hog survived', flush=True)\n";

static void setup_dirs(void) {
    snprintf(g_parent, sizeof(g_parent), "/tmp/flicker-sbtest-XXXXXX");
    if (!mkdtemp(g_parent)) abort();
    chmod(g_parent, 0700);
    snprintf(g_state, sizeof(g_state), "%s/state", g_parent);
    snprintf(g_code, sizeof(g_code), "%s/code", g_parent);
    mkdir(g_code, 0755);
    chmod(g_code, 0755);
    char p[256];
    snprintf(p, sizeof(p), "%s/hello.txt", g_code);
    write_file_atomic(p, "hello from task\n", 16, 0644, NULL);
    snprintf(p, sizeof(p), "%s/probe.py", g_code);
    write_file_atomic(p, PROBE, strlen(PROBE), 0644, NULL);
}

static sandbox_t *start(char *const argv[], int mem, int eph, int pids, err_t *e) {
    char id[64];
    snprintf(id, sizeof(id), "test-%d-%d", (int)getpid(), ++g_seq);
    sandbox_spec_t sp = {.id = id, .code_dir = g_code, .runtime_dir = NULL, .memory_mb = mem,
                         .ephemeral_mb = eph, .pids_max = pids, .argv = argv, .envp = g_env};
    sandbox_t *sb = NULL;
    if (sandbox_create(&sp, &sb, e) < 0) {
        printf("  create failed: %s\n", e->msg);
        return NULL;
    }
    return sb;
}

/* Appends available output to *buf (grown); returns bytes read, 0 on EOF,
 * -1 when nothing arrived within ms. */
static ssize_t read_some(sandbox_t *sb, char **buf, size_t *len, int ms) {
    struct pollfd p = {sandbox_output_fd(sb), POLLIN, 0};
    if (poll(&p, 1, ms) <= 0) return -1;
    char tmp[4096];
    ssize_t n = read(p.fd, tmp, sizeof(tmp));
    if (n < 0) return errno == EAGAIN ? -1 : 0;
    *buf = xrealloc(*buf, *len + (size_t)n + 1);
    memcpy(*buf + *len, tmp, (size_t)n);
    *len += (size_t)n;
    (*buf)[*len] = 0;
    return n;
}

/* Reads until EOF (all writers gone) or timeout, then reaps PID 1. */
static char *drain_and_reap(sandbox_t *sb, int *status) {
    char *buf = xstrdup("");
    size_t len = 0;
    uint64_t deadline = now_mono_ms() + 120000;
    while (now_mono_ms() < deadline) {
        ssize_t n = read_some(sb, &buf, &len, 1000);
        if (n == 0) break;
    }
    struct pollfd p = {sandbox_pidfd(sb), POLLIN, 0};
    poll(&p, 1, 30000);
    *status = -1;
    sandbox_reap(sb, status, NULL);
    return buf;
}

/* Runs argv in a sandbox to completion; returns its output (malloc'd). */
static char *run_argv(char *const argv[], int mem, int eph, int pids, int *status) {
    err_t e = {0};
    *status = -1;
    sandbox_t *sb = start(argv, mem, eph, pids, &e);
    if (!sb) return NULL;
    char *out = drain_and_reap(sb, status);
    if (sandbox_destroy(sb, &e) < 0) printf("  destroy: %s\n", e.msg);
    return out;
}

static char *run_sh(const char *script, int *status) {
    char *argv[] = {"/bin/sh", "-c", (char *)script, NULL};
    return run_argv(argv, 1769, 64, 0, status);
}

static char *probe(const char *cmd) {
    char *argv[] = {"/usr/bin/python3", "-S", "/var/task/probe.py", (char *)cmd, NULL};
    int st;
    char *out = run_argv(argv, 1769, 64, 0, &st);
    if (out) printf("  %s", out);
    return out;
}

#define EXPECT_SH(script, needle)                                                         \
    do {                                                                                  \
        int st_;                                                                          \
        char *out_ = run_sh(script, &st_);                                                \
        CHECK(out_ != NULL);                                                              \
        bool ok_ = strstr(out_, needle) != NULL;                                          \
        if (!ok_) printf("  output: %s\n", out_);                                         \
        free(out_);                                                                       \
        CHECK(ok_);                                                                       \
    } while (0)

#define EXPECT_PROBE(cmd, needle)                                                         \
    do {                                                                                  \
        char *out_ = probe(cmd);                                                          \
        CHECK(out_ != NULL);                                                              \
        bool ok_ = strstr(out_, needle) != NULL;                                          \
        free(out_);                                                                       \
        CHECK(ok_);                                                                       \
    } while (0)

/* ------------------------------------------------------------ tests */

static void test_runs_and_exit_status(void) {
    int st;
    char *out = run_sh("echo hello; echo err >&2; exit 7", &st);
    CHECK(out != NULL);
    bool ok = strstr(out, "hello\n") && strstr(out, "err\n");
    free(out);
    CHECK(ok);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7);
}

static void test_killed_status_is_128_plus_signal(void) {
    int st;
    free(run_sh("kill -9 $$", &st));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 137);
}

static void test_environment_and_cwd(void) { EXPECT_SH("echo \"[$FOO] $(pwd)\"", "[bar baz] /var/task"); }

static void test_stdin_is_dev_null(void) { EXPECT_SH("if read x; then echo got; else echo eof; fi", "eof"); }

static void test_code_dir_readable_and_readonly(void) {
    EXPECT_SH("cat /var/task/hello.txt; touch /var/task/x 2>/dev/null && echo WROTE || echo ro-ok",
              "hello from task\nro-ok");
}

static void test_root_readonly(void) {
    EXPECT_SH("w=0; for p in /x /etc/x /usr/x /var/x /opt/x /dev/x /init /etc/passwd; do"
              " touch $p 2>/dev/null && w=1; done; mkdir /newdir 2>/dev/null && w=1; echo wrote=$w",
              "wrote=0");
    int st;
    char *out = run_sh("touch /x /etc/x /usr/x /opt/x 2>/dev/null; ls -d /x /etc/x /usr/x /opt/x 2>/dev/null; echo end", &st);
    CHECK(out != NULL);
    bool ok = strcmp(out, "end\n") == 0;
    if (!ok) printf("  output: %s\n", out);
    free(out);
    CHECK(ok);
}

static void test_tmp_writable_and_size_limited(void) {
    char *argv[] = {"/bin/sh", "-c",
                    "echo x > /tmp/a && cat /tmp/a; dd if=/dev/zero of=/tmp/big bs=1M count=8 2>&1; echo rc=$?",
                    NULL};
    int st;
    char *out = run_argv(argv, 1769, 2, 0, &st);
    CHECK(out != NULL);
    bool ok = strstr(out, "x\n") && strstr(out, "No space left on device") && strstr(out, "rc=1");
    if (!ok) printf("  output: %s\n", out);
    free(out);
    CHECK(ok);
}

static void test_uid_is_993(void) {
    EXPECT_SH("id -u; id -g; id -G; grep -E '^(Uid|Gid):' /proc/self/status | tr -s '\\t' ' '",
              "993\n993\n993\nUid: 993 993 993 993\nGid: 993 993 993 993");
}

static void test_no_capabilities(void) {
    EXPECT_SH("grep -E '^Cap' /proc/self/status | tr -s '\\t' ' '",
              "CapInh: 0000000000000000\nCapPrm: 0000000000000000\nCapEff: 0000000000000000\n"
              "CapBnd: 0000000000000000\nCapAmb: 0000000000000000");
}

static void test_no_new_privs(void) { EXPECT_SH("grep NoNewPrivs /proc/self/status", "NoNewPrivs:\t1"); }

static void test_seccomp_mode_2(void) { EXPECT_SH("grep '^Seccomp:' /proc/self/status", "Seccomp:\t2"); }

static void test_cannot_mount(void) { EXPECT_PROBE("mount", "mount rc=-1 errno=EPERM"); }
static void test_cannot_umount(void) { EXPECT_PROBE("umount", "umount rc=-1 errno=EPERM"); }
static void test_cannot_unshare_user(void) { EXPECT_PROBE("unshare_user", "unshare_user rc=-1 errno=EPERM"); }
static void test_cannot_unshare_mount(void) { EXPECT_PROBE("unshare_ns", "unshare_ns rc=-1 errno=EPERM"); }
static void test_cannot_setns(void) { EXPECT_PROBE("setns", "setns rc=-1 errno=EPERM"); }
static void test_cannot_ptrace(void) { EXPECT_PROBE("ptrace", "ptrace rc=-1 errno=EPERM"); }
static void test_cannot_ptrace_traceme(void) { EXPECT_PROBE("traceme", "traceme rc=-1 errno=EPERM"); }
static void test_cannot_clone_new_namespace(void) { EXPECT_PROBE("clone_newnet", "clone_newnet rc=-1 errno=EPERM"); }
static void test_clone3_enosys(void) { EXPECT_PROBE("clone3", "clone3 rc=-1 errno=ENOSYS"); }
static void test_fork_still_works(void) { EXPECT_PROBE("fork", "fork rc=0 errno=0"); }
static void test_cannot_bpf(void) { EXPECT_PROBE("bpf", "bpf rc=-1 errno=EPERM"); }
static void test_cannot_keyctl(void) { EXPECT_PROBE("keyctl", "keyctl rc=-1 errno=EPERM"); }
static void test_personality_default_allowed(void) {
    EXPECT_PROBE("personality_query", "personality_query rc=0 errno=0");
    EXPECT_PROBE("personality_default", "personality_default rc=0 errno=0");
}
static void test_personality_change_denied(void) {
    EXPECT_PROBE("personality_norandom", "personality_norandom rc=-1 errno=EPERM");
}

static void test_cannot_see_host_processes(void) {
    /* Only our own processes are visible: sh, ls-pipeline members. */
    EXPECT_SH("n=$(ls /proc | grep -c '^[0-9][0-9]*$'); [ \"$n\" -le 4 ] && echo few-procs:$n || echo MANY:$n;"
              " ls /proc | grep -q '^1$' && echo SEES-INIT || echo init-hidden",
              "few-procs:");
}

/* main() ignores SIGPIPE and blocks SIGUSR1, as a server might: the runtime
 * must still start with default dispositions and an empty mask. */
static void test_runtime_signals_are_default(void) {
    EXPECT_SH("grep -E '^Sig(Blk|Ign)' /proc/self/status | tr -s '\\t' ' '",
              "SigBlk: 0000000000000000\nSigIgn: 0000000000000000");
}

static void test_rlimits_nofile_and_no_core_dumps(void) {
    EXPECT_SH("grep -E '^Max (open files|core file size)' /proc/self/limits | tr -s ' ' | sed 's/ $//'",
              "Max core file size 1 1 bytes\nMax open files 1024 1024 files");
}

static void test_pid_namespace(void) { EXPECT_SH("echo pid=$$", "pid=2\n"); }

static void test_cannot_read_host_files(void) {
    EXPECT_SH("for p in /etc/shadow /root/.bashrc /work /home/* /etc/machine-id /sys/fs /proc/1/environ; do"
              " [ -e \"$p\" ] && echo VISIBLE $p; done; ls -A /root 2>/dev/null | wc -l; ls -A /sys | wc -l; echo end",
              "0\n0\nend");
}

static void test_etc_is_generated(void) {
    EXPECT_SH("grep sbx_user1051 /etc/passwd; whoami; cat /etc/hostname",
              "sbx_user1051:x:993:993::/home/sbx_user1051:/sbin/nologin\nsbx_user1051\nlocalhost");
}

static void test_only_loopback(void) {
    EXPECT_SH("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; echo end", "lo\nend");
}

static void test_no_outside_network(void) {
    EXPECT_SH("r=0; for a in 10.0.2.2 172.17.0.1 8.8.8.8 192.168.1.1 169.254.169.254; do"
              " timeout 5 bash -c \"exec 3<>/dev/tcp/$a/80\" 2>/dev/null && r=1; done; echo reached=$r",
              "reached=0");
    int st;
    char *out = run_sh("timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.2.2/80' 2>&1; echo rc=$?", &st);
    CHECK(out != NULL);
    bool ok = strstr(out, "unreachable") && !strstr(out, "REACHED");
    if (!ok) printf("  output: %s\n", out);
    free(out);
    CHECK(ok);
}

static void test_connect_to_runtime_api(void) {
    char *argv[] = {"/usr/bin/bash", "-c",
                    "exec 3<>/dev/tcp/127.0.0.1/9001 && echo ping >&3 && read -r reply <&3 && echo got:$reply", NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv, 1769, 64, 0, &e);
    CHECK(sb != NULL);
    int lfd = sandbox_api_fd(sb);
    struct pollfd p = {lfd, POLLIN, 0};
    bool served = false;
    if (poll(&p, 1, 60000) == 1) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) {
            char buf[16] = {0};
            struct pollfd pc = {c, POLLIN, 0};
            if (poll(&pc, 1, 60000) == 1 && read(c, buf, sizeof(buf) - 1) > 0 && strncmp(buf, "ping", 4) == 0)
                served = write(c, "pong\n", 5) == 5;
            close(c);
        }
    }
    int st;
    char *out = drain_and_reap(sb, &st);
    bool ok = served && strstr(out, "got:pong");
    if (!ok) printf("  output: %s\n", out);
    free(out);
    sandbox_destroy(sb, NULL);
    CHECK(ok);
}

static void test_api_fd_is_listening_nonblocking(void) {
    char *argv[] = {"/bin/true", NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv, 128, 16, 0, &e);
    CHECK(sb != NULL);
    int fd = sandbox_api_fd(sb), acc = 0;
    socklen_t l = sizeof(acc);
    bool ok = fd >= 0 && (fcntl(fd, F_GETFL) & O_NONBLOCK) &&
              getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) == 0 && acc == 1 &&
              (fcntl(sandbox_output_fd(sb), F_GETFL) & O_NONBLOCK) && (fcntl(fd, F_GETFD) & FD_CLOEXEC);
    int st;
    free(drain_and_reap(sb, &st));
    sandbox_destroy(sb, NULL);
    CHECK(ok);
}

static void test_hostname_is_not_hosts(void) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    int st;
    char *out = run_sh("cat /proc/sys/kernel/hostname", &st);
    CHECK(out != NULL);
    out[strcspn(out, "\n")] = 0;
    bool ok = strcmp(out, host) != 0 && strcmp(out, "localhost") == 0;
    printf("  host=%s sandbox=%s\n", host, out);
    free(out);
    CHECK(ok);
}

static void test_memory_limit_kills_hog(void) {
    char *argv[] = {"/usr/bin/python3", "-S", "/var/task/probe.py", "hog", NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv, 64, 16, 0, &e);
    CHECK(sb != NULL);
    int st;
    char *out = drain_and_reap(sb, &st);
    int ooms = sandbox_oom_kills(sb);
    uint64_t peak = sandbox_memory_peak(sb);
    printf("  status=%d oom_kills=%d peak=%llu MB\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1, ooms,
           (unsigned long long)(peak >> 20));
    bool ok = !strstr(out, "hog survived") && ooms > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGKILL &&
              peak <= (64ull << 20) && peak > (32ull << 20);
    free(out);
    sandbox_destroy(sb, NULL);
    CHECK(ok);
}

static void test_memory_peak_and_reset(void) {
    char *argv2[] = {"/usr/bin/python3", "-S", "-c",
                     "import time\nb = b'x' * (40 << 20)\ndel b\nprint('ready', flush=True)\ntime.sleep(600)",
                     NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv2, 256, 16, 0, &e);
    CHECK(sb != NULL);
    char *buf = xstrdup("");
    size_t len = 0;
    uint64_t deadline = now_mono_ms() + 60000;
    while (!strstr(buf, "ready") && now_mono_ms() < deadline)
        if (read_some(sb, &buf, &len, 1000) == 0) break;
    uint64_t peak1 = sandbox_memory_peak(sb);
    sandbox_reset_peak(sb);
    uint64_t peak2 = sandbox_memory_peak(sb);
    printf("  peak=%llu KB, after reset=%llu KB\n", (unsigned long long)(peak1 >> 10),
           (unsigned long long)(peak2 >> 10));
    /* The 40 MB were freed before "ready": a reset drops the peak to the
     * current use. */
    bool ok = strstr(buf, "ready") && peak1 >= (40ull << 20) && peak2 + (20ull << 20) < peak1;
    free(buf);
    sandbox_destroy(sb, NULL);
    CHECK(ok);
}

static void test_pids_limit_stops_fork_bomb(void) {
    char *argv[] = {"/bin/sh", "-c",
                    "i=0; while [ $i -lt 64 ]; do sleep 30 & i=$((i+1)); done 2>&1; echo spawned; exit 0", NULL};
    int st;
    char *out = run_argv(argv, 1769, 16, 16, &st);
    CHECK(out != NULL);
    bool ok = strstr(out, "fork") != NULL || strstr(out, "Resource temporarily unavailable") != NULL;
    if (!ok) printf("  output: %s\n", out);
    free(out);
    CHECK(ok);
}

static void test_freezer_freezes_and_thaws(void) {
    char *argv[] = {"/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done", NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv, 1769, 16, 0, &e);
    CHECK(sb != NULL);
    char *buf = xstrdup("");
    size_t len = 0;
    bool ok = true;
    while (len < 4) read_some(sb, &buf, &len, 5000);
    if (sandbox_freeze(sb, &e) < 0) {
        printf("  freeze: %s\n", e.msg);
        ok = false;
    }
    /* Drain what was written before the freeze completed. */
    while (read_some(sb, &buf, &len, 100) > 0) {
    }
    size_t frozen_len = len;
    read_some(sb, &buf, &len, 500);
    if (len != frozen_len) {
        printf("  output while frozen\n");
        ok = false;
    }
    if (sandbox_thaw(sb, &e) < 0) ok = false;
    uint64_t deadline = now_mono_ms() + 30000;
    while (len == frozen_len && now_mono_ms() < deadline) read_some(sb, &buf, &len, 1000);
    if (len == frozen_len) {
        printf("  no output after thaw\n");
        ok = false;
    }
    free(buf);
    sandbox_destroy(sb, NULL);
    CHECK(ok);
}

static void test_destroy_frozen_sandbox(void) {
    char *argv[] = {"/bin/sh", "-c", "sleep 600 & sleep 600 & echo up; wait", NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv, 256, 16, 0, &e);
    CHECK(sb != NULL);
    char *buf = xstrdup("");
    size_t len = 0;
    while (!strstr(buf, "up") && read_some(sb, &buf, &len, 30000) > 0) {
    }
    free(buf);
    CHECK(sandbox_freeze(sb, &e) == 0);
    int rc = sandbox_destroy(sb, &e);
    if (rc < 0) printf("  destroy: %s\n", e.msg);
    CHECK(rc == 0);
}

static int count_cgroup_dirs(const char *id, pid_t *pids, int *npids) {
    char pat[256];
    int n = 0;
    glob_t g;
    const char *roots[] = {"/sys/fs/cgroup/*/flicker/*/", "/sys/fs/cgroup/flicker/*/"};
    for (size_t r = 0; r < 2; r++) {
        snprintf(pat, sizeof(pat), "%s%s", roots[r], id);
        if (glob(pat, 0, NULL, &g) == 0) {
            for (size_t i = 0; i < g.gl_pathc; i++) {
                n++;
                if (!pids) continue;
                char p[512];
                snprintf(p, sizeof(p), "%s/cgroup.procs", g.gl_pathv[i]);
                FILE *f = fopen(p, "r");
                long v;
                while (f && *npids < 64 && fscanf(f, "%ld", &v) == 1) pids[(*npids)++] = (pid_t)v;
                if (f) fclose(f);
            }
            globfree(&g);
        }
    }
    return n;
}

static void test_destroy_leaves_nothing(void) {
    char *argv[] = {"/bin/sh", "-c", "sleep 600 & (sleep 600 &) ; echo up; wait", NULL};
    err_t e = {0};
    char id[64];
    snprintf(id, sizeof(id), "test-%d-%d", (int)getpid(), g_seq + 1);
    int before = sandbox_count();
    sandbox_t *sb = start(argv, 256, 16, 0, &e);
    CHECK(sb != NULL);
    CHECK(sandbox_count() == before + 1);
    char *buf = xstrdup("");
    size_t len = 0;
    while (!strstr(buf, "up") && read_some(sb, &buf, &len, 30000) > 0) {
    }
    free(buf);
    pid_t pids[64];
    int npids = 0;
    int dirs = count_cgroup_dirs(id, pids, &npids);
    pid_t init = sandbox_pid(sb);
    printf("  cgroup dirs=%d processes=%d\n", dirs, npids);
    CHECK(dirs >= 1 && npids >= 3);
    uint64_t t0 = now_mono_us();
    CHECK(sandbox_destroy(sb, &e) == 0);
    printf("  destroy took %.2f ms\n", (now_mono_us() - t0) / 1000.0);
    CHECK(count_cgroup_dirs(id, NULL, NULL) == 0);
    CHECK(sandbox_count() == before);
    CHECK(kill(init, 0) < 0 && errno == ESRCH);
    for (int i = 0; i < npids; i++) CHECK(kill(pids[i], 0) < 0 && errno == ESRCH);
}

static void test_sigterm_forwarded_to_runtime(void) {
    char *argv[] = {"/bin/sh", "-c", "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
                    NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv, 1769, 16, 0, &e);
    CHECK(sb != NULL);
    char *buf = xstrdup("");
    size_t len = 0;
    while (!strstr(buf, "ready") && read_some(sb, &buf, &len, 30000) > 0) {
    }
    CHECK(sandbox_signal(sb, SIGTERM, NULL) == 0);
    uint64_t deadline = now_mono_ms() + 60000;
    while (now_mono_ms() < deadline && read_some(sb, &buf, &len, 1000) != 0) {
    }
    struct pollfd p = {sandbox_pidfd(sb), POLLIN, 0};
    poll(&p, 1, 30000);
    int st = -1;
    int r = sandbox_reap(sb, &st, NULL);
    bool ok = r == 1 && strstr(buf, "got-term") && WIFEXITED(st) && WEXITSTATUS(st) == 3 &&
              sandbox_signal(sb, SIGTERM, NULL) < 0;
    if (!ok) printf("  r=%d st=%d output: %s\n", r, st, buf);
    free(buf);
    sandbox_destroy(sb, NULL);
    CHECK(ok);
}

static void test_init_reaps_orphans(void) {
    /* Orphans reparent to init; if it did not reap them they would stay
     * zombies ("Z") in /proc. */
    EXPECT_SH("for i in 1 2 3 4 5; do (sleep 0.01 &) ; done; sleep 0.5;"
              " z=0; for s in /proc/[0-9]*/stat; do grep -q ') Z ' $s 2>/dev/null && z=$((z+1)); done; echo zombies=$z",
              "zombies=0");
}

static void test_bad_exec_reports_127(void) {
    char *argv[] = {"/no/such/binary", NULL};
    int st;
    char *out = run_argv(argv, 128, 16, 0, &st);
    CHECK(out != NULL);
    bool ok = strstr(out, "flicker-init: exec /no/such/binary") && WIFEXITED(st) && WEXITSTATUS(st) == 127;
    free(out);
    CHECK(ok);
}

static void test_bad_code_dir_fails_cleanly(void) {
    char *argv[] = {"/bin/true", NULL};
    sandbox_spec_t sp = {.id = "test-badcode", .code_dir = "/nonexistent/code", .memory_mb = 128,
                         .ephemeral_mb = 16, .argv = argv, .envp = g_env};
    sandbox_t *sb = NULL;
    err_t e = {0};
    int before = sandbox_count();
    CHECK(sandbox_create(&sp, &sb, &e) < 0);
    printf("  error: %s\n", e.msg);
    CHECK(sb == NULL && strstr(e.msg, "/nonexistent/code"));
    CHECK(count_cgroup_dirs("test-badcode", NULL, NULL) == 0);
    CHECK(sandbox_count() == before);
    sp.id = "bad/id";
    CHECK(sandbox_create(&sp, &sb, &e) < 0);
}

static void test_cpu_quota_follows_memory(void) {
    CHECK(cgroup_cpu_quota(1769, 100000) == 100000 || sysconf(_SC_NPROCESSORS_ONLN) < 1);
    CHECK(cgroup_cpu_quota(128, 100000) == 100000 * 128 / 1769);
    CHECK(cgroup_cpu_quota(10240, 100000) <= 100000 * (uint64_t)sysconf(_SC_NPROCESSORS_ONLN));
}

static void test_runtime_dir_mounted_readonly(void) {
    char rt[256], f[300];
    snprintf(rt, sizeof(rt), "%s/runtime", g_parent);
    mkdir(rt, 0755);
    chmod(rt, 0755);
    snprintf(f, sizeof(f), "%s/client.txt", rt);
    write_file_atomic(f, "runtime client\n", 15, 0644, NULL);
    chmod(f, 0644); /* main() set umask 077 */
    char *argv[] = {"/bin/sh", "-c", "cat /var/runtime/client.txt; touch /var/runtime/x 2>/dev/null || echo ro-ok", NULL};
    sandbox_spec_t sp = {.id = "test-runtime-dir", .code_dir = g_code, .runtime_dir = rt, .memory_mb = 1769,
                         .ephemeral_mb = 16, .argv = argv, .envp = g_env};
    sandbox_t *sb = NULL;
    err_t e = {0};
    CHECK(sandbox_create(&sp, &sb, &e) == 0);
    int st;
    char *out = drain_and_reap(sb, &st);
    bool ok = strstr(out, "runtime client\nro-ok") != NULL;
    if (!ok) printf("  output: %s\n", out);
    free(out);
    sandbox_destroy(sb, NULL);
    CHECK(ok);
}

/* Several threads creating, running and destroying sandboxes at once. */
static void *thread_main(void *arg) {
    long t = (long)arg, ok = 1;
    for (int i = 0; i < 4; i++) {
        char id[64], script[64];
        snprintf(id, sizeof(id), "test-thr-%ld-%d", t, i);
        snprintf(script, sizeof(script), "echo thread-%ld-%d", t, i);
        char *argv[] = {"/bin/sh", "-c", script, NULL};
        sandbox_spec_t sp = {.id = id, .code_dir = g_code, .memory_mb = 256, .ephemeral_mb = 16,
                             .argv = argv, .envp = g_env};
        sandbox_t *sb = NULL;
        err_t e = {0};
        if (sandbox_create(&sp, &sb, &e) < 0) {
            printf("  thread %ld: %s\n", t, e.msg);
            ok = 0;
            continue;
        }
        int st;
        char *out = drain_and_reap(sb, &st);
        char want[64];
        snprintf(want, sizeof(want), "thread-%ld-%d\n", t, i);
        if (strcmp(out, want) != 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ok = 0;
        free(out);
        if (sandbox_destroy(sb, &e) < 0) ok = 0;
    }
    return (void *)ok;
}

static void test_concurrent_creates_from_threads(void) {
    enum { NT = 4 };
    pthread_t th[NT];
    for (long i = 0; i < NT; i++) pthread_create(&th[i], NULL, thread_main, (void *)i);
    bool ok = true;
    for (int i = 0; i < NT; i++) {
        void *r;
        pthread_join(th[i], &r);
        ok = ok && r == (void *)1;
    }
    CHECK(ok);
    CHECK(sandbox_count() == 0);
}

/* kill -9 recovery: a worker process dies with a sandbox running; the next
 * init (here: a fresh cgroup root of this process) kills the orphaned
 * sandbox and removes its cgroups. */
static int crashed_worker_main(const char *init, const char *state) {
    err_t e = {0};
    if (sandbox_system_init(init, state, &e) < 0) return 1;
    char *argv[] = {"/bin/sh", "-c", "sleep 600 & sleep 600", NULL};
    sandbox_spec_t sp = {.id = "test-crash", .code_dir = g_code, .memory_mb = 128, .ephemeral_mb = 16,
                         .argv = argv, .envp = g_env};
    sandbox_t *sb;
    if (sandbox_create(&sp, &sb, &e) < 0) return 2;
    printf("%d\n", (int)sandbox_pid(sb));
    fflush(stdout);
    pause();
    return 0;
}

static const char *g_init;

/* Starts a worker process with one sandbox running and kills it -9;
 * returns the sandbox's pid (-1 on failure), the worker's in *worker. */
static pid_t crash_a_worker(pid_t *worker) {
    int pfd[2];
    if (pipe(pfd) < 0) return -1;
    pid_t w = fork();
    if (w == 0) {
        dup2(pfd[1], 1);
        execl("/proc/self/exe", "test_sandbox", "--crashed-worker", g_init, g_code, g_state, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char buf[32] = {0};
    ssize_t n = read(pfd[0], buf, sizeof(buf) - 1);
    close(pfd[0]);
    kill(w, SIGKILL);
    waitpid(w, NULL, 0);
    *worker = w;
    return n > 0 ? (pid_t)atoi(buf) : -1;
}

static void test_recovery_after_worker_kill9(void) {
    pid_t w;
    pid_t sbpid = crash_a_worker(&w);
    CHECK(sbpid > 0);
    /* The orphaned sandbox is still alive... */
    CHECK(count_cgroup_dirs("test-crash", NULL, NULL) > 0);
    pid_t pids[64];
    int npids = 0;
    count_cgroup_dirs("test-crash", pids, &npids);
    CHECK(npids >= 3);
    /* ...until a new init reaps the dead instance. */
    cgroup_root_t r;
    err_t e = {0};
    CHECK(cgroup_root_init(&r, &e) == 0);
    for (int i = 0; i < CG_MAX_DIRS; i++) { /* free without removing our live parent dirs */
        free(r.base[i]);
        free(r.parent[i]);
    }
    CHECK(count_cgroup_dirs("test-crash", NULL, NULL) == 0);
    for (int i = 0; i < npids; i++) {
        /* The sandbox was re-parented to the host's init, which reaps it;
         * allow it a moment, then the pid must be gone. */
        for (int k = 0; k < 500 && kill(pids[i], 0) == 0; k++) usleep(10000);
        CHECK(kill(pids[i], 0) < 0 && errno == ESRCH);
    }
}


/* ------------------------------------------------ /tmp on disk (ephemeral.c) */

/* Loop devices whose backing file is under dir: numbers and paths. */
static int loops_under(const char *dir, int nr[], char paths[][512], int max) {
    int n = 0;
    glob_t g;
    if (glob("/sys/block/loop*/loop/backing_file", 0, NULL, &g) != 0) return 0;
    for (size_t i = 0; i < g.gl_pathc && n < max; i++) {
        char buf[512] = {0};
        FILE *f = fopen(g.gl_pathv[i], "r");
        if (!f) continue;
        if (fgets(buf, sizeof(buf), f)) buf[strcspn(buf, "\n")] = 0;
        fclose(f);
        if (strncmp(buf, dir, strlen(dir)) != 0) continue;
        sscanf(g.gl_pathv[i], "/sys/block/loop%d/", &nr[n]);
        snprintf(paths[n], sizeof(paths[n]), "%s", buf);
        n++;
    }
    globfree(&g);
    return n;
}

/* True if our mount namespace has a mount of block device 7:nr or of a
 * path mentioning needle. */
static bool host_has_mount(int nr, const char *needle) {
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[2048], dev[32];
    snprintf(dev, sizeof(dev), " 7:%d ", nr);
    bool found = false;
    while (f && fgets(line, sizeof(line), f))
        if (strstr(line, dev) || (needle && strstr(line, needle))) found = true;
    if (f) fclose(f);
    return found;
}

/* A 128 MB function writes far more than 128 MB to /tmp: it is disk, not
 * memory, so no OOM kill; it stops with ENOSPC at about ephemeral_mb. */
static void test_tmp_is_disk_not_memory(void) {
    NEEDS_DISK_TMP();
    char *argv[] = {"/bin/sh", "-c",
                    "dd if=/dev/zero of=/tmp/fill bs=1M count=1000 2>&1 | grep -o 'No space left on device';"
                    " echo size=$(( $(stat -c %s /tmp/fill) >> 20 )); rm /tmp/fill; echo done",
                    NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv, 128, 360, 0, &e);
    CHECK(sb != NULL);
    int st;
    char *out = drain_and_reap(sb, &st);
    int ooms = sandbox_oom_kills(sb);
    uint64_t peak = sandbox_memory_peak(sb);
    sandbox_destroy(sb, NULL);
    char *sz = strstr(out, "size=");
    int mb = sz ? atoi(sz + 5) : -1;
    printf("  wrote %d MiB into a 360 MiB /tmp with 128 MB of memory: oom_kills=%d peak=%llu MB\n", mb, ooms,
           (unsigned long long)(peak >> 20));
    bool ok = strstr(out, "No space left on device") && strstr(out, "done") && ooms == 0 && WIFEXITED(st) &&
              WEXITSTATUS(st) == 0 && mb >= 330 && mb <= 360;
    if (!ok) printf("  output: %s\n", out);
    free(out);
    CHECK(ok);
}

/* A new sandbox's /tmp is empty (no lost+found, nothing of an earlier
 * sandbox), also when its image comes from the pool; root owned by 993,
 * mode 1777. */
static void test_tmp_empty_in_new_sandbox(void) {
    NEEDS_DISK_TMP();
    for (int i = 0; i < 4; i++) {
        if (i) usleep(300000); /* let the pool refill: the next image is a pool one */
        char *argv[] = {"/bin/sh", "-c",
                        "echo n=$(ls -A /tmp | wc -l) owner=$(stat -c '%u:%g %a' /tmp);"
                        " echo secret > /tmp/secret; dd if=/dev/urandom of=/tmp/blob bs=1M count=4 2>/dev/null;"
                        " sync; echo written",
                        NULL};
        int st;
        char *out = run_argv(argv, 256, 512, 0, &st);
        CHECK(out != NULL);
        bool ok = strstr(out, "n=0 owner=993:993 1777\n") && strstr(out, "written");
        if (!ok) printf("  round %d output: %s\n", i, out);
        free(out);
        CHECK(ok);
    }
}

/* /tmp persists for the life of one sandbox: written, frozen and thawed
 * (as between invocations), read back by the same process. */
static void test_tmp_survives_between_invocations(void) {
    NEEDS_DISK_TMP();
    char *argv[] = {"/bin/sh", "-c",
                    "echo kept-$$ > /tmp/state; echo wrote; sleep 1; cat /tmp/state",
                    NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv, 256, 64, 0, &e);
    CHECK(sb != NULL);
    char *buf = xstrdup("");
    size_t len = 0;
    while (!strstr(buf, "wrote") && read_some(sb, &buf, &len, 30000) > 0) {
    }
    bool ok = sandbox_freeze(sb, &e) == 0;
    usleep(100000);
    ok = ok && sandbox_thaw(sb, &e) == 0;
    int st;
    char *rest = drain_and_reap(sb, &st);
    ok = ok && strstr(rest, "kept-2\n") && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!ok) printf("  output: %s%s\n", buf, rest);
    free(buf);
    free(rest);
    sandbox_destroy(sb, NULL);
    CHECK(ok);
}

/* The loop device number of the sandbox's /tmp, from its mountinfo. */
static int sandbox_tmp_loop(sandbox_t *sb) {
    char p[64], line[2048];
    snprintf(p, sizeof(p), "/proc/%d/mountinfo", (int)sandbox_pid(sb));
    FILE *f = fopen(p, "r");
    int nr = -1;
    while (f && fgets(line, sizeof(line), f)) {
        char *dash = strstr(line, " - ext4 /dev/loop");
        if (strstr(line, " /tmp ") && dash) nr = atoi(dash + strlen(" - ext4 /dev/loop"));
    }
    if (f) fclose(f);
    return nr;
}

/* Destroy leaves no mount, no loop device bound to the image, no image. */
static void test_destroy_removes_tmp_image(void) {
    NEEDS_DISK_TMP();
    char *argv[] = {"/bin/sh", "-c", "echo data > /tmp/f; echo up; sleep 600", NULL};
    err_t e = {0};
    sandbox_t *sb = start(argv, 256, 512, 0, &e);
    CHECK(sb != NULL);
    char *buf = xstrdup("");
    size_t len = 0;
    while (!strstr(buf, "up") && read_some(sb, &buf, &len, 30000) > 0) {
    }
    free(buf);
    int nr = sandbox_tmp_loop(sb);
    char image[512] = {0}, sys[128];
    snprintf(sys, sizeof(sys), "/sys/block/loop%d/loop/backing_file", nr);
    FILE *f = fopen(sys, "r");
    if (f && fgets(image, sizeof(image), f)) image[strcspn(image, "\n")] = 0;
    if (f) fclose(f);
    printf("  /tmp is %s on loop%d\n", image, nr);
    bool ok = nr >= 0 && access(image, F_OK) == 0 && strncmp(image, g_state, strlen(g_state)) == 0;
    /* Nothing in the host's mount table even while it runs. */
    ok = ok && !host_has_mount(nr, image);
    CHECK(sandbox_destroy(sb, &e) == 0);
    CHECK(ok);
    CHECK(access(image, F_OK) < 0 && errno == ENOENT);
    CHECK(!host_has_mount(nr, image));
    /* No loop device bound to it (the pool's, refilled meanwhile, may be). */
    int nrs[16];
    char paths[16][512];
    int n = loops_under(g_state, nrs, paths, 16);
    for (int i = 0; i < n; i++) CHECK(strncmp(paths[i], image, strlen(image)) != 0);
}

/* The image file and the loop device are out of the function's reach. */
static void test_tmp_image_unreachable(void) {
    NEEDS_DISK_TMP();
    char script[1024];
    snprintf(script, sizeof(script),
             "ls -d /dev/loop* /dev/block /dev/vd* /dev/sd* 2>/dev/null; [ -e '%s' ] && echo SEES-STATE;"
             " n=$(find / -xdev -name '*.img' 2>/dev/null | wc -l); echo imgs=$n;"
             " grep ' /tmp ' /proc/self/mountinfo | grep -o 'nosuid,nodev' | head -1; echo end",
             g_state);
    EXPECT_SH(script, "imgs=0\nnosuid,nodev\nend");
}

/* Binaries in /tmp can run (Lambda allows it). */
static void test_exec_from_tmp(void) {
    EXPECT_SH("cp /bin/echo /tmp/e && /tmp/e exec-binary-ok; printf '#!/bin/sh\\necho exec-script-ok\\n' > /tmp/s;"
              " chmod +x /tmp/s && /tmp/s",
              "exec-binary-ok\nexec-script-ok");
}

/* Creates and destroys N sandboxes (128 MB, /tmp 512 MB, running
 * "sleep 600"); pause_ms between rounds (untimed) lets the /tmp image pool
 * refill, 0 is a burst that drains it (images then prepared on the spot). */
/* kill -9 recovery of /tmp images: a dead worker's images (its sandbox's,
 * still mounted in the sandbox, and its pool's) and their loop devices are
 * removed by the next sandbox_system_init; a live instance's are not. */
static void test_recovery_removes_dead_tmp_images(void) {
    NEEDS_DISK_TMP();
    CHECK(sandbox_count() == 0);
    pid_t w;
    pid_t sbpid = crash_a_worker(&w);
    CHECK(sbpid > 0);
    char pat[256];
    snprintf(pat, sizeof(pat), "%s/ephemeral/sbx-%d-*/img-*.img", g_state, (int)w);
    glob_t g;
    CHECK(glob(pat, 0, NULL, &g) == 0);
    size_t nimg = g.gl_pathc;
    char dead_dir[256];
    snprintf(dead_dir, sizeof(dead_dir), "%s", g.gl_pathv[0]);
    *strrchr(dead_dir, '/') = 0;
    globfree(&g);
    int nr[16];
    char paths[16][512];
    int nloops = loops_under(dead_dir, nr, paths, 16);
    printf("  dead instance %s: %zu images, %d loop devices under the state dir\n", dead_dir, nimg, nloops);
    CHECK(nimg >= 1 && nloops == 1); /* the orphaned sandbox still holds its /tmp */
    /* Our own live instance has pool images: they must survive. */
    char own[256];
    snprintf(own, sizeof(own), "%s/ephemeral/sbx-%d-*", g_state, (int)getpid());
    CHECK(glob(own, 0, NULL, &g) == 0 && g.gl_pathc == 1);
    globfree(&g);
    /* Restart: the cgroup sweep kills the orphan, the ephemeral sweep
     * removes the dead instance's images and loop devices. */
    sandbox_system_shutdown();
    err_t e = {0};
    CHECK(sandbox_system_init(g_init, g_state, &e) == 0);
    struct stat st;
    CHECK(stat(dead_dir, &st) < 0 && errno == ENOENT);
    int left = 1;
    for (int k = 0; k < 200 && left; k++) {
        left = loops_under(dead_dir, nr, paths, 16);
        for (int i = 0; i < left; i++) printf("  still bound: loop%d %s\n", nr[i], paths[i]);
        if (left) usleep(10000);
    }
    CHECK(left == 0);
    for (int k = 0; k < 500 && kill(sbpid, 0) == 0; k++) usleep(10000);
    CHECK(kill(sbpid, 0) < 0 && errno == ESRCH);
}

static void create_destroy_benchmark(const char *label, int pause_ms) {
    char *argv[] = {"/bin/sh", "-c", "sleep 600", NULL};
    enum { N = 20 };
    double c_sum = 0, c_min = 1e9, c_max = 0, d_sum = 0;
    for (int i = 0; i < N; i++) {
        /* Busy-wait, not sleep: an idle vCPU of this VM takes ~10 ms to
         * get going again, which would be measured as create time. */
        for (uint64_t until = now_mono_ms() + (uint64_t)pause_ms; now_mono_ms() < until;) {
        }
        err_t e = {0};
        uint64_t t0 = now_mono_us();
        sandbox_t *sb = start(argv, 128, 512, 0, &e);
        double c = (now_mono_us() - t0) / 1000.0;
        CHECK(sb != NULL);
        t0 = now_mono_us();
        CHECK(sandbox_destroy(sb, &e) == 0);
        d_sum += (now_mono_us() - t0) / 1000.0;
        c_sum += c;
        if (c < c_min) c_min = c;
        if (c > c_max) c_max = c;
    }
    printf("  %s: sandbox_create: avg %.2f ms, min %.2f, max %.2f; sandbox_destroy (running sandbox): avg %.2f ms"
           " (n=%d, cgroup %s)\n",
           label, c_sum / N, c_min, c_max, d_sum / N, N, sandbox_cgroup_version());
}

/* Prints only (the machine is shared): create/destroy times, and the same
 * with 512 MB resident in the worker (the setup child shares the worker's
 * memory instead of copying its page tables, so it should not grow). */
static void test_create_destroy_benchmark(void) {
    create_destroy_benchmark("worker small", 150);
    if (check_failed_) return;
    size_t big = 512u << 20;
    char *mem = xmalloc(big);
    memset(mem, 1, big);
    create_destroy_benchmark("worker with 512 MB resident", 150);
    free(mem);
    if (check_failed_) return;
    create_destroy_benchmark("burst (pool drained)", 0);
}

int main(int argc, char **argv) {
    if (geteuid() != 0) {
        SKIP(test_sandbox, "needs root");
        return 0;
    }
    const char *init = getenv("FLICKER_INIT");
    char initbuf[512];
    if (!init) {
        /* BUILD/tests/test_sandbox -> BUILD/flicker-init (asan build: also
         * try build/flicker-init, which is built the same way). */
        char self[400] = {0};
        if (readlink("/proc/self/exe", self, sizeof(self) - 1) > 0) {
            char *slash = strrchr(self, '/');
            if (slash) *slash = 0;
            snprintf(initbuf, sizeof(initbuf), "%s/../flicker-init", self);
            init = initbuf;
        }
    }
    g_init = init;
    if (argc == 5 && strcmp(argv[1], "--crashed-worker") == 0) {
        snprintf(g_code, sizeof(g_code), "%s", argv[3]);
        return crashed_worker_main(argv[2], argv[4]);
    }
    err_t e = {0};
    setup_dirs();
    /* FLICKER_TEST_TMPFS=1: no state dir, so /tmp is the tmpfs fallback
     * (the disk-/tmp tests are skipped; the benchmark then gives the
     * tmpfs figures to compare with). */
    g_disk_tmp = !getenv("FLICKER_TEST_TMPFS");
    if (!init || sandbox_system_init(init, g_disk_tmp ? g_state : NULL, &e) < 0) {
        printf("FAIL sandbox_system_init: %s\n", e.msg);
        return 1;
    }
    /* A hostile-ish worker environment: restrictive umask, SIGPIPE ignored,
     * a signal blocked.  None of it may leak into the jail. */
    umask(077);
    signal(SIGPIPE, SIG_IGN);
    sigset_t blk;
    sigemptyset(&blk);
    sigaddset(&blk, SIGUSR1);
    sigprocmask(SIG_BLOCK, &blk, NULL);
    RUN(test_runs_and_exit_status);
    RUN(test_killed_status_is_128_plus_signal);
    RUN(test_environment_and_cwd);
    RUN(test_stdin_is_dev_null);
    RUN(test_code_dir_readable_and_readonly);
    RUN(test_root_readonly);
    RUN(test_tmp_writable_and_size_limited);
    RUN(test_uid_is_993);
    RUN(test_no_capabilities);
    RUN(test_no_new_privs);
    RUN(test_seccomp_mode_2);
    RUN(test_cannot_mount);
    RUN(test_cannot_umount);
    RUN(test_cannot_unshare_user);
    RUN(test_cannot_unshare_mount);
    RUN(test_cannot_setns);
    RUN(test_cannot_ptrace);
    RUN(test_cannot_ptrace_traceme);
    RUN(test_cannot_clone_new_namespace);
    RUN(test_clone3_enosys);
    RUN(test_fork_still_works);
    RUN(test_cannot_bpf);
    RUN(test_cannot_keyctl);
    RUN(test_personality_default_allowed);
    RUN(test_personality_change_denied);
    RUN(test_cannot_see_host_processes);
    RUN(test_runtime_signals_are_default);
    RUN(test_rlimits_nofile_and_no_core_dumps);
    RUN(test_pid_namespace);
    RUN(test_cannot_read_host_files);
    RUN(test_etc_is_generated);
    RUN(test_only_loopback);
    RUN(test_no_outside_network);
    RUN(test_connect_to_runtime_api);
    RUN(test_api_fd_is_listening_nonblocking);
    RUN(test_hostname_is_not_hosts);
    RUN(test_memory_limit_kills_hog);
    RUN(test_memory_peak_and_reset);
    RUN(test_pids_limit_stops_fork_bomb);
    RUN(test_freezer_freezes_and_thaws);
    RUN(test_destroy_frozen_sandbox);
    RUN(test_destroy_leaves_nothing);
    RUN(test_sigterm_forwarded_to_runtime);
    RUN(test_init_reaps_orphans);
    RUN(test_bad_exec_reports_127);
    RUN(test_bad_code_dir_fails_cleanly);
    RUN(test_cpu_quota_follows_memory);
    RUN(test_runtime_dir_mounted_readonly);
    RUN(test_concurrent_creates_from_threads);
    RUN(test_recovery_after_worker_kill9);
    RUN(test_tmp_is_disk_not_memory);
    RUN(test_tmp_empty_in_new_sandbox);
    RUN(test_tmp_survives_between_invocations);
    RUN(test_destroy_removes_tmp_image);
    RUN(test_tmp_image_unreachable);
    RUN(test_exec_from_tmp);
    RUN(test_recovery_removes_dead_tmp_images);
    RUN(test_create_destroy_benchmark);
    if (sandbox_count() != 0) printf("  leaked sandboxes: %d\n", sandbox_count());
    sandbox_system_shutdown();
    rm_rf(g_parent, NULL);
    CHECK_EXIT();
}
