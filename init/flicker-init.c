/* flicker-init.c - PID 1 inside a sandbox (placeholder). */
#include <unistd.h>
int main(int argc, char **argv) { (void)argc; execv(argv[1], argv + 1); return 127; }
