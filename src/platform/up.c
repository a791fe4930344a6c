/* up.c - placeholder. */
#include "platform/up.h"
int up_main(int argc, char **argv) { (void)argc; (void)argv; return 1; }
