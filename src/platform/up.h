/* up.h - `flicker up`: the whole platform on one host, in the foreground. */
#ifndef FLICKER_UP_H
#define FLICKER_UP_H
/* Parses up's flags and runs until SIGINT/SIGTERM.  Returns exit status. */
int up_main(int argc, char **argv);
#endif
