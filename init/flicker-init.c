/* flicker-init.c - PID 1 inside a sandbox.
 *
 * Started by the sandbox setup code (src/worker/sandbox.c) as /init, after
 * the root filesystem is built and pivoted, with no_new_privs and the seccomp
 * filter already in force, as root of the sandbox's user namespace (mapped to
 * an unprivileged host uid).  argv[1..] is the runtime's command line; the
 * environment is the runtime's.  stdin is /dev/null, stdout and stderr are the
 * sandbox's output pipe.
 *
 * It forks the runtime, which before exec: sets RLIMIT_NOFILE 1024 and
 * RLIMIT_CORE 1 byte (no core dumps, not even to a core_pattern pipe),
 * clears supplementary groups,
 * drops every capability from the bounding and ambient sets, switches to
 * uid/gid 993 (Lambda's sbx_user1051; this empties permitted and effective
 * capabilities), clears the inheritable set, sets no_new_privs again and
 * chdirs to /var/task.  Then init waits: it reaps every child (orphans are
 * reparented to it), forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2
 * to the runtime, and when the runtime exits, exits with its status
 * (128+signal if it was killed).  Its exit makes the kernel kill whatever is
 * left in the pid namespace.
 *
 * Invariants: init itself never execs anything else; it keeps no state but
 * the runtime's pid; it is static (no dynamic loader inside the jail). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <grp.h>
#include <linux/capability.h>

#define SBX_UID 993
#define SBX_GID 993

static void die(const char *what) {
    fprintf(stderr, "flicker-init: %s: %s\n", what, strerror(errno));
    _exit(127);
}

static void noop(int sig) { (void)sig; }

/* In the forked child: drop to the function's identity and exec. */
static void exec_runtime(char **argv) {
    if (setpgid(0, 0) < 0) die("setpgid");
    /* Lambda's limit of 1024 descriptors.  Core size 1 byte, hard: no core
     * file can be written (smaller than a page), and 1 is also the value the
     * kernel treats as "never dump to a core_pattern pipe", whose helper
     * would run as root on the host. */
    struct rlimit nofile = {1024, 1024}, core = {1, 1};
    if (setrlimit(RLIMIT_NOFILE, &nofile) < 0) die("setrlimit(NOFILE)");
    if (setrlimit(RLIMIT_CORE, &core) < 0) die("setrlimit(CORE)");
    for (int cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) die("PR_CAPBSET_DROP");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        die("PR_CAP_AMBIENT_CLEAR_ALL");
    if (setgroups(0, NULL) < 0) die("setgroups");
    if (setresgid(SBX_GID, SBX_GID, SBX_GID) < 0) die("setresgid");
    if (setresuid(SBX_UID, SBX_UID, SBX_UID) < 0) die("setresuid");
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &hdr, data) < 0) die("capset");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("PR_SET_NO_NEW_PRIVS");
    if (chdir("/var/task") < 0 && chdir("/") < 0) die("chdir");
    /* Default dispositions and an empty mask for the runtime: whatever the
     * worker ignored or blocked (SIGPIPE, typically) must not leak in. */
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execvp(argv[0], argv);
    fprintf(stderr, "flicker-init: exec %s: %s\n", argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: flicker-init PROGRAM [ARGS...]\n");
        return 127;
    }
    /* PID 1 only receives signals it has a handler for: install no-op
     * handlers, block them, and take them synchronously with sigwaitinfo. */
    static const int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    sigset_t set;
    sigemptyset(&set);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = noop;
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        sigaction(sigs[i], &sa, NULL);
        sigaddset(&set, sigs[i]);
    }
    sigprocmask(SIG_BLOCK, &set, NULL);

    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) exec_runtime(argv + 1);

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig < 0) {
            if (errno == EINTR) continue;
            die("sigwaitinfo");
        }
        if (sig != SIGCHLD) {
            kill(child, sig);
            continue;
        }
        for (;;) {
            int status;
            pid_t p = waitpid(-1, &status, WNOHANG);
            if (p <= 0) break;
            if (p != child) continue; /* an orphan: reaped */
            if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
            if (WIFSIGNALED(status)) _exit(128 + WTERMSIG(status));
        }
    }
}
